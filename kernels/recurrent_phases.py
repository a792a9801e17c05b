"""The @triton.jit phase helpers of the sampling kernels: grid barrier, gates phase, logits phase, band sampler.

The persistent kernel and the phase-per-launch kernel (recurrent_sample.py) call the same helpers,
so the interpreter's checks of one cover the arithmetic of the other. docs/kernel.md explains the
design: programs, slices, phases, the barrier and the band sampler.
"""

import triton
import triton.language as tl

from up_fast.kernels.recurrent_tiles import (
    load_gate_weights,
    load_h,
    load_h_split,
    load_out_weights,
    split_k_product,
)

# a spinning program reads the abort word once in this many spins (docs/kernel.md, "The barrier")
ABORT_EVERY = tl.constexpr(256)


@triton.jit
def grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins):
    """Wait until the group's counter reaches `target` (this program's arrival included).
    Returns 1, or 0 after max_spins reads or when another program gave up (then it sets the abort
    word and the sticky error flag). Release arrive, acquire spin: docs/kernel.md, "The barrier"."""
    tl.debug_barrier()  # every thread's stores of this phase precede the arrival
    tl.atomic_add(counter_ptr, 1, sem='release', scope='gpu')  # result unused: a release reduction
    # each spin read is an acquire (an L2 load, then an L1 invalidation) by one thread, its value shared
    # with the others: the read that sees the last arrival is the acquire, with no extra round trip
    # after it. Its value is used: Triton 3.6 drops an unused add of 0
    arrived = tl.atomic_add(counter_ptr, 0, sem='acquire', scope='gpu')
    aborted = 0
    spins = 0
    while (arrived < target) & (aborted == 0) & (spins < max_spins):
        arrived = tl.atomic_add(counter_ptr, 0, sem='acquire', scope='gpu')
        spins += 1
        if spins % ABORT_EVERY == 0:
            # an atomic, read by one thread and shared, like the counter: every warp leaves the loop on the
            # same spin (a per-thread load could differ between warps and pair the loop's CTA barriers wrongly)
            aborted = tl.atomic_add(abort_ptr, 0, sem='relaxed', scope='gpu')
    passed = (arrived >= target).to(tl.int32)
    if passed == 0:
        tl.atomic_xchg(abort_ptr, 1, sem='relaxed', scope='gpu')
        tl.atomic_xchg(error_ptr, 1, sem='relaxed', scope='gpu')
    tl.debug_barrier()  # no thread reads the exchange buffer before the wait ends
    return passed


@triton.jit
def split_gates(t, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """(BLOCK_B, 4 * BLOCK_U) with column unit * 4 + gate -> four (BLOCK_B, BLOCK_U), gates 0..3."""
    t = tl.reshape(t, (BLOCK_B, BLOCK_U, 2, 2))  # (row, unit, gate // 2, gate % 2)
    even, odd = tl.split(t)  # gate % 2 == 0, 1: (row, unit, gate // 2)
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def cell_update(acc, x, c_old, h_old, bias_hn, IS_LSTM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """New (h, c) of a unit tile from the recurrent products `acc` and the gathered input rows `x`
    (both (BLOCK_B, 4 * BLOCK_U), column unit * 4 + gate). The candidate gate's rows are doubled:
    tanh(a) = 2 sigmoid(2a) - 1."""
    a0, a1, a2, a3 = split_gates(acc, BLOCK_B, BLOCK_U)
    x0, x1, x2, x3 = split_gates(x, BLOCK_B, BLOCK_U)
    if IS_LSTM:
        gate_i = tl.sigmoid(x0 + a0)
        gate_f = tl.sigmoid(x1 + a1)
        gate_o = tl.sigmoid(x2 + a2)
        gate_g = tl.sigmoid(x3 + a3)  # sigmoid(2 g): tanh(g) = 2 gate_g - 1
        c = c_old * gate_f + (2.0 * gate_i) * gate_g - gate_i  # f c + i tanh(g)
        h = tl.sigmoid(2.0 * c) * gate_o * 2.0 - gate_o  # o tanh(c)
    else:
        gate_r = tl.sigmoid(x0 + a0)
        gate_z = tl.sigmoid(x1 + a1)
        gate_n = tl.sigmoid(x2 + gate_r * (a2 + bias_hn[None, :])) * 2.0 - 1.0  # tanh of the candidate
        h = (h_old - gate_n) * gate_z + gate_n  # (1 - z) n + z h
        c = c_old
    return h, c


@triton.jit
def gates_phase(
    p,
    token,
    rows,
    row_mask,
    s,
    h_read_ptr,
    h_write_ptr,
    c_ptr,
    input_table_ptr,
    weight_hh_ptr,
    bias_hn_ptr,
    hidden,
    resident_w,
    resident_bias_hn,
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    RESIDENT: tl.constexpr,
    K_SPLITS: tl.constexpr,
    PADDED_K: tl.constexpr,
):
    """Feed `token` (BLOCK_B,) to the program's hidden units: read the full h of the read slot,
    write the own units' new h to the write slot and their c in place. RESIDENT: the weights are
    `resident_w`, `resident_bias_hn` (resident_gate_slice), else streamed from L2."""
    cols = tl.arange(0, 4 * BLOCK_U)
    gate = cols % 4
    has_state = (tl.zeros((BLOCK_B,), dtype=tl.int32) + s) > 0  # (BLOCK_B,): zero state before feed 0
    table_rows = token * (GATES * hidden)  # (BLOCK_B,)
    # a program past the last unit (more programs than hidden slices, for the vocabulary's sake) has no tile
    num_tiles = tl.minimum(tl.maximum(tl.cdiv(hidden - p * UNIT_TILES * BLOCK_U, BLOCK_U), 0), UNIT_TILES)
    for j in range(num_tiles):
        unit_start = (p * UNIT_TILES + j) * BLOCK_U
        # what does not depend on h first, so that its latency overlaps the products:
        # the gathered input-table row (x @ W_ih^T + folded biases) of each gate, the old state
        unit_col = unit_start + cols // 4
        col_mask = (gate < GATES) & (unit_col < hidden)
        x = tl.load(
            input_table_ptr + table_rows[:, None] + (gate * hidden + unit_col)[None, :],
            mask=row_mask[:, None] & col_mask[None, :],
            other=0.0,
        ).to(tl.float32)  # (BLOCK_B, 4 * BLOCK_U)
        units = unit_start + tl.arange(0, BLOCK_U)
        unit_mask = units < hidden
        mask = row_mask[:, None] & unit_mask[None, :]
        offs = rows[:, None] * hidden + units[None, :]  # (BLOCK_B, BLOCK_U)
        if IS_LSTM:
            c_old = tl.load(c_ptr + offs, mask=mask & has_state[:, None], other=0.0)
            h_old = c_old  # unused
            bias_hn = tl.zeros((BLOCK_U,), dtype=tl.float32)  # unused
        else:
            h_old = tl.load(h_read_ptr + offs, mask=mask & has_state[:, None], other=0.0, cache_modifier='.cg')
            c_old = h_old  # unused
            if RESIDENT:
                bias_hn = resident_bias_hn
            else:
                bias_hn = tl.load(bias_hn_ptr + units, mask=unit_mask, other=0.0).to(tl.float32)

        if RESIDENT:
            h_split = load_h_split(h_read_ptr, rows, row_mask, hidden, has_state, K_SPLITS, PADDED_K)
            acc = split_k_product(h_split, resident_w, PRECISION, K_SPLITS)  # (BLOCK_B, 4 * BLOCK_U)
        else:
            acc = tl.zeros((BLOCK_B, 4 * BLOCK_U), dtype=tl.float32)
            for k in range(0, hidden, BLOCK_K):
                h_k = load_h(h_read_ptr, rows, row_mask, k, hidden, has_state, BLOCK_K)  # (BLOCK_B, BLOCK_K)
                # (BLOCK_K, 4 * BLOCK_U)
                w_k = load_gate_weights(weight_hh_ptr, unit_start, k, hidden, GATES, BLOCK_U, BLOCK_K)
                acc = tl.dot(h_k, w_k.to(tl.float32), acc, input_precision=PRECISION)
        h, c = cell_update(acc, x, c_old, h_old, bias_hn, IS_LSTM, BLOCK_B, BLOCK_U)
        tl.store(h_write_ptr + offs, h, mask=mask)
        if IS_LSTM:
            tl.store(c_ptr + offs, c, mask=mask)


@triton.jit
def philox_uniform(seed, t, tokens, rows, num_tokens, offset_lo, offset_hi):
    """(rows, tokens) uniforms of sampling step t from the counter words (t * num_tokens + token,
    row, offset_lo, offset_hi): the top 24 bits, exactly representable, on {0, 2^-24, ..., 1 - 2^-24}."""
    step_token = (tl.cast(t, tl.int64) * num_tokens + tokens).to(tl.uint32)  # (BLOCK_V,)
    zeros = tl.zeros((rows.shape[0], tokens.shape[0]), dtype=tl.uint32)
    bits, _, _, _ = tl.philox(
        seed, zeros + step_token[None, :], zeros + rows.to(tl.uint32)[:, None], zeros + offset_lo, zeros + offset_hi
    )
    return (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def tile_scores(
    logits,
    tokens,
    token_mask,
    rows,
    row_mask,
    t,
    running_max,
    band_on,
    temperature,
    g_hi,
    g_lo,
    num_tokens,
    seed,
    offset_lo,
    offset_hi,
    noise_ptr,
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BAND_SLACK: tl.constexpr,
    MAY_BE_EMPTY: tl.constexpr,
):
    """Scores of one (BLOCK_B, BLOCK_V) logits tile: logits + T * G for the band's candidates,
    -inf elsewhere (plain logits at temperature 0). Returns (scores, new running max)."""
    running_max = tl.maximum(running_max, tl.max(tl.where(token_mask[None, :], logits, float('-inf')), axis=1))
    if SAMPLE:
        span = temperature * (g_hi - g_lo)
        line = running_max - span - (tl.abs(running_max) + span) * BAND_SLACK  # (BLOCK_B,)
        line = tl.where(band_on != 0, line, float('-inf'))
        candidate = row_mask[:, None] & token_mask[None, :] & (logits >= line[:, None])
        scores = tl.full(logits.shape, float('-inf'), tl.float32)
        if MAY_BE_EMPTY:  # a later tile of a slice may lie wholly below the band: skip its uniforms
            any_candidate = tl.max(candidate.to(tl.int32)) > 0
        else:  # a slice's only tile holds its largest logit, always a candidate
            any_candidate = True
        if any_candidate:
            if INJECTED_NOISE:
                noise_ptrs = (
                    noise_ptr
                    + rows.to(tl.int64)[:, None] * stride_noise_b
                    + tl.cast(t, tl.int64) * stride_noise_t
                    + tokens.to(tl.int64)[None, :] * stride_noise_v
                )
                # only candidates are read; the others get 0.5 (never used: log(0) would warn)
                uniform = tl.load(noise_ptrs, mask=candidate, other=0.5).to(tl.float32)
            else:
                uniform = philox_uniform(seed, t, tokens, rows, num_tokens, offset_lo, offset_hi)
            gumbel = -tl.log(-tl.log(uniform))  # u == 0 gives -inf: never drawn
            scores = tl.where(candidate, logits + temperature * gumbel, float('-inf'))
    else:
        scores = tl.where(token_mask[None, :], logits, float('-inf'))
    return scores, running_max


@triton.jit
def argmax_combine(score_a, token_a, score_b, token_b):
    """The larger score, NaN the largest; the lower token on a tie: torch.argmax's first index, in any
    reduction order."""
    nan_a = score_a != score_a
    nan_b = score_b != score_b
    greater = (score_b > score_a) | (nan_b & ~nan_a)
    tie = (score_b == score_a) | (nan_a & nan_b)
    take_b = greater | (tie & (token_b < token_a))
    return tl.where(take_b, score_b, score_a), tl.where(take_b, token_b, token_a)


@triton.jit
def row_argmax(scores, tokens):
    """(best score, lowest token with it) of each row of (rows, n) `scores` and `tokens`: one
    reduction of the pairs, not a max then a min (each a round of CTA barriers when warps share a row)."""
    return tl.reduce((scores, tokens), 1, argmax_combine)


@triton.jit
def slice_best(
    p,
    rows,
    row_mask,
    t,
    band_on,
    h_ptr,
    weight_out_ptr,
    bias_out_ptr,
    hidden,
    num_tokens,
    temperature,
    g_hi,
    g_lo,
    seed,
    offset_lo,
    offset_hi,
    noise_ptr,
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,
    resident_logits,
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
    RESIDENT: tl.constexpr,
):
    """(best score, lowest token with it, largest logit) per row over the program's vocabulary slice.
    RESIDENT: the slice is one tile whose logits (BLOCK_B, BLOCK_V) are given, else they are streamed."""
    best_score = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    best_token = tl.zeros((BLOCK_B,), dtype=tl.int32)
    running_max = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    has_state = rows >= 0  # h is always there in this phase
    for j in range(VOCAB_TILES):
        token_start = (p * VOCAB_TILES + j) * BLOCK_V
        tokens = token_start + tl.arange(0, BLOCK_V)
        token_mask = tokens < num_tokens
        if RESIDENT:
            logits = resident_logits
        else:
            logits = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
            for k in range(0, hidden, BLOCK_K):
                h_k = load_h(h_ptr, rows, row_mask, k, hidden, has_state, BLOCK_K)  # (BLOCK_B, BLOCK_K)
                # (BLOCK_K, BLOCK_V)
                w_k = load_out_weights(weight_out_ptr, token_start, k, hidden, num_tokens, BLOCK_V, BLOCK_K)
                logits = tl.dot(h_k, w_k.to(tl.float32), logits, input_precision=PRECISION)
            if HAS_BIAS_OUT:
                bias = tl.load(bias_out_ptr + tokens, mask=token_mask, other=0.0, eviction_policy='evict_last')
                logits = logits + bias.to(tl.float32)[None, :]

        scores, running_max = tile_scores(
            logits,
            tokens,
            token_mask,
            rows,
            row_mask,
            t,
            running_max,
            band_on,
            temperature,
            g_hi,
            g_lo,
            num_tokens,
            seed,
            offset_lo,
            offset_hi,
            noise_ptr,
            stride_noise_b,
            stride_noise_t,
            stride_noise_v,
            SAMPLE,
            INJECTED_NOISE,
            BAND_SLACK,
            VOCAB_TILES > 1,
        )

        # running argmax; ties go to the lowest token id, as torch.argmax (a later tile's tokens are larger)
        tile_best, tile_token = row_argmax(scores, tl.broadcast_to(tokens[None, :], scores.shape))  # (BLOCK_B,)
        best_score, best_token = argmax_combine(best_score, best_token, tile_best, tile_token)
    return best_score, best_token, running_max


@triton.jit
def logits_phase(
    p,
    rows,
    row_mask,
    t,
    h_ptr,
    weight_out_ptr,
    bias_out_ptr,
    partial_score_ptr,
    partial_token_ptr,
    num_slices,
    hidden,
    num_tokens,
    temperature,
    g_hi,
    g_lo,
    seed,
    offset_lo,
    offset_hi,
    noise_ptr,
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,
    resident_w,
    resident_bias_out,
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
    RESIDENT: tl.constexpr,
    K_SPLITS: tl.constexpr,
    PADDED_K: tl.constexpr,
):
    """Sample step t on the program's vocabulary slice: its (score, token) per row into the partials.
    RESIDENT: the slice is `resident_w`, `resident_bias_out` (resident_out_slice), else streamed."""
    if p < num_slices:
        if RESIDENT:
            # the product once, before the passes: the slice's weights stay where they are (a product
            # inside the pass loop would copy them into shared memory at every step)
            h_split = load_h_split(h_ptr, rows, row_mask, hidden, rows >= 0, K_SPLITS, PADDED_K)
            logits = split_k_product(h_split, resident_w, PRECISION, K_SPLITS) + resident_bias_out[None, :]
        else:
            logits = 0.0  # streamed: slice_best computes its tiles
        # one pass with the band; a second without it where the band was not proven (the holder of the
        # slice's largest logit drew u == 0): one call site, so the phase's code is not inlined twice
        best_score = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
        best_token = tl.zeros((BLOCK_B,), dtype=tl.int32)
        running_max = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
        band_on = 1
        passes_left = 1
        while passes_left > 0:
            best_score, best_token, running_max = slice_best(
                p,
                rows,
                row_mask,
                t,
                band_on,
                h_ptr,
                weight_out_ptr,
                bias_out_ptr,
                hidden,
                num_tokens,
                temperature,
                g_hi,
                g_lo,
                seed,
                offset_lo,
                offset_hi,
                noise_ptr,
                stride_noise_b,
                stride_noise_t,
                stride_noise_v,
                logits,
                HAS_BIAS_OUT,
                SAMPLE,
                INJECTED_NOISE,
                BLOCK_B,
                BLOCK_V,
                VOCAB_TILES,
                BLOCK_K,
                PRECISION,
                BAND_SLACK,
                RESIDENT,
            )
            passes_left = 0
            if SAMPLE:
                span = temperature * (g_hi - g_lo)
                floor = running_max + temperature * g_lo - (tl.abs(running_max) + span) * BAND_SLACK
                unproven = row_mask & (best_score < floor)
                if (band_on != 0) & (tl.max(unproven.to(tl.int32)) > 0):
                    band_on = 0
                    passes_left = 1
        offs = rows * num_slices + p
        tl.store(partial_score_ptr + offs, best_score, mask=row_mask)
        tl.store(partial_token_ptr + offs, best_token, mask=row_mask)


@triton.jit
def reduce_partials(rows, row_mask, partial_score_ptr, partial_token_ptr, num_slices, BLOCK_P: tl.constexpr):
    """The token of each row from the slices' (score, token), BLOCK_P slices at a time: max score,
    lowest id on ties (slices are in token order, so an earlier chunk wins a tie)."""
    best_score = tl.full(row_mask.shape, float('-inf'), dtype=tl.float32)
    best_token = tl.full(row_mask.shape, 2147483647, dtype=tl.int32)
    for start in range(0, num_slices, BLOCK_P):
        slices = start + tl.arange(0, BLOCK_P)
        mask = row_mask[:, None] & (slices < num_slices)[None, :]
        offs = rows[:, None] * num_slices + slices[None, :]
        scores = tl.load(partial_score_ptr + offs, mask=mask, other=float('-inf'), cache_modifier='.cg')
        tokens = tl.load(partial_token_ptr + offs, mask=mask, other=2147483647, cache_modifier='.cg')
        chunk_best, chunk_token = row_argmax(scores, tokens)
        best_score, best_token = argmax_combine(best_score, best_token, chunk_best, chunk_token)
    return tl.where(row_mask, best_token, 0)


@triton.jit
def next_token(
    p,
    s,
    rows,
    row_mask,
    prefix_ptr,
    stride_prefix_b,
    stride_prefix_t,
    prefix_len,
    partial_score_ptr,
    partial_token_ptr,
    num_slices,
    tokens_ptr,
    stride_tokens_b,
    stride_tokens_t,
    BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The token fed at feed s: prefix[:, s], or sample s - prefix_len (reduced, and stored by program 0)."""
    if s < prefix_len:
        token = tl.load(prefix_ptr + rows * stride_prefix_b + s * stride_prefix_t, mask=row_mask, other=0).to(tl.int32)
    else:
        token = reduce_partials(rows, row_mask, partial_score_ptr, partial_token_ptr, num_slices, BLOCK_P)
        t = s - prefix_len
        tl.store(
            tokens_ptr + rows.to(tl.int64) * stride_tokens_b + tl.cast(t, tl.int64) * stride_tokens_t,
            token,
            mask=row_mask & ((tl.zeros((BLOCK_B,), dtype=tl.int32) + p) == 0),
        )
    return token


@triton.jit
def invalidate_tokens(p, rows, row_mask, tokens_ptr, stride_tokens_b, stride_tokens_t, length, BLOCK_B: tl.constexpr):
    """An aborted launch: program 0 of the group writes INVALID_TOKEN (-1) over every sampled token
    of its rows, so that no write-back takes them for tokens (a signed `out` keeps it negative)."""
    if p == 0:
        invalid = tl.full((BLOCK_B,), -1, dtype=tl.int32)
        for t in range(length):
            tl.store(
                tokens_ptr + rows.to(tl.int64) * stride_tokens_b + tl.cast(t, tl.int64) * stride_tokens_t,
                invalid,
                mask=row_mask,
            )


@triton.jit
def philox_key(seed_ptr, offset_ptr, SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr):
    if SAMPLE and not INJECTED_NOISE:
        seed = tl.load(seed_ptr)
        offset = tl.load(offset_ptr)
    else:
        seed = tl.zeros((), dtype=tl.int64)
        offset = tl.zeros((), dtype=tl.int64)
    offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return seed, offset_lo, offset_hi
