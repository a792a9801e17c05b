"""backend='auto' | 'triton' | 'torch' (and UP_FAST_BACKEND): which path samples, and clear errors."""

import warnings

import pytest
import torch
from conftest import tiny_model

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper
from up_fast import backend as backend_module
from up_fast.backend import check_backend, use_triton

triton_missing = backend_module.triton_problem()


def test_invalid_backend_names_the_argument(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        SyntheticDataGenerator(dim=8, num_tokens=10, backend='cuda')
    monkeypatch.setenv('UP_FAST_BACKEND', 'fast')
    with pytest.raises(ValueError, match="UP_FAST_BACKEND must be one of .* got 'fast'"):
        check_backend(None)
    with pytest.raises(
        ValueError, match=r"backend='torch' chooses the default data generator's backend.*with no backend of its own"
    ):
        from x_transformers.up_wrapper import SyntheticDataGenerator as Reference

        UniversalPretrainWrapper(
            tiny_model(), data_generator=Reference(dim=32, num_tokens=256, max_seq_len=16), seq_len=16, backend='torch'
        )


def test_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv('UP_FAST_BACKEND', 'torch')
    assert SyntheticDataGenerator(dim=8, num_tokens=10).backend == 'torch'
    monkeypatch.delenv('UP_FAST_BACKEND')
    assert SyntheticDataGenerator(dim=8, num_tokens=10).backend == 'auto'
    wrapper = UniversalPretrainWrapper(
        tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, backend='torch'
    )
    assert wrapper.data_generator.backend == 'torch'


def test_auto_and_torch_take_the_pytorch_path_on_a_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no fallback warning off CUDA
        assert not use_triton('auto', torch.device('cpu'))
    assert not use_triton('torch', torch.device('cuda'))


def test_auto_on_cuda_is_eligible_for_the_kernels_where_triton_imports(monkeypatch):
    """'auto' on CUDA no longer waits for a constant flipped after a GPU run: where Triton imports the
    kernels are eligible (the first-use check then decides); where it does not, one warning says why."""
    monkeypatch.setattr(backend_module, '_warned', set())
    if triton_missing:
        with pytest.warns(UserWarning, match='PyTorch path on a CUDA device'):
            assert not use_triton('auto', torch.device('cuda'))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert use_triton('auto', torch.device('cuda'))
    monkeypatch.setattr(backend_module, 'triton_problem', lambda: 'Triton is not installed')
    with pytest.warns(UserWarning, match='Triton is not installed'):
        assert not use_triton('auto', torch.device('cuda'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not use_triton('auto', torch.device('cuda')), 'warned once only'


def test_triton_where_it_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(ValueError, match=r"backend='triton' cannot run here: .*(CUDA|Triton)"):
        use_triton('triton', torch.device('cpu'))


@pytest.mark.skipif(triton_missing is not None, reason=f'{triton_missing}')
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the interpreter path; the GPU runs the kernel tests')
def test_triton_backend_samples_like_the_torch_backend_on_the_same_noise(monkeypatch):
    from up_fast.sampling import FoldedRecurrentNet

    twin_sample = FoldedRecurrentNet.sample
    torch.manual_seed(0)
    fast = SyntheticDataGenerator(dim=16, num_tokens=40, max_seq_len=12, backend='triton')
    twin = SyntheticDataGenerator(dim=16, num_tokens=40, max_seq_len=12, backend='torch')
    twin.load_state_dict(fast.state_dict())
    seed, condition, noise = torch.randint(0, 40, (3, 4)), torch.randint(0, 40, (3, 12)), torch.rand(3, 12, 40)
    for temperature in (1.0, 0.0):
        monkeypatch.setattr(
            FoldedRecurrentNet, 'sample', lambda *a, **k: pytest.fail('the triton backend ran the twin')
        )
        a = fast.generate(12, seed=seed, condition=condition, temperature=temperature, uniform_noise=noise)
        monkeypatch.setattr(FoldedRecurrentNet, 'sample', twin_sample)
        b = twin.generate(12, seed=seed, condition=condition, temperature=temperature, uniform_noise=noise)
        assert torch.equal(a, b)

    wrapper = UniversalPretrainWrapper(
        tiny_model(num_tokens=40, dim=16),
        seq_len=12,
        batch_size=3,
        buffer_size=10,
        num_reset=2,
        seed_length=4,
        backend='triton',
    )
    batch = wrapper.data_step_()
    rows = wrapper.last_step_rows.condition_rows
    assert batch.shape == (3, 12) and int(batch.max()) < 40
    assert int(wrapper.synth_data_buffer[rows].max()) < 40


def test_backend_reaches_the_default_generators_and_never_changes_a_given_one(monkeypatch):
    from up_fast.paper import PaperDataGenerator

    monkeypatch.delenv('UP_FAST_BACKEND', raising=False)
    wrapper = UniversalPretrainWrapper.paper(tiny_model(), batch_size=4, seq_len=16, backend='torch')
    assert isinstance(wrapper.data_generator, PaperDataGenerator) and wrapper.data_generator.backend == 'torch'
    assert wrapper.data_step_().shape == (4, 16)

    # a generator the user passes keeps the backend of its constructor: the wrapper never changes it
    given = PaperDataGenerator(dim=8, num_tokens=256, max_seq_len=16, depth=1, backend='torch')
    wrapper = UniversalPretrainWrapper(
        tiny_model(), data_generator=given, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, backend='torch'
    )
    assert given.backend == 'torch' and wrapper.backend == 'torch'
    with pytest.raises(
        ValueError, match=r"backend='auto' chooses the default data generator's backend.*backend 'torch'"
    ):
        UniversalPretrainWrapper(
            tiny_model(), data_generator=given, seq_len=16, batch_size=4, buffer_size=24, num_reset=4, backend='auto'
        )
    assert given.backend == 'torch'
    assert (
        UniversalPretrainWrapper(
            tiny_model(), data_generator=given, seq_len=16, batch_size=4, buffer_size=24, num_reset=4
        ).backend
        == 'torch'
    ), "the buffer's kernels follow the generator's backend"

    # the paper generator has no kernel: 'triton' is refused as its constructor refuses it
    if triton_missing is None:
        with pytest.raises(ValueError, match='PaperDataGenerator has none'):
            PaperDataGenerator(dim=8, num_tokens=256, max_seq_len=16, depth=1, backend='triton')
        with pytest.raises(ValueError, match='PaperDataGenerator has none'):
            UniversalPretrainWrapper.paper(tiny_model(), batch_size=4, seq_len=16, backend='triton')
