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

from proxyindex.index.root import Piece, RootBody
from proxyindex.upstream.downloads import Cursor, Download, FileRange

__all__ = [
    "IMMUTABLE",
    "PRIVATE_IMMUTABLE",
    "FollowedDownload",
    "PiecesResponse",
    "StoredFile",
    "etag_matches",
    "not_modified",
    "range_applies",
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
        headers: Mapping[str, str] | None = None,
        content_type: str = OCTET_STREAM,
        precompressed: str | None = None,
    ) -> None:
        """``file``: ``path`` already opened, sent from that handle (which the response
        closes) and never reopened by name: a cache blob may be evicted meanwhile."""
        merged = CIMultiDict(headers or {})
        merged[hdrs.CONTENT_TYPE] = content_type
        if precompressed:
            merged[hdrs.CONTENT_ENCODING] = precompressed
        super().__init__(path, headers=merged)
        self._stored_path = path
        self._file = file

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
        etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        if_match, if_none_match = request.if_match, request.if_none_match
        unmodified_since, modified_since = request.if_unmodified_since, request.if_modified_since
        result = _FileResponseResult.SEND_FILE
        if (if_match is not None and not self._etag_match(etag, if_match, weak=False)) or (
            if_match is None
            and unmodified_since is not None
            and st.st_mtime > unmodified_since.timestamp()
        ):
            result = _FileResponseResult.PRE_CONDITION_FAILED
        elif (if_none_match is not None and self._etag_match(etag, if_none_match, weak=True)) or (
            if_none_match is None
            and modified_since is not None
            and st.st_mtime <= modified_since.timestamp()
        ):
            result = _FileResponseResult.NOT_MODIFIED
        if result is not _FileResponseResult.SEND_FILE:
            fobj.close()
            return result, None, st, None
        return result, cast("BufferedReader", fobj), st, None

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
    """Send the rest of a finished download zero-copy, as aiohttp's FileResponse does.

    The file handle is shared by every reader of the download, so where sendfile is not
    available (TLS, no ``os.sendfile``) the bytes are read at their offsets (pread), never
    through the handle's position as asyncio's own fallback would.
    """
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    try:
        await loop.sendfile(transport, part.file, part.offset, part.count, fallback=False)
    except asyncio.SendfileNotAvailableError:
        offset, end = part.offset, part.offset + part.count
        while offset < end:
            size = min(end - offset, _PREAD_CHUNK)
            chunk = await asyncio.to_thread(os.pread, part.file.fileno(), size, offset)
            if not chunk:
                raise ConnectionResetError("the file is shorter than its download") from None
            await response.write(chunk)
            offset += len(chunk)


_PIECE_CHUNK = 1 << 20


def _open_pieces(pieces: tuple[Piece, ...]) -> dict[Path, BinaryIO]:
    files: dict[Path, BinaryIO] = {}
    try:
        for piece in pieces:
            if not isinstance(piece, bytes) and piece[0] not in files:
                files[piece[0]] = piece[0].open("rb")
    except BaseException:
        for fh in files.values():
            fh.close()
        raise
    return files


class PiecesResponse(web.StreamResponse):
    """A body sent as its pieces: bytes, and byte ranges of files opened before the first
    byte is sent (so a file replaced meanwhile is still read whole). The root list is sent so:
    its upstream part is shared by every version of it, and a private change renders only
    its own part (see ``index.root``). Ranges are ignored (a 200 with the whole body)."""

    def __init__(self, body: RootBody, *, headers: Mapping[str, str]) -> None:
        super().__init__(headers=headers)
        self._pieces_body = body
        self.content_length = body.length

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared or request.method == hdrs.METH_HEAD:
            return await super().prepare(request)
        files = await asyncio.to_thread(_open_pieces, self._pieces_body.pieces)
        try:
            writer = await super().prepare(request)
            for piece in self._pieces_body.pieces:
                if isinstance(piece, bytes):
                    await self.write(piece)
                    continue
                path, offset, length = piece
                fd = files[path].fileno()
                while length > 0:
                    chunk = await asyncio.to_thread(os.pread, fd, min(_PIECE_CHUNK, length), offset)
                    if not chunk:
                        raise OSError(f"{path} is shorter than the root's index says")
                    await self.write(chunk)
                    offset += len(chunk)
                    length -= len(chunk)
            return writer
        finally:
            for fh in files.values():
                fh.close()
