"""Option matrices for the tests and the compile check: all pairs (every value of every axis meets every
value of every other axis) or the full product."""
from __future__ import annotations

import itertools
from typing import Any, Sequence


def pairwise(axes: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """A small list of cases covering each pair of (axis, value) at least once (greedy, deterministic)."""
    names = list(axes)
    if len(names) < 2:
        return product(axes)
    uncovered = {((a, va), (b, vb))
                 for a, b in itertools.combinations(range(len(names)), 2)
                 for va in range(len(axes[names[a]])) for vb in range(len(axes[names[b]]))}
    rows: list[tuple[int, ...]] = []
    while uncovered:
        (a, va), (b, vb) = min(uncovered)
        row = {a: va, b: vb}
        for k in range(len(names)):
            if k in row:
                continue
            row[k] = max(range(len(axes[names[k]])),
                         key=lambda v: sum(((min(k, j), (v if k < j else row[j])),
                                            (max(k, j), (row[j] if k < j else v))) in uncovered for j in row))
        full = tuple(row[k] for k in range(len(names)))
        uncovered -= {((a, full[a]), (b, full[b])) for a, b in itertools.combinations(range(len(names)), 2)}
        rows.append(full)
    return [{names[k]: axes[names[k]][v] for k, v in enumerate(r)} for r in rows]


def product(axes: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(axes)
    return [dict(zip(names, vals)) for vals in itertools.product(*(axes[n] for n in names))]


def case_id(case: dict[str, Any]) -> str:
    """A readable pytest id for one case: its values joined by dashes."""
    return "-".join(str(v).replace("torch.", "") for v in case.values())


def pairwise_subset(cases: Sequence[Sequence[Any]]) -> list[int]:
    """The indices, in order, of a few of ``cases`` (each a sequence of hashable values, one per axis)
    that together hold every (axis, value) and every pair of them that any of them holds (greedy,
    deterministic): ``pairwise`` for cases given as a list rather than as axes."""
    held = [set(enumerate(case)) | set(itertools.combinations(enumerate(case), 2)) for case in cases]
    uncovered = set().union(*held)
    chosen: list[int] = []
    while uncovered:
        best = max(range(len(cases)), key=lambda n: len(held[n] & uncovered))
        chosen.append(best)
        uncovered -= held[best]
    return sorted(chosen) or list(range(min(len(cases), 1)))     # cases without axes: any one
