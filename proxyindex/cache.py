"""The upstream cache on disk: project pages in diskcache, files in a content-addressed blob folder.

diskcache is process-safe, so several worker processes can share one cache folder. Blobs are
named by their sha256 and only ever created by an atomic rename after the hash was checked, so
a blob that exists is complete and correct. All methods block: call them in a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.models import ProjectPage

__all__ = ["BlobStore", "PageCache", "PageEntry"]

_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class PageEntry:
    """An upstream answer for one project: a page, or ``page=None`` for a 404."""

    page: ProjectPage | None
    fetched_at: float
    etag: str | None = None

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.fetched_at


class PageCache:
    def __init__(self, directory: Path) -> None:
        # No fsync per write (sqlite synchronous=OFF, WAL): a cache may lose its last writes
        # in a power cut, never its consistency; fsyncs made concurrent page writes queue.
        self._cache = diskcache.Cache(str(directory), sqlite_synchronous=0)

    def close(self) -> None:
        self._cache.close()

    def get(self, name: NormalizedName) -> PageEntry | None:
        try:
            value: Any = self._cache.get(("page", name))
        except Exception:  # an entry pickled by an older version: treat as a miss
            return None
        return value if isinstance(value, PageEntry) else None

    def put(self, name: NormalizedName, entry: PageEntry) -> None:
        self._cache.set(("page", name), entry)

    def blob_for_url(self, url: str) -> str | None:
        """The sha256 a file with no hash in its index was stored under, once downloaded."""
        value: Any = self._cache.get(("url", url))
        return value if isinstance(value, str) else None

    def remember_blob(self, url: str, sha256: str) -> None:
        self._cache.set(("url", url), sha256)


def is_sha256(value: str) -> bool:
    return len(value) == 64 and set(value) <= _SHA256_HEX


class BlobStore:
    """Immutable files by sha256: ``<root>/ab/cd/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / "tmp"
        self.lock_dir = root.parent / "locks"  # cross-process download locks (``downloads``)
        root.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def get(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        return path if path.is_file() else None

    def commit(self, temp: Path, sha256: str) -> Path:
        dest = self.path(sha256)
        fsutil.commit_replace(temp, dest, durable=False)  # a lost blob is fetched again
        return dest

    def put_bytes(self, data: bytes, sha256: str) -> Path:
        fh, temp = fsutil.open_temp(self.temp_dir)
        with fh:
            fh.write(data)
        return self.commit(temp, sha256)
