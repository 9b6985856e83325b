"""What newer upstreams send is kept and served again (issue 8 §2): PEP 740 provenance,
PEP 792 project-status, gpg-sig, serials (``_last-serial``, ``X-PyPI-Last-Serial``,
``<!--SERIAL n-->``); private projects get serials of their own; pages declare the highest
api-version they satisfy; the root shows display names; ``?format=`` is honoured."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.simple import (
    SimpleFormat,
    page_api_version,
    parse_project_html,
    parse_project_json,
    render_project,
)
from tests.conftest import MakeAppClient
from tests.fakepypi import JSON_TYPE, FakePyPI
from tests.wheelmaker import make_wheel

DATA = Path(__file__).parent / "data"
NAME: Any = "demo-pkg"
PROVENANCE = "https://pypi.org/integrity/demo-pkg/1.0/demo_pkg-1.0-py3-none-any.whl/provenance"

PYPI_14 = {
    "meta": {"api-version": "1.4", "_last-serial": 777},
    "name": "demo-pkg",
    "project-status": {"status": "deprecated", "reason": "use other-pkg"},
    "versions": ["1.0"],
    "alternate-locations": [],
    "files": [
        {
            "filename": "demo_pkg-1.0-py3-none-any.whl",
            "url": "https://files.example/demo_pkg-1.0-py3-none-any.whl",
            "hashes": {"sha256": "ab" * 32},
            "size": 100,
            "upload-time": "2025-01-02T03:04:05.123456Z",
            "yanked": False,
            "provenance": PROVENANCE,
            "gpg-sig": False,
            "core-metadata": {"sha256": "cd" * 32},
        }
    ],
}


def test_json_upstream_fields_are_kept_and_rendered_again() -> None:
    page = parse_project_json(json.dumps(PYPI_14).encode(), "https://up/simple/demo-pkg/", NAME)
    assert (page.serial, page.status, page.status_reason) == (777, "deprecated", "use other-pkg")
    (dist,) = page.files
    assert (dist.provenance, dist.gpg_sig) == (PROVENANCE, False)
    doc = json.loads(render_project(page, SimpleFormat.JSON))
    assert doc["meta"] == {"api-version": "1.4", "_last-serial": 777}
    assert doc["project-status"] == {"status": "deprecated", "reason": "use other-pkg"}
    assert doc["files"][0]["provenance"] == PROVENANCE
    assert doc["files"][0]["gpg-sig"] is False
    body = render_project(page, SimpleFormat.HTML).decode()
    assert '<meta name="pypi:repository-version" content="1.4">' in body
    assert '<meta name="pypi:project-status" content="deprecated">' in body
    assert '<meta name="pypi:project-status-reason" content="use other-pkg">' in body
    assert f'data-provenance="{PROVENANCE}"' in body
    assert 'data-gpg-sig="false"' in body
    assert body.rstrip().endswith("<!--SERIAL 777-->")


def test_html_upstream_fields_are_kept() -> None:
    body = (
        "<!DOCTYPE html><html><head>"
        '<meta name="pypi:repository-version" content="1.4">'
        '<meta name="pypi:project-status" content="archived">'
        '<meta name="pypi:project-status-reason" content="no longer &lt;maintained&gt;">'
        "</head><body>"
        f'<a href="/f/demo_pkg-1.0.tar.gz#sha256={"ab" * 32}" data-provenance="{PROVENANCE}"'
        ' data-gpg-sig="true">demo_pkg-1.0.tar.gz</a>'
        "</body></html>\n<!--SERIAL 4242-->\n"
    ).encode()
    page = parse_project_html(body, "https://up/simple/demo-pkg/", NAME)
    assert (page.serial, page.status, page.status_reason) == (
        4242,
        "archived",
        "no longer <maintained>",
    )
    assert (page.files[0].provenance, page.files[0].gpg_sig) == (PROVENANCE, True)


def dist(size: int | None, provenance: str | None = None) -> DistFile:
    return DistFile(
        "demo_pkg-1.0.tar.gz", "https://x/f", Origin.UPSTREAM, size=size, provenance=provenance
    )


@pytest.mark.parametrize(
    ("files", "status", "json_version", "html_version"),
    [
        ((dist(1),), None, "1.1", "1.1"),
        ((dist(None),), None, "1.0", "1.1"),  # size is required in JSON from 1.1
        ((dist(1, PROVENANCE),), None, "1.3", "1.3"),
        ((dist(1, PROVENANCE),), "active", "1.4", "1.4"),
        ((dist(None, PROVENANCE),), "active", "1.0", "1.4"),
    ],
)
def test_pages_declare_the_highest_api_version_they_satisfy(
    files: tuple[DistFile, ...], status: str | None, json_version: str, html_version: str
) -> None:
    page = ProjectPage(name=NAME, files=files, status=status)
    assert page_api_version(page, True) == json_version
    assert page_api_version(page, False) == html_version
    assert json.loads(render_project(page, SimpleFormat.JSON))["meta"]["api-version"] == (
        json_version
    )


async def test_pypi_14_page_passes_through_with_its_serial_header(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.raw_pages = {"six": (JSON_TYPE, (DATA / "pypi-six.simple.json").read_bytes())}
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/simple/six/", headers={"Accept": JSON_TYPE})
    assert resp.headers["X-PyPI-Last-Serial"] == "26286754"
    doc = await resp.json(content_type=None)
    assert doc["meta"] == {"api-version": "1.4", "_last-serial": 26286754}
    assert doc["project-status"] == {"status": "active"}
    html = await client.get("/simple/six/?format=text/html", headers={"Accept": JSON_TYPE})
    assert html.headers["Content-Type"].startswith("text/html")  # PEP 691 ?format=
    assert html.headers["X-PyPI-Last-Serial"] == "26286754"
    assert (await html.text()).rstrip().endswith("<!--SERIAL 26286754-->")


async def test_html_only_upstream_serial_comes_from_the_serial_comment(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.html_only = True  # no X-PyPI-Last-Serial header, only <!--SERIAL n-->
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": JSON_TYPE})
    assert resp.headers["X-PyPI-Last-Serial"] == str(fake_pypi.project_serial("demo-pkg"))


async def wait_for_serial(client: Any, path: str, above: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        resp = await client.get(path, headers={"Accept": JSON_TYPE})
        serial = int(resp.headers.get("X-PyPI-Last-Serial", "0"))
        if serial > above or time.monotonic() > deadline:
            return serial
        await asyncio.sleep(0.2)


async def test_private_projects_get_serials_that_grow_and_persist(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("Public.Thing", "1.0")
    packages = tmp_path / "packages"
    make_wheel(packages, "corp-lib", "1.0")
    make_wheel(packages, "corp-other", "1.0")
    client = await make_app_client(upstream={"prefetch": False})
    root = await client.get("/simple/", headers={"Accept": JSON_TYPE})
    listed = {p["name"]: p.get("_last-serial") for p in (await root.json())["projects"]}
    upstream_serial = fake_pypi.project_serial("public-thing")
    assert listed["Public.Thing"] == upstream_serial  # display name and upstream serial
    assert int(root.headers["X-PyPI-Last-Serial"]) == max(v for v in listed.values() if v)
    html_root = await (await client.get("/simple/")).text()
    assert '<a href="public-thing/">Public.Thing</a>' in html_root  # PEP 503 display name
    first = await wait_for_serial(client, "/simple/corp-lib/", 0)
    assert first == listed["corp-lib"]
    again = await client.get("/simple/corp-lib/", headers={"Accept": JSON_TYPE})
    assert again.headers["X-PyPI-Last-Serial"] == str(first)  # unchanged files, same serial

    make_wheel(packages, "corp-lib", "2.0")
    second = await wait_for_serial(client, "/simple/corp-lib/", first)
    assert second > first
    # Above every upstream serial seen, so a mirror that remembers one last serial sees it.
    assert second > upstream_serial
    doc = await (await client.get("/pypi/corp-lib/json")).json()
    assert doc["last_serial"] == second
    await client.close()

    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/simple/corp-lib/", headers={"Accept": JSON_TYPE})
    assert resp.headers["X-PyPI-Last-Serial"] == str(second)  # kept across a restart
    root = await client.get("/simple/", headers={"Accept": JSON_TYPE})
    listed = {p["name"]: p.get("_last-serial") for p in (await root.json())["projects"]}
    assert listed["corp-lib"] == second


async def test_sizes_missing_upstream_are_filled_once_the_file_is_cached(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.html_only = True  # no sizes
    client = await make_app_client(upstream={"prefetch": False, "page_ttl": 1})
    page = await (await client.get("/simple/demo-pkg/", headers={"Accept": JSON_TYPE})).json()
    assert page["meta"]["api-version"] == "1.0"
    assert "size" not in page["files"][0]  # unknown: left out, never null
    download = await client.get(f"/packages/demo-pkg/{wheel.name}")
    assert await download.read() == wheel.read_bytes()
    await asyncio.sleep(1.2)  # the page is due again; the file is in the cache now
    page = await (await client.get("/simple/demo-pkg/", headers={"Accept": JSON_TYPE})).json()
    assert page["files"][0]["size"] == wheel.stat().st_size
    assert page["meta"]["api-version"] == "1.1"  # every file has its size again


def test_pages_cached_by_an_older_version_load_with_the_new_fields() -> None:
    """A pickled page from before provenance/gpg-sig/status_reason existed (its state has
    fewer values) loads with those fields at their defaults, not unset."""
    old = DistFile.__new__(DistFile)
    old.__setstate__(
        ["a-1.0.tar.gz", "https://x/a", Origin.UPSTREAM, {}, None, 5, None, False, False]
    )
    assert (old.size, old.provenance, old.gpg_sig) == (5, None, None)
    old_page = ProjectPage.__new__(ProjectPage)
    old_page.__setstate__([NAME, (old,), frozenset(), 3, None])
    assert (old_page.serial, old_page.status_reason) == (3, None)
