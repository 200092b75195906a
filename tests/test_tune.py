"""The tuner's choice, pruning, persistence and switches, and the candidate lists it chooses from.

Here ``run`` and ``fits`` are plain functions standing in for compiling, checking and launching a
kernel, and ``triton.testing.do_bench`` is replaced by a function of the configuration (nothing is
timed without a GPU). The real resource check on real sm_90 builds is in test_host_path.py.
"""
import dataclasses
import json
import re

import pytest
import torch
import triton

from triton_lstm import tune
from triton_lstm.launch import INTERPRETER_LIMITS, KERNELS, Config, DeviceLimits, Problem, candidates, programs

H100 = DeviceLimits(sms=132, regs_per_sm=65536, shared_per_block=227 * 1024, arch=90)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "gpu-triton.json"
    monkeypatch.setattr(tune, "cache_file", lambda: path)
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(tune, "_tuned", {})
    monkeypatch.delenv("TRITON_LSTM_CONFIG", raising=False)
    monkeypatch.delenv("TRITON_LSTM_AUTOTUNE", raising=False)
    return path


SPACE = [Config(16, 16, 16, 64, True, 4), Config(64, 8, 16, 64, True, 4), Config(32, 16, 16, 64, True, 4),
         Config(32, 16, 16, 128, False, 8)]


class FakeGpu:
    """Compiling returns the configuration; block_b 64 "spills"; a run takes block_k + block_b ms."""

    def __init__(self, monkeypatch):
        self.compiled, self.ran = [], []
        monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn() or self.ran[-1].block_k + self.ran[-1].block_b)

    def run(self, cfg, warmup):
        (self.compiled if warmup else self.ran).append(cfg)
        return cfg if warmup else None

    def failing(self, when, message):
        """run, raising RuntimeError(message) where when(cfg, warmup) holds: a build the compiler or a
        launch the driver refuses."""
        def run(cfg, warmup):
            if when(cfg, warmup):
                raise RuntimeError(message)
            return self.run(cfg, warmup)
        return run

    @staticmethod
    def fits(compiled, cfg):
        return compiled.block_b != 64

    def pick(self, key="k", capturing=False, space=SPACE):
        return tune.pick("seq_fwd", key, lambda: space, self.run, self.fits, compiled=True, capturing=capturing)


def test_pick_prunes_before_timing_times_the_rest_and_persists(cache, monkeypatch):
    gpu = FakeGpu(monkeypatch)
    best = gpu.pick()
    assert best == SPACE[0]  # 64 + 16 ms beats 64 + 32 and 128 + 32; block_b 64 was pruned
    assert gpu.compiled == SPACE
    assert Config(64, 8, 16, 64, True, 4) not in gpu.ran, "a pruned configuration was run"
    stored = json.loads(cache.read_text())["seq_fwd|k"]
    assert stored["config"] == {f: getattr(best, f) for f in stored["config"]}
    assert stored["candidates"] == 4 and stored["timed"] == 3 and stored["tune_s"] >= 0
    assert tune.tuning_seconds() == {"seq_fwd|k": stored["tune_s"]}
    # A new process: nothing in memory; the file answers without timing anything, compiling only
    # its choice (which the launch compiles anyway) to check that it fits; it tuned nothing itself.
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(tune, "_tuned", {})
    gpu.compiled.clear(), gpu.ran.clear()
    assert gpu.pick() == best
    assert gpu.compiled == [best] and gpu.ran == []
    assert tune.tuning_seconds() == {}


def test_a_choice_is_made_once_per_process(cache, monkeypatch):
    gpu = FakeGpu(monkeypatch)
    best = gpu.pick("k3")
    reads = []
    monkeypatch.setattr(tune, "_read", lambda path: reads.append(path) or {})

    def no_candidates():
        raise AssertionError("candidates built for a key already chosen")

    for _ in range(3):
        assert tune.pick("seq_fwd", "k3", no_candidates, gpu.run, gpu.fits, compiled=True, capturing=False) == best
    assert reads == []


def test_capture_uses_the_cached_choice_and_never_times(cache, monkeypatch):
    gpu = FakeGpu(monkeypatch)
    tuned = gpu.pick("k4")
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(tune, "_memory", {})
    gpu.ran.clear()
    assert gpu.pick("k4", capturing=True) == tuned
    # A shape first seen while capturing: the first candidate that fits, untimed; later eager
    # launches get the same one, so captured and eager runs agree.
    space = list(reversed(SPACE))
    first_fit = gpu.pick("k5", capturing=True, space=space)
    assert first_fit == space[0] and gpu.ran == []
    assert gpu.pick("k5", capturing=False, space=space) == first_fit


def test_tuning_off_takes_the_first_fitting_candidate_untimed(cache, monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "0")
    gpu = FakeGpu(monkeypatch)
    space = [SPACE[1], SPACE[2], SPACE[0]]
    assert gpu.pick(space=space) == SPACE[2]
    assert gpu.ran == [] and not cache.exists()


def test_corrupt_cache_is_ignored_and_rewritten(cache, monkeypatch):
    cache.write_text('{"seq_fwd|k": {"config": ')
    gpu = FakeGpu(monkeypatch)
    with pytest.warns(UserWarning, match="unreadable tuning cache"):
        best = gpu.pick()
    assert json.loads(cache.read_text())["seq_fwd|k"]["config"]["block_b"] == best.block_b


@pytest.mark.parametrize("entry", [{"config": {"bogus": 1}}, {"ms": 1.0}, [1, 2], {"config": {"block_b": 7}},
                                   {"config": [16]}], ids=["unknown-field", "no-config", "list", "bad-value", "bad-config"])
def test_unusable_cache_entry_is_ignored_and_retuned(cache, monkeypatch, entry):
    """An entry this version cannot use (another release wrote it, or a hand edit) is tuned again."""
    cache.write_text(json.dumps({"seq_fwd|k": entry}))
    gpu = FakeGpu(monkeypatch)
    with pytest.warns(UserWarning, match=r"^ignoring the tuning cache's entry 'seq_fwd\|k'"):
        best = gpu.pick()
    assert best == SPACE[0] and gpu.ran
    assert json.loads(cache.read_text())["seq_fwd|k"]["config"]["block_b"] == best.block_b


def test_unwritable_cache_is_a_warning_and_the_choice_holds(cache, monkeypatch, tmp_path):
    """TRITON_LSTM_CACHE_DIR naming a file: the tuned choice is used, with a warning, not an error
    at the end of the tuning time."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(tune, "cache_file", lambda: blocker / "gpu-triton.json")
    gpu = FakeGpu(monkeypatch)
    with pytest.warns(UserWarning) as warned:
        assert gpu.pick() == SPACE[0]
    assert len(warned) == 1, [str(w.message) for w in warned]
    assert re.match(r"could not write the tuning cache .*TRITON_LSTM_CACHE_DIR", str(warned[0].message))


@pytest.mark.parametrize("value,on", [("", True), ("1", True), ("true", True), ("On", True), (" yes ", True),
                                      ("0", False), ("false", False), ("OFF", False), ("no", False)])
def test_autotune_switch_values(cache, monkeypatch, value, on):
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", value)
    gpu = FakeGpu(monkeypatch)
    gpu.pick()
    assert bool(gpu.ran) == on and cache.exists() == on


def test_bad_switch_value_names_the_variable(cache, monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "sometimes")
    with pytest.raises(ValueError, match=r"^TRITON_LSTM_AUTOTUNE: expected 0 or 1 .*got 'sometimes'"):
        FakeGpu(monkeypatch).pick()


def test_nothing_fits_is_an_error(cache, monkeypatch):
    gpu = FakeGpu(monkeypatch)
    with pytest.raises(RuntimeError, match="no launch configuration fits"):
        tune.pick("seq_fwd", "k", lambda: SPACE, gpu.run, lambda compiled, cfg: False, compiled=True,
                  capturing=False)


def test_interpreter_takes_the_default_and_pins_apply(cache, monkeypatch):
    def never(cfg, warmup):
        raise AssertionError("nothing is compiled or timed under the interpreter")

    assert tune.pick("seq_fwd", "k", lambda: SPACE, never, never, compiled=False, capturing=False) == SPACE[0]
    monkeypatch.setenv("TRITON_LSTM_CONFIG", "block_b=64, num_warps=8,seq_bwd.block_n=32,")  # a trailing comma too
    pinned = tune.pick("seq_fwd", "k", lambda: SPACE, never, never, compiled=True, capturing=False)
    assert pinned == Config(64, 16, 16, 64, True, 8)
    assert tune.pinned(SPACE[0], "seq_bwd") == Config(64, 32, 16, 64, True, 8)


@pytest.mark.parametrize("spec,message", [
    ("block_q=3", r"unknown field 'block_q'"), ("block_b=x", r"block_b must be one of 16, 32, 64, 128, got 'x'"),
    ("block_b", r"block_b must be one of"), ("block_b=7", r"block_b must be one of 16, 32, 64, 128, got '7'"),
    ("num_warps=0", r"num_warps must be one of"), ("resident=2", r"resident must be one of 0, 1"),
    ("seq_fwd.programs=2", r"unknown field 'programs'"),
    ("nokernel.block_b=32", r"unknown kernel 'nokernel' in 'nokernel.block_b=32'; kernels are \['seq_bwd'"),
    ("seq_fwd.seq_bwd.block_b=32", r"unknown kernel 'seq_fwd.seq_bwd'"),
    ("block_b=32,num_warps=4,block_b=64", r"'block_b' is given twice"),
    ("block_b=\u00b3", r"block_b must be one of 16, 32, 64, 128, got '\u00b3'")])
def test_bad_pin_names_the_field(cache, monkeypatch, spec, message):
    monkeypatch.setenv("TRITON_LSTM_CONFIG", spec)
    with pytest.raises(ValueError, match=r"^TRITON_LSTM_CONFIG: " + message):
        tune.pinned(SPACE[0], "seq_fwd")


def problems():
    for kernel in KERNELS:
        for B, N, P, proj, dtype in [(3, 10, 10, False, torch.float16), (2, 8, 8, True, torch.float16),
                                     (64, 512, 512, False, torch.float16),
                                     (64, 1024, 256, True, torch.float32), (256, 2048, 640, True, torch.bfloat16),
                                     (1, 128, 128, False, torch.float32)]:
            yield Problem(kernel, B, 80, N, P, proj, dtype)


@pytest.mark.parametrize("pb", list(problems()), ids=lambda pb: f"{pb.kernel}-B{pb.B}-N{pb.N}-P{pb.P}-{pb.dtype}")
def test_candidates_are_few_valid_and_persistent_grids_fit_the_sms(pb):
    cands = candidates(pb, H100)
    spec = KERNELS[pb.kernel]
    assert 1 <= len(cands) <= (6 if spec.persistent else 4) and len(set(cands)) == len(cands)
    for c in cands:
        assert min(c.block_b, c.block_k, c.block_p) >= 16 and c.block_n >= spec.min_block_n
        assert c.block_b <= max(16, triton.next_power_of_2(pb.B)), "tiles wider than the batch are not searched"
        if spec.persistent and not c.stepped:
            assert programs(c, pb) <= H100.sms
        if not spec.persistent:
            assert not c.resident and not c.stepped
    if spec.persistent:
        # The last resort, whatever else fails to build: one launch per phase of each step.
        assert cands[-1].stepped and not any(c.stepped for c in cands[:-1])
        if pb.kernel == "seq_bwd" and not pb.proj:
            assert c.block_p == c.block_n


def test_a_resident_candidate_takes_each_slice_in_one_k_tile():
    """The LSTMP backward at 768 / 192 in half precision builds resident without spills in Triton 3.6
    only with one K tile per slice (192 rows in one 256-row tile), not in the default 64-row tiles."""
    pb = Problem("seq_bwd", 64, 80, 768, 192, True, torch.float16)
    resident = [c for c in candidates(pb, H100) if c.resident]
    assert resident[0].block_k == 64 and any(c.block_k == 256 for c in resident)


def test_interpreter_default_is_one_program_where_tiles_allow():
    assert programs(candidates(Problem("seq_fwd", 3, 7, 20, 5, True, torch.float32), INTERPRETER_LIMITS)[0],
                    Problem("seq_fwd", 3, 7, 20, 5, True, torch.float32)) == 1
    big = Problem("seq_bwd", 300, 7, 20, 20, False, torch.float32)
    assert programs(candidates(big, INTERPRETER_LIMITS)[0], big) == 3  # 300 rows in tiles of at most 128


def test_pretune_cli_without_gpu(capsys):
    from triton_lstm import pretune
    if torch.cuda.is_available():
        pytest.skip("the CPU message is only printed without a GPU")
    assert pretune.main(["--hidden", "64", "--batch", "8", "--peepholes", "--cell-clip", "3", "--lengths"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


@pytest.mark.parametrize("tf32", [False, True])
def test_pretune_tunes_the_float32_precision_asked_for(tf32, cache, monkeypatch, capsys):
    """float32 models with TF32 allowed look up keys with INPUT_PRECISION=tf32: ``--tf32`` tunes those.
    The GPU's part (availability, the tuning runs, its final sync) is replaced; what tune_one runs
    under is recorded."""
    from triton_lstm import pretune
    from triton_lstm.launch import input_precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    seen = []
    monkeypatch.setattr(pretune, "tune_one", lambda N, B, D, P, dtype, args: seen.append(input_precision(dtype)))
    before = torch.backends.cuda.matmul.allow_tf32
    assert pretune.main(["--hidden", "64", "--batch", "8", "16"] + ["--tf32"] * tf32) == 0
    assert seen == ["tf32" if tf32 else "ieee"] * 2
    assert torch.backends.cuda.matmul.allow_tf32 == before


def unreadable(path):
    """Reading a cache file another user owns (mode 0600): a test run as root could read a real one."""
    raise PermissionError(13, "Permission denied", str(path))


def test_pretune_says_when_it_cannot_read_the_cache(cache, monkeypatch, capsys):
    """Another user's cache file: a usage error naming the file, before any tuning. Reading it is
    replaced by the PermissionError such a file gives; the GPU's availability is stubbed."""
    from triton_lstm import pretune
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tune, "_read", unreadable)
    monkeypatch.setattr(pretune, "tune_one", lambda *args: pytest.fail("tuned"))
    with pytest.raises(SystemExit) as exit_info:
        pretune.main(["--hidden", "64", "--batch", "8"])
    assert exit_info.value.code == 2
    assert re.search(r"cannot read the tuning cache \(.*Permission denied.*gpu-triton.json'\); set "
                     r"TRITON_LSTM_CACHE_DIR", capsys.readouterr().err)


def test_pretune_refuses_to_run_with_a_pin(monkeypatch, capsys):
    from triton_lstm import pretune
    monkeypatch.setenv("TRITON_LSTM_CONFIG", "block_b=32")
    with pytest.raises(SystemExit) as exit_info:
        pretune.main(["--hidden", "64", "--batch", "8"])
    assert exit_info.value.code == 2
    assert "TRITON_LSTM_CONFIG is set: pinned configurations are not tuned" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--hidden", "0", "--batch", "8"], "--hidden: expected an integer >= 1, got '0'"),
    (["--hidden", "abc", "--batch", "8"], "--hidden: expected an integer >= 1, got 'abc'"),
    (["--hidden", "64", "--batch", "8", "--cell-clip", "x"], "--cell-clip: expected a clip bound >= 0, got 'x'"),
    (["--hidden", "64"], "the following arguments are required: --batch"),
    (["--hidden", "64", "--batch", "8", "--cell-clip", "-1"], "--cell-clip: .*expected a clip bound >= 0"),
    (["--hidden", "64", "--batch", "8", "--proj-clip", "1"], "--proj-clip needs a projection"),
    (["--hidden", "64", "--batch", "8", "--activation", "swish"], "--activation: invalid choice: 'swish'"),
    (["--hidden", "64", "--batch", "8", "--dtype", "float64"], "--dtype: invalid choice: 'float64'")])
def test_pretune_cli_rejects_bad_arguments(argv, message, capsys):
    from triton_lstm import pretune
    with pytest.raises(SystemExit) as exit_info:
        pretune.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m triton_lstm.pretune" in err
    assert re.search(message, err), err


def test_a_choice_is_kept_per_device(cache, monkeypatch):
    """Two GPUs of different kinds in one process (or the AOT check's two targets) choose apart."""
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "0")
    gpu = FakeGpu(monkeypatch)
    a100 = DeviceLimits(sms=108, regs_per_sm=65536, shared_per_block=163 * 1024, arch=80)
    first = tune.pick("seq_fwd", "k", lambda: SPACE, gpu.run, gpu.fits, compiled=True, capturing=False, device=H100)
    other = tune.pick("seq_fwd", "k", lambda: SPACE[2:], gpu.run, gpu.fits, compiled=True, capturing=False,
                      device=a100)
    assert (first, other) == (SPACE[0], SPACE[2])


@pytest.mark.parametrize("entry, problem", [
    ({"config": {"block_b": 64}}, r"it does not fit this GPU"),                   # FakeGpu: block_b 64 spills
    ({"config": {"block_b": 16.0}}, r"values the kernels do not compile: \['block_b'\]"),
    ({"config": {"block_b": 32}}, r"seq_fwd cannot run .*: 99 programs > 98 SMs"),
], ids=["does-not-fit", "float", "refused"])
def test_a_cached_entry_that_cannot_run_here_is_tuned_again(cache, monkeypatch, entry, problem):
    """The file names the GPU model and Triton version, but not the SM count, MPS limits or the release
    of triton_lstm that wrote it: a cached choice is checked as a candidate is before it is used."""
    cache.write_text(json.dumps({"seq_fwd|k": entry}))
    gpu = FakeGpu(monkeypatch)

    def finish(cfg):
        if cfg.block_b == 32:
            raise ValueError(f"seq_fwd cannot run {cfg} for B=64: 99 programs > 98 SMs")
        return cfg

    with pytest.warns(UserWarning, match=rf"^ignoring the tuning cache's entry 'seq_fwd\|k' in .*\((ValueError: )?{problem}"):
        best = tune.pick("seq_fwd", "k", lambda: SPACE, gpu.run, gpu.fits, compiled=True, capturing=False,
                         finish=finish)
    assert best == SPACE[0] and gpu.ran
    assert json.loads(cache.read_text())["seq_fwd|k"]["config"]["block_b"] == 16


def test_a_candidate_that_fails_to_launch_is_skipped(cache, monkeypatch):
    """A launch the driver refuses while timing (a cooperative grid over an MPS limit) drops that
    candidate, with a warning; the others are still timed. Only the timed run is replaced."""
    gpu = FakeGpu(monkeypatch)

    run = gpu.failing(lambda cfg, warmup: not warmup and cfg.block_k == 64, "too many blocks in cooperative launch")

    with pytest.warns(UserWarning, match=r"^seq_fwd: 2 of 3 launch configurations failed to run for k and were "
                                         r"skipped; the first, .*too many blocks in cooperative launch"):
        best = tune.pick("seq_fwd", "k", lambda: SPACE, run, gpu.fits, compiled=True, capturing=False)
    assert best == SPACE[3]
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(tune, "_memory", {})
    cache.unlink()
    with pytest.warns(UserWarning, match="failed to run"), \
            pytest.raises(RuntimeError, match="^seq_fwd: no launch configuration ran on this GPU for k$") as info:
        tune.pick("seq_fwd", "k", lambda: SPACE[:3], run, gpu.fits, compiled=True, capturing=False)
    assert "cooperative" in str(info.value.__cause__)


_WRITER = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("error")
from triton_lstm import tune
path, who = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    tune._write(path, f"seq_fwd|{who}-{i}", {"config": {"block_b": 16}})
"""


def test_processes_writing_the_cache_at_once_keep_every_entry(cache):
    import subprocess
    import sys
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(cache), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in writers] == [0] * 4
    assert len(json.loads(cache.read_text())) == 4 * 40


def test_the_cache_file_takes_the_umask_and_a_failed_write_leaves_no_temporary_file(cache, monkeypatch):
    import os
    old = os.umask(0o022)
    try:
        tune._write(cache, "seq_fwd|a", {"config": {}})
    finally:
        os.umask(old)
    assert cache.stat().st_mode & 0o777 == 0o644  # as any file this user makes, readable by the group

    def full_disk(*args, **kwargs):  # only the JSON dump is replaced
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.warns(UserWarning, match=r"^could not write the tuning cache .*No space left on device\); set"):
        tune._write(cache, "seq_fwd|b", {"config": {}})
    assert sorted(p.name for p in cache.parent.iterdir()) == ["gpu-triton.json", "gpu-triton.json.lock"]
    assert list(json.loads(cache.read_text())) == ["seq_fwd|a"]


def test_a_cache_this_user_cannot_read_is_not_overwritten(cache, monkeypatch):
    """Another user's file in a shared TRITON_LSTM_CACHE_DIR: used for nothing and left as it is, with a
    warning. Only reading the file is replaced (by a PermissionError, as for a file mode 0600 of
    another user; a test run as root could read it)."""
    cache.write_text(json.dumps({"seq_fwd|theirs": {"config": {"block_b": 16}}}))
    before = cache.read_text()

    monkeypatch.setattr(tune, "_read", unreadable)
    gpu = FakeGpu(monkeypatch)
    with pytest.warns(UserWarning) as warned:
        assert gpu.pick() == SPACE[0]
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2 and messages[0].startswith("cannot read the tuning cache"), messages
    assert messages[1].startswith("could not write the tuning cache"), messages
    assert cache.read_text() == before


def test_gpu_models_with_the_same_limits_choose_apart(cache, monkeypatch, tmp_path):
    """An H100 and an H200 have the same SMs, registers and shared memory; their choices and cache
    files are their own."""
    gpu = FakeGpu(monkeypatch)
    h200 = tmp_path / "h200-triton.json"
    first = tune.pick("seq_fwd", "k", lambda: SPACE, gpu.run, gpu.fits, compiled=True, capturing=False, device=H100)
    monkeypatch.setattr(tune, "cache_file", lambda: h200)
    other = tune.pick("seq_fwd", "k", lambda: SPACE[2:], gpu.run, gpu.fits, compiled=True, capturing=False,
                      device=H100)
    assert (first, other) == (SPACE[0], SPACE[2])
    assert list(json.loads(h200.read_text())) == ["seq_fwd|k"]


def test_a_cached_entry_is_checked_as_it_will_launch(cache, monkeypatch):
    """finish completes a choice (seq_bwd without a projection takes block_p = block_n): the cached
    entry is compiled and checked in that form, the one launched."""
    cache.write_text(json.dumps({"seq_fwd|k": {"config": {"block_b": 64}}}))   # 64 "spills" in FakeGpu
    gpu = FakeGpu(monkeypatch)
    finished = dataclasses.replace(SPACE[0], block_b=32)
    best = tune.pick("seq_fwd", "k", lambda: SPACE, gpu.run, gpu.fits, compiled=True, capturing=False,
                     finish=lambda cfg: dataclasses.replace(cfg, block_b=32))
    assert best == finished and gpu.compiled == [finished] and gpu.ran == []


def test_a_cached_entry_that_fails_to_compile_is_tuned_again(cache, monkeypatch):
    cache.write_text(json.dumps({"seq_fwd|k": {"config": {"block_k": 256}}}))   # no candidate has it
    gpu = FakeGpu(monkeypatch)

    run = gpu.failing(lambda cfg, warmup: warmup and cfg.block_k == 256, "PassManager::run failed")

    with pytest.warns(UserWarning, match=r"^ignoring the tuning cache's entry .*\(RuntimeError: PassManager::run "
                                         r"failed\); tuning again"):
        best = tune.pick("seq_fwd", "k", lambda: SPACE, run, gpu.fits, compiled=True, capturing=False)
    assert best == SPACE[0]
