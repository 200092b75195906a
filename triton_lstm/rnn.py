"""``dynamic_rnn``: tf.compat.v1.nn.dynamic_rnn for an ``LSTMCell``, on the persistent kernels."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from triton_lstm.cell import LSTMCell, LSTMStateTuple, as_dtype
from triton_lstm.checks import DTypeError, ShapeError, check_int, check_scope, check_state_shapes, check_tensor
from triton_lstm.sequence import named_sequence, sequence_lengths

Tensor = torch.Tensor


def dynamic_rnn(cell: LSTMCell, inputs: Tensor, sequence_length: Optional[Tensor] = None,
                initial_state: Union[LSTMStateTuple, tuple, Tensor, None] = None, dtype=None,
                parallel_iterations: Optional[int] = None, swap_memory: bool = False, time_major: bool = False,
                scope: Optional[str] = None) -> tuple[Tensor, Union[LSTMStateTuple, Tensor]]:
    """Run ``cell`` over a sequence, with TF's semantics and TF's signature.

    Args:
        cell: an ``LSTMCell`` (built lazily from the inputs' width if needed).
        inputs: [B, T, D], or [T, B, D] with ``time_major=True``.
        sequence_length: [B] integers in [0, T] (a tensor on the CPU or the inputs' device, a list or
            a numpy array); rows past their length output exactly 0 and carry the state through.
            None means every row runs T steps.
        initial_state: the cell's state layout (``LSTMStateTuple(c, h)`` or [B, N + P]); zeros if None.
        dtype: None, or the inputs' dtype (a torch or numpy dtype or its name), as TF's calls pass it
            for the zero initial state; another is an error (convert the inputs).
        parallel_iterations, swap_memory, scope: TF's while-loop and variable-scope settings, taken
            for TF's signature and checked; they have no effect here.
    Returns:
        (outputs [B, T, P] or [T, B, P], final state in the cell's layout).
    """
    if not isinstance(cell, LSTMCell):
        raise TypeError(f"cell: expected a triton_lstm.LSTMCell, got {type(cell).__name__}")
    check_int("parallel_iterations", parallel_iterations, 1, none_ok=True)
    _check_flag("swap_memory", swap_memory)
    check_scope(scope)
    time_major = _check_flag("time_major", time_major)
    check_tensor("inputs", inputs, 3)
    if isinstance(dtype, (bool, np.bool_)):
        raise TypeError(f"dtype: expected None or the inputs' dtype, got {dtype!r}: the fifth argument is dtype, "
                        f"as in TF (time_major is the eighth); pass time_major={dtype!r}")
    dtype = as_dtype("dtype", dtype)
    if dtype is not None and dtype != inputs.dtype:
        raise DTypeError(f"dtype: {dtype} differs from the inputs' dtype {inputs.dtype}; convert inputs: "
                         f"inputs.to({dtype})")
    called = calls_the_cell(cell)
    if not called:   # a called cell checks (and a lazy one builds for) what its forward is given
        kernel = cell.check_inputs(inputs)
    x = inputs if time_major else inputs.transpose(0, 1)
    T, B, D = x.shape
    names = cell.state_names("initial_state")
    if not torch.compiler.is_compiling():   # a hint only: no guards on the shapes when compiling
        parts = (() if initial_state is None else zip((names.c, names.h), initial_state)
                 if isinstance(initial_state, (tuple, list)) else ((names.c, initial_state),))
        _check_batch_axis(time_major, B, T, (*parts, ("sequence_length", sequence_length)))
    if initial_state is None:
        initial_state = cell.zero_state(B, inputs.dtype, inputs.device)
    c0, h0 = cell.split_state(initial_state, B, "initial_state")
    if called:
        check_state_shapes(B, cell.num_units, cell.output_size, c0, h0, names)
        out, h_T, c_T = _called_each_step(cell, x, c0, h0, sequence_length)
    else:
        out, h_T, c_T = named_sequence(names, x, h0, c0, kernel[:D], kernel[D:],
                                       cell.bias, *cell.peepholes(), cell.projection(), sequence_length,
                                       forget_bias=cell.forget_bias, cell_clip=cell.cell_clip,
                                       proj_clip=cell.proj_clip, activation=cell.activation, recurrent_activation=None,
                                       gate_order="tf")
    outputs = out if time_major else out.transpose(0, 1)
    return outputs, cell.join_state(c_T, h_T)


def calls_the_cell(cell: LSTMCell) -> bool:
    """Whether the sequence must call the cell as a module at each step, as TF's dynamic_rnn does: a
    subclass overrides its forward, or the cell's own hooks (old-style weight_norm and pruning
    recompute a weight in a forward pre-hook) must see each call. Else one sequence op runs it all.
    Global hooks (torch's module trackers: FlopCounterMode's) do not count: they see no step of
    nn.LSTM either."""
    return type(cell).forward is not LSTMCell.forward or bool(
        cell._forward_hooks or cell._forward_pre_hooks or cell._backward_hooks or cell._backward_pre_hooks)


def _called_each_step(cell: LSTMCell, x: Tensor, c0: Tensor, h0: Tensor,
                      sequence_length) -> tuple[Tensor, Tensor, Tensor]:
    """(outputs [T, B, P], h_T, c_T) of ``cell(x_t, state)`` called for each step, with TF's masking:
    a row past its length outputs 0 and keeps its state; its input is zeroed before the call, so that
    what the padding holds (NaN) enters no gradient. Lengths on a GPU are checked there, as the
    kernels check them (``sequence_lengths``)."""
    T, B, _ = x.shape
    lengths, h0, c0 = sequence_lengths(sequence_length, T, B, x.device, h0, c0, kernels_check=False)
    c, h, outs = c0, h0, []
    for t in range(T):
        live = None if lengths is None else (lengths > t)[:, None]
        x_t = x[t] if live is None else torch.where(live, x[t], 0)
        out, state = cell(x_t, cell.join_state(c, h))
        c_new, h_new = cell.split_state(state, B)
        if live is not None:
            out, c_new, h_new = torch.where(live, out, 0), torch.where(live, c_new, c), torch.where(live, h_new, h)
        outs.append(out)
        c, h = c_new, h_new
    if not outs:   # T = 0: the initial state, copied, c in float32 for half precision as a step gives it
        if cell.input_size is None:
            cell.check_inputs(x)   # a lazy cell is built as a step would build it
        c = c.float() if c.dtype in (torch.float16, torch.bfloat16) else c.clone()
        return x.new_zeros(0, B, cell.output_size), h.clone(), c
    return torch.stack(outs), h, c


def _check_flag(name: str, value) -> bool:
    """A bool (numpy's and the ints 0 and 1 too, as TF takes them)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def _check_batch_axis(time_major: bool, B: int, T: int, given) -> None:
    """Arguments whose batch is the inputs' time dimension, none the inputs' batch (B != T): inputs
    laid out the other way, an error saying so before the shape checks' (which blame an argument)."""
    batches = {}
    for name, value in given:
        if value is not None:
            shape = (len(value),) if isinstance(value, (list, tuple)) else tuple(getattr(value, "shape", ()))
            batches[name] = shape[0] if shape else None
    if B == T or not batches or any(b == B for b in batches.values()) or T not in batches.values():
        return
    layout, other = ("[T, B, D]", "time_major=False") if time_major else ("[B, T, D]", "time_major=True")
    name = next(n for n, b in batches.items() if b == T)
    raise ShapeError(f"{name}: batch {T}, which is the inputs' time dimension: inputs are read as {layout} "
                     f"(batch {B}, {T} steps); for the other layout pass {other}")
