"""Cache-Control never lets a shared cache hand out what needs a login.

A CDN or a corporate proxy in front of the index stores ``public`` responses and serves them
to anyone. So everything behind auth is ``private`` (files, ``.metadata``, pages, the root,
the JSON API, and their 304s), and no page is ever ``public``.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from proxyindex.auth.authenticator import add_user
from tests.conftest import AppClient, MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

LOGIN = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json"


async def fetch(client: AppClient, path: str) -> list[str]:
    """The Cache-Control of each 200 until one has an ETag (an upstream file follows its
    download, without one, until the file is in the cache), then of the 304."""
    values = []
    for _ in range(50):
        resp = await client.get(path, headers={**LOGIN, "Accept": PIP_ACCEPT})
        assert resp.status == 200, (path, await resp.text())
        await resp.read()
        values.append(resp.headers["Cache-Control"])
        if "ETag" in resp.headers:
            break
        await asyncio.sleep(0.1)
    again = await client.get(
        path, headers={**LOGIN, "Accept": PIP_ACCEPT, "If-None-Match": resp.headers["ETag"]}
    )
    assert again.status == 304, path
    return [*values, again.headers["Cache-Control"]]


@pytest.fixture
async def paths(fake_pypi: FakePyPI, tmp_path: Path) -> list[str]:
    """One of every kind of response: root, private and upstream pages, files, metadata, JSON."""
    public = fake_pypi.add_wheel("demo-pkg", "1.0")
    private = make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    return [
        "/simple/",
        "/simple/corp-lib/",
        "/simple/demo-pkg/",
        f"/packages/corp-lib/{private.name}",
        f"/packages/corp-lib/{private.name}.metadata",
        f"/packages/demo-pkg/{public.name}",
        f"/packages/demo-pkg/{public.name}.metadata",
        "/pypi/corp-lib/json",
        "/pypi/demo-pkg/json",
    ]


@pytest.mark.parametrize(
    ("protect", "page_private", "file_private"),
    [
        (["upload", "list", "download"], True, True),
        (["upload", "download"], False, True),
        (["upload", "list"], True, False),
        (["upload"], False, False),
    ],
)
async def test_responses_behind_a_login_are_private_and_pages_never_public(
    make_app_client: MakeAppClient,
    tmp_path: Path,
    paths: list[str],
    protect: list[str],
    page_private: bool,
    file_private: bool,
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "s3cret")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": protect})
    for path in paths:
        is_file = path.startswith("/packages/")
        wanted_private = file_private if is_file else page_private
        for value in await fetch(client, path):
            directives = {d.strip().split("=")[0] for d in value.split(",")}
            assert ("private" in directives) == wanted_private, (path, value)
            if wanted_private or not is_file:
                assert "public" not in directives, (path, value)
            else:
                assert value == "public, max-age=31536000, immutable", path
            if is_file:
                assert {"max-age", "immutable"} <= directives, (path, value)
