"""The pure-PyTorch sampling path: one Gumbel-max sampler and the folded LSTM/GRU cell.

This is the semantic reference for the Triton kernels and what CPU users run.

Folding: the generator's input to the recurrent net is `embed(token)`, and the net's first move is
`x @ W_ih^T + b_ih`. Both are fixed between weight draws, so `embed.weight @ W_ih^T + biases` is
precomputed once into a (num_tokens, gates * hidden) table: a decoding step is then one row gather
plus one (batch, hidden) @ (hidden, gates * hidden) matmul, half the FLOPs of the reference's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from up_fast.checks import check_uniform_noise

# functions


def exists(v):
    return v is not None


def default(v, d):
    return v if exists(v) else d


def gumbel_(uniform: Tensor) -> Tensor:
    """Gumbel(0, 1) noise from U[0, 1) noise, in place: -log(-log u). u == 0 gives -inf (never drawn)."""
    return uniform.log_().neg_().log_().neg_()


def gumbel(uniform: Tensor) -> Tensor:
    return gumbel_(uniform.clone())


def gumbel_max(logits: Tensor, temperature: float, gumbel_noise: Tensor | None) -> Tensor:
    """Sample from softmax(logits / temperature) by the Gumbel-max trick; argmax at temperature 0.

    argmax(logits / T + G) == argmax(logits + T * G) for T > 0; the second form never overflows
    for tiny T (the reference's 1e-4 default) and reduces to plain argmax at T == 0.
    logits: (batch, num_tokens), gumbel_noise: (batch, num_tokens) or None when temperature == 0.
    Returns (batch,) int64. Ties go to the lowest token id.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.add(logits, gumbel_noise, alpha=temperature).argmax(dim=-1)


class GumbelNoise:
    """Gumbel noise for `length` sampling steps of a (batch, num_tokens) distribution.

    Drawn in chunks of steps (bounded memory, few launches), or taken from an injected
    (batch, length, num_tokens) uniform tensor so that two paths can be compared on the same noise.
    """

    max_chunk_elements = 1 << 22

    def __init__(self, batch, length, num_tokens, *, device, generator=None, uniform_noise=None):
        if exists(uniform_noise):
            check_uniform_noise(uniform_noise, (batch, length, num_tokens))

        self.shape = (batch, length, num_tokens)
        self.device = device
        self.generator = generator
        self.uniform_noise = uniform_noise
        self.chunk = max(1, min(length, self.max_chunk_elements // max(1, batch * num_tokens)))
        self.start = None
        self.noise = None

    def __getitem__(self, step: int) -> Tensor:
        # (batch, num_tokens) Gumbel noise of sampling step `step`; steps are asked for in order
        if exists(self.uniform_noise):
            return gumbel(self.uniform_noise[:, step].to(device=self.device, dtype=torch.float32))

        if not exists(self.start) or not (self.start <= step < self.start + self.noise.shape[1]):
            batch, length, num_tokens = self.shape
            steps = min(self.chunk, length - step)
            uniform = torch.rand((batch, steps, num_tokens), device=self.device, generator=self.generator)
            self.start, self.noise = step, gumbel_(uniform)          # in place: one chunk in memory, not two

        return self.noise[:, step - self.start]


# the folded single-layer LSTM / GRU with its output head


SUPPORTED_CELLS = ('lstm', 'gru')


@dataclass
class FoldedRecurrentNet:
    """Weights of embed -> 1-layer LSTM/GRU -> to_logits, folded for decoding. All fp32.

    Every tanh is computed as tanh(x) = 2 * sigmoid(2x) - 1 (ATen's CPU tanh costs three sigmoids,
    and Triton has no tanh); the factor 2 of the candidate gate is folded into its weight rows.
    LSTM gates are reordered from PyTorch's (i, f, g, o) to (i, f, o, g) so that one sigmoid covers
    all four: rows of g hold 2 * (W_ig x + b_ig + b_hg) and 2 * W_hg. GRU keeps PyTorch's (r, z, n),
    with b_hn kept apart since it sits inside the reset product,
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): rows of n, and b_hn, are doubled.
    """

    cell: str
    input_table: Tensor        # (num_tokens, gates * hidden): embed @ W_ih^T + folded biases
    weight_hh: Tensor          # (gates * hidden, hidden), gates in the order above
    bias_hn: Tensor | None     # (hidden,) GRU only
    weight_out: Tensor         # (num_tokens, hidden)
    bias_out: Tensor | None    # (num_tokens,)

    @property
    def hidden_size(self):
        return self.weight_hh.shape[1]

    @property
    def num_tokens(self):
        return self.weight_out.shape[0]

    @classmethod
    @torch.no_grad()
    def fold(cls, embed: nn.Embedding, net: nn.LSTM | nn.GRU, to_logits: nn.Linear) -> FoldedRecurrentNet:
        cell = 'lstm' if isinstance(net, nn.LSTM) else 'gru'
        hidden = net.hidden_size
        # always a copy: the folding below scales rows in place and must not touch the module
        f32 = lambda t: t.detach().to(torch.float32, copy=True) if exists(t) else None

        weight_ih, weight_hh = f32(net.weight_ih_l0), f32(net.weight_hh_l0)
        bias_ih = f32(getattr(net, 'bias_ih_l0', None))
        bias_hh = f32(getattr(net, 'bias_hh_l0', None))

        input_table = f32(embed.weight) @ weight_ih.t()            # (num_tokens, gates * hidden)
        bias_hn = None

        if cell == 'lstm':
            if exists(bias_ih):
                input_table += bias_ih + bias_hh
            # (i, f, g, o) -> (i, f, o, g) by slices: an index tensor copied to the GPU would sync
            reorder = lambda t, dim: torch.cat([t.narrow(dim, 0, 2 * hidden), t.narrow(dim, 3 * hidden, hidden), t.narrow(dim, 2 * hidden, hidden)], dim=dim)
            input_table = reorder(input_table, 1)
            weight_hh = reorder(weight_hh, 0)
        else:
            if exists(bias_ih):
                input_table += bias_ih
                input_table[:, :2 * hidden] += bias_hh[:2 * hidden]
                bias_hn = bias_hh[2 * hidden:] * 2.
            else:
                bias_hn = weight_hh.new_zeros(hidden)

        # the candidate gate (LSTM g, GRU n) is the last block in both cells: double it for tanh(x) = 2 sigmoid(2x) - 1
        input_table[:, -hidden:] *= 2.
        weight_hh[-hidden:] *= 2.

        return cls(
            cell=cell,
            input_table=input_table.contiguous(),
            weight_hh=weight_hh.contiguous(),
            bias_hn=bias_hn,
            weight_out=f32(to_logits.weight).contiguous(),
            bias_out=f32(to_logits.bias),
        )

    def init_state(self, batch: int) -> tuple[Tensor, ...]:
        zeros = lambda: self.weight_hh.new_zeros(batch, self.hidden_size)
        return (zeros(), zeros()) if self.cell == 'lstm' else (zeros(),)

    def step_(self, tokens: Tensor, state: tuple[Tensor, ...]) -> Tensor:
        """Advance `state` in place by one input token per row. tokens: (batch,). Returns h (batch, hidden)."""
        hidden = self.hidden_size
        gates = self.input_table.index_select(0, tokens)             # (batch, gates * hidden)

        if self.cell == 'lstm':
            h, c = state
            gates.addmm_(h, self.weight_hh.t()).sigmoid_()               # g block holds sigmoid(2 g)
            i, f, o, g = gates.split(hidden, dim=-1)
            c.mul_(f).addcmul_(i, g, value=2.).sub_(i)                   # c = f c + i tanh(g)
            torch.mul(c, 2., out=h).sigmoid_()                           # h as scratch: sigmoid(2 c)
            h.mul_(o).mul_(2.).sub_(o)                                   # h = o tanh(c)
            return h

        (h,) = state
        hidden_gates = h @ self.weight_hh.t()                          # (batch, 3 * hidden)
        hidden_gates[:, 2 * hidden:] += self.bias_hn
        gates[:, :2 * hidden].add_(hidden_gates[:, :2 * hidden]).sigmoid_()
        r, z, n = gates.split(hidden, dim=-1)
        n.addcmul_(r, hidden_gates[:, 2 * hidden:]).sigmoid_().mul_(2.).sub_(1.)   # n = tanh(...)
        h.sub_(n).mul_(z).add_(n)                                       # (1 - z) * n + z * h
        return h

    def logits(self, h: Tensor) -> Tensor:
        # (batch, hidden) -> (batch, num_tokens)
        if exists(self.bias_out):
            return torch.addmm(self.bias_out, h, self.weight_out.t())
        return h @ self.weight_out.t()

    @torch.no_grad()
    def sample(
        self,
        prefix: Tensor,
        length: int,
        temperature: float,
        *,
        generator: torch.Generator | None = None,
        uniform_noise: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Teacher-force `prefix` (batch, prefix_len) then sample `length` tokens.

        Returns the sampled tokens (batch, length) int64 and the final recurrent state, which is the
        state after feeding the second to last sampled token (the last one is never fed).
        """
        batch, prefix_len = prefix.shape
        state = self.init_state(batch)
        out = default(out, torch.empty((batch, length), dtype=torch.long, device=prefix.device))
        noise = GumbelNoise(batch, length, self.num_tokens, device=prefix.device, generator=generator, uniform_noise=uniform_noise) if temperature > 0 else None

        prefix = prefix.long()
        for t in range(prefix_len):
            h = self.step_(prefix[:, t], state)

        for t in range(length):
            token = gumbel_max(self.logits(h), temperature, noise[t] if exists(noise) else None)
            out[:, t] = token
            if t < length - 1:
                h = self.step_(token, state)

        return out, state
