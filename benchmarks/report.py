"""Tables and a speedup plot from a saved pytest-benchmark JSON of these benchmarks.

    pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python -m benchmarks.report benchmarks/results/cpu.json --out benchmarks/results/

Writes a markdown table (workload, size, implementation, median time, tokens/s, speedup over the
reference, device), the speed targets of benchmarks/targets.py (met, not met or not measured, with
the measured value and its ratio to the target) and what the run skipped and why, to stdout and to
OUT/results.md, and OUT/speedup.png: the speedup of each
implementation over the reference against batch size and against hidden size (the `generate`
sweeps). Speedups are those recorded in the run itself (reference median / this median, one
process), never a comparison across runs. The plot needs matplotlib; --no-plot skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from up_fast.helpers import default, exists

REFERENCE = 'reference'
TABLE_NAME = 'results.md'
PLOT_NAME = 'speedup.png'
SWEEP_AXES = (('batch', 'batch size'), ('hidden', 'hidden size'))


class ReportError(Exception):
    """A user error, reported in one line without a traceback."""


@dataclass
class Row:
    workload: str
    size: str
    implementation: str
    median_s: float
    tokens_per_second: float | None
    speedup: float | None
    device: str
    extra: dict = field(default_factory=dict)


# reading


def load(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(
            f'no such file: {path} (write one with pytest benchmarks --benchmark-only --benchmark-json={path})'
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f'cannot read {path} as JSON: {err}') from None
    if not isinstance(results, dict) or not isinstance(results.get('benchmarks'), list):
        raise ReportError(
            f'{path} is not a pytest-benchmark JSON (no "benchmarks" list): save one with --benchmark-json'
        )
    return results


def machine_device(results: dict) -> str:
    cpu = results.get('machine_info', {}).get('cpu', {})
    return cpu.get('brand_raw') or results.get('machine_info', {}).get('machine') or '?'


def rows_of(results: dict) -> list[Row]:
    """One row per benchmark; those that are not a workload of ours (e.g. the soak) keep their name."""
    fallback_device = machine_device(results)
    rows = []
    for bench in results['benchmarks']:
        info = bench.get('extra_info', {})
        rows.append(
            Row(
                workload=info.get('workload', bench.get('name', '?')),
                size=info.get('size', '-'),
                implementation=info.get('implementation', '-'),
                median_s=bench['stats']['median'],
                tokens_per_second=info.get('tokens_per_second'),
                speedup=info.get('speedup_over_reference'),
                device=info.get('device', fallback_device),
                extra=info,
            )
        )
    return ordered(rows)


def ordered(rows: list[Row]) -> list[Row]:
    # groups in the order of the run, the reference first within each
    groups = defaultdict(list)
    for row in rows:
        groups[(row.workload, row.size)].append(row)
    return [row for group in groups.values() for row in sorted(group, key=lambda r: r.implementation != REFERENCE)]


# formatting


def format_seconds(seconds: float) -> str:
    for unit, scale in (('s', 1.0), ('ms', 1e-3), ('us', 1e-6)):
        if seconds >= scale:
            return f'{seconds / scale:.3g} {unit}'
    return f'{seconds / 1e-9:.3g} ns'


def format_rate(rate: float | None) -> str:
    if not exists(rate):
        return '-'
    for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if rate >= scale:
            return f'{rate / scale:.3g} {unit}'
    return f'{rate:.3g}'


def format_speedup(row: Row) -> str:
    if not exists(row.speedup):
        return '-'
    return '1 (reference)' if row.implementation == REFERENCE else f'{row.speedup:.2f}x'


def format_bytes(n: int | None) -> str:
    if not exists(n):
        return '-'
    for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
        if n >= scale:
            return f'{n / scale:.1f} {unit}'
    return f'{n} B'


def markdown(header: list[str], lines: list[list[str]]) -> str:
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    out += ['| ' + ' | '.join(cells) + ' |' for cells in lines]
    return '\n'.join(out)


def results_table(rows: list[Row]) -> str:
    header = ['workload', 'size', 'implementation', 'median time', 'tokens/s', 'speedup over the reference', 'device']
    lines = [
        [
            r.workload,
            r.size,
            r.implementation,
            format_seconds(r.median_s),
            format_rate(r.tokens_per_second),
            format_speedup(r),
            r.device,
        ]
        for r in rows
    ]
    return markdown(header, lines)


def memory_table(rows: list[Row]) -> str | None:
    rows = [r for r in rows if 'buffer_bytes_per_token' in r.extra]
    if not rows:
        return None
    header = [
        'size',
        'implementation',
        'buffer dtype',
        'buffer bytes/token',
        'buffer',
        'peak GPU memory (wrapper + one data step)',
        'device',
    ]
    lines = [
        [
            r.size,
            r.implementation,
            r.extra.get('buffer_dtype', '-'),
            str(r.extra['buffer_bytes_per_token']),
            format_bytes(r.extra.get('buffer_bytes')),
            format_bytes(r.extra.get('peak_gpu_bytes')),
            r.device,
        ]
        for r in rows
    ]
    return markdown(header, lines)


def target_rows(results: dict) -> list[dict]:
    """The run's targets: the run's list (every target, measured or not), else those recorded in
    the benchmarks' extra_info (JSON written before the list existed, or by a partial run)."""
    listed = results.get('up_fast_targets')
    if isinstance(listed, list):
        return listed
    return [target for bench in results['benchmarks'] for target in bench.get('extra_info', {}).get('targets', [])]


def targets_table(targets: list[dict]) -> str | None:
    if not targets:
        return None
    header = [
        'target',
        'why',
        'set for',
        'status',
        'measured',
        'target value',
        'measured / target',
        'asserted',
        'why not measured',
    ]
    lines = [
        [
            t['name'],
            t.get('reason', '-'),
            t['device'],
            t['status'],
            t.get('measured', '-'),
            t['target'],
            f'{t["ratio_to_target"]:.2f}' if exists(t.get('ratio_to_target')) else '-',
            'yes' if t['asserted'] else 'no (reported only)',
            t.get('why', '') or '-',
        ]
        for t in targets
    ]
    return markdown(header, lines)


def skipped_table(results: dict) -> str | None:
    skipped = results.get('up_fast_skipped')
    if not skipped:
        return None
    by_reason = defaultdict(list)
    for nodeid, reason in skipped.items():
        by_reason[reason].append(nodeid.split('::', 1)[-1])
    lines = [
        [str(len(tests)), reason, ', '.join(sorted(tests))]
        for reason, tests in sorted(by_reason.items(), key=lambda item: -len(item[1]))
    ]
    return markdown(['skipped', 'why', 'tests'], lines)


def report_text(rows: list[Row], source: Path, results: dict | None = None) -> str:
    results = default(results, {'benchmarks': []})
    parts = [
        f'# Benchmark results: {source.name}',
        "Speedup = the reference's median / this median, both measured in the same run. "
        'CPU variants of a size say in brackets what differs from the GPU size.',
        results_table(rows),
    ]
    capped = {r.extra.get('rounds_capped_at') for r in rows} - {None}
    if capped:
        parts.insert(
            2,
            f'**A quick pass**: rounds and warm-up capped at {max(capped)} (UP_FAST_BENCH_ROUNDS); '
            'these timings show that the suite runs, they are not figures to quote.',
        )
    targets = targets_table(target_rows(results))
    if exists(targets):
        parts += [
            '## Targets',
            'Each target is asserted only on the device it was set for; '
            'elsewhere, and where it is a goal rather than a promise, it is reported here.',
            targets,
        ]
    memory = memory_table(rows)
    if exists(memory):
        parts += ['## Memory', memory]
    skipped = skipped_table(results)
    if exists(skipped):
        parts += ['## Skipped', skipped]
    return '\n\n'.join(parts) + '\n'


# plotting


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            'the plot needs matplotlib, which is not installed: pip install matplotlib, or pass --no-plot'
        ) from None
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def sweep_points(rows: list[Row], axis: str) -> dict[str, list[tuple[int, float]]]:
    """{line label: [(size along axis, speedup)]} for the non-reference rows of the sweep over `axis`."""
    workloads = {r.workload for r in rows if r.extra.get('sweep') == axis}
    lines = defaultdict(list)
    for r in rows:
        if r.extra.get('sweep') != axis or r.implementation == REFERENCE or not exists(r.speedup):
            continue
        label = r.implementation if len(workloads) == 1 else f'{r.workload}: {r.implementation}'
        lines[label].append((r.extra[axis], r.speedup))
    return {label: sorted(points) for label, points in lines.items()}


def fixed_settings(rows: list[Row], axis: str) -> str:
    """What the sweep over `axis` holds fixed, e.g. 'hidden 256, vocab 256, seq_len 128'."""
    sweep = [r.extra for r in rows if r.extra.get('sweep') == axis]
    settings = []
    for key, name in (('batch', 'batch'), ('hidden', 'hidden'), ('num_tokens', 'vocab'), ('seq_len', 'seq_len')):
        values = {info.get(key) for info in sweep}
        if key != axis and len(values) == 1 and None not in values:
            settings.append(f'{name} {values.pop()}')
    return ', '.join(settings)


def plot(rows: list[Row], path: Path) -> Path:
    plt = import_pyplot()
    devices = sorted({r.device for r in rows if exists(r.extra.get('sweep'))}) or sorted({r.device for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))

    for ax, (axis, axis_name) in zip(axes, SWEEP_AXES):
        lines = sweep_points(rows, axis)
        ax.axhline(1.0, color='grey', linestyle='--', linewidth=1, label='reference')
        for label, points in lines.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker='o', label=label)
            for x, y in points:
                ax.annotate(f'{y:.2g}x', (x, y), textcoords='offset points', xytext=(0, 6), ha='center', fontsize=8)
        if not lines:
            ax.text(0.5, 0.5, f'no {axis_name} sweep in this JSON', transform=ax.transAxes, ha='center', va='center')
        else:
            xs = sorted({x for points in lines.values() for x, _ in points})
            ax.set_xscale('log', base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.margins(y=0.15)  # room for the labels above the points
        fixed = fixed_settings(rows, axis)
        ax.set_xlabel(f'{axis_name} ({fixed})' if fixed else axis_name)
        ax.set_ylabel('speedup over the reference')
        ax.set_title(f'speedup against {axis_name}')
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)

    fig.suptitle(f'up_fast over x_transformers.up_wrapper, generate, one run ({"; ".join(devices)})', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m benchmarks.report',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        'results',
        type=Path,
        metavar='RESULTS.json',
        help='a JSON saved by pytest benchmarks --benchmark-only --benchmark-json=RESULTS.json',
    )
    parser.add_argument(
        '--out',
        type=Path,
        metavar='DIR',
        help=f'where to write {TABLE_NAME} and {PLOT_NAME} (default: the directory of RESULTS.json)',
    )
    parser.add_argument(
        '--no-plot', action='store_true', help=f'write the table only, without {PLOT_NAME} (and without matplotlib)'
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = default(args.out, args.results.parent)
    try:
        results = load(args.results)
        rows = rows_of(results)
        text = report_text(rows, args.results, results)
        print(text)
        out.mkdir(parents=True, exist_ok=True)
        (out / TABLE_NAME).write_text(text)
        print(f'wrote {out / TABLE_NAME}', file=sys.stderr)
        if not args.no_plot:
            print(f'wrote {plot(rows, out / PLOT_NAME)}', file=sys.stderr)
    except ReportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
