"""The fused step kernels (interpreter on CPU, compiled on GPU) against the plain-PyTorch reference."""
import pytest
import torch

from helpers import CELL_AXES, TOLERANCES, assert_close, cell_args, cell_tensors, reference_fp32
from triton_lstm.activations import activation_id
from triton_lstm.pairwise import case_id, pairwise
from triton_lstm import lstm_cell
from triton_lstm.launch import interpreting, kernels_run_on

CASES = pairwise(CELL_AXES)


def run_case(case, B, D, N, P, device, seed=0):
    dtype = case["dtype"]
    has_proj = case["projection"] != "none"
    t = cell_tensors(B, D, N, P if has_proj else None, case["peepholes"], dtype, device, seed)
    for v in t.values():
        if v is not None:
            v.requires_grad_()
    options = dict(forget_bias=case["forget_bias"], cell_clip=case["cell_clip"],
                   proj_clip=0.25 if case["projection"] == "proj+clip" else None, activation=case["activation"],
                   recurrent_activation=case.get("recurrent_activation"))
    assert kernels_run_on(t["x"].device, dtype)
    h, c = lstm_cell(*cell_args(t), **options)
    up, (h_ref, c_ref) = reference_fp32(t, **options)
    tol = TOLERANCES[dtype]
    assert h.dtype == dtype and c.dtype == torch.float32
    assert_close("h", h, h_ref, tol["fwd"])
    assert_close("c", c, c_ref, tol["fwd"])
    if interpreting() and dtype == torch.bfloat16 and options["proj_clip"] is not None:
        # The interpreter rounds fp32 -> bf16 by truncation (GPUs and the reference round to
        # nearest), so m, rounded before the projection, lands on the other side of proj_clip here
        # and there: the masks differ from the reference's. The GPU tests check these gradients.
        return
    g = torch.Generator().manual_seed(seed + 1)
    gh = torch.randn(h.shape, generator=g).to(device)
    gc = torch.randn(c.shape, generator=g).to(device)
    names = [k for k, v in t.items() if v is not None]
    grads = torch.autograd.grad((h.float() * gh).sum() + (c * gc).sum(), [t[k] for k in names])
    grads_ref = torch.autograd.grad((h_ref * gh).sum() + (c_ref * gc).sum(), [up[k] for k in names])
    for name, got, want in zip(names, grads, grads_ref):
        assert got.dtype == t[name].dtype, name
        assert_close(f"d{name}", got, want, tol["grad"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_step_matches_reference_odd_shapes(case, device):
    run_case(case, B=3, D=7, N=10, P=5, device=device)


@pytest.mark.parametrize("B,D,N,P", [(1, 1, 1, 1), (17, 33, 40, 24), (2, 16, 16, 32)])
def test_step_shapes_tile_edges(B, D, N, P, device):
    """Batches, inputs and units around the block sizes, and a projection wider than num_units."""
    case = dict(activation="tanh", peepholes=True, cell_clip=1.0, projection="proj+clip", forget_bias=1.0,
                dtype=torch.float32)
    run_case(case, B, D, N, P, device)
    run_case({**case, "projection": "none"}, B, D, N, P, device)


def test_strided_inputs_and_half_state(device):
    """x as a time slice of a [B, T, D] tensor (row stride T*D) and c passed in the half dtype."""
    t = cell_tensors(4, 6, 12, None, True, torch.float16, device)
    seq = torch.randn(4, 3, 6, device=device, dtype=torch.float16)
    t["x"] = seq[:, 1]
    t["c"] = t["c"].half()
    h, c = lstm_cell(*cell_args(t))
    _, (h_ref, c_ref) = reference_fp32(t)
    assert_close("h", h, h_ref, TOLERANCES[torch.float16]["fwd"])
    assert_close("c", c, c_ref, TOLERANCES[torch.float16]["fwd"])


@pytest.mark.parametrize("wanted", [["x"], ["h"], ["c", "kernel"], ["x", "h", "projection"]],
                         ids=["x", "h", "neither", "both"])
def test_step_backward_computes_only_the_input_gradients_wanted(wanted, device):
    """The step's backward computes dx and dh only where they are wanted (a decoder's data input,
    a zero first state): those wanted equal a backward's that wants every one (checked against the
    reference above)."""
    t = cell_tensors(3, 7, 10, 5, True, torch.float32, device)
    options = dict(cell_clip=1.0, proj_clip=0.25)

    def grads(wants):
        args = {k: None if v is None else v.detach().requires_grad_(k in wants) for k, v in t.items()}
        h, c = lstm_cell(*cell_args(args), **options)
        return torch.autograd.grad(h.square().sum() + c.square().sum(), [args[k] for k in wanted])

    for name, got, want in zip(wanted, grads(wanted), grads([k for k, v in t.items() if v is not None])):
        assert torch.equal(got, want), name


def test_step_backward_op_schema_and_fake(device):
    """torch.library.opcheck of the step's backward op with each choice of the gradients wanted, and
    without that argument (a graph compiled against the op before it took it): every one computed."""
    t = cell_tensors(3, 7, 10, 5, True, torch.float32, device)
    acts = activation_id("tanh"), activation_id("sigmoid")
    options = (*acts, 1.0, 1.0, 0.25)
    with torch.no_grad():
        _, c_new, z, m, y = torch.ops.triton_lstm.step_fwd(*cell_args(t), *options)
        g = torch.Generator().manual_seed(1)
        dh, dc = torch.randn(3, 5, generator=g).to(device), torch.randn(c_new.shape, generator=g).to(device)
        args = (dh, dc, z, t["c"], t["kernel"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"], y,
                *options, 7)
        full = torch.ops.triton_lstm.step_bwd(*args)
        for wanted in ([True, True], [True, False], [False, True], [False, False]):
            torch.library.opcheck(torch.ops.triton_lstm.step_bwd.default, (*args, wanted))
            got = torch.ops.triton_lstm.step_bwd(*args, wanted)
            for i, want in zip((2, 3), wanted):
                assert torch.equal(got[i], full[i]) if want else got[i].numel() == 0
