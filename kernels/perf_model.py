"""The latency model of the sampling kernel: dependent L2 round trips, barriers and MMA chain a step, and the estimate.

Estimates from the design and typical latencies, not measurements (docs/kernel.md, "The latency
model"). `design_floor` counts per configuration what a step must wait for in sequence and turns
it into microseconds under the assumptions below; the compile configurations (aot.py) carry it,
and `python -m benchmarks.compile_report` prints it next to the SASS counts of the compiled kernel.
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

ASSUMPTIONS = (
    f'L2 hit {L2_LATENCY_US} us a dependent round trip; {L2_BYTES_PER_CLOCK_PER_SM} B/clock/SM from L2; '
    f'{SM_CLOCK_GHZ} GHz; {MMA_LINK_CYCLES} cycles a dependent tf32 mma.sync; weights streamed from L2 every step '
    "(each barrier's acquire invalidates L1), the K loop pipelined so a phase waits one round trip, then streams; "
    'a barrier is 3 round trips (release fence, the spin read that sees the last arrival, the acquire read)'
)


def mma_chain(hidden: int, block_k: int, precision: str) -> int:
    """Dependent mma.sync on one accumulator over a K loop of `hidden` (0 for 'ieee': FMAs)."""
    if precision == 'ieee':
        return 0
    return -(-hidden // block_k) * (block_k // MMA_K) * TF32X3_PASSES


def design_floor(
    plan: LaunchPlan, hidden: int, num_tokens: int, gates: int, weight_bytes: int, precision: str, sample: bool
) -> dict:
    """Per step: the dependent L2 round trips, barriers and MMA chain, and the microseconds they imply."""
    units = plan.unit_tiles * plan.block_u
    slice_tokens = plan.vocab_tiles * plan.block_v
    exchange = plan.block_b * hidden * 4  # the full h a phase reads from L2
    gates_weights = 4 * units * hidden * weight_bytes  # padded to 4 gates
    logits_weights = slice_tokens * hidden * weight_bytes
    clock = SM_CLOCK_GHZ * 1e3  # cycles per us
    stream_us = lambda weights, tiles: (exchange * tiles + weights) / L2_BYTES_PER_CLOCK_PER_SM / clock
    fma_us = lambda flops: 0.0 if precision != 'ieee' else flops / FMA_FLOPS_PER_CLOCK_PER_SM / clock
    chain = mma_chain(hidden, plan.block_k, precision)
    mma_us = chain * MMA_LINK_CYCLES / clock

    multi = plan.programs > 1
    barrier_trips = 3 if multi else 0
    # gates: the sampled token's reduction (partials) then its input-table row, while the K loop
    # (one round trip, then streamed) runs beside them; one K loop a unit tile
    gates_trips = max(2, plan.unit_tiles)
    gates_us = (
        max(2 * L2_LATENCY_US, plan.unit_tiles * (L2_LATENCY_US + mma_us))
        + stream_us(gates_weights, plan.unit_tiles)
        + fma_us(2 * plan.block_b * hidden * 4 * units)
    )
    # logits: one K loop a vocabulary tile, each starting with a round trip
    logits_trips = plan.vocab_tiles
    logits_us = (
        plan.vocab_tiles * (L2_LATENCY_US + mma_us)
        + stream_us(logits_weights, plan.vocab_tiles)
        + fma_us(2 * plan.block_b * hidden * slice_tokens)
    )
    barrier_us = barrier_trips * L2_LATENCY_US
    sampling_trips = gates_trips + logits_trips + 2 * barrier_trips
    return dict(
        programs_per_group=plan.programs,
        groups=plan.groups,
        weights=plan.weights,
        weight_bytes_per_program=plan.slice_bytes(hidden, weight_bytes),
        barriers_per_sampling_step=2,
        barriers_per_prefix_step=1,
        l2_round_trips_per_sampling_step=sampling_trips,
        l2_round_trips_per_barrier=barrier_trips,
        mma_chain_per_k_loop=chain,
        gates_us=round(gates_us, 2),
        logits_us=round(logits_us, 2),
        barrier_us=round(barrier_us, 2),
        floor_us_per_sampling_step=round(gates_us + logits_us + 2 * barrier_us, 2),
        floor_us_per_prefix_step=round(gates_us + barrier_us, 2),
    )
