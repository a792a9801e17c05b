"""UniversalPretrainWrapper's constructor checks: its sizes, and whether a data generator fits the model.

Each check names the argument, the value and what is allowed (in the style of up_fast/checks.py), and
runs before the wrapper changes anything, so that a refused call leaves no state behind.
"""

from __future__ import annotations

from torch import nn
from torch.nn import Module

from up_fast.checks import check_int, check_seq_len
from up_fast.helpers import default, divisible_by, exists


def model_num_tokens(module: Module) -> int | None:
    """A module's vocabulary: its num_tokens, else its embedding's rows; None when it has neither."""
    num_tokens = getattr(module, 'num_tokens', None)
    if exists(num_tokens):
        return num_tokens
    embed = getattr(module, 'embed', None)
    return embed.num_embeddings if isinstance(embed, nn.Embedding) else None


def check_wrapper_sizes(model, batch_size, seq_len, seed_length, buffer_size, generation_batch_size, num_reset):
    """-> (batch_size, seq_len, seed_length, buffer_size, generation_batch_size, num_reset), checked,
    with buffer_size and generation_batch_size defaulted."""
    batch_size = check_int('batch_size', batch_size, low=1)
    seq_len = check_int('seq_len', seq_len, low=2)
    seq_len = check_seq_len(seq_len, model)
    seed_length = check_int(
        'seed_length', seed_length, low=1, high=seq_len - 1, allowed=f'an int in (0, seq_len={seq_len})'
    )
    buffer_size = check_int(
        'buffer_size',
        default(buffer_size, batch_size * 20),
        low=batch_size + 1,
        allowed=f'an int > batch_size ({batch_size})',
    )
    generation_batch_size = check_int(
        'generation_batch_size',
        default(generation_batch_size, batch_size),
        low=1,
        high=buffer_size,
        allowed=f'an int in [1, buffer_size = {buffer_size}]',
    )
    num_reset = check_int(
        'num_reset', num_reset, low=0, high=buffer_size, allowed=f'an even int in [0, buffer_size = {buffer_size}]'
    )
    if not divisible_by(num_reset, 2):
        raise ValueError(
            f'num_reset must be even (half the reset rows are uniform noise, half constant), got {num_reset}'
        )
    return batch_size, seq_len, seed_length, buffer_size, generation_batch_size, num_reset


def check_generator_fits(
    data_generator: Module,
    *,
    num_tokens: int,
    seq_len: int,
    reset_turing_machine_every: int,
    backend: str,
    backend_given: bool,
    default_data_generator: bool,
):
    """The data generator must share the model's vocabulary and seq_len, have reset_() when it is to be
    re-drawn, and keep its own backend. -> the generator's backend attribute (None when it has none)."""
    generator_num_tokens = model_num_tokens(data_generator)
    if exists(generator_num_tokens) and generator_num_tokens != num_tokens:
        raise ValueError(
            f"data_generator must have the model's vocabulary of {num_tokens} tokens, got {generator_num_tokens}"
        )
    if reset_turing_machine_every > 0 and not callable(getattr(data_generator, 'reset_', None)):
        raise ValueError(
            f'reset_turing_machine_every={reset_turing_machine_every} re-draws the generator with reset_(), '
            f'which data_generator of type {type(data_generator).__name__} lacks; '
            'pass 0 or a generator with reset_()'
        )
    generator_max_seq_len = getattr(data_generator, 'max_seq_len', None)
    if exists(generator_max_seq_len) and generator_max_seq_len != seq_len:
        raise ValueError(
            f'data_generator.max_seq_len must equal seq_len ({seq_len}) so generated rows fit the buffer, '
            f'got {generator_max_seq_len}'
        )
    generator_backend = getattr(data_generator, 'backend', None)
    if backend_given and not default_data_generator and generator_backend != backend:
        # a user's generator is never changed: its backend is its constructor's
        has = f'backend {generator_backend!r}' if isinstance(generator_backend, str) else 'no backend of its own'
        raise ValueError(
            f"backend={backend!r} chooses the default data generator's backend, but data_generator was given "
            f'(a {type(data_generator).__name__} with {has}), and the wrapper does not change it: '
            f'construct it with backend={backend!r}, or leave backend= out'
        )
    return generator_backend
