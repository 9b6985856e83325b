"""``create_app(config)``: the aiohttp application, its resources, middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import hdrs, web
from packaging.utils import NormalizedName

from proxyindex import ui
from proxyindex.auth.authenticator import PUBLIC, Authenticator
from proxyindex.config import Config
from proxyindex.errors import (
    AuthRequired,
    AuthUnavailable,
    Offline,
    ProxyIndexError,
    StillHashing,
    TooManyRequests,
    UpstreamError,
)
from proxyindex.index.projects import ProjectIndex
from proxyindex.index.root import RootIndex
from proxyindex.models import ProjectPage
from proxyindex.private.audit import AuditLog, audit_path
from proxyindex.private.storage import PrivateStorage
from proxyindex.upstream.cache import BlobStore, PageCache
from proxyindex.upstream.client import UpstreamClient
from proxyindex.upstream.downloads import Downloader
from proxyindex.upstream.network import ProxyRoutes, tls_context
from proxyindex.upstream.pages import PageListener, UpstreamPages
from proxyindex.upstream.prefetch import Prefetcher
from proxyindex.upstream.readiness import UpstreamMonitor
from proxyindex.upstream.wheelmeta import WheelMetadata
from proxyindex.web import appkeys, upload, views
from proxyindex.web.routes import Handler, Route

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SCAN_INTERVAL = 1.0  # seconds: a dropped file shows within ~1 s (the promise is 2 s)


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
    except (TooManyRequests, AuthUnavailable, StillHashing) as exc:
        response = error_response(exc.status, str(exc))
        response.headers[hdrs.RETRY_AFTER] = str(exc.retry_after)
        return response
    except UpstreamError as exc:
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return error_response(exc.status, str(exc))
    except Offline as exc:
        log.info("%s %s -> 404: %s", request.method, request.path, exc)
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
    warming: asyncio.Future[int] | None = None
    while True:
        await asyncio.sleep(_SCAN_INTERVAL)
        try:
            await asyncio.to_thread(storage.poll)
        except Exception:
            log.exception("scanning %s failed", storage.root)
        # Files dropped in are hashed in the background at once (shared with any request).
        if storage.has_unwarmed and (warming is None or warming.done()):
            warming = asyncio.ensure_future(asyncio.to_thread(storage.warm_changed))
            warming.add_done_callback(_log_warm_failure)


def _log_warm_failure(task: asyncio.Future[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hashing new private files failed", exc_info=task.exception())


async def _list_page_names(pages: PageCache) -> None:
    try:
        await pages.load_names()
    except Exception:  # without the list every lookup asks the disk: slower, still right
        log.exception("could not list the cached pages")


def _all_of(listeners: list[PageListener]) -> PageListener | None:
    if not listeners:
        return None

    def fetched(page: ProjectPage) -> None:
        for listener in listeners:
            listener(page)

    return fetched


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _finish(task: asyncio.Task[None]) -> None:
    await task


async def _stop_warming(storage: PrivateStorage, warm: asyncio.Future[int]) -> None:
    storage.stop_warming()
    await warm


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Everything with a lifetime: created before the ``yield``, closed after it.

    Each resource's close is pushed on one exit stack as soon as it exists, so a failure
    halfway through start-up closes what was opened, and shutdown closes in reverse order
    (the background tasks first, the upstream session before the caches, storage last).
    """
    config = app[appkeys.CONFIG]
    cache_dir = config.storage.cache
    packages_dir = config.storage.packages
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.to_thread(packages_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(app[appkeys.AUDIT].check)  # unwritable: refuse to start
        # Opening the sqlite files and creating folders block: done in threads, like all
        # file I/O.
        storage = await asyncio.to_thread(PrivateStorage, packages_dir, cache_dir / "private-meta")
        stack.push_async_callback(asyncio.to_thread, storage.close)
        await asyncio.to_thread(storage.rescan)
        pages = await asyncio.to_thread(PageCache, cache_dir / "pages")
        stack.push_async_callback(asyncio.to_thread, pages.close)
        blobs = await asyncio.to_thread(BlobStore, cache_dir / "files")
        stack.push_async_callback(asyncio.to_thread, blobs.close)
        # The proxy environment is read once, here; the CA files are read in a thread.
        proxies = ProxyRoutes.from_settings(config.upstream.proxy, os.environ)
        tls = await asyncio.to_thread(tls_context, config.upstream.ca_file)
        session = UpstreamClient.make_session(tls)
        stack.push_async_callback(session.close)
        upstream = UpstreamClient(config.upstream, session, proxies)
        downloader = Downloader(blobs, pages, upstream, config.storage.cache_max_size)
        stack.push_async_callback(downloader.close)
        wheel_metadata = WheelMetadata(blobs, pages, upstream, downloader)
        stack.push_async_callback(wheel_metadata.close)

        # The prefetcher hears of fetched pages and reads pages itself (never private ones):
        # it is given the index that exists a few lines later.
        async def page_for_prefetch(name: NormalizedName) -> ProjectPage | None:
            return await index.upstream_page_for_prefetch(name)

        prefetcher = Prefetcher(
            page_for_prefetch, downloader, config.upstream.prefetch_max_size, wheel_metadata.get
        )
        listeners = app[appkeys.PAGE_LISTENERS].copy()  # the web UI's counter, if any
        if config.upstream.prefetch and not config.upstream.offline:
            listeners.append(prefetcher.page_fetched)
        budget = config.server.memory_cache_size
        upstream_pages = UpstreamPages(
            config.upstream,
            pages,
            upstream,
            _all_of(listeners),
            memory_bytes=budget * 4 // 10 if budget else None,
        )
        stack.push_async_callback(upstream_pages.close)
        stack.push_async_callback(prefetcher.close)
        index = ProjectIndex(config, storage, upstream_pages)
        root = await asyncio.to_thread(RootIndex, cache_dir / "root", storage, upstream)
        stack.push_async_callback(root.close)
        app[appkeys.STORAGE] = storage
        app[appkeys.PAGES] = pages
        app[appkeys.BLOBS] = blobs
        app[appkeys.DOWNLOADER] = downloader
        app[appkeys.WHEEL_METADATA] = wheel_metadata
        app[appkeys.INDEX] = index
        app[appkeys.ROOT] = root
        monitor = UpstreamMonitor(upstream, config.upstream.check_interval)
        app[appkeys.UPSTREAM_CHECK] = monitor
        interval = config.upstream.check_interval
        checked = interval and not config.upstream.offline
        checker = asyncio.create_task(monitor.run_forever()) if checked else None
        scanner = asyncio.create_task(_scan_forever(storage))
        warm = asyncio.create_task(asyncio.to_thread(storage.warm))
        listing = asyncio.create_task(_list_page_names(pages))
        stack.push_async_callback(_stop_warming, storage, warm)
        stack.push_async_callback(_finish, listing)  # reads one folder: let it end
        stack.push_async_callback(_cancel, scanner)
        if checker is not None:
            stack.push_async_callback(_cancel, checker)
        yield


async def _simple_slash(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/simple/")


# The one route table: every route names its action, PUBLIC only on purpose. A route added
# without it (``app.router.add_get`` elsewhere) needs a login whenever auth is on (fail closed),
# and tests/test_auth.py fails for it. Order matters: the web UI (``GET /``, ``/ui/...``) and
# then the pypiserver-style root URLs last, so every fixed route above matches first.
_INDEX_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", views.health, PUBLIC),
    # Load balancers and Kubernetes probe it without credentials; it names no project.
    Route("GET", "/ready", views.ready, PUBLIC),
    Route("GET", "/simple/", views.root_page, "list"),
    Route("GET", "/simple", _simple_slash, PUBLIC),
    Route("GET", "/simple/{name}/", views.project_page, "list"),
    Route("GET", "/simple/{name}", views.project_redirect, "list"),
    Route("GET", "/packages/{name}/{filename}", views.dist_file, "download"),
    Route("GET", "/pypi/{name}/json", views.project_json, "list"),
    Route("GET", "/pypi/{name}/json/", views.project_json, "list"),
    Route("GET", "/pypi/{name}/{version}/json", views.project_json, "list"),
    Route("GET", "/pypi/{name}/{version}/json/", views.project_json, "list"),
    Route("POST", "/", upload.handle_upload, "upload"),
    Route("POST", "/legacy", upload.handle_upload, "upload"),
    Route("POST", "/legacy/", upload.handle_upload, "upload"),
)
# pypiserver-style project URLs at the root redirect to /simple/<name>/ (a listing).
_ROOT_NAME_ROUTES = (
    Route("GET", "/{name}/", views.root_name_redirect, "list"),
    Route("GET", "/{name}", views.root_name_redirect, "list"),
)
ROUTES: tuple[Route, ...] = (*_INDEX_ROUTES, *ui.ROUTES, *_ROOT_NAME_ROUTES)


def _action_table(routes: tuple[Route, ...]) -> dict[tuple[str, str], str]:
    actions = {(route.path, route.method): route.action for route in routes}
    heads = {(route.path, "HEAD"): route.action for route in routes if route.method == "GET"}
    return actions | heads


_ACTIONS = _action_table(ROUTES)
_UNLISTED = "unlisted route"  # not an action anyone can leave unprotected


def route_action(path: str, method: str) -> str:
    """The action of a route; an unlisted route or method gets one that always needs a login."""
    return _ACTIONS.get((path, method), _UNLISTED)


async def _auth_resources(app: web.Application) -> AsyncIterator[None]:
    yield
    app[appkeys.AUTH].close()


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[appkeys.CONFIG] = config
    app[appkeys.AUTH] = Authenticator(config.auth)
    app[appkeys.AUDIT] = AuditLog(audit_path(config))
    app.cleanup_ctx.append(_auth_resources)
    app.cleanup_ctx.append(_resources)
    app[appkeys.PAGE_LISTENERS] = []
    ui.setup(app)
    for route in ROUTES:
        route.add_to(app.router)
    return app
