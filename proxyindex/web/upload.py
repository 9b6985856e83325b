"""The legacy upload API that twine, uv publish, poetry and pdm speak (PROTOCOL §7): the HTTP half.

The multipart body is streamed to a temp file in storage's temp area while it is hashed (never
read whole: aiohttp's ``post()`` caps bodies at 1 MiB); multipart framing faults are 400s. The
rules an upload must pass and the store itself are ``private.publish``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.errors import (
    InvalidRequest,
    TooLarge,
)
from proxyindex.private import publish
from proxyindex.private.publish import Received
from proxyindex.web import appkeys
from proxyindex.web.admin import request_audit

__all__ = ["handle_upload"]

log = logging.getLogger(__name__)

_Hasher = Any  # hashlib's private types differ between sha256 and blake2b

_FIELD_LIMIT = 1 << 20  # all text fields together; real uploads send a few KB
_CHUNK = 1 << 16


_TRUNCATED = "the multipart body ends before its closing boundary"


def _framing_error(request: web.Request, exc: Exception, *, first: bool = False) -> InvalidRequest:
    """aiohttp's multipart reader says "malformed" with ValueError, AssertionError,
    RuntimeError or a header-parser error (a NUL in a part's filename is an invalid header);
    each is the client's fault: a 400 with one line, never a 500 with a traceback."""
    if request.content_length == 0:
        return InvalidRequest("the upload body is empty")
    if isinstance(exc, LineTooLong):  # while looking for the first boundary, or in a header
        return InvalidRequest("the multipart body has no boundary or an oversized part header")
    if isinstance(exc, HttpProcessingError):
        return InvalidRequest("a part of the multipart body has a malformed header")
    if request.content.at_eof():
        if first:  # the whole body was searched for the first boundary
            return InvalidRequest("no multipart boundary in the body: not multipart/form-data")
        return InvalidRequest(_TRUNCATED)
    return InvalidRequest("malformed multipart/form-data body")


_FRAMING_ERRORS = (ValueError, AssertionError, RuntimeError, HttpProcessingError)


async def _next_part(
    request: web.Request, reader: MultipartReader, *, first: bool
) -> tuple[str, BodyPartReader] | None:
    """The next form part and its field name."""
    try:
        part = await reader.next()
    except _FRAMING_ERRORS as exc:
        raise _framing_error(request, exc, first=first) from exc
    if part is None:
        return None
    if not isinstance(part, BodyPartReader):
        raise InvalidRequest("unexpected nested multipart body")
    if not part.name:
        # A delimiter followed by the end of the body parses as a part with no headers.
        truncated = request.content.at_eof()
        raise InvalidRequest(_TRUNCATED if truncated else "a form part has no name")
    return part.name, part


async def _chunks(request: web.Request, part: BodyPartReader) -> AsyncIterator[bytes]:
    """The part's bytes; a body that ends without the part's closing delimiter is a 400
    (aiohttp's reader hands back what it got and only complains on the next read)."""
    try:
        while chunk := await part.read_chunk(_CHUNK):
            yield chunk
        complete = part.at_eof()
    except _FRAMING_ERRORS as exc:
        raise _framing_error(request, exc) from exc
    if not complete:
        raise InvalidRequest(_TRUNCATED)


async def _read_field(request: web.Request, part: BodyPartReader, budget: int) -> str:
    data = bytearray()
    async for chunk in _chunks(request, part):
        data += chunk
        if len(data) > budget:
            raise InvalidRequest("form fields are too large")
    return data.decode("utf-8", "replace")


async def _stream_file(
    request: web.Request, part: BodyPartReader, directory: Path, limit: int
) -> Received:
    fh: BinaryIO
    fh, temp = await asyncio.to_thread(fsutil.open_temp, directory)
    hashers: dict[str, _Hasher] = {
        "sha256": hashlib.sha256(),
        "md5": hashlib.md5(usedforsecurity=False),
        "blake2_256": hashlib.blake2b(digest_size=32),
    }
    size = 0
    try:
        async for chunk in _chunks(request, part):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"upload larger than the limit of {limit} bytes")
            for hasher in hashers.values():
                hasher.update(chunk)
            await asyncio.to_thread(fh.write, chunk)
    except BaseException:
        await asyncio.to_thread(fh.close)
        await asyncio.to_thread(temp.unlink, True)
        raise
    await asyncio.to_thread(fh.close)
    digests = {name: h.hexdigest() for name, h in hashers.items()}
    return Received(temp=temp, size=size, digests=digests)


async def _receive(request: web.Request, directory: Path, limit: int) -> Received:
    if request.content_length is not None and request.content_length > limit + _FIELD_LIMIT:
        raise TooLarge(f"upload larger than the limit of {limit} bytes")
    if request.content_type == "application/x-www-form-urlencoded":
        # curl -d ':action=remove_pkg&name=...' (pypiserver compatible); small by nature.
        form = await request.post()
        return Received(fields={k: [str(v)] for k, v in form.items() if isinstance(v, str)})
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise InvalidRequest("expected a multipart/form-data body") from exc
    received = Received()
    budget = _FIELD_LIMIT
    seen = False
    try:
        while (named := await _next_part(request, reader, first=not seen)) is not None:
            seen = True
            name, part = named
            if name == "content":
                if received.temp is not None:
                    raise InvalidRequest("more than one file in the upload")
                filename = part.filename or ""
                streamed = await _stream_file(request, part, directory, limit)
                received.temp, received.size = streamed.temp, streamed.size
                received.digests, received.filename = streamed.digests, filename
            elif part.filename is not None:
                async for _chunk in _chunks(request, part):
                    pass  # gpg_signature and other files: accepted, not kept
            else:
                value = await _read_field(request, part, budget)
                budget -= len(value)
                received.fields.setdefault(name, []).append(value)
    except BaseException:
        if received.temp is not None:
            await asyncio.to_thread(received.temp.unlink, True)
        raise
    return received


def _check_project_permission(request: web.Request, name: NormalizedName) -> None:
    """The auth middleware checked the login; a token may also be limited to one project,
    which is only known once the form is read (403)."""
    identity = request.get(appkeys.IDENTITY)
    if identity is not None:
        identity.check_project(name)


async def _file_upload(request: web.Request, received: Received) -> web.Response:
    dist = publish.check_upload(received)
    _check_project_permission(request, dist.name)
    app = request.app
    message = await publish.publish(
        app[appkeys.STORAGE],
        app[appkeys.INDEX],
        app[appkeys.CONFIG].private,
        received,
        dist,
        request_audit(request),
    )
    return web.Response(text=message + "\n")


async def _remove_pkg(request: web.Request, received: Received) -> web.Response:
    project, version = publish.removal_target(received)
    _check_project_permission(request, project)
    storage = request.app[appkeys.STORAGE]
    message = await publish.remove_release(storage, project, version, request_audit(request))
    return web.Response(text=message + "\n")


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """POST /, /legacy, /legacy/ (never a redirect: U-01)."""
    config = request.app[appkeys.CONFIG]
    storage = request.app[appkeys.STORAGE]
    received = await _receive(request, storage.temp_dir, config.private.max_upload_size)
    try:
        action = received.one(":action") or request.query.get(":action")
        if action == "file_upload":
            if received.temp is None:
                raise InvalidRequest("the upload has no file in the 'content' field")
            return await _file_upload(request, received)
        if action == "remove_pkg":
            return await _remove_pkg(request, received)
        if action in ("submit", "verify"):
            return web.Response(text="nothing to register: projects are created by uploading\n")
        if action == "doc_upload":
            raise web.HTTPGone(text="documentation uploads are not supported\n")
        if action is None:
            raise InvalidRequest("missing :action")
        raise InvalidRequest(f"unsupported :action {action[:50]!r}")
    finally:
        if received.temp is not None:
            await asyncio.to_thread(received.temp.unlink, True)
