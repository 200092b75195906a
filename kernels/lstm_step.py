"""Fused single-step LSTM kernels (TF LSTMCell semantics), forward and backward.

Dimensions:
    B  batch            D  input depth         N  num_units
    P  output width: num_proj with a projection, else N
    4N gate columns in TF order i, j, f, o

Every kernel's grid is batch tiles x column slices, so a step fills the GPU at moderate batch:
    lstm_step_fwd_kernel   BLOCK_N units with all four gates: one fused product over x and h
    lstm_step_proj_kernel  BLOCK_P columns of the projection m @ projection (LSTMP only)
    lstm_step_bwd_kernel   BLOCK_N units: dm (dy @ projection^T with a projection), then dz and dc
The backward's dx and dh_prev (dz @ kernel^T) and the weight gradients are GEMMs on the host.
Row offsets are 64-bit: x may be a time slice of a batch-first tensor, whose row stride is T * D,
so that a row's offset passes 2^31 long before x itself has 2^31 elements.
"""
import triton
import triton.language as tl

from .cell_math import clip
from .lstm_sequence import bwd_gate_phase
from .lstm_tiles import gate_columns, gates_and_cell, load_peepholes, rows_and_slice, streamed_product


@triton.jit
def lstm_step_fwd_kernel(
    x_ptr, stride_xb,            # [B, D] inputs of this step, rows strided
    h_ptr, stride_hb,            # [B, P] previous output m_prev, rows strided
    c_ptr,                       # [B, N] previous cell state (contiguous, any float dtype)
    w_ptr,                       # [D + P, 4N] kernel
    b_ptr,                       # [4N] bias
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    z_ptr,                       # out [B, 4N] fp32 gate pre-activations, saved for backward
    c_out_ptr,                   # out [B, N] fp32 new cell state
    h_out_ptr,                   # out [B, N] m: the new output, or the projection's input (compute dtype)
    B, D, N, P,
    forget_bias, cell_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Gates and cell update of one TF LSTMCell step. Grid: cdiv(B, BLOCK_B) * cdiv(N, BLOCK_N)."""
    o_b, mask_b, n0 = rows_and_slice(tl.program_id(0), B, N, BLOCK_B, BLOCK_N)
    o_b = o_b.to(tl.int64)
    o_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = o_n < N
    mask = mask_b[:, None] & mask_n[None, :]
    cols, mask_c = gate_columns(n0, N, BLOCK_N)
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_N), dtype=tl.float32)
    acc += tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    acc = streamed_product(acc, x_ptr, stride_xb, o_b, mask_b, D, w_ptr, 4 * N, cols, 1, mask_c,
                           BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    acc = streamed_product(acc, h_ptr, stride_hb, o_b, mask_b, P, w_ptr + D * 4 * N, 4 * N, cols, 1, mask_c,
                           BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    p_c = o_b[:, None] * N + o_n[None, :]
    c_prev = tl.load(c_ptr + p_c, mask=mask, other=0.0).to(tl.float32)
    wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
    c, m = gates_and_cell(acc, z_ptr, z_ptr, o_b[:, None] * (4 * N) + o_n[None, :], c_prev, wi, wf, wo,
                          forget_bias, cell_clip, N, mask, ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP, False,
                          BLOCK_B, BLOCK_N)
    tl.store(c_out_ptr + p_c, c, mask=mask)
    tl.store(h_out_ptr + p_c, m.to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_step_proj_kernel(
    m_ptr,                       # [B, N] pre-projection output (compute dtype)
    proj_ptr,                    # [N, P] projection kernel
    y_ptr,                       # out [B, P] fp32 projection before its clip; proj_clip only
    h_out_ptr,                   # out [B, P] new output
    B, N, P, proj_clip,
    HAS_PROJ_CLIP: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """h = clip(m @ projection). Grid: cdiv(B, BLOCK_B) * cdiv(P, BLOCK_P)."""
    o_b, mask_b, p0 = rows_and_slice(tl.program_id(0), B, P, BLOCK_B, BLOCK_P)
    o_b = o_b.to(tl.int64)
    o_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = o_p < P
    y = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    y = streamed_product(y, m_ptr, N, o_b, mask_b, N, proj_ptr, P, o_p, 1, mask_p, BLOCK_K, DOT_DTYPE,
                         INPUT_PRECISION)
    p_y = o_b[:, None] * P + o_p[None, :]
    mask = mask_b[:, None] & mask_p[None, :]
    if HAS_PROJ_CLIP:
        tl.store(y_ptr + p_y, y, mask=mask)
        y = clip(y, proj_clip)
    tl.store(h_out_ptr + p_y, y.to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_step_bwd_kernel(
    dy_ptr,                      # [B, P] fp32 gradient of the new output before the projection's clip
    dc_ptr,                      # [B, N] fp32 gradient of the new cell state
    z_ptr,                       # [B, 4N] fp32 gate pre-activations from the forward
    c_ptr,                       # [B, N] previous cell state (contiguous, any float dtype)
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    proj_ptr,                    # [N, P] projection kernel (unused without projection)
    dz_ptr,                      # out [B, 4N] fp32 gradient of the gate pre-activations
    dc_prev_ptr,                 # out [B, N] fp32 gradient of the previous cell state
    B, N, P,
    forget_bias, cell_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dz and dc_prev of one step for BLOCK_B rows and BLOCK_N units: the persistent backward's gate
    phase at t = 0 of a one-step sequence. Grid: cdiv(B, BLOCK_B) * cdiv(N, BLOCK_N)."""
    o_b, mask_b, n0 = rows_and_slice(tl.program_id(0), B, N, BLOCK_B, BLOCK_N)
    o_b = o_b.to(tl.int64)
    o_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = o_n < N
    p_c = o_b[:, None] * N + o_n[None, :]
    mask = mask_b[:, None] & mask_n[None, :]
    dm = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    if not HAS_PROJ:
        dm = tl.load(dy_ptr + p_c, mask=mask, other=0.0)
    dc = tl.load(dc_ptr + p_c, mask=mask, other=0.0)
    wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
    _, _, _, _, dc_prev = bwd_gate_phase(0, dm, dc, z_ptr, c_ptr, dz_ptr, dy_ptr, dy_ptr, (), proj_ptr, wi, wf, wo,
                                 o_b, mask_b, o_n, mask_n, 1, B, N, P, forget_bias, cell_clip, ACT, GATE_ACT,
                                 USE_PEEPHOLES, HAS_CELL_CLIP, HAS_PROJ, False, False, 0, DOT_DTYPE,
                                 INPUT_PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
    tl.store(dc_prev_ptr + p_c, dc_prev, mask=mask)
