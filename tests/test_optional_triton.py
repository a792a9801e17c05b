"""Triton is optional: the CPU path never imports it, and asking for the Triton backend without it
is a clear error that says what to install. Triton's absence is simulated (sys.modules, or an
import hook in a fresh interpreter), so these run whether or not it is installed."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper
from up_fast import backend as backend_module
from up_fast.backend import check_backend, use_triton


@pytest.fixture
def without_triton(monkeypatch):
    # a None entry in sys.modules makes `import triton` raise ImportError and find_spec return None
    for name in [name for name in sys.modules if name == 'triton' or name.startswith('triton.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'triton', None)
    backend_module.triton_problem.cache_clear()
    yield
    backend_module.triton_problem.cache_clear()


def test_triton_backend_without_triton_says_what_to_install(without_triton, monkeypatch):
    with pytest.raises(
        ValueError,
        match=r'backend asks for the Triton backend .* not installed: .*pip install triton.*CUDA build of torch',
    ):
        SyntheticDataGenerator(dim=8, num_tokens=10, backend='triton')
    with pytest.raises(ValueError, match=r'backend asks for the Triton backend .* not installed: .*pip install triton'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, backend='triton')

    monkeypatch.setenv('UP_FAST_BACKEND', 'triton')
    with pytest.raises(ValueError, match=r'UP_FAST_BACKEND asks for the Triton backend .* pip install triton'):
        check_backend(None)
    with pytest.raises(ValueError, match=r'UP_FAST_BACKEND asks for the Triton backend'):
        SyntheticDataGenerator(dim=8, num_tokens=10)


def test_use_triton_without_triton_says_what_to_install(without_triton, monkeypatch):
    # a backend chosen while Triton was there, asked to sample after it went
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with pytest.raises(
        ValueError, match=r"backend='triton' cannot run here: Triton is not installed .*pip install triton"
    ):
        use_triton('triton', torch.device('cpu'))


def test_auto_and_torch_sample_without_triton(without_triton, monkeypatch):
    monkeypatch.delenv('UP_FAST_BACKEND', raising=False)
    for backend in ('auto', 'torch', None):
        torch.manual_seed(0)
        wrapper = UniversalPretrainWrapper(
            tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, backend=backend
        )
        batch = wrapper.data_step_()
        assert batch.shape == (4, 16) and int(batch.max()) < 256
    monkeypatch.setattr(backend_module, '_warned', set())
    with pytest.warns(UserWarning, match='PyTorch path on a CUDA device: Triton is not installed .*pip install triton'):
        assert not use_triton('auto', torch.device('cuda')), 'auto without Triton must take the PyTorch path'


# a fresh interpreter in which `import triton` fails, and which records every attempt whose importer
# (the innermost frame outside importlib) is one of up_fast's own files; torch's and other
# libraries' optional probes are theirs to make
HIDE_TRITON = textwrap.dedent("""
    import sys, traceback
    from pathlib import Path

    OWN = ('up_fast', 'kernels')
    ATTEMPTS = []

    class HideTriton:
        def find_spec(self, name, path=None, target=None):
            if name == 'triton' or name.startswith('triton.'):
                frames = traceback.extract_stack()[:-1]
                own = [i for i, f in enumerate(frames) if not f.filename.startswith('<frozen')]
                importer = frames[own[-1]]
                called = frames[own[-1] + 1].name if own[-1] + 1 < len(frames) else ''
                probe = called in ('find_spec', '_find_spec')       # importlib.util.find_spec: looks, imports nothing
                path = Path(importer.filename)
                if not probe and path.parent.name in OWN and 'site-packages' not in path.parts:
                    ATTEMPTS.append(''.join(traceback.format_list([frames[i] for i in own[-3:]])))
                raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)', name=name)
            return None

    sys.meta_path.insert(0, HideTriton())
""")

CPU_PATH = textwrap.dedent("""
    import torch
    import up_fast, up_fast.cli, up_fast.profiling, up_fast.sampling, up_fast.up_wrapper
    from up_fast import SyntheticDataGenerator

    torch.manual_seed(0)
    generator = SyntheticDataGenerator(dim=16, num_tokens=20, max_seq_len=8)    # backend 'auto'
    tokens = generator.generate(8, seed=torch.randint(0, 20, (2, 3)))
    assert tokens.shape == (2, 8)

    try:
        SyntheticDataGenerator(dim=16, num_tokens=20, backend='triton')
    except ValueError as err:
        assert 'pip install triton' in str(err), err
    else:
        raise AssertionError('backend="triton" without Triton did not raise')

    assert not ATTEMPTS, 'up_fast imported triton on the CPU path:\\n' + '\\n'.join(ATTEMPTS)
    print('ok')
""")


@pytest.mark.slow
def test_cpu_path_never_imports_triton():
    result = subprocess.run(
        [sys.executable, '-c', HIDE_TRITON + CPU_PATH],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, 'UP_FAST_BACKEND': 'auto'},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stdout + result.stderr
