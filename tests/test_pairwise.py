"""The option matrices the tests and the compile check are built from: every pair of values is held."""
import itertools
import random

import pytest

from triton_lstm.pairwise import pairwise, pairwise_subset, product


def held(cases):
    """Every (axis, value) and every pair of them that some case holds, counted independently."""
    return {frozenset(pair) for case in cases for pair in itertools.combinations(enumerate(case), 2)} | \
        {frozenset([item]) for case in cases for item in enumerate(case)}


AXES = [dict(a=[1, 2, 3], b=[True, False], c=["x", "y", "z", "w"]),
        dict(flag=[0, 1], other=[0, 1], third=[0, 1], fourth=[0, 1], fifth=[0, 1]),
        dict(only=["one", "two"])]


@pytest.mark.parametrize("axes", AXES, ids=lambda axes: "-".join(axes))
def test_pairwise_holds_every_pair_of_the_product(axes):
    rows = [tuple(case.values()) for case in pairwise(axes)]
    full = [tuple(case.values()) for case in product(axes)]
    assert held(rows) == held(full)
    assert len(rows) <= len(full)


@pytest.mark.parametrize("seed", range(20))
def test_pairwise_subset_holds_every_pair_the_cases_hold(seed):
    rng = random.Random(seed)
    width = rng.randint(1, 6)
    cases = [tuple(rng.choice("abc"[:rng.randint(1, 3)]) for _ in range(width)) for _ in range(rng.randint(0, 40))]
    chosen = pairwise_subset(cases)
    assert chosen == sorted(set(chosen)) and all(0 <= n < len(cases) for n in chosen)
    assert held([cases[n] for n in chosen]) == held(cases)


def test_pairwise_subset_of_a_full_product_is_small():
    cases = list(itertools.product((False, True), repeat=5))
    chosen = pairwise_subset(cases)
    assert held([cases[n] for n in chosen]) == held(cases)
    assert len(chosen) <= 8


def test_pairwise_subset_of_cases_without_axes_keeps_one():
    assert pairwise_subset([(), ()]) == [0] and pairwise_subset([]) == []
