"""Where kernels run and with which launch configuration: the one place that decides both."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from triton_lstm.kernels import lstm_step

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(lstm_step.lstm_step_fwd_kernel, InterpretedFunction)


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


@dataclass(frozen=True)
class SequenceConfig:
    block_b: int
    block_n: int
    block_k: int
    programs: int               # grid size: never more than can be resident at once
    num_warps: int
    num_stages: int
    maxnreg: int

    def launch_options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages, maxnreg=self.maxnreg)


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
