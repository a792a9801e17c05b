"""The `up-fast` console script: pre-train a small byte-level transformer on synthetic data,
look at the synthetic data, and measure what the pre-training bought on real text.

    up-fast pretrain                    # a few minutes on 2 CPU cores, zero-shot bits per byte along the way
    up-fast sample                      # the synthetic data: noise, structure or collapse, step by step
    up-fast eval                        # bits per byte on real text, against in-context counting
    up-fast finetune                    # fine-tuning on real text: the pre-trained start against scratch
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from x_transformers import Decoder, TransformerWrapper

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper, __version__
from up_fast.baselines import MARKOV_ORDERS, MARKOV_STRENGTH, markov_bits_per_byte, predicted_positions, split_windows
from up_fast.helpers import default, exists
from up_fast.row_stats import SHORT_PERIOD, BufferStats, buffer_stats, zlib_ratio

# the embedded default configuration: `up-fast pretrain` takes a few minutes on 2 CPU cores

DEFAULT_CONFIG = dict(
    num_tokens = 256,                   # bytes
    dim = 128,
    depth = 2,
    heads = 4,
    seq_len = 128,
    batch_size = 16,
    steps = 1200,
    lr = 1e-3,                          # AdamW, linear warm-up then cosine decay to lr / 10
    warmup = 50,
    weight_decay = 0.01,
    grad_clip = 1.,
    gru = False,                        # the turing machine: an LSTM, or a GRU
    num_reset = 20,                     # buffer rows reset to fresh noise every step
    seed_length = 8,
    reset_turing_machine_every = 1,     # re-draw the turing machine's weights every n steps (0: never), as the paper does
    seed = 0,
    source = 'paper',                   # the synthetic data: 'paper' (the author's generator and buffer) or 'xt' (x-transformers')
)

SOURCES = ('paper', 'xt')

DEFAULT_CHECKPOINT = 'checkpoints/up_fast.pt'
SAMPLE_STEPS = 100
UNIFORM_BITS = 8.                       # log2(256): a byte guessed uniformly at random

DESCRIPTION = """\
Universal pre-training (Bloem 2025, arXiv 2506.20057) trains a transformer without any real data:
random token sequences are passed again and again through randomly initialised small recurrent
networks, and each pass adds computable structure that the transformer learns to predict. The
paper's finding is that what is learned this way transfers: the pre-trained model predicts real
text better than an untrained one, before it has seen any."""

EPILOG = """\
examples:
  up-fast pretrain                            train the default model (a few minutes on 2 CPU cores)
  up-fast pretrain --steps 2000 --dim 256     longer, wider
  up-fast sample                              statistics and rows of the buffer just trained on
  up-fast sample --fresh --plot buffer.png    watch what the generator makes of a fresh buffer, plotted
  up-fast eval                                bits per byte: trained vs untrained vs in-context counting
  up-fast eval --text README.md --max-bytes 0 --json
  up-fast finetune                            fine-tune on real text: pre-trained start vs the same model from scratch

run `up-fast COMMAND --help` for the options of each command."""


class CLIError(Exception):
    """A user error: reported in one line, with a non-zero exit status, without a traceback."""


# helpers


def log(*args):
    print(*args, flush=True)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text!r}') from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be an integer >= 0, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be an integer >= 0, got {value}')
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive finite number, got {value}')
    return value


def device_name(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f'must be a torch device such as cpu, cuda or cuda:1, got {text!r}') from None
    return str(device)


def one_line(err: Exception, limit: int = 300) -> str:
    """The whole message of an exception on one line (lines joined by '; '), cut at `limit` characters."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = '; '.join(lines)
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + '...'
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


def pick_device(requested: str | None) -> torch.device:
    device = torch.device(default(requested, 'cuda' if torch.cuda.is_available() else 'cpu'))

    if device.type == 'meta':
        raise CLIError('--device meta holds tensor shapes but no values: nothing can be trained or measured on it; use --device cpu or cuda')
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise CLIError('--device mps is not available: it needs a Mac with Apple silicon and a PyTorch built with MPS; use --device cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CLIError(f'--device {device} is not available on this machine (torch.cuda.is_available() is False); try --device cpu')
    if device.type == 'cuda' and exists(device.index) and device.index >= torch.cuda.device_count():
        raise CLIError(f'--device {device} is not available on this machine: it has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}')

    try:
        torch.empty(1, device = device)
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        # the first sentence only: some backends list every registered backend after it
        reason = str(err).strip().split('. ')[0].splitlines()[0][:160]
        raise CLIError(f'--device {device} is not available on this machine ({reason}); try --device cpu') from None
    return device


def default_text_file() -> Path:
    """A text file that ships with Python itself: the licence next to the stdlib, else argparse's source."""
    license_file = Path(os.__file__).parent / 'LICENSE.txt'
    if license_file.is_file():
        return license_file
    return Path(argparse.__file__)


# model, wrapper, checkpoint


def build_model(config: dict) -> TransformerWrapper:
    return TransformerWrapper(
        num_tokens = config['num_tokens'],
        max_seq_len = config['seq_len'],
        attn_layers = Decoder(dim = config['dim'], depth = config['depth'], heads = config['heads'])
    )


def build_wrapper(model: TransformerWrapper, config: dict) -> UniversalPretrainWrapper:
    if config['source'] == 'paper':
        return build_paper_wrapper(model, config)

    seq_len, batch_size = config['seq_len'], config['batch_size']
    buffer_size = batch_size * 20
    num_reset = min(config['num_reset'], buffer_size - batch_size) // 2 * 2    # even, and leaves room for the conditions

    data_generator = SyntheticDataGenerator(
        dim = config['dim'],
        num_tokens = config['num_tokens'],
        max_seq_len = seq_len,
        use_gru = config['gru']
    )

    try:
        return UniversalPretrainWrapper(
            model,
            data_generator = data_generator,
            buffer_size = buffer_size,
            num_reset = num_reset,
            batch_size = batch_size,
            seq_len = seq_len,
            seed_length = min(config['seed_length'], seq_len - 1),
            reset_turing_machine_every = config['reset_turing_machine_every'],
            rng_seed = config['seed'] % 2 ** 63     # per-step draws: a resumed run continues exactly
        )
    except (TypeError, ValueError) as err:
        raise CLIError(f'cannot build the wrapper from this configuration: {err}') from None


def build_paper_wrapper(model: TransformerWrapper, config: dict) -> UniversalPretrainWrapper:
    """The published method: the author's generator (a 4-layer LSTM, re-drawn every step) and buffer algorithm."""
    try:
        return UniversalPretrainWrapper.paper(
            model,
            batch_size = config['batch_size'],
            seq_len = config['seq_len'],
            rng_seed = config['seed'] % 2 ** 63,
        )
    except (TypeError, ValueError) as err:
        raise CLIError(f'cannot build the wrapper from this configuration: {err}') from None


def check_source_options(config: dict, args):
    # the paper's generator and schedule are fixed: options of the x-transformers generator do not apply
    if config['source'] == 'paper':
        if args.gru:
            raise CLIError('--gru chooses the x-transformers generator\'s network: use it with --source xt (the paper\'s generator is a 4-layer LSTM)')
        if args.reset_every != DEFAULT_CONFIG['reset_turing_machine_every']:
            raise CLIError('--reset-every applies to --source xt: the paper\'s generator is re-drawn every step')


def build(config: dict, device: torch.device) -> UniversalPretrainWrapper:
    """Model and wrapper from a configuration, on `device`. Seed torch first for a repeatable init."""
    return build_wrapper(build_model(config), config).to(device)


def describe_file(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return 'the file is empty'
    with open(path, 'rb') as file:
        head = file.read(16)
    return f'{size:,} bytes beginning {head!r}, not the zip archive that torch.save writes'


def load_checkpoint(path: str | Path) -> dict:
    checkpoint = read_torch_file(path)
    missing = {'config', 'model', 'wrapper'} - set(checkpoint) if isinstance(checkpoint, dict) else {'a dict'}
    if missing:
        raise CLIError(f'{path} is a PyTorch file but not an up-fast checkpoint: it lacks {", ".join(sorted(missing))} (`up-fast pretrain` writes them)')
    # a checkpoint from before the `source` option was written with the x-transformers generator
    checkpoint['config'] = {**DEFAULT_CONFIG, 'source': 'xt', **checkpoint['config']}
    return checkpoint


def read_torch_file(path: str | Path):
    """What torch.load (weights_only) finds in a file, or a one-line CLIError that says what the file is."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f'{path} is a directory, not a checkpoint file (`up-fast pretrain` writes {DEFAULT_CHECKPOINT} by default)')
    if not path.is_file():
        raise CLIError(f'checkpoint not found: {path} (write one with `up-fast pretrain --out {path}`)')
    try:
        checkpoint = torch.load(path, map_location = 'cpu', weights_only = True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by `up-fast pretrain`') from None
        raise CLIError(f'{path} holds objects other than tensors and plain data, which up-fast does not load (weights_only): {one_line(err)}') from None
    except Exception as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by `up-fast pretrain`') from None
        raise CLIError(f'cannot read checkpoint {path}, a damaged or truncated PyTorch file? ({one_line(err)}); write it again with `up-fast pretrain`') from None
    return checkpoint


def listed(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def state_mismatch(expected: dict, found: dict) -> str | None:
    """What keeps a state_dict from loading into a module, all of it on one line, or None."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [f'{key} is {tuple(found[key].shape)} in the file, {tuple(expected[key].shape)} in the model'
              for key in expected if key in found and hasattr(found[key], 'shape') and tuple(found[key].shape) != tuple(expected[key].shape)]

    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {listed(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {listed(unexpected)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatch(es): {listed(shapes, 3)}')
    return '; '.join(problems) if problems else None


def load_state(module: torch.nn.Module, state: dict, path: str | Path, version: str | None = None):
    """Strict load, or a one-line CLIError that says what does not fit and what to do."""
    mismatch = state_mismatch(module.state_dict(), state)
    written_by = f'up-fast {version}' if exists(version) else 'another up-fast'
    advice = (f'was it written by {written_by} (this is {__version__}) or edited? '
              f'Load it with the up-fast that wrote it, or write a new one with `up-fast pretrain`')
    if exists(mismatch):
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config: {mismatch}; {advice}')
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config ({one_line(err, 600)}); {advice}') from None


def config_summary(config: dict) -> str:
    if config['source'] == 'paper':
        source = 'paper source (the author\'s 4-layer LSTM generator and buffer)'
    else:
        source = f"xt source ({'GRU' if config['gru'] else 'LSTM'} generator)"
    return f"dim {config['dim']}, depth {config['depth']}, heads {config['heads']}, seq_len {config['seq_len']}, batch {config['batch_size']}, {source}"


# zero-shot evaluation on real text: `up-fast eval`, and `up-fast pretrain --eval-every`


def read_text(path: str | Path, max_bytes: int) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f'text file not found: {path}' if not path.exists() else f'not a text file: {path}')
    data = path.read_bytes()
    return data[:max_bytes] if max_bytes > 0 else data


@torch.no_grad()
def bits_per_byte(model: TransformerWrapper, data: bytes, seq_len: int, batch_size: int, device: torch.device) -> float:
    """Next-byte cross-entropy in bits, averaged over every predicted position of the
    non-overlapping windows of `seq_len` bytes (baselines.split_windows: the first byte of each
    window is context only). The baselines are scored on exactly these positions."""
    was_training = model.training
    model.eval()
    windows = [torch.tensor(list(window)) for window in split_windows(data, seq_len)]

    total_bits, count = 0., 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        for length in sorted({len(w) for w in chunk}):      # only the last window can be shorter
            x = torch.stack([w for w in chunk if len(w) == length]).to(device)  # (batch, length)
            logits = model(x)[:, :-1]                                           # (batch, length - 1, num_tokens)
            loss = F.cross_entropy(logits.transpose(1, 2).float(), x[:, 1:], reduction = 'sum')
            total_bits += loss.item() / math.log(2)
            count += x[:, 1:].numel()

    model.train(was_training)
    return total_bits / count


def markov_name(order: int) -> str:
    return f'markov_{order}'


BASELINE_LABELS = {
    **{markov_name(order): f'in-context Markov, order {order}' for order in MARKOV_ORDERS},
    'uniform': 'uniform guessing',
}


def baseline_bits(data: bytes, seq_len: int) -> dict[str, float]:
    """Bits per byte of the in-context Markov models and of uniform guessing, on the positions
    `bits_per_byte` scores a model of context `seq_len` on."""
    markov = markov_bits_per_byte(data, seq_len, MARKOV_ORDERS, MARKOV_STRENGTH)
    return {**{markov_name(order): bits for order, bits in markov.items()}, 'uniform': UNIFORM_BITS}


def best_markov(results: dict[str, float]) -> str:
    return min((markov_name(order) for order in MARKOV_ORDERS), key = results.__getitem__)


def versus_counting(bits: float, results: dict[str, float]) -> tuple[str, float]:
    """('below' or 'above', margin): which side of in-context counting `bits` is on, and by how much."""
    best = results[best_markov(results)]
    return ('below' if bits < best else 'above'), abs(bits - best)


# pretrain


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


def check_out_path(out: Path, resume: str | None, force: bool):
    """Refuse, before any training, a checkpoint path that cannot be written or that holds another run."""
    if out.is_dir():
        raise CLIError(f'--out {out} is a directory: give the checkpoint file to write, e.g. --out {out / "up_fast.pt"}')
    resuming_in_place = exists(resume) and out.exists() and out.resolve() == Path(resume).resolve()
    if out.exists() and not resuming_in_place and not force:
        raise CLIError(f'{out} already exists (the checkpoint of another run?): pass --force to overwrite it, '
                       f'`--resume {out}` to continue that run, or --out with another path')
    check_writable(out, 'the checkpoint', '--out')


def check_writable(path: Path, what: str, option: str):
    # make the folder and a file in it now, rather than fail when the work is done
    try:
        path.parent.mkdir(parents = True, exist_ok = True)
        with tempfile.NamedTemporaryFile(dir = path.parent, prefix = f'.{path.name}.', suffix = '.tmp'):
            pass
    except OSError as err:
        raise CLIError(f'cannot write {what} {path}: {err.strerror or err} ({err.filename or path.parent}); choose a writable {option}') from None


def save_checkpoint(checkpoint: dict, out: Path):
    # through a temporary file: an interrupted save leaves the previous checkpoint whole
    temporary = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    torch.save(checkpoint, temporary)
    os.replace(temporary, out)


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


def pretrain(args) -> dict:
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


# sample


def escape_byte(byte: int) -> str:
    char = chr(byte)
    if char == '\\':
        return '\\\\'
    if 0x20 <= byte < 0x7f:
        return char
    return {'\n': '\\n', '\t': '\\t', '\r': '\\r'}.get(char, f'\\x{byte:02x}')


def show_bytes(row: Tensor, width: int) -> str:
    """A row of byte ids as printable text at most `width` characters wide, unprintables escaped.
    A row cut short ends in '...' and never in half an escape."""
    pieces = [escape_byte(byte) for byte in row.tolist()]
    if sum(map(len, pieces)) <= width:
        return ''.join(pieces)

    text = ''
    for piece in pieces:
        if len(text) + len(piece) > width - 3:
            break
        text += piece
    return text + '...'


def show_rows(title: str, buffer: Tensor, rows: list[int], width: int):
    log(title)
    for index in rows:
        log(f'  row {index:4d}  zlib {zlib_ratio(buffer[index]):.2f}  |{show_bytes(buffer[index], width)}|')


STATS_HEADER = ' step   zlib q1 / median / q3   constant   periodic    cycling   distinct q1 / median / q3'


def stats_line(step: int, stats: BufferStats) -> str:
    zlib_q, distinct_q = stats.zlib, stats.distinct
    return (f'{step:5d}   {zlib_q[0]:5.2f} / {zlib_q[1]:5.2f} / {zlib_q[2]:5.2f}   {stats.constant:8.1%}   {stats.periodic:8.1%}   '
            f'{stats.cycling:8.1%}   {distinct_q[0]:6.1f} / {distinct_q[1]:6.1f} / {distinct_q[2]:6.1f}')


def plot_stats(path: Path, steps: list[int], stats: list[BufferStats], title: str) -> bool:
    """The buffer statistics over data steps, three panels. False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    figure, (ratio_axes, share_axes, distinct_axes) = plt.subplots(3, 1, figsize = (8, 9), sharex = True)

    for axes, field, label in ((ratio_axes, 'zlib', 'zlib ratio per row'), (distinct_axes, 'distinct', 'distinct tokens per row')):
        q1, median, q3 = zip(*(getattr(s, field) for s in stats))
        axes.fill_between(steps, q1, q3, alpha = 0.3, label = 'quartiles 1 to 3')
        axes.plot(steps, median, label = 'median')
        axes.set_ylabel(label)
        axes.legend(fontsize = 8)
        axes.grid(alpha = 0.3)

    for field in ('constant', 'periodic', 'cycling'):
        share_axes.plot(steps, [100 * getattr(s, field) for s in stats], label = f'{field} rows')
    share_axes.set_ylabel('% of buffer rows')
    share_axes.legend(fontsize = 8)
    share_axes.grid(alpha = 0.3)

    distinct_axes.set_xlabel('data step')
    ratio_axes.set_title(title, fontsize = 9)
    figure.tight_layout()
    figure.savefig(path, dpi = 120)
    plt.close(figure)
    return True


def sample(args):
    if args.fresh and exists(args.checkpoint):
        raise CLIError('--fresh and --checkpoint exclude each other: --fresh samples from a new wrapper, --checkpoint from a saved run')
    if exists(args.source) and exists(args.checkpoint):
        raise CLIError('--source applies to a fresh wrapper: a checkpoint keeps the source of its run')

    # after `up-fast pretrain`, its checkpoint, unless told otherwise
    checkpoint_path = args.checkpoint
    if not exists(checkpoint_path) and not args.fresh and not exists(args.source) and Path(DEFAULT_CHECKPOINT).is_file():
        checkpoint_path = DEFAULT_CHECKPOINT

    device = pick_device(args.device)
    plot_path = Path(args.plot) if exists(args.plot) else None
    if exists(plot_path) and plot_path.is_dir():
        raise CLIError(f'--plot {plot_path} is a directory: give the PNG file to write')
    if exists(plot_path):
        check_writable(plot_path, 'the plot', '--plot')

    if exists(checkpoint_path):
        checkpoint = load_checkpoint(checkpoint_path)
        # the run's own data stream continues, unless --seed asks for another
        config = {**checkpoint['config'], 'seed': default(args.seed, checkpoint['config']['seed'])}
        torch.manual_seed(config['seed'])
        wrapper = build(config, device)
        load_state(wrapper, checkpoint['wrapper'], checkpoint_path, checkpoint.get('version'))
        steps = default(args.steps, 0)
        found = ', found at the default path: pass --fresh to sample from a new wrapper instead' if not exists(args.checkpoint) else ''
        origin = f'checkpoint {checkpoint_path} (written by `up-fast pretrain`{found})'
    else:
        config = {**DEFAULT_CONFIG, 'seed': default(args.seed, DEFAULT_CONFIG['seed']), 'source': default(args.source, DEFAULT_CONFIG['source'])}
        torch.manual_seed(config['seed'])
        wrapper = build(config, device)
        steps = default(args.steps, SAMPLE_STEPS)
        origin = f'a fresh wrapper with the default configuration, seed {config["seed"]}'

    buffer_size, seq_len = wrapper.synth_data_buffer.shape
    start_step = int(wrapper.step)
    num_rows = min(args.rows, buffer_size)
    every = default(args.every, max(1, steps // 10))

    log(f'{origin}')
    log(f'{config_summary(config)}: buffer of {buffer_size} rows x {seq_len} bytes')
    log(f'per row: zlib = compressed / raw size (about 1.1 for noise, under 0.2 for a constant row, structure in between)\n'
        f'         constant = one byte repeated; periodic = row[i] == row[i + p] for all i, for some 1 < p <= {args.max_period}\n'
        f'         cycling = neither, but the second half of the row is periodic (p <= {args.max_period}); distinct = distinct bytes in the row')

    before = wrapper.synth_data_buffer.cpu().clone()     # (buffer_size, seq_len) uint8
    stats_steps, stats = [start_step], [buffer_stats(before, args.max_period)]
    log(STATS_HEADER)
    log(stats_line(start_step, stats[0]))

    for index in range(1, steps + 1):
        wrapper.data_step_()
        stats_steps.append(start_step + index)
        stats.append(buffer_stats(wrapper.synth_data_buffer, args.max_period))
        if index % every == 0 or index == steps:
            log(stats_line(start_step + index, stats[-1]))

    if steps == 0:
        show_rows(f'step {start_step}, the first {num_rows} rows', before, list(range(num_rows)), args.width)
    else:
        # the rows the generator wrote in the last step (the reset rows hold fresh noise instead)
        after = wrapper.synth_data_buffer.cpu()
        rows = wrapper.last_step_rows.condition_rows[:num_rows].tolist()
        show_rows(f'step {start_step}', before, rows, args.width)
        show_rows(f'step {start_step + steps}, the same rows, written by the generator in the last step', after, rows, args.width)

    if exists(plot_path):
        if plot_stats(plot_path, stats_steps, stats, f'buffer statistics, {origin.split(" (")[0]}\n{config_summary(config)}'):
            log(f'plot of the statistics over steps: {plot_path}')
        else:
            log('no plot: matplotlib is missing (pip install "up-fast[cli]")')
    return stats_steps, stats


# eval


def evaluate(args) -> dict:
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint['config']

    text_path = Path(default(args.text, default_text_file()))
    data = read_text(text_path, args.max_bytes)
    seq_len = config['seq_len']
    positions = predicted_positions(data, seq_len)
    if positions == 0:
        raise CLIError(f'{text_path} holds {len(data)} byte(s): at least 2 are needed to predict one')

    trained = build_model(config).to(device)
    load_state(trained, checkpoint['model'], args.checkpoint, checkpoint.get('version'))

    torch.manual_seed(args.seed)
    untrained = build_model(config).to(device)

    results = dict(
        pretrained = bits_per_byte(trained, data, seq_len, args.batch_size, device),
        untrained = bits_per_byte(untrained, data, seq_len, args.batch_size, device),
        **baseline_bits(data, seq_len),
    )
    best = min(results, key = results.__getitem__)
    side, margin = versus_counting(results['pretrained'], results)
    counting = best_markov(results)

    report = dict(
        checkpoint = str(args.checkpoint),
        text = str(text_path),
        bytes = len(data),
        predicted_bytes = positions,
        seq_len = seq_len,
        source = config['source'],
        steps = config['steps'],
        synthetic_tokens = int(checkpoint['wrapper']['step']) * config['batch_size'] * seq_len,
        markov_strength = MARKOV_STRENGTH,
        bits_per_byte = results,
        best = best,
        best_in_context_markov = counting,
        pretrained_vs_counting = dict(side = side, margin = margin),
    )

    if args.json:
        print(json.dumps(report, indent = 2), flush = True)
        return report

    labels = dict(pretrained = 'pre-trained (synthetic data only)', untrained = f'untrained (same config, seed {args.seed})', **BASELINE_LABELS)
    log(f'text: {text_path} ({len(data):,} bytes used, in windows of {seq_len}: {positions:,} bytes predicted, each from the bytes before it in its window)')
    log(f'model: {args.checkpoint} ({config_summary(config)}, {config["steps"]} steps)')
    log('bits per byte on the same predicted bytes (lower is better):')
    for name, bits in results.items():
        mark = '   <- best' if name == best else ''
        log(f'  {labels[name]:<40} {bits:6.3f}{mark}')
    log(f'best: {labels[best]} ({results[best]:.3f} bits per byte)')

    if side == 'below':
        verdict = (f'the pre-trained model is below in-context counting: {margin:.2f} bits per byte better than the best in-context Markov model '
                   f'({labels[counting]}), so it predicts more than can be counted in its own context')
    else:
        verdict = (f'the pre-trained model is above in-context counting: {margin:.2f} bits per byte worse than the best in-context Markov model '
                   f'({labels[counting]}); small models pre-trained for minutes usually are, the paper\'s large models are below it on real text')
    log(verdict)
    return report


# argument parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position = 32)


def paragraph(text: str) -> str:
    # descriptions are printed as written (for the examples), so wrap them here
    return textwrap.fill(text, width = 100)


def add_device_option(parser):
    parser.add_argument('--device', type = device_name, default = None,
                        help = 'torch device to run on (default: cuda if available, else cpu)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog = 'up-fast', description = DESCRIPTION, epilog = EPILOG, formatter_class = HelpFormatter)
    parser.add_argument('--version', action = 'version', version = f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest = 'command', metavar = 'COMMAND', title = 'commands')

    c = DEFAULT_CONFIG

    # pretrain

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
    p.set_defaults(run = pretrain)

    # sample

    s = commands.add_parser(
        'sample', formatter_class = HelpFormatter,
        help = 'show synthetic sequences from the buffer as text, with statistics per step',
        description = paragraph('Show what the synthetic data looks like: statistics of the buffer\'s rows every few data steps, '
                      'which tell noise, structure and collapse apart (quartiles of the per-row zlib compression ratio, the share '
                      'of constant, periodic and cycling rows, quartiles of distinct bytes per row), then rows of the buffer as text '
                      '(bytes outside printable ASCII are escaped: a newline shows as \\n, byte 0 as \\x00). '
                      f'After `up-fast pretrain` this is the buffer of its checkpoint ({DEFAULT_CHECKPOINT}) as saved; otherwise, '
                      'or with --fresh, a new wrapper with the default configuration, run for --steps data steps so that you can '
                      'see what the generator makes of it (the paper source starts from constant rows, the xt source from half '
                      'noise, half constant rows).'),
        epilog = textwrap.dedent(f"""\
            examples:
              up-fast sample                                the checkpoint of `up-fast pretrain` if there is one, else a fresh wrapper
              up-fast sample --fresh --steps 500 --every 50 --plot buffer.png
              up-fast sample --fresh --seed 3               another fresh buffer and data stream
              up-fast sample --source xt --steps 300        x-transformers' generator and buffer algorithm instead of the paper's
              up-fast sample --checkpoint {DEFAULT_CHECKPOINT} --steps 20 --rows 12"""),
    )
    s.add_argument('--checkpoint', metavar = 'PATH', default = None, help = f'the buffer saved by `up-fast pretrain` (default: {DEFAULT_CHECKPOINT} if it exists, else a fresh wrapper)')
    s.add_argument('--fresh', action = 'store_true', help = f'a fresh wrapper with the default configuration, even if {DEFAULT_CHECKPOINT} exists')
    s.add_argument('--source', choices = SOURCES, default = None, help = f'the synthetic data of a fresh wrapper, as for `up-fast pretrain` (default: {c["source"]})')
    s.add_argument('--steps', type = non_negative_int, metavar = 'N', default = None, help = f'data steps to run, with statistics along the way (default: {SAMPLE_STEPS} for a fresh wrapper, 0 with a checkpoint)')
    s.add_argument('--every', type = positive_int, metavar = 'N', default = None, help = 'print the statistics every N steps (default: a tenth of --steps)')
    s.add_argument('--max-period', type = positive_int, metavar = 'P', default = SHORT_PERIOD, help = 'the longest period counted as short for the periodic and cycling rows (default: %(default)s)')
    s.add_argument('--plot', metavar = 'PATH', default = None, help = 'draw the statistics at every step into this PNG (needs matplotlib; default: no plot)')
    s.add_argument('--rows', metavar = 'K', type = positive_int, default = 8, help = 'how many buffer rows to show (default: %(default)s)')
    s.add_argument('--width', metavar = 'N', type = positive_int, default = 96, help = 'characters of each row to show (default: %(default)s)')
    s.add_argument('--seed', type = int, metavar = 'SEED', default = None, help = f'seeds the fresh wrapper and its data steps; with a checkpoint, the data steps draw from this seed instead of continuing the run\'s own stream (default: {c["seed"]} for a fresh wrapper, the run\'s own with a checkpoint)')
    add_device_option(s)
    s.set_defaults(run = sample)

    # eval

    e = commands.add_parser(
        'eval', formatter_class = HelpFormatter,
        help = 'bits per byte on real text: pre-trained vs untrained model vs in-context Markov models vs uniform',
        description = paragraph('Report zero-shot bits per byte on a real text file: the file\'s bytes are cut into non-overlapping windows '
                      'of the model\'s seq_len and every byte after the first of a window is predicted from those before it. '
                      'The same bytes are scored for an untrained model of the same configuration, for uniform guessing (8 bits) '
                      'and for in-context Markov models of order 0 to 3, which count which byte followed the last k bytes earlier '
                      'in the same window and learn nothing beforehand. Their smoothing: P_k(x | last k bytes) = '
                      '(n(context, x) + s * P_k-1(x | last k-1 bytes)) / (n(context) + s), with P_-1 uniform over the 256 bytes and '
                      f's = {MARKOV_STRENGTH:g} pseudo-counts (up_fast/baselines.py). A model below the best of them predicts more than '
                      'can be counted in its own context; small models pre-trained for minutes usually stay above it.'),
        epilog = textwrap.dedent("""\
            examples:
              up-fast eval
              up-fast eval --checkpoint /tmp/quick.pt --text README.md --max-bytes 0
              up-fast eval --json > eval.json               every figure, as one JSON object"""),
    )
    e.add_argument('--checkpoint', metavar = 'PATH', default = DEFAULT_CHECKPOINT, help = 'checkpoint written by `up-fast pretrain` (default: %(default)s)')
    e.add_argument('--text', metavar = 'FILE', default = None, help = f'text file to evaluate on (default: a file that ships with Python, here {default_text_file()})')
    e.add_argument('--max-bytes', metavar = 'N', type = non_negative_int, default = 64 * 1024, help = 'use at most this many bytes from the start of the file, 0 for all of it (default: %(default)s)')
    e.add_argument('--batch-size', type = positive_int, metavar = 'N', default = 32, help = 'windows per forward pass (default: %(default)s)')
    e.add_argument('--seed', type = int, metavar = 'SEED', default = c['seed'], help = 'torch.manual_seed for the untrained model\'s weights (default: %(default)s)')
    e.add_argument('--json', action = 'store_true', help = 'print every figure as one JSON object instead of the table, for scripts (default: the table)')
    add_device_option(e)
    e.set_defaults(run = evaluate)

    # finetune: imported here, as it imports this module
    from up_fast.cli_finetune import add_parser as add_finetune_parser
    add_finetune_parser(commands)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if not exists(args.command):
        parser.print_help()
        return 2

    try:
        args.run(args)
    except CLIError as err:
        print(f'up-fast {args.command}: error: {err}', file = sys.stderr)
        raise SystemExit(1) from None
    return 0


if __name__ == '__main__':
    sys.exit(main())
