"""The paper author's own data generator (pbloem/up, `LSTMGen`), exact and fast.

The reference's SyntheticDataGenerator is not the generator the paper's results come from. The
author's experiments (`experiments/gpt-mup.py`, source 'lstm') sample from a stacked LSTM that
reads two aligned streams, its own output and a condition row, greedily, and re-drawn with large
weights before every call. PaperDataGenerator is that network; `generate` runs it on a folded loop
(FoldedPaperNet) and `forward` is the plain teacher-forced network it is checked against.

Folding: layer 1's input is cat(embed(prev), embed(cond)) @ W_ih^T + b_ih + b_hh, which depends on
the two tokens alone, so it is two precomputed (num_tokens, 4 * dim) tables: a step gathers one
row of each and adds them. Layers 2..depth multiply [h_below | h_own] by one prepacked
[W_ih | W_hh] each; the output head is one more product, then the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import Module

from up_fast.backend import check_backend
from up_fast.cells import lstm_update_
from up_fast.checks import (
    check_causal_transformer,
    check_int,
    check_positive_real,
    check_scale_range,
    check_temperature,
    check_token_tensor,
    check_uniform_noise,
)
from up_fast.folded_cache import FoldedWeightsCache
from up_fast.helpers import exists
from up_fast.init import default_init_
from up_fast.sampling import gumbel_max, noise_steps, onednn_linear, onednn_packed

# helpers


def prepacked_linear(weight: Tensor, bias: Tensor | None, batch: int):
    """x (batch, in) -> x @ weight^T + bias: oneDNN with the weight prepacked where that is taken
    (see sampling.onednn_packed), else torch.addmm / matmul."""
    packed = onednn_packed(weight, batch)
    if exists(packed):
        return partial(onednn_linear, packed=packed, bias=bias)
    if exists(bias):
        return lambda x: torch.addmm(bias, x, weight.t())
    return lambda x: x @ weight.t()


def lstm_gates(t: Tensor, hidden: int, dim: int = 0) -> Tensor:
    """PyTorch's LSTM gate blocks (i, f, g, o) along `dim` -> (i, f, o, 2 g), a new tensor: one
    sigmoid then covers all four (tanh(x) = 2 sigmoid(2x) - 1). By slices, not an index tensor,
    which a GPU would have to be sent."""
    i_f, g, o = (
        t.narrow(dim, start, size) for start, size in ((0, 2 * hidden), (2 * hidden, hidden), (3 * hidden, hidden))
    )
    return torch.cat((i_f, o, g * 2.0), dim=dim)


def lstm_cell(gates: Tensor, half_h: Tensor, double_c: Tensor):
    """`cell()`: one LSTM cell update in the loop's terms (see FoldedPaperNet), in place, with the
    gate views bound once.

    gates (batch, 4 * hidden): the sigmoids of the pre-activations (i, f, o, 2 g), written by the
    caller before each call; tanh(g) = 2 sigmoid(2 g) - 1. half_h, double_c (batch, hidden): h / 2
    and 2 c, updated; half_h may be a strided view.
    """
    i, f, o, g = gates.chunk(4, dim=1)

    return partial(lstm_update_, i, f, o, g, half_h, double_c)


# the folded network


@dataclass
class FoldedPaperNet:
    """PaperDataGenerator's weights folded for its decoding loop. All fp32.

    Gates are reordered from PyTorch's (i, f, g, o) to (i, f, o, g) and the g rows doubled, for
    tanh(x) = 2 sigmoid(2x) - 1. The loop keeps every layer's state as (h / 2, 2 c): the products'
    weights are doubled to take h / 2 (all of them read only h), which saves elementwise ops; scaling
    by 2 is exact in floating point, so values are what the unscaled form gives (subnormals aside).

    The h / 2 of all layers live side by side in one (batch, depth * hidden) tensor, so that layer
    l's product input [h_(l-1) | h_l] is a view of it, written by the cells in place (oneDNN still
    makes a contiguous copy of such a strided view inside the product: one small copy a product).
    """

    prev_table: Tensor  # (num_tokens, 4 * hidden): embed @ W_ih[:, :dim]^T + b_ih + b_hh, layer 1
    cond_table: Tensor  # (num_tokens, 4 * hidden): embed @ W_ih[:, dim:]^T, layer 1
    weight_hh_first: Tensor  # (4 * hidden, hidden): layer 1's W_hh, times 2
    weights_upper: list  # depth - 1 of (4 * hidden, 2 * hidden): [W_ih | W_hh] of layers 2.., times 2
    biases_upper: list  # depth - 1 of (4 * hidden,): b_ih + b_hh of layers 2..
    weight_out: Tensor  # (num_tokens, hidden), times 2
    bias_out: Tensor | None  # (num_tokens,)
    # batch -> the products for that batch size: a cache of this object's own
    linears: dict = field(default_factory=dict, repr=False, init=False, compare=False)

    @property
    def hidden_size(self) -> int:
        return self.weight_hh_first.shape[1]

    @property
    def depth(self) -> int:
        return 1 + len(self.weights_upper)

    @property
    def num_tokens(self) -> int:
        return self.weight_out.shape[0]

    @classmethod
    @torch.no_grad()
    def fold(cls, embed: nn.Embedding, net: nn.LSTM, to_logits: nn.Linear) -> FoldedPaperNet:
        hidden, dim = net.hidden_size, embed.embedding_dim
        # always copies: nothing here may write into the module
        f32 = lambda t: t.detach().to(torch.float32, copy=True) if exists(t) else None
        param = lambda name, layer: f32(getattr(net, f'{name}_l{layer}'))
        bias = lambda layer: param('bias_ih', layer) + param('bias_hh', layer)  # (4 hidden,)

        embed_weight = f32(embed.weight)  # (num_tokens, dim)
        weight_ih = param('weight_ih', 0)  # (4 hidden, 2 dim): previous token, then condition
        prev_table = embed_weight @ weight_ih[:, :dim].t() + bias(0)  # (num_tokens, 4 hidden)
        cond_table = embed_weight @ weight_ih[:, dim:].t()  # (num_tokens, 4 hidden)

        weights_upper, biases_upper = [], []
        for layer in range(1, net.num_layers):
            weight = torch.cat((param('weight_ih', layer), param('weight_hh', layer)), dim=1)  # (4 hidden, 2 hidden)
            weights_upper.append(lstm_gates(weight, hidden).mul_(2.0).contiguous())
            biases_upper.append(lstm_gates(bias(layer), hidden))

        return cls(
            prev_table=lstm_gates(prev_table, hidden, dim=1).contiguous(),
            cond_table=lstm_gates(cond_table, hidden, dim=1).contiguous(),
            weight_hh_first=lstm_gates(param('weight_hh', 0), hidden).mul_(2.0).contiguous(),
            weights_upper=weights_upper,
            biases_upper=biases_upper,
            weight_out=f32(to_logits.weight).mul_(2.0).contiguous(),
            bias_out=f32(to_logits.bias),
        )

    def products(self, batch: int):
        """(layer 1's recurrent product, layers 2..'s products, the output head) for `batch` rows."""
        if batch not in self.linears:
            self.linears[batch] = (
                prepacked_linear(self.weight_hh_first, None, batch),
                [prepacked_linear(w, b, batch) for w, b in zip(self.weights_upper, self.biases_upper)],
                prepacked_linear(self.weight_out, self.bias_out, batch),
            )
        return self.linears[batch]

    # the loop's state: ((batch, depth * hidden) of h / 2, (depth, batch, hidden) of 2 c)

    def init_state(self, batch: int, hiddens: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The loop's state, zero or from nn.LSTM's (h, c), each (depth, batch, hidden)."""
        half_h = self.weight_out.new_zeros(batch, self.depth * self.hidden_size)
        double_c = self.weight_out.new_zeros(self.depth, batch, self.hidden_size)
        if exists(hiddens):
            h, c = hiddens
            half_h.copy_(h.to(half_h).permute(1, 0, 2).reshape(batch, -1)).mul_(0.5)
            double_c.copy_(c).mul_(2.0)
        return half_h, double_c

    def module_state(self, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The loop's state as nn.LSTM's (h, c), each (depth, batch, hidden); new tensors."""
        half_h, double_c = state
        batch = half_h.shape[0]
        h = half_h.view(batch, self.depth, self.hidden_size).permute(1, 0, 2) * 2.0
        return h.contiguous(), double_c * 0.5

    def stepper(self, state: tuple[Tensor, Tensor]):
        """`step(prev_tokens, cond_tokens)`: feeds one position, (batch,) int64 each, through every
        layer, updating `state` in place, and returns the top layer's h / 2 (batch, hidden), a view.
        Everything a step touches is bound here, once per loop."""
        half_h, double_c = state
        batch, hidden = half_h.shape[0], self.hidden_size
        recurrent_first, uppers, _ = self.products(batch)

        gates = self.prev_table.new_empty(self.depth, batch, 4 * hidden)  # each layer's (batch, 4 hidden), reused
        first_gates, cond_rows = gates[0], torch.empty_like(gates[0])
        half_hs = half_h.split(hidden, dim=1)  # depth of (batch, hidden) views
        # layer l's product input [h_(l-1) | h_l] / 2: (batch, 2 hidden) strided views
        upper_inputs = [half_h[:, (layer - 1) * hidden : (layer + 1) * hidden] for layer in range(1, self.depth)]
        first_cell, *upper_cells = (lstm_cell(*layer) for layer in zip(gates, half_hs, double_c))
        uppers = list(zip(upper_inputs, uppers, gates[1:], upper_cells))
        index_select, sigmoid, prev_table, cond_table = (
            torch.index_select,
            torch.sigmoid,
            self.prev_table,
            self.cond_table,
        )

        def step(prev_tokens: Tensor, cond_tokens: Tensor) -> Tensor:
            index_select(prev_table, 0, prev_tokens, out=first_gates)
            first_gates.add_(index_select(cond_table, 0, cond_tokens, out=cond_rows)).add_(
                recurrent_first(half_hs[0])
            ).sigmoid_()
            first_cell()
            for layer_input, product, layer_gates, cell in uppers:
                sigmoid(product(layer_input), out=layer_gates)
                cell()
            return half_hs[-1]

        return step

    def logits(self, top_half_h: Tensor) -> Tensor:
        """The output head on the loop's top h / 2 (batch, hidden) -> (batch, num_tokens)."""
        return self.products(top_half_h.shape[0])[2](top_half_h)

    @torch.no_grad()
    def teacher_force(self, tokens: Tensor, condition: Tensor, hiddens=None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The loop's step over given (batch, seq) tokens and condition: logits (batch, seq,
        num_tokens) at every position and the final (h, c) in nn.LSTM's terms. What `forward`
        computes, by the generation loop's own arithmetic: for checking one against the other."""
        batch, seq = tokens.shape
        state = self.init_state(batch, hiddens)
        step = self.stepper(state)
        logits = self.weight_out.new_empty(seq, batch, self.num_tokens)
        for t, (prev, cond) in enumerate(zip(tokens.long().t().contiguous(), condition.long().t().contiguous())):
            logits[t] = self.logits(step(prev, cond))
        return logits.transpose(0, 1), self.module_state(state)

    @torch.no_grad()
    def sample(
        self, seed: Tensor, condition: Tensor, length: int, temperature: float, *, generator=None, uniform_noise=None
    ) -> Tensor:
        """(batch, length) int64: the seed, then length - seed_len tokens, each from the logits after
        feeding the previous output token with the condition token at its position."""
        # inference mode skips autograd's bookkeeping of every op; the result leaves it as a clone
        with torch.inference_mode():
            columns = self.sample_columns(seed, condition, length, temperature, generator, uniform_noise)
        return columns.t().clone(memory_format=torch.contiguous_format)

    def sample_columns(self, seed, condition, length, temperature, generator, uniform_noise):
        """sample()'s loop, in inference mode: tokens (length, batch)."""
        batch, seed_len = seed.shape
        device = self.weight_out.device
        state = self.init_state(batch)
        step = self.stepper(state)
        head = self.products(batch)[2]

        columns = torch.empty((length, batch), dtype=torch.long, device=device)  # step t writes a contiguous row
        columns[:seed_len] = seed.t()
        rows = columns.unbind(0)
        cond_columns = (
            condition[:, : length - 1].to(device, torch.long).t().contiguous().unbind(0)
        )  # length - 1 of (batch,)
        noise = noise_steps(
            batch,
            length - seed_len,
            self.num_tokens,
            temperature,
            device=device,
            generator=generator,
            uniform_noise=uniform_noise,
        )

        # teacher forcing: the seed's tokens but its last, which the first sampling step feeds
        for t in range(seed_len - 1):
            step(rows[t], cond_columns[t])
        for t in range(seed_len, length):
            top = step(rows[t - 1], cond_columns[t - 1])
            gumbel_max(head(top), temperature, next(noise), out=rows[t])
        return columns


# the generator


class PaperDataGenerator(FoldedWeightsCache, Module):
    """The paper author's generator: embed -> depth-layer LSTM over two aligned streams -> linear.

    As `LSTMGen` in pbloem/up (up/models.py), used by `experiments/gpt-mup.py` with source 'lstm':
    the input at position j is cat(embed(out[j]), embed(condition[j])); `generate` teacher-forces
    the seed as the start of the output and decodes greedily by default (the author's temperature
    is 0). Output token t depends on the seed, out[:t] and condition[:t] only.

    `reset_()` re-draws as the author's code does (gpt-mup.py, `lstm_scale`): PyTorch's default
    init for every module, one factor m ~ U(scale_range) per draw, every LSTM weight and bias times
    m ** scale_exponent, the embedding times `embed_scale`. This differs from the paper's text,
    which describes one factor per layer: the author's loop runs once per layer and each pass
    multiplies *all* layers' weights and biases (`lstm.all_weights`) by m, so every tensor ends up
    times m ** depth (up to 3.5 ** 4 = 150 at depth 4). scale_exponent=None (the default) means
    depth, as the code; scale_exponent=1 is one factor m on every layer. Every draw comes from
    torch's generators (`generator=`, else torch's global one), so a run repeats exactly; the
    author's draws use numpy, so the weights are the same distribution, not the same numbers. The
    constructor draws once: a fresh module is already a drawn machine.

    With these weights the dynamics are chaotic: two numerically different implementations (this
    folded loop and nn.LSTM, or a CPU and a GPU) agree step by step to rounding, then diverge when
    run free. The embedding's 1e-8 makes the tokens' contribution to layer 1's input comparable to
    fp32 rounding of its biases, by the author's design ("a good, predictable transition to chaos").

    backend: as SyntheticDataGenerator's ('auto', 'torch', 'triton'; default UP_FAST_BACKEND, else
    'auto'), but this generator has no Triton kernel yet: 'auto' and 'torch' run the PyTorch loop
    on any device, and 'triton', which means "the kernel or a clear error" everywhere in up_fast,
    raises here rather than run something other than what was asked for.
    """

    folded_type = FoldedPaperNet  # `folded()` and `invalidate_folded()`: up_fast.folded_cache

    def __init__(
        self,
        dim=128,
        num_tokens=256,
        max_seq_len=512,
        depth=4,
        *,
        scale_range=(1.0, 3.5),
        scale_exponent=None,
        embed_scale=1e-8,
        backend: str | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        dim = check_int('dim', dim, low=1)
        self.num_tokens = check_int('num_tokens', num_tokens, low=1)
        self.max_seq_len = check_int('max_seq_len', max_seq_len, low=1)
        self.depth = check_int('depth', depth, low=1)
        self.scale_range = check_scale_range(scale_range)
        self.scale_exponent = (
            check_positive_real('scale_exponent', scale_exponent) if exists(scale_exponent) else float(self.depth)
        )
        self.embed_scale = check_positive_real('embed_scale', embed_scale)
        self.backend = backend

        self.embed = nn.Embedding(self.num_tokens, dim)
        self.net = nn.LSTM(2 * dim, dim, num_layers=self.depth, batch_first=True)
        self.to_logits = nn.Linear(dim, self.num_tokens)

        self.last_scale = None  # the factor m of the latest draw, a 0-dim tensor
        self.invalidate_folded()
        self.reset_(generator=generator)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str | None):
        # checked on every assignment (the wrapper's backend= assigns it): 'triton' is refused
        checked = check_backend(backend)
        if checked == 'triton':
            source = 'backend' if exists(backend) else 'the environment variable UP_FAST_BACKEND'
            raise ValueError(
                f"{source}='triton' asks for a Triton kernel, and PaperDataGenerator has none yet: use 'auto' or "
                "'torch' (its PyTorch loop runs on any device)"
            )
        self._backend = checked

    @torch.no_grad()
    def reset_(self, *, generator: torch.Generator | None = None):
        """Re-draw the machine: default init, then the LSTM times m ** scale_exponent with
        m ~ U(scale_range), the embedding times embed_scale. All from `generator` if given."""
        for module in (self.embed, self.net, self.to_logits):
            default_init_(module, generator)

        low, high = self.scale_range
        draw_device = generator.device if exists(generator) else 'cpu'
        scale = torch.empty((), device=draw_device).uniform_(low, high, generator=generator)
        # a 0-dim CPU tensor multiplies a CUDA weight without a copy or a sync
        factor = (scale.double() ** self.scale_exponent).float()
        if factor.device.type != 'cpu' and factor.device != self.embed.weight.device:
            factor = factor.cpu()
        for weight in self.net.parameters():
            weight.mul_(factor)
        self.embed.weight.mul_(self.embed_scale)
        self.last_scale = scale

    # generation

    @torch.no_grad()
    def generate(
        self,
        length,
        seed=None,
        condition=None,
        temperature=0.0,
        *,
        generator: torch.Generator | None = None,
        uniform_noise: Tensor | None = None,
    ):
        """(batch, length) int64: the seed, then greedy (temperature 0) or sampled tokens.

        seed: (batch, seed_len) token ids, 1 <= seed_len <= length: the output's first tokens.
        condition: (batch, cond_len) with cond_len >= length - 1, aligned with the output by
        position (position j reads condition[:, j]; the last output token is never fed, so
        condition[:, length - 1:] is unused); None conditions on token 0 everywhere, as the
        author's forward does without z. temperature > 0 samples from softmax(logits / T) by
        Gumbel-max; `uniform_noise` (batch, length - seed_len, num_tokens) of U[0, 1) replaces the
        draws, for parity tests.
        """
        length = check_int('length', length, low=1)
        temperature = check_temperature(temperature)
        if not exists(seed):
            raise ValueError(
                'generate needs a seed (batch, seed_len) tensor of token ids, seed_len >= 1: the start of the output, '
                'got None'
            )
        check_token_tensor('seed', seed, self.num_tokens)
        batch, seed_len = seed.shape
        if batch == 0:
            raise ValueError('generate needs a batch of at least one sequence: seed has batch size 0')
        if not 1 <= seed_len <= length:
            raise ValueError(
                f'seed must hold between 1 and length={length} tokens (it is the start of the output), got {seed_len}'
            )
        if exists(condition):
            check_token_tensor('condition', condition, self.num_tokens, batch=batch)
            if condition.shape[1] < length - 1:
                raise ValueError(
                    f'condition must hold at least length - 1 = {length - 1} tokens per row (position j of the output '
                    f'reads condition[:, j]), got {condition.shape[1]}'
                )
        if exists(uniform_noise):
            check_uniform_noise(uniform_noise, (batch, length - seed_len, self.num_tokens))

        return self.generate_unchecked(
            length, seed, condition, temperature, generator=generator, uniform_noise=uniform_noise
        )

    @torch.no_grad()
    def generate_unchecked(
        self,
        length,
        seed,
        condition,
        temperature=0.0,
        *,
        generator: torch.Generator | None = None,
        uniform_noise: Tensor | None = None,
    ):
        """`generate` without the argument checks, which read values back from the device: for the
        training step, whose rows are in range by construction. It reads nothing back itself."""
        device = self.embed.weight.device
        seed = seed.to(device, torch.long)
        if not exists(condition):
            condition = seed.new_zeros(seed.shape[0], max(length - 1, 0))
        with torch.autocast(device.type, enabled=False):  # the loop is fp32 throughout
            return self.folded().sample(
                seed, condition, length, temperature, generator=generator, uniform_noise=uniform_noise
            )

    def forward(self, input, condition, hiddens=None):
        """The plain teacher-forced network: input, condition (batch, seq) -> logits (batch, seq,
        num_tokens) and nn.LSTM's (h, c). Position j's logits predict output token j + 1."""
        if input.shape != condition.shape:
            raise ValueError(
                f'input and condition must have the same (batch, seq) shape, got {tuple(input.shape)} and '
                f'{tuple(condition.shape)}'
            )
        tokens = torch.cat((self.embed(input), self.embed(condition)), dim=-1)  # (batch, seq, 2 dim)
        out, hiddens = self.net(tokens, hiddens)
        return self.to_logits(out), hiddens


def paper_wrapper_settings(model, batch_size, seq_len, overrides: dict) -> dict:
    """UniversalPretrainWrapper's constructor arguments for the paper author's algorithm and generator
    (see UniversalPretrainWrapper.paper): the author's values, replaced by any given in `overrides`, and a
    PaperDataGenerator unless `overrides` holds a data_generator."""
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
        settings['num_reset'] = min(
            settings['num_reset'], buffer_size - buffer_size % 2
        )  # small batches: a small buffer
    if 'data_generator' not in settings:
        settings['data_generator'] = PaperDataGenerator(
            dim=128, num_tokens=model.num_tokens, max_seq_len=seq_len, backend=settings.get('backend')
        )
    return settings
