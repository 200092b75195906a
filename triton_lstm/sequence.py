"""A whole LSTM sequence (one layer, one direction) on the persistent kernels: launchers and ``lstm_sequence``."""
from __future__ import annotations

import os
from typing import Optional

import torch

from triton_lstm.activations import Activation, activation_name
from triton_lstm.checks import check_clip, check_forget_bias, check_sequence_args, shape_of
from triton_lstm.cpu import lstm_sequence_cpu
from triton_lstm.functional import CellOptions, autocast, resolve_activations
from triton_lstm.kernels.lstm_sequence import lstm_seq_bwd_kernel, lstm_seq_fwd_kernel
from triton_lstm.launch import (config_kwargs, interpreting, kernel_constants, kernels_run_on, launch_tuned,
                                sequence_candidates, sequence_config, tuning_key)
from triton_lstm.reference import lstm_sequence_reference

Tensor = torch.Tensor

# Polls of the barrier counter before a program gives up (a few seconds on a GPU); only reached
# if the grid was not co-resident, which sequence_config rules out.
MAX_SPINS = 1 << 24


def _check_sync(sync: Tensor) -> None:
    """With TRITON_LSTM_CHECK_BARRIER=1, raise if a grid barrier timed out (synchronises the host)."""
    if (os.environ.get("TRITON_LSTM_CHECK_BARRIER") == "1" and sync.is_cuda
            and not torch.cuda.is_current_stream_capturing()
            and int(sync[1]) != 0):
        raise RuntimeError("a grid barrier of the persistent LSTM kernel timed out: the grid was not co-resident")


def seq_forward(xw: Tensor, h0: Tensor, c0: Tensor, w_h: Tensor, peepholes, projection: Optional[Tensor],
                lengths: Optional[Tensor], opts: CellOptions, programs: Optional[int] = None):
    """Run the forward recurrence. xw [T, B, 4N] = x @ W_x + bias. Returns (out, hbuf, cbuf, z, m, y)."""
    T, B, N4 = xw.shape
    N, P = N4 // 4, h0.shape[1]
    dev, dtype = xw.device, h0.dtype
    f32 = dict(device=dev, dtype=torch.float32)
    hbuf = torch.empty(T + 1, B, P, device=dev, dtype=dtype)
    hbuf[0] = h0
    cbuf = torch.empty(T + 1, B, N, **f32)
    cbuf[0] = c0
    z = torch.empty(T, B, 4 * N, **f32)
    out = torch.empty(T, B, P, device=dev, dtype=dtype)
    m = torch.empty(T, B, N, device=dev, dtype=dtype) if projection is not None else None
    y = torch.empty(T, B, P, **f32) if opts.proj_clip is not None else None
    wf, wi, wo = peepholes
    sync = torch.zeros(2, device=dev, dtype=torch.int32)
    args = (xw, w_h, wi, wf, wo, projection, lengths, hbuf, cbuf, z, m, y, out, sync)
    consts = kernel_constants(opts, dtype, peepholes, projection, HAS_LENGTHS=lengths is not None)
    if T == 0:
        return out, hbuf, cbuf, z, m, y
    if interpreting() and programs is not None and programs > 1:
        cfg = sequence_config(B, N, P, dtype, dev, programs)
        for t in range(T):
            for phases in ((1, 2) if projection is not None else (1,)):
                lstm_seq_fwd_kernel[(cfg.programs,)](*args, t, 1, T, B, N, P, MAX_SPINS, PHASES=phases,
                                                    USE_BARRIER=False, **consts, **config_kwargs(cfg))
    else:
        consts.update(PHASES=3, USE_BARRIER=True)
        launch_tuned(lstm_seq_fwd_kernel, "seq_fwd", args + (0, T, T, B, N, P, MAX_SPINS), consts,
                     lambda cfg: (cfg.programs,), sequence_config(B, N, P, dtype, dev, programs),
                     lambda: sequence_candidates(B, N, P, dtype, dev, programs), dev,
                     tuning_key(dtype, dict(B=B, N=N, P=P), consts), before_run=sync.zero_)
        _check_sync(sync)
    return out, hbuf, cbuf, z, m, y


def seq_backward(dout: Tensor, dh_T: Tensor, dc_T: Tensor, z: Tensor, cbuf: Tensor, w_h: Tensor, peepholes,
                 projection: Optional[Tensor], y: Optional[Tensor], lengths: Optional[Tensor], opts: CellOptions,
                 programs: Optional[int] = None):
    """Run the reverse recurrence. Returns (dz [T, B, 4N], dy [T, B, P], dh0, dc0), all fp32."""
    T, B, N4 = z.shape
    N, P = N4 // 4, dh_T.shape[1]
    dev = z.device
    dh = dh_T.float().clone()
    dc = dc_T.float().clone()
    dz = torch.empty(T, B, 4 * N, device=dev, dtype=torch.float32)
    dy = torch.empty(T, B, P, device=dev, dtype=torch.float32)
    wf, wi, wo = peepholes
    sync = torch.zeros(2, device=dev, dtype=torch.int32)
    args = (dout, dh, dc, z, cbuf, w_h, wi, wf, wo, projection, y, lengths, dy, dz, sync)
    consts = kernel_constants(opts, w_h.dtype, peepholes, projection, HAS_LENGTHS=lengths is not None)
    if T == 0:
        return dz, dy, dh, dc
    if interpreting() and programs is not None and programs > 1:
        cfg = sequence_config(B, N, P, w_h.dtype, dev, programs)
        launches = [(T - 1, 0, True, 3)] + [(t, 1, False, ph) for t in range(T - 1, -1, -1) for ph in (1, 2)]
        for t_first, n_steps, prologue, phases in launches:
            lstm_seq_bwd_kernel[(cfg.programs,)](*args, t_first, n_steps, T, B, N, P, MAX_SPINS, PROLOGUE=prologue,
                                                PHASES=phases, USE_BARRIER=False, **consts, **config_kwargs(cfg))
    else:
        def restore():
            dh.copy_(dh_T)
            dc.copy_(dc_T)
            sync.zero_()

        consts.update(PROLOGUE=True, PHASES=3, USE_BARRIER=True)
        launch_tuned(lstm_seq_bwd_kernel, "seq_bwd", args + (T - 1, T, T, B, N, P, MAX_SPINS), consts,
                     lambda cfg: (cfg.programs,), sequence_config(B, N, P, w_h.dtype, dev, programs),
                     lambda: sequence_candidates(B, N, P, w_h.dtype, dev, programs), dev,
                     tuning_key(w_h.dtype, dict(B=B, N=N, P=P), consts), before_run=restore)
        _check_sync(sync)
    return dz, dy, dh, dc


def check_lengths(lengths: Optional[Tensor], T: int, B: int, device: torch.device) -> Optional[Tensor]:
    """sequence_length: [B] integers in [0, T] on the inputs' device; returned as int32."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"sequence_length: expected shape ({B},) = [batch], got {shape_of(lengths)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"sequence_length: expected an integer tensor, got {lengths.dtype}")
    if lengths.device != device:
        raise ValueError(f"sequence_length: on {lengths.device}, but the inputs are on {device}")
    # Checking values reads them on the host: not possible while tracing or capturing a CUDA graph.
    tracing = torch.compiler.is_compiling() or (lengths.is_cuda and torch.cuda.is_current_stream_capturing())
    if B and not tracing and (bool((lengths < 0).any()) or bool((lengths > T).any())):
        raise ValueError(f"sequence_length: values must lie in [0, T={T}], got min {int(lengths.min())} "
                         f"and max {int(lengths.max())}")
    return lengths.to(torch.int32).contiguous()


def lstm_sequence(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                  w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None,
                  w_o_diag: Optional[Tensor] = None, projection: Optional[Tensor] = None,
                  lengths: Optional[Tensor] = None, *, forget_bias: float = 1.0, cell_clip: Optional[float] = None,
                  proj_clip: Optional[float] = None, activation: Activation = None,
                  recurrent_activation: Activation = None,
                  programs: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """TF's LSTMCell over a time-major sequence in one persistent kernel launch (forward and backward).

    Args:
        x: [T, B, D].  h0: [B, P].  c0: [B, N] (float32 or x's dtype).
        w_x: [D, 4N] and w_h: [P, 4N], the two row blocks of TF's kernel (gates i, j, f, o).
        bias: [4N].  w_f_diag, w_i_diag, w_o_diag: [N] or None.  projection: [N, P] or None.
        lengths: [B] integers in [0, T], or None for full length.
        activation, recurrent_activation: the cell's and the gates' (None: tanh and sigmoid, as TF).
        programs: grid size override (tests); None picks one program per SM at most.
    Returns:
        (outputs [T, B, P] in x's dtype, zero past each length; h_T [B, P]; c_T [B, N] float32).
        Under torch.autocast, x, h0 and the weights are cast to the autocast dtype first.
    """
    x, h0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection = autocast(
        x, h0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    T, B, D, N, P = check_sequence_args(x, h0, c0, w_x, w_h, bias, (w_f_diag, w_i_diag, w_o_diag),
                                        projection, proj_clip)
    clips = check_clip("cell_clip", cell_clip), check_clip("proj_clip", proj_clip)
    forget_bias = check_forget_bias(forget_bias)
    lengths = check_lengths(lengths, T, B, x.device)
    ids, (fn, gate_fn) = resolve_activations(activation, recurrent_activation)
    if ids is not None and x.device.type == "cpu" and not kernels_run_on(x.device, x.dtype):
        return lstm_sequence_cpu(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths,
                                 forget_bias=forget_bias, cell_clip=clips[0], proj_clip=clips[1],
                                 activation=activation_name(ids[0]), recurrent_activation=activation_name(ids[1]))
    if ids is None or not kernels_run_on(x.device, x.dtype):
        return lstm_sequence_reference(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                                       lengths, forget_bias=forget_bias, cell_clip=clips[0], proj_clip=clips[1],
                                       activation=fn, recurrent_activation=gate_fn)
    # The input half of the gate GEMM for all steps at once, off the serial path.
    xw = torch.addmm(bias, x.reshape(T * B, D), w_x).reshape(T, B, 4 * N)
    out, hbuf, cbuf, *_ = torch.ops.triton_lstm.seq_fwd(xw, h0, c0, w_h, w_f_diag, w_i_diag, w_o_diag, projection,
                                                        lengths, *ids, forget_bias, *clips, programs)
    return out, hbuf[-1], cbuf[-1]
