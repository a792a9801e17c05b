"""NVTX ranges around the phases of a training step, for Nsight Systems and Nsight Compute.

Off by default, and then a no-op context (a few hundred nanoseconds a phase). Switch them on with
the wrapper's `nvtx=True` or the environment variable UP_FAST_NVTX=1. Without CUDA the ranges are
torch.profiler record_function ranges, so they show in torch.profiler traces instead.

The profiling entry: run a warm-up and N training (or data-only) steps of a chosen configuration, for Nsight.

    python -m up_fast.profiling --steps 20
    nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi -o up_fast python -m up_fast.profiling --steps 20
    ncu --nvtx --nvtx-include "up_fast/generate/" --set full -o generate python -m up_fast.profiling \
--data-only --steps 1 --backend triton

NVTX ranges mark each phase of a step (index draw, gather, generate, write-back and reset,
training-batch gather, transformer); on CUDA only the measured steps sit between
cudaProfilerStart and cudaProfilerStop, so `--capture-range=cudaProfilerApi` skips the warm-up.

Without Nsight (on a CPU, say), `--ops N` runs the measured steps once more under torch.profiler
and prints the N operators with the most self time, so a user sees where a step goes:

    python -m up_fast.profiling --data-only --steps 5 --ops 15
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from up_fast.cpu_step import native_status

PHASES = ('index draw', 'gather', 'generate', 'write-back and reset', 'training-batch gather', 'transformer')


def phase(name: str, enabled: bool):
    """A profiler range named `up_fast/<name>` when enabled, else a no-op context."""
    if not enabled:
        return nullcontext()
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(f'up_fast/{name}')
    return torch.profiler.record_function(f'up_fast/{name}')


# the profiling entry: python -m up_fast.profiling
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m up_fast.profiling', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add('--steps', type=int, default=10, help='measured steps (default: %(default)s)')
    add(
        '--warmup',
        type=int,
        default=3,
        help='steps before the measurement: allocation, compilation, autotuning (default: %(default)s)',
    )
    add('--batch-size', type=int, default=32, help='sequences per step (default: %(default)s)')
    add('--seq-len', type=int, default=512, help='tokens per sequence (default: %(default)s)')
    add('--seed-length', type=int, default=8, help='seed tokens cropped from the buffer (default: %(default)s)')
    add('--num-tokens', type=int, default=256, help='vocabulary size (default: %(default)s)')
    add(
        '--dim',
        type=int,
        default=256,
        help="transformer width, and the generator's embedding width (default: %(default)s)",
    )
    add('--hidden', type=int, default=None, help='generator hidden size (default: --dim)')
    add('--depth', type=int, default=6, help='transformer layers (default: %(default)s)')
    add('--heads', type=int, default=8, help='attention heads (default: %(default)s)')
    add('--gru', action='store_true', help='a GRU generator instead of an LSTM')
    add(
        '--data-only',
        action='store_true',
        help='profile the data part of a step only (no transformer forward/backward)',
    )
    add('--device', default=None, help='cuda or cpu (default: cuda when available)')
    add(
        '--backend',
        default=None,
        choices=('auto', 'triton', 'torch'),
        help='which path samples (default: UP_FAST_BACKEND, else auto)',
    )
    add(
        '--ops',
        type=int,
        default=0,
        metavar='N',
        help=(
            'then run the measured steps again under torch.profiler and print the N operators with the most self time '
            '(default: off)'
        ),
    )
    args = parser.parse_args(argv)
    for name in ('steps', 'batch_size', 'seq_len', 'num_tokens', 'dim', 'depth', 'heads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('warmup', 'ops'):
        if getattr(args, name) < 0:
            parser.error(f'--{name} must be >= 0, got {getattr(args, name)}')
    return args


def main(argv=None):
    # imported here: the training step imports this module for its ranges
    from x_transformers import Decoder, TransformerWrapper

    from up_fast import SyntheticDataGenerator, UniversalPretrainWrapper

    args = parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cuda = device.type == 'cuda'
    torch.manual_seed(0)

    model = TransformerWrapper(
        num_tokens=args.num_tokens,
        max_seq_len=args.seq_len,
        attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads),
    )
    generator = SyntheticDataGenerator(
        dim=args.dim,
        num_tokens=args.num_tokens,
        max_seq_len=args.seq_len,
        hidden_size=args.hidden,
        use_gru=args.gru,
        backend=args.backend,
    )
    wrapper = UniversalPretrainWrapper(
        model,
        data_generator=generator,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed_length=args.seed_length,
        nvtx=True,
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if args.data_only:
            wrapper.data_step_()
            return
        loss = wrapper()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    for _ in range(args.warmup):
        step()
    sync()

    if cuda:
        torch.cuda.cudart().cudaProfilerStart()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    if cuda:
        torch.cuda.cudart().cudaProfilerStop()

    what = 'data steps' if args.data_only else 'training steps'
    tokens = args.steps * args.batch_size * args.seq_len
    print(
        f'{args.steps} {what} on {device} ({generator.backend} backend): {elapsed / args.steps * 1e3:.2f} ms a step, '
        f'{tokens / elapsed:,.0f} synthetic tokens/s'
    )
    if not cuda:  # the native step is one call, invisible to torch.profiler: say whether it ran
        print(f"the LSTM's native CPU step (up_fast/cpu_step.py; UP_FAST_NATIVE=0 turns it off): {native_status()}")

    if args.ops:
        # a separate pass: the profiler's own overhead must not enter the timing above
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            sync()
        sort_by = 'self_device_time_total' if cuda else 'self_cpu_time_total'
        print(
            f'\nthe {args.ops} operators with the most self time over {args.steps} more {what} (torch.profiler, which '
            'adds its own overhead):'
        )
        print(prof.key_averages().table(sort_by=sort_by, row_limit=args.ops))


if __name__ == '__main__':
    main()
