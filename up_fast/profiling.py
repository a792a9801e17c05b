"""NVTX ranges around the phases of a training step, for Nsight Systems and Nsight Compute.

Off by default, and then a no-op context (a few hundred nanoseconds a phase). Switch them on with
the wrapper's `nvtx=True` or the environment variable UP_FAST_NVTX=1. Without CUDA the ranges are
torch.profiler record_function ranges, so they show in torch.profiler traces instead.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

PHASES = ('index draw', 'gather', 'generate', 'write-back and reset', 'training-batch gather', 'transformer')


def phase(name: str, enabled: bool):
    """A profiler range named `up_fast/<name>` when enabled, else a no-op context."""
    if not enabled:
        return nullcontext()
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(f'up_fast/{name}')
    return torch.profiler.record_function(f'up_fast/{name}')
