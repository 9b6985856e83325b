"""Blocking file helpers (call them through ``asyncio.to_thread``): atomic writes, hashing, names.

Every write goes to a hidden temp file in the destination folder, is fsynced, then renamed, so
a crash leaves either the old state or the new one, plus a ``.tmp-*`` file that
:func:`remove_stale_temp_files` deletes at start-up.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "TEMP_PREFIX",
    "commit_exclusive",
    "commit_replace",
    "file_sha256",
    "is_safe_filename",
    "open_temp",
    "remove_stale_temp_files",
]

TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


def is_safe_filename(filename: str) -> bool:
    """A single path segment: no separators, no traversal, no control characters (F-01)."""
    return (
        0 < len(filename) <= 255
        and filename not in (".", "..")
        and not filename.startswith(".")
        and "/" not in filename
        and "\\" not in filename
        and all(ch.isprintable() for ch in filename)
    )


def open_temp(directory: Path) -> tuple[BinaryIO, Path]:
    """A new hidden temp file in ``directory`` (created if missing), open for writing."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    return os.fdopen(fd, "wb"), Path(name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_replace(temp: Path, dest: Path, *, durable: bool = True) -> None:
    """Atomically move a finished temp file to ``dest``, replacing what was there.

    The data is always synced before the rename, so ``dest`` is never a torn file.
    ``durable=False`` skips syncing the folder: the rename itself may then be lost in a crash,
    which is right for a cache (the file is fetched again) and saves a few ms per file.
    """
    with temp.open("rb+") as fh:
        os.fsync(fh.fileno())
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp.replace(dest)
    if durable:
        _fsync_dir(dest.parent)


def commit_exclusive(temp: Path, dest: Path) -> bool:
    """Move ``temp`` to ``dest`` only if ``dest`` does not exist; False (temp removed) if it does.

    ``os.link`` fails when the target exists, so of two concurrent commits exactly one wins
    and nobody ever sees a mixed file.
    """
    with temp.open("rb+") as fh:
        os.fsync(fh.fileno())
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(temp, dest)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)
    return True


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk_temp_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                yield Path(dirpath) / name


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files a crash left behind; returns how many."""
    count = 0
    for path in _walk_temp_files(root):
        path.unlink(missing_ok=True)
        count += 1
    return count
