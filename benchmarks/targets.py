"""Speed targets: what each path promises to reach, measured in the same run as the reference.

Every target is reported wherever the benchmarks run: in the extra_info of the benchmark that
measures it (`targets`: target, measured, ratio to the target, met), in the summary printed at the
end of `pytest benchmarks --benchmark-only` (met, not met, or not measured and why), in the saved
JSON (`up_fast_targets`) and in `python -m benchmarks.report`. A target fails its benchmark only
where it is marked `asserted`, and only on the device it was set for: the command is
green wherever it runs, and a red run means a promise made for that machine was broken.

Speed claims live here, never in unit tests: they only mean something where they were measured.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass

from benchmarks.harness import DEVICE, MEDIANS, REFERENCE

SPEEDUP = 'speedup over the reference'
STEP_SECONDS = 'seconds per sequential step'
DATA_SHARE = 'data step / training step'
VISIBLE_SHARE = 'data step visible in a training step'  # 1 - transformer-only step / whole step
TRANSFORMER_ONLY = 'training step, transformer only'

COMPARISONS = {'>=': operator.ge, '<=': operator.le}


@dataclass(frozen=True)
class Target:
    name: str
    reason: str  # one line: why this target, and why asserted or reported only
    device: str  # the device type it was set for: 'cpu' or 'cuda'
    workload: str
    size_name: str
    impl: str
    metric: str  # SPEEDUP, STEP_SECONDS, DATA_SHARE or VISIBLE_SHARE
    comparison: str  # '>=' or '<='
    value: float
    asserted: bool  # fail the benchmark when not met, on `device`
    benchmark: str  # the test that measures it
    baseline: str = REFERENCE  # SPEEDUP: the implementation whose median is divided by impl's

    def describe(self, value: float | None = None) -> str:
        value = self.value if value is None else value
        if self.metric == SPEEDUP:
            return f'{value:.2f}x'
        if self.metric == STEP_SECONDS:
            return f'{value * 1e6:.2f} us'
        return f'{value:.1%}'

    @property
    def wanted(self) -> str:
        return f'{self.comparison} {self.describe()}'


TARGETS = (
    Target(
        'generate 3x on a CPU',
        reason='a goal for the CPU path; reported only: it depends on the CPU (benchmarks/results/performance.md)',
        device='cpu',
        workload='generate',
        size_name='example',
        impl='up_fast-torch',
        metric=SPEEDUP,
        comparison='>=',
        value=3.0,
        asserted=False,
        benchmark='test_generate.py::test_generate[example-up_fast-torch]',
    ),
    Target(
        'generate 30x on CUDA',
        reason='data generation nearly free beside training: the fused kernel on an H200',
        device='cuda',
        workload='generate',
        size_name='example',
        impl='up_fast-triton',
        metric=SPEEDUP,
        comparison='>=',
        value=30.0,
        asserted=True,
        benchmark='test_generate.py::test_generate[example-up_fast-triton]',
    ),
    Target(
        '2 us a sequential step on CUDA',
        reason='a decoding step latency-bound at a few L2 round trips on an H200',
        device='cuda',
        workload='generate',
        size_name='example',
        impl='up_fast-triton',
        metric=STEP_SECONDS,
        comparison='<=',
        value=2e-6,
        asserted=True,
        benchmark='test_generate.py::test_generate[example-up_fast-triton]',
    ),
    # the same tokens per call as the reference, so tokens/s over the reference's is the speedup
    Target(
        'tokens/s 50x at batch 4096 on CUDA',
        reason='throughput when the batch fills the GPU, on an H200',
        device='cuda',
        workload='generate',
        size_name='saturating-batch',
        impl='up_fast-triton',
        metric=SPEEDUP,
        comparison='>=',
        value=50.0,
        asserted=True,
        benchmark='test_generate.py::test_generate[saturating-batch-up_fast-triton]',
    ),
    Target(
        'data step <= 3% of a training step on CUDA',
        reason='what a user pays for synthetic data, on an H200',
        device='cuda',
        workload='train step',
        size_name='example',
        impl='up_fast-triton',
        metric=DATA_SHARE,
        comparison='<=',
        value=0.03,
        asserted=True,
        benchmark='test_train_step.py::test_train_step[up_fast-triton]',
    ),
    # the whole training step against the same step on a fixed batch: what the data step adds to it
    Target(
        'data visible <= 3% of a training step on CUDA',
        reason='synthetic data nearly free beside training, measured inside the step, on an H200',
        device='cuda',
        workload='training step',
        size_name='example',
        impl='up_fast-triton',
        metric=VISIBLE_SHARE,
        comparison='<=',
        value=0.03,
        asserted=True,
        benchmark='test_data_share.py::test_data_share[up_fast-triton-training step]',
    ),
    Target(
        'data visible <= 1% of a training step with prefetch on CUDA',
        reason='with prefetch the data is made while the transformer trains: about nothing left to see, on an H200',
        device='cuda',
        workload='training step, prefetch',
        size_name='example',
        impl='up_fast-triton',
        metric=VISIBLE_SHARE,
        comparison='<=',
        value=0.01,
        asserted=True,
        benchmark='test_data_share.py::test_data_share[up_fast-triton-training step, prefetch]',
    ),
    # the paper generator's PyTorch loop against the author's own sampling loop (nn.LSTM once a token)
    Target(
        "paper generate 3x the author's loop on a CPU",
        reason="a goal at the author's sizes; reported only: fp32 products alone take a third of the author's loop",
        device='cpu',
        workload='paper-generate',
        size_name='paper-author',
        impl='up_fast-torch',
        metric=SPEEDUP,
        comparison='>=',
        value=3.0,
        asserted=False,
        benchmark='test_paper_generate.py::test_paper_generate[up_fast-torch]',
        baseline='author-nn.LSTM',
    ),
)

# target name -> what was found: filled by check_targets, read by the summary and the JSON
RESULTS: dict[str, dict] = {}


def sequential_steps(size) -> int:
    # generate's chain: one cell step per prefix token (seed, then condition), then one per sampled
    # token but the last, whose logits come from the step before
    prefix_len = size.seed_length + size.seq_len
    return prefix_len + size.seq_len - 1


def measured_value(target: Target, size) -> tuple[float | None, str]:
    """(the target's metric in this run, '') or (None, why it cannot be computed)."""
    median = MEDIANS.get((target.workload, size.label, target.impl))
    if median is None:
        return None, 'not timed in this run'

    if target.metric == SPEEDUP:
        baseline = MEDIANS.get((target.workload, size.label, target.baseline))
        if baseline is None:
            return None, f'the {target.baseline} did not run before it in this process (run the whole group)'
        return baseline / median, ''

    if target.metric == STEP_SECONDS:
        return median / sequential_steps(size), ''

    if target.metric == DATA_SHARE:
        data_step = MEDIANS.get(('data step', size.label, target.impl))
        if data_step is None:
            return None, f'the data step of {target.impl} at {size.label} did not run before it in this process'
        return data_step / median, ''

    if target.metric == VISIBLE_SHARE:
        transformer = MEDIANS.get((TRANSFORMER_ONLY, size.label, target.impl))
        if transformer is None:
            return None, (
                f'the {TRANSFORMER_ONLY} of {target.impl} at {size.label} did not run before it in this process'
            )
        return 1 - transformer / median, ''

    raise ValueError(f'unknown metric {target.metric!r}')


def result_of(target: Target, value: float | None, why: str = '') -> dict:
    result = dict(
        name=target.name,
        reason=target.reason,
        device=target.device,
        target=target.wanted,
        asserted=target.asserted,
        benchmark=target.benchmark,
    )
    if value is None:
        return dict(result, status='not measured', why=why)
    met = COMPARISONS[target.comparison](value, target.value)
    return dict(
        result,
        status='met' if met else 'not met',
        measured=target.describe(value),
        value=value,
        ratio_to_target=value / target.value,
        met=met,
    )


def check_targets(workload: str, size, impl: str, benchmark=None):
    """Record every target of (workload, size, impl) on this device; fail only an asserted one not met."""
    failures = []
    for target in TARGETS:
        if (target.workload, target.size_name, target.impl, target.device) != (workload, size.name, impl, DEVICE.type):
            continue
        if benchmark is not None and benchmark.disabled:
            RESULTS[target.name] = result_of(target, None, 'timing disabled (--benchmark-disable)')
            continue

        value, why = measured_value(target, size)
        result = RESULTS[target.name] = result_of(target, value, why)
        if benchmark is not None:
            benchmark.extra_info.setdefault('targets', []).append(result)
        if target.asserted and result['status'] == 'not met':
            failures.append(f'{target.name}: measured {result["measured"]}, target {target.wanted}')

    assert not failures, '; '.join(failures)


def summary(skipped: dict[str, str] | None = None, run_nodeids: set[str] | None = None) -> list[dict]:
    """Every target, measured or not, with why not: what the end-of-run summary and the JSON list.

    skipped: test node id -> skip reason, for the tests skipped in this run;
    run_nodeids: the node ids of the tests that ran (passed or failed).
    """
    skipped, run_nodeids = skipped or {}, run_nodeids or set()
    rows = []
    for target in TARGETS:
        if target.name in RESULTS:
            rows.append(RESULTS[target.name])
            continue
        if target.device != DEVICE.type:
            why = f'set for {target.device.upper()}; this run is on {DEVICE.type.upper()}'
        else:
            reason = next((r for nodeid, r in skipped.items() if nodeid.endswith(target.benchmark)), None)
            ran = any(nodeid.endswith(target.benchmark) for nodeid in run_nodeids)
            if reason is not None:
                why = f'its benchmark was skipped: {reason}'
            elif ran:
                why = 'its benchmark failed before measuring'
            else:
                why = 'its benchmark was not run (deselected)'
        rows.append(result_of(target, None, why))
    return rows


# the summary printed at the end of a run


def skipped_groups(skipped: dict[str, str]) -> list[str]:
    """One line per skip reason: how many, the reason, which files."""
    by_reason = defaultdict(list)
    for nodeid, reason in skipped.items():
        by_reason[reason].append(nodeid)
    lines = []
    for reason, nodeids in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        files = sorted({nodeid.split('::')[0].rsplit('/', 1)[-1] for nodeid in nodeids})
        lines.append(f'{len(nodeids):3d} skipped: {reason} ({", ".join(files)})')
    return lines


def target_line(row: dict) -> str:
    status = row['status'].upper() if row['status'] == 'not met' else row['status']
    kind = 'asserted' if row['asserted'] else 'reported only'
    head = f'{status:<12} {row["name"]} ({row["device"]}, {kind})'
    if row['status'] == 'not measured':
        return f'{head}: {row["why"]}'
    return f'{head}: measured {row["measured"]}, target {row["target"]}, measured / target {row["ratio_to_target"]:.2f}'


def summary_lines(rows: list[dict], skipped: dict[str, str]) -> list[str]:
    lines = [target_line(row) for row in rows]
    unmet = [row for row in rows if row['status'] == 'not met' and not row['asserted']]
    if unmet:
        lines.append(
            'targets not met and reported only do not fail the run: they are goals, not promises, on this device'
        )
    lines += skipped_groups(skipped) or ['nothing skipped']
    return lines
