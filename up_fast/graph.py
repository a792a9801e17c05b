"""The data step's draws, reads and generation as one CUDA graph (the wrapper's `cuda_graph=True`).

What one replay does is the wrapper's `draw_and_generate(step, randomness)`: the row and noise draws,
the prefix gather, the generator's whole sampling loop. The write-back and the batch gather stay two
launches outside it, as do counting the step and re-drawing the generator (host-side work).

Why the replay draws what the eager step draws:
- its generators are the same kind of per-step generators (up_fast/rng.py), kept as objects and
  re-seeded in place for each step (StepRandomness(keep_generators=True)): a seed set before a replay
  is what the replay's draws start from, as for a freshly seeded generator. The CUDA ones are
  registered with the graph (CUDAGraph.register_generator_state);
- the generator's folded weights are computed inside the graph (the cache is emptied before the
  capture), so that weights re-drawn in place every `reset_turing_machine_every` steps are folded
  again on every replay;
- a step does no host sync (tests/test_algorithm.py: test_data_step_never_syncs_on_cuda), so nothing
  is read back that a replay would miss.
The graph is captured again when the buffer or a generator weight is a new tensor (a `.to()`, a
replaced parameter), not after an in-place write (load_state_dict, a re-draw), which the replay sees.

Off CUDA there is nothing to capture: `make` runs the body eagerly, with the same kept generators, so
the CPU tests check the function the graph captures against the eager step. Not yet validated on a
GPU: off by default.
"""

from __future__ import annotations

import torch

from up_fast.buffer import StepRows
from up_fast.helpers import exists


def clone_rows(rows: StepRows) -> StepRows:
    # a replay overwrites the graph's outputs: the step's record of its rows must not change with it
    return StepRows(
        condition_rows=rows.condition_rows.clone(),
        reset_rows=rows.reset_rows.clone(),
        seed_rows=rows.seed_rows.clone(),
        seed_offsets=rows.seed_offsets.clone(),
        batch_rows=rows.batch_rows.clone(),
        reset_first=rows.reset_first,
    )


class GraphedStepData:
    """`make(wrapper, step)`: the wrapper's draw_and_generate for `step`, replayed from a CUDA graph."""

    def __init__(self):
        self.randomness = None
        self.graph = None
        self.static = None
        self.key = None

    def __getstate__(self):
        # a copy or a pickle of the wrapper captures its own graph on first use
        return {'randomness': None, 'graph': None, 'static': None, 'key': None}

    def tensors_key(self, wrapper, device) -> tuple:
        generator_state = (*wrapper.data_generator.parameters(), *wrapper.data_generator.buffers())
        return device, tuple(t.data_ptr() for t in (wrapper.synth_data_buffer, *generator_state))

    def kept_randomness(self, wrapper):
        base = wrapper.randomness
        if not exists(self.randomness) or (self.randomness.seed, self.randomness.rank) != (base.seed, base.rank):
            self.randomness = base.fresh(keep_generators=True)
            self.graph = None
        return self.randomness

    def make(self, wrapper, step: int, device: torch.device):
        randomness = self.kept_randomness(wrapper)
        if device.type != 'cuda':
            return wrapper.draw_and_generate(step, randomness)  # the body, eagerly

        key = self.tensors_key(wrapper, device)
        if self.graph is None or key != self.key:
            self.capture(wrapper, step, device)
            self.key = key

        randomness.begin(step)  # re-seeds the registered generators for this step's replay
        self.graph.replay()
        made = self.static
        return type(made)(
            step=step, rows=clone_rows(made.rows), noise=made.noise, generated=made.generated, randomness=randomness
        )

    def capture(self, wrapper, step: int, device: torch.device):
        randomness = self.randomness
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            wrapper.draw_and_generate(step, randomness)  # warm-up: lazy initialisation, the kept generators made
        current.wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        register = getattr(graph, 'register_generator_state', None)
        if register is None:
            raise RuntimeError(
                f'cuda_graph=True replays draws from generators of its own, which needs '
                f'torch.cuda.CUDAGraph.register_generator_state (torch >= 2.5), not in torch '
                f'{torch.__version__}: pass cuda_graph=False'
            )
        for generator in randomness.per_device.values():
            if generator.device.type == 'cuda':
                register(generator)
        wrapper.data_generator.invalidate_folded()  # folded inside the graph, on every replay
        randomness.begin(step)
        with torch.cuda.graph(graph):
            self.static = wrapper.draw_and_generate(step, randomness)
        self.graph = graph
