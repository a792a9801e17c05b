"""The fused sampling kernels of a folded 1-layer LSTM/GRU: persistent, phase per launch, and its uniforms.

Both kernels run the same phase helpers (recurrent_phases.py); their launcher, `fused_recurrent_sample`,
is beside them in recurrent_sample.py. docs/kernel.md explains the design, its hazards and its floor.
"""

from __future__ import annotations

import triton
import triton.language as tl

from up_fast.kernels.recurrent_phases import (
    gates_phase,
    grid_barrier,
    invalidate_tokens,
    logits_phase,
    next_token,
    philox_key,
    philox_uniform,
)
from up_fast.kernels.recurrent_tiles import resident_gate_slice, resident_out_slice

# integer arguments that change from call to call (prefix and sample lengths and the row strides
# they set, the feed a phase launch belongs to, the spin bound): not specialised, so one binary
# serves every value and the compile gate (aot.py) compiles the binary that runs
PER_CALL_ARGUMENTS = ('stride_prefix_b', 'prefix_len', 'length', 'stride_tokens_b', 'stride_noise_b', 'max_spins', 's')
# what an aborted persistent launch leaves in `out` for every sampled token of its rows (a signed
# `out`; uint8 wraps it to 255): write-backs refuse rows holding it
INVALID_TOKEN = -1


@triton.jit(do_not_specialize=[a for a in PER_CALL_ARGUMENTS if a != 's'])
def recurrent_sample_kernel(
    prefix_ptr,
    stride_prefix_b,
    stride_prefix_t,  # (batch, prefix_len) integer token ids
    input_table_ptr,  # (num_tokens, gates * hidden)
    weight_hh_ptr,  # (gates * hidden, hidden)
    bias_hn_ptr,  # (hidden,) GRU only
    weight_out_ptr,  # (num_tokens, hidden)
    bias_out_ptr,  # (num_tokens,) if HAS_BIAS_OUT
    noise_ptr,
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,  # (batch, length, num_tokens) if INJECTED_NOISE
    seed_ptr,
    offset_ptr,  # (1,) int64 Philox key and call offset
    tokens_ptr,
    stride_tokens_b,
    stride_tokens_t,  # (batch, length) sampled tokens
    h_ptr,  # (2, batch, hidden) fp32 exchange slots
    c_ptr,  # (batch, hidden) fp32, LSTM only
    partial_score_ptr,
    partial_token_ptr,  # (batch, num_slices) fp32, int32
    sync_ptr,  # (groups + 1,) int32, zeroed: counters, abort word
    error_ptr,  # (1,) int32 sticky error flag
    batch,
    prefix_len,
    length,
    hidden,
    num_tokens,
    programs,
    num_slices,
    groups,
    temperature,
    g_hi,
    g_lo,
    max_spins,
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
    RESIDENT_GATES: tl.constexpr,
    RESIDENT_LOGITS: tl.constexpr,
    K_SPLITS: tl.constexpr,
    PADDED_K: tl.constexpr,
):
    """The persistent kernel: every feed and sampling step of the launch, phases met at grid barriers.
    RESIDENT_GATES / RESIDENT_LOGITS: the program's weight slices are loaded once, before the loop,
    and stay on chip (K split over the warps: K_SPLITS chunks of PADDED_K // K_SPLITS)."""
    pid = tl.program_id(0)
    group = pid // programs
    p = pid % programs
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    counter_ptr = sync_ptr + group
    abort_ptr = sync_ptr + groups
    slot = batch * hidden

    seed, offset_lo, offset_hi = philox_key(seed_ptr, offset_ptr, SAMPLE, INJECTED_NOISE)
    if RESIDENT_GATES:
        gate_w, gate_bias_hn = resident_gate_slice(
            p, weight_hh_ptr, bias_hn_ptr, hidden, IS_LSTM, GATES, BLOCK_U, K_SPLITS, PADDED_K
        )
    else:
        gate_w, gate_bias_hn = 0.0, 0.0  # streamed: unused
    if RESIDENT_LOGITS:
        out_w, out_bias = resident_out_slice(
            p, weight_out_ptr, bias_out_ptr, hidden, num_tokens, HAS_BIAS_OUT, BLOCK_V, K_SPLITS, PADDED_K
        )
    else:
        out_w, out_bias = 0.0, 0.0  # streamed: unused

    num_feeds = prefix_len + length - 1
    target = 0
    passed = 1
    s = 0
    while (s < num_feeds) & (passed != 0):
        token = next_token(
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
            BLOCK_B,
            BLOCK_P,
        )
        gates_phase(
            p,
            token,
            rows,
            row_mask,
            s,
            h_ptr + (s % 2) * slot,
            h_ptr + ((s + 1) % 2) * slot,
            c_ptr,
            input_table_ptr,
            weight_hh_ptr,
            bias_hn_ptr,
            hidden,
            gate_w,
            gate_bias_hn,
            IS_LSTM,
            GATES,
            BLOCK_B,
            BLOCK_U,
            UNIT_TILES,
            BLOCK_K,
            PRECISION,
            RESIDENT_GATES,
            K_SPLITS,
            PADDED_K,
        )
        target += programs
        passed = grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins)
        if (s >= prefix_len - 1) & (passed != 0):
            logits_phase(
                p,
                rows,
                row_mask,
                s - prefix_len + 1,
                h_ptr + ((s + 1) % 2) * slot,
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
                out_w,
                out_bias,
                HAS_BIAS_OUT,
                SAMPLE,
                INJECTED_NOISE,
                BLOCK_B,
                BLOCK_V,
                VOCAB_TILES,
                BLOCK_K,
                PRECISION,
                BAND_SLACK,
                RESIDENT_LOGITS,
                K_SPLITS,
                PADDED_K,
            )
            target += programs
            passed = grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins)
        s += 1

    if passed != 0:
        # the last sample is never fed: reduce it and store it
        next_token(
            p,
            num_feeds,
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
            BLOCK_B,
            BLOCK_P,
        )
    else:
        invalidate_tokens(p, rows, row_mask, tokens_ptr, stride_tokens_b, stride_tokens_t, length, BLOCK_B)


@triton.jit(do_not_specialize=[a for a in PER_CALL_ARGUMENTS if a != 'max_spins'])
def recurrent_phase_kernel(
    prefix_ptr,
    stride_prefix_b,
    stride_prefix_t,
    input_table_ptr,
    weight_hh_ptr,
    bias_hn_ptr,
    weight_out_ptr,
    bias_out_ptr,
    noise_ptr,
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,
    seed_ptr,
    offset_ptr,
    tokens_ptr,
    stride_tokens_b,
    stride_tokens_t,
    h_ptr,
    c_ptr,
    partial_score_ptr,
    partial_token_ptr,
    batch,
    prefix_len,
    length,
    hidden,
    num_tokens,
    programs,
    num_slices,
    temperature,
    g_hi,
    g_lo,
    s,  # the feed this launch belongs to
    PHASE: tl.constexpr,  # 0: feed s, 1: sample after feed s, 2: store the last sample
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_U: tl.constexpr,
    UNIT_TILES: tl.constexpr,
    BLOCK_V: tl.constexpr,
    VOCAB_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
    BAND_SLACK: tl.constexpr,
):
    """One phase of the persistent kernel's loop as its own launch (same helpers, same slices, weights
    streamed: nothing stays on chip between launches); the host steps through the phases, so no
    program ever waits for another."""
    pid = tl.program_id(0)
    group = pid // programs
    p = pid % programs
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    slot = batch * hidden
    if PHASE == 0:
        token = next_token(
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
            BLOCK_B,
            BLOCK_P,
        )
        gates_phase(
            p,
            token,
            rows,
            row_mask,
            s,
            h_ptr + (s % 2) * slot,
            h_ptr + ((s + 1) % 2) * slot,
            c_ptr,
            input_table_ptr,
            weight_hh_ptr,
            bias_hn_ptr,
            hidden,
            0.0,
            0.0,
            IS_LSTM,
            GATES,
            BLOCK_B,
            BLOCK_U,
            UNIT_TILES,
            BLOCK_K,
            PRECISION,
            False,
            1,
            16,
        )
    elif PHASE == 1:
        seed, offset_lo, offset_hi = philox_key(seed_ptr, offset_ptr, SAMPLE, INJECTED_NOISE)
        logits_phase(
            p,
            rows,
            row_mask,
            s - prefix_len + 1,
            h_ptr + ((s + 1) % 2) * slot,
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
            0.0,
            0.0,
            HAS_BIAS_OUT,
            SAMPLE,
            INJECTED_NOISE,
            BLOCK_B,
            BLOCK_V,
            VOCAB_TILES,
            BLOCK_K,
            PRECISION,
            BAND_SLACK,
            False,
            1,
            16,
        )
    else:
        next_token(
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
            BLOCK_B,
            BLOCK_P,
        )


# the uniforms the kernels draw


@triton.jit
def philox_uniform_kernel(
    seed_ptr, offset_ptr, out_ptr, batch, length, num_tokens, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr
):
    """Every (batch, length, num_tokens) uniform the sampler could draw, for the tests: the band
    sampler must pick what full Gumbel-max picks from these."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    t = tl.program_id(1)
    seed = tl.load(seed_ptr)
    offset = tl.load(offset_ptr)
    offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    for v in range(0, num_tokens, BLOCK_V):
        tokens = v + tl.arange(0, BLOCK_V)
        uniform = philox_uniform(seed, t, tokens, rows, num_tokens, offset_lo, offset_hi)
        offs = (rows.to(tl.int64)[:, None] * length + t) * num_tokens + tokens[None, :]
        tl.store(out_ptr + offs, uniform, mask=(rows < batch)[:, None] & (tokens < num_tokens)[None, :])
