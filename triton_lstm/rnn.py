"""``dynamic_rnn``: tf.compat.v1.nn.dynamic_rnn for an ``LSTMCell``, on the persistent kernels."""
from __future__ import annotations

from typing import Optional, Union

import torch

from triton_lstm.cell import LSTMCell, LSTMStateTuple
from triton_lstm.checks import check_tensor
from triton_lstm.sequence import named_sequence

Tensor = torch.Tensor


def dynamic_rnn(cell: LSTMCell, inputs: Tensor, sequence_length: Optional[Tensor] = None,
                initial_state: Union[LSTMStateTuple, tuple, Tensor, None] = None,
                time_major: bool = False) -> tuple[Tensor, Union[LSTMStateTuple, Tensor]]:
    """Run ``cell`` over a sequence, with TF's semantics.

    Args:
        cell: an ``LSTMCell`` (built lazily from the inputs' width if needed).
        inputs: [B, T, D], or [T, B, D] with ``time_major=True``.
        sequence_length: [B] integers in [0, T] (a tensor on the CPU or the inputs' device, a list or
            a numpy array); rows past their length output exactly 0 and carry the state through.
            None means every row runs T steps.
        initial_state: the cell's state layout (``LSTMStateTuple(c, h)`` or [B, N + P]); zeros if None.
    Returns:
        (outputs [B, T, P] or [T, B, P], final state in the cell's layout).
    """
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"cell: expected a triton_lstm.LSTMCell, got {type(cell).__name__}")
    check_tensor("inputs", inputs, 3)
    cell.check_inputs(inputs)
    x = inputs if time_major else inputs.transpose(0, 1)
    T, B, D = x.shape
    if initial_state is None:
        initial_state = cell.zero_state(B, inputs.dtype, inputs.device)
    c0, h0 = cell.split_state(initial_state, B, "initial_state")
    out, h_T, c_T = named_sequence(cell.state_names("initial_state"), x, h0, c0, cell.kernel[:D], cell.kernel[D:],
                                   cell.bias, *cell.peepholes(), cell.projection(), sequence_length,
                                   forget_bias=cell.forget_bias, cell_clip=cell.cell_clip, proj_clip=cell.proj_clip,
                                   activation=cell.activation, recurrent_activation=None, gate_order="tf")
    outputs = out if time_major else out.transpose(0, 1)
    return outputs, cell.join_state(c_T, h_T)
