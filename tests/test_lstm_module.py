"""``LSTM`` (the nn.LSTM drop-in) against torch.nn.LSTM with the same state dict, and its TF extras
(peepholes, clips, forget_bias, activation) against dynamic_rnn and the plain-PyTorch reference."""
import copy
import re

import numpy as np
import pytest
import torch
from torch.nn.utils import prune
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from helpers import assert_close, fresh_python
from triton_lstm import DTypeError, LSTM, LSTMCell, ShapeError, dynamic_rnn, lstm_sequence_reference
from triton_lstm.activations import resolve_activation
from triton_lstm.convert import swap_gates
from triton_lstm.cpu import lstm_sequence_cpu, torch_lstm_computes
import triton_lstm.lstm as lstm_module
import triton_lstm.ops
import triton_lstm.sequence as sequence_module

# Our kernels fold the two biases into one and sum the gate GEMM in another order than torch: the
# results agree to a few float32 roundings, well inside these bounds.
TOL = (2e-5, 1e-4)
T, B, D, H = 5, 3, 7, 10

# torch's CPU LSTM says once that oneDNN lacks projections and falls back; nothing to act on.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def make_pair(device, seed=0, **kwargs):
    """(ours on device, torch's nn.LSTM on CPU) holding the same parameters."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(D, H, **kwargs)
    ours = LSTM(D, H, **kwargs)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ours.to(device), ref


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def state_shapes(module, batch):
    L = module.num_layers * (2 if module.bidirectional else 1)
    P = module.proj_size or module.hidden_size
    return (L, batch, P), (L, batch, module.hidden_size)


def as_leaves(tensors, device):
    return [t.to(device).requires_grad_() for t in tensors]


def loss_of(output, h_n, c_n, seed):
    """A random linear function of every result, so each gradient path is weighted differently."""
    data = output.data if isinstance(output, PackedSequence) else output
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=g).to(t.device) for t in (data, h_n, c_n)]
    return sum((t * w).sum() for t, w in zip((data, h_n, c_n), weights))


def compare_grads(ours, ref, leaves, ref_leaves, names, loss, ref_loss):
    params, ref_params = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert set(params) == set(ref_params)
    keys = sorted(params)
    grads = torch.autograd.grad(loss, leaves + [params[k] for k in keys])
    grads_ref = torch.autograd.grad(ref_loss, ref_leaves + [ref_params[k] for k in keys])
    for name, got, want in zip(names + keys, grads, grads_ref):
        assert want.abs().sum() > 0, f"d{name} is zero: the test would not see a missing gradient"
        assert_close(f"d{name}", got.cpu(), want, TOL)


CONFIGS = [
    dict(),
    dict(proj_size=4),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, bidirectional=True, proj_size=4),
    dict(batch_first=True),
    dict(bias=False),
]


@pytest.mark.parametrize("given_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_torch_lstm(config, given_hx, device):
    ours, ref = make_pair(device, **config)
    shape = (B, T, D) if config.get("batch_first") else (T, B, D)
    inputs = [randn(*shape, seed=1)]
    names = ["input"]
    if given_hx:
        h_shape, c_shape = state_shapes(ref, B)
        inputs += [randn(*h_shape, seed=2, scale=0.5), randn(*c_shape, seed=3)]
        names += ["h_0", "c_0"]
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    leaves = as_leaves(inputs, device)

    def call(module, args):
        return module(args[0], tuple(args[1:]) if given_hx else None)

    out, (h_n, c_n) = call(ours, leaves)
    out_ref, (h_ref, c_ref) = call(ref, ref_leaves)
    for name, got, want in (("output", out, out_ref), ("h_n", h_n, h_ref), ("c_n", c_n, c_ref)):
        assert_close(name, got.cpu(), want, TOL)
    compare_grads(ours, ref, leaves, ref_leaves, names, loss_of(out, h_n, c_n, seed=4),
                  loss_of(out_ref, h_ref, c_ref, seed=4))


@pytest.mark.parametrize("given_hx", [False, True], ids=["no-hx", "hx"])
def test_unbatched_input(given_hx, device):
    ours, ref = make_pair(device, proj_size=4)
    inputs = [randn(T, D, seed=1)]
    names = ["input"]
    if given_hx:
        (L, _, P), (_, _, Hc) = state_shapes(ref, 1)
        inputs += [randn(L, P, seed=2, scale=0.5), randn(L, Hc, seed=3)]
        names += ["h_0", "c_0"]
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    leaves = as_leaves(inputs, device)
    out, (h_n, c_n) = ours(leaves[0], tuple(leaves[1:]) if given_hx else None)
    out_ref, (h_ref, c_ref) = ref(ref_leaves[0], tuple(ref_leaves[1:]) if given_hx else None)
    assert out.shape == (T, 4) and h_n.shape == (1, 4) and c_n.shape == (1, H)
    for name, got, want in (("output", out, out_ref), ("h_n", h_n, h_ref), ("c_n", c_n, c_ref)):
        assert_close(name, got.cpu(), want, TOL)
    compare_grads(ours, ref, leaves, ref_leaves, names, loss_of(out, h_n, c_n, seed=4),
                  loss_of(out_ref, h_ref, c_ref, seed=4))


@pytest.mark.parametrize("enforce_sorted,lengths", [(False, [3, 5, 2]), (True, [5, 3, 2])], ids=["unsorted", "sorted"])
def test_packed_sequence(enforce_sorted, lengths, device):
    """Bidirectional over two layers: the reverse direction must reverse each row within its length."""
    ours, ref = make_pair(device, num_layers=2, bidirectional=True, proj_size=4)
    padded = randn(T, B, D, seed=1)
    ref_x = padded.clone().requires_grad_()
    x = padded.to(device).requires_grad_()
    out, (h_n, c_n) = ours(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted))
    out_ref, (h_ref, c_ref) = ref(pack_padded_sequence(ref_x, torch.tensor(lengths), enforce_sorted=enforce_sorted))
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        got, want = getattr(out, name), getattr(out_ref, name)
        assert (got is None and want is None) or torch.equal(got.cpu(), want), name
    for name, got, want in (("output.data", out.data, out_ref.data), ("h_n", h_n, h_ref), ("c_n", c_n, c_ref)):
        assert_close(name, got.cpu(), want, TOL)
    compare_grads(ours, ref, [x], [ref_x], ["input"], loss_of(out, h_n, c_n, seed=4),
                  loss_of(out_ref, h_ref, c_ref, seed=4))


def test_dropout_is_inactive_in_eval_mode(device):
    ours, ref = make_pair(device, num_layers=2, dropout=0.5)
    plain = LSTM(D, H, num_layers=2).to(device)
    plain.load_state_dict(ours.state_dict())
    x = randn(T, B, D, seed=1)
    ours.eval()
    ref.eval()
    out, (h_n, c_n) = ours(x.to(device))
    out_plain, (h_plain, c_plain) = plain(x.to(device))
    assert torch.equal(out, out_plain) and torch.equal(h_n, h_plain) and torch.equal(c_n, c_plain)
    assert_close("output", out.cpu(), ref(x)[0].detach(), TOL)
    # In training mode the dropout between the layers does act (so eval mode is what made them equal).
    ours.train()
    torch.manual_seed(0)
    out_train, _ = ours(x.to(device))
    assert not torch.allclose(out_train, out_plain)


# -- TF extras, checked against our own TF-semantics paths ---------------------------------------------

EXTRAS = dict(use_peepholes=True, cell_clip=0.8, proj_clip=0.25, forget_bias=1.0)


def tf_layer_weights(lstm, suffix):
    """One layer and direction's weights in TF's layout (w_x [D, 4H], w_h [P, 4H], bias in the gate
    order i, j, f, o; peepholes; projection [H, P]), differentiable in the module's parameters."""
    w_x, w_h, bias, peepholes, proj = lstm._layer_weights(suffix)
    return swap_gates(w_x), swap_gates(w_h), swap_gates(bias), peepholes, proj


@pytest.mark.parametrize("activation,proj_size", [("softsign", 4), ("tanh", 12)], ids=["softsign-P4", "tanh-P12"])
def test_extras_match_dynamic_rnn(activation, proj_size, device):
    """One layer with every extra (and proj_size > hidden_size, which torch forbids) equals
    dynamic_rnn on an LSTMCell holding the converted weights."""
    torch.manual_seed(0)
    lstm = LSTM(D, H, proj_size=proj_size, activation=activation, **EXTRAS).to(device)
    cell = LSTMCell(H, use_peepholes=True, cell_clip=EXTRAS["cell_clip"], num_proj=proj_size,
                    proj_clip=EXTRAS["proj_clip"], forget_bias=EXTRAS["forget_bias"], activation=activation,
                    input_size=D, device=device)
    w_x, w_h, bias, (w_f, w_i, w_o), proj = tf_layer_weights(lstm, "_l0")
    assert w_x.shape == (D, 4 * H) and w_h.shape == (proj_size, 4 * H) and proj.shape == (H, proj_size)
    with torch.no_grad():
        cell.kernel.copy_(torch.cat([w_x, w_h]))
        cell.bias.copy_(bias)
        cell.w_f_diag.copy_(w_f)
        cell.w_i_diag.copy_(w_i)
        cell.w_o_diag.copy_(w_o)
        cell.projection_kernel.copy_(proj)
    inputs = [randn(T, B, D, seed=1), randn(1, B, proj_size, seed=2, scale=0.5), randn(1, B, H, seed=3)]
    leaves = as_leaves(inputs, device)
    cell_leaves = as_leaves(inputs, device)
    out, (h_n, c_n) = lstm(leaves[0], (leaves[1], leaves[2]))
    out_ref, state = dynamic_rnn(cell, cell_leaves[0], initial_state=(cell_leaves[2][0], cell_leaves[1][0]),
                                 time_major=True)
    h_ref, c_ref = state.h[None], state.c[None]
    for name, got, want in (("output", out, out_ref), ("h_n", h_n, h_ref), ("c_n", c_n, c_ref)):
        assert_close(name, got, want, TOL)
    grads = torch.autograd.grad(loss_of(out, h_n, c_n, seed=4), leaves)
    grads_ref = torch.autograd.grad(loss_of(out_ref, h_ref, c_ref, seed=4), cell_leaves)
    for name, got, want in zip(("input", "h_0", "c_0"), grads, grads_ref):
        assert_close(f"d{name}", got, want, TOL)


def test_extras_bidirectional_packed_match_reference_row_by_row(device):
    """Two bidirectional layers with every extra over a packed batch, against the reference run on
    each row alone over its own length (no masking at all; the reverse direction is a plain flip).
    Gradients reach every parameter through the conversion to TF's layout."""
    torch.manual_seed(0)
    lstm = LSTM(D, H, num_layers=2, bidirectional=True, proj_size=4, activation="elu", **EXTRAS).to(device)
    lengths = [3, 5, 1]
    padded = randn(T, B, D, seed=1)
    x = padded.to(device).requires_grad_()
    out, (h_n, c_n) = lstm(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))

    act = resolve_activation("elu")[1]
    options = dict(forget_bias=EXTRAS["forget_bias"], cell_clip=EXTRAS["cell_clip"],
                   proj_clip=EXTRAS["proj_clip"], activation=act)
    x_ref = padded.to(device).requires_grad_()
    rows, h_rows, c_rows = [], [], []
    for b, length in enumerate(lengths):
        layer_in = x_ref[:length, b:b + 1]
        hs, cs = [], []
        for layer in range(2):
            outs = []
            for suffix, flip in ((f"_l{layer}", False), (f"_l{layer}_reverse", True)):
                w_x, w_h, bias, peepholes, proj = tf_layer_weights(lstm, suffix)
                seq = layer_in.flip(0) if flip else layer_in
                h0 = torch.zeros(1, 4, device=device)
                c0 = torch.zeros(1, H, device=device)
                o, h, c = lstm_sequence_reference(seq, h0, c0, w_x, w_h, bias, *peepholes, proj, **options)
                outs.append(o.flip(0) if flip else o)
                hs.append(h)
                cs.append(c)
            layer_in = torch.cat(outs, dim=2)
        rows.append(layer_in)
        h_rows.append(torch.stack(hs))
        c_rows.append(torch.stack(cs))
    # The packed data lists time steps in turn, each with the rows still running, longest first.
    order = sorted(range(B), key=lambda b: -lengths[b])
    data_ref = torch.cat([torch.cat([rows[b][t] for b in order if t < lengths[b]]) for t in range(max(lengths))])
    h_ref, c_ref = torch.cat(h_rows, dim=1), torch.cat(c_rows, dim=1)
    assert h_n.shape == (4, B, 4) and c_n.shape == (4, B, H)
    for name, got, want in (("output.data", out.data, data_ref), ("h_n", h_n, h_ref), ("c_n", c_n, c_ref)):
        assert_close(name, got, want, TOL)
    params = dict(lstm.named_parameters())
    assert {"w_f_diag_l1_reverse", "weight_hr_l1_reverse"} <= set(params)
    keys = sorted(params)
    grads = torch.autograd.grad(loss_of(out.data, h_n, c_n, seed=4), [x] + [params[k] for k in keys])
    grads_ref = torch.autograd.grad(loss_of(data_ref, h_ref, c_ref, seed=4), [x_ref] + [params[k] for k in keys])
    for name, got, want in zip(["input"] + keys, grads, grads_ref):
        assert want.abs().sum() > 0, f"d{name} is zero: the test would not see a missing gradient"
        assert_close(f"d{name}", got, want, TOL)


# -- bad arguments: nn.LSTM's errors (a shape error is both a RuntimeError, as nn.LSTM raises, and a
# ValueError, as the rest of the library raises), with the shapes and the layout added ---------------

@pytest.mark.parametrize("batch_first", [False, True])
def test_input_wrong_feature_size_mentions_layout(batch_first):
    lstm = LSTM(D, H, batch_first=batch_first, forget_bias=1.0)
    for error in (RuntimeError, ValueError):
        with pytest.raises(error, match=rf"^input.size\(-1\) must be equal to input_size. Expected {D}, got {D + 1} "
                                        rf"\(input: shape \({T}, {B}, {D + 1}\), batch_first={batch_first}\)"):
            lstm(torch.randn(T, B, D + 1))


@pytest.mark.parametrize("index", [0, 1])
def test_hx_wrong_shape_names_the_tensor(index):
    lstm = LSTM(D, H, proj_size=4, forget_bias=1.0)
    hx = [torch.zeros(1, B, 4), torch.zeros(1, B, H)]
    wrong = hx[index].shape[2] + 1
    hx[index] = torch.zeros(1, B, wrong)
    for error in (RuntimeError, ValueError):
        with pytest.raises(error, match=rf"^Expected hidden\[{index}\] size \(1, {B}, {wrong - 1}\), "
                                        rf"got \[1, {B}, {wrong}\] \(hx = \(h_0 \[num_layers \* num_directions, batch, "
                                        r"proj_size or hidden_size\], c_0 \[num_layers \* num_directions, batch, "
                                        r"hidden_size\]\)"):
            lstm(torch.randn(T, B, D), tuple(hx))


def test_input_wrong_rank():
    lstm = LSTM(D, H, forget_bias=1.0)
    with pytest.raises(ValueError, match=r"^LSTM: Expected input to be 2D or 3D, got 4D instead"):
        lstm(torch.randn(2, T, B, D))
    with pytest.raises(ValueError, match=r"^LSTM: Expected input to be 2D or 3D, got 1D instead"):
        lstm(torch.randn(D))


def test_proj_clip_needs_proj_size():
    with pytest.raises(ValueError, match=r"^proj_clip: only meaningful with proj_size > 0"):
        LSTM(D, H, proj_clip=1.0)


# -- torch.nn.LSTM itself, with the TF options on top -------------------------------------------------

def test_is_an_nn_lstm_with_torch_machinery():
    lstm = LSTM(D, H, num_layers=2, bidirectional=True, proj_size=4, use_peepholes=True)
    ref = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True, proj_size=4)
    assert isinstance(lstm, torch.nn.LSTM) and lstm.mode == "LSTM"
    assert lstm._flat_weights_names == ref._flat_weights_names
    assert [[tuple(w.shape) for w in layer] for layer in lstm.all_weights] == \
        [[tuple(w.shape) for w in layer] for layer in ref.all_weights]
    assert all(w is getattr(lstm, n) for w, n in zip(lstm._flat_weights, lstm._flat_weights_names))
    peepholes = {f"w_{g}_diag_l{k}{s}" for g in "fio" for k in (0, 1) for s in ("", "_reverse")}
    assert set(dict(lstm.named_parameters())) == set(dict(ref.named_parameters())) | peepholes


@pytest.mark.parametrize("kwargs", [dict(), dict(bias=False, dropout=0.25, num_layers=2),
                                    dict(proj_size=2, batch_first=True, bidirectional=True)],
                         ids=["default", "bias-dropout", "proj-bidir"])
def test_repr_is_torch_repr(kwargs):
    assert repr(LSTM(3, 4, **kwargs)) == repr(torch.nn.LSTM(3, 4, **kwargs))
    assert repr(LSTM(3, 4)) == "LSTM(3, 4)"


def test_repr_appends_tf_options_when_set():
    lstm = LSTM(3, 4, proj_size=6, use_peepholes=True, cell_clip=1.0, proj_clip=0.5, forget_bias=1.0,
                activation="relu", recurrent_activation="hard_sigmoid")
    assert repr(lstm) == ("LSTM(3, 4, proj_size=6, use_peepholes=True, cell_clip=1.0, proj_clip=0.5, "
                          "forget_bias=1.0, activation='relu', recurrent_activation='hard_sigmoid')")


def test_repr_names_a_known_activation_function():
    assert repr(LSTM(3, 4, activation=torch.tanh, recurrent_activation=torch.nn.functional.hardsigmoid)) == \
        "LSTM(3, 4, recurrent_activation='hardsigmoid')"


@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, proj_size=2, batch_first=True, bidirectional=True)],
                         ids=["default", "proj-bidir"])
def test_to_torch_lstm_shares_the_parameters(kwargs, device):
    ours = LSTM(D, H, **kwargs).to(device)
    plain = ours.to_torch_lstm()
    assert type(plain) is torch.nn.LSTM and repr(plain) == repr(ours)
    assert all(a is b for a, b in zip(plain.parameters(), ours.parameters()))
    x = randn(T, B, D, seed=31).to(device)
    assert_close("output", plain(x)[0], ours(x)[0], TOL)


@pytest.mark.parametrize("kwargs,named", [(dict(use_peepholes=True), "use_peepholes=True"),
                                          (dict(forget_bias=1.0, proj_size=H), "forget_bias=1.0, proj_size=10 >= hidden_size"),
                                          (dict(activation="relu"), "activation='relu'")],
                         ids=["peepholes", "forget-bias-wide", "relu"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript's own
def test_tools_that_take_only_nn_lstm_refuse_tf_options(kwargs, named):
    """to_torch_lstm, and torch.jit.script through it, name the options nn.LSTM cannot compute."""
    with pytest.raises(ValueError, match=rf"^to_torch_lstm: nn.LSTM cannot compute this cell \({re.escape(named)}\)$"):
        LSTM(D, H, **kwargs).to_torch_lstm()
    with pytest.raises(RuntimeError, match=r"^torch.jit.script: TorchScript runs a triton_lstm.LSTM only as "
                                           rf"nn.LSTM: .*\({re.escape(named)}\)\. Use torch.compile or torch.export"):
        torch.jit.script(torch.nn.Sequential(LSTM(D, H, **kwargs)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript's own
def test_to_torch_lstm_refuses_computed_weights():
    lstm = LSTM(D, H)
    prune.l1_unstructured(lstm, "weight_ih_l0", 0.3)
    torch.nn.utils.parametrizations.weight_norm(lstm, "weight_hh_l0")
    with pytest.raises(ValueError, match=r"^to_torch_lstm: weight_ih_l0, weight_hh_l0 computed from other "
                                         r"parameters \(pruned or parametrized\); make them parameters again"):
        lstm.to_torch_lstm()
    # torch.jit.script passes that on, as the reason (the cell has none of TF's options).
    with pytest.raises(RuntimeError, match=r"^torch.jit.script: TorchScript runs a triton_lstm.LSTM only as nn.LSTM: "
                                           r"to_torch_lstm: weight_ih_l0, weight_hh_l0 computed from other parameters"):
        torch.jit.script(torch.nn.Sequential(lstm))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript's own
def test_torch_jit_script_runs_the_nn_lstm_it_equals():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = LSTM(D, H, num_layers=2, proj_size=4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    model = Model()
    x = randn(T, B, D, seed=32)
    want = model(x)
    scripted = torch.jit.script(model)
    assert_close("output", scripted(x), want, TOL)
    assert scripted.lstm.weight_hh_l0 is model.lstm.weight_hh_l0


@pytest.mark.parametrize("hook", ["forward", "forward_pre"])
def test_torch_jit_script_refuses_forward_hooks(hook):
    """The nn.LSTM scripted in its place would run without them (an nn.LSTM with them fails to script)."""
    for module in (torch.nn.LSTM(D, H), LSTM(D, H)):
        getattr(module, f"register_{hook}_hook")(lambda *args: None)
        with pytest.raises(RuntimeError):
            torch.jit.script(torch.nn.Sequential(module))
    with pytest.raises(RuntimeError, match=r"^torch.jit.script: this LSTM has forward hooks or pre-hooks"):
        torch.jit.script(torch.nn.Sequential(module))


def test_wide_projection_has_nn_lstm_names_and_shapes():
    """proj_size >= hidden_size (which nn.LSTM refuses) builds weight_hr as nn.LSTM would."""
    lstm = LSTM(D, H, num_layers=2, bidirectional=True, proj_size=12)
    shapes = {n: tuple(p.shape) for n, p in lstm.named_parameters()}
    assert shapes["weight_hr_l1_reverse"] == (12, H) and shapes["weight_hh_l0"] == (4 * H, 12)
    assert shapes["weight_ih_l1"] == (4 * H, 24) and shapes["weight_ih_l0"] == (4 * H, D)
    assert "weight_hr_l0" in lstm._flat_weights_names and len(lstm.all_weights[0]) == 5
    out, (h_n, c_n) = lstm(torch.randn(T, B, D))
    assert out.shape == (T, B, 24) and h_n.shape == (4, B, 12) and c_n.shape == (4, B, H)


def test_own_state_dict_round_trip(device):
    torch.manual_seed(1)
    src = LSTM(D, H, num_layers=2, proj_size=12, use_peepholes=True, forget_bias=1.0).to(device)
    dst = LSTM(D, H, num_layers=2, proj_size=12, use_peepholes=True, forget_bias=1.0).to(device)
    dst.load_state_dict(src.state_dict())
    x = randn(T, B, D, seed=2).to(device)
    assert all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(src(x)),
                                                 torch.utils._pytree.tree_leaves(dst(x))))


def test_cudnn_flattening_only_for_cells_nn_lstm_runs(monkeypatch):
    """cuDNN's flat weight buffer (nn.LSTM.flatten_parameters, a no-op on the CPU, recorded here in
    its place) is packed only for cells nn.LSTM's own forward may run, never for a projection as
    wide as the cell (no cuDNN RNN) nor for weights torch.func substituted (no storage on a GPU)."""
    calls = []
    monkeypatch.setattr(torch.nn.LSTM, "flatten_parameters",
                        lambda self: calls.append([torch._C._functorch.is_functorch_wrapped_tensor(w)
                                                   for w in self._flat_weights]))
    plain = LSTM(D, H, num_layers=2)
    assert len(calls) == 1
    for module in (LSTM(D, H, proj_size=H), LSTM(D, H, proj_size=H + 2), LSTM(D, H, use_peepholes=True)):
        module.to(torch.float64)
        module._init_flat_weights()
    assert len(calls) == 1
    plain.to(torch.float64)
    assert len(calls) == 2

    x = randn(T, B, D, seed=5).double()
    params = {k: v.detach() for k, v in plain.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(plain, p, (x,))[0].square().sum())(params)
    assert set(grads) == set(params)
    assert not any(any(wrapped) for wrapped in calls), "packed weights that torch.func substituted"


def test_where_kernels_do_not_run_nn_lstm_computes_it():
    """float64 runs no kernel: a configuration nn.LSTM computes is nn.LSTM's own forward, bit for bit;
    with a TF option set it is not (here a forget bias: not nn.LSTM's numbers for these weights)."""
    torch.manual_seed(3)
    ref = torch.nn.LSTM(D, H, num_layers=2, proj_size=4, dtype=torch.float64)
    ours = LSTM(D, H, num_layers=2, proj_size=4, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    assert ours.computes_torch_lstm()
    x = randn(T, B, D, seed=4).double()
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(x)), torch.utils._pytree.tree_leaves(ref(x))):
        assert torch.equal(a, b)
    ours.forget_bias = 1.0
    assert not ours.computes_torch_lstm()
    assert not torch.allclose(ours(x)[0], ref(x)[0])


@pytest.fixture
def cpu_path(monkeypatch):
    """The CPU path users run on CPU tensors (no interpreter): the one dispatch decision, whether the
    kernels run on a device and dtype, replaced by False where LSTM and lstm_sequence make it."""
    monkeypatch.setattr(lstm_module, "kernels_run_on", lambda device, dtype: False)
    monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_path_computes_half_precision_in_float32(cpu_path, dtype):
    """The CPU path computes half precision in float32: an LSTM with TF's extras in half precision
    gives a float32 one's results on the same (half-exact) weights and input, rounded once at the
    end; nn.LSTM's two biases are summed unrounded (large ones, where that rounding would show)."""
    torch.manual_seed(0)
    options = dict(use_peepholes=True, cell_clip=1.0, forget_bias=1.0, activation="linear",
                   recurrent_activation="tanh")
    half = LSTM(6, 12, **options)
    with torch.no_grad():
        for p in half.parameters():
            p.uniform_(-1, 1)
    half = half.to(dtype)
    full = LSTM(6, 12, **options)
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    x, h0, c0 = torch.randn(5, 4, 6).to(dtype), torch.randn(1, 4, 12).to(dtype), torch.randn(1, 4, 12).to(dtype)
    with torch.no_grad():
        got = half(x, (h0, c0))
        want = full(x.float(), (h0.float(), c0.float()))
    for a, b in zip(*(torch.utils._pytree.tree_leaves(r) for r in (got, want))):
        assert a.dtype == dtype
        assert torch.equal(a, b.to(dtype))


AUTOCASTS = {"float32-in-bfloat16": (torch.float32, torch.bfloat16),
             "bfloat16-in-float16": (torch.bfloat16, torch.float16), "float32-in-float16": (torch.float32, torch.float16)}


@pytest.mark.parametrize("hx", ["no-hx", "hx-float32", "hx-autocast-dtype"])
@pytest.mark.parametrize("dtypes", list(AUTOCASTS))
@pytest.mark.parametrize("proj_size", [0, 4], ids=["no-projection", "projection"])
@pytest.mark.parametrize("form", ["padded", "packed", "packed-to-differentiate"])
def test_cpu_autocast_gives_nn_lstms_dtypes(cpu_path, form, proj_size, dtypes, hx):
    """Under CPU autocast a cell nn.LSTM computes comes back in nn.LSTM's dtypes, also where the loop
    runs in place of nn.LSTM's packed path (differing lengths, gradients wanted), where nn.LSTM's
    c_n (and without a projection its output and h_n) follows type promotion of the autocast dtype
    with c_0's (or the input's). Values within half precision's rounding of nn.LSTM's."""
    dtype, cast = AUTOCASTS[dtypes]
    if (form == "padded" and not proj_size and cast in lstm_module.ONEDNN_LSTM_MISSING
            and dtype in lstm_module.ONEDNN_LSTM_INPUTS):
        pytest.skip(f"nn.LSTM's forward fails there (oneDNN has no {cast} LSTM here): "
                    "test_cpu_autocast_runs_where_nn_lstm_fails")
    ours, ref = (m.to(dtype) for m in make_pair("cpu", num_layers=2, proj_size=proj_size))
    x = randn(T, B, D, seed=1).to(dtype)
    state = None
    if hx != "no-hx":
        state_dtype = torch.float32 if hx == "hx-float32" else cast
        state = tuple(randn(*shape, seed=2, scale=0.5).to(state_dtype) for shape in state_shapes(ours, B))
    packed = form != "padded"
    grad = form == "packed-to-differentiate"

    def run(module):
        inputs = pack_padded_sequence(x, torch.tensor([5, 3, 2])) if packed else x
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=cast):
            out, (h_n, c_n) = module(inputs, state)
        return out.data if packed else out, h_n, c_n

    got, want = run(ours), run(ref)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert_close(name, a.float(), b.float(), (2e-2, 2e-2))
    if grad:
        sum(t.float().sum() for t in got).backward()
        assert all(p.grad.dtype == dtype for p in ours.parameters())


@pytest.mark.parametrize("cast", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_cpu_autocast_runs_where_nn_lstm_fails(cpu_path, forget_bias, cast):
    """nn.LSTM's forward fails under CPU float16 autocast for a cell without a projection in another
    dtype (oneDNN has no float16 LSTM), and so under bfloat16 autocast on a CPU without oneDNN's
    bfloat16: LSTM runs its loop there, in the autocast dtype as autocast asks, close to nn.LSTM on
    the rounded input and weights."""
    if cast not in lstm_module.ONEDNN_LSTM_MISSING:
        pytest.skip(f"oneDNN has a {cast} LSTM on this CPU: test_cpu_autocast_gives_nn_lstms_dtypes")
    ours, ref = make_pair("cpu", num_layers=2)
    ours.forget_bias = forget_bias
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(cast))
        for name, p in ref.named_parameters():
            if name.startswith("bias_ih"):
                p[H:2 * H] += forget_bias
    x = randn(T, B, D, seed=1)
    with torch.autocast("cpu", dtype=cast):
        got = ours(x)
    want = ref(x.to(cast).float())
    tol = (5e-3, 5e-3) if cast == torch.float16 else (4e-2, 4e-2)
    for name, a, b in zip(("output", "h_n", "c_n"), torch.utils._pytree.tree_leaves(got),
                          torch.utils._pytree.tree_leaves(want)):
        assert a.dtype == cast, name
        assert_close(name, a, b, tol)


@pytest.mark.parametrize("case", ["float64", "packed-differing-lengths"])
def test_cpu_float16_autocast_runs_nn_lstm_where_it_works(cpu_path, case):
    """Under CPU float16 autocast nn.LSTM's forward runs where it does not reach oneDNN (float64, which
    autocast leaves; packed input of differing lengths, without gradients): LSTM runs it there,
    bit for bit."""
    ours, ref = make_pair("cpu", num_layers=2)
    x = randn(T, B, D, seed=1)
    if case == "float64":
        ours, ref, inputs = ours.double(), ref.double(), x.double()
    else:
        inputs = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        got, want = ours(inputs), ref(inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_cpu_autocast_keeps_c_n_as_nn_lstm_over_chunks(cpu_path):
    """A sequence run in chunks under CPU autocast, (h_n, c_n) fed back: with a projection nn.LSTM
    keeps c_n float32 on every chunk, and so does LSTM (the state's dtypes, which autocast casts alike,
    took LSTM's own path from the second chunk, whose c_n is in the autocast dtype)."""
    ours, ref = make_pair("cpu", proj_size=4)
    x = randn(6, B, D, seed=1)
    states = [None, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for k in range(3):
            for i, module in enumerate((ours, ref)):
                _, states[i] = module(x[2 * k:2 * k + 2], states[i])
            assert [t.dtype for t in states[0]] == [t.dtype for t in states[1]] == [torch.bfloat16, torch.float32]
    for name, a, b in zip(("h_n", "c_n"), *states):
        assert_close(name, a.float(), b.float(), (2e-2, 2e-2))


def test_float64_input_under_autocast_is_a_dtype_error():
    """autocast leaves a float64 input as it is and casts float32 weights: LSTM's DTypeError (nn.LSTM's
    own check is off under autocast, and its ops then fail on the mixed dtypes)."""
    for lstm in (LSTM(D, H), LSTM(D, H, use_peepholes=True)):
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
                DTypeError, match=r"^RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
            lstm(randn(T, B, D, seed=1).double())


def test_c_n_in_the_input_dtype(device):
    lstm = LSTM(D, H, proj_size=4, use_peepholes=True).to(device, torch.bfloat16)
    out, (h_n, c_n) = lstm(torch.randn(T, B, D, device=device, dtype=torch.bfloat16))
    assert out.dtype == h_n.dtype == c_n.dtype == torch.bfloat16


def test_a_float32_c_0_for_half_input_gives_a_float32_c_n(device):
    """The cell state is float32 inside: a float32 c_0 (which nn.LSTM refuses for half input) gets it
    back unrounded, so a sequence run in two chunks ends with the c_n of one run, to float32 rounding
    (the h carried between chunks is the input dtype's in both)."""
    lstm = LSTM(D, H, use_peepholes=True, cell_clip=3.0).to(device, torch.bfloat16)
    x = torch.randn(T, B, D, device=device, dtype=torch.bfloat16)
    h_0 = torch.randn(1, B, H, device=device, dtype=torch.bfloat16)
    c_0 = torch.randn(1, B, H, device=device)
    _, (h_1, c_1) = lstm(x[:3], (h_0, c_0))
    _, (_, c_2) = lstm(x[3:], (h_1, c_1))
    _, (_, c_n) = lstm(x, (h_0, c_0))
    assert c_1.dtype == c_2.dtype == c_n.dtype == torch.float32
    torch.testing.assert_close(c_2, c_n, rtol=1e-5, atol=1e-5)
    # Under autocast c_n is in the autocast dtype whatever the input's (as nn.LSTM's on CUDA).
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        _, (_, c_cast) = lstm(x, (h_0, c_0))
    assert c_cast.dtype == torch.bfloat16


def test_dropout_with_one_layer_warns_as_nn_lstm():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        LSTM(D, H, dropout=0.5)


@pytest.mark.parametrize("name,value", [("bias", 1), ("batch_first", "True"), ("use_peepholes", 1)])
def test_flags_must_be_bool(name, value):
    with pytest.raises(TypeError, match=rf"{name} should be of type bool, got: {type(value).__name__}"):
        LSTM(D, H, **{name: value})


def test_numpy_scalars_and_0d_tensors_are_numbers():
    torch.manual_seed(5)
    lstm = LSTM(np.int64(D), np.int32(H), num_layers=torch.tensor(2), dropout=np.float32(0.25),
                proj_size=np.int64(4), cell_clip=np.float32(1.5), proj_clip=torch.tensor(0.5),
                forget_bias=np.float64(1.0))
    torch.manual_seed(5)
    plain = LSTM(D, H, num_layers=2, dropout=0.25, proj_size=4, cell_clip=1.5, proj_clip=0.5, forget_bias=1.0)
    assert repr(lstm) == repr(plain)
    assert all(torch.equal(a, b) for a, b in zip(lstm.parameters(), plain.parameters()))
    with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
        LSTM(D, np.float64(4.0))


def test_projection_gradient_is_contiguous(device):
    lstm = LSTM(D, H, proj_size=4, use_peepholes=True).to(device)
    out, _ = lstm(randn(T, B, D, seed=6).to(device))
    (d_hr,) = torch.autograd.grad(out.sum(), lstm.weight_hr_l0)
    assert d_hr.is_contiguous()
    out, _ = lstm(randn(T, B, D, seed=6).to(device))
    out.sum().backward()
    assert all(p.grad.is_contiguous() for p in lstm.parameters())


@pytest.mark.parametrize("extras", [dict(use_peepholes=True, cell_clip=1.0), dict(proj_size=8, proj_clip=1.0)],
                         ids=["peepholes+clip", "wide-projection"])
def test_meta_device_forward_gives_shapes(extras):
    """On the meta device (deferred initialisation), a module with TF's extras runs its forward as
    nn.LSTM does for its own cells: meta outputs of the right shapes, for a bidirectional stack."""
    lstm = LSTM(4, 6, num_layers=2, bidirectional=True, device="meta", **extras)
    out, (h, c) = lstm(torch.randn(5, 3, 4, device="meta"))
    width = lstm.proj_size or 6
    assert out.is_meta and h.is_meta and c.is_meta
    assert (out.shape, h.shape, c.shape) == ((5, 3, 2 * width), (4, 3, width), (4, 3, 6))


# A cell nn.LSTM computes, in float64 (no kernel runs it: nn.LSTM's forward does), and one with TF's
# extras (its own path).
CELLS = {"nn.LSTM-cell": dict(dtype=torch.float64), "extras": dict(use_peepholes=True)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_hx_must_be_two_hidden_states(packed, cell):
    """nn.LSTM raises RuntimeError("lstm expects two hidden states") for three; so does LSTM, for any
    count but two, and for a bare tensor (nn.LSTM: IndexError), whichever path runs the cell."""
    lstm = LSTM(4, 6, **CELLS[cell])
    x = torch.randn(5, 2, 4, dtype=lstm.weight_ih_l0.dtype)
    inputs = pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x
    h = x.new_zeros(1, 2, 6)
    for hx, got in [((h, h, h), "a tuple of 3"), ((h,), "a tuple of 1"), (h, "Tensor")]:
        with pytest.raises(RuntimeError, match=rf"^lstm expects two hidden states: hx = \(h_0, c_0\), got {got}$"):
            lstm(inputs, hx)


@pytest.mark.parametrize("packed,lengths,grad", [(False, None, True), (True, [5, 3], True), (True, [5, 3], False),
                                                   (True, [5, 5], True)],
                         ids=["padded", "packed", "packed-inference", "packed-equal-lengths"])
def test_input_errors_are_what_nn_lstm_raises_for_either_layout(packed, lengths, grad):
    """nn.LSTM raises ValueError for padded input in another dtype than its weights, and (from its
    op) RuntimeError for packed input: LSTM raises one DTypeError, both, with nn.LSTM's message.
    Where LSTM runs nn.LSTM's forward on packed input (which checks nothing), its checks run too
    (float64 runs no kernel: nn.LSTM's forward is what a CPU call without the interpreter runs)."""
    def run(x, hx=None):
        with torch.set_grad_enabled(grad):
            return LSTM(4, 6, dtype=torch.float64)(pack_padded_sequence(x, lengths) if packed else x, hx)

    x = torch.randn(5, 2, 4, dtype=torch.float64)
    for error in (ValueError, RuntimeError, DTypeError):
        with pytest.raises(error, match=r"^RNN input dtype \(torch.float32\) does not match weight dtype"):
            run(x.float())
    with pytest.raises(ShapeError, match=r"^input.size\(-1\) must be equal to input_size. Expected 4, got 3"):
        run(x[..., :3])
    h = torch.zeros(1, 2, 6, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"^Expected hidden\[0\] size \(1, 2, 6\), got \[1, 3, 6\]"):
        run(x, (h.new_zeros(1, 3, 6), h))
    for error in (RuntimeError, DTypeError):  # nn.LSTM's op raises RuntimeError for an hx dtype
        with pytest.raises(error, match=r"^h_0: dtype torch.float32 differs from input's torch.float64"):
            run(x, (h.float(), h))


@pytest.mark.parametrize("cell", CELLS)
def test_hx_dtype_errors_are_runtime_errors_as_nn_lstms(cell):
    """nn.LSTM's ops raise RuntimeError for hx in another dtype (on the CPU oneDNN's, naming no
    tensor); LSTM's checks raise a DTypeError, both that and the TypeError triton_lstm raises for a
    bad argument, naming the tensor, whichever path runs the cell."""
    lstm = LSTM(4, 6, **CELLS[cell])
    x = torch.randn(5, 2, 4, dtype=lstm.weight_ih_l0.dtype)
    h = x.new_zeros(1, 2, 6)
    for hx, name in [((h.half(), h), "h_0"), ((h, h.half()), "c_0"), ((h.long(), h), "h_0")]:
        for error in (RuntimeError, TypeError, DTypeError):
            with pytest.raises(error, match=rf"^{name}: "):
                lstm(x, hx)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_with_batched_hx_is_a_shape_error(cell):
    """nn.LSTM raises RuntimeError for it; LSTM a ShapeError (also a ValueError) with that message,
    whichever path runs the cell."""
    lstm = LSTM(4, 6, **CELLS[cell])
    x = torch.randn(5, 4, dtype=lstm.weight_ih_l0.dtype)
    h = x.new_zeros(1, 2, 6)
    with pytest.raises(ShapeError, match=r"^For unbatched 2-D input, hx and cx should also be 2-D but got "
                                         r"\(3-D, 3-D\) tensors"):
        lstm(x, (h, h))


HALF_WITH_FLOAT32_STATE = """
import torch, triton_lstm
torch.manual_seed(0)
torch.set_grad_enabled(False)
half = triton_lstm.LSTM(4, 6, dtype=torch.bfloat16)
lstm = triton_lstm.LSTM(4, 6)
lstm.load_state_dict(half.state_dict())
x, h, c = torch.randn(5, 2, 4).bfloat16(), torch.randn(1, 2, 6).bfloat16(), torch.randn(1, 2, 6)
out, (h_n, c_n) = half(x, (h, c))
want, (h_want, c_want) = lstm(x.float(), (h.float(), c))
print([str(t.dtype) for t in (out, h_n, c_n)])
print(max(float((got.float() - ref).abs().max()) for got, ref in [(out, want), (h_n, h_want), (c_n, c_want)]))
"""


def test_half_input_with_float32_cell_state_on_an_nn_lstm_cell():
    """A float32 c_0 for bfloat16 input (the cell state's dtype) on the CPU, as users run (no
    interpreter), for a cell nn.LSTM computes, whose forward takes one dtype: LSTM runs it on its
    own path, returning c_n in float32, as c_0 came (so that chunks carry it unrounded), equal to the
    float32 computation on the same bfloat16 values within bfloat16's rounding of h each step and of
    the outputs."""
    run = fresh_python("-c", HALF_WITH_FLOAT32_STATE, timeout=120)
    assert run.returncode == 0, run.stderr
    dtypes, error = run.stdout.splitlines()
    assert dtypes == str(["torch.bfloat16"] * 2 + ["torch.float32"])
    assert float(error) < 2e-2


@pytest.mark.parametrize("cell", CELLS)
def test_hx_of_other_things_or_on_another_device(cell):
    """hx holding a non-tensor is a TypeError naming it (nn.LSTM: AttributeError), hx on another
    device than the input a ValueError naming it (nn.LSTM: its op's RuntimeError), whichever path
    runs the cell."""
    lstm = LSTM(4, 6, **CELLS[cell])
    x = torch.randn(5, 2, 4, dtype=lstm.weight_ih_l0.dtype)
    h = x.new_zeros(1, 2, 6)
    with pytest.raises(TypeError, match=r"^hx: expected two tensors \(h_0, c_0\), got NoneType for c_0$"):
        lstm(x, (h, None))
    with pytest.raises(ValueError, match=r"^h_0: on device meta, but input on cpu"):
        lstm(x, (h.to("meta"), h))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_forget_bias_runs_nn_lstm_with_it_folded_into_the_bias(packed):
    """Where nn.LSTM's forward runs (float64: no kernel), a cell nn.LSTM computes but for a forget bias
    runs it with the forget bias added to every bias_ih: bit for bit nn.LSTM with those biases,
    outputs, final states and every gradient (a bidirectional stack with a projection; packed input
    without gradients, as nn.LSTM's forward runs it); the module's own parameters stay as they were."""
    torch.manual_seed(3)
    ours = LSTM(D, H, num_layers=2, proj_size=4, bidirectional=True, dtype=torch.float64, forget_bias=1.5)
    ref = torch.nn.LSTM(D, H, num_layers=2, proj_size=4, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("bias_ih"):
                p[H:2 * H] += 1.5
    saved = {k: v.clone() for k, v in ours.state_dict().items()}
    x = randn(T, B, D, seed=4).double()
    if packed:
        with torch.no_grad():
            got, want = (m(pack_padded_sequence(x, torch.tensor([5, 3, 2]))) for m in (ours, ref))
    else:
        xs = [x.clone().requires_grad_() for _ in range(2)]
        got, want = ours(xs[0]), ref(xs[1])
        loss = [out.sum() + 2 * h.sum() + 3 * c.sum() for out, (h, c) in (got, want)]
        torch.autograd.backward(loss)
        assert torch.equal(xs[0].grad, xs[1].grad)
        for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
            assert torch.equal(p.grad, q.grad), name
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert (a is None and b is None) or torch.equal(a, b)   # (a PackedSequence's absent indices)
    assert all(torch.equal(v, saved[k]) for k, v in ours.state_dict().items())


def test_forget_bias_folded_also_into_parametrized_weights():
    """A parametrized weight is computed at every access, which nn.LSTM's forward takes for a change
    of weights: the forget bias must survive that (parametrized bias_ih and weight_hh; float64, where
    nn.LSTM's forward runs)."""
    import torch.nn.utils.parametrize as parametrize

    class Same(torch.nn.Module):
        def forward(self, w):
            return w * 1.0   # a new tensor at every access, as parametrizations give

    torch.manual_seed(3)
    plain = LSTM(D, H, dtype=torch.float64, forget_bias=1.5)
    ours = copy.deepcopy(plain)
    for name in ("bias_ih_l0", "weight_hh_l0"):
        parametrize.register_parametrization(ours, name, Same())
    x = randn(T, B, D, seed=4).double()
    want = plain(x)[0]
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert torch.equal(ours(x)[0], want), f"grad enabled: {grad}"
    plain.forget_bias = 0.0
    assert not torch.allclose(plain(x)[0], want)


FOLDED_DTYPES = """
import torch, triton_lstm
from triton_lstm.lstm import LSTM
folded, sequences = [], []
fold, sequence = LSTM._forward_bias_folded, triton_lstm.lstm.named_sequence
LSTM._forward_bias_folded = lambda self, *args: folded.append(1) or fold(self, *args)
triton_lstm.lstm.named_sequence = lambda *args, **kwargs: sequences.append(1) or sequence(*args, **kwargs)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    folded.clear(), sequences.clear()
    triton_lstm.LSTM(3, 4, forget_bias=1.0, dtype=dtype)(torch.randn(5, 2, 3, dtype=dtype))
    print(str(dtype)[6:], len(folded), len(sequences))
"""


def test_forget_bias_folded_only_where_the_cpu_path_would_not_be_more_precise():
    """On the CPU as users run it (no interpreter), with spies on the two paths (each still runs):
    float32 and float64 with a forget bias run nn.LSTM's forward with the bias folded; half precision
    keeps the CPU path (named_sequence, lstm_sequence's body), which computes it in float32 (nn.LSTM's
    forward would in half precision, the forget bias added to the bias rounded too)."""
    run = fresh_python("-c", FOLDED_DTYPES, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:12] == "float32 1 0 float64 1 0 bfloat16 0 1 float16 0 1".split(), run.stdout


@pytest.mark.parametrize("proj", [0, 4], ids=["plain", "proj"])
def test_forward_mode_derivatives_are_nn_lstms(proj):
    """Forward-mode AD where nn.LSTM has it (float64: aten's LSTM): dual tensors through packed input
    of differing lengths with gradients wanted and jacfwd and hessian (under vmap), where LSTM runs
    its loop in place of nn.LSTM's forward: nn.LSTM's derivatives."""
    import torch.autograd.forward_ad as fwAD
    ours, ref = make_pair("cpu", seed=3, num_layers=2, bidirectional=True, proj_size=proj, dtype=torch.float64)
    x, v = randn(T, B, D, seed=4).double(), randn(T, B, D, seed=5).double()
    packed = pack_padded_sequence(x, [T, 2, 4], enforce_sorted=False)
    tangent = pack_padded_sequence(v, [T, 2, 4], enforce_sorted=False).data

    def dual_run(module):
        with fwAD.dual_level():
            data = fwAD.make_dual(packed.data, tangent)
            out, (h_n, c_n) = module(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                                    packed.unsorted_indices))
            return [fwAD.unpack_dual(t).tangent for t in (out.data, h_n, c_n)]

    def transforms(module):
        def first(x):
            return module(x)[0]
        return (*dual_run(module), torch.func.jacfwd(first)(x[:, :2]),
                torch.func.hessian(lambda x: first(x).square().sum())(x[:3, :1]))

    for i, (got, want) in enumerate(zip(transforms(ours), transforms(ref))):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9, msg=lambda m: f"result {i}: {m}")


@pytest.mark.parametrize("cell", ["packed-loop", "extras"])
def test_parametrized_weights_are_computed_as_often_as_nn_lstm_computes_them(cell):
    """A parametrized weight is computed as many times a call as nn.LSTM computes it (a stateful
    parametrization, as spectral_norm's power iteration in training, then advances alike), also where
    LSTM runs its loop: packed input of differing lengths with gradients wanted, and TF's extras (whose
    nn.LSTM twin runs without them)."""
    import torch.nn.utils.parametrize as parametrize

    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, w):
            self.calls += 1
            return w * 1.0

    extras = dict(use_peepholes=True, cell_clip=3.0) if cell == "extras" else {}
    torch.manual_seed(0)
    ours, ref = LSTM(D, H, num_layers=2, **extras), torch.nn.LSTM(D, H, num_layers=2)
    x = randn(T, B, D, seed=1)
    inputs = pack_padded_sequence(x, [T, 2, 4], enforce_sorted=False) if cell == "packed-loop" else x
    counts = []
    for module in (ours, ref):
        counted = Counted()
        parametrize.register_parametrization(module, "weight_hh_l1", counted)
        module(inputs)
        counts.append(counted.calls)
    assert counts[0] == counts[1] > 0, counts


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_forward_mode_where_the_cpu_path_runs_onednn(cpu_path, forget_bias):
    """float32 on the CPU path, where LSTM runs nn.LSTM's forward (oneDNN's LSTM, which has no
    forward mode: nn.LSTM raises there), also with a forget bias folded in: forward mode (jvp, dual
    tensors) takes LSTM's own path, equal to the float64 nn.LSTM's with that bias."""
    import torch.autograd.forward_ad as fwAD
    ours, ref = make_pair("cpu", seed=6, num_layers=2, dtype=torch.float64)
    ours.forget_bias = forget_bias
    with torch.no_grad():
        for layer in range(2):
            getattr(ref, f"bias_ih_l{layer}")[H:2 * H] += forget_bias
    ours.float()
    x, v = randn(T, B, D, seed=7), randn(T, B, D, seed=8)
    want = torch.func.jvp(lambda x: ref(x)[0], (x.double(),), (v.double(),))[1]
    assert_close("jvp", torch.func.jvp(lambda x: ours(x)[0], (x,), (v,))[1], want, TOL)
    with fwAD.dual_level():
        assert_close("dual", fwAD.unpack_dual(ours(fwAD.make_dual(x, v))[0]).tangent, want, TOL)


def test_forward_mode_keeps_the_dtypes_of_nn_lstms_packed_path_under_cpu_autocast(cpu_path):
    """Under CPU autocast, where LSTM runs in place of nn.LSTM's packed path (differing lengths, with
    gradients wanted) it returns nn.LSTM's dtypes there; in forward mode too."""
    import torch.autograd.forward_ad as fwAD
    lstm = LSTM(D, H)
    x = randn(T, B, D, seed=9)
    packed = pack_padded_sequence(x, [T, 2, 4], enforce_sorted=False)

    def dtypes(data):
        out, (h_n, c_n) = lstm(PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices))
        return [t.dtype for t in (out.data, h_n, c_n)]

    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = dtypes(packed.data)
        with fwAD.dual_level():
            got = dtypes(fwAD.make_dual(packed.data, torch.ones_like(packed.data)))
    assert want == [torch.float32] * 3 and got == want


@pytest.mark.filterwarnings("ignore:activation .* has no kernel implementation")
@pytest.mark.parametrize("path", ["kernels", "reference"])
@pytest.mark.parametrize("weight", ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"])
def test_a_weight_changed_in_place_before_backward_raises_as_in_nn_lstm(device, path, weight):
    """The backward reads the forward's weights: one changed in place in between (an optimizer step too
    early) is autograd's error, as in nn.LSTM, not gradients of other weights. The reference path runs
    here for an activation no kernel has."""
    activation = "tanh" if path == "kernels" else (lambda x: torch.tanh(x))
    for m in (torch.nn.LSTM(3, 4, proj_size=2), LSTM(3, 4, proj_size=2, activation=activation)):
        m.to(device)
        y, _ = m(torch.randn(5, 2, 3, device=device, requires_grad=True))
        with torch.no_grad():
            getattr(m, weight).add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


@pytest.mark.parametrize("gate_order", ["tf", "torch"])
def test_a_weight_changed_in_place_before_backward_raises_on_the_cpu_path(gate_order):
    """The CPU path's torch LSTM tier (a plain cell) reads gate-swapped copies of TF's layout too."""
    kernel = torch.randn(7, 16, requires_grad=True)
    w_x, w_h = kernel[:3], kernel[3:]
    out, _, _ = lstm_sequence_cpu(torch.randn(5, 2, 3, requires_grad=True), torch.zeros(2, 4), torch.zeros(2, 4),
                                  w_x, w_h, torch.zeros(16), forget_bias=1.0, gate_order=gate_order)
    assert torch_lstm_computes(False, None, 4, forget_bias=1.0, cell_clip=None, proj_clip=None, activation="tanh",
                               recurrent_activation="sigmoid")
    with torch.no_grad():
        kernel.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_frozen_weights_take_no_gradient_through_the_gate_swap(device, monkeypatch):
    """Only the weights that require grad are differentiable once their gates are swapped: a frozen
    weight_ih (or the zeros of bias=False) adds no weight-gradient product to the backward."""
    seen = []

    def recording(x, h0, c0, w_x, w_h, bias, *rest):
        seen.append((w_x.requires_grad, w_h.requires_grad, bias.requires_grad))
        return ops_sequence(x, h0, c0, w_x, w_h, bias, *rest)

    ops_sequence = triton_lstm.ops.sequence
    monkeypatch.setattr(triton_lstm.ops, "sequence", recording)    # records, then runs the kernels' op
    for bias in (True, False):
        m = LSTM(3, 4, bias=bias).to(device)
        m.weight_ih_l0.requires_grad_(False)
        m(torch.randn(5, 2, 3, device=device))[0].sum().backward()
        assert m.weight_ih_l0.grad is None and m.weight_hh_l0.grad is not None
    assert seen == [(False, True, True), (False, True, False)]
