"""FLOP counts of the custom ops for ``torch.utils.flop_counter.FlopCounterMode``, counted as it counts
aten's: two per multiply-add of a matrix product, pointwise math not counted, from the shapes alone
(rows past a sequence's length count too: the kernels' products cover them, the CPU loop's skip them)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def products(rows, D, N4, P, projection) -> tuple:
    """FLOPs over ``rows`` rows of the input product (x @ W_x, W_x [D, N4]), the recurrent one
    (h @ W_h, W_h [P, N4]) and the projection (m @ projection, ``projection`` its shape [N, P] or
    None: 0). The same numbers count each product's two backward products (input and weight
    gradients)."""
    return 2 * rows * D * N4, 2 * rows * P * N4, 0 if projection is None else 2 * rows * projection[0] * P


def sequence_forward(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, *_, **__):
    """The count of a sequence op's forward (``seq_fwd`` and ``cpu_seq_fwd`` take these arguments
    first; x [T, B, D], w_h [P, 4N]): its three products over every step."""
    T, B, D = x
    return sum(products(T * B, D, w_h[1], w_h[0], projection))


def register(name: str, formula) -> None:
    """``formula(*shapes of the op's arguments, out_shape=...)`` as the count of ``triton_lstm::name``."""
    register_flop_formula(getattr(torch.ops.triton_lstm, name))(formula)
