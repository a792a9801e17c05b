"""The memory a `up-fast pretrain` configuration needs, estimated from its sizes before anything is allocated,
against what the device has: a configuration that cannot fit is refused in one line instead of failing
in the allocator minutes later. Plain arithmetic: the host's check needs no torch."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from up_fast.cli.common import CLIError
from up_fast.helpers import exists

FLOAT = 4  # bytes: the model trains in float32
DIM_HEAD = 64  # x-transformers' default width of an attention head
EVAL_BATCH = 32  # windows per forward pass of the zero-shot evaluation
PAPER_GENERATOR = (128, 4)  # the paper generator's LSTM: width and layers
BUFFER_ROWS = dict(xt=20, paper=40)  # buffer rows per row of a batch


def parameter_count(config: dict) -> int:
    """The parameters of `common.build_model(config)`, counted from its sizes."""
    d, vocab, n, depth = config['dim'], config['num_tokens'], config['seq_len'], config['depth']
    inner = config['heads'] * DIM_HEAD
    attention = 3 * d * inner + inner * d  # q, k, v and out projections
    feedforward = d * 4 * d + 4 * d + 4 * d * d + d  # dim -> 4 dim -> dim, with biases
    norms = 2 * d
    return vocab * d + n * d + depth * (attention + feedforward + norms) + d + d * vocab


def memory_needed(config: dict) -> dict[str, int]:
    """Bytes by what holds them, the largest parts of one training step or one evaluation (whichever is larger)."""
    b, n, d, depth, heads, vocab = (
        config[key] for key in ('batch_size', 'seq_len', 'dim', 'depth', 'heads', 'num_tokens')
    )
    inner = heads * DIM_HEAD
    gen_dim, gen_layers = PAPER_GENERATOR if config['source'] == 'paper' else (d, 1)

    training = dict(
        activations=b
        * n
        * depth
        * (14 * d + 4 * inner)
        * FLOAT,  # kept for the backward pass: norms, q k v, feedforward
        attention=3 * b * heads * n * n * depth * FLOAT,  # scores, their softmax and its gradient, every layer
        logits=3 * b * n * vocab * FLOAT,  # logits, their softmax and its gradient
        generator=8 * b * n * gen_dim * gen_layers * FLOAT,  # the data step's recurrent network, no gradients
    )
    evaluation = dict(
        attention=2 * EVAL_BATCH * heads * n * n * FLOAT,  # one layer at a time without gradients
        logits=2 * EVAL_BATCH * n * vocab * FLOAT,
    )
    step = training if sum(training.values()) >= sum(evaluation.values()) else evaluation
    return dict(
        parameters=4 * parameter_count(config) * FLOAT,  # weights, gradients, AdamW's two moments
        buffer=BUFFER_ROWS[config['source']] * b * n * 8,  # token rows, int64 at most
        **step,
    )


def readable(size: float) -> str:
    for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        if size < 1024 or unit == 'PiB':
            return f'{size:,.0f} {unit}' if unit == 'bytes' else f'{size:,.1f} {unit}'
        size /= 1024


def host_memory_available() -> int | None:
    """Memory the host can give now: MemAvailable on Linux, else all physical memory, else None."""
    try:
        match = re.search(r'^MemAvailable:\s+(\d+) kB', Path('/proc/meminfo').read_text(), re.MULTILINE)
        if match:
            return int(match[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def torch_without_gpus() -> bool:
    """True when the installed torch is built for the CPU only (read from its version file, without importing it)."""
    spec = importlib.util.find_spec('torch')
    if not exists(spec) or not exists(spec.origin):
        return False
    try:
        text = (Path(spec.origin).parent / 'version.py').read_text()
    except OSError:
        return False
    return all(re.search(rf'^{name}\b[^=\n]*=\s*None\s*$', text, re.MULTILINE) for name in ('cuda', 'hip'))


def host_device(requested: str | None) -> bool:
    """Will the run be on the host's memory?

    Known without torch for --device cpu, or for no --device and a CPU-only torch.
    """
    return (exists(requested) and requested.split(':')[0] == 'cpu') or (not exists(requested) and torch_without_gpus())


def check_memory(config: dict, device: str, available: int | None):
    """Refuse a configuration whose estimated memory exceeds what `device` has available.

    The error names the options to lower.
    """
    if not exists(available):
        return
    parts = memory_needed(config)
    needed = sum(parts.values())
    if needed <= available:
        return

    largest = max(parts, key=parts.__getitem__)
    lower = {
        'attention': (
            f'--seq-len {config["seq_len"]} (attention grows with its square) or --batch-size {config["batch_size"]}'
        ),
        'parameters': f'--dim {config["dim"]} or --depth {config["depth"]}',
    }.get(largest, f'--batch-size {config["batch_size"]} or --seq-len {config["seq_len"]}')
    shares = ', '.join(
        f'{name} {readable(size)}'
        for name, size in sorted(parts.items(), key=lambda item: -item[1])
        if size > 0.01 * needed
    )
    raise CLIError(
        f'this configuration needs about {readable(needed)} of memory ({shares}), more than the {readable(available)} '
        f'available on {device}: lower {lower}'
    )


def check_memory_before_torch(config: dict, requested: str | None):
    """The host's check, before torch is even imported: an impossible size is refused at once."""
    if host_device(requested):
        check_memory(config, 'cpu', host_memory_available())


def check_memory_on(config: dict, device):
    """The check for a device picked by torch: a GPU's free memory, or the host's when the early check could not run."""
    import torch

    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        check_memory(config, str(device), free)
    elif device.type == 'cpu':
        check_memory(config, 'cpu', host_memory_available())
