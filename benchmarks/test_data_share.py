"""How much of a training step the data step takes, with and without prefetch.

    pytest benchmarks --benchmark-only -k data_share

At the training size (with CUDA the README's example model, dim 256, depth 6, heads 8, batch 32,
seq_len 512; on a CPU the labelled scaled-down one of benchmarks/sizes.py), for each of up_fast's
paths, four timings in one process:
    data step                          wrapper.data_step_() alone
    training step, transformer only    forward on a fixed batch, backward, AdamW: no data step
    training step                      wrapper() (data step, then transformer), backward, AdamW
    training step, prefetch            the same with prefetch=True: the next step's data made while
                                       the transformer trains (on CUDA on a side stream)
The share of the data step visible in a training step is 1 - (transformer only / training step);
extra_info records it, and benchmarks/targets.py checks the H200 targets against it.
"""

import pytest
import torch

from benchmarks.harness import MEDIANS
from benchmarks.implementations import make_wrapper
from benchmarks.sizes import TRAIN, TRAIN_MODEL
from benchmarks.targets import TRANSFORMER_ONLY, check_targets

IMPLS = ('up_fast-torch', 'up_fast-triton')
WORKLOADS = ('data step', TRANSFORMER_ONLY, 'training step', 'training step, prefetch')
CASES = [(impl, workload) for impl in IMPLS for workload in WORKLOADS]


def step_fn(impl: str, workload: str, lr: float = 3e-4):
    wrapper = make_wrapper(impl, TRAIN, TRAIN_MODEL)
    if workload == 'data step':
        return wrapper.data_step_
    wrapper.prefetch = workload.endswith('prefetch')
    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=lr)
    batch = wrapper.data_step_() if workload == TRANSFORMER_ONLY else None

    def step():
        loss = wrapper.ar_wrapped(batch) if workload == TRANSFORMER_ONLY else wrapper()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@pytest.mark.parametrize('impl, workload', CASES, ids=[f'{impl}-{workload}' for impl, workload in CASES])
def test_data_share(benchmark, measure, impl, workload):
    fn = step_fn(impl, workload)
    measure(
        workload=workload,
        size=TRAIN,
        impl=impl,
        fn=fn,
        tokens_per_call=TRAIN.batch * TRAIN.seq_len,
        config=dict(TRAIN.config(), model=TRAIN_MODEL.config(), optimizer='AdamW(lr=3e-4)'),
        warmup=3,  # AdamW creates its state on the first step
    )
    transformer = MEDIANS.get((TRANSFORMER_ONLY, TRAIN.label, impl))
    data_step = MEDIANS.get(('data step', TRAIN.label, impl))
    median = MEDIANS.get((workload, TRAIN.label, impl))
    if workload in ('training step', 'training step, prefetch') and None not in (transformer, data_step, median):
        # on a loaded machine the two steps' noise can exceed the data step: a negative share says so
        benchmark.extra_info['data_visible_share'] = 1 - transformer / median
        benchmark.extra_info['data_step_share'] = data_step / median
    check_targets(workload, TRAIN, impl, benchmark)
