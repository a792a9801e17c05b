"""PaperDataGenerator.generate against the author's own way of sampling, with its floor.

    pytest benchmarks --benchmark-only -k paper_generate

At the author's sizes (experiments/gpt-mup.py, source 'lstm'): a generator batch of 104 rows of
512 tokens from 8-token seeds, embedding 128, 4-layer LSTM, bytes, greedy. Three timings, one
pytest-benchmark group, in this order:

    author-nn.LSTM      the author's `LSTMGen.sample_sequence` (pbloem/up, up/models.py): the seed
                        but its last token in one call, then nn.LSTM called once a token with
                        the hidden state carried, the sequence grown by torch.cat; on the same
                        weights (its per-step `assert not isnan` is left out, which only helps it)
    up_fast-torch       PaperDataGenerator.generate: the folded loop
    fp32-matmul-floor   only the fp32 products that loop must make, through the same routine
                        (prepacked oneDNN where it is taken, else torch.addmm): per fed position
                        (batch, 128) @ (128, 512) for layer 1 and (batch, 256) @ (256, 512) for
                        each further layer, and per sampled token (batch, 128) @ (128, 256)

The speedup of up_fast over the author's loop, and the floor's, are recorded in extra_info. Its
goal, >= 3x on a CPU, is a target in benchmarks/targets.py: reported as met or
not in extra_info and the end-of-run summary, not asserted (a shared or slower machine must not
fail the run). The floor bounds what any fp32 implementation of these products
can reach here: author / floor is the best possible speedup on this machine.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import DEVICE
from benchmarks.sizes import Size
from benchmarks.targets import check_targets
from up_fast import PaperDataGenerator

AUTHOR = Size('paper-author', batch=104, hidden=128, num_tokens=256, seq_len=512, rounds=3, seed_length=8)
DEPTH = 4
WORKLOAD = 'paper-generate'
IMPLEMENTATIONS = (
    'author-nn.LSTM',
    'up_fast-torch',
    'fp32-matmul-floor',
)  # the author's first: the others divide its median

# implementation -> median seconds in this process
MEDIANS: dict[str, float] = {}


@torch.no_grad()
def author_sample_sequence(gen: PaperDataGenerator, seed, condition, length):
    """The author's sample_sequence, greedy (temperature 0), on gen's nn.Embedding, nn.LSTM and
    nn.Linear (gen.forward is LSTMGen.forward: embed both streams, cat, LSTM, linear)."""
    seed_len = seed.shape[1]
    sequence = seed.clone()
    _, hidden = gen(sequence[:, :-1], condition[:, : seed_len - 1])
    for i in range(length - seed_len):
        to = seed_len + i
        output, hidden = gen(sequence[:, -1:], condition[:, to - 1 : to], hidden)
        tokens = output[:, -1, :].argmax(dim=-1)
        sequence = torch.cat([sequence, tokens[:, None]], dim=-1)
    return sequence


def floor_fn(gen: PaperDataGenerator, batch: int, length: int, seed_len: int):
    """The loop's products alone, on inputs of the loop's shapes and strides."""
    recurrent_first, uppers, head = gen.folded().products(batch)
    hidden = gen.net.hidden_size
    half_h = (
        torch.randn(batch, gen.depth * hidden, device=DEVICE) * 0.1
    )  # (batch, depth * hidden), as the loop keeps it
    first, top = half_h[:, :hidden], half_h[:, -hidden:]
    upper_inputs = [half_h[:, (layer - 1) * hidden : (layer + 1) * hidden] for layer in range(1, gen.depth)]

    def run():
        for _ in range(length - 1):  # every fed position: the seed's, then each sampled token's
            recurrent_first(first)
            for product, layer_input in zip(uppers, upper_inputs):
                product(layer_input)
        for _ in range(length - seed_len):  # every sampled token
            head(top)

    return run


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_paper_generate(benchmark, measure, impl):
    size = AUTHOR
    torch.manual_seed(0)
    gen = PaperDataGenerator(size.hidden, size.num_tokens, size.seq_len, DEPTH).to(DEVICE)
    seed = torch.randint(0, size.num_tokens, (size.batch, size.seed_length), device=DEVICE)  # (batch, seed_length)
    condition = torch.randint(0, size.num_tokens, (size.batch, size.seq_len), device=DEVICE)  # (batch, seq_len)

    if impl == 'author-nn.LSTM':
        fn = lambda: author_sample_sequence(gen, seed, condition, size.seq_len)
    elif impl == 'up_fast-torch':
        fn = lambda: gen.generate(size.seq_len, seed=seed, condition=condition)
    else:
        fn = floor_fn(gen, size.batch, size.seq_len, size.seed_length)

    measure(
        workload=WORKLOAD,
        size=size,
        impl=impl,
        fn=fn,
        tokens_per_call=size.batch * size.seq_len,
        config=dict(size.config(), depth=DEPTH, temperature=0.0),
        warmup=1,
    )
    check_targets(WORKLOAD, size, impl, benchmark)  # a target in benchmarks/targets.py: reported, not asserted
    if benchmark.disabled:
        return

    info = benchmark.extra_info
    MEDIANS[impl] = median = benchmark.stats.stats.median
    author = MEDIANS.get('author-nn.LSTM')
    info['baseline'] = 'author-nn.LSTM: nn.LSTM once a token, hidden state carried (pbloem/up sample_sequence)'
    info['speedup_over_author'] = author / median if author else None
    info['speedup_over_reference'] = info['speedup_over_author']  # this group's reference is the author's loop

    if impl == 'up_fast-torch' and author:
        print(f"\npaper-generate: up_fast {info['speedup_over_author']:.2f}x the author's loop")
    if impl == 'fp32-matmul-floor':
        batch, hidden, fed, sampled = size.batch, size.hidden, size.seq_len - 1, size.seq_len - size.seed_length
        flops = (
            2 * batch * (fed * (hidden + (DEPTH - 1) * 2 * hidden) * 4 * hidden + sampled * hidden * size.num_tokens)
        )
        info['matmul_gflop'] = flops / 1e9
        info['matmul_gflop_per_second'] = flops / median / 1e9
    if impl == 'fp32-matmul-floor' and author:
        fast = MEDIANS.get('up_fast-torch')
        info['best_possible_speedup'] = author / median
        info['up_fast_over_floor'] = fast / median if fast else None
        print(
            f"\npaper-generate: floor {author / median:.2f}x the author's loop (the most any fp32 loop of these "
            f"products reaches here); up_fast takes {fast / median:.2f}x the floor's time"
            if fast
            else ''
        )
