"""Memory bounded by configuration (issue 9): what a process keeps after answering many
different pages is what ``server.memory_cache_size`` allows, not one more copy per page asked.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

from proxyindex.diskstore import open_cache
from proxyindex.models import ProjectPage
from proxyindex.web import appkeys
from tests.conftest import MakeAppClient
from tests.wheelmaker import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"


def live_pages(prefix: str) -> int:
    """ProjectPage objects alive in this process for the projects named ``prefix*``."""
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if isinstance(o, ProjectPage) and o.name.startswith(prefix)
    )


async def test_renderings_do_not_keep_the_pages_they_were_made_from_alive(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    """The renderings' budget weighs their bytes; the pages they came from are the page
    caches' to keep. A rendering that held its page kept every page of every rendering alive,
    outside any budget (with 32 MB: 40 MB of pages behind 13 MB of renderings)."""
    count = 60
    for i in range(count):
        make_wheel(tmp_path / "packages", f"corp-b{i:02d}", "1.0")
    budget = 400_000  # parsed private pages: 40 kB (~20 of them); renderings: 160 kB (all)
    client = await make_app_client(server={"memory_cache_size": budget})
    for i in range(count):
        for accept in (JSON, "text/html"):
            resp = await client.get(f"/simple/corp-b{i:02d}/", headers={"Accept": accept})
            assert resp.status == 200
    index = client.app[appkeys.INDEX]
    assert len(index._rendered) == 2 * count  # every rendering is still held...
    assert len(index._private) < count // 2  # ...and most parsed pages were dropped
    # So they are gone from memory (give or take the last one asked, which a finished task
    # of the event loop may still refer to).
    assert live_pages("corp-b") <= len(index._private) + 2
    # A page asked again is rendered again, and the answer is the same.
    resp = await client.get("/simple/corp-b00/", headers={"Accept": JSON})
    assert resp.status == 200
    assert "corp_b00-1.0-py3-none-any.whl" in (await resp.text())


def test_the_disk_stores_do_not_map_their_database_once_per_thread(tmp_path: Path) -> None:
    """diskcache opens one SQLite connection per thread (the server's pool has 32), each with
    a 64 MB mmap window by default: the same file mapped again by every thread that reads it,
    counted in RSS each time (+92 MB over 16,000 private pages). Reads go through the kernel's
    page cache instead, and SQLite's own cache is small per connection."""
    store = open_cache(tmp_path / "store")
    try:
        for i in range(500):
            store.set(("info", i), b"x" * 300)

        def read() -> None:
            for i in range(500):
                assert store.get(("info", i)) is not None

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        database = str(tmp_path / "store" / "cache.db")
        with Path("/proc/self/maps").open(encoding="utf-8") as maps:
            mapped = [line for line in maps if line.rstrip().endswith(database)]
        assert mapped == []
        assert store._sql("PRAGMA cache_size").fetchone()[0] <= 256  # pages: 1 MB
    finally:
        store.close()
