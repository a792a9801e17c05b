"""benchmarks/report.py on a tiny JSON in pytest-benchmark's format.

A plain test, not a benchmark: `pytest benchmarks/test_report.py` (--benchmark-only skips it).
"""

import json
import sys

import pytest

from benchmarks import report


def bench(workload, size, impl, median, *, speedup=None, tokens=1000, **extra):
    info = dict(
        workload=workload,
        size=size,
        implementation=impl,
        device='test-device',
        tokens_per_second=tokens / median,
        speedup_over_reference=speedup,
        **extra,
    )
    return dict(
        group=f'{workload} | {size}',
        name=f'test_{workload}[{size}-{impl}]',
        fullname='x',
        params=None,
        extra_info=info,
        stats=dict(median=median, mean=median, min=median, max=median, rounds=3),
    )


def sweep(axis, value, ref_median, fast_median):
    size = f'{axis}-{value}'
    extra = dict(sweep=axis, batch=value if axis == 'batch' else 32, hidden=value if axis == 'hidden' else 256)
    return [
        bench('generate', size, 'reference', ref_median, speedup=1.0, **extra),
        bench('generate', size, 'up_fast-torch', fast_median, speedup=ref_median / fast_median, **extra),
    ]


@pytest.fixture
def results_json(tmp_path):
    benchmarks = [
        # the run's order: up_fast before the reference here, to check the table puts the reference first
        bench('generate', 'example', 'up_fast-torch', 0.5, speedup=2.0),
        bench('generate', 'example', 'reference', 1.0, speedup=1.0),
        bench(
            'memory',
            'example',
            'reference',
            0.3,
            buffer_dtype='torch.int64',
            buffer_bytes_per_token=8,
            buffer_bytes=8 * 2**20,
        ),
        bench(
            'memory',
            'example',
            'up_fast-torch',
            0.2,
            buffer_dtype='torch.uint8',
            buffer_bytes_per_token=1,
            buffer_bytes=2**20,
        ),
        dict(
            group=None,
            name='test_soak_data_path',
            fullname='y',
            params=None,
            extra_info=dict(steps=10),
            stats=dict(median=20.0),
        ),
        *sweep('batch', 1, 0.010, 0.020),
        *sweep('batch', 8, 0.040, 0.020),
        *sweep('hidden', 64, 0.030, 0.010),
    ]
    path = tmp_path / 'run.json'
    path.write_text(json.dumps(dict(machine_info=dict(cpu=dict(brand_raw='test-cpu')), benchmarks=benchmarks)))
    return path


def table_rows(text):
    # the cells of each data row of the first markdown table
    lines = [
        line
        for line in text.splitlines()
        if line.startswith('| ') and not line.startswith('| workload') and not line.startswith('| size')
    ]
    return [[cell.strip() for cell in line.strip('|').split('|')] for line in lines]


def test_table_and_plot(results_json, tmp_path, capsys):
    out = tmp_path / 'out'
    assert report.main([str(results_json), '--out', str(out)]) == 0
    printed = capsys.readouterr().out

    rows = table_rows(printed)
    assert rows[0] == ['generate', 'example', 'reference', '1 s', '1 k', '1 (reference)', 'test-device']
    assert rows[1] == ['generate', 'example', 'up_fast-torch', '500 ms', '2 k', '2.00x', 'test-device']
    assert ['test_soak_data_path', '-', '-', '20 s', '-', '-', 'test-cpu'] in rows
    assert ['generate', 'batch-1', 'up_fast-torch', '20 ms', '50 k', '0.50x', 'test-device'] in rows
    assert ['example', 'up_fast-torch', 'torch.uint8', '1', '1.0 MiB', '-', 'test-device'] in rows  # the memory table

    assert (out / 'results.md').read_text() == printed.rstrip('\n') + '\n'
    png = (out / 'speedup.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000


def test_sweep_points(results_json):
    rows = report.rows_of(report.load(results_json))
    assert report.sweep_points(rows, 'batch') == {'up_fast-torch': [(1, 0.5), (8, 2.0)]}
    assert report.sweep_points(rows, 'hidden') == {'up_fast-torch': [(64, pytest.approx(3.0))]}


def test_without_matplotlib(results_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    out = tmp_path / 'out'
    assert report.main([str(results_json), '--out', str(out)]) == 1
    assert 'pip install matplotlib' in capsys.readouterr().err
    assert (out / 'results.md').exists() and not (out / 'speedup.png').exists()

    assert report.main([str(results_json), '--out', str(out), '--no-plot']) == 0


def test_not_a_benchmark_json(tmp_path, capsys):
    path = tmp_path / 'bad.json'
    path.write_text('{"something": 1}')
    assert report.main([str(path)]) == 1
    assert 'not a pytest-benchmark JSON' in capsys.readouterr().err
    assert report.main([str(tmp_path / 'missing.json')]) == 1
