"""`generate` of the reference against up_fast's paths, side by side in one run.

    pytest benchmarks --benchmark-only -k generate

Sizes (benchmarks/sizes.py): the README's example, a large vocabulary, a large hidden size, a
saturating batch, and sweeps over batch and hidden size for the report's plot; smaller on a CPU,
labelled so. Each group times the reference first; the others record their speedup over it.
The example size and the saturating batch carry targets (benchmarks/targets.py): reported in every
run, asserted only on the device they were set for.
"""

import pytest

from benchmarks.implementations import IMPLEMENTATIONS, generate_fn
from benchmarks.sizes import GENERATE_SIZES
from benchmarks.targets import check_targets

# size-major, reference first within each size: the order the speedups need
CASES = [(size, impl) for size in GENERATE_SIZES for impl in IMPLEMENTATIONS]


@pytest.mark.parametrize('size, impl', CASES, ids=[f'{size.id}-{impl}' for size, impl in CASES])
def test_generate(benchmark, measure, size, impl):
    run = generate_fn(impl, size)
    measure(
        workload='generate',
        size=size,
        impl=impl,
        fn=run,
        tokens_per_call=size.batch * size.seq_len,  # synthetic tokens generated per call
    )
    check_targets('generate', size, impl, benchmark)
