"""Is an uploaded sdist a real one? Read its headers and PKG-INFO, extract nothing (blocking).

A ``.tar.gz`` of random bytes, a tarball with ``../`` paths or links out of its folder, or a
tar bomb must be refused before it is listed: pip would fail on it, or worse, unpack it. The
check reads the archive as a stream and stops at fixed bounds, so a hostile upload costs at
most a bounded amount of decompression, never a disk write or unbounded memory:

- members: at most :data:`MAX_MEMBERS` (a real sdist has hundreds; the largest seen on PyPI
  some tens of thousands);
- bytes decompressed while walking the headers: at most :data:`MAX_UNPACKED` (gzip expands up
  to ~1000x: a 1 GiB upload could otherwise mean 1 TB of work);
- PKG-INFO: at most :data:`MAX_PKG_INFO` bytes (the wheel METADATA limit).

Call it through ``asyncio.to_thread``: a 100 MB sdist takes about a second to walk.
"""

from __future__ import annotations

import functools
import gzip
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["MAX_MEMBERS", "MAX_PKG_INFO", "MAX_UNPACKED", "SdistLimits", "read_sdist_pkg_info"]

MAX_MEMBERS = 100_000
MAX_UNPACKED = 4 << 30
MAX_PKG_INFO = 10 << 20
_ZIP_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True, slots=True)
class SdistLimits:
    """The bounds of one check (tests pass small ones)."""

    members: int = MAX_MEMBERS
    unpacked: int = MAX_UNPACKED
    pkg_info: int = MAX_PKG_INFO


class _Bounded:
    """A read-only stream that refuses to hand out more than ``limit`` bytes in total."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size >= 0 else self._left + 1)
        self._left -= len(data)
        if self._left < 0:
            raise ValueError("it unpacks to more than the limit; refused as a tar bomb")
        return data


class _Walk:
    """What the member walk has seen: the one top-level folder and the PKG-INFO bytes."""

    def __init__(self, limits: SdistLimits) -> None:
        self.limits = limits
        self.top: str | None = None
        self.count = 0
        self.pkg_info: bytes | None = None

    def member(self, name: str, *, is_dir: bool) -> tuple[str, ...]:
        """Check one member's path; returns its parts below the top-level folder."""
        self.count += 1
        if self.count > self.limits.members:
            raise ValueError(f"more than {self.limits.members} members; refused as a tar bomb")
        drive = len(name) > 1 and name[0].isalpha() and name[1] == ":"  # C:foo
        if name.startswith("/") or "\\" in name or drive:
            raise ValueError(f"absolute or non-POSIX member path {name[:100]!r}")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise ValueError(f"member path {name[:100]!r} leaves the archive")
        if not parts:
            raise ValueError("a member has an empty path")
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise ValueError(f"more than one top-level entry ({self.top!r}, {parts[0]!r})")
        if len(parts) == 1 and not is_dir:
            raise ValueError(f"{name[:100]!r} is not in a top-level folder")
        return parts[1:]

    def link(self, name: str, target: str, *, symbolic: bool) -> None:
        """A symlink's target is relative to its folder, a hard link's to the archive root;
        either must stay inside the top-level folder."""
        if target.startswith("/") or "\\" in target:
            raise ValueError(f"link {name[:100]!r} points outside the sdist")
        base = posixpath.dirname(name) if symbolic else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved.split("/")[0] != self.top:
            raise ValueError(f"link {name[:100]!r} points outside the sdist")

    def found_pkg_info(self, size: int, read: Callable[[], bytes]) -> None:
        if self.pkg_info is not None:
            raise ValueError("more than one PKG-INFO in the top-level folder")
        if size > self.limits.pkg_info:
            raise ValueError("PKG-INFO is too large")
        self.pkg_info = read()


def _walk_tar(path: Path, walk: _Walk) -> None:
    with path.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        bounded = _Bounded(gz, walk.limits.unpacked)
        with tarfile.open(fileobj=bounded, mode="r|") as tf:  # type: ignore[call-overload]
            for member in tf:
                below = walk.member(member.name, is_dir=member.isdir())
                if member.issym() or member.islnk():
                    walk.link(member.name, member.linkname, symbolic=member.issym())
                elif not (member.isfile() or member.isdir()):
                    raise ValueError(f"special file {member.name[:100]!r} in the sdist")
                if below == ("PKG-INFO",) and member.isfile():
                    fh = tf.extractfile(member)
                    assert fh is not None  # a regular file always has a reader
                    walk.found_pkg_info(member.size, fh.read)
        while bounded.read(1 << 20):  # the rest of the gzip stream: its CRC is checked at EOF
            pass


def _zip_entries(raw: IO[bytes], size: int) -> int:
    """The entry count from the end-of-central-directory record, read before ``zipfile``
    parses the directory: a 1 GiB upload could declare 20 million entries (gigabytes of
    ZipInfo objects)."""
    tail_size = min(size, _ZIP_EOCD.size + 0xFFFF)
    raw.seek(size - tail_size)
    tail = raw.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _ZIP_EOCD.size > len(tail):
        raise zipfile.BadZipFile("no end of central directory record")
    entries = _ZIP_EOCD.unpack_from(tail, at)[4]
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
        eocd64_offset = _ZIP64_LOCATOR.unpack_from(tail, locator_at)[2]
        raw.seek(eocd64_offset)
        record = raw.read(_ZIP64_EOCD.size)
        if len(record) != _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise zipfile.BadZipFile("a broken zip64 directory")
        entries = _ZIP64_EOCD.unpack(record)[7]
    return int(entries)


def _walk_zip(path: Path, walk: _Walk) -> None:
    with path.open("rb") as raw:
        if _zip_entries(raw, path.stat().st_size) > walk.limits.members:
            raise ValueError(f"more than {walk.limits.members} members; refused as a zip bomb")
        raw.seek(0)
        with zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
            if sum(info.file_size for info in infos) > walk.limits.unpacked:
                raise ValueError("it unpacks to more than the limit; refused as a zip bomb")
            for info in infos:
                below = walk.member(info.filename, is_dir=info.is_dir())
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded
                if kind == stat.S_IFLNK:
                    if info.file_size > 4096:
                        raise ValueError(f"link {info.filename[:100]!r} is not a link")
                    target = zf.read(info).decode("utf-8", "replace")
                    walk.link(info.filename, target, symbolic=True)
                elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise ValueError(f"special file {info.filename[:100]!r} in the sdist")
                if below == ("PKG-INFO",) and not info.is_dir():
                    walk.found_pkg_info(info.file_size, functools.partial(zf.read, info))


def read_sdist_pkg_info(path: Path, filename: str, limits: SdistLimits | None = None) -> bytes:
    """Walk the sdist's members and return its top-level ``PKG-INFO`` (blocking).

    ``filename`` (as uploaded) picks the format: ``.zip`` for a legacy zip sdist, else a
    gzip tar. ValueError, with a one-line reason, when it is not a well-formed sdist.
    """
    walk = _Walk(limits or SdistLimits())
    try:
        if filename.endswith(".zip"):
            _walk_zip(path, walk)
        else:
            _walk_tar(path, walk)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        kind = "zip" if filename.endswith(".zip") else "gzip-compressed tar"
        raise ValueError(f"not a readable {kind} archive ({exc})") from exc
    except (UnicodeDecodeError, struct.error, NotImplementedError) as exc:
        raise ValueError(f"not a readable archive ({exc})") from exc
    if walk.top is None:
        raise ValueError("the archive is empty")
    if walk.pkg_info is None:
        raise ValueError(f"no PKG-INFO in the top-level folder {walk.top!r}")
    return walk.pkg_info
