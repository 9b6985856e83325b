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
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from proxyindex import fsutil
from proxyindex.cache import BlobStore, PageCache
from proxyindex.errors import IntegrityError, UpstreamError, UpstreamUnavailable
from proxyindex.models import DistFile
from proxyindex.upstream import UpstreamClient, mask_url

__all__ = ["Download", "Downloader", "FileRange"]

log = logging.getLogger(__name__)

Hasher = Any  # hashlib's sha256 object; its type is private

_READ_CHUNK = 64 * 1024
_WRITE_BATCH = 256 * 1024
_IN_MEMORY = 256 * 1024  # files up to this size are also kept in memory while downloading


@dataclass(frozen=True, slots=True)
class FileRange:
    """The rest of a finished download: ``count`` bytes of ``file`` from ``offset``."""

    file: BinaryIO
    offset: int
    count: int


class Download:
    """One upstream transfer in progress; readers follow it with :meth:`stream`.

    Readers share one read handle, opened on the temp file as soon as it exists (or on the
    cached blob): it survives the rename into the cache and an eviction that deletes the
    blob right after, so a reader that joined is never left without its file. The handle is
    closed once the transfer is over and the last :meth:`hold` is released.
    """

    def __init__(self, dist: DistFile) -> None:
        self.dist = dist
        self.temp: Path | None = None
        self.reader: BinaryIO | None = None
        self._holds = 1  # the transfer's own, released when it is over
        self.written = 0
        self.length: int | None = dist.size
        self.result: Path | None = None
        self.verified = False  # length and sha256 checked: the bytes may all go out
        # Small files (.metadata) are also kept here, so that readers need no file opens or
        # reads in threads: on a resolver's critical path, each thread hop costs ms under load.
        self.body: bytearray | None = None
        self.error: UpstreamError | None = None
        self.started = asyncio.Event()  # headers known (length) or failed
        self._progress = asyncio.Event()
        self.finished = asyncio.Event()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait(self) -> Path:
        """The committed blob; raises the download's error."""
        await self.finished.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the shared read handle open while a reader uses it. Enter it as soon as the
        download is obtained, before any ``await``: a fast transfer may end meanwhile."""
        self._holds += 1
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self.reader is not None:
            # Closing a read-only descriptor has nothing to flush: no thread hop needed.
            self.reader.close()
            self.reader = None

    async def read(self) -> bytes:
        """The whole file once verified, without waiting for it to be committed to the cache
        (an fsync): for small files, such as ``.metadata``, on a resolver's critical path."""
        parts: list[bytes] = []
        with self.hold():
            async for part in self.stream():
                if isinstance(part, FileRange):
                    fd = part.file.fileno()
                    parts.append(await asyncio.to_thread(os.pread, fd, part.count, part.offset))
                else:
                    parts.append(part)
        return b"".join(parts)

    async def stream(self) -> AsyncIterator[bytes | FileRange]:
        """The file's bytes as they arrive, then, once the download is verified, the rest:
        from memory for a small file, else one :class:`FileRange` (to send with sendfile).

        Raises if the download fails at any point. Chunks are small (64 KiB) because a
        hundred clients may be following one download, each holding a chunk in flight.
        The caller holds the download (:meth:`hold`); every reader reads the shared handle
        at its own offsets (pread, sendfile), never through its file position.
        """
        await self.started.wait()
        if self.error is not None:
            raise self.error
        fh = None if self.body is not None else self.reader
        assert self.body is not None or fh is not None
        sent = 0
        while True:
            progress = self._progress
            if self.error is not None:
                raise self.error
            if self.verified and fh is not None:
                if sent < self.written:
                    yield FileRange(fh, sent, self.written - sent)
                return
            # The last byte waits for the hash check: a client never holds a complete
            # body that turns out to be corrupt.
            end = self.written if self.verified else self.written - 1
            if end > sent:
                if self.body is not None:
                    chunk = bytes(self.body[sent:end])
                else:
                    assert fh is not None
                    size = min(end - sent, _READ_CHUNK)
                    chunk = await asyncio.to_thread(os.pread, fh.fileno(), size, sent)
                sent += len(chunk)
                yield chunk
                continue
            if self.verified:
                return
            await progress.wait()


class Downloader:
    def __init__(
        self,
        blobs: BlobStore,
        pages: PageCache,
        upstream: UpstreamClient,
        max_cache_size: int = 0,
    ) -> None:
        self._blobs = blobs
        self._pages = pages
        self._max_cache_size = max_cache_size  # 0: no limit
        self._cache_size: int | None = None  # known after the first shrink check
        self._shrinking: asyncio.Task[None] | None = None
        self._added_while_shrinking = 0
        self._upstream = upstream
        self._active: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock_fd: int | None = None  # open for the process's life: closing drops locks

    def running(self, dist: DistFile) -> Download | None:
        """The download of ``dist`` in progress in this process, if any."""
        return self._active.get(_key(dist))

    def start(self, dist: DistFile) -> Download:
        """Join the running download of ``dist`` or start one."""
        key = _key(dist)
        download = self._active.get(key)
        if download is None:
            download = Download(dist)
            self._active[key] = download
            task = asyncio.create_task(self._run(download, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return download

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, download: Download, key: str) -> None:
        lock = None
        try:
            lock = await self._lock(key)
            if not await self._already_cached(download):  # fetched by another worker?
                download.result = await self._transfer(download)
        except UpstreamError as exc:
            download.error = exc
            log.warning("download failed: %s", exc)
        except Exception as exc:
            log.exception("download of %s failed", mask_url(download.dist.url))
            download.error = UpstreamUnavailable(f"download failed: {exc.__class__.__name__}")
        finally:
            download.started.set()
            download.finished.set()
            download._notify()
            self._active.pop(key, None)
            if download.result is None and download.temp is not None:
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
        self._shrinking = asyncio.create_task(self._shrink())
        self._tasks.add(self._shrinking)
        self._shrinking.add_done_callback(self._tasks.discard)

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

    @staticmethod
    async def _append(download: Download, fh: BinaryIO, pending: bytearray, digest: Hasher) -> None:
        """Hash and write a batch in a thread (sha256 of a 17 MB wheel: ~40 ms of CPU)."""
        data = bytes(pending)
        pending.clear()
        await asyncio.to_thread(_hash_write_flush, fh, data, digest)
        download.written += len(data)
        if download.body is not None:
            download.body += data
        download._notify()

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

    async def _already_cached(self, download: Download) -> bool:
        """Serve ``download`` from the cache if the file is there (opened: see Download)."""
        dist = download.dist
        sha256 = dist.sha256 or await self._pages.blob_for_url(dist.url)
        if not sha256:
            return False
        fh = await asyncio.to_thread(self._blobs.open, sha256)
        if fh is None:
            return False
        download.reader = fh
        download.result = self._blobs.path(sha256)
        download.written = download.length = os.fstat(fh.fileno()).st_size
        download.verified = True
        return True

    async def _transfer(self, download: Download) -> Path:
        dist = download.dist
        # The temp file is created while the upstream answers, not before asking: creating
        # a file can take ms (ext4 right after deletions) on every cold download's path.
        opening = asyncio.ensure_future(asyncio.to_thread(fsutil.open_temp, self._blobs.temp_dir))
        fh: BinaryIO | None = None
        digest = hashlib.sha256()
        try:
            async with self._upstream.open_file(dist.url) as upstream:
                fh, download.temp = await opening
                if upstream.length is not None:
                    if dist.size is not None and dist.size != upstream.length:
                        raise IntegrityError(
                            f"{dist.filename}: upstream sends {upstream.length} bytes, "
                            f"the index says {dist.size}"
                        )
                    download.length = upstream.length
                if download.length is not None and download.length <= _IN_MEMORY:
                    download.body = bytearray()
                else:
                    download.reader = await asyncio.to_thread(download.temp.open, "rb")
                download.started.set()
                pending = bytearray()
                async for chunk in upstream.chunks:
                    pending += chunk
                    if len(pending) >= _WRITE_BATCH:  # one thread hop per batch, not per read
                        await self._append(download, fh, pending, digest)
                if pending:
                    await self._append(download, fh, pending, digest)
        finally:
            if fh is None:  # the upstream failed first: drop the temp file once it exists
                await _discard(opening)
            else:
                await asyncio.to_thread(fh.close)
        if download.length is not None and download.written != download.length:
            raise IntegrityError(
                f"{dist.filename}: got {download.written} of {download.length} bytes"
            )
        actual = digest.hexdigest()
        if dist.sha256 is not None and actual != dist.sha256:
            raise IntegrityError(f"{dist.filename}: sha256 {actual} does not match the index")
        # Verified: readers may send the last bytes now, while the file is committed.
        download.verified = True
        download._notify()
        assert download.temp is not None
        blob = await asyncio.to_thread(self._blobs.commit, download.temp, actual)
        self._added(download.written)
        if dist.sha256 is None:
            await self._pages.remember_blob(dist.url, actual)
        return blob


def _key(dist: DistFile) -> str:
    return dist.sha256 or dist.url


async def _discard(opening: asyncio.Future[tuple[BinaryIO, Path]]) -> None:
    try:
        fh, temp = await asyncio.shield(opening)
    except Exception:
        return
    await asyncio.to_thread(_close_and_remove, fh, temp)


def _close_and_remove(fh: BinaryIO, temp: Path) -> None:
    fh.close()
    temp.unlink(missing_ok=True)


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR, 0o644)


def _hash_write_flush(fh: BinaryIO, chunk: bytes, digest: Hasher) -> None:
    digest.update(chunk)
    fh.write(chunk)
    fh.flush()
