"""A whole LSTM sequence (one layer, one direction) on the persistent kernels: launchers and ``lstm_sequence``."""
from __future__ import annotations

import functools
import threading
from typing import Optional

import torch
import triton

from triton_lstm.activations import Activation, activation_name
from triton_lstm.checks import (SEQUENCE_NAMES, Names, check_clip, check_forget_bias, check_integers,
                                check_sequence_args, comparable, integer_tensor, shape_of)
from triton_lstm.convert import swap_gates, swap_gates_kept
from triton_lstm.cpu import GATE_ORDERS, lstm_sequence_cpu
from triton_lstm.functional import CellOptions, autocast, autocast_state, resolve_activations
from triton_lstm.higher_order import forward_mode
from triton_lstm.kernels.lstm_sequence import BARRIER_FAILED, lstm_seq_bwd_kernel, lstm_seq_fwd_kernel
from triton_lstm import launch, tune
from triton_lstm.launch import Problem, interpreting, kernel_constants, kernels_run_on, programs
from triton_lstm.reference import bad_lengths_poisoned, lengths_outside, lstm_sequence_reference

Tensor = torch.Tensor

# Polls of the barrier counter before a program gives up (about a second on a GPU). Cooperative
# launch makes every program resident, so a wait only ends this way if that guarantee failed.
MAX_SPINS = 1 << 21

# How errors name the lengths: lstm_sequence's argument, dynamic_rnn's sequence_length.
LENGTHS = "lengths (dynamic_rnn's sequence_length)"

# Barrier counters of launches not yet known to have finished: (event, host copy of the counter),
# shared by the threads that launch (nn.DataParallel runs one a GPU): taken and read under the lock.
_pending: list = []
_pending_lock = threading.Lock()


def _raise_on_flags(flags: Tensor, deferred: bool) -> None:
    """Raise if a persistent launch's sync flags (a host copy) report a failure."""
    which = "an earlier call" if deferred else "this call"
    if int(flags[0]) & BARRIER_FAILED.value:
        _pending.clear()
        raise RuntimeError(f"a grid barrier of the persistent LSTM kernel timed out: its programs were not all "
                           f"resident at once, and the results of {which} are wrong. Set "
                           f"TRITON_LSTM_CHECK_BARRIER=1 to check every call as it ends")
    if int(flags[1]):
        _pending.clear()
        raise ValueError(f"{LENGTHS}: values must lie in [0, T]; {which} had some outside (its rows "
                         f"were set to NaN)")


def check_earlier_launches(device: torch.device) -> None:
    """Raise if a finished earlier launch reported a failure. Never waits for the GPU; looks at
    nothing for a call off the GPU (only GPU launches are watched; another stream may be capturing,
    where querying an event is not allowed), while ``device``'s stream is being captured, or while
    torch.compile traces (the kernels' ops look when they run)."""
    if not launch.gpu_device(device) or torch.compiler.is_compiling() or launch.capturing(device):
        return
    with _pending_lock:
        while _pending and _pending[0][0].query():
            _, flags = _pending.pop(0)
            _raise_on_flags(flags, deferred=True)


def watch(sync: Tensor) -> None:
    """Have this launch's sync flags (barrier timeout, lengths outside [0, T]) checked once the GPU
    is done with them, without a host sync: they are copied to host memory asynchronously and read
    at a later call. With TRITON_LSTM_CHECK_BARRIER=1 they are checked now (synchronising).
    Nothing is read during capture."""
    if not launch.gpu_device(sync.device) or interpreting() or launch.capturing(sync.device):
        return
    if tune.env_flag("TRITON_LSTM_CHECK_BARRIER", False):
        flags = sync.cpu()
        with _pending_lock:
            _raise_on_flags(flags, deferred=False)
        return
    flags = launch.host_buffer(sync)
    with launch.select_device(sync.device):   # the event on sync's GPU, also when another is current
        flags.copy_(sync, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
    with _pending_lock:
        _pending.append((done, flags))


def _persistent_launch(kernel, pb: Problem, args, consts: dict, T: int, t_first: int, schedule, sync: Tensor,
                       restore=None) -> None:
    """Launch a persistent kernel over all T steps; ``args(cfg)`` gives its arguments up to ``sync_ptr``.
    ``schedule()`` lists the (t_first, n_steps, phase constants) of one-phase launches that replace it
    for a stepped configuration (built only then: it has T entries or more; one dict per phase). restore() puts in/out
    buffers back before each run the tuner times and after the last (``launch.pick_config``)."""
    dev = sync.device

    def reset():
        sync.zero_()
        if restore is not None:
            restore()

    def steps(first, n_steps):
        return lambda cfg: args(cfg) + (first, n_steps, T, pb.B, pb.N, pb.P, MAX_SPINS)

    one_launch = dict(consts, PHASES=3, USE_BARRIER=True)

    def launches(cfg):
        # Stepped, and under the interpreter (whose programs run one after another), several
        # programs cannot meet at a grid barrier: one launch per phase of each step instead. So too
        # a sequence whose barrier count would reach the counter's failure mark (T in the millions).
        arrivals = (2 * T + 1) * programs(cfg, pb)
        if cfg.stepped or (interpreting() and programs(cfg, pb) > 1) or arrivals >= BARRIER_FAILED.value:
            entries = schedule()
            # One constants dict per phase, shared by its launches (launch.compile_launches).
            phases = {id(phase): phase for *_, phase in entries}
            merged = {key: dict(consts, USE_BARRIER=False, **phase) for key, phase in phases.items()}
            return [(steps(first, n_steps), merged[id(phase)]) for first, n_steps, phase in entries]
        return [(steps(t_first, T), one_launch)]

    check_earlier_launches(dev)
    with launch.device_guard(dev):
        cfg = launch.pick_config(kernel, pb, launches, one_launch, dev, before_run=reset)
        for run_args, run_consts in launches(cfg):
            launch.run_config(kernel, cfg, pb, run_args, run_consts)
        watch(sync)  # its event on the launches' device


def seq_forward(xw: Tensor, h0: Tensor, c0: Tensor, w_h: Tensor, peepholes, projection: Optional[Tensor],
                lengths: Optional[Tensor], opts: CellOptions):
    """Run the forward recurrence. xw [T, B, 4N] = x @ W_x + bias. Returns (out, hbuf, cbuf, z, m, y)."""
    T, B, N4 = xw.shape
    N, P = N4 // 4, h0.shape[1]
    dev, dtype = xw.device, h0.dtype
    f32 = dict(device=dev, dtype=torch.float32)
    hbuf = torch.empty(T + 1, B, P, device=dev, dtype=dtype)
    hbuf[0] = h0
    cbuf = torch.empty(T + 1, B, N, **f32)
    cbuf[0] = c0
    z = torch.empty(T, B, 4 * N, **f32)
    out = torch.empty(T, B, P, device=dev, dtype=dtype)
    m = torch.empty(T, B, N, device=dev, dtype=dtype) if projection is not None else None
    y = torch.empty(T, B, P, **f32) if opts.proj_clip is not None else None
    if T == 0 or B == 0:
        return out, hbuf, cbuf, z, m, y
    wf, wi, wo = peepholes
    sync = torch.zeros(2, device=dev, dtype=torch.int32)
    pb = Problem("seq_fwd", B, 0, N, P, projection is not None, dtype)
    consts = kernel_constants(opts, dtype, lstm_seq_fwd_kernel, USE_PEEPHOLES=wf is not None, HAS_PROJ=pb.proj,
                              HAS_LENGTHS=lengths is not None)
    phase_consts = [dict(PHASES=1), dict(PHASES=2)] if pb.proj else [dict(PHASES=1)]
    args = (xw, w_h, wi, wf, wo, projection, lengths, hbuf, cbuf, z, m, y, out, sync)

    def schedule():
        return [(t, 1, phase) for t in range(T) for phase in phase_consts]

    _persistent_launch(lstm_seq_fwd_kernel, pb, lambda cfg: args, consts, T, 0, schedule, sync)
    return out, hbuf, cbuf, z, m, y


def seq_backward(dout: Tensor, dh_T: Tensor, dc_T: Tensor, z: Tensor, cbuf: Tensor, w_h: Tensor, peepholes,
                 projection: Optional[Tensor], y: Optional[Tensor], lengths: Optional[Tensor], opts: CellOptions):
    """Run the reverse recurrence. Returns (dz [T, B, 4N], dy [T, B, P] or None without a projection,
    dh0, dc0), all fp32."""
    T, B, N4 = z.shape
    N, P = N4 // 4, dh_T.shape[1]
    dev = z.device
    dh = dh_T.float().clone()
    dc = dc_T.float().clone()
    dz = torch.empty(T, B, 4 * N, device=dev, dtype=torch.float32)
    dy = torch.empty(T, B, P, device=dev, dtype=torch.float32) if projection is not None else None
    if T == 0 or B == 0:
        return dz, dy, dh, dc
    wf, wi, wo = peepholes
    sync = torch.zeros(2, device=dev, dtype=torch.int32)
    pb = Problem("seq_bwd", B, 0, N, P, projection is not None, w_h.dtype)
    consts = kernel_constants(opts, w_h.dtype, lstm_seq_bwd_kernel, USE_PEEPHOLES=wf is not None, HAS_PROJ=pb.proj,
                              HAS_LENGTHS=lengths is not None, FINAL=True)
    # One program's launches run phase by phase: dh of step t (2), then its gate gradients (1); last dh0.
    step_phases = [dict(PHASES=2, FINAL=False), dict(PHASES=1, FINAL=False)] if pb.proj else \
        [dict(PHASES=3, FINAL=False)]

    last_phase = dict(PHASES=2)

    def schedule():
        return [(t, 1, ph) for t in range(T - 1, -1, -1) for ph in step_phases] + [(-1, 0, last_phase)]

    def restore():
        dh.copy_(dh_T)
        dc.copy_(dc_T)

    @functools.lru_cache(maxsize=None)
    def args(cfg):
        # Each slice's share of dh, for two steps (by parity): one buffer for all launches of a configuration.
        shares = torch.empty(2, triton.cdiv(N, cfg.block_n), B, P, device=dev, dtype=torch.float32)
        return (dout, dh, dc, z, cbuf, w_h, wi, wf, wo, projection, y, lengths, dy, dz, shares, sync)

    _persistent_launch(lstm_seq_bwd_kernel, pb, args, consts, T, T - 1, schedule, sync, restore)
    return dz, dy, dh, dc


def check_lengths(lengths: Optional[Tensor], T: int, B: int, device: torch.device) -> tuple[Optional[Tensor], bool]:
    """lengths: [B] integers in [0, T], on the CPU or the inputs' device. Returns (lengths as int32
    on the inputs' device, whether their values were checked here).

    Values on the CPU are checked here. Values already on a GPU are checked on the device (reading
    them here would stall the host until the GPU catches up): by the kernels, or by
    ``poison_bad_lengths`` on other paths; none can be read while compiling or capturing a CUDA
    graph. A row outside [0, T] then gets NaN outputs and state, and a later call raises (where the
    values are watched).
    """
    if lengths is None:
        return None, True
    if not isinstance(lengths, Tensor):
        lengths = integer_tensor(LENGTHS, lengths)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"{LENGTHS}: expected shape ({B},) = [batch], got {shape_of(lengths)}")
    check_integers(LENGTHS, lengths)
    if lengths.device != device and lengths.device.type != "cpu":
        raise ValueError(f"{LENGTHS}: on {lengths.device}, but the inputs are on {device}")
    # Values cannot be read while tracing or capturing a CUDA graph.
    readable = not torch.compiler.is_compiling() and not (lengths.device == device and launch.capturing(device))
    values = comparable(lengths)
    checked_here = readable and not launch.gpu_device(lengths.device)
    if B and checked_here and (bool((values < 0).any()) or bool((values > T).any())):
        given = lengths.tolist()   # exact: values wraps uint64 past int64's range
        raise ValueError(f"{LENGTHS}: values must lie in [0, T={T}], got min {min(given)} and max {max(given)}")
    if not checked_here and values.dtype == torch.int64:
        # Out-of-range values must stay out of range for the kernels' check, not wrap into it in
        # int32 (2**32 + 3 would run 3 steps). Values in range are unchanged.
        values = values.clamp(-1, T + 1)
    return values.to(device=device, dtype=torch.int32, non_blocking=True).contiguous(), checked_here


def sequence_lengths(lengths, T: int, B: int, device: torch.device, h0: Tensor, c0: Tensor,
                     kernels_check: bool) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """(lengths as ``check_lengths`` gives them, h0, c0) for a sequence call, after raising what an
    earlier call's launches flagged. Lengths that could not be checked here and that no kernel checks
    (``kernels_check``: the kernels run, for at least one step) are checked as the kernels check
    them (``poison_bad_lengths``)."""
    check_earlier_launches(device)
    lengths, checked = check_lengths(lengths, T, B, device)
    if not checked and not (kernels_check and T):
        lengths, h0, c0 = poison_bad_lengths(lengths, T, h0, c0)
    return lengths, h0, c0


def poison_bad_lengths(lengths: Tensor, T: int, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unchecked lengths for a path other than the kernels, checked as the kernels check them: a row
    outside [0, T] runs every step from a NaN state (``bad_lengths_poisoned``; so with no steps its
    final state is NaN too), and is reported to a later call where it can be (not while compiling or
    capturing)."""
    if not torch.compiler.is_compiling():
        watch(torch.stack([lengths.new_zeros(()), lengths_outside(lengths, T).sum(dtype=torch.int32)]))
    return bad_lengths_poisoned(lengths, T, h0, c0)


def lstm_sequence(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                  w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None,
                  w_o_diag: Optional[Tensor] = None, projection: Optional[Tensor] = None,
                  lengths: Optional[Tensor] = None, *, forget_bias: float = 1.0, cell_clip: Optional[float] = None,
                  proj_clip: Optional[float] = None, activation: Activation = None,
                  recurrent_activation: Activation = None, gate_order: str = "tf") -> tuple[Tensor, Tensor, Tensor]:
    """TF's LSTMCell over a time-major sequence in one persistent kernel launch (forward and backward).

    Args:
        x: [T, B, D].  h0: [B, P].  c0: [B, N] (float32 or x's dtype).
        w_x: [D, 4N] and w_h: [P, 4N], the two row blocks of TF's kernel (or nn.LSTM's weights
            transposed); bias: [4N], in x's dtype or, for half-precision x, float32 (nn.LSTM's two
            biases summed unrounded: the CPU path computes in float32; the kernels round it to x's
            dtype, as a sum in x's dtype was).
        gate_order: the order of the four gate blocks in w_x, w_h and bias: "tf" (i, j, f, o: TF's
            kernel) or "torch" (i, f, g, o: nn.LSTM's, as w_x = weight_ih.t(), w_h = weight_hh.t() and
            bias = bias_ih + bias_hh; the CPU path's loop computes in either order without a copy).
        w_f_diag, w_i_diag, w_o_diag: [N] or None.  projection: [N, P] or None.
        lengths: [B] integers in [0, T] (on the CPU or x's device), or None for full length.
        activation, recurrent_activation: the cell's and the gates' (None: tanh and sigmoid, as TF).
    Returns:
        (outputs [T, B, P] in x's dtype, zero past each length; h_T [B, P]; c_T [B, N], float32, or
        float64 for float64 x).
        Under torch.autocast, x, h0 and the weights are cast to the autocast dtype first (float64 ones
        stay, as autocast leaves them); c0 in half precision is taken in float32.
    """
    return named_sequence(SEQUENCE_NAMES, x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                          lengths, forget_bias=forget_bias, cell_clip=cell_clip, proj_clip=proj_clip,
                          activation=activation, recurrent_activation=recurrent_activation, gate_order=gate_order)


def named_sequence(names: Names, x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                   w_f_diag: Optional[Tensor], w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor],
                   projection: Optional[Tensor], lengths: Optional[Tensor], *, forget_bias: float,
                   cell_clip: Optional[float], proj_clip: Optional[float], activation: Activation,
                   recurrent_activation: Activation, gate_order: str) -> tuple[Tensor, Tensor, Tensor]:
    """``lstm_sequence`` with errors naming x, h0 and c0 as ``names`` says (its callers' own arguments)."""
    if gate_order not in tuple(GATE_ORDERS):
        raise ValueError(f"gate_order: expected 'tf' (gates i, j, f, o) or 'torch' (i, f, g, o), got {gate_order!r}")
    x, h0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection = autocast(
        x, h0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    c0 = autocast_state(c0)
    T, B, D, N, P = check_sequence_args(x, h0, c0, w_x, w_h, bias, (w_f_diag, w_i_diag, w_o_diag),
                                        projection, proj_clip, names)
    clips = check_clip("cell_clip", cell_clip), check_clip("proj_clip", proj_clip)
    forget_bias = check_forget_bias(forget_bias)
    ids, (fn, gate_fn) = resolve_activations(activation, recurrent_activation)
    # Forward-mode AD takes the reference, on any device (``higher_order.forward_mode``).
    tangents = forward_mode((x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection))
    reference = ids is None or tangents
    on_kernels = not reference and kernels_run_on(x.device, x.dtype)
    lengths, h0, c0 = sequence_lengths(lengths, T, B, x.device, h0, c0, kernels_check=on_kernels)
    if not reference and not on_kernels and x.device.type == "cpu":
        return own_final_state(*lstm_sequence_cpu(
            x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, forget_bias=forget_bias,
            cell_clip=clips[0], proj_clip=clips[1], activation=activation_name(ids[0]),
            recurrent_activation=activation_name(ids[1]), gate_order=gate_order))
    if not GATE_ORDERS[gate_order]:
        # Forward-mode AD computes its tangents now, with nothing to check later: plain copies there
        # (swap_gates_kept has no jvp, which torch.compile could not trace).
        w_x, w_h, bias = (swap_gates(w_x), swap_gates(w_h), swap_gates(bias)) if tangents \
            else swap_gates_kept(w_x, w_h, bias)
    if not on_kernels:
        return lstm_sequence_reference(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection,
                                       lengths, forget_bias=forget_bias, cell_clip=clips[0], proj_clip=clips[1],
                                       activation=fn, recurrent_activation=gate_fn)
    from triton_lstm.ops import sequence  # ops builds on this module's launchers
    out, hbuf, cbuf, *_ = sequence(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths,
                                   *ids, forget_bias, *clips)
    return own_final_state(out, hbuf[-1], cbuf[-1])


def own_final_state(out: Tensor, h_T: Tensor, c_T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(out, h_T, c_T) with h_T and c_T copied out of the larger tensors they are the last steps of
    (the kernels' [T + 1]-step buffers, which their backward keeps; torch's LSTM's [1, B, .] states):
    an in-place op or ``detach_()`` on them then acts as on any output of its own."""
    return out, h_T.clone(), c_T.clone()
