"""What runs compiles for sm_80 and sm_90 without a GPU: every launch's default, every tuner candidate
at the shapes users run, and resident weights at the sizes the README states (python -m triton_lstm.aot)."""
import json
import os
import re

import pytest

from helpers import fresh_python
from triton_lstm.aot import arch_from_env
from triton_lstm.launch import resident_limits
from triton_lstm.tune import CUOBJDUMP


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="Triton's wheel ships no cuobjdump on this platform")
def test_what_runs_compiles_for_sm80_sm90(tmp_path):
    # A fresh process: the test session's kernels were built by the interpreter, which cannot compile.
    out = tmp_path / "aot.jsonl"
    proc = fresh_python("-m", "triton_lstm.aot", "--json", str(out), timeout=1500)
    print(proc.stdout[-20000:])  # registers and shared memory per kernel and configuration, with pytest -s
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    archs = set(arch_from_env())
    assert {r["arch"] for r in rows} == archs
    assert {r["kernel"] for r in rows} == {"step_fwd", "step_proj", "step_bwd", "seq_fwd", "seq_bwd"}
    # The stepped fallback is built as it launches: each phase's kernel, without the grid barrier.
    stepped = [r for r in rows if r["config"]["stepped"]]
    assert stepped and all(r["phase"]["USE_BARRIER"] is False for r in stepped)
    assert {r["phase"]["PHASES"] for r in stepped if r["kernel"] == "seq_bwd" and r["projection"] != "none"} == {1, 2}
    for arch, by_dtype in ((a, resident_limits()[a]) for a in archs):
        for dtype, sizes in by_dtype.items():
            for N, P in sizes:
                for kernel in ("seq_fwd", "seq_bwd"):
                    kept = [r for r in rows if r["kernel"] == kernel and r["dtype"] == dtype and r["arch"] == arch
                            and r["shape"][2] == N and r["shape"][3] == (P or N) and r["kept"]
                            and r["config"]["resident"]]
                    assert kept, f"{kernel} {dtype} N={N} P={P} sm_{arch}: no resident configuration builds " \
                                 f"without spills within the limits, but the README says its weights stay on chip"


@pytest.mark.parametrize("args,env,message", [
    (["--jobs", "0"], None, r"argument --jobs: expected an integer >= 1, got '0'"),
    (["--json", "{missing}/aot.jsonl"], None, r"--json: cannot write .*missing/aot.jsonl"),
    ([], "70", r"TRITON_LSTM_AOT_ARCH: expected compute capabilities among \[80, 90\], got '70'"),
    ([], "", r"TRITON_LSTM_AOT_ARCH: expected compute capabilities among \[80, 90\], got ''")],
    ids=["jobs-0", "unwritable-json", "unknown-arch", "empty-arch"])
def test_aot_rejects_bad_arguments_before_compiling(tmp_path, monkeypatch, capsys, args, env, message):
    """A check that compiles nothing must not pass, and a report that cannot be written must fail
    before the compiling, not after it."""
    from triton_lstm import aot

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if env is not None:
        monkeypatch.setenv("TRITON_LSTM_AOT_ARCH", env)
    monkeypatch.setattr(aot, "variants", lambda full: pytest.fail("compiling started"))
    with pytest.raises(SystemExit) as exit_:
        aot.main([a.format(missing=tmp_path / "missing") for a in args])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err.splitlines()[-1])
