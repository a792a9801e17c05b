"""Exact resume: N steps, save, load in a fresh process, M more steps == N + M steps in one go."""

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import tiny_model
    from up_fast import UniversalPretrainWrapper

    def build():
        torch.manual_seed(0)
        wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4,
                                           reset_turing_machine_every=3, rng_seed=1234, prefetch=prefetch)
        optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=1e-3)
        return wrapper, optimizer

    def train(wrapper, optimizer, steps):
        losses = []
        for _ in range(steps):
            loss = wrapper()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses

    mode, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prefetch = len(sys.argv) > 4 and sys.argv[4] == 'prefetch'
    wrapper, optimizer = build()
    torch.manual_seed(999)          # the global RNG must not matter: the run follows rng_seed
    if mode == 'resume':
        state = torch.load(path)
        wrapper.load_state_dict(state['wrapper'])
        optimizer.load_state_dict(state['optimizer'])
    losses = train(wrapper, optimizer, steps)
    torch.save(dict(wrapper=wrapper.state_dict(), optimizer=optimizer.state_dict(), losses=losses), path)
""")


def run(tmp_path, mode, path, steps, *extra):
    script = tmp_path / 'train.py'
    script.write_text(SCRIPT.format(tests=str(__import__('pathlib').Path(__file__).parent)))
    command = [sys.executable, str(script), mode, str(path), str(steps), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(path)


@pytest.mark.slow
def test_resume_in_a_fresh_process_continues_exactly(tmp_path):
    whole = run(tmp_path, 'fresh', tmp_path / 'whole.pt', 7)
    first = run(tmp_path, 'fresh', tmp_path / 'part.pt', 4)
    second = run(tmp_path, 'resume', tmp_path / 'part.pt', 3)

    assert first['losses'] + second['losses'] == whole['losses']
    for key, value in whole['wrapper'].items():
        assert torch.equal(second['wrapper'][key], value), key
    assert int(second['wrapper']['step']) == 7


@pytest.mark.slow
def test_resume_with_prefetch_continues_exactly_as_a_run_without(tmp_path):
    # a prefetched step is never saved: the resumed process makes step 5's data itself, from the same draws
    whole = run(tmp_path, 'fresh', tmp_path / 'whole.pt', 7)
    first = run(tmp_path, 'fresh', tmp_path / 'part.pt', 4, 'prefetch')
    second = run(tmp_path, 'resume', tmp_path / 'part.pt', 3, 'prefetch')

    assert first['losses'] + second['losses'] == whole['losses']
    for key, value in whole['wrapper'].items():
        assert torch.equal(second['wrapper'][key], value), key


def test_rng_seed_streams_differ_by_seed_and_rank():
    from conftest import tiny_model

    from up_fast import UniversalPretrainWrapper

    def buffer_after_a_step(rng_seed, rank=0):
        wrapper = UniversalPretrainWrapper(
            tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, rng_seed=rng_seed
        )
        wrapper.randomness.rank = rank
        wrapper.data_step_()
        return wrapper.synth_data_buffer

    a, b = buffer_after_a_step(5), buffer_after_a_step(5)
    assert torch.equal(a, b)
    assert not torch.equal(a, buffer_after_a_step(6))
    assert not torch.equal(a, buffer_after_a_step(5, rank=1))


def build_small(**kwargs):
    from conftest import tiny_model

    from up_fast import UniversalPretrainWrapper

    torch.manual_seed(0)
    return UniversalPretrainWrapper(
        tiny_model(),
        seq_len=16,
        batch_size=4,
        buffer_size=24,
        num_reset=4,
        reset_turing_machine_every=2,
        rng_seed=1234,
        **kwargs,
    )


def run_data_steps(wrapper, steps):
    for _ in range(steps):
        wrapper.data_step_()
    return wrapper


def assert_same_state(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_dcp_load_in_place_resumes_exactly(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    whole = run_data_steps(build_small(), 5)

    wrapper = run_data_steps(build_small(), 3)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'torch.distributed is disabled')  # one process, no process group
        dcp.save(wrapper.state_dict(), checkpoint_id=tmp_path / 'checkpoint')
        run_data_steps(wrapper, 1)  # moves on: the load must take it back to step 3

        fresh = build_small()
        for target in (wrapper, fresh):
            state = target.state_dict()
            dcp.load(state, checkpoint_id=tmp_path / 'checkpoint')  # in place: no load_state_dict

    for target in (wrapper, fresh):
        assert target.num_steps == 3
        run_data_steps(target, 2)
        assert target.num_steps == 5
        assert_same_state(whole, target)


def test_step_copied_in_from_outside_is_noticed():
    whole = run_data_steps(build_small(), 5)
    done = run_data_steps(build_small(), 3)

    fresh = build_small()
    with torch.no_grad():
        fresh.synth_data_buffer.copy_(done.synth_data_buffer)
        fresh.data_generator.load_state_dict(done.data_generator.state_dict())
        fresh.step.copy_(done.step)
    run_data_steps(fresh, 2)
    assert_same_state(whole, fresh)


def test_num_steps_is_read_only_and_is_the_step_buffer():
    wrapper = run_data_steps(build_small(), 2)
    assert wrapper.num_steps == 2
    with pytest.raises(AttributeError):
        wrapper.num_steps = 7
    wrapper.step.fill_(9)
    assert wrapper.num_steps == 9
    wrapper.to(torch.float64)  # a move makes a new `step` tensor: the count carries over
    assert wrapper.num_steps == 9 and int(wrapper.step) == 9


def small_xt_wrapper():
    from conftest import tiny_model

    from up_fast import UniversalPretrainWrapper

    return UniversalPretrainWrapper(
        tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, reset_turing_machine_every=3
    )


def small_paper_wrapper():
    from conftest import tiny_model

    from up_fast import UniversalPretrainWrapper

    return UniversalPretrainWrapper.paper(tiny_model(), seq_len=16, batch_size=4, num_reset=4)


@pytest.mark.parametrize('make', [small_xt_wrapper, small_paper_wrapper], ids=['xt', 'paper'])
@pytest.mark.parametrize('how', ['deepcopy', 'torch.save'])
def test_wrapper_copies_after_a_step_and_the_copy_runs_alike(tmp_path, make, how):
    import copy

    torch.manual_seed(0)
    wrapper = make()
    wrapper.data_step_()  # the generator now holds its folded weights (opaque oneDNN tensors, closures)

    if how == 'deepcopy':
        twin = copy.deepcopy(wrapper)
    else:
        torch.save(wrapper, tmp_path / 'wrapper.pt')
        twin = torch.load(tmp_path / 'wrapper.pt', weights_only=False)

    assert twin.data_generator._folded is None, 'the copy folds its own weights on first use'
    for _ in range(3):
        assert torch.equal(twin.data_step_(), wrapper.data_step_())
    assert torch.equal(twin.synth_data_buffer, wrapper.synth_data_buffer)
    assert twin.num_steps == wrapper.num_steps == 4
    seed = torch.randint(0, 256, (2, 4))
    condition = torch.randint(0, 256, (2, 16))
    assert torch.equal(
        twin.data_generator.generate(16, seed=seed, condition=condition, generator=torch.Generator().manual_seed(1)),
        wrapper.data_generator.generate(16, seed=seed, condition=condition, generator=torch.Generator().manual_seed(1)),
    )
    assert wrapper.data_generator._folded is not None, 'the original keeps its cache'


def test_per_device_generators_are_per_device_not_per_device_type(monkeypatch):
    from up_fast import rng

    assert rng.device_key('cuda:1') == torch.device('cuda', 1) != rng.device_key('cuda:0')
    assert rng.device_key('cpu') == torch.device('cpu')

    class FakeGenerator:  # no GPU here: stands in for torch.Generator(device='cuda:i')
        def __init__(self, device):
            self.device = torch.device(device)

        def manual_seed(self, seed):
            self.seed = seed
            return self

    randomness = rng.StepRandomness(seed=5)
    randomness.begin(1)
    monkeypatch.setattr(torch, 'Generator', FakeGenerator)
    first, second = randomness.on('cuda:0'), randomness.on('cuda:1')
    assert first is not second and first.seed != second.seed, 'two GPUs draw two streams'
    assert (first.device, second.device) == (torch.device('cuda', 0), torch.device('cuda', 1))
    assert randomness.on(torch.device('cuda', 1)) is second
