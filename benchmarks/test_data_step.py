"""The data part of a training step: everything in forward() but the transformer.

    pytest benchmarks --benchmark-only -k data_step

up_fast: `UniversalPretrainWrapper.data_step_()` (row draws, generate, write-back, reset, batch
gather). The reference: its forward() up to `data = ...`, in implementations.reference_data_step.
"""

import pytest

from benchmarks.implementations import IMPLEMENTATIONS, data_step_fn
from benchmarks.sizes import DATA_STEP_SIZES, data_only_model

CASES = [(size, impl) for size in DATA_STEP_SIZES for impl in IMPLEMENTATIONS]


@pytest.mark.parametrize('size, impl', CASES, ids=[f'{size.id}-{impl}' for size, impl in CASES])
def test_data_step(measure, size, impl):
    model = data_only_model(size)
    step, _ = data_step_fn(impl, size, model)
    measure(
        workload='data step',
        size=size,
        impl=impl,
        fn=step,
        tokens_per_call=size.batch * size.seq_len,  # synthetic tokens generated per step
        config=dict(size.config(), model=model.config()),
    )
