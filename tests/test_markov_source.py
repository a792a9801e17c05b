"""The per-row random Markov chain source: each row its own small alphabet and transition table,
repeatable from the wrapper's stream, and usable as UniversalPretrainWrapper's data generator."""

import pytest
import torch

from up_fast import UniversalPretrainWrapper
from up_fast.byte_model import build_model
from up_fast.markov_source import MarkovChainGenerator

CONDITION = torch.zeros(64, 8, dtype=torch.long)


def draw(seed, **options):
    generator = MarkovChainGenerator(256, 128, **options)
    return generator.generate_unchecked(128, None, CONDITION, generator=torch.Generator().manual_seed(seed))


def test_rows_keep_to_their_own_small_alphabet():
    rows = draw(0, min_alphabet=3, max_alphabet=6)
    assert rows.shape == (64, 128) and rows.dtype == torch.long
    distinct = [len(set(row.tolist())) for row in rows]
    assert max(distinct) <= 6 and min(distinct) >= 2
    assert len({tuple(sorted(set(row.tolist()))) for row in rows}) > 32  # the rows do not share one alphabet


def test_rows_follow_a_transition_table_a_counter_can_learn():
    # within a row, the token after a token is predictable from earlier pairs of the same row:
    # bigram counts in the first half of each row guess the second half far better than chance
    rows = draw(1, max_alphabet=8, sharpness=3.0)
    hits = total = 0
    for row in rows.tolist():
        counts = {}
        for a, b in zip(row[:64], row[1:65]):
            counts.setdefault(a, {}).setdefault(b, 0)
            counts[a][b] += 1
        for a, b in zip(row[64:-1], row[65:]):
            if a in counts:
                hits += max(counts[a], key=counts[a].get) == b
                total += 1
    assert hits / total > 0.5  # chance is at most 1/2 with two tokens, about 1/8 here


def test_the_stream_decides_the_rows():
    assert torch.equal(draw(2), draw(2))
    assert not torch.equal(draw(2), draw(3))


@pytest.mark.parametrize(
    'options, message',
    [
        (dict(max_alphabet=300), 'max_alphabet'),
        (dict(min_alphabet=9, max_alphabet=8), 'min_alphabet'),
        (dict(sharpness=0.0), 'sharpness'),
    ],
)
def test_bad_options_name_themselves(options, message):
    with pytest.raises(ValueError, match=message):
        MarkovChainGenerator(256, 128, **options)


def test_it_drives_the_wrapper_and_resumes_exactly():
    def wrapper():
        torch.manual_seed(0)
        model = build_model(dict(num_tokens=256, dim=16, depth=1, heads=2, seq_len=32))
        return UniversalPretrainWrapper(
            model, data_generator=MarkovChainGenerator(256, 32), batch_size=4, seq_len=32, rng_seed=0
        )

    one, two = wrapper(), wrapper()
    for _ in range(3):
        assert torch.equal(one.data_step_(), two.data_step_())
    generated = one.synth_data_buffer[one.last_step_rows.condition_rows]
    assert max(len(set(row.tolist())) for row in generated) <= 32
    assert torch.isfinite(one())
