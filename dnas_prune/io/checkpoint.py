"""Files that survive crashes and never run code: atomic writes and ``weights_only`` loading.

Every file the package writes goes through :func:`atomic_write` or :func:`atomic_output` (temp file in a
folder beside it, fsync, the usual 0666-minus-umask mode, rename), so a kill at any moment leaves either the old file or the new one. Every ``.pt`` file is read by
:func:`safe_load`, which only accepts tensors and plain data and turns each way a file can be wrong
into one :class:`~dnas_prune.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

from ..errors import CheckpointError, DnasPruneError


def user_cache_home() -> Path:
    """``dnas_prune`` in the user cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dnas_prune"


def cache_dir() -> Path:
    """Where derived files are cached (decoded datasets, latency tables): ``$DNAS_PRUNE_CACHE``, else
    :func:`user_cache_home`."""
    return Path(os.environ.get("DNAS_PRUNE_CACHE") or user_cache_home())


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


STALE_SECONDS = 3600  # a temp entry this old is a killed writer's, not one still writing (several ranks may write)


def _clear_stale_temps(path: Path) -> None:
    """Remove what a writer killed while writing ``path`` left beside it: a temp folder (or, from older versions, a
    temp file) of exactly the shape :func:`atomic_output` makes, untouched for :data:`STALE_SECONDS`."""
    shape = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp(\.\w+)?")
    for stale in path.parent.iterdir():
        try:
            if shape.fullmatch(stale.name) and time.time() - stale.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to remove
            continue


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path for a writer that wants a file name (e.g. an exporter): ``path``'s own name inside a fresh
    hidden directory next to it (archives such as TorchScript's and pt2's take their inner folder from the file
    name). On leaving the block the file is fsynced, given the usual mode (0666 minus the umask) and renamed over
    ``path``. On an exception the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise DnasPruneError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_temps(path)
        folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise DnasPruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp = folder / path.name
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse a directory ``path`` that cannot be made or written in, before any work that will write there: a run
    refused at its first write after an epoch of training has lost the epoch. Leaves no directory it made."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise DnasPruneError(f"cannot write in {path}: {exc.strerror or exc}; choose another {flag}") from None
    finally:
        for p in made:
            try:
                p.rmdir()
            except OSError:
                break


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then rename it over ``path``."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def _unreadable(path: Path, exc: Exception, what: str) -> CheckpointError:
    """Say why ``torch.load(weights_only=True)`` refused a file, without ever suggesting to unpickle it."""
    blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if blocked:
        return CheckpointError(f"{path}: contains pickled code ({blocked.group(1)}) and was refused without running "
                               f"it; expected {what}, which holds only tensors and plain data")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return CheckpointError(f"{path}: truncated or corrupted file (expected {what}); copy or re-create it")
    if head.startswith(b"\x80"):
        return CheckpointError(f"{path}: a raw pickle, refused because pickles can carry code (expected {what})")
    exported = {b"\x08": "an ONNX export"}.get(head[:1])  # ONNX's protobuf starts with its ir_version field
    if exported:
        return CheckpointError(f"{path}: {exported}, not a PyTorch file; expected {what} (exports are for deploying: "
                               "pass the .pt it was exported from)")
    return CheckpointError(f"{path}: not a PyTorch file (unrecognized bytes); expected {what}")


def safe_load(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a missing, empty, truncated, foreign or code-carrying file becomes a
    one-line :class:`CheckpointError` naming the file and ``what`` was expected."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file (expected {what}); check the path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory (expected {what})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted copy?); expected {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4" notes: the outcome is what matters
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable input; all mean "not loadable"
        raise _unreadable(path, exc, what) from None
