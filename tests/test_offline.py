"""Offline (air-gapped) mode: ``upstream.offline`` serves only what is cached and never
contacts the upstream (issue 11).

The workflow tested end to end: a connected server fills its cache through real pip, it
stops, and an offline server started with ``--offline`` on the same data folder, with the
upstream gone, serves the same installs to pip and uv; what was never cached is a 404 that
says "offline".
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI


def _publish(fake: FakePyPI) -> None:
    fake.add_wheel("top-pkg", "1.0", requires_dist=["dep-one>=1.0"])
    fake.add_wheel("dep-one", "1.0")
    fake.add_wheel("never-cached", "1.0")


@pytest.mark.e2e
def test_offline_server_installs_from_the_copied_cache_with_pip_and_uv(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    _publish(fake_pypi)
    connected = make_proxy()
    run_pip_install(client_tmp / "fill", connected.index_url, "top-pkg", target=client_tmp / "t0")
    connected.stop()
    folder = connected.config.parent
    fake_pypi.stop()  # the air gap: nothing answers at the upstream URL
    offline = make_proxy(
        storage={"packages_dir": str(folder / "packages"), "cache_dir": str(folder / "cache")},
        # The upstream check would run every second if offline mode did not turn it off.
        upstream={"check_interval": 1},
        extra_args=["--offline"],
    )
    assert "OFFLINE" in offline.wait_for_log("OFFLINE")

    report = run_pip_install(
        client_tmp / "pip", offline.index_url, "top-pkg", target=client_tmp / "t1"
    )
    assert report.versions() == {"top-pkg": "1.0", "dep-one": "1.0"}
    assert all(i.url.startswith(offline.url + "/packages/") for i in report.installed)
    python = make_venv(client_tmp / "venv")
    uv = run_uv_pip_install(client_tmp / "uv", offline.index_url, "top-pkg", python=python)
    assert uv.installed == {"top-pkg": "1.0", "dep-one": "1.0"}

    failed = run_pip_install(
        client_tmp / "pip-miss",
        offline.index_url,
        "never-cached",
        target=client_tmp / "t2",
        extra_args=["--retries", "0"],
        check=False,
    )
    assert failed.proc.returncode != 0
    assert "no matching distribution" in failed.proc.stderr.lower()
    uv_miss = run_uv_pip_install(
        client_tmp / "uv-miss", offline.index_url, "never-cached", python=python, check=False
    )
    assert uv_miss.proc.returncode != 0
    assert "not found" in uv_miss.proc.stderr.lower()
    assert "offline: project 'never-cached' is not in the cache" in offline.log_text()
    assert "unreachable" not in offline.log_text()  # no upstream check, no fetch


async def test_offline_never_contacts_the_upstream_and_says_so(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """The fake upstream runs and has the project: an offline server still asks it nothing."""
    _publish(fake_pypi)
    client = await make_app_client(upstream={"offline": True, "check_interval": 1})
    page = await client.get("/simple/top-pkg/")
    assert page.status == 404
    assert "offline" in (page.reason or "").lower()
    assert "offline" in await page.text()
    wheel = await client.get("/packages/top-pkg/top_pkg-1.0-py3-none-any.whl")
    assert wheel.status == 404
    root = await client.get("/simple/")
    assert root.status == 200
    ready = await client.get("/ready")
    assert ready.status == 200
    assert "offline" in (await ready.json())["upstream"]
    assert fake_pypi.paths() == []


async def _blob_committed(files: Path) -> None:
    """The last byte reaches the client just before the blob is renamed into the cache."""
    for _ in range(100):
        if any(p.is_file() and p.parent.name != "tmp" for p in files.rglob("*")):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the downloaded file was never cached")


async def test_offline_serves_cached_pages_whatever_their_age(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    _publish(fake_pypi)
    online = await make_app_client(upstream={"page_ttl": 1, "prefetch": False})
    assert (await online.get("/simple/dep-one/")).status == 200
    wheel = await online.get("/packages/dep-one/dep_one-1.0-py3-none-any.whl")
    assert wheel.status == 200
    data = await wheel.read()
    await _blob_committed(tmp_path / "cache" / "files")
    await online.close()
    time.sleep(1.1)  # the page is past its TTL: online, it would be revalidated
    fake_pypi.clear_log()
    offline = await make_app_client(upstream={"offline": True, "page_ttl": 1})
    page = await offline.get("/simple/dep-one/")
    assert page.status == 200
    assert "dep_one-1.0-py3-none-any.whl" in await page.text()
    again = await offline.get("/packages/dep-one/dep_one-1.0-py3-none-any.whl")
    assert again.status == 200
    assert await again.read() == data
    assert fake_pypi.paths() == []


async def test_offline_metadata_of_an_uncached_wheel_never_reads_ranges_upstream(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """PEP 658 for every wheel reads an uncached wheel's METADATA with Range requests: offline,
    that path must stop at the guard instead of opening a connection."""
    _publish(fake_pypi)
    fake_pypi.no_core_metadata = True
    online = await make_app_client(upstream={"prefetch": False})
    assert (await online.get("/simple/dep-one/")).status == 200
    await online.close()
    fake_pypi.clear_log()
    offline = await make_app_client(upstream={"offline": True})
    resp = await offline.get("/packages/dep-one/dep_one-1.0-py3-none-any.whl.metadata")
    assert resp.status == 404  # as for an uncached file: pip and uv move on
    assert "offline" in await resp.text()
    assert fake_pypi.paths() == []
