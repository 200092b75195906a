"""The persistent kernels read their weights once per launch, not once per step: counted through
Triton's interpreter (every masked load it executes is seen) at two sequence lengths."""
import numpy as np
import pytest
import torch
from triton.runtime import interpreter

from helpers import cell_tensors
from triton_lstm import lstm_sequence
from triton_lstm.launch import interpreting

pytestmark = pytest.mark.skipif(not interpreting(), reason="counts loads through Triton's interpreter")


@pytest.fixture
def weight_reads(monkeypatch):
    """reads(tensors) -> elements of those tensors loaded since; every load is counted and performed."""
    watched, counts = [], []
    load = interpreter.InterpreterBuilder.create_masked_load

    def counting_load(self, ptrs, mask, *args):
        hit = np.zeros_like(mask.data, dtype=bool)
        for t in watched:
            start = t.data_ptr()
            hit |= (ptrs.data >= start) & (ptrs.data < start + t.numel() * t.element_size())
        counts.append(int((hit & mask.data.astype(bool)).sum()))
        return load(self, ptrs, mask, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", counting_load)

    def reads(tensors, fn):
        watched[:] = tensors
        counts.clear()
        fn()
        return sum(counts)
    return reads


@pytest.mark.parametrize("projection", [None, 6], ids=["no-proj", "proj"])
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "streaming"])
def test_weights_are_read_once_per_launch(weight_reads, monkeypatch, projection, resident):
    B, D, N = 3, 5, 12
    monkeypatch.setenv("TRITON_LSTM_CONFIG", f"resident={int(resident)}")
    t = cell_tensors(B, D, N, projection, True, torch.float32, "cpu")
    kernel = t["kernel"]
    w_x, w_h = kernel[:D], kernel[D:].clone().requires_grad_()
    proj = None if projection is None else t["projection"].clone().requires_grad_()
    weights = [w_h] + ([proj] if proj is not None else [])

    def run(T):
        x = torch.randn(T, B, D)
        out, h, c = lstm_sequence(x, t["h"], t["c"], w_x, w_h, t["bias"], t["w_f_diag"], t["w_i_diag"],
                                  t["w_o_diag"], proj)
        return out

    fwd = {T: weight_reads(weights, lambda: run(T)) for T in (4, 9)}
    bwd = {T: weight_reads(weights, lambda: run(T).sum().backward()) - fwd[T] for T in (4, 9)}
    slice_elements = sum(w.numel() for w in weights)
    if resident:
        # One program owns every unit here: it reads each weight once, whatever T.
        assert fwd[4] == fwd[9] == slice_elements, fwd
        assert bwd[4] == bwd[9] == slice_elements, bwd
    else:
        # The control: streamed slices are read every step.
        assert fwd[9] > fwd[4] >= 4 * slice_elements, fwd
        assert bwd[9] > bwd[4] >= 4 * slice_elements, bwd
