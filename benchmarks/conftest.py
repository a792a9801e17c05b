from collections import defaultdict
from functools import partial

import pytest

from benchmarks import harness, targets

# what this session skipped (node id -> reason) and ran (node ids), for the summary at the end
SKIPPED: dict[str, str] = {}
RAN: set[str] = set()


@pytest.fixture
def measure(benchmark):
    """harness.measure bound to this test's benchmark: warm-up, synchronised timing, extra_info
    (configuration, environment, tokens per second) and the speedup over the reference."""
    return partial(harness.measure, benchmark)


@pytest.fixture
def record(benchmark):
    """harness.record bound to this test's benchmark, for tests that time things their own way."""
    return partial(harness.record, benchmark)


def skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix('Skipped: ')


def pytest_runtest_logreport(report):
    if report.skipped:
        SKIPPED[report.nodeid] = skip_reason(report)
    elif report.when == 'call':
        RAN.add(report.nodeid)


def skipped_groups(skipped: dict[str, str]) -> list[str]:
    """One line per skip reason: how many, the reason, which files."""
    by_reason = defaultdict(list)
    for nodeid, reason in skipped.items():
        by_reason[reason].append(nodeid)
    lines = []
    for reason, nodeids in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        files = sorted({nodeid.split('::')[0].rsplit('/', 1)[-1] for nodeid in nodeids})
        lines.append(f'{len(nodeids):3d} skipped: {reason} ({", ".join(files)})')
    return lines


def target_line(row: dict) -> str:
    status = row['status'].upper() if row['status'] == 'not met' else row['status']
    kind = 'asserted' if row['asserted'] else 'reported only'
    head = f'{status:<12} {row["name"]} (issue {row["issue"]}, {row["device"]}, {kind})'
    if row['status'] == 'not measured':
        return f'{head}: {row["why"]}'
    return f'{head}: measured {row["measured"]}, target {row["target"]} ({row["ratio_to_target"]:.2f} of the target)'


def summary_lines(rows: list[dict], skipped: dict[str, str]) -> list[str]:
    lines = [target_line(row) for row in rows]
    unmet = [row for row in rows if row['status'] == 'not met' and not row['asserted']]
    if unmet:
        lines.append('targets not met and reported only do not fail the run: their issue did not ask for an assertion here')
    lines += skipped_groups(skipped) or ['nothing skipped']
    return lines


def pytest_terminal_summary(terminalreporter):
    rows = targets.summary(SKIPPED, RAN)
    terminalreporter.section('up_fast speed targets, and what was skipped')
    for line in summary_lines(rows, SKIPPED):
        terminalreporter.write_line(line)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # every target, met or not or not measured and why: python -m benchmarks.report prints them
    output_json['up_fast_targets'] = targets.summary(SKIPPED, RAN)
    output_json['up_fast_skipped'] = dict(SKIPPED)
