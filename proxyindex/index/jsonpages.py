"""JsonPages: the PyPI JSON API documents the handlers send, built once per page version.

Routing and dependency confusion are decided by ``ProjectIndex.page`` exactly as for
``/simple/<name>/``: a private name never shows upstream data (its document is made from
private storage), an upstream name gets the upstream's own document when it has one
(``upstream.pypijson``), a merged name gets that document with its private files added. The
rendered body is kept with the page objects it was made from, so a request while nothing
changed is a lookup (the body is O(files) to build: 10,000 files took a second) and its
ETag is stable; a changed page or document makes a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import cpulane, jsonapi
from proxyindex.errors import NotFound, Offline, PolicyHidden, UpstreamError
from proxyindex.guard.decide import Decision
from proxyindex.guard.rules import Snapshot, parse_version
from proxyindex.index.projects import ProjectIndex, RenderedPage
from proxyindex.lru import LRU
from proxyindex.madefrom import MadeFrom
from proxyindex.models import INLINE_FILES, DistFile, Origin, ProjectPage
from proxyindex.policy import Owner
from proxyindex.simple import version_of
from proxyindex.upstream.downloads import Downloader
from proxyindex.upstream.pypijson import JsonDoc, UpstreamJsonDocs
from proxyindex.upstream.wheelmeta import WheelMetadata

__all__ = ["JsonAnswer", "JsonPages", "extra_digests"]

log = logging.getLogger(__name__)

_MEMORY_BYTES = 64 << 20  # rendered documents kept; PyPI's largest are megabytes each
_MEMORY_DIGESTS = 65536
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    rendered: RenderedPage
    max_age: int
    serial: int | None


@dataclass(frozen=True, slots=True)
class _Made:
    answer: RenderedPage
    serial: int | None
    # Page objects compare by identity (weakly held: the page caches own pages); the
    # upstream document and the guard's decisions by value (equal decisions: the same files).
    sources: MadeFrom

    def made_from(self, sources: tuple[object, ...]) -> bool:
        return self.sources.matches(sources)


_Key = tuple[NormalizedName, str | None, str, str | None]  # (project, version, base URL, snapshot)


class _MadeCache:
    """Rendered documents, least recently used dropped first, bounded by their bytes (a key
    includes the Host a client sent, so entry counts alone would not bound memory)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[_Key, _Made] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _cost(made: _Made) -> int:
        page = made.answer
        return len(page.body) + (len(page.gzip_body) if page.gzip_body else 0)

    def get(self, key: _Key) -> _Made | None:
        made = self._data.get(key)
        if made is not None:
            self._data.move_to_end(key)
        return made

    def put(self, key: _Key, made: _Made) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= self._cost(old)
        self._data[key] = made
        self._bytes += self._cost(made)
        while self._bytes > self.max_bytes and len(self._data) > 1:
            _key, dropped = self._data.popitem(last=False)
            self._bytes -= self._cost(dropped)


def extra_digests(path: Path) -> dict[str, str]:
    """md5 and blake2b_256 of a private file, which PyPI's JSON API lists (blocking)."""
    md5 = hashlib.md5(usedforsecurity=False)
    blake = hashlib.blake2b(digest_size=32)
    with path.open("rb") as reader:
        while chunk := reader.read(_CHUNK):
            md5.update(chunk)
            blake.update(chunk)
    return {"md5": md5.hexdigest(), "blake2b_256": blake.hexdigest()}


class JsonPages:
    def __init__(
        self,
        index: ProjectIndex,
        docs: UpstreamJsonDocs | None,  # None: several upstreams, documents made from pages
        downloader: Downloader,
        wheel_metadata: WheelMetadata,
    ) -> None:
        self.index = index
        self.docs = docs
        self.downloader = downloader
        self.wheel_metadata = wheel_metadata
        self._made = _MadeCache(_MEMORY_BYTES)
        # (path, size, mtime_ns) -> digests: a private file is hashed once, not per document.
        self._digests: LRU[tuple[str, int, int], dict[str, str]] = LRU(_MEMORY_DIGESTS)
        self._lock = threading.Lock()  # the digests are read and written in threads

    async def render(
        self,
        name: NormalizedName,
        version: str | None,
        base_url: str,
        snapshot: Snapshot | None = None,
    ) -> JsonAnswer:
        """The document for ``/pypi/<name>[/<version>]/json`` (as of ``snapshot``), with the
        files the guard lets clients see; NotFound if there is none, PolicyHidden (with the
        reason) for a release the guard hides."""
        resolved = await self.index.page(name, snapshot)
        doc: JsonDoc | None = None
        upstream = resolved.token.upstream
        if self.docs is not None and resolved.owner is not Owner.PRIVATE and upstream is not None:
            doc = await self.docs.get(name, version)
        upstream_doc = doc.doc if doc is not None else None
        # The guard's decisions are part of what a document is made from: a release that ages
        # in (or a rule change) makes another document from the same pages.
        sources = (
            resolved.token.private,
            resolved.token.upstream,
            upstream_doc,
            resolved.decisions,
        )
        key = (name, version, base_url, snapshot.text if snapshot is not None else None)
        made = self._made.get(key)
        if made is None or not made.made_from(sources):
            private = resolved.private
            if upstream_doc is not None:
                made = await self._rewritten(resolved.page, upstream_doc, base_url, private)
            else:
                made = await self._synthesised(
                    resolved.page, version, base_url, private, resolved.decisions
                )
            made = _Made(made.answer, made.serial, MadeFrom(sources))
            self._made.put(key, made)
        max_age = self.index.client_max_age(resolved.private, resolved.upstream_until)
        return JsonAnswer(made.answer, max_age, made.serial)

    async def _rewritten(
        self,
        page: ProjectPage,
        doc: dict[str, object],
        base_url: str,
        private: bool,
    ) -> _Made:
        digests = await self._private_digests(page.files)
        if page.is_large:
            body = await cpulane.run(
                self.index.cpu,
                len(page.files) * cpulane.FILE_COST,
                jsonapi.rewrite,
                doc,
                page,
                base_url,
                digests=digests,
            )
        else:
            body = jsonapi.rewrite(doc, page, base_url, digests=digests)
        serial = doc.get("last_serial")
        if not isinstance(serial, int) or isinstance(serial, bool):
            serial = page.serial
        elif page.serial is not None and page.has_private_files:
            serial = max(serial, page.serial)  # a merged name: its private serial may be higher
        return _Made(await _built(body, page, private), serial, MadeFrom(()))

    async def _synthesised(
        self,
        page: ProjectPage,
        version: str | None,
        base_url: str,
        private: bool,
        decisions: Mapping[str, Decision],
    ) -> _Made:
        if page.is_large:  # parsing thousands of filenames
            found = await asyncio.to_thread(jsonapi.find_release, page, version)
        else:
            found = jsonapi.find_release(page, version)
        if found is None:
            _why_hidden(decisions, version)
            what = f"no release {version!r}" if version else "no release"
            raise NotFound(f"{what} of project {page.name!r}")
        release, every = found
        metadata = await self._metadata(page.name, release)
        files = page.files if version is None else release.files
        digests = await self._private_digests(files)

        def build() -> bytes:
            return jsonapi.render(
                page,
                release,
                every,
                metadata,
                base_url,
                with_releases=version is None,
                digests=digests,
            )

        body = (
            await cpulane.run(self.index.cpu, len(page.files) * cpulane.FILE_COST, build)
            if page.is_large
            else build()
        )
        return _Made(await _built(body, page, private), page.serial, MadeFrom(()))

    async def _metadata(self, name: NormalizedName, release: jsonapi.Release) -> bytes | None:
        """The METADATA of the release's best wheel: private storage, the upstream's
        ``.metadata`` through the cache, or read out of the upstream wheel (PEP 658 for every
        wheel). Unreadable now: the document says nothing of ``info`` rather than failing."""
        source = jsonapi.metadata_source(release)
        if source is None:
            return None
        if source.origin is Origin.PRIVATE:
            return await self.index.private_metadata(name, source.filename)
        try:
            meta = source.metadata_file()
            if meta is not None:
                return await self.downloader.start(meta).read()
            return await self.wheel_metadata.get(source)
        except (UpstreamError, Offline, NotFound) as exc:
            log.info("no METADATA of %s for its JSON document: %s", source.filename, exc)
            return None

    async def _private_digests(self, files: tuple[DistFile, ...]) -> dict[str, dict[str, str]]:
        private = [f for f in files if f.origin is Origin.PRIVATE and isinstance(f.location, Path)]
        if not private:
            return {}
        return await asyncio.to_thread(self._hash_all, private)

    def _hash_all(self, files: list[DistFile]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for dist in files:
            assert isinstance(dist.location, Path)
            try:
                st = dist.location.stat()
                key = (str(dist.location), st.st_size, st.st_mtime_ns)
                with self._lock:
                    digests = self._digests.get(key)
                if digests is None:
                    digests = extra_digests(dist.location)
                    with self._lock:
                        self._digests.put(key, digests)
            except OSError:  # removed meanwhile: the document lists what the page knew
                continue
            found[dist.filename] = digests
        return found


def _why_hidden(decisions: Mapping[str, Decision], version: str | None) -> None:
    """A release the guard hides is a 404 that says why (and the policy header)."""
    wanted = parse_version(version)
    for filename, decision in decisions.items():
        if wanted is not None and parse_version(version_of(filename)) == wanted:
            raise PolicyHidden(f"release {version}: {decision}", str(decision), decision.rule)


async def _built(body: bytes, page: ProjectPage, private: bool) -> RenderedPage:
    if len(page.files) > INLINE_FILES:
        return await asyncio.to_thread(RenderedPage.build, body, private)
    return RenderedPage.build(body, private)
