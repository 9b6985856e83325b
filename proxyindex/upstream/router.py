"""UpstreamRouter: several upstreams behind the interface ProjectIndex knew for one.

Each upstream has its own client (URL, credentials, timeouts), its own page state machine
(``UpstreamPages``: TTL, revalidation, stale-on-error) and its own page-cache namespace. The
router asks them in the order :mod:`proxyindex.upstream.routing` decides and remembers which
upstream served each name (in memory and, with several upstreams, on disk with the page
cache), so that a later failure of that upstream never sends the name elsewhere, even after
a restart. Downloads ask :meth:`client_for` which upstream's client fetches a file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.utils import NormalizedName
from yarl import URL

from proxyindex.config import UpstreamConfig, UpstreamSource
from proxyindex.distname import project_of
from proxyindex.errors import Offline, UpstreamError
from proxyindex.lru import LRU
from proxyindex.models import DistFile
from proxyindex.upstream import routing
from proxyindex.upstream.background import Background
from proxyindex.upstream.cache import PageCache, PageEntry
from proxyindex.upstream.client import UpstreamClient
from proxyindex.upstream.pages import Checked, UpstreamPages

__all__ = ["Upstream", "UpstreamRouter"]

log = logging.getLogger(__name__)

_MEMORY_NAMES = 65536


@dataclass(frozen=True, slots=True)
class Upstream:
    """One configured upstream and what serves it."""

    source: UpstreamSource
    client: UpstreamClient
    pages: UpstreamPages


class UpstreamRouter:
    def __init__(
        self, upstreams: Sequence[Upstream], memory: PageCache, config: UpstreamConfig
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream")
        self.upstreams = tuple(upstreams)
        self.config = config  # the shared [upstream] settings (offline, prefetch, ...)
        self._by_name = {upstream.source.name: upstream for upstream in self.upstreams}
        self._sources = tuple(upstream.source for upstream in self.upstreams)
        self._memory = memory
        self._served: LRU[NormalizedName, str] = LRU(_MEMORY_NAMES)
        self._remember = len(self.upstreams) > 1  # one upstream: nothing to route
        self._tasks = Background()

    async def close(self) -> None:
        await self._tasks.close()
        for upstream in self.upstreams:
            await upstream.pages.close()

    def forget(self) -> None:
        """Drop every upstream's pages held in memory (a cache purge removed some from disk)."""
        for upstream in self.upstreams:
            upstream.pages.forget()

    def count_hit(self) -> None:
        """A page served from a rendering kept above the pages (for /metrics): counted once,
        on the first upstream's counter (the label is the route, not the upstream)."""
        self.upstreams[0].pages.count_hit()

    def candidates(self, name: NormalizedName) -> tuple[str, ...]:
        return routing.candidates(name, self._sources)

    async def served_by(self, name: NormalizedName) -> str | None:
        """The upstream remembered as serving ``name`` (memory, then disk)."""
        known = self._served.get(name)
        if known is None and self._remember:
            known = await self._memory.served_by(name)
            if known is not None:
                self._served.put(name, known)
        return known

    def _served_now(self, name: NormalizedName, upstream: str) -> None:
        if self._served.get(name) == upstream:
            return
        self._served.put(name, upstream)
        if self._remember:
            self._tasks.spawn(self._store_served(name, upstream))

    async def _store_served(self, name: NormalizedName, upstream: str) -> None:
        try:
            await self._memory.remember_served_by(name, upstream)
        except Exception:  # memory only, then: still right until a restart
            log.exception("could not remember that %s comes from %s", name, upstream)

    async def get(
        self, name: NormalizedName, max_age: float | None = None, *, prefetch: bool = True
    ) -> Checked:
        """The page of ``name`` from the one upstream that serves it (``page=None``: none
        has it); UpstreamError (or Offline) when the answer is unknown (see ``routing``)."""
        order = self.candidates(name)
        answers: dict[str, routing.Answer] = {}
        results: dict[str, Checked] = {}
        errors: dict[str, UpstreamError | Offline] = {}
        served_by: str | None = None
        while True:
            step = routing.next_step(order, answers, served_by)
            if isinstance(step, routing.Ask):
                pages = self._by_name[step.upstream].pages
                try:
                    checked = await pages.get(name, max_age, prefetch=prefetch)
                except (UpstreamError, Offline) as exc:
                    answers[step.upstream] = routing.Answer.DOWN
                    errors[step.upstream] = exc
                    served_by = await self.served_by(name)
                    continue
                has = checked.page is not None
                answers[step.upstream] = routing.Answer.HAS if has else routing.Answer.LACKS
                results[step.upstream] = checked
            elif isinstance(step, routing.Serve):
                self._served_now(name, step.upstream)
                return results[step.upstream]
            elif isinstance(step, routing.Unknown):
                if len(self.upstreams) == 1:  # nothing else could be asked: its own error
                    raise errors[step.upstream]
                raise _unknown(name, step.upstream, errors[step.upstream], served_by, order)
            else:
                return self._not_found(results)

    def _not_found(self, results: dict[str, Checked]) -> Checked:
        if results:  # the soonest a 404 is due again
            return min(results.values(), key=lambda checked: checked.retry_at)
        now = time.time()  # no upstream may serve it (all of them have pins)
        return Checked(PageEntry(None, now), now + self.config.negative_ttl)

    async def refresh(
        self, name: NormalizedName, cached: Checked | None, *, prefetch: bool = True
    ) -> Checked:
        """Ask again the upstream that gave ``cached`` (a file missing from its page)."""
        upstream = self._by_name.get(cached.upstream) if cached is not None else None
        if upstream is None or cached is None or cached.page is None:
            return await self.get(name, prefetch=prefetch)
        return await upstream.pages.refresh(name, cached, prefetch=prefetch)

    async def client_for(self, dist: DistFile) -> UpstreamClient:
        """The client that fetches ``dist``: the upstream its project comes from (pinned, or
        remembered from its page), else the first whose URL has the file's origin. Each
        client sends its credentials only to its own hosts, whichever is chosen."""
        if len(self.upstreams) == 1:
            return self.upstreams[0].client
        name = project_of(dist.filename.removesuffix(".metadata"))
        if name is not None:
            order = self.candidates(name)
            chosen = order[0] if len(order) == 1 else await self.served_by(name)
            if chosen in self._by_name:
                return self._by_name[chosen].client
        origin = URL(dist.url).origin()
        for upstream in self.upstreams:
            if upstream.client.base.origin() == origin:
                return upstream.client
        return self.upstreams[0].client


def _unknown(
    name: NormalizedName,
    upstream: str,
    exc: UpstreamError | Offline,
    served_by: str | None,
    order: Sequence[str],
) -> UpstreamError | Offline:
    """The down upstream's error (its 502, 504 or offline 404), saying why no other
    upstream was asked."""
    if len(order) == 1:
        why = f"{name!r} comes only from upstream {upstream!r}"
    elif served_by == upstream:
        why = f"{name!r} comes from upstream {upstream!r}; later upstreams are not asked"
    else:
        why = (
            f"upstream {upstream!r} may serve {name!r} (it has not answered for it here); "
            "later upstreams are not asked, as their project of that name could be anyone's"
        )
    return type(exc)(f"{why}: {exc}")
