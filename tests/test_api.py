"""The drop-in contract: import paths, signatures, attributes and state_dict keys match x-transformers."""

import inspect

import pytest
import torch
from conftest import tiny_model
from x_transformers import up_wrapper as reference

import up_fast
from up_fast import up_wrapper as fast


def test_both_import_paths_work():
    assert up_fast.UniversalPretrainWrapper is fast.UniversalPretrainWrapper
    assert up_fast.SyntheticDataGenerator is fast.SyntheticDataGenerator
    assert callable(fast.random_sequences)


@pytest.mark.parametrize(
    'name, attr',
    [
        ('UniversalPretrainWrapper', '__init__'),
        ('SyntheticDataGenerator', '__init__'),
        ('SyntheticDataGenerator', 'generate'),
        ('random_sequences', None),
        ('UniversalPretrainWrapper', 'get_rand_sequences_from_buffer'),
    ],
    ids=lambda v: str(v),
)
def test_signature_matches_reference(name, attr):
    ref_obj, fast_obj = getattr(reference, name), getattr(fast, name)
    if attr:
        ref_obj, fast_obj = getattr(ref_obj, attr), getattr(fast_obj, attr)

    ref_params = list(inspect.signature(ref_obj).parameters.values())
    fast_params = list(inspect.signature(fast_obj).parameters.values())

    # the reference's parameters, in order, with the same kinds and defaults
    assert [(p.name, p.kind, p.default) for p in fast_params[: len(ref_params)]] == [
        (p.name, p.kind, p.default) for p in ref_params
    ]

    # anything added is keyword-only with a default that keeps the drop-in behaviour
    for extra in fast_params[len(ref_params) :]:
        assert extra.kind is inspect.Parameter.KEYWORD_ONLY, extra.name
        assert extra.default is None or extra.default is False or extra.default is torch.long, extra.name


def test_generator_submodules_and_attributes():
    ref = reference.SyntheticDataGenerator(dim=16, num_tokens=40, max_seq_len=24)
    gen = fast.SyntheticDataGenerator(dim=16, num_tokens=40, max_seq_len=24)
    assert (
        type(gen.embed) is type(ref.embed)
        and type(gen.net) is type(ref.net)
        and type(gen.to_logits) is type(ref.to_logits)
    )
    assert gen.net.batch_first and gen.max_seq_len == 24
    assert {k: v.shape for k, v in gen.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert isinstance(fast.SyntheticDataGenerator(dim=16, num_tokens=40, use_gru=True).net, torch.nn.GRU)


@pytest.mark.parametrize('keep_buffer_on_cpu', [False, True], ids=['buffer-registered', 'buffer-on-cpu'])
def test_wrapper_attributes_and_state_dict_keys(keep_buffer_on_cpu):
    torch.manual_seed(0)
    ref = reference.UniversalPretrainWrapper(tiny_model(), seq_len=16, keep_buffer_on_cpu=keep_buffer_on_cpu)
    wrapper = fast.UniversalPretrainWrapper(tiny_model(), seq_len=16, keep_buffer_on_cpu=keep_buffer_on_cpu)

    for attr in ('embed', 'net', 'to_logits'):
        assert hasattr(wrapper.data_generator, attr)
    for attr in (
        'model',
        'ar_wrapped',
        'data_generator',
        'synth_data_buffer',
        'step',
        'seq_len',
        'batch_size',
        'seed_length',
        'buffer_size',
        'num_reset',
        'reset_turing_machine_every',
        'random_sequences_fn',
        'device',
        'get_rand_sequences_from_buffer',
    ):
        assert hasattr(wrapper, attr), attr

    assert set(wrapper.state_dict()) == set(ref.state_dict())
    assert wrapper.synth_data_buffer.shape == ref.synth_data_buffer.shape
    assert ('synth_data_buffer' in dict(wrapper.named_buffers())) == (not keep_buffer_on_cpu)


def test_state_dict_loads_both_ways():
    torch.manual_seed(0)
    ref = reference.UniversalPretrainWrapper(tiny_model(), seq_len=16)
    torch.manual_seed(1)
    wrapper = fast.UniversalPretrainWrapper(tiny_model(), seq_len=16)
    ref.step.fill_(7)

    wrapper.load_state_dict(ref.state_dict())  # strict
    assert torch.equal(wrapper.synth_data_buffer.long(), ref.synth_data_buffer)
    assert wrapper.synth_data_buffer.dtype == torch.uint8
    assert wrapper.num_steps == 7 and int(wrapper.step) == 7
    for (name, p), (ref_name, ref_p) in zip(wrapper.named_parameters(), ref.named_parameters()):
        assert name == ref_name and torch.equal(p, ref_p)

    wrapper()  # a step changes the buffer and the step count
    other = reference.UniversalPretrainWrapper(tiny_model(), seq_len=16)
    other.load_state_dict(wrapper.state_dict())  # strict, into the reference
    assert torch.equal(other.synth_data_buffer, wrapper.synth_data_buffer.long())
    assert int(other.step) == 8


@pytest.mark.parametrize(
    'num_tokens, dtype',
    [(2, torch.uint8), (256, torch.uint8), (257, torch.int16), (32768, torch.int16), (32769, torch.int32)],
)
def test_buffer_uses_the_narrowest_dtype(num_tokens, dtype):
    wrapper = fast.UniversalPretrainWrapper(
        tiny_model(num_tokens=num_tokens, dim=8), seq_len=4, batch_size=2, num_reset=2, seed_length=2
    )
    assert wrapper.synth_data_buffer.dtype == dtype
    assert int(wrapper.synth_data_buffer.max()) < num_tokens and int(wrapper.synth_data_buffer.min()) >= 0
    batch = wrapper.data_step_()
    assert batch.dtype == torch.long and batch.shape == (2, 4)


def test_get_rand_sequences_from_buffer_as_the_reference():
    torch.manual_seed(0)
    wrapper = fast.UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    rows = {tuple(r) for r in wrapper.synth_data_buffer.long().tolist()}

    for size, expected in ((None, 4), (24, 24), (0, 0)):
        sampled = wrapper.get_rand_sequences_from_buffer(size)
        assert (
            sampled.shape == (expected, 16)
            and sampled.dtype == torch.long
            and sampled.device == wrapper.synth_data_buffer.device
        )
        assert all(tuple(r) in rows for r in sampled.tolist())
    assert len({tuple(r) for r in wrapper.get_rand_sequences_from_buffer(24).tolist()}) == len(rows), 'distinct rows'

    with pytest.raises(ValueError, match=r'size must be an int in \[0, buffer_size = 24\].*got 25'):
        wrapper.get_rand_sequences_from_buffer(25)


def test_get_rand_sequences_from_buffer_does_not_shift_the_training_stream():
    def buffer_after(extra_draw):
        torch.manual_seed(0)
        wrapper = fast.UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
        wrapper.data_step_()
        if extra_draw:
            wrapper.get_rand_sequences_from_buffer()
        wrapper.data_step_()
        return wrapper.synth_data_buffer

    assert torch.equal(buffer_after(False), buffer_after(True))


def test_no_state_is_stored_beside_its_live_copy():
    with pytest.warns(UserWarning, match='keep_buffer_on_cpu'):
        wrapper = fast.UniversalPretrainWrapper(tiny_model(), seq_len=16, keep_buffer_on_cpu=True, rng_seed=0)
    for attr in ('generator', 'rng_seed', 'keep_buffer_on_cpu', 'num_tokens'):
        assert not hasattr(wrapper, attr), f'{attr}: the live copy is elsewhere (randomness, synth_data_buffer, model)'
