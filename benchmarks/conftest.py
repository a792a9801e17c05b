from functools import partial

import pytest

from benchmarks import harness, targets

# what this run skipped (node id -> reason) and ran (node ids), for the summary at the end
SKIPPED: dict[str, str] = {}
RAN: set[str] = set()
COLLECTED_BENCHMARKS = False


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


def pytest_collection_modifyitems(items):
    global COLLECTED_BENCHMARKS
    COLLECTED_BENCHMARKS = any('benchmark' in getattr(item, 'fixturenames', ()) for item in items)


def pytest_terminal_summary(terminalreporter):
    # after a session with benchmarks, not after one of the plain tests here (the report's, the targets')
    if not (COLLECTED_BENCHMARKS or targets.RESULTS):
        return
    rows = targets.summary(SKIPPED, RAN)
    terminalreporter.section('up_fast speed targets, and what was skipped')
    for line in targets.summary_lines(rows, SKIPPED):
        terminalreporter.write_line(line)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    # every target, met or not or not measured and why: python -m benchmarks.report prints them
    output_json['up_fast_targets'] = targets.summary(SKIPPED, RAN)
    output_json['up_fast_skipped'] = dict(SKIPPED)
