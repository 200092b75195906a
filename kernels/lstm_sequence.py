"""Persistent LSTM sequence kernels: all T steps of one layer and direction in one launch.

Dimensions:
    T  steps            B  batch            N  num_units
    P  output width: num_proj with a projection, else N
    G  programs in the grid (all co-resident; each owns tiles round-robin)

The input GEMM (x @ W_x + bias for every step) is hoisted to the host as one large GEMM; the
kernels run the recurrence. Steps exchange state through global memory:
    hbuf [T+1, B, P]  h entering step t at hbuf[t] (hbuf[0] = h0), written once, never reused,
    cbuf [T+1, B, N]  c likewise, fp32; a tile of c is only ever read by the program that wrote it,
so no buffer is overwritten while another program may still read it, and one grid barrier per
dependent phase suffices: forward 1 per step (2 with a projection), backward 2 per step.

Variable lengths: rows with t >= length[b] output exactly 0 and carry h and c through; in the
backward their gate gradients are 0 and the state gradients are carried through.

Under Triton's interpreter programs run one after another, so a barrier between programs can
never complete. There the host either launches one program (the barrier is then trivially
satisfied and the whole kernel runs as on the GPU) or launches one phase of one step at a time
with USE_BARRIER=False, which exercises the tile ownership of a multi-program grid.
"""
import triton
import triton.language as tl

from .cell_math import cell_backward, cell_forward, clip, clip_grad
from .lstm_step import load_gates, load_peepholes, matmul_tile, store_gates


@triton.jit
def grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER: tl.constexpr):
    """Wait until every program has arrived here ``n_passed + 1`` times in total.

    sync_ptr[0] counts arrivals (zeroed before the launch); sync_ptr[1] is set to 1 if the wait
    gave up after max_spins polls, which only happens if the grid was not co-resident: the kernel
    then finishes with wrong results instead of hanging the GPU, and the host can check the flag.
    """
    if USE_BARRIER:
        target = (n_passed + 1) * tl.num_programs(0)
        # Every thread's writes of this phase are ordered before the release below.
        tl.debug_barrier()
        tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
        arrived = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        spins = tl.full([], 0, tl.int32)
        while (arrived < target) & (spins < max_spins):
            arrived = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        if arrived < target:
            tl.atomic_xchg(sync_ptr + 1, 1)
        tl.debug_barrier()
    return n_passed + 1


@triton.jit
def tile_offsets(tile, n_btiles, B, n_cols, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows and columns of tile number ``tile`` (batch tiles vary fastest) and their masks."""
    o_b = (tile % n_btiles) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_n = (tile // n_btiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_b = o_b < B
    mask_n = o_n < n_cols
    return o_b, o_n, mask_b, mask_n, mask_b[:, None] & mask_n[None, :]


@triton.jit
def row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B] bool: row b takes part in step t (t < T and t < length[b])."""
    # t as a [BLOCK_B] vector: the interpreter types (bool vector & bool scalar) as int32.
    t_b = o_b * 0 + t
    valid = mask_b & (t_b < T) & (t_b >= 0)
    if HAS_LENGTHS:
        valid = valid & (t_b < tl.load(len_ptr + o_b, mask=mask_b, other=0))
    return valid


@triton.jit
def recurrent_gate(gate, xw_ptr, h_ptr, w_ptr, o_b, mask_b, o_n, mask_n, N, P,
                   BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """z[:, gate*N + o_n] of one step = xw (hoisted x @ W_x + bias) + h_prev @ W_h."""
    col = gate * N + o_n
    mask = mask_b[:, None] & mask_n[None, :]
    acc = tl.load(xw_ptr + o_b[:, None] * (4 * N) + col[None, :], mask=mask, other=0.0).to(tl.float32)
    return matmul_tile(acc, h_ptr, P, 1, o_b, mask_b, w_ptr, 4 * N, 1, col, mask_n, P,
                       BLOCK_K, DOT_DTYPE, INPUT_PRECISION)


@triton.jit
def lstm_seq_fwd_kernel(
    xw_ptr,                      # [T, B, 4N] x @ W_x + bias for every step (compute dtype)
    w_ptr,                       # [P, 4N] recurrent kernel W_h (TF kernel rows D:), gates i, j, f, o
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    proj_ptr,                    # [N, P] projection kernel (unused without projection)
    len_ptr,                     # [B] int32 sequence lengths (unused without lengths)
    hbuf_ptr,                    # [T+1, B, P] in/out: hbuf[0] = h0; hbuf[t+1] = h state after step t
    cbuf_ptr,                    # [T+1, B, N] fp32 in/out: cbuf[0] = c0; cbuf[t+1] = c after step t
    z_ptr,                       # out [T, B, 4N] fp32 gate pre-activations, saved for backward
    m_ptr,                       # out [T, B, N] pre-projection output (compute dtype); projection only
    y_ptr,                       # out [T, B, P] fp32 projection before its clip; proj_clip only
    out_ptr,                     # out [T, B, P] outputs, exactly 0 past a row's length
    sync_ptr,                    # [2] int32 barrier counter and timeout flag, zeroed
    t_first, n_steps, T, B, N, P, max_spins,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    PHASES: tl.constexpr, USE_BARRIER: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Steps t_first .. t_first + n_steps - 1 of the forward recurrence. PHASES: 1 gates, 2 projection, 3 both."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_btiles = tl.cdiv(B, BLOCK_B)
    n_gate_tiles = n_btiles * tl.cdiv(N, BLOCK_N)
    n_proj_tiles = n_btiles * tl.cdiv(P, BLOCK_N)
    n_passed = tl.full([], 0, tl.int32)
    for i in range(0, n_steps):
        t = t_first + i
        t64 = t.to(tl.int64)
        if PHASES & 1:
            for tile in range(pid, n_gate_tiles, n_programs):
                o_b, o_n, mask_b, mask_n, mask = tile_offsets(tile, n_btiles, B, N, BLOCK_B, BLOCK_N)
                valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
                xw_t = xw_ptr + t64 * B * 4 * N
                h_t = hbuf_ptr + t64 * B * P
                zi = recurrent_gate(0, xw_t, h_t, w_ptr, o_b, mask_b, o_n, mask_n, N, P,
                                    BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                zj = recurrent_gate(1, xw_t, h_t, w_ptr, o_b, mask_b, o_n, mask_n, N, P,
                                    BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                zf = recurrent_gate(2, xw_t, h_t, w_ptr, o_b, mask_b, o_n, mask_n, N, P,
                                    BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                zo = recurrent_gate(3, xw_t, h_t, w_ptr, o_b, mask_b, o_n, mask_n, N, P,
                                    BLOCK_B, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                store_gates(z_ptr + t64 * B * 4 * N + o_b[:, None] * (4 * N) + o_n[None, :], zi, zj, zf, zo, N,
                            mask)
                p_c = o_b[:, None] * N + o_n[None, :]
                c_prev = tl.load(cbuf_ptr + t64 * B * N + p_c, mask=mask, other=0.0)
                wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
                c, m = cell_forward(zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                                    ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)
                tl.store(cbuf_ptr + (t64 + 1) * B * N + p_c, tl.where(valid, c, c_prev), mask=mask)
                if HAS_PROJ:
                    tl.store(m_ptr + t64 * B * N + p_c, m.to(m_ptr.dtype.element_ty), mask=mask)
                else:
                    h_prev = tl.load(h_t + p_c, mask=mask, other=0.0)
                    h = m.to(hbuf_ptr.dtype.element_ty)
                    tl.store(hbuf_ptr + (t64 + 1) * B * P + p_c, tl.where(valid, h, h_prev), mask=mask)
                    tl.store(out_ptr + t64 * B * P + p_c, tl.where(valid, h, 0.0), mask=mask)
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
        if HAS_PROJ and (PHASES & 2):
            for tile in range(pid, n_proj_tiles, n_programs):
                o_b, o_p, mask_b, mask_p, mask = tile_offsets(tile, n_btiles, B, P, BLOCK_B, BLOCK_N)
                valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
                y = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                y = matmul_tile(y, m_ptr + t64 * B * N, N, 1, o_b, mask_b, proj_ptr, P, 1, o_p, mask_p, N,
                                BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                p_y = o_b[:, None] * P + o_p[None, :]
                if HAS_PROJ_CLIP:
                    tl.store(y_ptr + t64 * B * P + p_y, y, mask=mask)
                    y = clip(y, proj_clip)
                h_prev = tl.load(hbuf_ptr + t64 * B * P + p_y, mask=mask, other=0.0)
                h = y.to(hbuf_ptr.dtype.element_ty)
                tl.store(hbuf_ptr + (t64 + 1) * B * P + p_y, tl.where(valid, h, h_prev), mask=mask)
                tl.store(out_ptr + t64 * B * P + p_y, tl.where(valid, h, 0.0), mask=mask)
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)


@triton.jit
def bwd_state_phase(t, dout_ptr, dh_ptr, dz_ptr, w_ptr, y_ptr, dy_ptr, len_ptr, pid, n_programs,
                    T, B, N, P, proj_clip,
                    HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient of the h state entering step t+1 (dh), then of step t's output before its clip (dy[t]).

    dh = dz[t+1] @ W_h^T for rows that ran step t+1, else carried; dy[t] = clip'(dout[t] + dh)
    for rows that run step t, else 0. Each (rows, columns) tile of dh is read and written by one
    program only.
    """
    n_btiles = tl.cdiv(B, BLOCK_B)
    n_tiles = n_btiles * tl.cdiv(P, BLOCK_N)
    t64 = t.to(tl.int64)
    for tile in range(pid, n_tiles, n_programs):
        o_b, o_p, mask_b, mask_p, mask = tile_offsets(tile, n_btiles, B, P, BLOCK_B, BLOCK_N)
        p_h = o_b[:, None] * P + o_p[None, :]
        dh = tl.load(dh_ptr + p_h, mask=mask, other=0.0)
        ran_next = row_valid(t + 1, o_b, mask_b, len_ptr, T, HAS_LENGTHS)
        if t + 1 < T:
            acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            acc = matmul_tile(acc, dz_ptr + (t64 + 1) * B * 4 * N, 4 * N, 1, o_b, ran_next, w_ptr, 1, 4 * N,
                              o_p, mask_p, 4 * N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
            dh = tl.where(ran_next[:, None], acc, dh)
        tl.store(dh_ptr + p_h, dh, mask=mask)
        if t >= 0:
            runs = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
            dy = tl.load(dout_ptr + t64 * B * P + p_h, mask=mask, other=0.0).to(tl.float32) + dh
            if HAS_PROJ_CLIP:
                dy = clip_grad(dy, tl.load(y_ptr + t64 * B * P + p_h, mask=mask, other=0.0), proj_clip)
            tl.store(dy_ptr + t64 * B * P + p_h, tl.where(runs, dy, 0.0), mask=mask)


@triton.jit
def lstm_seq_bwd_kernel(
    dout_ptr,                    # [T, B, P] gradient of the outputs
    dh_ptr,                      # [B, P] fp32 in/out: gradient of the final h in, of h0 out
    dc_ptr,                      # [B, N] fp32 in/out: gradient of the final c in, of c0 out
    z_ptr,                       # [T, B, 4N] fp32 gate pre-activations from the forward
    cbuf_ptr,                    # [T+1, B, N] fp32 cell states from the forward
    w_ptr,                       # [P, 4N] recurrent kernel W_h
    wi_ptr, wf_ptr, wo_ptr,      # [N] peephole weights (unused without peepholes)
    proj_ptr,                    # [N, P] projection kernel (unused without projection)
    y_ptr,                       # [T, B, P] fp32 projection before its clip; proj_clip only
    len_ptr,                     # [B] int32 sequence lengths (unused without lengths)
    dy_ptr,                      # out [T, B, P] fp32 gradient of each step's output before its clip
    dz_ptr,                      # out [T, B, 4N] fp32 gradient of the gate pre-activations
    sync_ptr,                    # [2] int32 barrier counter and timeout flag, zeroed
    t_first, n_steps, T, B, N, P, max_spins,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    PROLOGUE: tl.constexpr, PHASES: tl.constexpr, USE_BARRIER: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Steps t_first, t_first - 1, ... (n_steps of them) of the reverse recurrence.

    PROLOGUE computes dy[T-1] from the final-state gradient first (t_first must be T-1 then).
    PHASES: 1 gate gradients of step t, 2 state gradient entering step t, 3 both.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_btiles = tl.cdiv(B, BLOCK_B)
    n_gate_tiles = n_btiles * tl.cdiv(N, BLOCK_N)
    n_passed = tl.full([], 0, tl.int32)
    if PROLOGUE:
        bwd_state_phase(t_first, dout_ptr, dh_ptr, dz_ptr, w_ptr, y_ptr, dy_ptr, len_ptr, pid, n_programs,
                        T, B, N, P, proj_clip, HAS_PROJ_CLIP, HAS_LENGTHS, DOT_DTYPE, INPUT_PRECISION,
                        BLOCK_B, BLOCK_N, BLOCK_K)
        n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
    for i in range(0, n_steps):
        t = t_first - i
        t64 = t.to(tl.int64)
        if PHASES & 1:
            for tile in range(pid, n_gate_tiles, n_programs):
                o_b, o_n, mask_b, mask_n, mask = tile_offsets(tile, n_btiles, B, N, BLOCK_B, BLOCK_N)
                valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
                p_c = o_b[:, None] * N + o_n[None, :]
                if HAS_PROJ:
                    dm = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                    dm = matmul_tile(dm, dy_ptr + t64 * B * P, P, 1, o_b, mask_b, proj_ptr, 1, P, o_n, mask_n, P,
                                     BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
                else:
                    dm = tl.load(dy_ptr + t64 * B * P + p_c, mask=mask, other=0.0)
                p_z = t64 * B * 4 * N + o_b[:, None] * (4 * N) + o_n[None, :]
                zi, zj, zf, zo = load_gates(z_ptr + p_z, N, mask)
                c_prev = tl.load(cbuf_ptr + t64 * B * N + p_c, mask=mask, other=0.0)
                dc_next = tl.load(dc_ptr + p_c, mask=mask, other=0.0)
                wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
                dzi, dzj, dzf, dzo, dc_prev = cell_backward(dm, dc_next, zi, zj, zf, zo, c_prev, wi, wf, wo,
                                                            forget_bias, cell_clip,
                                                            ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)
                store_gates(dz_ptr + p_z, tl.where(valid, dzi, 0.0), tl.where(valid, dzj, 0.0),
                            tl.where(valid, dzf, 0.0), tl.where(valid, dzo, 0.0), N, mask)
                tl.store(dc_ptr + p_c, tl.where(valid, dc_prev, dc_next), mask=mask)
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
        if PHASES & 2:
            bwd_state_phase(t - 1, dout_ptr, dh_ptr, dz_ptr, w_ptr, y_ptr, dy_ptr, len_ptr, pid, n_programs,
                            T, B, N, P, proj_clip, HAS_PROJ_CLIP, HAS_LENGTHS, DOT_DTYPE, INPUT_PRECISION,
                            BLOCK_B, BLOCK_N, BLOCK_K)
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
