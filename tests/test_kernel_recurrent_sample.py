"""Parity and sampler tests of the persistent sampling kernel (kernels/recurrent_sample.py).

References: the plain oracle `naive_recurrent_sample` (up_fast/naive.py) and the folded PyTorch
path `FoldedRecurrentNet.sample`, both on the CPU in fp32. Without a GPU the kernel runs under
Triton's interpreter, which runs programs one after another: it checks the persistent kernel with
one program per group ('single': the barrier passes at once) and the multi-program arithmetic in
phase-per-launch mode ('phases': P > 1 programs split the weights exactly as on the GPU). The tests
marked `cuda` add the multi-program persistent kernel, large shapes and CUDA-graph replay.
"""

import os

import torch

# Triton picks the interpreter when a kernel is defined, so this must precede any triton import
# in the process (conftest.py is the right home for it; kept here so the module runs on its own)
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import dataclasses
import math
import warnings

import pytest
from torch import nn

pytest.importorskip('triton')

from up_fast.band import PHILOX_GUMBEL_BOUNDS, injected_gumbel_bounds  # noqa: E402
from up_fast.kernels import aot  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.launch_plan import LaunchPlan, check_plan, plan_launch  # noqa: E402
from up_fast.kernels.recurrent_sample import fused_recurrent_sample  # noqa: E402
from up_fast.naive import naive_recurrent_sample  # noqa: E402
from up_fast.sampling import FoldedRecurrentNet, gumbel  # noqa: E402

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

if DEVICE.type == 'cpu' and not rs.INTERPRETED:
    pytest.skip(
        'no GPU, and triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)',
        allow_module_level=True,
    )

cuda_only = pytest.mark.skipif(
    DEVICE.type != 'cuda', reason='large shapes, P > 1 persistent and CUDA graphs need a GPU'
)

# State tolerance. fp32 eps is 1.2e-7; the references' matmuls and the kernel's sum the `hidden`
# products of each pre-activation in different orders (and tanh is 2 sigmoid(2x) - 1 here), an
# error of a few eps * sum|w h| per step; sigmoid (slope <= 1/4) and the contracting forget gate
# keep it from growing. Observed: about 2e-7 on these shapes. 1e-5 leaves a wide margin, while a
# real bug (a gate out of order, a missed bias, a stale slot) is off by 1e-2 or more.
STATE_TOL = 1e-5
NEAR_TIE = 1e-4


def state_tol(hidden):
    # rounding errors grow like sqrt(hidden): scaled for the large shapes of the GPU tests
    return STATE_TOL * max(1.0, math.sqrt(hidden / 64))


# helpers


@dataclasses.dataclass
class Net:
    embed: nn.Embedding
    net: nn.Module
    to_logits: nn.Linear
    folded: FoldedRecurrentNet


def make_net(cell, num_tokens, hidden, *, dim=24, bias_out=False, seed=0, weight_scale=2.0):
    """embed -> LSTM/GRU -> Linear with fresh random weights (CPU, fp32), and its folded form.

    Recurrent weights are drawn wider than PyTorch's default (weight_scale / sqrt(hidden)) so that
    the dynamics are not trivially contracting."""
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
        to_logits.weight.uniform_(-2.0 / math.sqrt(hidden), 2.0 / math.sqrt(hidden), generator=g)
        if bias_out:
            to_logits.bias.normal_(generator=g)
    return Net(embed, net, to_logits, FoldedRecurrentNet.fold(embed, net, to_logits))


def make_folded(cell, num_tokens, hidden, **kw):
    return make_net(cell, num_tokens, hidden, **kw).folded


def to_device(folded, device=DEVICE, dtype=None):
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype or t.dtype)
    return dataclasses.replace(
        folded,
        input_table=move(folded.input_table),
        weight_hh=move(folded.weight_hh),
        bias_hn=move(folded.bias_hn),
        weight_out=move(folded.weight_out),
        bias_out=move(folded.bias_out),
    )


def twin_logits_after(folded, tokens):
    """The folded path's logits (num_tokens,) after feeding the 1-D sequence `tokens` from a zero state."""
    state = folded.init_state(1)
    for token in tokens:
        folded.step_(token.view(1), state)
    return folded.logits(state)[0]


def assert_matches_twin(folded_cpu, prefix, length, temperature, uniform_noise, tokens, state):
    """Tokens equal the folded path's, except where a row first diverges at a genuine near-tie; the
    final state of every row that never diverged agrees to state_tol."""
    prefix, tokens = prefix.cpu().long(), tokens.cpu().long()
    noise = uniform_noise.cpu() if uniform_noise is not None else None
    ref_tokens, ref_state = folded_cpu.sample(prefix, length, temperature, uniform_noise=noise)

    agree = (tokens == ref_tokens).all(dim=1)  # (batch,)
    for row in torch.nonzero(~agree).flatten().tolist():
        t = int(torch.nonzero(tokens[row] != ref_tokens[row])[0])
        logits = twin_logits_after(folded_cpu, torch.cat([prefix[row], tokens[row, :t]]))
        scores = logits if temperature == 0 else logits + temperature * gumbel(noise[row, t].float())
        ours, theirs = scores[tokens[row, t]], scores[ref_tokens[row, t]]
        gap = (theirs - ours).item()
        assert 0 <= gap <= NEAR_TIE * max(1.0, theirs.abs().item()), (
            f'row {row} step {t}: kernel drew {tokens[row, t].item()}, twin {ref_tokens[row, t].item()}, '
            f'score gap {gap:.3g} is no near-tie'
        )
    assert agree.float().mean() >= 0.9, (
        f'{int((~agree).sum())} of {agree.numel()} rows diverged: near-ties are not that common'
    )

    hidden = folded_cpu.hidden_size
    assert len(state) == len(ref_state)
    for name, ours, theirs in zip(('h', 'c'), state, ref_state):
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        torch.testing.assert_close(
            ours.cpu()[agree],
            theirs[agree],
            rtol=state_tol(hidden),
            atol=state_tol(hidden),
            msg=lambda m, name=name: f'final {name}: {m}',
        )


def assert_matches_oracle(net, prefix, length, temperature, noise, tokens, state):
    """Tokens identical to the plain oracle's, h and c within state_tol."""
    ref_tokens, ref_state = naive_recurrent_sample(
        net.embed,
        net.net,
        net.to_logits,
        prefix.cpu().long(),
        length,
        temperature,
        noise.cpu() if noise is not None else None,
    )
    assert torch.equal(tokens.cpu().long(), ref_tokens), (
        f'tokens differ from the oracle at {torch.nonzero(tokens.cpu() != ref_tokens)[:5].tolist()}'
    )
    hidden = net.folded.hidden_size
    for name, ours, theirs in zip(('h', 'c'), state, ref_state):
        torch.testing.assert_close(
            ours.cpu(),
            theirs,
            rtol=state_tol(hidden),
            atol=state_tol(hidden),
            msg=lambda m, name=name: f'final {name} against the oracle: {m}',
        )


def poisoned_out(batch, length, dtype=torch.int64):
    return torch.full((batch, length), -1, dtype=dtype, device=DEVICE)


# a plan with every loop taken more than once: 2 groups, 3 unit tiles a program, 2 vocabulary
# tiles a slice, 2 K tiles, a ragged last slice
TILED_PLAN = LaunchPlan(
    block_b=16,
    groups=2,
    programs=2,
    block_u=4,
    unit_tiles=3,
    block_v=16,
    vocab_tiles=2,
    num_slices=2,
    block_k=16,
    block_p=2,
    num_warps=4,
)


# the modes the interpreter can run: keyword arguments of fused_recurrent_sample
MODES = {
    'single': dict(mode='persistent', programs=1),
    'phases3': dict(mode='phases', programs=3),
}
# the band across several vocabulary tiles of a slice (batch <= 32, hidden <= 24, vocabulary in (32, 64])
TILED = {'phases_tiled': dict(mode='phases', plan=TILED_PLAN)}


# parity with the oracle on injected noise

# (id, kwargs): batch, prefix_len, length, num_tokens, hidden, temperature, bias_out
PARITY_CASES = [
    ('ragged_vocab37_hidden40', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1.0)),
    ('bias_out', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1.0, bias_out=True)),
    ('batch1', dict(batch=1, prefix_len=4, length=7, num_tokens=37, hidden=40, temperature=1.0)),
    ('greedy_t0', dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=0.0)),
    (
        'reference_default_t1e-4',
        dict(batch=5, prefix_len=3, length=6, num_tokens=37, hidden=40, temperature=1e-4, bias_out=True),
    ),
    ('prefix1_length1', dict(batch=3, prefix_len=1, length=1, num_tokens=37, hidden=40, temperature=1.0)),
    ('hot_t3_two_groups', dict(batch=20, prefix_len=2, length=4, num_tokens=20, hidden=24, temperature=3.0)),
]


@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize('case', [c for _, c in PARITY_CASES], ids=[i for i, _ in PARITY_CASES])
def test_matches_oracle_on_injected_noise(mode, cell, case):
    batch, prefix_len, length = case['batch'], case['prefix_len'], case['length']
    num_tokens, hidden, temperature = case['num_tokens'], case['hidden'], case['temperature']

    net = make_net(
        cell, num_tokens, hidden, bias_out=case.get('bias_out', False), seed=len(cell) * 1000 + 31 * batch + hidden
    )
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, num_tokens, (batch, prefix_len), generator=g)
    noise = torch.rand((batch, length, num_tokens), generator=g)

    out = poisoned_out(batch, length)
    tokens, state = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE),
        length,
        temperature,
        uniform_noise=noise.to(DEVICE),
        out=out,
        check=True,
        **MODES[mode],
    )
    assert tokens is out and tokens.dtype == torch.int64
    assert len(state) == (2 if cell == 'lstm' else 1) and all(s.shape == (batch, hidden) for s in state)
    assert_matches_oracle(net, prefix, length, temperature, noise, tokens, state)
    assert_matches_twin(net.folded, prefix, length, temperature, noise, tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize(
    'mode, plan',
    [
        ('phases', TILED_PLAN),
        (
            'persistent',
            dataclasses.replace(TILED_PLAN, programs=1, unit_tiles=6, vocab_tiles=3, num_slices=1, block_p=2),
        ),
        (
            'phases',
            dataclasses.replace(TILED_PLAN, programs=3, unit_tiles=2, vocab_tiles=1, num_slices=3, block_p=2),
        ),  # 2 reduction chunks
    ],
    ids=['phases_P2_tiled', 'single_tiled', 'phases_P3_slice_per_program'],
)
def test_tiled_plans_match_oracle(cell, mode, plan):
    net = make_net(cell, 41, 24, bias_out=True, seed=17)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, 41, (19, 2), generator=g)
    noise = torch.rand((19, 4, 41), generator=g)
    tokens, state = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE),
        4,
        1.0,
        uniform_noise=noise.to(DEVICE),
        mode=mode,
        plan=plan,
        check=True,
    )
    assert_matches_oracle(net, prefix, 4, 1.0, noise, tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bf16_weights_match_the_oracle_on_the_rounded_weights(cell):
    """bf16 is storage: widened to fp32 at each use. The reference is the oracle on the same
    bf16-rounded weights, to the fp32 tolerance."""
    net = make_net(cell, 37, 40, bias_out=True, seed=5)
    with torch.no_grad():
        for module in (net.embed, net.net, net.to_logits):
            for p in module.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    folded = FoldedRecurrentNet.fold(net.embed, net.net, net.to_logits)
    rounded = dataclasses.replace(net, folded=to_device(to_device(folded, 'cpu', torch.bfloat16), 'cpu', torch.float32))
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 37, (4, 3), generator=g)
    noise = torch.rand((4, 5, 37), generator=g)
    tokens, state = fused_recurrent_sample(
        to_device(folded, dtype=torch.bfloat16),
        prefix.to(DEVICE),
        5,
        1.0,
        uniform_noise=noise.to(DEVICE),
        mode='phases',
        programs=2,
    )
    # the fold rounds again when stored as bf16: hold the kernel to the folded path on those weights
    assert_matches_twin(rounded.folded, prefix, 5, 1.0, noise, tokens, state)


@pytest.mark.parametrize('precision', ['ieee', 'tf32x3'])
def test_precisions_agree(precision):
    """Under the interpreter both are fp32 dots; on a GPU 'tf32x3' runs on tensor cores (cuda test below)."""
    net = make_net('lstm', 37, 40, seed=9)
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 37, (3, 2), generator=g)
    noise = torch.rand((3, 4, 37), generator=g)
    tokens, state = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE),
        4,
        1.0,
        uniform_noise=noise.to(DEVICE),
        precision=precision,
        mode='persistent',
        programs=1,
    )
    assert_matches_oracle(net, prefix, 4, 1.0, noise, tokens, state)


def test_narrow_dtypes_and_strided_views():
    """uint8 prefix, float64 non-contiguous noise (no band: it may round to 1.0 in fp32), int16
    `out` as a strided column slice of a buffer."""
    num_tokens, batch, length = 37, 6, 5
    net = make_net('lstm', num_tokens, 40, seed=7)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, num_tokens, (batch, 3), generator=g)
    noise = torch.rand((batch, num_tokens, length), generator=g, dtype=torch.float64).transpose(
        1, 2
    )  # (batch, length, num_tokens)
    buffer = torch.full((batch, 3 + length + 2), -1, dtype=torch.int16, device=DEVICE)
    out = buffer[:, 3 : 3 + length]

    tokens, state = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE, torch.uint8),
        length,
        1.0,
        uniform_noise=noise.to(DEVICE),
        out=out,
        mode='phases',
        programs=2,
    )
    assert tokens.data_ptr() == out.data_ptr()
    assert (buffer[:, :3] == -1).all() and (buffer[:, 3 + length :] == -1).all(), 'wrote outside the out view'
    assert_matches_oracle(net, prefix, length, 1.0, noise, tokens, state)


def test_state_scratch_is_fully_rewritten():
    """A NaN-poisoned scratch: the kernel must start from its own zero state and write every row."""
    net = make_net('lstm', 37, 40, seed=11)
    g = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 37, (5, 2), generator=g)
    noise = torch.rand((5, 4, 37), generator=g)
    scratch = torch.full((2, 2, 5, 40), float('nan'), device=DEVICE)
    tokens, state = fused_recurrent_sample(
        to_device(net.folded),
        prefix.to(DEVICE),
        4,
        1.0,
        uniform_noise=noise.to(DEVICE),
        state_scratch=scratch,
        mode='phases',
        programs=2,
    )
    assert all(s.isfinite().all() for s in state)
    assert_matches_oracle(net, prefix, 4, 1.0, noise, tokens, state)


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
    softmax(bias / T) whatever the state. weight_out is one random row repeated (random, not zero)."""
    num_tokens = bias.numel()
    folded = make_folded('lstm', num_tokens, hidden, bias_out=True, seed=seed)
    row = torch.randn(1, hidden, generator=torch.Generator().manual_seed(seed))
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


# the grid barrier's bound and error flag


def test_a_barrier_that_never_fills_sets_the_flag_and_raises():
    """Under the interpreter programs run one after another, so a persistent grid of 2 programs
    cannot meet: program 0 spins max_spins times, sets the abort word and the error flag and
    leaves; program 1 then gives up at its next barrier. check=True raises, naming the grid."""
    folded = to_device(make_folded('lstm', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (3, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    if DEVICE.type == 'cuda':
        pytest.skip('on a GPU a grid of 2 is co-resident: the barrier fills')
    with pytest.raises(rs.KernelBarrierError, match=r'grid of 2 programs .* 1 SMs'):
        fused_recurrent_sample(folded, prefix, 4, 1.0, mode='persistent', programs=2, max_spins=50, check=True)
    # the flag is cleared by the check: a good launch afterwards passes
    fused_recurrent_sample(folded, prefix, 4, 1.0, mode='persistent', programs=1, check=True)

    # without check the launcher does not sync; the flag waits for the next check
    fused_recurrent_sample(folded, prefix, 4, 1.0, mode='persistent', programs=2, max_spins=50, check=False)
    with pytest.raises(rs.KernelBarrierError):
        rs.check_kernel_errors(DEVICE)
    rs.check_kernel_errors(DEVICE)


def test_an_aborted_launch_marks_its_rows_and_the_next_call_raises():
    """Without check (a training step: no host sync) a launch that gave up leaves INVALID_TOKEN in
    every sampled token of its rows, and the next call raises before it changes anything."""
    if DEVICE.type == 'cuda':
        pytest.skip('on a GPU a grid of 2 is co-resident: the barrier fills')
    folded = to_device(make_folded('lstm', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (3, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    aborted, _ = fused_recurrent_sample(
        folded, prefix, 4, 1.0, mode='persistent', programs=2, max_spins=50, check=False
    )
    assert (aborted == rs.INVALID_TOKEN).all()

    out = torch.full((3, 4), 7, dtype=torch.int64, device=DEVICE)
    offset = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    seed = torch.tensor([5], device=DEVICE)
    with pytest.raises(rs.KernelBarrierError, match=r'grid of 2 programs'):
        fused_recurrent_sample(folded, prefix, 4, 1.0, programs=1, out=out, seed=seed, offset=offset)
    assert (out == 7).all() and int(offset) == 0, 'the raising call changed its outputs'

    # raised once: the flag is clear again, and a good launch leaves nothing pending
    tokens, _ = fused_recurrent_sample(folded, prefix, 4, 1.0, programs=1, out=out, seed=seed, offset=offset)
    assert ((tokens >= 0) & (tokens < 37)).all()
    fused_recurrent_sample(folded, prefix, 4, 1.0, programs=1)
    rs.check_kernel_errors(DEVICE)


class RefusedLaunch:
    """Stands in for the persistent kernel: every launch is refused as a device refuses a grid
    larger than it can hold at once."""

    launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            RefusedLaunch.launches += 1
            raise RuntimeError('Triton Error [CUDA]: too many blocks in cooperative launch')

        return launch


def test_a_refused_cooperative_launch_falls_back_to_phases_with_one_warning(monkeypatch):
    folded = to_device(make_folded('gru', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (3, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    noise = torch.rand(3, 5, 37, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected, _ = fused_recurrent_sample(folded, prefix, 5, 1.0, mode='phases', programs=2, uniform_noise=noise)

    monkeypatch.setattr(rs, 'recurrent_sample_kernel', RefusedLaunch())
    monkeypatch.setattr(rs, '_refused_grids', set())
    RefusedLaunch.launches = 0
    with pytest.warns(RuntimeWarning, match=r'grid of 2 programs \(1 groups of 2\) on cpu with 1 SMs was refused'):
        tokens, _ = fused_recurrent_sample(
            folded, prefix, 5, 1.0, mode='persistent', programs=2, uniform_noise=noise, check=True
        )
    assert torch.equal(tokens, expected) and RefusedLaunch.launches == 1

    # the warning is said once; 'auto' then goes to the phases at once, an explicit 'persistent' tries again
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again, _ = fused_recurrent_sample(folded, prefix, 5, 1.0, mode='auto', programs=2, uniform_noise=noise)
        fused_recurrent_sample(folded, prefix, 5, 1.0, mode='persistent', programs=2, uniform_noise=noise)
    assert torch.equal(again, expected) and RefusedLaunch.launches == 2

    # an error from inside the kernel is no refusal: raised, not run again in phases
    class FailingKernel(RefusedLaunch):
        def __getitem__(self, grid):
            return lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError('an error inside the kernel'))

    monkeypatch.setattr(rs, 'recurrent_sample_kernel', FailingKernel())
    with pytest.raises(RuntimeError, match='inside the kernel'):
        fused_recurrent_sample(folded, prefix, 5, 1.0, mode='persistent', programs=2, uniform_noise=noise)

    # one program a group is no cooperative grid: its launch error is the caller's
    monkeypatch.setattr(rs, 'recurrent_sample_kernel', RefusedLaunch())
    with pytest.raises(RuntimeError, match='too many blocks'):
        fused_recurrent_sample(folded, prefix, 5, 1.0, mode='persistent', programs=1, uniform_noise=noise)


def test_debug_env_var_turns_the_check_on(monkeypatch):
    if DEVICE.type == 'cuda':
        pytest.skip('on a GPU a grid of 2 is co-resident: the barrier fills')
    folded = to_device(make_folded('gru', 37, 24, seed=4))
    prefix = torch.randint(0, 37, (3, 2), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    monkeypatch.setenv(rs.CHECK_ENV, '1')
    with pytest.raises(rs.KernelBarrierError):
        fused_recurrent_sample(folded, prefix, 3, 0.0, mode='persistent', programs=2, max_spins=20)


# the launch rule


@pytest.mark.parametrize('batch', [1, 32, 100, 4096])
@pytest.mark.parametrize('hidden', [64, 256, 1000, 2048])
@pytest.mark.parametrize('num_tokens', [2, 256, 5000, 32768])
def test_plans_cover_the_shapes_and_fit_the_device(batch, hidden, num_tokens):
    plan = plan_launch(batch, hidden, num_tokens, 132)
    check_plan(plan, batch, hidden, num_tokens)
    if plan.cooperative:
        assert plan.grid <= 132, 'a cooperative grid must be co-resident: one program per SM'
    assert 4 * plan.block_u * plan.block_b <= 4096 and plan.block_v * plan.block_b <= 8192, 'accumulators too large'


def test_plan_of_the_example():
    plan = plan_launch(32, 256, 256, 132)
    assert (plan.groups, plan.programs, plan.block_u, plan.num_slices, plan.block_v) == (1, 64, 4, 16, 16)
    assert plan_launch(4096, 256, 256, 132).programs == 2  # 64 groups of 64 rows on 128 SMs
    assert plan_launch(32, 256, 256, 1).programs == 1  # the interpreter: one program


def test_aot_configurations_cover_the_launcher_choices():
    configs = aot.aot_configurations()
    names = {c.name for c in configs}
    for shape in aot.AOT_SHAPES:
        for cell in ('lstm', 'gru'):
            for weights in ('fp32', 'bf16'):
                for sampling in ('sample', 'greedy'):
                    assert f'persistent-{shape}-{cell}-{weights}-{sampling}-tf32x3' in names
                    for phase in range(3):
                        assert f'phase{phase}-{shape}-{cell}-{weights}-{sampling}-tf32x3' in names
    for c in configs:
        constexpr_names = set(c.constexprs)
        assert set(c.signature) == set(c.fn.arg_names) - constexpr_names
        assert c.programs >= 1
        if c.fn in (rs.recurrent_sample_kernel, rs.recurrent_phase_kernel):  # the buffer kernels have no step floor
            assert c.floor['floor_us_per_sampling_step'] > 0
        assert c.cooperative == (c.fn is rs.recurrent_sample_kernel and c.programs > 1)


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
    (dict(temperature=-1.0), ValueError, 'temperature'),
    (dict(temperature='hot'), TypeError, 'temperature'),
    (dict(uniform_noise=torch.rand(3, 4, 36)), ValueError, 'uniform_noise'),
    (dict(uniform_noise=torch.zeros(3, 4, 37, dtype=torch.long)), TypeError, 'uniform_noise'),
    (dict(seed=torch.tensor([1.0])), TypeError, 'seed'),
    (dict(seed=torch.tensor([1, 2])), ValueError, 'seed'),
    (dict(offset=torch.tensor([0], dtype=torch.int32)), TypeError, 'offset'),
    (dict(out=torch.zeros(3, 4)), TypeError, 'out'),
    (dict(out=torch.zeros(3, 5, dtype=torch.long)), ValueError, 'out'),
    (dict(precision='tf32'), ValueError, 'precision'),
    (dict(mode='fast'), ValueError, 'mode'),
    (dict(programs=0), ValueError, 'programs'),
    (dict(max_spins=0), ValueError, 'max_spins'),
    (dict(plan='big'), TypeError, 'plan'),
    (dict(plan=dataclasses.replace(TILED_PLAN, groups=1, block_b=16, programs=1, unit_tiles=1)), ValueError, 'hidden'),
]


@pytest.mark.parametrize(
    'change, error, name',
    [pytest.param(*case, id=f'{case[2]}-{i}-{case[1].__name__}') for i, case in enumerate(BAD_ARGUMENTS)],
)
def test_bad_arguments_name_the_argument(small, change, error, name):
    folded, prefix = small
    args = dict(folded=folded, prefix=prefix, length=4, temperature=1.0)
    for key, value in change.items():
        args[key] = value.to(DEVICE) if isinstance(value, torch.Tensor) and value.device.type != 'meta' else value
    with pytest.raises(error, match=name):
        fused_recurrent_sample(
            args.pop('folded'), args.pop('prefix'), args.pop('length'), args.pop('temperature'), **args
        )


def test_int32_guard_bounds_the_input_table():
    # LSTM, hidden 1024: the input table has num_tokens * 4096 elements; 2**19 tokens is the last that fits
    rs.check_int32_offsets(32, 1024, 2**19, 4)
    with pytest.raises(ValueError, match=r'input table .* 2147487744 elements'):
        rs.check_int32_offsets(32, 1024, 2**19 + 1, 4)
    rs.check_int32_offsets(32, 1024, 699050, 3)  # GRU: 3 gates, 699050 * 3072 < 2**31
    with pytest.raises(ValueError, match='input table'):
        rs.check_int32_offsets(32, 1024, 699051, 3)
    with pytest.raises(ValueError, match='exchange slots'):
        rs.check_int32_offsets(2**21 + 1, 512, 2, 4)
    # vocab 2**20 at hidden 1024 passes a bound on num_tokens * hidden alone; the launcher refuses it
    meta = dict(device='meta')
    folded = FoldedRecurrentNet(
        'lstm',
        torch.empty(2**20, 4096, **meta),
        torch.empty(4096, 1024, **meta),
        None,
        torch.empty(2**20, 1024, **meta),
        None,
    )
    with pytest.raises(ValueError, match='input table'):
        fused_recurrent_sample(folded, torch.zeros(32, 1, dtype=torch.long, **meta), 4, 1.0)


def test_bad_weights_name_the_field(small):
    folded, prefix = small
    with pytest.raises(ValueError, match='input_table'):
        fused_recurrent_sample(dataclasses.replace(folded, input_table=folded.input_table[:, :-1]), prefix, 4, 1.0)
    with pytest.raises(TypeError, match='weight_out'):
        fused_recurrent_sample(dataclasses.replace(folded, weight_out=folded.weight_out.double()), prefix, 4, 1.0)
    gru = to_device(make_folded('gru', 37, 24, seed=1))
    with pytest.raises(ValueError, match='bias_hn'):
        fused_recurrent_sample(dataclasses.replace(gru, bias_hn=None), prefix, 4, 1.0)


# the real compiler: P > 1 persistent, large shapes and CUDA graphs (GPU only)


@cuda_only
@pytest.mark.parametrize('cell', ['lstm', 'gru'])
@pytest.mark.parametrize(
    'batch, num_tokens, hidden, precision',
    [
        (32, 256, 256, 'tf32x3'),
        (32, 256, 256, 'ieee'),
        (4096, 256, 64, 'tf32x3'),
        (3, 5000, 2048, 'tf32x3'),
        (2, 32768, 128, 'tf32x3'),
        (17, 1000, 1000, 'tf32x3'),
        (1, 37, 40, 'tf32x3'),
    ],
    ids=['example', 'example_ieee', 'batch4096', 'vocab5000_hidden2048', 'vocab32768', 'hidden1000', 'batch1'],
)
def test_persistent_kernel_matches_twin_on_gpu(cell, batch, num_tokens, hidden, precision):
    folded = make_folded(cell, num_tokens, hidden, dim=64, bias_out=True, seed=hidden)
    g = torch.Generator().manual_seed(9)
    prefix = torch.randint(0, num_tokens, (batch, 4), generator=g)
    length = 6
    noise = torch.rand((batch, length, num_tokens), generator=g)
    tokens, state = fused_recurrent_sample(
        to_device(folded),
        prefix.to(DEVICE),
        length,
        1.0,
        uniform_noise=noise.to(DEVICE),
        out=poisoned_out(batch, length),
        precision=precision,
        mode='persistent',
        check=True,
    )
    assert (tokens >= 0).all()
    assert_matches_twin(folded, prefix, length, 1.0, noise, tokens, state)
    # the phase-per-launch mode runs the same helpers with the same plan (at 4 warps, not 8)
    again, again_state = fused_recurrent_sample(
        to_device(folded),
        prefix.to(DEVICE),
        length,
        1.0,
        uniform_noise=noise.to(DEVICE),
        precision=precision,
        mode='phases',
    )
    assert torch.equal(tokens, again)
    for ours, theirs in zip(state, again_state):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@cuda_only
def test_cuda_graph_replay_draws_fresh_noise():
    folded = to_device(make_folded('lstm', 256, 256, dim=64, seed=2))
    prefix = torch.randint(0, 256, (32, 8), device=DEVICE)
    seed, offset = torch.tensor([42], device=DEVICE), torch.tensor([0], device=DEVICE)
    out = torch.empty((32, 64), dtype=torch.long, device=DEVICE)
    scratch = torch.empty((2, 2, 32, 256), device=DEVICE)
    run = lambda: fused_recurrent_sample(
        folded, prefix, 64, 1.0, seed=seed, offset=offset, out=out, state_scratch=scratch
    )

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # compile and warm up outside the capture
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
    eager, _ = fused_recurrent_sample(folded, prefix, 64, 1.0, seed=seed, offset=torch.tensor([1], device=DEVICE))
    assert torch.equal(eager, second), 'replay 2 must equal an eager call at offset 1'
    rs.check_kernel_errors(DEVICE)
