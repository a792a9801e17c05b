"""Guards of a `up-fast pretrain` run: a stop asked for by a signal, and a loss that stopped being finite."""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast.cli.common import (
    CLIError,
)
from up_fast.helpers import exists

if TYPE_CHECKING:
    pass


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM during training asks the loop to stop after the step under way and save; a second
    one stops at once, keeping the checkpoint saved last."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.previous = {}

    def handle(self, signum, frame):
        if exists(self.received):
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Divergence:
    """The first step whose loss is not finite, and the last finite loss before it, tracked on the device: read only
    where the loop reads the loss anyway and before anything is evaluated or saved."""

    def __init__(self, device):
        import torch

        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.last_finite = torch.full((), float('nan'), device=device)

    def update(self, loss, step: int):
        import torch

        finite = torch.isfinite(loss)
        first = ~finite & (self.first_bad < 0)
        self.last_finite = torch.where(finite & (self.first_bad < 0), loss.float(), self.last_finite)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)
        self.first_bad.masked_fill_(first, step)

    def check(self, config: dict, out: Path, saved_step: int | None):
        step = int(self.first_bad.item())
        if step < 0:
            return
        last = self.last_finite.item()
        before = (
            f'last finite loss {last:.4f} at step {step - 1}' if math.isfinite(last) else 'no finite loss before it'
        )
        kept = f'{out} (step {saved_step}) is kept as it was' if exists(saved_step) else f'nothing was written to {out}'
        raise CLIError(
            f'training diverged: the loss is {self.bad_loss.item()} at step {step} ({before}); nothing saved from '
            f'there on, {kept}; try a lower --lr (this run: {config["lr"]:g}) or a smaller model'
        )
