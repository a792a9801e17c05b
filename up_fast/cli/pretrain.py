"""`up-fast pretrain`: pre-train a small byte-level transformer on synthetic data and save a
checkpoint, with zero-shot bits per byte on real text along the way, written to a CSV and plotted."""

from __future__ import annotations

import csv
import math
import textwrap
import time
from pathlib import Path

import torch

from x_transformers import TransformerWrapper

from up_fast import __version__
from up_fast.cli.baselines import BASELINE_LABELS, baseline_bits, best_markov, predicted_positions, versus_counting
from up_fast.cli.checkpoint import check_out_path, load_checkpoint, load_state, save_checkpoint
from up_fast.cli.common import (
    DEFAULT_CHECKPOINT, DEFAULT_CONFIG, SOURCES, CLIError, HelpFormatter, add_device_option, bits_per_byte, build,
    config_summary, default_text_file, log, non_negative_int, one_line, paragraph, pick_device, positive_float,
    positive_int, read_text,
)
from up_fast.helpers import default, exists


def lr_lambda(warmup: int, steps: int):
    # linear warm-up to the full lr, then cosine decay to a tenth of it
    def fn(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1. + math.cos(math.pi * min(progress, 1.)))
    return fn


EVAL_EVERY = 100            # pretrain: steps between zero-shot evaluations
EVAL_BYTES = 16 * 1024      # pretrain: bytes of the eval text used, so that an evaluation stays cheap


def eval_files(out: Path) -> tuple[Path, Path]:
    """The CSV and the PNG of the zero-shot evaluations, beside the checkpoint."""
    return out.with_suffix('.eval.csv'), out.with_suffix('.eval.png')


def check_source_options(config: dict, args):
    # the paper's generator and schedule are fixed: options of the x-transformers generator do not apply
    if config['source'] == 'paper':
        if args.gru:
            raise CLIError('--gru chooses the x-transformers generator\'s network: use it with --source xt (the paper\'s generator is a 4-layer LSTM)')
        if args.reset_every != DEFAULT_CONFIG['reset_turing_machine_every']:
            raise CLIError('--reset-every applies to --source xt: the paper\'s generator is re-drawn every step')


EVAL_COLUMNS = ('step', 'synthetic_tokens', 'bits_per_byte', 'train_loss')


def write_eval_csv(path: Path, history: list[dict], baselines: dict[str, float]):
    """One row per evaluation; the baselines, constant over the run, as columns of every row."""
    with open(path, 'w', newline = '') as file:
        writer = csv.writer(file)
        writer.writerow([*EVAL_COLUMNS, *baselines])
        for record in history:
            loss = record['train_loss']
            writer.writerow([record['step'], record['synthetic_tokens'], f"{record['bits_per_byte']:.6f}",
                             '' if loss is None else f'{loss:.6f}', *(f'{bits:.6f}' for bits in baselines.values())])


def plot_eval(path: Path, history: list[dict], baselines: dict[str, float], title: str) -> bool:
    """Bits per byte against synthetic tokens seen, the baselines as horizontal lines. False when
    matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    figure, axes = plt.subplots(figsize = (8, 5))
    tokens = [record['synthetic_tokens'] for record in history]
    axes.plot(tokens, [record['bits_per_byte'] for record in history], marker = 'o', color = 'black', label = 'model (step 0: untrained)')
    for index, (name, bits) in enumerate(baselines.items()):
        axes.axhline(bits, linestyle = '--', linewidth = 1, color = f'C{index}', label = f'{BASELINE_LABELS[name]} ({bits:.2f})')
    axes.set_xlabel('synthetic tokens seen')
    axes.set_ylabel('bits per byte (lower is better)')
    axes.set_title(title, fontsize = 9)
    axes.grid(alpha = 0.3)
    axes.legend(fontsize = 8)
    figure.tight_layout()
    figure.savefig(path, dpi = 120)
    plt.close(figure)
    return True


class ZeroShotEval:
    """Zero-shot bits per byte of the model on a bounded piece of real text, at intervals during
    pre-training, with the in-context baselines for scale. Reads nothing from the training stream:
    a run with evaluations trains exactly as one without."""

    def __init__(self, config: dict, history: list[dict], device: torch.device):
        self.every = config['eval_every']
        self.path = Path(default(config['eval_text'], default_text_file()))
        self.data = read_text(self.path, config['eval_bytes'])
        self.seq_len = config['seq_len']
        self.tokens_per_step = config['batch_size'] * config['seq_len']
        self.device = device
        self.history = history
        if predicted_positions(self.data, self.seq_len) == 0:
            raise CLIError(f'--eval-text {self.path} holds {len(self.data)} byte(s): too few to predict any in windows of {self.seq_len}')
        self.baselines = baseline_bits(self.data, self.seq_len)
        self.seconds = 0.

    def due(self, step: int, steps: int) -> bool:
        return step == 0 or step % self.every == 0 or step == steps

    def __call__(self, model: TransformerWrapper, step: int, train_loss: float | None) -> str:
        start = time.perf_counter()
        bits = bits_per_byte(model, self.data, self.seq_len, 32, self.device)
        self.seconds += time.perf_counter() - start

        self.history[:] = [record for record in self.history if record['step'] < step]     # a resumed run may repeat a step
        self.history.append(dict(step = step, synthetic_tokens = step * self.tokens_per_step, bits_per_byte = bits, train_loss = train_loss))

        side, margin = versus_counting(bits, self.baselines)
        best = best_markov(self.baselines)
        loss = f', train loss {train_loss:.3f}' if exists(train_loss) else ' (untrained)'
        return (f'step {step}: {bits:.3f} bits/byte zero-shot on {self.path.name}{loss}; '
                f'{margin:.2f} {side} the best in-context Markov model ({BASELINE_LABELS[best]}: {self.baselines[best]:.3f})')

    def save(self, out: Path, title: str) -> list[str]:
        csv_path, png_path = eval_files(out)
        write_eval_csv(csv_path, self.history, self.baselines)
        if plot_eval(png_path, self.history, self.baselines, title):
            return [f'zero-shot evaluations: {csv_path}, plotted in {png_path}']
        return [f'zero-shot evaluations: {csv_path} (matplotlib is missing: pip install "up-fast[cli]" for the PNG plot as well)']



def run(args) -> dict:
    try:
        from tqdm import tqdm
    except ImportError:
        raise CLIError('the progress bar needs tqdm: pip install "up-fast[cli]"') from None

    if exists(args.resume):
        # the run's own configuration; --steps may extend it (the lr schedule then stretches), and
        # the evaluation options given here replace the run's own
        checkpoint = load_checkpoint(args.resume)
        missing = {'optimizer', 'scheduler'} - set(checkpoint)
        if missing:
            raise CLIError(f'{args.resume} cannot be resumed: it lacks {", ".join(sorted(missing))} (written by an older up-fast)')
        config = checkpoint['config']
        config['steps'] = default(args.steps, config['steps'])
        for key in ('eval_every', 'eval_text', 'eval_bytes'):
            config[key] = default(getattr(args, key), config.get(key))
        config['eval_every'] = default(config['eval_every'], 0)        # older checkpoints: no evaluations
        config['eval_bytes'] = default(config['eval_bytes'], EVAL_BYTES)
    else:
        checkpoint = None
        config = {**DEFAULT_CONFIG, **{key: getattr(args, key) for key in ('batch_size', 'seq_len', 'dim', 'depth', 'heads', 'lr', 'seed', 'source')}}
        config['steps'] = default(args.steps, DEFAULT_CONFIG['steps'])
        config['gru'] = args.gru
        config['reset_turing_machine_every'] = args.reset_every
        config['warmup'] = min(config['warmup'], max(1, config['steps'] // 10))
        config['eval_every'] = default(args.eval_every, EVAL_EVERY)
        config['eval_text'] = args.eval_text          # None: the default text, wherever Python is
        config['eval_bytes'] = default(args.eval_bytes, EVAL_BYTES)
        check_source_options(config, args)

    out = Path(default(args.out, args.resume or DEFAULT_CHECKPOINT))
    check_out_path(out, args.resume, args.force)

    device = pick_device(args.device)
    torch.manual_seed(config['seed'])

    wrapper = build(config, device)
    wrapper.train()
    wrapper.prefetch = args.prefetch        # how the data is made, not what: not part of the run's configuration

    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr = config['lr'], weight_decay = config['weight_decay'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config['warmup'], config['steps']))

    smoothed = None
    history = []
    if exists(checkpoint):
        load_state(wrapper, checkpoint['wrapper'], args.resume, checkpoint.get('version'))
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
            scheduler.load_state_dict(checkpoint['scheduler'])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CLIError(f'{args.resume} cannot be resumed: its optimizer state does not fit the model ({one_line(err)}); '
                           f'start a new run with `up-fast pretrain`') from None
        # the running average continues, so that a resumed run prints what the whole run prints
        if 'smoothed_loss' in checkpoint:
            smoothed = torch.tensor(checkpoint['smoothed_loss'], dtype = torch.float32, device = device)
        history = list(checkpoint.get('eval_history', []))

    steps, tokens_per_step = config['steps'], config['batch_size'] * config['seq_len']
    done = wrapper.num_steps
    if done >= steps:
        raise CLIError(f'the run has done {done} of its {steps} steps: nothing to resume (pass --steps N, N > {done}, to extend it)')
    stop = steps if not exists(args.stop_after) else min(steps, done + args.stop_after)

    zero_shot = ZeroShotEval(config, history, device) if config['eval_every'] > 0 else None

    resuming = f', resuming at step {done}' if done else ''
    log(f'pre-training {sum(p.numel() for p in wrapper.model.parameters()):,} parameters ({config_summary(config)}) for {steps} steps on {device}{resuming}')
    if exists(zero_shot):
        log(f'zero-shot bits per byte every {zero_shot.every} steps on {zero_shot.path} ({len(zero_shot.data):,} bytes in windows of {config["seq_len"]}); '
            + ', '.join(f'{BASELINE_LABELS[name]} {bits:.3f}' for name, bits in zero_shot.baselines.items()))
        if done == 0:
            log(zero_shot(wrapper.model, 0, None))

    def eval_seconds():
        # time spent evaluating since training started, left out of the training speed
        return zero_shot.seconds - untrained_eval_seconds if exists(zero_shot) else 0.

    untrained_eval_seconds = zero_shot.seconds if exists(zero_shot) else 0.
    start = time.perf_counter()
    progress = tqdm(range(done, stop), initial = done, total = steps, desc = 'pretrain', unit = 'step', dynamic_ncols = True)

    for step in progress:
        loss = wrapper()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wrapper.model.parameters(), config['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none = True)
        scheduler.step()

        # the smoothed loss stays on the device, read back only when the bar is redrawn
        loss = loss.detach()
        smoothed = loss.clone() if not exists(smoothed) else smoothed.lerp_(loss, 0.05)

        if exists(zero_shot) and zero_shot.due(step + 1, steps):
            progress.write(zero_shot(wrapper.model, step + 1, smoothed.item()))

        if step % 10 == 0 or step == stop - 1:
            elapsed = time.perf_counter() - start - eval_seconds()
            progress.set_postfix({'loss': f'{smoothed.item():.3f}', 'synthetic tok/s': f'{tokens_per_step * (step + 1 - done) / elapsed:,.0f}'}, refresh = False)

    progress.close()
    elapsed = time.perf_counter() - start - eval_seconds()
    final_loss, smoothed_loss = loss.item(), smoothed.item()

    if not math.isfinite(final_loss):
        raise CLIError(f'training diverged: the final loss is {final_loss} (try a lower --lr)')

    checkpoint = dict(
        config = config,
        model = wrapper.model.state_dict(),
        wrapper = wrapper.state_dict(),     # the buffer, the step counter and the generator's weights too
        optimizer = optimizer.state_dict(),
        scheduler = scheduler.state_dict(),
        final_loss = final_loss,
        smoothed_loss = smoothed_loss,
        eval_history = history,
        seconds = elapsed,
        version = __version__,
    )
    save_checkpoint(checkpoint, out)

    ran = stop - done
    left = f'; {steps - stop} steps left: continue with `up-fast pretrain --resume {out}`' if stop < steps else ''
    log(f'saved checkpoint to {out} (step {stop} of {steps}{left})')
    if exists(zero_shot):
        for line in zero_shot.save(out, f'zero-shot bits per byte on {zero_shot.path.name} during pre-training\n{config_summary(config)}'):
            log(line)
    evaluating = f' (and {zero_shot.seconds:.1f}s of zero-shot evaluation)' if exists(zero_shot) else ''
    log(f'{ran} steps in {elapsed:.1f}s on {device}{evaluating}: final loss {final_loss:.4f} (smoothed {smoothed_loss:.4f} nats, '
        f'{smoothed_loss / math.log(2):.2f} bits/byte on synthetic data), {tokens_per_step * ran / elapsed:,.0f} synthetic tokens/s')
    return checkpoint


def add_parser(commands):
    """`up-fast pretrain` and its options, on the subparsers of `build_parser`."""
    c = DEFAULT_CONFIG

    p = commands.add_parser(
        'pretrain', formatter_class = HelpFormatter,
        help = 'pre-train a small byte-level transformer on synthetic data and save a checkpoint',
        description = paragraph('Pre-train a small byte-level TransformerWrapper (256 tokens) with up_fast.UniversalPretrainWrapper '
                      'on synthetic data only, and save a checkpoint. Every --eval-every steps the model\'s zero-shot bits per '
                      'byte on real text are measured, printed, written to a CSV beside the checkpoint and plotted in a PNG, '
                      'with in-context Markov models and uniform guessing as baselines (see `up-fast eval --help`). '
                      'The defaults take a few minutes on 2 CPU cores.'),
        epilog = textwrap.dedent(f"""\
            examples:
              up-fast pretrain                              the default run; writes {DEFAULT_CHECKPOINT}, its .eval.csv and .eval.png
              up-fast pretrain --steps 50 --out /tmp/quick.pt
              up-fast pretrain --source xt --gru --dim 256 --device cuda
              up-fast pretrain --eval-every 50 --eval-text README.md
              up-fast pretrain --stop-after 600             half the run now...
              up-fast pretrain --resume {DEFAULT_CHECKPOINT}   ...the rest later, exactly as one run
              up-fast pretrain --force                      overwrite the checkpoint of an earlier run"""),
    )
    p.add_argument('--source', choices = SOURCES, default = c['source'],
                   help = 'the synthetic data: "paper" is the published method (the author\'s generator, a 4-layer LSTM re-drawn every step, '
                          'and the author\'s buffer algorithm, UniversalPretrainWrapper.paper); "xt" is x-transformers\' generator '
                          '(one LSTM or GRU layer as wide as the model, re-drawn every --reset-every steps) and buffer algorithm (default: %(default)s)')
    p.add_argument('--steps', type = positive_int, metavar = 'N', default = None, help = f'training steps in the whole run, one synthetic batch each (default: {c["steps"]}, or the resumed run\'s own)')
    p.add_argument('--batch-size', type = positive_int, metavar = 'N', default = c['batch_size'], help = 'sequences trained on per step; the buffer holds 20 times as many for xt, 40 for paper (default: %(default)s)')
    p.add_argument('--seq-len', metavar = 'N', type = positive_int, default = c['seq_len'], help = 'length of the synthetic sequences and the model\'s context, in bytes (default: %(default)s)')
    p.add_argument('--dim', metavar = 'N', type = positive_int, default = c['dim'], help = 'model width, also the width of the xt generator\'s LSTM/GRU (default: %(default)s)')
    p.add_argument('--depth', metavar = 'N', type = positive_int, default = c['depth'], help = 'number of transformer layers (default: %(default)s)')
    p.add_argument('--heads', metavar = 'N', type = positive_int, default = c['heads'], help = 'attention heads per layer (default: %(default)s)')
    p.add_argument('--lr', metavar = 'LR', type = positive_float, default = c['lr'], help = 'peak AdamW learning rate, after a linear warm-up, decayed to a tenth by a cosine (default: %(default)s)')
    p.add_argument('--seed', type = int, metavar = 'SEED', default = c['seed'], help = 'seeds the weights, the buffer and every draw: the same seed repeats a run (default: %(default)s)')
    p.add_argument('--prefetch', action = 'store_true', help = 'make the next step\'s synthetic batch while the transformer trains on this one (on a GPU, on a side stream); the same data and losses as without it (default: off)')
    p.add_argument('--gru', action = 'store_true', help = 'xt source only: a GRU instead of an LSTM as the random "turing machine" that generates the data (default: LSTM)')
    p.add_argument('--reset-every', metavar = 'N', type = non_negative_int, default = c['reset_turing_machine_every'], help = 'xt source only: re-draw the generator\'s random weights every this many steps, 0 for never: a new machine brings new kinds of structure (default: %(default)s)')
    p.add_argument('--eval-every', metavar = 'N', type = non_negative_int, default = None, help = f'measure zero-shot bits per byte on --eval-text every N steps (and before the first and after the last), 0 for never (default: {EVAL_EVERY}, or the resumed run\'s own)')
    p.add_argument('--eval-text', metavar = 'FILE', default = None, help = f'real text for those measurements (default: the file `up-fast eval` uses, here {default_text_file()})')
    p.add_argument('--eval-bytes', metavar = 'N', type = non_negative_int, default = None, help = f'use at most this many bytes from the start of --eval-text, 0 for all: more is steadier but slower (default: {EVAL_BYTES})')
    p.add_argument('--out', metavar = 'PATH', default = None, help = f'where to save the checkpoint, checked before training starts; the evaluations go beside it as PATH with .eval.csv and .eval.png (default: {DEFAULT_CHECKPOINT}, or the resumed checkpoint)')
    p.add_argument('--force', action = 'store_true', help = 'overwrite --out if it exists (default: refuse, unless it is the checkpoint being resumed)')
    p.add_argument('--resume', metavar = 'PATH', default = None, help = 'continue the run saved in this checkpoint, exactly where it stopped: same data stream, model, optimizer, schedule and smoothed loss (its configuration wins over the options above, but --steps and the --eval options)')
    p.add_argument('--stop-after', metavar = 'N', type = positive_int, default = None, help = 'stop after N steps of this invocation and save; the schedule still spans --steps, and --resume continues (default: run to the end)')
    add_device_option(p)
    p.set_defaults(run = run)
