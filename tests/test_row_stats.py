"""Buffer statistics of `up-fast sample` (up_fast/cli/row_stats.py) on hand-made rows: constant,
periodic, cycling after a transient, random."""

import random

import pytest
import torch

from up_fast.cli.row_stats import buffer_stats, distinct_tokens, quartiles, smallest_period, zlib_ratio

CONSTANT = b'q' * 128
PERIODIC = b'abc' * 42 + b'ab'  # 128 bytes, period 3 to the very end
CYCLING = b'transient!' + b'xyz' * 39 + b'x'  # a transient, then period 3
_rng = random.Random(0)
NOISE = bytes(_rng.randrange(256) for _ in range(128))


def test_smallest_period():
    assert smallest_period(CONSTANT) == 1
    assert smallest_period(PERIODIC) == 3
    assert smallest_period(PERIODIC, max_period=2) is None
    assert smallest_period(b'abab' * 8 + b'abb') is None  # one wrong byte at the end breaks it
    assert smallest_period(CYCLING) is None
    assert smallest_period(CYCLING[64:]) == 3
    assert smallest_period(NOISE) is None
    assert smallest_period(b'ab') is None  # a period must repeat at least one byte


def test_tensor_and_bytes_agree():
    row = torch.tensor(list(PERIODIC), dtype=torch.uint8)
    assert smallest_period(row) == 3
    assert distinct_tokens(row) == 3
    assert zlib_ratio(row) == zlib_ratio(PERIODIC)


def test_distinct_tokens_and_zlib_ratio():
    assert distinct_tokens(CONSTANT) == 1
    assert distinct_tokens(PERIODIC) == 3
    assert distinct_tokens(NOISE) > 80  # 128 draws from 256 values: about 98 distinct
    assert zlib_ratio(NOISE) > 1.0 > 0.2 > zlib_ratio(CONSTANT)
    assert zlib_ratio(CONSTANT) < zlib_ratio(PERIODIC) < zlib_ratio(NOISE)


def test_quartiles_interpolate_as_numpy_does():
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0]) == pytest.approx((1.75, 2.5, 3.25))
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    values = torch.rand(37, generator=torch.Generator().manual_seed(0))
    expected = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double))
    assert quartiles(values.tolist()) == pytest.approx(expected.tolist())


def test_buffer_stats_counts_each_kind_of_row():
    buffer = torch.tensor([list(row) for row in (CONSTANT, PERIODIC, CYCLING, NOISE)], dtype=torch.uint8)  # (4, 128)
    stats = buffer_stats(buffer)
    assert stats.constant == 0.25
    assert stats.periodic == 0.25
    assert stats.cycling == 0.25
    assert stats.distinct == quartiles([1.0, 3.0, float(distinct_tokens(CYCLING)), float(distinct_tokens(NOISE))])
    assert stats.zlib == quartiles([zlib_ratio(row) for row in (CONSTANT, PERIODIC, CYCLING, NOISE)])
    assert set(stats.as_dict()) >= {
        'zlib_median',
        'constant_share',
        'periodic_share',
        'cycling_share',
        'distinct_median',
    }

    # with a bound below 3, the periodic and the cycling rows are neither
    short = buffer_stats(buffer, max_period=2)
    assert (short.constant, short.periodic, short.cycling) == (0.25, 0.0, 0.0)
