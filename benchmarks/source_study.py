"""Which synthetic data source buys the most: zero-shot bits per byte on real text, and held-out bits
per byte after fine-tuning on it, for each data source up_fast has, over several seeds.

    OMP_NUM_THREADS=1 nice python -m benchmarks.source_study            # the study, then its report
    python -m benchmarks.source_study --report                          # the report again from the raw results

For every source and seed: pre-train the main job's model (`up-fast pretrain`'s size and optimiser,
fewer steps: --pretrain-steps) from that seed, score it zero-shot on the text `up-fast eval` uses,
then fine-tune it on the first 80% of that text and score the last 20% (up_fast.finetune, the
batches drawn from the same seed). The scratch start is the model each pre-training run began from,
fine-tuned on the same batches: it is shared by all sources of a seed. Every run is appended to
benchmarks/results/source_study.jsonl as it ends, so an interrupted study continues where it stopped;
the report (source_study.md, .csv, .png) is written from that file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper
from up_fast.byte_model import bits_per_byte, build_model, lr_lambda
from up_fast.cli.baselines import MARKOV_ORDERS, markov_bits_per_byte
from up_fast.finetune import (
    FINETUNE_DEFAULTS,
    batch_starts,
    eval_steps,
    finetune_curves,
    fresh_model,
    split_text,
    steps_to_reach,
)
from up_fast.helpers import default
from up_fast.markov_source import MarkovChainGenerator

RESULTS = Path(__file__).parent / 'results'  # --out replaces it

# the main job's model and optimiser (up_fast/cli DEFAULT_CONFIG)
MODEL = dict(num_tokens=256, dim=128, depth=2, heads=4, seq_len=128)
BATCH_SIZE, LR, WARMUP, WEIGHT_DECAY, GRAD_CLIP = 16, 1e-3, 50, 0.01, 1.0

# name -> settings. xt: reset_every (re-draw the machine every n steps, 0 never), temperature (the
# generator's sampling temperature, its default 1e-4 is near-greedy), buffer (rows, as a multiple of
# the batch), num_reset (rows reset to fresh noise each step); the xt defaults are the main job's.
XT = dict(source='xt', reset_every=1, temperature=1e-4, buffer=20, num_reset=20)
VARIANTS = {
    'paper': dict(source='paper'),
    'xt, re-drawn every step': XT,
    'xt, re-drawn every 50 steps': {**XT, 'reset_every': 50},
    'xt, never re-drawn': {**XT, 'reset_every': 0},
    'xt, temperature 1': {**XT, 'temperature': 1.0},
    'xt, buffer 5 x batch': {**XT, 'buffer': 5},
    'xt, 100 resets per step': {**XT, 'num_reset': 100},
    'markov chains, one per row': {**XT, 'source': 'markov'},  # up_fast.markov_source, in the xt buffer algorithm
}
SCRATCH = 'none (from scratch)'


class TemperatureGenerator(SyntheticDataGenerator):
    """The x-transformers generator sampling at another temperature: the wrapper calls
    generate_unchecked without one, so the generator's default decides."""

    def __init__(self, *args, temperature: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def generate_unchecked(self, length, seed, condition, temperature=None, **kwargs):
        return super().generate_unchecked(length, seed, condition, default(temperature, self.temperature), **kwargs)


def build_wrapper(model, settings: dict, seed: int) -> UniversalPretrainWrapper:
    if settings['source'] == 'paper':
        return UniversalPretrainWrapper.paper(model, batch_size=BATCH_SIZE, seq_len=MODEL['seq_len'], rng_seed=seed)
    buffer_size = BATCH_SIZE * settings['buffer']
    if settings['source'] == 'markov':
        generator = MarkovChainGenerator(MODEL['num_tokens'], MODEL['seq_len'])
    else:
        generator = TemperatureGenerator(
            dim=MODEL['dim'],
            num_tokens=MODEL['num_tokens'],
            max_seq_len=MODEL['seq_len'],
            temperature=settings['temperature'],
        )
    return UniversalPretrainWrapper(
        model,
        data_generator=generator,
        buffer_size=buffer_size,
        num_reset=min(settings['num_reset'], buffer_size - BATCH_SIZE) // 2 * 2,  # as the command line caps it
        batch_size=BATCH_SIZE,
        seq_len=MODEL['seq_len'],
        seed_length=8,
        reset_turing_machine_every=settings['reset_every'],
        rng_seed=seed,
    )


def pretrain(settings: dict, seed: int, steps: int) -> tuple[torch.nn.Module, float, float]:
    """(model, final smoothed synthetic loss, seconds): `up-fast pretrain`'s loop, without its extras."""
    torch.manual_seed(seed)
    model = build_model(MODEL)  # first after the seed, as the command line builds it: the scratch start
    wrapper = build_wrapper(model, settings, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(WARMUP, max(1, steps // 10)), steps))
    smoothed, start = None, time.perf_counter()
    for _ in range(steps):
        loss = wrapper()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        smoothed = loss.item() if smoothed is None else smoothed + 0.05 * (loss.item() - smoothed)
    return model, smoothed, time.perf_counter() - start


def text() -> tuple[Path, bytes]:
    from up_fast.cli.common import default_text_file  # the file `up-fast eval` uses by default

    path = default_text_file()
    return path, path.read_bytes()[: 64 * 1024]


def run_study(args, log):
    path, data = text()
    train, _, held = split_text(data, FINETUNE_DEFAULTS['held_out'], MODEL['seq_len'])
    raw = RESULTS / 'source_study.jsonl'
    done = {(r['variant'], r['seed']) for r in read_raw(raw)}
    device = torch.device('cpu')
    settings = dict(eval_every=args.eval_every)
    log(
        f'text {path}: {len(data):,} bytes, {len(train):,} to fine-tune on, {len(held):,} held out; '
        f'{args.pretrain_steps} pre-training steps, {args.finetune_steps} fine-tuning steps, seeds {args.seeds}'
    )

    for seed in range(args.seeds):  # seed by seed: a study cut short still has every source at the first seeds
        starts = batch_starts(len(train), MODEL['seq_len'], BATCH_SIZE, args.finetune_steps, seed)  # (steps, batch)
        for variant in [SCRATCH, *default(args.variants, VARIANTS)]:
            if (variant, seed) in done or not claim(variant, seed):
                continue
            begin = time.perf_counter()
            if variant == SCRATCH:
                model, loss, seconds = fresh_model(MODEL, seed), None, 0.0
            else:
                model, loss, seconds = pretrain(VARIANTS[variant], seed, args.pretrain_steps)
            zero_shot = bits_per_byte(model, data, MODEL['seq_len'], 32, device)
            curve = finetune_curves(
                model, train, {'held_out': held}, starts, seq_len=MODEL['seq_len'], device=device, **settings
            )['held_out']
            record = dict(
                variant=variant,
                seed=seed,
                pretrain_steps=0 if variant == SCRATCH else args.pretrain_steps,
                finetune_steps=args.finetune_steps,
                synthetic_loss=loss,
                pretrain_seconds=seconds,
                zero_shot=zero_shot,
                steps=eval_steps(args.finetune_steps, args.eval_every),
                curve=curve,
            )
            with open(raw, 'a') as file:
                file.write(json.dumps(record) + '\n')
            log(
                f'seed {seed} {variant}: zero-shot {zero_shot:.3f}, fine-tuned {curve[-1]:.3f} '
                f'(pre-training {seconds:.0f}s, all {time.perf_counter() - begin:.0f}s)'
            )


def claim(variant: str, seed: int) -> bool:
    """Whether this process takes the run: several processes may share a study (python -m
    benchmarks.source_study in two shells runs it on two cores), each run done once."""
    raw = RESULTS / 'source_study.jsonl'
    return claim_run(raw, f'{variant}_{seed}', lambda r: r['variant'] == variant and r['seed'] == seed)


def claim_run(raw: Path, key: str, finished) -> bool:
    """Whether this process takes the run named `key` of the study whose finished runs `raw` (JSON
    lines) holds: not when a record there is `finished(record)`, nor while another live process
    holds its claim (a file under the temporary folder; a dead holder's claim is taken over)."""
    if any(finished(r) for r in read_raw(raw)):
        return False
    claims = Path(tempfile.gettempdir()) / f'study_claims_{hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]}'
    claims.mkdir(exist_ok=True)
    path = claims / hashlib.sha1(key.encode()).hexdigest()[:16]
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            holder = int(path.read_text() or 0)
            if holder == os.getpid():
                return True  # this process's own claim, from a run of it that stopped
            os.kill(holder, 0)  # its process still runs it
            return False
        except (ProcessLookupError, ValueError):
            path.write_text(str(os.getpid()))  # an interrupted run: take it over
            return True
    os.write(descriptor, str(os.getpid()).encode())
    os.close(descriptor)
    return True


def read_raw(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spread(values: list[float]) -> str:
    if not values:
        return '-'
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f'{mean:.3f}'
    return f'{mean:.3f} ({min(values):.3f} to {max(values):.3f})'


def summarise(records: list[dict]) -> list[dict]:
    """One row per source: the figures over its seeds, against the scratch start of the same seed."""
    scratch = {r['seed']: r for r in records if r['variant'] == SCRATCH}
    rows = []
    for variant in [SCRATCH, *VARIANTS]:
        runs = sorted((r for r in records if r['variant'] == variant and r['seed'] in scratch), key=lambda r: r['seed'])
        if not runs:
            continue
        differences = [scratch[r['seed']]['curve'][-1] - r['curve'][-1] for r in runs]
        early = [
            scratch[r['seed']]['curve'][1] - r['curve'][1] for r in runs
        ]  # at the first evaluation after the start
        # the first evaluation step at which this start is at or below its seed's scratch start's final figure
        reach = [steps_to_reach(r['steps'], r['curve'], scratch[r['seed']]['curve'][-1]) for r in runs]
        rows.append(
            dict(
                variant=variant,
                seeds=len(runs),
                zero_shot=[r['zero_shot'] for r in runs],
                finetuned=[r['curve'][-1] for r in runs],
                difference=differences,
                early=early,
                reach=reach,
                seconds_per_step=[r['pretrain_seconds'] / r['pretrain_steps'] for r in runs if r['pretrain_steps']],
                synthetic_loss=[r['synthetic_loss'] for r in runs if r['synthetic_loss'] is not None],
                steps=runs[0]['steps'],
                curves=[r['curve'] for r in runs],
                runs=runs,
            )
        )
    return rows


def cpu_name() -> str:
    try:
        names = [
            line.split(':', 1)[1].strip()
            for line in Path('/proc/cpuinfo').read_text().splitlines()
            if line.startswith('model name')
        ]
    except OSError:
        names = []
    return f'{names[0]} ({len(names)} cores)' if names else platform.machine()


def report(log):
    records = read_raw(RESULTS / 'source_study.jsonl')
    if not records:
        raise SystemExit('no results yet: run python -m benchmarks.source_study first')
    path, data = text()
    held = split_text(data, FINETUNE_DEFAULTS['held_out'], MODEL['seq_len']).held_out
    markov_all = markov_bits_per_byte(data, MODEL['seq_len'])
    markov_held = markov_bits_per_byte(held, MODEL['seq_len'])
    rows = summarise(records)
    pretrain_steps = max(r['pretrain_steps'] for r in records)
    finetune_steps = records[0]['finetune_steps']
    early_step = records[0]['steps'][1]

    with open(RESULTS / 'source_study.csv', 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                'source',
                'seed',
                'pretrain_steps',
                'synthetic_loss_nats',
                'zero_shot_bits_per_byte',
                f'scratch_minus_this_step_{early_step}',
                f'finetuned_bits_per_byte_step_{finetune_steps}',
                f'scratch_minus_this_step_{finetune_steps}',
                'steps_to_scratch_final',
            ]
        )
        for row in rows:
            for i in range(row['seeds']):
                run = row['runs'][i]
                loss = run['synthetic_loss']
                writer.writerow(
                    [
                        row['variant'],
                        run['seed'],
                        run['pretrain_steps'],
                        '' if loss is None else f'{loss:.4f}',
                        f'{row["zero_shot"][i]:.4f}',
                        f'{row["early"][i]:.4f}',
                        f'{row["finetuned"][i]:.4f}',
                        f'{row["difference"][i]:.4f}',
                        '' if row['reach'][i] is None else row['reach'][i],
                    ]
                )

    def reach_text(values):
        got = [v for v in values if v is not None]
        missed = len(values) - len(got)
        text = f'{statistics.fmean(got):.0f}' if got else '-'
        return text + (f' ({missed} of {len(values)} never)' if missed else '')

    lines = [
        '# Data-source study: what each synthetic source buys, zero-shot and after fine-tuning',
        '',
        f'Command: `OMP_NUM_THREADS=1 nice python -m benchmarks.source_study --pretrain-steps {pretrain_steps} '
        f'--finetune-steps {finetune_steps} --seeds {max(r["seed"] for r in records) + 1}` '
        f'on {cpu_name()}, CPU, one thread each (torch {torch.__version__}).',
        '',
        f"Model: the main job's (dim {MODEL['dim']}, depth {MODEL['depth']}, heads {MODEL['heads']}, seq_len "
        f'{MODEL["seq_len"]}, batch {BATCH_SIZE}, AdamW lr {LR}, warm-up and cosine), pre-trained for '
        f'{pretrain_steps} steps (the main job: 1200). Text: {path.name} ({len(data):,} bytes): zero-shot on all of '
        f'it; fine-tuned {finetune_steps} steps on the first 80%, scored on the last 20% ({len(held):,} bytes). '
        'Figures: mean over seeds (min to max). Bits per byte, lower is better.',
        '',
        f'| source | seeds | zero-shot | scratch minus this at step {early_step} | fine-tuned, step {finetune_steps} '
        f"| scratch minus this at step {finetune_steps} | steps to scratch's final level | pre-training wall s/step "
        '(shared machine) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        per_step = spread(row['seconds_per_step']) if row['seconds_per_step'] else '-'
        scratch_row = row['variant'] == SCRATCH
        lines.append(
            f'| {row["variant"]} | {row["seeds"]} | {spread(row["zero_shot"])} | '
            f'{"0" if scratch_row else spread(row["early"])} | {spread(row["finetuned"])} | '
            f'{"0" if scratch_row else spread(row["difference"])} | {reach_text(row["reach"])} | {per_step} |'
        )
    lines += [
        '',
        'In-context baselines (nothing learned beforehand; up_fast/cli/baselines.py): '
        + ', '.join(f'order {k} {markov_all[k]:.3f}' for k in MARKOV_ORDERS)
        + f' on all of {path.name}; '
        + ', '.join(f'order {k} {markov_held[k]:.3f}' for k in MARKOV_ORDERS)
        + ' on the held-out part; uniform guessing 8.000.',
        '',
    ]
    (RESULTS / 'source_study.md').write_text('\n'.join(lines))
    plot(rows, markov_all, markov_held, pretrain_steps)
    log('\n'.join(lines))


def plot(rows: list[dict], markov_all: dict, markov_held: dict, pretrain_steps: int):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, (zero_axes, tune_axes) = plt.subplots(1, 2, figsize=(13, 5.5))
    for index, row in enumerate(rows):
        color = 'black' if row['variant'] == SCRATCH else f'C{index}'
        zero_axes.scatter([index] * row['seeds'], row['zero_shot'], color=color, s=18)
        zero_axes.plot([index - 0.3, index + 0.3], [statistics.fmean(row['zero_shot'])] * 2, color=color)
        curves = torch.tensor(row['curves'])  # (seeds, evaluations)
        tune_axes.plot(row['steps'], curves.mean(0), color=color, label=row['variant'])
        tune_axes.fill_between(row['steps'], curves.min(0).values, curves.max(0).values, color=color, alpha=0.15)
    best = min(markov_all, key=markov_all.get)
    zero_axes.axhline(
        markov_all[best],
        linestyle='--',
        color='grey',
        label=f'in-context Markov, order {best} ({markov_all[best]:.2f})',
    )
    zero_axes.set_xticks(range(len(rows)), [row['variant'] for row in rows], rotation=30, ha='right', fontsize=8)
    zero_axes.set_ylabel('zero-shot bits per byte (lower is better)')
    zero_axes.set_title(f'zero-shot, after {pretrain_steps} pre-training steps (dots: seeds)', fontsize=9)
    zero_axes.legend(fontsize=8)
    best = min(markov_held, key=markov_held.get)
    tune_axes.axhline(
        markov_held[best],
        linestyle='--',
        color='grey',
        label=f'in-context Markov, order {best} ({markov_held[best]:.2f})',
    )
    tune_axes.set_xlabel('fine-tuning step')
    tune_axes.set_ylabel('held-out bits per byte')
    tune_axes.set_title('fine-tuning on real text (mean, band: min to max over seeds)', fontsize=9)
    tune_axes.set_ylim(top=min(9.0, tune_axes.get_ylim()[1]))
    tune_axes.legend(fontsize=7)
    for axes in (zero_axes, tune_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(RESULTS / 'source_study.png', dpi=110)
    plt.close(figure)


def main():
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pretrain-steps', type=int, default=150)
    parser.add_argument('--finetune-steps', type=int, default=60)
    parser.add_argument('--eval-every', type=int, default=10)
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument(
        '--variants', nargs='+', choices=list(VARIANTS), default=None, help='only these sources (default: all)'
    )
    parser.add_argument('--report', action='store_true', help='only write the report from the raw results')
    parser.add_argument(
        '--out', type=Path, default=None, help='folder of the raw results and the report (default: benchmarks/results)'
    )
    args = parser.parse_args()
    RESULTS = default(args.out, RESULTS)
    RESULTS.mkdir(parents=True, exist_ok=True)

    def log(*parts):
        print(time.strftime('%H:%M:%S'), *parts, flush=True)

    if not args.report:
        run_study(args, log)
    report(log)


if __name__ == '__main__':
    main()
