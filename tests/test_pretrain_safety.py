"""`up-fast pretrain` never loses a run and trusts no damaged checkpoint: saves on a signal and every few steps,
checksums, one writer per path, divergence, options given to a resumed run, the best evaluated model.
Real signals to real processes where it matters; tiny configs in a fresh directory."""

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from up_fast.cli import main, pretrain

# test_cli's tiny run, without its step count: these tests set their own
TINY = '--dim 16 --depth 1 --heads 2 --seq-len 32 --batch-size 4 --source xt --eval-every 0'.split()


@pytest.fixture(autouse=True)
def in_a_fresh_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    # one line, after the progress bar's if training had started
    lines = [line for line in re.split(r'[\r\n]', err) if line.strip() and not line.startswith('pretrain:')]
    assert exit.value.code == 1 and len(lines) == 1 and err.endswith(lines[0] + '\n') and 'Traceback' not in err, err
    return lines[0]


def start(tmp_path, *argv) -> subprocess.Popen:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(
        [sys.executable, '-m', 'up_fast.cli', *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_training(process: subprocess.Popen) -> list[str]:
    # this line is printed once the run holds its --out and handles signals
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith('pre-training'):
            return lines
    raise AssertionError(f'the run ended before training: {"".join(lines)}{process.stderr.read()}')


def assert_same_run(first: dict, second: dict):
    assert first['final_loss'] == second['final_loss'] and first['smoothed_loss'] == second['smoothed_loss']
    for part in ('wrapper', 'model'):
        assert first[part].keys() == second[part].keys()
        for key, value in first[part].items():
            assert torch.equal(second[part][key], value), (part, key)
    for index, state in first['optimizer']['state'].items():
        for key, value in state.items():
            assert torch.equal(second['optimizer']['state'][index][key], value), ('optimizer', index, key)


# saved on a signal, and every few steps


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_a_signal_saves_after_the_step_and_the_resumed_run_equals_one_run(tmp_path, signum):
    run = [*TINY, '--steps', '100000']
    process = start(tmp_path, 'pretrain', *run, '--out', 'part.pt')
    wait_until_training(process)
    time.sleep(1.5)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)

    assert process.returncode == 130, err
    assert 'Traceback' not in err
    assert 'continue with `up-fast pretrain --resume part.pt`' in out
    assert not (tmp_path / 'part.pt.lock').exists()
    done = int(load(tmp_path / 'part.pt')['wrapper']['step'])
    assert done >= 1  # the step under way is finished, then saved

    # the interrupted run, resumed for 3 steps, is the run that went straight to that step
    main(['pretrain', '--resume', 'part.pt', '--stop-after', '3'])
    main(['pretrain', *run, '--stop-after', str(done + 3), '--out', 'whole.pt'])
    resumed, whole = load(tmp_path / 'part.pt'), load(tmp_path / 'whole.pt')
    assert int(resumed['wrapper']['step']) == done + 3
    assert_same_run(whole, resumed)


def test_saves_every_save_every_steps_and_by_default_with_each_evaluation(tmp_path, monkeypatch):
    saved = []
    save = pretrain.save_checkpoint

    def recording(checkpoint, path):
        saved.append((Path(path).name, int(checkpoint['wrapper']['step'])))
        save(checkpoint, path)

    monkeypatch.setattr(pretrain, 'save_checkpoint', recording)
    main(['pretrain', *TINY, '--steps', '6', '--save-every', '2', '--out', 'a.pt'])
    assert saved == [('a.pt', 2), ('a.pt', 4), ('a.pt', 6)]

    saved.clear()
    (tmp_path / 'text.txt').write_bytes(b'some real text to evaluate on, ' * 20)
    main(
        [
            'pretrain',
            *TINY,
            '--steps',
            '4',
            '--eval-every',
            '2',
            '--eval-text',
            'text.txt',
            '--no-keep-best',
            '--out',
            'b.pt',
        ]
    )
    assert saved == [('b.pt', 2), ('b.pt', 4)]


# checksums and one writer per path


def invert_bytes_inside_the_largest_tensor(path: Path):
    with zipfile.ZipFile(path) as archive:  # torch.save writes each tensor's bytes as a member NAME/data/KEY
        member = max(
            (info for info in archive.infolist() if '/data/' in info.filename), key=lambda info: info.file_size
        )
    data = bytearray(path.read_bytes())
    # a zip local header: 30 bytes, then the name and the extra field, then the member's bytes
    name_length, extra_length = struct.unpack('<HH', data[member.header_offset + 26 : member.header_offset + 30])
    start = member.header_offset + 30 + name_length + extra_length + member.file_size // 2 - 32
    data[start : start + 64] = bytes(byte ^ 0xFF for byte in data[start : start + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    'command',
    [['eval', '--checkpoint'], ['sample', '--checkpoint'], ['pretrain', '--resume']],
    ids=['eval', 'sample', 'resume'],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, capsys, command):
    path = tmp_path / 'damaged.pt'
    main(['pretrain', *TINY, '--steps', '4', '--stop-after', '2', '--out', str(path)])
    invert_bytes_inside_the_largest_tensor(path)
    load(path)  # torch reads it without a word

    err = one_line_error(capsys, [*command, str(path)])
    assert f'{path} is damaged' in err and 'checksum' in err


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path, capsys):
    path = tmp_path / 'run.pt'
    main(['pretrain', *TINY, '--steps', '2', '--out', str(path)])
    checkpoint = load(path)
    checkpoint['format_version'] = 99
    torch.save(checkpoint, path)
    err = one_line_error(capsys, ['eval', '--checkpoint', str(path)])
    assert 'format 99' in err and 'newer' in err


def test_two_runs_cannot_write_one_path(tmp_path):
    first = start(tmp_path, 'pretrain', *TINY, '--steps', '100000', '--out', 'same.pt')
    wait_until_training(first)

    second = subprocess.run(
        [sys.executable, '-m', 'up_fast.cli', 'pretrain', *TINY, '--steps', '3', '--seed', '2', '--out', 'same.pt'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)

    assert second.returncode == 1, second.stdout
    assert 'same.pt is being written by another run' in second.stderr and 'same.pt.lock' in second.stderr
    assert second.stderr.count('\n') == 1
    assert first.returncode == 130, err
    assert load(tmp_path / 'same.pt')['config']['seed'] == 0  # the first run's, whole
    assert not (tmp_path / 'same.pt.lock').exists()


def test_a_lock_left_by_a_run_that_died_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    import socket

    (tmp_path / 'run.pt.lock').write_text(f'{int(gone.stdout)} {socket.gethostname()}\n')
    main(['pretrain', *TINY, '--steps', '2', '--out', 'run.pt'])
    assert int(load(tmp_path / 'run.pt')['wrapper']['step']) == 2
    assert not (tmp_path / 'run.pt.lock').exists()


# divergence


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_good_checkpoint(tmp_path, capsys):
    out = tmp_path / 'run.pt'
    main(['pretrain', *TINY, '--steps', '200', '--stop-after', '2', '--out', str(out)])
    good = out.read_bytes()

    err = one_line_error(capsys, ['pretrain', '--resume', str(out), '--lr', '1e6', '--override'])
    match = re.search(
        r'training diverged: the loss is (nan|inf|-inf) at step (\d+) \(last finite loss (\S+) at step (\d+)\)', err
    )
    assert match, err
    assert int(match[4]) == int(match[2]) - 1 and math.isfinite(float(match[3]))
    assert f'{out} (step 2) is kept as it was' in err and 'lower --lr' in err
    assert out.read_bytes() == good

    # saving every step: the last step with a finite loss is what stays
    err = one_line_error(capsys, ['pretrain', '--resume', str(out), '--lr', '1e6', '--override', '--save-every', '1'])
    bad_step = int(re.search(r'at step (\d+) \(', err)[1])
    kept = load(out)
    assert int(kept['wrapper']['step']) == bad_step - 1 and math.isfinite(kept['final_loss'])
    assert f'(step {bad_step - 1}) is kept' in err


# options given to a resumed run


def test_resume_refuses_options_that_disagree_unless_overridden(tmp_path, capsys):
    out = tmp_path / 'run.pt'
    main(['pretrain', *TINY, '--steps', '6', '--stop-after', '2', '--out', str(out)])

    err = one_line_error(capsys, ['pretrain', '--resume', str(out), '--dim', '32', '--lr', '0.5'])
    assert '--dim 32 (the run has 16)' in err and 'keeps its model' in err
    err = one_line_error(capsys, ['pretrain', '--resume', str(out), '--dim', '32', '--override'])
    assert '--dim 32 (the run has 16)' in err
    err = one_line_error(capsys, ['pretrain', '--resume', str(out), '--lr', '0.5', '--steps', '8'])
    assert '--lr 0.5 (the run has 0.001)' in err and '--steps 8 (the run has 6)' in err and '--override' in err
    assert int(load(out)['wrapper']['step']) == 2

    main(
        ['pretrain', '--resume', str(out), '--lr', '0.5', '--steps', '8', '--dim', '16', '--override']
    )  # --dim as the run's: fine
    assert 'lr 0.001 -> 0.5' in capsys.readouterr().out
    resumed = load(out)
    assert resumed['config']['lr'] == 0.5 and resumed['config']['steps'] == 8 and int(resumed['wrapper']['step']) == 8
    assert resumed['scheduler']['base_lrs'] == [0.5]


# the best evaluation


def test_the_best_evaluation_is_kept_beside_the_last(tmp_path, capsys):
    text = tmp_path / 'text.txt'
    text.write_bytes(b'the quick brown fox jumps over the lazy dog; ' * 30)
    out = tmp_path / 'run.pt'
    main(
        [
            'pretrain',
            *TINY,
            '--steps',
            '6',
            '--eval-every',
            '1',
            '--eval-text',
            str(text),
            '--lr',
            '0.01',
            '--out',
            str(out),
        ]
    )
    output = capsys.readouterr().out

    trained = [record for record in load(out)['eval_history'] if record['step'] > 0]
    best = min(trained, key=lambda record: record['bits_per_byte'])
    best_file = tmp_path / 'run.best.pt'
    assert (
        f'best zero-shot evaluation: {best["bits_per_byte"]:.3f} bits/byte at step {best["step"]}, saved to '
        f'{best_file}; last: {trained[-1]["bits_per_byte"]:.3f} at step 6'
    ) in output
    assert int(load(best_file)['wrapper']['step']) == best['step']

    # eval and sample take it
    main(['eval', '--checkpoint', str(best_file), '--text', str(text), '--max-bytes', '0', '--json'])
    assert json.loads(capsys.readouterr().out)['bits_per_byte']['pretrained'] == pytest.approx(
        best['bits_per_byte'], abs=1e-5
    )
    main(['sample', '--checkpoint', str(best_file), '--rows', '1'])

    main(
        [
            'pretrain',
            *TINY,
            '--steps',
            '2',
            '--eval-every',
            '1',
            '--eval-text',
            str(text),
            '--no-keep-best',
            '--out',
            str(tmp_path / 'other.pt'),
        ]
    )
    assert not (tmp_path / 'other.best.pt').exists()


# sizes checked before any work


@pytest.mark.parametrize(
    'argv, option',
    [
        (['--batch-size', '1000000000'], '--batch-size 1000000000'),
        (['--seq-len', '100000', '--steps', '1'], '--seq-len 100000'),
    ],
    ids=['batch_size', 'seq_len'],
)
def test_a_size_that_cannot_fit_is_refused_before_any_work(tmp_path, argv, option):
    result = subprocess.run(
        [
            sys.executable,
            '-X',
            'importtime',
            '-m',
            'up_fast.cli',
            'pretrain',
            *argv,
            '--device',
            'cpu',
            '--out',
            'x.pt',
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith('import time:')]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert option in lines[0] and re.search(
        r'needs about [\d.,]+ [KMGTP]iB of memory .* than the [\d.,]+ [KMGTP]iB available on cpu', lines[0]
    )
    # refused before torch is imported: nothing allocated, no time lost
    imported = {
        line.split('|')[-1].strip().split('.')[0]
        for line in result.stderr.splitlines()
        if line.startswith('import time:')
    }
    assert 'up_fast' in imported and 'torch' not in imported
    assert not (tmp_path / 'x.pt').exists()


def test_the_memory_estimate_counts_the_model_exactly_and_is_checked_against_what_is_available(monkeypatch, capsys):
    from up_fast.cli import common, sizes

    for dim, depth, heads, seq_len in [(128, 2, 4, 128), (16, 1, 2, 32), (96, 3, 3, 64)]:
        config = {**common.DEFAULT_CONFIG, 'dim': dim, 'depth': depth, 'heads': heads, 'seq_len': seq_len}
        assert sizes.parameter_count(config) == sum(p.numel() for p in common.build_model(config).parameters())

    monkeypatch.setattr(sizes, 'host_memory_available', lambda: 1024 * 1024)
    err = one_line_error(capsys, ['pretrain', *TINY, '--steps', '2', '--device', 'cpu'])
    assert 'more than the 1.0 MiB available on cpu' in err and '--batch-size 4' in err
