"""Compile every `aot_configurations()` entry ahead of time and print registers, spills, shared memory.

    python -m up_fast.kernels.compile_check [NAME_REGEX] [--arch 90|80]

No GPU needed: `triton.compile` with an explicit GPUTarget and the ptxas/cuobjdump Triton ships.
Run without TRITON_INTERPRET. A stopgap until benchmarks/compile_report.py (the compile gate) is on
main; it passes recurrent_sample.COMPILE_OPTIONS (maxnreg) as every launch does. Spills are read
from the SASS (LDL/STL) and the stack frame (`cuobjdump -res-usage`).
"""

import argparse
import os
import re
import subprocess
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget

from up_fast.kernels import recurrent_sample as rs

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')


def compile_configuration(config, arch: int):
    constexprs = {name: 'constexpr' for name in config.constexprs}
    source = triton.compiler.ASTSource(fn=config.fn, signature={**config.signature, **constexprs}, constexprs=config.constexprs)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages, **rs.COMPILE_OPTIONS)
    return triton.compile(source, target=GPUTarget('cuda', arch, 32), options=options)


def resource_usage(cubin: bytes) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'kernel.cubin')
        with open(path, 'wb') as f:
            f.write(cubin)
        usage = subprocess.run([CUOBJDUMP, '-res-usage', path], capture_output=True, text=True).stdout
        sass = subprocess.run([CUOBJDUMP, '-sass', path], capture_output=True, text=True).stdout
    number = lambda key: int(re.search(rf'{key}:(\d+)', usage).group(1))
    return dict(registers=number('REG'), stack=number('STACK'), spill_instructions=sass.count('LDL') + sass.count('STL'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('pattern', nargs='?', default='')
    parser.add_argument('--arch', type=int, default=90, choices=(80, 90))
    args = parser.parse_args()
    configs = rs.aot_configurations() if args.arch == 90 else rs.aot_configurations(sms=108, capability=80)
    failures = 0
    for config in configs:
        if not re.search(args.pattern, config.name):
            continue
        start = time.time()
        kernel = compile_configuration(config, args.arch)
        usage = resource_usage(kernel.asm['cubin'])
        shared = kernel.metadata.shared
        bad = usage['stack'] or usage['spill_instructions'] or shared > 227 * 1024
        failures += bool(bad)
        print(f'{"SPILL" if bad else "ok   "} {config.name:56s} regs {usage["registers"]:3d}  stack {usage["stack"]:4d}  '
              f'shared {shared:6d}  warps {config.num_warps}  programs {config.programs:4d}  '
              f'floor {config.floor["floor_us_per_sampling_step"]} us/step  ({time.time() - start:.0f} s)', flush=True)
    raise SystemExit(1 if failures else 0)


if __name__ == '__main__':
    main()
