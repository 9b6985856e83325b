"""HTTP response helpers shared by the views: conditional requests and stored files."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

__all__ = [
    "IMMUTABLE",
    "StoredFile",
    "etag_matches",
    "not_modified",
    "range_applies",
]

IMMUTABLE = "public, max-age=31536000, immutable"  # files never change (F-06)
OCTET_STREAM = "application/octet-stream"
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
        headers: Mapping[str, str] | None = None,
        content_type: str = OCTET_STREAM,
        precompressed: str | None = None,
    ) -> None:
        merged = CIMultiDict(headers or {})
        merged[hdrs.CONTENT_TYPE] = content_type
        if precompressed:
            merged[hdrs.CONTENT_ENCODING] = precompressed
        super().__init__(path, headers=merged)
        self._stored_path = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = CIMultiDict(request.headers)
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        if not range_applies(request.method, headers.get(hdrs.RANGE, "bytes=0-")):
            headers.popall(hdrs.RANGE, None)
        if_range = headers.get(hdrs.IF_RANGE)
        if if_range is not None and if_range.strip().startswith(('"', "W/")):
            try:
                st = await asyncio.to_thread(self._stored_path.stat)
            except OSError:
                st = None
            if st is None or if_range.strip() != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                headers.popall(hdrs.RANGE, None)
            headers.popall(hdrs.IF_RANGE, None)
        return await super().prepare(request.clone(headers=headers))
