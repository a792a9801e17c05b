"""Universal pre-training (Bloem 2025, arXiv 2506.20057): a drop-in for x_transformers.up_wrapper.

This module is what users import: the same classes, constructor arguments, attributes and state_dict
keys as the reference (tests/test_api.py holds it to the installed x-transformers), with Algorithm 1
done as intended (see ../README.md, "How up_fast differs"):

- generated rows really replace the condition rows in the buffer, and reset rows really reset;
- every draw comes from torch's generators, so `torch.manual_seed` makes a run repeatable, and each
  torch.distributed rank draws a stream of its own (up_fast/rng.py);
- no host-device sync in a training step; the buffer keeps the narrowest integer dtype;
- the paper author's own step order is a set of keyword-only options (UniversalPretrainWrapper.paper).

The generator's fast paths live in up_fast/sampling.py and kernels/, the buffer's row accounting in
up_fast/buffer.py, argument checks in up_fast/checks.py and up_fast/wrapper_checks.py.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torch.nn import Module
from x_transformers.x_transformers import AutoregressiveWrapper, TransformerWrapper

from up_fast import buffer as buffer_ops_torch
from up_fast.backend import BackendChoice, KernelPath, check_backend
from up_fast.buffer import StepRows, draw_step_rows, token_dtype
from up_fast.checks import (
    check_bool,
    check_causal_transformer,
    check_data_generator,
    check_int,
    check_torch_generator,
)
from up_fast.config import interpreted, nvtx_from_env
from up_fast.graph import GraphedStepData
from up_fast.helpers import default, divisible_by, exists
from up_fast.prefetch import Prefetcher, check_prefetch, default_mode, versions
from up_fast.profiling import phase
from up_fast.rng import StepRandomness, distributed_rank, follows_generator, seed_from_torch
from up_fast.synthetic_generator import SyntheticDataGenerator, random_sequences  # noqa: F401 (public here)
from up_fast.wrapper_checks import check_generator_fits, check_wrapper_sizes


@dataclass
class StepData:
    """What a training step draws and generates before it writes anything (see draw_and_generate)."""

    step: int
    rows: StepRows
    noise: Tensor | None  # (num_reset, seq_len) in the buffer's dtype
    generated: Tensor  # (generation batch, seq_len) int64, where the generator lives
    randomness: StepRandomness  # the step's generators, after its draws


def module_device(module: Module, fallback) -> torch.device:
    """Where a module's weights live (fallback for a module without any)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device(fallback)


class UniversalPretrainWrapper(Module):
    """Pre-trains a causal TransformerWrapper on synthetic data (Algorithm 1 of the paper).

    Each `forward()`, with the defaults (the reference's algorithm, done as intended):
      1. draws `generation_batch_size` (default: batch_size) condition rows and, from the same
         permutation, `num_reset` other rows to reset; draws as many seed rows (any rows) cropped to
         `seed_length` at random offsets;
      2. generates `seq_len` tokens from each (seed, condition) prefix;
      3. increments `step`, re-drawing the generator's weights every `reset_turing_machine_every` steps;
      4. resets the reset rows to fresh noise (half uniform random, half constant);
      5. writes the generated rows in place of the condition rows;
      6. draws a fresh training batch (distinct rows) from the updated buffer and returns its
         autoregressive loss.
    Seeds and conditions are read before anything is written. num_reset may be up to buffer_size:
    beyond buffer_size - generation_batch_size the reset rows continue onto condition rows, which
    then hold their generated rows (up_fast.buffer.StepRows states this and the author's order);
    `last_step_rows` holds the rows of the latest step.

    Keyword-only additions (the defaults keep the reference's behaviour):

    - where the draws come from (up_fast/rng.py): `generator` (a torch.Generator every draw comes
      from), or `rng_seed` (per-step generators seeded by (rng_seed, rank, step): exact resume from a
      state_dict). With neither, the seed of those per-step generators is drawn from torch's global
      generator when the wrapper is built: `torch.manual_seed` makes a run repeatable, and under
      torch.distributed each rank draws its own data even when all called the same manual seed.
      The default data generator is drawn from that stream; with `generator` or `rng_seed`, so is any
      data generator that takes a torch.Generator (`reset_(*, generator=)` and
      `generate_unchecked(..., generator=)`, as up_fast's do); another kind gets a warning.
    - the paper author's step (UniversalPretrainWrapper.paper sets them all): `generation_batch_size`
      (rows generated per step, default batch_size), `constant_init` (the buffer starts as constant
      rows), `reset_first` (reset random distinct rows before anything is read), `distinct_seed_rows`,
      `shared_seed_offset` (all seeds cropped at one random offset).
    - `prefetch=True`: each forward() starts the next step's draws and generation right after its own data
      is written, so that on CUDA they run on a side stream while the transformer trains (on the CPU at
      once, before the transformer: the same data, nothing overlaps; up_fast/prefetch.py). The data,
      the buffer and the losses are the same as without it, through save and resume and under DDP: the
      prefetched work is never saved, and is redone from the same per-step generators whenever what it
      read has changed. Needs per-step generators (not `generator=`) and an up_fast-form data generator.
    - `cuda_graph=True`: each step's draws, prefix gather and generation are one CUDA graph replay
      (up_fast/graph.py): the same draws as without it. Off by default until validated on a GPU; needs
      what prefetch needs and the buffer on the GPU. Off CUDA the same body runs eagerly.
    - `nvtx=True` (or UP_FAST_NVTX=1) marks each phase of a step with an NVTX range for Nsight
      (up_fast/profiling.py); `backend` ('auto', 'triton', 'torch') is the default generator's, and the
      buffer's kernels follow the generator's backend. A data_generator you pass keeps its own backend
      (set it in its constructor): backend= disagreeing with it is an error, never a change to it.

    With `keep_buffer_on_cpu=True` the buffer is a plain attribute, not in the state_dict (as in the
    reference): to resume exactly, save `synth_data_buffer` beside the state_dict and copy it back.
    The data generator's weights are frozen (requires_grad=False): they are never trained, and DDP
    must neither all-reduce nor broadcast them, nor the buffer.
    """

    def __init__(
        self,
        model: TransformerWrapper,
        data_generator: SyntheticDataGenerator | Module | None = None,
        buffer_size=None,
        num_reset=20,
        batch_size=32,
        seq_len=512,
        seed_length=8,
        reset_turing_machine_every=0,
        keep_buffer_on_cpu=False,
        *,
        generator: torch.Generator | None = None,
        rng_seed: int | None = None,
        nvtx: bool | None = None,
        backend: str | None = None,
        generation_batch_size: int | None = None,
        constant_init: bool = False,
        reset_first: bool = False,
        distinct_seed_rows: bool = False,
        shared_seed_offset: bool = False,
        prefetch: bool = False,
        cuda_graph: bool = False,
    ):
        super().__init__()

        check_causal_transformer('model', model)
        batch_size, seq_len, seed_length, buffer_size, generation_batch_size, num_reset = check_wrapper_sizes(
            model, batch_size, seq_len, seed_length, buffer_size, generation_batch_size, num_reset
        )
        reset_turing_machine_every = check_int('reset_turing_machine_every', reset_turing_machine_every, low=0)
        check_bool('keep_buffer_on_cpu', keep_buffer_on_cpu)
        for name, flag in (
            ('constant_init', constant_init),
            ('reset_first', reset_first),
            ('distinct_seed_rows', distinct_seed_rows),
            ('shared_seed_offset', shared_seed_offset),
        ):
            check_bool(name, flag)
        nvtx = check_bool('nvtx', nvtx) if exists(nvtx) else nvtx_from_env()
        backend_given = exists(backend)
        backend = check_backend(backend)  # the default from UP_FAST_BACKEND when not given
        check_torch_generator('generator', generator)
        check_bool('prefetch', prefetch)
        check_bool('cuda_graph', cuda_graph)
        if cuda_graph and keep_buffer_on_cpu:
            raise ValueError(
                'cuda_graph=True captures the data step on the GPU, where the buffer must live: '
                'pass keep_buffer_on_cpu=False'
            )
        if exists(rng_seed):
            rng_seed = check_int('rng_seed', rng_seed, low=0)
            if exists(generator):
                raise ValueError('pass generator or rng_seed, not both: rng_seed makes per-step generators of its own')

        num_tokens = model.num_tokens
        dim = model.attn_layers.dim

        default_data_generator = not exists(data_generator)
        if default_data_generator:
            data_generator = SyntheticDataGenerator(
                num_tokens=num_tokens, dim=dim, max_seq_len=seq_len, backend=backend
            )
        check_data_generator('data_generator', data_generator)

        generator_backend = check_generator_fits(
            data_generator,
            num_tokens=num_tokens,
            seq_len=seq_len,
            reset_turing_machine_every=reset_turing_machine_every,
            backend=backend,
            backend_given=backend_given,
            default_data_generator=default_data_generator,
        )

        takes_generator = follows_generator(data_generator)
        check_prefetch(prefetch, exists(generator), takes_generator, data_generator)
        check_prefetch(cuda_graph, exists(generator), takes_generator, data_generator, option='cuda_graph')

        # all checked: from here on nothing fails, so a refused call changed nothing

        self.takes_generator = takes_generator
        if exists(rng_seed) and not self.takes_generator:
            warnings.warn(
                f"rng_seed governs the wrapper's draws, but data_generator of type {type(data_generator).__name__} "
                "draws from torch's global generators (it lacks reset_(*, generator=) and "
                'generate_unchecked(length, seed, condition, *, generator=)): its machines and samples are the same '
                'on every rank with the same torch.manual_seed, and a resumed run does not repeat them. Seed torch '
                'per rank yourself (torch.manual_seed(seed + rank)) and save torch.get_rng_state() with each '
                'checkpoint, or use an up_fast generator',
                stacklevel=2,
            )
        if exists(rng_seed) and keep_buffer_on_cpu:
            warnings.warn(
                'keep_buffer_on_cpu=True keeps the buffer out of the state_dict (as in the reference), so rng_seed '
                'alone does not resume a run exactly: save wrapper.synth_data_buffer beside the state_dict and copy it '
                'back into wrapper.synth_data_buffer after loading',
                stacklevel=2,
            )

        self.model = model
        self.ar_wrapped = AutoregressiveWrapper(model)
        self.data_generator = data_generator

        self.reset_turing_machine_every = reset_turing_machine_every
        self.seq_len = seq_len
        self.seed_length = seed_length
        self.batch_size = batch_size
        self.num_reset = num_reset
        self.buffer_size = buffer_size
        self.generation_batch_size = generation_batch_size
        self.step_options = dict(
            generation_batch_size=generation_batch_size,
            reset_first=reset_first,
            distinct_seed_rows=distinct_seed_rows,
            shared_seed_offset=shared_seed_offset,
        )
        self.nvtx = nvtx
        # the buffer's kernels follow the generator's backend
        self.backend_choice = BackendChoice(generator_backend if isinstance(generator_backend, str) else backend)
        self._prefetch = prefetch
        self.prefetch_mode = None  # 'stream', 'thread', 'inline'; None: prefetch.default_mode
        self.prefetcher = Prefetcher()
        self.cuda_graph = cuda_graph
        self.graphed = GraphedStepData()

        self.randomness = self.make_randomness(generator, rng_seed)

        self.random_sequences_fn = partial(random_sequences, num_tokens, seq_len, dtype=token_dtype(num_tokens))

        # the weights of the data generator follow the run's stream: always the default one (built
        # here), a given one that takes a generator when the caller asked for a stream of their own
        self.randomness.begin(0)
        if self.takes_generator and (default_data_generator or exists(generator) or exists(rng_seed)):
            data_generator.reset_(
                generator=default(generator, self.randomness.on(module_device(data_generator, 'cpu')))
            )

        init_generator = default(generator, self.randomness.on('cpu'))
        init_device = getattr(init_generator, 'device', None)
        if constant_init:
            init_data_buffer = self.random_sequences_fn(
                0, buffer_size, shuffle=False, device=init_device, generator=init_generator
            )  # (buffer_size, seq_len)
        else:
            # odd buffer sizes get one more random row than constant rows (the reference drops a row)
            init_data_buffer = self.random_sequences_fn(
                buffer_size - buffer_size // 2, buffer_size // 2, device=init_device, generator=init_generator
            )
        init_data_buffer = init_data_buffer.cpu()

        if keep_buffer_on_cpu:
            self.synth_data_buffer = init_data_buffer
        else:
            self.register_buffer('synth_data_buffer', init_data_buffer)

        self.register_buffer('step', torch.tensor(0))
        self.saw_step_(0)
        self.last_step_rows = None  # StepRows of the latest step: which rows it read and wrote

        # the generator is never trained: no gradients, and DDP (wrapping this module) leaves its
        # weights and the buffer alone, so that each rank keeps a data stream of its own
        data_generator.requires_grad_(False)
        self._ddp_params_and_buffers_to_ignore = [
            'synth_data_buffer',
            'step',
            *(f'data_generator.{name}' for name, _ in data_generator.named_parameters()),
            *(f'data_generator.{name}' for name, _ in data_generator.named_buffers()),
        ]

    @classmethod
    def paper(cls, model: TransformerWrapper, *, batch_size=32, seq_len=512, **overrides) -> UniversalPretrainWrapper:
        """The paper author's algorithm and generator (pbloem/up, experiments/gpt-mup.py, source 'lstm').

        The buffer starts as constant rows; each step first resets 100 random distinct rows (50
        constant, 50 uniform noise), then draws distinct condition rows and distinct seed rows (all
        seeds cropped at one random offset), generates, writes back over the condition rows and draws
        the training batch from distinct rows. The generator batch is twice the training batch, the
        buffer twenty generator batches, and the generator is re-drawn every step (the machine of
        step n's generation is never used again). The data generator is
        up_fast.paper.PaperDataGenerator(dim=128, num_tokens=model.num_tokens, max_seq_len=seq_len,
        backend=backend), `backend` as given in `overrides` ('auto' or 'torch').
        Any constructor argument in `overrides` replaces the author's value (buffer_size follows a
        given generation_batch_size unless given too). Without a given num_reset, the author's 100
        resets are capped at what the buffer holds (the largest even count <= buffer_size): 40 at
        batch_size=1, 80 at batch_size=2, where the author's sizes make a buffer of 40 and 80 rows.
        """
        from up_fast.paper import paper_wrapper_settings  # imported here: only this preset needs it

        built_here = 'data_generator' not in overrides
        settings = paper_wrapper_settings(model, batch_size, seq_len, overrides)
        wrapper = cls(model, batch_size=batch_size, seq_len=seq_len, **settings)

        # built here like the default generator, so drawn from the run's stream like it (with
        # generator= or rng_seed= the constructor has done so already)
        if built_here and not (exists(settings.get('generator')) or exists(settings.get('rng_seed'))):
            wrapper.redraw_data_generator_()
        return wrapper

    @staticmethod
    def make_randomness(generator: torch.Generator | None, rng_seed: int | None) -> StepRandomness:
        rank = distributed_rank()
        world_size = int(os.environ.get('WORLD_SIZE', 1))
        if world_size > 1 and rank == 0 and os.environ.get('RANK', '0') != '0' and not exists(generator):
            warnings.warn(
                'the wrapper mixes the rank from torch.distributed into its draws, but torch.distributed is not '
                "initialised yet: this rank would draw rank 0's data stream. Build the wrapper after "
                'dist.init_process_group()',
                stacklevel=3,
            )
        if exists(generator):
            if world_size > 1:
                warnings.warn(
                    'every draw comes from the generator you passed, so ranks that seed it alike draw alike data: '
                    'seed it per rank (for example generator.manual_seed(seed + rank)), or pass rng_seed instead',
                    stacklevel=3,
                )
            return StepRandomness(generator=generator)
        seed = rng_seed if exists(rng_seed) else seed_from_torch()
        return StepRandomness(seed=seed, rank=rank)

    @property
    def device(self):
        return self.step.device

    # the step count: `step` (registered, in the state_dict) is the one truth; the host keeps the value
    # it last wrote, with the tensor's version counter, and reads `step` back only after a write from
    # outside (load_state_dict, DCP load in place, step.copy_()): so a training step never syncs.
    # A write through `step.data` bypasses the version counter and goes unnoticed: call
    # saw_step_(int(step)) after one (as invalidate_folded() after a `.data` write to a generator weight)

    @property
    def num_steps(self) -> int:
        """Training steps done: the value of `step`, read back only after `step` was written from
        outside in place (its version counter changed). A write through `step.data` does not change
        the counter and is not seen: call `saw_step_(int(wrapper.step))` after one."""
        seen_step, version, value = self._step_seen
        step = self.step
        try:
            current = step._version
        except RuntimeError:  # an inference tensor has no version counter: always read
            return int(step)
        if seen_step is not step or version != current:
            value = int(step)
            self._step_seen = (step, current, value)
        return value

    def saw_step_(self, value: int):
        """Record that `step` holds `value` (written by the wrapper itself)."""
        try:
            version = self.step._version
        except RuntimeError:
            version = None
        self._step_seen = (self.step, version, value)  # the tensor itself (not a weakref: the wrapper stays picklable)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() make a new `step` tensor with the same value: carry the host copy over
        # (read before the move, only if something outside wrote `step`), instead of reading it
        # back in the next training step
        value = self.num_steps
        module = super()._apply(fn, *args, **kwargs)
        self.saw_step_(value)
        return module

    def to_device(self, tokens: Tensor) -> Tensor:
        # rows from a CPU buffer cross to the GPU from pinned memory, without blocking the host
        if tokens.device == self.device:
            return tokens
        if self.device.type == 'cuda':
            return tokens.pin_memory().to(self.device, non_blocking=True)
        return tokens.to(self.device)

    @torch.no_grad()
    def get_rand_sequences_from_buffer(self, size=None) -> Tensor:
        """`size` (default batch_size) distinct random rows of the buffer, (size, seq_len) int64 on the
        buffer's device, as the reference's method returns them. The row indices are drawn where the
        buffer lives (the reference draws them on the model's device, which fails with
        keep_buffer_on_cpu=True on a GPU), from the wrapper's stream: a training step after it draws
        the same as without it, unless an explicit `generator=` was passed, whose stream it advances."""
        size = check_int(
            'size',
            default(size, self.batch_size),
            low=0,
            high=self.buffer_size,
            allowed=f'an int in [0, buffer_size = {self.buffer_size}] (the rows are distinct)',
        )
        buffer = self.synth_data_buffer
        rows = torch.randperm(self.buffer_size, device=buffer.device, generator=self.randomness.on(buffer.device))[
            :size
        ]
        return buffer[rows].long()

    def redraw_data_generator_(self):
        """Re-draw the data generator's weights (its reset_()), from the wrapper's stream when it takes a generator."""
        if self.takes_generator:
            self.data_generator.reset_(generator=self.randomness.on(module_device(self.data_generator, self.device)))
        else:
            self.data_generator.reset_()

    @property
    def backend(self) -> str:
        return self.backend_choice.name

    @backend.setter
    def backend(self, backend: str | None):
        # the buffer's kernels only: the data generator keeps its own
        self.backend_choice = BackendChoice(backend)

    def buffer_ops(self, buffer: Tensor):
        """The gather, write-back and reset of `buffer`: the Triton kernels (up_fast.kernels.buffer_ops) where the
        wrapper's backend takes them for its device and dtype (for 'auto', once their first-use check passed), else
        their PyTorch twins (up_fast.buffer)."""
        if self.buffer_path(buffer).fused:
            from up_fast.kernels import buffer_ops

            return buffer_ops
        return buffer_ops_torch

    def buffer_path(self, buffer: Tensor):
        """Which implementation does the buffer's work, and why (a KernelPath)."""
        # a buffer kept on the CPU beside a GPU generator: the kernels cannot reach it, and need not
        if not (buffer.device.type == 'cuda' or interpreted()):
            return KernelPath('torch', None, f'the buffer is on {buffer.device}, where the buffer kernels do not run')
        return self.backend_choice.buffer_path(buffer.dtype, buffer.device)

    def read_dtype(self, buffer: Tensor, device) -> torch.dtype:
        # rows widen to int64 where they are used; rows that cross devices cross narrow
        return torch.long if buffer.device == torch.device(device) else buffer.dtype

    @torch.no_grad()
    def draw_and_generate(self, step: int, randomness: StepRandomness) -> StepData:
        """Steps 1-2 of Algorithm 1 for training step `step`: draw the rows and the reset noise, read the seeds
        and conditions, generate. Writes nothing: it reads only the buffer and the generator's weights, so
        that it can run ahead, while the transformer trains on the step before (prefetch=True)."""
        buffer = self.synth_data_buffer  # (buffer_size, seq_len), narrow integer dtype
        ops = self.buffer_ops(buffer)
        randomness.begin(step)
        generator = randomness.on(buffer.device)
        generator_device = module_device(self.data_generator, self.device)

        with phase('index draw', self.nvtx):
            rows = draw_step_rows(
                self.buffer_size,
                self.batch_size,
                self.num_reset,
                self.seq_len,
                self.seed_length,
                **self.step_options,
                device=buffer.device,
                generator=generator,
            )
            noise = None
            if self.num_reset > 0:
                # the kinds in a shuffled order: when resets wrap onto condition rows (see StepRows), the
                # reset rows that survive are an even mix, not the uniform half first
                noise = self.random_sequences_fn(
                    self.num_reset // 2, self.num_reset // 2, device=buffer.device, generator=generator
                )  # (num_reset, seq_len)

        # read seeds and conditions, as they are after the reset when it comes first: the buffer is
        # written only once the generator has succeeded

        pending = (rows.reset_rows, noise) if rows.reset_first and exists(noise) else None

        with phase('gather', self.nvtx):
            # (generation batch, seed_length + seq_len)
            prefix = ops.gather_prefix(
                buffer,
                rows.seed_rows,
                rows.seed_offsets,
                rows.condition_rows,
                self.seed_length,
                pending=pending,
                dtype=self.read_dtype(buffer, generator_device),
            )
            prefix = self.to_device(prefix)
            seed, condition = prefix[:, : self.seed_length], prefix[:, self.seed_length :]

        with phase('generate', self.nvtx):
            if self.takes_generator:  # the generator's own default temperature; noise is drawn where its weights are
                sampling_generator = randomness.on(generator_device)
                generated = self.data_generator.generate_unchecked(
                    self.seq_len, seed, condition, generator=sampling_generator
                )
            else:
                generated = self.data_generator.generate(self.seq_len, seed=seed.long(), condition=condition.long())

        expected_shape = (self.generation_batch_size, self.seq_len)
        if tuple(generated.shape) != expected_shape:  # host-side shapes: checked before any write
            raise ValueError(
                f'data_generator.generate returned shape {tuple(generated.shape)}, but the buffer needs '
                f'(generation_batch_size, seq_len) = {expected_shape} rows'
            )

        return StepData(step=step, rows=rows, noise=noise, generated=generated, randomness=randomness)

    def make_step_data(self, step: int, randomness: StepRandomness | None = None) -> StepData:
        """draw_and_generate for `step`: replayed from a CUDA graph with cuda_graph=True (up_fast/graph.py),
        else eagerly from `randomness` (default: the wrapper's own)."""
        if self.cuda_graph:
            return self.graphed.make(self, step, module_device(self.data_generator, self.device))
        return self.draw_and_generate(step, default(randomness, self.randomness))

    @torch.no_grad()
    def data_step_(self) -> Tensor:
        """Algorithm 1 but the loss: updates the buffer and returns the training batch,
        (batch_size, seq_len) int64 on the model's device. A step that fails changes nothing of
        the wrapper's: buffer, `step`, `last_step_rows` and the per-step streams stay as they were
        (the step repeats its draws when called again). An explicit `generator=` passed to the
        constructor has advanced, though, by the draws made before the failure."""
        buffer = self.synth_data_buffer  # (buffer_size, seq_len), narrow integer dtype
        ops = self.buffer_ops(buffer)
        step = self.num_steps + 1

        # 1-2. draw the rows, read seeds and conditions, generate (nothing is written yet). With prefetch,
        # made while the transformer trained on the step before, from this step's generators

        made = self.prefetcher.take(step, self.prefetch_key)
        if not exists(made):
            made = self.make_step_data(step)
        rows = made.rows

        # 4-5. reset the reset rows, write the generated rows over the condition rows (after the reset:
        # generated rows win)

        with phase('write-back and reset', self.nvtx):
            ops.write_rows_(buffer, rows.reset_rows, made.noise, rows.condition_rows, made.generated)
        self.last_step_rows = rows
        self.randomness = made.randomness

        # 3. count the step, maybe re-draw the turing machine. After the writes, so that a step that
        # fails counts nothing; the re-drawn weights act from the next step's generation on

        self.step.add_(1)
        self.saw_step_(step)

        if self.reset_turing_machine_every > 0 and divisible_by(step, self.reset_turing_machine_every):
            self.redraw_data_generator_()

        # 6. a fresh training batch, widened to int64 only now

        with phase('training-batch gather', self.nvtx):
            batch = ops.gather_rows(buffer, rows.batch_rows, dtype=self.read_dtype(buffer, self.device))  # (batch, seq)
            return self.to_device(batch).long()

    @property
    def prefetch(self) -> bool:
        """Whether forward() makes the next step's data ahead (see the class docstring); may change between steps."""
        return self._prefetch

    @prefetch.setter
    def prefetch(self, prefetch: bool):
        check_bool('prefetch', prefetch)
        check_prefetch(prefetch, exists(self.randomness.generator), self.takes_generator, self.data_generator)
        self._prefetch = prefetch
        if not prefetch:
            self.prefetcher.drop()

    def prefetch_key(self, step: int) -> tuple:
        """What the data of `step` is made from, besides its generators: the buffer and the generator's weights."""
        generator_state = (*self.data_generator.parameters(), *self.data_generator.buffers())
        return step, versions((self.synth_data_buffer, *generator_state)), self.randomness.seed, self.randomness.rank

    def prefetch_next_(self):
        """Start making the next step's data (up_fast/prefetch.py): on a side stream on CUDA, so that it
        runs while the transformer trains."""
        step = self.num_steps + 1
        randomness = self.randomness.fresh()
        device = module_device(self.data_generator, self.device)  # where the generation runs
        mode = default(self.prefetch_mode, default_mode(device))
        self.prefetcher.start(
            partial(self.make_step_data, step, randomness),
            step,
            self.prefetch_key(step),
            (self.synth_data_buffer, *self.data_generator.parameters(), *self.data_generator.buffers()),
            mode=mode,
            device=device,
        )

    def forward(self):
        # following algorithm 1
        data = self.data_step_()
        if self.prefetch:
            self.prefetch_next_()
        with phase('transformer', self.nvtx):
            return self.ar_wrapped(data)
