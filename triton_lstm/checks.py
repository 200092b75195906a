"""Argument validation shared by the functional ops and the modules. Errors name the argument."""
from __future__ import annotations

import math
import os
from collections.abc import Sized
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ShapeError(RuntimeError, ValueError):
    """A shape that does not fit: a RuntimeError, as torch.nn.LSTM raises for it, and a ValueError, as
    the rest of triton_lstm raises for bad arguments."""


class DTypeError(TypeError, ValueError, RuntimeError):
    """A tensor dtype that does not fit: a TypeError, as triton_lstm raises for bad arguments, and the
    ValueError and RuntimeError torch.nn.LSTM raises for one dtype mismatch or another (its input
    check, its ops)."""


def as_number(value: Any) -> Any:
    """A numpy scalar or 0-d tensor as the Python number it holds (bools stay as they are); anything
    else unchanged, for the caller's own check to judge."""
    if isinstance(value, np.generic) and value.dtype.kind in "iuf":
        return value.item()
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool \
            and not value.dtype.is_complex:
        return value.item()
    return value


def check_int(name: str, value: Any, low: int, none_ok: bool = False) -> Optional[int]:
    """An int >= low (numpy and 0-d tensor integers accepted, and the symbolic sizes of torch.compile
    and torch.export); None when ``none_ok``."""
    value = as_number(value)
    if value is None and none_ok:
        return None
    expected = f"an int >= {low}" + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return value


def check_scope(scope: Any, arg: str = "scope") -> None:
    """A TF variable scope's name (``arg``: a call's ``scope``, a cell's ``name``): None or a str."""
    if scope is not None and not isinstance(scope, str):
        raise TypeError(f"{arg}: expected None or a variable scope's name (str), got {type(scope).__name__}")


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_tensor(name: str, t: object, rank: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a rank-{rank} tensor, got shape {shape_of(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: expected a floating dtype {FLOAT_DTYPES}, got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: Callable[[], str]) -> None:
    """meaning() says where the expected sizes come from; made only for the error (under
    torch.compile, formatting a symbolic size into a string would make it a constant)."""
    if shape_of(t) != expected:
        raise ValueError(f"{name}: expected shape {expected} ({meaning()}), got {shape_of(t)}")


def check_clip(name: str, value: Optional[float]) -> Optional[float]:
    """A clip bound >= 0 as a float (numpy and 0-d tensor numbers accepted), or None. The kernels
    take the bound as float32: inf is no clip (None), a finite bound beyond float32 is refused."""
    value = as_number(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number or None, got {type(value).__name__}")
    # One comparison rejects negatives and NaN, and stays traceable by torch.compile (no math.isnan).
    if not value >= 0:
        raise ValueError(f"{name}: expected a clip bound >= 0 (or None), got {value}")
    if value == math.inf:
        return None
    if value > FLOAT32_MAX:
        raise ValueError(f"{name}: expected a clip bound <= {FLOAT32_MAX} (float32's largest) or inf, got {value}")
    return float(value)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_forget_bias(value: float) -> float:
    """A finite forget bias as a float (numpy and 0-d tensor numbers accepted)."""
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -math.inf < value < math.inf:
        raise ValueError(f"forget_bias: expected a finite number, got {value!r}")
    return float(value)


def _num_units(name: str, w: torch.Tensor) -> int:
    if w.shape[1] % 4 != 0 or w.shape[1] == 0:
        raise ValueError(f"{name}: expected 4 * num_units columns (gates i, j, f, o), got shape {shape_of(w)}")
    return w.shape[1] // 4


def _output_size(projection: Optional[torch.Tensor], N: int, proj_clip: Optional[float]) -> int:
    if projection is None:
        if proj_clip is not None:
            raise ValueError("proj_clip: only meaningful with a projection (num_proj); got no projection")
        return N
    check_tensor("projection", projection, 2)
    if projection.shape[0] != N or projection.shape[1] == 0:
        raise ValueError(f"projection: expected shape [num_units={N}, num_proj > 0], got {shape_of(projection)}")
    return projection.shape[1]


def _output_meaning(P: int, projection: Optional[torch.Tensor]) -> str:
    """Where the output size comes from, for the errors of the weights it sizes."""
    return f"output size {P}, " + ("the projection's columns" if projection is not None else "num_units: no projection")


class Names(NamedTuple):
    """How errors name the input and the state: by the caller's arguments (``x``, ``h0`` and ``c0``
    for ``lstm_sequence``; ``inputs`` and ``initial_state.c`` for ``dynamic_rnn``; ...)."""
    x: str
    h: str
    c: str

    def of_x(self) -> str:
        """The input's name in the possessive."""
        return self.x + ("'" if self.x.endswith("s") else "'s")


CELL_NAMES = Names("x", "h", "c")            # lstm_cell's arguments
SEQUENCE_NAMES = Names("x", "h0", "c0")      # lstm_sequence's


def check_state_shapes(B: int, N: int, P: int, c: torch.Tensor, h: torch.Tensor, names: Names) -> None:
    """c [B, N] and h [B, P], tensors, named as ``names`` says."""
    check_tensor(names.c, c, 2)
    check_shape(names.c, c, (B, N), lambda: f"batch {B} from {names.x}, num_units {N}")
    check_tensor(names.h, h, 2)
    check_shape(names.h, h, (B, P), lambda: f"batch {B} from {names.x}, output size {P}")


def _check_state_and_weights(x: torch.Tensor, B: int, N: int, P: int, c: torch.Tensor, h: torch.Tensor,
                             names: Names, bias: torch.Tensor, peepholes: tuple[Optional[torch.Tensor], ...],
                             weights: dict[str, Optional[torch.Tensor]], float32_bias: bool = False) -> None:
    """The state's and the weights' shapes, devices and dtypes: the weights in x's dtype (with
    ``float32_bias``, a float32 bias also for half-precision x: a sum of two biases kept unrounded),
    c in it or float32."""
    check_state_shapes(B, N, P, c, h, names)
    check_tensor("bias", bias, 1)
    check_shape("bias", bias, (4 * N,), lambda: f"4 * num_units {N}")
    present = [p is not None for p in peepholes]
    if any(present) and not all(present):
        raise ValueError("w_f_diag, w_i_diag, w_o_diag: pass all three peephole vectors or none")
    for name, p in zip(("w_f_diag", "w_i_diag", "w_o_diag"), peepholes):
        if p is not None:
            check_tensor(name, p, 1)
            check_shape(name, p, (N,), lambda: f"num_units {N}")
    named = {names.h: h, "bias": bias, **weights, **dict(zip(("w_f_diag", "w_i_diag", "w_o_diag"), peepholes))}
    for name, t in {**named, names.c: c}.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: on device {t.device}, but {names.x} on {x.device}; move all tensors "
                             f"to one device")
    if float32_bias and x.dtype in (torch.float16, torch.bfloat16) and bias.dtype == torch.float32:
        del named["bias"]
    for name, t in named.items():
        if t is not None and t.dtype != x.dtype:
            raise DTypeError(f"{name}: dtype {t.dtype} differs from {names.of_x()} {x.dtype}; use one dtype")
    if c.dtype not in (x.dtype, torch.float32):
        raise DTypeError(f"{names.c}: dtype {c.dtype}; expected float32 or {names.of_x()} dtype {x.dtype}")


def check_cell_args(x: torch.Tensor, c: torch.Tensor, h: torch.Tensor, kernel: torch.Tensor,
                    bias: torch.Tensor, peepholes: tuple[Optional[torch.Tensor], ...],
                    projection: Optional[torch.Tensor], proj_clip: Optional[float],
                    names: Names) -> tuple[int, int, int, int]:
    """Validate one cell step's tensors; returns (B, D, N, P)."""
    check_tensor(names.x, x, 2)
    check_tensor("kernel", kernel, 2)
    B, D = x.shape
    N = _num_units("kernel", kernel)
    P = _output_size(projection, N, proj_clip)
    check_shape("kernel", kernel, (D + P, 4 * N),
                lambda: f"input_size {D} + {_output_meaning(P, projection)}; 4 * num_units {N}")
    _check_state_and_weights(x, B, N, P, c, h, names, bias, peepholes, {"kernel": kernel, "projection": projection})
    return B, D, N, P


def check_sequence_args(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_x: torch.Tensor,
                        w_h: torch.Tensor, bias: torch.Tensor, peepholes: tuple[Optional[torch.Tensor], ...],
                        projection: Optional[torch.Tensor], proj_clip: Optional[float],
                        names: Names) -> tuple[int, int, int, int, int]:
    """Validate a time-major sequence's tensors; returns (T, B, D, N, P)."""
    check_tensor(names.x, x, 3)
    check_tensor("w_x", w_x, 2)
    check_tensor("w_h", w_h, 2)
    T, B, D = x.shape
    N = _num_units("w_h", w_h)
    P = _output_size(projection, N, proj_clip)
    check_shape("w_x", w_x, (D, 4 * N), lambda: f"input_size {D}, 4 * num_units {N}")
    check_shape("w_h", w_h, (P, 4 * N), lambda: f"{_output_meaning(P, projection)}; 4 * num_units {N}")
    _check_state_and_weights(x, B, N, P, c0, h0, names, bias, peepholes,
                             {"w_x": w_x, "w_h": w_h, "projection": projection}, float32_bias=True)
    return T, B, D, N, P


def integer_tensor(name: str, values: Any, **kwargs: Any) -> torch.Tensor:
    """``torch.as_tensor(values, **kwargs)`` of integers given as a tensor, list or numpy array: a numpy
    view with negative strides (``a[::-1]``, which torch refuses) included, and an empty list, range or array
    as int64 (torch makes them float32; numpy float64), as a list of ints. What torch cannot make a
    tensor of, and a list holding booleans (torch makes them 0 and 1; a bool tensor is no integer
    tensor either), is a TypeError naming ``name``. The dtype is the caller's to check."""
    if isinstance(values, np.ndarray):
        values = np.ascontiguousarray(values)
        empty = values.size == 0
    else:
        empty = not isinstance(values, torch.Tensor) and isinstance(values, Sized) and len(values) == 0
    if empty:
        kwargs.setdefault("dtype", torch.int64)
    def error() -> TypeError:
        return TypeError(f"{name}: expected [batch] integers (a tensor, list or array), got {values!r:.80}")

    if isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) or (
            isinstance(v, (torch.Tensor, np.ndarray)) and v.dtype in (torch.bool, np.bool_)) for v in values):
        raise error()
    try:
        return torch.as_tensor(values, **kwargs)
    except (TypeError, ValueError) as e:
        raise error() from e


def comparable(t: torch.Tensor) -> torch.Tensor:
    """t, or its int64 values for the unsigned dtypes wider than 8 bits, which torch's comparisons and
    clamps do not take."""
    return t.long() if t.dtype in (torch.uint16, torch.uint32, torch.uint64) else t


def check_integers(name: str, t: torch.Tensor) -> None:
    """t holds integers (not floats, complex numbers or bools)."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")


def check_path(name: str, path: Any) -> str:
    """A file path (str, bytes or os.PathLike) as a str."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{name}: expected a file path (str or os.PathLike), got {type(path).__name__}")
    return os.fsdecode(path)


def check_stored_weights(module: torch.nn.Module, names, what: str) -> None:
    """A ValueError (its message starting with ``what``) if a weight of ``names`` is computed from
    other parameters (pruned or parametrized): what reads or writes the weights by name, as a copy,
    export or load does, would miss them."""
    computed = [name for name in names if not isinstance(getattr(module, name), torch.nn.Parameter)]
    if computed:
        raise ValueError(f"{what}: {', '.join(computed)} computed from other parameters (pruned or "
                         f"parametrized); make them parameters again first (torch.nn.utils.prune.remove, "
                         f"torch.nn.utils.parametrize.remove_parametrizations)")
