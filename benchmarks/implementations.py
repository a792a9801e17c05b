"""The implementations compared, and the callables each workload times.

    reference               x_transformers.up_wrapper, as installed
    up_fast-torch           up_fast's PyTorch path (the folded LSTM/GRU of up_fast/sampling.py)
    up_fast-triton          up_fast's fused Triton kernel (up_fast.kernels), through the public API

The Triton path needs CUDA and an installed Triton; without either it skips, saying which. Every
workload selects a path through up_fast's own keywords (BACKEND_KEYWORDS), so a redesigned kernel
is benchmarked as users call it.
"""

from __future__ import annotations

import importlib.util
import inspect
import random
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from x_transformers import Decoder, TransformerWrapper
from x_transformers import up_wrapper as reference

import up_fast.up_wrapper as fast
from benchmarks.harness import DEVICE, ON_CUDA, REFERENCE
from benchmarks.sizes import Model, Size

# reference first: every other implementation's speedup divides the reference's median, taken
# earlier in the same run
IMPLEMENTATIONS = (REFERENCE, 'up_fast-torch', 'up_fast-triton')

TRITON_IMPLEMENTATIONS = ('up_fast-triton',)

# the keywords of up_fast's classes that select each path; the one place to change if they do
BACKEND_KEYWORDS = {
    'up_fast-torch': dict(backend='torch'),
    'up_fast-triton': dict(backend='triton'),
}

TEMPERATURE = 1e-4  # both generators' default


def skip_without_triton(impl: str):
    if impl not in TRITON_IMPLEMENTATIONS:
        return
    if not ON_CUDA:
        pytest.skip('no Triton path on a CPU: the kernel needs CUDA')
    if importlib.util.find_spec('triton') is None:
        pytest.skip('no Triton path: triton is not installed (python3 -m pip install triton)')


def backend_kwargs(cls: type, impl: str) -> dict:
    """The keywords that make up_fast's `cls` run `impl`; skips when `cls` does not take them."""
    wanted = BACKEND_KEYWORDS[impl]
    accepted = inspect.signature(cls).parameters
    missing = [name for name in wanted if name not in accepted]

    if not missing:
        return wanted
    if impl == 'up_fast-torch':
        return {}  # no switch at all: the PyTorch path is the only one
    keywords = ', '.join(f'{name}=' for name in missing)
    pytest.skip(f'up_fast.{cls.__name__} has no {keywords} keyword yet: cannot select the {impl} path')


def seeded():
    # the reference draws its init scales and constant tokens from Python's random
    torch.manual_seed(0)
    random.seed(0)


# generate


def generate_fn(impl: str, size: Size) -> Callable[[], Tensor]:
    """One `generate(seq_len, seed=, condition=)` call at `size`: returns (batch, seq_len) tokens."""
    skip_without_triton(impl)
    seeded()

    if impl == REFERENCE:
        generator = reference.SyntheticDataGenerator(
            dim=size.hidden, num_tokens=size.num_tokens, max_seq_len=size.seq_len
        )
    else:
        kwargs = backend_kwargs(fast.SyntheticDataGenerator, impl)
        generator = fast.SyntheticDataGenerator(
            dim=size.hidden, num_tokens=size.num_tokens, max_seq_len=size.seq_len, **kwargs
        )
    generator.to(DEVICE)

    seed = torch.randint(0, size.num_tokens, (size.batch, size.seed_length), device=DEVICE)  # (batch, seed_length)
    condition = torch.randint(0, size.num_tokens, (size.batch, size.seq_len), device=DEVICE)  # (batch, seq_len)

    return lambda: generator.generate(size.seq_len, seed=seed, condition=condition)


# the wrapper: data step and training step


def make_wrapper(impl: str, size: Size, model: Model):
    """`impl`'s UniversalPretrainWrapper around a fresh causal TransformerWrapper, on DEVICE."""
    skip_without_triton(impl)
    if impl == REFERENCE:
        module, kwargs = reference, {}
    else:
        module, kwargs = fast, backend_kwargs(fast.UniversalPretrainWrapper, impl)

    seeded()
    transformer = TransformerWrapper(
        num_tokens=size.num_tokens,
        max_seq_len=model.max_seq_len,
        attn_layers=Decoder(dim=model.dim, depth=model.depth, heads=model.heads),
    )
    wrapper = module.UniversalPretrainWrapper(
        transformer, batch_size=size.batch, seq_len=size.seq_len, seed_length=size.seed_length, **kwargs
    )
    return wrapper.to(DEVICE)


@torch.no_grad()
def reference_data_step(wrapper: reference.UniversalPretrainWrapper) -> Tensor:
    """Everything in the reference's forward() but the transformer: returns its training batch.

    A line-for-line copy of x_transformers.up_wrapper.UniversalPretrainWrapper.forward (2.31.10) up
    to and including `data = ...`, calling the reference's own methods; only the final
    `self.ar_wrapped(data)` is left out. benchmarks/test_reference_helper.py checks that it draws,
    generates and writes exactly what forward() does. no_grad covers the reference's own
    `with torch.no_grad()` blocks; nothing here needs gradients.
    """
    self = wrapper

    conditions = self.get_rand_sequences_from_buffer()

    seeds = self.get_rand_sequences_from_buffer()

    seq_arange = torch.arange(self.seed_length)
    rand_offset = torch.randint(0, self.seq_len - self.seed_length, (self.batch_size,))
    seq_start_pos = rand_offset[:, None] + seq_arange

    batch_arange = torch.arange(self.batch_size, device=self.device)[:, None]
    seeds = seeds[batch_arange, seq_start_pos]

    generated = self.data_generator.generate(
        self.seq_len, condition=conditions.to(self.device), seed=seeds.to(self.device)
    )

    self.step.add_(1)

    if self.reset_turing_machine_every > 0 and reference.divisible_by(
        self.step.item(), self.reset_turing_machine_every
    ):
        self.data_generator.reset_()

    if self.num_reset > 0:
        buffer_to_reset = self.get_rand_sequences_from_buffer(self.num_reset)
        reset_sequences = self.random_sequences_fn(self.num_reset // 2, self.num_reset // 2, device=self.device)
        buffer_to_reset.copy_(reset_sequences)  # a copy of the rows (reference defect 1): the buffer keeps them

    conditions.copy_(generated)  # likewise

    data = self.get_rand_sequences_from_buffer().to(self.device)
    return data


def data_step_fn(impl: str, size: Size, model: Model) -> tuple[Callable[[], Tensor], object]:
    """(one data step returning the (batch, seq_len) int64 training batch, the wrapper)."""
    wrapper = make_wrapper(impl, size, model)
    if impl == REFERENCE:
        return (lambda: reference_data_step(wrapper)), wrapper
    return wrapper.data_step_, wrapper


def train_step_fn(impl: str, size: Size, model: Model, lr: float = 3e-4) -> Callable[[], None]:
    """One whole training step: forward (data step + transformer loss), backward, AdamW step."""
    wrapper = make_wrapper(impl, size, model)
    optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=lr)

    def step():
        loss = wrapper()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
