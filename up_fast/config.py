"""The environment variables up_fast reads, in one place, with one parser each for flags and choices.

    UP_FAST_BACKEND        'auto' (default), 'triton' or 'torch': the default `backend=` of the generators
    UP_FAST_NVTX           a flag: NVTX ranges around the phases of a training step (the wrapper's `nvtx=`)
    UP_FAST_KERNEL_CHECK   a flag: the sampling kernel reads its error flag after every launch (`check=`)
    UP_FAST_CACHE_DIR      where results of the kernels' first-use checks, and the CPU path's native
                           step, are kept (default $XDG_CACHE_HOME/up_fast, else ~/.cache/up_fast)
    UP_FAST_NATIVE         a flag, on when unset: the CPU path's LSTM decoding step as one native call
                           (up_fast/cpu_step.py); off runs the PyTorch step, which gives the same tokens
    TRITON_INTERPRET       a flag, Triton's own: run the kernels in Triton's CPU interpreter

A flag is on for 1, true, yes or on and off for 0, false, no, off or empty (any case); anything else is
an error naming the variable, so that a typo never silently means "off".
"""

from __future__ import annotations

import os
from pathlib import Path

TRUE_WORDS = ('1', 'true', 'yes', 'on')
FALSE_WORDS = ('', '0', 'false', 'no', 'off')

BACKEND = 'UP_FAST_BACKEND'
NVTX = 'UP_FAST_NVTX'
KERNEL_CHECK = 'UP_FAST_KERNEL_CHECK'
TRITON_INTERPRET = 'TRITON_INTERPRET'
CACHE_DIR = 'UP_FAST_CACHE_DIR'
NATIVE = 'UP_FAST_NATIVE'


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable `name`; unset is `default`."""
    if name not in os.environ:
        return default
    value = os.environ[name].strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(
        f'the environment variable {name} must be one of {TRUE_WORDS + FALSE_WORDS[1:]} (any case), '
        f'got {os.environ[name]!r}'
    )


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The environment variable `name`, one of `choices` (any case); unset or empty is `default`."""
    value = os.environ.get(name, '').strip().lower() or default
    if value not in choices:
        raise ValueError(f'the environment variable {name} must be one of {choices}, got {os.environ[name]!r}')
    return value


def backend_from_env(choices: tuple[str, ...]) -> str:
    return env_choice(BACKEND, choices, 'auto')


def nvtx_from_env() -> bool:
    return env_flag(NVTX)


def kernel_check_from_env() -> bool:
    return env_flag(KERNEL_CHECK)


def native_from_env() -> bool:
    return env_flag(NATIVE, default=True)


def interpreted() -> bool:
    """Whether Triton runs its CPU interpreter (read when kernels are decorated, so set it before importing them)."""
    return env_flag(TRITON_INTERPRET)


def cache_dir() -> Path:
    """Where up_fast keeps what it learns about this machine (the kernels' first-use checks)."""
    if os.environ.get(CACHE_DIR, '').strip():
        return Path(os.environ[CACHE_DIR]).expanduser()
    base = os.environ.get('XDG_CACHE_HOME', '').strip() or Path.home() / '.cache'
    return Path(base) / 'up_fast'
