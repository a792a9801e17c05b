"""The fp32 matmul floor of `generate` at the example size, beside the implementations.

    pytest benchmarks --benchmark-only -k "generate and (example or floor)"

Any fp32 implementation of the folded LSTM must run, one after another, (prefix_len + length - 1)
recurrent products (batch, hidden) @ (hidden, 4 * hidden) and `length` output products
(batch, hidden) @ (hidden, vocab). This times exactly those products on the device, and nothing
else, through the same product routine up_fast uses (FoldedRecurrentNet.matmul: oneDNN with a
prepacked weight on the CPU where it is available and agrees, else torch.mm). No implementation
doing this arithmetic with these products can beat it, so its speedup over the reference bounds
what the folded fp32 path can reach on this machine.
"""

from functools import partial

import torch

from benchmarks.harness import DEVICE
from benchmarks.sizes import EXAMPLE
from up_fast.sampling import FoldedRecurrentNet

GATES = 4       # LSTM


def test_generate_fp32_matmul_floor(benchmark, measure):
    size = EXAMPLE
    torch.manual_seed(0)
    hidden, batch, vocab = size.hidden, size.batch, size.num_tokens
    h = torch.randn(batch, hidden, device=DEVICE) * 0.1                     # (batch, hidden)
    weight_hh = torch.randn(GATES * hidden, hidden, device=DEVICE) * 0.05   # (gates * hidden, hidden)
    weight_out = torch.randn(vocab, hidden, device=DEVICE) * 0.05           # (vocab, hidden)
    folded = FoldedRecurrentNet('lstm', input_table=None, weight_hh=weight_hh, bias_hn=None, weight_out=weight_out, bias_out=None)
    recurrent_steps = size.seed_length + size.seq_len + size.seq_len - 1   # prefix (seed + condition), then length - 1 feeds (for the FLOP count)

    recurrent, both, out = (folded.linear(name, batch) for name in ('weight_hh', 'weight_hh_out', 'weight_out'))
    prefix_len = size.seed_length + size.seq_len

    def matmuls_only():     # the products FoldedRecurrentNet.sample makes
        for _ in range(prefix_len):
            recurrent(h)
        for _ in range(size.seq_len - 1):
            both(h)
        out(h)

    measure(workload='generate', size=size, impl='fp32-matmul-floor', fn=matmuls_only, tokens_per_call=batch * size.seq_len)
    benchmark.extra_info['onednn'] = isinstance(recurrent, partial)

    flops = 2 * batch * hidden * (recurrent_steps * GATES * hidden + size.seq_len * vocab)
    benchmark.extra_info['matmul_gflop'] = flops / 1e9
    benchmark.extra_info['matmul_gflop_per_second'] = flops / benchmark.stats.stats.median / 1e9
