"""How many ops a sampling step of the PyTorch path issues: on CUDA each is a kernel launch.

The dense formulation (every device but the CPU) must stay at most 12 non-view aten ops a decoding
step at the README's example size, LSTM and GRU: the reference issues 7 (embedding, lstm, linear,
select, div, softmax, multinomial, cat; cuDNN's LSTM and multinomial launch a few kernels inside).
A step is counted as the ops of generate(65) minus those of generate(1), over 64, so that what a
call does once (folding, allocation, the first noise chunk) cancels.
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from up_fast import SyntheticDataGenerator, sampling

DENSE_OPS_PER_STEP = 12  # the target: never more launches a step than about the reference's


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that reach the dispatcher from Python, views left out."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(generator: SyntheticDataGenerator, seed: torch.Tensor) -> tuple[float, dict]:
    counts = []
    for length in (65, 1):
        with OpCounter() as counter:
            generator.generate(length, seed=seed)
        counts.append(counter.ops)
    per_step = counts[0].copy()
    per_step.subtract(counts[1])
    breakdown = {name: count / 64 for name, count in per_step.most_common() if count}
    return sum(per_step.values()) / 64, breakdown


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
def test_a_dense_sampling_step_issues_at_most_12_ops(use_gru, monkeypatch):
    # the dense formulation forced on the CPU: the same ops CUDA runs
    monkeypatch.setattr(sampling, 'LAZY_DEVICE_TYPES', frozenset())
    torch.manual_seed(0)
    generator = SyntheticDataGenerator(dim=256, num_tokens=256, use_gru=use_gru)  # the example size
    seed = torch.randint(0, 256, (32, 8))  # (batch, seed_length)
    generator.generate(4, seed=seed)  # folding and the products' set-up, outside the count

    per_step, breakdown = ops_per_step(generator, seed)
    assert per_step <= DENSE_OPS_PER_STEP, f'{per_step:.2f} ops a step: {breakdown}'
    assert not any(name in breakdown for name in ('item', '_local_scalar_dense', 'nonzero')), (
        f'a dense step reads a value back to the host: {breakdown}'
    )


def test_the_counter_sees_each_op():
    # the counter itself: three ops, the view left out
    with OpCounter() as counter:
        x = torch.ones(4)
        x.add_(1).view(2, 2).sigmoid()
    assert sum(counter.ops.values()) == 3 and 'view' not in counter.ops
