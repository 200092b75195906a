"""The persistent sequence kernels (``lstm_sequence``) and ``dynamic_rnn``: against the reference,
against stepping the fused cell kernel, around the tiles, TF's length masking, and bad arguments.

Under the interpreter grid "one" launches one program, which runs the whole kernel with its grid
barriers; grid "several" (pinned tiles, conftest.GRIDS) launches one phase of one step at a time
over several programs, which exercises the tile ownership of a multi-program grid. On a GPU both
are real persistent grids.
"""
import re

import pytest
import torch
import torch.nn.utils.parametrize
import triton
import triton.language as tl

from helpers import CELL_AXES, TOLERANCES, as_inputs, assert_close, cell_tensors
from triton_lstm.pairwise import case_id, pairwise
from triton_lstm import (LSTMCell, LSTMStateTuple, dynamic_rnn, lstm_cell, lstm_sequence,
                         lstm_sequence_reference)
from triton_lstm.activations import resolve_activation, resolve_recurrent_activation
from triton_lstm.kernels.lstm_sequence import BARRIER_FAILED, grid_barrier, mark_barrier_failed
from triton_lstm.launch import interpreting, kernels_run_on
import triton_lstm.sequence
from triton_lstm.sequence import _raise_on_flags

WEIGHTS = ("w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection")
FP32 = TOLERANCES[torch.float32]


def seq_tensors(T, B, D, N, P, peepholes, dtype, device, seed=0):
    """Time-major x, initial state and TF-layout weights from helpers.cell_tensors (no gate
    saturates), the kernel split into its input and recurrent row blocks. c0 is float32."""
    t = cell_tensors(B, D, N, P, peepholes, dtype, device, seed)
    g = torch.Generator().manual_seed(seed + 100)
    kernel = t.pop("kernel")
    t.update(x=torch.randn(T, B, D, generator=g).to(device=device, dtype=dtype), h0=t.pop("h"), c0=t.pop("c"),
             w_x=kernel[:D].clone(), w_h=kernel[D:].clone())
    return t


def seq_args(t):
    return tuple(t[k] for k in ("x", "h0", "c0") + WEIGHTS)


def torch_gate_order(w, layout="contiguous"):
    """w [..., 4N] in TF's gate order (i, j, f, o) permuted by index into torch's (i, f, g, o), a
    differentiable function of w (not triton_lstm's swap); a 2-D one as ``layout``: contiguous, or
    the transposed view of a contiguous weight (as LSTM passes nn.LSTM's)."""
    n = w.shape[-1] // 4
    blocks = [torch.arange(g * n, (g + 1) * n) for g in (0, 2, 1, 3)]
    w = w[..., torch.cat(blocks)]
    return w.t().contiguous().t() if layout == "transposed-view" and w.dim() == 2 else w


def in_torch_gate_order(run, layout="contiguous"):
    """run(*lstm_sequence's tensors in TF's gate order, ..., **options), calling ``run`` with w_x,
    w_h and bias in torch's gate order and ``gate_order="torch"``."""
    def called(x, h0, c0, w_x, w_h, bias, *rest, **options):
        w_x, w_h = (torch_gate_order(w, layout) for w in (w_x, w_h))
        return run(x, h0, c0, w_x, w_h, torch_gate_order(bias), *rest, gate_order="torch", **options)
    return called


def variable_lengths(T, B, device):
    """[B] lengths with a 0 first (when B > 1), a full-length row last, and others in between."""
    lengths = (torch.arange(B) * 2) % (T + 1)
    lengths[-1] = T
    return lengths.to(device)


def check_masking(out, h_T, c_T, t, lengths):
    """TF's masking, exactly: outputs past a row's length are 0 and a length-0 row keeps its state."""
    steps = torch.arange(out.shape[0], device=out.device)[:, None]
    past = steps >= lengths[None, :]
    assert (out[past] == 0).all(), "outputs past the length must be exactly 0"
    empty = lengths == 0
    assert torch.equal(h_T[empty], t["h0"][empty]), "a length-0 row must keep h0"
    assert torch.equal(c_T[empty], t["c0"][empty].float()), "a length-0 row must keep c0"


def case_tensors(case, T, B, D, N, width, device, seed):
    """``seq_tensors`` for a test case, each a leaf that requires grad, and the case's options."""
    t = seq_tensors(T, B, D, N, width, case["peepholes"], case["dtype"], device, seed)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    options = dict(forget_bias=case["forget_bias"], cell_clip=case["cell_clip"],
                   proj_clip=0.25 if case["projection"] == "proj+clip" else None)
    return t, options


def check_case(run, case, t, options, lengths, tol, seed, grads=True, half_inputs=False):
    """run(*lstm_sequence's tensors, lengths, activation, recurrent_activation, **options) against the
    reference on the same values, in float64 for float64 inputs and float32 otherwise: outputs and
    final state (c_T in the reference's dtype), TF's masking, and with ``grads`` every gradient.
    With ``half_inputs`` half-precision values go into the reference as such (helpers.as_inputs: the
    kernels' rounding of m and h); the CPU loop computes them in float32 throughout.
    Returns run's (out, h_T, c_T)."""
    dtype = case["dtype"]
    activation, gate = case["activation"], case.get("recurrent_activation")
    out, h_T, c_T = run(*seq_args(t), lengths, activation=activation, recurrent_activation=gate, **options)
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    up = {k: (None if v is None else v.detach().to(ref_dtype).requires_grad_()) for k, v in t.items()}
    ref = lstm_sequence_reference(*seq_args(as_inputs(up, t) if half_inputs else up), lengths,
                                  activation=resolve_activation(activation)[1],
                                  recurrent_activation=resolve_recurrent_activation(gate)[1], **options)
    ref = tuple(r.to(ref_dtype) for r in ref)
    assert out.dtype == dtype and h_T.dtype == dtype and c_T.dtype == ref_dtype
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h_T, c_T), ref):
        assert_close(name, got, want, tol["fwd"])
    if lengths is not None:
        check_masking(out, h_T, c_T, t, lengths)
    if grads:
        check_sequence_grads(t, up, (out, h_T, c_T), ref, lengths, tol["grad"], seed)
    return out, h_T, c_T


def run_sequence_case(case, T, B, D, N, P, device, grid, lengths=None, seed=0):
    """lstm_sequence against the float32 reference on the same values: outputs, final state, all grads."""
    grid.use(case["grid"])
    dtype = case["dtype"]
    width = P if case["projection"] != "none" else N
    t, options = case_tensors(case, T, B, D, N, P if case["projection"] != "none" else None, device, seed)
    assert kernels_run_on(t["x"].device, dtype)
    # As in test_step_kernels: the interpreter rounds fp32 -> bf16 by truncation (GPUs and the
    # reference round to nearest), so m, rounded to bf16 before the projection, lands on the other
    # side of proj_clip here and there and the clip's gradient masks differ from the reference's. The
    # forward is continuous in the clip and still checked; on a GPU the gradients are too.
    grads = not (interpreting() and dtype == torch.bfloat16 and options["proj_clip"] is not None)
    out, h_T, c_T = check_case(lstm_sequence, case, t, options, lengths, TOLERANCES[dtype], seed, grads,
                               half_inputs=True)
    assert out.shape == (T, B, width) and h_T.shape == (B, width) and c_T.shape == (B, N)
    grid.check()


def check_sequence_grads(t, up, results, ref, lengths, tol, seed):
    """Every gradient of a random linear function of results = (out, h_T, c_T) against the same of the
    reference's on ``up`` (copies of the leaves t); with lengths, TF's masking of the gradients."""
    out, h_T, c_T = results
    g = torch.Generator().manual_seed(seed + 1)
    g_out, g_h, g_c = (torch.randn(r.shape, generator=g, dtype=r.dtype).to(r.device) for r in ref)
    names = [k for k, v in t.items() if v is not None]
    grads = torch.autograd.grad((out.to(g_out.dtype) * g_out).sum() + (h_T.to(g_h.dtype) * g_h).sum()
                                + (c_T * g_c).sum(), [t[k] for k in names])
    grads_ref = torch.autograd.grad((ref[0] * g_out).sum() + (ref[1] * g_h).sum() + (ref[2] * g_c).sum(),
                                    [up[k] for k in names])
    got = dict(zip(names, grads))
    for name, want in zip(names, grads_ref):
        assert got[name].dtype == t[name].dtype, name
        assert_close(f"d{name}", got[name], want, tol)
    if lengths is not None:
        steps = torch.arange(out.shape[0], device=out.device)[:, None]
        assert (got["x"][steps >= lengths[None, :]] == 0).all(), "dx past the length must be exactly 0"
        empty = lengths == 0
        # A length-0 row passes its final-state gradients straight through to the initial state.
        assert torch.equal(got["h0"][empty], g_h[empty].to(t["h0"].dtype))
        assert torch.equal(got["c0"][empty], g_c[empty].to(t["c0"].dtype))


# A cell's option axes, plus what only sequences have.
AXES = dict(CELL_AXES, lengths=["none", "variable"], grid=["one", "several"])
CASES = pairwise(AXES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sequence_matches_reference_odd_shapes(case, device, grid):
    T, B = 5, 3
    lengths = variable_lengths(T, B, device) if case["lengths"] == "variable" else None
    run_sequence_case(case, T, B, D=7, N=20, P=5, device=device, grid=grid, lengths=lengths)


FULL_OPTIONS = dict(activation="tanh", peepholes=True, cell_clip=0.8, projection="proj+clip", forget_bias=1.0,
                    dtype=torch.float32)


@pytest.mark.parametrize("grid_name", ["one", "several"])
@pytest.mark.parametrize("projection", ["none", "proj+clip"])
@pytest.mark.parametrize("T,B,D,N,P", [(3, 17, 33, 40, 24), (4, 1, 1, 17, 1), (3, 2, 16, 16, 33)],
                         ids=["B17-D33-N40-P24", "B1-D1-N17-P1", "P33-wider-than-N16"])
def test_sequence_shapes_around_tiles(T, B, D, N, P, projection, grid_name, device, grid):
    """Batch, input and units around the block sizes (16/32), a single row, input and output, and P > N."""
    lengths = variable_lengths(T, B, device) if B > 1 else torch.tensor([T - 1], device=device)
    case = dict(FULL_OPTIONS, projection=projection, grid=grid_name)
    run_sequence_case(case, T, B, D, N, P, device, grid, lengths=lengths, seed=3)


def test_sequence_single_unit(device, grid):
    run_sequence_case(dict(FULL_OPTIONS, grid="one"), 4, 2, 1, 1, 1, device, grid, seed=4)


@pytest.mark.parametrize("path", ["one", "several", "without-kernels"])
def test_sequence_without_inputs(path, device, grid, monkeypatch):
    """Input width 0: the recurrence alone, as a TF cell on [B, 0] inputs computes it (w_x [0, 4N] gets
    its empty gradient); on the kernels with one program or several, and without them (stubbed as
    not running on the device: the CPU path's loop)."""
    lengths = torch.tensor([4, 0, 2], device=device)
    if path != "without-kernels":
        run_sequence_case(dict(FULL_OPTIONS, grid=path), 4, 3, 0, 20, 5, device, grid, lengths=lengths, seed=5)
        return
    monkeypatch.setattr(triton_lstm.sequence, "kernels_run_on", lambda *_: False)
    case = dict(FULL_OPTIONS, grid="one")
    t, options = case_tensors(case, 4, 3, 0, 20, 5, device, 5)
    check_case(lstm_sequence, case, t, options, lengths, TOLERANCES[torch.float32], 5)


@pytest.mark.parametrize("grid_name", ["one", "several"])
def test_sequence_one_step(grid_name, device, grid):
    T, B = 1, 3
    case = dict(FULL_OPTIONS, grid=grid_name)
    run_sequence_case(case, T, B, D=7, N=20, P=5, device=device, grid=grid,
                      lengths=torch.tensor([1, 0, 1], device=device))


@pytest.mark.parametrize("D", [7, 0])
@pytest.mark.parametrize("projection", [None, 5])
@pytest.mark.parametrize("path", ["one", "several", "without-kernels"])
def test_sequence_zero_steps_returns_initial_state(projection, path, D, device, grid, monkeypatch):
    """No step: the final state is the initial one, its gradients pass straight through and every
    weight gets a zero gradient of its shape (an empty one for inputs of width 0); on the kernels
    with one program or several, and without them (stubbed as not running on the device)."""
    if path == "without-kernels":
        monkeypatch.setattr(triton_lstm.sequence, "kernels_run_on", lambda *_: False)
    B, N = 3, 10
    t = seq_tensors(0, B, D, N, projection, True, torch.float32, device)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    grid.use("one" if path == "without-kernels" else path)
    out, h_T, c_T = lstm_sequence(*seq_args(t), torch.zeros(B, dtype=torch.long, device=device), cell_clip=0.8)
    width = projection or N
    assert out.shape == (0, B, width) and out.dtype == torch.float32
    assert torch.equal(h_T, t["h0"]) and torch.equal(c_T, t["c0"])
    g = torch.Generator().manual_seed(1)
    g_h, g_c = torch.randn(B, width, generator=g).to(device), torch.randn(B, N, generator=g).to(device)
    names = [k for k, v in t.items() if v is not None]
    grads = dict(zip(names, torch.autograd.grad((h_T * g_h).sum() + (c_T * g_c).sum(), [t[k] for k in names])))
    assert torch.equal(grads["h0"], g_h) and torch.equal(grads["c0"], g_c)
    assert grads["x"].shape == (0, B, D)
    for name in names:
        if name not in ("x", "h0", "c0"):
            assert grads[name].shape == t[name].shape and (grads[name] == 0).all(), name


@pytest.mark.parametrize("steps", [0, 4])
@pytest.mark.parametrize("lengths", [None, "variable"])
@pytest.mark.parametrize("path", ["kernels", "without-kernels", "float64"])
def test_results_are_tensors_of_their_own(path, lengths, steps, device, monkeypatch):
    """The outputs, h_T and c_T take ``detach_()``, h_T and c_T in-place ops before the backward too, as
    nn.LSTM's output, h_n and c_n do: none is a view of a buffer (the backward keeps some) or the
    caller's h0. On
    every path: the kernels; without them (stubbed as not running on the device: float32 on the CPU
    path as users run it: torch's LSTM, the loop with lengths); float64 (the loop, the reference on a GPU)."""
    if path == "without-kernels":
        monkeypatch.setattr(triton_lstm.sequence, "kernels_run_on", lambda *_: False)
    dtype = torch.float64 if path == "float64" else torch.float32
    B, D, N = 3, 7, 10
    t = seq_tensors(steps, B, D, N, None, False, dtype, device)
    t["c0"] = t["c0"].to(dtype)
    lengths = None if lengths is None else torch.tensor([steps, 0, steps // 2], device=device)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    out, h_T, c_T = lstm_sequence(*seq_args(t), lengths)
    for result in (out, h_T, c_T):
        result.detach_()
        assert not result.requires_grad
    out, h_T, c_T = lstm_sequence(*seq_args(t), lengths)
    h_T.mul_(2)
    c_T.add_(1)
    assert not torch.equal(h_T, t["h0"]), "h0 was changed in place"
    names = [k for k, v in t.items() if v is not None]
    grads = torch.autograd.grad(out.sum() + (h_T * h_T).sum() + (c_T * c_T).sum(), [t[k] for k in names])
    up = {k: (None if v is None else v.detach().double().requires_grad_()) for k, v in t.items()}
    r_out, r_h, r_c = lstm_sequence_reference(*seq_args(up), lengths)
    want = torch.autograd.grad(r_out.sum() + (4 * r_h * r_h).sum() + ((r_c + 1) ** 2).sum(), [up[k] for k in names],
                               materialize_grads=True)
    for name, got, w in zip(names, grads, want):
        assert_close(f"d{name}", got, w.to(got.dtype), TOLERANCES[torch.float32]["grad"])


@pytest.mark.filterwarnings("ignore:activation .* has no kernel implementation")
@pytest.mark.parametrize("activation", ["tanh", "callable"])
def test_sequence_zero_steps_returns_c_in_float32_for_half_inputs(activation, device):
    """c_T is float32 for half-precision inputs also after no step, on the kernels' or the CPU path
    and on the reference's (a callable activation), given c0 in the inputs' dtype (the reference
    returned that c0 as given)."""
    t = seq_tensors(0, 3, 7, 10, None, True, torch.bfloat16, device)
    t["c0"] = t["c0"].bfloat16()
    out, h_T, c_T = lstm_sequence(*seq_args(t), activation="tanh" if activation == "tanh" else lambda v: v.tanh())
    assert out.shape == (0, 3, 10) and h_T.dtype == torch.bfloat16
    assert c_T.dtype == torch.float32 and torch.equal(c_T, t["c0"].float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("grid_name", ["one", "several"])
def test_sequence_matches_stepping_the_cell_kernel(dtype, grid_name, device, grid):
    """An independent path: the fused step kernel (lstm_cell) T times, with TF's masking by hand."""
    grid.use(grid_name)
    T, B, D, N, P = 5, 3, 7, 20, 5
    t = seq_tensors(T, B, D, N, P, True, dtype, device, seed=5)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    lengths = torch.tensor([3, 0, 5], device=device)
    options = dict(forget_bias=1.0, cell_clip=0.8, proj_clip=0.25, activation="softsign")
    out, h_T, c_T = lstm_sequence(*seq_args(t), lengths, **options)
    grid.check()

    kernel = torch.cat([t["w_x"], t["w_h"]], dim=0)
    h, c = t["h0"], t["c0"]
    outs = []
    for step in range(T):
        h_new, c_new = lstm_cell(t["x"][step], c, h, kernel, t["bias"], t["w_f_diag"], t["w_i_diag"],
                                 t["w_o_diag"], t["projection"], **options)
        valid = (lengths > step)[:, None]
        outs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
        h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
    ref = (torch.stack(outs), h, c)

    tol = TOLERANCES[dtype]
    for name, got, want in zip(("out", "h_T", "c_T"), (out, h_T, c_T), ref):
        assert_close(name, got, want, tol["fwd"])
    g = torch.Generator().manual_seed(6)
    g_out, g_h, g_c = (torch.randn(r.shape, generator=g).to(device) for r in ref)
    names = [k for k, v in t.items() if v is not None]
    leaves = [t[k] for k in names]
    grads = torch.autograd.grad((out.float() * g_out).sum() + (h_T.float() * g_h).sum() + (c_T * g_c).sum(), leaves)
    grads_ref = torch.autograd.grad((ref[0].float() * g_out).sum() + (ref[1].float() * g_h).sum()
                                    + (ref[2] * g_c).sum(), leaves)
    for name, got, want in zip(names, grads, grads_ref):
        assert_close(f"d{name}", got, want, tol["grad"])


@pytest.mark.parametrize("activation", ["softsign", "callable"])
def test_sequence_takes_weights_in_torch_gate_order(activation, device):
    """gate_order="torch" (nn.LSTM's gate order) on lstm_sequence's every path: the kernels (or the CPU
    path), and the reference for an activation given as a function (softsign's formula): the same
    cell as TF's order, outputs and every gradient, with lengths and all of TF's extras."""
    T, B, D, N, P = 4, 3, 7, 10, 5
    case = dict(FULL_OPTIONS, activation="softsign", recurrent_activation="sigmoid")
    t, options = case_tensors(case, T, B, D, N, P, device, seed=9)
    run = in_torch_gate_order(lstm_sequence)
    if activation == "callable":
        named = run

        def run(*args, activation, **kwargs):
            return named(*args, activation=lambda v: v / (1 + v.abs()), **kwargs)
    check_case(run, case, t, options, torch.tensor([4, 1, 0], device=device), FP32, seed=9)


def test_sequence_non_contiguous_weights(device):
    """Weights as strided views (a transposed tensor's .t(), every other element) give the same result."""
    T, B, D, N, P = 4, 3, 7, 10, 5
    t = seq_tensors(T, B, D, N, P, True, torch.float32, device, seed=8)
    strided = dict(t)
    for name in ("w_x", "w_h", "projection"):
        strided[name] = t[name].t().contiguous().t()
    for name in ("bias", "w_f_diag", "w_i_diag", "w_o_diag"):
        spread = torch.zeros(2 * t[name].shape[0], device=device)
        spread[::2] = t[name]
        strided[name] = spread[::2]
    assert not any(strided[name].is_contiguous() for name in WEIGHTS)
    lengths = torch.tensor([4, 1, 0], device=device)
    options = dict(cell_clip=0.8, proj_clip=0.25)
    results = []
    for tensors in (t, strided):
        leaves = {k: v.detach().clone().requires_grad_() if v.is_contiguous() else v.detach().requires_grad_()
                  for k, v in tensors.items() if v is not None}
        out, h_T, c_T = lstm_sequence(*seq_args({**tensors, **leaves}), lengths, **options)
        loss = out.square().sum() + h_T.sum() + c_T.square().sum()
        results.append(((out, h_T, c_T), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))))
    (fwd, grads), (fwd_s, grads_s) = results
    for name, got, want in zip(("out", "h_T", "c_T"), fwd_s, fwd):
        assert_close(name, got, want, FP32["fwd"])
    for name, want in grads.items():
        assert_close(f"d{name}", grads_s[name], want, FP32["grad"])


# -- dynamic_rnn --------------------------------------------------------------------------------------

T, B, D, N, P = 5, 3, 7, 10, 5
LENGTHS = [3, 0, 5]


def make_cell(device, state_is_tuple=True, seed=0):
    """A cell with every TF option on, none at its default (so dynamic_rnn must pass each one on), and
    a non-zero bias so its gradient is tested."""
    torch.manual_seed(seed)
    cell = LSTMCell(N, use_peepholes=True, cell_clip=0.8, num_proj=P, proj_clip=0.25, forget_bias=0.5,
                    state_is_tuple=state_is_tuple, activation="softsign", input_size=D, device=device)
    with torch.no_grad():
        cell.bias.normal_(0.0, 0.1)
    return cell


def sequence_inputs(device, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(B, T, D, generator=g).to(device)
    state = LSTMStateTuple(torch.randn(B, N, generator=g).to(device), (0.5 * torch.randn(B, P, generator=g)).to(device))
    return inputs, state


def test_dynamic_rnn_matches_stepping_the_cell_with_tf_masking(device):
    cell = make_cell(device)
    inputs, state = sequence_inputs(device)
    lengths = torch.tensor(LENGTHS, device=device)

    leaves = [inputs.clone().requires_grad_(), state.c.clone().requires_grad_(), state.h.clone().requires_grad_()]
    outputs, final = dynamic_rnn(cell, leaves[0], lengths, LSTMStateTuple(leaves[1], leaves[2]))
    assert isinstance(final, LSTMStateTuple)
    assert outputs.shape == (B, T, P) and final.c.shape == (B, N) and final.h.shape == (B, P)

    # The expectation by TF's definition: run every row all T steps, then a row's outputs past its
    # length are 0 and its final state is the one after step length-1 (the initial state for 0).
    ref_leaves = [v.detach().clone().requires_grad_() for v in leaves]
    s = LSTMStateTuple(ref_leaves[1], ref_leaves[2])
    hs, cs = [s.h], [s.c]
    for step in range(T):
        _, s = cell(ref_leaves[0][:, step], s)
        hs.append(s.h)
        cs.append(s.c)
    steps = torch.arange(T, device=device)
    ref_out = torch.where((steps[None, :] < lengths[:, None])[:, :, None], torch.stack(hs[1:], dim=1), 0.0)
    rows = torch.arange(B, device=device)
    ref_h, ref_c = torch.stack(hs)[lengths, rows], torch.stack(cs)[lengths, rows]

    assert_close("outputs", outputs, ref_out, FP32["fwd"])
    assert_close("h", final.h, ref_h, FP32["fwd"])
    assert_close("c", final.c, ref_c, FP32["fwd"])
    assert (outputs[steps[None, :] >= lengths[:, None]] == 0).all(), "outputs past the length must be exactly 0"
    assert torch.equal(final.h[1], state.h[1]) and torch.equal(final.c[1], state.c[1]), "length 0 keeps the state"

    params = dict(cell.named_parameters())
    assert set(params) == {"kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection_kernel"}
    g = torch.Generator().manual_seed(2)
    g_out, g_h, g_c = (torch.randn(r.shape, generator=g).to(device) for r in (ref_out, ref_h, ref_c))

    def loss(out, h, c):
        return (out * g_out).sum() + (h * g_h).sum() + (c * g_c).sum()

    targets = list(params.values())
    grads = torch.autograd.grad(loss(outputs, final.h, final.c), leaves + targets)
    grads_ref = torch.autograd.grad(loss(ref_out, ref_h, ref_c), ref_leaves + targets)
    for name, got, want in zip(["inputs", "c0", "h0"] + list(params), grads, grads_ref):
        assert want.abs().sum() > 0, f"d{name} is zero: the test would not see a missing gradient"
        assert_close(f"d{name}", got, want, FP32["grad"])


class HalfInputs(LSTMCell):
    """A subclass whose forward halves its inputs."""
    def forward(self, inputs, state=None, scope=None):
        return super().forward(inputs * 0.5, state, scope)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing when gradients are computed with respect to module")
@pytest.mark.parametrize("how", ["pre-hook", "subclass", "weight_norm", "backward hook"])
def test_dynamic_rnn_calls_a_cell_with_hooks_or_its_own_forward_at_each_step(how, device):
    """TF's dynamic_rnn calls the cell at each step: a forward of its own or the cell's hooks (old-style
    weight_norm recomputes the kernel in a pre-hook) apply as they do to a call. Each case against the
    sequence op on a plain cell computing the same (inputs halved, or the normalised kernel), with
    NaN in the padding, which enters no gradient."""
    plain = make_cell(device, state_is_tuple=False)
    cell = (HalfInputs if how == "subclass" else LSTMCell)(
        N, use_peepholes=True, cell_clip=0.8, num_proj=P, proj_clip=0.25, forget_bias=0.5, state_is_tuple=False,
        activation="softsign", input_size=D, device=device)
    cell.load_state_dict(plain.state_dict())
    halved = how in ("pre-hook", "subclass")
    backward_calls = []
    if how == "pre-hook":
        cell.register_forward_pre_hook(lambda module, args: (args[0] * 0.5, *args[1:]))
    elif how == "backward hook":
        cell.register_full_backward_hook(lambda module, grad_in, grad_out: backward_calls.append(1))
    elif how == "weight_norm":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(cell, "kernel")
        with torch.no_grad():
            cell.kernel_g.mul_(1.5)    # a kernel the hook recomputes, 1.5 x the plain one
            plain.kernel.mul_(1.5)
    inputs, state = sequence_inputs(device)
    lengths = torch.tensor(LENGTHS, device=device)
    padded = inputs.clone()
    padded[0, LENGTHS[0]:] = float("nan")
    for step in range(2):   # twice: weight_norm's recomputed kernel must not be reused
        out, final = dynamic_rnn(cell, padded, lengths, torch.cat([state.c, state.h], 1))
        want, want_final = dynamic_rnn(plain, inputs * 0.5 if halved else inputs, lengths,
                                       torch.cat([state.c, state.h], 1))
        assert_close("outputs", out, want, FP32["fwd"])
        assert_close("final state", final, want_final, FP32["fwd"])
        got = torch.autograd.grad(out.square().sum() + final.sum(), cell.bias)[0]
        assert_close("dbias", got, torch.autograd.grad(want.square().sum() + want_final.sum(), plain.bias)[0],
                     FP32["grad"])
    assert len(backward_calls) == (2 * T if how == "backward hook" else 0)


def test_dynamic_rnn_calling_the_cell_checks_the_initial_state_and_copies_it_for_no_steps(device):
    cell = LSTMCell(N, num_proj=P, input_size=D, dtype=torch.bfloat16, device=device)
    cell.register_forward_pre_hook(lambda module, args: None)
    inputs, state = sequence_inputs(device)
    inputs, c0, h0 = inputs.bfloat16(), state.c.bfloat16(), state.h.bfloat16()
    with pytest.raises(ValueError, match=r"^initial_state\.c: expected shape \(3, 10\)"):
        dynamic_rnn(cell, inputs, None, LSTMStateTuple(c0[:, 1:], h0))
    out, final = dynamic_rnn(cell, inputs[:, :0], None, LSTMStateTuple(c0, h0))
    assert out.shape == (B, 0, P) and final.c.dtype == torch.float32 and final.h.data_ptr() != h0.data_ptr()
    assert torch.equal(final.c, c0.float()) and torch.equal(final.h, h0)
    lazy = LSTMCell(N, num_proj=P, device=device)   # built by no steps too, as without the hook
    lazy.register_forward_pre_hook(lambda module, args: None)
    dynamic_rnn(lazy, inputs[:, :0].float())
    assert lazy.input_size == D


def test_dynamic_rnn_computes_a_parametrized_kernel_once_a_call(device):
    calls = []

    class Counted(torch.nn.Module):
        def forward(self, w):
            calls.append(1)
            return w * 1.5

    cell = make_cell(device)
    torch.nn.utils.parametrize.register_parametrization(cell, "kernel", Counted())
    inputs, state = sequence_inputs(device)
    calls.clear()
    dynamic_rnn(cell, inputs, None, state)
    assert len(calls) == 1
    calls.clear()
    cell(inputs[:, 0], state)
    assert len(calls) == 1


def test_dynamic_rnn_time_major_is_the_transpose(device):
    cell = make_cell(device)
    inputs, state = sequence_inputs(device)
    lengths = torch.tensor(LENGTHS, device=device)
    out_b, final_b = dynamic_rnn(cell, inputs, lengths, state)
    out_t, final_t = dynamic_rnn(cell, inputs.transpose(0, 1).contiguous(), lengths, state, time_major=True)
    assert out_t.shape == (T, B, P)
    assert torch.equal(out_t.transpose(0, 1), out_b)
    assert torch.equal(final_t.h, final_b.h) and torch.equal(final_t.c, final_b.c)


def test_dynamic_rnn_default_state_is_zeros_and_builds_the_cell(device):
    cell = make_cell(device)
    inputs, _ = sequence_inputs(device)
    out, final = dynamic_rnn(cell, inputs)
    zeros = LSTMStateTuple(torch.zeros(B, N, device=device), torch.zeros(B, P, device=device))
    out_z, final_z = dynamic_rnn(cell, inputs, initial_state=zeros)
    assert torch.equal(out, out_z) and torch.equal(final.h, final_z.h) and torch.equal(final.c, final_z.c)
    lazy = LSTMCell(N, num_proj=P)
    out_lazy, _ = dynamic_rnn(lazy, inputs)
    assert lazy.input_size == D and lazy.kernel.shape == (D + P, 4 * N) and out_lazy.shape == (B, T, P)


def test_dynamic_rnn_concatenated_state(device):
    cell = make_cell(device)
    cat_cell = make_cell(device, state_is_tuple=False)
    cat_cell.load_state_dict(cell.state_dict())
    inputs, state = sequence_inputs(device)
    lengths = torch.tensor(LENGTHS, device=device)
    out, final = dynamic_rnn(cell, inputs, lengths, state)

    s0 = torch.cat([state.c, state.h], dim=1).requires_grad_()
    out_cat, final_cat = dynamic_rnn(cat_cell, inputs, lengths, s0)
    assert final_cat.shape == (B, N + P)
    assert torch.equal(out_cat, out)
    assert torch.equal(final_cat, torch.cat([final.c, final.h], dim=1))
    # The gradient reaches both halves of the concatenated initial state.
    (d_s0,) = torch.autograd.grad(final_cat.sum() + out_cat.sum(), s0)
    leaves = [state.c.clone().requires_grad_(), state.h.clone().requires_grad_()]
    out_t, final_t = dynamic_rnn(cell, inputs, lengths, LSTMStateTuple(*leaves))
    d_c, d_h = torch.autograd.grad(final_t.c.sum() + final_t.h.sum() + out_t.sum(), leaves)
    assert_close("d_state", d_s0, torch.cat([d_c, d_h], dim=1), FP32["grad"])


# -- bad arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["TF", "keras", None, ["tf"]])
def test_bad_gate_order(order):
    t = seq_tensors(2, 3, 4, 5, None, False, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"^gate_order: expected 'tf' \(gates i, j, f, o\) or 'torch' "
                                         r"\(i, f, g, o\), got "):
        lstm_sequence(*seq_args(t), gate_order=order)


LENGTHS_ERROR = r"^lengths \(dynamic_rnn's sequence_length\): "

@pytest.mark.parametrize("lengths,error,pattern", [
    ([T + 1, 0, 1], ValueError, LENGTHS_ERROR + rf"values must lie in \[0, T={T}\], got min 0 and max {T + 1}"),
    ([-1, 2, 3], ValueError, LENGTHS_ERROR + rf"values must lie in \[0, T={T}\], got min -1"),
    ([1.0, 2.0, 3.0], TypeError, LENGTHS_ERROR + r"expected an integer tensor, got torch.float32"),
    ([1, 2], ValueError, LENGTHS_ERROR + rf"expected shape \({B},\) = \[batch\], got \(2,\)"),
    ([[1, 2, 3]], ValueError, LENGTHS_ERROR + rf"expected shape \({B},\) = \[batch\], got \(1, 3\)"),
], ids=["above-T", "negative", "float", "short", "rank-2"])
def test_bad_sequence_length(lengths, error, pattern):
    cell = make_cell("cpu")
    inputs, _ = sequence_inputs("cpu")
    with pytest.raises(error, match=pattern):
        dynamic_rnn(cell, inputs, torch.tensor(lengths))
    t = seq_tensors(T, B, D, N, None, False, torch.float32, "cpu")
    with pytest.raises(error, match=pattern):
        lstm_sequence(*seq_args(t), torch.tensor(lengths))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sequence_length_on_the_cpu_for_gpu_inputs():
    """Lengths on the CPU (as PackedSequence keeps them) are checked there, for free, and moved over."""
    cell = make_cell("cuda")
    inputs, _ = sequence_inputs("cuda")
    out_cpu, final_cpu = dynamic_rnn(cell, inputs, torch.tensor(LENGTHS))
    out_gpu, final_gpu = dynamic_rnn(cell, inputs, torch.tensor(LENGTHS, device="cuda"))
    assert torch.equal(out_cpu, out_gpu) and torch.equal(final_cpu.c, final_gpu.c)
    with pytest.raises(ValueError, match=LENGTHS_ERROR + r"values must lie in \[0, T=5\]"):
        dynamic_rnn(cell, inputs, torch.tensor([6, 0, 1]))


def _shape(*dims):
    return re.escape(str(tuple(dims)))


@pytest.mark.parametrize("which", ["c", "h"])
def test_initial_state_wrong_shape(which):
    cell = make_cell("cpu")
    inputs, state = sequence_inputs("cpu")
    width = N if which == "c" else P
    bad = state._replace(**{which: torch.zeros(B, width + 1)})
    with pytest.raises(ValueError, match=rf"^initial_state\.{which}: expected shape {_shape(B, width)} .*got "
                                         rf"{_shape(B, width + 1)}"):
        dynamic_rnn(cell, inputs, initial_state=bad)
    bad = state._replace(**{which: torch.zeros(B + 1, width)})
    with pytest.raises(ValueError, match=rf"^initial_state\.{which}: expected shape {_shape(B, width)} "
                                         rf"\(batch {B} from inputs, .*got {_shape(B + 1, width)}"):
        dynamic_rnn(cell, inputs, initial_state=bad)


def test_initial_state_wrong_layout():
    inputs, state = sequence_inputs("cpu")
    cat_cell = make_cell("cpu", state_is_tuple=False)
    with pytest.raises(ValueError, match=rf"^initial_state: expected shape {_shape(B, N + P)} .*got "
                                         rf"{_shape(B, N + P - 1)}"):
        dynamic_rnn(cat_cell, inputs, initial_state=torch.zeros(B, N + P - 1))
    with pytest.raises(TypeError, match="^initial_state: expected an LSTMStateTuple"):
        dynamic_rnn(make_cell("cpu"), inputs, initial_state=torch.zeros(B, N + P))


def test_inputs_wrong_rank_or_width():
    cell = make_cell("cpu")
    with pytest.raises(ValueError, match=rf"^inputs: expected a rank-3 tensor, got shape {_shape(B, D)}"):
        dynamic_rnn(cell, torch.randn(B, D))
    with pytest.raises(ValueError, match=rf"^inputs: expected last dimension {D} \(the cell's input_size\), "
                                         rf"got shape {_shape(B, T, D + 1)}"):
        dynamic_rnn(cell, torch.randn(B, T, D + 1))
    with pytest.raises(TypeError, match=r"^cell: expected a triton_lstm.LSTMCell, got LSTM"):
        dynamic_rnn(torch.nn.LSTM(D, N), torch.randn(B, T, D))



def test_stepped_configuration_matches(device, grid, launches):
    """The fallback where no persistent grid builds: one launch per phase of each step."""
    case = dict(FULL_OPTIONS, grid="stepped")
    run_sequence_case(case, 4, 3, 7, 20, 5, device, grid, lengths=variable_lengths(4, 3, device), seed=9)
    # Forward: gates and projection of each of 4 steps; backward: dh and gates of each step, then dh0.
    assert [k for k, _ in launches if k.startswith("seq")] == ["seq_fwd"] * 8 + ["seq_bwd"] * 9


@triton.jit
def _two_programs_time_out(sync_ptr):
    # Both programs of a grid that was not co-resident give up on the same barrier (neither sees the
    # other's flag before setting its own); then one arrives at the next barrier.
    mark_barrier_failed(sync_ptr)
    mark_barrier_failed(sync_ptr)
    grid_barrier(sync_ptr, 0, 1, True)


def test_barrier_failure_flag_survives_several_timeouts(device):
    """The flag the host raises on stays set however many programs time out, and the counter stays
    positive (a later wait then passes at once: its target is below the flag)."""
    if not kernels_run_on(device, torch.float32):
        pytest.skip("the kernels do not run here")
    sync = torch.zeros(2, dtype=torch.int32, device=device)
    _two_programs_time_out[(1,)](sync)
    assert int(sync[0]) == BARRIER_FAILED.value + 1, "flag | one arrival"
    with pytest.raises(RuntimeError, match="grid barrier of the persistent LSTM kernel timed out"):
        _raise_on_flags(sync.cpu(), deferred=False)
