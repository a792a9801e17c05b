"""The first-use check on this machine through the public path, then token parity at the example.

For each cell, a SyntheticDataGenerator with backend='auto' decides its sampling path for the
example's batch (which runs the first-use check: the check cache goes to a fresh folder, so the
check really runs), then samples with injected noise, greedy and at temperature 1, beside a
backend='torch' twin with the same weights: the tokens must be equal. The buffer kernels' check
runs too. Prints each decision's line and the parity, writes them as JSON; exits 1 if a path is not
the fused one or a token differs.

    python -m benchmarks.first_use_report --json first_use.json
    python -m benchmarks.first_use_report --tiny --device cpu     # the same machinery on a CPU, under
                                                                  # TRITON_INTERPRET=1, at tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from benchmarks.sizes import EXAMPLE

TINY = dict(batch=4, hidden=16, num_tokens=20, length=6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--tiny', action='store_true', help=f'tiny sizes and a short check: {TINY}')
    parser.add_argument('--length', type=int, default=64, help='tokens sampled for the parity (default 64)')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
        parser.error(f'--device {args.device} needs TRITON_INTERPRET=1 (the kernels run under the interpreter)')
    os.environ['UP_FAST_CACHE_DIR'] = tempfile.mkdtemp(prefix='up_fast_first_use_')
    os.environ.pop('UP_FAST_BACKEND', None)

    from up_fast import SyntheticDataGenerator
    from up_fast import backend as backend_module
    from up_fast.backend import BackendChoice
    from up_fast.kernels import first_use

    if device.type not in backend_module.AUTO_DEVICE_TYPES:
        # off CUDA 'auto' is the PyTorch path: let it check the kernels here, as it would on a GPU
        backend_module.AUTO_DEVICE_TYPES = backend_module.AUTO_DEVICE_TYPES | {device.type}
    if args.tiny:
        first_use.CHECK_PREFIX, first_use.CHECK_LENGTH = 2, 3
        batch, hidden, num_tokens, length = TINY['batch'], TINY['hidden'], TINY['num_tokens'], TINY['length']
    else:
        batch, hidden, num_tokens, length = EXAMPLE.batch, EXAMPLE.hidden, EXAMPLE.num_tokens, args.length

    report, ok = dict(device=first_use.device_name(device), torch=torch.__version__, sampling=[]), True
    for cell in ('lstm', 'gru'):
        torch.manual_seed(0)
        shape = dict(dim=hidden, num_tokens=num_tokens, max_seq_len=length, use_gru=cell == 'gru')
        auto = SyntheticDataGenerator(**shape, backend='auto').to(device)
        twin = SyntheticDataGenerator(**shape, backend='torch').to(device)
        twin.load_state_dict(auto.state_dict())
        start = time.perf_counter()
        path = auto.sampling_path(batch, device)
        decided = time.perf_counter() - start
        g = torch.Generator().manual_seed(1)
        seed = torch.randint(0, num_tokens, (batch, 4), generator=g).to(device)
        noise = torch.rand(batch, length, num_tokens, generator=g).to(device)
        parity = {}
        for temperature in (0.0, 1.0):
            fused, plain = (
                gen.generate(length, seed=seed, temperature=temperature, uniform_noise=noise) for gen in (auto, twin)
            )
            parity[str(temperature)] = int((fused != plain).sum())
        entry = dict(
            cell=cell,
            path=path.path,
            mode=path.mode,
            reason=path.reason,
            decided_s=round(decided, 3),
            tokens_differing=parity,
        )
        report['sampling'].append(entry)
        ok &= path.fused and not any(parity.values())
        print(f'{cell}: {path.path} ({path.mode}) after {decided:.1f} s; tokens differing at T=0, 1: {parity}')
        print(f'  {path.reason}')

    buffer = BackendChoice('auto').buffer_path(torch.long, device)
    report['buffer'] = dict(path=buffer.path, reason=buffer.reason)
    ok &= buffer.fused
    print(f'buffer: {buffer.path}\n  {buffer.reason}')
    report['passed'] = bool(ok)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
