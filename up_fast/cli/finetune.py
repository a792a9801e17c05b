"""`up-fast finetune`: fine-tune a pre-trained checkpoint on real text beside the same architecture
from scratch, on the same batches, and say which start is ahead on held-out text."""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast.cli.baselines import BASELINE_LABELS, baseline_bits, best_markov, finish_bits_plot
from up_fast.cli.checkpoint import check_writable, read_torch_file
from up_fast.cli.common import (
    DEFAULT_CHECKPOINT,
    CLIError,
    HelpFormatter,
    add_device_option,
    default_text_file,
    log,
    non_negative_int,
    one_line,
    paragraph,
    pick_device,
    positive_float,
    positive_int,
    read_text,
)
from up_fast.helpers import default, exists

# torch and up_fast.finetune (which imports it) are imported inside the functions that use them, as in the
# other commands: `up-fast --help` answers without them
if TYPE_CHECKING:
    import torch

# the command's defaults: a few minutes on 2 CPU cores (up_fast.finetune.FINETUNE_DEFAULTS are the library's)
STEPS, EVAL_EVERY, SEEDS, HELD_OUT, VALIDATION, BATCH_SIZE, LR = 100, 10, 3, 0.2, 0.1, 16, 1e-3
SIZE_OPTIONS = ('dim', 'depth', 'heads', 'seq_len')


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a fraction between 0 and 1, got {text!r}') from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f'must be a fraction between 0 and 1 (exclusive), got {value}')
    return value


def validation_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be 0 or a fraction between 0 and 1, got {text!r}') from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f'must be 0 (none) or a fraction between 0 and 1, got {value}')
    return value


def levels_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be bits per byte separated by commas, such as 6,5,4, got {text!r}'
        ) from None
    if not values or any(not 0.0 < value < 64.0 for value in values):
        raise argparse.ArgumentTypeError(
            f'must be one or more positive bits per byte separated by commas, such as 6,5,4, got {text!r}'
        )
    return values


def load_start(args) -> tuple[torch.nn.Module, dict, int, str]:
    """(the pre-trained model, its sizes, the seed of the scratch start, a description) from --checkpoint."""
    from up_fast.finetune import model_state, rebuild

    checkpoint = read_torch_file(args.checkpoint)
    try:
        state, config = model_state(checkpoint)
    except ValueError as err:
        raise CLIError(f'{args.checkpoint}: {err}') from None

    sizes = {key: getattr(args, key) for key in SIZE_OPTIONS}
    given = [f'--{key.replace("_", "-")}' for key, value in sizes.items() if exists(value)]
    if exists(config) and given:
        raise CLIError(
            f'{" ".join(given)} apply to a bare state_dict: {args.checkpoint} carries its own config, which rebuilds '
            'the model'
        )
    try:
        model, architecture = rebuild(state, config, **sizes)
    except ValueError as err:
        raise CLIError(
            f'{args.checkpoint}: {err}'
            + (
                ' (--dim, --depth, --heads and --seq-len set the sizes of a bare state_dict)'
                if not exists(config)
                else ''
            )
        ) from None
    except RuntimeError as err:
        raise CLIError(f'{args.checkpoint}: the weights do not load ({one_line(err)})') from None

    if exists(config):
        init_seed = default(args.init_seed, config.get('seed', 0))
        steps = f', {config["steps"]} steps of `up-fast pretrain`' if 'steps' in config else ''
        origin = f'an up-fast checkpoint{steps}'
        scratch = (
            f'initialised as that run began (seed {init_seed})'
            if not exists(args.init_seed)
            else f'initialised with seed {init_seed}'
        )
    else:
        init_seed = default(args.init_seed, 0)
        origin = 'a state_dict, sizes read from its weights' + (f' and {", ".join(given)}' if given else '')
        scratch = f'initialised with seed {init_seed} (--init-seed)'
    described = ', '.join(f'{key} {architecture[key]}' for key in ('dim', 'depth', 'heads', 'seq_len'))
    return (
        model,
        architecture,
        init_seed,
        f'pre-trained start: {args.checkpoint} ({origin}; {described})\nscratch start: the same architecture {scratch}',
    )


def output_paths(args) -> tuple[Path, Path]:
    csv_path = Path(args.out) if exists(args.out) else Path(args.checkpoint).with_suffix('.finetune.csv')
    if csv_path.is_dir():
        raise CLIError(
            f'--out {csv_path} is a directory: give the CSV file to write, e.g. --out {csv_path / "finetune.csv"}'
        )
    check_writable(csv_path, 'the fine-tuning curves', '--out')
    return csv_path, csv_path.with_suffix('.png')


def run(args) -> dict:
    from up_fast.finetune import best_step, compare, fresh_model, rounded, split_text, steps_to_reach, verdict

    try:
        from tqdm import tqdm
    except ImportError:
        raise CLIError('the progress bar needs tqdm: pip install "up-fast[cli]"') from None

    device = pick_device(args.device)
    pretrained, architecture, init_seed, origin = load_start(args)
    seq_len = architecture['seq_len']

    text_path = Path(default(args.text, default_text_file()))
    data = read_text(text_path, args.max_bytes)
    if args.held_out + args.validation >= 1.0:
        raise CLIError(
            f'--held-out {args.held_out:g} and --validation {args.validation:g} leave nothing to train on: together '
            'they must be below 1'
        )
    try:
        train, valid, held = split_text(data, args.held_out, seq_len, validation=args.validation)
    except ValueError as err:
        raise CLIError(f'--text {text_path}: {err}') from None
    pool = len(train)
    if args.train_bytes:
        try:  # the text splits: only the amount can be wrong
            train = split_text(
                data, args.held_out, seq_len, validation=args.validation, train_bytes=args.train_bytes
            ).train
        except ValueError as err:
            raise CLIError(f'--train-bytes {args.train_bytes} with --text {text_path}: {err} (0: all of it)') from None
    if args.eval_every > args.steps:
        raise CLIError(
            f'--eval-every {args.eval_every} is more than --steps {args.steps}: the curves would hold only the start '
            'and the end'
        )
    csv_path, png_path = output_paths(args)

    seeds = list(range(args.seeds))
    scratch = fresh_model(architecture, init_seed)
    baselines = baseline_bits(held, seq_len)

    trained_on = f'{len(train):,} bytes to train on' + (
        f' (the first of the {pool:,} it leaves, --train-bytes)' if len(train) < pool else ''
    )
    validated = (
        f"{len(valid):,} to validate on (the {args.validation:.0%} before it; picks each start's best step), "
        if valid
        else ''
    )
    log(
        f'fine-tuning on {text_path}: {trained_on}, {validated}{len(held):,} held out and scored (the last '
        f'{args.held_out:.0%}), windows of {seq_len} bytes, batch {args.batch_size}, {args.steps} steps, lr '
        f'{args.lr:g}, seeds {seeds[0]} to {seeds[-1]} (the order of the batches)'
    )
    log(origin)

    progress = tqdm(total=2 * len(seeds) * args.steps, desc='finetune', unit='step', dynamic_ncols=True)
    result = compare(
        pretrained,
        scratch,
        train,
        held,
        seeds,
        seq_len=seq_len,
        device=device,
        validation=valid or None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        on_step=progress.update,
    )
    progress.close()

    # every figure below, and the verdict, from the figures as printed (3 decimals)
    curves = {
        name: {seed: [rounded(b) for b in curve] for seed, curve in getattr(result, name).items()}
        for name in ('checkpoint', 'scratch')
    }
    mean = {
        name: [rounded(statistics.fmean(c[i] for c in curves[name].values())) for i in range(len(result.steps))]
        for name in curves
    }

    log(f'held-out bits per byte (lower is better), mean over {len(seeds)} seed(s):')
    log('   step   pre-trained   scratch   scratch - pre-trained')
    for i, step in enumerate(result.steps):
        log(
            f'  {step:5d}   {mean["checkpoint"][i]:11.3f}   {mean["scratch"][i]:7.3f}   '
            f'{rounded(mean["scratch"][i] - mean["checkpoint"][i]):+21.3f}'
        )

    final_step = result.steps[-1]
    log(f'at step {final_step}, per seed:')
    for seed in seeds:
        log(
            f'  seed {seed}: pre-trained {curves["checkpoint"][seed][-1]:.3f}, scratch '
            f'{curves["scratch"][seed][-1]:.3f}'
        )

    counting = best_markov(baselines)
    levels = (
        [(level, '') for level in args.levels]
        if exists(args.levels)
        else [
            (mean['scratch'][-1], " (the scratch start's final mean)"),
            (rounded(baselines[counting]), f' ({BASELINE_LABELS[counting]}, counted in each held-out window)'),
        ]
    )
    log(f'steps to reach a level (the first evaluation at or below it, per seed; - : not within {final_step} steps):')
    reached = []
    for level, why in levels:
        steps = {name: [steps_to_reach(result.steps, curves[name][seed], level) for seed in seeds] for name in curves}
        reached.append(dict(level=level, **steps))
        shown = {name: ' '.join('-' if s is None else str(s) for s in values) for name, values in steps.items()}
        log(f'  {level:.3f}{why}: pre-trained {shown["checkpoint"]}; scratch {shown["scratch"]}')

    judged = verdict(
        [curves['checkpoint'][s][-1] for s in seeds], [curves['scratch'][s][-1] for s in seeds], final_step
    )
    best, best_judged = {}, None
    if valid:
        validation = {
            name: {seed: [rounded(b) for b in curve] for seed, curve in result.validation[name].items()}
            for name in curves
        }
        best = {
            name: {seed: best_step(result.steps, validation[name][seed], curves[name][seed]) for seed in seeds}
            for name in curves
        }
        log("at each start's best step on the validation text (early stopping), per seed:")
        for seed in seeds:
            (pre_step, pre), (scratch_step, scratch_bits) = best['checkpoint'][seed], best['scratch'][seed]
            log(
                f'  seed {seed}: pre-trained {pre:.3f} (step {pre_step}), scratch {scratch_bits:.3f} '
                f'(step {scratch_step})'
            )
        best_judged = verdict(
            [best['checkpoint'][s][1] for s in seeds], [best['scratch'][s][1] for s in seeds], step=None
        )
        log(f'verdict: {best_judged.describe()}')
        log(f'at the last step: {judged.describe()}')
    else:
        validation = {}
        log(f'verdict: {judged.describe()}')

    write_csv(csv_path, result.steps, curves, validation, baselines)
    if plot(
        png_path,
        result.steps,
        curves,
        best,
        baselines,
        f'fine-tuning on {text_path.name}, held-out bits per byte\n{origin.splitlines()[0]}',
    ):
        log(f'fine-tuning curves: {csv_path}, plotted in {png_path}')
    else:
        log(
            f'fine-tuning curves: {csv_path} (matplotlib is missing: pip install "up-fast[cli]" for the PNG plot as '
            'well)'
        )
    return dict(
        steps=result.steps,
        curves=curves,
        baselines=baselines,
        reached=reached,
        validation=validation,
        best=best,
        verdict=default(best_judged, judged),
        final_verdict=judged,
        architecture=architecture,
    )


def write_csv(path: Path, steps: list[int], curves: dict, validation: dict, baselines: dict[str, float]):
    """One row per seed and evaluation step: held-out bits per byte of both starts, their validation
    figures when there is a validation text, and the held-out baselines, constant, as columns."""
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        checked = ['pretrained_validation', 'scratch_validation'] if validation else []
        writer.writerow(['seed', 'step', 'pretrained', 'scratch', *checked, *baselines])
        for seed in curves['checkpoint']:
            for i, step in enumerate(steps):
                row = [seed, step, f'{curves["checkpoint"][seed][i]:.3f}', f'{curves["scratch"][seed][i]:.3f}']
                if validation:
                    row += [f'{validation["checkpoint"][seed][i]:.3f}', f'{validation["scratch"][seed][i]:.3f}']
                writer.writerow([*row, *(f'{bits:.3f}' for bits in baselines.values())])


def plot(path: Path, steps: list[int], curves: dict, best: dict, baselines: dict[str, float], title: str) -> bool:
    """The mean curve of each start with its range over seeds shaded, each seed's best validation step
    marked, the baselines dashed. False when matplotlib is missing."""
    import torch

    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, label, color in (('checkpoint', 'pre-trained start', 'C3'), ('scratch', 'scratch start', 'black')):
        values = torch.tensor(list(curves[name].values()))  # (seeds, evaluations)
        axes.plot(
            steps,
            values.mean(0),
            marker='o',
            markersize=3,
            color=color,
            label=f'{label} (mean over {values.shape[0]} seeds)',
        )
        axes.fill_between(steps, values.min(0).values, values.max(0).values, color=color, alpha=0.15)
        if best:
            chosen = list(best[name].values())  # (step, held-out bits) per seed
            axes.scatter(
                [step for step, _ in chosen],
                [bits for _, bits in chosen],
                marker='x',
                color=color,
                zorder=3,
                label=f'{label}, best validation step of each seed',
            )
    return finish_bits_plot(
        plt, figure, axes, baselines, 'fine-tuning step', 'held-out bits per byte (lower is better)', title, path
    )


def add_parser(commands):
    p = commands.add_parser(
        'finetune',
        formatter_class=HelpFormatter,
        help=(
            'fine-tune a pre-trained checkpoint on real text beside the same model from scratch: what pre-training buys'
        ),
        description=paragraph(
            'Fine-tune the model of a checkpoint on real text, and beside it the same architecture freshly '
            'initialised, with the same seed, optimiser and batches, and report held-out bits per byte over steps for '
            'both, the steps each needs to reach given levels, and a verdict: which start is lower on every seed at '
            "each one's best validation step (and at the last step), by how much, and the spread over --seeds (each "
            'seed draws its own order of training windows). '
            'The text is split into a part to train on, the --validation fraction after it, and the last --held-out '
            'fraction, never trained on: each start is also judged at its own best step on the validation text '
            '(early stopping, after the fact), so that a start that overfits a small text is not judged at a fixed '
            'late step, and the held-out text only scores. --train-bytes trains on less of the text, with the '
            'validation and held-out parts unchanged: how much real text before pre-training stops paying. For a '
            'checkpoint of `up-fast pretrain` the scratch start is the very model its run began from. A state_dict '
            'saved with the library (torch.save(wrapper.state_dict(), path) for a UniversalPretrainWrapper, or a '
            "TransformerWrapper's own) is rebuilt as TransformerWrapper(256 tokens, Decoder(dim, depth, heads)) with "
            'sizes read from its weights (--dim, --depth, --heads, --seq-len override them). The defaults take a few '
            'minutes on 2 CPU cores.'
        ),
        epilog=(
            'examples:\n'
            '  up-fast finetune                              the checkpoint of `up-fast pretrain` '
            f'({DEFAULT_CHECKPOINT}) on a text that ships with Python\n'
            '  up-fast finetune --text my_corpus.txt --steps 300 --seeds 5\n'
            '  up-fast finetune --checkpoint wrapper_state.pt --init-seed 0      a UniversalPretrainWrapper '
            'state_dict\n'
            '  up-fast finetune --levels 6,5,4               steps each start needs to reach 6, 5 and 4 bits per byte\n'
            '  up-fast finetune --train-bytes 2000           only 2,000 bytes of real text: is UP worth it there?'
        ),
    )
    p.add_argument(
        '--checkpoint',
        metavar='PATH',
        default=DEFAULT_CHECKPOINT,
        help=(
            'an `up-fast pretrain` checkpoint, or a saved UniversalPretrainWrapper or TransformerWrapper state_dict '
            '(default: %(default)s)'
        ),
    )
    p.add_argument(
        '--text',
        metavar='FILE',
        default=None,
        help=f'text to fine-tune on and score (default: a file that ships with Python, here {default_text_file()})',
    )
    p.add_argument(
        '--max-bytes',
        metavar='N',
        type=non_negative_int,
        default=64 * 1024,
        help='use at most this many bytes from the start of the text, 0 for all (default: %(default)s)',
    )
    p.add_argument(
        '--held-out',
        metavar='FRACTION',
        type=fraction,
        default=HELD_OUT,
        help='the last this fraction of the text is held out and scored, never trained on (default: %(default)s)',
    )
    p.add_argument(
        '--validation',
        metavar='FRACTION',
        type=validation_fraction,
        default=VALIDATION,
        help=(
            "this fraction of the text, just before the held-out part, picks each start's best step; 0 for none, "
            'then only the last step is judged (default: %(default)s)'
        ),
    )
    p.add_argument(
        '--train-bytes',
        metavar='N',
        type=non_negative_int,
        default=0,
        help=(
            'fine-tune on only the first N bytes of the part left to train on, 0 for all of it; the validation and '
            'held-out parts stay as they are (default: %(default)s)'
        ),
    )
    p.add_argument(
        '--steps',
        metavar='N',
        type=positive_int,
        default=STEPS,
        help='fine-tuning steps for each start and seed (default: %(default)s)',
    )
    p.add_argument(
        '--eval-every',
        metavar='N',
        type=positive_int,
        default=EVAL_EVERY,
        help='score the validation and held-out texts every N steps, and before the first (default: %(default)s)',
    )
    p.add_argument(
        '--seeds',
        metavar='N',
        type=positive_int,
        default=SEEDS,
        help='repeat with seeds 0 to N-1, each its own order of batches, for the spread (default: %(default)s)',
    )
    p.add_argument(
        '--batch-size',
        metavar='N',
        type=positive_int,
        default=BATCH_SIZE,
        help='windows of the text per step (default: %(default)s)',
    )
    p.add_argument(
        '--lr',
        metavar='LR',
        type=positive_float,
        default=LR,
        help='peak AdamW learning rate, after a linear warm-up, decayed to a tenth by a cosine (default: %(default)s)',
    )
    p.add_argument(
        '--levels',
        metavar='BITS',
        type=levels_list,
        default=None,
        help=(
            'report the steps each start needs to reach these bits per byte, comma-separated (default: the scratch '
            "start's final mean and the best in-context Markov model on the held-out text)"
        ),
    )
    p.add_argument(
        '--init-seed',
        metavar='SEED',
        type=int,
        default=None,
        help=(
            "torch.manual_seed of the scratch start's weights (default: the seed of the `up-fast pretrain` run, 0 for "
            'a state_dict)'
        ),
    )
    for key, what in (
        ('dim', 'model width'),
        ('depth', 'transformer layers'),
        ('heads', 'attention heads (64 wide)'),
        ('seq_len', 'context length, also the window length'),
    ):
        p.add_argument(
            f'--{key.replace("_", "-")}',
            metavar='N',
            type=positive_int,
            default=None,
            help=f'bare state_dict only: the {what} (default: read from its weights)',
        )
    p.add_argument(
        '--out',
        metavar='PATH',
        default=None,
        help=(
            "the CSV of the curves to write, the PNG beside it (default: the checkpoint's path with .finetune.csv and "
            '.finetune.png)'
        ),
    )
    add_device_option(p)
    p.set_defaults(run=run)
    return p
