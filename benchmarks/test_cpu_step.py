"""One decoding step of the CPU path without its product: the PyTorch step against the native one.

    pytest benchmarks --benchmark-only -k cpu_step

Each call runs STEPS decoding steps of the LSTM at the example size on one fixed product (the
recurrent term and logits side by side, as [W_hh; W_out] x gives them): the band sampler and the
cell, which is what up_fast/cpu_step.py replaces. The product itself is timed by the generate
floors (benchmarks/test_generate_floor.py). No target: the end-to-end figure is `generate`'s.
"""

import pytest
import torch

from benchmarks.harness import DEVICE
from benchmarks.sizes import EXAMPLE
from up_fast import cpu_step
from up_fast.sampling import FoldedRecurrentNet, GumbelNoise, StepNoise, gumbel_max

STEPS = 200
IMPLEMENTATIONS = ('pytorch-step', 'native-step')


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_cpu_step(benchmark, measure, impl):
    if DEVICE.type != 'cpu':
        pytest.skip('the native step is the CPU path')
    if impl == 'native-step' and cpu_step.native_status() != 'available':
        pytest.skip(f'the native step is not available here: {cpu_step.native_status()}')
    size = EXAMPLE
    batch, hidden, num_tokens = size.batch, size.hidden, size.num_tokens
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(hidden, hidden, batch_first=True)
    net = FoldedRecurrentNet.fold(torch.nn.Embedding(num_tokens, hidden), lstm, torch.nn.Linear(hidden, num_tokens))
    state = net.init_state(batch)
    product = torch.randn(batch, 4 * hidden + num_tokens)  # (batch, 4 * hidden + num_tokens)
    hidden_gates, logits = product.split((4 * hidden, num_tokens), dim=1)
    tokens = torch.empty(batch, dtype=torch.long)
    noise = GumbelNoise(batch, 1 << 30, num_tokens, 1e-4, device='cpu', generator=torch.Generator().manual_seed(0))

    if impl == 'pytorch-step':
        step = net.stepper(state)

        def run():
            for t in range(STEPS):
                step(gumbel_max(logits, 1e-4, StepNoise(noise, t), out=tokens), hidden_gates)

    else:
        native = cpu_step.native_step(net.input_table, state, noise.band)
        assert native is not None, cpu_step.native_status()

        def run():
            for _ in range(STEPS):
                native.decode(product, noise, tokens)

    def in_inference_mode():
        with torch.inference_mode():
            run()

    measure(
        workload='cpu-step',
        size=size,
        impl=impl,
        fn=in_inference_mode,
        tokens_per_call=batch * STEPS,
        config=dict(size.config(), steps=STEPS),
    )
