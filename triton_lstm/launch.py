"""Where kernels run and with which launch configuration: the one place that decides both."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from triton.runtime.interpreter import InterpretedFunction

from triton_lstm.kernels import lstm_step

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRETING = isinstance(lstm_step.lstm_step_fwd_kernel, InterpretedFunction)


def interpreting() -> bool:
    """True when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETING


def kernels_run_on(device: torch.device, dtype: torch.dtype) -> bool:
    """CUDA tensors run compiled kernels; CPU tensors run them only under the interpreter."""
    if dtype not in KERNEL_DTYPES:
        return False
    if device.type == "cuda":
        return not interpreting()
    return device.type == "cpu" and interpreting()


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    # NOTE: the interpreter's bf16 tl.dot returns garbage; bf16 operands are upcast there.
    if dtype == torch.bfloat16:
        return tl.float32 if interpreting() else tl.bfloat16
    return {torch.float32: tl.float32, torch.float16: tl.float16}[dtype]


def input_precision(dtype: torch.dtype) -> str:
    """fp32 products use tf32 only when the user allowed it, as torch does."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@dataclass(frozen=True)
class StepConfig:
    block_b: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: int

    def launch_options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg)


def step_candidates(batch: int, num_units: int, dtype: torch.dtype) -> list[StepConfig]:
    """The default configuration first, then the space the tuner searches (blocks no wider than needed)."""
    default = step_config(batch, num_units, dtype)
    b_max = max(16, triton.next_power_of_2(batch))
    n_max = max(16, triton.next_power_of_2(num_units))
    space = [StepConfig(block_b=bb, block_n=bn, block_k=bk, num_warps=w, num_stages=1, maxnreg=255)
             for bb in (16, 32, 64) if bb <= b_max
             for bn in (16, 32, 64) if bn <= n_max
             for bk in (32, 64) for w in (4, 8)]
    return [default] + [c for c in space if c != default]


def step_config(batch: int, num_units: int, dtype: torch.dtype) -> StepConfig:
    """Launch configuration of the fused step kernels (tl.dot needs every block >= 16).

    NOTE: one stage: the K loops of a step are a few iterations long, and software pipelining
    them (num_stages=3) pushed the fp32 kernels past 255 registers into spills on sm_90.
    NOTE: maxnreg: left alone, ptxas (CUDA 13.4, --regAllocOptLevel=2) capped the projection
    variants at 128 registers and spilled 16 bytes; with the cap lifted they use 133-157.
    """
    block_b = 16 if batch <= 16 else 32
    block_n = 32 if num_units > 16 else 16
    return StepConfig(block_b=block_b, block_n=block_n, block_k=32, num_warps=4 if block_b == 16 else 8,
                      num_stages=1, maxnreg=255)


def sequence_candidates(batch: int, num_units: int, out_size: int, dtype: torch.dtype, device: torch.device,
                        programs: int | None = None) -> list[SequenceConfig]:
    """Default first; then block shapes x grid sizes, never more programs than SMs (co-residency)."""
    default = sequence_config(batch, num_units, out_size, dtype, device, programs)
    if device.type != "cuda" or programs is not None:
        return [default]
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    space = []
    for step in step_candidates(batch, num_units, dtype):
        tiles = triton.cdiv(batch, step.block_b) * triton.cdiv(max(num_units, out_size), step.block_n)
        for grid in sorted({min(tiles, sms), min(tiles, max(1, sms // 2))}):
            space.append(SequenceConfig(block_b=step.block_b, block_n=step.block_n, block_k=step.block_k,
                                        programs=grid, num_warps=step.num_warps, num_stages=1, maxnreg=255))
    return [default] + [c for c in space if c != default]


@dataclass(frozen=True)
class SequenceConfig(StepConfig):
    programs: int               # grid size: never more than can be resident at once


def sequence_config(batch: int, num_units: int, out_size: int, dtype: torch.dtype, device: torch.device,
                    programs: int | None = None) -> SequenceConfig:
    """Launch configuration of the persistent sequence kernels.

    The grid is at most one program per SM: every program fits on an SM by itself, so all of
    them are resident together and the grid barrier cannot deadlock. Under the interpreter the
    default is one program, which runs the whole kernel, barriers included, as on a GPU.
    """
    step = step_config(batch, num_units, dtype)
    block_b, block_n = step.block_b, step.block_n
    tiles = triton.cdiv(batch, block_b) * triton.cdiv(max(num_units, out_size), block_n)
    if programs is None:
        if device.type == "cuda":
            programs = min(tiles, torch.cuda.get_device_properties(device).multi_processor_count)
        else:
            programs = 1
    return SequenceConfig(block_b=block_b, block_n=block_n, block_k=step.block_k, programs=max(1, programs),
                          num_warps=step.num_warps, num_stages=1, maxnreg=step.maxnreg)


def config_kwargs(cfg) -> dict:
    """A configuration as kernel keyword arguments: block constexprs and launch options."""
    return dict(BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **cfg.launch_options())


def kernel_constants(opts, dtype: torch.dtype, peepholes, projection, **extra) -> dict:
    """Scalar and constexpr keyword arguments every kernel takes: the cell's options and flags,
    the dot operand dtype and precision, plus ``extra``."""
    return dict(**opts.kernel_args(), USE_PEEPHOLES=peepholes[0] is not None, HAS_PROJ=projection is not None,
                DOT_DTYPE=dot_dtype(dtype), INPUT_PRECISION=input_precision(dtype), **extra)


def launch_tuned(kernel, name: str, args: tuple, consts: dict, grid, default, candidates, device: torch.device,
                 key: str, before_run=None):
    """Launch ``kernel`` with the configuration ``tune.pick`` chooses (``default`` without tuning,
    else among ``candidates()``).

    grid(cfg) gives the grid; consts are the constexpr and scalar keyword arguments besides the
    configuration's own; before_run() (optional) restores in/out buffers so that every timed run
    computes the same thing. Returns the compiled kernel of the final run.
    """
    from triton_lstm import tune

    def launch(cfg, warmup: bool):
        kw = dict(consts, **config_kwargs(cfg))
        if warmup:
            return kernel.warmup(*args, grid=grid(cfg), **kw)
        if before_run is not None:
            before_run()
        return kernel[grid(cfg)](*args, **kw)

    return launch(tune.pick(name, key, default, candidates, launch, device), False)


def tuning_key(dtype: torch.dtype, dims: dict, consts: dict) -> str:
    """Shape and option key of a launch: dims and the constexpr flags, not the data."""
    flags = ",".join(f"{k}={v}" for k, v in sorted(consts.items()) if k.isupper())
    return f"{str(dtype).replace('torch.', '')}|" + ",".join(f"{k}={v}" for k, v in dims.items()) + f"|{flags}"
