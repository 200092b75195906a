"""Every CUDA launch path, driven with real sm_90 builds and a stand-in driver (see conftest.py)."""
import dataclasses
import inspect
import os
import re
from types import SimpleNamespace

import pytest
import torch
import triton

from conftest import rand
from triton_lstm import LSTM, LSTMCell, aot, dynamic_rnn, launch, lstm_cell, lstm_sequence, sequence, tune
from triton_lstm.kernels.lstm_sequence import BARRIER_FAILED, lstm_seq_bwd_kernel, lstm_seq_fwd_kernel


def sequence_args(T=4, B=3, D=5, N=24, P=None, dtype=torch.float16, peepholes=True):
    out = P or N
    return [rand(T, B, D, dtype=dtype), rand(B, out, dtype=dtype), torch.zeros(B, N), rand(D, 4 * N, dtype=dtype),
            rand(out, 4 * N, dtype=dtype), rand(4 * N, dtype=dtype)] + \
        [rand(N, dtype=dtype) if peepholes else None for _ in range(3)] + [rand(N, out, dtype=dtype) if P else None]


def check_launches(gpu, expected):
    assert gpu.names() == expected
    for r in gpu.launches:
        persistent = r["name"].startswith("lstm_seq")
        assert r["cooperative"] == persistent, r["name"]
        assert 1 <= r["grid"] <= (gpu.target.limits.sms if persistent else 10 ** 6)
        assert r["shared"] <= gpu.target.limits.shared_per_block


def test_fits_reads_the_resources_of_the_loaded_kernel(gpu):
    """The tuner's resource check on a freshly compiled kernel: its registers and spills exist only
    once the binary is loaded, and a build over the shared-memory limit is pruned, not raised."""
    v = aot.Variant("tanh", "sigmoid", True, True, "none", "float32", (64, 64, 512, 512), False, 90)
    kernel, pb, launches, _ = next(c for c in aot.record_launches(v) if c[1].kernel == "seq_fwd")
    small = launch.Config(32, 8, 16, 64, True, 8)
    [(args, consts)] = launches(small)
    compiled = launch.run_config(kernel, small, pb, args, consts, warmup=True)
    assert tune.fits(compiled, small, gpu.target.limits)
    assert 0 < compiled.n_regs <= 255 and compiled.n_spills == 0
    # A [512, 4 x 64] fp32 slice is 512 KB: far over 227 KB of shared memory.
    huge = launch.Config(16, 64, 16, 128, True, 4)
    compiled = launch.run_config(kernel, huge, pb, args, consts, warmup=True)
    assert compiled.metadata.shared > gpu.target.limits.shared_per_block
    assert not tune.fits(compiled, huge, gpu.target.limits)


def test_stepped_fallback_checks_every_kernel_it_launches(gpu, monkeypatch):
    """A stepped configuration launches one kernel per phase: the tuner's resource check must have
    compiled and loaded each of them, not only the first (the backward's gate-gradient phase with a
    projection is its heaviest)."""
    candidates = launch.candidates
    monkeypatch.setattr(launch, "candidates", lambda pb, limits: [c for c in candidates(pb, limits) if c.stepped])
    checked, launched = set(), set()
    run_config = launch.run_config

    def spy(kernel, cfg, pb, args, consts, warmup=False):
        (checked if warmup else launched).add((pb.kernel, repr(sorted(consts.items()))))
        return run_config(kernel, cfg, pb, args, consts, warmup)

    monkeypatch.setattr(launch, "run_config", spy)
    out, h, c = lstm_sequence(*sequence_args(P=8), proj_clip=1.0)
    (out.float().sum() + c.sum()).backward()
    assert {k for k, _ in launched} == {"seq_fwd", "seq_bwd"}
    assert len(launched) == 5, "forward: gates, projection; backward: dh, gates, dh0"
    assert launched <= checked


WEIGHT_POINTERS = {"w_ptr", "b_ptr", "wi_ptr", "wf_ptr", "wo_ptr", "proj_ptr"}


def test_step_kernels_offset_rows_in_64_bits(gpu):
    """x may be a time slice of a batch-first tensor (row stride T * D): every pointer into a
    batch-row tensor is offset in 64 bits, so that row * stride may pass 2^31 (weights are small)."""
    v = aot.Variant("tanh", "sigmoid", True, True, "proj+clip", "float16", (16, 80, 256, 128), False, 90)
    for kernel, pb, launches, _ in aot.record_launches(v):
        if not pb.kernel.startswith("step"):
            continue
        [(_, compiled)] = launch.compile_launches(kernel, launch.candidates(pb, gpu.target.limits)[0], pb, launches)
        splats, rows = {}, []   # SSA names repeat in the text: the latest definition counts
        for line in compiled.asm["ttir"].splitlines():
            if splat := re.search(r"(%[\w.]+) = tt\.splat %(\w+_ptr) : !tt\.ptr", line):
                splats[splat[1]] = splat[2]
            elif add := re.search(r"tt\.addptr (%[\w.]+), .*, tensor<[\dx]+x(i\d+)>", line):
                if splats.get(add[1], "w_ptr") not in WEIGHT_POINTERS:
                    rows.append((splats[add[1]], add[2]))
        assert rows and (pb.kernel != "step_fwd" or {p for p, _ in rows} >= {"x_ptr", "h_ptr"}), pb.kernel
        assert all(bits == "i64" for _, bits in rows), (pb.kernel, sorted(set(rows)))


@pytest.mark.parametrize("proj", [None, 8])
def test_cell_forward_and_backward(gpu, proj):
    B, D, N = 64, 20, 96
    P = proj or N
    x, h, c = rand(B, D), rand(B, P), torch.zeros(B, N)
    kernel, bias = rand(D + P, 4 * N), rand(4 * N)
    h1, c1 = lstm_cell(x, c, h, kernel, bias, projection=rand(N, P) if proj else None, proj_clip=1.0 if proj else None)
    (h1.float().sum() + c1.sum()).backward()
    expected = ["lstm_step_fwd_kernel"] + (["lstm_step_proj_kernel"] if proj else []) + ["lstm_step_bwd_kernel"]
    check_launches(gpu, expected)
    fwd = gpu.launches[0]
    assert fwd["grid"] >= 8, "the step forward splits N across programs at B=64"


@pytest.mark.parametrize("proj,lengths", [(None, False), (8, True)])
def test_sequence_forward_and_backward(gpu, proj, lengths):
    args = sequence_args(P=proj)
    lens = torch.tensor([4, 0, 2]) if lengths else None
    out, h, c = lstm_sequence(*args, lens, cell_clip=1.0, proj_clip=0.5 if proj else None)
    (out.float().sum() + c.sum()).backward()
    check_launches(gpu, ["lstm_seq_fwd_kernel", "lstm_seq_bwd_kernel"])
    fwd, bwd = gpu.launches
    assert fwd["args"]["HAS_LENGTHS"] == lengths and fwd["args"]["USE_BARRIER"] and fwd["args"]["PHASES"] == 3
    assert bwd["args"]["FINAL"] and bwd["args"]["n_steps"] == 4 and bwd["args"]["t_first"] == 3


def test_dynamic_rnn_and_lstm_modules(gpu):
    cell = LSTMCell(24, use_peepholes=True, num_proj=8, cell_clip=1.0, input_size=5, dtype=torch.float16)
    outputs, _ = dynamic_rnn(cell, rand(3, 4, 5), torch.tensor([4, 1, 0]))
    outputs.float().sum().backward()
    check_launches(gpu, ["lstm_seq_fwd_kernel", "lstm_seq_bwd_kernel"])
    gpu.launches.clear()
    lstm = LSTM(5, 24, num_layers=2, bidirectional=True, proj_size=8, use_peepholes=True, dtype=torch.float16)
    out, (h, c) = lstm(rand(4, 3, 5))
    out.float().sum().backward()
    check_launches(gpu, ["lstm_seq_fwd_kernel"] * 4 + ["lstm_seq_bwd_kernel"] * 4)


def test_new_lengths_do_not_recompile(gpu):
    for T in (3, 7, 11):
        args = sequence_args(T=T)
        out, h, c = lstm_sequence(*args)
        out.float().sum().backward()
    for kernel in (lstm_seq_fwd_kernel, lstm_seq_bwd_kernel):
        (kernel_cache, *_), = kernel.device_caches.values()
        assert len(kernel_cache) == 1, f"{kernel.fn.__name__}: {len(kernel_cache)} builds for three lengths"


def test_the_tuner_times_candidates_once_and_capture_uses_its_choice(gpu, monkeypatch):
    """Tuning on: every candidate compiled and checked, the fitting ones timed (do_bench replaced: a
    time per configuration, since nothing runs), the winner cached; then a capture of the same shape
    launches the cached winner and times nothing."""
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "1")
    timed = []

    def bench(fn, **kwargs):
        fn()
        ran = gpu.launches[-1]
        timed.append(ran["args"]["BLOCK_B"])
        return 1.0 + ran["args"]["BLOCK_B"] / 1000 - ran["grid"] / 1e6

    monkeypatch.setattr(triton.testing, "do_bench", bench)
    args = sequence_args(T=5, B=64, N=256, dtype=torch.float16)
    lstm_sequence(*args)
    fwd_key = next(k for k in tune._memory[str(tune.cache_file())] if k.startswith("seq_fwd|"))
    entry = tune._memory[str(tune.cache_file())][fwd_key]
    assert entry["timed"] == len(timed) >= 2 and entry["tune_s"] > 0
    best = launch.Config(**entry["config"])
    # A new process captures a graph of the same shape: the cached choice, nothing timed.
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_chosen", {})
    monkeypatch.setattr(launch, "capturing", lambda device: True)
    timed.clear()
    gpu.launches.clear()
    pending = list(sequence._pending)
    lstm_sequence(*args)
    assert timed == [] and gpu.launches[-1]["args"]["BLOCK_B"] == best.block_b
    assert gpu.launches[-1]["grid"] == launch.programs(best, launch.Problem("seq_fwd", 64, 0, 256, 256, False,
                                                                            torch.float16))
    assert sequence._pending == pending, "nothing is read back during capture"


def test_the_launch_after_tuning_starts_from_the_callers_buffers(gpu, monkeypatch):
    """The tuner times candidates on the call's own buffers: each whole-sequence launch, the call's
    own after the timed ones included, starts with a zero barrier counter and the backward's dh and
    dc as the call gave them. The stand-in writes into them at every launch, as a kernel run does."""
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "1")
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kwargs: fn() or 1.0)
    starts = {"lstm_seq_fwd_kernel": [], "lstm_seq_bwd_kernel": []}

    def run_kernel(name, args):
        if not name.startswith("lstm_seq"):
            return
        if args["USE_BARRIER"]:  # a whole run in one launch (a stepped run's later launches read its writes)
            state = [args["sync_ptr"].clone()] + [args[k].clone() for k in ("dh_ptr", "dc_ptr") if k in args]
            starts[name].append(state)
        args["sync_ptr"][0] += 5
        for k in ("dh_ptr", "dc_ptr"):
            if k in args:
                args[k].fill_(7.0)

    gpu.on_launch = run_kernel
    out, h, c = lstm_sequence(*sequence_args(T=5, B=64, N=256))
    (out.float().sum() + 2 * h.float().sum() + 3 * c.sum()).backward()
    for name, runs in starts.items():
        assert len(runs) >= 3, f"{name}: {len(runs)} whole-sequence launches (timed ones and the call's)"
        assert [r for r in gpu.launches if r["name"] == name][-1]["args"]["USE_BARRIER"], "the call's own launch"
        for state in runs:
            assert int(state[0][0]) == 0, f"{name} started with the barrier counter at {int(state[0][0])}"
            for got, want in zip(state[1:], runs[0][1:]):
                assert torch.equal(got, want), f"{name} started from another run's dh/dc"


def test_capture_after_eager_calls_queries_no_event(gpu, monkeypatch):
    """An eager call leaves its flags to be checked at a later call; a call under CUDA-graph capture
    must not query that call's event (not allowed during capture), the next eager call does."""
    args = sequence_args()
    lstm_sequence(*args)
    assert len(sequence._pending) == 1
    queried = []
    monkeypatch.setattr(aot._CompleteEvent, "query", lambda self: queried.append(launch.capturing(None)) or True)
    monkeypatch.setattr(launch, "capturing", lambda device: True)
    lstm_sequence(*args)
    assert queried == [] and len(sequence._pending) == 1
    monkeypatch.setattr(launch, "capturing", lambda device: False)
    lstm_sequence(*args)
    assert queried == [False] and len(sequence._pending) == 1, "the eager call checks the earlier one, then waits"


def test_kernels_first_launched_inside_a_capture_load_in_relaxed_mode(gpu, monkeypatch):
    """Kernels first launched inside a CUDA-graph capture (a shape first seen there): the tuner's check
    and the first launch load their modules there, which the default global capture mode refuses;
    each load runs with the thread in relaxed mode, restored after the call. Outside a capture the
    mode is left alone. (The shapes of other tests: their builds are in Triton's cache.)"""
    monkeypatch.setattr(launch, "capturing", lambda device: True)
    out = lstm_sequence(*sequence_args())[0]
    B, D, N = 64, 20, 96
    lstm_cell(rand(B, D), torch.zeros(B, N), rand(B, N), rand(D + N, 4 * N), rand(4 * N))
    assert [launch_["name"] for launch_ in gpu.launches] == ["lstm_seq_fwd_kernel", "lstm_step_fwd_kernel"]
    assert len(gpu.target.load_modes) >= 2 and set(gpu.target.load_modes) == {launch.CAPTURE_RELAXED}
    assert gpu.target.capture_mode == launch.CAPTURE_GLOBAL
    monkeypatch.setattr(launch, "capturing", lambda device: False)
    gpu.target.load_modes.clear()
    out.float().sum().backward()
    assert gpu.launches[-1]["name"] == "lstm_seq_bwd_kernel"
    assert gpu.target.load_modes and set(gpu.target.load_modes) == {launch.CAPTURE_GLOBAL}


def test_cooperative_launch_refused_is_a_clear_error(gpu):
    def refuse(name, args):
        if name.startswith("lstm_seq"):
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")

    gpu.on_launch = refuse
    with pytest.raises(RuntimeError, match=r"needs its \d+ programs resident at once, and the GPU refused"):
        lstm_sequence(*sequence_args())


def time_out_barrier(name, args):
    """What a launch whose grid was not co-resident leaves in its sync flags."""
    if name.startswith("lstm_seq"):
        args["sync_ptr"][0] += BARRIER_FAILED.value


def test_barrier_timeout_is_reported_at_the_next_call(gpu):
    gpu.on_launch = time_out_barrier
    out, h, c = lstm_sequence(*sequence_args())   # does not wait for the GPU to finish
    gpu.on_launch = None
    with pytest.raises(RuntimeError, match="grid barrier .* timed out.*results of an earlier call are wrong"):
        lstm_sequence(*sequence_args())
    lstm_sequence(*sequence_args())  # reported once


def test_barrier_timeout_with_the_synchronous_check(gpu, monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_CHECK_BARRIER", "1")
    gpu.on_launch = time_out_barrier
    with pytest.raises(RuntimeError, match="grid barrier .* timed out.*results of this call are wrong"):
        lstm_sequence(*sequence_args())


def host_reads(monkeypatch) -> list:
    """The names of the reads of tensor values on the host (each would wait for the GPU) from now
    on, the host buffers' (``launch.host_buffer``, replaced by plain tensors) excepted."""
    host_copies = []

    def host_buffer(t):
        host_copies.append(torch.empty_like(t))
        return host_copies[-1]

    monkeypatch.setattr(launch, "host_buffer", host_buffer)
    reads = []

    def no_host_read(name):
        original = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            if not any(self.data_ptr() == c.data_ptr() for c in host_copies):
                reads.append(name)
            return original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        no_host_read(name)
    return reads


def test_lengths_on_the_gpu_are_checked_without_a_host_read(gpu, monkeypatch):
    """Steady state: no tensor value is read on the host during a call (each read would wait for
    the GPU); a length outside [0, T] is flagged by the kernel and raised at the next call."""
    reads = host_reads(monkeypatch)

    def kernel_flags_bad_lengths(name, args):
        if name == "lstm_seq_fwd_kernel":
            args["sync_ptr"][1] += 1

    gpu.on_launch = kernel_flags_bad_lengths
    lstm_sequence(*sequence_args(), torch.tensor([4, 9, 1]))
    assert reads == [], f"host reads of device tensors: {reads}"
    gpu.on_launch = None
    with pytest.raises(ValueError, match=r"^lengths \(dynamic_rnn's sequence_length\): values must lie in \[0, T\]; "
                                         r"an earlier call"):
        lstm_sequence(*sequence_args(), torch.tensor([4, 3, 1]))


@pytest.mark.filterwarnings("ignore:activation .* has no kernel implementation")
@pytest.mark.parametrize("path", ["reference", "cell each step"])
def test_lengths_on_the_gpu_off_the_kernels_are_checked_without_a_host_read(gpu, monkeypatch, path):
    """The reference (an activation of the user's, computed for real on the stand-in's CPU tensors)
    and dynamic_rnn calling a cell with a hook at each step (its step kernels stubbed) check GPU
    lengths as the kernels do: no host read; a length outside [0, T] gives a NaN row (reference)
    and is raised at the next call."""
    cell = LSTMCell(24, use_peepholes=True, input_size=5, dtype=torch.float16,
                    activation=(lambda v: 0.9 * torch.tanh(v)) if path == "reference" else None)
    if path == "cell each step":
        cell.register_forward_pre_hook(lambda module, args: None)
    x = rand(3, 4, 5, grad=False)
    reads = host_reads(monkeypatch)
    out, state = dynamic_rnn(cell, x, torch.tensor([4, 9, 1]))
    assert reads == [], f"host reads of device tensors: {reads}"
    if path == "reference":
        assert torch.isnan(out[1]).all() and torch.isnan(state.c[1]).all()
        assert torch.isfinite(out[[0, 2]]).all() and torch.isfinite(state.c[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"^lengths \(dynamic_rnn's sequence_length\): values must lie in \[0, T\]; "
                                         r"an earlier call"):
        dynamic_rnn(cell, x, torch.tensor([4, 3, 1]))


def test_a_pinned_grid_larger_than_the_gpu_is_an_error(gpu, monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_CONFIG", "seq_fwd.block_n=4,seq_fwd.block_b=16")
    with pytest.raises(ValueError, match=r"TRITON_LSTM_CONFIG: seq_fwd cannot run .*256 programs > 132 SMs"):
        lstm_sequence(*sequence_args(B=3, N=1024))


RESIDENT_SHAPES = [("float16", (64, 64, 512, 512), "none"), ("float16", (16, 64, 256, 128), "proj+clip"),
                   ("float32", (64, 64, 256, 256), "none"), ("bfloat16", (64, 64, 256, 64), "proj")]


@pytest.mark.parametrize("dtype,shape,projection", RESIDENT_SHAPES, ids=lambda v: str(v))
def test_time_loop_keeps_weights_on_chip(gpu, dtype, shape, projection):
    """The performance shape of the compiled time loop: with resident slices no global load or
    shared-memory staging of a weight happens per step (the streaming control has both), and the
    loop has the barriers the design states per step."""
    v = aot.Variant("tanh", "sigmoid", True, True, projection, dtype, shape, True, 90)
    for kernel, pb, launches, _ in aot.record_launches(v):
        if not pb.kernel.startswith("seq"):
            continue
        resident = next(c for c in launch.candidates(pb, gpu.target.limits) if c.resident)
        [(args, consts)] = launches(resident)
        streaming = dataclasses.replace(resident, resident=False, block_k=launch.block_k(pb, False))
        compiled = launch.run_config(kernel, resident, pb, args, consts, warmup=True)
        on_chip = aot.time_loop_shape(compiled)
        # Triton's cache is keyed by source, not path: a kernel compiled in another checkout names
        # that checkout's files in its locations, and reads the same.
        kernels_dir = os.path.dirname(inspect.getsourcefile(kernel.fn))
        moved = SimpleNamespace(asm={"ttgir": compiled.asm["ttgir"].replace(kernels_dir, "/elsewhere/kernels")})
        assert aot.time_loop_shape(moved) == on_chip
        streamed = aot.time_loop_shape(launch.run_config(kernel, streaming, pb, args, consts, warmup=True))
        barriers = 2 if pb.proj else 1
        assert on_chip["weight_loads"] == 0 and on_chip["weight_staging"] == 0, (pb.kernel, on_chip)
        assert streamed["weight_loads"] >= 1 and streamed["weight_staging"] >= 1, (pb.kernel, streamed)
        assert on_chip["barriers"] == streamed["barriers"] == barriers, (pb.kernel, on_chip)
        # IEEE fp32 runs on FMA units; half precision on tensor cores, wgmma where the left operand
        # has 64 rows: the forward's h rows, the backward's weight slice.
        rows = resident.block_b if pb.kernel == "seq_fwd" else resident.block_k
        assert on_chip["mma"] == ("fma" if dtype == "float32" else ("wgmma" if rows >= 64 else "mma.sync")), \
            (pb.kernel, resident, on_chip)


def test_threads_checking_earlier_launches_take_each_one_once(gpu, monkeypatch):
    """Two threads launching at once (nn.DataParallel runs one a GPU) check the pending launches: each
    finished one is taken and read once, and one not finished is left, whatever the interleaving.
    The events are stand-ins whose query lets the other thread run before it answers; the CPU device
    stands for the GPU (the stand-in driver's device queries)."""
    import threading
    import time

    class Event:
        def __init__(self, done):
            self.done = done

        def query(self):
            time.sleep(0.05)
            return self.done

    flags = torch.zeros(2, dtype=torch.int32)
    running = (Event(False), torch.tensor([BARRIER_FAILED.value, 0], dtype=torch.int32))  # not copied back yet
    monkeypatch.setattr(sequence, "_pending", [(Event(True), flags), running])
    errors = []

    def check():
        try:
            sequence.check_earlier_launches(torch.device("cpu"))
        except Exception as e:  # reported below: the test fails on any
            errors.append(e)

    threads = [threading.Thread(target=check) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sequence._pending == [running]
