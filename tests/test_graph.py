"""cuda_graph=True: the data step's draws and generation replayed from one CUDA graph draw what the eager step draws.

Off CUDA the function the graph captures runs eagerly with its kept, re-seeded generators: the CPU
tests check that function against the eager step; the tests marked for CUDA capture and replay it.
"""

import pytest
import torch
from conftest import tiny_model
from test_prefetch import ORDERS, assert_same_state, train

from up_fast import UniversalPretrainWrapper
from up_fast.graph import GraphedStepData

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
cuda_only = pytest.mark.skipif(DEVICE.type != 'cuda', reason='capturing and replaying a CUDA graph needs a GPU')


def build(order, **options):
    torch.manual_seed(0)
    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, **{**ORDERS[order], **options}).to(
        DEVICE
    )
    return wrapper, torch.optim.AdamW(wrapper.model.parameters(), lr=1e-2)


def count_made(monkeypatch):
    made = []
    real_make = GraphedStepData.make

    def make(self, wrapper, step, device):
        made.append(step)
        return real_make(self, wrapper, step, device)

    monkeypatch.setattr(GraphedStepData, 'make', make)
    return made


@pytest.mark.parametrize('prefetch', [False, True], ids=['eager', 'prefetch'])
@pytest.mark.parametrize('order', list(ORDERS))
def test_the_graphed_step_draws_what_the_eager_step_draws(monkeypatch, order, prefetch):
    expected, expected_optimizer = build(order)
    expected_batches = []
    expected_losses = train(expected, expected_optimizer, 5, expected_batches)

    made = count_made(monkeypatch)
    wrapper, optimizer = build(order, cuda_graph=True, prefetch=prefetch)
    batches = []
    losses = train(wrapper, optimizer, 5, batches)

    assert made == [1, 2, 3, 4, 5] + ([6] if prefetch else []), 'every step came from the graphed function'
    assert losses == expected_losses
    assert all(torch.equal(a, b) for a, b in zip(batches, expected_batches))
    assert_same_state(wrapper, expected)


def test_last_step_rows_do_not_change_with_the_next_step():
    wrapper, _ = build('reference', cuda_graph=True)
    wrapper.data_step_()
    rows = wrapper.last_step_rows
    condition_rows = rows.condition_rows.clone()
    wrapper.data_step_()
    assert torch.equal(rows.condition_rows, condition_rows) and wrapper.last_step_rows is not rows


def test_cuda_graph_refuses_what_it_cannot_replay():
    with pytest.raises(ValueError, match='cuda_graph=True .* keep_buffer_on_cpu=False'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, cuda_graph=True, keep_buffer_on_cpu=True)
    with pytest.raises(ValueError, match='cuda_graph=True .* rng_seed'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, cuda_graph=True, generator=torch.Generator())
    with pytest.raises(TypeError, match='cuda_graph must be True or False'):
        UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, cuda_graph=1)


@cuda_only
@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_the_graph_is_replayed_without_a_host_sync(backend):
    wrapper, _ = build('reference', cuda_graph=True, backend=backend)
    wrapper.data_step_()  # captures
    torch.cuda.synchronize()
    graph = wrapper.graphed.graph
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            batch = wrapper.data_step_()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert wrapper.graphed.graph is graph, 'replayed, not captured again'
    assert batch.device.type == 'cuda' and wrapper.num_steps == 4
