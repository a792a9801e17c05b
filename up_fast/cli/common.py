"""What the `up-fast` commands share: user errors, argument types, the device, the default
configuration, the model and wrapper it builds, and zero-shot bits per byte on real text."""

from __future__ import annotations

import argparse
import math
import os
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast.helpers import default, exists

# torch and x-transformers are imported inside the functions that use them: `up-fast --help`,
# `--version` and the checks made before any work answer without them
if TYPE_CHECKING:
    import torch
    from x_transformers import TransformerWrapper

    from up_fast import UniversalPretrainWrapper

# the embedded default configuration: `up-fast pretrain` takes a few minutes on 2 CPU cores

DEFAULT_CONFIG = dict(
    num_tokens=256,  # bytes
    dim=128,
    depth=2,
    heads=4,
    seq_len=128,
    batch_size=16,
    steps=1200,
    lr=1e-3,  # AdamW, linear warm-up then cosine decay to lr / 10
    warmup=50,
    weight_decay=0.01,
    grad_clip=1.0,
    gru=False,  # the turing machine: an LSTM, or a GRU
    num_reset=100,  # xt: buffer rows reset to fresh noise every step (of 20 batches)
    seed_length=8,
    reset_turing_machine_every=1,  # re-draw the turing machine's weights every n steps (0: never), as the paper does
    seed=0,
    # the synthetic data: 'xt' (x-transformers' generator and buffer) or 'paper' (the author's). xt with 100 resets
    # measured best zero-shot, and level with paper after fine-tuning: benchmarks/results/source_study_findings.md
    source='xt',
)

SOURCES = ('paper', 'xt')

DEFAULT_CHECKPOINT = 'checkpoints/up_fast.pt'


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
    # the usual names are read without torch, so that checks made before any work stay fast
    match = re.fullmatch(r'(cpu|cuda|mps|xpu|meta)(?::(\d+))?', text)
    if match:
        return match[1] if match[2] is None else f'{match[1]}:{int(match[2])}'

    import torch

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
        text = text[: limit - 3].rstrip() + '...'
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


def pick_device(requested: str | None) -> torch.device:
    import torch

    device = torch.device(default(requested, 'cuda' if torch.cuda.is_available() else 'cpu'))

    if device.type == 'meta':
        raise CLIError(
            '--device meta holds tensor shapes but no values: nothing can be trained or measured on it; use --device '
            'cpu or cuda'
        )
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise CLIError(
            '--device mps is not available: it needs a Mac with Apple silicon and a PyTorch built with MPS; use '
            '--device cpu'
        )
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CLIError(
            f'--device {device} is not available on this machine (torch.cuda.is_available() is False); try --device cpu'
        )
    if device.type == 'cuda' and exists(device.index) and device.index >= torch.cuda.device_count():
        raise CLIError(
            f'--device {device} is not available on this machine: it has {torch.cuda.device_count()} CUDA device(s), '
            f'cuda:0 to cuda:{torch.cuda.device_count() - 1}'
        )

    try:
        torch.empty(1, device=device)
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


# model and wrapper


def build_model(config: dict) -> TransformerWrapper:
    from up_fast.byte_model import build_model as build_byte_model  # imported here: it imports torch

    return build_byte_model(config)


def build_wrapper(model: TransformerWrapper, config: dict) -> UniversalPretrainWrapper:
    from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper

    if config['source'] == 'paper':
        return build_paper_wrapper(model, config)

    seq_len, batch_size = config['seq_len'], config['batch_size']
    buffer_size = batch_size * 20
    num_reset = min(config['num_reset'], buffer_size - batch_size) // 2 * 2  # even, and leaves room for the conditions

    data_generator = SyntheticDataGenerator(
        dim=config['dim'], num_tokens=config['num_tokens'], max_seq_len=seq_len, use_gru=config['gru']
    )

    try:
        return UniversalPretrainWrapper(
            model,
            data_generator=data_generator,
            buffer_size=buffer_size,
            num_reset=num_reset,
            batch_size=batch_size,
            seq_len=seq_len,
            seed_length=min(config['seed_length'], seq_len - 1),
            reset_turing_machine_every=config['reset_turing_machine_every'],
            rng_seed=config['seed'] % 2**63,  # per-step draws: a resumed run continues exactly
        )
    except (TypeError, ValueError) as err:
        raise CLIError(f'cannot build the wrapper from this configuration: {err}') from None


def build_paper_wrapper(model: TransformerWrapper, config: dict) -> UniversalPretrainWrapper:
    """The published method: the author's generator (a 4-layer LSTM, re-drawn every step) and buffer algorithm."""
    from up_fast import UniversalPretrainWrapper

    try:
        return UniversalPretrainWrapper.paper(
            model,
            batch_size=config['batch_size'],
            seq_len=config['seq_len'],
            rng_seed=config['seed'] % 2**63,
        )
    except (TypeError, ValueError) as err:
        raise CLIError(f'cannot build the wrapper from this configuration: {err}') from None


def build(config: dict, device: torch.device) -> UniversalPretrainWrapper:
    """Model and wrapper from a configuration, on `device`. Seed torch first for a repeatable init."""
    return build_wrapper(build_model(config), config).to(device)


def config_summary(config: dict) -> str:
    if config['source'] == 'paper':
        source = "paper source (the author's 4-layer LSTM generator and buffer)"
    else:
        source = f'xt source ({"GRU" if config["gru"] else "LSTM"} generator)'
    return (
        f'dim {config["dim"]}, depth {config["depth"]}, heads {config["heads"]}, seq_len {config["seq_len"]}, batch '
        f'{config["batch_size"]}, {source}'
    )


# zero-shot evaluation on real text: `up-fast eval`, and `up-fast pretrain --eval-every`


def read_text(path: str | Path, max_bytes: int) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f'text file not found: {path}' if not path.exists() else f'not a text file: {path}')
    data = path.read_bytes()
    return data[:max_bytes] if max_bytes > 0 else data


def bits_per_byte(model: TransformerWrapper, data: bytes, seq_len: int, batch_size: int, device: torch.device) -> float:
    """up_fast.byte_model.bits_per_byte, imported when called: it imports torch."""
    from up_fast.byte_model import bits_per_byte as score

    return score(model, data, seq_len, batch_size, device)


# argument parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def paragraph(text: str) -> str:
    # descriptions are printed as written (for the examples), so wrap them here
    return textwrap.fill(text, width=100)


def add_device_option(parser):
    parser.add_argument(
        '--device', type=device_name, default=None, help='torch device to run on (default: cuda if available, else cpu)'
    )
