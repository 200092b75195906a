"""Interpreter-mode demo: the Triton kernels on CPU tensors against the plain-PyTorch reference.

Run as ``TRITON_INTERPRET=1 python -m benchmarks.demo`` (``python -m benchmarks.run`` does this in a
subprocess when no CUDA GPU is found). It runs ``lstm_sequence`` (the persistent kernels, on one
program and on two programs stepped from the host) and ``lstm_cell`` (the fused step) with
peepholes, cell and projection clipping, a projection and variable lengths, prints the largest
absolute difference of outputs and gradients from the float64 reference, and exits with status 1
if any exceeds ``TOLERANCE``.
"""
from __future__ import annotations

import os
import sys
import time

import torch

TOLERANCE = 1e-4
T, B, D, N, P = 6, 3, 5, 8, 4
OPTIONS = dict(forget_bias=1.0, cell_clip=0.8, proj_clip=0.6)


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    """Random float32 inputs and weights (never zeros), leaves that require grad."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return dict(x=rnd(T, B, D), h0=rnd(B, P, scale=0.5), c0=rnd(B, N, scale=0.5),
                w_x=rnd(D, 4 * N, scale=(D + P) ** -0.5), w_h=rnd(P, 4 * N, scale=(D + P) ** -0.5),
                bias=rnd(4 * N, scale=0.1), w_f_diag=rnd(N, scale=0.3), w_i_diag=rnd(N, scale=0.3),
                w_o_diag=rnd(N, scale=0.3), projection=rnd(N, P, scale=N ** -0.5))


def _max_errors(outs, refs, leaves, ref_leaves, g_out, op: str) -> tuple[float, float]:
    """(max |out - ref| over the outputs, max |grad - ref grad| over the leaves)."""
    ran = type(outs[0].grad_fn).__name__
    if f"triton_lstm_{op}" not in ran:
        raise RuntimeError(f"expected the kernels' op triton_lstm::{op} in the graph, got {ran}: the op fell "
                           f"back to the reference, so this demo would check nothing")
    fwd = max(float((o.detach().double() - r.detach()).abs().max()) for o, r in zip(outs, refs))
    loss = sum((o.double() * w).sum() for o, w in zip(outs, g_out))
    loss_ref = sum((r * w).sum() for r, w in zip(refs, g_out))
    grads = torch.autograd.grad(loss, leaves)
    grads_ref = torch.autograd.grad(loss_ref, ref_leaves)
    bwd = max(float((a.double() - b).abs().max()) for a, b in zip(grads, grads_ref))
    return fwd, bwd


def check_sequence(pin: str) -> tuple[float, float]:
    """lstm_sequence with every option and lengths [T, 2, 0] against lstm_sequence_reference, with
    the launch configuration pinned by ``pin`` (TRITON_LSTM_CONFIG; "" for the default)."""
    from triton_lstm import lstm_sequence, lstm_sequence_reference

    os.environ["TRITON_LSTM_CONFIG"] = pin
    t = _tensors(seed=len(pin))
    lengths = torch.tensor([T, 2, 0])
    names = ("x", "h0", "c0", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection")
    leaves = [t[k] for k in names]
    ref_leaves = [v.detach().double().requires_grad_() for v in leaves]
    outs = lstm_sequence(*leaves, lengths, **OPTIONS)
    refs = lstm_sequence_reference(*ref_leaves, lengths, **OPTIONS)
    g = torch.Generator().manual_seed(99)
    g_out = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in refs]
    return _max_errors(outs, refs, leaves, ref_leaves, g_out, "seq_fwd")


def check_cell() -> tuple[float, float]:
    """One lstm_cell step with every option against lstm_cell_reference."""
    from triton_lstm import lstm_cell, lstm_cell_reference

    t = _tensors(seed=7)
    kernel = torch.cat([t["w_x"], t["w_h"]]).detach().requires_grad_()
    leaves = [t["x"][0].detach().requires_grad_(), t["c0"], t["h0"], kernel, t["bias"], t["w_f_diag"],
              t["w_i_diag"], t["w_o_diag"], t["projection"]]
    ref_leaves = [v.detach().double().requires_grad_() for v in leaves]
    outs = lstm_cell(*leaves, **OPTIONS)
    refs = lstm_cell_reference(*ref_leaves, **OPTIONS)
    g = torch.Generator().manual_seed(98)
    g_out = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in refs]
    return _max_errors(outs, refs, leaves, ref_leaves, g_out, "step_fwd")


def main() -> int:
    """Run the checks, print one line each, return the exit status (1 if any error is too large)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("benchmarks.demo: set TRITON_INTERPRET=1 (the kernels must be built by Triton's interpreter)")
        return 2
    from triton_lstm.launch import interpreting
    if not interpreting():
        print("benchmarks.demo: the kernels were not built by the interpreter")
        return 2
    print(f"interpreter demo: T={T} B={B} D={D} N={N} P={P}, peepholes, {OPTIONS}, lengths [{T}, 2, 0]; "
          f"max |error| against the float64 reference, tolerance {TOLERANCE:g}")
    failed = False
    checks = [("lstm_sequence, 1 program (whole kernel, barriers on)", lambda: check_sequence("")),
              ("lstm_sequence, several programs (one phase per launch)",
               lambda: check_sequence("seq_fwd.block_n=4,seq_bwd.block_n=16")),
              ("lstm_cell (fused step)", check_cell)]
    for name, fn in checks:
        start = time.perf_counter()
        fwd, bwd = fn()
        ok = fwd <= TOLERANCE and bwd <= TOLERANCE
        failed |= not ok
        print(f"  {name:55s} outputs {fwd:.2e}  gradients {bwd:.2e}  {'ok' if ok else 'FAILED'} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"interpreter demo FAILED: an error exceeds {TOLERANCE:g}")
        return 1
    print("interpreter demo passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
