"""Plain-PyTorch reference of TF's LSTMCell step: the specification the kernels are tested against.

It also runs where neither the kernels nor the CPU path's sequence loop do: a single step
(``lstm_cell``, ``LSTMCell``) on the CPU without TRITON_INTERPRET, float64 on CUDA, custom activations.
Half-precision inputs are computed in float32 (m is rounded to the input dtype before the projection);
the new cell state is returned in float32.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _elementwise(fn: Callable[[Tensor], Tensor], t: Tensor, arg: str) -> Tensor:
    """fn(t), which must be a tensor of t's shape: a function that reduces or reshapes would be
    broadcast over the gates silently."""
    out = fn(t)
    if not isinstance(out, Tensor) or out.shape != t.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{arg}: must be elementwise, returning a tensor of its input's shape {tuple(t.shape)}; "
                         f"got {got}")
    return out


def lstm_cell_reference(
    x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor,
    w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None, w_o_diag: Optional[Tensor] = None,
    projection: Optional[Tensor] = None, *, forget_bias: float = 1.0, cell_clip: Optional[float] = None,
    proj_clip: Optional[float] = None, activation: Callable[[Tensor], Tensor] = torch.tanh,
    recurrent_activation: Callable[[Tensor], Tensor] = torch.sigmoid,
) -> tuple[Tensor, Tensor]:
    """One step, in TF's order. Shapes: x [B, D], c [B, N], h [B, P], kernel [D+P, 4N], bias [4N],
    peepholes [N], projection [N, P]. ``recurrent_activation`` is the gates' (sigmoid in TF's
    LSTMCell; Keras layers may choose another). Returns (new h [B, P] in x's dtype, new c [B, N])."""
    def gate(t: Tensor) -> Tensor:
        return _elementwise(recurrent_activation, t, "recurrent_activation")

    def act(t: Tensor) -> Tensor:
        return _elementwise(activation, t, "activation")

    out_dtype = x.dtype
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32

    def up(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(cdt)

    x, c, h, kernel, bias = up(x), up(c), up(h), up(kernel), up(bias)
    w_f_diag, w_i_diag, w_o_diag, projection = up(w_f_diag), up(w_i_diag), up(w_o_diag), up(projection)
    z = torch.cat([x, h], dim=1) @ kernel + bias
    i, j, f, o = torch.chunk(z, 4, dim=1)
    if w_f_diag is not None:
        c_new = gate(f + forget_bias + w_f_diag * c) * c + gate(i + w_i_diag * c) * act(j)
    else:
        c_new = gate(f + forget_bias) * c + gate(i) * act(j)
    if cell_clip is not None:
        c_new = torch.clamp(c_new, -cell_clip, cell_clip)
    if w_o_diag is not None:
        m = gate(o + w_o_diag * c_new) * act(c_new)
    else:
        m = gate(o) * act(c_new)
    if projection is not None:
        # The projection GEMM takes m in the input dtype (what a half-precision nn.Linear would do).
        m = m.to(out_dtype).to(cdt) @ projection
        if proj_clip is not None:
            m = torch.clamp(m, -proj_clip, proj_clip)
    return m.to(out_dtype), c_new


def lengths_outside(lengths: Tensor, T: int) -> Tensor:
    """[B] bool: whether row b's length lies outside [0, T] (unchecked lengths: a GPU's)."""
    return (lengths < 0) | (lengths > T)


def within_lengths(lengths: Optional[Tensor], T: int, device: torch.device) -> Optional[Tensor]:
    """[T, B, 1] bool: whether step t is inside row b's sequence (None without lengths). A row whose
    length lies outside [0, T] (unchecked: on a GPU) runs every step, as in the kernels."""
    if lengths is None:
        return None
    lengths = lengths.to(device)
    return ((torch.arange(T, device=device)[:, None] < lengths[None, :])
            | lengths_outside(lengths, T)[None, :])[..., None]


def bad_lengths_poisoned(lengths: Tensor, T: int, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lengths, h0, c0) for rows whose length lies outside [0, T] as the kernels run them: every
    step, from a NaN state (h0 and c0 times NaN, so that their gradients are NaN too, as the kernels'
    are); the other rows unchanged (times 1)."""
    lengths = lengths.to(h0.device)
    bad = lengths_outside(lengths, T)
    scale = torch.where(bad[:, None], float("nan"), 1.0)
    return torch.where(bad, T, lengths), h0 * scale.to(h0.dtype), c0 * scale.to(c0.dtype)


def padding_zeroed(t: Tensor, valid: Optional[Tensor]) -> Tensor:
    """t [T, B, ...] (or one step's [B, ...]) with zeros past each row's length, where ``valid``
    (``within_lengths``, or one step of it) is False; None: t itself. So that what a batch holds
    there, NaN included, adds nothing to a sum over rows and steps (the gradients there are zeros:
    0 * NaN would be NaN)."""
    return t if valid is None else torch.where(valid, t, 0)


def lstm_sequence_reference(
    x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
    w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None, w_o_diag: Optional[Tensor] = None,
    projection: Optional[Tensor] = None, lengths: Optional[Tensor] = None, *, forget_bias: float = 1.0,
    cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
    activation: Callable[[Tensor], Tensor] = torch.tanh, recurrent_activation: Callable[[Tensor], Tensor] = torch.sigmoid,
) -> tuple[Tensor, Tensor, Tensor]:
    """TF's dynamic_rnn over a time-major sequence, step by step.

    Shapes: x [T, B, D], h0 [B, P], c0 [B, N], w_x [D, 4N], w_h [P, 4N], lengths [B] or None.
    Rows past their length output 0 and carry the state; what x holds there enters nothing, not even
    a gradient (the cell runs on zeros there, whose results are dropped). A row whose length lies
    outside [0, T] runs as the kernels run it, from a NaN state (``bad_lengths_poisoned``). Returns
    (outputs [T, B, P], h_T, c_T).
    """
    if lengths is not None:
        lengths, h0, c0 = bad_lengths_poisoned(lengths, x.shape[0], h0, c0)
    kernel = torch.cat([w_x, w_h], dim=0)
    h, c = h0, c0
    outputs = []
    within = within_lengths(lengths, x.shape[0], x.device)
    for t in range(x.shape[0]):
        valid = None if within is None else within[t]
        x_t, c_in, h_in = (padding_zeroed(v, valid) for v in (x[t], c, h))
        h_new, c_new = lstm_cell_reference(x_t, c_in, h_in, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                                           forget_bias=forget_bias, cell_clip=cell_clip, proj_clip=proj_clip,
                                           activation=activation, recurrent_activation=recurrent_activation)
        if valid is None:
            h, c = h_new, c_new
            outputs.append(h_new)
        else:
            h = torch.where(valid, h_new, h.to(h_new.dtype))
            c = torch.where(valid, c_new, c.to(c_new.dtype))
            outputs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    if not outputs:     # new tensors, as the other paths; c_T as the steps return it: float32 (float64 for float64 x)
        return x.new_zeros(0, *h0.shape), h0.clone(), c0.to(torch.float64 if x.dtype == torch.float64
                                                            else torch.float32, copy=True)
    return torch.stack(outputs), h, c
