"""Universal pre-training on several processes with torch.distributed (DDP or FSDP).

    torchrun --nproc-per-node 2 -m up_fast.distributed_example --steps 50
    torchrun --nproc-per-node 8 -m up_fast.distributed_example --fsdp --dim 512 --depth 8

Every rank builds the same transformer (one torch seed), and its own data stream: the wrapper's
`rng_seed` is mixed with the rank, so the buffers, the Turing machines and all draws differ per rank
while the whole run follows from `--seed`. DDP all-reduces the transformer's gradients only: the
wrapper freezes the generator and tells DDP to leave the generator and the buffer alone.
On GPUs the backend is NCCL (one GPU per rank); without, gloo on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from x_transformers import Decoder, TransformerWrapper

from up_fast import UniversalPretrainWrapper


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='torchrun --nproc-per-node N -m up_fast.distributed_example',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--steps', type=int, default=50, help='training steps (default: %(default)s)')
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help="one seed for the whole run: model init and every rank's data stream (default: %(default)s)",
    )
    parser.add_argument('--dim', type=int, default=64, help='transformer and generator width (default: %(default)s)')
    parser.add_argument('--depth', type=int, default=2, help='transformer layers (default: %(default)s)')
    parser.add_argument('--heads', type=int, default=4, help='attention heads (default: %(default)s)')
    parser.add_argument('--seq-len', type=int, default=64, help='tokens per synthetic sequence (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=8, help='sequences per rank and step (default: %(default)s)')
    parser.add_argument('--lr', type=float, default=3e-3, help='AdamW learning rate (default: %(default)s)')
    parser.add_argument(
        '--fsdp', action='store_true', help='shard the transformer with FSDP (fully_shard) instead of DDP'
    )
    parser.add_argument(
        '--report',
        type=Path,
        default=None,
        help="folder to write each rank's losses, buffer and weights to (for tests)",
    )
    args = parser.parse_args(argv)
    for name in ('steps', 'dim', 'depth', 'heads', 'seq_len', 'batch_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    return args


def main(argv=None):
    args = parse_args(argv)

    use_cuda = torch.cuda.is_available()
    dist.init_process_group('nccl' if use_cuda else 'gloo')
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(args.seed)  # the same transformer on every rank
    model = TransformerWrapper(
        num_tokens=256,
        max_seq_len=args.seq_len,
        attn_layers=Decoder(dim=args.dim, depth=args.depth, heads=args.heads),
    )

    # rng_seed + the rank (the wrapper reads it from torch.distributed): a data stream per rank
    wrapper = UniversalPretrainWrapper(
        model,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed_length=min(8, args.seq_len - 1),
        num_reset=2 * max(1, args.batch_size // 4),
        rng_seed=args.seed,
    ).to(device)

    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for _, block, _ in model.attn_layers.layers:  # x-transformers: (norms, block, residual)
            fully_shard(block)
        fully_shard(model)
        trainer = wrapper
    else:
        trainer = DistributedDataParallel(wrapper, device_ids=[local_rank] if use_cuda else None)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    losses = []
    for step in range(args.steps):
        loss = trainer()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f'step {step:4d}  loss {losses[-1]:.4f}  ({world_size} ranks)', flush=True)

    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        weights = {name: p.full_tensor() if hasattr(p, 'full_tensor') else p for name, p in model.state_dict().items()}
        torch.save(
            dict(
                losses=losses,
                buffer=wrapper.synth_data_buffer.cpu(),
                generator=wrapper.data_generator.state_dict(),
                model={name: t.detach().cpu() for name, t in weights.items()},
            ),
            args.report / f'rank{rank}.pt',
        )
        (args.report / f'rank{rank}.json').write_text(json.dumps(dict(rank=rank, world_size=world_size, losses=losses)))

    # leave together: a rank tearing gloo down while the other still talks to it can hang at exit
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
