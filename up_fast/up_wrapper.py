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
up_fast/buffer.py, argument checks in up_fast/checks.py.
"""

from __future__ import annotations

import os
import warnings
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import GRU, LSTM, Module

from x_transformers.x_transformers import AutoregressiveWrapper, TransformerWrapper

from up_fast.buffer import draw_step_rows, noise_rows, read_rows, seed_columns, token_dtype
from up_fast.folded_cache import FoldedWeightsCache
from up_fast.backend import check_backend, use_triton
from up_fast.config import nvtx_from_env
from up_fast.profiling import phase
from up_fast.checks import (
    check_bool, check_causal_transformer, check_data_generator, check_int, check_temperature,
    check_token_tensor, check_torch_generator, check_uniform_noise,
)
from up_fast.rng import StepRandomness, distributed_rank, follows_generator, seed_from_torch
from up_fast.helpers import default, divisible_by, exists
from up_fast.init import default_init_
from up_fast.sampling import FoldedRecurrentNet, gumbel_max, noise_steps


# random sequences, a mixture of uniform random rows and constant rows


def random_sequences(
    num_tokens,
    seq_len,
    num_samples_random,
    num_samples_constant,
    shuffle=True,
    device=None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.long,
):
    """(num_samples_random + num_samples_constant, seq_len) rows of noise, shuffled by default.

    Unlike the reference, each constant row has its own token, and every draw comes from torch.
    """
    num_tokens = check_int('num_tokens', num_tokens, low=1)
    seq_len = check_int('seq_len', seq_len, low=1)
    num_samples_random = check_int('num_samples_random', num_samples_random, low=0)
    num_samples_constant = check_int('num_samples_constant', num_samples_constant, low=0)
    if num_samples_random + num_samples_constant == 0:
        raise ValueError('random_sequences needs num_samples_random > 0 or num_samples_constant > 0, got 0 and 0')

    rows = noise_rows(num_samples_random, num_samples_constant, seq_len, num_tokens, device=device, dtype=dtype, generator=generator)

    if not shuffle:
        return rows

    return rows[torch.randperm(rows.shape[0], device=rows.device, generator=generator)]


# synthetic data generator


def is_foldable(embed: Module, net: Module, to_logits: Module) -> bool:
    """Whether embed -> net -> to_logits is the default single-layer LSTM/GRU that the folded path runs."""
    return (
        type(embed) is nn.Embedding
        and type(net) in (LSTM, GRU)
        and net.num_layers == 1
        and not net.bidirectional
        and getattr(net, 'proj_size', 0) == 0
        and net.batch_first               # a time-major net reads (batch, seq) input as (seq, batch), as in the reference
        and type(to_logits) is nn.Linear
        and to_logits.in_features == net.hidden_size
    )


class SyntheticDataGenerator(FoldedWeightsCache, Module):
    """A randomly initialised embed -> LSTM/GRU -> linear network that "enriches" token sequences.

    `generate` teacher-forces the prefix (seed then condition) and samples `length` tokens. The
    default single-layer LSTM/GRU runs the folded path: the fused Triton kernel or its PyTorch
    twin (up_fast.sampling), as `backend` says ('auto', 'triton' or 'torch'; default: the
    UP_FAST_BACKEND environment variable, else 'auto'). A custom `network_klass` runs the generic
    path, one `forward` call per token, as the reference does.
    """

    folded_type = FoldedRecurrentNet        # `folded()` and `invalidate_folded()`: up_fast.folded_cache

    def __init__(
        self,
        dim,
        num_tokens,
        max_seq_len=512,
        hidden_size=None,
        use_gru=False,
        network_klass=None,
        *,
        backend: str | None = None,
    ):
        super().__init__()

        dim = check_int('dim', dim, low=1)
        num_tokens = check_int('num_tokens', num_tokens, low=1)
        self.max_seq_len = check_int('max_seq_len', max_seq_len, low=1)
        hidden_size = check_int('hidden_size', default(hidden_size, dim), low=1)
        check_bool('use_gru', use_gru)
        self.backend = check_backend(backend)

        self.num_tokens = num_tokens
        self.embed = nn.Embedding(num_tokens, dim)

        default_network_klass = partial(GRU if use_gru else LSTM, batch_first=True)
        network_klass = default(network_klass, default_network_klass)

        self.net = network_klass(dim, hidden_size)

        # the reference takes `dim` features here, which breaks whenever hidden_size != dim
        self.to_logits = nn.Linear(hidden_size, num_tokens, bias=False)

        self.invalidate_folded()
        self.apply(self.init_)

    @torch.no_grad()
    def reset_(self, *, generator: torch.Generator | None = None):
        """Re-draw every weight (the default init, then `init_`), from `generator` if one is given."""
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.Linear, LSTM, GRU)):
                default_init_(m, generator)
            elif hasattr(m, 'reset_parameters'):
                m.reset_parameters()

        self.apply(partial(self.init_, generator=generator))

    @torch.no_grad()
    def init_(self, m, generator: torch.Generator | None = None):
        # the paper scales the weights by a random factor; the reference draws it with Python's
        # `random`, which torch.manual_seed does not reach: here it comes from torch
        # (a 0-dim CPU tensor multiplies a CUDA weight without a copy or a sync)
        if isinstance(m, nn.Linear):
            scale = torch.rand((), generator=generator, device=generator.device if exists(generator) else 'cpu')
            if scale.device.type != 'cpu' and scale.device != m.weight.device:
                scale = scale.cpu()
            m.weight.mul_(scale * 1.1)

    @property
    def uses_folded_path(self) -> bool:
        return is_foldable(self.embed, self.net, self.to_logits)

    @torch.no_grad()
    def generate(
        self,
        length,
        seed=None,
        condition=None,
        temperature=1e-4,  # the paper decodes near-greedily
        *,
        generator: torch.Generator | None = None,
        uniform_noise: Tensor | None = None,
    ):
        """Teacher-force cat(seed, condition) and sample `length` tokens from softmax(logits / temperature).

        Returns the last `max_seq_len` tokens of cat(seed, condition, sampled), int64: the sampled
        ones when length == max_seq_len. temperature == 0 is greedy argmax. `uniform_noise`
        (batch, length, num_tokens) of U[0, 1) replaces the random draws, for parity tests.
        """
        length = check_int('length', length, low=1)
        temperature = check_temperature(temperature)

        if not exists(seed) and not exists(condition):
            raise ValueError('generate needs a seed or a condition (batch, length) tensor of token ids, got neither')

        batch = None
        for name, tokens in (('seed', seed), ('condition', condition)):
            if exists(tokens):
                check_token_tensor(name, tokens, self.num_tokens, batch=batch)
                batch = tokens.shape[0]

        prefix_len = sum(t.shape[-1] for t in (seed, condition) if exists(t))
        if prefix_len == 0:
            raise ValueError('generate needs at least one prefix token: seed and condition are both empty')
        if batch == 0:
            raise ValueError('generate needs a batch of at least one sequence, got batch size 0')
        if exists(uniform_noise):
            check_uniform_noise(uniform_noise, (batch, length, self.num_tokens))

        return self.generate_unchecked(length, seed, condition, temperature, generator=generator, uniform_noise=uniform_noise)

    @torch.no_grad()
    def generate_unchecked(self, length, seed, condition, temperature=1e-4, *, generator=None, uniform_noise=None):
        """`generate` without the argument checks, which read values back from the device.
        The training step calls this with tokens from the buffer, in range by construction."""
        device = self.embed.weight.device
        prefix = torch.cat([t.to(device, torch.long) for t in (seed, condition) if exists(t)], dim=-1)   # (batch, prefix_len)

        if self.uses_folded_path and use_triton(self.backend, prefix.device):
            from up_fast.kernels.recurrent_sample import fused_recurrent_sample
            sampled, _ = fused_recurrent_sample(self.folded(), prefix, length, temperature, generator=generator, uniform_noise=uniform_noise)
        elif self.uses_folded_path:
            with torch.autocast(device.type, enabled=False):      # the folded path is fp32 throughout
                sampled, _ = self.folded().sample(prefix, length, temperature, generator=generator, uniform_noise=uniform_noise)
        else:
            sampled = self.generate_generic(prefix, length, temperature, generator=generator, uniform_noise=uniform_noise)

        # the reference returns the last max_seq_len tokens of cat(prefix, sampled)
        if length >= self.max_seq_len:
            return sampled[:, -self.max_seq_len:]

        keep = min(self.max_seq_len - length, prefix.shape[1])
        return torch.cat((prefix[:, prefix.shape[1] - keep:], sampled), dim=-1)

    def generate_generic(self, prefix, length, temperature, *, generator=None, uniform_noise=None):
        """Any network: one `forward` per sampled token, carrying the hidden state."""
        batch = prefix.shape[0]
        sampled = torch.empty((batch, length), dtype=torch.long, device=prefix.device)    # (batch, length)
        noise = noise_steps(batch, length, self.num_tokens, temperature, device=prefix.device, generator=generator, uniform_noise=uniform_noise)

        logits, hiddens = self.forward(prefix)
        for t in range(length):
            token = gumbel_max(logits[:, -1].float(), temperature, next(noise))
            sampled[:, t] = token
            if t < length - 1:
                logits, hiddens = self.forward(token[:, None], hiddens)

        return sampled

    def forward(self, input, hiddens=None):
        tokens = self.embed(input)
        embed, hidden = self.net(tokens, hiddens)
        logits = self.to_logits(embed)
        return logits, hidden


# the wrapper


def model_num_tokens(module: Module) -> int | None:
    num_tokens = getattr(module, 'num_tokens', None)
    if exists(num_tokens):
        return num_tokens
    embed = getattr(module, 'embed', None)
    return embed.num_embeddings if isinstance(embed, nn.Embedding) else None


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
    - `nvtx=True` (or UP_FAST_NVTX=1) marks each phase of a step with an NVTX range for Nsight
      (up_fast/profiling.py); `backend` ('auto', 'triton', 'torch') is handed to the data generator,
      any of up_fast's (it has a `backend` attribute; see SyntheticDataGenerator, PaperDataGenerator).

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
    ):
        super().__init__()

        check_causal_transformer('model', model)
        batch_size = check_int('batch_size', batch_size, low=1)
        seq_len = check_int('seq_len', seq_len, low=2)
        max_seq_len = getattr(model, 'max_seq_len', 0) or 0
        if max_seq_len > 0 and seq_len > max_seq_len:
            raise ValueError(f'seq_len must be at most the model\'s max_seq_len ({max_seq_len}), got {seq_len}')
        seed_length = check_int('seed_length', seed_length, low=1, high=seq_len - 1, allowed=f'an int in (0, seq_len={seq_len})')
        buffer_size = check_int('buffer_size', default(buffer_size, batch_size * 20), low=batch_size + 1, allowed=f'an int > batch_size ({batch_size})')
        generation_batch_size = check_int('generation_batch_size', default(generation_batch_size, batch_size), low=1, high=buffer_size,
                                          allowed=f'an int in [1, buffer_size = {buffer_size}]')
        num_reset = check_int('num_reset', num_reset, low=0, high=buffer_size, allowed=f'an even int in [0, buffer_size = {buffer_size}]')
        if not divisible_by(num_reset, 2):
            raise ValueError(f'num_reset must be even (half the reset rows are uniform noise, half constant), got {num_reset}')
        reset_turing_machine_every = check_int('reset_turing_machine_every', reset_turing_machine_every, low=0)
        check_bool('keep_buffer_on_cpu', keep_buffer_on_cpu)
        for name, flag in (('constant_init', constant_init), ('reset_first', reset_first),
                           ('distinct_seed_rows', distinct_seed_rows), ('shared_seed_offset', shared_seed_offset)):
            check_bool(name, flag)
        nvtx = check_bool('nvtx', nvtx) if exists(nvtx) else nvtx_from_env()
        if exists(backend):
            backend = check_backend(backend)
        check_torch_generator('generator', generator)
        if exists(rng_seed):
            rng_seed = check_int('rng_seed', rng_seed, low=0)
            if exists(generator):
                raise ValueError('pass generator or rng_seed, not both: rng_seed makes per-step generators of its own')

        num_tokens = model.num_tokens
        dim = model.attn_layers.dim

        default_data_generator = not exists(data_generator)
        if default_data_generator:
            data_generator = SyntheticDataGenerator(num_tokens=num_tokens, dim=dim, max_seq_len=seq_len, backend=backend)
        check_data_generator('data_generator', data_generator)

        generator_num_tokens = model_num_tokens(data_generator)
        if exists(generator_num_tokens) and generator_num_tokens != num_tokens:
            raise ValueError(f'data_generator must have the model\'s vocabulary of {num_tokens} tokens, got {generator_num_tokens}')
        if reset_turing_machine_every > 0 and not callable(getattr(data_generator, 'reset_', None)):
            raise ValueError(f'reset_turing_machine_every={reset_turing_machine_every} re-draws the generator with reset_(), '
                             f'which data_generator of type {type(data_generator).__name__} lacks; pass 0 or a generator with reset_()')
        generator_max_seq_len = getattr(data_generator, 'max_seq_len', None)
        if exists(generator_max_seq_len) and generator_max_seq_len != seq_len:
            raise ValueError(f'data_generator.max_seq_len must equal seq_len ({seq_len}) so generated rows fit the buffer, got {generator_max_seq_len}')
        if exists(backend) and not isinstance(getattr(data_generator, 'backend', None), str):
            raise ValueError(f'backend={backend!r} is handed to the data generator, which needs a `backend` attribute as up_fast\'s '
                             f'generators have (SyntheticDataGenerator, PaperDataGenerator), got data_generator of type {type(data_generator).__name__}')
        if exists(backend):
            data_generator.backend = backend        # the last check: a generator may refuse what it cannot run (PaperDataGenerator: 'triton')

        # all checked: from here on nothing fails, so a refused call changed nothing

        self.takes_generator = follows_generator(data_generator)
        if exists(rng_seed) and not self.takes_generator:
            warnings.warn(f'rng_seed governs the wrapper\'s draws, but data_generator of type {type(data_generator).__name__} draws from '
                          'torch\'s global generators (it lacks reset_(*, generator=) and generate_unchecked(length, seed, condition, *, generator=)): '
                          'its machines and samples are the same on every rank with the same torch.manual_seed, and a resumed run does not '
                          'repeat them. Seed torch per rank yourself (torch.manual_seed(seed + rank)) and save torch.get_rng_state() with '
                          'each checkpoint, or use an up_fast generator', stacklevel=2)
        if exists(rng_seed) and keep_buffer_on_cpu:
            warnings.warn('keep_buffer_on_cpu=True keeps the buffer out of the state_dict (as in the reference), so rng_seed alone '
                          'does not resume a run exactly: save wrapper.synth_data_buffer beside the state_dict and copy it back '
                          'into wrapper.synth_data_buffer after loading', stacklevel=2)

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
        self.step_options = dict(generation_batch_size=generation_batch_size, reset_first=reset_first,
                                 distinct_seed_rows=distinct_seed_rows, shared_seed_offset=shared_seed_offset)
        self.nvtx = nvtx

        self.randomness = self.make_randomness(generator, rng_seed)

        self.random_sequences_fn = partial(random_sequences, num_tokens, seq_len, dtype=token_dtype(num_tokens))

        # the weights of the data generator follow the run's stream: always the default one (built
        # here), a given one that takes a generator when the caller asked for a stream of their own
        self.randomness.begin(0)
        if self.takes_generator and (default_data_generator or exists(generator) or exists(rng_seed)):
            data_generator.reset_(generator=default(generator, self.randomness.on(module_device(data_generator, 'cpu'))))

        init_generator = default(generator, self.randomness.on('cpu'))
        init_device = getattr(init_generator, 'device', None)
        if constant_init:
            init_data_buffer = self.random_sequences_fn(0, buffer_size, shuffle=False, device=init_device, generator=init_generator)    # (buffer_size, seq_len)
        else:
            # odd buffer sizes get one more random row than constant rows (the reference drops a row)
            init_data_buffer = self.random_sequences_fn(buffer_size - buffer_size // 2, buffer_size // 2, device=init_device, generator=init_generator)
        init_data_buffer = init_data_buffer.cpu()

        if keep_buffer_on_cpu:
            self.synth_data_buffer = init_data_buffer
        else:
            self.register_buffer('synth_data_buffer', init_data_buffer)

        self.register_buffer('step', torch.tensor(0))
        self.saw_step_(0)
        self.last_step_rows = None      # StepRows of the latest step: which rows it read and wrote

        # the generator is never trained: no gradients, and DDP (wrapping this module) leaves its
        # weights and the buffer alone, so that each rank keeps a data stream of its own
        data_generator.requires_grad_(False)
        self._ddp_params_and_buffers_to_ignore = [
            'synth_data_buffer', 'step',
            *(f'data_generator.{name}' for name, _ in data_generator.named_parameters()),
            *(f'data_generator.{name}' for name, _ in data_generator.named_buffers()),
        ]

    @classmethod
    def paper(cls, model: TransformerWrapper, *, batch_size=32, seq_len=512, **overrides) -> 'UniversalPretrainWrapper':
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
        check_causal_transformer('model', model)
        generation_batch_size = overrides.pop('generation_batch_size', 2 * check_int('batch_size', batch_size, low=1))
        settings = dict(
            generation_batch_size=generation_batch_size,
            buffer_size=20 * generation_batch_size if isinstance(generation_batch_size, int) else None,
            num_reset=100,
            seed_length=8,
            reset_turing_machine_every=1,
            constant_init=True,
            reset_first=True,
            distinct_seed_rows=True,
            shared_seed_offset=True,
        )
        settings.update(overrides)
        buffer_size = settings['buffer_size']
        if 'num_reset' not in overrides and isinstance(buffer_size, int) and buffer_size > 0:
            settings['num_reset'] = min(settings['num_reset'], buffer_size - buffer_size % 2)    # small batches: a small buffer
        built_here = 'data_generator' not in settings
        if built_here:
            from up_fast.paper import PaperDataGenerator      # imported here: only this preset needs it
            settings['data_generator'] = PaperDataGenerator(dim=128, num_tokens=model.num_tokens, max_seq_len=seq_len, backend=settings.get('backend'))

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
            warnings.warn('the wrapper mixes the rank from torch.distributed into its draws, but torch.distributed is not '
                          'initialised yet: this rank would draw rank 0\'s data stream. Build the wrapper after '
                          'dist.init_process_group()', stacklevel=3)
        if exists(generator):
            if world_size > 1:
                warnings.warn('every draw comes from the generator you passed, so ranks that seed it alike draw alike data: '
                              'seed it per rank (for example generator.manual_seed(seed + rank)), or pass rng_seed instead', stacklevel=3)
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
        except RuntimeError:        # an inference tensor has no version counter: always read
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
        self._step_seen = (self.step, version, value)     # the tensor itself (not a weakref: the wrapper stays picklable)

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
        size = check_int('size', default(size, self.batch_size), low=0, high=self.buffer_size,
                         allowed=f'an int in [0, buffer_size = {self.buffer_size}] (the rows are distinct)')
        buffer = self.synth_data_buffer
        rows = torch.randperm(self.buffer_size, device=buffer.device, generator=self.randomness.on(buffer.device))[:size]
        return buffer[rows].long()

    def redraw_data_generator_(self):
        """Re-draw the data generator's weights (its reset_()), from the wrapper's stream when it takes a generator."""
        if self.takes_generator:
            self.data_generator.reset_(generator=self.randomness.on(module_device(self.data_generator, self.device)))
        else:
            self.data_generator.reset_()

    @torch.no_grad()
    def data_step_(self) -> Tensor:
        """Algorithm 1 but the loss: updates the buffer and returns the training batch,
        (batch_size, seq_len) int64 on the model's device. A step that fails changes nothing of
        the wrapper's: buffer, `step`, `last_step_rows` and the per-step streams stay as they were
        (the step repeats its draws when called again). An explicit `generator=` passed to the
        constructor has advanced, though, by the draws made before the failure."""
        buffer = self.synth_data_buffer              # (buffer_size, seq_len), narrow integer dtype
        step = self.num_steps + 1
        self.randomness.begin(step)
        generator = self.randomness.on(buffer.device)

        with phase('index draw', self.nvtx):
            rows = draw_step_rows(
                self.buffer_size, self.batch_size, self.num_reset, self.seq_len, self.seed_length,
                **self.step_options, device=buffer.device, generator=generator,
            )
            noise = None
            if self.num_reset > 0:
                # the kinds in a shuffled order: when resets wrap onto condition rows (see StepRows), the
                # reset rows that survive are an even mix, not the uniform half first
                noise = self.random_sequences_fn(self.num_reset // 2, self.num_reset // 2, device=buffer.device, generator=generator)   # (num_reset, seq_len)

        # read seeds and conditions, as they are after the reset when it comes first: the buffer is
        # written only once the generator has succeeded

        pending = (rows.reset_rows, noise) if rows.reset_first and exists(noise) else None

        with phase('gather', self.nvtx):
            seeds = read_rows(buffer, rows.seed_rows, seed_columns(rows.seed_offsets, self.seed_length), pending=pending)   # (generation batch, seed_length)
            conditions = read_rows(buffer, rows.condition_rows, pending=pending)                                            # (generation batch, seq_len)
            seed, condition = self.to_device(seeds), self.to_device(conditions)

        with phase('generate', self.nvtx):
            if self.takes_generator:        # the generator's own default temperature; noise is drawn where its weights are
                sampling_generator = self.randomness.on(module_device(self.data_generator, self.device))
                generated = self.data_generator.generate_unchecked(self.seq_len, seed, condition, generator=sampling_generator)
            else:
                generated = self.data_generator.generate(self.seq_len, seed=seed.long(), condition=condition.long())

        expected_shape = (self.generation_batch_size, self.seq_len)
        if tuple(generated.shape) != expected_shape:      # host-side shapes: checked before any write
            raise ValueError(f'data_generator.generate returned shape {tuple(generated.shape)}, but the buffer needs '
                             f'(generation_batch_size, seq_len) = {expected_shape} rows')

        with phase('write-back and reset', self.nvtx):
            if exists(noise):
                buffer[rows.reset_rows] = noise
            # after the reset: generated rows win. A row with a negative id (the sampling kernel's mark of a
            # launch that gave up at a grid barrier) is refused on the device, no host sync: the row keeps what
            # it held, and the kernel's next call raises
            generated = generated.to(buffer.device)
            valid = (generated >= 0).all(dim=1, keepdim=True)                                   # (generation batch, 1)
            buffer[rows.condition_rows] = torch.where(valid, generated.to(buffer.dtype), buffer[rows.condition_rows])
        self.last_step_rows = rows

        # count the step, maybe re-draw the turing machine. After the writes, so that a step that
        # fails counts nothing; the re-drawn weights act from the next step's generation on

        self.step.add_(1)
        self.saw_step_(step)

        if self.reset_turing_machine_every > 0 and divisible_by(step, self.reset_turing_machine_every):
            self.redraw_data_generator_()

        # a fresh training batch, widened to int64 only now

        with phase('training-batch gather', self.nvtx):
            return self.to_device(buffer[rows.batch_rows]).long()

    def forward(self):
        # following algorithm 1
        data = self.data_step_()
        with phase('transformer', self.nvtx):
            return self.ar_wrapped(data)
