"""The reference's data generator, done right: SyntheticDataGenerator and random_sequences.

A randomly initialised embed -> LSTM/GRU -> linear network that "enriches" token sequences. The
default single-layer LSTM/GRU samples on the folded path (up_fast/sampling.py, or the fused Triton
kernel in kernels/recurrent_sample.py); any other `network_klass` runs one `forward` per token, as the
reference does. Imported by up_fast/up_wrapper.py, whose names these are.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import GRU, LSTM, Module

from up_fast.backend import BackendChoice, KernelPath
from up_fast.buffer import noise_rows
from up_fast.checks import (
    check_bool,
    check_int,
    check_temperature,
    check_token_tensor,
    check_uniform_noise,
)
from up_fast.folded_cache import FoldedWeightsCache
from up_fast.helpers import default, exists
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

    rows = noise_rows(
        num_samples_random, num_samples_constant, seq_len, num_tokens, device=device, dtype=dtype, generator=generator
    )

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
        and net.batch_first  # a time-major net reads (batch, seq) input as (seq, batch), as in the reference
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

    folded_type = FoldedRecurrentNet  # `folded()` and `invalidate_folded()`: up_fast.folded_cache

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
        self.backend = backend

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

    @property
    def backend(self) -> str:
        return self.backend_choice.name

    @backend.setter
    def backend(self, backend: str | None):
        # checked here, decided once a device when sampling (BackendChoice)
        self.backend_choice = BackendChoice(backend)

    def sampling_path(self, batch_size: int, device=None):
        """Which implementation samples `batch_size` rows on `device` (default: where the weights are),
        and why: a KernelPath (`.path` 'triton' or 'torch', `.mode`, `.reason`). With backend='auto'
        on a GPU the first call runs the kernel's first-use check (up_fast/kernels/first_use.py)."""
        device = torch.device(default(device, self.embed.weight.device))
        if not self.uses_folded_path:
            return KernelPath('torch', None, 'the network is not an LSTM or GRU the fused kernel folds')
        return self.backend_choice.sampling_path(self.folded(), batch_size, device)

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

        return self.generate_unchecked(
            length, seed, condition, temperature, generator=generator, uniform_noise=uniform_noise
        )

    @torch.no_grad()
    def generate_unchecked(self, length, seed, condition, temperature=1e-4, *, generator=None, uniform_noise=None):
        """`generate` without the argument checks, which read values back from the device.
        The training step calls this with tokens from the buffer, in range by construction."""
        device = self.embed.weight.device
        prefix = torch.cat(
            [t.to(device, torch.long) for t in (seed, condition) if exists(t)], dim=-1
        )  # (batch, prefix_len)

        path = self.sampling_path(prefix.shape[0], device) if self.uses_folded_path else None
        if exists(path) and path.fused:
            from up_fast.kernels.recurrent_sample import fused_recurrent_sample

            sampled, _ = fused_recurrent_sample(
                self.folded(),
                prefix,
                length,
                temperature,
                generator=generator,
                uniform_noise=uniform_noise,
                mode=path.mode,
            )
        elif exists(path):
            with torch.autocast(device.type, enabled=False):  # the folded path is fp32 throughout
                sampled, _ = self.folded().sample(
                    prefix, length, temperature, generator=generator, uniform_noise=uniform_noise
                )
        else:
            sampled = self.generate_generic(
                prefix, length, temperature, generator=generator, uniform_noise=uniform_noise
            )

        # the reference returns the last max_seq_len tokens of cat(prefix, sampled)
        if length >= self.max_seq_len:
            return sampled[:, -self.max_seq_len :]

        keep = min(self.max_seq_len - length, prefix.shape[1])
        return torch.cat((prefix[:, prefix.shape[1] - keep :], sampled), dim=-1)

    def generate_generic(self, prefix, length, temperature, *, generator=None, uniform_noise=None):
        """Any network: one `forward` per sampled token, carrying the hidden state."""
        batch = prefix.shape[0]
        sampled = torch.empty((batch, length), dtype=torch.long, device=prefix.device)  # (batch, length)
        noise = noise_steps(
            batch,
            length,
            self.num_tokens,
            temperature,
            device=prefix.device,
            generator=generator,
            uniform_noise=uniform_noise,
        )

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
