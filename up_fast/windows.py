"""How real text is cut into the rows that a model and the in-context baselines are scored on:
shared by the byte-level model (up_fast/byte_model.py) and the baselines (up_fast/cli/baselines.py)."""

from __future__ import annotations


def split_windows(data: bytes, seq_len: int) -> list[bytes]:
    """The rows a model is scored on: non-overlapping windows of `seq_len` bytes, the last one
    maybe shorter; a window of one byte predicts nothing and is dropped. Within each window,
    every byte after the first is predicted from the bytes before it."""
    if seq_len < 2:
        raise ValueError(f'seq_len must be at least 2 (one byte of context, one predicted), got {seq_len}')
    windows = [data[start : start + seq_len] for start in range(0, len(data), seq_len)]
    return [window for window in windows if len(window) > 1]


def predicted_positions(data: bytes, seq_len: int) -> int:
    """How many bytes the scoring predicts: every byte of every window but its first."""
    return sum(len(window) - 1 for window in split_windows(data, seq_len))
