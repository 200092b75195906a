"""Random cell weights and inputs, tolerances, and comparisons shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from triton_lstm.activations import ACTIVATIONS, resolve_activation, resolve_recurrent_activation
from triton_lstm.reference import lstm_cell_reference

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(*args: str, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """``python args`` in a new process at the repository root, without TRITON_INTERPRET (triton_lstm
    picks the interpreter when it is imported) and with ``env`` added; its output captured."""
    child = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child.update(env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=child, capture_output=True, text=True,
                          timeout=timeout)


# (atol, rtol) for outputs and for gradients, against the float32 reference on the same inputs.
TOLERANCES = {
    torch.float32: dict(fwd=(1e-5, 1e-5), grad=(1e-4, 1e-4)),
    torch.float16: dict(fwd=(4e-3, 4e-3), grad=(2e-2, 2e-2)),
    torch.bfloat16: dict(fwd=(3e-2, 3e-2), grad=(1e-1, 5e-2)),
}

# The options of one cell as test axes (matrices take all pairs of them, the GPU tests all products).
CELL_AXES = dict(
    activation=list(ACTIVATIONS),
    recurrent_activation=["sigmoid", "hard_sigmoid", "hardsigmoid"],
    peepholes=[False, True],
    cell_clip=[None, 0.7],
    projection=["none", "proj", "proj+clip"],
    forget_bias=[1.0, 0.0],
    dtype=[torch.float32, torch.float16, torch.bfloat16],
)

WEIGHT_NAMES = ("kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection")


def cell_tensors(B: int, D: int, N: int, P: Optional[int], peepholes: bool, dtype: torch.dtype,
                 device, seed: int = 0) -> dict[str, Optional[torch.Tensor]]:
    """Inputs and TF-layout weights with magnitudes that keep every gate away from saturation."""
    g = torch.Generator().manual_seed(seed)
    out = N if P is None else P

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    t = dict(x=rnd(B, D), c=rnd(B, N).float(), h=rnd(B, out, scale=0.5),
             kernel=rnd(D + out, 4 * N, scale=(D + out) ** -0.5), bias=rnd(4 * N, scale=0.1),
             w_f_diag=None, w_i_diag=None, w_o_diag=None, projection=None)
    if peepholes:
        t.update(w_f_diag=rnd(N, scale=0.3), w_i_diag=rnd(N, scale=0.3), w_o_diag=rnd(N, scale=0.3))
    if P is not None:
        t["projection"] = rnd(N, P, scale=N ** -0.5)
    return t


def cell_args(t: dict) -> tuple:
    return (t["x"], t["c"], t["h"], t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
            t["projection"])


def as_inputs(up: dict, t: dict) -> dict:
    """The copies cast back to the dtypes of ``t`` (inside the graph): the reference then computes
    half-precision inputs as specified and as the kernels do, in float32 with m rounded to the input
    dtype before the projection and h kept in it. A clipped projection's gradient mask needs that:
    on float32 copies, m that rounding moves across proj_clip gets the other mask."""
    return {k: (None if v is None else v.to(t[k].dtype)) for k, v in up.items()}


def reference_fp32(t: dict, **options):
    """The reference on float32 copies of the same (possibly half-rounded) values, the leaves of its
    gradients, going in as the inputs' dtypes (``as_inputs``)."""
    up = {k: (None if v is None else v.detach().float().requires_grad_(v.requires_grad)) for k, v in t.items()}
    act = resolve_activation(options.pop("activation", None))[1]
    gate = resolve_recurrent_activation(options.pop("recurrent_activation", None))[1]
    return up, lstm_cell_reference(*cell_args(as_inputs(up, t)), activation=act, recurrent_activation=gate, **options)


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tol: tuple[float, float]) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten output?)"
    torch.testing.assert_close(got.float(), want.float(), atol=tol[0], rtol=tol[1], msg=lambda m: f"{name}: {m}")
