"""``GET /metrics`` (issue 11 §1): Prometheus text, parsed with prometheus-client's own parser.

Real sockets throughout: the real ``proxyindex serve`` subprocess for pip installs and for
``--workers 2``, in-process apps on a real socket for the auth rules. Counters are read
before and after what should move them, so a test says which event moved which number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from proxyindex.auth.authenticator import add_user
from proxyindex.web.metrics import scrape_allowed
from tests.clients import run_pip_install, run_twine_upload
from tests.conftest import AppClient, MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT
from tests.wheelmaker import make_wheel

Families = dict[str, list[Sample]]


def parse(text: str) -> Families:
    """Family name -> its samples (a counter's family drops ``_total``; samples keep it)."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: Families, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 if none)."""
    return sum(
        s.value
        for samples in families.values()
        for s in samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def scrape(base_url: str, headers: Mapping[str, str] | None = None) -> Families:
    url = base_url + "/metrics"
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - 127.0.0.1
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - http://127.0.0.1
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(resp.read().decode())


async def scrape_app(client: AppClient, **headers: str) -> Families:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    return parse(await resp.text())


async def _downloads_finished(client: AppClient) -> None:
    """Wait until no upstream download runs (a client has its bytes before the commit)."""
    for _ in range(200):
        if value(await scrape_app(client), "proxyindex_downloads_in_flight") == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("a download is still running")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- counters move as a real pip install goes through the proxy ---------------------------------


@pytest.mark.e2e
def test_pip_install_through_the_proxy_moves_cache_upstream_and_byte_counters(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    wheel = fake_pypi.add_wheel("metered-pkg", "1.0", modules={"metered_pkg": "x = 1\n" * 5000})
    size = wheel.stat().st_size
    proxy = make_proxy(upstream={"prefetch": False})
    file_route = {"route": "/packages/{name}/{filename}"}

    run_pip_install(client_tmp / "a", proxy.index_url, "metered-pkg", target=client_tmp / "ta")
    first = scrape(proxy.url)
    miss = {"cache": "file", "result": "miss"}
    hit = {"cache": "file", "result": "hit"}
    # A fresh server: every counter started at 0. The .metadata file, then the wheel.
    assert value(first, "proxyindex_cache_requests_total", **miss) == 2
    assert value(first, "proxyindex_cache_requests_total", **hit) == 0
    assert value(first, "proxyindex_cache_requests_total", cache="page", result="miss") >= 1
    upstream = {"upstream": "pypi", "status": "2xx"}
    fetches = value(first, "proxyindex_upstream_requests_total", **upstream)
    assert fetches >= 3  # page, .metadata, wheel
    assert value(first, "proxyindex_upstream_bytes_total", upstream="pypi") >= size
    assert value(first, "proxyindex_http_response_bytes_total", **file_route) >= size
    assert value(first, "proxyindex_http_requests_total", status="2xx", **file_route) >= 2
    assert value(first, "proxyindex_upstream_request_duration_seconds_count") == fetches
    # Measured at the first scrape (then at most once a minute).
    assert value(first, "proxyindex_cache_files") == 2  # the wheel and its .metadata
    assert value(first, "proxyindex_cache_size_bytes") >= size
    assert value(first, "proxyindex_downloads_in_flight") == 0

    for _ in range(100):  # pip has every byte before the download is committed
        if value(scrape(proxy.url), "proxyindex_downloads_in_flight") == 0:
            break
        time.sleep(0.05)
    first = scrape(proxy.url)
    run_pip_install(client_tmp / "b", proxy.index_url, "metered-pkg", target=client_tmp / "tb")
    second = scrape(proxy.url)
    assert value(second, "proxyindex_cache_requests_total", **hit) >= 2  # served from the cache
    assert value(second, "proxyindex_cache_requests_total", **miss) == value(
        first, "proxyindex_cache_requests_total", **miss
    )
    assert len(fake_pypi.requests_for("/files/")) == 2  # the wheel and its .metadata, once each
    served = value(second, "proxyindex_http_response_bytes_total", **file_route)
    assert served - value(first, "proxyindex_http_response_bytes_total", **file_route) >= size
    # Routes are the route table's templates: no label value ever holds a project name.
    routes = {s.labels["route"] for s in second["proxyindex_http_requests"]}
    assert not any("metered" in route for route in routes), routes
    assert "/simple/{name}/" in routes


@pytest.mark.e2e
def test_twine_upload_counts_a_private_change_and_private_gauges(
    make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    proxy = make_proxy(auth={"anonymous_upload": True}, private={"reserved": ["acme-*"]})
    before = scrape(proxy.url)
    assert value(before, "proxyindex_private_projects") == 0
    wheel = make_wheel(tmp_path / "dist", "acme-lib", "1.0")
    run_twine_upload(client_tmp / "up", proxy.upload_url, [wheel], "any", "any")
    after = scrape(proxy.url)
    assert value(after, "proxyindex_private_changes_total", action="upload") == 1
    assert value(after, "proxyindex_private_projects") == 1
    assert value(after, "proxyindex_private_files") == 1
    assert value(after, "proxyindex_http_requests_total", route="/", method="POST") == 1


# --- several workers: one consistent set --------------------------------------------------------


@pytest.mark.e2e
def test_two_workers_count_every_request_in_one_scrape(make_proxy: MakeProxy) -> None:
    """Each worker writes its own files; whichever worker answers the scrape adds them all."""
    proxy = make_proxy(server={"workers": 2})
    total = 120

    async def hammer() -> None:
        # A new connection per request, so the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(limit=8, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.get(proxy.url + "/health") as resp:
                    assert resp.status == 200

            await asyncio.gather(*(one() for _ in range(total)))

    asyncio.run(hammer())
    folder = proxy.config.parent / "cache" / "metrics"
    writers = {p.name for p in folder.glob("*/counter_*.db")}
    assert len(writers) == 2, writers  # both workers served (and counted) some
    for _ in range(6):  # whichever worker answers, the same total
        families = scrape(proxy.url)
        assert value(families, "proxyindex_http_requests_total", route="/health") == total
        histogram = value(families, "proxyindex_http_request_duration_seconds_count")
        assert histogram >= total


@pytest.mark.e2e
def test_a_dead_workers_counts_stay_in_the_totals(make_proxy: MakeProxy) -> None:
    """A worker killed and replaced: what it counted is still added up (totals never go
    down), and its live gauges are dropped (the supervisor marks it dead)."""
    proxy = make_proxy(server={"workers": 2})
    folder = proxy.config.parent / "cache" / "metrics"

    async def hammer(count: int) -> None:
        connector = aiohttp.TCPConnector(limit=8, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.get(proxy.url + "/health") as resp:
                    assert resp.status == 200

            await asyncio.gather(*(one() for _ in range(count)))

    asyncio.run(hammer(60))
    pids = {int(p.stem.removeprefix("counter_")) for p in folder.glob("*/counter_*.db")}
    assert len(pids) == 2, pids
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for_log(rf"worker {victim} exited")
    for _ in range(100):  # the replacement takes its place
        if len(list(folder.glob("*/gauge_livesum_*.db"))) <= 2:
            break
        time.sleep(0.05)
    asyncio.run(hammer(20))
    families = scrape(proxy.url)
    assert value(families, "proxyindex_http_requests_total", route="/health") == 80
    assert not list(folder.glob(f"*/gauge_livesum_{victim}.db"))  # marked dead


# --- who may scrape -----------------------------------------------------------------------------


def test_scrape_allowed_only_locally_unless_protected_or_public() -> None:
    none: dict[str, str] = {}
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    assert scrape_allowed(False, False, "127.0.0.1", none)
    assert scrape_allowed(False, False, "::1", none)
    assert not scrape_allowed(False, False, "10.1.2.3", none)
    assert not scrape_allowed(False, False, "127.0.0.1", forwarded)  # a proxy on this host
    assert not scrape_allowed(False, False, "127.0.0.1", {"Forwarded": "for=1.2.3.4"})
    assert not scrape_allowed(False, False, "", none)  # unix socket: unknown
    assert scrape_allowed(False, True, "10.1.2.3", forwarded)  # metrics.public
    assert scrape_allowed(True, False, "10.1.2.3", forwarded)  # a login was checked


async def test_metrics_are_local_only_by_default(make_app_client: MakeAppClient) -> None:
    client = await make_app_client()
    families = await scrape_app(client)
    assert "proxyindex_http_requests" in families
    refused = await client.get("/metrics", headers={"X-Forwarded-For": "198.51.100.7"})
    assert refused.status == 403
    assert "metrics.public" in await refused.text()
    after = await scrape_app(client)
    assert value(after, "proxyindex_auth_failures_total", reason="not_local") == 1
    assert value(after, "proxyindex_http_requests_total", route="/metrics", status="4xx") == 1


async def test_metrics_public_setting_opens_them(make_app_client: MakeAppClient) -> None:
    client = await make_app_client(metrics={"public": True})
    await scrape_app(client, **{"X-Forwarded-For": "198.51.100.7"})


async def test_protected_metrics_need_a_login_and_count_failures(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "prom", "scrape-secret")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["metrics"]})
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=basic("prom", "wrong"))).status == 401
    # With a login, a scrape through a reverse proxy is fine.
    headers = {**basic("prom", "scrape-secret"), "X-Forwarded-For": "198.51.100.7"}
    families = await scrape_app(client, **headers)
    assert value(families, "proxyindex_auth_failures_total", reason="login_required") == 1
    assert value(families, "proxyindex_auth_failures_total", reason="bad_credentials") == 1
    assert (await client.get("/simple/")).status == 200  # only metrics were protected


async def test_protect_all_covers_metrics(make_app_client: MakeAppClient, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "prom", "scrape-secret")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": "all"})
    assert (await client.get("/metrics")).status == 401
    await scrape_app(client, **basic("prom", "scrape-secret"))


async def test_throttled_logins_are_counted(make_app_client: MakeAppClient, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "prom", "scrape-secret")
    client = await make_app_client(
        auth={"htpasswd": str(htpasswd), "protect": ["list"], "max_failed_logins": 2}
    )
    statuses = [
        (await client.get("/simple/", headers=basic("prom", "nope"))).status for _ in range(4)
    ]
    assert statuses[-1] == 429, statuses
    families = await scrape_app(client)
    assert value(families, "proxyindex_auth_throttled_total") == statuses.count(429)


# --- in-process apps: each its own registry ---------------------------------------------------


async def test_two_apps_in_one_process_keep_separate_counts(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("twice-pkg", "1.0")
    first = await make_app_client()
    second = await make_app_client()
    for _ in range(3):
        assert (await first.get("/simple/twice-pkg/")).status == 200
    one, two = await scrape_app(first), await scrape_app(second)
    route = {"route": "/simple/{name}/"}
    assert value(one, "proxyindex_http_requests_total", **route) == 3
    assert value(two, "proxyindex_http_requests_total", **route) == 0
    assert value(one, "proxyindex_cache_requests_total", cache="page", result="miss") == 1
    assert value(one, "proxyindex_cache_requests_total", cache="page", result="hit") == 2


async def test_unknown_urls_share_one_route_label(make_app_client: MakeAppClient) -> None:
    client = await make_app_client()
    for n in range(5):
        await client.get(f"/no/such/thing/{n}")
    families = await scrape_app(client)
    routes = {s.labels["route"] for s in families["proxyindex_http_requests"]}
    assert not any("thing" in route for route in routes), routes


async def test_a_stale_page_served_while_the_upstream_fails_is_counted(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("flaky-pkg", "1.0")
    client = await make_app_client(upstream={"page_ttl": 0, "prefetch": False})
    assert (await client.get("/simple/flaky-pkg/")).status == 200
    fake_pypi.status = 503
    assert (await client.get("/simple/flaky-pkg/")).status == 200
    families = await scrape_app(client)
    assert value(families, "proxyindex_cache_requests_total", cache="page", result="stale") == 1
    errors = value(families, "proxyindex_upstream_errors_total", reason="UpstreamUnavailable")
    assert errors == 1
    assert value(families, "proxyindex_upstream_requests_total", status="5xx") == 1


async def test_prefetched_files_count_as_prefetch_hits(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("ahead-pkg", "1.0")
    client = await make_app_client()
    assert (await client.get("/simple/ahead-pkg/")).status == 200
    for _ in range(100):  # the prefetcher fetches the wheel in the background
        if any(r.path.endswith(wheel.name) for r in fake_pypi.requests_for("/files/")):
            break
        await asyncio.sleep(0.05)
    resp = await client.get(f"/packages/ahead-pkg/{wheel.name}")
    assert resp.status == 200
    await resp.read()
    families = await scrape_app(client)
    assert value(families, "proxyindex_prefetch_hits_total") == 1


# --- the Grafana dashboard ----------------------------------------------------------------------


async def test_grafana_dashboard_queries_only_metrics_that_exist(
    make_app_client: MakeAppClient,
) -> None:
    path = REPO_ROOT / "docs" / "grafana-dashboard.json"
    dashboard: dict[str, Any] = json.loads(path.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\bproxyindex_[a-z_]+", expr)}
    client = await make_app_client()
    text = await (await client.get("/metrics")).text()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exported |= {f.name for f in text_string_to_metric_families(text)}
    # A histogram's _bucket/_count/_sum and a counter's _total exist once the family does.
    families = {f.name for f in text_string_to_metric_families(text)}
    suffixes = ("_bucket", "_count", "_sum", "_total")
    missing = {
        name
        for name in used
        if name not in exported
        and not any(name.endswith(x) and name.removesuffix(x) in families for x in suffixes)
    }
    assert missing == set()


# --- the web UI's cache page shows the same counters -------------------------------------------


async def test_cache_page_shows_the_metrics_totals(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("shown-pkg", "1.0")
    client = await make_app_client(upstream={"prefetch": False})
    assert (await client.get("/simple/shown-pkg/")).status == 200
    for _ in range(2):  # a miss, then a hit
        resp = await client.get(f"/packages/shown-pkg/{wheel.name}")
        assert resp.status == 200
        await resp.read()
        await _downloads_finished(client)  # else the second request joins the first
    families = await scrape_app(client)
    requests = value(families, "proxyindex_http_requests_total")
    page = await (await client.get("/ui/cache/")).text()
    assert re.search(r'id="total-files">1 · 1<', page), page
    assert re.search(rf'id="total-requests">{int(requests) + 1}<', page)  # and the scrape
    assert re.search(r'id="total-pages">0 · 1 · 0<', page)
    assert re.search(r'id="total-hit-rate">33 %<', page)  # 1 of 3 lookups
