"""Zero-shot evaluation during `up-fast pretrain`: bits per byte on real text every few steps, its CSV and plot."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast.cli.baselines import (
    BASELINE_LABELS,
    baseline_bits,
    best_markov,
    finish_bits_plot,
    versus_counting,
)
from up_fast.cli.common import (
    CLIError,
    bits_per_byte,
    config_summary,
    default_text_file,
    log,
    read_text,
)
from up_fast.helpers import default, exists
from up_fast.windows import predicted_positions

if TYPE_CHECKING:
    import torch
    from x_transformers import TransformerWrapper


EVAL_EVERY = 100  # pretrain: steps between zero-shot evaluations
EVAL_BYTES = 16 * 1024  # pretrain: bytes of the eval text used, so that an evaluation stays cheap


def eval_files(out: Path) -> tuple[Path, Path]:
    """The CSV and the PNG of the zero-shot evaluations, beside the checkpoint."""
    return out.with_suffix('.eval.csv'), out.with_suffix('.eval.png')


EVAL_COLUMNS = ('step', 'synthetic_tokens', 'bits_per_byte', 'train_loss')


def write_eval_csv(path: Path, history: list[dict], baselines: dict[str, float]):
    """One row per evaluation; the baselines, constant over the run, as columns of every row."""
    with open(path, 'w', newline='') as file:
        writer = csv.writer(file)
        writer.writerow([*EVAL_COLUMNS, *baselines])
        for record in history:
            loss = record['train_loss']
            writer.writerow(
                [
                    record['step'],
                    record['synthetic_tokens'],
                    f'{record["bits_per_byte"]:.6f}',
                    '' if loss is None else f'{loss:.6f}',
                    *(f'{bits:.6f}' for bits in baselines.values()),
                ]
            )


def plot_eval(path: Path, history: list[dict], baselines: dict[str, float], title: str) -> bool:
    """Bits per byte against synthetic tokens seen, the baselines as horizontal lines. False when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    figure, axes = plt.subplots(figsize=(8, 5))
    tokens = [record['synthetic_tokens'] for record in history]
    axes.plot(
        tokens,
        [record['bits_per_byte'] for record in history],
        marker='o',
        color='black',
        label='model (step 0: untrained)',
    )
    return finish_bits_plot(
        plt, figure, axes, baselines, 'synthetic tokens seen', 'bits per byte (lower is better)', title, path
    )


class ZeroShotEval:
    """Zero-shot bits per byte of the model on a bounded piece of real text, at intervals during
    pre-training, with the in-context baselines for scale. Reads nothing from the training stream:
    a run with evaluations trains exactly as one without."""

    def __init__(self, config: dict, history: list[dict], device: torch.device):
        self.every = config['eval_every']
        self.path = Path(default(config['eval_text'], default_text_file()))
        self.data = read_text(self.path, config['eval_bytes'])
        self.seq_len = config['seq_len']
        self.tokens_per_step = config['batch_size'] * config['seq_len']
        self.device = device
        self.history = history
        if predicted_positions(self.data, self.seq_len) == 0:
            raise CLIError(
                f'--eval-text {self.path} holds {len(self.data)} byte(s): too few to predict any in windows of '
                f'{self.seq_len}'
            )
        self.baselines = baseline_bits(self.data, self.seq_len)
        self.seconds = 0.0

    def due(self, step: int, steps: int) -> bool:
        return step == 0 or step % self.every == 0 or step == steps

    def __call__(self, model: TransformerWrapper, step: int, train_loss: float | None) -> str:
        start = time.perf_counter()
        bits = bits_per_byte(model, self.data, self.seq_len, 32, self.device)
        self.seconds += time.perf_counter() - start

        self.history[:] = [
            record for record in self.history if record['step'] < step
        ]  # a resumed run may repeat a step
        self.history.append(
            dict(step=step, synthetic_tokens=step * self.tokens_per_step, bits_per_byte=bits, train_loss=train_loss)
        )

        side, margin = versus_counting(bits, self.baselines)
        best = best_markov(self.baselines)
        loss = f', train loss {train_loss:.3f}' if exists(train_loss) else ' (untrained)'
        return (
            f'step {step}: {bits:.3f} bits/byte zero-shot on {self.path.name}{loss}; {margin:.2f} {side} the best '
            f'in-context Markov model ({BASELINE_LABELS[best]}: {self.baselines[best]:.3f})'
        )

    def save(self, out: Path, title: str) -> list[str]:
        csv_path, png_path = eval_files(out)
        write_eval_csv(csv_path, self.history, self.baselines)
        if plot_eval(png_path, self.history, self.baselines, title):
            return [f'zero-shot evaluations: {csv_path}, plotted in {png_path}']
        return [
            f'zero-shot evaluations: {csv_path} (matplotlib is missing: pip install "up-fast[cli]" for the PNG plot as '
            'well)'
        ]


def write_evaluations(zero_shot: ZeroShotEval | None, out: Path, config: dict):
    if exists(zero_shot):
        for line in zero_shot.save(
            out, f'zero-shot bits per byte on {zero_shot.path.name} during pre-training\n{config_summary(config)}'
        ):
            log(line)
