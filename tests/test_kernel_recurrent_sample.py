"""Parity and sampler tests of the fused Triton sampling kernel (kernels/recurrent_sample.py).

The twin is FoldedRecurrentNet.sample (up_fast/sampling.py), run on the CPU in fp32.
Without a GPU the kernel runs under Triton's interpreter, so the shapes here are small; the tests
marked `cuda` add large shapes and CUDA-graph replay when a GPU is present.
"""

import os

import torch

# Triton picks the interpreter when a kernel is defined, so this must precede any triton import
# in the process (conftest.py is the right home for it; kept here so the module runs on its own)
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import dataclasses
import math

import pytest
from torch import nn

pytest.importorskip('triton')

from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.recurrent_sample import fused_recurrent_sample  # noqa: E402
from up_fast.sampling import FoldedRecurrentNet, gumbel  # noqa: E402

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

if DEVICE.type == 'cpu' and not rs.INTERPRETED:
    pytest.skip('no GPU, and triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)',
                allow_module_level=True)

cuda_only = pytest.mark.skipif(DEVICE.type != 'cuda', reason='large shapes and CUDA graphs need a GPU')

# State tolerance. fp32 eps is 1.2e-7; the twin's matmuls (MKL) and the kernel's (numpy BLAS under
# the interpreter, FMA chains on a GPU) sum the `hidden` products of each pre-activation in
# different orders, an error of a few eps * sum|w h| per step; sigmoid (slope <= 1/4) and the
# contracting forget gate keep it from growing. Observed: about 2e-7 on these shapes. 1e-5 leaves
# a wide margin for that, while a real bug (a gate out of order, a missed bias, a stale state
# slot) is off by 1e-2 or more. Rounding errors grow like sqrt(hidden): scaled for large hidden.
STATE_TOL = 1e-5
# A token may differ from the twin's only where the twin's two candidates are this close
# (a genuine near-tie, decided by summation order), relative to the score's magnitude.
NEAR_TIE = 1e-4


def state_tol(hidden):
    return STATE_TOL * max(1., math.sqrt(hidden / 64))


# helpers


def make_folded(cell, num_tokens, hidden, *, dim=24, bias_out=False, seed=0, weight_scale=2.):
    """A folded embed -> LSTM/GRU -> Linear with fresh random weights (CPU, fp32).

    Recurrent weights are drawn wider than PyTorch's default (weight_scale / sqrt(hidden), as the
    paper's random scale-up) so that the dynamics are not trivially contracting.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    embed = nn.Embedding(num_tokens, dim)
    net = (nn.LSTM if cell == 'lstm' else nn.GRU)(dim, hidden, batch_first=True)
    to_logits = nn.Linear(hidden, num_tokens, bias=bias_out)
    with torch.no_grad():
        embed.weight.normal_(generator=g)
        bound = weight_scale / math.sqrt(hidden)
        for p in net.parameters():
            p.uniform_(-bound, bound, generator=g)
        to_logits.weight.uniform_(-2. / math.sqrt(hidden), 2. / math.sqrt(hidden), generator=g)
        if bias_out:
            to_logits.bias.normal_(generator=g)
    return FoldedRecurrentNet.fold(embed, net, to_logits)


def to_device(folded, device=DEVICE, dtype=None):
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype or t.dtype)
    return dataclasses.replace(
        folded,
        input_table=move(folded.input_table), weight_hh=move(folded.weight_hh), bias_hn=move(folded.bias_hn),
        weight_out=move(folded.weight_out), bias_out=move(folded.bias_out),
    )


def twin_logits_after(folded, tokens):
    """The twin's logits (num_tokens,) after feeding the 1-D sequence `tokens` from a zero state."""
    state = folded.init_state(1)
    for token in tokens:
        folded.step_(token.view(1), state)
    return folded.logits(state)[0]


def assert_matches_twin(folded_cpu, prefix, length, temperature, uniform_noise, tokens, state):
    """Tokens equal the twin's, except where a row first diverges at a genuine near-tie; the
    final state of every row that never diverged agrees to state_tol."""
    prefix, tokens = prefix.cpu().long(), tokens.cpu().long()
    noise = uniform_noise.cpu() if uniform_noise is not None else None
    ref_tokens, ref_state = folded_cpu.sample(prefix, length, temperature, uniform_noise=noise)

    agree = (tokens == ref_tokens).all(dim=1)                       # (batch,)
    for row in torch.nonzero(~agree).flatten().tolist():
        t = int(torch.nonzero(tokens[row] != ref_tokens[row])[0])
        # both paths saw the same tokens up to t: the twin's scores at step t decide
        logits = twin_logits_after(folded_cpu, torch.cat([prefix[row], tokens[row, :t]]))
        scores = logits if temperature == 0 else logits + temperature * gumbel(noise[row, t].float())
        ours, theirs = scores[tokens[row, t]], scores[ref_tokens[row, t]]
        gap = (theirs - ours).item()
        assert 0 <= gap <= NEAR_TIE * max(1., theirs.abs().item()), (
            f'row {row} step {t}: kernel drew {tokens[row, t].item()}, twin {ref_tokens[row, t].item()}, '
            f'score gap {gap:.3g} is no near-tie')
    assert agree.float().mean() >= 0.9, f'{int((~agree).sum())} of {agree.numel()} rows diverged: near-ties are not that common'

    hidden = folded_cpu.hidden_size
    assert len(state) == len(ref_state)
    for name, ours, theirs in zip(('h', 'c'), state, ref_state):
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        torch.testing.assert_close(ours.cpu()[agree], theirs[agree], rtol=state_tol(hidden), atol=state_tol(hidden),
                                   msg=lambda m: f'final {name}: {m}')


def poisoned_out(batch, length, dtype=torch.int64):
    return torch.full((batch, length), -1, dtype=dtype, device=DEVICE)


# parity with the twin on injected noise

# (id, kwargs): batch, prefix_len, length, num_tokens, hidden, temperature, bias_out, blocks
PARITY_CASES = [
    ('tiled_vocab37_hidden40', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1.)),
    ('bias_out', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1., bias_out=True)),
    ('batch1', dict(batch=1, prefix_len=4, length=7, num_tokens=37, hidden=40, temperature=1.)),
    ('two_programs_masked', dict(batch=20, prefix_len=2, length=4, num_tokens=20, hidden=24, temperature=1.)),
    ('greedy_t0', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=0.)),
    ('reference_default_t1e-4', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1e-4, bias_out=True)),
    ('prefix1_length1', dict(batch=3, prefix_len=1, length=1, num_tokens=37, hidden=40, temperature=1.)),
    ('default_blocks_hidden64', dict(batch=3, prefix_len=2, length=4, num_tokens=70, hidden=64, temperature=1., blocks=None)),
    ('hot_t3', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=3.)),
]


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize('case', [c for _, c in PARITY_CASES], ids=[i for i, _ in PARITY_CASES])
def test_matches_twin_on_injected_noise(cell, case):
    batch, prefix_len, length = case['batch'], case['prefix_len'], case['length']
    num_tokens, hidden, temperature = case['num_tokens'], case['hidden'], case['temperature']
    blocks = case.get('blocks', dict(block_b=16, block_h=16, block_k=16, block_v=16))

    folded = make_folded(cell, num_tokens, hidden, bias_out=case.get('bias_out', False), seed=len(cell) * 1000 + 31 * batch + hidden)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, num_tokens, (batch, prefix_len), generator=g)
    noise = torch.rand((batch, length, num_tokens), generator=g)

    out = poisoned_out(batch, length)
    tokens, state = fused_recurrent_sample(to_device(folded), prefix.to(DEVICE), length, temperature,
                                           uniform_noise=noise.to(DEVICE), out=out, **(blocks or {}))
    assert tokens is out and tokens.dtype == torch.int64
    assert (tokens >= 0).all() and (tokens < num_tokens).all(), 'some token was not written'
    assert len(state) == (2 if cell == 'lstm' else 1)
    assert all(s.shape == (batch, hidden) for s in state)
    assert_matches_twin(folded, prefix, length, temperature, noise, tokens, state)


def test_parity_checker_accepts_only_near_ties():
    """The checker itself (no kernel): a token off by a real score gap, or a state off by 1e-4,
    must fail it; a different token at a crafted near-tie (gap 1e-6) must pass."""
    folded = make_folded('lstm', 37, 40, seed=2)
    g = torch.Generator().manual_seed(12)
    batch, length, temperature = 12, 5, 1.
    prefix = torch.randint(0, 37, (batch, 3), generator=g)
    noise = torch.rand((batch, length, 37), generator=g)
    tokens, state = folded.sample(prefix, length, temperature, uniform_noise=noise)

    # a near-tie at row 0, step 2: make the runner-up score 1e-6 below the winner's
    row, t = 0, 2
    logits = twin_logits_after(folded, torch.cat([prefix[row], tokens[row, :t]]))
    scores = logits + temperature * gumbel(noise[row, t])
    winner = tokens[row, t].item()
    runner_up = (winner + 1) % 37
    target = (scores[winner] - 1e-6 - logits[runner_up]) / temperature
    noise[row, t, runner_up] = torch.exp(-torch.exp(-target))
    tokens, state = folded.sample(prefix, length, temperature, uniform_noise=noise)
    assert tokens[row, t].item() == winner
    tied = tokens.clone()
    tied[row, t:] = runner_up
    assert_matches_twin(folded, prefix, length, temperature, noise, tied, state)

    wrong = tokens.clone()
    row_1_scores = twin_logits_after(folded, torch.cat([prefix[1], tokens[1, :1]])) + temperature * gumbel(noise[1, 1])
    wrong[1, 1] = row_1_scores.argmin()                 # the least likely token: no near-tie
    with pytest.raises(AssertionError, match='no near-tie'):
        assert_matches_twin(folded, prefix, length, temperature, noise, wrong, state)
    with pytest.raises(AssertionError, match='final c'):
        assert_matches_twin(folded, prefix, length, temperature, noise, tokens, (state[0], state[1] + 1e-4))


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_matches_twin_bf16_weights(cell):
    """bf16 weights are cast to fp32 on load: the twin on the same (rounded) weights is the reference."""
    folded = make_folded(cell, 37, 40, bias_out=True, seed=5)
    rounded = to_device(to_device(folded, 'cpu', torch.bfloat16), 'cpu', torch.float32)
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 37, (4, 3), generator=g)
    noise = torch.rand((4, 5, 37), generator=g)
    tokens, state = fused_recurrent_sample(to_device(folded, dtype=torch.bfloat16), prefix.to(DEVICE), 5, 1.,
                                           uniform_noise=noise.to(DEVICE), block_h=16, block_k=16, block_v=16)
    assert_matches_twin(rounded, prefix, 5, 1., noise, tokens, state)


def test_narrow_dtypes_and_strided_views():
    """uint8 prefix, float64 non-contiguous noise, int16 `out` as a strided column slice of a buffer."""
    num_tokens, batch, length = 37, 6, 5
    folded = make_folded('lstm', num_tokens, 40, seed=7)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, num_tokens, (batch, 3), generator=g)
    noise = torch.rand((batch, num_tokens, length), generator=g, dtype=torch.float64).transpose(1, 2)   # (batch, length, num_tokens)
    buffer = torch.full((batch, 3 + length + 2), -1, dtype=torch.int16, device=DEVICE)
    out = buffer[:, 3:3 + length]

    tokens, state = fused_recurrent_sample(to_device(folded), prefix.to(DEVICE, torch.uint8), length, 1.,
                                           uniform_noise=noise.to(DEVICE), out=out, block_h=16, block_k=16, block_v=16)
    assert tokens.data_ptr() == out.data_ptr()
    assert (buffer[:, :3] == -1).all() and (buffer[:, 3 + length:] == -1).all(), 'wrote outside the out view'
    assert_matches_twin(folded, prefix, length, 1., noise.float(), tokens, state)


def test_state_scratch_is_fully_rewritten():
    """A NaN-poisoned scratch: the kernel must start from its own zero state and write every row."""
    folded = make_folded('lstm', 37, 40, seed=11)
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 37, (5, 2), generator=g)
    noise = torch.rand((5, 4, 37), generator=g)
    scratch = torch.full((2, 2, 5, 40), float('nan'), device=DEVICE)
    tokens, state = fused_recurrent_sample(to_device(folded), prefix.to(DEVICE), 4, 1., uniform_noise=noise.to(DEVICE),
                                           state_scratch=scratch, block_h=16, block_k=16, block_v=16)
    assert all(s.isfinite().all() for s in state)
    assert_matches_twin(folded, prefix, 4, 1., noise, tokens, state)


# the in-kernel Philox sampler


def constant_logits_net(bias, hidden=16, seed=0):
    """A net whose logits are `bias` plus one number shared by every token: softmax(logits / T) is
    softmax(bias / T) whatever the state. weight_out is one random row repeated (random, not zero)."""
    num_tokens = bias.numel()
    folded = make_folded('lstm', num_tokens, hidden, bias_out=True, seed=seed)
    row = torch.randn(1, hidden, generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(folded, weight_out=row.expand(num_tokens, hidden).contiguous(), bias_out=bias.float())


def chi_square_sf(stat, dof):
    # P(chi2_dof > stat) = Q(dof / 2, stat / 2)
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)).item()


@pytest.mark.parametrize('temperature', [1., 0.5], ids=['t1', 't0.5'])
def test_philox_sampler_chi_square(temperature):
    g = torch.Generator().manual_seed(21)
    num_tokens = 21                                       # two vocabulary tiles of 16
    bias = torch.randn(num_tokens, generator=g) * 0.5
    forbidden = torch.tensor([2, 9, 17, 20])
    bias[forbidden[:2]] = float('-inf')
    bias[forbidden[2:]] = -1e4                            # e^-1e4 == 0 too
    folded = constant_logits_net(bias)
    batch, length = 64, 40
    prefix = torch.randint(0, num_tokens, (batch, 2), generator=g)

    tokens, _ = fused_recurrent_sample(to_device(folded), prefix.to(DEVICE), length, temperature,
                                       seed=torch.tensor([1234], device=DEVICE), offset=torch.tensor([0], device=DEVICE),
                                       out=poisoned_out(batch, length), block_b=64, block_v=16)
    tokens = tokens.cpu()
    assert (tokens >= 0).all(), 'some token was not written'
    counts = torch.bincount(tokens.flatten(), minlength=num_tokens).double()
    assert counts[forbidden].sum() == 0, f'drew a token of probability 0: {counts[forbidden].tolist()}'

    allowed = torch.ones(num_tokens, dtype=torch.bool)
    allowed[forbidden] = False
    probs = torch.softmax(bias[allowed].double() / temperature, dim=0)
    expected = probs * tokens.numel()
    assert expected.min() >= 5, 'chi-square needs >= 5 expected draws per bin'
    stat = ((counts[allowed] - expected) ** 2 / expected).sum().item()
    p_value = chi_square_sf(stat, allowed.sum().item() - 1)
    assert p_value > 1e-3, f'chi-square {stat:.1f}, p = {p_value:.2g}: draws do not follow softmax(logits / T)'


def test_greedy_ties_go_to_the_lowest_token_id():
    """Three tokens tie exactly for the top logit (two in the first vocabulary tile, one in the
    second): argmax must pick the lowest id, as torch.argmax."""
    bias = torch.randn(21, generator=torch.Generator().manual_seed(8))
    bias[[5, 12, 19]] = bias.max() + 1.
    folded = constant_logits_net(bias)
    prefix = torch.randint(0, 21, (5, 2), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    tokens, _ = fused_recurrent_sample(to_device(folded), prefix, 6, 0., out=poisoned_out(5, 6), block_v=16)
    assert (tokens == 5).all(), f'ties broken towards {tokens.unique().tolist()}'


def sample_with(folded, prefix, length, seed, offset, **kw):
    return fused_recurrent_sample(folded, prefix, length, 1., seed=torch.tensor([seed], device=DEVICE),
                                  offset=torch.tensor([offset], device=DEVICE), block_h=16, block_k=16, block_v=16, **kw)


def test_philox_same_seed_offset_is_bitwise_identical_and_streams_differ():
    folded = to_device(make_folded('gru', 37, 24, bias_out=True, seed=3))
    prefix = torch.randint(0, 37, (6, 2), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first, first_state = sample_with(folded, prefix, 8, seed=7, offset=3)
    again, again_state = sample_with(folded, prefix, 8, seed=7, offset=3)
    assert torch.equal(first, again)
    assert all(torch.equal(a, b) for a, b in zip(first_state, again_state))

    other_offset, _ = sample_with(folded, prefix, 8, seed=7, offset=4)
    other_seed, _ = sample_with(folded, prefix, 8, seed=8, offset=3)
    # 48 draws over 37 tokens at temperature 1: equal streams by chance is out of the question
    assert not torch.equal(first, other_offset), 'a different offset gave the same stream'
    assert not torch.equal(first, other_seed), 'a different seed gave the same stream'


def test_philox_counters_differ_per_row_and_step():
    """Identical rows with state-independent logits: equal rows, or a constant row, would mean
    counters shared across rows or steps."""
    folded = to_device(constant_logits_net(torch.zeros(16) + torch.randn(16, generator=torch.Generator().manual_seed(1)) * 0.1))
    prefix = torch.full((8, 2), 3, device=DEVICE)
    tokens, _ = sample_with(folded, prefix, 12, seed=99, offset=0)
    rows = {tuple(r) for r in tokens.cpu().tolist()}
    assert len(rows) == 8, 'rows with the same history drew the same tokens'
    assert all(len(set(r)) > 1 for r in rows), 'a row drew one token at every step'


def test_offset_advances_and_seed_defaults_follow_torch_manual_seed():
    folded = to_device(make_folded('lstm', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (4, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    offset = torch.tensor([5], device=DEVICE)
    first, _ = fused_recurrent_sample(folded, prefix, 6, 1., seed=torch.tensor([1], device=DEVICE), offset=offset, block_h=16, block_k=16, block_v=16)
    assert offset.item() == 6, 'offset must advance by one per call'
    second, _ = fused_recurrent_sample(folded, prefix, 6, 1., seed=torch.tensor([1], device=DEVICE), offset=offset, block_h=16, block_k=16, block_v=16)
    assert not torch.equal(first, second), 'the next call must draw fresh noise'

    torch.manual_seed(0)
    a, _ = fused_recurrent_sample(folded, prefix, 6, 1., block_h=16, block_k=16, block_v=16)
    torch.manual_seed(0)
    b, _ = fused_recurrent_sample(folded, prefix, 6, 1., block_h=16, block_k=16, block_v=16)
    assert torch.equal(a, b)


# argument checks


@pytest.fixture(scope='module')
def small():
    folded = to_device(make_folded('lstm', 37, 24, seed=1))
    prefix = torch.randint(0, 37, (3, 2), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    return folded, prefix


BAD_ARGUMENTS = [
    (dict(folded='not a net'), TypeError, 'folded'),
    (dict(prefix=torch.zeros(3, 2)), TypeError, 'prefix'),
    (dict(prefix=torch.zeros(6, dtype=torch.long)), ValueError, 'prefix'),
    (dict(prefix=torch.zeros(3, 0, dtype=torch.long)), ValueError, 'prefix'),
    (dict(prefix=torch.zeros(3, 2, dtype=torch.long, device='meta')), ValueError, 'prefix'),
    (dict(length=0), ValueError, 'length'),
    (dict(temperature=-1.), ValueError, 'temperature'),
    (dict(temperature='hot'), TypeError, 'temperature'),
    (dict(uniform_noise=torch.rand(3, 4, 36)), ValueError, 'uniform_noise'),
    (dict(uniform_noise=torch.zeros(3, 4, 37, dtype=torch.long)), TypeError, 'uniform_noise'),
    (dict(seed=torch.tensor([1.])), TypeError, 'seed'),
    (dict(seed=torch.tensor([1, 2])), ValueError, 'seed'),
    (dict(offset=torch.tensor([0], dtype=torch.int32)), TypeError, 'offset'),
    (dict(out=torch.zeros(3, 4)), TypeError, 'out'),
    (dict(out=torch.zeros(3, 5, dtype=torch.long)), ValueError, 'out'),
    (dict(precision='tf32'), ValueError, 'precision'),
    (dict(block_v=8), ValueError, 'block_v'),
    (dict(block_h=48), ValueError, 'block_h'),
]


@pytest.mark.parametrize('change, error, name', [
    pytest.param(*case, id=f'{case[2]}-{i}-{case[1].__name__}') for i, case in enumerate(BAD_ARGUMENTS)
])
def test_bad_arguments_name_the_argument(small, change, error, name):
    folded, prefix = small
    args = dict(folded=folded, prefix=prefix, length=4, temperature=1.)
    for key, value in change.items():
        args[key] = value.to(DEVICE) if isinstance(value, torch.Tensor) and value.device.type != 'meta' else value
    with pytest.raises(error, match=name):
        fused_recurrent_sample(args.pop('folded'), args.pop('prefix'), args.pop('length'), args.pop('temperature'), **args)


def test_bad_weights_name_the_field(small):
    folded, prefix = small
    with pytest.raises(ValueError, match='input_table'):
        fused_recurrent_sample(dataclasses.replace(folded, input_table=folded.input_table[:, :-1]), prefix, 4, 1.)
    with pytest.raises(TypeError, match='weight_out'):
        fused_recurrent_sample(dataclasses.replace(folded, weight_out=folded.weight_out.double()), prefix, 4, 1.)
    gru = to_device(make_folded('gru', 37, 24, seed=1))
    with pytest.raises(ValueError, match='bias_hn'):
        fused_recurrent_sample(dataclasses.replace(gru, bias_hn=None), prefix, 4, 1.)


# large shapes and CUDA graphs (GPU only)


@cuda_only
@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize('batch, num_tokens, hidden, precision', [
    (32, 256, 256, 'ieee'),
    (4096, 256, 64, 'ieee'),
    (3, 5000, 2048, 'ieee'),
    (2, 32000, 128, 'ieee'),
    (17, 1000, 1000, 'ieee'),
    (32, 256, 256, 'tf32x3'),
], ids=['example', 'batch4096', 'vocab5000_hidden2048', 'vocab32000', 'hidden1000', 'example_tf32x3'])
def test_large_shapes_match_twin(cell, batch, num_tokens, hidden, precision):
    folded = make_folded(cell, num_tokens, hidden, dim=64, bias_out=True, seed=hidden)
    g = torch.Generator().manual_seed(9)
    prefix = torch.randint(0, num_tokens, (batch, 4), generator=g)
    length = 6
    noise = torch.rand((batch, length, num_tokens), generator=g)
    tokens, state = fused_recurrent_sample(to_device(folded), prefix.to(DEVICE), length, 1., uniform_noise=noise.to(DEVICE),
                                           out=poisoned_out(batch, length), precision=precision)
    assert (tokens >= 0).all()
    assert_matches_twin(folded, prefix, length, 1., noise, tokens, state)


@cuda_only
def test_cuda_graph_replay_draws_fresh_noise():
    folded = to_device(make_folded('lstm', 256, 256, dim=64, seed=2))
    prefix = torch.randint(0, 256, (32, 8), device=DEVICE)
    seed, offset = torch.tensor([42], device=DEVICE), torch.tensor([0], device=DEVICE)
    out = torch.empty((32, 64), dtype=torch.long, device=DEVICE)
    scratch = torch.empty((2, 2, 32, 256), device=DEVICE)
    run = lambda: fused_recurrent_sample(folded, prefix, 64, 1., seed=seed, offset=offset, out=out, state_scratch=scratch)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()                                             # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    offset.fill_(0)
    with torch.cuda.graph(graph):
        run()

    offset.fill_(0)
    graph.replay()
    first = out.clone()
    graph.replay()
    second = out.clone()
    torch.cuda.synchronize()
    assert offset.item() == 2
    assert not torch.equal(first, second), 'a replay must draw fresh noise'
    eager, _ = fused_recurrent_sample(folded, prefix, 64, 1., seed=seed, offset=torch.tensor([1], device=DEVICE))
    assert torch.equal(eager, second), 'replay 2 must equal an eager call at offset 1'
