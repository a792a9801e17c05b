"""Launch tests of the persistent sampling kernel (kernels/recurrent_sample.py): barrier, plans, argument checks.

A grid barrier that never fills sets the error flag and the next call raises; a refused cooperative
launch falls back to phases with one warning; launch plans cover the shapes and fit the device, and
keep on chip the weight slices that fit the register budget; the AOT configurations cover the
launcher's choices; bad arguments and weights are named; the int32 guard bounds the tables. Helpers
and the interpreter setup are those of test_kernel_recurrent_sample.py.
"""

import os

import torch

# Triton picks the interpreter when a kernel is defined, so this must precede any triton import
# in the process (conftest.py is the right home for it; kept here so the module runs on its own)
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import dataclasses
import warnings

import pytest

pytest.importorskip('triton')

from test_kernel_recurrent_sample import (  # noqa: E402
    DEVICE,
    TILED_PLAN,
    make_folded,
    to_device,
)

from up_fast.kernels import aot  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.launch_plan import RESIDENT_REGISTERS, check_plan, next_power_of_2, plan_launch  # noqa: E402
from up_fast.kernels.recurrent_sample import fused_recurrent_sample  # noqa: E402
from up_fast.sampling import FoldedRecurrentNet  # noqa: E402

if DEVICE.type == 'cpu' and not rs.INTERPRETED:
    pytest.skip(
        'no GPU, and triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)',
        allow_module_level=True,
    )


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
        warnings.simplefilter('error', RuntimeWarning)
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


# (id, (batch, hidden, num_tokens), (resident_gates, resident_logits)) on 132 SMs
RESIDENT_RULE = [
    ('example_both_resident', (32, 256, 256), (True, True)),
    ('vocab32768_logits_streamed', (32, 256, 32768), (True, False)),
    ('hidden1024_neither_logits_only_beside_gates', (32, 1024, 256), (False, False)),
    ('batch4096_neither', (4096, 256, 256), (False, False)),
    ('batch64_tile_streams', (64, 256, 256), (False, False)),
]


@pytest.mark.parametrize(
    'shape, resident', [(shape, resident) for _, shape, resident in RESIDENT_RULE], ids=[i for i, _, _ in RESIDENT_RULE]
)
def test_the_rule_keeps_the_slices_that_fit_on_chip(shape, resident):
    plan = plan_launch(*shape, 132)
    check_plan(plan, *shape)
    assert (plan.resident_gates, plan.resident_logits) == resident
    if all(resident):
        assert 'resident' in plan.weights and 'streamed' not in plan.weights
    elif any(resident):
        assert 'gates resident' in plan.weights and 'logits streamed' in plan.weights
    else:
        assert 'streamed' in plan.weights and 'resident' not in plan.weights


def rule_plan(hidden, num_tokens, programs):
    """The rule's plan for 16 rows with `programs` programs a group."""
    plan = plan_launch(16, hidden, num_tokens, 1, programs=programs)
    check_plan(plan, 16, hidden, num_tokens)
    return plan


def resident_elements(plan, hidden):
    """fp32 elements a program holds on chip: the step's h, its W_hh^T and W_out^T slices (a tile each, K padded)."""
    padded, _ = plan.k_splits(hidden)
    return plan.block_b * padded, 4 * plan.block_u * padded, plan.block_v * padded


def test_the_rule_keeps_a_slice_at_the_budget_and_streams_one_over_it():
    """Shapes from RESIDENT_REGISTERS, 16 rows: gate tiles of 4 units (16 columns). Sizes are powers of two:
    past the budget the next hidden doubles everything, the next vocabulary tile (64 tokens for 32) puts
    the total at 1.5 times it."""
    budget = RESIDENT_REGISTERS * 32 * plan_launch(16, 64, 16, 1).num_warps  # fp32 elements a program may hold
    hidden = budget // 32  # h (16 rows) and the gates (16 columns) at the budget
    at = rule_plan(hidden, 16, hidden // 4)
    h, gates, _ = resident_elements(at, hidden)
    assert (at.block_u, at.unit_tiles) == (4, 1) and h + gates == budget
    assert at.resident_gates and not at.resident_logits

    over = rule_plan(hidden + 1, 16, hidden // 4 + 1)
    h, gates, _ = resident_elements(over, hidden + 1)
    assert (over.block_u, over.unit_tiles) == (4, 1) and h + gates == 2 * budget
    assert not over.resident_gates and not over.resident_logits

    hidden = budget // 64  # h, gates and 32 tokens at the budget
    programs = hidden // 4
    both = rule_plan(hidden, 32 * programs, programs)
    assert (both.block_v, both.vocab_tiles) == (32, 1) and sum(resident_elements(both, hidden)) == budget
    assert both.resident_gates and both.resident_logits

    logits_over = rule_plan(hidden, 32 * programs + 1, programs)
    assert (logits_over.block_v, logits_over.vocab_tiles) == (64, 1)
    assert sum(resident_elements(logits_over, hidden)) == budget * 3 // 2
    assert logits_over.resident_gates and not logits_over.resident_logits


@pytest.mark.parametrize(
    'hidden, num_warps, expected',
    [(256, 8, (256, 8)), (40, 8, (64, 4)), (10, 8, (16, 1)), (200, 4, (256, 4)), (16, 8, (16, 1))],
    ids=['hidden256_8warps', 'hidden40_chunks_of_16', 'hidden10_padded_to_16', 'hidden200_4warps', 'hidden16'],
)
def test_k_splits_pad_hidden_and_split_it_over_the_warps(hidden, num_warps, expected):
    plan = dataclasses.replace(plan_launch(32, hidden, 256, 132), num_warps=num_warps)
    assert plan.k_splits(hidden) == expected
    padded, splits = expected
    assert padded == next_power_of_2(max(16, hidden)) and padded // splits >= 16


# two gate tiles of 8 units a program and two vocabulary tiles in one slice: 19 rows, hidden 24, vocabulary 20
TWO_TILE_PLAN = dataclasses.replace(TILED_PLAN, block_u=8, unit_tiles=2, vocab_tiles=2, num_slices=1)


@pytest.mark.parametrize('name', ['resident_gates', 'resident_logits'])
def test_check_plan_refuses_a_resident_slice_of_several_tiles(name):
    check_plan(TWO_TILE_PLAN, 19, 24, 20)  # streamed, the plan fits
    one_tile = dataclasses.replace(TWO_TILE_PLAN, block_u=16, unit_tiles=1, block_v=32, vocab_tiles=1)
    check_plan(dataclasses.replace(one_tile, resident_gates=True, resident_logits=True), 19, 24, 20)
    with pytest.raises(ValueError, match=rf'{name} needs (unit|vocab)_tiles 1, got 2'):
        check_plan(dataclasses.replace(TWO_TILE_PLAN, **{name: True}), 19, 24, 20)


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
