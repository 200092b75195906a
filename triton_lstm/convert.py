"""Weight layout conversion between TF's LSTMCell variables and torch.nn.LSTM's state dict.

TF: kernel [D + P, 4N] with gate columns i, j, f, o, one bias, forget_bias added at run time.
torch: weight_ih [4N, D], weight_hh [4N, P] with gate rows i, f, g(=j), o, bias_ih + bias_hh,
weight_hr [P, N] with proj_size. torch has no peepholes, clips or other activations.
"""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def _ijfo_to_ifjo(n: int) -> Tensor:
    i, j, f, o = (torch.arange(g * n, (g + 1) * n) for g in range(4))
    return torch.cat([i, f, j, o])


def tf_to_torch_lstm(kernel: Tensor, bias: Tensor, projection: Optional[Tensor] = None,
                     forget_bias: float = 1.0, suffix: str = "_l0") -> dict[str, Tensor]:
    """nn.LSTM parameters (one layer/direction, named with ``suffix``) computing TF's cell.

    forget_bias is folded into bias_ih's f block; this agrees with TF to rounding only.
    """
    kernel, bias = torch.as_tensor(kernel), torch.as_tensor(bias)
    n = kernel.shape[1] // 4
    p = projection.shape[1] if projection is not None else n
    d = kernel.shape[0] - p
    perm = _ijfo_to_ifjo(n)
    b = bias[perm].clone()
    b[n:2 * n] += forget_bias
    out = {f"weight_ih{suffix}": kernel[:d, perm].t().contiguous(),
           f"weight_hh{suffix}": kernel[d:, perm].t().contiguous(),
           f"bias_ih{suffix}": b, f"bias_hh{suffix}": torch.zeros_like(b)}
    if projection is not None:
        out[f"weight_hr{suffix}"] = torch.as_tensor(projection).t().contiguous()
    return out
