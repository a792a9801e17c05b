"""The launcher of the fused sampling kernels of a folded 1-layer LSTM/GRU: `fused_recurrent_sample`.

`fused_recurrent_sample(folded, prefix, length, temperature)` is `FoldedRecurrentNet.sample`
(up_fast/sampling.py) and `naive_recurrent_sample` (up_fast/naive.py, the oracle) in one launch:
teacher-force `prefix` from a zero state, then sample `length` tokens by Gumbel-max, feeding each
one back. The kernels are in recurrent_kernels.py: the persistent kernel (every step in one launch,
phases met at grid barriers) and the phase-per-launch kernel (the host steps through the phases).
docs/kernel.md explains the design, its hazards and its floor.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from up_fast import config
from up_fast.band import PHILOX_GUMBEL_BOUNDS, SLACK, injected_gumbel_bounds
from up_fast.checks import check_int, check_temperature
from up_fast.kernels.launch_plan import (
    COMPILE_OPTIONS,
    PHASE_NUM_WARPS,
    LaunchPlan,
    capability,
    cdiv,
    check_plan,
    num_sms,
    plan_launch,
)
from up_fast.kernels.recurrent_kernels import (  # noqa: F401 (the kernels' names are the launcher's too)
    INVALID_TOKEN,
    PER_CALL_ARGUMENTS,
    philox_uniform_kernel,
    recurrent_phase_kernel,
    recurrent_sample_kernel,
)
from up_fast.sampling import SUPPORTED_CELLS, FoldedRecurrentNet

# triton.jit picks the interpreter when TRITON_INTERPRET=1 at decoration time (this import)
INTERPRETED = config.interpreted()

SUPPORTED_PRECISIONS = ('tf32x3', 'ieee')
SUPPORTED_MODES = ('auto', 'persistent', 'phases')
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)
NOISE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# the counter word holding (step * num_tokens + token) is 32 bits wide
MAX_COUNTERS_PER_ROW = 1 << 32
# ~0.5 us an atomic round trip: about 10 s before a barrier gives up
DEFAULT_MAX_SPINS = 1 << 24
CHECK_ENV = config.KERNEL_CHECK


def philox_uniforms(seed: Tensor, offset: Tensor, batch: int, length: int, num_tokens: int) -> Tensor:
    """(batch, length, num_tokens) fp32: the uniforms the kernel's Philox noise is made of, at `offset`."""
    out = torch.empty((batch, length, num_tokens), dtype=torch.float32, device=seed.device)
    philox_uniform_kernel[(cdiv(batch, 16), length)](
        seed.reshape(1), offset.reshape(1), out, batch, length, num_tokens, BLOCK_B=16, BLOCK_V=64
    )
    return out


# errors and the per-seed offsets


_error_flags: dict = {}
# a seed tensor passed without `offset` gets its own offset tensor, advanced by every call
_seed_offsets = WeakTensorKeyDictionary()


def error_flag(device: torch.device) -> Tensor:
    """The sticky (1,) int32 flag that a barrier which gave up sets on `device`."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())  # 'cuda' and 'cuda:0' share one flag
    key = str(device)
    if key not in _error_flags:
        _error_flags[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _error_flags[key]


class KernelBarrierError(RuntimeError):
    pass


def barrier_error(device: torch.device, grid: int | None = None, plan: LaunchPlan | None = None) -> KernelBarrierError:
    where = 'a persistent launch'
    if plan is not None:
        where = f'a grid of {grid} programs ({plan.groups} groups of {plan.programs})'
    return KernelBarrierError(
        f'recurrent_sample_kernel: {where} on {device} with {num_sms(device)} SMs did not meet at a grid barrier '
        'within max_spins: the programs were not all co-resident (another kernel holding SMs, MPS/MIG limits, or a '
        'grid larger than the device allows). Its tokens are invalid (INVALID_TOKEN). Retry with mode="phases" or '
        'fewer programs.'
    )


def check_kernel_errors(device: torch.device, *, grid: int | None = None, plan: LaunchPlan | None = None):
    """Raise if a grid barrier on `device` gave up since the last check (reads the flag: a host
    sync; call it where the host synchronises anyway). Clears the flag."""
    device = torch.device(device)
    flag = error_flag(device)
    _pending_flags.pop(str(flag.device), None)
    if int(flag.item()) != 0:
        flag.zero_()
        raise barrier_error(device, grid, plan)


# a launch without `check` copies the flag to host memory behind the launch (no sync); the next
# call raises if that copy has landed and shows an abort: {device: (host copy, event, grid, plan)}
_pending_flags: dict = {}


def watch_kernel_errors(device: torch.device, plan: LaunchPlan):
    """After a launch: copy the device's error flag to pinned host memory, asynchronously."""
    flag = error_flag(device)
    key = str(flag.device)
    if flag.device.type != 'cuda':
        _pending_flags[key] = (flag.clone(), None, plan.grid, plan)  # the interpreter ran the launch already
        return
    if torch.cuda.is_current_stream_capturing():
        return  # a captured graph checks with check_kernel_errors after replays
    host = torch.empty(1, dtype=torch.int32, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    _pending_flags[key] = (host, event, plan.grid, plan)


def raise_pending_kernel_errors(device: torch.device):
    """Raise KernelBarrierError if an earlier launch on `device` gave up at a barrier, as far as its
    flag copy has landed (no host sync: a copy still in flight is looked at by the next call)."""
    flag = error_flag(device)
    key = str(flag.device)
    pending = _pending_flags.get(key)
    if pending is None:
        return
    host, event, grid, plan = pending
    if event is not None and not event.query():
        return
    del _pending_flags[key]
    if int(host[0]) != 0:
        flag.zero_()
        raise barrier_error(flag.device, grid, plan)


# launch


def kernel_constexprs(
    plan: LaunchPlan, is_lstm: bool, has_bias_out: bool, sample: bool, injected: bool, precision: str
) -> dict:
    return dict(
        IS_LSTM=is_lstm,
        GATES=4 if is_lstm else 3,
        HAS_BIAS_OUT=has_bias_out,
        SAMPLE=sample,
        INJECTED_NOISE=injected,
        BLOCK_B=plan.block_b,
        BLOCK_U=plan.block_u,
        UNIT_TILES=plan.unit_tiles,
        BLOCK_V=plan.block_v,
        VOCAB_TILES=plan.vocab_tiles,
        BLOCK_K=plan.block_k,
        BLOCK_P=plan.block_p,
        PRECISION=precision,
        BAND_SLACK=SLACK,
    )


def persistent_constexprs(plan: LaunchPlan, hidden: int) -> dict:
    """The persistent kernel's constexprs beyond kernel_constexprs: which slices stay on chip, and their K split."""
    padded, splits = plan.k_splits(hidden)
    return dict(
        RESIDENT_GATES=plan.resident_gates,
        RESIDENT_LOGITS=plan.resident_logits,
        K_SPLITS=splits,
        PADDED_K=padded,
    )


def recurrent_sample_launch(
    cell: str,
    input_table: Tensor,  # (num_tokens, gates * hidden)
    weight_hh: Tensor,  # (gates * hidden, hidden)
    bias_hn: Tensor | None,  # (hidden,) GRU
    weight_out: Tensor,  # (num_tokens, hidden)
    bias_out: Tensor | None,  # (num_tokens,)
    prefix: Tensor,  # (batch, prefix_len)
    length: int,
    temperature: float,
    seed: Tensor,  # (1,) int64
    offset: Tensor,  # (1,) int64
    uniform_noise: Tensor | None,  # (batch, length, num_tokens)
    out: Tensor,  # (batch, length) integer
    state_scratch: Tensor,  # (cell_states, 2, batch, hidden) fp32
    plan: LaunchPlan,
    *,
    mode: str,
    precision: str,
    max_spins: int = DEFAULT_MAX_SPINS,
) -> tuple[Tensor, ...]:
    """Launch on checked, contiguous weights. Returns the final state tuple (views into state_scratch) and
    the mode that ran: 'phases' when the device refused a persistent cooperative grid."""
    batch, prefix_len = prefix.shape
    hidden = weight_hh.shape[1]
    num_tokens = weight_out.shape[0]
    device = weight_hh.device
    is_lstm = cell == 'lstm'

    h = state_scratch[0]  # (2, batch, hidden) exchange slots
    c = state_scratch[1, 0] if is_lstm else h[0]  # (batch, hidden); the GRU never touches it
    partial_score = torch.empty((batch, plan.num_slices), dtype=torch.float32, device=device)
    partial_token = torch.empty((batch, plan.num_slices), dtype=torch.int32, device=device)

    sample = temperature > 0
    injected = uniform_noise is not None
    noise = uniform_noise if injected else weight_out  # a placeholder pointer
    noise_strides = uniform_noise.stride() if injected else (0, 0, 0)
    g_lo, g_hi = injected_gumbel_bounds(uniform_noise.dtype) if injected else PHILOX_GUMBEL_BOUNDS

    args = (
        prefix,
        prefix.stride(0),
        prefix.stride(1),
        input_table,
        weight_hh,
        bias_hn if bias_hn is not None else weight_out,
        weight_out,
        bias_out if bias_out is not None else weight_out,
        noise,
        *noise_strides,
        seed,
        offset,
        out,
        out.stride(0),
        out.stride(1),
        h,
        c,
        partial_score,
        partial_token,
    )
    sizes = (batch, prefix_len, length, hidden, num_tokens, plan.programs, plan.num_slices)
    sampling = (float(temperature) if sample else 0.0, g_hi, g_lo)
    constexprs = kernel_constexprs(plan, is_lstm, bias_out is not None, sample, injected, precision)
    num_feeds = prefix_len + length - 1

    if mode == 'persistent':
        try:
            persistent = dict(constexprs, **persistent_constexprs(plan, hidden))
            launch_persistent(args, sizes, sampling, persistent, plan, device, max_spins)
        except RuntimeError as error:
            if not (plan.cooperative and launch_refused(error)):
                raise
            refuse_cooperative(device, plan, error)
            mode = 'phases'
    if mode == 'phases':
        phase = lambda s, which: recurrent_phase_kernel[(plan.grid,)](
            *args,
            *sizes,
            *sampling,
            s,
            PHASE=which,
            **constexprs,
            num_warps=PHASE_NUM_WARPS,
            num_stages=1,
            **COMPILE_OPTIONS,
        )
        for s in range(num_feeds):
            phase(s, 0)
            if s >= prefix_len - 1:
                phase(s, 1)
        phase(num_feeds, 2)

    # feed s writes slot (s + 1) % 2
    final = num_feeds % 2
    return ((h[final], c) if is_lstm else (h[final],)), mode


def launch_persistent(args, sizes, sampling, constexprs, plan: LaunchPlan, device, max_spins: int):
    sync = torch.zeros(plan.groups + 1, dtype=torch.int32, device=device)  # counters, abort word
    launch_options = dict(num_warps=plan.num_warps, num_stages=plan.num_stages, **COMPILE_OPTIONS)
    if plan.cooperative and not INTERPRETED:
        launch_options['launch_cooperative_grid'] = True
    recurrent_sample_kernel[(plan.grid,)](
        *args, sync, error_flag(device), *sizes, plan.groups, *sampling, max_spins, **constexprs, **launch_options
    )


def launch_refused(error: RuntimeError) -> bool:
    """The device refused the launch itself (Triton's launcher raises 'Triton Error [CUDA]: ...', e.g. 'too
    many blocks in cooperative launch'), as opposed to an error from inside the kernel (the interpreter's)."""
    return 'Triton Error [CUDA]' in str(error) or 'cooperative launch' in str(error)


# (device, grid) whose cooperative launch was refused: later calls go to the phase-per-launch mode at once
_refused_grids: set = set()


def refuse_cooperative(device: torch.device, plan: LaunchPlan, error: Exception):
    """A cooperative grid the device refused (MPS or MIG limits, SMs held by another kernel): one
    warning naming grid and SM count; this and later calls with that grid run phase per launch."""
    key = (str(device), plan.grid)
    if key in _refused_grids:
        return
    _refused_grids.add(key)
    warnings.warn(
        f'recurrent_sample_kernel: the cooperative launch of a grid of {plan.grid} programs ({plan.groups} groups '
        f'of {plan.programs}) on {device} with {num_sms(device)} SMs was refused ({type(error).__name__}: '
        f'{str(error)[:200]}); running one launch per phase instead (slower, same tokens)',
        RuntimeWarning,
        stacklevel=4,
    )


# public function


def check_int32_offsets(batch: int, hidden: int, num_tokens: int, gates: int):
    """In-kernel element offsets into the tables and the state are int32: every index must be < 2**31."""
    sizes = {
        'input table (num_tokens * gates * hidden)': num_tokens * gates * hidden,
        'W_hh padded to 4 gates (4 * hidden * hidden)': 4 * hidden * hidden,
        'W_out (num_tokens * hidden)': num_tokens * hidden,
        'exchange slots (2 * batch * hidden)': 2 * batch * hidden,
        'batch * num_tokens': batch * num_tokens,
    }
    for what, size in sizes.items():
        if size > 2**31:
            raise ValueError(
                f'batch {batch}, hidden {hidden}, num_tokens {num_tokens}: the {what} has {size} '
                f"elements, more than the kernel's int32 offsets reach (2**31)"
            )


def check_device_tensor(name: str, t, device: torch.device, dtypes, shape=None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.device != device:
        raise ValueError(f'{name} must be on {device} (the device of the weights), got {t.device}')
    if t.dtype not in dtypes:
        raise TypeError(f'{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}')
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f'{name} must have shape {tuple(shape)}, got {tuple(t.shape)}')
    return t


@torch.no_grad()
def fused_recurrent_sample(
    folded: FoldedRecurrentNet,
    prefix: Tensor,
    length: int,
    temperature: float,
    *,
    seed: Tensor | None = None,
    offset: Tensor | None = None,
    uniform_noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    out: Tensor | None = None,
    state_scratch: Tensor | None = None,
    precision: str = 'tf32x3',
    mode: str = 'auto',
    programs: int | None = None,
    check: bool | None = None,
    max_spins: int = DEFAULT_MAX_SPINS,
    plan: LaunchPlan | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`FoldedRecurrentNet.sample` in one persistent kernel launch: same arguments, same return.

    Teacher-force `prefix` (batch, prefix_len) from a zero state, then sample `length` tokens from
    softmax(logits / temperature) by Gumbel-max (argmax at temperature 0, lowest id on ties).
    Returns (tokens (batch, length) int64, or `out`; final state ((h, c) for LSTM, (h,) for GRU),
    fp32 (batch, hidden) each, the state after feeding the second to last sampled token).

    Noise: `uniform_noise` (batch, length, num_tokens) of U[0, 1) replaces the generator (parity
    tests; only the band's candidates are read). Otherwise in-kernel Philox keyed by `seed` ((1,)
    int64 device tensor; drawn from `generator` / torch's default generator when None) at call
    offset `offset` ((1,) int64 device tensor), advanced in place by one after the launch, so that
    the next call or the next replay of a captured CUDA graph draws fresh noise. Without `offset`:
    a fresh seed's offset is zero; a given `seed` tensor gets an offset tensor of its own that
    every call with that seed advances (so repeated calls with one seed differ). Token ids in
    `prefix` are not range-checked (that needs a host sync): they must lie in [0, num_tokens).

    `out` (batch, length), any integer dtype wide enough, may be a strided view. `state_scratch`
    ((2, 2, batch, hidden) LSTM, (1, 2, batch, hidden) GRU, fp32, contiguous) holds the exchange
    slots (and c); the returned state tensors are views into it. Pass one under CUDA graph capture.

    mode: 'persistent' (one launch, grid barriers), 'phases' (one launch per phase, the host stepping:
    what the interpreter checks with P > 1 programs), 'auto' (persistent; phases under the
    interpreter when the plan has more than one program a group). A cooperative grid the device
    refuses (MPS/MIG limits, SMs held by another kernel) runs as 'phases' instead, with one
    RuntimeWarning naming grid and SM count; 'auto' remembers it. `programs` forces the programs
    per group; `plan` replaces the whole launch plan (tests, tuning). `check` (default: env
    UP_FAST_KERNEL_CHECK) synchronises after the launch and raises KernelBarrierError if a grid
    barrier gave up; a training step leaves it off (no host sync): then the rows of a launch that
    gave up hold INVALID_TOKEN (-1) and the next call on the device raises KernelBarrierError once
    the error flag's asynchronous copy to host memory has landed.
    """
    if not isinstance(folded, FoldedRecurrentNet):
        raise TypeError(f'folded must be a FoldedRecurrentNet, got {type(folded).__name__}')
    if folded.cell not in SUPPORTED_CELLS:
        raise ValueError(f'folded.cell must be one of {SUPPORTED_CELLS}, got {folded.cell!r}')
    length = check_int('length', length, low=1)
    temperature = check_temperature(temperature)
    if precision not in SUPPORTED_PRECISIONS:
        raise ValueError(f'precision must be one of {SUPPORTED_PRECISIONS}, got {precision!r}')
    if mode not in SUPPORTED_MODES:
        raise ValueError(f'mode must be one of {SUPPORTED_MODES}, got {mode!r}')
    if programs is not None:
        programs = check_int('programs', programs, low=1)
    max_spins = check_int('max_spins', max_spins, low=1, high=2**31 - 1)
    check = config.kernel_check_from_env() if check is None else bool(check)

    is_lstm = folded.cell == 'lstm'
    gates = 4 if is_lstm else 3
    weight_hh = folded.weight_hh
    if not isinstance(weight_hh, Tensor) or weight_hh.ndim != 2:
        raise ValueError('folded.weight_hh must be a (gates * hidden, hidden) tensor')
    device = weight_hh.device
    hidden = weight_hh.shape[1]
    check_device_tensor('folded.weight_hh', weight_hh, device, WEIGHT_DTYPES, (gates * hidden, hidden))
    num_tokens = folded.weight_out.shape[0] if isinstance(folded.weight_out, Tensor) else None
    check_device_tensor('folded.weight_out', folded.weight_out, device, WEIGHT_DTYPES, (num_tokens, hidden))
    check_device_tensor('folded.input_table', folded.input_table, device, WEIGHT_DTYPES, (num_tokens, gates * hidden))
    if folded.bias_out is not None:
        check_device_tensor('folded.bias_out', folded.bias_out, device, WEIGHT_DTYPES, (num_tokens,))
    if not is_lstm:
        if folded.bias_hn is None:
            raise ValueError('folded.bias_hn must be a (hidden,) tensor for a GRU, got None')
        check_device_tensor('folded.bias_hn', folded.bias_hn, device, WEIGHT_DTYPES, (hidden,))
    if hidden < 1 or num_tokens < 1:
        raise ValueError(f'hidden size and num_tokens must be >= 1, got {hidden} and {num_tokens}')

    if device.type != 'cuda' and not INTERPRETED:
        raise ValueError(
            f'fused_recurrent_sample needs CUDA tensors, the weights are on {device}; on CPU use '
            'FoldedRecurrentNet.sample, or set TRITON_INTERPRET=1 before triton is imported'
        )

    if not isinstance(prefix, Tensor):
        raise TypeError(f'prefix must be a torch.Tensor of token ids, got {type(prefix).__name__}')
    check_device_tensor('prefix', prefix, device, TOKEN_DTYPES)
    if prefix.ndim != 2:
        raise ValueError(f'prefix must have shape (batch, prefix_len), got {tuple(prefix.shape)}')
    batch, prefix_len = prefix.shape
    if batch < 1 or prefix_len < 1:
        raise ValueError(f'prefix must hold at least one token per row and one row, got shape {tuple(prefix.shape)}')
    check_int32_offsets(batch, hidden, num_tokens, gates)
    if length * num_tokens > MAX_COUNTERS_PER_ROW:
        raise ValueError(f'length * num_tokens must be <= 2**32 (Philox counter word), got {length} * {num_tokens}')

    if uniform_noise is not None:
        check_device_tensor('uniform_noise', uniform_noise, device, NOISE_DTYPES, (batch, length, num_tokens))
    if seed is None:
        seed = torch.empty(1, dtype=torch.int64, device=device).random_(generator=generator)
        if offset is None:
            offset = torch.zeros(1, dtype=torch.int64, device=device)
    check_device_tensor('seed', seed, device, (torch.int64,))
    if seed.numel() != 1:
        raise ValueError(f'seed must hold exactly one int64, got shape {tuple(seed.shape)}')
    if offset is None:
        if seed not in _seed_offsets:
            _seed_offsets[seed] = torch.zeros(1, dtype=torch.int64, device=device)
        offset = _seed_offsets[seed]
    check_device_tensor('offset', offset, device, (torch.int64,))
    if offset.numel() != 1:
        raise ValueError(f'offset must hold exactly one int64, got shape {tuple(offset.shape)}')

    if out is None:
        out = torch.empty((batch, length), dtype=torch.int64, device=device)
    check_device_tensor('out', out, device, TOKEN_DTYPES, (batch, length))
    if num_tokens - 1 > torch.iinfo(out.dtype).max:
        raise ValueError(f'out of dtype {out.dtype} cannot hold token ids up to {num_tokens - 1}')

    cell_states = 2 if is_lstm else 1
    if state_scratch is None:
        state_scratch = torch.empty((cell_states, 2, batch, hidden), dtype=torch.float32, device=device)
    check_device_tensor('state_scratch', state_scratch, device, (torch.float32,), (cell_states, 2, batch, hidden))
    if not state_scratch.is_contiguous():
        raise ValueError('state_scratch must be contiguous')

    # an earlier launch that gave up raises here, before this one changes anything
    raise_pending_kernel_errors(device)

    weight_bytes = max(t.element_size() for t in (weight_hh, folded.weight_out))
    if plan is None:
        plan = plan_launch(
            batch,
            hidden,
            num_tokens,
            num_sms(device),
            weight_bytes=weight_bytes,
            programs=programs,
            capability=capability(device),
        )
    else:
        check_plan(plan, batch, hidden, num_tokens)
    if mode == 'auto':
        refused = (str(device), plan.grid) in _refused_grids
        mode = 'phases' if (INTERPRETED or refused) and plan.programs > 1 else 'persistent'
    if plan.grid > 65535:
        raise ValueError(f'batch {batch} needs a grid of {plan.grid} programs, more than a launch allows')

    state, mode = recurrent_sample_launch(
        folded.cell,
        folded.input_table.contiguous(),
        weight_hh.contiguous(),
        folded.bias_hn.contiguous() if not is_lstm else None,
        folded.weight_out.contiguous(),
        folded.bias_out.contiguous() if folded.bias_out is not None else None,
        prefix,
        length,
        temperature,
        seed.reshape(1),
        offset.reshape(1),
        uniform_noise,
        out,
        state_scratch,
        plan,
        mode=mode,
        precision=precision,
        max_spins=max_spins,
    )
    # the next call (or graph replay) draws fresh noise
    offset.add_(1)
    if mode == 'persistent':
        if check:
            check_kernel_errors(device, grid=plan.grid, plan=plan)
        else:
            watch_kernel_errors(device, plan)
    return out, state
