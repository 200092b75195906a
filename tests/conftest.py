"""Test set-up: kernels run under Triton's interpreter on CPU unless a CUDA GPU is present, or
TRITON_LSTM_TEST_CPU_PATH=1 asks for the CPU path users run (a session of its own), or the
host-path tests run (compiled kernels, a stand-in driver).

Must run before triton_lstm is imported: Triton picks interpreter or compiler when the kernels
are decorated.
"""
import os

import pytest
import torch
import torch.utils._device

HAS_CUDA = torch.cuda.is_available()
# tests/host drive the compiled (CUDA) host path with a stand-in driver; test_host_path.py runs them
# in a process of their own with TRITON_LSTM_HOST_TESTS=1, since this one interprets the kernels.
HOST_TESTS = os.environ.get("TRITON_LSTM_HOST_TESTS") == "1"
if HOST_TESTS:
    os.environ.pop("TRITON_INTERPRET", None)
elif not HAS_CUDA and os.environ.get("TRITON_LSTM_TEST_CPU_PATH") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
collect_ignore = [] if HOST_TESTS else ["host"]

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

_torch_empty = torch.empty
# `with torch.device(...)` collects the factory functions it redirects on first use: collect them
# before torch.empty is replaced below, or the context would miss torch.empty.
torch.utils._device._device_constructors()


def _nan_empty(*args, **kwargs):
    """torch.empty that fills floating tensors with NaN, so an unwritten output cannot pass."""
    t = _torch_empty(*args, **kwargs)
    if t.is_floating_point():
        t.fill_(float("nan"))
    return t


def pytest_collection_modifyitems(items):
    """The long tests first (stable otherwise): a parallel session (-n auto) then ends on short ones."""
    items.sort(key=lambda item: item.get_closest_marker("runs_long") is None)


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)


@pytest.fixture
def device():
    return DEVICE


# TRITON_LSTM_CONFIG pins that split the persistent kernels' work over several programs (rows of 16,
# forward slices of 4 units, backward slices of 16): under the interpreter they then run one phase
# of one step at a time, which exercises the tile ownership of a multi-program grid. "stepped" runs
# one launch per phase of each step on any device (the fallback where no persistent grid builds).
GRIDS = {"one": None, "several": "block_b=16,seq_fwd.block_n=4,seq_bwd.block_n=16",
         "stepped": "seq_fwd.stepped=1,seq_bwd.stepped=1"}


@pytest.fixture
def launches(monkeypatch):
    """Records (kernel name, grid size) of every kernel launch, and launches it as before."""
    from triton_lstm import launch
    seen = []
    run_config = launch.run_config

    def spy(kernel, cfg, pb, args, consts, warmup=False):
        if not warmup:
            seen.append((pb.kernel, launch.programs(cfg, pb)))
        return run_config(kernel, cfg, pb, args, consts, warmup)

    monkeypatch.setattr(launch, "run_config", spy)
    return seen


@pytest.fixture
def grid(monkeypatch, launches):
    """use(name) pins the grid of GRIDS[name]; check() asserts a persistent kernel ran on that many programs."""

    class Grid:
        name = "one"

        def use(self, name):
            self.name = name
            if GRIDS[name] is None:
                monkeypatch.delenv("TRITON_LSTM_CONFIG", raising=False)
            else:
                monkeypatch.setenv("TRITON_LSTM_CONFIG", GRIDS[name])

        def check(self):
            from triton_lstm.launch import interpreting
            grids = {g for kernel, g in launches if kernel.startswith("seq")}
            assert grids, "no persistent kernel was launched"
            if self.name == "several":
                assert max(grids) > 1, f"grid sizes {grids}: the pin did not give several programs"
            elif self.name == "stepped":
                fwd = sum(kernel == "seq_fwd" for kernel, _ in launches)
                assert fwd > 1, f"{fwd} forward launch(es): the pin did not step the kernel"
            elif interpreting():
                assert grids == {1}, f"grid sizes {grids}: the interpreter's default is one program"

    return Grid()
