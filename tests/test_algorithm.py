"""Algorithm 1 as intended: what one training step changes in the buffer, and the reference's defects fixed.

The paper author's step order (UniversalPretrainWrapper.paper) is tested in test_algorithm_paper.py.
"""

import random
import warnings

import pytest
import torch
from conftest import tiny_model
from torch import nn
from x_transformers import up_wrapper as reference

from up_fast import sampling
from up_fast import up_wrapper as fast
from up_fast.up_wrapper import SyntheticDataGenerator, UniversalPretrainWrapper


def record_step(monkeypatch, wrapper):
    """Run one forward() and return what it drew and generated, and the buffer before and after."""
    seen = {}

    def draw_step_rows(*args, **kwargs):
        seen['rows'] = rows = real_draw(*args, **kwargs)
        return rows

    def generate_unchecked(*args, **kwargs):
        seen['prefix'] = (args[1].clone(), args[2].clone())
        seen['generated'] = out = real_generate(*args, **kwargs)
        return out

    real_draw, real_generate = fast.draw_step_rows, wrapper.data_generator.generate_unchecked
    monkeypatch.setattr(fast, 'draw_step_rows', draw_step_rows)
    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', generate_unchecked)

    before = wrapper.synth_data_buffer.clone()
    seen['loss'] = wrapper()
    seen['before'], seen['after'] = before, wrapper.synth_data_buffer.clone()
    return seen


@pytest.mark.parametrize('keep_buffer_on_cpu', [False, True], ids=['buffer-registered', 'buffer-on-cpu'])
def test_one_step_changes_exactly_the_intended_rows(monkeypatch, model, keep_buffer_on_cpu):
    wrapper = UniversalPretrainWrapper(
        model,
        seq_len=24,
        batch_size=8,
        buffer_size=64,
        num_reset=6,
        seed_length=5,
        keep_buffer_on_cpu=keep_buffer_on_cpu,
    )
    seen = record_step(monkeypatch, wrapper)
    rows, before, after = seen['rows'], seen['before'], seen['after']

    conditions, resets = rows.condition_rows.tolist(), rows.reset_rows.tolist()
    assert len(set(conditions)) == 8 and len(set(resets)) == 6
    assert not set(conditions) & set(resets), 'a row is never both regenerated and reset'

    # the generator saw the seed crops and the condition rows as they were before the step
    seed, condition = seen['prefix']
    for b in range(8):
        offset = int(rows.seed_offsets[b])
        assert 0 <= offset <= 24 - 5
        assert torch.equal(seed[b].long(), before[rows.seed_rows[b], offset : offset + 5].long())
    assert torch.equal(condition.long(), before[rows.condition_rows].long())

    # condition rows now hold the generated rows
    assert torch.equal(after[rows.condition_rows].long(), seen['generated'])

    # reset rows: half uniform noise, half constant rows, each constant row with a token of its own
    reset_rows = after[rows.reset_rows].long()
    is_constant = (reset_rows == reset_rows[:, :1]).all(dim=-1)
    assert is_constant.sum() == 3
    assert reset_rows[~is_constant].unique().numel() > 24, 'uniform rows look uniform'

    # nothing else changed
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[rows.condition_rows] = False
    untouched[rows.reset_rows] = False
    assert torch.equal(after[untouched], before[untouched])
    assert int(wrapper.step) == 1 and wrapper.num_steps == 1


def test_the_buffer_really_changes(model):
    wrapper = UniversalPretrainWrapper(model, seq_len=16)
    before = wrapper.synth_data_buffer.clone()
    wrapper()
    changed = (wrapper.synth_data_buffer != before).any(dim=-1).sum()
    assert 32 <= changed <= 32 + 20


def test_the_reference_buffer_never_changes_while_it_has_the_bug():
    """README's defect 1, shown on the installed x-transformers only while it still has it."""
    torch.manual_seed(0)
    ref = reference.UniversalPretrainWrapper(tiny_model(), seq_len=16)
    before = ref.synth_data_buffer.clone()
    ref()
    if not torch.equal(ref.synth_data_buffer, before):
        pytest.skip("the installed x-transformers writes its buffer back now: README's defect 1 no longer holds for it")
    assert int(ref.step) == 1, 'the reference did run a step, and its buffer stayed as it was (defect 1)'


class PlusOne(nn.Module):
    """A data generator in up_fast's form whose every output row differs from its condition row at
    every position, so that a test can tell each written row from what was there before."""

    def __init__(self, num_tokens=256, max_seq_len=16):
        super().__init__()
        self.num_tokens, self.max_seq_len = num_tokens, max_seq_len
        self.calls, self.resets = [], []

    def reset_(self, *, generator=None):
        self.resets.append(generator)

    def generate(self, length, seed=None, condition=None, temperature=0.5):
        return self.generate_unchecked(length, seed, condition, temperature)

    def generate_unchecked(self, length, seed, condition, temperature=0.5, *, generator=None, uniform_noise=None):
        self.calls.append(
            dict(args=(length, seed.clone(), condition.clone()), temperature=temperature, generator=generator)
        )
        return (condition.long() + 1) % self.num_tokens


@pytest.mark.parametrize('seed', range(3))
def test_the_training_batch_is_drawn_after_the_write_back(monkeypatch, model, seed):
    # every row is a condition row and its generated row differs at every position: a batch drawn
    # before the write-back would differ from the rows it names everywhere, whatever the seed
    torch.manual_seed(seed)
    wrapper = UniversalPretrainWrapper(
        model, data_generator=PlusOne(), seq_len=16, batch_size=4, buffer_size=12, generation_batch_size=12, num_reset=0
    )
    seen = record_step(monkeypatch, wrapper)
    rows = seen['rows']
    assert sorted(rows.condition_rows.tolist()) == list(range(12))
    data = wrapper.synth_data_buffer[rows.batch_rows].long()
    assert (seen['before'][rows.batch_rows].long() != data).all()

    batches = []
    real = wrapper.data_step_
    monkeypatch.setattr(wrapper, 'data_step_', lambda: batches.append(real()) or batches[-1])
    wrapper()
    rows = wrapper.last_step_rows
    assert torch.equal(batches[0], wrapper.synth_data_buffer[rows.batch_rows].long())


def test_reset_rows_beyond_the_room_wrap_onto_condition_rows(monkeypatch, model):
    # 12 rows, 8 conditions: 4 rows of room, so 2 of the 6 reset rows are condition rows too
    wrapper = UniversalPretrainWrapper(
        model, data_generator=PlusOne(), seq_len=16, batch_size=4, buffer_size=12, generation_batch_size=8, num_reset=6
    )
    noise = []
    real_noise = wrapper.random_sequences_fn
    monkeypatch.setattr(wrapper, 'random_sequences_fn', lambda *a, **k: noise.append(real_noise(*a, **k)) or noise[-1])
    seen = record_step(monkeypatch, wrapper)
    rows, after = seen['rows'], seen['after']

    conditions, resets = rows.condition_rows.tolist(), rows.reset_rows.tolist()
    assert len(set(resets)) == 6 and len(set(conditions)) == 8
    assert set(resets[:4]) == set(range(12)) - set(conditions), 'first every row besides the conditions'
    assert resets[4:] == conditions[:2], 'then round the permutation, onto its first condition rows'
    assert torch.equal(after[rows.condition_rows].long(), seen['generated']), 'the generated rows win'
    assert torch.equal(after[rows.reset_rows[:4]], noise[0][:4])


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
def test_hidden_size_different_from_dim_works(model, use_gru):
    generator = SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16, hidden_size=48, use_gru=use_gru)
    wrapper = UniversalPretrainWrapper(
        model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=16, num_reset=2
    )
    wrapper().backward()
    assert wrapper.data_generator.to_logits.in_features == 48


def run_steps(steps, seed, **kwargs):
    torch.manual_seed(seed)
    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, **kwargs)
    losses = [wrapper().item() for _ in range(steps)]
    return wrapper, losses


def test_torch_manual_seed_makes_a_run_repeatable():
    random.seed(1)
    a, losses_a = run_steps(3, seed=0, reset_turing_machine_every=2)
    random.seed(2)  # Python's random must not matter (defect 4)
    b, losses_b = run_steps(3, seed=0, reset_turing_machine_every=2)
    assert losses_a == losses_b
    assert torch.equal(a.synth_data_buffer, b.synth_data_buffer)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

    c, losses_c = run_steps(3, seed=1, reset_turing_machine_every=2)
    assert not torch.equal(a.synth_data_buffer, c.synth_data_buffer)


def test_an_explicit_generator_makes_a_run_repeatable():
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(123)
        model = tiny_model()
        torch.manual_seed(global_seed)  # the global RNG differs, the explicit generator decides
        wrapper = UniversalPretrainWrapper(
            model,
            seq_len=16,
            batch_size=4,
            buffer_size=24,
            num_reset=4,
            reset_turing_machine_every=1,
            generator=torch.Generator().manual_seed(7),
        )
        wrapper.data_generator.load_state_dict(runs[0][1] if runs else wrapper.data_generator.state_dict())
        first_weights = {k: v.clone() for k, v in wrapper.data_generator.state_dict().items()}
        wrapper.data_step_()
        runs.append((wrapper.synth_data_buffer.clone(), first_weights, wrapper.data_generator.state_dict()))

    (buffer_a, _, weights_a), (buffer_b, _, weights_b) = runs
    assert torch.equal(buffer_a, buffer_b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), 'the weight re-draw follows the generator'


def test_turing_machine_is_redrawn_every_n_steps(model):
    wrapper = UniversalPretrainWrapper(
        model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, reset_turing_machine_every=2
    )
    weight = lambda: wrapper.data_generator.net.weight_hh_l0.clone()
    w0 = weight()
    wrapper.data_step_()
    assert torch.equal(weight(), w0)
    wrapper.data_step_()
    w2 = weight()
    assert not torch.equal(w2, w0)
    wrapper.data_step_()
    assert torch.equal(weight(), w2)


def test_init_scales_to_logits_by_a_draw_from_torch():
    scales = set()
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        generator = SyntheticDataGenerator(dim=16, num_tokens=30)
        scales.add(round(float(generator.to_logits.weight.detach().abs().max()), 6))
    assert len(scales) == 2


def test_data_step_never_reads_back_from_the_device(monkeypatch, model):
    wrapper = UniversalPretrainWrapper(
        model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, reset_turing_machine_every=1
    )

    def forbidden(*args, **kwargs):
        raise AssertionError('a training step read a tensor value back to the host')

    author = UniversalPretrainWrapper(
        model,
        seq_len=16,
        batch_size=4,
        buffer_size=24,
        num_reset=4,
        reset_turing_machine_every=1,
        reset_first=True,
        distinct_seed_rows=True,
        shared_seed_offset=True,
        generation_batch_size=8,
    )

    # the sampler's formulation for devices: on the CPU it counts its candidates, which reads nothing from a device
    monkeypatch.setattr(sampling, 'LAZY_DEVICE_TYPES', frozenset())

    for name in ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__'):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for w in (wrapper, author):
        w.data_step_()
        w.data_step_()


class TwoLayerLSTM(nn.LSTM):
    def __init__(self, dim, hidden_size):
        super().__init__(dim, hidden_size, num_layers=2, batch_first=True)


def test_custom_network_klass_takes_the_generic_path(model):
    generator = SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16, network_klass=TwoLayerLSTM)
    assert not generator.uses_folded_path
    wrapper = UniversalPretrainWrapper(
        model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4
    )
    before = wrapper.synth_data_buffer.clone()
    wrapper().backward()
    assert (wrapper.synth_data_buffer != before).any(dim=-1).sum() >= 4


def test_reference_generator_instance_works_as_data_generator(model):
    generator = reference.SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16)
    wrapper = UniversalPretrainWrapper(
        model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4
    )
    wrapper().backward()


@pytest.mark.parametrize('keep_buffer_on_cpu', (False, True), ids=['buffer-registered', 'buffer-on-cpu'])
def test_reference_test_up_scenario(keep_buffer_on_cpu):
    # x-transformers' own test_up, with up_fast imported instead
    from x_transformers import Decoder, TransformerWrapper

    model = TransformerWrapper(
        num_tokens=256,
        max_seq_len=1024,
        attn_pool=True,
        attn_layers=Decoder(dim=512, depth=12, heads=8),
    )
    up_wrapper = UniversalPretrainWrapper(model, seq_len=16, keep_buffer_on_cpu=keep_buffer_on_cpu)
    loss = up_wrapper()
    loss.backward()


# found in review


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
def test_a_step_under_autocast_works_and_folds_in_fp32(model, use_gru):
    generator = SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16, use_gru=use_gru)
    wrapper = UniversalPretrainWrapper(
        model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4
    )
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = wrapper()
    loss.backward()
    folded = wrapper.data_generator.folded()
    assert folded.input_table.dtype == folded.weight_hh.dtype == folded.weight_out.dtype == torch.float32


def test_a_generator_returning_the_wrong_shape_fails_before_any_write(monkeypatch, model):
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    real = wrapper.data_generator.generate_unchecked
    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', lambda *a, **k: real(*a, **k)[:, :15])
    with pytest.raises(ValueError, match=r'returned shape \(4, 15\).*\(4, 16\)'):
        wrapper()
    assert all(torch.equal(before[k], v) for k, v in wrapper.state_dict().items()) and wrapper.num_steps == 0


def test_the_write_back_refuses_rows_marked_invalid(monkeypatch, model):
    """A sampling kernel launch that gave up marks its rows with negative ids: those rows keep what
    they held (refused on the device, no host sync); the other generated rows are written."""
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=0)
    real = wrapper.data_generator.generate_unchecked

    def generate_with_an_aborted_row(*args, **kwargs):
        out = real(*args, **kwargs).clone()
        out[1, -3:] = -1
        return out

    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', generate_with_an_aborted_row)
    seen = record_step(monkeypatch, wrapper)
    conditions = seen['rows'].condition_rows.tolist()
    assert torch.equal(seen['after'][conditions[1]], seen['before'][conditions[1]])
    for b in (0, 2, 3):
        assert torch.equal(seen['after'][conditions[b]].long(), seen['generated'][b])


class NoReset(nn.Module):
    max_seq_len = 16

    def generate(self, length, seed=None, condition=None):
        return condition


def test_redraws_need_a_generator_with_reset(model):
    with pytest.raises(ValueError, match='reset_turing_machine_every=2 .* NoReset lacks'):
        UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16, reset_turing_machine_every=2)
    UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16)


def test_rng_seed_with_a_foreign_generator_warns_and_says_what_to_do(model):
    with pytest.warns(
        UserWarning, match=r'draws from torch.s global generators.*torch.manual_seed\(seed \+ rank\).*get_rng_state'
    ):
        UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16, rng_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        UniversalPretrainWrapper(model, data_generator=PlusOne(), seq_len=16, rng_seed=0)  # up_fast's form: no warning


def test_rng_seed_with_the_buffer_on_the_cpu_says_resume_is_not_exact(model):
    with pytest.warns(
        UserWarning,
        match='keep_buffer_on_cpu=True keeps the buffer out of the state_dict.*save wrapper.synth_data_buffer',
    ):
        UniversalPretrainWrapper(model, seq_len=16, keep_buffer_on_cpu=True, rng_seed=0)


def test_up_fast_generators_are_recognised_by_their_form():
    from up_fast.rng import follows_generator

    assert follows_generator(SyntheticDataGenerator(dim=8, num_tokens=20, use_gru=True))
    assert follows_generator(PlusOne())
    assert not follows_generator(reference.SyntheticDataGenerator(dim=8, num_tokens=20))
    assert not follows_generator(NoReset())


def build_on_rank(monkeypatch, rank, global_seed=0, **kwargs):
    monkeypatch.setattr(fast, 'distributed_rank', lambda: rank)
    torch.manual_seed(0)
    model = tiny_model()
    torch.manual_seed(global_seed)
    return UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, **kwargs)


def test_ranks_draw_differently_without_rng_seed_and_repeat_from_the_manual_seed(monkeypatch):
    def buffer_after_a_step(rank, global_seed=0):
        wrapper = build_on_rank(monkeypatch, rank, global_seed)
        wrapper.data_step_()
        return wrapper.synth_data_buffer.clone(), wrapper.data_generator.state_dict()

    (rank0, weights0), (rank0_again, weights0_again) = buffer_after_a_step(0), buffer_after_a_step(0)
    (rank1, weights1), (other_seed, _) = buffer_after_a_step(1), buffer_after_a_step(0, global_seed=1)
    assert torch.equal(rank0, rank0_again) and all(torch.equal(weights0[k], weights0_again[k]) for k in weights0)
    assert not torch.equal(rank0, rank1), 'each rank its own data'
    assert not torch.equal(weights0['net.weight_hh_l0'], weights1['net.weight_hh_l0']), 'and its own Turing machine'
    assert not torch.equal(rank0, other_seed)


@pytest.mark.parametrize(
    'make_generator',
    [
        lambda: SyntheticDataGenerator(dim=16, num_tokens=256, max_seq_len=16, use_gru=True),
        lambda: SyntheticDataGenerator(dim=16, num_tokens=256, max_seq_len=16, hidden_size=24),
    ],
    ids=['gru', 'hidden-24'],
)
def test_under_rng_seed_any_up_fast_generator_follows_the_rank_stream(monkeypatch, make_generator):
    def weights(rank, global_seed):
        torch.manual_seed(global_seed)
        wrapper = build_on_rank(monkeypatch, rank, global_seed, data_generator=make_generator(), rng_seed=3)
        return wrapper.data_generator.net.weight_hh_l0.clone()

    assert torch.equal(weights(0, global_seed=0), weights(0, global_seed=1)), 'rng_seed decides, not the global seed'
    assert not torch.equal(weights(0, 0), weights(1, 0)), 'a machine of its own on each rank'


def test_a_generator_in_up_fast_form_draws_from_the_wrapper_stream(monkeypatch):
    generator = PlusOne()
    wrapper = build_on_rank(monkeypatch, 0, data_generator=generator, rng_seed=3, reset_turing_machine_every=1)
    assert len(generator.resets) == 1 and isinstance(generator.resets[0], torch.Generator), 'drawn when built'
    wrapper.data_step_()
    call = generator.calls[0]
    assert isinstance(call['generator'], torch.Generator) and call['temperature'] == 0.5
    assert len(generator.resets) == 2 and isinstance(generator.resets[1], torch.Generator), 're-drawn from the stream'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA: torch.cuda.set_sync_debug_mode')
@pytest.mark.parametrize(
    'options',
    [
        {},
        dict(
            reset_first=True,
            distinct_seed_rows=True,
            shared_seed_offset=True,
            generation_batch_size=8,
            constant_init=True,
        ),
    ],
    ids=['reference', 'author'],
)
@pytest.mark.parametrize('rng_seed', [None, 5], ids=['default-stream', 'rng_seed'])
def test_data_step_never_syncs_on_cuda(options, rng_seed):
    torch.manual_seed(0)
    wrapper = UniversalPretrainWrapper(
        tiny_model(),
        seq_len=16,
        batch_size=4,
        buffer_size=24,
        num_reset=4,
        reset_turing_machine_every=1,
        rng_seed=rng_seed,
        **options,
    ).cuda()
    wrapper.data_step_()  # the first step may set things up (lazy CUDA init, caches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            batch = wrapper.data_step_()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.device.type == 'cuda' and wrapper.num_steps == 4 and int(wrapper.step) == 4


def test_sampling_draws_where_the_generator_weights_live(monkeypatch, model):
    # the transformer may live on another device than the data generator (a GPU model with a CPU
    # generator): the sampling noise is drawn where the generator's weights are. Here the model's
    # device is faked as 'meta', where torch has no generator at all
    class ModelElsewhere(UniversalPretrainWrapper):
        device = property(lambda self: torch.device('meta'))

        def to_device(self, tokens):
            return tokens

    wrapper = ModelElsewhere(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, rng_seed=3)
    seen = []
    real = wrapper.data_generator.generate_unchecked

    def generate_unchecked(*args, generator=None, **kwargs):
        seen.append(generator.device)
        return real(*args, generator=generator, **kwargs)

    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', generate_unchecked)
    wrapper.data_step_()
    assert seen == [torch.device('cpu')]


def test_a_failed_step_leaves_last_step_rows_and_advances_only_an_explicit_generator(monkeypatch, model):
    stream = torch.Generator().manual_seed(11)
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, generator=stream)
    wrapper.data_step_()
    rows = wrapper.last_step_rows
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    stream_before = stream.get_state()

    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        wrapper.data_step_()

    assert wrapper.last_step_rows is rows, 'last_step_rows still names the rows of the last step that happened'
    assert all(torch.equal(before[k], v) for k, v in wrapper.state_dict().items()) and wrapper.num_steps == 1
    assert not torch.equal(stream.get_state(), stream_before), (
        "the explicit generator has drawn the failed step's rows (as documented)"
    )
    assert 'explicit' in UniversalPretrainWrapper.data_step_.__doc__


def test_reset_rows_that_survive_a_wrap_are_an_even_mix_of_noise_kinds(model):
    # 24 rows, 4 conditions, 24 resets: the last 4 reset rows are condition rows, overwritten by the
    # generated rows, so 20 reset rows survive each step. Half the noise is uniform, half constant:
    # the survivors must be half and half too, not the uniform half first
    wrapper = UniversalPretrainWrapper(
        model, data_generator=PlusOne(), seq_len=16, batch_size=4, buffer_size=24, num_reset=24, rng_seed=0
    )
    constant = survivors = 0
    for _ in range(200):
        wrapper.data_step_()
        rows = wrapper.last_step_rows
        kept = rows.reset_rows[:20]
        assert not set(kept.tolist()) & set(rows.condition_rows.tolist())
        written = wrapper.synth_data_buffer[kept]
        constant += int((written == written[:, :1]).all(dim=1).sum())
        survivors += kept.numel()
    # hypergeometric, 20 of 24: the fraction's standard deviation over 200 steps is about 0.0033
    assert abs(constant / survivors - 0.5) < 0.02, f'{constant} constant rows among {survivors} surviving reset rows'
