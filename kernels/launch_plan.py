"""The launch plan of the sampling kernels: how a launch splits batch, hidden units and vocabulary over programs.

`plan_launch` is the launcher rule (docs/kernel.md, "Launch rule"); `check_plan` checks a hand-made
plan; `capability` and `num_sms` read what the rule needs from the device. No Triton import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# the largest (BLOCK_B, columns) accumulator of a phase: 16 registers a thread at 4 warps, which
# leaves room for the tf32x3 operand splits without spills (ptxas, sm_90)
ACCUMULATOR_ELEMENTS = 2048
# the per-phase kernels: at 8 warps ptxas capped some at 128 registers and spilled (sm_90); at 4,
# none spilled. Warps split a tile's rows and columns, never K, so the arithmetic is the same
PHASE_NUM_WARPS = 4
# registers a thread of the persistent kernel may give to its resident slices (fp32: bf16 widened once)
# and to the whole h they multiply each step: 64 of 255. Counting h too keeps the register file and the
# shared memory Triton stages them in within bounds (a hidden-512 slice within the weights alone spilled
# and staged 209 KiB); the compile gate checks its shapes spill-free with no weight load in the step loop
RESIDENT_REGISTERS = 64
# Compile options of every launch: without a register cap ptxas chose 128 registers for some
# configurations and spilled (sm_90, Triton 3.6 and 3.9); 255 is one program of 8 warps an SM
COMPILE_OPTIONS = dict(maxnreg=255)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def padded_k(hidden: int) -> int:
    """K of a resident slice: hidden padded to a power of two, at least 16 (tl.dot's smallest K)."""
    return next_power_of_2(max(16, hidden))


_num_sms_cache: dict = {}


def capability(device: torch.device) -> int:
    """Compute capability as 10 * major + minor (90 on an H200); 90 off CUDA (the interpreter)."""
    if device.type != 'cuda':
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def num_sms(device: torch.device) -> int:
    """Multiprocessors of `device` (132 on an H200); 1 off CUDA (the interpreter)."""
    if device.type != 'cuda':
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _num_sms_cache:
        _num_sms_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _num_sms_cache[index]


@dataclass(frozen=True)
class LaunchPlan:
    """How a launch splits the work (see plan_launch and docs/kernel.md, "Launch rule")."""

    block_b: int  # batch rows of a group
    groups: int  # batch tiles, each with a full set of slices
    programs: int  # programs per group, splitting the weights
    block_u: int  # hidden units of a gate tile (4 * block_u columns)
    unit_tiles: int  # gate tiles per program
    block_v: int  # tokens of a vocabulary tile
    vocab_tiles: int  # vocabulary tiles per program
    num_slices: int  # programs of a group with a vocabulary slice
    block_k: int  # hidden (reduction) tile
    block_p: int  # partials reduced at a time: next_pow2(num_slices), at most 32
    num_warps: int
    # the persistent kernel's software pipelining of its streamed K loops: with 3 stages Triton prefetches
    # the next h and weight tiles (cp.async) while the current ones multiply
    num_stages: int = 3
    # the persistent kernel loads the program's W_hh^T (resp. W_out^T) slice once and holds it on chip
    # (registers, or shared memory where Triton stages a loop-invariant dot operand) for the whole launch,
    # split along K over the warps, instead of streaming it from L2 each step (docs/kernel.md)
    resident_gates: bool = False
    resident_logits: bool = False

    @property
    def weights(self) -> str:
        """How the persistent kernel's programs get their weight slices each step."""
        streamed = (
            f'streamed from L2, pipelined (num_stages={self.num_stages})'
            if self.num_stages > 1
            else 'streamed from L2, one tile at a time'
        )
        if self.resident_gates and self.resident_logits:
            return 'resident on chip'
        if self.resident_gates or self.resident_logits:
            on_chip, off = ('gates', 'logits') if self.resident_gates else ('logits', 'gates')
            return f'{on_chip} resident on chip, {off} {streamed}'
        return streamed

    def k_splits(self, hidden: int) -> tuple[int, int]:
        """(padded K, splits) of the resident slices: hidden padded to a power of two >= 16, split
        over the warps in chunks of at least 16 (tl.dot's smallest K)."""
        padded = padded_k(hidden)
        return padded, min(self.num_warps, padded // 16)

    @property
    def grid(self) -> int:
        return self.groups * self.programs

    @property
    def cooperative(self) -> bool:
        return self.programs > 1

    def slice_bytes(self, hidden: int, weight_bytes: int = 4) -> int:
        """Weight bytes a program reads each step (W_hh^T of its units padded to 4 gates, W_out^T of its slice)."""
        return hidden * (4 * self.block_u * self.unit_tiles + self.block_v * self.vocab_tiles) * weight_bytes


def plan_launch(
    batch: int,
    hidden: int,
    num_tokens: int,
    sms: int,
    *,
    weight_bytes: int = 4,
    programs: int | None = None,
    capability: int = 90,
) -> LaunchPlan:
    """The launcher rule. `programs` forces the programs per group (tests: P > 1 under the
    interpreter, phase per launch); otherwise they follow from `sms`. `capability` (90: sm_90)
    sizes the accumulators: sm_80's mma.sync operands need more registers (halved there)."""
    block_b = min(64, max(16, next_power_of_2(batch)))
    # 64 rows take the wgmma path on sm_90, whose operands cost more registers (Triton 3.6 spilled)
    accumulator = ACCUMULATOR_ELEMENTS if capability >= 90 and block_b <= 32 else ACCUMULATOR_ELEMENTS // 2
    groups = cdiv(batch, block_b)
    per_group = max(1, sms // groups) if programs is None else programs

    units = cdiv(hidden, per_group)  # hidden units a program should own
    block_u = min(max(4, next_power_of_2(units)), max(4, accumulator // (4 * block_b)))
    unit_tiles = cdiv(units, block_u)
    hidden_programs = cdiv(hidden, unit_tiles * block_u)
    if programs is None:
        programs = min(per_group, max(hidden_programs, min(per_group, cdiv(num_tokens, 128))))
    else:
        programs = per_group

    tokens = cdiv(num_tokens, programs)
    block_v = min(max(16, next_power_of_2(tokens)), max(16, accumulator // block_b))
    vocab_tiles = cdiv(tokens, block_v)
    num_slices = cdiv(num_tokens, block_v * vocab_tiles)

    block_k = min(max(16, next_power_of_2(hidden)), 32 if capability >= 90 else 16)
    num_warps = 8
    # pipelined K loops compiled without spills on sm_90 (Triton 3.6 and 3.9); sm_80 keeps one stage
    num_stages = 3 if capability >= 90 else 1
    # a slice stays on chip when it is one tile and it fits RESIDENT_REGISTERS beside the step's h; the
    # logits only beside resident gates (every program has gates: streamed gates leave no room, ptxas
    # spilled at hidden 1024); 64-row tiles keep streaming (their h and accumulators leave no room)
    budget = RESIDENT_REGISTERS * 32 * num_warps  # fp32 elements a program may hold
    padded = padded_k(hidden)
    h_elements = block_b * padded  # the whole h, loaded once a phase
    gates_elements = 4 * block_u * padded if unit_tiles == 1 and block_b <= 32 else budget + 1
    logits_elements = block_v * padded if vocab_tiles == 1 and block_b <= 32 else budget + 1
    resident_gates = h_elements + gates_elements <= budget
    resident_logits = resident_gates and h_elements + gates_elements + logits_elements <= budget
    return LaunchPlan(
        block_b,
        groups,
        programs,
        block_u,
        unit_tiles,
        block_v,
        vocab_tiles,
        num_slices,
        block_k,
        min(32, max(2, next_power_of_2(num_slices))),
        num_warps,
        num_stages,
        resident_gates,
        resident_logits,
    )


def check_plan(plan, batch: int, hidden: int, num_tokens: int):
    """A hand-made plan must cover the shapes with tiles tl.dot accepts."""
    if not isinstance(plan, LaunchPlan):
        raise TypeError(f'plan must be a LaunchPlan, got {type(plan).__name__}')
    pow2 = lambda n, low: n >= low and n & (n - 1) == 0
    for name, low in (('block_b', 16), ('block_u', 4), ('block_v', 16), ('block_k', 16), ('block_p', 2)):
        if not pow2(getattr(plan, name), low):
            raise ValueError(f'plan.{name} must be a power of two >= {low}, got {getattr(plan, name)}')
    slice_tokens = plan.vocab_tiles * plan.block_v
    problems = [
        (plan.groups * plan.block_b < batch, f'groups * block_b = {plan.groups * plan.block_b} < batch {batch}'),
        (plan.programs * plan.unit_tiles * plan.block_u < hidden, f'programs * unit_tiles * block_u < hidden {hidden}'),
        (plan.num_slices * slice_tokens < num_tokens, f'num_slices * vocab_tiles * block_v < num_tokens {num_tokens}'),
        (
            (plan.num_slices - 1) * slice_tokens >= num_tokens,
            f'slice {plan.num_slices - 1} of {plan.num_slices} is empty',
        ),
        (plan.num_slices > plan.programs, f'num_slices {plan.num_slices} > programs {plan.programs}'),
        (plan.num_warps not in (1, 2, 4, 8, 16), f'num_warps {plan.num_warps} is not a power of two <= 16'),
        (plan.num_stages not in (1, 2, 3, 4), f'num_stages {plan.num_stages} is not in 1..4'),
        (plan.resident_gates and plan.unit_tiles != 1, f'resident_gates needs unit_tiles 1, got {plan.unit_tiles}'),
        (
            plan.resident_logits and plan.vocab_tiles != 1,
            f'resident_logits needs vocab_tiles 1, got {plan.vocab_tiles}',
        ),
    ]
    for bad, what in problems:
        if bad:
            raise ValueError(
                f'plan {plan} does not fit batch {batch}, hidden {hidden}, num_tokens {num_tokens}: {what}'
            )
