"""The CPU path (``triton_lstm.cpu``): torch's LSTM for the cells it computes and the loop for the
rest, each against the plain-PyTorch reference (outputs, final state, every gradient), TF's length
masking, NaN, inference without kept state, gradients of any order and torch.func transforms through
the loop, and which path lstm_sequence, dynamic_rnn and LSTM take on CPU tensors. The loop runs in
float32 through oneDNN's products and in float64 through addmm.
"""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev, vmap

from helpers import CELL_AXES, TOLERANCES, assert_close, fresh_python
from triton_lstm.pairwise import case_id, pairwise
from test_higher_order import assert_all_close, forward_mode, second_order, squared
from test_nan import CASES as NAN_CASES, assert_same_nonfinite, poison
from test_sequence import (case_tensors, check_case, in_torch_gate_order, seq_args, seq_tensors,
                           torch_gate_order, variable_lengths)
import triton_lstm.cpu
from triton_lstm import lstm_sequence, lstm_sequence_reference
from triton_lstm.activations import ACTIVATIONS, activation_id, resolve_activation, resolve_recurrent_activation
from triton_lstm.cpu import lstm_sequence_cpu, loop_sequence, torch_lstm_computes

FP64 = dict(fwd=(1e-10, 1e-10), grad=(1e-9, 1e-9))
FP64_GRAD = dict(zip(("atol", "rtol"), FP64["grad"]))
T, B, D, N, P = 5, 4, 7, 10, 5

# torch's CPU LSTM says once that oneDNN lacks projections and falls back; nothing to act on.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def ops_run(fn) -> set[str]:
    """Names of the operators fn runs (torch's profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def tensors_for(case, seed=0):
    width = {"none": None, "proj": P, "proj+clip": P, "square": N}[case["projection"]]
    return case_tensors(case, T, B, D, N, width, "cpu", seed)


def check_against_reference(run, case, lengths=None, seed=0):
    """run(*lstm_sequence's tensors, lengths, **options) against the reference on the same values,
    in float64 for float64 and float32 otherwise: outputs, final state, every gradient; TF's masking."""
    t, options = tensors_for(case, seed)
    check_case(run, case, t, options, lengths, FP64 if case["dtype"] == torch.float64 else TOLERANCES[case["dtype"]],
               seed)


def torch_computes(case) -> bool:
    return torch_lstm_computes(case["peepholes"], torch.empty(N, N) if case["projection"] == "square" else None, N,
                               forget_bias=case["forget_bias"], cell_clip=case["cell_clip"],
                               proj_clip=0.25 if case["projection"] == "proj+clip" else None,
                               activation=case["activation"], recurrent_activation=case["recurrent_activation"])


AXES = dict(CELL_AXES, projection=["none", "proj", "proj+clip", "square"],
            dtype=[torch.float32, torch.float64, torch.float16, torch.bfloat16], lengths=["none", "variable"])


@pytest.mark.parametrize("case", pairwise(AXES), ids=case_id)
def test_cpu_path_matches_reference(case):
    """lstm_sequence_cpu over all pairs of the option axes (either tier, as it picks)."""
    lengths = variable_lengths(T, B, "cpu") if case["lengths"] == "variable" else None
    check_against_reference(lstm_sequence_cpu, case, lengths)


LOOP_AXES = dict(AXES, dtype=[torch.float32, torch.float64])


@pytest.mark.parametrize("case", pairwise(LOOP_AXES), ids=case_id)
def test_loop_matches_reference(case):
    """The loop itself, also on the cells torch's LSTM would take."""
    lengths = variable_lengths(T, B, "cpu") if case["lengths"] == "variable" else None
    check_against_reference(loop_sequence, case, lengths)


@pytest.mark.parametrize("case", pairwise(dict(AXES, layout=["contiguous", "transposed-view"])), ids=case_id)
def test_cpu_path_takes_weights_in_torch_gate_order(case):
    """gate_order="torch": w_x, w_h and bias with nn.LSTM's gate order compute the same cell (either
    tier, and the loop's gradients taken back to that order), over all pairs of the option axes and
    both layouts of the weights."""
    lengths = variable_lengths(T, B, "cpu") if case["lengths"] == "variable" else None
    check_against_reference(in_torch_gate_order(lstm_sequence_cpu, case["layout"]), case, lengths)


@pytest.mark.parametrize("case", pairwise(dict(LOOP_AXES, layout=["contiguous", "transposed-view"])), ids=case_id)
def test_loop_takes_weights_in_torch_gate_order(case):
    """The loop itself with gate_order="torch", also on the cells torch's LSTM would take."""
    lengths = variable_lengths(T, B, "cpu") if case["lengths"] == "variable" else None
    check_against_reference(in_torch_gate_order(loop_sequence, case["layout"]), case, lengths)


@pytest.mark.parametrize("gate_order", ["tf", "torch"])
@pytest.mark.parametrize("steps,batch", [(2, 1), (11, 1), (3, 4)], ids=["tanh-j", "tanh-j-last", "doubled-j-first"])
def test_loop_j_gate_either_way(steps, batch, gate_order):
    """TF's default activations: few steps x rows run tanh on the j gate, many a sigmoid on doubled
    weights (``doubles_j``); both against the reference, with lengths, peepholes, clips and a
    projection, outputs and every gradient."""
    assert triton_lstm.cpu.doubles_j(steps * batch, D + P) == (steps * batch >= D + P)
    case = dict(EXTRAS, projection="proj+clip")
    t, options = case_tensors(case, steps, batch, D, N, P, "cpu", seed=5)
    lengths = torch.arange(batch) % (steps + 1)
    lengths[-1] = steps
    run = loop_sequence if gate_order == "tf" else in_torch_gate_order(loop_sequence)
    check_case(run, case, t, options, lengths, TOLERANCES[torch.float32], seed=5)


@pytest.mark.parametrize("api", ["LSTM", "dynamic_rnn"])
def test_tf_extras_copy_no_weight_for_a_short_call(api):
    """The loop takes the weights in the gate order they come in (LSTM: nn.LSTM's; LSTMCell: TF's)
    and as they are for a short call (streaming): no operator reads a weight of the cell's shape to
    copy it (float64: the CPU path also under the interpreter)."""
    x = torch.randn(2, 1, D, dtype=torch.float64)
    if api == "LSTM":
        module = triton_lstm.LSTM(D, N, num_layers=2, proj_size=P, use_peepholes=True, cell_clip=3.0).double()
        weights = {tuple(w.shape) for name, w in module.named_parameters() if name.startswith("weight_")}
        run = module
    else:
        cell = triton_lstm.LSTMCell(N, num_proj=P, use_peepholes=True, cell_clip=3.0, input_size=D,
                                    dtype=torch.float64)
        weights = {(D, 4 * N), (P, 4 * N), (D + P, 4 * N), (N, P)}

        def run(x):
            return triton_lstm.dynamic_rnn(cell, x, time_major=True)
    weights |= {s[::-1] for s in weights}
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 record_shapes=True) as prof:
        run(x)
    copies = {"aten::clone", "aten::copy_", "aten::contiguous", "aten::mul", "aten::mul_", "aten::index",
              "aten::index_select"}
    copied = [(e.name, e.input_shapes) for e in prof.events()
              if e.name in copies and any(tuple(s) in weights for s in e.input_shapes)]
    # A swap of gate blocks concatenates them (the profiler records no shapes of a tensor list);
    # torch.stack of the final states concatenates too.
    copied += [e.name for e in prof.events()
               if e.name == "aten::cat" and (e.cpu_parent is None or e.cpu_parent.name != "aten::stack")]
    assert "triton_lstm::cpu_seq_fwd" in {e.name for e in prof.events()} and not copied, copied


@pytest.mark.parametrize("steps,inputs,proj", [(2, D, P), (40, D, P), (2, 1, P), (2, D, 1)],
                         ids=["tanh-j", "doubled-j", "input-size-1", "proj-size-1"])
def test_lstm_with_tf_extras_gradients_are_contiguous_as_nn_lstms(steps, inputs, proj):
    """The loop's gradients of LSTM's weights (passed to it as transposed views) come back
    contiguous, as nn.LSTM's do (autograd.grad; .grad would copy them so), also where a size-1
    dimension makes a weight's view contiguous both ways, and equal the reference's (float64: the
    CPU path also under the interpreter)."""
    P = proj
    lstm = triton_lstm.LSTM(inputs, N, proj_size=P, use_peepholes=True, cell_clip=3.0, proj_clip=2.0).double()
    x = torch.randn(steps, 2, inputs, dtype=torch.float64)
    params = dict(lstm.named_parameters())
    out, (h_n, c_n) = lstm(x)
    grads = torch.autograd.grad(squared((out, h_n, c_n)), list(params.values()))
    assert [name for name, g in zip(params, grads) if not g.is_contiguous()] == []
    p = params
    # The permutation of the gate blocks is its own inverse: torch's order to TF's.
    w_x, w_h, bias = (torch_gate_order(w) for w in (p["weight_ih_l0"].t(), p["weight_hh_l0"].t(),
                                                    p["bias_ih_l0"] + p["bias_hh_l0"]))
    zeros = x.new_zeros(2, P), x.new_zeros(2, N)
    out, h_T, c_T = lstm_sequence_reference(x, *zeros, w_x, w_h, bias, p["w_f_diag_l0"], p["w_i_diag_l0"],
                                            p["w_o_diag_l0"], p["weight_hr_l0"].t(), forget_bias=0.0,
                                            cell_clip=3.0, proj_clip=2.0)
    want = torch.autograd.grad(squared((out, h_T[None], c_T[None])), list(params.values()))
    for name, got, expected in zip(params, grads, want):
        assert_close(name, got, expected, FP64["grad"])


PLAIN = dict(activation="tanh", recurrent_activation="sigmoid", peepholes=False, cell_clip=None,
             forget_bias=1.0, dtype=torch.float32)
EXTRAS = dict(PLAIN, peepholes=True, cell_clip=0.7)


@pytest.mark.parametrize("projection", ["none", "proj"])
def test_torch_lstm_tier_runs_torch_lstm(projection):
    """A plain cell over full-length sequences runs aten's lstm, and agrees with the reference."""
    case = dict(PLAIN, projection=projection)
    assert torch_computes(case)
    ran = ops_run(lambda: check_against_reference(lstm_sequence_cpu, case))
    assert "aten::lstm" in ran and "triton_lstm::cpu_seq_fwd" not in ran


@pytest.mark.parametrize("case,lengths", [
    (dict(EXTRAS, projection="proj+clip"), [5, 0, 2, 5]), (dict(PLAIN, projection="square"), None),
    (dict(PLAIN, projection="none", activation="relu"), [5, 0, 2, 5]), (dict(PLAIN, projection="proj"), [5, 0, 2, 5]),
    (dict(PLAIN, projection="none"), [0, 0, 0, 0])],
    ids=["extras", "square-projection", "relu", "plain-lengths", "plain-all-empty"])
def test_other_cells_run_the_loop(case, lengths):
    """TF's extras, a projection as wide as the cell, other activations, and lengths (torch would run
    them packed, without oneDNN) run the loop."""
    lengths = None if lengths is None else torch.tensor(lengths)
    ran = ops_run(lambda: check_against_reference(lstm_sequence_cpu, case, lengths))
    assert "triton_lstm::cpu_seq_fwd" in ran and "triton_lstm::cpu_seq_bwd" in ran and "aten::lstm" not in ran


@pytest.mark.parametrize("case,lengths,backward_places", [
    (dict(PLAIN, projection="proj"), None, (False,)),
    (dict(EXTRAS, projection="proj+clip"), [5, 0, 2, 5], (False, True))], ids=["torch-lstm", "loop"])
def test_autocast_leaves_the_cpu_path_in_float32(case, lengths, backward_places):
    """Under CPU autocast (its inputs already cast, as lstm_sequence casts them) both tiers still
    compute in float32, and a backward outside the autocast region (the usual mixed-precision
    recipe) runs: outputs and gradients equal those of the same call without autocast. The loop's
    own backward also inside it (aten's LSTM backward there is autocast's, which torch advises against)."""
    t, options = tensors_for(dict(case, dtype=torch.bfloat16))
    lengths = None if lengths is None else torch.tensor(lengths)
    leaves = [v for v in t.values() if v is not None]

    def outputs_and_grads(autocast: bool, backward_inside: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs = lstm_sequence_cpu(*seq_args(t), lengths, **options)
            if backward_inside:
                return outs, torch.autograd.grad(squared(outs), leaves)
        return outs, torch.autograd.grad(squared(outs), leaves)

    want_outs, want_grads = outputs_and_grads(False, False)
    for backward_inside in backward_places:
        outs, grads = outputs_and_grads(True, backward_inside)
        for i, (got, want) in enumerate(zip(outs + grads, want_outs + want_grads)):
            assert got.dtype == want.dtype and torch.equal(got, want), f"result {i}, backward_inside={backward_inside}"


@pytest.mark.parametrize("lengths", [None, [2, 5, 0, 3]], ids=["full", "variable"])
@pytest.mark.parametrize("projection", ["none", "proj+clip"])
def test_loop_without_grad_keeps_nothing_and_computes_the_same(projection, lengths):
    t, options = tensors_for(dict(EXTRAS, projection=projection))
    lengths = None if lengths is None else torch.tensor(lengths)
    trained = loop_sequence(*seq_args(t), lengths, **options)
    with torch.no_grad():
        inferred = loop_sequence(*seq_args(t), lengths, **options)
    for got, want in zip(inferred, trained):
        assert torch.equal(got, want.detach())


def test_loop_gradcheck():
    """Finite differences in float64 through every option, lengths included."""
    case = dict(EXTRAS, projection="proj+clip", dtype=torch.float64, activation="softsign",
                recurrent_activation="hard_sigmoid")
    t, options = tensors_for(case, seed=4)
    t["c0"] = t["c0"].detach().double().requires_grad_()
    lengths = torch.tensor([5, 2, 0, 4])
    names = [k for k, v in t.items() if v is not None]

    def fn(*leaves):
        values = dict(t, **dict(zip(names, leaves)))
        return loop_sequence(*seq_args(values), lengths, activation=case["activation"],
                             recurrent_activation=case["recurrent_activation"], **options)

    assert torch.autograd.gradcheck(fn, [t[k] for k in names], fast_mode=True)


@pytest.mark.parametrize("keep, tf_gates, weights_t", [(True, True, False), (False, True, False), (True, False, True),
                                                     (True, True, True)])
def test_loop_op_schema_fake_and_autograd(keep, tf_gates, weights_t):
    """torch.library.opcheck: schema, fake (shape) implementation, autograd registration, AOT tracing;
    with kept state, of the backward op on the forward's results too (its weight gradients also
    transposed). Lengths out of order make the ops sort the batch."""
    t, _ = tensors_for(dict(EXTRAS, projection="proj+clip"))
    lengths = torch.tensor([3, 5, 0, 2])
    acts = activation_id("tanh"), activation_id("sigmoid")
    args = (*seq_args(t), lengths, *acts, 1.0, 0.7, 0.25, keep, tf_gates)
    if not keep:
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.triton_lstm.cpu_seq_fwd.default, args)
    if keep:
        with torch.no_grad():
            hbuf, cbuf, h_T, c_T, *kept = torch.ops.triton_lstm.cpu_seq_fwd(*args)
        x, _, _, w_x, w_h, _, *weights = (v.detach() for v in seq_args(t))
        g = torch.Generator().manual_seed(1)
        grads = [torch.randn(v.shape, generator=g) for v in (hbuf, h_T, c_T)]
        for wanted in ([True] * 4, [False, True, False, True], [True, False, True, False]):
            torch.library.opcheck(torch.ops.triton_lstm.cpu_seq_bwd.default,
                                  (*grads, x, w_x, w_h, *weights, lengths, hbuf, cbuf, *kept, *acts, tf_gates,
                                   weights_t, wanted))


@pytest.mark.parametrize("wanted", [["x"], ["w_x", "w_h", "projection"], ["w_h"], ["h0", "c0", "bias"]],
                         ids=["x", "weights", "w_h", "state"])
def test_loop_computes_only_the_gradients_wanted(wanted):
    """The loop's backward computes dx and the matrix weights' gradients only where they are wanted
    (a first layer's input, frozen weights): those wanted equal a backward's that wants every one
    (checked against the reference above), with fewer FLOPs counted (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode
    t, options = tensors_for(dict(EXTRAS, projection="proj+clip"))
    names = ["x", "h0", "c0", "w_x", "w_h", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection"]
    lengths = torch.tensor([3, 5, 0, 2])

    def backward(wants):
        args = [t[k].detach().requires_grad_(k in wants) for k in names]
        outs = loop_sequence(*args, lengths, **options)
        with FlopCounterMode(display=False) as count:
            grads = torch.autograd.grad(sum(o.square().sum() for o in outs), [args[names.index(k)] for k in wanted])
        return grads, count.get_total_flops()

    got, flops = backward(wanted)
    want, all_flops = backward(names)
    for name, a, b in zip(wanted, got, want):
        assert torch.equal(a, b), name
    assert flops < all_flops


def test_loop_ops_without_their_newer_arguments_mean_what_they_did():
    """A graph compiled (Inductor's on-disk cache) or a program exported against the ops before
    they took tf_gates, weights_t and wanted calls them without those: the defaults are what the ops
    did then (TF's gate order, the weight gradients untransposed, every gradient computed)."""
    t, _ = tensors_for(dict(EXTRAS, projection="proj+clip"))
    x, h0, c0, w_x, w_h, bias, *weights = (None if v is None else v.detach() for v in seq_args(t))
    lengths = torch.tensor([3, 5, 0, 2])
    args = (x, h0, c0, w_x, w_h, bias, *weights, lengths, activation_id("tanh"), activation_id("sigmoid"), 1.0,
            0.7, 0.25, True)
    fwd = torch.ops.triton_lstm.cpu_seq_fwd
    old, new = fwd(*args), fwd(*args, True)
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    grads = [torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for v in (new[0], new[2], new[3])]
    bwd_args = (*grads, x, w_x, w_h, *weights, lengths, new[0], new[1], *new[4:], activation_id("tanh"),
                activation_id("sigmoid"))
    bwd = torch.ops.triton_lstm.cpu_seq_bwd
    old, new = bwd(*bwd_args), bwd(*bwd_args, True, False, [True] * 4)
    assert all(torch.equal(a, b) for a, b in zip(old, new))


def test_cells_torch_lstm_computes_take_the_loop_under_vmap():
    """torch's LSTM has no vmap batching rule: under torch.func transforms the loop runs instead
    (per-sample outputs and per-sample gradients equal to one call per sample)."""
    t, _ = tensors_for(dict(PLAIN, projection="proj"))
    x, h0, c0, w_x, w_h, bias, *_, projection = (None if v is None else v.detach() for v in seq_args(t))
    xs = torch.randn(3, T, B, D, generator=torch.Generator().manual_seed(3))

    def out(x, w_h):
        return lstm_sequence_cpu(x, h0, c0, w_x, w_h, bias, projection=projection, forget_bias=1.0)[0]

    want = torch.stack([out(x, w_h) for x in xs])
    assert_close("outputs", torch.func.vmap(out, in_dims=(0, None))(xs, w_h), want, TOLERANCES[torch.float32]["fwd"])
    per_sample = torch.func.vmap(torch.func.grad(lambda w, x: out(x, w).sum()), in_dims=(None, 0))(w_h, xs)
    for i, x in enumerate(xs):
        w = w_h.clone().requires_grad_()
        assert_close(f"gradient {i}", per_sample[i], torch.autograd.grad(out(x, w).sum(), w)[0],
                     TOLERANCES[torch.float32]["grad"])


def test_other_torch_func_transforms_keep_torch_lstm():
    """Only vmap needs the loop: functionalize (which takes no autograd.Function) and grad run torch's
    LSTM as eagerly."""
    t, _ = tensors_for(dict(PLAIN, projection="proj"))
    args = [None if v is None else v.detach() for v in seq_args(t)]

    def out(x):
        return lstm_sequence_cpu(x, *args[1:], forget_bias=1.0)[0]

    want = out(args[0])
    assert torch.equal(torch.func.functionalize(out)(args[0]), want)
    assert "aten::lstm" in ops_run(lambda: torch.func.grad(lambda x: out(x).sum())(args[0]))


def test_loop_op_that_kept_nothing_still_differentiates():
    """A graph traced or exported without gradients records keep=False; run with gradients later,
    its backward recomputes the sequence (the reference's gradients) instead of failing."""
    t, options = tensors_for(dict(EXTRAS, projection="proj+clip"))
    lengths = torch.tensor([3, 5, 0, 2])
    args = seq_args(t)
    hbuf, _, h_T, c_T, *_ = torch.ops.triton_lstm.cpu_seq_fwd(
        *args, lengths, activation_id("tanh"), activation_id("sigmoid"), options["forget_bias"],
        options["cell_clip"], options["proj_clip"], False, True)
    ref = lstm_sequence_reference(*args, lengths, **options)
    leaves = [a for a in args if a is not None]
    got, want = (torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(outs)), leaves)
                 for outs in ((hbuf[1:], h_T, c_T), ref))
    for name, a, b in zip(range(len(leaves)), got, want):
        assert_close(f"grad {name}", a, b, TOLERANCES[torch.float32]["grad"])


@pytest.mark.parametrize("case", NAN_CASES, ids=lambda c: f"{c['activation']}-{c['recurrent_activation']}")
def test_loop_propagates_nan_and_inf(case):
    t, options = tensors_for(dict(EXTRAS, projection="proj+clip", **case))
    x = t["x"].detach().clone()
    x[1] = poison(x[1])
    args = [x] + list(seq_args(t)[1:])
    out = loop_sequence(*args, **options, **case)
    ref = lstm_sequence_reference(*args, activation=resolve_activation(case["activation"])[1],
                                  recurrent_activation=resolve_recurrent_activation(case["recurrent_activation"])[1],
                                  **options)
    for name, got, want in zip(("out", "h_T", "c_T"), out, ref):
        assert_same_nonfinite(name, got.detach(), want.detach(), TOLERANCES[torch.float32]["fwd"])


def test_loop_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) through the loop with lengths out of order (aot_eager traces the
    ops' fake and autograd implementations; the ops sort the batch inside, out of the trace), against
    eager: outputs and gradients."""
    t, options = tensors_for(dict(EXTRAS, projection="proj", dtype=torch.float64))
    lengths = torch.tensor([5, 2, 0, 3])
    leaves = [v for v in seq_args(t) if v is not None and v.requires_grad]

    def run(fn):
        out, h_T, c_T = fn(*seq_args(t), lengths, **options)
        loss = out.sum() + (h_T * 2).sum() + (c_T * 3).sum()
        return (out, h_T, c_T), torch.autograd.grad(loss, leaves)

    torch._dynamo.reset()
    try:
        compiled = run(torch.compile(lstm_sequence_cpu, fullgraph=True, backend="aot_eager", dynamic=True))
    finally:
        torch._dynamo.reset()
    eager = run(lstm_sequence_cpu)
    for i, (got, want) in enumerate(zip([*compiled[0], *compiled[1]], [*eager[0], *eager[1]])):
        assert_close(f"result {i}", got, want, FP64["grad"])


# Gradients of any order and torch.func transforms through the loop, in float64 at a tiny size with
# peepholes, both clips and a projection, against the reference on the same values. Unsorted lengths
# make the op sort the batch inside; softsign takes the loop's form without the fused sigmoid.
HIGHER_OPTIONS = dict(forget_bias=1.0, cell_clip=0.9, proj_clip=0.7)
HIGHER_CASES = [dict(lengths=None, activation="tanh"), dict(lengths=[1, 3, 0], activation="tanh"),
                dict(lengths=[2, 0, 3], activation="softsign")]


def higher_id(case) -> str:
    return ("full" if case["lengths"] is None else "lengths") + "-" + case["activation"]


def tiny_inputs(seed=11):
    """x, h0, c0 and every weight (peepholes and a projection) as float64 leaves: T=3, B=3, D=2, N=3, P=2."""
    return [v.detach().double().requires_grad_() for v in seq_args(seq_tensors(3, 3, 2, 3, 2, True, torch.float64,
                                                                               "cpu", seed))]


def loop_and_reference(activation):
    """fn(x, h0, c0, *weights, lengths) -> (out, h_T, c_T): the loop, and the reference."""
    def loop(*args, **kwargs):
        return loop_sequence(*args, activation=activation, **HIGHER_OPTIONS, **kwargs)

    def reference(*args):
        return lstm_sequence_reference(*args, activation=resolve_activation(activation)[1], **HIGHER_OPTIONS)
    return loop, reference


def lengths_of(case):
    return None if case["lengths"] is None else torch.tensor(case["lengths"])


@pytest.mark.parametrize("case", HIGHER_CASES, ids=higher_id)
def test_loop_double_backward(case):
    """Second derivatives through the loop: gradgradcheck (finite differences of its gradient), and
    against the reference's. A differentiable backward recomputes with the reference, so this checks
    the op's wiring (arguments, options, lengths, batch order); the first backward, ``cpu_seq_bwd``,
    has the tests above and test_loop_batched_first_backward."""
    loop, reference = loop_and_reference(case["activation"])
    lengths = lengths_of(case)
    inputs = tiny_inputs()
    assert torch.autograd.gradgradcheck(lambda *args: loop(*args, lengths), inputs, fast_mode=True)
    assert_all_close(second_order(lambda *args: loop(*args, lengths), inputs),
                     second_order(lambda *args: reference(*args, lengths), inputs), "second derivative", FP64_GRAD)


def test_loop_double_backward_in_torch_gate_order():
    """The differentiable backward of weights given in torch's gate order recomputes in that order:
    second derivatives against the reference's, and gradgradcheck."""
    loop, reference = loop_and_reference("tanh")
    lengths = torch.tensor([1, 3, 0])
    inputs = tiny_inputs()
    assert torch.autograd.gradgradcheck(lambda *args: in_torch_gate_order(loop)(*args, lengths), inputs,
                                        fast_mode=True)
    assert_all_close(second_order(lambda *args: in_torch_gate_order(loop)(*args, lengths), inputs),
                     second_order(lambda *args: reference(*args, lengths), inputs), "second derivative", FP64_GRAD)


@pytest.mark.parametrize("arg", ["activation", "recurrent_activation"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_double_backward_through_every_activation(name, arg):
    """Every named activation, as the cell's and as the gates', is differentiable twice through the
    loop, whose double backward recomputes with the reference (torch's F.hardsigmoid is not:
    aten's hardsigmoid_backward has no derivative): gradgradcheck in float64."""
    options = dict(HIGHER_OPTIONS, **{arg: name})
    assert torch.autograd.gradgradcheck(lambda *args: loop_sequence(*args, None, **options), tiny_inputs(),
                                        fast_mode=True)


@pytest.mark.parametrize("case", HIGHER_CASES, ids=higher_id)
def test_loop_func_grad_and_jacrev(case):
    """torch.func.grad with respect to every input, and jacrev of the outputs and the final cell state
    (under torch.func the backward recomputes with the reference: this checks the op's wiring)."""
    lengths = lengths_of(case)
    inputs = tiny_inputs()

    def transforms(fn):
        def loss(*args):
            return squared(fn(*args, lengths))

        return (*grad(loss, argnums=tuple(range(len(inputs))))(*inputs),
                jacrev(lambda x: fn(x, *inputs[1:], lengths)[0])(inputs[0]),
                jacrev(lambda w_h: fn(*inputs[:4], w_h, *inputs[5:], lengths)[2])(inputs[4]))

    loop, reference = loop_and_reference(case["activation"])
    assert_all_close(transforms(loop), transforms(reference), "torch.func.grad, jacrev", FP64_GRAD)


@pytest.mark.parametrize("case", HIGHER_CASES, ids=higher_id)
def test_forward_mode_on_the_cpu_path(case):
    """torch.func.jvp, forward_ad's dual tensors, jacfwd, hessian and nested levels through
    lstm_sequence on CPU tensors (float64: the CPU path, which takes the reference in forward mode),
    in TF's and torch's gate order, against the reference's."""
    _, reference = loop_and_reference(case["activation"])
    lengths = lengths_of(case)
    inputs = tiny_inputs()

    def ours(*args, **options):
        return lstm_sequence(*args, lengths, activation=case["activation"], **HIGHER_OPTIONS, **options)

    want = forward_mode(lambda *args: reference(*args, lengths), inputs)
    assert_all_close(forward_mode(ours, inputs), want, "forward mode", FP64_GRAD)
    assert_all_close(forward_mode(in_torch_gate_order(ours), inputs), want, "forward mode in torch's gate order",
                     FP64_GRAD)


def test_only_dual_tensors_take_forward_modes_path():
    """forward_ad's dual level is process-wide: inside it, and in another thread meanwhile, a call
    whose tensors carry no tangent runs its ordinary path (here the loop's op), not the reference;
    one with a dual tensor (the input, or only a weight) runs the reference."""
    import threading
    import torch.autograd.forward_ad as fwAD
    inputs = [t.detach() for t in tiny_inputs()]

    def run(*args):
        return lstm_sequence(*args, None, **HIGHER_OPTIONS)

    def runs_loop(args):
        return "triton_lstm::cpu_seq_fwd" in ops_run(lambda: run(*args))

    assert runs_loop(inputs)
    with fwAD.dual_level():
        assert runs_loop(inputs)
        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(runs_loop(inputs)))
        thread.start()
        thread.join()
        assert elsewhere == [True]
        assert not runs_loop([fwAD.make_dual(inputs[0], torch.ones_like(inputs[0])), *inputs[1:]])
        assert not runs_loop([*inputs[:4], fwAD.make_dual(inputs[4], torch.ones_like(inputs[4])), *inputs[5:]])


@pytest.mark.parametrize("case", HIGHER_CASES, ids=higher_id)
def test_loop_per_sample_gradients(case):
    """vmap over grad (the loop's op runs once per row), against the reference's gradient of each row."""
    x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection = tiny_inputs()
    lengths = lengths_of(case)

    def row_loss(fn):
        def loss(w_h, projection, x, h0, c0, length):
            return squared(fn(x[:, None], h0[None], c0[None], w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag,
                              projection, None if length is None else length[None]))
        return loss

    loop, reference = loop_and_reference(case["activation"])
    in_dims = (None, None, 1, 0, 0, None if lengths is None else 0)
    per_row = vmap(grad(row_loss(loop), argnums=(0, 1)), in_dims=in_dims)(w_h, projection, x, h0, c0, lengths)
    rows = [torch.autograd.grad(row_loss(reference)(w_h, projection, x[:, b], h0[b], c0[b],
                                                    None if lengths is None else lengths[b]), (w_h, projection))
            for b in range(x.shape[1])]
    assert_all_close(per_row, [torch.stack(g) for g in zip(*rows)], "per-row d_w_h, d_projection", FP64_GRAD)


@pytest.mark.parametrize("case", HIGHER_CASES, ids=higher_id)
def test_loop_batched_first_backward(case):
    """autograd.grad with is_grads_batched runs the loop's first backward (``cpu_seq_bwd``) under vmap,
    once per cotangent: rows of the Jacobian, against the reference's."""
    lengths = lengths_of(case)
    inputs = tiny_inputs()
    cotangents = torch.randn(4, 3, 3, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    loop, reference = loop_and_reference(case["activation"])
    got = torch.autograd.grad(loop(*inputs, lengths)[0], inputs, cotangents, is_grads_batched=True)
    out = reference(*inputs, lengths)[0]
    want = [torch.stack(rows) for rows in zip(*(torch.autograd.grad(out, inputs, v, retain_graph=True)
                                               for v in cotangents))]
    assert_all_close(got, want, "batched vector-Jacobian products", FP64_GRAD)


def test_float64_lstm_sequence_runs_the_cpu_path():
    """Under the interpreter float32 runs the kernels; float64 (no kernel dtype) takes the CPU path."""
    t, options = tensors_for(dict(EXTRAS, projection="none", dtype=torch.float64))
    ran = ops_run(lambda: lstm_sequence(*seq_args(t), **options))
    assert "triton_lstm::cpu_seq_fwd" in ran


DISPATCH_SCRIPT = r"""
import json, warnings
import torch
from torch.nn.utils.rnn import pack_padded_sequence
import triton_lstm
from triton_lstm.launch import interpreting

def ops(fn, backward=True):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
        if backward:
            (out[0] if isinstance(out, tuple) else out).sum().backward()
    names = {e.name for e in prof.events()}
    return ("loop" if "triton_lstm::cpu_seq_fwd" in names else "torch.lstm" if "aten::lstm" in names
            else "reference")

def inference_ops(fn):
    with torch.no_grad():
        return ops(fn, backward=False)

torch.manual_seed(0)
T, B, D, N = 4, 3, 5, 6
x = torch.randn(T, B, D, requires_grad=True)
w_x, w_h, bias = torch.randn(D, 4 * N) * 0.3, torch.randn(N, 4 * N) * 0.3, torch.zeros(4 * N)
h0, c0 = torch.zeros(B, N), torch.zeros(B, N)
peep = [torch.randn(N) * 0.1 for _ in range(3)]
plain_cell = triton_lstm.LSTMCell(N, input_size=D)
tf_cell = triton_lstm.LSTMCell(N, use_peepholes=True, cell_clip=3.0, input_size=D)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    print(json.dumps(dict(
        interpreting=interpreting(),
        plain=ops(lambda: triton_lstm.lstm_sequence(x, h0, c0, w_x, w_h, bias)),
        plain_lengths=ops(lambda: triton_lstm.lstm_sequence(x, h0, c0, w_x, w_h, bias,
                                                            lengths=torch.tensor([4, 0, 2]))),
        extras=ops(lambda: triton_lstm.lstm_sequence(x, h0, c0, w_x, w_h, bias, *peep, cell_clip=1.0)),
        float64=ops(lambda: triton_lstm.lstm_sequence(x.double(), h0.double(), c0.double(), w_x.double(),
                                                      w_h.double(), bias.double(), *[p.double() for p in peep])),
        callable_activation=ops(lambda: triton_lstm.lstm_sequence(x, h0, c0, w_x, w_h, bias,
                                                                  activation=lambda v: v * torch.sigmoid(v))),
        dynamic_rnn_plain=ops(lambda: triton_lstm.dynamic_rnn(plain_cell, x, time_major=True)[0]),
        dynamic_rnn_extras=ops(lambda: triton_lstm.dynamic_rnn(tf_cell, x, time_major=True)[0]),
        module_extras=ops(lambda: triton_lstm.LSTM(D, N, use_peepholes=True, cell_clip=1.0)(x)[0]),
        module_plain=ops(lambda: triton_lstm.LSTM(D, N)(x)[0]),
        module_packed=ops(lambda: triton_lstm.LSTM(D, N)(pack_padded_sequence(x, [2, 4, 1],
                                                                              enforce_sorted=False))[0].data),
        module_plain_vmap=ops(lambda: torch.func.vmap(triton_lstm.LSTM(D, N), in_dims=1)(x)[0]),
        module_packed_equal=ops(lambda: triton_lstm.LSTM(D, N)(pack_padded_sequence(x, [4, 4, 4]))[0].data),
        module_packed_inference=inference_ops(lambda: triton_lstm.LSTM(D, N)(pack_padded_sequence(
            x, [2, 4, 1], enforce_sorted=False))[0].data),
    )))
"""


def test_cpu_tensors_take_the_cpu_path_without_the_interpreter():
    """In a fresh process without TRITON_INTERPRET, as users run: plain cells run torch's LSTM, the
    TF extras and lengths the loop (a PackedSequence of differing lengths too, to be differentiated:
    torch's packed LSTM has no oneDNN path; and vmap: torch's LSTM has no batching rule), custom
    activations the reference."""
    proc = fresh_python("-c", DISPATCH_SCRIPT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ran == dict(interpreting=False, plain="torch.lstm", plain_lengths="loop", extras="loop",
                       float64="loop", callable_activation="reference", dynamic_rnn_plain="torch.lstm",
                       dynamic_rnn_extras="loop", module_extras="loop", module_plain="torch.lstm",
                       module_packed="loop", module_plain_vmap="loop", module_packed_equal="torch.lstm",
                       module_packed_inference="torch.lstm")


COMPILE_SCRIPT = r"""
import json, warnings
import torch
import triton_lstm

torch._dynamo.config.allow_rnn = True
torch.manual_seed(0)
T, B, D, N = 4, 3, 5, 6
x = torch.randn(B, T, D)  # data: only the parameters require grad, as in training
cell = triton_lstm.LSTMCell(N, input_size=D)
modules = dict(plain=triton_lstm.LSTM(D, N, batch_first=True),
               wide_projection=triton_lstm.LSTM(D, N, proj_size=N + 2, batch_first=True),
               projection_forget_bias=triton_lstm.LSTM(D, N, proj_size=3, forget_bias=1.0, batch_first=True))
runs = dict(dynamic_rnn_plain=lambda x: triton_lstm.dynamic_rnn(cell, x)[0],
            **{name: (lambda m: lambda x: m(x)[0])(m) for name, m in modules.items()})

def results(fn):
    with torch.no_grad():
        inference = fn(x)
    out = fn(x)
    params = [p for m in [cell, *modules.values()] for p in m.parameters()]
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    return [inference, out] + [torch.zeros(()) if g is None else g for g in grads]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    print(json.dumps({name: max((a - b).abs().max().item() for a, b in zip(results(torch.compile(fn)), results(fn)))
                      for name, fn in runs.items()}))
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="Inductor's CPU backend needs a C++ compiler")
def test_inductor_compiles_the_cpu_path_as_users_run_it():
    """torch.compile's default backend (Inductor), in a fresh process without TRITON_INTERPRET, for
    inference and training (only the parameters requiring grad): a plain cell, whose oneDNN LSTM
    Inductor failed to compile, and projections torch's LSTM would run, whose gradients Inductor
    got wrong; against eager."""
    proc = fresh_python("-c", COMPILE_SCRIPT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(errors) == {"dynamic_rnn_plain", "plain", "wide_projection", "projection_forget_bias"}
    assert all(e < 1e-5 for e in errors.values()), errors


def test_hardsigmoid_forward_mode():
    """Forward-mode derivatives (torch.func.jvp, jacfwd) through the hardsigmoid activation: equal to
    F.hardsigmoid's, and through a cell on the reference path equal to the reverse-mode Jacobian."""
    from triton_lstm.activations import hardsigmoid
    from triton_lstm import lstm_cell

    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(64, generator=g, dtype=torch.float64) * 4, torch.randn(64, generator=g, dtype=torch.float64)
    assert torch.equal(torch.func.jvp(hardsigmoid, (x,), (v,))[1], torch.func.jvp(F.hardsigmoid, (x,), (v,))[1])
    inputs = [t.double() for t in (torch.randn(2, 3, generator=g), torch.zeros(2, 4), torch.zeros(2, 4),
                                   torch.randn(7, 16, generator=g), torch.zeros(16))]

    def h_of_x(x):
        return lstm_cell(x, *inputs[1:], activation="hardsigmoid", recurrent_activation="hardsigmoid")[0]

    torch.testing.assert_close(torch.func.jacfwd(h_of_x)(inputs[0]), torch.func.jacrev(h_of_x)(inputs[0]))


def test_float32_products_leave_the_callers_autocast_as_it_was():
    """The CPU path turns autocast off for its own products with a fresh context per call: nested (or
    concurrent) calls each put back their caller's autocast state (one shared autocast object would
    restore the state the last call saved)."""
    from triton_lstm.cpu import _float32_products

    inner = _float32_products(lambda: torch.is_autocast_enabled("cpu"))
    outer = _float32_products(lambda: (inner(), torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert outer() == (False, False)
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("case", pairwise(LOOP_AXES), ids=case_id)
def test_loop_matches_reference_across_view_chunks(case, chunk, monkeypatch):
    """The loop makes its per-step views a chunk of steps at a time: with chunks of 1 and 2 steps
    (T=5) every step of the forward and the backward crosses or ends at a chunk boundary, and the
    last state is alone in its chunk or not."""
    monkeypatch.setattr(triton_lstm.cpu, "_STEP_CHUNK", chunk)
    lengths = variable_lengths(T, B, "cpu") if case["lengths"] == "variable" else None
    check_against_reference(loop_sequence, case, lengths)


LONG_RUN = """
import resource, torch, triton_lstm
cell = triton_lstm.LSTMCell(8, use_peepholes=True, cell_clip=3.0, input_size=4)
out, _ = triton_lstm.dynamic_rnn(cell, torch.randn(1, 10, 4))
out.sum().backward()
x = torch.randn(1, 50000, 4)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    triton_lstm.dynamic_rnn(cell, x)
inference = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, _ = triton_lstm.dynamic_rnn(cell, x)
out.sum().backward()
training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((inference - peak) // 1024, (training - inference) // 1024)
"""


def test_loop_memory_does_not_grow_with_per_step_views():
    """A tiny cell over 50000 steps: its tensors take about 10 MB (the input products, h and c of
    every step; forward and backward); per-step views made for every step at once took over 200 MB
    more in each (about half a kilobyte a view, ten views a step). Peak RSS growth (ru_maxrss, MB)
    of a fresh process after a warm-up call; the bound leaves room for the allocator."""
    pytest.importorskip("resource")
    run = fresh_python("-c", LONG_RUN, timeout=300)
    assert run.returncode == 0, run.stderr
    inference, training = map(int, run.stdout.split())
    assert inference < 80 and training < 120, f"peak RSS grew {inference} MB (inference), {training} MB (training)"


USERS_WARNINGS = """
import warnings, torch, triton_lstm
warnings.simplefilter("default")
cell = triton_lstm.LSTMCell(8, num_proj=4, input_size=3)
filters = list(warnings.filters)
for _ in range(3):
    warnings.warn("the caller's own warning")
    out, _ = triton_lstm.dynamic_rnn(cell, torch.randn(2, 5, 3))
    out.sum().backward()
assert warnings.filters == filters and cell.kernel.grad is not None
"""


def test_torch_lstm_tier_passes_on_no_warning_of_torchs():
    """A projection run by torch's LSTM: torch warns that oneDNN has none (its own concern, not the
    caller's); dynamic_rnn, forward and backward, in a fresh process with warnings as errors. The
    caller's warnings are left alone: no filter changed, a warning shown once stays shown once."""
    run = fresh_python("-W", "error", "-c", "import torch, triton_lstm\n"
                       "cell = triton_lstm.LSTMCell(8, num_proj=4, input_size=3)\n"
                       "out, _ = triton_lstm.dynamic_rnn(cell, torch.randn(2, 5, 3))\n"
                       "out.sum().backward()\n"
                       "assert cell.kernel.grad is not None", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    run = fresh_python("-c", USERS_WARNINGS, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("the caller's own warning") == 1, run.stderr[-3000:]


@pytest.mark.skipif(not triton_lstm.cpu._onednn_linear(), reason="needs oneDNN's linear")
@pytest.mark.parametrize("T,B,packed", [(8, 1, False), (4, 64, False), (16, 16, False), (32, 4, True),
                                       (100, 16, True)])
def test_loop_packs_its_weights_only_for_enough_use(T, B, packed):
    """The loop packs a weight for oneDNN's linear (about 1-2 ms at H=512) only for one product of
    PACK_MIN_ROWS rows or PACK_MIN_USES products (T of them for the recurrent weight); short calls
    (streaming) use addmm. Forward and backward, H=512 (every product over the 1M-MAC floor of
    oneDNN's linear at B=1)."""
    g = torch.Generator().manual_seed(0)
    H = 512
    x = torch.randn(T, B, H, generator=g, requires_grad=True)
    w_x, w_h = (torch.randn(H, 4 * H, generator=g) * 0.05 for _ in range(2))
    w_x.requires_grad_(), w_h.requires_grad_()
    args = (x, torch.zeros(B, H), torch.zeros(B, H), w_x, w_h, torch.zeros(4 * H))

    def run():
        out, _, _ = loop_sequence(*args, torch.zeros(H), torch.zeros(H), torch.zeros(H), cell_clip=1.0)
        out.sum().backward()

    assert ("mkldnn::_reorder_linear_weight" in ops_run(run)) == packed


@pytest.mark.parametrize("layout", ["contiguous", "transposed-view"])
def test_gate_swap_and_doubling_copy_along_memory(layout):
    """swap_gates (TF's order to torch's, against a permutation by index) and the loop's doubling of
    the j block: from a transposed view of a contiguous weight (LSTM passes nn.LSTM's so) a
    transposed view again, copied along memory, not transposed (several times slower); the weight
    itself is left as it was."""
    from triton_lstm.convert import swap_gates
    from triton_lstm.cpu import _doubled
    N, K = 3, 5
    w = torch.randn(4 * N, K).t() if layout == "transposed-view" else torch.randn(K, 4 * N)
    given = w.clone()
    swapped, doubled = swap_gates(w), _doubled(w, 1)
    assert torch.equal(swapped, torch_gate_order(w))
    want = w.clone()
    want[:, N:2 * N] *= 2
    assert torch.equal(doubled, want) and torch.equal(w, given) and _doubled(w, None) is w
    for got in (swapped, doubled):
        assert (got.t().is_contiguous() if layout == "transposed-view" else got.is_contiguous())
