"""ProjectIndex rules that need a scripted upstream: serials that go back (UP-04)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from packaging.utils import NormalizedName

from proxyindex.cache import PageCache, PageEntry
from proxyindex.config import load_config
from proxyindex.index import ProjectIndex
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.storage import PrivateStorage
from proxyindex.upstream import UpstreamClient

NAME = NormalizedName("demo-pkg")


def _page(serial: int, *versions: str) -> ProjectPage:
    files = tuple(
        DistFile(
            filename=f"demo_pkg-{v}-py3-none-any.whl",
            url=f"https://u/demo_pkg-{v}-py3-none-any.whl",
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
    index = ProjectIndex(config, storage, pages, cast(UpstreamClient, upstream))
    try:
        first = await index.upstream_entry(NAME)
        assert first.page is not None and first.page.versions == {"1.0", "1.1"}
        stale_cdn = await index.upstream_entry(NAME)  # serial 5 < 10: keep ours
        assert stale_cdn.page is first.page
        newer = await index.upstream_entry(NAME)
        assert newer.page is not None and newer.page.versions == {"1.0", "2.0"}
    finally:
        await index.close()
        pages.close()
        storage.close()
