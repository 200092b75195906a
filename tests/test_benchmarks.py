"""The benchmark harness end to end at smoke size (any device), and make bench's CPU demo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_smoke_suite_writes_checked_rows_and_headline(tmp_path):
    results = tmp_path / "rows.jsonl"
    run("benchmarks.run", "--smoke", "--results", str(results), "--providers", "triton_persistent", "cudnn",
        "--dtypes", "fp32", "--modes", "fwd", "fwd+bwd", "--plots-dir", str(tmp_path / "plots"))
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert {r["provider"] for r in rows} == {"triton_persistent", "cudnn"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["missing"] is None, r
        assert r["ms"] > 0 and r["torch"] == torch.__version__ and r["date"]
    ours = [r for r in rows if r["provider"] == "triton_persistent"]
    assert all(r["check_rel_err"] < 1e-4 for r in ours)
    assert (tmp_path / "plots" / "headline.md").read_text().strip()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the demo is make bench's no-GPU path")
def test_cpu_demo_checks_the_kernels():
    out = run("benchmarks.demo").stdout
    assert "interpreter demo passed" in out
