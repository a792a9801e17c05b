"""The sizes each workload runs at.

With CUDA every size is the real one: the README's example (batch 32, dim 256, vocab 256,
seq_len 512), a large vocabulary (32768), a large hidden size (1024) and a saturating batch
(4096, generate only). On a CPU (the 2-core CI machine) the large sizes and the training step are
scaled down so that `pytest benchmarks --benchmark-only` stays within about ten minutes; each such
variant carries a `cpu_note` that says what differs, and its label shows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmarks.harness import ON_CUDA


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    hidden: int  # the generator's dim, and so its hidden size: the reference crashes when they differ
    num_tokens: int
    seq_len: int  # tokens generated per row (and the buffer's row length)
    rounds: int  # timed rounds
    seed_length: int = 8
    cpu_note: str = ''  # how this CPU variant differs from the GPU size; '' when it does not
    sweep: str = ''  # 'batch' or 'hidden': a point of the report's speedup plot

    @property
    def label(self) -> str:
        return f'{self.name} (CPU: {self.cpu_note})' if self.cpu_note else self.name

    @property
    def id(self) -> str:
        return f'{self.name}-cpu' if self.cpu_note else self.name

    def config(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Model:
    """The transformer of the training step (x_transformers TransformerWrapper + Decoder)."""

    dim: int
    depth: int
    heads: int
    max_seq_len: int

    def config(self) -> dict:
        return asdict(self)


def data_only_model(size: Size) -> Model:
    # the data step never runs the transformer: one layer, as wide as the generator (the wrappers
    # size their default generator from the model's dim)
    return Model(dim=size.hidden, depth=1, heads=max(1, size.hidden // 64), max_seq_len=size.seq_len)


EXAMPLE = Size('example', batch=32, hidden=256, num_tokens=256, seq_len=512, rounds=20 if ON_CUDA else 7)
EXAMPLE_MODEL = Model(dim=256, depth=6, heads=8, max_seq_len=512)

if ON_CUDA:
    LARGE_VOCAB = Size('large-vocab', batch=32, hidden=256, num_tokens=32768, seq_len=512, rounds=10)
    LARGE_HIDDEN = Size('large-hidden', batch=32, hidden=1024, num_tokens=256, seq_len=512, rounds=10)
    SATURATING_BATCH = Size('saturating-batch', batch=4096, hidden=256, num_tokens=256, seq_len=512, rounds=5)

    SWEEP_BATCHES, SWEEP_HIDDENS = (1, 32, 256, 4096), (64, 256, 1024)
    SWEEP_SEQ_LEN, SWEEP_ROUNDS = 512, 10

    TRAIN = EXAMPLE
    TRAIN_MODEL = EXAMPLE_MODEL
else:
    LARGE_VOCAB = Size(
        'large-vocab', batch=32, hidden=256, num_tokens=32768, seq_len=64, rounds=3, cpu_note='seq_len 64'
    )
    LARGE_HIDDEN = Size(
        'large-hidden', batch=32, hidden=1024, num_tokens=256, seq_len=128, rounds=5, cpu_note='seq_len 128'
    )
    SATURATING_BATCH = Size(
        'saturating-batch',
        batch=512,
        hidden=256,
        num_tokens=256,
        seq_len=128,
        rounds=5,
        cpu_note='batch 512, seq_len 128',
    )

    SWEEP_BATCHES, SWEEP_HIDDENS = (1, 8, 32, 128), (64, 128, 256)
    SWEEP_SEQ_LEN, SWEEP_ROUNDS = 128, 7

    # the example model trains at about 20 s a step on 2 cores: a shallower, shorter one instead
    TRAIN = Size(
        'example', batch=8, hidden=256, num_tokens=256, seq_len=256, rounds=5, cpu_note='depth 2, batch 8, seq_len 256'
    )
    TRAIN_MODEL = Model(dim=256, depth=2, heads=8, max_seq_len=256)


def sweep_note(**changed) -> str:
    return ', '.join(f'{k} {v}' for k, v in changed.items())


BATCH_SWEEP = [
    Size(
        f'batch-{batch}',
        batch=batch,
        hidden=256,
        num_tokens=256,
        seq_len=SWEEP_SEQ_LEN,
        rounds=SWEEP_ROUNDS,
        cpu_note='' if ON_CUDA else sweep_note(seq_len=SWEEP_SEQ_LEN),
        sweep='batch',
    )
    for batch in SWEEP_BATCHES
]

HIDDEN_SWEEP = [
    Size(
        f'hidden-{hidden}',
        batch=32,
        hidden=hidden,
        num_tokens=256,
        seq_len=SWEEP_SEQ_LEN,
        rounds=SWEEP_ROUNDS,
        cpu_note='' if ON_CUDA else sweep_note(seq_len=SWEEP_SEQ_LEN),
        sweep='hidden',
    )
    for hidden in SWEEP_HIDDENS
]

GENERATE_SIZES = [EXAMPLE, LARGE_VOCAB, LARGE_HIDDEN, SATURATING_BATCH, *BATCH_SWEEP, *HIDDEN_SWEEP]
DATA_STEP_SIZES = [EXAMPLE, LARGE_VOCAB, LARGE_HIDDEN]
MEMORY_SIZE = EXAMPLE
