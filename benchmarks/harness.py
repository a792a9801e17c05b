"""Timing side by side: warm-up outside the measurement, GPU-synchronised rounds, and the speedup
over the reference measured in the same run.

Every benchmark of a workload at a size is one pytest-benchmark group, so that the table printed at
the end of the run shows the reference and up_fast's paths next to each other. Timings on a shared
machine drift between processes: speedups are only ever computed from medians of one process.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import torch

from up_fast.helpers import default, exists

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device('cuda' if ON_CUDA else 'cpu')

REFERENCE = 'reference'

# UP_FAST_BENCH_ROUNDS=N caps every benchmark's timed rounds and warm-up calls at N: a quick pass
# over the whole suite (e.g. on a loaded machine, to see it run green), not figures worth saving
MAX_ROUNDS = int(os.environ['UP_FAST_BENCH_ROUNDS']) if os.environ.get('UP_FAST_BENCH_ROUNDS') else None


def capped(rounds: int) -> int:
    return rounds if MAX_ROUNDS is None else max(1, min(rounds, MAX_ROUNDS))


# (workload, size label, implementation) -> median seconds in this process. The reference's
# parametrisation runs first in every group, so the others find it here; the targets
# (benchmarks/targets.py) read other workloads' medians from it too
MEDIANS: dict[tuple[str, str, str], float] = {}


def synchronize():
    if ON_CUDA:
        torch.cuda.synchronize()


def synchronized(fn: Callable) -> Callable:
    """fn, then a wait for the GPU: a round then times the kernels it launched, not their launch."""
    if not ON_CUDA:
        return fn

    def call():
        fn()
        torch.cuda.synchronize()

    return call


def warm_up(fn: Callable, rounds: int):
    # first calls pay for torch.compile's tracing (the reference's generate), Triton compilation,
    # cuBLAS/cuDNN handles and AdamW's state: none of that belongs in the measurement
    for _ in range(rounds):
        fn()
    synchronize()


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None

    if ON_CUDA:
        device = torch.cuda.get_device_name()
    else:
        device = f'cpu: {cpu_name()}, {torch.get_num_threads()} threads'

    return dict(
        device=device,
        torch=torch.__version__,
        triton=triton_version,
        x_transformers=package_version('x-transformers'),
        up_fast=package_version('up-fast'),
    )


def group_name(workload: str, size_label: str) -> str:
    return f'{workload} | {size_label}'


def record(benchmark, *, workload: str, size, impl: str, config: dict, tokens_per_call: int | None = None):
    """Fill extra_info: what ran, where, with which versions, and its throughput."""
    info = benchmark.extra_info
    info.update(
        rounds_capped_at=MAX_ROUNDS,
        workload=workload,
        size=size.label,
        size_name=size.name,
        implementation=impl,
        sweep=size.sweep or None,
        batch=size.batch,
        hidden=size.hidden,
        num_tokens=size.num_tokens,
        seq_len=size.seq_len,
        config=config,
        **environment(),
    )
    if exists(tokens_per_call):
        info['tokens_per_call'] = tokens_per_call
        info['tokens_per_second'] = tokens_per_call / benchmark.stats.stats.median


def measure(
    benchmark,
    *,
    workload: str,
    size,
    impl: str,
    fn: Callable,
    tokens_per_call: int,
    config: dict | None = None,
    rounds: int | None = None,
    warmup: int = 2,
) -> float | None:
    """Time `fn` as `impl` of `workload` at `size`, after `warmup` untimed calls.

    Returns the speedup over the reference (its median / this median), None for the reference
    itself or when the reference did not run before this in the same process.
    """
    # pytest-benchmark copies the group when the timing starts: set it first
    benchmark.group = group_name(workload, size.label)

    warm_up(fn, capped(warmup))
    benchmark.pedantic(synchronized(fn), rounds=capped(default(rounds, size.rounds)), iterations=1)
    if benchmark.disabled:
        return None  # --benchmark-disable: fn ran once, as a smoke test, and nothing was timed

    record(
        benchmark,
        workload=workload,
        size=size,
        impl=impl,
        config=default(config, size.config()),
        tokens_per_call=tokens_per_call,
    )
    median = benchmark.stats.stats.median
    MEDIANS[(workload, size.label, impl)] = median

    if impl == REFERENCE:
        benchmark.extra_info['speedup_over_reference'] = 1.0
        return None

    reference_median = MEDIANS.get((workload, size.label, REFERENCE))
    speedup = reference_median / median if exists(reference_median) else None
    benchmark.extra_info['speedup_over_reference'] = speedup
    benchmark.extra_info['reference_median_s'] = reference_median
    return speedup
