"""``LSTM``: ``torch.nn.LSTM`` itself, extended with TF's LSTMCell options and run on the kernels."""
from __future__ import annotations

import itertools
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from triton_lstm.activations import Activation, resolve_activation, resolve_recurrent_activation
from triton_lstm.checks import (DTypeError, Names, ShapeError, as_number, check_clip, check_forget_bias,
                                check_stored_weights, shape_of)
from triton_lstm.cpu import block_vector, traced_or_vmapped
from triton_lstm.functional import autocast_alike, autocast_dtype
from triton_lstm.higher_order import forward_mode
from triton_lstm.launch import kernels_run_on
from triton_lstm.sequence import named_sequence

Tensor = torch.Tensor
PEEPHOLES = ("f", "i", "o")


def _onednn_has_bfloat16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)   # absent without oneDNN
    return check is not None and bool(check())


# The autocast dtypes oneDNN has no LSTM for on this CPU: float16 always, bfloat16 without the AVX-512
# instructions its bfloat16 kernels need (nn.LSTM's forward under such autocast fails there).
ONEDNN_LSTM_MISSING = frozenset({torch.float16} | (set() if _onednn_has_bfloat16() else {torch.bfloat16}))
# The input dtypes nn.LSTM runs on oneDNN on this CPU (others run aten's loop, under any autocast).
ONEDNN_LSTM_INPUTS = frozenset({torch.float32} | ({torch.bfloat16} if _onednn_has_bfloat16() else set()))

# How errors name the input and the state: nn.LSTM's forward(input, hx=(h_0, c_0)).
NAMES = Names("input", "h_0", "c_0")


def reverse_within_lengths(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Time-major x [T, B, F] with each row's first length[b] steps reversed (padding stays put)."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    lens = lengths.to(x.device)[None, :]
    index = torch.where(t < lens, lens - 1 - t, t)
    return x.gather(0, index[:, :, None].expand(-1, -1, x.shape[2]))


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` (a subclass: same constructor, parameters, state dict, inputs, outputs, errors)
    with TF LSTMCell extras: ``use_peepholes``, ``cell_clip``, ``proj_clip``, ``forget_bias`` (default 0,
    as torch), ``activation`` and Keras' ``recurrent_activation`` (the gates'; default sigmoid).
    ``proj_size`` may also be >= ``hidden_size`` here.

    Peephole weights are extra parameters ``w_f_diag_l{k}``, ``w_i_diag_l{k}``, ``w_o_diag_l{k}`` [H]
    (``_reverse`` for the backward direction). CUDA tensors run the persistent kernels. Where the
    kernels do not run (CPU without Triton's interpreter, float64), a configuration that nn.LSTM
    computes runs nn.LSTM's own forward (on the CPU also with a forget bias in float32 and float64,
    added to its biases for the call; with hx, if given, in the input's dtype (or one autocast casts
    alike) and on its device; on the CPU, unless traced, vmapped, packed with lengths that differ
    and gradients wanted, or under a float16 autocast oneDNN has no LSTM for: ``forward``), and any
    other ``lstm_sequence``: on the CPU its CPU path (``triton_lstm.cpu``), float64 on CUDA and
    custom activations the plain-PyTorch reference.
    ``c_n`` comes back in the input's dtype, as nn.LSTM's (under CPU autocast, where LSTM runs in
    place of nn.LSTM's packed path, in nn.LSTM's dtypes there); inside, the cell state is float32
    for half inputs, and a float32 ``c_0`` with half inputs (which nn.LSTM refuses) gives a float32
    ``c_n`` outside autocast, so that a sequence run in chunks keeps its cell state unrounded.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, use_peepholes: bool = False,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None, forget_bias: float = 0.0,
                 activation: Activation = "tanh", recurrent_activation: Activation = "sigmoid") -> None:
        input_size, hidden_size, num_layers, dropout, proj_size = (
            as_number(v) for v in (input_size, hidden_size, num_layers, dropout, proj_size))
        wide = (isinstance(proj_size, int) and isinstance(hidden_size, int) and not isinstance(proj_size, bool)
                and proj_size >= hidden_size > 0)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0 if wide else proj_size, device, dtype)
        if not isinstance(use_peepholes, bool):
            raise TypeError(f"use_peepholes should be of type bool, got: {type(use_peepholes).__name__}")
        resolve_activation(activation)
        resolve_recurrent_activation(recurrent_activation)
        factory = dict(device=device, dtype=dtype)
        if wide:
            self._widen_projection(proj_size, factory)
        if proj_clip is not None and self.proj_size == 0:
            raise ValueError("proj_clip: only meaningful with proj_size > 0")
        self.use_peepholes = use_peepholes
        self.cell_clip, self.proj_clip = check_clip("cell_clip", cell_clip), check_clip("proj_clip", proj_clip)
        self.forget_bias = check_forget_bias(forget_bias)
        self.activation, self.recurrent_activation = activation, recurrent_activation
        if use_peepholes:
            for suffix in self._suffixes():
                for gate in PEEPHOLES:
                    self.register_parameter(f"w_{gate}_diag{suffix}",
                                            nn.Parameter(torch.empty(hidden_size, **factory)))
        if wide or use_peepholes:
            self.reset_parameters()
        self.flatten_parameters()  # nn.LSTM's constructor did, before the options were known

    def flatten_parameters(self) -> None:
        """nn.LSTM's: packs the weights into cuDNN's flat buffer (CUDA only), which nothing but
        nn.LSTM's own forward reads; that runs only the cells it computes (``computes_torch_lstm``),
        so other cells skip it (a projection at least as wide as the cell is none cuDNN takes). So do
        weights torch.func substituted (``functional_call`` under ``grad`` or ``vmap``): they have no
        storage to pack."""
        if "recurrent_activation" not in self.__dict__ or not self.computes_torch_lstm():
            return  # (nn.LSTM's constructor calls this before the options are set)
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        if any(isinstance(w, Tensor) and wrapped(w) for w in self._flat_weights):
            return
        super().flatten_parameters()

    def _suffixes(self) -> list[str]:
        """'_l0', '_l0_reverse', ... in nn.LSTM's layer order."""
        return [names[0][len("weight_ih"):] for names in self._all_weights]

    def _widen_projection(self, proj_size: int, factory: dict) -> None:
        """nn.LSTM builds a projection only below hidden_size: a wider one is added here, with the
        shapes and names nn.LSTM gives its own (weight_hr_l{k} [P, H], weight_hh [4H, P])."""
        H = self.hidden_size
        directions = 2 if self.bidirectional else 1
        self.proj_size = proj_size
        for k, (names, suffix) in enumerate(zip(self._all_weights, self._suffixes())):
            if k >= directions:
                setattr(self, f"weight_ih{suffix}", nn.Parameter(torch.empty(4 * H, proj_size * directions, **factory)))
            setattr(self, f"weight_hh{suffix}", nn.Parameter(torch.empty(4 * H, proj_size, **factory)))
            setattr(self, f"weight_hr{suffix}", nn.Parameter(torch.empty(proj_size, H, **factory)))
            names.append(f"weight_hr{suffix}")
        self._flat_weights_names = [name for names in self._all_weights for name in names]
        self._init_flat_weights()

    def computes_torch_lstm(self) -> bool:
        """True when the options are exactly what torch.nn.LSTM computes (none of TF's extras)."""
        return self.forget_bias == 0 and self._torch_lstm_but_forget_bias()

    def _torch_lstm_but_forget_bias(self) -> bool:
        """True when nn.LSTM computes this cell with the forget bias added to its bias."""
        return (not self.use_peepholes and self.cell_clip is None and self.proj_clip is None
                and self.proj_size < self.hidden_size
                and resolve_activation(self.activation)[0] == "tanh"
                and resolve_recurrent_activation(self.recurrent_activation)[0] == "sigmoid")

    def check_stored_weights(self, what: str) -> None:
        """A ValueError (its message starting with ``what``) if a weight is computed from other parameters
        (pruned or parametrized): what reads the weights by name, as a copy or export does, would miss
        them."""
        check_stored_weights(self, self._flat_weights_names, what)

    def to_torch_lstm(self) -> nn.LSTM:
        """This module as a plain ``torch.nn.LSTM`` sharing its parameters (not copies), for tools that
        take only nn.LSTM itself: ``torch.ao.quantization.quantize_dynamic``, the ONNX exporter,
        TorchScript. Only for the cells nn.LSTM computes (``computes_torch_lstm``); any other is a
        ValueError naming the options nn.LSTM lacks."""
        if not self.computes_torch_lstm():
            extras = self._tf_options() + ([f"proj_size={self.proj_size} >= hidden_size"]
                                           if self.proj_size >= self.hidden_size else [])
            raise ValueError(f"to_torch_lstm: nn.LSTM cannot compute this cell ({', '.join(extras)})")
        self.check_stored_weights("to_torch_lstm")
        plain = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                        float(self.dropout), self.bidirectional, self.proj_size, device="meta")
        for name in self._flat_weights_names:
            setattr(plain, name, getattr(self, name))
        plain.flatten_parameters()
        return plain.train(self.training)

    def __prepare_scriptable__(self) -> nn.LSTM:
        """torch.jit.script compiles nn.LSTM, not this module's Python: a cell nn.LSTM computes is
        scripted as that nn.LSTM (``to_torch_lstm``), any other is an error, and so are forward hooks
        (that nn.LSTM would not carry them; an nn.LSTM with them fails to script too)."""
        try:
            torch_lstm = self.to_torch_lstm()
        except ValueError as e:
            raise RuntimeError(f"torch.jit.script: TorchScript runs a triton_lstm.LSTM only as nn.LSTM: {e}. "
                               f"Use torch.compile or torch.export") from None
        if self._forward_hooks or self._forward_pre_hooks:
            raise RuntimeError("torch.jit.script: this LSTM has forward hooks or pre-hooks, which TorchScript "
                               "cannot run with nn.LSTM's scripted forward (nor can nn.LSTM). Remove them, or "
                               "use torch.compile or torch.export")
        return torch_lstm

    # -- torch's argument checks, raising errors that are both nn.LSTM's and ours ---------------------
    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        try:
            super().check_input(input, batch_sizes)
        except RuntimeError as e:
            raise ShapeError(f"{e} (input: shape {shape_of(input)}, batch_first={self.batch_first})") from None
        except ValueError as e:  # the input's dtype: nn.LSTM's ops raise RuntimeError for it (packed input)
            raise DTypeError(str(e)) from None
        weight = self._flat_weights[0]
        if not autocast_alike(input.dtype, weight.dtype, input.device):
            raise DTypeError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}), "
                             f"which torch.autocast does not cast alike (it leaves float64 as it is). Convert "
                             f"input: input.to({weight.dtype}), or convert model: model.to({input.dtype})")

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if hx.size() != expected_hidden_size:
            raise ShapeError(msg.format(expected_hidden_size, list(hx.size()))
                             + " (hx = (h_0 [num_layers * num_directions, batch, proj_size or hidden_size], "
                             f"c_0 [num_layers * num_directions, batch, hidden_size]), batch_first={self.batch_first})")

    # -- forward --------------------------------------------------------------------------------------
    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[tuple[Tensor, Tensor]] = None):
        """As nn.LSTM: input [T, B, D] ([B, T, D] with batch_first, [T, D] unbatched, or a
        PackedSequence); hx = (h_0 [L*dirs, B, P], c_0 [L*dirs, B, H]). Returns (output, (h_n, c_n))."""
        # nn.LSTM's own forward for its own cells where no kernel runs (on the CPU also with a forget
        # bias, added to its bias: _forward_bias_folded; in float32 and float64, as half precision
        # computes in float32 on the CPU path), except on the CPU a call traced or vmapped
        # (cpu.traced_or_vmapped: the CPU path's loop compiles, exports with T symbolic and vmaps) and
        # a PackedSequence the loop runs faster (_loop_packs_faster). LSTM checks the
        # arguments first, so that they raise LSTM's errors whichever path runs (nn.LSTM's forward does
        # not check a PackedSequence); hx in another dtype or on another device than the input takes
        # LSTM's path, whose checks name the tensor (and which takes a float32 c_0 for half inputs),
        # but under autocast hx in a dtype it casts alike takes nn.LSTM's. Under CPU float16 autocast
        # (bfloat16 too on a CPU without oneDNN's bfloat16: ONEDNN_LSTM_MISSING) nn.LSTM's forward fails
        # where it runs oneDNN (no projection, input in ONEDNN_LSTM_INPUTS not packed with differing
        # lengths): LSTM's path there. Forward-mode AD takes LSTM's path, whose layers then run the
        # reference (oneDNN's LSTM has no forward mode).
        self._check_hx_pair(hx)
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        on_cpu = isinstance(data, Tensor) and data.device.type == "cpu"
        cast = autocast_dtype(data.device) if on_cpu else None
        torch_cell = (isinstance(data, Tensor) and not kernels_run_on(data.device, data.dtype)
                      and self._torch_lstm_but_forget_bias()
                      and (self.forget_bias == 0
                           or (on_cpu and self.bias and data.dtype in (torch.float32, torch.float64)))
                      and (hx is None or all(t.device == data.device and autocast_alike(t.dtype, data.dtype, t.device)
                                             for t in hx)))
        onednn_fails = (cast in ONEDNN_LSTM_MISSING and not self.proj_size
                        and data.dtype in ONEDNN_LSTM_INPUTS
                        and not (packed and bool(input.batch_sizes[0] != input.batch_sizes[-1])))
        if torch_cell and not forward_mode(itertools.chain((data,), hx or (), self.parameters())) \
                and not (on_cpu and (traced_or_vmapped() or onednn_fails or self._loop_packs_faster(input, hx))):
            if packed:
                self._check_packed(input, hx)
            else:
                self._time_major(input, hx)
            return super().forward(input, hx) if self.forget_bias == 0 else self._forward_bias_folded(input, hx)
        self._update_flat_weights()
        x, lengths, hx, unbatched = self._time_major(input, hx)
        output, h_n, c_n = self._run_layers(x, lengths, hx)
        if torch_cell and packed and cast is not None:
            # In place of nn.LSTM's packed path under CPU autocast, its dtypes there: autocast casts
            # its products, and its cell state (and without a projection its output) follows type
            # promotion with c_0's dtype.
            kept = torch.promote_types(cast, (data if hx is None else hx[1]).dtype)
            c_n = c_n.to(kept)
            if not self.proj_size:
                output, h_n = output.to(kept), h_n.to(kept)
        elif (hx is not None and hx[1].dtype == torch.float32 and data.dtype in (torch.float16, torch.bfloat16)
              and autocast_dtype(data.device) is None):
            c_n = c_n.to(torch.float32)  # a float32 c_0 (nn.LSTM refuses it) carries on as one, unrounded
        else:
            c_n = c_n.to(output.dtype)
        if isinstance(input, PackedSequence):
            order = input.sorted_indices
            padded = output if order is None else output.index_select(1, order)
            # Packed data is the padded output's rows within each step's batch size, step after step
            # (as pack_padded_sequence packs them, which has no forward-mode derivative); their indices
            # are found on the host, where batch_sizes is (no wait for the device).
            sizes = input.batch_sizes
            rows = (torch.arange(padded.shape[1]) < sizes[:, None]).flatten().nonzero().squeeze(1)
            data = padded.flatten(0, 1).index_select(0, rows.to(padded.device))
            return PackedSequence(data, sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
        if unbatched:
            return output[:, 0], (h_n[:, 0], c_n[:, 0])
        return (output.transpose(0, 1) if self.batch_first else output), (h_n, c_n)

    def _forward_bias_folded(self, input, hx):
        """nn.LSTM's forward with the forget bias added to every bias_ih, which is this cell: run on a
        shallow copy of the module that holds those weights, so that the module (and other threads
        running it) keep their own."""
        self._update_flat_weights()
        folded = object.__new__(type(self))
        folded.__dict__.update(self.__dict__)
        forget = (0.0, self.forget_bias, 0.0, 0.0)
        folded._flat_weights = [w + block_vector(self.hidden_size, forget, w) if name.startswith("bias_ih") else w
                                for name, w in zip(self._flat_weights_names, self._flat_weights)]
        # nn.LSTM's forward would take them again from the parameters where it thinks they changed
        # (always, for parametrized ones): this module's were brought up to date above.
        folded._update_flat_weights = lambda: None
        return nn.LSTM.forward(folded, input, hx)

    @staticmethod
    def _check_hx_pair(hx) -> None:
        """hx is None or two tensors (h_0, c_0)."""
        if hx is None:
            return
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = f"a tuple of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise ShapeError(f"lstm expects two hidden states: hx = (h_0, c_0), got {got}")
        for name, t in zip(("h_0", "c_0"), hx):
            if not isinstance(t, Tensor):
                raise TypeError(f"hx: expected two tensors (h_0, c_0), got {type(t).__name__} for {name}")

    def _check_packed(self, input: PackedSequence, hx) -> None:
        """nn.LSTM's checks of a PackedSequence and hx (a pair: ``_check_hx_pair``), raising LSTM's errors."""
        self.check_input(input.data, input.batch_sizes)
        if hx is not None:
            self.check_forward_args(input.data, hx, input.batch_sizes)

    def _loop_packs_faster(self, input, hx) -> bool:
        """Whether the CPU path's loop runs this PackedSequence faster than aten's packed LSTM: when
        the lengths differ and gradients are wanted. The loop skips the rows past their length; aten,
        without oneDNN for packed input, pays for them in its backward.

        NOTE: measured at T=200, B=4-64, H=32-512 (2 cores): with differing lengths, forward and
        backward took 0.46-0.77x of aten's time on the loop, but the forward alone 1.0-1.7x; equal
        lengths took 1.1-15x (B=1 and small H the most: the loop's per-step overhead).
        """
        if not isinstance(input, PackedSequence):
            return False
        sizes = input.batch_sizes
        tensors = [input.data, *self.parameters(), *(hx or ())]
        wants_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)
        return wants_grad and bool(sizes[0] != sizes[-1])

    def _time_major(self, input, hx):
        """Checks as nn.LSTM does (hx a pair: ``_check_hx_pair``); returns (x [T, B, D] in the caller's
        batch order, lengths or None, hx [L*dirs, B, ...] or None, unbatched)."""
        if isinstance(input, PackedSequence):
            self._check_packed(input, hx)
            x, lengths = pad_packed_sequence(input)
            return x, lengths.to(x.device), hx, False
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        unbatched = input.dim() == 2
        batch_dim = 0 if self.batch_first else 1
        batched = input.unsqueeze(batch_dim) if unbatched else input
        if hx is None:
            self.check_input(batched, None)
        else:
            rank = 2 if unbatched else 3
            if hx[0].dim() != rank or hx[1].dim() != rank:
                shape = "unbatched 2-D" if unbatched else "batched 3-D"
                raise ShapeError(f"For {shape} input, hx and cx should also be {rank}-D but got "
                                 f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if unbatched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self.check_forward_args(batched, hx, None)
        x = batched.transpose(0, 1) if self.batch_first else batched
        if x.shape[0] == 0:
            raise ShapeError("Expected sequence length to be larger than 0 in RNN")
        return x, None, hx, unbatched

    def _run_layers(self, x: Tensor, lengths: Optional[Tensor], hx) -> tuple[Tensor, Tensor, Tensor]:
        """Every layer and direction with lstm_sequence: (output [T, B, dirs * P], h_n, c_n as
        lstm_sequence returns it: float32 for half inputs)."""
        T, B, _ = x.shape
        directions = 2 if self.bidirectional else 1
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        if hx is None:
            L = self.num_layers * directions
            c_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            hx = (x.new_zeros(L, B, P), x.new_zeros(L, B, H, dtype=c_dtype))
        h0, c0 = hx
        h_n, c_n = [], []
        suffixes = self._suffixes()
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(directions):
                k = layer * directions + d
                w_x, w_h, bias, peepholes, proj = self._layer_weights(suffixes[k])
                seq = layer_in if d == 0 else reverse_within_lengths(layer_in, lengths)
                out, h_T, c_T = named_sequence(NAMES, seq, h0[k], c0[k], w_x, w_h, bias, *peepholes, proj, lengths,
                                               forget_bias=self.forget_bias, cell_clip=self.cell_clip,
                                               proj_clip=self.proj_clip, activation=self.activation,
                                               recurrent_activation=self.recurrent_activation, gate_order="torch")
                outs.append(out if d == 0 else reverse_within_lengths(out, lengths))
                h_n.append(h_T)
                c_n.append(c_T)
            layer_in = torch.cat(outs, dim=2) if directions == 2 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        return layer_in, torch.stack(h_n), torch.stack(c_n)

    def _layer_weights(self, suffix: str):
        """Weights of one layer and direction in TF's orientation and torch's gate order (i, f, g, o):
        (w_x [D, 4H], w_h [P, 4H], bias [4H], peepholes, proj). nn.LSTM's own weights as the forward's
        ``_update_flat_weights`` left them, so that a parametrized one is computed once a call, as
        nn.LSTM computes it."""
        flat = dict(zip(self._flat_weights_names, self._flat_weights))

        def weight(name: str) -> Tensor:
            return flat[name] if name in flat else getattr(self, name)   # the peepholes, a wide projection

        w_ih, w_hh = weight(f"weight_ih{suffix}"), weight(f"weight_hh{suffix}")
        if self.bias:
            b_ih, b_hh = weight(f"bias_ih{suffix}"), weight(f"bias_hh{suffix}")
            # Half-precision biases are summed in float32: the CPU path computes in it (the kernels
            # round it to the input dtype, as a sum in that dtype was).
            bias = b_ih.float() + b_hh.float() if b_ih.dtype in (torch.float16, torch.bfloat16) else b_ih + b_hh
        else:
            bias = w_ih.new_zeros(4 * self.hidden_size)
        peepholes = tuple(weight(f"w_{g}_diag{suffix}") for g in PEEPHOLES) if self.use_peepholes \
            else (None, None, None)
        proj = weight(f"weight_hr{suffix}").t() if self.proj_size else None
        return w_ih.t(), w_hh.t(), bias, peepholes, proj

    def _tf_options(self) -> list[str]:
        """``name=value`` of the TF options that differ from their defaults; an activation by its name
        when it is a known one (``torch.tanh`` is 'tanh', the default)."""
        act = resolve_activation(self.activation)[0] or self.activation
        gate = resolve_recurrent_activation(self.recurrent_activation)[0] or self.recurrent_activation
        options = [("use_peepholes", self.use_peepholes, False), ("cell_clip", self.cell_clip, None),
                   ("proj_clip", self.proj_clip, None), ("forget_bias", self.forget_bias, 0.0),
                   ("activation", act, "tanh"), ("recurrent_activation", gate, "sigmoid")]
        return [f"{name}={value!r}" for name, value, default in options if value != default]

    def extra_repr(self) -> str:
        """nn.LSTM's, then the TF options that differ from their defaults."""
        return super().extra_repr() + "".join(f", {option}" for option in self._tf_options())
