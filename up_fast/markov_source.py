"""A synthetic source of random Markov chains, one per row: each generated row draws its own small
alphabet and its own random transition table, so the only way to predict it is to count, in the
row's own context, which token followed which: it teaches in-context bigram statistics directly.

An extra data generator for UniversalPretrainWrapper (not the paper's generator, nor the reference's):
it ignores the seed and the condition it is given, and draws every row from the torch.Generator the
wrapper hands it, so runs repeat and resume exactly like with up_fast's own generators.

    generator = MarkovChainGenerator(256, seq_len)
    wrapper = UniversalPretrainWrapper(model, data_generator=generator, seq_len=seq_len, rng_seed=0)

Per row: an alphabet of k tokens (k uniform in [min_alphabet, max_alphabet], distinct tokens of the
vocabulary) and a k x k table of transition logits, standard normal times `sharpness` (larger:
more predictable rows); the first token is uniform over the alphabet, each next one is drawn from
softmax(logits[previous token]).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module

from up_fast.checks import check_int, check_positive_real
from up_fast.helpers import exists


class MarkovChainGenerator(Module):
    def __init__(
        self,
        num_tokens: int,
        max_seq_len: int,
        *,
        min_alphabet: int = 2,
        max_alphabet: int = 32,
        sharpness: float = 2.0,
    ):
        super().__init__()
        self.num_tokens = check_int('num_tokens', num_tokens, low=2)
        self.max_seq_len = check_int('max_seq_len', max_seq_len, low=1)
        self.max_alphabet = check_int(
            'max_alphabet', max_alphabet, low=1, high=num_tokens, allowed=f'an int in [1, num_tokens = {num_tokens}]'
        )
        self.min_alphabet = check_int(
            'min_alphabet',
            min_alphabet,
            low=1,
            high=max_alphabet,
            allowed=f'an int in [1, max_alphabet = {max_alphabet}]',
        )
        self.sharpness = check_positive_real('sharpness', sharpness)
        self.register_buffer('anchor', torch.zeros(()), persistent=False)  # follows .to(device)

    def reset_(self, *, generator: torch.Generator | None = None):
        """Nothing to re-draw: every row draws a chain of its own."""

    @torch.no_grad()
    def generate(
        self,
        length,
        seed=None,
        condition=None,
        temperature=None,
        *,
        generator: torch.Generator | None = None,
        uniform_noise=None,
    ):
        rows = condition if exists(condition) else seed
        if not exists(rows):
            raise ValueError(
                'generate needs a seed or a condition tensor: its batch size is the number of rows to draw'
            )
        return self.generate_unchecked(check_int('length', length, low=1), seed, condition, generator=generator)

    @torch.no_grad()
    def generate_unchecked(
        self, length, seed, condition, temperature=None, *, generator: torch.Generator | None = None, uniform_noise=None
    ) -> Tensor:
        """(batch, min(length, max_seq_len)) int64 rows, one fresh chain each; batch from the condition (or seed)."""
        batch = (condition if exists(condition) else seed).shape[0]
        length = min(length, self.max_seq_len)
        device, k_max = self.anchor.device, self.max_alphabet
        draw = dict(device=device, generator=generator)

        alphabet = torch.rand(batch, self.num_tokens, **draw).argsort(dim=-1)[
            :, :k_max
        ]  # (batch, k_max) distinct tokens
        size = torch.randint(self.min_alphabet, k_max + 1, (batch, 1), **draw)  # (batch, 1)
        logits = torch.randn(batch, k_max, k_max, **draw) * self.sharpness  # (batch, k_max, k_max)
        logits.masked_fill_(
            torch.arange(k_max, device=device) >= size[:, :, None], float('-inf')
        )  # only the row's own alphabet

        states = torch.empty(batch, length, dtype=torch.long, device=device)  # (batch, length) alphabet indices
        states[:, 0] = (torch.rand(batch, **draw) * size[:, 0]).long()
        rows = torch.arange(batch, device=device)
        gumbel = -torch.log(
            -torch.log(torch.rand(batch, length, k_max, **draw).clamp_min(1e-20))
        )  # (batch, length, k_max)
        for t in range(1, length):
            states[:, t] = (logits[rows, states[:, t - 1]] + gumbel[:, t]).argmax(dim=-1)  # Gumbel-max: a softmax draw
        return alphabet.gather(1, states)
