"""The benchmark suite: triton_lstm against cuDNN, torch.compile and FlashRNN, with the floor per step.

``python -m benchmarks.run`` (``make bench``) does the project's main job:

* With a CUDA GPU it runs the standard suite (``--quick``: a subset that fits a few minutes) and
  appends one JSON line per case x dtype x provider x mode to ``benchmarks/results/<gpu-slug>.jsonl``,
  then renders the plots from every results file (``benchmarks.plot``) and prints a short table last.
  The standard suite (``--list`` shows its ~1700 jobs) outlasts one 10-minute device call: there
  ``benchmarks/gpu_session.sh full`` runs it in parts with ``--budget-s`` and ``--resume``.
* Without one it says so, runs ``benchmarks.demo`` under ``TRITON_INTERPRET=1`` in a subprocess (the
  kernels on CPU tensors against the reference; a failure makes the exit status 1) and renders the
  plots from the committed results.

Providers (``PROVIDERS``):
    triton_persistent  ``triton_lstm.lstm_sequence``: the whole recurrence in one persistent launch
    triton_step        a Python loop over ``triton_lstm.lstm_cell``, one fused step kernel per step
    cudnn              ``torch.nn.LSTM`` (``proj_size`` for LSTMP); it has no peepholes or clips, so
                       it runs those cases without them (the row's note says so)
    torch_compile      a Python loop over ``lstm_cell_reference`` under ``torch.compile(dynamic=True)``:
                       one compile per option set and dtype serves every shape (quick suite: fp32 only)
    flashrnn           ``flashrnn.flashrnn`` (backend cuda_fused), if ``import flashrnn`` works
A provider that cannot run a case (unsupported option, out of memory, dtype) gets a row whose
``missing`` field holds the reason; it never stops the run. A provider that computes TF's cell
(ours, torch_compile) is first checked against the fp32 reference on the same inputs
(``check_rel_err``, ||out - ref|| / ||ref||); a result over ``CHECK_TOLERANCE`` is recorded as
missing ("wrong result") and not timed.

Modes: ``fwd`` the training forward (inputs and weights require grad, state saved for backward);
``bwd`` backward alone (forward once, then ``torch.autograd.grad(..., retain_graph=True)`` timed);
``fwd+bwd`` both. Gradients are taken of the outputs [T, B, P] (random upstream gradient) with
respect to x and every weight. Timing: two warm-up calls, then ``triton.testing.do_bench`` median,
20th and 80th percentile (CUDA events); on CPU (``--smoke`` only) a host clock.

Floor per step (PERF.md): ``mult * F / R + barriers * L`` where F = 2*B*P*4N (+ 2*B*N*P with a
projection) is the recurrent product of one step, mult = 1 / 2 / 3 for fwd / bwd / fwd+bwd, R the
dense matmul rate at that dtype (a large ``torch.matmul``, measured once per run), L the grid-barrier
latency (the per-step time of ``lstm_sequence`` at B=1, D=N=16, T=1024 with one program per SM,
measured once per run) and barriers = 1 per forward step (2 with a projection) + 2 per backward step.
The hoisted input GEMM (x @ W_x) is off the serial path and not in the floor. Both components are
recorded (``floor_compute_us``, ``floor_barrier_us``).

fp32: by default tf32 is off for both torch matmuls and cuDNN (``--tf32`` turns both on), so every
provider computes in full fp32; the row records both flags.

Results: ``--results FILE`` overrides the results file, ``--out DIR`` also writes this run's rows
(``results.jsonl``), the log (``bench_log.txt``) and the final table (``summary.txt``) there,
``--resume`` skips jobs already in the results file for this GPU and these versions, and
``--budget-s`` stops starting new jobs after that many seconds (what was not run is listed), so a
long suite can be finished over several calls. ``--list`` prints the jobs and exits (no GPU needed);
``--smoke`` runs a tiny suite on whatever device is present to check the harness (CPU rows are not
results: it requires ``--results``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
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

import triton_lstm
from benchmarks import plot
from triton_lstm import lstm_cell, lstm_cell_reference, lstm_sequence, lstm_sequence_reference
from triton_lstm.launch import kernels_run_on

Tensor = torch.Tensor
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"

PROVIDERS = ("triton_persistent", "triton_step", "cudnn", "torch_compile", "flashrnn")
MODES = ("fwd", "bwd", "fwd+bwd")
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
    """The full suite of issue 4: fastrnns default, LSTMP, T sweep, batch x hidden grid.

    Ordered so that a run cut short by --budget-s has the most useful part: the headline cases,
    then ours and cuDNN over the sweeps (the heatmaps), then the other providers over the sweeps.
    """
    dtypes = list(DTYPES)
    jobs = jobs_for([DEFAULT_CASE], dtypes, PROVIDERS, MODES)
    jobs += jobs_for([lstmp_case(H) for H in LSTMP_HIDDEN], dtypes, PROVIDERS, MODES)
    # T=256 at B=64, H=512 is a grid point; the plots take it from there.
    sweeps = [Case("grid", 256, B, H, H) for H in GRID_HIDDEN for B in GRID_BATCH]
    sweeps += [Case("seq_len", T, 64, 512, 512) for T in SEQ_LENS if T != 256]
    first = ("triton_persistent", "cudnn")
    jobs += jobs_for(sweeps, dtypes, first, MODES)
    jobs += jobs_for(sweeps, dtypes, [p for p in PROVIDERS if p not in first], MODES)
    return jobs


def quick_suite() -> list[Job]:
    """A few minutes: the headline cases in full, a 3 x 3 part of the grid and T=1024 (fwd+bwd)."""
    dtypes = list(DTYPES)
    # torch.compile costs two compiles (forward, backward) per dtype and option set: fp32 plain only.
    others = [p for p in PROVIDERS if p != "torch_compile"]
    jobs = jobs_for([DEFAULT_CASE], ["fp32"], PROVIDERS, MODES)
    jobs += jobs_for([DEFAULT_CASE], ["fp16", "bf16"], others, MODES)
    jobs += jobs_for([lstmp_case(512)], dtypes, others, MODES)
    grid = [Case("grid", 256, B, H, H) for H in (256, 512, 1024) for B in (8, 64, 256)]
    jobs += jobs_for(grid, ["fp32", "fp16"], ["triton_persistent", "cudnn"], ["fwd+bwd"])
    jobs += jobs_for([Case("seq_len", 1024, 64, 512, 512)], ["fp32", "fp16"], ["triton_persistent", "cudnn"],
                     ["fwd+bwd"])
    return jobs


def smoke_suite() -> list[Job]:
    """Tiny shapes that check the harness on any device (every provider, mode and dtype once)."""
    cases = [Case("smoke", 8, 4, 16, 16), Case("smoke", 8, 4, 16, 32, P=8, peepholes=True, **LSTMP_CLIPS)]
    return jobs_for(cases, list(DTYPES), PROVIDERS, MODES)


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


def environment(device: torch.device, suite: str) -> dict:
    """The fields every row carries: device, driver, versions, date, code revision, precision flags.

    Args:
        device: the device measured (CUDA: name, SMs, capability, driver, CUDA and cuDNN versions).
        suite: "standard", "quick" or "smoke", recorded as is.
    """
    env = dict(suite=suite, device=device.type, torch=torch.__version__, triton=triton.__version__,
               triton_lstm=triton_lstm.__version__, python=sys.version.split()[0],
               date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    commit, why = _command_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO)
    if commit is not None:
        dirty, _ = _command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
        commit += "+dirty" if dirty else ""
    env.update(git=commit, git_note=why or None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver, why = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        env.update(gpu=props.name, sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=driver, driver_note=why or None,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        env.update(gpu="cpu", sm_count=None, capability=None, gpu_memory_gib=None, driver=None,
                   driver_note="no CUDA GPU", cuda=None, cudnn=None)
    env["gpu_slug"] = slug(env["gpu"])
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
    """A provider ready to run one case: forward() returns the outputs [T, B, P]."""
    forward: Callable[[], Tensor]
    leaves: list                # tensors the backward differentiates
    note: str = ""
    checkable: bool = False     # computes TF's cell on the shared inputs: compare with the reference


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random inputs and TF-layout weights (nn.LSTM's uniform +-1/sqrt(N) initialisation; never zeros).

    Args:
        case: shapes and options.  dtype: of x, h0 and the weights.  device: where they live.  seed: generator seed.
    Returns:
        x [T, B, D] and the weights requiring grad; h0 [B, P]; c0 [B, N] fp32; w_x [D, 4N]; w_h [P, 4N];
        bias [4N]; w_f_diag, w_i_diag, w_o_diag [N] or None; projection [N, P] or None.
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
             w_f_diag=None, w_i_diag=None, w_o_diag=None, projection=None)
    if case.peepholes:
        t.update(w_f_diag=uniform(N), w_i_diag=uniform(N), w_o_diag=uniform(N))
    if case.P:
        t["projection"] = uniform(N, P)
    return t


def _weights(t: dict) -> list:
    return [t[k] for k in ("w_f_diag", "w_i_diag", "w_o_diag", "projection")]


def _options(case: Case) -> dict:
    return dict(forget_bias=FORGET_BIAS, cell_clip=case.cell_clip, proj_clip=case.proj_clip)


def _leaves(t: dict, *names) -> list:
    return [t[k] for k in names if t[k] is not None]


def _fallback_note(t: dict) -> str:
    x = t["x"]
    return "" if kernels_run_on(x.device, x.dtype) else "no kernels here: the plain-PyTorch reference fallback ran"


def setup_triton_persistent(case: Case, t: dict) -> Setup:
    """triton_lstm.lstm_sequence with every option of the case."""
    opts = _options(case)

    def forward():
        return lstm_sequence(t["x"], t["h0"], t["c0"], t["w_x"], t["w_h"], t["bias"], *_weights(t), **opts)[0]

    return Setup(forward, _leaves(t, "x", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"),
                 note=_fallback_note(t), checkable=True)


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


def setup_triton_step(case: Case, t: dict) -> Setup:
    """A Python loop over triton_lstm.lstm_cell, one fused step kernel (and its backward) per step."""
    opts = _options(case)
    setup = _step_loop(lambda *a: lstm_cell(*a, **opts), case, t)
    setup.note = _fallback_note(t)
    return setup


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
    setup = _step_loop(compiled_step(case), case, t)
    setup.note = "torch.compile(dynamic=True) of the reference step (donated_buffer off), Python loop over T"
    return setup


def cudnn_algorithm(case: Case, dtype: str, mode: str, device: torch.device) -> str:
    """The cuDNN algorithm PyTorch is expected to pick: PERF.md's table, read from PyTorch's
    aten/src/ATen/native/cudnn/RNN.cpp (``get_algo``); an expectation, not a measurement.

    Args:
        case: shapes.  dtype: a key of DTYPES.  mode: "fwd", "bwd" or "fwd+bwd".  device: the device measured.
    """
    if device.type != "cuda":
        return "not cuDNN (CPU)"
    props = torch.cuda.get_device_properties(device)
    small_h = 128 if mode != "fwd" else 192
    if case.P:
        return "STANDARD (proj_size)"
    if case.N <= small_h:
        return "PERSIST_STATIC_SMALL_H"
    if (dtype == "fp16" and case.N <= 1024 and case.N % 128 == 0 and case.D % 128 == 0
            and (props.major, props.minor) >= (8, 0) and props.multi_processor_count >= 98
            and case.B % 8 == 0 and case.B <= 128):
        return "PERSIST_STATIC"
    return "STANDARD"


def setup_cudnn(case: Case, t: dict) -> Setup:
    """torch.nn.LSTM (proj_size = num_proj) on the same x; its own random weights."""
    x = t["x"]
    dtype, device = x.dtype, x.device
    if device.type == "cuda" and not torch.backends.cudnn.is_available():
        raise Unsupported("cuDNN is not available to torch")
    lstm = torch.nn.LSTM(case.D, case.N, proj_size=case.P or 0, device=device, dtype=dtype)
    lstm.train()
    state = (t["h0"][None].detach().clone(), t["c0"].to(dtype)[None].detach().clone())
    lacks = [name for name, on in (("peepholes", case.peepholes), ("cell_clip", case.cell_clip is not None),
                                   ("proj_clip", case.proj_clip is not None)) if on]
    note = f"nn.LSTM has no {', '.join(lacks)}: measured without them" if lacks else ""
    return Setup(lambda: lstm(x, state)[0], [x] + list(lstm.parameters()), note=note)


def setup_flashrnn(case: Case, t: dict) -> Setup:
    """flashrnn.flashrnn (cuda_fused backend) on x @ W_x + bias and W_h, when flashrnn is installed."""
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
SETUPS = dict(triton_persistent=setup_triton_persistent, triton_step=setup_triton_step, cudnn=setup_cudnn,
              torch_compile=setup_torch_compile, flashrnn=setup_flashrnn)


# ----------------------------------------------------------------------------------------------
# Running

def error_text(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {' | '.join(lines[:3])}" if lines else type(e).__name__
    return text[:400]


def device_usable(device: torch.device) -> None:
    """Raise if the CUDA context is broken (after an illegal access every later job would fail)."""
    synchronize(device)


def time_mode(setup: Setup, mode: str, device: torch.device, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) ms of one mode (module docstring: "Modes").

    Args:
        setup: the provider on its case.  mode: "fwd", "bwd" or "fwd+bwd".  device, quick: as ``bench``.
    """
    if mode == "fwd":
        return bench(setup.forward, device, quick)
    out = setup.forward()
    grad = torch.randn_like(out)
    if mode == "bwd":
        return bench(lambda: torch.autograd.grad(out, setup.leaves, grad, retain_graph=True), device, quick)
    return bench(lambda: torch.autograd.grad(setup.forward(), setup.leaves, grad), device, quick)


def relative_error(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref||, out upcast to fp32. Args: out, ref: [T, B, P]."""
    out = out.detach().float()
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


class Runner:
    """Runs jobs, appends rows to the results file (and --out), logs to stdout (and --out)."""

    def __init__(self, device: torch.device, env: dict, floor: Floor, results: Path, out_dir: Optional[Path],
                 quick: bool, log: Callable[[str], None]):
        self.device, self.env, self.floor, self.quick, self.log = device, env, floor, quick, log
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
        algo = cudnn_algorithm(c, job.dtype, job.mode, self.device) if job.provider == "cudnn" else None
        row = dict(self.env, group=c.group, T=c.T, B=c.B, D=c.D, N=c.N, P=c.P, peepholes=c.peepholes,
                   cell_clip=c.cell_clip, proj_clip=c.proj_clip, forget_bias=FORGET_BIAS, dtype=job.dtype,
                   provider=job.provider, mode=job.mode, missing=None, note="", check_rel_err=None,
                   ms=None, ms_p20=None, ms_p80=None, tokens_per_s=None, step_us=None, cudnn_algo_expected=algo)
        row.update(self.floor.fields(c, job.dtype, job.mode))
        row.update(fields)
        return row

    def run_case(self, case: Case, dtype: str, jobs: list[Job]) -> None:
        """All jobs of one case and dtype: inputs and the reference are made once, setups per provider.

        Args:
            case: the problem.  dtype: a key of DTYPES.  jobs: the jobs of this case and dtype.
        """
        t = make_inputs(case, DTYPES[dtype], self.device)
        ref = None
        for provider in [p for p in PROVIDERS if any(j.provider == p for j in jobs)]:
            mine = [j for j in jobs if j.provider == provider]
            try:
                setup = SETUPS[provider](case, t)
                check = None
                if setup.checkable:
                    if ref is None:
                        with torch.no_grad():
                            up = {k: None if v is None else v.detach().float() for k, v in t.items()}
                            ref = lstm_sequence_reference(up["x"], up["h0"], up["c0"], up["w_x"], up["w_h"],
                                                          up["bias"], *_weights(up), **_options(case))[0]
                    check = relative_error(setup.forward(), ref)
                    if not check <= CHECK_TOLERANCE[dtype]:
                        raise RuntimeError(f"wrong result: ||out - ref|| / ||ref|| = {check:.3g} against the fp32 "
                                           f"reference (tolerance {CHECK_TOLERANCE[dtype]:g})")
            except Exception as e:  # any provider failure on a case is recorded as missing, never fatal
                self._missing(mine, e)
                continue
            for job in mine:
                try:
                    p50, p20, p80 = time_mode(setup, job.mode, self.device, self.quick)
                except Exception as e:  # as above: recorded with its error text
                    self._missing([job], e)
                    continue
                row = self.row(job, ms=p50, ms_p20=p20, ms_p80=p80, tokens_per_s=case.T * case.B / (p50 * 1e-3),
                               step_us=p50 * 1e3 / case.T, check_rel_err=check, note=setup.note)
                self.write(row)
                self.log(f"  {job.provider:17s} {job.mode:7s} {p50:9.3f} ms  [{p20:.3f}, {p80:.3f}]  "
                         f"{row['step_us']:8.2f} us/step  floor {row['floor_us']:7.2f} us/step"
                         + (f"  rel err {check:.1e}" if check is not None else ""))
            del setup
        del t, ref
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _missing(self, jobs: list[Job], e: Exception) -> None:
        reason = str(e) if isinstance(e, Unsupported) else error_text(e)
        for job in jobs:
            self.write(self.row(job, missing=reason))
        self.log(f"  {jobs[0].provider:17s} missing ({', '.join(j.mode for j in jobs)}): {reason}")
        device_usable(self.device)


def completed_keys(results: Path, env: dict) -> set:
    """Job keys already in the results file for this GPU, code revision and versions (for --resume).

    Args:
        results: the results file.  env: this run's ``environment``.
    """
    if not results.exists():
        return set()
    same = ("gpu", "torch", "triton", "triton_lstm", "git", "tf32_matmul", "tf32_cudnn")
    keys = set()
    for row in plot.load_rows([results]):
        if all(row.get(k) == env[k] for k in same):
            case = Case(row["group"], row["T"], row["B"], row["D"], row["N"], row["P"], row["peepholes"],
                        row["cell_clip"], row["proj_clip"])
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


def run_demo() -> int:
    """benchmarks.demo in a subprocess with TRITON_INTERPRET=1 (set before Triton builds the kernels)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.demo"], cwd=REPO, env=env).returncode


def render_plots(paths: list[Path], plots_dir: Path) -> None:
    rows = plot.load_rows(paths)
    if not rows:
        print(f"no benchmark results in {', '.join(str(p) for p in paths) or 'benchmarks/results/'}: nothing "
              f"to plot (a GPU session fills them: bash benchmarks/gpu_session.sh)")
        return
    for path in plot.render(rows, plots_dir):
        print(f"wrote {path}")


def cpu_main(args) -> int:
    """No GPU: the interpreter demo, then the plots from the committed results."""
    print("no CUDA GPU found (torch.cuda.is_available() is False): no timings. Running the interpreter demo "
          "and rendering the plots from the committed results instead.", flush=True)
    status = run_demo()
    committed = sorted(RESULTS_DIR.glob("*.jsonl"))
    render_plots(committed, args.plots_dir)
    if status != 0:
        print(f"interpreter demo FAILED (exit status {status})")
    return status


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset that finishes in a few minutes")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device; needs --results")
    parser.add_argument("--list", action="store_true", help="print the jobs and exit")
    parser.add_argument("--out", type=Path, help="also write this run's rows, log and table here")
    parser.add_argument("--results", type=Path, help="results file (default benchmarks/results/<gpu>.jsonl)")
    parser.add_argument("--resume", action="store_true", help="skip jobs already in the results file")
    parser.add_argument("--budget-s", type=float, help="start no new job after this many seconds "
                        "(default 240 with --quick, else none)")
    parser.add_argument("--groups", nargs="+", choices=["default", "lstmp", "seq_len", "grid", "smoke"])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    parser.add_argument("--modes", nargs="+", choices=MODES)
    parser.add_argument("--tf32", action="store_true", help="allow tf32 in torch matmuls and cuDNN (fp32 cases)")
    parser.add_argument("--plots-dir", type=Path, help="where the plots go (default plots/)")
    parser.add_argument("--no-plots", action="store_true", help="do not render plots after the run "
                        "(implied by --smoke without --plots-dir)")
    args = parser.parse_args(argv)
    if args.quick and args.smoke:
        parser.error("--quick and --smoke exclude each other")
    if args.smoke and args.results is None and not args.list:
        parser.error("--smoke needs --results FILE (smoke rows are no benchmark results)")
    if args.budget_s is None and args.quick:
        args.budget_s = 240.0
    if args.plots_dir is None:
        args.no_plots |= args.smoke
        args.plots_dir = REPO / "plots"
    return args


def main(argv=None) -> int:
    """Command line (see the module docstring). Args: argv: arguments, default sys.argv[1:]."""
    args = parse_args(argv)
    suite = "smoke" if args.smoke else "quick" if args.quick else "standard"
    jobs = select({"smoke": smoke_suite, "quick": quick_suite, "standard": standard_suite}[suite](), args)
    if args.list:
        print_jobs(jobs)
        return 0
    has_gpu = torch.cuda.is_available()
    if not has_gpu and not args.smoke:
        return cpu_main(args)
    device = torch.device("cuda" if has_gpu else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    # Every (dtype, option set) of the compiled step is a recompile; never fall back to eager silently.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    # The bwd mode repeats a backward with retain_graph=True, which donated buffers forbid.
    torch._functorch.config.donated_buffer = False
    env = environment(device, suite)
    results = args.results.resolve() if args.results else RESULTS_DIR / f"{env['gpu_slug']}.jsonl"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "bench_log.txt", "a") if args.out is not None else None

    def log(msg: str) -> None:
        print(msg, flush=True)
        if log_file is not None:
            log_file.write(msg + "\n")
            log_file.flush()

    log(f"{env['gpu']} ({env['sm_count']} SMs, driver {env['driver']}), torch {env['torch']}, triton "
        f"{env['triton']}, triton_lstm {env['triton_lstm']} ({env['git']}), tf32 {args.tf32}; suite {suite}, "
        f"{len(jobs)} jobs -> {results}")
    if args.resume:
        done = completed_keys(results, env)
        jobs = [j for j in jobs if j.key() not in done]
        log(f"--resume: {len(done)} jobs already in {results}, {len(jobs)} to run")
    start = time.monotonic()
    dtypes = sorted({j.dtype for j in jobs}, key=list(DTYPES).index)
    floor = Floor({d: measure_matmul_tflops(DTYPES[d], device, args.quick) for d in dtypes},
                  *measure_barrier_us(device, args.quick))
    log("matmul TFLOP/s: " + ", ".join(f"{d} {r:.1f}" for d, r in floor.matmul_tflops.items())
        + f"; grid barrier: {floor.barrier_us if floor.barrier_us is None else round(floor.barrier_us, 3)} us "
        f"({floor.barrier_note})")
    runner = Runner(device, env, floor, results, args.out, args.quick, log)
    not_run = []
    for (case, dtype), group in itertools.groupby(jobs, key=lambda j: (j.case, j.dtype)):
        case_jobs = list(group)
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            not_run += case_jobs
            continue
        log(f"{case.label()} {dtype}  ({time.monotonic() - start:.0f} s)")
        runner.run_case(case, dtype, case_jobs)
    log(f"{len(runner.rows)} rows in {time.monotonic() - start:.0f} s -> {results}")
    if not_run:
        log(f"time budget of {args.budget_s:g} s spent: {len(not_run)} jobs not run, e.g. "
            f"{not_run[0].case.label()} {not_run[0].dtype}; run again with --resume (carrying {results})")
    if not args.no_plots:
        render_plots(sorted(set(RESULTS_DIR.glob("*.jsonl")) | {results}), args.plots_dir)
    table = plot.summary_table(runner.rows)
    if args.out is not None:
        (args.out / "summary.txt").write_text(table + "\n")
    log(table)
    if log_file is not None:
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
