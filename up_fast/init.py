"""PyTorch's default initialisation, drawn from a given torch.Generator.

`reset_parameters()` draws from torch's global generator; the data generators re-draw their
weights from the wrapper's stream instead (up_fast/rng.py), so they need the same distributions
with a `generator=`. Shared by SyntheticDataGenerator (up_fast/up_wrapper.py) and
PaperDataGenerator (up_fast/paper.py).
"""

from __future__ import annotations

from math import sqrt

import torch
from torch import nn
from torch.nn import Module

from up_fast.helpers import exists


@torch.no_grad()
def default_init_(m: Module, generator: torch.Generator | None):
    """The distributions of PyTorch's default init for these modules, drawn from `generator`."""

    def draw_(p, draw):
        # draw where the generator lives, then copy (a CUDA generator may init CPU weights)
        if exists(generator) and generator.device != p.device:
            p.copy_(draw(torch.empty_like(p, device=generator.device)))
        else:
            draw(p)

    if isinstance(m, nn.Embedding):
        draw_(m.weight, lambda t: t.normal_(0.0, 1.0, generator=generator))
        return

    if isinstance(m, nn.Linear):
        bound = 1.0 / sqrt(m.in_features)  # kaiming_uniform_(a=sqrt(5)) comes down to this
    else:
        bound = 1.0 / sqrt(m.hidden_size)  # LSTM / GRU

    for p in m.parameters(recurse=False):
        draw_(p, lambda t: t.uniform_(-bound, bound, generator=generator))
