"""HTTP response helpers shared by the views: conditional requests and stored files."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

__all__ = [
    "IMMUTABLE",
    "PRIVATE_IMMUTABLE",
    "StoredFile",
    "etag_matches",
    "not_modified",
]

IMMUTABLE = "public, max-age=31536000, immutable"  # files never change (F-06)
# Behind a login: a shared cache (a CDN, a corporate proxy) must not keep a copy to serve
# to anyone; the client's own cache may (RFC 9111 5.2.2.7).
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"


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
    """A file from our own storage: sendfile, HEAD, Range, ETag, and two fixes over aiohttp.

    aiohttp 3.14 ignores an ETag in ``If-Range`` and answers 206 anyway (F-05), and it serves
    a ``<file>.gz`` sibling as a precompressed variant when one exists (F-02). Both are handled
    here by preparing with a copy of the request that carries only the headers that apply.
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
