"""GPU-only checks: the option matrix at larger sizes, long sequences, the grid barrier under load,
CUDA graphs and the tuner on hardware.

Skipped without a CUDA device. Tuning is off (the first configuration that fits runs) except in the
tuner's own test. The step kernels run all pairs of the option axes, or their full product with
TRITON_LSTM_GPU_FULL=1 (the full GPU session), or one of n slices of it with TRITON_LSTM_GPU_SHARD=k/n
(k = 1..n: every n-th case from the k-th), for a product longer than one call.
"""
import os
import re
import threading
import time

import pytest
import torch

from helpers import CELL_AXES, TOLERANCES, assert_close, cell_tensors
from triton_lstm.pairwise import case_id, pairwise, product
from test_step_kernels import run_case
from triton_lstm import lstm_cell, lstm_sequence, lstm_sequence_reference, tune
from triton_lstm.activations import resolve_activation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def check_barriers(monkeypatch):
    monkeypatch.setenv("TRITON_LSTM_CHECK_BARRIER", "1")  # raise if a grid barrier ever timed out
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "0")


def step_cases() -> list:
    if os.environ.get("TRITON_LSTM_GPU_FULL") != "1":
        return pairwise(CELL_AXES)
    shard = os.environ.get("TRITON_LSTM_GPU_SHARD", "1/1")
    k, n = (int(v) for v in shard.split("/")) if re.fullmatch(r"\d+/\d+", shard) else (0, 0)
    if not 1 <= k <= n:
        raise ValueError(f"TRITON_LSTM_GPU_SHARD: expected k/n with 1 <= k <= n, got {shard!r}")
    return product(CELL_AXES)[k - 1::n]


STEP_CASES = step_cases()


@pytest.mark.parametrize("case", STEP_CASES, ids=case_id)
def test_step_option_matrix(case):
    run_case(case, B=37, D=80, N=96, P=48, device="cuda")


def sequence_case(T, B, D, N, P, dtype, peepholes=True, cell_clip=3.0, proj_clip=None, activation="tanh",
                  lengths=None, seed=0):
    t = cell_tensors(B, D, N, P, peepholes, dtype, "cuda", seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = (torch.randn(T, B, D, generator=g)).to("cuda", dtype)
    w_x, w_h = t["kernel"][:D], t["kernel"][D:]
    args = [x, t["h"], t["c"], w_x, w_h, t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    opts = dict(cell_clip=cell_clip, proj_clip=proj_clip)
    out = lstm_sequence(*args, lengths, activation=activation, **opts)
    ref = lstm_sequence_reference(*[None if a is None else a.detach().float() for a in args],
                                  None if lengths is None else lengths, activation=resolve_activation(activation)[1],
                                  **opts)
    return out, ref


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("proj", [None, 128])
def test_long_sequence_many_programs(dtype, proj):
    """T=1000 at a width that fills the SMs with resident slices: a hang or a lost barrier fails here."""
    T, B, D, N = 1000, 64, 64, 512
    lengths = torch.randint(0, T + 1, (B,), device="cuda")
    lengths[0] = T
    (out, h, c), (r_out, r_h, r_c) = sequence_case(T, B, D, N, proj, dtype, proj_clip=1.0 if proj else None,
                                                   lengths=lengths)
    # Errors compound over 1000 steps in half precision; compare with looser bounds there.
    tol = {torch.float32: (2e-4, 2e-4), torch.float16: (3e-2, 3e-2), torch.bfloat16: (1.5e-1, 1e-1)}[dtype]
    assert_close("out", out, r_out, tol)
    assert_close("h_T", h, r_h, tol)
    assert_close("c_T", c, r_c, tol)


@pytest.mark.timeout(300)
def test_sequence_matches_step_path_and_is_repeatable():
    """The persistent kernel against the fused step kernel on the GPU; two runs give identical bits."""
    T, B, D, N, P = 64, 48, 40, 256, 96
    t = cell_tensors(B, D, N, P, True, torch.float32, "cuda", 3)
    x = torch.randn(T, B, D, device="cuda")
    opts = dict(cell_clip=2.0, proj_clip=1.5)
    args = (x, t["h"], t["c"], t["kernel"][:D], t["kernel"][D:], t["bias"], t["w_f_diag"], t["w_i_diag"],
            t["w_o_diag"], t["projection"])
    out1, h1, c1 = lstm_sequence(*args, **opts)
    out2, _, _ = lstm_sequence(*args, **opts)
    assert torch.equal(out1, out2)
    h, c = t["h"], t["c"]
    outs = []
    for step in range(T):
        h, c = lstm_cell(x[step], c, h, t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"],
                         t["projection"], **opts)
        outs.append(h)
    tol = TOLERANCES[torch.float32]["grad"]
    assert_close("out", out1, torch.stack(outs), tol)
    assert_close("c_T", c1, c, tol)


def check_gradients(T, B, D, N, P, dtype, tol, seed):
    """Every gradient of lstm_sequence (variable lengths, peepholes, both clips) against the
    reference's, taken for float32 copies going in as the inputs' dtypes."""
    lengths = torch.randint(0, T + 1, (B,), device="cuda")
    t = cell_tensors(B, D, N, P, True, dtype, "cuda", seed)
    x = torch.randn(T, B, D, device="cuda", dtype=dtype)
    leaves = [x, t["h"], t["c"], t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    for v in leaves:
        v.requires_grad_()
    opts = dict(cell_clip=2.0, proj_clip=1.0)

    def run(fn, ts):
        x_, h_, c_, k_, b_, wf, wi, wo, pr = ts
        return fn(x_, h_, c_, k_[:D], k_[D:], b_, wf, wi, wo, pr, lengths, **opts)

    out = run(lstm_sequence, leaves)
    up = [v.detach().float().requires_grad_() for v in leaves]
    ref = run(lstm_sequence_reference, [u.to(v.dtype) for u, v in zip(up, leaves)])  # as helpers.as_inputs
    g = [torch.randn_like(o, dtype=torch.float32) for o in ref]
    grads = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(out, g)), leaves)
    grads_ref = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, g)), up)
    for name, a, b in zip(["x", "h0", "c0", "kernel", "bias", "w_f", "w_i", "w_o", "proj"], grads, grads_ref):
        assert_close(f"d{name}", a, b, tol)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sequence_gradients_large(dtype):
    check_gradients(200, 64, 96, 384, 128, dtype, (1e-3, 1e-3) if dtype == torch.float32 else (5e-2, 5e-2), 5)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_graph_capture_forward_and_backward(dtype, monkeypatch):
    """Forward and backward of the persistent kernels captured in a CUDA graph and replayed on new
    data, after eager calls whose flags are left to be checked later (as by default)."""
    monkeypatch.delenv("TRITON_LSTM_CHECK_BARRIER")
    T, B, D, N, P = 32, 16, 24, 64, 32
    t = cell_tensors(B, D, N, P, True, dtype, "cuda", 11)
    weights = [t["kernel"], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], t["projection"]]
    for w in weights:
        w.requires_grad_()
    x = torch.randn(T, B, D, device="cuda", dtype=dtype)
    lengths = torch.randint(0, T + 1, (B,), device="cuda")

    def step():
        k, b, wf, wi, wo, pr = weights
        out, h, c = lstm_sequence(x, t["h"], t["c"], k[:D], k[D:], b, wf, wi, wo, pr, lengths, cell_clip=2.0,
                                  proj_clip=1.0)
        return out, torch.autograd.grad(out.float().square().sum() + c.sum(), weights)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # tunes and compiles outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_grads = step()
    x.copy_(torch.randn_like(x))
    lengths.copy_(torch.randint(0, T + 1, (B,), device="cuda"))
    graph.replay()
    out, grads = step()
    torch.testing.assert_close(g_out, out)
    for a, b in zip(g_grads, grads):
        torch.testing.assert_close(a, b)


@pytest.mark.timeout(300)
def test_a_shape_first_seen_inside_a_capture():
    """No eager call before the capture: the launch configuration is chosen (the first candidate that
    fits, untimed) and its kernels compiled and loaded while the stream is capturing; the graph must
    replay what an eager call computes."""
    T, B, D, N = 8, 8, 12, 48   # sizes no other test runs, so nothing is compiled or chosen yet
    t = cell_tensors(B, D, N, None, True, torch.float32, "cuda", 12)
    x = torch.randn(T, B, D, device="cuda")
    k = t["kernel"]
    args = (t["h"], t["c"], k[:D], k[D:], t["bias"], t["w_f_diag"], t["w_i_diag"], t["w_o_diag"], None)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, _, g_c = lstm_sequence(x, *args, cell_clip=2.0)
    x.copy_(torch.randn_like(x))
    graph.replay()
    out, _, c = lstm_sequence(x, *args, cell_clip=2.0)
    torch.testing.assert_close(g_out, out)
    torch.testing.assert_close(g_c, c)


class BusyGPU:
    """Keeps ``stream`` busy with large matrix products, queued in batches, until ``stop()`` (at most
    about ``seconds``); ``batches`` counts the batches queued so far."""

    def __init__(self, seconds: float, stream: torch.cuda.Stream):
        self.batches, self._stop, started = 0, threading.Event(), threading.Event()
        with torch.cuda.stream(stream):
            a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        deadline = time.monotonic() + seconds

        def work():
            with torch.cuda.stream(stream):
                while not self._stop.is_set() and time.monotonic() < deadline:
                    for _ in range(8):  # about 13 ms on an H100/H200, queued ahead of the wait
                        a @ a
                    self.batches += 1
                    started.set()
                    stream.synchronize()
            started.set()
        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()
        started.wait()

    def stop(self):
        """No batch is queued after this returns."""
        self._stop.set()
        self._thread.join()


@pytest.mark.timeout(120)
def test_persistent_kernel_while_another_stream_holds_the_gpu():
    """Under load the persistent kernel either runs correctly (cooperative launch waits for its
    programs to be resident together) or fails with a clear error; it never hangs."""
    T, B, D, N = 300, 64, 64, 512
    sequence_case(T, B, D, N, None, torch.float16)  # compiled before the load starts
    torch.cuda.synchronize()
    load = BusyGPU(20.0, torch.cuda.Stream())
    try:
        before = load.batches
        for seed in range(5):
            try:
                (out, h, c), (r_out, r_h, r_c) = sequence_case(T, B, D, N, None, torch.float16, seed=seed)
                torch.cuda.synchronize()
            except RuntimeError as e:
                assert "resident at once" in str(e) or "grid barrier" in str(e), e
                return
            for name, got, want in (("out", out, r_out), ("h_T", h, r_h), ("c_T", c, r_c)):
                assert_close(name, got, want, (3e-2, 3e-2))
        assert load.batches > before, "the load queued nothing while the kernels ran"
    finally:
        load.stop()
        torch.cuda.synchronize()


def test_lengths_on_the_gpu_outside_the_range_give_nan_and_an_error(monkeypatch):
    """GPU lengths are checked by the kernel, not read on the host: the bad row is NaN, the
    next call raises."""
    monkeypatch.delenv("TRITON_LSTM_CHECK_BARRIER")
    T, B, D, N = 6, 4, 8, 32
    lengths = torch.tensor([6, 9, 2, 0], device="cuda")
    (out, h, c), _ = sequence_case(T, B, D, N, None, torch.float32, lengths=lengths)
    torch.cuda.synchronize()
    assert torch.isnan(out[:, 1]).all() and torch.isnan(c[1]).all()
    assert torch.isfinite(out[:, [0, 2, 3]]).all()
    with pytest.raises(ValueError, match=r"^lengths \(dynamic_rnn's sequence_length\): values must lie in \[0, T\];"):
        sequence_case(T, B, D, N, None, torch.float32)


@pytest.mark.filterwarnings("ignore:activation .* has no kernel implementation")
@pytest.mark.parametrize("path", ["kernels", "reference", "cell each step"])
def test_lengths_on_the_gpu_outside_the_range_on_every_path(path, monkeypatch):
    """The kernels, the reference (an activation of the user's) and dynamic_rnn calling a cell with a
    hook at each step check GPU lengths alike, without reading them on the host: the bad row is NaN,
    its gradients too (the others' finite), and the next call raises."""
    from triton_lstm import LSTMCell, LSTMStateTuple, dynamic_rnn
    monkeypatch.delenv("TRITON_LSTM_CHECK_BARRIER")
    cell = LSTMCell(32, use_peepholes=True, cell_clip=1.0, input_size=8, device="cuda",
                    activation=(lambda v: 0.9 * torch.tanh(v)) if path == "reference" else None)
    if path == "cell each step":
        cell.register_forward_pre_hook(lambda module, args: None)
    x, c0, h0 = (torch.randn(*shape, device="cuda", requires_grad=True) for shape in ((4, 6, 8), (4, 32), (4, 32)))
    out, (c, h) = dynamic_rnn(cell, x, torch.tensor([6, 9, 2, 0], device="cuda"),
                              initial_state=LSTMStateTuple(c0, h0))
    grads = torch.autograd.grad(sum((0.1 * t).sum() for t in (out, c, h)), (x, c0, h0))
    torch.cuda.synchronize()
    assert torch.isnan(out[1]).all() and torch.isnan(c[1]).all() and torch.isnan(h[1]).all()
    assert torch.isfinite(out[[0, 2, 3]]).all() and torch.isfinite(c[[0, 2, 3]]).all()
    for name, g in zip(("x", "c0", "h0"), grads):
        assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2, 3]]).all(), name
    with pytest.raises(ValueError, match=r"^lengths \(dynamic_rnn's sequence_length\): values must lie in \[0, T\];"):
        dynamic_rnn(cell, x)


def test_the_tuner_on_hardware(tmp_path, monkeypatch):
    """Tuning on: candidates compiled, pruned and timed on this GPU, the winner cached; the call that
    tuned returns correct outputs and gradients."""
    monkeypatch.setenv("TRITON_LSTM_AUTOTUNE", "1")
    monkeypatch.setenv("TRITON_LSTM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune, "_memory", {})
    monkeypatch.setattr(tune, "_chosen", {})
    (out, h, c), (r_out, r_h, r_c) = sequence_case(16, 32, 32, 256, None, torch.float16)
    assert_close("out", out, r_out, (1e-2, 1e-2))
    # The first call of a shape with a projection tunes the forward and the backward on its own buffers.
    check_gradients(16, 32, 32, 256, 64, torch.float32, (1e-3, 1e-3), 13)
    entries = tune._read(tune.cache_file())
    for kernel in ("seq_fwd", "seq_bwd"):
        timed = [e["timed"] for k, e in entries.items() if k.startswith(f"{kernel}|")]
        assert timed and min(timed) >= 1, entries


def test_float64_packed_nn_lstm_cell_runs_nn_lstm_forward():
    """No kernel runs float64: on CUDA an nn.LSTM cell runs nn.LSTM.forward (cuDNN), packed input
    included (only the CPU path takes packed input to its own loop): bit for bit nn.LSTM's results."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from triton_lstm import LSTM
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 6, num_layers=2, dtype=torch.float64, device="cuda")
    ours = LSTM(5, 6, num_layers=2, dtype=torch.float64, device="cuda")
    ours.load_state_dict(ref.state_dict())
    packed = pack_padded_sequence(torch.randn(7, 3, 5, dtype=torch.float64, device="cuda"), [7, 2, 4],
                                  enforce_sorted=False)
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(packed)), torch.utils._pytree.tree_leaves(ref(packed))):
        assert torch.equal(a, b)
