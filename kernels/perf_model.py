"""The performance model of the sampling kernel: the per-step floor its design implies on an H200.

Estimates from vendor figures and typical latencies, not measurements (docs/kernel.md, "The
floor"). `design_floor` gives the bytes and FLOPs per program per phase, the barriers per step and
the microseconds a step cannot go below; the compile configurations (aot.py) carry it per
configuration and `python -m benchmarks.compile_report` prints it.
"""

from __future__ import annotations

from up_fast.kernels.launch_plan import LaunchPlan

# an H200 SM (vendor figures and typical latencies), for the design floor only: estimates, not measured
SM_CLOCK_GHZ = 1.75
L2_LATENCY_US = 0.5              # one dependent L2 round trip (~700-900 cycles)
L2_BYTES_PER_CLOCK_PER_SM = 64
L1_BYTES_PER_CLOCK_PER_SM = 128
# of the 256 KB L1/shared: what the slices may count on (Triton takes some shared memory)
L1_BYTES_PER_SM = 200 * 1024
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
