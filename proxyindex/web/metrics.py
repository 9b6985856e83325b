"""``GET /metrics`` and the request counting behind it (the metric objects: ``proxyindex.metrics``).

Every request is counted by :func:`metrics_middleware`, the outermost middleware, so it sees
the status clients get (refused logins, errors mapped to 4xx/5xx, aiohttp's own 404/405);
the bytes of each body are counted when its headers go out (``on_response_prepare``).

Who may scrape: the route's action is ``metrics``. When ``auth.protect`` lists it, the auth
middleware asks for a login as for any route, and any valid user may scrape from anywhere.
Otherwise no login is asked, and :func:`scrape_allowed` answers only clients on this machine
that came through no reverse proxy (a proxy on the same host makes every client look local;
it adds a ``Forwarded``/``X-Forwarded-For`` header), unless ``metrics.public`` is on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

from proxyindex.errors import Forbidden
from proxyindex.metrics import CONTENT_TYPE, State, StateCollector
from proxyindex.upstream.cache import BlobStore
from proxyindex.web import appkeys

__all__ = [
    "CACHE_MEASURE",
    "CacheMeasure",
    "metrics_middleware",
    "metrics_view",
    "route_label",
    "scrape_allowed",
    "setup",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_UNMATCHED = "unmatched"  # aiohttp's own 404 (no route): one label for every unknown URL
_FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
# Seconds a measurement of the cache is reused. It reads two rows of the blob index now; it
# was a walk of the folder (about a second of a thread at 100,000 blobs).
_MEASURE_EVERY = 60.0


def route_label(request: web.Request) -> str:
    """The matched route's path template (``/simple/{name}/``), never the raw URL: the
    label's values are the route table's rows, whatever clients ask for."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request by route, method and status class, and time it (until the handler
    returns: a file sent after that is not included)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's number for it)
        raise
    finally:
        seconds = time.perf_counter() - started
        request.app[appkeys.METRICS].answered(route_label(request), request.method, status, seconds)


async def _count_body(request: web.Request, response: web.StreamResponse) -> None:
    """Bytes served: the body's length as its headers go out (HEAD and 304 send none)."""
    length = response.content_length
    if length and request.method != hdrs.METH_HEAD and response.status != 304:
        request.app[appkeys.METRICS].served(route_label(request), length)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a Unix socket, or no address
        return False


def scrape_allowed(protected: bool, public: bool, remote: str, headers: Mapping[str, str]) -> bool:
    """May this request read /metrics (pure)? ``protected``: the auth middleware already
    checked a login. Else only ``metrics.public`` or a local client not behind a proxy."""
    if protected or public:
        return True
    return _is_loopback(remote) and not any(name in headers for name in _FORWARDED)


@dataclass(slots=True)
class CacheMeasure:
    """The cache folder's size and file count, measured in a thread at most once a minute:
    a scrape reads the last measurement and, when it is old, starts the next one without
    waiting for it (only the first scrape waits)."""

    blobs: BlobStore | None = None
    size: int | None = None
    files: int | None = None
    measured_at: float = 0.0
    _running: asyncio.Task[None] | None = None

    async def current(self) -> tuple[int | None, int | None]:
        if self.blobs is not None and time.monotonic() - self.measured_at > _MEASURE_EVERY:
            if self._running is None or self._running.done():
                self._running = asyncio.create_task(self._measure(self.blobs))
            if self.size is None:
                await asyncio.shield(self._running)
        return self.size, self.files

    async def _measure(self, blobs: BlobStore) -> None:
        self.size, self.files = await asyncio.to_thread(_measure, blobs)
        self.measured_at = time.monotonic()

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)


def _measure(blobs: BlobStore) -> tuple[int, int]:
    """Blocking: the total size and count of the cached blobs, from the blob index (two
    rows; the folder is walked only once, if it was written before the index existed)."""
    blobs.ensure_indexed()
    return blobs.index.total(), blobs.index.count()


CACHE_MEASURE = web.AppKey("metrics_cache_measure", CacheMeasure)


async def _state(app: web.Application) -> State:
    config = app[appkeys.CONFIG]
    storage = app[appkeys.STORAGE]
    size, files = await app[CACHE_MEASURE].current()
    return State(
        cache_bytes=size,
        cache_files=files,
        cache_max_bytes=config.storage.cache_max_size,
        private_projects=len(storage.names()),
        private_files=storage.file_count(),
    )


async def metrics_view(request: web.Request) -> web.StreamResponse:
    """The Prometheus text format: this process's metrics, or with ``--workers N`` every
    worker's, added up; plus the state gauges read now."""
    app = request.app
    allowed = scrape_allowed(
        app[appkeys.AUTH].protects("metrics"),
        app[appkeys.CONFIG].metrics.public,
        request.remote or "",
        request.headers,
    )
    if not allowed:
        app[appkeys.METRICS].auth_failures.labels("not_local").inc()
        raise Forbidden(
            '/metrics is answered to this machine only: add "metrics" to auth.protect '
            "to scrape it with a login, or set metrics.public = true"
        )
    metrics = app[appkeys.METRICS]
    collector = StateCollector(await _state(app))
    if metrics.multiprocess_dir is None:
        body = metrics.exposition(collector)  # memory only: ~1 ms
    else:
        body = await asyncio.to_thread(metrics.exposition, collector)  # reads files
    headers = {hdrs.CONTENT_TYPE: CONTENT_TYPE, hdrs.CACHE_CONTROL: "no-store"}
    return web.Response(body=body, headers=headers)


async def _cache_measure(app: web.Application) -> AsyncIterator[None]:
    """A ``cleanup_ctx`` after the resources' one: the blob store exists; a measurement
    still running is awaited at shutdown, before the resources close."""
    measure = app[CACHE_MEASURE]
    measure.blobs = app[appkeys.BLOBS]
    yield
    await measure.close()


def setup(app: web.Application) -> None:
    """The per-app pieces: the cache measure and the body counter (the middleware and the
    route are in ``web.app``). Call it after the resources' ``cleanup_ctx`` is added."""
    app[CACHE_MEASURE] = CacheMeasure()
    app.cleanup_ctx.append(_cache_measure)
    app.on_response_prepare.append(_count_body)
