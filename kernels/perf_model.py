"""The latency model of the sampling kernel: dependent L2 round trips, barriers and MMA chain a step, and the estimate.

Estimates from the design and typical latencies, not measurements (docs/kernel.md, "The latency
model"). `design_floor` counts per configuration what a step must wait for in sequence and turns
it into microseconds under the assumptions below; the compile configurations (aot.py) carry it,
and `python -m benchmarks.compile_report` prints it next to the SASS counts of the compiled kernel,
adding `cta_barrier_us` for the bar.sync instructions it counts in the step loop.
"""

from __future__ import annotations

from up_fast.kernels.launch_plan import LaunchPlan

# an H200 SM (vendor figures and typical latencies): assumptions of the model, not measured
SM_CLOCK_GHZ = 1.75
L2_LATENCY_US = 0.25  # one dependent L2 hit (~450 cycles; 200-300 ns on Hopper)
L2_BYTES_PER_CLOCK_PER_SM = 64
MMA_LINK_CYCLES = 16  # issue-to-dependent-issue of one m16n8k8 tf32 mma.sync on the same accumulator
FMA_FLOPS_PER_CLOCK_PER_SM = 256  # 128 fp32 FMA lanes ('ieee': no tensor cores)
MMA_K = 8  # the K of one tf32 mma.sync
TF32X3_PASSES = 3  # big*big + small*big + big*small, all into one accumulator
# a grid barrier: the release fence (the phase's stores acknowledged by L2), then the acquire read that
# sees the last arrival (docs/kernel.md, "The barrier")
BARRIER_TRIPS = 2
CTA_BARRIER_CYCLES = 20  # one bar.sync of a program's warps, with the shared-memory exchange it orders

ASSUMPTIONS = (
    f'L2 hit {L2_LATENCY_US} us a dependent round trip; {L2_BYTES_PER_CLOCK_PER_SM} B/clock/SM from L2; '
    f'{SM_CLOCK_GHZ} GHz; {MMA_LINK_CYCLES} cycles a dependent tf32 mma.sync; {CTA_BARRIER_CYCLES} cycles a '
    'bar.sync, each one in the step loop counted once a step, in series; a grid barrier is '
    f'{BARRIER_TRIPS} round trips (release fence, the acquire read that sees the last arrival); '
    'resident slices are read on chip at no cost, streamed ones from L2 every step (a barrier invalidates L1) with '
    'the K loop pipelined: one round trip, then streaming; every phase reads the whole h from L2'
)


def mma_chain(k: int, block_k: int, precision: str) -> int:
    """Dependent mma.sync on one accumulator over a K loop of `k` in tiles of `block_k` (0 for 'ieee': FMAs)."""
    if precision == 'ieee':
        return 0
    return -(-k // block_k) * (block_k // MMA_K) * TF32X3_PASSES


def cta_barrier_us(bar_syncs: int) -> float:
    """The step's CTA barriers (bar.sync counted in the step loop's SASS) in microseconds."""
    return bar_syncs * CTA_BARRIER_CYCLES / (SM_CLOCK_GHZ * 1e3)


def design_floor(
    plan: LaunchPlan, hidden: int, num_tokens: int, gates: int, weight_bytes: int, precision: str, sample: bool
) -> dict:
    """Per step: the dependent L2 round trips, barriers and MMA chain, and the microseconds they imply."""
    units = plan.unit_tiles * plan.block_u
    slice_tokens = plan.vocab_tiles * plan.block_v
    exchange = plan.block_b * hidden * 4  # the full h a phase reads from L2
    clock = SM_CLOCK_GHZ * 1e3  # cycles per us
    stream_us = lambda nbytes: nbytes / L2_BYTES_PER_CLOCK_PER_SM / clock
    fma_us = lambda flops: 0.0 if precision != 'ieee' else flops / FMA_FLOPS_PER_CLOCK_PER_SM / clock
    padded, splits = plan.k_splits(hidden)
    # a resident slice multiplies one K chunk a warp: the chain of one chunk; a streamed one the whole K loop
    resident_chain = mma_chain(padded // splits, padded // splits, precision)
    streamed_chain = mma_chain(hidden, plan.block_k, precision)

    def product_us(tiles: int, chain: int, streamed_weight_bytes: int) -> float:
        """A phase's products: each tile waits one round trip, then its MMA chain; h (each tile's) and any
        streamed weights come at L2 bandwidth. A resident slice is one tile, its weights read on chip."""
        return tiles * (L2_LATENCY_US + chain * MMA_LINK_CYCLES / clock) + stream_us(
            exchange * tiles + streamed_weight_bytes
        )

    # gates: the token (prefix or the slices' partials) then its input-table row: two round trips, beside
    # the product
    token_us = 2 * L2_LATENCY_US
    if plan.resident_gates:
        gates_chain, gates_trips = resident_chain, 2
        gates_product_us = product_us(1, resident_chain, 0)
    else:
        gates_chain, gates_trips = streamed_chain, max(2, plan.unit_tiles)
        weights = 4 * units * hidden * weight_bytes  # padded to 4 gates
        gates_product_us = product_us(plan.unit_tiles, streamed_chain, weights)
    gates_us = max(token_us, gates_product_us) + fma_us(2 * plan.block_b * hidden * 4 * units)

    # logits: the product over the vocabulary slice, then the band sampler
    if plan.resident_logits:
        logits_chain, logits_trips = resident_chain, 1
        logits_us = product_us(1, resident_chain, 0)
    else:
        logits_chain, logits_trips = streamed_chain, plan.vocab_tiles
        logits_us = product_us(plan.vocab_tiles, streamed_chain, slice_tokens * hidden * weight_bytes)
    logits_us += fma_us(2 * plan.block_b * hidden * slice_tokens)

    barrier_trips = BARRIER_TRIPS if plan.programs > 1 else 0
    barrier_us = barrier_trips * L2_LATENCY_US
    return dict(
        programs_per_group=plan.programs,
        groups=plan.groups,
        weights=plan.weights,
        resident_gates=plan.resident_gates,
        resident_logits=plan.resident_logits,
        weight_bytes_per_program=plan.slice_bytes(hidden, weight_bytes),
        barriers_per_sampling_step=2,
        barriers_per_prefix_step=1,
        l2_round_trips_per_sampling_step=gates_trips + logits_trips + 2 * barrier_trips,
        l2_round_trips_per_barrier=barrier_trips,
        mma_chain_gates=gates_chain,
        mma_chain_logits=logits_chain,
        gates_us=round(gates_us, 2),
        logits_us=round(logits_us, 2),
        barrier_us=round(barrier_us, 2),
        floor_us_per_sampling_step=round(gates_us + logits_us + 2 * barrier_us, 2),
        floor_us_per_prefix_step=round(gates_us + barrier_us, 2),
    )
