"""The @triton.jit phase helpers of the sampling kernels: grid barrier, gates phase, logits phase, band sampler.

The persistent kernel and the phase-per-launch kernel (recurrent_sample.py) call the same helpers,
so the interpreter's checks of one cover the arithmetic of the other. docs/kernel.md explains the
design: programs, slices, phases, the barrier and the band sampler.
"""

import triton
import triton.language as tl

# a spinning program reads the abort word once in this many spins (docs/kernel.md, "The barrier")
ABORT_EVERY = tl.constexpr(256)


@triton.jit
def grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins):
    """Wait until the group's counter reaches `target` (this program's arrival included).
    Returns 1, or 0 after max_spins reads or when another program gave up (then it sets the abort
    word and the sticky error flag). Release arrive, relaxed spin, one acquire: docs/kernel.md."""
    tl.debug_barrier()  # every thread's stores of this phase precede the arrival
    tl.atomic_add(counter_ptr, 1, sem='release', scope='gpu')  # result unused: a release reduction
    arrived = tl.load(counter_ptr, volatile=True)
    aborted = 0
    spins = 0
    while (arrived < target) & (aborted == 0) & (spins < max_spins):
        arrived = tl.load(counter_ptr, volatile=True)
        spins += 1
        if spins % ABORT_EVERY == 0:
            aborted = tl.load(abort_ptr, volatile=True)
    passed = (arrived >= target).to(tl.int32)
    if passed != 0:
        # the one acquire: the others' phase is seen. Its value is used: Triton 3.6 drops an unused add of 0
        seen = tl.atomic_add(counter_ptr, 0, sem='acquire', scope='gpu')
        passed = (seen >= target).to(tl.int32)
    else:
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
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Feed `token` (BLOCK_B,) to the program's hidden units: read the full h of the read slot,
    write the own units' new h to the write slot and their c in place."""
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
            bias_hn = tl.load(bias_hn_ptr + units, mask=unit_mask, other=0.0).to(tl.float32)

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
        if tl.max(candidate.to(tl.int32)) > 0:
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
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
):
    """(best score, lowest token with it, largest logit) per row over the program's vocabulary slice."""
    best_score = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    best_token = tl.zeros((BLOCK_B,), dtype=tl.int32)
    running_max = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    has_state = rows >= 0  # h is always there in this phase
    for j in range(VOCAB_TILES):
        token_start = (p * VOCAB_TILES + j) * BLOCK_V
        tokens = token_start + tl.arange(0, BLOCK_V)
        token_mask = tokens < num_tokens
        logits = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
        for k in range(0, hidden, BLOCK_K):
            h_k = load_h(h_ptr, rows, row_mask, k, hidden, has_state, BLOCK_K)  # (BLOCK_B, BLOCK_K)
            w_k = load_out_weights(weight_out_ptr, token_start, k, hidden, num_tokens, BLOCK_V, BLOCK_K)  # (K, V)
            logits = tl.dot(h_k, w_k.to(tl.float32), logits, input_precision=PRECISION)
        if HAS_BIAS_OUT:
            logits = (
                logits
                + tl.load(bias_out_ptr + tokens, mask=token_mask, other=0.0, eviction_policy='evict_last').to(
                    tl.float32
                )[None, :]
            )

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
        )

        # running argmax; ties go to the lowest token id, as torch.argmax
        tile_best = tl.max(scores, axis=1)  # (BLOCK_B,)
        tile_token = tl.min(tl.where(scores == tile_best[:, None], tokens[None, :], 2147483647), axis=1)
        better = tile_best > best_score  # strict: an earlier tile wins a tie
        best_score = tl.where(better, tile_best, best_score)
        best_token = tl.where(better, tile_token, best_token)
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
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
):
    """Sample step t on the program's vocabulary slice: its (score, token) per row into the partials."""
    if p < num_slices:
        best_score, best_token, running_max = slice_best(
            p,
            rows,
            row_mask,
            t,
            1,
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
            HAS_BIAS_OUT,
            SAMPLE,
            INJECTED_NOISE,
            BLOCK_B,
            BLOCK_V,
            VOCAB_TILES,
            BLOCK_K,
            PRECISION,
            BAND_SLACK,
        )
        if SAMPLE:
            # the holder of the slice's largest logit drew u == 0: the band is not proven, redo without it
            span = temperature * (g_hi - g_lo)
            floor = running_max + temperature * g_lo - (tl.abs(running_max) + span) * BAND_SLACK
            unproven = row_mask & (best_score < floor)
            if tl.max(unproven.to(tl.int32)) > 0:
                best_score, best_token, running_max = slice_best(
                    p,
                    rows,
                    row_mask,
                    t,
                    0,
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
                    HAS_BIAS_OUT,
                    SAMPLE,
                    INJECTED_NOISE,
                    BLOCK_B,
                    BLOCK_V,
                    VOCAB_TILES,
                    BLOCK_K,
                    PRECISION,
                    BAND_SLACK,
                )
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
        chunk_best = tl.max(scores, axis=1)
        chunk_token = tl.min(tl.where(scores == chunk_best[:, None], tokens, 2147483647), axis=1)
        better = (chunk_best > best_score) | (best_token == 2147483647)
        best_score = tl.where(better, chunk_best, best_score)
        best_token = tl.where(better, chunk_token, best_token)
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
