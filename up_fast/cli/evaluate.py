"""`up-fast eval`: zero-shot bits per byte on real text of the pre-trained model, an untrained one,
in-context Markov models and uniform guessing, on the same bytes, with a verdict."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from up_fast.cli.baselines import (
    BASELINE_LABELS,
    MARKOV_STRENGTH,
    baseline_bits,
    best_markov,
    versus_counting,
)
from up_fast.cli.checkpoint import load_checkpoint, load_state
from up_fast.cli.common import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIG,
    CLIError,
    HelpFormatter,
    add_device_option,
    bits_per_byte,
    build_model,
    config_summary,
    default_text_file,
    log,
    non_negative_int,
    paragraph,
    pick_device,
    positive_int,
    read_text,
)
from up_fast.helpers import default
from up_fast.windows import predicted_positions


def run(args) -> dict:
    import torch

    device = pick_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint['config']

    text_path = Path(default(args.text, default_text_file()))
    data = read_text(text_path, args.max_bytes)
    seq_len = config['seq_len']
    positions = predicted_positions(data, seq_len)
    if positions == 0:
        raise CLIError(f'{text_path} holds {len(data)} byte(s): at least 2 are needed to predict one')

    trained = build_model(config).to(device)
    load_state(trained, checkpoint['model'], args.checkpoint, checkpoint.get('version'))

    torch.manual_seed(args.seed)
    untrained = build_model(config).to(device)

    results = dict(
        pretrained=bits_per_byte(trained, data, seq_len, args.batch_size, device),
        untrained=bits_per_byte(untrained, data, seq_len, args.batch_size, device),
        **baseline_bits(data, seq_len),
    )
    best = min(results, key=results.__getitem__)
    side, margin = versus_counting(results['pretrained'], results)
    counting = best_markov(results)

    report = dict(
        checkpoint=str(args.checkpoint),
        text=str(text_path),
        bytes=len(data),
        predicted_bytes=positions,
        seq_len=seq_len,
        source=config['source'],
        steps=config['steps'],
        synthetic_tokens=int(checkpoint['wrapper']['step']) * config['batch_size'] * seq_len,
        markov_strength=MARKOV_STRENGTH,
        bits_per_byte=results,
        best=best,
        best_in_context_markov=counting,
        pretrained_vs_counting=dict(side=side, margin=margin),
    )

    if args.json:
        print(json.dumps(report, indent=2), flush=True)
        return report

    labels = dict(
        pretrained='pre-trained (synthetic data only)',
        untrained=f'untrained (same config, seed {args.seed})',
        **BASELINE_LABELS,
    )
    log(
        f'text: {text_path} ({len(data):,} bytes used, in windows of {seq_len}: {positions:,} bytes predicted, each '
        'from the bytes before it in its window)'
    )
    log(f'model: {args.checkpoint} ({config_summary(config)}, {config["steps"]} steps)')
    log('bits per byte on the same predicted bytes (lower is better):')
    for name, bits in results.items():
        mark = '   <- best' if name == best else ''
        log(f'  {labels[name]:<40} {bits:6.3f}{mark}')
    log(f'best: {labels[best]} ({results[best]:.3f} bits per byte)')

    if side == 'below':
        verdict = (
            f'the pre-trained model is below in-context counting: {margin:.2f} bits per byte better than the best '
            f'in-context Markov model ({labels[counting]}), so it predicts more than can be counted in its own context'
        )
    else:
        verdict = (
            f'the pre-trained model is above in-context counting: {margin:.2f} bits per byte worse than the best '
            f'in-context Markov model ({labels[counting]}); small models pre-trained for minutes usually are, the '
            "paper's large models are below it on real text"
        )
    log(verdict)
    return report


def add_parser(commands):
    """`up-fast eval` and its options, on the subparsers of `build_parser`."""
    c = DEFAULT_CONFIG

    e = commands.add_parser(
        'eval',
        formatter_class=HelpFormatter,
        help='bits per byte on real text: pre-trained vs untrained model vs in-context Markov models vs uniform',
        description=paragraph(
            "Report zero-shot bits per byte on a real text file: the file's bytes are cut into non-overlapping "
            "windows of the model's seq_len and every byte after the first of a window is predicted from those "
            'before it. The same bytes are scored for an untrained model of the same configuration, for uniform '
            'guessing (8 bits) and for in-context Markov models of order 0 to 3, which count which byte followed the '
            'last k bytes earlier in the same window and learn nothing beforehand. Their smoothing: P_k(x | last k '
            'bytes) = (n(context, x) + s * P_k-1(x | last k-1 bytes)) / (n(context) + s), with P_-1 uniform over the '
            f'256 bytes and s = {MARKOV_STRENGTH:g} pseudo-counts (up_fast/cli/baselines.py). A model below the best '
            'of them predicts more than can be counted in its own context; small models pre-trained for minutes '
            'usually stay above it.'
        ),
        epilog=textwrap.dedent("""\
            examples:
              up-fast eval
              up-fast eval --checkpoint /tmp/quick.pt --text README.md --max-bytes 0
              up-fast eval --json > eval.json               every figure, as one JSON object"""),
    )
    e.add_argument(
        '--checkpoint',
        metavar='PATH',
        default=DEFAULT_CHECKPOINT,
        help='checkpoint written by `up-fast pretrain` (default: %(default)s)',
    )
    e.add_argument(
        '--text',
        metavar='FILE',
        default=None,
        help=f'text file to evaluate on (default: a file that ships with Python, here {default_text_file()})',
    )
    e.add_argument(
        '--max-bytes',
        metavar='N',
        type=non_negative_int,
        default=64 * 1024,
        help='use at most this many bytes from the start of the file, 0 for all of it (default: %(default)s)',
    )
    e.add_argument(
        '--batch-size',
        type=positive_int,
        metavar='N',
        default=32,
        help='windows per forward pass (default: %(default)s)',
    )
    e.add_argument(
        '--seed',
        type=int,
        metavar='SEED',
        default=c['seed'],
        help="torch.manual_seed for the untrained model's weights (default: %(default)s)",
    )
    e.add_argument(
        '--json',
        action='store_true',
        help='print every figure as one JSON object instead of the table, for scripts (default: the table)',
    )
    add_device_option(e)
    e.set_defaults(run=run)
