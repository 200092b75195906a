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
from triton_lstm.tf_checkpoint import _proto_fields, _read_table, crc32c, mask_crc

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


def h5_edited(tmp_path, edit, name="keras2.h5"):
    """The .h5 fixture ``name`` (Keras 2's layout; keras_nested.weights.h5: Keras 3's) edited by ``edit``."""
    h5py = pytest.importorskip("h5py")
    path = keras_copy(tmp_path, name)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def set_model_config(f):
    f.attrs["model_config"] = "{broken"


def delete_layer(f):
    del f["model_weights/bi"]


def delete_weight(f):
    del f["model_weights/top/top/lstm_cell/kernel:0"]


def scalar_layer_names(f):
    f["model_weights"].attrs["layer_names"] = 5


def scalar_weight_names(f):
    f["model_weights/top"].attrs["weight_names"] = 7


def huge_weight(name):
    """The weight at ``name`` replaced by a dataset that declares 10 GB (50000 x 50000 float32) in chunks
    never written: HDF5 reads them as zeros, the file stays small."""
    def edit(f):
        del f[name]
        f.create_dataset(name, shape=(50000, 50000), dtype="f4", chunks=(1000, 1000))
    return edit


def layers_a_dataset(f):
    del f["layers"]
    f["layers"] = np.zeros(3)


def nested_layers_linked_back(f):
    """A model of one nested model whose layers group is the model's own (a soft link): a cycle."""
    h5py = pytest.importorskip("h5py")
    for name in list(f["layers"]):
        del f["layers"][name]
    f["layers"].create_group("seq")
    f["layers/seq/layers"] = h5py.SoftLink("/layers")


def bad_inbound_config(tmp_path):
    """keras_stacked.keras with a layer's input tensor's config a string."""
    config = json.loads(zipfile.ZipFile(fixture("keras_stacked.keras")).read("config.json"))
    layer = next(layer for layer in config["config"]["layers"] if layer["name"] == "lstm_b")
    layer["inbound_nodes"][0]["args"][0]["config"] = "broken"
    return keras_copy(tmp_path, members={"config.json": json.dumps(config)})


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
    pytest.param(lambda t: h5_edited(t, set_model_config), read_keras_config,
                 r": the model_config attribute is not valid JSON", id="keras2-model-config"),
    pytest.param(lambda t: truncated(t, "keras2.h5", 11308), read_keras_weights,
                 r": the HDF5 \(\.h5\) file cannot be read: corrupt or truncated\? \(OSError: .*truncated file",
                 id="truncated-h5"),
    pytest.param(lambda t: h5_edited(t, delete_layer), read_keras_weights,
                 r": layer 'bi' is in layer_names but has no group: corrupt file", id="keras2-no-layer"),
    pytest.param(lambda t: h5_edited(t, delete_weight), read_keras_weights,
                 r": weight 'top/lstm_cell/kernel:0' of layer 'top' is in its weight_names but has no dataset",
                 id="keras2-no-weight"),
    pytest.param(lambda t: keras_copy(t, members={"config.json": b"[" * 100000 + b"]" * 100000}), read_keras_config,
                 r": config\.json is not valid JSON: corrupt file\? \(RecursionError: ", id="config-nested-deep"),
    pytest.param(lambda t: keras_copy(t, members={"metadata.json": b'{"keras_version": ' + b"9" * 5000 + b"}"}),
                 read_keras_weights, r": metadata\.json is not valid JSON: corrupt file\? \(ValueError: Exceeds",
                 id="metadata-huge-integer"),
    pytest.param(lambda t: h5_edited(t, scalar_layer_names), read_keras_weights,
                 r": the 'layer_names' attribute is not a list of names: corrupt file", id="keras2-layer-names"),
    pytest.param(lambda t: h5_edited(t, scalar_weight_names), read_keras_weights,
                 r": the 'weight_names' of layer 'top' are not a list of names: corrupt file",
                 id="keras2-weight-names"),
    pytest.param(lambda t: h5_edited(t, huge_weight("model_weights/top/top/lstm_cell/kernel:0")),
                 read_keras_weights, r": weight 'top/lstm_cell/kernel:0' declares shape \(50000, 50000\) "
                 r"\(10000000000 bytes\) but the file stores 0 bytes of it: corrupt file", id="keras2-huge-weight"),
    pytest.param(lambda t: h5_edited(t, huge_weight("layers/lstm/cell/vars/0"), "keras_nested.weights.h5"),
                 read_keras_weights,
                 r": weight 'cell/vars/0' declares shape \(50000, 50000\)", id="keras3-huge-weight"),
    pytest.param(lambda t: h5_edited(t, layers_a_dataset, "keras_nested.weights.h5"), read_keras_weights,
                 r": no 'layers' group: not a Keras weights file", id="keras3-layers-dataset"),
    pytest.param(lambda t: h5_edited(t, nested_layers_linked_back, "keras_nested.weights.h5"), read_keras_weights,
                 r": models nested more than 64 deep at 'layers/seq/layers/seq/", id="keras3-cycle"),
    pytest.param(bad_inbound_config, read_keras_config,
                 r": layer 'lstm_b': an input of its inbound node is no Keras tensor \(no keras_history\): "
                 r"corrupt file",
                 id="inbound-not-a-tensor"),
])
def test_keras_file_errors_name_the_file(make, reader, message, tmp_path):
    pytest.importorskip("h5py")
    path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + message):
        reader(path)


def older_keras2_names(f):
    """keras2.h5's weights under the names older writers gave them: standalone Keras 2.2 and TF1's
    tf.keras have no cell scope (bi/forward_lstm/kernel:0), and TF1's graph mode suffixes a layer's
    scope (bi_1/...)."""
    root = f["model_weights"]
    for layer in ("bi", "top"):
        group, names = root[layer], []
        for weight in group.attrs["weight_names"]:
            weight = weight.decode() if isinstance(weight, bytes) else weight
            old = weight.replace("/lstm_cell", "").replace(f"{layer}/", f"{layer}_1/", 1)
            group.move(weight, old)
            names.append(old.encode())
        group.attrs["weight_names"] = names


def filed_differently(f):
    """A layer without weights whose weight_names is an empty dataspace, and the top layer's kernel
    replaced by a gzip-compressed 32 MiB constant (over 1024 times smaller stored)."""
    pytest.importorskip("h5py")
    import h5py
    f["model_weights/input_1"].attrs["weight_names"] = h5py.Empty("S1")
    name = "model_weights/top/top/lstm_cell/kernel:0"
    del f[name]
    f.create_dataset(name, data=np.full((4096, 2048), 0.5, np.float32), chunks=(4096, 2048), compression="gzip",
                     compression_opts=9)


def test_keras2_files_of_other_writers_read_as_their_weights(tmp_path):
    """The same weights, however the .h5 names or stores them (``older_keras2_names``, ``filed_differently``)."""
    want = read_keras_weights(fixture("keras2.h5"))
    (tmp_path / "older").mkdir()
    (tmp_path / "other").mkdir()
    older = read_keras_weights(h5_edited(tmp_path / "older", older_keras2_names))
    assert sorted(older) == sorted(want) and all(np.array_equal(older[k], want[k]) for k in want)
    other = read_keras_weights(h5_edited(tmp_path / "other", filed_differently))
    assert np.array_equal(other["top/kernel"], np.full((4096, 2048), 0.5, np.float32))
    assert all(np.array_equal(other[k], want[k]) for k in want if k != "top/kernel")


def config_edited(tmp_path, name, layer, edit):
    """The .keras fixture ``name`` with ``edit(config)`` applied to its layer ``layer``'s config."""
    config = json.loads(zipfile.ZipFile(fixture(name)).read("config.json"))
    edit(next(entry for entry in config["config"]["layers"] if entry["name"] == layer)["config"])
    return keras_copy(tmp_path, name, {"config.json": json.dumps(config)})


@pytest.mark.parametrize("name, layer, edit, message", [
    ("keras_bidi.keras", "bi_a", lambda c: c.pop("layer"),
     r"^layers: 'bi_a' is a Bidirectional\(None\), not an LSTM"),
    ("keras_bidi.keras", "bi_a", lambda c: c.update(layer="lstm"),
     r"^layers: 'bi_a' is a Bidirectional\(lstm\), not an LSTM"),
    ("keras_rnn_cell.keras", "cell_rnn", lambda c: c["cell"].update(config="lstm_cell"),
     r"^config: the LSTMCell of layer 'cell_rnn' has a config that is not a mapping: corrupt file"),
    ("keras_bidi.keras", "masking", lambda c: c.update(mask_value="abc"),
     r"^config: the Masking layer 'masking' has mask_value 'abc', not a number: corrupt file"),
])
def test_keras_config_entries_of_the_wrong_kind(name, layer, edit, message, tmp_path):
    pytest.importorskip("h5py")
    from triton_lstm import load_keras
    path = config_edited(tmp_path, name, layer, edit)
    with pytest.raises(ValueError, match=message):
        load_keras(path, layers=["bi_a"] if layer == "bi_a" else None)


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


def restart_count(count):
    """tf1_multi with its data block's count of restart points (1) set to ``count``, checksum recomputed:
    with 9, the block's last entry reads as restart points and parses as if the block ended before it."""
    def make(tmp_path):
        folder, index, _ = checkpoint_copy(tmp_path)
        data = bytearray(index.read_bytes())
        assert int.from_bytes(data[DATA_BLOCK - 4:DATA_BLOCK], "little") == 1
        data[DATA_BLOCK - 4:DATA_BLOCK] = count.to_bytes(4, "little")
        data[DATA_BLOCK + 1:DATA_BLOCK + 5] = mask_crc(crc32c(bytes(data[:DATA_BLOCK + 1]))).to_bytes(4, "little")
        index.write_bytes(bytes(data))
        return folder, index
    return make


def varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def field(number, value, wire=None):
    """One protobuf field: a varint, bytes (length-delimited), or with ``wire=5`` a fixed 32-bit int."""
    if wire == 5:
        return varint(number << 3 | 5) + value.to_bytes(4, "little")
    return varint(number << 3 | 2) + varint(len(value)) + value if isinstance(value, bytes) \
        else varint(number << 3) + varint(value)


def index_table(entries):
    """A checkpoint index (a LevelDB table) written here from TF's formats, with valid checksums: the
    (key, value) pairs, sorted, stored whole in one data block with one restart point."""
    def block(entries):  # keys stored whole, one restart point at 0, then the type byte and checksum
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"\x00"
        return body + mask_crc(crc32c(body)).to_bytes(4, "little")

    data_block = block(entries)
    index_block = block([(b"\xff", varint(0) + varint(len(data_block) - 5))])  # the data block's handle
    table = data_block + index_block
    footer = varint(0) + varint(0) + varint(len(data_block)) + varint(len(index_block) - 5)
    return table + footer + bytes(40 - len(footer)) + (0xDB4775248B80FB57).to_bytes(8, "little")


def one_tensor(dtype, dims, data):
    """A checkpoint of one tensor 'w' (TF DataType ``dtype``, shape ``dims``, stored bytes ``data``)."""
    def make(tmp_path):
        shape = b"".join(field(2, field(1, d)) for d in dims)
        entry = (field(1, dtype) + field(2, shape) + field(3, 0) + field(4, 0) + field(5, len(data))
                 + field(6, mask_crc(crc32c(data)), wire=5))
        (tmp_path / "one.index").write_bytes(index_table([(b"", field(1, 1)), (b"w", entry)]))
        (tmp_path / "one.data-00000-of-00001").write_bytes(data)
        return tmp_path / "one", tmp_path / "one.data-00000-of-00001"
    return make


KERNEL = b"shards/rnn/lstm_cell/kernel"  # in tf1_partitioned: [7, 24] in row slices 0:3, 3:5, 5:7


def partitioned_edit(key, number, edit):
    """tf1_partitioned with its index rewritten here: field ``number`` of the entry ``key`` (a list of its
    values) replaced by ``edit(values)``. key None: the first slice of KERNEL."""
    def make(tmp_path):
        folder = tmp_path / "tf1_partitioned"
        shutil.copytree(fixture("tf1_partitioned"), folder)
        index = folder / "model.ckpt.index"
        entries = dict(_read_table(str(index)))
        name = key or min(k for k in entries if k.startswith(b"\x00" + KERNEL + b"\x00"))
        fields = _proto_fields(entries[name], "entry")
        fields[number] = edit(fields[number])
        entries[name] = b"".join(field(n, v, wire=5 if n == 6 else None) for n in sorted(fields) for v in fields[n])
        index.write_bytes(index_table(sorted(entries.items())))
        return folder, index
    return make


def slice_proto(*extents):
    """A TensorSliceProto of (start, length) extents (length None: all of the dimension)."""
    return b"".join(field(1, field(1, start) + (b"" if length is None else field(2, length)))
                    for start, length in extents)


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
    pytest.param(restart_count(9), r": a data block at byte 0 has 9 restart points that are not where its entries "
                 r"start: the file is corrupt", id="restart-points"),
    pytest.param(restart_count(2**32 - 1), r": a data block at byte 0 has 4294967295 restart points, more than fit "
                 r"in its 327 bytes", id="restart-count"),
    pytest.param(one_tensor(9, [2**63 - 1, 2**63 - 1], bytes(8)), r": tensor 'w': 8 bytes for shape "
                 r"\(9223372036854775807, 9223372036854775807\) of int64: corrupt entry", id="shape-overflow"),
    pytest.param(one_tensor(9, [2**64 - 1], bytes(8)), r": tensor 'w': shape \(18446744073709551615,\) has a "
                 r"negative dimension: corrupt entry", id="shape-negative"),
    pytest.param(partitioned_edit(KERNEL, 7, lambda slices: slices[:2]), r": partitioned variable 'shards/rnn/lstm_cell/kernel': "
                 r"its slices hold 120 elements, not the 168 of its shape \(7, 24\): corrupt index", id="slices-short"),
    pytest.param(partitioned_edit(KERNEL, 7, lambda slices: slices[:2] + slices[1:2]), r": partitioned variable "
                 r"'shards/rnn/lstm_cell/kernel': the slice \[3:5, 0:24\] overlaps another: corrupt index",
                 id="slices-overlap"),
    pytest.param(partitioned_edit(KERNEL, 7, lambda slices: slices[:2] + [slice_proto((5, 3), (0, None))]),
                 r": partitioned variable 'shards/rnn/lstm_cell/kernel': slice \[\(5, 3\), \(0, None\)\] does not "
                 r"fit its shape \(7, 24\): corrupt entry", id="slice-outside"),
    pytest.param(partitioned_edit(KERNEL, 7, lambda slices: slices[:2] + [slice_proto((5, 2), (0, None))]),
                 r": partitioned variable 'shards/rnn/lstm_cell/kernel': the slice \[5:7, :\] it lists is missing: "
                 r"corrupt index", id="slice-missing"),
    pytest.param(partitioned_edit(None, 1, lambda dtype: [2]), r": partitioned variable 'shards/rnn/lstm_cell/kernel': "
                 r"the slice \[0:3, 0:24\] holds TF dtype 2 of shape \(3, 24\), not 1 of shape \(3, 24\): corrupt entry", id="slice-dtype"),
    pytest.param(one_tensor(7, [2**62, 2], mask_crc(0).to_bytes(4, "little")),
                 r": tensor 'w': 9223372036854775808 strings in 4 bytes: the file is corrupt", id="strings-count"),
])
def test_checkpoint_errors_name_the_file(make, message, tmp_path):
    folder, path = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + message):
        read_tf_checkpoint(folder)


def test_one_tensor_checkpoint_written_here_reads_back(tmp_path):
    """The index writer the cases above use, on a well-formed tensor."""
    folder, _ = one_tensor(1, [2, 3], np.arange(6, dtype="<f4").tobytes())(tmp_path)
    got = read_tf_checkpoint(folder)
    assert list(got) == ["w"] and np.array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


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
