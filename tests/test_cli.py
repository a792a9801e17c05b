"""The `up-fast` console script: help, pretrain, sample, eval, and its errors. Tiny configs, a few seconds in all."""

import math
import re
import shutil
import subprocess

import pytest
import torch

from up_fast import cli
from up_fast.cli import main

TINY = ['--steps', '3', '--dim', '16', '--depth', '1', '--heads', '2', '--seq-len', '32', '--batch-size', '4']


def pretrain_tiny(path, *extra):
    main(['pretrain', *TINY, '--out', str(path), *extra])
    return torch.load(path, map_location = 'cpu', weights_only = True)


@pytest.fixture(scope = 'module')
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pt'
    pretrain_tiny(path)
    return path


def bits(output, label):
    # the number printed on the line that starts with `label`
    match = re.search(rf'^\s*{re.escape(label)}.*?(-?\d+\.\d+)\s*$', output, re.MULTILINE)
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


@pytest.mark.parametrize('command, options', [
    ('pretrain', ['--steps', '--batch-size', '--seq-len', '--dim', '--depth', '--heads', '--lr', '--seed', '--out', '--gru', '--device', 'checkpoints/up_fast.pt']),
    ('sample', ['--checkpoint', '--steps', '--rows', '--width', '--seed']),
    ('eval', ['--checkpoint', '--text', '--max-bytes', '--seed', '65536']),
])
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


def test_entry_point_is_installed():
    exe = shutil.which('up-fast')
    if exe is None:
        pytest.skip('the up-fast console script is not on PATH (pip install -e .)')
    result = subprocess.run([exe, '--help'], capture_output = True, text = True, timeout = 120)
    assert result.returncode == 0, result.stderr
    assert 'pretrain' in result.stdout and 'eval' in result.stdout


# pretrain


def test_pretrain_writes_a_loadable_checkpoint(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, map_location = 'cpu', weights_only = True)
    assert {'config', 'model', 'wrapper', 'final_loss'} <= set(checkpoint)

    config = checkpoint['config']
    assert (config['steps'], config['dim'], config['depth'], config['heads'], config['seq_len'], config['batch_size']) == (3, 16, 1, 2, 32, 4)
    assert math.isfinite(checkpoint['final_loss']) and checkpoint['final_loss'] > 0

    wrapper_state = checkpoint['wrapper']
    buffer = wrapper_state['synth_data_buffer']
    assert buffer.shape == (4 * 20, 32) and buffer.dtype == torch.uint8
    assert int(wrapper_state['step']) == 3
    assert any(key.startswith('data_generator.') for key in wrapper_state)

    # both state dicts load strictly into objects built from the saved config
    model = cli.build_model(config)
    model.load_state_dict(checkpoint['model'])
    wrapper = cli.build(config, torch.device('cpu'))
    wrapper.load_state_dict(wrapper_state)
    assert torch.equal(wrapper.synth_data_buffer, buffer)
    assert torch.equal(wrapper.model.token_emb.emb.weight, model.token_emb.emb.weight)


def test_pretrain_trains_and_reports(tmp_path, capsys):
    path = tmp_path / 'sub' / 'dir' / 'up.pt'
    # one turing machine for the whole run (--reset-every 0) makes data that a tiny model learns in 100 steps
    checkpoint = pretrain_tiny(path, '--steps', '100', '--batch-size', '8', '--lr', '1e-2', '--reset-every', '0', '--seed', '0')
    out = capsys.readouterr().out
    assert f'saved checkpoint to {path}' in out
    assert 'final loss' in out and 'synthetic tokens/s' in out
    assert checkpoint['config']['reset_turing_machine_every'] == 0
    # well below the loss of a uniform guess, ln 256 = 5.55 nats
    assert checkpoint['smoothed_loss'] < math.log(256) - 1.


def test_pretrain_gru(tmp_path):
    checkpoint = pretrain_tiny(tmp_path / 'gru.pt', '--gru')
    assert checkpoint['config']['gru'] is True
    assert 'data_generator.net.weight_hh_l0' in checkpoint['wrapper']
    assert checkpoint['wrapper']['data_generator.net.weight_hh_l0'].shape[0] == 3 * 16    # GRU: 3 gates


def test_same_seed_same_loss(tmp_path):
    first = pretrain_tiny(tmp_path / 'a.pt', '--seed', '7')
    second = pretrain_tiny(tmp_path / 'b.pt', '--seed', '7')
    other = pretrain_tiny(tmp_path / 'c.pt', '--seed', '8')
    assert first['final_loss'] == second['final_loss']
    assert torch.equal(first['wrapper']['synth_data_buffer'], second['wrapper']['synth_data_buffer'])
    assert not torch.equal(first['wrapper']['synth_data_buffer'], other['wrapper']['synth_data_buffer'])


# sample


def row_lines(output):
    return [line for line in output.splitlines() if re.match(r'\s+row\s+\d+\s+zlib', line)]


def test_sample_fresh_shows_rows_before_and_after(capsys):
    main(['sample', '--steps', '2', '--rows', '3', '--width', '600'])
    out = capsys.readouterr().out
    lines = row_lines(out)
    assert len(lines) == 6                      # 3 rows at step 0, the same 3 rows at step 2
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
    assert 'step 3' in out                      # the step counter came back with the checkpoint


def test_show_bytes_escapes_and_truncates():
    row = torch.tensor(list(b'ab\n\t\\') + [0, 255, 0x7f], dtype = torch.uint8)
    assert cli.show_bytes(row, 100) == 'ab\\n\\t\\\\\\x00\\xff\\x7f'
    short = cli.show_bytes(torch.full((50,), ord('x'), dtype = torch.uint8), 10)
    assert short == 'xxxxxxx...'
    # never half an escape: a second '\\x00' would leave no room for '...' in 10 characters
    assert cli.show_bytes(torch.tensor([97, 0, 0, 0], dtype = torch.uint8), 10) == 'a\\x00...'
    assert cli.show_bytes(torch.tensor([97, 0], dtype = torch.uint8), 5) == 'a\\x00'


def test_zlib_ratio_tells_noise_from_constant():
    noise = torch.randint(0, 256, (128,), dtype = torch.uint8, generator = torch.Generator().manual_seed(0))
    constant = torch.full((128,), 65, dtype = torch.uint8)
    assert cli.zlib_ratio(noise) > 1.0 > 0.2 > cli.zlib_ratio(constant)


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
    default_file = cli.default_text_file()
    assert default_file.is_file()
    main(['eval', '--checkpoint', str(tiny_checkpoint), '--max-bytes', '4096'])
    out = capsys.readouterr().out
    assert str(default_file) in out and '4,096 bytes' in out
    assert math.isfinite(bits(out, 'pre-trained')) and math.isfinite(bits(out, 'untrained'))


def test_bits_per_byte_of_a_uniform_model_is_8():
    config = {**cli.DEFAULT_CONFIG, 'dim': 16, 'depth': 1, 'heads': 2, 'seq_len': 32}
    model = cli.build_model(config)
    torch.nn.init.zeros_(model.to_logits.weight)        # every logit 0: a uniform guess
    data = bytes(range(256)) * 3 + b'xyz'               # windows of 32 and a short last one
    assert cli.bits_per_byte(model, data, 32, 5, torch.device('cpu')) == pytest.approx(8.0, abs = 1e-5)


class AlwaysA(torch.nn.Module):
    """Predicts byte 'a' with near certainty: a miss costs 1e4 nats, a hit next to nothing."""

    def forward(self, x):
        logits = torch.full((*x.shape, 256), -1e4)          # (batch, length, num_tokens)
        logits[..., ord('a')] = 0.
        return logits


def test_bits_per_byte_counts_every_predicted_position():
    # windows of 8: 'aaaaaaaa' predicts 7 bytes, all hits; 'aaab' predicts 3, one miss
    data = b'aaaaaaaa' + b'aaab'
    bits_per_miss = 1e4 / math.log(2)
    assert cli.bits_per_byte(AlwaysA(), data, 8, 4, torch.device('cpu')) == pytest.approx(bits_per_miss / 10, rel = 1e-4)
    # windows do not overlap, and the first byte of each is context only: these 'b's are never predicted
    assert cli.bits_per_byte(AlwaysA(), b'baaaaaaa' * 3, 8, 2, torch.device('cpu')) < 1e-3
    assert cli.bits_per_byte(AlwaysA(), b'aaaaaaab' * 3, 8, 2, torch.device('cpu')) == pytest.approx(bits_per_miss / 7, rel = 1e-4)


# errors


@pytest.mark.parametrize('argv, argument', [
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
])
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
    assert 'cannot read checkpoint' in capsys.readouterr().err

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
