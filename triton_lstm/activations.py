"""Cell activations: Keras names and torch callables mapped to the kernels' activation ids."""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 2 (TF1-era) hard sigmoid: clip(0.2 * x + 0.5, 0, 1). Not torch's hardsigmoid (x/6 + 0.5)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def linear(x: torch.Tensor) -> torch.Tensor:
    return x


_ONE_SIXTH = torch.tensor(1 / 6, dtype=torch.float32).item()


class _Hardsigmoid(torch.autograd.Function):
    """torch's hardsigmoid, its values and first derivative as aten's, with a backward built from
    differentiable ops: aten's hardsigmoid_backward has no derivative, so a double backward through
    F.hardsigmoid fails."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def derivative(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """aten's hardsigmoid_backward: 1/6 on the open interval (-3, 3), 0 elsewhere and at NaN, with its
        1/6 (a float32 constant, in every dtype)."""
        return torch.where((x > -3) & (x < 3), dy * _ONE_SIXTH, 0.0)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        return _Hardsigmoid.derivative(ctx.saved_tensors[0], dy)

    @staticmethod
    def jvp(ctx, dx: torch.Tensor) -> torch.Tensor:
        return _Hardsigmoid.derivative(ctx.saved_tensors[0], dx)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """torch's (and Keras 3's) hardsigmoid, clip(x / 6 + 0.5, 0, 1), differentiable twice."""
    return _Hardsigmoid.apply(x)


# name -> (kernel id, torch implementation); ids match kernels/cell_math.py.
ACTIVATIONS: dict[str, tuple[int, Callable[[torch.Tensor], torch.Tensor]]] = {
    "tanh": (0, torch.tanh),
    "relu": (1, torch.relu),
    "sigmoid": (2, torch.sigmoid),
    "linear": (3, linear),
    "softsign": (4, F.softsign),
    "hard_sigmoid": (5, hard_sigmoid),
    "elu": (6, F.elu),
    "hardsigmoid": (7, hardsigmoid),
}


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """Keras' leaky_relu (and TF's tf.nn.leaky_relu): slope 0.2 below zero."""
    return F.leaky_relu(x, 0.2)


def squareplus(x: torch.Tensor) -> torch.Tensor:
    """Keras' squareplus with its default b = 4: (x + sqrt(x^2 + 4)) / 2."""
    return (x + torch.sqrt(x * x + 4.0)) / 2


def soft_shrink(x: torch.Tensor) -> torch.Tensor:
    """Keras' soft_shrink with its default threshold 0.5."""
    return F.softshrink(x, 0.5)


def hard_shrink(x: torch.Tensor) -> torch.Tensor:
    """Keras' hard_shrink with its default threshold 0.5."""
    return F.hardshrink(x, 0.5)


def sparse_plus(x: torch.Tensor) -> torch.Tensor:
    """Keras' sparse_plus: 0 up to -1, (x + 1)^2 / 4 on (-1, 1), x from 1 (NaN stays NaN)."""
    return torch.where(x <= -1, 0.0, torch.where(x >= 1, x, 0.25 * (x + 1) ** 2))


def sparse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras' sparse_sigmoid: 0 up to -1, (x + 1) / 2 on (-1, 1), 1 from 1 (its gradient 0 at +-1, as
    Keras'; NaN stays NaN)."""
    return torch.where(x <= -1, 0.0, torch.where(x >= 1, 1.0, 0.5 * (x + 1)))


# Keras' other elementwise activations by their names, with Keras' default parameters: Keras 3 has them
# all; tf-keras, and TF1's LSTMCell through it, relu6, leaky_relu, selu, softplus, silu/swish, gelu,
# exponential and mish. No kernel computes them: a cell with one runs on the reference path.
KERAS_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu6": F.relu6, "leaky_relu": leaky_relu, "celu": F.celu, "selu": F.selu, "softplus": F.softplus,
    "squareplus": squareplus, "soft_shrink": soft_shrink, "sparse_plus": sparse_plus, "silu": F.silu,
    "swish": F.silu, "gelu": F.gelu, "tanh_shrink": F.tanhshrink, "sparse_sigmoid": sparse_sigmoid,
    "exponential": torch.exp, "hard_silu": F.hardswish, "hard_swish": F.hardswish, "hard_tanh": F.hardtanh,
    "hard_shrink": hard_shrink, "mish": F.mish, "log_sigmoid": F.logsigmoid,
}

# Torch callables that compute exactly one of the named activations.
_CALLABLE_NAMES = {
    torch.tanh: "tanh", F.tanh: "tanh", torch.relu: "relu", F.relu: "relu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.softsign: "softsign", F.elu: "elu",
    hard_sigmoid: "hard_sigmoid", linear: "linear", F.hardsigmoid: "hardsigmoid", hardsigmoid: "hardsigmoid",
}

Activation = Union[str, Callable[[torch.Tensor], torch.Tensor], None]


def resolve_activation(activation: Activation, arg: str = "activation",
                       default: str = "tanh") -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor]]:
    """Return (kernel name or None, torch function) of the argument named ``arg``; None means
    ``default`` (TF: tanh for the cell activation, sigmoid for the gates).

    A name in ``KERAS_ACTIVATIONS``, or a callable that is not one of the kernels' functions, gets name
    None: it runs on the reference path. One of them gets the named activation's function (the same
    values, differentiable as often).
    """
    if activation is None:
        activation = default
    if isinstance(activation, str):
        key = activation.lower()
        if key in KERAS_ACTIVATIONS:
            return None, KERAS_ACTIVATIONS[key]
        if key not in ACTIVATIONS:
            raise ValueError(f"{arg}: unknown name {activation!r}; known names are {sorted(ACTIVATIONS)} (in the "
                             f"kernels), {sorted(KERAS_ACTIVATIONS)} (on the reference path), or pass a callable")
        return key, ACTIVATIONS[key][1]
    if not callable(activation):
        raise TypeError(f"{arg}: expected None, a name or a callable, got {type(activation).__name__}")
    if isinstance(activation, type):
        raise TypeError(f"{arg}: got the class {activation.__name__}; pass an instance ({activation.__name__}()) "
                        f"or a function")
    # By identity: a callable need not be hashable (a dataclass instance is not).
    name = next((known for fn, known in _CALLABLE_NAMES.items() if fn is activation), None)
    return name, ACTIVATIONS[name][1] if name is not None else activation


def resolve_recurrent_activation(activation: Activation) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor]]:
    """``resolve_activation`` for the gates' activation (Keras' ``recurrent_activation``; TF1: sigmoid)."""
    return resolve_activation(activation, "recurrent_activation", "sigmoid")


def activation_id(name: str) -> int:
    return ACTIVATIONS[name][0]


def activation_name(id: int) -> str:
    """The name of a kernel activation id (the inverse of ``activation_id``)."""
    return next(name for name, (i, _) in ACTIVATIONS.items() if i == id)
