"""Pointwise LSTM math shared by every kernel: activations, clips, the cell update and its gradient.

Dimensions (all tiles are [BLOCK_B, BLOCK_N], fp32):
    zi, zj, zf, zo   pre-activation gates (GEMM + bias, before forget_bias and peepholes)
    c_prev           cell state entering the step
    wi, wf, wo       peephole weights, [BLOCK_N] broadcast over rows

ACT is the cell activation (candidate j and output), GATE_ACT the gates' (TF: sigmoid; Keras'
``recurrent_activation``). Activation ids are fixed here and mirrored by ``triton_lstm.activations``.
Every min/max propagates NaN, as torch does: a NaN never becomes a clip bound.
"""
import triton
import triton.language as tl

ACT_TANH = tl.constexpr(0)
ACT_RELU = tl.constexpr(1)
ACT_SIGMOID = tl.constexpr(2)
ACT_LINEAR = tl.constexpr(3)
ACT_SOFTSIGN = tl.constexpr(4)
ACT_HARD_SIGMOID = tl.constexpr(5)
ACT_ELU = tl.constexpr(6)
ACT_HARDSIGMOID = tl.constexpr(7)
NAN = tl.constexpr(tl.PropagateNan.ALL)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # exp(-2|x|) <= 1 never overflows, unlike exp(2x).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def activation(x, ACT: tl.constexpr):
    """Forward of an activation (Keras semantics; hard_sigmoid is Keras 2's 0.2x+0.5, hardsigmoid torch's x/6+0.5)."""
    if ACT == ACT_TANH:
        y = tanh(x)
    elif ACT == ACT_RELU:
        y = tl.maximum(x, 0.0, propagate_nan=NAN)
    elif ACT == ACT_SIGMOID:
        y = sigmoid(x)
    elif ACT == ACT_LINEAR:
        y = x
    elif ACT == ACT_SOFTSIGN:
        y = x / (1.0 + tl.abs(x))
    elif ACT == ACT_HARD_SIGMOID:
        y = clip01(0.2 * x + 0.5)
    elif ACT == ACT_HARDSIGMOID:
        y = clip01(x / 6.0 + 0.5)
    else:
        y = tl.where(x > 0.0, x, tl.exp(x) - 1.0)
    return y


@triton.jit
def activation_vjp(dy, x, ACT: tl.constexpr):
    """dy * d activation(x) / dx as torch's derivatives compute it, NaN included: relu passes dy where
    x > 0 or x is NaN, the hard sigmoids select dy inside their clip bounds (inclusive for Keras 2's,
    open for torch's) and 0 elsewhere and at NaN; elu multiplies by exp(x) where x > 0 is false, NaN
    too, as aten's vectorised CPU elu_backward (NaN even for dy = 0; its CUDA and scalar forms pass dy
    at NaN: torch differs from itself there, and this keeps the NaN)."""
    if ACT == ACT_TANH:
        t = tanh(x)
        g = dy * (1.0 - t * t)
    elif ACT == ACT_RELU:
        g = tl.where(x <= 0.0, 0.0, dy)
    elif ACT == ACT_SIGMOID:
        s = sigmoid(x)
        g = dy * (s * (1.0 - s))
    elif ACT == ACT_LINEAR:
        g = dy
    elif ACT == ACT_SOFTSIGN:
        a = 1.0 + tl.abs(x)
        g = dy * (1.0 / (a * a))
    elif ACT == ACT_HARD_SIGMOID:
        lin = 0.2 * x + 0.5
        g = tl.where((lin >= 0.0) & (lin <= 1.0), dy * 0.2, 0.0)
    elif ACT == ACT_HARDSIGMOID:
        g = tl.where((x > -3.0) & (x < 3.0), dy * (1.0 / 6.0), 0.0)
    else:
        g = dy * tl.where(x > 0.0, 1.0, tl.exp(x))
    return g


@triton.jit
def clip(x, bound):
    return tl.minimum(tl.maximum(x, -bound, propagate_nan=NAN), bound, propagate_nan=NAN)


@triton.jit
def clip01(x):
    return tl.minimum(tl.maximum(x, 0.0, propagate_nan=NAN), 1.0, propagate_nan=NAN)


@triton.jit
def clip_grad(dy, x, bound):
    # Inclusive at both bounds, NaN gets 0: TF's min/max gradients and torch.clamp agree on this.
    return tl.where((x >= -bound) & (x <= bound), dy, 0.0)


@triton.jit
def gate_vjp(dy, a, s, GATE_ACT: tl.constexpr):
    """dy * d gate / d pre-activation a, given the gate value s = GATE_ACT(a)."""
    if GATE_ACT == ACT_SIGMOID:
        g = dy * (s * (1.0 - s))
    else:
        g = activation_vjp(dy, a, GATE_ACT)
    return g


@triton.jit
def input_forget_preactivations(zi, zf, c_prev, wi, wf, forget_bias, USE_PEEPHOLES: tl.constexpr):
    if USE_PEEPHOLES:
        ai = zi + wi[None, :] * c_prev
        af = zf + forget_bias + wf[None, :] * c_prev
    else:
        ai = zi
        af = zf + forget_bias
    return ai, af


@triton.jit
def output_preactivation(zo, c, wo, USE_PEEPHOLES: tl.constexpr):
    if USE_PEEPHOLES:
        ao = zo + wo[None, :] * c
    else:
        ao = zo
    return ao


@triton.jit
def cell_forward(zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                 ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr,
                 HAS_CELL_CLIP: tl.constexpr):
    """One step of TF's LSTMCell after the gate GEMM. Returns (new clipped c, pre-projection m)."""
    ai, af = input_forget_preactivations(zi, zf, c_prev, wi, wf, forget_bias, USE_PEEPHOLES)
    c = activation(af, GATE_ACT) * c_prev + activation(ai, GATE_ACT) * activation(zj, ACT)
    if HAS_CELL_CLIP:
        c = clip(c, cell_clip)
    so = activation(output_preactivation(zo, c, wo, USE_PEEPHOLES), GATE_ACT)
    return c, so * activation(c, ACT)


@triton.jit
def cell_backward(dm, dc_next, zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                  ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr,
                  HAS_CELL_CLIP: tl.constexpr):
    """Gradient of ``cell_forward``, recomputing its pointwise values from the stored gates.

    dm: grad of the pre-projection output m; dc_next: grad of the new cell state.
    Returns (dzi, dzj, dzf, dzo, dc_prev).
    """
    ai, af = input_forget_preactivations(zi, zf, c_prev, wi, wf, forget_bias, USE_PEEPHOLES)
    si = activation(ai, GATE_ACT)
    sf = activation(af, GATE_ACT)
    aj = activation(zj, ACT)
    c_raw = sf * c_prev + si * aj
    if HAS_CELL_CLIP:
        c = clip(c_raw, cell_clip)
    else:
        c = c_raw
    ao = output_preactivation(zo, c, wo, USE_PEEPHOLES)
    so = activation(ao, GATE_ACT)
    ac = activation(c, ACT)
    dzo = gate_vjp(dm * ac, ao, so, GATE_ACT)
    dc = dc_next + activation_vjp(dm * so, c, ACT)
    if USE_PEEPHOLES:
        dc += dzo * wo[None, :]
    if HAS_CELL_CLIP:
        dc = clip_grad(dc, c_raw, cell_clip)
    dzf = gate_vjp(dc * c_prev, af, sf, GATE_ACT)
    dzi = gate_vjp(dc * aj, ai, si, GATE_ACT)
    dzj = activation_vjp(dc * si, zj, ACT)
    dc_prev = dc * sf
    if USE_PEEPHOLES:
        dc_prev += dzf * wf[None, :] + dzi * wi[None, :]
    return dzi, dzj, dzf, dzo, dc_prev
