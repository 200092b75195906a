"""The plain-PyTorch reference: its own gradients (gradcheck), torch.nn.LSTM as an independent
implementation of the same cell, and the dispatch of ``lstm_cell`` to it for float64."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from helpers import cell_args, cell_tensors
from triton_lstm import lstm_cell, lstm_cell_reference
from triton_lstm.convert import tf_to_torch_lstm

# (atol, rtol) against torch.nn.LSTM: the two differ only by summation order and by forget_bias
# being folded into the bias (TF adds it after the GEMM), so both are rounding-level.
LSTM_TOLERANCES = {
    torch.float64: dict(fwd=(1e-12, 1e-10), grad=(1e-11, 1e-9)),
    torch.float32: dict(fwd=(2e-6, 1e-5), grad=(2e-5, 1e-4)),
}

B, D, N, P = 3, 4, 5, 3

GRADCHECK_CASES = [
    dict(peepholes=False, cell_clip=None, num_proj=None, proj_clip=None, forget_bias=1.0, activation=torch.tanh),
    dict(peepholes=True, cell_clip=None, num_proj=None, proj_clip=None, forget_bias=0.0, activation=torch.sigmoid),
    dict(peepholes=True, cell_clip=0.5, num_proj=None, proj_clip=None, forget_bias=1.0, activation=F.softsign),
    dict(peepholes=False, cell_clip=0.5, num_proj=P, proj_clip=None, forget_bias=0.0, activation=F.elu),
    dict(peepholes=True, cell_clip=0.5, num_proj=P, proj_clip=0.15, forget_bias=1.0, activation=torch.tanh),
    dict(peepholes=False, cell_clip=None, num_proj=P, proj_clip=0.1, forget_bias=1.0, activation=F.softsign),
]

# Distance every clipped value keeps from the clip bound, and every activation input from 0
# (softsign and elu are not twice differentiable there): far beyond gradcheck's eps of 1e-6.
MARGIN = 1e-3


def _case_id(case):
    act = case["activation"].__name__
    return (f"peep{int(case['peepholes'])}-cc{case['cell_clip']}-proj{case['num_proj']}-pc{case['proj_clip']}"
            f"-fb{case['forget_bias']}-{act}")


def _assert_away_from_kinks(t, case):
    """Check the inputs keep every clip and activation kink at least MARGIN away, and that a clip in
    the case really clips something (so gradcheck sees both of its branches)."""
    with torch.no_grad():
        opts = dict(forget_bias=case["forget_bias"], activation=case["activation"])
        z = torch.cat([t["x"], t["h"]], 1) @ t["kernel"] + t["bias"]
        assert z.abs().min() > MARGIN
        _, c_raw = lstm_cell_reference(*cell_args(t), **opts)
        assert c_raw.abs().min() > MARGIN
        if case["cell_clip"] is not None:
            assert (c_raw.abs() - case["cell_clip"]).abs().min() > MARGIN
            assert (c_raw.abs() > case["cell_clip"]).any() and (c_raw.abs() < case["cell_clip"]).any()
        if case["proj_clip"] is not None:
            y, _ = lstm_cell_reference(*cell_args(t), cell_clip=case["cell_clip"], **opts)
            assert (y.abs() - case["proj_clip"]).abs().min() > MARGIN
            assert (y.abs() > case["proj_clip"]).any() and (y.abs() < case["proj_clip"]).any()


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=_case_id)
def test_reference_gradcheck(case):
    t = cell_tensors(B, D, N, case["num_proj"], case["peepholes"], torch.float64, "cpu", seed=3)
    t["c"] = t["c"].double()
    _assert_away_from_kinks(t, case)
    names = [k for k, v in t.items() if v is not None]
    inputs = tuple(t[k].clone().requires_grad_() for k in names)

    def step(*tensors):
        kw = dict(zip(names, tensors))
        return lstm_cell_reference(*cell_args({**t, **kw}), forget_bias=case["forget_bias"],
                                   cell_clip=case["cell_clip"], proj_clip=case["proj_clip"],
                                   activation=case["activation"])

    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def _tf_weights(D, N, P, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    out = P if P is not None else N
    kernel = (torch.randn(D + out, 4 * N, generator=g) * (D + out) ** -0.5).to(dtype)
    bias = (torch.randn(4 * N, generator=g) * 0.1).to(dtype)
    projection = (torch.randn(N, P, generator=g) * N ** -0.5).to(dtype) if P is not None else None
    return kernel, bias, projection


def _sequence_inputs(B, T, D, N, P, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    out = P if P is not None else N
    return (torch.randn(B, T, D, generator=g).to(dtype), torch.randn(B, N, generator=g).to(dtype),
            (torch.randn(B, out, generator=g) * 0.5).to(dtype))


def _reference_sequence(xs, c0, h0, kernel, bias, projection, forget_bias):
    """Step the reference over xs [B, T, D]; returns (outputs [B, T, P], h_T, c_T)."""
    h, c, outs = h0, c0, []
    for t in range(xs.shape[1]):
        h, c = lstm_cell_reference(xs[:, t], c, h, kernel, bias, projection=projection, forget_bias=forget_bias)
        outs.append(h)
    return torch.stack(outs, 1), h, c


# torch's CPU LSTM says once that oneDNN lacks projections and falls back; nothing to act on.
no_onednn_warning = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

LSTM_CASES = [
    dict(num_proj=None, forget_bias=1.0, batch_first=True),
    dict(num_proj=None, forget_bias=0.0, batch_first=False),
    dict(num_proj=3, forget_bias=1.0, batch_first=False),
    dict(num_proj=3, forget_bias=0.0, batch_first=True),
]


@no_onednn_warning
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", LSTM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_reference_matches_torch_lstm(case, dtype):
    Bs, T, Ds, Ns = 3, 4, 4, 6
    Ps = case["num_proj"]
    out_size = Ps if Ps is not None else Ns
    kernel, bias, projection = _tf_weights(Ds, Ns, Ps, dtype, seed=11)
    xs, c0, h0 = _sequence_inputs(Bs, T, Ds, Ns, Ps, dtype, seed=12)
    fb = case["forget_bias"]

    lstm = torch.nn.LSTM(input_size=Ds, hidden_size=Ns, proj_size=Ps or 0, batch_first=case["batch_first"],
                         dtype=dtype)
    lstm.load_state_dict(tf_to_torch_lstm(kernel, bias, projection, fb))

    leaves = [t.clone().requires_grad_() for t in (xs, c0, h0)]
    out_ref, h_ref, c_ref = _reference_sequence(*leaves, kernel, bias, projection, fb)

    leaves_t = [t.clone().requires_grad_() for t in (xs, c0, h0)]
    x_t, c0_t, h0_t = leaves_t
    seq = x_t if case["batch_first"] else x_t.transpose(0, 1)
    out_t, (h_n, c_n) = lstm(seq, (h0_t.unsqueeze(0), c0_t.unsqueeze(0)))
    if not case["batch_first"]:
        out_t = out_t.transpose(0, 1)
    assert out_t.shape == (Bs, T, out_size) and h_n.shape == (1, Bs, out_size) and c_n.shape == (1, Bs, Ns)

    tol = LSTM_TOLERANCES[dtype]
    torch.testing.assert_close(out_ref, out_t, atol=tol["fwd"][0], rtol=tol["fwd"][1])
    torch.testing.assert_close(h_ref, h_n[0], atol=tol["fwd"][0], rtol=tol["fwd"][1])
    torch.testing.assert_close(c_ref, c_n[0], atol=tol["fwd"][0], rtol=tol["fwd"][1])

    g = torch.Generator().manual_seed(13)
    g_out = torch.randn(out_ref.shape, generator=g).to(dtype)
    g_c = torch.randn(c_ref.shape, generator=g).to(dtype)
    grads_ref = torch.autograd.grad((out_ref * g_out).sum() + (c_ref * g_c).sum(), leaves)
    grads_t = torch.autograd.grad((out_t * g_out).sum() + (c_n[0] * g_c).sum(), leaves_t)
    for name, got, want in zip(("x", "c0", "h0"), grads_ref, grads_t):
        torch.testing.assert_close(got, want, atol=tol["grad"][0], rtol=tol["grad"][1], msg=lambda m: f"d{name}: {m}")


@no_onednn_warning
@pytest.mark.parametrize("num_proj", [None, 3])
def test_reference_weight_grads_match_torch_lstm(num_proj):
    """Weight gradients, through the layout conversion itself (functional_call keeps it differentiable)."""
    dtype, Bs, T, Ds, Ns = torch.float64, 2, 3, 4, 5
    weights = [w.requires_grad_() if w is not None else None for w in _tf_weights(Ds, Ns, num_proj, dtype, 21)]
    kernel, bias, projection = weights
    xs, c0, h0 = _sequence_inputs(Bs, T, Ds, Ns, num_proj, dtype, seed=22)
    lstm = torch.nn.LSTM(Ds, Ns, proj_size=num_proj or 0, batch_first=True, dtype=dtype)

    out_ref, _, c_ref = _reference_sequence(xs, c0, h0, kernel, bias, projection, 1.0)
    params = tf_to_torch_lstm(kernel, bias, projection, 1.0)
    out_t, (_, c_n) = functional_call(lstm, params, (xs, (h0.unsqueeze(0), c0.unsqueeze(0))))

    live = [w for w in weights if w is not None]
    grads_ref = torch.autograd.grad(out_ref.square().sum() + c_ref.sum(), live)
    grads_t = torch.autograd.grad(out_t.square().sum() + c_n.sum(), live)
    tol = LSTM_TOLERANCES[dtype]["grad"]
    for got, want in zip(grads_ref, grads_t):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=tol[0], rtol=tol[1])


@pytest.mark.parametrize("peepholes,num_proj,cell_clip,proj_clip,activation", [
    (False, None, None, None, None),
    (True, 3, 0.5, 0.2, "relu"),
    (True, None, 1.0, None, "softsign"),
])
def test_lstm_cell_float64_runs_reference(peepholes, num_proj, cell_clip, proj_clip, activation):
    """float64 has no kernel: lstm_cell must give the reference's result bit for bit, gradients too."""
    t = cell_tensors(B, D, N, num_proj, peepholes, torch.float64, "cpu", seed=5)
    t["c"] = t["c"].double()
    act_fn = {None: torch.tanh, "relu": torch.relu, "softsign": F.softsign}[activation]
    opts = dict(forget_bias=0.5, cell_clip=cell_clip, proj_clip=proj_clip)
    names = [k for k, v in t.items() if v is not None]
    a = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    r = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in t.items()}
    h, c = lstm_cell(*cell_args(a), activation=activation, **opts)
    h_ref, c_ref = lstm_cell_reference(*cell_args(r), activation=act_fn, **opts)
    assert h.dtype == c.dtype == torch.float64
    assert torch.equal(h, h_ref) and torch.equal(c, c_ref)
    grads = torch.autograd.grad(h.sum() + (c * c).sum(), [a[k] for k in names])
    grads_ref = torch.autograd.grad(h_ref.sum() + (c_ref * c_ref).sum(), [r[k] for k in names])
    for name, got, want in zip(names, grads, grads_ref):
        assert torch.equal(got, want), name


def test_empty_sequence_returns_states_of_its_own():
    """T=0: the final state is the initial one, in new tensors (as the other paths give), so that an
    in-place update of it leaves h0 and c0 alone."""
    from triton_lstm.reference import lstm_sequence_reference
    f64 = dict(dtype=torch.float64)
    h0, c0 = torch.randn(2, 3, **f64), torch.randn(2, 3, **f64)
    out, h, c = lstm_sequence_reference(torch.zeros(0, 2, 4, **f64), h0, c0, torch.zeros(4, 12, **f64),
                                        torch.zeros(3, 12, **f64), torch.zeros(12, **f64))
    assert out.shape == (0, 2, 3) and torch.equal(h, h0) and torch.equal(c, c0)
    assert h.data_ptr() != h0.data_ptr() and c.data_ptr() != c0.data_ptr()


@pytest.mark.parametrize("bad", [-1, 5])
def test_lengths_outside_the_range_run_from_a_nan_state(bad):
    """The reference takes lengths as given (a GPU's are not read on the host): a row whose length
    lies outside [0, T] runs every step from a NaN state, as the kernels run it (before, a negative
    length ran no steps and one past T every step, from the row's finite state); the other rows as
    without it."""
    from triton_lstm.reference import lstm_sequence_reference
    T, f64 = 4, dict(dtype=torch.float64)
    x, h0, c0 = torch.randn(T, 3, D, **f64), torch.randn(3, N, **f64), torch.randn(3, N, **f64)
    weights = torch.randn(D, 4 * N, **f64), torch.randn(N, 4 * N, **f64), torch.randn(4 * N, **f64)
    got = lstm_sequence_reference(x, h0, c0, *weights, lengths=torch.tensor([bad, 2, T]))
    want = lstm_sequence_reference(x[:, 1:], h0[1:], c0[1:], *weights, lengths=torch.tensor([2, T]))
    for name, g, w in zip(("out", "h", "c"), got, want):
        assert torch.isnan(g[..., 0, :]).all(), name
        assert torch.equal(g[..., 1:, :], w), name
