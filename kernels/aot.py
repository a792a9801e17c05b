"""The compile configurations of the Triton kernels (sampling, buffer) that the launchers can choose.

`aot_configurations(arch)` lists them as `AotConfig`s, complete enough to compile with
`triton.compile` for sm_`arch` without a GPU; the compile gate (tests/test_compile_gate.py, with
the tooling in benchmarks/aot_compile.py) fails on a compile error, a register spill or shared
memory over the limit, and `python -m benchmarks.compile_report` prints the table.

The contract a configuration satisfies (checked before anything compiles):
- `fn` is the @triton.jit kernel itself; `signature` maps every non-constexpr argument to its
  Triton type ('*fp32', '*bf16', '*i64', 'i32', 'i64', 'fp32'), `constexprs` every tl.constexpr
  argument to its value; no argument missing, none in both.
- `num_warps`, `num_stages` as launched; `cooperative=True` compiles with launch_cooperative_grid;
  `options`: any further compile options the launcher passes (e.g. `maxnreg`).
- `programs` (grid size launched) and `floor` (any dict, nested dicts flattened in the report:
  bytes and FLOPs per program per phase, barriers per step, floor us per step) are only reported.
- `divisible_by_16`: the arguments the JIT sees as multiples of 16 (default: every pointer);
  `equal_to_1`: the int arguments the launcher passes as 1, which the JIT makes constants. Both
  follow from the shape (`launch_specialization`), so the gate compiles the binary that runs.
- names unique per arch, readable; nothing here touches a GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from up_fast.kernels.launch_plan import COMPILE_OPTIONS, PHASE_NUM_WARPS, plan_launch
from up_fast.kernels.perf_model import design_floor
from up_fast.kernels.recurrent_sample import (
    PER_CALL_ARGUMENTS,
    kernel_constexprs,
    persistent_constexprs,
    recurrent_phase_kernel,
    recurrent_sample_kernel,
)

# SMs of the part each target stands for (H100 SXM / H200, A100): launchers size grids by them
TARGET_SMS = {90: 132, 80: 108}


@dataclass(frozen=True)
class AotConfig:
    """One kernel configuration the launcher can choose, complete enough to compile without a GPU."""

    name: str  # readable id, e.g. 'lstm-fp32-sample-example'
    fn: object  # the @triton.jit kernel
    signature: dict  # every non-constexpr argument name -> Triton type ('*fp32', 'i32', 'fp32', ...)
    constexprs: dict  # every tl.constexpr argument name -> value
    num_warps: int
    num_stages: int
    programs: int  # programs the launcher launches for this shape
    floor: dict = field(default_factory=dict)  # design numbers for the report (bytes, FLOPs, barriers, us per step)
    cooperative: bool = False  # launched with launch_cooperative_grid
    options: dict = field(default_factory=dict)  # further compile options every launch passes (e.g. maxnreg)
    # arguments the JIT would see divisible by 16 (it specialises on that at launch); None: every
    # pointer argument, as for freshly allocated tensors
    divisible_by_16: tuple | None = None
    equal_to_1: tuple = ()  # int arguments launched as 1: constants of the binary


AOT_SHAPES = {  # name: (batch, hidden, num_tokens)
    'example': (32, 256, 256),
    'vocab32768': (32, 256, 32768),
    'hidden1024': (32, 1024, 256),
    'batch4096': (4096, 256, 256),
    # at the resident budget: h and the gate slice fill it (the logits stream)
    'batch16-hidden512': (16, 512, 256),
}


def kernel_signature(fn, weight_type: str, constexprs: dict) -> dict:
    """Every non-constexpr argument of `fn` -> its Triton type, as the launcher passes them."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            continue
        if name in ('input_table_ptr', 'weight_hh_ptr', 'bias_hn_ptr', 'weight_out_ptr', 'bias_out_ptr'):
            types[name] = '*' + weight_type
        elif name in ('prefix_ptr', 'tokens_ptr', 'seed_ptr', 'offset_ptr'):
            types[name] = '*i64'
        elif name in ('noise_ptr', 'h_ptr', 'c_ptr', 'partial_score_ptr'):
            types[name] = '*fp32'
        elif name in ('partial_token_ptr', 'sync_ptr', 'error_ptr'):
            types[name] = '*i32'
        elif name in ('temperature', 'g_hi', 'g_lo'):
            types[name] = 'fp32'
        else:
            types[name] = 'i32'
    return types


def launch_ints(plan, batch: int, hidden: int, num_tokens: int, injected: bool) -> dict:
    """The int arguments a launch at this shape passes that its shape fixes (contiguous prefix,
    `out` and noise; PER_CALL_ARGUMENTS change from call to call and are not specialised)."""
    return dict(
        stride_prefix_t=1,
        stride_tokens_t=1,
        stride_noise_t=num_tokens if injected else 0,
        stride_noise_v=1 if injected else 0,
        batch=batch,
        hidden=hidden,
        num_tokens=num_tokens,
        programs=plan.programs,
        num_slices=plan.num_slices,
        groups=plan.groups,
    )


def launch_specialization(signature: dict, ints: dict) -> tuple[tuple, tuple]:
    """(divisible_by_16, equal_to_1) as Triton's JIT specialises a launch: pointers of fresh
    tensors and ints that are multiples of 16 get a divisibility hint, ints equal to 1 become
    constants; PER_CALL_ARGUMENTS (do_not_specialize) neither."""
    aligned, ones = [], []
    for name, kind in signature.items():
        if kind.startswith('*'):
            aligned.append(name)
        elif kind in ('i32', 'i64') and name not in PER_CALL_ARGUMENTS:
            if ints[name] == 1:
                ones.append(name)
            elif ints[name] % 16 == 0:
                aligned.append(name)
    return tuple(aligned), tuple(ones)


def aot_configurations(arch: int = 90) -> list[AotConfig]:
    """Every kernel configuration the launcher chooses for the gate's shapes on sm_`arch` with the
    SM count of its part (TARGET_SMS: an H200 for 90, an A100 for 80): LSTM and GRU, fp32 and bf16
    weights, sampling and greedy, the persistent kernel and the three per-phase kernels; plus
    injected noise and 'ieee' at the example size (the GPU tests)."""
    sms, capability = TARGET_SMS[arch], arch
    configs, seen = [], set()

    def add(name, fn, constexprs, plan, floor, ints):
        weight_type = constexprs.pop('_weight_type')
        signature = kernel_signature(fn, weight_type, constexprs)
        aligned, ones = launch_specialization(signature, ints)
        num_warps = plan.num_warps if fn is recurrent_sample_kernel else PHASE_NUM_WARPS
        key = (
            fn.__name__,
            tuple(sorted(signature.items())),
            tuple(sorted(constexprs.items())),
            num_warps,
            aligned,
            ones,
        )
        if key in seen:
            return
        seen.add(key)
        configs.append(
            AotConfig(
                name=name,
                fn=fn,
                signature=signature,
                constexprs=constexprs,
                num_warps=num_warps,
                num_stages=plan.num_stages,  # the phase kernels get a one-stage plan
                programs=plan.grid,
                floor=floor,
                cooperative=fn is recurrent_sample_kernel and plan.cooperative,
                options=dict(COMPILE_OPTIONS),
                divisible_by_16=aligned,
                equal_to_1=ones,
            )
        )

    variants = []
    for shape in AOT_SHAPES:
        for cell in ('lstm', 'gru'):
            for weights in ('fp32', 'bf16'):
                for sample in (True, False):
                    variants.append((shape, cell, weights, sample, False, 'tf32x3'))
    variants += [('example', cell, 'fp32', True, True, 'tf32x3') for cell in ('lstm', 'gru')]
    variants += [
        ('example', cell, 'fp32', sample, False, 'ieee') for cell in ('lstm', 'gru') for sample in (True, False)
    ]

    for shape, cell, weights, sample, injected, precision in variants:
        batch, hidden, num_tokens = AOT_SHAPES[shape]
        weight_bytes = 2 if weights == 'bf16' else 4
        plan = plan_launch(batch, hidden, num_tokens, sms, weight_bytes=weight_bytes, capability=capability)
        gates = 4 if cell == 'lstm' else 3
        base = kernel_constexprs(plan, cell == 'lstm', True, sample, injected, precision)
        floor = design_floor(plan, hidden, num_tokens, gates, weight_bytes, precision, sample)
        kind = ('sample' if sample else 'greedy') + ('-injected' if injected else '')
        stem = f'{shape}-{cell}-{weights}-{kind}-{precision}'
        ints = launch_ints(plan, batch, hidden, num_tokens, injected)
        persistent = dict(base, **persistent_constexprs(plan, hidden), _weight_type=weights)
        add(f'persistent-{stem}', recurrent_sample_kernel, persistent, plan, floor, ints)
        # the phase kernels stream, one stage: nothing stays on chip between launches
        streamed = dataclasses.replace(plan, resident_gates=False, resident_logits=False, num_stages=1)
        phase_floor = design_floor(streamed, hidden, num_tokens, gates, weight_bytes, precision, sample)
        for phase in (0, 1, 2):
            add(
                f'phase{phase}-{stem}',
                recurrent_phase_kernel,
                dict(base, PHASE=phase, _weight_type=weights),
                streamed,
                phase_floor,
                ints,
            )
    # the buffer kernels (gather, write-back): their configurations live beside them; imported here, not at
    # the top, because they take AotConfig from this module
    from up_fast.kernels.buffer_ops import aot_configurations as buffer_configurations

    return configs + buffer_configurations(arch)
