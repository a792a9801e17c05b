from functools import partial

import pytest

from benchmarks import harness


@pytest.fixture
def measure(benchmark):
    """harness.measure bound to this test's benchmark: warm-up, synchronised timing, extra_info
    (configuration, environment, tokens per second) and the speedup over the reference."""
    return partial(harness.measure, benchmark)


@pytest.fixture
def record(benchmark):
    """harness.record bound to this test's benchmark, for tests that time things their own way."""
    return partial(harness.record, benchmark)
