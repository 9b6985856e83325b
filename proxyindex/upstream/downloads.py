"""Single-flight, verified downloads of upstream files into the blob store.

However many clients ask for a file that is not cached yet, one upstream download runs. It
writes to a temp file, hashing as it goes; every client streams from that temp file as it grows.
Only when the length and sha256 match the index is the temp file renamed into the blob store;
otherwise it is deleted and every client's transfer is broken off, so a corrupt or short file is
never cached and never served whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from proxyindex import fsutil
from proxyindex.distname import release_of
from proxyindex.errors import (
    CacheFull,
    IntegrityError,
    Offline,
    UpstreamError,
    UpstreamUnavailable,
)
from proxyindex.lru import LRU
from proxyindex.metrics import Metrics
from proxyindex.models import DistFile
from proxyindex.upstream.background import Background
from proxyindex.upstream.cache import BlobStore, PageCache
from proxyindex.upstream.client import FileClients, mask_url

__all__ = ["CachedBlob", "Cursor", "Download", "Downloader", "FileRange"]

log = logging.getLogger(__name__)

Hasher = Any  # hashlib's sha256 object; its type is private

_READ_CHUNK = 64 * 1024
_WRITE_BATCH = 256 * 1024
_IN_MEMORY = 256 * 1024  # files up to this size are also kept in memory while downloading
# Uncached (full cache disk): bytes held in memory ahead of the slowest reader.
_UNCACHED_BUFFER = 4 << 20
_AHEAD_REMEMBERED = 10_000  # files fetched ahead, remembered to count prefetch hits
# A write that fails with these means the cache cannot take the file: send it uncached.
# EFBIG: larger than the file system (or RLIMIT_FSIZE) allows.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True, slots=True)
class FileRange:
    """The rest of a finished download: ``count`` bytes of ``file`` from ``offset``."""

    file: BinaryIO
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class CachedBlob:
    """A cached file, already open: an eviction that deletes it meanwhile cannot turn the
    answer into a 404 (see :meth:`BlobStore.open`)."""

    path: Path
    file: BinaryIO
    # Its fstat, taken in the same thread hop as the open: the response needs no second hop
    # to learn size and mtime (each hop costs a cached file's request ~0.3 ms on a busy host).
    stat: os.stat_result | None = None


class Download:
    """One upstream transfer in progress; readers follow it with :meth:`stream`.

    Readers share one read handle, opened on the temp file as soon as it exists (or on the
    cached blob): it survives the rename into the cache and an eviction that deletes the
    blob right after, so a reader that joined is never left without its file. The handle is
    closed once the transfer is over and the last :meth:`hold` is released.
    """

    def __init__(self, dist: DistFile) -> None:
        self.dist = dist
        self._temp: Path | None = None
        self._reader: BinaryIO | None = None
        self._holds = 1  # the transfer's own, released when it is over
        self._written = 0
        self._length: int | None = dist.size
        self._result: Path | None = None
        self._verified = False  # length and sha256 checked: the bytes may all go out
        # Small files (.metadata) are also kept here, so that readers need no file opens or
        # reads in threads: on a resolver's critical path, each thread hop costs ms under load.
        self._body: bytearray | None = None
        self._error: UpstreamError | None = None
        self._started = asyncio.Event()  # headers known (length) or failed
        self._progress = asyncio.Event()
        self._finished = asyncio.Event()
        # Uncached (the cache disk is full): bytes from ``spilled`` on are kept in ``tail``
        # (from offset ``tail_start``) only until every reader has sent them.
        self._uncached = False
        self._spilled = 0
        self._tail = bytearray()
        self._tail_start = 0
        self._cursors: list[Cursor] = []
        self._consumed = asyncio.Event()

    # --- the transfer's side: the transitions, in order ---------------------------------

    @property
    def temp(self) -> Path | None:
        return self._temp

    @property
    def written(self) -> int:
        return self._written

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def uncached(self) -> bool:
        return self._uncached

    @property
    def in_memory(self) -> bool:
        return self._body is not None

    def writing_to(self, temp: Path) -> None:
        """The temp file exists (it is removed if the download does not end in the cache)."""
        self._temp = temp

    def begin(self, length: int | None, *, in_memory: bool, reader: BinaryIO | None) -> None:
        """The upstream answered: its length, if it said; readers may start following."""
        self._length = length
        if in_memory:
            self._body = bytearray()
        self._reader = reader
        self._started.set()

    def from_cache(self, cached: CachedBlob) -> None:
        """The file was in the cache after all (another worker fetched it): readers read
        it from there."""
        self._reader = cached.file
        self._written = self._length = os.fstat(cached.file.fileno()).st_size
        self._verified = True

    def append(self, data: bytes) -> None:
        """Bytes hashed and written to the temp file."""
        self._written += len(data)
        if self._body is not None:
            self._body += data
        self._notify()

    def verified(self) -> None:
        """Length and sha256 checked: readers may send the last bytes now, while the file
        is committed."""
        self._verified = True
        self._notify()

    def fail(self, error: UpstreamError) -> None:
        self._error = error

    def finish(self, result: Path | None) -> None:
        """The transfer is over: ``result`` is the committed blob (None: failed or sent
        uncached)."""
        self._result = result
        self._started.set()
        self._finished.set()
        self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _note_consumed(self) -> None:
        self._consumed.set()
        self._consumed = asyncio.Event()

    async def begun(self) -> int | None:
        """Wait until the transfer has started: its length, if known; raises its error."""
        await self._started.wait()
        if self._error is not None:
            raise self._error
        return self._length

    async def wait(self) -> Path:
        """The committed blob; raises the download's error, or :class:`CacheFull` if the
        file was sent through uncached."""
        await self._finished.wait()
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise CacheFull(f"the cache disk is full: {self.dist.filename} was not stored")
        return self._result

    @contextlib.contextmanager
    def hold(self) -> Iterator[Cursor]:
        """Keep the shared read handle open while a reader uses it, and the reader's place
        (for :meth:`stream`). Enter it as soon as the download is obtained, before any
        ``await``: a fast transfer may end meanwhile."""
        self._holds += 1
        cursor = Cursor()
        self._cursors.append(cursor)
        try:
            yield cursor
        finally:
            self._cursors.remove(cursor)
            self._note_consumed()
            self.release()

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self._reader is not None:
            # Closing a read-only descriptor has nothing to flush: no thread hop needed.
            self._reader.close()
            self._reader = None

    async def read(self) -> bytes:
        """The whole file once verified, without waiting for it to be committed to the cache
        (an fsync): for small files, such as ``.metadata``, on a resolver's critical path."""
        parts: list[bytes] = []
        with self.hold() as cursor:
            async for part in self.stream(cursor):
                if isinstance(part, FileRange):
                    fd = part.file.fileno()
                    parts.append(await asyncio.to_thread(os.pread, fd, part.count, part.offset))
                else:
                    parts.append(part)
        return b"".join(parts)

    async def stream(self, cursor: Cursor) -> AsyncIterator[bytes | FileRange]:
        """The file's bytes as they arrive, then, once the download is verified, the rest:
        from memory for a small file, else one :class:`FileRange` (to send with sendfile).

        Raises if the download fails at any point. Chunks are small (64 KiB) because a
        hundred clients may be following one download, each holding a chunk in flight.
        ``cursor`` comes from :meth:`hold`; every reader reads the shared handle at its own
        offsets (pread, sendfile), never through its file position.
        """
        await self._started.wait()
        if self._error is not None:
            raise self._error
        fh = None if self._body is not None else self._reader
        assert self._body is not None or fh is not None or self._uncached
        while True:
            progress = self._progress
            sent = cursor.sent
            if self._error is not None:
                raise self._error
            if self._verified and fh is not None and not self._uncached:
                if sent < self._written:
                    cursor.sent = self._written
                    yield FileRange(fh, sent, self._written - sent)
                return
            # The last byte waits for the hash check: a client never holds a complete
            # body that turns out to be corrupt.
            end = self._written if self._verified else self._written - 1
            if end > sent:
                chunk = await self._chunk(fh, sent, min(end, sent + _READ_CHUNK))
                cursor.sent = sent + len(chunk)
                self._note_consumed()
                yield chunk
                continue
            if self._verified:
                return
            await progress.wait()

    async def _chunk(self, fh: BinaryIO | None, start: int, end: int) -> bytes:
        if self._body is not None:
            return bytes(self._body[start:end])
        if self._uncached and start >= self._spilled:
            return bytes(self._tail[start - self._tail_start : end - self._tail_start])
        if self._uncached:
            end = min(end, self._spilled)
        assert fh is not None
        return await asyncio.to_thread(os.pread, fh.fileno(), end - start, start)

    def go_uncached(self, why: OSError) -> None:
        """The cache disk is full: from byte ``written`` on, keep the file in memory only
        until every reader has sent it; it will not be stored."""
        if self._uncached:
            return
        self._uncached = True
        self._spilled = self._tail_start = self._written
        log.warning(
            "cannot store %s in the cache (%s): sending it uncached to %d client(s)",
            self.dist.filename,
            why.strerror or why,
            len(self._cursors),
        )

    def keep(self, data: bytes) -> None:
        """Add bytes that are hashed but not written to the temp file (uncached)."""
        if self._body is not None:
            self._body += data
        else:
            self._tail += data
        self._written += len(data)
        self._notify()

    def has_readers(self) -> bool:
        return bool(self._cursors)

    async def drained(self, limit: int) -> None:
        """Wait until at most ``limit`` bytes of the uncached tail are unsent by a reader:
        the slowest reader paces the upstream, and memory stays bounded."""
        while True:
            low = min((cursor.sent for cursor in self._cursors), default=self._written)
            if low > self._tail_start:
                del self._tail[: low - self._tail_start]
                self._tail_start = low
            if len(self._tail) <= limit:
                return
            await self._consumed.wait()


@dataclass(slots=True, eq=False)
class Cursor:
    """How far one reader of a :class:`Download` has got."""

    sent: int = 0


class Downloader:
    def __init__(
        self,
        blobs: BlobStore,
        pages: PageCache,
        upstream: FileClients,
        max_cache_size: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self._blobs = blobs
        self._metrics = metrics if metrics is not None else Metrics()
        # Keys of downloads the prefetcher started, True until a client first asks for one.
        self._ahead: LRU[str, bool] = LRU(_AHEAD_REMEMBERED)
        # Keys of every download started in this process (see :meth:`started_before`).
        self._started: LRU[str, bool] = LRU(_AHEAD_REMEMBERED)
        self._pages = pages
        self._max_cache_size = max_cache_size  # 0: no limit
        self._cache_size: int | None = None  # known after the first shrink check
        self._shrinking: asyncio.Task[None] | None = None
        self._added_while_shrinking = 0
        self._upstream = upstream
        self._active: dict[str, Download] = {}
        self._tasks = Background()
        self._lock_fd: int | None = None  # open for the process's life: closing drops locks

    async def get(self, dist: DistFile) -> CachedBlob | Download:
        """The one answer to "cached or running?": the download of ``dist`` running in this
        process (fetched ahead already: joined, no cache lookup), else the cached file,
        opened, else a new download."""
        download = self.running(dist)
        if download is not None:
            self._metrics.joined("file")
            self._count_prefetch_hit(dist)
            return download
        cached = await self._open_cached(dist)
        if cached is not None:
            self._metrics.cache_lookup("file", "hit")
            self._count_prefetch_hit(dist)
            return cached
        if self._upstream.config.offline:
            raise Offline(f"offline: file {dist.filename!r} is not in the cache")
        self._metrics.cache_lookup("file", "miss")
        return self.start(dist)

    def _count_prefetch_hit(self, dist: DistFile) -> None:
        """A client's first request for a file the prefetcher fetched ahead (in this process)."""
        key = _key(dist)
        if self._ahead.get(key):
            self._ahead.put(key, False)
            self._metrics.prefetch_hits.inc()

    async def cached(self, dist: DistFile) -> CachedBlob | None:
        """The cached file, opened, or None (no download is started)."""
        return await self._open_cached(dist)

    async def _open_cached(self, dist: DistFile) -> CachedBlob | None:
        sha256 = dist.sha256 or await self._pages.blob_for_url(dist.url)
        if not sha256:
            return None
        opened = await asyncio.to_thread(self._open_blob, sha256)
        return None if opened is None else CachedBlob(self._blobs.path(sha256), *opened)

    def _open_blob(self, sha256: str) -> tuple[BinaryIO, os.stat_result] | None:
        fh = self._blobs.open(sha256)
        if fh is None:
            return None
        try:
            return fh, os.fstat(fh.fileno())
        except OSError:
            fh.close()
            raise

    def started_before(self, dist: DistFile) -> bool:
        """Whether a download of ``dist`` was started in this process (running, done or
        failed; the last 10,000 remembered). Fetch-ahead skips those: a client that asked for
        the file has it, and one evicted since is not worth fetching again unasked."""
        return self._started.get(_key(dist)) is not None

    def running(self, dist: DistFile) -> Download | None:
        """The download of ``dist`` in progress in this process, if any."""
        return self._active.get(_key(dist))

    def start(self, dist: DistFile, *, ahead: bool = False) -> Download:
        """Join the running download of ``dist`` or start one (``ahead``: for the prefetcher,
        so that a client's later request for it counts as a prefetch hit)."""
        key = _key(dist)
        download = self._active.get(key)
        if download is None:
            self._started.put(key, True)
            if ahead:  # started by the prefetcher, not joined after a client started it
                self._ahead.put(key, True)
            download = Download(dist)
            self._active[key] = download
            self._tasks.spawn(self._run(download, key))
        return download

    async def close(self) -> None:
        await self._tasks.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, download: Download, key: str) -> None:
        lock = None
        result: Path | None = None
        self._metrics.downloads_in_flight.inc()
        try:
            lock = await self._lock(key)
            cached = await self._open_cached(download.dist)  # fetched by another worker?
            if cached is not None:
                download.from_cache(cached)
                result = cached.path
            else:
                result = await self._transfer(download)
        except UpstreamError as exc:
            download.fail(exc)
            log.warning("download failed: %s", exc)
        except Exception as exc:
            log.exception("download of %s failed", mask_url(download.dist.url))
            download.fail(UpstreamUnavailable(f"download failed: {exc.__class__.__name__}"))
        finally:
            self._metrics.downloads_in_flight.dec()
            download.finish(result)
            if self._active.get(key) is download:
                del self._active[key]
            if result is None and download.temp is not None:
                await asyncio.to_thread(download.temp.unlink, True)
            if lock is not None:
                self._unlock(lock)
            download.release()

    def _added(self, size: int) -> None:
        """Count a new blob; check the cache size limit when it may be exceeded.

        Blobs added while a shrink walks the folder are counted apart and added to what it
        leaves (a blob the walk also saw is counted twice: the next shrink, a walk, corrects
        that), and the shrink runs again while the total is over the limit. Before, the
        total a shrink returned overwrote them and no shrink followed: a burst of 63 first
        downloads left the cache at 2.6x its limit.
        """
        if not self._max_cache_size:
            return
        if self._shrinking is not None and not self._shrinking.done():
            self._added_while_shrinking += size
            return
        if self._cache_size is not None:
            self._cache_size += size
            if self._cache_size <= self._max_cache_size:
                return
        self._shrinking = self._tasks.spawn(self._shrink())

    async def _shrink(self) -> None:
        while True:
            self._added_while_shrinking = 0
            try:
                left = await asyncio.to_thread(self._blobs.shrink, self._max_cache_size)
            except OSError:
                log.exception("could not shrink the cache")
                self._cache_size = None  # the next addition walks the folder again
                return
            self._cache_size = left + self._added_while_shrinking
            if self._cache_size <= self._max_cache_size or left > self._max_cache_size:
                return  # under the limit, or nothing more could be deleted

    async def _append(
        self, download: Download, fh: BinaryIO | None, pending: bytearray, digest: Hasher
    ) -> bool:
        """Hash and write a batch in a thread (sha256 of a 17 MB wheel: ~40 ms of CPU).

        If the cache disk is full (or the file too large for it), the download goes on
        uncached (see :meth:`Download.go_uncached`). Returns False when there is no point
        going on: uncached, and nobody is reading (a file fetched ahead).
        """
        data = bytes(pending)
        pending.clear()
        if fh is not None and not download.uncached:
            try:
                await asyncio.to_thread(_hash_write_flush, fh, data, digest)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                self._uncached(download, exc)
                download.keep(data)  # already hashed: _hash_write_flush hashes first
            else:
                download.append(data)
                return True
        else:
            await asyncio.to_thread(digest.update, data)
            download.keep(data)
        if not download.in_memory and not download.has_readers():
            return False
        await download.drained(_UNCACHED_BUFFER)
        return True

    def _uncached(self, download: Download, why: OSError) -> None:
        """Switch ``download`` to uncached; new requests for the file start their own (its
        first bytes are gone from memory once its readers sent them)."""
        download.go_uncached(why)
        key = _key(download.dist)
        if self._active.get(key) is download:
            del self._active[key]

    async def _lock(self, key: str) -> int:
        """Lock the key's byte in the shared lock file, so that worker processes download a
        file once between them; polled, so a waiting download holds no thread. Returns the
        byte's offset.

        POSIX record locks belong to the process: downloads in this process never wait for
        each other (single flight already keeps them apart), where a per-stripe ``flock``
        made unrelated downloads whose keys shared a stripe queue behind each other.
        """
        if self._lock_fd is None:
            self._lock_fd = await asyncio.to_thread(_open_lock_file, self._blobs.lock_file)
        offset = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        while True:
            try:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                return offset
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
                await asyncio.sleep(0.02)

    def _unlock(self, offset: int) -> None:
        if self._lock_fd is not None:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, offset)

    async def _transfer(self, download: Download) -> Path | None:
        """Fetch, verify and store ``download``; None if it was sent through uncached."""
        dist = download.dist
        # The temp file is created while the upstream answers, not before asking: creating
        # a file can take ms (ext4 right after deletions) on every cold download's path.
        opening = asyncio.ensure_future(asyncio.to_thread(fsutil.open_temp, self._blobs.temp_dir))
        fh: BinaryIO | None = None
        digest = hashlib.sha256()
        try:
            client = await self._upstream.client_for(dist)
            async with client.open_file(dist.url) as upstream:
                try:
                    fh, temp = await opening
                    download.writing_to(temp)
                except OSError as exc:
                    if exc.errno not in DISK_FULL:
                        raise
                    self._uncached(download, exc)
                length = dist.size
                if upstream.length is not None:
                    if dist.size is not None and dist.size != upstream.length:
                        raise IntegrityError(
                            f"{dist.filename}: upstream sends {upstream.length} bytes, "
                            f"the index says {dist.size}"
                        )
                    length = upstream.length
                in_memory = length is not None and length <= _IN_MEMORY
                reader = None
                if not in_memory and download.temp is not None:
                    reader = await asyncio.to_thread(download.temp.open, "rb")
                download.begin(length, in_memory=in_memory, reader=reader)
                pending = bytearray()
                async for chunk in upstream.chunks:
                    pending += chunk
                    # One thread hop per batch, not per read.
                    if len(pending) >= _WRITE_BATCH and not await self._append(
                        download, fh, pending, digest
                    ):
                        return None
                if pending and not await self._append(download, fh, pending, digest):
                    return None
        finally:
            if fh is None:  # the upstream failed first: drop the temp file once it exists
                await _discard(opening)
            elif download.uncached:  # the buffer still holds bytes that cannot be written
                await asyncio.to_thread(_close_quietly, fh)
            else:
                await asyncio.to_thread(fh.close)
        if download.length is not None and download.written != download.length:
            raise IntegrityError(
                f"{dist.filename}: got {download.written} of {download.length} bytes"
            )
        actual = digest.hexdigest()
        if dist.sha256 is not None and actual != dist.sha256:
            raise IntegrityError(f"{dist.filename}: sha256 {actual} does not match the index")
        download.verified()
        if download.uncached:
            return None
        assert download.temp is not None
        released = release_of(dist.filename)  # the project it counts for (the UI's cache page)
        project = released.name if released is not None else None
        blob = await asyncio.to_thread(self._blobs.commit, download.temp, actual, project)
        self._added(download.written)
        if dist.sha256 is None:
            try:
                await self._pages.remember_blob(dist.url, actual)
            except Exception as exc:  # sqlite on a full disk: the file is fetched again later
                log.warning("could not remember the hash of %s: %s", mask_url(dist.url), exc)
        return blob


def _key(dist: DistFile) -> str:
    return dist.sha256 or dist.url


async def _discard(opening: asyncio.Future[tuple[BinaryIO, Path]]) -> None:
    try:
        fh, temp = await asyncio.shield(opening)
    except Exception:
        return
    await asyncio.to_thread(_close_and_remove, fh, temp)


def _close_quietly(fh: BinaryIO) -> None:
    with contextlib.suppress(OSError):
        fh.close()


def _close_and_remove(fh: BinaryIO, temp: Path) -> None:
    fh.close()
    temp.unlink(missing_ok=True)


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR, 0o644)


def _hash_write_flush(fh: BinaryIO, chunk: bytes, digest: Hasher) -> None:
    digest.update(chunk)
    fh.write(chunk)
    fh.flush()
