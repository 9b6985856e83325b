"""The legacy upload API that twine, uv publish, poetry and pdm speak (PROTOCOL §7).

The multipart body is streamed to a temp file in the packages folder while it is hashed (never
read whole: aiohttp's ``post()`` caps bodies at 1 MiB). Everything is checked before the file is
committed with a create-if-absent link, so bad input writes nothing. One release is one file
(``distname``: ``dupdemo-1.0-…`` and ``dupdemo-1.0.0-…`` are one release), checked and stored
under the project's lock, so two concurrent uploads of one release cannot both win.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from packaging.utils import NormalizedName, canonicalize_version
from packaging.version import InvalidVersion, Version

from proxyindex import appkeys, fsutil
from proxyindex.distname import DistFilename, InvalidDistFilename, parse_dist_filename, release_of
from proxyindex.errors import (
    FileExists,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooLarge,
    UpstreamError,
)
from proxyindex.models import is_valid_name, normalize
from proxyindex.policy import Owner
from proxyindex.sdistcheck import read_sdist_pkg_info
from proxyindex.storage import PrivateStorage, metadata_fields, read_wheel_metadata

__all__ = ["handle_upload"]

log = logging.getLogger(__name__)

_Hasher = Any  # hashlib's private types differ between sha256 and blake2b

_FIELD_LIMIT = 1 << 20  # all text fields together; real uploads send a few KB
_CHUNK = 1 << 16


@dataclass(slots=True)
class _Received:
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    temp: Path | None = None
    size: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    def one(self, key: str) -> str | None:
        values = self.fields.get(key)
        return values[0].strip() if values else None


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
) -> _Received:
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
    return _Received(temp=temp, size=size, digests=digests)


async def _receive(request: web.Request, directory: Path, limit: int) -> _Received:
    if request.content_length is not None and request.content_length > limit + _FIELD_LIMIT:
        raise TooLarge(f"upload larger than the limit of {limit} bytes")
    if request.content_type == "application/x-www-form-urlencoded":
        # curl -d ':action=remove_pkg&name=...' (pypiserver compatible); small by nature.
        form = await request.post()
        return _Received(fields={k: [str(v)] for k, v in form.items() if isinstance(v, str)})
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise InvalidRequest("expected a multipart/form-data body") from exc
    received = _Received()
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


def _check_filename(received: _Received) -> DistFilename:
    """Filename, filetype, name and version must agree (U-03, U-04), and a wheel's filename
    must be spelt the canonical way (PEP 427: what PyPI requires of new uploads)."""
    filename = received.filename or ""
    if not fsutil.is_safe_filename(filename):
        raise InvalidRequest(f"invalid filename {filename[:100]!r}")
    filetype = received.one("filetype")
    try:
        dist = parse_dist_filename(filename)
    except InvalidDistFilename as exc:
        if not filename.endswith((".whl", ".tar.gz", ".zip")):
            raise InvalidRequest(str(exc)) from exc
        raise InvalidRequest(f"invalid distribution filename {filename!r}: {exc}") from exc
    expected_type = "bdist_wheel" if dist.is_wheel else "sdist"
    if filetype != expected_type:
        raise InvalidRequest(f"filetype {filetype!r} does not match {filename!r}")
    form_name = received.one("name") or ""
    if not is_valid_name(form_name):
        raise InvalidRequest(f"invalid project name {form_name[:100]!r}")
    if normalize(form_name) != dist.name:
        raise InvalidRequest(f"name {form_name!r} does not match filename {filename!r}")
    try:
        form_version = Version(received.one("version") or "")
    except InvalidVersion as exc:
        raise InvalidRequest(f"invalid version {received.one('version')!r}") from exc
    if form_version != dist.version:
        raise InvalidRequest(f"version {form_version} does not match filename {filename!r}")
    protocol = received.one("protocol_version")
    if protocol not in (None, "1"):
        raise InvalidRequest(f"unsupported protocol_version {protocol!r}")
    _check_spelling(dist)
    return dist


def _check_spelling(dist: DistFilename) -> None:
    """A wheel must use the canonical spelling; an sdist may keep a legacy name spelling
    (``Foo_Bar-1.0.tar.gz``, ``foo-bar-1.0.tar.gz``: PROTOCOL U-04) but not a version
    spelling nobody's build tool writes (``01.0``). Either way one release is one file
    (see ``_commit``), so a spelling can never add a second file for one release."""
    if dist.is_wheel:
        wrong = dist.filename != dist.canonical
    else:
        wrong = dist.version_text != str(dist.version)
    if wrong:
        raise InvalidRequest(
            f"filename {dist.filename!r} is not normalised; upload it as {dist.canonical!r}"
        )


def _check_digests(received: _Received) -> None:
    sent = {
        "sha256": received.one("sha256_digest"),
        "md5": received.one("md5_digest"),
        "blake2_256": received.one("blake2_256_digest"),
    }
    if not any(sent.values()):
        raise InvalidRequest("the upload carries no digest (sha256_digest expected)")
    for algo, value in sent.items():
        if value and value.lower() != received.digests[algo]:
            raise InvalidRequest(f"the {algo} digest supplied does not match the file")


def _check_metadata(temp: Path, dist: DistFilename) -> None:
    """Blocking: the wheel's METADATA or the sdist's PKG-INFO must name the same project and
    version (and the sdist must be a well-formed archive: ``sdistcheck``)."""
    kind = "METADATA" if dist.is_wheel else "PKG-INFO"
    try:
        if dist.is_wheel:
            raw = read_wheel_metadata(temp)
        else:
            raw = read_sdist_pkg_info(temp, dist.filename)
    except ValueError as exc:
        raise InvalidRequest(f"{dist.filename}: {exc}") from exc
    fields = metadata_fields(raw)
    meta_name = fields.get("Name", "")
    if not is_valid_name(meta_name) or normalize(meta_name) != dist.name:
        raise InvalidRequest(f"{dist.filename}: {kind} names project {meta_name[:100]!r}")
    try:
        meta_version = Version(fields.get("Version", ""))
    except InvalidVersion as exc:
        raise InvalidRequest(f"{dist.filename}: {kind} has an invalid version") from exc
    if meta_version != dist.version:
        raise InvalidRequest(f"{dist.filename}: {kind} says version {meta_version}")


def _exists_message(filename: str, sha256: str, uploaded: str | None) -> str:
    # The "File already exists" prefix is what twine, poetry and pdm look for (U-05).
    message = f"File already exists ({filename!r}, with sha256 hash {sha256!r})"
    if uploaded is not None and uploaded != filename:
        message += f"; {uploaded!r} is the same release file"
    return message


def _check_filename_reuse(storage: PrivateStorage, dist: DistFilename, sha256: str) -> None:
    """A removed release file may only come back with the same bytes: a pinned hash in
    someone's lock file must never meet different content under the same release, whatever
    the filename's spelling (``1.0`` and ``1.0.0`` are one release; PyPI never allows it)."""
    removed = storage.private_names.removed_files(dist.name)
    for filename, removed_sha256 in removed.items():
        old = release_of(filename)
        if old is None or old.release_key != dist.release_key or removed_sha256 == sha256:
            continue
        # PyPI's wording and status (400), so twine users recognise it.
        raise InvalidRequest(
            f"This filename has already been used, use a different version: {dist.filename} "
            f"is the release file {filename} that was removed; it can only be uploaded again "
            "with the same content"
        )


async def _check_shadowing(request: web.Request, name: NormalizedName) -> None:
    """Warn (or refuse, if configured) when a new private name hides a public project."""
    index = request.app[appkeys.INDEX]
    config = request.app[appkeys.CONFIG].private
    if index.owner(name) is not Owner.UPSTREAM:
        return  # already private, reserved or allowed to merge
    try:
        entry = await index.upstream_entry(name, prefetch=False)
    except UpstreamError:
        if config.refuse_shadowing_uploads:
            raise
        log.warning("could not check whether %s exists upstream", name)
        return
    if entry.page is None:
        return
    if config.refuse_shadowing_uploads:
        raise Forbidden(
            f"{name} exists upstream; uploading it would hide the public project "
            "(private.refuse_shadowing_uploads is on; add the name to private.reserved "
            "or private.merge_with_upstream to allow it)"
        )
    log.warning("upload of %s now hides the upstream project of the same name", name)


def _check_project_permission(request: web.Request, name: NormalizedName) -> None:
    """The auth middleware checked the login; a token may also be limited to one project,
    which is only known once the form is read (403)."""
    identity = request.get(appkeys.IDENTITY)
    if identity is not None:
        identity.check_project(name)


def _commit(
    storage: PrivateStorage, temp: Path, dist: DistFilename, sha256: str, overwrite: bool
) -> str:
    """Blocking: store ``temp`` as ``dist`` unless its release is already stored (U-05).

    One release is one file, whatever its filename's spelling: the same bytes are a success
    that writes nothing, other bytes a 409 naming the stored file (unless overwriting is
    allowed: the new file then takes the old one's place). The project's lock makes the
    check and the store one step against every other upload on this host.
    """
    size = temp.stat().st_size
    with storage.release_lock(dist.name):
        existing = storage.find_release(dist)
        if existing is not None:
            existing_sha = fsutil.file_sha256(existing)
            if existing_sha == sha256:
                return f"{dist.filename} already stored with the same content as {existing.name}"
            if not overwrite:
                raise FileExists(_exists_message(existing.name, existing_sha, dist.filename))
            dest = existing.parent / dist.filename
            fsutil.commit_replace(temp, dest)
            if dest != existing:
                existing.unlink(missing_ok=True)
        else:
            dest = storage.project_dir(dist.name) / dist.filename
            if not fsutil.commit_exclusive(temp, dest):  # dropped in by hand just now
                raise FileExists(_exists_message(dest.name, fsutil.file_sha256(dest), None))
        storage.rescan()
    log.info("stored %s (%d bytes)", dest, size)
    return f"stored {dist.filename}"


async def _file_upload(request: web.Request, received: _Received) -> web.Response:
    assert received.temp is not None
    dist = _check_filename(received)
    _check_project_permission(request, dist.name)
    _check_digests(received)
    await asyncio.to_thread(_check_metadata, received.temp, dist)
    storage = request.app[appkeys.STORAGE]
    sha256 = received.digests["sha256"]
    overwrite = request.app[appkeys.CONFIG].private.allow_overwrite
    if await asyncio.to_thread(storage.find_release, dist) is None:
        if not overwrite:
            _check_filename_reuse(storage, dist, sha256)
        await _check_shadowing(request, dist.name)
    message = await asyncio.to_thread(_commit, storage, received.temp, dist, sha256, overwrite)
    return web.Response(text=message + "\n")


async def _remove_pkg(request: web.Request, received: _Received) -> web.Response:
    name, version = received.one("name"), received.one("version")
    if not name or not version or not is_valid_name(name):
        raise InvalidRequest("remove_pkg needs the fields name and version")
    project = normalize(name)
    _check_project_permission(request, project)
    storage = request.app[appkeys.STORAGE]
    page = await asyncio.to_thread(storage.page, project)
    wanted = canonicalize_version(version)
    paths = [
        Path(dist.url)
        for dist in (page.files if page else ())
        if _version_matches(dist.filename, wanted)
    ]
    if not paths:
        raise NotFound(f"no files of {project} {version}")
    await asyncio.to_thread(storage.remove, paths)
    log.info("removed %s %s (%d files)", project, version, len(paths))
    return web.Response(text=f"removed {len(paths)} files of {project} {version}\n")


def _version_matches(filename: str, wanted: str) -> bool:
    dist = release_of(filename)
    return dist is not None and canonicalize_version(dist.version) == wanted


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """POST /, /legacy, /legacy/ (never a redirect: U-01)."""
    config = request.app[appkeys.CONFIG]
    storage = request.app[appkeys.STORAGE]
    received = await _receive(request, storage.root, config.private.max_upload_size)
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
