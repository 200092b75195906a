"""Porting from files: TF1 checkpoints and Keras files written by real TensorFlow/Keras
(tests/fixtures/make_tf_fixtures.py), read without TensorFlow, against the arrays and outputs TF computed."""
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import triton_lstm
from triton_lstm import LSTM, LSTMCell, dynamic_rnn
from triton_lstm.activations import KERAS_ACTIVATIONS
from triton_lstm import sequence as sequence_module
from triton_lstm.convert import read_keras_config, read_keras_weights, read_tf_checkpoint
from triton_lstm.porting import (Bidirectional, KerasRNN, LSTMStack, keras_activation, keras_to_module,
                                 lengths_from_mask, module_to_keras, module_to_tf, tf_to_module)
from triton_lstm.tf_checkpoint import _entry, _read_table, _slice_key, crc32c, mask_crc

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOL = dict(atol=1e-5, rtol=1e-5)


def fixture(name):
    return os.path.join(FIXTURES, name)


def expected(name):
    return np.load(fixture(name + ".npz"), allow_pickle=True)


@pytest.fixture(params=["reference", "kernels"])
def path(request, monkeypatch):
    """Runs a test on the plain-PyTorch reference (the dispatch decision replaced) or on the kernels
    (under Triton's interpreter on CPU)."""
    if request.param == "reference":
        monkeypatch.setattr(sequence_module, "kernels_run_on", lambda device, dtype: False)
    return request.param


def close(got, want, what):
    torch.testing.assert_close(torch.as_tensor(got).float(), torch.as_tensor(np.asarray(want)).float(), **TOL,
                               msg=lambda m: f"{what}: {m}")


def packed_run(module, x, lengths):
    packed = pack_padded_sequence(torch.as_tensor(x), torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
    out, (h, c) = module(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h, c


# ----------------------------------------------------------------------------- the readers
def test_crc32c_against_bitwise_definition():
    def bitwise(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF

    assert crc32c(b"123456789") == 0xE3069283  # the published check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 255, 256, 1000, 4099):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == bitwise(data), n
        assert crc32c(data[n // 3:], crc32c(data[:n // 3])) == bitwise(data), n
    assert mask_crc(0) == 0xA282EAD8


@pytest.mark.parametrize("name", ["tf1_multi", "tf1_bidi", "tf1_adam", "tf1_stack_bidi", "tf1_bidi_uneven",
                                  "tf1_partitioned"])
def test_read_tf_checkpoint_returns_what_tf_reads(name):
    want = {k[len("variables/"):]: v for k, v in expected(name).items() if k.startswith("variables/")}
    got = read_tf_checkpoint(fixture(name))
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert (got[key] == value).all(), key


def test_slice_keys_are_the_keys_tf_writes():
    """The keys of large slices, whose starts and lengths take 3 and 4 bytes to encode, as TF wrote
    them (the index of a checkpoint of partitioned variables [100000, 3] in 7 row blocks and
    [1, 3000000] in 3 column blocks; its data not kept)."""
    table = dict(_read_table(fixture("tf1_partitioned_keys.index")))
    made = set()
    for name in (b"rows", b"columns"):
        slices = _entry(name.decode(), table[name], "index")["slices"]
        assert len(slices) == (7 if name == b"rows" else 3)
        made |= {_slice_key(name.decode(), extents) for extents in slices}
    assert made == {key for key in table if key.startswith(b"\x00")}


def test_checkpoint_path_forms_and_latest():
    latest = read_tf_checkpoint(fixture("tf1_multi"))
    assert latest["global_step"] == 7 and latest["global_step"].dtype == np.int64
    for form in ("tf1_multi/model.ckpt-7", "tf1_multi/model.ckpt-7.index",
                 "tf1_multi/model.ckpt-7.data-00000-of-00001"):
        got = read_tf_checkpoint(fixture(form))
        assert all((got[k] == latest[k]).all() for k in latest), form
    older = read_tf_checkpoint(fixture("tf1_multi/model.ckpt-5"))
    assert not np.array_equal(older["rnn/multi_rnn_cell/cell_1/lstm_cell/kernel"],
                              latest["rnn/multi_rnn_cell/cell_1/lstm_cell/kernel"])


def test_moved_checkpoint_folder_with_absolute_paths(tmp_path):
    shutil.copytree(fixture("tf1_bidi"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run1/model.ckpt"\n')
    assert sorted(read_tf_checkpoint(tmp_path / "ckpt")) == sorted(read_tf_checkpoint(fixture("tf1_bidi")))


def copy_checkpoint(tmp_path, name="tf1_adam"):
    folder = tmp_path / name
    shutil.copytree(fixture(name), folder)
    index = next(folder.glob("*.index"))
    return folder, index, next(folder.glob("*.data-*"))


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_data_byte_names_file_and_tensor(tmp_path):
    folder, _, data = copy_checkpoint(tmp_path)
    flip(data, 0)
    with pytest.raises(ValueError, match=r"data-00000-of-00001: tensor '.+': checksum mismatch"):
        read_tf_checkpoint(folder)


def test_flipped_index_byte_is_a_checksum_error(tmp_path):
    folder, index, _ = copy_checkpoint(tmp_path)
    flip(index, 20)
    with pytest.raises(ValueError, match=r"\.index: checksum mismatch in a data block"):
        read_tf_checkpoint(folder)


def test_truncated_files(tmp_path):
    folder, index, data = copy_checkpoint(tmp_path)
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"data-00000-of-00001: tensor '.+': .* past the end .* truncated shard"):
        read_tf_checkpoint(folder)
    index.write_bytes(index.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"\.index: not a TensorFlow checkpoint index .*truncated"):
        read_tf_checkpoint(folder)


def test_missing_files(tmp_path):
    folder, _, data = copy_checkpoint(tmp_path)
    data.unlink()
    with pytest.raises(FileNotFoundError, match=r"data-00000-of-00001: missing data shard"):
        read_tf_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match=r"path: no TensorFlow checkpoint at .*nothing' \(expected the file "
                                                 r".*nothing\.index'\)$"):
        read_tf_checkpoint(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"path: no TensorFlow checkpoint at .*gone/' \(expected the file "
                                                 r".*gone/\.index'; no folder .*gone'\)$"):
        read_tf_checkpoint(f"{tmp_path / 'gone'}/")
    with pytest.raises(FileNotFoundError, match=r"has no 'checkpoint' file"):
        read_tf_checkpoint(tmp_path)


def keras_weight_files(tmp_path):
    """The .keras archive and the .weights.h5 inside it (what model.save_weights writes)."""
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(zipfile.ZipFile(fixture("keras_stacked.keras")).read("model.weights.h5"))
    return fixture("keras_stacked.keras"), str(weights)


@pytest.mark.parametrize("name, layers", [("keras_stacked", ["lstm_a", "lstm_b", "lstm_c"]),
                                          ("keras_bidi", ["bi_a", "bi_b"]), ("keras2", ["bi", "top"])])
def test_read_keras_weights_under_layer_names(name, layers, tmp_path):
    ref = expected(name)
    files = [fixture(name + (".h5" if name == "keras2" else ".keras"))]
    if name == "keras_stacked":
        files = keras_weight_files(tmp_path)
    for f in files:
        got = read_keras_weights(f)
        want = {}
        for layer in layers:
            values = [ref[k] for k in sorted((k for k in ref.files if k.startswith(f"weights/{layer}/")),
                                             key=lambda k: int(k.rsplit("/", 1)[1]))]
            names = [f"{layer}/{d}{w}" for d in (("forward/", "backward/") if "bi" in layer else ("",))
                     for w in ("kernel", "recurrent_kernel", "bias")]
            if len(values) == 2:  # use_bias=False
                names = [n for n in names if not n.endswith("bias")]
            want.update(zip(names, values))
        assert sorted(got) == sorted(want), f
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_read_keras_config():
    config = read_keras_config(fixture("keras_bidi.keras"))
    bi_b = next(layer for layer in config["layers"] if layer["name"] == "bi_b")
    assert config["keras_version"].startswith("3") and bi_b["config"]["merge_mode"] == "ave"
    assert bi_b["config"]["layer"]["config"]["units"] == 3
    assert read_keras_config(fixture("keras2.h5"))["keras_version"].startswith("2")


# ------------------------------------------------------------------------ TF1 files to modules
def test_multi_rnn_cell_with_extras_on_one_layer(path):
    ref = expected("tf1_multi")
    module = triton_lstm.load_tf_checkpoint(fixture("tf1_multi"), forget_bias=[1.0, 0.5],
                                            cell_clip=[0.8, None], proj_clip=[0.3, None])
    assert isinstance(module, LSTMStack) and module.layers[0].use_peepholes and module.layers[0].proj_size == 4
    packed = pack_padded_sequence(torch.as_tensor(ref["x"]), torch.as_tensor(ref["lengths"]), batch_first=True,
                                  enforce_sorted=False)
    out, (h, c) = module(packed)
    close(pad_packed_sequence(out, batch_first=True, total_length=ref["x"].shape[1])[0], ref["output"], "output")
    for k in range(2):
        close(h[k], ref[f"h{k}"], f"h layer {k}")
        close(c[k], ref[f"c{k}"], f"c layer {k}")
    out2, _ = module(torch.as_tensor(ref["x"]), lengths=torch.as_tensor(ref["lengths"]))
    close(out2, ref["output"], "output with lengths=")
    # One proj_clip for both layers, as a TF script may give every cell: the layer without a
    # projection ignores it, as TF's cell does.
    same = triton_lstm.load_tf_checkpoint(fixture("tf1_multi"), forget_bias=[1.0, 0.5], cell_clip=[0.8, None],
                                          proj_clip=0.3)
    assert [layer.proj_clip for layer in same.layers] == [0.3, None]
    close(same(torch.as_tensor(ref["x"]), lengths=torch.as_tensor(ref["lengths"]))[0], ref["output"],
          "output with one proj_clip")


def test_forgetting_what_tf_does_not_store_changes_the_result():
    """The clips and forget bias are not in the checkpoint: TF's defaults alone must not match."""
    ref = expected("tf1_multi")
    module = triton_lstm.load_tf_checkpoint(fixture("tf1_multi"))
    out, _ = module(torch.as_tensor(ref["x"]), lengths=torch.as_tensor(ref["lengths"]))
    assert not torch.allclose(out, torch.as_tensor(ref["output"]), atol=1e-3)


@pytest.mark.parametrize("scope, options", [("shards", dict(cell_clip=0.8)), ("partitioner", {})])
def test_partitioned_variables(scope, options, path):
    """A cell whose variables TF saved in slices (num_unit_shards / num_proj_shards: uneven row blocks;
    a scope's partitioner: column blocks of the kernel, halves of the bias and peepholes) against TF's
    outputs and final states."""
    ref = expected("tf1_partitioned")
    module = triton_lstm.load_tf_checkpoint(fixture("tf1_partitioned"), scope, **options)
    assert module.use_peepholes and module.proj_size == (4 if scope == "shards" else 0)
    out, h, c = packed_run(module, ref["x"], ref["lengths"])
    close(out, ref[scope + "_output"], "output")
    close(h[0], ref[scope + "_h"], "h_n")
    close(c[0], ref[scope + "_c"], "c_n")


def test_bidirectional_dynamic_rnn_with_lengths(path):
    ref = expected("tf1_bidi")
    module = triton_lstm.load_tf_checkpoint(fixture("tf1_bidi"))
    assert isinstance(module, LSTM) and module.bidirectional and module.batch_first and module.use_peepholes
    out, h, c = packed_run(module, ref["x"], ref["lengths"])
    close(out, ref["output"], "output")
    close(h, ref["h"], "h_n")
    close(c, ref["c"], "c_n")


@pytest.mark.parametrize("name", ["tf1_stack_bidi", "tf1_bidi_uneven"])
def test_bidirectional_layers_whose_directions_differ(name, path):
    """TF lets a bidirectional layer's fw and bw cells differ (size, peepholes, projection): such a layer
    is a Bidirectional of two LSTMs, alone or in an LSTMStack, against TF's outputs and final states
    (h_n, c_n: fw then bw for each layer), given as a PackedSequence and as lengths."""
    ref = expected(name)
    module = triton_lstm.load_tf_checkpoint(fixture(name))
    if name == "tf1_stack_bidi":
        assert isinstance(module, LSTMStack) and isinstance(module.layers[0], Bidirectional)
        assert isinstance(module.layers[1], LSTM) and module.layers[1].bidirectional
    else:
        assert isinstance(module, Bidirectional)
    out, (h, c) = module(torch.as_tensor(ref["x"]), lengths=torch.as_tensor(ref["lengths"]))
    states = len([k for k in ref.files if k.startswith("h")])
    for how, (out, h, c) in [("lengths", (out, h, c)), ("packed", packed_run(module, ref["x"], ref["lengths"]))]:
        close(out, ref["output"], f"{how}: output")
        assert len(h) == len(c) == states
        for k in range(states):
            close(h[k], ref[f"h{k}"], f"{how}: h_n[{k}]")
            close(c[k], ref[f"c{k}"], f"{how}: c_n[{k}]")
    variables = {k[len("variables/"):]: v for k, v in ref.items() if k.startswith("variables/")}
    back = module_to_tf(module)
    assert sorted(back) == sorted(variables)
    for key in variables:
        np.testing.assert_allclose(back[key], variables[key], atol=1e-7, err_msg=key)


@pytest.mark.parametrize("name", ["tf1_bidi_proj_fw", "tf1_bidi_proj_bw"])
def test_bidirectional_layer_with_a_projection_on_one_side_and_proj_clip(name, path):
    """proj_clip given for a layer whose fw or bw cell alone has a projection: that cell clips, the other
    ignores it, as TF's cells (it was kept or dropped for both by the bw cell: an error, or an unclipped
    fw projection). Against TF's outputs and final states, the clip reached."""
    ref = expected(name)
    module = triton_lstm.load_tf_checkpoint(fixture(name), proj_clip=0.1)
    out, (h, c) = module(torch.as_tensor(ref["x"]), lengths=torch.as_tensor(ref["lengths"]))
    projected = ref["output"][..., :2] if name.endswith("fw") else ref["output"][..., 3:]
    assert np.isclose(np.abs(projected), 0.1).any(), "the clip is not reached: the test would not see it missing"
    close(out, ref["output"], "output")
    for k in range(2):
        close(h[k], ref[f"h{k}"], f"h_n[{k}]")
        close(c[k], ref[f"c{k}"], f"c_n[{k}]")
    # No steps: an error naming the input, as nn.LSTM's (with lengths, packing failed on it).
    for lengths in (None, torch.zeros(3, dtype=torch.long)):   # a RuntimeError too, as nn.LSTM's
        with pytest.raises(RuntimeError, match=r"^input: expected at least one time step, got shape \(3, 0, 4\)$"):
            module(torch.zeros(3, 0, 4), lengths=lengths)


def test_keras_layer_variables_in_a_tf1_checkpoint_and_keras_peepholes():
    """A TF1 graph's Keras LSTM layer (kernel [D, 4N], recurrent_kernel [N, 4N]) saved by a Saver: read as
    a TF1 cell's kernel it built a module of input size D - N (an error only at its first call); now an
    error naming the layout. Keras' peephole cell's weights: LSTMCell.load_tf_weights takes them as TF1's
    peepholes (same gates), a cell without peepholes refuses them, and a Keras module refuses them (they
    were dropped without a word)."""
    g = np.random.default_rng(0)
    D, N = 5, 3
    scope = "rnn/peephole_lstm_cell/"
    keras = {scope + "kernel": g.normal(size=(D, 4 * N)).astype(np.float32),
             scope + "recurrent_kernel": g.normal(size=(N, 4 * N)).astype(np.float32),
             scope + "bias": g.normal(size=4 * N).astype(np.float32)}
    with pytest.raises(ValueError, match=r"^variables: \['rnn/peephole_lstm_cell'\] hold a recurrent_kernel: a Keras "
                                         r"LSTM layer's variables .*read one with LSTMCell.load_tf_weights"):
        triton_lstm.porting.tf_to_module(keras)
    peep = {scope + f"{gate}_gate_peephole_weights": g.normal(size=N).astype(np.float32)
            for gate in ("input", "forget", "output")}
    cell = LSTMCell(N, use_peepholes=True)
    cell.load_tf_weights({**keras, **peep})
    for gate, diag in (("input", cell.w_i_diag), ("forget", cell.w_f_diag), ("output", cell.w_o_diag)):
        assert torch.equal(diag.detach(), torch.as_tensor(peep[scope + f"{gate}_gate_peephole_weights"])), gate
    with pytest.raises(ValueError, match=r"^weights: the checkpoint has \['w_f_diag', 'w_i_diag', 'w_o_diag'\]"):
        LSTMCell(N).load_tf_weights({**keras, **peep})
    layer = {k.replace(scope, "rnn/"): v for k, v in {**keras, **peep}.items()}
    with pytest.raises(ValueError, match=r"^weights: 'rnn' has weights an LSTM layer has not: "
                                         r"\['rnn/forget_gate_peephole_weights', "):
        keras_to_module(layer, layers=["rnn"])


def test_adam_checkpoint_scopes(path):
    ref = expected("tf1_adam")
    with pytest.raises(ValueError, match=r"several LSTM stacks, under the scopes \['decoder/rnn', 'encoder/rnn'\]"):
        triton_lstm.load_tf_checkpoint(fixture("tf1_adam"))
    with pytest.raises(ValueError, match=r"no LSTM cell .* under scope 'encoder/rnn_9'"):
        triton_lstm.load_tf_checkpoint(fixture("tf1_adam"), scope="encoder/rnn_9")
    for scope in ("encoder", "decoder"):
        module = triton_lstm.load_tf_checkpoint(fixture("tf1_adam"), scope=scope)
        out, (h, c) = module(torch.as_tensor(ref["x"]))
        close(out, ref[f"{scope}_output"], scope)
        close(h[0], ref[f"{scope}_h"], f"{scope} h")
        close(c[0], ref[f"{scope}_c"], f"{scope} c")


def test_cell_loads_a_checkpoint_cell_and_ignores_slots():
    ref = expected("tf1_adam")
    cell = LSTMCell(3, num_proj=2)
    cell.load_tf_weights(read_tf_checkpoint(fixture("tf1_adam")), scope="decoder")
    out, state = dynamic_rnn(cell, torch.as_tensor(ref["x"]))
    close(out, ref["decoder_output"], "decoder via LSTMCell")


@pytest.mark.parametrize("name", ["tf1_multi", "tf1_bidi"])
def test_module_back_to_tf_names(name):
    variables = {k: v for k, v in read_tf_checkpoint(fixture(name)).items() if k != "global_step"}
    module = tf_to_module(variables, forget_bias=0.25)
    back = module_to_tf(module, forget_bias=0.25)
    assert sorted(back) == sorted(variables)
    for key in variables:
        np.testing.assert_allclose(back[key], variables[key], atol=1e-7, err_msg=key)


def test_float64_checkpoint_gives_a_float64_module():
    """TF's variables in float64 (a cell built with dtype=tf.float64): the module keeps them, peepholes
    included, and computes what an LSTM with those weights computes in float64."""
    lstm = LSTM(3, 5, batch_first=True, proj_size=2, use_peepholes=True, forget_bias=1.0, dtype=torch.float64)
    with torch.no_grad():
        for name in ("w_f_diag_l0", "w_i_diag_l0", "w_o_diag_l0"):
            getattr(lstm, name).uniform_(-1, 1)
    variables = module_to_tf(lstm)
    assert {v.dtype for v in variables.values()} == {np.dtype(np.float64)}
    module = tf_to_module(variables)
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    for name in ("w_f_diag_l0", "w_i_diag_l0", "w_o_diag_l0", "weight_hr_l0"):
        assert torch.equal(getattr(module, name), getattr(lstm, name)), name
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x)[0], lstm(x)[0], rtol=1e-12, atol=1e-12)


def random_tf_variables(scopes, seed=0):
    """TF variables {scope: (D, N, P)} with random values, for layouts no fixture covers."""
    rng = np.random.default_rng(seed)
    out = {}
    for scope, (d, n, p) in scopes.items():
        out[f"{scope}/kernel"] = rng.normal(0, 0.4, (d + (p or n), 4 * n)).astype(np.float32)
        out[f"{scope}/bias"] = rng.normal(0, 0.1, 4 * n).astype(np.float32)
        if p:
            out[f"{scope}/projection/kernel"] = rng.normal(0, 0.4, (n, p)).astype(np.float32)
    return out


def test_stack_bidirectional_is_one_lstm_and_round_trips():
    cells = {f"stack_bidirectional_rnn/cell_{k}/bidirectional_rnn/{d}/lstm_cell": (3 if k == 0 else 8, 5, 4)
             for k in range(2) for d in ("fw", "bw")}
    variables = random_tf_variables(cells)
    module = tf_to_module(variables)
    assert isinstance(module, LSTM) and module.num_layers == 2 and module.bidirectional and module.proj_size == 4
    back = module_to_tf(module)
    assert sorted(back) == sorted(variables)
    x = torch.randn(2, 4, 3)
    manual = x.transpose(0, 1)
    for k in range(2):  # each direction as an LSTMCell on the same variables
        outs = []
        for d in ("fw", "bw"):
            cell = LSTMCell(5, num_proj=4)
            cell.load_tf_weights(variables, scope=f"stack_bidirectional_rnn/cell_{k}/bidirectional_rnn/{d}")
            seq = manual if d == "fw" else manual.flip(0)
            o, _ = dynamic_rnn(cell, seq, time_major=True)
            outs.append(o if d == "fw" else o.flip(0))
        manual = torch.cat(outs, 2)
    torch.testing.assert_close(module(x)[0], manual.transpose(0, 1), **TOL)


def test_bidirectional_of_multi_rnn_cells_runs_each_stack_alone():
    cells = {f"bidirectional_rnn/{d}/multi_rnn_cell/cell_{k}/lstm_cell": (3 if k == 0 else 5, 5, None)
             for k in range(2) for d in ("fw", "bw")}
    variables = random_tf_variables(cells)
    module = tf_to_module(variables)
    assert isinstance(module, Bidirectional)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 0])
    out, (h, c) = module(x, lengths=lengths)
    fw = tf_to_module(variables, scope="bidirectional_rnn/fw")
    bw = tf_to_module(variables, scope="bidirectional_rnn/bw")
    want_f, (h_f, _) = LSTMStack([fw])(x, lengths=lengths)
    rev = torch.stack([torch.cat([x[b, :n].flip(0), x[b, n:]]) for b, n in enumerate(lengths.tolist())])
    want_b, (h_b, _) = LSTMStack([bw])(rev, lengths=lengths)
    want_b = torch.stack([torch.cat([want_b[b, :n].flip(0), want_b[b, n:]]) for b, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(out, torch.cat([want_f, want_b], 2), **TOL)
    torch.testing.assert_close(h, torch.cat([h_f, h_b]), **TOL)
    assert sorted(module_to_tf(module)) == sorted(variables)


# ------------------------------------------------------------------------- Keras files to modules
def test_keras_stack_full_and_masked(path, tmp_path):
    ref = expected("keras_stacked")
    module = triton_lstm.load_keras(fixture("keras_stacked.keras"))
    assert [layer.name for layer in module.layers] == ["lstm_a", "lstm_b", "lstm_c"] and module.mask_value == 0.0
    assert module.layers[1].lstm.recurrent_activation == "hardsigmoid" and not module.layers[1].lstm.bias
    for tag in ("full", "masked"):
        x = torch.as_tensor(ref[f"{tag}/x"])
        outputs = {}
        out = x
        for k, layer in enumerate(module.layers, 1):  # each layer's output, as the fixture recorded them
            lengths = lengths_from_mask((x != 0).any(-1))
            outputs[k], (h, c) = layer(out, lengths=lengths)
            out = outputs[k]
            close(h[0], ref[f"{tag}/h{k}"], f"{tag} h{k}")
            close(c[0], ref[f"{tag}/c{k}"], f"{tag} c{k}")
        for k in (1, 2, 3):  # masked steps: lstm_a and lstm_b repeat their last output, lstm_c gives zeros
            close(outputs[k], ref[f"{tag}/y{k}"], f"{tag} y{k}")
        y, (h, c) = module(x)
        close(y, ref[f"{tag}/y3"], f"{tag} stack output")
        close(h[2], ref[f"{tag}/h3"], f"{tag} stack h")
    _, weights = keras_weight_files(tmp_path)
    with pytest.raises(ValueError, match=r"no model config, so the order .* is unknown"):
        triton_lstm.load_keras(weights)
    from_weights = triton_lstm.load_keras(weights, layers=["lstm_a"])
    close(from_weights(torch.as_tensor(ref["full/x"]))[0], ref["full/y1"], "lstm_a from .weights.h5")


def test_keras_weights_without_config_take_their_lstm_layers(path):
    """Without a config, the layers taken by default are those with an LSTM's recurrent kernel
    ([N, 4N]): one LSTM beside a GRU ([N, 3N]) and a SimpleRNN ([N, N]) is taken alone (the order of
    all three was asked for before)."""
    ref = expected("keras_stacked")
    weights = {k: v for k, v in read_keras_weights(fixture("keras_stacked.keras")).items() if k.startswith("lstm_a/")}
    g = np.random.default_rng(5)
    D = weights["lstm_a/kernel"].shape[0]
    for name, gates in (("gru", 3), ("simple_rnn", 1)):
        weights.update({f"{name}/kernel": g.normal(size=(D, 2 * gates)), f"{name}/bias": g.normal(size=2 * gates),
                        f"{name}/recurrent_kernel": g.normal(size=(2, 2 * gates))})
    module = keras_to_module(weights)
    assert [layer.name for layer in module.layers] == ["lstm_a"]
    close(module(torch.as_tensor(ref["full/x"]))[0], ref["full/y1"], "lstm_a beside a GRU and a SimpleRNN")


def test_keras_masked_bidirectional(path):
    ref = expected("keras_bidi")
    module = triton_lstm.load_keras(fixture("keras_bidi.keras"))
    assert [layer.merge_mode for layer in module.layers] == ["concat", "ave"]
    x = torch.as_tensor(ref["x"])
    y1, (h1, c1) = module.layers[0](x, lengths=torch.as_tensor(ref["lengths"]))
    close(y1, ref["y1"], "bi_a output")
    y2, (h, c) = module(x)
    close(y2, ref["y2"], "bi_b output")
    for k, (layer, d) in enumerate([(1, "fw"), (1, "bw"), (2, "fw"), (2, "bw")]):
        close(h[k], ref[f"h{layer}_{d}"], f"h{layer} {d}")
        close(c[k], ref[f"c{layer}_{d}"], f"c{layer} {d}")
    y_mask, _ = module(x, mask=torch.arange(x.shape[1])[None, :] < torch.as_tensor(ref["lengths"])[:, None])
    close(y_mask, ref["y2"], "explicit mask")


def test_keras2_h5_hard_sigmoid_and_sum(path):
    ref = expected("keras2")
    module = triton_lstm.load_keras(fixture("keras2.h5"))
    assert module.layers[0].lstm.recurrent_activation == "hard_sigmoid" and module.layers[0].merge_mode == "sum"
    assert module.layers[1].lstm.activation == "relu"
    x = torch.as_tensor(ref["x"])
    close(module.layers[0](x)[0], ref["y1"], "bi output")
    y, (h, c) = module(x)
    close(y, ref["y2"], "top output")
    for k, name in enumerate(["1_fw", "1_bw", "2"]):
        close(h[k], ref[f"h{name}"], f"h{name}")
        close(c[k], ref[f"c{name}"], f"c{name}")


@pytest.mark.filterwarnings("ignore:.* has no kernel implementation; this LSTM runs on the plain-PyTorch reference")
@pytest.mark.parametrize("name", ["keras_activations.keras", "keras2_activations.h5"])
def test_keras_activations_without_a_kernel(name):
    """Each of Keras' elementwise activations that no kernel computes (Keras 3's and tf-keras' names), as a
    layer's activation and as its gates', against the outputs Keras computed."""
    ref = expected(name.split(".")[0])
    x = torch.as_tensor(ref["x"])
    branches = [key.removeprefix("y/") for key in ref.files if key.startswith("y/")]
    assert len(branches) >= 18
    for branch in branches:
        y, _ = triton_lstm.load_keras(fixture(name), layers=[branch])(x)
        close(y, ref[f"y/{branch}"], branch)


def test_keras_piecewise_activations_at_their_break_points():
    """sparse_plus and sparse_sigmoid as Keras writes them (nested wheres: the outer piece from the break
    point on, so their gradients there are the outer pieces'), values and gradients at -1 and 1."""
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64, requires_grad=True)
    for name, values, grads in (("sparse_plus", [0.0, 1.0], [0.0, 1.0]), ("sparse_sigmoid", [0.0, 1.0], [0.0, 0.0])):
        y = KERAS_ACTIVATIONS[name](x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert y.tolist() == values and grad.tolist() == grads, name


def test_keras_module_back_to_keras_weights():
    for name in ("keras_stacked.keras", "keras_bidi.keras", "keras2.h5"):
        weights = read_keras_weights(fixture(name))
        back = module_to_keras(triton_lstm.load_keras(fixture(name)))
        assert sorted(back) == sorted(weights), name
        for key in weights:
            np.testing.assert_array_equal(back[key], weights[key], err_msg=key)


def test_lstm_to_keras_folds_forget_bias_and_loads_back():
    lstm = LSTM(3, 4, num_layers=2, batch_first=True, forget_bias=1.0)
    weights = module_to_keras(lstm)
    assert sorted(weights) == sorted(f"{n}/{w}" for n in ("lstm", "lstm_1") for w in ("kernel", "recurrent_kernel", "bias"))
    module = keras_to_module(weights, layers=["lstm", "lstm_1"])
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(module(x)[0], lstm(x)[0], **TOL)


def test_keras_dict_into_lstm_cell():
    ref = expected("keras2")
    weights = read_keras_weights(fixture("keras2.h5"))
    cell = LSTMCell(3, activation="relu", forget_bias=1.0)
    cell.load_tf_weights(weights, scope="top")
    y1 = torch.as_tensor(ref["y1"])
    close(dynamic_rnn(cell, y1)[0], ref["y2"], "top layer in an LSTMCell")
    with pytest.raises(ValueError, match=r"Keras LSTM weights of several layers"):
        LSTMCell(3).load_tf_weights(weights)


def test_keras_semantics_errors():
    module = triton_lstm.load_keras(fixture("keras_stacked.keras"))
    x = torch.randn(2, 5, 3)
    holes = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mask: rows \[0\] have masked steps before valid ones"):
        module(x, mask=holes)
    backwards_first = LSTMStack([KerasRNN(LSTM(3, 4, batch_first=True), "rev", go_backwards=True),
                                 KerasRNN(LSTM(4, 2, batch_first=True), "top")])
    with pytest.raises(ValueError, match=r"layer \['rev'\] runs backwards .* mask unreversed"):
        backwards_first(x, lengths=torch.tensor([5, 3]))
    with pytest.raises(ValueError, match=r"layers: no layer named \['nope'\]"):
        triton_lstm.load_keras(fixture("keras_stacked.keras"), layers=["nope"])
    with pytest.raises(ValueError, match=r"layers: 'pad' is a Masking, not an LSTM"):
        triton_lstm.load_keras(fixture("keras_stacked.keras"), layers=["pad"])
    with pytest.raises(ValueError, match=r"lstm_a: recurrent_activation: Keras activation 'softmax' is not supported"):
        keras_activation("softmax", "3.15.1", "lstm_a: recurrent_activation")
    assert keras_activation("hard_sigmoid", "3.15.1", "a") == "hardsigmoid"
    assert keras_activation("hard_sigmoid", "2.20.1", "a") == "hard_sigmoid"


def test_keras_merge_modes_and_go_backwards_by_definition():
    """merge modes and go_backwards against their definitions on a bidirectional LSTM's two halves."""
    lstm = LSTM(3, 4, batch_first=True, bidirectional=True)
    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 3])
    both, (h, _) = KerasRNN(lstm, "bi", merge_mode="concat")(x, lengths=lengths)
    f, b = both[..., :4], both[..., 4:]
    for mode, want in (("sum", f + b), ("mul", f * b), ("ave", (f + b) / 2)):
        torch.testing.assert_close(KerasRNN(lstm, "bi", merge_mode=mode)(x, lengths=lengths)[0], want)
    pair, _ = KerasRNN(lstm, "bi", merge_mode=None)(x, lengths=lengths)
    torch.testing.assert_close(pair[1], b)
    last, _ = KerasRNN(lstm, "bi", merge_mode="sum", return_sequences=False)(x, lengths=lengths)
    torch.testing.assert_close(last, h[0] + h[1])
    uni = LSTM(3, 4, batch_first=True)
    uni.load_state_dict({k.replace("_reverse", ""): v for k, v in lstm.state_dict().items() if "reverse" in k})
    back, _ = KerasRNN(uni, "rev", go_backwards=True)(x, lengths=lengths)
    torch.testing.assert_close(back, b.flip(1))  # Keras keeps the reversed order, padding first


def test_keras_inputs_a_packed_sequence_cannot_answer_or_lengths_must_be_integers():
    """A last layer running backwards returns Keras' reversed outputs (valid steps last), which packing
    would drop; lengths are integers (2.5 must not become 2)."""
    module = triton_lstm.load_keras(fixture("keras_stacked.keras"))
    assert module.layers[-1].go_backwards
    x = torch.randn(3, 5, 3)
    with pytest.raises(ValueError, match=r"^input: layer 'lstm_c' runs backwards .* PackedSequence cannot hold"):
        module(pack_padded_sequence(x, [5, 2, 1], batch_first=True, enforce_sorted=False))
    with pytest.raises(TypeError, match=r"^lengths: expected an integer tensor, got torch.float32"):
        module(x, lengths=torch.tensor([5.0, 2.5, 1.0]))
    forwards = LSTMStack([KerasRNN(LSTM(3, 4, batch_first=True), "only")])
    out = forwards(pack_padded_sequence(x, [5, 2, 1], batch_first=True, enforce_sorted=False))[0]
    padded = pad_packed_sequence(out, batch_first=True, total_length=5)[0]
    torch.testing.assert_close(padded, forwards(x, lengths=torch.tensor([5, 2, 1]))[0] * (
        torch.arange(5)[None, :, None] < torch.tensor([5, 2, 1])[:, None, None]), **TOL)


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("stem", ["keras_layouts", "keras2_layouts"])
def test_keras_layouts_that_misled_the_loader(stem, ext):
    """Against Keras' outputs (make_tf_fixtures.write_layouts), from .keras and .h5 files alike: layer
    names that start with forward_/backward_ (a nested model's too) and a custom backward layer (whose
    name Keras 3's .h5 keeps) are no directions but their own; a Masking layer between two LSTMs makes
    a new mask from the first one's outputs; two LSTMs on one input are no chain."""
    weights = read_keras_weights(fixture(f"{stem}_names.{ext}"))
    assert sorted(k for k in weights if k.endswith("/kernel")) == [
        "backward_bi/backward/kernel", "backward_bi/forward/kernel", "forward_enc/kernel"]
    for name in ("names", "mid_mask"):
        ref = expected(f"{stem}_{name}")
        module = triton_lstm.load_keras(fixture(f"{stem}_{name}.{ext}"))
        close(module(torch.as_tensor(ref["x"]))[0], ref["y0"], name)
    assert [layer.mask_value for layer in module.layers] == [None, 0.0] and module.mask_value == 0.0
    with pytest.raises(ValueError, match=r"^layers: 'branch_b' takes its inputs from 'input\w*', not from 'branch_a' "
                                         r"before it; pass layers=\[...\]"):
        triton_lstm.load_keras(fixture(f"{stem}_branches.{ext}"))
    ref = expected(f"{stem}_branches")
    for k, name in enumerate(("branch_a", "branch_b")):
        branch = triton_lstm.load_keras(fixture(f"{stem}_branches.{ext}"), layers=name)
        close(branch(torch.as_tensor(ref["x"]))[0], ref[f"y{k}"], name)


def test_keras_layers_chain_checked_at_load():
    with pytest.raises(ValueError, match=r"^layers: \['lstm_c', 'lstm_b', 'lstm_a'\] are not in the order the model "
                                         r"runs them: \['lstm_a', 'lstm_b', 'lstm_c'\]"):
        triton_lstm.load_keras(fixture("keras_stacked.keras"), layers=["lstm_c", "lstm_b", "lstm_a"])
    with pytest.raises(ValueError, match=r"^layers: 'lstm_b' takes inputs of width 6, but 'lstm_c' before it "
                                         r"outputs 4"):  # without a config, only the widths tell
        keras_to_module(read_keras_weights(fixture("keras_stacked.keras")), layers=["lstm_c", "lstm_b", "lstm_a"])
    with pytest.raises(ValueError, match=r"^layers: an empty list"):
        triton_lstm.load_keras(fixture("keras_stacked.keras"), layers=[])
    with pytest.raises(ValueError, match=r"^layers: \['lstm_a'\] given more than once"):
        triton_lstm.load_keras(fixture("keras_stacked.keras"), layers=["lstm_a", "lstm_a"])
    # A Dense on a branch of its own, listed between a nested model's LSTM and the LSTM after the
    # nested model (which takes the nested model's outputs): no layer between them.
    config = read_keras_config(fixture("keras_nested.keras"))
    names = [e["name"] for e in config["layers"]]
    config["layers"].insert(names.index("top"), {"name": "side", "class_name": "Dense", "config": {"units": 2},
                                                 "inbound": ["encoder"], "depth": 0})
    weights = read_keras_weights(fixture("keras_nested.keras"))
    assert [layer.name for layer in keras_to_module(weights, config, layers=["inner_b", "top"]).layers] == \
        ["inner_b", "top"]
    # A Sequential model's Dense between two LSTMs (its config has no inbound nodes): named or not.
    for layers in (None, ["la", "lb"]):
        with pytest.raises(ValueError, match=r"^layers: \['dense'\] \(Dense\) sit between "):
            triton_lstm.load_keras(fixture("keras_between_dense.keras"), layers=layers)
    weights = dict(read_keras_weights(fixture("keras_stacked.keras")))
    weights["lstm_b/recurrent_kernel"] = weights["lstm_b/recurrent_kernel"][:-1]
    with pytest.raises(ValueError, match=r"^weights: layer lstm_b: recurrent_kernel: expected"):
        keras_to_module(weights, read_keras_config(fixture("keras_stacked.keras")))
    del weights["lstm_b/kernel"]
    with pytest.raises(ValueError, match=r"^weights: no lstm_b/kernel; layers with both LSTM kernels: "
                                         r"\['lstm_a', 'lstm_c'\]"):
        keras_to_module(weights, read_keras_config(fixture("keras_stacked.keras")))


@pytest.mark.parametrize("name", ["keras_bf16.keras", "keras_bf16.h5", "keras2_bf16.keras", "keras2_bf16.h5"])
def test_keras_bfloat16_weights(name, path):
    """Weights under the bfloat16 dtype policy (2 opaque bytes each in HDF5; a TypeError before): read as
    float32 exactly, Keras' get_weights; the module in float32, against Keras' bfloat16 outputs within
    bfloat16's rounding."""
    ref = expected(name.split(".")[0])
    weights = read_keras_weights(fixture(name))
    got = [w for k, w in weights.items() if k.endswith(("/kernel", "/recurrent_kernel", "/bias"))]
    assert all(w.dtype == np.float32 for w in got) and len(got) == 3
    for k, w in enumerate(got):
        np.testing.assert_array_equal(w, ref[f"weights/{k}"])
    module = triton_lstm.load_keras(fixture(name))
    y, _ = module(torch.as_tensor(ref["x"]))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.as_tensor(ref["y"]), atol=2e-2, rtol=0)


@pytest.mark.parametrize("name,layers", [("keras2_cudnn.h5", None), ("keras2_cudnn_weights.h5", ["bi", "top"]),
                                         ("keras2_cudnn.keras", None),
                                         ("keras2_cudnn.weights.h5", ["bidirectional", "cu_dnnlstm"])])
def test_keras_cudnn_lstm(name, layers, path):
    """tf-keras' CuDNNLSTM, a Bidirectional of one, then one, in model files and weights files (in
    .keras and .weights.h5 its three weights in its own group, by place, named from the config or,
    without one, by their shapes): its weights in cuDNN's layout (each gate's kernel flattened as
    cuDNN reads it, two biases; before, the model had no LSTM layer and the weights a bias of the
    wrong size, or no names), against Keras' LSTMs given those weights by Keras' own conversion."""
    ref = expected("keras2_cudnn")
    y, _ = triton_lstm.load_keras(fixture(name), layers=layers)(torch.as_tensor(ref["x"]))
    close(y, ref["y"], "output")


def test_keras_layers_of_different_dtypes(path):
    """A float32 LSTM, then a float64 one: each takes the outputs before it in its own dtype, as Keras
    casts them (the module could be called with no input dtype: each layer refused the other's)."""
    ref = expected("keras_mixed_dtypes")
    module = triton_lstm.load_keras(fixture("keras_mixed_dtypes.keras"))
    assert [layer.lstm.weight_ih_l0.dtype for layer in module.layers] == [torch.float32, torch.float64]
    y, (h, c) = module(torch.as_tensor(ref["x"]))
    assert y.dtype == torch.float64 and [t.dtype for t in h] == [torch.float32, torch.float64]
    close(y, ref["y"], "output")
    with torch.autocast("cpu", dtype=torch.bfloat16):   # the float64 layer, which autocast leaves, too
        y, _ = module(torch.as_tensor(ref["x"]))
    assert y.dtype == torch.float64


def test_per_layer_proj_clip_without_projections_keeps_one_lstm_and_nested_stacks_cast():
    """A list of proj_clip for layers without a projection (ignored, as TF's cells do) leaves a uniform
    stack one LSTM; a stack inside a stack hands its float64 outputs to a float32 layer in its dtype."""
    lstm = LSTM(3, 4, num_layers=2, batch_first=True)
    assert isinstance(triton_lstm.porting.tf_to_module(module_to_tf(lstm), proj_clip=[1.0, 2.0]), LSTM)
    torch.manual_seed(0)
    f32, f64 = (KerasRNN(LSTM(3, 3, batch_first=True, dtype=dtype), name) for name, dtype in
                (("a", torch.float32), ("b", torch.float64)))
    last = KerasRNN(LSTM(3, 2, batch_first=True), "c")
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        y, _ = LSTMStack([LSTMStack([f32, f64]), last])(x)
        want = last(f64(f32(x)[0].double())[0].float())[0]
    assert y.dtype == torch.float32
    close(y, want, "nested stack")


@pytest.mark.parametrize("name", ["keras_attention.keras", "keras_attention.h5", "keras2_attention_weights.h5"])
def test_keras_lstm_after_multi_head_attention(name, path):
    """MultiHeadAttention's sub-layers save their weights apart (query, key, value, output): they are read
    under their own paths (all four met as 'mha/0' or 'mha/kernel' before, an error for the whole
    file), with the model config or (a weights file) without, and the LSTM after it runs as Keras' on
    the attention's outputs."""
    ref = expected("keras2_attention" if name.startswith("keras2") else "keras_attention")
    weights = read_keras_weights(fixture(name))
    want = ({f"mha/{d}_dense/{k}" for d in ("query", "key", "value", "output") for k in (0, 1)}
            if name.endswith(".keras") else
            {f"mha/{d}/{w}" for d in ("query", "key", "value", "attention_output") for w in ("kernel", "bias")})
    assert {k for k in weights if k.startswith("mha/")} == want
    module = triton_lstm.load_keras(fixture(name))
    close(module(torch.as_tensor(ref["attended"]))[0], ref["y"], "output")


def test_keras_chains_through_a_nested_model(path):
    """A nested Functional model's input takes what the model is called on, and its output is its output
    layer's: an outer LSTM, then the nested model's (a Dense on a branch beside), against Keras'; a Dense
    between them on either side, or the nested model on the outer LSTM's input, is no chain (each loaded
    and computed something else with layers= named, or without)."""
    ref = expected("keras_nested_chain")
    for layers in (None, ["pre", "inner"]):
        module = triton_lstm.load_keras(fixture("keras_nested_chain.keras"), layers=layers)
        close(module(torch.as_tensor(ref["x"]))[0], ref["y"], f"output, layers={layers}")
    for name, layers, source in (("broken_before", ["pre", "inner"], "proj"), ("broken_after", ["inner", "top"], "d"),
                                 ("beside", ["pre", "inner"], "input_layer"), ("beside", None, "input_layer")):
        with pytest.raises(ValueError, match=rf"^layers: '{layers[1] if layers else 'inner'}' takes its inputs from "
                                             rf"'{source}"):
            triton_lstm.load_keras(fixture(f"keras_nested_{name}.keras"), layers=layers)


def test_keras_einsum_dense_drops_the_mask(path):
    """An EinsumDense after a Masking layer drops Keras' mask (it supports none): the LSTM after it runs
    every step, as Keras', from the EinsumDense's outputs, without a mask asked for."""
    ref = expected("keras_einsum_mask")
    module = triton_lstm.load_keras(fixture("keras_einsum_mask.keras"))
    assert module.mask_value is None and module.requires_mask is None
    assert (ref["x"][1, 3:] == 0).all() and not np.allclose(ref["y"][1, 3:], ref["y"][1, 2])
    close(module(torch.as_tensor(ref["e"]))[0], ref["y"], "output")
    # AlphaDropout computes nothing at inference and keeps the mask: the mask still comes from the input.
    from triton_lstm.porting import _keras_mask
    masking = {"class_name": "Masking", "name": "m", "config": {"mask_value": 0.5}}
    assert _keras_mask([masking, {"class_name": "AlphaDropout", "name": "a", "config": {}}], "3.15.1") == (0.5, None)


def test_keras3_mask_recorded_in_the_config(path):
    """Keras 3 records in a layer's node the mask it passed. A nested Functional model's LSTMs record
    none (their inputs are the nested model's own), yet run masked: the module takes the Masking
    layer before the nested model (taking the nodes' word, it ran them unmasked, 0.07 off). An LSTM
    given mask= with no layer making one, in Keras 3 and in tf-keras (whose nodes record only such a
    mask): the module asks for that mask (it ran unmasked)."""
    ref = expected("keras3_nested_masked")
    module = triton_lstm.load_keras(fixture("keras3_nested_masked.keras"))
    assert module.mask_value == 0.0
    close(module(torch.as_tensor(ref["x"]))[0], ref["y"], "nested model")
    for name in ("keras3_mask_argument.keras", "keras2_mask_argument.h5"):   # tf-keras records mask= too
        ref = expected(name.split(".")[0])
        module = triton_lstm.load_keras(fixture(name))
        x = torch.as_tensor(ref["x"])
        with pytest.raises(ValueError, match=r"^mask: the model passes 'l1' a mask \(given with mask=, or made by a "
                                             r"layer not known here to make one\): pass that mask, or lengths=$"):
            module(x)
        close(module(x, mask=(x != 0).any(-1))[0], ref["y"], f"{name}: mask given")


@pytest.mark.parametrize("version", ["3.15.1", "2.21.0"])
def test_keras_mask_verdicts_of_other_layers(version):
    """Whether the mask of a Masking layer reaches the LSTMs through a layer, as Keras 3.15 and tf-keras
    2.21 were seen to hand it on: dropped by RMSNormalization and LocallyConnected1D (the module asked
    for a mask, which gave other numbers than Keras) and by a Lambda; handed on by attention and
    recurrent layers (the module asked with a hedge); a Lambda given a mask function makes its own
    (the module ran without one)."""
    from triton_lstm.porting import _keras_mask
    masking = {"class_name": "Masking", "name": "m", "config": {"mask_value": 0.0}}

    def verdict(class_name, **config):
        return _keras_mask([masking, {"class_name": class_name, "name": "l", "config": config}], version)

    for dropping in ("RMSNormalization", "LocallyConnected1D", "Lambda"):
        assert verdict(dropping, mask=None) == (None, None), dropping
    for keeping in ("Attention", "AdditiveAttention", "MultiHeadAttention", "GroupQueryAttention", "GRU", "SimpleRNN",
                    "ThresholdedReLU"):
        value, reason = verdict(keeping)
        assert value is None and reason.endswith("or lengths="), keeping
    # A Lambda given a mask function makes a mask of its own, after a Masking layer and a layer that
    # drops its mask too (the module ran without one).
    lam = {"class_name": "Lambda", "name": "lam", "config": {"mask": {"class_name": "__lambda__", "config": {}}}}
    for before in ([], [masking], [masking, {"class_name": "Conv1D", "name": "conv", "config": {}}]):
        assert _keras_mask([*before, lam], version) == (
            None, "the model's Lambda layer 'lam' makes a mask with its own function (mask=): pass that mask, or "
                  "lengths="), before


@pytest.mark.parametrize("name", ["keras3_mask_layers.keras", "keras2_mask_layers.h5"])
def test_keras_mask_through_layers_that_keras_3_and_2_treat_apart(name, path):
    """Rescaling, Identity and Normalization after a Masking layer: Keras 3 hands its mask on to the
    LSTM, which the module then asks for (no hedge in the error); Keras 2 drops it there, and the
    module runs without one (it asked for a mask, with a hedged hint, either way before). Against
    Keras' outputs, a row padded past 2 steps."""
    ref = expected(name.split(".")[0])
    module = triton_lstm.load_keras(fixture(name))
    e, x = torch.as_tensor(ref["e"]), torch.as_tensor(ref["x"])
    if name.startswith("keras3"):
        with pytest.raises(ValueError, match=r"^mask: the model's Masking layer 'masking' makes the mask from its input "
                                             r"and \['rescaling', 'identity', 'normalization'\] follow it: pass "
                                             r"mask=\(x != 0.0\).any\(-1\) of that layer's input x, or lengths=$"):
            module(e)
        y, _ = module(e, mask=(x != 0).any(-1))
    else:
        assert module.requires_mask is None and module.mask_value is None
        y, _ = module(e)
    close(y, ref["y"], "output")


@pytest.mark.parametrize("ext", ["keras", "h5"])
@pytest.mark.parametrize("stem", ["keras_layouts", "keras2_layouts"])
def test_keras_rnn_of_stacked_cells(stem, ext):
    """RNN([LSTMCell(4), LSTMCell(3, activation="relu")]) after a Masking layer, then an LSTM: each cell is
    a layer of the stack (named <layer>/cells/<k>, as the reader names its weights), against Keras'
    outputs of the RNN and of the LSTM after it; module_to_keras gives the file's weights back."""
    ref = expected(f"{stem}_stacked_cells")
    path = fixture(f"{stem}_stacked_cells.{ext}")
    x, lengths = torch.as_tensor(ref["x"]), torch.as_tensor(ref["lengths"])
    module = triton_lstm.load_keras(path)
    assert [layer.name for layer in module.layers] == ["stacked/cells/0", "stacked/cells/1", "after"]
    assert module.layers[1].lstm.activation == "relu" and module.mask_value == 0.0
    close(module(x)[0], ref["y1"], "through the LSTM after it")
    stacked = triton_lstm.load_keras(path, layers="stacked")
    out, (h, c) = stacked(x)
    close(out, ref["y0"], "the stacked cells' outputs")
    assert not torch.allclose(out, stacked(x, lengths=torch.full_like(lengths, x.shape[1]))[0])  # the mask matters
    weights = read_keras_weights(path)
    back = module_to_keras(module)
    assert sorted(back) == sorted(weights)
    for key, value in weights.items():
        np.testing.assert_allclose(back[key], value, atol=1e-7, err_msg=key)
    # Without the config (the weights alone), each cell is taken as an LSTM with tanh: only the shapes agree.
    plain = keras_to_module(weights, layers="stacked")
    assert [layer.lstm.hidden_size for layer in plain.layers] == [4, 3]
    config = read_keras_config(path)  # edited: Keras reverses the input once for all the cells
    next(e for e in config["layers"] if e["name"] == "stacked")["config"]["go_backwards"] = True
    with pytest.raises(ValueError, match=r"^layers: 'stacked' runs stacked cells backwards \(go_backwards\); not"):
        keras_to_module(weights, config)


def test_keras_layers_between_two_lstms_that_make_a_mask_or_another_branch():
    """The Masking layer between l1 and l2 followed by a Dense (a config edited so): a Dense fed by the
    Masking layer feeds l2 (no chain of l1 and l2), or, where the config does not say what feeds l2 (as
    in a Sequential model), the Dense sits between them; on a branch of their own they give l2 no
    mask."""
    config = read_keras_config(fixture("keras_layouts_mid_mask.keras"))
    weights = read_keras_weights(fixture("keras_layouts_mid_mask.keras"))
    names = [e["name"] for e in config["layers"]]
    config["layers"].insert(names.index("m2") + 1, {"name": "dense", "class_name": "Dense", "config": {"units": 4},
                                                   "inbound": ["m2"], "depth": 0})
    l2 = config["layers"][names.index("l2") + 1]
    l2["inbound"] = ["dense"]
    with pytest.raises(ValueError, match=r"^layers: 'l2' takes its inputs from 'dense', not from 'l1' before it"):
        keras_to_module(weights, config, layers=["l1", "l2"])
    l2["inbound"] = None
    with pytest.raises(ValueError, match=r"^layers: \['dense'\] \(Dense\) sit between 'l1' and 'l2', which the "
                                         r"module would skip"):
        keras_to_module(weights, config, layers=["l1", "l2"])
    # l2 fed by l1 again, the Masking layer and the Dense on a branch of their own (from a second input):
    # the mask between l1 and l2 is the one on the way between them, none.
    config["layers"].insert(0, {"name": "other", "class_name": "InputLayer", "config": {}, "inbound": [], "depth": 0})
    next(e for e in config["layers"] if e["name"] == "m2")["inbound"] = ["other"]
    l2["inbound"] = ["l1"]
    assert [layer.mask_value for layer in keras_to_module(weights, config, layers=["l1", "l2"]).layers] == [None, None]


@pytest.mark.parametrize("name", ["keras_nested.keras", "keras_nested.h5", "keras2_names.keras", "keras2_names.h5"])
def test_keras_nested_model_and_layers_named_against_their_order(name, path):
    """A nested Sequential's LSTMs (Keras 3's .keras and legacy .h5; tf-keras' .keras, whose weights file
    names layers by class and place, and .h5) against Keras' outputs; in keras2_names the first LSTM is
    named "lstm_1" and the second "lstm", the names the weights file gives the other one."""
    ref = expected(name.split(".")[0])
    module = triton_lstm.load_keras(fixture(name))
    nested = name.startswith("keras_nested")
    assert [layer.name for layer in module.layers] == (["inner_a", "inner_b", "top"] if nested
                                                       else ["lstm_1", "lstm", "top"])
    assert module.mask_value == (0.0 if nested else None)
    close(module(torch.as_tensor(ref["x"]))[0], ref["y"], name)


def test_keras2_savedmodel_and_tf_format_weights(path):
    """tf-keras in TensorFlow's format: a SavedModel folder (the config from keras_metadata.pb: a Masking
    layer, a nested Sequential's LSTM with hard_sigmoid gates, a Bidirectional sum, softsign) against Keras'
    outputs; save_weights' checkpoint (folder, prefix or .index) holds the same weights, as Keras'
    get_weights gave them, and builds with layers= (no config, so Keras' defaults: a concat merge)."""
    ref = expected("keras2_tf_format")
    module = triton_lstm.load_keras(fixture("keras2_savedmodel"))
    assert [layer.name for layer in module.layers] == ["inner", "bi", "top"] and module.mask_value == 0.0
    assert module.layers[0].lstm.recurrent_activation == "hard_sigmoid" and module.layers[1].merge_mode == "sum"
    y, _ = module(torch.as_tensor(ref["x"]))
    assert torch.as_tensor(ref["y"]).abs().max() > 0.05
    close(y, ref["y"], "output")
    assert read_keras_config(fixture("keras2_savedmodel"))["keras_version"].startswith("2.")
    saved = read_keras_weights(fixture("keras2_savedmodel"))
    keras_order = [ref[f"weights/{k}"] for k in range(len(saved))]
    assert all(np.array_equal(got, want) for got, want in zip(saved.values(), keras_order))
    for form in ("keras2_tf_weights", "keras2_tf_weights/weights", "keras2_tf_weights/weights.index"):
        assert read_keras_config(fixture(form)) is None
        weights = read_keras_weights(fixture(form))
        assert list(weights) == list(saved) and all(np.array_equal(weights[k], saved[k]) for k in saved), form
    plain = triton_lstm.load_keras(fixture("keras2_tf_weights"), layers=["inner", "bi"])
    assert [layer.lstm.hidden_size for layer in plain.layers] == [4, 3]


def test_keras2_savedmodel_from_before_tf_2_5(path, tmp_path):
    """A SavedModel as TF before 2.5 wrote it: no keras_metadata.pb, the config in saved_model.pb's
    object graph (the fixture's TF itself loaded so), against Keras' outputs; without metadata there
    (a SavedModel Keras did not write), its weights read without a config, as from save_weights."""
    ref = expected("keras2_savedmodel_legacy")
    folder = fixture("keras2_savedmodel_legacy")
    module = triton_lstm.load_keras(folder)
    assert [layer.name for layer in module.layers] == ["inner", "bi", "top"] and module.mask_value == 0.0
    assert module.layers[0].lstm.recurrent_activation == "hard_sigmoid" and module.layers[1].merge_mode == "sum"
    assert read_keras_config(folder)["keras_version"].startswith("2.")
    assert torch.as_tensor(ref["y"]).abs().max() > 0.05
    close(module(torch.as_tensor(ref["x"]))[0], ref["y"], "output")
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "saved_model.pb").write_bytes(b"")
    assert read_keras_config(bare) is None
    got, want = read_keras_weights(bare), read_keras_weights(folder)
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got.values(), want.values()))


def test_keras2_model_in_a_tf_train_checkpoint(path):
    """TF2's training-loop checkpoint, tf.train.Checkpoint(model=model, optimizer=adam): the model's layers
    found under the checkpoint's root, the optimizer's variables and slots left out; the same weights as
    the model's save_weights, which build with layers= (no config). Two models: an error."""
    got, want = read_keras_weights(fixture("keras2_tf_checkpoint")), read_keras_weights(fixture("keras2_tf_weights"))
    assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert read_keras_config(fixture("keras2_tf_checkpoint")) is None
    module = triton_lstm.load_keras(fixture("keras2_tf_checkpoint/ckpt-1"), layers=["inner", "bi"])
    assert [layer.lstm.hidden_size for layer in module.layers] == [4, 3]
    with pytest.raises(ValueError, match=r"keras2_tf_checkpoint_two_models: the checkpoint holds several models "
                                         r"under its root \(decoder, encoder\); one model's checkpoint is read$"):
        read_keras_weights(fixture("keras2_tf_checkpoint_two_models"))


@pytest.mark.parametrize("name", ["keras3_initial_state_masked.keras", "keras2_initial_state_masked.h5",
                                  "keras3_initial_state_explicit.keras"])
def test_keras_layer_given_initial_state_after_a_masking_layer(name, path):
    """An LSTM given initial_state after a Masking layer, loaded alone and given the states as hx:
    Keras 3 calls it without the mask (its padding runs as steps; the module masked it, 0.4 off),
    unless given one with mask= (the config's node holds it); Keras 2 with it. Against Keras'
    outputs, a row masked past 2 steps. A second LSTM after the first, which Keras 3 runs with the
    mask, would need another mask than the first: an error."""
    ref = expected(name.split(".")[0])
    module = triton_lstm.load_keras(fixture(name), layers=["dec"])
    assert (module.mask_value is None) == (name == "keras3_initial_state_masked.keras")
    hx = torch.as_tensor(ref["h"])[None], torch.as_tensor(ref["c"])[None]
    close(module(torch.as_tensor(ref["x"]), hx)[0], ref["y"], "output")
    with pytest.raises(ValueError, match=r"^layers: Keras runs 'dec' without a mask and \['dec2'\] after it with "
                                         r"one; a module runs its layers with one mask"):
        triton_lstm.load_keras(fixture("keras3_initial_state_then_lstm.keras"), layers=["dec", "dec2"])


@pytest.mark.parametrize("name", ["keras_initial_state.keras", "keras2_initial_state.h5"])
def test_keras_layer_started_from_another_layers_states(name):
    """A decoder given the encoder's final states (initial_state=): a chain would run it from zeros
    (it did, without a word), so the model is refused; loaded alone, it runs as Keras' given those
    states as hx (against Keras' outputs)."""
    path = fixture(name)
    for layers in (None, ["enc", "dec"]):
        with pytest.raises(ValueError, match=r"^layers: 'dec' takes 3 tensors from \['enc'\]: its input and more "
                                             r"\(initial_state=\.\.\.\), which a module of the chain does not pass"):
            triton_lstm.load_keras(path, layers=layers)
    if name.endswith(".keras"):
        ref = expected("keras_initial_state")
        x = torch.as_tensor(ref["x"])
        encoder, decoder = (triton_lstm.load_keras(path, layers=[n]) for n in ("enc", "dec"))
        y, states = encoder(x)
        close(decoder(y, states)[0], ref["y"], "decoder output")


@pytest.mark.parametrize("name,layer", [("keras2_nested_rnn.weights.h5", "rnn"), ("keras2_group.h5", "inner")])
def test_keras_weights_of_two_layers_under_one_name(name, layer):
    """Weights files without the config: tf-keras names a nested RNN(LSTMCell) and an outer RNN of cells
    both "rnn" (.weights.h5), and a save_weights .h5 keeps a nested model's layers in its one group.
    Their keys differ (<name>/kernel, <name>/cells/<k>/...), so no key clashed: one of the layers was
    read and the other dropped. Now an error."""
    with pytest.raises(ValueError, match=rf"{re.escape(name)}: two layers' weights read as '{layer}' in several "
                                         rf"layouts \(cells, its own\): a nested model's layers"):
        read_keras_weights(fixture(name))


@pytest.mark.parametrize("name", ["keras3_stateful.keras", "keras2_stateful_calls.h5", "keras3_stateful_last.keras",
                                  "keras2_stateful_calls_last.h5"])
def test_keras_stateful_layers_carry_their_states(name, path):
    """Stateful layers (after a Masking layer, a Bidirectional, a last one with go_backwards, or a
    last Bidirectional returning its last output): a call starts from the states the one before left
    (its masked row from its last valid step), against Keras' outputs of two calls in a row (before,
    each call started from zeros; a row masked whole output the kept h as its last output, where
    Keras gives zeros); reset_states() starts from zeros again. The states carry no gradient from one
    call to the next; hx given replaces them; another batch size is an error."""
    ref = expected(name.split(".")[0])
    module = triton_lstm.load_keras(fixture(name))
    assert all(layer.stateful for layer in module.layers)
    x1, x2 = torch.as_tensor(ref["x1"]), torch.as_tensor(ref["x2"])
    y1, _ = module(x1)
    y1.sum().backward()
    y2, (h, c) = module(x2)
    y2.sum().backward()      # the first call's graph, freed, is not reached
    close(y1, ref["y1"], "first call")
    close(y2, ref["y2"], "second call")
    with pytest.raises(ValueError, match=r"^input: layer 'first' is stateful and kept the states of a batch of 2 rows, "
                                         r"got 1; call reset_states\(\) first"):
        module(x1[:1])
    module.reset_states()
    close(module(x2)[0], ref["y2_reset"], "after reset_states")
    zeros = [torch.zeros_like(t) for t in h], [torch.zeros_like(t) for t in c]
    close(module(x2, zeros)[0], ref["y2_reset"], "from hx given as zeros, after a call")


def test_stateful_stack_checks_every_layers_batch_before_any_runs():
    """A call whose batch fits the first stateful layer's kept states but not a later one's is an
    error before any layer runs: the first layer kept the failed call's states before, and then fit
    neither batch size."""
    stack = LSTMStack([KerasRNN(LSTM(3, 4, batch_first=True), "a", stateful=True),
                       KerasRNN(LSTM(4, 2, batch_first=True), "b", stateful=True)])
    stack(torch.randn(3, 5, 3))
    stack.layers[0].reset_states()
    with pytest.raises(ValueError, match=r"^input: layer 'b' is stateful and kept the states of a batch of 3 rows, "
                                         r"got 2; call reset_states\(\) first"):
        stack(torch.randn(2, 5, 3))
    assert stack.layers[0].kept_h is None
    stack(torch.randn(3, 5, 3))


def test_keras_last_output_with_zero_output_for_mask():
    """A layer with zero_output_for_mask outputs zeros on masked steps, so its last output is zero
    for a row whose last step is masked (it gave the last valid h), as the last step of its
    sequence output; forwards, and backwards (whose last step is a row's first)."""
    torch.manual_seed(0)
    lstm = LSTM(3, 4, batch_first=True)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 0])
    for go_backwards in (False, True):
        layers = [KerasRNN(lstm, "l", go_backwards=go_backwards, zero_output_for_mask=True, return_sequences=seq)
                  for seq in (True, False)]
        sequence, last = (layer(x, lengths=lengths)[0] for layer in layers)
        torch.testing.assert_close(last, sequence[:, -1], rtol=0, atol=0)
        assert (last[1] == 0).all() != go_backwards and (last[2] == 0).all()


def test_keras_layer_pickled_before_stateful_loads():
    """A KerasRNN pickled whole before it had ``stateful`` (and its kept states) loads as a layer
    that is not stateful, with the same outputs."""
    layer = KerasRNN(LSTM(3, 4, batch_first=True), "old")
    state = layer.__getstate__()
    del state["stateful"]
    state["_buffers"] = {k: v for k, v in state["_buffers"].items() if not k.startswith("kept_")}
    state["_non_persistent_buffers_set"] = set()
    old = KerasRNN.__new__(KerasRNN)
    old.__setstate__(state)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(old(x)[0], layer(x)[0], rtol=0, atol=0)
    assert old.kept_h is None and "kept_h" not in old.state_dict()


def test_keras2_savedmodel_of_a_stateful_lstm(path):
    """A stateful LSTM's SavedModel saves its states beside its weights (under keras_api): they are no
    weights (read as a second layer's before, an error). The module's first call starts from zeros
    (the saved states are not read): Keras' outputs after reset_states."""
    ref = expected("keras2_savedmodel_stateful")
    assert sorted(read_keras_weights(fixture("keras2_savedmodel_stateful"))) == ["lstm/bias", "lstm/kernel",
                                                                                  "lstm/recurrent_kernel"]
    module = triton_lstm.load_keras(fixture("keras2_savedmodel_stateful"))
    close(module(torch.as_tensor(ref["x"]))[0], ref["y"], "output")


def test_keras_layer_called_twice_is_refused():
    """A model that calls one LSTM twice (lstm(lstm(x))): a module runs each layer once, and computed
    something else without a word."""
    with pytest.raises(ValueError, match=r"^layers: \['twice'\] called 2 times in the model \(a shared layer\); a "
                                         r"module runs each layer once, so this model is not supported$"):
        triton_lstm.load_keras(fixture("keras2_shared.h5"))


def test_keras2_savedmodel_of_a_sequential(path):
    """A Sequential's config lists its InputLayer, its list of layers (layer-<k> in the checkpoint) does
    not: each layer's weights under its own name, against Keras' outputs."""
    ref = expected("keras2_tf_format")
    module = triton_lstm.load_keras(fixture("keras2_savedmodel_sequential"))
    assert [layer.name for layer in module.layers] == ["first", "second"] and module.mask_value == 0.0
    close(module(torch.as_tensor(ref["x"]))[0], ref["y_sequential"], "output")


def test_object_graph_variables_are_read_once_each():
    """A node may list a child twice (under two names) and several nodes the same variable: each
    variable reachable from the layer comes once, in its nodes' order, never through the root."""
    from triton_lstm.keras_files import _reachable_variables
    nodes = [([(1, "layer-0")], [("root_var", "r")]),            # 0: the root
             ([(3, "variables"), (2, "cell"), (2, "alias"), (0, "root")], []),
             ([(4, "kernel"), (4, "kernel_alias"), (5, "bias")], []),
             ([(5, "0"), (4, "1")], []),
             ([], [("enc/kernel", "k")]),
             ([], [("enc/bias", "b")])]
    assert _reachable_variables(nodes, 1, 0) == [("enc/kernel", "k"), ("enc/bias", "b")]


def test_the_model_under_a_checkpoint_root_and_nothing_beside_it():
    """The model's node: the root where it lists layers; else the one child that does, with only an
    optimizer and a save counter beside it. A subclassed model holding a Sequential and a layer of
    its own: the layer would be left out, an error."""
    from triton_lstm.keras_files import _model_node
    layer = ([], [("lstm/kernel", "k")])
    model = ([(1, "layer-0"), (1, "layer_with_weights-0")], [])
    assert _model_node([([(1, "layer-0")], []), layer], "f") == 0
    beside = [(2, "optimizer"), (3, "save_counter")]
    nodes = [([(4, "model"), *beside], []), layer, ([], [("Adam/iter", "i")]), ([], [("save_counter", "s")]), model]
    assert _model_node(nodes, "f") == 4
    subclassed = [([(4, "body"), (2, "head")], []), layer, ([], [("head/kernel", "h")]), ([], []), model]
    with pytest.raises(ValueError, match=r"^f: the checkpoint holds variables beside the model 'body', under "
                                         r"\['head'\] \(a subclassed model's own layers\?\), which are not read"):
        _model_node(subclassed, "f")
    assert _model_node([([(1, "encoder")], []), layer], "f") == 0   # no model: the root, for its error


def test_tf_format_errors_name_the_file(tmp_path):
    for keras_checkpoint in ("keras2_tf_weights", "keras2_savedmodel/variables/variables"):
        with pytest.raises(ValueError, match=r"this checkpoint is object-based \(TF2\): for a Keras model's "
                                             r".*use triton_lstm.load_keras"):
            triton_lstm.load_tf_checkpoint(fixture(keras_checkpoint))
    with pytest.raises(ValueError, match=r"keras2_subclassed_weights: no variable belongs to a layer of a model's "
                                         r"list \(layer-<k>\): a subclassed model's \(also in a tf.train.Checkpoint\)"):
        read_keras_weights(fixture("keras2_subclassed_weights"))
    with pytest.raises(ValueError, match=r"tf1_multi: a TensorFlow checkpoint without an object graph \(a TF1 "
                                         r"Saver's, its variables named by scope\): read it with "
                                         r"triton_lstm.load_tf_checkpoint"):
        read_keras_weights(fixture("tf1_multi"))
    folder = tmp_path / "saved"
    shutil.copytree(fixture("keras2_savedmodel"), folder)
    metadata = folder / "keras_metadata.pb"
    metadata.write_bytes(metadata.read_bytes().replace(b'"model_config": {', b'"model_config": ['))
    for read in (read_keras_weights, read_keras_config):
        with pytest.raises(ValueError, match=re.escape(str(metadata)) + r": the model's metadata is not valid JSON"):
            read(folder)


def test_keras_weights_files_of_nested_models():
    """Keras 3's .weights.h5 keeps each layer's own name: the same weights as its .keras and legacy .h5.
    tf-keras' names nested layers by class alone: the nested "lstm" meets the outer one, an error."""
    want = read_keras_weights(fixture("keras_nested.keras"))
    for other in ("keras_nested.weights.h5", "keras_nested.h5"):
        got = read_keras_weights(fixture(other))
        assert sorted(got) == sorted(want), other
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{other} {key}")
    tf_keras = read_keras_weights(fixture("keras2_names.h5"))  # keyed by the weights' own names
    for key, value in read_keras_weights(fixture("keras2_names.keras")).items():
        np.testing.assert_array_equal(value, tf_keras[key], err_msg=key)
    with pytest.raises(ValueError, match=r"keras2_names\.weights\.h5: two layers' weights read as 'lstm/.*': a nested "
                                         r"model's layers"):
        read_keras_weights(fixture("keras2_names.weights.h5"))


def test_keras_rnn_of_lstm_cells(path):
    ref = expected("keras_rnn_cell")
    module = triton_lstm.load_keras(fixture("keras_rnn_cell.keras"))
    assert module.layers[0].lstm.activation == "relu" and module.layers[1].merge_mode == "sum"
    close(module(torch.as_tensor(ref["x"]))[0], ref["y"], "RNN(LSTMCell) then Bidirectional(RNN(LSTMCell))")


def test_keras_mask_made_before_other_layers_must_be_given():
    """Masking -> Dense -> LSTM: Keras carries the mask through the Dense, whose outputs are not zero on
    the padded steps; the stack cannot find that mask in its input and says so."""
    ref = expected("keras_masked_dense")
    module = triton_lstm.load_keras(fixture("keras_masked_dense.keras"))
    x = torch.as_tensor(ref["x"])
    dense = x @ torch.as_tensor(ref["weights/dense/0"]) + torch.as_tensor(ref["weights/dense/1"])
    with pytest.raises(ValueError, match=r"^mask: the model's Masking layer 'masking' makes the mask from its input "
                                         r"and \['dense'\] follow it: pass mask=\(x != 0\.0\)\.any\(-1\)"):
        module(dense)
    close(module(dense, mask=(x != 0).any(-1))[0], ref["y"], "mask given")
    close(module(dense, lengths=torch.as_tensor(ref["lengths"]))[0], ref["y"], "lengths given")
    config = read_keras_config(fixture("keras_masked_dense.keras"))
    embedding = {"name": "tokens", "class_name": "Embedding", "config": {"name": "tokens", "mask_zero": True}}
    config["layers"] = [embedding if e["class_name"] == "Dense" else e for e in config["layers"]
                        if e["class_name"] != "Masking"]
    weights = read_keras_weights(fixture("keras_masked_dense.keras"))
    with pytest.raises(ValueError, match=r"^mask: the model's Embedding layer 'tokens' makes the mask from the token "
                                         r"ids \(mask_zero\): pass mask=tokens != 0, or lengths=$"):
        keras_to_module(weights, config)(dense)
    # A layer that drops Keras' mask (Conv1D) leaves the LSTMs none (and Keras 3's node of the LSTM
    # then records none); one we do not know, a hint.
    for cls, outcome in (("Conv1D", None), ("MyLayer", r"\['dense'\] drop Keras' mask, .* pass the full lengths\)$")):
        config = read_keras_config(fixture("keras_masked_dense.keras"))
        config["layers"] = [dict(e, class_name=cls) if e["class_name"] == "Dense" else
                            dict(e, masked=cls != "Conv1D") if e["class_name"] == "LSTM" else e for e in config["layers"]]
        module = keras_to_module(weights, config)
        assert module.mask_value is None
        if outcome is None:
            assert module.requires_mask is None
        else:
            with pytest.raises(ValueError, match=outcome):
                module(dense)


def test_keras_port_keeps_float64_and_explains_weights_only_guesses():
    lstm = LSTM(3, 4, batch_first=True, dtype=torch.float64)
    module = keras_to_module(module_to_keras(lstm), layers=["lstm"])
    assert module.layers[0].lstm.weight_ih_l0.dtype == torch.float64
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x)[0], lstm(x)[0], rtol=1e-12, atol=1e-12)
    gru = {"gru/kernel": np.zeros((3, 12)), "gru/recurrent_kernel": np.zeros((4, 12)), "gru/bias": np.zeros(12)}
    with pytest.raises(ValueError, match=r"^weights: layer gru: recurrent_kernel: .* \(without a model config every layer with "
                                         r"these weights is taken as an LSTM\)"):
        keras_to_module(gru, layers=["gru"])
    with pytest.raises(ValueError, match=r"^layers: the file has no LSTM layer \(no model config: none has an LSTM's "
                                         r"recurrent_kernel \[N, 4N\]\); the layers its weights name: \['gru'\]$"):
        keras_to_module(gru)
    halves = {f"bi/{d}/{w}": np.zeros(shape) for d, n in (("forward", 4), ("backward", 2))
              for w, shape in (("kernel", (3, 4 * n)), ("recurrent_kernel", (n, 4 * n)), ("bias", (4 * n,)))}
    with pytest.raises(ValueError, match=r"^weights: 'bi' is a Bidirectional whose backward layer differs"):
        keras_to_module(halves)


def test_stack_of_lstms_to_keras_names_each_layer_and_loads_back():
    """Keras names a model's layers lstm, lstm_1, ... (bidirectional, ...): each layer keeps its own."""
    stack = LSTMStack([LSTM(3, 4, batch_first=True), LSTM(4, 5, batch_first=True, forget_bias=1.0),
                       LSTM(5, 2, batch_first=True, bidirectional=True)])
    weights = module_to_keras(stack)
    assert sorted({k.rsplit("/", 1)[0] for k in weights}) == [
        "bidirectional/backward", "bidirectional/forward", "lstm", "lstm_1"]
    back = keras_to_module(weights, layers=["lstm", "lstm_1", "bidirectional"])
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(back(x)[0], stack(x)[0], **TOL)


def test_checkpoint_missing_part_of_a_stack_is_an_error():
    """A stack that lost a layer or a direction must not load as a smaller one."""
    two = module_to_tf(LSTM(3, 5, num_layers=2, batch_first=True))
    no_kernel = {k: v for k, v in two.items() if k != "rnn/multi_rnn_cell/cell_0/lstm_cell/kernel"}
    with pytest.raises(ValueError, match=r"^variables: 'rnn/multi_rnn_cell/cell_0/lstm_cell/bias' has no "
                                         r"'rnn/multi_rnn_cell/cell_0/lstm_cell/kernel'"):
        tf_to_module(no_kernel)
    no_layer_0 = {k: v for k, v in two.items() if "cell_0" not in k}
    with pytest.raises(ValueError, match=r"^variables: stack 'rnn' has layers \[1\]; expected consecutive layers "
                                         r"from 0"):
        tf_to_module(no_layer_0)
    # A scope may pick one layer of a stack; another stack's cells (a bias-free one here) do not count.
    layer_1 = tf_to_module(two, scope="rnn/multi_rnn_cell/cell_1")
    assert isinstance(layer_1, LSTM) and layer_1.num_layers == 1 and layer_1.input_size == 5
    with_decoder = dict(two, **{"decoder/lstm_cell/kernel": np.zeros((10, 20), np.float32)})
    assert tf_to_module(with_decoder, scope="rnn").num_layers == 2
    bidi = module_to_tf(LSTM(3, 5, bidirectional=True, batch_first=True))
    del bidi["bidirectional_rnn/bw/lstm_cell/kernel"]
    with pytest.raises(ValueError, match=r"'bidirectional_rnn/bw/lstm_cell/bias' has no"):
        tf_to_module(bidi)


def test_checkpoint_shapes_name_the_variable():
    variables = module_to_tf(LSTM(3, 5, batch_first=True, use_peepholes=True, proj_size=2))
    short = dict(variables, **{"rnn/lstm_cell/w_i_diag": variables["rnn/lstm_cell/w_i_diag"][:-1]})
    with pytest.raises(ValueError, match=r"^rnn/lstm_cell/w_i_diag: expected shape \(5,\) \(num_units\), got \(4,\)"):
        tf_to_module(short)
    no_inputs = dict(variables, **{"rnn/lstm_cell/kernel": variables["rnn/lstm_cell/kernel"][3:]})
    with pytest.raises(ValueError, match=r"^rnn/lstm_cell/kernel: expected input_size \+ 2 \(output size\) rows"):
        tf_to_module(no_inputs)
    wrong_proj = dict(variables, **{"rnn/lstm_cell/projection/kernel": np.zeros((4, 2), np.float32)})
    with pytest.raises(ValueError, match=r"^rnn/lstm_cell/projection/kernel: expected shape \[5 \(num_units\)"):
        tf_to_module(wrong_proj)


def test_per_layer_forget_bias_both_ways():
    """The forget biases a TF1 file's cells were built with, per layer, give its variables back; per-layer
    values may be a list or an array; a stack whose layers differ in direction has no TF1 layout."""
    variables = {k: v for k, v in read_tf_checkpoint(fixture("tf1_multi")).items() if k != "global_step"}
    module = tf_to_module(variables, forget_bias=np.array([1.0, 0.5]), cell_clip=[0.8, None])
    assert [layer.forget_bias for layer in module.layers] == [1.0, 0.5]
    back = module_to_tf(module, forget_bias=[1.0, 0.5])
    for key in variables:
        np.testing.assert_allclose(back[key], variables[key], atol=1e-7, err_msg=key)
    with pytest.raises(ValueError, match=r"^forget_bias: expected one value or 2 \(one per layer\), got 3"):
        module_to_tf(module, forget_bias=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"^forget_bias: expected a finite number, got '1'"):
        module_to_tf(module, forget_bias="1")
    mixed = LSTMStack([LSTM(3, 4, batch_first=True), LSTM(4, 2, batch_first=True, bidirectional=True)])
    with pytest.raises(ValueError, match=r"^module: an LSTMStack whose layers differ in direction"):
        module_to_tf(mixed)


@pytest.mark.parametrize("form", ["reversed-array", "uint32"])
def test_keras_modules_take_lengths_in_any_integer_layout(form):
    """As the sequence op takes them: a reversed numpy view, an unsigned tensor wider than 8 bits."""
    torch.manual_seed(0)
    layer = KerasRNN(LSTM(3, 4, batch_first=True), "a")
    x = torch.randn(3, 5, 3)
    given = {"reversed-array": np.array([1, 5, 2])[::-1], "uint32": torch.tensor([2, 5, 1]).to(torch.uint32)}[form]
    out, _ = layer(x, lengths=given)
    want, _ = layer(x, lengths=torch.tensor([2, 5, 1]))
    assert torch.equal(out, want)
    too_long = {"reversed-array": np.array([1, 6, 2])[::-1], "uint32": torch.tensor([2, 6, 1]).to(torch.uint32)}[form]
    with pytest.raises(ValueError, match=r"^lengths: expected 3 values in \[0, 5\], got \[2, 6, 1\]"):
        layer(x, lengths=too_long)


def _pruned(lstm):
    torch.nn.utils.prune.l1_unstructured(lstm, "weight_ih_l0", 0.3)
    return lstm


def _weight_normed(lstm):
    torch.nn.utils.parametrizations.weight_norm(lstm, "weight_hh_l0")
    return lstm


@pytest.mark.parametrize("module, message", [
    (lambda: LSTM(3, 4, recurrent_activation="hard_sigmoid"),
     r"^module_to_tf: recurrent_activation='hard_sigmoid' \(cell 'lstm_cell'\); TF1's LSTMCell computes its gates "
     r"with sigmoid only"),
    (lambda: _pruned(LSTM(3, 4)), r"^module_to_tf: weight_ih_l0 computed from other parameters \(pruned or "
                                  r"parametrized\)"),
    (lambda: _weight_normed(LSTM(3, 4)), r"^module_to_tf: weight_hh_l0 computed from other parameters"),
    (lambda: LSTMStack([KerasRNN(LSTM(3, 4, batch_first=True), "enc")]),
     r"got LSTMStack; TF1 has no layout for its layer 0, a Keras layer \('enc'; module_to_keras exports it"),
    (lambda: LSTMStack([LSTM(3, 4, num_layers=2, batch_first=True), LSTM(4, 4, batch_first=True)]),
     r"got LSTMStack; TF1 has no layout for its layer 0, an LSTM of num_layers=2 inside a stack"),
    (lambda: Bidirectional(LSTM(3, 4, batch_first=True), LSTM(3, 4, batch_first=True), merge_mode="sum"),
     r"got Bidirectional; TF1 has no layout for a Bidirectional with merge_mode='sum'"),
    (lambda: LSTMStack([LSTMStack([LSTM(3, 4, batch_first=True)])]),   # raised a bare StopIteration
     r"got LSTMStack; TF1 has no layout for its layer 0, an LSTMStack inside a stack \(give the outer stack its "
     r"layers: LSTMStack\(\[\*inner.layers, \.\.\.\]\)\)$"),
    (lambda: torch.nn.LSTM(3, 4), r"got LSTM; TF1 has no layout for torch's nn.LSTM \(load its state dict into a "
                                  r"triton_lstm.LSTM"),
    (lambda: triton_lstm.LSTMCell(4, input_size=3), r"got LSTMCell; TF1 has no layout for an LSTMCell as a module of "
                                                    r"layers \(its own tf_weights\(\) gives TF's variables\)$"),
], ids=["gates", "pruned", "parametrized", "keras-layer", "multi-layer-in-stack", "sum-merge", "stack-in-stack",
        "torch-lstm", "cell"])
def test_module_to_tf_names_what_has_no_tf1_form(module, message):
    """Each of these exported silently wrong (TF computes sigmoid gates; the weights of a pruned or
    parametrized LSTM are not under their names) or with an error that named only the class."""
    with pytest.raises(ValueError, match=message):
        module_to_tf(module())


@pytest.mark.parametrize("edit", [_pruned, _weight_normed])
def test_module_to_keras_refuses_computed_weights(edit):
    with pytest.raises(ValueError, match=r"^module_to_keras: weight_.._l0 computed from other parameters"):
        module_to_keras(edit(LSTM(3, 4, batch_first=True)))


@pytest.mark.parametrize("kind", ["LSTMStack", "Bidirectional", "KerasRNN"])
def test_ported_modules_take_a_mask_as_the_lengths_it_holds(kind):
    """The porting modules share one call: a Keras mask (valid steps first) gives what its lengths give."""
    torch.manual_seed(0)

    def lstm(**kw):
        return LSTM(3, 4, batch_first=True, use_peepholes=True, **kw)

    module = {"LSTMStack": lambda: LSTMStack([KerasRNN(lstm(), "a"), KerasRNN(LSTM(4, 4, batch_first=True), "b")]),
              "Bidirectional": lambda: Bidirectional(lstm(), lstm()),
              "KerasRNN": lambda: KerasRNN(lstm(bidirectional=True), "bi")}[kind]()
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 0])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    want, (h_want, c_want) = module(x, lengths=lengths)
    got, (h, c) = module(x, mask=mask)
    assert not torch.equal(want, module(x)[0])  # the lengths matter here
    for name, a, b in [("output", got, want), ("h_n", h, h_want), ("c_n", c, c_want)]:
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["stack", "bidirectional", "keras-bi", "keras-backwards"])
def test_an_empty_row_takes_no_gradient_from_its_padding_or_state(kind, path):
    """A row of length 0 runs no step: NaN in its padding and initial state (never read) leaves every
    other gradient as with zeros there; its padding gets a zero gradient and its initial state the
    final state's, passed straight through."""
    torch.manual_seed(0)

    def lstm(bidirectional=False):
        return LSTM(3, 4, batch_first=True, use_peepholes=True, cell_clip=2.0, bidirectional=bidirectional)

    module = {"stack": lambda: LSTMStack([lstm()]), "bidirectional": lambda: Bidirectional(lstm(), lstm()),
              "keras-bi": lambda: KerasRNN(lstm(True), "bi"),
              "keras-backwards": lambda: KerasRNN(lstm(), "rev", go_backwards=True)}[kind]()
    states = module.state_count
    lengths = torch.tensor([3, 0, 2])
    x, h0, c0 = torch.randn(3, 3, 3), torch.randn(states, 3, 4), torch.randn(states, 3, 4)

    def grads(fill):
        leaves = [v.clone() for v in (x, h0, c0)]
        leaves[0][1], leaves[1][:, 1], leaves[2][:, 1] = fill, fill, fill
        leaves = [v.requires_grad_() for v in leaves]
        out, (h, c) = module(leaves[0], (leaves[1], leaves[2]), lengths=lengths)
        given = torch.Generator().manual_seed(1)
        return torch.autograd.grad((out, h, c), leaves + list(module.parameters()),
                                   [torch.randn(r.shape, generator=given) for r in (out, h, c)])

    with_nan, with_zeros = grads(float("nan")), grads(0.0)
    for k, (a, b) in enumerate(zip(with_nan, with_zeros)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"gradient {k}: {m}")
    assert (with_nan[0][1] == 0).all()


@pytest.mark.parametrize("given", ["tensor", "list", "array", "range"])
@pytest.mark.parametrize("kind", ["stack", "bidirectional", "keras-last"])
def test_keras_modules_take_a_batch_without_rows_with_lengths(kind, given):
    """Zero rows with their (zero) lengths: empty outputs and states, as without lengths (a
    PackedSequence cannot hold no rows; an empty list or array is no float tensor of lengths)."""
    module = {"stack": lambda: LSTMStack([LSTM(3, 4, batch_first=True)]),
              "bidirectional": lambda: Bidirectional(LSTM(3, 4, batch_first=True), LSTM(3, 4, batch_first=True)),
              "keras-last": lambda: KerasRNN(LSTM(3, 4, batch_first=True), "a", return_sequences=False)}[kind]()
    x = torch.randn(0, 5, 3)
    lengths = {"tensor": torch.zeros(0, dtype=torch.long), "list": [], "array": np.array([]), "range": range(0)}[given]
    out, (h, c) = module(x, lengths=lengths)
    want, (h_want, c_want) = module(x)
    assert out.shape == want.shape and h.shape == h_want.shape and c.shape == c_want.shape
