"""The native CPU step (up_fast/cpu_step.py) against the PyTorch step it replaces: bit for bit.

The native step is only worth having if nothing changes but the time: every state, token and noise
count must equal the PyTorch step's (FoldedRecurrentNet.stepper with gumbel_max), on one thread and
on two, at sizes whose tensors ATen splits over threads and whose rows are not whole vector blocks.
Where it cannot be had (no compiler, UP_FAST_NATIVE off, a failed probe) the PyTorch step runs.
"""

import os
import subprocess
import sys

import pytest
import torch

from up_fast import SyntheticDataGenerator, cpu_step
from up_fast.sampling import FoldedRecurrentNet, GumbelNoise, StepNoise, gumbel_max

# (batch, hidden, num_tokens): the example; rows not a whole number of vector blocks; tiny; gates
# past ATen's grain size (split over threads); a large vocabulary with a ragged last block; gates and
# state that ATen splits over two threads in the middle of a vector block
SHAPES = [(32, 256, 256), (7, 33, 50), (3, 5, 2), (128, 512, 256), (5, 40, 1000), (33, 1001, 40)]
THREADS = [1, 2]


def needs_native():
    status = cpu_step.native_status()
    if status != 'available':
        pytest.skip(f'the native step is not available here: {status}')


@pytest.fixture(autouse=True)
def fresh_native(monkeypatch):
    """Each test sees the environment it sets: the library and the probes' verdicts are looked up anew."""
    cpu_step.library_or_why.cache_clear()
    monkeypatch.setattr(cpu_step, 'PROBED', {})
    yield
    cpu_step.library_or_why.cache_clear()


@pytest.fixture(params=THREADS, ids=[f'threads{t}' for t in THREADS])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def random_net(hidden, num_tokens, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(hidden, hidden, batch_first=True)
    return FoldedRecurrentNet.fold(torch.nn.Embedding(num_tokens, hidden), lstm, torch.nn.Linear(hidden, num_tokens))


def assert_bitwise_equal(torch_state, native_state):
    # bit patterns, not values: torch.equal takes -0 for 0, and a subnormal for 0 where denormals flush
    for name, a, b in zip(('h / 2', '2 c'), torch_state, native_state):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), (
            f'{name} differs by up to {(a - b).abs().max().item():.3g}'
        )


def random_state(batch, hidden):
    return torch.randn(batch, hidden), torch.randn(batch, hidden) * 3  # (h / 2, 2 c), far from zero


@pytest.mark.parametrize('batch, hidden, num_tokens', SHAPES, ids=[f'b{b}-h{h}-v{v}' for b, h, v in SHAPES])
def test_the_native_cell_equals_the_pytorch_cell_bitwise(batch, hidden, num_tokens, threads):
    needs_native()
    net = random_net(hidden, num_tokens)
    torch_state = random_state(batch, hidden)
    native_state = tuple(t.clone() for t in torch_state)
    torch_step = net.stepper(torch_state)
    native = cpu_step.NativeLstmStep(net.input_table, native_state, None)
    with torch.inference_mode():
        for _ in range(12):
            tokens = torch.randint(0, num_tokens, (batch,))
            product = torch.randn(batch, 4 * hidden + num_tokens) * 4  # the recurrent term as a strided view
            torch_step(tokens, product[:, : 4 * hidden])
            native.cell(tokens, product[:, : 4 * hidden])
    assert_bitwise_equal(torch_state, native_state)


def awkward_logits(product, band, hidden, step):
    """Random logits with what the band must get exactly right: ties with the top, logits on the floor
    and one float below it, a row of -inf, rows holding NaNs, tied +inf."""
    batch, num_tokens = product.shape[0], product.shape[1] - 4 * hidden
    logits = product[:, 4 * hidden :]
    rows = torch.arange(batch)
    top = logits.amax(dim=-1, keepdim=True)
    floor = band.floor(top).squeeze(-1)
    logits[rows, torch.randint(0, num_tokens, (batch,))] = top.squeeze(-1)
    logits[rows, torch.randint(0, num_tokens, (batch,))] = floor
    logits[rows, torch.randint(0, num_tokens, (batch,))] = torch.nextafter(floor, torch.tensor(-torch.inf))
    if step % 3 == 1:
        logits[batch - 1] = -torch.inf
    if step % 5 == 3:
        logits[0, 0] = logits[0, num_tokens - 1] = torch.inf
    if step % 4 == 2:
        logits[0, num_tokens // 2] = torch.nan
        logits[0, num_tokens - 1] = torch.nan
    return logits


def decode_side_by_side(batch, hidden, num_tokens, temperature, length=24, draw_uniform=None):
    """`length` decoding steps of the PyTorch step and of the native one (falling back as the loop
    does) on the same awkward logits and seeded noise, asserting tokens and noise taken equal after
    each and the states bitwise equal at the end. Returns (steps the native step declined, whether the
    noise went to every token). `draw_uniform(pool, count)` replaces both pools' draws."""
    net = random_net(hidden, num_tokens)
    torch_state = random_state(batch, hidden)
    native_state = tuple(t.clone() for t in torch_state)
    torch_step = net.stepper(torch_state)
    noises = [
        GumbelNoise(batch, length, num_tokens, temperature, device='cpu', generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    if draw_uniform:
        for noise in noises:
            noise.pool.draw_uniform = lambda count, pool=noise.pool: draw_uniform(pool, count)
    native = cpu_step.NativeLstmStep(net.input_table, native_state, noises[1].band)
    torch_tokens, native_tokens = torch.empty(batch, dtype=torch.long), torch.empty(batch, dtype=torch.long)
    declined = 0
    with torch.inference_mode():
        for step in range(length):
            product = torch.randn(batch, 4 * hidden + num_tokens) * 3  # (batch, 4 * hidden + num_tokens)
            logits = awkward_logits(product, noises[0].band, hidden, step)
            hidden_gates = product[:, : 4 * hidden]
            torch_step(gumbel_max(logits, temperature, StepNoise(noises[0], step), out=torch_tokens), hidden_gates)
            if not native.decode(product, noises[1], native_tokens):  # the caller's fallback
                declined += 1
                sampled = gumbel_max(logits, temperature, StepNoise(noises[1], step), out=native_tokens)
                native.cell(sampled, hidden_gates)
            assert torch.equal(torch_tokens, native_tokens), f'step {step}'
            assert noises[0].pool.handed_out == noises[1].pool.handed_out, f'step {step}'
    assert_bitwise_equal(torch_state, native_state)
    assert noises[0].every_token == noises[1].every_token
    return declined, noises[0].every_token


@pytest.mark.parametrize('temperature', [1e-4, 0.05, 1.0], ids=['T1e-4', 'T0.05', 'T1'])
@pytest.mark.parametrize('batch, hidden, num_tokens', SHAPES, ids=[f'b{b}-h{h}-v{v}' for b, h, v in SHAPES])
def test_a_native_decoding_step_equals_gumbel_max_and_the_cell(batch, hidden, num_tokens, temperature, threads):
    needs_native()
    declined, every_token = decode_side_by_side(batch, hidden, num_tokens, temperature)
    # once every token is in the band (a high temperature) the PyTorch step draws for all: the native one declines
    assert (declined > 0) == every_token


def test_more_threads_than_rows(monkeypatch):
    needs_native()
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        decode_side_by_side(2, 40, 30, 1e-4)
    finally:
        torch.set_num_threads(before)


def test_steps_around_a_u_of_zero_stay_exact(threads):
    """u == 0 every 61st number drawn: steps whose noise stops short of it are native, the step that
    needs it is the PyTorch step's, and nothing differs."""
    needs_native()

    def with_zeros(pool, count):
        uniform = torch.rand(count, generator=pool.generator)
        uniform[::61] = 0.0
        return uniform

    declined, _ = decode_side_by_side(9, 24, 30, 1e-4, length=40, draw_uniform=with_zeros)
    assert 0 < declined < 40, declined


def test_flushed_denormals_are_flushed_on_every_thread(threads):
    """torch.set_flush_denormal sets the calling thread's mode, where ATen runs ops this small: the
    native step's other threads must compute in it too."""
    needs_native()
    batch, hidden, num_tokens = 8, 16, 10
    net = random_net(hidden, num_tokens)
    torch_state = random_state(batch, hidden)
    native_state = tuple(t.clone() for t in torch_state)
    torch_step = net.stepper(torch_state)
    native = cpu_step.NativeLstmStep(net.input_table, native_state, None)
    tokens = torch.randint(0, num_tokens, (batch,))
    hidden_gates = torch.randn(batch, 4 * hidden)  # (batch, 4 * hidden)
    # the o gate's pre-activation near -88: sigmoid(o) and h subnormal, unless flushed
    hidden_gates[:, 2 * hidden : 3 * hidden] = -88.0 - net.input_table[tokens, 2 * hidden : 3 * hidden]
    assert torch.set_flush_denormal(True) or pytest.skip('this CPU cannot flush denormals')
    try:
        with torch.inference_mode():
            torch_step(tokens, hidden_gates)
            native.cell(tokens, hidden_gates)
    finally:
        torch.set_flush_denormal(False)
    assert_bitwise_equal(torch_state, native_state)


def test_a_temperature_whose_band_overflows_leaves_the_pytorch_step():
    needs_native()
    net = random_net(8, 5)
    band = GumbelNoise(3, 4, 5, 1e38, device='cpu').band
    assert not torch.isfinite(band.floor_offset)
    assert cpu_step.native_step(net.input_table, net.init_state(3), band) is None


def test_a_u_of_zero_in_the_noise_hands_the_step_to_the_pytorch_path(monkeypatch):
    needs_native()
    batch, hidden, num_tokens, length = 6, 16, 20, 8
    net = random_net(hidden, num_tokens)
    state = random_state(batch, hidden)
    noise = GumbelNoise(batch, length, num_tokens, 1e-4, device='cpu', generator=torch.Generator().manual_seed(0))

    def with_a_zero(count):  # u == 0 at the third number of every draw
        uniform = torch.rand(count, generator=noise.generator)
        uniform[2] = 0.0
        return uniform

    monkeypatch.setattr(noise.pool, 'draw_uniform', with_a_zero)
    native = cpu_step.NativeLstmStep(net.input_table, state, noise.band)
    product = torch.randn(batch, 4 * hidden + num_tokens) * 3
    before = tuple(t.clone() for t in state)
    tokens = torch.full((batch,), -1, dtype=torch.long)
    assert not native.decode(product, noise, tokens), 'the step needs the zero: the PyTorch step must certify its rows'
    assert (tokens == -1).all(), 'a declined step writes nothing'
    assert all(torch.equal(a, b) for a, b in zip(before, state)), 'a declined step writes nothing'
    assert noise.pool.handed_out == 0


def generate_both_ways(monkeypatch, **generate):
    """The tokens of one seeded generate with the native step and without it."""
    torch.manual_seed(1)
    generator = SyntheticDataGenerator(dim=48, num_tokens=40)
    seed = torch.randint(0, 40, (9, 5))  # (batch, seed_length)
    results = []
    for flag in ('1', '0'):
        monkeypatch.setenv('UP_FAST_NATIVE', flag)
        cpu_step.library_or_why.cache_clear()
        results.append(generator.generate(60, seed=seed, generator=torch.Generator().manual_seed(2), **generate))
        if flag == '1':
            probed = cpu_step.PROBED
            assert probed and not any(probed.values()), f'the native step did not run: {probed}'
    return results


@pytest.mark.parametrize('noise', ['generator', 'injected', 'greedy', 'high-temperature'])
def test_generate_gives_the_same_tokens_with_the_native_step_and_without(monkeypatch, noise, threads):
    needs_native()
    generate = {
        'generator': {},
        'injected': {'uniform_noise': torch.rand(9, 60, 40, generator=torch.Generator().manual_seed(3))},
        'greedy': {'temperature': 0.0},
        'high-temperature': {'temperature': 2.0},
    }[noise]
    native, plain = generate_both_ways(monkeypatch, **generate)
    assert torch.equal(native, plain)


def test_the_native_step_is_used_where_it_is_available(monkeypatch):
    needs_native()
    calls, decode = [], cpu_step.NativeLstmStep.decode
    monkeypatch.setattr(cpu_step.NativeLstmStep, 'decode', lambda self, *args: calls.append(1) or decode(self, *args))
    torch.manual_seed(0)
    generator, seed = SyntheticDataGenerator(dim=32, num_tokens=30), torch.randint(0, 30, (4, 3))
    generator.generate(10, seed=seed)  # the first use probes
    calls.clear()
    generator.generate(10, seed=seed)
    assert len(calls) == 9, 'every decoding step but the last is the native step'


def test_a_probe_whose_band_takes_every_token_passes():
    # two tokens, tied and on the floor: every token is a candidate, the noise then goes to every
    # token and the native step declines, as the loop allows
    needs_native()
    net = random_net(8, 2)
    band = GumbelNoise(2, 4, 2, 1e-4, device='cpu').band
    assert cpu_step.native_step(net.input_table, net.init_state(2), band) is not None, cpu_step.PROBED


def test_the_probe_leaves_the_global_random_stream_untouched():
    needs_native()
    net = random_net(24, 30)
    before = torch.get_rng_state()
    noise = GumbelNoise(4, 5, 30, 1e-4, device='cpu', generator=torch.Generator())
    assert cpu_step.native_step(net.input_table, net.init_state(4), noise.band) is not None
    assert torch.equal(torch.get_rng_state(), before)


def test_a_native_step_that_disagrees_with_its_probe_is_never_used(monkeypatch):
    needs_native()
    # ATen's thread chunks wrong by a few numbers: vector and scalar exps land on the wrong
    # numbers, which differ in their last bits; the probe must see it and keep the PyTorch step
    monkeypatch.setattr(cpu_step, 'aten_chunk', lambda numel, threads: 40)
    net = random_net(64, 50)
    with pytest.warns(RuntimeWarning, match='differs from the PyTorch step for batch 32, hidden 64'):
        assert cpu_step.native_step(net.input_table, net.init_state(32), None) is None
    assert 'the PyTorch step ran instead for batch 32, hidden 64' in cpu_step.native_status()


def test_without_a_compiler_the_pytorch_step_runs(monkeypatch, tmp_path):
    monkeypatch.setenv('UP_FAST_CACHE_DIR', str(tmp_path))  # nothing built before
    monkeypatch.setenv('CC', 'no-such-compiler')
    monkeypatch.setenv('PATH', str(tmp_path))
    assert 'no C compiler' in cpu_step.native_status()
    net = random_net(16, 20)
    assert cpu_step.native_step(net.input_table, net.init_state(3), None) is None
    torch.manual_seed(0)
    tokens = SyntheticDataGenerator(dim=16, num_tokens=20).generate(8, seed=torch.randint(0, 20, (3, 4)))
    assert tokens.shape == (3, 4 + 8)  # the seed, then the sampled tokens


def test_a_compile_error_says_so(monkeypatch, tmp_path):
    bad = tmp_path / 'cpu_step.c'
    bad.write_text('this is not C\n')
    monkeypatch.setattr(cpu_step, 'SOURCE', bad)
    monkeypatch.setenv('UP_FAST_CACHE_DIR', str(tmp_path))
    if cpu_step.native_status().startswith('no C compiler'):
        pytest.skip('no C compiler here')
    assert 'could not build cpu_step.c' in cpu_step.native_status()


def test_a_failed_build_is_not_tried_again(monkeypatch, tmp_path):
    bad = tmp_path / 'cpu_step.c'
    bad.write_text('this is not C\n')
    monkeypatch.setattr(cpu_step, 'SOURCE', bad)
    monkeypatch.setenv('UP_FAST_CACHE_DIR', str(tmp_path))
    runs, run = [], cpu_step.subprocess.run
    monkeypatch.setattr(cpu_step.subprocess, 'run', lambda *args, **kwargs: runs.append(1) or run(*args, **kwargs))
    statuses = {cpu_step.native_status() for _ in range(3)}
    net = random_net(8, 5)
    assert cpu_step.native_step(net.input_table, net.init_state(2), None) is None
    assert len(statuses) == 1 and len(runs) <= 1, (statuses, len(runs))  # 0 runs where there is no compiler


def test_an_unwritable_cache_leaves_the_pytorch_step(monkeypatch, tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    monkeypatch.setenv('UP_FAST_CACHE_DIR', str(blocker / 'below-a-file'))
    if cpu_step.native_status().startswith('no C compiler'):
        pytest.skip('no C compiler here')
    assert 'could not be built or loaded' in cpu_step.native_status()


@pytest.mark.parametrize('value, on', [('0', False), ('off', False), ('', False), ('1', True), ('yes', True)])
def test_up_fast_native_turns_the_native_step_off(monkeypatch, value, on):
    monkeypatch.setenv('UP_FAST_NATIVE', value)
    status = cpu_step.native_status()
    assert ('UP_FAST_NATIVE is off' in status) != on, status


def test_a_bad_up_fast_native_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv('UP_FAST_NATIVE', 'maybe')
    with pytest.raises(ValueError, match="UP_FAST_NATIVE.*'maybe'"):
        cpu_step.native_status()


def test_an_out_of_range_prefix_raises_as_before():
    net = random_net(16, 20)
    with pytest.raises(IndexError):
        net.sample(torch.tensor([[3, 20]]), 4, 1e-4)


@pytest.mark.slow
def test_the_avx2_build_equals_the_pytorch_step_too(tmp_path):
    """ATen dispatching AVX2 (ATEN_CPU_CAPABILITY=avx2) gets the 8-lane build, checked by its probe."""
    needs_native()
    script = (
        'import torch\n'
        'from up_fast import cpu_step\n'
        'assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()\n'
        'from up_fast.sampling import FoldedRecurrentNet\n'
        'torch.manual_seed(0)\n'
        'net = FoldedRecurrentNet.fold(torch.nn.Embedding(50, 33), torch.nn.LSTM(33, 33), torch.nn.Linear(33, 50))\n'
        'from up_fast.sampling import GumbelNoise\n'
        'band = GumbelNoise(7, 4, 50, 1e-4, device="cpu").band\n'
        'assert cpu_step.native_step(net.input_table, net.init_state(7), band) is not None, cpu_step.PROBED\n'
        'print(cpu_step.native_status())\n'
    )
    env = {**os.environ, 'ATEN_CPU_CAPABILITY': 'avx2', 'UP_FAST_CACHE_DIR': str(tmp_path)}
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == 'available'
