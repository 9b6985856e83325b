"""The admin API (issue 11 §3): ``/-/admin/...`` for admins only (``auth.admins``; without an
htpasswd file, callers on this host only); yank, unyank, remove, cache stats/purge/verify;
every change audited; bad input a clear 4xx."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from proxyindex.auth.authenticator import Authenticator, add_user
from proxyindex.config import AuthConfig
from proxyindex.errors import Forbidden
from tests.conftest import AppClient, MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel, sha256_file


def _login(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _client(make_app_client: MakeAppClient, tmp_path: Path, **auth: Any) -> AppClient:
    return await make_app_client(server={"audit_log": str(tmp_path / "audit.jsonl")}, auth=auth)


async def test_admin_calls_without_users_are_refused_from_another_host() -> None:
    authenticator = Authenticator(AuthConfig())
    try:
        with pytest.raises(Forbidden, match="this host only"):
            await authenticator.authorize("admin", None, "10.1.2.3")
        assert await authenticator.authorize("admin", None, "127.0.0.1") is None
        assert await authenticator.authorize("admin", None, "::1") is None
    finally:
        authenticator.close()


async def test_only_users_listed_in_auth_admins_may_call_the_admin_api(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "admin-pw")
    add_user(htpasswd, "bob", "user-pw")
    client = await _client(make_app_client, tmp_path, htpasswd=str(htpasswd), admins=["alice"])
    anonymous = await client.get("/-/admin/cache/stats")
    assert anonymous.status == 401
    bob = await client.get("/-/admin/cache/stats", headers=_login("bob", "user-pw"))
    assert bob.status == 403
    assert "not an admin" in await bob.text()
    alice = await client.get("/-/admin/cache/stats", headers=_login("alice", "admin-pw"))
    assert alice.status == 200
    assert {"size", "files", "pages", "private_projects"} <= (await alice.json()).keys()


async def test_yank_unyank_and_remove_through_the_api_are_audited(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    one = make_wheel(packages, "corp-admin", "1.0")
    two = make_wheel(packages, "corp-admin", "2.0")
    two_sha = sha256_file(two)
    client = await _client(make_app_client, tmp_path)
    response = await client.post("/-/admin/yank/Corp_Admin/2.0", json={"reason": "bad build"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["files"] == [{"filename": two.name, "sha256": two_sha}]
    page = await (
        await client.get(
            "/simple/corp-admin/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
    ).json()
    assert {f["filename"]: f["yanked"] for f in page["files"]} == {
        one.name: False,
        two.name: "bad build",
    }
    assert (await client.post("/-/admin/unyank/corp-admin/2.0")).status == 200
    html = await (await client.get("/simple/corp-admin/")).text()
    assert "data-yanked" not in html
    removed = await client.delete("/-/admin/projects/corp-admin/1.0")
    assert removed.status == 200, await removed.text()
    assert not one.exists() and two.exists()
    assert (await client.delete("/-/admin/projects/corp-admin")).status == 200
    assert not two.exists()
    events = [(e["action"], e.get("version"), e.get("filename")) for e in _audit(tmp_path)]
    assert events == [
        ("yank", "2.0", two.name),
        ("unyank", "2.0", two.name),
        ("remove", "1.0", one.name),
        ("remove", "2.0", two.name),
    ]
    first = _audit(tmp_path)[0]
    assert first["user"] == "-" and first["client"] == "127.0.0.1"
    assert first["sha256"] == two_sha and first["project"] == "corp-admin"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/-/admin/yank/corp-admin/not a version", None, 400, "not a valid version"),
        ("POST", "/-/admin/yank/-bad-/1.0", None, 400, "not a valid project name"),
        ("POST", "/-/admin/yank/corp-admin/1.0", "[1]", 400, "JSON object"),
        ("POST", "/-/admin/yank/corp-admin/1.0", "{", 400, "not valid JSON"),
        ("POST", "/-/admin/yank/corp-admin/1.0", '{"reason": 3}', 400, "expected a string"),
        ("POST", "/-/admin/yank/corp-admin/1.0", '{"reason": "a\\nb"}', 400, "one line"),
        ("POST", "/-/admin/yank/corp-admin/9.0", None, 404, "no private files"),
        ("POST", "/-/admin/unyank/nothing-here/1.0", None, 404, "no private files"),
        ("DELETE", "/-/admin/projects/nothing-here", None, 404, "no private files"),
        ("DELETE", "/-/admin/projects/corp-admin/9.0", None, 404, "no files"),
        ("POST", "/-/admin/cache/purge", '{"projects": []}', 400, "non-empty list"),
        ("POST", "/-/admin/cache/purge", '{"projects": ["a b"]}', 400, "not a valid"),
    ],
)
async def test_bad_admin_requests_get_a_clear_4xx_and_change_nothing(
    make_app_client: MakeAppClient,
    tmp_path: Path,
    method: str,
    path: str,
    body: str | None,
    status: int,
    reason: str,
) -> None:
    wheel = make_wheel(tmp_path / "packages", "corp-admin", "1.0")
    client = await _client(make_app_client, tmp_path)
    response = await client.request(method, path, data=body)
    assert response.status == status
    assert reason in await response.text()
    assert wheel.exists()
    assert not (tmp_path / "packages" / ".proxyindex" / "yanks").exists()
    assert _audit(tmp_path) == []


async def _cache_file(client: AppClient, name: str, cache: Path) -> str:
    """Fetch ``name``'s page and its one file through the proxy (until it is in the file
    cache: the commit may follow the answer); the file's sha256."""
    page = await (
        await client.get(
            f"/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
    ).json()
    (dist,) = page["files"]
    response = await client.get(dist["url"])
    assert response.status == 200
    await response.read()
    sha: str = dist["hashes"]["sha256"]
    for _ in range(100):
        if (cache / "files" / sha[:2] / sha).exists():
            break
        await asyncio.sleep(0.05)
    return sha


async def test_cache_purge_removes_the_project_page_and_files_only(
    make_app_client: MakeAppClient, tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("pub-one", "1.0")
    fake_pypi.add_wheel("pub-two", "1.0")
    client = await _client(make_app_client, tmp_path)
    one = await _cache_file(client, "pub-one", tmp_path / "cache")
    two = await _cache_file(client, "pub-two", tmp_path / "cache")
    blobs = tmp_path / "cache" / "files"
    assert (blobs / one[:2] / one).exists() and (blobs / two[:2] / two).exists()
    pages_before = fake_pypi.count("/simple/pub-one/")
    response = await client.post("/-/admin/cache/purge", json={"projects": ["Pub_One"]})
    assert response.status == 200, await response.text()
    (purged,) = (await response.json())["purged"]
    assert purged["project"] == "pub-one" and purged["page"] is True
    assert purged["files"] >= 1
    assert not (blobs / one[:2] / one).exists()
    assert (blobs / two[:2] / two).exists()
    assert (await client.get("/simple/pub-one/")).status == 200
    assert fake_pypi.count("/simple/pub-one/") == pages_before + 1  # fetched again
    assert [e["action"] for e in _audit(tmp_path)] == ["purge"]


async def test_cache_verify_quarantines_a_corrupt_file_and_reports_it(
    make_app_client: MakeAppClient, tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("pub-one", "1.0")
    fake_pypi.add_wheel("pub-two", "1.0")
    client = await _client(make_app_client, tmp_path)
    good = await _cache_file(client, "pub-one", tmp_path / "cache")
    bad = await _cache_file(client, "pub-two", tmp_path / "cache")
    blob = tmp_path / "cache" / "files" / bad[:2] / bad
    blob.write_bytes(b"bit rot")
    response = await client.post("/-/admin/cache/verify")
    assert response.status == 200
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    total = len([p for p in (tmp_path / "cache" / "files").rglob("*") if len(p.name) == 64]) + 1
    assert total >= 3  # both wheels (and their METADATA, read out of them), the bad one
    assert lines[0] == {"done": 0, "total": total}
    assert lines[-2] == {"done": total, "total": total}
    result = lines[-1]["result"]
    assert result["checked"] == total
    (quarantined,) = result["quarantined"]
    assert quarantined["sha256"] == bad
    assert not blob.exists()
    assert (tmp_path / "cache" / "quarantine" / bad).read_bytes() == b"bit rot"
    assert (tmp_path / "cache" / "files" / good[:2] / good).exists()
    # Served again, the file is fetched afresh and right.
    page = await (
        await client.get(
            "/simple/pub-two/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
    ).json()
    again = await client.get(page["files"][0]["url"])
    assert again.status == 200
    assert len(await again.read()) > len(b"bit rot")
