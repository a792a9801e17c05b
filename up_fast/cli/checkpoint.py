"""Checkpoints of `up-fast pretrain`: reading them with errors that say what is wrong, trusting none
whose contents do not match their checksum, loading their state strictly, and writing them safely:
atomically, to a path checked before any work and claimed by one run at a time."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pickle
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from up_fast import __version__
from up_fast.cli.common import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, CLIError, one_line
from up_fast.helpers import exists

if TYPE_CHECKING:
    import torch


# 1: no checksum; 2: a sha256 of the contents, checked on every load
FORMAT_VERSION = 2


def update_digest(hasher, value):
    """Feed a checkpoint's value to `hasher`.

    Tensors by dtype, shape and bytes, containers in order, the rest by repr.
    """
    import torch

    if isinstance(value, torch.Tensor):
        data = value.detach().to('cpu').contiguous()
        hasher.update(f'tensor {data.dtype} {tuple(data.shape)};'.encode())
        if data.numel() > 0:
            hasher.update(ctypes.string_at(data.data_ptr(), data.numel() * data.element_size()))
    elif isinstance(value, dict):
        hasher.update(f'dict {len(value)};'.encode())
        for key in sorted(value, key=repr):
            update_digest(hasher, key)
            update_digest(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f'{type(value).__name__} {len(value)};'.encode())
        for item in value:
            update_digest(hasher, item)
    else:
        hasher.update(f'{type(value).__name__} {value!r};'.encode())


def content_checksum(checkpoint: dict) -> str:
    """sha256 of everything in a checkpoint but the checksum itself."""
    hasher = hashlib.sha256()
    update_digest(hasher, {key: value for key, value in checkpoint.items() if key != 'checksum'})
    return hasher.hexdigest()


def check_integrity(checkpoint: dict, path: Path):
    """A damaged file is refused: torch.load does not check the bytes of the tensors it reads."""
    version = checkpoint.get('format_version', 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CLIError(
            f'{path} has checkpoint format {version!r}, newer than this up-fast reads ({FORMAT_VERSION}, up-fast '
            f'{__version__}): load it with the up-fast that wrote it ({checkpoint.get("version", "unknown")})'
        )
    if version < 2:
        return  # written before checkpoints carried a checksum
    stored = checkpoint.get('checksum')
    if not isinstance(stored, str) or stored != content_checksum(checkpoint):
        raise CLIError(
            f'{path} is damaged: its contents do not match the checksum written with them, so nothing in it can be '
            'trusted; use another checkpoint or write this one again with `up-fast pretrain`'
        )


def describe_file(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return 'the file is empty'
    with open(path, 'rb') as file:
        head = file.read(16)
    return f'{size:,} bytes beginning {head!r}, not the zip archive that torch.save writes'


def load_checkpoint(path: str | Path) -> dict:
    checkpoint = read_torch_file(path)
    missing = {'config', 'model', 'wrapper'} - set(checkpoint) if isinstance(checkpoint, dict) else {'a dict'}
    if missing:
        raise CLIError(
            f'{path} is a PyTorch file but not an up-fast checkpoint: it lacks {", ".join(sorted(missing))} (`up-fast '
            'pretrain` writes them)'
        )
    check_integrity(checkpoint, path)
    # a checkpoint from before the `source` option was written with the x-transformers generator
    checkpoint['config'] = {**DEFAULT_CONFIG, 'source': 'xt', **checkpoint['config']}
    return checkpoint


def read_torch_file(path: str | Path):
    """What torch.load (weights_only) finds in a file, or a one-line CLIError that says what the file is."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(
            f'{path} is a directory, not a checkpoint file (`up-fast pretrain` writes {DEFAULT_CHECKPOINT} by default)'
        )
    if not path.is_file():
        raise CLIError(f'checkpoint not found: {path} (write one with `up-fast pretrain --out {path}`)')
    import torch

    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(
                f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by '
                '`up-fast pretrain`'
            ) from None
        raise CLIError(
            f'{path} holds objects other than tensors and plain data, which up-fast does not load (weights_only): '
            f'{one_line(err)}'
        ) from None
    except Exception as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(
                f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by '
                '`up-fast pretrain`'
            ) from None
        raise CLIError(
            f'cannot read checkpoint {path}, a damaged or truncated PyTorch file? ({one_line(err)}); write it again '
            'with `up-fast pretrain`'
        ) from None
    return checkpoint


def listed(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def state_mismatch(expected: dict, found: dict) -> str | None:
    """What keeps a state_dict from loading into a module, all of it on one line, or None."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [
        f'{key} is {tuple(found[key].shape)} in the file, {tuple(expected[key].shape)} in the model'
        for key in expected
        if key in found and hasattr(found[key], 'shape') and tuple(found[key].shape) != tuple(expected[key].shape)
    ]

    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {listed(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {listed(unexpected)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatch(es): {listed(shapes, 3)}')
    return '; '.join(problems) if problems else None


def load_state(module: torch.nn.Module, state: dict, path: str | Path, version: str | None = None):
    """Strict load, or a one-line CLIError that says what does not fit and what to do."""
    mismatch = state_mismatch(module.state_dict(), state)
    written_by = f'up-fast {version}' if exists(version) else 'another up-fast'
    advice = (
        f'was it written by {written_by} (this is {__version__}) or edited? '
        f'Load it with the up-fast that wrote it, or write a new one with `up-fast pretrain`'
    )
    if exists(mismatch):
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config: {mismatch}; {advice}')
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CLIError(
            f'checkpoint {path} does not fit the model built from its own config ({one_line(err, 600)}); {advice}'
        ) from None


def check_out_path(out: Path, resume: str | None, force: bool):
    """Refuse, before any training, a checkpoint path that cannot be written or that holds another run."""
    if out.is_dir():
        raise CLIError(
            f'--out {out} is a directory: give the checkpoint file to write, e.g. --out {out / "up_fast.pt"}'
        )
    resuming_in_place = exists(resume) and out.exists() and out.resolve() == Path(resume).resolve()
    if out.exists() and not resuming_in_place and not force:
        raise CLIError(
            f'{out} already exists (the checkpoint of another run?): pass --force to overwrite it, '
            f'`--resume {out}` to continue that run, or --out with another path'
        )
    check_writable(out, 'the checkpoint', '--out')


def check_writable(path: Path, what: str, option: str):
    # make the folder and a file in it now, rather than fail when the work is done
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp'):
            pass
    except OSError as err:
        raise CLIError(
            f'cannot write {what} {path}: {err.strerror or err} ({err.filename or path.parent}); choose a writable '
            f'{option}'
        ) from None


def save_checkpoint(checkpoint: dict, out: Path):
    """Write `checkpoint` with its format version and checksum, through a temporary file made durable before it
    replaces `out`: an interrupted save, or a crash after it, leaves the previous checkpoint whole."""
    import torch

    checkpoint = {**checkpoint, 'format_version': FORMAT_VERSION}
    checkpoint['checksum'] = content_checksum(checkpoint)
    temporary = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    try:
        with open(temporary, 'wb') as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + '.lock')


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


@contextlib.contextmanager
def claimed(out: Path):
    """Hold `out` for this run: a lock file beside it, made with O_EXCL so that of two runs writing one path only
    the first goes ahead; the other stops before any work. A lock left by a run that died is taken over."""
    lock = lock_path(out)
    host = socket.gethostname()
    for attempt in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid_text, _, lock_host = lock.read_text().strip().partition(' ')
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, lock_host = None, None
            if attempt == 0 and lock_host == host and exists(pid) and not process_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its run is gone
                continue
            holder = f'process {pid} on {lock_host}' if exists(pid) else 'another process'
            raise CLIError(
                f'{out} is being written by another run ({holder}, lock file {lock}): wait for it to end or choose '
                f'another --out; if no such run is going, delete {lock}'
            ) from None
    with os.fdopen(descriptor, 'w') as file:
        file.write(f'{os.getpid()} {host}\n')
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
