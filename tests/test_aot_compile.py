"""Every launchable kernel variant (step and sequence) compiles for sm_80 and sm_90 without spills, no GPU needed."""
import json
import os
import subprocess
import sys

import pytest
import triton

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="Triton's wheel ships no cuobjdump on this platform")
def test_kernels_compile_for_sm80_sm90(tmp_path):
    # A fresh interpreter: the test session's kernels were built by the interpreter, which cannot compile.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = tmp_path / "aot.jsonl"
    proc = subprocess.run([sys.executable, "-m", "triton_lstm.aot", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout)  # register counts per variant, shown with pytest -s
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["arch"] for r in rows} == {80, 90}
    assert {r["kernel"] for r in rows} == {"fwd", "bwd", "seq_fwd", "seq_bwd"}
    assert all(r["reg"] > 0 and r["local"] == 0 and r["stack"] == 0 for r in rows)
