"""A whole training step: forward (data step + transformer loss), backward, AdamW step.

    pytest benchmarks --benchmark-only -k train_step

With CUDA: the README's example model (TransformerWrapper, vocab 256, dim 256, depth 6, heads 8,
max_seq_len 512) at batch 32, seq_len 512. On a CPU a 2-layer model at batch 8, seq_len 256
(labelled): the example takes about 20 s a step on 2 cores.

Where the data step ran at the same size earlier in the run (with CUDA: the example), extra_info
records `data_step_share`, the data step's median over this training step's; the target of
at most 3% for the Triton path is checked here (benchmarks/targets.py).
"""

import pytest

from benchmarks.harness import MEDIANS
from benchmarks.implementations import IMPLEMENTATIONS, train_step_fn
from benchmarks.sizes import TRAIN, TRAIN_MODEL
from benchmarks.targets import check_targets


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_train_step(benchmark, measure, impl):
    step = train_step_fn(impl, TRAIN, TRAIN_MODEL)
    measure(
        workload='train step',
        size=TRAIN,
        impl=impl,
        fn=step,
        tokens_per_call=TRAIN.batch * TRAIN.seq_len,  # tokens trained on per step
        config=dict(TRAIN.config(), model=TRAIN_MODEL.config(), optimizer='AdamW(lr=3e-4)'),
        warmup=3,  # AdamW creates its state on the first step
    )
    data_step = MEDIANS.get(('data step', TRAIN.label, impl))
    train_step = MEDIANS.get(('train step', TRAIN.label, impl))
    if data_step is not None and train_step is not None:
        benchmark.extra_info['data_step_share'] = data_step / train_step
    check_targets('train step', TRAIN, impl, benchmark)
