"""The synthetic-data buffer: its dtype, fresh noise rows, and the row draws of one training step.

Everything here draws from torch's random number generators (the global ones, or an explicit
torch.Generator), so `torch.manual_seed` makes a run repeatable, and nothing reads a value back
to the host, so a step on a GPU never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def token_dtype(num_tokens: int) -> torch.dtype:
    """The smallest integer dtype that holds token ids 0 .. num_tokens - 1."""
    if num_tokens <= 256:
        return torch.uint8
    if num_tokens <= 32768:
        return torch.int16
    if num_tokens <= 2 ** 31:
        return torch.int32
    raise ValueError(f'num_tokens must be at most 2**31, got {num_tokens}')


def noise_rows(
    num_random: int,
    num_constant: int,
    seq_len: int,
    num_tokens: int,
    *,
    device=None,
    dtype=torch.long,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(num_random + num_constant, seq_len): first uniform random rows, then constant rows,
    each constant row with a token of its own."""
    rand_rows = torch.randint(0, num_tokens, (num_random, seq_len), device=device, generator=generator)
    const_tokens = torch.randint(0, num_tokens, (num_constant, 1), device=device, generator=generator)
    const_rows = const_tokens.expand(num_constant, seq_len)
    return torch.cat((rand_rows, const_rows)).to(dtype)


@dataclass
class StepRows:
    """The buffer rows one training step touches, all (n,) int64 on the buffer's device.

    condition_rows and reset_rows come from one permutation, so they never overlap: a row is either
    regenerated or reset in a step, never both. Seeds are read before anything is written, so they
    may come from any row. The training batch is drawn after the writes, so it can see this step's
    generated and reset rows.
    """

    condition_rows: Tensor    # (batch,) rows whose generated continuation replaces them
    reset_rows: Tensor        # (num_reset,) rows that become fresh noise
    seed_rows: Tensor         # (batch,) rows the seeds are cropped from
    seed_offsets: Tensor      # (batch,) start of each seed crop, in [0, seq_len - seed_length]
    batch_rows: Tensor        # (batch,) rows of the training batch


def draw_step_rows(
    buffer_size: int,
    batch_size: int,
    num_reset: int,
    seq_len: int,
    seed_length: int,
    *,
    device=None,
    generator: torch.Generator | None = None,
) -> StepRows:
    perm = torch.randperm(buffer_size, device=device, generator=generator)
    batch_rows = torch.randperm(buffer_size, device=device, generator=generator)[:batch_size]
    seed_rows = torch.randint(0, buffer_size, (batch_size,), device=device, generator=generator)
    seed_offsets = torch.randint(0, seq_len - seed_length + 1, (batch_size,), device=device, generator=generator)

    return StepRows(
        condition_rows=perm[:batch_size],
        reset_rows=perm[batch_size:batch_size + num_reset],
        seed_rows=seed_rows,
        seed_offsets=seed_offsets,
        batch_rows=batch_rows,
    )


def gather_seeds(buffer: Tensor, rows: Tensor, offsets: Tensor, seed_length: int) -> Tensor:
    """Crops buffer[rows[b], offsets[b] : offsets[b] + seed_length] -> (batch, seed_length)."""
    positions = offsets[:, None] + torch.arange(seed_length, device=offsets.device)    # (batch, seed_length)
    return buffer[rows[:, None], positions]
