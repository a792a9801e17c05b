"""In-context Markov baselines (up_fast/cli/baselines.py): hand-computed cases, proper distributions,
and the positions they are scored on."""

import math
import random

import pytest

from up_fast.cli.baselines import InContextMarkov, markov_bits_per_byte
from up_fast.windows import predicted_positions, split_windows

U = 1 / 256  # P_-1: uniform over bytes


def fed(data: bytes, max_order: int, strength: float) -> InContextMarkov:
    model = InContextMarkov(max_order, strength)
    for byte in data:
        model.update(byte)
    return model


def test_order_0_by_hand():
    a, b = ord('a'), ord('b')
    model = fed(b'a', 0, 1.0)
    # one 'a' seen: (1 + 1 * U) / (1 + 1)
    assert model.probabilities(a) == pytest.approx([(1 + U) / 2])
    assert model.probabilities(b) == pytest.approx([U / 2])
    # nothing seen yet: uniform
    assert InContextMarkov(0, 1.0).probabilities(a) == pytest.approx([U])


def test_order_1_by_hand_backs_off_in_an_unseen_context():
    a, b = ord('a'), ord('b')
    s = 4.0
    # after 'ab': context 'b' has never been followed by anything, so order 1 = order 0
    p0 = (1 + s * U) / (2 + s)
    assert fed(b'ab', 1, s).probabilities(a) == pytest.approx([p0, p0])

    # after 'aba': context 'a' was followed by 'b' once
    p0 = (1 + s * U) / (3 + s)  # one 'b' among three bytes
    p1 = (1 + s * p0) / (1 + s)
    assert fed(b'aba', 1, s).probabilities(b) == pytest.approx([p0, p1])
    # 'a' never followed 'a': only the backed-off mass
    p0_a = (2 + s * U) / (3 + s)
    assert fed(b'aba', 1, s).probabilities(a) == pytest.approx([p0_a, s * p0_a / (1 + s)])


def test_order_2_by_hand():
    s = 2.0
    model = fed(b'abcab', 2, s)
    c = ord('c')
    p0 = (1 + s * U) / (5 + s)
    p1 = (1 + s * p0) / (1 + s)  # 'b' was followed by 'c' once
    p2 = (1 + s * p1) / (1 + s)  # 'ab' was followed by 'c' once
    assert model.probabilities(c) == pytest.approx([p0, p1, p2])


@pytest.mark.parametrize('strength', [0.5, 1.0, 16.0])
def test_every_order_is_a_proper_distribution(strength):
    rng = random.Random(0)
    history = bytes(rng.choice(b'abcde \n') for _ in range(150)) + bytes(rng.randrange(256) for _ in range(20))
    for length in (0, 1, 2, 3, 50, len(history)):
        model = fed(history[:length], 3, strength)
        for order in range(4):
            distribution = model.distribution(order)
            assert len(distribution) == 256
            assert all(p > 0 for p in distribution)
            assert math.fsum(distribution) == pytest.approx(1.0, abs=1e-12)


def test_split_windows_and_predicted_positions():
    assert split_windows(b'abcdefg', 3) == [b'abc', b'def']  # the last window of one byte predicts nothing
    assert split_windows(b'abcdefgh', 3) == [b'abc', b'def', b'gh']
    assert predicted_positions(b'abcdefgh', 3) == 2 + 2 + 1
    with pytest.raises(ValueError, match='seq_len'):
        split_windows(b'abc', 1)


def test_markov_bits_score_every_byte_but_the_first_of_each_window():
    s = 16.0
    # 'ab': only 'b' is predicted, from a history of one 'a'
    assert markov_bits_per_byte(b'ab', 8, (0,), s)[0] == pytest.approx(-math.log2(s * U / (1 + s)))
    # windows of 2: 'ab' and 'ab', each counted from scratch: the same figure
    assert markov_bits_per_byte(b'abab', 2, (0,), s)[0] == pytest.approx(-math.log2(s * U / (1 + s)))


def test_higher_orders_see_structure_that_order_0_cannot():
    periodic = b'abcdefgh' * 16
    bits = markov_bits_per_byte(periodic, 128, (0, 1, 2, 3))
    assert bits[3] < bits[2] < bits[0]
    assert bits[3] < 0.4 * bits[0]
    constant = markov_bits_per_byte(b'x' * 128, 128, (0, 3))
    assert constant[0] < 1.0 and constant[3] < 1.0  # the first few bytes of a row pay for the smoothing


def test_bad_arguments():
    with pytest.raises(ValueError, match='max_order'):
        InContextMarkov(-1)
    with pytest.raises(ValueError, match='strength'):
        InContextMarkov(1, 0.0)
    with pytest.raises(ValueError, match='no byte to predict'):
        markov_bits_per_byte(b'a', 8)
