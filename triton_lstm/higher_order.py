"""Gradients of any order and torch.func transforms for the custom ops (``ops`` and ``cpu``).

Each op's autograd runs its fast backward op for a first derivative; a backward that must itself be
differentiable (``create_graph=True``, double backward, ``torch.func.grad``) recomputes the op in
plain PyTorch from the op's inputs and differentiates that (``differentiable_vjp``). While a
torch.func transform is active the op runs as an autograd.Function with the same setup and backward
(``transformable``), and vmap runs it once per slice (``vmap_by_slices``).
"""
from __future__ import annotations

from typing import Iterable, Optional

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


def vmap_by_slices(op):
    """A vmap rule that runs ``op`` once per slice of the mapped dimension and stacks the results:
    correct for any in_dims (inputs, weights or cotangents mapped), at one call per slice."""
    def rule(info, in_dims, *args):
        def nth(i):
            # (A list argument's in_dims is a list: of Nones, for the ops' lists of flags.)
            return [a.select(d, i) if isinstance(a, Tensor) and d is not None else a for a, d in zip(args, in_dims)]

        results = [op(*nth(i)) for i in range(info.batch_size)]
        return tuple(torch.stack(outs) for outs in zip(*results)), (0,) * len(results[0])
    return rule


def forward_mode(tensors: Iterable[Optional[Tensor]]) -> bool:
    """Whether forward-mode AD reaches this call: a torch.func transform of forward mode (jvp,
    jacfwd, hessian), or one of ``tensors`` (iterated only then) a dual tensor of
    torch.autograd.forward_ad (its level is process-wide: other threads, and calls without dual
    tensors, are not in forward mode). The entry points then run the plain-PyTorch reference, which torch differentiates forward itself (nested
    levels included: an autograd.Function's jvp loses an outer forward level's tangent). While
    torch.compile traces, any dual level counts (Dynamo cannot trace the transform stack's query)."""
    if forward_ad._current_level < 0 and not torch._C._are_functorch_transforms_active():
        return False
    if torch.compiler.is_compiling():
        return forward_ad._current_level >= 0
    return any(level.key() == torch._C._functorch.TransformType.Jvp
               for level in torch._C._functorch.get_interpreter_stack() or ()) or any(
        isinstance(t, Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def transformable(name: str, op, setup_context, backward):
    """``op`` with the given autograd as an autograd.Function: the form torch.func transforms accept,
    called instead of ``op`` while one is active."""
    function = type(name, (torch.autograd.Function,), dict(
        generate_vmap_rule=True, forward=staticmethod(lambda *args: op(*args)),
        setup_context=staticmethod(setup_context), backward=staticmethod(backward)))

    def call(*args):
        if torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        return op(*args)
    return call
