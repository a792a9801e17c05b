"""Where the random draws of a training step come from.

Three modes, chosen by the wrapper's keyword-only arguments:

- `generator=torch.Generator(...)`: every draw on that generator's device type comes from it (a
  stream the caller owns and may save with `get_state()`);
- `rng_seed=int`: each step draws from fresh generators seeded by (rng_seed, rank, step, device
  type). A step's draws depend on nothing else, so a run restored from its state_dict (whose `step`
  says where it stopped) continues exactly, and under torch.distributed each rank has its own
  stream while the whole run follows from one seed;
- neither: torch's global generators, so `torch.manual_seed` makes a run repeatable.
"""

from __future__ import annotations

from zlib import crc32

import torch

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


def distributed_rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class StepRandomness:
    def __init__(self, generator: torch.Generator | None = None, rng_seed: int | None = None, rank: int = 0):
        self.generator = generator
        self.rng_seed = rng_seed
        self.rank = rank
        self.step = None
        self.per_device = {}

    @property
    def is_seeded(self) -> bool:
        return exists(self.generator) or exists(self.rng_seed)

    def begin(self, step: int):
        """Start the draws of `step` (0: construction, n: the n-th training step)."""
        self.step = step
        self.per_device = {}

    def on(self, device) -> torch.Generator | None:
        """The generator for draws on `device` in the current step; None means torch's global one."""
        device = torch.device(device)

        if exists(self.generator):
            if self.generator.device.type != device.type:
                raise ValueError(f'generator lives on {self.generator.device} but this draw happens on {device}; '
                                 'pass a generator on that device, rng_seed=int (per-device generators), '
                                 'or neither (torch.manual_seed then seeds every device)')
            return self.generator

        if not exists(self.rng_seed):
            return None

        if device.type not in self.per_device:
            generator = torch.Generator(device=device)
            generator.manual_seed(mix_seed(self.rng_seed, self.rank, self.step, crc32(device.type.encode())))   # crc32, not hash(): hash is salted per process
            self.per_device[device.type] = generator

        return self.per_device[device.type]
