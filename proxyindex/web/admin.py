"""The admin API (``/-/admin/...``): yank, unyank and remove private releases; cache stats,
purge and verify. What ``proxyindex yank``, ``remove`` and ``cache ...`` call, so they work
against a remote server.

Every route has the ``admin`` action: users listed in ``auth.admins``, or any caller on this
host when the server has no users (``Authenticator.authorize``). Answers are JSON; bad input
is a 4xx with a one-line reason (the error middleware). Every change is written to the audit
log with the user, the client address, and each file's name and sha256.

``cache/verify`` can take minutes on a large cache, so it streams JSON lines: progress
(``{"done": n, "total": N}``) as it goes, then one ``{"result": ...}``; the CLI draws a
progress bar from them.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

from aiohttp import hdrs, web
from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from proxyindex.errors import InvalidRequest, NotFound
from proxyindex.models import is_valid_name, normalize
from proxyindex.private.audit import ANONYMOUS, Actor, Audit
from proxyindex.private.publish import remove_release
from proxyindex.ui import data
from proxyindex.upstream import maintenance
from proxyindex.web import appkeys

__all__ = [
    "cache_purge",
    "cache_stats",
    "cache_verify",
    "remove",
    "request_audit",
    "set_yank",
    "unyank",
    "yank",
]

_MAX_REASON = 500  # characters: PyPI's yank reason is a short line too
_MAX_BODY = 1 << 20
_PROGRESS_EVERY = 0.5  # seconds between progress lines of a verify
_VERIFY_BATCH = 16  # blobs hashed per thread hop


def request_audit(request: web.Request) -> Audit:
    """The request's actor for the audit log: the login checked by the auth middleware (``-``
    without one), the address the socket saw (``X-Forwarded-For`` can be forged)."""
    identity = request.get(appkeys.IDENTITY)
    if identity is None:
        actor = Actor(ANONYMOUS, request.remote or "")
    else:
        token = identity.token.id if identity.token is not None else None
        actor = Actor(identity.user, request.remote or "", token)
    return Audit(request.app[appkeys.AUDIT], actor)


def project_name(raw: str) -> NormalizedName:
    if not is_valid_name(raw):
        raise InvalidRequest(f"not a valid project name: {raw[:100]!r}")
    return normalize(raw)


def release_version(raw: str) -> str:
    try:
        return str(Version(raw))
    except InvalidVersion:
        raise InvalidRequest(f"not a valid version: {raw[:100]!r}") from None


def yank_reason(raw: object) -> str:
    """A reason is one printable line of text (it lands in ``data-yanked`` and in JSON)."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidRequest("reason: expected a string")
    if len(raw) > _MAX_REASON:
        raise InvalidRequest(f"reason: at most {_MAX_REASON} characters")
    if any(not ch.isprintable() for ch in raw):
        raise InvalidRequest("reason: one line of printable text")
    return raw.strip()


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body); 400 for anything else."""
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise InvalidRequest("the request body is too large")
    raw = await request.content.read(_MAX_BODY + 1)
    if len(raw) > _MAX_BODY:
        raise InvalidRequest("the request body is too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _files(found: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"filename": filename, "sha256": sha256} for filename, sha256 in found]


async def set_yank(
    request: web.Request, name: NormalizedName, version: str, reason: str | None
) -> dict[str, Any]:
    """Yank (``reason`` a string) or unyank (None) a private release, audited; 404 if the
    release has no private file. Shared by the API and the web UI's buttons."""
    storage = request.app[appkeys.STORAGE]
    if reason is None:
        found = await asyncio.to_thread(storage.unyank, name, version)
    else:
        found = await asyncio.to_thread(storage.yank, name, version, reason)
    if not found:
        raise NotFound(f"no private files of {name} {version}")
    action = "unyank" if reason is None else "yank"
    audit = request_audit(request)
    for filename, sha256 in found:
        await audit.record(action, name, version, filename, sha256)
    result: dict[str, Any] = {
        "project": name,
        "version": version,
        "yanked": reason is not None,
        "files": _files(found),
    }
    if reason is not None:
        result["reason"] = reason
    return result


async def yank(request: web.Request) -> web.StreamResponse:
    """POST /-/admin/yank/{name}/{version}, body ``{"reason": "..."}`` (optional)."""
    name = project_name(request.match_info["name"])
    version = release_version(request.match_info["version"])
    reason = yank_reason((await _json_body(request)).get("reason"))
    return web.json_response(await set_yank(request, name, version, reason))


async def unyank(request: web.Request) -> web.StreamResponse:
    """POST /-/admin/unyank/{name}/{version}."""
    name = project_name(request.match_info["name"])
    version = release_version(request.match_info["version"])
    return web.json_response(await set_yank(request, name, version, None))


async def remove_project(request: web.Request, name: NormalizedName, version: str | None) -> str:
    """Remove one private release, or every release of the project (``version`` None);
    audited; 404 if there is nothing to remove. The name stays private (a tombstone)."""
    storage = request.app[appkeys.STORAGE]
    audit = request_audit(request)
    if version is not None:
        return await remove_release(storage, name, version, audit)
    page = await asyncio.to_thread(storage.page, name)
    if page is None or not page.versions:
        raise NotFound(f"no private files of {name}")
    removed = 0
    for each in sorted(page.versions):
        try:
            await remove_release(storage, name, each, audit)
        except NotFound:
            continue  # removed by someone else meanwhile
        removed += 1
    return f"removed {removed} releases of {name}"


async def remove(request: web.Request) -> web.StreamResponse:
    """DELETE /-/admin/projects/{name}/ and /-/admin/projects/{name}/{version}."""
    name = project_name(request.match_info["name"])
    raw = request.match_info.get("version")
    version = release_version(raw) if raw is not None else None
    message = await remove_project(request, name, version)
    return web.json_response({"project": name, "version": version, "message": message})


async def cache_stats(request: web.Request) -> web.StreamResponse:
    """GET /-/admin/cache/stats: what the cache holds (read from the blob index)."""
    app = request.app
    usage = await asyncio.to_thread(data.cache_usage, app[appkeys.BLOBS], app[appkeys.PAGES])
    storage = app[appkeys.STORAGE]
    names = storage.names()
    return web.json_response(
        {
            "size": usage.size,
            "max_size": app[appkeys.CONFIG].storage.cache_max_size,
            "files": usage.files,
            "pages": usage.pages,
            "largest": [
                {"project": project, "bytes": size, "files": files}
                for project, size, files in usage.largest
            ],
            "private_projects": len(names),
            "cache_dir": str(app[appkeys.CONFIG].storage.cache),
        }
    )


async def cache_purge(request: web.Request) -> web.StreamResponse:
    """POST /-/admin/cache/purge, body ``{"projects": ["name", ...]}``: their cached pages
    and files go; private files are never touched."""
    body = await _json_body(request)
    raw = body.get("projects")
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
        raise InvalidRequest("projects: expected a non-empty list of project names")
    names = [project_name(n) for n in raw]
    app = request.app
    blobs, store = app[appkeys.BLOBS], app[appkeys.PAGES].store
    audit = request_audit(request)
    results = []
    for name in dict.fromkeys(names):
        purged = await asyncio.to_thread(maintenance.purge_project, blobs, store, name)
        await audit.record("purge", name)
        results.append(asdict(purged))
    app[appkeys.INDEX].forget_upstream()
    return web.json_response({"purged": results})


async def cache_verify(request: web.Request) -> web.StreamResponse:
    """POST /-/admin/cache/verify: re-hash every cached file, quarantine mismatches; JSON
    lines of progress, then the result."""
    app = request.app
    blobs = app[appkeys.BLOBS]
    quarantine = app[appkeys.CONFIG].storage.cache / "quarantine"
    paths = await asyncio.to_thread(maintenance.list_blobs, blobs)
    response = web.StreamResponse(
        headers={hdrs.CONTENT_TYPE: "application/x-ndjson", hdrs.CACHE_CONTROL: "no-store"}
    )
    await response.prepare(request)

    async def send(line: dict[str, Any]) -> None:
        await response.write(json.dumps(line).encode() + b"\n")

    total = len(paths)
    done = checked = size = 0
    bad: list[dict[str, Any]] = []
    await send({"done": 0, "total": total})
    last = time.monotonic()
    audit = request_audit(request)
    for batch in maintenance.batches(paths, _VERIFY_BATCH):
        found = await asyncio.to_thread(maintenance.verify_blobs, batch, quarantine)
        done += len(batch)
        for verified in found:
            if verified is None:
                continue
            checked += 1
            size += verified.size
            if not verified.ok:
                bad.append(asdict(verified))
                await audit.record("quarantine", "-", sha256=verified.sha256)
        if time.monotonic() - last >= _PROGRESS_EVERY:
            last = time.monotonic()
            await send({"done": done, "total": total})
    await send({"done": done, "total": total})
    await send({"result": {"checked": checked, "bytes": size, "quarantined": bad}})
    await response.write_eof()
    return response
