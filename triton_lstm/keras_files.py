"""Keras model files read without Keras or TensorFlow (h5py reads the HDF5 inside).

- Keras 3 ``.keras``: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.
- Keras 3 ``.weights.h5``: ``layers/<class path>/.../vars/<k>`` datasets; the path uses class names
  (``lstm_1``), and a ``vars`` group's ``name`` attribute keeps the layer's own name.
- Keras 2 ``.h5`` (``model.save``): the config in the ``model_config`` attribute and the weights under
  ``model_weights/<layer>/`` listed by each layer's ``weight_names``; ``save_weights`` files hold the
  layer groups at the root.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
import zlib
from typing import Any, Iterator, Optional

import numpy as np

from triton_lstm.checks import check_path

# Names of a Keras 3 object's variables, in their saved order (the file stores only indices).
_VAR_NAMES = {"cell": ("kernel", "recurrent_kernel", "bias"), "Dense": ("kernel", "bias"),
              "Embedding": ("embeddings",)}
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
def _open(path: str) -> Iterator[tuple[Any, str, Optional[list[dict]], str]]:
    """(h5py.File, the path as a str, the model config's layers or None, Keras version) of a Keras file,
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
            yield f, path, keras_layers(config, path) if config is not None else None, version
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON: corrupt file? ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} holds a JSON {type(value).__name__} where Keras writes an object: "
                         f"corrupt file?")
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def keras_layers(config: dict, where: str = "config") -> list[dict]:
    """The layers of a model config in order, each ``{"name", "class_name", "config"}``; ``where`` names
    the config in errors."""
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
        out.append({"name": name, "class_name": layer["class_name"], "config": options})
    return out


def _keras3_weights(f, where: str, layers: Optional[list[dict]]) -> dict[str, np.ndarray]:
    classes = {layer["name"]: layer["class_name"] for layer in layers or []}
    out: dict[str, np.ndarray] = {}
    if "layers" not in f:
        raise ValueError(f"{where}: no 'layers' group: not a Keras weights file")
    h5py = _h5py()
    for path, group in f["layers"].items():
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where}: layers/{path} is not a group: corrupt file")
        own = group.get("vars")
        name = _text(own.attrs["name"]) if own is not None and "name" in own.attrs else path

        def visit(sub: str, obj, name=name) -> None:
            parts = _text(sub).split("/")  # bytes when not UTF-8
            if len(parts) < 2 or parts[-2] != "vars" or not hasattr(obj, "shape"):
                return
            owner = parts[-3] if len(parts) >= 3 else None
            names = _VAR_NAMES.get("cell" if owner == "cell" else classes.get(name, ""), ())
            k = int(parts[-1]) if parts[-1].isdigit() else len(names)
            weight = names[k] if k < len(names) else parts[-1]
            direction = [_DIRECTIONS[p] for p in parts if p in _DIRECTIONS]
            out["/".join([name, *direction, weight])] = obj[()]

        group.visititems(visit)
    return out


def _keras2_weights(f, where: str) -> dict[str, np.ndarray]:
    h5py = _h5py()
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise ValueError(f"{where}: no 'layer_names' attribute: not a Keras 2 model or weights file")
    out: dict[str, np.ndarray] = {}
    for layer in root.attrs["layer_names"]:
        layer = _text(layer)
        group = root.get(layer)
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{where}: layer {layer!r} is in layer_names but has no group: corrupt file")
        for weight in group.attrs.get("weight_names", []):
            weight = _text(weight)
            parts = weight.split(":")[0].split("/")
            direction = ["forward" if p.startswith("forward_") else "backward" for p in parts[:-1]
                         if p.startswith(("forward_", "backward_"))]
            if not isinstance(group.get(weight), h5py.Dataset):
                raise ValueError(f"{where}: weight {weight!r} of layer {layer!r} is in its weight_names but has no "
                                 f"dataset: corrupt file")
            out["/".join([layer, *direction, parts[-1]])] = group[weight][()]
    return out


def read_keras_weights(path: str) -> dict[str, np.ndarray]:
    """Every weight of a Keras file as ``{"<layer name>/<weight name>": array}``.

    ``path``: a Keras 3 ``.keras`` or ``.weights.h5`` file, or a Keras 2 ``.h5`` (model or weights).
    Layers carry the names given to them (``"encoder_lstm/kernel"``); an LSTM's weights are
    ``kernel`` [D, 4U], ``recurrent_kernel`` [U, 4U] and ``bias`` [4U] (gates i, f, c, o), a
    Bidirectional's ``<name>/forward/...`` and ``<name>/backward/...``. Needs h5py.
    """
    with _open(path) as (f, path, layers, version):
        if version.startswith("3") or "layers" in f:
            return _keras3_weights(f, path, layers)
        return _keras2_weights(f, path)


def read_keras_config(path: str) -> Optional[dict]:
    """``{"keras_version", "layers": [{"name", "class_name", "config"}, ...]}`` from a ``.keras`` file or a
    Keras 2 model ``.h5`` (layer options such as units, activation, recurrent_activation, use_bias,
    go_backwards, return_sequences, Bidirectional's merge_mode); None for a weights-only file."""
    with _open(path) as (_, _, layers, version):
        return None if layers is None else {"keras_version": version, "layers": layers}
