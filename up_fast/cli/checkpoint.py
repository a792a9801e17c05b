"""Checkpoints of `up-fast pretrain`: reading them with errors that say what is wrong, loading their
state strictly, and writing them safely to a path checked before any work."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from up_fast import __version__
from up_fast.cli.common import DEFAULT_CHECKPOINT, DEFAULT_CONFIG, CLIError, one_line
from up_fast.helpers import exists


def describe_file(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return 'the file is empty'
    with open(path, 'rb') as file:
        head = file.read(16)
    return f'{size:,} bytes beginning {head!r}, not the zip archive that torch.save writes'


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise CLIError(f'{path} is a directory, not a checkpoint file (`up-fast pretrain` writes {DEFAULT_CHECKPOINT} by default)')
    if not path.is_file():
        raise CLIError(f'checkpoint not found: {path} (write one with `up-fast pretrain --out {path}`)')
    try:
        checkpoint = torch.load(path, map_location = 'cpu', weights_only = True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by `up-fast pretrain`') from None
        raise CLIError(f'{path} holds objects other than tensors and plain data, which up-fast does not load (weights_only): {one_line(err)}') from None
    except Exception as err:
        if not zipfile.is_zipfile(path):
            raise CLIError(f'{path} is not a PyTorch checkpoint file ({describe_file(path)}); pass a checkpoint written by `up-fast pretrain`') from None
        raise CLIError(f'cannot read checkpoint {path}, a damaged or truncated PyTorch file? ({one_line(err)}); write it again with `up-fast pretrain`') from None

    missing = {'config', 'model', 'wrapper'} - set(checkpoint) if isinstance(checkpoint, dict) else {'a dict'}
    if missing:
        raise CLIError(f'{path} is a PyTorch file but not an up-fast checkpoint: it lacks {", ".join(sorted(missing))} (`up-fast pretrain` writes them)')
    # a checkpoint from before the `source` option was written with the x-transformers generator
    checkpoint['config'] = {**DEFAULT_CONFIG, 'source': 'xt', **checkpoint['config']}
    return checkpoint


def listed(names: list[str], limit: int = 6) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def state_mismatch(expected: dict, found: dict) -> str | None:
    """What keeps a state_dict from loading into a module, all of it on one line, or None."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [f'{key} is {tuple(found[key].shape)} in the file, {tuple(expected[key].shape)} in the model'
              for key in expected if key in found and hasattr(found[key], 'shape') and tuple(found[key].shape) != tuple(expected[key].shape)]

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
    advice = (f'was it written by {written_by} (this is {__version__}) or edited? '
              f'Load it with the up-fast that wrote it, or write a new one with `up-fast pretrain`')
    if exists(mismatch):
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config: {mismatch}; {advice}')
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CLIError(f'checkpoint {path} does not fit the model built from its own config ({one_line(err, 600)}); {advice}') from None


def check_out_path(out: Path, resume: str | None, force: bool):
    """Refuse, before any training, a checkpoint path that cannot be written or that holds another run."""
    if out.is_dir():
        raise CLIError(f'--out {out} is a directory: give the checkpoint file to write, e.g. --out {out / "up_fast.pt"}')
    resuming_in_place = exists(resume) and out.exists() and out.resolve() == Path(resume).resolve()
    if out.exists() and not resuming_in_place and not force:
        raise CLIError(f'{out} already exists (the checkpoint of another run?): pass --force to overwrite it, '
                       f'`--resume {out}` to continue that run, or --out with another path')
    check_writable(out, 'the checkpoint', '--out')


def check_writable(path: Path, what: str, option: str):
    # make the folder and a file in it now, rather than fail when the work is done
    try:
        path.parent.mkdir(parents = True, exist_ok = True)
        with tempfile.NamedTemporaryFile(dir = path.parent, prefix = f'.{path.name}.', suffix = '.tmp'):
            pass
    except OSError as err:
        raise CLIError(f'cannot write {what} {path}: {err.strerror or err} ({err.filename or path.parent}); choose a writable {option}') from None


def save_checkpoint(checkpoint: dict, out: Path):
    # through a temporary file: an interrupted save leaves the previous checkpoint whole
    temporary = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    torch.save(checkpoint, temporary)
    os.replace(temporary, out)
