"""Thin request handlers: read the request, ask the index, build the response."""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, NoReturn

from aiohttp import hdrs, web
from packaging.utils import NormalizedName

from proxyindex.distname import project_of
from proxyindex.errors import InvalidRequest, NotFound, UpstreamUnavailable
from proxyindex.fsutil import is_safe_filename
from proxyindex.guard.rules import Snapshot, parse_snapshot
from proxyindex.index.projects import RenderedPage
from proxyindex.models import DistFile, is_valid_name, normalize
from proxyindex.simple import SimpleFormat, body_etag, negotiate
from proxyindex.upstream.clientprofile import CLIENT, profile_from_user_agent
from proxyindex.upstream.downloads import CachedBlob
from proxyindex.upstream.readiness import storage_problems
from proxyindex.web import appkeys, delivery
from proxyindex.web.pieces import PiecesResponse
from proxyindex.web.responses import (
    IMMUTABLE,
    PRIVATE_IMMUTABLE,
    FollowedDownload,
    StoredFile,
    etag_matches,
    not_modified,
)

__all__ = [
    "dist_file",
    "health",
    "project_json",
    "project_page",
    "project_redirect",
    "ready",
    "root_name_redirect",
    "root_page",
]

_VARY = "Accept, Accept-Encoding"
# A file evicted between its download and its sending is fetched again, this many times.
_EVICTED_RETRIES = 3


@lru_cache(maxsize=4096)
def _checked_name(raw: str) -> NormalizedName | None:
    return normalize(raw) if is_valid_name(raw) else None


def _canonical(request: web.Request) -> NormalizedName:
    """The normalised project name of the URL; 301 to the canonical URL if it differs (N-03)."""
    raw = request.match_info["name"]
    name = _checked_name(raw)
    if name is None:
        raise NotFound(f"not a valid project name: {raw[:100]!r}")
    if name != raw:
        path = request.path.replace(f"/{raw}/", f"/{name}/", 1)
        raise web.HTTPMovedPermanently(request.rel_url.with_path(path, keep_query=True))
    return name


async def project_redirect(request: web.Request) -> web.StreamResponse:
    """``/simple/<name>`` without the slash: 301 to the canonical URL (N-04)."""
    raw = request.match_info["name"]
    if not is_valid_name(raw):
        raise NotFound(f"not a valid project name: {raw[:100]!r}")
    when = request.match_info.get("when")
    prefix = f"/snapshot/{when}" if when is not None else ""
    location = request.rel_url.with_path(f"{prefix}/simple/{normalize(raw)}/", keep_query=True)
    raise web.HTTPMovedPermanently(location)


async def root_name_redirect(request: web.Request) -> web.StreamResponse:
    """``/<name>/`` (and ``/<name>``): 301 to ``/simple/<name>/``, for clients migrated from
    pypiserver with the server root as their index URL, which would otherwise get 404 and
    "No matching distribution". Never for the first segment of one of our own routes (read
    from the router, so a route added later is covered): those answer as without this route."""
    raw = request.match_info["name"]
    if raw in _route_segments(request.app.router):
        await _answer_as_without_redirects(request)
    if not is_valid_name(raw):
        raise NotFound(f"no page at {request.path[:100]!r}")
    location = request.rel_url.with_path(f"/simple/{normalize(raw)}/", keep_query=True)
    raise web.HTTPMovedPermanently(location)


async def _answer_as_without_redirects(request: web.Request) -> NoReturn:
    """405 where another route takes this path with other methods (``GET /legacy``: uploads
    only), else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise NotFound(f"no page at {request.path[:100]!r}")


def _route_segments(router: web.UrlDispatcher) -> frozenset[str]:
    """First path segments of the fixed routes: ``/health`` -> ``health``, ``/simple/{name}/``
    -> ``simple``; routes that start with a variable (``/{name}/``) name none."""
    segments = set()
    for resource in router.resources():
        first = resource.canonical.lstrip("/").partition("/")[0]
        if first and "{" not in first:
            segments.add(first)
    return frozenset(segments)


def _snapshot(request: web.Request) -> Snapshot | None:
    """The moment of a ``/snapshot/<when>/...`` URL (None elsewhere); one in the future
    would not be reproducible, so it is refused."""
    when = request.match_info.get("when")
    if when is None:
        return None
    try:
        snapshot = parse_snapshot(when)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if snapshot.at > time.time():
        raise InvalidRequest(f"snapshot {when!r} is in the future: it would not be reproducible")
    return snapshot


def _format(request: web.Request) -> SimpleFormat:
    return negotiate(request.headers.get(hdrs.ACCEPT), request.query.get("format"))


def _cache_control(request: web.Request, max_age: int, private: bool) -> str:
    """Pages: behind a login (``list`` protected) never stored by a shared cache; with
    private files always revalidated (CC-01); never ``public``."""
    value = f"max-age={max_age}" + (", must-revalidate" if private else "")
    return "private, " + value if request.app[appkeys.AUTH].protects("list") else value


def _file_cache_control(request: web.Request) -> str:
    """Files and ``.metadata`` never change; behind a login they are ``private``."""
    return PRIVATE_IMMUTABLE if request.app[appkeys.AUTH].protects("download") else IMMUTABLE


def _page_response(
    request: web.Request, rendered: RenderedPage, fmt: SimpleFormat, max_age: int
) -> web.Response:
    use_gzip = rendered.gzip_body is not None and "gzip" in request.headers.get(
        hdrs.ACCEPT_ENCODING, ""
    )
    etag = rendered.etag[:-1] + '-gz"' if use_gzip else rendered.etag
    headers: dict[str, str] = {
        hdrs.ETAG: etag,
        hdrs.CACHE_CONTROL: _cache_control(request, max_age, rendered.private),
        hdrs.VARY: _VARY,
    }
    if rendered.serial is not None:
        headers["X-PyPI-Last-Serial"] = str(rendered.serial)
    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return not_modified(headers)
    headers[hdrs.CONTENT_TYPE] = fmt.content_type
    if use_gzip:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=rendered.gzip_body, headers=headers)
    return web.Response(body=rendered.body, headers=headers)


async def project_page(request: web.Request) -> web.StreamResponse:
    name = _canonical(request)
    fmt = _format(request)
    # Whatever this request fetches upstream is fetched ahead for this kind of client.
    CLIENT.set(profile_from_user_agent(request.headers.get(hdrs.USER_AGENT)))
    snapshot = _snapshot(request)
    rendered, max_age = await request.app[appkeys.INDEX].render(name, fmt, snapshot)
    return _page_response(request, rendered, fmt, max_age)


async def root_page(request: web.Request) -> web.StreamResponse:
    """The root list; under a snapshot the same list (names only: a project with nothing in
    the snapshot lists no files)."""
    _snapshot(request)
    fmt = _format(request)
    # Another worker's upload is listed on the next request here too, as on project pages.
    await request.app[appkeys.INDEX].catch_up()
    root = request.app[appkeys.ROOT]
    use_gzip = "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "")
    body, files = await root.opened(fmt, packed=use_gzip)
    headers: dict[str, str] = {
        hdrs.ETAG: body.etag,
        hdrs.CACHE_CONTROL: _cache_control(request, 300, False),
        hdrs.VARY: _VARY,
    }
    if body.serial is not None:
        headers["X-PyPI-Last-Serial"] = str(body.serial)
    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), body.etag):
        await asyncio.to_thread(_close_all, files)
        return not_modified(headers)
    headers[hdrs.CONTENT_TYPE] = fmt.content_type
    if use_gzip:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    return PiecesResponse(body, files, headers=headers)


def _close_all(files: dict[Path, BinaryIO]) -> None:
    for fh in files.values():
        fh.close()


def _file_name(request: web.Request, name: NormalizedName) -> str:
    filename = request.match_info["filename"]
    if not is_safe_filename(filename):
        raise NotFound("not a valid filename")
    dist_name = filename.removesuffix(".metadata")
    if project_of(dist_name) != name:
        raise NotFound(f"{dist_name!r} is not a file of project {name!r}")
    return filename


async def dist_file(request: web.Request) -> web.StreamResponse:
    """A distribution file or its ``.metadata`` (PEP 658), from storage or through the cache."""
    name = _canonical(request)
    filename = _file_name(request, name)
    snapshot = _snapshot(request)
    if filename.endswith(".metadata"):
        return await _metadata(request, name, filename.removesuffix(".metadata"), snapshot)
    target = await request.app[appkeys.INDEX].locate(name, filename, snapshot)
    if isinstance(target, Path):
        return StoredFile(target, headers={hdrs.CACHE_CONTROL: _file_cache_control(request)})
    return await _upstream_file(request, target)


async def _upstream_file(request: web.Request, dist: DistFile) -> web.StreamResponse:
    """An upstream file from the cache, or following its one download (streamed to every
    client as it arrives, the last byte once verified). A cached file evicted before it
    could be opened is fetched again."""
    redirect = await delivery.bucket_redirect(request, dist)  # storage.s3_delivery
    if redirect is not None:
        return redirect
    headers: dict[str, str] = {hdrs.CACHE_CONTROL: _file_cache_control(request)}
    downloader = request.app[appkeys.DOWNLOADER]
    for _attempt in range(_EVICTED_RETRIES):
        found = await downloader.get(dist)
        # X-Cache says whether the cache had it (``proxyindex prefetch`` counts on it).
        headers["X-Cache"] = "HIT" if isinstance(found, CachedBlob) else "MISS"
        if isinstance(found, CachedBlob):
            return StoredFile(found.path, file=found.file, stat=found.stat, headers=headers)
        if request.method == hdrs.METH_GET and hdrs.RANGE not in request.headers:
            with found.hold() as cursor:  # entered before any await: see Download.hold
                response = FollowedDownload(found, cursor, headers)
                await response.prepare(request)
                return response
        await found.wait()  # HEAD or a range: sent from the cache once committed
    raise UpstreamUnavailable(f"{dist.filename} was evicted from the cache as soon as fetched")


async def _metadata(
    request: web.Request, name: NormalizedName, filename: str, snapshot: Snapshot | None
) -> web.StreamResponse:
    index = request.app[appkeys.INDEX]
    target = await index.locate(name, filename, snapshot)
    if isinstance(target, Path):
        data = await index.private_metadata(name, filename)
        if data is None:
            raise NotFound(f"no metadata for {filename!r}")
        return _metadata_response(request, data)
    meta = target.metadata_file()
    if meta is None:
        if not filename.endswith(".whl"):
            raise NotFound(f"the upstream has no metadata file for {filename!r}")
        # Advertised for every upstream wheel: read out of the wheel (upstream.wheelmeta).
        return _metadata_response(request, await request.app[appkeys.WHEEL_METADATA].get(target))
    return await _upstream_file(request, meta)


def _metadata_response(request: web.Request, data: bytes) -> web.StreamResponse:
    etag = body_etag(data)
    headers: dict[str, str] = {
        hdrs.CACHE_CONTROL: _file_cache_control(request),
        hdrs.ETAG: etag,
    }
    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return not_modified(headers)
    return web.Response(body=data, headers=headers, content_type="application/octet-stream")


_MAX_VERSION_LENGTH = 100


async def project_json(request: web.Request) -> web.StreamResponse:
    """PyPI's JSON API for one project or one release (PJ-02): the upstream's own document
    when it has one, else made from the merged page; the same dependency-confusion rules as
    ``/simple/<name>/`` (``index.jsonpages``)."""
    name = _canonical(request)
    version = request.match_info.get("version")
    if version is not None and (len(version) > _MAX_VERSION_LENGTH or not version.isprintable()):
        raise NotFound("not a valid version")
    config = request.app[appkeys.CONFIG]
    base_url = config.server.base_url or f"{request.scheme}://{request.host}"
    answer = await request.app[appkeys.JSON_PAGES].render(
        name, version, base_url, _snapshot(request)
    )
    rendered = answer.rendered
    use_gzip = rendered.gzip_body is not None and "gzip" in request.headers.get(
        hdrs.ACCEPT_ENCODING, ""
    )
    etag = rendered.etag[:-1] + '-gz"' if use_gzip else rendered.etag
    headers: dict[str, str] = {
        hdrs.ETAG: etag,
        hdrs.CACHE_CONTROL: _cache_control(request, answer.max_age, rendered.private),
        hdrs.VARY: "Accept-Encoding",
    }
    if answer.serial is not None:
        headers["X-PyPI-Last-Serial"] = str(answer.serial)
    if etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return not_modified(headers)
    headers[hdrs.CONTENT_TYPE] = "application/json"
    if use_gzip:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=rendered.gzip_body, headers=headers)
    return web.Response(body=rendered.body, headers=headers)


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"}, headers={hdrs.CACHE_CONTROL: "no-store"})


async def ready(request: web.Request) -> web.StreamResponse:
    """200 when the server can serve: its folders are usable and the upstream answered the
    last background check as a simple index; else 503 saying what is wrong (``/health``
    only says the process is up)."""
    config = request.app[appkeys.CONFIG]
    problems = await asyncio.to_thread(
        storage_problems, config.storage.packages, config.storage.cache
    )
    details = []
    for monitor in request.app[appkeys.UPSTREAM_CHECKS]:  # every upstream, in order
        if config.upstream.offline:
            upstream = "offline (upstream.offline = true): serving only what is cached"
        elif monitor.interval == 0:
            upstream = "not checked (upstream.check_interval = 0)"
        elif monitor.last is None:
            upstream = f"upstream {monitor.url} not checked yet"
            problems.append(upstream)
        else:
            upstream = monitor.last.detail
            if not monitor.last.ok:
                problems.append(upstream)
        details.append(upstream)
    body = {
        "status": "not ready" if problems else "ready",
        "problems": problems,
        "upstream": "; ".join(dict.fromkeys(details)),
    }
    return web.json_response(
        body, status=503 if problems else 200, headers={hdrs.CACHE_CONTROL: "no-store"}
    )
