"""A whole training step: forward (data step + transformer loss), backward, AdamW step.

    pytest benchmarks --benchmark-only -k train_step

With CUDA: the README's example model (TransformerWrapper, vocab 256, dim 256, depth 6, heads 8,
max_seq_len 512) at batch 32, seq_len 512. On a CPU a 2-layer model at batch 8, seq_len 256
(labelled): the example takes about 20 s a step on 2 cores.
"""

import pytest

from benchmarks.implementations import IMPLEMENTATIONS, train_step_fn
from benchmarks.sizes import TRAIN, TRAIN_MODEL


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_train_step(measure, impl):
    step = train_step_fn(impl, TRAIN, TRAIN_MODEL)
    measure(
        workload='train step', size=TRAIN, impl=impl, fn=step,
        tokens_per_call=TRAIN.batch * TRAIN.seq_len,    # tokens trained on per step
        config=dict(TRAIN.config(), model=TRAIN_MODEL.config(), optimizer='AdamW(lr=3e-4)'),
        warmup=3,                                       # AdamW creates its state on the first step
    )
