"""``LSTM``: a drop-in for ``torch.nn.LSTM`` on the persistent kernels, with TF's extras."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from triton_lstm.activations import Activation, resolve_activation, resolve_recurrent_activation
from triton_lstm.checks import check_clip, check_forget_bias, shape_of
from triton_lstm.convert import gate_permutation
from triton_lstm.sequence import lstm_sequence

Tensor = torch.Tensor


def reverse_within_lengths(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Time-major x [T, B, F] with each row's first length[b] steps reversed (padding stays put)."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    lens = lengths.to(x.device)[None, :]
    index = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(0, index[:, :, None].expand(-1, -1, x.shape[2]))


class LSTM(nn.Module):
    """torch.nn.LSTM's interface and parameters (``load_state_dict`` of an nn.LSTM works as is), plus
    TF LSTMCell extras: ``use_peepholes``, ``cell_clip``, ``proj_clip``, ``forget_bias`` (default 0,
    as torch), ``activation`` and Keras' ``recurrent_activation`` (the gates'; default sigmoid).
    ``proj_size`` may also be >= ``hidden_size`` here.

    Peephole weights are extra parameters ``w_f_diag_l{k}``, ``w_i_diag_l{k}``, ``w_o_diag_l{k}``
    (``_reverse`` for the backward direction).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, use_peepholes: bool = False,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None, forget_bias: float = 0.0,
                 activation: Activation = "tanh", recurrent_activation: Activation = "sigmoid") -> None:
        super().__init__()
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1), ("proj_size", proj_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        if proj_clip is not None and proj_size == 0:
            raise ValueError("proj_clip: only meaningful with proj_size > 0")
        resolve_activation(activation)
        resolve_recurrent_activation(recurrent_activation)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.use_peepholes = use_peepholes
        self.cell_clip, self.proj_clip = check_clip("cell_clip", cell_clip), check_clip("proj_clip", proj_clip)
        self.forget_bias = check_forget_bias(forget_bias)
        self.activation, self.recurrent_activation = activation, recurrent_activation
        fac = dict(device=device, dtype=dtype)
        H, P = hidden_size, proj_size or hidden_size
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else P * directions
            for suffix in self._suffixes(layer):
                self.register_parameter(f"weight_ih{suffix}", nn.Parameter(torch.empty(4 * H, layer_in, **fac)))
                self.register_parameter(f"weight_hh{suffix}", nn.Parameter(torch.empty(4 * H, P, **fac)))
                if bias:
                    self.register_parameter(f"bias_ih{suffix}", nn.Parameter(torch.empty(4 * H, **fac)))
                    self.register_parameter(f"bias_hh{suffix}", nn.Parameter(torch.empty(4 * H, **fac)))
                if proj_size:
                    self.register_parameter(f"weight_hr{suffix}", nn.Parameter(torch.empty(P, H, **fac)))
                if use_peepholes:
                    for gate in ("f", "i", "o"):
                        self.register_parameter(f"w_{gate}_diag{suffix}", nn.Parameter(torch.empty(H, **fac)))
        self.reset_parameters()

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: every parameter uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written against cuDNN's nn.LSTM."""

    def _layer_weights(self, suffix: str):
        """TF-layout weights of one layer and direction: (w_x [D, 4H], w_h [P, 4H], bias, peepholes, proj)."""
        w_ih, w_hh = getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}")
        order = gate_permutation(self.hidden_size, w_ih.device)
        if self.bias:
            bias = (getattr(self, f"bias_ih{suffix}") + getattr(self, f"bias_hh{suffix}"))[order]
        else:
            bias = w_ih.new_zeros(4 * self.hidden_size)
        peepholes = tuple(getattr(self, f"w_{g}_diag{suffix}") for g in ("f", "i", "o")) \
            if self.use_peepholes else (None, None, None)
        proj = getattr(self, f"weight_hr{suffix}").t() if self.proj_size else None
        return w_ih[order].t(), w_hh[order].t(), bias, peepholes, proj

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[tuple[Tensor, Tensor]] = None):
        """As nn.LSTM: input [T, B, D] ([B, T, D] with batch_first, [T, D] unbatched, or a
        PackedSequence); hx = (h_0 [L*dirs, B, P], c_0 [L*dirs, B, H]). Returns (output, (h_n, c_n))."""
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input, batch_first=False)
        elif not isinstance(input, Tensor):
            raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
        elif input.dim() == 2:
            x = input[:, None]
        elif input.dim() == 3:
            x = input.transpose(0, 1) if self.batch_first else input
        else:
            raise ValueError(f"input: expected rank 2 (unbatched) or 3, got shape {shape_of(input)}")
        unbatched = not packed and input.dim() == 2
        T, B, D = x.shape
        if D != self.input_size:
            layout = "[B, T, D]" if self.batch_first else "[T, B, D]"
            raise ValueError(f"input: expected last dimension input_size={self.input_size} in layout {layout} "
                             f"(batch_first={self.batch_first}), got shape {shape_of(input if not packed else x)}")
        directions = 2 if self.bidirectional else 1
        h0, c0 = self._initial_state(hx, B, unbatched, x)
        if lengths is not None:
            lengths = lengths.to(x.device)
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * directions + d
                w_x, w_h, bias, peepholes, proj = self._layer_weights(suffix)
                seq = layer_in if d == 0 else reverse_within_lengths(layer_in, lengths)
                out, h_T, c_T = lstm_sequence(seq, h0[k], c0[k], w_x, w_h, bias, *peepholes, proj, lengths,
                                              forget_bias=self.forget_bias, cell_clip=self.cell_clip,
                                              proj_clip=self.proj_clip, activation=self.activation,
                                              recurrent_activation=self.recurrent_activation)
                outs.append(out if d == 0 else reverse_within_lengths(out, lengths))
                h_n.append(h_T)
                c_n.append(c_T.to(c0.dtype))
            layer_in = torch.cat(outs, dim=2) if directions == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        output, h_n, c_n = layer_in, torch.stack(h_n), torch.stack(c_n)
        if packed:
            order = input.sorted_indices
            padded = output if order is None else output.index_select(1, order)
            sorted_lengths = lengths.cpu() if order is None else lengths.cpu()[order.cpu()]
            data = pack_padded_sequence(padded, sorted_lengths, enforce_sorted=True).data
            return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
        if unbatched:
            return output[:, 0], (h_n[:, 0], c_n[:, 0])
        return (output.transpose(0, 1) if self.batch_first else output), (h_n, c_n)

    def _initial_state(self, hx, B: int, unbatched: bool, x: Tensor) -> tuple[Tensor, Tensor]:
        directions = 2 if self.bidirectional else 1
        L = self.num_layers * directions
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        if hx is None:
            c_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            return (torch.zeros(L, B, P, device=x.device, dtype=x.dtype),
                    torch.zeros(L, B, H, device=x.device, dtype=c_dtype))
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx: expected a tuple (h_0, c_0)")
        h0, c0 = hx
        if unbatched:
            h0, c0 = h0[:, None], c0[:, None]
        for name, t, width in (("h_0", h0, P), ("c_0", c0, H)):
            if not isinstance(t, Tensor) or shape_of(t) != (L, B, width):
                got = shape_of(t) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"hx: {name} expected shape ({L}, {B}, {width}) = [num_layers * directions, "
                                 f"batch, {'proj_size or hidden_size' if name == 'h_0' else 'hidden_size'}] "
                                 f"(batch from input with batch_first={self.batch_first}), got {got}")
        return h0, c0

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.batch_first:
            s += ", batch_first=True"
        if self.use_peepholes or self.cell_clip is not None or self.proj_clip is not None:
            s += f", use_peepholes={self.use_peepholes}, cell_clip={self.cell_clip}, proj_clip={self.proj_clip}"
        return s
