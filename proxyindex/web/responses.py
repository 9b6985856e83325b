"""HTTP response helpers shared by the views: conditional requests, stored files and files
followed while their one upstream download runs."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from io import BufferedReader
from pathlib import Path
from typing import BinaryIO, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import _FileResponseResult
from multidict import CIMultiDict

from proxyindex.upstream.downloads import Cursor, Download, FileRange

__all__ = [
    "IMMUTABLE",
    "PRIVATE_IMMUTABLE",
    "FollowedDownload",
    "StoredFile",
    "etag_matches",
    "not_modified",
    "range_applies",
    "send_range",
]

IMMUTABLE = "public, max-age=31536000, immutable"  # files never change (F-06)
# Behind a login: a shared cache (a CDN, a corporate proxy) must not keep a copy to serve
# to anyone; the client's own cache may (RFC 9111 5.2.2.7).
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"
_PREAD_CHUNK = 256 * 1024
_BYTE_RANGE_SPEC = re.compile(r"(?:[0-9]+-[0-9]*|-[0-9]+)\Z")


def range_applies(method: str, value: str) -> bool:
    """Whether a ``Range`` header is one a server must act on (RFC 9110 §14.2): on a GET,
    in the ``bytes`` unit, with a syntactically valid range set. Anything else is ignored
    (200 with the whole file), where aiohttp answers 416 to ``bytes=abc`` or ``pages=1-2``.
    A valid range that the file cannot satisfy still gets its 416."""
    if method != "GET":
        return False
    unit, sep, ranges = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return False
    for spec in ranges.split(","):
        spec = spec.strip(" \t")
        if not _BYTE_RANGE_SPEC.match(spec):
            return False
        first, _, last = spec.partition("-")
        if first and last and int(last) < int(first):
            return False
    return True


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison of an If-None-Match list against our strong ETag (CC-02)."""
    if not if_none_match:
        return False
    ours = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == ours:
            return True
    return False


def not_modified(headers: Mapping[str, str]) -> web.Response:
    """A 304 with validators and caching headers but no Content-Type (CC-03)."""
    return web.Response(status=304, headers=dict(headers))


class StoredFile(web.FileResponse):
    """A file from our own storage: sendfile, HEAD, Range, ETag, and three fixes over aiohttp.

    aiohttp 3.14 ignores an ETag in ``If-Range`` and answers 206 anyway (F-05), and it serves
    a ``<file>.gz`` sibling as a precompressed variant when one exists (F-02). Both are handled
    here by preparing with a copy of the request that carries only the headers that apply,
    as is a Range header RFC 9110 says to ignore (see :func:`range_applies`).
    ``precompressed`` names the Content-Encoding of a file stored compressed (the root list).
    """

    def __init__(
        self,
        path: Path,
        *,
        file: BinaryIO | None = None,
        stat: os.stat_result | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = OCTET_STREAM,
        precompressed: str | None = None,
    ) -> None:
        """``file``: ``path`` already opened, sent from that handle (which the response
        closes) and never reopened by name: a cache blob may be evicted meanwhile.
        ``stat``: that handle's fstat, when the caller took it: the response is then
        prepared without a thread hop (aiohttp takes one to stat and open)."""
        merged = CIMultiDict(headers or {})
        merged[hdrs.CONTENT_TYPE] = content_type
        if precompressed:
            merged[hdrs.CONTENT_ENCODING] = precompressed
        super().__init__(path, headers=merged)
        self._stored_path = path
        self._file = file
        self._file_stat = stat if file is not None else None

    def _stat(self) -> os.stat_result:
        return os.fstat(self._file.fileno()) if self._file else self._stored_path.stat()

    def _make_response(
        self, request: web.BaseRequest, accept_encoding: str
    ) -> tuple[_FileResponseResult, BufferedReader | None, os.stat_result, str | None]:
        """aiohttp's own, but from the open ``file`` when there is one (aiohttp 3.14 reopens
        the path, which an eviction may have deleted since: a 404). Runs in a thread."""
        fobj = self._file
        if fobj is None:
            return super()._make_response(request, accept_encoding)
        self._file = None
        st = os.fstat(fobj.fileno())
        result = self._condition(request, st)
        if result is not _FileResponseResult.SEND_FILE:
            fobj.close()
            return result, None, st, None
        return result, cast("BufferedReader", fobj), st, None

    def _condition(self, request: web.BaseRequest, st: os.stat_result) -> _FileResponseResult:
        """What the conditional headers make of a file with this stat (pure)."""
        etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        if_match, if_none_match = request.if_match, request.if_none_match
        unmodified_since, modified_since = request.if_unmodified_since, request.if_modified_since
        if (if_match is not None and not self._etag_match(etag, if_match, weak=False)) or (
            if_match is None
            and unmodified_since is not None
            and st.st_mtime > unmodified_since.timestamp()
        ):
            return _FileResponseResult.PRE_CONDITION_FAILED
        if (if_none_match is not None and self._etag_match(etag, if_none_match, weak=True)) or (
            if_none_match is None
            and modified_since is not None
            and st.st_mtime <= modified_since.timestamp()
        ):
            return _FileResponseResult.NOT_MODIFIED
        return _FileResponseResult.SEND_FILE

    async def _prepare_known(
        self, request: web.BaseRequest, fobj: BinaryIO, st: os.stat_result
    ) -> AbstractStreamWriter | None:
        """aiohttp's ``prepare`` for a handle opened and stat'ed already: the same answers,
        without its thread hop; the handle is closed in a thread afterwards, as aiohttp does."""
        try:
            result = self._condition(request, st)
            if result is _FileResponseResult.PRE_CONDITION_FAILED:
                return await self._precondition_failed(request)
            if result is _FileResponseResult.NOT_MODIFIED:
                etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
                return await self._not_modified(request, etag, st.st_mtime)
            return await self._prepare_open_file(request, cast("BufferedReader", fobj), st, None)
        finally:
            # Not awaited: the connection goes on to its next request meanwhile. The
            # executor's queue holds the call until it has run.
            asyncio.get_running_loop().run_in_executor(None, fobj.close)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = CIMultiDict(request.headers)
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        if not range_applies(request.method, headers.get(hdrs.RANGE, "bytes=0-")):
            headers.popall(hdrs.RANGE, None)
        if_range = headers.get(hdrs.IF_RANGE)
        if if_range is not None and if_range.strip().startswith(('"', "W/")):
            try:
                st = await asyncio.to_thread(self._stat)
            except OSError:
                st = None
            if st is None or if_range.strip() != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                headers.popall(hdrs.RANGE, None)
            headers.popall(hdrs.IF_RANGE, None)
        fobj, st = self._file, self._file_stat
        if fobj is not None and st is not None:
            self._file = None
            return await self._prepare_known(request.clone(headers=headers), fobj, st)
        return await super().prepare(request.clone(headers=headers))


class FollowedDownload(web.StreamResponse):
    """A file sent while its one upstream download is still running: the bytes as they
    arrive, the last once verified, the rest of a finished download zero-copy.

    Prepare it inside the reader's :meth:`Download.hold`: preparing sends the whole file.
    A download that fails before the headers raises its error (a clean 502/504); after
    them, the connection is broken off, so the client sees a failed transfer, never a short
    or corrupt file that looks complete.
    """

    def __init__(self, download: Download, cursor: Cursor, headers: Mapping[str, str]) -> None:
        super().__init__(headers={**headers, hdrs.CONTENT_TYPE: OCTET_STREAM})
        self._download = download
        self._cursor = cursor

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp prepares a returned response again: nothing to do
            return await super().prepare(request)
        length = await self._download.begun()
        if length is not None:
            self.content_length = length
        writer = await super().prepare(request)  # writes the headers right away
        try:
            async for part in self._download.stream(self._cursor):
                if isinstance(part, FileRange):
                    await _sendfile(request, self, part)
                else:
                    await self.write(part)
        except Exception:
            if request.transport is not None:
                request.transport.abort()
            return writer
        await self.write_eof()
        return writer


async def _sendfile(
    request: web.BaseRequest, response: web.StreamResponse, part: FileRange
) -> None:
    """Send the rest of a finished download zero-copy, as aiohttp's FileResponse does."""
    await send_range(request, response, part.file, part.offset, part.count)


async def send_range(
    request: web.BaseRequest, response: web.StreamResponse, fh: BinaryIO, offset: int, count: int
) -> None:
    """Bytes ``offset..offset+count`` of ``fh`` zero-copy. A handle may be shared (every
    reader of a download, every root answer of a part), so where sendfile is not available
    (TLS, no ``os.sendfile``) the bytes are read at their offsets (pread), never through the
    handle's position as asyncio's own fallback would."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, fh, offset, count, fallback=False)
    except asyncio.SendfileNotAvailableError:
        end = offset + count
        while offset < end:
            size = min(end - offset, _PREAD_CHUNK)
            chunk = await asyncio.to_thread(os.pread, fh.fileno(), size, offset)
            if not chunk:
                raise ConnectionResetError("the file is shorter than said") from None
            await response.write(chunk)
            offset += len(chunk)
