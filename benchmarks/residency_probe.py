"""Can a program's weight slice stay in registers across the step loop? Compiles a probe for sm_90 and says.

    python -m benchmarks.residency_probe                          # the slices of the launcher's shapes
    python -m benchmarks.residency_probe --k 1024 --n 32

The probe is the layout the persistent kernel would need: W^T (K, N) split along K over the warps,
(WARPS, K / WARPS, N), loaded once before a loop of steps; each step reads h (BLOCK_B, K) from L2
as (WARPS, BLOCK_B, K / WARPS), multiplies with a batched `tl.dot` (each warp its own K chunk: no
warp holds all of K, as a plain `tl.dot` operand would) and sums the warps' partial products. It
prints ptxas's registers and spills and the global loads before and inside the step loop of the
SASS: a slice is resident when nothing spills and the loop loads only h. No GPU needed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import tempfile

import triton
import triton.language as tl

from benchmarks.aot_compile import parse_ptxas_log, triton_bin

# (BLOCK_B, K, N) of the launcher's plans on 132 SMs: a program's W_hh^T columns (4 gates x BLOCK_U)
# and its W_out^T slice, for the shapes of the compile gate
SLICES = {
    'example gates or logits (hidden 256, 16 columns)': (32, 256, 16),
    'example gates and logits together (hidden 256, 32 columns)': (32, 256, 32),
    'hidden 1024 gates (32 columns)': (32, 1024, 32),
    'hidden 1024 logits (16 columns)': (32, 1024, 16),
    'vocab 32768 logits tile (64 columns, of 4)': (32, 256, 64),
}


@triton.jit
def resident_probe(
    h_ptr,
    w_ptr,
    out_ptr,
    steps,
    BLOCK_B: tl.constexpr,
    K: tl.constexpr,
    N: tl.constexpr,
    SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    CHUNK: tl.constexpr = K // SPLITS
    split = tl.arange(0, SPLITS)
    k = tl.arange(0, CHUNK)
    n = tl.arange(0, N)
    rows = tl.arange(0, BLOCK_B)
    # (SPLITS, CHUNK, N): loaded once
    w = tl.load(w_ptr + (split[:, None, None] * CHUNK + k[None, :, None]) * N + n[None, None, :])
    for step in range(steps):
        # (SPLITS, BLOCK_B, CHUNK)
        h = tl.load(
            h_ptr + step * BLOCK_B * K + rows[None, :, None] * K + split[:, None, None] * CHUNK + k[None, None, :],
            cache_modifier='.cg',
        )
        acc = tl.sum(tl.dot(h, w, input_precision=PRECISION), axis=0)  # (BLOCK_B, N)
        tl.store(out_ptr + step * BLOCK_B * N + rows[:, None] * N + n[None, :], acc)


SASS_LINE = re.compile(r'/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);')


def loop_loads(sass: str) -> tuple[int, int, int]:
    """Global loads (before the step loop, of h inside it, of anything else inside it): the loop is the
    span of the last backward branch; h is read '.cg' (LDG...STRONG.GPU), the weights plainly."""
    lines = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(SASS_LINE.search, sass.splitlines()) if m]
    start = end = None
    for address, op, operands in lines:
        target = re.match(r'0x([0-9a-f]+)', operands.strip())
        if op.startswith('BRA') and target and int(target.group(1), 16) < address:
            start, end = int(target.group(1), 16), address
    loads = [(address, 'STRONG.GPU' in op) for address, op, _ in lines if op.startswith('LDG')]
    if start is None:
        return len(loads), 0, 0
    inside = [(a, cg) for a, cg in loads if start <= a <= end]
    return sum(a < start for a, _ in loads), sum(cg for _, cg in inside), sum(not cg for _, cg in inside)


def probe(block_b: int, k: int, n: int, warps: int = 8, precision: str = 'tf32x3') -> dict:
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=resident_probe,
        signature=dict(
            h_ptr='*fp32',
            w_ptr='*fp32',
            out_ptr='*fp32',
            steps='i32',
            BLOCK_B='constexpr',
            K='constexpr',
            N='constexpr',
            SPLITS='constexpr',
            PRECISION='constexpr',
        ),
        constexprs=dict(BLOCK_B=block_b, K=k, N=n, SPLITS=warps, PRECISION=precision),
        attrs={(i,): [['tt.divisibility', 16]] for i in range(3)},
    )
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    log = io.StringIO()
    try:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(
                source, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=warps, num_stages=1, maxnreg=255)
            )
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(kernel.asm['cubin'])
        f.flush()
        sass = subprocess.run(
            [triton_bin('cuobjdump'), '-sass', f.name], capture_output=True, text=True, check=True
        ).stdout
    before, h_loads, other_loads = loop_loads(sass)
    ptxas = parse_ptxas_log(log.getvalue())
    spills = ptxas.get('spill_stores', 0) + ptxas.get('spill_loads', 0)
    return dict(
        registers=ptxas.get('registers'),
        spill_bytes=spills,
        loads_before_loop=before,
        h_loads_in_loop=h_loads,
        other_loads_in_loop=other_loads,
        resident=spills == 0 and other_loads == 0,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--block-b', type=int, default=None)
    parser.add_argument('--k', type=int, default=None)
    parser.add_argument('--n', type=int, default=None)
    parser.add_argument('--precision', default='tf32x3', choices=('tf32x3', 'ieee'))
    args = parser.parse_args(argv)
    shapes = SLICES if args.k is None else {'asked': (args.block_b or 32, args.k, args.n or 16)}
    print(
        f'Triton {triton.__version__}, sm_90, 8 warps, {args.precision}: W^T split along K over the warps, '
        'loaded once before the step loop'
    )
    for name, (block_b, k, n) in shapes.items():
        r = probe(block_b, k, n, precision=args.precision)
        print(
            f'{name}: BLOCK_B {block_b}, K {k}, N {n}: {r["registers"]} registers, {r["spill_bytes"]} B spilled, '
            f'global loads: {r["loads_before_loop"]} before the loop, {r["h_loads_in_loop"]} of h and '
            f'{r["other_loads_in_loop"]} others in it -> ' + ('resident' if r['resident'] else 'does not fit: stream')
        )


if __name__ == '__main__':
    main()
