"""Every invalid argument raises a clear error naming the argument, and leaves nothing half-updated."""

import re

import pytest
import torch
from conftest import tiny_model
from x_transformers import Encoder, TransformerWrapper

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper, random_sequences

WRAPPER_CASES = [
    # (kwargs, error type, words the message must hold)
    (dict(buffer_size=32), ValueError, ['buffer_size', '32', '> batch_size']),
    (dict(buffer_size=10, batch_size=10), ValueError, ['buffer_size', '10']),
    (dict(num_reset=3), ValueError, ['num_reset', 'even', '3']),
    (dict(num_reset=-2), ValueError, ['num_reset', '-2']),
    (dict(num_reset=640 + 2), ValueError, ['num_reset', '642', 'buffer_size = 640']),
    (dict(generation_batch_size=641), ValueError, ['generation_batch_size', '641', 'buffer_size = 640']),
    (dict(reset_first=1), TypeError, ['reset_first', '1']),
    (dict(seed_length=0), ValueError, ['seed_length', '0']),
    (dict(seed_length=16, seq_len=16), ValueError, ['seed_length', '16', 'seq_len']),
    (dict(seq_len=65), ValueError, ['seq_len', 'max_seq_len (64)', '65']),
    (dict(seq_len=1), ValueError, ['seq_len', '1']),
    (dict(batch_size=0), ValueError, ['batch_size', '0']),
    (dict(batch_size=2.5), TypeError, ['batch_size', 'int', '2.5']),
    (dict(reset_turing_machine_every=-1), ValueError, ['reset_turing_machine_every', '-1']),
    (dict(keep_buffer_on_cpu='yes'), TypeError, ['keep_buffer_on_cpu', "'yes'"]),
    (dict(generator=0), TypeError, ['generator', 'int']),
    (
        dict(data_generator=SyntheticDataGenerator(dim=32, num_tokens=100, max_seq_len=16)),
        ValueError,
        ['data_generator', '256', '100'],
    ),
    (
        dict(data_generator=SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=32)),
        ValueError,
        ['max_seq_len', 'seq_len', '32'],
    ),
    (dict(data_generator=torch.nn.Linear(2, 2)), TypeError, ['data_generator', 'generate', 'Linear']),
]


def assert_clear(exc_info, words):
    message = str(exc_info.value)
    for word in words:
        assert word in message, f'{word!r} not in {message!r}'


@pytest.mark.parametrize(
    'kwargs, error, words', WRAPPER_CASES, ids=lambda v: re.sub(r'\W+', '-', str(v))[:40] if isinstance(v, dict) else ''
)
def test_wrapper_rejects_invalid_arguments(kwargs, error, words):
    kwargs = {'seq_len': 16, **kwargs}
    with pytest.raises(error) as exc_info:
        UniversalPretrainWrapper(tiny_model(), **kwargs)
    assert_clear(exc_info, words)


def test_wrapper_rejects_a_non_causal_model():
    model = TransformerWrapper(num_tokens=256, max_seq_len=64, attn_layers=Encoder(dim=32, depth=1, heads=2))
    with pytest.raises(ValueError) as exc_info:
        UniversalPretrainWrapper(model, seq_len=16)
    assert_clear(exc_info, ['causal', 'Encoder'])
    with pytest.raises(TypeError) as exc_info:
        UniversalPretrainWrapper(torch.nn.Linear(2, 2), seq_len=16)
    assert_clear(exc_info, ['model', 'TransformerWrapper', 'Linear'])


@pytest.mark.parametrize(
    'kwargs, error, words',
    [
        (dict(dim=0), ValueError, ['dim', '0']),
        (dict(num_tokens=0), ValueError, ['num_tokens', '0']),
        (dict(hidden_size=-1), ValueError, ['hidden_size', '-1']),
        (dict(max_seq_len='long'), TypeError, ['max_seq_len', "'long'"]),
        (dict(use_gru=1), TypeError, ['use_gru', '1']),
    ],
    ids=lambda v: re.sub(r'\W+', '-', str(v))[:30] if isinstance(v, dict) else '',
)
def test_generator_rejects_invalid_arguments(kwargs, error, words):
    kwargs = {'dim': 16, 'num_tokens': 30, **kwargs}
    with pytest.raises(error) as exc_info:
        SyntheticDataGenerator(**kwargs)
    assert_clear(exc_info, words)


GOOD = torch.randint(0, 30, (2, 5))

GENERATE_CASES = [
    (dict(length=0, seed=GOOD), ValueError, ['length', '0']),
    (dict(length=4), ValueError, ['seed', 'condition', 'neither']),
    (dict(length=4, seed=GOOD, temperature=-1.0), ValueError, ['temperature', '-1.0']),
    (dict(length=4, seed=GOOD, temperature=float('nan')), ValueError, ['temperature', 'nan']),
    (dict(length=4, seed=GOOD, temperature='hot'), TypeError, ['temperature', "'hot'"]),
    (dict(length=4, seed=GOOD.float()), TypeError, ['seed', 'integer', 'float32']),
    (dict(length=4, seed=GOOD.bool()), TypeError, ['seed', 'integer', 'bool']),
    (dict(length=4, seed=GOOD[0]), ValueError, ['seed', '(batch, length)', '1 dimensions']),
    (dict(length=4, seed=GOOD.tolist()), TypeError, ['seed', 'Tensor', 'list']),
    (dict(length=4, seed=GOOD + 30), ValueError, ['seed', 'outside the vocabulary', '[0, 29]']),
    (dict(length=4, condition=GOOD - 31), ValueError, ['condition', 'outside the vocabulary']),
    (dict(length=4, seed=GOOD, condition=torch.randint(0, 30, (3, 5))), ValueError, ['condition', 'batch size 2', '3']),
    (dict(length=4, seed=GOOD[:, :0]), ValueError, ['prefix', 'empty']),
    (
        dict(length=4, seed=GOOD, temperature=1.0, uniform_noise=torch.rand(2, 3, 30)),
        ValueError,
        ['uniform_noise', '(2, 4, 30)', '(2, 3, 30)'],
    ),
    (
        dict(length=4, seed=GOOD, temperature=1.0, uniform_noise=torch.ones(2, 4, 30, dtype=torch.long)),
        TypeError,
        ['uniform_noise', 'floating'],
    ),
    (
        dict(length=4, seed=GOOD, temperature=0.0, uniform_noise=torch.rand(2, 4, 29)),
        ValueError,
        ['uniform_noise', '(2, 4, 30)'],
    ),
]


@pytest.mark.parametrize('kwargs, error, words', GENERATE_CASES, ids=[f'case{i}' for i in range(len(GENERATE_CASES))])
@pytest.mark.parametrize('network_klass', [None, torch.nn.GRU], ids=['folded', 'generic'])
def test_generate_rejects_invalid_arguments_and_changes_nothing(kwargs, error, words, network_klass):
    klass = None if network_klass is None else (lambda d, h: torch.nn.GRU(d, h, batch_first=True, num_layers=2))
    generator = SyntheticDataGenerator(dim=16, num_tokens=30, max_seq_len=8, network_klass=klass)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    with pytest.raises(error) as exc_info:
        generator.generate(**kwargs)
    assert_clear(exc_info, words)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


def test_random_sequences_rejects_nothing_to_draw():
    with pytest.raises(ValueError) as exc_info:
        random_sequences(10, 5, 0, 0)
    assert_clear(exc_info, ['num_samples_random', 'num_samples_constant'])
    rows = random_sequences(10, 5, 3, 4)
    assert rows.shape == (7, 5) and rows.dtype == torch.long
    assert ((rows == rows[:, :1]).all(-1)).sum() >= 4


def test_a_failed_step_leaves_the_wrapper_unchanged(monkeypatch):
    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}

    def broken(*args, **kwargs):
        raise RuntimeError('generator failed')

    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', broken)
    with pytest.raises(RuntimeError):
        wrapper()
    assert wrapper.num_steps == 0
    assert all(torch.equal(before[k], v) for k, v in wrapper.state_dict().items())


def test_seq_len_is_limited_only_by_absolute_positions():
    # x-transformers limits the length only through a learned absolute position embedding: a rotary model
    # built with max_seq_len=64 trains at seq_len=128, as under x_transformers.up_wrapper
    from x_transformers import Decoder
    from x_transformers.up_wrapper import UniversalPretrainWrapper as Reference

    rotary = TransformerWrapper(
        num_tokens=256, max_seq_len=64, attn_layers=Decoder(dim=32, depth=1, heads=2, rotary_pos_emb=True)
    )
    for klass in (Reference, UniversalPretrainWrapper):
        torch.manual_seed(0)
        loss = klass(rotary, seq_len=128, batch_size=2, buffer_size=8, num_reset=2)()
        assert torch.isfinite(loss), klass

    with pytest.raises(ValueError) as exc_info:
        UniversalPretrainWrapper(tiny_model(max_seq_len=64), seq_len=128, batch_size=2, buffer_size=8, num_reset=2)
    assert_clear(exc_info, ['seq_len', 'max_seq_len (64)', '128', 'absolute position'])
