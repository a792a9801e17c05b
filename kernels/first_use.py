"""The first-use check: the fused kernels proven on the user's own device before backend='auto' takes them.

The kernels pass their parity tests under Triton's interpreter and compile for sm_90 and sm_80, but
only the device a user runs on can show that its compiler, driver and memory ordering give the same
tokens. So the first call with backend='auto' for a device and a kernel configuration runs
`check_sampling`: the kernel on a short problem of that configuration (its own launch plan, fresh
weights of its shapes from a private generator, a short prefix and CHECK_LENGTH steps) beside the
PyTorch path in fp32 on the CPU, for each launch mode:

- greedy, and sampling at two temperatures with injected uniform noise, and sampling with the
  kernel's own Philox noise (its uniforms replayed to the PyTorch path): the tokens must be the
  PyTorch path's, a row differing only at a genuine near-tie of two scores (then the rest of that
  row is not compared), and the final state of the other rows within STATE_TOL;
- every launch checked for an aborted grid barrier (a barrier gives up after CHECK_MAX_SPINS spins,
  about half a second), and a mode that takes longer than `time_limit` stops: a failure, never a hang.

The fastest mode that passed samples from then on (the persistent one unless the other is more
than MODE_MARGIN faster); where none passed the PyTorch path does, and the
result says what differed. `check_buffer_ops` does the same for the buffer's gather and write-back
kernels against their twins (up_fast/buffer.py), exact equality. Results are kept for the process
and, for CUDA devices, on disk (`cache_path()`), keyed by the device, its driver, the torch, Triton
and up_fast versions and a hash of the kernels' source, so that a later process on the same machine
decides the same way without running the check again; delete the file to check afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from up_fast import __version__
from up_fast.buffer import draw_step_rows
from up_fast.config import cache_dir, interpreted
from up_fast.helpers import exists
from up_fast.kernels.launch_plan import LaunchPlan, capability, num_sms, plan_launch
from up_fast.sampling import FoldedRecurrentNet, gumbel

MODES = ('persistent', 'phases')  # in order of preference
# a later mode is chosen over an earlier one that passed only when it is this much faster: timings
# within noise of each other do not flip the choice from one process or machine to the next
MODE_MARGIN = 0.2
CHECK_LENGTH = 24  # sampled tokens a check call
CHECK_PREFIX = 4  # teacher-forced tokens before them
CHECK_TEMPERATURES = (0.0, 1e-4, 1.0)  # greedy, the paper's near-greedy default, a wide band
CHECK_MAX_SPINS = 1 << 20  # ~0.5 s of spinning before a barrier gives up
CHECK_NOISE_ELEMENTS = 1 << 22  # rows * steps * tokens of injected noise: rows are capped to fit
CHECK_TIME_LIMIT = 120.0  # seconds a mode may take on CUDA, its first compilations included
# the final state's tolerance: fp32 products summed in another order (and tf32x3), a few eps a step
STATE_TOL = 1e-5
NEAR_TIE = 1e-4  # a score gap this small (relative) is a tie that rounding may break either way
ROW_FIELDS = ('condition_rows', 'reset_rows', 'seed_rows', 'seed_offsets', 'batch_rows')


@dataclass(frozen=True)
class SamplingConfig:
    """What selects a compiled variant of the sampling kernel: the cell, its sizes, the weights'
    dtype, the logits' bias, and the launch plan that the batch and the device give."""

    cell: str
    hidden: int
    num_tokens: int
    dtype: str  # e.g. 'float32'
    bias_out: bool
    plan: LaunchPlan

    @classmethod
    def of(cls, folded: FoldedRecurrentNet, batch: int, device: torch.device) -> SamplingConfig:
        weight_bytes = max(t.element_size() for t in (folded.weight_hh, folded.weight_out))
        plan = plan_launch(
            batch,
            folded.hidden_size,
            folded.num_tokens,
            num_sms(device),
            weight_bytes=weight_bytes,
            capability=capability(device),
        )
        dtype = str(folded.weight_hh.dtype).removeprefix('torch.')
        return cls(folded.cell, folded.hidden_size, folded.num_tokens, dtype, exists(folded.bias_out), plan)

    def describe(self) -> str:
        plan = self.plan
        return (
            f'{self.cell.upper()} hidden {self.hidden}, vocabulary {self.num_tokens}, {self.dtype} weights'
            f'{", logits bias" if self.bias_out else ""}; {plan.groups} group(s) of {plan.block_b} rows x '
            f'{plan.programs} program(s), weights {plan.weights}'
        )


@dataclass
class CheckResult:
    """What a first-use check found: the modes that passed (seconds a timed call) and failed (what
    differed), the one chosen (None: the PyTorch path), and the check's own cost."""

    kernel: str  # 'sampling' or 'buffer'
    device: str  # the device's name and index
    config: str
    passed: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    chosen: str | None = None
    seconds: float = 0.0  # the check's own wall time, compilation included
    calls: int = 0  # kernel calls it made
    from_disk: bool = False

    def line(self) -> str:
        """One line for the user: which path, on which device, for which configuration, and why."""
        if exists(self.chosen):
            timings = ', '.join(f'{mode} {seconds * 1e3:.2f} ms' for mode, seconds in self.passed.items())
            how = 'read from the check cache' if self.from_disk else f'checked in {self.seconds:.1f} s'
            return (
                f'up_fast: the fused {self.kernel} kernel ({self.chosen} mode) on {self.device} for '
                f'{self.config}: it matched the PyTorch path at first use ({how}; a check call: {timings})'
            )
        reasons = '; '.join(f'{mode}: {why}' for mode, why in self.failed.items())
        return (
            f'up_fast: the PyTorch path samples on {self.device} for {self.config}: the fused {self.kernel} '
            f"kernel's first-use check failed ({reasons}). backend='triton' forces the kernel"
        )


# the check's weights and problem


def check_weights(config: SamplingConfig, device: torch.device, seed: int = 0) -> FoldedRecurrentNet:
    """Folded weights of `config`'s shapes on `device`, drawn from a private generator (torch's own
    random state is untouched) at about PyTorch's default scale, with wider recurrent weights so
    that the state keeps moving."""
    g = torch.Generator().manual_seed(seed)
    gates = 4 if config.cell == 'lstm' else 3
    hidden, num_tokens = config.hidden, config.num_tokens
    bound = 2.0 / math.sqrt(hidden)
    uniform = lambda *shape: (torch.rand(*shape, generator=g) * 2 - 1) * bound
    dtype = getattr(torch, config.dtype)
    on_device = lambda t: t.to(device=device, dtype=dtype) if exists(t) else None
    return FoldedRecurrentNet(
        cell=config.cell,
        input_table=on_device(torch.randn(num_tokens, gates * hidden, generator=g) * 0.5),
        weight_hh=on_device(uniform(gates * hidden, hidden)),
        bias_hn=on_device(uniform(hidden)) if config.cell == 'gru' else None,
        weight_out=on_device(uniform(num_tokens, hidden)),
        bias_out=on_device(torch.randn(num_tokens, generator=g) * 0.1) if config.bias_out else None,
    )


def check_rows(config: SamplingConfig) -> int:
    """Rows a check call samples: the plan's batch tile, as many tiles as its injected noise allows
    (rows beyond them are masked in the kernel: the launch is the configuration's own)."""
    per_row = CHECK_LENGTH * config.num_tokens
    tiles = max(1, min(config.plan.groups, CHECK_NOISE_ELEMENTS // (config.plan.block_b * per_row)))
    return max(1, min(tiles * config.plan.block_b, CHECK_NOISE_ELEMENTS // per_row))


# comparing a kernel's tokens and state with the PyTorch path's


def logits_after(folded: FoldedRecurrentNet, tokens: Tensor) -> Tensor:
    """The PyTorch path's logits (num_tokens,) after feeding the 1-D sequence `tokens` from a zero state."""
    state = folded.init_state(1)
    for token in tokens:
        folded.step_(token.view(1), state)
    return folded.logits(state)[0]


def differences(
    folded_cpu: FoldedRecurrentNet,
    prefix: Tensor,
    temperature: float,
    uniform_noise: Tensor | None,
    tokens: Tensor,
    state: tuple[Tensor, ...],
    *,
    state_tol: float = STATE_TOL,
) -> tuple[list[str], Tensor]:
    """What differs between a kernel's `tokens` (batch, length) and final `state` and the PyTorch path's
    on the CPU (fp32), as sentences (empty: none), and which rows agreed.

    A row may differ only where it first leaves the PyTorch path's tokens at a genuine near-tie: the
    two tokens' scores (on the PyTorch path's logits along the kernel's tokens) within NEAR_TIE of
    each other; such a row's later tokens and its state are not compared. The other rows' state must
    agree within `state_tol` (h and, for an LSTM, c)."""
    prefix, tokens = prefix.cpu().long(), tokens.cpu().long()
    noise = uniform_noise.cpu() if exists(uniform_noise) else None
    ref_tokens, ref_state = folded_cpu.sample(prefix, tokens.shape[1], temperature, uniform_noise=noise)
    found = []
    agree = (tokens == ref_tokens).all(dim=1)  # (batch,)
    for row in torch.nonzero(~agree).flatten().tolist():
        t = int(torch.nonzero(tokens[row] != ref_tokens[row])[0])
        ours, theirs = int(tokens[row, t]), int(ref_tokens[row, t])
        if not 0 <= ours < folded_cpu.num_tokens:
            found.append(f'row {row} step {t}: token {ours} is not a token id (an aborted launch?)')
            continue
        logits = logits_after(folded_cpu, torch.cat([prefix[row], tokens[row, :t]]))
        scores = logits if temperature == 0 else logits + temperature * gumbel(noise[row, t].float())
        gap = float(scores[theirs] - scores[ours])
        if not 0 <= gap <= NEAR_TIE * max(1.0, abs(float(scores[theirs]))):
            found.append(f'row {row} step {t}: the kernel drew {ours}, the PyTorch path {theirs} (score gap {gap:.3g})')
    for name, ours, theirs in zip(('h', 'c'), state, ref_state):
        ours = ours.cpu().float()
        if ours.shape != theirs.shape:
            found.append(f'final {name} has shape {tuple(ours.shape)}, the PyTorch path {tuple(theirs.shape)}')
            continue
        error = (ours[agree] - theirs[agree]).abs()
        bound = state_tol * (1 + theirs[agree].abs())
        if error.numel() and not bool((error <= bound).all()):
            found.append(f'final {name} differs by up to {float(error.max()):.3g} (tolerance {state_tol:g})')
    return found, agree


# the checks


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        index = device.index if exists(device.index) else torch.cuda.current_device()
        return f'{torch.cuda.get_device_name(index)} (cuda:{index})'
    return f'{device} (Triton interpreter)' if interpreted() else str(device)


def synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def check_sampling(
    config: SamplingConfig,
    device: torch.device,
    *,
    sample=None,
    modes: tuple[str, ...] | None = None,
    repeats: int | None = None,
    time_limit: float | None = None,
) -> CheckResult:
    """Run the fused sampling kernel (`sample`, by default fused_recurrent_sample) of `config` on
    `device` beside the PyTorch path, in each of `modes`, and choose the fastest that agreed (see the
    module notes). `repeats` timed calls a passing mode (default 5 on CUDA, 1 elsewhere); a mode
    stops, failed, once it has taken `time_limit` seconds (default CHECK_TIME_LIMIT on CUDA)."""
    from up_fast.kernels.recurrent_sample import fused_recurrent_sample, philox_uniforms

    sample = sample if exists(sample) else fused_recurrent_sample
    modes = modes if exists(modes) else MODES
    device = torch.device(device)
    on_cuda = device.type == 'cuda'
    repeats = repeats if exists(repeats) else (5 if on_cuda else 1)
    time_limit = time_limit if exists(time_limit) or not on_cuda else CHECK_TIME_LIMIT
    result = CheckResult('sampling', device_name(device), config.describe())
    started = time.perf_counter()

    folded = check_weights(config, device)
    folded_cpu = folded.to('cpu', torch.float32)
    rows = check_rows(config)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, config.num_tokens, (rows, CHECK_PREFIX), generator=g).to(device)
    injected = torch.rand(rows, CHECK_LENGTH, config.num_tokens, generator=g).to(device)
    seed = torch.randint(0, 2**62, (1,), generator=g).to(device)

    for mode in modes:
        begun = time.perf_counter()
        if mode == 'persistent' and interpreted() and config.plan.programs > 1:
            # the interpreter runs programs one after another: a grid barrier between them cannot pass
            result.failed[mode] = f'{config.plan.programs} programs cannot meet at a barrier under the interpreter'
            continue

        def call(temperature, mode=mode, begun=begun, **noise):
            if exists(time_limit) and time.perf_counter() - begun > time_limit:
                raise TimeoutError(f'the check took more than {time_limit:g} s')
            result.calls += 1
            out = sample(
                folded,
                prefix,
                CHECK_LENGTH,
                temperature,
                mode=mode,
                plan=config.plan,
                check=True,
                max_spins=CHECK_MAX_SPINS,
                **noise,
            )
            synchronize(device)
            return out

        try:
            found = []
            for temperature in CHECK_TEMPERATURES:
                tokens, state = call(temperature, uniform_noise=injected if temperature > 0 else None)
                problems, _ = differences(folded_cpu, prefix, temperature, injected, tokens, state)
                found += [f'T={temperature:g}: {problem}' for problem in problems]
            # the kernel's own noise, the variant a training step runs: its uniforms replayed to the PyTorch path
            offset = torch.zeros(1, dtype=torch.int64, device=device)
            uniforms = philox_uniforms(seed, offset, rows, CHECK_LENGTH, config.num_tokens)
            tokens, state = call(1e-4, seed=seed, offset=offset)
            problems, _ = differences(folded_cpu, prefix, 1e-4, uniforms, tokens, state)
            found += [f'Philox noise: {problem}' for problem in problems]
            if found:
                result.failed[mode] = '; '.join(found[:3]) + (f' (and {len(found) - 3} more)' if len(found) > 3 else '')
                continue
            seconds = []
            for _ in range(repeats):
                tick = time.perf_counter()
                call(1e-4, seed=seed, offset=offset)
                seconds.append(time.perf_counter() - tick)
            result.passed[mode] = sorted(seconds)[len(seconds) // 2]
        except Exception as error:  # a compile error, an aborted barrier, a refused launch, a timeout
            result.failed[mode] = f'{type(error).__name__}: {str(error)[:300]}'

    result.chosen = choose_mode(result.passed)
    result.seconds = time.perf_counter() - started
    return result


def choose_mode(passed: dict[str, float]) -> str | None:
    """The mode to sample with, from the passing modes' seconds a call: the first of MODES that passed,
    unless another is more than MODE_MARGIN faster (then the fastest). None if none passed."""
    if not passed:
        return None
    preferred = min(passed, key=lambda mode: MODES.index(mode) if mode in MODES else len(MODES))
    fastest = min(passed, key=passed.get)
    return fastest if passed[fastest] < (1 - MODE_MARGIN) * passed[preferred] else preferred


def check_buffer_ops(dtype: torch.dtype, device: torch.device, *, ops=None) -> CheckResult:
    """The buffer's kernels (`ops`, by default up_fast.kernels.buffer_ops) against their twins
    (up_fast/buffer.py) on a fresh random buffer of `dtype` on `device`: a gather of seeds and
    conditions (with and without pending resets), a batch gather and a write-back, exact equality."""
    from up_fast import buffer as twin

    if not exists(ops):
        from up_fast.kernels import buffer_ops as ops
    device = torch.device(device)
    result = CheckResult('buffer', device_name(device), f'{str(dtype).removeprefix("torch.")} rows')
    started = time.perf_counter()
    g = torch.Generator().manual_seed(2)
    high = min(torch.iinfo(dtype).max, 32768)
    draw = lambda *shape: torch.randint(0, high, shape, generator=g)
    found = []
    try:
        # (buffer_size, batch, num_reset, seq_len, seed_length): resets that wrap onto conditions, long rows
        for case, sizes in enumerate(((37, 4, 6, 24, 5), (9, 2, 8, 1100, 9))):
            buffer_size, batch, num_reset, seq_len, seed_length = sizes
            step = draw_step_rows(*sizes, generator=g)  # on the CPU, then moved: one draw whatever the device
            rows = {name: getattr(step, name).to(device) for name in ROW_FIELDS}
            buffer, noise = draw(buffer_size, seq_len).to(device, dtype), draw(num_reset, seq_len).to(device, dtype)
            generated = draw(batch, seq_len).to(device)
            for pending in (None, (rows['reset_rows'], noise)):
                args = (buffer, rows['seed_rows'], rows['seed_offsets'], rows['condition_rows'], seed_length)
                result.calls += 1
                if not torch.equal(
                    ops.gather_prefix(*args, pending=pending), twin.gather_prefix(*args, pending=pending)
                ):
                    found.append(
                        f'case {case}: the seed and condition gather{" with pending resets" if pending else ""}'
                    )
            result.calls += 2
            batch_rows = rows['batch_rows']
            if not torch.equal(ops.gather_rows(buffer, batch_rows), twin.gather_rows(buffer, batch_rows)):
                found.append(f'case {case}: the batch gather')
            write = (rows['reset_rows'], noise, rows['condition_rows'], generated)
            if not torch.equal(ops.write_rows_(buffer.clone(), *write), twin.write_rows_(buffer.clone(), *write)):
                found.append(f'case {case}: the write-back')
        synchronize(device)
    except Exception as error:
        found.append(f'{type(error).__name__}: {str(error)[:300]}')
    if found:
        result.failed['one launch'] = '; '.join(found)
    else:
        result.passed['one launch'] = 0.0
        result.chosen = 'one launch'
    result.seconds = time.perf_counter() - started
    return result


# once a process, and on disk


@cache
def kernels_source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob('*.py')):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment_key(device: torch.device) -> str:
    """The device, its driver, and the software whose change could change a check's outcome."""
    import triton

    parts = [device_name(device), f'torch {torch.__version__}', f'triton {triton.__version__}']
    parts += [f'up_fast {__version__}', f'kernels {kernels_source_hash()}']
    if device.type == 'cuda':
        index = device.index if exists(device.index) else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        parts += [f'sm_{props.major}{props.minor}', f'{props.multi_processor_count} SMs', f'cuda {torch.version.cuda}']
        driver = getattr(torch._C, '_cuda_getDriverVersion', None)
        parts.append(f'driver {driver() if callable(driver) else "unknown"}')
    return ' | '.join(parts)


def cache_path() -> Path:
    """The JSON file of earlier checks' results: $UP_FAST_CACHE_DIR/kernel_checks.json (by default
    $XDG_CACHE_HOME/up_fast, else ~/.cache/up_fast)."""
    return cache_dir() / 'kernel_checks.json'


def read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def write_cache(key: str, result: CheckResult):
    """Add one result to the cache file, written whole and renamed into place (ranks may race: each
    rename is atomic, the last one wins, and any of them is a valid file)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_cache()
        entries[key] = dataclasses.asdict(result) | dict(from_disk=False)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.')
        with os.fdopen(handle, 'w') as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home: the process still keeps its result


_results: dict[str, CheckResult] = {}  # this process's results, by key


def results() -> list[CheckResult]:
    """Every first-use check this process ran or read, in order."""
    return list(_results.values())


def checked(
    kernel: str, what: str, device: torch.device, run, *, on_disk: bool | None = None
) -> tuple[CheckResult, bool]:
    """The result for `kernel` and configuration `what` on `device`: this process's, else the disk's
    (`on_disk`, by default for CUDA devices only), else `run()`'s, remembered both ways. Also whether it
    is new to this process."""
    on_disk = on_disk if exists(on_disk) else device.type == 'cuda'
    key = f'{kernel}: {what} | {environment_key(device)}'
    if key in _results:
        return _results[key], False
    stored = read_cache().get(key) if on_disk else None
    if exists(stored):
        try:
            result = CheckResult(**(stored | dict(from_disk=True)))
        except TypeError:  # an entry of another layout
            result = None
    else:
        result = None
    if not exists(result):
        result = run()
        if on_disk:
            write_cache(key, result)
    _results[key] = result
    return result, True
