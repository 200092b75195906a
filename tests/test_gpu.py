"""GPU-only checks: the full option product at larger sizes, long sequences and the grid barrier under load.

Skipped without a CUDA device. Run on a GPU machine with ``make test`` (or ``make gpu-check``).
"""
import pytest
import torch

from helpers import CELL_AXES, TOLERANCES, assert_close, cell_tensors
from pairwise import case_id, product
from test_step_kernels import run_case
from triton_lstm import lstm_cell, lstm_sequence, lstm_sequence_reference
from triton_lstm.activations import resolve_activation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def check_barriers(monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_CHECK_BARRIER", "1")  # raise if a grid barrier ever timed out


FULL = product(CELL_AXES)


@pytest.mark.parametrize("case", FULL, ids=case_id)
def test_step_full_product(case):
    run_case(case, B=37, D=80, N=96, P=48, device="cuda")


def sequence_case(T, B, D, N, P, dtype, peepholes=True, cell_clip=3.0, proj_clip=None, activation="tanh",
                  lengths=None, seed=0):
    t = cell_tensors(B, D, N, P, peepholes, dtype, "cuda", seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = (torch.randn(T, B, D, generator=g)).to("cuda", dtype)
    w_x, w_h = t["kernel"][:D], t["kernel"][D:]
    args = [x, t["h"], t["c"], w_x, w_h, t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    opts = dict(cell_clip=cell_clip, proj_clip=proj_clip)
    out = lstm_sequence(*args, lengths, activation=activation, **opts)
    ref = lstm_sequence_reference(*[None if a is None else a.detach().float() for a in args],
                                  None if lengths is None else lengths, activation=resolve_activation(activation)[1],
                                  **opts)
    return out, ref


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("proj", [None, 128])
def test_long_sequence_many_programs(dtype, proj):
    """T=1000 at a width that fills every SM: a hang or a lost barrier fails here."""
    T, B, D, N = 1000, 64, 64, 512
    lengths = torch.randint(0, T + 1, (B,), device="cuda")
    lengths[0] = T
    (out, h, c), (r_out, r_h, r_c) = sequence_case(T, B, D, N, proj, dtype, proj_clip=1.0 if proj else None,
                                                   lengths=lengths)
    # Errors compound over 1000 steps in half precision; compare with looser bounds there.
    tol = {torch.float32: (2e-4, 2e-4), torch.float16: (3e-2, 3e-2), torch.bfloat16: (1.5e-1, 1e-1)}[dtype]
    assert_close("out", out, r_out, tol)
    assert_close("h_T", h, r_h, tol)
    assert_close("c_T", c, r_c, tol)


@pytest.mark.timeout(300)
def test_sequence_matches_step_path_and_is_repeatable():
    """The persistent kernel against the fused step kernel on the GPU; two runs give identical bits."""
    T, B, D, N, P = 64, 48, 40, 256, 96
    t = cell_tensors(B, D, N, P, True, torch.float32, "cuda", 3)
    x = torch.randn(T, B, D, device="cuda")
    opts = dict(cell_clip=2.0, proj_clip=1.5)
    args = (x, t["h"], t["c"], t["kernel"][:D], t["kernel"][D:], t["bias"], t["w_f_diag"], t["w_i_diag"],
            t["w_o_diag"], t["projection"])
    out1, h1, c1 = lstm_sequence(*args, **opts)
    out2, _, _ = lstm_sequence(*args, **opts)
    assert torch.equal(out1, out2)
    h, c = t["h"], t["c"]
    outs = []
    for step in range(T):
        h, c = lstm_cell(x[step], c, h, t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
                         t["projection"], **opts)
        outs.append(h)
    tol = TOLERANCES[torch.float32]["grad"]
    assert_close("out", out1, torch.stack(outs), tol)
    assert_close("c_T", c1, c, tol)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sequence_gradients_large(dtype):
    T, B, D, N, P = 200, 64, 96, 384, 128
    lengths = torch.randint(0, T + 1, (B,), device="cuda")
    t = cell_tensors(B, D, N, P, True, dtype, "cuda", 5)
    x = torch.randn(T, B, D, device="cuda", dtype=dtype)
    leaves = [x, t["h"], t["c"], t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    for v in leaves:
        v.requires_grad_()
    opts = dict(cell_clip=2.0, proj_clip=1.0)

    def run(fn, ts):
        x_, h_, c_, k_, b_, wf, wi, wo, pr = ts
        return fn(x_, h_, c_, k_[:D], k_[D:], b_, wf, wi, wo, pr, lengths, **opts)

    out = run(lstm_sequence, leaves)
    up = [v.detach().float().requires_grad_() for v in leaves]
    ref = run(lstm_sequence_reference, up)
    g = [torch.randn_like(o, dtype=torch.float32) for o in ref]
    grads = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(out, g)), leaves)
    grads_ref = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, g)), up)
    tol = (1e-3, 1e-3) if dtype == torch.float32 else (5e-2, 5e-2)
    for name, a, b in zip(["x", "h0", "c0", "kernel", "bias", "w_f", "w_i", "w_o", "proj"], grads, grads_ref):
        assert_close(f"d{name}", a, b, tol)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_graph_capture_forward_and_backward(dtype):
    """Forward and backward of the persistent kernels captured in a CUDA graph and replayed on new data."""
    T, B, D, N, P = 32, 16, 24, 64, 32
    t = cell_tensors(B, D, N, P, True, dtype, "cuda", 11)
    weights = [t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    for w in weights:
        w.requires_grad_()
    x = torch.randn(T, B, D, device="cuda", dtype=dtype)
    lengths = torch.randint(0, T + 1, (B,), device="cuda")

    def step():
        k, b, wf, wi, wo, pr = weights
        out, h, c = lstm_sequence(x, t["h"], t["c"], k[:D], k[D:], b, wf, wi, wo, pr, lengths, cell_clip=2.0,
                                  proj_clip=1.0)
        return out, torch.autograd.grad(out.float().square().sum() + c.sum(), weights)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # tunes and compiles outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_grads = step()
    x.copy_(torch.randn_like(x))
    lengths.copy_(torch.randint(0, T + 1, (B,), device="cuda"))
    graph.replay()
    out, grads = step()
    torch.testing.assert_close(g_out, out)
    for a, b in zip(g_grads, grads):
        torch.testing.assert_close(a, b)
