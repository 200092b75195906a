"""Tile helpers shared by the step and the persistent kernels: weight slices, fused products, gates.

Dimensions:
    B  batch            N  num_units          P  output width (num_proj, else N)
    K  the reduced dimension of a product (P for the gates, N for the projection, 4N for dh)
    A program owns BLOCK_B rows and a slice of columns: BLOCK_N hidden units with all four of
    their gates (4 * BLOCK_N gate columns), or BLOCK_P projection columns.

Gate columns in memory keep TF's order (gate g of unit n at column g * N + n). Inside a program
the four gates of its units are interleaved (column 4 * n + g of its slice), so that one product
computes all four gate tiles and ``split_gates`` takes them apart in registers.

Weight slices are tuples of NUM_K [BLOCK_K, columns] tiles covering K. Loaded once before a time
loop they stay on chip for the whole sequence (the compiler keeps a ``tl.dot`` operand that is
defined outside the loop in shared memory); loaded inside the loop they are streamed from memory
every step.
"""
import triton
import triton.language as tl

from .cell_math import cell_forward


@triton.jit
def gate_columns(n0, N, BLOCK_N: tl.constexpr):
    """TF column of each of a slice's 4 * BLOCK_N interleaved gate columns (unit n0 + c // 4,
    gate c % 4), and the mask of units < N."""
    c = tl.arange(0, 4 * BLOCK_N)
    unit = n0 + c // 4
    return (c % 4) * N + unit, unit < N


@triton.jit
def load_tile(w_ptr, stride_k, o_k, K, cols, stride_c, mask_c, DOT_DTYPE: tl.constexpr):
    """W[o_k, cols] in the dot dtype, zeros past K and the mask: every read of a weight goes through here."""
    w = tl.load(w_ptr + o_k[:, None] * stride_k + cols[None, :] * stride_c,
                mask=(o_k < K)[:, None] & mask_c[None, :], other=0.0)
    return w.to(DOT_DTYPE)


@triton.jit
def load_slice(w_ptr, stride_k, K, cols, stride_c, mask_c, DOT_DTYPE: tl.constexpr,
               NUM_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """W[0:K, cols] as NUM_K tiles of [BLOCK_K, len(cols)] (``load_tile``)."""
    tiles = ()
    for kt in tl.static_range(NUM_K):
        o_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        tiles = tiles + (load_tile(w_ptr, stride_k, o_k, K, cols, stride_c, mask_c, DOT_DTYPE),)
    return tiles


@triton.jit
def slice_product(acc, a_ptr, stride_am, o_m, mask_m, K, w_tiles,
                  NUM_K: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr):
    """acc += A[o_m, 0:K] @ W with W given as the tiles of ``load_slice``; A rows are unit-stride."""
    for kt in tl.static_range(NUM_K):
        o_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + o_m[:, None] * stride_am + o_k[None, :],
                    mask=mask_m[:, None] & (o_k < K)[None, :], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), w_tiles[kt], acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def streamed_product(acc, a_ptr, stride_am, o_m, mask_m, K, w_ptr, stride_k, cols, stride_c, mask_c,
                     BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc += A[o_m, 0:K] @ W[0:K, cols], W read from memory in BLOCK_K chunks (one fused loop)."""
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + o_m[:, None] * stride_am + o_k[None, :], mask=mask_m[:, None] & (o_k < K)[None, :],
                    other=0.0)
        w = load_tile(w_ptr, stride_k, o_k, K, cols, stride_c, mask_c, DOT_DTYPE)
        acc = tl.dot(a.to(DOT_DTYPE), w, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def product(acc, a_ptr, stride_am, o_m, mask_m, K, w_tiles, w_ptr, stride_k, cols, stride_c, mask_c,
            RESIDENT: tl.constexpr, NUM_K: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
            INPUT_PRECISION: tl.constexpr):
    """acc += A[o_m, 0:K] @ W[0:K, cols]: from the resident tiles, or streamed from w_ptr."""
    if RESIDENT:
        acc = slice_product(acc, a_ptr, stride_am, o_m, mask_m, K, w_tiles, NUM_K, BLOCK_K, DOT_DTYPE,
                            INPUT_PRECISION)
    else:
        acc = streamed_product(acc, a_ptr, stride_am, o_m, mask_m, K, w_ptr, stride_k, cols, stride_c, mask_c,
                               BLOCK_K, DOT_DTYPE, INPUT_PRECISION)
    return acc


@triton.jit
def split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_B, 4 * BLOCK_N] with interleaved gate columns -> four [BLOCK_B, BLOCK_N] tiles i, j, f, o."""
    # Column 4n + g = 4n + 2 * (g // 2) + g % 2: split the low bit of g, then the high one.
    acc = tl.reshape(acc, [BLOCK_B, BLOCK_N, 2, 2])
    even, odd = tl.split(acc)
    zi, zf = tl.split(even)
    zj, zo = tl.split(odd)
    return zi, zj, zf, zo


@triton.jit
def join_gates(zi, zj, zf, zo, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """The inverse of ``split_gates``: four [BLOCK_B, BLOCK_N] tiles -> [BLOCK_B, 4 * BLOCK_N] interleaved."""
    return tl.reshape(tl.join(tl.join(zi, zf), tl.join(zj, zo)), [BLOCK_B, 4 * BLOCK_N])


@triton.jit
def gates_and_cell(acc, xw_ptr, z_ptr, p_z, c_prev, wi, wf, wo, forget_bias, cell_clip, N, mask,
                   ACT: tl.constexpr, GATE_ACT: tl.constexpr, USE_PEEPHOLES: tl.constexpr,
                   HAS_CELL_CLIP: tl.constexpr, HAS_XW: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """From a slice's interleaved gate product acc (plus the hoisted x product at xw_ptr + p_z when
    HAS_XW): store the gate pre-activations at z_ptr + p_z and return the cell's (c, m)."""
    zi, zj, zf, zo = split_gates(acc, BLOCK_B, BLOCK_N)
    if HAS_XW:
        xi, xj, xf, xo = load_gates(xw_ptr + p_z, N, mask)
        zi, zj, zf, zo = zi + xi, zj + xj, zf + xf, zo + xo
    store_gates(z_ptr + p_z, zi, zj, zf, zo, N, mask)
    return cell_forward(zi, zj, zf, zo, c_prev, wi, wf, wo, forget_bias, cell_clip,
                        ACT, GATE_ACT, USE_PEEPHOLES, HAS_CELL_CLIP)


@triton.jit
def store_gates(p_z, zi, zj, zf, zo, N, mask):
    """Store four [BLOCK_B, BLOCK_N] gate tiles at p_z (column offsets of gate i) + g * N."""
    tl.store(p_z, zi, mask=mask)
    tl.store(p_z + N, zj, mask=mask)
    tl.store(p_z + 2 * N, zf, mask=mask)
    tl.store(p_z + 3 * N, zo, mask=mask)


@triton.jit
def load_gates(p_z, N, mask):
    """The four gate tiles stored by ``store_gates``, as fp32."""
    zi = tl.load(p_z, mask=mask, other=0.0).to(tl.float32)
    zj = tl.load(p_z + N, mask=mask, other=0.0).to(tl.float32)
    zf = tl.load(p_z + 2 * N, mask=mask, other=0.0).to(tl.float32)
    zo = tl.load(p_z + 3 * N, mask=mask, other=0.0).to(tl.float32)
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
def rows_and_slice(pid, B, n_cols, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program pid's rows and first column (batch tiles vary fastest); rows are masked off entirely
    when pid is past the last (rows, slice) pair, so such a program loads and stores nothing."""
    n_btiles = tl.cdiv(B, BLOCK_B)
    c0 = (pid // n_btiles) * BLOCK_C
    o_b = (pid % n_btiles) * BLOCK_B + tl.arange(0, BLOCK_B)
    # c0 as a vector: the interpreter types (bool vector & bool scalar) as int32.
    mask_b = (o_b < B) & (o_b * 0 + c0 < n_cols)
    return o_b, mask_b, c0
