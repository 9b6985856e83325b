"""``create_app(config)``: the aiohttp application, its resources, middleware and routes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import hdrs, web
from packaging.utils import NormalizedName

from proxyindex import backends, ui
from proxyindex.auth.authenticator import ADMIN, PUBLIC, Authenticator
from proxyindex.config import DEFAULT_SOURCE_NAME, Config, UpstreamSource
from proxyindex.cpulane import CpuLane
from proxyindex.errors import (
    AuthRequired,
    AuthUnavailable,
    Forbidden,
    Offline,
    PolicyDenied,
    PolicyHidden,
    ProxyIndexError,
    StillHashing,
    TooManyRequests,
    UpstreamError,
)
from proxyindex.guard.live import Guard
from proxyindex.index.jsonpages import JsonPages
from proxyindex.index.projects import ProjectIndex
from proxyindex.index.root import RootIndex, RootSource
from proxyindex.metrics import Metrics
from proxyindex.models import ProjectPage
from proxyindex.private.audit import AuditLog, audit_path
from proxyindex.private.serials import ProjectSerials
from proxyindex.private.store import PrivateStore
from proxyindex.upstream.cache import PageCache
from proxyindex.upstream.client import UpstreamClient
from proxyindex.upstream.credentials import load_credentials
from proxyindex.upstream.downloads import Downloader
from proxyindex.upstream.network import ProxyRoutes, tls_context
from proxyindex.upstream.pages import PageListener, UpstreamPages
from proxyindex.upstream.prefetch import Prefetcher
from proxyindex.upstream.pypijson import UpstreamJsonDocs
from proxyindex.upstream.readiness import UpstreamMonitor
from proxyindex.upstream.router import Upstream, UpstreamRouter
from proxyindex.upstream.sizes import SizeFiller
from proxyindex.upstream.wheelmeta import WheelMetadata
from proxyindex.web import admin, appkeys, upload, views
from proxyindex.web import metrics as metrics_web
from proxyindex.web.routes import Handler, Route

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
POLICY_HEADER = "X-Proxyindex-Policy"  # why a supply-chain rule hid or refused it
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
    except (PolicyHidden, PolicyDenied) as exc:
        request.app[appkeys.METRICS].policy_refused(exc.rule)
        response = error_response(exc.status, str(exc))
        response.headers[POLICY_HEADER] = _reason(exc.policy)  # one Latin-1 line
        return response
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
        header = request.headers.get(hdrs.AUTHORIZATION)
        try:
            identity = await authenticator.authorize(action, header, request.remote or "")
        except (AuthRequired, Forbidden, TooManyRequests) as exc:
            request.app[appkeys.METRICS].refused(exc, header is not None)
            raise
        if identity is not None:
            request[appkeys.IDENTITY] = identity
    return await handler(request)


async def _scan_forever(storage: PrivateStore) -> None:
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


def _all_of(listeners: list[PageListener]) -> PageListener:
    """One listener calling each of ``listeners`` (a list that may grow after this call)."""

    def fetched(page: ProjectPage) -> None:
        for listener in listeners:
            listener(page)

    return fetched


def _visible_only(guard: Guard, listener: PageListener) -> PageListener:
    """Fetch ahead only what the guard lets clients see: a release held back by the cooldown
    is not downloaded before its time. A PyPI-sized page is not filtered on the event loop:
    its prefetch is skipped while rules are on (clients' own requests still fetch)."""

    def fetched(page: ProjectPage) -> None:
        if not guard.rules.active:
            listener(page)
        elif not page.is_large:
            outcome = guard.outcome_now(page)
            if outcome.refused is None:
                listener(outcome.page)

    return fetched


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _finish(task: asyncio.Task[None]) -> None:
    await task


async def _stop_warming(storage: PrivateStore, warm: asyncio.Future[int]) -> None:
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
        bucket = await asyncio.to_thread(backends.bucket, config)  # None: local storage
        storage = await asyncio.to_thread(backends.private_storage, config, bucket)
        stack.push_async_callback(asyncio.to_thread, storage.close)
        await asyncio.to_thread(storage.rescan)
        cpu = CpuLane()
        stack.callback(cpu.close)
        pages = await asyncio.to_thread(PageCache, cache_dir / "pages", cpu)
        stack.push_async_callback(asyncio.to_thread, pages.close)
        blobs = await asyncio.to_thread(backends.blob_store, config, bucket)
        stack.push_async_callback(asyncio.to_thread, blobs.close)
        # The proxy environment is read once, here; the CA files are read in a thread.
        proxies = ProxyRoutes.from_settings(config.upstream.proxy, os.environ)
        tls = await asyncio.to_thread(tls_context, config.upstream.ca_file)
        session = UpstreamClient.make_session(tls)
        stack.push_async_callback(session.close)
        metrics = app[appkeys.METRICS]
        clients = await _clients(config, session, proxies, metrics, cpu)
        # 40% of the memory budget for parsed upstream pages, shared by the upstreams.
        budget = config.server.memory_cache_size
        memory_bytes = budget * 4 // 10 // len(clients) if budget else None
        listeners: list[PageListener] = []  # filled below, once the prefetcher exists
        router = UpstreamRouter(
            [
                Upstream(
                    source,
                    client,
                    _source_pages(source, pages, client, listeners, metrics, memory_bytes),
                )
                for source, client in clients
            ],
            pages,
            config.upstream,
        )
        stack.push_async_callback(router.close)
        downloader = Downloader(blobs, pages, router, config.storage.cache_max_size, metrics)
        stack.push_async_callback(downloader.close)
        wheel_metadata = WheelMetadata(blobs, pages, router, downloader)
        stack.push_async_callback(wheel_metadata.close)

        # The prefetcher hears of fetched pages and reads pages itself (never private ones):
        # it is given the index that exists a few lines later.
        async def page_for_prefetch(name: NormalizedName) -> ProjectPage | None:
            return await index.upstream_page_for_prefetch(name)

        prefetcher = Prefetcher(
            page_for_prefetch,
            downloader,
            config.upstream.prefetch_max_size,
            wheel_metadata.get,
            cpu=cpu,
        )
        ui_listeners: list[PageListener] = app[appkeys.PAGE_LISTENERS]
        listeners.extend(ui_listeners)  # the web UI's counter, if any
        guard = Guard(config.policy)
        guard.on_decision = lambda d: metrics.policy_decided(d.rule, d.verdict.value)
        await asyncio.to_thread(guard.load)
        if config.upstream.prefetch and not config.upstream.offline:
            listeners.append(_visible_only(guard, prefetcher.page_fetched))
        stack.push_async_callback(prefetcher.close)
        serials = await asyncio.to_thread(ProjectSerials, cache_dir / "private-serials")
        stack.push_async_callback(asyncio.to_thread, serials.close)
        index = ProjectIndex(
            config,
            storage,
            router,
            guard,
            serials=serials,
            fill_sizes=SizeFiller(blobs, pages),
            cpu=cpu,
        )
        root_sources = [
            _root_source(source, client, pages, cache_dir) for source, client in clients
        ]
        root = await asyncio.to_thread(
            RootIndex, cache_dir / "root", storage, root_sources, serials
        )
        stack.push_async_callback(root.close)
        app[appkeys.STORAGE] = storage
        app[appkeys.PAGES] = pages
        app[appkeys.BLOBS] = blobs
        app[appkeys.DOWNLOADER] = downloader
        app[appkeys.WHEEL_METADATA] = wheel_metadata
        app[appkeys.INDEX] = index
        # The upstream's own JSON API documents: with one upstream. With several, documents
        # are made from the merged page, which follows the routing by construction.
        json_docs = None
        if len(clients) == 1:
            json_docs = await asyncio.to_thread(
                UpstreamJsonDocs, config.upstream, clients[0][1], cache_dir / "pypi-json"
            )
            stack.push_async_callback(json_docs.close)
        app[appkeys.JSON_PAGES] = JsonPages(index, json_docs, downloader, wheel_metadata)
        app[appkeys.ROOT] = root
        monitors = tuple(
            UpstreamMonitor(client, config.upstream.check_interval, source.name)
            for source, client in clients
        )
        app[appkeys.UPSTREAM_CHECK] = monitors[0]
        app[appkeys.UPSTREAM_CHECKS] = monitors
        interval = config.upstream.check_interval
        checked = interval and not config.upstream.offline
        checkers = [asyncio.create_task(m.run_forever()) for m in monitors] if checked else []
        scanner = asyncio.create_task(_scan_forever(storage))
        warm = asyncio.create_task(asyncio.to_thread(storage.warm))
        listing = asyncio.create_task(_list_page_names(pages))
        stack.push_async_callback(_stop_warming, storage, warm)
        stack.push_async_callback(_finish, listing)  # reads one folder: let it end
        stack.push_async_callback(_cancel, scanner)
        if guard.watches:
            stack.push_async_callback(_cancel, asyncio.create_task(guard.watch_forever()))
        for checker in checkers:
            stack.push_async_callback(_cancel, checker)
        yield


async def _clients(
    config: Config,
    session: aiohttp.ClientSession,
    proxies: ProxyRoutes,
    metrics: Metrics,
    cpu: CpuLane,
) -> list[tuple[UpstreamSource, UpstreamClient]]:
    """One client per upstream, in order, with its credentials (read now, in a thread:
    files; a missing one stops the start with the key's name)."""
    out = []
    for number, (source, settings) in enumerate(config.sources(), 1):
        credentials = await asyncio.to_thread(load_credentials, source, number, os.environ)
        client = UpstreamClient(
            settings, session, proxies, metrics, credentials, name=source.name, cpu=cpu
        )
        out.append((source, client))
    return out


def _source_pages(
    source: UpstreamSource,
    pages: PageCache,
    client: UpstreamClient,
    listeners: list[PageListener],
    metrics: Metrics,
    memory_bytes: int | None,
) -> UpstreamPages:
    """The page state machine of one upstream, in its own namespace of the page cache (the
    default upstream keeps the keys of a cache written before several upstreams)."""
    store = pages if source.name == DEFAULT_SOURCE_NAME else pages.namespace(source.name)
    return UpstreamPages(
        client.config,
        store,
        client,
        _all_of(listeners),
        metrics,
        name=source.name,
        memory_bytes=memory_bytes,
    )


def _root_source(
    source: UpstreamSource, client: UpstreamClient, pages: PageCache, cache_dir: Path
) -> RootSource:
    suffix = "" if source.name == DEFAULT_SOURCE_NAME else f"@{source.name}"
    return RootSource(
        source.name,
        client,
        cache_dir / "root" / f"upstream-names{suffix}.txt",
        source if source.explicit else None,
        functools.partial(pages.served_names, source.name),
    )


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
    # Prometheus; without a login (auth.protect lacks "metrics") only for this machine.
    Route("GET", "/metrics", metrics_web.metrics_view, "metrics"),
    Route("GET", "/simple/", views.root_page, "list"),
    Route("GET", "/simple", _simple_slash, PUBLIC),
    Route("GET", "/simple/{name}/", views.project_page, "list"),
    Route("GET", "/simple/{name}", views.project_redirect, "list"),
    Route("GET", "/packages/{name}/{filename}", views.dist_file, "download"),
    Route("GET", "/pypi/{name}/json", views.project_json, "list"),
    Route("GET", "/pypi/{name}/json/", views.project_json, "list"),
    Route("GET", "/pypi/{name}/{version}/json", views.project_json, "list"),
    Route("GET", "/pypi/{name}/{version}/json/", views.project_json, "list"),
    # Time-travel snapshots (README "Supply-chain policies"): the same pages, files and JSON
    # API as of a date or RFC 3339 time, with the same actions as the routes above.
    Route("GET", "/snapshot/{when}/simple/", views.root_page, "list"),
    Route("GET", "/snapshot/{when}/simple/{name}/", views.project_page, "list"),
    Route("GET", "/snapshot/{when}/simple/{name}", views.project_redirect, "list"),
    Route("GET", "/snapshot/{when}/packages/{name}/{filename}", views.dist_file, "download"),
    Route("GET", "/snapshot/{when}/pypi/{name}/json", views.project_json, "list"),
    Route("GET", "/snapshot/{when}/pypi/{name}/json/", views.project_json, "list"),
    Route("GET", "/snapshot/{when}/pypi/{name}/{version}/json", views.project_json, "list"),
    Route("GET", "/snapshot/{when}/pypi/{name}/{version}/json/", views.project_json, "list"),
    Route("POST", "/", upload.handle_upload, "upload"),
    Route("POST", "/legacy", upload.handle_upload, "upload"),
    Route("POST", "/legacy/", upload.handle_upload, "upload"),
)
# The admin API (``web.admin``): admins only (auth.admins; no users: this host only).
_ADMIN_ROUTES: tuple[Route, ...] = (
    Route("POST", "/-/admin/yank/{name}/{version}", admin.yank, ADMIN),
    Route("POST", "/-/admin/unyank/{name}/{version}", admin.unyank, ADMIN),
    Route("DELETE", "/-/admin/projects/{name}", admin.remove, ADMIN),
    Route("DELETE", "/-/admin/projects/{name}/{version}", admin.remove, ADMIN),
    Route("GET", "/-/admin/cache/stats", admin.cache_stats, ADMIN),
    Route("POST", "/-/admin/cache/purge", admin.cache_purge, ADMIN),
    Route("POST", "/-/admin/cache/verify", admin.cache_verify, ADMIN),
)
# pypiserver-style project URLs at the root redirect to /simple/<name>/ (a listing).
_ROOT_NAME_ROUTES = (
    Route("GET", "/{name}/", views.root_name_redirect, "list"),
    Route("GET", "/{name}", views.root_name_redirect, "list"),
)
ROUTES: tuple[Route, ...] = (*_INDEX_ROUTES, *_ADMIN_ROUTES, *ui.ROUTES, *_ROOT_NAME_ROUTES)


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


def create_app(config: Config, *, metrics_dir: Path | None = None) -> web.Application:
    """The application; ``metrics_dir``: prometheus-client's multiprocess folder, when the
    process was switched to that mode (``serve --workers N``, see ``proxyindex.metrics``)."""
    # The metrics middleware first: it sees what the others answer, refusals included.
    app = web.Application(
        middlewares=[metrics_web.metrics_middleware, error_middleware, auth_middleware]
    )
    app[appkeys.CONFIG] = config
    app[appkeys.METRICS] = metrics = Metrics(metrics_dir)
    app[appkeys.AUTH] = Authenticator(config.auth)
    app[appkeys.AUDIT] = AuditLog(audit_path(config), metrics.audited)
    app.cleanup_ctx.append(_auth_resources)
    app.cleanup_ctx.append(_resources)
    metrics_web.setup(app)
    app[appkeys.PAGE_LISTENERS] = []
    ui.setup(app)
    for route in ROUTES:
        route.add_to(app.router)
    return app
