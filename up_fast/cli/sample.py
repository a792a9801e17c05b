"""`up-fast sample`: the synthetic data as text, with statistics of the buffer's rows step by step
that tell noise, structure and collapse apart, and a plot of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from up_fast.cli.checkpoint import check_writable, load_checkpoint, load_state
from up_fast.cli.common import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIG,
    SOURCES,
    CLIError,
    HelpFormatter,
    add_device_option,
    build,
    config_summary,
    log,
    non_negative_int,
    paragraph,
    pick_device,
    positive_int,
)
from up_fast.cli.row_stats import SHORT_PERIOD, BufferStats, buffer_stats, zlib_ratio
from up_fast.helpers import default, exists

if TYPE_CHECKING:
    from torch import Tensor

SAMPLE_STEPS = 100


def escape_byte(byte: int) -> str:
    char = chr(byte)
    if char == '\\':
        return '\\\\'
    if 0x20 <= byte < 0x7F:
        return char
    return {'\n': '\\n', '\t': '\\t', '\r': '\\r'}.get(char, f'\\x{byte:02x}')


def show_bytes(row: Tensor, width: int) -> str:
    """A row of byte ids as printable text at most `width` characters wide, unprintables escaped.
    A row cut short ends in '...' and never in half an escape."""
    pieces = [escape_byte(byte) for byte in row.tolist()]
    if sum(map(len, pieces)) <= width:
        return ''.join(pieces)

    text = ''
    for piece in pieces:
        if len(text) + len(piece) > width - 3:
            break
        text += piece
    return text + '...'


def show_rows(title: str, buffer: Tensor, rows: list[int], width: int):
    log(title)
    for index in rows:
        log(f'  row {index:4d}  zlib {zlib_ratio(buffer[index]):.2f}  |{show_bytes(buffer[index], width)}|')


STATS_HEADER = ' step   zlib q1 / median / q3   constant   periodic    cycling   distinct q1 / median / q3'


def stats_line(step: int, stats: BufferStats) -> str:
    zlib_q, distinct_q = stats.zlib, stats.distinct
    return (
        f'{step:5d}   {zlib_q[0]:5.2f} / {zlib_q[1]:5.2f} / {zlib_q[2]:5.2f}   {stats.constant:8.1%}   '
        f'{stats.periodic:8.1%}   {stats.cycling:8.1%}   {distinct_q[0]:6.1f} / {distinct_q[1]:6.1f} / '
        f'{distinct_q[2]:6.1f}'
    )


def plot_stats(path: Path, steps: list[int], stats: list[BufferStats], title: str) -> bool:
    """The buffer statistics over data steps, three panels. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    figure, (ratio_axes, share_axes, distinct_axes) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)

    for axes, field, label in (
        (ratio_axes, 'zlib', 'zlib ratio per row'),
        (distinct_axes, 'distinct', 'distinct tokens per row'),
    ):
        q1, median, q3 = zip(*(getattr(s, field) for s in stats))
        axes.fill_between(steps, q1, q3, alpha=0.3, label='quartiles 1 to 3')
        axes.plot(steps, median, label='median')
        axes.set_ylabel(label)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)

    for field in ('constant', 'periodic', 'cycling'):
        share_axes.plot(steps, [100 * getattr(s, field) for s in stats], label=f'{field} rows')
    share_axes.set_ylabel('% of buffer rows')
    share_axes.legend(fontsize=8)
    share_axes.grid(alpha=0.3)

    distinct_axes.set_xlabel('data step')
    ratio_axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def run(args):
    import torch

    if args.fresh and exists(args.checkpoint):
        raise CLIError(
            '--fresh and --checkpoint exclude each other: --fresh samples from a new wrapper, --checkpoint from a '
            'saved run'
        )
    if exists(args.source) and exists(args.checkpoint):
        raise CLIError('--source applies to a fresh wrapper: a checkpoint keeps the source of its run')

    # after `up-fast pretrain`, its checkpoint, unless told otherwise
    checkpoint_path = args.checkpoint
    if (
        not exists(checkpoint_path)
        and not args.fresh
        and not exists(args.source)
        and Path(DEFAULT_CHECKPOINT).is_file()
    ):
        checkpoint_path = DEFAULT_CHECKPOINT

    device = pick_device(args.device)
    plot_path = Path(args.plot) if exists(args.plot) else None
    if exists(plot_path) and plot_path.is_dir():
        raise CLIError(f'--plot {plot_path} is a directory: give the PNG file to write')
    if exists(plot_path):
        check_writable(plot_path, 'the plot', '--plot')

    if exists(checkpoint_path):
        checkpoint = load_checkpoint(checkpoint_path)
        # the run's own data stream continues, unless --seed asks for another
        config = {**checkpoint['config'], 'seed': default(args.seed, checkpoint['config']['seed'])}
        torch.manual_seed(config['seed'])
        wrapper = build(config, device)
        load_state(wrapper, checkpoint['wrapper'], checkpoint_path, checkpoint.get('version'))
        steps = default(args.steps, 0)
        found = (
            ', found at the default path: pass --fresh to sample from a new wrapper instead'
            if not exists(args.checkpoint)
            else ''
        )
        origin = f'checkpoint {checkpoint_path} (written by `up-fast pretrain`{found})'
    else:
        config = {
            **DEFAULT_CONFIG,
            'seed': default(args.seed, DEFAULT_CONFIG['seed']),
            'source': default(args.source, DEFAULT_CONFIG['source']),
        }
        torch.manual_seed(config['seed'])
        wrapper = build(config, device)
        steps = default(args.steps, SAMPLE_STEPS)
        origin = f'a fresh wrapper with the default configuration, seed {config["seed"]}'

    buffer_size, seq_len = wrapper.synth_data_buffer.shape
    start_step = int(wrapper.step)
    num_rows = min(args.rows, buffer_size)
    every = default(args.every, max(1, steps // 10))

    log(f'{origin}')
    log(f'{config_summary(config)}: buffer of {buffer_size} rows x {seq_len} bytes')
    log(
        'per row: zlib = compressed / raw size (about 1.1 for noise, under 0.2 for a constant row, structure in '
        'between)\n'
        '         constant = one byte repeated; periodic = row[i] == row[i + p] for all i, for some 1 < p <= '
        f'{args.max_period}\n'
        f'         cycling = neither, but the second half of the row is periodic (p <= {args.max_period}); distinct = '
        'distinct bytes in the row'
    )

    before = wrapper.synth_data_buffer.cpu().clone()  # (buffer_size, seq_len) uint8
    stats_steps, stats = [start_step], [buffer_stats(before, args.max_period)]
    log(STATS_HEADER)
    log(stats_line(start_step, stats[0]))

    for index in range(1, steps + 1):
        wrapper.data_step_()
        stats_steps.append(start_step + index)
        stats.append(buffer_stats(wrapper.synth_data_buffer, args.max_period))
        if index % every == 0 or index == steps:
            log(stats_line(start_step + index, stats[-1]))

    if steps == 0:
        show_rows(f'step {start_step}, the first {num_rows} rows', before, list(range(num_rows)), args.width)
    else:
        # the rows the generator wrote in the last step (the reset rows hold fresh noise instead)
        after = wrapper.synth_data_buffer.cpu()
        rows = wrapper.last_step_rows.condition_rows[:num_rows].tolist()
        show_rows(f'step {start_step}', before, rows, args.width)
        show_rows(
            f'step {start_step + steps}, the same rows, written by the generator in the last step',
            after,
            rows,
            args.width,
        )

    if exists(plot_path):
        if plot_stats(
            plot_path, stats_steps, stats, f'buffer statistics, {origin.split(" (")[0]}\n{config_summary(config)}'
        ):
            log(f'plot of the statistics over steps: {plot_path}')
        else:
            log('no plot: matplotlib is missing (pip install "up-fast[cli]")')
    return stats_steps, stats


def add_parser(commands):
    """`up-fast sample` and its options, on the subparsers of `build_parser`."""
    c = DEFAULT_CONFIG

    s = commands.add_parser(
        'sample',
        formatter_class=HelpFormatter,
        help='show synthetic sequences from the buffer as text, with statistics per step',
        description=paragraph(
            "Show what the synthetic data looks like: statistics of the buffer's rows every few data steps, which "
            'tell noise, structure and collapse apart (quartiles of the per-row zlib compression ratio, the share of '
            'constant, periodic and cycling rows, quartiles of distinct bytes per row), then rows of the buffer as '
            'text (bytes outside printable ASCII are escaped: a newline shows as \\n, byte 0 as \\x00). After '
            f'`up-fast pretrain` this is the buffer of its checkpoint ({DEFAULT_CHECKPOINT}) as saved; otherwise, or '
            'with --fresh, a new wrapper with the default configuration, run for --steps data steps so that you can '
            'see what the generator makes of it (the paper source starts from constant rows, the xt source from half '
            'noise, half constant rows).'
        ),
        epilog=(
            'examples:\n'
            '  up-fast sample                                the checkpoint of `up-fast pretrain` if there is one, '
            'else a fresh wrapper\n'
            '  up-fast sample --fresh --steps 500 --every 50 --plot buffer.png\n'
            '  up-fast sample --fresh --seed 3               another fresh buffer and data stream\n'
            "  up-fast sample --source xt --steps 300        x-transformers' generator and buffer algorithm instead "
            "of the paper's\n"
            f'  up-fast sample --checkpoint {DEFAULT_CHECKPOINT} --steps 20 --rows 12'
        ),
    )
    s.add_argument(
        '--checkpoint',
        metavar='PATH',
        default=None,
        help=(
            f'the buffer saved by `up-fast pretrain` (default: {DEFAULT_CHECKPOINT} if it exists, else a fresh wrapper)'
        ),
    )
    s.add_argument(
        '--fresh',
        action='store_true',
        help=f'a fresh wrapper with the default configuration, even if {DEFAULT_CHECKPOINT} exists',
    )
    s.add_argument(
        '--source',
        choices=SOURCES,
        default=None,
        help=f'the synthetic data of a fresh wrapper, as for `up-fast pretrain` (default: {c["source"]})',
    )
    s.add_argument(
        '--steps',
        type=non_negative_int,
        metavar='N',
        default=None,
        help=(
            f'data steps to run, with statistics along the way (default: {SAMPLE_STEPS} for a fresh wrapper, 0 with a '
            'checkpoint)'
        ),
    )
    s.add_argument(
        '--every',
        type=positive_int,
        metavar='N',
        default=None,
        help='print the statistics every N steps (default: a tenth of --steps)',
    )
    s.add_argument(
        '--max-period',
        type=positive_int,
        metavar='P',
        default=SHORT_PERIOD,
        help='the longest period counted as short for the periodic and cycling rows (default: %(default)s)',
    )
    s.add_argument(
        '--plot',
        metavar='PATH',
        default=None,
        help='draw the statistics at every step into this PNG (needs matplotlib; default: no plot)',
    )
    s.add_argument(
        '--rows', metavar='K', type=positive_int, default=8, help='how many buffer rows to show (default: %(default)s)'
    )
    s.add_argument(
        '--width',
        metavar='N',
        type=positive_int,
        default=96,
        help='characters of each row to show (default: %(default)s)',
    )
    s.add_argument(
        '--seed',
        type=int,
        metavar='SEED',
        default=None,
        help=(
            'seeds the fresh wrapper and its data steps; with a checkpoint, the data steps draw from this seed '
            f"instead of continuing the run's own stream (default: {c['seed']} for a fresh wrapper, the run's own with "
            'a checkpoint)'
        ),
    )
    add_device_option(s)
    s.set_defaults(run=run)
