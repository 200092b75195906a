"""The one-call GPU session script (benchmarks/gpu_session.sh) on this machine: what it runs, in which
order and with which limits, and how it reports a failed phase. What it runs is replaced by stubs: a
``python`` that logs its arguments (and answers the script's probes: pytest's options, the versions)
and an ``nvidia-smi``; the script itself runs unchanged in bash."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON_STUB = """#!/bin/bash
echo "${TRITON_LSTM_GPU_SHARD:+shard $TRITON_LSTM_GPU_SHARD: }$*" >> "$CALLS"
case "$*" in
    "-m pytest --help") echo "  --session-timeout=SECONDS  --timeout-method=METHOD" ;;
    "-") cat > /dev/null; echo "torch x, triton y" ;;
    "-m pytest"*) [ -n "$FAIL_PYTEST" ] && exit 1 ;;
esac
exit 0
"""


def session(tmp_path, *args, **env):
    """Runs the script in a copy of the tree's script folder; returns (the finished process, calls logged,
    the phase table's lines)."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    for name, text in (("python", PYTHON_STUB), ("nvidia-smi", "#!/bin/bash\necho stub-smi\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "benchmarks", tree / "benchmarks", ignore=shutil.ignore_patterns("results", "__pycache__"))
    calls = tmp_path / "calls.log"
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_session.sh"), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                                                PYTHON=str(bin_dir / "python"), OUT=str(out), CALLS=str(calls),
                                                TRITON_LSTM_GIT="0123456789ab", TMPDIR=str(tmp_path), **env))
    lines = calls.read_text().splitlines() if calls.exists() else []
    phases = out / "phases.txt"
    return proc, lines, phases.read_text().splitlines() if phases.exists() else []


def test_quick_session_runs_the_gpu_tests_first_then_the_rest_then_the_benchmark(tmp_path):
    proc, calls, phases = session(tmp_path, "quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    runs = [c for c in calls if c.startswith(("-m pytest -v", "-m benchmarks"))]
    assert runs[0].startswith("-m pytest -v -n 8 --session-timeout 95 ") and runs[0].endswith(" tests/test_gpu.py")
    assert runs[1].startswith("-m pytest -v -n 8 --session-timeout 45 ") and "tests/ --deselect tests/test_gpu.py" \
        in runs[1] and "--deselect tests/test_cpu.py" in runs[1]
    assert runs[2].startswith("-m benchmarks.run --quick --out ") and runs[2].endswith("--no-plots --budget-s 130")
    assert runs[3].startswith("-m benchmarks.plot --plots-dir ") and len(runs) == 4
    assert [p.split()[:2] for p in phases] == [["install", "ok"], ["versions", "ok"], ["gpu-tests", "ok"],
                                                ["tests", "ok"], ["bench", "ok"], ["plots", "ok"]]


def test_full_session_resumes_and_tests_only_on_request(tmp_path):
    proc, calls, phases = session(tmp_path, "full", TESTS="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    runs = [c for c in calls if c.startswith(("-m pytest -v", "-m benchmarks"))]
    assert runs[0].startswith("-m benchmarks.run --resume --out ") and runs[0].endswith("--budget-s 200")
    assert [p.split()[0] for p in phases] == ["install", "versions", "bench", "plots"]


def test_full_session_tests_a_slice_of_the_option_product(tmp_path):
    proc, calls, phases = session(tmp_path, "full", SHARD="3/8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    tests = [c for c in calls if "-m pytest -v" in c]
    assert len(tests) == 1 and tests[0].startswith("shard 3/8: -m pytest -v -n 16 --session-timeout 175 ")
    assert tests[0].endswith("tests/test_gpu.py -k step_option_matrix")


def test_a_failed_phase_is_reported_and_the_session_goes_on(tmp_path):
    proc, calls, phases = session(tmp_path, "quick", FAIL_PYTEST="1")
    assert proc.returncode == 1
    assert [p.split()[:3] for p in phases[2:4]] == [["gpu-tests", "FAILED", "(exit"], ["tests", "FAILED", "(exit"]]
    assert phases[4].split()[:2] == ["bench", "ok"]


def test_unknown_session_is_a_usage_error(tmp_path):
    proc, calls, phases = session(tmp_path, "slow")
    assert proc.returncode == 2 and "usage: bash benchmarks/gpu_session.sh [quick|full]" in proc.stderr
    assert calls == [] and phases == []
