"""The synthetic-data buffer: its dtype, fresh noise rows, and which rows one training step reads and writes.

The wrapper keeps the buffer and runs the step; this module holds the row accounting, so that the two
step orders (the reference's Algorithm 1 and the paper author's) are stated, drawn and tested in one
place. Every draw comes from torch's random number generators (an explicit torch.Generator when
given), and nothing reads a value back to the host, so a step on a GPU never waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from up_fast.helpers import default, exists


def token_dtype(num_tokens: int) -> torch.dtype:
    """The smallest integer dtype that holds token ids 0 .. num_tokens - 1."""
    if num_tokens <= 256:
        return torch.uint8
    if num_tokens <= 32768:
        return torch.int16
    if num_tokens <= 2**31:
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
    """The buffer rows one training step touches, all int64 on the buffer's device.

    A step writes in one order whatever `reset_first` says: first the reset rows get fresh noise
    (half uniform random, half constant rows, the kinds in a random order), then the generated rows
    replace the condition rows, so a row that is both ends up holding its generated row. The training
    batch is drawn after both.

    reset_first=False, Algorithm 1 as the reference means it: condition rows and reset rows come from
    one permutation, so they do not overlap while num_reset <= buffer_size - generator batch; beyond
    that the reset rows continue round the permutation onto condition rows, whose generated rows then
    win. Seeds and conditions are read as they were before the step; seed rows are any rows (with
    replacement), each cropped at an offset of its own.

    reset_first=True, the paper author's order: the reset rows are distinct random rows, reset before
    anything is read, so conditions and seeds may read fresh noise; the condition rows are distinct
    rows drawn independently of them.

    With distinct_seed_rows the seed rows are distinct; with shared_seed_offset every seed is
    cropped at one offset (seed_offsets then holds that offset in every entry).
    """

    condition_rows: Tensor  # (generator batch,) rows whose generated continuation replaces them
    reset_rows: Tensor  # (num_reset,) rows that become fresh noise
    seed_rows: Tensor  # (generator batch,) rows the seeds are cropped from
    seed_offsets: Tensor  # (generator batch,) start of each seed crop, in [0, seq_len - seed_length]
    batch_rows: Tensor  # (batch,) distinct rows of the training batch
    reset_first: bool = False


def draw_step_rows(
    buffer_size: int,
    batch_size: int,
    num_reset: int,
    seq_len: int,
    seed_length: int,
    *,
    generation_batch_size: int | None = None,
    reset_first: bool = False,
    distinct_seed_rows: bool = False,
    shared_seed_offset: bool = False,
    device=None,
    generator: torch.Generator | None = None,
) -> StepRows:
    """The rows of one step (see StepRows). Needs generator batch <= buffer_size, batch_size <= buffer_size
    and num_reset <= buffer_size; the wrapper checks these once, at construction."""
    source_batch = default(generation_batch_size, batch_size)

    def distinct(count):
        return torch.randperm(buffer_size, device=device, generator=generator)[:count]

    if reset_first:
        reset_rows = distinct(num_reset)
        condition_rows = distinct(source_batch)
        batch_rows = distinct(batch_size)
    else:
        perm = torch.randperm(buffer_size, device=device, generator=generator)
        condition_rows = perm[:source_batch]
        reset_rows = perm[source_batch : source_batch + num_reset]
        wrapped = num_reset - (buffer_size - source_batch)
        if wrapped > 0:  # more resets than rows besides the conditions: continue round onto them
            reset_rows = torch.cat((reset_rows, perm[:wrapped]))
        batch_rows = distinct(batch_size)

    if distinct_seed_rows:
        seed_rows = distinct(source_batch)
    else:
        seed_rows = torch.randint(0, buffer_size, (source_batch,), device=device, generator=generator)

    num_offsets = 1 if shared_seed_offset else source_batch
    seed_offsets = torch.randint(0, seq_len - seed_length + 1, (num_offsets,), device=device, generator=generator)

    return StepRows(
        condition_rows=condition_rows,
        reset_rows=reset_rows,
        seed_rows=seed_rows,
        seed_offsets=seed_offsets.expand(source_batch),
        batch_rows=batch_rows,
        reset_first=reset_first,
    )


def read_rows(
    buffer: Tensor, rows: Tensor, columns: Tensor | None = None, *, pending: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """buffer[rows] (or buffer[rows[b], columns[b]] with columns (n, width)), as the buffer reads once
    `pending` = (reset_rows, noise) is written into it, without writing it: so that a step that fails
    later leaves the buffer as it was."""
    out = buffer[rows] if not exists(columns) else buffer[rows[:, None], columns]

    if not exists(pending) or pending[0].numel() == 0:
        return out

    reset_rows, noise = pending
    slot = torch.full(
        (buffer.shape[0],), -1, dtype=torch.long, device=buffer.device
    )  # (buffer_size,) noise row of each reset row
    slot[reset_rows] = torch.arange(reset_rows.shape[0], device=buffer.device)
    row_slot = slot[rows]  # (n,)
    noise_index = row_slot.clamp(min=0)
    from_noise = noise[noise_index] if not exists(columns) else noise[noise_index[:, None], columns]
    return torch.where((row_slot >= 0)[:, None], from_noise.to(out.dtype), out)


def seed_columns(offsets: Tensor, seed_length: int) -> Tensor:
    """(batch, seed_length) positions of each seed crop."""
    return offsets[:, None] + torch.arange(seed_length, device=offsets.device)


# the buffer's side of a data step: each has a Triton twin with the same signature in
# up_fast.kernels.buffer_ops (the wrapper picks one by its backend). All reads of a step come
# before any write: gather_prefix before the generator, write_rows_ after it, gather_rows last.


def gather_prefix(
    buffer: Tensor,
    seed_rows: Tensor,
    seed_offsets: Tensor,
    condition_rows: Tensor,
    seed_length: int,
    *,
    pending: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.long,
) -> Tensor:
    """(n, seed_length + seq_len) of `dtype`: each seed crop buffer[seed_rows[b], offset[b]:offset[b] + seed_length],
    then its condition row, as the buffer reads once `pending` = (reset_rows, noise) is written (not writing it)."""
    columns = seed_columns(seed_offsets, seed_length)
    seeds = read_rows(buffer, seed_rows, columns, pending=pending)  # (n, seed_length)
    conditions = read_rows(buffer, condition_rows, pending=pending)  # (n, seq_len)
    return torch.cat((seeds, conditions), dim=-1).to(dtype)


def gather_rows(buffer: Tensor, rows: Tensor, *, dtype: torch.dtype = torch.long) -> Tensor:
    """buffer[rows] as `dtype`, (n, seq_len)."""
    return buffer[rows].to(dtype)


def write_rows_(
    buffer: Tensor, reset_rows: Tensor, noise: Tensor | None, condition_rows: Tensor, generated: Tensor
) -> Tensor:
    """In place: noise over reset_rows (when given), then generated over condition_rows, which wins where a
    row is both. A generated row holding a negative id (the mark of a sampling launch that gave up) is
    refused on the device, with no host sync: its row keeps what it held before the step."""
    generated = generated.to(buffer.device)
    valid = (generated >= 0).all(dim=1, keepdim=True)  # (conditions, 1)
    held = buffer[condition_rows]  # before any write of this step
    if exists(noise):
        buffer[reset_rows] = noise.to(buffer.device, buffer.dtype)
    buffer[condition_rows] = torch.where(valid, generated.to(buffer.dtype), held)
    return buffer
