"""Bad arguments: every error is a ValueError or TypeError that names the argument and, where shapes
are involved, shows them."""
import math
import re

import numpy as np

import pytest
import torch

from helpers import cell_args, cell_tensors
import triton_lstm.launch
from triton_lstm import LSTM, DTypeError, LSTMCell, LSTMStateTuple, dynamic_rnn, lstm_cell, lstm_sequence
from triton_lstm.porting import KerasRNN
from triton_lstm.sequence import check_lengths

B, D, N, P = 3, 7, 5, 4


def _t(num_proj=P, peepholes=True, **replace):
    t = cell_tensors(B, D, N, num_proj, peepholes, torch.float32, "cpu", seed=0)
    t.update(replace)
    return t


def _call(t, **options):
    return lstm_cell(*cell_args(t), **options)


def _shape(*dims):
    return re.escape(str(tuple(dims)))


# -- shapes -----------------------------------------------------------------------------------------

def test_x_wrong_rank():
    with pytest.raises(ValueError, match=rf"^x: expected a rank-2 tensor, got shape {_shape(B, 2, D)}"):
        _call(_t(x=torch.randn(B, 2, D)))
    cell = LSTMCell(N, input_size=D)
    with pytest.raises(ValueError, match=rf"^inputs: expected a rank-2 tensor, got shape {_shape(D)}"):
        cell(torch.randn(D))


@pytest.mark.parametrize("which,width", [("c", N), ("h", P)])
def test_batch_mismatch_between_x_and_state(which, width):
    with pytest.raises(ValueError, match=rf"^{which}: expected shape {_shape(B, width)} \(batch {B} from x.*"
                                         rf"got {_shape(B + 1, width)}"):
        _call(_t(**{which: torch.zeros(B + 1, width)}))


def test_x_wrong_feature_size_functional():
    # The kernel fixes D + P rows, so an x of the wrong width shows up as the kernel not fitting it.
    with pytest.raises(ValueError, match=rf"^kernel: expected shape {_shape(D + 1 + P, 4 * N)} "
                                         rf"\(input_size {D + 1} .*got {_shape(D + P, 4 * N)}"):
        _call(_t(x=torch.randn(B, D + 1)))


def test_weights_sized_by_the_projection_say_so():
    """A projection one column too wide makes the kernel (lstm_cell) or w_h (lstm_sequence) the wrong
    height: the error says the output size is the projection's, so either can be the one at fault."""
    t = _t(projection=torch.randn(N, P + 1))
    with pytest.raises(ValueError, match=rf"^kernel: expected shape {_shape(D + P + 1, 4 * N)} \(input_size {D} "
                                         rf"\+ output size {P + 1}, the projection's columns; 4 \* num_units {N}\), "
                                         rf"got {_shape(D + P, 4 * N)}$"):
        _call(t)
    with pytest.raises(ValueError, match=rf"^kernel: expected shape {_shape(D + N, 4 * N)} \(input_size {D} \+ "
                                         rf"output size {N}, num_units: no projection; "):
        _call(_t(num_proj=None, kernel=torch.randn(D + N + 1, 4 * N)))
    x, h0, c0 = torch.randn(2, B, D), torch.randn(B, P + 1), torch.randn(B, N)
    with pytest.raises(ValueError, match=rf"^w_h: expected shape {_shape(P + 1, 4 * N)} \(output size {P + 1}, "
                                         rf"the projection's columns; 4 \* num_units {N}\), got {_shape(P, 4 * N)}$"):
        lstm_sequence(x, h0, c0, t["kernel"][:D], t["kernel"][D:], t["bias"], projection=t["projection"])


def test_x_wrong_feature_size_module():
    cell = LSTMCell(N, num_proj=P, input_size=D)
    with pytest.raises(ValueError, match=rf"^inputs: expected last dimension {D} \(the cell's input_size\), "
                                         rf"got shape {_shape(B, D + 2)}"):
        cell(torch.randn(B, D + 2))


@pytest.mark.parametrize("which,width", [("c", N), ("h", P)])
def test_state_wrong_width(which, width):
    with pytest.raises(ValueError, match=rf"^{which}: expected shape {_shape(B, width)} .*got {_shape(B, width + 1)}"):
        _call(_t(**{which: torch.zeros(B, width + 1)}))


@pytest.mark.parametrize("which,width", [("c", N), ("h", P)])
def test_cell_and_dynamic_rnn_name_their_own_arguments(which, width):
    """The cell's call and dynamic_rnn name what their callers passed (``state``, ``initial_state``,
    ``inputs``), not the functional ops' arguments they run on."""
    cell = LSTMCell(N, num_proj=P, input_size=D)
    state = {"c": torch.zeros(B, N), "h": torch.zeros(B, P)}
    state[which] = torch.zeros(B, width + 1)
    with pytest.raises(ValueError, match=rf"^state\.{which}: expected shape {_shape(B, width)} \(batch {B} from "
                                         rf"inputs, .*got {_shape(B, width + 1)}"):
        cell(torch.randn(B, D), LSTMStateTuple(state["c"], state["h"]))
    with pytest.raises(ValueError, match=rf"^initial_state\.{which}: expected shape {_shape(B, width)} \(batch {B} "
                                         rf"from inputs, .*got {_shape(B, width + 1)}"):
        dynamic_rnn(cell, torch.randn(B, 2, D), initial_state=LSTMStateTuple(state["c"], state["h"]))
    state[which] = torch.zeros(B, width, dtype=torch.float64)
    with pytest.raises(TypeError, match=rf"^initial_state\.{which}: dtype torch.float64.* inputs' "
                                        rf"(dtype )?torch.float32"):
        dynamic_rnn(cell, torch.randn(B, 2, D), initial_state=LSTMStateTuple(state["c"], state["h"]))
    with pytest.raises(TypeError, match=r"^initial_state: expected an LSTMStateTuple \(c, h\) since "
                                        r"state_is_tuple=True"):
        dynamic_rnn(cell, torch.randn(B, 2, D), initial_state=torch.zeros(B, N + P))
    concatenated = LSTMCell(N, num_proj=P, input_size=D, state_is_tuple=False)
    with pytest.raises(TypeError, match=r"^initial_state: dtype torch.float16 differs from inputs' torch.float32"):
        dynamic_rnn(concatenated, torch.randn(B, 2, D), initial_state=torch.zeros(B, N + P, dtype=torch.float16))


def test_a_state_in_h_c_order_is_named_so():
    """(h, c) passed for TF's (c, h), with num_proj != num_units: the error says the order is swapped."""
    cell = LSTMCell(N, num_proj=P, input_size=D)
    with pytest.raises(ValueError, match=rf"^state: c has shape {_shape(B, P)} and h {_shape(B, N)}, which is "
                                         rf"\(h, c\): the state is LSTMStateTuple\(c, h\)"):
        cell(torch.randn(B, D), (torch.zeros(B, P), torch.zeros(B, N)))
    with pytest.raises(ValueError, match=r"^initial_state: c has shape .* which is \(h, c\)"):
        dynamic_rnn(cell, torch.randn(B, 2, D), initial_state=(torch.zeros(B, P), torch.zeros(B, N)))


@pytest.mark.parametrize("time_major", [False, True])
def test_dynamic_rnn_names_the_layout_when_a_batch_is_the_time_dimension(time_major):
    """An initial state or sequence_length whose batch is the inputs' time dimension: inputs laid out
    the other way, which the error says, naming the argument and time_major."""
    cell = LSTMCell(N, num_proj=P, input_size=D)
    T = 6
    x = torch.randn(T, B, D) if time_major else torch.randn(B, T, D)
    flip = "time_major=False" if time_major else "time_major=True"
    with pytest.raises(ValueError, match=rf"^sequence_length: batch {T}, which is the inputs' time dimension.*"
                                         rf"pass {flip}$"):
        dynamic_rnn(cell, x, sequence_length=[1] * T, time_major=time_major)
    with pytest.raises(ValueError, match=rf"^initial_state\.c: batch {T}, .*pass {flip}$"):
        dynamic_rnn(cell, x, initial_state=cell.zero_state(T), time_major=time_major)
    concatenated = LSTMCell(N, num_proj=P, input_size=D, state_is_tuple=False)
    with pytest.raises(ValueError, match=rf"^initial_state: batch {T}, .*pass {flip}$"):
        dynamic_rnn(concatenated, x, initial_state=concatenated.zero_state(T), time_major=time_major)
    # The lengths fit this layout: only the state is wrong, and its own shape error says so.
    with pytest.raises(ValueError, match=rf"^initial_state\.c: expected shape {_shape(B, N)}"):
        dynamic_rnn(cell, x, sequence_length=[1] * B, initial_state=cell.zero_state(T), time_major=time_major)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype=torch.float64), r"^dtype: torch.float64 differs from the inputs' dtype torch.float32"),
    (dict(dtype="int8"), r"^dtype: expected None, a floating dtype"),
    (dict(parallel_iterations=0), r"^parallel_iterations: expected an int >= 1 or None, got 0"),
    (dict(swap_memory="yes"), r"^swap_memory: expected a bool, got 'yes'"),
    (dict(scope=1), r"^scope: expected None or a variable scope's name"),
    (dict(time_major=torch.float32), r"^time_major: expected a bool, got torch.float32"),
    (dict(time_major=2), r"^time_major: expected a bool, got 2")])
def test_dynamic_rnn_checks_tfs_arguments(kwargs, match):
    """TF's arguments dynamic_rnn takes: a dtype that is not the inputs' (TF computes in it) and bad
    values of the settings without effect here are errors naming them; TF's positional order puts
    dtype before time_major, so a dtype passed there is one too."""
    cell = LSTMCell(N, input_size=D)
    with pytest.raises((TypeError, ValueError), match=match):
        dynamic_rnn(cell, torch.randn(B, 2, D), **kwargs)


def test_dynamic_rnn_says_where_time_major_went():
    """time_major passed fifth, where it was before dynamic_rnn took TF's signature: the error names
    dtype, which TF puts there, and says to pass time_major by name."""
    cell = LSTMCell(N, input_size=D)
    with pytest.raises(TypeError, match=r"^dtype: expected None or the inputs' dtype, got True: the fifth argument "
                                        r"is dtype, as in TF \(time_major is the eighth\); pass time_major=True$"):
        dynamic_rnn(cell, torch.randn(2, B, D), None, None, True)


def test_cell_call_checks_scope():
    cell = LSTMCell(N, input_size=D)
    with pytest.raises(TypeError, match=r"^scope: expected None or a variable scope's name \(str\), got int"):
        cell(torch.randn(B, D), None, 3)


def test_load_tf_weights_scope_that_matches_nothing():
    src = LSTMCell(N, input_size=D)
    with pytest.raises(ValueError, match=r"^scope: no variable of weights is under 'rnn/lstm_cell_1/'; got names "
                                         r"\['rnn/lstm_cell/bias', 'rnn/lstm_cell/kernel'\]"):
        LSTMCell(N, input_size=D).load_tf_weights(src.tf_weights(), scope="rnn/lstm_cell_1")


def test_concatenated_state_wrong_width():
    cell = LSTMCell(N, num_proj=P, input_size=D, state_is_tuple=False)
    with pytest.raises(ValueError, match=rf"^state: expected shape {_shape(B, N + P)} .*state_is_tuple=False, "
                                         rf"got {_shape(B, N + P - 1)}"):
        cell(torch.randn(B, D), torch.zeros(B, N + P - 1))


def test_concatenated_cell_given_a_tuple_state():
    cell = LSTMCell(N, input_size=D, state_is_tuple=False)
    with pytest.raises(TypeError, match=r"^state: expected one tensor \[batch, num_units \+ output size\] since "
                                        r"state_is_tuple=False, got LSTMStateTuple$"):
        cell(torch.randn(B, D), LSTMStateTuple(torch.zeros(B, N), torch.zeros(B, N)))


def test_tuple_cell_given_a_tensor_state():
    cell = LSTMCell(N, input_size=D)
    with pytest.raises(TypeError, match="^state: expected an LSTMStateTuple"):
        cell(torch.randn(B, D), torch.zeros(B, 2 * N))


@pytest.mark.parametrize("name,bad,shown", [
    ("bias", torch.zeros(4 * N + 1), (4 * N,)),
    ("w_i_diag", torch.zeros(N + 1), (N,)),
    ("projection", torch.zeros(N + 1, P), None),
])
def test_weight_wrong_shape(name, bad, shown):
    pattern = rf"^{name}: expected shape " + (_shape(*shown) if shown else r"\[num_units=5") + \
        rf".*{_shape(*bad.shape)}"
    with pytest.raises(ValueError, match=pattern):
        _call(_t(**{name: bad}))


def test_kernel_columns_not_a_multiple_of_four():
    with pytest.raises(ValueError, match=rf"^kernel: .*4 \* num_units.*{_shape(D + N, 4 * N + 2)}"):
        _call(_t(num_proj=None, kernel=torch.zeros(D + N, 4 * N + 2)))


# -- dtypes and devices -----------------------------------------------------------------------------

def test_mixed_dtypes():
    t = _t()
    with pytest.raises(TypeError, match=r"^kernel: dtype torch.float16 differs from x's torch.float32"):
        _call({**t, "kernel": t["kernel"].half()})
    with pytest.raises(TypeError, match=r"^c: dtype torch.float16; expected float32 or x's dtype torch.float64"):
        _call({k: (v.double() if v is not None else None) for k, v in t.items()} | {"c": t["c"].half()})


def test_a_float32_bias_only_for_a_half_precision_sequence():
    """lstm_sequence takes a float32 bias for half-precision x (LSTM sums nn.LSTM's two biases so);
    any other bias dtype that is not x's is an error, and a single step takes only x's."""
    t = _t(num_proj=None)
    seq = dict(x=t["x"][None].half(), h0=t["h"].half(), c0=t["c"], w_x=t["kernel"][:D].half(),
               w_h=t["kernel"][D:].half(), bias=t["bias"])
    lstm_sequence(**seq)
    with pytest.raises(TypeError, match=r"^bias: dtype torch.float64 differs from x's torch.float16"):
        lstm_sequence(**{**seq, "bias": t["bias"].double()})
    doubled = {k: v.double() for k, v in seq.items()}
    with pytest.raises(TypeError, match=r"^bias: dtype torch.float32 differs from x's torch.float64"):
        lstm_sequence(**{**doubled, "bias": t["bias"]})
    with pytest.raises(TypeError, match=r"^bias: dtype torch.float32 differs from x's torch.float16"):
        _call({**{k: (v.half() if v is not None and k != "c" else v) for k, v in t.items()}, "bias": t["bias"]})


def test_non_float_or_non_tensor_inputs():
    with pytest.raises(TypeError, match="^x: expected a floating dtype"):
        _call(_t(x=torch.ones(B, D, dtype=torch.int64)))
    with pytest.raises(TypeError, match="^h: expected a torch.Tensor, got list"):
        _call(_t(h=[[0.0] * P] * B))
    t = _t(x=[[0.0] * D] * B)
    with pytest.raises(TypeError, match="^x: expected a torch.Tensor, got list"):
        _call(t)
    with pytest.raises(TypeError, match="^x: expected a torch.Tensor, got list"):
        lstm_sequence(t["x"], t["h"], t["c"], t["kernel"][:D], t["kernel"][D:], t["bias"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed devices need a CUDA device")
def test_mixed_devices():
    t = {k: (v.cuda() if v is not None else None) for k, v in _t().items()}
    with pytest.raises(ValueError, match=r"^kernel: on device cpu, but x on cuda"):
        _call({**t, "kernel": t["kernel"].cpu()})
    with pytest.raises(ValueError, match=r"^c: on device cpu, but x on cuda"):
        _call({**t, "c": t["c"].cpu()})


def test_bad_dtype_string():
    with pytest.raises(TypeError, match=r"^dtype: expected None, a floating dtype .*got 'float8'"):
        LSTMCell(N, dtype="float8")
    with pytest.raises(TypeError, match=r"^dtype: expected None, a floating dtype .*got torch.int32"):
        LSTMCell(N, dtype=torch.int32, input_size=D)
    cell = LSTMCell(N)
    with pytest.raises(TypeError, match=r"^dtype: .*got 'fp32'"):
        cell.zero_state(2, "fp32")
    with pytest.raises(TypeError, match=r"^dtype: .*got <class 'numpy.int32'>"):
        cell.zero_state(2, np.int32)


# -- options ----------------------------------------------------------------------------------------

def test_num_proj_zero():
    with pytest.raises(ValueError, match="^num_proj: expected an int >= 1 or None, got 0"):
        LSTMCell(N, num_proj=0)


def test_num_units_not_positive():
    with pytest.raises(ValueError, match="^num_units: expected an int >= 1, got 0"):
        LSTMCell(0)


@pytest.mark.parametrize("value", [5.0, np.float64(5.0), "5", torch.tensor(5.0), True])
def test_num_units_not_an_int(value):
    with pytest.raises(TypeError, match=r"^num_units: expected an int >= 1, got "):
        LSTMCell(value)


def test_clip_beyond_float32():
    """The kernels take clip bounds as float32: a finite bound beyond its range is refused."""
    for make in (lambda: LSTMCell(N, cell_clip=1e39), lambda: _call(_t(), cell_clip=1e39)):
        with pytest.raises(ValueError, match=r"^cell_clip: expected a clip bound <= 3.40282.*e\+38 "
                                             r"\(float32's largest\) or inf, got 1e\+39"):
            make()


@pytest.mark.parametrize("name", ["cell_clip", "proj_clip"])
@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_bad_clip(name, value):
    pattern = rf"^{name}: expected a clip bound >= 0 \(or None\), got {value}"
    with pytest.raises(ValueError, match=pattern):
        LSTMCell(N, num_proj=P, **{name: value})
    with pytest.raises(ValueError, match=pattern):
        _call(_t(), **{name: value})


def test_clip_not_a_number():
    with pytest.raises(TypeError, match="^cell_clip: expected a number or None, got str"):
        LSTMCell(N, cell_clip="1.0")


def test_proj_clip_without_num_proj():
    """TF's cell takes a proj_clip without num_proj and ignores it: so does LSTMCell, with a warning.
    The functional API, with the weights given, rejects it."""
    with pytest.warns(UserWarning, match="^proj_clip has no effect without num_proj"):
        cell = LSTMCell(N, proj_clip=0.01, input_size=D)
    plain = LSTMCell(N, input_size=D)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(B, D)
    assert torch.equal(cell(x)[0], plain(x)[0]) and cell(x)[0].abs().max() > 0.01
    with pytest.raises(ValueError, match="^proj_clip: only meaningful with a projection"):
        _call(_t(num_proj=None), proj_clip=1.0)


def test_cell_inputs_in_another_dtype_than_its_weights():
    cell = LSTMCell(N, input_size=D)
    with pytest.raises(DTypeError, match=r"^inputs: dtype torch.float64 differs from the cell's weights "
                                        r"\(torch.float32\); convert the inputs or the cell"):
        cell(torch.randn(B, D, dtype=torch.float64))
    # autocast leaves float64 inputs as they are, and would cast the weights
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(DTypeError, match=r"^inputs: dtype torch.float64"):
        cell(torch.randn(B, D, dtype=torch.float64))


def test_bad_forget_bias():
    with pytest.raises(ValueError, match="^forget_bias: expected a finite number, got nan"):
        LSTMCell(N, forget_bias=math.nan)
    with pytest.raises(ValueError, match="^forget_bias: expected a finite number, got inf"):
        _call(_t(), forget_bias=math.inf)


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="^activation: unknown name 'swishy'; known names are"):
        LSTMCell(N, activation="swishy")
    with pytest.raises(ValueError, match="^activation: unknown name 'swishy'"):
        _call(_t(), activation="swishy")


def test_non_callable_activation():
    with pytest.raises(TypeError, match="^activation: expected None, a name or a callable, got int"):
        LSTMCell(N, activation=3)
    with pytest.raises(TypeError, match="^activation: expected None, a name or a callable, got int"):
        _call(_t(), activation=3)


def test_only_some_peepholes():
    t = _t()
    with pytest.raises(ValueError, match="^w_f_diag, w_i_diag, w_o_diag: pass all three peephole vectors or none"):
        _call({**t, "w_i_diag": None})


def test_unknown_keyword_argument():
    with pytest.raises(TypeError, match=r"^LSTMCell: unexpected keyword arguments \['bogus', 'unitz'\]"):
        LSTMCell(N, bogus=1, unitz=2)


def test_activation_class_instead_of_an_instance():
    with pytest.raises(TypeError, match=r"^activation: got the class ReLU; pass an instance \(ReLU\(\)\) or a "
                                        r"function"):
        LSTMCell(N, activation=torch.nn.ReLU)


@pytest.mark.filterwarnings("ignore:.* has no kernel implementation")
@pytest.mark.parametrize("arg", ["activation", "recurrent_activation"])
@pytest.mark.parametrize("fn, got", [(lambda v: torch.tanh(v).mean(), "shape ()"),
                                     (lambda v: torch.sigmoid(v)[:1], f"shape (1, {N})"),
                                     (lambda v: 0.5, "float")])
def test_activation_that_is_not_elementwise(arg, fn, got):
    """Its result would be broadcast over the gates; a step and a sequence both refuse it."""
    message = rf"^{arg}: must be elementwise, returning a tensor of its input's shape \({B}, {N}\); got {re.escape(got)}"
    with pytest.raises(ValueError, match=message):
        _call(_t(), **{arg: fn})
    with pytest.raises(ValueError, match=message):
        LSTM(D, N, **{arg: fn})(torch.randn(2, B, D))


@pytest.mark.parametrize("form", ["reversed-array", "uint32", "uint64"])
def test_sequence_lengths_in_any_integer_layout(form):
    """A reversed numpy view and the wide unsigned dtypes hold integers as well as any: taken, and
    checked for their range as any."""
    cell = LSTMCell(N, input_size=D)
    x = torch.randn(3, 4, D)
    lens = np.array([1, 4, 2])
    given = {"reversed-array": lens[::-1], "uint32": torch.tensor([2, 4, 1]).to(torch.uint32),
             "uint64": lens[::-1].astype(np.uint64)}[form]
    out, _ = dynamic_rnn(cell, x, sequence_length=given)
    want, _ = dynamic_rnn(cell, x, sequence_length=[2, 4, 1])
    assert torch.equal(out, want)
    too_long = {"reversed-array": np.array([1, 5, 2])[::-1], "uint32": torch.tensor([2, 5, 1]).to(torch.uint32),
                "uint64": np.array([2, 5, 1], dtype=np.uint64)}[form]
    with pytest.raises(ValueError, match=r"values must lie in \[0, T=4\], got min 1 and max 5"):
        dynamic_rnn(cell, x, sequence_length=too_long)


def test_sequence_lengths_past_int64_are_named_as_given():
    """uint64 lengths past int64's range are refused with their own values (compared as int64 they
    wrap to negative numbers)."""
    cell = LSTMCell(N, input_size=D)
    x = torch.randn(3, 4, D)
    huge = np.array([2, 2**64 - 1, 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"values must lie in \[0, T=4\], got min 1 and max 18446744073709551615$"):
        dynamic_rnn(cell, x, sequence_length=huge)
    with pytest.raises(ValueError, match=r"^lengths: expected 3 values in \[0, 4\], got \[2, 18446744073709551615, 1\]$"):
        KerasRNN(LSTM(D, N, batch_first=True), "a")(x, lengths=huge)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint32, torch.uint64])
def test_lengths_left_to_the_kernels_check_stay_out_of_range(dtype, monkeypatch):
    """Lengths on the GPU are not read on the host: the kernels check them in int32. A value out of
    range must stay out of range there, not wrap into it (2**32 + 3 would run 3 steps); values in
    range are passed unchanged. Stubbed: the CPU device stands for a GPU (launch.gpu_device) with
    no graph capture under way (launch.capturing)."""
    monkeypatch.setattr(triton_lstm.launch, "gpu_device", lambda device: True)
    monkeypatch.setattr(triton_lstm.launch, "capturing", lambda device: False)
    T = 5
    big = {torch.int64: [2**32 + 3, -2**32 + 1, 2**63 - 1], torch.uint32: [2**32 - 1, 2**31, 6],
           torch.uint64: [2**64 - 1, 2**63 + 3, 2**32 + 3]}[dtype]
    lengths = torch.tensor(big + [0, 2, T]).to(dtype) if dtype != torch.uint64 else \
        torch.from_numpy(np.array(big + [0, 2, T], dtype=np.uint64))
    got, checked = check_lengths(lengths, T, lengths.shape[0], torch.device("cpu"))
    assert got.dtype == torch.int32 and not checked
    assert all(not 0 <= v <= T for v in got[:3].tolist()), got
    assert got[3:].tolist() == [0, 2, T]


def test_sequence_length_that_is_no_list_of_integers():
    cell = LSTMCell(N, input_size=D)
    x = torch.randn(2, 4, D)
    keras = KerasRNN(LSTM(D, N, batch_first=True), "a")
    for bad in ("ab", [[4], 2], [True, 2], [4, np.True_], [torch.tensor(True), 3], ["a", "b"]):   # as a bool tensor
        with pytest.raises(TypeError, match=r"^lengths \(dynamic_rnn's sequence_length\): expected \[batch\] "
                                            r"integers"):
            dynamic_rnn(cell, x, sequence_length=bad)
        if len(bad) == 2:
            with pytest.raises(TypeError, match=r"^lengths: expected \[batch\] integers \(a tensor, list or array\)"):
                keras(x, lengths=bad)
    out, _ = dynamic_rnn(cell, x[:0], sequence_length=[])  # no rows: an empty list
    assert out.shape == (0, 4, N)


def test_scope_that_is_not_a_name():
    cell = LSTMCell(N, input_size=D)
    for call in (lambda: cell.load_tf_weights(cell.tf_weights(), scope=5), lambda: cell.tf_weights(scope=5)):
        with pytest.raises(TypeError, match=r"^scope: expected None or a variable scope's name \(str\), got int"):
            call()


def test_non_callable_initializer():
    with pytest.raises(TypeError, match="^initializer: expected a callable"):
        LSTMCell(N, initializer="glorot_uniform")


def test_weights_before_build():
    with pytest.raises(RuntimeError, match="^tf_weights: the cell has no weights yet"):
        LSTMCell(N).tf_weights()


def test_load_tf_weights_not_a_mapping():
    with pytest.raises(TypeError, match="^weights: expected a mapping"):
        LSTMCell(N, input_size=D).load_tf_weights([("kernel", torch.zeros(D + N, 4 * N))])
