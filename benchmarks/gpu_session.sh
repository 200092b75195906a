#!/usr/bin/env bash
# One GPU session in one call: install, versions, GPU tests, benchmarks, plots; summary last.
#
#   TRITON_LSTM_GIT=<commit> bash benchmarks/gpu_session.sh [quick|full]   (make gpu-check; default quick)
#
# Call it directly, not as a fallback after another run of it (it exits non-zero when a phase failed,
# and a second run would start the whole session again). A tree copied without .git names its commit
# in TRITON_LSTM_GIT: the benchmark rows carry it, and --resume matches rows by it.
# The GPU machines have no network: `make gpu-wheels` first (here), and carry .whl/ with the call, for
# the test package they lack (expecttest, which PyTorch's test helpers import).
# quick  (default, under ~8 minutes): editable install without dependencies (the machine's torch and
#        Triton stay), nvidia-smi and versions, the GPU tests (tests/test_gpu.py: pytest -n 8 -v, tuning
#        off, the step kernels' option pairs), then the rest of the test suite on the GPU for what time
#        its phase leaves (the CPU-only checks, which CI runs on Triton 3.6 too, left out: the AOT and
#        host-path builds, the CPU path, the CPU benchmark), `python -m benchmarks.run --quick` (it
#        prints the first-call tuning time per shape), the plots from benchmarks/results/*.jsonl (the
#        committed rows that travelled with the tree plus this run's).
# full   the step kernels' full option product (pytest -n 16; TESTS=0 leaves it out, for the calls
#        after the first; SHARD=k/n runs its k-th of n slices, e.g. 1/8 to 8/8 over eight calls: the 1728
#        cases take longer than one call), then the standard suite with --resume under a time budget,
#        then the plots.
#        The suite is longer than one call: copy the returned results.jsonl onto
#        benchmarks/results/<gpu>.jsonl (append) and call again, with the same TRITON_LSTM_GIT, until
#        it reports no jobs left.
#
# Writes at most 6 files into $OUT (the device tool returns 8, two folder levels):
#   session_log.txt  everything printed;      results.jsonl  this run's benchmark rows;
#   bench_log.txt    the benchmark's log;     summary.txt    the benchmark's table;
#   plots.tar        the PNGs and headline.md; phases.txt    the phase table printed last.
# Time limits per phase (seconds) can be overridden: GPU_TESTS_TIMEOUT (quick), TESTS_TIMEOUT,
# TEST_TIMEOUT (one test), BENCH_BUDGET, BENCH_TIMEOUT.
set -u -o pipefail

SESSION=${1:-quick}
case "$SESSION" in
    quick|full) ;;
    *) echo "usage: bash benchmarks/gpu_session.sh [quick|full]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
OUT=${OUT:-/tmp/triton_lstm_gpu_session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
TEST_TIMEOUT=${TEST_TIMEOUT:-90}
# Worst cases after the install (two offline pip calls of seconds, each stopped at 30 s), every phase
# at its limit plus 5 s to kill it: quick 125 + 75 + 195 + 65 = 460 s, full 205 + 265 + 65 = 535 s,
# under the device call's 600 s. The benchmark starts no job after its budget, then finishes the case
# in hand and writes its table before its limit.
if [ "$SESSION" = quick ]; then
    GPU_TESTS_TIMEOUT=${GPU_TESTS_TIMEOUT:-120}
    TESTS_TIMEOUT=${TESTS_TIMEOUT:-70}
    BENCH_BUDGET=${BENCH_BUDGET:-130}
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-190}
else
    TESTS_TIMEOUT=${TESTS_TIMEOUT:-200}
    BENCH_BUDGET=${BENCH_BUDGET:-200}
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-260}
fi
PLOTS=$(mktemp -d)/plots
PHASES=$OUT/phases.txt
# This run's files only (the benchmark appends to results.jsonl and bench_log.txt).
rm -f "$OUT/results.jsonl" "$OUT/bench_log.txt" "$OUT/summary.txt" "$OUT/plots.tar"
: > "$PHASES"

# record NAME RC T0 LIMIT: one line of the phase table.
record() {
    local verdict=ok
    if [ -n "$4" ] && { [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; }; then verdict="TIMED OUT after $4 s"
    elif [ "$2" -ne 0 ]; then verdict="FAILED (exit $2)"; fi
    printf '%-10s %-28s %4d s\n' "$1" "$verdict" $((SECONDS - $3)) >> "$PHASES"
    return "$2"
}

# phase NAME LIMIT CMD...: run an external command under a time limit (timeout signals its whole
# process group, pytest-xdist workers included).
phase() {
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo
    echo "=== $name (limit $limit s): $* ==="
    timeout --kill-after=5 "$limit" "$@"
    record "$name" $? "$t0" "$limit"
}

# step NAME FUNCTION: run a function of this script in this shell (its exports stay).
step() {
    local t0=$SECONDS
    echo
    echo "=== $1 ==="
    "$2"
    record "$1" $? "$t0" ""
}

install() {
    # Dependencies are the machine's own (no registry there): install the package alone, and the test
    # packages the machine lacks from the wheels carried in .whl/ (`make gpu-wheels`).
    if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
        local wheels
        wheels=$(mktemp -d)
        if timeout 30 $PY -m pip install -q --no-index --disable-pip-version-check --no-deps --no-compile --target "$wheels" "$REPO"/.whl/*.whl; then
            export PYTHONPATH="$wheels${PYTHONPATH:+:$PYTHONPATH}"
            echo "carried wheels: $(cd "$REPO/.whl" && echo *.whl)"
        else
            echo "the carried wheels did not install; going on without them"
        fi
    fi
    $PY -c "import expecttest" 2>/dev/null ||
        echo "expecttest is missing (not carried in .whl/): PyTorch's nn.LSTM tests will be skipped"
    if timeout 30 $PY -m pip install -q --no-index --disable-pip-version-check --no-deps --no-build-isolation -e "$REPO"; then
        echo "installed triton_lstm editable (pip --no-deps)"
    else
        # Without pip's editable install: a package folder of links, triton_lstm/kernels -> kernels/,
        # first on the path, and no current directory on it (its triton_lstm/ has no kernels/).
        echo "pip install -e failed; using a linked package folder on PYTHONPATH instead"
        local site
        site=$(mktemp -d)
        mkdir "$site/triton_lstm"
        ln -s "$REPO"/triton_lstm/*.py "$site/triton_lstm/"
        ln -s "$REPO/kernels" "$site/triton_lstm/kernels"
        export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    fi
    $PY -c "import triton_lstm, triton_lstm.kernels; print('triton_lstm', triton_lstm.__version__, 'from', triton_lstm.__file__)"
}

versions() {
    nvidia-smi || return 1
    $PY - <<'EOF'
import torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), triton {triton.__version__}")
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA GPU")
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: {p.multi_processor_count} SMs, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
EOF
}

plots_tar() {
    if [ -d "$PLOTS" ]; then
        tar -cf "$OUT/plots.tar" -C "$(dirname "$PLOTS")" plots && echo "plots: $OUT/plots.tar ($(ls "$PLOTS" | wc -l) files)"
    else
        echo "no plots were rendered"
    fi
}

main() {
    local failed=0
    echo "gpu_session $SESSION: $(date -u +%FT%TZ) in $REPO, output in $OUT"
    if [ ! -e "$REPO/.git" ] && [ -z "${TRITON_LSTM_GIT:-}" ]; then
        echo "WARNING: no .git here and TRITON_LSTM_GIT unset: the benchmark rows name no commit"
    fi
    step install install || failed=1
    step versions versions || { failed=1; echo "no usable GPU: stopping"; }
    if [ $failed -eq 0 ]; then
        local bench_args=(--out "$OUT" --no-plots --budget-s "$BENCH_BUDGET")
        local xdist=(-n 8)
        if ! $PY -c "import xdist" 2>/dev/null; then
            xdist=()
            echo "pytest-xdist is not installed: the tests run in one process"
        fi
        # Stop starting tests before a phase's limit (stop_early LIMIT sets it), so that pytest still
        # prints which failed; a test that hangs (a CUDA sync never returning) is stopped by a thread,
        # its worker replaced.
        local stop_early=() per_test=()
        local options
        options=$($PY -m pytest --help 2>/dev/null)
        stop_early() {
            stop_early=()
            if grep -q -- --session-timeout <<< "$options"; then stop_early=(--session-timeout $(($1 - 25))); fi
        }
        if grep -q -- --timeout-method <<< "$options"; then
            per_test=(--timeout "$TEST_TIMEOUT" --timeout-method=thread)
        else
            echo "pytest-timeout is not installed: no test is stopped on its own"
        fi
        if [ "$SESSION" = quick ]; then
            # The tests run with tuning off (the first configuration that fits; the tuner's own test
            # turns it on); the benchmark tunes, and reports what each shape's first call cost.
            # Inductor compiles in each test process (its default pool would start 16 workers in each of 8).
            # Each result is printed as it comes (-v), so that a phase stopped at its limit still shows
            # which tests failed. The GPU tests first, in a phase of their own: the suite's other tests
            # (the kernels against the reference on the GPU) get the time left after them.
            local run_tests=(env TRITON_LSTM_AUTOTUNE=0 TRITON_LSTM_PORT_THIN=1 TORCHINDUCTOR_COMPILE_THREADS=1
                             $PY -m pytest -v "${xdist[@]}")
            stop_early "$GPU_TESTS_TIMEOUT"
            phase gpu-tests "$GPU_TESTS_TIMEOUT" "${run_tests[@]}" "${stop_early[@]}" "${per_test[@]}" --durations=5 \
                tests/test_gpu.py || failed=1
            stop_early "$TESTS_TIMEOUT"
            phase tests "$TESTS_TIMEOUT" "${run_tests[@]}" "${stop_early[@]}" "${per_test[@]}" --durations=5 \
                --continue-on-collection-errors tests/ --deselect tests/test_gpu.py \
                --deselect tests/test_aot_compile.py --deselect tests/test_host_path.py --deselect tests/test_cpu.py \
                --deselect tests/test_benchmarks.py || failed=1
            phase bench "$BENCH_TIMEOUT" $PY -m benchmarks.run --quick "${bench_args[@]}" || failed=1
        else
            [ ${#xdist[@]} -gt 0 ] && xdist=(-n 16)
            export TRITON_LSTM_GPU_FULL=1
            [ -n "${SHARD:-}" ] && export TRITON_LSTM_GPU_SHARD=$SHARD
            if [ "${TESTS:-1}" != 0 ]; then
                stop_early "$TESTS_TIMEOUT"
                phase tests "$TESTS_TIMEOUT" env TRITON_LSTM_AUTOTUNE=0 $PY -m pytest -v "${xdist[@]}" "${stop_early[@]}" \
                    "${per_test[@]}" --continue-on-collection-errors tests/test_gpu.py -k step_option_matrix || failed=1
            fi
            phase bench "$BENCH_TIMEOUT" $PY -m benchmarks.run --resume "${bench_args[@]}" || failed=1
        fi
        # From every results file here: the committed rows that travelled with the tree and this run's.
        phase plots 60 $PY -m benchmarks.plot --plots-dir "$PLOTS" || failed=1
        plots_tar
    fi
    echo
    echo "=== summary: $SESSION session, $SECONDS s, files in $OUT ==="
    if [ -f "$OUT/summary.txt" ]; then
        cat "$OUT/summary.txt"
    elif [ -f "$OUT/results.jsonl" ]; then
        echo "(the benchmark did not finish: table of the rows it wrote)"
        $PY -m benchmarks.plot --table "$OUT/results.jsonl"
    fi
    if [ -f "$OUT/bench_log.txt" ]; then grep -E "jobs not run|rows in" "$OUT/bench_log.txt" | tail -2; fi
    if [ -s "$OUT/results.jsonl" ]; then
        local gpu_slug
        gpu_slug=$(head -1 "$OUT/results.jsonl" | $PY -c 'import json, sys; print(json.load(sys.stdin)["gpu_slug"])')
        echo "to keep the rows: append the returned results.jsonl to benchmarks/results/$gpu_slug.jsonl and commit;"
        echo "the next 'TRITON_LSTM_GIT=<the same commit> TESTS=0 bash benchmarks/gpu_session.sh full' call then resumes after them"
    fi
    echo "phase      status                       time"
    cat "$PHASES"
    return $failed
}

main 2>&1 | tee "$OUT/session_log.txt"
