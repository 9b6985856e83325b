"""Issue 9 §2: the cost of a change grows with the change, not with everything stored.

Each test counts the work a change causes (entries rendered, pages built, files listed,
blobs looked at) with a hook on the function that does it; none measures time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from packaging.utils import NormalizedName

from proxyindex.config import Config
from proxyindex.distname import parse_dist_filename
from proxyindex.errors import StillHashing
from proxyindex.index.projects import ProjectIndex
from proxyindex.lru import LRU
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.private import storage as storage_module
from proxyindex.private import watch as watch_module
from proxyindex.private.storage import PrivateStorage, Stored
from proxyindex.private.watch import DirWatcher
from proxyindex.simple import SimpleFormat
from proxyindex.upstream.cache import BlobStore, PageEntry
from proxyindex.upstream.pages import Checked
from proxyindex.web import appkeys
from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.conftest import MakeAppClient
from tests.test_upload import form, upload
from tests.wheelmaker import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"
ANON = {"anonymous_upload": True}
Client = TestClient[Any, Any]


class Counter:
    def __init__(self) -> None:
        self.calls = 0


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> Counter:
    """Wrap ``owner.name`` so each call is counted."""
    counter = Counter()
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter.calls += 1
        return real(*args, **kwargs)

    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    monkeypatch.setattr(owner, name, staticmethod(counted) if static else counted)
    return counter


async def root_names(client: Client) -> list[str]:
    resp = await client.get("/simple/", headers={"Accept": JSON})
    assert resp.status == 200
    return [p["name"] for p in (await resp.json(content_type=None))["projects"]]


# --- the root list ---------------------------------------------------------------------------


async def test_an_upload_to_one_project_does_not_rebuild_another_projects_page(
    make_app_client: MakeAppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("1.0", "1.1", "1.2"):
        make_wheel(tmp_path / "packages", "corp-big", version)
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    first = await client.get("/simple/corp-big/", headers={"Accept": JSON})
    assert first.status == 200
    built = count_calls(monkeypatch, PrivateStorage, "page")
    new = make_wheel(tmp_path / "wheels", "corp-lib", "2.0")
    assert (await upload(client, form(new))).status == 200
    again = await client.get(
        "/simple/corp-big/", headers={"Accept": JSON, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert built.calls == 0
    # The uploaded project's own page does change.
    lib = await client.get("/simple/corp-lib/", headers={"Accept": JSON})
    assert len((await lib.json(content_type=None))["files"]) == 2
    assert built.calls == 1


# --- uploads and the poll: O(changes) ----------------------------------------------------------


def private_tree(packages: Path, projects: int) -> None:
    for i in range(projects):
        folder = packages / f"corp-p{i:03d}"
        folder.mkdir(parents=True)
        (folder / f"corp_p{i:03d}-1.0.tar.gz").write_bytes(b"stand-in")


def store(storage: PrivateStorage, wheel: Path) -> None:
    temp = storage.temp_dir / f".upload-{wheel.name}"
    temp.write_bytes(wheel.read_bytes())
    dist = parse_dist_filename(wheel.name)
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert isinstance(storage.add(temp, dist, sha256, overwrite=False), Stored)


def test_an_upload_lists_its_own_project_folder_not_the_whole_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tree(tmp_path / "packages", 30)
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    try:
        storage.rescan()
        walked = count_calls(monkeypatch, PrivateStorage, "_fresh_state")
        listed = count_calls(monkeypatch, PrivateStorage, "_scan_dir")
        store(storage, make_wheel(tmp_path / "wheels", "corp-p007", "2.0"))
        assert walked.calls == 0  # no stat of the 31 folders
        assert listed.calls == 1  # its own folder
        page = storage.page(NormalizedName("corp-p007"))
        assert page is not None and len(page.files) == 2
    finally:
        storage.close()


def test_another_worker_lists_only_the_folders_logged_by_the_one_that_changed_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tree(tmp_path / "packages", 30)
    one = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    other = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    try:
        one.rescan()
        other.rescan()
        other.catch_up()
        store(one, make_wheel(tmp_path / "wheels", "corp-new", "1.0"))
        assert other.stale()
        walked = count_calls(monkeypatch, PrivateStorage, "_fresh_state")
        other.catch_up()
        assert walked.calls == 0
        assert other.has(NormalizedName("corp-new")) and not other.stale()
    finally:
        one.close()
        other.close()


def test_the_idle_poll_lists_only_the_folders_inotify_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if DirWatcher.create() is None:
        pytest.skip("no inotify here")
    private_tree(tmp_path / "packages", 30)
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    try:
        storage.rescan()
        storage.poll()  # the first poll walks once and sets the watches
        walked = count_calls(monkeypatch, PrivateStorage, "_fresh_state")
        listed = count_calls(monkeypatch, PrivateStorage, "_scan_dir")
        assert storage.poll() is False
        assert walked.calls == listed.calls == 0  # nothing changed: nothing looked at
        make_wheel(tmp_path / "packages" / "corp-p003", "corp-p003", "2.0")
        new = tmp_path / "packages" / "corp-fresh"
        new.mkdir()
        (new / "corp_fresh-1.0.tar.gz").write_bytes(b"stand-in")
        hidden = tmp_path / "packages" / ".staging"  # dot folders are never listed
        hidden.mkdir()
        (hidden / "corp_hidden-1.0.tar.gz").write_bytes(b"stand-in")
        assert storage.poll() is True
        assert walked.calls == 0
        assert listed.calls <= 3  # corp-p003, the root, corp-fresh
        assert storage.has(NormalizedName("corp-fresh"))
        assert not storage.has(NormalizedName("corp-hidden"))
        page = storage.page(NormalizedName("corp-p003"))
        assert page is not None and len(page.files) == 2
    finally:
        storage.close()


# --- file requests: an index by filename -------------------------------------------------------


class CountedFiles(tuple[DistFile, ...]):
    """A page's files that count how often the whole list is walked."""

    walks = 0

    def __iter__(self) -> Iterator[DistFile]:
        CountedFiles.walks += 1
        return super().__iter__()


class StubUpstream:
    def __init__(self, page: ProjectPage) -> None:
        self.checked = Checked(PageEntry(page, time.time()), time.time() + 600)

    async def get(self, name: NormalizedName, max_age: float | None = None, **kw: Any) -> Checked:
        return self.checked


async def test_file_requests_find_the_file_without_walking_the_page(tmp_path: Path) -> None:
    files = CountedFiles(
        DistFile(f"big-{i}.0.tar.gz", f"https://up.example/big-{i}.0.tar.gz", Origin.UPSTREAM)
        for i in range(2000)
    )
    page = ProjectPage(NormalizedName("big"), files)
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    try:
        index = ProjectIndex(Config(), storage, StubUpstream(page))  # type: ignore[arg-type]
        CountedFiles.walks = 0
        for _ in range(50):
            found = await index.locate(NormalizedName("big"), "big-1999.0.tar.gz")
            assert isinstance(found, DistFile) and found.filename == "big-1999.0.tar.gz"
        assert CountedFiles.walks <= 1  # the index is built once for the page
    finally:
        storage.close()


# --- memory bounded in bytes -------------------------------------------------------------------


def test_a_cache_bounded_in_bytes_drops_the_least_recently_used_one_by_one() -> None:
    cache: LRU[str, bytes] = LRU(1000, max_bytes=350, weigh=len)
    for key in "abcde":
        cache.put(key, bytes(100))
        cache.get("a")  # kept in use
    assert cache.bytes <= 350
    assert "a" in cache and "e" in cache and "d" in cache and "b" not in cache
    cache.put("huge", bytes(1000))  # heavier than the budget: not kept, nothing dropped
    assert "huge" not in cache and len(cache) == 3


async def test_rendered_pages_stay_within_the_configured_bytes(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    for i in range(40):
        make_wheel(tmp_path / "packages", f"corp-m{i:02d}", "1.0")
    budget = 40_000
    client = await make_app_client(server={"memory_cache_size": budget})
    for i in range(40):
        for accept in (JSON, "text/html"):
            resp = await client.get(f"/simple/corp-m{i:02d}/", headers={"Accept": accept})
            assert resp.status == 200
    index = client.app[appkeys.INDEX]
    assert 0 < index._rendered.bytes <= budget * 4 // 10
    assert 0 < len(index._rendered) < 80  # the oldest went, the newest stayed
    assert ("corp-m39", SimpleFormat.JSON, None) in index._rendered  # (name, format, snapshot)


# --- eviction: O(evicted) ----------------------------------------------------------------------


def fill_blobs(store: BlobStore, count: int, size: int = 100) -> list[str]:
    shas = []
    for i in range(count):
        data = f"{i:08d}".encode().ljust(size, b"x")
        sha256 = hashlib.sha256(data).hexdigest()
        temp = store.temp_dir / f".blob-{i}"
        temp.write_bytes(data)
        store.commit(temp, sha256)
        shas.append(sha256)
    return shas


def test_eviction_after_a_restart_does_not_stat_every_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = BlobStore(tmp_path / "cache" / "files")
    shas = fill_blobs(first, 200)
    first.shrink(10**9)
    for sha256 in shas[:20]:  # the oldest are used again (an hour later): they must stay
        path = first.path(sha256)
        os.utime(path, (time.time() - 7200, path.stat().st_mtime))
        fh = first.open(sha256)
        assert fh is not None
        fh.close()
    restarted = BlobStore(tmp_path / "cache" / "files")  # a new process: nothing in memory
    walks = count_calls(monkeypatch, os, "walk")
    stats = count_calls(monkeypatch, Path, "stat")
    assert restarted.shrink(10**9) == 200 * 100  # under the limit: nothing looked at
    assert walks.calls == 0 and stats.calls == 0
    left = restarted.shrink(200 * 100 - 1)  # 1 byte over: down to 90%
    assert walks.calls == 0 and stats.calls == 0
    assert left <= (200 * 100 - 1) * 9 // 10
    kept = {p.name for p in (tmp_path / "cache" / "files").rglob("*") if p.is_file()}
    assert len(kept) * 100 == left
    assert set(shas[:20]) <= kept  # recently used
    assert shas[20] not in kept  # least recently used went first


def test_a_missing_blob_index_is_rebuilt_from_the_folder_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache" / "files")
    fill_blobs(store, 30)
    store.close()
    for path in (tmp_path / "cache").glob("blob-index.sqlite*"):
        path.unlink()
    again = BlobStore(tmp_path / "cache" / "files")
    assert again.shrink(10**9) == 30 * 100
    assert again.shrink(2000) <= 1800


# --- first hashing: shared, and answered within pip's timeout -----------------------------------


def slow_hashing(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Counter:
    """Make hashing a file take ``seconds`` (a big wheel), counting the files hashed."""
    counter = Counter()
    real = storage_module.compute_file_info

    def slow(path: Path) -> Any:
        counter.calls += 1
        time.sleep(seconds)
        return real(path)

    monkeypatch.setattr(storage_module, "compute_file_info", slow)
    return counter


def test_a_page_and_the_warm_up_hash_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        make_wheel(tmp_path / "packages" / "corp-many", "corp-many", f"1.{i}")
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    hashed = slow_hashing(monkeypatch, 0.02)
    try:
        storage.rescan()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            warm = pool.submit(storage.warm)
            pages = [pool.submit(storage.page, NormalizedName("corp-many")) for _ in range(2)]
            warm.result()
            for page in pages:
                result = page.result()
                assert result is not None and all(f.sha256 for f in result.files)
        assert hashed.calls == 20
    finally:
        storage.close()


async def test_a_page_still_being_hashed_is_a_503_to_retry_never_a_page_without_hashes(
    make_app_client: MakeAppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(30):
        make_wheel(tmp_path / "packages" / "corp-many", "corp-many", f"1.{i}")
    hashed = slow_hashing(monkeypatch, 0.05)
    client = await make_app_client()
    client.app[appkeys.INDEX].hash_wait = 0.2
    first = await client.get("/simple/corp-many/", headers={"Accept": JSON})
    assert first.status == 503
    assert first.headers["Retry-After"] == "2"
    assert "hashing" in await first.text()
    for _ in range(200):  # the hashing goes on meanwhile (~1.5 s); a retry gets the page
        resp = await client.get("/simple/corp-many/", headers={"Accept": JSON})
        if resp.status == 200:
            break
        assert resp.status == 503
        await asyncio.sleep(0.1)
    files = (await resp.json(content_type=None))["files"]
    assert len(files) == 30 and all(len(f["hashes"]["sha256"]) == 64 for f in files)
    assert hashed.calls == 30  # the warm-up and the request shared the work


async def test_pip_and_uv_retry_a_page_still_being_hashed_and_install(
    make_app_client: MakeAppClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(30):
        make_wheel(tmp_path / "packages" / "corp-many", "corp-many", f"1.{i}")
    slow_hashing(monkeypatch, 0.1)  # ~3 s of hashing after start
    client = await make_app_client()
    index = client.app[appkeys.INDEX]
    index.hash_wait = 0.3
    url = str(client.make_url("/simple/"))
    told = count_calls(monkeypatch, StillHashing, "__init__")  # each 503 answered
    pip = await asyncio.to_thread(
        run_pip_install, tmp_path / "pip", url, "corp-many", target=tmp_path / "pip-target"
    )
    assert [(i.name, i.version) for i in pip.installed] == [("corp-many", "1.29")]
    assert told.calls >= 1  # it was told to retry, and did
    pip_told = told.calls
    # uv, against a second project that is still being hashed when it asks.
    for i in range(30):
        make_wheel(tmp_path / "packages" / "corp-more", "corp-more", f"2.{i}")
    await asyncio.to_thread(index.storage.rescan)
    venv = await asyncio.to_thread(make_venv, tmp_path / "venv")
    uv = await asyncio.to_thread(run_uv_pip_install, tmp_path / "uv", url, "corp-more", python=venv)
    assert uv.installed == {"corp-more": "2.29"}
    assert told.calls > pip_told


def test_a_packages_folder_on_a_network_file_system_is_polled_not_watched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(watch_module, "_fs_type", lambda _path: "nfs4")
    assert DirWatcher.create(str(tmp_path)) is None  # another host's writes raise no event


def test_a_process_is_current_after_its_own_change_and_lists_nothing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tree(tmp_path / "packages", 30)
    storage = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    try:
        storage.rescan()  # the first walk finds every folder new
        assert not storage.stale()
        store(storage, make_wheel(tmp_path / "wheels", "corp-p001", "2.0"))
        assert not storage.stale()  # nobody else changed anything: nothing to catch up on
    finally:
        storage.close()
