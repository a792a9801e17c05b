"""The `up-fast` console script: help, sample, eval, and its errors. Tiny configs, a few seconds in all.

The pretrain command's own tests are in test_cli_pretrain.py, which shares this module's fixtures and helpers.
"""

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch

from up_fast.cli import baselines, build_parser, common, main, row_stats, sample
from up_fast.cli import checkpoint as checkpoint_module

# the xt source and no zero-shot evaluations unless a test asks: the fastest run there is
TINY = '--steps 3 --dim 16 --depth 1 --heads 2 --seq-len 32 --batch-size 4 --source xt --eval-every 0'.split()


def pretrain_tiny(path, *extra):
    main(['pretrain', *TINY, '--out', str(path), *extra])
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(autouse=True)
def in_a_fresh_directory(tmp_path, monkeypatch):
    # what a user's working directory holds (a checkpoints/up_fast.pt of an earlier run) must not change a test
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pt'
    pretrain_tiny(path)
    return path


def bits(output, label):
    # the number printed on the line that starts with `label`
    match = re.search(rf'^\s*{re.escape(label)}.*?(-?\d+\.\d+)\s*(<- best)?$', output, re.MULTILINE)
    assert match, f'no line for {label!r} in:\n{output}'
    return float(match.group(1))


# help


def test_top_level_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit:
        main(['--help'])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for text in ('Universal pre-training', 'pretrain', 'sample', 'eval', 'examples:', 'up-fast pretrain'):
        assert text in out


@pytest.mark.parametrize(
    'command, options',
    [
        (
            'pretrain',
            [
                '--steps',
                '--batch-size',
                '--seq-len',
                '--dim',
                '--depth',
                '--heads',
                '--lr',
                '--seed',
                '--out',
                '--gru',
                '--device',
                '--prefetch',
                'checkpoints/up_fast.pt',
                '--source',
                'paper',
                '--eval-every',
                '--eval-text',
                '--eval-bytes',
                '--force',
                '16384',
                '--save-every',
                '--keep-best',
                '--override',
                '--resume',
            ],
        ),
        (
            'sample',
            [
                '--checkpoint',
                '--fresh',
                '--source',
                '--steps',
                '--every',
                '--max-period',
                '--plot',
                '--rows',
                '--width',
                '--seed',
            ],
        ),
        ('eval', ['--checkpoint', '--text', '--max-bytes', '--seed', '--json', '65536', 'Markov', 'pseudo-counts']),
    ],
)
def test_command_help_lists_options_with_defaults(capsys, command, options):
    with pytest.raises(SystemExit) as exit:
        main([command, '--help'])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option in out, option
    assert 'default' in out and 'examples:' in out


def test_no_command_prints_help(capsys):
    assert main([]) != 0
    assert 'pretrain' in capsys.readouterr().out


def test_entry_point_is_installed(tmp_path):
    exe = shutil.which('up-fast')
    if exe is None:
        pytest.skip('the up-fast console script is not on PATH (pip install -e .)')
    result = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'pretrain' in result.stdout and 'eval' in result.stdout


@pytest.mark.parametrize(
    'argv', [['--version'], ['--help'], ['pretrain', '--help'], ['eval', '--help'], ['sample', '--help']]
)
def test_version_and_help_import_no_torch(tmp_path, argv):
    # a fast start: what the call does not need is not imported (torch alone takes seconds)
    result = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'up_fast.cli', *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.split('|')[-1].strip().split('.')[0]
        for line in result.stderr.splitlines()
        if line.startswith('import time:')
    }
    assert 'up_fast' in imported
    assert not imported & {'torch', 'x_transformers', 'matplotlib', 'numpy', 'triton'}, sorted(
        imported & {'torch', 'x_transformers', 'matplotlib', 'numpy', 'triton'}
    )


# sample


def row_lines(output):
    return [line for line in output.splitlines() if re.match(r'\s+row\s+\d+\s+zlib', line)]


def test_sample_fresh_shows_rows_before_and_after(capsys):
    main(['sample', '--fresh', '--steps', '2', '--rows', '3', '--width', '600'])
    out = capsys.readouterr().out
    lines = row_lines(out)
    assert len(lines) == 6  # 3 rows at step 0, the same 3 rows at step 2
    assert 'step 0' in out and 'step 2' in out
    indices = [line.split()[1] for line in lines]
    assert indices[:3] == indices[3:]
    texts = [line.split('|', 1)[1].rstrip('|') for line in lines]
    for text in texts:
        assert len(text) <= 600
        assert text.isprintable() and text.isascii()
    # the rows shown are ones the generator rewrote
    assert all(before != after for before, after in zip(texts[:3], texts[3:]))


def test_sample_checkpoint(tiny_checkpoint, capsys):
    main(['sample', '--checkpoint', str(tiny_checkpoint), '--rows', '5'])
    out = capsys.readouterr().out
    assert len(row_lines(out)) == 5
    assert 'step 3' in out  # the step counter came back with the checkpoint


def test_show_bytes_escapes_and_truncates():
    row = torch.tensor(list(b'ab\n\t\\') + [0, 255, 0x7F], dtype=torch.uint8)
    assert sample.show_bytes(row, 100) == 'ab\\n\\t\\\\\\x00\\xff\\x7f'
    short = sample.show_bytes(torch.full((50,), ord('x'), dtype=torch.uint8), 10)
    assert short == 'xxxxxxx...'
    # never half an escape: a second '\\x00' would leave no room for '...' in 10 characters
    assert sample.show_bytes(torch.tensor([97, 0, 0, 0], dtype=torch.uint8), 10) == 'a\\x00...'
    assert sample.show_bytes(torch.tensor([97, 0], dtype=torch.uint8), 5) == 'a\\x00'


def test_zlib_ratio_tells_noise_from_constant():
    noise = torch.randint(0, 256, (128,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    constant = torch.full((128,), 65, dtype=torch.uint8)
    assert row_stats.zlib_ratio(noise) > 1.0 > 0.2 > row_stats.zlib_ratio(constant)


# eval


def test_eval_on_a_text_file(tiny_checkpoint, tmp_path, capsys):
    text = tmp_path / 'text.txt'
    text.write_text('the quick brown fox jumps over the lazy dog. ' * 20)
    main(['eval', '--checkpoint', str(tiny_checkpoint), '--text', str(text)])
    out = capsys.readouterr().out
    assert str(text) in out
    trained, untrained, uniform = bits(out, 'pre-trained'), bits(out, 'untrained'), bits(out, 'uniform')
    assert uniform == 8.0
    assert all(math.isfinite(b) and b > 0 for b in (trained, untrained))
    assert trained != untrained


def test_eval_default_text_ships_with_python(tiny_checkpoint, capsys):
    default_file = common.default_text_file()
    assert default_file.is_file()
    main(['eval', '--checkpoint', str(tiny_checkpoint), '--max-bytes', '4096'])
    out = capsys.readouterr().out
    assert str(default_file) in out and '4,096 bytes' in out
    assert math.isfinite(bits(out, 'pre-trained')) and math.isfinite(bits(out, 'untrained'))


def test_bits_per_byte_of_a_uniform_model_is_8():
    config = {**common.DEFAULT_CONFIG, 'dim': 16, 'depth': 1, 'heads': 2, 'seq_len': 32}
    model = common.build_model(config)
    torch.nn.init.zeros_(model.to_logits.weight)  # every logit 0: a uniform guess
    data = bytes(range(256)) * 3 + b'xyz'  # windows of 32 and a short last one
    assert common.bits_per_byte(model, data, 32, 5, torch.device('cpu')) == pytest.approx(8.0, abs=1e-5)


class AlwaysA(torch.nn.Module):
    """Predicts byte 'a' with near certainty: a miss costs 1e4 nats, a hit next to nothing."""

    def forward(self, x):
        logits = torch.full((*x.shape, 256), -1e4)  # (batch, length, num_tokens)
        logits[..., ord('a')] = 0.0
        return logits


def test_bits_per_byte_counts_every_predicted_position():
    # windows of 8: 'aaaaaaaa' predicts 7 bytes, all hits; 'aaab' predicts 3, one miss
    data = b'aaaaaaaa' + b'aaab'
    bits_per_miss = 1e4 / math.log(2)
    assert common.bits_per_byte(AlwaysA(), data, 8, 4, torch.device('cpu')) == pytest.approx(
        bits_per_miss / 10, rel=1e-4
    )
    # windows do not overlap, and the first byte of each is context only: these 'b's are never predicted
    assert common.bits_per_byte(AlwaysA(), b'baaaaaaa' * 3, 8, 2, torch.device('cpu')) < 1e-3
    assert common.bits_per_byte(AlwaysA(), b'aaaaaaab' * 3, 8, 2, torch.device('cpu')) == pytest.approx(
        bits_per_miss / 7, rel=1e-4
    )


# errors


@pytest.mark.parametrize(
    'argv, argument',
    [
        (['pretrain', '--steps', '0'], '--steps'),
        (['pretrain', '--steps', '-3'], '--steps'),
        (['pretrain', '--batch-size', 'many'], '--batch-size'),
        (['pretrain', '--lr', '0'], '--lr'),
        (['pretrain', '--lr', 'nan'], '--lr'),
        (['pretrain', '--dim', '1.5'], '--dim'),
        (['pretrain', '--device', 'toaster'], '--device'),
        (['sample', '--rows', '0'], '--rows'),
        (['sample', '--steps', '-1'], '--steps'),
        (['eval', '--max-bytes', '-1'], '--max-bytes'),
        (['train'], 'invalid choice'),
    ],
)
def test_bad_arguments_give_a_clean_error(capsys, argv, argument):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert argument in err and 'error' in err


@pytest.mark.parametrize('command', ['eval', 'sample'])
def test_missing_checkpoint_is_one_line_error(tmp_path, capsys, command):
    missing = tmp_path / 'nope.pt'
    with pytest.raises(SystemExit) as exit:
        main([command, '--checkpoint', str(missing)])
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'checkpoint not found' in err and str(missing) in err
    assert 'Traceback' not in err


def test_unreadable_checkpoint_and_missing_text_are_clean_errors(tmp_path, tiny_checkpoint, capsys):
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit) as exit:
        main(['eval', '--checkpoint', str(junk)])
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert f'{junk} is not a PyTorch checkpoint file (' in err and 'up-fast pretrain' in err
    assert err.count('\n') == 1 and 'Traceback' not in err

    with pytest.raises(SystemExit) as exit:
        main(['eval', '--checkpoint', str(tiny_checkpoint), '--text', str(tmp_path / 'missing.txt')])
    assert exit.value.code != 0
    assert 'text file not found' in capsys.readouterr().err


def test_configuration_the_wrapper_rejects_is_a_clean_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(['pretrain', *TINY, '--seq-len', '1', '--out', str(tmp_path / 'x.pt')])
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert 'seq_len' in err and 'Traceback' not in err
    assert not (tmp_path / 'x.pt').exists()


def test_cuda_request_without_cuda_is_a_clean_error(capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(SystemExit) as exit:
        main(['pretrain', *TINY, '--device', 'cuda'])
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert '--device cuda is not available' in err and 'Traceback' not in err


# checkpoint errors keep their detail


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    return err


def test_random_bytes_are_not_a_pytorch_checkpoint(tmp_path, capsys):
    junk = tmp_path / 'random.pt'
    junk.write_bytes(
        bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist())
    )
    err = one_line_error(capsys, ['eval', '--checkpoint', str(junk)])
    assert f'{junk} is not a PyTorch checkpoint file (4,096 bytes beginning' in err and 'up-fast pretrain' in err

    empty = tmp_path / 'empty.pt'
    empty.write_bytes(b'')
    err = one_line_error(capsys, ['sample', '--checkpoint', str(empty)])
    assert 'not a PyTorch checkpoint file (the file is empty)' in err


def test_pytorch_file_that_is_not_an_up_fast_checkpoint(tmp_path, capsys):
    other = tmp_path / 'other.pt'
    torch.save({'weights': torch.zeros(3)}, other)
    err = one_line_error(capsys, ['eval', '--checkpoint', str(other)])
    assert 'not an up-fast checkpoint' in err and 'config, model, wrapper' in err


def test_state_dict_mismatch_is_fully_described(tiny_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    model = checkpoint['model']
    model['extra.weight'] = torch.zeros(2)  # unexpected
    del model['to_logits.weight']  # missing
    model['token_emb.emb.weight'] = torch.zeros(256, 8)  # wrong shape: dim 16 in the config
    edited = tmp_path / 'edited.pt'
    checkpoint_module.save_checkpoint(checkpoint, edited)  # edited, with a checksum that matches

    err = one_line_error(capsys, ['eval', '--checkpoint', str(edited)])
    assert 'does not fit the model built from its own config' in err
    assert '1 missing key(s): to_logits.weight' in err
    assert '1 unexpected key(s): extra.weight' in err
    assert 'token_emb.emb.weight is (256, 8) in the file, (256, 16) in the model' in err
    assert 'up-fast pretrain' in err


# --device


@pytest.mark.parametrize('device, words', [('meta', 'no values'), ('mps', 'Apple silicon')])
def test_devices_that_cannot_run_give_one_short_line(capsys, device, words):
    if device == 'mps' and torch.backends.mps.is_available():
        pytest.skip('this machine has MPS')
    err = one_line_error(capsys, ['sample', '--fresh', '--steps', '1', '--device', device])
    assert f'--device {device}' in err and words in err and '--device cpu' in err
    assert len(err) < 200


# sample: --seed, the default checkpoint, statistics


def sample_rows_and_stats(capsys, *argv):
    main(['sample', *argv])
    out = capsys.readouterr().out
    return [
        line
        for line in out.splitlines()
        if re.match(r'\s+row\s+\d+\s+zlib', line) or re.match(r'\s*\d+\s+\d+\.\d+ /', line)
    ]


def test_sample_seed_changes_the_output_and_repeats(capsys):
    options = ['--fresh', '--steps', '2', '--rows', '3']
    one = sample_rows_and_stats(capsys, *options, '--seed', '1')
    again = sample_rows_and_stats(capsys, *options, '--seed', '1')
    other = sample_rows_and_stats(capsys, *options, '--seed', '2')
    assert len(one) == 3 + 6  # statistics at steps 0, 1, 2; 3 rows before and after
    assert one == again
    assert one != other
    row_text = lambda lines: [line.split('|', 1)[1] for line in lines if '|' in line]
    assert row_text(one) != row_text(other)

    # the buffer itself starts from the seed, not only the draws after it
    start = ['--fresh', '--steps', '0', '--rows', '6']
    assert row_text(sample_rows_and_stats(capsys, *start, '--seed', '1')) == row_text(
        sample_rows_and_stats(capsys, *start, '--seed', '1')
    )
    assert row_text(sample_rows_and_stats(capsys, *start, '--seed', '1')) != row_text(
        sample_rows_and_stats(capsys, *start, '--seed', '2')
    )


def test_sample_uses_the_checkpoint_pretrain_just_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(['pretrain', *TINY])  # to the default path
    assert (tmp_path / common.DEFAULT_CHECKPOINT).is_file()
    capsys.readouterr()

    main(['sample', '--rows', '2'])
    out = capsys.readouterr().out
    assert f'checkpoint {common.DEFAULT_CHECKPOINT}' in out and '--fresh' in out
    assert 'dim 16' in out and re.search(r'^\s+3\s', out, re.MULTILINE)  # its config, its step

    main(['sample', '--fresh', '--steps', '1', '--rows', '2'])
    out = capsys.readouterr().out
    assert 'fresh wrapper' in out and 'dim 128' in out

    one_line_error(capsys, ['sample', '--fresh', '--checkpoint', common.DEFAULT_CHECKPOINT])
    one_line_error(capsys, ['sample', '--source', 'xt', '--checkpoint', common.DEFAULT_CHECKPOINT])


def test_sample_statistics_every_few_steps_and_plot(tmp_path, capsys):
    plot = tmp_path / 'stats.png'
    steps, stats = sample.run(
        build_parser().parse_args(
            ['sample', '--source', 'xt', '--steps', '4', '--every', '2', '--rows', '1', '--plot', str(plot)]
        )
    )
    out = capsys.readouterr().out
    assert sample.STATS_HEADER in out
    printed = [int(line.split()[0]) for line in out.splitlines() if re.match(r'\s*\d+\s+\d+\.\d+ /', line)]
    assert printed == [0, 2, 4]
    assert steps == [0, 1, 2, 3, 4] and len(stats) == 5
    # a fresh buffer: half uniform noise, half constant rows
    assert stats[0].constant == 0.5 and stats[0].zlib[2] > 1.0
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and f'plot of the statistics over steps: {plot}' in out


def test_sample_plot_without_matplotlib_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib raises ImportError
    main(['sample', '--fresh', '--steps', '1', '--rows', '1', '--plot', str(tmp_path / 'p.png')])
    out = capsys.readouterr().out
    assert 'matplotlib is missing' in out and 'pip install' in out
    assert not (tmp_path / 'p.png').exists()


# eval: baselines, --json


class MarkovModel(torch.nn.Module):
    """The in-context Markov model of order 2 as a 'transformer': log-probabilities as logits."""

    def forward(self, x):
        from up_fast.cli.baselines import InContextMarkov

        logits = torch.empty(*x.shape, 256, dtype=torch.float64)  # (batch, length, num_tokens)
        for row, tokens in enumerate(x.tolist()):
            model = InContextMarkov(2)
            for position, token in enumerate(tokens):
                model.update(token)  # the logits at `position` predict the next byte
                logits[row, position] = torch.tensor(model.distribution(2), dtype=torch.float64).log()
        return logits


def test_baselines_are_scored_on_the_models_positions():
    data = b'the cat sat on the mat; the hat sat on the cat. ' * 3
    as_model = common.bits_per_byte(MarkovModel(), data, 32, 2, torch.device('cpu'))
    assert as_model == pytest.approx(baselines.baseline_bits(data, 32)['markov_2'], rel=1e-6)


def test_eval_reports_baselines_and_names_the_best(tiny_checkpoint, capsys):
    main(['eval', '--checkpoint', str(tiny_checkpoint), '--max-bytes', '2048'])
    out = capsys.readouterr().out
    figures = {
        label: bits(out, label)
        for label in (
            'pre-trained',
            'untrained',
            'in-context Markov, order 0',
            'in-context Markov, order 1',
            'in-context Markov, order 2',
            'in-context Markov, order 3',
            'uniform',
        )
    }
    best_line = [line for line in out.splitlines() if line.endswith('<- best')]
    assert len(best_line) == 1 and float(best_line[0].split()[-3]) == min(figures.values())
    # 3 steps of a 16-wide model: above in-context counting, and the output says so
    markov = min(v for k, v in figures.items() if 'Markov' in k)
    assert figures['pre-trained'] > markov
    # the verdict's margin is rounded from unrounded figures: within rounding of the printed ones' difference
    margin = re.search(r'above in-context counting: (\d+\.\d+) bits per byte worse', out)
    assert margin and float(margin.group(1)) == pytest.approx(figures['pre-trained'] - markov, abs=0.006)


def test_eval_json_holds_every_figure(tiny_checkpoint, tmp_path, capsys):
    text = tmp_path / 'text.txt'
    text.write_bytes(b'import os\nimport sys\n\ndef main():\n    return os.path.join(sys.argv[0])\n' * 10)
    main(['eval', '--checkpoint', str(tiny_checkpoint), '--text', str(text), '--json'])
    report = json.loads(capsys.readouterr().out)

    figures = report['bits_per_byte']
    assert set(figures) == {'pretrained', 'untrained', 'markov_0', 'markov_1', 'markov_2', 'markov_3', 'uniform'}
    assert figures['uniform'] == 8.0
    data = text.read_bytes()
    assert report['predicted_bytes'] == sum(min(32, len(data) - start) - 1 for start in range(0, len(data), 32))
    assert (
        report['seq_len'] == 32
        and report['bytes'] == len(data)
        and report['text'] == str(text)
        and report['source'] == 'xt'
    )
    assert report['best'] == min(figures, key=figures.get)
    assert report['best_in_context_markov'] == min(('markov_0', 'markov_1', 'markov_2', 'markov_3'), key=figures.get)
    counting = figures[report['best_in_context_markov']]
    assert report['pretrained_vs_counting'] == {
        'side': 'below' if figures['pretrained'] < counting else 'above',
        'margin': pytest.approx(abs(figures['pretrained'] - counting)),
    }
