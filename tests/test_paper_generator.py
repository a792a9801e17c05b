"""PaperDataGenerator: the author's generator, its folded loop against the plain nn.LSTM, and its draws.

Tolerances. The author's weights (every LSTM tensor times m ** 4, m ~ U(1, 3.5)) make the LSTM's
own dynamics chaotic for m above about 1.4: even teacher-forced, PyTorch's fp32 nn.LSTM and the
same network in fp64 part after some tens of steps (measured: m = 1.8 at step ~30). So:
- over a long prefix (520 tokens) the folded loop is compared with nn.LSTM at m ** 4 = 2 (m = 1.19),
  below the onset, to 1e-5 of the largest magnitude (the differences measured there are ~1e-6:
  fp32 rounding, 2 ** -23 ~ 1.2e-7, over sums of a few hundred terms);
- at the author's scales each single step is compared, from nn.LSTM's own state at every position
  of a long trajectory, against the same step in fp64: the folded step's error must be within 4x
  of nn.LSTM's own fp32 error (plus 1e-6 of the magnitude). Pre-activations reach a few hundred
  there, so errors of 1e-4 to 1e-3 of the magnitude are what fp32 gives both implementations.
Greedy tokens are compared off near-ties: where the top two logits differ by more than 1e-4 of
the logits' magnitude (100x the measured differences).
"""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from x_transformers import Decoder, TransformerWrapper

from up_fast import PaperDataGenerator, UniversalPretrainWrapper, paper
from up_fast.sampling import gumbel

STABLE = dict(scale_range=(2**0.25, 2**0.25))  # m ** 4 = 2: below the onset of chaos
TIE_GAP = 1e-4


def small(seed=0, dim=24, num_tokens=40, depth=3, **kwargs):
    torch.manual_seed(seed)
    return PaperDataGenerator(dim, num_tokens, 64, depth, **kwargs)


def tokens(num_tokens, *shape, seed=1):
    return torch.randint(0, num_tokens, shape, generator=torch.Generator().manual_seed(seed))


def relative_error(got, want):
    return ((got.double() - want.double()).abs().amax() / want.double().abs().amax()).item()


def off_ties(logits, gap=TIE_GAP):
    """(batch, seq) mask of positions whose top two logits differ by more than gap * magnitude."""
    top2 = logits.topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) > gap * logits.abs().amax()


def plain_steps(gen, x, c):
    """nn.LSTM one position at a time, the hidden state carried (the author's way): the (h, c)
    before every position, each (depth, batch, hidden), stacked to (seq, depth, batch, hidden)."""
    hs, cs, hidden = [], [], None
    with torch.no_grad():
        for t in range(x.shape[1]):
            if hidden is None:
                zeros = torch.zeros(gen.depth, x.shape[0], gen.net.hidden_size)
                hidden = (zeros, zeros.clone())
            hs.append(hidden[0])
            cs.append(hidden[1])
            _, hidden = gen(x[:, t : t + 1], c[:, t : t + 1], hidden)
    return torch.stack(hs), torch.stack(cs)


@pytest.fixture(params=['onednn', 'addmm'], ids=['products-onednn', 'products-addmm'])
def product_routine(request, monkeypatch):
    """Both routines the loop's products may take: oneDNN with prepacked weights where it is
    available on the CPU, torch.addmm elsewhere (other CPUs, CUDA)."""
    if request.param == 'addmm':
        monkeypatch.setattr(paper, 'onednn_packed', lambda weight, batch: None)
    return request.param


# the network


def test_modules_are_the_authors_network():
    gen = PaperDataGenerator()
    assert (gen.embed.num_embeddings, gen.embed.embedding_dim) == (256, 128)
    assert isinstance(gen.net, nn.LSTM)
    assert (gen.net.input_size, gen.net.hidden_size, gen.net.num_layers, gen.net.batch_first, gen.net.bias) == (
        256,
        128,
        4,
        True,
        True,
    )
    assert isinstance(gen.to_logits, nn.Linear) and gen.to_logits.bias is not None
    assert (gen.to_logits.in_features, gen.to_logits.out_features, gen.max_seq_len) == (128, 256, 512)


def test_forward_is_the_plain_two_stream_network():
    gen = small()
    x, c = tokens(40, 2, 9), tokens(40, 2, 9, seed=2)
    logits, (h, cell) = gen(x, c)
    out, _ = gen.net(torch.cat((gen.embed(x), gen.embed(c)), dim=-1))
    torch.testing.assert_close(logits, gen.to_logits(out))
    assert logits.shape == (2, 9, 40) and h.shape == cell.shape == (3, 2, 24)


# the folded loop against nn.LSTM


@pytest.mark.parametrize('embed_scale', [1e-8, 1.0], ids=['embed-1e-8', 'embed-1'])
def test_teacher_forced_logits_and_states_match_the_lstm_over_a_long_prefix(embed_scale, product_routine):
    gen = small(dim=32, num_tokens=64, depth=4, embed_scale=embed_scale, **STABLE)
    x, c = tokens(64, 3, 520), tokens(64, 3, 520, seed=2)
    with torch.no_grad():
        logits, (h, cell) = gen(x, c)
    folded_logits, (folded_h, folded_cell) = gen.folded().teacher_force(x, c)

    assert relative_error(folded_logits, logits) < 1e-5
    assert relative_error(folded_h, h) < 1e-5
    assert relative_error(folded_cell, cell) < 1e-5
    # and not trivially: the logits move along the sequence (with the author's 1e-8 embedding the
    # tokens barely reach a stable network: that is the case the chaotic scales amplify)
    assert logits.std(dim=1).amin() > (1e-2 if embed_scale == 1 else 1e-4) * logits.abs().amax()


@pytest.mark.parametrize('scale_range', [(3.5, 3.5), (1.0, 3.5)], ids=['m-3.5', 'm-drawn'])
def test_each_step_matches_the_lstm_at_the_authors_sizes_and_scales(scale_range):
    """From nn.LSTM's own state before each of 200 positions, one folded step and one nn.LSTM step
    (fp32) against the same step in fp64: the folded step is as accurate as nn.LSTM's."""
    torch.manual_seed(0)
    gen = PaperDataGenerator(scale_range=scale_range)  # dim 128, depth 4, vocab 256
    batch, seq = 4, 200
    x, c = tokens(256, batch, seq), tokens(256, batch, seq, seed=2)
    hs, cs = plain_steps(gen, x, c)  # (seq, depth, batch, hidden)

    # every (position, row) as one row of a big batch
    rows = lambda t: t.permute(1, 0, 2, 3).reshape(gen.depth, seq * batch, -1)
    hidden = (rows(hs), rows(cs))
    step_x, step_c = x.t().reshape(-1, 1), c.t().reshape(-1, 1)  # (seq * batch, 1)

    gen64 = copy.deepcopy(gen).double()
    with torch.no_grad():
        plain = gen(step_x, step_c, hidden)
        exact = gen64(step_x, step_c, tuple(t.double() for t in hidden))
    folded = gen.folded().teacher_force(step_x, step_c, hidden)

    flat = lambda out: (out[0], *out[1])  # logits, h, c
    for name, f, p, e in zip(('logits', 'h', 'c'), flat(folded), flat(plain), flat(exact)):
        magnitude = e.abs().amax()
        folded_error = (f.double() - e).abs().amax()
        plain_error = (p.double() - e).abs().amax()
        assert folded_error <= 4 * plain_error + 1e-6 * magnitude, (
            f'{name}: folded {folded_error:.3g}, nn.LSTM {plain_error:.3g}, magnitude {magnitude:.3g}'
        )
    # the scales are the author's: the states saturate, the cells grow
    assert cs.abs().amax() > 5


def test_greedy_tokens_are_the_plain_networks_argmax(product_routine):
    # a stable network left to itself settles into repeating a token; two layers, a wide embedding
    # and a head that follows the state rather than its bias keep the greedy tokens varied
    gen = small(dim=32, num_tokens=64, depth=2, embed_scale=3.0, **STABLE)
    with torch.no_grad():
        gen.to_logits.bias.zero_()
        gen.to_logits.weight.mul_(10.0)
    seed, condition = tokens(64, 6, 8), tokens(64, 6, 300, seed=2)
    out = gen.generate(300, seed=seed, condition=condition)

    with torch.no_grad():
        logits, _ = gen(out[:, :-1], condition[:, :299])  # position j predicts token j + 1
    predicted, sampled = logits[:, 7:], out[:, 8:]
    clear = off_ties(predicted)
    assert clear.float().mean() > 0.95
    assert torch.equal(predicted.argmax(-1)[clear], sampled[clear])
    assert out[:, 8:].unique().numel() > 5  # the tokens do vary


def test_greedy_tokens_are_the_loops_own_argmax_at_the_authors_scales():
    """Where nn.LSTM and the loop part (chaos), the loop must still pick the argmax of its own
    teacher-forced logits, at every position: the wiring of positions, seed and condition."""
    torch.manual_seed(3)
    gen = PaperDataGenerator(dim=32, num_tokens=256, max_seq_len=256)
    seed, condition = tokens(256, 5, 8), tokens(256, 5, 256, seed=2)
    out = gen.generate(256, seed=seed, condition=condition)
    logits, _ = gen.folded().teacher_force(out[:, :-1], condition[:, :255])
    assert torch.equal(logits[:, 7:].argmax(-1), out[:, 8:])


# the contract of generate


@pytest.mark.parametrize('scale_range', [STABLE['scale_range'], (3.5, 3.5)], ids=['stable', 'chaotic'])
def test_output_token_depends_only_on_the_condition_before_it(scale_range):
    gen = small(scale_range=scale_range, embed_scale=1.0 if scale_range == STABLE['scale_range'] else 1e-8)
    seed, condition = tokens(40, 4, 5), tokens(40, 4, 60, seed=2)
    out = gen.generate(60, seed=seed, condition=condition)
    for k in (0, 4, 5, 17, 58, 59):
        changed = condition.clone()
        changed[:, k:] = (changed[:, k:] + 1 + tokens(39, 4, 60 - k, seed=k)) % 40  # every token differs
        other = gen.generate(60, seed=seed, condition=changed)
        assert torch.equal(other[:, : k + 1], out[:, : k + 1])
        if k < 40:
            assert not torch.equal(other, out)  # the condition is read at all


@pytest.mark.parametrize('seed_len, length', [(1, 1), (1, 30), (8, 30), (30, 30)])
def test_seed_starts_the_output_which_is_exactly_length_tokens(seed_len, length):
    gen = small()
    seed = tokens(40, 3, seed_len)
    out = gen.generate(length, seed=seed, condition=tokens(40, 3, length, seed=2))
    assert out.shape == (3, length) and out.dtype == torch.long
    assert torch.equal(out[:, :seed_len], seed)
    assert int(out.min()) >= 0 and int(out.max()) < 40


def test_condition_may_be_one_shorter_or_longer_and_none_means_token_zero():
    gen = small()
    seed, condition = tokens(40, 3, 4), tokens(40, 3, 40, seed=2)
    out = gen.generate(30, seed=seed, condition=condition)
    assert torch.equal(gen.generate(30, seed=seed, condition=condition[:, :29]), out)
    assert torch.equal(gen.generate(30, seed=seed, condition=condition[:, :30]), out)
    assert torch.equal(
        gen.generate(30, seed=seed), gen.generate(30, seed=seed, condition=torch.zeros(3, 29, dtype=torch.long))
    )


def test_generate_unchecked_is_generate():
    gen = small()
    seed, condition = tokens(40, 3, 4), tokens(40, 3, 30, seed=2)
    assert torch.equal(
        gen.generate_unchecked(30, seed.to(torch.int16), condition.to(torch.uint8)),
        gen.generate(30, seed=seed, condition=condition),
    )


def test_seed_tokens_are_teacher_forced():
    """The tokens after the seed depend on every seed token."""
    gen = small(embed_scale=1.0)
    seed, condition = tokens(40, 3, 6), tokens(40, 3, 30, seed=2)
    out = gen.generate(30, seed=seed, condition=condition)
    for j in range(6):
        changed = seed.clone()
        changed[:, j] = (changed[:, j] + 1) % 40
        assert not torch.equal(gen.generate(30, seed=changed, condition=condition)[:, 6:], out[:, 6:])


# sampling at temperature > 0


def test_sampling_picks_the_argmax_of_the_plain_logits_plus_the_injected_noise(product_routine):
    gen = small(dim=32, num_tokens=64, depth=4, embed_scale=1.0, **STABLE)
    seed, condition = tokens(64, 5, 8), tokens(64, 5, 200, seed=2)
    uniform = torch.rand(5, 192, 64, generator=torch.Generator().manual_seed(4))
    temperature = 0.7
    out = gen.generate(200, seed=seed, condition=condition, temperature=temperature, uniform_noise=uniform)

    with torch.no_grad():
        logits, _ = gen(out[:, :-1], condition[:, :199])
    noisy = logits[:, 7:] + temperature * gumbel(uniform)
    clear = off_ties(noisy)
    assert clear.float().mean() > 0.95
    assert torch.equal(noisy.argmax(-1)[clear], out[:, 8:][clear])
    assert not torch.equal(out, gen.generate(200, seed=seed, condition=condition))  # not greedy


def test_sampling_repeats_with_the_generator_and_varies_without():
    gen = small(embed_scale=1.0, **STABLE)
    seed, condition = tokens(40, 4, 3), tokens(40, 4, 50, seed=2)
    draw = lambda s: gen.generate(
        50, seed=seed, condition=condition, temperature=1.0, generator=torch.Generator().manual_seed(s)
    )
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


# reset_: the author's draw


def lstm_bound_ratios(gen):
    """max |w| * sqrt(hidden) / m ** exponent over each LSTM tensor: PyTorch's default init is
    U(-1/sqrt(hidden), 1/sqrt(hidden)), so each ratio is just below 1."""
    factor = float(gen.last_scale) ** gen.scale_exponent
    return [float(p.detach().abs().max()) * gen.net.hidden_size**0.5 / factor for p in gen.net.parameters()]


def test_reset_draws_the_authors_scales():
    gen = small(dim=64, depth=4)
    generator = torch.Generator().manual_seed(0)
    scales = []
    for _ in range(200):
        gen.reset_(generator=generator)
        m = float(gen.last_scale)
        scales.append(m)
        assert 1.0 <= m <= 3.5
        ratios = lstm_bound_ratios(gen)
        assert all(0.9 < r <= 1 + 1e-6 for r in ratios), ratios  # every weight and bias times m ** 4
        assert 1e-9 < float(gen.embed.weight.detach().std()) < 2e-8  # N(0, 1) times 1e-8
        assert float(gen.to_logits.weight.detach().abs().max()) <= 64**-0.5  # the head keeps the default init

    scales = torch.tensor(scales)
    # U(1, 3.5): mean 2.25, standard deviation 0.72; over 200 draws the mean is within 0.2 of 2.25
    assert abs(float(scales.mean()) - 2.25) < 0.2
    assert float(scales.min()) < 1.2 and float(scales.max()) > 3.3


def test_reset_options_set_the_range_exponent_and_embedding_scale():
    gen = small(dim=64, depth=4, scale_range=(2.0, 2.0), scale_exponent=1, embed_scale=1e-3)
    for _ in range(5):
        gen.reset_()
        assert float(gen.last_scale) == 2.0
        assert all(0.9 < r <= 1 + 1e-6 for r in lstm_bound_ratios(gen))
        assert max(float(p.detach().abs().max()) for p in gen.net.parameters()) <= 2.0 / 8 * (
            1 + 1e-6
        )  # m ** 1, not m ** 4
        assert 5e-4 < float(gen.embed.weight.detach().std()) < 2e-3

    default_exponent = small(depth=3, scale_range=(2.0, 2.0))
    assert default_exponent.scale_exponent == 3.0
    assert all(0.9 < r <= 1 + 1e-6 for r in lstm_bound_ratios(default_exponent))


def test_same_generator_seed_same_weights_and_tokens():
    make = lambda s: PaperDataGenerator(16, 40, 64, 2, generator=torch.Generator().manual_seed(s))
    a, b, c = make(5), make(5), make(6)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.net.weight_hh_l0, c.net.weight_hh_l0)

    seed, condition = tokens(40, 3, 4), tokens(40, 3, 40, seed=2)
    assert torch.equal(a.generate(40, seed=seed, condition=condition), b.generate(40, seed=seed, condition=condition))

    # with no generator, torch's global one, and neither Python's nor numpy's random
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch.manual_seed(11)
    d = PaperDataGenerator(16, 40, 64, 2)
    torch.manual_seed(11)
    e = PaperDataGenerator(16, 40, 64, 2)
    assert torch.equal(d.net.weight_ih_l1, e.net.weight_ih_l1) and float(d.last_scale) == float(e.last_scale)
    assert random.getstate() == python_state
    assert all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(np.random.get_state(), numpy_state)
    )


def test_the_folded_loop_follows_redraws_loads_and_edits():
    gen = small(embed_scale=1.0)
    seed, condition = tokens(40, 3, 4), tokens(40, 3, 40, seed=2)
    run = lambda: gen.generate(40, seed=seed, condition=condition)
    before, state = run(), copy.deepcopy(gen.state_dict())

    gen.reset_()
    redrawn = run()
    assert not torch.equal(redrawn, before)
    fresh = small(embed_scale=1.0)
    fresh.load_state_dict(gen.state_dict())
    assert torch.equal(
        fresh.generate(40, seed=seed, condition=condition), redrawn
    )  # what the weights say, not a stale fold

    gen.load_state_dict(state)
    assert torch.equal(run(), before)

    with torch.no_grad():
        gen.to_logits.bias[3] += 100.0
    assert (run()[:, 4:] == 3).all()


def test_the_fold_leaves_the_module_untouched():
    gen = small()
    state = copy.deepcopy(gen.state_dict())
    gen.folded()
    gen.generate(20, seed=tokens(40, 2, 3))
    for (name, p), q in zip(gen.state_dict().items(), state.values()):
        assert torch.equal(p, q), name


# it plugs into the wrapper


def test_plugs_into_the_wrapper():
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=256, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=2))
    wrapper = UniversalPretrainWrapper(
        model, data_generator=PaperDataGenerator(16, 256, 16, 2), batch_size=4, seq_len=16
    )
    before = wrapper.synth_data_buffer.clone()
    loss = wrapper()
    loss.backward()
    assert torch.isfinite(loss) and not torch.equal(before, wrapper.synth_data_buffer)


# argument errors name the argument


@pytest.mark.parametrize(
    'kwargs, error, words',
    [
        (dict(dim=0), ValueError, 'dim'),
        (dict(num_tokens=2.5), TypeError, 'num_tokens'),
        (dict(depth=0), ValueError, 'depth'),
        (dict(max_seq_len=-1), ValueError, 'max_seq_len'),
        (dict(scale_range=(3.5, 1.0)), ValueError, 'scale_range'),
        (dict(scale_range=2.0), TypeError, 'scale_range'),
        (dict(scale_range=(0.0, 1.0)), ValueError, 'scale_range'),
        (dict(scale_exponent=-1), ValueError, 'scale_exponent'),
        (dict(embed_scale='tiny'), TypeError, 'embed_scale'),
        (dict(backend='cuda'), ValueError, 'backend'),
        (dict(backend='triton'), ValueError, "backend='triton'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_constructor_rejects_invalid_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        PaperDataGenerator(**{'dim': 8, 'num_tokens': 16, 'depth': 1, **kwargs})


def test_triton_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv('UP_FAST_BACKEND', 'triton')
    with pytest.raises(ValueError, match='UP_FAST_BACKEND'):
        PaperDataGenerator(8, 16, depth=1)
    monkeypatch.setenv('UP_FAST_BACKEND', 'torch')
    assert PaperDataGenerator(8, 16, depth=1).backend == 'torch'


SEED, CONDITION = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 20, dtype=torch.long)


@pytest.mark.parametrize(
    'kwargs, error, words',
    [
        (dict(length=0), ValueError, 'length'),
        (dict(length=2.0), TypeError, 'length'),
        (dict(seed=None), ValueError, 'seed'),
        (dict(seed=SEED.float()), TypeError, 'seed'),
        (dict(seed=SEED[0]), ValueError, 'seed'),
        (dict(seed=SEED[:, :0]), ValueError, 'seed'),
        (dict(seed=SEED[:0]), ValueError, 'batch'),
        (dict(seed=torch.zeros(2, 21, dtype=torch.long)), ValueError, 'seed'),
        (dict(seed=SEED + 16), ValueError, 'seed'),
        (dict(condition=CONDITION[:, :18]), ValueError, 'condition'),
        (dict(condition=CONDITION[:1]), ValueError, 'condition'),
        (dict(condition=CONDITION - 1), ValueError, 'condition'),
        (dict(temperature=-1.0), ValueError, 'temperature'),
        (dict(temperature=float('nan')), ValueError, 'temperature'),
        (dict(temperature=1.0, uniform_noise=torch.rand(2, 20, 16)), ValueError, 'uniform_noise'),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_generate_rejects_invalid_arguments(kwargs, error, words):
    gen = PaperDataGenerator(8, 16, 20, 1)
    with pytest.raises(error, match=words):
        gen.generate(**{'length': 20, 'seed': SEED, 'condition': CONDITION, **kwargs})


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_runs_on_cuda_like_on_the_cpu():
    gen = small(dim=32, num_tokens=64, depth=4, embed_scale=1.0, **STABLE)
    x, c = tokens(64, 3, 300), tokens(64, 3, 300, seed=2)
    with torch.no_grad():
        logits, _ = gen(x, c)
    gen.cuda().reset_(generator=torch.Generator().manual_seed(0))  # a CPU generator for CUDA weights
    gen.load_state_dict(small(dim=32, num_tokens=64, depth=4, embed_scale=1.0, **STABLE).state_dict())
    cuda_logits, _ = gen.folded().teacher_force(x.cuda(), c.cuda())
    assert relative_error(cuda_logits.cpu(), logits) < 1e-5
    out = gen.generate(50, seed=x[:, :4].cuda(), condition=c.cuda())
    assert out.device.type == 'cuda' and torch.equal(out[:, :4].cpu(), x[:, :4])
