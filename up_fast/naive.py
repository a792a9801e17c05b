"""The plain oracle of the sampling loop: written to be read, not to be fast.

embed -> one LSTM/GRU cell (PyTorch's equations, with torch.tanh) -> to_logits, then Gumbel-max on
given uniform noise over the whole vocabulary. The folded PyTorch path (up_fast/sampling.py) and
every kernel (up_fast.kernels) are held to this in the parity tests; it shares no code with them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from up_fast.helpers import exists


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, net: nn.LSTM) -> tuple[Tensor, Tensor]:
    gates = x @ net.weight_ih_l0.t() + h @ net.weight_hh_l0.t()  # (batch, 4 * hidden)
    if net.bias:
        gates = gates + net.bias_ih_l0 + net.bias_hh_l0
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gru_cell(x: Tensor, h: Tensor, net: nn.GRU) -> Tensor:
    input_gates = x @ net.weight_ih_l0.t()  # (batch, 3 * hidden)
    hidden_gates = h @ net.weight_hh_l0.t()
    if net.bias:
        input_gates = input_gates + net.bias_ih_l0
        hidden_gates = hidden_gates + net.bias_hh_l0
    x_r, x_z, x_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = hidden_gates.chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def gumbel_max_full(logits: Tensor, temperature: float, uniform: Tensor | None) -> Tensor:
    """argmax(logits + temperature * G), G = -log(-log u) drawn for every token; argmax at temperature 0.
    logits, uniform: (batch, num_tokens). Ties go to the lowest token id."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    gumbel = -torch.log(-torch.log(uniform.float()))  # u == 0 gives -inf: never drawn
    return (logits + temperature * gumbel).argmax(dim=-1)


@torch.no_grad()
def naive_recurrent_sample(
    embed: nn.Embedding,
    net: nn.LSTM | nn.GRU,
    to_logits: nn.Linear,
    prefix: Tensor,  # (batch, prefix_len) token ids
    length: int,
    temperature: float,
    uniform_noise: Tensor | None = None,  # (batch, length, num_tokens) U[0, 1), needed when temperature > 0
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Teacher-force `prefix` from a zero state, then sample `length` tokens, feeding each back.

    Returns tokens (batch, length) int64 and the state ((h, c) or (h,), fp32) after feeding the
    second to last sampled token: the same contract as FoldedRecurrentNet.sample.
    """
    if temperature > 0 and not exists(uniform_noise):
        raise ValueError(
            'the oracle draws no noise: pass uniform_noise (batch, length, num_tokens) when temperature > 0'
        )

    is_lstm = isinstance(net, nn.LSTM)
    batch = prefix.shape[0]
    h = prefix.new_zeros((batch, net.hidden_size), dtype=torch.float32)
    c = torch.zeros_like(h)

    def feed(tokens):
        nonlocal h, c
        x = embed(tokens).float()
        if is_lstm:
            h, c = lstm_cell(x, h, c, net)
        else:
            h = gru_cell(x, h, net)

    for t in range(prefix.shape[1]):
        feed(prefix[:, t].long())

    sampled = []
    for t in range(length):
        logits = to_logits(h).float()  # (batch, num_tokens)
        token = gumbel_max_full(logits, temperature, uniform_noise[:, t] if temperature > 0 else None)
        sampled.append(token)
        if t < length - 1:
            feed(token)

    state = (h, c) if is_lstm else (h,)
    return torch.stack(sampled, dim=1), state
