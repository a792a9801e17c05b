"""prefetch=True: the next step's data made ahead gives the same buffer, batches and losses as without it."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_distributed import saved_by_ranks, torchrun

from up_fast import UniversalPretrainWrapper
from up_fast.prefetch import Prefetcher

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

ORDERS = {
    'reference': dict(buffer_size=24, num_reset=4, reset_turing_machine_every=2),
    'paper': dict(
        reset_first=True,
        distinct_seed_rows=True,
        shared_seed_offset=True,
        generation_batch_size=8,
        constant_init=True,
        buffer_size=24,
        num_reset=6,
        reset_turing_machine_every=1,
    ),
}
MODES = ['inline', 'thread'] + (['stream'] if DEVICE.type == 'cuda' else [])


def build(order, prefetch, mode=None, **overrides):
    torch.manual_seed(0)
    wrapper = UniversalPretrainWrapper(
        tiny_model(), seq_len=16, batch_size=4, prefetch=prefetch, **{**ORDERS[order], **overrides}
    ).to(DEVICE)
    wrapper.prefetch_mode = mode
    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=1e-2)
    return wrapper, optimizer


def train(wrapper, optimizer, steps, batches=None):
    losses = []
    for _ in range(steps):
        loss = wrapper()
        if batches is not None:
            batches.append(wrapper.synth_data_buffer[wrapper.last_step_rows.batch_rows].clone())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def count_taken(monkeypatch):
    """How many steps used prefetched data (a prefetch that is always dropped would pass the equality tests)."""
    taken = []
    real_take = Prefetcher.take

    def take(self, step, key_of):
        made = real_take(self, step, key_of)
        taken.append(made is not None)
        return made

    monkeypatch.setattr(Prefetcher, 'take', take)
    return taken


def assert_same_state(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('order', list(ORDERS))
def test_prefetch_gives_the_same_batches_buffer_and_losses(monkeypatch, order, mode):
    expected, expected_optimizer = build(order, prefetch=False)
    expected_batches = []
    expected_losses = train(expected, expected_optimizer, 5, expected_batches)

    taken = count_taken(monkeypatch)
    wrapper, optimizer = build(order, prefetch=True, mode=mode)
    batches = []
    losses = train(wrapper, optimizer, 5, batches)

    assert taken == [False] + [True] * 4, 'every step after the first used the data made ahead'
    assert losses == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(batches, expected_batches))
    assert_same_state(wrapper, expected)


@pytest.mark.parametrize('order', list(ORDERS))
def test_save_and_resume_with_prefetch_continues_exactly(monkeypatch, order):
    whole, whole_optimizer = build(order, prefetch=True)
    first = train(whole, whole_optimizer, 3)
    saved = copy.deepcopy(
        dict(wrapper=whole.state_dict(), optimizer=whole_optimizer.state_dict())
    )  # a prefetch of step 4 is pending
    rest = train(whole, whole_optimizer, 3)

    # a fresh wrapper; one with a prefetch of step 4 pending, made from other data; one that ran ahead to
    # another step with its own prefetch pending: all load and continue
    for steps_before, other_data in ((0, False), (3, True), (5, False)):
        resumed, optimizer = build(order, prefetch=True)
        if other_data:
            resumed.synth_data_buffer[:5] = 1
        train(resumed, optimizer, steps_before)
        torch.manual_seed(123)  # the global generator does not matter
        resumed.load_state_dict(saved['wrapper'])
        optimizer.load_state_dict(copy.deepcopy(saved['optimizer']))  # an optimizer keeps the loaded tensors themselves
        taken = count_taken(monkeypatch)
        assert train(resumed, optimizer, 3) == rest
        assert taken == [False, True, True], 'after loading, the first step redoes its data, the rest use the prefetch'
        assert_same_state(resumed, whole)
        monkeypatch.undo()

    without, optimizer = build(order, prefetch=False)
    assert train(without, optimizer, 6) == first + rest


def test_a_write_into_the_buffer_drops_the_prefetched_data(monkeypatch):
    def run(prefetch):
        wrapper, optimizer = build('reference', prefetch=prefetch)
        train(wrapper, optimizer, 2)
        wrapper.synth_data_buffer[:5] = 7  # e.g. a buffer restored by hand
        wrapper.data_generator.to_logits.weight.mul_(0.5)
        return train(wrapper, optimizer, 2), wrapper

    expected, expected_wrapper = run(False)
    taken = count_taken(monkeypatch)
    got, wrapper = run(True)
    assert got == expected and taken == [False, True, False, True]
    assert_same_state(wrapper, expected_wrapper)


def test_a_failed_prefetch_is_redone_and_fails_in_its_step(monkeypatch):
    wrapper, optimizer = build('reference', prefetch=True)
    generate = wrapper.data_generator.generate_unchecked
    failing = [True]

    def flaky(*args, **kwargs):
        if failing[0]:
            raise ZeroDivisionError('generator failed')
        return generate(*args, **kwargs)

    train(wrapper, optimizer, 1)
    monkeypatch.setattr(wrapper.data_generator, 'generate_unchecked', flaky)
    loss = wrapper()  # step 2 was prefetched before the failures began; step 3's prefetch fails
    loss.backward()
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    with pytest.raises(ZeroDivisionError):
        wrapper()
    assert wrapper.num_steps == 2 and all(torch.equal(before[k], v) for k, v in wrapper.state_dict().items())

    failing[0] = False
    loss = wrapper()  # step 3 again: the data is made now, as without prefetch

    expected, expected_optimizer = build('reference', prefetch=False)
    train(expected, expected_optimizer, 1)
    expected().backward()
    expected_loss = expected()
    assert loss.item() == expected_loss.item()
    assert_same_state(wrapper, expected)


def test_prefetch_needs_per_step_generators_and_an_up_fast_generator():
    with pytest.raises(ValueError, match='prefetch=True .* rng_seed'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, prefetch=True, generator=torch.Generator())

    class Foreign(torch.nn.Module):
        max_seq_len = 16

        def generate(self, length, seed=None, condition=None):
            return torch.zeros(seed.shape[0], length, dtype=torch.long)

    with pytest.raises(ValueError, match='prefetch=True needs a data generator .* Foreign'):
        UniversalPretrainWrapper(tiny_model(), data_generator=Foreign(), seq_len=16, batch_size=4, prefetch=True)
    with pytest.raises(TypeError, match='prefetch must be True or False'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, prefetch='yes')

    # switched on later, the same checks; the wrapper is left as it was
    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, generator=torch.Generator())
    with pytest.raises(ValueError, match='prefetch=True .* rng_seed'):
        wrapper.prefetch = True
    assert wrapper.prefetch is False


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from up_fast import UniversalPretrainWrapper

dist.init_process_group('gloo')
rank = dist.get_rank()
seen = {{}}
for prefetch in (False, True):
    torch.manual_seed(0)
    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4,
                                       reset_turing_machine_every=2, prefetch=prefetch)
    wrapper.prefetch_mode = {mode!r}
    trainer = DistributedDataParallel(wrapper)
    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = trainer()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seen[prefetch] = dict(buffer=wrapper.synth_data_buffer.clone(), model=wrapper.model.state_dict(), losses=losses)
torch.save(seen, {out!r} + f'/rank{{rank}}.pt')
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['inline', 'thread'])
def test_prefetch_under_ddp_gives_each_rank_the_same_data_as_without(tmp_path, mode):
    script = tmp_path / 'two_ranks.py'
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path), mode=mode))
    torchrun(str(script))

    ranks = saved_by_ranks(tmp_path)
    for seen in ranks:
        assert seen[True]['losses'] == seen[False]['losses']
        assert torch.equal(seen[True]['buffer'], seen[False]['buffer'])
        for name, weight in seen[False]['model'].items():
            assert torch.equal(seen[True]['model'][name], weight), name
    assert not torch.equal(ranks[0][True]['buffer'], ranks[1][True]['buffer']), 'each rank still draws its own data'


@pytest.mark.skipif(DEVICE.type != 'cuda', reason='the side stream needs CUDA: torch.cuda.set_sync_debug_mode')
def test_prefetch_on_a_side_stream_never_syncs():
    wrapper, optimizer = build('reference', prefetch=True)
    train(wrapper, optimizer, 2)  # lazy CUDA initialisation, AdamW's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            wrapper().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert wrapper.num_steps == 5 and wrapper.prefetcher.pending is not None
