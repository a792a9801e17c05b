"""Ahead-of-time compiles of the Triton kernels for sm_90 and sm_80, and what ptxas allocated: no GPU needed.

A kernel module lists every configuration its launcher can choose as `AotConfig`s through a
function `aot_configurations(arch)` (or `aot_configurations()`; up_fast/kernels/aot.py has the
contract). `compile_config` compiles one for a GPU target with `triton.compile` and the ptxas that
ships inside Triton, and reads what ptxas allocated: registers per thread, spill stores and loads,
stack, shared memory. The compile gate (tests/test_compile_gate.py) fails on a compile error, a
spill or shared memory over the limit; `python -m benchmarks.compile_report` prints the table.

`compile_all(triton='3.6')` runs the same compiles under another Triton, from a side environment
(benchmarks/triton_side_env.py) put first on PYTHONPATH of a subprocess:

    python -m benchmarks.aot_compile --module up_fast.kernels.aot --arch 90 80 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.triton_side_env import side_environment
from up_fast.kernels.aot import AotConfig

# Largest shared memory one block may use (static + dynamic, opt-in), per compute capability:
# sm_90 227 KiB (H100/H200: 228 KiB per SM, 1 KiB of it reserved by CUDA for each block), sm_80
# 163 KiB (A100: 164 KiB per SM). NVIDIA's Hopper and Ampere tuning guides ("Unified Shared
# Memory/L1/Texture Cache"), docs.nvidia.com/cuda/hopper-tuning-guide, .../ampere-tuning-guide,
# and the CUDA C++ Programming Guide's table of technical specifications per compute capability.
SHARED_MEMORY_LIMITS = {90: 227 * 1024, 80: 163 * 1024}

GATE_ARCHS = (90, 80)
DEFAULT_MODULE = 'up_fast.kernels.aot'
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CompileResult:
    name: str
    arch: int
    triton_version: str
    compiled: bool
    error: str | None = None
    registers: int | None = None  # per thread
    spill_stores: int | None = None  # bytes, ptxas -v
    spill_loads: int | None = None  # bytes, ptxas -v
    stack_bytes: int | None = None  # stack frame, ptxas -v
    local_bytes: int | None = None  # local memory, cuobjdump (spills of non-ABI code land here)
    dynamic_shared: int | None = None  # bytes Triton requests at launch (metadata 'shared')
    static_shared: int | None = None  # bytes the cubin declares, cuobjdump
    shared_limit: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    cooperative: bool = False
    programs: int | None = None
    floor: dict = field(default_factory=dict)
    compile_seconds: float | None = None
    ptxas: str | None = None  # ptxas version line
    sass: dict = field(default_factory=dict)  # SASS opcode counts that the latency model is checked against

    @property
    def shared_bytes(self) -> int | None:
        if self.dynamic_shared is None:
            return None
        return self.dynamic_shared + (self.static_shared or 0)

    @property
    def spills(self) -> int | None:
        if self.spill_stores is None:
            return None
        return self.spill_stores + self.spill_loads + (self.local_bytes or 0)

    def problems(self) -> list[str]:
        """What the compile gate fails on: empty when the configuration is fine."""
        if not self.compiled:
            return [f'compile error: {self.error}']
        found = []
        if self.spills is None:
            found.append('no ptxas report: spills unknown')
        elif self.spills > 0:
            found.append(
                f'register spills: {self.spill_stores} B stores, {self.spill_loads} B loads, '
                f'{self.local_bytes} B local memory ({self.registers} registers per thread)'
            )
        if self.shared_bytes > self.shared_limit:
            found.append(f'shared memory {self.shared_bytes} B > sm_{self.arch} limit {self.shared_limit} B')
        return found

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CompileResult:
        return cls(**d)


# configurations


def configurations(module: str = DEFAULT_MODULE, arch: int = 90) -> list[AotConfig]:
    """The module's `aot_configurations(arch)` (or `aot_configurations()`, the same for every arch).
    Raises AttributeError when the module has none."""
    mod = importlib.import_module(module)
    if not hasattr(mod, 'aot_configurations'):
        raise AttributeError(f'{module} has no aot_configurations()')
    fn = mod.aot_configurations
    configs = fn(arch) if 'arch' in inspect.signature(fn).parameters else fn()
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f'{module}.aot_configurations({arch}) repeats names {duplicates}')
    return list(configs)


def check_config(cfg: AotConfig):
    """Every kernel argument named exactly once, as a typed argument or as a constexpr."""
    fn = cfg.fn
    if not hasattr(fn, 'arg_names') or not hasattr(fn, 'params'):
        raise TypeError(
            f'{cfg.name}: fn must be a @triton.jit kernel, got {type(fn).__name__} '
            '(under TRITON_INTERPRET=1 kernels cannot be compiled: unset it)'
        )
    args = list(fn.arg_names)
    constexpr_args = {p.name for p in fn.params if p.is_constexpr}
    both = set(cfg.signature) & set(cfg.constexprs)
    missing = [a for a in args if a not in cfg.signature and a not in cfg.constexprs]
    unknown = [a for a in list(cfg.signature) + list(cfg.constexprs) if a not in args]
    typed_constexprs = [a for a in cfg.signature if a in constexpr_args]
    untyped = [a for a in cfg.constexprs if a not in constexpr_args]
    unknown += [a for a in (cfg.divisible_by_16 or ()) if a not in cfg.signature]
    unknown += [a for a in cfg.equal_to_1 if not cfg.signature.get(a, '').startswith('i')]
    for what, names in (
        ('named twice', both),
        ('missing', missing),
        ('not arguments of the kernel', unknown),
        ('tl.constexpr arguments given a type in signature', typed_constexprs),
    ):
        if names:
            raise ValueError(f'{cfg.name}: {what}: {sorted(names)}')
    if untyped:
        # a plain argument given a value in constexprs: Triton specialises it, the launcher would not
        raise ValueError(f'{cfg.name}: constexprs holds arguments that are not tl.constexpr: {sorted(untyped)}')


# compiling


def triton_bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', tool)


def make_source(cfg: AotConfig):
    """ASTSource for Triton >= 3.2 (3.6 and 3.9 alike): the signature names every argument, the
    constexprs with the type 'constexpr', and their values go in `constexprs` by name."""
    from triton.compiler import ASTSource

    if 'constexprs' not in inspect.signature(ASTSource.__init__).parameters:
        import triton

        raise RuntimeError(f'Triton {triton.__version__} is too old for this compile gate (needs >= 3.2)')
    args = list(cfg.fn.arg_names)
    # an int the launcher passes as 1 is a constant of the binary that runs (Triton specialises it)
    ones = dict.fromkeys(cfg.equal_to_1, 1)
    signature = {name: 'constexpr' if name in ones else cfg.signature.get(name, 'constexpr') for name in args}
    aligned = cfg.divisible_by_16
    if aligned is None:
        aligned = [name for name, kind in cfg.signature.items() if kind.startswith('*')]
    attrs = {(args.index(name),): [['tt.divisibility', 16]] for name in aligned}
    return ASTSource(fn=cfg.fn, signature=signature, constexprs={**cfg.constexprs, **ones}, attrs=attrs)


PTXAS_USED = re.compile(r'Used (\d+) registers')
PTXAS_FRAME = re.compile(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads')
CUOBJDUMP_FUNCTION = re.compile(r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)')


def parse_ptxas_log(log: str) -> dict:
    used, frame = PTXAS_USED.search(log), PTXAS_FRAME.search(log)
    if not used or not frame:
        return {}
    stack, stores, loads = map(int, frame.groups())
    return dict(registers=int(used.group(1)), stack_bytes=stack, spill_stores=stores, spill_loads=loads)


def resource_usage(cubin: bytes) -> dict:
    """cuobjdump --dump-resource-usage of the one kernel in `cubin`."""
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [triton_bin('cuobjdump'), '--dump-resource-usage', f.name], capture_output=True, text=True, check=True
        ).stdout
    match = CUOBJDUMP_FUNCTION.search(out)
    if not match:
        raise RuntimeError(f'cuobjdump printed no resource usage:\n{out}')
    reg, stack, shared, local = map(int, match.groups())
    return dict(registers=reg, stack_bytes=stack, static_shared=shared, local_bytes=local)


# the opcodes the latency model counts: L1 invalidations (each acquire), global loads (plain, async
# copies), atomics and reductions, fences, tensor-core MMAs, CTA barriers
SASS_OPCODES = ('CCTL.IVALL', 'LDG', 'LDGSTS', 'ATOMG', 'REDG', 'MEMBAR', 'HMMA', 'BAR.SYNC')
# address, opcode and operands of one SASS instruction (an optional predicate before the opcode)
SASS_LINE = re.compile(r'/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);')


def sass_text(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [triton_bin('cuobjdump'), '-sass', f.name], capture_output=True, text=True, check=True
        ).stdout


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction in cuobjdump -sass output."""
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(SASS_LINE.search, sass.splitlines()) if m]


def outermost_loop(instructions) -> tuple[int, int] | None:
    """(first, last address) of the widest backward branch: the persistent kernel's step loop."""
    loops = []
    for address, op, operands in instructions:
        target = re.search(r'0x([0-9a-f]+)$', operands.strip())  # 'BRA 0x2070' or 'BRA P3, 0x2070'
        if op.startswith('BRA') and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    return max(loops, key=lambda span: span[1] - span[0]) if loops else None


def is_opcode(op: str, name: str) -> bool:
    return op == name or op.startswith(name + '.')


def sass_counts(sass: str) -> dict:
    """Static counts of SASS_OPCODES in the kernel, and ('loop ' + name) in its outermost loop. The weight
    loads are the loads hinted evict-last ('.EL'), as only the weight and bias loaders are: 'weight loads
    before loop' and 'loop weight loads' tell a slice held on chip (loaded before the step loop, never in it)."""
    instructions = sass_instructions(sass)
    loop = outermost_loop(instructions)
    inside = lambda address: loop is not None and loop[0] <= address <= loop[1]
    counts = {}
    for prefix, keep in (('', lambda a: True), ('loop ', inside)):
        for name in SASS_OPCODES:
            counts[prefix + name] = sum(1 for a, op, _ in instructions if keep(a) and is_opcode(op, name))
    weight_loads = [a for a, op, _ in instructions if op.startswith(('LDG.', 'LDGSTS.')) and '.EL' in op]
    counts['loop weight loads'] = sum(1 for a in weight_loads if inside(a))
    counts['weight loads before loop'] = sum(1 for a in weight_loads if loop is not None and a < loop[0])
    return counts


def ptxas_version() -> str:
    out = subprocess.run([triton_bin('ptxas'), '--version'], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else 'unknown'


def compile_config(cfg: AotConfig, arch: int) -> CompileResult:
    """Compile `cfg` for sm_`arch` (no GPU needed) and read registers, spills and shared memory.

    Always compiles (Triton's cache would skip ptxas and its -v report, where the spill figures
    come from); errors of the compiler are returned in the result, not raised.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    if arch not in SHARED_MEMORY_LIMITS:
        raise ValueError(f'arch must be one of {sorted(SHARED_MEMORY_LIMITS)}, got {arch!r}')
    check_config(cfg)
    result = CompileResult(
        name=cfg.name,
        arch=arch,
        triton_version=triton.__version__,
        compiled=False,
        shared_limit=SHARED_MEMORY_LIMITS[arch],
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        cooperative=cfg.cooperative,
        programs=cfg.programs,
        floor=dict(cfg.floor),
        ptxas=ptxas_version(),
    )
    options = dict(cfg.options, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.cooperative:
        options['launch_cooperative_grid'] = True

    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    log = io.StringIO()
    start = time.perf_counter()
    try:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(make_source(cfg), target=GPUTarget('cuda', arch, 32), options=options)
    except Exception as e:  # a compile error is a finding, not a crash of the gate
        result.error = f'{type(e).__name__}: {e}'[:4000]
        return result
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    result.compile_seconds = round(time.perf_counter() - start, 2)

    usage = resource_usage(kernel.asm['cubin'])
    ptxas = parse_ptxas_log(log.getvalue())
    result.compiled = True
    result.registers = ptxas.get('registers', usage['registers'])
    result.stack_bytes = ptxas.get('stack_bytes', usage['stack_bytes'])
    result.spill_stores = ptxas.get('spill_stores')
    result.spill_loads = ptxas.get('spill_loads')
    result.local_bytes = usage['local_bytes']
    result.static_shared = usage['static_shared']
    result.dynamic_shared = int(kernel.metadata.shared)
    result.sass = sass_counts(sass_text(kernel.asm['cubin']))
    return result


def compile_key(cfg: AotConfig, arch: int) -> tuple:
    """Configurations that differ only in shape compile to the same binary: compile those once."""
    return (
        id(cfg.fn),
        arch,
        tuple(sorted(cfg.signature.items())),
        cfg.divisible_by_16,
        cfg.equal_to_1,
        tuple(sorted((k, repr(v)) for k, v in cfg.constexprs.items())),
        cfg.num_warps,
        cfg.num_stages,
        cfg.cooperative,
        tuple(sorted((k, repr(v)) for k, v in cfg.options.items())),
    )


_worker_jobs: list = []


def _compile_job(index: int) -> CompileResult:
    cfg, arch = _worker_jobs[index]
    return compile_config(cfg, arch)


def compile_module(module: str = DEFAULT_MODULE, archs=GATE_ARCHS, jobs: int | None = None) -> list[CompileResult]:
    """Compile every configuration of `module` for every arch, in this process (and forked
    workers): distinct binaries only, the results copied to every configuration that shares one."""
    import multiprocessing
    from dataclasses import replace

    todo = [(cfg, arch) for arch in archs for cfg in configurations(module, arch)]
    for cfg, _ in todo:
        check_config(cfg)
    unique = {}
    for cfg, arch in todo:
        unique.setdefault(compile_key(cfg, arch), (cfg, arch))
    keys = list(unique)
    global _worker_jobs
    _worker_jobs = [unique[k] for k in keys]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(keys)))
    if jobs == 1:
        compiled = [_compile_job(i) for i in range(len(keys))]
    else:
        # fork: the workers inherit the imported kernels (JITFunctions do not pickle)
        with multiprocessing.get_context('fork').Pool(jobs) as pool:
            compiled = pool.map(_compile_job, range(len(keys)), chunksize=1)
    by_key = dict(zip(keys, compiled))
    return [
        replace(by_key[compile_key(cfg, arch)], name=cfg.name, programs=cfg.programs, floor=dict(cfg.floor))
        for cfg, arch in todo
    ]


# running it under another Triton


def compile_all(
    triton: str = 'installed',
    module: str = DEFAULT_MODULE,
    archs=GATE_ARCHS,
    jobs: int | None = None,
    timeout: float = 1800,
    pythonpath=(),
) -> list[CompileResult]:
    """`compile_module` in a fresh subprocess: under the installed Triton (triton='installed') or
    a side environment's (triton='3.6' or '3.6.0'). A subprocess because the caller may run under
    TRITON_INTERPRET=1 (the test suite without a GPU), where kernels cannot be compiled, and a
    second Triton cannot be imported next to the first. `pythonpath`: more folders to import
    `module` from."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    paths = [str(p) for p in pythonpath] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    if triton != 'installed':
        version = triton if triton.count('.') == 2 else f'{triton}.0'
        paths.insert(0, str(side_environment(version)))
    paths.append(str(ROOT))  # this module, run as benchmarks.aot_compile
    env['PYTHONPATH'] = os.pathsep.join(paths)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'results.json')
        cmd = [
            sys.executable,
            '-m',
            'benchmarks.aot_compile',
            '--module',
            module,
            '--json',
            out,
            '--arch',
            *map(str, archs),
        ] + (['--jobs', str(jobs)] if jobs else [])
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
        with open(out) as f:
            payload = json.load(f)
    if triton != 'installed' and not payload['triton_version'].startswith(triton):
        raise RuntimeError(f'asked for Triton {triton}, the subprocess imported {payload["triton_version"]}')
    return [CompileResult.from_json(r) for r in payload['results']]


def main(argv=None):
    parser = argparse.ArgumentParser(description='Compile every AOT configuration of a kernel module (no GPU needed).')
    parser.add_argument('--module', default=DEFAULT_MODULE)
    parser.add_argument('--arch', type=int, nargs='+', default=list(GATE_ARCHS), choices=sorted(SHARED_MEMORY_LIMITS))
    parser.add_argument('--jobs', type=int, default=None, help='parallel compiles (default: CPU count)')
    parser.add_argument('--json', required=True, help='write the results here')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        parser.error('TRITON_INTERPRET=1 is set: kernels cannot be compiled under the interpreter')
    import triton

    results = compile_module(args.module, tuple(args.arch), args.jobs)
    with open(args.json, 'w') as f:
        json.dump(dict(triton_version=triton.__version__, results=[r.to_json() for r in results]), f, default=repr)


if __name__ == '__main__':
    main()
