"""Fused single-step LSTM kernels (TF LSTMCell semantics), forward and backward.

Dimensions:
    B  batch            D  input depth         N  num_units
    P  output width: num_proj with a projection, else N
    4N gate columns in TF order i, j, f, o

Each program owns a BLOCK_B slice of the batch. Without a projection the forward grid also splits
N across programs. With a projection the program walks every N tile first (the projection needs
the whole row of m), synchronises its own threads, then computes its rows of the projection:
one launch per step, at the price of fewer programs when B is small.
"""
import triton
import triton.language as tl

from .cell_math import cell_backward, cell_forward, clip, clip_grad


@triton.jit
def matmul_tile(acc, a_ptr, stride_am, stride_ak, o_m, mask_m,
                w_ptr, stride_wk, stride_wn, o_n, mask_n, K,
                BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc[BM, BN] += A[o_m, 0:K] @ W[0:K, o_n], fp32 accumulation over BLOCK_K chunks."""
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = o_k < K
        b_a = tl.load(a_ptr + o_m[:, None] * stride_am + o_k[None, :] * stride_ak,
                      mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_k[:, None] * stride_wk + o_n[None, :] * stride_wn,
                      mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(b_a.to(DOT_DTYPE), b_w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def store_gates(p_z, zi, zj, zf, zo, N, mask):
    """Store four [BLOCK_B, BLOCK_N] gate tiles at p_z (column offsets of gate i) + g * N."""
    tl.store(p_z, zi, mask=mask)
    tl.store(p_z + N, zj, mask=mask)
    tl.store(p_z + 2 * N, zf, mask=mask)
    tl.store(p_z + 3 * N, zo, mask=mask)


@triton.jit
def load_gates(p_z, N, mask):
    """The four gate tiles stored by ``store_gates``."""
    zi = tl.load(p_z, mask=mask, other=0.0)
    zj = tl.load(p_z + N, mask=mask, other=0.0)
    zf = tl.load(p_z + 2 * N, mask=mask, other=0.0)
    zo = tl.load(p_z + 3 * N, mask=mask, other=0.0)
    return zi, zj, zf, zo


@triton.jit
def load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES: tl.constexpr):
    if USE_PEEPHOLES:
        wi = tl.load(wi_ptr + o_n, mask=mask_n, other=0.0).to(tl.float32)
        wf = tl.load(wf_ptr + o_n, mask=mask_n, other=0.0).to(tl.float32)
        wo = tl.load(wo_ptr + o_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        wi = 0.0
        wf = 0.0
        wo = 0.0
    return wi, wf, wo


@triton.jit
def gate_preactivation(gate, x_ptr, stride_xb, h_ptr, stride_hb, w_ptr, b_ptr, o_b, mask_b, o_n, mask_n,
                       D, N, P, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """z[:, gate*N + o_n] = x @ kernel[:D] + h @ kernel[D:] + bias, one [BLOCK_B, BLOCK_N] tile."""
    col = gate * N + o_n
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    acc = matmul_tile(acc, x_ptr, stride_xb, 1, o_b, mask_b, w_ptr, 4 * N, 1, col, mask_n, D,
                      BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    acc = matmul_tile(acc, h_ptr, stride_hb, 1, o_b, mask_b, w_ptr + D * 4 * N, 4 * N, 1, col, mask_n, P,
                      BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    return acc + tl.load(b_ptr + col, mask=mask_n, other=0.0).to(tl.float32)[None, :]


@triton.jit
def lstm_step_fwd_kernel(
    x_ptr, stride_xb,            # [B, D] inputs of this step, rows strided
    h_ptr, stride_hb,            # [B, P] previous output m_prev, rows strided
    c_ptr,                       # [B, N] previous cell state (contiguous, any float dtype)
    w_ptr,                       # [D + P, 4N] kernel
    b_ptr,                       # [4N] bias
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    proj_ptr,                    # [N, P] projection kernel (unused without projection)
    z_ptr,                       # out [B, 4N] fp32 gate pre-activations, saved for backward
    c_out_ptr,                   # out [B, N] fp32 new cell state
    m_ptr,                       # out [B, N] pre-projection output (compute dtype); projection only
    y_ptr,                       # out [B, P] fp32 projection before its clip; proj_clip only
    h_out_ptr,                   # out [B, P] new output m (compute dtype)
    B, D, N, P,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Forward of one TF LSTMCell step. Grid: (cdiv(B, BLOCK_B), 1 if HAS_PROJ else cdiv(N, BLOCK_N))."""
    pid_b = tl.program_id(0)
    o_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = o_b < B
    n_begin = tl.program_id(1) * BLOCK_N
    if HAS_PROJ:
        n_end = N
    else:
        n_end = n_begin + BLOCK_N
    for n0 in range(n_begin, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = o_n < N
        mask = mask_b[:, None] & mask_n[None, :]
        zi = gate_preactivation(0, x_ptr, stride_xb, h_ptr, stride_hb, w_ptr, b_ptr, o_b, mask_b, o_n, mask_n,
                                D, N, P, BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        zj = gate_preactivation(1, x_ptr, stride_xb, h_ptr, stride_hb, w_ptr, b_ptr, o_b, mask_b, o_n, mask_n,
                                D, N, P, BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        zf = gate_preactivation(2, x_ptr, stride_xb, h_ptr, stride_hb, w_ptr, b_ptr, o_b, mask_b, o_n, mask_n,
                                D, N, P, BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        zo = gate_preactivation(3, x_ptr, stride_xb, h_ptr, stride_hb, w_ptr, b_ptr, o_b, mask_b, o_n, mask_n,
                                D, N, P, BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        store_gates(z_ptr + o_b[:, None] * (4 * N) + o_n[None, :], zi, zj, zf, zo, N, mask)
        p_c = o_b[:, None] * N + o_n[None, :]
        c_prev = tl.load(c_ptr + p_c, mask=mask, other=0.0).to(tl.float32)
        wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
        c, m = cell_forward(zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                            ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)
        tl.store(c_out_ptr + p_c, c, mask=mask)
        if HAS_PROJ:
            tl.store(m_ptr + p_c, m.to(m_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(h_out_ptr + p_c, m.to(h_out_ptr.dtype.element_ty), mask=mask)
    if HAS_PROJ:
        # m of this program's rows was written by all of its threads; make it visible to all of them.
        tl.debug_barrier()
        for p0 in range(0, P, BLOCK_N):
            o_p = p0 + tl.arange(0, BLOCK_N)
            mask_p = o_p < P
            mask = mask_b[:, None] & mask_p[None, :]
            y = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            y = matmul_tile(y, m_ptr, N, 1, o_b, mask_b, proj_ptr, P, 1, o_p, mask_p, N,
                            BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
            p_y = o_b[:, None] * P + o_p[None, :]
            if HAS_PROJ_CLIP:
                tl.store(y_ptr + p_y, y, mask=mask)
                y = clip(y, proj_clip)
            tl.store(h_out_ptr + p_y, y.to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_step_bwd_kernel(
    dh_ptr,                      # [B, P] fp32 gradient of the new m (output and state together)
    dc_ptr,                      # [B, N] fp32 gradient of the new cell state
    z_ptr,                       # [B, 4N] fp32 gate pre-activations from the forward
    c_ptr,                       # [B, N] previous cell state (contiguous, any float dtype)
    w_ptr,                       # [D + P, 4N] kernel
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    proj_ptr,                    # [N, P] projection kernel (unused without projection)
    y_ptr,                       # [B, P] fp32 projection before its clip; proj_clip only
    dy_ptr,                      # out [B, P] fp32 gradient of the projection before its clip; projection only
    dz_ptr,                      # out [B, 4N] fp32 gradient of the gate pre-activations
    dc_prev_ptr,                 # out [B, N] fp32 gradient of the previous cell state
    dx_ptr,                      # out [B, D] gradient of the inputs
    dh_prev_ptr,                 # out [B, P] gradient of the previous m
    B, D, N, P,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward of one step for BLOCK_B rows: dz, dc_prev, dx, dh_prev. Grid: (cdiv(B, BLOCK_B),).

    Weight gradients are batch reductions of dz (and dy); the host forms them as GEMMs afterwards,
    which keeps them deterministic.
    """
    o_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = o_b < B
    if HAS_PROJ:
        for p0 in range(0, P, BLOCK_N):
            o_p = p0 + tl.arange(0, BLOCK_N)
            mask = mask_b[:, None] & (o_p < P)[None, :]
            p_y = o_b[:, None] * P + o_p[None, :]
            dy = tl.load(dh_ptr + p_y, mask=mask, other=0.0)
            if HAS_PROJ_CLIP:
                dy = clip_grad(dy, tl.load(y_ptr + p_y, mask=mask, other=0.0), proj_clip)
            tl.store(dy_ptr + p_y, dy, mask=mask)
        tl.debug_barrier()
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = o_n < N
        mask = mask_b[:, None] & mask_n[None, :]
        p_c = o_b[:, None] * N + o_n[None, :]
        if HAS_PROJ:
            dm = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            dm = matmul_tile(dm, dy_ptr, P, 1, o_b, mask_b, proj_ptr, 1, P, o_n, mask_n, P,
                             BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        else:
            dm = tl.load(dh_ptr + p_c, mask=mask, other=0.0)
        zi, zj, zf, zo = load_gates(z_ptr + o_b[:, None] * (4 * N) + o_n[None, :], N, mask)
        c_prev = tl.load(c_ptr + p_c, mask=mask, other=0.0).to(tl.float32)
        dc_next = tl.load(dc_ptr + p_c, mask=mask, other=0.0)
        wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
        dzi, dzj, dzf, dzo, dc_prev = cell_backward(dm, dc_next, zi, zj, zf, zo, c_prev, wi, wf, wo,
                                                    forget_bias, cell_clip, ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)
        store_gates(dz_ptr + o_b[:, None] * (4 * N) + o_n[None, :], dzi, dzj, dzf, dzo, N, mask)
        tl.store(dc_prev_ptr + p_c, dc_prev, mask=mask)
    # dz of this program's rows is complete; every thread reads all of it below.
    tl.debug_barrier()
    for d0 in range(0, D, BLOCK_N):
        o_d = d0 + tl.arange(0, BLOCK_N)
        mask_d = o_d < D
        dx = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        dx = matmul_tile(dx, dz_ptr, 4 * N, 1, o_b, mask_b, w_ptr, 1, 4 * N, o_d, mask_d, 4 * N,
                         BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        tl.store(dx_ptr + o_b[:, None] * D + o_d[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=mask_b[:, None] & mask_d[None, :])
    for p0 in range(0, P, BLOCK_N):
        o_p = p0 + tl.arange(0, BLOCK_N)
        mask_p = o_p < P
        dh = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        dh = matmul_tile(dh, dz_ptr, 4 * N, 1, o_b, mask_b, w_ptr + D * 4 * N, 1, 4 * N, o_p, mask_p, 4 * N,
                         BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
        tl.store(dh_prev_ptr + o_b[:, None] * P + o_p[None, :], dh.to(dh_prev_ptr.dtype.element_ty),
                 mask=mask_b[:, None] & mask_p[None, :])
