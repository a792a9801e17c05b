"""The study of where UP helps (benchmarks/data_size_study.py) at toy sizes: every point of the curve
is run once per start and seed, each scored at its best validation step, an interrupted study picks
up where it stopped, and the report's verdicts follow the rule it states."""

import json
import sys

import pytest

from benchmarks import data_size_study as study

TOY = [
    '--sources',
    'xt',
    '--pretrain-steps',
    '2,1',
    '--seeds',
    '2',
    '--finetune-steps',
    '4',
    '--eval-every',
    '2',
    '--sizes',
    '300,0',
    '--larger-bytes',
    '0',
    '--workers',
    '1',
]


def run(monkeypatch, out, *extra):
    monkeypatch.setattr(sys, 'argv', ['data_size_study', *TOY, '--out', str(out), *extra])
    study.main()
    return [json.loads(line) for line in (out / study.RAW).read_text().splitlines()]


def test_every_point_runs_once_and_is_scored_at_its_best_validation_step(monkeypatch, tmp_path):
    records = run(monkeypatch, tmp_path)
    starts = {('xt', 2), ('xt', 1), (study.SCRATCH, 0)}
    keys = [(r['source'], r['pretrain_steps'], r['seed'], r['train_bytes']) for r in records]
    pool = max(r['train_bytes'] for r in records)  # 0: the whole training part of the licence
    assert sorted(keys) == sorted((s, n, seed, size) for s, n in starts for seed in (0, 1) for size in (300, pool))
    for r in records:
        index = r['steps'].index(r['best_step'])
        assert r['validation'][index] == min(r['validation']) and r['best'] == r['held_out'][index]
    # the scratch start is shared: the same model on the same batches, so every start's step-0 figures of a seed
    # differ from scratch's only by what pre-training changed
    scratch = {(r['seed'], r['train_bytes']): r for r in records if r['source'] == study.SCRATCH}
    assert len({r['held_out'][0] for r in scratch.values() if r['seed'] == 0}) == 1
    for name in ('data_size_study.md', 'data_size_study.csv', 'data_size_study.png'):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / 'data_size_study.md').read_text()
    assert '--sources xt --pretrain-steps 2,1' in report and ('LICENSE.txt' in report or 'argparse.py' in report)

    assert run(monkeypatch, tmp_path) == records  # nothing left to run: the same results, no run twice


def test_an_interrupted_study_runs_only_what_is_missing(monkeypatch, tmp_path):
    records = run(monkeypatch, tmp_path)
    kept = [r for r in records if not (r['seed'] == 1 and r['source'] == 'xt' and r['pretrain_steps'] == 1)]
    (tmp_path / study.RAW).write_text(''.join(json.dumps(r) + '\n' for r in kept))
    again = run(monkeypatch, tmp_path)
    assert again[: len(kept)] == kept
    assert {(r['source'], r['pretrain_steps'], r['seed']) for r in again[len(kept) :]} == {('xt', 1, 1)}
    rerun = {r['train_bytes']: r['held_out'] for r in again[len(kept) :]}
    lost = {r['train_bytes']: r['held_out'] for r in records if r not in kept}
    assert rerun == lost  # the same seed repeats the same run


@pytest.mark.parametrize(
    'differences, judged',
    [
        ([0.30, 0.35, 0.32], 'UP ahead'),
        ([-0.30, -0.35, -0.32], 'scratch ahead'),
        ([0.01, 0.20, 0.05], 'within the spread'),  # positive on every seed, but one seed carries the mean
        ([0.1, -0.1, 0.05], 'within the spread'),
        ([0.3], 'one seed'),
    ],
)
def test_a_regime_counts_only_past_the_spread_across_seeds(differences, judged):
    assert study.judge(differences) == judged
