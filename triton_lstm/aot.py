"""Ahead-of-time compilation of every kernel variant for real GPU targets, without a GPU.

``python -m triton_lstm.aot [--full]`` compiles the step and sequence kernels for sm_80 and sm_90 over the
option matrix (all pairs by default, the full product with --full), reads registers, stack, local
and shared memory of each cubin with the cuobjdump shipped in Triton's wheel, and fails on spills
or on shared memory over the target's limit. Run it without TRITON_INTERPRET.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_lstm.activations import ACTIVATIONS
from triton_lstm.kernels import lstm_sequence, lstm_step
from triton_lstm.launch import dot_dtype, step_config

# Opt-in shared memory per block (bytes): A100 (sm_80) and H100 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
_TL_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_FP32_POINTERS = {"c_ptr", "z_ptr", "c_out_ptr", "y_ptr", "dh_ptr", "dc_ptr", "dy_ptr", "dz_ptr", "dc_prev_ptr",
                  "cbuf_ptr"}
_I32_POINTERS = {"len_ptr", "sync_ptr"}
KERNELS = {"fwd": lstm_step.lstm_step_fwd_kernel, "bwd": lstm_step.lstm_step_bwd_kernel,
           "seq_fwd": lstm_sequence.lstm_seq_fwd_kernel, "seq_bwd": lstm_sequence.lstm_seq_bwd_kernel}
_FLOATS = {"forget_bias", "cell_clip", "proj_clip"}


@dataclass(frozen=True)
class StepVariant:
    kernel: str                 # a key of KERNELS
    act: int
    gate_act: int
    peepholes: bool
    cell_clip: bool
    projection: str             # "none", "proj", "proj+clip"
    dtype: str                  # "float32", "float16", "bfloat16"
    batch: int                  # picks the block configuration through step_config
    lengths: bool               # sequence kernels: variable lengths
    arch: int


AXES = dict(kernel=list(KERNELS), act=list(range(len(ACTIVATIONS))), gate_act=[2, 5], peepholes=[False, True], cell_clip=[False, True],
            projection=["none", "proj", "proj+clip"], dtype=["float32", "float16", "bfloat16"],
            batch=[3, 32, 128], lengths=[False, True], arch=list(ARCHS))


def _signature(fn, v: StepVariant, cfg):
    dtype = getattr(torch, v.dtype)
    has_proj = v.projection != "none"
    absent = set()
    if not v.peepholes:
        absent |= {"wi_ptr", "wf_ptr", "wo_ptr"}
    if not has_proj:
        absent |= {"proj_ptr", "m_ptr"}
        if v.kernel == "bwd":
            absent.add("dy_ptr")  # the sequence backward always writes dy
    if v.projection != "proj+clip":
        absent.add("y_ptr")
    if not v.lengths:
        absent.add("len_ptr")
    # The sequence kernels as the GPU launches them: all phases, barriers on, one launch.
    constexprs = dict(ACT=v.act, GATE_ACT=v.gate_act, USE_PEEPHOLES=v.peepholes, HAS_CELL_CLIP=v.cell_clip, HAS_PROJ=has_proj,
                      HAS_PROJ_CLIP=v.projection == "proj+clip", HAS_LENGTHS=v.lengths, PHASES=3,
                      USE_BARRIER=True, PROLOGUE=True, DOT_DTYPE=dot_dtype(dtype),
                      INPUT_PRECISION="ieee", BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    constexprs = {k: val for k, val in constexprs.items() if k in fn.arg_names}
    constexprs.update({name: None for name in absent if name in fn.arg_names})
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            if name in _I32_POINTERS:
                signature[name] = "*i32"
            else:
                signature[name] = "*fp32" if name in _FP32_POINTERS else "*" + _TL_NAMES[dtype]
        elif name in _FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature, constexprs


def resource_usage(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL from cuobjdump --dump-resource-usage."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], check=True, capture_output=True,
                             text=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    if "reg" not in usage:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return usage


def compile_step_variant(v: StepVariant) -> dict:
    dtype = getattr(torch, v.dtype)
    cfg = step_config(v.batch, 64, dtype)
    fn = KERNELS[v.kernel]
    signature, constexprs = _signature(fn, v, cfg)
    compiled = triton.compile(ASTSource(fn, signature, constexprs),
                              target=GPUTarget("cuda", v.arch, 32), options=cfg.launch_options())
    usage = resource_usage(compiled.asm["cubin"])
    usage["shared"] = max(usage.get("shared", 0), compiled.metadata.shared)
    return usage


def variants(full: bool) -> list[StepVariant]:
    if full:
        combos = [dict(zip(AXES, vals)) for vals in itertools.product(*AXES.values())]
    else:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
        from pairwise import pairwise
        combos = pairwise(AXES)
    return [StepVariant(**c) for c in combos]


def check(usage: dict, arch: int) -> list[str]:
    problems = []
    if usage.get("local", 0) or usage.get("stack", 0):
        problems.append(f"local memory / stack in use (spills): {usage}")
    if usage["shared"] > SHARED_LIMIT[arch]:
        problems.append(f"shared memory {usage['shared']} B over sm_{arch}'s {SHARED_LIMIT[arch]} B")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full option product instead of all pairs")
    parser.add_argument("--json", help="write one JSON line per variant to this file")
    args = parser.parse_args(argv)
    failures = 0
    rows = []
    for v in variants(args.full):
        usage = compile_step_variant(v)
        problems = check(usage, v.arch)
        failures += bool(problems)
        rows.append(dict(asdict(v), **usage, problems=problems))
        print(f"{v.kernel:7s} sm_{v.arch} {v.dtype:8s} act={v.act}/{v.gate_act} peep={v.peepholes:d} clip={v.cell_clip:d} "
              f"{v.projection:9s} B={v.batch:<3d} len={v.lengths:d} regs={usage['reg']:3d} shared={usage['shared']:6d} "
              f"local={usage.get('local', 0)} stack={usage.get('stack', 0)} {'; '.join(problems)}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"{len(rows)} variants compiled, {failures} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
