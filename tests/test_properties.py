"""Property-based: every valid argument combination works, every invalid one fails cleanly and changes nothing."""

import pytest
import torch
from conftest import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper

MODEL_MAX_SEQ_LEN = 24
NUM_TOKENS = 50
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_model = None


def shared_model():
    global _model
    if _model is None:
        torch.manual_seed(0)
        _model = tiny_model(num_tokens=NUM_TOKENS, dim=16, max_seq_len=MODEL_MAX_SEQ_LEN)
    return _model


def problem(batch_size, seq_len, seed_length, buffer_size, num_reset):
    """The argument that is invalid, or None: an independent statement of the rules."""
    if batch_size < 1:
        return 'batch_size'
    if seq_len < 2 or seq_len > MODEL_MAX_SEQ_LEN:
        return 'seq_len'
    if not 0 < seed_length < seq_len:
        return 'seed_length'
    if buffer_size is not None and buffer_size <= batch_size:
        return 'buffer_size'
    size = batch_size * 20 if buffer_size is None else buffer_size
    if num_reset < 0 or num_reset % 2 or num_reset > size:  # beyond size - batch_size, resets wrap onto condition rows
        return 'num_reset'
    return None


@st.composite
def wrapper_arguments(draw):
    """Values around every boundary: each bound is drawn relative to the values it depends on."""
    batch_size = draw(st.integers(-1, 6))
    seq_len = draw(st.sampled_from([0, 1, 2, 3, 16, MODEL_MAX_SEQ_LEN, MODEL_MAX_SEQ_LEN + 1]))
    seed_length = seq_len + draw(st.integers(-3, 1)) if draw(st.booleans()) else draw(st.integers(-1, 2))
    buffer_size = draw(st.one_of(st.none(), st.integers(-1, 12).map(lambda d: batch_size + d)))
    size = batch_size * 20 if buffer_size is None else buffer_size
    near = draw(st.sampled_from([size - batch_size, size, None]))  # the wrap-round point, the bound, or small
    num_reset = near + draw(st.integers(-5, 3)) if near is not None else draw(st.integers(-3, 6))
    return dict(
        batch_size=batch_size, seq_len=seq_len, seed_length=seed_length, buffer_size=buffer_size, num_reset=num_reset
    )


@settings(SETTINGS, max_examples=200)
@given(kwargs=wrapper_arguments())
def test_wrapper_arguments(kwargs):
    model = shared_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = problem(**kwargs)

    if bad is not None:
        with pytest.raises(ValueError, match=bad):
            UniversalPretrainWrapper(model, **kwargs)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return

    wrapper = UniversalPretrainWrapper(model, **kwargs)
    batch = wrapper.data_step_()
    assert batch.shape == (kwargs['batch_size'], kwargs['seq_len']) and batch.dtype == torch.long
    assert 0 <= int(batch.min()) and int(batch.max()) < NUM_TOKENS
    buffer = wrapper.synth_data_buffer
    assert buffer.shape == (wrapper.buffer_size, kwargs['seq_len']) and int(buffer.max()) < NUM_TOKENS


GENERATOR = {}


def generator(use_gru):
    if use_gru not in GENERATOR:
        torch.manual_seed(0)
        GENERATOR[use_gru] = SyntheticDataGenerator(dim=16, num_tokens=NUM_TOKENS, max_seq_len=12, use_gru=use_gru)
    return GENERATOR[use_gru]


@SETTINGS
@given(
    use_gru=st.booleans(),
    length=st.integers(-1, 16),
    batch=st.integers(0, 4),
    seed_len=st.one_of(st.none(), st.integers(0, 5)),
    condition_len=st.one_of(st.none(), st.integers(0, 8)),
    low=st.integers(-2, 0),
    high=st.integers(NUM_TOKENS - 1, NUM_TOKENS + 1),
    dtype=st.sampled_from([torch.long, torch.int32, torch.uint8, torch.float32]),
    temperature=st.sampled_from([0.0, 1e-4, 1.0, 2.5, -0.5, float('inf')]),
)
def test_generate_inputs(use_gru, length, batch, seed_len, condition_len, low, high, dtype, temperature):
    gen = generator(use_gru)
    before = {k: v.clone() for k, v in gen.state_dict().items()}

    def tokens(width):
        if width is None:
            return None
        t = torch.randint(0, NUM_TOKENS, (batch, width))
        if width > 0 and batch > 0:
            t[0, 0], t[-1, -1] = low, high  # the extremes the case asks for
        return t.to(dtype) if dtype != torch.uint8 else t.clamp(0, 255).to(dtype)

    seed, condition = tokens(seed_len), tokens(condition_len)
    prefix_len = (seed_len or 0) + (condition_len or 0)
    has_tokens = batch > 0 and prefix_len > 0
    present = [t.long() for t in (seed, condition) if t is not None and t.numel() > 0]
    in_range = all(0 <= int(t.min()) and int(t.max()) < NUM_TOKENS for t in present)
    # what is wrong, each with the words a clear message about it would hold
    problems = {
        'length': length < 1,
        'temperature': not 0 <= temperature < float('inf'),
        'neither': seed is None and condition is None,
        'dtype': dtype == torch.float32 and (seed is not None or condition is not None),
        'vocabulary': has_tokens and not in_range and dtype != torch.float32,
        'empty': prefix_len == 0 and (seed is not None or condition is not None),
        'batch size 0': batch == 0 and prefix_len > 0 and dtype != torch.float32,
    }
    problems = [words for words, wrong in problems.items() if wrong]

    if problems:
        with pytest.raises((ValueError, TypeError)) as exc_info:
            gen.generate(length, seed=seed, condition=condition, temperature=temperature)
        assert any(words in str(exc_info.value) for words in problems), (problems, str(exc_info.value))
    else:
        out = gen.generate(length, seed=seed, condition=condition, temperature=temperature)
        assert out.shape == (batch, min(gen.max_seq_len, prefix_len + length)) and out.dtype == torch.long
        assert 0 <= int(out.min()) and int(out.max()) < NUM_TOKENS

    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())


class Shift(torch.nn.Module):
    """A generator in up_fast's form: its rows are the condition rows shifted by one token id."""

    max_seq_len = 12
    num_tokens = NUM_TOKENS

    def reset_(self, *, generator=None):
        pass

    def generate(self, length, seed=None, condition=None):
        return self.generate_unchecked(length, seed, condition)

    def generate_unchecked(self, length, seed, condition, temperature=0.0, *, generator=None, uniform_noise=None):
        self.seen = (seed.long().clone(), condition.long().clone())
        return (condition.long() + 1) % NUM_TOKENS


@settings(SETTINGS, max_examples=60)
@given(
    batch_size=st.integers(1, 5),
    extra_rows=st.integers(1, 12),
    generation=st.integers(1, 17),
    reset_share=st.floats(0, 1),
    reset_first=st.booleans(),
    distinct_seed_rows=st.booleans(),
    shared_seed_offset=st.booleans(),
    constant_init=st.booleans(),
)
def test_any_step_option_combination_keeps_the_row_accounting(
    batch_size, extra_rows, generation, reset_share, reset_first, distinct_seed_rows, shared_seed_offset, constant_init
):
    buffer_size = batch_size + extra_rows
    generation = min(generation, buffer_size)
    num_reset = int(reset_share * buffer_size) // 2 * 2
    wrapper = UniversalPretrainWrapper(
        shared_model(),
        data_generator=Shift(),
        seq_len=12,
        seed_length=3,
        batch_size=batch_size,
        buffer_size=buffer_size,
        num_reset=num_reset,
        generation_batch_size=generation,
        reset_first=reset_first,
        distinct_seed_rows=distinct_seed_rows,
        shared_seed_offset=shared_seed_offset,
        constant_init=constant_init,
    )
    before = wrapper.synth_data_buffer.long().clone()
    if constant_init:
        assert (before == before[:, :1]).all()

    batch = wrapper.data_step_()
    after, rows = wrapper.synth_data_buffer.long(), wrapper.last_step_rows
    conditions, resets = rows.condition_rows.tolist(), rows.reset_rows.tolist()
    assert len(set(conditions)) == generation and len(resets) == len(set(resets)) == num_reset
    assert len(set(rows.batch_rows.tolist())) == batch_size and torch.equal(batch, after[rows.batch_rows])
    if distinct_seed_rows:
        assert len(set(rows.seed_rows.tolist())) == generation
    if shared_seed_offset:
        assert (rows.seed_offsets == rows.seed_offsets[0]).all()
    if not reset_first:
        overlap = set(conditions) & set(resets)
        assert len(overlap) == max(0, num_reset - (buffer_size - generation)), 'overlap only where there is no room'

    seed, condition = wrapper.data_generator.seen
    assert torch.equal(after[rows.condition_rows], (condition + 1) % NUM_TOKENS), (
        'condition rows hold the generated rows'
    )
    if not reset_first:
        assert torch.equal(condition, before[rows.condition_rows]), 'read before any write'
    # noise: half uniform rows, half constant rows, in a random order (a uniform row of 12 is constant with p = 50**-11)
    kept = [r for r in resets if r not in conditions]
    num_constant = sum(bool((after[r] == after[r, 0]).all()) for r in kept)
    assert num_constant <= num_reset // 2 and len(kept) - num_constant <= num_reset // 2
    if len(kept) == num_reset:
        assert num_constant == num_reset // 2
    untouched = torch.ones(buffer_size, dtype=torch.bool)
    untouched[rows.condition_rows] = False
    untouched[rows.reset_rows] = False
    assert torch.equal(after[untouched], before[untouched])
    assert wrapper.num_steps == 1
