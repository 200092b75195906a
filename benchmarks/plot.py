"""Plots and headline tables from the benchmark results (JSON lines written by ``benchmarks.run``).

``python -m benchmarks.plot [results.jsonl ...] [--plots-dir plots]`` (default: every file under
benchmarks/results/) writes, per GPU found in the rows, into the plots folder (``--table`` prints
the summary table instead):

* ``<gpu>-speedup_heatmap.png``   cuDNN time / triton_persistent time over batch x hidden (the grid,
  T=256), one panel per dtype and mode;
* ``<gpu>-throughput_vs_batch.png``, ``-throughput_vs_hidden.png``, ``-throughput_vs_seq_len.png``,
  ``-throughput_lstmp.png``   tokens/s of every provider;
* ``<gpu>-step_vs_floor.png``   time per step of every provider against the floor and its two parts;
* ``headline.md``   markdown tables of the headline numbers (fastrnns default shape, LSTMP, the grid
  and the bar of issue 4), for the README to include.

Every figure's title names the GPU, the torch / Triton / triton_lstm versions and the dates of its rows.
When a job was measured more than once, the last row in file order wins.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = ("triton_persistent", "triton_step", "cudnn", "torch_compile", "flashrnn")
LABELS = dict(triton_persistent="triton_lstm persistent", triton_step="triton_lstm step loop",
              cudnn="nn.LSTM (cuDNN)", torch_compile="torch.compile reference", flashrnn="FlashRNN")
COLORS = dict(triton_persistent="tab:blue", triton_step="tab:cyan", cudnn="tab:green", torch_compile="tab:orange",
              flashrnn="tab:purple")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("fp32", "fp16", "bf16")
CASE_FIELDS = ("group", "T", "B", "D", "N", "P", "peepholes", "cell_clip", "proj_clip")
DEFAULT_SHAPE = dict(group="default", T=100, B=64, D=512, N=512, P=None)
GRID_T = 256


def load_rows(paths: Iterable[Path]) -> list[dict]:
    """All rows of the given JSONL files, in order. A malformed line raises, naming file and line.

    Args:
        paths: results files written by ``benchmarks.run`` (one JSON object a line).
    """
    rows = []
    for path in paths:
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from e
    return rows


def job_key(row: dict) -> tuple:
    return (row["gpu"], *(row[k] for k in CASE_FIELDS), row["dtype"], row["provider"], row["mode"])


def latest(rows: list[dict]) -> list[dict]:
    """One row per job (GPU, case, dtype, provider, mode): the last one in file order.

    Args:
        rows: rows as ``load_rows`` returns them, possibly from several runs.
    """
    return list({job_key(r): r for r in rows}.values())


def by_gpu(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in latest(rows):
        out.setdefault(r["gpu"], []).append(r)
    return out


def _versions(rows: list[dict], field: str) -> str:
    return "/".join(sorted({str(r.get(field)) for r in rows}))


def caption(rows: list[dict]) -> str:
    """'GPU · torch X · triton Y · triton_lstm Z (git) · driver D · date(s)' for the given rows."""
    dates = sorted({r["date"][:10] for r in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return (f"{rows[0]['gpu']} · torch {_versions(rows, 'torch')} · triton {_versions(rows, 'triton')} · "
            f"triton_lstm {_versions(rows, 'triton_lstm')} ({_versions(rows, 'git')}) · driver "
            f"{_versions(rows, 'driver')} · {when}")


def pick(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def timed(row: Optional[dict]) -> bool:
    return row is not None and row.get("missing") is None and row.get("ms") is not None


def one(rows: list[dict], **match) -> Optional[dict]:
    found = pick(rows, **match)
    return found[-1] if found else None


def speedup(rows: list[dict], **match) -> Optional[float]:
    """cuDNN time / triton_persistent time for the job matched, None if either is missing.

    Args:
        rows: rows of one GPU, deduplicated (``latest``).
        match: row fields that pick one case, dtype and mode (e.g. group="grid", B=64, N=512, ...).
    """
    ours, theirs = one(rows, provider="triton_persistent", **match), one(rows, provider="cudnn", **match)
    return theirs["ms"] / ours["ms"] if timed(ours) and timed(theirs) else None


def _present(rows: list[dict], field: str, order: tuple) -> list:
    seen = {r[field] for r in rows}
    return [v for v in order if v in seen]


# ----------------------------------------------------------------------------------------------
# Figures

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    # No software version in the PNG: re-rendering the same rows gives the same file.
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return path


def _panel_grid(plt, nrows: int, ncols: int, title: str, rows: list[dict], width=4.2, height=3.3, layout=None):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout=layout)
    fig.suptitle(f"{title}\n{caption(rows)}", fontsize=10)
    return fig, axes


def heatmap(rows: list[dict], path: Path) -> Optional[Path]:
    """cuDNN / triton_persistent time over the grid (batch x hidden), one panel per dtype and mode.

    Args:
        rows: rows of one GPU, deduplicated; only group "grid" is used.
        path: the PNG to write.
    Returns:
        path, or None when no grid row of triton_persistent exists (nothing is written).
    """
    grid = pick(rows, group="grid")
    panels = [(d, m) for d in _present(grid, "dtype", DTYPES) for m in _present(grid, "mode", MODES)
              if pick(grid, dtype=d, mode=m, provider="triton_persistent")]
    if not panels:
        return None
    plt = _pyplot()
    batches = sorted({r["B"] for r in grid})
    hiddens = sorted({r["N"] for r in grid})
    dtypes = _present(grid, "dtype", DTYPES)
    modes = _present(grid, "mode", MODES)
    title = (f"Speedup of triton_lstm persistent over nn.LSTM (cuDNN), T={GRID_T}: cuDNN time / ours "
             f"(>1: ours faster; x: a provider missing)")
    fig, axes = _panel_grid(plt, len(dtypes), len(modes), title, grid, width=max(4.0, 1.0 + 0.75 * len(batches)),
                            height=1.1 + 0.55 * len(hiddens), layout="constrained")
    limit = 1.0
    values = {}
    for d, m in panels:
        for b in batches:
            for n in hiddens:
                s = speedup(grid, dtype=d, mode=m, B=b, N=n)
                values[d, m, b, n] = s
                if s is not None:
                    limit = max(limit, math.ceil(abs(math.log2(s))))
    for i, d in enumerate(dtypes):
        for j, m in enumerate(modes):
            ax = axes[i][j]
            ax.set_title(f"{d} {m}", fontsize=9)
            if (d, m) not in panels:
                ax.axis("off")
                continue
            if all(values[d, m, b, n] is None for b in batches for n in hiddens):
                ax.set_title(f"{d} {m}: no pair to compare (missing rows)", fontsize=9)
            z = [[math.log2(values[d, m, b, n]) if values[d, m, b, n] else float("nan") for b in batches]
                 for n in hiddens]
            im = ax.imshow(z, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower", aspect="auto")
            for yi, n in enumerate(hiddens):
                for xi, b in enumerate(batches):
                    s = values[d, m, b, n]
                    ax.text(xi, yi, f"{s:.2f}" if s else "x", ha="center", va="center", fontsize=7,
                            color="black" if s is None or abs(math.log2(s)) < 0.6 * limit else "white")
            ax.set_xticks(range(len(batches)), [str(b) for b in batches], fontsize=7)
            ax.set_yticks(range(len(hiddens)), [str(n) for n in hiddens], fontsize=7)
            ax.set_xlabel("batch", fontsize=8)
            ax.set_ylabel("hidden", fontsize=8)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8)
    ticks = list(range(-int(limit), int(limit) + 1))
    cbar.set_ticks(ticks, labels=[f"{2.0 ** t:g}x" for t in ticks])
    return _save(fig, path)


def lines(rows: list[dict], path: Path, x: str, title: str, y: str = "tokens_per_s",
          floor: bool = False) -> Optional[Path]:
    """One panel per mode (rows) and dtype (columns): y of every provider against x (log-log).

    Args:
        rows: the rows of one sweep (one GPU; every other case field fixed).
        path: the PNG to write.
        x: the swept row field, "B", "N" or "T".
        title: first title line (the caption with GPU, versions and dates is added).
        y: the row field plotted, "tokens_per_s" or "step_us".
        floor: also draw the floor per step and its two parts (with y="step_us").
    Returns:
        path, or None when fewer than two x values were timed (nothing is written).
    """
    if len({r[x] for r in rows if timed(r)}) < 2:
        return None
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, NullLocator
    dtypes = _present(rows, "dtype", DTYPES)
    modes = _present(rows, "mode", MODES)
    fig, axes = _panel_grid(plt, len(modes), len(dtypes), title, rows)
    for i, m in enumerate(modes):
        for j, d in enumerate(dtypes):
            ax = axes[i][j]
            panel = pick(rows, mode=m, dtype=d)
            for p in _present(panel, "provider", PROVIDERS):
                pts = sorted((r[x], r[y]) for r in pick(panel, provider=p) if timed(r))
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, color=COLORS[p], label=LABELS[p])
            if floor:
                ref = sorted({r[x]: r for r in panel}.items())
                ax.plot([k for k, _ in ref], [r["floor_us"] for _, r in ref], "k-", lw=1.8, label="floor")
                ax.plot([k for k, _ in ref], [r["floor_compute_us"] for _, r in ref], "k:", lw=1,
                        label="floor: matmul")
                barrier = [(k, r["floor_barrier_us"]) for k, r in ref if r.get("floor_barrier_us")]
                if barrier:
                    ax.plot(*zip(*barrier), "k-.", lw=1, label="floor: grid barriers")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            xs = sorted({r[x] for r in panel})
            ax.set_xticks(xs, [str(v) for v in xs])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{d} {m}", fontsize=9)
            ax.set_xlabel({"B": "batch", "N": "hidden (num_units)", "T": "sequence length"}[x], fontsize=8)
            ax.set_ylabel("tokens / s" if y == "tokens_per_s" else "us per step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row_axes in axes:
        for ax in row_axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * (len(labels) > 4)))
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(fig, path)


def render(rows: list[dict], plots_dir: Path) -> list[Path]:
    """Write every figure and headline.md for the rows given; returns the paths written.

    Args:
        rows: rows of any number of runs and GPUs (deduplicated here; figures per GPU).
        plots_dir: output folder, created if missing.
    """
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for gpu, gpu_rows in by_gpu(rows).items():
        prefix = plots_dir / gpu_rows[0]["gpu_slug"]
        grid = pick(gpu_rows, group="grid", T=GRID_T)
        hidden_512 = [r for r in grid if r["N"] == 512]
        batch_64 = [r for r in grid if r["B"] == 64]
        seq = [r for r in gpu_rows if r["group"] in ("default", "seq_len", "grid") and r["B"] == 64
               and r["N"] == 512 and r["D"] == 512 and r["P"] is None]
        lstmp = pick(gpu_rows, group="lstmp")
        figures = [
            heatmap(gpu_rows, Path(f"{prefix}-speedup_heatmap.png")),
            lines(hidden_512, Path(f"{prefix}-throughput_vs_batch.png"), "B",
                  f"Throughput against batch (hidden = input = 512, T={GRID_T})"),
            lines(batch_64, Path(f"{prefix}-throughput_vs_hidden.png"), "N",
                  f"Throughput against hidden size (batch 64, input = hidden, T={GRID_T})"),
            lines(seq, Path(f"{prefix}-throughput_vs_seq_len.png"), "T",
                  "Throughput against sequence length (batch 64, input = hidden = 512)"),
            lines(lstmp, Path(f"{prefix}-throughput_lstmp.png"), "N",
                  "LSTMP (num_proj = hidden/4), T=100, batch 64: ours with peepholes and clips, "
                  "nn.LSTM(proj_size) without"),
            lines(batch_64, Path(f"{prefix}-step_vs_floor.png"), "N",
                  f"Time per step against the floor (batch 64, T={GRID_T}): matmul at the measured rate "
                  f"+ measured grid barriers", y="step_us", floor=True),
        ]
        written += [f for f in figures if f is not None]
    headline = plots_dir / "headline.md"
    headline.write_text(headline_markdown(rows))
    return written + [headline]


# ----------------------------------------------------------------------------------------------
# Tables

def _ms(row: Optional[dict]) -> str:
    if row is None:
        return "not run"
    return f"{row['ms']:.3f}" if timed(row) else "missing"


def _ratio(s: Optional[float]) -> str:
    return f"{s:.2f}x" if s is not None else "-"


def grid_wins(rows: list[dict], dtype: str, mode: str) -> tuple[int, int]:
    """(cells where triton_persistent beats cuDNN, cells where both ran) in the grid.

    Args:
        rows: rows of one GPU, deduplicated.  dtype: "fp32", "fp16" or "bf16".  mode: "fwd", "bwd" or "fwd+bwd".
    """
    cells = {(r["B"], r["N"]) for r in pick(rows, group="grid", dtype=dtype, mode=mode)}
    ratios = [speedup(rows, group="grid", dtype=dtype, mode=mode, B=b, N=n) for b, n in cells]
    ratios = [s for s in ratios if s is not None]
    return sum(s > 1.0 for s in ratios), len(ratios)


def why_no_ratio(rows: list[dict], **match) -> str:
    """Why speedup() is None for this job: which side was not run or is missing, and why."""
    for provider in ("triton_persistent", "cudnn"):
        row = one(rows, provider=provider, **match)
        if row is None:
            return f"{provider} not run"
        if not timed(row):
            return f"{provider} missing: {str(row.get('missing'))[:80]}"
    return ""


def bar_lines(rows: list[dict]) -> list[str]:
    """Issue 4's bar (forward+backward, against nn.LSTM on cuDNN): what was reached, one line each.

    Args:
        rows: rows of one GPU, deduplicated.
    """
    out = []

    def check(name: str, need: float, **match) -> str:
        s = speedup(rows, mode="fwd+bwd", **match)
        if s is None:
            return f"{name} >= {need:g}x: not measured ({why_no_ratio(rows, mode='fwd+bwd', **match)})"
        return f"{name} >= {need:g}x: {s:.2f}x ({'reached' if s >= need else 'NOT reached'})"

    out.append(check("fp32 fastrnns default", 1.5, dtype="fp32", **DEFAULT_SHAPE))
    wins, n = grid_wins(rows, "fp32", "fwd+bwd")
    verdict = "not measured" if not n else "reached" if wins >= 0.8 * n else "NOT reached"
    out.append(f"fp32 faster in >= 80% of the grid: {wins}/{n} cells ({verdict})")
    for h in sorted({r["N"] for r in pick(rows, group="lstmp")}):
        for d in _present(pick(rows, group="lstmp", N=h), "dtype", DTYPES):
            out.append(check(f"LSTMP hidden {h} {d}", 2.0, group="lstmp", N=h, dtype=d))
    for d in ("fp16", "bf16"):
        out.append(check(f"{d} fastrnns default", 1.0, dtype=d, **DEFAULT_SHAPE))
    return out


def headline_markdown(rows: list[dict]) -> str:
    """Markdown for the README: per GPU, the fastrnns default shape, LSTMP, the grid and the bar.

    Args:
        rows: rows of any number of runs and GPUs.
    """
    parts = ["<!-- written by python -m benchmarks.plot from benchmarks/results/*.jsonl; do not edit -->", ""]
    groups = by_gpu(rows)
    if not groups:
        parts.append("No benchmark results yet: a GPU session runs `bash benchmarks/gpu_session.sh`.")
    for gpu, g in groups.items():
        parts += [f"### {gpu}", "", f"{caption(g)}. Median of `triton.testing.do_bench`, ms per call "
                  f"(the whole sequence); speedup = nn.LSTM time / ours; floor = recurrent matmuls at the "
                  f"measured dense rate + measured grid barriers, per step.", ""]
        default = pick(g, **DEFAULT_SHAPE)
        if default:
            parts += ["**fastrnns default shape** (T=100, B=64, input = hidden = 512)", "",
                      "| dtype | mode | triton_lstm persistent (ms) | us/step (floor) | nn.LSTM cuDNN (ms) | speedup "
                      "| step loop (ms) | torch.compile (ms) |", "|---|---|---|---|---|---|---|---|"]
            for d in _present(default, "dtype", DTYPES):
                for m in _present(pick(default, dtype=d), "mode", MODES):
                    ours = one(default, provider="triton_persistent", dtype=d, mode=m)
                    per_step = f"{ours['step_us']:.1f} ({ours['floor_us']:.1f})" if timed(ours) else "-"
                    parts.append(
                        f"| {d} | {m} | {_ms(ours)} | {per_step} | "
                        f"{_ms(one(default, provider='cudnn', dtype=d, mode=m))} | "
                        f"{_ratio(speedup(default, dtype=d, mode=m))} | "
                        f"{_ms(one(default, provider='triton_step', dtype=d, mode=m))} | "
                        f"{_ms(one(default, provider='torch_compile', dtype=d, mode=m))} |")
            parts.append("")
        lstmp = pick(g, group="lstmp")
        if lstmp:
            parts += ["**LSTMP with peepholes and clips** (T=100, B=64, num_proj = hidden/4): ours with "
                      "peepholes, cell_clip and proj_clip; nn.LSTM(proj_size) has none of them", "",
                      "| hidden | dtype | ours fwd+bwd (ms) | nn.LSTM fwd+bwd (ms) | speedup fwd | bwd | fwd+bwd |",
                      "|---|---|---|---|---|---|---|"]
            for h in sorted({r["N"] for r in lstmp}):
                for d in _present(pick(lstmp, N=h), "dtype", DTYPES):
                    sel = dict(N=h, dtype=d)
                    ours = one(lstmp, provider="triton_persistent", mode="fwd+bwd", **sel)
                    theirs = one(lstmp, provider="cudnn", mode="fwd+bwd", **sel)
                    parts.append(f"| {h} | {d} | {_ms(ours)} | {_ms(theirs)} | "
                                 + " | ".join(_ratio(speedup(lstmp, mode=m, **sel)) for m in MODES) + " |")
            parts.append("")
        grid = pick(g, group="grid")
        if grid:
            parts += [f"**Grid** (T={GRID_T}, batch {sorted({r['B'] for r in grid})} x hidden "
                      f"{sorted({r['N'] for r in grid})}): cells where ours beats nn.LSTM, of those where both ran",
                      "", "| dtype | fwd | bwd | fwd+bwd |", "|---|---|---|---|"]
            for d in _present(grid, "dtype", DTYPES):
                cells = []
                for m in MODES:
                    wins, n = grid_wins(g, d, m)
                    cells.append(f"{wins}/{n}" if pick(grid, dtype=d, mode=m) else "not run")
                parts.append(f"| {d} | " + " | ".join(cells) + " |")
            parts.append("")
        parts += ["**The bar of issue 4** (forward+backward):", ""] + [f"- {line}" for line in bar_lines(g)]
        missing = sorted({(r["provider"], r["missing"]) for r in g if r.get("missing")})
        if missing:
            parts += ["", "Missing (provider: reason):", ""]
            parts += [f"- {p}: {reason}" for p, reason in missing[:12]]
            if len(missing) > 12:
                parts.append(f"- ... and {len(missing) - 12} more reasons in the results file")
        parts.append("")
    return "\n".join(parts)


def summary_table(rows: list[dict]) -> str:
    """A short plain-text table per GPU: the fastrnns default case in every mode, the other non-grid
    cases in fwd+bwd (when measured), the grid as win counts, then the bar of issue 4.

    Args:
        rows: rows of any number of runs and GPUs (e.g. the rows of one benchmark run).
    """
    groups = by_gpu(rows)
    if not groups:
        return "no rows"
    return "\n\n".join(_gpu_summary(g) for g in groups.values())


def _gpu_summary(rows: list[dict]) -> str:
    lines_out = [caption(rows),
                 f"{'case':34s} {'dtype':5s} {'mode':7s} " + " ".join(f"{p[:12]:>12s}" for p in PROVIDERS)
                 + "  speedup"]
    cases = []
    for r in rows:
        key = tuple(r[k] for k in CASE_FIELDS)
        if r["group"] != "grid" and key not in cases:
            cases.append(key)
    for key in cases:
        match = dict(zip(CASE_FIELDS, key))
        label = f"{match['group']} T{match['T']} B{match['B']} N{match['N']}"
        label += f" P{match['P']}" if match["P"] else ""
        sel = pick(rows, **match)
        if match["group"] != "default":
            sel = [r for r in sel if r["mode"] == "fwd+bwd"] or sel
        for d in _present(sel, "dtype", DTYPES):
            for m in _present(pick(sel, dtype=d), "mode", MODES):
                cells = []
                for p in PROVIDERS:
                    r = one(sel, provider=p, dtype=d, mode=m)
                    cells.append(f"{'' if r is None else _ms(r):>12s}")
                lines_out.append(f"{label:34s} {d:5s} {m:7s} " + " ".join(cells)
                                 + f"  {_ratio(speedup(sel, dtype=d, mode=m))}")
    grid = pick(rows, group="grid")
    for d in _present(grid, "dtype", DTYPES):
        for m in _present(pick(grid, dtype=d), "mode", MODES):
            wins, n = grid_wins(rows, d, m)
            lines_out.append(f"grid T{GRID_T} {d} {m}: ours faster than cuDNN in {wins} of {n} cells"
                             + ("" if n else " (no cell has both: see the missing rows)"))
    lines_out.append("ms per call (median); speedup = cudnn / triton_persistent")
    if any(r["group"] in ("default", "lstmp", "grid") for r in rows):
        lines_out += ["bar of issue 4:"] + [f"  {line}" for line in bar_lines(rows)]
    return "\n".join(lines_out)


def main(argv=None) -> int:
    """Command line (see the module docstring). Args: argv: arguments, default sys.argv[1:]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, help="JSONL files (default: benchmarks/results/*.jsonl)")
    parser.add_argument("--plots-dir", type=Path, default=REPO / "plots")
    parser.add_argument("--table", action="store_true", help="print the summary table instead of plotting")
    args = parser.parse_args(argv)
    paths = args.results or sorted((REPO / "benchmarks" / "results").glob("*.jsonl"))
    rows = load_rows(paths)
    if not rows:
        print(f"no rows in {[str(p) for p in paths] or 'benchmarks/results/ (no files)'}: nothing to plot")
        return 0
    if args.table:
        print(summary_table(rows))
        return 0
    for path in render(rows, args.plots_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
