"""Which folders of the packages tree changed, told by the kernel (Linux inotify), so the 1 s
poll costs O(changes) instead of a stat of every folder (152 ms per poll at 30,000 folders).

Used through ctypes (no dependency). Where inotify is missing (not Linux), fails (no watches
left: ``fs.inotify.max_user_watches``) or cannot see a change (a network file system written
by another host), the storage falls back to, or adds, a walk of the whole tree: see
``PrivateStorage.poll``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct

__all__ = ["DirWatcher"]

log = logging.getLogger(__name__)

_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_DONT_FOLLOW = 0x02000000
_IN_ISDIR = 0x40000000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# What changes a folder's listing (not writes into a file: an upload's temp file would name
# the packages folder on every write).
_MASK = (
    _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_DONT_FOLLOW
)
_EVENT = struct.Struct("iIII")


class DirWatcher:
    """inotify watches on folders; :meth:`changed` drains the events without blocking."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd: int = fd
        self._dirs: dict[int, str] = {}
        self._watched: set[str] = set()

    @classmethod
    def create(cls, root: str | None = None) -> DirWatcher | None:
        """A watcher, or None where inotify is not available or cannot see every change:
        ``root`` on a network file system (another host's writes raise no event here)."""
        kind = _fs_type(root) if root is not None else None
        if kind is not None and kind.split(".")[-1] in _NETWORK_FS:
            log.info("%s is on %s: the packages folder is polled", root, kind)
            return None
        try:
            return cls()
        except (OSError, AttributeError) as exc:
            log.info("no inotify (%s): the packages folder is polled", exc)
            return None

    def watch(self, directory: str) -> bool:
        """Watch ``directory`` (once); False if the kernel refused (no watches left)."""
        if directory in self._watched:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return True  # gone already: the walk that found it will notice
            log.warning(
                "cannot watch %s (%s): polling the whole packages folder instead",
                directory,
                os.strerror(err),
            )
            return False
        self._dirs[wd] = directory
        self._watched.add(directory)
        return True

    def changed(self) -> set[str] | None:
        """Folders with changes since the last call (and new subfolders); None if the
        kernel dropped events (its queue overflowed): walk everything."""
        found: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return found
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    return None
                directory = self._dirs.get(wd)
                if mask & _IN_IGNORED:
                    gone = self._dirs.pop(wd, None)
                    self._watched.discard(gone or "")
                name = os.fsdecode(raw.rstrip(b"\0"))
                if directory is None or name.startswith("."):
                    continue  # temp files and hidden folders are never listed
                found.add(directory)
                if mask & _IN_ISDIR and name:
                    found.add(os.path.join(directory, name))  # noqa: PTH118 - str paths

    def close(self) -> None:
        os.close(self._fd)


_NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "sshfs", "s3fs", "lustre"}
)


def _fs_type(path: str) -> str | None:
    """The file system type of the mount holding ``path`` (from /proc/mounts), if known."""
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:  # noqa: PTH123
            mounts = [line.split()[1:3] for line in fh if len(line.split()) > 2]
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for mount_point, kind in mounts:
        point = mount_point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), kind)
    return best[1] if best else None
