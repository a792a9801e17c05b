"""Fine-tuning on real text from a pre-trained start against the same architecture from scratch:
held-out bits per byte over steps for both, the steps each needs to reach given levels, and a
verdict with the spread over seeds.

Both starts see exactly the same training: for each seed, the same windows of the training text in
the same order (drawn from that seed alone), the same AdamW, schedule and gradient clipping. The
scratch start is the architecture freshly initialised as `torch.manual_seed(init_seed);
build_model(...)`: for a checkpoint of `up-fast pretrain` that is exactly the model its run began
from (the run's own seed), so the two starts differ only by what pre-training changed, and a
checkpoint that is that fresh model itself comes out level. Seeds change the order of the batches.

A fixed number of steps favours whichever start overfits a small text later, so with a validation
text (a slice before the held-out one, split_text(validation=...)) each start is also judged at its
own best step on it (best_step): early stopping, with the held-out slice kept for scoring only.

A pre-trained start can be given as
  - an `up-fast pretrain` checkpoint (or any dict with 'config' and 'model'): the config rebuilds it;
  - a UniversalPretrainWrapper state_dict (`torch.save(wrapper.state_dict(), path)`): its 'model.' keys;
  - a TransformerWrapper state_dict (`torch.save(model.state_dict(), path)`).
A bare state_dict is rebuilt as byte_model.build_model does it, TransformerWrapper(num_tokens,
max_seq_len = seq_len, attn_layers = Decoder(dim, depth, heads)) with nothing else set: its sizes
are read from the weights' shapes (heads assuming x-transformers' 64-wide heads) unless given; a
model built with other options does not load, and the error says which weights do not fit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from up_fast.byte_model import (
    ARCHITECTURE_KEYS,
    bits_per_byte,
    build_model,
    lr_lambda,
    with_architecture,
)
from up_fast.helpers import exists

FINETUNE_DEFAULTS = dict(
    steps=300,
    eval_every=25,
    batch_size=16,
    lr=1e-3,  # AdamW, linear warm-up then cosine decay to lr / 10, as in pre-training
    warmup=30,
    weight_decay=0.01,
    grad_clip=1.0,
    held_out=0.2,  # the last fifth of the text is held out and scored
    validation=0.1,  # the tenth before it picks each start's best step
)

EVAL_BATCH = 32  # windows per forward pass when scoring the held-out text
PRECISION = 3  # decimals of the figures the verdict is computed from (as printed)


# the text


class TextSplit(NamedTuple):
    """The three parts of a text, in its order: train | validation | held_out."""

    train: bytes  # what both starts fine-tune on
    validation: bytes  # picks each start's best step (early stopping); empty when not asked for
    held_out: bytes  # scored, never trained on nor used to pick a step


def split_text(
    data: bytes, held_out: float, seq_len: int, *, validation: float = 0.0, train_bytes: int | None = None
) -> TextSplit:
    """The last `held_out` fraction of the bytes is held out whole, so that no training window
    overlaps it; the `validation` fraction (of the whole text) just before it picks the best step;
    the rest is trained on, cut to its first `train_bytes` when given (the study of how much real
    text pre-training is worth keeps the validation and scored parts fixed and varies this). Every
    part asked for must hold a full window of `seq_len` bytes."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f'held_out must be a fraction in (0, 1), got {held_out}')
    if not 0.0 <= validation < 1.0 - held_out:
        raise ValueError(
            f'validation must be a fraction in [0, 1 - held_out) = [0, {1.0 - held_out:g}), got {validation}'
        )
    cut = len(data) - round(len(data) * held_out)
    split = cut - round(len(data) * validation)
    train, valid, held = data[:split], data[split:cut], data[cut:]
    parts = f'{len(train):,} to train on' + (f', {len(valid):,} to validate on' if validation else '')
    if len(train) < seq_len or len(held) < seq_len or (validation and len(valid) < seq_len):
        raise ValueError(
            f'the text is too short: {len(data):,} bytes split into {parts} and {len(held):,} held out, '
            f'but each needs at least one window of {seq_len} bytes (give a longer text, or other fractions)'
        )
    if exists(train_bytes):
        if not seq_len <= train_bytes <= len(train):
            raise ValueError(
                f'train_bytes must be between one window ({seq_len} bytes) and the {len(train):,} bytes the text '
                f'leaves to train on, got {train_bytes:,}'
            )
        train = train[:train_bytes]
    return TextSplit(train, valid, held)


def batch_starts(train_bytes: int, seq_len: int, batch_size: int, steps: int, seed: int) -> Tensor:
    """(steps, batch_size) start offsets of the training windows, from `seed` alone: both starts of
    a comparison train on exactly these."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, train_bytes - seq_len + 1, (steps, batch_size), generator=generator)


# the pre-trained start


def model_state(checkpoint) -> tuple[dict, dict | None]:
    """(TransformerWrapper state_dict, the config saved with it or None) from what torch.load
    returned for one of the three kinds of file in the module docstring. ValueError otherwise."""
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f'expected a dict of tensors (a state_dict) or an up-fast checkpoint, got {type(checkpoint).__name__}'
        )
    if 'model' in checkpoint and isinstance(checkpoint['model'], dict):
        config = checkpoint.get('config')
        return checkpoint['model'], config if isinstance(config, dict) else None

    wrapped = {key[len('model.') :]: value for key, value in checkpoint.items() if key.startswith('model.')}
    if wrapped:
        return wrapped, None  # the wrapper's own copy under 'ar_wrapped.net.' holds the same tensors
    if 'token_emb.emb.weight' in checkpoint:
        return dict(checkpoint), None

    keys = ', '.join(list(map(str, checkpoint))[:5]) or 'none'
    raise ValueError(
        f'found neither an up-fast checkpoint (keys config, model), nor a UniversalPretrainWrapper state_dict '
        f'(keys model.*), nor a TransformerWrapper state_dict (key token_emb.emb.weight); its keys: {keys}'
    )


def rebuild(state: dict, config: dict | None = None, **sizes) -> tuple[Module, dict]:
    """(the model with `state` loaded, the sizes it was built with). `sizes` (num_tokens, dim,
    depth, heads, seq_len; None for unset) win over `config`, which wins over the shapes."""
    architecture = with_architecture(config, state, sizes)
    missing = [key for key in ARCHITECTURE_KEYS if key not in architecture]
    if missing:
        raise ValueError(
            f"cannot tell the model's {', '.join(missing)} from the state_dict: give them "
            f'({", ".join("--" + key.replace("_", "-") for key in missing)}), or save a config with it'
        )
    model = build_model(architecture)
    expected = model.state_dict()
    mismatch = [key for key in expected if key not in state or tuple(state[key].shape) != tuple(expected[key].shape)]
    unexpected = [key for key in state if key not in expected]
    if mismatch or unexpected:
        shapes = [
            f'{key} {tuple(state[key].shape) if key in state else "missing"} in the file, '
            f'{tuple(expected[key].shape)} in the model'
            for key in mismatch[:3]
        ]
        extra = f'; {len(unexpected)} key(s) the model lacks, e.g. {unexpected[0]}' if unexpected else ''
        described = ', '.join(f'{key} {architecture[key]}' for key in ARCHITECTURE_KEYS)
        raise ValueError(
            f'the weights do not fit TransformerWrapper(num_tokens, max_seq_len = seq_len, '
            f'Decoder(dim, depth, heads)) with '
            f'{described}: {"; ".join(shapes) or "no shape differs"}{extra}. A model built with other options '
            f'(another head width, rotary embeddings, ...) cannot be rebuilt from its weights alone'
        )
    model.load_state_dict(state)
    return model, architecture


def fresh_model(architecture: dict, init_seed: int) -> Module:
    """The architecture freshly initialised, as `up-fast pretrain` initialises it for that seed."""
    torch.manual_seed(init_seed)
    return build_model(architecture)


# training


def finetune_curves(
    model: Module,
    train: bytes,
    scored: dict[str, bytes],
    starts: Tensor,
    *,
    seq_len: int,
    device: torch.device,
    lr: float = FINETUNE_DEFAULTS['lr'],
    warmup: int = FINETUNE_DEFAULTS['warmup'],
    weight_decay: float = FINETUNE_DEFAULTS['weight_decay'],
    grad_clip: float = FINETUNE_DEFAULTS['grad_clip'],
    eval_every: int = FINETUNE_DEFAULTS['eval_every'],
    on_step=None,
) -> dict[str, list[float]]:
    """Train `model` (in place) on the windows train[start:start + seq_len] of `starts` (steps,
    batch), one row per step, and return, for each text of `scored` (name -> bytes), its bits per
    byte at eval_steps(steps, eval_every)."""
    steps = starts.shape[0]
    data = torch.tensor(list(train), dtype=torch.long)  # (train_bytes,)
    offsets = torch.arange(seq_len)  # (seq_len,)

    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(min(warmup, max(1, steps // 10)), steps))

    def score():
        for name, text in scored.items():
            curves[name].append(bits_per_byte(model, text, seq_len, EVAL_BATCH, device))

    curves = {name: [] for name in scored}
    score()
    model.train()
    for step in range(1, steps + 1):
        x = data[starts[step - 1, :, None] + offsets].to(device)  # (batch, seq_len)
        logits = model(x)[:, :-1]  # (batch, seq_len - 1, num_tokens)
        loss = F.cross_entropy(
            logits.transpose(1, 2), x[:, 1:]
        )  # scored as bits_per_byte scores: the first byte is context
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        if step % eval_every == 0 or step == steps:
            score()
        if exists(on_step):
            on_step()
    return curves


def best_step(steps: list[int], validation: list[float], held_out: list[float]) -> tuple[int, float]:
    """(step, held-out bits per byte there) at the step where the validation curve is lowest (the
    first such step on a tie): early stopping, judged after the fact, so that a start that overfits
    a small text is scored where it was best and never by the slice that scores it."""
    if not len(steps) == len(validation) == len(held_out) > 0:
        raise ValueError(
            f'need one figure per evaluation step in both curves, got {len(steps)} steps, {len(validation)} and '
            f'{len(held_out)} figures'
        )
    index = min(range(len(steps)), key=validation.__getitem__)
    return steps[index], held_out[index]


def eval_steps(steps: int, eval_every: int) -> list[int]:
    """The steps a curve holds a figure for: 0 (before training), every eval_every-th, and the last."""
    return sorted({0, *range(eval_every, steps + 1, eval_every), steps})


@dataclass
class Comparison:
    """Held-out bits per byte at `steps` for each seed, from both starts; with a validation text,
    the validation curves too, which pick each start's best step."""

    steps: list[int]
    checkpoint: dict[int, list[float]] = field(default_factory=dict)  # seed -> held-out curve
    scratch: dict[int, list[float]] = field(default_factory=dict)
    validation: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # start -> seed -> curve

    @property
    def seeds(self) -> list[int]:
        return list(self.checkpoint)

    def best(self, name: str) -> dict[int, tuple[int, float]]:
        """seed -> (best step by validation, held-out bits per byte there) for 'checkpoint' or 'scratch'."""
        if name not in self.validation:
            raise ValueError('the comparison ran without a validation text: pass validation= to compare')
        return {
            seed: best_step(self.steps, self.validation[name][seed], curve)
            for seed, curve in getattr(self, name).items()
        }


def compare(
    pretrained: Module,
    scratch: Module,
    train: bytes,
    held_out: bytes,
    seeds: list[int],
    *,
    seq_len: int,
    device: torch.device,
    validation: bytes | None = None,
    steps: int = FINETUNE_DEFAULTS['steps'],
    batch_size: int = FINETUNE_DEFAULTS['batch_size'],
    on_step=None,
    **settings,
) -> Comparison:
    """Fine-tune copies of `pretrained` and of `scratch` on the same batches for every seed, scoring
    `held_out` (and `validation`, when given) as they go. `settings`: lr, warmup, weight_decay,
    grad_clip, eval_every (FINETUNE_DEFAULTS)."""
    every = settings.get('eval_every', FINETUNE_DEFAULTS['eval_every'])
    result = Comparison(steps=eval_steps(steps, every))
    scored = {'held_out': held_out, **({'validation': validation} if exists(validation) else {})}
    for seed in seeds:
        starts = batch_starts(len(train), seq_len, batch_size, steps, seed)  # (steps, batch_size)
        for name, start in (('checkpoint', pretrained), ('scratch', scratch)):
            curves = finetune_curves(
                copy.deepcopy(start),
                train,
                scored,
                starts,
                seq_len=seq_len,
                device=device,
                on_step=on_step,
                **settings,
            )
            getattr(result, name)[seed] = curves['held_out']
            if exists(validation):
                result.validation.setdefault(name, {})[seed] = curves['validation']
    return result


# reading the curves


def steps_to_reach(steps: list[int], curve: list[float], level: float) -> int | None:
    """The first step at which the curve is at or below `level`, None if it never is."""
    return next((step for step, bits in zip(steps, curve) if bits <= level), None)


@dataclass
class Verdict:
    """Which start ends lower on the held-out text. `differences`: scratch minus checkpoint, one per
    seed (positive: the checkpoint is ahead), at `step`, or each at its own best validation step
    when `step` is None."""

    winner: str  # 'checkpoint', 'scratch', 'level' (the same on every seed) or 'unclear' (seeds disagree)
    differences: list[float]
    step: int | None

    @property
    def where(self) -> str:
        return f'at step {self.step}' if exists(self.step) else "at each start's best step on the validation text"

    @property
    def mean(self) -> float:
        return round(sum(self.differences) / len(self.differences), PRECISION)

    def describe(self) -> str:
        n = len(self.differences)
        low, high = min(self.differences), max(self.differences)
        if self.winner == 'level':
            return f'level: both starts reach the same held-out bits per byte {self.where} on every seed ({n})'
        if self.winner in ('checkpoint', 'scratch'):
            ahead = 'the pre-trained start' if self.winner == 'checkpoint' else 'training from scratch'
            sign = 1 if self.winner == 'checkpoint' else -1  # the margins of the start that is ahead, positive
            low, high = sorted((sign * low, sign * high))
            seeds = (
                f'mean of {n} seeds, per seed {low:.3f} to {high:.3f}'
                if n > 1
                else 'one seed, so no spread: pass --seeds 3 for one'
            )
            margin = sign * self.mean
            held_out = f'bits per byte lower on the held-out text {self.where}'
            return f'{ahead} is ahead: {margin:.3f} {held_out} ({seeds})'
        return (
            f'no clear winner {self.where}: the seeds disagree '
            f'(scratch minus pre-trained from {low:+.3f} to {high:+.3f} '
            f'bits per byte, mean {self.mean:+.3f} over {n} seeds)'
        )


def verdict(checkpoint_final: list[float], scratch_final: list[float], step: int | None) -> Verdict:
    """The verdict from one figure per seed and start as given, at `step` (None: each at its best
    validation step); the command line passes them rounded as printed, so that anyone can recompute
    it from its output. A start is ahead only when it is lower on every seed."""
    if len(checkpoint_final) != len(scratch_final) or not checkpoint_final:
        raise ValueError(
            f'need one final figure per seed from both starts, got {len(checkpoint_final)} and {len(scratch_final)}'
        )
    differences = [round(s - c, PRECISION) for c, s in zip(checkpoint_final, scratch_final)]
    if all(d == 0 for d in differences):
        winner = 'level'
    elif all(d > 0 for d in differences):
        winner = 'checkpoint'
    elif all(d < 0 for d in differences):
        winner = 'scratch'
    else:
        winner = 'unclear'
    return Verdict(winner, differences, step)


def rounded(value: float) -> float:
    return round(value, PRECISION)
