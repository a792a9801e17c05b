"""Statistics of synthetic-data rows that tell noise, structure and collapse apart.

What a researcher looks at in the buffer, step after step:
- zlib ratio: compressed over raw size of a row, about 1.1 for uniform noise (zlib's overhead on
  incompressible bytes), under 0.2 for a constant row, structure in between;
- constant rows: one token repeated (smallest period 1);
- short-period rows: row[i] == row[i + p] for every i, for some period 1 < p <= `max_period`
  (the smallest such p is the row's period); constant rows are not counted again here;
- cycling rows: neither of those, but the second half of the row has a period <= `max_period`
  (a transient, then a cycle: what a recurrent network run greedily often settles into);
- distinct tokens per row: 1 for a constant row, near min(seq_len, vocabulary) for noise.
A buffer that drifts towards constant and short-period rows is collapsing; one that stays at a
zlib ratio of 1.1 is still noise.
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

SHORT_PERIOD = 16  # the largest period counted as short


def row_bytes(row: Tensor | bytes) -> bytes:
    return row if isinstance(row, bytes) else bytes(row.tolist())


def zlib_ratio(row: Tensor | bytes) -> float:
    """Compressed size (zlib, level 9) over raw size of one row of byte ids."""
    data = row_bytes(row)
    return len(zlib.compress(data, 9)) / len(data)


def smallest_period(row: Tensor | bytes, max_period: int = SHORT_PERIOD) -> int | None:
    """The smallest p in 1 .. max_period (and below the row's length) with row[i] == row[i + p]
    for every i, or None when there is none."""
    data = row_bytes(row)
    for period in range(1, min(max_period, len(data) - 1) + 1):
        if data[period:] == data[:-period]:
            return period
    return None


def distinct_tokens(row: Tensor | bytes) -> int:
    return len(set(row_bytes(row)))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), interpolated as numpy's default does."""
    if len(values) == 1:
        return (values[0],) * 3
    q1, q2, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return q1, q2, q3


@dataclass
class BufferStats:
    zlib: tuple[float, float, float]  # quartiles of the per-row zlib ratio
    constant: float  # share of constant rows
    periodic: float  # share of rows with a short period above 1
    cycling: float  # share of other rows whose second half has a short period
    distinct: tuple[float, float, float]  # quartiles of distinct tokens per row

    def as_dict(self) -> dict:
        return dict(
            zlib_q1=self.zlib[0],
            zlib_median=self.zlib[1],
            zlib_q3=self.zlib[2],
            constant_share=self.constant,
            periodic_share=self.periodic,
            cycling_share=self.cycling,
            distinct_q1=self.distinct[0],
            distinct_median=self.distinct[1],
            distinct_q3=self.distinct[2],
        )


def buffer_stats(buffer: Tensor, max_period: int = SHORT_PERIOD) -> BufferStats:
    """The statistics above over the rows of a (rows, seq_len) buffer of byte ids."""
    rows = [row_bytes(row) for row in buffer.cpu()]
    periods = [smallest_period(row, max_period) for row in rows]
    tail_periods = [smallest_period(row[len(row) // 2 :], max_period) for row in rows]
    return BufferStats(
        zlib=quartiles([zlib_ratio(row) for row in rows]),
        constant=sum(period == 1 for period in periods) / len(rows),
        periodic=sum(period is not None and period > 1 for period in periods) / len(rows),
        cycling=sum(period is None and tail is not None for period, tail in zip(periods, tail_periods)) / len(rows),
        distinct=quartiles([float(distinct_tokens(row)) for row in rows]),
    )
