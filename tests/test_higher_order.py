"""Second-order gradients and torch.func transforms on the kernel path, against the reference.

Under the interpreter (or on a GPU) float32 runs the kernels; float64 copies of the same values run
the plain-PyTorch reference, which the kernels are checked against. Covered: the cell (lstm_cell,
LSTMCell), the sequence (lstm_sequence, dynamic_rnn) and the LSTM module: double backward (and
gradgradcheck), torch.func.grad, jacrev, per-sample gradients (vmap of grad), functional_call, and
forward mode (torch.func.jvp, jacfwd, hessian, torch.autograd.forward_ad).
"""
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

from helpers import cell_args, cell_tensors
from triton_lstm import LSTM, LSTMCell, dynamic_rnn, lstm_cell, lstm_sequence
from triton_lstm.activations import ACTIVATIONS
from triton_lstm.launch import kernels_run_on
from triton_lstm.ops import seq_fwd

# float32 kernels against the float64 reference, through two derivatives.
TOL = dict(atol=2e-4, rtol=2e-4)
B, T, D, N, P = 2, 3, 3, 4, 3
OPTIONS = dict(forget_bias=1.0, cell_clip=0.9, proj_clip=0.7, activation="tanh")


@pytest.fixture(autouse=True)
def on_kernels(device):
    assert kernels_run_on(device, torch.float32) and not kernels_run_on(device, torch.float64)


def as64(tensors):
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def leaves(tensors):
    return [None if t is None else t.detach().requires_grad_() for t in tensors]


def second_order(fn, inputs):
    """d/d(inputs) of the squared norm of the gradient of a weighted sum of fn's outputs."""
    outs = fn(*inputs)
    weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    first = torch.autograd.grad(loss, wanted, create_graph=True)
    return torch.autograd.grad(sum((g * g).sum() for g in first), wanted)


def assert_all_close(got, want, what, tol=TOL):
    """Each of got (any float dtype) equal to its float64 counterpart in want, which must not be zero."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert b.abs().max() > 0, f"{what}[{i}] is zero: the test would not see a missing term"
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda m: f"{what}[{i}]: {m}")


def cell_inputs(device):
    return leaves(cell_args(cell_tensors(B, D, N, P, True, torch.float32, device, seed=3)))


def cell_fn(*args):
    return lstm_cell(*args, **OPTIONS)


def sequence_inputs(device):
    g = torch.Generator().manual_seed(4)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return leaves([rnd(T, B, D), rnd(B, P, scale=0.5), rnd(B, N), rnd(D, 4 * N, scale=0.5),
                   rnd(P, 4 * N, scale=0.5), rnd(4 * N, scale=0.1), rnd(N, scale=0.3), rnd(N, scale=0.3),
                   rnd(N, scale=0.3), rnd(N, P, scale=0.5)])


def sequence_fn(*args):
    lengths = torch.tensor([T, T - 1], device=args[0].device)
    return lstm_sequence(*args, lengths, **OPTIONS)


@pytest.mark.parametrize("fn,make", [(cell_fn, cell_inputs), (sequence_fn, sequence_inputs)],
                         ids=["lstm_cell", "lstm_sequence"])
def test_double_backward_matches_reference(fn, make, device):
    inputs = make(device)
    assert_all_close(second_order(fn, inputs), second_order(fn, as64(inputs)), "second derivative")


def test_double_backward_of_a_row_with_a_bad_length(device):
    """Lengths reach the sequence op unchecked where the host cannot read them (on a GPU, traced):
    the kernels run a row whose length lies outside [0, T] from a NaN state. Its gradients are NaN
    too, in a backward that can itself be differentiated (its recomputation) as in the kernels'; the
    other row's gradients of both orders are as without it, against the float64 reference."""
    x, h0, c0, w_x, w_h, bias, *rest = sequence_inputs(device)
    weights = [t.detach() for t in (w_x, w_h, bias, *rest)]
    options = (ACTIVATIONS["tanh"][0], ACTIVATIONS["sigmoid"][0], OPTIONS["forget_bias"], OPTIONS["cell_clip"],
               OPTIONS["proj_clip"])

    def op(x, h0, c0):     # row 0: length T + 2
        lengths = torch.tensor([T + 2, T - 1], device=device, dtype=torch.int32)
        out, hbuf, cbuf, *_ = seq_fwd(x, h0, c0, *weights, lengths, *options)
        return out, hbuf[-1], cbuf[-1]

    def good_row(x, h0, c0):
        return lstm_sequence(x, h0, c0, *as64(weights), torch.tensor([T - 1]), **OPTIONS)

    def derivatives(fn, inputs, scales, row):
        """The first derivatives of fn's outputs' sum weighted by ``scales``, by both kinds of
        autograd's backward; the second: of the squared norm of the first's ``row``."""
        loss = sum((o * w).sum() for o, w in zip(fn(*inputs), scales))
        plain = torch.autograd.grad(loss, inputs, retain_graph=True)
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        second = torch.autograd.grad(sum((g.select(-2, row) ** 2).sum() for g in first), inputs)
        return plain, first, second

    scales = [torch.linspace(-1, 1, math.prod(s), device=device).view(s) for s in ((T, B, P), (B, P), (B, N))]
    plain, first, second = derivatives(op, [x, h0, c0], scales, 1)
    _, want_first, want_second = derivatives(good_row, as64([x[:, 1:], h0[1:], c0[1:]]),
                                             [w[..., 1:, :].double() for w in scales], 0)
    for order, got in (("first (fast backward)", plain), ("first (differentiable)", first)):
        for name, g in zip(("x", "h0", "c0"), got):
            assert torch.isnan(g.select(-2, 0)).all(), f"{order} d/d{name} of the bad row must be NaN"
        assert_all_close([g.detach()[..., 1:, :] for g in got], want_first, f"{order} derivative of the good row")
    assert_all_close([g[..., 1:, :] for g in second], want_second, "second derivative of the good row")


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # float32 on purpose: the kernels' dtype
@pytest.mark.parametrize("fn,make", [(cell_fn, cell_inputs), (sequence_fn, sequence_inputs)],
                         ids=["lstm_cell", "lstm_sequence"])
def test_gradgradcheck_on_kernels(fn, make, device):
    """gradgradcheck itself on the float32 kernel path (finite differences of the kernels' gradient,
    so with float32's step and tolerances; fast mode keeps the interpreter's launches few)."""
    x, c, h, weight, *rest = make(device)
    assert torch.autograd.gradgradcheck(lambda x, weight: fn(x, c, h, weight, *rest), (x, weight),
                                        eps=1e-2, atol=2e-2, rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("fn,make", [(cell_fn, cell_inputs), (sequence_fn, sequence_inputs)],
                         ids=["lstm_cell", "lstm_sequence"])
def test_func_grad_and_jacrev(fn, make, device):
    def loss(*args):
        return squared(fn(*args))

    def transforms(args):
        return (*grad(loss, argnums=(0, 3, 9 if fn is sequence_fn else 8))(*args),
                jacrev(lambda x: fn(x, *args[1:])[0])(args[0]))

    inputs = make(device)
    assert_all_close(transforms(inputs), transforms(as64(inputs)), "torch.func.grad, jacrev")


def squared(outputs):
    return sum((o * o).sum() for o in outputs)


def forward_mode(fn, inputs, seed=0):
    """fn's outputs' tangents along a random tangent of every input, by torch.func.jvp and by
    torch.autograd.forward_ad (dual tensors, outside torch.func); then, for the first input, jacfwd of
    the first output, the hessian of a loss, a jvp of a jvp (forward over forward) and jacrev of
    jacfwd (reverse over forward)."""
    g = torch.Generator().manual_seed(seed)
    present = [i for i, t in enumerate(inputs) if t is not None]
    tangents = [torch.randn(inputs[i].shape, generator=g, dtype=torch.float64).to(inputs[i]) for i in present]

    def of_present(*tensors):
        args = list(inputs)
        for i, t in zip(present, tensors):
            args[i] = t
        return fn(*args)

    _, by_jvp = jvp(of_present, tuple(inputs[i] for i in present), tuple(tangents))
    with fwAD.dual_level():
        duals = [fwAD.make_dual(inputs[i].detach(), t) for i, t in zip(present, tangents)]
        by_duals = [fwAD.unpack_dual(o).tangent for o in of_present(*duals)]
    x, rest, v = inputs[0].detach(), inputs[1:], tangents[0]

    def loss(x):
        return squared(fn(x, *rest))

    def along_v(x):
        return jvp(loss, (x,), (v,))[1]

    return (*by_jvp, *by_duals, jacfwd(lambda x: fn(x, *rest)[0])(x), hessian(loss)(x), jvp(along_v, (x,), (v,))[1],
            jacrev(jacfwd(loss))(x))


@pytest.mark.parametrize("fn,make", [(cell_fn, cell_inputs), (sequence_fn, sequence_inputs)],
                         ids=["lstm_cell", "lstm_sequence"])
def test_forward_mode_matches_reference(fn, make, device):
    """Forward-mode AD runs the reference (its float32 against float64), nested levels included."""
    inputs = make(device)
    assert_all_close(forward_mode(fn, inputs), forward_mode(fn, as64(inputs)), "forward mode")


def test_per_sample_gradients_cell(device):
    """vmap over grad: one kernel gradient per batch row, as a loop over the rows gives it."""
    x, c, h, kernel, *rest = cell_inputs(device)

    def row_loss(kernel, x, c, h):
        return squared(cell_fn(x[None], c[None], h[None], kernel, *rest))

    per_row = vmap(grad(row_loss), in_dims=(None, 0, 0, 0))(kernel, x, c, h)
    for b in range(B):
        (want,) = torch.autograd.grad(row_loss(kernel, x[b], c[b], h[b]), kernel)
        torch.testing.assert_close(per_row[b], want, **TOL)


def test_per_sample_gradients_sequence(device):
    x, h0, c0, w_x, w_h, *rest = sequence_inputs(device)

    def row_loss(w_h, x, h0, c0):
        return squared(lstm_sequence(x[:, None], h0[None], c0[None], w_x, w_h, *rest, **OPTIONS))

    per_row = vmap(grad(row_loss), in_dims=(None, 1, 0, 0))(w_h, x, h0, c0)
    for b in range(B):
        (want,) = torch.autograd.grad(row_loss(w_h, x[:, b], h0[b], c0[b]), w_h)
        torch.testing.assert_close(per_row[b], want, **TOL)


class Unrolled(torch.nn.Module):
    """dynamic_rnn over a cell as a module (for functional_call): final c and the outputs."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, inputs):
        outputs, state = dynamic_rnn(self.cell, inputs)
        return outputs, state.c


def make_module(kind, device, dtype):
    torch.manual_seed(6)
    if kind == "LSTMCell":
        cell = LSTMCell(N, use_peepholes=True, num_proj=P, cell_clip=0.9, input_size=D, device=device, dtype=dtype)
        return Unrolled(cell), (B, T, D)
    lstm = LSTM(D, N, num_layers=2, bidirectional=True, proj_size=P, use_peepholes=True, cell_clip=0.9,
                forget_bias=1.0, device=device, dtype=dtype)
    return lstm, (T, B, D)


def module_loss(module, params, x):
    outputs = functional_call(module, params, (x,))
    return squared(torch.utils._pytree.tree_leaves(outputs))


@pytest.mark.parametrize("kind", ["LSTMCell", "LSTM"])
def test_functional_call_grad_and_double_backward(kind, device):
    module, shape = make_module(kind, device, torch.float32)
    module64, _ = make_module(kind, device, torch.float64)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).to(device)
    params = {k: v.detach() for k, v in module.named_parameters()}
    params64 = {k: v.double() for k, v in params.items()}
    names = sorted(params)
    got = grad(lambda p: module_loss(module, p, x))(params)
    want = grad(lambda p: module_loss(module64, p, x.double()))(params64)
    assert_all_close([got[k] for k in names], [want[k] for k in names], "functional_call grad")

    def second(module, params, x):
        leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
        x = x.clone().requires_grad_()
        first = torch.autograd.grad(module_loss(module, leaf, x), [x] + [leaf[k] for k in names], create_graph=True)
        return torch.autograd.grad(squared(first), [x] + [leaf[k] for k in names])

    assert_all_close(second(module, params, x), second(module64, params64, x.double()), "double backward")


@pytest.mark.parametrize("kind", ["LSTMCell", "LSTM"])
def test_module_per_sample_gradients(kind, device):
    module, shape = make_module(kind, device, torch.float32)
    batch_dim = shape.index(B)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(8)).to(device)
    params = {k: v.detach() for k, v in module.named_parameters()}
    per_row = vmap(grad(lambda p, row: module_loss(module, p, row.unsqueeze(batch_dim))),
                   in_dims=(None, batch_dim))(params, x)
    for b in range(B):
        leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
        want = torch.autograd.grad(module_loss(module, leaf, x.narrow(batch_dim, b, 1)), list(leaf.values()))
        for (name, got), w in zip(per_row.items(), want):
            torch.testing.assert_close(got[b], w, **TOL, msg=lambda m: f"d{name}[row {b}]: {m}")
