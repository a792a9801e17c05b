"""Prefetch: the next training step's data, made while the transformer trains on this one.

A data step's reads and draws (rows, reset noise, seeds, conditions, the generated rows: the
wrapper's `draw_and_generate`) depend only on the buffer, the data generator's weights and the
step's own generators (up_fast/rng.py), never on the transformer. So with `prefetch=True` the
wrapper starts step n + 1's draw_and_generate as soon as step n's data is written, and step n + 1
only writes it back. The data is the same, bit for bit, as without prefetch, because:

- the prefetched work draws from generators of its own, seeded by (seed, rank, step) as the step's
  would be (StepRandomness.fresh), and writes nothing;
- it is used only if nothing it read has changed since it started: the step number, the buffer
  (the same tensor, the same version counter), every weight and buffer of the data generator (their
  version counters), the seed and the rank. Anything else (load_state_dict, a re-drawn or moved
  generator, a write into the buffer) drops it and the step makes its data then, from the same
  per-step generators: a prefetched batch is never part of a state_dict, never lost and never drawn
  twice across a checkpoint;
- a prefetch that failed is dropped and the step redoes the work, raising where it would have.

How it runs ahead (`mode`):
- 'stream' (CUDA): on a side stream that first waits for the current stream (the step's writes and
  the re-drawn weights are then done). The step that takes it makes the current stream wait for
  the side stream and calls `record_stream` on every tensor that crosses, so that the caching
  allocator does not hand their memory out while the current stream still reads them. The host
  enqueues the whole generation before the transformer's forward: with the PyTorch sampling path
  (a few launches a token) that host work is what is left to see; the sampling kernel or
  cuda_graph=True make it a few launches.
- 'thread' (CPU): in a background thread, which overlaps the transformer where torch's kernels
  release the GIL. On the shared 2-core CPU this was developed on it measured no faster than
  'inline' (training step median 1.74 s against 1.67 s, dim 256, depth 2, batch 8, seq_len 256,
  6 rounds, at a load average of 11), so the CPU default is 'inline'; `wrapper.prefetch_mode =
  'thread'` chooses it.
- 'inline': made at once, before the transformer: nothing overlaps, the same semantics and data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from up_fast.helpers import exists

MODES = ('stream', 'thread', 'inline')
CPU_MODE = 'inline'


def check_prefetch(
    prefetch: bool, explicit_generator: bool, takes_generator: bool, data_generator, *, option: str = 'prefetch'
):
    """Refuse prefetch=True (or cuda_graph=True, `option`) where draws made ahead, or replayed, would differ
    from the step's own."""
    if not prefetch:
        return
    if explicit_generator:
        raise ValueError(
            f"{option}=True makes a step's draws from generators of its own, seeded per step, "
            'which needs per-step generators: pass rng_seed=int (or neither) instead of generator='
        )
    if not takes_generator:
        raise ValueError(
            f"{option}=True needs a data generator that draws from the wrapper's per-step generators "
            f'(reset_(*, generator=) and generate_unchecked(length, seed, condition, *, generator=), as '
            f"up_fast's have), got data_generator of type {type(data_generator).__name__}, which draws from "
            f"torch's global generators in an order that {option} would change"
        )


def default_mode(device: torch.device) -> str:
    return 'stream' if torch.device(device).type == 'cuda' else CPU_MODE


def versions(tensors) -> tuple:
    """The version counters of `tensors` (None for an inference tensor, which has none: never equal)."""
    found = []
    for t in tensors:
        try:
            found.append((id(t), t._version))
        except RuntimeError:
            found.append(object())
    return tuple(found)


@dataclass
class Pending:
    step: int
    key: tuple  # what the work read: compared before it is used
    keep_alive: tuple  # the tensors named by id() in key, held so that no id is reused
    made: object = None  # the StepData, once done
    error: BaseException | None = None
    thread: threading.Thread | None = None
    stream: object = None  # the CUDA side stream it was enqueued on
    done: threading.Event = field(default_factory=threading.Event)


class Prefetcher:
    """Runs one `make()` ahead and hands its result to the step it was made for."""

    def __init__(self):
        self.pending = None
        self.streams = {}

    def __getstate__(self):
        # a copy or a pickle of the wrapper starts with nothing pending: the step makes its data then
        return {'pending': None, 'streams': {}}

    def side_stream(self, device: torch.device):
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device=device)
        return self.streams[device]

    def start(self, make, step: int, key: tuple, keep_alive: tuple, *, mode: str, device):
        """Begin make() for `step`; `key` is what it depends on (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f'prefetch mode must be one of {MODES}, got {mode!r}')
        self.drop()
        pending = Pending(step=step, key=key, keep_alive=keep_alive)

        def run():
            try:
                pending.made = make()
            except BaseException as error:  # surfaced by redoing the step where it is taken
                pending.error = error
            finally:
                pending.done.set()

        if mode == 'stream':
            device = torch.device(device)
            stream = self.side_stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))  # the step's writes and re-drawn weights first
            with torch.cuda.stream(stream):
                run()
            pending.stream = stream
        elif mode == 'thread':
            pending.thread = threading.Thread(target=run, name='up_fast-prefetch', daemon=True)
            pending.thread.start()
        else:
            run()
        self.pending = pending

    def wait(self, pending: Pending):
        if exists(pending.thread):
            pending.done.wait()
        if exists(pending.stream):
            torch.cuda.current_stream(pending.stream.device).wait_stream(pending.stream)

    def take(self, step: int, key_of):
        """The StepData made for `step` if nothing it read has changed since (`key_of(step)` is what it
        read now), else None. Either way nothing stays pending."""
        pending, self.pending = self.pending, None
        if not exists(pending):
            return None
        self.wait(pending)
        if pending.step != step or exists(pending.error) or pending.key != key_of(step):
            return None
        if exists(pending.stream):
            current = torch.cuda.current_stream(pending.stream.device)
            for t in tensors_of(pending.made):
                if t.device.type == 'cuda':
                    t.record_stream(current)
        return pending.made

    def drop(self):
        """Forget what is pending (after waiting for it: nothing runs on behind the caller's back)."""
        pending, self.pending = self.pending, None
        if exists(pending):
            self.wait(pending)


def tensors_of(made) -> list:
    rows = made.rows
    found = [
        rows.condition_rows,
        rows.reset_rows,
        rows.seed_rows,
        rows.seed_offsets,
        rows.batch_rows,
        made.noise,
        made.generated,
    ]
    return [t for t in found if isinstance(t, torch.Tensor)]
