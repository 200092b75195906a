"""The tuner's choice, pruning, persistence and environment switches (GPU timing replaced by stubs)."""
import json

import pytest
import torch
import triton

from triton_lstm import tune
from triton_lstm.launch import StepConfig, step_candidates

CUDA = torch.device("cuda")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "gpu-triton.json"
    monkeypatch.setattr(tune, "cache_file", lambda device: path)
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.delenv("TRITON_LSTM_CONFIG", raising=False)
    monkeypatch.delenv("TRITON_LSTM_AUTOTUNE", raising=False)
    return path


def pick(key, candidates, launch, device):
    return tune.pick("step_fwd", key, candidates[0], lambda: candidates, launch, device)


def fake_gpu(monkeypatch, runs):
    """Candidates with block_b 64 'spill'; time = block_n (smaller is faster)."""
    monkeypatch.setattr(tune, "fits", lambda compiled, cfg, device: cfg.block_b != 64)

    def bench(fn, **kwargs):
        fn()
        return runs[-1].block_n + runs[-1].block_k / 1e3

    monkeypatch.setattr(triton.testing, "do_bench", bench)

    def launch(cfg, warmup):
        if not warmup:
            runs.append(cfg)
        return None
    return launch


def test_pick_times_fitting_candidates_and_persists(cache, monkeypatch):
    runs = []
    launch = fake_gpu(monkeypatch, runs)
    candidates = step_candidates(128, 256, torch.float16)
    best = pick("k1", candidates, launch, CUDA)
    assert best.block_n == 16 and best.block_k == 32
    assert runs and all(c.block_b != 64 for c in runs), "a pruned configuration was run"
    stored = json.loads(cache.read_text())
    assert stored["step_fwd|k1"]["config"] == {f: getattr(best, f) for f in stored["step_fwd|k1"]["config"]}
    # A new process: nothing in memory, the file answers without running anything.
    monkeypatch.setattr(tune, "_memory", {})
    runs.clear()
    assert pick("k1", candidates, launch, CUDA) == best
    assert runs == []


def test_cached_choice_reads_the_file_once_and_builds_no_candidates(cache, monkeypatch):
    runs = []
    launch = fake_gpu(monkeypatch, runs)
    candidates = step_candidates(64, 64, torch.float32)
    best = pick("k3", candidates, launch, CUDA)
    reads = []
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_read", lambda path: reads.append(path) or json.loads(path.read_text()))

    def no_candidates():
        raise AssertionError("candidates built for a cached shape")

    for _ in range(3):
        assert tune.pick("step_fwd", "k3", candidates[0], no_candidates, launch, CUDA) == best
    assert reads == [cache]


def test_corrupt_cache_is_ignored_and_rewritten(cache, monkeypatch):
    cache.write_text('{"step_fwd|k1": {"config": ')
    runs = []
    launch = fake_gpu(monkeypatch, runs)
    with pytest.warns(UserWarning, match="unreadable tuning cache"):
        best = pick("k1", step_candidates(32, 64, torch.float32), launch, CUDA)
    assert json.loads(cache.read_text())["step_fwd|k1"]["config"]["block_n"] == best.block_n


def test_nothing_fits_is_an_error(cache, monkeypatch):
    monkeypatch.setattr(tune, "fits", lambda compiled, cfg, device: False)
    with pytest.raises(RuntimeError, match="no launch configuration fits"):
        pick("k2", step_candidates(32, 64, torch.float32), lambda cfg, warmup: None, CUDA)


def test_switches_and_cpu_use_the_default(cache, monkeypatch):
    candidates = step_candidates(32, 64, torch.float32)

    def never(cfg, warmup):
        raise AssertionError("no tuning expected")

    assert pick("k", candidates, never, torch.device("cpu")) == candidates[0]
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "0")
    assert pick("k", candidates, never, CUDA) == candidates[0]
    monkeypatch.setenv("TRITON_LSTM_CONFIG", "block_b=64, num_warps=8")
    pinned = pick("k", candidates, never, CUDA)
    assert (pinned.block_b, pinned.num_warps, pinned.block_n) == (64, 8, candidates[0].block_n)


@pytest.mark.parametrize("spec", ["block_q=3", "block_b=x", "block_b"])
def test_bad_pin_names_the_variable(cache, monkeypatch, spec):
    monkeypatch.setenv("TRITON_LSTM_CONFIG", spec)
    with pytest.raises(ValueError, match="TRITON_LSTM_CONFIG"):
        tune.pinned(StepConfig(16, 32, 32, 4, 1, 255))


def test_candidates_start_with_the_default_and_respect_tl_dot_minimum():
    cands = step_candidates(3, 10, torch.float16)
    assert len(set(cands)) == len(cands)
    assert all(min(c.block_b, c.block_n, c.block_k) >= 16 for c in cands)
    assert all(c.block_b == 16 and c.block_n == 16 for c in cands), "blocks wider than the problem are not searched"


def test_tune_cli_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("the CPU message is only printed without a GPU")
    assert tune.main(["--hidden", "64", "--batch", "8"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
