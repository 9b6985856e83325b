"""In-process request counters for the cache page: a ring of per-minute counts.

An operator wants to see at a glance whether the cache works (hit rate), what is asked for,
and how busy the last hour was. Prometheus metrics are a later issue; until then one small
object on an ``AppKey`` is fed in ONE place (:func:`stats_middleware`, plus a page listener
of ``UpstreamPages`` for page misses: ``appkeys.PAGE_LISTENERS``). Each worker process
(``--workers N``) counts its own requests: the page says so.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from packaging.utils import NormalizedName

from proxyindex.policy import Owner
from proxyindex.web import appkeys

__all__ = ["STATS", "Minute", "Stats", "stats_middleware"]

_MINUTES = 60
_MAX_PROJECTS = 10_000  # distinct names counted; past it the least requested half is dropped

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Minute:
    """The counts of one wall-clock minute (``start``: its first second, epoch)."""

    start: int
    requests: int = 0
    page_requests: int = 0  # upstream-owned pages asked for (/simple/<name>/, JSON API)
    page_fetches: int = 0  # of those, fetched anew from the upstream: the misses
    file_hits: int = 0  # upstream files sent from the cache
    file_misses: int = 0  # upstream files that had to be downloaded first

    @property
    def page_hits(self) -> int:
        return max(0, self.page_requests - self.page_fetches)

    @property
    def hits(self) -> int:
        return self.page_hits + self.file_hits

    @property
    def lookups(self) -> int:
        return max(self.page_requests, self.page_fetches) + self.file_hits + self.file_misses


class Stats:
    """Counts of the last hour, per minute, and requests per project since start."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: deque[Minute] = deque(maxlen=_MINUTES)
        self.projects: Counter[str] = Counter()
        self.started = clock()

    def _now(self) -> Minute:
        start = int(self._clock()) // 60 * 60
        if not self._minutes or self._minutes[-1].start != start:
            self._minutes.append(Minute(start))
        return self._minutes[-1]

    def request(self) -> None:
        self._now().requests += 1

    def project(self, name: str) -> None:
        self.projects[name] += 1
        if len(self.projects) > _MAX_PROJECTS:
            self.projects = Counter(dict(self.projects.most_common(_MAX_PROJECTS // 2)))

    def page(self) -> None:
        self._now().page_requests += 1

    def page_fetched(self) -> None:
        self._now().page_fetches += 1

    def file(self, hit: bool) -> None:
        minute = self._now()
        if hit:
            minute.file_hits += 1
        else:
            minute.file_misses += 1

    def last_hour(self) -> list[Minute]:
        """Sixty minutes, oldest first, the current one last; minutes without traffic as zeros."""
        now = int(self._clock()) // 60 * 60
        known = {m.start: m for m in self._minutes}
        return [
            known.get(start, Minute(start))
            for start in range(now - (_MINUTES - 1) * 60, now + 60, 60)
        ]


STATS = web.AppKey("ui_stats", Stats)

_PAGE_ROUTES = frozenset(
    {
        "/simple/{name}/",
        "/pypi/{name}/json",
        "/pypi/{name}/json/",
        "/pypi/{name}/{version}/json",
        "/pypi/{name}/{version}/json/",
    }
)
_FILE_ROUTE = "/packages/{name}/{filename}"


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request, and for page and file requests whether the cache answered.

    A file answered from a file on disk (a ``FileResponse``) was a hit; one streamed while it
    downloads was a miss. Private projects are not the cache's: not counted as either.
    """
    stats = request.app[STATS]
    stats.request()
    response = await handler(request)
    resource = request.match_info.route.resource
    if resource is None or response.status not in (200, 304):  # 304: a revalidated hit
        return response
    route = resource.canonical
    if route not in _PAGE_ROUTES and route != _FILE_ROUTE:
        return response
    name = NormalizedName(request.match_info.get("name", ""))  # canonical: else a 301
    stats.project(name)
    if route == _FILE_ROUTE:
        if request.app[appkeys.STORAGE].locate(name, request.match_info["filename"]) is None:
            stats.file(isinstance(response, web.FileResponse))
    elif request.app[appkeys.INDEX].owner(name) is not Owner.PRIVATE:
        stats.page()
    return response
