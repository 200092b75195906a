"""The CUDA host path without a GPU (run by tests/test_host_path.py in a process of its own).

What is stubbed, and only that (``triton_lstm.aot.stand_in_gpu``): Triton's driver, by a
``TargetDriver`` that compiles real cubins for sm_90, reports registers and spills from them where
the CUDA driver would load them, and records each launch instead of running it; the device queries
of ``triton_lstm.launch`` (is this a GPU, its limits, capturing, selecting the device, the thread's
capture mode, pinned host memory) and CUDA events. CPU tensors stand in for GPU tensors. Everything else runs as on a GPU:
the launchers, their arguments, the JIT's specialisation and compilation, the tuner and its
resource check, cooperative launch options, the barrier and sequence-length flags. Nothing is
computed: outputs of the stubbed launches are never looked at.
"""
import contextlib
import os

import pytest
import torch

from triton_lstm import aot, launch, sequence, tune


class Gpu:
    """The stand-in GPU of one test: its recorded launches, and hooks into them."""

    def __init__(self):
        self.launches = []
        self.on_launch = None       # called with each launch's (name, named args) when set
        self.guarded = False
        self.target = None

    def launch(self, name, grid, metadata, args):
        assert self.guarded, f"{name} launched outside the device guard"
        self.launches.append(dict(name=name, grid=grid[0], num_warps=metadata.num_warps, shared=metadata.shared,
                                  cooperative=bool(metadata.launch_cooperative_grid), args=args))
        if self.on_launch is not None:
            self.on_launch(name, args)

    @contextlib.contextmanager
    def guard(self, device):
        self.guarded = True
        try:
            yield
        finally:
            self.guarded = False

    def names(self):
        return [r["name"] for r in self.launches]


@pytest.fixture
def gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_LSTM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_LSTM_CONFIG", raising=False)
    monkeypatch.delenv("TRITON_LSTM_CHECK_BARRIER", raising=False)
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(tune, "cache_file", lambda: tmp_path / "h100-triton.json")
    monkeypatch.setattr(sequence, "_pending", [])
    state = Gpu()

    def record(event, stream=None):  # CUDA events, which stand_in_gpu makes always complete
        assert state.guarded, "an event recorded outside the device guard (on another GPU's stream)"

    with aot.stand_in_gpu(90, state.launch) as target:
        state.target = target
        monkeypatch.setattr(launch, "select_device", state.guard)
        monkeypatch.setattr(aot._CompleteEvent, "record", record)
        yield state


@pytest.fixture(autouse=True)
def no_interpreter():
    assert os.environ.get("TRITON_INTERPRET") != "1" and not launch.interpreting()


def rand(*shape, dtype=torch.float16, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return (torch.randn(*shape, generator=g) * 0.2).to(dtype).requires_grad_(grad)
