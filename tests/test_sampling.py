"""The folded sampling path against the real reference network, and the Gumbel-max sampler."""

import dataclasses
import math
import random

import pytest
import torch
from torch import nn
from x_transformers import up_wrapper as reference

from up_fast import sampling
from up_fast.up_wrapper import SyntheticDataGenerator

CELLS = [False, True]
CELL_IDS = ['lstm', 'gru']


def generator_pair(use_gru, dim=48, num_tokens=300, max_seq_len=64, seed=0):
    """A reference generator with non-trivial biases, and an up_fast one holding its weights."""
    torch.manual_seed(seed)
    random.seed(seed)  # the reference draws its to_logits scale from Python's random (its defect 4)
    ref = reference.SyntheticDataGenerator(dim=dim, num_tokens=num_tokens, max_seq_len=max_seq_len, use_gru=use_gru)
    with torch.no_grad():
        for p in ref.net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = SyntheticDataGenerator(dim=dim, num_tokens=num_tokens, max_seq_len=max_seq_len, use_gru=use_gru)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def teacher_force(folded, tokens):
    """Run the folded cell over tokens (batch, seq); returns logits (batch, seq, vocab), h (batch, seq, hidden)."""
    state = folded.init_state(tokens.shape[0])
    hs, logits = [], []
    for t in range(tokens.shape[1]):
        folded.step_(tokens[:, t], state)
        hs.append(folded.module_state(state)[0])
        logits.append(folded.logits(state))
    return torch.stack(logits, dim=1), torch.stack(hs, dim=1)


@pytest.fixture(params=['onednn', 'torch'], ids=['products-onednn', 'products-addmm'])
def product_routine(request, monkeypatch):
    """Both routines FoldedRecurrentNet.linear may take: oneDNN where it is available on the CPU,
    torch.addmm where it is not (other CPUs, and CUDA's PyTorch path)."""
    if request.param == 'torch':
        monkeypatch.setattr(sampling, 'onednn_packed', lambda weight, batch: None)
    return request.param


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_teacher_forced_logits_and_states_match_the_reference(use_gru, product_routine):
    ref, fast = generator_pair(use_gru)
    tokens = torch.randint(0, 300, (3, 600))  # a long prefix
    with torch.no_grad():
        ref_logits, _ = ref(tokens)
        ref_h, ref_last = ref.net(ref.embed(tokens))
        logits, h = teacher_force(fast.folded(), tokens)

    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    if not use_gru:  # the LSTM cell state too
        state = fast.folded().init_state(3)
        for t in range(600):
            fast.folded().step_(tokens[:, t], state)
        torch.testing.assert_close(fast.folded().module_state(state)[1], ref_last[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_sample_returns_ordinary_tensors_in_the_modules_terms(use_gru):
    # the loop runs in inference mode and keeps an LSTM's state as (h / 2, 2 c): neither may leak out
    _, fast = generator_pair(use_gru)
    folded = fast.folded()
    prefix = torch.randint(0, 300, (3, 9))
    tokens, state = folded.sample(prefix, 4, 1.0)
    assert not tokens.is_inference() and not any(s.is_inference() for s in state)
    tokens.add_(0)  # in-place use is allowed outside inference mode
    assert tokens.shape == (3, 4) and tokens.is_contiguous()

    teacher = torch.cat((prefix, tokens[:, :-1]), dim=-1)  # the state is after the second to last token
    with torch.no_grad():
        _, ref_state = fast.net(fast.embed(teacher))
    expected = (ref_state[0],) if use_gru else (ref_state[0][0], ref_state[1][0])  # GRU: h_n; LSTM: (h_n, c_n)
    for got, want in zip(state, expected):
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-5)


def test_folding_leaves_the_module_untouched():
    for use_gru in CELLS:
        _, fast = generator_pair(use_gru)
        before = {k: v.clone() for k, v in fast.state_dict().items()}
        fast.folded()
        assert all(torch.equal(before[k], v) for k, v in fast.state_dict().items())


def test_folded_weights_follow_every_weight_change():
    _, fast = generator_pair(False)
    first = fast.folded()
    assert fast.folded() is first, 'cached while the weights are unchanged'
    fast.reset_()
    second = fast.folded()
    assert second is not first and not torch.equal(second.input_table, first.input_table)
    with torch.no_grad():
        fast.to_logits.weight.mul_(2.0)
    torch.testing.assert_close(fast.folded().weight_out, second.weight_out * 2.0)


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_greedy_tokens_are_the_reference_networks_argmax(use_gru):
    ref, fast = generator_pair(use_gru, max_seq_len=40)
    seed, condition = torch.randint(0, 300, (4, 8)), torch.randint(0, 300, (4, 40))
    tokens = fast.generate(40, seed=seed, condition=condition, temperature=0.0)

    # teacher-force the reference on prefix + our tokens: its logits at each position must pick our token
    with torch.no_grad():
        logits, _ = ref(torch.cat((seed, condition, tokens), dim=-1))
    logits = logits[:, 47:-1]  # (batch, 40, vocab) predicting each sampled token
    top2 = logits.topk(2, dim=-1).values
    decisive = (top2[..., 0] - top2[..., 1]) > 1e-4  # leave out near-ties
    assert decisive.float().mean() > 0.9
    assert torch.equal(logits.argmax(-1)[decisive], tokens[decisive])


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_injected_noise_makes_sampling_deterministic(use_gru):
    _, fast = generator_pair(use_gru, max_seq_len=30)
    seed, condition = torch.randint(0, 300, (4, 5)), torch.randint(0, 300, (4, 30))
    noise = torch.rand(4, 30, 300)
    a = fast.generate(30, seed=seed, condition=condition, temperature=1.0, uniform_noise=noise)
    torch.manual_seed(123)  # the global RNG must not matter
    b = fast.generate(30, seed=seed, condition=condition, temperature=1.0, uniform_noise=noise)
    c = fast.generate(30, seed=seed, condition=condition, temperature=1.0, uniform_noise=torch.rand(4, 30, 300))
    assert torch.equal(a, b) and not torch.equal(a, c)


class SingleLayerLSTM(nn.LSTM):
    """An nn.LSTM subclass is not folded: it takes the generic path, a forward() per token."""

    def __init__(self, dim, hidden_size):
        super().__init__(dim, hidden_size, batch_first=True)


def test_generic_path_samples_like_the_folded_path_on_the_same_noise():
    torch.manual_seed(0)
    folded = SyntheticDataGenerator(dim=32, num_tokens=50, max_seq_len=20)
    generic = SyntheticDataGenerator(dim=32, num_tokens=50, max_seq_len=20, network_klass=SingleLayerLSTM)
    generic.load_state_dict(folded.state_dict())
    assert folded.uses_folded_path and not generic.uses_folded_path

    seed, condition, noise = torch.randint(0, 50, (6, 4)), torch.randint(0, 50, (6, 20)), torch.rand(6, 20, 50)
    for temperature in (1.0, 0.0):
        a = folded.generate(20, seed=seed, condition=condition, temperature=temperature, uniform_noise=noise)
        b = generic.generate(20, seed=seed, condition=condition, temperature=temperature, uniform_noise=noise)
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    'length, max_seq_len',
    [(16, 16), (20, 16), (10, 16), (3, 40)],
    ids=['equal', 'longer', 'shorter', 'shorter-than-prefix'],
)
def test_generate_returns_the_last_max_seq_len_tokens_like_the_reference(length, max_seq_len):
    torch.manual_seed(0)
    fast = SyntheticDataGenerator(dim=16, num_tokens=30, max_seq_len=max_seq_len)
    seed, condition = torch.randint(0, 30, (2, 4)), torch.randint(0, 30, (2, 16))
    noise = torch.rand(2, length, 30)
    out = fast.generate(length, seed=seed, condition=condition, uniform_noise=noise)
    # the sampled tokens straight from the folded net, then the reference's crop of cat(prefix, sampled)
    sampled, _ = fast.folded().sample(torch.cat((seed, condition), dim=-1), length, 1e-4, uniform_noise=noise)
    full = torch.cat((seed, condition, sampled), dim=-1)
    assert out.dtype == torch.long
    assert out.shape == (2, min(max_seq_len, 20 + length))
    assert torch.equal(out, full[:, -max_seq_len:])


# the folded cache against every way a weight can change


def test_folded_weights_follow_replaced_parameters_and_invalidation():
    _, fast = generator_pair(False)
    first = fast.folded()
    for _ in range(3):  # a new Parameter may land at the old address
        fast.net.weight_hh_l0 = nn.Parameter(torch.randn_like(fast.net.weight_hh_l0))
        refolded = fast.folded()
        assert refolded is not first
        torch.testing.assert_close(refolded.weight_hh[:48], fast.net.weight_hh_l0[:48].detach())
        first = refolded

    fast.to_logits.weight.data.mul_(3.0)  # `.data` bypasses the version counter...
    assert fast.folded() is first
    fast.invalidate_folded()  # ...which invalidate_folded() is for
    torch.testing.assert_close(fast.folded().weight_out, fast.to_logits.weight.detach())


def test_generate_works_on_weights_made_in_inference_mode():
    with torch.inference_mode():
        fast = SyntheticDataGenerator(dim=16, num_tokens=30, max_seq_len=8)
        out = fast.generate(8, seed=torch.randint(0, 30, (2, 3)))
    assert out.shape == (2, 8)


def test_a_time_major_net_is_not_folded():
    torch.manual_seed(0)
    fast = SyntheticDataGenerator(dim=16, num_tokens=30, max_seq_len=8, network_klass=nn.LSTM)  # batch_first=False
    assert not fast.uses_folded_path
    seed = torch.randint(0, 30, (3, 5))
    out = fast.generate(1, seed=seed, temperature=0.0)
    logits, _ = fast(seed)  # the module's own (time-major) reading of the input
    assert torch.equal(out[:, -1], logits[:, -1].argmax(-1))


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_sampling_no_tokens_returns_an_empty_batch_and_the_prefix_state(use_gru):
    _, fast = generator_pair(use_gru)
    prefix = torch.randint(0, 300, (2, 5))
    tokens, state = fast.folded().sample(prefix, 0, 1.0)
    assert tokens.shape == (2, 0) and tokens.dtype == torch.long
    with torch.no_grad():
        _, ref_state = fast.net(fast.embed(prefix))
    expected = (ref_state[0],) if use_gru else (ref_state[0][0], ref_state[1][0])  # GRU: h_n; LSTM: (h_n, c_n)
    assert len(state) == len(expected)
    for got, want in zip(state, expected):
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_sample_teacher_forces_as_plain_steps_do(use_gru):
    # sample()'s prefix loop (its own stepper, the prefix as columns) must leave the state bitwise
    # where plain step_ calls leave it
    _, fast = generator_pair(use_gru)
    folded = fast.folded()
    prefix = torch.randint(0, 300, (4, 23))
    _, forced = folded.sample(prefix, 0, 1.0)

    state = folded.init_state(4)
    for t in range(prefix.shape[1]):
        folded.step_(prefix[:, t], state)
    assert all(torch.equal(a, b) for a, b in zip(forced, folded.module_state(state)))


def test_a_replaced_folded_net_uses_its_own_weights():
    # the products (with their bias) are cached per object: a copy made by dataclasses.replace
    # must not inherit the cache of the weights it replaced
    _, fast = generator_pair(False)
    folded = fast.folded()
    prefix = torch.randint(0, 300, (2, 4))
    folded.sample(prefix, 3, 0.0)  # fills the cache
    favour = torch.full((300,), -1e3)
    favour[7] = 1e3
    tokens, _ = dataclasses.replace(folded, bias_out=favour).sample(prefix, 3, 0.0)
    assert (tokens == 7).all()


def test_an_empty_batch_samples_nothing():
    _, fast = generator_pair(False)
    tokens, state = fast.folded().sample(torch.zeros(0, 3, dtype=torch.long), 4, 1.0)
    assert tokens.shape == (0, 4) and all(s.shape == (0, 48) for s in state)


# the band sampler: Gumbel-max with noise only for the tokens that can win


from up_fast.band import Band  # noqa: E402
from up_fast.naive import gumbel_max_full  # noqa: E402
from up_fast.sampling import GumbelNoise, GumbelPool, gumbel, gumbel_, gumbel_max  # noqa: E402

FORMULATIONS = [True, False]
FORMULATION_IDS = ['lazy', 'dense']


def sample_once(logits, temperature, *, generator=None, uniform=None, lazy=True):
    """One gumbel_max step on (batch, vocab) logits: noise from `generator`, or the injected
    (batch, vocab) `uniform`. Returns the tokens and the step's GumbelNoise."""
    batch, vocab = logits.shape
    injected = None if uniform is None else uniform[:, None]  # (batch, 1, vocab)
    noise = GumbelNoise(
        batch, 1, vocab, temperature, device=logits.device, generator=generator, uniform_noise=injected, lazy=lazy
    )
    return gumbel_max(logits, temperature, next(iter(noise))), noise


def chi_square(counts, probs):
    expected = probs.double() * counts.sum()
    return ((counts.double() - expected) ** 2 / expected).sum().item()


@pytest.mark.parametrize('lazy', FORMULATIONS, ids=FORMULATION_IDS)
def test_band_sampler_draws_from_softmax_at_temperature_one(lazy):
    logits = torch.tensor([1.5, 0.2, -1.0, float('-inf'), 0.7, -30.0, 2.0, float('-inf')])
    probs = logits.softmax(-1)
    draws = 200_000
    tokens, _ = sample_once(logits.expand(draws, -1), 1.0, generator=torch.Generator().manual_seed(0), lazy=lazy)
    counts = torch.bincount(tokens, minlength=8)

    assert counts[3] == 0 and counts[7] == 0, 'zero-probability tokens are never drawn'
    live = probs > 1e-6
    chi2 = chi_square(counts[live], probs[live])
    assert chi2 < 20.5, f'chi-square {chi2:.1f} over 5 degrees of freedom (p < 0.001 above 20.5)'


def test_tokens_outside_the_band_are_never_drawn_and_get_no_noise():
    # at T = 0.1 the band is 0.1 * (16.64 + 2.81) ~ 1.95 wide: tokens 4, 5, 6 lie below it
    temperature = 0.1
    logits = torch.tensor([0.0, -0.05, -0.15, -0.8, -2.5, -4.0, float('-inf')])
    draws = 200_000
    tokens, noise = sample_once(logits.expand(draws, -1), temperature, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(tokens, minlength=7)

    assert (counts[4:] == 0).all(), 'tokens below the band are never drawn'
    assert noise.pool.handed_out == 4 * draws, 'one uniform per candidate, none for the tokens below the band'
    probs = (logits[:4] / temperature).softmax(-1)
    chi2 = chi_square(counts[:4], probs)
    assert chi2 < 16.3, f'chi-square {chi2:.1f} over 3 degrees of freedom (p < 0.001 above 16.3)'


@pytest.mark.parametrize('temperature', [1.0, 1e-4], ids=['t1', 't1e-4'])
def test_tied_logits_give_uniform_tokens(temperature):
    # a zero output layer ties every logit: every token is a candidate, and the noise alone decides
    torch.manual_seed(0)
    vocab = 10
    gen = SyntheticDataGenerator(dim=16, num_tokens=vocab, max_seq_len=40)
    with torch.no_grad():
        gen.to_logits.weight.zero_()
    tokens = gen.generate(40, seed=torch.randint(0, vocab, (250, 3)), temperature=temperature)
    counts = torch.bincount(tokens.flatten(), minlength=vocab)
    chi2 = chi_square(counts, torch.full((vocab,), 1.0 / vocab))
    assert chi2 < 27.9, f'chi-square {chi2:.1f} over 9 degrees of freedom (p < 0.001 above 27.9)'


@pytest.mark.parametrize('use_gru', CELLS, ids=CELL_IDS)
def test_same_seed_same_tokens(use_gru):
    _, fast = generator_pair(use_gru, max_seq_len=30)
    seed = torch.randint(0, 300, (8, 5))
    run = lambda s, t: fast.generate(30, seed=seed, temperature=t, generator=torch.Generator().manual_seed(s))
    for temperature in (1.0, 1e-4):
        assert torch.equal(run(3, temperature), run(3, temperature))
    assert not torch.equal(run(3, 1.0), run(4, 1.0))


def test_greedy_draws_no_noise():
    _, fast = generator_pair(False)
    generator = torch.Generator().manual_seed(5)
    before = generator.get_state()
    tokens, _ = fast.folded().sample(torch.randint(0, 300, (3, 4)), 6, 0.0, generator=generator)
    assert torch.equal(generator.get_state(), before)
    logits = torch.randn(50, 20)
    assert torch.equal(gumbel_max(logits, 0.0, None), logits.argmax(-1))


def band_outside(logits, temperature, margin):
    """Entries that lie below the band for any float32 uniforms, by more than `margin`: computed
    here from the uniforms' extremes, not from the sampler's own Band."""
    g = lambda u: -math.log(-math.log(u))
    width = temperature * (g(1 - 2**-24) - g(2**-149))  # largest finite G minus the smallest
    top = logits.amax(-1, keepdim=True)
    return logits < top - width - margin * (top.abs() + 1)


def near_tied_logits(batch, vocab, temperature, seed):
    """Logits spread over ~10 band widths on a grid of `temperature`: most tokens lie below the
    band, many rows have several tokens in it, some exactly tied."""
    torch.manual_seed(seed)
    return (torch.randn(batch, vocab) * 200).round() * temperature


@pytest.mark.parametrize('lazy', FORMULATIONS, ids=FORMULATION_IDS)
@pytest.mark.parametrize('temperature', [1e-4, 1e-2, 1.0], ids=['t1e-4', 't1e-2', 't1'])
def test_injected_noise_outside_the_band_is_never_read_by_the_lazy_formulation(temperature, lazy):
    logits = near_tied_logits(400, 50, temperature, seed=2)
    uniform = torch.rand(400, 50)
    uniform[:, 1::7] = uniform[:, ::7][
        :, : uniform[:, 1::7].shape[1]
    ]  # equal uniforms next to equal logits: exact score ties
    want = gumbel_max_full(logits, temperature, uniform)  # the oracle, full noise

    outside = band_outside(logits, temperature, margin=1e-3)
    # the lazy formulation reads only the band's noise; the dense one is plain full Gumbel-max, which
    # reads every token's (it draws them all anyway) and must give the same winner on the same uniforms
    garbage = uniform.masked_fill(outside, float('nan'))
    got, _ = sample_once(logits, temperature, uniform=garbage if lazy else uniform, lazy=lazy)
    assert torch.equal(got, want)
    assert outside.float().mean() > 0.5, 'the test must hide most of the noise'
    assert (~outside).sum(-1).gt(1).float().mean() > 0.1, 'and keep rows with several candidates'


def test_a_zero_uniform_at_the_top_falls_back_to_full_noise():
    # u == 0 gives G = -inf: the top token cannot win, and the row's winner is decided by noise
    # the band did not draw. The sampler must see it and take every token's noise for that row.
    temperature = 1e-4
    logits = torch.randn(6, 30)
    top = logits.argmax(-1)
    uniform = torch.rand(6, 30).clamp_(min=1e-3)
    uniform[[1, 4], top[[1, 4]]] = 0.0
    want = gumbel_max_full(logits, temperature, uniform)
    assert (want[[1, 4]] != top[[1, 4]]).all()
    for lazy in FORMULATIONS:
        got, _ = sample_once(logits, temperature, uniform=uniform, lazy=lazy)
        assert torch.equal(got, want)


def test_a_drawn_zero_uniform_falls_back_to_full_noise(monkeypatch):
    # the same with generator noise: the second row's only candidate draws u == 0
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 3.0, 2.0], [3.0, 2.0, 1.0]])  # one candidate a row at T = 1e-4
    real_draw = GumbelPool.draw_uniform

    def draw_with_a_zero(pool, count):
        uniform = real_draw(pool, count)
        uniform[1] = 0.0
        return uniform

    monkeypatch.setattr(GumbelPool, 'draw_uniform', draw_with_a_zero)
    tokens, noise = sample_once(logits, 1e-4, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [0, 2, 0], 'the second row falls to its next best token'
    assert noise.pool.handed_out == 3 + 3, "three candidates, then the failed row's full noise"


def test_band_bounds_come_from_the_uniforms_value_set():
    # torch.rand on the CPU draws the grid k * 2^-24 (ATen's uniform_real keeps 24 random bits)
    uniform = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0))
    grid = uniform.double() * 2**24
    assert torch.equal(grid, grid.round())

    drawn = Band.of(1.0, torch.device('cpu'), injected=False)
    injected = Band.of(1.0, torch.device('cpu'), injected=True)
    extremes = torch.tensor([2**-24, 1 - 2**-24, 2**-149])
    g = gumbel(extremes).double()
    assert abs(drawn.g_min - g[0]) < 1e-5 and abs(drawn.g_max - g[1]) < 1e-5
    assert injected.g_max == drawn.g_max and injected.g_min < drawn.g_min
    if torch.isfinite(g[2]):  # unless denormals are flushed to zero
        assert abs(injected.g_min - g[2]) < 1e-5
    # every finite G of the uniforms lies within the band's bounds, up to float32's rounding
    assert g[:2].min() >= drawn.g_min - 1e-5 and gumbel(uniform).max() <= drawn.g_max + 1e-5


def test_the_pool_hands_out_one_stream():
    # refills continue the generator's stream: takes of any size are one long draw, in order
    pool = GumbelPool(0.5, device=torch.device('cpu'), generator=torch.Generator().manual_seed(1), chunk=5)
    taken = torch.cat([pool.take(n)[0] for n in (3, 4, 10, 1)])
    expected = gumbel_(torch.rand(18, generator=torch.Generator().manual_seed(1))).mul_(0.5)
    assert torch.equal(taken, expected)


def test_gumbel_max_refuses_what_it_cannot_sample_from():
    logits = torch.randn(2, 5)
    with pytest.raises(TypeError, match='noise_steps'):
        gumbel_max(logits, 1.0, gumbel(torch.rand(2, 5)))
    noise = GumbelNoise(2, 1, 5, 1.0, device='cpu')
    with pytest.raises(ValueError, match='temperature'):
        gumbel_max(logits, 0.5, next(iter(noise)))
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        sample_once(logits, 1.0, uniform=torch.full((2, 5), 1.0))


@pytest.mark.parametrize('lazy', FORMULATIONS, ids=FORMULATION_IDS)
def test_noise_is_float32_whatever_the_default_dtype(lazy):
    # the band's bounds are those of float32 uniforms: a float64 default dtype must not reach the
    # draws (float64 uniforms go down to 2^-53, G up to 36.7, beyond the band's g_max of 16.64)
    logits = torch.randn(64, 50) * 3.0
    temperature = 1.0

    def draw(default_dtype):
        before = torch.get_default_dtype()
        torch.set_default_dtype(default_dtype)
        try:
            noise = GumbelNoise(
                64, 4, 50, temperature, device='cpu', generator=torch.Generator().manual_seed(3), lazy=lazy
            )
            tokens = torch.stack([gumbel_max(logits, temperature, step) for step in noise])
            drawn = (
                noise.pool.take(10_000)[0]
                if lazy
                else next(GumbelNoise(64, 4, 50, temperature, device='cpu', lazy=False).dense_steps())
            )
            return tokens, drawn, noise
        finally:
            torch.set_default_dtype(before)

    tokens64, drawn64, noise64 = draw(torch.float64)
    tokens32, _, _ = draw(torch.float32)
    assert drawn64.dtype == torch.float32 and drawn64.max() <= temperature * noise64.band.g_max
    assert all(t.dtype == torch.float32 for t in (noise64.noise, noise64.scores, noise64.best, noise64.pool.values))
    assert torch.equal(tokens64, tokens32), 'the same draws under either default dtype'


# chi-square critical values at p = 0.001, by degrees of freedom
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def test_lazy_band_sampler_stays_exact_while_the_band_moves_between_steps():
    # the lazy sampler keeps earlier steps' noise outside the band (stale values, never redrawn):
    # over steps whose bands move, each step must still draw from softmax(logits / T) exactly.
    # T = 0.1: the band is about 1.95 wide. Each row sees the step's logits rolled by its own
    # shift, so every row's band moves differently; token 0 of the third step sits just below the
    # band, holding the first step's noise of a candidate
    temperature, vocab, batch = 0.1, 8, 40_000
    bases = torch.tensor(
        [
            [0.0, -0.1, -0.3, -0.6, -3.0, -3.0, -3.0, -3.0],
            [-3.0, -3.0, -3.0, -3.0, 0.0, -0.2, -0.05, -0.5],
            [-1.96, 0.0, -3.0, -0.15, -3.0, -1.0, -2.5, -3.0],
            [-0.3, -3.0, -0.1, -3.0, -0.05, -3.0, 0.0, -1.2],
        ]
    )
    shifts = torch.arange(batch) % vocab  # (batch,)
    columns = (
        torch.arange(vocab)[None, :] - shifts[:, None]
    ) % vocab  # (batch, vocab): row b holds base[(j - shift) % vocab]
    noise = GumbelNoise(
        batch, len(bases), vocab, temperature, device='cpu', generator=torch.Generator().manual_seed(7), lazy=True
    )
    assert noise.lazy

    stale_outside = False
    for base, step in zip(bases, noise):
        logits = base[columns].contiguous()  # (batch, vocab)
        outside = ~noise.band.candidates(logits)[1]
        stale_outside |= bool((noise.noise[outside] != 0).any())
        tokens = gumbel_max(logits, temperature, step)
        counts = torch.bincount((tokens - shifts) % vocab, minlength=vocab)  # by position in the base

        probs = (base / temperature).softmax(-1)
        live = probs > 1e-6
        assert (counts[~live] == 0).all(), f'tokens below the band were drawn: {counts.tolist()} for {base.tolist()}'
        chi2 = chi_square(counts[live], probs[live])
        df = int(live.sum()) - 1
        assert chi2 < CHI2_CRITICAL[df], (
            f'chi-square {chi2:.1f} over {df} degrees of freedom for {base.tolist()}: {counts.tolist()}'
        )
    assert stale_outside, "the test must put earlier steps' noise outside the band"
