"""Fetch ahead what an installer will ask for next, so its sequential round trips hit the cache.

pip resolves one project at a time: page, then ``.metadata``, then the next dependency's page,
and downloads the wheels one after another at the end: ~3 upstream round trips per package, in
series. When a project page comes fresh from the upstream, this module guesses the file the
client will pick (the newest release matching the requirement, best wheel for this machine's
tags and Python), fetches its ``.metadata``, follows its Requires-Dist to the dependencies'
pages, recursively, and starts the wheel downloads, all in parallel. Guesses use the same
single-flight paths as client requests, so a client asking meanwhile joins the transfer already
under way; a wrong guess costs upstream traffic, never correctness.
"""

from __future__ import annotations

import asyncio
import email.parser
import logging
import platform
from collections.abc import Awaitable, Callable, Iterable
from functools import cache, lru_cache

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag, sys_tags
from packaging.utils import (
    NormalizedName,
    canonicalize_name,
)
from packaging.version import Version

from proxyindex import cpulane
from proxyindex.cpulane import CpuLane
from proxyindex.distname import release_of
from proxyindex.errors import ProxyIndexError
from proxyindex.lru import LRU
from proxyindex.models import DistFile, ProjectPage
from proxyindex.simple import release_version
from proxyindex.slots import BiggestFirst
from proxyindex.upstream.background import Background
from proxyindex.upstream.clientprofile import CLIENT, ClientProfile
from proxyindex.upstream.downloads import Downloader

__all__ = ["Prefetcher", "choose_file", "dependencies"]

log = logging.getLogger(__name__)

PageSource = Callable[[NormalizedName], Awaitable[ProjectPage | None]]
WheelMetadataSource = Callable[[DistFile], Awaitable[bytes]]

_MAX_DEPTH = 12
_SEEN_MAX = 100_000  # (project, specifier) pairs already fetched ahead
_CONCURRENCY = 32  # guesses in flight at once; uv itself runs up to 50 requests
# Files fetched ahead at once. Unbounded, a cold pip install of ~40 projects started ~40 wheel
# transfers during resolution, which then shared the link with the pages and metadata the
# client was waiting for; a few at a time keeps the link for the client while still finishing
# before pip's sequential download phase asks for them. The biggest file waiting goes first
# (proxyindex.slots): the install ends when its biggest file has arrived.
_FILE_CONCURRENCY = 4
# uv downloads every file of its resolution at once (up to 50) as soon as it has resolved:
# four slots left most of them to its own requests, at one upstream round trip each, after
# resolution. Sixteen for uv: cold uv install on the benchmark's fake upstream (50 ms, 37
# files), file phase 0.83 s with 4 slots, 0.80 with 8, 0.59 with 16, 0.66 with 32.
_FILE_CONCURRENCY_PARALLEL = 16
_PARALLEL_DOWNLOADERS = frozenset({"uv"})


@cache
def _tag_rank() -> dict[Tag, int]:
    return {tag: rank for rank, tag in enumerate(sys_tags())}


@lru_cache(maxsize=1024)
def _allows(requires_python: str, python: str) -> bool:
    """Memoised: a PyPI page repeats the same few Requires-Python strings thousands of times."""
    try:
        return python in SpecifierSet(requires_python)
    except InvalidSpecifier:
        return False


def _candidate(dist: DistFile, python: str, ranks: dict[Tag, int]) -> tuple[Version, int] | None:
    """(version, tag rank) of a file the client could install; None if it can't."""
    if dist.yanked is not False:
        return None
    if dist.requires_python and not _allows(dist.requires_python, python):
        return None
    parsed = release_of(dist.filename)
    if parsed is None:
        return None
    if parsed.is_wheel:
        matched = [ranks[t] for t in parsed.tags if t in ranks]
        return (parsed.version, -min(matched)) if matched else None
    return parsed.version, -len(ranks)  # an sdist ranks below every wheel


def choose_file(
    page: ProjectPage,
    specifier: SpecifierSet | None = None,
    python: str | None = None,
    tags: dict[Tag, int] | None = None,
) -> DistFile | None:
    """The file pip or uv would most likely install for ``specifier``, on a client with this
    Python and these ranked wheel tags (by default: this machine's).

    The choice is the best of (final release, version, tag rank), so releases are tried newest
    first, final ones before pre-releases, and only the first release with an installable file
    has its files' tags parsed: a PyPI page of 5,000 files (botocore) cost 50-96 ms of CPU on
    the cold page path when every filename was parsed whole; most pages are decided by their
    newest release's dozen files.
    """
    python = python or platform.python_version()
    ranks = tags or _tag_rank()
    releases: dict[Version, list[DistFile]] = {}
    for dist in page.files:
        version = release_version(dist.filename)
        if version is not None:
            releases.setdefault(version, []).append(dist)
    for version in sorted(releases, key=_newest_final_first, reverse=True):
        if specifier is not None and not specifier.contains(version, prereleases=True):
            continue
        best: tuple[int, DistFile] | None = None
        for dist in releases[version]:  # page order: the first of equal rank wins, as before
            candidate = _candidate(dist, python, ranks)
            if candidate is not None and (best is None or candidate[1] > best[0]):
                best = (candidate[1], dist)
        if best is not None:
            return best[1]
    return None


def _newest_final_first(version: Version) -> tuple[bool, Version]:
    return not version.is_prerelease, version


def dependencies(
    metadata: bytes, environment: dict[str, str] | None = None
) -> Iterable[tuple[NormalizedName, SpecifierSet]]:
    """Requires-Dist entries that apply without extras in the client's environment (markers
    such as ``sys_platform == "win32"``; by default this machine's)."""
    message = email.parser.BytesHeaderParser().parsebytes(metadata)
    env = {**(environment or {}), "extra": ""}
    for raw in message.get_all("Requires-Dist") or ():
        try:
            requirement = Requirement(str(raw))
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
        except (InvalidRequirement, ValueError):
            continue
        yield canonicalize_name(requirement.name), requirement.specifier


class Prefetcher:
    def __init__(
        self,
        page_of: PageSource,
        downloader: Downloader,
        max_file_size: int,
        wheel_metadata: WheelMetadataSource | None = None,
        cpu: CpuLane | None = None,
    ) -> None:
        self._cpu = cpu  # choosing a file of a big page is CPU (``proxyindex.cpulane``)
        self._page_of = page_of
        self._downloader = downloader
        # METADATA read out of a wheel whose upstream has no .metadata (upstream.wheelmeta).
        self._wheel_metadata = wheel_metadata
        self._max_file_size = max_file_size
        self._limit = asyncio.Semaphore(_CONCURRENCY)
        self._files = BiggestFirst(_FILE_CONCURRENCY)
        self._files_parallel = BiggestFirst(_FILE_CONCURRENCY_PARALLEL)  # for uv's installs
        self._seen: LRU[tuple[NormalizedName, str, ClientProfile], bool] = LRU(_SEEN_MAX)
        self._tasks = Background()

    async def close(self) -> None:
        await self._tasks.close()

    def page_fetched(
        self,
        page: ProjectPage,
        specifier: SpecifierSet | None = None,
        depth: int = 0,
        client: ClientProfile | None = None,
    ) -> None:
        """A page came fresh from the upstream: fetch ahead for it in the background, for the
        kind of client whose request brought it (:data:`CLIENT`, set by the page handler)."""
        client = client if client is not None else CLIENT.get()
        key = (page.name, str(specifier or ""), client)
        if depth > _MAX_DEPTH or key in self._seen:
            return
        self._seen.put(key, True)
        self._tasks.spawn(self._prefetch(page, specifier, depth, client))

    async def _prefetch(
        self,
        page: ProjectPage,
        specifier: SpecifierSet | None,
        depth: int,
        client: ClientProfile,
    ) -> None:
        tags = client.tags or None
        if page.is_large:  # thousands of filenames to parse: a thread
            dist = await cpulane.run(
                self._cpu,
                len(page.files) * cpulane.FILE_COST // 4,  # ~1/4 of a render (measured)
                choose_file,
                page,
                specifier,
                client.python,
                tags,
            )
        else:
            dist = choose_file(page, specifier, client.python, tags)
        if dist is None:
            return
        try:
            async with self._limit:
                metadata = await self._metadata(dist)
            # Small requests first: the dependencies' pages go out before the (big) file, so
            # the resolver's next round trips are not queued behind file transfers (measured
            # with uv: 1.12x instead of 1.22x the time straight at the upstream).
            env = client.markers or None
            deps = list(dependencies(metadata, env)) if metadata is not None else []
            follow = [asyncio.create_task(self._follow(n, spec, depth, client)) for n, spec in deps]
            if client.wants_files and dist.size is not None and dist.size <= self._max_file_size:
                self._tasks.spawn(self._fetch_file(dist, client))  # the client joins it
            await asyncio.gather(*follow)
        except ProxyIndexError as exc:
            log.debug("prefetch for %s stopped: %s", page.name, exc)
        except Exception:  # a guess must never take anything down; keep the trace for debugging
            log.exception("prefetch for %s failed", page.name)

    async def _metadata(self, dist: DistFile) -> bytes | None:
        if not dist.filename.endswith(".whl"):
            return None
        meta = dist.metadata_file()
        if meta is None:
            return None if self._wheel_metadata is None else await self._wheel_metadata(dist)
        return await self._downloader.start(meta, ahead=True).read()

    async def _fetch_file(self, dist: DistFile, client: ClientProfile) -> None:
        """Download ``dist`` once a file slot is free; a client asking for it meanwhile starts
        (or joins) the download at once, never waiting for a slot."""
        parallel = client.installer in _PARALLEL_DOWNLOADERS
        files = self._files_parallel if parallel else self._files
        async with files.slot(dist.size or 0):
            # Reached through several dependents, asked for by its client, or evicted since
            # it was fetched: waiting for a slot already was the cost; the slot goes on.
            if self._downloader.started_before(dist):
                return
            log.debug("fetching %s ahead", dist.filename)
            try:  # a file cached meanwhile (by a client, another worker) ends at once
                await self._downloader.start(dist, ahead=True).wait()
            except ProxyIndexError as exc:
                log.debug("fetching %s ahead failed: %s", dist.filename, exc)

    async def _follow(
        self, name: NormalizedName, specifier: SpecifierSet, depth: int, client: ClientProfile
    ) -> None:
        async with self._limit:
            page = await self._page_of(name)
        if page is not None:
            self.page_fetched(page, specifier, depth + 1, client)
