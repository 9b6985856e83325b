"""The web UI's cache page and ``/-/admin/cache/stats`` read the blob index (issue 9): what
they show costs a few rows at 100,000 blobs, where they walked the blob folder and read up to
5,000 cached pages every 30 s. The numbers must still be the folder's."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from proxyindex.upstream.blobindex import BlobIndex, ProjectUsage
from proxyindex.upstream.cache import BlobStore
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI


def blob_files(cache: Path) -> list[Path]:
    """The blobs really in the folder (what the page must agree with)."""
    files = cache / "files"
    return [
        path
        for path in files.rglob("*")
        if path.is_file() and len(path.name) == 64 and path.parent != files / "tmp"
    ]


async def test_the_cache_page_shows_what_the_folder_holds_without_walking_it(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wheels = {
        "big-pkg": [
            fake_pypi.add_wheel("big-pkg", v, modules={"big_pkg": repr(os.urandom(30_000))})
            for v in ("1.0", "2.0")
        ],
        "small-pkg": [fake_pypi.add_wheel("small-pkg", "1.0")],
    }
    client = await make_app_client(upstream={"prefetch": False})
    for name, files in wheels.items():
        for wheel in files:
            resp = await client.get(f"/packages/{name}/{wheel.name}")
            assert resp.status == 200
            await resp.read()
    cache = tmp_path / "cache"
    for _ in range(100):  # each download is committed just after its last byte is sent
        if len(blob_files(cache)) == 3:
            break
        await asyncio.sleep(0.05)
    blobs = blob_files(cache)
    assert len(blobs) == 3

    def no_walk(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the blob folder was walked")

    scandir = os.scandir
    blob_root = str(cache / "files")

    def scandir_elsewhere(path: Any = ".") -> Any:
        if str(path).startswith(blob_root):
            raise AssertionError(f"the blob folder was listed: {path}")
        return scandir(path)

    monkeypatch.setattr(os, "walk", no_walk)
    monkeypatch.setattr(Path, "rglob", no_walk)
    monkeypatch.setattr(os, "scandir", scandir_elsewhere)
    metrics = await (await client.get("/metrics")).text()
    assert re.search(r"^proxyindex_cache_files 3(\.0)?$", metrics, re.MULTILINE), metrics
    resp = await client.get("/ui/cache/")
    assert resp.status == 200
    body = await resp.text()
    assert re.search(r'<div class="big">3</div><div>cached files</div>', body), body
    big = sum(p.stat().st_size for p in blobs if p.stat().st_size > 20_000)
    stats = await (await client.get("/-/admin/cache/stats")).json()
    assert stats["files"] == 3
    assert stats["size"] == sum(p.stat().st_size for p in blobs)
    assert stats["largest"][0] == {"project": "big-pkg", "bytes": big, "files": 2}
    assert stats["largest"][1]["project"] == "small-pkg"
    assert re.search(r"<td>big-pkg</td><td class=\"num\">2</td>", body), body


def test_the_index_counts_blobs_and_projects_as_they_come_and_go(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache" / "files")
    index = store.index
    for i, (project, size) in enumerate([("a", 100), ("a", 50), ("b", 500), (None, 7)]):
        temp = store.temp_dir / f".t{i}"
        data = f"{i}".encode().ljust(size, b"x")
        temp.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        store.commit(temp, sha, project)
        index.touch(sha, size, when=1000.0 + i)  # used in this order
    assert (index.count(), index.total()) == (4, 657)
    assert index.largest_projects(10) == [ProjectUsage("b", 500, 1), ProjectUsage("a", 150, 2)]
    assert index.largest_projects(1) == [ProjectUsage("b", 500, 1)]
    store.shrink(200)  # down to 180 bytes, least recently used first: a's two, then b's
    left = blob_files(tmp_path / "cache")
    assert [p.stat().st_size for p in left] == [7]
    assert (index.count(), index.total()) == (1, 7)
    assert index.largest_projects(10) == []  # the blob left was counted for no project
    store.close()


def test_an_index_written_before_the_counts_gets_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "blob-index.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, used REAL NOT NULL)
            WITHOUT ROWID;
        CREATE TABLE total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
        INSERT INTO total VALUES (0, 30);
        CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), built INTEGER);
        INSERT INTO state VALUES (0, 1);
        INSERT INTO blobs VALUES ('a', 10, 1.0), ('b', 20, 2.0);
        """
    )
    db.commit()
    db.close()
    index = BlobIndex(path)
    assert (index.count(), index.total()) == (2, 30)
    index.add("c", 5, "proj")
    index.remove("a")
    assert (index.count(), index.total()) == (2, 25)
    assert index.largest_projects(5) == [ProjectUsage("proj", 5, 1)]
    index.close()
