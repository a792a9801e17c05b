"""The folded LSTM's CPU decoding step as one native call (up_fast/cpu_step.c), where it can be had.

On the CPU a decoding step is one product and about twenty small ops, and at the example's size the
small ops and their dispatch cost about as much as the product. cpu_step.c does the band sampler
(up_fast/band.py) and the LSTM cell in one call, on the threads of PyTorch's own OpenMP runtime,
computing every value as ATen does, bit for bit: the same tokens and states as the PyTorch step it
replaces (FoldedRecurrentNet.stepper with gumbel_max), only without the dispatch and on every
thread. The products stay with oneDNN.

It is used only where all of this holds, and otherwise the PyTorch step runs:
- a C compiler (`$CC`, else gcc or cc) builds it, once per source and machine, into
  up_fast's cache directory (UP_FAST_CACHE_DIR);
- ATen dispatches AVX-512 or AVX2 here and exports the Sleef exp its sigmoid calls;
- at first use for a (batch, hidden, num_tokens, threads, band), the native step matches the
  PyTorch step bitwise on random inputs (`probe`): ATen's rounding is its compiler's (it contracts
  some ops into FMAs), so it is checked, not assumed;
- the environment variable UP_FAST_NATIVE is not off (it is on by default).
`native_status()` says which, and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from up_fast.band import SLACK, Band
from up_fast.config import cache_dir, native_from_env
from up_fast.helpers import exists

if TYPE_CHECKING:
    from up_fast.sampling import GumbelNoise

SOURCE = Path(__file__).with_name('cpu_step.c')

# ATen's CPU capability -> (vector lanes, compiler flags, the Sleef exp its Vectorized<float>::exp calls)
CAPABILITIES = {
    'AVX512': (16, ('-mavx512f', '-mfma'), 'Sleef_expf16_u10'),
    'AVX2': (8, ('-mavx2', '-mfma'), 'Sleef_expf8_u10'),
}

# at::internal::GRAIN_SIZE: ATen splits an elementwise op over threads only from this many numbers
ATEN_GRAIN_SIZE = 32768


class LstmStepArgs(ctypes.Structure):
    # cpu_step.c's lstm_step_args, field for field
    _fields_ = [
        ('table', ctypes.c_void_p),
        ('gates', ctypes.c_void_p),
        ('half_h', ctypes.c_void_p),
        ('double_c', ctypes.c_void_p),
        ('floors', ctypes.c_void_p),
        ('counts', ctypes.c_void_p),
        ('batch', ctypes.c_int64),
        ('hidden', ctypes.c_int64),
        ('num_tokens', ctypes.c_int64),
        ('gates_chunk', ctypes.c_int64),
        ('state_chunk', ctypes.c_int64),
        ('exp', ctypes.c_void_p),
        ('floor_offset', ctypes.c_float),
        ('floor_slope', ctypes.c_float),
        ('floor_alpha', ctypes.c_float),
        ('threads', ctypes.c_int64),
        ('parallel', ctypes.c_void_p),
        ('barrier', ctypes.c_void_p),
        ('thread_num', ctypes.c_void_p),
        ('num_threads', ctypes.c_void_p),
    ]

    def floor_values(self) -> tuple[float, float, float]:
        return self.floor_offset, self.floor_slope, self.floor_alpha


class NativeUnavailable(RuntimeError):
    """Why the native step cannot be had here; the PyTorch step runs instead."""


def compiler() -> str:
    for name in (os.environ.get('CC', '').strip(), 'gcc', 'cc'):
        if name and shutil.which(name):
            return name
    raise NativeUnavailable('no C compiler found ($CC, gcc or cc)')


def build(lanes: int, flags: tuple[str, ...]) -> Path:
    """cpu_step.c compiled for `lanes`, from the cache when it was built before; atomic, so that
    processes building at once never load a half-written library."""
    cc = compiler()
    command = [cc, '-O3', '-shared', '-fPIC', '-ffp-contract=off', *flags, f'-DLANES={lanes}']
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + ' '.join(command).encode()).hexdigest()[:16]
    target = cache_dir() / 'native' / f'cpu_step-{key}.so'
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run(
            [*command, '-o', str(built), str(SOURCE), '-lm'], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise NativeUnavailable(f'{cc} could not build {SOURCE.name}: {result.stderr.strip()[-500:]}')
        os.replace(built, target)
    return target


def library() -> tuple[ctypes.CDLL, int]:
    """The loaded step library and the address of the Sleef exp to hand it; raises NativeUnavailable.
    Looked up once a process, failure included: a compiler that fails is not asked again."""
    found = library_or_why()
    if isinstance(found, NativeUnavailable):
        raise NativeUnavailable(*found.args)
    return found


@cache
def library_or_why() -> tuple[ctypes.CDLL, int] | NativeUnavailable:
    try:
        return load_library()
    except NativeUnavailable as why:
        return why


def load_library() -> tuple[ctypes.CDLL, int]:
    if not native_from_env():
        raise NativeUnavailable('the environment variable UP_FAST_NATIVE is off')
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in CAPABILITIES:
        raise NativeUnavailable(f'ATen dispatches {capability} here; the native step is built for AVX512 or AVX2')
    lanes, flags, exp_name = CAPABILITIES[capability]
    torch_cpu = Path(torch.__file__).parent / 'lib' / 'libtorch_cpu.so'
    try:
        exp = ctypes.cast(getattr(ctypes.CDLL(str(torch_cpu)), exp_name), ctypes.c_void_p).value
    except (OSError, AttributeError):
        raise NativeUnavailable(f'{torch_cpu.name} does not export {exp_name}') from None

    try:
        lib = ctypes.CDLL(str(build(lanes, flags)))
        step_cell, decode_step = lib.lstm_cell, lib.lstm_decode_step
    except (OSError, AttributeError, subprocess.SubprocessError) as error:
        # an unwritable cache, a hung compiler, a library without the step's functions
        raise NativeUnavailable(f'the native step could not be built or loaded: {error}') from None
    args = ctypes.POINTER(LstmStepArgs)
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    step_cell.argtypes = (args, pointer, pointer, size)
    step_cell.restype = None
    decode_step.argtypes = (args, pointer, size, pointer, size, pointer)
    decode_step.restype = size
    return lib, exp


OPENMP_FUNCTIONS = ('GOMP_parallel', 'GOMP_barrier', 'omp_get_thread_num', 'omp_get_num_threads')


@cache
def openmp() -> tuple[int | None, ...]:
    """The addresses of OPENMP_FUNCTIONS in the OpenMP runtime PyTorch has loaded (its intra-op threads),
    or Nones where there is none to share: then the step runs on the calling thread."""
    nothing = (None,) * len(OPENMP_FUNCTIONS)
    if 'parallel backend: OpenMP' not in torch.__config__.parallel_info():
        return nothing
    try:  # the runtime already mapped into this process: a second one would start threads of its own
        with open('/proc/self/maps') as maps:
            paths = {line.split()[-1] for line in maps if 'libgomp' in line and line.rstrip().endswith('.so.1')}
        torch_lib = str(Path(torch.__file__).parent / 'lib')
        owned = [path for path in paths if path.startswith(torch_lib)]  # the one torch ships, where it does
        (path,) = owned or paths
        runtime = ctypes.CDLL(path)
        return tuple(ctypes.cast(getattr(runtime, name), ctypes.c_void_p).value for name in OPENMP_FUNCTIONS)
    except (OSError, ValueError, AttributeError):  # none, or several and none of them torch's
        return nothing


def native_status() -> str:
    """'available' (with the shapes whose probe failed, if any), or why the native step is not used here."""
    try:
        library()
    except NativeUnavailable as why:
        return str(why)
    failed = [f'{probe_name(key)} ({why})' for key, why in PROBED.items() if why]
    return 'available' + (f'; the PyTorch step ran instead for {", ".join(failed)}' if failed else '')


def aten_chunk(numel: int, threads: int) -> int:
    """The length of the pieces ATen cuts a contiguous elementwise op of `numel` numbers into
    (TensorIterator's for_each over at::parallel_for, OpenMP backend)."""
    if numel < ATEN_GRAIN_SIZE or threads <= 1:
        return max(numel, 1)
    pieces = min(threads, -(-numel // ATEN_GRAIN_SIZE))
    return -(-numel // pieces)


class NativeLstmStep:
    """The native step bound to one loop: the folded net's input table (num_tokens, 4 * hidden), the
    loop's state (h / 2, 2 c), each (batch, hidden), and the band of its noise. `cell` is
    FoldedRecurrentNet.stepper(state)'s step; `decode` is a decoding step's gumbel_max and cell."""

    def __init__(self, table: Tensor, state: tuple[Tensor, Tensor], band: Band | None):
        self.lib, exp = library()
        half_h, double_c = state
        batch, hidden = half_h.shape
        for name, tensor, shape in (
            ('table', table, (table.shape[0], 4 * hidden)),
            ('h / 2', half_h, (batch, hidden)),
            ('2 c', double_c, (batch, hidden)),
        ):
            if tensor.dtype != torch.float32 or tensor.device.type != 'cpu' or not tensor.is_contiguous():
                raise NativeUnavailable(f'the native step takes contiguous float32 CPU tensors; {name} is not')
            if tuple(tensor.shape) != shape:
                raise NativeUnavailable(f'{name} has shape {tuple(tensor.shape)}, the native step needs {shape}')
        self.gates = table.new_empty(batch, 4 * hidden)  # (batch, 4 * hidden) scratch
        self.floors = table.new_empty(batch)  # (batch,) scratch
        self.counts = torch.empty(batch, dtype=torch.int64)  # (batch,) scratch
        self.num_tokens = table.shape[0]
        self.samples = exists(band)  # whether `decode` may be called: with the band of generator noise
        threads = torch.get_num_threads()
        # floor = floor_offset + (1 - 2 SLACK) leaky_relu(top, floor_slope), as Band.floor computes it
        floor = (float(band.floor_offset), band.floor_slope, 1 - 2 * SLACK) if band else (0.0, 1.0, 1.0)
        self.args = LstmStepArgs(
            table.data_ptr(),
            self.gates.data_ptr(),
            half_h.data_ptr(),
            double_c.data_ptr(),
            self.floors.data_ptr(),
            self.counts.data_ptr(),
            batch,
            hidden,
            table.shape[0],
            aten_chunk(batch * 4 * hidden, threads),
            aten_chunk(batch * hidden, threads),
            exp,
            *floor,
            threads,
            *openmp(),
        )
        self.args_ref = ctypes.byref(self.args)
        self.keep = (table, half_h, double_c)  # the pointers above stay valid while this lives

    def cell(self, tokens: Tensor, hidden_gates: Tensor) -> None:
        """Advance the state on `tokens` (batch,) int64 in [0, num_tokens), with `hidden_gates`
        (batch, 4 * hidden) float32, rows contiguous: the recurrent product of h / 2."""
        self.lib.lstm_cell(self.args_ref, tokens.data_ptr(), hidden_gates.data_ptr(), hidden_gates.stride(0))

    def decode(self, product: Tensor, noise: GumbelNoise, out: Tensor) -> bool:
        """Sample a step's tokens into `out` (batch,) int64 from `product` (batch, 4 * hidden + num_tokens),
        the recurrent term and logits of h / 2 side by side, with `noise`'s generator noise, and advance
        the state on them: gumbel_max and the cell of the PyTorch step. Returns False, having done
        nothing, where that step must run instead: a u == 0 in the step's noise, or noise that
        draws for every token (see GumbelNoise.sample_lazy)."""
        if not self.samples:
            raise ValueError('decode needs a native step made with the band of its noise; this one has none')
        if noise.every_token:
            return False
        pool = noise.pool
        while True:
            available = pool.clear_run()
            taken = self.lib.lstm_decode_step(
                self.args_ref,
                product.data_ptr(),
                product.stride(0),
                pool.values.data_ptr() + 4 * pool.position,
                available,
                out.data_ptr(),
            )
            if taken >= 0:
                break
            if pool.position + available < pool.values.numel():
                return False  # a u == 0 among the numbers this step needs: the PyTorch step certifies its rows
            pool.reserve(-taken)
        pool.skip(taken)
        if taken == self.num_tokens * out.numel():
            noise.every_token = True  # as the PyTorch step: from now on every token gets noise
        return True


# (batch, hidden, num_tokens, threads, band's floor) -> None when the probe passed, else why it failed
PROBED: dict[tuple, str | None] = {}
PROBE_STEPS = 4


def native_step(table: Tensor, state: tuple[Tensor, Tensor], band: Band | None) -> NativeLstmStep | None:
    """The native step for this loop, or None where the PyTorch step must run: the library is not
    available here, or it failed its probe for these shapes, thread count and band."""
    if state[0].shape[0] == 0:
        return None  # an empty batch: nothing to step
    if band and not all(math.isfinite(value) for value in (float(band.floor_offset), band.floor_slope)):
        return None  # temperatures near float32's largest: the band's floor overflows, and the PyTorch step copes
    try:
        native = NativeLstmStep(table, state, band)
    except NativeUnavailable:
        return None
    batch, hidden = state[0].shape
    key = (batch, hidden, table.shape[0], torch.get_num_threads(), tuple(native.args.floor_values()))
    if key not in PROBED:
        PROBED[key] = probe(batch, hidden, table.shape[0], band)
        if PROBED[key]:
            warnings.warn(
                f"up_fast's native CPU step differs from the PyTorch step for {probe_name(key)}: {PROBED[key]}. "
                'The PyTorch step runs instead (the same tokens, slower); please report this with '
                '`python -m torch.utils.collect_env`.',
                RuntimeWarning,
                stacklevel=3,
            )
    return native if PROBED[key] is None else None


def probe_name(key: tuple) -> str:
    batch, hidden, num_tokens, threads, _ = key
    return f'batch {batch}, hidden {hidden}, {num_tokens} tokens on {threads} threads'


def probe(batch: int, hidden: int, num_tokens: int, band: Band | None) -> str | None:
    """Run the native and the PyTorch step side by side for PROBE_STEPS steps on random inputs of
    these shapes (logits tied and on the band's floor among them) and compare them bitwise: None
    when every token, state and noise count agrees, else what differed. Draws from private
    generators only."""
    from up_fast.sampling import FoldedRecurrentNet, GumbelNoise, StepNoise, gumbel_max  # sampling imports this

    generator = torch.Generator().manual_seed(0)
    randn = lambda *shape, scale=1.0: torch.randn(shape, generator=generator) * scale
    width = 4 * hidden
    net = FoldedRecurrentNet(
        cell='lstm',
        input_table=randn(num_tokens, width, scale=2.0),
        weight_hh=randn(width, hidden),
        bias_hn=None,
        weight_out=randn(num_tokens, hidden),
        bias_out=None,
    )
    torch_state = (randn(batch, hidden), randn(batch, hidden, scale=3.0))
    native_state = tuple(t.clone() for t in torch_state)
    torch_step = net.stepper(torch_state)
    native = NativeLstmStep(net.input_table, native_state, band)
    temperature = band.temperature if band else 0.0
    noise = lambda: GumbelNoise(
        batch, PROBE_STEPS, num_tokens, temperature, device='cpu', generator=torch.Generator().manual_seed(1)
    )
    noises = [noise(), noise()] if band else None
    rows = torch.arange(batch)
    with torch.inference_mode():
        for step in range(PROBE_STEPS):
            product = randn(batch, width + num_tokens, scale=3.0)  # (batch, 4 * hidden + num_tokens)
            hidden_gates, logits = product.split((width, num_tokens), dim=1)
            tokens = torch.randint(0, num_tokens, (batch,), generator=generator)
            if band:  # ties with the top, and logits on the floor and just below it
                top = logits.amax(dim=-1, keepdim=True)
                floor = band.floor(top).squeeze(-1)
                logits[rows, torch.randint(0, num_tokens, (batch,), generator=generator)] = top.squeeze(-1)
                logits[rows, torch.randint(0, num_tokens, (batch,), generator=generator)] = floor
                below = torch.nextafter(floor, torch.tensor(-torch.inf))
                logits[rows, torch.randint(0, num_tokens, (batch,), generator=generator)] = below
                torch_tokens = gumbel_max(logits, temperature, StepNoise(noises[0], step))
                native_tokens = torch.empty(batch, dtype=torch.long)
                if not native.decode(product, noises[1], native_tokens):
                    # declined as the loop allows (every token in the band, or a u == 0): the loop's fallback
                    gumbel_max(logits, temperature, StepNoise(noises[1], step), out=native_tokens)
                    native.cell(native_tokens, hidden_gates)
                if not torch.equal(torch_tokens, native_tokens):
                    return f'tokens differ at step {step} of the probe'
                if noises[0].pool.handed_out != noises[1].pool.handed_out:
                    return f'the noise taken differs at step {step} of the probe'
                torch_step(torch_tokens, hidden_gates)
            else:
                torch_step(tokens, hidden_gates)
                native.cell(tokens, hidden_gates)
            for name, a, b in zip(('h / 2', '2 c'), torch_state, native_state):
                if not torch.equal(a.view(torch.int32), b.view(torch.int32)):  # bit patterns: -0 is not 0
                    return f'{name} differs at step {step} of the probe'
    return None
