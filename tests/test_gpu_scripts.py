"""The GPU session script and the target-environment script: their own machinery, without a GPU.

The steps themselves run in `bash benchmarks/gpu_session.sh --dry-run` (minutes); here only what
must hold on any machine: the scripts parse, teach with --help, refuse unknown arguments, and the
session script without a GPU (and without --dry-run) stops at once with exit 2 and a summary.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SESSION = ROOT / 'benchmarks' / 'gpu_session.sh'
TARGET_ENV = ROOT / 'benchmarks' / 'target_env.sh'

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')


def run(*args, **env):
    return subprocess.run(['bash', *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env or None)


@pytest.mark.parametrize('script', [SESSION, TARGET_ENV], ids=['gpu_session', 'target_env'])
def test_the_script_parses(script):
    assert run('-n', script).returncode == 0


def test_session_help_names_every_step_and_the_dry_run():
    done = run(SESSION, '--help')
    assert done.returncode == 0, done.stderr
    for step in ('firstuse', 'parity', 'step', 'headline', 'ncu', 'memcheck', 'racecheck', 'tests', 'bench'):
        assert f'  {step} ' in done.stdout, step
    assert '--dry-run' in done.stdout and 'set -uo' not in done.stdout


def test_session_refuses_an_unknown_argument():
    done = run(SESSION, '--dryrun')
    assert done.returncode == 2 and "unknown argument '--dryrun'" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU exit')
def test_session_without_a_gpu_stops_with_a_summary(tmp_path):
    done = run(SESSION, **os.environ, OUT=str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'no CUDA device here' in done.stdout
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['passed'] is False and summary['steps'] == [] and summary['dry_run'] is False


def test_target_env_refuses_an_unknown_command():
    done = run(TARGET_ENV, 'install')
    assert done.returncode == 2 and 'usage: bash benchmarks/target_env.sh' in done.stderr
