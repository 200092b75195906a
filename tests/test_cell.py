"""``LSTMCell`` and ``LSTMStateTuple``: TF's variables, initialisation, states, the step against the
reference, TF checkpoint loading, and the clip gradients at exactly the bound."""
import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import TOLERANCES, assert_close, cell_args, cell_tensors, reference_fp32
from triton_lstm import (DTypeError, LSTM, LSTMCell, LSTMStateTuple, dynamic_rnn, lstm_cell, lstm_cell_reference,
                         lstm_sequence)
from triton_lstm.launch import kernels_run_on
import triton_lstm.functional
import triton_lstm.porting

B, D, N, P = 4, 6, 10, 5
FWD, GRAD = TOLERANCES[torch.float32]["fwd"], TOLERANCES[torch.float32]["grad"]


def _randn(*shape, seed, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device)


# -- variables --------------------------------------------------------------------------------------

@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("num_proj", [None, 3])
def test_parameters_names_and_shapes(peepholes, num_proj):
    cell = LSTMCell(N, use_peepholes=peepholes, num_proj=num_proj, input_size=D)
    Pc = num_proj or N
    want = {"kernel": (D + Pc, 4 * N), "bias": (4 * N,)}
    if peepholes:
        want.update(w_f_diag=(N,), w_i_diag=(N,), w_o_diag=(N,))
    if num_proj:
        want["projection_kernel"] = (N, num_proj)
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == want
    assert set(cell.state_dict()) == set(want)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in cell.parameters())


@pytest.mark.parametrize("num_proj", [None, 3])
def test_state_and_output_sizes(num_proj):
    Pc = num_proj or N
    tup = LSTMCell(N, num_proj=num_proj)
    assert tup.output_size == Pc
    assert tup.state_size == LSTMStateTuple(N, Pc) and isinstance(tup.state_size, LSTMStateTuple)
    assert tup.state_size.c == N and tup.state_size.h == Pc
    cat = LSTMCell(N, num_proj=num_proj, state_is_tuple=False)
    assert cat.state_size == N + Pc and cat.output_size == Pc


# -- TF's default initialisation --------------------------------------------------------------------

def test_default_init_glorot_uniform_and_zero_bias():
    torch.manual_seed(0)
    Db, Nb, Pb = 32, 128, 16
    cell = LSTMCell(Nb, use_peepholes=True, num_proj=Pb, input_size=Db)
    assert torch.count_nonzero(cell.bias) == 0
    limits = {"kernel": math.sqrt(6 / (Db + Pb + 4 * Nb)), "projection_kernel": math.sqrt(6 / (Nb + Pb)),
              "w_f_diag": math.sqrt(3 / Nb), "w_i_diag": math.sqrt(3 / Nb), "w_o_diag": math.sqrt(3 / Nb)}
    for name, limit in limits.items():
        w = getattr(cell, name).detach()
        assert w.abs().max() <= limit, name
        assert w.abs().max() > 0.9 * limit, name
        if w.numel() > 1000:
            # Uniform on [-l, l]: mean 0, standard deviation l / sqrt(3).
            assert abs(w.mean().item()) < 0.05 * limit, name
            assert abs(w.std().item() / (limit / math.sqrt(3)) - 1) < 0.05, name
    peeps = [cell.w_f_diag, cell.w_i_diag, cell.w_o_diag]
    assert not torch.equal(peeps[0], peeps[1]) and not torch.equal(peeps[1], peeps[2])


def test_custom_initializer_skips_bias():
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, initializer=torch.nn.init.ones_, input_size=D)
    for name in ("kernel", "w_f_diag", "w_i_diag", "w_o_diag", "projection_kernel"):
        assert torch.equal(getattr(cell, name).detach(), torch.ones_like(getattr(cell, name))), name
    assert torch.count_nonzero(cell.bias) == 0


def test_initializer_that_returns_its_values_or_leaves_a_weight_unset():
    """TF's initializers return values: they are taken; one that neither fills nor returns a weight is
    an error (the weights were torch.empty's memory)."""
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, input_size=D, initializer=lambda t: torch.full(t.shape, 0.1))
    for name in ("kernel", "w_f_diag", "w_i_diag", "w_o_diag", "projection_kernel"):
        assert torch.equal(getattr(cell, name).detach(), torch.full_like(getattr(cell, name), 0.1)), name
    with pytest.raises(ValueError, match=rf"^initializer: left kernel \(shape \({D + N}, {4 * N}\)\) unset or NaN"):
        LSTMCell(N, input_size=D, initializer=lambda t: None)
    with pytest.raises(ValueError, match=rf"^initializer: returned \(3,\) for kernel of shape \({D + N}, {4 * N}\)"):
        LSTMCell(N, input_size=D, initializer=lambda t: torch.zeros(3))


def test_cell_built_at_a_first_call_under_inference_mode_still_trains():
    """A first call under torch.inference_mode builds the weights as ordinary parameters, so a later
    training step gets their gradients (as nn.LazyLinear's)."""
    cell = LSTMCell(N, num_proj=P)
    with torch.inference_mode():
        dynamic_rnn(cell, torch.randn(2, 3, D))
    assert not cell.kernel.is_inference()
    out, _ = dynamic_rnn(cell, torch.randn(2, 3, D))
    out.sum().backward()
    assert cell.kernel.grad is not None and cell.kernel.grad.abs().sum() > 0


# -- states -----------------------------------------------------------------------------------------

def test_zero_state_tuple_keeps_c_float32_for_half():
    cell = LSTMCell(N, num_proj=P)
    c, h = cell.zero_state(3, torch.float16)
    assert c.shape == (3, N) and c.dtype == torch.float32
    assert h.shape == (3, P) and h.dtype == torch.float16
    assert not c.any() and not h.any()
    c, h = cell.zero_state(2, torch.float64)
    assert c.dtype == h.dtype == torch.float64


@pytest.mark.parametrize("given, dtype", [(np.float64, torch.float64), (np.dtype("float16"), torch.float16),
                                          (np.float32, torch.float32)])
def test_zero_state_takes_numpy_dtypes(given, dtype):
    """As TF's zero_state (a checkpoint array's dtype at hand); the state's dtype is h's, as TF's."""
    cell = LSTMCell(N, num_proj=P, input_size=D)
    state = cell.zero_state(2, given)
    assert state.h.dtype == dtype and state.dtype == dtype
    assert state.c.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert cell.get_initial_state(batch_size=2, dtype=given).h.dtype == dtype


def test_zero_state_concatenated():
    cell = LSTMCell(N, num_proj=P, state_is_tuple=False)
    s = cell.zero_state(3, "float16")
    assert isinstance(s, torch.Tensor) and s.shape == (3, N + P) and s.dtype == torch.float16 and not s.any()


def test_get_initial_state():
    cell = LSTMCell(N, num_proj=P)
    c, h = cell.get_initial_state(inputs=torch.ones(5, D, dtype=torch.float64))
    assert c.shape == (5, N) and h.shape == (5, P) and c.dtype == h.dtype == torch.float64
    c, h = cell.get_initial_state(batch_size=2, dtype=torch.float32)
    assert c.shape == (2, N) and h.shape == (2, P) and h.dtype == torch.float32
    with pytest.raises(ValueError, match="get_initial_state: pass inputs, or both batch_size and dtype"):
        cell.get_initial_state()
    with pytest.raises(ValueError, match="batch_size and dtype"):
        cell.get_initial_state(batch_size=2)
    # TF: "dtype from input tensor is different from the input param".
    with pytest.raises(ValueError, match=r"^dtype: torch.float64 differs from the inputs' dtype torch.float32"):
        cell.get_initial_state(inputs=torch.ones(5, D), dtype=torch.float64)
    assert cell.get_initial_state(inputs=torch.ones(5, D), dtype="float32").c.dtype == torch.float32


# -- lazy build -------------------------------------------------------------------------------------

def test_lazy_build_takes_the_inputs_width(device):
    torch.manual_seed(1)
    cell = LSTMCell(N, num_proj=P, device=device)
    assert cell.input_size is None and len(list(cell.parameters())) == 0
    out, (c, h) = cell(torch.randn(2, 3, device=device))
    assert cell.input_size == 3 and cell.kernel.shape == (3 + P, 4 * N)
    assert out.shape == (2, P) and c.shape == (2, N) and torch.equal(out, h)
    with pytest.raises(ValueError, match=r"inputs: expected last dimension 3 .*got shape \(2, 4\)"):
        cell(torch.randn(2, 4, device=device))


@pytest.mark.parametrize("call", ["cell", "dynamic_rnn"])
def test_lazy_build_refuses_inputs_without_features(call, device):
    """Inputs of width 0 leave nothing to build the cell for (nn.LSTM refuses input_size 0 too): an
    error naming the inputs' shape (the caller passed no input_size), and the cell stays unbuilt
    in its dtype."""
    cell = LSTMCell(N, device=device)
    x = torch.randn(3, 2, 0, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=r"^inputs: expected a last dimension >= 1 to build the cell for \(its "
                                         r"input_size\), got shape \((3, )?2, 0\)$"):
        cell(x[0]) if call == "cell" else dynamic_rnn(cell, x)
    assert cell.input_size is None and len(list(cell.parameters())) == 0
    cell(torch.randn(2, 3, device=device))
    assert cell.kernel.dtype == torch.float32


@pytest.mark.parametrize("given, warned", [
    (dict(num_unit_shards=4), r"^num_unit_shards=4: the weight is one tensor here, not 4 TF partitions "
                              r"\(tf_weights writes it whole; checkpoints of partitioned variables are read whole\)$"),
    (dict(num_proj_shards=2, num_proj=3), r"^num_proj_shards=2: the weight is one tensor here"),
    (dict(reuse=True), r"^reuse=True: variables are never shared by name or scope here; to share weights, call "
                       r"the same cell"),
    (dict(num_unit_shards=1, num_proj_shards=None, reuse=False), None)])
def test_tf_arguments_without_an_effect_here_warn_where_users_see_it(given, warned):
    """TF's shards and reuse: a UserWarning (shown by default, unlike a library's DeprecationWarning)
    where TF would have done something else, silence where it would not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LSTMCell(N, input_size=3, **given)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and re.match(warned, messages[0]), messages


@pytest.mark.parametrize("given, error, message", [
    (dict(num_unit_shards="x"), TypeError, r"^num_unit_shards: expected an int >= 1 or None, got 'x'"),
    (dict(num_proj_shards=0), ValueError, r"^num_proj_shards: expected an int >= 1 or None, got 0"),
    (dict(trainable="no"), TypeError, r"^trainable: expected a bool, got 'no'"),
    (dict(name=3), TypeError, r"^name: expected None or a variable scope's name \(str\), got int$")])
def test_tf_arguments_are_checked(given, error, message):
    with pytest.raises(error, match=message):
        LSTMCell(N, **given)


@pytest.mark.parametrize("built", ["at construction", "at the first call"])
def test_trainable_false_freezes_the_weights(built, device):
    """TF's trainable=False (one of its Layer keyword arguments): the weights take no gradient."""
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, trainable=False, device=device,
                    input_size=3 if built == "at construction" else None)
    x = torch.randn(2, 3, device=device, requires_grad=True)
    out, _ = cell(x)
    params = list(cell.parameters())
    assert len(params) == 6 and not any(p.requires_grad for p in params)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in params)


def test_apply_is_a_call_given_inputs_and_module_apply_given_a_function(device):
    """TF's Layer.apply(inputs, ...) is its call; nn.Module.apply(fn) stays what it is."""
    cell = LSTMCell(N, input_size=3, device=device)
    x = torch.randn(2, 3, device=device)
    state = cell.zero_state(2, torch.float32, device)
    out, (c, h) = cell.apply(x, state)
    want, (c_want, h_want) = cell(x, state)
    assert torch.equal(out, want) and torch.equal(c, c_want) and torch.equal(h, h_want)
    out_kw, _ = cell.apply(inputs=x, state=state)
    assert torch.equal(out_kw, want)
    with pytest.raises(TypeError, match=r"^inputs: expected a torch.Tensor, got ndarray"):
        cell.apply(x.numpy(), state)
    seen = []
    assert cell.apply(seen.append) is cell and seen == [cell]


class _ArrayLike:
    """What a TF initializer returns (a tf.Tensor): no torch tensor, but convertible by numpy."""

    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_initializer_in_tf_style_is_an_error_that_says_what_to_pass():
    """A TF initializer takes a shape, ours a tensor to fill: the error names the argument, the weight
    and the wrapper; values returned as a numpy array or an array-like (a TF tensor) are taken."""
    with pytest.raises(TypeError, match=rf"^initializer: failed on kernel \(a tensor of shape \({3 + N}, {4 * N}\)\): "
                                        r".*; expected a callable that fills the tensor .* "
                                        r"lambda w: init\(tuple\(w.shape\)\)$"):
        LSTMCell(N, input_size=3, initializer=lambda shape, dtype=None, partition_info=None: torch.zeros(shape))
    cell = LSTMCell(N, input_size=3, initializer=lambda w: np.full(tuple(w.shape), 0.25, dtype=np.float32))
    assert (cell.kernel == 0.25).all() and (cell.bias == 0).all()

    def tf_style(shape, dtype=None, partition_info=None):
        return _ArrayLike(np.full(shape, 0.5, dtype=np.float32))

    cell = LSTMCell(N, input_size=3, initializer=lambda w: tf_style(tuple(w.shape)))
    assert (cell.kernel == 0.5).all()


# -- the step ---------------------------------------------------------------------------------------

OPTIONS = dict(use_peepholes=True, cell_clip=0.8, num_proj=P, proj_clip=0.3, activation="relu")


def _cell(device, seed=2, **kw):
    torch.manual_seed(seed)
    return LSTMCell(N, input_size=D, device=device, **{**OPTIONS, **kw})


def _state(device, seed=3):
    return LSTMStateTuple(_randn(B, N, seed=seed, device=device), _randn(B, P, seed=seed + 1, scale=0.5,
                                                                          device=device))


def _reference_step(weights, x, c, h, cell, activation=torch.relu):
    return lstm_cell_reference(x, c, h, weights["kernel"], weights["bias"], weights.get("w_f_diag"),
                               weights.get("w_i_diag"), weights.get("w_o_diag"), weights.get("projection_kernel"),
                               forget_bias=cell.forget_bias, cell_clip=cell.cell_clip, proj_clip=cell.proj_clip,
                               activation=activation)


def _detached_params(cell):
    return {n: p.detach().clone().requires_grad_() for n, p in cell.named_parameters()}


def test_forward_matches_reference_all_options(device):
    cell = _cell(device)
    x = _randn(B, D, seed=4, device=device)
    c, h = _state(device)
    out, state = cell(x, (c, h))
    assert isinstance(state, LSTMStateTuple) and torch.equal(state.h, out)
    with torch.no_grad():
        w = dict(cell.named_parameters())
        h_ref, c_ref = _reference_step(w, x, c, h, cell)
        # Both clips must be active somewhere for this test to cover them.
        args = (x, c, h, w["kernel"], w["bias"], w["w_f_diag"], w["w_i_diag"], w["w_o_diag"], w["projection_kernel"])
        _, c_raw = lstm_cell_reference(*args, forget_bias=cell.forget_bias, activation=torch.relu)
        y, _ = lstm_cell_reference(*args, forget_bias=cell.forget_bias, cell_clip=cell.cell_clip,
                                   activation=torch.relu)
    assert (c_raw.abs() > cell.cell_clip).any() and (c_raw.abs() < cell.cell_clip).any()
    assert (y.abs() > cell.proj_clip).any() and (y.abs() < cell.proj_clip).any()
    assert_close("h", out, h_ref, FWD)
    assert_close("c", state.c, c_ref, FWD)


def test_concatenated_state_gives_the_same_numbers(device):
    tup = _cell(device)
    cat = _cell(device, seed=99, state_is_tuple=False)
    cat.load_state_dict(tup.state_dict())
    x = _randn(B, D, seed=5, device=device)
    c, h = _state(device)
    out_t, (c_t, h_t) = tup(x, (c, h))
    s = torch.cat([c, h], 1).requires_grad_()
    out_c, s_new = cat(x, s)
    assert s_new.shape == (B, N + P)
    assert torch.equal(out_c, out_t)
    assert torch.equal(s_new, torch.cat([c_t, h_t], 1))
    # And the gradient reaching the concatenated state is the tuple's (c, h) gradients side by side.
    c_l, h_l = c.clone().requires_grad_(), h.clone().requires_grad_()
    out_t, (c_t, _) = tup(x, (c_l, h_l))
    gc, gh = torch.autograd.grad(out_t.sum() + c_t.square().sum(), [c_l, h_l])
    (gs,) = torch.autograd.grad(out_c.sum() + s_new[:, :N].square().sum(), [s])
    assert_close("d state", gs, torch.cat([gc, gh], 1), GRAD)


@pytest.mark.parametrize("state_is_tuple", [True, False])
def test_chained_steps_forward_and_backward_match_reference(device, state_is_tuple):
    cell = _cell(device, state_is_tuple=state_is_tuple)
    T = 3
    xs = [_randn(B, D, seed=10 + t, device=device).requires_grad_() for t in range(T)]
    c0, h0 = _state(device, seed=20)
    state = LSTMStateTuple(c0, h0) if state_is_tuple else torch.cat([c0, h0], 1)
    gouts = [_randn(B, P, seed=30 + t, device=device) for t in range(T)]
    gc = _randn(B, N, seed=40, device=device)

    loss = 0
    for t in range(T):
        out, state = cell(xs[t], state)
        loss = loss + (out * gouts[t]).sum()
    c_last = state.c if state_is_tuple else state[:, :N]
    loss = loss + (c_last * gc).sum()
    loss.backward()

    w = _detached_params(cell)
    xs_ref = [x.detach().clone().requires_grad_() for x in xs]
    c, h = c0, h0
    loss_ref = 0
    for t in range(T):
        h, c = _reference_step(w, xs_ref[t], c, h, cell)
        loss_ref = loss_ref + (h * gouts[t]).sum()
    loss_ref = loss_ref + (c * gc).sum()
    loss_ref.backward()

    assert_close("h_T", out, h, FWD)
    assert_close("c_T", c_last, c, FWD)
    for name, p in cell.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name
        assert_close(f"d{name}", p.grad, w[name].grad, GRAD)
    for t in range(T):
        assert_close(f"dx[{t}]", xs[t].grad, xs_ref[t].grad, GRAD)


def half_tanh(x):
    return torch.tanh(x) * 0.5


@dataclasses.dataclass
class ScaledTanh:
    """A callable object that is not hashable (a dataclass with eq)."""
    scale: float

    def __call__(self, x):
        return torch.tanh(x) * self.scale


@pytest.mark.parametrize("make,named", [(lambda: lambda x: half_tanh(x), "<lambda>"),
                                        (lambda: ScaledTanh(0.5), "ScaledTanh(scale=0.5)")],
                         ids=["function", "unhashable-object"])
def test_custom_activation_warns_once_and_uses_reference(device, make, named):
    """A callable of its own (a new one each run: the warning is once per callable and process)."""
    half_tanh = make()
    cell = _cell(device, activation=half_tanh)
    x = _randn(B, D, seed=6, device=device)
    c, h = _state(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, (c_new, _) = cell(x, (c, h))
        cell(x, (c, h))
    ours = [w for w in caught if issubclass(w.category, UserWarning) and "reference path" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert named in str(ours[0].message)
    with torch.no_grad():
        h_ref, c_ref = _reference_step(dict(cell.named_parameters()), x, c, h, cell, activation=half_tanh)
        h_tanh, _ = _reference_step(dict(cell.named_parameters()), x, c, h, cell, activation=torch.tanh)
    assert not torch.allclose(h_ref, h_tanh)
    assert_close("h", out, h_ref, FWD)
    assert_close("c", c_new, c_ref, FWD)


def test_custom_activation_is_formatted_only_for_its_warning(device):
    """The once-only warning names the callable; later calls do not format it again (a repr can be
    costly: a callable holding a tensor)."""
    class Counted:
        formatted = 0

        def __call__(self, x):
            return torch.tanh(x)

        def __repr__(self):
            Counted.formatted += 1
            return "Counted()"

    cell = _cell(device, activation=Counted())
    x = _randn(B, D, seed=6, device=device)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for _ in range(3):
            cell(x, _state(device))
    assert Counted.formatted == 1


# -- TF checkpoints ---------------------------------------------------------------------------------

def _full_cell(seed=7, **kw):
    torch.manual_seed(seed)
    return LSTMCell(N, use_peepholes=True, num_proj=P, input_size=D, **kw)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_tf_weights_names_and_values():
    cell = _full_cell()
    w = cell.tf_weights()
    pre = "rnn/lstm_cell/"
    assert set(w) == {pre + n for n in ("kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection/kernel")}
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in w.values())
    assert np.array_equal(w[pre + "kernel"], cell.kernel.detach().numpy())
    assert np.array_equal(w[pre + "projection/kernel"], cell.projection_kernel.detach().numpy())
    assert np.array_equal(w[pre + "w_o_diag"], cell.w_o_diag.detach().numpy())
    plain = LSTMCell(N, input_size=D).tf_weights(scope="model/lstm_cell_2")
    assert set(plain) == {"model/lstm_cell_2/kernel", "model/lstm_cell_2/bias"}
    # A named cell's variables are under its name, as TF's dynamic_rnn names them (rnn/encoder/kernel);
    # such a scope, not named like an LSTM cell, converts with the scope given.
    named = LSTMCell(N, input_size=D, name="encoder", cell_clip=1.0)
    assert set(named.tf_weights()) == {"rnn/encoder/kernel", "rnn/encoder/bias"}
    with pytest.raises(ValueError, match=r"no LSTM cell .*; kernels with a bias in scopes not named like an LSTM "
                                         r"cell .*: \['rnn/encoder'\]: pass the scope of the LSTM cells among "
                                         r"them as scope="):
        triton_lstm.porting.tf_to_module(named.tf_weights(), cell_clip=1.0)
    module = triton_lstm.porting.tf_to_module(named.tf_weights(), scope="rnn", cell_clip=1.0)
    assert torch.equal(module.weight_hh_l0, named.kernel[D:].detach().t()[[*range(N), *range(2 * N, 3 * N),
                                                                           *range(N, 2 * N), *range(3 * N, 4 * N)]])


def test_load_tf_weights_round_trip():
    src = _full_cell(seed=7)
    dst = _full_cell(seed=8)
    assert not torch.equal(src.kernel, dst.kernel)
    dst.load_tf_weights(src.tf_weights())
    _assert_same_weights(src, dst)


@pytest.mark.parametrize("dtype, array_dtype", [(torch.float64, np.float64), (torch.float16, np.float16),
                                                 (torch.bfloat16, np.float32), (torch.float32, np.float32)])
def test_tf_weights_keep_the_cells_dtype(dtype, array_dtype):
    """A float64 (or float16) cell's variables come back in its dtype, so that they round-trip
    exactly; numpy has no bfloat16, whose values float32 holds exactly."""
    src = _full_cell(seed=7, dtype=dtype)
    w = src.tf_weights()
    assert all(v.dtype == array_dtype for v in w.values())
    dst = _full_cell(seed=8, dtype=dtype)
    dst.load_tf_weights(w)
    _assert_same_weights(src, dst)
    for array in w.values():
        array += 1
    _assert_same_weights(src, dst)   # the arrays are copies


@pytest.mark.parametrize("compute", ["parametrize", "weight_norm", "prune"])
def test_load_tf_weights_refuses_a_weight_computed_from_others(compute):
    """A pruned or parametrized kernel is recomputed from other parameters: a copy into it would be
    dropped (or written into a computed tensor) without a word. The load is refused, nothing changed."""
    import torch.nn.utils.parametrize as parametrize
    dst = _full_cell(seed=8)
    if compute == "parametrize":
        parametrize.register_parametrization(dst, "kernel", torch.nn.Tanh())
    elif compute == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch's own deprecation of weight_norm
            torch.nn.utils.weight_norm(dst, "kernel")
    else:
        torch.nn.utils.prune.l1_unstructured(dst, "kernel", amount=0.3)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"^load_tf_weights: kernel computed from other parameters \(pruned or "
                                         r"parametrized\); make them parameters again first"):
        dst.load_tf_weights(_full_cell(seed=7).tf_weights())
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_load_tf_weights_builds_an_unbuilt_cell():
    src = _full_cell()
    dst = LSTMCell(N, use_peepholes=True, num_proj=P)
    dst.load_tf_weights(src.tf_weights())
    assert dst.input_size == D
    _assert_same_weights(src, dst)


def test_load_tf_weights_scoped_names_slots_and_array_types():
    src = _full_cell()
    w = src.tf_weights(scope="model/rnn/lstm_cell_3")
    ckpt = {}
    for i, (k, v) in enumerate(sorted(w.items())):
        # numpy float64, numpy float32, torch tensors (one of them a parameter requiring grad)
        value = [v.astype(np.float64), v, torch.from_numpy(v), torch.from_numpy(v).requires_grad_()][i % 4]
        ckpt[k + ":0"] = value
        ckpt[k + "/Adam:0"] = np.full((1,), np.nan, np.float32)
        ckpt[k + "/Adam_1:0"] = np.full((7, 7), np.nan, np.float32)
    ckpt["beta1_power:0"] = np.float32(0.9)
    dst = LSTMCell(N, use_peepholes=True, num_proj=P)
    dst.load_tf_weights(ckpt)
    _assert_same_weights(src, dst)


def test_load_tf_weights_scope_picks_one_of_two_cells():
    a, b = _full_cell(seed=7), _full_cell(seed=8)
    ckpt = {**a.tf_weights("rnn/lstm_cell"), **b.tf_weights("rnn/lstm_cell_1")}
    with pytest.raises(ValueError, match="weights: several variables match.*scope="):
        _full_cell(seed=9).load_tf_weights(ckpt)
    for scope, want in (("rnn/lstm_cell", a), ("rnn/lstm_cell_1", b), ("rnn/lstm_cell_1/", b)):
        dst = _full_cell(seed=9)
        dst.load_tf_weights(ckpt, scope=scope)
        _assert_same_weights(want, dst)


def test_load_tf_weights_errors_and_failed_load_changes_nothing():
    src = _full_cell()
    good = src.tf_weights()
    dst = _full_cell(seed=8)
    before = {k: v.clone() for k, v in dst.state_dict().items()}

    missing = {k: v for k, v in good.items() if not k.endswith("/bias")}
    with pytest.raises(ValueError, match=r"weights: missing TF variables \['bias'\]"):
        dst.load_tf_weights(missing)
    wrong = {**good, "rnn/lstm_cell/projection/kernel": np.zeros((N, P + 1), np.float32)}
    with pytest.raises(ValueError, match=r"weights\['rnn/lstm_cell/projection/kernel'\]: expected shape "
                                         rf"\({N}, {P}\).*got \({N}, {P + 1}\)"):
        dst.load_tf_weights(wrong)
    nonfinite = {**good, "rnn/lstm_cell/w_i_diag": np.array([np.inf] + [0.0] * (N - 1), np.float32)}
    with pytest.raises(ValueError, match=r"weights\['rnn/lstm_cell/w_i_diag'\]: contains NaN or infinite"):
        dst.load_tf_weights(nonfinite)
    too_large = {**good, "rnn/lstm_cell/w_i_diag": np.full(N, 1e39)}  # finite in float64, not in the cell's float32
    with pytest.raises(ValueError, match=r"weights\['rnn/lstm_cell/w_i_diag'\]: contains NaN or infinite values "
                                         r"\(in torch\.float32\)"):
        dst.load_tf_weights(too_large)
    complex_ = {**good, "rnn/lstm_cell/bias": torch.zeros(4 * N, dtype=torch.complex64)}
    with pytest.raises(TypeError, match=r"weights\['rnn/lstm_cell/bias'\]: expected a real tensor, got dtype "
                                        r"torch\.complex64"):
        dst.load_tf_weights(complex_)
    _assert_same_weights(dst, _state_dict_module(before))

    unbuilt = LSTMCell(N, use_peepholes=True, num_proj=P)
    with pytest.raises(ValueError, match="projection/kernel"):
        unbuilt.load_tf_weights(wrong)
    assert unbuilt.input_size is None


def _state_dict_module(state):
    m = torch.nn.Module()
    for k, v in state.items():
        m.register_buffer(k, v)
    return m


def test_load_tf_weights_peepholes_into_a_cell_without():
    src = _full_cell()
    dst = LSTMCell(N, num_proj=P, input_size=D)
    with pytest.raises(ValueError, match=r"weights: the checkpoint has \['w_f_diag', 'w_i_diag', 'w_o_diag'\]"):
        dst.load_tf_weights(src.tf_weights())


# -- clip gradients at exactly the bound ------------------------------------------------------------

def _next_up(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(math.inf)).item()


def _bound_cases(bound: float, scale: float) -> torch.Tensor:
    """c_prev values whose pre-clip value (c_prev / scale, exact in fp32) is: +bound, -bound, one ulp
    beyond each, well inside, well beyond."""
    b32 = torch.tensor(bound).item()
    return torch.tensor([[b32, -b32, _next_up(b32), -_next_up(b32), 0.5 * b32, 3.0 * b32]]) * scale


def _zero_weight_cell(n, p, device):
    """Weights that make every gate sigmoid(0) = 0.5 exactly and the candidate act(0) = 0."""
    x = _randn(1, 3, seed=50, device=device)
    kernel = torch.zeros(3 + p, 4 * n, device=device)
    bias = torch.zeros(4 * n, device=device)
    return x, kernel, bias


PASSES = torch.tensor([[True, True, False, False, True, False]])


def test_cell_clip_gradient_inclusive_at_the_bound(device):
    bound = 0.3
    assert kernels_run_on(device, torch.float32)
    x, kernel, bias = _zero_weight_cell(6, 6, device)
    c_prev = _bound_cases(bound, 2.0).to(device)   # c_raw = 0.5 * c_prev: exactly the cases
    h_prev = torch.zeros(1, 6, device=device)
    b32 = torch.tensor(bound).item()
    grads = {}
    for name, fn, act in (("kernel", lstm_cell, "tanh"), ("reference", lstm_cell_reference, torch.tanh)):
        c_in = c_prev.clone().requires_grad_()
        h, c = fn(x, c_in, h_prev, kernel, bias, forget_bias=0.0, cell_clip=bound, activation=act)
        assert torch.equal(c.cpu(), torch.clamp(c_prev.cpu() * 0.5, -b32, b32)), name
        (grads[name],) = torch.autograd.grad(c.sum() + h.sum(), [c_in])
    # Independent: dc = 1 + 0.5 * tanh'(c), dc_prev = 0.5 * dc where the clip passes, else 0.
    c_clipped = torch.clamp(c_prev.cpu() * 0.5, -b32, b32)
    want = torch.where(PASSES, 0.5 * (1 + 0.5 * (1 - torch.tanh(c_clipped) ** 2)), 0.0)
    for name, got in grads.items():
        assert torch.equal(got.cpu() != 0, PASSES), name
        torch.testing.assert_close(got.cpu(), want, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


def test_proj_clip_gradient_inclusive_at_the_bound(device):
    bound = 0.3
    n = 6
    assert kernels_run_on(device, torch.float32)
    x, kernel, bias = _zero_weight_cell(n, n, device)
    # linear activation: c = 0.5 * c_prev, m = 0.5 * c, y = m @ I = 0.25 * c_prev, all exact.
    c_prev = _bound_cases(bound, 4.0).to(device)
    h_prev = torch.zeros(1, n, device=device)
    b32 = torch.tensor(bound).item()
    grads = {}
    for name, fn in (("kernel", lstm_cell), ("reference", lstm_cell_reference)):
        c_in = c_prev.clone().requires_grad_()
        proj = torch.eye(n, device=device).requires_grad_()
        act = "linear" if fn is lstm_cell else (lambda v: v)
        h, _ = fn(x, c_in, h_prev, kernel, bias, projection=proj, forget_bias=0.0, proj_clip=bound, activation=act)
        assert torch.equal(h.cpu(), torch.clamp(c_prev.cpu() * 0.25, -b32, b32)), name
        grads[name] = torch.autograd.grad(h.sum(), [c_in, proj])
    y = c_prev.cpu() * 0.25
    want_c = torch.where(PASSES, 0.25, 0.0)
    want_proj = y.t() @ PASSES.float()   # m^T dy, with m = y before the clip
    for name, (gc, gp) in grads.items():
        assert torch.equal(gc.cpu() != 0, PASSES), name
        torch.testing.assert_close(gc.cpu(), want_c, atol=0, rtol=0, msg=lambda m: f"{name} dc_prev: {m}")
        torch.testing.assert_close(gp.cpu(), want_proj, atol=0, rtol=0, msg=lambda m: f"{name} dproj: {m}")


# -- Python numbers in other clothes: numpy scalars and 0-d tensors ---------------------------------

# Values exact in float32, so that a float32 scalar holds the same number.
NUMPY = dict(num_units=np.int64(N), num_proj=np.int32(P), cell_clip=np.float32(0.75), proj_clip=np.float64(0.25),
             forget_bias=np.float32(0.5), input_size=np.int64(D))
TENSORS = dict(num_units=torch.tensor(N), num_proj=torch.tensor(P), cell_clip=torch.tensor(0.75),
               proj_clip=torch.tensor(0.25, dtype=torch.float64), forget_bias=torch.tensor(0.5),
               input_size=torch.tensor(D))
PLAIN = dict(num_units=N, num_proj=P, cell_clip=0.75, proj_clip=0.25, forget_bias=0.5, input_size=D)


@pytest.mark.parametrize("given", [NUMPY, TENSORS], ids=["numpy", "0-d tensors"])
def test_numpy_scalars_and_0d_tensors_are_numbers(given, device):
    """The cell, dynamic_rnn over it and lstm_cell take them as the numbers they hold: the same
    weights and the same results as with Python numbers."""
    cells = []
    for kwargs in (given, PLAIN):
        torch.manual_seed(11)
        cells.append(LSTMCell(use_peepholes=True, device=device, **kwargs))
    cell, plain = cells
    assert (cell.num_units, cell.num_proj, cell.input_size) == (N, P, D)
    assert (cell.cell_clip, cell.proj_clip, cell.forget_bias) == (plain.cell_clip, plain.proj_clip, plain.forget_bias)
    assert all(type(v) in (int, float) for v in (cell.num_units, cell.cell_clip, cell.forget_bias))
    _assert_same_weights(cell, plain)
    x = _randn(B, 5, D, seed=12, device=device)
    out, state = dynamic_rnn(cell, x)
    out_plain, state_plain = dynamic_rnn(plain, x)
    assert torch.equal(out, out_plain) and torch.equal(state.c, state_plain.c)
    w = dict(cell.named_parameters())
    args = (x[:, 0], state.c, state.h, w["kernel"], w["bias"], w["w_f_diag"], w["w_i_diag"], w["w_o_diag"],
            w["projection_kernel"])
    numbers = {k: given[k] for k in ("cell_clip", "proj_clip", "forget_bias")}
    h, c = lstm_cell(*args, **numbers)
    h_plain, c_plain = lstm_cell(*args, **{k: PLAIN[k] for k in numbers})
    assert torch.equal(h, h_plain) and torch.equal(c, c_plain)
    assert cell.zero_state(np.int64(3))[0].shape == (3, N)


# -- the lazily built cell ----------------------------------------------------------------------------

@pytest.mark.parametrize("convert,dtype", [(lambda m: m.double(), torch.float64),
                                           (lambda m: m.to(torch.float16), torch.float16),
                                           (lambda m: m.to(dtype=torch.bfloat16), torch.bfloat16)],
                         ids=["double", "to-half", "to-bf16"])
def test_lazy_cell_honours_to_before_the_first_call(convert, dtype, device):
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, device=device)
    assert convert(cell) is cell
    assert cell.zero_state(2)[1].dtype == dtype
    out, (c, h) = cell(torch.randn(2, D, device=device, dtype=dtype))
    assert {p.dtype for p in cell.parameters()} == {dtype} and out.dtype == dtype
    assert cell.kernel.device.type == torch.device(device).type


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("first_call", ["cell", "dynamic_rnn"])
def test_lazy_cell_takes_the_first_inputs_dtype(first_call, dtype, device):
    """TF's dtype=None: "use the type of the first input"; a dtype given stays."""
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, device=device)
    x = torch.randn(2, 3, D, device=device, dtype=dtype)
    out = cell(x[:, 0])[0] if first_call == "cell" else dynamic_rnn(cell, x)[0]
    assert {p.dtype for p in cell.parameters()} == {dtype} and out.dtype == dtype
    fixed = LSTMCell(N, dtype=torch.float32, device=device)
    with pytest.raises(DTypeError, match=r"^inputs: dtype .* differs from the cell's weights \(torch.float32\)"):
        fixed(x[:, 0])
    assert fixed.kernel.dtype == torch.float32


def test_lazy_cell_loads_a_state_dict_before_the_first_call(device):
    src = _full_cell(seed=13).to(device)
    dst = LSTMCell(N, use_peepholes=True, num_proj=P, device=device)
    dst.load_state_dict(src.state_dict())
    assert dst.input_size == D
    _assert_same_weights(src, dst)
    x = _randn(B, D, seed=14, device=device)
    assert torch.equal(dst(x)[0], src(x)[0])
    with pytest.raises(ValueError, match=r"^state_dict\['kernel'\]: expected shape \[input_size \+ 5, 40\], "
                                         r"got \(5, 40\)"):
        LSTMCell(N, num_proj=P).load_state_dict({"kernel": torch.zeros(P, 4 * N), "bias": torch.zeros(4 * N),
                                                 "projection_kernel": torch.zeros(N, P)})
    # Another cell's weights (num_proj P - 1): the kernel alone would pass for input_size D + 1.
    other = LSTMCell(N, num_proj=P - 1, input_size=D).state_dict()
    lazy = LSTMCell(N, num_proj=P)
    with pytest.raises(ValueError, match=rf"^state_dict\['projection_kernel'\]: expected shape \({N}, {P}\) "):
        lazy.load_state_dict(other)
    assert lazy.input_size is None and not list(lazy.parameters()), "a failed load left the cell built"


@pytest.mark.parametrize("initializer,bound", [
    (torch.nn.init.xavier_uniform_, lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out))),
    (torch.nn.init.kaiming_uniform_, lambda fan_in, fan_out: math.sqrt(6 / fan_in))], ids=["xavier", "kaiming"])
def test_matrix_initializer_on_peepholes_uses_tf_vector_fans(initializer, bound):
    """TF gives a vector [N] the fans (N, N); a matrix initializer works on the peepholes that way."""
    torch.manual_seed(15)
    Nb = 512
    cell = LSTMCell(Nb, use_peepholes=True, num_proj=16, initializer=initializer, input_size=32)
    for name in ("w_f_diag", "w_i_diag", "w_o_diag"):
        w = getattr(cell, name).detach()
        limit = bound(Nb, Nb)
        assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit, name
        assert abs(w.std().item() / (limit / math.sqrt(3)) - 1) < 0.1, name
    kernel = cell.kernel.detach()
    assert kernel.abs().max() <= bound(4 * Nb, 32 + 16)


def test_infinite_clip_is_no_clip(device):
    """inf clips nothing, on the kernels and the reference alike: the same as no clip."""
    torch.manual_seed(16)
    x, c, h = _randn(B, D, seed=17, device=device), _randn(B, N, seed=18, device=device) * 50, \
        _randn(B, P, seed=19, device=device)
    cell = LSTMCell(N, num_proj=P, input_size=D, device=device)
    args = (x, c, h, cell.kernel, cell.bias, None, None, None, cell.projection_kernel)
    for dtype in (torch.float32, torch.float64):
        typed = [None if a is None else a.detach().to(dtype) for a in args]
        unclipped = lstm_cell(*typed)
        clipped = lstm_cell(*typed, cell_clip=math.inf, proj_clip=math.inf)
        assert all(torch.equal(a, b) for a, b in zip(clipped, unclipped)), dtype
    assert LSTMCell(N, num_proj=P, cell_clip=np.inf, proj_clip=math.inf).cell_clip is None


def test_lazy_cell_builds_once_under_concurrent_first_calls():
    """Threads making a lazily built cell's first call together (a server's first requests): one
    builds it, every thread computes with the finished weights (none with half-built ones, none
    raising that it is built already), and each gets what a call after the build gets. In float64,
    which the CPU path runs (Triton's interpreter, which the tests run float32 on, is not thread-safe)."""
    import threading

    x = torch.randn(2, 5, 4, dtype=torch.float64)
    for attempt in range(10):
        cell = LSTMCell(16, use_peepholes=True, num_proj=8)
        start, results, errors = threading.Barrier(6), [None] * 6, []

        def first_call(k):
            start.wait()
            try:
                results[k] = dynamic_rnn(cell, x)[0].detach()
            except Exception as e:   # recorded for the assertion below, which names it
                errors.append(e)

        threads = [threading.Thread(target=first_call, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"attempt {attempt}: {errors[0]!r}"
        want = dynamic_rnn(cell, x)[0].detach()
        assert all(torch.equal(r, want) for r in results), f"attempt {attempt}"



# -- autocast ---------------------------------------------------------------------------------------

ENTRY_POINTS = ["lstm_cell", "lstm_sequence", "LSTMCell", "dynamic_rnn", "LSTM", "LSTM-packed"]


def _entry_point_calls(dtype, device, then=None, state_then=None):
    """name -> a call of that entry point with peepholes and a projection, its inputs, weights and
    state made in ``dtype`` (then converted to ``then``, and the cell state to ``state_then``, when
    given); each returns its tensors."""
    made = cell_tensors(B, D, N, P, True, dtype, device, seed=5)
    t = {k: None if v is None else v.to(then or dtype) for k, v in made.items()}
    t["c"] = made["c"].to(state_then or then or dtype)
    x, c, h, kernel, bias, *rest = cell_args(t)
    xs = torch.stack([x, 0.5 * x, -x])
    torch.manual_seed(5)
    cell = LSTMCell(N, use_peepholes=True, num_proj=P, input_size=D, dtype=dtype, device=device).to(then or dtype)
    module = LSTM(D, N, proj_size=P, use_peepholes=True, dtype=dtype, device=device).to(then or dtype)
    packed = pack_padded_sequence(xs, torch.tensor([3, 2, 2, 1]))
    return {
        "lstm_cell": lambda: lstm_cell(x, c, h, kernel, bias, *rest),
        "lstm_sequence": lambda: lstm_sequence(xs, h, c, kernel[:D], kernel[D:], bias, *rest),
        "LSTMCell": lambda: (lambda out, state: (out, *state))(*cell(x, LSTMStateTuple(c, h))),
        "dynamic_rnn": lambda: (lambda out, state: (out, *state))(*dynamic_rnn(cell, xs, time_major=True)),
        "LSTM": lambda: (lambda out, state: (out, *state))(*module(xs)),
        "LSTM-packed": lambda: (lambda out, state: (out.data, *state))(*module(packed)),
    }


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_autocast_leaves_float64_as_it_is(name, device):
    """torch.autocast casts no float64 tensor: a float64 call under it computes as without it (it
    raised: the inputs were cast, the cell state not)."""
    call = _entry_point_calls(torch.float64, device)[name]
    want = call()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = call()
    assert [t.dtype for t in got] == [torch.float64] * len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"result {i}"


@pytest.mark.parametrize("name", ["lstm_cell", "lstm_sequence"])
def test_autocast_takes_a_half_precision_state_in_float32(name, device):
    """A cell state in half precision is taken in float32 (without loss) under autocast, whose dtype
    may differ from the inputs' (it raised: a float16 state with inputs autocast to bfloat16): the
    numbers of the same call given the state in float32."""
    calls = (_entry_point_calls(torch.float16, device)[name],
             _entry_point_calls(torch.float16, device, state_then=torch.float32)[name])
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got, want = (call() for call in calls)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"result {i}"


T_TF = 4


def test_dynamic_rnn_takes_tfs_signature():
    """TF1's calls, positional in TF's order (dtype before time_major) or with TF's keywords, compute
    what the call without them computes; the cell's call takes TF's scope."""
    torch.manual_seed(0)
    cell = LSTMCell(N, num_proj=P, use_peepholes=True, input_size=D)
    x, lengths = torch.randn(T_TF, 3, D), torch.tensor([4, 1, 3])
    want, want_state = dynamic_rnn(cell, x, sequence_length=lengths, time_major=True)
    for got, state in (dynamic_rnn(cell, x, lengths, None, torch.float32, 32, True, True, "rnn"),
                       dynamic_rnn(cell, x, sequence_length=lengths, dtype=np.float32, parallel_iterations=None,
                                   swap_memory=False, time_major=True, scope=None),
                       dynamic_rnn(cell, x, lengths, dtype="float32", time_major=True),
                       dynamic_rnn(cell, x, lengths, swap_memory=np.bool_(False), time_major=np.bool_(True)),
                       dynamic_rnn(cell, x, lengths, swap_memory=0, time_major=1)):
        assert torch.equal(got, want)
        assert torch.equal(state.c, want_state.c) and torch.equal(state.h, want_state.h)
    step, _ = cell(x[0], None, "rnn/lstm_cell")
    assert torch.equal(step, cell(x[0])[0])


@pytest.mark.parametrize("built", [True, False], ids=["built", "lazy"])
def test_a_saved_cell_loads_with_weights_only_allowing_just_its_class(built, tmp_path):
    """torch.load(weights_only=True) of a whole saved cell needs only LSTMCell allowed (as nn.LSTMCell
    needs only itself): the cell holds no bound method. A lazy cell loads lazy, and builds from a
    state dict as any."""
    cell = LSTMCell(5, use_peepholes=True, num_proj=3, input_size=4 if built else None)
    torch.save(cell, tmp_path / "cell.pt")
    with torch.serialization.safe_globals([LSTMCell]):
        loaded = torch.load(tmp_path / "cell.pt", weights_only=True)
    assert loaded.input_size == cell.input_size
    if not built:
        cell(torch.randn(2, 4), cell.zero_state(2, torch.float32))
        loaded.load_state_dict(cell.state_dict())
    for name, value in cell.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_cells_saved_whole_by_0_1_0_still_load():
    """A cell pickled whole by triton_lstm 0.1.0 holds its load_state_dict pre-hook as a bound method
    (``LSTMCell(5, use_peepholes=True, num_proj=3)``, built for input 4 and lazy): both load, and the
    lazy one still builds from a state dict."""
    from pathlib import Path
    saved = torch.load(Path(__file__).parent / "fixtures" / "cells_saved_whole_0_1_0.pt", weights_only=False)
    built, lazy = saved["built"], saved["lazy"]
    assert built.input_size == 4 and lazy.input_size is None
    lazy.load_state_dict(built.state_dict())
    x = torch.randn(2, 4)
    for a, b in zip(built(x, built.zero_state(2, torch.float32))[0], lazy(x, lazy.zero_state(2, torch.float32))[0]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("peepholes", ["none", "trained", "w_o_diag frozen"])
@pytest.mark.parametrize("path", ["kernels", "reference"])
def test_new_state_takes_in_place_ops_before_the_backward(path, peepholes, device, monkeypatch):
    """A step's new h and c take in-place ops before the backward (a state reset: c.mul_(keep)), as
    nn.LSTMCell's do, with gradients as if computed out of place: the kernels keep neither for the
    backward, unless w_o_diag's gradient is wanted (then, as in the reference's graph, the backward
    needs c and autograd says it was modified)."""
    if path == "reference":
        monkeypatch.setattr(triton_lstm.functional, "kernels_run_on", lambda *_: False)
    t = cell_tensors(3, 5, 6, 4, peepholes != "none", torch.float32, device)
    names = [k for k, v in t.items() if v is not None and not (k == "w_o_diag" and peepholes == "w_o_diag frozen")]
    for k in names:
        t[k].requires_grad_()
    keep = torch.tensor([[1.0], [0.0], [1.0]], device=device)
    h, c = lstm_cell(*cell_args(t), cell_clip=0.8)
    h.mul_(keep)
    c.mul_(keep)
    loss = (h * h).sum() + (c * c).sum()
    if peepholes == "trained":
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(loss, [t[k] for k in names])
        return
    got = torch.autograd.grad(loss, [t[k] for k in names])
    up, (h_ref, c_ref) = reference_fp32(t, cell_clip=0.8)
    want = torch.autograd.grad(((h_ref * keep) ** 2).sum() + ((c_ref * keep) ** 2).sum(), [up[k] for k in names])
    for name, a, b in zip(names, got, want):
        assert_close(f"d{name}", a, b, TOLERANCES[torch.float32]["grad"])
