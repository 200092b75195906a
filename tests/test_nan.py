"""NaN and inf propagate the same way on the kernel path as on the reference: no clip, relu or hard
sigmoid inside the kernels may turn a NaN into a finite number, and a NaN row adds to the gradients
what it adds in torch's derivatives (which select for relu and the hard sigmoids)."""
import pytest
import torch

from helpers import TOLERANCES, cell_args, cell_tensors, reference_fp32
from triton_lstm import lstm_cell, lstm_sequence, lstm_sequence_reference
from triton_lstm import sequence as sequence_module
from triton_lstm.activations import resolve_activation, resolve_recurrent_activation

# Every kernel min/max: both clips, relu, Keras' and torch's hard sigmoids (cell and gates).
CASES = [dict(activation="tanh", recurrent_activation="sigmoid"),
         dict(activation="relu", recurrent_activation="hard_sigmoid"),
         dict(activation="hard_sigmoid", recurrent_activation="hardsigmoid")]


def poison(x: torch.Tensor) -> torch.Tensor:
    """Row 0 all NaN, row 1 one +inf and one -inf, the other rows finite."""
    x = x.detach().clone()
    x[0] = float("nan")
    x[1, 0] = float("inf")
    x[1, -1] = float("-inf")
    return x


def assert_same_nonfinite(name: str, got: torch.Tensor, want: torch.Tensor, tol) -> None:
    got, want = got.float(), want.float()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{name}: NaN positions differ"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{name}: inf positions differ"
    assert torch.isnan(got).any(), f"{name}: the NaN input did not reach the output"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=tol[0], rtol=tol[1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_step_propagates_nan_and_inf(case, device):
    t = cell_tensors(4, 6, 12, 5, True, torch.float32, device)
    t["x"] = poison(t["x"])
    options = dict(forget_bias=1.0, cell_clip=0.5, proj_clip=0.1, **case)
    h, c = lstm_cell(*cell_args(t), **options)
    _, (h_ref, c_ref) = reference_fp32(t, **options)
    tol = TOLERANCES[torch.float32]["fwd"]
    assert_same_nonfinite("h", h, h_ref, tol)
    assert_same_nonfinite("c", c, c_ref, tol)


@pytest.mark.parametrize("grid_name", ["one", "several"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_sequence_propagates_nan_and_inf(case, grid_name, device, grid):
    grid.use(grid_name)
    T, B, D, N, P = 3, 4, 6, 20, 5
    t = cell_tensors(B, D, N, P, True, torch.float32, device)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, D, generator=g).to(device)
    x[1] = poison(x[1])
    kernel = t["kernel"]
    args = [x, t["h"], t["c"], kernel[:D], kernel[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
            t["projection"]]
    options = dict(forget_bias=1.0, cell_clip=0.5, proj_clip=0.1)
    out = lstm_sequence(*args, **options, **case)
    grid.check()
    ref = lstm_sequence_reference(*args, activation=resolve_activation(case["activation"])[1],
                                  recurrent_activation=resolve_recurrent_activation(case["recurrent_activation"])[1],
                                  **options)
    tol = TOLERANCES[torch.float32]["fwd"]
    for name, got, want in zip(("out", "h_T", "c_T"), out, ref):
        assert_same_nonfinite(name, got, want, tol)


# Every activation as the cell's and as the gates': the kernels' derivatives select where torch's do
# (relu, the hard sigmoids, elu), so a NaN row adds to a weight's gradient what it adds in torch.
GRAD_CASES = CASES + [dict(activation="elu", recurrent_activation="relu"),
                      dict(activation="softsign", recurrent_activation="elu"),
                      dict(activation="linear", recurrent_activation="softsign"),
                      dict(activation="hardsigmoid", recurrent_activation="linear"),
                      dict(activation="sigmoid", recurrent_activation="tanh")]


def assert_same_gradients(names, got, want, tol) -> None:
    """Gradients with non-finite entries: the same NaN and inf positions, the finite ones close."""
    for name, g, w in zip(names, got, want):
        g, w = g.float(), w.float()
        assert torch.equal(torch.isnan(g), torch.isnan(w)), f"d{name}: NaN positions differ"
        assert torch.equal(torch.isinf(g), torch.isinf(w)), f"d{name}: inf positions differ"
        finite = torch.isfinite(w)
        torch.testing.assert_close(g[finite], w[finite], atol=tol[0], rtol=tol[1], msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_step_gradients_with_a_nan_row(case, device):
    t = cell_tensors(4, 6, 12, 5, True, torch.float32, device)
    t["x"][0] = float("nan")
    names = [k for k, v in t.items() if v is not None]
    for k in names:
        t[k].requires_grad_()
    options = dict(forget_bias=1.0, cell_clip=0.5, proj_clip=0.1, **case)
    h, c = lstm_cell(*cell_args(t), **options)
    # The reference on the CPU, whose derivatives the kernels follow: CUDA's elu backward passes the
    # gradient on at a NaN input, where the CPU's (and the kernels') give NaN.
    up, (h_ref, c_ref) = reference_fp32({k: None if v is None else v.detach().cpu().requires_grad_()
                                         for k, v in t.items()}, **options)
    g = torch.Generator().manual_seed(5)
    dh, dc = (torch.randn(v.shape, generator=g) for v in (h_ref, c_ref))
    got = torch.autograd.grad((h * dh.to(device)).sum() + (c * dc.to(device)).sum(), [t[k] for k in names])
    want = torch.autograd.grad((h_ref * dh).sum() + (c_ref * dc).sum(), [up[k] for k in names])
    assert_same_gradients(names, [v.cpu() for v in got], want, TOLERANCES[torch.float32]["grad"])


@pytest.mark.parametrize("on", ["kernels", "cpu loop"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_sequence_gradients_with_a_nan_row(case, on, device, grid, monkeypatch):
    """The persistent kernels (under the interpreter on CPU) and the CPU path's loop."""
    if on == "kernels":
        grid.use("one")
    else:
        monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)
    T, B, D, N, P = 3, 4, 6, 20, 5
    t = cell_tensors(B, D, N, P, True, torch.float32, device)
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(3)).to(device)
    x[1, 0] = float("nan")
    kernel = t["kernel"].detach()
    args = [x, t["h"], t["c"], kernel[:D], kernel[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
            t["projection"]]
    names = ["x", "h0", "c0", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"]
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref_leaves = [a.detach().clone().requires_grad_() for a in args]
    options = dict(forget_bias=1.0, cell_clip=0.5, proj_clip=0.1)
    out = lstm_sequence(*leaves, **options, **case)
    if on == "kernels":
        grid.check()
    ref = lstm_sequence_reference(*ref_leaves, activation=resolve_activation(case["activation"])[1],
                                  recurrent_activation=resolve_recurrent_activation(case["recurrent_activation"])[1],
                                  **options)
    g = torch.Generator().manual_seed(6)
    seeds = [torch.randn(v.shape, generator=g).to(device) for v in ref]
    got = torch.autograd.grad(sum((v * s).sum() for v, s in zip(out, seeds)), leaves)
    want = torch.autograd.grad(sum((v * s).sum() for v, s in zip(ref, seeds)), ref_leaves)
    assert_same_gradients(names, got, want, TOLERANCES[torch.float32]["grad"])


@pytest.mark.parametrize("on", ["kernels", "several programs", "cpu loop", "reference"])
def test_padding_enters_no_gradient(on, device, grid, monkeypatch):
    """What a batch holds past each row's length (NaN here, and a NaN initial state in a row of length
    0) enters nothing: every gradient equals that of the same batch with zeros there, as nn.LSTM's
    packed sequences, which hold no padding at all."""
    if on == "cpu loop":
        monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)
    elif on != "reference":
        grid.use("one" if on == "kernels" else "several")
    T, B, D, N, P = 4, 4, 6, 20, 5
    lengths = torch.tensor([4, 2, 0, 3])
    t = cell_tensors(B, D, N, P, True, torch.float32, device)
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(7)).to(device)
    padding = (torch.arange(T)[:, None] >= lengths[None, :]).to(device)
    x_nan, h_nan, c_nan = x.masked_fill(padding[..., None], float("nan")), t["h"].clone(), t["c"].clone()
    h_nan[2], c_nan[2] = float("nan"), float("nan")
    kernel = t["kernel"].detach()
    weights = [kernel[:D], kernel[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    options = dict(forget_bias=1.0, cell_clip=0.5, proj_clip=0.1)
    g = torch.Generator().manual_seed(8)
    seeds = [torch.randn(shape, generator=g).to(device) for shape in ((T, B, P), (B, P), (B, N))]

    def gradients(x, h0, c0):
        leaves = [v.detach().clone().requires_grad_() for v in (x, h0, c0, *weights)]
        if on == "reference":
            out = lstm_sequence_reference(*leaves, lengths.to(device), **options,
                                          activation=torch.relu, recurrent_activation=torch.sigmoid)
        else:
            out = lstm_sequence(*leaves, lengths.to(device), **options, activation="relu",
                                recurrent_activation="sigmoid")
            if on != "cpu loop":
                grid.check()
        return torch.autograd.grad(sum((v.float() * s).sum() for v, s in zip(out, seeds)), leaves)

    got = gradients(x_nan, h_nan, c_nan)
    want = gradients(x.masked_fill(padding[..., None], 0.0), t["h"], t["c"])
    names = ["x", "h0", "c0", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"]
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), f"d{name}: not finite"
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m: f"d{name}: {m}")
    assert not got[0][padding].any(), "dx past the lengths"


@pytest.mark.parametrize("on", ["kernels", "several programs", "cpu loop"])
def test_input_past_the_lengths_gets_a_zero_gradient_next_to_an_infinite_weight(on, device, grid, monkeypatch):
    """x past a row's length enters nothing, so its gradient is 0 even where a weight it would meet is
    infinite (not 0 * inf); inside the lengths the gradient is the reference's, NaN where it is."""
    if on == "cpu loop":
        monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)
    else:
        grid.use("one" if on == "kernels" else "several")
    T, B, D, N, P = 4, 4, 6, 20, 5
    lengths = torch.tensor([4, 2, 0, 3]).to(device)
    t = cell_tensors(B, D, N, P, True, torch.float32, device)
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(9)).to(device)
    kernel = t["kernel"].detach().clone()
    kernel[1, 3] = float("inf")
    args = [x, t["h"], t["c"], kernel[:D], kernel[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
            t["projection"], lengths]
    seed = torch.randn(T, B, P, generator=torch.Generator().manual_seed(10)).to(device)

    def dx(run, **activations):
        x_leaf = x.clone().requires_grad_()
        out = run(x_leaf, *args[1:], forget_bias=1.0, cell_clip=0.5, **activations)[0]
        return torch.autograd.grad((out * seed).sum(), x_leaf)[0]

    got = dx(lstm_sequence)
    if on != "cpu loop":
        grid.check()
    want = dx(lstm_sequence_reference, activation=torch.tanh, recurrent_activation=torch.sigmoid)
    padding = (torch.arange(T)[:, None] >= lengths.cpu()[None, :]).to(device)
    assert torch.equal(got[padding], torch.zeros_like(got[padding])), "dx past the lengths"
    assert_same_nonfinite("dx", got, want, TOLERANCES[torch.float32]["grad"])


@pytest.mark.parametrize("on", ["kernels", "several programs", "cpu loop"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_sequence_gradients_with_an_infinite_projection_weight(case, on, device, grid, monkeypatch):
    """An infinite projection weight makes some of dy NaN: the units past N in a program's slice
    (N=6 fills none of them) must not turn that into NaN in every column of dh through their zero
    weights, so every gradient has the reference's NaN positions."""
    if on == "cpu loop":
        monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)
    else:
        grid.use("one" if on == "kernels" else "several")
    T, B, D, N, P = 3, 2, 3, 6, 3
    t = cell_tensors(B, D, N, P, True, torch.float32, device)
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(11)).to(device)
    kernel, projection = t["kernel"].detach(), t["projection"].detach().clone()
    projection[0, 1] = float("inf")
    args = [x, t["h"], t["c"], kernel[:D], kernel[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
            projection]
    names = ["x", "h0", "c0", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"]
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref_leaves = [a.detach().clone().requires_grad_() for a in args]
    out = lstm_sequence(*leaves, cell_clip=0.5, **case)[0]
    if on != "cpu loop":
        grid.check()
    ref = lstm_sequence_reference(*ref_leaves, cell_clip=0.5, activation=resolve_activation(case["activation"])[1],
                                  recurrent_activation=resolve_recurrent_activation(case["recurrent_activation"])[1])[0]
    seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(12)).to(device)
    got = torch.autograd.grad((out * seed).sum(), leaves)
    want = torch.autograd.grad((ref * seed).sum(), ref_leaves)
    assert any(torch.isnan(w).any() for w in want)
    assert_same_gradients(names, got, want, TOLERANCES[torch.float32]["grad"])
