"""The plain oracle (up_fast/naive.py) against the modules it is written from, and the folded path against it."""

import pytest
import torch

from up_fast import SyntheticDataGenerator
from up_fast.naive import naive_recurrent_sample


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
def test_oracle_state_matches_the_module(use_gru):
    torch.manual_seed(0)
    gen = SyntheticDataGenerator(dim=24, num_tokens=37, hidden_size=40, use_gru=use_gru)
    prefix = torch.randint(0, 37, (3, 50))
    _, state = naive_recurrent_sample(gen.embed, gen.net, gen.to_logits, prefix, 1, 0.0)
    with torch.no_grad():
        _, hiddens = gen.net(gen.embed(prefix))
    expected = (hiddens[0][0], hiddens[1][0]) if not use_gru else (hiddens[0],)
    for got, want in zip(state, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('use_gru', [False, True], ids=['lstm', 'gru'])
@pytest.mark.parametrize('temperature', [0.0, 1e-4, 1.0], ids=['greedy', 't1e-4', 't1'])
def test_folded_path_matches_the_oracle(use_gru, temperature):
    torch.manual_seed(1)
    num_tokens, length = 29, 40
    gen = SyntheticDataGenerator(dim=16, num_tokens=num_tokens, hidden_size=24, use_gru=use_gru)
    prefix = torch.randint(0, num_tokens, (4, 9))
    noise = torch.rand(4, length, num_tokens)
    want, want_state = naive_recurrent_sample(gen.embed, gen.net, gen.to_logits, prefix, length, temperature, noise)
    got, got_state = gen.folded().sample(prefix, length, temperature, uniform_noise=noise)
    assert torch.equal(got, want)
    for g, w in zip(got_state, want_state):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_oracle_needs_noise_to_sample():
    gen = SyntheticDataGenerator(dim=8, num_tokens=11)
    with pytest.raises(ValueError, match='uniform_noise'):
        naive_recurrent_sample(gen.embed, gen.net, gen.to_logits, torch.zeros(1, 2, dtype=torch.long), 3, 1.0)
