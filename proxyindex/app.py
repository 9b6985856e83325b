"""``create_app(config)``: the aiohttp application, its resources, middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import hdrs, web

from proxyindex import appkeys, ui, upload, views
from proxyindex.auth import PUBLIC, Authenticator
from proxyindex.cache import BlobStore, PageCache
from proxyindex.config import Config
from proxyindex.downloads import Downloader
from proxyindex.errors import (
    AuthRequired,
    AuthUnavailable,
    ProxyIndexError,
    TooManyRequests,
    UpstreamError,
)
from proxyindex.index import ProjectIndex
from proxyindex.network import ProxyRoutes, tls_context
from proxyindex.prefetch import Prefetcher
from proxyindex.readiness import UpstreamMonitor
from proxyindex.rootindex import RootIndex
from proxyindex.storage import PrivateStorage
from proxyindex.upstream import UpstreamClient

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SCAN_INTERVAL = 1.0  # seconds: a dropped file shows within ~1 s (the promise is 2 s)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reason(message: str) -> str:
    """A reason phrase must be one Latin-1 line (U-07)."""
    line = " ".join(message.split())[:300]
    return line.encode("latin-1", "replace").decode("latin-1")


def error_response(status: int, message: str, realm: str | None = None) -> web.Response:
    headers = {hdrs.CACHE_CONTROL: "no-store"}
    if realm is not None:
        headers[hdrs.WWW_AUTHENTICATE] = f'Basic realm="{realm}"'
    # No Retry-After on 502/504: pip honours it on every retry, so "30" made one failed
    # install wait 5 x 30 s before saying anything; its own backoff retries within seconds.
    return web.Response(
        status=status, reason=_reason(message), text=message + "\n", headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map our exceptions to statuses, in one place (STYLE §6)."""
    try:
        return await handler(request)
    except AuthRequired as exc:
        return error_response(exc.status, str(exc), request.app[appkeys.CONFIG].auth.realm)
    except (TooManyRequests, AuthUnavailable) as exc:
        response = error_response(exc.status, str(exc))
        response.headers[hdrs.RETRY_AFTER] = str(exc.retry_after)
        return response
    except UpstreamError as exc:
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return error_response(exc.status, str(exc))
    except ProxyIndexError as exc:
        return error_response(exc.status, str(exc))
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        # A full disk is the operator's to fix: one log line, and a status and message that
        # say what happened (twine prints them), instead of a 500 and a traceback.
        log.error("%s %s -> 507: %s", request.method, request.path, exc)
        return error_response(507, "the server has no disk space left to store this file")
    except web.HTTPMethodNotAllowed as exc:
        # uv prints a hint for 405; say where uploads go (U-01).
        message = f"{request.method} is not allowed here; upload to {request.url.origin()}/"
        response = error_response(405, message)
        response.headers[hdrs.ALLOW] = ",".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPException as exc:
        if exc.status >= 400:
            exc.headers[hdrs.CACHE_CONTROL] = "no-store"
        raise


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ask for a login where the config protects the route's action (A-01); refuse uploads
    when nobody can log in, unless anonymous uploads are allowed."""
    resource = request.match_info.route.resource
    if resource is not None:  # None: aiohttp's own 404/405 answers
        action = route_action(resource.canonical, request.method)
        authenticator = request.app[appkeys.AUTH]
        identity = await authenticator.authorize(
            action, request.headers.get(hdrs.AUTHORIZATION), request.remote or ""
        )
        if identity is not None:
            request[appkeys.IDENTITY] = identity
    return await handler(request)


async def _scan_forever(storage: PrivateStorage) -> None:
    while True:
        await asyncio.sleep(_SCAN_INTERVAL)
        try:
            await asyncio.to_thread(storage.rescan)
        except Exception:
            log.exception("scanning %s failed", storage.root)


async def _list_page_names(pages: PageCache) -> None:
    try:
        await pages.load_names()
    except Exception:  # without the list every lookup asks the disk: slower, still right
        log.exception("could not list the cached pages")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Everything with a lifetime: created before the ``yield``, closed after it."""
    config = app[appkeys.CONFIG]
    cache_dir = config.storage.cache
    packages_dir = config.storage.packages
    await asyncio.to_thread(packages_dir.mkdir, parents=True, exist_ok=True)
    # Opening the sqlite files and creating folders block: done in threads, like all file I/O.
    storage = await asyncio.to_thread(PrivateStorage, packages_dir, cache_dir / "private-meta")
    await asyncio.to_thread(storage.rescan)
    pages = await asyncio.to_thread(PageCache, cache_dir / "pages")
    blobs = await asyncio.to_thread(BlobStore, cache_dir / "files")
    # The proxy environment is read once, here; the CA files are read in a thread.
    proxies = ProxyRoutes.from_settings(config.upstream.proxy, os.environ)
    tls = await asyncio.to_thread(tls_context, config.upstream.ca_file)
    session = UpstreamClient.make_session(tls)
    upstream = UpstreamClient(config.upstream, session, proxies)
    downloader = Downloader(blobs, pages, upstream, config.storage.cache_max_size)
    index = ProjectIndex(config, storage, pages, upstream)
    root = await asyncio.to_thread(RootIndex, cache_dir / "root", storage, upstream)
    prefetcher = Prefetcher(
        index.upstream_page_for_prefetch, downloader, config.upstream.prefetch_max_size
    )
    if config.upstream.prefetch:
        index.on_page_fetched = prefetcher.page_fetched
    app[appkeys.STORAGE] = storage
    app[appkeys.PAGES] = pages
    app[appkeys.BLOBS] = blobs
    app[appkeys.DOWNLOADER] = downloader
    app[appkeys.INDEX] = index
    app[appkeys.ROOT] = root
    monitor = UpstreamMonitor(upstream, config.upstream.check_interval)
    app[appkeys.UPSTREAM_CHECK] = monitor
    checker = asyncio.create_task(monitor.run_forever()) if config.upstream.check_interval else None
    scanner = asyncio.create_task(_scan_forever(storage))
    warm = asyncio.create_task(asyncio.to_thread(storage.warm))
    listing = asyncio.create_task(_list_page_names(pages))
    try:
        yield
    finally:
        if checker is not None:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
        scanner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scanner
        await listing
        storage.stop_warming()
        await warm
        await root.close()
        await prefetcher.close()
        await index.close()
        await downloader.close()
        await session.close()
        await asyncio.to_thread(pages.close)
        await asyncio.to_thread(storage.close)


# Which action each route is: resource path -> method -> action (README "Users, tokens and
# access"). A route missing here needs a login whenever auth is on (fail closed), and
# tests/test_auth.py fails for it: give every new route its action, PUBLIC only on purpose.
_ACTIONS: dict[str, dict[str, str]] = {
    "/health": {"GET": PUBLIC, "HEAD": PUBLIC},
    # Load balancers and Kubernetes probe it without credentials; it names no project.
    "/ready": {"GET": PUBLIC, "HEAD": PUBLIC},
    "/simple": {"GET": PUBLIC, "HEAD": PUBLIC},
    "/simple/": {"GET": "list", "HEAD": "list"},
    "/simple/{name}/": {"GET": "list", "HEAD": "list"},
    "/simple/{name}": {"GET": "list", "HEAD": "list"},
    "/packages/{name}/{filename}": {"GET": "download", "HEAD": "download"},
    "/pypi/{name}/json": {"GET": "list", "HEAD": "list"},
    "/pypi/{name}/json/": {"GET": "list", "HEAD": "list"},
    "/pypi/{name}/{version}/json": {"GET": "list", "HEAD": "list"},
    "/pypi/{name}/{version}/json/": {"GET": "list", "HEAD": "list"},
    "/": {**ui.HOME_ACTIONS, "POST": "upload"},
    "/legacy": {"POST": "upload"},
    "/legacy/": {"POST": "upload"},
    # pypiserver-style project URLs at the root redirect to /simple/<name>/ (a listing).
    "/{name}/": {"GET": "list", "HEAD": "list"},
    "/{name}": {"GET": "list", "HEAD": "list"},
    **ui.ACTIONS,  # the web UI (proxyindex/ui): home and stylesheet PUBLIC, the rest "list"
}
_UNLISTED = "unlisted route"  # not an action anyone can leave unprotected


def route_action(path: str, method: str) -> str:
    """The action of a route; an unlisted route or method gets one that always needs a login."""
    return _ACTIONS.get(path, {}).get(method, _UNLISTED)


async def _auth_resources(app: web.Application) -> AsyncIterator[None]:
    yield
    app[appkeys.AUTH].close()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[appkeys.CONFIG] = config
    app[appkeys.AUTH] = Authenticator(config.auth)
    app.cleanup_ctx.append(_auth_resources)
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/health", views.health)
    app.router.add_get("/ready", views.ready)
    app.router.add_get("/simple/", views.root_page)
    app.router.add_get("/simple", _simple_slash)
    app.router.add_get("/simple/{name}/", views.project_page)
    app.router.add_get("/simple/{name}", views.project_redirect)
    app.router.add_get("/packages/{name}/{filename}", views.dist_file)
    for path in ("/pypi/{name}/json", "/pypi/{name}/{version}/json"):
        app.router.add_get(path, views.project_json)
        app.router.add_get(path + "/", views.project_json)
    for path in ("/", "/legacy", "/legacy/"):
        app.router.add_post(path, upload.handle_upload)
    ui.setup(app)  # GET / and /ui/...: before the catch-all routes below
    # pypiserver-style index URLs (the server root): any fixed route above matches first.
    app.router.add_get("/{name}/", views.root_name_redirect)
    app.router.add_get("/{name}", views.root_name_redirect)
    return app


async def _simple_slash(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/simple/")
