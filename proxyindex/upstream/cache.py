"""The upstream cache on disk: project pages in diskcache, files in a content-addressed blob folder.

diskcache is process-safe, so several worker processes can share one cache folder. Blobs are
named by their sha256 and only ever created by an atomic rename after the hash was checked, so
a blob that exists is complete and correct. ``PageCache`` is async (its own threads); the
``BlobStore`` methods block: call them in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.cpulane import FILE_COST, CpuLane
from proxyindex.diskstore import open_cache
from proxyindex.models import ProjectPage
from proxyindex.upstream.blobindex import BlobIndex

__all__ = ["BlobStore", "PageCache", "PageEntry"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_EVICT_BATCH = 256  # least recently used blobs read from the index at a time
_TOUCH_EVERY = 3600  # seconds: how stale a blob's recorded last use may get
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class PageEntry:
    """An upstream answer for one project: a page, or ``page=None`` for a 404."""

    page: ProjectPage | None
    fetched_at: float
    etag: str | None = None

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.fetched_at


# A page write's place in the CPU lane: after the parses and renders of pages up to this size
# (PyPI's biggest pages, pydantic-core's 7 MB, come after it: their parse is worth waiting for).
_WRITE_AFTER = 4 << 20


class PageCache:
    """Upstream pages in diskcache, read and written through two threads of its own.

    diskcache opens a sqlite connection per thread, and opening one costs milliseconds: on a
    cold start 20 parallel page requests through the shared pool made 20 connections and took
    ~95 ms instead of ~60. Two dedicated threads keep two connections warm.
    """

    def __init__(self, directory: Path, cpu: CpuLane | None = None) -> None:
        # No fsync per write (sqlite synchronous=OFF, WAL): a cache may lose its last writes
        # in a power cut, never its consistency; fsyncs made concurrent page writes queue.
        self._cache = open_cache(directory, sqlite_synchronous=0)
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pagecache")
        # Pages are written by a thread of their own: pickling and writing a PyPI-sized page
        # takes 15-45 ms, and lookups (a ``.metadata`` request's first step) must not wait
        # behind those writes on the two threads while a resolver's first pages come in.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagecache-write")
        # With the app's CPU lane, pages are written there, after the pages waiting to be
        # parsed and rendered: in a cold ``uv pip install`` against PyPI the writer thread
        # pickled for 0.4 s of the run, a third thread taking the GIL from the event loop and
        # the lane while the client waited for pages; the disk copy is for later.
        self._cpu = cpu
        self._kind = "page"  # the key's first part: ("page", name)
        self._owner = True
        # The names with a page on disk, once listed by ``load_names``: asking for any other
        # name is a miss without a thread hop (a cold resolution's first 20 page lookups
        # queued 3-8 ms on the two threads). Only this process's writes are added to it.
        self._names: set[str] | None = None
        self._stored_while_listing: set[str] = set()

    def namespace(self, upstream: str) -> PageCache:
        """The same store, with the pages of one more upstream kept apart under
        ``("page@<upstream>", name)``: the default upstream keeps ``("page", name)``, so a
        cache folder written before several upstreams existed stays valid. The file hashes
        and metadata records stay shared (keyed by URL and sha256, never ambiguous)."""
        view = copy.copy(self)
        view._kind = f"page@{upstream}"
        view._owner = False
        view._names = None
        view._stored_while_listing = set()
        return view

    def close(self) -> None:
        if not self._owner:
            return  # a namespace: the store it shares is closed by its owner
        self._writer.shutdown(wait=True)
        self._threads.shutdown(wait=True)
        self._cache.close()

    @property
    def store(self) -> Any:
        """The diskcache itself, for blocking maintenance in a thread (``maintenance``)."""
        return self._cache

    async def _call(self, func: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, func, *args)

    def _get(self, name: NormalizedName) -> PageEntry | None:
        try:
            value: Any = self._cache.get((self._kind, name))
        except Exception:  # an entry pickled by an older version: treat as a miss
            return None
        return value if isinstance(value, PageEntry) else None

    def _list_names(self) -> set[str]:
        return {
            key[1]
            for key in self._cache.iterkeys()
            if isinstance(key, tuple) and len(key) == 2 and key[0] == self._kind
        }

    async def load_names(self) -> None:
        """List the cached pages' names (once, at start, in the background)."""
        names = await self._call(self._list_names)
        self._names = names | self._stored_while_listing
        self._stored_while_listing = set()

    async def get(self, name: NormalizedName, *, any_writer: bool = False) -> PageEntry | None:
        """The stored entry; ``any_writer`` also finds pages that another worker process
        stored since this one listed the names (worth a lookup when the upstream fails)."""
        if not any_writer and self._names is not None and name not in self._names:
            return None
        return await self._call(self._get, name)

    async def put(self, name: NormalizedName, entry: PageEntry) -> None:
        if self._names is not None:
            self._names.add(name)
        else:
            self._stored_while_listing.add(name)
        key = (self._kind, name)
        if self._cpu is not None:
            files = len(entry.page.files) if entry.page is not None else 0
            await self._cpu.run(_WRITE_AFTER + files * FILE_COST, self._cache.set, key, entry)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._cache.set, key, entry)

    def _served_by(self, name: NormalizedName) -> str | None:
        value: Any = self._cache.get(("served-by", name))
        return value if isinstance(value, str) else None

    async def served_by(self, name: NormalizedName) -> str | None:
        """The upstream that last served ``name`` (routing's memory across restarts)."""
        return await self._call(self._served_by, name)

    async def remember_served_by(self, name: NormalizedName, upstream: str) -> None:
        await self._call(self._cache.set, ("served-by", name), upstream)

    def served_names(self, upstream: str) -> set[str]:
        """Blocking: the names remembered as served by ``upstream`` (for the root list of an
        upstream without a usable one of its own)."""
        names = set()
        for key in self._cache.iterkeys():
            if isinstance(key, tuple) and len(key) == 2 and key[0] == "served-by":
                value: Any = self._cache.get(key)
                if value == upstream:
                    names.add(key[1])
        return names

    def _blob_for_url(self, url: str) -> str | None:
        value: Any = self._cache.get(("url", url))
        return value if isinstance(value, str) else None

    async def blob_for_url(self, url: str) -> str | None:
        """The sha256 a file with no hash in its index was stored under, once downloaded."""
        return await self._call(self._blob_for_url, url)

    async def remember_blob(self, url: str, sha256: str) -> None:
        await self._call(self._cache.set, ("url", url), sha256)

    def _metadata_for(self, wheel: str) -> str | None:
        value: Any = self._cache.get(("metadata", wheel))
        return value if isinstance(value, str) else None

    async def metadata_for(self, wheel: str) -> str | None:
        """The sha256 of the METADATA blob read out of a wheel (by its sha256, or URL if the
        index gave none), for wheels whose upstream has no ``.metadata`` file."""
        return await self._call(self._metadata_for, wheel)

    async def remember_metadata(self, wheel: str, sha256: str) -> None:
        await self._call(self._cache.set, ("metadata", wheel), sha256)


def is_sha256(value: str) -> bool:
    return len(value) == 64 and set(value) <= _SHA256_HEX


class BlobStore:
    """Immutable files by sha256: ``<root>/ab/<sha256>`` (one level: at most 256 folders to
    create, off the readers' path since they are served before the commit).

    With a size limit, the least recently used blobs are deleted when the total goes over it
    (:meth:`shrink`). Sizes, last uses and the total are kept in an index (``blobindex``,
    shared by the worker processes), so a shrink costs O(evicted), never a walk. Use is
    recorded there and in the file's atime, by :meth:`open` at most once an hour per file, so
    it works on relatime/noatime mounts and leaves mtime (and so the ETag clients saw) alone.
    Private packages live elsewhere and are never touched.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / "tmp"
        self.lock_file = root.parent / "downloads.lock"  # shared by worker processes
        new = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(exist_ok=True)
        self._index = BlobIndex(root.parent / "blob-index.sqlite")
        if new and not self._index.built:
            self._index.rebuild(())  # a folder created just now: nothing to walk, ever

    def close(self) -> None:
        self._index.close()

    @property
    def index(self) -> BlobIndex:
        """The size and recency index (totals and per-project usage, without a walk)."""
        return self._index

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def open(self, sha256: str) -> BinaryIO | None:
        """The blob, opened for reading (and its use recorded), or None if it is not cached.

        Serve from this handle, not from the path: eviction (here or in another worker) may
        delete the file at any moment, and on POSIX an open file stays readable after its
        unlink, where a path looked up a moment earlier answers 404.
        """
        try:
            fh = self.path(sha256).open("rb")
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fh.fileno())
            now = time.time()
            if now - st.st_atime > _TOUCH_EVERY:
                with contextlib.suppress(OSError):
                    os.utime(fh.fileno(), (now, st.st_mtime))
                self._index.touch(sha256, st.st_size, now)
        except BaseException:
            fh.close()
            raise
        return fh

    def _blobs(self) -> list[tuple[float, int, Path]]:
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            if Path(dirpath) == self.temp_dir:
                continue
            for name in files:
                if is_sha256(name):
                    path = Path(dirpath) / name
                    with contextlib.suppress(FileNotFoundError):
                        st = path.stat()
                        found.append((st.st_atime, st.st_size, path))
        return found

    def ensure_indexed(self) -> None:
        """Index a folder written before the index existed (blocking: a walk, once)."""
        if not self._index.built:
            started = time.monotonic()
            found = self._blobs()
            self._index.rebuild((path.name, size, atime) for atime, size, path in found)
            log.info("indexed %d cached files in %.1fs", len(found), time.monotonic() - started)

    def shrink(self, max_size: int) -> int:
        """Delete least recently used blobs until the total is 90% of ``max_size`` (if it was
        over); returns the total left. Blocking: reads the index (a walk of the folder only
        if the index was missing), then one unlink per evicted blob."""
        self.ensure_indexed()
        total = self._index.total()
        if total <= max_size:
            return total
        target = max_size * 9 // 10
        while total > target:
            oldest = self._index.oldest(_EVICT_BATCH)
            if not oldest:
                break
            evicted = []
            for sha256, size in oldest:
                if total <= target:
                    break
                if is_sha256(sha256):  # a reader with the file open keeps reading it
                    self.path(sha256).unlink(missing_ok=True)
                evicted.append(sha256)
                total -= size
            self._index.remove(*evicted)
        # What this shrink left of the total it read (blobs added meanwhile are the
        # caller's to count, as with the walk this replaced).
        log.info("cache over %d bytes: evicted down to %d", max_size, total)
        return total

    def commit(self, temp: Path, sha256: str, project: str | None = None) -> Path:
        """Move ``temp`` into place as blob ``sha256``, counted for ``project`` (the one it
        was downloaded for) in the index."""
        dest = self.path(sha256)
        # Indexed first: a crash in between leaves a row without a blob, never a blob
        # eviction cannot see.
        self._index.add(sha256, temp.stat().st_size, project)
        try:
            fsutil.commit_replace(temp, dest, durable=False)  # a lost blob is fetched again
        except BaseException:
            if not dest.exists():
                self._index.remove(sha256)
            raise
        return dest
