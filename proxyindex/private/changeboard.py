"""What the worker processes of one host changed in the packages folder: a counter and a log
of the changed folders, in two small files.

With ``--workers N`` each process keeps its own view of the packages folder, refreshed by a
poll once a second. An upload answered by one worker was therefore invisible to the others for
up to a second: ``twine upload`` followed at once by ``pip install`` or ``uv publish
--check-url`` failed about half the time (32 of 60 page requests in a measurement). A worker
whose view changes bumps the counter and appends the folders it saw change to the log; every
request that reads private data compares the counter with the value the process last caught
up with, which is a read of shared memory (no system call), and when it moved, lists again
only the folders logged since (an upload costs the other workers one folder listing, not a
walk of the whole tree). The log starts over past ``_LOG_LIMIT`` bytes; a process that had
not read it all then walks the whole tree once.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChangeBoard", "Mark"]

# count of changes, log epoch (bumped when the log starts over), log length in bytes
_FORMAT = struct.Struct("<QQQ")
_LOG_LIMIT = 1 << 20
_MAX_LOGGED = 2000  # folders per change worth logging one by one


@dataclass(frozen=True, slots=True)
class Mark:
    """A point in the board's history: what a process has caught up with."""

    count: int
    epoch: int
    length: int


class ChangeBoard:
    """The counter (memory-mapped ``path``) and the folder log (``path`` + ``.log``).
    :meth:`bump` and :meth:`since` block briefly (a file lock, a read): call them from a
    thread, like every other file operation. :meth:`read` is a memory read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = path.with_name(path.name + ".log")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size < _FORMAT.size:
            os.ftruncate(self._fd, _FORMAT.size)  # zero-filled: the counter starts at 0
        self._map = mmap.mmap(self._fd, _FORMAT.size)

    def read(self) -> int:
        value: int = _FORMAT.unpack_from(self._map, 0)[0]
        return value

    def mark(self) -> Mark:
        return Mark(*_FORMAT.unpack_from(self._map, 0))

    def bump(self, directories: Iterable[str] = ()) -> tuple[Mark, Mark]:
        """Count a change, and log the folders it touched (none, or more than a few
        thousand: readers walk everything); the marks just before and after it."""
        folders = [d for d in directories if "\n" not in d]
        if len(folders) > _MAX_LOGGED:
            folders = []  # a walk (one stat per folder) beats listing them all again
        lines = "".join(f"{d}\n" for d in folders).encode()
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            count, epoch, length = _FORMAT.unpack_from(self._map, 0)
            before = Mark(count, epoch, length)
            if not lines or length + len(lines) > _LOG_LIMIT:
                epoch, length = epoch + 1, 0  # start over: whoever has not caught up walks
                with self._log.open("wb"):
                    pass
            if lines:
                with self._log.open("ab") as fh:
                    fh.write(lines)
                length += len(lines)
            after = Mark((count + 1) % (1 << 64), epoch, length)
            _FORMAT.pack_into(self._map, 0, after.count, after.epoch, after.length)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return before, after

    def since(self, seen: Mark, now: Mark) -> set[str] | None:
        """The folders logged between ``seen`` and ``now``; None when the log started over
        meanwhile (the caller walks the whole tree instead)."""
        if seen.epoch != now.epoch or seen.length > now.length:
            return None
        try:
            with self._log.open("rb") as fh:
                fh.seek(seen.length)
                data = fh.read(now.length - seen.length)
        except FileNotFoundError:
            return None
        if len(data) != now.length - seen.length or self.mark().epoch != now.epoch:
            return None  # started over while we read
        return set(data.decode("utf-8", "replace").splitlines())

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
