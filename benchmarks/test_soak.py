"""Soak: 10,000 data steps at a small size. Memory stays flat, weights stay finite, tokens stay in range.

    pytest benchmarks --benchmark-only -k soak

Reports in extra_info: resident memory after warm-up and at the end, GPU memory, the number of
Turing-machine re-draws survived, the token range seen, and (Triton backend, CUDA only) how many
variants of the sampling kernel were compiled after warm-up, which must be none. SOAK_STEPS
overrides the length.
"""

import os

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

from up_fast import UniversalPretrainWrapper

STEPS = int(os.environ.get('SOAK_STEPS', 10_000))
WARMUP = 200
CHECK_EVERY = 100
CONFIG = dict(batch_size=4, seq_len=32, seed_length=4, buffer_size=64, num_reset=8, reset_turing_machine_every=50)


def resident_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def all_finite(module):
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def compiled_kernel_variants():
    """How many variants of the sampling kernel Triton has compiled in this process (None: unknown)."""
    from up_fast.kernels.recurrent_sample import recurrent_sample_kernel

    caches = getattr(recurrent_sample_kernel, 'device_caches', None)  # newer Triton: device -> (cache, ...)
    if caches is not None:
        return sum(len(entry[0]) for entry in caches.values())
    cache = getattr(recurrent_sample_kernel, 'cache', None)  # older Triton: device -> cache
    return sum(len(entry) for entry in cache.values()) if cache is not None else None


@pytest.mark.skipif(not os.path.exists('/proc/self/statm'), reason='resident memory is read from /proc (Linux)')
@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_soak_data_path(benchmark, backend):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if backend == 'triton' and device != 'cuda':
        pytest.skip('no Triton path on a CPU: the kernel needs CUDA')
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=256, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=2))
    wrapper = UniversalPretrainWrapper(model, **CONFIG, rng_seed=0, backend=backend).to(device)
    seen = dict(low=255, high=0, redraws=0)

    def soak():
        for step in range(1, STEPS + 1):
            batch = wrapper.data_step_()
            if step == WARMUP:
                seen['rss_after_warmup'] = resident_bytes()
                seen['kernels_after_warmup'] = compiled_kernel_variants() if backend == 'triton' else None
                if device == 'cuda':
                    torch.cuda.synchronize()
                    seen['gpu_after_warmup'] = torch.cuda.memory_allocated()
            if step % CHECK_EVERY == 0:
                buffer = wrapper.synth_data_buffer
                seen['low'] = min(seen['low'], int(buffer.min()), int(batch.min()))
                seen['high'] = max(seen['high'], int(buffer.max()), int(batch.max()))
                assert all_finite(wrapper.data_generator), f'non-finite generator weights at step {step}'
        seen['rss_end'] = resident_bytes()
        seen['kernels_end'] = compiled_kernel_variants() if backend == 'triton' else None
        seen['redraws'] = STEPS // CONFIG['reset_turing_machine_every']
        if device == 'cuda':
            torch.cuda.synchronize()
            seen['gpu_end'] = torch.cuda.memory_allocated()

    benchmark.pedantic(soak, rounds=1, iterations=1)

    growth = seen['rss_end'] - seen['rss_after_warmup']
    benchmark.extra_info.update(
        steps=STEPS,
        device=device,
        backend=backend,
        config=CONFIG,
        rss_after_warmup_mib=seen['rss_after_warmup'] / 2**20,
        rss_end_mib=seen['rss_end'] / 2**20,
        rss_growth_mib=growth / 2**20,
        turing_machine_redraws=seen['redraws'],
        token_min=seen['low'],
        token_max=seen['high'],
        step_ms=benchmark.stats.stats.median / STEPS * 1e3,
    )
    if device == 'cuda':
        benchmark.extra_info.update(gpu_after_warmup=seen['gpu_after_warmup'], gpu_end=seen['gpu_end'])
        assert seen['gpu_end'] == seen['gpu_after_warmup'], 'GPU memory grew after warm-up'

    if seen['kernels_after_warmup'] is not None:
        benchmark.extra_info.update(
            kernel_variants_after_warmup=seen['kernels_after_warmup'], kernel_variants_end=seen['kernels_end']
        )
        assert seen['kernels_end'] == seen['kernels_after_warmup'], 'the sampling kernel was recompiled after warm-up'

    assert 0 <= seen['low'] and seen['high'] < 256
    assert growth < 16 * 2**20, f'resident memory grew by {growth / 2**20:.1f} MiB after warm-up'
    assert int(wrapper.step) == STEPS and all_finite(wrapper.data_generator)
