"""The PyPI JSON API served with fidelity: the upstream's own document when it has one
(rewritten, cached, revalidated, under the dependency-confusion rules), otherwise made from
the merged page with everything that is known (issue 8 §2, PJ-02)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from proxyindex import jsonapi
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.upstream.pypijson import json_api_url
from tests.conftest import MakeAppClient
from tests.fakepypi import JSON_TYPE, FakePyPI
from tests.wheelmaker import make_wheel

DATA = Path(__file__).parent / "data"
PYPI_FILES = "https://files.pythonhosted.org"


def recorded(fake: FakePyPI, name: str) -> bytes:
    """A document shaped exactly like PyPI's (tests/data), its file URLs on the fake upstream
    so that nothing could ever reach the internet."""
    return (DATA / name).read_bytes().replace(PYPI_FILES.encode(), fake.url.encode())


def serve_six(fake: FakePyPI) -> dict[str, Any]:
    fake.raw_pages = {"six": (JSON_TYPE, recorded(fake, "pypi-six.simple.json"))}
    body = recorded(fake, "pypi-six.json")
    doc: dict[str, Any] = json.loads(body)
    release = dict(doc, urls=doc["releases"]["1.16.0"])
    del release["releases"]
    release["info"] = dict(doc["info"], version="1.16.0")
    fake.json_api = {"six": body, "six/1.16.0": json.dumps(release).encode()}
    return doc


def ours(port: int | None, filename: str) -> str:
    return f"http://127.0.0.1:{port}/packages/six/{filename}"


def test_json_api_url_follows_pypis_layout() -> None:
    name: Any = "six"
    assert json_api_url("https://pypi.org/simple/", name, None) == "https://pypi.org/pypi/six/json"
    assert json_api_url("https://m.example/x/simple", name, "1.0") == (
        "https://m.example/x/pypi/six/1.0/json"
    )
    assert json_api_url("https://download.pytorch.org/whl/cu121/", name, None) is None


async def test_upstream_document_is_served_field_by_field(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    want = serve_six(fake_pypi)
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/pypi/six/json")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-PyPI-Last-Serial"] == "26286754"
    got = await resp.json()
    assert set(got) == set(want)
    for key in ("info", "last_serial", "vulnerabilities"):
        assert got[key] == want[key], key  # info: summary, home_page, project_urls... as PyPI
    # Releases keyed as PyPI keys them, a release without files kept, and the .egg and .exe
    # files (no version packaging can parse from their names) in their release.
    assert list(got["releases"]) == list(want["releases"])
    assert [f["filename"] for f in got["releases"]["1.2.0"]] == [
        "six-1.2.0.tar.gz",
        "six-1.2.0-py2.7.egg",
        "six-1.2.0.win32.exe",
    ]
    assert got["releases"]["1.3.0"] == []
    for version, files in want["releases"].items():
        for mine, theirs in zip(got["releases"][version], files, strict=True):
            assert mine["url"] == ours(client.port, theirs["filename"])
            # Every other field as recorded: md5, sha256 and blake2b_256, sizes, times...
            assert {**mine, "url": None} == {**theirs, "url": None}
    assert got["urls"] == got["releases"]["1.17.0"]

    release = await (await client.get("/pypi/six/1.16.0/json")).json()
    assert release["info"]["version"] == "1.16.0"
    assert "releases" not in release
    assert [f["url"] for f in release["urls"]] == [
        ours(client.port, "six-1.16.0-py2.py3-none-any.whl"),
        ours(client.port, "six-1.16.0.tar.gz"),
    ]


async def test_upstream_document_is_cached_revalidated_and_served_stale(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    serve_six(fake_pypi)
    client = await make_app_client(upstream={"prefetch": False, "page_ttl": 1})
    first = await client.get("/pypi/six/json")
    etag = first.headers["ETag"]
    assert (await client.get("/pypi/six/json", headers={"If-None-Match": etag})).status == 304
    assert fake_pypi.count("/pypi/six/json") == 1  # fresh: from memory
    await asyncio.sleep(1.2)
    again = await client.get("/pypi/six/json")
    assert again.headers["ETag"] == etag  # the same document, rendered once
    revalidations = fake_pypi.requests_for("/pypi/six/json")
    assert len(revalidations) == 2
    assert revalidations[1].headers.get("If-None-Match")  # a conditional GET, answered 304
    await asyncio.sleep(1.2)
    fake_pypi.status = {"/pypi/": 503}
    stale = await client.get("/pypi/six/json")
    assert stale.status == 200
    assert (await stale.json())["info"]["summary"] == "Python 2 and 3 compatibility utilities"


async def test_upstream_document_survives_a_restart_on_disk(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    serve_six(fake_pypi)
    client = await make_app_client(upstream={"prefetch": False})
    assert (await client.get("/pypi/six/json")).status == 200
    await client.close()
    fake_pypi.status = {"/pypi/": 503, "/simple/": 503}
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/pypi/six/json")
    assert resp.status == 200
    assert (await resp.json())["info"]["home_page"] == "https://github.com/benjaminp/six"


async def test_private_name_never_shows_the_upstream_document(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    serve_six(fake_pypi)
    make_wheel(tmp_path / "packages", "six", "0.1")
    client = await make_app_client(upstream={"prefetch": False})
    doc = await (await client.get("/pypi/six/json")).json()
    assert list(doc["releases"]) == ["0.1"]
    assert doc["info"]["summary"] != "Python 2 and 3 compatibility utilities"
    assert fake_pypi.count("/pypi/") == 0
    assert fake_pypi.count("/simple/six") == 0


async def test_merged_name_gets_its_private_files_added_to_the_upstream_document(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    serve_six(fake_pypi)
    # An upstream whose serials are lower than the private ones (another index's numbering).
    fake_pypi.json_api = {k: v.replace(b"26286754", b"1") for k, v in fake_pypi.json_api.items()}
    fake_pypi.raw_pages = {
        k: (t, v.replace(b"26286754", b"1")) for k, (t, v) in fake_pypi.raw_pages.items()
    }
    fake_pypi.add_wheel("bump-the-serials", "1.0")  # the root lists it: serials above 1
    wheel = make_wheel(tmp_path / "packages", "six", "1.17.0", tag="py3-none-any")
    later = make_wheel(tmp_path / "packages", "six", "99.0")
    client = await make_app_client(
        upstream={"prefetch": False}, private={"merge_with_upstream": ["six"]}
    )
    root = await client.get("/simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    listed = {p["name"]: p.get("_last-serial") for p in (await root.json())["projects"]}
    resp = await client.get("/pypi/six/json")
    doc = await resp.json()
    assert resp.headers["Cache-Control"] == "max-age=0, must-revalidate"  # private files
    assert doc["info"]["summary"] == "Python 2 and 3 compatibility utilities"
    assert "99.0" in doc["releases"]
    (mine,) = doc["releases"]["99.0"]
    data = later.read_bytes()
    assert mine["url"] == ours(client.port, later.name)
    assert mine["digests"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "blake2b_256": hashlib.blake2b(data, digest_size=32).hexdigest(),
    }
    # Never older than the serial the root lists for it (a mirror's StalePage check).
    assert doc["last_serial"] >= listed["six"] > 1
    assert resp.headers["X-PyPI-Last-Serial"] == str(doc["last_serial"])
    page = await client.get("/simple/six/", headers={"Accept": "text/html"})
    assert int(page.headers["X-PyPI-Last-Serial"]) >= listed["six"]
    names = [f["filename"] for f in doc["urls"]]
    assert wheel.name in names and "six-1.17.0.tar.gz" in names  # the release's files
    assert len(doc["releases"]["1.17.0"]) == 3


async def test_synthesised_document_reads_upstream_wheels_without_metadata_files(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["idna>=3"], requires_python=">=3.8")
    fake_pypi.no_core_metadata = True
    fake_pypi.html_only = True  # no sizes, and no JSON API either
    client = await make_app_client(upstream={"prefetch": False})
    doc = await (await client.get("/pypi/demo-pkg/json")).json()
    assert doc["info"]["summary"] == "demo-pkg built by tests/wheelmaker.py"
    assert doc["info"]["requires_dist"] == ["idna>=3"]
    assert doc["info"]["requires_python"] == ">=3.8"


async def test_synthesised_private_document_follows_changes(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client()
    first = await client.get("/pypi/corp-lib/json")
    etag = first.headers["ETag"]
    assert (await client.get("/pypi/corp-lib/json", headers={"If-None-Match": etag})).status == 304
    make_wheel(tmp_path / "packages", "corp-lib", "2.0")
    deadline = time.monotonic() + 10
    while True:
        resp = await client.get("/pypi/corp-lib/json", headers={"If-None-Match": etag})
        if resp.status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert resp.status == 200
    assert list((await resp.json())["releases"]) == ["1.0", "2.0"]


def legacy(filename: str) -> DistFile:
    return DistFile(filename, f"https://files.example/{filename}", Origin.UPSTREAM)


def test_synthesis_keeps_old_binary_formats_and_keys_releases_as_the_index_does() -> None:
    page = ProjectPage(
        name="demo-pkg",  # type: ignore[arg-type]
        files=(
            legacy("demo.pkg-0.9.win32-py2.7.exe"),
            legacy("demo_pkg-0.9-py2.7.egg"),
            legacy("demo-pkg-0.9.linux-x86_64.exe"),
            legacy("demo_pkg-1.0-py3-none-any.whl"),
        ),
        versions=frozenset({"0.9", "1.0.0"}),
    )
    found = jsonapi.find_release(page, None)
    assert found is not None
    doc = json.loads(jsonapi.render(page, *found, None, "http://idx", with_releases=True))
    assert list(doc["releases"]) == ["0.9", "1.0.0"]  # 1.0.0 as the index spells it
    egg_and_exes = {f["filename"]: f for f in doc["releases"]["0.9"]}
    assert len(egg_and_exes) == 3
    assert egg_and_exes["demo_pkg-0.9-py2.7.egg"]["packagetype"] == "bdist_egg"
    assert egg_and_exes["demo_pkg-0.9-py2.7.egg"]["python_version"] == "2.7"
    assert egg_and_exes["demo.pkg-0.9.win32-py2.7.exe"]["packagetype"] == "bdist_wininst"
    assert doc["info"]["version"] == "1.0.0"


def test_documents_held_in_memory_are_bounded_by_their_bytes() -> None:
    from proxyindex.upstream import pypijson

    memory = pypijson._Memory()
    big = 8 << 20
    for i in range(10):
        memory.put(("p", str(i)), (pypijson.JsonDoc({}, 0.0, None, big), 0.0))  # type: ignore[arg-type]
    held = [i for i in range(10) if memory.get(("p", str(i))) is not None]  # type: ignore[arg-type]
    assert held == [6, 7, 8, 9]  # 32 MiB of bodies: the four most recent
