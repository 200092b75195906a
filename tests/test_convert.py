"""Weight migration: TF variables -> LSTMCell -> torch.nn.LSTM -> TF variables -> LSTMCell; Keras
layouts; every converter's shape checks."""
import os
import re
import sys

import numpy as np
import pytest
import torch

import triton_lstm
from triton_lstm import LSTM, LSTMCell, dynamic_rnn
from triton_lstm.convert import (cell_to_torch_lstm, keras_to_torch_lstm, read_tf_checkpoint, tf_to_torch_lstm,
                                 torch_lstm_to_keras, torch_lstm_to_tf)

TOL = dict(atol=2e-5, rtol=1e-4)


def tf_variables(D, N, P, seed=0, scope="model/rnn/lstm_cell"):
    rng = np.random.default_rng(seed)
    out = P or N
    v = {f"{scope}/kernel": rng.normal(0, (D + out) ** -0.5, (D + out, 4 * N)).astype(np.float32),
         f"{scope}/bias": rng.normal(0, 0.1, 4 * N).astype(np.float32)}
    if P:
        v[f"{scope}/projection/kernel"] = rng.normal(0, N ** -0.5, (N, P)).astype(np.float32)
    return v


@pytest.mark.parametrize("P", [None, 4])
def test_round_trip_tf_ours_torch_ours(P):
    D, N, T, B = 6, 9, 5, 3
    variables = tf_variables(D, N, P)
    cell = LSTMCell(N, num_proj=P, forget_bias=1.0)
    cell.load_tf_weights(variables)
    lstm = cell_to_torch_lstm(cell)
    x = torch.randn(B, T, D)
    ours, state = dynamic_rnn(cell, x)
    theirs, (h_n, c_n) = lstm(x.transpose(0, 1))
    torch.testing.assert_close(ours, theirs.transpose(0, 1), **TOL)
    torch.testing.assert_close(state.h, h_n[0], **TOL)
    torch.testing.assert_close(state.c, c_n[0], **TOL)
    back = torch_lstm_to_tf(lstm.state_dict(), forget_bias=1.0)
    for name, value in back.items():
        np.testing.assert_allclose(value, variables["model/" + name], atol=1e-6)
    cell2 = LSTMCell(N, num_proj=P, forget_bias=1.0)
    cell2.load_tf_weights(back)
    torch.testing.assert_close(dynamic_rnn(cell2, x)[0], ours, **TOL)


@pytest.mark.parametrize("dtype, array_dtype", [(torch.float64, np.float64), (torch.float16, np.float16),
                                                 (torch.bfloat16, np.float32)])
def test_converters_keep_the_weights_dtype(dtype, array_dtype):
    """TF and Keras layouts of a float64 (or float16) module come back in its dtype and round-trip
    exactly; numpy has no bfloat16, whose values float32 holds. The two biases' sum and the folded
    forget bias are computed in float32 and rounded once, to the weights' dtype (large biases, where
    a half-precision sum would round twice)."""
    torch.manual_seed(0)
    lstm = LSTM(5, 8, proj_size=3, use_peepholes=True, dtype=dtype)
    with torch.no_grad():
        lstm.bias_ih_l0.uniform_(-40, 40)
        lstm.bias_hh_l0.uniform_(-40, 40)
    sd = lstm.state_dict()
    tf = torch_lstm_to_tf(sd, forget_bias=1.0, scope="")
    assert all(v.dtype == array_dtype for v in tf.values())
    back = tf_to_torch_lstm(tf["kernel"], tf["bias"], tf["projection/kernel"], forget_bias=0.0)
    for name in ("weight_ih_l0", "weight_hh_l0", "weight_hr_l0"):
        assert torch.equal(back[name].to(dtype), sd[name]), name
    f = slice(8, 16)   # torch's f block
    want = sd["bias_ih_l0"].double() + sd["bias_hh_l0"].double()
    want[f] -= 1.0
    assert torch.equal(back["bias_ih_l0"], want.to(back["bias_ih_l0"].dtype))
    before = lstm.weight_hr_l0.detach().clone()
    tf["projection/kernel"] += 1
    assert torch.equal(lstm.weight_hr_l0, before), "the arrays are copies"
    plain = LSTM(5, 8, dtype=dtype).state_dict()
    keras = torch_lstm_to_keras(plain)
    assert all(v.dtype == array_dtype for v in keras.values())
    again = keras_to_torch_lstm(keras["kernel"], keras["recurrent_kernel"], keras["bias"])
    assert torch.equal(again["weight_ih_l0"].to(dtype), plain["weight_ih_l0"])
    assert torch.equal(again["weight_hh_l0"].to(dtype), plain["weight_hh_l0"])


def test_our_lstm_exports_peepholes_per_layer():
    lstm = LSTM(5, 8, num_layers=2, bidirectional=True, use_peepholes=True, proj_size=3)
    tf = torch_lstm_to_tf(lstm.state_dict(), suffix="_l1_reverse", scope="")
    assert set(tf) == {"kernel", "bias", "projection/kernel", "w_f_diag", "w_i_diag", "w_o_diag"}
    assert tf["kernel"].shape == (2 * 3 + 3, 4 * 8)
    np.testing.assert_array_equal(tf["w_i_diag"], lstm.w_i_diag_l1_reverse.detach().numpy())


@pytest.mark.parametrize("kwargs, named", [
    (dict(use_peepholes=True), "use_peepholes"), (dict(cell_clip=1.0), "cell_clip"),
    (dict(num_proj=3, proj_clip=1.0), "proj_clip"), (dict(activation="relu"), "activation"),
    (dict(num_proj=12), "num_proj >= num_units")])
def test_to_torch_refuses_what_torch_cannot_express(kwargs, named):
    cell = LSTMCell(8, input_size=4, **kwargs)
    with pytest.raises(ValueError, match=f"cell: torch.nn.LSTM cannot express .*{named}"):
        cell_to_torch_lstm(cell)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_torch_refusal_names_a_call_that_builds_the_module(dtype):
    """The refusal's advice, followed as written, builds a triton_lstm.LSTM computing the cell, in
    the cell's dtype."""
    torch.manual_seed(0)
    cell = LSTMCell(8, input_size=5, num_proj=4, use_peepholes=True, cell_clip=2.0, proj_clip=1.5,
                    forget_bias=1.0, activation="relu", dtype=dtype)
    with pytest.raises(ValueError, match=r"triton_lstm.porting.tf_to_module\(.*\) builds one") as info:
        cell_to_torch_lstm(cell)
    call = re.search(r"(triton_lstm\.porting\.tf_to_module\(.*\)) builds one", str(info.value)).group(1)
    module = eval(call, {"triton_lstm": triton_lstm, "cell": cell})
    assert isinstance(module, LSTM)
    x = torch.randn(3, 6, 5, dtype=dtype) * 3
    torch.testing.assert_close(module(x)[0], dynamic_rnn(cell, x)[0], **TOL)


def test_missing_layer_is_named():
    with pytest.raises(ValueError, match="state_dict: no 'weight_ih_l3'"):
        torch_lstm_to_tf(torch.nn.LSTM(3, 4).state_dict(), suffix="_l3")


def test_read_checkpoint_does_not_import_tensorflow(monkeypatch):
    """TensorFlow, even when installed, is neither needed nor used."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any `import tensorflow` now raises ImportError
    variables = read_tf_checkpoint(os.path.join(os.path.dirname(__file__), "fixtures", "tf1_bidi"))
    assert variables["bidirectional_rnn/fw/lstm_cell/kernel"].shape == (4 + 5, 20)


@pytest.mark.parametrize("kernel, bias, projection, match", [
    ((8, 21), (21,), None, r"kernel: dimension 1 must be 4 \* num_units .* got shape \(8, 21\)"),
    ((9, 20), (20,), (4, 3), r"projection: expected shape \[5, \?\] \(num_units 5, num_proj\), got \(4, 3\)"),
    ((5, 20), (20,), None, r"kernel: expected 5 rows = input_size \+ output size 5 with input_size >= 1"),
    ((9, 20), (16,), None, r"bias: expected shape \(20,\) \(4 \* num_units 5\), got \(16,\)"),
    ((20,), (20,), None, r"kernel: expected shape \[\?, \?\] .* got \(20,\)"),
])
def test_tf_to_torch_checks_every_shape(kernel, bias, projection, match):
    args = [np.zeros(kernel, np.float32), np.zeros(bias, np.float32)]
    args.append(None if projection is None else np.zeros(projection, np.float32))
    with pytest.raises(ValueError, match=match):
        tf_to_torch_lstm(*args)


@pytest.mark.parametrize("state, match", [
    ({"weight_ih_l0": torch.zeros(16, 3)}, r"has 'weight_ih_l0' but no 'weight_hh_l0'"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 1)},
     r"weight_hh_l0'\]: expected shape \[16, 4\]"),
    ({"weight_ih_l0": torch.zeros(15, 3), "weight_hh_l0": torch.zeros(15, 4)}, r"dimension 0 must be 4 \* num_units"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 2), "weight_hr_l0": torch.zeros(2, 5)},
     r"weight_hr_l0'\]: expected shape \[\?, 4\]"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 4), "bias_ih_l0": torch.zeros(16)},
     r"bias_ih_l0 and bias_hh_l0 come together"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 4), "w_f_diag_l0": torch.zeros(3)},
     r"w_f_diag_l0'\]: expected shape \(4,\)"),
    ({"weight_ih_l0": np.array(["a"]), "weight_hh_l0": torch.zeros(16, 4)}, r"expected a numeric array"),
])
def test_torch_to_tf_checks_every_shape(state, match):
    with pytest.raises((ValueError, TypeError), match=match):
        torch_lstm_to_tf(state)


def test_bad_containers_are_named():
    with pytest.raises(TypeError, match="state_dict: expected a mapping"):
        torch_lstm_to_tf([1, 2])
    with pytest.raises(TypeError, match="cell: expected a triton_lstm.LSTMCell"):
        cell_to_torch_lstm(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match=r"weights\['rnn/lstm_cell/kernel'\]: expected shape \(11, 32\)"):
        LSTMCell(8, input_size=3).load_tf_weights({"rnn/lstm_cell/kernel": np.zeros((11, 28), np.float32),
                                                   "rnn/lstm_cell/bias": np.zeros(32, np.float32)})


def keras_weights(D, N, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    w = {"kernel": rng.normal(0, 0.4, (D, 4 * N)).astype(np.float32),
         "recurrent_kernel": rng.normal(0, 0.4, (N, 4 * N)).astype(np.float32)}
    if bias:
        w["bias"] = rng.normal(0, 0.3, 4 * N).astype(np.float32)
    return w


def keras_lstm_by_definition(w, x):
    """Keras' LSTM step by step, from its documented equations (gates i, f, c, o; no forget bias)."""
    kernel, recurrent = torch.as_tensor(w["kernel"]), torch.as_tensor(w["recurrent_kernel"])
    bias = torch.as_tensor(w.get("bias", np.zeros(kernel.shape[1], np.float32)))
    n = recurrent.shape[0]
    h, c, outs = torch.zeros(x.shape[0], n), torch.zeros(x.shape[0], n), []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = z[:, :n].sigmoid(), z[:, n:2 * n].sigmoid(), z[:, 2 * n:3 * n].tanh(), z[:, 3 * n:].sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        outs.append(h)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("bias", [True, False])
def test_keras_weights_into_lstm_and_cell_and_back(bias):
    D, N = 3, 5
    w = keras_weights(D, N, bias=bias)
    x = torch.randn(2, 4, D)
    want = keras_lstm_by_definition(w, x)
    lstm = LSTM(D, N, bias=bias, batch_first=True)
    lstm.load_state_dict(keras_to_torch_lstm(w["kernel"], w["recurrent_kernel"], w.get("bias")))
    torch.testing.assert_close(lstm(x)[0], want, **TOL)
    cell = LSTMCell(N, forget_bias=1.0)
    cell.load_tf_weights({f"lstm/{k}": v for k, v in w.items()})
    torch.testing.assert_close(dynamic_rnn(cell, x)[0], want, **TOL)
    back = torch_lstm_to_keras(lstm.state_dict())
    for key in w:
        np.testing.assert_array_equal(back[key], w[key])


def test_keras_layout_errors_are_named():
    w = keras_weights(3, 5)
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \[5, 20\]"):
        keras_to_torch_lstm(w["kernel"], w["recurrent_kernel"][:4])
    with pytest.raises(ValueError, match=r"Keras layout \('lstm/recurrent_kernel'\) without its 'lstm/kernel'"):
        LSTMCell(5).load_tf_weights({"lstm/recurrent_kernel": w["recurrent_kernel"], "lstm/bias": w["bias"]})
    with pytest.raises(ValueError, match=r"Keras' LSTM cannot express \['w_f_diag', 'w_i_diag', 'w_o_diag'\]"):
        torch_lstm_to_keras(LSTM(3, 4, use_peepholes=True).state_dict())
