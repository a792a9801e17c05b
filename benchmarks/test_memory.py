"""Memory of one data step at the example size, against the reference measured in the same run.

    pytest benchmarks --benchmark-only -k memory

Recorded in extra_info: the buffer's dtype and bytes per token (up_fast keeps the narrowest integer
dtype, uint8 for 256 tokens; the reference int64) and, with CUDA, the peak GPU memory of the
wrapper and one data step (torch.cuda.max_memory_allocated after reset_peak_memory_stats, above
what was allocated before the wrapper was built). Asserted: 8x fewer buffer bytes per token at
vocab 256, and with CUDA a peak no higher than the reference's.
"""

import gc

import pytest
import torch

from benchmarks.harness import ON_CUDA, REFERENCE, group_name, synchronized, warm_up
from benchmarks.implementations import IMPLEMENTATIONS, data_step_fn
from benchmarks.sizes import EXAMPLE_MODEL, MEMORY_SIZE

MEMORY = {}  # implementation -> what it measured; the reference runs first


def allocated_after_cleanup() -> int:
    # earlier tests' wrappers must not count against this one
    gc.collect()
    if not ON_CUDA:
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


@pytest.mark.parametrize('impl', IMPLEMENTATIONS)
def test_memory_data_step(benchmark, record, impl):
    size, model = MEMORY_SIZE, EXAMPLE_MODEL
    before = allocated_after_cleanup()

    step, wrapper = data_step_fn(impl, size, model)
    warm_up(step, 1)
    if ON_CUDA:
        torch.cuda.reset_peak_memory_stats()

    benchmark.group = group_name('memory', size.label)
    benchmark.pedantic(synchronized(step), rounds=1, iterations=1)  # one data step

    buffer = wrapper.synth_data_buffer  # (buffer_size, seq_len)
    measured = dict(
        buffer_dtype=str(buffer.dtype),
        buffer_bytes_per_token=buffer.element_size(),
        buffer_bytes=buffer.numel() * buffer.element_size(),
    )
    if ON_CUDA:
        # the wrapper's own memory (model, generator, buffer) plus the step's temporaries
        measured['peak_gpu_bytes'] = torch.cuda.max_memory_allocated() - before

    record(workload='memory', size=size, impl=impl, config=dict(size.config(), model=model.config()))
    benchmark.extra_info.update(measured)
    MEMORY[impl] = measured

    if impl == REFERENCE:
        return

    ref = MEMORY.get(REFERENCE)
    assert ref is not None, 'the reference did not run before this in the same process: nothing to compare against'

    ratio = ref['buffer_bytes_per_token'] / measured['buffer_bytes_per_token']
    benchmark.extra_info['buffer_bytes_per_token_vs_reference'] = ratio
    if size.num_tokens == 256:
        assert ratio == 8, (
            f'buffer bytes per token: reference {ref["buffer_bytes_per_token"]}, {impl} '
            f'{measured["buffer_bytes_per_token"]}; expected 8x fewer'
        )

    if ON_CUDA:
        benchmark.extra_info['peak_gpu_bytes_vs_reference'] = measured['peak_gpu_bytes'] / ref['peak_gpu_bytes']
        assert measured['peak_gpu_bytes'] <= ref['peak_gpu_bytes'], (
            f'peak GPU memory of a data step: {impl} {measured["peak_gpu_bytes"] / 2**20:.1f} MiB, '
            f"above the reference's {ref['peak_gpu_bytes'] / 2**20:.1f} MiB"
        )
