"""How much slower the kernels run under Triton's interpreter than the plain-PyTorch reference, on CPU.

``python -m benchmarks.interpreter_cost`` times ``lstm_sequence`` forward and backward (median of
``REPEATS`` after one warm-up) twice, each in a fresh process: once under the interpreter
(TRITON_INTERPRET=1, the kernels) and once without (the reference), and appends one JSON line with
both times, their ratio, the machine, the versions and the date to
``benchmarks/results/interpreter/cost.jsonl``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# A folder of its own: benchmarks/results/*.jsonl holds the GPU suite's rows, which the plots read.
RESULTS = Path(__file__).resolve().parent / "results" / "interpreter" / "cost.jsonl"
T, B, D, N = 16, 8, 32, 32
REPEATS = 5


def time_one_path() -> float:
    """Median seconds of one forward and backward of lstm_sequence in this process."""
    import torch
    from triton_lstm import lstm_sequence

    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, D, generator=g, requires_grad=True)
    weights = [(torch.randn(D, 4 * N, generator=g) * D ** -0.5).requires_grad_(),
               (torch.randn(N, 4 * N, generator=g) * N ** -0.5).requires_grad_(), torch.zeros(4 * N)]
    h0, c0 = torch.zeros(B, N), torch.zeros(B, N)
    times = []
    for _ in range(REPEATS + 1):
        start = time.perf_counter()
        out, _, _ = lstm_sequence(x, h0, c0, *weights, forget_bias=1.0)
        out.square().sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    if "--one" in sys.argv:
        print(json.dumps(time_one_path()))
        return
    seconds = {}
    for name, interpret in (("interpreter", "1"), ("reference", None)):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        if interpret:
            env["TRITON_INTERPRET"] = interpret
        run = subprocess.run([sys.executable, "-m", "benchmarks.interpreter_cost", "--one"], env=env,
                             capture_output=True, text=True, check=True)
        seconds[name] = json.loads(run.stdout.strip().splitlines()[-1])
    import torch
    import triton
    row = dict(case=dict(T=T, B=B, D=D, N=N, dtype="float32", what="lstm_sequence forward+backward"),
               seconds=seconds, ratio=seconds["interpreter"] / seconds["reference"],
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
