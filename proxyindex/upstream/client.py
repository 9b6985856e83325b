"""The one HTTP client to the upstream index: project pages (conditional GET) and file bodies.

It only speaks HTTP and turns every failure into an :class:`UpstreamError`; caching decisions
live in ``index`` and ``downloads``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

import aiohttp
from packaging.utils import NormalizedName
from yarl import URL

from proxyindex import __version__, cpulane
from proxyindex.config import UpstreamConfig
from proxyindex.cpulane import CpuLane
from proxyindex.errors import UpstreamTimeout, UpstreamUnavailable
from proxyindex.metrics import Metrics
from proxyindex.models import DistFile, ProjectPage
from proxyindex.simple import parse_project
from proxyindex.upstream.cache import PageEntry
from proxyindex.upstream.credentials import Credentials
from proxyindex.upstream.network import Proxy, ProxyRoutes

__all__ = [
    "UPSTREAM_ACCEPT",
    "FileClients",
    "UpstreamClient",
    "UpstreamFile",
    "mask_url",
    "upstream_name",
]

log = logging.getLogger(__name__)

# JSON first: it carries size, upload-time and versions; HTML is accepted back (UP-01, UP-07).
UPSTREAM_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
_CHUNK = 256 * 1024
_PARSE_INLINE_BYTES = 64 * 1024


def upstream_name(url: URL) -> str:
    """The name an upstream goes by in metrics: ``pypi`` for PyPI, else its host (pure)."""
    host = url.host or "upstream"
    return "pypi" if host in ("pypi.org", "pypi.python.org") else host


def mask_url(url: str | URL) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parsed = URL(str(url))
    if parsed.password is not None:
        parsed = parsed.with_password("***")
    return str(parsed)


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """An open upstream file body: its declared length and an iterator of chunks."""

    length: int | None
    chunks: AsyncIterator[bytes]


class FileClients(Protocol):
    """Who fetches a file: one client, or the router over several upstreams."""

    @property
    def config(self) -> UpstreamConfig: ...

    async def client_for(self, dist: DistFile) -> UpstreamClient: ...


class UpstreamClient:
    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        proxies: ProxyRoutes | None = None,
        metrics: Metrics | None = None,
        credentials: Credentials | None = None,
        *,
        name: str | None = None,
        cpu: CpuLane | None = None,
    ) -> None:
        self.config = config
        self.cpu = cpu  # the lane big pages are parsed in (``proxyindex.cpulane``)
        self.base = URL(config.url)
        # The ``upstream`` label of its metrics: the configured name, else from the host.
        self.name = name or upstream_name(self.base)
        self._metrics = metrics if metrics is not None else Metrics()
        self._credentials = credentials
        self._session = session
        self._proxies = proxies if proxies is not None else ProxyRoutes()
        self._page_timeout = aiohttp.ClientTimeout(
            total=config.timeout, sock_connect=config.connect_timeout
        )
        # Files may be large: bound the connection and each read, not the whole transfer.
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.timeout
        )

    @staticmethod
    def make_session(tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
        """The one session; ``tls`` from :func:`proxyindex.network.tls_context` (the system's
        CAs plus ``upstream.ca_file``; None: aiohttp's default). No ``trust_env``: proxies
        are chosen per request from :class:`ProxyRoutes`, and ``~/.netrc`` is never read."""
        connector = aiohttp.TCPConnector(
            limit=64, limit_per_host=32, ttl_dns_cache=300, ssl=tls if tls is not None else True
        )
        return aiohttp.ClientSession(
            headers={"User-Agent": f"proxyindex/{__version__}"},
            connector=connector,
            auto_decompress=True,
            trace_configs=[_request_log()] if log.isEnabledFor(logging.DEBUG) else None,
        )

    async def client_for(self, dist: DistFile) -> UpstreamClient:
        """One upstream: this client fetches every file (see :class:`FileClients`)."""
        return self

    def _refuse_offline(self, url: str | URL) -> None:
        """The last guard of offline mode: the callers answer from the cache before they get
        here, so a request that does is a bug, refused instead of opening a connection."""
        if self.config.offline:
            raise UpstreamUnavailable(f"offline: not contacting the upstream for {mask_url(url)}")

    def project_url(self, name: NormalizedName) -> URL:
        return self.base / name / ""

    @asynccontextmanager
    async def _get(
        self,
        url: str | URL,
        headers: dict[str, str],
        limits: aiohttp.ClientTimeout,
        *,
        decompress: bool = True,
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, Proxy | None]]:
        """Every upstream GET: the offline guard, the proxy for this URL, and aiohttp's errors
        mapped to ours (also those raised while the caller reads the body)."""
        self._refuse_offline(url)
        if self._credentials is not None:  # only to this upstream's own hosts
            headers = {**headers, **self._credentials.headers_for(url)}
        proxy = self._proxies.for_url(URL(url))
        with (
            self._metrics.upstream_call(self.name) as call,
            _mapped_errors(url, "failed for", proxy),
        ):
            async with self._session.get(
                url,
                headers=headers,
                timeout=limits,
                auto_decompress=decompress,
                proxy=_proxy_url(proxy),
                proxy_auth=_proxy_auth(proxy),
            ) as resp:
                call.answered(resp)
                yield resp, proxy

    async def fetch_page(self, name: NormalizedName, cached: PageEntry | None) -> PageEntry:
        """GET the project's page; revalidate ``cached`` with If-None-Match when it has an ETag."""
        url = self.project_url(name)
        headers = {"Accept": UPSTREAM_ACCEPT}
        if cached is not None and cached.etag and cached.page is not None:
            headers["If-None-Match"] = cached.etag
        started = time.monotonic()
        async with self._get(url, headers, self._page_timeout) as (resp, proxy):
            if resp.status == 304 and cached is not None:
                return PageEntry(cached.page, time.time(), cached.etag)
            if resp.status == 404:
                return PageEntry(None, time.time())
            _require_200(resp, url, proxy)
            body = await self._read_page(resp, name)
            content_type = resp.headers.get("Content-Type", "")
            etag = resp.headers.get("ETag")
            final_url = str(resp.url)
            serial = _serial(resp.headers.get("X-PyPI-Last-Serial"))
        if len(body) > _PARSE_INLINE_BYTES:  # PyPI's big pages are megabytes of JSON
            page = await _parse_in_thread(self.cpu, body, content_type, final_url, name)
        else:
            page = parse_project(body, content_type, final_url, name)
        if page.serial is None and serial is not None:  # HTML with no <!--SERIAL n-->
            page = dataclasses.replace(page, serial=serial)
        log.debug("fetched %s in %.3fs", mask_url(url), time.monotonic() - started)
        return PageEntry(page, time.time(), etag)

    async def fetch_document(
        self, url: str, etag: str | None, name: NormalizedName
    ) -> tuple[int, bytes | None, str | None, str]:
        """GET a JSON document (PyPI's ``/pypi/<name>/json``), revalidated with ``etag``:
        (status, body or None on 304/404, ETag, Content-Type). Bounded by ``max_page_size``."""
        headers = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        async with self._get(url, headers, self._page_timeout) as (resp, proxy):
            if resp.status in (304, 404, 410):
                return resp.status, None, etag, ""
            _require_200(resp, url, proxy)
            body = await self._read_page(resp, name)
            return 200, bytes(body), resp.headers.get("ETag"), resp.headers.get("Content-Type", "")

    async def probe(self, limit: int = 64 * 1024) -> tuple[int, str, bytes]:
        """GET the upstream's root and read only its first ``limit`` bytes (PyPI's root is
        40 MB): (status, Content-Type, first bytes). UpstreamError if it cannot be reached."""
        head = bytearray()
        accept = {"Accept": UPSTREAM_ACCEPT}
        async with self._get(self.base, accept, self._page_timeout) as (resp, _proxy):
            while resp.status == 200 and len(head) < limit:
                chunk = await resp.content.read(limit - len(head))
                if not chunk:
                    break
                head += chunk
            # Leaving the block with the body unread closes the connection.
            return resp.status, resp.headers.get("Content-Type", ""), bytes(head)

    async def _read_page(self, resp: aiohttp.ClientResponse, name: NormalizedName) -> bytearray:
        """The (decoded) body, counted while it arrives: UpstreamUnavailable as soon as it
        passes ``max_page_size``, so a runaway page costs at most that much memory (once: a
        bytearray grows in place, where joining chunks or ``bytes()`` would copy it)."""
        limit = self.config.max_page_size
        too_big = UpstreamUnavailable(
            f"upstream page for {name} is larger than upstream.max_page_size ({limit} bytes)"
        )
        if resp.content_length is not None and resp.content_length > limit:
            raise too_big
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise too_big
        return body

    @asynccontextmanager
    async def _stream(
        self, url: str, headers: dict[str, str], *, decompress: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a body to stream; UpstreamError on refusal, non-200 or timeout."""
        async with self._get(url, headers, self._file_timeout, decompress=decompress) as (
            resp,
            proxy,
        ):
            _require_200(resp, url, proxy)
            yield resp

    @asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[UpstreamFile]:
        """Stream an upstream file, exactly as stored (no content decoding)."""
        async with self._stream(url, {"Accept-Encoding": "identity"}, decompress=False) as resp:
            yield UpstreamFile(resp.content_length, self._chunks(resp, url))

    async def read_range(self, url: str, spec: str, limit: int) -> tuple[int, bytes, int] | None:
        """GET ``Range: bytes=<spec>`` of a file: (the offset of the bytes, the bytes, the
        file's total size), as ``Content-Range`` says and checked against the body; None when
        the upstream ignores ranges (answers 200; the body is not read). At most ``limit``
        bytes are accepted: UpstreamUnavailable beyond."""
        headers = {"Range": f"bytes={spec}", "Accept-Encoding": "identity"}
        async with self._get(url, headers, self._page_timeout, decompress=False) as (resp, proxy):
            if resp.status == 200:
                return None
            if resp.status != 206:
                _require_200(resp, url, proxy)
            unusable = UpstreamUnavailable(
                f"upstream sent an unusable range of {mask_url(url)}{_via(proxy)}"
            )
            where = _content_range(resp.headers.get("Content-Range", ""))
            if where is None or (resp.content_length or 0) > limit:
                raise unusable
            body = bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise unusable
        first, last, total = where
        if len(body) != last - first + 1 or last >= total:
            raise unusable
        return first, bytes(body), total

    @asynccontextmanager
    async def open_root(self, url: str) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """Stream the upstream root list: (Content-Type, chunks)."""
        async with self._stream(url, {"Accept": UPSTREAM_ACCEPT}, decompress=True) as resp:
            yield resp.headers.get("Content-Type", ""), self._chunks(resp, url)

    @staticmethod
    async def _chunks(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[bytes]:
        with _mapped_errors(url, "broke off"):
            async for chunk in resp.content.iter_chunked(_CHUNK):
                yield chunk


def _serial(value: str | None) -> int | None:
    """``X-PyPI-Last-Serial`` as a number; None if absent or not one."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


def _proxy_url(proxy: Proxy | None) -> URL | None:
    return None if proxy is None else proxy.url


def _proxy_auth(proxy: Proxy | None) -> aiohttp.BasicAuth | None:
    if proxy is None or proxy.login is None:
        return None
    return aiohttp.BasicAuth(proxy.login, proxy.password or "")


def _via(proxy: Proxy | None) -> str:
    return "" if proxy is None else f" via proxy {proxy.display()}"


async def _parse_in_thread(
    lane: CpuLane | None, body: bytearray, content_type: str, url: str, name: NormalizedName
) -> ProjectPage:
    """Parse in a thread; if the caller is cancelled (a shutdown), the parse is told to stop
    at its next check, so the thread, which nothing can kill, ends within a moment."""
    stop = threading.Event()
    try:
        return await cpulane.run(
            lane, len(body), parse_project, body, content_type, url, name, stop.is_set
        )
    except asyncio.CancelledError:
        stop.set()
        raise


def _request_log() -> aiohttp.TraceConfig:
    """At debug level, one line per upstream request: what the proxy fetched, for operators and
    for benchmarks/realpypi.py, which compares it with what clients asked (the access log)."""

    async def on_end(
        _session: aiohttp.ClientSession,
        _ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        resp = params.response
        size = f" ({resp.content_length} bytes)" if resp.content_length is not None else ""
        log.debug("upstream %s %s -> %d%s", params.method, mask_url(params.url), resp.status, size)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return trace


def _content_range(value: str) -> tuple[int, int, int] | None:
    """``bytes first-last/total`` as numbers; None if absent, ``*`` or malformed."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and total.isdigit()):
        return None
    return int(first), int(last), int(total)


def _require_200(resp: aiohttp.ClientResponse, url: str | URL, proxy: Proxy | None) -> None:
    if resp.status != 200:
        # Through a plain-http proxy, its own refusals (407, 403, 502) arrive as responses.
        raise UpstreamUnavailable(
            f"upstream answered {resp.status} for {mask_url(url)}{_via(proxy)}"
        )


@contextmanager
def _mapped_errors(url: str | URL, doing: str, proxy: Proxy | None = None) -> Iterator[None]:
    """aiohttp's timeouts and connection errors as our UpstreamError leaves (502/504), with a
    reason that says which hop failed: the proxy, TLS verification, or the upstream."""
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout(f"upstream timed out for {mask_url(url)}{_via(proxy)}") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        cert_error = exc.certificate_error
        why = getattr(cert_error, "verify_message", None) or cert_error
        raise UpstreamUnavailable(
            f"upstream TLS certificate not trusted for {mask_url(url)}{_via(proxy)}: {why}; "
            "set upstream.ca_file to the CA that signed it"
        ) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        where = "" if proxy is None else f" {proxy.display()} ({proxy.source})"
        raise UpstreamUnavailable(
            f"cannot connect to the proxy{where} for {mask_url(url)}: {exc.os_error}"
        ) from exc
    except aiohttp.ClientHttpProxyError as exc:
        raise UpstreamUnavailable(
            f"the proxy refused {mask_url(url)}{_via(proxy)}: {exc.status} {exc.message}"
        ) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable(f"upstream {doing} {mask_url(url)}{_via(proxy)}: {exc}") from exc
