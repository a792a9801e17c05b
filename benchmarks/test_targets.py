"""benchmarks/targets.py and the end-of-run summary on made-up medians: a target that is not met is
reported with its ratio and fails nothing unless it is asserted on this device.

A plain test, not a benchmark: `pytest benchmarks/test_targets.py` (--benchmark-only skips it).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks import harness, report, targets
from benchmarks.sizes import Size

REPO = Path(__file__).resolve().parents[1]

EXAMPLE = Size('example', batch=32, hidden=256, num_tokens=256, seq_len=512, rounds=1)
SATURATING = Size('saturating-batch', batch=4096, hidden=256, num_tokens=256, seq_len=512, rounds=1)


@pytest.fixture
def fresh_run(monkeypatch):
    """Empty medians and results, as at the start of a session."""
    monkeypatch.setattr(harness, 'MEDIANS', {})
    monkeypatch.setattr(targets, 'MEDIANS', harness.MEDIANS)
    monkeypatch.setattr(targets, 'RESULTS', {})
    return harness.MEDIANS


def on(monkeypatch, device: str):
    monkeypatch.setattr(targets, 'DEVICE', torch.device(device))


def test_unmet_cpu_target_is_reported_with_its_ratio_and_fails_nothing(fresh_run, monkeypatch):
    on(monkeypatch, 'cpu')
    fresh_run[('generate', 'example', 'reference')] = 0.30
    fresh_run[('generate', 'example', 'up_fast-torch')] = 0.12  # 2.5x against a target of 3x

    targets.check_targets('generate', EXAMPLE, 'up_fast-torch')  # must not raise

    result = targets.RESULTS['generate 3x on a CPU']
    assert result['status'] == 'not met' and result['met'] is False and result['asserted'] is False
    assert result['measured'] == '2.50x' and result['target'] == '>= 3.00x'
    assert result['ratio_to_target'] == pytest.approx(2.5 / 3)

    fresh_run[('generate', 'example', 'up_fast-torch')] = 0.09  # 3.33x
    targets.check_targets('generate', EXAMPLE, 'up_fast-torch')
    assert targets.RESULTS['generate 3x on a CPU']['status'] == 'met'


def test_gpu_targets_are_asserted_on_cuda_only(fresh_run, monkeypatch):
    steps = targets.sequential_steps(EXAMPLE)
    assert steps == 8 + 512 + 512 - 1
    fresh_run[('generate', 'example', 'reference')] = 0.10
    fresh_run[('generate', 'example', 'up_fast-triton')] = 0.01  # 10x, 9.7 us a step: both unmet

    on(monkeypatch, 'cpu')
    targets.check_targets('generate', EXAMPLE, 'up_fast-triton')  # set for CUDA: nothing checked here
    assert targets.RESULTS == {}

    on(monkeypatch, 'cuda')
    with pytest.raises(
        AssertionError, match=r'generate 30x on CUDA: measured 10.00x, target >= 30.00x.*2 us a sequential step'
    ):
        targets.check_targets('generate', EXAMPLE, 'up_fast-triton')
    assert targets.RESULTS['2 us a sequential step on CUDA']['measured'] == f'{0.01 / steps * 1e6:.2f} us'

    fresh_run[('generate', 'example', 'up_fast-triton')] = 0.0015  # 66.7x, 1.45 us a step
    targets.check_targets('generate', EXAMPLE, 'up_fast-triton')
    assert {targets.RESULTS[name]['status'] for name in ('generate 30x on CUDA', '2 us a sequential step on CUDA')} == {
        'met'
    }


def test_data_share_and_batch_targets(fresh_run, monkeypatch):
    on(monkeypatch, 'cuda')
    fresh_run[('data step', 'example', 'up_fast-triton')] = 0.004
    fresh_run[('train step', 'example', 'up_fast-triton')] = 0.100  # 4% of the step: over 3%
    with pytest.raises(
        AssertionError, match=r'data step <= 3% of a training step on CUDA: measured 4.0%, target <= 3.0%'
    ):
        targets.check_targets('train step', EXAMPLE, 'up_fast-triton')

    fresh_run[('generate', 'saturating-batch', 'reference')] = 6.0
    fresh_run[('generate', 'saturating-batch', 'up_fast-triton')] = 0.1  # 60x
    targets.check_targets('generate', SATURATING, 'up_fast-triton')
    assert targets.RESULTS['tokens/s 50x at batch 4096 on CUDA']['status'] == 'met'


def test_visible_data_share_with_and_without_prefetch(fresh_run, monkeypatch):
    on(monkeypatch, 'cuda')
    fresh_run[(targets.TRANSFORMER_ONLY, 'example', 'up_fast-triton')] = 0.0960
    fresh_run[('training step', 'example', 'up_fast-triton')] = 0.1000  # 4% visible: over 3%
    with pytest.raises(AssertionError, match=r'data visible <= 3% of a training step on CUDA: measured 4.0%'):
        targets.check_targets('training step', EXAMPLE, 'up_fast-triton')

    fresh_run[('training step, prefetch', 'example', 'up_fast-triton')] = 0.0965  # 0.5% visible
    targets.check_targets('training step, prefetch', EXAMPLE, 'up_fast-triton')
    result = targets.RESULTS['data visible <= 1% of a training step with prefetch on CUDA']
    assert result['status'] == 'met' and result['measured'] == '0.5%'

    del fresh_run[(targets.TRANSFORMER_ONLY, 'example', 'up_fast-triton')]
    targets.check_targets('training step, prefetch', EXAMPLE, 'up_fast-triton')
    assert 'transformer only' in targets.RESULTS['data visible <= 1% of a training step with prefetch on CUDA']['why']


def test_missing_reference_is_not_measured_not_a_failure(fresh_run, monkeypatch):
    on(monkeypatch, 'cuda')
    fresh_run[('generate', 'example', 'up_fast-triton')] = 0.0015  # the reference was deselected
    targets.check_targets('generate', EXAMPLE, 'up_fast-triton')
    result = targets.RESULTS['generate 30x on CUDA']
    assert result['status'] == 'not measured' and 'the reference did not run' in result['why']
    assert targets.RESULTS['2 us a sequential step on CUDA']['status'] == 'met'  # needs no reference


PAPER_AUTHOR = Size('paper-author', batch=104, hidden=128, num_tokens=256, seq_len=512, rounds=1, seed_length=8)


def test_the_paper_generator_target_is_against_the_authors_loop(fresh_run, monkeypatch):
    # up_fast-torch over author-nn.LSTM (not over the reference), on a CPU, reported only
    name = "paper generate 3x the author's loop on a CPU"
    on(monkeypatch, 'cpu')
    fresh_run[('paper-generate', 'paper-author', 'up_fast-torch')] = 0.4
    targets.check_targets('paper-generate', PAPER_AUTHOR, 'up_fast-torch')
    assert 'the author-nn.LSTM did not run' in targets.RESULTS[name]['why']

    fresh_run[('paper-generate', 'paper-author', 'author-nn.LSTM')] = 1.0  # 2.5x: not met, and no failure
    targets.check_targets('paper-generate', PAPER_AUTHOR, 'up_fast-torch')
    result = targets.RESULTS[name]
    assert (result['status'], result['measured'], result['asserted']) == ('not met', '2.50x', False)
    rows = {row['name']: row for row in targets.summary({}, set())}
    assert rows[name]['status'] == 'not met'

    on(monkeypatch, 'cuda')
    monkeypatch.setattr(targets, 'RESULTS', {})
    assert {row['name']: row for row in targets.summary({}, set())}[name]['why'] == 'set for CPU; this run is on CUDA'


def test_summary_says_why_each_target_was_not_measured(fresh_run, monkeypatch):
    on(monkeypatch, 'cpu')
    fresh_run[('generate', 'example', 'reference')] = 0.30
    fresh_run[('generate', 'example', 'up_fast-torch')] = 0.12
    targets.check_targets('generate', EXAMPLE, 'up_fast-torch')

    skipped = {
        'benchmarks/test_generate.py::test_generate[example-up_fast-triton]': (
            'no Triton path on a CPU: the kernel needs CUDA'
        ),
        'benchmarks/test_train_step.py::test_train_step[up_fast-triton]': (
            'no Triton path on a CPU: the kernel needs CUDA'
        ),
        'benchmarks/test_report.py::test_table_and_plot': 'Skipping non-benchmark (--benchmark-only active).',
    }
    rows = {row['name']: row for row in targets.summary(skipped, set())}
    assert rows['generate 3x on a CPU']['status'] == 'not met'
    assert rows['generate 30x on CUDA']['why'] == 'set for CUDA; this run is on CPU'

    lines = targets.summary_lines(list(rows.values()), skipped)
    text = '\n'.join(lines)
    assert (
        'NOT MET      generate 3x on a CPU (cpu, reported only): measured 2.50x, target >= 3.00x, measured / target '
        '0.83' in text
    )
    assert 'do not fail the run' in text
    assert '  2 skipped: no Triton path on a CPU: the kernel needs CUDA (test_generate.py, test_train_step.py)' in lines
    assert '  1 skipped: Skipping non-benchmark (--benchmark-only active). (test_report.py)' in lines

    # on CUDA, the same session would say which benchmark was skipped, or deselected
    on(monkeypatch, 'cuda')
    monkeypatch.setattr(targets, 'RESULTS', {})
    rows = {row['name']: row for row in targets.summary(skipped, set())}
    assert (
        rows['generate 30x on CUDA']['why']
        == 'its benchmark was skipped: no Triton path on a CPU: the kernel needs CUDA'
    )
    assert rows['tokens/s 50x at batch 4096 on CUDA']['why'] == 'its benchmark was not run (deselected)'


def test_report_prints_the_targets_and_the_skips(tmp_path, capsys):
    rows = [
        targets.result_of(targets.TARGETS[0], 2.5),
        targets.result_of(targets.TARGETS[1], None, 'set for CUDA; this run is on CPU'),
    ]
    results = dict(
        benchmarks=[],
        up_fast_targets=rows,
        up_fast_skipped={'benchmarks/test_soak.py::test_soak_data_path[triton]': 'no Triton path on a CPU: needs CUDA'},
    )
    path = tmp_path / 'run.json'
    path.write_text(json.dumps(results))
    assert report.main([str(path), '--no-plot', '--out', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert (
        f'| generate 3x on a CPU | {targets.TARGETS[0].reason} | cpu | not met | 2.50x | >= 3.00x | 0.83 | no '
        '(reported only) | - |' in printed
    )
    assert (
        f'| generate 30x on CUDA | {targets.TARGETS[1].reason} | cuda | not measured | - | >= 30.00x | - | yes | set '
        'for CUDA; this run is on CPU |' in printed
    )
    assert '| 1 | no Triton path on a CPU: needs CUDA | test_soak_data_path[triton] |' in printed


# a whole pytest session through the benchmarks' own hooks (benchmarks/conftest.py), on made-up medians
FAKE_BENCHMARKS = textwrap.dedent("""
    import pytest
    from benchmarks import harness, targets
    from benchmarks.sizes import Size

    EXAMPLE = Size('example', batch=32, hidden=256, num_tokens=256, seq_len=512, rounds=1)

    def test_generate_cpu_target_unmet():
        harness.MEDIANS[('generate', 'example', 'reference')] = 0.30
        harness.MEDIANS[('generate', 'example', 'up_fast-torch')] = 0.12
        targets.check_targets('generate', EXAMPLE, 'up_fast-torch')

    def test_generate_example_up_fast_triton():
        pytest.skip('no Triton path on a CPU: the kernel needs CUDA')
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason='the made-up session is a CPU one')
def test_a_session_with_an_unmet_reported_target_is_green(tmp_path):
    (tmp_path / 'conftest.py').write_text(
        'from benchmarks.conftest import *  # noqa: F401,F403  the hooks under test\n'
    )
    (tmp_path / 'test_fake.py').write_text(FAKE_BENCHMARKS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--rootdir', str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert 'up_fast speed targets, and what was skipped' in out
    assert 'NOT MET      generate 3x on a CPU (cpu, reported only): measured 2.50x' in out
    assert 'not measured generate 30x on CUDA (cuda, asserted): set for CUDA; this run is on CPU' in out
    assert '1 skipped: no Triton path on a CPU: the kernel needs CUDA (test_fake.py)' in out
