"""Benchmarks of triton_lstm against torch.nn.LSTM on a CUDA GPU or on the CPU.

On a GPU nn.LSTM runs cuDNN, and torch.compile and FlashRNN are measured too, with the floor per
step; on a CPU nn.LSTM runs oneDNN or aten's own loop.

``python -m benchmarks.run`` (``make bench``) picks its suite from the machine:

* With a CUDA GPU, the standard suite (``--list`` shows its jobs), under a time budget (default
  ``DEFAULT_BUDGET_S``; ``--budget-s`` changes it) with an ``[i/N]`` progress count and an ETA; what the
  budget leaves is listed and ``--resume`` continues it. ``--quick`` (``--suite quick``) is a subset
  that fits a few minutes.
* Without one, the CPU suite (``--suite cpu``, a few minutes on 2 cores): triton_lstm on CPU tensors
  against nn.LSTM at PyTorch's fastrnns default shape, B=16 with hidden 256, LSTMP and a small batch x
  hidden grid, each with a cell nn.LSTM computes and one with TF's extras (peepholes, clips), forward
  and forward+backward; ``--suite cpu`` also runs it on a GPU machine's CPU.

Each appends one JSON line per case x dtype x provider x mode to
``benchmarks/results/<machine>.jsonl`` (the GPU's name, or ``cpu-<model>-<threads>t``), renders the
plots from every results file (``benchmarks.plot``) and prints a short table last.

Providers (``PROVIDERS``; each row also records ``code_path``, what ran, read from the operators it called):
    lstm_sequence   ``triton_lstm.lstm_sequence``: the persistent kernels on a GPU, the CPU path on a CPU
    lstm_module     ``triton_lstm.LSTM``, the nn.LSTM drop-in, as users call it (CPU suite)
    step_loop       a Python loop over ``triton_lstm.lstm_cell``, one fused step kernel per step (GPU)
    nn_lstm         ``torch.nn.LSTM`` (``proj_size`` for LSTMP, a PackedSequence for lengths) with the same
                    weights; it has no peepholes or clips, so it runs those cases without them (the row's
                    note says so)
    torch_compile   a Python loop over ``lstm_cell_reference`` under ``torch.compile(dynamic=True)``
                    (GPU; quick suite: fp32 only)
    flashrnn        ``flashrnn.flashrnn`` (backend cuda_fused), if ``import flashrnn`` works
A provider that cannot run a case (unsupported option, out of memory, dtype) gets a row whose
``missing`` field holds the reason; it never stops the run. A provider that computes the case's cell
on the shared weights is first checked against the fp32 reference (``check_rel_err``,
||out - ref|| / ||ref||); over ``CHECK_TOLERANCE`` it is recorded as missing ("wrong result").

Modes: ``fwd`` the training forward (inputs and weights require grad, state saved for backward);
``bwd`` backward alone (forward once, then ``torch.autograd.grad(..., retain_graph=True)`` timed);
``fwd+bwd`` both. Gradients are taken of the outputs [T, B, P] (random upstream gradient) with
respect to x and every weight.

Timing (the row's ``timing`` says which): on a GPU, two warm-up calls, then ``triton.testing.do_bench``:
``ms`` is the median (CUDA events). On a CPU, every provider and mode of a case in one process,
interleaved: a warm-up call each, then rounds timing one call of each, at least ``CPU_ROUNDS`` and
more until the case has spent ``CPU_MIN_SECONDS`` (``rounds``); ``ms`` is the best round (host
clock), ``ms_median`` the median; the row records the load average when the case began.

Floor per step (GPU rows): ``mult * F / R + barriers * L`` where F = 2*B*P*4N (+ 2*B*N*P with a
projection) is the recurrent product of one step, mult = 1 / 2 / 3 for fwd / bwd / fwd+bwd, R the
dense matmul rate at that dtype (a large ``torch.matmul``, measured once per run), L the grid-barrier
latency (the per-step time of ``lstm_sequence`` at B=1, D=N=16, T=1024 with one program per SM,
measured once per run) and barriers = 1 per forward step (2 with a projection) + 2 per backward step.
The hoisted input GEMM (x @ W_x) is off the serial path and not in the floor.

fp32 on a GPU: by default tf32 is off for both torch matmuls and cuDNN (``--tf32`` turns both on), so
every provider computes in full fp32; the row records both flags.

On a GPU the kernels tune on their first call of a shape (unless TRITON_LSTM_AUTOTUNE=0): each row
records ``first_call_tune_s``, the seconds the tuner spent compiling and timing candidates for the
kernels first called while that row was made (a provider's set-up and check count toward its first
row; 0 when the tuning cache already had them), and the log prints it.

Results: ``--results FILE`` overrides the results file, ``--out DIR`` also writes this run's rows
(``results.jsonl``), the log (``bench_log.txt``) and the final table (``summary.txt``) there,
``--resume`` skips jobs already in the results file for this machine and these versions, and
``--budget-s`` stops starting new jobs after that many seconds. ``--list`` prints the jobs and exits
(no GPU needed); ``--smoke`` runs the suite's tiny version to check the harness (its rows are not
results: it requires ``--results``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
import torch._dynamo
import torch._functorch.config
import triton
import triton.testing

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import triton_lstm
from benchmarks import plot
from triton_lstm import lstm_cell, lstm_cell_reference, lstm_sequence, lstm_sequence_reference, tune
from triton_lstm.convert import tf_to_torch_lstm

Tensor = torch.Tensor
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"

PROVIDERS = plot.PROVIDERS
GPU_PROVIDERS = ("lstm_sequence", "step_loop", "nn_lstm", "torch_compile", "flashrnn")
CPU_PROVIDERS = ("lstm_sequence", "lstm_module", "nn_lstm")
MODES = plot.MODES
CPU_MODES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRID_BATCH = (1, 8, 32, 64, 128, 256)
GRID_HIDDEN = (128, 256, 512, 1024, 2048)
SEQ_LENS = (64, 256, 1024)
LSTMP_HIDDEN = (256, 512, 1024, 2048)
FORGET_BIAS = 1.0
LSTMP_CLIPS = dict(cell_clip=3.0, proj_clip=1.0)
# ||out - ref|| / ||ref|| against the fp32 reference, per input dtype (errors compound over T steps).
CHECK_TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 1e-1}
BARRIER_SHAPE = dict(T=1024, B=1, D=16, N=16)
# The standard GPU suite outlasts one sitting: without --budget-s it stops starting jobs after this.
DEFAULT_BUDGET_S = {"standard": 1200.0, "quick": 240.0}
# CPU timing: at least CPU_ROUNDS interleaved rounds, more until a case has spent CPU_MIN_SECONDS.
CPU_ROUNDS = 5
CPU_MIN_SECONDS = 3.0
CPU_GRID_BATCH = (8, 32, 64)
CPU_GRID_HIDDEN = (128, 256, 512)


@dataclass(frozen=True)
class Case:
    """One problem: shapes and TF options. group names the sweep it belongs to (the plots select by it)."""
    group: str                  # "default" (fastrnns), "lstmp", "seq_len", "grid", "smoke"
    T: int
    B: int
    D: int                      # input size
    N: int                      # num_units (hidden size)
    P: Optional[int] = None     # num_proj (None: no projection, P = N)
    peepholes: bool = False
    cell_clip: Optional[float] = None
    proj_clip: Optional[float] = None
    lengths: bool = False       # variable lengths (TF's sequence_length; a PackedSequence for nn.LSTM)

    @property
    def out_size(self) -> int:
        return self.P or self.N

    def label(self) -> str:
        s = f"{self.group} T={self.T} B={self.B} D={self.D} N={self.N}"
        if self.P:
            s += f" P={self.P}"
        if self.peepholes:
            s += " peep"
        if self.cell_clip is not None or self.proj_clip is not None:
            s += f" clips={self.cell_clip}/{self.proj_clip}"
        if self.lengths:
            s += " lengths"
        return s


@dataclass(frozen=True)
class Job:
    """One measurement: a case at a dtype, by a provider, in a mode."""
    case: Case
    dtype: str                  # a key of DTYPES
    provider: str
    mode: str

    def key(self) -> tuple:
        return (*dataclasses.astuple(self.case), self.dtype, self.provider, self.mode)


# PyTorch's benchmarks/fastrnns default: T=100, B=64, input = hidden = 512.
DEFAULT_CASE = Case("default", 100, 64, 512, 512)


def lstmp_case(H: int) -> Case:
    """LSTMP at the fastrnns T and B: num_proj = H/4, peepholes, cell and projection clipping."""
    return Case("lstmp", 100, 64, H, H, P=H // 4, peepholes=True, **LSTMP_CLIPS)


def jobs_for(cases, dtypes, providers, modes) -> list[Job]:
    """Every combination, case-major (the runner makes inputs once per consecutive case and dtype)."""
    return [Job(c, d, p, m) for c in cases for d in dtypes for p in providers for m in modes]


def standard_suite() -> list[Job]:
    """The GPU suite: fastrnns default, LSTMP, T sweep, batch x hidden grid.

    Ordered so that a run cut short by the time budget has the most useful part: the headline cases,
    then ours and nn.LSTM over the sweeps (the heatmaps), then the other providers over the sweeps.
    """
    dtypes = list(DTYPES)
    jobs = jobs_for([DEFAULT_CASE], dtypes, GPU_PROVIDERS, MODES)
    jobs += jobs_for([lstmp_case(H) for H in LSTMP_HIDDEN], dtypes, GPU_PROVIDERS, MODES)
    # T=256 at B=64, H=512 is a grid point; the plots take it from there.
    sweeps = [Case("grid", 256, B, H, H) for H in GRID_HIDDEN for B in GRID_BATCH]
    sweeps += [Case("seq_len", T, 64, 512, 512) for T in SEQ_LENS if T != 256]
    first = ("lstm_sequence", "nn_lstm")
    jobs += jobs_for(sweeps, dtypes, first, MODES)
    jobs += jobs_for(sweeps, dtypes, [p for p in GPU_PROVIDERS if p not in first], MODES)
    return jobs


def quick_suite() -> list[Job]:
    """A few minutes on a GPU: the headline cases in full, a 3 x 3 part of the grid and T=1024 (fwd+bwd)."""
    dtypes = list(DTYPES)
    # torch.compile costs two compiles (forward, backward) per dtype and option set: fp32 plain only.
    others = [p for p in GPU_PROVIDERS if p != "torch_compile"]
    jobs = jobs_for([DEFAULT_CASE], ["fp32"], GPU_PROVIDERS, MODES)
    jobs += jobs_for([DEFAULT_CASE], ["fp16", "bf16"], others, MODES)
    jobs += jobs_for([lstmp_case(512)], dtypes, others, MODES)
    grid = [Case("grid", 256, B, H, H) for H in (256, 512, 1024) for B in (8, 64, 256)]
    jobs += jobs_for(grid, ["fp32", "fp16"], ["lstm_sequence", "nn_lstm"], ["fwd+bwd"])
    jobs += jobs_for([Case("seq_len", 1024, 64, 512, 512)], ["fp32", "fp16"], ["lstm_sequence", "nn_lstm"],
                     ["fwd+bwd"])
    return jobs


def smoke_suite() -> list[Job]:
    """Tiny shapes that check the GPU suite's harness on any device (every provider, mode and dtype once)."""
    cases = [Case("smoke", 8, 4, 16, 16), Case("smoke", 8, 4, 16, 32, P=8, peepholes=True, **LSTMP_CLIPS)]
    return jobs_for(cases, list(DTYPES), GPU_PROVIDERS, MODES)


def with_extras(case: Case) -> Case:
    """The case's cell with TF's extras: peepholes, a cell clip, and a projection clip with a projection."""
    return dataclasses.replace(case, peepholes=True, cell_clip=LSTMP_CLIPS["cell_clip"],
                               proj_clip=LSTMP_CLIPS["proj_clip"] if case.P else None)


def cpu_suite() -> list[Job]:
    """The CPU suite (T=100, fp32): the fastrnns default, B=16 x 256, LSTMP (B=32, 512, num_proj 128)
    and the default with variable lengths, by all CPU providers; a batch x hidden grid by
    lstm_sequence and nn.LSTM. Each shape twice: a cell nn.LSTM computes, and with TF's extras."""
    headline = [DEFAULT_CASE, Case("small", 100, 16, 256, 256), Case("lstmp", 100, 32, 512, 512, P=128),
                Case("lengths", 100, 64, 512, 512, lengths=True)]
    # B=64, H=512 is the default case; the plots take that grid point from there.
    grid = [Case("grid", 100, B, H, H) for H in CPU_GRID_HIDDEN for B in CPU_GRID_BATCH if (B, H) != (64, 512)]
    jobs = []
    for cases, providers in ((headline, CPU_PROVIDERS), (grid, ("lstm_sequence", "nn_lstm"))):
        for case in cases:
            jobs += jobs_for([case, with_extras(case)], ["fp32"], providers, CPU_MODES)
    return jobs


def cpu_smoke_suite() -> list[Job]:
    """The CPU suite at tiny shapes (checks its harness in seconds)."""
    cases = [Case("smoke", 6, 3, 8, 8), Case("smoke", 6, 3, 8, 12, P=5, lengths=True)]
    return jobs_for([c for case in cases for c in (case, with_extras(case))], ["fp32"], CPU_PROVIDERS, CPU_MODES)


SUITES = dict(standard=standard_suite, quick=quick_suite, cpu=cpu_suite)
SMOKE_SUITES = dict(standard=smoke_suite, quick=smoke_suite, cpu=cpu_smoke_suite)


# ----------------------------------------------------------------------------------------------
# Environment, floor

def _command_output(cmd: list[str], cwd: Optional[Path] = None) -> tuple[Optional[str], str]:
    """(first line of stdout, '') or (None, why it could not be read)."""
    if shutil.which(cmd[0]) is None:
        return None, f"{cmd[0]} not found"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        return None, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "", ""


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what the platform module says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _built_with(pattern: str) -> Optional[str]:
    """A library version from torch's build configuration (e.g. oneDNN, MKL), or None."""
    found = re.search(pattern, torch.__config__.show())
    return found.group(1) if found else None


def environment(device: torch.device, suite: str) -> dict:
    """The fields every row carries: machine, driver, versions, date, code revision, precision flags.

    Args:
        device: the device measured. CUDA: name, SMs, capability, driver, CUDA and cuDNN versions.
            CPU: model, torch's threads, cores, the vector ISA torch uses, oneDNN and MKL versions.
        suite: the suite's name ("standard", "quick", "cpu"; "smoke" for the tiny versions), as is.
    Returns:
        A dict; ``machine`` names the machine (GPU name, or CPU model and threads) and
        ``machine_slug`` its results file.
    """
    env = dict(suite=suite, device=device.type, torch=torch.__version__, triton=triton.__version__,
               triton_lstm=triton_lstm.__version__, python=sys.version.split()[0],
               date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    commit, why = _command_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO)
    if commit is not None:
        dirty, _ = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
        commit += "+dirty" if dirty else ""
    elif os.environ.get("TRITON_LSTM_GIT"):
        # A tree copied without .git (a GPU machine): the caller names the commit it was copied from.
        commit, why = os.environ["TRITON_LSTM_GIT"], f"from TRITON_LSTM_GIT ({why})"
    env.update(git=commit, git_note=why or None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver, why = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env.update(gpu=props.name, sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=driver, driver_note=why or None,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu_slug=slug(props.name),
                   machine=props.name, machine_slug=slug(props.name))
    else:
        model, threads = cpu_model(), torch.get_num_threads()
        env.update(cpu=model, threads=threads, cores=os.cpu_count(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), onednn=_built_with(r"MKL-DNN v([\d.]+)"),
                   mkl=_built_with(r"Math Kernel Library Version ([\d.]+)"),
                   machine=f"{model} (CPU, {threads} threads)", machine_slug=slug(f"cpu {model} {threads}t"))
    return env


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], object], device: torch.device, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) in ms of fn after two warm-up calls: do_bench on CUDA, a host clock on CPU.

    Args:
        fn: the work to time, called many times (it must not change its inputs).
        device: CUDA times with ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls).
        quick: a shorter repetition window (60 ms instead of do_bench's 100 ms).
    """
    fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    estimate_ms = (time.perf_counter() - start) * 1e3
    # At least ~5 timed repetitions for slow cases; do_bench's 100 ms default otherwise.
    rep_ms = min(max(60.0 if quick else 100.0, 5 * estimate_ms), 1500.0)
    if device.type == "cuda":
        p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(p50), float(p20), float(p80)
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def measure_matmul_tflops(dtype: torch.dtype, device: torch.device, quick: bool) -> float:
    """Dense matmul rate (TFLOP/s) of a large square torch.matmul on random data.

    Args:
        dtype: operand dtype (fp32 follows the tf32 flag set by main).  device, quick: as ``bench``.
    """
    n = 8192 if device.type == "cuda" else 512
    g = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    ms = bench(lambda: torch.matmul(a, b), device, quick)[0]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def measure_barrier_us(device: torch.device, quick: bool) -> tuple[Optional[float], str]:
    """Per-step time (us) of lstm_sequence forward at a tiny size over one program per SM: one grid
    barrier plus a negligible step.

    Args:
        device, quick: as ``bench``.
    Returns:
        (us per step, what was measured), or (None, why) without a GPU or if the measurement failed.
    """
    if device.type != "cuda":
        return None, "no GPU: no grid barrier to measure"
    programs = torch.cuda.get_device_properties(device).multi_processor_count
    # One program per SM: slices of 4 units, rows in one tile of 16.
    s = dict(BARRIER_SHAPE, N=4 * programs)
    g = torch.Generator(device=device).manual_seed(2)

    def rnd(*shape):
        return torch.randn(*shape, device=device, generator=g) * 0.25

    args = (rnd(s["T"], s["B"], s["D"]), rnd(s["B"], s["N"]), rnd(s["B"], s["N"]), rnd(s["D"], 4 * s["N"]),
            rnd(s["N"], 4 * s["N"]), rnd(4 * s["N"]))
    what = f"lstm_sequence fwd T={s['T']} B={s['B']} D=N={s['N']} programs={programs}, per step"
    pin = os.environ.get("TRITON_LSTM_CONFIG")
    os.environ["TRITON_LSTM_CONFIG"] = "seq_fwd.block_b=16,seq_fwd.block_n=4,seq_fwd.resident=1"
    try:
        with torch.no_grad():
            ms = bench(lambda: lstm_sequence(*args), device, quick)[0]
    except Exception as e:  # the floor then lacks its barrier part; every row says why
        return None, f"{what}: measurement failed ({error_text(e)})"
    finally:
        if pin is None:
            del os.environ["TRITON_LSTM_CONFIG"]
        else:
            os.environ["TRITON_LSTM_CONFIG"] = pin
    return ms * 1e3 / s["T"], what


@dataclass
class Floor:
    """The per-step floor's measured constants."""
    matmul_tflops: dict             # dtype key -> TFLOP/s
    barrier_us: Optional[float]
    barrier_note: str

    def fields(self, case: Case, dtype: str, mode: str) -> dict:
        """The floor's row fields (module docstring: "Floor per step").

        Args:
            case: shapes.  dtype: a key of DTYPES (picks the matmul rate).  mode: "fwd", "bwd" or "fwd+bwd".
        """
        B, N, P = case.B, case.N, case.out_size
        flops = 2 * B * P * 4 * N + (2 * B * N * P if case.P else 0)
        mult = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode]
        fwd_barriers = 2 if case.P else 1
        barriers = {"fwd": fwd_barriers, "bwd": 2, "fwd+bwd": fwd_barriers + 2}[mode]
        rate = self.matmul_tflops[dtype]
        compute_us = mult * flops / (rate * 1e12) * 1e6
        barrier_us = None if self.barrier_us is None else barriers * self.barrier_us
        return dict(floor_flops_per_step=mult * flops, matmul_tflops=round(rate, 2), floor_compute_us=compute_us,
                    barrier_us=self.barrier_us, barrier_note=self.barrier_note, barriers_per_step=barriers,
                    floor_barrier_us=barrier_us, floor_us=compute_us + (barrier_us or 0.0))


# ----------------------------------------------------------------------------------------------
# Providers

class Unsupported(Exception):
    """A provider cannot run this case by design (recorded as missing with this message)."""


@dataclass
class Setup:
    """A provider ready to run one case: forward() returns the outputs [T, B, P] (zero past each length)."""
    forward: Callable[[], Tensor]
    leaves: list                # tensors the backward differentiates
    note: str = ""
    checkable: bool = False     # computes the case's cell on the shared weights: compare with the reference


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random inputs and TF-layout weights (nn.LSTM's uniform +-1/sqrt(N) initialisation; never zeros).

    Args:
        case: shapes and options.  dtype: of x, h0 and the weights.  device: where they live.  seed: generator seed.
    Returns:
        x [T, B, D] and the weights requiring grad; h0 [B, P]; c0 [B, N] fp32; w_x [D, 4N]; w_h [P, 4N];
        bias [4N]; w_f_diag, w_i_diag, w_o_diag [N] or None; projection [N, P] or None; lengths [B]
        (int64 on the CPU, a full-length row first and the others in [T/2, T]) or None.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    T, B, D, N, P = case.T, case.B, case.D, case.N, case.out_size
    bound = N ** -0.5

    def uniform(*shape):
        return ((torch.rand(*shape, device=device, generator=g) * 2 - 1) * bound).to(dtype).requires_grad_()

    t = dict(x=torch.randn(T, B, D, device=device, generator=g).to(dtype).requires_grad_(),
             h0=(torch.randn(B, P, device=device, generator=g) * 0.5).to(dtype),
             c0=torch.randn(B, N, device=device, generator=g) * 0.5,
             w_x=uniform(D, 4 * N), w_h=uniform(P, 4 * N), bias=uniform(4 * N),
             w_f_diag=None, w_i_diag=None, w_o_diag=None, projection=None, lengths=None)
    if case.peepholes:
        t.update(w_f_diag=uniform(N), w_i_diag=uniform(N), w_o_diag=uniform(N))
    if case.P:
        t["projection"] = uniform(N, P)
    if case.lengths:
        lengths = torch.randint(T // 2, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
        lengths[0] = T
        t["lengths"] = lengths
    return t


def _weights(t: dict) -> list:
    return [t[k] for k in ("w_f_diag", "w_i_diag", "w_o_diag", "projection")]


def _options(case: Case) -> dict:
    return dict(forget_bias=FORGET_BIAS, cell_clip=case.cell_clip, proj_clip=case.proj_clip)


def _leaves(t: dict, *names) -> list:
    return [t[k] for k in names if t[k] is not None]


def _without_lengths(case: Case, provider: str) -> None:
    if case.lengths:
        raise Unsupported(f"{provider} takes no sequence lengths here")


def setup_lstm_sequence(case: Case, t: dict) -> Setup:
    """triton_lstm.lstm_sequence with every option of the case."""
    opts = _options(case)

    def forward():
        return lstm_sequence(t["x"], t["h0"], t["c0"], t["w_x"], t["w_h"], t["bias"], *_weights(t), t["lengths"],
                             **opts)[0]

    return Setup(forward, _leaves(t, "x", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"),
                 checkable=True)


def _step_loop(step: Callable, case: Case, t: dict) -> Setup:
    """A Python loop over a step function with lstm_cell's signature; kernel = [W_x; W_h] is one leaf."""
    kernel = torch.cat([t["w_x"], t["w_h"]]).detach().requires_grad_()
    x, bias, weights = t["x"], t["bias"], _weights(t)

    def forward():
        h, c = t["h0"], t["c0"]
        outs = []
        for step_t in range(case.T):
            h, c = step(x[step_t], c, h, kernel, bias, *weights)
            outs.append(h)
        return torch.stack(outs)

    return Setup(forward, [x, kernel, bias] + [w for w in weights if w is not None], checkable=True)


def setup_step_loop(case: Case, t: dict) -> Setup:
    """A Python loop over triton_lstm.lstm_cell, one fused step kernel (and its backward) per step."""
    _without_lengths(case, "the step loop")
    opts = _options(case)
    return _step_loop(lambda *a: lstm_cell(*a, **opts), case, t)


_COMPILED: dict = {}


def compiled_step(case: Case) -> Callable:
    """lstm_cell_reference with the case's options baked in, compiled once per option set."""
    opts = _options(case)
    key = tuple(sorted(opts.items()))
    if key not in _COMPILED:
        def step(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection):
            return lstm_cell_reference(x, c, h, kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection, **opts)

        _COMPILED[key] = torch.compile(step, dynamic=True)
    return _COMPILED[key]


def setup_torch_compile(case: Case, t: dict) -> Setup:
    """A Python loop over the compiled reference step (``compiled_step``)."""
    _without_lengths(case, "the compiled step loop")
    setup = _step_loop(compiled_step(case), case, t)
    setup.note = "torch.compile(dynamic=True) of the reference step (donated_buffer off), Python loop over T"
    return setup


def cudnn_algorithm(case: Case, dtype: str, mode: str, device: torch.device) -> Optional[str]:
    """The cuDNN algorithm PyTorch is expected to pick, read from PyTorch's
    aten/src/ATen/native/cudnn/RNN.cpp (``get_algo``); an expectation, not a measurement.

    Args:
        case: shapes.  dtype: a key of DTYPES.  mode: "fwd", "bwd" or "fwd+bwd".  device: the device measured.
    Returns:
        The algorithm's name, or None off a GPU.
    """
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    small_h = 128 if mode != "fwd" else 192
    if case.P:
        return "STANDARD (proj_size)"
    if case.lengths:
        return "STANDARD (packed input)"
    if case.N <= small_h:
        return "PERSIST_STATIC_SMALL_H"
    if (dtype == "fp16" and case.N <= 1024 and case.N % 128 == 0 and case.D % 128 == 0
            and (props.major, props.minor) >= (8, 0) and props.multi_processor_count >= 98
            and case.B % 8 == 0 and case.B <= 128):
        return "PERSIST_STATIC"
    return "STANDARD"


def _torch_layout(case: Case, t: dict) -> dict:
    """The case's TF weights as an nn.LSTM state dict (forget bias folded into bias_ih), plus the peepholes
    under triton_lstm.LSTM's names."""
    state = tf_to_torch_lstm(torch.cat([t["w_x"], t["w_h"]]).detach(), t["bias"].detach(),
                             None if t["projection"] is None else t["projection"].detach(), forget_bias=FORGET_BIAS)
    if case.peepholes:
        state.update({f"{k}_l0": t[k].detach() for k in ("w_f_diag", "w_i_diag", "w_o_diag")})
    return state


def _module_forward(module: torch.nn.Module, t: dict) -> Callable[[], Tensor]:
    """module(x, (h0, c0)) -> outputs [T, B, P]; with lengths, x goes in as a PackedSequence (packed inside
    the timed call, as users do) and comes back padded."""
    x, lengths = t["x"], t["lengths"]
    state = (t["h0"][None].detach().clone(), t["c0"].to(x.dtype)[None].detach().clone())
    if lengths is None:
        return lambda: module(x, state)[0]

    def forward():
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return pad_packed_sequence(module(packed, state)[0], total_length=x.shape[0])[0]
    return forward


def setup_nn_lstm(case: Case, t: dict) -> Setup:
    """torch.nn.LSTM (proj_size = num_proj) with the case's weights; without peepholes and clips."""
    x = t["x"]
    if x.device.type == "cuda" and not torch.backends.cudnn.is_available():
        raise Unsupported("cuDNN is not available to torch")
    lstm = torch.nn.LSTM(case.D, case.N, proj_size=case.P or 0, device=x.device, dtype=x.dtype)
    lstm.load_state_dict({k: v for k, v in _torch_layout(case, t).items() if "diag" not in k})
    lstm.train()
    lacks = [name for name, on in (("peepholes", case.peepholes), ("cell_clip", case.cell_clip is not None),
                                   ("proj_clip", case.proj_clip is not None)) if on]
    note = f"nn.LSTM has no {', '.join(lacks)}: measured without them" if lacks else ""
    return Setup(_module_forward(lstm, t), [x] + list(lstm.parameters()), note=note, checkable=not lacks)


def setup_lstm_module(case: Case, t: dict) -> Setup:
    """triton_lstm.LSTM (the nn.LSTM drop-in) with the case's weights and extras, called as nn.LSTM is."""
    x = t["x"]
    module = triton_lstm.LSTM(case.D, case.N, proj_size=case.P or 0, use_peepholes=case.peepholes,
                              cell_clip=case.cell_clip, proj_clip=case.proj_clip, device=x.device, dtype=x.dtype)
    module.load_state_dict(_torch_layout(case, t))
    module.train()
    return Setup(_module_forward(module, t), [x] + list(module.parameters()), checkable=True)


def setup_flashrnn(case: Case, t: dict) -> Setup:
    """flashrnn.flashrnn (cuda_fused backend) on x @ W_x + bias and W_h, when flashrnn is installed."""
    _without_lengths(case, "FlashRNN")
    try:
        from flashrnn import flashrnn
    except ImportError as e:
        raise Unsupported(f"flashrnn is not installed ({type(e).__name__}: {e})") from e
    lacks = [name for name, on in (("projection", case.P is not None), ("peepholes", case.peepholes),
                                   ("cell_clip", case.cell_clip is not None)) if on]
    if lacks:
        raise Unsupported(f"FlashRNN's LSTM has no {', '.join(lacks)}")
    x, w_x, w_h, bias = t["x"], t["w_x"], t["w_h"], t["bias"]
    T, B, D, N = case.T, case.B, case.D, case.N
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[x.dtype]
    # One head of width N. FlashRNN layouts: Wx [B, T, gates, heads, N], R [gates, heads, N, N],
    # b [gates, heads, N], states [2 (h, c), B, 1, heads, N]. Its gate order differs from TF's,
    # which does not change the work.
    states = torch.stack([t["h0"], t["c0"].to(x.dtype)])[:, :, None, None, :].contiguous()

    def forward():
        wx = (x.reshape(T * B, D) @ w_x).reshape(T, B, 4, 1, N).transpose(0, 1)
        r = w_h.reshape(N, 4, N).permute(1, 2, 0)[:, None]
        h_all, _ = flashrnn(wx, r, bias.reshape(4, 1, N), states=states, function="lstm",
                            backend="cuda_fused", dtype=name)
        return h_all[0, :, :, 0].transpose(0, 1)   # h of every step: [T, B, N]

    return Setup(forward, [x, w_x, w_h, bias], note="flashrnn cuda_fused backend, one head")


# provider -> setup function (case, make_inputs' tensors) -> Setup; Unsupported if it cannot run the case.
SETUPS = dict(lstm_sequence=setup_lstm_sequence, lstm_module=setup_lstm_module, step_loop=setup_step_loop,
              nn_lstm=setup_nn_lstm, torch_compile=setup_torch_compile, flashrnn=setup_flashrnn)


# ----------------------------------------------------------------------------------------------
# Running

def error_text(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {' | '.join(lines[:3])}" if lines else type(e).__name__
    return text[:400]


def device_usable(device: torch.device) -> None:
    """Raise if the CUDA context is broken (after an illegal access every later job would fail)."""
    synchronize(device)


def mode_call(setup: Setup, mode: str) -> Callable[[], object]:
    """One call of a mode (module docstring: "Modes")."""
    if mode == "fwd":
        return setup.forward
    out = setup.forward()
    grad = torch.randn_like(out)
    if mode == "bwd":
        return lambda: torch.autograd.grad(out, setup.leaves, grad, retain_graph=True)
    return lambda: torch.autograd.grad(setup.forward(), setup.leaves, grad)


def time_mode(setup: Setup, mode: str, device: torch.device, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) ms of one mode, timed by ``bench``.

    Args:
        setup: the provider on its case.  mode: "fwd", "bwd" or "fwd+bwd".  device, quick: as ``bench``.
    """
    return bench(mode_call(setup, mode), device, quick)


def interleaved_times(calls: dict, rounds: int, min_seconds: float = 0.0, max_rounds: int = 50) -> dict:
    """Host-clock times (ms) of several calls measured in turns: a warm-up call each, then rounds
    that time one call of each, so that a slow spell of the machine hits them all alike.

    Args:
        calls: key -> a callable.
        rounds: the fewest rounds; more follow until ``min_seconds`` have passed (at most ``max_rounds``).
    Returns:
        key -> the list of its times, in round order.
    """
    for fn in calls.values():
        fn()
    times: dict = {key: [] for key in calls}
    start = time.perf_counter()
    done = 0
    while done < rounds or (time.perf_counter() - start < min_seconds and done < max_rounds):
        for key, fn in calls.items():
            begin = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - begin) * 1e3)
        done += 1
    return times


class _SeenFunctions(TorchFunctionMode):
    """Records the torch functions called (``lstm`` for torch's own LSTM, whichever backend it picks)."""

    def __init__(self):
        super().__init__()
        self.names: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _SeenOps(TorchDispatchMode):
    """Records the operators dispatched (e.g. ``aten.mkldnn_rnn_layer.default``, ``triton_lstm.seq_fwd.default``)."""

    def __init__(self):
        super().__init__()
        self.names: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


# Operators and functions that tell which implementation ran, most specific first.
CODE_PATHS = (("triton_lstm.seq_fwd.", "persistent kernel"), ("triton_lstm.step_fwd.", "step kernel"),
              ("triton_lstm.cpu_seq_fwd.", "CPU loop"), ("aten._cudnn_rnn.", "cuDNN"),
              ("aten.mkldnn_rnn_layer.", "oneDNN LSTM"), ("lstm", "aten LSTM"))


def code_path(forward: Callable[[], object]) -> str:
    """What a provider's forward runs, from the functions and operators one call reaches (``CODE_PATHS``;
    "PyTorch ops" when none of them: the reference, a compiled graph or another library)."""
    functions, ops = _SeenFunctions(), _SeenOps()
    with functions, ops:
        forward()
    names = functions.names | ops.names
    found = [path for name, path in CODE_PATHS if any(n == name or n.startswith(name) for n in names)]
    return found[0] if found else "PyTorch ops"


def relative_error(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref||, out upcast to fp32. Args: out, ref: [T, B, P]."""
    out = out.detach().float()
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


class Runner:
    """Runs jobs, appends rows to the results file (and --out), logs to stdout (and --out)."""

    def __init__(self, device: torch.device, env: dict, floor: Floor, results: Path, out_dir: Optional[Path],
                 quick: bool, log: Callable[[str], None], rounds: int, min_seconds: float):
        self.device, self.env, self.floor, self.quick, self.log = device, env, floor, quick, log
        self.rounds, self.min_seconds = rounds, min_seconds
        self.results, self.out_dir = results, out_dir
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        line = json.dumps(row, sort_keys=False) + "\n"
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with open(self.results, "a") as f:
            f.write(line)
        if self.out_dir is not None:
            with open(self.out_dir / "results.jsonl", "a") as f:
                f.write(line)
        self.rows.append(row)

    def row(self, job: Job, **fields) -> dict:
        """One result row: environment, every case parameter, job, floor, then ``fields``."""
        c = job.case
        algo = cudnn_algorithm(c, job.dtype, job.mode, self.device) if job.provider == "nn_lstm" else None
        row = dict(self.env, **dataclasses.asdict(c), forget_bias=FORGET_BIAS, dtype=job.dtype, provider=job.provider,
                   mode=job.mode, missing=None, note="", code_path=None, check_rel_err=None, timing=None, ms=None,
                   ms_p20=None, ms_p80=None, ms_median=None, tokens_per_s=None, step_us=None,
                   cudnn_algo_expected=algo)
        row.update(self.floor.fields(c, job.dtype, job.mode))
        row.update(fields)
        return row

    def run_case(self, case: Case, dtype: str, jobs: list[Job]) -> None:
        """All jobs of one case and dtype: inputs and the reference are made once, setups per provider.
        On a GPU each provider is timed right after its setup; on a CPU all are timed interleaved.

        Args:
            case: the problem.  dtype: a key of DTYPES.  jobs: the jobs of this case and dtype.
        """
        t = make_inputs(case, DTYPES[dtype], self.device)
        reference: list = []
        interleaved = []
        for provider in [p for p in PROVIDERS if any(j.provider == p for j in jobs)]:
            mine = [j for j in jobs if j.provider == provider]
            tuned_before = tune.tuning_seconds()
            try:
                setup = SETUPS[provider](case, t)
                check = self._check(setup, case, dtype, t, reference)
                path = code_path(setup.forward)
            except Exception as e:  # any provider failure on a case is recorded as missing, never fatal
                self._missing(mine, e)
                continue
            if self.device.type == "cuda":
                for job in mine:
                    try:
                        p50, p20, p80 = time_mode(setup, job.mode, self.device, self.quick)
                    except Exception as e:  # as above: recorded with its error text
                        self._missing([job], e)
                        continue
                    # Seconds the tuner took on the kernels first called for this row (compiled and
                    # timed; 0 when the cache already had them).
                    tuned = tune.tuning_seconds()
                    tune_s = sum(v for k, v in tuned.items() if k not in tuned_before)
                    tuned_before = tuned
                    self._timed(job, setup, check, path, ms=p50, ms_p20=p20, ms_p80=p80, first_call_tune_s=tune_s,
                                timing="median of triton.testing.do_bench (CUDA events)")
                del setup
            else:
                interleaved.append((setup, mine, check, path))
        if interleaved:
            self._time_interleaved(interleaved)
        del t, reference, interleaved
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _check(self, setup: Setup, case: Case, dtype: str, t: dict, reference: list) -> Optional[float]:
        """||out - ref|| / ||ref|| of a checkable provider (the fp32 reference made once, kept in
        ``reference``); raise when over CHECK_TOLERANCE. None for a provider that computes another cell."""
        if not setup.checkable:
            return None
        if not reference:
            with torch.no_grad():
                up = {k: None if v is None or k == "lengths" else v.detach().float() for k, v in t.items()}
                reference.append(lstm_sequence_reference(up["x"], up["h0"], up["c0"], up["w_x"], up["w_h"], up["bias"],
                                                         *_weights(up), t["lengths"], **_options(case))[0])
        check = relative_error(setup.forward(), reference[0])
        if not check <= CHECK_TOLERANCE[dtype]:
            raise RuntimeError(f"wrong result: ||out - ref|| / ||ref|| = {check:.3g} against the fp32 "
                               f"reference (tolerance {CHECK_TOLERANCE[dtype]:g})")
        return check

    def _time_interleaved(self, prepared: list) -> None:
        """Time every (provider, mode) of a case in turns (``interleaved_times``); one row each."""
        calls, owners = {}, {}
        for setup, mine, check, path in prepared:
            for job in mine:
                try:
                    calls[job] = mode_call(setup, job.mode)
                except Exception as e:  # recorded with its error text
                    self._missing([job], e)
                    continue
                owners[job] = (setup, check, path)
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        try:
            times = interleaved_times(calls, self.rounds, self.min_seconds)
        except Exception as e:  # a call that fails in one round fails in all: the case is missing
            self._missing(list(calls), e)
            return
        for job, ts in times.items():
            setup, check, path = owners[job]
            self._timed(job, setup, check, path, ms=min(ts), ms_median=sorted(ts)[len(ts) // 2], load_avg=load,
                        rounds=len(ts), timing=f"best of at least {self.rounds} interleaved rounds "
                                                   f"({self.min_seconds:g} s a case) after a warm-up (host clock)")

    def _timed(self, job: Job, setup: Setup, check: Optional[float], path: str, **fields) -> None:
        case, ms = job.case, fields["ms"]
        row = self.row(job, tokens_per_s=case.T * case.B / (ms * 1e-3), step_us=ms * 1e3 / case.T,
                       check_rel_err=check, note=setup.note, code_path=path, **fields)
        self.write(row)
        spread = (f"[{fields['ms_p20']:.3f}, {fields['ms_p80']:.3f}]" if fields.get("ms_p20") is not None
                  else f"median {fields['ms_median']:.3f}")
        self.log(f"  {job.provider:14s} {job.mode:7s} {ms:9.3f} ms  {spread}  {row['step_us']:8.2f} us/step  "
                 f"{path}" + (f"  rel err {check:.1e}" if check is not None else "")
                 + (f"  first-call tuning {fields['first_call_tune_s']:.1f} s" if fields.get("first_call_tune_s")
                    else ""))

    def _missing(self, jobs: list[Job], e: Exception) -> None:
        reason = str(e) if isinstance(e, Unsupported) else error_text(e)
        for job in jobs:
            self.write(self.row(job, missing=reason))
        self.log(f"  {jobs[0].provider:14s} missing ({', '.join(j.mode for j in jobs)}): {reason}")
        device_usable(self.device)


def completed_keys(results: Path, env: dict) -> set:
    """Job keys already in the results file for this machine, code revision and versions (for --resume).

    Args:
        results: the results file.  env: this run's ``environment``.
    """
    if not results.exists():
        return set()
    same = ("machine", "torch", "triton", "triton_lstm", "git", "tf32_matmul", "tf32_cudnn")
    keys = set()
    for row in plot.load_rows([results]):
        if all(row.get(k) == env[k] for k in same):
            case = Case(**{k: row[k] for k in plot.CASE_FIELDS})
            keys.add(Job(case, row["dtype"], row["provider"], row["mode"]).key())
    return keys


def select(jobs: list[Job], args) -> list[Job]:
    return [j for j in jobs if (not args.groups or j.case.group in args.groups)
            and (not args.providers or j.provider in args.providers)
            and (not args.dtypes or j.dtype in args.dtypes) and (not args.modes or j.mode in args.modes)]


def print_jobs(jobs: list[Job]) -> None:
    """One line per case and set of dtypes sharing the same providers and modes."""
    by_case: dict = {}
    for j in jobs:
        by_case.setdefault(j.case, {}).setdefault(j.dtype, []).append(j)
    for case, per_dtype in by_case.items():
        shapes: dict = {}
        for dtype, js in per_dtype.items():
            signature = (tuple(sorted({j.provider for j in js}, key=PROVIDERS.index)),
                         tuple(sorted({j.mode for j in js}, key=MODES.index)))
            shapes.setdefault(signature, []).append(dtype)
        for (provs, modes), dts in shapes.items():
            print(f"{case.label():55s} {','.join(dts):14s} {','.join(modes):15s} {','.join(provs)}")
    print(f"{len(jobs)} jobs in {len(by_case)} cases")


def job_work(job: Job) -> float:
    """A job's share of a run, for the ETA: its floating-point work (the products of all steps)."""
    c = job.case
    passes = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[job.mode]
    return passes * c.T * c.B * ((c.D + c.out_size) * 4 * c.N + (c.N * c.P if c.P else 0))


def progress(done: int, total: int, work_done: float, work_total: float, elapsed: float,
             budget: Optional[float]) -> str:
    """'[done/total jobs] 12 s elapsed, ETA ~30 s' (the ETA scaled by work; what the budget allows)."""
    text = f"[{done}/{total} jobs] {elapsed:.0f} s elapsed"
    if work_done > 0:
        eta = elapsed * (work_total - work_done) / work_done
        text += f", ETA ~{eta:.0f} s"
        if budget is not None and elapsed + eta > budget:
            text += f" (the {budget:g} s budget stops new jobs in {max(budget - elapsed, 0):.0f} s)"
    return text


def time_budget(args, suite: str, has_gpu: bool) -> Optional[float]:
    """Seconds after which no new job starts: --budget-s, else the GPU suites' default (none on a CPU
    or for --smoke)."""
    if args.budget_s is not None or not has_gpu or args.smoke:
        return args.budget_s
    return DEFAULT_BUDGET_S.get(suite)


def render_plots(paths: list[Path], plots_dir: Path) -> None:
    rows = plot.load_rows(paths)
    if not rows:
        print(f"no benchmark results in {', '.join(str(p) for p in paths) or 'benchmarks/results/'}: nothing to plot")
        return
    for path in plot.render(rows, plots_dir):
        print(f"wrote {path}")


def parse_args(argv):
    groups = sorted({j.case.group for suite in (*SUITES.values(), *SMOKE_SUITES.values()) for j in suite()})
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
                                     epilog="Without options: the standard suite on a CUDA GPU, the CPU suite "
                                            "without one.")
    parser.add_argument("--suite", choices=list(SUITES), help="standard (GPU), quick (GPU, a few minutes) or cpu "
                        "(triton_lstm on CPU tensors against nn.LSTM); default: standard with a GPU, else cpu")
    parser.add_argument("--quick", action="store_true", help="the same as --suite quick (shorter timing windows)")
    parser.add_argument("--smoke", action="store_true", help="the suite's tiny version on any device, to check the "
                        "harness; needs --results")
    parser.add_argument("--list", action="store_true", help="print the suite's jobs and exit")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="also write this run's rows, log and table into this folder")
    parser.add_argument("--results", type=Path, metavar="FILE", help="the results file to append to "
                        "(default benchmarks/results/<machine>.jsonl)")
    parser.add_argument("--resume", action="store_true", help="skip jobs already in the results file (same "
                        "machine, versions and code revision)")
    parser.add_argument("--budget-s", type=float, metavar="SECONDS", help="start no new job after this many "
                        "seconds (default "
                        + ", ".join(f"{v:g} for the {k} suite" for k, v in DEFAULT_BUDGET_S.items())
                        + ", none for cpu and --smoke)")
    parser.add_argument("--groups", nargs="+", choices=groups, help="run only these case groups")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="run only these providers")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="run only these dtypes")
    parser.add_argument("--modes", nargs="+", choices=MODES, help="run only these modes")
    parser.add_argument("--tf32", action="store_true", help="allow tf32 in torch matmuls and cuDNN (fp32 cases, GPU)")
    parser.add_argument("--plots-dir", type=Path, metavar="DIR", help="where the plots go (default plots/)")
    parser.add_argument("--no-plots", action="store_true", help="do not render plots after the run "
                        "(implied by --smoke without --plots-dir)")
    args = parser.parse_args(argv)
    if args.quick:
        if args.suite not in (None, "quick"):
            parser.error(f"--quick and --suite {args.suite} exclude each other")
        args.suite = "quick"
    args.quick = args.suite == "quick"
    if args.smoke and args.results is None and not args.list:
        parser.error("--smoke needs --results FILE (smoke rows are no benchmark results)")
    if args.budget_s is not None and not args.budget_s > 0:
        parser.error(f"--budget-s: expected a positive number of seconds, got {args.budget_s:g}")
    if args.plots_dir is None:
        args.no_plots |= args.smoke
        args.plots_dir = REPO / "plots"
    if not args.list:
        check_output_paths(parser, args)
    return args


def check_output_paths(parser: argparse.ArgumentParser, args) -> None:
    """Folders and files the run writes, checked (and folders made) before it measures anything."""
    for flag, path, folder in (("--out", args.out, True), ("--results", args.results, False),
                               ("--plots-dir", None if args.no_plots else args.plots_dir, True)):
        if path is not None:
            plot.check_writable(parser, flag, path, folder)


def main(argv=None) -> int:
    """Command line (see the module docstring). Args: argv: arguments, default sys.argv[1:]."""
    try:
        return _main(parse_args(argv))
    except ValueError as e:  # a malformed results file (benchmarks.plot.load_rows names file and line)
        print(f"benchmarks.run: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    has_gpu = torch.cuda.is_available()
    suite = args.suite or ("standard" if has_gpu else "cpu")
    jobs = select((SMOKE_SUITES if args.smoke else SUITES)[suite](), args)
    if args.list:
        print_jobs(jobs)
        return 0
    if suite != "cpu" and not has_gpu and not args.smoke:
        print(f"benchmarks.run: the {suite} suite needs a CUDA GPU and torch sees none; without one, run the "
              f"CPU suite (python -m benchmarks.run, or --suite cpu)", file=sys.stderr)
        return 2
    budget = time_budget(args, suite, has_gpu)
    device = torch.device("cuda" if has_gpu and suite != "cpu" else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    # Every (dtype, option set) of the compiled step is a recompile; never fall back to eager silently.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    # The bwd mode repeats a backward with retain_graph=True, which donated buffers forbid.
    torch._functorch.config.donated_buffer = False
    env = environment(device, f"{suite}-smoke" if args.smoke else suite)
    results = args.results.resolve() if args.results else RESULTS_DIR / f"{env['machine_slug']}.jsonl"
    log_file = open(args.out / "bench_log.txt", "a") if args.out is not None else None

    def log(msg: str) -> None:
        print(msg, flush=True)
        if log_file is not None:
            log_file.write(msg + "\n")
            log_file.flush()

    if device.type == "cuda":
        where = f"{env['machine']} ({env['sm_count']} SMs, driver {env['driver']}), tf32 {args.tf32}"
    else:
        where = (f"{env['machine']}, {env['cores']} cores, {env['cpu_capability']}, oneDNN {env['onednn']}, "
                 f"MKL {env['mkl']}")
    log(f"{where}; torch {env['torch']}, triton {env['triton']}, triton_lstm {env['triton_lstm']} ({env['git']}); "
        f"suite {env['suite']}, {len(jobs)} jobs -> {results}")
    if args.resume:
        done = completed_keys(results, env)
        jobs = [j for j in jobs if j.key() not in done]
        log(f"--resume: {len(done)} jobs already in {results}, {len(jobs)} to run")
    start = time.monotonic()
    dtypes = sorted({j.dtype for j in jobs}, key=list(DTYPES).index)
    floor = Floor({d: measure_matmul_tflops(DTYPES[d], device, args.quick) for d in dtypes},
                  *measure_barrier_us(device, args.quick))
    log("matmul TFLOP/s: " + ", ".join(f"{d} {r:.3g}" for d, r in floor.matmul_tflops.items())
        + f"; grid barrier: {floor.barrier_us if floor.barrier_us is None else round(floor.barrier_us, 3)} us "
        f"({floor.barrier_note})")
    runner = Runner(device, env, floor, results, args.out, args.quick, log, rounds=2 if args.smoke else CPU_ROUNDS,
                    min_seconds=0.0 if args.smoke else CPU_MIN_SECONDS)
    not_run = []
    work_total, work_done, jobs_done = sum(map(job_work, jobs)), 0.0, 0
    for (case, dtype), group in itertools.groupby(jobs, key=lambda j: (j.case, j.dtype)):
        case_jobs = list(group)
        elapsed = time.monotonic() - start
        if budget is not None and elapsed > budget:
            not_run += case_jobs
            continue
        log(f"{case.label()} {dtype}  {progress(jobs_done, len(jobs), work_done, work_total, elapsed, budget)}")
        runner.run_case(case, dtype, case_jobs)
        jobs_done += len(case_jobs)
        work_done += sum(map(job_work, case_jobs))
    log(f"{len(runner.rows)} rows in {time.monotonic() - start:.0f} s -> {results}")
    if not_run:
        log(f"time budget of {budget:g} s spent: {len(not_run)} jobs not run, e.g. "
            f"{not_run[0].case.label()} {not_run[0].dtype}; run again with --resume to continue (carrying {results})")
    if not args.no_plots:
        render_plots(sorted(set(RESULTS_DIR.glob("*.jsonl")) | {results}), args.plots_dir)
    table = plot.summary_table(runner.rows)
    if args.out is not None:
        (args.out / "summary.txt").write_text(table + "\n")
    log(table)
    if suite == "cpu":
        log("This was the CPU benchmark (triton_lstm on CPU tensors against nn.LSTM). GPU numbers come from a "
            "machine with a CUDA GPU: `make bench` there (or `make gpu-check`)"
            + ("." if args.no_plots else "; the plots above also show any committed GPU results."))
    if log_file is not None:
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
