"""The kernels as ``torch.library`` custom ops, with fake (shape) implementations and autograd.

Registering them lets ``torch.compile(fullgraph=True)`` trace models that use LSTMCell,
dynamic_rnn or LSTM without graph breaks (the sequence length stays symbolic), and keeps all
allocations on torch's caching allocator, so the ops can be captured in CUDA graphs.

Ops (inputs are validated by the public functions in ``functional`` and ``sequence``):
    triton_lstm::step_fwd / step_bwd   one fused cell step and its backward
    triton_lstm::seq_fwd  / seq_bwd    the persistent sequence kernels; seq_fwd first runs the
                                       input GEMM x @ W_x + bias for all steps as one torch op
Absent optional outputs (m without a projection, y without proj_clip, dy) are empty tensors.

Gradients of any order and torch.func transforms as ``triton_lstm.higher_order`` describes; ``step``
and ``sequence`` are the ops in the form torch.func accepts.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from triton_lstm.flops import products, register, sequence_forward
from triton_lstm.functional import CellOptions, contiguous_or_none, step_backward, step_forward, weight_grads
from triton_lstm.higher_order import differentiable_vjp, reference_options, transformable, vmap_by_slices
from triton_lstm.reference import lstm_cell_reference, lstm_sequence_reference, padding_zeroed, within_lengths
from triton_lstm.sequence import seq_backward, seq_forward

Tensor = torch.Tensor
F32 = torch.float32


def _or_empty(t: Optional[Tensor], like: Tensor, dtype: torch.dtype) -> Tensor:
    return like.new_empty(0, dtype=dtype) if t is None else t


def _present(t: Tensor) -> Optional[Tensor]:
    """Real outputs are 2-D or 3-D (possibly with zero rows); the absent placeholder is 1-D."""
    return t if t.dim() > 1 else None


def _zeros_if_none(g: Optional[Tensor], shape, like: Tensor) -> Tensor:
    return like.new_zeros(shape, dtype=F32) if g is None else g.float().contiguous()


def _laid_out_like(grads: tuple[Optional[Tensor], ...], inputs: tuple) -> tuple[Optional[Tensor], ...]:
    """Each gradient with its input's strides, as torch's own ops return them: a weight passed as a
    view such as ``w.t()`` then gets a contiguous gradient once autograd undoes the view."""
    return tuple(g if g is None or g.stride() == t.stride() else torch.empty_like(t, dtype=g.dtype).copy_(g)
                 for g, t in zip(grads, inputs))


# -- one step ---------------------------------------------------------------------------------------
@torch.library.custom_op("triton_lstm::step_fwd", mutates_args=())
def step_fwd(x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor, w_f_diag: Optional[Tensor],
             w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor], projection: Optional[Tensor], act: int,
             gate_act: int, forget_bias: float, cell_clip: Optional[float],
             proj_clip: Optional[float]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (h_new, c_new fp32, z fp32, m or empty, y or empty)."""
    kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection = contiguous_or_none(
        kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    h_new, c_new, z, m, y = step_forward(x, c, h, kernel, bias, (w_f_diag, w_i_diag, w_o_diag), projection,
                                         CellOptions(act, gate_act, forget_bias, cell_clip, proj_clip))
    return h_new, c_new, z, _or_empty(m, x, x.dtype), _or_empty(y, x, F32)


@step_fwd.register_fake
def _(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, act, gate_act, forget_bias, cell_clip,
      proj_clip):
    B, N, P = x.shape[0], kernel.shape[1] // 4, h.shape[1]
    m = x.new_empty(B, N) if projection is not None else x.new_empty(0)
    y = x.new_empty(B, P, dtype=F32) if projection is not None and proj_clip is not None else x.new_empty(0, dtype=F32)
    return x.new_empty(B, P), x.new_empty(B, N, dtype=F32), x.new_empty(B, 4 * N, dtype=F32), m, y


@torch.library.custom_op("triton_lstm::step_bwd", mutates_args=())
def step_bwd(dh_new: Tensor, dc_new: Tensor, z: Tensor, c: Tensor, kernel: Tensor, w_f_diag: Optional[Tensor],
             w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor], projection: Optional[Tensor], y: Tensor,
             act: int, gate_act: int, forget_bias: float, cell_clip: Optional[float], proj_clip: Optional[float],
             input_size: int, wanted: Optional[Sequence[bool]] = None) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                Tensor]:
    """Returns (dz fp32, dc_prev fp32, dx, dh_prev, dy fp32 or empty). ``wanted``: whether dx and
    dh_prev are (None: both), each a product; one not wanted is empty."""
    kernel, w_f_diag, w_i_diag, w_o_diag, projection = contiguous_or_none(
        kernel, w_f_diag, w_i_diag, w_o_diag, projection)
    dz, dc_prev, dx, dh_prev, dy = step_backward(dh_new, dc_new, z, c, kernel, (w_f_diag, w_i_diag, w_o_diag),
                                                 projection, _present(y), kernel.dtype, input_size,
                                                 CellOptions(act, gate_act, forget_bias, cell_clip, proj_clip),
                                                 (True, True) if wanted is None else tuple(wanted))
    return (dz, dc_prev, _or_empty(dx, kernel, kernel.dtype), _or_empty(dh_prev, kernel, kernel.dtype),
            _or_empty(dy, z, F32))


@step_bwd.register_fake
def _(dh_new, dc_new, z, c, kernel, w_f_diag, w_i_diag, w_o_diag, projection, y, act, gate_act, forget_bias,
      cell_clip, proj_clip, input_size, wanted=None):
    B, N, P = c.shape[0], c.shape[1], dh_new.shape[1]
    want_x, want_h = (True, True) if wanted is None else wanted
    dx = kernel.new_empty(B, input_size) if want_x else kernel.new_empty(0)
    dh_prev = kernel.new_empty(B, P) if want_h else kernel.new_empty(0)
    dy = z.new_empty(B, P) if projection is not None else z.new_empty(0)
    return z.new_empty(B, 4 * N), z.new_empty(B, N), dx, dh_prev, dy


def _step_setup(ctx, inputs, output):
    x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, *options = inputs
    _, c_new, z, m, y = output
    # Store the gate pre-activations z (4N floats a row) and recompute every pointwise value in
    # backward: recomputing z would cost the step's whole GEMM, the rest is a few flops. c_new only
    # for w_o_diag's gradient, when wanted: the caller's c_new otherwise takes in-place ops, as the
    # reference's does.
    ctx.save_for_backward(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, z,
                          c_new if ctx.needs_input_grad[7] else None, m, y)
    ctx.options = options


def _step_backward(ctx, dh_new, dc_new, _dz, _dm, _dy):
    x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, z, c_new, m, y = ctx.saved_tensors
    if torch.is_grad_enabled():
        def recompute(*inputs):
            return lstm_cell_reference(*inputs, **reference_options(*ctx.options))

        inputs = (x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection)
        return differentiable_vjp(ctx, recompute, inputs, (dh_new, dc_new)) + (None,) * 5
    dh_new = _zeros_if_none(dh_new, h.shape, z)
    dc_new = _zeros_if_none(dc_new, c.shape, z)
    needs = ctx.needs_input_grad
    dz, dc_prev, dx, dh_prev, dy = step_bwd(dh_new, dc_new, z, c, kernel, w_f_diag, w_i_diag, w_o_diag,
                                            projection, y, *ctx.options, x.shape[1], [needs[0], needs[2]])
    d_wx, d_wh, d_bias, d_wf, d_wi, d_wo, d_proj = weight_grads(
        (needs[3], needs[3], needs[4], needs[5], needs[6], needs[7], needs[8]),
        dz, x, h, c, c_new, _present(m), dy, kernel.dtype)
    d_kernel = torch.cat([d_wx, d_wh]) if needs[3] else None
    grads = (_present(dx), dc_prev.to(c.dtype), _present(dh_prev), d_kernel, d_bias, d_wf, d_wi, d_wo, d_proj)
    return _laid_out_like(grads, (x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection)) + (None,) * 5


step_fwd.register_autograd(_step_backward, setup_context=_step_setup)


# -- a whole sequence -------------------------------------------------------------------------------
@torch.library.custom_op("triton_lstm::seq_fwd", mutates_args=())
def seq_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor, w_f_diag: Optional[Tensor],
            w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor], projection: Optional[Tensor],
            lengths: Optional[Tensor], act: int, gate_act: int, forget_bias: float, cell_clip: Optional[float],
            proj_clip: Optional[float]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x [T, B, D]. Returns (out, hbuf [T+1, B, P], cbuf [T+1, B, N] fp32, z, m, y)."""
    T, B, D = x.shape
    N4 = w_h.shape[1]
    w_h, w_f_diag, w_i_diag, w_o_diag, projection = contiguous_or_none(
        w_h, w_f_diag, w_i_diag, w_o_diag, projection)
    # The input half of the gate GEMM for all steps at once, off the serial path.
    xw = torch.addmm(bias.to(x.dtype), x.reshape(T * B, D), w_x).reshape(T, B, N4)
    out, hbuf, cbuf, z, m, y = seq_forward(xw, h0, c0, w_h, (w_f_diag, w_i_diag, w_o_diag), projection, lengths,
                                           CellOptions(act, gate_act, forget_bias, cell_clip, proj_clip))
    return out, hbuf, cbuf, z, _or_empty(m, x, h0.dtype), _or_empty(y, x, F32)


@seq_fwd.register_fake
def _(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, act, gate_act, forget_bias,
      cell_clip, proj_clip):
    T, B = x.shape[:2]
    N4 = w_h.shape[1]
    N, P = N4 // 4, h0.shape[1]
    m = h0.new_empty(T, B, N) if projection is not None else h0.new_empty(0)
    y = (h0.new_empty(T, B, P, dtype=F32) if projection is not None and proj_clip is not None
         else h0.new_empty(0, dtype=F32))
    return (h0.new_empty(T, B, P), h0.new_empty(T + 1, B, P), h0.new_empty(T + 1, B, N, dtype=F32),
            h0.new_empty(T, B, N4, dtype=F32), m, y)


@torch.library.custom_op("triton_lstm::seq_bwd", mutates_args=())
def seq_bwd(dout: Tensor, dh_T: Tensor, dc_T: Tensor, z: Tensor, cbuf: Tensor, w_h: Tensor,
            w_f_diag: Optional[Tensor], w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor],
            projection: Optional[Tensor], y: Tensor, lengths: Optional[Tensor], act: int, gate_act: int,
            forget_bias: float, cell_clip: Optional[float],
            proj_clip: Optional[float]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (dz [T, B, 4N], dy [T, B, P] or empty without a projection, dh0, dc0), all fp32."""
    w_h, w_f_diag, w_i_diag, w_o_diag, projection = contiguous_or_none(
        w_h, w_f_diag, w_i_diag, w_o_diag, projection)
    dz, dy, dh0, dc0 = seq_backward(dout.contiguous(), dh_T, dc_T, z, cbuf, w_h, (w_f_diag, w_i_diag, w_o_diag),
                                    projection, _present(y), lengths,
                                    CellOptions(act, gate_act, forget_bias, cell_clip, proj_clip))
    return dz, _or_empty(dy, z, F32), dh0, dc0


@seq_bwd.register_fake
def _(dout, dh_T, dc_T, z, cbuf, w_h, w_f_diag, w_i_diag, w_o_diag, projection, y, lengths, act, gate_act,
      forget_bias, cell_clip, proj_clip):
    T, B, N4 = z.shape
    P = dh_T.shape[1]
    dy = z.new_empty(T, B, P) if projection is not None else z.new_empty(0)
    return z.new_empty(T, B, N4), dy, z.new_empty(B, P), z.new_empty(B, N4 // 4)


def _seq_setup(ctx, inputs, output):
    x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, *options = inputs
    _, hbuf, cbuf, z, m, y = output
    # Stored for backward: z (4N fp32 per row and step), c (N fp32), h (P), and with a projection
    # m (N) and y (P): recomputing z would repeat the serial recurrence. The inputs are kept (x is
    # D per row and step, usually alive anyway): a differentiable backward (double backward)
    # recomputes the sequence from them.
    ctx.save_for_backward(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, hbuf, cbuf,
                          z, m, y)
    ctx.options = options


def _seq_backward(ctx, dout, d_hbuf, d_cbuf, _dz, _dm, _dy):
    x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, hbuf, cbuf, z, m, y = \
        ctx.saved_tensors
    inputs = (x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    T = z.shape[0]
    if torch.is_grad_enabled():
        def recompute(*tensors):
            return lstm_sequence_reference(*tensors, lengths, **reference_options(*ctx.options))

        grads = (dout, None if d_hbuf is None else d_hbuf[-1], None if d_cbuf is None else d_cbuf[-1])
        return differentiable_vjp(ctx, recompute, inputs, grads) + (None,) * 6
    # Callers see the last rows of hbuf and cbuf as the final state; only those carry gradients.
    # (Indexing with -1 rather than T keeps T symbolic under torch.compile.)
    dh_T = _zeros_if_none(None if d_hbuf is None else d_hbuf[-1], hbuf.shape[1:], z)
    dc_T = _zeros_if_none(None if d_cbuf is None else d_cbuf[-1], cbuf.shape[1:], z)
    dout = _zeros_if_none(dout, hbuf[1:].shape, z)
    dz, dy, dh0, dc0 = seq_bwd(dout, dh_T, dc_T, z, cbuf, w_h, w_f_diag, w_i_diag, w_o_diag, projection, y,
                               lengths, *ctx.options)
    needs = ctx.needs_input_grad
    valid = within_lengths(lengths, T, x.device)
    d_wx, d_wh, d_bias, d_wf, d_wi, d_wo, d_proj = weight_grads(
        (needs[3], needs[4], needs[5], needs[6], needs[7], needs[8], needs[9]),
        dz, x, hbuf[:T], cbuf[:T], cbuf[1:], _present(m), _present(dy), w_h.dtype, valid)
    # Past a row's length x gets a zero gradient (dz is zero there, but not 0 times an infinite weight).
    dx = padding_zeroed((dz.reshape(-1, dz.shape[-1]).to(w_x.dtype) @ w_x.t()).reshape(x.shape).to(x.dtype),
                        valid) if needs[0] else None
    grads = (dx, dh0.to(h0.dtype), dc0.to(c0.dtype), d_wx, d_wh, d_bias, d_wf, d_wi, d_wo, d_proj)
    return _laid_out_like(grads, inputs) + (None,) * 6


seq_fwd.register_autograd(_seq_backward, setup_context=_seq_setup)


# -- FLOP counts --------------------------------------------------------------------------------------
def _step_fwd_flops(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, *_, **__):
    B, D = x
    return sum(products(B, D, kernel[1], kernel[0] - D, projection))


def _step_bwd_flops(dh_new, dc_new, z, c, kernel, w_f_diag, w_i_diag, w_o_diag, projection, y, act, gate_act,
                    forget_bias, cell_clip, proj_clip, input_size, wanted=None, **__):
    # With a projection the gradient of m, then dx and dh_prev where wanted (the weights' are aten's).
    want_x, want_h = (True, True) if wanted is None else wanted
    per_x, per_h, per_m = products(z[0], input_size, kernel[1], kernel[0] - input_size, projection)
    return per_m + want_x * per_x + want_h * per_h


def _seq_bwd_flops(dout, dh_T, dc_T, z, cbuf, w_h, w_f_diag, w_i_diag, w_o_diag, projection, *_, **__):
    # The recurrence's own: the gradients of h and, with a projection, of m (dx and the weights' are aten's).
    T, B, _ = z
    return sum(products(T * B, 0, w_h[1], w_h[0], projection))


for _name, _flops in (("step_fwd", _step_fwd_flops), ("step_bwd", _step_bwd_flops), ("seq_fwd", sequence_forward),
                      ("seq_bwd", _seq_bwd_flops)):
    register(_name, _flops)


# -- torch.func ---------------------------------------------------------------------------------------
for _op in (step_fwd, step_bwd, seq_fwd, seq_bwd):
    torch.library.register_vmap(_op, vmap_by_slices(_op))


# ``triton_lstm::step_fwd`` and ``seq_fwd`` (same arguments and results), also under torch.func.
step = transformable("StepFunction", step_fwd, _step_setup, _step_backward)
sequence = transformable("SequenceFunction", seq_fwd, _seq_setup, _seq_backward)
