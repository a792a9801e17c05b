"""Argument checks in one style: each names the argument, the value and what is allowed, and raises
TypeError for a wrong kind of value, ValueError for a value out of range. Checks live here, not inline,
so that every public entry point words its errors the same way."""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor


def check_int(name: str, value, *, low: int | None = None, high: int | None = None, allowed: str | None = None) -> int:
    """value must be an int in [low, high] (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f'{name} must be an int, got {value!r} of type {type(value).__name__}')
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if allowed is None:
            if high is None:
                allowed = f'an int >= {low}'
            elif low is None:
                allowed = f'an int <= {high}'
            else:
                allowed = f'an int in [{low}, {high}]'
        raise ValueError(f'{name} must be {allowed}, got {value}')
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False, got {value!r} of type {type(value).__name__}')
    return value


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(
            f'temperature must be a real number >= 0 (0 means greedy argmax), got {temperature!r} of type '
            f'{type(temperature).__name__}'
        )
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f'temperature must be a finite number >= 0 (0 means greedy argmax), got {temperature}')
    return temperature


def check_positive_real(name: str, value) -> float:
    """value must be a finite real number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} must be a real number, got {value!r} of type {type(value).__name__}')
    value = float(value)
    if not value > 0 or value == float('inf'):
        raise ValueError(f'{name} must be a finite number > 0, got {value}')
    return value


def check_scale_range(scale_range) -> tuple[float, float]:
    """scale_range must be a (low, high) pair of finite numbers, 0 < low <= high."""
    if not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2:
        raise TypeError(f'scale_range must be a (low, high) pair of numbers, got {scale_range!r}')
    low, high = (check_positive_real('scale_range', v) for v in scale_range)
    if low > high:
        raise ValueError(f'scale_range must have low <= high, got {tuple(scale_range)}')
    return low, high


def check_token_tensor(name: str, tokens, num_tokens: int, *, batch: int | None = None) -> Tensor:
    """tokens must be a (batch, length) integer tensor with every id in [0, num_tokens).

    The range check reads two numbers back from the device: it is for user-facing calls, not for
    the training step, whose tokens come from the buffer and are in range by construction.
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}')
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise TypeError(f'{name} must hold integer token ids (int64, int32, int16 or uint8), got dtype {tokens.dtype}')
    if tokens.ndim != 2:
        raise ValueError(f'{name} must have shape (batch, length), got {tokens.ndim} dimensions: {tuple(tokens.shape)}')
    if batch is not None and tokens.shape[0] != batch:
        raise ValueError(f'{name} must have batch size {batch} to match the other prefix tensor, got {tokens.shape[0]}')
    if tokens.numel() > 0:
        low, high = torch.aminmax(tokens.long())
        if low.item() < 0 or high.item() >= num_tokens:
            raise ValueError(
                f'{name} holds token ids in [{low.item()}, {high.item()}], outside the vocabulary [0, {num_tokens - 1}]'
            )
    return tokens


def check_uniform_noise(uniform_noise, shape: tuple[int, int, int]):
    if not isinstance(uniform_noise, Tensor):
        raise TypeError(f'uniform_noise must be a torch.Tensor of U[0, 1) draws, got {type(uniform_noise).__name__}')
    if tuple(uniform_noise.shape) != tuple(shape):
        raise ValueError(
            f'uniform_noise must have shape {tuple(shape)} (batch, length, num_tokens), got '
            f'{tuple(uniform_noise.shape)}'
        )
    if not uniform_noise.is_floating_point():
        raise TypeError(
            f'uniform_noise must be a floating point tensor of U[0, 1) draws, got dtype {uniform_noise.dtype}'
        )


def check_torch_generator(name: str, value) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f'{name} must be a torch.Generator or None, got {type(value).__name__}')
    return value


def check_causal_transformer(name: str, model):
    """model must be a causal x-transformers TransformerWrapper (duck-typed: attn_layers, num_tokens, causal)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'{name} must be a causal x_transformers TransformerWrapper, got {type(model).__name__}')
    if getattr(model, 'attn_layers', None) is None or not hasattr(model, 'num_tokens'):
        raise TypeError(
            f'{name} must be a causal x_transformers TransformerWrapper (with attn_layers and num_tokens), got '
            f'{type(model).__name__}'
        )
    if not getattr(model.attn_layers, 'causal', False):
        raise ValueError(
            f'{name} must be causal (attn_layers=Decoder(...)), got attn_layers of type '
            f'{type(model.attn_layers).__name__} with causal=False'
        )
    return model


def check_seq_len(seq_len: int, model) -> int:
    """seq_len within what limits the model: the length of its learned absolute position embedding, the only
    limit x-transformers enforces. A model without one (rotary, ALiBi, relative or no positions) takes any length,
    whatever its max_seq_len says, as under the reference."""
    limit = getattr(getattr(model, 'pos_emb', None), 'max_seq_len', None)
    if isinstance(limit, int) and limit > 0 and seq_len > limit:
        raise ValueError(
            f"seq_len must be at most the model's max_seq_len ({limit}), the length of its absolute position "
            f'embedding, got {seq_len} (a model without absolute positions, e.g. rotary, has no such limit)'
        )
    return seq_len


def check_data_generator(name: str, data_generator):
    if not isinstance(data_generator, torch.nn.Module) or not callable(getattr(data_generator, 'generate', None)):
        raise TypeError(
            f'{name} must be a Module with a generate(length, seed=, condition=) method, got '
            f'{type(data_generator).__name__}'
        )
    return data_generator
