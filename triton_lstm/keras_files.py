"""Keras model files read without Keras or TensorFlow (h5py reads the HDF5 inside).

- Keras 3 ``.keras``: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.
- Keras 3 ``.weights.h5`` (also tf-keras' ``.keras`` and ``.weights.h5``): ``layers/<class path>/.../vars/<k>``
  datasets; the path names each layer of a model's list by its class and place (``lstm``, ``lstm_1``:
  ``saved_paths``), a nested model's layers under ``layers/<its path>/layers/``. Keras 3 keeps the
  layer's own name in its ``vars`` group's ``name`` attribute; tf-keras does not, and the model config
  (same order) names them.
- Keras 2 ``.h5`` (``model.save``; Keras 3's legacy ``.h5`` too): the config in the ``model_config``
  attribute and the weights under ``model_weights/<layer>/`` listed by each layer's ``weight_names``
  (a nested model's group holds its layers' weights, each name with its layer's name in its path);
  ``save_weights`` files hold the layer groups at the root.
- tf-keras in TensorFlow's format (Keras 2's default where a path has no .h5 or .keras): a SavedModel
  folder (``model.save(folder)``: the weights in ``variables/variables``, a TF checkpoint, the model
  config in ``keras_metadata.pb``, before TF 2.5 in ``saved_model.pb``), or a checkpoint of
  ``save_weights(prefix)`` or of a ``tf.train.Checkpoint`` holding the model (found under its root).
  The checkpoint's object
  graph (``OBJECT_GRAPH``) gives each variable its TF name (``enc/lstm_cell/kernel``,
  Keras 2's weight names) and the model's layer it belongs to (``layer-<k>``, the k-th of the config's
  layers); read by ``tf_checkpoint``, without TensorFlow.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
import zlib
from typing import Any, Iterator, Optional

import numpy as np

from triton_lstm.checks import check_path
from triton_lstm.tf_checkpoint import (OBJECT_GRAPH, _field, _proto_fields, bfloat16_as_float32, checkpoint_prefix,
                                       read_tf_checkpoint)

# Names of a Keras 3 object's variables, in their saved order (the file stores only indices).
_VAR_NAMES = {"cell": ("kernel", "recurrent_kernel", "bias"), "CuDNNLSTM": ("kernel", "recurrent_kernel", "bias"),
              "Dense": ("kernel", "bias"), "Embedding": ("embeddings",)}
_DIRECTIONS = {"forward_layer": "forward", "backward_layer": "backward"}


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError("reading Keras files needs h5py: pip install 'triton_lstm[keras]'") from e
    return h5py


_ZIP_MAGIC, _HDF5_MAGIC = b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"
# What zipfile and h5py raise on a damaged file (h5py: OSError, KeyError for an object it cannot open,
# RuntimeError for a group it cannot walk; UnicodeError for a name that is not UTF-8).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, KeyError, RuntimeError,
            UnicodeError)


@contextlib.contextmanager
def _open(path: str) -> Iterator[tuple[Any, str, Optional[dict], str]]:
    """(h5py.File, the path as a str, the model config or None, Keras version) of a Keras file,
    open for the ``with`` body; the zip and HDF5 libraries' errors on a damaged file, there too, become a
    ValueError naming it (errors of code of our own pass unchanged)."""
    h5py = _h5py()
    path = check_path("path", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no Keras file at {path!r}")
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(_ZIP_MAGIC) or head == _HDF5_MAGIC:  # but the end is cut off or damaged
            kind = "zip (.keras archive)" if head.startswith(_ZIP_MAGIC) else "HDF5 (.h5) file"
            raise ValueError(f"path: {path!r} starts as a {kind} but is corrupt or truncated")
        raise ValueError(f"path: {path!r} is neither a .keras archive nor an HDF5 (.h5) file")
    what = "the .keras archive" if is_zip else "the HDF5 (.h5) file"
    try:
        if is_zip:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "model.weights.h5" not in names:
                    raise ValueError(f"path: {path!r} is a zip without model.weights.h5: not a .keras file")
                config = _json_object(path, "config.json", z.read("config.json")) if "config.json" in names else None
                meta = _json_object(path, "metadata.json", z.read("metadata.json")) if "metadata.json" in names else {}
                data = z.read("model.weights.h5")
            what, version = "its model.weights.h5", str(meta.get("keras_version", "3"))
            f = h5py.File(io.BytesIO(data), "r")
        else:
            f = h5py.File(path, "r")
        with f:
            if not is_zip:
                config = _json_object(path, "the model_config attribute", _text(f.attrs["model_config"])) \
                    if "model_config" in f.attrs else None
                version = _text(f.attrs["keras_version"]) if "keras_version" in f.attrs \
                    else "2" if config is not None or "layers" not in f else "3"
            if config is not None:
                keras_layers(config, path)  # checked here, where its errors name the file
            yield f, path, config, version
    except _DAMAGED as e:
        if not _damaged_file(e):  # an error of code of our own, not a damaged file's
            raise
        raise ValueError(f"{path}: {what} cannot be read: corrupt or truncated? ({type(e).__name__}: {e})") from e


def _damaged_file(e: BaseException) -> bool:
    """Whether e says the file is damaged: the zip or HDF5 library raised it (its innermost frame is
    theirs), or text stored in the file is not UTF-8."""
    if isinstance(e, UnicodeDecodeError):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__")).split(".")[0] in ("h5py", "zipfile")


def _json_object(path: str, what: str, text: bytes | str) -> dict:
    """``what`` in the file ``path``, a JSON object, parsed."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # ValueError: JSONDecodeError, a huge integer
        raise ValueError(f"{path}: {what} is not valid JSON: corrupt file? ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} holds a JSON {type(value).__name__} where Keras writes an object: "
                         f"corrupt file?")
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _inbound(layer: dict, where: str) -> Optional[list[str]]:
    """The names of the layers whose outputs a Functional model's layer takes (Keras 3: its node's args,
    then an RNN's initial_state among its keyword arguments, which also hold the mask Keras passes
    along; tf-keras: its node's tensors, an RNN's initial states after its input), or None where the
    config does not say (a Sequential model's layers, a layer called more than once)."""
    nodes = layer.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        return None
    names: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("class_name") != "__keras_tensor__":
                return
            tensor = value.get("config")
            history = tensor.get("keras_history") if isinstance(tensor, dict) else None
            if not (isinstance(history, list) and history and isinstance(history[0], str)):
                raise ValueError(f"{where}: layer {layer.get('name')!r}: an input of its inbound node is no Keras "
                                 f"tensor (no keras_history): corrupt file")
            names.append(history[0])
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):  # tf-keras
                names.append(value[0])
            else:
                for item in value:
                    visit(item)

    node = nodes[0]
    if isinstance(node, dict):
        visit(node.get("args", []))
        kwargs = node.get("kwargs")
        visit(kwargs.get("initial_state", []) if isinstance(kwargs, dict) else [])
    else:
        visit(node)
    return names


def _masked(layer: dict) -> Optional[bool]:
    """Whether Keras called a Functional model's layer with a mask: Keras 3's node holds in its keyword
    arguments the mask it passed (handed on, or given with mask=); tf-keras' only one given with
    mask= (True then, else None: it does not say). None where the config does not say (a Sequential
    model's layers, a layer called more than once)."""
    nodes = layer.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        return None
    if isinstance(nodes[0], list):  # tf-keras: [layer, node, tensor, keyword arguments] per input
        return any(isinstance(e, list) and len(e) >= 4 and isinstance(e[3], dict) and e[3].get("mask") is not None
                   for e in nodes[0]) or None
    kwargs = nodes[0].get("kwargs") if isinstance(nodes[0], dict) else None
    return isinstance(kwargs, dict) and kwargs.get("mask") is not None


def _entries(config: dict, where: str) -> list[dict]:
    """One model's own layers in order, each ``{"name", "class_name", "config", "inbound", "masked",
    "calls"}`` (a nested model is one entry here; ``inbound``: ``_inbound``; ``masked``: ``_masked``;
    ``calls``: how many times a Functional model calls it, None where the config does not say)."""
    body = config.get("config", config)
    layers = body.get("layers", []) if isinstance(body, dict) else body
    if not isinstance(layers, list):
        raise ValueError(f"{where}: the model config's layers are a {type(layers).__name__}, not a list")
    out = []
    for k, layer in enumerate(layers):
        options = layer.get("config") if isinstance(layer, dict) else None
        name = (layer.get("name") or options.get("name")) if isinstance(options, dict) else None
        if not isinstance(name, str) or not isinstance(layer.get("class_name"), str):
            raise ValueError(f"{where}: layer {k} of the model config has no name, class_name or config")
        nodes = layer.get("inbound_nodes")
        out.append({"name": name, "class_name": layer["class_name"], "config": options,
                    "inbound": _inbound(layer, where), "masked": _masked(layer),
                    "calls": len(nodes) if isinstance(nodes, list) else None})
    return out


def _nested(entry: Optional[dict]) -> bool:
    """Whether a layer entry is a model of its own (Sequential, Functional), with layers of its own."""
    return entry is not None and isinstance(entry["config"].get("layers"), list)


def keras_layers(config: dict, where: str = "config", depth: int = 0) -> list[dict]:
    """The layers of a model config in order, each ``{"name", "class_name", "config", "inbound",
    "depth"}`` (``inbound``: the names of the layers it takes its inputs from, None where the config
    does not say; ``depth``: 0 for the model's own layers, 1 in a nested model, ...), a nested model's
    layers in its place, its input layers with ``outer``, the inbound of the nested model itself, and
    its output layer with the model's name in ``aliases``; ``where`` names the config in errors."""
    out = []
    for entry in _entries(config, where):
        if not _nested(entry):
            out.append({**entry, "depth": depth})
            continue
        # A nested model's input layers take what the model is called on: their "outer" inbound; its
        # output layer gives what the model outputs: the model's name among its "aliases".
        inner = [{**e, "outer": entry["inbound"]} if e["class_name"] == "InputLayer" and e["depth"] == depth + 1
                 else e for e in keras_layers(entry["config"], where, depth + 1)]
        output = _output_layer(entry["config"], inner)
        out += [{**e, "aliases": [*e.get("aliases", ()), entry["name"]]} if e["name"] == output else e for e in inner]
    return out


def _output_layer(config: dict, layers: list[dict]) -> Optional[str]:
    """The name of a nested model's one output layer: a Functional model's ``output_layers`` (Keras 3:
    one [name, node, tensor]; tf-keras: a list of them), a Sequential model's last layer; None for
    several outputs."""
    outputs = config.get("output_layers")
    if outputs is None:
        return layers[-1]["name"] if layers else None
    if isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], list):
        outputs = outputs[0]
    return outputs[0] if isinstance(outputs, list) and outputs and isinstance(outputs[0], str) else None


def _snake_case(name: str) -> str:
    """Keras' ``to_snake_case`` of a class name (``LSTM`` -> ``lstm``, ``InputLayer`` -> ``input_layer``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def saved_paths(entries: list[dict]) -> dict[str, dict]:
    """Where Keras' saving library (Keras 3 and tf-keras) puts each layer of one model's list: its class
    in snake case, with ``_1``, ``_2`` ... for the second and later layers of that class."""
    out, used = {}, {}
    for entry in entries:
        base = _snake_case(entry["class_name"])
        used[base] = used.get(base, -1) + 1
        out[base + (f"_{used[base]}" if used[base] else "")] = entry
    return out


def _collision(where: str, what: str, has_config: bool) -> ValueError:
    why = ("two layers of its nested models share a name; not supported" if has_config else
           "a nested model's layers, which a file without the model config names by class alone (or its "
           "group holds them all); read a file with the config (.keras or a model .h5)")
    return ValueError(f"{where}: two layers' weights read as {what}: {why}")


def _keep(out: dict[str, np.ndarray], key: str, value, where: str, has_config: bool) -> None:
    if key in out:
        raise _collision(where, repr(key), has_config)
    out[key] = value


def _check_one_layout(weights: dict[str, np.ndarray], where: str, has_config: bool) -> dict[str, np.ndarray]:
    """Each layer's weights in one layout: its own (``<layer>/kernel``), a Bidirectional's
    (``<layer>/forward/...``) or stacked cells' (``<layer>/cells/<k>/...``). Two of them under one name
    are two layers read under it (a nested RNN(LSTMCell) and an outer RNN of cells, both "rnn"), whose
    keys differ, so ``_keep`` cannot see them meet."""
    layouts: dict[str, set[str]] = {}
    for key in weights:
        parts = key.split("/")
        layouts.setdefault(parts[0], set()).add(parts[1] if parts[1] in ("forward", "backward", "cells") else "")
    for layer, found in layouts.items():
        if len(found) > 1 and ("" in found or "cells" in found):
            names = sorted("its own" if layout == "" else layout for layout in found)
            raise _collision(where, f"{layer!r} in several layouts ({', '.join(names)})", has_config)
    return weights


# An uncompressed weight of more bytes than this is read only where the file stores at least
# 1/_STORED_RATIO of them.
_CHECKED_BYTES, _STORED_RATIO = 1 << 24, 1024


def _array(dataset, where: str, name: str) -> np.ndarray:
    """A weight's values. HDF5 lets a dataset declare a shape whose chunks were never written (they read
    as fill values): an uncompressed one that declares far more bytes than the file stores for it is
    refused before they are allocated, as a corrupt file."""
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0  # compressed: any ratio may be real
    if not filtered and dataset.nbytes > _CHECKED_BYTES and dataset.nbytes > _STORED_RATIO * stored:
        raise ValueError(f"{where}: weight {name!r} declares shape {dataset.shape} ({dataset.nbytes} bytes) but "
                         f"the file stores {stored} bytes of it: corrupt file")
    values = dataset[()]
    if values.dtype == np.dtype("V2"):   # bfloat16: h5py writes ml_dtypes' bfloat16 as 2 opaque bytes
        return bfloat16_as_float32(values.view("<u2"))
    return values


def _keras3_weights(f, where: str, config: Optional[dict]) -> dict[str, np.ndarray]:
    if not isinstance(f.get("layers"), _h5py().Group):
        raise ValueError(f"{where}: no 'layers' group: not a Keras weights file")
    out: dict[str, np.ndarray] = {}
    _keras3_level(f["layers"], "layers", where, None if config is None else _entries(config, where), out)
    return out


_MAX_NESTING = 64


def _cudnn_lstm_vars(group) -> bool:
    """Whether a ``vars`` group holds a CuDNNLSTM's own three weights by their shapes (kernel [D, 4N],
    recurrent_kernel [N, 4N], bias [8N]): a file without a config names them by place alone."""
    shapes = [getattr(group.get(str(k)), "shape", None) for k in range(3)]
    if len(group) != 3 or None in shapes or [len(s) for s in shapes] != [2, 2, 1]:
        return False
    (_, n4), (n, rn4), (n8,) = shapes
    return n4 == rn4 == 4 * n and n8 == 8 * n > 0


def _keras3_level(layers, at: str, where: str, entries: Optional[list[dict]], out: dict) -> None:
    """The weights under one model's ``layers`` group (at ``at`` in the file) into ``out``; ``entries``: that
    model's layers from its config, or None."""
    h5py = _h5py()
    if at.count("/layers") >= _MAX_NESTING:
        raise ValueError(f"{where}: models nested more than {_MAX_NESTING} deep at {at!r}: corrupt file (a group "
                         f"linked into itself?)")
    by_path = saved_paths(entries) if entries is not None else {}
    by_name = {e["name"]: e for e in entries or []}
    for path, group in layers.items():
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where}: {at}/{path} is not a group: corrupt file")
        own = group.get("vars")
        entry = by_path.get(path)
        if own is not None and "name" in own.attrs:
            name = _text(own.attrs["name"])
            entry = by_name.get(name, entry)
        else:
            name = entry["name"] if entry is not None else path
        if isinstance(group.get("layers"), h5py.Group):  # a nested model
            _keras3_level(group["layers"], f"{at}/{path}/layers", where,
                          _entries(entry["config"], where) if _nested(entry) else None, out)
            continue
        # A Bidirectional's weights are named as its layer's.
        layer = entry["config"].get("layer") if entry and entry["class_name"] == "Bidirectional" else entry
        names_of = _VAR_NAMES.get(layer.get("class_name"), ()) if isinstance(layer, dict) else ()

        def visit(sub: str, obj, name=name, names_of=names_of, entry=entry) -> None:
            parts = _text(sub).split("/")  # bytes when not UTF-8
            if len(parts) < 2 or parts[-2] != "vars" or not hasattr(obj, "shape"):
                return
            owner = parts[-3] if len(parts) >= 3 else None
            # A cell of stacked cells (StackedRNNCells): .../cells/<the k-th LSTMCell: lstm_cell[_k]>/vars
            stacked = len(parts) >= 4 and parts[-4] == "cells"
            names = _VAR_NAMES["cell"] if owner == "cell" or stacked or (
                entry is None and _cudnn_lstm_vars(obj.parent)) else names_of
            k = int(parts[-1]) if re.fullmatch(r"[0-9]+", parts[-1]) else len(names)
            weight = names[k] if k < len(names) else parts[-1]
            direction = [_DIRECTIONS[p] for p in parts if p in _DIRECTIONS]
            cell = ["cells", _saved_cell(owner)] if stacked else []
            # A sub-layer of another kind of layer (MultiHeadAttention's _query_dense ...) keeps its path:
            # its weights would meet its siblings' under the layer's name.
            inner = [] if stacked else [p for p in parts[:-2] if p != "cell" and p not in _DIRECTIONS]
            _keep(out, "/".join([name, *direction, *inner, *cell, weight]), _array(obj, where, _text(sub)), where,
                  entries is not None)

        group.visititems(visit)


def _saved_cell(path: str) -> str:
    """The place of an LSTMCell among stacked cells from its path in a Keras 3 file (the k-th is saved as
    ``lstm_cell_k``, the first as ``lstm_cell``); another cell's path as it is."""
    match = re.fullmatch(r"lstm_cell(?:_(\d+))?", path)
    return str(int(match.group(1) or 0)) if match else path


def stacked_cells(entry: Optional[dict]) -> Optional[list[dict]]:
    """The cells ``{"class_name", "config"}`` of an RNN layer of stacked cells (``RNN([cell, ...])``, a
    StackedRNNCells) in a model config, else None."""
    cell = (entry["config"] or {}).get("cell") if entry is not None and entry["class_name"] == "RNN" else None
    if not isinstance(cell, dict) or cell.get("class_name") != "StackedRNNCells":
        return None
    cells = (cell.get("config") or {}).get("cells")
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def _keras2_direction(parts: list[str], owner: str, entry: Optional[dict]) -> list[str]:
    """``["forward"]`` or ``["backward"]`` for a Bidirectional's weight in Keras 2's layout
    (``<owner>/<direction's layer>[/<cell>]/<weight>``; the owner's scope may carry a suffix, ``_1``, as
    TF1's graph mode gives), else ``[]``. The direction's layer is the part right after the owner's
    scope: Keras 2 names it ``forward_<name>`` / ``backward_<name>``, Keras 3's legacy .h5 so only the
    forward one, a custom backward_layer keeping its name from the config."""
    if entry is not None and entry["class_name"] != "Bidirectional":
        return []
    scope = re.compile(re.escape(owner) + r"(_[0-9]+)?")
    at = next((k + 1 for k, part in enumerate(parts[:-2]) if scope.fullmatch(part)), None)
    if at is None:
        return []
    sub = parts[at]
    if sub.startswith("forward_"):
        return ["forward"]
    if sub.startswith("backward_"):
        return ["backward"]
    config = entry["config"] if entry is not None and entry["class_name"] == "Bidirectional" else {}
    backward = config.get("backward_layer")
    named = backward.get("config", {}).get("name") if isinstance(backward, dict) else None
    return ["backward"] if named is not None and sub == named else []


def _keras2_weights(f, where: str, config: Optional[dict]) -> dict[str, np.ndarray]:
    h5py = _h5py()
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise ValueError(f"{where}: no 'layer_names' attribute: not a Keras 2 model or weights file")
    if np.ndim(root.attrs["layer_names"]) != 1:
        raise ValueError(f"{where}: the 'layer_names' attribute is not a list of names: corrupt file")
    layers = []
    for layer in root.attrs["layer_names"]:
        layer = _text(layer)
        group = root.get(layer)
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where}: layer {layer!r} is in layer_names but has no group: corrupt file")
        weight_names = group.attrs.get("weight_names", [])
        if isinstance(weight_names, h5py.Empty):  # an empty list, as some writers store it
            weight_names = []
        if np.ndim(weight_names) != 1:
            raise ValueError(f"{where}: the 'weight_names' of layer {layer!r} are not a list of names: corrupt file")
        weights = []
        for weight in map(_text, weight_names):
            if not isinstance(group.get(weight), h5py.Dataset):
                raise ValueError(f"{where}: weight {weight!r} of layer {layer!r} is in its weight_names but has no "
                                 f"dataset: corrupt file")
            weights.append((weight, _array(group[weight], where, weight)))
        layers.append((layer, weights))
    return _keras2_layout(layers, where, config)


def _keras2_layout(layers: list[tuple[str, list[tuple[str, np.ndarray]]]], where: str,
                   config: Optional[dict]) -> dict[str, np.ndarray]:
    """``read_keras_weights``' dict from Keras 2's layout: each layer's (or nested model's) name with its
    weights' TF names (``<layer>[/<direction's layer>][/<cell>]/<weight>[:0]``) and values."""
    entries = {e["name"]: e for e in _entries(config, where)} if config is not None else {}
    out: dict[str, np.ndarray] = {}
    cells: dict[str, dict[str, int]] = {}  # the places of stacked cells seen, by layer
    for layer, weights in layers:
        entry = entries.get(layer)
        inner = {e["name"]: e for e in keras_layers(entry["config"], where)} if _nested(entry) else {}
        recurrent = any(w.split(":")[0].endswith("/recurrent_kernel") for w, _ in weights)
        for weight, value in weights:
            parts = weight.split(":")[0].split("/")
            owner = layer
            if inner:  # a nested model: the weight's path names its own layer
                owner = next((p for p in parts[:-1] if p in inner), None)
                if owner is None:
                    raise ValueError(f"{where}: weight {weight!r} of the nested model {layer!r} names none of its "
                                     f"layers {sorted(inner)}")
            owner_entry = inner.get(owner) if inner else entry
            direction = _keras2_direction(parts, owner, owner_entry)
            # A cell of stacked cells: <owner>/<the StackedRNNCells' name>/<the cell's name>/<weight>; its
            # place from the config's list of cells, or (without one) the order the weights come in.
            cell = []
            names = [(c.get("config") or {}).get("name") for c in stacked_cells(owner_entry) or []]
            if names or len(parts) >= 4 and parts[-3].startswith("stacked_rnn_cells"):
                order = cells.setdefault(owner, {})
                place = names.index(parts[-2]) if parts[-2] in names else order.setdefault(parts[-2], len(order))
                cell = ["cells", str(place)]
            # A layer that is no recurrent one (by its config entry; without a config, by its weights:
            # no recurrent_kernel) keeps its sub-layers' paths (MultiHeadAttention's query, key ...:
            # their weights would meet under the layer's name); an RNN layer's cell scopes are mapped.
            plain = owner_entry is not None and owner_entry["class_name"] not in ("LSTM", "RNN", "Bidirectional") \
                if config is not None else not recurrent
            sub = parts[parts.index(owner) + 1:-1] if plain and owner in parts[:-1] else []
            _keep(out, "/".join([owner, *direction, *cell, *sub, parts[-1]]), value, where, config is not None)
    return out


# ------------------------------------------------------------------------- TensorFlow's format
def _tf_format(path: str) -> Optional[tuple[str, Optional[str]]]:
    """(checkpoint prefix, the file of the model's metadata or None) where ``path`` is in TensorFlow's
    format: a SavedModel folder (its keras_metadata.pb, or saved before TF 2.5 without one, its
    saved_model.pb), or a checkpoint (a prefix, its .index or .data file, or its folder with a
    ``checkpoint`` file); else None."""
    if os.path.isdir(path):
        graph = os.path.join(path, "saved_model.pb")
        if os.path.isfile(graph):
            meta = os.path.join(path, "keras_metadata.pb")
            return os.path.join(path, "variables", "variables"), meta if os.path.isfile(meta) else graph
        return (checkpoint_prefix(path), None) if os.path.isfile(os.path.join(path, "checkpoint")) else None
    prefix = checkpoint_prefix(path)
    return (prefix, None) if os.path.isfile(prefix + ".index") else None


def _keras_metadata(path: str) -> tuple[Optional[dict], str]:
    """(model config or None, Keras version) of a SavedModel, from its metadata JSON: in keras_metadata.pb
    (a SavedMetadata: one node per object, the model's with node_path "root"), or saved before TF 2.5,
    in saved_model.pb (a SavedModel: the first MetaGraphDef's object graph, whose first node is the
    model, its SavedUserObject's metadata; none in a SavedModel that Keras did not write)."""
    with open(path, "rb") as f:
        data = f.read()
    if os.path.basename(path) == "saved_model.pb":
        text = _legacy_metadata(data, path)
        if not text:
            return None, "2"
    else:
        text = next((_field(fields, 5, path, b"") for fields in (_proto_fields(node, path)
                     for node in _proto_fields(data, path).get(1, [])) if _field(fields, 3, path, b"") == b"root"),
                    None)
        if text is None:
            raise ValueError(f"{path}: no metadata of the model (node 'root'): not a Keras SavedModel's "
                             f"keras_metadata.pb")
    meta = _json_object(path, "the model's metadata", text)
    config = meta.get("model_config")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"{path}: the model's metadata holds a model_config that is not an object: corrupt file?")
    if config is not None:
        keras_layers(config, path)  # checked here, where its errors name the file
    return config, str(meta.get("keras_version", "2"))


def _legacy_metadata(data: bytes, where: str) -> bytes:
    """The root object's metadata (b"" if none) in a SavedModel's saved_model.pb: SavedModel field 2
    (meta_graphs), MetaGraphDef 7 (object_graph_def), SavedObjectGraph 1 (nodes), SavedObject 4
    (user_object), SavedUserObject 3 (metadata)."""
    message = data
    for number in (2, 7, 1, 4, 3):
        fields = _proto_fields(message, where)
        if number not in fields:
            return b""
        message = fields[number][0] if number in (2, 1) else _field(fields, number, where, b"")
    return message


def _object_graph(raw: bytes, where: str) -> list[tuple[list[tuple[int, str]], list[tuple[str, str]]]]:
    """A TrackableObjectGraph: for each node, its children (node, local name) and its variables (TF
    name, checkpoint key)."""
    nodes = []
    for node in _proto_fields(raw, where).get(1, []):
        fields = _proto_fields(node, where)
        children = [(_field(r, 1, where), _text(_field(r, 2, where, b"")))
                    for r in (_proto_fields(ref, where) for ref in fields.get(1, []))]
        variables = [(_text(_field(a, 2, where, b"")), _text(_field(a, 3, where, b"")))
                     for a in (_proto_fields(attr, where) for attr in fields.get(2, []))
                     if _field(a, 1, where, b"") == b"VARIABLE_VALUE"]
        nodes.append((children, variables))
    if any(child >= len(nodes) for children, _ in nodes for child, _ in children):
        raise ValueError(f"{where}: the object graph refers to a node it does not have: corrupt checkpoint")
    return nodes


def _lists_layers(node: tuple[list[tuple[int, str]], list[tuple[str, str]]]) -> bool:
    return any(re.fullmatch(r"layer-\d+", name) for _, name in node[0])


# What a tf.train.Checkpoint of a training loop holds beside the model, by the names it is given.
_BESIDE_THE_MODEL = ("optimizer", "save_counter")


def _model_node(nodes: list[tuple[list[tuple[int, str]], list[tuple[str, str]]]], where: str) -> int:
    """The model's node: the root (a model's SavedModel or save_weights) or, where the root lists no
    layers (``layer-<k>``), its one child that does: a ``tf.train.Checkpoint(model=model, optimizer=...)``,
    which may hold its optimizer and save counter beside the model, no other variables (a subclassed
    model's other layers, which would be left out without a word). The root where no child lists layers."""
    if _lists_layers(nodes[0]):
        return 0
    models = {child: name for child, name in nodes[0][0] if _lists_layers(nodes[child])}
    if not models:
        return 0
    if len(models) > 1:
        raise ValueError(f"{where}: the checkpoint holds several models under its root "
                         f"({', '.join(sorted(models.values()))}); one model's checkpoint is read")
    [(model, name)] = models.items()
    others = sorted({other for child, other in nodes[0][0] if child != model and other not in _BESIDE_THE_MODEL
                     and _reachable_variables(nodes, child, model)})
    if others:
        raise ValueError(f"{where}: the checkpoint holds variables beside the model {name!r}, under {others} (a "
                         f"subclassed model's own layers?), which are not read; save the model as a Functional "
                         f"or Sequential one, alone or with its optimizer")
    return model


def _reachable_variables(nodes: list[tuple[list[tuple[int, str]], list[tuple[str, str]]]],
                         start: int, model: int) -> list[tuple[str, str]]:
    """The variables (TF name, checkpoint key) of every node reachable from ``start`` (a layer: a nested
    model's, a Bidirectional's too), each once, in the order they were made (their nodes' order), not
    through the root (node 0, which every object can reach), the ``model``'s node or a SavedModel's
    ``keras_api`` objects."""
    seen, todo, found = {0, model, start}, [start], []
    while todo:
        at = todo.pop()
        found += [(at, variable) for variable in nodes[at][1]]
        for child, name in nodes[at][0]:
            # keras_api lists the layer's variables again, and a stateful layer's states, no weights.
            if child not in seen and name != "keras_api":   # a node may list a child twice, under two names
                seen.add(child)
                todo.append(child)
    return [variable for _, variable in sorted(found)]


def _tf_format_layers(prefix: str, meta: Optional[str],
                      where: str) -> tuple[list[tuple[str, list[tuple[str, np.ndarray]]]], Optional[dict], str]:
    """(layers as ``_keras2_layout`` takes them, model config or None, Keras version) of a checkpoint
    in TensorFlow's format: the variables reachable from each of the model's layers (``layer-<k>`` of
    the root), named by the config (without one, by their TF names' first part)."""
    tensors = read_tf_checkpoint(prefix)
    if OBJECT_GRAPH not in tensors:
        raise ValueError(f"{where}: a TensorFlow checkpoint without an object graph (a TF1 Saver's, its variables "
                         f"named by scope): read it with triton_lstm.load_tf_checkpoint")
    nodes = _object_graph(bytes(tensors[OBJECT_GRAPH].item()), where)
    config, version = _keras_metadata(meta) if meta is not None else (None, "2")
    entries = _entries(config, where) if config is not None else None
    if entries and config.get("class_name") == "Sequential" and entries[0]["class_name"] == "InputLayer":
        entries = entries[1:]   # a Sequential's list of layers (layer-<k>) leaves its input out; its config not
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    model = _model_node(nodes, where) if nodes else 0
    for node, name in (nodes[model][0] if nodes else []):
        place = re.fullmatch(r"layer-(\d+)", name)
        if place is None:
            continue
        weights = []
        for tf_name, key in _reachable_variables(nodes, node, model):
            if key not in tensors:
                raise ValueError(f"{where}: the object graph names the variable {key!r}, which the checkpoint "
                                 f"does not hold: corrupt checkpoint")
            weights.append((tf_name, tensors[key]))
        if not weights:
            continue
        if entries is not None:
            k = int(place.group(1))
            if k >= len(entries):
                raise ValueError(f"{where}: the object graph has layer {k}, the model config {len(entries)} layers: "
                                 f"they do not belong together")
            layers.append((entries[k]["name"], weights))
        else:
            for tf_name, value in weights:
                owner = tf_name.split("/")[0]
                if not layers or layers[-1][0] != owner:
                    layers.append((owner, []))
                layers[-1][1].append((tf_name, value))
    if not layers and any(variables for _, variables in nodes):
        raise ValueError(f"{where}: no variable belongs to a layer of a model's list (layer-<k>): a subclassed "
                         f"model's (also in a tf.train.Checkpoint), which is not read; save the model as a "
                         f"Functional or Sequential one")
    return layers, config, version


def read_keras_weights(path: str) -> dict[str, np.ndarray]:
    """Every weight of a Keras file as ``{"<layer name>/<weight name>": array}``.

    ``path``: a ``.keras`` or ``.weights.h5`` file (Keras 3 or tf-keras), an ``.h5`` (Keras 2's model or
    weights, Keras 3's legacy model), or tf-keras in TensorFlow's format: a SavedModel folder or a
    ``save_weights`` or ``tf.train.Checkpoint`` checkpoint (its folder, prefix or .index). Layers carry
    the names given to them (``"encoder_lstm/kernel"``), a nested model's layers too, except in a tf-keras file without its
    config, which names them by class and place (``lstm``, ``lstm_1``); an LSTM's weights are
    ``kernel`` [D, 4U], ``recurrent_kernel`` [U, 4U] and ``bias`` [4U] (gates i, f, c, o), a
    Bidirectional's ``<name>/forward/...`` and ``<name>/backward/...``, the k-th cell of an RNN of
    stacked cells ``<name>/cells/<k>/...``, a sub-layer's weights of another layer under its path
    (``mha/query_dense/0``). HDF5 files need h5py.
    """
    path = check_path("path", path)
    tf_format = _tf_format(path)
    if tf_format is not None:
        layers, config, _ = _tf_format_layers(*tf_format, path)
        return _check_one_layout(_keras2_layout(layers, path, config), path, config is not None)
    with _open(path) as (f, path, config, version):
        if "model_weights" in f or "layer_names" in f.attrs:  # Keras 2's layout (also Keras 3's legacy .h5)
            weights = _keras2_weights(f, path, config)
        else:
            weights = _keras3_weights(f, path, config)
    return _check_one_layout(weights, path, config is not None)


def read_keras_config(path: str) -> Optional[dict]:
    """``{"keras_version", "layers": [{"name", "class_name", "config", "inbound", "depth"}, ...]}`` from a
    ``.keras`` file, a Keras 2 model ``.h5`` or SavedModel folder (layer options such as units, activation,
    recurrent_activation, use_bias, go_backwards, return_sequences, Bidirectional's merge_mode; a nested
    model's layers in its place; ``inbound`` and ``depth`` as ``keras_layers``); None for a weights-only
    file."""
    path = check_path("path", path)
    tf_format = _tf_format(path)
    if tf_format is not None:
        config, version = _keras_metadata(tf_format[1]) if tf_format[1] is not None else (None, "2")
    else:
        with _open(path) as (_, path, config, version):
            pass
    return None if config is None else {"keras_version": version, "layers": keras_layers(config, path)}
