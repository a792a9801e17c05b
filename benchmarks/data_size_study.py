"""Where UP helps: a pre-trained start against the same model from scratch as the real text to
fine-tune on gets scarce, for each data source and two pre-training lengths, over several seeds.

    python -m benchmarks.data_size_study              # the study on every core (one thread each), then its report
    python -m benchmarks.data_size_study --report     # the report again from the raw results

For every source, pre-training length and seed: pre-train the main job's model (benchmarks.source_study's
loop: `up-fast pretrain`'s size and optimiser) from that seed; then, for every amount of real text,
fine-tune it on the first that many bytes of a text's training part, with the text's validation part
(just before its held-out part) picking the best step and its held-out part scoring it there
(up_fast.finetune: split_text(train_bytes=...), best_step). The scratch start is the model each
pre-training run began from, fine-tuned on the same batches; it is shared by every source and length
of a seed. Two texts: the licence that ships with Python (the main job's, amounts from 1 KB to all of
it) and a larger one that ships with Python too (the first --larger-bytes of pydoc's topic help), so
that the curve reaches past 100 KB. Every fine-tuning run is appended to data_size_study.jsonl as it
ends, so an interrupted study continues where it stopped (a pre-trained model is kept in the
temporary folder until its runs are done); the report (data_size_study.md, .csv, .png) is written
from that file.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.source_study import MODEL, SCRATCH, VARIANTS, claim_run, cpu_name, pretrain, read_raw
from up_fast.cli.baselines import MARKOV_ORDERS, markov_bits_per_byte
from up_fast.finetune import FINETUNE_DEFAULTS, batch_starts, best_step, eval_steps, finetune_curves, fresh_model
from up_fast.finetune import split_text as split
from up_fast.helpers import default, exists

RESULTS = Path(__file__).parent / 'results'  # --out replaces it
RAW = 'data_size_study.jsonl'

# the sources up_fast has, each as the source study ran it (the xt settings are the main job's)
SOURCES = {
    'xt': 'xt, 100 resets per step',
    'paper': 'paper',
    'markov': 'markov chains, one per row',
}
BATCH_SIZE = 16

# (held-out, validation) fractions of each text: the licence as `up-fast finetune` splits it; the larger text
# keeps smaller slices, so that scoring them every few steps does not cost more than the training
SPLITS = {'small': (FINETUNE_DEFAULTS['held_out'], FINETUNE_DEFAULTS['validation']), 'large': (0.1, 0.05)}


def texts(larger_bytes: int) -> dict[str, tuple[Path, bytes]]:
    """name -> (path, bytes): 'small' the main job's text, 'large' a longer one, both shipped with Python."""
    from up_fast.cli.common import default_text_file

    small = default_text_file()
    found = {'small': (small, small.read_bytes())}
    large = Path(os.__file__).parent / 'pydoc_data' / 'topics.py'
    if larger_bytes and large.is_file():
        found['large'] = (large, large.read_bytes()[:larger_bytes])
    return found


def parts(name: str, data: bytes, train_bytes: int | None = None):
    held_out, validation = SPLITS[name]
    return split(data, held_out, MODEL['seq_len'], validation=validation, train_bytes=train_bytes)


def points(args) -> list[tuple[str, int]]:
    """(text, train bytes) of every point of the curve, smallest first; a size past a text's training
    part is that whole part."""
    found, chosen = texts(args.larger_bytes), []
    for name, sizes in (('small', args.sizes), ('large', args.larger_sizes)):
        if name not in found:
            continue
        pool = len(parts(name, found[name][1]).train)
        chosen += [(name, size) for size in sorted({min(size, pool) if size else pool for size in sizes})]
    return chosen


def starts_of(args) -> list[tuple[str, int]]:
    """(source, pre-training steps) of every start, the scratch start as (SCRATCH, 0); the longest first, so
    that processes sharing the study end near one another."""
    pretrained = [(source, steps) for steps in sorted(args.pretrain_steps, reverse=True) for source in args.sources]
    return [*pretrained, (SCRATCH, 0)]


def point_order(point: tuple[str, int]) -> tuple:
    """Sort key of a (text, train bytes) point: the small text first, then by size."""
    return point[0] != 'small', point[1]


def run_key(record: dict) -> tuple:
    return record['source'], record['pretrain_steps'], record['seed'], record['text'], record['train_bytes']


def model_cache(source: str, steps: int, seed: int) -> Path:
    folder = (
        Path(tempfile.gettempdir())
        / f'up_fast_data_size_study_{hashlib.sha1(str(RESULTS.resolve()).encode()).hexdigest()[:12]}'
    )
    folder.mkdir(exist_ok=True)
    return folder / f'{source}_{steps}_{seed}.pt'


def start_model(source: str, steps: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """The start to fine-tune and what its pre-training measured; pre-trained models are cached by
    (source, steps, seed) until the study's runs from them are done."""
    if source == SCRATCH:
        return fresh_model(MODEL, seed), dict(pretrain_seconds=0.0, synthetic_loss=None)
    cached = model_cache(source, steps, seed)
    if cached.is_file():
        saved = torch.load(cached, weights_only=True)
        model = fresh_model(MODEL, seed)
        model.load_state_dict(saved['model'])
        return model, saved['measured']
    model, loss, seconds = pretrain(VARIANTS[SOURCES[source]], seed, steps)
    measured = dict(pretrain_seconds=seconds, synthetic_loss=loss)
    torch.save(dict(model=model.state_dict(), measured=measured), cached)
    return model, measured


def run_study(args, log):
    raw = RESULTS / RAW
    found = texts(args.larger_bytes)
    chosen = points(args)
    device = torch.device('cpu')
    steps_list = eval_steps(args.finetune_steps, args.eval_every)
    for seed in range(args.seeds):  # seed by seed: a study cut short still has every start at the first seeds
        for source, steps in starts_of(args):
            done = {run_key(r) for r in read_raw(raw)}
            todo = [(name, size) for name, size in chosen if (source, steps, seed, name, size) not in done]
            if not todo or not claim_run(raw, f'{source}_{steps}_{seed}', lambda r: False):
                continue  # finished, or another process runs this start
            begin = time.perf_counter()
            start, measured = start_model(source, steps, seed)
            for name, size in todo:
                text = parts(name, found[name][1], size)
                batches = batch_starts(len(text.train), MODEL['seq_len'], BATCH_SIZE, args.finetune_steps, seed)
                curves = finetune_curves(
                    copy.deepcopy(start),
                    text.train,
                    {'validation': text.validation, 'held_out': text.held_out},
                    batches,
                    seq_len=MODEL['seq_len'],
                    device=device,
                    eval_every=args.eval_every,
                )
                chosen_step, bits = best_step(steps_list, curves['validation'], curves['held_out'])
                record = dict(
                    source=source,
                    pretrain_steps=steps,
                    seed=seed,
                    text=name,
                    text_path=found[name][0].name,
                    train_bytes=size,
                    finetune_steps=args.finetune_steps,
                    steps=steps_list,
                    held_out=curves['held_out'],
                    validation=curves['validation'],
                    best_step=chosen_step,
                    best=bits,
                    **measured,
                    command=' '.join(['python -m benchmarks.data_size_study', *command_options()]),
                    workers=args.workers,
                )
                with open(raw, 'a') as file:
                    file.write(json.dumps(record) + '\n')
                log(
                    f'seed {seed} {source} ({steps} steps), {name} text, {size:,} bytes: best {bits:.3f} at step '
                    f'{chosen_step}, last {curves["held_out"][-1]:.3f}'
                )
            log(f'seed {seed} {source} ({steps} steps): done in {time.perf_counter() - begin:.0f}s')
            if source != SCRATCH:
                model_cache(source, steps, seed).unlink(missing_ok=True)


# the report


def command_options() -> list[str]:
    """The options this study was started with, less the ones that only say how to run it."""
    return [arg for arg in sys.argv[1:] if arg not in ('--worker', '--report')]


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f'{mean:+.3f} ({min(values):+.3f} to {max(values):+.3f})' if len(values) > 1 else f'{mean:+.3f}'


def judge(differences: list[float]) -> str:
    """'UP ahead', 'scratch ahead' or 'within the spread': a start is ahead at a point only when the mean
    advantage (scratch minus pre-trained, paired by seed) is larger than the spread of those per-seed
    differences (max minus min), so that one lucky seed does not make a regime."""
    if len(differences) < 2:
        return 'one seed'
    mean, width = statistics.fmean(differences), max(differences) - min(differences)
    if mean > width:
        return 'UP ahead'
    if -mean > width:
        return 'scratch ahead'
    return 'within the spread'


def summarise(records: list[dict]) -> dict:
    """(text, train bytes) -> {'scratch': {seed: best}, (source, steps): dict(seeds, differences, judged)}, the
    differences being scratch minus that start at each one's best step, paired by seed."""
    scratch = {(r['text'], r['train_bytes'], r['seed']): r['best'] for r in records if r['source'] == SCRATCH}
    table: dict = {}
    for r in records:
        point = (r['text'], r['train_bytes'])
        table.setdefault(point, {'scratch': {}})
        if r['source'] == SCRATCH:
            table[point]['scratch'][r['seed']] = r['best']
            continue
        if (r['text'], r['train_bytes'], r['seed']) not in scratch:
            continue
        entry = table[point].setdefault((r['source'], r['pretrain_steps']), dict(seeds={}))
        entry['seeds'][r['seed']] = scratch[(r['text'], r['train_bytes'], r['seed'])] - r['best']
    for point in table.values():
        for key, entry in point.items():
            if key != 'scratch':
                entry['differences'] = [entry['seeds'][s] for s in sorted(entry['seeds'])]
                entry['judged'] = judge(entry['differences'])
    return dict(sorted(table.items(), key=lambda item: point_order(item[0])))


def report(args, log):
    records = read_raw(RESULTS / RAW)
    if not records:
        raise SystemExit(f'no results yet: run python -m benchmarks.data_size_study first ({RESULTS / RAW})')
    larger = max((r['train_bytes'] for r in records if r['text'] == 'large'), default=0)
    found = texts(args.larger_bytes if larger else 0)
    table = summarise(records)
    keys = sorted({key for point in table.values() for key in point if key != 'scratch'}, key=lambda k: (-k[1], k[0]))
    seeds = max(r['seed'] for r in records) + 1
    finetune_steps = records[0]['finetune_steps']
    pretraining = {
        (r['source'], r['pretrain_steps'], r['seed']): r['pretrain_seconds'] for r in records if r['source'] != SCRATCH
    }

    with open(RESULTS / 'data_size_study.csv', 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow(
            [
                'text',
                'train_bytes',
                'source',
                'pretrain_steps',
                'seed',
                'best_step',
                'best_held_out_bits_per_byte',
                'last_held_out_bits_per_byte',
                'scratch_minus_this_at_best',
            ]
        )
        for r in sorted(records, key=lambda r: (*point_order((r['text'], r['train_bytes'])), r['source'], r['seed'])):
            point = table[(r['text'], r['train_bytes'])]
            difference = point.get((r['source'], r['pretrain_steps']), dict(seeds={}))['seeds'].get(r['seed'])
            writer.writerow(
                [
                    r['text_path'],
                    r['train_bytes'],
                    r['source'],
                    r['pretrain_steps'],
                    r['seed'],
                    r['best_step'],
                    f'{r["best"]:.4f}',
                    f'{r["held_out"][-1]:.4f}',
                    '' if difference is None else f'{difference:.4f}',
                ]
            )

    def label(key):
        return f'{key[0]}, {key[1]} steps'

    lines = [
        '# Where UP helps: pre-trained against scratch as real text gets scarce',
        '',
        f'Command: `{records[0]["command"]}` ({records[0]["workers"]} processes, one thread each) on '
        f'{cpu_name()}, CPU, torch {torch.__version__}.',
        '',
        f"Model: the main job's (dim {MODEL['dim']}, depth {MODEL['depth']}, heads {MODEL['heads']}, seq_len "
        f'{MODEL["seq_len"]}), pre-trained on each source for each length, {seeds} seeds; both starts fine-tuned '
        f'{finetune_steps} steps (batch {BATCH_SIZE}, AdamW lr {FINETUNE_DEFAULTS["lr"]}, warm-up and cosine) on the '
        'first N bytes of the training part, each scored on the held-out part at its own best step on the '
        f'validation part (evaluated every {records[0]["steps"][1]} steps).',
        '',
    ]
    for name, (path, data) in found.items():
        text = parts(name, data)
        markov = markov_bits_per_byte(text.held_out, MODEL['seq_len'])
        lines.append(
            f'- {name} text: {path.name} ({len(data):,} bytes'
            + (', the start of the file' if name == 'large' else '')
            + f'): {len(text.train):,} to train on, {len(text.validation):,} to validate on, {len(text.held_out):,} '
            f'held out. In-context baselines on the held-out part: '
            + ', '.join(f'order {k} {markov[k]:.3f}' for k in MARKOV_ORDERS)
            + '; uniform 8.000.'
        )
    lines += [
        '',
        "Each cell: scratch minus pre-trained at each start's best step, in bits per byte, mean over seeds (min to "
        'max); positive means the pre-trained start is ahead. A cell is marked **UP ahead** only when the mean is '
        'larger than the spread of the per-seed differences (max minus min), *scratch ahead* likewise.',
        '',
        '| text | train bytes | scratch, best held-out bits per byte | '
        + ' | '.join(label(key) for key in keys)
        + ' |',
        '|---|---|---|' + '---|' * len(keys),
    ]
    for (name, size), point in table.items():
        scratch = list(point['scratch'].values())
        cells = []
        for key in keys:
            entry = point.get(key)
            if not exists(entry) or not entry['differences']:
                cells.append('-')
                continue
            mark = {'UP ahead': ' **UP ahead**', 'scratch ahead': ' *scratch ahead*'}.get(entry['judged'], '')
            cells.append(spread(entry['differences']) + mark)
        absolute = f'{statistics.fmean(scratch):.3f}' if scratch else '-'
        lines.append(f'| {name} | {size:,} | {absolute} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Findings (computed from the table)', '', *findings(table, keys), *lengths(records), '']
    lines += [
        f'Pre-training took {sum(pretraining.values()) / 60:.0f} min of one thread for {len(pretraining)} starts '
        f'(wall time on a shared machine).',
        '',
    ]
    (RESULTS / 'data_size_study.md').write_text('\n'.join(lines))
    plot(table, keys, found)
    log('\n'.join(lines))


def findings(table: dict, keys: list) -> list[str]:
    ahead, behind = [], []
    for (name, size), point in table.items():
        for key in keys:
            entry = point.get(key)
            if exists(entry) and entry.get('judged') == 'UP ahead':
                ahead.append(f'{key[0]} ({key[1]} steps) at {size:,} bytes of the {name} text')
            if exists(entry) and entry.get('judged') == 'scratch ahead':
                behind.append(f'{key[0]} ({key[1]} steps) at {size:,} bytes of the {name} text')
    cells = sum(1 for point in table.values() for key in keys if key in point)
    lines = [
        f'- UP is ahead by more than the spread across seeds in {len(ahead)} of {cells} cells'
        + (': ' + '; '.join(ahead) + '.' if ahead else '.'),
        f'- Scratch is ahead by more than the spread in {len(behind)} of {cells} cells'
        + (': ' + '; '.join(behind) + '.' if behind else '.'),
        f'- In the other {cells - len(ahead) - len(behind)} the difference is within the spread across seeds.',
    ]
    return lines


def lengths(records: list[dict]) -> list[str]:
    """The longest pre-training against the shortest, source by source, paired by seed, by the same rule;
    and zero-shot on the small text's held-out part (each curve's step 0), which the main job reports."""
    best = {(r['source'], r['pretrain_steps'], r['seed'], r['text'], r['train_bytes']): r['best'] for r in records}
    runs = sorted({r['pretrain_steps'] for r in records if r['source'] != SCRATCH})
    if len(runs) < 2:
        return []
    short, long = runs[0], runs[-1]
    lines = []
    for source in sorted({r['source'] for r in records if r['source'] != SCRATCH}):
        verdicts = []
        seeds = sorted({r['seed'] for r in records})
        points = sorted({(r['text'], r['train_bytes']) for r in records}, key=point_order)
        for name, size in points:
            pairs = [((source, long, s, name, size), (source, short, s, name, size)) for s in seeds]
            if not all(a in best and b in best for a, b in pairs):
                continue
            judged = judge([best[a] - best[b] for a, b in pairs])  # positive: the shorter run is lower
            word = {'UP ahead': f'{short} steps better', 'scratch ahead': f'{long} steps better'}.get(judged, 'within')
            verdicts.append(f'{size:,} bytes ({name}) {word}')
        zero = {
            steps: statistics.fmean(
                r['held_out'][0]
                for r in records
                if r['source'] == source and r['pretrain_steps'] == steps and r['text'] == 'small'
            )
            for steps in (long, short)
        }
        lines.append(
            f'- {source}, {long} against {short} pre-training steps (the same rule, paired by seed; within: within '
            'the spread): '
            + ', '.join(verdicts)
            + f'; zero-shot on the small held-out part {zero[long]:.3f} after {long}, {zero[short]:.3f} after {short}.'
        )
    return lines


def plot(table: dict, keys: list, found: dict):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    for index, key in enumerate(keys):
        color = f'C{index % 3}' if len(keys) > 3 else f'C{index}'
        style = '-' if key[1] == max(k[1] for k in keys) else '--'
        for name, marker in (('small', 'o'), ('large', 's')):
            xs, means, lows, highs = [], [], [], []
            for (text, size), point in table.items():
                entry = point.get(key)
                if text != name or not exists(entry) or not entry['differences']:
                    continue
                xs.append(size * 1.04 ** (index - (len(keys) - 1) / 2))  # side by side: the bars would overlap
                means.append(statistics.fmean(entry['differences']))
                lows.append(means[-1] - min(entry['differences']))
                highs.append(max(entry['differences']) - means[-1])
            if xs:
                axes.errorbar(
                    xs,
                    means,
                    yerr=[lows, highs],
                    color=color,
                    linestyle=style,
                    marker=marker,
                    markersize=4,
                    capsize=3,
                    label=f'{key[0]}, {key[1]} pre-training steps' if name == 'small' else None,
                )
    axes.axhline(0.0, color='black', linewidth=1)
    axes.set_xscale('log')
    axes.set_xlabel(
        'bytes of real text fine-tuned on (circles: '
        + ', squares: '.join(f'{path.name}' for path, _ in found.values())
        + ')'
    )
    axes.set_ylabel('scratch minus pre-trained, bits per byte\n(above 0: UP helps; bars: min to max over seeds)')
    axes.set_title('each start scored on held-out text at its best validation step', fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / 'data_size_study.png', dpi=110)
    plt.close(figure)


def sizes_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be byte counts separated by commas, such as 1000,4000,0, got {text!r}'
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f'must be byte counts (0: the whole training part), got {text!r}')
    return values


def main():
    global RESULTS
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument('--pretrain-steps', type=sizes_list, default=[1200, 300], help='pre-training lengths')
    parser.add_argument('--sources', nargs='+', choices=list(SOURCES), default=list(SOURCES))
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--finetune-steps', type=int, default=150)
    parser.add_argument('--eval-every', type=int, default=10)
    parser.add_argument(
        '--sizes', type=sizes_list, default=[1000, 2000, 4000, 0], help='bytes of the small text, 0: all of it'
    )
    parser.add_argument('--larger-sizes', type=sizes_list, default=[32000, 0], help='bytes of the larger text')
    parser.add_argument(
        '--larger-bytes', type=int, default=160_000, help='how much of the larger text to use, 0: no larger text'
    )
    parser.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1), help='processes, one thread each')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--report', action='store_true', help='only write the report from the raw results')
    parser.add_argument('--out', type=Path, default=None, help='folder of the raw results and the report')
    args = parser.parse_args()
    RESULTS = default(args.out, RESULTS)
    RESULTS.mkdir(parents=True, exist_ok=True)

    def log(*parts):
        print(time.strftime('%H:%M:%S'), *parts, flush=True)

    if args.worker:
        run_study(args, log)
        return
    if not args.report:
        env = {**os.environ, 'OMP_NUM_THREADS': '1'}
        others = [
            subprocess.Popen([sys.executable, '-m', 'benchmarks.data_size_study', *sys.argv[1:], '--worker'], env=env)
            for _ in range(args.workers - 1)
        ]
        torch.set_num_threads(1)
        run_study(args, log)
        failed = [process.args for process in others if process.wait() != 0]
        if failed:
            raise SystemExit(f'a worker failed: {failed[0]}')
    report(args, log)


if __name__ == '__main__':
    main()
