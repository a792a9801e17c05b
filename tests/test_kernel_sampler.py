"""Sampler tests of the persistent sampling kernel (kernels/recurrent_sample.py): the band and the in-kernel Philox.

The band sampler reads only the candidate tokens of a step and falls back to full Gumbel-max when it
cannot tell; the in-kernel Philox draws tokens with the right distribution (a chi-square test), breaks
ties as argmax does, and its (seed, offset) counters repeat a run bitwise and differ per row and step.
Helpers and the interpreter setup are those of test_kernel_recurrent_sample.py.
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

pytest.importorskip('triton')

from test_kernel_recurrent_sample import (  # noqa: E402
    DEVICE,
    MODES,
    TILED,
    assert_matches_oracle,
    make_folded,
    make_net,
    poisoned_out,
    to_device,
    twin_logits_after,
)

from up_fast.band import PHILOX_GUMBEL_BOUNDS, injected_gumbel_bounds  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.recurrent_sample import fused_recurrent_sample  # noqa: E402
from up_fast.naive import naive_recurrent_sample  # noqa: E402

if DEVICE.type == 'cpu' and not rs.INTERPRETED:
    pytest.skip(
        'no GPU, and triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)',
        allow_module_level=True,
    )


# the band sampler


def test_band_reads_only_candidates():
    """At T = 1e-4 only tokens within T * (G_hi - G_lo) of the row's best logit can win: NaN noise
    everywhere else must never be read (one vocabulary tile, one program: the band is the row's)."""
    net = make_net('gru', 37, 40, bias_out=True, seed=13)
    g = torch.Generator().manual_seed(6)
    batch, length, temperature = 4, 5, 1e-4
    prefix = torch.randint(0, 37, (batch, 2), generator=g)
    noise = torch.rand((batch, length, 37), generator=g)
    ref_tokens, _ = naive_recurrent_sample(net.embed, net.net, net.to_logits, prefix, length, temperature, noise)

    # the oracle's logits at each sampling step, along its own tokens
    poisoned = noise.clone()
    g_lo, g_hi = injected_gumbel_bounds(torch.float32)
    for row in range(batch):
        for t in range(length):
            logits = twin_logits_after(net.folded, torch.cat([prefix[row], ref_tokens[row, :t]]))
            far = logits < logits.max() - temperature * (g_hi - g_lo) - 1e-3
            poisoned[row, t, far] = float('nan')
    assert poisoned.isnan().float().mean() > 0.5, 'the band should exclude most tokens at T = 1e-4'
    tokens, _ = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE),
        length,
        temperature,
        uniform_noise=poisoned.to(DEVICE),
        mode='persistent',
        programs=1,
    )
    assert torch.equal(tokens.cpu(), ref_tokens)


@pytest.mark.filterwarnings(
    'ignore:divide by zero encountered in log'
)  # the interpreter's numpy log(0): G = -inf, meant
@pytest.mark.parametrize('mode', list(MODES))
def test_band_falls_back_when_the_best_logit_draws_zero(mode):
    """u == 0 gives G = -inf: the token with the best logit cannot win, and the band (built on it)
    proves nothing. Full Gumbel-max then picks among the others; so must the kernel."""
    net = make_net('lstm', 37, 40, seed=15)
    g = torch.Generator().manual_seed(8)
    batch, length, temperature = 3, 4, 1e-4
    prefix = torch.randint(0, 37, (batch, 2), generator=g)
    noise = torch.rand((batch, length, 37), generator=g)
    ref_tokens, _ = naive_recurrent_sample(net.embed, net.net, net.to_logits, prefix, length, temperature, noise)
    # zero the winner's uniform at step 2 of every row, then recompute the oracle
    noise[torch.arange(batch), 2, ref_tokens[:, 2]] = 0.0
    net_tokens, net_state = naive_recurrent_sample(
        net.embed, net.net, net.to_logits, prefix, length, temperature, noise
    )
    assert (net_tokens[:, 2] != ref_tokens[:, 2]).all()
    tokens, state = fused_recurrent_sample(
        to_device(net.folded), prefix.to(DEVICE), length, temperature, uniform_noise=noise.to(DEVICE), **MODES[mode]
    )
    assert_matches_oracle(net, prefix, length, temperature, noise, tokens, state)


@pytest.mark.parametrize('mode', list(MODES) + list(TILED))
def test_philox_band_is_full_gumbel_max_from_the_same_counters(mode):
    """The band sampler's tokens are bitwise those of full Gumbel-max on every uniform its Philox
    counters give (written out by philox_uniforms), at the reference's T = 1e-4 and at T = 1."""
    net = make_net('gru', 41, 24, bias_out=True, seed=19)
    prefix = torch.randint(0, 41, (5, 2), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    seed, offset = torch.tensor([77], device=DEVICE), torch.tensor([5], device=DEVICE)
    uniforms = rs.philox_uniforms(seed, offset, 5, 6, 41)
    assert uniforms.min() >= 0 and uniforms.max() < 1 and uniforms.unique().numel() > 1000
    for temperature in (1e-4, 1.0):
        drawn, _ = fused_recurrent_sample(
            to_device(net.folded), prefix, 6, temperature, seed=seed, offset=offset.clone(), **{**MODES, **TILED}[mode]
        )
        full, full_state = fused_recurrent_sample(
            to_device(net.folded), prefix, 6, temperature, uniform_noise=uniforms, **{**MODES, **TILED}[mode]
        )
        assert torch.equal(drawn, full)
        assert_matches_oracle(net, prefix, 6, temperature, uniforms, full, full_state)


def test_gumbel_bounds_come_from_the_grid():
    g_lo, g_hi = PHILOX_GUMBEL_BOUNDS
    assert g_hi == pytest.approx(-math.log(-math.log1p(-(2.0**-24))), rel=1e-6)
    assert g_lo == pytest.approx(-math.log(-math.log(2.0**-24)), rel=1e-6)
    assert 16.5 < g_hi < 16.7 and -2.9 < g_lo < -2.7
    assert injected_gumbel_bounds(torch.float64)[1] == math.inf, 'float64 noise can round to 1.0 in fp32: no band'


# the in-kernel Philox sampler


def constant_logits_net(bias, hidden=16, seed=0):
    """A net whose logits are `bias` plus one number shared by every token: softmax(logits / T) is
    softmax(bias / T) whatever the state. weight_out is one row repeated, not zero, with a single
    nonzero weight: a dot product with one nonzero term rounds the same in any summation order, where a
    full row need not (a BLAS may sum edge columns of a tile in another order), and ties stay exact."""
    num_tokens = bias.numel()
    folded = make_folded('lstm', num_tokens, hidden, bias_out=True, seed=seed)
    row = torch.zeros(1, hidden)
    row[0, seed % hidden] = torch.randn((), generator=torch.Generator().manual_seed(seed)).abs() + 0.5
    return dataclasses.replace(folded, weight_out=row.expand(num_tokens, hidden).contiguous(), bias_out=bias.float())


def chi_square_sf(stat, dof):
    # P(chi2_dof > stat) = Q(dof / 2, stat / 2)
    return torch.special.gammaincc(
        torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
    ).item()


def chi_square_p(counts, probs):
    expected = probs * counts.sum()
    assert expected.min() >= 5, 'chi-square needs >= 5 expected draws per bin'
    stat = ((counts - expected) ** 2 / expected).sum().item()
    return chi_square_sf(stat, counts.numel() - 1)


@pytest.mark.parametrize('temperature', [1.0, 0.5], ids=['t1', 't0.5'])
def test_philox_sampler_chi_square(temperature):
    g = torch.Generator().manual_seed(21)
    num_tokens = 21
    bias = torch.randn(num_tokens, generator=g) * 0.5
    forbidden = torch.tensor([2, 9, 17, 20])
    bias[forbidden[:2]] = float('-inf')
    bias[forbidden[2:]] = -1e4  # e^-1e4 == 0 too
    folded = constant_logits_net(bias)
    batch, length = 32, 40
    prefix = torch.randint(0, num_tokens, (batch, 2), generator=g)

    tokens, _ = fused_recurrent_sample(
        to_device(folded),
        prefix.to(DEVICE),
        length,
        temperature,
        seed=torch.tensor([1234], device=DEVICE),
        offset=torch.tensor([0], device=DEVICE),
        out=poisoned_out(batch, length),
        mode='persistent',
        programs=1,
    )
    tokens = tokens.cpu()
    assert (tokens >= 0).all(), 'some token was not written'
    counts = torch.bincount(tokens.flatten(), minlength=num_tokens).double()
    assert counts[forbidden].sum() == 0, f'drew a token of probability 0: {counts[forbidden].tolist()}'

    allowed = torch.ones(num_tokens, dtype=torch.bool)
    allowed[forbidden] = False
    p_value = chi_square_p(counts[allowed], torch.softmax(bias[allowed].double() / temperature, dim=0))
    assert p_value > 1e-3, f'p = {p_value:.2g}: draws do not follow softmax(logits / T)'


@pytest.mark.parametrize('temperature', [1e-4, 1.0])
def test_all_logits_tied_give_uniform_tokens(temperature):
    """A zero output layer: every token is a candidate at any temperature, and the draw is uniform."""
    folded = make_folded('gru', 19, 16, bias_out=True, seed=2)
    folded = dataclasses.replace(folded, weight_out=torch.zeros_like(folded.weight_out), bias_out=torch.zeros(19))
    prefix = torch.randint(0, 19, (32, 1), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    tokens, _ = fused_recurrent_sample(
        to_device(folded), prefix, 12, temperature, seed=torch.tensor([9], device=DEVICE), mode='persistent', programs=1
    )
    counts = torch.bincount(tokens.cpu().flatten(), minlength=19).double()
    p_value = chi_square_p(counts, torch.full((19,), 1 / 19, dtype=torch.float64))
    assert p_value > 1e-3, f'p = {p_value:.2g}: tied logits did not give uniform tokens ({counts.tolist()})'


def test_greedy_ties_go_to_the_lowest_token_id():
    """Three tokens tie exactly for the top logit, in different vocabulary slices: argmax must pick
    the lowest id, as torch.argmax."""
    bias = torch.randn(21, generator=torch.Generator().manual_seed(8))
    bias[[5, 12, 19]] = bias.max() + 1.0
    folded = constant_logits_net(bias)
    prefix = torch.randint(0, 21, (5, 2), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    for kw in MODES.values():
        tokens, _ = fused_recurrent_sample(to_device(folded), prefix, 6, 0.0, out=poisoned_out(5, 6), **kw)
        assert (tokens == 5).all(), f'ties broken towards {tokens.unique().tolist()}'


def sample_with(folded, prefix, length, seed, offset=None, **kw):
    return fused_recurrent_sample(
        folded,
        prefix,
        length,
        1.0,
        seed=torch.tensor([seed], device=DEVICE) if isinstance(seed, int) else seed,
        offset=torch.tensor([offset], device=DEVICE) if isinstance(offset, int) else offset,
        mode='persistent',
        programs=1,
        **kw,
    )


def test_philox_same_seed_offset_is_bitwise_identical_and_streams_differ():
    folded = to_device(make_folded('gru', 37, 24, bias_out=True, seed=3))
    prefix = torch.randint(0, 37, (6, 2), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first, first_state = sample_with(folded, prefix, 8, seed=7, offset=3)
    again, again_state = sample_with(folded, prefix, 8, seed=7, offset=3)
    assert torch.equal(first, again)
    assert all(torch.equal(a, b) for a, b in zip(first_state, again_state))

    other_offset, _ = sample_with(folded, prefix, 8, seed=7, offset=4)
    other_seed, _ = sample_with(folded, prefix, 8, seed=8, offset=3)
    assert not torch.equal(first, other_offset), 'a different offset gave the same stream'
    assert not torch.equal(first, other_seed), 'a different seed gave the same stream'


def test_philox_counters_differ_per_row_and_step():
    """Identical rows with state-independent logits: equal rows, or a constant row, would mean
    counters shared across rows or steps."""
    folded = to_device(constant_logits_net(torch.randn(16, generator=torch.Generator().manual_seed(1)) * 0.1))
    prefix = torch.full((8, 2), 3, device=DEVICE)
    tokens, _ = sample_with(folded, prefix, 12, seed=99, offset=0)
    rows = {tuple(r) for r in tokens.cpu().tolist()}
    assert len(rows) == 8, 'rows with the same history drew the same tokens'
    assert all(len(set(r)) > 1 for r in rows), 'a row drew one token at every step'


def test_offset_advances_and_seed_defaults_follow_torch_manual_seed():
    folded = to_device(make_folded('lstm', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (4, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    offset = torch.tensor([5], device=DEVICE)
    first, _ = sample_with(folded, prefix, 6, seed=1, offset=offset)
    assert offset.item() == 6, 'offset must advance by one per call'
    second, _ = sample_with(folded, prefix, 6, seed=1, offset=offset)
    assert not torch.equal(first, second), 'the next call must draw fresh noise'

    torch.manual_seed(0)
    a, _ = fused_recurrent_sample(folded, prefix, 6, 1.0, mode='persistent', programs=1)
    torch.manual_seed(0)
    b, _ = fused_recurrent_sample(folded, prefix, 6, 1.0, mode='persistent', programs=1)
    assert torch.equal(a, b)


def test_a_seed_without_offset_draws_fresh_noise_every_call():
    """`seed=` without `offset=` continues the stream: it must not restart at offset 0 on every call."""
    folded = to_device(make_folded('lstm', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (4, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    seed = torch.tensor([11], device=DEVICE)
    first, _ = sample_with(folded, prefix, 8, seed=seed)
    second, _ = sample_with(folded, prefix, 8, seed=seed)
    assert not torch.equal(first, second), 'two calls with one seed tensor repeated the same noise'
    # the seed's own offset counted the calls: offset 0 and 1 reproduce them
    assert torch.equal(first, sample_with(folded, prefix, 8, seed=torch.tensor([11], device=DEVICE), offset=0)[0])
    assert torch.equal(second, sample_with(folded, prefix, 8, seed=torch.tensor([11], device=DEVICE), offset=1)[0])
