"""The `up-fast pretrain` command: training, checkpoints, resume, --out checks, --eval-every and --source.

Tiny configurations, a few seconds each; the runs, fixtures and helpers are those of test_cli.py.
"""

import csv
import json
import math
import re
import sys

import pytest
import test_cli
import torch
from test_cli import TINY, one_line_error, pretrain_tiny, sample_rows_and_stats

from up_fast.cli import build_parser, common, main, sample
from up_fast.cli import checkpoint as checkpoint_module

# test_cli.py's fixtures: a fresh working directory for every test, one tiny checkpoint for the module
in_a_fresh_directory = test_cli.in_a_fresh_directory
tiny_checkpoint = test_cli.tiny_checkpoint


# pretrain


def test_pretrain_with_prefetch_saves_the_same_run(tiny_checkpoint, tmp_path):
    prefetched = pretrain_tiny(tmp_path / 'prefetch.pt', '--prefetch')
    plain = torch.load(tiny_checkpoint, map_location='cpu', weights_only=True)
    assert prefetched['config'] == plain['config']
    for key, value in plain['wrapper'].items():
        assert torch.equal(prefetched['wrapper'][key], value), key


def test_pretrain_writes_a_loadable_checkpoint(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, map_location='cpu', weights_only=True)
    assert {'config', 'model', 'wrapper', 'final_loss'} <= set(checkpoint)

    config = checkpoint['config']
    assert (
        config['steps'],
        config['dim'],
        config['depth'],
        config['heads'],
        config['seq_len'],
        config['batch_size'],
    ) == (3, 16, 1, 2, 32, 4)
    assert math.isfinite(checkpoint['final_loss']) and checkpoint['final_loss'] > 0

    wrapper_state = checkpoint['wrapper']
    buffer = wrapper_state['synth_data_buffer']
    assert buffer.shape == (4 * 20, 32) and buffer.dtype == torch.uint8
    assert int(wrapper_state['step']) == 3
    assert any(key.startswith('data_generator.') for key in wrapper_state)

    # both state dicts load strictly into objects built from the saved config
    model = common.build_model(config)
    model.load_state_dict(checkpoint['model'])
    wrapper = common.build(config, torch.device('cpu'))
    wrapper.load_state_dict(wrapper_state)
    assert torch.equal(wrapper.synth_data_buffer, buffer)
    assert torch.equal(wrapper.model.token_emb.emb.weight, model.token_emb.emb.weight)


def test_pretrain_trains_and_reports(tmp_path, capsys):
    path = tmp_path / 'sub' / 'dir' / 'up.pt'
    # one turing machine for the whole run (--reset-every 0), and x-transformers' 20 resets a step rather than
    # the default 100 rows of fresh noise, make data that a tiny model learns in 100 steps
    checkpoint = pretrain_tiny(
        path,
        '--steps',
        '100',
        '--batch-size',
        '8',
        '--lr',
        '1e-2',
        '--reset-every',
        '0',
        '--num-reset',
        '20',
        '--seed',
        '0',
    )
    out = capsys.readouterr().out
    assert f'saved checkpoint to {path}' in out
    assert 'final loss' in out and 'synthetic tokens/s' in out
    assert checkpoint['config']['reset_turing_machine_every'] == 0
    # well below the loss of a uniform guess, ln 256 = 5.55 nats (seeds 0 to 2 give 4.3 to 4.9)
    assert checkpoint['smoothed_loss'] < math.log(256) - 0.5


def test_pretrain_gru(tmp_path):
    checkpoint = pretrain_tiny(tmp_path / 'gru.pt', '--gru')
    assert checkpoint['config']['gru'] is True
    assert 'data_generator.net.weight_hh_l0' in checkpoint['wrapper']
    assert checkpoint['wrapper']['data_generator.net.weight_hh_l0'].shape[0] == 3 * 16  # GRU: 3 gates


def test_same_seed_same_loss(tmp_path):
    first = pretrain_tiny(tmp_path / 'a.pt', '--seed', '7')
    second = pretrain_tiny(tmp_path / 'b.pt', '--seed', '7')
    other = pretrain_tiny(tmp_path / 'c.pt', '--seed', '8')
    assert first['final_loss'] == second['final_loss']
    assert torch.equal(first['wrapper']['synth_data_buffer'], second['wrapper']['synth_data_buffer'])
    assert not torch.equal(first['wrapper']['synth_data_buffer'], other['wrapper']['synth_data_buffer'])


# resume


def test_stop_and_resume_equals_one_run(tmp_path):
    six = ['--steps', '6', *TINY[2:]]
    main(['pretrain', *six, '--out', str(tmp_path / 'whole.pt')])
    main(['pretrain', *six, '--stop-after', '4', '--out', str(tmp_path / 'part.pt')])
    half = torch.load(tmp_path / 'part.pt', weights_only=True)
    assert int(half['wrapper']['step']) == 4

    main(['pretrain', '--resume', str(tmp_path / 'part.pt'), '--out', str(tmp_path / 'resumed.pt')])
    whole = torch.load(tmp_path / 'whole.pt', weights_only=True)
    resumed = torch.load(tmp_path / 'resumed.pt', weights_only=True)

    assert resumed['final_loss'] == whole['final_loss']
    assert int(resumed['wrapper']['step']) == 6
    for key, value in whole['wrapper'].items():
        assert torch.equal(resumed['wrapper'][key], value), key


def test_resume_of_a_finished_run_is_a_clean_error(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(['pretrain', '--resume', str(tiny_checkpoint)])
    assert exc_info.value.code == 1
    assert 'nothing to resume' in capsys.readouterr().err


def test_resume_prints_the_smoothed_loss_of_the_whole_run(tmp_path, capsys):
    six = ['--steps', '6', *TINY[2:]]
    main(['pretrain', *six, '--out', str(tmp_path / 'whole.pt')])
    whole_out = capsys.readouterr().out
    main(['pretrain', *six, '--stop-after', '4', '--out', str(tmp_path / 'part.pt')])
    main(['pretrain', '--resume', str(tmp_path / 'part.pt')])  # in place: the run's own checkpoint
    resumed_out = capsys.readouterr().out

    whole = torch.load(tmp_path / 'whole.pt', weights_only=True)
    resumed = torch.load(tmp_path / 'part.pt', weights_only=True)
    assert resumed['smoothed_loss'] == whole['smoothed_loss']

    def printed_smoothed(output):
        return re.findall(r'smoothed (\d+\.\d+) nats', output)[-1]

    assert printed_smoothed(resumed_out) == printed_smoothed(whole_out)


# pretrain --out, checked before training


def test_out_that_is_a_directory_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(['pretrain', *TINY, '--out', str(tmp_path)])
    assert exit.value.code == 1
    captured = capsys.readouterr()
    assert f'--out {tmp_path} is a directory' in captured.err and 'Traceback' not in captured.err
    assert 'pre-training' not in captured.out


def test_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / 'a-file'
    blocker.write_text('not a folder')
    out = blocker / 'sub' / 'up.pt'  # its folder cannot be made, even by root
    with pytest.raises(SystemExit) as exit:
        main(['pretrain', *TINY, '--out', str(out)])
    assert exit.value.code == 1
    captured = capsys.readouterr()
    assert f'cannot write the checkpoint {out}' in captured.err and captured.err.count('\n') == 1
    assert 'pre-training' not in captured.out


def test_existing_checkpoint_of_another_run_needs_force(tmp_path, capsys):
    out = tmp_path / 'up.pt'
    first = pretrain_tiny(out, '--seed', '1')
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(['pretrain', *TINY, '--seed', '2', '--out', str(out)])
    assert exit.value.code == 1
    captured = capsys.readouterr()
    assert f'{out} already exists' in captured.err and '--force' in captured.err and '--resume' in captured.err
    assert 'pre-training' not in captured.out
    assert torch.equal(
        torch.load(out, weights_only=True)['wrapper']['synth_data_buffer'], first['wrapper']['synth_data_buffer']
    )

    second = pretrain_tiny(out, '--seed', '2', '--force')
    assert not torch.equal(second['wrapper']['synth_data_buffer'], first['wrapper']['synth_data_buffer'])


# pretrain --eval-every


EVAL = ['--eval-every', '2', '--eval-bytes', '512']


def read_csv(path):
    with open(path, newline='') as file:
        return list(csv.DictReader(file))


def test_pretrain_eval_every_prints_writes_csv_and_png(tmp_path, capsys):
    out = tmp_path / 'up.pt'
    checkpoint = pretrain_tiny(out, '--steps', '4', *EVAL)
    printed = capsys.readouterr()
    csv_path, png_path = tmp_path / 'up.eval.csv', tmp_path / 'up.eval.png'

    rows = read_csv(csv_path)
    assert [int(row['step']) for row in rows] == [0, 2, 4]
    assert [int(row['synthetic_tokens']) for row in rows] == [0, 2 * 4 * 32, 4 * 4 * 32]
    assert rows[0]['train_loss'] == '' and float(rows[2]['train_loss']) > 0
    assert set(rows[0]) >= {'markov_0', 'markov_3', 'uniform'} and float(rows[0]['uniform']) == 8.0
    for row in rows:
        assert f'step {row["step"]}: {float(row["bits_per_byte"]):.3f} bits/byte zero-shot' in printed.out + printed.err
    assert png_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [record['step'] for record in checkpoint['eval_history']] == [0, 2, 4]

    # step 0 is the untrained model that `up-fast eval` shows beside the trained one, on the same bytes
    main(['eval', '--checkpoint', str(out), '--max-bytes', '512', '--json'])
    report = json.loads(capsys.readouterr().out)
    assert float(rows[0]['bits_per_byte']) == pytest.approx(report['bits_per_byte']['untrained'], abs=1e-5)
    assert float(rows[-1]['bits_per_byte']) == pytest.approx(report['bits_per_byte']['pretrained'], abs=1e-5)
    assert float(rows[0]['markov_1']) == pytest.approx(report['bits_per_byte']['markov_1'], abs=1e-5)


def test_evaluations_do_not_change_the_run(tmp_path):
    plain = pretrain_tiny(tmp_path / 'plain.pt', '--steps', '4')
    evaluated = pretrain_tiny(tmp_path / 'evaluated.pt', '--steps', '4', *EVAL)
    assert evaluated['final_loss'] == plain['final_loss']
    assert torch.equal(evaluated['model']['to_logits.weight'], plain['model']['to_logits.weight'])


def test_resumed_run_continues_the_evaluations(tmp_path):
    pretrain_tiny(tmp_path / 'whole.pt', '--steps', '4', *EVAL)
    pretrain_tiny(tmp_path / 'part.pt', '--steps', '4', '--stop-after', '2', *EVAL)
    assert [int(row['step']) for row in read_csv(tmp_path / 'part.eval.csv')] == [0, 2]
    main(['pretrain', '--resume', str(tmp_path / 'part.pt')])
    assert read_csv(tmp_path / 'part.eval.csv') == read_csv(tmp_path / 'whole.eval.csv')


def test_eval_csv_without_matplotlib_says_how_to_get_the_png(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    pretrain_tiny(tmp_path / 'up.pt', '--steps', '2', *EVAL)
    out = capsys.readouterr().out
    assert (tmp_path / 'up.eval.csv').is_file() and not (tmp_path / 'up.eval.png').exists()
    lines = [line for line in out.splitlines() if 'matplotlib' in line]
    assert len(lines) == 1 and 'pip install' in lines[0] and 'up.eval.csv' in lines[0]


def test_missing_eval_text_is_refused_before_training(tmp_path, capsys):
    err = one_line_error(
        capsys,
        [
            'pretrain',
            *TINY,
            '--eval-every',
            '2',
            '--eval-text',
            str(tmp_path / 'nope.txt'),
            '--out',
            str(tmp_path / 'x.pt'),
        ],
    )
    assert 'text file not found' in err


# pretrain --source paper|xt


PAPER_TINY = [*TINY[:-4], '--source', 'paper', '--eval-every', '0']


def test_source_is_in_the_help_and_the_config(tiny_checkpoint):
    assert torch.load(tiny_checkpoint, weights_only=True)['config']['source'] == 'xt'
    from up_fast.cli.pretrain import new_config

    assert new_config(build_parser().parse_args(['pretrain']))['source'] == common.DEFAULT_CONFIG['source']


def test_checkpoint_without_a_source_is_read_as_xt(tiny_checkpoint, tmp_path, capsys):
    # written before the option existed: the x-transformers generator
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    del checkpoint['config']['source']
    del checkpoint['checksum'], checkpoint['format_version']
    old = tmp_path / 'old.pt'
    torch.save(checkpoint, old)
    main(['sample', '--checkpoint', str(old), '--rows', '1'])
    assert 'xt source' in capsys.readouterr().out


@pytest.mark.parametrize('option', [['--gru'], ['--reset-every', '5'], ['--num-reset', '20']])
def test_xt_only_options_are_refused_with_the_paper_source(tmp_path, capsys, option):
    err = one_line_error(capsys, ['pretrain', *PAPER_TINY, *option, '--out', str(tmp_path / 'x.pt')])
    assert option[0] in err and '--source xt' in err


def test_paper_source_trains_saves_and_restores(tmp_path, capsys):
    from up_fast.paper import PaperDataGenerator

    out = tmp_path / 'paper.pt'
    main(['pretrain', *PAPER_TINY, '--out', str(out)])
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint['config']['source'] == 'paper'
    assert math.isfinite(checkpoint['final_loss'])

    wrapper = common.build(checkpoint['config'], torch.device('cpu'))
    assert isinstance(wrapper.data_generator, PaperDataGenerator)
    assert (
        wrapper.batch_size == 4 and wrapper.buffer_size == 20 * 2 * 4
    )  # the author's sizes: generator batch 2x, buffer 20 generator batches
    wrapper.load_state_dict(checkpoint['wrapper'])
    assert torch.equal(wrapper.synth_data_buffer, checkpoint['wrapper']['synth_data_buffer'])
    capsys.readouterr()

    main(['sample', '--checkpoint', str(out), '--rows', '2', '--steps', '1'])
    assert 'paper source' in capsys.readouterr().out
    main(['eval', '--checkpoint', str(out), '--max-bytes', '512', '--json'])
    assert math.isfinite(json.loads(capsys.readouterr().out)['bits_per_byte']['pretrained'])


def test_paper_source_resumes_exactly(tmp_path):
    four = [*PAPER_TINY[2:], '--steps', '4']
    main(['pretrain', *four, '--out', str(tmp_path / 'whole.pt')])
    main(['pretrain', *four, '--stop-after', '2', '--out', str(tmp_path / 'part.pt')])
    main(['pretrain', '--resume', str(tmp_path / 'part.pt')])
    whole = torch.load(tmp_path / 'whole.pt', weights_only=True)
    resumed = torch.load(tmp_path / 'part.pt', weights_only=True)
    assert resumed['config']['source'] == 'paper'
    assert resumed['final_loss'] == whole['final_loss'] and resumed['smoothed_loss'] == whole['smoothed_loss']
    for key, value in whole['wrapper'].items():
        assert torch.equal(resumed['wrapper'][key], value), key


def test_sample_fresh_paper_buffer_starts_constant(capsys):
    steps, stats = sample.run(build_parser().parse_args(['sample', '--source', 'paper', '--steps', '1', '--rows', '1']))
    assert 'paper source' in capsys.readouterr().out
    # the author's buffer starts as constant rows; a step resets 50 rows to uniform noise and writes generated rows
    assert stats[0].constant == 1.0 and stats[1].constant < 1.0


def test_resume_with_a_damaged_optimizer_state_is_a_clean_error(tmp_path, capsys):
    path = tmp_path / 'part.pt'
    pretrain_tiny(path, '--stop-after', '1')
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['optimizer']['param_groups'] = checkpoint['optimizer']['param_groups'] * 2  # two groups for one
    checkpoint_module.save_checkpoint(checkpoint, path)
    capsys.readouterr()
    err = one_line_error(capsys, ['pretrain', '--resume', str(path)])
    assert 'cannot be resumed: its optimizer state does not fit' in err


def test_sample_of_a_checkpoint_continues_its_stream_unless_seeded(tiny_checkpoint, capsys):
    options = ['--checkpoint', str(tiny_checkpoint), '--steps', '1', '--rows', '4']
    own = sample_rows_and_stats(capsys, *options)
    assert own == sample_rows_and_stats(capsys, *options)
    assert own != sample_rows_and_stats(capsys, *options, '--seed', '5')


def test_num_reset_reaches_the_xt_wrapper_and_must_be_even(tmp_path, capsys):
    checkpoint = pretrain_tiny(tmp_path / 'resets.pt', '--num-reset', '12')
    assert checkpoint['config']['num_reset'] == 12
    wrapper = common.build(checkpoint['config'], torch.device('cpu'))
    assert wrapper.num_reset == 12
    capsys.readouterr()
    err = one_line_error(capsys, ['pretrain', *TINY, '--num-reset', '7', '--out', str(tmp_path / 'odd.pt')])
    assert '--num-reset must be even' in err and '7' in err
    assert not (tmp_path / 'odd.pt').exists()


def test_the_default_source_is_the_one_the_study_measured_best():
    # benchmarks/results/source_study_findings.md: the x-transformers generator with 100 resets per step
    assert (
        common.DEFAULT_CONFIG['source'],
        common.DEFAULT_CONFIG['num_reset'],
        common.DEFAULT_CONFIG['reset_turing_machine_every'],
    ) == ('xt', 100, 1)
