"""The upstream's own PyPI JSON API documents (``/pypi/<name>/json``), kept fresh like pages.

An upstream laid out like PyPI (the simple index at ``<base>/simple/``) has its JSON API at
``<base>/pypi/<name>/json``: that document knows what no simple page says (``info`` from the
newest release, every digest, the release each file belongs to, ``.exe``/``.egg`` files), so
it is served (rewritten, see ``proxyindex.jsonapi.rewrite``) rather than re-made. Fresh ->
from memory; expired -> revalidated with If-None-Match, one fetch per document; upstream
failing -> the stale document; none cached, a 404, or an answer that is not such a document
-> ``JsonDoc.doc is None`` and the caller synthesises one from the simple page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.utils import NormalizedName
from yarl import URL

from proxyindex import cpulane
from proxyindex.config import UpstreamConfig
from proxyindex.cpulane import CpuLane
from proxyindex.diskstore import open_cache
from proxyindex.errors import UpstreamError
from proxyindex.upstream.background import Background
from proxyindex.upstream.client import UpstreamClient, mask_url

__all__ = ["JsonDoc", "UpstreamJsonDocs", "json_api_url", "parse_document"]

log = logging.getLogger(__name__)

_MEMORY_DOCS = 4096  # entries (404s are small), and at most this many bytes of bodies:
_MEMORY_BYTES = 32 << 20  # a parsed document takes a few times its body; PyPI's reach MBs
_STALE_RETRY = 60  # seconds between upstream attempts while serving a stale document
_PARSE_INLINE_BYTES = 64 * 1024

Key = tuple[NormalizedName, str]  # (project, version or "" for the project document)


@dataclass(frozen=True, slots=True)
class JsonDoc:
    """An upstream JSON API document, parsed; ``doc=None``: the upstream has none."""

    doc: dict[str, Any] | None
    fetched_at: float
    etag: str | None = None
    size: int = 0  # of the body it was parsed from: what memory holds it for


class _Memory:
    """The documents held in memory, least recently used dropped first, bounded by count and
    by the bytes of their bodies."""

    def __init__(self) -> None:
        self._data: OrderedDict[Key, tuple[JsonDoc, float]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Key) -> tuple[JsonDoc, float] | None:
        held = self._data.get(key)
        if held is not None:
            self._data.move_to_end(key)
        return held

    def put(self, key: Key, held: tuple[JsonDoc, float]) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= old[0].size
        self._data[key] = held
        self._bytes += held[0].size
        while len(self._data) > 1 and (
            self._bytes > _MEMORY_BYTES or len(self._data) > _MEMORY_DOCS
        ):
            _key, (dropped, _retry) = self._data.popitem(last=False)
            self._bytes -= dropped.size


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the disk keeps: the body as received (smaller than the parsed dict's pickle)."""

    body: bytes | None
    fetched_at: float
    etag: str | None = None


def json_api_url(simple_url: str, name: NormalizedName, version: str | None) -> str | None:
    """PyPI's layout: ``<base>/simple/`` -> ``<base>/pypi/<name>[/<version>]/json``; None for an
    upstream laid out otherwise (PyTorch's ``/whl/cu121/``, devpi's ``+simple``): it has no
    JSON API that we know of."""
    url = URL(simple_url)
    path = url.path.rstrip("/")
    if path != "/simple" and not path.endswith("/simple"):
        return None
    tail = f"pypi/{name}/json" if version is None else f"pypi/{name}/{quote(version, safe='')}/json"
    return str(url.with_path(path[: -len("simple")] + tail, encoded=True).with_query(None))


def _files_ok(files: object) -> bool:
    return isinstance(files, list) and all(
        isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files
    )


def parse_document(body: bytes) -> dict[str, Any] | None:
    """The document if it has PyPI's shape (``info`` object, ``urls`` list of files,
    ``releases`` an object of file lists when present), else None: never half a document."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("info"), dict):
        return None
    if not _files_ok(doc.get("urls")):
        return None
    releases = doc.get("releases")
    if releases is not None and not (
        isinstance(releases, dict) and all(_files_ok(files) for files in releases.values())
    ):
        return None
    return doc


async def _parse(body: bytes | None, lane: CpuLane | None) -> dict[str, Any] | None:
    if body is None:
        return None
    if len(body) > _PARSE_INLINE_BYTES:
        return await cpulane.run(lane, len(body), parse_document, body)
    return parse_document(body)


class UpstreamJsonDocs:
    """The document state machine (see the module docstring); disk in its own diskcache."""

    def __init__(self, config: UpstreamConfig, client: UpstreamClient, directory: Path) -> None:
        self.config = config
        self.client = client
        self._disk = open_cache(directory, sqlite_synchronous=0)  # blocking: build in a thread
        self._memory = _Memory()  # key -> (doc, retry_at)
        self._flights: dict[Key, asyncio.Future[JsonDoc]] = {}
        self._tasks = Background()

    async def close(self) -> None:
        await self._tasks.close()
        await asyncio.to_thread(self._disk.close)

    def _retry_at(self, doc: JsonDoc) -> float:
        ttl = self.config.page_ttl if doc.doc is not None else self.config.negative_ttl
        return doc.fetched_at + ttl

    def _read_disk(self, key: Key) -> _Stored | None:
        try:
            value: Any = self._disk.get(("doc", *key))
        except Exception:  # an entry from another version: a miss
            return None
        return value if isinstance(value, _Stored) else None

    async def _cached(self, key: Key) -> tuple[JsonDoc, float] | None:
        held = self._memory.get(key)
        if held is None or time.time() >= held[1]:
            stored = await asyncio.to_thread(self._read_disk, key)
            if stored is not None and (held is None or stored.fetched_at > held[0].fetched_at):
                size = len(stored.body or b"")
                doc = JsonDoc(
                    await _parse(stored.body, self.client.cpu), stored.fetched_at, stored.etag, size
                )
                held = (doc, self._retry_at(doc))
                self._memory.put(key, held)
        return held

    async def get(self, name: NormalizedName, version: str | None) -> JsonDoc:
        url = json_api_url(self.config.url, name, version)
        if url is None:
            return JsonDoc(None, time.time())
        key: Key = (name, version or "")
        held = await self._cached(key)
        if held is not None and (time.time() < held[1] or self.config.offline):
            return held[0]
        if self.config.offline:
            return JsonDoc(None, time.time())
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[key] = flight
            self._tasks.spawn(self._fetch(key, url, held[0] if held else None, flight))
        return await asyncio.shield(flight)

    async def _fetch(
        self, key: Key, url: str, cached: JsonDoc | None, flight: asyncio.Future[JsonDoc]
    ) -> None:
        try:
            etag = cached.etag if cached is not None and cached.doc is not None else None
            status, body, etag, content_type = await self.client.fetch_document(url, etag, key[0])
            now = time.time()
            if status == 304 and cached is not None:
                doc = JsonDoc(cached.doc, now, cached.etag, cached.size)  # same body as on disk
            else:
                parsed = (
                    await _parse(body, self.client.cpu) if "json" in content_type.lower() else None
                )
                if body is not None and parsed is None:
                    log.warning("upstream %s is not a PyPI JSON document", mask_url(url))
                size = len(body) if parsed is not None and body is not None else 0
                doc = JsonDoc(parsed, now, etag if parsed is not None else None, size)
                if parsed is not None:  # a 404 is remembered in memory only: made-up
                    await self._store(key, _Stored(body, now, doc.etag))  # versions fill no disk
            self._memory.put(key, (doc, self._retry_at(doc)))
            flight.set_result(doc)
        except UpstreamError as exc:
            if cached is not None:
                log.warning("serving stale JSON document for %s: %s", key[0], exc)
            doc = cached if cached is not None else JsonDoc(None, time.time())
            self._memory.put(key, (doc, time.time() + min(_STALE_RETRY, self.config.page_ttl)))
            flight.set_result(doc)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            self._flights.pop(key, None)
            if flight.done() and not flight.cancelled():
                flight.exception()

    async def _store(self, key: Key, stored: _Stored) -> None:
        """On disk before anyone is answered: a shutdown right after cannot lose it."""
        try:
            await asyncio.to_thread(self._disk.set, ("doc", *key), stored)
        except Exception:
            log.exception("could not store the JSON document of %s", key[0])
