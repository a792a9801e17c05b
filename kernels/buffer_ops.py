"""The buffer's side of a data step as Triton kernels: prefix gather, write-back and reset, batch gather.

Each launcher has a plain-PyTorch twin in up_fast/buffer.py with the same signature and the same
result, bit for bit (tests/test_kernel_buffer_ops.py compares them):

    gather_prefix(buffer, seed_rows, seed_offsets, condition_rows, seed_length, pending=, dtype=)
        -> (n, seed_length + seq_len): each row's seed, buffer[seed_rows[b], offset[b]:offset[b] + seed_length],
           then its condition row buffer[condition_rows[b]], read as the buffer would be after `pending`
           (reset_rows, noise) is written, without writing it (the paper author's reset-first order);
    gather_rows(buffer, rows, dtype=) -> buffer[rows], widened (the training batch);
    write_rows_(buffer, reset_rows, noise, condition_rows, generated): noise over the reset rows, then
        the generated rows over the condition rows (a row that is both ends with its generated row).

Two kernels, both reading the buffer in its narrow integer dtype (uint8, int16, int32) and widening
in registers: `gather_kernel` (the prefix, or with seed_length 0 any row gather) and `write_kernel`.

Ordering rule: every read of a step happens before any write. A seed row may also be a condition or
a reset row, and a write kernel's programs run in any order, so no launch both reads and writes the
buffer: the prefix is gathered by one launch, the generator runs, the write-back is one later launch
on the same stream (launches on one stream run in order, so all reads of the gather are done before
the first write), and the training batch is gathered by a launch after it. Inside `write_kernel`
no two programs write one row: reset rows are distinct, condition rows are distinct, and a reset
program whose row is also a condition row writes nothing (its generated row wins), so the result
does not depend on the order in which programs run.

Grid: one program per (row, column block) of BLOCK columns. The kernels move (n, seq_len) narrow
integers, a few hundred KiB at the example size: launch-bound, so BLOCK covers a whole 512-token row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from up_fast.kernels.aot import AotConfig

NUM_WARPS = 4
MAX_BLOCK = 1024  # columns a program: a whole row at seq_len <= 1024
BLOCK_MATCH = 128  # rows compared at once when looking a row up in a list of rows

TRITON_DTYPES = {torch.uint8: 'u8', torch.int16: 'i16', torch.int32: 'i32', torch.int64: 'i64'}


@triton.jit
def index_of(rows_ptr, count, row, BLOCK_MATCH: tl.constexpr):
    """The position of `row` in rows[0:count] (distinct rows), or -1."""
    found = tl.full((), -1, tl.int32)
    for start in range(0, count, BLOCK_MATCH):
        idx = start + tl.arange(0, BLOCK_MATCH)
        candidates = tl.load(rows_ptr + idx, mask=idx < count, other=-1)
        found = tl.maximum(found, tl.max(tl.where(candidates == row, idx, -1), axis=0))
    return found


@triton.jit
def gather_kernel(
    buffer_ptr,
    seed_rows_ptr,
    seed_offsets_ptr,
    rows_ptr,
    reset_rows_ptr,
    noise_ptr,
    out_ptr,
    seq_len,
    seed_length,
    num_reset,
    buffer_stride,
    noise_stride,
    out_stride,
    HAS_SEED: tl.constexpr,
    HAS_PENDING: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_MATCH: tl.constexpr,
):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) columns of output row b
    mask = cols < seed_length + seq_len

    row = tl.load(rows_ptr + b)
    if HAS_SEED:
        is_seed = cols < seed_length
        seed_row = tl.load(seed_rows_ptr + b)
        offset = tl.load(seed_offsets_ptr + b)
        source_row = tl.where(is_seed, seed_row, row)  # (BLOCK,) the buffer row of each column
        source_col = tl.where(is_seed, offset + cols, cols - seed_length)
    else:
        source_row = tl.zeros((BLOCK,), tl.int64) + row
        source_col = cols

    value = tl.load(buffer_ptr + source_row * buffer_stride + source_col, mask=mask, other=0)
    value = value.to(out_ptr.dtype.element_ty)

    if HAS_PENDING:
        # a row about to be reset reads its noise row instead (the reset-first order)
        slot = tl.zeros((BLOCK,), tl.int32) + index_of(reset_rows_ptr, num_reset, row, BLOCK_MATCH)
        if HAS_SEED:
            seed_slot = index_of(reset_rows_ptr, num_reset, seed_row, BLOCK_MATCH)
            slot = tl.where(is_seed, seed_slot, slot)
        from_noise = slot >= 0
        noise = tl.load(noise_ptr + slot.to(tl.int64) * noise_stride + source_col, mask=mask & from_noise, other=0)
        value = tl.where(from_noise, noise.to(out_ptr.dtype.element_ty), value)

    tl.store(out_ptr + b * out_stride + cols, value, mask=mask)


@triton.jit
def write_kernel(
    buffer_ptr,
    reset_rows_ptr,
    noise_ptr,
    condition_rows_ptr,
    generated_ptr,
    seq_len,
    num_reset,
    num_conditions,
    buffer_stride,
    noise_stride,
    generated_stride,
    BLOCK: tl.constexpr,
    BLOCK_MATCH: tl.constexpr,
):
    p = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < seq_len

    if p < num_reset:
        row = tl.load(reset_rows_ptr + p)
        # a reset row that is also a condition row ends with its generated row: leave it to that program
        found = index_of(condition_rows_ptr, num_conditions, row, BLOCK_MATCH)
        keep = mask & ((cols * 0 + found) < 0)  # (BLOCK,) the scalar test as a column mask
        noise = tl.load(noise_ptr + p * noise_stride + cols, mask=keep, other=0)
        tl.store(buffer_ptr + row * buffer_stride + cols, noise.to(buffer_ptr.dtype.element_ty), mask=keep)
    else:
        c = p - num_reset
        row = tl.load(condition_rows_ptr + c)
        # a generated row holding a negative id (a sampling launch that gave up) is refused: the row keeps
        # what it held before the step (its reset program left it to this one)
        offs = tl.arange(0, BLOCK)
        smallest = tl.min(tl.load(generated_ptr + c * generated_stride + offs, mask=offs < seq_len, other=0), axis=0)
        for start in range(BLOCK, seq_len, BLOCK):
            part = tl.load(generated_ptr + c * generated_stride + start + offs, mask=start + offs < seq_len, other=0)
            smallest = tl.minimum(smallest, tl.min(part, axis=0))
        valid = mask & ((cols * 0 + smallest) >= 0)  # (BLOCK,) the row's test as a column mask
        generated = tl.load(generated_ptr + c * generated_stride + cols, mask=valid, other=0)
        tl.store(buffer_ptr + row * buffer_stride + cols, generated.to(buffer_ptr.dtype.element_ty), mask=valid)


# launchers


def block_for(width: int) -> int:
    return min(triton.next_power_of_2(max(width, 1)), MAX_BLOCK)


def check_buffer(buffer: Tensor) -> Tensor:
    if buffer.dim() != 2 or buffer.stride(1) != 1 or buffer.dtype not in TRITON_DTYPES:
        raise ValueError(
            f'buffer must be a (rows, seq_len) integer tensor with contiguous rows, '
            f'got shape {tuple(buffer.shape)}, '
            f'strides {buffer.stride()}, dtype {buffer.dtype}'
        )
    return buffer


def on_buffer(buffer: Tensor, t: Tensor) -> Tensor:
    """`t` on the buffer's device with contiguous rows (a no-op for what the step hands in)."""
    return t.to(buffer.device).contiguous()


def gather_prefix(
    buffer: Tensor,  # (buffer_size, seq_len) narrow integers
    seed_rows: Tensor,  # (n,)
    seed_offsets: Tensor,  # (n,)
    condition_rows: Tensor,  # (n,)
    seed_length: int,
    *,
    pending: tuple[Tensor, Tensor] | None = None,  # (reset_rows (r,), noise (r, seq_len)), not yet written
    dtype: torch.dtype = torch.long,
) -> Tensor:
    """(n, seed_length + seq_len) of `dtype`: each seed crop, then its condition row. One launch."""
    check_buffer(buffer)
    n, seq_len = condition_rows.shape[0], buffer.shape[1]
    width = seed_length + seq_len
    out = torch.empty((n, width), dtype=dtype, device=buffer.device)
    if n == 0:
        return out
    seed_rows, seed_offsets, condition_rows = (on_buffer(buffer, t) for t in (seed_rows, seed_offsets, condition_rows))
    reset_rows, noise = pending if pending is not None and pending[0].numel() > 0 else (condition_rows, buffer)
    has_pending = reset_rows is not condition_rows
    reset_rows, noise = on_buffer(buffer, reset_rows), on_buffer(buffer, noise)
    block = block_for(width)
    gather_kernel[(n, triton.cdiv(width, block))](
        buffer,
        seed_rows,
        seed_offsets,
        condition_rows,
        reset_rows,
        noise,
        out,
        seq_len,
        seed_length,
        reset_rows.shape[0] if has_pending else 0,
        buffer.stride(0),
        noise.stride(0),
        out.stride(0),
        HAS_SEED=True,
        HAS_PENDING=has_pending,
        BLOCK=block,
        BLOCK_MATCH=BLOCK_MATCH,
        num_warps=NUM_WARPS,
    )
    return out


def gather_rows(buffer: Tensor, rows: Tensor, *, dtype: torch.dtype = torch.long) -> Tensor:
    """buffer[rows] as `dtype`, (n, seq_len). One launch."""
    check_buffer(buffer)
    n, seq_len = rows.shape[0], buffer.shape[1]
    out = torch.empty((n, seq_len), dtype=dtype, device=buffer.device)
    if n == 0:
        return out
    rows = on_buffer(buffer, rows)
    block = block_for(seq_len)
    gather_kernel[(n, triton.cdiv(seq_len, block))](
        buffer,
        rows,
        rows,
        rows,
        rows,
        buffer,
        out,
        seq_len,
        0,
        0,
        buffer.stride(0),
        buffer.stride(0),
        out.stride(0),
        HAS_SEED=False,
        HAS_PENDING=False,
        BLOCK=block,
        BLOCK_MATCH=BLOCK_MATCH,
        num_warps=NUM_WARPS,
    )
    return out


def write_rows_(
    buffer: Tensor, reset_rows: Tensor, noise: Tensor | None, condition_rows: Tensor, generated: Tensor
) -> Tensor:
    """In place: noise (r, seq_len) over reset_rows (r,), then generated (n, seq_len) over condition_rows (n,).
    One launch."""
    check_buffer(buffer)
    seq_len = buffer.shape[1]
    num_reset = reset_rows.shape[0] if noise is not None else 0
    num_conditions = condition_rows.shape[0]
    if num_reset + num_conditions == 0:
        return buffer
    condition_rows, generated = on_buffer(buffer, condition_rows), on_buffer(buffer, generated)
    if num_reset:
        reset_rows, noise = on_buffer(buffer, reset_rows), on_buffer(buffer, noise)
    else:
        reset_rows, noise = condition_rows, generated  # placeholders: no reset program runs
    block = block_for(seq_len)
    write_kernel[(num_reset + num_conditions, triton.cdiv(seq_len, block))](
        buffer,
        reset_rows,
        noise,
        condition_rows,
        generated,
        seq_len,
        num_reset,
        num_conditions,
        buffer.stride(0),
        noise.stride(0),
        generated.stride(0),
        BLOCK=block,
        BLOCK_MATCH=BLOCK_MATCH,
        num_warps=NUM_WARPS,
    )
    return buffer


# ahead-of-time compile configurations (kernels/aot.py)


def aot_configurations(arch: int = 90) -> list[AotConfig]:
    """The configurations the launchers choose at the example size (seq_len 512, seed_length 8): every
    buffer dtype, prefix gather with and without pending resets, batch gather, write-back."""
    configs = []
    seq_len, seed_length = 512, 8
    for buffer_type in ('u8', 'i16', 'i32'):
        for name, has_seed, has_pending, width in (
            ('prefix', True, False, seed_length + seq_len),
            ('prefix-pending', True, True, seed_length + seq_len),
            ('batch', False, False, seq_len),
        ):
            signature = dict(
                buffer_ptr='*' + buffer_type,
                seed_rows_ptr='*i64',
                seed_offsets_ptr='*i64',
                rows_ptr='*i64',
                reset_rows_ptr='*i64',
                noise_ptr='*' + buffer_type,
                out_ptr='*i64',
                seq_len='i32',
                seed_length='i32',
                num_reset='i32',
                buffer_stride='i32',
                noise_stride='i32',
                out_stride='i32',
            )
            constexprs = dict(
                HAS_SEED=has_seed, HAS_PENDING=has_pending, BLOCK=block_for(width), BLOCK_MATCH=BLOCK_MATCH
            )
            configs.append(
                AotConfig(
                    name=f'gather-{name}-{buffer_type}',
                    fn=gather_kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=NUM_WARPS,
                    num_stages=1,
                    programs=64,
                )
            )
        signature = dict(
            buffer_ptr='*' + buffer_type,
            reset_rows_ptr='*i64',
            noise_ptr='*' + buffer_type,
            condition_rows_ptr='*i64',
            generated_ptr='*i64',
            seq_len='i32',
            num_reset='i32',
            num_conditions='i32',
            buffer_stride='i32',
            noise_stride='i32',
            generated_stride='i32',
        )
        configs.append(
            AotConfig(
                name=f'write-{buffer_type}',
                fn=write_kernel,
                signature=signature,
                constexprs=dict(BLOCK=block_for(seq_len), BLOCK_MATCH=BLOCK_MATCH),
                num_warps=NUM_WARPS,
                num_stages=1,
                programs=52,
            )
        )
    return configs
