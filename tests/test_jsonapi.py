"""PyPI's JSON API (PJ-01, PJ-02): built from the merged page and the release's METADATA."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxyindex import jsonapi
from proxyindex.auth.authenticator import add_user
from proxyindex.models import DistFile, Origin, ProjectPage
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_sdist, make_wheel, wheel_metadata

# --- pure functions --------------------------------------------------------------------------


def dist(filename: str, yanked: bool | str = False, metadata: bool = True) -> DistFile:
    return DistFile(
        filename=filename,
        location=f"https://files.example/{filename}",
        origin=Origin.UPSTREAM,
        hashes={"sha256": "ab" * 32, "md5": "cd" * 16},
        requires_python=">=3.9",
        size=123,
        upload_time="2024-05-06T07:08:09.123456Z",
        yanked=yanked,
        core_metadata={"sha256": "ef" * 32} if metadata else False,
    )


def page(*files: DistFile, versions: tuple[str, ...] = ()) -> ProjectPage:
    return ProjectPage(
        name="demo-pkg",  # type: ignore[arg-type]
        files=files,
        versions=frozenset(versions),
        serial=42,
    )


def latest(p: ProjectPage) -> str | None:
    found = jsonapi.find_release(p, None)
    return found[0].version if found else None


def test_latest_is_the_newest_final_release_not_yanked() -> None:
    p = page(
        dist("demo_pkg-1.0-py3-none-any.whl"),
        dist("demo_pkg-1.1-py3-none-any.whl", yanked="broken"),
        dist("demo_pkg-2.0rc1-py3-none-any.whl"),
        dist("demo_pkg-1.0.tar.gz"),
    )
    assert latest(p) == "1.0"


def test_latest_falls_back_to_prereleases_then_to_yanked_releases() -> None:
    assert latest(page(dist("demo_pkg-2.0b1-py3-none-any.whl"))) == "2.0b1"
    assert latest(page(dist("demo_pkg-3.0-py3-none-any.whl", yanked=True))) == "3.0"
    assert latest(page(versions=("1.0",))) is None  # no files at all


def test_a_release_is_found_by_any_equivalent_version_string() -> None:
    p = page(dist("demo_pkg-1.0-py3-none-any.whl"))
    found = jsonapi.find_release(p, "1.0.0")
    assert found is not None and found[0].version == "1.0"
    assert jsonapi.find_release(p, "9.9") is None
    assert jsonapi.find_release(p, "not a version") is None


def test_metadata_comes_from_a_wheel_not_yanked_and_never_from_an_sdist() -> None:
    yanked = dist("demo_pkg-1.0-cp311-cp311-linux_x86_64.whl", yanked=True)
    good = dist("demo_pkg-1.0-py3-none-any.whl")
    found = jsonapi.find_release(page(yanked, good, dist("demo_pkg-1.0.tar.gz")), "1.0")
    assert found is not None
    assert jsonapi.metadata_source(found[0]) == good
    sdist_only = jsonapi.find_release(page(dist("demo_pkg-1.0.tar.gz")), "1.0")
    assert sdist_only is not None
    assert jsonapi.metadata_source(sdist_only[0]) is None
    # An upstream wheel without a .metadata file still has one here (read out of the wheel).
    upstream = dist("demo_pkg-1.0-py3-none-any.whl", metadata=False)
    no_metadata = jsonapi.find_release(page(upstream), "1.0")
    assert no_metadata is not None
    assert jsonapi.metadata_source(no_metadata[0]) == upstream


def test_document_has_pypis_shape() -> None:
    p = page(
        dist("demo_pkg-1.0-py3-none-any.whl"),
        dist("demo_pkg-1.0.tar.gz", yanked="bad build"),
        dist("demo_pkg-0.9-py2.py3-none-any.whl"),
        versions=("0.1",),
    )
    found = jsonapi.find_release(p, None)
    assert found is not None
    metadata = (
        b"Metadata-Version: 2.1\nName: Demo.Pkg\nVersion: 1.0\nSummary: A demo\n"
        b"Keywords: a,b\nRequires-Dist: idna>=3\nRequires-Dist: rich; extra == 'fancy'\n"
        b"Provides-Extra: fancy\nProject-URL: Source, https://example.org/src\n\nLong text\n"
    )
    body = jsonapi.render(p, *found, metadata, "http://idx:8080", with_releases=True)
    doc: dict[str, Any] = json.loads(body)
    info = doc["info"]
    assert info["name"] == "Demo.Pkg"  # display name, from METADATA
    assert info["version"] == "1.0"
    assert info["summary"] == "A demo"
    assert info["description"] == "Long text\n"
    assert info["keywords"] == "a,b"
    assert info["requires_dist"] == ["idna>=3", "rich; extra == 'fancy'"]
    assert info["provides_extra"] == ["fancy"]
    assert info["project_urls"] == {"Source": "https://example.org/src"}
    assert info["requires_python"] == ">=3.9"  # from the files when METADATA has none
    assert info["yanked"] is False  # one of the release's files is not yanked
    assert info["release_url"] == "http://idx:8080/pypi/demo-pkg/1.0/json"
    assert doc["last_serial"] == 42
    assert doc["vulnerabilities"] == []
    assert list(doc["releases"]) == ["0.1", "0.9", "1.0"]  # oldest first; 0.1 has no files
    assert doc["releases"]["0.1"] == []
    wheel, sdist = doc["urls"]
    assert wheel["url"] == "http://idx:8080/packages/demo-pkg/demo_pkg-1.0-py3-none-any.whl"
    assert wheel["packagetype"] == "bdist_wheel"
    assert wheel["python_version"] == "py3"
    assert wheel["digests"] == {"sha256": "ab" * 32, "md5": "cd" * 16}
    assert wheel["md5_digest"] == "cd" * 16
    assert wheel["upload_time"] == "2024-05-06T07:08:09"
    assert wheel["upload_time_iso_8601"] == "2024-05-06T07:08:09.123456Z"
    assert wheel["core-metadata"] == {"sha256": "ef" * 32}
    assert wheel["size"] == 123
    assert sdist["packagetype"] == "sdist"
    assert sdist["python_version"] == "source"
    assert (sdist["yanked"], sdist["yanked_reason"]) == (True, "bad build")
    assert doc["releases"]["0.9"][0]["python_version"] == "py2.py3"
    release_only = json.loads(jsonapi.render(p, *found, None, "http://idx", with_releases=False))
    assert "releases" not in release_only
    assert release_only["info"]["summary"] is None  # no METADATA: nothing made up


# --- over HTTP -------------------------------------------------------------------------------


async def test_private_project_json_describes_the_stored_files(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0")  # the public namesake must never leak in (DC-01)
    wheel = make_wheel(
        tmp_path / "packages", "Corp.Lib", "1.0", requires_dist=["idna>=3"], requires_python=">=3.9"
    )
    sdist = make_sdist(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client()
    resp = await client.get("/pypi/corp-lib/json")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "max-age=0, must-revalidate"  # CC-01
    doc = await resp.json()
    assert doc["info"]["name"] == "Corp.Lib"
    assert doc["info"]["summary"] == "Corp.Lib built by tests/wheelmaker.py"
    assert doc["info"]["requires_dist"] == ["idna>=3"]
    assert doc["info"]["requires_python"] == ">=3.9"
    assert list(doc["releases"]) == ["1.0"]
    files = {f["filename"]: f for f in doc["urls"]}
    assert set(files) == {wheel.name, sdist.name}
    entry = files[wheel.name]
    assert entry["digests"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert entry["core-metadata"] == {"sha256": hashlib.sha256(wheel_metadata(wheel)).hexdigest()}
    assert entry["url"] == f"http://127.0.0.1:{client.port}/packages/corp-lib/{wheel.name}"
    async with aiohttp.ClientSession() as session, session.get(entry["url"]) as got:
        assert await got.read() == wheel.read_bytes()  # the absolute URL works as given
    assert fake_pypi.count("/simple/corp-lib") == 0
    assert fake_pypi.count("/files/") == 0

    etag = resp.headers["ETag"]
    again = await client.get("/pypi/corp-lib/json", headers={"If-None-Match": etag})
    assert again.status == 304
    moved = await client.get("/pypi/Corp.Lib/json", allow_redirects=False)
    assert (moved.status, moved.headers["Location"]) == (301, "/pypi/corp-lib/json")
    release = await client.get("/pypi/corp-lib/1.0.0/json/")
    assert release.status == 200
    release_doc = await release.json()
    assert "releases" not in release_doc
    assert release_doc["info"]["version"] == "1.0"
    assert (await client.head("/pypi/corp-lib/json")).status == 200  # N-07


async def test_upstream_project_json_reads_the_upstream_metadata_once(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["idna"])
    fake_pypi.add_wheel("demo-pkg", "1.1")
    fake_pypi.set_yanked("demo_pkg-1.1-py3-none-any.whl", "broken")
    fake_pypi.add_wheel("demo-pkg", "2.0rc1")
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/pypi/demo-pkg/json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["info"]["version"] == "1.0"  # 1.1 is yanked, 2.0rc1 a pre-release
    assert doc["info"]["requires_dist"] == ["idna"]
    assert doc["info"]["summary"] == "demo-pkg built by tests/wheelmaker.py"
    assert list(doc["releases"]) == ["1.0", "1.1", "2.0rc1"]
    assert doc["releases"]["1.1"][0]["yanked_reason"] == "broken"
    assert resp.headers["X-PyPI-Last-Serial"] == str(doc["last_serial"])
    assert 0 < int(resp.headers["Cache-Control"].removeprefix("max-age=")) <= 600
    (wheel,) = doc["urls"]
    assert wheel["url"].startswith(f"http://127.0.0.1:{client.port}/packages/demo-pkg/")
    assert (await client.get("/pypi/demo-pkg/json")).status == 200
    metadata_gets = [r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".metadata")]
    assert len(metadata_gets) == 1  # cached like any .metadata file
    assert not [r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".whl")]
    yanked = await (await client.get("/pypi/demo-pkg/1.1/json")).json()
    assert yanked["info"]["yanked"] is True
    assert yanked["info"]["yanked_reason"] == "broken"


@pytest.mark.parametrize(
    "path",
    [
        "/pypi/no-such-project/json",
        "/pypi/demo-pkg/9.9/json",
        "/pypi/demo-pkg/" + "1" * 500 + "/json",
        "/pypi/demo-pkg/1.0/json/extra",
        "/pypi/..%2fetc/json",
    ],
)
async def test_unknown_projects_and_versions_are_404s_nobody_caches(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, path: str
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_app_client()
    resp = await client.get(path)
    assert resp.status == 404
    assert resp.headers["Cache-Control"] == "no-store"
    assert (await client.get("/pypi/demo-pkg/json")).status == 200  # still serving


async def test_json_api_is_protected_like_the_simple_pages(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "s3cret")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    assert (await client.get("/pypi/corp-lib/json")).status == 401
    assert (await client.get("/pypi/corp-lib/1.0/json")).status == 401
    login = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
    assert (await client.get("/pypi/corp-lib/json", headers=login)).status == 200
