"""FLOP counts (torch.utils.flop_counter.FlopCounterMode) of the library's ops, against what the mode
counts for nn.LSTM and for the plain-PyTorch reference on the same shapes: every path counts its
matrix products (under the interpreter float32 runs the kernels, float64 the CPU path's loop)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from triton_lstm import LSTM, lstm_cell, lstm_cell_reference

T, B, D, H, P = 5, 3, 7, 10, 4


def counted(run):
    """FLOPs FlopCounterMode counts for run()'s forward, then for the backward of all its results."""
    with FlopCounterMode(display=False) as forward:
        results = run()
    with FlopCounterMode(display=False) as backward:
        sum(r.sum() for r in results).backward()
    return forward.get_total_flops(), backward.get_total_flops()


def leaves(*shapes, dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("proj", [0, P], ids=["plain", "proj"])
def test_lstm_counts_what_nn_lstm_counts(dtype, proj):
    """TF's extras add no matrix product: LSTM with them counts what nn.LSTM counts without them
    (both are nonzero), forward and backward."""
    width = proj or H
    x, h0, c0 = leaves((T, B, D), (2, B, width), (2, B, H), dtype=dtype)
    ours = LSTM(D, H, num_layers=2, proj_size=proj, use_peepholes=True, cell_clip=3.0, dtype=dtype)
    ref = torch.nn.LSTM(D, H, num_layers=2, proj_size=proj, dtype=torch.float64)

    def run(module, tensors):
        out, (h_n, c_n) = module(tensors[0], tuple(tensors[1:]))
        return out, h_n, c_n

    want = counted(lambda: run(ref, [t.detach().double().requires_grad_() for t in (x, h0, c0)]))
    assert min(want) > 0
    assert counted(lambda: run(ours, (x, h0, c0))) == want


@pytest.mark.parametrize("proj", [None, P], ids=["plain", "proj"])
def test_cell_counts_what_the_reference_counts(proj):
    """One step (the step kernels for float32 under the interpreter) against the reference's count."""
    width = proj or H
    shapes = [(B, D), (B, H), (B, width), (D + width, 4 * H), (4 * H,), (H,), (H,), (H,)]
    shapes += [] if proj is None else [(H, proj)]
    args = leaves(*shapes, dtype=torch.float32)
    opts = dict(cell_clip=3.0, proj_clip=None if proj is None else 2.0)
    want = counted(lambda: lstm_cell_reference(*[a.detach().double().requires_grad_() for a in args], **opts))
    assert min(want) > 0
    assert counted(lambda: lstm_cell(*args, **opts)) == want


@pytest.mark.parametrize("wants", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["x,h", "h", "x", "weights"])
def test_step_backward_counts_what_nn_lstm_cell_counts(wants):
    """One step (the step kernels) with its input x and state h wanting a gradient or not: the
    backward computes dx and dh only where wanted, as nn.LSTMCell's does, and counts as much."""
    x, c, h, kernel, bias = leaves((B, D), (B, H), (B, H), (D + H, 4 * H), (4 * H,), dtype=torch.float32)
    x.requires_grad_(wants[0])
    h.requires_grad_(wants[1])
    ref = torch.nn.LSTMCell(D, H, dtype=torch.float64)
    want = counted(lambda: ref(x.detach().double().requires_grad_(wants[0]),
                               (h.detach().double().requires_grad_(wants[1]), c.detach().double())))
    assert counted(lambda: lstm_cell(x, c, h, kernel, bias)) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_counts_the_initial_states_product_also_where_not_wanted(dtype):
    """An input that wants no gradient (and hx None): the backward counts what nn.LSTM counts plus,
    per layer, the product of the initial state's gradient, which the kernels and the loop compute
    whether wanted or not (nn.LSTM skips it)."""
    x = torch.randn(T, B, D, dtype=dtype)
    ours = LSTM(D, H, num_layers=2, proj_size=P, use_peepholes=True, dtype=dtype)
    ref = torch.nn.LSTM(D, H, num_layers=2, proj_size=P, dtype=torch.float64)
    _, ours_backward = counted(lambda: ours(x)[0:1])
    _, ref_backward = counted(lambda: ref(x.double())[0:1])
    assert ours_backward == ref_backward + 2 * (2 * B * P * 4 * H)
