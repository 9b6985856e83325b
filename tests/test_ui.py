"""The web UI over HTTP (aiohttp's client, the app on a real socket): what the pages say,
that whatever a client or a package controls is escaped, and who may see what."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from pathlib import Path

from proxyindex.auth.authenticator import add_user
from proxyindex.ui.data import client_snippets, describe, releases
from proxyindex.ui.stats import Stats
from tests.conftest import AppClient, MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel, sha256_file, wheel_metadata

README = """# Corp tools

Helpers for **internal** use.

<script>document.title = "pwned"</script>

<img src="x" onerror="document.title = 'pwned'">

[click](javascript:alert(1))
"""


async def text_of(client: AppClient, path: str, **headers: str) -> str:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, path
    assert resp.content_type == "text/html"
    return await resp.text()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_home_gives_every_client_snippet_with_the_servers_own_url(
    make_app_client: MakeAppClient,
) -> None:
    client = await make_app_client()
    base = str(client.make_url("")).rstrip("/")
    body = await text_of(client, "/")
    for snippet in client_snippets(base):
        assert snippet.text.split("\n")[0].replace('"', "&#34;") in body
    for needle in (
        f"pip config set global.index-url {base}/simple/",
        "[[source]]",
        "[[tool.uv.index]]",
        f"poetry source add --priority=primary proxyindex {base}/simple/",
        "[[tool.pdm.source]]",
        f"repository = {base}/",
        "trusted-host = 127.0.0.1",
    ):
        assert needle in body, needle
    assert "127.0.0.1:8080" not in body


async def test_home_uses_the_configured_base_url(make_app_client: MakeAppClient) -> None:
    client = await make_app_client(server={"base_url": "https://pypi.corp.example/"})
    body = await text_of(client, "/")
    assert "https://pypi.corp.example/simple/" in body
    assert "trusted-host" not in body  # only plain http needs it
    assert "verify_ssl = true" in body


async def test_home_escapes_a_script_in_the_host_header(make_app_client: MakeAppClient) -> None:
    client = await make_app_client()
    body = await text_of(client, "/", Host="x<script>alert(1)</script>")
    assert "<script>" not in body
    assert "x&lt;script&gt;alert(1)&lt;/script&gt;/simple/" in body


async def test_uploads_still_go_to_post_root(make_app_client: MakeAppClient) -> None:
    """The UI took ``GET /``; ``POST /`` stays the upload URL (a GET form is not an upload)."""
    client = await make_app_client()
    resp = await client.post("/", data={":action": "file_upload"})
    assert resp.status in (400, 403)  # refused as an upload (no users), never a 405


async def test_project_list_searches_with_a_plain_get_form(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "packages", "corp-tools", "1.0")
    make_wheel(tmp_path / "packages", "Corp_Utils", "2.0")
    make_wheel(tmp_path / "packages", "other-thing", "0.1")
    client = await make_app_client()
    body = await text_of(client, "/ui/projects/")
    assert '<form class="search" method="get" action="/ui/projects/"' in body
    for name in ("corp-tools", "corp-utils", "other-thing"):
        assert f'href="/ui/projects/{name}/"' in body
    found = await text_of(client, "/ui/projects/?q=Corp_")
    assert 'href="/ui/projects/corp-tools/"' in found
    assert 'href="/ui/projects/corp-utils/"' in found
    assert "other-thing" not in found
    assert "2 projects matching" in found


async def test_a_search_term_with_markup_is_escaped(make_app_client: MakeAppClient) -> None:
    client = await make_app_client()
    body = await text_of(client, "/ui/projects/?q=%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


async def test_project_page_lists_versions_newest_first_with_hashes_and_readme(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    wheels = [
        make_wheel(packages, "corp-tools", v, description=README) for v in ("1.0", "1.10", "1.9")
    ]
    client = await make_app_client()
    body = await text_of(client, "/ui/projects/corp-tools/")
    versions = re.findall(r'<tbody class="release" id="v([^"]+)"', body)
    assert versions == ["1.10", "1.9", "1.0"]
    for wheel in wheels:
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in body
        assert f'href="/packages/corp-tools/{wheel.name}"' in body
    assert "corp-tools built by tests/wheelmaker.py" in body  # the summary
    assert '<h1 id="user-content-corp-tools">' in body  # the README, rendered
    assert "<strong>internal</strong>" in body
    assert "<script>" not in body and "onerror" not in body and 'href="javascript:' not in body
    assert "&lt;script&gt;document.title" in body  # the script is text, not code
    assert "pip install --index-url" in body and "corp-tools==1.10" in body
    resp = await client.get("/ui/projects/corp-tools/")
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none'


async def test_project_urls_are_canonical_and_unknown_ones_404(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "packages", "corp-tools", "1.0")
    client = await make_app_client()
    resp = await client.get("/ui/projects/Corp_Tools/", allow_redirects=False)
    assert resp.status == 301
    assert resp.headers["Location"] == "/ui/projects/corp-tools/"
    assert (await client.get("/ui/projects/nope/")).status == 404
    bad = await client.get("/ui/projects/%3Cscript%3E/")
    assert bad.status == 404
    assert "<script>" not in await bad.text()


async def test_cache_page_shows_size_against_the_cap_hits_and_a_chart(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_app_client(
        storage={"cache_max_size": 10 << 20}, upstream={"prefetch": False}
    )
    url = f"/packages/demo-pkg/{wheel.name}"
    blob = tmp_path / "cache" / "files" / sha256_file(wheel)[:2] / sha256_file(wheel)
    for path in ("/simple/demo-pkg/", "/simple/demo-pkg/", url):  # miss, hit, miss
        resp = await client.get(path)
        assert resp.status == 200
        await resp.read()
    for _ in range(100):  # the download is committed just after its last byte is sent
        if blob.exists():
            break
        await asyncio.sleep(0.05)
    resp = await client.get(url)  # a hit
    assert resp.status == 200
    await resp.read()
    page = await client.get("/simple/demo-pkg/")
    again = await client.get("/simple/demo-pkg/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status == 304  # a revalidation answered from the cache: a hit too
    body = await text_of(client, "/ui/cache/")
    assert "of 10.0 MiB" in body
    assert re.search(r'id="hit-rate">67 %<', body), body
    assert "<svg" in body and "<polyline" in body
    assert re.search(r"<td>demo-pkg</td><td class=\"num\">6</td>", body)  # most requested
    assert re.search(r"<td>demo-pkg</td><td class=\"num\">1</td>", body)  # largest cached
    assert re.search(r'<div class="big">1</div><div>cached files</div>', body)
    assert re.search(r'<div class="big">1</div><div>cached pages</div>', body)


async def test_the_stylesheet_is_served(make_app_client: MakeAppClient) -> None:
    client = await make_app_client()
    resp = await client.get("/ui/static/style.css")
    assert resp.status == 200
    assert resp.content_type == "text/css"


async def test_with_list_protected_the_ui_needs_a_login_but_home_does_not(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "s3cret")
    make_wheel(tmp_path / "packages", "corp-tools", "1.0")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    for path in ("/ui/projects/", "/ui/projects/corp-tools/", "/ui/cache/"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert "WWW-Authenticate" in resp.headers
        ok = await client.get(path, headers={"Authorization": basic("alice", "s3cret")})
        assert ok.status == 200, path
        assert ok.headers["Cache-Control"].startswith("private")
    home = await text_of(client, "/")
    assert "corp-tools" not in home and "log in to see them" in home
    assert (await client.get("/ui/static/style.css")).status == 200


def test_releases_sort_by_pep440_and_describe_sanitises(tmp_path: Path) -> None:
    from proxyindex.private.storage import PrivateStorage

    for version in ("2.0", "10.0", "2.0rc1"):
        make_wheel(tmp_path / "p", "demo", version)
    storage = PrivateStorage(tmp_path / "p", tmp_path / "meta")
    try:
        storage.rescan()
        page = storage.page(storage.names().__iter__().__next__())
        assert page is not None
        assert [r.version for r in releases(page)] == ["10.0", "2.0", "2.0rc1"]
    finally:
        storage.close()
    wheel = make_wheel(tmp_path / "w", "demo", "1.0", description=README)
    described = describe(wheel_metadata(wheel))
    assert described.html is not None
    assert "<script" not in described.html and "onerror" not in described.html


def test_stats_keep_one_hour_per_minute() -> None:
    now = [3600.0 * 10]
    stats = Stats(clock=lambda: now[0])
    stats.request()
    stats.file(hit=True)
    now[0] += 120
    stats.request()
    stats.file(hit=False)
    minutes = stats.last_hour()
    assert len(minutes) == 60
    assert [m.requests for m in minutes[-3:]] == [1, 0, 1]
    assert (minutes[-3].file_hits, minutes[-1].file_misses) == (1, 1)
    now[0] += 3600
    assert sum(m.requests for m in stats.last_hour()) == 0
