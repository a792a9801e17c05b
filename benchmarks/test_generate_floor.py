"""Floors of `generate` at the example size: work any implementation of the folded path must do,
timed alone, beside the implementations.

    pytest benchmarks --benchmark-only -k "generate and (example or floor)"

Any fp32 implementation of the folded LSTM must run, one after another, (prefix_len + length - 1)
recurrent products (batch, hidden) @ (hidden, 4 * hidden) and `length` output products
(batch, hidden) @ (hidden, vocab). `fp32-matmul-floor` times exactly those products on the device,
and nothing else, through the product routine up_fast uses (FoldedRecurrentNet.linear: oneDNN
with a prepacked weight on the CPU where it is available and agrees, else torch.mm).

Gumbel-max sampling draws noise only for the tokens within the band that can win (see
up_fast/sampling.py), and every row's largest logit is in it: at least one uniform number per row
per sampled step, turned into T * -log(-log U) (about 1.1 per row at the default temperature on
the example's logits). `fp32-matmul-noise-floor` adds that least noise, drawn by the mechanism the
band sampler draws it with (sampling.GumbelPool) from torch's generator, to the products.

No implementation doing this arithmetic with these products and this noise can beat a floor, so a
floor's speedup over the reference bounds what the folded fp32 path can reach on this machine; the
distance from the floor to up_fast is what the rest of a step (gathers, gates, the max, dispatch)
costs.
"""

from functools import partial

import pytest
import torch

from benchmarks.harness import DEVICE
from benchmarks.implementations import TEMPERATURE
from benchmarks.sizes import EXAMPLE
from up_fast.sampling import FoldedRecurrentNet, GumbelPool

GATES = 4  # LSTM

FLOORS = ('fp32-matmul-floor', 'fp32-matmul-noise-floor')


@pytest.mark.parametrize('floor', FLOORS)
def test_generate_floor(benchmark, measure, floor):
    size = EXAMPLE
    torch.manual_seed(0)
    hidden, batch, vocab, length = size.hidden, size.batch, size.num_tokens, size.seq_len
    h = torch.randn(batch, hidden, device=DEVICE) * 0.1  # (batch, hidden)
    weight_hh = torch.randn(GATES * hidden, hidden, device=DEVICE) * 0.05  # (gates * hidden, hidden)
    weight_out = torch.randn(vocab, hidden, device=DEVICE) * 0.05  # (vocab, hidden)
    folded = FoldedRecurrentNet(
        'lstm', input_table=None, weight_hh=weight_hh, bias_hn=None, weight_out=weight_out, bias_out=None
    )

    recurrent, both, out = (folded.linear(name, batch) for name in ('weight_hh', 'weight_hh_out', 'weight_out'))
    prefix_len = size.seed_length + length  # generate's prefix: seed, then condition
    with_noise = floor == 'fp32-matmul-noise-floor'

    def floor_fn():  # the products FoldedRecurrentNet.sample makes, and one noise draw a row a step if asked
        pool = GumbelPool(TEMPERATURE, device=DEVICE, chunk=batch * length)
        draw = (lambda: pool.take(batch)) if with_noise else (lambda: None)
        for _ in range(prefix_len):
            recurrent(h)
        for _ in range(length - 1):
            both(h)
            draw()
        out(h)
        draw()

    measure(workload='generate', size=size, impl=floor, fn=floor_fn, tokens_per_call=batch * length)
    benchmark.extra_info['onednn'] = isinstance(recurrent, partial)  # oneDNN's product, not the torch.mm fallback

    recurrent_steps = prefix_len + length - 1
    flops = 2 * batch * hidden * (recurrent_steps * GATES * hidden + length * vocab)
    benchmark.extra_info['matmul_gflop'] = flops / 1e9
    benchmark.extra_info['matmul_gflop_per_second'] = flops / benchmark.stats.stats.median / 1e9
    if with_noise:
        benchmark.extra_info['uniform_draws'] = batch * length
