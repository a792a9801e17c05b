"""Triton's interpreter with one thread per program: spin barriers between programs make progress on a CPU.

The interpreter (TRITON_INTERPRET=1) runs a grid's programs one after another, so a program that
waits for another (a grid barrier) never sees it arrive. `threaded_interpreter(seed)` patches the
installed interpreter for the duration of a `with` block:

- the program id (`InterpreterBuilder.grid_idx`, one global) becomes thread-local;
- a launch collects the grid's programs as the interpreter walks the grid, then runs each in its
  own thread and joins them (a launch that does not finish within `timeout` raises TimeoutError);
- the language patching that every nested @triton.jit call redoes, and the rewriting of a
  function's source, are serialised; atomics run under one lock, so they are atomic across threads;
- before every load, store and atomic a program sleeps a random short while, from a generator
  seeded by (seed, program id), up to its own pace: each program of a launch draws a pace between
  max_sleep / 10 and 10 * max_sleep, so some run far behind the others, as on a GPU whose SMs do
  not start or run in step. Each seed shuffles the interleavings differently (and a spinning
  program mostly sleeps, which leaves the GIL to the programs it waits for);
- every load, store and atomic must address the storage of a tensor passed to the launch: a wrong
  protocol can gather with a token nobody wrote, and an address outside every tensor raises
  OutOfBoundsAccess in its program instead of crashing the process. Once a program failed, the
  others fail at their next memory access (rather than spin until their kernel gives up).

What this checks is the phase protocol: which program may read what, after which barrier, with
which buffer. It does not model a GPU's weak memory ordering: the GIL makes every load and store
of the interpreter a sequentially consistent, whole-block access, so missing fences, acquire and
release semantics or stale L1 lines are invisible here. Threads still interleave by the OS
scheduler, so a seed fixes the sleeps, not the exact interleaving.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import threading
import time

import numpy as np
import torch
from triton.runtime import interpreter

# create_load / create_store (and 3.9's atomic_load / atomic_store) go through the masked ones
MEMORY_OPS = ('create_masked_load', 'create_masked_store')
ATOMIC_OPS = ('create_atomic_rmw', 'create_atomic_cas')
_MISSING = object()
# how long the programs of a launch that timed out get to stop before the launch raises
ABANDON_GRACE_S = 5.0


class _Patches:
    """setattr that remembers what it replaced, undone in reverse order."""

    def __init__(self):
        self.undo = []

    def set(self, obj, name, value):
        old = obj.__dict__.get(name, _MISSING) if isinstance(obj, type) else getattr(obj, name)
        self.undo.append((obj, name, old))
        setattr(obj, name, value)

    def restore(self):
        while self.undo:
            obj, name, old = self.undo.pop()
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


class OutOfBoundsAccess(RuntimeError):
    """A program addressed memory outside every tensor of its launch."""


class GridAbandoned(RuntimeError):
    """Another program of the launch failed first."""


@contextlib.contextmanager
def threaded_interpreter(
    seed: int = 0, *, max_sleep: float = 2e-4, timeout: float = 120.0, paces: dict[int, float] | None = None
):
    """Run every interpreted launch inside the block with one thread per program (see the module docstring).

    max_sleep: the typical longest random sleep (seconds) before a memory op. timeout: seconds a launch may
    take; past it the launch raises TimeoutError, and its programs stop at their next memory access.
    paces: fixed paces (seconds) for some programs (by the first grid index), the others draw theirs: a
    program far slower than the interpreter's arithmetic makes an ordering that the GIL's scheduling
    would otherwise leave to chance (a straggler that reads after its neighbours wrote)."""
    paces = dict(paces or {})
    if not hasattr(interpreter, 'GridExecutor') or not hasattr(interpreter.InterpreterBuilder, 'set_grid_idx'):
        raise RuntimeError('this Triton interpreter has no GridExecutor / InterpreterBuilder.set_grid_idx to patch')
    local = threading.local()
    patch_lock = threading.RLock()
    atomic_lock = threading.Lock()
    patches = _Patches()

    # the program id, per thread
    patches.set(
        interpreter.InterpreterBuilder,
        'grid_idx',
        property(lambda self: getattr(local, 'grid_idx', None), lambda self, value: setattr(local, 'grid_idx', value)),
    )

    def shuffle():
        """A seeded random pause: another program may run in between."""
        rng = getattr(local, 'rng', None)
        if rng is None or getattr(local, 'in_atomic', False):
            return
        time.sleep(rng.uniform(0.0, local.pace))

    def checked(name, method):
        signature = inspect.signature(method)

        def check(args, kwargs):
            if launch.failed:
                raise GridAbandoned('another program of this launch failed')
            bound = signature.bind(*args, **kwargs).arguments
            ptrs = bound.get('ptrs', bound.get('ptr'))
            if ptrs is None:
                raise RuntimeError(f'{name} of this Triton takes no `ptr`/`ptrs` argument: update the memory check')
            mask = bound.get('mask')
            addresses = ptrs.data if mask is None else ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]
            size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
            inside = np.zeros(addresses.shape, dtype=bool)
            for low, high in launch.ranges:
                inside |= (addresses >= low) & (addresses + size <= high)
            if not inside.all():
                raise OutOfBoundsAccess(
                    f'program {getattr(local, "grid_idx", None)}: {name} at '
                    f'{int((~inside).sum())} addresses outside every tensor of the launch'
                )

        if name in ATOMIC_OPS:

            def wrapped(*args, **kwargs):
                shuffle()
                check(args, kwargs)
                with atomic_lock:
                    local.in_atomic = True  # its inner load/store (atomic_load in 3.9) does not pause
                    try:
                        return method(*args, **kwargs)
                    finally:
                        local.in_atomic = False
        else:

            def wrapped(*args, **kwargs):
                shuffle()
                check(args, kwargs)
                return method(*args, **kwargs)

        return wrapped

    launch = _Launch()
    for name in MEMORY_OPS + ATOMIC_OPS:
        method = getattr(interpreter.InterpreterBuilder, name, None)
        if method is not None:
            patches.set(interpreter.InterpreterBuilder, name, checked(name, method))

    # nested @triton.jit calls patch triton.language again and rewrite sources lazily: one at a time
    patch_lang, rewrite = interpreter._patch_lang, interpreter.InterpretedFunction.rewrite

    def locked_patch_lang(fn):
        with patch_lock:
            return patch_lang(fn)

    def locked_rewrite(self):
        with patch_lock:
            return rewrite(self)

    patches.set(interpreter, '_patch_lang', locked_patch_lang)
    patches.set(interpreter.InterpretedFunction, 'rewrite', locked_rewrite)

    # a launch: collect the programs as the interpreter walks the grid, run them all at the last one
    base = interpreter.GridExecutor

    class ThreadedGridExecutor(base):
        def __init__(self, fn, *args, **kwargs):
            super().__init__(fn, *args, **kwargs)
            self.fn = _ThreadedGrid(fn, local, launch, seed, max_sleep, timeout, paces)

        def _init_args_hst(self, *args, **kwargs):
            args_hst, kwargs_hst = super()._init_args_hst(*args, **kwargs)
            launch.start([*args_hst, *kwargs_hst.values()])
            return args_hst, kwargs_hst

    patches.set(interpreter, 'GridExecutor', ThreadedGridExecutor)
    try:
        yield
    finally:
        patches.restore()


class _Launch:
    """What the memory checks of the running launch need: its tensors' storage, whether a program failed."""

    def __init__(self):
        self.ranges, self.failed = [], False

    def start(self, args):
        tensors = []
        flatten = lambda a: [x for item in a for x in (flatten(item) if isinstance(item, (tuple, list)) else [item])]
        for arg in flatten(args):
            arg = getattr(arg, 'base', arg)  # a TensorDescriptor's tensor
            if isinstance(arg, torch.Tensor):
                tensors.append(arg.untyped_storage())
        self.ranges = [(s.data_ptr(), s.data_ptr() + s.nbytes()) for s in tensors]
        self.failed = False


class _ThreadedGrid:
    """A stand-in for the kernel function that the grid loop calls once per program id: it records
    each call and, at the last program of the grid, runs them all in threads. The grid executor
    reads the kernel's signature, annotations and globals from it: those are the kernel's."""

    def __init__(self, fn, local, launch: _Launch, seed: int, max_sleep: float, timeout: float, paces: dict):
        self.fn, self.local, self.launch, self.seed, self.timeout = fn, local, launch, seed, timeout
        self.max_sleep, self.paces = max_sleep, paces
        self.__signature__ = inspect.signature(fn)
        self.__annotations__ = dict(getattr(fn, '__annotations__', {}))
        self.__globals__ = fn.__globals__
        self.__name__ = fn.__name__
        self.pending = []

    def __call__(self, **kwargs):
        builder = interpreter.interpreter_builder
        self.pending.append((builder.grid_idx, kwargs))
        nx, ny, nz = builder.grid_dim
        if len(self.pending) < nx * ny * nz:
            return
        programs, errors = list(self.pending), []
        self.pending.clear()

        def program(grid_idx, kwargs):
            self.local.grid_idx = grid_idx
            self.local.rng = rng = random.Random('{}-{}-{}-{}'.format(self.seed, *grid_idx))
            drawn = self.max_sleep * 10 ** rng.uniform(-1.0, 1.0)
            self.local.pace = self.paces.get(grid_idx[0], drawn)
            try:
                self.fn(**kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to the launching thread
                self.launch.failed = True
                errors.append((grid_idx, error))

        threads = [
            threading.Thread(target=program, args=call, daemon=True, name=f'program{call[0]}') for call in programs
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [thread.name for thread in threads if thread.is_alive()]
        if hung:
            self.launch.failed = True  # they stop at their next memory access
            for thread in threads:
                thread.join(ABANDON_GRACE_S)
            raise TimeoutError(
                f'{len(hung)} of {len(threads)} programs still running after {self.timeout} s: {hung[:8]}'
            )
        if errors:
            # the first failure, not the GridAbandoned of the programs stopped after it
            first = next((e for _, e in errors if not isinstance(e, GridAbandoned)), errors[0][1])
            raise first
