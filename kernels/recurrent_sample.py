"""The whole decoding loop of a folded 1-layer LSTM/GRU as one persistent Triton kernel.

`fused_recurrent_sample(folded, prefix, length, temperature)` is `FoldedRecurrentNet.sample`
(up_fast/sampling.py) and `naive_recurrent_sample` (up_fast/naive.py, the oracle): teacher-force
`prefix` from a zero state, then sample `length` tokens by Gumbel-max, feeding each one back.

Why this design (issue 10)
--------------------------
A decoding step is a chain h -> gates -> h' -> logits -> token -> next gates, latency-bound at small
batch: at the example size (batch 32, hidden 256, vocab 256, LSTM, fp32) a step is 21 MFLOP over
1.25 MiB of weights, about 0.04 us of the chip's arithmetic. What costs is moving the weights and
the two all-to-all dependencies of a step. So the weights are split across up to all 132 SMs of an
H200, each program keeps its slice on chip for the whole launch, and programs meet at a grid
barrier. One launch runs the prefix and every sampling step.

Programs, slices, phases
------------------------
grid = groups * programs. A group owns a batch tile of BLOCK_B rows and a full set of slices; its
`programs` programs split the weights: program p owns hidden units [p * UNITS, (p + 1) * UNITS)
(UNITS = UNIT_TILES * BLOCK_U: the rows of all gates of W_hh for those units and the matching
columns of the folded input table) and vocabulary slice p, [p * SLICE, (p + 1) * SLICE) (SLICE =
VOCAB_TILES * BLOCK_V; rows of W_out and bias_out; only the first `num_slices` programs have one).

A feed step (one per prefix token and per sampled token but the last) and a sampling step are:

    feed s:   token = prefix[:, s], or the reduction of the P partials of the last sampling step
              (every program reduces them redundantly: cheaper than a third barrier);
              gates of the own units from the full h of slot s % 2 (an L2-resident exchange
              buffer), the cell update (c of the own units is read and written by its owner only),
              the own units of h written to slot (s + 1) % 2
    barrier
    sample t: logits of the own vocabulary slice from the full new h, band noise, a local
              (best score, lowest token) per row written to the partials buffer
    barrier

Two barriers a sampling step, one a prefix step. Fewer is not possible without redundant work
that does not fit: the step has two all-to-all dependencies (every unit's gate needs all of h,
the token needs all logits), and computing all logits in every program means every program holds
all of W_out (256 KiB at the example). Hazards with one set of buffers: h slot s % 2 is rewritten
in feed s + 1, after the barrier that ends sample s - 1 and feed s, its last readers; the
partials of sample t are rewritten in sample t + 1, after the barrier of feed s + 1, which every
program reaches only after reducing them.

Barrier: one int32 counter per group, never reset inside a launch, so one counter serves every
barrier (a generation count: barrier k of a launch waits for the counter to reach k * programs).
Arrive is atomic_add(acq_rel, gpu scope) after a CTA barrier, the wait is atomic reads (acquire)
then a CTA barrier: the pattern of CUDA's cooperative grid sync. Exchange loads use the '.cg'
cache modifier (L2, not L1), so that no stale L1 line can be read whatever the fence semantics.
The wait spins at most `max_spins` times (and stops at once when another program has given up):
past that it sets the launch's abort word and the sticky device error flag and the program leaves
its loop. The launcher resets the counters (one small memset a launch) and reads the error flag
only where asked (`check=True`, or UP_FAST_KERNEL_CHECK=1): `check_kernel_errors(device)` raises
naming the grid and the SM count. A grid of more than one program per group is launched with
Triton's cooperative-grid option (a grid that cannot be co-resident fails at launch).

Weights on chip: each program re-reads only its own slices, every step, in (BLOCK_K, tile) pieces
with the L1 'evict_last' policy; they are read-only for the launch, so after the first step they
are served by the SM's L1 (256 KB with shared memory; a slice is 32 KiB at the example, 192 KiB
at hidden 1024 with fp32 weights, 96 KiB with bf16), not by L2 or HBM; at vocabulary 32768 the
272 KiB slice does not fit and streams from L2 (32 MiB of W_out, L2-resident on a 50 MB L2). The exchange loads ('.cg') bypass L1 and cannot evict
them. Holding the slices in registers instead was tried and measured by compiling: a tl.dot
operand of shape (K, N) is laid out so that every warp holds all of K, so the example's (256, 16)
W_hh^T slice plus its h operand needed more than 255 registers a thread and ptxas spilled
(7 KB of stack at 8 warps); Triton has no explicit shared-memory allocation to put them there
instead (that is Gluon's). L1 residency is not guaranteed by the hardware: if a GPU profile
shows L2 traffic for the weights, that is the place to look.

Launcher rule (plan_launch; sms = the device's multiprocessor count, 132 on an H200)
    BLOCK_B   = next_pow2(batch) clamped to [16, 64]; groups = cdiv(batch, BLOCK_B)
    per_group = sms // groups; 1 or less: one program per group (no other program to wait for:
                the barrier passes at once), any number of groups, ordinary launch
    BLOCK_U   = next_pow2(cdiv(hidden, per_group)), at least 4 (4 gates * 4 units = 16, the
                smallest tl.dot side), at most ACCUMULATOR_ELEMENTS / (4 * BLOCK_B) (the gate
                accumulator (BLOCK_B, 4 * BLOCK_U) at 16 registers a thread); UNIT_TILES covers
                cdiv(hidden, per_group) units with it
    programs  = max(cdiv(hidden, UNITS), min(per_group, cdiv(num_tokens, 128))), at most per_group
    BLOCK_V   = next_pow2(cdiv(num_tokens, programs)) clamped to [16, ACCUMULATOR_ELEMENTS / BLOCK_B];
                VOCAB_TILES covers cdiv(num_tokens, programs); num_slices = cdiv(num_tokens, SLICE)
    ACCUMULATOR_ELEMENTS = 2048 on sm_90 up to 32 rows, else 1024 (sm_80's mma.sync and sm_90's
                64-row wgmma operands take more registers); every launch passes COMPILE_OPTIONS
                (maxnreg=255: ptxas otherwise capped some configurations at 128 and spilled)
    BLOCK_P   = next_pow2(num_slices), at most 32: the partials are reduced 32 slices at a time
    BLOCK_K   = 32 (16 below hidden 32, and on sm_80, where 32 spilled at hidden 1024), 8 warps: what compiled without spills for every
                tf32x3 configuration (ptxas, sm_90: BLOCK_K 64 spilled, and 4 warps spilled at
                vocabulary 32768 and hidden 1024); 8 warps of up to 255 registers is one program
                an SM, which is what a persistent grid of at most `sms` programs wants anyway
    example (32, 256, 256, LSTM): BLOCK_B 32, 1 group, BLOCK_U 4 (one 16-column gate tile), 64
    programs, BLOCK_V 16, 16 vocabulary slices. Per step and program: gates 2 * 32 * 256 * 16 =
    262 KFLOP over 16 KiB of W_hh^T (L1) and 32 KiB of h (L2); logits the same (16 programs).

Floor this design implies (estimates, not timed: no GPU in the session that wrote this): a
barrier is ~1 us (two L2 atomic round trips, ~0.5 us each at ~700 cycles / 1.75 GHz: arrive, then
the read that sees the last arrival) and each phase is one dependent L2 read of the exchange
buffer (~0.5 us; 32 KiB at ~64 B/clock is another ~0.3 us) plus its arithmetic (262 KFLOP at the
~256 FLOP/clock of one SM's fp32 FMA: ~0.6 us with 'ieee'; tf32x3 on tensor cores less) plus, for
the sample, the dependent read of the partials. Sampling step: 2 barriers + 2 phases, about 4 us;
prefix step about half (design_floor; `aot_configurations()` carries it per configuration). That
is above issue 10's 2 us a step: the barrier latency is the floor of any design with two
all-to-all exchanges a step, and only a GPU run can say how far the atomics' real latency is.

Exact band sampler
------------------
At T > 0 the token is argmax(logits + T * G), G = -log(-log u). Uniforms come from a finite grid
(Philox: the top 24 bits, u in {k * 2^-24}), so the finite G lie in [G_lo, G_hi], computed by
`gumbel_bounds` from the grid's smallest positive and largest value (about -2.81 and 16.64). Let m
be the largest logit of the program's slice seen so far (a running max over its tiles, never more
than the slice's max). A token with logit < m - T * (G_hi - G_lo) - margin cannot beat the token
holding m, whose score is at least m + T * G_lo when its u > 0: so only candidates above that line
get noise, and a tile with no candidate draws none (a scalar branch). The margin, 2^-16 * (|m| +
T * (G_hi - G_lo)), covers the few roundings of the fp32 sums and of log (not correctly rounded
on GPUs) with a wide berth; a wider band is never wrong, only slower. If the holder of m drew u = 0
(G = -inf, probability 2^-24), the bound fails: the slice's best score is then below m + T * G_lo
- margin, which the program checks, and it redoes its slice with no band (every token a
candidate). So each slice's (score, token) is bitwise what full Gumbel-max over the slice gives
from the same counters, and the reduction over slices (max score, then lowest id) is the full
Gumbel-max result: a token more than T * (G_hi - G_lo) below its own slice's max cannot win
globally either, so the band needs no extra barrier. Ties go to the lowest id everywhere.
Counters: (t * num_tokens + token, row, offset_lo, offset_hi), unique per (call offset, row,
step, token). With injected noise (parity tests) only candidates are read, and the bounds come
from the noise dtype's grid cast to fp32 (float64 noise can round to 1.0, G = +inf: no band).
Temperature 0 is argmax: no noise, no band.

Precision
---------
Every tanh is 2 * sigmoid(2x) - 1 with the doubling folded into the weights (FoldedRecurrentNet);
h and c are kept unscaled. 'tf32x3' (default) splits each fp32 operand into a tf32 high and low
part and sums three tensor-core products: about fp32 accuracy (the dropped lo * lo term is
~2^-22 relative), so tokens equal the fp32 path's except at genuine near-ties. 'ieee' is the
plain fp32 FMA dot. bf16 weights are storage (half the L1 footprint): read as bf16, widened to
fp32 at each use, fp32 arithmetic; so the kernel agrees with the fp32 oracle run on the bf16-rounded
weights to the fp32 tolerance (1e-5 on h and c; the rounding of the weights themselves, 2^-9
relative, is the user's choice and is not an error of the kernel).

Generality: more layers and a second input stream are more phases of the same loop
------------------------------------------------------------------------------------
A second stacked layer is another gates phase after the first one's barrier: its slices of
W_ih^(2) and W_hh^(2) beside layer 1's, reading layer 1's new h from the exchange buffer (one more
barrier a step). The paper's conditioned generator (input = table_prev[token] +
table_cond[condition token]) is a second row gather added to `x` in gates_phase: a second
folded input table and a (batch, length) condition pointer, no new phase and no new barrier.

Modes (all call the same @triton.jit phase helpers)
----------------------------------------------------
- persistent: `recurrent_sample_kernel`, the step loop with grid barriers (the GPU path);
- single program: the same kernel with one program per group: the barrier passes at once, so it
  runs under TRITON_INTERPRET=1 (which runs programs one after another);
- phase per launch: `recurrent_phase_kernel`, one launch per phase, the host stepping through
  them; P > 1 programs split the weights exactly as in the persistent kernel. The interpreter
  checks the multi-program arithmetic this way, with no spin barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from up_fast.checks import check_int, check_temperature
from up_fast.kernels.aot import TARGET_SMS, AotConfig
from up_fast.sampling import SUPPORTED_CELLS, FoldedRecurrentNet

# triton.jit picks the interpreter when TRITON_INTERPRET=1 at decoration time (this import)
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'

SUPPORTED_PRECISIONS = ('tf32x3', 'ieee')
SUPPORTED_MODES = ('auto', 'persistent', 'phases')
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)
NOISE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# the counter word holding (step * num_tokens + token) is 32 bits wide
MAX_COUNTERS_PER_ROW = 1 << 32
# ~0.5 us an atomic round trip: about 10 s before a barrier gives up
DEFAULT_MAX_SPINS = 1 << 24
CHECK_ENV = 'UP_FAST_KERNEL_CHECK'
# the largest (BLOCK_B, columns) accumulator of a phase: 16 registers a thread at 4 warps, which
# leaves room for the tf32x3 operand splits without spills (ptxas, sm_90)
ACCUMULATOR_ELEMENTS = 2048
# the per-phase kernels: at 8 warps ptxas capped some at 128 registers and spilled (sm_90); at 4,
# none spilled. Warps split a tile's rows and columns, never K, so the arithmetic is the same
PHASE_NUM_WARPS = 4
# Compile options of every launch: without a register cap ptxas chose 128 registers for some
# configurations and spilled (sm_90, Triton 3.6 and 3.9); 255 is one program of 8 warps an SM
COMPILE_OPTIONS = dict(maxnreg=255)


# the phase helpers: the persistent kernel and the per-phase kernels call the same ones


@triton.jit
def grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins):
    """Wait until the group's counter reaches `target` (this program's arrival included).
    Returns 1, or 0 after max_spins reads or when another program gave up (then it sets the abort
    word and the sticky error flag)."""
    tl.debug_barrier()                       # every thread's stores of this phase precede the arrival
    arrived = tl.atomic_add(counter_ptr, 1, sem='acq_rel', scope='gpu') + 1
    aborted = tl.atomic_add(abort_ptr, 0, sem='acquire', scope='gpu')
    spins = 0
    while (arrived < target) & (aborted == 0) & (spins < max_spins):
        arrived = tl.atomic_add(counter_ptr, 0, sem='acquire', scope='gpu')
        aborted = tl.atomic_add(abort_ptr, 0, sem='acquire', scope='gpu')
        spins += 1
    passed = (arrived >= target).to(tl.int32)
    if passed == 0:
        tl.atomic_xchg(abort_ptr, 1, sem='acq_rel', scope='gpu')
        tl.atomic_xchg(error_ptr, 1, sem='acq_rel', scope='gpu')
    tl.debug_barrier()                       # no thread reads the exchange buffer before the wait ends
    return passed


@triton.jit
def split_gates(t, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr):
    """(BLOCK_B, 4 * BLOCK_U) with column unit * 4 + gate -> four (BLOCK_B, BLOCK_U), gates 0..3."""
    t = tl.reshape(t, (BLOCK_B, BLOCK_U, 2, 2))          # (row, unit, gate // 2, gate % 2)
    even, odd = tl.split(t)                               # gate % 2 == 0, 1: (row, unit, gate // 2)
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def load_gate_weights(weight_hh_ptr, unit_start, k_start, hidden,
                      GATES: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_K: tl.constexpr):
    """W_hh^T tile (BLOCK_K, 4 * BLOCK_U): [k, unit * 4 + gate] = W_hh[gate * hidden + unit_start + unit, k_start + k].
    Gate columns of a GRU's missing fourth gate, and units past `hidden`, are zero."""
    cols = tl.arange(0, 4 * BLOCK_U)
    gate = cols % 4
    unit = unit_start + cols // 4
    ks = k_start + tl.arange(0, BLOCK_K)
    w_rows = (gate * hidden + unit) * hidden                      # int32: the launcher checks the sizes
    mask = ((gate < GATES) & (unit < hidden))[None, :] & (ks < hidden)[:, None]
    return tl.load(weight_hh_ptr + w_rows[None, :] + ks[:, None], mask=mask, other=0., eviction_policy='evict_last')


@triton.jit
def load_out_weights(weight_out_ptr, token_start, k_start, hidden, num_tokens,
                     BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """W_out^T tile (BLOCK_K, BLOCK_V): [k, v] = W_out[token_start + v, k_start + k]; zero past the ends."""
    tokens = token_start + tl.arange(0, BLOCK_V)
    ks = k_start + tl.arange(0, BLOCK_K)
    mask = (tokens < num_tokens)[None, :] & (ks < hidden)[:, None]
    return tl.load(weight_out_ptr + tokens[None, :] * hidden + ks[:, None], mask=mask, other=0.,
                   eviction_policy='evict_last')


@triton.jit
def load_h(h_ptr, rows, row_mask, k_start, hidden, has_state, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_K) of the exchange buffer from L2 ('.cg': never a stale L1 line); zero where
    has_state (BLOCK_B,) is false: before the first feed."""
    ks = k_start + tl.arange(0, BLOCK_K)
    mask = (row_mask & has_state)[:, None] & (ks < hidden)[None, :]
    return tl.load(h_ptr + rows[:, None] * hidden + ks[None, :], mask=mask, other=0., cache_modifier='.cg')


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
        gate_g = tl.sigmoid(x3 + a3)                         # sigmoid(2 g): tanh(g) = 2 gate_g - 1
        c = c_old * gate_f + (2. * gate_i) * gate_g - gate_i  # f c + i tanh(g)
        h = tl.sigmoid(2. * c) * gate_o * 2. - gate_o         # o tanh(c)
    else:
        gate_r = tl.sigmoid(x0 + a0)
        gate_z = tl.sigmoid(x1 + a1)
        gate_n = tl.sigmoid(x2 + gate_r * (a2 + bias_hn[None, :])) * 2. - 1.   # tanh of the candidate
        h = (h_old - gate_n) * gate_z + gate_n               # (1 - z) n + z h
        c = c_old
    return h, c


@triton.jit
def gates_phase(
    p, token, rows, row_mask, s,
    h_read_ptr, h_write_ptr, c_ptr,
    input_table_ptr, weight_hh_ptr, bias_hn_ptr,
    hidden,
    IS_LSTM: tl.constexpr, GATES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, UNIT_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Feed `token` (BLOCK_B,) to the program's hidden units: read the full h of the read slot,
    write the own units' new h to the write slot and their c in place."""
    cols = tl.arange(0, 4 * BLOCK_U)
    gate = cols % 4
    has_state = (tl.zeros((BLOCK_B,), dtype=tl.int32) + s) > 0             # (BLOCK_B,): zero state before feed 0
    table_rows = token * (GATES * hidden)                                    # (BLOCK_B,)
    # a program past the last unit (more programs than hidden slices, for the vocabulary's sake) has no tile
    num_tiles = tl.minimum(tl.maximum(tl.cdiv(hidden - p * UNIT_TILES * BLOCK_U, BLOCK_U), 0), UNIT_TILES)
    for j in range(num_tiles):
        unit_start = (p * UNIT_TILES + j) * BLOCK_U
        # what does not depend on h first, so that its latency overlaps the products:
        # the gathered input-table row (x @ W_ih^T + folded biases) of each gate, the old state
        unit_col = unit_start + cols // 4
        col_mask = (gate < GATES) & (unit_col < hidden)
        x = tl.load(input_table_ptr + table_rows[:, None] + (gate * hidden + unit_col)[None, :],
                    mask=row_mask[:, None] & col_mask[None, :], other=0.).to(tl.float32)   # (BLOCK_B, 4 * BLOCK_U)
        units = unit_start + tl.arange(0, BLOCK_U)
        unit_mask = units < hidden
        mask = row_mask[:, None] & unit_mask[None, :]
        offs = rows[:, None] * hidden + units[None, :]                               # (BLOCK_B, BLOCK_U)
        if IS_LSTM:
            c_old = tl.load(c_ptr + offs, mask=mask & has_state[:, None], other=0.)
            h_old = c_old                                                             # unused
            bias_hn = tl.zeros((BLOCK_U,), dtype=tl.float32)                          # unused
        else:
            h_old = tl.load(h_read_ptr + offs, mask=mask & has_state[:, None], other=0., cache_modifier='.cg')
            c_old = h_old                                                             # unused
            bias_hn = tl.load(bias_hn_ptr + units, mask=unit_mask, other=0.).to(tl.float32)

        acc = tl.zeros((BLOCK_B, 4 * BLOCK_U), dtype=tl.float32)
        for k in range(0, hidden, BLOCK_K):
            h_k = load_h(h_read_ptr, rows, row_mask, k, hidden, has_state, BLOCK_K)                 # (BLOCK_B, BLOCK_K)
            w_k = load_gate_weights(weight_hh_ptr, unit_start, k, hidden, GATES, BLOCK_U, BLOCK_K)   # (BLOCK_K, 4 * BLOCK_U)
            acc = tl.dot(h_k, w_k.to(tl.float32), acc, input_precision=PRECISION)
        h, c = cell_update(acc, x, c_old, h_old, bias_hn, IS_LSTM, BLOCK_B, BLOCK_U)
        tl.store(h_write_ptr + offs, h, mask=mask)
        if IS_LSTM:
            tl.store(c_ptr + offs, c, mask=mask)


@triton.jit
def philox_uniform(seed, t, tokens, rows, num_tokens, offset_lo, offset_hi):
    """(rows, tokens) uniforms of sampling step t from the counter words (t * num_tokens + token,
    row, offset_lo, offset_hi): the top 24 bits, exactly representable, on {0, 2^-24, ..., 1 - 2^-24}."""
    step_token = (tl.cast(t, tl.int64) * num_tokens + tokens).to(tl.uint32)          # (BLOCK_V,)
    zeros = tl.zeros((rows.shape[0], tokens.shape[0]), dtype=tl.uint32)
    bits, _, _, _ = tl.philox(seed, zeros + step_token[None, :], zeros + rows.to(tl.uint32)[:, None],
                              zeros + offset_lo, zeros + offset_hi)
    return (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def philox_uniform_kernel(seed_ptr, offset_ptr, out_ptr, batch, length, num_tokens,
                          BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr):
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


def philox_uniforms(seed: Tensor, offset: Tensor, batch: int, length: int, num_tokens: int) -> Tensor:
    """(batch, length, num_tokens) fp32: the uniforms the kernel's Philox noise is made of, at `offset`."""
    out = torch.empty((batch, length, num_tokens), dtype=torch.float32, device=seed.device)
    philox_uniform_kernel[(cdiv(batch, 16), length)](seed.reshape(1), offset.reshape(1), out, batch, length, num_tokens,
                                                     BLOCK_B=16, BLOCK_V=64)
    return out


@triton.jit
def tile_scores(
    logits, tokens, token_mask, rows, row_mask, t, running_max, band_on,
    temperature, g_hi, g_lo, num_tokens,
    seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
    SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr,
):
    """Scores of one (BLOCK_B, BLOCK_V) logits tile: logits + T * G for the band's candidates,
    -inf elsewhere (plain logits at temperature 0). Returns (scores, new running max)."""
    running_max = tl.maximum(running_max, tl.max(tl.where(token_mask[None, :], logits, float('-inf')), axis=1))
    if SAMPLE:
        span = temperature * (g_hi - g_lo)
        line = running_max - span - (tl.abs(running_max) + span) * (1. / 65536.)   # (BLOCK_B,)
        line = tl.where(band_on != 0, line, float('-inf'))
        candidate = row_mask[:, None] & token_mask[None, :] & (logits >= line[:, None])
        scores = tl.full(logits.shape, float('-inf'), tl.float32)
        if tl.max(candidate.to(tl.int32)) > 0:
            if INJECTED_NOISE:
                noise_ptrs = (noise_ptr + rows.to(tl.int64)[:, None] * stride_noise_b + tl.cast(t, tl.int64) * stride_noise_t
                              + tokens.to(tl.int64)[None, :] * stride_noise_v)
                # only candidates are read; the others get 0.5 (never used: log(0) would warn)
                uniform = tl.load(noise_ptrs, mask=candidate, other=0.5).to(tl.float32)
            else:
                uniform = philox_uniform(seed, t, tokens, rows, num_tokens, offset_lo, offset_hi)
            gumbel = -tl.log(-tl.log(uniform))                 # u == 0 gives -inf: never drawn
            scores = tl.where(candidate, logits + temperature * gumbel, float('-inf'))
    else:
        scores = tl.where(token_mask[None, :], logits, float('-inf'))
    return scores, running_max


@triton.jit
def slice_best(
    p, rows, row_mask, t, band_on, h_ptr,
    weight_out_ptr, bias_out_ptr,
    hidden, num_tokens, temperature, g_hi, g_lo,
    seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
    HAS_BIAS_OUT: tl.constexpr, SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, VOCAB_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(best score, lowest token with it, largest logit) per row over the program's vocabulary slice."""
    best_score = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    best_token = tl.zeros((BLOCK_B,), dtype=tl.int32)
    running_max = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
    has_state = rows >= 0                                              # h is always there in this phase
    for j in range(VOCAB_TILES):
        token_start = (p * VOCAB_TILES + j) * BLOCK_V
        tokens = token_start + tl.arange(0, BLOCK_V)
        token_mask = tokens < num_tokens
        logits = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
        for k in range(0, hidden, BLOCK_K):
            h_k = load_h(h_ptr, rows, row_mask, k, hidden, has_state, BLOCK_K)                       # (BLOCK_B, BLOCK_K)
            w_k = load_out_weights(weight_out_ptr, token_start, k, hidden, num_tokens, BLOCK_V, BLOCK_K)  # (BLOCK_K, BLOCK_V)
            logits = tl.dot(h_k, w_k.to(tl.float32), logits, input_precision=PRECISION)
        if HAS_BIAS_OUT:
            logits = logits + tl.load(bias_out_ptr + tokens, mask=token_mask, other=0.,
                                      eviction_policy='evict_last').to(tl.float32)[None, :]

        scores, running_max = tile_scores(
            logits, tokens, token_mask, rows, row_mask, t, running_max, band_on,
            temperature, g_hi, g_lo, num_tokens,
            seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
            SAMPLE, INJECTED_NOISE)

        # running argmax; ties go to the lowest token id, as torch.argmax
        tile_best = tl.max(scores, axis=1)                                          # (BLOCK_B,)
        tile_token = tl.min(tl.where(scores == tile_best[:, None], tokens[None, :], 2147483647), axis=1)
        better = tile_best > best_score                  # strict: an earlier tile wins a tie
        best_score = tl.where(better, tile_best, best_score)
        best_token = tl.where(better, tile_token, best_token)
    return best_score, best_token, running_max


@triton.jit
def logits_phase(
    p, rows, row_mask, t, h_ptr,
    weight_out_ptr, bias_out_ptr,
    partial_score_ptr, partial_token_ptr, num_slices,
    hidden, num_tokens, temperature, g_hi, g_lo,
    seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
    HAS_BIAS_OUT: tl.constexpr, SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, VOCAB_TILES: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Sample step t on the program's vocabulary slice: its (score, token) per row into the partials."""
    if p < num_slices:
        best_score, best_token, running_max = slice_best(
            p, rows, row_mask, t, 1, h_ptr, weight_out_ptr, bias_out_ptr,
            hidden, num_tokens, temperature, g_hi, g_lo,
            seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
            HAS_BIAS_OUT, SAMPLE, INJECTED_NOISE, BLOCK_B, BLOCK_V, VOCAB_TILES, BLOCK_K, PRECISION)
        if SAMPLE:
            # the holder of the slice's largest logit drew u == 0: the band is not proven, redo without it
            span = temperature * (g_hi - g_lo)
            floor = running_max + temperature * g_lo - (tl.abs(running_max) + span) * (1. / 65536.)
            unproven = row_mask & (best_score < floor)
            if tl.max(unproven.to(tl.int32)) > 0:
                best_score, best_token, running_max = slice_best(
                    p, rows, row_mask, t, 0, h_ptr, weight_out_ptr, bias_out_ptr,
                    hidden, num_tokens, temperature, g_hi, g_lo,
                    seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
                    HAS_BIAS_OUT, SAMPLE, INJECTED_NOISE, BLOCK_B, BLOCK_V, VOCAB_TILES, BLOCK_K, PRECISION)
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
    p, s, rows, row_mask, prefix_ptr, stride_prefix_b, stride_prefix_t, prefix_len,
    partial_score_ptr, partial_token_ptr, num_slices, tokens_ptr, stride_tokens_b, stride_tokens_t,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The token fed at feed s: prefix[:, s], or sample s - prefix_len (reduced, and stored by program 0)."""
    if s < prefix_len:
        token = tl.load(prefix_ptr + rows * stride_prefix_b + s * stride_prefix_t, mask=row_mask, other=0).to(tl.int32)
    else:
        token = reduce_partials(rows, row_mask, partial_score_ptr, partial_token_ptr, num_slices, BLOCK_P)
        t = s - prefix_len
        tl.store(tokens_ptr + rows.to(tl.int64) * stride_tokens_b + tl.cast(t, tl.int64) * stride_tokens_t, token,
                 mask=row_mask & ((tl.zeros((BLOCK_B,), dtype=tl.int32) + p) == 0))
    return token


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


# the kernels


@triton.jit
def recurrent_sample_kernel(
    prefix_ptr, stride_prefix_b, stride_prefix_t,     # (batch, prefix_len) integer token ids
    input_table_ptr,                                  # (num_tokens, gates * hidden)
    weight_hh_ptr,                                    # (gates * hidden, hidden)
    bias_hn_ptr,                                      # (hidden,) GRU only
    weight_out_ptr,                                   # (num_tokens, hidden)
    bias_out_ptr,                                     # (num_tokens,) if HAS_BIAS_OUT
    noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,   # (batch, length, num_tokens) if INJECTED_NOISE
    seed_ptr, offset_ptr,                             # (1,) int64 Philox key and call offset
    tokens_ptr, stride_tokens_b, stride_tokens_t,     # (batch, length) sampled tokens
    h_ptr,                                            # (2, batch, hidden) fp32 exchange slots
    c_ptr,                                            # (batch, hidden) fp32, LSTM only
    partial_score_ptr, partial_token_ptr,             # (batch, num_slices) fp32, int32
    sync_ptr,                                         # (groups + 1,) int32, zeroed: counters, abort word
    error_ptr,                                        # (1,) int32 sticky error flag
    batch, prefix_len, length, hidden, num_tokens, programs, num_slices, groups,
    temperature, g_hi, g_lo, max_spins,
    IS_LSTM: tl.constexpr, GATES: tl.constexpr, HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, UNIT_TILES: tl.constexpr,
    BLOCK_V: tl.constexpr, VOCAB_TILES: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The persistent kernel: every feed and sampling step of the launch, phases met at grid barriers."""
    pid = tl.program_id(0)
    group = pid // programs
    p = pid % programs
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    counter_ptr = sync_ptr + group
    abort_ptr = sync_ptr + groups
    slot = batch * hidden

    seed, offset_lo, offset_hi = philox_key(seed_ptr, offset_ptr, SAMPLE, INJECTED_NOISE)

    num_feeds = prefix_len + length - 1
    target = 0
    passed = 1
    s = 0
    while (s < num_feeds) & (passed != 0):
        token = next_token(p, s, rows, row_mask, prefix_ptr, stride_prefix_b, stride_prefix_t, prefix_len,
                           partial_score_ptr, partial_token_ptr, num_slices, tokens_ptr, stride_tokens_b, stride_tokens_t,
                           BLOCK_B, BLOCK_P)
        gates_phase(p, token, rows, row_mask, s, h_ptr + (s % 2) * slot, h_ptr + ((s + 1) % 2) * slot, c_ptr,
                    input_table_ptr, weight_hh_ptr, bias_hn_ptr, hidden,
                    IS_LSTM, GATES, BLOCK_B, BLOCK_U, UNIT_TILES, BLOCK_K, PRECISION)
        target += programs
        passed = grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins)
        if (s >= prefix_len - 1) & (passed != 0):
            logits_phase(p, rows, row_mask, s - prefix_len + 1, h_ptr + ((s + 1) % 2) * slot,
                         weight_out_ptr, bias_out_ptr,
                         partial_score_ptr, partial_token_ptr, num_slices,
                         hidden, num_tokens, temperature, g_hi, g_lo,
                         seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
                         HAS_BIAS_OUT, SAMPLE, INJECTED_NOISE, BLOCK_B, BLOCK_V, VOCAB_TILES, BLOCK_K, PRECISION)
            target += programs
            passed = grid_barrier(counter_ptr, abort_ptr, error_ptr, target, max_spins)
        s += 1

    if passed != 0:
        # the last sample is never fed: reduce it and store it
        next_token(p, num_feeds, rows, row_mask, prefix_ptr, stride_prefix_b, stride_prefix_t, prefix_len,
                   partial_score_ptr, partial_token_ptr, num_slices, tokens_ptr, stride_tokens_b, stride_tokens_t,
                   BLOCK_B, BLOCK_P)


@triton.jit
def recurrent_phase_kernel(
    prefix_ptr, stride_prefix_b, stride_prefix_t,
    input_table_ptr, weight_hh_ptr, bias_hn_ptr, weight_out_ptr, bias_out_ptr,
    noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
    seed_ptr, offset_ptr,
    tokens_ptr, stride_tokens_b, stride_tokens_t,
    h_ptr, c_ptr, partial_score_ptr, partial_token_ptr,
    batch, prefix_len, length, hidden, num_tokens, programs, num_slices,
    temperature, g_hi, g_lo,
    s,                                                # the feed this launch belongs to
    PHASE: tl.constexpr,                              # 0: feed s, 1: sample after feed s, 2: store the last sample
    IS_LSTM: tl.constexpr, GATES: tl.constexpr, HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr, INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, UNIT_TILES: tl.constexpr,
    BLOCK_V: tl.constexpr, VOCAB_TILES: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One phase of the persistent kernel's loop as its own launch (same helpers, same slices); the
    host steps through the phases, so no program ever waits for another."""
    pid = tl.program_id(0)
    group = pid // programs
    p = pid % programs
    rows = group * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < batch
    slot = batch * hidden
    if PHASE == 0:
        token = next_token(p, s, rows, row_mask, prefix_ptr, stride_prefix_b, stride_prefix_t, prefix_len,
                           partial_score_ptr, partial_token_ptr, num_slices, tokens_ptr, stride_tokens_b, stride_tokens_t,
                           BLOCK_B, BLOCK_P)
        gates_phase(p, token, rows, row_mask, s, h_ptr + (s % 2) * slot, h_ptr + ((s + 1) % 2) * slot, c_ptr,
                    input_table_ptr, weight_hh_ptr, bias_hn_ptr, hidden,
                    IS_LSTM, GATES, BLOCK_B, BLOCK_U, UNIT_TILES, BLOCK_K, PRECISION)
    elif PHASE == 1:
        seed, offset_lo, offset_hi = philox_key(seed_ptr, offset_ptr, SAMPLE, INJECTED_NOISE)
        logits_phase(p, rows, row_mask, s - prefix_len + 1, h_ptr + ((s + 1) % 2) * slot,
                     weight_out_ptr, bias_out_ptr,
                     partial_score_ptr, partial_token_ptr, num_slices,
                     hidden, num_tokens, temperature, g_hi, g_lo,
                     seed, offset_lo, offset_hi, noise_ptr, stride_noise_b, stride_noise_t, stride_noise_v,
                     HAS_BIAS_OUT, SAMPLE, INJECTED_NOISE, BLOCK_B, BLOCK_V, VOCAB_TILES, BLOCK_K, PRECISION)
    else:
        next_token(p, s, rows, row_mask, prefix_ptr, stride_prefix_b, stride_prefix_t, prefix_len,
                   partial_score_ptr, partial_token_ptr, num_slices, tokens_ptr, stride_tokens_b, stride_tokens_t,
                   BLOCK_B, BLOCK_P)


# the launch plan


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


_num_sms_cache: dict = {}


def capability(device: torch.device) -> int:
    """Compute capability as 10 * major + minor (90 on an H200); 90 off CUDA (the interpreter)."""
    if device.type != 'cuda':
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def num_sms(device: torch.device) -> int:
    """Multiprocessors of `device` (132 on an H200); 1 off CUDA (the interpreter)."""
    if device.type != 'cuda':
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _num_sms_cache:
        _num_sms_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _num_sms_cache[index]


@dataclass(frozen=True)
class LaunchPlan:
    """How a launch splits the work (see the module docstring's launcher rule)."""
    block_b: int          # batch rows of a group
    groups: int           # batch tiles, each with a full set of slices
    programs: int         # programs per group, splitting the weights
    block_u: int          # hidden units of a gate tile (4 * block_u columns)
    unit_tiles: int       # gate tiles per program
    block_v: int          # tokens of a vocabulary tile
    vocab_tiles: int      # vocabulary tiles per program
    num_slices: int       # programs of a group with a vocabulary slice
    block_k: int          # hidden (reduction) tile
    block_p: int          # partials reduced at a time: next_pow2(num_slices), at most 32
    num_warps: int

    @property
    def grid(self) -> int:
        return self.groups * self.programs

    @property
    def cooperative(self) -> bool:
        return self.programs > 1

    def slice_bytes(self, hidden: int, weight_bytes: int = 4) -> int:
        """Weight bytes a program reads each step (W_hh^T of its units padded to 4 gates, W_out^T of its slice)."""
        return hidden * (4 * self.block_u * self.unit_tiles + self.block_v * self.vocab_tiles) * weight_bytes


def plan_launch(batch: int, hidden: int, num_tokens: int, sms: int, *, weight_bytes: int = 4,
                programs: int | None = None, capability: int = 90) -> LaunchPlan:
    """The launcher rule. `programs` forces the programs per group (tests: P > 1 under the
    interpreter, phase per launch); otherwise they follow from `sms`. `capability` (90: sm_90)
    sizes the accumulators: sm_80's mma.sync operands need more registers (halved there)."""
    block_b = min(64, max(16, next_power_of_2(batch)))
    # 64 rows take the wgmma path on sm_90, whose operands cost more registers (Triton 3.6 spilled)
    accumulator = ACCUMULATOR_ELEMENTS if capability >= 90 and block_b <= 32 else ACCUMULATOR_ELEMENTS // 2
    groups = cdiv(batch, block_b)
    per_group = max(1, sms // groups) if programs is None else programs

    units = cdiv(hidden, per_group)                                   # hidden units a program should own
    block_u = min(max(4, next_power_of_2(units)), max(4, accumulator // (4 * block_b)))
    unit_tiles = cdiv(units, block_u)
    hidden_programs = cdiv(hidden, unit_tiles * block_u)
    if programs is None:
        programs = min(per_group, max(hidden_programs, min(per_group, cdiv(num_tokens, 128))))
    else:
        programs = per_group

    tokens = cdiv(num_tokens, programs)
    block_v = min(max(16, next_power_of_2(tokens)), max(16, accumulator // block_b))
    vocab_tiles = cdiv(tokens, block_v)
    num_slices = cdiv(num_tokens, block_v * vocab_tiles)

    block_k = min(max(16, next_power_of_2(hidden)), 32 if capability >= 90 else 16)
    num_warps = 8
    return LaunchPlan(block_b, groups, programs, block_u, unit_tiles, block_v, vocab_tiles, num_slices, block_k,
                      min(32, max(2, next_power_of_2(num_slices))), num_warps)


def gumbel_bounds(smallest_positive: float, largest_below_one: float) -> tuple[float, float]:
    """(G_lo, G_hi): the finite extremes of G = -log(-log u) over a uniform grid, in float64
    (G_hi is +inf when the largest uniform rounds to 1.0 in fp32: then there is no band)."""
    as_fp32 = lambda u: torch.tensor(u, dtype=torch.float64).float().double()
    lo, hi = as_fp32(smallest_positive), as_fp32(largest_below_one)
    gumbel = lambda u: -torch.log(-torch.log(u))
    return float(gumbel(lo)), float(gumbel(hi))


# Philox's top 24 bits: u in {k * 2^-24}
PHILOX_GUMBEL_BOUNDS = gumbel_bounds(2. ** -24, 1. - 2. ** -24)


def injected_gumbel_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Bounds for injected noise of `dtype`, read in the kernel as fp32: any positive fp32 (down to
    its subnormals) and the largest value below 1 of the dtype."""
    below_one = torch.nextafter(torch.tensor(1., dtype=dtype), torch.tensor(0., dtype=dtype)).item()
    return gumbel_bounds(float(torch.finfo(torch.float32).smallest_normal) * 2. ** -23, below_one)


# errors and the per-seed offsets


_error_flags: dict = {}
# a seed tensor passed without `offset` gets its own offset tensor, advanced by every call
_seed_offsets = WeakTensorKeyDictionary()


def error_flag(device: torch.device) -> Tensor:
    """The sticky (1,) int32 flag that a barrier which gave up sets on `device`."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())      # 'cuda' and 'cuda:0' share one flag
    key = str(device)
    if key not in _error_flags:
        _error_flags[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _error_flags[key]


class KernelBarrierError(RuntimeError):
    pass


def check_kernel_errors(device: torch.device, *, grid: int | None = None, plan: LaunchPlan | None = None):
    """Raise if a grid barrier on `device` gave up since the last check (reads the flag: a host
    sync; call it where the host synchronises anyway). Clears the flag."""
    device = torch.device(device)
    flag = error_flag(device)
    if int(flag.item()) != 0:
        flag.zero_()
        where = f'a grid of {grid} programs ({plan.groups} groups of {plan.programs})' if plan is not None else 'a persistent launch'
        raise KernelBarrierError(
            f'recurrent_sample_kernel: {where} on {device} with {num_sms(device)} SMs did not meet at a grid barrier '
            'within max_spins: the programs were not all co-resident (another kernel holding SMs, MPS/MIG limits, or a '
            'grid larger than the device allows). Its tokens are invalid. Retry with mode="phases" or fewer programs.')


def wants_check() -> bool:
    return os.environ.get(CHECK_ENV, '0').strip() not in ('', '0', 'false', 'False')


# launch


def kernel_constexprs(plan: LaunchPlan, is_lstm: bool, has_bias_out: bool, sample: bool, injected: bool, precision: str) -> dict:
    return dict(
        IS_LSTM=is_lstm, GATES=4 if is_lstm else 3, HAS_BIAS_OUT=has_bias_out,
        SAMPLE=sample, INJECTED_NOISE=injected,
        BLOCK_B=plan.block_b, BLOCK_U=plan.block_u, UNIT_TILES=plan.unit_tiles,
        BLOCK_V=plan.block_v, VOCAB_TILES=plan.vocab_tiles, BLOCK_K=plan.block_k, BLOCK_P=plan.block_p,
        PRECISION=precision,
    )


def recurrent_sample_launch(
    cell: str,
    input_table: Tensor,          # (num_tokens, gates * hidden)
    weight_hh: Tensor,            # (gates * hidden, hidden)
    bias_hn: Tensor | None,       # (hidden,) GRU
    weight_out: Tensor,           # (num_tokens, hidden)
    bias_out: Tensor | None,      # (num_tokens,)
    prefix: Tensor,               # (batch, prefix_len)
    length: int,
    temperature: float,
    seed: Tensor,                 # (1,) int64
    offset: Tensor,               # (1,) int64
    uniform_noise: Tensor | None,   # (batch, length, num_tokens)
    out: Tensor,                  # (batch, length) integer
    state_scratch: Tensor,        # (cell_states, 2, batch, hidden) fp32
    plan: LaunchPlan,
    *,
    mode: str,
    precision: str,
    max_spins: int = DEFAULT_MAX_SPINS,
) -> tuple[Tensor, ...]:
    """Launch on checked, contiguous weights. Returns the final state tuple (views into state_scratch)."""
    batch, prefix_len = prefix.shape
    hidden = weight_hh.shape[1]
    num_tokens = weight_out.shape[0]
    device = weight_hh.device
    is_lstm = cell == 'lstm'

    h = state_scratch[0]                                         # (2, batch, hidden) exchange slots
    c = state_scratch[1, 0] if is_lstm else h[0]                 # (batch, hidden); the GRU never touches it
    partial_score = torch.empty((batch, plan.num_slices), dtype=torch.float32, device=device)
    partial_token = torch.empty((batch, plan.num_slices), dtype=torch.int32, device=device)

    sample = temperature > 0
    injected = uniform_noise is not None
    noise = uniform_noise if injected else weight_out                                # a placeholder pointer
    noise_strides = uniform_noise.stride() if injected else (0, 0, 0)
    g_lo, g_hi = injected_gumbel_bounds(uniform_noise.dtype) if injected else PHILOX_GUMBEL_BOUNDS

    args = (
        prefix, prefix.stride(0), prefix.stride(1),
        input_table, weight_hh,
        bias_hn if bias_hn is not None else weight_out,
        weight_out,
        bias_out if bias_out is not None else weight_out,
        noise, *noise_strides,
        seed, offset,
        out, out.stride(0), out.stride(1),
        h, c, partial_score, partial_token,
    )
    sizes = (batch, prefix_len, length, hidden, num_tokens, plan.programs, plan.num_slices)
    sampling = (float(temperature) if sample else 0., g_hi, g_lo)
    constexprs = kernel_constexprs(plan, is_lstm, bias_out is not None, sample, injected, precision)
    num_feeds = prefix_len + length - 1

    if mode == 'persistent':
        sync = torch.zeros(plan.groups + 1, dtype=torch.int32, device=device)        # counters, abort word
        launch_options = dict(num_warps=plan.num_warps, num_stages=1, **COMPILE_OPTIONS)
        if plan.cooperative and not INTERPRETED:
            launch_options['launch_cooperative_grid'] = True
        recurrent_sample_kernel[(plan.grid,)](
            *args, sync, error_flag(device), *sizes, plan.groups, *sampling, max_spins,
            **constexprs, **launch_options)
    else:
        phase = lambda s, which: recurrent_phase_kernel[(plan.grid,)](
            *args, *sizes, *sampling, s, PHASE=which, **constexprs, num_warps=PHASE_NUM_WARPS, num_stages=1,
            **COMPILE_OPTIONS)
        for s in range(num_feeds):
            phase(s, 0)
            if s >= prefix_len - 1:
                phase(s, 1)
        phase(num_feeds, 2)

    # feed s writes slot (s + 1) % 2
    final = num_feeds % 2
    return (h[final], c) if is_lstm else (h[final],)


# public function


def check_plan(plan, batch: int, hidden: int, num_tokens: int):
    """A hand-made plan must cover the shapes with tiles tl.dot accepts."""
    if not isinstance(plan, LaunchPlan):
        raise TypeError(f'plan must be a LaunchPlan, got {type(plan).__name__}')
    pow2 = lambda n, low: n >= low and n & (n - 1) == 0
    for name, low in (('block_b', 16), ('block_u', 4), ('block_v', 16), ('block_k', 16), ('block_p', 2)):
        if not pow2(getattr(plan, name), low):
            raise ValueError(f'plan.{name} must be a power of two >= {low}, got {getattr(plan, name)}')
    slice_tokens = plan.vocab_tiles * plan.block_v
    problems = [
        (plan.groups * plan.block_b < batch, f'groups * block_b = {plan.groups * plan.block_b} < batch {batch}'),
        (plan.programs * plan.unit_tiles * plan.block_u < hidden, f'programs * unit_tiles * block_u < hidden {hidden}'),
        (plan.num_slices * slice_tokens < num_tokens, f'num_slices * vocab_tiles * block_v < num_tokens {num_tokens}'),
        ((plan.num_slices - 1) * slice_tokens >= num_tokens, f'slice {plan.num_slices - 1} of {plan.num_slices} is empty'),
        (plan.num_slices > plan.programs, f'num_slices {plan.num_slices} > programs {plan.programs}'),
        (plan.num_warps not in (1, 2, 4, 8, 16), f'num_warps {plan.num_warps} is not a power of two <= 16'),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(f'plan {plan} does not fit batch {batch}, hidden {hidden}, num_tokens {num_tokens}: {what}')


def check_device_tensor(name: str, t, device: torch.device, dtypes, shape=None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.device != device:
        raise ValueError(f'{name} must be on {device} (the device of the weights), got {t.device}')
    if t.dtype not in dtypes:
        raise TypeError(f'{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}')
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f'{name} must have shape {tuple(shape)}, got {tuple(t.shape)}')
    return t


@torch.no_grad()
def fused_recurrent_sample(
    folded: FoldedRecurrentNet,
    prefix: Tensor,
    length: int,
    temperature: float,
    *,
    seed: Tensor | None = None,
    offset: Tensor | None = None,
    uniform_noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    out: Tensor | None = None,
    state_scratch: Tensor | None = None,
    precision: str = 'tf32x3',
    mode: str = 'auto',
    programs: int | None = None,
    check: bool | None = None,
    max_spins: int = DEFAULT_MAX_SPINS,
    plan: LaunchPlan | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`FoldedRecurrentNet.sample` in one persistent kernel launch: same arguments, same return.

    Teacher-force `prefix` (batch, prefix_len) from a zero state, then sample `length` tokens from
    softmax(logits / temperature) by Gumbel-max (argmax at temperature 0, lowest id on ties).
    Returns (tokens (batch, length) int64, or `out`; final state ((h, c) for LSTM, (h,) for GRU),
    fp32 (batch, hidden) each, the state after feeding the second to last sampled token).

    Noise: `uniform_noise` (batch, length, num_tokens) of U[0, 1) replaces the generator (parity
    tests; only the band's candidates are read). Otherwise in-kernel Philox keyed by `seed` ((1,)
    int64 device tensor; drawn from `generator` / torch's default generator when None) at call
    offset `offset` ((1,) int64 device tensor), advanced in place by one after the launch, so that
    the next call or the next replay of a captured CUDA graph draws fresh noise. Without `offset`:
    a fresh seed's offset is zero; a given `seed` tensor gets an offset tensor of its own that
    every call with that seed advances (so repeated calls with one seed differ). Token ids in
    `prefix` are not range-checked (that needs a host sync): they must lie in [0, num_tokens).

    `out` (batch, length), any integer dtype wide enough, may be a strided view. `state_scratch`
    ((2, 2, batch, hidden) LSTM, (1, 2, batch, hidden) GRU, fp32, contiguous) holds the exchange
    slots (and c); the returned state tensors are views into it. Pass one under CUDA graph capture.

    mode: 'persistent' (one launch, grid barriers), 'phases' (one launch per phase, the host stepping:
    what the interpreter checks with P > 1 programs), 'auto' (persistent; phases under the
    interpreter when the plan has more than one program a group). `programs` forces the programs
    per group; `plan` replaces the whole launch plan (tests, tuning). `check` (default: env UP_FAST_KERNEL_CHECK) synchronises after the launch and raises
    KernelBarrierError if a grid barrier gave up; a training step leaves it off (no host sync).
    """
    if not isinstance(folded, FoldedRecurrentNet):
        raise TypeError(f'folded must be a FoldedRecurrentNet, got {type(folded).__name__}')
    if folded.cell not in SUPPORTED_CELLS:
        raise ValueError(f'folded.cell must be one of {SUPPORTED_CELLS}, got {folded.cell!r}')
    length = check_int('length', length, low=1)
    temperature = check_temperature(temperature)
    if precision not in SUPPORTED_PRECISIONS:
        raise ValueError(f'precision must be one of {SUPPORTED_PRECISIONS}, got {precision!r}')
    if mode not in SUPPORTED_MODES:
        raise ValueError(f'mode must be one of {SUPPORTED_MODES}, got {mode!r}')
    if programs is not None:
        programs = check_int('programs', programs, low=1)
    max_spins = check_int('max_spins', max_spins, low=1, high=2**31 - 1)
    check = wants_check() if check is None else bool(check)

    is_lstm = folded.cell == 'lstm'
    gates = 4 if is_lstm else 3
    weight_hh = folded.weight_hh
    if not isinstance(weight_hh, Tensor) or weight_hh.ndim != 2:
        raise ValueError('folded.weight_hh must be a (gates * hidden, hidden) tensor')
    device = weight_hh.device
    hidden = weight_hh.shape[1]
    check_device_tensor('folded.weight_hh', weight_hh, device, WEIGHT_DTYPES, (gates * hidden, hidden))
    num_tokens = folded.weight_out.shape[0] if isinstance(folded.weight_out, Tensor) else None
    check_device_tensor('folded.weight_out', folded.weight_out, device, WEIGHT_DTYPES, (num_tokens, hidden))
    check_device_tensor('folded.input_table', folded.input_table, device, WEIGHT_DTYPES, (num_tokens, gates * hidden))
    if folded.bias_out is not None:
        check_device_tensor('folded.bias_out', folded.bias_out, device, WEIGHT_DTYPES, (num_tokens,))
    if not is_lstm:
        if folded.bias_hn is None:
            raise ValueError('folded.bias_hn must be a (hidden,) tensor for a GRU, got None')
        check_device_tensor('folded.bias_hn', folded.bias_hn, device, WEIGHT_DTYPES, (hidden,))
    if hidden < 1 or num_tokens < 1:
        raise ValueError(f'hidden size and num_tokens must be >= 1, got {hidden} and {num_tokens}')

    if device.type != 'cuda' and not INTERPRETED:
        raise ValueError(
            f'fused_recurrent_sample needs CUDA tensors, the weights are on {device}; on CPU use '
            'FoldedRecurrentNet.sample, or set TRITON_INTERPRET=1 before triton is imported')

    if not isinstance(prefix, Tensor):
        raise TypeError(f'prefix must be a torch.Tensor of token ids, got {type(prefix).__name__}')
    check_device_tensor('prefix', prefix, device, TOKEN_DTYPES)
    if prefix.ndim != 2:
        raise ValueError(f'prefix must have shape (batch, prefix_len), got {tuple(prefix.shape)}')
    batch, prefix_len = prefix.shape
    if batch < 1 or prefix_len < 1:
        raise ValueError(f'prefix must hold at least one token per row and one row, got shape {tuple(prefix.shape)}')
    # in-kernel offsets into the state slots and weights are int32
    if 2 * batch * hidden >= 2**31 or batch * num_tokens >= 2**31 or (num_tokens + gates * hidden) * max(hidden, gates) >= 2**31:
        raise ValueError(f'batch {batch}, hidden {hidden}, num_tokens {num_tokens} overflow the kernel\'s int32 offsets')
    if length * num_tokens > MAX_COUNTERS_PER_ROW:
        raise ValueError(f'length * num_tokens must be <= 2**32 (Philox counter word), got {length} * {num_tokens}')

    if uniform_noise is not None:
        check_device_tensor('uniform_noise', uniform_noise, device, NOISE_DTYPES, (batch, length, num_tokens))
    if seed is None:
        seed = torch.empty(1, dtype=torch.int64, device=device).random_(generator=generator)
        if offset is None:
            offset = torch.zeros(1, dtype=torch.int64, device=device)
    check_device_tensor('seed', seed, device, (torch.int64,))
    if seed.numel() != 1:
        raise ValueError(f'seed must hold exactly one int64, got shape {tuple(seed.shape)}')
    if offset is None:
        if seed not in _seed_offsets:
            _seed_offsets[seed] = torch.zeros(1, dtype=torch.int64, device=device)
        offset = _seed_offsets[seed]
    check_device_tensor('offset', offset, device, (torch.int64,))
    if offset.numel() != 1:
        raise ValueError(f'offset must hold exactly one int64, got shape {tuple(offset.shape)}')

    if out is None:
        out = torch.empty((batch, length), dtype=torch.int64, device=device)
    check_device_tensor('out', out, device, TOKEN_DTYPES, (batch, length))
    if num_tokens - 1 > torch.iinfo(out.dtype).max:
        raise ValueError(f'out of dtype {out.dtype} cannot hold token ids up to {num_tokens - 1}')

    cell_states = 2 if is_lstm else 1
    if state_scratch is None:
        state_scratch = torch.empty((cell_states, 2, batch, hidden), dtype=torch.float32, device=device)
    check_device_tensor('state_scratch', state_scratch, device, (torch.float32,), (cell_states, 2, batch, hidden))
    if not state_scratch.is_contiguous():
        raise ValueError('state_scratch must be contiguous')

    weight_bytes = max(t.element_size() for t in (weight_hh, folded.weight_out))
    if plan is None:
        plan = plan_launch(batch, hidden, num_tokens, num_sms(device), weight_bytes=weight_bytes, programs=programs,
                           capability=capability(device))
    else:
        check_plan(plan, batch, hidden, num_tokens)
    if mode == 'auto':
        mode = 'phases' if INTERPRETED and plan.programs > 1 else 'persistent'
    if plan.grid > 65535:
        raise ValueError(f'batch {batch} needs a grid of {plan.grid} programs, more than a launch allows')

    state = recurrent_sample_launch(
        folded.cell,
        folded.input_table.contiguous(),
        weight_hh.contiguous(),
        folded.bias_hn.contiguous() if not is_lstm else None,
        folded.weight_out.contiguous(),
        folded.bias_out.contiguous() if folded.bias_out is not None else None,
        prefix, length, temperature,
        seed.reshape(1), offset.reshape(1),
        uniform_noise, out, state_scratch, plan,
        mode=mode, precision=precision, max_spins=max_spins,
    )
    # the next call (or graph replay) draws fresh noise
    offset.add_(1)
    if check and mode == 'persistent':
        check_kernel_errors(device, grid=plan.grid, plan=plan)
    return out, state


# ahead-of-time configurations (the compile gate: up_fast.kernels.aot, tests/test_compile_gate.py)


# leads for an H200 SM (HOPPER.md / H200.md, vendor figures), for the design floor only: not measured
SM_CLOCK_GHZ = 1.75
L2_LATENCY_US = 0.5              # one dependent L2 round trip (~700-900 cycles)
L2_BYTES_PER_CLOCK_PER_SM = 64
L1_BYTES_PER_CLOCK_PER_SM = 128
L1_BYTES_PER_SM = 200 * 1024       # of the 256 KB L1/shared: what the slices may count on (Triton takes some shared memory)
FMA_FLOPS_PER_CLOCK_PER_SM = 256                  # 128 fp32 FMA lanes
TF32_FLOPS_PER_CLOCK_PER_SM = 495e12 / 132 / 1.75e9 / 1  # dense tf32 tensor cores, split over the SMs


def design_floor(plan: LaunchPlan, hidden: int, num_tokens: int, gates: int, weight_bytes: int, precision: str,
                 sample: bool) -> dict:
    """Bytes and FLOPs per program per phase, barriers per step and the per-step floor they imply."""
    units = plan.unit_tiles * plan.block_u
    slice_tokens = plan.vocab_tiles * plan.block_v
    exchange = plan.block_b * hidden * 4                                  # the full h a phase reads from L2
    gates_weights = 4 * units * hidden * weight_bytes                     # from L1 (padded to 4 gates)
    logits_weights = slice_tokens * hidden * weight_bytes
    gates_flops = 2 * plan.block_b * hidden * 4 * units
    logits_flops = 2 * plan.block_b * hidden * slice_tokens
    clock = SM_CLOCK_GHZ * 1e3                                            # cycles per us
    rate = FMA_FLOPS_PER_CLOCK_PER_SM if precision == 'ieee' else TF32_FLOPS_PER_CLOCK_PER_SM / 3
    # slices larger than L1 stream from L2 every step
    in_l1 = plan.slice_bytes(hidden, weight_bytes) <= L1_BYTES_PER_SM
    weight_rate = L1_BYTES_PER_CLOCK_PER_SM if in_l1 else L2_BYTES_PER_CLOCK_PER_SM
    phase_us = lambda weights, flops: L2_LATENCY_US + max(
        exchange / L2_BYTES_PER_CLOCK_PER_SM, weights / weight_rate, flops / rate) / clock
    barrier_us = 2 * L2_LATENCY_US if plan.programs > 1 else L2_LATENCY_US
    gates_us = phase_us(gates_weights, gates_flops)
    logits_us = phase_us(logits_weights, logits_flops) + L2_LATENCY_US    # + the partials' dependent read
    return dict(
        programs_per_group=plan.programs,
        groups=plan.groups,
        weight_bytes_per_program=plan.slice_bytes(hidden, weight_bytes),
        weights_in_l1=in_l1,
        gates_l2_bytes_per_program=exchange,
        gates_weight_bytes_per_program=gates_weights,
        gates_flops_per_program=gates_flops,
        logits_l2_bytes_per_program=exchange,
        logits_weight_bytes_per_program=logits_weights,
        logits_flops_per_program=logits_flops,
        barriers_per_sampling_step=2,
        barriers_per_prefix_step=1,
        floor_us_per_sampling_step=round(gates_us + logits_us + 2 * barrier_us, 2),
        floor_us_per_prefix_step=round(gates_us + barrier_us, 2),
    )


AOT_SHAPES = {                  # name: (batch, hidden, num_tokens)
    'example': (32, 256, 256),
    'vocab32768': (32, 256, 32768),
    'hidden1024': (32, 1024, 256),
    'batch4096': (4096, 256, 256),
}


def kernel_signature(fn, weight_type: str, constexprs: dict) -> dict:
    """Every non-constexpr argument of `fn` -> its Triton type, as the launcher passes them."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            continue
        if name in ('input_table_ptr', 'weight_hh_ptr', 'bias_hn_ptr', 'weight_out_ptr', 'bias_out_ptr'):
            types[name] = '*' + weight_type
        elif name in ('prefix_ptr', 'tokens_ptr', 'seed_ptr', 'offset_ptr'):
            types[name] = '*i64'
        elif name in ('noise_ptr', 'h_ptr', 'c_ptr', 'partial_score_ptr'):
            types[name] = '*fp32'
        elif name in ('partial_token_ptr', 'sync_ptr', 'error_ptr'):
            types[name] = '*i32'
        elif name in ('temperature', 'g_hi', 'g_lo'):
            types[name] = 'fp32'
        else:
            types[name] = 'i32'
    return types


def aot_configurations(arch: int = 90) -> list[AotConfig]:
    """Every kernel configuration the launcher chooses for the gate's shapes on sm_`arch` with the
    SM count of its part (TARGET_SMS: an H200 for 90, an A100 for 80): LSTM and GRU, fp32 and bf16
    weights, sampling and greedy, the persistent kernel and the three per-phase kernels; plus
    injected noise and 'ieee' at the example size (the GPU tests)."""
    sms, capability = TARGET_SMS[arch], arch
    configs, seen = [], set()

    def add(name, fn, constexprs, plan, floor):
        weight_type = constexprs.pop('_weight_type')
        signature = kernel_signature(fn, weight_type, constexprs)
        num_warps = plan.num_warps if fn is recurrent_sample_kernel else PHASE_NUM_WARPS
        key = (fn.__name__, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())), num_warps)
        if key in seen:
            return
        seen.add(key)
        configs.append(AotConfig(name=name, fn=fn, signature=signature, constexprs=constexprs,
                                 num_warps=num_warps, num_stages=1, programs=plan.grid, floor=floor,
                                 cooperative=fn is recurrent_sample_kernel and plan.cooperative,
                                 options=dict(COMPILE_OPTIONS)))

    variants = []
    for shape in AOT_SHAPES:
        for cell in ('lstm', 'gru'):
            for weights in ('fp32', 'bf16'):
                for sample in (True, False):
                    variants.append((shape, cell, weights, sample, False, 'tf32x3'))
    variants += [('example', cell, 'fp32', True, True, 'tf32x3') for cell in ('lstm', 'gru')]
    variants += [('example', cell, 'fp32', sample, False, 'ieee') for cell in ('lstm', 'gru') for sample in (True, False)]

    for shape, cell, weights, sample, injected, precision in variants:
        batch, hidden, num_tokens = AOT_SHAPES[shape]
        weight_bytes = 2 if weights == 'bf16' else 4
        plan = plan_launch(batch, hidden, num_tokens, sms, weight_bytes=weight_bytes, capability=capability)
        gates = 4 if cell == 'lstm' else 3
        base = kernel_constexprs(plan, cell == 'lstm', True, sample, injected, precision)
        floor = design_floor(plan, hidden, num_tokens, gates, weight_bytes, precision, sample)
        stem = f'{shape}-{cell}-{weights}-{"sample" if sample else "greedy"}{"-injected" if injected else ""}-{precision}'
        add(f'persistent-{stem}', recurrent_sample_kernel, dict(base, _weight_type=weights), plan, floor)
        for phase in (0, 1, 2):
            add(f'phase{phase}-{stem}', recurrent_phase_kernel, dict(base, PHASE=phase, _weight_type=weights), plan, floor)
    return configs
