"""PEP 658 ``.metadata`` for upstream wheels whose index has none: read out of the wheel.

Pages advertise ``core-metadata`` for every upstream wheel (``simple.advertised_metadata``), so
resolvers never download a whole wheel for its dependencies. The METADATA comes from the cached
wheel when it is held; else from HTTP Range requests on the upstream file (the end of the zip,
then the one member: what uv and pip do for "lazy wheels"); else, when the upstream ignores
Range or the zip is unusual, from the normal verified download of the whole wheel. The result
is cached as a blob (by its own sha256) with a mapping wheel -> metadata blob in the page cache.
One extraction per wheel at a time in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from proxyindex.errors import CacheFull, NotFound, Offline, UpstreamUnavailable
from proxyindex.models import DistFile
from proxyindex.upstream import lazywheel
from proxyindex.upstream.background import Background
from proxyindex.upstream.cache import BlobStore, PageCache
from proxyindex.upstream.client import FileClients, UpstreamClient, mask_url
from proxyindex.upstream.downloads import Downloader

__all__ = ["WheelMetadata"]

log = logging.getLogger(__name__)

_MAX_DIRECTORY = 16 << 20  # a central directory larger than this: read the whole wheel
_LOCAL_SLACK = 64 * 1024  # room for the local header's name and extra field


class WheelMetadata:
    def __init__(
        self,
        blobs: BlobStore,
        pages: PageCache,
        upstream: FileClients,
        downloader: Downloader,
    ) -> None:
        self._blobs = blobs
        self._pages = pages
        self._upstream = upstream
        self._downloader = downloader
        self._active: dict[str, asyncio.Task[bytes]] = {}
        # Extracted and answered, being written to the cache: served from here meanwhile.
        self._storing: dict[str, bytes] = {}
        self._tasks = Background()

    async def close(self) -> None:
        await self._tasks.close()

    async def get(self, dist: DistFile) -> bytes:
        """The exact bytes of the wheel's ``*.dist-info/METADATA``; NotFound if the wheel has
        none (it is broken), UpstreamError if the upstream fails."""
        key = dist.sha256 or dist.url
        storing = self._storing.get(key)
        if storing is not None:
            return storing
        task = self._active.get(key)
        if task is None:
            task = self._tasks.spawn(self._extract(dist, key))
            self._active[key] = task
            task.add_done_callback(lambda _t: self._active.pop(key, None))
        return await asyncio.shield(task)  # a client that leaves does not cancel the others

    async def _extract(self, dist: DistFile, key: str) -> bytes:
        data: bytes | None = None
        known = await self._pages.metadata_for(key)
        if known is not None:
            data = await asyncio.to_thread(self._read_blob, known)
            if data is not None:
                return data
        running = self._downloader.running(dist)
        if running is not None and (running.length is None or running.written < running.length):
            running = None  # still arriving (a prefetch): three ranges beat waiting for it all
        cached = None if running is not None else await self._downloader.cached(dist)
        if running is not None:  # all bytes in, being verified and committed: read it then
            with contextlib.suppress(CacheFull):  # sent uncached: ranges, then
                data = await self._from_wheel(await running.wait(), dist)
        elif cached is not None:
            data = await self._from_wheel(cached.file, dist)
        if data is None and self._upstream.config.offline:
            raise Offline(f"offline: the metadata of {dist.filename!r} is not in the cache")
        if data is None:
            data = await self._from_ranges(dist)
        if data is None:  # ranges ignored or an unusual zip: the whole wheel, cached
            path = await self._downloader.start(dist).wait()
            data = await self._from_wheel(path, dist)
        # The client has its answer now; the blob (a file written and renamed) and its record
        # (a sqlite write) follow in the background, off the path uv's parallel requests wait on.
        self._storing[key] = data
        self._tasks.spawn(self._keep(key, data, dist.filename))
        return data

    async def _keep(self, key: str, data: bytes, filename: str) -> None:
        try:
            sha256 = hashlib.sha256(data).hexdigest()
            await asyncio.to_thread(self._store, data, sha256)
            await self._pages.remember_metadata(key, sha256)
        except Exception as exc:  # a full disk, sqlite: served anyway, extracted again later
            log.warning("could not cache the metadata of %s: %s", filename, exc)
        finally:
            self._storing.pop(key, None)

    async def _from_wheel(self, wheel: Path | BinaryIO, dist: DistFile) -> bytes:
        """From the whole wheel: its blob's path, or an open handle (closed here), which an
        eviction meanwhile cannot take away."""
        try:
            return await asyncio.to_thread(_read_metadata, wheel)
        except lazywheel.BrokenWheel as exc:
            raise NotFound(f"{dist.filename} has no usable METADATA: {exc}") from exc
        except OSError as exc:
            raise UpstreamUnavailable(f"could not read the cached {dist.filename}: {exc}") from exc

    async def _from_ranges(self, dist: DistFile) -> bytes | None:
        """METADATA through Range requests; None to fall back to the whole wheel."""
        url = dist.url
        client = await self._upstream.client_for(dist)
        try:
            size = lazywheel.TAIL_SIZE
            got = await client.read_range(url, f"-{size}", size)
            if got is None:
                return None
            tail_start, tail, total = got
            if tail_start + len(tail) != total:
                raise lazywheel.Unsupported("the suffix range was not the end of the file")
            where = lazywheel.parse_tail(tail, total)
            directory: bytes | None
            if where.offset >= tail_start:
                start = where.offset - tail_start
                directory = tail[start : start + where.size]
            elif where.size > _MAX_DIRECTORY:
                raise lazywheel.Unsupported("central directory too large")
            else:
                directory = await self._range(
                    client, url, where.offset, where.offset + where.size - 1
                )
            if directory is None:
                return None
            member = lazywheel.find_metadata(lazywheel.parse_directory(directory))
            end = min(total, member.header_offset + member.compressed_size + _LOCAL_SLACK)
            if member.header_offset >= tail_start:
                # Already read: build backends write the .dist-info last, just before the
                # directory, so a wheel's METADATA is usually in the suffix range (and a wheel
                # under 64 kB is in it whole): one round trip to the files host, not two.
                chunk: bytes | None = tail[member.header_offset - tail_start : end - tail_start]
            else:
                chunk = await self._range(client, url, member.header_offset, end - 1)
            if chunk is None:
                return None
            return lazywheel.inflate(member, lazywheel.member_data(member, chunk))
        except lazywheel.Unsupported as exc:
            log.info("reading all of %s for its METADATA: %s", mask_url(url), exc)
            return None
        except lazywheel.BrokenWheel as exc:
            raise NotFound(f"{dist.filename} has no usable METADATA: {exc}") from exc

    async def _range(self, client: UpstreamClient, url: str, first: int, last: int) -> bytes | None:
        """Bytes ``first..last`` (inclusive); None if the upstream ignores ranges."""
        got = await client.read_range(url, f"{first}-{last}", last - first + 1)
        if got is None:
            return None
        if got[0] != first:
            raise lazywheel.Unsupported("the upstream sent another range than asked")
        return got[1]

    def _read_blob(self, sha256: str) -> bytes | None:
        fh = self._blobs.open(sha256)
        if fh is None:
            return None
        with fh:
            data = fh.read(lazywheel.MAX_METADATA + 1)
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def _store(self, data: bytes, sha256: str) -> None:
        fd, name = tempfile.mkstemp(dir=self._blobs.temp_dir, prefix="metadata-")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            self._blobs.commit(temp, sha256)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


def _read_metadata(wheel: Path | BinaryIO) -> bytes:
    """The exact bytes of the wheel's one top-level ``*.dist-info/METADATA`` (the rule of
    ``private.storage.read_wheel_metadata``); BrokenWheel if unusable. A handle is closed."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [
                n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(names) != 1:
                raise lazywheel.BrokenWheel("a wheel must hold exactly one .dist-info/METADATA")
            info = zf.getinfo(names[0])
            if info.file_size > lazywheel.MAX_METADATA:
                raise lazywheel.BrokenWheel("METADATA is too large")
            return zf.read(info)
    except (zipfile.BadZipFile, KeyError, zlib.error) as exc:
        raise lazywheel.BrokenWheel(f"not a readable wheel: {exc}") from exc
    finally:
        if not isinstance(wheel, Path):
            wheel.close()
