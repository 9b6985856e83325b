"""UpstreamPages: the upstream's project pages, kept fresh for every caller.

Fresh -> served from memory (an LRU of recent pages); expired -> revalidated with
If-None-Match, one fetch per project however many clients wait (single flight); upstream
failing -> the stale page is served and logged, and asked for again after ``_STALE_RETRY``
seconds, not on every request; only with nothing cached does the caller get the
``UpstreamError`` (a 502/504). A 404 is remembered for ``negative_ttl``. A page whose serial
went back (a CDN serving an older copy) is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from packaging.utils import NormalizedName

from proxyindex.config import UpstreamConfig
from proxyindex.errors import Offline, UpstreamError
from proxyindex.lru import LRU
from proxyindex.memsize import page_bytes
from proxyindex.metrics import Metrics
from proxyindex.models import ProjectPage
from proxyindex.upstream.background import Background
from proxyindex.upstream.cache import PageCache, PageEntry
from proxyindex.upstream.client import UpstreamClient

__all__ = ["Checked", "PageListener", "UpstreamPages"]

log = logging.getLogger(__name__)

PageListener = Callable[[ProjectPage], None]

_MEMORY_PAGES = 4096
_STALE_RETRY = 60  # seconds between upstream attempts while serving a stale page


@dataclass(frozen=True, slots=True)
class Checked:
    """An upstream answer (``page=None``: the upstream says 404) and when to ask again:
    the TTL after it was fetched, or, for a stale page served while the upstream fails, a
    short while after the failed attempt."""

    entry: PageEntry
    retry_at: float
    upstream: str = ""  # the name of the upstream that answered (several upstreams)

    @property
    def page(self) -> ProjectPage | None:
        return self.entry.page


class UpstreamPages:
    """The upstream page state machine; ``on_fetched`` hears of each page a client's request
    brought fresh from the upstream (requests that only look pass ``prefetch=False``)."""

    def __init__(
        self,
        config: UpstreamConfig,
        cache: PageCache,
        client: UpstreamClient,
        on_fetched: PageListener | None = None,
        metrics: Metrics | None = None,
        *,
        name: str = "",
        memory_bytes: int | None = None,
    ) -> None:
        """``memory_bytes``: the budget of the parsed pages kept in memory (None: only
        their count is bounded)."""
        self.name = name  # of the upstream, in ``[[upstreams]]``
        self.config = config
        self._metrics = metrics if metrics is not None else Metrics()
        self.cache = cache
        self.client = client
        self._on_fetched = on_fetched
        self._memory: LRU[NormalizedName, Checked] = LRU(
            _MEMORY_PAGES, max_bytes=memory_bytes, weigh=lambda c: page_bytes(c.page)
        )
        self._flights: dict[NormalizedName, asyncio.Future[Checked]] = {}
        self._tasks = Background()

    async def close(self) -> None:
        await self._tasks.close()

    def forget(self) -> None:
        """Drop the pages held in memory (a cache purge removed some from disk)."""
        self._memory.clear()

    def count_hit(self) -> None:
        """A page served from a memory of it kept above this class (a rendering)."""
        self._metrics.cache_lookup("page", "hit")

    def _checked(self, entry: PageEntry) -> Checked:
        """An entry as fetched: good until its TTL (a 404's is ``negative_ttl``) runs out."""
        ttl = self.config.page_ttl if entry.page else self.config.negative_ttl
        return Checked(entry, entry.fetched_at + ttl, self.name)

    async def _cached(self, name: NormalizedName) -> Checked | None:
        checked = self._memory.get(name)
        if checked is None or time.time() >= checked.retry_at:
            # Another worker process may have refreshed it on disk.
            on_disk = await self.cache.get(name)
            if on_disk is not None and (
                checked is None or on_disk.fetched_at > checked.entry.fetched_at
            ):
                checked = self._checked(on_disk)
                self._memory.put(name, checked)
        return checked

    async def get(
        self, name: NormalizedName, max_age: float | None = None, *, prefetch: bool = True
    ) -> Checked:
        """The upstream page of ``name``.

        ``max_age=math.inf`` accepts any cached entry (file lookups: files never change).
        """
        checked = await self._cached(name)
        if checked is not None:
            now = time.time()
            if now < checked.retry_at or (max_age is not None and checked.entry.age(now) < max_age):
                if max_age is None and prefetch:  # a page asked for, not a file's lookup
                    self._metrics.cache_lookup("page", "hit")
                return checked
        return await self.refresh(name, checked, prefetch=prefetch)

    async def refresh(
        self, name: NormalizedName, cached: Checked | None, *, prefetch: bool = True
    ) -> Checked:
        """Ask the upstream now (one fetch for every caller of one name); offline, the
        cached page whatever its age, or :class:`Offline`."""
        if self.config.offline:
            return self._offline(name, cached)
        flight = self._flights.get(name)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[name] = flight
            entry = cached.entry if cached is not None else None
            self._tasks.spawn(self._fetch(name, entry, flight, prefetch))
        else:
            self._metrics.joined("page")
        # Shielded: a client that disconnects must not cancel the fetch others wait for.
        return await asyncio.shield(flight)

    def _offline(self, name: NormalizedName, cached: Checked | None) -> Checked:
        """Offline: nothing to revalidate against, so the cached entry (a page, or a 404
        remembered) counts as fresh; nothing cached is a 404 that says why."""
        if cached is None:
            raise Offline(f"offline: project {name!r} is not in the cache")
        fresh = Checked(cached.entry, time.time() + self.config.page_ttl, self.name)
        self._memory.put(name, fresh)
        self._metrics.cache_lookup("page", "hit")
        return fresh

    async def _fetch(
        self,
        name: NormalizedName,
        cached: PageEntry | None,
        flight: asyncio.Future[Checked],
        prefetch: bool,
    ) -> None:
        entry = await self._settle(name, cached, flight)
        if entry is None:
            return
        fresh = cached is None or entry.page is not cached.page
        if fresh and entry.page and self._on_fetched and prefetch:
            self._on_fetched(entry.page)
        try:  # clients already have the page; the disk copy follows
            await self.cache.put(name, entry)
        except Exception:
            log.exception("could not store the page of %s", name)

    async def _settle(
        self, name: NormalizedName, cached: PageEntry | None, flight: asyncio.Future[Checked]
    ) -> PageEntry | None:
        """Fetch from the upstream and settle the flight; the new entry to store, if any."""
        try:
            entry = await self.client.fetch_page(name, cached)
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
            checked = self._checked(entry)
            self._memory.put(name, checked)
            flight.set_result(checked)
            revalidated = cached is not None and entry.page is cached.page
            self._metrics.cache_lookup("page", "revalidated" if revalidated else "miss")
            return entry
        except UpstreamError as exc:
            if cached is None:  # another worker process may have stored one meanwhile
                cached = await self.cache.get(name, any_writer=True)
            if cached is None:
                flight.set_exception(exc)
                self._metrics.cache_lookup("page", "miss")
                return None
            log.warning("serving stale page for %s: %s", name, exc)
            # Don't ask again on every request while the upstream is failing: the stale
            # page counts as checked, for a minute at most (memory only, not on disk).
            retry = min(_STALE_RETRY, self.config.page_ttl)
            stale = Checked(cached, time.time() + retry, self.name)
            self._memory.put(name, stale)
            flight.set_result(stale)
            self._metrics.cache_lookup("page", "stale")
            return None
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            self._flights.pop(name, None)  # a later request starts a new fetch
            if flight.done() and not flight.cancelled():
                flight.exception()  # mark retrieved: nobody may be waiting any more
