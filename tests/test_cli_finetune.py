"""`up-fast finetune`: the verdict follows from the printed figures, the fresh model itself comes out
level, library state_dicts load, bad arguments are clean errors. Tiny models, tmp paths only."""

import csv
import re
import statistics

import pytest
import torch

from up_fast import UniversalPretrainWrapper
from up_fast.byte_model import build_model
from up_fast.cli import main

TINY_PRETRAIN = [
    '--steps',
    '3',
    '--dim',
    '16',
    '--depth',
    '1',
    '--heads',
    '2',
    '--seq-len',
    '16',
    '--batch-size',
    '4',
    '--source',
    'xt',
    '--eval-every',
    '0',
]
QUICK = ['--steps', '4', '--eval-every', '2', '--seeds', '2', '--batch-size', '4', '--lr', '3e-3']
TINY = dict(num_tokens=256, dim=16, depth=1, heads=2, seq_len=16)


@pytest.fixture(scope='module')
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp('text') / 'text.txt'
    path.write_bytes(b'the cat sat on the mat; the dog sat on the log. ' * 12)
    return path


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pt'
    main(['pretrain', *TINY_PRETRAIN, '--out', str(path)])
    return path


def finetune(capsys, *argv):
    main(['finetune', *QUICK, *argv])
    return capsys.readouterr().out


def per_seed(out):
    return [
        (int(seed), float(pre), float(scratch))
        for seed, pre, scratch in re.findall(
            r'^\s+seed (\d+): pre-trained (\d+\.\d{3}), scratch (\d+\.\d{3})$', out, re.MULTILINE
        )
    ]


def read_csv(path):
    with open(path, newline='') as file:
        return list(csv.DictReader(file))


def test_the_verdict_follows_from_the_printed_figures(checkpoint, text, capsys, tmp_path):
    out = finetune(capsys, '--checkpoint', str(checkpoint), '--text', str(text), '--out', str(tmp_path / 'curves.csv'))
    seeds = per_seed(out)
    assert [seed for seed, _, _ in seeds] == [0, 1]

    # recomputed here from the printed per-seed figures: at the last step, and at each start's best validation step
    final = re.search(r'^at the last step: (.*)$', out, re.MULTILINE).group(1)
    assert_verdict_follows(final, [(pre, scratch) for _, pre, scratch in seeds])
    assert 'step 4' in final
    best = best_per_seed(out)
    assert [seed for seed, *_ in best] == [0, 1]
    at_best = re.search(r'^verdict: (.*)$', out, re.MULTILINE).group(1)
    assert_verdict_follows(at_best, [(pre, scratch) for _, pre, _, scratch, _ in best])
    assert "at each start's best step on the validation text" in at_best

    # the table's last row is the mean of the per-seed figures, and the CSV holds what was printed
    last = re.findall(r'^\s+4\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+([+-]\d+\.\d{3})$', out, re.MULTILINE)[-1]
    assert float(last[0]) == pytest.approx(statistics.fmean(pre for _, pre, _ in seeds), abs=6e-4)
    assert float(last[1]) == pytest.approx(statistics.fmean(scratch for _, _, scratch in seeds), abs=6e-4)
    rows = read_csv(tmp_path / 'curves.csv')
    assert [(int(r['seed']), int(r['step'])) for r in rows] == [(s, step) for s in (0, 1) for step in (0, 2, 4)]
    assert [(float(r['pretrained']), float(r['scratch'])) for r in rows if r['step'] == '4'] == [
        (pre, scratch) for _, pre, scratch in seeds
    ]
    assert float(rows[0]['uniform']) == 8.0 and 'markov_3' in rows[0]
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # each best step is the seed's first lowest validation figure in the CSV, scored by its held-out figure there
    for seed, pre, pre_step, scratch, scratch_step in best:
        mine = [r for r in rows if int(r['seed']) == seed]
        for name, bits, step in (('pretrained', pre, pre_step), ('scratch', scratch, scratch_step)):
            lowest = min(mine, key=lambda r: float(r[f'{name}_validation']))
            assert (int(lowest['step']), float(lowest[name])) == (step, bits)


def best_per_seed(out):
    return [
        (int(seed), float(pre), int(pre_step), float(scratch), int(scratch_step))
        for seed, pre, pre_step, scratch, scratch_step in re.findall(
            r'^\s+seed (\d+): pre-trained (\d+\.\d{3}) \(step (\d+)\), scratch (\d+\.\d{3}) \(step (\d+)\)$',
            out,
            re.MULTILINE,
        )
    ]


def assert_verdict_follows(verdict, figures):
    # scratch minus pre-trained, a start ahead only when it is lower on every seed
    differences = [round(scratch - pre, 3) for pre, scratch in figures]
    if all(d == 0 for d in differences):
        assert verdict.startswith('level')
    elif all(d > 0 for d in differences) or all(d < 0 for d in differences):
        ahead = 'the pre-trained start is ahead' if differences[0] > 0 else 'training from scratch is ahead'
        mean = abs(round(statistics.fmean(differences), 3))
        low, high = sorted(abs(d) for d in differences)
        assert (
            verdict.startswith(f'{ahead}: {mean:.3f} bits per byte lower')
            and f'per seed {low:.3f} to {high:.3f}' in verdict
        )
    else:
        assert verdict.startswith('no clear winner')


def test_train_bytes_trains_on_less_with_the_scored_parts_unchanged(checkpoint, text, capsys, tmp_path):
    whole = finetune(capsys, '--checkpoint', str(checkpoint), '--text', str(text), '--out', str(tmp_path / 'a.csv'))
    less = finetune(
        capsys,
        '--checkpoint',
        str(checkpoint),
        '--text',
        str(text),
        '--train-bytes',
        '40',
        '--out',
        str(tmp_path / 'b.csv'),
    )
    assert '403 bytes to train on, 58 to validate on' in whole
    assert '40 bytes to train on (the first of the 403 it leaves, --train-bytes), 58 to validate on' in less
    a, b = read_csv(tmp_path / 'a.csv'), read_csv(tmp_path / 'b.csv')
    assert a[0]['pretrained'] == b[0]['pretrained'] and a[0]['pretrained_validation'] == b[0]['pretrained_validation']
    assert a[-1]['pretrained'] != b[-1]['pretrained']  # trained on other windows


def test_no_validation_judges_the_last_step_only(checkpoint, text, capsys, tmp_path):
    out = finetune(
        capsys,
        '--checkpoint',
        str(checkpoint),
        '--text',
        str(text),
        '--validation',
        '0',
        '--out',
        str(tmp_path / 'c.csv'),
    )
    assert not best_per_seed(out) and 'at the last step' not in out
    assert 'step 4' in re.search(r'^verdict: (.*)$', out, re.MULTILINE).group(1)
    assert 'pretrained_validation' not in read_csv(tmp_path / 'c.csv')[0]


def test_a_checkpoint_holding_the_runs_own_start_comes_out_level(checkpoint, text, capsys, tmp_path):
    # the scratch start is the model the pre-training run began from: put exactly that model in the checkpoint
    saved = torch.load(checkpoint, weights_only=True)
    torch.manual_seed(saved['config']['seed'])
    saved['model'] = build_model(saved['config']).state_dict()
    fresh = tmp_path / 'fresh.pt'
    torch.save(saved, fresh)

    out = finetune(capsys, '--checkpoint', str(fresh), '--text', str(text))
    assert re.search(r'^verdict: level', out, re.MULTILINE)
    rows = read_csv(tmp_path / 'fresh.finetune.csv')
    assert all(r['pretrained'] == r['scratch'] for r in rows)
    assert rows[1]['pretrained'] != rows[0]['pretrained']  # it did train


def test_a_fresh_library_wrapper_state_dict_comes_out_level(text, capsys, tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY)
    wrapper = UniversalPretrainWrapper(model, batch_size=2, seq_len=16, rng_seed=0)
    path = tmp_path / 'wrapper.pt'
    torch.save(wrapper.state_dict(), path)

    out = finetune(capsys, '--checkpoint', str(path), '--text', str(text), '--init-seed', '0')
    assert 'sizes read from its weights; dim 16, depth 1, heads 2, seq_len 16' in out
    assert re.search(r'^verdict: level', out, re.MULTILINE)
    assert all(pre == scratch for _, pre, scratch in per_seed(out))

    out = finetune(
        capsys, '--checkpoint', str(path), '--text', str(text), '--init-seed', '1'
    )  # another init: not level
    assert not re.search(r'^verdict: level', out, re.MULTILINE)


def test_a_trained_library_state_dict_with_sizes_given(text, capsys, tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY)
    wrapper = UniversalPretrainWrapper(model, batch_size=2, seq_len=16, rng_seed=0)
    wrapper().backward()
    path = tmp_path / 'model.pt'
    torch.save(model.state_dict(), path)  # a TransformerWrapper's own state_dict

    out = finetune(capsys, '--checkpoint', str(path), '--text', str(text), '--heads', '2', '--levels', '9,1')
    assert 'and --heads' in out and len(per_seed(out)) == 2
    assert re.search(r'^\s+9\.000: pre-trained 0 0; scratch 0 0$', out, re.MULTILINE)
    assert re.search(r'^\s+1\.000: pre-trained - -; scratch - -$', out, re.MULTILINE)


def test_help_lists_the_options_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(['finetune', '--help'])
    out = capsys.readouterr().out
    for option in (
        '--checkpoint',
        '--text',
        '--held-out',
        '--validation',
        '--train-bytes',
        '--steps',
        '--seeds',
        '--levels',
        '--init-seed',
        '--dim',
        '--out',
        'examples:',
        'state_dict',
    ):
        assert option in out, option
    with pytest.raises(SystemExit):
        main(['--help'])
    assert 'finetune' in capsys.readouterr().out


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize(
    'argv, expected',
    [
        (['--held-out', '1.5'], '--held-out'),
        (['--held-out', 'half'], '--held-out'),
        (['--seeds', '0'], '--seeds'),
        (['--steps', '-1'], '--steps'),
        (['--levels', 'low'], '--levels'),
        (['--levels', '5,-1'], '--levels'),
        (['--dim', '0'], '--dim'),
        (['--validation', '1'], '--validation'),
        (['--validation', 'some'], '--validation'),
        (['--train-bytes', '-5'], '--train-bytes'),
    ],
)
def test_bad_values_name_the_option(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit:
        main(['finetune', *argv])
    assert exit.value.code != 0
    err = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then the error
    assert err.startswith('up-fast finetune: error: argument') and expected in err and argv[1] in err


def test_bad_combinations_and_files_are_one_line_errors(checkpoint, text, capsys, tmp_path):
    base = ['finetune', *QUICK, '--text', str(text)]
    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--dim', '32'])
    assert '--dim apply to a bare state_dict' in err
    err = one_line_error(capsys, [*base, '--checkpoint', str(tmp_path / 'nope.pt')])
    assert 'checkpoint not found' in err

    other = tmp_path / 'other.pt'
    torch.save({'weight': torch.zeros(2)}, other)
    err = one_line_error(capsys, [*base, '--checkpoint', str(other)])
    assert 'neither an up-fast checkpoint' in err and 'weight' in err

    bare = tmp_path / 'bare.pt'
    torch.save(build_model(TINY).state_dict(), bare)
    err = one_line_error(capsys, [*base, '--checkpoint', str(bare), '--heads', '4'])
    assert 'do not fit' in err and 'to_q.weight' in err and '--heads' in err

    short = tmp_path / 'short.txt'
    short.write_bytes(b'too short')
    err = one_line_error(capsys, ['finetune', *QUICK, '--checkpoint', str(checkpoint), '--text', str(short)])
    assert f'--text {short}' in err and 'too short' in err

    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--train-bytes', '8'])
    assert '--train-bytes 8 with --text' in err and 'between one window (16 bytes) and the 403 bytes' in err
    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--train-bytes', '404'])
    assert '--train-bytes 404 with --text' in err and 'got 404' in err
    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--held-out', '0.5', '--validation', '0.5'])
    assert '--held-out 0.5 and --validation 0.5 leave nothing to train on' in err
    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--eval-every', '10'])
    assert '--eval-every 10 is more than --steps 4' in err
    err = one_line_error(capsys, [*base, '--checkpoint', str(checkpoint), '--out', str(tmp_path)])
    assert 'is a directory' in err
