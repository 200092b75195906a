"""Weight conversion between TF's LSTMCell variables, Keras LSTM weights, torch.nn.LSTM state dicts
and our modules, one layer and direction at a time (``triton_lstm.porting`` converts whole stacks).

TF: kernel [D + P, 4N] with gate columns i, j, f, o, one bias, forget_bias added at run time.
Keras: kernel [D, 4N] and recurrent_kernel [N, 4N] with gate columns i, f, c, o, one bias, no forget bias.
torch: weight_ih [4N, D], weight_hh [4N, P] with gate rows i, f, g(=j), o, bias_ih + bias_hh,
weight_hr [P, N] with proj_size. torch has no peepholes, no clips and only tanh: converting a cell
that uses them into nn.LSTM is an error, never a silent drop. Every shape is checked.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from triton_lstm.checks import check_forget_bias, shape_of
from triton_lstm.keras_files import read_keras_config, read_keras_weights  # noqa: F401  (re-exported)
from triton_lstm.tf_checkpoint import read_tf_checkpoint  # noqa: F401  (re-exported)

Tensor = torch.Tensor


def transposed_view(w: Tensor) -> bool:
    """Whether w is 2-D and w.t() contiguous: the transposed view of a contiguous tensor (as ``w.t()``
    of nn.LSTM's weights), or either way when a dimension of size 1 leaves its stride free."""
    return w.dim() == 2 and w.t().is_contiguous()


def swap_gates(w: Tensor, dim: int = -1) -> Tensor:
    """A copy of w with the 2nd and 3rd of its four gate blocks along ``dim`` swapped: TF's
    (i, j, f, o) <-> torch's and Keras' (i, f, g/c, o), both ways. A ``transposed_view`` swapped
    along its last dimension comes back a transposed view too, its blocks copied along memory (a
    transposing copy is several times slower), so that its gradient keeps its layout as well.

    NOTE: copying the four blocks ran about 5x faster, forward and backward, than indexing the 4N
    entries with a permutation (a 512 x 2048 float32 weight on CPU: 1.2 against 6.1 ms).
    """
    if dim in (-1, 1) and transposed_view(w):
        return swap_gates(w.t(), 0).t()
    i, j, f, o = w.chunk(4, dim)
    return torch.cat([i, f, j, o], dim)


class _SwapGatesKept(torch.autograd.Function):
    """``swap_gates_kept``: the weights kept for backward, where reading them runs autograd's version
    check; an output is differentiable only where its weight requires grad."""
    generate_vmap_rule = True

    @staticmethod
    def forward(dim: int, *weights: Tensor) -> tuple[Tensor, ...]:
        return tuple(swap_gates(w, dim) for w in weights)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.dim, weights = inputs[0], inputs[1:]
        ctx.save_for_backward(*weights)
        ctx.mark_non_differentiable(*(out for w, out in zip(weights, output) if not w.requires_grad))

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Optional[Tensor], ...]:
        ctx.saved_tensors  # noqa: B018 (the version check: raises if a weight changed since the forward)
        return (None, *(swap_gates(g, ctx.dim) if needed else None
                         for g, needed in zip(grads, ctx.needs_input_grad[1:])))


def swap_gates_kept(*weights: Tensor, dim: int = -1) -> tuple[Tensor, ...]:
    """``swap_gates`` of each weight for a forward whose backward reads the copies: the weights are kept
    for backward, so that one changed in place in between is autograd's error, as in torch's own
    LSTM, rather than gradients of other weights. Plain copies where no weight takes a gradient (no
    backward reads them; torch.func.functionalize takes no autograd.Function). No forward-mode
    derivative (torch.compile cannot trace an autograd.Function's): under forward-mode AD, take
    ``swap_gates``."""
    if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
        return tuple(swap_gates(w, dim) for w in weights)
    return _SwapGatesKept.apply(dim, *weights)


def as_tensor(value: Any, name: str = "value") -> Tensor:
    """A checkpoint value (numpy array, list or tensor) as a tensor; real tensors are taken as they are."""
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name}: expected a real tensor, got dtype {value.dtype}")
        return value
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    return torch.as_tensor(array)


def as_array(t: Tensor, dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """A weight as a numpy array of its own, in ``dtype`` (None: its dtype; bfloat16, which numpy
    lacks, as float32)."""
    dtype = dtype or t.dtype
    return t.detach().to(device="cpu", dtype=torch.float32 if dtype == torch.bfloat16 else dtype).numpy().copy()


def _matrix(name: str, value: Any, rows: Optional[int], cols: Optional[int], meaning: str) -> Tensor:
    """``value`` as a floating rank-2 tensor of shape [rows, cols] (None: any size >= 1)."""
    t = as_tensor(value, name)
    ok = (t.dim() == 2 and all(s >= 1 for s in t.shape)
          and (rows is None or t.shape[0] == rows) and (cols is None or t.shape[1] == cols))
    if not ok:
        raise ValueError(f"{name}: expected shape [{rows or '?'}, {cols or '?'}] ({meaning}), got {shape_of(t)}")
    return t.float() if not t.is_floating_point() else t


def _vector(name: str, value: Any, size: int, meaning: str) -> Tensor:
    t = as_tensor(value, name)
    if shape_of(t) != (size,):
        raise ValueError(f"{name}: expected shape ({size},) ({meaning}), got {shape_of(t)}")
    return t.float() if not t.is_floating_point() else t


def _num_units(name: str, t: Tensor, axis: int) -> int:
    if t.shape[axis] % 4:
        raise ValueError(f"{name}: dimension {axis} must be 4 * num_units (four gates), got shape {shape_of(t)}")
    return t.shape[axis] // 4


def tf_to_torch_lstm(kernel: Any, bias: Any, projection: Optional[Any] = None,
                     forget_bias: float = 1.0, suffix: str = "_l0") -> dict[str, Tensor]:
    """nn.LSTM parameters (one layer/direction, named with ``suffix``) computing TF's cell.

    kernel [D + P, 4N], bias [4N], projection [N, P] or None. forget_bias is folded into bias_ih's f
    block; this agrees with TF to rounding only (pass 0 to a module that adds it at run time).
    """
    forget_bias = check_forget_bias(forget_bias)
    kernel = _matrix("kernel", kernel, None, None, "input_size + output size, 4 * num_units")
    n = _num_units("kernel", kernel, 1)
    proj = None if projection is None else _matrix("projection", projection, n, None, f"num_units {n}, num_proj")
    p = n if proj is None else proj.shape[1]
    if kernel.shape[0] <= p:
        raise ValueError(f"kernel: expected {kernel.shape[0]} rows = input_size + output size {p} with "
                         f"input_size >= 1, got shape {shape_of(kernel)}")
    bias = _vector("bias", bias, 4 * n, f"4 * num_units {n}")
    d = kernel.shape[0] - p
    b = swap_gates(bias)
    b[n:2 * n] += forget_bias
    out = {f"weight_ih{suffix}": swap_gates(kernel[:d]).t().contiguous(),
           f"weight_hh{suffix}": swap_gates(kernel[d:]).t().contiguous(),
           f"bias_ih{suffix}": b, f"bias_hh{suffix}": torch.zeros_like(b)}
    if proj is not None:
        out[f"weight_hr{suffix}"] = proj.t().contiguous()
    return out


def _torch_layer(state_dict: Mapping[str, Any], suffix: str) -> tuple[dict[str, Tensor], torch.dtype]:
    """One layer/direction of an nn.LSTM-style state dict, every shape checked: weight_ih [4N, D],
    weight_hh [4N, P], bias (bias_ih + bias_hh) [4N] if present, weight_hr [P, N], peepholes w_*_diag
    [N]; half precision in float32, so that sums and folded forget biases round once, at the end, to
    the returned dtype (weight_ih's)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of parameter names to tensors, got "
                        f"{type(state_dict).__name__}")
    name = f"weight_ih{suffix}"
    if name not in state_dict:
        layers = sorted(k[len("weight_ih"):] for k in state_dict if isinstance(k, str) and k.startswith("weight_ih"))
        raise ValueError(f"state_dict: no {name!r}; layers/directions present: {layers}")
    sd = {k: as_tensor(v, f"state_dict[{k!r}]").detach().cpu()
          for k, v in state_dict.items() if isinstance(k, str) and k.endswith(suffix)}
    dtype = sd[name].dtype if sd[name].is_floating_point() else torch.float32
    sd = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in sd.items()}
    w_ih = _matrix(f"state_dict[{name!r}]", sd[name], None, None, "4 * hidden_size, input_size")
    n = _num_units(f"state_dict[{name!r}]", w_ih, 0)
    proj = sd.get(f"weight_hr{suffix}")
    if proj is not None:
        proj = _matrix(f"state_dict['weight_hr{suffix}']", proj, None, n, f"proj_size, hidden_size {n}")
    p = n if proj is None else proj.shape[0]
    hh = f"weight_hh{suffix}"
    if hh not in sd:
        raise ValueError(f"state_dict: has {name!r} but no {hh!r}")
    out = {"weight_ih": w_ih, "weight_hh": _matrix(f"state_dict[{hh!r}]", sd[hh], 4 * n, p,
                                                    f"4 * hidden_size {n}, output size {p}")}
    has_bias = [f"bias_{k}{suffix}" in sd for k in ("ih", "hh")]
    if any(has_bias) and not all(has_bias):
        raise ValueError(f"state_dict: bias_ih{suffix} and bias_hh{suffix} come together; got only one")
    if all(has_bias):
        out["bias"] = sum(_vector(f"state_dict['bias_{k}{suffix}']", sd[f"bias_{k}{suffix}"], 4 * n,
                                  f"4 * hidden_size {n}") for k in ("ih", "hh"))
    if proj is not None:
        out["weight_hr"] = proj
    for gate in ("f", "i", "o"):
        key = f"w_{gate}_diag{suffix}"
        if key in sd:
            out[f"w_{gate}_diag"] = _vector(f"state_dict[{key!r}]", sd[key], n, f"hidden_size {n}")
    return out, dtype


def torch_lstm_to_tf(state_dict: Mapping[str, Any], suffix: str = "_l0", forget_bias: float = 1.0,
                     scope: str = "rnn/lstm_cell") -> dict[str, np.ndarray]:
    """TF LSTMCell variables (``scope/kernel``, ``scope/bias``, ``scope/projection/kernel``, and the
    peepholes of a triton_lstm.LSTM) from one layer/direction of an nn.LSTM state dict; forget_bias is
    subtracted from the f block so that a TF cell built with the same forget_bias computes the same function."""
    forget_bias = check_forget_bias(forget_bias)
    layer, dtype = _torch_layer(state_dict, suffix)
    n = layer["weight_ih"].shape[0] // 4
    bias = swap_gates(layer["bias"]) if "bias" in layer else layer["weight_ih"].new_zeros(4 * n)
    bias[2 * n:3 * n] -= forget_bias
    prefix = f"{scope}/" if scope else ""
    out = {prefix + "kernel": as_array(torch.cat([swap_gates(layer["weight_ih"], 0).t(),
                                                  swap_gates(layer["weight_hh"], 0).t()]), dtype),
           prefix + "bias": as_array(bias, dtype)}
    if "weight_hr" in layer:
        out[prefix + "projection/kernel"] = as_array(layer["weight_hr"].t(), dtype)
    for gate in ("f", "i", "o"):
        if f"w_{gate}_diag" in layer:
            out[prefix + f"w_{gate}_diag"] = as_array(layer[f"w_{gate}_diag"], dtype)
    return out


def keras_to_torch_lstm(kernel: Any, recurrent_kernel: Any, bias: Optional[Any] = None,
                        suffix: str = "_l0") -> dict[str, Tensor]:
    """nn.LSTM parameters (one layer/direction) from a Keras LSTM's weights: kernel [D, 4N],
    recurrent_kernel [N, 4N], bias [4N] or None (``use_bias=False``: no bias entries). Keras and torch
    share the gate order, so this is a transpose; Keras adds no forget bias at run time.

    A bias of 8N is a CuDNNLSTM's (Keras 2's, tf-keras'), as Keras itself tells them apart: cuDNN's
    two biases, which are torch's (bias_ih, bias_hh), and kernels in the layout cuDNN reads. Each
    gate's block of the kernel, [D, N], holds the [N, D] matrix cuDNN multiplies the inputs by,
    flattened; each of the recurrent kernel, [N, N], the matrix cuDNN multiplies h by. Keras converts
    them alike (``_convert_rnn_weights``) when an LSTM loads a CuDNNLSTM's weights."""
    kernel = _matrix("kernel", kernel, None, None, "input_size, 4 * units")
    n = _num_units("kernel", kernel, 1)
    recurrent = _matrix("recurrent_kernel", recurrent_kernel, n, 4 * n, f"units {n}, 4 * units")
    cudnn = bias is not None and shape_of(as_tensor(bias, "bias")) == (8 * n,)
    if cudnn:
        d = kernel.shape[0]
        gates = kernel.reshape(d, 4, n).transpose(0, 1).contiguous()     # [4, D, N], each gate's block
        out = {f"weight_ih{suffix}": gates.reshape(4 * n, d),
               f"weight_hh{suffix}": recurrent.reshape(n, 4, n).transpose(0, 1).reshape(4 * n, n)}
    else:
        out = {f"weight_ih{suffix}": kernel.t().contiguous(), f"weight_hh{suffix}": recurrent.t().contiguous()}
    if bias is not None:
        b = _vector("bias", bias, 8 * n if cudnn else 4 * n, f"4 * units {n}, or 8 * units for a CuDNNLSTM")
        out.update({f"bias_ih{suffix}": b[:4 * n].clone(), f"bias_hh{suffix}": b[4 * n:].clone() if cudnn
                    else torch.zeros_like(b)})
    return out


def torch_lstm_to_keras(state_dict: Mapping[str, Any], suffix: str = "_l0",
                        forget_bias: float = 0.0) -> dict[str, np.ndarray]:
    """A Keras LSTM's weights ``{"kernel", "recurrent_kernel", "bias"}`` from one layer/direction of an
    nn.LSTM-style state dict. ``forget_bias`` (a module's run-time one) is folded into the f block, since
    Keras has none. Peepholes and projections have no Keras equivalent and are refused."""
    forget_bias = check_forget_bias(forget_bias)
    layer, dtype = _torch_layer(state_dict, suffix)
    extra = sorted(k for k in layer if k.startswith("w_") or k == "weight_hr")
    if extra:
        raise ValueError(f"state_dict: Keras' LSTM cannot express {extra} (layer{suffix}); it has no peepholes "
                         f"and no projection")
    n = layer["weight_ih"].shape[0] // 4
    bias = layer["bias"].clone() if "bias" in layer else layer["weight_ih"].new_zeros(4 * n)
    bias[n:2 * n] += forget_bias
    return {"kernel": as_array(layer["weight_ih"].t(), dtype),
            "recurrent_kernel": as_array(layer["weight_hh"].t(), dtype), "bias": as_array(bias, dtype)}


def keras_to_tf_lstm(kernel: Any, recurrent_kernel: Any, bias: Optional[Any] = None,
                     forget_bias: float = 1.0) -> dict[str, Tensor]:
    """TF LSTMCell variables ``{"kernel" [D + N, 4N], "bias" [4N]}`` computing a Keras LSTM (sigmoid
    gates) in a TF cell with ``forget_bias`` (subtracted from the f block, since Keras adds none)."""
    torch_sd = keras_to_torch_lstm(kernel, recurrent_kernel, bias)
    tf = torch_lstm_to_tf(torch_sd, forget_bias=forget_bias, scope="")
    return {k: torch.from_numpy(v) for k, v in tf.items()}


def _tail(key: str) -> str:
    return key.split(":")[0].rsplit("/", 1)[-1]


# Keras' peephole LSTM cell's weights and TF1's LSTMCell's for the same gates.
KERAS_PEEPHOLES = {"input_gate_peephole_weights": "w_i_diag", "forget_gate_peephole_weights": "w_f_diag",
                   "output_gate_peephole_weights": "w_o_diag"}


def keras_as_tf_variables(weights: Mapping[str, Any], scope: Optional[str], forget_bias: float) -> Mapping[str, Any]:
    """``weights`` unchanged when it holds TF LSTMCell variables; a Keras LSTM's weights (names ending in
    ``kernel``, ``recurrent_kernel``, ``bias``, as ``read_keras_weights`` or Keras 2 files name them)
    as the TF variables of a cell with ``forget_bias``, and the peephole weights of Keras' peephole
    cell (``input_gate_peephole_weights`` ...), which act as TF1's, as ``w_i_diag`` ... ``scope``
    keeps only names under it."""
    prefix = scope.rstrip("/") + "/" if scope else ""
    recurrent = [k for k in weights if isinstance(k, str) and k.startswith(prefix) and _tail(k) == "recurrent_kernel"]
    if not recurrent:
        return weights
    if len(recurrent) > 1:
        raise ValueError(f"weights: Keras LSTM weights of several layers {sorted(recurrent)}; pass scope= (the "
                         f"layer's name) to pick one")
    base = recurrent[0].split(":")[0][:-len("recurrent_kernel")]
    names = {k.split(":")[0]: k for k in weights if isinstance(k, str)}
    found = {w: weights[names[base + w]] for w in ("kernel", "bias", *KERAS_PEEPHOLES) if base + w in names}
    if "kernel" not in found:
        raise ValueError(f"weights: Keras layout ({recurrent[0]!r}) without its {base + 'kernel'!r}")
    tf = keras_to_tf_lstm(found["kernel"], weights[recurrent[0]], found.get("bias"), forget_bias)
    tf.update({tf_name: found[keras] for keras, tf_name in KERAS_PEEPHOLES.items() if keras in found})
    return {base + name: value for name, value in tf.items()}


def cell_to_torch_lstm(cell) -> torch.nn.LSTM:
    """A one-layer torch.nn.LSTM computing ``cell`` (an LSTMCell without TF-only features)."""
    from triton_lstm.activations import resolve_activation
    from triton_lstm.cell import LSTMCell
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"cell: expected a triton_lstm.LSTMCell, got {type(cell).__name__}")
    cell._require_built("cell_to_torch_lstm")
    unsupported = [what for what, bad in (
        ("use_peepholes", cell.use_peepholes), ("cell_clip", cell.cell_clip is not None),
        ("proj_clip", cell.proj_clip is not None), (f"activation={cell.activation!r}",
                                                      resolve_activation(cell.activation)[0] != "tanh"),
        ("num_proj >= num_units", cell.num_proj is not None and cell.num_proj >= cell.num_units)) if bad]
    if unsupported:
        raise ValueError(f"cell: torch.nn.LSTM cannot express {', '.join(unsupported)}; triton_lstm.LSTM "
                         f"has these options: triton_lstm.porting.tf_to_module(cell.tf_weights(scope=\"lstm_cell\"), "
                         f"forget_bias=cell.forget_bias, cell_clip=cell.cell_clip, proj_clip=cell.proj_clip, "
                         f"activation=cell.activation).to(cell.kernel) builds one (batch-first)")
    lstm = torch.nn.LSTM(cell.input_size, cell.num_units, proj_size=cell.num_proj or 0,
                         device=cell.kernel.device, dtype=cell.kernel.dtype)
    lstm.load_state_dict(tf_to_torch_lstm(cell.kernel, cell.bias, cell.projection(), cell.forget_bias))
    return lstm
