"""Weight conversion between TF's LSTMCell variables, torch.nn.LSTM state dicts and our modules.

TF: kernel [D + P, 4N] with gate columns i, j, f, o, one bias, forget_bias added at run time.
torch: weight_ih [4N, D], weight_hh [4N, P] with gate rows i, f, g(=j), o, bias_ih + bias_hh,
weight_hr [P, N] with proj_size. torch has no peepholes, no clips and only tanh: converting a cell
that uses them into nn.LSTM is an error, never a silent drop.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

Tensor = torch.Tensor


def gate_permutation(n: int, device=None) -> Tensor:
    """Swaps the 2nd and 3rd gate blocks: TF's (i, j, f, o) <-> torch's (i, f, g, o), both ways."""
    return torch.cat([torch.arange(g * n, (g + 1) * n, device=device) for g in (0, 2, 1, 3)])


def as_tensor(value: Any) -> Tensor:
    """A checkpoint value (numpy array, list or tensor) as a tensor; tensors are taken as they are."""
    return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


def tf_to_torch_lstm(kernel: Any, bias: Any, projection: Optional[Any] = None,
                     forget_bias: float = 1.0, suffix: str = "_l0") -> dict[str, Tensor]:
    """nn.LSTM parameters (one layer/direction, named with ``suffix``) computing TF's cell.

    forget_bias is folded into bias_ih's f block; this agrees with TF to rounding only.
    """
    kernel, bias = as_tensor(kernel), as_tensor(bias)
    n = kernel.shape[1] // 4
    p = projection.shape[1] if projection is not None else n
    d = kernel.shape[0] - p
    perm = gate_permutation(n)
    b = bias[perm].clone()
    b[n:2 * n] += forget_bias
    out = {f"weight_ih{suffix}": kernel[:d, perm].t().contiguous(),
           f"weight_hh{suffix}": kernel[d:, perm].t().contiguous(),
           f"bias_ih{suffix}": b, f"bias_hh{suffix}": torch.zeros_like(b)}
    if projection is not None:
        out[f"weight_hr{suffix}"] = as_tensor(projection).t().contiguous()
    return out


def torch_lstm_to_tf(state_dict: Mapping[str, Any], suffix: str = "_l0", forget_bias: float = 1.0,
                     scope: str = "rnn/lstm_cell") -> dict[str, np.ndarray]:
    """TF LSTMCell variables (``scope/kernel``, ``scope/bias``, ``scope/projection/kernel``, and the
    peepholes of a triton_lstm.LSTM) from one layer/direction of an nn.LSTM state dict; forget_bias is subtracted from the f block so that a
    TF cell built with the same forget_bias computes the same function."""
    name = f"weight_ih{suffix}"
    if name not in state_dict:
        layers = sorted(k[len("weight_ih"):] for k in state_dict if k.startswith("weight_ih"))
        raise ValueError(f"state_dict: no {name!r}; layers/directions present: {layers}")
    sd = {k: as_tensor(v).detach().float().cpu() for k, v in state_dict.items() if k.endswith(suffix)}
    w_ih, w_hh = sd[name], sd[f"weight_hh{suffix}"]
    n = w_ih.shape[0] // 4
    perm = gate_permutation(n)
    if f"bias_ih{suffix}" in sd:
        bias = (sd[f"bias_ih{suffix}"] + sd[f"bias_hh{suffix}"])[perm]
    else:
        bias = torch.zeros(4 * n)
    bias[2 * n:3 * n] -= forget_bias
    prefix = f"{scope}/" if scope else ""
    out = {prefix + "kernel": torch.cat([w_ih[perm].t(), w_hh[perm].t()]).numpy(), prefix + "bias": bias.numpy()}
    if f"weight_hr{suffix}" in sd:
        out[prefix + "projection/kernel"] = sd[f"weight_hr{suffix}"].t().numpy()
    for gate in ("f", "i", "o"):  # triton_lstm.LSTM's peepholes
        if f"w_{gate}_diag{suffix}" in sd:
            out[prefix + f"w_{gate}_diag"] = sd[f"w_{gate}_diag{suffix}"].numpy()
    return out


def cell_to_torch_lstm(cell) -> torch.nn.LSTM:
    """A one-layer torch.nn.LSTM computing ``cell`` (an LSTMCell without TF-only features)."""
    from triton_lstm.activations import resolve_activation
    cell._require_built("cell_to_torch_lstm")
    unsupported = [what for what, bad in (
        ("use_peepholes", cell.use_peepholes), ("cell_clip", cell.cell_clip is not None),
        ("proj_clip", cell.proj_clip is not None), (f"activation={cell.activation!r}",
                                                      resolve_activation(cell.activation)[0] != "tanh"),
        ("num_proj >= num_units", cell.num_proj is not None and cell.num_proj >= cell.num_units)) if bad]
    if unsupported:
        raise ValueError(f"cell: torch.nn.LSTM cannot express {', '.join(unsupported)}; "
                         f"use triton_lstm.LSTM, which has these options")
    lstm = torch.nn.LSTM(cell.input_size, cell.num_units, proj_size=cell.num_proj or 0,
                         device=cell.kernel.device, dtype=cell.kernel.dtype)
    lstm.load_state_dict(tf_to_torch_lstm(cell.kernel, cell.bias, cell.projection(), cell.forget_bias))
    return lstm


def read_tf_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint as name -> array (needs TensorFlow installed)."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("read_tf_checkpoint needs TensorFlow; without it, pass a name -> array mapping "
                          "(e.g. from np.load) to LSTMCell.load_tf_weights") from e
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
