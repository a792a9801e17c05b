"""The reference's data step as benchmarked (implementations.reference_data_step) is its forward()
without the transformer: same random draws, same generated batch, same buffer and step afterwards.
(The reference's two write-backs go to temporary copies, its defect 1, so they leave nothing to
compare; the helper keeps them for what they cost.)

A plain test, not a benchmark: `pytest benchmarks/test_reference_helper.py` (--benchmark-only skips it).
"""

import random

import pytest
import torch
from torch import nn
from x_transformers import Decoder, TransformerWrapper
from x_transformers import up_wrapper as reference

from benchmarks.implementations import reference_data_step


class Capture(nn.Module):
    """Stands in for the reference's ar_wrapped: keeps the batch it is given instead of a loss."""

    def forward(self, data):
        self.data = data
        return data


def reference_wrapper(**kwargs):
    torch.manual_seed(0)
    random.seed(0)
    model = TransformerWrapper(num_tokens=256, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=2))
    return reference.UniversalPretrainWrapper(model, batch_size=4, seq_len=16, seed_length=4, **kwargs)


@pytest.mark.parametrize(
    'kwargs', [dict(), dict(num_reset=4, reset_turing_machine_every=1)], ids=['default', 'reset-every-step']
)
def test_reference_data_step_is_forward_without_the_transformer(kwargs):
    via_forward = reference_wrapper(**kwargs)
    via_forward.ar_wrapped = Capture()
    via_helper = reference_wrapper(**kwargs)

    for step in range(3):
        torch.manual_seed(100 + step)
        random.seed(100 + step)
        via_forward()

        torch.manual_seed(100 + step)
        random.seed(100 + step)
        data = reference_data_step(via_helper)

        assert torch.equal(data, via_forward.ar_wrapped.data), f'step {step}: a different training batch'
        assert torch.equal(via_helper.synth_data_buffer, via_forward.synth_data_buffer)
        assert int(via_helper.step) == int(via_forward.step) == step + 1
        for a, b in zip(via_helper.data_generator.parameters(), via_forward.data_generator.parameters()):
            assert torch.equal(a, b), f'step {step}: the generators diverged'
