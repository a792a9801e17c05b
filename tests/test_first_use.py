"""backend='auto' takes a fused kernel only after it proved itself on the device (kernels/first_use.py).

Under TRITON_INTERPRET=1 the CPU stands in for the GPU: `auto_on_cpu` adds 'cpu' to the device types
where 'auto' checks and takes the kernels, and shortens the check's problem (CHECK_PREFIX and
CHECK_LENGTH) so that one check call costs about a second here. A kernel that passes is taken, in the
mode the check chose; deliberately broken variants (a wrong token, a wrong state, an aborted launch,
invalid tokens, a hang) are refused with one warning that names what differed, and the PyTorch path
samples instead. Results are remembered for the process and on disk.
"""

import warnings

import pytest
import torch

pytest.importorskip('triton')

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper  # noqa: E402
from up_fast import backend as backend_module  # noqa: E402
from up_fast.config import interpreted  # noqa: E402

if not torch.cuda.is_available() and not interpreted():
    pytest.skip('no GPU, and TRITON_INTERPRET=1 is not set (conftest.py sets it)', allow_module_level=True)

from conftest import tiny_model  # noqa: E402

from up_fast.kernels import first_use  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')


@pytest.fixture
def auto_on_cpu(monkeypatch, tmp_path):
    """A fresh process's view: no results yet, nothing announced or warned, the cache in tmp_path."""
    monkeypatch.setattr(backend_module, 'AUTO_DEVICE_TYPES', frozenset({'cuda', 'cpu'}))
    monkeypatch.setattr(backend_module, '_warned', set())
    monkeypatch.setattr(backend_module, '_announced', set())
    monkeypatch.setattr(first_use, '_results', {})
    monkeypatch.setattr(first_use, 'CHECK_PREFIX', 2)
    monkeypatch.setattr(first_use, 'CHECK_LENGTH', 3)
    monkeypatch.setenv('UP_FAST_CACHE_DIR', str(tmp_path))
    monkeypatch.delenv('UP_FAST_BACKEND', raising=False)


def generators(cell='lstm', backend='auto'):
    torch.manual_seed(0)
    shape = dict(dim=16, num_tokens=20, max_seq_len=6, use_gru=cell == 'gru')
    auto = SyntheticDataGenerator(**shape, backend=backend).to(DEVICE)
    twin = SyntheticDataGenerator(**shape, backend='torch').to(DEVICE)
    twin.load_state_dict(auto.state_dict())
    return auto, twin


def sample_both(auto, twin, batch=4):
    g = torch.Generator().manual_seed(3)
    seed = torch.randint(0, 20, (batch, 3), generator=g).to(DEVICE)
    noise = torch.rand(batch, 6, 20, generator=g).to(DEVICE)
    return [gen.generate(6, seed=seed, temperature=1.0, uniform_noise=noise) for gen in (auto, twin)]


class CountingSample:
    """fused_recurrent_sample, counted, optionally broken by `corrupt(tokens, state)`."""

    def __init__(self, corrupt=None):
        self.real, self.corrupt, self.calls = rs.fused_recurrent_sample, corrupt, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        tokens, state = self.real(*args, **kwargs)
        return self.corrupt(tokens, state) if self.corrupt else (tokens, state)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_auto_takes_a_kernel_that_passed_its_check_and_says_so_once(auto_on_cpu, monkeypatch, capsys, cell):
    counting = CountingSample()
    monkeypatch.setattr(rs, 'fused_recurrent_sample', counting)
    auto, twin = generators(cell)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # a passing check warns nothing (an old interpreter's own may)
        path = auto.sampling_path(4)
    assert path.fused and path.mode in first_use.MODES, path
    assert set(path.check.passed) == set(first_use.MODES) and not path.check.failed
    announced = capsys.readouterr().err
    assert announced.count('\n') == 1 and f'fused sampling kernel ({path.mode} mode)' in announced
    assert cell.upper() in announced and 'matched the PyTorch path' in announced

    checked_calls = counting.calls
    assert checked_calls == path.check.calls > 0
    ours, theirs = sample_both(auto, twin)
    assert counting.calls == checked_calls + 1, 'the fused kernel sampled'
    assert torch.equal(ours, theirs)
    sample_both(auto, twin)
    assert capsys.readouterr().err == '', 'said once a process'
    assert len(first_use.results()) == 1, 'checked once a configuration'


def wrong_token(tokens, state):
    tokens = tokens.clone()
    tokens[1, 2] = (tokens[1, 2] + 1) % 20
    return tokens, state


def wrong_state(tokens, state):
    return tokens, (state[0] + 1e-3, *state[1:])


def invalid_tokens(tokens, state):
    return torch.full_like(tokens, -1), state  # what an aborted launch leaves without check=True


def aborted(tokens, state):
    raise rs.barrier_error(DEVICE)


BROKEN = {
    'wrong_token': (wrong_token, 'the kernel drew'),
    'wrong_state': (wrong_state, 'final h differs'),
    'invalid_tokens': (invalid_tokens, 'is not a token id'),
    'aborted': (aborted, 'KernelBarrierError'),
}


@pytest.mark.parametrize('variant', list(BROKEN))
def test_a_broken_kernel_is_refused_with_one_warning_and_the_pytorch_path_samples(auto_on_cpu, monkeypatch, variant):
    corrupt, says = BROKEN[variant]
    broken = CountingSample(corrupt)
    monkeypatch.setattr(rs, 'fused_recurrent_sample', broken)
    monkeypatch.setattr(first_use, 'MODES', ('phases',))  # one mode: the refusal is the same for each
    auto, twin = generators()
    with pytest.warns(UserWarning, match='first-use check failed') as caught:
        path = auto.sampling_path(4)
    ours = [w for w in caught if issubclass(w.category, UserWarning)]  # not an old interpreter's deprecations
    assert len(ours) == 1 and says in str(ours[0].message), [str(w.message) for w in ours]
    assert not path.fused and path.check.failed and path.check.chosen is None

    checked_calls = broken.calls
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # warned once
        ours, theirs = sample_both(auto, twin)
    assert broken.calls == checked_calls, 'the refused kernel never sampled'
    assert torch.equal(ours, theirs)


def test_a_mode_past_its_time_limit_fails_instead_of_hanging(auto_on_cpu):
    auto, _ = generators()
    config = first_use.SamplingConfig.of(auto.folded(), 4, DEVICE)
    result = first_use.check_sampling(config, DEVICE, modes=('phases',), time_limit=0.0)
    assert result.chosen is None and 'TimeoutError' in result.failed['phases'] and result.calls == 0


def test_the_check_samples_the_configurations_own_launch(auto_on_cpu):
    # rows that fill the plan's batch tiles (up to the noise budget): the kernel variant a training step runs
    auto, _ = generators()
    config = first_use.SamplingConfig.of(auto.folded(), 40, DEVICE)
    assert first_use.check_rows(config) == config.plan.block_b * config.plan.groups
    budget = first_use.CHECK_NOISE_ELEMENTS
    assert first_use.check_rows(config) * first_use.CHECK_LENGTH * config.num_tokens <= budget


def test_pinned_backends_skip_the_check(auto_on_cpu, monkeypatch):
    counting = CountingSample()
    monkeypatch.setattr(rs, 'fused_recurrent_sample', counting)
    auto, twin = generators(backend='triton')
    path = auto.sampling_path(4)
    assert path.fused and path.mode == 'auto' and path.check is None and counting.calls == 0
    assert twin.sampling_path(4).path == 'torch' and "backend='torch'" in twin.sampling_path(4).reason
    assert first_use.results() == []


def test_auto_off_the_checked_device_types_is_the_pytorch_path_without_a_check(monkeypatch):
    monkeypatch.setattr(first_use, '_results', {})
    path = SyntheticDataGenerator(dim=16, num_tokens=20, max_seq_len=6, backend='auto').sampling_path(4, 'cpu')
    assert not path.fused and 'PyTorch path' in path.reason and first_use.results() == []


def test_results_are_kept_on_disk_keyed_by_environment(auto_on_cpu, tmp_path):
    runs = []

    def run():
        runs.append(1)
        return first_use.CheckResult('sampling', 'dev', 'cfg', passed={'phases': 0.5}, chosen='phases', calls=3)

    result, new = first_use.checked('sampling', 'cfg', DEVICE, run, on_disk=True)
    assert new and runs == [1] and not result.from_disk
    assert first_use.cache_path() == tmp_path / 'kernel_checks.json' and first_use.cache_path().exists()
    assert first_use.checked('sampling', 'cfg', DEVICE, run, on_disk=True) == (result, False), 'the process remembers'

    first_use._results.clear()  # a new process on the same machine
    again, new = first_use.checked('sampling', 'cfg', DEVICE, run, on_disk=True)
    assert new and runs == [1] and again.from_disk and again.chosen == 'phases' and again.passed == {'phases': 0.5}
    assert 'read from the check cache' in again.line()

    first_use._results.clear()  # another configuration is checked afresh
    first_use.checked('sampling', 'other cfg', DEVICE, run, on_disk=True)
    assert runs == [1, 1]

    first_use._results.clear()
    first_use.cache_path().write_text('{ not json')  # a damaged file: checked again, and rewritten whole
    first_use.checked('sampling', 'cfg', DEVICE, run, on_disk=True)
    assert runs == [1, 1, 1] and len(first_use.read_cache()) == 1


def test_the_environment_key_names_what_could_change_a_check():
    key = first_use.environment_key(DEVICE)
    import triton

    for part in (torch.__version__, triton.__version__, first_use.kernels_source_hash()):
        assert part in key


def test_buffer_kernels_are_checked_per_dtype_and_a_broken_one_refused(auto_on_cpu, monkeypatch):
    from up_fast import buffer as twin_ops
    from up_fast.kernels import buffer_ops

    def wrapper():
        return UniversalPretrainWrapper(
            tiny_model(num_tokens=40, dim=16), seq_len=12, batch_size=3, buffer_size=11, num_reset=2, backend='auto'
        )

    monkeypatch.setattr(backend_module, 'interpreted', lambda: True)
    model = wrapper()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the sampling check's line is not this test's
        assert model.buffer_ops(model.synth_data_buffer) is buffer_ops
    path = model.buffer_path(model.synth_data_buffer)
    assert path.fused and path.check.kernel == 'buffer'

    real_write = buffer_ops.write_rows_

    def broken_write(buffer, *args):
        out = real_write(buffer, *args)
        out[0, 0] += 1
        return out

    monkeypatch.setattr(first_use, '_results', {})
    monkeypatch.setattr(buffer_ops, 'write_rows_', broken_write)
    model = wrapper()
    with pytest.warns(UserWarning, match='fused buffer kernel.*the write-back'):
        assert model.buffer_ops(model.synth_data_buffer) is twin_ops


def test_the_mode_choice_prefers_the_persistent_kernel_within_noise():
    assert first_use.choose_mode({}) is None
    assert first_use.choose_mode({'phases': 2.0}) == 'phases'
    assert first_use.choose_mode({'persistent': 1.0, 'phases': 0.9}) == 'persistent'  # within the margin
    assert first_use.choose_mode({'persistent': 1.0, 'phases': 0.5}) == 'phases'
    assert first_use.choose_mode({'persistent': 0.5, 'phases': 1.0}) == 'persistent'
