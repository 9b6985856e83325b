"""ProjectIndex: the async facade the HTTP handlers call for pages and files.

It applies the ownership rule (``policy``), reads private storage, and keeps upstream pages fresh:
fresh -> served from memory; expired -> revalidated with If-None-Match, one fetch per project
however many clients wait; upstream failing -> the stale page is served and logged, and only
with nothing cached does the client see a 502/504.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex.cache import PageCache, PageEntry
from proxyindex.config import Config
from proxyindex.errors import NotFound, UpstreamError
from proxyindex.models import DistFile, ProjectPage
from proxyindex.policy import Owner, merge_pages, not_found_reason, owner_of
from proxyindex.simple import SimpleFormat, render_project
from proxyindex.storage import PrivateStorage
from proxyindex.upstream import UpstreamClient

__all__ = ["ProjectIndex", "RenderedPage"]

log = logging.getLogger(__name__)

_MEMORY_PAGES = 4096
_GZIP_MIN = 1024
_RENDER_INLINE_FILES = 100  # larger pages are rendered in a thread (1,000 files: ~10 ms)
_STALE_RETRY = 60  # seconds between upstream attempts while serving a stale page


@dataclass(frozen=True, slots=True)
class RenderedPage:
    """A page body ready to send, with its validators; built once per page version."""

    body: bytes
    etag: str
    gzip_body: bytes | None
    private: bool

    @classmethod
    def build(cls, body: bytes, private: bool) -> RenderedPage:
        digest = hashlib.sha256(body).hexdigest()[:32]
        packed = gzip.compress(body, 6, mtime=0) if len(body) >= _GZIP_MIN else None
        return cls(body, f'"{digest}"', packed, private)


@dataclass(frozen=True, slots=True)
class _Token:
    """The page objects a rendering was made from; held, so identity stays meaningful."""

    private: ProjectPage | None
    upstream: ProjectPage | None

    def same(self, other: _Token) -> bool:
        return self.private is other.private and self.upstream is other.upstream


@dataclass(frozen=True, slots=True)
class _Rendering:
    page: RenderedPage
    token: _Token
    generation: int  # of private storage when rendered
    fetched_at: float | None
    valid_until: float  # when the upstream data behind it expires


@dataclass(frozen=True, slots=True)
class Resolved:
    page: ProjectPage
    owner: Owner
    token: _Token
    fetched_at: float | None

    @property
    def private(self) -> bool:
        """Private files in it: clients must revalidate (CC-01)."""
        return self.page.has_private_files or self.owner is Owner.PRIVATE


class ProjectIndex:
    def __init__(
        self,
        config: Config,
        storage: PrivateStorage,
        pages: PageCache,
        upstream: UpstreamClient,
    ) -> None:
        self.config = config
        self.storage = storage
        self.pages = pages
        self.upstream = upstream
        self._memory: OrderedDict[NormalizedName, PageEntry] = OrderedDict()
        self._flights: dict[NormalizedName, asyncio.Future[PageEntry]] = {}
        self._private: dict[NormalizedName, tuple[int, ProjectPage | None]] = {}
        self._rendered: dict[tuple[NormalizedName, SimpleFormat], _Rendering] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Called with each page a client's request brought fresh from the upstream; requests
        # that only look (upload checks, the prefetcher itself) pass prefetch=False.
        self.on_page_fetched: Callable[[ProjectPage], None] | None = None
        self._catching_up: asyncio.Future[bool] | None = None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def catch_up(self) -> None:
        """Bring private storage up to date first if another worker changed it (an upload
        answered by one worker is then visible on the next request to any other). Concurrent
        requests share one rescan."""
        if not self.storage.stale():
            return
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(asyncio.to_thread(self.storage.rescan))
        await asyncio.shield(self._catching_up)

    def owner(self, name: NormalizedName) -> Owner:
        # A name that had private files stays private when they are removed (a tombstone).
        private = self.storage.has(name) or self.storage.was_private(name)
        return owner_of(name, private, self.config.private)

    # --- upstream pages -------------------------------------------------------------------

    def _remember(self, name: NormalizedName, entry: PageEntry) -> None:
        self._memory[name] = entry
        self._memory.move_to_end(name)
        while len(self._memory) > _MEMORY_PAGES:
            self._memory.popitem(last=False)

    def _is_fresh(self, entry: PageEntry, now: float) -> bool:
        ttl = self.config.upstream.page_ttl if entry.page else self.config.upstream.negative_ttl
        return entry.age(now) < ttl

    async def _cached_entry(self, name: NormalizedName) -> PageEntry | None:
        entry = self._memory.get(name)
        if entry is None or not self._is_fresh(entry, time.time()):
            # Another worker process may have refreshed it on disk.
            on_disk = await self.pages.get(name)
            if on_disk is not None and (entry is None or on_disk.fetched_at > entry.fetched_at):
                entry = on_disk
                self._remember(name, entry)
        return entry

    async def upstream_entry(
        self, name: NormalizedName, max_age: float | None = None, *, prefetch: bool = True
    ) -> PageEntry:
        """The upstream page of ``name`` (``page=None``: upstream says 404).

        ``max_age=math.inf`` accepts any cached entry (file lookups: files never change).
        """
        entry = await self._cached_entry(name)
        if entry is not None:
            now = time.time()
            if self._is_fresh(entry, now) or (max_age is not None and entry.age(now) < max_age):
                return entry
        return await self._refresh(name, entry, prefetch=prefetch)

    async def _refresh(
        self, name: NormalizedName, cached: PageEntry | None, *, prefetch: bool = True
    ) -> PageEntry:
        flight = self._flights.get(name)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[name] = flight
            task = asyncio.create_task(self._fetch(name, cached, flight, prefetch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a client that disconnects must not cancel the fetch others wait for.
        return await asyncio.shield(flight)

    async def _fetch(
        self,
        name: NormalizedName,
        cached: PageEntry | None,
        flight: asyncio.Future[PageEntry],
        prefetch: bool,
    ) -> None:
        entry = await self._settle(name, cached, flight)
        if entry is None:
            return
        fresh = cached is None or entry.page is not cached.page
        if fresh and entry.page and self.on_page_fetched and prefetch:
            self.on_page_fetched(entry.page)
        try:  # clients already have the page; the disk copy follows
            await self.pages.put(name, entry)
        except Exception:
            log.exception("could not store the page of %s", name)

    async def _settle(
        self, name: NormalizedName, cached: PageEntry | None, flight: asyncio.Future[PageEntry]
    ) -> PageEntry | None:
        """Fetch from the upstream and settle the flight; the new entry to store, if any."""
        try:
            entry = await self.upstream.fetch_page(name, cached)
            if (
                cached is not None
                and cached.page is not None
                and entry.page is not None
                and entry.page is not cached.page
                and cached.page.serial is not None
                and entry.page.serial is not None
                and entry.page.serial < cached.page.serial
            ):
                log.info("upstream page for %s went back in serial; keeping ours", name)
                entry = PageEntry(cached.page, time.time(), cached.etag)
            self._remember(name, entry)
            flight.set_result(entry)
            return entry
        except UpstreamError as exc:
            if cached is None:  # another worker process may have stored one meanwhile
                cached = await self.pages.get(name, any_writer=True)
            if cached is None:
                flight.set_exception(exc)
                return None
            log.warning("serving stale page for %s: %s", name, exc)
            # Don't ask again on every request while the upstream is failing: count the
            # stale page as checked, for a minute at most (memory only, not on disk).
            ttl = self.config.upstream.page_ttl
            checked = PageEntry(
                cached.page, time.time() - ttl + min(_STALE_RETRY, ttl), cached.etag
            )
            self._remember(name, checked)
            flight.set_result(checked)
            return None
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            self._flights.pop(name, None)  # a later request starts a new fetch
            if flight.done() and not flight.cancelled():
                flight.exception()  # mark retrieved: nobody may be waiting any more

    # --- pages ----------------------------------------------------------------------------

    async def _private_page(self, name: NormalizedName) -> ProjectPage | None:
        """Private pages are rebuilt only when the packages folder changed."""
        generation = self.storage.generation
        memo = self._private.get(name)
        if memo is not None and memo[0] == generation:
            return memo[1]
        page = await asyncio.to_thread(self.storage.page, name)
        if len(self._private) > _MEMORY_PAGES:
            self._private.clear()
        self._private[name] = (generation, page)
        return page

    async def page(self, name: NormalizedName) -> Resolved:
        """The merged page for ``name``; NotFound if no source has it."""
        await self.catch_up()
        owner = self.owner(name)
        private: ProjectPage | None = None
        entry: PageEntry | None = None
        if owner is not Owner.UPSTREAM:
            private = await self._private_page(name)
        if owner is not Owner.PRIVATE:
            try:
                entry = await self.upstream_entry(name)
            except UpstreamError:
                if private is None:
                    raise
                log.warning("upstream failed for merged %s; serving private files only", name)
        upstream = entry.page if entry else None
        page = merge_pages(private, upstream)
        if page is None:
            tombstone = self.storage.was_private(name)
            raise NotFound(not_found_reason(name, owner, tombstone, self.config.private))
        return Resolved(page, owner, _Token(private, upstream), entry.fetched_at if entry else None)

    async def render(self, name: NormalizedName, fmt: SimpleFormat) -> tuple[RenderedPage, int]:
        """The page's body in ``fmt`` and how many seconds clients may reuse it.

        The hot path (a page already rendered, still fresh, private storage unchanged) is a
        dict lookup: no await, no policy, no merge.
        """
        if self.storage.stale():
            await self.catch_up()
        now = time.time()
        cached = self._rendered.get((name, fmt))
        if (
            cached is not None
            and now < cached.valid_until
            and cached.generation == self.storage.generation
        ):
            return cached.page, self.client_max_age(cached.page.private, cached.fetched_at)
        generation = self.storage.generation
        resolved = await self.page(name)
        if cached is not None and cached.token.same(resolved.token):
            rendered = cached.page
        elif len(resolved.page.files) > _RENDER_INLINE_FILES:
            # PyPI-sized pages (thousands of files): render, hash and gzip in a thread.
            rendered = await asyncio.to_thread(self._build, resolved, fmt)
        else:
            rendered = self._build(resolved, fmt)
        if len(self._rendered) > 2 * _MEMORY_PAGES:
            self._rendered.clear()
        fetched_at = resolved.fetched_at
        if resolved.owner is Owner.PRIVATE:
            valid_until = math.inf  # until private storage changes (generation)
        elif fetched_at is None:
            valid_until = now  # merged page whose upstream part failed: try again next time
        else:
            valid_until = fetched_at + self.config.upstream.page_ttl
        self._rendered[(name, fmt)] = _Rendering(
            rendered, resolved.token, generation, fetched_at, valid_until
        )
        return rendered, self.client_max_age(rendered.private, fetched_at)

    def _build(self, resolved: Resolved, fmt: SimpleFormat) -> RenderedPage:
        body = render_project(resolved.page, fmt, self.config.server.base_url)
        return RenderedPage.build(body, resolved.private)

    def client_max_age(self, private: bool, fetched_at: float | None) -> int:
        """Seconds a client may reuse a page: 0 with private files (CC-01), else the TTL left."""
        if private or fetched_at is None:
            return 0
        left = self.config.upstream.page_ttl - (time.time() - fetched_at)
        return max(0, min(600, int(left)))

    async def upstream_page_for_prefetch(self, name: NormalizedName) -> ProjectPage | None:
        """An upstream page to fetch ahead; never for a private name (dependency confusion)."""
        if self.owner(name) is Owner.PRIVATE:
            return None
        return (await self.upstream_entry(name, prefetch=False)).page

    async def private_metadata(self, name: NormalizedName, filename: str) -> bytes | None:
        return await asyncio.to_thread(self.storage.metadata, name, filename)

    # --- files ----------------------------------------------------------------------------

    async def locate(self, name: NormalizedName, filename: str) -> Path | DistFile:
        """A private file's path, or the upstream file to serve through the cache."""
        await self.catch_up()
        owner = self.owner(name)
        if owner is not Owner.UPSTREAM:
            path = self.storage.locate(name, filename)
            if path is not None:
                return path
            if owner is Owner.PRIVATE:
                raise NotFound(f"no file {filename!r} in project {name!r}")
        entry = await self.upstream_entry(name, max_age=math.inf)
        dist = entry.page.file(filename) if entry.page else None
        if dist is None and entry.age() > 1:
            entry = await self._refresh(name, entry)
            dist = entry.page.file(filename) if entry.page else None
        if dist is None:
            raise NotFound(f"no file {filename!r} in project {name!r}")
        return dist
