"""The server over real sockets (aiohttp test client) against the fake upstream PyPI.

Client-level behaviour (pip, uv, twine) is in test_clients.py; here each protocol item is
checked header by header. IDs refer to PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel, wheel_metadata

JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"

Client = TestClient[Any, Any]
MakeClient = MakeAppClient


@pytest.fixture
def make_client(make_app_client: MakeAppClient) -> MakeAppClient:
    return make_app_client


def packages(tmp_path: Path) -> Path:
    path = tmp_path / "packages"
    path.mkdir(exist_ok=True)
    return path


def blobs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache" / "files"
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


def cache_size(tmp_path: Path) -> int:
    """Bytes in the blob cache, while eviction may be deleting files."""
    total = 0
    for path in blobs(tmp_path):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def is_cached(tmp_path: Path, data: bytes) -> bool:
    """Whether the blob cache holds exactly these bytes (blobs are named by sha256)."""
    sha = hashlib.sha256(data).hexdigest()
    return (tmp_path / "cache" / "files" / sha[:2] / sha).is_file()


async def becomes_cached(tmp_path: Path, data: bytes, seconds: float = 5.0) -> bool:
    """Clients get the last byte once the hash is checked; the commit to disk follows."""
    deadline = time.monotonic() + seconds
    while not is_cached(tmp_path, data):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def raw_get(client: Client, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written: HTTP clients would normalise ``..`` and ``%2e`` away."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def page_json(client: Client, name: str) -> dict[str, Any]:
    resp = await client.get(f"/simple/{name}/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json(content_type=None)
    return result


# --- project pages ---------------------------------------------------------------------------


async def test_upstream_page_is_rewritten_to_point_at_the_proxy(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", requires_python=">=3.8")
    client = await make_client()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON  # CN-07
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"  # CN-08
    assert resp.headers["ETag"].startswith('"')
    max_age = int(resp.headers["Cache-Control"].removeprefix("max-age="))
    assert 0 < max_age <= 600  # CC-01: upstream pages, the TTL left
    doc = await resp.json(content_type=None)
    (entry,) = doc["files"]
    assert entry["url"] == f"../../packages/demo-pkg/{wheel.name}"  # F-07
    assert entry["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert entry["size"] == wheel.stat().st_size
    assert entry["requires-python"] == ">=3.8"
    assert entry["upload-time"].endswith("Z")
    assert doc["versions"] == ["1.0"]


async def test_304_has_no_content_type_and_formats_have_distinct_etags(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client()
    as_json = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    as_html = await client.get("/simple/demo-pkg/", headers={"Accept": "text/html"})
    assert as_json.headers["ETag"] != as_html.headers["ETag"]  # CN-08
    again = await client.get(
        "/simple/demo-pkg/",
        headers={"Accept": PIP_ACCEPT, "If-None-Match": f'W/{as_json.headers["ETag"]}, "x"'},
    )
    assert again.status == 304  # CC-02
    assert "Content-Type" not in again.headers  # CC-03
    assert again.headers["ETag"] == as_json.headers["ETag"]
    assert again.headers["Vary"] == "Accept, Accept-Encoding"
    assert await again.read() == b""


async def test_gzip_when_accepted_with_its_own_etag(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    for minor in range(30):
        fake_pypi.add_wheel("big-pkg", f"1.{minor}")
    client = await make_client()
    plain = await client.get(
        "/simple/big-pkg/", headers={"Accept": PIP_ACCEPT, "Accept-Encoding": "identity"}
    )
    packed = await client.get(
        "/simple/big-pkg/",
        headers={"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip, deflate"},
        auto_decompress=False,
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await packed.read()) == await plain.read()
    assert packed.headers["ETag"] != plain.headers["ETag"]  # CC-04


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple/Demo_Pkg/", "/simple/demo-pkg/"),  # N-03
        ("/simple/demo.pkg/?format=text/html", "/simple/demo-pkg/?format=text/html"),
        ("/simple/demo-pkg", "/simple/demo-pkg/"),  # N-04
        ("/simple/DEMO--pkg", "/simple/demo-pkg/"),
        ("/simple", "/simple/"),
    ],
)
async def test_non_canonical_urls_redirect_permanently(
    make_client: MakeClient, path: str, location: str
) -> None:
    client = await make_client()
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == location


async def test_unknown_project_is_a_404_nobody_caches(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    client = await make_client()
    resp = await client.get("/simple/no-such-project/")
    assert resp.status == 404  # N-05
    assert resp.headers["Cache-Control"] == "no-store"  # CC-05


@pytest.mark.parametrize(
    "path",
    [
        "/simple/%2e%2e/",
        "/simple/..%2f/",
        "/simple/..%2f..%2fetc%2fpasswd/",
        "/simple/%5c..%5c/",
        "/simple/foo%0a/",
        "/simple/" + "a" * 5000 + "/",
        "/packages/demo-pkg/..%2f..%2f..%2fetc%2fpasswd",
        "/packages/demo-pkg/%2e%2e",
        "/packages/demo-pkg/..%5cconfig.toml",
        "/packages/..%2f/demo_pkg-1.0-py3-none-any.whl",
        "/packages/demo-pkg/other_pkg-1.0-py3-none-any.whl",
        "/packages/demo-pkg/demo_pkg-1.0-py3-none-any.whl%00.txt",
        "/packages/demo-pkg/.tmp-x",
        "/packages/demo-pkg/README",
    ],
)
async def test_bad_names_and_traversal_get_a_4xx_and_the_server_keeps_serving(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path, path: str
) -> None:
    make_wheel(packages(tmp_path), "demo-pkg", "1.0")
    client = await make_client()
    status, body = await raw_get(client, path)
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in body
    assert fake_pypi.count("/simple/") == 0
    assert (await client.get("/simple/demo-pkg/")).status == 200


@pytest.mark.parametrize(
    "accept", ["application/xml", "application/json", "garbage;;q=x,,", "*/*;q=abc", ";;;"]
)
async def test_unacceptable_or_garbage_accept_gets_html(
    make_client: MakeClient, fake_pypi: FakePyPI, accept: str
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client()
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": accept})
    assert resp.status == 200  # CN-05
    assert resp.headers["Content-Type"].startswith("text/html")


# --- private storage and dependency confusion ----------------------------------------------


async def test_private_page_forces_revalidation_and_serves_metadata(
    make_client: MakeClient, tmp_path: Path
) -> None:
    wheel = make_wheel(packages(tmp_path), "corp-lib", "1.0", requires_python=">=3.9")
    client = await make_client()
    resp = await client.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    assert resp.headers["Cache-Control"] == "max-age=0, must-revalidate"  # CC-01
    (entry,) = (await resp.json(content_type=None))["files"]
    metadata = wheel_metadata(wheel)
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}  # M-02
    assert entry["upload-time"].endswith("Z")  # J-06
    assert entry["requires-python"] == ">=3.9"
    meta = await client.get(f"/packages/corp-lib/{wheel.name}.metadata")
    assert await meta.read() == metadata
    dist = await client.get(f"/packages/corp-lib/{wheel.name}")
    assert await dist.read() == wheel.read_bytes()
    assert dist.headers["Cache-Control"] == "public, max-age=31536000, immutable"


async def test_dropped_file_appears_within_two_seconds(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = await make_client(private={"reserved": ["late-*"]})
    assert (await client.get("/simple/late-pkg/")).status == 404
    nested = packages(tmp_path) / "team" / "sub"
    nested.mkdir(parents=True)
    make_wheel(nested, "late-pkg", "0.1")
    deadline = time.monotonic() + 2.0
    while (await client.get("/simple/late-pkg/")).status != 200:
        assert time.monotonic() < deadline, "dropped file not visible within 2 s"
        await asyncio.sleep(0.1)


async def test_private_name_never_asks_the_upstream(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0")
    make_wheel(packages(tmp_path), "corp-lib", "1.0")
    client = await make_client()
    for variant in ("corp-lib", "Corp_Lib", "corp.lib"):
        doc = await page_json(client, variant)
        assert doc["versions"] == ["1.0"]  # DC-01
    missing = await client.get("/packages/corp-lib/corp_lib-99.0-py3-none-any.whl")
    assert missing.status == 404
    assert fake_pypi.count("/simple/corp-lib") == 0
    assert fake_pypi.count("/files/") == 0


async def test_reserved_name_never_goes_upstream_even_without_files(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("acme-tool", "6.6.6")
    client = await make_client(private={"reserved": ["acme-*"]})
    assert (await client.get("/simple/acme-tool/")).status == 404  # DC-03
    assert fake_pypi.count("/simple/acme-tool") == 0


async def test_allow_listed_name_merges_and_private_wins_a_clash(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("fork", "1.0")
    fake_pypi.add_wheel("fork", "2.0")
    private_wheel = make_wheel(packages(tmp_path), "fork", "1.0", modules={"fork": "PRIVATE = 1"})
    client = await make_client(private={"merge_with_upstream": ["fork"]})
    doc = await page_json(client, "fork")
    assert doc["versions"] == ["1.0", "2.0"]  # DC-02
    shas = {f["filename"]: f["hashes"]["sha256"] for f in doc["files"]}
    assert shas[private_wheel.name] == hashlib.sha256(private_wheel.read_bytes()).hexdigest()
    got = await client.get(f"/packages/fork/{private_wheel.name}")
    assert await got.read() == private_wheel.read_bytes()


# --- upstream faults -------------------------------------------------------------------------


async def test_stale_page_is_served_when_the_upstream_fails(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client(upstream={"page_ttl": 0})
    assert (await client.get("/simple/demo-pkg/")).status == 200
    fake_pypi.status = 503
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    assert resp.status == 200
    assert [f["filename"] for f in (await resp.json(content_type=None))["files"]]
    fake_pypi.status = None
    fake_pypi.stop()  # the fake_pypi fixture starts it again for the next test
    assert (await client.get("/simple/demo-pkg/")).status == 200


async def test_upstream_failure_with_nothing_cached_is_a_502_or_504(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    client = await make_client(upstream={"timeout": 1})
    fake_pypi.status = 500
    resp = await client.get("/simple/demo-pkg/")
    assert resp.status == 502
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Retry-After" not in resp.headers  # pip would wait it out 5 times
    fake_pypi.status = None
    fake_pypi.delay = 3
    resp = await client.get("/simple/other-pkg/")
    assert resp.status == 504
    fake_pypi.delay = 0
    fake_pypi.stop()  # the fake_pypi fixture starts it again for the next test
    assert (await client.get("/simple/third-pkg/")).status == 502


async def test_expired_page_is_revalidated_with_if_none_match(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client(upstream={"page_ttl": 0})
    await page_json(client, "demo-pkg")
    await page_json(client, "demo-pkg")
    second = fake_pypi.requests_for("/simple/demo-pkg/")[-1]
    assert second.headers.get("If-None-Match")
    fake_pypi.add_wheel("demo-pkg", "1.1")
    assert (await page_json(client, "demo-pkg"))["versions"] == ["1.0", "1.1"]


async def test_refreshed_pages_follow_yanks_unyanks_and_removed_files(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    """UP-06: a yank can flip both ways; UP-05: files the upstream stops listing (removed,
    quarantined) are neither listed nor served, even once cached."""
    kept = fake_pypi.add_wheel("demo-pkg", "1.0")
    dropped = fake_pypi.add_wheel("demo-pkg", "1.1")
    client = await make_client(upstream={"page_ttl": 0, "prefetch": False})

    async def yanked() -> dict[str, Any]:
        return {f["filename"]: f["yanked"] for f in (await page_json(client, "demo-pkg"))["files"]}

    assert await yanked() == {kept.name: False, dropped.name: False}
    got = await client.get(f"/packages/demo-pkg/{dropped.name}")
    assert await got.read() == dropped.read_bytes()
    fake_pypi.set_yanked(kept.name, "broken build")
    assert (await yanked())[kept.name] == "broken build"
    fake_pypi.set_yanked(kept.name, False)
    assert (await yanked())[kept.name] is False
    fake_pypi.remove_dist(dropped.name)
    assert await yanked() == {kept.name: False}
    assert (await client.get(f"/packages/demo-pkg/{dropped.name}")).status == 404


async def test_one_upstream_fetch_per_page_however_many_clients(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.delay = 0.3
    client = await make_client()
    responses = await asyncio.gather(*(client.get("/simple/demo-pkg/") for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert fake_pypi.count("/simple/demo-pkg/") == 1


async def test_upstream_404_is_remembered(make_client: MakeClient, fake_pypi: FakePyPI) -> None:
    client = await make_client()
    for _ in range(3):
        assert (await client.get("/simple/nothing-here/")).status == 404
    assert fake_pypi.count("/simple/nothing-here/") == 1


async def test_html_only_upstream_without_etag_is_understood(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.html_only = True
    client = await make_client()
    doc = await page_json(client, "demo-pkg")
    assert doc["files"][0]["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    got = await client.get(f"/packages/demo-pkg/{wheel.name}")
    assert await got.read() == wheel.read_bytes()


# --- files through the cache -----------------------------------------------------------------


async def test_file_is_downloaded_once_then_served_from_the_cache(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client()
    await page_json(client, "demo-pkg")
    url = f"/packages/demo-pkg/{wheel.name}"
    first = await client.get(url)
    assert await first.read() == wheel.read_bytes()
    assert "Content-Encoding" not in first.headers  # F-02
    assert await becomes_cached(tmp_path, wheel.read_bytes())
    second = await client.get(url)
    assert await second.read() == wheel.read_bytes()
    assert second.headers["Accept-Ranges"] == "bytes"  # served from the cache by sendfile
    wheel_gets = [r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".whl")]
    assert len(wheel_gets) == 1


async def test_range_head_and_if_range_on_cached_files(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    data = wheel.read_bytes()
    client = await make_client()
    await page_json(client, "demo-pkg")
    url = f"/packages/demo-pkg/{wheel.name}"
    head = await client.head(url)  # F-03, even before the file is cached
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Accept-Ranges"] == "bytes"
    etag = head.headers["ETag"]
    part = await client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status == 206  # F-04
    assert await part.read() == data[:10]
    assert part.headers["Content-Range"] == f"bytes 0-9/{len(data)}"
    suffix = await client.get(url, headers={"Range": "bytes=-100"})
    assert await suffix.read() == data[-100:]
    resumed = await client.get(url, headers={"Range": "bytes=10-", "If-Range": etag})
    assert resumed.status == 206  # F-05
    assert await resumed.read() == data[10:]
    changed = await client.get(url, headers={"Range": "bytes=10-", "If-Range": '"other"'})
    assert changed.status == 200
    assert await changed.read() == data
    beyond = await client.get(url, headers={"Range": f"bytes={len(data) + 5}-"})
    assert beyond.status == 416
    not_modified = await client.get(url, headers={"If-None-Match": etag})
    assert not_modified.status == 304


@pytest.mark.parametrize("knob", ["wrong_hash", "truncate_files"])
@pytest.mark.parametrize("large", [False, True], ids=["in-memory", "from-temp-file"])
async def test_corrupt_or_short_upstream_file_is_never_cached_or_served(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path, knob: str, large: bool
) -> None:
    # Small downloads are followed from memory, large ones from their temp file.
    source = base64.b64encode(os.urandom(600_000)).decode() if large else "x = 1\n" * 5000
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", modules={"demo_pkg/data.py": source})
    assert (wheel.stat().st_size > 256 * 1024) is large
    client = await make_client(upstream={"prefetch": False})  # no good copy fetched ahead
    await page_json(client, "demo-pkg")
    url = f"/packages/demo-pkg/{wheel.name}"
    setattr(fake_pypi, knob, True)
    resp = await client.get(url)
    body = b""
    try:
        body = await resp.read()
    except Exception:  # the transfer must break off: any client error is right
        body = b"<failed>"
    assert body != wheel.read_bytes()
    assert not is_cached(tmp_path, wheel.read_bytes())
    assert not any(p.read_bytes()[:2] == b"PK" for p in blobs(tmp_path))  # no wheel at all
    setattr(fake_pypi, knob, False)
    again = await client.get(url)
    assert await again.read() == wheel.read_bytes()
    assert await becomes_cached(tmp_path, wheel.read_bytes())


async def test_a_file_the_upstream_refuses_is_a_502_and_leaves_no_temp_file(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client(upstream={"prefetch": False})
    await page_json(client, "demo-pkg")
    fake_pypi.status = {"/files/": 503}
    resp = await client.get(f"/packages/demo-pkg/{wheel.name}")
    assert resp.status == 502
    # The temp file, created while the upstream answered, is gone before the answer.
    assert list((tmp_path / "cache" / "files" / "tmp").iterdir()) == []
    fake_pypi.status = None
    again = await client.get(f"/packages/demo-pkg/{wheel.name}")
    assert await again.read() == wheel.read_bytes()


async def test_concurrent_first_requests_share_one_download(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", modules={"demo_pkg": "y = 2\n" * 20000})
    client = await make_client()
    await page_json(client, "demo-pkg")
    fake_pypi.delay = 0.2

    async def fetch() -> bytes:
        resp = await client.get(f"/packages/demo-pkg/{wheel.name}")
        return await resp.read()

    bodies = await asyncio.gather(*(fetch() for _ in range(30)))
    assert all(body == wheel.read_bytes() for body in bodies)
    assert len([r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".whl")]) == 1


async def test_a_client_that_goes_away_does_not_throw_the_download_away(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    """devpi #1119: uv disconnecting at 99% left the file uncached; here the download runs on."""
    noise = base64.b64encode(os.urandom(3_000_000)).decode()  # incompressible: a big wheel
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", modules={"demo_pkg/data.py": noise})
    client = await make_client(upstream={"prefetch": False})
    await page_json(client, "demo-pkg")
    url = f"/packages/demo-pkg/{wheel.name}"
    fake_pypi.delay = 0.3
    with pytest.raises(asyncio.TimeoutError):  # gone before the upstream even answers
        await client.get(url, timeout=aiohttp.ClientTimeout(total=0.1))
    resp = await client.get(url)  # gone after the first bytes
    assert resp.status == 200
    await resp.content.readexactly(65536)
    resp.close()
    assert await becomes_cached(tmp_path, wheel.read_bytes())
    fake_pypi.delay = 0
    again = await client.get(url)
    assert await again.read() == wheel.read_bytes()
    assert len([r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".whl")]) == 1


async def test_upstream_metadata_is_proxied_and_cached(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["dep-one"])
    client = await make_client()
    doc = await page_json(client, "demo-pkg")
    expected = wheel_metadata(wheel)
    assert doc["files"][0]["core-metadata"] == {"sha256": hashlib.sha256(expected).hexdigest()}
    for _ in range(2):
        meta = await client.get(f"/packages/demo-pkg/{wheel.name}.metadata")
        assert meta.status == 200
        assert await meta.read() == expected
    assert len([p for p in fake_pypi.paths() if p.endswith(".metadata")]) == 1


async def test_file_of_an_unknown_upstream_filename_is_a_404(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_client()
    resp = await client.get("/packages/demo-pkg/demo_pkg-7.0-py3-none-any.whl")
    assert resp.status == 404


# --- the root list ---------------------------------------------------------------------------


async def test_root_lists_private_and_upstream_names_once(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.add_wheel("Corp_Lib", "9.0")
    fake_pypi.root_names = 500
    make_wheel(packages(tmp_path), "corp-lib", "1.0")
    client = await make_client()
    # The very first request waits for the upstream list: never an empty-looking index.
    resp = await client.get("/simple/", headers={"Accept": JSON})
    names = [p["name"] for p in (await resp.json(content_type=None))["projects"]]
    assert resp.headers["Content-Type"] == JSON
    assert names.count("corp-lib") == 1
    assert "demo-pkg" in names
    assert "synthetic-000500" in names
    html = await client.get("/simple/", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert html.headers["Content-Encoding"] == "gzip"
    assert b'<a href="demo-pkg/">demo-pkg</a>' in gzip.decompress(await html.read())
    again = await client.get(
        "/simple/",
        headers={"Accept-Encoding": "gzip", "If-None-Match": html.headers["ETag"]},
    )
    assert again.status == 304
    assert fake_pypi.count("/simple/", method="GET") == 1  # fetched once, then served built


async def test_root_lists_private_names_when_the_upstream_list_is_unavailable(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    make_wheel(packages(tmp_path), "corp-lib", "1.0")
    fake_pypi.status = {"/simple/": 503}
    client = await make_client()
    resp = await client.get("/simple/", headers={"Accept": JSON})
    assert resp.status == 200
    projects = (await resp.json(content_type=None))["projects"]
    assert [p["name"] for p in projects] == ["corp-lib"]  # with its own serial (J-02)
    await client.get("/simple/")
    assert fake_pypi.count("/simple/", method="GET") == 1  # a failure is not retried at once


async def test_health(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/health")
    assert resp.status == 200
    assert json.loads(await resp.text()) == {"status": "ok"}


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    from proxyindex.fsutil import remove_stale_temp_files

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".tmp-crashed").write_bytes(b"partial")
    (tmp_path / "a" / "keep.whl").write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.whl"]
    shutil.rmtree(tmp_path / "a")


async def test_large_pages_are_rendered_and_parsed_off_the_event_loop_the_same_way(
    make_client: MakeClient, fake_pypi: FakePyPI
) -> None:
    for minor in range(200):  # over the inline limits for parsing (64 KiB) and rendering
        fake_pypi.add_wheel("big-pkg", f"1.{minor}", requires_python=">=3.8")
    client = await make_client()
    doc = await page_json(client, "big-pkg")
    assert len(doc["files"]) == 200
    assert doc["versions"][-1] == "1.199"
    html = await client.get("/simple/big-pkg/", headers={"Accept": "text/html"})
    assert (await html.text()).count('data-requires-python="&gt;=3.8"') == 200
    api = await (await client.get("/pypi/big-pkg/json")).json()  # also built in a thread
    assert (api["info"]["version"], len(api["releases"])) == ("1.199", 200)


async def test_cache_size_limit_evicts_the_least_recently_used_files(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    wheels = [
        fake_pypi.add_wheel(f"pkg-{i}", "1.0", modules={f"pkg_{i}": repr(os.urandom(3000))})
        for i in range(4)
    ]
    biggest = max(w.stat().st_size for w in wheels)
    client = await make_client(
        storage={"cache_max_size": biggest * 5 // 2}, upstream={"prefetch": False}
    )
    for index, wheel in enumerate(wheels):
        resp = await client.get(f"/packages/pkg-{index}/{wheel.name}")
        assert await resp.read() == wheel.read_bytes()
        assert await becomes_cached(tmp_path, wheel.read_bytes())
        await asyncio.sleep(0.05)  # distinct atimes
    deadline = time.monotonic() + 5
    while is_cached(tmp_path, wheels[0].read_bytes()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not is_cached(tmp_path, wheels[0].read_bytes())  # the oldest went first
    assert is_cached(tmp_path, wheels[-1].read_bytes())
    assert sum(p.stat().st_size for p in blobs(tmp_path)) <= biggest * 5 // 2
    again = await client.get(f"/packages/pkg-0/{wheels[0].name}")  # fetched again on demand
    assert await again.read() == wheels[0].read_bytes()


async def test_home_page_escapes_the_host_header(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/", headers={"Host": "x<script>alert(1)</script>"})
    assert resp.status == 200
    body = await resp.text()
    assert "<script>" not in body
    assert "x&lt;script&gt;" in body


@pytest.mark.parametrize(
    "value", ["bytes=abc", "pages=1-2", "bytes=5-2", "bytes=", "bytes=1-2-3", "items=0-"]
)
async def test_ranges_rfc9110_says_to_ignore_get_the_whole_file(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path, value: str
) -> None:
    """RFC 9110 §14.2: an invalid range or an unknown unit is ignored: 200, not 416."""
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    data = wheel.read_bytes()
    client = await make_client(upstream={"prefetch": False})
    await page_json(client, "demo-pkg")
    url = f"/packages/demo-pkg/{wheel.name}"
    assert await (await client.get(url)).read() == data
    assert await becomes_cached(tmp_path, data)
    resp = await client.get(url, headers={"Range": value})
    assert resp.status == 200
    assert await resp.read() == data
    head = await client.head(url, headers={"Range": "bytes=0-9"})  # Range applies to GET only
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(data)


async def test_a_burst_of_first_downloads_under_a_small_cache_limit_never_fails_and_settles(
    make_client: MakeClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    """Eviction runs during the burst: no request may 404 or break off because a blob it
    was about to send got evicted, and once the burst settles the cache is back under its
    limit (give or take one file), however many additions the shrinks raced with."""
    count = 63
    wheels = [
        fake_pypi.add_wheel(f"burst-{i}", "1.0", modules={f"burst_{i}": repr(os.urandom(40_000))})
        for i in range(count)
    ]
    biggest = max(w.stat().st_size for w in wheels)
    limit = biggest * 4
    client = await make_client(storage={"cache_max_size": limit})

    async def fetch(index: int, wheel: Path) -> tuple[int, bytes]:
        await page_json(client, f"burst-{index}")  # starts fetching ahead too
        url = f"/packages/burst-{index}/{wheel.name}"
        resp = await client.get(url)
        body = await resp.read()
        if resp.status == 200:  # and again, by then from the cache (if still there)
            again = await client.get(url)
            return again.status, await again.read()
        return resp.status, body

    results = await asyncio.gather(*(fetch(i, w) for i, w in enumerate(wheels)))
    statuses = [status for status, _body in results]
    assert statuses == [200] * count
    assert [body for _status, body in results] == [w.read_bytes() for w in wheels]
    deadline = time.monotonic() + 10
    while (size := cache_size(tmp_path)) > limit + biggest:
        assert time.monotonic() < deadline, f"the cache stayed at {size / limit:.1f}x its limit"
        await asyncio.sleep(0.1)
