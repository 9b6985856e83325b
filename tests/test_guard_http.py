"""The guard over HTTP (issue 14): one filter for simple pages (HTML and JSON), the JSON API
and downloads; reasons in X-Proxyindex-Policy; renderings, ETags and Cache-Control follow a
release that ages in; snapshots; advisories reloaded; private names never fall through."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AppClient, MakeAppClient
from tests.fakepypi import FakePyPI
from tests.test_metrics import scrape_app, value
from tests.wheelmaker import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"
DAY = 86400.0
HEADER = "X-Proxyindex-Policy"


def ago(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def at(text: str) -> str:
    return f"{text}T00:00:00.000000Z"


async def files(client: AppClient, path: str) -> list[str]:
    resp = await client.get(path, headers={"Accept": JSON})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json(content_type=None)
    return [f["filename"] for f in body["files"]]


async def test_cooldown_hides_young_upstream_files_everywhere(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    old = fake_pypi.add_wheel("demo", "1.0", upload_time=ago(30 * DAY))
    young = fake_pypi.add_wheel("demo", "2.0", upload_time=ago(3600))
    client = await make_app_client(policy={"min_age": "7d"})
    assert await files(client, "/simple/demo/") == [old.name]
    html = await (await client.get("/simple/demo/", headers={"Accept": "text/html"})).text()
    assert old.name in html and young.name not in html
    api = await (await client.get("/pypi/demo/json")).json()
    assert api["info"]["version"] == "1.0" and list(api["releases"]) == ["1.0"]
    resp = await client.get("/pypi/demo/2.0/json")
    assert resp.status == 404 and "policy.min_age" in resp.headers[HEADER]
    for path in (f"/packages/demo/{young.name}", f"/packages/demo/{young.name}.metadata"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert resp.headers[HEADER].startswith("hidden by policy.min_age: uploaded ")
        assert "visible from" in await resp.text()
    assert (await client.get(f"/packages/demo/{old.name}")).status == 200
    await asyncio.sleep(0.5)  # prefetch runs in the background: give it time to go wrong
    fetched = [p for p in fake_pypi.paths() if p.startswith("/files/")]
    assert any(p.endswith(old.name) for p in fetched)
    assert not any(young.name in p for p in fetched)  # never fetched, not even ahead


async def test_deny_refuses_downloads_with_403_naming_the_rule(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    bad = fake_pypi.add_wheel("requests", "2.19.0")
    good = fake_pypi.add_wheel("requests", "2.20.0")
    fake_pypi.add_wheel("ctx", "0.1")
    client = await make_app_client(policy={"deny": ["requests<2.20", "ctx"]})
    assert await files(client, "/simple/requests/") == [good.name]
    resp = await client.get(f"/packages/requests/{bad.name}")
    assert resp.status == 403
    assert (
        resp.headers[HEADER] == "denied by policy.deny: denied by policy.deny rule 'requests<2.20'"
    )
    resp = await client.get("/simple/ctx/")
    assert resp.status == 404 and "'ctx'" in resp.headers[HEADER]


async def test_allow_only_makes_other_upstream_projects_404_with_a_reason(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("six", "1.0")
    fake_pypi.add_wheel("leftpad", "1.0")
    client = await make_app_client(policy={"allow_only": ["six"]})
    assert len(await files(client, "/simple/six/")) == 1
    resp = await client.get("/simple/leftpad/")
    assert resp.status == 404
    assert "leftpad is not in policy.allow_only" in resp.headers[HEADER]


async def test_a_release_that_ages_in_appears_without_a_restart_and_changes_the_etag(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo", "1.0", upload_time=ago(DAY))
    young = fake_pypi.add_wheel("demo", "2.0", upload_time=ago(0))
    client = await make_app_client(policy={"min_age": "3s"})
    first = await client.get("/simple/demo/", headers={"Accept": JSON})
    etag = first.headers["ETag"]
    assert young.name not in await first.text()
    assert int(first.headers["Cache-Control"].removeprefix("max-age=")) <= 3
    await asyncio.sleep(3.5)
    again = await client.get("/simple/demo/", headers={"Accept": JSON, "If-None-Match": etag})
    assert again.status == 200  # never a 304 for a page whose visible files changed
    assert young.name in await again.text()
    assert again.headers["ETag"] != etag


async def test_private_files_are_never_held_back_and_private_names_never_fall_through(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0", upload_time=ago(30 * DAY))
    mine = make_wheel(tmp_path / "packages" / "corp-lib", "corp-lib", "1.0")
    client = await make_app_client(
        private={"reserved": ["corp-*"]},
        policy={"min_age": "7d", "allow_only": ["six"], "deny": ["corp-lib", "corp-*"]},
    )
    assert await files(client, "/simple/corp-lib/") == [mine.name]
    assert (await client.get(f"/packages/corp-lib/{mine.name}")).status == 200
    resp = await client.get("/simple/corp-empty/")  # reserved, no files: the private 404
    assert resp.status == 404 and HEADER not in resp.headers
    assert "reserved for private packages" in await resp.text()
    assert fake_pypi.count("/simple/corp") == 0


def write_advisory(folder: Path, ident: str, name: str, fixed: str) -> None:
    record = {
        "id": ident,
        "summary": f"bad things in {name}",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": name},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
            }
        ],
    }
    (folder / f"{ident}.json").write_text(json.dumps(record))


async def test_advisories_yank_affected_files_and_are_reloaded_when_the_folder_changes(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    folder = tmp_path / "osv"
    folder.mkdir()
    write_advisory(folder, "PYSEC-2099-1", "demo", "2.0")
    old = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.add_wheel("demo", "2.0")
    client = await make_app_client(policy={"advisories_dir": str(folder)})
    resp = await client.get("/simple/demo/", headers={"Accept": JSON})
    body = await resp.json(content_type=None)
    assert [f["yanked"] for f in body["files"]] == ["PYSEC-2099-1: bad things in demo", False]
    html = await (await client.get("/simple/demo/", headers={"Accept": "text/html"})).text()
    assert 'data-yanked="PYSEC-2099-1: bad things in demo"' in html
    api = await (await client.get("/pypi/demo/1.0/json")).json()
    assert api["info"]["yanked_reason"] == "PYSEC-2099-1: bad things in demo"
    assert (await client.get(f"/packages/demo/{old.name}")).status == 200  # yanked: served
    etag = resp.headers["ETag"]
    write_advisory(folder, "PYSEC-2099-2", "demo", "3.0")  # now 2.0 is affected too
    deadline = time.monotonic() + 15
    while True:
        resp = await client.get("/simple/demo/", headers={"Accept": JSON, "If-None-Match": etag})
        if resp.status == 200:
            body = await resp.json(content_type=None)
            if all(f["yanked"] for f in body["files"]):
                break
        assert time.monotonic() < deadline, "the new advisory was not picked up"
        await asyncio.sleep(0.5)


async def test_advisories_can_hide_instead(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    folder = tmp_path / "osv"
    folder.mkdir()
    write_advisory(folder, "GHSA-xxxx", "demo", "2.0")
    old = fake_pypi.add_wheel("demo", "1.0")
    new = fake_pypi.add_wheel("demo", "2.0")
    client = await make_app_client(policy={"advisories_dir": str(folder), "advisories": "hide"})
    assert await files(client, "/simple/demo/") == [new.name]
    resp = await client.get(f"/packages/demo/{old.name}")
    assert resp.status == 404 and "GHSA-xxxx: bad things in demo" in resp.headers[HEADER]


async def test_snapshot_serves_pages_files_and_json_as_they_were(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    first = fake_pypi.add_wheel("demo", "1.0", upload_time=at("2025-01-01"))
    later = fake_pypi.add_wheel("demo", "2.0", upload_time=at("2025-06-01"))
    client = await make_app_client()
    base = "/snapshot/2025-03-01"
    assert await files(client, f"{base}/simple/demo/") == [first.name]
    assert await files(client, "/snapshot/2025-06-01T00:00:00Z/simple/demo/") == [
        first.name,
        later.name,
    ]
    assert len(await files(client, "/simple/demo/")) == 2  # the live index is unchanged
    html = await (await client.get(f"{base}/simple/demo/")).text()
    assert f'href="../../packages/demo/{first.name}' in html  # resolves under the snapshot
    assert (await client.get(f"{base}/packages/demo/{first.name}")).status == 200
    resp = await client.get(f"{base}/packages/demo/{later.name}")
    assert resp.status == 404 and resp.headers[HEADER].startswith("hidden by snapshot")
    api = await (await client.get(f"{base}/pypi/demo/json")).json()
    assert api["info"]["version"] == "1.0" and list(api["releases"]) == ["1.0"]
    assert (await client.get(f"{base}/simple/")).status == 200
    for bad in ("/snapshot/yesterday/simple/demo/", "/snapshot/2999-01-01/simple/demo/"):
        resp = await client.get(bad)
        assert resp.status == 400, bad
        assert "snapshot" in await resp.text()
    resp = await client.get(f"{base}/simple/Demo", allow_redirects=False)
    assert resp.headers["Location"] == f"{base}/simple/demo/"


async def test_an_upstream_without_upload_times_is_hidden_by_default_with_one_warning(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_pypi.html_only = True  # PEP 503 HTML: no upload-time
    fake_pypi.add_wheel("demo", "1.0", upload_time=ago(30 * DAY))
    fake_pypi.add_wheel("other", "1.0", upload_time=ago(30 * DAY))
    client = await make_app_client(policy={"min_age": "1d"})
    with caplog.at_level(logging.INFO, logger="proxyindex.guard"):
        for name in ("demo", "other", "demo"):
            resp = await client.get(f"/simple/{name}/")
            assert resp.status == 404
            assert "policy.unknown_age" in resp.headers[HEADER]
    warnings = [r for r in caplog.records if "gives no upload times" in r.getMessage()]
    assert len(warnings) == 1
    allowing = await make_app_client(policy={"min_age": "1d", "unknown_age": "allow"})
    assert (await allowing.get("/simple/demo/")).status == 200


async def test_metrics_count_files_each_rule_decided_and_requests_it_refused(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """Issue 14 §4: hidden files and refused downloads per rule, on /metrics."""
    bad = fake_pypi.add_wheel("requests", "2.19.0")
    fake_pypi.add_wheel("requests", "2.19.1")
    fake_pypi.add_wheel("requests", "2.20.0")
    client = await make_app_client(policy={"deny": ["requests<2.20"]})
    for _ in range(3):  # decided once per file, however often the page is asked for
        assert len(await files(client, "/simple/requests/")) == 1
    for _ in range(2):
        assert (await client.get(f"/packages/requests/{bad.name}")).status == 403
    metrics = await scrape_app(client)
    denied = {"rule": "policy.deny", "verdict": "denied"}
    assert value(metrics, "proxyindex_policy_files_total", **denied) == 2
    assert value(metrics, "proxyindex_policy_refusals_total", rule="policy.deny") == 2
