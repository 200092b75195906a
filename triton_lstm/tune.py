"""Launch-configuration choice: pruned by what the build says, timed on the GPU, remembered across processes.

Every kernel launch asks ``pick`` for its configuration; the caller says what to run. On a GPU the
first launch of a shape compiles a handful of candidates (``launch.candidates`` ranks them with a
static model), drops those that spill, exceed the register file or shared memory, or would not
all be resident at once, times the rest and keeps the fastest. Winners are cached in memory and in
``$TRITON_LSTM_CACHE_DIR`` (default ``~/.cache/triton_lstm``), one JSON file per GPU name and
Triton version, keyed by kernel, dtype, shape and options, with the time the tuning took, merged
under a file lock. A corrupt file is ignored and rewritten; a cached choice is checked as a
candidate is (it compiles, fits and passes ``finish``) before it is used, else tuned again. Cached
choices are used during CUDA-graph capture too; nothing is timed then.

Environment:
    TRITON_LSTM_AUTOTUNE=0         no timing and no cache: the first candidate that fits is used
                                   (0/1, also false/true, no/yes, off/on)
    TRITON_LSTM_CONFIG="k=v,..."   pin fields of the configuration, e.g. "block_b=32,num_warps=8"
    TRITON_LSTM_CACHE_DIR=path     where tuned results are kept (if it cannot be written, a warning
                                   says so and choices are kept for this process only)

``python -m triton_lstm.pretune`` tunes shapes ahead of time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence, TypeVar

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

try:
    import fcntl
except ImportError:  # not on Windows: cache writes there are not locked
    fcntl = None

C = TypeVar("C")

_memory: dict[str, dict] = {}   # cache file contents, per file
_chosen: dict[tuple, Any] = {}   # this process's choice per kernel, key and environment
_tuned: dict[str, float] = {}    # seconds each kernel|key that this process tuned took

# Values TRITON_LSTM_CONFIG may give each field (what the kernels can compile).
PIN_CHOICES = dict(block_b=(16, 32, 64, 128), block_n=(4, 8, 16, 32, 64), block_p=(16, 32, 64, 128),
                   block_k=(16, 32, 64, 128, 256, 512), resident=(0, 1), stepped=(0, 1), num_warps=(1, 2, 4, 8, 16),
                   num_stages=(1, 2, 3, 4),
                   maxnreg=tuple(range(24, 256)))


_FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                "off": False}


def env_flag(name: str, default: bool) -> bool:
    """A boolean environment variable: unset or empty is ``default``; anything but 0/1, true/false,
    yes/no or on/off is an error naming it."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _FLAG_VALUES:
        raise ValueError(f"{name}: expected 0 or 1 (or false/true, no/yes, off/on), got {os.environ[name]!r}")
    return _FLAG_VALUES[value]


def cache_dir() -> Path:
    return Path(os.environ.get("TRITON_LSTM_CACHE_DIR") or Path.home() / ".cache" / "triton_lstm")


@functools.lru_cache(maxsize=None)
def _gpu_slug(index: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(index)).strip("-").lower()


def cache_file() -> Path:
    return _cache_file(torch.cuda.current_device(), os.environ.get("TRITON_LSTM_CACHE_DIR"))


@functools.lru_cache(maxsize=None)
def _cache_file(index: int, _folder: Optional[str]) -> Path:
    """Made once per GPU and folder: each launch asks for it."""
    return cache_dir() / f"{_gpu_slug(index)}-triton-{triton.__version__}.json"


def _read(path: Path) -> dict:
    """The cache file's entries; {} for none or a corrupt file (with a warning). A file this user may
    not read raises PermissionError: it is someone else's, not to be rewritten."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # no file there (yet)
        return {}
    except PermissionError:
        raise
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable tuning cache {path} ({e}); it will be rewritten")
        return {}
    if not isinstance(data, dict):
        warnings.warn(f"ignoring tuning cache {path}: not a JSON object; it will be rewritten")
        return {}
    return data


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``<path>.lock`` while the file is read, merged and replaced, so that
    processes tuning at once (one per GPU, DDP ranks) keep each other's entries."""
    with open(path.with_name(path.name + ".lock"), "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:  # a file system without locks (NFS without its lock daemon): written unlocked
                pass
        yield


def _write(path: Path, key: str, value: dict) -> None:
    """Merge one entry into the file, under a lock; written to a temporary file (with the umask's
    permissions, as the file itself) and renamed, so readers never see half a file. A cache that
    cannot be written (or read: another user's) is a warning and is left as it is: the choice still
    holds in this process."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            data = _read(path)
            data[key] = value
            tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    except OSError as e:
        left = ""
        if tmp is not None and tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                left = f"; {tmp} is left behind"
        warnings.warn(f"could not write the tuning cache {path} ({e}){left}; set TRITON_LSTM_CACHE_DIR to a "
                      f"writable folder to keep tuned choices across processes")


def _cached(entry: Any, default: C, run, fits, finish, path: Path, key: str) -> Optional[C]:
    """A cache entry's configuration completed by ``finish``, checked as a candidate is; None (with a
    warning: it is tuned again) for one that cannot run here: a file another version of triton_lstm
    or another GPU wrote (too many programs for this GPU's SMs, more shared memory than it has), or
    one edited by hand."""
    try:
        config = entry["config"]
        bad = [name for name, value in config.items()
               if not isinstance(value, int) or value not in PIN_CHOICES.get(name, ())]
        if bad:
            raise ValueError(f"values the kernels do not compile: {bad}")
        cfg = finish(dataclasses.replace(default, **config))
        if not fits(run(cfg, True), cfg):
            raise ValueError("it does not fit this GPU (spills, registers or shared memory)")
    except (TypeError, KeyError, ValueError, AttributeError, CompilationError, RuntimeError) as e:
        warnings.warn(f"ignoring the tuning cache's entry {key!r} in {path} ({type(e).__name__}: {e}); "
                      f"tuning again")
        return None
    return cfg


def pinned(default: C, kernel: str) -> Optional[C]:
    """The default with the fields TRITON_LSTM_CONFIG names replaced, or None when it names none.

    Items are ``field=value`` (every kernel) or ``kernel.field=value`` (one kernel, e.g.
    ``seq_bwd.block_n=16``). Each value must be one the kernels compile (``PIN_CHOICES``): a bad
    name or value, an unknown kernel or a field given twice is an error naming it, not a launch that
    hangs or fails deep in Triton.
    """
    from triton_lstm.launch import KERNELS  # the kernels' launcher builds on this module

    spec = os.environ.get("TRITON_LSTM_CONFIG")
    if not spec:
        return None
    fields = {f.name: f.type for f in dataclasses.fields(default)}
    values, seen = {}, set()
    for item in filter(str.strip, spec.split(",")):
        name, _, value = (part.strip() for part in item.partition("="))
        target, _, name = name.rpartition(".")
        if target not in ("", *KERNELS):
            raise ValueError(f"TRITON_LSTM_CONFIG: unknown kernel {target!r} in {item!r}; kernels are "
                             f"{sorted(KERNELS)}")
        if name not in fields:
            raise ValueError(f"TRITON_LSTM_CONFIG: unknown field {name!r} in {item!r}; fields are {sorted(fields)}")
        if (target, name) in seen:
            raise ValueError(f"TRITON_LSTM_CONFIG: {item.partition('=')[0].strip()!r} is given twice")
        seen.add((target, name))
        if not (value.isascii() and value.isdigit()) or int(value) not in PIN_CHOICES[name]:
            choices = PIN_CHOICES[name]
            shown = f"{choices[0]}..{choices[-1]}" if len(choices) > 8 else ", ".join(map(str, choices))
            raise ValueError(f"TRITON_LSTM_CONFIG: {name} must be one of {shown}, got {value!r}")
        if target in ("", kernel):
            values[name] = bool(int(value)) if fields[name] in (bool, "bool") else int(value)
    return dataclasses.replace(default, **values) if values else None


CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@functools.lru_cache(maxsize=64)
def resource_usage(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of a cubin, from the cuobjdump shipped in Triton's wheel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], check=True, capture_output=True,
                             text=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    if "reg" not in usage:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return usage


def fits(compiled: Any, cfg: Any, limits: Any, spills: bool = False) -> bool:
    """The compiled kernel runs well on the device: nothing in local memory (spills, or a stack
    frame ptxas made for them; with ``spills``, it need only run), one block's registers and shared
    memory within an SM's, so one program fits on each SM (the grid of a persistent launch is the
    caller's: ``launch.candidates`` never makes more programs than SMs, and ``launch.check_config``
    refuses a pin that does)."""
    # Loading the binary (what a first launch does) refuses a kernel that needs more shared memory
    # than the device has, and gives the registers and spills the driver reports.
    try:
        compiled._init_handles()
    except OutOfResources:
        return False
    regs, spilled = compiled.n_regs, compiled.n_spills > 0
    if os.path.exists(CUOBJDUMP):  # the driver's count leaves out a stack frame that spills go to
        usage = resource_usage(compiled.asm["cubin"])
        spilled = spilled or usage.get("stack", 0) > 0 or usage.get("local", 0) > 0
    return ((spills or not spilled) and regs * cfg.num_warps * 32 <= limits.regs_per_sm
            and compiled.metadata.shared <= limits.shared_per_block)


def pick(kernel: str, key: str, candidates: Callable[[], Sequence[C]], run: Callable[[C, bool], Any],
         fits: Callable[[Any, C], bool], compiled: bool, capturing: bool, device: Hashable = None,
         finish: Callable[[C], C] = lambda cfg: cfg) -> C:
    """The configuration to launch ``kernel`` with for this shape ``key``.

    candidates() lists the search space, the default first. run(cfg, warmup) compiles without
    running when warmup is True (returning what it compiled) and runs the kernel otherwise;
    running it repeatedly must be harmless. fits(compiled, cfg) is the resource check.
    compiled: kernels are compiled for a GPU (else the interpreter runs the default). finish(cfg)
    completes and validates the choice (a ValueError for one that cannot run). A choice is made once
    per process, device (and GPU model) and key; later launches, captured or not, get the same one.
    """
    autotune = env_flag("TRITON_LSTM_AUTOTUNE", True)
    # The cache file names the GPU model: two models with the same limits (H100 and H200) choose apart.
    memo_key = (kernel, key, compiled, device, cache_file() if compiled and autotune else None,
                os.environ.get("TRITON_LSTM_CONFIG"), autotune)
    choice = _chosen.get(memo_key)
    if choice is None:
        choice = _chosen[memo_key] = _choose(kernel, key, candidates, run, fits, compiled, capturing, autotune,
                                             finish)
    return choice


def _choose(kernel, key, candidates, run, fits, compiled, capturing, autotune, finish):
    space = candidates()
    pin = pinned(space[0], kernel)
    if pin is not None:
        try:
            return finish(pin)
        except ValueError as e:
            raise ValueError(f"TRITON_LSTM_CONFIG: {e}") from None
    if not compiled:
        return finish(space[0])
    if autotune:
        full_key = f"{kernel}|{key}"
        path = cache_file()
        memo = _memory.get(str(path))
        if memo is None:  # the file is read once per process
            try:
                memo = _read(path)
            except PermissionError as e:
                warnings.warn(f"cannot read the tuning cache {path} ({e}); choices are tuned in this process")
                memo = {}
            _memory[str(path)] = memo
        cached = _cached(memo[full_key], space[0], run, fits, finish, path, full_key) if full_key in memo else None
        if cached is not None:
            return cached
    start = time.perf_counter()
    fitting = (cfg for cfg in space if fits(run(cfg, True), cfg))
    first = next(fitting, None)
    if first is None:
        raise RuntimeError(f"{kernel}: no launch configuration fits this GPU for {key}")
    if not autotune or capturing:
        return finish(first)
    timings, failed = [], []
    for cfg in itertools.chain([first], fitting):
        try:
            timings.append((triton.testing.do_bench(lambda: run(cfg, False), warmup=5, rep=20,
                                                    return_mode="median"), cfg))
        except RuntimeError as e:  # a launch the driver refuses (a cooperative grid under an SM limit, as MPS's)
            failed.append((cfg, e))
    if failed:
        warnings.warn(f"{kernel}: {len(failed)} of {len(failed) + len(timings)} launch configurations failed to "
                      f"run for {key} and were skipped; the first, {failed[0][0]}: {failed[0][1]}")
    if not timings:
        raise RuntimeError(f"{kernel}: no launch configuration ran on this GPU for {key}") from failed[0][1]
    ms, best = min(timings, key=lambda item: item[0])
    entry = {"config": dataclasses.asdict(best), "ms": ms, "candidates": len(space), "timed": len(timings),
             "tune_s": round(time.perf_counter() - start, 3)}
    memo[full_key] = entry
    _tuned[full_key] = entry["tune_s"]
    _write(path, full_key, entry)
    return finish(best)


def tuning_seconds() -> dict[str, float]:
    """Seconds each key tuned in this process took (for the benchmark's report); keys read from the
    cache file are not among them."""
    return dict(_tuned)
