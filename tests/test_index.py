"""ProjectIndex rules that need a scripted upstream: serials that go back (UP-04)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from packaging.utils import NormalizedName

from proxyindex.config import load_config
from proxyindex.errors import UpstreamUnavailable
from proxyindex.index.projects import ProjectIndex
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.private.storage import PrivateStorage
from proxyindex.upstream.cache import PageCache, PageEntry
from proxyindex.upstream.client import UpstreamClient
from proxyindex.upstream.pages import UpstreamPages

NAME = NormalizedName("demo-pkg")


def _page(serial: int, *versions: str) -> ProjectPage:
    files = tuple(
        DistFile(
            filename=f"demo_pkg-{v}-py3-none-any.whl",
            location=f"https://u/demo_pkg-{v}-py3-none-any.whl",
            origin=Origin.UPSTREAM,
        )
        for v in versions
    )
    return ProjectPage(NAME, files, versions=frozenset(versions), serial=serial)


class ScriptedUpstream:
    """Answers page fetches from a list, like a CDN that may serve an older copy."""

    def __init__(self, *pages: ProjectPage) -> None:
        self.pages = list(pages)

    async def fetch_page(self, name: NormalizedName, cached: PageEntry | None) -> PageEntry:
        return PageEntry(self.pages.pop(0), time.time(), etag=None)


async def test_a_page_with_a_lower_serial_than_the_cached_one_is_ignored(tmp_path: Path) -> None:
    config = load_config(None, overrides={"upstream": {"page_ttl": 0}})
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    pages = PageCache(tmp_path / "pages")
    upstream = ScriptedUpstream(_page(10, "1.0", "1.1"), _page(5, "1.0"), _page(11, "1.0", "2.0"))
    upstream_pages = UpstreamPages(config.upstream, pages, cast(UpstreamClient, upstream))
    index = ProjectIndex(config, storage, upstream_pages)
    try:
        first = await index.upstream.get(NAME)
        assert first.page is not None and first.page.versions == {"1.0", "1.1"}
        stale_cdn = await index.upstream.get(NAME)  # serial 5 < 10: keep ours
        assert stale_cdn.page is first.page
        newer = await index.upstream.get(NAME)
        assert newer.page is not None and newer.page.versions == {"1.0", "2.0"}
    finally:
        await index.upstream.close()
        pages.close()
        storage.close()


class FailingUpstream:
    async def fetch_page(self, name: NormalizedName, cached: PageEntry | None) -> PageEntry:
        raise UpstreamUnavailable("upstream answered 503")


async def test_page_cache_lookups_skip_names_never_stored_but_a_failure_asks_the_disk(
    tmp_path: Path,
) -> None:
    """Two worker processes share the folder: each lists the names once, then knows only its
    own writes. A page the other stored is not looked up, unless the upstream fails."""
    worker_a, worker_b = PageCache(tmp_path / "pages"), PageCache(tmp_path / "pages")
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    config = load_config(None)
    failing = cast(UpstreamClient, FailingUpstream())
    index_b = ProjectIndex(config, storage, UpstreamPages(config.upstream, worker_b, failing))
    try:
        entry = PageEntry(_page(3, "1.0"), time.time() - 3600, etag='"e"')
        await worker_a.put(NAME, entry)
        await worker_b.load_names()
        await worker_a.load_names()
        other = NormalizedName("other-pkg")
        await worker_a.put(other, entry)
        assert await worker_a.get(other) is not None  # its own write
        assert await worker_b.get(NAME) is not None  # listed at start
        assert await worker_b.get(other) is None  # stored by the other process since
        assert await worker_b.get(other, any_writer=True) is not None
        stale = await index_b.upstream.get(other)  # the upstream fails: served stale
        assert stale.page is not None and stale.page.versions == {"1.0"}
    finally:
        await index_b.upstream.close()
        worker_a.close()
        worker_b.close()
        storage.close()
