"""Where the random draws of a training step come from, and which data generators can follow them.

The wrapper's draws (buffer rows, noise, sampling, re-drawn Turing machines) come from one of:

- `generator=torch.Generator(...)`: every draw on that generator's device type comes from it (a
  stream the caller owns and may save with `get_state()`);
- per-step generators seeded by (seed, rank, step, device), where the seed is `rng_seed=int`
  or, without it, one number drawn from torch's global CPU generator when the wrapper is built.
  A step's draws depend on nothing else: a run is repeatable from `torch.manual_seed` (or from
  `rng_seed` alone), a run restored from its state_dict (whose `step` says where it stopped)
  continues exactly, and under torch.distributed each rank has a stream of its own, even when
  every rank called the same `torch.manual_seed`.

This module exists so that the one rule for "which generator does this draw use" lives in one place.
"""

from __future__ import annotations

import inspect
from zlib import crc32

import torch
from torch.nn import Module

from up_fast.helpers import exists

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers; nearby inputs give unrelated seeds."""
    state = 0
    for part in parts:
        state = splitmix64(state ^ (part & MASK64))
    return state >> 1


def seed_from_torch() -> int:
    """One seed drawn from torch's global CPU generator: `torch.manual_seed` decides it."""
    return int(torch.randint(0, 2**63 - 1, (), device='cpu'))


def distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def accepts_keyword(fn, name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def follows_generator(data_generator: Module) -> bool:
    """Whether a data generator draws from a torch.Generator it is handed, as up_fast's do: it has
    `reset_(*, generator=...)` and `generate_unchecked(length, seed, condition, *, generator=...)`.
    The wrapper then re-draws and samples it from its own stream; any other generator draws from
    torch's global generators."""
    reset_ = getattr(data_generator, 'reset_', None)
    generate = getattr(data_generator, 'generate_unchecked', None)
    return (
        callable(reset_)
        and callable(generate)
        and accepts_keyword(reset_, 'generator')
        and accepts_keyword(generate, 'generator')
    )


def device_key(device) -> torch.device:
    """The device a draw happens on, in full: an accelerator without an index means its current
    one, so that 'cuda' and 'cuda:0' name one device and 'cuda:0' and 'cuda:1' two."""
    device = torch.device(device)
    if device.index is None and device.type != 'cpu':
        current_device = getattr(getattr(torch, device.type, None), 'current_device', None)
        if callable(current_device):
            device = torch.device(device.type, current_device())
    return device


class StepRandomness:
    """The generators of the current step: `begin(step)`, then `on(device)` for each draw."""

    def __init__(
        self,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        rank: int = 0,
        *,
        keep_generators: bool = False,
    ):
        assert exists(generator) != exists(seed), 'one of generator and seed'
        self.keep_generators = keep_generators
        self.generator = generator
        self.seed = seed
        self.rank = rank
        self.step = None
        self.per_device = {}

    def begin(self, step: int):
        """Start the draws of `step` (0: construction, n: the n-th training step). With keep_generators the
        generators already made are re-seeded in place (the same draws as new ones): a captured CUDA graph
        holds on to the generator objects it was captured with."""
        self.step = step
        if not self.keep_generators:
            self.per_device = {}
        for device, generator in self.per_device.items():
            generator.manual_seed(self.seed_for(device))

    def fresh(self, *, keep_generators: bool = False) -> StepRandomness:
        """The same seed and rank with generators of its own: a step's draws made ahead of time, while
        this one's generators are still in use. Per-step generators only (an explicit generator is one
        stream, whose draws depend on the order they are made in)."""
        assert not exists(self.generator), 'an explicit generator cannot be forked'
        return StepRandomness(seed=self.seed, rank=self.rank, keep_generators=keep_generators)

    def on(self, device) -> torch.Generator:
        """The generator for draws on `device` in the current step."""
        device = torch.device(device)

        if exists(self.generator):
            if self.generator.device.type != device.type:
                raise ValueError(
                    f'generator lives on {self.generator.device} but this draw happens on {device}; '
                    'pass a generator on that device, or rng_seed=int (per-device generators), or neither'
                )
            return self.generator

        # one generator, and one stream, per device: two GPUs of one process do not draw alike
        device = device_key(device)
        if device not in self.per_device:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed_for(device))
            self.per_device[device] = generator

        return self.per_device[device]

    def seed_for(self, device: torch.device) -> int:
        # crc32, not hash(): hash is salted per process
        return mix_seed(self.seed, self.rank, self.step, crc32(str(device).encode()))
