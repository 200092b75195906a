"""Compile what runs, for real GPU targets, without a GPU: every kernel launch the library makes,
with each of its tuner candidates, as the JIT specialises it.

``python -m triton_lstm.aot [--full] [--arch 80 90] [--json FILE]`` runs the public functions
(``lstm_cell`` and ``lstm_sequence``, forward and backward) on small CPU tensors standing in for
GPU ones, over the option matrix (all pairs by default, the full product with --full) and the
resident-size table, with a ``TargetDriver`` in place of the CUDA driver: the launchers build their
real arguments, and every launch is recorded instead of run. Each recorded launch is then compiled
for the target with every configuration the tuner may choose, and each cubin's registers, spills
and shared memory are read with the ``cuobjdump`` shipped in Triton's wheel. It fails on a
candidate that spills or does not fit while the tuner would not prune it. Run it without
TRITON_INTERPRET.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import inspect
import json
import multiprocessing
import os
import pathlib
import re
import sys
from types import SimpleNamespace
from typing import Callable, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from triton_lstm import launch, tune
from triton_lstm.pairwise import pairwise, product
from triton_lstm.pretune import int_at_least

# Per target: SMs, registers per SM and opt-in shared memory per block of the reference GPUs
# (A100 for sm_80, H100/H200 for sm_90).
TARGETS = {80: launch.DeviceLimits(108, 65536, 163 * 1024, 80), 90: launch.DeviceLimits(132, 65536, 227 * 1024, 90)}


class TargetDriver:
    """A Triton driver for a GPU target that is not there: the JIT compiles real cubins for it, a
    "load" reads registers and spills from the cubin (as the CUDA driver reports them), and a
    launch calls ``on_launch(kernel_name, grid, metadata, {argument name: value})`` instead of
    running anything. The thread's stream-capture mode is kept, and each load records it."""

    def __init__(self, arch: int, on_launch: Optional[Callable] = None):
        self.arch = arch
        self.limits = TARGETS[arch]
        self.on_launch = on_launch
        self.launcher_cls = self._launcher
        self.capture_mode = launch.CAPTURE_GLOBAL
        self.load_modes: list[int] = []        # the capture mode at each module load
        self.utils = SimpleNamespace(load_binary=self._load_binary, unload_module=lambda module: None,
                                     get_device_properties=self._properties)

    def _properties(self, device):
        return dict(max_shared_mem=self.limits.shared_per_block, multiprocessor_count=self.limits.sms,
                    max_num_regs=self.limits.regs_per_sm, warpSize=32, sm_clock_rate=1_755_000,
                    mem_clock_rate=2_619_000, mem_bus_width=5120)

    def exchange_capture_mode(self, mode: int) -> int:
        """As cuThreadExchangeStreamCaptureMode, for the one thread that launches here."""
        previous, self.capture_mode = self.capture_mode, mode
        return previous

    def _load_binary(self, name, cubin, shared, device):
        self.load_modes.append(self.capture_mode)
        usage = tune.resource_usage(cubin)
        # As cuFuncGetAttribute: NUM_REGS, LOCAL_SIZE_BYTES / 4, MAX_THREADS_PER_BLOCK.
        max_threads = min(1024, self.limits.regs_per_sm // max(usage["reg"], 1) // 32 * 32)
        return (name, name, usage["reg"], usage.get("local", 0) // 4, max_threads)

    def _launcher(self, src, metadata):
        def run(grid_x, grid_y, grid_z, stream, function, *rest):
            # rest: packed metadata, launch metadata, enter and exit hooks, then the kernel's arguments.
            if self.on_launch is not None:
                self.on_launch(src.fn.__name__, (grid_x, grid_y, grid_z), metadata, dict(zip(src.fn.arg_names, rest[4:])))
        return run

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        return torch.device("cpu")

    @staticmethod
    def is_active():
        return True


@contextlib.contextmanager
def stand_in_gpu(arch: int, on_launch: Optional[Callable] = None, kernels=None):
    """CPU tensors stand in for tensors on one GPU of ``arch``: Triton's driver is a TargetDriver,
    and the device queries of ``triton_lstm.launch`` answer for that GPU (CUDA events and pinned
    host memory, which need a GPU, are replaced by events that are always complete and plain host
    memory)."""
    kernels = kernels if kernels is not None else all_kernels()
    target = TargetDriver(arch, on_launch)
    stand_ins = dict(gpu_device=lambda device: True, device_limits=lambda device: target.limits,
                     capturing=lambda device: False, select_device=lambda device: contextlib.nullcontext(),
                     exchange_capture_mode=target.exchange_capture_mode, host_buffer=lambda t: torch.empty_like(t))
    saved = {name: getattr(launch, name) for name in stand_ins}
    event = torch.cuda.Event
    previous = driver._active
    try:
        driver.set_active(target)
        for k in kernels:
            k.device_caches.clear()  # binders hold the target they were made for
        for name, value in stand_ins.items():
            setattr(launch, name, value)
        torch.cuda.Event = _CompleteEvent
        yield target
    finally:
        for name, value in saved.items():
            setattr(launch, name, value)
        torch.cuda.Event = event
        driver._active = previous
        for k in kernels:
            for kernel_cache, *_ in k.device_caches.values():
                for compiled in kernel_cache.values():
                    compiled.module = None  # loaded by the TargetDriver: nothing for the real one to unload
            k.device_caches.clear()


class _CompleteEvent:
    def record(self, stream=None):
        pass

    def query(self):
        return True


def all_kernels():
    from triton_lstm.kernels import lstm_sequence, lstm_step
    return [lstm_step.lstm_step_fwd_kernel, lstm_step.lstm_step_proj_kernel, lstm_step.lstm_step_bwd_kernel,
            lstm_sequence.lstm_seq_fwd_kernel, lstm_sequence.lstm_seq_bwd_kernel]


# -- what the compiled time loop does ---------------------------------------------------------------
def _site(file: str, line: int) -> tuple[str, int]:
    """A source position as ("kernels/<module>.py", line): Triton's compile cache is keyed by the
    source, not its path, so a kernel compiled from another checkout names that checkout's files."""
    return "/".join(pathlib.PurePath(file).parts[-2:]), line


def _source_line(fn, needle: str) -> tuple[str, int]:
    """Site of the first line of a jit function's source containing ``needle``."""
    lines, first = inspect.getsourcelines(fn.fn)
    for i, line in enumerate(lines):
        if needle in line:
            return _site(inspect.getsourcefile(fn.fn), first + i)
    raise ValueError(f"{needle!r} not in {fn.fn.__name__}")


def _loc_frames(ttgir: str):
    """Resolve the TTGIR's location table: #locN -> source frames (file, line), innermost first."""
    table = dict(re.findall(r"^#(loc\d*) = loc\((.*)\)\s*$", ttgir, re.M))
    memo = {}

    def frames(ref):
        if ref not in memo:
            body = table.get(ref, "unknown")
            memo[ref] = ()
            if m := re.match(r'"([^"]+)":(\d+):\d+$', body):
                out = (_site(m.group(1), int(m.group(2))),)
            elif m := re.match(r"callsite\(#(loc\d*) at #(loc\d*)\)$", body):
                out = frames(m.group(1)) + frames(m.group(2))
            elif m := re.match(r'"[^"]*"\(#(loc\d*)\)$', body):
                out = frames(m.group(1))
            else:
                out = ()
            memo[ref] = out
        return memo[ref]
    return frames


def time_loop_shape(compiled) -> dict:
    """What one step of a persistent kernel's compiled time loop does, read from its TTGIR.

    weight_loads: global loads of weight slices inside the loop (0 when they stay on chip);
    weight_staging: shared-memory allocations of weights inside the loop; row_staging: the other
    shared-memory allocations (row operands staged per step); barriers: grid barriers (spin loops);
    dots and mma: the products and their kind (wgmma, mma.sync or fma).
    """
    from triton_lstm.kernels import lstm_sequence, lstm_tiles
    ttgir = compiled.asm["ttgir"]
    frames = _loc_frames(ttgir)
    loop_sites = {_source_line(k, "for i in range(0, n_steps)")
                  for k in (lstm_sequence.lstm_seq_fwd_kernel, lstm_sequence.lstm_seq_bwd_kernel)}
    weight_sites = {_source_line(lstm_tiles.load_tile, "tl.load(w_ptr")}
    lines = ttgir.splitlines()

    def op_frames(line):
        m = re.search(r"loc\(#(loc\d*)\)\s*$", line)
        return frames(m.group(1)) if m else ()

    def region_end(start):
        depth = 0
        for end in range(start, len(lines)):
            depth += lines[end].count("{") - lines[end].count("}")
            if depth == 0:
                return end
        raise ValueError("unbalanced TTGIR")

    # An scf.for carries its location on the line that closes its region.
    loops = [(i, region_end(i)) for i, line in enumerate(lines) if " scf.for " in line]
    start, end = next(((i, j) for i, j in loops if op_frames(lines[j])[:1]
                       and op_frames(lines[j])[0] in loop_sites), (None, None))
    if start is None:
        raise ValueError("no time loop in this kernel's TTGIR")
    body = lines[start + 1:end]

    def count(op, weights=None):
        return sum(1 for line in body if f" {op} " in line
                   and (weights is None or bool(set(op_frames(line)) & weight_sites) == weights))

    mma_major = re.search(r"nvidia_mma<\{versionMajor = (\d)", ttgir)
    wgmma = count("ttng.warp_group_dot")
    dots = count("tt.dot") + wgmma
    kind = "wgmma" if wgmma else ("mma.sync" if mma_major and any("#mma" in line for line in body
                                                                    if " tt.dot " in line) else "fma")
    return dict(weight_loads=count("tt.load", True), weight_staging=count("ttg.local_alloc", True),
                row_staging=count("ttg.local_alloc", False), barriers=count("scf.while"), dots=dots,
                mma=kind if dots else None)


# -- what to compile --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    """One use of the library: a cell's options, a dtype and a shape, on one target."""
    act: str
    gate_act: str
    peepholes: bool
    cell_clip: bool
    projection: str             # "none", "proj", "proj+clip"
    dtype: str                  # "float32", "float16", "bfloat16"
    shape: tuple                # (B, D, N, P): P used with a projection
    lengths: bool
    arch: int


# Every option, against every other (pairwise), at a small shape: each launch's default configuration.
OPTION_AXES = dict(act=["tanh", "relu", "sigmoid", "linear", "softsign", "hard_sigmoid", "elu", "hardsigmoid"],
                   gate_act=["sigmoid", "hard_sigmoid"], peepholes=[False, True], cell_clip=[False, True],
                   projection=["none", "proj", "proj+clip"], dtype=["float32", "float16", "bfloat16"],
                   shape=[(5, 7, 20, 12)], lengths=[False, True], arch=list(TARGETS))
# Every tuner candidate at the shapes users run (pairwise over shape, dtype, projection, target), with
# the options that cost most registers.
CANDIDATE_AXES = dict(act=["tanh"], gate_act=["sigmoid"], peepholes=[True], cell_clip=[True],
                      projection=["none", "proj+clip"], dtype=["float32", "float16", "bfloat16"],
                      shape=[(16, 80, 768, 128), (128, 80, 512, 256)], lengths=[True], arch=list(TARGETS))


def resident_sizes() -> list[Variant]:
    """The sizes the README says run with resident weights, with the options that cost most."""
    return [Variant("tanh", "sigmoid", True, True, "proj+clip" if P else "none", dtype, (64, 80, N, P or N), True,
                    arch)
            for arch, by_dtype in launch.resident_limits().items() for dtype, sizes in by_dtype.items()
            for N, P in sizes]


def variants(full: bool) -> list[tuple[Variant, str]]:
    """(variant, what to compile) pairs: the option matrix ("default": each launch's default), the
    candidate matrix ("all": every candidate of every launch) and the resident sizes ("persistent":
    every candidate of the persistent kernels). --full: the product of each matrix, not its pairs."""
    cover = product if full else pairwise
    return ([(Variant(**c), "default") for c in cover(OPTION_AXES)]
            + [(Variant(**c), "all") for c in cover(CANDIDATE_AXES)] + [(v, "persistent") for v in resident_sizes()])


def record_launches(v: Variant, cell: bool = True) -> list:
    """(kernel, Problem, launches, key constants) of every kernel a forward and backward of the
    variant's sequence (and, with ``cell``, of one cell step) picks a configuration for, with the
    launchers' real arguments: launches(cfg) lists the (args, constants) of the launches a
    configuration makes (``launch.pick_config``). Nothing runs: outputs stay uninitialised."""
    from triton_lstm import lstm_cell, lstm_sequence
    calls = []
    pick_config, run_config = launch.pick_config, launch.run_config

    def record(kernel, pb, launches, key_consts, device, before_run=None):
        if all(launch.tuning_key(pb, key_consts) != launch.tuning_key(p, c) for _, p, _, c in calls):
            calls.append((kernel, pb, launches, key_consts))
        return pick_config(kernel, pb, launches, key_consts, device, before_run)

    def compile_only(kernel, cfg, pb, args, consts, warmup=False):
        return run_config(kernel, cfg, pb, args, consts, warmup) if warmup else None  # the tuner's check compiles

    dtype = getattr(torch, v.dtype)
    B, D, N, P = v.shape
    P = P if v.projection != "none" else N
    T = 3
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.1).to(dtype).requires_grad_()

    x, h0, c0 = w(T, B, D), w(B, P), torch.zeros(B, N)
    kernel, bias = w(D + P, 4 * N), w(4 * N)
    peep = [w(N) for _ in range(3)] if v.peepholes else [None] * 3
    proj = w(N, P) if v.projection != "none" else None
    opts = dict(activation=v.act, recurrent_activation=v.gate_act, cell_clip=1.0 if v.cell_clip else None,
                proj_clip=1.0 if v.projection == "proj+clip" else None)
    lengths = torch.full((B,), T) if v.lengths else None
    launch.pick_config, launch.run_config = record, compile_only
    try:
        out, h, c = lstm_sequence(x, h0, c0, kernel[:D], kernel[D:], bias, *peep, proj, lengths, **opts)
        (out.float().sum() + c.sum()).backward()
        if cell:
            h1, c1 = lstm_cell(x[0], c0, h0, kernel, bias, *peep, proj, **opts)
            (h1.float().sum() + c1.sum()).backward()
    finally:
        launch.pick_config, launch.run_config = pick_config, run_config
    return calls


def compile_all(v: Variant, what: str) -> list[dict]:
    """The configurations of the variant's launches (``variants``: each default, every candidate, or
    every candidate of the persistent kernels), compiled for its target: one row per kernel a
    configuration launches (a stepped one, one per phase: ``phase`` names the constants it changes),
    with the resources, whether the tuner keeps the configuration (``launch.config_fits``: no spills
    but in the stepped fallback, registers and shared memory within the target's; what it keeps it
    may choose), and what is wrong: a launch none of whose configurations is kept would fail on the
    device."""
    rows = []
    with stand_in_gpu(v.arch) as target:
        for kernel, pb, launches, key_consts in record_launches(v, cell=what != "persistent"):
            if what == "default":
                space = [launch.pick_config(kernel, pb, launches, key_consts, torch.device("cpu"))]
            else:
                space = launch.candidates(pb, target.limits)
            launch_rows = []
            for cfg in space:
                built = launch.compile_launches(kernel, cfg, pb, launches)
                kept = launch.config_fits([compiled for _, compiled in built], cfg, target.limits)
                for consts, compiled in built:
                    usage = tune.resource_usage(compiled.asm["cubin"])
                    launch_rows.append(dict(kernel=pb.kernel, **dataclasses.asdict(v), config=dataclasses.asdict(cfg),
                                            phase={k: c for k, c in consts.items() if key_consts.get(k) != c},
                                            programs=launch.programs(cfg, pb), shared=compiled.metadata.shared,
                                            regs=usage["reg"], local=usage.get("local", 0),
                                            stack=usage.get("stack", 0), kept=kept))
            none_kept = [] if any(r["kept"] for r in launch_rows) else [f"no configuration fits sm_{v.arch}"]
            rows += [dict(r, problems=none_kept) for r in launch_rows]
    return rows


def arch_from_env() -> list[int]:
    """$TRITON_LSTM_AOT_ARCH's compute capabilities (default 80 90), each one of TARGETS."""
    value = os.environ.get("TRITON_LSTM_AOT_ARCH", "80 90")
    archs = value.split()
    if not archs or any(not a.isdigit() or int(a) not in TARGETS for a in archs):
        raise ValueError(f"TRITON_LSTM_AOT_ARCH: expected compute capabilities among {sorted(TARGETS)}, "
                         f"got {value!r}")
    return [int(a) for a in archs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_lstm.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full products instead of all pairs")
    parser.add_argument("--arch", type=int, nargs="+", choices=sorted(TARGETS),
                        help="compute capabilities to compile for (default: $TRITON_LSTM_AOT_ARCH, else 80 90)")
    parser.add_argument("--jobs", type=int_at_least(1), default=os.cpu_count() or 1,
                        help="compiling processes (default: CPUs)")
    parser.add_argument("--json", help="write one JSON line per compiled kernel and configuration to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: the interpreter compiles nothing")
    try:
        archs = args.arch or arch_from_env()
    except ValueError as e:
        parser.error(str(e))
    try:
        report = open(args.json, "w") if args.json else contextlib.nullcontext()
    except OSError as e:
        parser.error(f"--json: cannot write {args.json} ({e.strerror})")
    os.environ["TRITON_LSTM_AUTOTUNE"] = "0"
    todo = [(v, what) for v, what in variants(args.full) if v.arch in archs]
    rows, failures = 0, 0
    with report, concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) \
            as pool:
        for i, variant_rows in enumerate(pool.map(compile_all, *zip(*todo)), 1):
            for row in variant_rows:
                failures += bool(row["problems"])
                rows += 1
                if args.json:
                    report.write(json.dumps(row) + "\n")
                    report.flush()  # a run stopped by a time limit keeps what it compiled
                cfg, v = row["config"], todo[i - 1][0]
                print(f"[{i}/{len(todo)}] {row['kernel']:9s} sm_{v.arch} {v.dtype:8s} {v.act}/{v.gate_act} "
                      f"peep={v.peepholes:d} clip={v.cell_clip:d} {v.projection:9s} shape={v.shape} "
                      f"len={v.lengths:d} b={cfg['block_b']}/{cfg['block_n']}/{cfg['block_p']}/{cfg['block_k']} "
                      f"res={cfg['resident']:d} w={cfg['num_warps']} G={row['programs']} "
                      f"{''.join(f'{k}={c} ' for k, c in row['phase'].items())}regs={row['regs']} "
                      f"shared={row['shared']} stack={row['stack']} local={row['local']} "
                      f"{'kept' if row['kept'] else 'pruned'} {'; '.join(row['problems'])}", flush=True)
    print(f"{rows} kernels compiled for {len(todo)} variants, {failures} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
