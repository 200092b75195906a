"""Porting a trained LSTM from its files: a TF1 checkpoint or a Keras file to a module in one call,
and the module's weights back to TF1 variable names or Keras layouts.

A uniform TF1 stack becomes one ``triton_lstm.LSTM`` (torch.nn.LSTM's parameters and call, with
``batch_first=True`` as in TF). What one ``LSTM`` cannot hold becomes a module with the same call:
``LSTMStack`` (layers that differ in size, peepholes, projection or options; Keras layers),
``Bidirectional`` (two stacks over the sequence and over it reversed within lengths, TF's
``bidirectional_dynamic_rnn`` of ``MultiRNNCell``s or of fw and bw cells that differ, and Keras' merge
modes) and ``KerasRNN`` (one
Keras layer with its ``return_sequences``, ``go_backwards`` and masked outputs).

Final states are (h_n, c_n) as in nn.LSTM, [layers * directions, B, width], layer by layer and
forward before backward; a ``Bidirectional`` gives its forward stack's, then its backward stack's
(TF's order for ``bidirectional_dynamic_rnn``). When the widths differ they are lists of [B, width]
tensors instead.
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from triton_lstm.activations import ACTIVATIONS, KERAS_ACTIVATIONS, resolve_recurrent_activation
from triton_lstm.cell import LSTMCell
from triton_lstm.checks import ShapeError, check_forget_bias, check_integers, comparable, integer_tensor, shape_of
from triton_lstm.convert import (as_tensor, keras_to_torch_lstm, tf_to_torch_lstm, torch_lstm_to_keras,
                                 torch_lstm_to_tf)
from triton_lstm.keras_files import read_keras_config, read_keras_weights, stacked_cells
from triton_lstm.lstm import LSTM, reverse_within_lengths
from triton_lstm.reference import lengths_outside
from triton_lstm.tf_checkpoint import OBJECT_GRAPH, read_tf_checkpoint

Tensor = torch.Tensor
States = Union[Tensor, list]
MERGE_MODES = ("concat", "sum", "mul", "ave", None)


# ------------------------------------------------------------------------------------ running
def _reverse(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Batch-first x [B, T, F] with each row's first lengths[b] steps reversed."""
    return reverse_within_lengths(x.transpose(0, 1), lengths).transpose(0, 1)


def _as_list(states: Optional[States]) -> Optional[list]:
    return None if states is None else list(states)


def _stacked(states: list) -> States:
    """States as one [K, B, W] tensor when their shapes agree, else as the list itself."""
    return torch.stack(states) if len({shape_of(s) for s in states}) == 1 else states


def _state_count(module: nn.Module) -> int:
    if isinstance(module, LSTM):
        return module.num_layers * (2 if module.bidirectional else 1)
    return module.state_count


def _split(hx: Optional[tuple], counts: Sequence[int]) -> list:
    """hx = (h_0, c_0), each [K, B, W] or K tensors [B, W], as one (h list, c list) or None per part."""
    if hx is None:
        return [None] * len(counts)
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError("hx: expected a tuple (h_0, c_0)")
    h, c = _as_list(hx[0]), _as_list(hx[1])
    if len(h) != sum(counts) or len(c) != sum(counts):
        raise ValueError(f"hx: expected {sum(counts)} states (layers * directions) in h_0 and c_0, got "
                         f"{len(h)} and {len(c)}")
    bounds = [sum(counts[:k]) for k in range(len(counts) + 1)]
    return [(h[a:b], c[a:b]) for a, b in zip(bounds, bounds[1:])]


def _run(module: nn.Module, x: Tensor, lengths: Optional[Tensor], hx: Optional[tuple]):
    """(outputs [B, T, F] with zeros past each length, h list, c list) of a batch-first module."""
    if not isinstance(module, LSTM):
        out, (h, c) = module(x, hx, lengths=lengths)
        return out, _as_list(h), _as_list(c)
    state = None if hx is None else (torch.stack(hx[0]), torch.stack(hx[1]))
    if lengths is None or x.shape[0] == 0:      # no rows: no lengths to pack (and no empty pack)
        out, (h, c) = module(x, state)
        return out, list(h), list(c)
    # PackedSequence has no empty rows: run them one step on zeros (not on their padding and initial
    # state: the backward multiplies what that step read by zero, and NaN there would turn up in
    # every weight's gradient), then put back zeros and the initial state.
    empty = lengths == 0
    any_empty = bool(empty.any())
    run_x, run_state = x, state
    if any_empty:
        run_x = x.masked_fill(empty[:, None, None], 0.0)
        if state is not None:
            run_state = tuple(s.masked_fill(empty[None, :, None], 0.0) for s in state)
    packed = pack_padded_sequence(run_x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    out, (h, c) = module(packed, run_state)
    out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
    if any_empty:
        out = out.masked_fill(empty[:, None, None], 0.0)
        h0, c0 = state if state is not None else (torch.zeros_like(h), torch.zeros_like(c))
        h, c = torch.where(empty[None, :, None], h0, h), torch.where(empty[None, :, None], c0, c)
    return out, list(h), list(c)


def _last_output(h: Tensor, lengths: Optional[Tensor], valid_to: int = 1) -> Tensor:
    """A Keras layer's last output from its final h: zeros for a row without a valid step (Keras'
    last output starts at zeros, its state at the initial state), or with ``valid_to`` = T (a layer
    running forwards with zero_output_for_mask, whose output is zero on masked steps) for a row whose
    last step is masked."""
    return h if lengths is None else torch.where(lengths[:, None] >= valid_to, h, torch.zeros_like(h))


def _merge(mode: Optional[str], a: Tensor, b: Tensor):
    if mode == "concat":
        return torch.cat([a, b], dim=-1)
    if mode == "sum":
        return a + b
    if mode == "mul":
        return a * b
    if mode == "ave":
        return (a + b) / 2
    return a, b


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Sequence lengths [B] of a Keras mask [B, T] whose valid steps come first in every row."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"mask: expected a [batch, time] tensor, got {shape_of(mask) if isinstance(mask, Tensor) else mask!r}")
    mask = mask.bool()
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        rows = (prefix != mask).any(1).nonzero().flatten().tolist()
        raise ValueError(f"mask: rows {rows} have masked steps before valid ones (holes or left padding); "
                         f"only masks whose valid steps come first map to sequence lengths")
    return lengths


def _inputs(module: nn.Module, input, lengths, mask):
    """(x [B, T, D], lengths or None, packed?) from a call's input, lengths, mask and Masking value."""
    packed = isinstance(input, PackedSequence)
    if packed:
        if lengths is not None or mask is not None:
            raise ValueError("lengths, mask: a PackedSequence carries its own lengths; pass neither")
        x, lengths = pad_packed_sequence(input, batch_first=True)
        return x, lengths.to(x.device), True
    if not isinstance(input, Tensor) or input.dim() != 3:
        raise ValueError(f"input: expected [batch, time, features] (batch_first) or a PackedSequence, got "
                         f"{shape_of(input) if isinstance(input, Tensor) else type(input).__name__}")
    if input.shape[1] == 0:   # as nn.LSTM, which the layers run (with lengths, packing failed on it)
        raise ShapeError(f"input: expected at least one time step, got shape {shape_of(input)}")
    if lengths is not None and mask is not None:
        raise ValueError("lengths, mask: pass one of them")
    if mask is None and lengths is None and getattr(module, "mask_value", None) is not None:
        mask = (input != module.mask_value).any(-1)
    if mask is not None:
        if shape_of(mask) != tuple(input.shape[:2]):
            raise ValueError(f"mask: expected shape {tuple(input.shape[:2])} (batch, time of input), got "
                             f"{shape_of(mask)}")
        lengths = lengths_from_mask(mask)
    if lengths is not None:
        given = integer_tensor("lengths", lengths, device=input.device)
        check_integers("lengths", given)
        lengths = comparable(given)  # what follows compares and clamps them
        if shape_of(lengths) != (input.shape[0],) or bool(lengths_outside(lengths, input.shape[1]).any()):
            raise ValueError(f"lengths: expected {input.shape[0]} values in [0, {input.shape[1]}], got {given.tolist()}")
    return input, lengths, False


def _check_packable(layer: nn.Module, packed: bool) -> None:
    """A PackedSequence holds each row's first steps: a layer returning Keras' reversed outputs
    (go_backwards: the valid steps last) cannot answer one."""
    if packed and getattr(layer, "go_backwards", False) and layer.return_sequences:
        raise ValueError(f"input: layer {layer.name!r} runs backwards and returns its outputs reversed, with the "
                         f"valid steps last, which a PackedSequence cannot hold; pass the padded input with "
                         f"lengths= or mask=")


def _output(out, packed: bool, input):
    if packed and isinstance(out, Tensor) and out.dim() == 3:
        lengths = pad_packed_sequence(input, batch_first=True)[1]
        return pack_padded_sequence(out, lengths, batch_first=True, enforce_sorted=False)
    return out


class LSTMStack(nn.Module):
    """Layers run one after the other, each on the previous one's outputs: for stacks whose layers
    differ (sizes, peepholes, projection, clips, forget bias, activations) or Keras layers.

    ``forward(input [B, T, D] or PackedSequence, hx=None, *, lengths=None, mask=None)`` returns
    ``(output, (h_n, c_n))``; ``mask`` [B, T] (a Keras mask, valid steps first) or ``lengths`` [B] give
    sequence lengths; with ``mask_value`` (a Keras Masking layer) the mask comes from the input.
    ``requires_mask``: why the stack cannot tell the mask from its input (the model masked an earlier
    input: an Embedding's ``mask_zero``, a Masking layer before a Dense); a call without ``mask``,
    ``lengths`` or a PackedSequence is then an error that says so.
    """

    def __init__(self, layers: Sequence[nn.Module], mask_value: Optional[float] = None, *,
                 requires_mask: Optional[str] = None) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers: expected at least one layer")
        if mask_value is not None and requires_mask is not None:
            raise ValueError("mask_value, requires_mask: the mask comes from the input or from the caller, not both")
        self.layers = nn.ModuleList(layers)
        self.mask_value, self.requires_mask = mask_value, requires_mask

    @property
    def state_count(self) -> int:
        return sum(_state_count(layer) for layer in self.layers)

    def reset_states(self) -> None:
        """Forget the states the stateful layers kept (``KerasRNN.reset_states``), as Keras' model's."""
        for layer in self.layers:
            if hasattr(layer, "reset_states"):
                layer.reset_states()

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        if self.requires_mask is not None and mask is None and lengths is None \
                and not isinstance(input, PackedSequence):
            raise ValueError(f"mask: {self.requires_mask}")
        x, lengths, packed = _inputs(self, input, lengths, mask)
        _check_packable(self.layers[-1], packed)
        if lengths is not None:
            early = [layer.name for layer in self.layers[:-1] if getattr(layer, "go_backwards", False)]
            if early:
                raise ValueError(f"lengths: layer {early} runs backwards and returns its outputs reversed, "
                                 f"but Keras hands the next layer the mask unreversed; sequence lengths "
                                 f"cannot express that")
        if hx is None:  # every stateful layer's kept states fit, before any layer runs and keeps new ones
            for module in self.modules():
                if isinstance(module, KerasRNN):
                    module.kept_states(x.shape[0])
        hs, cs = [], []
        out = x
        states = _split(hx, [_state_count(layer) for layer in self.layers])
        for k, (layer, state) in enumerate(zip(self.layers, states)):
            if getattr(layer, "mask_value", None) is not None:
                lengths = lengths_from_mask((out != layer.mask_value).any(-1))
            # Layers of other dtypes (a Keras model's per-layer dtype policies): each takes the one
            # before's outputs in its own, as Keras casts them (the input is the caller's to give).
            weight = next(layer.parameters(), None)
            if k and weight is not None and out.dtype != weight.dtype:
                out = out.to(weight.dtype)
            out, h, c = _run(layer, out, lengths, state)
            hs += h
            cs += c
        return _output(out, packed, input), (_stacked(hs), _stacked(cs))


class Bidirectional(nn.Module):
    """``forward_module`` over the sequence and ``backward_module`` over it reversed within each row's
    length (its outputs put back in time order), merged by ``merge_mode`` (Keras' names: "concat",
    "sum", "mul", "ave", or None for the pair). TF's ``bidirectional_dynamic_rnn`` is "concat".

    ``forward(input [B, T, D] or PackedSequence, hx=None, *, lengths=None, mask=None)``: as ``LSTMStack``'s.
    """

    def __init__(self, forward_module: nn.Module, backward_module: nn.Module, merge_mode: Optional[str] = "concat"):
        super().__init__()
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {MERGE_MODES}, got {merge_mode!r}")
        self.forward_module, self.backward_module, self.merge_mode = forward_module, backward_module, merge_mode

    @property
    def state_count(self) -> int:
        return _state_count(self.forward_module) + _state_count(self.backward_module)

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        x, lengths, packed = _inputs(self, input, lengths, mask)
        fw_state, bw_state = _split(hx, [_state_count(self.forward_module), _state_count(self.backward_module)])
        out_f, h_f, c_f = _run(self.forward_module, x, lengths, fw_state)
        out_b, h_b, c_b = _run(self.backward_module, _reverse(x, lengths), lengths, bw_state)
        out = _merge(self.merge_mode, out_f, _reverse(out_b, lengths))
        return _output(out, packed, input), (_stacked(h_f + h_b), _stacked(c_f + c_b))


class KerasRNN(nn.Module):
    """One Keras ``LSTM`` layer, or ``Bidirectional(LSTM)`` (``lstm`` bidirectional, ``merge_mode``), as
    Keras computes it: ``go_backwards`` returns outputs in the reversed order; masked steps output
    zeros (``zero_output_for_mask``, as in Bidirectional with sequences) or repeat the last valid
    output; ``return_sequences=False`` gives the last output [B, F]. ``mask_value``: a Keras Masking
    layer's right before this one: the mask comes from the input, as in ``LSTMStack``, and in a stack
    it replaces the mask of the layers before (Keras' Masking makes a new one from their outputs).
    ``stateful`` (Keras' option): each call keeps its final states (without their gradient) for the
    next call on the same batch size, which starts from them unless given ``hx``; ``reset_states()``
    forgets them (the next call starts from zeros, as the first does).

    ``forward(input [B, T, D] or PackedSequence, hx=None, *, lengths=None, mask=None)``: as ``LSTMStack``'s.
    """

    def __init__(self, lstm: LSTM, name: str, merge_mode: Optional[str] = "concat", go_backwards: bool = False,
                 return_sequences: bool = True, zero_output_for_mask: bool = False,
                 mask_value: Optional[float] = None, stateful: bool = False) -> None:
        super().__init__()
        if not isinstance(lstm, LSTM) or lstm.num_layers != 1 or not lstm.batch_first:
            raise ValueError("lstm: expected a one-layer triton_lstm.LSTM with batch_first=True")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {MERGE_MODES}, got {merge_mode!r}")
        if lstm.bidirectional and go_backwards:
            raise ValueError("go_backwards: a Bidirectional layer's forward LSTM must run forwards")
        self.lstm, self.name, self.merge_mode = lstm, name, merge_mode
        self.go_backwards, self.return_sequences = go_backwards, return_sequences
        self.zero_output_for_mask, self.mask_value, self.stateful = zero_output_for_mask, mask_value, stateful
        # A stateful layer's final states [directions, B, W] from its last call (buffers: they move
        # with the module, and are not saved with its parameters).
        self.register_buffer("kept_h", None, persistent=False)
        self.register_buffer("kept_c", None, persistent=False)

    @property
    def state_count(self) -> int:
        return _state_count(self.lstm)

    def reset_states(self) -> None:
        """Forget the states a stateful layer kept: its next call starts from zeros."""
        self.kept_h = self.kept_c = None

    def kept_states(self, batch: int) -> Optional[tuple[list, list]]:
        """The states a stateful layer kept (None if none), for a call on ``batch`` rows."""
        if self.kept_h is None:
            return None
        if self.kept_h.shape[1] != batch:
            raise ValueError(f"input: layer {self.name!r} is stateful and kept the states of a batch of "
                             f"{self.kept_h.shape[1]} rows, got {batch}; call reset_states() first to start "
                             f"from zeros")
        return list(self.kept_h), list(self.kept_c)

    def __setstate__(self, state: dict) -> None:
        # A layer pickled whole before ``stateful`` existed loads as one that is not.
        super().__setstate__(state)
        self.__dict__.setdefault("stateful", False)
        for name in ("kept_h", "kept_c"):
            self._buffers.setdefault(name, None)
            self._non_persistent_buffers_set.add(name)

    def forward(self, input, hx=None, *, lengths=None, mask=None):
        x, lengths, packed = _inputs(self, input, lengths, mask)
        _check_packable(self, packed)
        state = _split(hx, [self.state_count])[0]
        if state is None:
            state = self.kept_states(x.shape[0])
        if self.lstm.bidirectional:
            out, h, c = _run(self.lstm, x, lengths, state)
            last = _merge(self.merge_mode, *(_last_output(s, lengths) for s in h))
            halves = out.split(self.lstm.proj_size or self.lstm.hidden_size, dim=-1)
            out = _merge(self.merge_mode, *halves)
        else:
            seq = _reverse(x, lengths) if self.go_backwards else x
            out, h, c = _run(self.lstm, seq, lengths, state)
            last = _last_output(h[0], lengths, x.shape[1] if self.zero_output_for_mask and not self.go_backwards else 1)
            if self.go_backwards:
                # Keras runs the padded row reversed: masked steps first (zero outputs), then the valid ones.
                out = _reverse(out, lengths).flip(1)
            elif lengths is not None and not self.zero_output_for_mask:
                valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
                out = torch.where(valid[:, :, None], out, last[:, None, :])
        if self.stateful:
            self.kept_h, self.kept_c = torch.stack(h).detach(), torch.stack(c).detach()
        return _output(out if self.return_sequences else last, packed, input), (_stacked(h), _stacked(c))


# ----------------------------------------------------------------------------------- TF1 files
_STRUCTURAL = re.compile(r"^(fw|bw|multi_rnn_cell|cell_\d+)$")


def _per_layer(name: str, value: Any, layers: int) -> list:
    """One value per layer: ``value`` itself for each, or its items (a list, tuple or 1-D array)."""
    if isinstance(value, (np.ndarray, Tensor)) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != layers:
            raise ValueError(f"{name}: expected one value or {layers} (one per layer), got {len(value)}")
        return list(value)
    return [value] * layers


def find_lstm_cells(variables: Mapping[str, Any], scope: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """TF LSTM cells in a checkpoint's variables: ``{cell scope: {"kernel", "bias", "w_f_diag", ...}}``.

    A cell is a scope with ``kernel`` and ``bias`` whose name contains "lstm" (TF's ``lstm_cell``,
    ``basic_lstm_cell``, ``lstm_fused_cell`` ...) or that has peepholes or a projection; with
    ``scope``, every such pair under it counts. Optimizer slots (``kernel/Adam``) are not variables of it.
    """
    names = {k.split(":")[0]: k for k in variables}
    prefix = scope.rstrip("/") + "/" if scope else None
    cells = {}
    for cell in _kernel_scopes(names):
        if prefix is not None and not (cell + "/").startswith(prefix):
            continue
        if prefix is not None or _lstm_like(cell, names):
            cells[cell] = {v: variables[names[_var(cell, v)]] for v in ("kernel", "bias", *_EXTRAS)
                           if _var(cell, v) in names}
    return cells


def _kernel_scopes(names: Mapping[str, Any]) -> list[str]:
    """The scopes of ``names`` (variable names) that hold a ``kernel`` and its ``bias`` (a projection's
    kernel is none)."""
    scopes = [name[:-len("kernel")].rstrip("/") for name in names if name.endswith("/kernel") or name == "kernel"]
    return [s for s in scopes if not s.endswith("projection") and _var(s, "bias") in names]


_EXTRAS = ("w_f_diag", "w_i_diag", "w_o_diag", "projection/kernel")


def _var(cell: str, name: str) -> str:
    """A variable's full name in a cell's scope ("" for variables at the top)."""
    return f"{cell}/{name}" if cell else name


def _lstm_like(cell: str, names: Mapping[str, Any]) -> bool:
    """A scope named like TF's LSTM cells (lstm_cell, basic_lstm_cell, ...) or holding peepholes or a
    projection."""
    return "lstm" in cell.rsplit("/", 1)[-1].lower() or any(_var(cell, v) in names for v in _EXTRAS)


def _check_complete(variables: Mapping[str, Any], root: str) -> None:
    """An LSTM cell (``_lstm_like``) of the stack under ``root`` with its kernel or its bias missing is
    an error: the stack would silently lose a layer or a direction."""
    names = {k.split(":")[0] for k in variables}
    for name in names:
        if root and not name.startswith(root + "/"):
            continue
        cell, _, last = name.rpartition("/")
        if last not in ("kernel", "bias") or cell.endswith("projection"):
            continue
        other = _var(cell, "bias" if last == "kernel" else "kernel")
        if _lstm_like(cell, names) and other not in names:
            raise ValueError(f"variables: {name!r} has no {other!r}: the checkpoint lacks part of that LSTM cell")


def _place(cell: str) -> tuple[str, Optional[str], Optional[int], bool]:
    """(stack root, direction fw/bw/None, layer or None, whether direction comes before layer)."""
    parts = cell.split("/")[:-1]
    first = next((i for i, p in enumerate(parts) if _STRUCTURAL.match(p)), len(parts))
    direction = next((p for p in parts[first:] if p in ("fw", "bw")), None)
    layer = next((int(p[5:]) for p in parts[first:] if p.startswith("cell_")), None)
    dir_first = direction is not None and layer is not None and parts.index(direction) < parts.index(f"cell_{layer}")
    return "/".join(parts[:first]), direction, layer, dir_first


def _cell_shapes(cell: str, v: dict[str, Any]) -> dict:
    kernel, bias = as_tensor(v["kernel"], f"{cell}/kernel"), as_tensor(v["bias"], f"{cell}/bias")
    if kernel.dim() != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0 or shape_of(bias) != (kernel.shape[1],):
        raise ValueError(f"{cell}: kernel {shape_of(kernel)} and bias {shape_of(bias)} are not an LSTM's "
                         f"[input_size + output size, 4 * num_units] and [4 * num_units]")
    n = kernel.shape[1] // 4
    peep = [g in v for g in ("w_f_diag", "w_i_diag", "w_o_diag")]
    if any(peep) and not all(peep):
        raise ValueError(f"{cell}: has only some of w_f_diag, w_i_diag, w_o_diag")
    for g in ("w_f_diag", "w_i_diag", "w_o_diag") if all(peep) else ():
        shape = shape_of(as_tensor(v[g], f"{cell}/{g}"))
        if shape != (n,):
            raise ValueError(f"{cell}/{g}: expected shape ({n},) (num_units), got {shape}")
    proj = v.get("projection/kernel")
    if proj is not None:
        proj = as_tensor(proj, f"{cell}/projection/kernel")
        if proj.dim() != 2 or proj.shape[0] != n:
            raise ValueError(f"{cell}/projection/kernel: expected shape [{n} (num_units), num_proj], got "
                             f"{shape_of(proj)}")
    p = proj.shape[-1] if proj is not None else n
    if kernel.shape[0] <= p:
        raise ValueError(f"{cell}/kernel: expected input_size + {p} (output size) rows with input_size >= 1, got "
                         f"shape {shape_of(kernel)}")
    return dict(scope=cell, n=n, p=p, d=kernel.shape[0] - p, peepholes=all(peep), projection=proj is not None)


def _lstm_from_cells(layers: list[list[dict]], cells: Mapping[str, dict], options: dict) -> LSTM:
    """One triton_lstm.LSTM holding ``layers`` (each a list of 1 or 2 directions' cell shapes, all of one
    shape). Without a projection it ignores ``proj_clip``, as TF's cell does."""
    first = layers[0][0]
    kernel = as_tensor(cells[first["scope"]]["kernel"])
    options = dict(options, proj_clip=options["proj_clip"] if first["projection"] else None)
    module = LSTM(first["d"], first["n"], num_layers=len(layers), batch_first=True,
                  bidirectional=len(layers[0]) == 2, proj_size=first["p"] if first["projection"] else 0,
                  use_peepholes=first["peepholes"], dtype=kernel.dtype if kernel.is_floating_point() else None,
                  **options)
    state = {}
    for k, layer in enumerate(layers):
        for d, shape in enumerate(layer):
            v = cells[shape["scope"]]
            suffix = f"_l{k}" + ("_reverse" if d else "")
            state.update(tf_to_torch_lstm(v["kernel"], v["bias"], v.get("projection/kernel"), 0.0, suffix))
            for gate in ("f", "i", "o"):
                if f"w_{gate}_diag" in v:
                    state[f"w_{gate}_diag{suffix}"] = as_tensor(v[f"w_{gate}_diag"])
    module.load_state_dict(state)
    return module


def _shape_key(shape: dict) -> tuple:
    return shape["n"], shape["p"], shape["peepholes"], shape["projection"]


def _layer_module(layer: list[dict], cells: Mapping[str, dict], options: dict) -> nn.Module:
    """One layer of a stack: an LSTM (bidirectional when its two directions agree in size, peepholes and
    projection), else a Bidirectional of two one-layer LSTMs (TF lets fw and bw cells differ)."""
    if len({_shape_key(s) for s in layer}) == 1:
        return _lstm_from_cells([layer], cells, options)
    return Bidirectional(*(_lstm_from_cells([[s]], cells, options) for s in layer))


def _build_stack(layers: list[list[dict]], cells: Mapping[str, dict], options: list[dict]) -> nn.Module:
    """A uniform stack as one LSTM; else an LSTMStack of one-layer modules (``_layer_module``; a single
    layer is returned as itself). Checks how layers chain."""
    for k in range(1, len(layers)):
        want = sum(s["p"] for s in layers[k - 1])
        for shape in layers[k]:
            if shape["d"] != want:
                raise ValueError(f"{shape['scope']}/kernel: layer {k} takes input width {shape['d']}, but layer "
                                 f"{k - 1} outputs {want}")
    if len({_shape_key(s) for layer in layers for s in layer}) == 1 and all(o == options[0] for o in options):
        return _lstm_from_cells(layers, cells, options[0])
    modules = [_layer_module(layer, cells, opts) for layer, opts in zip(layers, options)]
    return modules[0] if len(modules) == 1 else LSTMStack(modules)


def tf_to_module(variables: Mapping[str, Any], scope: Optional[str] = None, *, forget_bias=1.0,
                 cell_clip=None, proj_clip=None, activation="tanh") -> nn.Module:
    """A batch-first module computing the TF1 LSTM stack in ``variables`` (``{name: array}``).

    Layers (``multi_rnn_cell/cell_k``), directions (``fw``/``bw`` of ``bidirectional_dynamic_rnn``,
    ``stack_bidirectional_rnn``), sizes, peepholes and projections come from the variables. What TF
    does not save is given here, with TF's defaults: ``forget_bias``, ``cell_clip``, ``proj_clip``,
    ``activation``, each one value or a list with one per layer (a layer without a projection ignores
    ``proj_clip``, as TF's cell does). ``scope`` picks one stack when the
    variables hold several. Returns a ``triton_lstm.LSTM`` when one can hold the stack, else an
    ``LSTMStack`` or a ``Bidirectional`` (fw and bw ``MultiRNNCell`` stacks, or a layer whose fw and bw
    cells differ) with the same call; in the kernels' dtype (a float64 checkpoint gives a float64
    module).
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables: expected a mapping of TF names to arrays, got {type(variables).__name__}")
    cells = find_lstm_cells(variables, scope)
    names = {k.split(":")[0] for k in variables}
    if not cells:
        where = f" under scope {scope!r}" if scope else ""
        pairs = sorted(_kernel_scopes(names)) if not scope else []
        hint = ("; this checkpoint is object-based (TF2): for a Keras model's (save_weights, or a SavedModel's "
                "variables), use triton_lstm.load_keras on it or on the SavedModel folder"
                if OBJECT_GRAPH in variables else
                f"; kernels with a bias in scopes not named like an LSTM cell (a cell given a name, or a Dense "
                f"layer's): {pairs[:5]}: pass the scope of the LSTM cells among them as scope= (every kernel "
                f"with a bias under it is read as a cell)" if pairs else "")
        raise ValueError(f"variables: no LSTM cell (a '.../kernel' with its '.../bias'){where}; names seen: "
                         f"{sorted(variables)[:20]}{hint}")
    keras = sorted(cell for cell in cells if _var(cell, "recurrent_kernel") in names)
    if keras:
        raise ValueError(f"variables: {keras} hold a recurrent_kernel: a Keras LSTM layer's variables (kernel [D, 4N] "
                         f"and recurrent_kernel [N, 4N], gates i, f, c, o), not a TF1 LSTMCell's; read one with "
                         f"LSTMCell.load_tf_weights(variables, scope=...) or convert.keras_to_torch_lstm")
    places = {cell: _place(cell) for cell in cells}
    roots = sorted({p[0] for p in places.values()})
    if len(roots) > 1:
        raise ValueError(f"variables: several LSTM stacks, under the scopes {roots}; pass scope= one of them")
    _check_complete(variables, roots[0])
    directions = sorted({p[1] for p in places.values()}, key=str)
    if len(directions) == 1:  # a scope that picks one direction: its stack, run forwards
        places = {cell: (root, None, layer, False) for cell, (root, _, layer, _) in places.items()}
        directions = [None]
    if directions not in ([None], ["bw", "fw"]):
        raise ValueError(f"variables: stack {roots[0]!r} has cells for directions {directions}; expected both "
                         f"fw and bw or neither ({sorted(cells)})")
    shapes = {cell: _cell_shapes(cell, v) for cell, v in cells.items()}

    def layer_list(direction):
        chosen = {places[c][2] or 0: shapes[c] for c in cells if places[c][1] == direction}
        order = sorted(chosen)
        # A stack starts at cell_0; a scope may pick some of its layers (consecutive ones).
        start = order[0] if scope else 0
        if order != list(range(start, start + len(order))):
            raise ValueError(f"variables: stack {roots[0]!r} has layers {order}; expected consecutive layers "
                             f"from {start}")
        return [chosen[k] for k in order]

    dir_first = any(p[3] for p in places.values())
    first = layer_list(directions[0])
    option_lists = [_per_layer(n, v, len(first)) for n, v in (("forget_bias", forget_bias), ("cell_clip", cell_clip),
                                                              ("proj_clip", proj_clip), ("activation", activation))]
    if directions == [None]:
        layers = [[s] for s in layer_list(None)]
    else:
        fw, bw = layer_list("fw"), layer_list("bw")
        if len(fw) != len(bw):
            raise ValueError(f"variables: stack {roots[0]!r} has {len(fw)} fw and {len(bw)} bw layers")
        layers = [[f, b] for f, b in zip(fw, bw)]
    # As TF's cells, a layer without a projection ignores proj_clip (one of two directions with one:
    # _lstm_from_cells); so layers alike stay one LSTM.
    options = [dict(forget_bias=f, cell_clip=c, proj_clip=p if any(s["projection"] for s in layer) else None,
                    activation=a) for f, c, p, a, layer in zip(*option_lists, layers)]
    if directions == [None]:
        return _build_stack(layers, cells, options)
    if dir_first and len(first) > 1:
        return Bidirectional(_build_stack([[s] for s in fw], cells, options),
                             _build_stack([[s] for s in bw], cells, options))
    return _build_stack(layers, cells, options)


def load_tf_checkpoint(path: str, scope: Optional[str] = None, *, forget_bias=1.0, cell_clip=None,
                       proj_clip=None, activation="tanh") -> nn.Module:
    """The LSTM stack of a TF1 checkpoint as a ready module, in one call and without TensorFlow.

    ``path``: a checkpoint prefix, its ``.index`` file, or a folder with a ``checkpoint`` file (the
    latest). The rest as ``tf_to_module``. Call the module as torch.nn.LSTM with ``batch_first=True``;
    TF's ``sequence_length`` is a PackedSequence (or ``lengths=`` for an ``LSTMStack``).
    """
    return tf_to_module(read_tf_checkpoint(path), scope, forget_bias=forget_bias, cell_clip=cell_clip,
                        proj_clip=proj_clip, activation=activation)


def _directions(lstm: LSTM) -> list[tuple[Optional[str], str]]:
    return [("fw", ""), ("bw", "_reverse")] if lstm.bidirectional else [(None, "")]


def _layer_directions(layer: nn.Module) -> Optional[list[tuple[Optional[str], LSTM, str]]]:
    """(direction fw/bw/None, LSTM, parameter suffix) of each cell of a stack's layer that TF1 can hold:
    a one-layer LSTM, or a concat Bidirectional of two one-way one-layer LSTMs (``_layer_module``);
    None for any other module."""
    if isinstance(layer, LSTM):
        return [(d, layer, "_l0" + s) for d, s in _directions(layer)] if layer.num_layers == 1 else None
    halves = (layer.forward_module, layer.backward_module) \
        if isinstance(layer, Bidirectional) and layer.merge_mode == "concat" else ()
    if halves and all(isinstance(m, LSTM) and m.num_layers == 1 and not m.bidirectional for m in halves):
        return [("fw", halves[0], "_l0"), ("bw", halves[1], "_l0")]
    return None


def _tf_cells(module: nn.Module) -> list[tuple[str, LSTM, str, int]]:
    """(cell scope under the stack's scope, LSTM, parameter suffix, layer) for every TF cell of a module."""
    def stacked(k: int, direction: Optional[str]) -> str:
        return f"multi_rnn_cell/cell_{k}/lstm_cell" if direction is None else \
            f"cell_{k}/bidirectional_rnn/{direction}/lstm_cell"

    if isinstance(module, LSTM) and module.num_layers == 1:
        return [("lstm_cell" if d is None else f"{d}/lstm_cell", m, s, 0) for d, m, s in _layer_directions(module)]
    if isinstance(module, LSTM):
        return [(stacked(k, d), module, f"_l{k}" + s, k) for k in range(module.num_layers)
                for d, s in _directions(module)]
    layers = [_layer_directions(m) for m in module.layers] if isinstance(module, LSTMStack) else [None]
    if all(layers):
        if len({layer[0][0] is None for layer in layers}) > 1:
            raise ValueError("module: an LSTMStack whose layers differ in direction has no TF1 layout (a "
                             "MultiRNNCell's layers run one way, stack_bidirectional_rnn's both)")
        return [(stacked(k, d), m, s, k) for k, layer in enumerate(layers) for d, m, s in layer]
    if isinstance(module, Bidirectional) and module.merge_mode == "concat":
        out = []
        for direction, sub in (("fw", module.forward_module), ("bw", module.backward_module)):
            cells = _tf_cells(sub)
            if any("fw/" in c or "bw/" in c for c, *_ in cells):
                raise ValueError("module: a Bidirectional of bidirectional stacks has no TF1 layout")
            out += [(f"{direction}/{c}", m, s, k) for c, m, s, k in cells]
        return out
    raise ValueError(f"module: expected a triton_lstm.LSTM, an LSTMStack of one-layer LSTMs (or of concat "
                     f"Bidirectionals of two one-way ones) or a concat Bidirectional of them, got "
                     f"{type(module).__name__}; TF1 has no layout for {_no_tf_layout(module)}")


def _no_tf_layout(module: nn.Module) -> str:
    """What in a module ``_tf_cells`` refuses stands in the way, for its error."""
    if isinstance(module, LSTMStack):
        bad = [(k, layer) for k, layer in enumerate(module.layers) if _layer_directions(layer) is None]
        if not bad:   # a stack in a stack, whose own layers have one
            return "an LSTMStack inside a stack (give the outer stack its layers: LSTMStack([*inner.layers, ...]))"
        k, layer = bad[0]
        return f"its layer {k}, {_no_tf_layout(layer)}"
    if isinstance(module, KerasRNN):
        return (f"a Keras layer ({module.name!r}; module_to_keras exports it, keras_to_tf_lstm converts its "
                f"Keras weights to a TF1 cell's)")
    if isinstance(module, LSTM):
        return f"an LSTM of num_layers={module.num_layers} inside a stack (its layers are one-layer LSTMs)"
    if isinstance(module, Bidirectional) and module.merge_mode != "concat":
        return f"a Bidirectional with merge_mode={module.merge_mode!r} (TF1 concatenates the directions)"
    if isinstance(module, Bidirectional):
        return "a Bidirectional whose directions are not two one-way one-layer LSTMs"
    if isinstance(module, nn.LSTM):
        return "torch's nn.LSTM (load its state dict into a triton_lstm.LSTM, whose layout module_to_tf writes)"
    if isinstance(module, LSTMCell):
        return "an LSTMCell as a module of layers (its own tf_weights() gives TF's variables)"
    return f"a {type(module).__name__}"


def module_to_tf(module: nn.Module, scope: Optional[str] = None, forget_bias=1.0) -> dict:
    """The TF1 variables (``{name: numpy array}``) of a module from ``tf_to_module`` or a
    triton_lstm.LSTM (an nn.LSTM's state dict loads into one), under the names TF1 gives them:
    ``<scope>/lstm_cell/...``, ``<scope>/multi_rnn_cell/cell_k/lstm_cell/...``, ``<scope>/fw|bw/...``
    and ``<scope>/cell_k/bidirectional_rnn/fw|bw/...``. ``scope`` defaults to TF's ("rnn",
    "bidirectional_rnn", "stack_bidirectional_rnn"). The biases are for TF cells built with
    ``forget_bias``, one value or a list with one per layer (the module's own run-time forget bias is
    folded in), as ``tf_to_module`` takes it."""
    cells = _tf_cells(module)
    if scope is None:
        bidirectional = any(c.startswith(("fw/", "bw/")) for c, *_ in cells)
        stacked = any("/bidirectional_rnn/" in c for c, *_ in cells)
        scope = "stack_bidirectional_rnn" if stacked else "bidirectional_rnn" if bidirectional else "rnn"
    per_layer = [check_forget_bias(f) for f in _per_layer("forget_bias", forget_bias, max(k for *_, k in cells) + 1)]
    out = {}
    for cell, lstm, suffix, k in cells:
        lstm.check_stored_weights("module_to_tf")
        gate = resolve_recurrent_activation(lstm.recurrent_activation)[0]
        if gate != "sigmoid":
            raise ValueError(f"module_to_tf: recurrent_activation={lstm.recurrent_activation!r} (cell {cell!r}); TF1's "
                             f"LSTMCell computes its gates with sigmoid only (module_to_keras exports other gate "
                             f"activations)")
        out.update(torch_lstm_to_tf(lstm.state_dict(), suffix, per_layer[k] - lstm.forget_bias,
                                    f"{scope}/{cell}" if scope else cell))
    return out


# ---------------------------------------------------------------------------------- Keras files
# Layers that compute nothing at inference, so LSTM layers around them still form a chain.
_PASS_THROUGH = {"InputLayer", "Masking", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                 "AlphaDropout", "ActivityRegularization", "NotEqual", "Any"}


# Layers that hand Keras' mask on (supports_masking) and layers that drop it, between a mask and the LSTMs.
_KEEP_MASK = _PASS_THROUGH | {"Dense", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Softmax",
                              "BatchNormalization", "LayerNormalization", "UnitNormalization", "GroupNormalization",
                              "TimeDistributed", "Attention", "AdditiveAttention", "MultiHeadAttention",
                              "GroupQueryAttention", "GRU", "SimpleRNN"}
# Keras 3 hands the mask on through these; Keras 2 drops it there.
_KERAS3_KEEP_MASK = {"Identity", "Normalization", "Rescaling"}
_DROP_MASK = {"EinsumDense", "Conv1D", "SeparableConv1D", "DepthwiseConv1D", "Conv1DTranspose", "Lambda", "Flatten", "Reshape",
              "Permute", "RepeatVector", "MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D",
              "GlobalAveragePooling1D", "UpSampling1D", "ZeroPadding1D", "Cropping1D", "RMSNormalization",
              "LocallyConnected1D"}


def keras_activation(name: Any, keras_version: str, arg: str) -> str:
    """Our activation name for a Keras one: Keras 3's hard_sigmoid is relu6(x + 3) / 6 (torch's
    hardsigmoid), Keras 2's is clip(0.2x + 0.5, 0, 1) (our "hard_sigmoid")."""
    if not isinstance(name, str):
        raise ValueError(f"{arg}: a custom activation {name!r} from the file has no equivalent here")
    if name == "hard_sigmoid":
        return "hard_sigmoid" if keras_version.startswith(("1", "2")) else "hardsigmoid"
    if name in KERAS_ACTIVATIONS or (name in ACTIVATIONS and name != "hardsigmoid"):
        return name
    raise ValueError(f"{arg}: Keras activation {name!r} is not supported (not elementwise, or unknown); "
                     f"supported: {', '.join(sorted({*ACTIVATIONS, *KERAS_ACTIVATIONS} - {'hardsigmoid'}))}")


def _lstm_options(layer: Any) -> Optional[dict]:
    """The options of a Keras layer ``{"class_name", "config"}`` that is an LSTM (or Keras 2's
    CuDNNLSTM: tanh and sigmoid, its weights told apart by ``keras_to_torch_lstm``), or an RNN of an
    LSTMCell (the RNN's options with the cell's); None for any other layer."""
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        return None
    options = layer["config"]
    if layer.get("class_name") in ("LSTM", "CuDNNLSTM"):
        return options
    cell = options.get("cell")
    if layer.get("class_name") == "RNN" and isinstance(cell, dict) and cell.get("class_name") == "LSTMCell":
        if not isinstance(cell.get("config") or {}, dict):
            raise ValueError(f"config: the LSTMCell of layer {options.get('name')!r} has a config that is not a "
                             f"mapping: corrupt file")
        return {**options, **(cell.get("config") or {})}
    return None


def _is_lstm(entry: dict) -> bool:
    """Whether a model config's layer is an LSTM, RNN(LSTMCell), a Bidirectional of one, or an RNN of
    stacked LSTMCells."""
    cells = stacked_cells(entry)
    if cells is not None:
        return bool(cells) and all(c.get("class_name") == "LSTMCell" for c in cells)
    return _lstm_options(entry["config"].get("layer") if entry["class_name"] == "Bidirectional" else entry) is not None


def _cell_layers(name: str, weights: Mapping[str, Any], entry: Optional[dict]) -> list[tuple[str, Optional[dict]]]:
    """(name, config entry) of each LSTM a Keras layer holds: the layer itself, or for an RNN of stacked
    cells (``RNN([LSTMCell, ...])``) each cell as an RNN of that cell alone, named ``<layer>/cells/<k>``
    as ``read_keras_weights`` names its weights (each returns sequences to the next, the last as the
    layer does; without a config the cells come from the weights)."""
    cells = stacked_cells(entry)
    if entry is None:
        count = next(k for k in itertools.count() if f"{name}/cells/{k}/kernel" not in weights)
        return [(f"{name}/cells/{k}", None) for k in range(count)] or [(name, None)]
    if cells is None or not _is_lstm(entry):
        return [(name, entry)]
    options = entry["config"]
    if options.get("go_backwards") and len(cells) > 1:
        raise ValueError(f"layers: {name!r} runs stacked cells backwards (go_backwards); not supported")
    return [(f"{name}/cells/{k}", {"name": f"{name}/cells/{k}", "class_name": "RNN", "config": {
        **options, "cell": cell, "return_sequences": options.get("return_sequences", False) or k < len(cells) - 1}})
        for k, cell in enumerate(cells)]


def _keras_layer(name: str, weights: Mapping[str, Any], entry: Optional[dict], keras_version: str,
                 last: bool, mask_value: Optional[float] = None) -> KerasRNN:
    config = entry["config"] if entry else {}
    bidirectional = entry["class_name"] == "Bidirectional" if entry else f"{name}/forward/kernel" in weights
    if entry and not _is_lstm(entry):
        inner = config.get("layer") if bidirectional else None
        what = entry["class_name"] + (f"({inner.get('class_name') if isinstance(inner, dict) else inner})"
                                      if bidirectional else "")
        raise ValueError(f"layers: {name!r} is a {what}, not an LSTM, RNN(LSTMCell), RNN of LSTMCells or a "
                         f"Bidirectional of one")
    inner = (_lstm_options(config["layer"]) if bidirectional else _lstm_options(entry)) if entry else {}
    if inner.get("time_major"):
        raise ValueError(f"layers: {name!r} has time_major=True; not supported")
    backward = _lstm_options(config.get("backward_layer")) or {} if bidirectional else {}
    if bidirectional and (inner.get("go_backwards") or "backward_layer" in config and any(
            backward.get(k) != inner.get(k) for k in ("units", "activation", "recurrent_activation", "use_bias"))):
        raise ValueError(f"layers: {name!r} is a Bidirectional whose backward layer is not the forward one "
                         f"run backwards; not supported")
    directions = ("forward/", "backward/") if bidirectional else ("",)
    found = [{w: weights.get(f"{name}/{d}{w}") for w in ("kernel", "recurrent_kernel", "bias")} for d in directions]
    known = {f"{name}/{d}{w}" for d in directions for w in ("kernel", "recurrent_kernel", "bias")}
    others = sorted(k for k in weights if k.startswith(f"{name}/") and k not in known and "/cells/" not in k)
    if others:
        raise ValueError(f"weights: {name!r} has weights an LSTM layer has not: {others} (Keras' peephole LSTM "
                         f"cell's, or a layer wrapping the LSTM?); not supported (LSTMCell(use_peepholes=True).load_tf_weights reads a peephole "
                         f"cell's weights)")
    for d, f in zip(directions, found):
        absent = [f"{name}/{d}{w}" for w in ("kernel", "recurrent_kernel") if f[w] is None]
        if absent:
            complete = sorted({k.split("/")[0] for k in weights if k.endswith("/recurrent_kernel")
                               and k[:-len("recurrent_kernel")] + "kernel" in weights})
            raise ValueError(f"weights: no {' and no '.join(absent)}; layers with both LSTM kernels: {complete}")
    use_bias = inner.get("use_bias", found[0]["bias"] is not None)
    if use_bias != (found[0]["bias"] is not None):
        raise ValueError(f"weights: {name!r} has use_bias={use_bias} but the file {'lacks' if use_bias else 'has'} a bias")
    state = {}
    for d, f in enumerate(found):
        try:
            state.update(keras_to_torch_lstm(f["kernel"], f["recurrent_kernel"], f["bias"],
                                             "_l0_reverse" if d else "_l0"))
        except ValueError as e:
            guess = "" if entry else " (without a model config every layer with these weights is taken as an LSTM)"
            raise ValueError(f"weights: layer {(name + '/' + directions[d]).rstrip('/')}: {e}{guess}") from None
    if bidirectional:
        differ = [k for k in ("weight_ih", "weight_hh", "bias_ih") if k + "_l0" in state
                  and (k + "_l0_reverse" not in state or state[k + "_l0"].shape != state[k + "_l0_reverse"].shape)]
        if differ or ("bias_ih_l0" in state) != ("bias_ih_l0_reverse" in state):
            raise ValueError(f"weights: {name!r} is a Bidirectional whose backward layer differs from its forward "
                             f"one (units, inputs or bias); not supported")
    units = state["weight_hh_l0"].shape[1]
    if inner.get("units", units) != units:
        raise ValueError(f"weights: {name!r} is configured with units={inner['units']} but its weights have {units}")
    return_sequences = inner.get("return_sequences", True)
    if not last and not return_sequences:
        raise ValueError(f"layers: {name!r} has return_sequences=False but another LSTM layer follows it")
    lstm = LSTM(state["weight_ih_l0"].shape[1], units, bias=use_bias, batch_first=True, bidirectional=bidirectional,
                dtype=state["weight_ih_l0"].dtype,
                activation=keras_activation(inner.get("activation", "tanh"), keras_version, f"{name}: activation"),
                recurrent_activation=keras_activation(inner.get("recurrent_activation", "sigmoid"), keras_version,
                                                      f"{name}: recurrent_activation"))
    lstm.load_state_dict(state)
    return KerasRNN(lstm, name, merge_mode=config.get("merge_mode", "concat") if bidirectional else "concat",
                    go_backwards=bool(inner.get("go_backwards", False)), return_sequences=return_sequences,
                    zero_output_for_mask=bool(inner.get("zero_output_for_mask", False)), mask_value=mask_value,
                    stateful=bool(inner.get("stateful", False)))


def keras_to_module(weights: Mapping[str, Any], config: Optional[dict] = None,
                    layers: Union[str, Sequence[str], None] = None) -> LSTMStack:
    """An ``LSTMStack`` of ``KerasRNN`` layers from ``read_keras_weights``/``read_keras_config`` output.

    ``layers``: the LSTM, RNN(LSTMCell) and Bidirectional layers of them (and RNNs of stacked
    LSTMCells, each cell a KerasRNN ``<layer>/cells/<k>``) to chain, by name, in the order they run;
    by default every such layer of the model (nested models' too), which must then follow one
    another (only layers that compute nothing at inference, such as Dropout or Masking, between
    them; in a Functional model each must take the outputs of the one before). A Masking layer
    before them becomes the stack's ``mask_value``, one between two of them the ``mask_value`` of
    the layer after it (its mask is made from the outputs before it, as Keras does); where the model
    masks an earlier input (an Embedding's ``mask_zero``, a Masking layer with other layers after
    it), the stack must be given the mask, unless a layer between drops it (Conv1D, Lambda, ...).
    Without a config (weights-only files) each layer is taken as an LSTM with tanh, sigmoid gates,
    ``return_sequences=True``, forwards and a Bidirectional's "concat", whatever the model had: give
    the config of a file that has one to keep the model's. The modules take the weights' dtype.
    """
    entries = config["layers"] if config else []
    version = config["keras_version"] if config else "3"
    by_name = {e["name"]: e for e in entries}
    place = {e["name"]: k for k, e in enumerate(entries)}
    recurrent = [e["name"] for e in entries if _is_lstm(e)]
    by_default = layers is None
    if layers is None:
        if config is None:
            # An LSTM's recurrent kernel is [N, 4N] (a GRU's [N, 3N], a SimpleRNN's [N, N]).
            recurrent = list(dict.fromkeys(k.split("/")[0] for k, w in weights.items() if k.endswith("/recurrent_kernel")
                                           and len(np.shape(w)) == 2 and np.shape(w)[1] == 4 * np.shape(w)[0]))
            if len(recurrent) > 1:
                raise ValueError(f"layers: the file has no model config, so the order of {recurrent} is unknown; "
                                 f"pass layers=[...] in the order they run")
        layers = recurrent
        positions = [place[n] for n in layers] if config else []
        between = [e for a, b in zip(positions, positions[1:]) for e in entries[a + 1:b]
                   if e["class_name"] not in _PASS_THROUGH]
        if between:
            raise ValueError(f"layers: {[e['name'] for e in between]} ({between[0]['class_name']}) sit between the "
                             f"LSTM layers {layers}; pass layers=[...] to pick a chain")
        if not layers:
            raise ValueError(f"layers: the file has no LSTM layer; its layers: {[e['name'] for e in entries]}"
                             if config else f"layers: the file has no LSTM layer (no model config: none has an "
                             f"LSTM's recurrent_kernel [N, 4N]); the layers its weights name: "
                             f"{list(dict.fromkeys(k.split('/')[0] for k in weights))}")
    elif isinstance(layers, str):
        layers = [layers]
    else:
        layers = list(layers)
        if not layers:
            raise ValueError("layers: an empty list; name at least one layer, or pass None for all of them")
    missing = [n for n in layers if config and n not in by_name]
    if missing:
        raise ValueError(f"layers: no layer named {missing}; the model's layers: {list(by_name)}")
    shared = [n for n in layers if config and (by_name[n].get("calls") or 1) > 1]
    if shared:
        raise ValueError(f"layers: {shared} called {by_name[shared[0]]['calls']} times in the model (a shared layer); "
                         f"a module runs each layer once, so this model is not supported")
    # A layer given more than its input (initial_state=): only alone or first of the layers named,
    # its states then the caller's to pass (hx).
    fed = [n for k, n in enumerate(layers) if config and len(by_name[n].get("inbound") or []) > 1
           and (by_default or k > 0)]
    if fed:
        inbound = by_name[fed[0]]["inbound"]
        raise ValueError(f"layers: {fed[0]!r} takes {len(inbound)} tensors from {sorted(set(inbound))}: its input "
                         f"and more (initial_state=...), which a module of the chain does not pass; load it with "
                         f"layers=[{fed[0]!r}, ...] and pass its initial state as hx")
    repeated = sorted({n for n in layers if layers.count(n) > 1})
    if repeated:
        raise ValueError(f"layers: {repeated} given more than once")
    if config and [place[n] for n in layers] != sorted(place[n] for n in layers):
        raise ValueError(f"layers: {layers} are not in the order the model runs them: "
                         f"{[n for n in by_name if n in layers]}")
    # Inbound nodes may name a nested model: its output layer (``keras_layers``' aliases).
    followed = {**by_name, **{alias: e for e in entries for alias in e.get("aliases", ())}}
    masks = [None] + [_mask_between(a, b, entries[place[a] + 1:place[b]], followed, version) if config else None
                      for a, b in zip(layers, layers[1:])]
    modules = []
    for k, (n, mask) in enumerate(zip(layers, masks)):
        cells = _cell_layers(n, weights, by_name.get(n))
        modules += [_keras_layer(cell, weights, entry, version, k == len(layers) - 1 and j == len(cells) - 1,
                                 mask if j == 0 else None) for j, (cell, entry) in enumerate(cells)]
    for before, after in zip(modules, modules[1:]):
        width = _keras_output_width(before)
        if after.lstm.input_size != width:
            raise ValueError(f"layers: {after.name!r} takes inputs of width {after.lstm.input_size}, but "
                             f"{before.name!r} before it outputs {width}; pass layers=[...] in the order they run")
    mask_value, requires_mask = _keras_mask(entries[:place[layers[0]]] if config else [], version)
    # Whether Keras 3 passed the first layer a mask, as its Functional config's node records it. Not
    # where the node may not know (a nested model's layer, or a layer on one's outputs): only a layer
    # of the outer model given more than its input (initial_state=), which Keras 3 calls without the
    # mask unless given one with mask=; and a mask recorded where no layer here makes one (mask=).
    first = by_name[layers[0]] if config else {}
    if first.get("masked") is False and len(first.get("inbound") or []) > 1 and first.get("depth") == 0:
        # A later layer Keras 3 hands the mask on to (from its inputs) would need one the first lacks.
        carried = [n for n, mask in zip(layers[1:], masks[1:]) if mask is None and by_name[n].get("masked")]
        if carried:
            raise ValueError(f"layers: Keras runs {layers[0]!r} without a mask and {carried} after it with one; a "
                             f"module runs its layers with one mask: load {layers[0]!r} alone and the layers after "
                             f"it on its outputs, with the mask")
        mask_value, requires_mask = None, None
    elif first.get("masked") and mask_value is None and requires_mask is None:
        requires_mask = (f"the model passes {layers[0]!r} a mask (given with mask=, or made by a layer not known "
                         f"here to make one): pass that mask, or lengths=")
    return LSTMStack(modules, mask_value, requires_mask=requires_mask)


def _source(name: str, by_name: Mapping[str, dict]) -> Optional[tuple[str, list[dict]]]:
    """(the layer whose outputs reach layer ``name`` through layers that compute nothing, a Functional
    model's input layer included, a nested model's followed to what the model is called on; those
    layers in the model's order), or None where the config does not tell (a Sequential model, several
    inputs, a nested model's outputs)."""
    walked = [by_name[name]]
    inbound = walked[0].get("inbound")
    while inbound is not None and len(inbound) == 1 and inbound[0] in by_name \
            and all(inbound[0] != e["name"] for e in walked):
        entry = by_name[inbound[0]]
        if entry["class_name"] == "InputLayer" and entry.get("depth") == 0:
            return entry["name"], walked[:0:-1]
        if entry["class_name"] not in _PASS_THROUGH:
            return entry["name"], walked[:0:-1]
        walked.append(entry)
        # A nested model's input layer takes what the model is called on.
        inbound = entry.get("outer") if entry["class_name"] == "InputLayer" else entry.get("inbound")
    return None


def _mask_between(before: str, after: str, between: list[dict], by_name: Mapping[str, dict],
                  keras_version: str) -> Optional[float]:
    """The mask_value of a Masking layer between the LSTM layers ``before`` and ``after``, which makes a
    new mask from ``before``'s outputs; None without one. The layers between are those the config's
    inbound nodes lead through, else (a Sequential model) ``between``, the model's layers between the
    two. Checks that ``after`` takes ``before``'s outputs (not another branch's, nor those of a layer
    between that computes)."""
    source = _source(after, by_name)
    if source is not None:
        if source[0] != before:
            raise ValueError(f"layers: {after!r} takes its inputs from {source[0]!r}, not from {before!r} before "
                             f"it; pass layers=[...] to pick a chain of layers that feed one another")
        between = source[1]
    computing = [e["name"] for e in between if e["class_name"] not in _PASS_THROUGH]
    if computing:   # where the inbound nodes do not tell (a Sequential model's), the layers listed between
        raise ValueError(f"layers: {computing} ({by_name[computing[0]]['class_name']}) sit between {before!r} and "
                         f"{after!r}, which the module would skip; pass layers=[...] to pick a chain of layers "
                         f"that feed one another")
    return _keras_mask(between, keras_version)[0]   # layers that compute nothing: a Masking layer's mask, or none


def _keras_mask(before: list[dict], keras_version: str) -> tuple[Optional[float], Optional[str]]:
    """(mask_value, requires_mask) of a stack whose first layer comes after the layers ``before``: the
    mask of the last layer there that makes one, a Masking layer's value where only layers that
    compute nothing follow it, none where a layer that drops Keras' mask (in the Keras that wrote the
    file) follows it, else the reason the caller must pass the mask."""
    makers = [k for k, e in enumerate(before) if e["class_name"] == "Masking"
              or e["class_name"] == "Embedding" and (e["config"] or {}).get("mask_zero")
              or e["class_name"] == "Lambda" and (e["config"] or {}).get("mask")]
    if not makers:
        return None, None
    maker = before[makers[-1]]
    after = [e for e in before[makers[-1] + 1:] if e["class_name"] not in _PASS_THROUGH]
    if maker["class_name"] == "Masking" and not after:
        value = maker["config"].get("mask_value", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config: the Masking layer {maker['name']!r} has mask_value {value!r}, not a number: "
                             f"corrupt file")
        return value, None
    keras2 = keras_version.startswith(("1", "2"))
    keeps, drops = (_KEEP_MASK, _DROP_MASK | _KERAS3_KEEP_MASK) if keras2 else (_KEEP_MASK | _KERAS3_KEEP_MASK,
                                                                              _DROP_MASK)
    if any(e["class_name"] in drops for e in after):
        return None, None
    unknown = [e["name"] for e in after if e["class_name"] not in keeps]
    if maker["class_name"] == "Embedding":
        made = "makes the mask from the token ids (mask_zero): pass mask=tokens != 0"
    elif maker["class_name"] == "Lambda":
        made = "makes a mask with its own function (mask=): pass that mask"
    else:
        made = (f"makes the mask from its input and {[e['name'] for e in after]} follow it: pass mask=(x != "
                f"{maker['config'].get('mask_value', 0.0)}).any(-1) of that layer's input x")
    dropped = (f" (if {unknown} drop Keras' mask, as layers without supports_masking do, the LSTMs get none: pass "
               f"the full lengths)" if unknown else "")
    return None, f"the model's {maker['class_name']} layer {maker['name']!r} {made}, or lengths={dropped}"


def _keras_output_width(layer: KerasRNN) -> Optional[int]:
    """The width of a Keras layer's outputs (None for a Bidirectional pair, merge_mode None)."""
    width = layer.lstm.hidden_size
    if not layer.lstm.bidirectional:
        return width
    return {"concat": 2 * width, None: None}.get(layer.merge_mode, width)


def load_keras(path: str, layers: Union[str, Sequence[str], None] = None) -> LSTMStack:
    """The LSTM layers of a Keras file (``.keras``, ``.weights.h5``, Keras 2 ``.h5``, or tf-keras' SavedModel
    folder, ``save_weights`` or ``tf.train.Checkpoint`` checkpoint) as a ready module, in one call (HDF5 files need h5py). Call
    it as ``module(x [B, T, D], mask=None | lengths=None)``; it returns ``(output, (h_n, c_n))`` with the last layer's output as Keras gives it."""
    return keras_to_module(read_keras_weights(path), read_keras_config(path), layers)


def _keras_layers(module: nn.Module) -> list[tuple[Optional[str], LSTM, int]]:
    """(Keras layer name or None for Keras' default, LSTM, layer index in it) of every layer of a module."""
    if isinstance(module, LSTMStack):
        return [layer for sub in module.layers for layer in _keras_layers(sub)]
    if isinstance(module, KerasRNN):
        return [(module.name, module.lstm, 0)]
    if isinstance(module, LSTM):
        return [(None, module, k) for k in range(module.num_layers)]
    raise ValueError(f"module: expected an LSTMStack, KerasRNN or triton_lstm.LSTM, got {type(module).__name__}")


def module_to_keras(module: nn.Module) -> dict:
    """Keras weights ``{"<layer>/kernel", "<layer>/recurrent_kernel", "<layer>/bias"}`` (Bidirectional:
    ``<layer>/forward/...``, ``<layer>/backward/...``; pass them to ``set_weights`` in that order) of a
    module from ``keras_to_module``, or a triton_lstm.LSTM (layers named lstm, lstm_1, ... or
    bidirectional, bidirectional_1, ...). Run-time forget bias is folded into the bias."""
    layers, taken = [], set()
    for name, lstm, k in _keras_layers(module):
        if name is None:  # Keras' names: the first lstm, then lstm_1, ... (bidirectional likewise)
            base = "bidirectional" if lstm.bidirectional else "lstm"
            name = next(n for n in (base + (f"_{i}" if i else "") for i in range(len(taken) + 1)) if n not in taken)
        if name in taken:
            raise ValueError(f"module: two layers are named {name!r}")
        taken.add(name)
        layers.append((name, lstm, k))
    out = {}
    for name, lstm, k in layers:
        lstm.check_stored_weights("module_to_keras")
        if lstm.cell_clip is not None or lstm.proj_clip is not None:
            raise ValueError(f"module: Keras' LSTM has no cell_clip or proj_clip (layer {name!r})")
        for direction, suffix in ((("forward/", f"_l{k}"), ("backward/", f"_l{k}_reverse")) if lstm.bidirectional
                                  else (("", f"_l{k}"),)):
            weights = torch_lstm_to_keras(lstm.state_dict(), suffix, lstm.forget_bias)
            if not lstm.bias and lstm.forget_bias == 0:
                del weights["bias"]  # a use_bias=False layer
            out.update({f"{name}/{direction}{w}": v for w, v in weights.items()})
    return out
