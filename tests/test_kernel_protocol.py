"""The persistent sampling kernel's grid-barrier protocol under real concurrency, on a CPU.

Triton's interpreter runs a grid's programs one after another, where a spin barrier between them
can never fill. tests/threaded_interpreter.py runs each program in its own thread with seeded
random pauses before every load, store and atomic, so the persistent kernel's programs really meet
at its barriers and interleave differently under each seed. The kernel with several programs a
group and two groups is held to the plain oracle: tokens identical, state within the parity
tests' tolerance. Deliberately broken protocols (made here, from a copy of the kernel's source)
must be caught.

This checks the phase protocol (who reads which buffer after which barrier), not the GPU's weak
memory ordering: under the GIL every interpreted load and store is sequentially consistent, so a
missing fence or acquire is invisible here; that waits for a GPU and its sanitizer.
"""

import os

import torch

# Triton picks the interpreter when a kernel is defined, so this must precede any triton import
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import dataclasses
import inspect
import re
import textwrap
import threading

import pytest

triton = pytest.importorskip('triton')
import triton.language as tl  # noqa: E402
from test_kernel_recurrent_sample import assert_matches_oracle, make_net, to_device  # noqa: E402
from threaded_interpreter import OutOfBoundsAccess, threaded_interpreter  # noqa: E402

from up_fast.kernels import recurrent_sample as rs  # noqa: E402
from up_fast.kernels.recurrent_sample import fused_recurrent_sample, plan_launch  # noqa: E402

if not rs.INTERPRETED:
    pytest.skip(
        'the threaded interpreter needs TRITON_INTERPRET=1 (a GPU runs the real kernel)', allow_module_level=True
    )

DEVICE = torch.device('cpu')
BLOCK_B = 16
# A correct launch of these cases spins a few hundred times a program in all (at most 286 measured,
# 8 programs, 8 barriers). Past this bound a barrier gives up and sets the kernel's abort flag
# (check=True raises): a barrier that never fills fails the test in seconds instead of hanging.
MAX_SPINS = 20_000
# ... and a launch that takes longer than this fails too (its programs are stopped)
LAUNCH_TIMEOUT_S = 90.0


class OracleMismatch(AssertionError):
    """Tokens or state differ from the oracle's."""


def two_group_plan(batch, hidden, num_tokens, programs, weights=None):
    """The launcher's plan with `programs` programs a group, on batch tiles of 16 rows: two groups
    for a batch in (16, 32], the second one ragged. `weights` (resident_gates, resident_logits)
    overrides the rule's choice of the slices kept on chip."""
    plan = plan_launch(batch, hidden, num_tokens, 1, programs=programs)
    plan = dataclasses.replace(plan, block_b=BLOCK_B, groups=-(-batch // BLOCK_B))
    if weights is not None:
        plan = dataclasses.replace(plan, resident_gates=weights[0], resident_logits=weights[1])
    rs.check_plan(plan, batch, hidden, num_tokens)
    assert plan.programs == programs and plan.groups == 2
    return plan


def run_threaded(kernel_case, seed, *, kernel=None, monkeypatch=None, paces=None):
    """One persistent launch under the threaded interpreter; raises OracleMismatch, KernelBarrierError
    (a barrier gave up) or, from the interpreter, OutOfBoundsAccess (a gather with a token nobody wrote)."""
    c = kernel_case
    net = make_net(
        c['cell'], c['num_tokens'], c['hidden'], bias_out=c.get('bias_out', False), seed=c['hidden'] + c['programs']
    )
    g = torch.Generator().manual_seed(c['programs'])
    prefix = torch.randint(0, c['num_tokens'], (c['batch'], c['prefix_len']), generator=g)
    noise = torch.rand((c['batch'], c['length'], c['num_tokens']), generator=g)
    plan = case_plan(c)
    if kernel is not None:
        monkeypatch.setitem(launcher_globals(), 'recurrent_sample_kernel', kernel)
    with threaded_interpreter(seed, timeout=LAUNCH_TIMEOUT_S, paces=paces):
        tokens, state = fused_recurrent_sample(
            to_device(net.folded, DEVICE),
            prefix,
            c['length'],
            c['temperature'],
            uniform_noise=noise,
            out=torch.full((c['batch'], c['length']), -1, dtype=torch.int64),
            # a NaN scratch: a read of a slot nobody wrote yet cannot pass for a zero state
            state_scratch=torch.full((2 if c['cell'] == 'lstm' else 1, 2, c['batch'], c['hidden']), float('nan')),
            mode='persistent',
            plan=plan,
            max_spins=MAX_SPINS,
            check=True,
        )
    try:
        assert_matches_oracle(net, prefix, c['length'], c['temperature'], noise, tokens, state)
    except AssertionError as mismatch:
        raise OracleMismatch(str(mismatch)) from None


# the harness itself


@triton.jit
def wait_for_flag_kernel(flag_ptr, out_ptr, max_spins):
    """Program 0 spins until program 1 raised the flag, then stores what it saw."""
    pid = tl.program_id(0)
    if pid == 0:
        seen = tl.atomic_add(flag_ptr, 0, sem='acquire')
        spins = 0
        while (seen == 0) & (spins < max_spins):
            seen = tl.atomic_add(flag_ptr, 0, sem='acquire')
            spins += 1
        tl.store(out_ptr, seen)
    else:
        tl.store(out_ptr + pid, pid)
        tl.atomic_xchg(flag_ptr, 7, sem='release')


def wait_for_flag(max_spins=1000):
    out = torch.zeros(3, dtype=torch.int32)
    wait_for_flag_kernel[(3,)](torch.zeros(1, dtype=torch.int32), out, max_spins)
    return out.tolist()


def test_programs_run_concurrently():
    """In the plain interpreter program 0 gives up before program 1 starts; in threads it sees the flag."""
    assert wait_for_flag() == [0, 1, 2]
    with threaded_interpreter(seed=0):
        assert wait_for_flag() == [7, 1, 2]


def test_a_launch_that_never_ends_fails_in_time():
    """Program 0 waits for a flag nobody raises: the launch raises within its timeout, its threads stopped."""
    flag, out = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    with threaded_interpreter(seed=0, timeout=1.0), pytest.raises(Exception) as failure:
        wait_for_flag_kernel[(1,)](flag, out, 2**31 - 1)
    assert isinstance(failure.value.__cause__, TimeoutError) and 'still running after 1.0 s' in str(failure.value)
    assert not any(t.name.startswith('program') and t.is_alive() for t in threading.enumerate())


# the kernel under the protocol it was written with


def case(cell, programs, temperature, batch, prefix_len, length, hidden=40, num_tokens=37, **kw):
    return dict(
        cell=cell,
        programs=programs,
        temperature=temperature,
        batch=batch,
        prefix_len=prefix_len,
        length=length,
        hidden=hidden,
        num_tokens=num_tokens,
        **kw,
    )


def case_plan(c):
    return two_group_plan(c['batch'], c['hidden'], c['num_tokens'], c['programs'], c.get('weights'))


def weights_label(plan):
    """Which slices the case's programs keep on chip, for the test id."""
    return {
        (True, True): 'resident',
        (True, False): 'gates_resident',
        (False, True): 'logits_resident',
        (False, False): 'streamed',
    }[plan.resident_gates, plan.resident_logits]


STREAMED, GATES_RESIDENT = (False, False), (True, False)

# 2 groups of 16 rows (the second ragged), hidden and vocabulary not multiples of the tiles; at P = 8
# some programs own no hidden units and most no vocabulary slice. Most take the rule's plan (slices on
# chip where they fit); `weights` forces the other paths on the same shapes
CASES = {
    'lstm_P2_sample': case('lstm', 2, 1.0, batch=19, prefix_len=3, length=4),
    'gru_P3_greedy': case('gru', 3, 0.0, batch=19, prefix_len=2, length=4, bias_out=True),
    'gru_P3_greedy_forced': case('gru', 3, 0.0, batch=19, prefix_len=2, length=4, bias_out=True, weights=STREAMED),
    'lstm_P5_greedy_prefix1': case('lstm', 5, 0.0, batch=18, prefix_len=1, length=3, hidden=24),
    'lstm_P5_greedy_prefix1_forced': case(
        'lstm', 5, 0.0, batch=18, prefix_len=1, length=3, hidden=24, weights=GATES_RESIDENT
    ),
    'gru_P8_sample_length1': case('gru', 8, 1.0, batch=17, prefix_len=3, length=1),
    'gru_P8_sample_length1_forced': case('gru', 8, 1.0, batch=17, prefix_len=3, length=1, weights=STREAMED),
    'lstm_P8_sample_prefix1_length1': case('lstm', 8, 1.0, batch=17, prefix_len=1, length=1, bias_out=True),
    'lstm_P8_sample_prefix1_length1_forced': case(
        'lstm', 8, 1.0, batch=17, prefix_len=1, length=1, bias_out=True, weights=GATES_RESIDENT
    ),
    'gru_P4_sample_prefix1': case('gru', 4, 1.0, batch=20, prefix_len=1, length=3, hidden=24, num_tokens=20),
}


@pytest.mark.parametrize(
    'name', list(CASES), ids=[f'{name}-{weights_label(case_plan(c))}' for name, c in CASES.items()]
)
def test_persistent_kernel_matches_oracle_under_concurrency(name):
    run_threaded(CASES[name], seed=len(name))


def test_the_cases_run_every_weights_path():
    """The rule's plans keep these small slices on chip; the forced cases run the streamed paths too."""
    labels = [weights_label(case_plan(c)) for c in CASES.values()]
    assert {'resident', 'gates_resident', 'streamed'} <= set(labels), labels
    assert labels.count('resident') >= len(labels) // 3


# broken protocols: each must be caught


def kernel_source():
    return textwrap.dedent(inspect.getsource(rs.recurrent_sample_kernel.fn))


def launcher_globals():
    """The namespace the launcher finds the persistent kernel in."""
    namespace = rs.recurrent_sample_launch.__globals__
    if 'recurrent_sample_kernel' not in namespace:
        raise LookupError('the launcher no longer names recurrent_sample_kernel: update this test')
    return namespace


BARRIER_CALL = re.compile(r'grid_barrier\(([^()]*)\)')


def barrier_calls(source):
    calls = list(BARRIER_CALL.finditer(source))
    logits = source.find('logits_phase(')
    assert len(calls) == 2 and calls[0].start() < logits < calls[1].start(), (
        'expected two grid_barrier calls in recurrent_sample_kernel, one on each side of logits_phase: '
        'the kernel changed, update the broken variants'
    )
    return calls


def never_waits(source, call):
    """The barrier call with its target replaced by 0: the program arrives (the counter stays
    consistent for the later barriers) and goes on at once."""
    args = [a.strip() for a in call.group(1).split(',')]
    assert args.count('target') == 1, f'grid_barrier call without a `target` argument: {call.group(0)}'
    waitless = 'grid_barrier(' + ', '.join('0' if a == 'target' else a for a in args) + ')'
    return source[: call.start()] + waitless + source[call.end() :]


def no_barrier_before_logits(source):
    """The barrier between the feed and the logits passes at once (the logits may read h before
    the other programs wrote it; the same call ends the prefix feeds)."""
    return never_waits(source, barrier_calls(source)[0])


def barrier_never_waits(source):
    for call in reversed(barrier_calls(source)):  # from the end: earlier offsets stay valid
        source = never_waits(source, call)
    return source


def one_h_slot(source):
    """Both exchange slots at one address: a feed writes the h that other programs still read."""
    pattern = re.compile(r'^(\s*)slot = .+$', re.MULTILINE)
    assert len(pattern.findall(source)) == 1, 'expected one `slot = ...` line in recurrent_sample_kernel: update it'
    return pattern.sub(r'\1slot = 0', source)


BROKEN = {
    'no_barrier_before_logits': no_barrier_before_logits,
    'one_h_slot': one_h_slot,
    'barrier_never_waits': barrier_never_waits,
}


def jit_variant(source, path):
    """A persistent kernel from `source`, resolving its helpers where the real one does. Written to
    a file: the interpreter rewrites a kernel from its source lines."""
    path.write_text(source)
    namespace = dict(rs.recurrent_sample_kernel.fn.__globals__)
    exec(compile(source, str(path), 'exec'), namespace)  # noqa: S102 - the test's own edit of the kernel
    return namespace['recurrent_sample_kernel']


# LSTM, 8 programs, 2 groups. Prefix 1: every feed is followed by the logits, so the first barrier
# call is only ever the one before them. 4 feeds: the final h lies in slot 0 for the one-slot
# variant too. One unit tile a program: a program never reads h it wrote itself in the same feed,
# so only another program's interleaving can break the one-slot variant.
BROKEN_CASE = case('lstm', 8, 1.0, batch=18, prefix_len=1, length=4, hidden=24, num_tokens=20)
BROKEN_SEEDS = range(3)
# program 0 runs far behind the others (its pace above their whole phase's interpreted arithmetic, which
# the GIL serialises): it reads h after its neighbours wrote theirs and they read what it has not yet
# written. Left to chance, a wrong exchange slot went unnoticed under most seeds
STRAGGLER = {0: 0.3}


def protocol_failure(error):
    """What kind of protocol failure `error` is: a mismatch with the oracle, a barrier that gave
    up, an access outside the launch's tensors; None for anything else (a broken test)."""
    if isinstance(error, OracleMismatch):
        return 'mismatch'
    if isinstance(error, rs.KernelBarrierError):
        return 'abort'
    while error is not None:
        if isinstance(error, OutOfBoundsAccess):
            return 'out of bounds'
        error = error.__cause__
    return None


def test_intact_copy_of_the_kernel_passes(tmp_path, monkeypatch):
    """The re-jit path itself is sound: an unmodified copy passes, so a broken variant fails for its change."""
    intact = jit_variant(kernel_source(), tmp_path / 'intact.py')
    run_threaded(BROKEN_CASE, seed=0, kernel=intact, monkeypatch=monkeypatch, paces=STRAGGLER)


@pytest.mark.filterwarnings('ignore:All-NaN slice encountered')  # reading the NaN scratch is what they do
@pytest.mark.parametrize('variant', list(BROKEN))
def test_broken_protocol_is_caught(variant, tmp_path, monkeypatch):
    source = kernel_source()
    broken = BROKEN[variant](source)
    assert broken != source
    kernel = jit_variant(broken, tmp_path / f'{variant}.py')
    caught = []
    for seed in BROKEN_SEEDS:
        try:
            run_threaded(BROKEN_CASE, seed, kernel=kernel, monkeypatch=monkeypatch, paces=STRAGGLER)
        except Exception as failure:  # only the protocol's failures count, below
            kind = protocol_failure(failure)
            if kind is None:
                raise
            caught.append((seed, kind, str(failure).splitlines()[0][:120]))
    assert len(caught) == len(BROKEN_SEEDS), (
        f'{variant} caught under {len(caught)} of {len(BROKEN_SEEDS)} seeds: {caught}'
    )
