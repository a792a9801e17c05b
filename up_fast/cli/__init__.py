"""The `up-fast` console script: pre-train a small byte-level transformer on synthetic data,
look at the synthetic data, and measure what the pre-training bought on real text.

    up-fast pretrain                    # a few minutes on 2 CPU cores, zero-shot bits per byte along the way
    up-fast sample                      # the synthetic data: noise, structure or collapse, step by step
    up-fast eval                        # bits per byte on real text, against in-context counting
    up-fast finetune                    # fine-tuning on real text: the pre-trained start against scratch
"""

from __future__ import annotations

import argparse
import sys

from up_fast import __version__
from up_fast.cli import evaluate, finetune, pretrain, sample
from up_fast.cli.common import CLIError, HelpFormatter
from up_fast.helpers import exists

DESCRIPTION = """\
Universal pre-training (Bloem 2025, arXiv 2506.20057) trains a transformer without any real data:
random token sequences are passed again and again through randomly initialised small recurrent
networks, and each pass adds computable structure that the transformer learns to predict. The
paper's finding is that what is learned this way transfers: the pre-trained model predicts real
text better than an untrained one, before it has seen any."""

EPILOG = """\
examples:
  up-fast pretrain                            train the default model (a few minutes on 2 CPU cores)
  up-fast pretrain --steps 2000 --dim 256     longer, wider
  up-fast sample                              statistics and rows of the buffer just trained on
  up-fast sample --fresh --plot buffer.png    watch what the generator makes of a fresh buffer, plotted
  up-fast eval                                bits per byte: trained vs untrained vs in-context counting
  up-fast eval --text README.md --max-bytes 0 --json
  up-fast finetune                            fine-tune on real text: pre-trained start vs the same model from scratch

run `up-fast COMMAND --help` for the options of each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='up-fast', description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', title='commands')

    pretrain.add_parser(commands)
    sample.add_parser(commands)
    evaluate.add_parser(commands)
    finetune.add_parser(commands)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if not exists(args.command):
        parser.print_help()
        return 2

    try:
        args.run(args)
    except CLIError as err:
        print(f'up-fast {args.command}: error: {err}', file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        # outside the training loop, which saves and exits itself; 130 is the shell's code for SIGINT
        print(f'up-fast {args.command}: interrupted', file=sys.stderr)
        raise SystemExit(130) from None
    return 0
