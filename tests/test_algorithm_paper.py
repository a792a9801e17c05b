"""The paper author's step order: UniversalPretrainWrapper.paper and the keyword options it sets.

Resets first, distinct condition and seed rows, one shared seed offset, the author's sizes and the
PaperDataGenerator; the recording helpers and generators are those of test_algorithm.py.
"""

import pytest
import torch
from conftest import tiny_model
from test_algorithm import PlusOne, record_step

from up_fast.up_wrapper import UniversalPretrainWrapper


def record_paper_step(monkeypatch, wrapper):
    noise = []
    real_noise = wrapper.random_sequences_fn
    monkeypatch.setattr(wrapper, 'random_sequences_fn', lambda *a, **k: noise.append(real_noise(*a, **k)) or noise[-1])
    seen = record_step(monkeypatch, wrapper)
    seen['noise'] = noise[0] if noise else None
    return seen


def test_one_step_of_the_author_algorithm_changes_exactly_the_intended_rows(monkeypatch, model):
    # batch 4, generator batch 8, buffer 16, 8 resets: conditions and seeds read reset rows in most steps
    wrapper = UniversalPretrainWrapper(
        model,
        data_generator=PlusOne(),
        seq_len=16,
        batch_size=4,
        buffer_size=16,
        num_reset=8,
        seed_length=5,
        generation_batch_size=8,
        constant_init=True,
        reset_first=True,
        distinct_seed_rows=True,
        shared_seed_offset=True,
    )
    initial = wrapper.synth_data_buffer.long()
    assert (initial == initial[:, :1]).all(), 'the buffer starts as constant rows'
    assert initial[:, 0].unique().numel() > 1, 'each with a token of its own'

    read_a_reset_row = False
    for step in range(1, 4):
        seen = record_paper_step(monkeypatch, wrapper)
        rows, before, after, noise = seen['rows'], seen['before'].long(), seen['after'].long(), seen['noise'].long()
        assert rows.reset_first
        resets, conditions, seeds = rows.reset_rows.tolist(), rows.condition_rows.tolist(), rows.seed_rows.tolist()
        assert len(set(resets)) == 8 and len(set(conditions)) == 8 and len(set(seeds)) == 8, 'distinct rows each'
        assert len(set(rows.batch_rows.tolist())) == 4

        # noise: 4 uniform rows and 4 constant rows in a random order, written first
        is_constant = (noise == noise[:, :1]).all(dim=-1)
        assert int(is_constant.sum()) == 4
        after_reset = before.clone()
        after_reset[rows.reset_rows] = noise

        # the generator read the conditions and the seeds as they are after the reset, seeds at one offset
        seed, condition = seen['prefix']
        assert torch.equal(condition.long(), after_reset[rows.condition_rows])
        offset = int(rows.seed_offsets[0])
        assert (rows.seed_offsets == offset).all() and 0 <= offset <= 16 - 5
        assert torch.equal(seed.long(), after_reset[rows.seed_rows, offset : offset + 5])
        read_a_reset_row |= bool(set(resets) & (set(conditions) | set(seeds)))

        # write-back over the condition rows, reset rows elsewhere, nothing else changed
        expected = after_reset.clone()
        expected[rows.condition_rows] = seen['generated']
        assert torch.equal(after, expected)
        assert wrapper.num_steps == step and int(wrapper.step) == step

    assert read_a_reset_row, 'in three steps some condition or seed row was a row just reset (1 - 1/12870 per step)'
    generator = wrapper.data_generator
    assert len(generator.calls) == 3 and all(len(call['args']) == 3 for call in generator.calls)
    assert all(call['temperature'] == 0.5 for call in generator.calls), (
        'the generator decodes at its own default temperature'
    )


def test_the_reference_step_reads_rows_before_any_write(monkeypatch, model):
    wrapper = UniversalPretrainWrapper(
        model, data_generator=PlusOne(), seq_len=16, batch_size=4, buffer_size=16, num_reset=8, generation_batch_size=8
    )
    seen = record_paper_step(monkeypatch, wrapper)
    rows, before = seen['rows'], seen['before']
    assert not rows.reset_first and not set(rows.reset_rows.tolist()) & set(rows.condition_rows.tolist())
    assert torch.equal(seen['prefix'][1], before[rows.condition_rows])
    for b in range(8):
        offset = int(rows.seed_offsets[b])
        assert torch.equal(seen['prefix'][0][b], before[rows.seed_rows[b], offset : offset + 5 + 3])
    assert seen['generated'].shape == (8, 16) and seen['noise'].shape == (8, 16)


def test_a_generator_batch_of_the_wrong_size_fails_before_any_write(model):
    class Half(PlusOne):
        def generate_unchecked(self, length, seed, condition, temperature=0.5, *, generator=None, uniform_noise=None):
            return super().generate_unchecked(length, seed, condition)[:4]

    wrapper = UniversalPretrainWrapper(
        model, data_generator=Half(), seq_len=16, batch_size=4, buffer_size=24, generation_batch_size=8
    )
    before = wrapper.synth_data_buffer.clone()
    with pytest.raises(ValueError, match=r'returned shape \(4, 16\).*generation_batch_size, seq_len\) = \(8, 16\)'):
        wrapper()
    assert torch.equal(wrapper.synth_data_buffer, before) and wrapper.num_steps == 0


def test_a_failed_step_of_the_author_algorithm_changes_nothing(monkeypatch, model):
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=16, num_reset=8, reset_first=True)
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        wrapper()
    assert all(torch.equal(before[k], v) for k, v in wrapper.state_dict().items()) and wrapper.num_steps == 0


def test_paper_sets_the_author_values(model):
    generator = PlusOne(max_seq_len=32)
    wrapper = UniversalPretrainWrapper.paper(model, batch_size=3, seq_len=32, data_generator=generator)
    assert wrapper.data_generator is generator
    assert (wrapper.batch_size, wrapper.generation_batch_size, wrapper.buffer_size) == (3, 6, 120)
    assert (wrapper.num_reset, wrapper.seed_length, wrapper.reset_turing_machine_every) == (100, 8, 1)
    assert wrapper.step_options == dict(
        generation_batch_size=6, reset_first=True, distinct_seed_rows=True, shared_seed_offset=True
    )
    buffer = wrapper.synth_data_buffer
    assert (buffer == buffer[:, :1]).all()

    wrapper()
    assert len(generator.calls) == 1 and generator.calls[0]['args'][2].shape == (6, 32)
    assert len(generator.resets) == 1 and isinstance(generator.resets[0], torch.Generator), (
        'a given generator is re-drawn after every step, from the stream (and kept as given when built)'
    )
    seeded = PlusOne(max_seq_len=32)
    UniversalPretrainWrapper.paper(model, batch_size=3, seq_len=32, data_generator=seeded, rng_seed=5)
    assert len(seeded.resets) == 1, 'with rng_seed drawn from the stream when built'

    overridden = UniversalPretrainWrapper.paper(
        model, batch_size=3, seq_len=32, data_generator=PlusOne(max_seq_len=32), generation_batch_size=10, num_reset=4
    )
    assert (overridden.generation_batch_size, overridden.buffer_size, overridden.num_reset) == (10, 200, 4)


def test_paper_builds_the_paper_generator():
    from up_fast import paper

    model = tiny_model(max_seq_len=64)
    wrapper = UniversalPretrainWrapper.paper(model, batch_size=2, seq_len=64, num_reset=10)
    generator = wrapper.data_generator
    assert isinstance(generator, paper.PaperDataGenerator)
    assert generator.max_seq_len == 64 and generator.embed.embedding_dim == 128
    batch = wrapper.data_step_()
    assert batch.shape == (2, 64)


@pytest.mark.parametrize('batch_size, num_reset', [(1, 40), (2, 80), (3, 100)])
def test_paper_caps_the_author_resets_at_the_buffer(batch_size, num_reset):
    # the buffer is 40 * batch_size rows: the author's 100 resets fit from batch_size 3 on
    wrapper = UniversalPretrainWrapper.paper(tiny_model(), batch_size=batch_size, seq_len=16, backend='torch')
    assert (wrapper.buffer_size, wrapper.num_reset) == (40 * batch_size, num_reset)
    assert wrapper.data_step_().shape == (batch_size, 16)

    odd = UniversalPretrainWrapper.paper(tiny_model(), batch_size=1, seq_len=16, buffer_size=41)
    assert odd.num_reset == 40, 'capped at an even count'
    with pytest.raises(ValueError, match=r'num_reset must be an even int in \[0, buffer_size = 40\], got 100'):
        UniversalPretrainWrapper.paper(tiny_model(), batch_size=1, seq_len=16, num_reset=100)
    assert 'num_reset' in UniversalPretrainWrapper.paper.__doc__
