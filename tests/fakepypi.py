"""A fake upstream PyPI: a real aiohttp server on 127.0.0.1 in its own thread, with fault knobs.

Why a thread with its own event loop: tests drive blocking subprocesses (pip, uv, the proxy
server) while this fake must keep answering; sharing the test's loop would freeze it. Why a real
socket: the proxy under test talks HTTP to it exactly as it talks to pypi.org, and ``stop()``
really closes the listening socket, so "upstream down" is a refused connection, not a mock.

State (projects, knobs, request log) lives on the :class:`FakePyPI` object, not in the app, so it
survives ``stop()``/``start()``; ``reset()`` clears it between tests.

Knobs (plain attributes, read by the server thread on every request; all reset by ``reset()``):

``status``
    ``int``: answer every request with this status (plain-text body). ``Mapping[str, int]``:
    path prefix -> status; the longest matching prefix wins, other paths behave normally.
``delay``
    Seconds to sleep before answering any request (the sleep is async; other requests proceed).
``truncate_files``
    Dist files (GET only, not ``.metadata``) are sent with the correct ``Content-Length`` but only
    the first half of the bytes, then the connection is aborted: a short body.
``wrong_hash``
    Dist files are served CORRUPTED (same length, bytes inverted in the middle) while the pages
    keep advertising the true sha256 and size. Chosen over "advertise a wrong hash" because the
    pages stay truthful: once the knob is cleared, a retry gets good bytes against the same
    cached page, which is what "a corrupt download is never cached" tests need.
``no_etag``
    No ``ETag`` on pages and never a 304.
``html_only``
    Like some corporate mirrors: every simple page is HTML with ``Content-Type: text/html``,
    whatever ``Accept`` says, and with no ``ETag``, ``X-PyPI-Last-Serial`` or ``Cache-Control``.
``metadata_404``
    ``<file>.metadata`` answers 404 although pages still advertise ``core-metadata``.
``no_core_metadata``
    Like some mirrors (and what this machine reaches as pypi.org): pages carry no
    ``core-metadata`` and ``<file>.metadata`` answers 404.
``ignore_range``
    Dist files ignore ``Range`` and always answer 200 with the whole body (by default a
    single ``Range: bytes=a-b`` or ``bytes=-n`` is answered 206 with ``Content-Range``).
``relative_urls``
    File URLs on pages are relative (``../../files/...``) instead of absolute.
``root_names``
    Adds N synthetic projects ``synthetic-000001``... to the ``/simple/`` root list only.
``raw_pages``
    ``Mapping[str, tuple[str, bytes]]``: project name -> (Content-Type, body). That project's
    page answers 200 with exactly these bytes, whatever ``Accept`` says and whether the project
    exists: a maintenance page, random bytes, JSON of the wrong shape.
``huge_pages``
    ``Mapping[str, int]``: project name -> size in bytes. That project's page answers 200 with
    a PEP 503 page of that size (the same block of anchors over and over), streamed in 64 KiB
    chunks without Content-Length, so a client only learns the size by reading. Nothing that
    size is ever held in memory here.
``huge_page_chunk_delay``
    Seconds to sleep between the chunks of a huge page: a slow upstream.
``required_authorization`` / ``authorization_paths``
    A private index: requests whose path starts with ``authorization_paths`` (default ``/``)
    get 401 unless their ``Authorization`` header is exactly this value (None: no login).
``file_delay``
    Seconds to sleep before answering a dist file (not ``.metadata``): a slow files host.
    ``files_peak`` (not a knob; reset too) records the most dist files answered at once.
``json_api``
    ``Mapping[str, bytes]``: ``"<name>"`` or ``"<name>/<version>"`` -> the body of PyPI's JSON
    API document at ``/pypi/<name>/json`` or ``/pypi/<name>/<version>/json`` (a recorded
    document), served with an ETag (304 on If-None-Match) and ``X-PyPI-Last-Serial`` from its
    ``last_serial``. Any other JSON API path answers 404, like an index without that API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import html
import json
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from packaging.utils import (
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from tests.wheelmaker import make_sdist, make_wheel, sdist_metadata, wheel_metadata

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from aiohttp.typedefs import Handler

__all__ = ["JSON_TYPE", "FakePyPI", "LoggedRequest", "choose_format"]

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
_JSON_NAMES = frozenset({JSON_TYPE, "application/vnd.pypi.simple.latest+json"})
_HTML_NAMES = frozenset({HTML_TYPE, "application/vnd.pypi.simple.latest+html"})
_API_VERSION = "1.1"
# Default upload-time: a fixed origin plus one second per serial, so pages are reproducible.
_UPLOAD_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the fake saw it (before any knob acted on it)."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]


@dataclass(frozen=True, slots=True)
class _Dist:
    filename: str
    version: str
    data: bytes
    sha256: str
    yanked: bool | str
    upload_time: str
    requires_python: str | None
    metadata: bytes | None  # only wheels get a PEP 658 file, like PyPI

    @property
    def metadata_sha256(self) -> str | None:
        return None if self.metadata is None else hashlib.sha256(self.metadata).hexdigest()


@dataclass(slots=True)
class _Project:
    display_name: str
    serial: int
    files: dict[str, _Dist] = field(default_factory=dict)


def choose_format(accept: str | None, format_param: str | None = None) -> str:
    """Pick the Content-Type PyPI would answer with for this ``Accept`` header.

    JSON when a JSON simple type is named with q>0 and no other named type has a higher q
    (ties go to JSON, PEP 691 "most expressive"); else v1+html if it is named at least as high
    as text/html; else text/html (also for ``*/*``, a missing header, or nothing acceptable).
    ``?format=`` overrides ``Accept``, as at PyPI's edge.
    """
    if format_param:
        accept = format_param
    q_json = q_html = q_text = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if media in _JSON_NAMES:
            q_json = max(q_json, q)
        elif media in _HTML_NAMES:
            q_html = max(q_html, q)
        elif media == "text/html":
            q_text = max(q_text, q)
    if q_json > 0 and q_json >= max(q_html, q_text):
        return JSON_TYPE
    if q_html > 0 and q_html >= q_text:
        return HTML_TYPE
    return "text/html"


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for token in if_none_match.split(","):
        tag = token.strip().removeprefix("W/")
        if tag in ("*", etag):
            return True
    return False


def _corrupt(data: bytes) -> bytes:
    """Invert a 64-byte window in the middle: same size, different sha256."""
    mid = len(data) // 2
    window = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    return data[:mid] + window + data[mid + len(window) :]


async def _shutdown(runner: web.AppRunner) -> None:
    """Stop serving, then cancel handlers still sleeping in ``delay`` (the shutdown timeout
    left them pending, and a closed loop would drop them with a warning)."""
    await runner.cleanup()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class FakePyPI:
    """A PEP 503/691 index with files, served from its own thread. See the module docstring."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: serve HTTPS with this server context (e.g. a trustme certificate)."""
        self.host = host
        self._port = port
        self._tls = tls
        self.scheme = "http" if tls is None else "https"
        self._lock = threading.Lock()
        self._projects: dict[NormalizedName, _Project] = {}
        self._by_sha: dict[str, _Dist] = {}
        self._serial = 0
        self._log: list[LoggedRequest] = []
        self._root_cache: dict[tuple[str, int, int], bytes] = {}
        self._tmp: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._reset_knobs()

    # -- knobs ----------------------------------------------------------------------------------

    def _reset_knobs(self) -> None:
        self.status: int | Mapping[str, int] | None = None
        self.delay: float = 0.0
        self.truncate_files = False
        self.wrong_hash = False
        self.no_etag = False
        self.html_only = False
        self.metadata_404 = False
        self.no_core_metadata = False
        self.ignore_range = False
        self.relative_urls = False
        self.root_names = 0
        self.raw_pages: Mapping[str, tuple[str, bytes]] = {}
        self.huge_pages: Mapping[str, int] = {}
        self.huge_page_chunk_delay = 0.0
        self.file_delay = 0.0
        self.files_peak = 0
        self._files_active = 0
        self.json_api: Mapping[str, bytes] = {}
        # A private index: requests under ``authorization_paths`` without exactly this
        # Authorization header get 401 (None: no login needed).
        self.required_authorization: str | None = None
        self.authorization_paths = "/"

    def reset(self) -> None:
        """Forget projects, knobs and the request log; keep the server (and its port) as is."""
        with self._lock:
            self._projects.clear()
            self._by_sha.clear()
            self._root_cache.clear()
            self._log.clear()
            self._serial += 1  # never goes back, so a proxy's serial check sees a fresh index
        self._reset_knobs()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakePyPI was never started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41237``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    def start(self) -> None:
        """Bind and serve. After the first start the SAME port is re-bound, so URLs stay valid."""
        if self._runner is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fakepypi", daemon=True)
        thread.start()
        try:
            self._runner = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise
        self._loop, self._thread = loop, thread

    async def _serve(self) -> web.AppRunner:
        # shutdown_timeout: a request stuck in `delay` must not hold stop() for the default 60 s.
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True, ssl_context=self._tls)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        return runner

    def stop(self) -> None:
        """Close the listening socket and all connections: new connections are refused."""
        runner, loop, thread = self._runner, self._loop, self._thread
        if runner is None or loop is None or thread is None:
            return
        self._runner = self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(_shutdown(runner), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def restart(self) -> None:
        """Come back on the same port (e.g. after ``stop()`` simulated an outage)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and delete the temp dir that ``add_wheel``/``add_sdist`` build into."""
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- content --------------------------------------------------------------------------------

    def add_dist(
        self,
        path: Path,
        *,
        yanked: bool | str = False,
        upload_time: str | None = None,
    ) -> Path:
        """Publish a built wheel or sdist under its (normalised) project; returns ``path``.

        Re-adding an identical file is a no-op (no serial bump); a different file or flag with
        the same filename replaces it. ``upload_time`` is ``yyyy-mm-ddThh:mm:ss.ffffffZ``.
        """
        filename = path.name
        data = path.read_bytes()
        metadata: bytes | None
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
            metadata = wheel_metadata(path)
            fields = metadata
        else:
            name, version = parse_sdist_filename(filename)
            metadata = None
            fields = sdist_metadata(path)
        msg = BytesParser().parsebytes(fields, headersonly=True)
        display_name = str(msg.get("Name") or name)
        requires_python = msg.get("Requires-Python")
        with self._lock:
            project = self._projects.get(name)
            old = None if project is None else project.files.get(filename)
            if upload_time is None:
                upload_time = (
                    old.upload_time
                    if old is not None
                    else (_UPLOAD_EPOCH + timedelta(seconds=self._serial + 1)).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ"
                    )
                )
            dist = _Dist(
                filename=filename,
                version=str(version),
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                yanked=yanked,
                upload_time=upload_time,
                requires_python=None if requires_python is None else str(requires_python),
                metadata=metadata,
            )
            if old == dist:
                return path
            if project is None:
                project = self._projects[name] = _Project(display_name, self._serial)
            if old is not None:
                self._by_sha.pop(old.sha256, None)
            project.files[filename] = dist
            self._by_sha[dist.sha256] = dist
            self._bump(project)
        return path

    def _bump(self, project: _Project) -> None:
        # Caller holds the lock.
        self._serial += 1
        project.serial = self._serial
        self._root_cache.clear()

    def _build_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="fakepypi-"))
        return Path(tempfile.mkdtemp(dir=self._tmp))

    def add_wheel(
        self,
        name: str,
        version: str,
        *,
        requires_dist: Sequence[str] = (),
        requires_python: str | None = None,
        modules: Mapping[str, str] | None = None,
        tag: str = "py3-none-any",
        yanked: bool | str = False,
        upload_time: str | None = None,
    ) -> Path:
        """Build a wheel with :func:`make_wheel` into a private temp dir and publish it."""
        path = make_wheel(
            self._build_dir(),
            name,
            version,
            requires_dist=requires_dist,
            requires_python=requires_python,
            modules=modules,
            tag=tag,
        )
        return self.add_dist(path, yanked=yanked, upload_time=upload_time)

    def add_sdist(
        self,
        name: str,
        version: str,
        *,
        requires_dist: Sequence[str] = (),
        requires_python: str | None = None,
        yanked: bool | str = False,
        upload_time: str | None = None,
    ) -> Path:
        """Build an sdist with :func:`make_sdist` into a private temp dir and publish it."""
        path = make_sdist(
            self._build_dir(),
            name,
            version,
            requires_dist=requires_dist,
            requires_python=requires_python,
        )
        return self.add_dist(path, yanked=yanked, upload_time=upload_time)

    def set_yanked(self, filename: str, yanked: bool | str) -> None:
        """Change one file's yanked flag (bumps the project's serial)."""
        with self._lock:
            project, dist = self._find_locked(filename)
            new = dataclasses.replace(dist, yanked=yanked)
            project.files[filename] = new
            self._by_sha[new.sha256] = new
            self._bump(project)

    def remove_dist(self, filename: str) -> None:
        """Delete one file; the project stays listed (with fewer files)."""
        with self._lock:
            project, dist = self._find_locked(filename)
            del project.files[filename]
            self._by_sha.pop(dist.sha256, None)
            self._bump(project)

    def _find_locked(self, filename: str) -> tuple[_Project, _Dist]:
        for project in self._projects.values():
            if filename in project.files:
                return project, project.files[filename]
        raise KeyError(filename)

    def file_url(self, filename: str) -> str:
        """Absolute URL of a published file (as absolute pages advertise it)."""
        with self._lock:
            _project, dist = self._find_locked(filename)
        return f"{self.url}/files/{dist.sha256}/{quote(filename, safe='')}"

    @property
    def serial(self) -> int:
        """The index-wide serial (``X-PyPI-Last-Serial`` of ``/simple/``)."""
        with self._lock:
            return self._serial

    def project_serial(self, name: str) -> int:
        with self._lock:
            return self._projects[canonicalize_name(name)].serial

    # -- request log ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the log, oldest first."""
        with self._lock:
            return list(self._log)

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self._log]

    def count(self, prefix: str = "", method: str | None = None) -> int:
        """How many logged requests have a path starting with ``prefix`` (and this method)."""
        with self._lock:
            return sum(
                1
                for r in self._log
                if r.path.startswith(prefix) and (method is None or r.method == method)
            )

    def requests_for(self, prefix: str) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self._log if r.path.startswith(prefix)]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- the aiohttp app (runs in the server thread) --------------------------------------------

    def _make_app(self) -> web.Application:
        @web.middleware
        async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            with self._lock:
                self._log.append(
                    LoggedRequest(
                        request.method,
                        request.path,
                        request.query_string,
                        CIMultiDictProxy(CIMultiDict(request.headers)),
                    )
                )
            required = self.required_authorization
            if (
                required is not None
                and request.path.startswith(self.authorization_paths)
                and request.headers.get("Authorization") != required
            ):
                return web.Response(status=401, text="fakepypi: login required\n")
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            forced = self._forced_status(request.path)
            if forced is not None:
                return web.Response(status=forced, text=f"fakepypi: forced {forced}\n")
            return await handler(request)

        app = web.Application(middlewares=[faults])
        app.router.add_get("/simple/", self._root)
        app.router.add_get("/simple/{name}/", self._project)
        app.router.add_get("/simple/{name}", self._add_slash)
        app.router.add_get("/files/{sha256}/{filename}", self._file)
        app.router.add_get("/pypi/{name}/json", self._json_api)
        app.router.add_get("/pypi/{name}/{version}/json", self._json_api)
        return app

    async def _json_api(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["name"]
        if "version" in request.match_info:
            key += "/" + request.match_info["version"]
        body = self.json_api.get(key)
        if body is None:
            raise web.HTTPNotFound(text="fakepypi: no JSON API document\n")
        headers = {"ETag": _etag(body), "Cache-Control": "max-age=900, public"}
        serial = json.loads(body).get("last_serial")
        if isinstance(serial, int):
            headers["X-PyPI-Last-Serial"] = str(serial)
        if _etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers, content_type="application/json")

    def _forced_status(self, path: str) -> int | None:
        status = self.status
        if status is None or isinstance(status, int):
            return status
        matches = [prefix for prefix in status if path.startswith(prefix)]
        return status[max(matches, key=len)] if matches else None

    def _content_type(self, request: web.Request) -> str:
        if self.html_only:
            return "text/html"
        return choose_format(request.headers.get("Accept"), request.query.get("format"))

    def _page(
        self, request: web.Request, body: bytes, content_type: str, serial: int
    ) -> web.Response:
        headers: dict[str, str] = {}
        if not self.html_only:
            headers["Vary"] = "Accept"
            headers["X-PyPI-Last-Serial"] = str(serial)
            headers["Cache-Control"] = "max-age=600, public"
            if not self.no_etag:
                etag = headers["ETag"] = _etag(body)
                if _etag_matches(request.headers.get("If-None-Match"), etag):
                    return web.Response(status=304, headers=headers)
        charset = "; charset=utf-8" if content_type != JSON_TYPE else ""
        headers["Content-Type"] = content_type + charset
        return web.Response(body=body, headers=headers)

    async def _root(self, request: web.Request) -> web.StreamResponse:
        content_type = self._content_type(request)
        with self._lock:
            serial, synthetic = self._serial, self.root_names
            key = (content_type, serial, synthetic)
            body = self._root_cache.get(key)
            if body is None:
                names: list[tuple[str, str, int]] = [
                    (p.display_name, n, p.serial) for n, p in sorted(self._projects.items())
                ]
                for i in range(1, synthetic + 1):
                    names.append((f"synthetic-{i:06d}", f"synthetic-{i:06d}", 0))
                body = self._root_cache[key] = _render_root(content_type, names, serial)
        return self._page(request, body, content_type, serial)

    async def _add_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(self._canonical(request, request.match_info["name"]))

    @staticmethod
    def _canonical(request: web.Request, name: str) -> str:
        location = f"/simple/{canonicalize_name(name)}/"
        return location + (f"?{request.query_string}" if request.query_string else "")

    async def _project(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["name"]
        name = canonicalize_name(raw)
        if name != raw:
            raise web.HTTPMovedPermanently(self._canonical(request, raw))
        if name in self.raw_pages:
            content_type, body = self.raw_pages[name]
            return web.Response(body=body, headers={"Content-Type": content_type})
        if name in self.huge_pages:
            return await self._huge_page(request, name, self.huge_pages[name])
        content_type = self._content_type(request)
        with self._lock:
            project = self._projects.get(name)
            if project is None:
                raise web.HTTPNotFound(text="fakepypi: no such project\n")
            dists = sorted(project.files.values(), key=lambda d: (Version(d.version), d.filename))
            serial = project.serial
        base = "../../files" if self.relative_urls else f"{self.url}/files"
        urls = [f"{base}/{d.sha256}/{quote(d.filename, safe='')}" for d in dists]
        if self.no_core_metadata:
            dists = [dataclasses.replace(d, metadata=None) for d in dists]
        if content_type == JSON_TYPE:
            body = _render_project_json(name, dists, urls, serial)
        else:
            body = _render_project_html(name, dists, urls, serial)
        return self._page(request, body, content_type, serial)

    async def _huge_page(self, request: web.Request, name: str, size: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        head = f"<!DOCTYPE html>\n<html><body><h1>Links for {name}</h1>\n".encode()
        block = _anchor_block(name, 64 * 1024)
        sent = 0
        try:
            await resp.write(head)
            sent = len(head)
            while sent < size:
                piece = block[: size - sent]
                await resp.write(piece)
                sent += len(piece)
                if self.huge_page_chunk_delay:
                    await asyncio.sleep(self.huge_page_chunk_delay)
        except ConnectionError:  # the client stopped reading: what a size limit does
            return resp
        await resp.write_eof()
        return resp

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["filename"].endswith(".metadata"):
            return await self._file_or_metadata(request)
        self._files_active += 1  # the server thread's loop is the only writer
        self.files_peak = max(self.files_peak, self._files_active)
        try:
            if self.file_delay > 0:
                await asyncio.sleep(self.file_delay)
            return await self._file_or_metadata(request)
        finally:
            self._files_active -= 1

    async def _file_or_metadata(self, request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        want_metadata = filename.endswith(".metadata")
        with self._lock:
            dist = self._by_sha.get(request.match_info["sha256"])
        if want_metadata:
            if dist is None or dist.filename + ".metadata" != filename or dist.metadata is None:
                raise web.HTTPNotFound()
            if self.metadata_404 or self.no_core_metadata:
                raise web.HTTPNotFound(text="fakepypi: metadata_404\n")
            body = dist.metadata
        else:
            if dist is None or dist.filename != filename:
                raise web.HTTPNotFound()
            body = _corrupt(dist.data) if self.wrong_hash else dist.data
        headers = {
            "ETag": f'"{hashlib.sha256(body).hexdigest()[:32]}"',
            "Cache-Control": "max-age=365000000, immutable, public",
        }
        if _etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
            return web.Response(status=304, headers=headers)
        if self.truncate_files and not want_metadata and request.method == "GET":
            return await _send_truncated(request, body, headers)
        wanted = _byte_range(request.headers.get("Range"), len(body))
        if wanted is not None and not want_metadata and not self.ignore_range:
            start, end = wanted
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
            return web.Response(
                status=206,
                body=body[start:end],
                headers=headers,
                content_type="application/octet-stream",
            )
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as [start, end); None if absent or other."""
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").partition("-")
    if not first and last.isdigit():
        return max(0, size - int(last)), size
    if first.isdigit() and (last.isdigit() or not last):
        end = min(size, int(last) + 1) if last else size
        return (int(first), end) if int(first) < end else None
    return None


async def _send_truncated(
    request: web.Request, body: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Promise ``len(body)`` bytes, send half, then drop the connection."""
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    return resp


def _anchor_block(name: str, size: int) -> bytes:
    """About ``size`` bytes of PEP 503 anchors for made-up sdists of ``name``."""
    lines: list[str] = []
    total = 0
    while total < size:
        filename = f"{name}-0.{len(lines)}.tar.gz"
        line = f'<a href="/files/{"0" * 64}/{filename}#sha256={"0" * 64}">{filename}</a><br />\n'
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def _render_root(content_type: str, names: list[tuple[str, str, int]], serial: int) -> bytes:
    if content_type == JSON_TYPE:
        doc = {
            "meta": {"api-version": _API_VERSION, "_last-serial": serial},
            "projects": [{"name": display, "_last-serial": s} for display, _n, s in names],
        }
        return json.dumps(doc, separators=(",", ":")).encode()
    links = "".join(
        f'    <a href="/simple/{html.escape(n)}/">{html.escape(display)}</a>\n'
        for display, n, _s in names
    )
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{_API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
        f"{links}  </body>\n</html>\n<!--SERIAL {serial}-->\n"
    ).encode()


def _render_project_json(name: str, dists: list[_Dist], urls: list[str], serial: int) -> bytes:
    files = []
    for dist, url in zip(dists, urls, strict=True):
        meta_sha = dist.metadata_sha256
        files.append(
            {
                "filename": dist.filename,
                "url": url,
                "hashes": {"sha256": dist.sha256},
                "requires-python": dist.requires_python,
                "size": len(dist.data),
                "upload-time": dist.upload_time,
                "yanked": dist.yanked,
                "core-metadata": False if meta_sha is None else {"sha256": meta_sha},
            }
        )
    doc = {
        "meta": {"api-version": _API_VERSION, "_last-serial": serial},
        "name": name,
        "files": files,
        "versions": sorted({d.version for d in dists}, key=Version),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _render_project_html(name: str, dists: list[_Dist], urls: list[str], serial: int) -> bytes:
    esc = html.escape
    lines = []
    for dist, url in zip(dists, urls, strict=True):
        attrs = [f'href="{esc(url)}#sha256={dist.sha256}"']
        if dist.requires_python is not None:
            attrs.append(f'data-requires-python="{esc(dist.requires_python)}"')
        if dist.metadata_sha256 is not None:
            value = f"sha256={dist.metadata_sha256}"
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        if dist.yanked is not False:
            reason = "" if dist.yanked is True else str(dist.yanked)
            attrs.append(f'data-yanked="{esc(reason)}"')
        lines.append(f"    <a {' '.join(attrs)}>{esc(dist.filename)}</a><br />\n")
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{_API_VERSION}">\n'
        f"    <title>Links for {esc(name)}</title>\n  </head>\n  <body>\n"
        f"    <h1>Links for {esc(name)}</h1>\n"
        f"{''.join(lines)}  </body>\n</html>\n<!--SERIAL {serial}-->\n"
    ).encode()
