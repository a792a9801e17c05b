"""Argument checks that name the argument, the value and what is allowed."""

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
        raise TypeError(f'temperature must be a real number >= 0 (0 means greedy argmax), got {temperature!r} of type {type(temperature).__name__}')
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f'temperature must be a finite number >= 0 (0 means greedy argmax), got {temperature}')
    return temperature


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
            raise ValueError(f'{name} holds token ids in [{low.item()}, {high.item()}], outside the vocabulary [0, {num_tokens - 1}]')
    return tokens


def check_uniform_noise(uniform_noise, shape: tuple[int, int, int]):
    if not isinstance(uniform_noise, Tensor):
        raise TypeError(f'uniform_noise must be a torch.Tensor of U[0, 1) draws, got {type(uniform_noise).__name__}')
    if tuple(uniform_noise.shape) != tuple(shape):
        raise ValueError(f'uniform_noise must have shape {tuple(shape)} (batch, length, num_tokens), got {tuple(uniform_noise.shape)}')
    if not uniform_noise.is_floating_point():
        raise TypeError(f'uniform_noise must be a floating point tensor of U[0, 1) draws, got dtype {uniform_noise.dtype}')
