"""Which implementation samples: the fused Triton kernel or its PyTorch twin.

backend='torch' always takes the PyTorch path; 'triton' takes the kernel and fails clearly where it
cannot run (without Triton installed, already when the backend is chosen, saying what to install);
'auto' takes the kernel for CUDA tensors once it has proven itself on that device: the first call
for a kernel configuration runs its first-use check (up_fast/kernels/first_use.py) and takes a
launch mode that gave the PyTorch path's tokens (the persistent one, unless the other is clearly
faster), printing one line that says so; where none
did (or Triton cannot be imported) the PyTorch path samples and one warning says why. Off CUDA,
'auto' is the PyTorch path. The default comes from the environment variable UP_FAST_BACKEND.

Triton is an optional dependency (`up-fast[triton]`; CUDA builds of torch bring their own): nothing
here imports it before a backend other than 'torch' is asked to sample.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from dataclasses import dataclass
from functools import cache

import torch

from up_fast.config import backend_from_env, interpreted
from up_fast.helpers import exists

BACKENDS = ('auto', 'triton', 'torch')

# where backend='auto' checks the kernels at first use and takes them when they pass
AUTO_DEVICE_TYPES = frozenset({'cuda'})

INSTALL_TRITON = (
    'install it with `python3 -m pip install triton` (Linux; or `python3 -m pip install "up-fast[triton]"`), '
    'or install a CUDA build of torch, which brings its own Triton'
)


def check_backend(backend: str | None) -> str:
    if backend is None:
        backend = backend_from_env(BACKENDS)
        source = 'the environment variable UP_FAST_BACKEND'
    else:
        source = 'backend'
    if backend not in BACKENDS:
        raise ValueError(f'{source} must be one of {BACKENDS}, got {backend!r}')
    if backend == 'triton' and triton_missing():
        raise ValueError(
            f'{source} asks for the Triton backend ({backend!r}), but Triton is not installed: {INSTALL_TRITON}. '
            "backend='torch' or 'auto' samples without it"
        )
    return backend


def triton_missing() -> bool:
    """Whether the triton package cannot be found (not whether it works: see triton_problem)."""
    try:
        return importlib.util.find_spec('triton') is None
    except (ImportError, ValueError):  # a broken parent entry in sys.modules
        return True


@cache
def triton_problem() -> str | None:
    """Why the Triton kernels cannot be imported here, or None."""
    if triton_missing():
        return f'Triton is not installed ({INSTALL_TRITON})'
    try:
        import triton  # noqa: F401

        import up_fast.kernels.recurrent_sample  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising anything else
        return f'Triton could not be imported ({type(err).__name__}: {err})'
    return None


_warned = set()


def warn_once(reason: str, *, on_cuda: str = 'sampling on the PyTorch path on a CUDA device: '):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f'up_fast: {on_cuda}{reason}', stacklevel=4)


_announced = set()


def announce_once(line: str):
    """The one line that says which path a configuration takes (stderr: it is news, not a problem)."""
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)


def use_triton(backend: str, device: torch.device) -> bool:
    """Whether the kernels may run for `backend` on `device` at all: Triton imports, and the device is
    one they run on ('auto': AUTO_DEVICE_TYPES; 'triton': CUDA, or any under the interpreter). For
    'auto' a True still waits for the first-use check (BackendChoice)."""
    if backend == 'torch':
        return False

    runs_here = device.type == 'cuda' or (backend == 'triton' and interpreted())
    if backend == 'auto':
        runs_here = device.type in AUTO_DEVICE_TYPES
        if not runs_here:
            return False  # off CUDA 'auto' is the PyTorch path: no need to import Triton to know that

    problem = triton_problem()
    if not runs_here:
        problem = problem or f'the tensors are on {device}, and the Triton kernels need CUDA'

    if backend == 'triton':
        if problem:
            raise ValueError(f"backend='triton' cannot run here: {problem}. Use backend='auto' or 'torch'")
        return True

    if problem and device.type == 'cuda':
        warn_once(problem)
    return not problem


@dataclass(frozen=True)
class KernelPath:
    """Which implementation does a kernel's work on a device, and why.

    path: 'triton' (the fused kernel) or 'torch' (its PyTorch twin); mode: the kernel's launch mode
    ('persistent', 'phases', or 'auto' when pinned unchecked), None on the PyTorch path; reason: one
    sentence; check: the first-use check's result (up_fast.kernels.first_use.CheckResult) where one ran."""

    path: str
    mode: str | None
    reason: str
    check: object | None = None

    @property
    def fused(self) -> bool:
        return self.path == 'triton'


class BackendChoice:
    """A checked backend name and, per device and kernel configuration, the path that does the work:
    decided once (with the first-use check for 'auto'), not again on every call. Owned by each generator
    and wrapper, never shared; the checks' results are the process's (first_use.results())."""

    def __init__(self, backend: str | None):
        self.name = check_backend(backend)
        self.paths: dict[tuple, KernelPath] = {}

    def sampling_path(self, folded, batch: int, device: torch.device) -> KernelPath:
        """The path that samples `batch` rows of the folded net `folded` on `device`."""
        device = torch.device(device)
        key = ('sampling', device, batch, folded.cell, folded.hidden_size, folded.num_tokens, folded.bias_out is None)
        if key not in self.paths:
            self.paths[key] = self.decide(
                device, 'sampling', lambda first_use: sampling_check(first_use, folded, batch, device)
            )
        return self.paths[key]

    def buffer_path(self, dtype: torch.dtype, device: torch.device) -> KernelPath:
        """The path of the buffer's gather and write-back for a buffer of `dtype` on `device`."""
        device = torch.device(device)
        key = ('buffer', device, dtype)
        if key not in self.paths:
            self.paths[key] = self.decide(
                device, 'buffer', lambda first_use: (str(dtype), lambda: first_use.check_buffer_ops(dtype, device))
            )
        return self.paths[key]

    def decide(self, device: torch.device, kernel: str, check) -> KernelPath:
        if not use_triton(self.name, device):
            if self.name == 'torch':
                return KernelPath('torch', None, "backend='torch'")
            problem = triton_problem() if device.type in AUTO_DEVICE_TYPES else None
            return KernelPath('torch', None, problem or f"backend='auto' on {device.type} is the PyTorch path")
        if self.name == 'triton':
            return KernelPath('triton', 'auto', "backend='triton': the kernel, unchecked")

        from up_fast.kernels import first_use

        if device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"up_fast: the {kernel} kernel's first-use check cannot run while a CUDA graph is captured: run "
                "one step before capturing, or pin the path with backend='triton' or 'torch'"
            )
        what, run = check(first_use)
        result, _ = first_use.checked(kernel, what, device, run)
        line = result.line()
        if exists(result.chosen):
            announce_once(line)
            return KernelPath('triton', result.chosen, line, result)
        warn_once(line.removeprefix('up_fast: '), on_cuda='')
        return KernelPath('torch', None, line, result)


def sampling_check(first_use, folded, batch: int, device: torch.device):
    config = first_use.SamplingConfig.of(folded, batch, device)
    return config.describe(), lambda: first_use.check_sampling(config, device)
