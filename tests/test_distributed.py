"""DDP and FSDP under torchrun on the CPU (gloo): a data stream per rank, one set of weights."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

TINY = ['--steps', '20', '--dim', '32', '--depth', '1', '--heads', '2', '--seq-len', '32', '--batch-size', '4']


def torchrun(*program):
    """Run `program` on two CPU ranks (gloo) under torchrun: a script path or `-m module`, then its
    arguments. Each rank saves what it saw as rank<r>.pt in a folder the caller reads."""
    if shutil.which('torchrun') is None:
        pytest.skip('torchrun is not on PATH')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', *program]
    # a session of its own, so that a timeout takes the ranks down with torchrun
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail('torchrun timed out after 300 s:\n' + stdout[-3000:] + stderr[-3000:])
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]


def saved_by_ranks(folder):
    return [torch.load(folder / f'rank{rank}.pt') for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize('mode', [[], ['--fsdp']], ids=['ddp', 'fsdp'])
def test_two_ranks_share_weights_but_not_data(tmp_path, mode):
    torchrun('-m', 'up_fast.distributed_example', *TINY, '--report', str(tmp_path), *mode)
    rank0, rank1 = saved_by_ranks(tmp_path)

    assert not torch.equal(rank0['buffer'], rank1['buffer']), 'each rank has its own buffer'
    assert not torch.equal(rank0['generator']['net.weight_hh_l0'], rank1['generator']['net.weight_hh_l0']), (
        'and its own Turing machine'
    )
    for name, weight in rank0['model'].items():
        assert torch.equal(weight, rank1['model'][name]), f'{name} differs between ranks'

    for losses in (rank0['losses'], rank1['losses']):
        assert all(torch.isfinite(torch.tensor(losses)))
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, f'loss did not go down: {losses}'


def test_ddp_sees_only_the_transformer_as_trainable():
    from conftest import tiny_model

    from up_fast import UniversalPretrainWrapper

    wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
    trainable = {name for name, p in wrapper.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith('data_generator.') for name in trainable)
    ignored = set(wrapper._ddp_params_and_buffers_to_ignore)
    assert {'synth_data_buffer', 'step', 'data_generator.net.weight_hh_l0', 'data_generator.embed.weight'} <= ignored
    names = {n for n, _ in wrapper.named_parameters()} | {n for n, _ in wrapper.named_buffers()}
    assert ignored <= names, 'every ignored name is a real parameter or buffer name'


NO_RNG_SEED_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from up_fast import UniversalPretrainWrapper

dist.init_process_group('gloo')
rank = dist.get_rank()
torch.manual_seed(0)                    # the usual pattern: one seed on every rank, no rng_seed
wrapper = UniversalPretrainWrapper(tiny_model(), seq_len=16, batch_size=4, buffer_size=24, num_reset=4)
trainer = DistributedDataParallel(wrapper)
optimizer = torch.optim.AdamW(wrapper.model.parameters(), lr=1e-2)
for _ in range(2):
    trainer().backward()
    optimizer.step()
    optimizer.zero_grad()
torch.save(dict(buffer=wrapper.synth_data_buffer, model=wrapper.model.state_dict()), {out!r} + f'/rank{{rank}}.pt')
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_draw_their_own_data_without_rng_seed(tmp_path):
    from pathlib import Path

    script = tmp_path / 'two_ranks.py'
    script.write_text(NO_RNG_SEED_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    torchrun(str(script))

    rank0, rank1 = saved_by_ranks(tmp_path)
    assert not torch.equal(rank0['buffer'], rank1['buffer']), 'the same manual seed, yet each rank draws its own data'
    for name, weight in rank0['model'].items():
        assert torch.equal(weight, rank1['model'][name]), f'{name} differs between ranks'
