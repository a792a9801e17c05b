"""Kernel launches of the fused paths, counted under the interpreter.

On a GPU every launch costs a few microseconds of the host's time whatever it computes, so the
number of launches a sampling step and a training step is part of the kernels' contract: the
phase-per-launch mode at most 3 launches a sampled step, the persistent mode one launch a call,
the buffer's gather and write-back a fixed handful a training step. Each Triton kernel of a module
is wrapped in a counter; a dispatch mode counts the PyTorch operations issued between the launches
(those inside an interpreted launch are the interpreter's own, and are not counted), so that
nothing else grows with the number of steps either.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import collections  # noqa: E402
import contextlib  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip('triton')
from conftest import tiny_model  # noqa: E402
from test_kernel_recurrent_sample import make_net, to_device  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402

from up_fast import UniversalPretrainWrapper  # noqa: E402
from up_fast.kernels import buffer_ops  # noqa: E402
from up_fast.kernels import recurrent_sample as rs  # noqa: E402

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
VIEW_OPS = {'view', '_unsafe_view', 'select', 'slice', 'as_strided', 'reshape', 'expand', 'unsqueeze', 'squeeze'}


class HostOps(TorchDispatchMode):
    """Non-view aten ops issued outside the counted kernels' launches."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and name not in VIEW_OPS and name != 'lift_fresh':
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class CountedKernel:
    """A JIT kernel whose launches `kernel[grid](...)` are counted in `launches`."""

    def __init__(self, name, kernel, launches, host_ops):
        self.name, self.kernel, self.launches, self.host_ops = name, kernel, launches, host_ops

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.launches[self.name] += 1
            paused, self.host_ops.paused = self.host_ops.paused, True
            try:
                return launch(*args, **kwargs)
            finally:
                self.host_ops.paused = paused

        return counted

    def __getattr__(self, name):
        return getattr(self.kernel, name)


@contextlib.contextmanager
def counting(monkeypatch, *modules):
    """(launches by kernel name, host ops) of everything run inside the block."""
    launches, host_ops = collections.Counter(), HostOps()
    for module in modules:
        for name, value in list(vars(module).items()):
            # the launched kernels, not the helpers they call (a compiled kernel resolves those itself)
            if isinstance(value, KernelInterface) and name.endswith('_kernel'):  # jitted, or interpreted
                monkeypatch.setattr(module, name, CountedKernel(name, value, launches, host_ops))
    with host_ops:
        yield launches, host_ops.ops
    monkeypatch.undo()


def sample_counts(monkeypatch, mode, cell, prefix_len, length):
    net = make_net(cell, 20, 16, seed=prefix_len + length)
    g = torch.Generator().manual_seed(length)
    prefix = torch.randint(0, 20, (4, prefix_len), generator=g).to(DEVICE)
    noise = torch.rand(4, length, 20, generator=g).to(DEVICE)
    folded = to_device(net.folded, DEVICE)
    with counting(monkeypatch, rs) as (launches, host_ops):
        rs.fused_recurrent_sample(folded, prefix, length, 1.0, uniform_noise=noise, mode=mode)
    return dict(launches), dict(host_ops)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_phases_mode_launches_at_most_3_a_sampled_step(monkeypatch, cell):
    sample_counts(monkeypatch, 'phases', cell, prefix_len=2, length=1)  # once-a-process allocations first
    short, short_ops = sample_counts(monkeypatch, 'phases', cell, prefix_len=2, length=3)
    long, long_ops = sample_counts(monkeypatch, 'phases', cell, prefix_len=2, length=6)
    # one feed per prefix token and sampled token but the last, one logits launch per sampled token, one final
    assert short == {'recurrent_phase_kernel': 2 + 2 * 3}, short
    assert long == {'recurrent_phase_kernel': 2 + 2 * 6}, long
    per_step = (long['recurrent_phase_kernel'] - short['recurrent_phase_kernel']) / 3
    assert per_step <= 3
    assert long_ops == short_ops, 'the host issues work outside the kernels that grows with the steps'


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_persistent_mode_is_one_launch_a_call(monkeypatch, cell):
    sample_counts(monkeypatch, 'persistent', cell, prefix_len=2, length=1)  # once-a-process allocations first
    short, short_ops = sample_counts(monkeypatch, 'persistent', cell, prefix_len=2, length=3)
    long, long_ops = sample_counts(monkeypatch, 'persistent', cell, prefix_len=2, length=6)
    assert short == long == {'recurrent_sample_kernel': 1}, (short, long)
    assert long_ops == short_ops, 'the host issues work outside the kernel that grows with the steps'


def test_buffer_kernels_launch_a_fixed_handful_a_training_step(monkeypatch):
    """A data step gathers its condition and seed rows and writes the new rows back: the same launches
    every step, one write-back and at most two gathers (the sampling kernels are not counted here)."""
    wrapper = UniversalPretrainWrapper(
        tiny_model(num_tokens=40, dim=16), seq_len=12, batch_size=3, buffer_size=11, num_reset=2, backend='triton'
    ).to(DEVICE)
    counts = []
    for _ in range(3):
        with counting(monkeypatch, buffer_ops) as (launches, _):
            wrapper.data_step_()
        counts.append(dict(launches))
    assert counts[0] == counts[1] == counts[2], counts
    assert set(counts[0]) == {'gather_kernel', 'write_kernel'}, counts[0]
    assert counts[0]['write_kernel'] == 1 and counts[0]['gather_kernel'] <= 2, counts[0]
