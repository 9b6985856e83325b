"""A response sent as pieces: bytes, and byte ranges of files sent zero-copy.

The root list is sent so (``index.root``): most of it is byte ranges of the upstream names
rendered once per refresh, shared by every version of the root, and a private change renders
only its own part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from proxyindex.index.rootbody import RootBody
from proxyindex.web.responses import send_range

__all__ = ["PiecesResponse"]


class PiecesResponse(web.StreamResponse):
    """``body`` sent in order: its bytes written, its file ranges sent with sendfile (as
    aiohttp's FileResponse does) from ``files``, opened beforehand (so a file replaced or
    removed meanwhile is still read whole), which the response closes. A Range header is
    ignored: a 200 with the whole body. HEAD: the headers, with the body's length."""

    def __init__(
        self, body: RootBody, files: dict[Path, BinaryIO], *, headers: Mapping[str, str]
    ) -> None:
        super().__init__(headers=headers)
        self._pieces_body = body
        self._files = files
        self.content_length = body.length

    def _close_files(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp prepares a returned response again: nothing to do
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if request.method == hdrs.METH_HEAD:
                return writer
            for piece in self._pieces_body.pieces:
                if isinstance(piece, bytes):
                    await self.write(piece)
                else:
                    path, offset, length = piece
                    await send_range(request, self, self._files[path], offset, length)
            await self.write_eof()
            return writer
        finally:
            await asyncio.to_thread(self._close_files)
