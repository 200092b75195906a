"""Launch-configuration tuning: pruned candidates, timed on the GPU, remembered across processes.

Every kernel launch asks ``pick`` for its configuration. On a GPU the first launch of a shape
compiles each candidate, drops those that spill, exceed the register file or shared memory (or,
for the persistent kernels, would not all be resident at once: candidates never have more
programs than SMs), times the rest and keeps the fastest. Winners are cached in memory and in
``$TRITON_LSTM_CACHE_DIR`` (default ``~/.cache/triton_lstm``), one JSON file per GPU name and
Triton version, keyed by kernel, dtype, shape and options. A corrupt or half-written file is
ignored and rewritten.

Environment:
    TRITON_LSTM_AUTOTUNE=0         no tuning: the first (default) candidate is used
    TRITON_LSTM_CONFIG="k=v,..."   pin fields of the configuration, e.g. "block_b=32,num_warps=8"
    TRITON_LSTM_CACHE_DIR=path     where tuned results are kept

``python -m triton_lstm.tune --hidden 512 --batch 64 [--proj 128] [--dtype float16 ...]`` tunes
ahead of time and prints the winners.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
import triton

C = TypeVar("C")

_memory: dict[str, dict] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("TRITON_LSTM_CACHE_DIR") or Path.home() / ".cache" / "triton_lstm")


@functools.lru_cache(maxsize=None)
def _gpu_slug(index: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(index)).strip("-").lower()


def cache_file(device: torch.device) -> Path:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return cache_dir() / f"{_gpu_slug(index)}-triton-{triton.__version__}.json"


def _read(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable tuning cache {path} ({e}); it will be rewritten")
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, value: dict) -> None:
    """Merge one entry into the file; written to a temporary file and renamed, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read(path)
    data[key] = value
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def pinned(default: C) -> Optional[C]:
    """The default with the fields named in TRITON_LSTM_CONFIG replaced, or None when unset."""
    spec = os.environ.get("TRITON_LSTM_CONFIG")
    if not spec:
        return None
    fields = {f.name for f in dataclasses.fields(default)}
    values = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in fields or not value.strip().isdigit():
            raise ValueError(f"TRITON_LSTM_CONFIG: expected comma-separated name=int with names in {sorted(fields)}, "
                             f"got {item!r}")
        values[name] = int(value)
    return dataclasses.replace(default, **values)


def fits(compiled: Any, cfg: Any, device: torch.device) -> bool:
    """No spills, registers within the SM's file for one block, shared memory within the opt-in limit."""
    props = torch.cuda.get_device_properties(device)
    threads = cfg.num_warps * 32
    max_shared = getattr(props, "shared_memory_per_block_optin", 48 * 1024)
    return (compiled.n_spills == 0 and compiled.n_regs * threads <= props.regs_per_multiprocessor
            and compiled.metadata.shared <= max_shared)


def pick(kernel: str, key: str, default: C, candidates: Callable[[], Sequence[C]],
         launch: Callable[[C, bool], Any], device: torch.device) -> C:
    """The configuration to launch ``kernel`` with for this shape ``key``.

    candidates() lists the search space (built only when tuning). launch(cfg, warmup) compiles
    without running when warmup is True (returning the compiled kernel) and runs the kernel
    otherwise; running it repeatedly must be harmless.
    """
    pin = pinned(default)
    if pin is not None:
        return pin
    if (device.type != "cuda" or os.environ.get("TRITON_LSTM_AUTOTUNE") == "0"
            or torch.cuda.is_current_stream_capturing()):
        return default
    full_key = f"{kernel}|{key}"
    path = cache_file(device)
    memo = _memory.get(str(path))
    if memo is None:  # the file is read once per process, not on every launch
        memo = _memory[str(path)] = _read(path)
    if full_key in memo:
        return dataclasses.replace(default, **memo[full_key]["config"])
    candidates = candidates()
    timings = []
    for cfg in candidates:
        if not fits(launch(cfg, True), cfg, device):
            continue
        ms = triton.testing.do_bench(lambda: launch(cfg, False), warmup=5, rep=20, return_mode="median")
        timings.append((ms, cfg))
    if not timings:
        raise RuntimeError(f"{kernel}: no launch configuration fits this GPU for {key}")
    ms, best = min(timings, key=lambda item: item[0])
    entry = {"config": dataclasses.asdict(best), "ms": ms, "candidates": len(candidates), "timed": len(timings)}
    memo[full_key] = entry
    _write(path, full_key, entry)
    return best


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Tune triton_lstm's kernels ahead of time for this GPU.")
    parser.add_argument("--hidden", type=int, nargs="+", required=True, help="num_units values")
    parser.add_argument("--batch", type=int, nargs="+", required=True, help="batch sizes")
    parser.add_argument("--input", type=int, default=None, help="input size (default: hidden)")
    parser.add_argument("--proj", type=int, nargs="*", default=[0], help="num_proj values (0: none)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=64, help="sequence length used while tuning")
    parser.add_argument("--peepholes", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU found: nothing to tune (CPU runs use fixed configurations)")
        return 0
    from triton_lstm.functional import lstm_cell
    from triton_lstm.sequence import lstm_sequence
    shapes = [(h, b, p, d) for h in args.hidden for b in args.batch for p in args.proj for d in args.dtype]
    before = set(_read(cache_file(torch.device("cuda"))))
    for i, (N, B, P, dtype_name) in enumerate(shapes, 1):
        print(f"[{i}/{len(shapes)}] hidden={N} batch={B} proj={P or '-'} {dtype_name}", file=sys.stderr, flush=True)
        dtype, D, out = getattr(torch, dtype_name), args.input or N, P or N
        x = torch.randn(args.steps, B, D, device="cuda", dtype=dtype, requires_grad=True)
        w_x = (torch.randn(D, 4 * N, device="cuda", dtype=dtype) / D ** 0.5).requires_grad_()
        w_h = (torch.randn(out, 4 * N, device="cuda", dtype=dtype) / out ** 0.5).requires_grad_()
        bias = torch.zeros(4 * N, device="cuda", dtype=dtype, requires_grad=True)
        peep = [torch.zeros(N, device="cuda", dtype=dtype, requires_grad=True) if args.peepholes else None
                for _ in range(3)]
        proj = (torch.randn(N, P, device="cuda", dtype=dtype) / N ** 0.5).requires_grad_() if P else None
        h0 = torch.zeros(B, out, device="cuda", dtype=dtype)
        c0 = torch.zeros(B, N, device="cuda")
        y, h, c = lstm_sequence(x, h0, c0, w_x, w_h, bias, *peep, proj)
        (y.float().sum() + c.sum()).backward()
        h1, c1 = lstm_cell(x[0], c0, h0, torch.cat([w_x, w_h]), bias, *peep, proj)
        (h1.float().sum() + c1.sum()).backward()
    torch.cuda.synchronize()
    table = _read(cache_file(torch.device("cuda")))
    print(f"{'kernel | key':70s} {'ms':>8s}  config")
    for key in sorted(table):
        if key not in before:
            entry = table[key]
            print(f"{key[:70]:70s} {entry['ms']:8.4f}  {entry['config']}")
    print(f"cache: {cache_file(torch.device('cuda'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
