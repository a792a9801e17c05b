"""`up-fast pretrain`: pre-train a small byte-level transformer on synthetic data and save a
checkpoint, with zero-shot bits per byte on real text along the way, written to a CSV and plotted."""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast import __version__
from up_fast.cli.baselines import BASELINE_LABELS
from up_fast.cli.checkpoint import check_out_path, claimed, load_checkpoint, load_state, save_checkpoint
from up_fast.cli.common import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIG,
    SOURCES,
    CLIError,
    HelpFormatter,
    add_device_option,
    build,
    config_summary,
    default_text_file,
    log,
    non_negative_int,
    one_line,
    paragraph,
    pick_device,
    positive_float,
    positive_int,
)
from up_fast.cli.run_guards import Divergence, StopRequest
from up_fast.cli.sizes import check_memory_before_torch, check_memory_on
from up_fast.cli.zero_shot import EVAL_BYTES, EVAL_EVERY, ZeroShotEval, write_evaluations
from up_fast.helpers import default, exists

if TYPE_CHECKING:
    pass


def lr_lambda(warmup: int, steps: int):
    # linear warm-up to the full lr, then cosine decay to a tenth of it: the schedule fine-tuning uses too
    from up_fast.byte_model import lr_lambda as schedule  # imported here: it imports torch

    return schedule(warmup, steps)


def check_source_options(config: dict):
    # the paper's generator and schedule are fixed: options of the x-transformers generator do not apply
    if config['source'] == 'paper':
        if config['gru']:
            raise CLIError(
                "--gru chooses the x-transformers generator's network: use it with --source xt (the paper's "
                'generator is a 4-layer LSTM)'
            )
        if config['reset_turing_machine_every'] != DEFAULT_CONFIG['reset_turing_machine_every']:
            raise CLIError("--reset-every applies to --source xt: the paper's generator is re-drawn every step")
        if config['num_reset'] != DEFAULT_CONFIG['num_reset']:
            raise CLIError(
                "--num-reset applies to --source xt: the paper's buffer algorithm resets 100 rows of its own every step"
            )
    if config['num_reset'] % 2:
        raise CLIError(
            '--num-reset must be even (half the reset rows are uniform noise, half constant), got '
            f'{config["num_reset"]}'
        )


# options of a run, by their name in the configuration: those a resumed run may change with --override, and
# those it never may (the model, the data and their random streams are the run's own)
CHANGEABLE = dict(
    lr='--lr',
    steps='--steps',
    eval_every='--eval-every',
    eval_text='--eval-text',
    eval_bytes='--eval-bytes',
    save_every='--save-every',
    keep_best='--keep-best',
)
FIXED = dict(
    batch_size='--batch-size',
    seq_len='--seq-len',
    dim='--dim',
    depth='--depth',
    heads='--heads',
    seed='--seed',
    source='--source',
    gru='--gru',
    reset_turing_machine_every='--reset-every',
    num_reset='--num-reset',
)
ARGUMENT = dict(reset_turing_machine_every='reset_every')  # the configuration's name where the option's differs


def given(args, key: str):
    return getattr(args, ARGUMENT.get(key, key))


def new_config(args) -> dict:
    """The configuration of a new run: the defaults, and the options given."""
    config = dict(DEFAULT_CONFIG)
    for key in (*FIXED, 'lr', 'steps'):
        config[key] = default(given(args, key), DEFAULT_CONFIG[key])
    config['warmup'] = min(config['warmup'], max(1, config['steps'] // 10))
    config['eval_every'] = default(args.eval_every, EVAL_EVERY)
    config['eval_text'] = args.eval_text  # None: the default text, wherever Python is
    config['eval_bytes'] = default(args.eval_bytes, EVAL_BYTES)
    config['save_every'] = args.save_every
    config['keep_best'] = args.keep_best
    return fill_cadence(config)


def fill_cadence(config: dict) -> dict:
    # by default the run saves with each evaluation, and keeps its best evaluated model when it evaluates
    config['eval_every'] = default(config.get('eval_every'), 0)  # older checkpoints: no evaluations
    config['eval_bytes'] = default(config.get('eval_bytes'), EVAL_BYTES)
    config['save_every'] = default(config.get('save_every'), config['eval_every'] or EVAL_EVERY)
    config['keep_best'] = default(config.get('keep_best'), config['eval_every'] > 0)
    return config


def resumed_config(args, checkpoint: dict) -> dict:
    """The resumed run's own configuration. An option given here that disagrees with it is an error, never ignored:
    --override applies those a run can change, the others never apply."""
    config = fill_cadence(checkpoint['config'])
    differ = {
        key: given(args, key)
        for key in (*CHANGEABLE, *FIXED)
        if exists(given(args, key)) and given(args, key) != config.get(key)
    }

    def shown(key, value):
        return f'{FIXED.get(key) or CHANGEABLE[key]} {value}'

    fixed = [f'{shown(key, value)} (the run has {config.get(key)})' for key, value in differ.items() if key in FIXED]
    if fixed:
        raise CLIError(
            f'--resume {args.resume}: {", ".join(fixed)}: a resumed run keeps its model, data and random streams; '
            f'leave these options out, or start a new run with another --out'
        )
    if differ and not args.override:
        listed = ', '.join(f'{shown(key, value)} (the run has {config.get(key)})' for key, value in differ.items())
        raise CLIError(
            f'--resume {args.resume}: options that disagree with the run: {listed}; pass --override to apply them, '
            f'or leave them out to continue the run as it was'
        )
    for key, value in differ.items():
        log(f'--override: {key} {config.get(key)} -> {value}')
        config[key] = value
    return config


def best_path(out: Path) -> Path:
    """The best evaluated model, beside the last: up_fast.pt -> up_fast.best.pt."""
    return out.with_suffix('.best' + out.suffix)


def resume_command(out: Path, args) -> str:
    device = f' --device {shlex.quote(args.device)}' if exists(args.device) else ''
    return f'up-fast pretrain --resume {shlex.quote(str(out))}{device}'


def run(args) -> dict:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        raise CLIError('the progress bar needs tqdm: pip install "up-fast[cli]"') from None

    if exists(args.resume):
        checkpoint = load_checkpoint(args.resume)
        missing = {'optimizer', 'scheduler'} - set(checkpoint)
        if missing:
            raise CLIError(
                f'{args.resume} cannot be resumed: it lacks {", ".join(sorted(missing))} (a best-model checkpoint, or '
                'written by an older up-fast)'
            )
        config = resumed_config(args, checkpoint)
    else:
        if args.override:
            raise CLIError(
                '--override applies options to a run continued with --resume; a new run takes its options as given'
            )
        checkpoint = None
        config = new_config(args)
        check_source_options(config)
    check_memory_before_torch(config, args.device)

    out = Path(default(args.out, args.resume or DEFAULT_CHECKPOINT))
    check_out_path(out, args.resume, args.force)
    if config['keep_best']:
        check_out_path(
            best_path(out), None if not exists(args.resume) else str(best_path(Path(args.resume))), args.force
        )

    with claimed(out):
        return train(args, config, checkpoint, out)


def train(args, config: dict, checkpoint: dict | None, out: Path) -> dict:
    import torch
    from tqdm import tqdm

    device = pick_device(args.device)
    check_memory_on(config, device)
    torch.manual_seed(config['seed'])

    wrapper = build(config, device)
    wrapper.train()
    wrapper.prefetch = args.prefetch  # how the data is made, not what: not part of the run's configuration

    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=config['lr'], weight_decay=config['weight_decay'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config['warmup'], config['steps']))

    smoothed = None
    history = []
    best = None  # the best evaluation after training started: dict(step, bits_per_byte)
    if exists(checkpoint):
        load_state(wrapper, checkpoint['wrapper'], args.resume, checkpoint.get('version'))
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
            scheduler.load_state_dict(checkpoint['scheduler'])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CLIError(
                f'{args.resume} cannot be resumed: its optimizer state does not fit the model ({one_line(err)}); '
                f'start a new run with `up-fast pretrain`'
            ) from None
        # a new peak learning rate (--override) takes effect from the step the run is at
        scheduler.base_lrs = [config['lr'] for _ in optimizer.param_groups]
        for group, lr in zip(
            optimizer.param_groups,
            [config['lr'] * scheduler.lr_lambdas[0](scheduler.last_epoch)] * len(optimizer.param_groups),
        ):
            group['initial_lr'], group['lr'] = config['lr'], lr
        # the running average continues, so that a resumed run prints what the whole run prints
        if 'smoothed_loss' in checkpoint:
            smoothed = torch.tensor(checkpoint['smoothed_loss'], dtype=torch.float32, device=device)
        history = list(checkpoint.get('eval_history', []))
        best = checkpoint.get('best')

    steps, tokens_per_step = config['steps'], config['batch_size'] * config['seq_len']
    done = wrapper.num_steps
    if done >= steps:
        raise CLIError(
            f'the run has done {done} of its {steps} steps: nothing to resume (pass --steps N --override, N > {done}, '
            'to extend it)'
        )
    stop = steps if not exists(args.stop_after) else min(steps, done + args.stop_after)

    zero_shot = ZeroShotEval(config, history, device) if config['eval_every'] > 0 else None
    divergence = Divergence(device)
    saved_step = done if exists(checkpoint) and out.exists() and out.resolve() == Path(args.resume).resolve() else None
    loss = None

    def snapshot(step: int, with_optimizer: bool = True) -> dict:
        state = dict(
            config=config,
            model=wrapper.model.state_dict(),
            wrapper=wrapper.state_dict(),  # the buffer, the step counter and the generator's weights too
            final_loss=loss.item() if exists(loss) else checkpoint.get('final_loss') if exists(checkpoint) else None,
            smoothed_loss=smoothed.item() if exists(smoothed) else None,
            eval_history=history,
            best=best,
            version=__version__,
        )
        if with_optimizer:
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        return state

    def save(step: int):
        nonlocal saved_step
        divergence.check(config, out, saved_step)  # nothing saved over a good checkpoint
        save_checkpoint(snapshot(step), out)
        saved_step = step

    def evaluate(step: int):
        nonlocal best
        divergence.check(config, out, saved_step)
        progress.write(zero_shot(wrapper.model, step, smoothed.item() if exists(smoothed) and step > 0 else None))
        bits = history[-1]['bits_per_byte']
        if step > 0 and math.isfinite(bits) and (not exists(best) or bits < best['bits_per_byte']):
            best = dict(step=step, bits_per_byte=bits)
            if config['keep_best']:
                save_checkpoint(snapshot(step, with_optimizer=False), best_path(out))

    with StopRequest() as stop_request:
        resuming = f', resuming at step {done}' if done else ''
        log(
            f'pre-training {sum(p.numel() for p in wrapper.model.parameters()):,} parameters '
            f'({config_summary(config)}) for {steps} steps on {device}{resuming}'
        )
        saving = f'every {config["save_every"]} steps' if config['save_every'] > 0 else 'at the end'
        log(
            f'saving to {out} {saving} and on Ctrl-C'
            + (f', the best evaluated model to {best_path(out)}' if config['keep_best'] and exists(zero_shot) else '')
        )
        with tqdm(
            range(done, stop), initial=done, total=steps, desc='pretrain', unit='step', dynamic_ncols=True
        ) as progress:  # closed on an error too, which then starts a line of its own
            if exists(zero_shot):
                progress.write(
                    f'zero-shot bits per byte every {zero_shot.every} steps on {zero_shot.path} '
                    f'({len(zero_shot.data):,} bytes in windows of {config["seq_len"]}); '
                    + ', '.join(f'{BASELINE_LABELS[name]} {bits:.3f}' for name, bits in zero_shot.baselines.items())
                )
                if done == 0:
                    evaluate(0)

            def eval_seconds():
                # time spent evaluating since training started, left out of the training speed
                return zero_shot.seconds - untrained_eval_seconds if exists(zero_shot) else 0.0

            untrained_eval_seconds = zero_shot.seconds if exists(zero_shot) else 0.0
            start = time.perf_counter()

            for step in progress:
                loss = wrapper()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(wrapper.model.parameters(), config['grad_clip'])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()

                # the smoothed loss stays on the device, read back only when the bar is redrawn
                loss = loss.detach()
                smoothed = loss.clone() if not exists(smoothed) else smoothed.lerp_(loss, 0.05)
                divergence.update(loss, step + 1)
                finished = step + 1

                if exists(zero_shot) and zero_shot.due(finished, steps):
                    evaluate(finished)

                if step % 10 == 0 or device.type == 'cpu':  # reading it back costs a CUDA device a sync
                    divergence.check(config, out, saved_step)

                if step % 10 == 0 or step == stop - 1:
                    elapsed = time.perf_counter() - start - eval_seconds()
                    progress.set_postfix(
                        {
                            'loss': f'{smoothed.item():.3f}',
                            'synthetic tok/s': f'{tokens_per_step * (finished - done) / elapsed:,.0f}',
                        },
                        refresh=False,
                    )

                if exists(stop_request.received):
                    save(finished)
                    progress.close()
                    write_evaluations(zero_shot, out, config)
                    log(
                        f'{stop_request.received}: stopped after step {finished} of {steps} and saved checkpoint to '
                        f'{out}; continue with `{resume_command(out, args)}`'
                    )
                    raise SystemExit(130)

                if config['save_every'] > 0 and finished % config['save_every'] == 0 and finished < stop:
                    save(finished)

            elapsed = time.perf_counter() - start - eval_seconds()
            save(stop)

    final_loss, smoothed_loss = loss.item(), smoothed.item()
    ran = stop - done
    left = f'; {steps - stop} steps left: continue with `{resume_command(out, args)}`' if stop < steps else ''
    log(f'saved checkpoint to {out} (step {stop} of {steps}{left})')
    write_evaluations(zero_shot, out, config)
    if exists(best):
        last = history[-1]
        kept = f', saved to {best_path(out)}' if config['keep_best'] else ''
        log(
            f'best zero-shot evaluation: {best["bits_per_byte"]:.3f} bits/byte at step {best["step"]}{kept}; '
            f'last: {last["bits_per_byte"]:.3f} at step {last["step"]}'
        )
    evaluating = f' (and {zero_shot.seconds:.1f}s of zero-shot evaluation)' if exists(zero_shot) else ''
    log(
        f'{ran} steps in {elapsed:.1f}s on {device}{evaluating}: final loss {final_loss:.4f} (smoothed '
        f'{smoothed_loss:.4f} nats, {smoothed_loss / math.log(2):.2f} bits/byte on synthetic data), '
        f'{tokens_per_step * ran / elapsed:,.0f} synthetic tokens/s'
    )
    return {**snapshot(stop), 'seconds': elapsed}


def add_parser(commands):
    """`up-fast pretrain` and its options, on the subparsers of `build_parser`."""
    c = DEFAULT_CONFIG

    p = commands.add_parser(
        'pretrain',
        formatter_class=HelpFormatter,
        help='pre-train a small byte-level transformer on synthetic data and save a checkpoint',
        description=paragraph(
            'Pre-train a small byte-level TransformerWrapper (256 tokens) with up_fast.UniversalPretrainWrapper '
            "on synthetic data only, and save a checkpoint. Every --eval-every steps the model's zero-shot bits per "
            'byte on real text are measured, printed, written to a CSV beside the checkpoint and plotted in a PNG, '
            'with in-context Markov models and uniform guessing as baselines (see `up-fast eval --help`). '
            'The defaults take a few minutes on 2 CPU cores.'
        ),
        epilog=(
            'examples:\n'
            f'  up-fast pretrain                              the default run; writes {DEFAULT_CHECKPOINT}, its '
            '.eval.csv and .eval.png\n'
            '  up-fast pretrain --steps 50 --out /tmp/quick.pt\n'
            '  up-fast pretrain --source xt --gru --dim 256 --device cuda\n'
            '  up-fast pretrain --eval-every 50 --eval-text README.md\n'
            '  up-fast pretrain --stop-after 600             half the run now...\n'
            f'  up-fast pretrain --resume {DEFAULT_CHECKPOINT}   ...the rest later, exactly as one run\n'
            f'  up-fast pretrain --resume {DEFAULT_CHECKPOINT} --steps 2000 --override   extend a run\n'
            '  up-fast pretrain --force                      overwrite the checkpoint of an earlier run'
        ),
    )
    p.add_argument(
        '--source',
        choices=SOURCES,
        default=None,
        help=(
            'the synthetic data: "paper" is the published method (the author\'s generator, a 4-layer LSTM re-drawn '
            'every step, and the author\'s buffer algorithm, UniversalPretrainWrapper.paper); "xt" is x-transformers\' '
            'generator (one LSTM or GRU layer as wide as the model, re-drawn every --reset-every steps) and buffer '
            'algorithm (default: %(default)s)'
        ),
    )
    p.add_argument(
        '--steps',
        type=positive_int,
        metavar='N',
        default=None,
        help=(
            f"training steps in the whole run, one synthetic batch each (default: {c['steps']}, or the resumed run's "
            'own)'
        ),
    )
    p.add_argument(
        '--batch-size',
        type=positive_int,
        metavar='N',
        default=None,
        help=(
            'sequences trained on per step; the buffer holds 20 times as many for xt, 40 for paper (default: '
            f'{c["batch_size"]})'
        ),
    )
    p.add_argument(
        '--seq-len',
        metavar='N',
        type=positive_int,
        default=None,
        help=f"length of the synthetic sequences and the model's context, in bytes (default: {c['seq_len']})",
    )
    p.add_argument(
        '--dim',
        metavar='N',
        type=positive_int,
        default=None,
        help=f"model width, also the width of the xt generator's LSTM/GRU (default: {c['dim']})",
    )
    p.add_argument(
        '--depth',
        metavar='N',
        type=positive_int,
        default=None,
        help=f'number of transformer layers (default: {c["depth"]})',
    )
    p.add_argument(
        '--heads',
        metavar='N',
        type=positive_int,
        default=None,
        help=f'attention heads per layer (default: {c["heads"]})',
    )
    p.add_argument(
        '--lr',
        metavar='LR',
        type=positive_float,
        default=None,
        help=f'peak AdamW learning rate, after a linear warm-up, decayed to a tenth by a cosine (default: {c["lr"]})',
    )
    p.add_argument(
        '--seed',
        type=int,
        metavar='SEED',
        default=None,
        help=f'seeds the weights, the buffer and every draw: the same seed repeats a run (default: {c["seed"]})',
    )
    p.add_argument(
        '--prefetch',
        action='store_true',
        help=(
            "make the next step's synthetic batch while the transformer trains on this one (on a GPU, on a side "
            'stream); the same data and losses as without it (default: off)'
        ),
    )
    p.add_argument(
        '--gru',
        action='store_true',
        default=None,
        help=(
            'xt source only: a GRU instead of an LSTM as the random "turing machine" that generates the data (default: '
            'LSTM)'
        ),
    )
    p.add_argument(
        '--num-reset',
        metavar='N',
        type=non_negative_int,
        default=None,
        help=(
            'xt source only: buffer rows reset to fresh noise every step, even, at most the buffer less a batch '
            f"(default: {c['num_reset']}; x-transformers' own default is 20)"
        ),
    )
    p.add_argument(
        '--reset-every',
        metavar='N',
        type=non_negative_int,
        default=None,
        help=(
            "xt source only: re-draw the generator's random weights every this many steps, 0 for never: a new machine "
            f'brings new kinds of structure (default: {c["reset_turing_machine_every"]})'
        ),
    )
    p.add_argument(
        '--eval-every',
        metavar='N',
        type=non_negative_int,
        default=None,
        help=(
            'measure zero-shot bits per byte on --eval-text every N steps (and before the first and after the last), '
            f"0 for never (default: {EVAL_EVERY}, or the resumed run's own)"
        ),
    )
    p.add_argument(
        '--eval-text',
        metavar='FILE',
        default=None,
        help=f'real text for those measurements (default: the file `up-fast eval` uses, here {default_text_file()})',
    )
    p.add_argument(
        '--eval-bytes',
        metavar='N',
        type=non_negative_int,
        default=None,
        help=(
            'use at most this many bytes from the start of --eval-text, 0 for all: more is steadier but slower '
            f'(default: {EVAL_BYTES})'
        ),
    )
    p.add_argument(
        '--out',
        metavar='PATH',
        default=None,
        help=(
            'where to save the checkpoint, checked before training starts; the evaluations go beside it as PATH with '
            f'.eval.csv and .eval.png (default: {DEFAULT_CHECKPOINT}, or the resumed checkpoint)'
        ),
    )
    p.add_argument(
        '--force',
        action='store_true',
        help='overwrite --out if it exists (default: refuse, unless it is the checkpoint being resumed)',
    )
    p.add_argument(
        '--save-every',
        metavar='N',
        type=non_negative_int,
        default=None,
        help=(
            'save the checkpoint every N steps, 0 for only at the end; it is also saved on Ctrl-C or SIGTERM, after '
            f'the step under way (default: with each evaluation, else every {EVAL_EVERY})'
        ),
    )
    p.add_argument(
        '--keep-best',
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            'save the model of the best zero-shot evaluation beside --out as PATH with .best.pt, for `up-fast eval` '
            'and `sample` (default: on when evaluating)'
        ),
    )
    p.add_argument(
        '--resume',
        metavar='PATH',
        default=None,
        help=(
            'continue the run saved in this checkpoint, exactly where it stopped: same data stream, model, optimizer, '
            'schedule and smoothed loss; options that disagree with its configuration are an error, but see --override'
        ),
    )
    p.add_argument(
        '--override',
        action='store_true',
        help=(
            'with --resume: apply the options given that a run can change (--lr, --steps, --eval-every, --eval-text, '
            '--eval-bytes, --save-every, --keep-best), printing each change (default: refuse them)'
        ),
    )
    p.add_argument(
        '--stop-after',
        metavar='N',
        type=positive_int,
        default=None,
        help=(
            'stop after N steps of this invocation and save; the schedule still spans --steps, and --resume continues '
            '(default: run to the end)'
        ),
    )
    add_device_option(p)
    p.set_defaults(run=run)
