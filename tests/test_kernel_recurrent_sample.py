"""Parity tests of the persistent sampling kernel (kernels/recurrent_sample.py), and the helpers its other tests share.

References: the plain oracle `naive_recurrent_sample` (up_fast/naive.py) and the folded PyTorch
path `FoldedRecurrentNet.sample`, both on the CPU in fp32. Without a GPU the kernel runs under
Triton's interpreter, which runs programs one after another: it checks the persistent kernel with
one program per group ('single': the barrier passes at once) and the multi-program arithmetic in
phase-per-launch mode ('phases': P > 1 programs split the weights exactly as on the GPU). Plans of
one tile a program run the persistent kernel with its weight slices resident (loaded once, K split over
the warps) and streamed on the same shapes; test_kernel_protocol.py runs both with P > 1. The tests
marked `cuda` add the multi-program persistent kernel, large shapes and CUDA-graph replay.
The sampler's own tests are in test_kernel_sampler.py, the launch and argument tests in
test_kernel_launch.py; both import their helpers from here.
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

from up_fast.helpers import default  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.first_use import logits_after  # noqa: E402
from up_fast.kernels.launch_plan import LaunchPlan, check_plan, next_power_of_2, plan_launch  # noqa: E402
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
    return folded.to(device, dtype)


# the folded path's logits (num_tokens,) after feeding a 1-D sequence from a zero state
twin_logits_after = logits_after


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


def rounded_to_bf16(net):
    """`net` with every parameter rounded to bf16 in place (kept in fp32), folded again."""
    with torch.no_grad():
        for module in (net.embed, net.net, net.to_logits):
            for p in module.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    return dataclasses.replace(net, folded=FoldedRecurrentNet.fold(net.embed, net.net, net.to_logits))


def bf16_rounded_fold(net):
    """The fold of `net` as the kernel sees it stored in bf16 (the fold rounds again), widened to fp32:
    the reference for a kernel on bf16 weights."""
    return to_device(to_device(net.folded, 'cpu', torch.bfloat16), 'cpu', torch.float32)


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


# resident and streamed weight slices of the persistent kernel

# how a program of the persistent kernel gets its slices: (resident_gates, resident_logits)
# (resident_gates, resident_logits); the rule never holds the logits alone, the kernel can
WEIGHTS = {
    'resident': (True, True),
    'gates_resident': (True, False),
    'logits_resident': (False, True),
    'streamed': (False, False),
}


def one_tile_plan(batch, hidden, num_tokens, weights, *, block_b=None):
    """One program a group owning every hidden unit in one gate tile and the whole vocabulary in one
    tile, its slices kept on chip or streamed as `weights` says: both paths under the plain interpreter
    (P = 1: the barrier passes at once), whatever the rule would choose for the shape."""
    plan = plan_launch(batch, hidden, num_tokens, 1, programs=1)
    block_b = default(block_b, plan.block_b)
    resident_gates, resident_logits = WEIGHTS[weights]
    plan = dataclasses.replace(
        plan,
        block_b=block_b,
        groups=-(-batch // block_b),
        block_u=max(4, next_power_of_2(hidden)),
        unit_tiles=1,
        block_v=max(16, next_power_of_2(num_tokens)),
        vocab_tiles=1,
        num_slices=1,
        resident_gates=resident_gates,
        resident_logits=resident_logits,
    )
    check_plan(plan, batch, hidden, num_tokens)
    return plan


# (id, kwargs): cell, batch, prefix_len, length, num_tokens, hidden, temperature, bias_out, block_b, and the
# resident slices' K split (plan.k_splits) the case is there for: hidden padded to a power of two, in chunks
# of PADDED_K // K_SPLITS; every hidden here leaves the last chunk ragged
RESIDENT_CASES = [
    ('lstm_sample_hidden40_4splits', dict(cell='lstm', hidden=40, num_tokens=37, temperature=1.0, k_splits=(64, 4))),
    (
        'gru_greedy_bias_out_hidden40_4splits',
        dict(cell='gru', hidden=40, num_tokens=37, temperature=0.0, bias_out=True, k_splits=(64, 4)),
    ),
    ('gru_sample_hidden10_1split', dict(cell='gru', hidden=10, num_tokens=20, temperature=1.0, k_splits=(16, 1))),
    (
        'lstm_greedy_bias_out_hidden10_1split',
        dict(cell='lstm', hidden=10, num_tokens=20, temperature=0.0, bias_out=True, k_splits=(16, 1)),
    ),
    (
        'lstm_sample_bias_out_hidden200_8splits',
        dict(cell='lstm', hidden=200, num_tokens=37, temperature=1.0, bias_out=True, batch=3, k_splits=(256, 8)),
    ),
    (
        'gru_greedy_hidden200_8splits',
        dict(cell='gru', hidden=200, num_tokens=37, temperature=0.0, batch=3, k_splits=(256, 8)),
    ),
    (
        'gru_sample_prefix1_length1',
        dict(cell='gru', hidden=24, num_tokens=37, temperature=1.0, prefix_len=1, length=1, k_splits=(32, 2)),
    ),
    (
        'lstm_sample_two_groups',
        dict(cell='lstm', hidden=24, num_tokens=20, temperature=1.0, batch=20, block_b=16, k_splits=(32, 2)),
    ),
]


def run_one_tile_plan(case, weights, *, seed=0, dtype=None, net=None):
    """The persistent kernel on `case` under one_tile_plan: (net, prefix, noise, tokens, state)."""
    batch, prefix_len, length = case.get('batch', 5), case.get('prefix_len', 3), case.get('length', 4)
    hidden, num_tokens = case['hidden'], case['num_tokens']
    if net is None:
        net = make_net(case['cell'], num_tokens, hidden, bias_out=case.get('bias_out', False), seed=hidden + seed)
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, num_tokens, (batch, prefix_len), generator=g)
    noise = torch.rand((batch, length, num_tokens), generator=g)
    plan = one_tile_plan(batch, hidden, num_tokens, weights, block_b=case.get('block_b'))
    tokens, state = fused_recurrent_sample(
        to_device(net.folded, dtype=dtype),
        prefix.to(DEVICE),
        length,
        case['temperature'],
        uniform_noise=noise.to(DEVICE),
        out=poisoned_out(batch, length),
        mode='persistent',
        plan=plan,
        check=True,
    )
    return net, prefix, noise, tokens, state


@pytest.mark.parametrize('weights', list(WEIGHTS))
@pytest.mark.parametrize('case', [c for _, c in RESIDENT_CASES], ids=[i for i, _ in RESIDENT_CASES])
def test_resident_and_streamed_slices_match_oracle(case, weights):
    plan = one_tile_plan(case.get('batch', 5), case['hidden'], case['num_tokens'], weights, block_b=case.get('block_b'))
    constexprs = rs.persistent_constexprs(plan, case['hidden'])
    assert (constexprs['PADDED_K'], constexprs['K_SPLITS']) == case['k_splits'], 'the case no longer tests its split'
    assert (constexprs['RESIDENT_GATES'], constexprs['RESIDENT_LOGITS']) == WEIGHTS[weights]
    net, prefix, noise, tokens, state = run_one_tile_plan(case, weights)
    assert_matches_oracle(net, prefix, case.get('length', 4), case['temperature'], noise, tokens, state)
    assert_matches_twin(net.folded, prefix, case.get('length', 4), case['temperature'], noise, tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_resident_and_streamed_slices_draw_the_same_tokens(cell):
    """The same launch on the kernel's own noise (seed and offset), slices resident or streamed: the
    same tokens, the same state up to the order of the K sums."""
    net = make_net(cell, 37, 40, bias_out=True, seed=21)
    prefix = torch.randint(0, 37, (6, 3), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    results = {}
    for weights in WEIGHTS:
        results[weights] = fused_recurrent_sample(
            to_device(net.folded),
            prefix,
            6,
            1.0,
            seed=torch.tensor([123], device=DEVICE),
            offset=torch.tensor([0], device=DEVICE),
            mode='persistent',
            plan=one_tile_plan(6, 40, 37, weights),
            check=True,
        )
    streamed_tokens, streamed_state = results.pop('streamed')
    for weights, (tokens, state) in results.items():
        assert torch.equal(tokens, streamed_tokens), f'{weights} drew other tokens than streamed'
        for ours, theirs in zip(state, streamed_state):
            torch.testing.assert_close(ours, theirs, rtol=STATE_TOL, atol=STATE_TOL)


@pytest.mark.parametrize('layout', ['resident', 'streamed', 'phases_tiled'])
def test_greedy_picks_the_first_nan_logit_as_torch_argmax(layout):
    """NaN rows 36 and 20 of W_out make those logits NaN in every row: greedy picks 20, as the oracle's
    torch.argmax does, across tiles (20 is in slice 0's second tile) and slices (36 in slice 1) of the
    tiled plan. (Sampling leaves NaN logits out of the band; they have no meaning there.)"""
    net = make_net('lstm', 41, 24, seed=4)
    with torch.no_grad():
        net.to_logits.weight[36] = float('nan')
        net.to_logits.weight[20] = float('nan')
    net = dataclasses.replace(net, folded=FoldedRecurrentNet.fold(net.embed, net.net, net.to_logits))
    prefix = torch.randint(0, 41, (19, 2), generator=torch.Generator().manual_seed(5))
    noise = torch.rand((19, 4, 41), generator=torch.Generator().manual_seed(6))
    if layout == 'phases_tiled':
        run = dict(mode='phases', plan=TILED_PLAN)
    else:
        run = dict(mode='persistent', plan=one_tile_plan(19, 24, 41, layout))
    tokens, state = fused_recurrent_sample(
        to_device(net.folded), prefix.to(DEVICE), 4, 0.0, uniform_noise=noise.to(DEVICE), check=True, **run
    )
    assert (tokens == 20).all()
    assert_matches_oracle(net, prefix, 4, 0.0, noise, tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bf16_weights_on_resident_slices_match_the_oracle_on_the_rounded_weights(cell):
    """bf16 slices widened to fp32 once, when loaded into registers; the reference as for the streamed
    weights (test_bf16_weights_match_the_oracle_on_the_rounded_weights)."""
    net = rounded_to_bf16(make_net(cell, 37, 40, bias_out=True, seed=6))
    case = dict(cell=cell, hidden=40, num_tokens=37, temperature=1.0, batch=4, length=5)
    _, prefix, noise, tokens, state = run_one_tile_plan(case, 'resident', seed=2, dtype=torch.bfloat16, net=net)
    assert_matches_twin(bf16_rounded_fold(net), prefix, 5, 1.0, noise, tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bf16_weights_match_the_oracle_on_the_rounded_weights(cell):
    """bf16 is storage: widened to fp32 at each use. The reference is the oracle on the same
    bf16-rounded weights, to the fp32 tolerance."""
    net = rounded_to_bf16(make_net(cell, 37, 40, bias_out=True, seed=5))
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 37, (4, 3), generator=g)
    noise = torch.rand((4, 5, 37), generator=g)
    tokens, state = fused_recurrent_sample(
        to_device(net.folded, dtype=torch.bfloat16),
        prefix.to(DEVICE),
        5,
        1.0,
        uniform_noise=noise.to(DEVICE),
        mode='phases',
        programs=2,
    )
    assert_matches_twin(bf16_rounded_fold(net), prefix, 5, 1.0, noise, tokens, state)


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
