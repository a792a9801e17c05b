"""Algorithm 1 as intended: what one training step changes in the buffer, and the reference's defects fixed."""

import random

import pytest
import torch
from torch import nn
from x_transformers import AutoregressiveWrapper
from x_transformers import up_wrapper as reference

from up_fast import sampling
from up_fast import up_wrapper as fast
from up_fast.up_wrapper import SyntheticDataGenerator, UniversalPretrainWrapper

from conftest import tiny_model


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
    wrapper = UniversalPretrainWrapper(model, seq_len=24, batch_size=8, buffer_size=64, num_reset=6, seed_length=5, keep_buffer_on_cpu=keep_buffer_on_cpu)
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
        assert torch.equal(seed[b].long(), before[rows.seed_rows[b], offset:offset + 5].long())
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


def test_the_buffer_really_changes_unlike_the_reference(model):
    torch.manual_seed(0)
    ref = reference.UniversalPretrainWrapper(tiny_model(), seq_len=16)
    ref_before = ref.synth_data_buffer.clone()
    ref()
    assert torch.equal(ref.synth_data_buffer, ref_before), 'the reference never writes back (defect 1)'

    wrapper = UniversalPretrainWrapper(model, seq_len=16)
    before = wrapper.synth_data_buffer.clone()
    wrapper()
    changed = (wrapper.synth_data_buffer != before).any(dim=-1).sum()
    assert 32 <= changed <= 32 + 20


def test_loss_equals_autoregressive_wrapper_on_the_same_batch(monkeypatch, model):
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=20, num_reset=2)
    batches = []
    real = wrapper.data_step_
    monkeypatch.setattr(wrapper, 'data_step_', lambda: batches.append(real()) or batches[-1])

    loss = wrapper()
    expected = AutoregressiveWrapper(model)(batches[0])
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)

    # the batch was drawn after the write-back: every row of it is a row of the updated buffer
    rows = {tuple(r) for r in wrapper.synth_data_buffer.long().tolist()}
    assert all(tuple(r) in rows for r in batches[0].tolist())


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
def test_hidden_size_different_from_dim_works(model, use_gru):
    generator = SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16, hidden_size=48, use_gru=use_gru)
    wrapper = UniversalPretrainWrapper(model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=16, num_reset=2)
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
    random.seed(2)                   # Python's random must not matter (defect 4)
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
        torch.manual_seed(global_seed)     # the global RNG differs, the explicit generator decides
        wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4,
                                           reset_turing_machine_every=1, generator=torch.Generator().manual_seed(7))
        wrapper.data_generator.load_state_dict(runs[0][1] if runs else wrapper.data_generator.state_dict())
        first_weights = {k: v.clone() for k, v in wrapper.data_generator.state_dict().items()}
        wrapper.data_step_()
        runs.append((wrapper.synth_data_buffer.clone(), first_weights, wrapper.data_generator.state_dict()))

    (buffer_a, _, weights_a), (buffer_b, _, weights_b) = runs
    assert torch.equal(buffer_a, buffer_b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), 'the weight re-draw follows the generator'


def test_turing_machine_is_redrawn_every_n_steps(model):
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, reset_turing_machine_every=2)
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
    wrapper = UniversalPretrainWrapper(model, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, reset_turing_machine_every=1)

    def forbidden(*args, **kwargs):
        raise AssertionError('a training step read a tensor value back to the host')

    # the sampler's formulation for devices: on the CPU it counts its candidates, which reads nothing from a device
    monkeypatch.setattr(sampling, 'LAZY_DEVICE_TYPES', frozenset())

    for name in ('item', 'tolist', '__bool__', '__int__', '__float__'):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    wrapper.data_step_()
    wrapper.data_step_()


class TwoLayerLSTM(nn.LSTM):
    def __init__(self, dim, hidden_size):
        super().__init__(dim, hidden_size, num_layers=2, batch_first=True)


def test_custom_network_klass_takes_the_generic_path(model):
    generator = SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16, network_klass=TwoLayerLSTM)
    assert not generator.uses_folded_path
    wrapper = UniversalPretrainWrapper(model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    before = wrapper.synth_data_buffer.clone()
    wrapper().backward()
    assert (wrapper.synth_data_buffer != before).any(dim=-1).sum() >= 4


def test_reference_generator_instance_works_as_data_generator(model):
    generator = reference.SyntheticDataGenerator(dim=32, num_tokens=256, max_seq_len=16)
    wrapper = UniversalPretrainWrapper(model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    wrapper().backward()


@pytest.mark.parametrize('keep_buffer_on_cpu', (False, True), ids=['buffer-registered', 'buffer-on-cpu'])
def test_reference_test_up_scenario(keep_buffer_on_cpu):
    # x-transformers' own test_up, with up_fast imported instead
    from x_transformers import TransformerWrapper, Decoder

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
    wrapper = UniversalPretrainWrapper(model, data_generator=generator, seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
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


class NoReset(nn.Module):
    max_seq_len = 16

    def generate(self, length, seed=None, condition=None):
        return condition


def test_redraws_need_a_generator_with_reset(model):
    with pytest.raises(ValueError, match='reset_turing_machine_every=2 .* NoReset lacks'):
        UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16, reset_turing_machine_every=2)
    UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16)


def test_rng_seed_with_a_foreign_generator_warns(model):
    with pytest.warns(UserWarning, match='samples from torch.s global generator'):
        UniversalPretrainWrapper(model, data_generator=NoReset(), seq_len=16, rng_seed=0)
