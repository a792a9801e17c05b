"""The small byte-level model the command line trains, how it is rebuilt from a state_dict, how it
is scored on real text, and its learning-rate schedule: shared by pre-training and fine-tuning."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from x_transformers import Decoder, TransformerWrapper

from up_fast.helpers import default, exists
from up_fast.windows import split_windows  # the windows the in-context baselines are scored on too

ARCHITECTURE_KEYS = ('num_tokens', 'dim', 'depth', 'heads', 'seq_len')
DIM_HEAD = 64  # x-transformers' default attention head width, which build_model keeps


def build_model(config: dict) -> TransformerWrapper:
    """TransformerWrapper(num_tokens, max_seq_len = seq_len, Decoder(dim, depth, heads)): nothing
    else is set, so these five numbers rebuild it."""
    return TransformerWrapper(
        num_tokens=config['num_tokens'],
        max_seq_len=config['seq_len'],
        attn_layers=Decoder(dim=config['dim'], depth=config['depth'], heads=config['heads']),
    )


def architecture_from_state(state: dict) -> dict:
    """The build_model sizes that the shapes of a TransformerWrapper state_dict reveal: num_tokens
    and dim (token embedding), seq_len (absolute positional embedding), depth (a Decoder alternates
    attention and feed-forward layers) and heads (query width / 64, x-transformers' default head
    width). Sizes that cannot be read are left out; a strict load checks the rest."""
    found = {}
    embedding = state.get('token_emb.emb.weight')
    if exists(embedding) and embedding.dim() == 2:
        found['num_tokens'], found['dim'] = embedding.shape
    positions = state.get('pos_emb.emb.weight')
    if exists(positions) and positions.dim() == 2:
        found['seq_len'] = positions.shape[0]
    layers = {int(m.group(1)) for key in state if (m := re.match(r'attn_layers\.layers\.(\d+)\.', key))}
    if layers:
        found['depth'] = (max(layers) + 1) // 2
    query = state.get('attn_layers.layers.0.1.to_q.weight')
    if exists(query) and query.dim() == 2 and query.shape[0] % DIM_HEAD == 0:
        found['heads'] = query.shape[0] // DIM_HEAD
    return {key: int(value) for key, value in found.items()}


@torch.no_grad()
def bits_per_byte(model: TransformerWrapper, data: bytes, seq_len: int, batch_size: int, device: torch.device) -> float:
    """Next-byte cross-entropy in bits, averaged over every predicted position of the
    non-overlapping windows of `seq_len` bytes (up_fast.windows.split_windows: the first byte of each
    window is context only). The in-context baselines (up_fast/cli/baselines.py) are scored on
    exactly these positions."""
    was_training = model.training
    model.eval()
    windows = [torch.tensor(list(window)) for window in split_windows(data, seq_len)]

    total_bits, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        for length in sorted({len(w) for w in chunk}):  # only the last window can be shorter
            x = torch.stack([w for w in chunk if len(w) == length]).to(device)  # (batch, length)
            logits = model(x)[:, :-1]  # (batch, length - 1, num_tokens)
            loss = F.cross_entropy(logits.transpose(1, 2).float(), x[:, 1:], reduction='sum')
            total_bits += loss.item() / math.log(2)
            count += x[:, 1:].numel()

    model.train(was_training)
    return total_bits / count


def lr_lambda(warmup: int, steps: int):
    """Linear warm-up to the full lr, then cosine decay to a tenth of it (for LambdaLR)."""

    def fn(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def with_architecture(config: dict | None, state: dict, overrides: dict | None = None) -> dict:
    """The sizes to rebuild a model with: `overrides` (given options) win, then `config`, then what
    the state_dict's shapes say."""
    sizes = {
        **architecture_from_state(state),
        **{k: v for k, v in default(config, {}).items() if k in ARCHITECTURE_KEYS},
    }
    sizes.update({k: v for k, v in default(overrides, {}).items() if k in ARCHITECTURE_KEYS and exists(v)})
    return sizes
