"""Speed targets: the speedups over the reference, measured in the same run, that a benchmark must reach.

They live here and are checked inside the benchmarks, never in unit tests: a speed claim only means
something where it was measured. Each target names the device type it applies to.
"""

from __future__ import annotations

import operator

from benchmarks.harness import DEVICE

# (workload, size name, implementation, device type) -> (comparison, speedup)
SPEED_TARGETS = {
    # issue 2's goal for the PyTorch path on a CPU. Not met on the 2-vCPU EPYC this project is
    # developed on (2.56x-2.91x; README "Speed" measures why), so this benchmark fails there: the
    # goal stays as set
    ('generate', 'example', 'up_fast-torch', 'cpu'): ('>=', 3.),
    # the fused kernel's reason to exist: the README's example configuration on a GPU
    ('generate', 'example', 'up_fast-triton', 'cuda'): ('>=', 30.),
}

COMPARISONS = {'>': operator.gt, '>=': operator.ge}


def check_speed_target(workload: str, size, impl: str, speedup: float | None, benchmark=None):
    """Assert the target of (workload, size, impl) on this device, if there is one."""
    target = SPEED_TARGETS.get((workload, size.name, impl, DEVICE.type))
    if target is None:
        return

    if benchmark is not None and benchmark.disabled:
        return          # --benchmark-disable: nothing was timed

    comparison, value = target
    if benchmark is not None:
        benchmark.extra_info['speed_target'] = f'{comparison} {value}'

    assert speedup is not None, (
        f'{impl} {workload} at {size.label} has a speed target ({comparison} {value}x) but the reference '
        'did not run before it in this process: run the whole group (do not deselect the reference)')
    assert COMPARISONS[comparison](speedup, value), (
        f'{impl} {workload} at {size.label}: {speedup:.2f}x the reference, target {comparison} {value}x')
