"""Plain-PyTorch reference of TF's LSTMCell step: the specification the kernels are tested against.

It also runs whenever the kernels cannot (CPU without TRITON_INTERPRET, float64, custom activations).
Half-precision inputs are computed in float32 (m is rounded to the input dtype before the projection);
the new cell state is returned in float32.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def lstm_cell_reference(
    x: Tensor, c: Tensor, h: Tensor, kernel: Tensor, bias: Tensor,
    w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None, w_o_diag: Optional[Tensor] = None,
    projection: Optional[Tensor] = None, *, forget_bias: float = 1.0, cell_clip: Optional[float] = None,
    proj_clip: Optional[float] = None, activation: Callable[[Tensor], Tensor] = torch.tanh,
) -> tuple[Tensor, Tensor]:
    """One step, in TF's order. Shapes: x [B, D], c [B, N], h [B, P], kernel [D+P, 4N], bias [4N],
    peepholes [N], projection [N, P]. Returns (new h [B, P] in x's dtype, new c [B, N])."""
    out_dtype = x.dtype
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32

    def up(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.to(cdt)

    x, c, h, kernel, bias = up(x), up(c), up(h), up(kernel), up(bias)
    w_f_diag, w_i_diag, w_o_diag, projection = up(w_f_diag), up(w_i_diag), up(w_o_diag), up(projection)
    z = torch.cat([x, h], dim=1) @ kernel + bias
    i, j, f, o = torch.chunk(z, 4, dim=1)
    if w_f_diag is not None:
        c_new = (torch.sigmoid(f + forget_bias + w_f_diag * c) * c
                 + torch.sigmoid(i + w_i_diag * c) * activation(j))
    else:
        c_new = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * activation(j)
    if cell_clip is not None:
        c_new = torch.clamp(c_new, -cell_clip, cell_clip)
    if w_o_diag is not None:
        m = torch.sigmoid(o + w_o_diag * c_new) * activation(c_new)
    else:
        m = torch.sigmoid(o) * activation(c_new)
    if projection is not None:
        # The projection GEMM takes m in the input dtype (what a half-precision nn.Linear would do).
        m = m.to(out_dtype).to(cdt) @ projection
        if proj_clip is not None:
            m = torch.clamp(m, -proj_clip, proj_clip)
    return m.to(out_dtype), c_new
