"""Keras model files read without Keras or TensorFlow (h5py reads the HDF5 inside).

- Keras 3 ``.keras``: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.
- Keras 3 ``.weights.h5``: ``layers/<class path>/.../vars/<k>`` datasets; the path uses class names
  (``lstm_1``), and a ``vars`` group's ``name`` attribute keeps the layer's own name.
- Keras 2 ``.h5`` (``model.save``): the config in the ``model_config`` attribute and the weights under
  ``model_weights/<layer>/`` listed by each layer's ``weight_names``; ``save_weights`` files hold the
  layer groups at the root.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Optional

import numpy as np

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


def _open(path: str):
    """(h5py.File, Keras 3 config dict or None, Keras version or None) of a Keras file."""
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no Keras file at {path!r}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "model.weights.h5" not in names:
                raise ValueError(f"path: {path!r} is a zip without model.weights.h5: not a .keras file")
            config = json.loads(z.read("config.json")) if "config.json" in names else None
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            data = z.read("model.weights.h5")
        return h5py.File(io.BytesIO(data), "r"), config, meta.get("keras_version", "3")
    if not h5py.is_hdf5(path):
        raise ValueError(f"path: {path!r} is neither a .keras archive nor an HDF5 (.h5) file")
    f = h5py.File(path, "r")
    version = f.attrs.get("keras_version")
    if "model_config" in f.attrs:
        return f, json.loads(_text(f.attrs["model_config"])), _text(version) if version is not None else "2"
    return f, None, _text(version) if version is not None else ("3" if "layers" in f else "2")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _layer_classes(config: Optional[dict]) -> dict[str, str]:
    return {layer["name"]: layer["class_name"] for layer in keras_layers(config)} if config else {}


def keras_layers(config: dict) -> list[dict]:
    """The layers of a model config in order, each ``{"name", "class_name", "config"}``."""
    body = config.get("config", config)
    layers = body.get("layers", []) if isinstance(body, dict) else body
    return [{"name": layer.get("name") or layer["config"]["name"], "class_name": layer["class_name"],
             "config": layer["config"]} for layer in layers]


def _keras3_weights(f, classes: dict[str, str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "layers" not in f:
        raise ValueError(f"{f.filename}: no 'layers' group: not a Keras weights file")
    for path, group in f["layers"].items():
        own = group.get("vars")
        name = _text(own.attrs["name"]) if own is not None and "name" in own.attrs else path

        def visit(sub: str, obj, name=name) -> None:
            parts = sub.split("/")
            if len(parts) < 2 or parts[-2] != "vars" or not hasattr(obj, "shape"):
                return
            owner = parts[-3] if len(parts) >= 3 else None
            names = _VAR_NAMES.get("cell" if owner == "cell" else classes.get(name, ""), ())
            k = int(parts[-1])
            weight = names[k] if k < len(names) else parts[-1]
            direction = [_DIRECTIONS[p] for p in parts if p in _DIRECTIONS]
            out["/".join([name, *direction, weight])] = obj[()]

        group.visititems(visit)
    return out


def _keras2_weights(f) -> dict[str, np.ndarray]:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise ValueError(f"{f.filename}: no 'layer_names' attribute: not a Keras 2 model or weights file")
    out: dict[str, np.ndarray] = {}
    for layer in root.attrs["layer_names"]:
        layer = _text(layer)
        group = root[layer]
        for weight in group.attrs.get("weight_names", []):
            weight = _text(weight)
            parts = weight.split(":")[0].split("/")
            direction = ["forward" if p.startswith("forward_") else "backward" for p in parts[:-1]
                         if p.startswith(("forward_", "backward_"))]
            out["/".join([layer, *direction, parts[-1]])] = group[weight][()]
    return out


def read_keras_weights(path: str) -> dict[str, np.ndarray]:
    """Every weight of a Keras file as ``{"<layer name>/<weight name>": array}``.

    ``path``: a Keras 3 ``.keras`` or ``.weights.h5`` file, or a Keras 2 ``.h5`` (model or weights).
    Layers carry the names given to them (``"encoder_lstm/kernel"``); an LSTM's weights are
    ``kernel`` [D, 4U], ``recurrent_kernel`` [U, 4U] and ``bias`` [4U] (gates i, f, c, o), a
    Bidirectional's ``<name>/forward/...`` and ``<name>/backward/...``. Needs h5py.
    """
    f, config, version = _open(path)
    with f:
        if version.startswith("3") or "layers" in f:
            return _keras3_weights(f, _layer_classes(config))
        return _keras2_weights(f)


def read_keras_config(path: str) -> Optional[dict]:
    """``{"keras_version", "layers": [{"name", "class_name", "config"}, ...]}`` from a ``.keras`` file or a
    Keras 2 model ``.h5`` (layer options such as units, activation, recurrent_activation, use_bias,
    go_backwards, return_sequences, Bidirectional's merge_mode); None for a weights-only file."""
    f, config, version = _open(path)
    f.close()
    if config is None:
        return None
    return {"keras_version": version, "layers": keras_layers(config)}
