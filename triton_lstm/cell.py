"""``LSTMCell``: TF's ``tf.compat.v1.nn.rnn_cell.LSTMCell`` as a torch module on the fused kernels."""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import nn

from triton_lstm.activations import Activation, resolve_activation
from triton_lstm.checks import (FLOAT_DTYPES, DTypeError, Names, ShapeError, check_clip, check_forget_bias,
                                check_int, check_scope, check_stored_weights, check_tensor, shape_of)
from triton_lstm.convert import as_array, as_tensor, keras_as_tf_variables
from triton_lstm.functional import autocast_alike, named_cell

Tensor = torch.Tensor
_LAZY_BUILD = threading.Lock()   # held while a lazily built cell builds at its first call

_DTYPE_NAMES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
                "float32": torch.float32, "float": torch.float32, "float64": torch.float64,
                "double": torch.float64}


class LSTMStateTuple(NamedTuple):
    """TF's state tuple, in TF's order: cell state first, then the output h."""
    c: Any
    h: Any

    @property
    def dtype(self) -> torch.dtype:
        """The state's dtype: h's (a half-precision state keeps c in float32, where TF's LSTMStateTuple
        would raise for c and h in different dtypes)."""
        return self.h.dtype


# torch.export.save writes a program's output structure by type name: a namedtuple needs one.
torch.utils._pytree._register_namedtuple(LSTMStateTuple, serialized_type_name="triton_lstm.LSTMStateTuple")


def as_dtype(name: str, dtype: Union[str, torch.dtype, np.dtype, type, None]) -> Optional[torch.dtype]:
    """A torch dtype from a torch dtype, its name or a numpy dtype (``np.float32``, an array's
    ``.dtype``), as TF takes them; ``name`` is the argument's, for the error."""
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        dtype = _DTYPE_NAMES[dtype]
    elif isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.floating)):
        dtype = _DTYPE_NAMES.get(np.dtype(dtype).name, dtype)
    if dtype is None or dtype in FLOAT_DTYPES:
        return dtype
    raise TypeError(f"{name}: expected None, a floating dtype {FLOAT_DTYPES} (or its numpy dtype) or one of "
                    f"{sorted(_DTYPE_NAMES)}, got {dtype!r}")


def _tf_name(key: str) -> str:
    """'rnn/lstm_cell/projection/kernel:0' -> 'projection/kernel'; '.../w_f_diag' -> 'w_f_diag'."""
    parts = key.split(":")[0].split("/")
    if len(parts) >= 2 and parts[-2] == "projection":
        return "projection/" + parts[-1]
    return parts[-1]


class LSTMCell(nn.Module):
    """TF's LSTMCell (peepholes, cell clip, LSTMP projection and its clip, forget bias, activation).

    Parameters carry TF's names and layouts: ``kernel`` [D + P, 4N] (rows: inputs then m_prev;
    gate columns i, j, f, o), ``bias`` [4N], ``w_f_diag``/``w_i_diag``/``w_o_diag`` [N] with
    peepholes, ``projection_kernel`` [N, P] (TF's ``projection/kernel``) with ``num_proj``.

    ``input_size`` may be omitted: the weights are then created at the first call (as TF builds
    them), in the inputs' dtype unless ``dtype`` chose one (or ``.to()``, ``.double()`` ... changed it
    before that call); create the optimizer after that call. With fp16/bf16 weights the cell state in
    a state tuple stays float32.
    """

    trainable: bool = True      # TF's keyword argument (a class default for cells pickled before it)

    def __init__(self, num_units: int, use_peepholes: bool = False, cell_clip: Optional[float] = None,
                 initializer: Optional[Callable[[Tensor], Any]] = None, num_proj: Optional[int] = None,
                 proj_clip: Optional[float] = None, num_unit_shards: Optional[int] = None,
                 num_proj_shards: Optional[int] = None, forget_bias: float = 1.0, state_is_tuple: bool = True,
                 activation: Activation = None, reuse: Any = None, name: Optional[str] = None,
                 dtype: Union[str, torch.dtype, None] = None, *, input_size: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, **kwargs: Any) -> None:
        super().__init__()
        # TF's **kwargs are a Layer's common attributes: trainable is one a cell means something by.
        trainable = kwargs.pop("trainable", True)
        if kwargs:
            raise TypeError(f"LSTMCell: unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(trainable, bool):
            raise TypeError(f"trainable: expected a bool, got {trainable!r}")
        check_scope(name, "name")
        num_units = check_int("num_units", num_units, 1)
        num_proj = check_int("num_proj", num_proj, 1, none_ok=True)
        input_size = check_int("input_size", input_size, 1, none_ok=True)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer: expected a callable that fills a tensor in place (or returns its "
                            f"values), got {initializer!r}")
        # Warnings users see (a DeprecationWarning raised in a library is hidden by default).
        for arg, value in (("num_unit_shards", num_unit_shards), ("num_proj_shards", num_proj_shards)):
            if check_int(arg, value, 1, none_ok=True) not in (None, 1):
                warnings.warn(f"{arg}={value}: the weight is one tensor here, not {value} TF partitions "
                              f"(tf_weights writes it whole; checkpoints of partitioned variables are read whole)",
                              UserWarning, stacklevel=2)
        if reuse not in (None, False):
            warnings.warn(f"reuse={reuse!r}: variables are never shared by name or scope here; to share "
                          f"weights, call the same cell", UserWarning, stacklevel=2)
        self.num_units = num_units
        self.use_peepholes = bool(use_peepholes)
        self.cell_clip = check_clip("cell_clip", cell_clip)
        self.num_proj = num_proj
        self.proj_clip = check_clip("proj_clip", proj_clip)
        if self.proj_clip is not None and num_proj is None:
            warnings.warn("proj_clip has no effect without num_proj (TF ignores it then too)", UserWarning,
                          stacklevel=2)
            self.proj_clip = None
        self.forget_bias = check_forget_bias(forget_bias)
        self.state_is_tuple = bool(state_is_tuple)
        resolve_activation(activation)
        self.activation = activation
        self.initializer = initializer
        self.name = name
        self.trainable = trainable
        # Where and in which dtype the weights will be built: a tensor, so that .to(), .double() or
        # .cuda() on a cell not built yet move it as they would move the weights.
        dtype = as_dtype("dtype", dtype)
        self.register_buffer("weights_like", torch.zeros(0, device=device, dtype=dtype or torch.get_default_dtype()),
                             persistent=False)
        # Without a dtype, a cell built at its first call takes the inputs' dtype (TF: "None means use
        # the type of the first input"), unless .to() changed it before (a .to() to the default dtype
        # leaves it unchanged, and so unchosen).
        self._dtype_from_inputs = None if dtype is not None else self.weights_like.dtype
        self.input_size: Optional[int] = None
        if input_size is not None:
            self.build(input_size)

    # -- sizes, TF's API ---------------------------------------------------------------------
    @property
    def output_size(self) -> int:
        return self.num_proj if self.num_proj is not None else self.num_units

    @property
    def state_size(self) -> Union[LSTMStateTuple, int]:
        if self.state_is_tuple:
            return LSTMStateTuple(self.num_units, self.output_size)
        return self.num_units + self.output_size

    def build(self, input_size: int) -> None:
        """Create the parameters for inputs of width ``input_size`` with TF's default initialisation."""
        if self.input_size is not None:
            raise RuntimeError(f"LSTMCell is already built for input_size {self.input_size}")
        N, P, D = self.num_units, self.output_size, check_int("input_size", input_size, 1)
        with torch.inference_mode(False):  # a first call under inference_mode: weights that can still train
            self._make_weights(N, P, D)
        self.input_size = D     # last: a cell with an input_size has its weights

    def _make_weights(self, N: int, P: int, D: int) -> None:
        fac = dict(device=self.weights_like.device, dtype=self.weights_like.dtype)
        self.kernel = nn.Parameter(torch.empty(D + P, 4 * N, **fac))
        self.bias = nn.Parameter(torch.zeros(4 * N, **fac))
        if self.use_peepholes:
            self.w_f_diag = nn.Parameter(torch.empty(N, **fac))
            self.w_i_diag = nn.Parameter(torch.empty(N, **fac))
            self.w_o_diag = nn.Parameter(torch.empty(N, **fac))
        if self.num_proj is not None:
            self.projection_kernel = nn.Parameter(torch.empty(N, P, **fac))
        self.requires_grad_(self.trainable)
        self.reset_parameters()

    def check_inputs(self, inputs: Tensor) -> Tensor:
        """Check ``inputs`` [..., D] of a call against the cell; at the first call of a cell without
        weights, build it for their width and, without a dtype chosen, their dtype (once, also when
        threads make their first calls together: ``build`` sets input_size last). Returns the kernel,
        read once for the call (a parametrized one is computed at each read)."""
        if self.input_size is None:
            if inputs.shape[-1] < 1:
                raise ValueError(f"inputs: expected a last dimension >= 1 to build the cell for (its input_size), "
                                 f"got shape {shape_of(inputs)}")
            with _LAZY_BUILD:
                if self.input_size is None:
                    if self.weights_like.dtype == self._dtype_from_inputs and inputs.dtype in FLOAT_DTYPES:
                        self.weights_like = self.weights_like.to(inputs.dtype)
                    self.build(inputs.shape[-1])
        if inputs.shape[-1] != self.input_size:
            raise ValueError(f"inputs: expected last dimension {self.input_size} (the cell's input_size), "
                             f"got shape {shape_of(inputs)}")
        kernel = self.kernel
        if not autocast_alike(inputs.dtype, kernel.dtype, inputs.device):
            raise DTypeError(f"inputs: dtype {inputs.dtype} differs from the cell's weights ({kernel.dtype}); "
                            f"convert the inputs or the cell (cell.to({inputs.dtype}))")
        return kernel

    def reset_parameters(self) -> None:
        """TF defaults: glorot uniform over each whole variable, zero bias; ``initializer`` replaces
        glorot. TF gives a vector [N] the fans (N, N): the peepholes take the diagonal of an [N, N]
        matrix so initialised, so that matrix initializers (xavier, kaiming) work on them as in TF."""
        with torch.no_grad():
            for name, p in self._initialised_weights():
                if p.dim() == 1:
                    matrix = p.new_zeros(p.shape[0], p.shape[0])
                    p.copy_(self._initialised(matrix, name).diagonal())
                else:
                    self._initialised(p, name)
            self.bias.zero_()

    def _initialised(self, weight: Tensor, name: str) -> Tensor:
        """``weight`` filled by the initializer, in place or from the tensor it returns (as TF's
        initializers do); one that leaves any of it unset (NaN here) is an error."""
        if self.initializer is None:
            return nn.init.xavier_uniform_(weight)
        weight.fill_(float("nan"))
        try:
            out = self.initializer(weight)
        except TypeError as e:
            raise TypeError(f"initializer: failed on {name} (a tensor of shape {tuple(weight.shape)}): {e}; expected "
                            f"a callable that fills the tensor it is given in place (as torch.nn.init's do) or "
                            f"returns its values; wrap a TF-style initializer(shape, dtype) as "
                            f"lambda w: init(tuple(w.shape))") from e
        if out is not None and not isinstance(out, Tensor) and hasattr(out, "__array__"):
            out = torch.as_tensor(np.asarray(out))     # numpy values, or a TF tensor
        if out is not None and out is not weight:
            if not isinstance(out, Tensor) or out.shape != weight.shape:
                raise ValueError(f"initializer: returned {shape_of(out) if isinstance(out, Tensor) else out!r} "
                                 f"for {name} of shape {tuple(weight.shape)}; fill the tensor in place or return "
                                 f"one of its shape")
            weight.copy_(out)
        if torch.isnan(weight).any():
            raise ValueError(f"initializer: left {name} (shape {tuple(weight.shape)}) unset or NaN; fill the tensor "
                             f"in place or return one of its shape")
        return weight

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """load_state_dict on a cell not built yet builds it for the kernel's input size first, once
        every weight there has its shape for that size: a shape error leaves the cell unbuilt. (A
        missing weight is torch's error after the build.) An override, not a load_state_dict hook: a
        saved cell then holds no bound method, and torch.load(weights_only=True) needs only the
        class allowed."""
        kernel = state_dict.get(prefix + "kernel")
        if self.input_size is None and isinstance(kernel, Tensor):
            D = self._input_size_of(f"state_dict[{prefix + 'kernel'!r}]", kernel)
            keys = {tf: prefix + attr for tf, attr in self._tf_variables().items()}
            self._check_shapes(D, {tf: (f"state_dict[{key!r}]", state_dict[key]) for tf, key in keys.items()
                                   if isinstance(state_dict.get(key), Tensor)})
            self.build(D)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _build_from_state_dict(self, *args: Any) -> None:
        """Does nothing: a cell saved whole by triton_lstm 0.1.0 holds this bound method as a
        load_state_dict pre-hook (it built the cell then; ``_load_from_state_dict`` does now), and
        unpickling looks it up."""

    def _input_size_of(self, label: str, kernel: Tensor) -> int:
        """input_size from the rows of a kernel [input_size + output size, 4 num_units]."""
        if kernel.dim() != 2 or kernel.shape[0] <= self.output_size:
            raise ShapeError(f"{label}: expected shape [input_size + {self.output_size}, {4 * self.num_units}], "
                             f"got {shape_of(kernel)}")
        return kernel.shape[0] - self.output_size

    def _check_shapes(self, input_size: int, values: dict[str, tuple[str, Tensor]]) -> None:
        """Each TF variable's tensor (``label`` in the error) has its shape for ``input_size``."""
        shapes = self._tf_shapes(input_size)
        for tf, (label, value) in values.items():
            if shape_of(value) != shapes[tf]:
                raise ShapeError(f"{label}: expected shape {shapes[tf]} for TF's {tf!r} (num_units {self.num_units}, "
                                 f"num_proj {self.num_proj}, input_size {input_size}), got {shape_of(value)}")

    def _initialised_weights(self) -> list[tuple[str, nn.Parameter]]:
        names = ["kernel"]
        if self.use_peepholes:
            names += ["w_f_diag", "w_i_diag", "w_o_diag"]
        if self.num_proj is not None:
            names.append("projection_kernel")
        return [(n, getattr(self, n)) for n in names]

    def zero_state(self, batch_size: int, dtype: Union[str, torch.dtype, None] = None,
                   device: Union[str, torch.device, None] = None) -> Union[LSTMStateTuple, Tensor]:
        """Zeros shaped like ``state_size``. With a half dtype the tuple's c is float32."""
        batch_size = check_int("batch_size", batch_size, 0)
        dtype = as_dtype("dtype", dtype) or self._param_dtype()
        device = device if device is not None else self._param_device()
        N, P = self.num_units, self.output_size
        if not self.state_is_tuple:
            return torch.zeros(batch_size, N + P, dtype=dtype, device=device)
        c_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        return LSTMStateTuple(torch.zeros(batch_size, N, dtype=c_dtype, device=device),
                              torch.zeros(batch_size, P, dtype=dtype, device=device))

    def get_initial_state(self, inputs: Optional[Tensor] = None, batch_size: Optional[int] = None,
                          dtype: Union[str, torch.dtype, None] = None):
        """Zero state; batch and dtype come from ``inputs`` when given, else from the arguments."""
        if inputs is not None:
            if not isinstance(inputs, Tensor) or inputs.dim() < 1:
                raise ValueError("inputs: expected a tensor whose first dimension is the batch")
            if batch_size is not None and batch_size != inputs.shape[0]:
                raise ValueError(f"batch_size: {batch_size} disagrees with inputs' batch {inputs.shape[0]}")
            dtype = as_dtype("dtype", dtype)
            if dtype is not None and dtype != inputs.dtype:
                raise ValueError(f"dtype: {dtype} differs from the inputs' dtype {inputs.dtype}; pass one of them")
            return self.zero_state(inputs.shape[0], inputs.dtype, inputs.device)
        if batch_size is None or dtype is None:
            raise ValueError("get_initial_state: pass inputs, or both batch_size and dtype")
        return self.zero_state(batch_size, dtype)

    def _param_dtype(self) -> torch.dtype:
        return self.kernel.dtype if self.input_size is not None else self.weights_like.dtype

    def _param_device(self) -> torch.device:
        return self.kernel.device if self.input_size is not None else self.weights_like.device

    # -- the step ------------------------------------------------------------------------------
    def split_state(self, state: Union[LSTMStateTuple, tuple, Tensor], batch: int,
                    name: str = "state") -> tuple[Tensor, Tensor]:
        """(c, h) from a state in this cell's layout, with its layout and shape checked; errors call it
        ``name`` (the caller's argument)."""
        N, P = self.num_units, self.output_size
        if self.state_is_tuple:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name}: expected an LSTMStateTuple (c, h) since state_is_tuple=True, "
                                f"got {type(state).__name__}")
            c, h = state
            if N != P and all(isinstance(t, Tensor) and t.dim() == 2 for t in state) \
                    and (c.shape[1], h.shape[1]) == (P, N):
                raise ShapeError(f"{name}: c has shape {shape_of(c)} and h {shape_of(h)}, which is (h, c): the "
                                 f"state is LSTMStateTuple(c, h), in TF's order, with c [batch, num_units {N}] "
                                 f"and h [batch, output size {P}]")
            return c, h
        if isinstance(state, (tuple, list)):
            raise TypeError(f"{name}: expected one tensor [batch, num_units + output size] since "
                            f"state_is_tuple=False, got {type(state).__name__}")
        check_tensor(name, state, 2)
        if shape_of(state) != (batch, N + P):
            raise ValueError(f"{name}: expected shape ({batch}, {N + P}) = [batch, num_units + output size] "
                             f"since state_is_tuple=False, got {shape_of(state)}")
        return state[:, :N], state[:, N:]

    def state_names(self, name: str) -> Names:
        """How errors name the inputs and the parts of a state passed as ``name``: ``name.c`` and
        ``name.h`` of a tuple, ``name`` itself for the concatenated tensor."""
        if self.state_is_tuple:
            return Names("inputs", f"{name}.h", f"{name}.c")
        return Names("inputs", name, name)

    def apply(self, *args, **kwargs):
        """``nn.Module.apply(fn)`` given a function, else TF's alias of a call: ``cell.apply(inputs,
        state)`` (or ``inputs=``) is ``cell(inputs, state)``."""
        if args and callable(args[0]) and "inputs" not in kwargs:
            return super().apply(*args, **kwargs)
        return self(*args, **kwargs)

    def forward(self, inputs: Tensor, state=None, scope: Optional[str] = None):
        """One step. inputs [B, D]; state (c [B, N], h [B, P]) or [B, N + P]; returns (output, new state).
        ``scope`` (TF's variable scope) is taken for TF's signature and has no effect: the weights are
        this module's."""
        check_scope(scope)
        check_tensor("inputs", inputs, 2)
        kernel = self.check_inputs(inputs)
        if state is None:
            state = self.zero_state(inputs.shape[0], inputs.dtype, inputs.device)
        c, h = self.split_state(state, inputs.shape[0])
        h_new, c_new = named_cell(self.state_names("state"), inputs, c, h, kernel, self.bias,
                                  *self.peepholes(), self.projection(), forget_bias=self.forget_bias,
                                  cell_clip=self.cell_clip, proj_clip=self.proj_clip, activation=self.activation,
                                  recurrent_activation=None)
        return h_new, self.join_state(c_new, h_new)

    def join_state(self, c: Tensor, h: Tensor) -> Union[LSTMStateTuple, Tensor]:
        """(c, h) in this cell's state layout: the inverse of ``split_state``."""
        if self.state_is_tuple:
            return LSTMStateTuple(c, h)
        return torch.cat([c.to(h.dtype), h], dim=1)

    def peepholes(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        if not self.use_peepholes:
            return None, None, None
        return self.w_f_diag, self.w_i_diag, self.w_o_diag

    def projection(self) -> Optional[Tensor]:
        return self.projection_kernel if self.num_proj is not None else None

    # -- TF checkpoints ---------------------------------------------------------------------------
    def _tf_variables(self) -> dict[str, str]:
        """TF variable name -> attribute name, for the variables this cell has."""
        names = {"kernel": "kernel", "bias": "bias"}
        if self.use_peepholes:
            names.update(w_f_diag="w_f_diag", w_i_diag="w_i_diag", w_o_diag="w_o_diag")
        if self.num_proj is not None:
            names["projection/kernel"] = "projection_kernel"
        return names

    def tf_weights(self, scope: Optional[str] = None) -> dict[str, np.ndarray]:
        """The weights under TF's variable names (``scope/kernel`` ...), as numpy arrays in the cell's
        dtype (bfloat16, which numpy lacks, as float32). ``scope``: by default dynamic_rnn's,
        ``rnn/<the cell's name>`` (``rnn/lstm_cell`` for a cell without one), as TF names them."""
        self._require_built("tf_weights")
        check_scope(scope)
        if scope is None:
            scope = f"rnn/{self.name or 'lstm_cell'}"
        prefix = f"{scope}/" if scope else ""
        return {prefix + tf: as_array(getattr(self, attr))
                for tf, attr in self._tf_variables().items()}

    def load_tf_weights(self, weights: Mapping[str, Any], scope: Optional[str] = None) -> None:
        """Copy TF variables (numpy arrays or tensors) into this cell, matching names by their tail.

        ``rnn/lstm_cell/kernel:0`` and ``kernel`` both fill ``kernel``; optimizer slots such as
        ``.../kernel/Adam`` are ignored. ``scope`` keeps only names that start with it (use it when a
        checkpoint holds several cells). An unbuilt cell takes input_size from the kernel's shape.
        A Keras LSTM's weights (``kernel``, ``recurrent_kernel``, ``bias``) are recognised and converted.
        """
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights: expected a mapping of TF names to arrays, got {type(weights).__name__}")
        check_scope(scope)
        weights = keras_as_tf_variables(weights, scope, self.forget_bias)
        wanted = self._tf_variables()
        # A scope is a whole path prefix: "rnn/lstm_cell" must not also pick "rnn/lstm_cell_1/...".
        prefix = scope.rstrip("/") + "/" if scope else None
        found: dict[str, list[str]] = {}
        for key in weights:
            if not isinstance(key, str):
                raise TypeError(f"weights: keys must be TF variable names (str), got {key!r}")
            if prefix is not None and not key.startswith(prefix):
                continue
            tf = _tf_name(key)
            if tf in ("kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection/kernel"):
                found.setdefault(tf, []).append(key)
        if prefix is not None and not any(k.startswith(prefix) for k in weights):
            raise ValueError(f"scope: no variable of weights is under {prefix!r}; got names {sorted(weights)[:20]}")
        unexpected = sorted(set(found) - set(wanted))
        if unexpected:
            raise ValueError(f"weights: the checkpoint has {unexpected} ({[found[u] for u in unexpected]}) which "
                             f"this cell (use_peepholes={self.use_peepholes}, num_proj={self.num_proj}) lacks")
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise ValueError(f"weights: missing TF variables {missing}; got names {sorted(weights)}")
        ambiguous = {tf: keys for tf, keys in found.items() if len(keys) > 1}
        if ambiguous:
            raise ValueError(f"weights: several variables match {ambiguous}; pass scope= to pick one cell")
        arrays = {tf: as_tensor(weights[keys[0]], f"weights[{keys[0]!r}]").detach() for tf, keys in found.items()}
        D = self.input_size if self.input_size is not None else self._input_size_of("weights['kernel']",
                                                                                       arrays["kernel"])
        # Check every variable before building or copying: a failed load leaves the cell as it was.
        self._check_shapes(D, {tf: (f"weights[{found[tf][0]!r}]", arrays[tf]) for tf in wanted})
        dtype = self.weights_like.dtype if self.input_size is None else self.kernel.dtype
        for tf in wanted:  # in the cell's dtype: a value past its range is infinite there
            arrays[tf] = arrays[tf].to(dtype)
            if not torch.isfinite(arrays[tf]).all():
                raise ValueError(f"weights[{found[tf][0]!r}]: contains NaN or infinite values (in {dtype})")
        if self.input_size is None:
            self.build(D)
        else:  # a weight computed from others (pruned, parametrized) would take the copy and drop it
            check_stored_weights(self, wanted.values(), "load_tf_weights")
        with torch.no_grad():
            for tf, attr in wanted.items():
                getattr(self, attr).copy_(arrays[tf])

    def _tf_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        N, P = self.num_units, self.output_size
        return {"kernel": (input_size + P, 4 * N), "bias": (4 * N,), "w_f_diag": (N,), "w_i_diag": (N,),
                "w_o_diag": (N,), "projection/kernel": (N, P)}

    def _require_built(self, what: str) -> None:
        if self.input_size is None:
            raise RuntimeError(f"{what}: the cell has no weights yet; pass input_size or call it once")

    def extra_repr(self) -> str:
        return (f"num_units={self.num_units}, input_size={self.input_size}, use_peepholes={self.use_peepholes}, "
                f"cell_clip={self.cell_clip}, num_proj={self.num_proj}, proj_clip={self.proj_clip}, "
                f"forget_bias={self.forget_bias}, state_is_tuple={self.state_is_tuple}, "
                f"activation={self.activation!r}")
