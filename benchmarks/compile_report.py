"""What ptxas allocates for every configuration of the sampling kernel, and the floor its design implies.

    python -m benchmarks.compile_report                      # installed Triton, sm_90 and sm_80
    python -m benchmarks.compile_report --triton 3.6 --arch 90

No GPU needed: each configuration of `aot_configurations()` is compiled with `triton.compile` for
an explicit target (benchmarks/aot_compile.py). One row per configuration and arch: registers per
thread, spill stores/loads (bytes), shared memory (Triton's request + the cubin's static part)
against the arch's limit, programs launched, warps, and what the gate says; then the floor numbers
the kernel module states for each configuration (`AotConfig.floor`).
"""

import argparse
import json
import sys

from benchmarks import aot_compile as aot


def fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.3g}'
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f'{value:,}'
    return str(value)


def flatten(d: dict, prefix: str = '') -> list[tuple[str, object]]:
    items = []
    for key, value in d.items():
        if isinstance(value, dict):
            items += flatten(value, f'{prefix}{key}.')
        else:
            items.append((f'{prefix}{key}', value))
    return items


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


# a persistent kernel inlines the grid barrier at two call sites, each with two acquire reads (the first,
# and the spin loop's): one CCTL.IVALL each, all in the step loop
BARRIER_SITES = 2
CCTL_PER_SITE = 2


def residency_check(floor: dict, sass: dict) -> list[str]:
    """What the SASS contradicts of the design: the acquire count, and for resident slices weight loads in
    the step loop (or none before it). With the gates alone resident the streamed logits load in the loop,
    and the counts cannot tell a gate load from theirs: then only the loads before the loop are checked."""
    problems = []
    cctl = sass.get('loop CCTL.IVALL')
    if cctl != BARRIER_SITES * CCTL_PER_SITE:
        problems.append(f'{cctl} CCTL in the step loop != {BARRIER_SITES * CCTL_PER_SITE}')
    resident = [floor.get('resident_gates'), floor.get('resident_logits')]
    if any(resident) and not sass.get('weight loads before loop'):
        problems.append('no weight load before the step loop')
    if all(resident) and sass.get('loop weight loads'):
        problems.append(f'{sass["loop weight loads"]} weight loads in the step loop')
    return problems


def latency_table(results: list) -> str:
    """The latency model of each persistent configuration (AotConfig.floor) beside the SASS counts of its step
    loop: CTA barriers (added to the estimate), CCTL.IVALL (one an acquire), weight loads (none in the loop
    where the slices are resident), global loads and async copies, MMAs."""
    from up_fast.kernels.perf_model import ASSUMPTIONS, cta_barrier_us

    rows = [
        [
            'configuration',
            'arch',
            'weights',
            'L2 trips',
            'MMA chain',
            'us design',
            'bar.sync',
            'us/step',
            'CCTL',
            'W loads in/before',
            'LDG',
            'LDGSTS',
            'HMMA',
            'check',
        ]
    ]
    for r in results:
        if not r.name.startswith('persistent') or 'l2_round_trips_per_sampling_step' not in r.floor:
            continue
        f, sass = r.floor, r.sass or {}
        bars = sass.get('loop BAR.SYNC')
        problems = residency_check(f, sass) if sass else ['not compiled']
        rows.append(
            [
                r.name,
                f'sm_{r.arch}',
                str(f.get('weights', '-')),
                str(f['l2_round_trips_per_sampling_step']),
                f'{f.get("mma_chain_gates", "-")}/{f.get("mma_chain_logits", "-")}',
                fmt(f['floor_us_per_sampling_step']),
                str(bars if bars is not None else '-'),
                fmt(f['floor_us_per_sampling_step'] + cta_barrier_us(bars)) if bars is not None else '-',
                str(sass.get('loop CCTL.IVALL', '-')),
                f'{sass.get("loop weight loads", "-")}/{sass.get("weight loads before loop", "-")}',
            ]
            + [str(sass.get('loop ' + k, '-')) for k in ('LDG', 'LDGSTS', 'HMMA')]
            + ['ok' if not problems else '; '.join(problems)]
        )
    if len(rows) == 1:
        return ''
    return '\n'.join(
        [
            'latency model of a sampling step (estimates, not measured): the design floor, plus the bar.sync '
            'of the step loop; SASS counts are static, in the step loop',
            table(rows),
            f'assumptions: {ASSUMPTIONS}',
        ]
    )


def report(results: list) -> str:
    header = [
        'configuration',
        'arch',
        'regs',
        'spill st/ld B',
        'shared KiB (limit)',
        'programs',
        'warps',
        'stages',
        'coop',
        'gate',
    ]
    rows = [header]
    for r in results:
        if r.compiled:
            spill = f'{r.spill_stores}/{r.spill_loads}' + (f' +{r.local_bytes} local' if r.local_bytes else '')
            shared = f'{r.shared_bytes / 1024:.1f} ({r.shared_limit // 1024})'
            regs = str(r.registers)
        else:
            spill = shared = regs = '-'
        problems = r.problems()
        gate = (
            'ok'
            if not problems
            else (
                'compile error'
                if not r.compiled
                else '; '.join(p.split(':')[0] if p.startswith('register') else 'shared > limit' for p in problems)
            )
        )
        rows.append(
            [
                r.name,
                f'sm_{r.arch}',
                regs,
                spill,
                shared,
                str(r.programs),
                str(r.num_warps),
                str(r.num_stages),
                'yes' if r.cooperative else 'no',
                gate,
            ]
        )
    out = [table(rows)]

    # the floor: one row per configuration, split by arch only where it differs (grids sized by SM count)
    floors = {}
    for r in results:
        if r.floor:
            key = (r.name, json.dumps(r.floor, sort_keys=True, default=repr))
            floors.setdefault(key, (r.floor, []))[1].append(f'sm_{r.arch}')
    floor_rows = [['configuration', 'arch', 'floor (design numbers from AotConfig.floor)']]
    for (name, _), (floor, archs) in floors.items():
        floor_rows.append([name, ','.join(archs), ', '.join(f'{k}={fmt(v)}' for k, v in flatten(floor))])
    if len(floor_rows) > 1:
        out += ['', table(floor_rows)]

    latency = latency_table(results)
    if latency:
        out += ['', latency]

    errors = [r for r in results if not r.compiled]
    for r in errors:
        out += ['', f'{r.name} sm_{r.arch}: {r.error}']
    failing = sum(1 for r in results if r.problems())
    versions = sorted({r.triton_version for r in results})
    ptxas = sorted({r.ptxas for r in results if r.ptxas})
    out += [
        '',
        f'Triton {", ".join(versions)}, ptxas {", ".join(ptxas)}: {len(results)} (configuration, arch) pairs, '
        f'{failing} fail the gate (compile error, register spill or shared memory over the limit)',
    ]
    return '\n'.join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--triton',
        default='installed',
        help="'installed', or a version run from a side environment made on first use in .cache/ (3.6)",
    )
    parser.add_argument(
        '--arch', type=int, nargs='+', default=list(aot.GATE_ARCHS), choices=sorted(aot.SHARED_MEMORY_LIMITS)
    )
    parser.add_argument('--module', default=aot.DEFAULT_MODULE, help='kernel module with aot_configurations()')
    parser.add_argument('--jobs', type=int, default=None, help='parallel compiles (default: CPU count)')
    parser.add_argument('--json', default=None, help='also write the results here')
    args = parser.parse_args(argv)

    results = aot.compile_all(args.triton, module=args.module, archs=tuple(args.arch), jobs=args.jobs)
    print(report(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([r.to_json() for r in results], f, indent=1, default=repr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
