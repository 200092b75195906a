"""The CPU path of ``lstm_sequence``: torch's own LSTM where it computes exactly TF's cell, a fused
loop for everything else.

``lstm_sequence_cpu`` picks one of two tiers per call:

* **torch's LSTM** (``torch.lstm``, what ``nn.LSTM`` runs: oneDNN's fused LSTM for float32 without a
  projection, aten's own loop otherwise). A cell without peepholes or clips, with tanh and sigmoid,
  over full-length sequences is torch's LSTM with the forget bias folded into the bias (equal to
  rounding). A projection as wide as the cell is left to the loop: torch tells a projection from
  the state widths. So are variable lengths: torch runs them as a packed sequence on its slower
  loop, without oneDNN. So is every call that torch.compile or torch.export traces, or vmap maps
  (``traced_or_vmapped``).
* **The loop** (the ``triton_lstm::cpu_seq_fwd`` / ``cpu_seq_bwd`` ops): x @ W_x + bias for all
  steps is one GEMM before the loop; each step is one product with the recurrent weights (packed
  once for oneDNN in float32) and the pointwise math in place on buffers allocated once per call.
  The backward runs the reverse recurrence with one product per step; the weight gradients are
  GEMMs over all steps afterwards. Variable lengths sort the batch by length once, so each step
  runs only on the rows still inside their sequence (as a packed sequence does). The ops take
  ``lstm_sequence``'s arguments and lay them out for the loop themselves, so their gradients are
  those of the reference's inputs: the first backward runs ``cpu_seq_bwd``, a backward that must
  itself be differentiable (double backward, torch.func.grad) recomputes the sequence with the
  reference and differentiates that, and torch.func transforms run the op as an autograd.Function
  (``triton_lstm.higher_order``).

Both compute half-precision inputs in float32 (outputs rounded once at the end; the cell state is
float32) and float64 in float64. ``triton_lstm.reference`` stays the readable specification that
the tests compare both with.

NOTE: torch.compile of a step's pointwise math (Inductor's C++ kernels) is not used: on a 2-core
AVX-512 machine with one thread it took 52 us a step against 65 us eager at B=16, H=256 (and 240
against 261 at B=64, H=512), a fifth of the pointwise time and well under a tenth of a step with
its product, for 6-7 s of compiling per shape and option set, twice with the backward, and a C++
compiler at run time.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from triton_lstm.activations import activation_id, activation_name, hard_sigmoid
from triton_lstm.convert import swap_gates, swap_gates_kept, transposed_view
from triton_lstm.flops import products, register, sequence_forward
from triton_lstm.higher_order import differentiable_vjp, reference_options, transformable, vmap_by_slices
from triton_lstm.reference import lstm_sequence_reference, padding_zeroed, within_lengths

Tensor = torch.Tensor
aten = torch.ops.aten

# torch says once that oneDNN has no projected LSTM and it runs its own: nothing for a caller of
# lstm_sequence, who did not ask for torch's LSTM, to act on. Only for this module's calls (not a
# context around each call: that is not thread-safe and resets which warnings were shown).
warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN", UserWarning,
                        r"triton_lstm\.cpu")

_MINUS_ONE = torch.tensor(-1.0)
_ZERO = torch.tensor(0.0)


def _tanh_into(x: Tensor, out: Tensor) -> None:
    # NOTE: tanh as 2 sigmoid(2x) - 1 (within 2e-7 of tanh in float32): aten's tanh ran about
    # 4x slower per element than its sigmoid on CPU, so from about 2K elements these three ops win.
    if out.numel() < 2048:
        torch.tanh(x, out=out)
        return
    torch.add(x, x, out=out)
    out.sigmoid_()
    torch.add(_MINUS_ONE, out, alpha=2, out=out)


def _written(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A derivative ``(dy, x, y) -> dx`` that also takes ``out=`` (then writes dx there)."""
    def grad(dy: Tensor, x: Optional[Tensor], y: Tensor, out: Optional[Tensor] = None) -> Tensor:
        dx = fn(dy, x, y)
        return dx if out is None else out.copy_(dx)
    return grad


def _sigmoid_grad(dy: Tensor, x: Optional[Tensor], y: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return aten.sigmoid_backward(dy, y) if out is None else aten.sigmoid_backward.grad_input(dy, y, grad_input=out)


def _tanh_grad(dy: Tensor, x: Optional[Tensor], y: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return aten.tanh_backward(dy, y) if out is None else aten.tanh_backward.grad_input(dy, y, grad_input=out)


def _hard_sigmoid_grad(dy: Tensor, x: Tensor, y: Tensor) -> Tensor:
    # The clamp inside passes gradient on [0, 1] inclusive, as the reference's torch.clamp does.
    u = 0.2 * x + 0.5
    return torch.where((u >= 0) & (u <= 1), dy * 0.2, 0.0)


@dataclass(frozen=True)
class Pointwise:
    """An activation as the loop runs it: into a preallocated buffer, and its derivative."""
    into: Callable[[Tensor, Tensor], object]    # (x, out): out <- f(x)
    grad: Callable[..., Tensor]                 # (dy, x, y, out=None) -> dx, written to out if given
    needs_input: bool = False                   # grad reads x (the pre-activation), which is then kept


def _copied(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], object]:
    return lambda x, out: out.copy_(fn(x))


# Derivatives as torch's autograd takes them for the reference's functions (relu and elu from
# their outputs, as torch does), so NaN and the clip bounds behave alike.
POINTWISE = {
    "tanh": Pointwise(_tanh_into, _tanh_grad),
    "sigmoid": Pointwise(lambda x, out: torch.sigmoid(x, out=out), _sigmoid_grad),
    "relu": Pointwise(lambda x, out: torch.clamp_min(x, 0, out=out),
                      _written(lambda dy, x, y: aten.threshold_backward(dy, y, 0))),
    "linear": Pointwise(lambda x, out: out.copy_(x), _written(lambda dy, x, y: dy)),
    "softsign": Pointwise(_copied(F.softsign), _written(lambda dy, x, y: dy / (1 + x.abs()).square()),
                          needs_input=True),
    "hard_sigmoid": Pointwise(_copied(hard_sigmoid), _written(_hard_sigmoid_grad), needs_input=True),
    "elu": Pointwise(_copied(F.elu), _written(lambda dy, x, y: aten.elu_backward(dy, 1.0, 1, 1.0, True, y))),
    "hardsigmoid": Pointwise(_copied(F.hardsigmoid), _written(lambda dy, x, y: aten.hardsigmoid_backward(dy, x)),
                             needs_input=True),
}


def sigmoid_form(activation: str, recurrent_activation: str) -> bool:
    """TF's default activations: then the loop's forward runs all four gates through one sigmoid (for
    many steps, ``doubles_j``, the j gate too)."""
    return activation == "tanh" and recurrent_activation == "sigmoid"


def doubles_j(steps: int, rows: int) -> bool:
    """Whether the forward of a ``sigmoid_form`` cell over ``steps`` x batch rows takes its weights
    with the j block's columns (of W_x, W_h [rows, 4N] and the bias) doubled, so that one sigmoid
    gives the j gate too (tanh(z) = 2 sigmoid(2z) - 1; ``_doubled``), or runs tanh on that block.

    NOTE: aten's tanh takes about 4x a sigmoid's time per element on CPU (``_tanh_into``), and the
    doubled copy costs about a pass over the weights. Measured (LSTM forward with peepholes and a
    cell clip, no_grad, 2-core AVX-512 VM, min of 3 interleaved rounds): tanh took 0.87-0.89x the
    doubled form's time at T x B = 8 (B=1 streaming, H=256 and 1024 over D=256), 0.98-1.04x from
    64 to about the weights' rows (512 and 1280), and 1.02-1.06x beyond (up to T x B = 6400).
    With tanh the weights reach the loop without a copy.
    """
    return steps >= rows


ONEDNN_MIN_MACS = 1 << 20
PACK_MIN_ROWS, PACK_MIN_USES = 1024, 24


def _onednn_linear() -> bool:
    """Whether oneDNN's linear with a prepacked weight (the op Inductor's CPU backend uses) is here."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def right_product(w: Tensor, rows: int, bias: Optional[Tensor] = None, uses: int = 1) -> Callable[..., Tensor]:
    """``(a, add=None) -> a @ w + bias (+ add)`` for ``uses`` products of one weight w [K, M] with
    [rows, K] operands (bias [M] or None; add [rows, M] or None).

    NOTE: in float32, oneDNN's linear with the weight packed once ran these products 10-40% faster
    than addmm (MKL) at B=16-64, H=256-512 on a 2-core AVX-512 machine; below ONEDNN_MIN_MACS its
    call overhead (about 15 us) lost to addmm, which other dtypes use too. Packing a weight took 1-2
    ms for 0.25-1M elements (H=512: about what addmm spends on a hundred rows), won back per product
    (most at small batches): it paid for one product of about a thousand rows (the input product
    over all steps) or for about 24 products of any batch (the recurrent ones over the steps), and
    lost for fewer (B=1-64 with T=4-16: streaming inference, short calls).
    """
    if (w.dtype == torch.float32 and rows * w.shape[0] * w.shape[1] >= ONEDNN_MIN_MACS
            and (rows >= PACK_MIN_ROWS or uses >= PACK_MIN_USES) and _onednn_linear()):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), rows)

        def product(a: Tensor, add: Optional[Tensor] = None) -> Tensor:
            if add is None:
                return torch.ops.mkldnn._linear_pointwise(a, packed, bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(a, add, packed, bias, "add")
        return product

    def product(a: Tensor, add: Optional[Tensor] = None) -> Tensor:
        base = bias if add is None else add if bias is None else add + bias
        return torch.mm(a, w) if base is None else torch.addmm(base, a, w)
    return product


def _empty(like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return like.new_empty(0, dtype=dtype)


def _or_empty(t: Optional[Tensor], like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    return _empty(like, dtype) if t is None else t


def _present(t: Tensor) -> Optional[Tensor]:
    """Absent optional tensors are 1-D empty placeholders; real ones have three dimensions."""
    return t if t.dim() > 1 else None


def _sizes(lengths: Optional[Tensor], T: int) -> Optional[list[int]]:
    """Rows still inside their sequence at each step, for lengths sorted longest first."""
    if lengths is None:
        return None
    return (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()


_STEP_CHUNK = 512


class _Steps:
    """``steps[t]``: the view t[t] of a tensor t [steps, ...], or with ``blocks=N`` the tuple of its four
    gate blocks of width N (i, f, j, o, at the places ``order`` gives), made a chunk of steps at a
    time off the loop (one op per chunk, not one per step). Not made for all steps at once: a view
    holds about half a kilobyte, hundreds of MB at T=100000 where the tensors themselves take a few.
    A chunk holds one step more than it starts the next with, so that steps t and t + 1 come from
    one chunk either way the loop runs."""
    __slots__ = ("_t", "_blocks", "_order", "_start", "_views")

    def __init__(self, t: Tensor, blocks: Optional[int] = None, order: tuple[int, ...] = ()):
        self._t, self._blocks, self._order, self._start, self._views = t, blocks, order, 0, ()

    def __getitem__(self, step: int):
        offset = step - self._start
        if 0 <= offset < len(self._views):
            return self._views[offset]
        self._start = start = step - step % _STEP_CHUNK
        part, N = self._t[start:start + _STEP_CHUNK + 1], self._blocks
        self._views = part.unbind(0) if N is None else tuple(
            zip(*(part[..., g * N:(g + 1) * N].unbind(0) for g in self._order)))
        return self._views[step - start]


def gate_places(tf_gates: bool) -> tuple[int, int, int, int]:
    """The places of the gate blocks i, f, j, o along the last dimension: TF's order (i, j, f, o), or
    torch's (i, f, j, o). The loop computes in the order it is given (no copy to reorder them)."""
    return (0, 2, 1, 3) if tf_gates else (0, 1, 2, 3)


def _i_and_f(z: Tensor, places: tuple[int, int, int, int]) -> Tensor:
    """The i and f blocks of z [b, 4N] as one view [b, 2, N] (strided in TF's order)."""
    I, F = places[:2]
    return z.view(z.shape[0], 4, -1)[:, I:F + 1:F - I]


def _block(z: Tensor, place: int) -> Tensor:
    """The gate block at ``place`` of z [..., 4N]."""
    N = z.shape[-1] // 4
    return z[..., place * N:(place + 1) * N]


def _float32_products(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn with CPU autocast off: the loop and torch's LSTM compute half-precision inputs in float32,
    and autocast (which casts the inputs before they get here) must not turn their products back into
    half precision, in the forward or in a backward run outside the autocast region. A fresh
    context per call: an autocast object keeps the state it replaced, so one shared object is not
    safe across threads."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)
    return run


@_float32_products
def _forward(x: Tensor, w_x: Tensor, bias: Tensor, h0: Tensor, c0: Tensor, w_h: Tensor, w_if: Optional[Tensor],
             w_o: Optional[Tensor], projection: Optional[Tensor], lengths: Optional[Tensor], act: str, gate_act: str,
             cell_clip: Optional[float], proj_clip: Optional[float], keep: bool, double_j: bool,
             places: tuple[int, int, int, int]):
    """The forward recurrence on buffers allocated once: w_x, w_h and bias with their gate blocks at
    ``places`` (``gate_places``), the forget bias added and with ``double_j`` (``doubles_j``) the j
    block doubled; w_if [2, N] = (w_i_diag, w_f_diag) or None; lengths sorted longest first.
    Returns ``cpu_seq_fwd``'s results, all in this batch order (the gates at ``places``)."""
    T, B, D = x.shape
    N4, P = w_h.shape[1], h0.shape[1]
    N = N4 // 4
    sizes = _sizes(lengths, T)
    fused, act, gate = sigmoid_form(act, gate_act), POINTWISE[act], POINTWISE[gate_act]
    # The input half of every step's product, for all steps at once.
    xw = right_product(w_x, T * B, bias)(x.reshape(T * B, D)).view(T, B, N4)
    # With lengths, rows past their length are never written: zeros make them exact zero outputs,
    # and leave nothing undefined in what the backward reads or its GEMMs sum over.
    alloc = x.new_zeros if sizes is not None else x.new_empty
    hbuf, cbuf = alloc(T + 1, B, P), alloc(T + 1, B, N)
    hbuf[0], cbuf[0] = h0, c0
    steps = T if keep else 1
    # Each step's activated gates (at their places) overwrite its slot of xw once read: one buffer less
    # (at B=64, H=512 that saved 52 MB of fresh pages a call).
    gates = xw
    act_c = alloc(steps, B, N)                           # act(c_t)
    pre = alloc(T, B, N4) if keep and not fused and (act.needs_input or gate.needs_input) else None
    m = alloc(steps, B, N) if projection is not None else None
    # Before their clip, for the clips' gradient masks, made after the loop in one go.
    c_pre = alloc(T, B, N) if keep and cell_clip is not None else None
    y_pre = alloc(T, B, P) if keep and proj_clip is not None else None
    recurrent = right_product(w_h, B, uses=T)
    project = right_product(projection, B, uses=T) if projection is not None else None
    H, C, G, A, blocks = _Steps(hbuf), _Steps(cbuf), _Steps(gates), _Steps(act_c), _Steps(gates, N, places)
    C_pre = None if c_pre is None else _Steps(c_pre)
    for t in range(T):
        b = B if sizes is None else sizes[t]
        if b == 0:
            break
        k = t if keep else 0
        h, c, c_new, g, a_c, (i, f, j, o) = H[t], C[t], C[t + 1], G[t], A[k], blocks[t]
        if b < B:
            h, c, c_new, g, a_c, i, f, j, o = (v[:b] for v in (h, c, c_new, g, a_c, i, f, j, o))
        z = recurrent(h, g)
        if w_if is not None:
            _i_and_f(z, places).addcmul_(c[:, None], w_if)
        if fused:
            # All four blocks in one call: a contiguous sigmoid ran faster than one over the three
            # sigmoid gates (a strided slice); the j block is then overwritten, and with peepholes o
            # is computed again below.
            torch.sigmoid(z, out=g)
            if double_j:
                torch.add(_MINUS_ONE, j, alpha=2, out=j)
            else:
                torch.tanh(_block(z, places[2]), out=j)
        else:
            gate.into(_i_and_f(z, places), _i_and_f(g, places))
            act.into(_block(z, places[2]), j)
            if w_if is None:
                gate.into(_block(z, places[3]), o)
        c_sum = c_new if C_pre is None else C_pre[t] if b == B else C_pre[t][:b]
        torch.mul(f, c, out=c_sum)
        c_sum.addcmul_(i, j)
        if cell_clip is not None:
            torch.clamp(c_sum, -cell_clip, cell_clip, out=c_new)
        if w_if is not None:
            z_o = _block(z, places[3])
            z_o.addcmul_(c_new, w_o)
            gate.into(z_o, o)
        if pre is not None:
            pre[t, :b] = z
        act.into(c_new, a_c)
        if project is None:
            torch.mul(o, a_c, out=H[t + 1][:b])
            continue
        m_t = m[k, :b]
        torch.mul(o, a_c, out=m_t)
        y = project(m_t)
        if proj_clip is None:
            H[t + 1][:b] = y
            continue
        if y_pre is not None:
            y_pre[t, :b] = y
        torch.clamp(y, -proj_clip, proj_clip, out=H[t + 1][:b])
    if lengths is None:
        h_T, c_T = H[T].clone(), C[T].clone()
    else:
        rows = torch.arange(B)
        h_T, c_T = hbuf[lengths, rows], cbuf[lengths, rows]
    # A clip passes gradient on [-clip, clip] inclusive; NaN gets none (as torch.clamp's gradient).
    c_in = None if c_pre is None else c_pre.abs() <= cell_clip
    y_in = None if y_pre is None else y_pre.abs() <= proj_clip
    if not keep:
        gates = act_c = m = None
    return (hbuf, cbuf, h_T, c_T, _or_empty(gates, x), _or_empty(act_c, x), _or_empty(pre, x), _or_empty(m, x),
            _or_empty(c_in, x, torch.bool), _or_empty(y_in, x, torch.bool))


@_float32_products
def _backward(d_hbuf: Tensor, d_h_T: Tensor, d_c_T: Tensor, x: Tensor, w_x: Tensor, hbuf: Tensor, cbuf: Tensor,
              gates: Tensor, act_c: Tensor, pre: Optional[Tensor], m: Optional[Tensor], c_in: Optional[Tensor],
              y_in: Optional[Tensor], w_h: Tensor, w_if: Optional[Tensor], w_o: Optional[Tensor],
              projection: Optional[Tensor], lengths: Optional[Tensor], act: str, gate_act: str, weights_t: bool,
              places: tuple[int, int, int, int], wanted: tuple[bool, bool, bool, bool]):
    """The reverse recurrence, then the weight gradients as GEMMs over all steps, in the loop's layout
    (the gate blocks at ``places``) and batch order (``_forward``'s arguments). d_hbuf's row 0 is
    h0's. Returns (dx, dh0, dc0, d_wx, d_wh, d_bias, then d_w_f_diag, d_w_i_diag, d_w_o_diag,
    d_projection or None); with ``weights_t`` d_wx, d_wh and d_projection transposed (contiguous
    [4N, D], [4N, P], [P, N]); dx, d_wx, d_wh and d_projection None unless ``wanted``."""
    T, B, N4 = gates.shape
    N, P, D = N4 // 4, hbuf.shape[2], x.shape[2]
    sizes = _sizes(lengths, T)
    act, gate = POINTWISE[act], POINTWISE[gate_act]
    alloc = gates.new_zeros if sizes is not None else gates.new_empty
    dz = alloc(T, B, N4)
    dy = alloc(T, B, P) if projection is not None else None
    recurrent = right_product(w_h.t(), B, uses=T)
    project = right_product(projection.t(), B, uses=T) if projection is not None else None
    d_out, C, A, DZ = _Steps(d_hbuf), _Steps(cbuf), _Steps(act_c), _Steps(dz)
    blocks, d_blocks = _Steps(gates, N, places), _Steps(dz, N, places)
    c_keep = None if c_in is None else _Steps(c_in)
    w_i, w_f = (None, None) if w_if is None else w_if.unbind(0)
    if sizes is None:
        dh, dc = d_h_T + d_out[T], d_c_T.clone()
    else:
        # A row's final-state gradient enters at its last step: rows ends[t + 1]:sizes[t] end at step t.
        dh, dc = gates.new_zeros(B, P), gates.new_zeros(B, N)
        ends = sizes + [0]
    for t in range(T - 1, -1, -1):
        b = B if sizes is None else sizes[t]
        c, c_new, a_c, dz_t = C[t], C[t + 1], A[t], DZ[t]
        (i, f, j, o), (dz_i, dz_f, dz_j, dz_o) = blocks[t], d_blocks[t]
        if sizes is None:
            dh_t = dh
        else:
            lo = ends[t + 1]
            if b > lo:
                dh[lo:b], dc[lo:b] = d_h_T[lo:b], d_c_T[lo:b]
            if b == 0:
                continue
            if b < B:
                c, c_new, a_c, i, f, j, o, dz_t, dz_i, dz_f, dz_j, dz_o = (
                    v[:b] for v in (c, c_new, a_c, i, f, j, o, dz_t, dz_i, dz_f, dz_j, dz_o))
            dh_t = dh[:b]
            dh_t += d_out[t + 1][:b]
        dc_t = dc if b == B else dc[:b]
        z_i = z_f = z_j = z_o = None
        if pre is not None:
            z_i, z_f, z_j, z_o = (_block(pre[t, :b], g) for g in places)
        if project is not None:
            if y_in is not None:
                torch.where(y_in[t, :b], dh_t, _ZERO, out=dh_t)
            dy[t, :b] = dh_t
            dm = project(dh_t)
        else:
            dm = dh_t
        gate.grad(dm * a_c, z_o, o, out=dz_o)
        dc_t += act.grad(dm * o, c_new, a_c)
        if w_o is not None:
            dc_t.addcmul_(dz_o, w_o)
        if c_keep is not None:
            torch.where(c_keep[t] if b == B else c_keep[t][:b], dc_t, _ZERO, out=dc_t)
        gate.grad(dc_t * j, z_i, i, out=dz_i)
        gate.grad(dc_t * c, z_f, f, out=dz_f)
        act.grad(dc_t * i, z_j, j, out=dz_j)
        dc_t.mul_(f)
        if w_if is not None:
            dc_t.addcmul_(dz_i, w_i).addcmul_(dz_f, w_f)
        if sizes is not None:
            dh[:b] = recurrent(dz_t)
        else:
            dh = recurrent(dz_t, d_out[t])
    if sizes is not None:
        dh[ends[0]:], dc[ends[0]:] = d_h_T[ends[0]:], d_c_T[ends[0]:]      # rows of length 0
        dh += d_out[0]
    rows = dz.reshape(T * B, N4)
    want_x, want_wx, want_wh, want_proj = wanted
    # Past a row's length dz is zero: what x (and h0, c0 of a row of length 0) hold there adds nothing,
    # and x there gets a zero gradient (not 0 times an infinite weight).
    valid = within_lengths(lengths, T, x.device)
    dx = padding_zeroed(right_product(w_x.t(), T * B)(rows).view(T, B, D), valid) if want_x else None
    d_wx = _summed_product(padding_zeroed(x, valid).reshape(T * B, D), rows, weights_t) if want_wx else None
    d_wh = _summed_product(padding_zeroed(hbuf[:T], valid).reshape(T * B, P), rows, weights_t) if want_wh else None
    d_wf = d_wi = d_wo = d_proj = None
    if w_if is not None:
        c = padding_zeroed(cbuf[:T], valid)
        d_wi, d_wf = ((_block(dz, g) * c).sum((0, 1)) for g in places[:2])
        d_wo = (_block(dz, places[3]) * cbuf[1:]).sum((0, 1))
    if projection is not None and want_proj:
        d_proj = _summed_product(m.reshape(T * B, N), dy.reshape(T * B, P), weights_t)
    return dx, dh, dc, d_wx, d_wh, rows.sum(0), d_wf, d_wi, d_wo, d_proj


def _summed_product(a: Tensor, b: Tensor, transposed: bool) -> Tensor:
    """a.t() @ b (a weight's gradient summed over rows), or with ``transposed`` its transpose b.t() @ a."""
    return b.t() @ a if transposed else a.t() @ b


def _doubled(w: Tensor, place: Optional[int]) -> Tensor:
    """w [..., 4N] with its gate block at ``place`` doubled (the j gate's, ``doubles_j``): a copy in
    w's layout, or w itself for None."""
    if place is None:
        return w
    w = w.clone()
    _block(w, place).mul_(2)
    return w


def _stacked(w_i_diag: Optional[Tensor], w_f_diag: Optional[Tensor]) -> Optional[Tensor]:
    """The input and forget peepholes as the loop takes them: [2, N], or None."""
    return None if w_f_diag is None else torch.stack([w_i_diag, w_f_diag])


def _by_length(lengths: Optional[Tensor]) -> Optional[Tensor]:
    """The batch's rows longest first (a stable sort), or None when they already are."""
    if lengths is None or bool((lengths[1:] <= lengths[:-1]).all()):
        return None
    return torch.argsort(lengths, descending=True, stable=True)


@torch.library.custom_op("triton_lstm::cpu_seq_fwd", mutates_args=())
def cpu_seq_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                w_f_diag: Optional[Tensor], w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor],
                projection: Optional[Tensor], lengths: Optional[Tensor], act: int, gate_act: int, forget_bias: float,
                cell_clip: Optional[float], proj_clip: Optional[float], keep: bool,
                tf_gates: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                         Tensor]:
    """The loop's forward on ``lstm_sequence``'s arguments.

    It computes in the weights' gate order (``tf_gates``), with the forget bias added to the bias and
    for ``doubles_j`` the j block doubled (a copy), and, with lengths not sorted longest first, runs
    the batch sorted so (each step then runs on the rows still inside their sequence).

    Args:
        x: [T, B, D].  h0: [B, P].  c0: [B, N].  w_x: [D, 4N], w_h: [P, 4N], bias: [4N] (gates in
            ``tf_gates``' order).
        w_f_diag, w_i_diag, w_o_diag: [N] or None.  projection: [N, P] or None.  lengths: [B] int64 or None.
        act, gate_act: activation ids (``triton_lstm.ACTIVATIONS``) of names in ``POINTWISE``.
        keep: keep what the backward reads.
        tf_gates: whether w_x, w_h and bias are in TF's gate order (i, j, f, o), else in torch's (i, f, j, o)
            (``lstm_sequence``'s ``gate_order``).
    Returns:
        (hbuf [T+1, B, P]: h0 and every step's output, zero past each length; cbuf [T+1, B, N]: c0 and
        every step's cell state; h_T [B, P]; c_T [B, N]; then, empty unless kept: activated gates
        [T, B, 4N], act(c) [T, B, N], pre-activations [T, B, 4N] (activations whose derivative reads
        them), m [T, B, N] (projection), clip masks [T, B, N] and [T, B, P] (bool)). hbuf, h_T and c_T
        are in the batch's order; the rest, for the backward, in the loop's (rows longest first), and
        they carry no gradient (the backward reads them; a gradient given for cbuf is not used).
    """
    act, gate_act = activation_name(act), activation_name(gate_act)
    T, B, D = x.shape
    places = gate_places(tf_gates)
    j = places[2] if sigmoid_form(act, gate_act) and doubles_j(T * B, D + h0.shape[1]) else None
    forget = [0.0] * 4
    forget[places[1]] = forget_bias
    b = _doubled(bias, j) + block_vector(w_h.shape[1] // 4, tuple(forget), bias)
    order = _by_length(lengths)
    if order is not None:
        x, h0, c0, lengths = x[:, order], h0[order], c0[order], lengths[order]
    hbuf, cbuf, h_T, c_T, *kept = _forward(x, _doubled(w_x, j), b, h0, c0, _doubled(w_h, j),
                                           _stacked(w_i_diag, w_f_diag), w_o_diag, projection, lengths, act,
                                           gate_act, cell_clip, proj_clip, keep, j is not None, places)
    if order is not None:
        back = torch.argsort(order)
        hbuf, h_T, c_T = hbuf[:, back], h_T[back], c_T[back]
    return (hbuf, cbuf, h_T, c_T, *kept)


@cpu_seq_fwd.register_fake
def _(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths, act, gate_act, forget_bias,
      cell_clip, proj_clip, keep, tf_gates=True):
    T, B, _ = x.shape
    N4, P = w_h.shape[1], h0.shape[1]
    N = N4 // 4
    act, gate_act = activation_name(act), activation_name(gate_act)

    def kept(present: bool, *shape, dtype=None):
        return x.new_empty(T, B, *shape, dtype=dtype) if keep and present else _empty(x, dtype)

    needs_input = not sigmoid_form(act, gate_act) and (POINTWISE[act].needs_input or POINTWISE[gate_act].needs_input)
    return (x.new_empty(T + 1, B, P), x.new_empty(T + 1, B, N), x.new_empty(B, P), x.new_empty(B, N),
            kept(True, N4), kept(True, N), kept(needs_input, N4), kept(projection is not None, N),
            kept(cell_clip is not None, N, dtype=torch.bool), kept(proj_clip is not None, P, dtype=torch.bool))


@torch.library.custom_op("triton_lstm::cpu_seq_bwd", mutates_args=())
def cpu_seq_bwd(d_hbuf: Tensor, d_h_T: Tensor, d_c_T: Tensor, x: Tensor, w_x: Tensor, w_h: Tensor,
                w_f_diag: Optional[Tensor], w_i_diag: Optional[Tensor], w_o_diag: Optional[Tensor],
                projection: Optional[Tensor], lengths: Optional[Tensor], hbuf: Tensor, cbuf: Tensor, gates: Tensor,
                act_c: Tensor, pre: Tensor, m: Tensor, c_in: Tensor, y_in: Tensor, act: int, gate_act: int,
                tf_gates: bool = True, weights_t: bool = False,
                wanted: Optional[Sequence[bool]] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                  Tensor, Tensor, Tensor, Tensor]:
    """The loop's backward: the gradients of hbuf [T+1, B, P], h_T and c_T (the batch's order), then
    ``cpu_seq_fwd``'s tensor arguments and what it returned for the backward. Returns the gradients
    of its tensor arguments in their layout (``tf_gates``: the gate order) and batch order: (dx, dh0,
    dc0, d_w_x, d_w_h, d_bias, then d_w_f_diag, d_w_i_diag, d_w_o_diag, d_projection or empty); with
    ``weights_t`` the transposes of d_w_x, d_w_h and d_projection, contiguous: the gradients of
    weights passed as ``transposed_view`` s (LSTM passes nn.LSTM's so), which then reach them
    contiguous without a transposing copy, as nn.LSTM's do. ``wanted``: whether dx, d_w_x, d_w_h and
    d_projection are (None: all), each a product over every step; one not wanted is empty.
    The weights are never doubled here (``doubles_j`` is for the forward's sigmoid): the j gate's
    derivative reads only its value, whichever way the forward computed it."""
    act, gate_act = activation_name(act), activation_name(gate_act)
    order = _by_length(lengths)
    if order is not None:
        d_hbuf, d_h_T, d_c_T = d_hbuf[:, order], d_h_T[order], d_c_T[order]
        x, hbuf, lengths = x[:, order], hbuf[:, order], lengths[order]
    dx, dh0, dc0, *d_weights = _backward(
        d_hbuf, d_h_T, d_c_T, x, w_x, hbuf, cbuf, gates, act_c, _present(pre), _present(m), _present(c_in),
        _present(y_in), w_h, _stacked(w_i_diag, w_f_diag), w_o_diag, projection, lengths, act, gate_act, weights_t,
        gate_places(tf_gates), (True,) * 4 if wanted is None else tuple(wanted))
    if order is not None:
        back = torch.argsort(order)
        dx, dh0, dc0 = None if dx is None else dx[:, back], dh0[back], dc0[back]
    return (_or_empty(dx, gates), dh0, dc0, *(_or_empty(g, gates) for g in d_weights))


@cpu_seq_bwd.register_fake
def _(d_hbuf, d_h_T, d_c_T, x, w_x, w_h, w_f_diag, w_i_diag, w_o_diag, projection, lengths, hbuf, cbuf, gates,
      act_c, pre, m, c_in, y_in, act, gate_act, tf_gates=True, weights_t=False, wanted=None):
    def like(t: Optional[Tensor], transposed: bool = False, want: bool = True) -> Tensor:
        return _empty(gates) if t is None or not want else gates.new_empty(t.shape[::-1] if transposed else t.shape)

    want_x, want_wx, want_wh, want_proj = (True,) * 4 if wanted is None else wanted
    return (like(x, want=want_x), like(d_h_T), like(d_c_T), like(w_x, weights_t, want_wx),
            like(w_h, weights_t, want_wh), gates.new_empty(gates.shape[2]), like(w_f_diag), like(w_i_diag),
            like(w_o_diag), like(projection, weights_t, want_proj))


def _fwd_setup(ctx, inputs, output):
    *tensors, lengths = inputs[:11]
    hbuf, cbuf, _, _, *kept = output
    # Kept for backward: the activated gates (their derivatives read them), act(c), c and h of
    # every step; recomputing any of them would repeat the serial recurrence. The inputs too: a
    # differentiable backward (double backward) recomputes the sequence from them.
    ctx.save_for_backward(*tensors, lengths, hbuf, cbuf, *kept)
    ctx.options, ctx.keep, ctx.tf_gates = inputs[11:16], inputs[16], inputs[17]


def _fwd_backward(ctx, d_hbuf, _d_cbuf, d_h_T, d_c_T, *_):
    *inputs, lengths, hbuf, cbuf, gates, act_c, pre, m, c_in, y_in = ctx.saved_tensors
    x, h0, c0, w_x, w_h, _, w_f_diag, w_i_diag, w_o_diag, projection = inputs
    # Recomputed too: a forward that kept nothing (traced or exported without gradients, then run
    # with them).
    if torch.is_grad_enabled() or not ctx.keep:
        def recompute(x, h0, c0, w_x, w_h, bias, *rest):
            if not ctx.tf_gates:
                w_x, w_h, bias = swap_gates(w_x), swap_gates(w_h), swap_gates(bias)
            out, h_T, c_T = lstm_sequence_reference(x, h0, c0, w_x, w_h, bias, *rest, lengths,
                                                    **reference_options(*ctx.options))
            return torch.cat([h0[None], out]), h_T, c_T

        return differentiable_vjp(ctx, recompute, tuple(inputs), (d_hbuf, d_h_T, d_c_T)) + (None,) * 8
    d_hbuf = torch.zeros_like(hbuf) if d_hbuf is None else d_hbuf
    d_h_T = hbuf.new_zeros(hbuf.shape[1:]) if d_h_T is None else d_h_T
    d_c_T = cbuf.new_zeros(cbuf.shape[1:]) if d_c_T is None else d_c_T
    # Weights passed as transposed views get their gradients so (nn.LSTM's then contiguous).
    weights_t = all(w is None or transposed_view(w) for w in (w_x, w_h, projection))
    needs = ctx.needs_input_grad
    dx, dh0, dc0, *d_weights = cpu_seq_bwd(
        d_hbuf, d_h_T, d_c_T, x, w_x, w_h, w_f_diag, w_i_diag, w_o_diag, projection, lengths, hbuf, cbuf, gates,
        act_c, pre, m, c_in, y_in, *ctx.options[:2], ctx.tf_gates, weights_t, [needs[0], needs[3], needs[4], needs[9]])
    transposed = (weights_t, weights_t, False, False, False, False, weights_t)

    def weight_grad(w: Optional[Tensor], g: Tensor, t: bool) -> Optional[Tensor]:
        if w is None:
            return None
        if w.numel() == 0:              # w_x of inputs of width 0: nothing to sum
            return torch.zeros_like(w)
        return None if g.numel() == 0 else g.t() if t else g      # empty: not wanted

    d_weights = (weight_grad(w, g, t) for w, g, t in zip(inputs[3:], d_weights, transposed))
    return (_present(dx), dh0.to(h0.dtype), dc0.to(c0.dtype), *d_weights) + (None,) * 8


cpu_seq_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)
for _op in (cpu_seq_fwd, cpu_seq_bwd):
    torch.library.register_vmap(_op, vmap_by_slices(_op))


def _bwd_flops(d_hbuf, d_h_T, d_c_T, x, w_x, w_h, w_f_diag, w_i_diag, w_o_diag, projection, lengths, hbuf, cbuf,
               gates, act_c, pre, m, c_in, y_in, act, gate_act, tf_gates=True, weights_t=False, wanted=None, **__):
    # Each step's gradients of h and m, then the wanted ones over every step: dx and the weights'.
    wanted = (True,) * 4 if wanted is None else wanted
    T, B, D = x
    per_x, per_h, per_m = products(T * B, D, w_h[1], w_h[0], projection)
    return per_h + per_m + wanted[0] * per_x + wanted[1] * per_x + wanted[2] * per_h + wanted[3] * per_m


register("cpu_seq_fwd", sequence_forward)
register("cpu_seq_bwd", _bwd_flops)

# ``triton_lstm::cpu_seq_fwd`` (same arguments and results), also under torch.func.
cpu_sequence = transformable("CpuSequenceFunction", cpu_seq_fwd, _fwd_setup, _fwd_backward)


def traced_or_vmapped() -> bool:
    """Whether torch.compile or torch.export is tracing, or torch.func.vmap is active: then the
    loop's op runs where torch's LSTM would. Inductor fails to compile oneDNN's LSTM for training
    (torch 2.13); tracing decomposes torch's LSTM with a projection into one step per time step,
    making T a constant (a recompile per length); vmap has no batching rule for it. (Other torch.func
    transforms take torch's LSTM, and functionalize takes no autograd.Function.)"""
    return torch.compiler.is_compiling() or any(
        level.key() == torch._C._functorch.TransformType.Vmap
        for level in torch._C._functorch.get_interpreter_stack() or ())


def torch_lstm_computes(peepholes: bool, projection: Optional[Tensor], num_units: int, *, forget_bias: float,
                        cell_clip: Optional[float], proj_clip: Optional[float], activation: str,
                        recurrent_activation: str) -> bool:
    """Whether torch's own LSTM computes this cell (any forget bias: it folds into the bias)."""
    square_projection = projection is not None and projection.shape[1] == num_units
    return (not peepholes and cell_clip is None and proj_clip is None and not square_projection
            and activation == "tanh" and recurrent_activation == "sigmoid")


def block_vector(N: int, values: tuple[float, float, float, float], like: Tensor) -> Tensor:
    """[4N]: the four gate blocks of width N, each filled with its value (in the blocks' order)."""
    return torch.tensor(values, dtype=like.dtype).repeat_interleave(N)


@_float32_products
def torch_lstm_sequence(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                        projection: Optional[Tensor], forget_bias: float, tf_gates: bool = True):
    """TF's plain cell (``torch_lstm_computes``) over full-length sequences as torch.lstm, one layer
    and direction; shapes as ``lstm_sequence_cpu``'s, ``tf_gates`` as ``cpu_seq_fwd``'s. Returns
    (out, h_T, c_T)."""
    N = w_h.shape[1] // 4
    w_ih, w_hh = swap_gates_kept(w_x.t(), w_h.t(), dim=0) if tf_gates else (w_x.t(), w_h.t())
    b_ih = (swap_gates(bias) if tf_gates else bias) + block_vector(N, (0.0, forget_bias, 0.0, 0.0), bias)
    params = [w_ih, w_hh, b_ih, torch.zeros_like(b_ih)]
    if projection is not None:
        params.append(projection.t())
    out, h, c = torch.lstm(x, (h0[None], c0[None]), params, True, 1, 0.0, torch.is_grad_enabled(), False, False)
    return out, h[0], c[0]


GATE_ORDERS = {"tf": True, "torch": False}     # lstm_sequence's gate_order: whether it is TF's


def loop_sequence(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                  w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None,
                  w_o_diag: Optional[Tensor] = None, projection: Optional[Tensor] = None,
                  lengths: Optional[Tensor] = None, *, forget_bias: float = 1.0, cell_clip: Optional[float] = None,
                  proj_clip: Optional[float] = None, activation: str = "tanh",
                  recurrent_activation: str = "sigmoid", gate_order: str = "tf") -> tuple[Tensor, Tensor, Tensor]:
    """TF's cell with any option on the ``cpu_seq_fwd`` op: arguments as ``lstm_sequence_cpu``'s, all
    float32 or all float64 (c0 may be float32). Returns (out, h_T, c_T) in that dtype."""
    tensors = (x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    hbuf, _, h_T, c_T, *_ = cpu_sequence(*tensors, None if lengths is None else lengths.long(),
                                         activation_id(activation), activation_id(recurrent_activation),
                                         forget_bias, cell_clip, proj_clip, keep, GATE_ORDERS[gate_order])
    return hbuf[1:], h_T, c_T


def lstm_sequence_cpu(x: Tensor, h0: Tensor, c0: Tensor, w_x: Tensor, w_h: Tensor, bias: Tensor,
                      w_f_diag: Optional[Tensor] = None, w_i_diag: Optional[Tensor] = None,
                      w_o_diag: Optional[Tensor] = None, projection: Optional[Tensor] = None,
                      lengths: Optional[Tensor] = None, *, forget_bias: float = 1.0,
                      cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
                      activation: str = "tanh", recurrent_activation: str = "sigmoid",
                      gate_order: str = "tf") -> tuple[Tensor, Tensor, Tensor]:
    """``lstm_sequence`` on CPU tensors whose arguments ``lstm_sequence`` has checked.

    Args:
        x: [T, B, D].  h0: [B, P].  c0: [B, N].  w_x: [D, 4N], w_h: [P, 4N], bias: [4N] (gates in
        ``gate_order``: "tf" i, j, f, o or "torch" i, f, g, o).
        w_f_diag, w_i_diag, w_o_diag: [N] or None.  projection: [N, P] or None.
        lengths: [B] integers in [0, T], or None.
        activation, recurrent_activation: names in ``triton_lstm.ACTIVATIONS``.
    Returns:
        (outputs [T, B, P] in x's dtype, zero past each length; h_T [B, P] in x's dtype; c_T [B, N],
        float32, or float64 for float64 inputs).
    """
    T, B, _ = x.shape
    out_dtype = x.dtype
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection = (
        None if t is None else t.to(dtype) for t in (x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag,
                                                     projection))
    lengths = None if lengths is None else lengths.long()
    options = dict(forget_bias=forget_bias, cell_clip=cell_clip, proj_clip=proj_clip, activation=activation,
                   recurrent_activation=recurrent_activation)
    # NOTE: with lengths torch's LSTM runs a packed sequence on its own loop (oneDNN has no packed
    # LSTM); that took 2.4-3.6x the loop's time forward+backward (B=16-64, H=256-512), so lengths
    # take the loop. torch's LSTM also needs a step to take (the loop's op keeps x in the graph).
    if (T > 0 and B > 0 and lengths is None and not traced_or_vmapped()
            and torch_lstm_computes(w_f_diag is not None, projection, w_h.shape[1] // 4, **options)):
        out, h_T, c_T = torch_lstm_sequence(x, h0, c0, w_x, w_h, bias, projection, forget_bias,
                                            GATE_ORDERS[gate_order])
    else:
        out, h_T, c_T = loop_sequence(x, h0, c0, w_x, w_h, bias, w_f_diag, w_i_diag, w_o_diag, projection, lengths,
                                      **options, gate_order=gate_order)
        # A copy (the one a half-precision dtype makes anyway): as a view of the loop's state buffer
        # the outputs could not be detached in place (nn.LSTM's can).
        out = out.to(out_dtype, copy=True)
    return out.to(out_dtype), h_T.to(out_dtype), c_T
