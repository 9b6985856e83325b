"""ProjectIndex: the async facade the HTTP handlers call for pages and files.

It applies the ownership rule (``policy``), reads private storage, takes upstream pages from
``UpstreamPages`` (which keeps them fresh), merges the two, filters the merged page through
the supply-chain guard (``guard``: one call, in ``page``) and renders it.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import cpulane
from proxyindex.config import Config
from proxyindex.cpulane import CpuLane
from proxyindex.errors import (
    NotFound,
    Offline,
    PolicyDenied,
    PolicyHidden,
    StillHashing,
    UpstreamError,
)
from proxyindex.guard.decide import Decision, Verdict
from proxyindex.guard.live import Guard
from proxyindex.guard.rules import Snapshot
from proxyindex.lru import LRU
from proxyindex.madefrom import MadeFrom
from proxyindex.memsize import DECISION_BYTES, page_bytes
from proxyindex.models import DistFile, ProjectPage
from proxyindex.policy import Owner, merge_pages, not_found_reason, owner_of
from proxyindex.private.serials import ProjectSerials
from proxyindex.private.store import PrivateStore
from proxyindex.simple import SimpleFormat, body_etag, render_project
from proxyindex.upstream.pages import Checked, UpstreamPages
from proxyindex.upstream.router import UpstreamRouter
from proxyindex.upstream.sizes import lacks_sizes

__all__ = ["ProjectIndex", "RenderedPage"]

log = logging.getLogger(__name__)

_MEMORY_PAGES = 4096
_GZIP_MIN = 1024
# Bodies this large are compressed at level 1: botocore's 1.6 MB JSON page takes 19 ms of
# CPU at level 1 and 42 at level 6 for 10% fewer bytes (594 vs 541 kB), on the cold path.
_GZIP_FAST = 256 * 1024
_HASH_WAIT = 10.0  # seconds a private page request waits for first hashes (pip gives up at 15)


@dataclass(frozen=True, slots=True)
class RenderedPage:
    """A page body ready to send, with its validators; built once per page version."""

    body: bytes
    etag: str
    gzip_body: bytes | None
    private: bool
    serial: int | None = None  # X-PyPI-Last-Serial

    @classmethod
    def build(cls, body: bytes, private: bool, serial: int | None = None) -> RenderedPage:
        level = 1 if len(body) >= _GZIP_FAST else 6
        packed = gzip.compress(body, level, mtime=0) if len(body) >= _GZIP_MIN else None
        return cls(body, body_etag(body), packed, private, serial)


@dataclass(frozen=True, slots=True)
class _Token:
    """The page objects a rendering is made from (a rendering remembers them weakly, as
    ``MadeFrom``: holding them kept pages alive outside the memory budget)."""

    private: ProjectPage | None
    upstream: ProjectPage | None
    policy: Mapping[str, Decision] | None = None  # the guard's: equal ones, same files shown

    @property
    def sources(self) -> tuple[object, ...]:
        return (self.private, self.upstream, self.policy or None)


@dataclass(frozen=True, slots=True)
class _Rendering:
    page: RenderedPage
    made_from: MadeFrom
    decisions: int  # how many of the guard's decisions it holds (by value, in made_from)
    version: tuple[int, int]  # of the project in private storage when rendered
    upstream_until: float | None
    valid_until: float  # when the upstream data behind it expires, or a release ages in
    rules: int  # the guard's generation when rendered


@dataclass(frozen=True, slots=True)
class Resolved:
    page: ProjectPage
    owner: Owner
    token: _Token
    upstream_until: float | None  # when its upstream part is due again; None: no such part
    decisions: Mapping[str, Decision] = field(default_factory=dict)  # the guard's, by file
    incomplete: bool = False  # upstream files of unknown size: render again, they may be cached

    @property
    def private(self) -> bool:
        """Private files in it: clients must revalidate (CC-01)."""
        return self.page.has_private_files or self.owner is Owner.PRIVATE


class ProjectIndex:
    def __init__(
        self,
        config: Config,
        storage: PrivateStore,
        upstream: UpstreamPages | UpstreamRouter,  # the router: several upstreams (routing)
        guard: Guard | None = None,
        serials: ProjectSerials | None = None,
        fill_sizes: Callable[[ProjectPage], ProjectPage] | None = None,
        cpu: CpuLane | None = None,
    ) -> None:
        self.config = config
        self.cpu = cpu  # the lane big pages are rendered in (``proxyindex.cpulane``)
        self.storage = storage
        self.upstream = upstream
        self.guard = guard if guard is not None else Guard(config.policy)
        self.serials = serials
        self.fill_sizes = fill_sizes  # upstream.sizes.SizeFiller: blocking
        budget = config.server.memory_cache_size or None  # None: counts only
        self._private: LRU[NormalizedName, tuple[tuple[int, int], ProjectPage | None]] = LRU(
            _MEMORY_PAGES,
            max_bytes=budget and budget // 10,
            weigh=lambda memo: page_bytes(memo[1]),
        )
        self._rendered: LRU[tuple[NormalizedName, SimpleFormat, Snapshot | None], _Rendering] = LRU(
            2 * _MEMORY_PAGES, max_bytes=budget and budget * 4 // 10, weigh=_rendering_bytes
        )
        self._catching_up: asyncio.Future[bool] | None = None
        self._building: dict[
            NormalizedName, tuple[tuple[int, int], asyncio.Future[ProjectPage | None]]
        ] = {}
        self.hash_wait = _HASH_WAIT
        # Upstream pages' files by filename, for file requests (a page of 30,000 files was
        # searched line by line on every request: 992 -> 337 req/s from 1k to 30k files).
        self._by_filename: LRU[NormalizedName, tuple[ProjectPage, dict[str, DistFile]]] = LRU(
            _MEMORY_PAGES,
            max_bytes=budget and budget // 10,
            weigh=lambda held: 100 + 120 * len(held[1]),  # a dict slot and a str key per file
        )

    def forget_upstream(self) -> None:
        """Drop upstream pages and renderings held in memory: a cache purge removed them
        from disk, and this process must not keep serving them until their TTL."""
        self.upstream.forget()
        self._rendered.clear()

    async def catch_up(self) -> None:
        """Bring private storage up to date first if another worker changed it (an upload
        answered by one worker is then visible on the next request to any other). Concurrent
        requests share one rescan."""
        if not self.storage.stale():
            return
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.ensure_future(asyncio.to_thread(self.storage.catch_up))
        await asyncio.shield(self._catching_up)

    def owner(self, name: NormalizedName) -> Owner:
        # A name that had private files stays private when they are removed (a tombstone).
        private = self.storage.has(name) or self.storage.was_private(name)
        return owner_of(name, private, self.config.private)

    # --- pages ----------------------------------------------------------------------------

    async def _private_page(self, name: NormalizedName) -> ProjectPage | None:
        """Private pages are rebuilt only when their own project's files changed."""
        version = self.storage.version(name)
        memo = self._private.get(name)
        if memo is not None and memo[0] == version:
            return memo[1]
        # One build per project and version, shared by every request (and retry) for it;
        # a build that outlasts _HASH_WAIT (thousands of files dropped in, hashed for the
        # first time: ~29 s for 10,000 wheels) answers 503 + Retry-After and goes on.
        building = self._building.get(name)
        if building is None or building[0] != version:
            task = asyncio.ensure_future(asyncio.to_thread(self._read_private, name))
            building = self._building[name] = (version, task)
            task.add_done_callback(lambda _t: self._built_page(name, building))
        try:
            return await asyncio.wait_for(asyncio.shield(building[1]), self.hash_wait)
        except TimeoutError:
            left = await asyncio.to_thread(self.storage.unhashed, name)
            raise StillHashing(
                f"hashing the files of {name!r} ({left} to go); retry in a moment"
            ) from None

    def _built_page(
        self,
        name: NormalizedName,
        building: tuple[tuple[int, int], asyncio.Future[ProjectPage | None]],
    ) -> None:
        if self._building.get(name) is building:
            del self._building[name]
        task = building[1]
        if not task.cancelled() and task.exception() is None:
            self._private.put(name, (building[0], task.result()))

    def _read_private(self, name: NormalizedName) -> ProjectPage | None:
        """Blocking: the page from storage, with its serial (``private.serials``)."""
        page = self.storage.page(name)
        return page if page is None or self.serials is None else self.serials.stamp(page)

    async def page(self, name: NormalizedName, snapshot: Snapshot | None = None) -> Resolved:
        """The merged page for ``name`` as the guard lets clients see it (as of ``snapshot``);
        NotFound if no source has it, PolicyHidden if the guard leaves nothing of it."""
        await self.catch_up()
        owner = self.owner(name)
        private: ProjectPage | None = None
        checked: Checked | None = None
        if owner is not Owner.UPSTREAM:
            private = await self._private_page(name)
        if owner is not Owner.PRIVATE:
            try:
                checked = await self.upstream.get(name)
            except (UpstreamError, Offline):
                if private is None:
                    raise
                log.warning("upstream failed for merged %s; serving private files only", name)
        upstream = checked.page if checked else None
        page = merge_pages(private, upstream)
        if page is None:
            tombstone = self.storage.was_private(name)
            raise NotFound(not_found_reason(name, owner, tombstone, self.config.private))
        incomplete = upstream is not None and lacks_sizes(page)
        if incomplete and self.fill_sizes is not None:
            page = await asyncio.to_thread(self.fill_sizes, page)
        outcome = await self.guard.outcome(page, snapshot)  # supply-chain rules (issue 14)
        if outcome.refused is not None:
            refused = outcome.refused
            raise PolicyHidden(f"{name}: {refused}", str(refused), refused.rule)
        until = min(checked.retry_at, outcome.changes_at) if checked else None
        token = _Token(private, upstream, outcome.decisions)
        return Resolved(outcome.page, owner, token, until, outcome.decisions, incomplete)

    async def render(
        self, name: NormalizedName, fmt: SimpleFormat, snapshot: Snapshot | None = None
    ) -> tuple[RenderedPage, int]:
        """The page's body in ``fmt`` and how many seconds clients may reuse it.

        The hot path (a page already rendered, still fresh, private storage unchanged) is a
        dict lookup: no await, no policy, no merge.
        """
        if self.storage.stale():
            await self.catch_up()
        now = time.time()
        cached = self._rendered.get((name, fmt, snapshot))
        if (
            cached is not None
            and now < cached.valid_until
            and cached.version == self.storage.version(name)
            and cached.rules == self.guard.generation
        ):
            if cached.upstream_until is not None:  # it has an upstream part
                self.upstream.count_hit()
            return cached.page, self.client_max_age(cached.page.private, cached.upstream_until)
        version, rules = self.storage.version(name), self.guard.generation
        resolved = await self.page(name, snapshot)
        sources = resolved.token.sources
        if cached is not None and cached.made_from.matches(sources) and not resolved.incomplete:
            rendered = cached.page
        elif resolved.page.is_large:
            # PyPI-sized pages (thousands of files): render, hash and gzip in a thread.
            rendered = await cpulane.run(
                self.cpu,
                len(resolved.page.files) * cpulane.FILE_COST,
                self._build,
                resolved,
                fmt,
                snapshot,
            )
        else:
            rendered = self._build(resolved, fmt, snapshot)
        until = resolved.upstream_until
        if resolved.owner is Owner.PRIVATE:
            valid_until = math.inf  # until the project's private files (or the rules) change
        elif until is None:
            valid_until = now  # merged page whose upstream part failed: try again next time
        else:
            valid_until = until
        self._rendered.put(
            (name, fmt, snapshot),
            _Rendering(
                rendered,
                MadeFrom(sources),
                len(resolved.token.policy or ()),
                version,
                until,
                valid_until,
                rules,
            ),
        )
        return rendered, self.client_max_age(rendered.private, until)

    def _build(
        self, resolved: Resolved, fmt: SimpleFormat, snapshot: Snapshot | None = None
    ) -> RenderedPage:
        base_url = self.config.server.base_url
        if base_url and snapshot is not None:  # relative links stay under /snapshot/ anyway
            base_url = f"{base_url}/snapshot/{snapshot.text}"
        body = render_project(resolved.page, fmt, base_url)
        return RenderedPage.build(body, resolved.private, resolved.page.serial)

    def client_max_age(self, private: bool, upstream_until: float | None) -> int:
        """Seconds a client may reuse a page: 0 with private files (CC-01), else the time
        left until the upstream page is due again."""
        if private or upstream_until is None:
            return 0
        left = upstream_until - time.time()
        return max(0, min(600, int(left)))

    async def upstream_page_for_prefetch(self, name: NormalizedName) -> ProjectPage | None:
        """An upstream page to fetch ahead; never for a private name (dependency confusion)."""
        if self.owner(name) is Owner.PRIVATE:
            return None
        page = (await self.upstream.get(name, prefetch=False)).page
        if page is None:
            return None
        outcome = await self.guard.outcome(page)  # never fetch ahead what clients can't see
        return None if outcome.refused is not None else outcome.page

    async def private_metadata(self, name: NormalizedName, filename: str) -> bytes | None:
        return await asyncio.to_thread(self.storage.metadata, name, filename)

    # --- files ----------------------------------------------------------------------------

    async def _file_of(self, page: ProjectPage | None, filename: str) -> DistFile | None:
        """``page.file(filename)`` through an index by filename, built once per page."""
        if page is None:
            return None
        held = self._by_filename.get(page.name)
        if held is None or held[0] is not page:
            index = (
                await asyncio.to_thread(_filename_index, page)
                if page.is_large
                else _filename_index(page)
            )
            held = (page, index)
            self._by_filename.put(page.name, held)
        return held[1].get(filename)

    async def locate(
        self, name: NormalizedName, filename: str, snapshot: Snapshot | None = None
    ) -> Path | DistFile:
        """A private file's path, or the upstream file to serve through the cache; a file
        the guard hides or denies is PolicyHidden (404) or PolicyDenied (403)."""
        await self.catch_up()
        owner = self.owner(name)
        if owner is not Owner.UPSTREAM:
            path = await asyncio.to_thread(self.storage.locate, name, filename)
            if path is not None:
                if snapshot is not None:
                    await self._check_private(name, filename, snapshot)
                return path
            if owner is Owner.PRIVATE:
                raise NotFound(f"no file {filename!r} in project {name!r}")
        checked = await self.upstream.get(name, max_age=math.inf)
        dist = await self._file_of(checked.page, filename)
        if dist is None and checked.entry.age() > 1:
            checked = await self.upstream.refresh(name, checked)
            dist = await self._file_of(checked.page, filename)
        if dist is None:
            raise NotFound(f"no file {filename!r} in project {name!r}")
        assert checked.page is not None  # dist was found in it
        decision = (await self.guard.outcome(checked.page, snapshot)).decision(filename)
        _refuse(filename, decision)
        return dist

    async def _check_private(self, name: NormalizedName, filename: str, at: Snapshot) -> None:
        """A private file is hidden from a snapshot older than its upload."""
        page = await self._private_page(name)
        if page is not None:
            _refuse(filename, (await self.guard.outcome(page, at)).decision(filename))


def _refuse(filename: str, decision: Decision | None) -> None:
    if decision is None or decision.verdict is Verdict.YANKED:
        return  # a yanked file is still served (PEP 592)
    if decision.verdict is Verdict.DENIED:
        raise PolicyDenied(f"{filename}: {decision}", str(decision), decision.rule)
    raise PolicyHidden(f"{filename}: {decision}", str(decision), decision.rule)


def _rendering_bytes(rendering: _Rendering) -> int:
    """Its bodies and what it holds besides (the pages it was made from are not held)."""
    page = rendering.page
    return 400 + len(page.body) + len(page.gzip_body or b"") + DECISION_BYTES * rendering.decisions


def _filename_index(page: ProjectPage) -> dict[str, DistFile]:
    """Files by filename; the first of a repeated filename wins, as in ``page.file``."""
    index: dict[str, DistFile] = {}
    for dist in page.files:
        index.setdefault(dist.filename, dist)
    return index
