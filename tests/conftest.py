"""Test set-up: kernels run under Triton's interpreter on CPU unless a CUDA GPU is present, or
TRITON_LSTM_TEST_REFERENCE=1 asks for the plain-PyTorch path (a session of its own).

Must run before triton_lstm is imported: Triton picks interpreter or compiler when the kernels
are decorated.
"""
import os

import pytest
import torch
import torch.utils._device

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_LSTM_TEST_REFERENCE") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

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


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", _nan_empty)


@pytest.fixture
def device():
    return DEVICE
