"""The tiles the sampling kernels' phases multiply: weight slices and h, streamed or resident (K split over warps).

Streamed: `load_gate_weights` / `load_out_weights` / `load_h` give one (BLOCK_K, ...) tile of a K loop.
Resident: `resident_gate_slice` / `resident_out_slice` load a program's whole slice once, split along K
into K_SPLITS chunks; `load_h_split` loads each step's h split the same way, and `split_k_product`
multiplies them, each warp its own chunk (docs/kernel.md, "Weights on chip").
"""

import triton
import triton.language as tl


@triton.jit
def load_gate_weights(
    weight_hh_ptr, unit_start, k_start, hidden, GATES: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr
):
    """W_hh^T tile (BLOCK_K, 4 * BLOCK_U): [k, unit * 4 + gate] = W_hh[gate * hidden + unit_start + unit, k_start + k].
    Gate columns of a GRU's missing fourth gate, and units past `hidden`, are zero."""
    cols = tl.arange(0, 4 * BLOCK_U)
    gate = cols % 4
    unit = unit_start + cols // 4
    ks = k_start + tl.arange(0, BLOCK_K)
    w_rows = (gate * hidden + unit) * hidden  # int32: the launcher checks the sizes
    mask = ((gate < GATES) & (unit < hidden))[None, :] & (ks < hidden)[:, None]
    return tl.load(weight_hh_ptr + w_rows[None, :] + ks[:, None], mask=mask, other=0.0, eviction_policy='evict_last')


@triton.jit
def load_out_weights(
    weight_out_ptr, token_start, k_start, hidden, num_tokens, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr
):
    """W_out^T tile (BLOCK_K, BLOCK_V): [k, v] = W_out[token_start + v, k_start + k]; zero past the ends."""
    tokens = token_start + tl.arange(0, BLOCK_V)
    ks = k_start + tl.arange(0, BLOCK_K)
    mask = (tokens < num_tokens)[None, :] & (ks < hidden)[:, None]
    return tl.load(
        weight_out_ptr + tokens[None, :] * hidden + ks[:, None], mask=mask, other=0.0, eviction_policy='evict_last'
    )


@triton.jit
def load_h(h_ptr, rows, row_mask, k_start, hidden, has_state, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_K) of the exchange buffer from L2 ('.cg': never a stale L1 line); zero where
    has_state (BLOCK_B,) is false: before the first feed."""
    ks = k_start + tl.arange(0, BLOCK_K)
    mask = (row_mask & has_state)[:, None] & (ks < hidden)[None, :]
    return tl.load(h_ptr + rows[:, None] * hidden + ks[None, :], mask=mask, other=0.0, cache_modifier='.cg')


@triton.jit
def load_h_split(h_ptr, rows, row_mask, hidden, has_state, K_SPLITS: tl.constexpr, PADDED_K: tl.constexpr):
    """The whole h of `rows` as (K_SPLITS, BLOCK_B, PADDED_K // K_SPLITS), K split as the resident
    slices are: one load of the exchange buffer from L2 ('.cg'), zero past `hidden` and where
    has_state (BLOCK_B,) is false."""
    CHUNK: tl.constexpr = PADDED_K // K_SPLITS
    ks = tl.arange(0, K_SPLITS)[:, None, None] * CHUNK + tl.arange(0, CHUNK)[None, None, :]  # (splits, 1, chunk)
    mask = (row_mask & has_state)[None, :, None] & (ks < hidden)
    return tl.load(h_ptr + rows[None, :, None] * hidden + ks, mask=mask, other=0.0, cache_modifier='.cg')


@triton.jit
def add_halves(q):
    """(S, B, N) -> (S / 2, B, N): q[:S/2] + q[S/2:]. Reshape and permute relabel the layout; only
    the split moves data (one shared-memory exchange), where tl.sum over a warp-split axis takes several."""
    S: tl.constexpr = q.shape[0]
    first, second = tl.split(tl.permute(tl.reshape(q, (2, S // 2, q.shape[1], q.shape[2])), (1, 2, 3, 0)))
    return first + second


@triton.jit
def split_k_product(h_split, w_split, PRECISION: tl.constexpr, K_SPLITS: tl.constexpr):
    """h @ W^T from K-split operands: (K_SPLITS, BLOCK_B, CHUNK) @ (K_SPLITS, CHUNK, N), each warp
    its own K chunk (no warp holds all of K, as a plain tl.dot operand would), summed over the
    splits by halving -> (BLOCK_B, N)."""
    q = tl.dot(h_split, w_split, input_precision=PRECISION)  # (K_SPLITS, BLOCK_B, N)
    if K_SPLITS >= 2:
        q = add_halves(q)
    if K_SPLITS >= 4:
        q = add_halves(q)
    if K_SPLITS >= 8:
        q = add_halves(q)
    if K_SPLITS >= 16:
        q = add_halves(q)
    return tl.reshape(q, (q.shape[1], q.shape[2]))


@triton.jit
def resident_gate_slice(
    p,
    weight_hh_ptr,
    bias_hn_ptr,
    hidden,
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,
    BLOCK_U: tl.constexpr,
    K_SPLITS: tl.constexpr,
    PADDED_K: tl.constexpr,
):
    """Program p's W_hh^T columns (its one unit tile) as fp32 (K_SPLITS, CHUNK, 4 * BLOCK_U), and
    its GRU b_hn (BLOCK_U,): loaded once, held on chip by the persistent kernel."""
    w = load_gate_weights(weight_hh_ptr, p * BLOCK_U, 0, hidden, GATES, BLOCK_U, PADDED_K).to(tl.float32)
    units = p * BLOCK_U + tl.arange(0, BLOCK_U)
    if IS_LSTM:
        bias_hn = tl.zeros((BLOCK_U,), dtype=tl.float32)
    else:
        bias_hn = tl.load(bias_hn_ptr + units, mask=units < hidden, other=0.0).to(tl.float32)
    return tl.reshape(w, (K_SPLITS, PADDED_K // K_SPLITS, 4 * BLOCK_U)), bias_hn


@triton.jit
def resident_out_slice(
    p,
    weight_out_ptr,
    bias_out_ptr,
    hidden,
    num_tokens,
    HAS_BIAS_OUT: tl.constexpr,
    BLOCK_V: tl.constexpr,
    K_SPLITS: tl.constexpr,
    PADDED_K: tl.constexpr,
):
    """Program p's W_out^T slice (its one vocabulary tile) as fp32 (K_SPLITS, CHUNK, BLOCK_V), and its
    bias (BLOCK_V,): loaded once, held on chip by the persistent kernel."""
    w = load_out_weights(weight_out_ptr, p * BLOCK_V, 0, hidden, num_tokens, BLOCK_V, PADDED_K).to(tl.float32)
    tokens = p * BLOCK_V + tl.arange(0, BLOCK_V)
    if HAS_BIAS_OUT:
        bias_out = tl.load(bias_out_ptr + tokens, mask=tokens < num_tokens, other=0.0).to(tl.float32)
    else:
        bias_out = tl.zeros((BLOCK_V,), dtype=tl.float32)
    return tl.reshape(w, (K_SPLITS, PADDED_K // K_SPLITS, BLOCK_V)), bias_out
