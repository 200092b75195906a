"""Persistent, weights-stationary LSTM kernels: all T steps of one layer and direction in one launch.

Dimensions:
    T  steps            B  batch            N  num_units
    P  output width: num_proj with a projection, else N
    G  programs, all co-resident (launched cooperatively); G = batch tiles x column slices

Ownership. A program owns BLOCK_B batch rows and
    - in the gate phase, BLOCK_N hidden units with all four of their gates: its slice of the
      recurrent kernel W_h [P, 4 * BLOCK_N] is loaded once, before the time loop, and stays on chip
      (RESIDENT); the cell state of its units stays in registers; per step it reads h_{t-1} of its
      rows once and computes the four gate tiles in one fused product;
    - in the projection phase (LSTMP), BLOCK_P output columns, with its projection slice
      [N, BLOCK_P] resident too.
  The backward kernel keeps the same W_h slice, used transposed: a program multiplies the gate
  gradients of its units by it, W_h[:, its gate columns] @ dz^T, which is its share of
  dh_{t-1} = dz_t @ W_h^T; the owner of each column of dh sums the shares in a fixed order
  (deterministic). With a projection it also keeps projection[n-slice, :]^T [P, BLOCK_N] for
  dm_t = dy_t @ projection^T. Without RESIDENT the same slices are streamed from memory every step
  (sizes whose weights do not fit on chip).

Barriers per step (the minimum the dependencies allow: every program needs all of the previous
phase's output):
    forward  1 (gates -> h), 2 with a projection (gates -> m, projection -> h)
    backward 1 (summing the shares of dh, the gate gradients and the new shares of a slice are
             one program's), 2 with a projection (dh, dy -> dm, dz, shares)

The input GEMM (x @ W_x + bias for every step) is hoisted to the host; the weight gradients are
GEMMs after the backward recurrence. Steps exchange state through write-once global buffers
(hbuf [T+1, B, P], cbuf [T+1, B, N] fp32, m, dz, dy; the backward's shares of dh alternate
between two buffers), so no buffer is overwritten while another program may still read it.

Variable lengths: rows with t >= length[b] output exactly 0 and carry h and c through; in the
backward their gate gradients are 0 and the state gradients are carried through.

Under Triton's interpreter programs run one after another, so a barrier between programs can never
complete. There the host launches either one program (the barrier is then trivially satisfied and
the whole kernel runs as on the GPU) or one phase of one step at a time with USE_BARRIER=False (the
schedule a stepped configuration runs on a GPU too); the state a program carries in registers is
loaded at the start of a launch and stored at its end, so both schedules compute the same thing.
"""
import triton
import triton.language as tl

from .cell_math import cell_backward, clip, clip_grad
from .lstm_tiles import (gate_columns, gates_and_cell, join_gates, load_gates, load_peepholes, load_slice,
                         load_tile, product, rows_and_slice, store_gates)

# Set in the barrier counter by a program whose wait timed out: every waiting program, at this and
# every later barrier of the launch, then passes at once; the host reads it as the failure flag.
# Arrivals stay below it (the host steps a launch that would reach it).
BARRIER_FAILED = tl.constexpr(1 << 30)


@triton.jit
def mark_barrier_failed(sync_ptr):
    """Set the failure flag. An OR, not an add: several programs may time out at once, and adding the
    flag twice would carry into the sign bit, making the counter negative (every later wait would
    time out again, and the host would see no flag)."""
    tl.atomic_or(sync_ptr, BARRIER_FAILED, sem="relaxed", scope="gpu")


@triton.jit
def grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER: tl.constexpr):
    """Wait until every program has arrived here ``n_passed + 1`` times in total.

    sync_ptr[0] counts arrivals (zeroed before the launch). A wait gives up after max_spins polls,
    which only happens if the grid was not co-resident: the kernel then runs to its end without
    waiting again (its results are wrong) and the host raises on the flag, instead of the GPU hanging.
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
            mark_barrier_failed(sync_ptr)
        tl.debug_barrier()
    return n_passed + 1


@triton.jit
def row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B] bool: row b takes part in step t (0 <= t < T and t < length[b]; every step for a
    length outside [0, T], whose row ``poison_bad_lengths`` has set to NaN)."""
    # t as a [BLOCK_B] vector: the interpreter types (bool vector & bool scalar) as int32.
    t_b = o_b * 0 + t
    valid = mask_b & (t_b < T) & (t_b >= 0)
    if HAS_LENGTHS:
        length = tl.load(len_ptr + o_b, mask=mask_b, other=0)
        valid = valid & ((t_b < length) | (length < 0) | (length > T))
    return valid


@triton.jit
def poison_bad_lengths(c, c_ptrs, o_b, mask_b, mask_n, len_ptr, sync_ptr, T, HAS_LENGTHS: tl.constexpr):
    """Rows whose length lies outside [0, T] start from a NaN cell state, so that all their outputs
    and final state are NaN, and are counted in sync_ptr[1] for the host to raise on. The NaN state
    is stored where c was loaded from (c_ptrs) for the backward to start from too: their gradients
    are NaN as well."""
    if HAS_LENGTHS:
        length = tl.load(len_ptr + o_b, mask=mask_b, other=0)
        bad = mask_b & ((length < 0) | (length > T))
        c = tl.where(bad[:, None], float("nan"), c)
        n_bad = tl.sum(bad.to(tl.int32), axis=0)
        if n_bad > 0:
            tl.atomic_add(sync_ptr + 1, n_bad, sem="relaxed", scope="gpu")
            tl.store(c_ptrs, c, mask=bad[:, None] & mask_n[None, :])
    return c


@triton.jit
def fwd_gate_phase(t, xw_ptr, hbuf_ptr, cbuf_ptr, z_ptr, m_ptr, out_ptr, len_ptr, w_tiles, w_ptr, cols, mask_c,
                   wi, wf, wo, c, h, o_b, mask_b, o_n, mask_n, T, B, N, P, forget_bias, cell_clip,
                   ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr,
                   HAS_CELL_CLIP: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                   RESIDENT: tl.constexpr, NUM_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Step t for the program's rows and units: gates, cell update, and m (projection) or h.

    c [BLOCK_B, BLOCK_N] fp32 and, without a projection, h (the program's own columns of the
    output) are carried in registers; both are returned updated.
    """
    t64 = t + tl.zeros([], tl.int64)
    mask = mask_b[:, None] & mask_n[None, :]
    valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_N), dtype=tl.float32)
    acc = product(acc, hbuf_ptr + t64 * B * P, P, o_b, mask_b, P, w_tiles, w_ptr, 4 * N, cols, 1, mask_c,
                  RESIDENT, NUM_K, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    p_z = t64 * B * 4 * N + o_b[:, None] * (4 * N) + o_n[None, :]
    c_new, m = gates_and_cell(acc, xw_ptr, z_ptr, p_z, c, wi, wf, wo, forget_bias, cell_clip, N, mask, ACT,
                              GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP, True, BLOCK_B, BLOCK_N)
    c = tl.where(valid, c_new, c)
    p_c = o_b[:, None] * N + o_n[None, :]
    tl.store(cbuf_ptr + (t64 + 1) * B * N + p_c, c, mask=mask)
    if HAS_PROJ:
        tl.store(m_ptr + t64 * B * N + p_c, m.to(m_ptr.dtype.element_ty), mask=mask)
    else:
        m = m.to(hbuf_ptr.dtype.element_ty)
        h = tl.where(valid, m, h)
        tl.store(hbuf_ptr + (t64 + 1) * B * P + p_c, h, mask=mask)
        tl.store(out_ptr + t64 * B * P + p_c, tl.where(valid, m, 0.0), mask=mask)
    return c, h


@triton.jit
def fwd_proj_phase(t, m_ptr, hbuf_ptr, y_ptr, out_ptr, len_ptr, p_tiles, proj_ptr, h, o_b, mask_b, o_p, mask_p,
                   T, B, N, P, proj_clip, HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                   RESIDENT: tl.constexpr, NUM_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Step t's projection for the program's rows and output columns; h (those columns) is carried."""
    t64 = t + tl.zeros([], tl.int64)
    mask = mask_b[:, None] & mask_p[None, :]
    valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
    y = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    y = product(y, m_ptr + t64 * B * N, N, o_b, mask_b, N, p_tiles, proj_ptr, P, o_p, 1, mask_p,
                RESIDENT, NUM_K, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    p_y = o_b[:, None] * P + o_p[None, :]
    if HAS_PROJ_CLIP:
        tl.store(y_ptr + t64 * B * P + p_y, y, mask=mask)
        y = clip(y, proj_clip)
    y = y.to(hbuf_ptr.dtype.element_ty)
    h = tl.where(valid, y, h)
    tl.store(hbuf_ptr + (t64 + 1) * B * P + p_y, h, mask=mask)
    tl.store(out_ptr + t64 * B * P + p_y, tl.where(valid, y, 0.0), mask=mask)
    return h


@triton.jit(do_not_specialize=["t_first", "n_steps", "T"])
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
    sync_ptr,                    # [2] int32, zeroed: barrier counter; rows with a length outside [0, T]
    t_first, n_steps, T, B, N, P, max_spins,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    PHASES: tl.constexpr, USE_BARRIER: tl.constexpr, RESIDENT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    NUM_K_H: tl.constexpr, NUM_K_M: tl.constexpr,
):
    """Steps t_first .. t_first + n_steps - 1 of the forward. PHASES: 1 gates, 2 projection, 3 both.

    NUM_K_H = cdiv(P, BLOCK_K) tiles of the gates' K, NUM_K_M = cdiv(N, BLOCK_K) of the projection's.
    """
    pid = tl.program_id(0)
    o_b, mask_b, n0 = rows_and_slice(pid, B, N, BLOCK_B, BLOCK_N)
    o_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = o_n < N
    cols, mask_c = gate_columns(n0, N, BLOCK_N)
    o_bp, mask_bp, p0 = rows_and_slice(pid, B, P, BLOCK_B, BLOCK_P)
    o_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = o_p < P
    w_tiles = ()
    p_tiles = ()
    if RESIDENT:
        # Loaded once: these stay on chip for every step below.
        if PHASES & 1:
            w_tiles = load_slice(w_ptr, 4 * N, P, cols, 1, mask_c, DOT_DTYPE, NUM_K_H, BLOCK_K)
        if HAS_PROJ and (PHASES & 2):
            p_tiles = load_slice(proj_ptr, P, N, o_p, 1, mask_p, DOT_DTYPE, NUM_K_M, BLOCK_K)
    wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
    t0 = t_first + tl.zeros([], tl.int64)
    c_ptrs = cbuf_ptr + t0 * B * N + o_b[:, None] * N + o_n[None, :]
    c = tl.load(c_ptrs, mask=mask_b[:, None] & mask_n[None, :], other=0.0)
    c = poison_bad_lengths(c, c_ptrs, o_b, mask_b, mask_n, len_ptr, sync_ptr, T, HAS_LENGTHS)
    # The program's own columns of h, carried for rows past their length.
    if HAS_PROJ:
        h = tl.load(hbuf_ptr + t0 * B * P + o_bp[:, None] * P + o_p[None, :],
                    mask=mask_bp[:, None] & mask_p[None, :], other=0.0)
    else:
        h = tl.load(hbuf_ptr + t0 * B * P + o_b[:, None] * P + o_n[None, :],
                    mask=mask_b[:, None] & mask_n[None, :], other=0.0)
    n_passed = tl.full([], 0, tl.int32)
    for i in range(0, n_steps):
        t = t_first + i
        if PHASES & 1:
            c, h_gate = fwd_gate_phase(t, xw_ptr, hbuf_ptr, cbuf_ptr, z_ptr, m_ptr, out_ptr, len_ptr, w_tiles,
                                       w_ptr, cols, mask_c, wi, wf, wo, c, h, o_b, mask_b, o_n, mask_n, T, B, N,
                                       P, forget_bias, cell_clip, ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP,
                                       HAS_PROJ, HAS_LENGTHS, RESIDENT, NUM_K_H, DOT_DTYPE, INPUT_PRECISION,
                                       BLOCK_B, BLOCK_N, BLOCK_K)
            if not HAS_PROJ:
                h = h_gate
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
        if HAS_PROJ and (PHASES & 2):
            h = fwd_proj_phase(t, m_ptr, hbuf_ptr, y_ptr, out_ptr, len_ptr, p_tiles, proj_ptr, h, o_bp, mask_bp,
                               o_p, mask_p, T, B, N, P, proj_clip, HAS_PROJ_CLIP, HAS_LENGTHS, RESIDENT, NUM_K_M,
                               DOT_DTYPE, INPUT_PRECISION, BLOCK_B, BLOCK_P, BLOCK_K)
            n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)


@triton.jit
def bwd_dh_phase(t, dout_ptr, part_ptr, dy_ptr, y_ptr, len_ptr, dh, o_b, mask_b, o_p, mask_p, n_slices,
                 T, B, N, P, proj_clip, HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr,
                 HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr):
    """dh, the program's columns of the gradient of h_t (the state entering step t+1): the sum, in
    slice order, of step t+1's partial products, carried for rows that did not run step t+1; then
    dy[t] = clip'(dout[t] + dh) for rows that run step t, else 0 (stored with a projection).
    Returns (dh, dy)."""
    t64 = t + tl.zeros([], tl.int64)
    ran_next = row_valid(t + 1, o_b, mask_b, len_ptr, T, HAS_LENGTHS)
    parity = (t + 1) % 2
    acc = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    # Rows that did not run step t+1 (all of them at t = T-1) load nothing here.
    mask_bp = ran_next[None, :, None] & mask_p[None, None, :]
    for s0 in range(0, n_slices, BLOCK_S):
        o_s = s0 + tl.arange(0, BLOCK_S)
        p_part = ((parity * n_slices + o_s).to(tl.int64)[:, None, None] * B + o_b[None, :, None]) * P + o_p[None, None, :]
        part = tl.load(part_ptr + p_part, mask=(o_s < n_slices)[:, None, None] & mask_bp, other=0.0)
        acc += tl.sum(part, axis=0)
    dh = tl.where(ran_next[:, None], acc, dh)
    runs = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None]
    mask = mask_b[:, None] & mask_p[None, :]
    p_y = t64 * B * P + o_b[:, None] * P + o_p[None, :]
    mask_t = mask & runs
    dy = tl.load(dout_ptr + p_y, mask=mask_t, other=0.0).to(tl.float32) + dh
    if HAS_PROJ_CLIP:
        dy = clip_grad(dy, tl.load(y_ptr + p_y, mask=mask_t, other=0.0), proj_clip)
    dy = tl.where(runs, dy, 0.0)
    if HAS_PROJ:
        # Every row of step t, zeros included: the projection's weight gradient reads them all.
        in_range = row_valid(t, o_b, mask_b, len_ptr, T, False)
        tl.store(dy_ptr + p_y, dy, mask=in_range[:, None] & mask_p[None, :])
    return dh, dy


@triton.jit
def bwd_gate_phase(t, dy, dc, z_ptr, cbuf_ptr, dz_ptr, dy_ptr, len_ptr, pt_tiles, proj_ptr, wi, wf, wo,
                   o_b, mask_b, o_n, mask_n, T, B, N, P, forget_bias, cell_clip,
                   ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr,
                   HAS_CELL_CLIP: tl.constexpr, HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                   RESIDENT: tl.constexpr, NUM_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """Gate gradients dz[t] of the program's units (stored, and returned as four tiles, zero for
    rows that do not run step t) and the carried cell gradient dc.

    dm, the gradient of m, is dy [BLOCK_B, BLOCK_N] itself without a projection (the program owns
    the same columns in both phases), else dy[t] @ projection^T over all of dy[t]."""
    t64 = t + tl.zeros([], tl.int64)
    mask = mask_b[:, None] & mask_n[None, :]
    if HAS_PROJ:
        dm = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        dm = product(dm, dy_ptr + t64 * B * P, P, o_b, mask_b, P, pt_tiles, proj_ptr, 1, o_n, P, mask_n,
                     RESIDENT, NUM_K, BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    else:
        dm = dy
    # Unit lanes past N too: dm there is 0 * NaN for a NaN dy (the projection's padding), and what
    # they keep reaches every column of dh through W_h's zero padding in the next product.
    valid = row_valid(t, o_b, mask_b, len_ptr, T, HAS_LENGTHS)[:, None] & mask_n[None, :]
    p_z = t64 * B * 4 * N + o_b[:, None] * (4 * N) + o_n[None, :]
    zi, zj, zf, zo = load_gates(z_ptr + p_z, N, mask)
    c_prev = tl.load(cbuf_ptr + t64 * B * N + o_b[:, None] * N + o_n[None, :], mask=mask, other=0.0).to(tl.float32)
    dzi, dzj, dzf, dzo, dc_prev = cell_backward(dm, dc, zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                                                ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)
    dzi, dzj, dzf, dzo = (tl.where(valid, dzi, 0.0), tl.where(valid, dzj, 0.0), tl.where(valid, dzf, 0.0),
                          tl.where(valid, dzo, 0.0))
    store_gates(dz_ptr + p_z, dzi, dzj, dzf, dzo, N, mask)
    return dzi, dzj, dzf, dzo, tl.where(valid, dc_prev, dc)


@triton.jit
def bwd_partial_phase(t, dzi, dzj, dzf, dzo, part_ptr, w_tiles, w_ptr, cols, mask_c, o_b, mask_b, slice_index,
                      n_slices, B, N, P, RESIDENT: tl.constexpr, NUM_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                      INPUT_PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """This slice's share of the gradient of h_{t-1}: dz[t] of its units @ W_h[:, its gate columns]^T,
    [BLOCK_B, P], written to the partial buffer of step t's parity. The product runs with the
    forward's slice as its left operand, W [P, 4 BLOCK_N] @ dz^T [4 BLOCK_N, BLOCK_B]: resident
    tiles, or each BLOCK_K rows read from memory in turn."""
    dz_t = tl.trans(join_gates(dzi, dzj, dzf, dzo, BLOCK_B, BLOCK_N)).to(DOT_DTYPE)
    p_part = part_ptr + ((t % 2) * n_slices + slice_index).to(tl.int64) * B * P + o_b[:, None] * P
    if RESIDENT:
        for kt in tl.static_range(NUM_K):
            o_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
            part = tl.dot(w_tiles[kt], dz_t, input_precision=INPUT_PRECISION)
            tl.store(p_part + o_k[None, :], tl.trans(part), mask=mask_b[:, None] & (o_k < P)[None, :])
    else:
        for k0 in range(0, P, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            w = load_tile(w_ptr, 4 * N, o_k, P, cols, 1, mask_c, DOT_DTYPE)
            part = tl.dot(w, dz_t, input_precision=INPUT_PRECISION)
            tl.store(p_part + o_k[None, :], tl.trans(part), mask=mask_b[:, None] & (o_k < P)[None, :])


@triton.jit(do_not_specialize=["t_first", "n_steps", "T"])
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
    dy_ptr,                      # out [T, B, P] fp32 gradient of each step's projection before its clip; projection only
    dz_ptr,                      # out [T, B, 4N] fp32 gradient of the gate pre-activations
    part_ptr,                    # [2, cdiv(N, BLOCK_N), B, P] fp32 scratch: each slice's partial dh, by step parity
    sync_ptr,                    # [2] int32, zeroed: barrier counter; unused
    t_first, n_steps, T, B, N, P, max_spins,
    forget_bias, cell_clip, proj_clip,
    ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr, HAS_CELL_CLIP: tl.constexpr,
    HAS_PROJ: tl.constexpr, HAS_PROJ_CLIP: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    PHASES: tl.constexpr, FINAL: tl.constexpr, USE_BARRIER: tl.constexpr, RESIDENT: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr, NUM_K: tl.constexpr,
):
    """Steps t_first, t_first - 1, ... (n_steps of them) of the reverse recurrence.

    PHASES: 2 the state gradient dh (and dy) of step t, 1 the gate gradients of step t and their
    partial products, 3 both. FINAL: after the steps, the gradient of h0 (the dh phase of step -1).
    Without a projection BLOCK_P == BLOCK_N: a program owns the same columns in both phases, and
    one barrier per step suffices. NUM_K = cdiv(P, BLOCK_K) tiles of the resident slices' K (the
    forward's W_h slice; with a projection also projection[n-slice, :]^T). Partial products are
    double-buffered by step parity: a buffer is rewritten two steps later, after a barrier that
    every reader of it has passed.
    """
    pid = tl.program_id(0)
    o_bp, mask_bp, p0 = rows_and_slice(pid, B, P, BLOCK_B, BLOCK_P)
    o_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = o_p < P
    o_b, mask_b, n0 = rows_and_slice(pid, B, N, BLOCK_B, BLOCK_N)
    o_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = o_n < N
    cols, mask_c = gate_columns(n0, N, BLOCK_N)
    n_slices = tl.cdiv(N, BLOCK_N)
    slice_index = pid // tl.cdiv(B, BLOCK_B)
    w_tiles = ()
    pt_tiles = ()
    if RESIDENT and (PHASES & 1):
        # Loaded once: the forward's slice of W_h and the transposed projection slice.
        w_tiles = load_slice(w_ptr, 4 * N, P, cols, 1, mask_c, DOT_DTYPE, NUM_K, BLOCK_K)
        if HAS_PROJ:
            pt_tiles = load_slice(proj_ptr, 1, P, o_n, P, mask_n, DOT_DTYPE, NUM_K, BLOCK_K)
    wi, wf, wo = load_peepholes(wi_ptr, wf_ptr, wo_ptr, o_n, mask_n, USE_PEEPHOLES)
    p_dh = o_bp[:, None] * P + o_p[None, :]
    mask_dh = mask_bp[:, None] & mask_p[None, :]
    p_dc = o_b[:, None] * N + o_n[None, :]
    mask_dc = mask_b[:, None] & mask_n[None, :]
    dh = tl.load(dh_ptr + p_dh, mask=mask_dh, other=0.0)
    dc = tl.load(dc_ptr + p_dc, mask=mask_dc, other=0.0)
    dy = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    n_passed = tl.full([], 0, tl.int32)
    for i in range(0, n_steps):
        t = t_first - i
        if PHASES & 2:
            dh, dy = bwd_dh_phase(t, dout_ptr, part_ptr, dy_ptr, y_ptr, len_ptr, dh, o_bp, mask_bp, o_p, mask_p,
                                  n_slices, T, B, N, P, proj_clip, HAS_PROJ, HAS_PROJ_CLIP, HAS_LENGTHS, BLOCK_B,
                                  BLOCK_P, BLOCK_S)
            if HAS_PROJ:
                n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
        if PHASES & 1:
            dzi, dzj, dzf, dzo, dc = bwd_gate_phase(t, dy, dc, z_ptr, cbuf_ptr, dz_ptr, dy_ptr, len_ptr, pt_tiles,
                                                    proj_ptr, wi, wf, wo, o_b, mask_b, o_n, mask_n, T, B, N, P,
                                                    forget_bias, cell_clip, ACT, GATE_ACT, USE_PEEPHOLES,
                                                    HAS_CELL_CLIP, HAS_PROJ, HAS_LENGTHS, RESIDENT, NUM_K,
                                                    DOT_DTYPE, INPUT_PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            bwd_partial_phase(t, dzi, dzj, dzf, dzo, part_ptr, w_tiles, w_ptr, cols, mask_c, o_b, mask_b,
                              slice_index, n_slices, B, N, P, RESIDENT, NUM_K, DOT_DTYPE, INPUT_PRECISION,
                              BLOCK_B, BLOCK_N, BLOCK_K)
        n_passed = grid_barrier(sync_ptr, n_passed, max_spins, USE_BARRIER)
    if FINAL:
        dh, dy = bwd_dh_phase(t_first - n_steps, dout_ptr, part_ptr, dy_ptr, y_ptr, len_ptr, dh, o_bp, mask_bp,
                              o_p, mask_p, n_slices, T, B, N, P, proj_clip, HAS_PROJ, HAS_PROJ_CLIP, HAS_LENGTHS,
                              BLOCK_B, BLOCK_P, BLOCK_S)
    if PHASES & 2:
        tl.store(dh_ptr + p_dh, dh, mask=mask_dh)
    if PHASES & 1:
        tl.store(dc_ptr + p_dc, dc, mask=mask_dc)
