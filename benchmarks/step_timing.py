"""The time of one sampling step of the fused kernel: a launch of length 1 against one of length 512 at the same prefix.

    python -m benchmarks.step_timing                       # the example: LSTM, batch 32, hidden 256, vocab 256
    python -m benchmarks.step_timing --cell gru --batch 4096 --json step.json

Both launches pay the same launch overhead and the same prefix feeds, so (t(512) - t(1)) / 511 is
the time of a sampling step alone (one feed, one logits phase, two grid barriers). CUDA events,
the median of `--repeat` launches after `--warmup`. Needs a GPU (exit status 2 without one);
`--device cpu` under TRITON_INTERPRET=1 runs the same code at tiny sizes (wall-clock times of the
interpreter, which say nothing of a GPU: a rehearsal of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch


def time_launch(sample, repeat: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of `sample()` over `repeat` launches."""
    for _ in range(warmup):
        sample()
    times = []
    for _ in range(repeat):
        if device.type != 'cuda':
            tick = time.perf_counter()
            sample()
            times.append((time.perf_counter() - tick) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        sample()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cell', choices=('lstm', 'gru'), default='lstm')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--num-tokens', type=int, default=256)
    parser.add_argument('--prefix', type=int, default=16, help='prefix tokens fed before sampling')
    parser.add_argument('--length', type=int, default=512, help='the long launch (the short one samples 1)')
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--json', default=None, help='also write the figures here')
    parser.add_argument('--device', default='cuda', help="'cuda', or 'cpu' under TRITON_INTERPRET=1 (a rehearsal)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('no CUDA device: the per-step timing needs a GPU (--device cpu rehearses it)', file=sys.stderr)
        return 2
    if device.type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
        parser.error(f'--device {args.device} needs TRITON_INTERPRET=1 (the kernel runs under the interpreter)')

    from up_fast.kernels.launch_plan import num_sms
    from up_fast.kernels.recurrent_sample import check_kernel_errors, fused_recurrent_sample, plan_launch
    from up_fast.sampling import FoldedRecurrentNet

    torch.manual_seed(0)
    gates = 4 if args.cell == 'lstm' else 3
    h, v = args.hidden, args.num_tokens
    weight = lambda *shape: torch.randn(*shape, device=device) / h**0.5
    folded = FoldedRecurrentNet(
        args.cell,
        weight(v, gates * h),
        weight(gates * h, h),
        None if args.cell == 'lstm' else weight(h),
        weight(v, h),
        None,
    )
    prefix = torch.randint(0, v, (args.batch, args.prefix), device=device)
    figures = {}
    for length in (1, args.length):
        sample = lambda length=length: fused_recurrent_sample(folded, prefix, length, 1.0, check=False)
        figures[f'ms_length_{length}'] = time_launch(sample, args.repeat, args.warmup, device)
    check_kernel_errors(device)  # every timed launch met at its barriers
    step_us = (figures[f'ms_length_{args.length}'] - figures['ms_length_1']) * 1e3 / (args.length - 1)
    plan = plan_launch(args.batch, h, v, num_sms(device))
    figures.update(
        vars(args),
        us_per_sampling_step=round(step_us, 3),
        plan=str(plan),
        device=torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{device} (Triton interpreter)',
    )
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
