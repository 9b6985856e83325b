"""A change counter shared by the worker processes of one host, in a small memory-mapped file.

With ``--workers N`` each process keeps its own view of the packages folder, refreshed by a
poll once a second. An upload answered by one worker was therefore invisible to the others for
up to a second: ``twine upload`` followed at once by ``pip install`` or ``uv publish
--check-url`` failed about half the time (32 of 60 page requests in a measurement). A worker
whose view changes bumps the counter; every request that reads private data compares it with
the value the process last caught up with, which is a read of shared memory (no system call),
and brings the view up to date first when it moved.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

__all__ = ["ChangeBoard"]

_FORMAT = struct.Struct("<Q")


class ChangeBoard:
    """One 64-bit counter in ``path``; :meth:`bump` blocks briefly (a file lock): call it from
    a thread, like every other write. :meth:`read` is a memory read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size < _FORMAT.size:
            os.ftruncate(self._fd, _FORMAT.size)  # zero-filled: the counter starts at 0
        self._map = mmap.mmap(self._fd, _FORMAT.size)

    def read(self) -> int:
        value: int = _FORMAT.unpack_from(self._map, 0)[0]
        return value

    def bump(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            _FORMAT.pack_into(self._map, 0, (self.read() + 1) % (1 << 64))
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
