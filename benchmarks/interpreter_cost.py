"""How much slower the kernels run under Triton's interpreter than the CPU paths, on CPU.

``python -m benchmarks.interpreter_cost`` times one forward and backward of ``lstm_sequence`` (best of
``REPEATS`` after one warm-up) three ways, each in a fresh process: under the interpreter
(TRITON_INTERPRET=1: the kernels), without it (the CPU path users run: torch's LSTM for this plain
cell), and the plain-PyTorch reference (``lstm_sequence_reference``). It appends one JSON line with
the times, the interpreter's ratio to each, the machine, the versions and the date to ``--results``
(default ``benchmarks/results/interpreter/cost.jsonl``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.plot import check_writable

# A folder of its own: benchmarks/results/*.jsonl holds the GPU suite's rows, which the plots read.
RESULTS = Path(__file__).resolve().parent / "results" / "interpreter" / "cost.jsonl"
T, B, D, N = 16, 8, 32, 32
REPEATS = 5
# name: (TRITON_INTERPRET, function timed)
PATHS = {"interpreter": ("1", "lstm_sequence"), "cpu_path": (None, "lstm_sequence"),
         "reference": (None, "lstm_sequence_reference")}


def time_one_path(function: str) -> float:
    """Best seconds of one forward and backward of triton_lstm's ``function`` in this process."""
    import torch
    import triton_lstm

    fn = getattr(triton_lstm, function)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, D, generator=g, requires_grad=True)
    weights = [(torch.randn(D, 4 * N, generator=g) * D ** -0.5).requires_grad_(),
               (torch.randn(N, 4 * N, generator=g) * N ** -0.5).requires_grad_(), torch.zeros(4 * N)]
    h0, c0 = torch.zeros(B, N), torch.zeros(B, N)
    times = []
    for _ in range(REPEATS + 1):
        start = time.perf_counter()
        out, _, _ = fn(x, h0, c0, *weights, forget_bias=1.0)
        out.square().sum().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interpreter_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"JSON lines file to append to (default {RESULTS})")
    parser.add_argument("--one", choices=sorted({f for _, f in PATHS.values()}), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # one timing, in the process the parent set up
        print(json.dumps(time_one_path(args.one)))
        return 0
    check_writable(parser, "--results", args.results, folder=False)
    seconds = {}
    for name, (interpret, function) in PATHS.items():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        if interpret:
            env["TRITON_INTERPRET"] = interpret
        run = subprocess.run([sys.executable, "-m", "benchmarks.interpreter_cost", "--one", function], env=env,
                             capture_output=True, text=True, check=True)
        seconds[name] = json.loads(run.stdout.strip().splitlines()[-1])
    import torch
    import triton
    row = dict(case=dict(T=T, B=B, D=D, N=N, dtype="float32", what="lstm_sequence forward+backward, best of "
                         f"{REPEATS} after a warm-up"),
               seconds=seconds,
               ratio={name: seconds["interpreter"] / seconds[name] for name in ("cpu_path", "reference")},
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
