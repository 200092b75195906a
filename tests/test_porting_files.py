"""Corrupt and malformed checkpoint and Keras files: clear errors naming the file."""
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest

from test_porting import fixture
from triton_lstm.convert import read_keras_config, read_keras_weights, read_tf_checkpoint
from triton_lstm.tf_checkpoint import crc32c, mask_crc

DATA_BLOCK = 327  # bytes in the one data block of tf1_multi/model.ckpt-7.index, which starts the file


# ----------------------------------------------------------------------------------- Keras files
def keras_copy(tmp_path, name="keras_stacked.keras", members=None):
    """A copy of a fixture in tmp_path; for a .keras, with the zip members in ``members`` replaced."""
    path = tmp_path / name
    if members is None:
        shutil.copy(fixture(name), path)
        return path
    with zipfile.ZipFile(fixture(name)) as src, zipfile.ZipFile(path, "w") as z:
        for member in src.namelist():
            z.writestr(member, members.get(member, src.read(member)))
    return path


def test_keras_layer_names_repeated_across_nested_models(tmp_path):
    """tf-keras' .keras names its weights by class and place, the config by the layers' names: the outer
    LSTM renamed "lstm", as one inside the nested model is named, is an error, not one set of weights."""
    config = zipfile.ZipFile(fixture("keras2_names.keras")).read("config.json").decode()
    assert config.count('"name": "top"') == 2  # the layer's own entry and its entry's config
    path = keras_copy(tmp_path, "keras2_names.keras", {"config.json": config.replace('"name": "top"', '"name": "lstm"')})
    with pytest.raises(ValueError, match=r"two layers' weights read as 'lstm/.*': two layers of its nested models "
                                         r"share a name; not supported"):
        read_keras_weights(str(path))


def flipped_keras(tmp_path):
    path = keras_copy(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside model.weights.h5
    path.write_bytes(bytes(data))
    return path


def truncated(tmp_path, name, size):
    path = keras_copy(tmp_path, name)
    path.write_bytes(path.read_bytes()[:size])
    return path


def keras2_edited(tmp_path, edit):
    h5py = pytest.importorskip("h5py")
    path = keras_copy(tmp_path, "keras2.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def set_model_config(f):
    f.attrs["model_config"] = "{broken"


def delete_layer(f):
    del f["model_weights/bi"]


def delete_weight(f):
    del f["model_weights/top/top/lstm_cell/kernel:0"]


@pytest.mark.parametrize("make, reader, message", [
    pytest.param(flipped_keras, read_keras_weights,
                 r": the \.keras archive cannot be read: corrupt or truncated\? \(BadZipFile: Bad CRC-32",
                 id="flipped"),
    pytest.param(lambda t: truncated(t, "keras_stacked.keras", 20000), read_keras_weights,
                 r"' starts as a zip \(\.keras archive\) but is corrupt or truncated", id="truncated-keras"),
    pytest.param(lambda t: keras_copy(t, members={"model.weights.h5": b"garbage"}), read_keras_weights,
                 r": its model\.weights\.h5 cannot be read: corrupt or truncated\? \(OSError: ", id="garbage-weights"),
    pytest.param(lambda t: keras_copy(t, members={"model.weights.h5": b""}), read_keras_config,
                 r": its model\.weights\.h5 cannot be read: corrupt or truncated\? \(OSError: ", id="empty-weights"),
    pytest.param(lambda t: keras_copy(t, members={"config.json": b"{not json"}), read_keras_config,
                 r": config\.json is not valid JSON: corrupt file\?", id="config-not-json"),
    pytest.param(lambda t: keras_copy(t, members={"config.json": b"[1, 2]"}), read_keras_weights,
                 r": config\.json holds a JSON list where Keras writes an object", id="config-list"),
    pytest.param(lambda t: keras_copy(t, members={"config.json": json.dumps({"config": {"layers": [{}]}})}),
                 read_keras_config, r": layer 0 of the model config has no name, class_name or config",
                 id="config-layer"),
    pytest.param(lambda t: keras2_edited(t, set_model_config), read_keras_config,
                 r": the model_config attribute is not valid JSON", id="keras2-model-config"),
    pytest.param(lambda t: truncated(t, "keras2.h5", 11308), read_keras_weights,
                 r": the HDF5 \(\.h5\) file cannot be read: corrupt or truncated\? \(OSError: .*truncated file",
                 id="truncated-h5"),
    pytest.param(lambda t: keras2_edited(t, delete_layer), read_keras_weights,
                 r": layer 'bi' is in layer_names but has no group: corrupt file", id="keras2-no-layer"),
    pytest.param(lambda t: keras2_edited(t, delete_weight), read_keras_weights,
                 r": weight 'top/lstm_cell/kernel:0' of layer 'top' is in its weight_names but has no dataset",
                 id="keras2-no-weight"),
])
def test_keras_file_errors_name_the_file(make, reader, message, tmp_path):
    pytest.importorskip("h5py")
    path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + message):
        reader(path)


# ------------------------------------------------------------------------------ TF checkpoints
def checkpoint_copy(tmp_path):
    folder = tmp_path / "tf1_multi"
    shutil.copytree(fixture("tf1_multi"), folder)
    return folder, folder / "model.ckpt-7.index", folder / "checkpoint"


def index_edit(offset, bit):
    """tf1_multi with bit ``bit`` of byte ``offset`` of its index's data block flipped and the block's
    checksum recomputed, so the malformed entry gets past the checksum."""
    def make(tmp_path):
        folder, index, _ = checkpoint_copy(tmp_path)
        data = bytearray(index.read_bytes())
        trailer = slice(DATA_BLOCK + 1, DATA_BLOCK + 5)
        assert mask_crc(crc32c(bytes(data[:DATA_BLOCK + 1]))) == int.from_bytes(data[trailer], "little")
        data[offset] ^= bit
        data[trailer] = mask_crc(crc32c(bytes(data[:DATA_BLOCK + 1]))).to_bytes(4, "little")
        index.write_bytes(bytes(data))
        return folder, index
    return make


def state_file(text):
    def make(tmp_path):
        folder, _, state = checkpoint_copy(tmp_path)
        state.write_bytes(text)
        return folder, state
    return make


@pytest.mark.parametrize("make, message", [
    pytest.param(state_file(b"\xff\xfe x"), r"' is not UTF-8 text or has a malformed model_checkpoint_path",
                 id="state-not-utf8"),
    pytest.param(state_file(b'model_checkpoint_path: "model.ckpt\\x"\n'),
                 r"' is not UTF-8 text or has a malformed model_checkpoint_path", id="state-bad-escape"),
    pytest.param(index_edit(25, 0x02), r": entry 'global_step': malformed protobuf \(field 2 has the wrong wire type",
                 id="entry-shape"),
    pytest.param(index_edit(25, 0x08), r": entry 'global_step': malformed protobuf \(field 3 has the wrong wire type",
                 id="entry-shard"),
    pytest.param(index_edit(5, 0x10), r": header: malformed protobuf \(field 1 has the wrong wire type",
                 id="header-num-shards"),
])
def test_checkpoint_errors_name_the_file(make, message, tmp_path):
    folder, path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + message):
        read_tf_checkpoint(folder)


def test_checkpoint_state_path_escapes_and_path_types(tmp_path):
    """TF writes a non-ASCII path in the state file as octal escapes of its UTF-8 bytes."""
    want = read_tf_checkpoint(fixture("tf1_multi"))
    (tmp_path / "模型").mkdir()
    for f in ("model.ckpt-7.index", "model.ckpt-7.data-00000-of-00001"):
        shutil.copy(fixture(f"tf1_multi/{f}"), tmp_path / "模型" / f)
    for line in ('"\\346\\250\\241\\345\\236\\213/model.ckpt-7"', '"模型/model.ckpt-7"'):
        (tmp_path / "checkpoint").write_text(f"model_checkpoint_path: {line}\n", encoding="utf-8")
        got = read_tf_checkpoint(tmp_path)
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want), line
    assert sorted(read_tf_checkpoint(os.fsencode(fixture("tf1_multi")))) == sorted(want)
    for reader in (read_tf_checkpoint, read_keras_weights):
        with pytest.raises(TypeError, match=r"path: expected a file path \(str or os\.PathLike\), got int"):
            reader(3)


def test_keras_reader_does_not_relabel_its_own_errors(monkeypatch):
    """Only the zip and HDF5 libraries' errors mean a damaged file: an error of the reader's own code
    (here a stand-in for its weight walk that raises KeyError) reaches the caller as it is."""
    from triton_lstm import keras_files

    def broken_walk(f, where, layers):
        raise KeyError("a bug of the reader")

    monkeypatch.setattr(keras_files, "_keras3_weights", broken_walk)
    with pytest.raises(KeyError, match="a bug of the reader"):
        read_keras_weights(fixture("keras_stacked.keras"))
