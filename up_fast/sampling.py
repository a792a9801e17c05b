"""The pure-PyTorch sampling path: one Gumbel-max sampler and the folded LSTM/GRU cell.

This is the semantic reference for the Triton kernels and what CPU users run.

Folding: the generator's input to the recurrent net is `embed(token)`, and the net's first move is
`x @ W_ih^T + b_ih`. Both are fixed between weight draws, so `embed.weight @ W_ih^T + biases` is
precomputed once into a (num_tokens, gates * hidden) table: a decoding step is then one row gather
plus one (batch, hidden) @ (hidden, gates * hidden) matmul, half the FLOPs of the reference's step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import repeat

import torch
from torch import Tensor, nn

from up_fast.band import Band
from up_fast.cells import gru_update_, lstm_update_
from up_fast.checks import check_uniform_noise
from up_fast.cpu_step import native_step
from up_fast.helpers import default, exists

# Gumbel-max: the winner is argmax(logits + T * G). Two formulations of the one rule:
# - lazy (CPU): only the tokens in the band (up_fast/band.py) can win, so only they get noise:
#   count the candidates, draw (or read) noise for them only, place it in the band. Counting reads a
#   number back, which on the CPU costs nothing. With generator noise, once a step has every token in
#   the band (high temperatures), the call draws for every token.
# - dense (other devices): noise for every token, drawn many steps at a time, and plain full
#   Gumbel-max: no value is read back to the host, and a step costs two ops (the noise enters as the
#   bias of the logits' product, then one argmax). It gives the lazy formulation's winner on the
#   same uniforms (the band only saves draws), but reads every token's noise. On CUDA the Triton
#   kernel is the fast path; this one keeps a data step's op count at the reference's.

LAZY_DEVICE_TYPES = frozenset({'cpu'})  # where reading a count back is free; dense everywhere else


def gumbel_(uniform: Tensor) -> Tensor:
    """Gumbel(0, 1) noise from U[0, 1) noise, in place: -log(-log u). u == 0 gives -inf (never drawn)."""
    return uniform.log_().neg_().log_().neg_()


def gumbel(uniform: Tensor) -> Tensor:
    return gumbel_(uniform.clone())


def gumbel_max(logits: Tensor, temperature: float, noise: StepNoise | None, *, out: Tensor | None = None) -> Tensor:
    """Sample from softmax(logits / temperature) by Gumbel-max, drawing noise only for the tokens
    that can win (see up_fast/band.py); plain argmax at temperature 0, which needs no noise.

    argmax(logits / T + G) == argmax(logits + T * G) for T > 0; the second form never overflows
    for tiny T (the reference's 1e-4 default) and reduces to plain argmax at T == 0.
    logits: (batch, num_tokens). noise: one step of noise_steps(...), None at temperature 0.
    Returns (batch,) int64, written into `out` (batch,) when given. Ties go to the lowest token id.
    """
    if temperature == 0:
        return argmax(logits, out)
    if not isinstance(noise, StepNoise):
        raise TypeError(
            f'gumbel_max at temperature {temperature} needs one step of noise_steps(...), got {type(noise).__name__}'
        )
    return noise.source.sample(noise.step, logits, temperature, out)


def argmax(scores: Tensor, out: Tensor | None = None) -> Tensor:
    # the first maximum (a NaN counts as the largest, as in torch.max), written into `out` where the
    # caller keeps the tokens
    return torch.argmax(scores, dim=-1, out=out) if exists(out) else torch.argmax(scores, dim=-1)


# Noise is drawn in chunks of at most this many fp32 numbers (512 KiB): few launches, and a chunk
# stays in the core's L2 cache beside the weights every step reads (see benchmarks/results/performance.md).
CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class StepNoise:
    """One sampling step's noise, drawn (or read) only when gumbel_max asks for it."""

    source: GumbelNoise
    step: int


class GumbelPool:
    """T * G for a stream of U[0, 1) draws from `generator`, handed out in order and drawn in chunks;
    `take` also says whether any of the numbers handed out came from u == 0 (G = -inf)."""

    def __init__(self, temperature: float, *, device, generator=None, chunk: int = CHUNK_ELEMENTS):
        self.temperature = temperature
        self.device = device
        self.generator = generator
        self.chunk = chunk
        self.values = torch.empty(
            0, device=device, dtype=torch.float32
        )  # (n,) T * G; those before `position` are handed out
        self.position = 0
        self.zeros: list[int] = []  # positions in `values` that came from u == 0, ascending
        self.handed_out = 0  # numbers taken so far

    def draw_uniform(self, count: int) -> Tensor:
        # float32 whatever the default dtype: the band's bounds are those of float32 uniforms
        return torch.rand(count, device=self.device, dtype=torch.float32, generator=self.generator)

    def reserve(self, count: int) -> None:
        """Draw a chunk when fewer than `count` numbers are left after `position`."""
        start = self.position
        if start + count <= self.values.numel():
            return
        rest = self.values[start:]
        # T * G = -T log(-log u), in four passes; large takes: 16 of them a draw
        size = max(count - rest.numel(), min(CHUNK_ELEMENTS, max(self.chunk, 16 * count)))
        fresh = self.draw_uniform(size).log_().neg_().log_().mul_(-self.temperature)
        self.values = torch.cat((rest, fresh)) if rest.numel() > 0 else fresh
        self.zeros = [i - start for i in self.zeros if i >= start]
        if bool(torch.isneginf(fresh).any()):
            self.zeros += [rest.numel() + i for i in torch.isneginf(fresh).nonzero().flatten().tolist()]
        self.position = 0

    def take(self, count: int) -> tuple[Tensor, bool]:
        self.reserve(count)
        start, end = self.position, self.position + count
        self.position = end
        self.handed_out += count
        has_zero = bool(self.zeros) and self.zeros[0] < end
        if has_zero:
            self.zeros = [i for i in self.zeros if i >= end]
        return self.values[start:end], has_zero

    def clear_run(self) -> int:
        """How many numbers after `position` are drawn and hold no u == 0: what a reader of
        `values` in place (up_fast/cpu_step.py) may take before calling `reserve` or `take`."""
        return (self.zeros[0] if self.zeros else self.values.numel()) - self.position

    def skip(self, count: int) -> None:
        """Hand out `count` numbers read in place; at most clear_run() of them."""
        self.position += count
        self.handed_out += count


class GumbelNoise:
    """The Gumbel noise of `length` sampling steps of a (batch, num_tokens) distribution at
    `temperature`, drawn as gumbel_max asks for it: iterating yields each step's StepNoise.

    Uniforms come from `generator` (torch's global one by default), or from an injected
    (batch, length, num_tokens) `uniform_noise` tensor so that two paths can be compared on the same
    noise: gumbel_max then returns what full Gumbel-max on that tensor returns, reading (on the
    CPU) only the candidates' entries. On the CPU, generator noise is drawn for the candidates
    only: the tokens follow full Gumbel-max's distribution exactly, but are not the tokens a full
    draw from the same seed would give. Each step's noise is meant for one gumbel_max call.
    `lazy` picks the formulation (see the notes above): by default lazy on LAZY_DEVICE_TYPES (the CPU).
    """

    def __init__(
        self, batch, length, num_tokens, temperature, *, device, generator=None, uniform_noise=None, lazy=None
    ):
        if exists(uniform_noise):
            check_uniform_noise(uniform_noise, (batch, length, num_tokens))

        device = torch.device(device)
        self.shape = (batch, length, num_tokens)
        self.temperature = temperature
        self.device = device
        self.generator = generator
        self.uniform_noise = uniform_noise
        self.band = Band.of(temperature, device, injected=exists(uniform_noise))
        self.lazy = default(lazy, device.type in LAZY_DEVICE_TYPES)  # the formulation (see the notes above)

        # lazy: about one draw a row a step at small temperatures; the pool grows by what a step needs
        self.pool = GumbelPool(
            temperature, device=device, generator=generator, chunk=max(1, min(CHUNK_ELEMENTS, batch * length))
        )
        self.dense_chunks = None  # dense: each step's T * G, drawn (or read) a chunk of steps at a time (dense_steps)
        # lazy: the candidates' T * G, and stale values of earlier steps elsewhere (see sample_lazy)
        scratch = (batch, num_tokens) if self.lazy else (0, 0)
        self.noise = torch.zeros(scratch, device=device, dtype=torch.float32)  # (batch, num_tokens)
        self.scores = torch.empty(scratch, device=device, dtype=torch.float32)
        self.best = torch.empty(scratch[:1], device=device, dtype=torch.float32)
        self.every_token = False

    def __iter__(self) -> Iterator[StepNoise]:
        return (StepNoise(self, step) for step in range(self.shape[1]))

    def injected_uniform(self, step: int, where: Tensor | int | None = None) -> Tensor:
        """The injected uniforms of `step` (batch, num_tokens) in float32, or only those at `where`:
        a row, or a (batch, num_tokens) mask (then in row-major order)."""
        uniform = self.uniform_noise[:, step]
        if uniform.device != self.device:
            uniform = uniform.to(self.device)
        if exists(where):
            uniform = uniform[where]
        uniform = uniform.to(torch.float32, copy=True)  # the caller's tensor stays as it is
        if self.lazy and not bool(
            ((uniform >= 0) & (uniform < 1)).all()
        ):  # a CPU check reads nothing back from a device
            raise ValueError(
                f'uniform_noise must hold U[0, 1) draws (after conversion to float32); step {step} has values outside '
                '[0, 1)'
            )
        return uniform

    def sample(self, step: int, logits: Tensor, temperature: float, out: Tensor | None) -> Tensor:
        if temperature != self.temperature:
            raise ValueError(
                f'gumbel_max got temperature {temperature}, but its noise was made for temperature {self.temperature}'
            )
        if tuple(logits.shape) != (self.shape[0], self.shape[2]):
            raise ValueError(
                f'gumbel_max got logits of shape {tuple(logits.shape)}, but its noise is for (batch, num_tokens) = '
                f'{(self.shape[0], self.shape[2])}'
            )
        if logits.dtype != torch.float32:
            logits = logits.float()
        return self.sample_lazy(step, logits, out) if self.lazy else self.sample_dense(step, logits, out)

    def candidate_noise(self, step: int, candidates: Tensor) -> tuple[Tensor, bool]:
        """T * G of the candidates, in row-major order, and whether any u was 0."""
        if not exists(self.uniform_noise):
            return self.pool.take(int(candidates.count_nonzero()))
        uniform = self.injected_uniform(step, candidates)
        has_zero = bool((uniform == 0).any())
        return gumbel_(uniform).mul_(self.temperature), has_zero

    def sample_lazy(self, step: int, logits: Tensor, out: Tensor | None) -> Tensor:
        if self.every_token:
            # an earlier step had every token in the band (a high temperature): drawing for every
            # token is full Gumbel-max itself, exact without the band's bookkeeping
            noise, _ = self.pool.take(logits.numel())
            scores = torch.add(logits, noise.view_as(logits), out=self.scores)
            return (
                torch.max(scores, dim=-1, out=(self.best, out)).indices
                if exists(out)
                else torch.max(scores, dim=-1).indices
            )

        top, candidates = self.band.candidates(logits)  # (batch, 1), (batch, num_tokens)
        fresh, has_zero = self.candidate_noise(step, candidates)  # (candidates,)
        if fresh.numel() == candidates.numel():
            noise = fresh.view_as(candidates)
            self.every_token = not exists(self.uniform_noise)  # injected noise: read only the band, always
        else:
            # fresh noise in the band; outside it, earlier steps' T * G (or the initial 0), all <= T * g_max,
            # which the band's argument allows any non-candidate: none of them can win a certified row
            noise = self.noise.masked_scatter_(candidates, fresh)
        scores = torch.add(logits, noise, out=self.scores)  # the candidates' scores as full Gumbel-max computes them
        best, winner = torch.max(scores, dim=-1, out=(self.best, out)) if exists(out) else torch.max(scores, dim=-1)
        if has_zero:
            self.certify(step, logits, top, candidates, noise, best, winner)
        return winner

    def certify(self, step, logits, top, candidates, noise, best, winner):
        """Rows where u == 0 left no candidate above the certificate take noise for every token
        (fresh draws outside the band, the candidates keeping theirs) and full Gumbel-max; in place."""
        failed = torch.logical_not(best >= self.band.certificate(top).squeeze(-1)).nonzero().flatten().tolist()
        for row in failed:  # rare: u == 0 has probability 2^-24
            if exists(self.uniform_noise):
                outside = gumbel_(self.injected_uniform(step, row)).mul_(self.temperature)
            else:
                outside, _ = self.pool.take(logits.shape[-1])
            row_noise = torch.where(candidates[row], noise[row], outside)
            winner[row] = torch.max(logits[row] + row_noise, dim=-1).indices

    def dense_steps(self, bias: Tensor | None = None) -> Iterator[Tensor]:
        """Each step's T * G (+ `bias`, (num_tokens,), the logits' own) as a (batch, num_tokens) fp32
        tensor, in order, for the dense formulation: the draws (or the injected uniforms) of a chunk of
        steps turned into noise in five passes, so that a step itself costs no op for its noise. Each
        tensor is the caller's to overwrite."""
        batch, length, num_tokens = self.shape
        chunk_steps = max(1, min(length, CHUNK_ELEMENTS // max(1, batch * num_tokens)))
        for start in range(0, length, chunk_steps):
            steps = min(chunk_steps, length - start)
            # step-major, so that each step's (batch, num_tokens) slice is contiguous
            if exists(self.uniform_noise):  # a copy: the caller's tensor stays as it is
                uniform = torch.empty((steps, batch, num_tokens), device=self.device, dtype=torch.float32)
                uniform.copy_(self.uniform_noise[:, start : start + steps].transpose(0, 1))
            else:
                uniform = torch.rand(
                    (steps, batch, num_tokens), device=self.device, dtype=torch.float32, generator=self.generator
                )
            noise = uniform.log_().neg_().log_().mul_(-self.temperature)  # in place: one chunk in memory, not two
            if exists(bias):
                noise.add_(bias)
            yield from noise.unbind(0)

    def sample_dense(self, step: int, logits: Tensor, out: Tensor | None) -> Tensor:
        # plain full Gumbel-max on every token's noise: nothing read back to the host
        if not exists(self.dense_chunks):
            self.dense_chunks = self.dense_steps()
        noise = next(self.dense_chunks)  # steps come in order
        scores = noise.add_(logits)  # (batch, num_tokens): the step's noise is used once
        return argmax(scores, out)


def noise_steps(
    batch, length, num_tokens, temperature, *, device, generator=None, uniform_noise=None
) -> Iterator[StepNoise | None]:
    """Each sampling step's noise for gumbel_max, in order (see GumbelNoise).

    None at temperature 0, which needs none.
    """
    if temperature == 0:
        return repeat(None, length)
    return iter(
        GumbelNoise(
            batch, length, num_tokens, temperature, device=device, generator=generator, uniform_noise=uniform_noise
        )
    )


# small-batch matmuls on the CPU


def onednn_packed(weight: Tensor, batch: int) -> Tensor | None:
    """`weight` (out, in) prepacked by oneDNN for products with `batch` rows, or None.

    On the CPU, oneDNN's linear with a prepacked weight runs the decoding loop's small products
    faster than torch.mm (MKL; see benchmarks/results/performance.md). The op is
    internal to PyTorch (Inductor uses it), so it is taken only where it exists and, on a probe,
    agrees with torch.mm; anything else keeps torch.mm. The probe draws from a private generator,
    leaving torch's global random stream untouched.
    """
    if weight.device.type != 'cpu' or weight.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
        probe = torch.randn(
            batch, weight.shape[1], dtype=torch.float32, generator=torch.Generator().manual_seed(0)
        )  # (batch, in)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, 'none', [], '')
    except Exception:  # not built with oneDNN, or the internal op changed
        return None
    # CPU tensors only (checked above): comparing them reads nothing back from a device
    if got.shape != (batch, weight.shape[0]) or not torch.allclose(got, probe @ weight.t(), rtol=1e-4, atol=1e-4):
        return None
    return packed


def onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, 'none', [], '')


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

    The decoding loop's state (see init_state) is (h / 2, 2 c) for an LSTM and (h,) for a GRU: the
    LSTM's other two factors of 2 move into the state and into the products' weights (`linear`
    takes h / 2), which saves two elementwise ops a step; since scaling by 2 is exact in floating
    point (subnormals aside), every value is bitwise what the unscaled form gives. `module_state`
    converts back.
    """

    cell: str
    input_table: Tensor  # (num_tokens, gates * hidden): embed @ W_ih^T + folded biases
    weight_hh: Tensor  # (gates * hidden, hidden), gates in the order above
    bias_hn: Tensor | None  # (hidden,) GRU only
    weight_out: Tensor  # (num_tokens, hidden)
    bias_out: Tensor | None  # (num_tokens,)
    # (weight name, batch) -> x -> x @ W^T + b: a cache of this object's own, never shared by dataclasses.replace
    linears: dict = field(default_factory=dict, repr=False, init=False, compare=False)

    def linear(self, name: str, batch: int, *, prepacked: bool = True):
        """The product x (batch, hidden) -> x @ W^T + b for W = weight_hh, weight_out, or both stacked
        ('weight_hh_out': one product gives a decoding step's logits and next recurrent term), with
        the bias that belongs to it (bias_out; a GRU's b_hn in its n rows) added by the same call:
        oneDNN with W prepacked where that is taken (see onednn_packed) and `prepacked`, else torch.addmm."""
        key = (name, batch, prepacked)
        if key not in self.linears:
            weight, bias = self.weight_and_bias(name)
            packed = onednn_packed(weight, batch) if prepacked else None
            if exists(packed):
                self.linears[key] = partial(onednn_linear, packed=packed, bias=bias)
            else:
                self.linears[key] = (
                    (lambda x: torch.addmm(bias, x, weight.t())) if exists(bias) else (lambda x: x @ weight.t())
                )
        return self.linears[key]

    def weight_and_bias(self, name: str) -> tuple[Tensor, Tensor | None]:
        """The weight (out, hidden) a product multiplies the loop's state[0] by, and its bias."""
        scale = 2.0 if self.cell == 'lstm' else 1.0  # an LSTM's state[0] is h / 2
        gates_width = self.weight_hh.shape[0]
        bias_hh = None
        if exists(self.bias_hn):  # GRU: (0, 0, b_hn) over the (r, z, n) rows
            bias_hh = torch.cat((self.bias_hn.new_zeros(gates_width - self.hidden_size), self.bias_hn))

        if name == 'weight_hh':
            return self.weight_hh * scale, bias_hh
        if name == 'weight_out':
            return self.weight_out * scale, self.bias_out
        if name != 'weight_hh_out':
            raise ValueError(f"name must be 'weight_hh', 'weight_out' or 'weight_hh_out', got {name!r}")

        bias = None
        if exists(bias_hh) or exists(self.bias_out):
            zeros = self.weight_hh.new_zeros
            bias = torch.cat((default(bias_hh, zeros(gates_width)), default(self.bias_out, zeros(self.num_tokens))))
        return torch.cat((self.weight_hh, self.weight_out)) * scale, bias

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

        input_table = f32(embed.weight) @ weight_ih.t()  # (num_tokens, gates * hidden)
        bias_hn = None

        if cell == 'lstm':
            if exists(bias_ih):
                input_table += bias_ih + bias_hh
            # (i, f, g, o) -> (i, f, o, g) by slices: an index tensor copied to the GPU would sync
            reorder = lambda t, dim: torch.cat(
                [t.narrow(dim, 0, 2 * hidden), t.narrow(dim, 3 * hidden, hidden), t.narrow(dim, 2 * hidden, hidden)],
                dim=dim,
            )
            input_table = reorder(input_table, 1)
            weight_hh = reorder(weight_hh, 0)
        else:
            if exists(bias_ih):
                input_table += bias_ih
                input_table[:, : 2 * hidden] += bias_hh[: 2 * hidden]
                bias_hn = bias_hh[2 * hidden :] * 2.0
            else:
                bias_hn = weight_hh.new_zeros(hidden)

        # the candidate gate (LSTM g, GRU n) is the last block in both cells: double it for tanh(x) = 2 sigmoid(2x) - 1
        input_table[:, -hidden:] *= 2.0
        weight_hh[-hidden:] *= 2.0

        return cls(
            cell=cell,
            input_table=input_table.contiguous(),
            weight_hh=weight_hh.contiguous(),
            bias_hn=bias_hn,
            weight_out=f32(to_logits.weight).contiguous(),
            bias_out=f32(to_logits.bias),
        )

    def init_state(self, batch: int) -> tuple[Tensor, ...]:
        """The loop's zero state for `batch` rows: (h / 2, 2 c) for an LSTM, (h,) for a GRU."""
        zeros = lambda: self.weight_hh.new_zeros(batch, self.hidden_size)
        return (zeros(), zeros()) if self.cell == 'lstm' else (zeros(),)

    def to(self, device=None, dtype: torch.dtype | None = None) -> FoldedRecurrentNet:
        """A copy with every weight on `device` and in `dtype` (each default: the weight's own), and an
        empty product cache."""
        move = lambda t: t.to(device=default(device, t.device), dtype=default(dtype, t.dtype)) if exists(t) else None
        return replace(
            self,
            input_table=move(self.input_table),
            weight_hh=move(self.weight_hh),
            bias_hn=move(self.bias_hn),
            weight_out=move(self.weight_out),
            bias_out=move(self.bias_out),
        )

    def module_state(self, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The loop's state in the module's own terms, (h, c) or (h,); new tensors."""
        if self.cell == 'lstm':
            half_h, double_c = state
            return half_h * 2.0, double_c * 0.5
        return tuple(t.clone() for t in state)

    def transposed(self, name: str) -> tuple[Tensor, Tensor | None]:
        """weight_and_bias(name) with the weight as a transposed view (hidden, out), for torch.addmm; cached."""
        key = (name, 'transposed')
        if key not in self.linears:
            weight, bias = self.weight_and_bias(name)
            self.linears[key] = (weight.t(), bias)
        return self.linears[key]

    def stepper(self, state: tuple[Tensor, ...], *, product: bool = False):
        """`step(tokens, hidden_gates)`, which advances the loop's `state` in place by one token per
        row and returns state[0]: the cell, specialised once per loop with all it touches bound.

        tokens: (batch,) int64 ids. hidden_gates: linear('weight_hh')(state[0]) (batch, gates * hidden).
        With `product`, `step(tokens)` makes the recurrent product itself with torch.addmm, an LSTM's
        gathered input rows as its bias operand: the dense formulation's step, where every op is a
        launch. Python numbers come in as alpha= or value= arguments, or as x + x, where they can: as
        an operand (2 * x) one costs about a microsecond more an op on the CPU.
        """
        batch = state[0].shape[0]
        gates = self.input_table.new_empty(batch, self.input_table.shape[1])  # (batch, gates * hidden), reused
        gate_views = gates.split(self.hidden_size, dim=-1)
        table, index_select = self.input_table, torch.index_select

        if self.cell == 'lstm':
            half_h, double_c = state
            i, f, o, g = gate_views
            weight_t, _ = self.transposed('weight_hh') if product else (None, None)  # (hidden, 4 * hidden)

            def lstm_step(tokens: Tensor, hidden_gates: Tensor | None = None) -> Tensor:
                if product:
                    index_select(table, 0, tokens, out=gates).addmm_(half_h, weight_t)
                else:
                    index_select(table, 0, tokens, out=gates).add_(hidden_gates)
                gates.sigmoid_()  # g block holds sigmoid(2 g)
                return lstm_update_(i, f, o, g, half_h, double_c)

            return lstm_step

        (h,) = state
        hidden = self.hidden_size
        reset_update, (r, z, n) = gates[:, : 2 * hidden], gate_views
        recurrent = self.linear('weight_hh', batch, prepacked=False) if product else None  # b_hn in its n rows

        def gru_step(tokens: Tensor, hidden_gates: Tensor | None = None) -> Tensor:
            if product:
                hidden_gates = recurrent(h)
            index_select(table, 0, tokens, out=gates)
            hidden_reset_update, hidden_n = hidden_gates.split((2 * hidden, hidden), dim=1)
            reset_update.add_(hidden_reset_update).sigmoid_()
            return gru_update_(r, z, n, hidden_n, h)  # hidden_gates holds b_hn already

        return gru_step

    def step_(self, tokens: Tensor, state: tuple[Tensor, ...], hidden_gates: Tensor | None = None) -> Tensor:
        """One step of stepper(state) (see there); hidden_gates are computed when not given.
        Loops make the stepper once and call it."""
        if not exists(hidden_gates):
            hidden_gates = self.linear('weight_hh', tokens.shape[0])(state[0])
        return self.stepper(state)(tokens, hidden_gates)

    def logits(self, state: tuple[Tensor, ...]) -> Tensor:
        # the loop's state -> (batch, num_tokens)
        return self.linear('weight_out', state[0].shape[0])(state[0])

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
        """Teacher-force `prefix` (batch, prefix_len) then sample `length` tokens into `out`.

        Returns the sampled tokens (batch, length) int64 and the final recurrent state in the
        module's terms ((h, c) or (h,)), which is the state after feeding the second to last
        sampled token (the last one is never fed).
        """
        # inference mode skips the autograd bookkeeping of every op (~0.2 us each, 15 ops a step);
        # what leaves it is made outside it, so callers get ordinary tensors
        with torch.inference_mode():
            sampled_columns, state = self.sample_columns(prefix, length, temperature, generator, uniform_noise)

        sampled = sampled_columns.t()  # (batch, length)
        sampled = out.copy_(sampled) if exists(out) else sampled.clone(memory_format=torch.contiguous_format)
        return sampled, self.module_state(state)

    def sample_columns(self, prefix, length, temperature, generator, uniform_noise):
        """sample()'s loop, in inference mode: tokens (length, batch) and the loop's state; the lazy
        formulation on LAZY_DEVICE_TYPES (the CPU), the dense one elsewhere (see the notes above)."""
        if prefix.device.type not in LAZY_DEVICE_TYPES:
            return self.sample_columns_dense(prefix, length, temperature, generator, uniform_noise)
        batch = prefix.shape[0]
        width = self.weight_hh.shape[0]
        state = self.init_state(batch)
        # a loop makes ~length small ops of each kind: everything a step needs is looked up here, once
        x = state[0]  # what the products take; steps update it in place
        recurrent, both, last_logits = (
            self.linear(name, batch) for name in ('weight_hh', 'weight_hh_out', 'weight_out')
        )
        sampled_columns = torch.empty(
            (length, batch), dtype=torch.long, device=prefix.device
        )  # (length, batch): step t writes a contiguous row
        sampled_rows = sampled_columns.unbind(0)
        noise = None  # temperature 0: argmax, no noise
        if temperature != 0:
            noise = GumbelNoise(
                batch,
                length,
                self.num_tokens,
                temperature,
                device=prefix.device,
                generator=generator,
                uniform_noise=uniform_noise,
            )
        prefix_columns = prefix.long().t().contiguous()  # (prefix_len, batch)

        # the LSTM's step as one native call where it is had (the same values: see up_fast/cpu_step.py);
        # it samples too when the noise comes from the generator
        native = self.native_step(state, noise, prefix_columns)
        step = native.cell if exists(native) else self.stepper(state)
        native_decode = exists(native) and native.samples

        # teacher forcing, one column of the prefix a step (a bulk gather of many steps' input rows
        # measured no faster: see benchmarks/results/performance.md)
        for tokens in prefix_columns.unbind(0):  # prefix_len of (batch,)
            step(tokens, recurrent(x))

        if length == 0:
            return sampled_columns, state

        # a decoding step's logits and its next recurrent term come from one product with [W_hh; W_out]
        split = (width, self.num_tokens)
        step_noise = lambda t: StepNoise(noise, t) if exists(noise) else None
        for t in range(length - 1):
            product = both(x)  # (batch, gates * hidden + num_tokens)
            if native_decode and native.decode(product, noise, sampled_rows[t]):
                continue
            hidden_gates, logits = product.split(split, dim=1)  # (batch, gates * hidden), (batch, num_tokens)
            step(gumbel_max(logits, temperature, step_noise(t), out=sampled_rows[t]), hidden_gates)
        gumbel_max(last_logits(x), temperature, step_noise(length - 1), out=sampled_rows[length - 1])
        return sampled_columns, state

    def native_step(self, state: tuple[Tensor, ...], noise: GumbelNoise | None, prefix_columns: Tensor):
        """up_fast/cpu_step.py's native LSTM step for this loop, or None where the PyTorch step runs
        (a GRU, UP_FAST_NATIVE off, no compiler, a failed probe; or prefix tokens out of range, for
        which the PyTorch step raises its error)."""
        if self.cell != 'lstm' or self.input_table.device.type != 'cpu':
            return None
        if prefix_columns.numel() and not (
            0 <= int(prefix_columns.min()) and int(prefix_columns.max()) < self.num_tokens
        ):
            return None
        band = noise.band if exists(noise) and not exists(noise.uniform_noise) else None
        return native_step(self.input_table, state, band)

    def sample_columns_dense(self, prefix, length, temperature, generator, uniform_noise):
        """sample_columns' dense formulation: no value read back to the host, and a decoding step of
        two products, one argmax and the cell (11 ops, LSTM or GRU): the noise, drawn (or read) a chunk
        of steps at a time, is the logits' bias operand, and the gathered input rows the recurrent one's."""
        batch = prefix.shape[0]
        state = self.init_state(batch)
        x = state[0]  # what the products take; steps update it in place
        step = self.stepper(state, product=True)
        weight_out_t, bias_out = self.transposed('weight_out')  # (hidden, num_tokens), (num_tokens,) or None
        sampled_columns = torch.empty((length, batch), dtype=torch.long, device=prefix.device)  # (length, batch)
        sampled_rows = sampled_columns.unbind(0)

        for tokens in prefix.long().t().contiguous().unbind(0):  # teacher forcing: prefix_len of (batch,)
            step(tokens)

        if temperature == 0:
            logits = self.linear('weight_out', batch, prepacked=False)
            scores = (logits(x) for _ in range(length))
        else:
            noise = GumbelNoise(
                batch,
                length,
                self.num_tokens,
                temperature,
                device=prefix.device,
                generator=generator,
                uniform_noise=uniform_noise,
                lazy=False,
            ).dense_steps(bias_out)  # each step's T * G + bias_out, (batch, num_tokens)
            scores = (step_noise.addmm_(x, weight_out_t) for step_noise in noise)

        for t, step_scores in enumerate(scores):  # each made from x as it is when the loop asks for it
            argmax(step_scores, out=sampled_rows[t])
            if t < length - 1:
                step(sampled_rows[t])
        return sampled_columns, state
