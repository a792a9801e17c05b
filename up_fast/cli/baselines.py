"""Zero-shot baselines for bits per byte on real text: what a model must beat to show that it
predicts more than can be counted in its own context.

The paper's baseline is an in-context Markov model: for each byte of a row, order-k counts taken
from the row's own preceding bytes only (nothing is learned beforehand), so it sees exactly what a
transformer with that row as its context sees. A small model pre-trained for minutes on a CPU is
usually above it (worse); the paper's large models are below it on real text.

The smoothing, stated once (Dirichlet interpolation down to the uniform distribution):

    P_-1(x)       = 1 / num_tokens
    P_k(x | c_k)  = (n(c_k, x) + strength * P_k-1(x | c_k-1)) / (n(c_k) + strength)

where c_k is the last k bytes before the predicted one, n(c_k, x) counts how often x followed c_k
earlier in the row and n(c_k) how often c_k was followed by anything. Each order backs off to the
next lower one with weight strength / (n(c_k) + strength): an unseen context gives the lower order's
prediction unchanged, and near the start of a row, with fewer than k bytes before the predicted
one, the order-k prediction is that of the highest order that has a context. Every P_k sums to one
over the vocabulary (a convex mix of a count distribution and a distribution that sums to one),
which the tests check.

This is a plain implementation written to be read (dicts of counts, one byte at a time): about a
second for 64 KiB of text on one CPU core.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from up_fast.windows import split_windows

MARKOV_ORDERS = (0, 1, 2, 3)
# the Dirichlet weight of the lower order, in pseudo-counts: small weights make every byte not yet
# seen in a short row very costly (how 16 was chosen: benchmarks/results/performance.md)
MARKOV_STRENGTH = 16.0


class InContextMarkov:
    """Order-0 .. order-`max_order` in-context Markov models of one row, fed one byte at a time.

    `probabilities(x)` gives P_0(x), ..., P_max_order(x) for the next byte, each from the counts of
    the bytes fed so far; `update(x)` then feeds x. The orders share one pass because each order's
    prediction is built on the one below it (see the module docstring)."""

    def __init__(self, max_order: int = 3, strength: float = MARKOV_STRENGTH, num_tokens: int = 256):
        if max_order < 0:
            raise ValueError(f'max_order must be >= 0, got {max_order}')
        if not strength > 0:
            raise ValueError(f'strength must be > 0, got {strength}')
        self.max_order = max_order
        self.strength = strength
        self.num_tokens = num_tokens
        self.history: list[int] = []
        self.next_counts = [defaultdict(Counter) for _ in range(max_order + 1)]  # [k][context][x]: n(c_k, x)
        self.context_counts = [Counter() for _ in range(max_order + 1)]  # [k][context]: n(c_k)

    def context(self, k: int) -> tuple[int, ...] | None:
        """The last k bytes fed, or None when fewer than k were fed."""
        if len(self.history) < k:
            return None
        return tuple(self.history[len(self.history) - k :])

    def probabilities(self, x: int) -> list[float]:
        probability = 1.0 / self.num_tokens  # P_-1: uniform
        per_order = []
        for k in range(self.max_order + 1):
            context = self.context(k)
            if context is not None:
                seen = self.context_counts[k][context]
                followed_by_x = self.next_counts[k][context][x] if seen else 0
                probability = (followed_by_x + self.strength * probability) / (seen + self.strength)
            per_order.append(probability)
        return per_order

    def distribution(self, order: int) -> list[float]:
        """P_order(x) for every x of the vocabulary: the whole predicted distribution."""
        return [self.probabilities(x)[order] for x in range(self.num_tokens)]

    def update(self, x: int):
        for k in range(self.max_order + 1):
            context = self.context(k)
            if context is not None:
                self.next_counts[k][context][x] += 1
                self.context_counts[k][context] += 1
        self.history.append(x)


def markov_bits_per_byte(
    data: bytes,
    seq_len: int,
    orders: tuple[int, ...] = MARKOV_ORDERS,
    strength: float = MARKOV_STRENGTH,
) -> dict[int, float]:
    """{order: bits per byte} of in-context Markov models on exactly the positions a model of
    context `seq_len` is scored on (`split_windows`): each window is a row of its own, counted
    from scratch, and its first byte is context only."""
    windows = split_windows(data, seq_len)
    if not windows:
        raise ValueError(f'no byte to predict: {len(data)} bytes of data')

    max_order = max(orders)
    total_bits = [0.0] * (max_order + 1)
    count = 0
    for window in windows:
        model = InContextMarkov(max_order, strength)
        model.update(window[0])
        for x in window[1:]:
            for k, probability in enumerate(model.probabilities(x)):
                total_bits[k] -= math.log2(probability)
            model.update(x)
            count += 1

    return {k: total_bits[k] / count for k in orders}


# the baselines as the commands report them: by name, with labels, and which side of them a model is on

UNIFORM_BITS = 8.0  # log2(256): a byte guessed uniformly at random


def markov_name(order: int) -> str:
    return f'markov_{order}'


BASELINE_LABELS = {
    **{markov_name(order): f'in-context Markov, order {order}' for order in MARKOV_ORDERS},
    'uniform': 'uniform guessing',
}


def baseline_bits(data: bytes, seq_len: int) -> dict[str, float]:
    """Bits per byte of the in-context Markov models and of uniform guessing, on the positions
    `bits_per_byte` scores a model of context `seq_len` on."""
    markov = markov_bits_per_byte(data, seq_len, MARKOV_ORDERS, MARKOV_STRENGTH)
    return {**{markov_name(order): bits for order, bits in markov.items()}, 'uniform': UNIFORM_BITS}


def best_markov(results: dict[str, float]) -> str:
    return min((markov_name(order) for order in MARKOV_ORDERS), key=results.__getitem__)


def versus_counting(bits: float, results: dict[str, float]) -> tuple[str, float]:
    """('below' or 'above', margin): which side of in-context counting `bits` is on, and by how much."""
    best = results[best_markov(results)]
    return ('below' if bits < best else 'above'), abs(bits - best)


def finish_bits_plot(
    plt, figure, axes, baselines: dict[str, float], xlabel: str, ylabel: str, title: str, path
) -> bool:
    """The in-context baselines as dashed lines, labels, legend; save the figure to `path` and close it."""
    for index, (name, bits) in enumerate(baselines.items()):
        axes.axhline(
            bits, linestyle='--', linewidth=1, color=f'C{index}', label=f'{BASELINE_LABELS[name]} ({bits:.2f})'
        )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
