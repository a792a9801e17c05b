"""A side environment with Triton 3.6 (the Triton torch 2.11 ships with) for the compile gate, made on request.

The package never installs anything: this is development tooling. The Triton 3.6 half of the
compile gate (tests/test_compile_gate.py) runs when asked for, and then makes the side environment
on first use under the repository, in `.cache/triton-<version>/` (git-ignored; about 640 MB
installed; UP_FAST_CACHE moves it):

    python -m pytest tests/test_compile_gate.py --triton-side      # or UP_FAST_TRITON_SIDE=1, or CI=true
    python -m benchmarks.compile_report --triton 3.6               # the table under Triton 3.6
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIDE_TRITON_VERSION = '3.6.0'
SIDE_ENV = 'UP_FAST_TRITON_SIDE'
ROOT = Path(__file__).resolve().parents[1]


def env_flag(name: str) -> bool | None:
    """True or False when the environment variable `name` says so, None when it is unset or empty."""
    value = os.environ.get(name, '').strip().lower()
    if not value:
        return None
    return value not in ('0', 'false', 'no', 'off')


def side_wanted(option: bool = False) -> bool:
    """Whether to run the compile gate under the side Triton: UP_FAST_TRITON_SIDE when set (0 or 1),
    else the pytest option --triton-side, else a true CI variable (CI runs it by default)."""
    explicit = env_flag(SIDE_ENV)
    if explicit is not None:
        return explicit
    return option or bool(env_flag('CI'))


def cache_root() -> Path:
    return Path(os.environ.get('UP_FAST_CACHE', ROOT / '.cache'))


def side_environment(version: str = SIDE_TRITON_VERSION) -> Path:
    """A folder holding triton==`version` alone (pip --target, no dependencies), made on first use.

    Made in a temporary folder and renamed into place, so that two concurrent callers never see
    half an install. Raises RuntimeError with pip's output when the install fails (e.g. offline).
    """
    target = cache_root() / f'triton-{version}'
    if (target / 'triton' / '__init__.py').exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f'triton-{version}.partial-', dir=target.parent))
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'install',
            '--quiet',
            '--disable-pip-version-check',
            '--no-deps',
            '--target',
            str(partial),
            f'triton=={version}',
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        subprocess.run(['rm', '-rf', str(partial)])
        raise RuntimeError(f'pip install triton=={version} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}')
    try:
        partial.rename(target)
    except OSError:  # another caller finished first
        subprocess.run(['rm', '-rf', str(partial)])
    return target
