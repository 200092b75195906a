"""Gradients of any order and torch.func transforms for the custom ops (``ops`` and ``cpu``).

Each op's autograd runs its fast backward op for a first derivative; a backward that must itself be
differentiable (``create_graph=True``, double backward, ``torch.func.grad``) recomputes the op in
plain PyTorch from the op's inputs and differentiates that (``differentiable_vjp``). While a
torch.func transform or forward-mode AD is active the op runs as an autograd.Function with the same
setup and backward and a forward-mode derivative that recomputes likewise (``transformable``,
``differentiable_jvp``), and vmap runs it once per slice (``vmap_by_slices``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.autograd import forward_ad

from triton_lstm.activations import ACTIVATIONS

Tensor = torch.Tensor

_ACTIVATION_FNS = {act_id: fn for act_id, fn in ACTIVATIONS.values()}


def reference_options(act: int, gate_act: int, forget_bias: float, cell_clip: Optional[float],
                      proj_clip: Optional[float]) -> dict:
    """The ops' scalar options as keyword arguments of the reference functions."""
    return dict(activation=_ACTIVATION_FNS[act], recurrent_activation=_ACTIVATION_FNS[gate_act],
                forget_bias=forget_bias, cell_clip=cell_clip, proj_clip=proj_clip)


def differentiable_vjp(ctx, recompute, inputs: tuple, grads: tuple[Optional[Tensor], ...]):
    """Gradients of ``recompute(*inputs)`` (the op in plain PyTorch) with respect to the inputs that
    need them, as a graph that can itself be differentiated (double backward) or transformed
    (torch.func): ``torch.func.vjp`` composes with both."""
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]

    def of_wanted(*tensors):
        args = list(inputs)
        for i, t in zip(wanted, tensors):
            args[i] = t
        return recompute(*args)

    outputs, vjp = torch.func.vjp(of_wanted, *(inputs[i] for i in wanted))
    found = vjp(tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads)))
    result: list[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, found):
        result[i] = g
    return tuple(result)


def differentiable_jvp(recompute: Callable[..., tuple], inputs: tuple,
                       tangents: tuple[Optional[Tensor], ...]) -> tuple[Tensor, ...]:
    """The tangents of ``recompute(*inputs)``'s outputs (the op in plain PyTorch) along the inputs'
    ``tangents`` (None: zero), as a graph that can be differentiated further. Found by reverse mode
    twice: an op's vjp is linear in its cotangent, and the vjp of that map along a tangent is the
    op's jvp (torch.func.jvp here would nest forward-mode AD, which torch supports only inside
    torch.func)."""
    moving = [i for i, t in enumerate(tangents) if t is not None]

    def of_moving(*tensors):
        args = list(inputs)
        for i, t in zip(moving, tensors):
            args[i] = t
        return recompute(*args)

    outputs, vjp = torch.func.vjp(of_moving, *(inputs[i] for i in moving))
    _, vjp_of_vjp = torch.func.vjp(vjp, tuple(torch.zeros_like(o) for o in outputs))
    (found,) = vjp_of_vjp(tuple(tangents[i] for i in moving))
    return found


def vmap_by_slices(op):
    """A vmap rule that runs ``op`` once per slice of the mapped dimension and stacks the results:
    correct for any in_dims (inputs, weights or cotangents mapped), at one call per slice."""
    def rule(info, in_dims, *args):
        def nth(i):
            return [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]

        results = [op(*nth(i)) for i in range(info.batch_size)]
        return tuple(torch.stack(outs) for outs in zip(*results)), (0,) * len(results[0])
    return rule


def forward_mode() -> bool:
    """Whether forward-mode AD is active: torch.autograd.forward_ad's dual tensors or a torch.func
    transform of forward mode (jvp, jacfwd, hessian)."""
    return forward_ad._current_level >= 0 or any(
        level.key() == torch._C._functorch.TransformType.Jvp
        for level in torch._C._functorch.get_interpreter_stack() or ())


def transformable(name: str, op, setup_context, backward, jvp):
    """``op`` with the given autograd as an autograd.Function: the form torch.func transforms and
    forward-mode AD accept, called instead of ``op`` while one is active. ``jvp(ctx, *tangents)``
    finds the op's tensor arguments in ``ctx.saved_tensors`` (None for the others) and returns one
    tangent per output, None where it is zero."""
    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        # Only for forward mode: saved for it under vmap alone, they break a backward run after it.
        if forward_mode():
            ctx.save_for_forward(*(a if isinstance(a, Tensor) else None for a in inputs))
            ctx.output_meta = [(o.shape, o.dtype, o.device) for o in output]

    def jvp_of_outputs(ctx, *tangents):
        found = jvp(ctx, *tangents)
        # Zero tangents spelled out for floating outputs (torch.func takes no None for them).
        return tuple(t.to(dtype) if t is not None else torch.zeros(shape, dtype=dtype, device=device)
                     if dtype.is_floating_point else None for t, (shape, dtype, device) in zip(found, ctx.output_meta))

    function = type(name, (torch.autograd.Function,), dict(
        generate_vmap_rule=True, forward=staticmethod(lambda *args: op(*args)),
        setup_context=staticmethod(setup), backward=staticmethod(backward), jvp=staticmethod(jvp_of_outputs)))

    def call(*args):
        if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
            return function.apply(*args)
        return op(*args)
    return call


def in_last_row(t: Tensor, rows: int) -> Tensor:
    """``t`` as the last of ``rows`` rows, the others zero: the tangent of a buffer of every step's
    state whose callers read only the final one."""
    return torch.cat([t.new_zeros((rows - 1, *t.shape)), t[None]])
