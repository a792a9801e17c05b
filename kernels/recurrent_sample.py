"""One Triton launch for the whole decoding loop of a folded 1-layer LSTM/GRU.

`fused_recurrent_sample(folded, prefix, length, temperature)` is `FoldedRecurrentNet.sample`
(up_fast/sampling.py, the PyTorch twin this kernel must match) in a single kernel: teacher-force
`prefix` from a zero state, then sample `length` tokens by Gumbel-max, feeding each one back.

Work per decoding step (example config: batch 32, hidden 256, vocab 256, LSTM, fp32 weights)
-------------------------------------------------------------------------------------------
    gates   h @ W_hh^T      2 * 32 * 256 * 1024  = 16.8 MFLOP   W_hh   1024 x 256 x 4 B = 1 MiB
    logits  h @ W_out^T     2 * 32 * 256 * 256   =  4.2 MFLOP   W_out   256 x 256 x 4 B = 256 KiB
    gather  input_table rows                                    32 x 1024 x 4 B       = 128 KiB
    gating, Philox (10 rounds), Gumbel, argmax: about 0.7 M integer/float ops, state r/w ~ 100 KiB
    total   about 21 MFLOP and 1.4 MiB per step; about 11 GFLOP and 0.75 GiB for 512 steps.

Expected floor on an H100, estimated, not yet timed (latency-bound, not throughput-bound:
21 MFLOP is ~0.04 us of the chip's TF32 tensor cores). A step is a chain of dependent phases: gather -> gates matmul + gating ->
barrier -> logits matmul + noise + argmax -> next gather. This kernel gives each program a tile
of batch rows and all of the weights, so no program ever waits on another (no grid-wide sync,
which Triton cannot launch cooperatively and which could deadlock), but each program streams
the full 1.25 MiB of weights from L2 every step. One SM reads L2 at about 64 B/clock (~110 GB/s),
so the floor of this design is about 11 us/step for the example config (about 6 us with bf16
weights), plus ~1-2 us of phase latency; with precision='ieee' the fp32 FMA work of one program
(10.5 MFLOP at ~450 GFLOP/s per SM) puts it nearer 25 us, with 'tf32x3' back near the L2 bound.
A split of the weights across SMs with a grid barrier per phase would approach ~3-5 us/step;
that is the next step if this kernel turns out to be the bottleneck.

Design
------
- grid = (cdiv(batch, BLOCK_B),): each program owns BLOCK_B rows for the whole loop.
- h and c (fp32) live in a (cell_states, 2, batch, hidden) ping-pong scratch in global memory
  (it stays in L1/L2; register-resident state would cap hidden at a few hundred): step s reads slot s % 2 and writes slot (s + 1) % 2, so the hidden dimension can be
  tiled in the matmul without a tile overwriting state that a later tile still reads. One
  `tl.debug_barrier()` per step (after the gates phase) makes the new h visible to all threads
  of the program before the logits phase and the next step read it.
- gates phase: for each tile of BLOCK_H hidden units, accumulate h @ W_hh^T over BLOCK_K tiles
  of the hidden dimension (one tl.dot per gate), add the gathered input_table row, gate, store.
- logits phase: for each tile of BLOCK_V tokens, h @ W_out^T (+ bias_out), add temperature *
  Gumbel noise, and keep a running (max, lowest index) over the vocabulary tiles.
- noise: Philox keyed by a seed read from a device tensor, with counter words
  (step * num_tokens + token, row, offset_lo, offset_hi): unique per (row, step, token) and per
  call offset. Both seed and offset are device tensors, so a captured CUDA graph re-reads them on
  replay; `fused_recurrent_sample` advances `offset` by one after each launch.
- launch config: fixed, no autotune (the interpreter would pay for every config). Defaults
  (BLOCK_B 16 rows, BLOCK_H = BLOCK_K = 32, BLOCK_V 64, 4 warps) compile for sm_90 with no
  register spills (ptxas report, Triton 3.9 AOT); they are a starting point to tune on a GPU.
- numerics: every tanh is 2 * sigmoid(2x) - 1 with the doubling folded into the weights (see
  FoldedRecurrentNet), and h and c are kept unscaled (the twin's CPU loop keeps h / 2 and 2 c,
  which gives bitwise the same values and saves it two ops a step; here the state is not an op).
  Weights may be fp32,
  bf16 or fp16: cast to fp32 on load, fp32 accumulation. precision='ieee' (default) is a true
  fp32 dot, so tokens match the twin except at genuine near-ties; 'tf32x3' is faster on tensor
  cores and about as accurate; plain 'tf32' is not offered (10-bit mantissa flips tokens).
"""

from __future__ import annotations

import os
from numbers import Integral

import torch
import triton
import triton.language as tl
from torch import Tensor

from up_fast.checks import check_int, check_temperature
from up_fast.sampling import SUPPORTED_CELLS, FoldedRecurrentNet

# triton.jit picks the interpreter when TRITON_INTERPRET=1 at decoration time (this import)
INTERPRETED = os.environ.get('TRITON_INTERPRET', '0') == '1'

SUPPORTED_PRECISIONS = ('ieee', 'tf32x3')
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)
NOISE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# the counter word holding (step * num_tokens + token) is 32 bits wide
MAX_COUNTERS_PER_ROW = 1 << 32


@triton.jit
def recurrent_sample_kernel(
    prefix_ptr,                 # (batch, prefix_len) integer token ids
    stride_prefix_b,
    stride_prefix_t,
    input_table_ptr,            # (num_tokens, gates * hidden) contiguous
    weight_hh_ptr,              # (gates * hidden, hidden) contiguous
    bias_hn_ptr,                # (hidden,) GRU only
    weight_out_ptr,             # (num_tokens, hidden) contiguous
    bias_out_ptr,               # (num_tokens,) if HAS_BIAS_OUT
    noise_ptr,                  # (batch, length, num_tokens) U[0, 1) if INJECTED_NOISE
    stride_noise_b,
    stride_noise_t,
    stride_noise_v,
    seed_ptr,                   # (1,) int64 Philox key
    offset_ptr,                 # (1,) int64 Philox call offset
    tokens_ptr,                 # (batch, length) sampled tokens, any integer dtype
    stride_tokens_b,
    stride_tokens_t,
    h_ptr,                      # (2, batch, hidden) fp32 ping-pong state
    c_ptr,                      # (2, batch, hidden) fp32 ping-pong cell state, LSTM only
    batch,
    prefix_len,
    length,
    hidden,
    num_tokens,
    temperature,
    IS_LSTM: tl.constexpr,
    GATES: tl.constexpr,            # 4 (LSTM) or 3 (GRU) blocks of `hidden` in input_table and W_hh
    HAS_BIAS_OUT: tl.constexpr,
    SAMPLE: tl.constexpr,           # temperature > 0; else plain argmax
    INJECTED_NOISE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_V: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)                      # (BLOCK_B,)
    row_mask = rows < batch
    state_rows = rows * hidden                                        # (BLOCK_B,) row starts in a state slot
    slot_size = batch * hidden                                        # < 2**30, checked by the launcher

    # zero initial state, slot 0
    for j in range(0, hidden, BLOCK_H):
        cols = j + tl.arange(0, BLOCK_H)
        mask = row_mask[:, None] & (cols < hidden)[None, :]
        zeros = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        tl.store(h_ptr + state_rows[:, None] + cols[None, :], zeros, mask=mask)
        if IS_LSTM:
            tl.store(c_ptr + state_rows[:, None] + cols[None, :], zeros, mask=mask)
    tl.debug_barrier()

    if SAMPLE and not INJECTED_NOISE:
        seed = tl.load(seed_ptr)
        offset = tl.load(offset_ptr)
        offset_lo = (offset & 0xFFFFFFFF).to(tl.uint32)
        offset_hi = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)

    token = tl.load(prefix_ptr + rows * stride_prefix_b, mask=row_mask, other=0).to(tl.int32)   # (BLOCK_B,)

    # feed s: token -> state; after feeding the last prefix token and every sampled one except the
    # last, sample. prefix_len + length - 1 feeds in all, `length` samples.
    for s in range(0, prefix_len + length - 1):
        read = (s % 2) * slot_size
        write = ((s + 1) % 2) * slot_size
        table_rows = token.to(tl.int64) * (GATES * hidden)            # (BLOCK_B,)

        # ---- gates phase: new h, c for each tile of BLOCK_H hidden units
        for j in range(0, hidden, BLOCK_H):
            cols_j = j + tl.arange(0, BLOCK_H)                        # (BLOCK_H,)
            mask_j = cols_j < hidden
            mask_bj = row_mask[:, None] & mask_j[None, :]             # (BLOCK_B, BLOCK_H)

            acc_0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)    # LSTM i / GRU r
            acc_1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)    # LSTM f / GRU z
            acc_2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)    # LSTM o / GRU W_hn h, kept apart
            acc_3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)    # LSTM g (doubled); unused by GRU

            for k in range(0, hidden, BLOCK_K):
                cols_k = k + tl.arange(0, BLOCK_K)                    # (BLOCK_K,)
                mask_k = cols_k < hidden
                h_k = tl.load(h_ptr + read + state_rows[:, None] + cols_k[None, :],
                              mask=row_mask[:, None] & mask_k[None, :], other=0.)            # (BLOCK_B, BLOCK_K)
                # W_hh^T tile of gate 0: (BLOCK_K, BLOCK_H), element [k, j] = W_hh[j, k]
                w_ptrs = weight_hh_ptr + cols_j[None, :] * hidden + cols_k[:, None]
                w_mask = mask_k[:, None] & mask_j[None, :]
                gate_stride = hidden * hidden
                w = tl.load(w_ptrs, mask=w_mask, other=0.).to(tl.float32)
                acc_0 = tl.dot(h_k, w, acc_0, input_precision=PRECISION)
                w = tl.load(w_ptrs + gate_stride, mask=w_mask, other=0.).to(tl.float32)
                acc_1 = tl.dot(h_k, w, acc_1, input_precision=PRECISION)
                w = tl.load(w_ptrs + 2 * gate_stride, mask=w_mask, other=0.).to(tl.float32)
                acc_2 = tl.dot(h_k, w, acc_2, input_precision=PRECISION)
                if IS_LSTM:
                    w = tl.load(w_ptrs + 3 * gate_stride, mask=w_mask, other=0.).to(tl.float32)
                    acc_3 = tl.dot(h_k, w, acc_3, input_precision=PRECISION)

            # the gathered input_table row: x @ W_ih^T + folded biases, per gate
            x_ptrs = input_table_ptr + table_rows[:, None] + cols_j[None, :]                 # (BLOCK_B, BLOCK_H)
            x_0 = tl.load(x_ptrs, mask=mask_bj, other=0.).to(tl.float32)
            x_1 = tl.load(x_ptrs + hidden, mask=mask_bj, other=0.).to(tl.float32)
            x_2 = tl.load(x_ptrs + 2 * hidden, mask=mask_bj, other=0.).to(tl.float32)
            state_ptrs = state_rows[:, None] + cols_j[None, :]                               # (BLOCK_B, BLOCK_H)

            if IS_LSTM:
                x_3 = tl.load(x_ptrs + 3 * hidden, mask=mask_bj, other=0.).to(tl.float32)
                gate_i = tl.sigmoid(x_0 + acc_0)
                gate_f = tl.sigmoid(x_1 + acc_1)
                gate_o = tl.sigmoid(x_2 + acc_2)
                gate_g = tl.sigmoid(x_3 + acc_3)                      # sigmoid(2 g): tanh(g) = 2 gate_g - 1
                c = tl.load(c_ptr + read + state_ptrs, mask=mask_bj, other=0.)
                c = c * gate_f + (2. * gate_i) * gate_g - gate_i      # f c + i tanh(g)
                h = tl.sigmoid(2. * c) * gate_o * 2. - gate_o         # o tanh(c)
                tl.store(c_ptr + write + state_ptrs, c, mask=mask_bj)
            else:
                bias_hn = tl.load(bias_hn_ptr + cols_j, mask=mask_j, other=0.).to(tl.float32)  # (BLOCK_H,) doubled
                gate_r = tl.sigmoid(x_0 + acc_0)
                gate_z = tl.sigmoid(x_1 + acc_1)
                gate_n = tl.sigmoid(x_2 + gate_r * (acc_2 + bias_hn[None, :])) * 2. - 1.   # tanh of the candidate
                h_old = tl.load(h_ptr + read + state_ptrs, mask=mask_bj, other=0.)
                h = (h_old - gate_n) * gate_z + gate_n                # (1 - z) n + z h
            tl.store(h_ptr + write + state_ptrs, h, mask=mask_bj)

        # the new h must be visible to every thread of the program before anyone reads it
        tl.debug_barrier()

        if s < prefix_len - 1:
            # still teacher forcing
            token = tl.load(prefix_ptr + rows * stride_prefix_b + (s + 1) * stride_prefix_t,
                            mask=row_mask, other=0).to(tl.int32)
        else:
            # ---- logits phase: sample token t from the new h
            t = s - (prefix_len - 1)
            best_score = tl.full((BLOCK_B,), float('-inf'), dtype=tl.float32)
            best_token = tl.zeros((BLOCK_B,), dtype=tl.int32)

            for v in range(0, num_tokens, BLOCK_V):
                cols_v = v + tl.arange(0, BLOCK_V)                    # (BLOCK_V,)
                mask_v = cols_v < num_tokens
                logits = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
                for k in range(0, hidden, BLOCK_K):
                    cols_k = k + tl.arange(0, BLOCK_K)
                    mask_k = cols_k < hidden
                    h_k = tl.load(h_ptr + write + state_rows[:, None] + cols_k[None, :],
                                  mask=row_mask[:, None] & mask_k[None, :], other=0.)        # (BLOCK_B, BLOCK_K)
                    w = tl.load(weight_out_ptr + cols_v[None, :] * hidden + cols_k[:, None],
                                mask=mask_k[:, None] & mask_v[None, :], other=0.).to(tl.float32)  # (BLOCK_K, BLOCK_V)
                    logits = tl.dot(h_k, w, logits, input_precision=PRECISION)
                if HAS_BIAS_OUT:
                    logits = logits + tl.load(bias_out_ptr + cols_v, mask=mask_v, other=0.).to(tl.float32)[None, :]

                if SAMPLE:
                    if INJECTED_NOISE:
                        noise_ptrs = (noise_ptr + rows.to(tl.int64)[:, None] * stride_noise_b
                                      + tl.cast(t, tl.int64) * stride_noise_t + cols_v[None, :].to(tl.int64) * stride_noise_v)
                        # masked lanes read 0.5, not 0: they are discarded, but log(0) would warn
                        uniform = tl.load(noise_ptrs, mask=row_mask[:, None] & mask_v[None, :], other=0.5).to(tl.float32)
                    else:
                        # counter words (step * num_tokens + token, row, offset_lo, offset_hi)
                        step_token = (tl.cast(t, tl.int64) * num_tokens + cols_v).to(tl.uint32)          # (BLOCK_V,)
                        zeros_bv = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.uint32)
                        c_0 = zeros_bv + step_token[None, :]
                        c_1 = zeros_bv + rows.to(tl.uint32)[:, None]
                        c_2 = zeros_bv + offset_lo
                        c_3 = zeros_bv + offset_hi
                        bits, _, _, _ = tl.philox(seed, c_0, c_1, c_2, c_3)
                        # top 24 bits: exactly representable, uniform on {0, 2^-24, ..., 1 - 2^-24}
                        uniform = (bits >> 8).to(tl.float32) * (1.0 / 16777216.0)
                    gumbel = -tl.log(-tl.log(uniform))                 # u == 0 gives -inf: never drawn
                    score = logits + temperature * gumbel
                else:
                    score = logits
                score = tl.where(mask_v[None, :], score, float('-inf'))

                # running argmax; ties go to the lowest token id, as torch.argmax
                block_best = tl.max(score, axis=1)                                          # (BLOCK_B,)
                block_token = tl.min(tl.where(score == block_best[:, None], cols_v[None, :], 2147483647), axis=1)
                better = block_best > best_score                      # strict: an earlier tile wins a tie
                best_score = tl.where(better, block_best, best_score)
                best_token = tl.where(better, block_token, best_token)

            tl.store(tokens_ptr + rows.to(tl.int64) * stride_tokens_b + tl.cast(t, tl.int64) * stride_tokens_t, best_token, mask=row_mask)
            token = best_token


# launcher


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


_num_sms_cache: dict = {}


def num_sms(device: torch.device) -> int:
    if device.type != 'cuda':
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _num_sms_cache:
        _num_sms_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _num_sms_cache[index]


def default_launch_config(batch: int, hidden: int, num_tokens: int, device: torch.device, precision: str,
                          sms: int | None = None) -> dict:
    """Fixed block sizes and warps (tl.dot needs every side >= 16). Not timed on a GPU yet: chosen
    so that ptxas (sm_90, Triton 3.9) reports no register spills for the LSTM, the larger cell.

    BLOCK_B: every program streams all the weights each step, so once there are more programs
    than SMs, bigger batch tiles cut the L2 traffic; below that, 16 rows spread over more SMs.
    'tf32x3' keeps 16 rows and 32-token tiles: its split operands need more registers.
    """
    sms = sms if sms is not None else num_sms(device)     # given: sizing for a target without one (AOT)
    block_b = 16
    while precision == 'ieee' and block_b < 64 and triton.cdiv(batch, block_b) > sms:
        block_b *= 2
    fit = lambda n, cap: min(cap, max(16, next_power_of_2(n)))
    return dict(
        block_b=block_b,
        block_h=fit(hidden, 32),
        block_k=fit(hidden, 32),
        block_v=fit(num_tokens, 64 if precision == 'ieee' else 32),
        num_warps=4 if block_b == 16 else 8,
    )


def recurrent_sample_launch(
    cell: str,
    input_table: Tensor,          # (num_tokens, gates * hidden)
    weight_hh: Tensor,            # (gates * hidden, hidden)
    bias_hn: Tensor | None,       # (hidden,) GRU
    weight_out: Tensor,           # (num_tokens, hidden)
    bias_out: Tensor | None,      # (num_tokens,)
    prefix: Tensor,               # (batch, prefix_len)
    length: int,
    temperature: float,
    seed: Tensor,                 # (1,) int64
    offset: Tensor,               # (1,) int64
    uniform_noise: Tensor | None,   # (batch, length, num_tokens)
    out: Tensor,                  # (batch, length) integer
    state_scratch: Tensor,        # (cell_states, 2, batch, hidden) fp32, cell_states = 2 LSTM (h, c), 1 GRU (h)
    *,
    block_b: int,
    block_h: int,
    block_k: int,
    block_v: int,
    num_warps: int = 4,
    num_stages: int = 2,
    precision: str = 'ieee',
) -> tuple[Tensor, ...]:
    """Launch the kernel on checked, contiguous weights. Returns the final state tuple."""
    batch, prefix_len = prefix.shape
    hidden = weight_hh.shape[1]
    num_tokens = weight_out.shape[0]
    is_lstm = cell == 'lstm'

    h = state_scratch[0]                                         # (2, batch, hidden) ping-pong slots
    c = state_scratch[1] if is_lstm else h                       # the GRU never touches c
    sample = temperature > 0
    injected = uniform_noise is not None
    noise = uniform_noise if injected else weight_out                                # a placeholder pointer
    noise_strides = uniform_noise.stride() if injected else (0, 0, 0)

    grid = (triton.cdiv(batch, block_b),)
    recurrent_sample_kernel[grid](
        prefix, prefix.stride(0), prefix.stride(1),
        input_table, weight_hh,
        bias_hn if bias_hn is not None else weight_out,
        weight_out,
        bias_out if bias_out is not None else weight_out,
        noise, *noise_strides,
        seed, offset,
        out, out.stride(0), out.stride(1),
        h, c,
        batch, prefix_len, length, hidden, num_tokens,
        float(temperature) if sample else 0.,
        IS_LSTM=is_lstm,
        GATES=4 if is_lstm else 3,
        HAS_BIAS_OUT=bias_out is not None,
        SAMPLE=sample,
        INJECTED_NOISE=injected,
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_V=block_v,
        PRECISION=precision,
        num_warps=num_warps,
        num_stages=num_stages,
    )

    # feed s writes slot (s + 1) % 2, and the last feed is s = prefix_len + length - 2
    final = (prefix_len + length - 1) % 2
    return (h[final], c[final]) if is_lstm else (h[final],)


# public function


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


def check_block(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f'{name} must be an int, got {value!r}')
    if value < 16 or value & (value - 1):
        raise ValueError(f'{name} must be a power of two >= 16 (tl.dot tiles), got {value}')
    return int(value)


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
    precision: str = 'ieee',
    block_b: int | None = None,
    block_h: int | None = None,
    block_k: int | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`FoldedRecurrentNet.sample` in one kernel launch: same arguments, same return.

    Teacher-force `prefix` (batch, prefix_len) from a zero state, then sample `length` tokens from
    softmax(logits / temperature) by Gumbel-max (argmax at temperature 0, lowest id on ties).
    Returns (tokens (batch, length) int64, or `out`; final state ((h, c) for LSTM, (h,) for GRU),
    fp32 (batch, hidden) each, the state after feeding the second to last sampled token).

    Noise: `uniform_noise` (batch, length, num_tokens) of U[0, 1) replaces the generator (parity
    tests). Otherwise in-kernel Philox keyed by `seed` ((1,) int64 device tensor; drawn from
    `generator` / torch's default generator when None) at call offset `offset` ((1,) int64 device
    tensor, zero when None). `offset` is advanced in place by one after the launch, so that the
    next call, or the next replay of a captured CUDA graph, draws fresh noise; pass a clone to keep
    yours. Token ids in `prefix` are not range-checked (that needs a host sync): they must lie in
    [0, num_tokens).

    `out` (batch, length), any integer dtype wide enough, may be a strided view (e.g. into a token
    buffer). `state_scratch` ((2, 2, batch, hidden) for LSTM, (1, 2, batch, hidden) for GRU, fp32,
    contiguous) is the kernel's ping-pong state; the returned state tensors are views into it.
    Pass one to avoid an allocation per call (e.g. under CUDA graph capture).
    """
    if not isinstance(folded, FoldedRecurrentNet):
        raise TypeError(f'folded must be a FoldedRecurrentNet, got {type(folded).__name__}')
    if folded.cell not in SUPPORTED_CELLS:
        raise ValueError(f'folded.cell must be one of {SUPPORTED_CELLS}, got {folded.cell!r}')
    length = check_int('length', length, low=1)
    temperature = check_temperature(temperature)
    if precision not in SUPPORTED_PRECISIONS:
        raise ValueError(f'precision must be one of {SUPPORTED_PRECISIONS}, got {precision!r}')

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
            'FoldedRecurrentNet.sample, or set TRITON_INTERPRET=1 before triton is imported')

    if not isinstance(prefix, Tensor):
        raise TypeError(f'prefix must be a torch.Tensor of token ids, got {type(prefix).__name__}')
    check_device_tensor('prefix', prefix, device, TOKEN_DTYPES)
    if prefix.ndim != 2:
        raise ValueError(f'prefix must have shape (batch, prefix_len), got {tuple(prefix.shape)}')
    batch, prefix_len = prefix.shape
    if batch < 1 or prefix_len < 1:
        raise ValueError(f'prefix must hold at least one token per row and one row, got shape {tuple(prefix.shape)}')
    # in-kernel offsets into the state slots and weights are int32
    if 2 * batch * hidden >= 2**31 or max(num_tokens, gates * hidden) * hidden >= 2**31:
        raise ValueError(f'batch {batch}, hidden {hidden}, num_tokens {num_tokens} overflow the kernel\'s int32 offsets')
    if length * num_tokens > MAX_COUNTERS_PER_ROW:
        raise ValueError(f'length * num_tokens must be <= 2**32 (Philox counter word), got {length} * {num_tokens}')

    if uniform_noise is not None:
        check_device_tensor('uniform_noise', uniform_noise, device, NOISE_DTYPES, (batch, length, num_tokens))
    if seed is None:
        seed = torch.empty(1, dtype=torch.int64, device=device).random_(generator=generator)
    check_device_tensor('seed', seed, device, (torch.int64,))
    if seed.numel() != 1:
        raise ValueError(f'seed must hold exactly one int64, got shape {tuple(seed.shape)}')
    if offset is None:
        offset = torch.zeros(1, dtype=torch.int64, device=device)
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

    config = default_launch_config(batch, hidden, num_tokens, device, precision)
    for name, value in (('block_b', block_b), ('block_h', block_h), ('block_k', block_k), ('block_v', block_v)):
        if value is not None:
            config[name] = check_block(name, value)
    if num_warps is not None:
        if num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f'num_warps must be one of 1, 2, 4, 8, 16, got {num_warps!r}')
        config['num_warps'] = num_warps

    state = recurrent_sample_launch(
        folded.cell,
        folded.input_table.contiguous(),
        weight_hh.contiguous(),
        folded.bias_hn.contiguous() if not is_lstm else None,
        folded.weight_out.contiguous(),
        folded.bias_out.contiguous() if folded.bias_out is not None else None,
        prefix, length, temperature,
        seed.reshape(1), offset.reshape(1),
        uniform_noise, out, state_scratch,
        precision=precision, **config,
    )
    # the next call (or graph replay) draws fresh noise
    offset.add_(1)
    return out, state


# ahead-of-time configurations (kernels/aot.py; tests/test_compile_gate.py, benchmarks/compile_report.py)


def aot_configurations(arch: int = 90) -> list:
    """Every configuration `default_launch_config` picks for the gate's shapes on sm_`arch`
    (sized for its SM count): the example size, vocabulary 32768, hidden 1024, batch 4096; LSTM
    and GRU; fp32 and bf16 weights; sampling and greedy. Precision 'ieee', the default."""
    from up_fast.kernels.aot import TARGET_SMS, AotConfig

    shapes = dict(example=(32, 256, 256), vocab32768=(32, 256, 32768), hidden1024=(32, 1024, 256),
                  batch4096=(4096, 256, 256))                       # (batch, hidden, num_tokens)
    sms = TARGET_SMS[arch]
    configs = []
    for cell in ('lstm', 'gru'):
        for weights in ('fp32', 'bf16'):
            for sample in (True, False):
                for shape, (batch, hidden, num_tokens) in shapes.items():
                    launch = default_launch_config(batch, hidden, num_tokens, torch.device('cuda'), 'ieee', sms=sms)
                    gates = 4 if cell == 'lstm' else 3
                    signature = {name: 'i32' for name in recurrent_sample_kernel.arg_names
                                 if name.startswith(('stride_', 'batch', 'prefix_len', 'length', 'hidden', 'num_tokens'))}
                    signature.update(temperature='fp32', prefix_ptr='*i64', seed_ptr='*i64', offset_ptr='*i64',
                                     tokens_ptr='*i64', h_ptr='*fp32', c_ptr='*fp32', noise_ptr=f'*{weights}',
                                     **{f'{w}_ptr': f'*{weights}' for w in ('input_table', 'weight_hh', 'bias_hn',
                                                                            'weight_out', 'bias_out')})
                    weight_bytes = (2 if weights == 'bf16' else 4) * (gates * hidden * hidden + num_tokens * hidden)
                    configs.append(AotConfig(
                        name=f'{cell}-{weights}-{"sample" if sample else "greedy"}-{shape}',
                        fn=recurrent_sample_kernel,
                        signature=signature,
                        constexprs=dict(IS_LSTM=cell == 'lstm', GATES=gates, HAS_BIAS_OUT=True, SAMPLE=sample,
                                        INJECTED_NOISE=False, BLOCK_B=launch['block_b'], BLOCK_H=launch['block_h'],
                                        BLOCK_K=launch['block_k'], BLOCK_V=launch['block_v'], PRECISION='ieee'),
                        num_warps=launch['num_warps'],
                        num_stages=2,
                        programs=triton.cdiv(batch, launch['block_b']),
                        # every program streams all the weights each step; one block barrier per step
                        floor=dict(weight_bytes_per_program_per_step=weight_bytes,
                                   flops_per_program_per_step=2 * launch['block_b'] * hidden * (gates * hidden + num_tokens),
                                   barriers_per_step=1),
                    ))
    return configs
