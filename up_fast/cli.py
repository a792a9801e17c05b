"""The `up-fast` console script: pre-train a small byte-level transformer on synthetic data,
look at the synthetic data, and measure what the pre-training bought on real text.

    up-fast pretrain                    # a couple of minutes on 2 CPU cores
    up-fast sample                      # noise turning into structure
    up-fast eval                        # bits per byte on a text file that ships with Python
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from x_transformers import Decoder, TransformerWrapper

from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper, __version__
from up_fast.helpers import default, exists

# the embedded default configuration: `up-fast pretrain` takes about two minutes on 2 CPU cores

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
)

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
  up-fast pretrain                            train the default model (about two minutes on 2 CPU cores)
  up-fast pretrain --steps 2000 --dim 256     longer, wider
  up-fast sample                              watch a fresh buffer of noise turn into structure
  up-fast sample --checkpoint checkpoints/up_fast.pt --rows 16
  up-fast eval                                bits per byte of the trained model vs an untrained one
  up-fast eval --text README.md --max-bytes 0

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


def first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__


def pick_device(requested: str | None) -> torch.device:
    device = torch.device(default(requested, 'cuda' if torch.cuda.is_available() else 'cpu'))
    try:
        torch.empty(0, device = device)
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        raise CLIError(f'--device {device} is not available on this machine ({first_line(err)}); try --device cpu') from None
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


def build(config: dict, device: torch.device) -> UniversalPretrainWrapper:
    """Model and wrapper from a configuration, on `device`. Seed torch first for a repeatable init."""
    return build_wrapper(build_model(config), config).to(device)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f'checkpoint not found: {path} (write one with `up-fast pretrain --out {path}`)')
    try:
        checkpoint = torch.load(path, map_location = 'cpu', weights_only = True)
    except Exception as err:
        raise CLIError(f'cannot read checkpoint {path}: {first_line(err)}') from None
    missing = {'config', 'model', 'wrapper'} - set(checkpoint) if isinstance(checkpoint, dict) else {'a dict'}
    if missing:
        raise CLIError(f'{path} is not an up-fast checkpoint: it lacks {", ".join(sorted(missing))}')
    checkpoint['config'] = {**DEFAULT_CONFIG, **checkpoint['config']}
    return checkpoint


def load_state(module: torch.nn.Module, state: dict, path: str | Path):
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config: {first_line(err)}') from None


def config_summary(config: dict) -> str:
    machine = 'GRU' if config['gru'] else 'LSTM'
    return f"dim {config['dim']}, depth {config['depth']}, heads {config['heads']}, seq_len {config['seq_len']}, batch {config['batch_size']}, {machine} generator"


# pretrain


def lr_lambda(warmup: int, steps: int):
    # linear warm-up to the full lr, then cosine decay to a tenth of it
    def fn(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1. + math.cos(math.pi * min(progress, 1.)))
    return fn


def pretrain(args) -> dict:
    try:
        from tqdm import tqdm
    except ImportError:
        raise CLIError('the progress bar needs tqdm: pip install "up-fast[cli]"') from None

    if exists(args.resume):
        # the run's own configuration; --steps may extend it (the lr schedule then stretches)
        checkpoint = load_checkpoint(args.resume)
        missing = {'optimizer', 'scheduler'} - set(checkpoint)
        if missing:
            raise CLIError(f'{args.resume} cannot be resumed: it lacks {", ".join(sorted(missing))} (written by an older up-fast)')
        config = checkpoint['config']
        config['steps'] = default(args.steps, config['steps'])
    else:
        config = {**DEFAULT_CONFIG, **{key: getattr(args, key) for key in ('batch_size', 'seq_len', 'dim', 'depth', 'heads', 'lr', 'seed')}}
        config['steps'] = default(args.steps, DEFAULT_CONFIG['steps'])
        config['gru'] = args.gru
        config['reset_turing_machine_every'] = args.reset_every
        config['warmup'] = min(config['warmup'], max(1, config['steps'] // 10))

    device = pick_device(args.device)
    torch.manual_seed(config['seed'])

    wrapper = build(config, device)
    wrapper.train()

    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr = config['lr'], weight_decay = config['weight_decay'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config['warmup'], config['steps']))

    if exists(args.resume):
        load_state(wrapper, checkpoint['wrapper'], args.resume)
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])

    steps, tokens_per_step = config['steps'], config['batch_size'] * config['seq_len']
    done = wrapper.num_steps
    if done >= steps:
        raise CLIError(f'the run has done {done} of its {steps} steps: nothing to resume (pass --steps N, N > {done}, to extend it)')
    stop = steps if not exists(args.stop_after) else min(steps, done + args.stop_after)

    resuming = f', resuming at step {done}' if done else ''
    log(f'pre-training {sum(p.numel() for p in wrapper.model.parameters()):,} parameters ({config_summary(config)}) for {steps} steps on {device}{resuming}')

    smoothed = None
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

        if step % 10 == 0 or step == stop - 1:
            elapsed = time.perf_counter() - start
            progress.set_postfix({'loss': f'{smoothed.item():.3f}', 'synthetic tok/s': f'{tokens_per_step * (step + 1 - done) / elapsed:,.0f}'}, refresh = False)

    progress.close()
    elapsed = time.perf_counter() - start
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
        seconds = elapsed,
        version = __version__,
    )

    out = Path(default(args.out, args.resume or DEFAULT_CHECKPOINT))
    out.parent.mkdir(parents = True, exist_ok = True)
    torch.save(checkpoint, out)

    ran = stop - done
    left = f'; {steps - stop} steps left: continue with `up-fast pretrain --resume {out}`' if stop < steps else ''
    log(f'saved checkpoint to {out} (step {stop} of {steps}{left})')
    log(f'{ran} steps in {elapsed:.1f}s on {device}: final loss {final_loss:.4f} (smoothed {smoothed_loss:.4f} nats, '
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


def zlib_ratio(row: Tensor) -> float:
    # compressed size over raw size: about 1.1 for noise, under 0.2 for a constant row
    data = bytes(row.tolist())
    return len(zlib.compress(data, 9)) / len(data)


def show_rows(title: str, buffer: Tensor, rows: list[int], width: int):
    mean_ratio = sum(zlib_ratio(row) for row in buffer) / buffer.shape[0]
    log(f'{title} (buffer mean zlib {mean_ratio:.2f})')
    for index in rows:
        log(f'  row {index:4d}  zlib {zlib_ratio(buffer[index]):.2f}  |{show_bytes(buffer[index], width)}|')


def sample(args):
    device = pick_device(args.device)
    torch.manual_seed(args.seed)

    if exists(args.checkpoint):
        checkpoint = load_checkpoint(args.checkpoint)
        config = checkpoint['config']
        wrapper = build(config, device)
        load_state(wrapper, checkpoint['wrapper'], args.checkpoint)
        source, steps = f'checkpoint {args.checkpoint}', default(args.steps, 0)
    else:
        config = DEFAULT_CONFIG
        wrapper = build(config, device)
        source, steps = 'a fresh wrapper with the default configuration', default(args.steps, SAMPLE_STEPS)

    buffer_size, seq_len = wrapper.synth_data_buffer.shape
    start_step = int(wrapper.step)
    num_rows = min(args.rows, buffer_size)

    log(f'{source} ({config_summary(config)}): buffer of {buffer_size} rows x {seq_len} bytes')
    log('zlib = compressed / raw size of a row: about 1.1 for noise, under 0.2 for a constant row, structure in between')

    before = wrapper.synth_data_buffer.cpu().clone()     # (buffer_size, seq_len) uint8

    if steps == 0:
        show_rows(f'step {start_step}', before, list(range(num_rows)), args.width)
        return

    for _ in range(steps):
        wrapper.data_step_()

    # the rows the generator wrote in the last step (the reset rows hold fresh noise instead)
    after = wrapper.synth_data_buffer.cpu()
    rows = wrapper.last_step_rows.condition_rows[:num_rows].tolist()

    show_rows(f'step {start_step}', before, rows, args.width)
    show_rows(f'step {start_step + steps}, the same rows, written by the generator in the last step', after, rows, args.width)


# eval


def read_text(path: str | Path, max_bytes: int) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f'text file not found: {path}' if not path.exists() else f'not a text file: {path}')
    data = path.read_bytes()
    return data[:max_bytes] if max_bytes > 0 else data


@torch.no_grad()
def bits_per_byte(model: TransformerWrapper, data: bytes, seq_len: int, batch_size: int, device: torch.device) -> float:
    """Next-byte cross-entropy in bits, averaged over every predicted position of the
    non-overlapping windows of `seq_len` bytes (the first byte of each window is context only)."""
    model.eval()
    tokens = torch.frombuffer(bytearray(data), dtype = torch.uint8).long()
    windows = list(tokens.split(seq_len))
    windows = [w for w in windows if len(w) > 1]          # a last window of one byte predicts nothing

    total_bits, count = 0., 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        for length in sorted({len(w) for w in chunk}):      # only the last window can be shorter
            x = torch.stack([w for w in chunk if len(w) == length]).to(device)  # (batch, length)
            logits = model(x)[:, :-1]                                           # (batch, length - 1, num_tokens)
            loss = F.cross_entropy(logits.transpose(1, 2).float(), x[:, 1:], reduction = 'sum')
            total_bits += loss.item() / math.log(2)
            count += x[:, 1:].numel()

    return total_bits / count


def evaluate(args) -> dict:
    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint['config']

    text_path = Path(default(args.text, default_text_file()))
    data = read_text(text_path, args.max_bytes)
    seq_len = config['seq_len']
    if len(data) < 2:
        raise CLIError(f'{text_path} holds {len(data)} byte(s): at least 2 are needed to predict one')

    trained = build_model(config).to(device)
    load_state(trained, checkpoint['model'], args.checkpoint)

    torch.manual_seed(args.seed)
    untrained = build_model(config).to(device)

    log(f'text: {text_path} ({len(data):,} bytes used, in windows of {seq_len})')
    log(f'model: {args.checkpoint} ({config_summary(config)}, {config["steps"]} steps)')

    results = dict(
        trained = bits_per_byte(trained, data, seq_len, args.batch_size, device),
        untrained = bits_per_byte(untrained, data, seq_len, args.batch_size, device),
        uniform = UNIFORM_BITS,
    )

    labels = dict(trained = 'pre-trained (synthetic data only)', untrained = f'untrained (same config, seed {args.seed})', uniform = 'uniform baseline')
    log('in-context bits per byte (lower is better):')
    for name, bits in results.items():
        log(f'  {labels[name]:<40} {bits:6.3f}')
    return results


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
                      'on synthetic data only, and save a checkpoint. The defaults take about two minutes on 2 CPU cores.'),
        epilog = 'examples:\n  up-fast pretrain\n  up-fast pretrain --steps 50 --out /tmp/quick.pt\n  up-fast pretrain --gru --dim 256 --device cuda\n'
                 '  up-fast pretrain --stop-after 600          half the run now...\n  up-fast pretrain --resume checkpoints/up_fast.pt   ...the rest later, exactly as one run',
    )
    p.add_argument('--steps', type = positive_int, metavar = 'N', default = None, help = f'training steps in the whole run, one synthetic batch each (default: {c["steps"]}, or the resumed run\'s own)')
    p.add_argument('--batch-size', type = positive_int, metavar = 'N', default = c['batch_size'], help = 'sequences generated and trained on per step; the buffer holds 20 times as many (default: %(default)s)')
    p.add_argument('--seq-len', metavar = 'N', type = positive_int, default = c['seq_len'], help = 'length of the synthetic sequences and the model\'s context, in bytes (default: %(default)s)')
    p.add_argument('--dim', metavar = 'N', type = positive_int, default = c['dim'], help = 'model width, also the width of the generator\'s LSTM/GRU (default: %(default)s)')
    p.add_argument('--depth', metavar = 'N', type = positive_int, default = c['depth'], help = 'number of transformer layers (default: %(default)s)')
    p.add_argument('--heads', metavar = 'N', type = positive_int, default = c['heads'], help = 'attention heads per layer (default: %(default)s)')
    p.add_argument('--lr', metavar = 'LR', type = positive_float, default = c['lr'], help = 'peak AdamW learning rate, after a linear warm-up, decayed to a tenth by a cosine (default: %(default)s)')
    p.add_argument('--seed', type = int, metavar = 'SEED', default = c['seed'], help = 'torch.manual_seed for the weights, the buffer and every draw: the same seed repeats a run (default: %(default)s)')
    p.add_argument('--gru', action = 'store_true', help = 'use a GRU instead of an LSTM as the random "turing machine" that generates the data (default: LSTM)')
    p.add_argument('--reset-every', metavar = 'N', type = non_negative_int, default = c['reset_turing_machine_every'], help = 're-draw the generator\'s random weights every this many steps, 0 for never: a new machine brings new kinds of structure (default: %(default)s)')
    p.add_argument('--out', metavar = 'PATH', default = None, help = f'where to save the checkpoint (default: {DEFAULT_CHECKPOINT}, or the resumed checkpoint)')
    p.add_argument('--resume', metavar = 'PATH', default = None, help = 'continue the run saved in this checkpoint, exactly where it stopped: same data stream, model, optimizer and schedule (its configuration wins over the options above, but --steps)')
    p.add_argument('--stop-after', metavar = 'N', type = positive_int, default = None, help = 'stop after N steps of this invocation and save; the schedule still spans --steps, and --resume continues (default: run to the end)')
    add_device_option(p)
    p.set_defaults(run = pretrain)

    # sample

    s = commands.add_parser(
        'sample', formatter_class = HelpFormatter,
        help = 'show synthetic sequences from the buffer, as text',
        description = paragraph('Show rows of the synthetic-data buffer as text: bytes outside printable ASCII are escaped (a newline shows as \\n, byte 0 as \\x00). '
                      'Without --checkpoint: a fresh wrapper with the default configuration, shown before and after '
                      '--steps data steps, so you can see noise turn into structure.'),
        epilog = 'examples:\n  up-fast sample\n  up-fast sample --steps 500 --rows 12\n  up-fast sample --checkpoint checkpoints/up_fast.pt',
    )
    s.add_argument('--checkpoint', metavar = 'PATH', default = None, help = 'show the buffer saved by `up-fast pretrain` (default: none, a fresh wrapper)')
    s.add_argument('--steps', type = non_negative_int, metavar = 'N', default = None, help = f'data steps to run before showing the rows again (default: {SAMPLE_STEPS} for a fresh wrapper, 0 with --checkpoint)')
    s.add_argument('--rows', metavar = 'K', type = positive_int, default = 8, help = 'how many buffer rows to show (default: %(default)s)')
    s.add_argument('--width', metavar = 'N', type = positive_int, default = 96, help = 'characters of each row to show (default: %(default)s)')
    s.add_argument('--seed', type = int, metavar = 'SEED', default = c['seed'], help = 'torch.manual_seed for the fresh wrapper and the data steps (default: %(default)s)')
    add_device_option(s)
    s.set_defaults(run = sample)

    # eval

    e = commands.add_parser(
        'eval', formatter_class = HelpFormatter,
        help = 'bits per byte on real text: pre-trained vs untrained model vs uniform',
        description = paragraph('Report in-context bits per byte on a real text file: the file\'s bytes are cut into non-overlapping windows '
                      'of the model\'s seq_len and every byte after the first of a window is predicted from those before it. '
                      'The same figure is shown for an untrained model of the same configuration and for uniform guessing '
                      '(8 bits), so you see what pre-training on synthetic data bought.'),
        epilog = 'examples:\n  up-fast eval\n  up-fast eval --checkpoint /tmp/quick.pt --text README.md --max-bytes 0',
    )
    e.add_argument('--checkpoint', metavar = 'PATH', default = DEFAULT_CHECKPOINT, help = 'checkpoint written by `up-fast pretrain` (default: %(default)s)')
    e.add_argument('--text', metavar = 'FILE', default = None, help = f'text file to evaluate on (default: a file that ships with Python, here {default_text_file()})')
    e.add_argument('--max-bytes', metavar = 'N', type = non_negative_int, default = 64 * 1024, help = 'use at most this many bytes from the start of the file, 0 for all of it (default: %(default)s)')
    e.add_argument('--batch-size', type = positive_int, metavar = 'N', default = 32, help = 'windows per forward pass (default: %(default)s)')
    e.add_argument('--seed', type = int, metavar = 'SEED', default = c['seed'], help = 'torch.manual_seed for the untrained model\'s weights (default: %(default)s)')
    add_device_option(e)
    e.set_defaults(run = evaluate)

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
