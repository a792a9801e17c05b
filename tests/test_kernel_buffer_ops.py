"""The buffer kernels (kernels/buffer_ops.py) against their PyTorch twins (up_fast/buffer.py): exact equality.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
Every case draws its rows with draw_step_rows, as a training step does, over a fresh random buffer.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest

pytest.importorskip('triton')

from conftest import tiny_model  # noqa: E402

from up_fast import buffer as twin  # noqa: E402
from up_fast.kernels import buffer_ops as kernel  # noqa: E402
from up_fast.up_wrapper import UniversalPretrainWrapper  # noqa: E402

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

DTYPES = {'uint8': (torch.uint8, 256), 'int16': (torch.int16, 32768), 'int32': (torch.int32, 2**31)}

PAPER = dict(reset_first=True, distinct_seed_rows=True, shared_seed_offset=True)

# (id, buffer_size, batch_size, generation batch, num_reset, seq_len, seed_length, step options)
CASES = [
    ('reference', 37, 4, 4, 6, 24, 5, {}),
    ('reference-reset-wraps', 13, 3, 5, 12, 16, 3, {}),
    ('reference-all-rows-reset', 9, 2, 4, 8, 10, 9, {}),
    ('paper', 41, 4, 8, 10, 24, 8, PAPER),
    ('paper-every-row-reset', 11, 3, 6, 10, 12, 2, PAPER),
    ('no-reset', 15, 4, 4, 0, 12, 4, {}),
    ('more-rows-than-a-match-block', 301, 8, 150, 140, 8, 3, PAPER),
    ('rows-longer-than-a-block', 7, 2, 3, 2, 1100, 7, {}),
]


def draw(case, dtype, seed=0):
    _, buffer_size, batch_size, source_batch, num_reset, seq_len, seed_length, options = case
    dtype, high = DTYPES[dtype]
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    buffer = torch.randint(0, high, (buffer_size, seq_len), device=DEVICE, generator=generator).to(dtype)
    rows = twin.draw_step_rows(
        buffer_size,
        batch_size,
        num_reset,
        seq_len,
        seed_length,
        generation_batch_size=source_batch,
        device=DEVICE,
        generator=generator,
        **options,
    )
    noise = (
        torch.randint(0, high, (num_reset, seq_len), device=DEVICE, generator=generator).to(dtype)
        if num_reset
        else None
    )
    generated = torch.randint(
        0, high, (source_batch, seq_len), device=DEVICE, generator=generator
    )  # int64, as generated
    return buffer, rows, noise, generated, seed_length


def step(ops, buffer, rows, noise, generated, seed_length):
    """One step's buffer work in the wrapper's order: the prefix (all reads), then the writes, then the batch."""
    pending = (rows.reset_rows, noise) if rows.reset_first and noise is not None else None
    prefix = ops.gather_prefix(
        buffer, rows.seed_rows, rows.seed_offsets, rows.condition_rows, seed_length, pending=pending
    )
    narrow = ops.gather_prefix(
        buffer, rows.seed_rows, rows.seed_offsets, rows.condition_rows, seed_length, pending=pending, dtype=buffer.dtype
    )
    ops.write_rows_(buffer, rows.reset_rows, noise, rows.condition_rows, generated)
    batch = ops.gather_rows(buffer, rows.batch_rows)
    return prefix, narrow, batch


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('case', CASES, ids=[case[0] for case in CASES])
def test_kernels_equal_the_pytorch_twins(case, dtype):
    buffer, rows, noise, generated, seed_length = draw(case, dtype)
    expected_buffer, buffer_ = buffer.clone(), buffer.clone()

    expected = step(twin, expected_buffer, rows, noise, generated, seed_length)
    got = step(kernel, buffer_, rows, noise, generated, seed_length)

    for name, want, have in zip(('prefix', 'narrow prefix', 'batch'), expected, got):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert torch.equal(have, want), f'{name} differs'
    assert torch.equal(buffer_, expected_buffer), 'the buffer after write-back and reset differs'
    assert not torch.equal(buffer_, buffer), 'the step wrote something'


def test_the_twins_are_what_the_step_means():
    # the twins' semantics, spelled out on one paper-order step with overlaps: a seed row that is
    # reset reads its noise, a reset row that is a condition row ends with its generated row
    case = ('paper-every-row-reset', 11, 3, 6, 10, 12, 2, PAPER)
    buffer, rows, noise, generated, seed_length = draw(case, 'uint8', seed=3)
    before = buffer.clone()
    after_reset = before.clone()
    after_reset[rows.reset_rows] = noise
    prefix, _, batch = step(twin, buffer, rows, noise, generated, seed_length)

    for b in range(6):
        offset = int(rows.seed_offsets[b])
        assert torch.equal(
            prefix[b, :seed_length], after_reset[rows.seed_rows[b], offset : offset + seed_length].long()
        )
        assert torch.equal(prefix[b, seed_length:], after_reset[rows.condition_rows[b]].long())
    assert torch.equal(buffer[rows.condition_rows].long(), generated)
    others = [r for r in rows.reset_rows.tolist() if r not in rows.condition_rows.tolist()]
    assert others and torch.equal(buffer[others], after_reset[others])
    assert torch.equal(batch, buffer[rows.batch_rows].long())


def test_a_buffer_without_contiguous_rows_is_refused_by_name():
    buffer = torch.zeros(8, 6, dtype=torch.uint8, device=DEVICE).t()
    with pytest.raises(ValueError, match='buffer must be a .* contiguous rows'):
        kernel.gather_rows(buffer, torch.zeros(2, dtype=torch.long, device=DEVICE))


def run_steps(wrapper, steps):
    batches = [wrapper.data_step_() for _ in range(steps)]
    return batches, wrapper.synth_data_buffer.clone()


@pytest.mark.parametrize('order', ['reference', 'paper'])
def test_the_wrapper_with_buffer_kernels_steps_like_the_pytorch_path(monkeypatch, order):
    def build(backend):
        torch.manual_seed(0)
        model = tiny_model(num_tokens=40, dim=16)
        if order == 'paper':
            wrapper = UniversalPretrainWrapper.paper(
                model, batch_size=3, seq_len=12, num_reset=10, rng_seed=7, backend='torch'
            )
        else:
            wrapper = UniversalPretrainWrapper(
                model,
                seq_len=12,
                batch_size=3,
                buffer_size=11,
                num_reset=10,
                seed_length=4,
                generation_batch_size=5,
                reset_turing_machine_every=2,
                rng_seed=7,
                backend='torch',
            )
        wrapper.backend = backend  # the buffer's ops only: the generator samples on its PyTorch path in both
        return wrapper.to(DEVICE)

    expected_batches, expected_buffer = run_steps(build('torch'), 3)

    def twin_ran(*args, **kwargs):
        raise AssertionError('the PyTorch twin ran where the buffer kernels should')

    for name in ('gather_prefix', 'gather_rows', 'write_rows_'):
        monkeypatch.setattr(twin, name, twin_ran)
    batches, buffer = run_steps(build('triton'), 3)

    assert torch.equal(buffer, expected_buffer)
    for got, want in zip(batches, expected_batches):
        assert got.dtype == torch.long and torch.equal(got, want)


def test_a_buffer_the_kernels_cannot_reach_takes_the_pytorch_twins(monkeypatch):
    # keep_buffer_on_cpu beside a GPU generator with backend='triton': the buffer's side stays on the CPU twins
    from up_fast import backend, up_wrapper

    wrapper = UniversalPretrainWrapper(
        tiny_model(num_tokens=40, dim=16),
        seq_len=12,
        batch_size=3,
        buffer_size=11,
        num_reset=2,
        backend='torch',
        keep_buffer_on_cpu=True,
    )
    wrapper.backend = 'triton'
    monkeypatch.setattr(up_wrapper, 'interpreted', lambda: False)
    assert wrapper.buffer_ops(wrapper.synth_data_buffer) is twin
    monkeypatch.setattr(up_wrapper, 'interpreted', lambda: True)
    monkeypatch.setattr(backend, 'interpreted', lambda: True)
    assert wrapper.buffer_ops(wrapper.synth_data_buffer) is kernel
