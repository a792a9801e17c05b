"""The ahead-of-time compile gate: every kernel configuration the launcher can choose compiles for
sm_90 and sm_80, with no register spill and shared memory within the SM's limit. No GPU needed:
`triton.compile` with an explicit target and the ptxas inside Triton (benchmarks/aot_compile.py).

Runs under the installed Triton always, and under Triton 3.6 (the Triton that torch 2.11 ships with) when asked
for: CI does it (CI set to a true value), and so does

    python -m pytest tests/test_compile_gate.py --triton-side      # or UP_FAST_TRITON_SIDE=1

which makes a side environment on first use under the repository, in .cache/triton-3.6.0/
(git-ignored; a 188 MB wheel). UP_FAST_TRITON_SIDE=0 turns it off even in CI. Both compile in a
subprocess without TRITON_INTERPRET, which this suite sets when there is no GPU.
"""

import importlib
import importlib.util
from pathlib import Path

import pytest

triton = pytest.importorskip('triton', reason='the compile gate needs Triton: pip install -e ".[test,triton]"')
import triton.language as tl  # noqa: E402

from benchmarks import aot_compile  # noqa: E402
from benchmarks.aot_compile import CompileResult  # noqa: E402
from benchmarks.triton_side_env import SIDE_TRITON_VERSION, side_environment, side_wanted  # noqa: E402
from up_fast.kernels.aot import AotConfig  # noqa: E402

KERNEL_MODULE = aot_compile.DEFAULT_MODULE
TRITONS = ('installed', SIDE_TRITON_VERSION)


def gate_configurations():
    """(arch, name) of every configuration, or the reason there are none."""
    module = importlib.import_module(KERNEL_MODULE)
    if not hasattr(module, 'aot_configurations'):
        return [], f'{KERNEL_MODULE} has no aot_configurations() yet'
    return [
        (arch, cfg.name) for arch in aot_compile.GATE_ARCHS for cfg in aot_compile.configurations(KERNEL_MODULE, arch)
    ], None


CONFIGS, NO_CONFIGS = gate_configurations()
CASES = [
    pytest.param(version, arch, name, id=f'triton-{version}-sm{arch}-{name}')
    for version in TRITONS
    for arch, name in CONFIGS
]


_compiled: dict = {}


def compiled(version: str, module: str = KERNEL_MODULE, side_option: bool = False) -> dict:
    """{(arch, name): CompileResult} of `module` under Triton `version`, compiled once per session
    (a skip or an error too is kept, so that 64 cases do not retry a failing install)."""
    key = (version, module)
    if key not in _compiled:
        try:
            _compiled[key] = compile_now(version, module, side_option)
        except BaseException as e:  # pytest's Skipped is a BaseException
            _compiled[key] = e
    if isinstance(_compiled[key], BaseException):
        raise _compiled[key]
    return _compiled[key]


def compile_now(version: str, module: str, side_option: bool = False) -> dict:
    if version != 'installed':
        if triton.__version__.split('+')[0] == version:
            pytest.skip(f'the installed Triton is {version} already')
        if not side_wanted(side_option):
            pytest.skip(f'Triton {version} runs with --triton-side, UP_FAST_TRITON_SIDE=1 or in CI')
        try:
            side_environment(version)
        except RuntimeError as e:
            pytest.skip(f'no Triton {version} side environment (pip failed, offline?): {str(e)[-300:]}')
    results = aot_compile.compile_all(version, module=module, pythonpath=[Path(__file__).parent])
    return {(r.arch, r.name): r for r in results}


@pytest.mark.slow
@pytest.mark.skipif(bool(NO_CONFIGS), reason=NO_CONFIGS or '')
@pytest.mark.parametrize('version, arch, name', CASES or [pytest.param(None, None, None, id='none')])
def test_configuration_compiles_without_spills_within_shared_memory(version, arch, name, request):
    result = compiled(version, side_option=request.config.getoption('--triton-side'))[(arch, name)]
    if version != 'installed':
        assert result.triton_version == version
    assert result.problems() == [], f'{name} on sm_{arch}, Triton {result.triton_version}: {result.problems()}'


# the gate itself: kernels built to fail it, so that a pass means something


@triton.jit
def spill_canary(x_ptr, y_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    x = tl.load(x_ptr + rows[:, None] * COLS + cols[None, :])  # (ROWS, COLS), all live across both reductions
    y = x * tl.max(x, axis=0)[None, :] + tl.sum(x, axis=1)[:, None]
    tl.store(y_ptr + rows[:, None] * COLS + cols[None, :], y)


@triton.jit
def dot_canary(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    m = tl.arange(0, M)
    n = tl.arange(0, N)
    k = tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])  # (M, K) staged in shared memory
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])  # (K, N)
    tl.store(c_ptr + m[:, None] * N + n[None, :], tl.dot(a, b))


def aot_configurations():
    """The canaries, in the kernel modules' format (compiled in a subprocess that imports this file)."""
    spill = dict(x_ptr='*fp32', y_ptr='*fp32')
    dot = dict(a_ptr='*bf16', b_ptr='*bf16', c_ptr='*fp32')
    return [
        AotConfig('spill-small', spill_canary, spill, dict(ROWS=16, COLS=16), num_warps=1, num_stages=1, programs=1),
        AotConfig('spill-large', spill_canary, spill, dict(ROWS=64, COLS=128), num_warps=1, num_stages=1, programs=1),
        # (128 x 256 + 256 x 256) bf16 = 192 KiB of operands: within sm_90's 227 KiB, over sm_80's 163 KiB
        AotConfig('shared-192k', dot_canary, dot, dict(M=128, N=256, K=256), num_warps=8, num_stages=1, programs=1),
        AotConfig('dot-k8', dot_canary, dot, dict(M=16, N=16, K=8), num_warps=4, num_stages=1, programs=1),
    ]


@pytest.mark.slow
def test_gate_catches_spills_shared_memory_and_compile_errors():
    results = compiled('installed', module=Path(__file__).stem)

    assert results[(90, 'spill-small')].problems() == []
    for arch in aot_compile.GATE_ARCHS:
        large = results[(arch, 'spill-large')]
        assert large.compiled and large.spill_stores > 0, large
        assert any('spill' in p for p in large.problems())

        error = results[(arch, 'dot-k8')]
        assert not error.compiled and error.error
        assert error.problems()[0].startswith('compile error')

    shared_90, shared_80 = results[(90, 'shared-192k')], results[(80, 'shared-192k')]
    assert 192 * 1024 <= shared_90.dynamic_shared == shared_80.dynamic_shared
    assert shared_90.problems() == []
    assert any('shared memory' in p for p in shared_80.problems())


def test_shared_memory_limits_and_problems():
    assert aot_compile.SHARED_MEMORY_LIMITS == {90: 232448, 80: 166912}
    ok = CompileResult(
        name='x',
        arch=80,
        triton_version='t',
        compiled=True,
        registers=100,
        spill_stores=0,
        spill_loads=0,
        stack_bytes=0,
        local_bytes=0,
        dynamic_shared=166912 - 1024,
        static_shared=1024,
        shared_limit=166912,
    )
    assert ok.problems() == []
    over = CompileResult(**{**ok.to_json(), 'static_shared': 1025})
    assert over.problems() == ['shared memory 166913 B > sm_80 limit 166912 B']
    local = CompileResult(**{**ok.to_json(), 'local_bytes': 8})
    assert 'register spills' in local.problems()[0]
    assert CompileResult.from_json(ok.to_json()) == ok


def test_config_must_name_every_argument_once():
    fn = triton.runtime.jit.JITFunction(spill_canary.fn)  # a compilable kernel even under TRITON_INTERPRET
    spill = dict(x_ptr='*fp32', y_ptr='*fp32')
    aot_compile.check_config(AotConfig('c', fn, spill, dict(ROWS=16, COLS=16), 1, 1, 1))
    with pytest.raises(ValueError, match=r"missing: \['COLS'\]"):
        aot_compile.check_config(AotConfig('c', fn, spill, dict(ROWS=16), 1, 1, 1))
    with pytest.raises(ValueError, match='not arguments'):
        aot_compile.check_config(AotConfig('c', fn, {**spill, 'z_ptr': '*fp32'}, dict(ROWS=16, COLS=16), 1, 1, 1))
    with pytest.raises(ValueError, match='given a type'):
        aot_compile.check_config(AotConfig('c', fn, {**spill, 'ROWS': 'i32'}, dict(COLS=16), 1, 1, 1))
    with pytest.raises(ValueError, match='not tl.constexpr'):
        aot_compile.check_config(AotConfig('c', fn, dict(x_ptr='*fp32'), dict(y_ptr=0, ROWS=16, COLS=16), 1, 1, 1))
    if not hasattr(spill_canary, 'params'):  # the interpreter's wrapper cannot be compiled: say so
        with pytest.raises(TypeError, match='TRITON_INTERPRET'):
            aot_compile.check_config(AotConfig('c', spill_canary, spill, dict(ROWS=16, COLS=16), 1, 1, 1))


# the gate compiles what runs: the same specialisation as Triton's JIT gives the launcher's arguments


class RecordingKernel:
    """Stands in for a kernel: records each launch's arguments, runs nothing."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def jit_specialization(kernel, args):
    """{argument: (type, key)} as Triton's JIT specialises a launch of `kernel` with positional `args`."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    not_specialized = kernel.kwargs['do_not_specialize'] if hasattr(kernel, 'kwargs') else kernel.do_not_specialize
    return {
        name: native_specialize_impl(BaseBackend, value, False, name not in not_specialized, True)
        for name, value in zip(kernel.arg_names, args)
    }


@pytest.mark.parametrize('cell, injected', [('lstm', False), ('gru', True)], ids=['lstm-philox', 'gru-injected'])
def test_gate_specialises_as_the_launcher_does(monkeypatch, cell, injected):
    pytest.importorskip('triton.runtime.jit').__dict__.get('native_specialize_impl') or pytest.skip(
        "this Triton's JIT has no native_specialize_impl to compare with"
    )
    import torch
    from test_kernel_recurrent_sample import make_folded

    from up_fast.kernels import aot
    from up_fast.kernels import recurrent_sample as rs

    batch, hidden, num_tokens = aot.AOT_SHAPES['example']
    plan = rs.plan_launch(batch, hidden, num_tokens, aot.TARGET_SMS[90])
    folded = make_folded(cell, num_tokens, hidden, seed=3, bias_out=True)  # as the configurations
    prefix = torch.randint(0, num_tokens, (batch, 5))
    noise = torch.rand(batch, 7, num_tokens) if injected else None
    configs = {c.name: c for c in aot.aot_configurations(90)}
    stem = f'example-{cell}-fp32-sample{"-injected" if injected else ""}-tf32x3'

    for attr, mode in (('recurrent_sample_kernel', 'persistent'), ('recurrent_phase_kernel', 'phases')):
        recorder = RecordingKernel(getattr(rs, attr))
        monkeypatch.setattr(rs, attr, recorder)
        rs.fused_recurrent_sample(folded, prefix, 7, 1.0, uniform_noise=noise, plan=plan, mode=mode, check=False)
        for args, kwargs in recorder.launches[:3]:
            name = f'persistent-{stem}' if mode == 'persistent' else f'phase{kwargs["PHASE"]}-{stem}'
            cfg = configs[name]
            seen = jit_specialization(recorder.kernel, args)
            assert set(seen) == set(cfg.signature), name
            ones = {a for a, (kind, _) in seen.items() if kind == 'constexpr'}
            aligned = {a for a, (kind, key) in seen.items() if kind != 'constexpr' and key and 'D' in key}
            assert ones == set(cfg.equal_to_1), name
            assert aligned == set(cfg.divisible_by_16), name
            assert {a: kind for a, (kind, _) in seen.items() if a not in ones} == {
                a: kind for a, kind in cfg.signature.items() if a not in ones
            }, name
            assert {a: kwargs[a] for a in cfg.constexprs} == cfg.constexprs, name


def test_compile_report_table():
    path = Path(__file__).parents[1] / 'benchmarks' / 'compile_report.py'
    spec = importlib.util.spec_from_file_location('compile_report', path)
    compile_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compile_report)

    base = dict(
        triton_version='3.6.0',
        compiled=True,
        registers=120,
        spill_stores=0,
        spill_loads=0,
        stack_bytes=0,
        local_bytes=0,
        dynamic_shared=10240,
        static_shared=1024,
        num_warps=4,
        num_stages=2,
        programs=132,
        floor=dict(barriers_per_step=2, bytes_per_program_per_phase=dict(gates=12288, logits=2048)),
    )
    results = [
        CompileResult(name='lstm-fp32-sample-example', arch=90, shared_limit=232448, **base),
        CompileResult(
            name='lstm-fp32-sample-example',
            arch=80,
            shared_limit=166912,
            **{**base, 'spill_stores': 8, 'spill_loads': 8},
        ),
        CompileResult(
            name='gru-bf16-greedy-example', arch=80, shared_limit=166912, **{**base, 'dynamic_shared': 200000}
        ),
        CompileResult(name='broken', arch=90, triton_version='3.6.0', compiled=False, error='CompilationError: boom'),
    ]
    text = compile_report.report(results)
    lines = text.splitlines()
    row = lambda name, arch: next(
        line for line in lines if line.startswith(name) and f'sm_{arch}' in line and 'KiB' not in line
    )
    assert row('lstm-fp32-sample-example', 90).split()[-1] == 'ok'
    assert '8/8' in row('lstm-fp32-sample-example', 80) and 'register spills' in row('lstm-fp32-sample-example', 80)
    assert 'shared > limit' in row('gru-bf16-greedy-example', 80)
    assert 'compile error' in row('broken', 90)
    assert 'bytes_per_program_per_phase.gates=12,288' in text and 'barriers_per_step=2' in text
    assert 'broken sm_90: CompilationError: boom' in text
    assert '3 fail the gate' in text

    latency = dict(
        base,
        floor=dict(
            barriers_per_sampling_step=2,
            l2_round_trips_per_sampling_step=7,
            mma_chain_gates=12,
            mma_chain_logits=12,
            floor_us_per_sampling_step=2.3,
            weights='resident on chip',
            resident_gates=True,
            resident_logits=True,
        ),
    )
    step_loop = {'loop CCTL.IVALL': 4, 'loop BAR.SYNC': 35, 'loop weight loads': 0, 'weight loads before loop': 8}
    text = compile_report.report(
        [
            CompileResult(name='persistent-a', arch=90, shared_limit=232448, sass=step_loop, **latency),
            CompileResult(
                name='persistent-b', arch=90, shared_limit=232448, sass={**step_loop, 'loop weight loads': 3}, **latency
            ),
        ]
    )
    rows = text.split('latency model')[1].splitlines()
    row_a = next(r for r in rows if r.startswith('persistent-a'))
    assert row_a.split()[-1] == 'ok'
    # 35 bar.sync at 20 cycles, 1.75 GHz: 0.4 us on top of the design's 2.3
    assert ' 2.3 ' in row_a and ' 35 ' in row_a and ' 2.7 ' in row_a
    assert '3 weight loads in the step loop' in next(r for r in rows if r.startswith('persistent-b'))
    assert 'assumptions: L2 hit' in text


def test_sass_counts_split_the_step_loop():
    sass = '\n'.join(
        [
            '        /*0010*/                   LDG.E.EL.128 R20, desc[UR6][R16.64] ;',
            '        /*0020*/                   LDG.E.EL.128 R12, desc[UR6][R16.64+0x10] ;',
            '        /*0030*/                   LDG.E.128.STRONG.GPU R12, desc[UR6][R10.64] ;',
            '        /*0040*/               @P1 LDGSTS.E.EL.128 [R3], desc[UR6][R4.64] ;',
            '        /*0048*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;',
            '        /*0050*/                   HMMA.1688.F32.TF32 R0, R4, R8, R0 ;',
            '        /*0058*/                   CCTL.IVALL ;',
            '        /*0060*/                   BRA P0, 0x30 ;',  # the predicate as an operand (ptxas of Triton 3.6)
            '        /*0070*/                   EXIT ;',
            '        /*0080*/                   BRA 0x80;',
        ]
    )
    counts = aot_compile.sass_counts(sass)
    # two evict-last (weight) loads before the loop; in it a '.cg' load of h and one weight re-read
    assert counts['weight loads before loop'] == 2 and counts['loop weight loads'] == 1
    assert (counts['LDG'], counts['loop LDG'], counts['loop LDGSTS']) == (3, 1, 1)
    assert counts['loop BAR.SYNC'] == counts['loop HMMA'] == counts['loop CCTL.IVALL'] == 1


def test_residency_check_flags_what_the_sass_contradicts():
    from benchmarks.compile_report import residency_check

    resident = dict(resident_gates=True, resident_logits=True)
    good = {'loop CCTL.IVALL': 4, 'loop weight loads': 0, 'weight loads before loop': 8}
    assert residency_check(resident, good) == []
    assert residency_check(dict(resident_gates=False, resident_logits=False), {**good, 'loop weight loads': 9}) == []
    assert 'weight loads in the step loop' in residency_check(resident, {**good, 'loop weight loads': 2})[0]
    assert 'no weight load before' in residency_check(resident, {**good, 'weight loads before loop': 0})[0]
    assert 'CCTL' in residency_check(resident, {**good, 'loop CCTL.IVALL': 6})[0]


PERSISTENT_CASES = [c for c in CASES if c.values[2].startswith('persistent')]


@pytest.mark.slow
@pytest.mark.skipif(bool(NO_CONFIGS), reason=NO_CONFIGS or '')
@pytest.mark.parametrize('version, arch, name', PERSISTENT_CASES or [pytest.param(None, None, None, id='none')])
def test_persistent_step_loop_matches_its_design(version, arch, name, request):
    """The SASS of the step loop: one L1 invalidation an acquire read, and where the plan holds the slices
    on chip, no weight load in the loop (and the slices loaded before it)."""
    from benchmarks.compile_report import residency_check

    result = compiled(version, side_option=request.config.getoption('--triton-side'))[(arch, name)]
    assert result.compiled, result.error
    assert residency_check(result.floor, result.sass) == [], f'{name} on sm_{arch}, Triton {result.triton_version}'


# the latency model's target for a sampling step at the example size (batch 32, hidden 256, vocabulary
# 256) on an H200: an estimate from the design and the SASS, not a measurement
EXAMPLE_STEP_TARGET_US = 3.0
EXAMPLE_CASES = [
    c for c in PERSISTENT_CASES if c.values[1] == 90 and '-example-' in c.values[2] and 'tf32x3' in c.values[2]
]


@pytest.mark.slow
@pytest.mark.skipif(bool(NO_CONFIGS), reason=NO_CONFIGS or '')
@pytest.mark.parametrize('version, arch, name', EXAMPLE_CASES or [pytest.param(None, None, None, id='none')])
def test_latency_model_of_the_example_meets_its_target(version, arch, name, request):
    """The design floor plus the step loop's bar.sync (benchmarks/compile_report.py's us/step column)."""
    from up_fast.kernels.perf_model import cta_barrier_us

    result = compiled(version, side_option=request.config.getoption('--triton-side'))[(arch, name)]
    assert result.compiled, result.error
    estimate = result.floor['floor_us_per_sampling_step'] + cta_barrier_us(result.sass['loop BAR.SYNC'])
    assert estimate <= EXAMPLE_STEP_TARGET_US, (
        f'{name}, Triton {result.triton_version}: {estimate:.2f} us a sampling step in the latency model '
        f'({result.floor["floor_us_per_sampling_step"]} design, {result.sass["loop BAR.SYNC"]} bar.sync)'
    )
