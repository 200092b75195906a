"""Weight migration: TF variables -> LSTMCell -> torch.nn.LSTM -> TF variables -> LSTMCell."""
import importlib.util

import numpy as np
import pytest
import torch

from triton_lstm import LSTM, LSTMCell, dynamic_rnn
from triton_lstm.convert import cell_to_torch_lstm, read_tf_checkpoint, torch_lstm_to_tf

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


def test_missing_layer_is_named():
    with pytest.raises(ValueError, match="state_dict: no 'weight_ih_l3'"):
        torch_lstm_to_tf(torch.nn.LSTM(3, 4).state_dict(), suffix="_l3")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_read_checkpoint_without_tensorflow():
    with pytest.raises(ImportError, match="needs TensorFlow"):
        read_tf_checkpoint("model.ckpt")
