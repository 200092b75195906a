"""Plots and headline tables from the benchmark results (JSON lines written by ``benchmarks.run``).

``python -m benchmarks.plot [results.jsonl ...] [--plots-dir plots]`` (default: every file under
benchmarks/results/) writes, per machine found in the rows, into the plots folder (``--table`` prints
the summary table instead):

* GPU rows: ``<gpu>-speedup_heatmap.png`` (nn.LSTM's time / lstm_sequence's over batch x hidden, T=256,
  one panel per dtype and mode); ``<gpu>-throughput_vs_batch.png``, ``-throughput_vs_hidden.png``,
  ``-throughput_vs_seq_len.png``, ``-throughput_lstmp.png`` (tokens/s of every provider);
  ``<gpu>-step_vs_floor.png`` (time per step of every provider against the floor and its two parts).
* CPU rows: ``<machine>-vs_nn_lstm.png`` (the time of triton_lstm.LSTM and lstm_sequence relative to
  nn.LSTM at each headline shape, with the targets) and ``<machine>-grid.png`` (lstm_sequence's time
  relative to nn.LSTM over batch x hidden).
* ``headline.md``: markdown tables of the headline numbers of every machine, for the README.

Every figure's title names the machine, the torch / Triton / triton_lstm versions and the dates of its
rows. A provider that could not run a case is shown as missing, with the reason in the results file.
When a job was measured more than once, the last row in file order wins.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parent.parent
PROVIDERS = ("lstm_sequence", "lstm_module", "step_loop", "nn_lstm", "torch_compile", "flashrnn")
LABELS = dict(lstm_sequence="triton_lstm persistent", lstm_module="triton_lstm.LSTM", step_loop="triton_lstm step loop",
              nn_lstm="nn.LSTM (cuDNN)", torch_compile="torch.compile reference", flashrnn="FlashRNN")
CPU_LABELS = dict(LABELS, lstm_sequence="triton_lstm.lstm_sequence", nn_lstm="nn.LSTM")
COLORS = dict(lstm_sequence="tab:blue", lstm_module="tab:purple", step_loop="tab:cyan", nn_lstm="tab:green",
              torch_compile="tab:orange", flashrnn="tab:red")
MODES = ("fwd", "bwd", "fwd+bwd")
# "tf32": fp32 rows measured with TF32 allowed in torch's matmuls and cuDNN (benchmarks.run --tf32).
DTYPES = ("fp32", "tf32", "fp16", "bf16")
CASE_FIELDS = ("group", "T", "B", "D", "N", "P", "peepholes", "cell_clip", "proj_clip", "lengths")
# What every row benchmarks.run writes carries (and the plots read without a default).
ROW_FIELDS = (*CASE_FIELDS, "machine", "dtype", "provider", "mode", "missing", "date")
DEFAULT_SHAPE = dict(group="default", T=100, B=64, D=512, N=512, P=None)
GRID_T = 256
MISSING_SHOWN = 20  # distinct (provider, reason) pairs listed in headline.md
# Time relative to nn.LSTM that the CPU path aims for: a cell nn.LSTM computes runs nn.LSTM's own kernel.
CPU_TARGETS = {"plain": 1.05, "extras": 1.5}


def load_rows(paths: Iterable[Path]) -> list[dict]:
    """All rows of the given JSONL files, in order. A malformed line, or a JSON line that is not a
    benchmark row, raises a ValueError naming file and line.

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
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from e
                missing = [k for k in ROW_FIELDS if k not in row] if isinstance(row, dict) else ROW_FIELDS
                if missing:
                    raise ValueError(f"{path}:{lineno}: not a row of benchmarks.run (no {', '.join(missing)})")
                rows.append(row)
    return rows


def machine(row: dict) -> str:
    return row["machine"]


def job_key(row: dict) -> tuple:
    return (machine(row), *(row.get(k) for k in CASE_FIELDS), row["dtype"], row["provider"], row["mode"])


def with_precision(row: dict) -> dict:
    """The row, an fp32 one measured with TF32 allowed (``--tf32``) under dtype "tf32": a precision of
    its own, never in place of full fp32."""
    if row["dtype"] == "fp32" and (row.get("tf32_matmul") or row.get("tf32_cudnn")):
        return {**row, "dtype": "tf32"}
    return row


def latest(rows: list[dict]) -> list[dict]:
    """One row per job (machine, case, dtype, provider, mode; fp32 with TF32 allowed is dtype "tf32"):
    the last one in file order.

    Args:
        rows: rows as ``load_rows`` returns them, possibly from several runs.
    """
    return list({job_key(r): r for r in map(with_precision, rows)}.values())


def by_machine(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in latest(rows):
        out.setdefault(machine(r), []).append(r)
    return out


def is_cpu(rows: list[dict]) -> bool:
    return rows[0].get("device") == "cpu"


def label(provider: str, rows: list[dict]) -> str:
    return (CPU_LABELS if is_cpu(rows) else LABELS)[provider]


def _versions(rows: list[dict], field: str) -> str:
    return "/".join(sorted({str(r.get(field)) for r in rows}))


def caption(rows: list[dict]) -> str:
    """'machine · torch X · triton Y · triton_lstm Z (git) · oneDNN, or driver, CUDA and cuDNN · date(s)'."""
    dates = sorted({r["date"][:10] for r in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    library = (f"oneDNN {_versions(rows, 'onednn')}" if is_cpu(rows) else
               f"driver {_versions(rows, 'driver')} · CUDA {_versions(rows, 'cuda')} · cuDNN {_versions(rows, 'cudnn')}")
    return (f"{machine(rows[0])} · torch {_versions(rows, 'torch')} · triton {_versions(rows, 'triton')} · "
            f"triton_lstm {_versions(rows, 'triton_lstm')} ({_versions(rows, 'git')}) · {library} · {when}")


def pick(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def timed(row: Optional[dict]) -> bool:
    return row is not None and row.get("missing") is None and row.get("ms") is not None


def one(rows: list[dict], **match) -> Optional[dict]:
    found = pick(rows, **match)
    return found[-1] if found else None


def speedup(rows: list[dict], ours: str = "lstm_sequence", **match) -> Optional[float]:
    """nn.LSTM's time / ``ours``'s time for the job matched, None if either is missing.

    Args:
        rows: rows of one machine, deduplicated (``latest``).  ours: the provider compared.
        match: row fields that pick one case, dtype and mode (e.g. group="grid", B=64, N=512, ...).
    """
    mine, theirs = one(rows, provider=ours, **match), one(rows, provider="nn_lstm", **match)
    return theirs["ms"] / mine["ms"] if timed(mine) and timed(theirs) else None


def relative_time(rows: list[dict], ours: str = "lstm_sequence", **match) -> Optional[float]:
    """``ours``'s time / nn.LSTM's time (the CPU figures' measure: below 1 is faster), or None."""
    s = speedup(rows, ours, **match)
    return None if s is None else 1 / s


def _present(rows: list[dict], field: str, order: tuple) -> list:
    seen = {r[field] for r in rows}
    return [v for v in order if v in seen]


def legend_label(rows: list[dict], provider: str) -> str:
    """A provider's legend entry for a panel of rows: its label, with the reason when it has no timing there."""
    why = missing_reason(rows, provider)
    return label(provider, rows) + (f" (missing: {why[:40]})" if why else "")


def missing_reason(rows: list[dict], provider: str) -> Optional[str]:
    """Why a provider has no timed row among rows: its first missing reason, or 'not run'; None if timed."""
    mine = [r for r in rows if r["provider"] == provider]
    if any(timed(r) for r in mine):
        return None
    reasons = [r["missing"] for r in mine if r.get("missing")]
    return reasons[0] if reasons else "not run"


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
    """nn.LSTM's / lstm_sequence's time over the GPU grid (batch x hidden), one panel per dtype and mode.

    Args:
        rows: rows of one GPU, deduplicated; only group "grid" is used.
        path: the PNG to write.
    Returns:
        path, or None when no grid row of lstm_sequence exists (nothing is written).
    """
    grid = pick(rows, group="grid")
    panels = [(d, m) for d in _present(grid, "dtype", DTYPES) for m in _present(grid, "mode", MODES)
              if pick(grid, dtype=d, mode=m, provider="lstm_sequence")]
    if not panels:
        return None
    plt = _pyplot()
    batches = sorted({r["B"] for r in grid})
    hiddens = sorted({r["N"] for r in grid})
    dtypes = _present(grid, "dtype", DTYPES)
    modes = _present(grid, "mode", MODES)
    title = (f"Speedup of triton_lstm persistent over nn.LSTM (cuDNN), T={GRID_T}: cuDNN time / ours "
             f"(>1: ours faster; x: a provider missing, see the results file)")
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
        path, or None when no (mode, dtype) has two x values timed (nothing is written); such a panel
        (a single point) is left out.
    """
    timed_x: dict[tuple, set] = {}
    for r in rows:
        if timed(r):
            timed_x.setdefault((r["mode"], r["dtype"]), set()).add(r[x])
    swept = {panel for panel, xs in timed_x.items() if len(xs) >= 2}
    rows = [r for r in rows if (r["mode"], r["dtype"]) in swept]
    if not rows:
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
            if (m, d) not in swept:
                ax.set_title(f"{d} {m}: not swept", fontsize=9)
                ax.axis("off")
                continue
            for p in _present(panel, "provider", PROVIDERS):
                pts = sorted((r[x], r[y]) for r in pick(panel, provider=p) if timed(r))
                # A provider without a point stays in the legend, marked missing, instead of vanishing.
                ax.plot(*(zip(*pts) if pts else ([], [])), marker="o", ms=3, color=COLORS[p],
                        label=legend_label(panel, p))
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
            low, high = ax.get_ylim()
            if high >= 10 * low:  # labelled decades; within one, the minor ticks carry the numbers
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{d} {m}", fontsize=9)
            ax.set_xlabel({"B": "batch", "N": "hidden (num_units)", "T": "sequence length"}[x], fontsize=8)
            ax.set_ylabel("tokens / s" if y == "tokens_per_s" else "us per step", fontsize=8)
            ax.tick_params(which="both", labelsize=7)
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


def cell_of(row: dict) -> str:
    """'plain' for a cell nn.LSTM computes, 'extras' for one with TF's peepholes or clips."""
    return "extras" if row["peepholes"] or row["cell_clip"] is not None or row["proj_clip"] is not None else "plain"


def shape_label(row: dict) -> str:
    text = f"B={row['B']}, {row['D']}/{row['N']}"
    text += f", proj {row['P']}" if row["P"] else ""
    return text + (", lengths" if row.get("lengths") else "")


def cell_label(row: dict) -> str:
    if cell_of(row) == "plain":
        return "nn.LSTM-expressible"
    clips = "both clips" if row["proj_clip"] is not None else "cell clip"
    return f"peepholes + {clips}" if row["peepholes"] else clips


def cpu_headline(rows: list[dict]) -> list[dict]:
    """The nn.LSTM rows of the CPU cases outside the grid (one per shape, cell and mode), in suite order."""
    keys, out = set(), []
    for r in rows:
        key = (r["group"], r["B"], r["N"], r["P"], r.get("lengths"), cell_of(r), r["mode"])
        if r["group"] != "grid" and r["provider"] == "nn_lstm" and key not in keys:
            keys.add(key)
            out.append(r)
    return out


def _case_match(row: dict) -> dict:
    return {k: row[k] for k in CASE_FIELDS} | dict(dtype=row["dtype"])


def cpu_bars(rows: list[dict], path: Path) -> Optional[Path]:
    """Time relative to nn.LSTM of triton_lstm.LSTM and lstm_sequence at each CPU headline case and
    cell, one panel per mode, with each cell's target.

    Args:
        rows: rows of one CPU machine, deduplicated.  path: the PNG to write.
    Returns:
        path, or None without headline rows (nothing is written).
    """
    base = cpu_headline(rows)
    modes = _present(base, "mode", MODES)
    if not base:
        return None
    plt = _pyplot()
    providers = ("lstm_module", "lstm_sequence")
    fig, axes = _panel_grid(plt, len(modes), 1, "Time relative to nn.LSTM on the CPU (lower is better; dashes: "
                            "each cell's target)\nnn.LSTM runs the cells with TF's extras without them", rows,
                            width=11.0, height=3.6)
    for ax, mode in zip(axes[:, 0], modes):
        cases = [r for r in base if r["mode"] == mode]
        for i, r in enumerate(cases):
            for k, p in enumerate(providers):
                value = relative_time(rows, p, **_case_match(r), mode=mode)
                x = i + (k - 0.5) * 0.36
                if value is None:
                    ax.text(x, 0.05, "missing", rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                ax.bar(x, value, width=0.34, color=COLORS[p])
                ax.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=6)
            target = CPU_TARGETS[cell_of(r)]
            ax.hlines(target, i - 0.4, i + 0.4, colors="black", linestyles="dashed", linewidth=1)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ticks = [shape_label(r).replace(", proj", "\nproj").replace(", lengths", "\nlengths") + f"\n{cell_label(r)}"
                 for r in cases]
        ax.set_xticks(range(len(cases)), ticks, fontsize=7)
        ax.set_ylabel("time / nn.LSTM's", fontsize=8)
        ax.set_title(mode, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[p]) for p in providers]
    axes[0][0].legend(handles, [legend_label(rows, p) for p in providers], loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def cpu_grid(rows: list[dict], path: Path) -> Optional[Path]:
    """lstm_sequence's time relative to nn.LSTM over the CPU grid (batch x hidden; the default case
    fills B=64, H=512), one panel per cell and mode.

    Args:
        rows: rows of one CPU machine, deduplicated.  path: the PNG to write.
    Returns:
        path, or None without grid rows (nothing is written).
    """
    grid = [r for r in rows if r["group"] == "grid" or (r["group"] == "default" and not r.get("lengths"))]
    if not pick(grid, group="grid"):
        return None
    plt = _pyplot()
    batches, hiddens = sorted({r["B"] for r in grid}), sorted({r["N"] for r in grid})
    cells = [c for c in CPU_TARGETS if any(cell_of(r) == c for r in grid)]
    modes = _present(grid, "mode", MODES)
    fig, axes = _panel_grid(plt, len(cells), len(modes), f"CPU: lstm_sequence's time / nn.LSTM's, T={grid[0]['T']} "
                            "(below 1: faster; x: missing)", grid, width=4.2, height=1.2 + 0.5 * len(hiddens),
                            layout="constrained")
    im = None
    for i, cell in enumerate(cells):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            values = {}
            for r in grid:
                if r["provider"] == "nn_lstm" and r["mode"] == mode and cell_of(r) == cell:
                    values[r["B"], r["N"]] = relative_time(grid, **_case_match(r), mode=mode)
            z = [[math.log2(values[b, n]) if values.get((b, n)) else float("nan") for b in batches] for n in hiddens]
            im = ax.imshow(z, cmap="RdBu_r", vmin=-1.5, vmax=1.5, origin="lower", aspect="auto")
            for yi, n in enumerate(hiddens):
                for xi, b in enumerate(batches):
                    v = values.get((b, n))
                    dark = v is not None and abs(math.log2(v)) > 0.9
                    ax.text(xi, yi, f"{v:.2f}" if v else "x", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
            ax.set_title(f"{'nn.LSTM-expressible' if cell == 'plain' else 'TF extras'}, {mode}", fontsize=9)
            ax.set_xticks(range(len(batches)), [str(b) for b in batches], fontsize=7)
            ax.set_yticks(range(len(hiddens)), [str(n) for n in hiddens], fontsize=7)
            ax.set_xlabel("batch", fontsize=8)
            ax.set_ylabel("hidden = input", fontsize=8)
    cbar = fig.colorbar(im, ax=axes, shrink=0.8)
    cbar.set_ticks([-1, 0, 1], labels=["0.5x", "1x", "2x"])
    return _save(fig, path)


def render(rows: list[dict], plots_dir: Path) -> list[Path]:
    """Write every figure and headline.md for the rows given; returns the paths written.

    Args:
        rows: rows of any number of runs and machines (deduplicated here; figures per machine).
        plots_dir: output folder, created if missing.
    """
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for machine_rows in by_machine(rows).values():
        prefix = plots_dir / machine_rows[0]["machine_slug"]
        if is_cpu(machine_rows):
            figures = [cpu_bars(machine_rows, Path(f"{prefix}-vs_nn_lstm.png")),
                       cpu_grid(machine_rows, Path(f"{prefix}-grid.png"))]
            written += [f for f in figures if f is not None]
            continue
        grid = pick(machine_rows, group="grid", T=GRID_T)
        hidden_512 = [r for r in grid if r["N"] == 512]
        batch_64 = [r for r in grid if r["B"] == 64]
        seq = [r for r in machine_rows if r["group"] in ("default", "seq_len", "grid") and r["B"] == 64
               and r["N"] == 512 and r["D"] == 512 and r["P"] is None]
        lstmp = pick(machine_rows, group="lstmp")
        figures = [
            heatmap(machine_rows, Path(f"{prefix}-speedup_heatmap.png")),
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
    """(cells where lstm_sequence beats nn.LSTM, cells counted) in the GPU grid: every cell where nn.LSTM
    ran and lstm_sequence has a row; one where its row is missing (failed, wrong result) counts as a loss.

    Args:
        rows: rows of one GPU, deduplicated.  dtype: a DTYPES value.  mode: "fwd", "bwd" or "fwd+bwd".
    """
    grid = pick(rows, group="grid", dtype=dtype, mode=mode)
    wins = counted = 0
    for b, n in {(r["B"], r["N"]) for r in grid}:
        theirs, mine = (one(grid, provider=p, B=b, N=n) for p in ("nn_lstm", "lstm_sequence"))
        if timed(theirs) and mine is not None:
            counted += 1
            wins += timed(mine) and theirs["ms"] / mine["ms"] > 1.0
    return wins, counted


def why_no_ratio(rows: list[dict], ours: str = "lstm_sequence", **match) -> str:
    """Why speedup() is None for this job: which side was not run or is missing, and why."""
    for provider in (ours, "nn_lstm"):
        row = one(rows, provider=provider, **match)
        if row is None:
            return f"{provider} not run"
        if not timed(row):
            return f"{provider} missing: {str(row.get('missing'))[:80]}"
    return ""


def target_lines(rows: list[dict]) -> list[str]:
    """The GPU targets (forward+backward, against nn.LSTM on cuDNN): what was reached, one line each.

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


def cpu_table(rows: list[dict]) -> list[dict]:
    """The CPU headline cases as table rows: shape, cell, code paths, nn.LSTM's ms and both ratios per
    mode (time / nn.LSTM's), the target and whether every timed ratio meets it.

    Args:
        rows: rows of one CPU machine, deduplicated.
    """
    table = []
    for r in cpu_headline(rows):
        if r["mode"] != "fwd":
            continue
        match = _case_match(r)
        entry = dict(shape=shape_label(r), cell=cell_label(r), target=CPU_TARGETS[cell_of(r)], modes={}, paths={})
        for p in ("lstm_module", "lstm_sequence"):
            ran = one(rows, provider=p, mode="fwd", **match)
            entry["paths"][p] = ran.get("code_path") if timed(ran) else "missing"
        for mode in ("fwd", "fwd+bwd"):
            base = one(rows, provider="nn_lstm", mode=mode, **match)
            entry["modes"][mode] = dict(nn_ms=base["ms"] if timed(base) else None,
                                        **{p: relative_time(rows, p, mode=mode, **match)
                                           for p in ("lstm_module", "lstm_sequence")})
        ratios = [v for m in entry["modes"].values() for k, v in m.items() if k != "nn_ms" and v is not None]
        entry["met"] = None if not ratios else all(v <= entry["target"] for v in ratios)
        table.append(entry)
    return table


def _x(value: Optional[float]) -> str:
    return "missing" if value is None else f"{value:.2f}x"


def _cpu_markdown(rows: list[dict]) -> list[str]:
    timing = rows[0].get("timing") or ""
    parts = [f"{caption(rows)}; {rows[0].get('cores')} cores, {rows[0].get('cpu_capability')}. T=100, float32, "
             f"time-major; {timing}. Time of triton_lstm relative to nn.LSTM's on the same weights (nn.LSTM runs "
             "the extras cells without peepholes and clips); target: at most 1.05x for cells nn.LSTM computes, "
             "1.5x with TF's extras.", "",
             "| shape | cell | path | nn.LSTM fwd (ms) | LSTM fwd | lstm_sequence fwd | nn.LSTM fwd+bwd (ms) "
             "| LSTM fwd+bwd | lstm_sequence fwd+bwd | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in cpu_table(rows):
        fwd, both = e["modes"]["fwd"], e["modes"]["fwd+bwd"]
        paths = " / ".join(dict.fromkeys(e["paths"].values()))
        verdict = "not measured" if e["met"] is None else "met" if e["met"] else "missed"
        nn_ms = ["missing" if m["nn_ms"] is None else f"{m['nn_ms']:.1f}" for m in (fwd, both)]
        parts.append(f"| {e['shape']} | {e['cell']} | {paths} | {nn_ms[0]} | {_x(fwd['lstm_module'])} | "
                     f"{_x(fwd['lstm_sequence'])} | {nn_ms[1]} | {_x(both['lstm_module'])} | "
                     f"{_x(both['lstm_sequence'])} | <= {e['target']:g}x: {verdict} |")
    return parts + [""]


def headline_markdown(rows: list[dict]) -> str:
    """Markdown for the README: per machine, the headline numbers (GPU: the fastrnns default shape,
    LSTMP, the grid and the targets; CPU: the headline cases against nn.LSTM).

    Args:
        rows: rows of any number of runs and machines.
    """
    parts = ["<!-- written by python -m benchmarks.plot from benchmarks/results/*.jsonl; do not edit -->", ""]
    groups = by_machine(rows)
    if not groups:
        parts.append("No benchmark results yet: `make bench` writes them.")
    for name, g in groups.items():
        parts += [f"### {name}", ""]
        if is_cpu(g):
            parts += _cpu_markdown(g)
            continue
        parts += [f"{caption(g)}. Median of `triton.testing.do_bench`, ms per call "
                  f"(the whole sequence); speedup = nn.LSTM time / ours; floor = recurrent matmuls at the "
                  f"measured dense rate + measured grid barriers, per step; fp32 in IEEE precision, tf32: "
                  f"fp32 with TF32 allowed in torch's matmuls and cuDNN (`--tf32`).", ""]
        default = pick(g, **DEFAULT_SHAPE)
        if default:
            parts += ["**fastrnns default shape** (T=100, B=64, input = hidden = 512)", "",
                      "| dtype | mode | triton_lstm persistent (ms) | us/step (floor) | nn.LSTM cuDNN (ms) | speedup "
                      "| step loop (ms) | torch.compile (ms) | FlashRNN (ms) |", "|---|---|---|---|---|---|---|---|---|"]
            for d in _present(default, "dtype", DTYPES):
                for m in _present(pick(default, dtype=d), "mode", MODES):
                    ours = one(default, provider="lstm_sequence", dtype=d, mode=m)
                    per_step = f"{ours['step_us']:.1f} ({ours['floor_us']:.1f})" if timed(ours) else "-"
                    parts.append(
                        f"| {d} | {m} | {_ms(ours)} | {per_step} | "
                        f"{_ms(one(default, provider='nn_lstm', dtype=d, mode=m))} | "
                        f"{_ratio(speedup(default, dtype=d, mode=m))} | "
                        f"{_ms(one(default, provider='step_loop', dtype=d, mode=m))} | "
                        f"{_ms(one(default, provider='torch_compile', dtype=d, mode=m))} | "
                        f"{_ms(one(default, provider='flashrnn', dtype=d, mode=m))} |")
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
                    ours = one(lstmp, provider="lstm_sequence", mode="fwd+bwd", **sel)
                    theirs = one(lstmp, provider="nn_lstm", mode="fwd+bwd", **sel)
                    parts.append(f"| {h} | {d} | {_ms(ours)} | {_ms(theirs)} | "
                                 + " | ".join(_ratio(speedup(lstmp, mode=m, **sel)) for m in MODES) + " |")
            parts.append("")
        grid = pick(g, group="grid")
        if grid:
            parts += [f"**Grid** (T={GRID_T}, batch {sorted({r['B'] for r in grid})} x hidden "
                      f"{sorted({r['N'] for r in grid})}): cells where ours beats nn.LSTM, of those where nn.LSTM "
                      f"ran (ours missing: a loss)",
                      "", "| dtype | fwd | bwd | fwd+bwd |", "|---|---|---|---|"]
            for d in _present(grid, "dtype", DTYPES):
                cells = []
                for m in MODES:
                    wins, n = grid_wins(g, d, m)
                    cells.append(f"{wins}/{n}" if pick(grid, dtype=d, mode=m) else "not run")
                parts.append(f"| {d} | " + " | ".join(cells) + " |")
            parts.append("")
        parts += ["**Targets** (forward+backward against nn.LSTM on cuDNN):", ""]
        parts += [f"- {line}" for line in target_lines(g)]
        jobs = Counter((r["provider"], r["missing"]) for r in g if r.get("missing"))
        if jobs:  # triton_lstm's own first
            missing = sorted(jobs, key=lambda k: (PROVIDERS.index(k[0]) if k[0] in PROVIDERS else len(PROVIDERS),
                                                  str(k[0]), k[1]))
            parts += ["", "Missing (provider: reason, jobs):", ""]
            parts += [f"- {p}: {reason} ({jobs[p, reason]})" for p, reason in missing[:MISSING_SHOWN]]
            if len(missing) > MISSING_SHOWN:
                parts.append(f"- ... and {len(missing) - MISSING_SHOWN} more reasons in the results file")
        parts.append("")
    return "\n".join(parts)


def summary_table(rows: list[dict]) -> str:
    """A short plain-text table per machine. GPU: the fastrnns default case in every mode, the other
    non-grid cases in fwd+bwd (when measured), the grid as win counts, then the targets. CPU: the
    headline cases' times relative to nn.LSTM.

    Args:
        rows: rows of any number of runs and machines (e.g. the rows of one benchmark run).
    """
    groups = by_machine(rows)
    if not groups:
        return "no rows"
    return "\n\n".join(_cpu_summary(g) if is_cpu(g) else _gpu_summary(g) for g in groups.values())


def _cpu_summary(rows: list[dict]) -> str:
    lines_out = [caption(rows), f"{'shape':28s} {'cell':22s} {'mode':8s} {'nn.LSTM ms':>10s} {'LSTM':>8s} "
                 f"{'sequence':>8s}  path"]
    for e in cpu_table(rows):
        for mode, m in e["modes"].items():
            nn_ms = "missing" if m["nn_ms"] is None else f"{m['nn_ms']:.2f}"
            lines_out.append(f"{e['shape']:28s} {e['cell']:22s} {mode:8s} {nn_ms:>10s} {_x(m['lstm_module']):>8s} "
                             f"{_x(m['lstm_sequence']):>8s}  {' / '.join(dict.fromkeys(e['paths'].values()))}")
    for cell in CPU_TARGETS:
        for mode in ("fwd", "fwd+bwd"):
            values = [relative_time(rows, mode=mode, **_case_match(r)) for r in rows
                      if r["provider"] == "nn_lstm" and r["mode"] == mode and cell_of(r) == cell]
            values = [v for v in values if v is not None]
            if values:
                lines_out.append(f"all {cell} cases, {mode}: lstm_sequence / nn.LSTM from {min(values):.2f}x to "
                                 f"{max(values):.2f}x over {len(values)} shapes")
    lines_out.append(f"time relative to nn.LSTM ({rows[0].get('timing')}); targets: "
                     + ", ".join(f"{c} <= {t:g}x" for c, t in CPU_TARGETS.items()))
    return "\n".join(lines_out)


def _gpu_summary(rows: list[dict]) -> str:
    lines_out = [caption(rows),
                 f"{'case':34s} {'dtype':5s} {'mode':7s} " + " ".join(f"{p[:12]:>12s}" for p in PROVIDERS)
                 + "  speedup"]
    cases = []
    for r in rows:
        key = tuple(r.get(k) for k in CASE_FIELDS)
        if r["group"] != "grid" and key not in cases:
            cases.append(key)
    for key in cases:
        match = dict(zip(CASE_FIELDS, key))
        label_ = f"{match['group']} T{match['T']} B{match['B']} N{match['N']}"
        label_ += f" P{match['P']}" if match["P"] else ""
        sel = pick(rows, **match)
        if match["group"] != "default":
            sel = [r for r in sel if r["mode"] == "fwd+bwd"] or sel
        for d in _present(sel, "dtype", DTYPES):
            for m in _present(pick(sel, dtype=d), "mode", MODES):
                cells = []
                for p in PROVIDERS:
                    r = one(sel, provider=p, dtype=d, mode=m)
                    cells.append(f"{'' if r is None else _ms(r):>12s}")
                lines_out.append(f"{label_:34s} {d:5s} {m:7s} " + " ".join(cells)
                                 + f"  {_ratio(speedup(sel, dtype=d, mode=m))}")
    grid = pick(rows, group="grid")
    for d in _present(grid, "dtype", DTYPES):
        for m in _present(pick(grid, dtype=d), "mode", MODES):
            wins, n = grid_wins(rows, d, m)
            lines_out.append(f"grid T{GRID_T} {d} {m}: ours faster than nn.LSTM in {wins} of {n} cells"
                             + ("" if n else " (nn.LSTM ran in none: see the missing rows)"))
    lines_out.append("ms per call (median); speedup = nn_lstm / lstm_sequence")
    if any(r["group"] in ("default", "lstmp", "grid") for r in rows):
        lines_out += ["targets:"] + [f"  {line}" for line in target_lines(rows)]
    return "\n".join(lines_out)


def check_writable(parser: argparse.ArgumentParser, flag: str, path: Path, folder: bool) -> None:
    """A usage error naming ``flag`` (exit 2) unless ``path``, a folder or a file to append to, can be
    written; a missing folder is made (checked before anything is measured or drawn)."""
    if folder and path.exists() and not path.is_dir():
        parser.error(f"{flag}: {path} is a file, not a folder")
    if not folder:
        if path.is_dir():
            parser.error(f"{flag}: {path} is a folder; give a file")
        if path.parent.exists() and not path.parent.is_dir():
            parser.error(f"{flag}: {path.parent} is a file, not a folder")
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
        if folder:
            tempfile.TemporaryFile(dir=path).close()
        else:
            existed = os.path.lexists(path)   # a link to nowhere: its target is made, and kept
            path.open("a").close()
            if not existed:
                path.unlink()
    except OSError as e:
        parser.error(f"{flag}: cannot write {e.filename or path} ({e.strerror})")


def main(argv=None) -> int:
    """Command line (see the module docstring). Args: argv: arguments, default sys.argv[1:]."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path, metavar="RESULTS.jsonl",
                        help="results files (default: every benchmarks/results/*.jsonl)")
    parser.add_argument("--plots-dir", type=Path, default=REPO / "plots", metavar="DIR",
                        help="where the figures and headline.md go (default plots/)")
    parser.add_argument("--table", action="store_true", help="print the summary table instead of plotting")
    args = parser.parse_args(argv)
    paths = args.results or sorted((REPO / "benchmarks" / "results").glob("*.jsonl"))
    absent = [f"{p} (a folder)" if p.is_dir() else str(p) for p in paths if not p.is_file()]
    if absent:
        print(f"benchmarks.plot: not a results file: {', '.join(absent)}", file=sys.stderr)
        return 2
    if not args.table:
        check_writable(parser, "--plots-dir", args.plots_dir, folder=True)
    try:
        rows = load_rows(paths)
    except ValueError as e:
        print(f"benchmarks.plot: {e}", file=sys.stderr)
        return 2
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
