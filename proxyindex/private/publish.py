"""The publish rules (PROTOCOL §7), without HTTP: what an upload must be before private
storage takes it, and what a removal removes.

The web layer (``web.upload``) streams the body into storage's temp area and hands over a
:class:`Received`; everything here is checked before the file is stored, so bad input writes
nothing. One release is one file (``distname``: ``dupdemo-1.0-…`` and ``dupdemo-1.0.0-…`` are
one release): :meth:`PrivateStorage.add` checks and stores it under the project's lock.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from proxyindex import fsutil
from proxyindex.config import PrivateConfig
from proxyindex.distname import (
    DistFilename,
    InvalidDistFilename,
    parse_dist_filename,
    release_of,
)
from proxyindex.errors import FileExists, Forbidden, InvalidRequest, NotFound, UpstreamError
from proxyindex.index.projects import ProjectIndex
from proxyindex.models import is_valid_name, normalize
from proxyindex.policy import Owner
from proxyindex.private.audit import Audit
from proxyindex.private.sdistcheck import read_sdist_pkg_info
from proxyindex.private.storage import (
    Conflict,
    Same,
    metadata_fields,
    read_wheel_metadata,
)
from proxyindex.private.store import PrivateStore

__all__ = ["Received", "check_upload", "publish", "removal_target", "remove_release"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Received:
    """An upload as the client sent it: the form fields, and the file (written to ``temp``)
    with its size and digests."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    temp: Path | None = None
    size: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    def one(self, key: str) -> str | None:
        values = self.fields.get(key)
        return values[0].strip() if values else None


def _check_filename(received: Received) -> DistFilename:
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
    (``PrivateStorage.add``), so a spelling can never add a second file for one release."""
    if dist.is_wheel:
        wrong = dist.filename != dist.canonical
    else:
        wrong = dist.version_text != str(dist.version)
    if wrong:
        raise InvalidRequest(
            f"filename {dist.filename!r} is not normalised; upload it as {dist.canonical!r}"
        )


def _check_digests(received: Received) -> None:
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


def _check_filename_reuse(storage: PrivateStore, dist: DistFilename, sha256: str) -> None:
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


async def _check_shadowing(
    index: ProjectIndex, config: PrivateConfig, name: NormalizedName
) -> None:
    """Warn (or refuse, if configured) when a new private name hides a public project."""
    if index.owner(name) is not Owner.UPSTREAM:
        return  # already private, reserved or allowed to merge
    try:
        checked = await index.upstream.get(name, prefetch=False)
    except UpstreamError:
        if config.refuse_shadowing_uploads:
            raise
        log.warning("could not check whether %s exists upstream", name)
        return
    if checked.page is None:
        return
    if config.refuse_shadowing_uploads:
        raise Forbidden(
            f"{name} exists upstream; uploading it would hide the public project "
            "(private.refuse_shadowing_uploads is on; add the name to private.reserved "
            "or private.merge_with_upstream to allow it)"
        )
    log.warning("upload of %s now hides the upstream project of the same name", name)


def check_upload(received: Received) -> DistFilename:
    """The release the upload claims to be, once its filename and form agree (400 if not)."""
    return _check_filename(received)


async def publish(
    storage: PrivateStore,
    index: ProjectIndex,
    config: PrivateConfig,
    received: Received,
    dist: DistFilename,
    audit: Audit | None = None,
) -> str:
    """Check the upload (digests, metadata, a removed filename's bytes, shadowing) and store
    it (U-05); the line that tells the client what happened."""
    assert received.temp is not None
    _check_digests(received)
    await asyncio.to_thread(_check_metadata, received.temp, dist)
    sha256 = received.digests["sha256"]
    overwrite = config.allow_overwrite
    if await asyncio.to_thread(storage.find_release, dist) is None:
        if not overwrite:
            _check_filename_reuse(storage, dist, sha256)
        await _check_shadowing(index, config, dist.name)
    result = await asyncio.to_thread(storage.add, received.temp, dist, sha256, overwrite=overwrite)
    if isinstance(result, Conflict):
        raise FileExists(_exists_message(result.existing, result.sha256, dist.filename))
    if audit is not None:
        version = str(dist.version)
        if isinstance(result, Same):
            await audit.record("upload-same", dist.name, version, dist.filename, sha256)
        elif result.replaced is not None:
            await audit.record(
                "overwrite",
                dist.name,
                version,
                dist.filename,
                sha256,
                replaced=result.replaced,
                replaced_sha256=result.replaced_sha256,
            )
        else:
            await audit.record("upload", dist.name, version, dist.filename, sha256)
    if isinstance(result, Same):
        return f"{dist.filename} already stored with the same content as {result.existing}"
    return f"stored {dist.filename}"


def removal_target(received: Received) -> tuple[NormalizedName, str]:
    """The project and version a ``remove_pkg`` names (400 if it names none)."""
    name, version = received.one("name"), received.one("version")
    if not name or not version or not is_valid_name(name):
        raise InvalidRequest("remove_pkg needs the fields name and version")
    return normalize(name), version


async def remove_release(
    storage: PrivateStore, project: NormalizedName, version: str, audit: Audit | None = None
) -> str:
    """Remove every file of the release (404 if there is none); the line for the client."""
    removed = await asyncio.to_thread(storage.remove_version_files, project, version)
    count = len(removed)
    if audit is not None:
        for filename, sha256 in removed:
            await audit.record("remove", project, version, filename, sha256)
    if not count:
        raise NotFound(f"no files of {project} {version}")
    log.info("removed %s %s (%d files)", project, version, count)
    return f"removed {count} files of {project} {version}"
