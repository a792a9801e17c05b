"""NVTX ranges: off by default and absent then; on, every phase of a step is marked."""

import pytest
import torch
from conftest import tiny_model

from up_fast import UniversalPretrainWrapper
from up_fast.profiling import PHASES


def range_names(wrapper):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wrapper()
    return {event.name for event in prof.events() if event.name.startswith('up_fast/')}


def make(**kwargs):
    return UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4, **kwargs)


def test_ranges_mark_every_phase_when_on():
    assert range_names(make(nvtx=True)) == {f'up_fast/{name}' for name in PHASES}


def test_no_ranges_by_default(monkeypatch):
    monkeypatch.delenv('UP_FAST_NVTX', raising=False)
    assert range_names(make()) == set()


@pytest.mark.parametrize('value, on', [('1', True), ('0', False), ('true', True)])
def test_environment_variable_switches_them(monkeypatch, value, on):
    monkeypatch.setenv('UP_FAST_NVTX', value)
    wrapper = make()
    assert wrapper.nvtx is on
    assert bool(range_names(wrapper)) is on
    assert make(nvtx=False).nvtx is False, 'the keyword wins over the environment'


# one data step of a tiny configuration: the fastest run of the entry there is
ONE_DATA_STEP = '--steps 1 --warmup 0 --batch-size 2 --seq-len 16 --dim 16 --data-only'.split()


def test_profile_entry_runs(capsys):
    from up_fast.profiling import main

    main(
        [
            '--steps',
            '2',
            '--warmup',
            '1',
            '--batch-size',
            '2',
            '--seq-len',
            '16',
            '--dim',
            '16',
            '--depth',
            '1',
            '--heads',
            '2',
        ]
    )
    main([*ONE_DATA_STEP, '--gru'])
    out = capsys.readouterr().out
    assert 'training steps on cpu' in out and 'data steps on cpu' in out and 'synthetic tokens/s' in out
    main([*ONE_DATA_STEP, '--backend', 'torch'])
    assert '(torch backend)' in capsys.readouterr().out


def test_profile_entry_prints_the_top_operators(capsys):
    from up_fast.profiling import main

    main([*ONE_DATA_STEP, '--ops', '4'])
    out = capsys.readouterr().out
    assert 'the 4 operators with the most self time' in out
    assert 'aten::' in out or 'mkldnn::' in out


def test_profile_entry_rejects_a_negative_op_count(capsys):
    from up_fast.profiling import main

    with pytest.raises(SystemExit):
        main(['--ops', '-1'])
    assert '--ops must be >= 0, got -1' in capsys.readouterr().err
