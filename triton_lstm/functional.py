"""The fused LSTM step: launchers, weight gradients, and the public ``lstm_cell`` (ops in ``triton_lstm.ops``)."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Optional

import torch

from triton_lstm.activations import (ACTIVATIONS, Activation, activation_id, resolve_activation,
                                     resolve_recurrent_activation)
from triton_lstm.checks import CELL_NAMES, Names, check_cell_args, check_clip, check_forget_bias
from triton_lstm.higher_order import forward_mode
from triton_lstm.kernels.lstm_step import lstm_step_bwd_kernel, lstm_step_fwd_kernel, lstm_step_proj_kernel
from triton_lstm import launch
from triton_lstm.launch import Problem, kernel_constants, kernels_run_on
from triton_lstm.reference import lstm_cell_reference, padding_zeroed

Tensor = torch.Tensor


@dataclass(frozen=True)
class CellOptions:
    """The non-tensor options of a TF LSTMCell, as the kernels take them."""
    act: int
    gate_act: int
    forget_bias: float
    cell_clip: Optional[float]
    proj_clip: Optional[float]

    def kernel_args(self) -> dict:
        return dict(forget_bias=self.forget_bias, cell_clip=self.cell_clip or 0.0,
                    proj_clip=self.proj_clip or 0.0, ACT=self.act, GATE_ACT=self.gate_act,
                    HAS_CELL_CLIP=self.cell_clip is not None, HAS_PROJ_CLIP=self.proj_clip is not None)


def _rows_unit_stride(t: Tensor) -> Tensor:
    return t if t.stride(1) == 1 else t.contiguous()


def contiguous_or_none(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    """The kernels index weights as dense row-major arrays (views such as ``w.t()`` are copied)."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def step_forward(x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor,
                 peepholes: tuple[Optional[Tensor], ...], projection: Optional[Tensor], opts: CellOptions):
    """Launch the forward kernels (gates, then the projection). Returns (h_new, c_new fp32, z fp32,
    m or None, y or None)."""
    B, D = x.shape
    N = kernel.shape[1] // 4
    P = h.shape[1]
    x, h = _rows_unit_stride(x), _rows_unit_stride(h)
    c = c.contiguous()
    dev, dtype = x.device, x.dtype
    f32 = dict(device=dev, dtype=torch.float32)
    z = torch.empty(B, 4 * N, **f32)
    c_new = torch.empty(B, N, **f32)
    m = torch.empty(B, N, device=dev, dtype=dtype)
    wf, wi, wo = peepholes
    pb = Problem("step_fwd", B, D, N, P, projection is not None, dtype)
    launch.launch_kernel(lstm_step_fwd_kernel, pb, (x, x.stride(0), h, h.stride(0), c, kernel, bias, wi, wf, wo, z, c_new, m, B, D,
                                      N, P),
           kernel_constants(opts, dtype, lstm_step_fwd_kernel, USE_PEEPHOLES=wf is not None), dev)
    if projection is None:
        return m, c_new, z, None, None
    h_new = torch.empty(B, P, device=dev, dtype=dtype)
    y = torch.empty(B, P, **f32) if opts.proj_clip is not None else None
    launch.launch_kernel(lstm_step_proj_kernel, dataclasses.replace(pb, kernel="step_proj"),
           (m, projection, y, h_new, B, N, P), kernel_constants(opts, dtype, lstm_step_proj_kernel), dev)
    return h_new, c_new, z, m, y


def step_backward(dh_new: Tensor, dc_new: Tensor, z: Tensor, c: Tensor, kernel: Tensor,
                  peepholes: tuple[Optional[Tensor], ...], projection: Optional[Tensor], y: Optional[Tensor],
                  x_dtype: torch.dtype, D: int, opts: CellOptions, wanted: tuple[bool, bool] = (True, True)):
    """Launch the backward kernel (dz, dc_prev); dx and dh_prev are GEMMs of dz, each computed where
    ``wanted`` says (None where not). Returns (dz fp32, dc_prev fp32, dx, dh_prev, dy fp32 or None)."""
    B, N = c.shape
    P = dh_new.shape[1]
    dev = c.device
    dy = dh_new
    if y is not None:
        # Inclusive at both bounds, NaN gets 0: as the kernels' clip_grad and torch.clamp.
        dy = torch.where((y >= -opts.proj_clip) & (y <= opts.proj_clip), dh_new, 0.0)
    dz = torch.empty(B, 4 * N, device=dev, dtype=torch.float32)
    dc_prev = torch.empty(B, N, device=dev, dtype=torch.float32)
    wf, wi, wo = peepholes
    pb = Problem("step_bwd", B, D, N, P, projection is not None, x_dtype)
    launch.launch_kernel(lstm_step_bwd_kernel, pb, (dy, dc_new, z, c.contiguous(), wi, wf, wo, projection, dz, dc_prev, B, N, P),
           kernel_constants(opts, x_dtype, lstm_step_bwd_kernel, USE_PEEPHOLES=wf is not None,
                            HAS_PROJ=projection is not None), dev)
    dz_w = dz.to(kernel.dtype)
    dx = (dz_w @ kernel[:D].t()).to(x_dtype) if wanted[0] else None
    dh_prev = (dz_w @ kernel[D:].t()).to(x_dtype) if wanted[1] else None
    if projection is None:
        return dz, dc_prev, dx, dh_prev, None
    # An op's outputs may not alias its inputs: without proj_clip, dy would be dh_new itself.
    return dz, dc_prev, dx, dh_prev, (dy if y is not None else dy.clone())


def weight_grads(needs: tuple[bool, ...], dz: Tensor, x: Tensor, h: Tensor, c_prev: Tensor, c_new: Optional[Tensor],
                 m: Optional[Tensor], dy: Optional[Tensor], dtype: torch.dtype, valid: Optional[Tensor] = None):
    """Batch reductions as GEMMs (deterministic): W_x, W_h, bias, w_f/w_i/w_o_diag, projection.

    x, h, c_prev, c_new, m, dz, dy may carry leading dimensions (time steps); all are reduced (c_new
    only for w_o_diag's, m and dy only for the projection's: None otherwise). ``valid``
    (``within_lengths``): the steps past a row's length, whose gradients are zeros, take nothing from
    the values x, h, c and m hold there.
    """
    need_wx, need_wh, need_bias, need_wf, need_wi, need_wo, need_proj = needs

    def rows(t: Tensor, masked: bool = False) -> Tensor:
        return (padding_zeroed(t, valid) if masked else t).flatten(0, -2).float()

    dz2 = rows(dz)   # zeros past the lengths already, as dy
    d_wx = (rows(x, True).t() @ dz2).to(dtype) if need_wx else None
    d_wh = (rows(h, True).t() @ dz2).to(dtype) if need_wh else None
    d_bias = dz2.sum(0).to(dtype) if need_bias else None
    d_wf = d_wi = d_wo = d_proj = None
    if need_wf or need_wi or need_wo:
        dzi, _, dzf, dzo = dz2.chunk(4, dim=1)
        c = rows(c_prev, True)
        d_wf = (dzf * c).sum(0).to(dtype) if need_wf else None
        d_wi = (dzi * c).sum(0).to(dtype) if need_wi else None
        d_wo = (dzo * rows(c_new, True)).sum(0).to(dtype) if need_wo else None
    if need_proj:
        d_proj = (rows(m, True).t() @ rows(dy)).to(dtype)
    return d_wx, d_wh, d_bias, d_wf, d_wi, d_wo, d_proj


# The device types torch.autocast knows (torch.is_autocast_enabled raises for others, as meta), asked
# once here: Dynamo in torch 2.11 cannot trace torch.amp.is_autocast_available (a fullgraph compile
# of any entry point failed on it).
_AUTOCAST_DEVICE_TYPES = frozenset(
    t for t in ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "maia", "ipu",
                torch._C._get_privateuse1_backend_name())
    if torch.amp.is_autocast_available(t))


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype torch.autocast casts to on ``device``, or None where it is off."""
    if device.type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def autocast_to(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a tensor of ``dtype`` on ``device`` has once torch.autocast casts it: the autocast
    dtype for float32, float16 and bfloat16 where autocast is on; float64 and non-floating dtypes
    stay (torch.autocast leaves float64 as it is)."""
    cast = autocast_dtype(device)
    return cast if cast is not None and dtype.is_floating_point and dtype != torch.float64 else dtype


def autocast_alike(dtype: torch.dtype, other: torch.dtype, device: torch.device) -> bool:
    """Whether tensors of the two dtypes on ``device`` reach the ops in one dtype (``autocast_to``)."""
    return dtype == other or autocast_to(dtype, device) == autocast_to(other, device)


def autocast(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    """Under torch.autocast, the inputs in the dtype autocast gives them (``autocast_to``: as
    nn.LSTM's inputs are); otherwise, and for what is not a tensor (left to the argument checks),
    unchanged. Callers pass the cell state to ``autocast_state``."""
    device = next((t.device for t in tensors if isinstance(t, Tensor)), None)
    if device is None or autocast_dtype(device) is None:
        return tensors
    return tuple(t.to(autocast_to(t.dtype, t.device)) if isinstance(t, Tensor) else t for t in tensors)


def autocast_state(c: Tensor) -> Tensor:
    """Under torch.autocast, a cell state in half precision in float32 (without loss: the state is
    computed in float32, and autocast may have moved its inputs to another half dtype); otherwise,
    and a float32 or float64 state, unchanged."""
    half = isinstance(c, Tensor) and c.dtype in (torch.float16, torch.bfloat16)
    return c.float() if half and autocast_dtype(c.device) is not None else c


_WARNED_ACTIVATIONS: set = set()


def _warn_reference_activation(arg: str, activation) -> None:
    """Once per argument and callable (by identity where it is not hashable, as a dataclass instance);
    not while torch.compile traces (Dynamo cannot trace warnings.warn: fullgraph would fail)."""
    key = (arg, activation if isinstance(activation, Hashable) else id(activation))
    if key in _WARNED_ACTIVATIONS or torch.compiler.is_compiling():
        return
    _WARNED_ACTIVATIONS.add(key)
    warnings.warn(f"{arg} {activation!r} has no kernel implementation; this LSTM runs on the "
                  f"plain-PyTorch reference path (slower). Kernel activations: {', '.join(ACTIVATIONS)}.",
                  stacklevel=4)


def resolve_activations(activation: Activation, recurrent_activation: Activation):
    """(kernel ids or None, torch functions) of the cell and gate activations; None ids (with a
    one-time warning) when either has no kernel implementation and the reference path must run."""
    (name, fn), (gate_name, gate_fn) = resolve_activation(activation), resolve_recurrent_activation(recurrent_activation)
    if name is None:
        _warn_reference_activation("activation", activation)
    if gate_name is None:
        _warn_reference_activation("recurrent_activation", recurrent_activation)
    ids = None if name is None or gate_name is None else (activation_id(name), activation_id(gate_name))
    return ids, (fn, gate_fn)


def lstm_cell(x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor,
              w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None,
              w_o_diag: Optional[Tensor] = None, projection: Optional[Tensor] = None, *,
              forget_bias: float = 1.0, cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
              activation: Activation = None, recurrent_activation: Activation = None) -> tuple[Tensor, Tensor]:
    """One step of TF's LSTMCell on tensors the caller owns.

    Args:
        x: [B, D] inputs.  c: [B, N] cell state (float32 or x's dtype).  h: [B, P] previous output.
        kernel: [D + P, 4N], gates i, j, f, o.  bias: [4N].
        w_f_diag, w_i_diag, w_o_diag: [N] peephole weights, all or none.
        projection: [N, P] output projection (LSTMP), or None (then P = N).
        forget_bias, cell_clip, proj_clip, activation: as TF's LSTMCell.
        recurrent_activation: the gates' activation (None: sigmoid, as TF; Keras layers may set it).
    Returns:
        (h_new [B, P] in x's dtype, c_new [B, N] in float32; float64 for float64 inputs).
        Under torch.autocast, x, h and the weights are cast to the autocast dtype first (float64 ones
        stay, as autocast leaves them); c in half precision is taken in float32.
    """
    return named_cell(CELL_NAMES, x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                      forget_bias=forget_bias, cell_clip=cell_clip, proj_clip=proj_clip, activation=activation,
                      recurrent_activation=recurrent_activation)


def named_cell(names: Names, x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor,
               w_f_diag: Optional[Tensor], w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor],
               projection: Optional[Tensor], *, forget_bias: float, cell_clip: Optional[float],
               proj_clip: Optional[float], activation: Activation,
               recurrent_activation: Activation) -> tuple[Tensor, Tensor]:
    """``lstm_cell`` with errors naming x, h and c as ``names`` says (its callers' own arguments)."""
    x, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection = autocast(
        x, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    c = autocast_state(c)
    peepholes = (w_f_diag, w_i_diag, w_o_diag)
    check_cell_args(x, c, h, kernel, bias, peepholes, projection, proj_clip, names)
    opts_clip = check_clip("cell_clip", cell_clip), check_clip("proj_clip", proj_clip)
    forget_bias = check_forget_bias(forget_bias)
    ids, (fn, gate_fn) = resolve_activations(activation, recurrent_activation)
    # Forward-mode AD takes the reference too (``higher_order.forward_mode``).
    if ids is None or forward_mode((x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection)) \
            or not kernels_run_on(x.device, x.dtype):
        return lstm_cell_reference(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                                   forget_bias=forget_bias, cell_clip=opts_clip[0], proj_clip=opts_clip[1],
                                   activation=fn, recurrent_activation=gate_fn)
    from triton_lstm.ops import step  # ops builds on this module's launchers
    h_new, c_new, *_ = step(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, *ids, forget_bias,
                            *opts_clip)
    return h_new, c_new
