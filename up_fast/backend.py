"""Which implementation samples: the fused Triton kernel or its PyTorch twin.

backend='torch' always takes the PyTorch path; 'triton' takes the kernel and fails clearly where it
cannot run (without Triton installed, already when the backend is chosen, saying what to install);
'auto' takes the kernel for CUDA tensors when Triton imports and the kernels have been validated on
a GPU (up_fast.kernels.VALIDATED_ON_GPU), else the PyTorch path, warning once on a CUDA device with
the reason. The default comes from the environment variable UP_FAST_BACKEND.

Triton is an optional dependency (`up-fast[triton]`; CUDA builds of torch bring their own): nothing
here imports it before a backend other than 'torch' is asked to sample.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import cache

import torch

from up_fast.config import backend_from_env, interpreted

BACKENDS = ('auto', 'triton', 'torch')

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


def warn_once(reason: str):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f'up_fast: sampling on the PyTorch path on a CUDA device: {reason}', stacklevel=3)


def use_triton(backend: str, device: torch.device) -> bool:
    if backend == 'torch':
        return False

    runs_here = device.type == 'cuda' or (backend == 'triton' and interpreted())
    if backend == 'auto' and not runs_here:
        return False  # off CUDA 'auto' is the PyTorch path: no need to import Triton to know that

    problem = triton_problem()
    if not runs_here:
        problem = problem or f'the tensors are on {device}, and the Triton kernels need CUDA'

    if backend == 'triton':
        if problem:
            raise ValueError(f"backend='triton' cannot run here: {problem}. Use backend='auto' or 'torch'")
        return True

    from up_fast import kernels

    if not problem and not kernels.VALIDATED_ON_GPU:
        problem = "the Triton kernels are not yet validated on a GPU; pass backend='triton' to use them anyway"
    if problem and device.type == 'cuda':
        warn_once(problem)
    return not problem


class BackendChoice:
    """A checked backend name and, per device, whether it takes the Triton kernels: decided once a device
    (use_triton), not again on every call. Owned by each generator and wrapper, never shared."""

    def __init__(self, backend: str | None):
        self.name = check_backend(backend)
        self.kernels_on: dict[torch.device, bool] = {}

    def takes_kernels(self, device: torch.device) -> bool:
        if device not in self.kernels_on:
            self.kernels_on[device] = use_triton(self.name, device)
        return self.kernels_on[device]
