"""The benchmark harness: the CPU suite end to end at smoke size (what ``make bench`` runs without a
GPU), the GPU suite's host logic (its smoke version under the interpreter, the job list, budget and
progress), and the plotting CLI."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import plot, run as bench_run
from helpers import fresh_python


def run(*args: str, interpret: bool, expect: int = 0) -> subprocess.CompletedProcess:
    """python -m args in a fresh process; without ``interpret`` as users run (no TRITON_INTERPRET)."""
    env = dict(TRITON_INTERPRET="1") if interpret and not torch.cuda.is_available() else {}
    proc = fresh_python("-m", *args, timeout=600, **env)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU suite is make bench's path without a GPU")
def test_cpu_suite_smoke_writes_rows_plot_and_table(tmp_path):
    results, plots = tmp_path / "rows.jsonl", tmp_path / "plots"
    out = run("benchmarks.run", "--smoke", "--results", str(results), "--plots-dir", str(plots),
              interpret=False).stdout
    rows = rows_of(results)
    assert len(rows) == len(bench_run.cpu_smoke_suite())
    assert {r["provider"] for r in rows} == set(bench_run.CPU_PROVIDERS)
    for r in rows:
        assert r["missing"] is None, r
        assert r["device"] == "cpu" and r["cpu"] and r["threads"] == torch.get_num_threads() and r["onednn"]
        assert r["machine"].endswith(f"(CPU, {r['threads']} threads)") and r["machine_slug"].startswith("cpu-")
        assert r["ms"] > 0 and r["ms_median"] >= r["ms"] and r["torch"] == torch.__version__ and r["date"]
        if r["provider"] != "nn_lstm" or not r["peepholes"]:
            assert r["check_rel_err"] < 1e-4, r
    paths = {(r["provider"], r["peepholes"], r["lengths"]): r["code_path"] for r in rows}
    assert paths[("lstm_sequence", True, False)] == "CPU loop" and paths[("lstm_module", True, False)] == "CPU loop"
    assert paths[("lstm_sequence", False, False)] == "oneDNN LSTM" and paths[("nn_lstm", False, False)] == "oneDNN LSTM"
    assert paths[("lstm_sequence", False, True)] == "CPU loop" and paths[("nn_lstm", False, True)] == "aten LSTM"
    assert "[0/24 jobs]" in out and "ETA ~" in out and "GPU numbers come from a machine with a CUDA GPU" in out
    slug = rows[0]["machine_slug"]
    assert (plots / f"{slug}-vs_nn_lstm.png").stat().st_size > 10_000
    headline = (plots / "headline.md").read_text()
    assert "| B=3, 8/8 | peepholes + cell clip | CPU loop |" in headline


def test_gpu_suite_smoke_checks_the_kernels_under_the_interpreter(tmp_path):
    """The GPU suite's harness on any device: on a CPU the kernels run under the interpreter."""
    results = tmp_path / "rows.jsonl"
    run("benchmarks.run", "--suite", "standard", "--smoke", "--results", str(results), "--providers",
        "lstm_sequence", "nn_lstm", "--dtypes", "fp32", "--modes", "fwd", "fwd+bwd", "--plots-dir",
        str(tmp_path / "plots"), interpret=True)
    rows = rows_of(results)
    assert {r["provider"] for r in rows} == {"lstm_sequence", "nn_lstm"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["missing"] is None, r
        assert r["ms"] > 0 and r["torch"] == torch.__version__ and r["date"]
    ours = [r for r in rows if r["provider"] == "lstm_sequence"]
    assert all(r["check_rel_err"] < 1e-4 and r["code_path"] == "persistent kernel" for r in ours)
    assert (tmp_path / "plots" / "headline.md").read_text().strip()


def test_gpu_suites_without_a_gpu_say_what_to_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    err = run("benchmarks.run", "--quick", interpret=False, expect=2).stderr
    assert "needs a CUDA GPU" in err and "--suite cpu" in err


def test_standard_suite_list_and_budget(capsys):
    assert bench_run.main(["--list", "--suite", "standard"]) == 0
    listing = capsys.readouterr().out
    assert f"{len(bench_run.standard_suite())} jobs in" in listing and "lstm_sequence,step_loop,nn_lstm" in listing
    budget = bench_run.time_budget
    assert budget(bench_run.parse_args([]), "standard", has_gpu=True) == bench_run.DEFAULT_BUDGET_S["standard"]
    assert budget(bench_run.parse_args(["--budget-s", "90"]), "standard", has_gpu=True) == 90
    assert budget(bench_run.parse_args([]), "cpu", has_gpu=False) is None
    assert bench_run.parse_args(["--quick"]).suite == "quick"
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--quick", "--suite", "cpu"])


def test_progress_counts_jobs_and_scales_the_eta_by_work():
    assert bench_run.progress(0, 10, 0.0, 100.0, 0.0, None) == "[0/10 jobs] 0 s elapsed"
    assert bench_run.progress(4, 10, 25.0, 100.0, 30.0, None) == "[4/10 jobs] 30 s elapsed, ETA ~90 s"
    line = bench_run.progress(4, 10, 25.0, 100.0, 30.0, 60.0)
    assert line.endswith("(the 60 s budget stops new jobs in 30 s)")


def test_a_provider_without_timings_stays_in_the_legend_as_missing():
    rows = [dict(provider="nn_lstm", missing="cuDNN is not available to torch", ms=None, device="cuda"),
            dict(provider="lstm_sequence", missing=None, ms=1.0, device="cuda")]
    assert plot.legend_label(rows, "nn_lstm") == "nn.LSTM (cuDNN) (missing: cuDNN is not available to torch)"
    assert plot.legend_label(rows, "lstm_sequence") == "triton_lstm persistent"


def test_plot_cli_usage_and_missing_file(tmp_path):
    assert "usage: python -m benchmarks.plot" in run("benchmarks.plot", "--help", interpret=False).stdout
    assert "usage: python -m benchmarks.run" in run("benchmarks.run", "--help", interpret=False).stdout
    err = run("benchmarks.plot", str(tmp_path / "absent.jsonl"), interpret=False, expect=2).stderr
    assert "not a results file" in err and "absent.jsonl" in err
    err = run("benchmarks.plot", str(tmp_path), interpret=False, expect=2).stderr
    assert f"not a results file: {tmp_path} (a folder)" in err
    bad, other = tmp_path / "bad.jsonl", tmp_path / "other.jsonl"
    bad.write_text(json.dumps(dict.fromkeys(plot.ROW_FIELDS)) + '\nnot json\n')
    other.write_text('{"case": {"T": 16}, "seconds": {}}\n')
    for args in (("benchmarks.plot", str(bad)),
                 ("benchmarks.run", "--suite", "cpu", "--resume", "--results", str(bad))):
        err = run(*args, interpret=False, expect=2).stderr
        assert f"{bad}:2: not a JSON line" in err and "Traceback" not in err
    err = run("benchmarks.plot", "--table", str(other), interpret=False, expect=2).stderr
    assert f"{other}:1: not a row of benchmarks.run (no group, T," in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--budget-s", "-5"], "--budget-s: expected a positive number of seconds, got -5"),
    (["--out", "{file}"], "--out: {file} is a file, not a folder"),
    (["--plots-dir", "{file}"], "--plots-dir: {file} is a file, not a folder"),
    (["--results", "{folder}"], "--results: {folder} is a folder; give a file"),
    (["--results", "{file}/rows.jsonl"], "--results: {file} is a file, not a folder"),
    (["--results", "/proc/triton_lstm/rows.jsonl"], "--results: cannot write /proc/triton_lstm (No such file or "
                                                   "directory)"),
    (["--plots-dir", "/proc/triton_lstm"], "--plots-dir: cannot write /proc/triton_lstm (No such file or directory)")],
    ids=["budget", "out-file", "plots-file", "results-folder", "results-under-file", "results-unwritable",
         "plots-unwritable"])
def test_run_checks_its_arguments_before_measuring(tmp_path, capsys, args, message):
    file = tmp_path / "a-file"
    file.write_text("")
    names = dict(file=file, folder=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        bench_run.parse_args([a.format(**names) for a in args])
    assert exit_.value.code == 2 and capsys.readouterr().err.rstrip().endswith(message.format(**names))


@pytest.mark.parametrize("args, message", [
    (("benchmarks.plot", "--plots-dir", "/proc/triton_lstm"), "--plots-dir: cannot write /proc/triton_lstm"),
    (("benchmarks.interpreter_cost", "--results", "{file}/cost.jsonl"), "--results: {file} is a file, not a folder")],
    ids=["plot", "interpreter_cost"])
def test_other_clis_check_where_they_write_first(args, message, tmp_path):
    """A usage error (exit 2) before any work, not a traceback after it."""
    file = tmp_path / "a-file"
    file.write_text("")
    err = run(*(a.format(file=file) for a in args), interpret=False, expect=2).stderr
    assert message.format(file=file) in err and "Traceback" not in err


def test_quick_is_the_quick_suite_either_way():
    """--suite quick and --quick are the same run (the quick suite with its shorter timing windows)."""
    assert bench_run.parse_args(["--suite", "quick"]).quick and bench_run.parse_args(["--quick"]).quick
    assert not bench_run.parse_args(["--suite", "standard"]).quick


@pytest.mark.parametrize("named", [True, False])
def test_rows_from_a_tree_without_git_carry_the_commit_the_caller_names(named, tmp_path, monkeypatch):
    """A GPU machine gets the working tree without .git: TRITON_LSTM_GIT names the commit, which the
    rows carry (and --resume matches); without it the rows say why they name none."""
    monkeypatch.setattr(bench_run, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))   # no repository above tmp_path
    if named:
        monkeypatch.setenv("TRITON_LSTM_GIT", "0123456789ab")
    else:
        monkeypatch.delenv("TRITON_LSTM_GIT", raising=False)
    env = bench_run.environment(torch.device("cpu"), "smoke")
    if named:
        assert env["git"] == "0123456789ab" and env["git_note"].startswith("from TRITON_LSTM_GIT (")
    else:
        assert env["git"] is None and "not a git repository" in env["git_note"]


# --------------------------------------------------------------------------------- GPU rows, plotted
def gpu_row(provider="lstm_sequence", dtype="fp32", mode="fwd+bwd", ms=1.0, **case):
    """A row as benchmarks.run writes one on a GPU, with the fields the plots and tables read (a timed
    row; ``missing`` set: one that failed)."""
    fields = dict(group="grid", T=256, B=64, D=512, N=512, P=None, peepholes=False, cell_clip=None, proj_clip=None,
                  lengths=False)
    fields.update(case)
    tokens = fields["T"] * fields["B"] / (ms / 1e3) if ms else None
    return dict(fields, machine="NVIDIA H200", device="cuda", dtype=dtype, provider=provider, mode=mode,
                missing=None, date="2026-12-01T10:00:00+00:00", ms=ms, tokens_per_s=tokens, torch="2.11.0",
                triton="3.6.0", triton_lstm="0.1.0", git="0123456789ab", driver="570.124.06", cuda="12.8",
                cudnn=91002, tf32_matmul=False, tf32_cudnn=False, step_us=ms * 1e3 / fields["T"] if ms else None,
                floor_us=1.0)


def test_tf32_rows_are_a_precision_of_their_own_and_captions_name_cuda_and_cudnn():
    """A --tf32 run of a job does not replace its full-fp32 row: its rows are dtype "tf32"."""
    ieee = [gpu_row(p, ms=ms) for p, ms in (("lstm_sequence", 2.0), ("nn_lstm", 3.0))]
    tf32 = [dict(gpu_row(p, ms=ms), tf32_matmul=True, tf32_cudnn=True) for p, ms in (("lstm_sequence", 1.5),
                                                                                       ("nn_lstm", 1.0))]
    rows = plot.latest(ieee + tf32)
    assert sorted((r["dtype"], r["provider"], r["ms"]) for r in rows) == [
        ("fp32", "lstm_sequence", 2.0), ("fp32", "nn_lstm", 3.0), ("tf32", "lstm_sequence", 1.5),
        ("tf32", "nn_lstm", 1.0)]
    assert plot.grid_wins(rows, "fp32", "fwd+bwd") == (1, 1) and plot.grid_wins(rows, "tf32", "fwd+bwd") == (0, 1)
    assert "driver 570.124.06 · CUDA 12.8 · cuDNN 91002 ·" in plot.caption(rows)
    assert "| tf32 | not run | not run | 0/1 |" in plot.headline_markdown(ieee + tf32)


def test_grid_target_counts_a_cell_where_ours_failed_as_a_loss():
    rows = []
    for b in (8, 64):
        for n in (256, 512):
            rows.append(gpu_row("nn_lstm", B=b, N=n, ms=2.0))
            ours = gpu_row(B=b, N=n, ms=1.0)
            rows.append(ours if b == 8 else dict(ours, ms=None, missing="wrong result"))
    rows.append(gpu_row(B=256, N=256, ms=1.0))   # nn.LSTM not run here: no comparison
    rows.append(gpu_row("nn_lstm", B=256, N=512, ms=1.0))   # nor where ours was not run
    assert plot.grid_wins(rows, "fp32", "fwd+bwd") == (2, 4)
    assert "fp32 faster in >= 80% of the grid: 2/4 cells (NOT reached)" in plot.target_lines(rows)


def test_sweep_panels_leave_single_points_out_and_label_narrow_axes(tmp_path, monkeypatch):
    """A panel with one x value is left out of a sweep's figure; a panel whose values span less than
    a decade keeps the numbers on its y axis (its minor ticks). ``_save`` is replaced to keep the figure."""
    from matplotlib.ticker import NullFormatter
    saved = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: saved.append(fig) or path)
    rows = [gpu_row(p, T=t, ms=t * f / 100, group="seq_len") for t in (64, 256, 1024)
            for p, f in (("lstm_sequence", 1.0), ("nn_lstm", 1.3))]
    rows += [gpu_row(p, dtype="fp16", T=100, ms=0.5, group="seq_len") for p in ("lstm_sequence", "nn_lstm")]
    assert plot.lines(rows[-2:], tmp_path / "none.png", "T", "sweep") is None
    assert plot.lines(rows, tmp_path / "t.png", "T", "sweep") == tmp_path / "t.png"
    (ax,) = [a for a in saved[0].axes if a.get_visible() and a.axison]
    assert ax.get_title() == "fp32 fwd+bwd" and not isinstance(ax.yaxis.get_minor_formatter(), NullFormatter)
