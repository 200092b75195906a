"""torch.compile(fullgraph=True) over LSTMCell, dynamic_rnn and LSTM; autocast; gradients against eager.

The kernels are torch.library custom ops, so Dynamo traces through them without graph breaks on
any backend; "aot_eager" also traces the registered autograd and fake implementations.
"""
import shutil

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import triton_lstm
from helpers import assert_close
from triton_lstm.cpu import lstm_sequence_cpu

BACKENDS = ["aot_eager"] + (["inductor"] if torch.cuda.is_available() else [])
TOL = (1e-5, 1e-5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def grads_of(fn, params, *inputs):
    outs = fn(*inputs)
    flat = [o for o in torch.utils._pytree.tree_leaves(outs) if isinstance(o, torch.Tensor)]
    loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(flat))
    leaves = params + [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return flat, torch.autograd.grad(loss, leaves)


def compare(eager, compiled, params, *inputs):
    out_e, g_e = grads_of(eager, params, *inputs)
    out_c, g_c = grads_of(compiled, params, *inputs)
    for i, (a, b) in enumerate(zip(out_c, out_e)):
        assert_close(f"output {i}", a, b, TOL)
    for i, (a, b) in enumerate(zip(g_c, g_e)):
        assert_close(f"grad {i}", a, b, TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_fullgraph(backend, device):
    cell = triton_lstm.LSTMCell(10, use_peepholes=True, cell_clip=1.0, num_proj=5, proj_clip=0.5,
                                input_size=7, device=device)
    x = torch.randn(3, 7, device=device, requires_grad=True)
    state = cell.zero_state(3)
    compiled = torch.compile(cell, backend=backend, fullgraph=True)
    compare(cell, compiled, list(cell.parameters()), x, state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_rnn_fullgraph_without_recompiling_per_length(backend, device):
    cell = triton_lstm.LSTMCell(8, use_peepholes=True, cell_clip=2.0, num_proj=4, input_size=5, device=device)

    def run(x, lengths):
        return triton_lstm.dynamic_rnn(cell, x, sequence_length=lengths)

    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    frames = None
    for T in (3, 5, 2, 6):   # 2: the batch (no guard on T != B)
        x = torch.randn(2, T, 5, device=device, requires_grad=True)
        lengths = torch.tensor([T, 1], device=device)
        compare(run, compiled, list(cell.parameters()), x, lengths)
        if frames is None:
            frames = counter.frame_count
    assert counter.frame_count == frames, "a new sequence length recompiled"


@pytest.mark.filterwarnings("ignore:activation .* has no kernel implementation")
@pytest.mark.parametrize("path", ["kernels", "cpu loop", "reference", "cell each step"])
def test_lengths_outside_the_range_give_nan_rows_when_compiled(path):
    """Traced, lengths cannot be read on the host: on every path, as the kernels do, a row whose
    length lies outside [0, T] gets NaN outputs and final state, and NaN gradients; the other rows
    their own results. CPU tensors: the kernels under the interpreter (the CPU loop in a session
    with a GPU), the CPU loop for float64, the reference for an activation of the user's, the cell
    called at each step for a cell with a hook."""
    T, B, D, N, P = 4, 4, 5, 6, 3
    cell = triton_lstm.LSTMCell(N, use_peepholes=True, cell_clip=2.0, num_proj=P, input_size=D,
                                activation=(lambda v: 0.9 * torch.tanh(v)) if path == "reference" else None,
                                dtype=torch.float64 if path == "cpu loop" else torch.float32)
    if path == "cell each step":
        cell.register_forward_pre_hook(lambda module, args: None)
    dtype = cell.kernel.dtype
    x, c0, h0 = (torch.randn(*shape, dtype=dtype, requires_grad=True) for shape in ((B, T, D), (B, N), (B, P)))
    lengths = torch.tensor([T + 2, 2, -3, 0])
    good, bad = [1, 3], [0, 2]

    def run(x, lengths, c0=None, h0=None):
        state = None if c0 is None else triton_lstm.LSTMStateTuple(c0, h0)
        return triton_lstm.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=state)

    def gradients(out, c, h, rows):
        """Of the outputs' and final state's sum (scaled to keep the clips' bounds out of reach)."""
        loss = sum((0.1 * t).sum() for t in (out, c, h))
        return dict(zip(("x", "c0", "h0"), torch.autograd.grad(loss, (x, c0, h0) if rows is None else rows)))

    out, (c, h) = torch.compile(run, backend="aot_eager", fullgraph=path != "cell each step")(x, lengths, c0, h0)
    grads = gradients(out, c, h, None)
    rows = [t[good].detach().requires_grad_() for t in (x, c0, h0)]
    want, (want_c, want_h) = run(rows[0], lengths[good], *rows[1:])
    want_grads = gradients(want, want_c, want_h, rows)
    for name, got, ref in (("outputs", out, want), ("c", c, want_c), ("h", h, want_h),
                           *((f"d/d{k}", grads[k], want_grads[k]) for k in grads)):
        assert torch.isnan(got[bad]).all(), f"{name}: rows with lengths outside [0, T] must be NaN"
        assert_close(name, got[good], ref, TOL)
    # No steps: a bad row's final state is NaN too, the others' the zero initial state.
    out, (c, h) = torch.compile(run, backend="aot_eager", fullgraph=path != "cell each step")(
        x[:, :0], torch.tensor([1, 0, -1, 0]))
    assert out.shape == (B, 0, P)
    for name, got in (("c", c), ("h", h)):
        assert torch.isnan(got[[0, 2]]).all() and torch.equal(got[[1, 3]], torch.zeros_like(got[[1, 3]])), name


@pytest.mark.parametrize("backend", BACKENDS)
@torch._dynamo.config.patch(allow_rnn=True)  # Dynamo refuses every nn.LSTM, so this subclass too, without it
def test_lstm_module_fullgraph(backend, device):
    lstm = triton_lstm.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=3, batch_first=True,
                            use_peepholes=True, cell_clip=3.0, device=device)
    x = torch.randn(2, 4, 6, device=device, requires_grad=True)
    compiled = torch.compile(lstm, backend=backend, fullgraph=True)
    compare(lstm, compiled, list(lstm.parameters()), x)


@torch._dynamo.config.patch(allow_rnn=True)
def test_traced_code_does_not_ask_which_devices_autocast_knows(monkeypatch, device):
    """Dynamo in torch 2.11 (the GPU machines') cannot trace torch.amp.is_autocast_available: a
    fullgraph compile of every entry point failed on it there. Here it raises if called at all
    (the library asks it once, at import)."""
    def refuse(device_type):
        raise AssertionError(f"torch.amp.is_autocast_available({device_type!r}) called")

    monkeypatch.setattr(torch.amp, "is_autocast_available", refuse)
    cell = triton_lstm.LSTMCell(6, use_peepholes=True, input_size=5, device=device)
    lstm = triton_lstm.LSTM(5, 6, use_peepholes=True, device=device)
    x = torch.randn(4, 3, 5, device=device)
    calls = {"LSTMCell": lambda: cell(x[0], cell.zero_state(3)),
             "dynamic_rnn": lambda: triton_lstm.dynamic_rnn(cell, x, time_major=True),
             "LSTM": lambda: lstm(x)}
    for name, call in calls.items():
        torch._dynamo.reset()
        compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
        for a, b in zip(torch.utils._pytree.tree_leaves(compiled()), torch.utils._pytree.tree_leaves(call())):
            assert_close(name, a, b, TOL)


def test_autocast_computes_in_the_lower_dtype(device):
    """As nn.LSTM under autocast: outputs and the final cell state in the autocast dtype (inside,
    the cell state is float32)."""
    lstm = triton_lstm.LSTM(6, 8, proj_size=4, device=device)
    x = torch.randn(5, 2, 6, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out, (h, c) = lstm(x)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    ref, _ = lstm(x.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    out.float().sum().backward()
    assert lstm.weight_hh_l0.grad.dtype == torch.float32


@pytest.mark.skipif(shutil.which("c++") is None, reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("peepholes", [False, True], ids=["eager-torch-lstm", "peepholes"])
def test_inductor_over_the_cpu_path(peepholes):
    """torch.compile's default backend over the CPU path with a projection, the initial state a view
    of a layer's as LSTM passes it: a cell torch's LSTM computes eagerly (traced, the loop runs:
    Inductor differentiated a projected aten.lstm wrongly) and one with peepholes."""
    g = torch.Generator().manual_seed(0)
    T, B, D, N, P = 5, 3, 4, 6, 3
    x = torch.randn(T, B, D, generator=g, requires_grad=True)
    weights = [(torch.randn(*shape, generator=g) * 0.3).requires_grad_()
               for shape in ((D, 4 * N), (P, 4 * N), (4 * N,), (N, P))]
    w_x, w_h, bias, projection = weights
    peep = [(torch.randn(N, generator=g) * 0.3).requires_grad_() for _ in range(3)] if peepholes else [None] * 3

    def run(x):
        h0, c0 = x.new_zeros(1, B, P)[0], x.new_zeros(1, B, N)[0]
        return lstm_sequence_cpu(x, h0, c0, w_x, w_h, bias, *peep, projection, forget_bias=1.0)

    compare(run, torch.compile(run), weights + [p for p in peep if p is not None], x)


def test_cpu_path_with_a_projection_keeps_the_length_symbolic():
    """torch's LSTM with a projection is decomposed step by step when traced (T a constant): a new
    sequence length must not recompile, as on every other path."""
    N, P = 6, 3
    w_x, w_h, bias, projection = torch.randn(4, 4 * N), torch.randn(P, 4 * N), torch.randn(4 * N), torch.randn(N, P)

    def run(x):
        return lstm_sequence_cpu(x, x.new_zeros(2, P), x.new_zeros(2, N), w_x, w_h, bias, projection=projection,
                                 forget_bias=1.0)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
    for T in (5, 7, 9):  # no size equal to another (duck sizing would tie them)
        x = torch.randn(T, 2, 4)
        for i, (a, b) in enumerate(zip(compiled(x), run(x))):
            assert_close(f"output {i}", a, b, TOL)
    assert counter.frame_count == 1, "a new sequence length recompiled"


@torch._dynamo.config.patch(allow_rnn=True)
def test_a_new_batch_size_does_not_recompile(device):
    """With dynamic=True the batch stays symbolic through the argument checks, the cell's zero state
    and the kernels (no size may be turned into a constant, e.g. by formatting it into a message)."""
    cell = triton_lstm.LSTMCell(6, use_peepholes=True, cell_clip=1.0, num_proj=3, input_size=4, device=device)
    lstm = triton_lstm.LSTM(4, 6, proj_size=3, use_peepholes=True, device=device)
    runs = {"cell": lambda x: cell(x[0]), "dynamic_rnn": lambda x: triton_lstm.dynamic_rnn(cell, x, time_major=True),
            "LSTM": lstm}
    for name, run in runs.items():
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(run, backend=counter, fullgraph=True, dynamic=True)
        frames = None
        for B in (5, 7, 9):
            x = torch.randn(2, B, 4, device=device)
            flat = [torch.utils._pytree.tree_leaves(out) for out in (compiled(x), run(x))]
            for i, (a, b) in enumerate(zip(*flat)):
                assert_close(f"{name} output {i}", a, b, TOL)
            frames = frames or counter.frame_count
        assert counter.frame_count == frames, f"{name}: a new batch size recompiled"


def test_export_with_a_dynamic_batch_and_length(device, tmp_path):
    """torch.export of LSTM (TF's extras) and of a cell called without a state, the batch and the
    sequence length as Dims; the saved and loaded program against eager at other sizes."""
    from torch.export import Dim

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = triton_lstm.LSTMCell(6, use_peepholes=True, num_proj=3, input_size=4, device=device)

        def forward(self, x):
            return self.cell(x)

    lstm = triton_lstm.LSTM(4, 6, proj_size=3, use_peepholes=True, cell_clip=1.0, device=device)
    cases = [(lstm, torch.randn(5, 3, 4, device=device), {"input": {0: Dim("T"), 1: Dim("B")}},
              torch.randn(7, 2, 4, device=device)),
             (Step(), torch.randn(3, 4, device=device), {"x": {0: Dim("B")}}, torch.randn(5, 4, device=device))]
    for i, (module, x, dims, other) in enumerate(cases):
        path = tmp_path / f"program{i}.pt2"
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=dims), path)
        program = torch.export.load(path).module()
        got, want = (torch.utils._pytree.tree_leaves(f(other)) for f in (program, module))
        for j, (a, b) in enumerate(zip(got, want)):
            assert_close(f"{type(module).__name__} output {j}", a, b, TOL)
