"""Where kernels run, with which launch configuration, and how they are launched: the one place that decides.

Device queries (``gpu_device``, ``device_limits``, ``capturing``), the driver calls around a launch
(``select_device``, ``exchange_capture_mode``) and the launch itself go through this module only, so
that the CUDA host path can be tested without a GPU by replacing them.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from triton_lstm import tune
from triton_lstm.kernels import lstm_step

Tensor = torch.Tensor
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRETING = isinstance(lstm_step.lstm_step_fwd_kernel, InterpretedFunction)


def interpreting() -> bool:
    """True when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETING


# -- device queries ---------------------------------------------------------------------------------
def gpu_device(device: torch.device) -> bool:
    return device.type == "cuda"


def kernels_run_on(device: torch.device, dtype: torch.dtype) -> bool:
    """CUDA tensors run compiled kernels; CPU tensors run them only under the interpreter."""
    if dtype not in KERNEL_DTYPES:
        return False
    if gpu_device(device):
        return not interpreting()
    return device.type == "cpu" and interpreting()


class DeviceLimits(NamedTuple):
    """What bounds a launch configuration on one device."""
    sms: int                    # streaming multiprocessors: at most one persistent program each
    regs_per_sm: int
    shared_per_block: int       # opt-in shared memory per block, bytes
    arch: int                   # compute capability as 10 * major + minor (0: the interpreter)


# The interpreter has no resources to speak of; one "SM" makes its default a single program.
INTERPRETER_LIMITS = DeviceLimits(sms=1, regs_per_sm=1 << 30, shared_per_block=1 << 30, arch=0)


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> DeviceLimits:
    p = torch.cuda.get_device_properties(index)
    shared = getattr(p, "shared_memory_per_block_optin", 48 * 1024)
    return DeviceLimits(p.multi_processor_count, p.regs_per_multiprocessor, shared, 10 * p.major + p.minor)


def device_limits(device: torch.device) -> DeviceLimits:
    if not gpu_device(device) or interpreting():
        return INTERPRETER_LIMITS
    return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())


def capturing(device: torch.device) -> bool:
    """True while the current stream is being captured into a CUDA graph (no host reads then)."""
    return gpu_device(device) and torch.cuda.is_current_stream_capturing()


def select_device(device: torch.device):
    return torch.cuda.device(device)


# CUstreamCaptureMode: what a thread may call while a stream captures (GLOBAL is torch.cuda.graph's default).
CAPTURE_GLOBAL, CAPTURE_RELAXED = 0, 2


@functools.lru_cache(maxsize=None)
def _libcuda() -> ctypes.CDLL:
    return ctypes.CDLL("libcuda.so.1")


def exchange_capture_mode(mode: int) -> int:
    """Sets this thread's stream-capture mode (``cuThreadExchangeStreamCaptureMode``); returns the
    mode it replaced."""
    value = ctypes.c_int(mode)
    error = _libcuda().cuThreadExchangeStreamCaptureMode(ctypes.byref(value))
    if error:
        raise RuntimeError(f"cuThreadExchangeStreamCaptureMode failed (CUDA error {error})")
    return value.value


@contextlib.contextmanager
def loads_allowed(device: torch.device):
    """While the current stream captures a CUDA graph, this thread in relaxed capture mode: a kernel
    first launched inside the capture is compiled and loaded (``cuModuleLoadData``, which the default
    global mode refuses then) at once, outside the graph, as torch's allocator makes its cudaMalloc
    calls; the launches themselves are captured as ever."""
    if not capturing(device):
        yield
        return
    previous = exchange_capture_mode(CAPTURE_RELAXED)
    try:
        yield
    finally:
        exchange_capture_mode(previous)


@contextlib.contextmanager
def device_guard(device: torch.device):
    """Launches go to the tensors' GPU, also when another GPU is current (and may load kernels
    during a capture: ``loads_allowed``)."""
    if not gpu_device(device):
        yield
        return
    with select_device(device), loads_allowed(device):
        yield


def host_buffer(t: Tensor) -> Tensor:
    """A page-locked host tensor like ``t``, for copies from the GPU that do not block the host."""
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)


# -- precision ------------------------------------------------------------------------------------
def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    # NOTE: the interpreter's bf16 tl.dot returns garbage; bf16 operands are upcast there.
    if dtype == torch.bfloat16:
        return tl.float32 if interpreting() else tl.bfloat16
    return {torch.float32: tl.float32, torch.float16: tl.float16}[dtype]


def input_precision(dtype: torch.dtype) -> str:
    """fp32 products use tf32 only when the user allowed it for matmuls, as torch does."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# -- launch configurations --------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Tiles and compiler options of one kernel launch.

    A program owns block_b batch rows and block_n hidden units (with their four gates) or block_p
    projection columns; products run over K in block_k chunks. Persistent kernels: with resident,
    the weight slices are loaded once and stay on chip, else they are streamed every step; with
    stepped, the kernel runs one launch per phase of each step (no grid barrier, any number of
    programs), the fallback where no persistent grid builds without spilling.
    """
    block_b: int
    block_n: int
    block_p: int
    block_k: int
    resident: bool
    num_warps: int
    stepped: bool = False
    num_stages: int = 1
    maxnreg: int = 255

    def launch_options(self) -> dict:
        # fp fusion (FMA contraction) stated, not left to the Triton version's default.
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg, enable_fp_fusion=True)


@dataclass(frozen=True)
class Problem:
    """One launch's sizes: batch, input depth, units, output width, and whether there is a projection."""
    kernel: str                 # a key of KERNELS
    B: int
    D: int
    N: int
    P: int
    proj: bool
    dtype: torch.dtype


class KernelSpec(NamedTuple):
    persistent: bool
    min_block_n: int            # tl.dot needs 16 columns: 4 * block_n gate columns, or block_n
    uses_block_p: bool


KERNELS = {
    "step_fwd": KernelSpec(False, 4, False),
    "step_proj": KernelSpec(False, 4, True),
    "step_bwd": KernelSpec(False, 16, False),
    "seq_fwd": KernelSpec(True, 4, True),
    "seq_bwd": KernelSpec(True, 16, True),
}


def programs(cfg: Config, pb: Problem) -> int:
    """Grid size: batch tiles x column slices (the larger of the two phases' for the persistent kernels)."""
    btiles = triton.cdiv(pb.B, cfg.block_b)
    if pb.kernel == "step_proj":
        return btiles * triton.cdiv(pb.P, cfg.block_p)
    slices = triton.cdiv(pb.N, cfg.block_n)
    if pb.kernel.startswith("seq") and pb.proj:
        slices = max(slices, triton.cdiv(pb.P, cfg.block_p))
    return btiles * slices


def num_k_tiles(cfg: Config, pb: Problem) -> dict:
    """The static K-tile counts of a persistent kernel's resident slices (and the backward's chunk of
    partial sums reduced per load, which bounds its registers)."""
    if pb.kernel == "seq_fwd":
        return dict(NUM_K_H=triton.cdiv(pb.P, cfg.block_k), NUM_K_M=triton.cdiv(pb.N, cfg.block_k))
    slices = triton.cdiv(pb.N, cfg.block_n)
    block_s = min(16, triton.next_power_of_2(slices), max(1, 4096 // (cfg.block_b * cfg.block_p)))
    return dict(NUM_K=triton.cdiv(pb.P, cfg.block_k), BLOCK_S=block_s)


class Product(NamedTuple):
    """One product a program of a persistent kernel runs per step: a weight slice [K, cols] times
    ``rows`` rows of an operand read from memory in ``read_size``-byte elements (0: computed in
    registers), plus ``other_bytes`` of other memory traffic."""
    K: int
    cols: int
    rows: int
    read_size: int
    other_bytes: int


def _phases(cfg: Config, pb: Problem) -> list[list[Product]]:
    """The phases of one step of a persistent kernel (a grid barrier after each) and their products."""
    esize = torch.finfo(pb.dtype).bits // 8
    bb, bn, bp = cfg.block_b, cfg.block_n, cfg.block_p
    if pb.kernel == "seq_fwd":
        phases = [[Product(pb.P, 4 * bn, bb, esize, 0)]]
        if pb.proj:
            phases.append([Product(pb.N, bp, bb, esize, 0)])
        return phases
    # Backward: sum the shares of dh (slices x rows x columns, fp32), then this slice's share, its
    # W_h slice [P, 4 BLOCK_N] times dz^T (computed in registers), written as rows x P fp32.
    shares = triton.cdiv(pb.N, bn) * bb * bp * 4
    share = Product(pb.P, 4 * bn, bb, 0, bb * pb.P * 4)
    if not pb.proj:
        return [[share._replace(other_bytes=share.other_bytes + shares)]]
    return [[Product(0, 0, 0, 0, shares)], [Product(pb.P, bn, bb, 4, 0), share]]


def shared_estimate(cfg: Config, pb: Problem) -> int:
    """Shared memory a resident configuration needs: its weight slices plus one staged
    [rows, block_k] tile of each product's row operand."""
    esize = torch.finfo(pb.dtype).bits // 8
    return sum((triton.cdiv(pr.K, cfg.block_k) * cfg.block_k * pr.cols + pr.rows * cfg.block_k) * esize
               for phase in _phases(cfg, pb) for pr in phase if pr.K)


# A static model of one step (microseconds per program, all programs in parallel) to rank the
# candidates before anything is compiled: L2 traffic at a per-SM share of the L2 bandwidth, matrix
# products at a per-SM share of the dense rate, resident weights re-read from shared memory, and one
# grid barrier per phase. Rough by design; the tuner measures.
_L2_BYTES_PER_US_PER_SM = 75e3
_SMEM_BYTES_PER_US = 200e3
_FLOPS_PER_US_PER_SM = {torch.float16: 7.5e6, torch.bfloat16: 7.5e6, torch.float32: 0.5e6}
_BARRIER_US = 1.0


def step_time_estimate(cfg: Config, pb: Problem) -> float:
    esize = torch.finfo(pb.dtype).bits // 8
    total = 0.0
    for phase in _phases(cfg, pb):
        l2 = smem = flops = 0.0
        for pr in phase:
            weights = pr.K * pr.cols * esize
            l2 += pr.rows * pr.K * pr.read_size + pr.other_bytes + (0 if cfg.resident else weights)
            smem += weights if cfg.resident else 0
            flops += 2 * max(pr.rows, 16) * pr.K * pr.cols
        total += max(l2 / _L2_BYTES_PER_US_PER_SM, smem / _SMEM_BYTES_PER_US,
                     flops / _FLOPS_PER_US_PER_SM[pb.dtype]) + _BARRIER_US
    return total


def _block_sizes(low: int, high: int, size: int) -> list[int]:
    """Powers of two from low up to the smallest that covers size, at most high."""
    top = max(low, min(high, triton.next_power_of_2(max(size, 1))))
    return [b for b in (4, 8, 16, 32, 64, 128) if low <= b <= top]


# Sizes (num_units, num_proj or 0) at which the README says the weights stay on chip, per target and
# dtype, at batch 64, with Triton 3.9 (the ahead-of-time compile checks that a resident configuration
# builds there).
RESIDENT_LIMITS = {
    90: {"float16": [(1024, 0), (768, 192)], "bfloat16": [(1024, 0), (768, 192)], "float32": [(512, 0), (512, 128)]},
    80: {"float16": [(768, 0), (768, 192)], "bfloat16": [(768, 0), (768, 192)], "float32": [(384, 0)]},
}
# Earlier Triton (3.6, the version checked) needs more registers: on sm_80 its half-precision LSTMP
# backward spills in every resident tiling above num_proj 128.
EARLIER_TRITON_SM80_LSTMP = (768, 128)


def resident_limits() -> dict:
    """RESIDENT_LIMITS for the installed Triton."""
    if tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", triton.__version__).groups()) >= (3, 9):
        return RESIDENT_LIMITS
    sm80 = {dtype: [EARLIER_TRITON_SM80_LSTMP if P and dtype != "float32" else (N, P) for N, P in sizes]
            for dtype, sizes in RESIDENT_LIMITS[80].items()}
    return {**RESIDENT_LIMITS, 80: sm80}


def block_k(pb: Problem, resident: bool) -> int:
    """K chunk. Step kernels: 32 (fp32) or 64 elements. Persistent kernels: twice that for streamed
    products; for resident slices at least 64 and wide enough that a slice is at most 8 tiles (each
    tile is a separate, unrolled product: fewer, wider tiles build faster and, in fp32, need fewer
    registers)."""
    base = 32 if pb.dtype == torch.float32 else 64
    if not KERNELS[pb.kernel].persistent:
        return base
    if not resident:
        return 2 * base
    return max(64, min(512, triton.next_power_of_2(triton.cdiv(_longest_k(pb), 8))))


def _longest_k(pb: Problem) -> int:
    """The longest K of a persistent kernel's products (it does not depend on the tiles)."""
    return max(pr.K for phase in _phases(Config(16, 16, 16, 64, True, 4), pb) for pr in phase)


def candidates(pb: Problem, limits: DeviceLimits) -> list[Config]:
    """The configurations worth trying for a problem, best first by the static model.

    Persistent kernels: never more programs than SMs (co-residency); resident slices only where
    the estimated shared memory fits (the build decides in the end); under the interpreter, one
    program covering everything where tiles of at most 128 allow. Step kernels: the grid covers
    the problem with tiles no wider than it.
    """
    spec = KERNELS[pb.kernel]
    out = []
    for bb in _block_sizes(16, 128, pb.B):
        for bn in _block_sizes(spec.min_block_n, 64, pb.N):
            if pb.kernel == "seq_bwd" and not pb.proj:
                bps = [bn]  # a program owns the same columns of dh and of the gates
            else:
                bps = _block_sizes(16, 64, pb.P) if spec.uses_block_p and pb.proj else [16]
            for bp in bps:
                for resident in ((True, False) if spec.persistent else (False,)):
                    # NOTE: the compiler keeps resident slices in registers where the product's
                    # weight operand comes from registers (it hoists their shared-memory reads out
                    # of the time loop); 8 warps give the persistent kernels the whole register file
                    # (at 4 warps they spill from N = 512, fp16, on).
                    cfg = Config(bb, bn, bp, block_k(pb, resident), resident, num_warps=8 if spec.persistent else 4)
                    if spec.persistent:
                        # (The interpreter runs several programs phase by phase: no co-residency.)
                        if programs(cfg, pb) > limits.sms and limits is not INTERPRETER_LIMITS:
                            continue
                        if resident and shared_estimate(cfg, pb) > limits.shared_per_block:
                            continue
                    out.append(cfg)
    if limits is INTERPRETER_LIMITS:
        # Fewest programs, then the smallest tiles that reach it.
        return sorted(out, key=lambda c: (programs(c, pb), c.block_b * c.block_n * c.block_p, not c.resident))[:1]
    if spec.persistent:
        # Within 0.1 us of each other by the model, more programs (smaller tiles, fewer registers)
        # first. The best three resident configurations, then the best streaming one (what runs
        # where no resident slice builds without spilling), then the stepped fallback: the smallest
        # tiles (fewest registers) in as many programs as they take.
        ranked = sorted(out, key=lambda c: (round(step_time_estimate(c, pb), 1), -programs(c, pb)))
        resident = [c for c in ranked if c.resident][:3]
        if pb.kernel == "seq_bwd":
            # The backward's best resident configuration once more with one K tile per slice (up to
            # 512 rows), where that differs and fits: Triton 3.6 spills the half-precision LSTMP
            # backward at 768 / 192 in every 64-row tiling, not in one 256-row tile.
            wide = max(block_k(pb, True), min(512, triton.next_power_of_2(_longest_k(pb))))
            one_tile = [dataclasses.replace(c, block_k=wide) for c in resident[:1]]
            resident += [c for c in one_tile
                         if c not in resident and shared_estimate(c, pb) <= limits.shared_per_block]
        stepped = Config(16, 16, 16, block_k(pb, False), False, num_warps=8, stepped=True)
        return resident + [c for c in ranked if not c.resident][:1] + [stepped]
    # Step kernels: fill the GPU first, then the fewest re-reads of the weights (largest rows). A
    # handful: compiling is what a first call of a shape waits for.
    ranked = sorted(out, key=lambda c: (programs(c, pb) < limits.sms and -programs(c, pb), -c.block_b, c.block_n))
    more_warps = [dataclasses.replace(c, num_warps=8) for c in ranked[:4]
                  if c.block_b * max(4 * c.block_n, c.block_p) >= 64 * 64]
    return ranked[:3] + more_warps[:1]


# -- launching ------------------------------------------------------------------------------------
def config_kwargs(cfg: Config, pb: Problem) -> dict:
    """A configuration as kernel keyword arguments: block constexprs and launch options."""
    kw = dict(BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **cfg.launch_options())
    if KERNELS[pb.kernel].uses_block_p:
        kw["BLOCK_P"] = cfg.block_p
    if KERNELS[pb.kernel].persistent:
        kw.update(RESIDENT=cfg.resident, **num_k_tiles(cfg, pb))
    return kw


def kernel_constants(opts, dtype: torch.dtype, kernel, **flags) -> dict:
    """The scalar and constexpr keyword arguments ``kernel`` takes of: the cell's options, the dot
    operand dtype and precision, and ``flags``."""
    consts = dict(**opts.kernel_args(), DOT_DTYPE=dot_dtype(dtype), INPUT_PRECISION=input_precision(dtype), **flags)
    return {k: v for k, v in consts.items() if k in kernel.arg_names}


def tuning_key(pb: Problem, consts: dict) -> str:
    """Shape and option key of a launch: sizes and the constexpr flags, not the data."""
    flags = ",".join(f"{k}={v}" for k, v in sorted(consts.items()) if k.isupper())
    dims = f"B={pb.B},D={pb.D},N={pb.N},P={pb.P}"
    return f"{str(pb.dtype).replace('torch.', '')}|{dims}|{flags}"


def _cooperative_error(e: Exception) -> bool:
    return "COOPERATIVE_LAUNCH_TOO_LARGE" in str(e) or "cooperative launch" in str(e).lower()


def co_resident(cfg: Config, pb: Problem) -> bool:
    """Whether every program of the launch must be resident at once: a persistent kernel's programs
    meet at grid barriers, unless the configuration is stepped (one launch per phase)."""
    return KERNELS[pb.kernel].persistent and not cfg.stepped


def run_config(kernel, cfg: Config, pb: Problem, args, consts: dict, warmup: bool = False):
    """Compile (warmup) or launch ``kernel`` with one configuration; ``args`` are its positional
    arguments, or a function of the configuration giving them (buffers sized by the tiles).
    Persistent kernels launch cooperatively on a GPU: the driver runs every program at once or
    refuses the launch."""
    if callable(args):
        args = args(cfg)
    persistent = co_resident(cfg, pb) and not interpreting()
    kw = dict(consts, **{k: v for k, v in config_kwargs(cfg, pb).items()
                         if k in kernel.arg_names or k in cfg.launch_options()})
    if persistent:
        kw["launch_cooperative_grid"] = True
    grid = (programs(cfg, pb),)
    if warmup:
        return kernel.warmup(*args, grid=grid, **kw)
    try:
        return kernel[grid](*args, **kw)
    except RuntimeError as e:
        if persistent and _cooperative_error(e):
            raise RuntimeError(
                f"the persistent LSTM kernel needs its {grid[0]} programs resident at once, and the GPU refused "
                f"(fewer SMs than it reports can take them: the kernel's registers and shared memory, or an SM "
                f"limit such as MPS's): {e}. Pin fewer programs with TRITON_LSTM_CONFIG (e.g. block_b=64)") from e
        raise


def compile_launches(kernel, cfg: Config, pb: Problem, launches) -> list:
    """(constants, compiled kernel) of each distinct kernel a configuration launches (``launches(cfg)``
    as ``pick_config``'s; a stepped one launches each phase's kernel once a step, all with one
    constants dict), compiled, not run."""
    distinct = {}
    for args, consts in launches(cfg):
        distinct.setdefault(id(consts), (args, consts))
    return [(consts, run_config(kernel, cfg, pb, args, consts, warmup=True)) for args, consts in distinct.values()]


def config_fits(compiled: list, cfg: Config, limits: DeviceLimits) -> bool:
    """The tuner's resource check (``tune.fits``) of a configuration's compiled kernels, each of them.
    The stepped fallback comes last, for when nothing else builds: a spill there (its backward's
    gate-gradient phase comes near the register limit) costs speed, not the launch."""
    return all(tune.fits(c, cfg, limits, spills=cfg.stepped) for c in compiled)


def pick_config(kernel, pb: Problem, launches, key_consts: dict, device: torch.device, before_run=None) -> Config:
    """The configuration ``tune.pick`` chooses (compiling and timing candidates on a GPU when the
    shape is new). launches(cfg) lists the (args, consts) of the launches one run makes with a
    configuration (several for a stepped one); key_consts are the constants that key the choice.
    before_run() restores in/out buffers before each timed run, and once more after the last, so that
    the caller's own launch starts from them too."""
    limits = device_limits(device)
    timed = False

    def run(cfg: Config, warmup: bool):
        nonlocal timed
        if warmup:
            return [compiled for _, compiled in compile_launches(kernel, cfg, pb, launches)]
        timed = True
        if before_run is not None:
            before_run()
        for args, consts in launches(cfg):
            run_config(kernel, cfg, pb, args, consts)

    def fits(compiled: list, cfg: Config) -> bool:
        return config_fits(compiled, cfg, limits)

    def finish(cfg: Config) -> Config:
        if pb.kernel == "seq_bwd" and not pb.proj:
            # Without a projection a program owns the same columns of dh and of the gates.
            cfg = dataclasses.replace(cfg, block_p=cfg.block_n)
        check_config(cfg, pb, limits)
        return cfg

    cfg = tune.pick(pb.kernel, tuning_key(pb, key_consts), lambda: candidates(pb, limits), run, fits,
                    compiled=gpu_device(device) and not interpreting(), capturing=capturing(device), device=limits,
                    finish=finish)
    if timed and before_run is not None:
        before_run()
    return cfg


def check_config(cfg: Config, pb: Problem, limits: DeviceLimits) -> None:
    """A configuration the kernel cannot run (a pin, a cached entry) is a ValueError naming the field."""
    spec = KERNELS[pb.kernel]
    problems = [f"{name}={value} < 16 (tl.dot's minimum)" for name, value in
                (("block_b", cfg.block_b), ("block_k", cfg.block_k), ("block_p", cfg.block_p)) if value < 16]
    if cfg.block_n < spec.min_block_n:
        problems.append(f"block_n={cfg.block_n} < {spec.min_block_n}, the least {pb.kernel} can use")
    if co_resident(cfg, pb) and limits is not INTERPRETER_LIMITS and programs(cfg, pb) > limits.sms:
        problems.append(f"{programs(cfg, pb)} programs > {limits.sms} SMs (all must be resident at once)")
    if problems:
        raise ValueError(f"{pb.kernel} cannot run {cfg} for B={pb.B}, N={pb.N}, P={pb.P}: "
                         + "; ".join(problems))


def launch_kernel(kernel, pb: Problem, args, consts: dict, device: torch.device) -> Config:
    """Pick a configuration (``pick_config``) and launch once with it, on the tensors' device."""
    with device_guard(device):
        cfg = pick_config(kernel, pb, lambda cfg: [(args, consts)], consts, device)
        run_config(kernel, cfg, pb, args, consts)
    return cfg
