"""Upstream answers that are not usable project pages (issue 7 item 4), and what our JSON pages
say about files an HTML-only upstream describes poorly (issue 8).

An upstream fault never replaces a good cached page: oversized pages, maintenance pages,
random bytes, JSON of the wrong shape all count as "the upstream failed" (502 cold, the last
good page served stale when held). A real server process must stop on SIGTERM within seconds
whatever is in flight.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.clients import (
    client_env,
    make_venv,
    run,
    run_pip_install,
    run_uv_pip_install,
    uv_command,
)
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI

JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"

# Answers with status 200 that are not project pages (each is an upstream fault).
NOT_A_PAGE: dict[str, tuple[str, bytes]] = {
    "maintenance-html": (
        "text/html; charset=utf-8",
        b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
        b'<body><h1>Back soon</h1><a href="https://status.example/">status</a></body></html>',
    ),
    "random-bytes-as-html": ("text/html", bytes(range(256)) * 40),
    "empty-html": ("text/html", b""),
    "json-hashes-not-an-object": (
        JSON,
        json.dumps(
            {
                "meta": {"api-version": "1.1"},
                "name": "demo-pkg",
                "files": [{"filename": "demo_pkg-9.0.tar.gz", "url": "x", "hashes": "x"}],
            }
        ).encode(),
    ),
    # A PyPI-sized page (parsed in a thread, its plain entries read on the fast path) with
    # one entry deep in it of the wrong type: the whole page is refused, nothing of it kept.
    "json-big-page-one-bad-file": (
        JSON,
        json.dumps(
            {
                "meta": {"api-version": "1.1", "_last-serial": 7},
                "name": "demo-pkg",
                "files": [
                    {
                        "filename": f"demo_pkg-{n}.0-py3-none-any.whl",
                        "url": f"https://files.example/demo_pkg-{n}.0-py3-none-any.whl",
                        "hashes": {"sha256": "ab" * 32},
                        "size": "1024" if n == 2500 else 1024,
                        "yanked": False,
                    }
                    for n in range(3000)
                ],
            }
        ).encode(),
    ),
    "json-without-meta-or-files": (JSON, b'{"message": "maintenance"}'),
    "json-not-json": (JSON, b"<html>oops</html>"),
    "json-future-major-version": (
        JSON,
        b'{"meta": {"api-version": "2.0"}, "name": "demo-pkg", "files": []}',
    ),
    "plain-text": ("text/plain", b"Service temporarily unavailable"),
}


async def _filenames(client: Any, name: str) -> tuple[int, list[str]]:
    resp = await client.get(f"/simple/{name}/", headers={"Accept": PIP_ACCEPT})
    if resp.status != 200:
        return resp.status, []
    return 200, [f["filename"] for f in (await resp.json(content_type=None))["files"]]


@pytest.mark.parametrize("answer", sorted(NOT_A_PAGE))
async def test_an_answer_that_is_not_a_project_page_never_replaces_the_cached_one(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, answer: str
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_app_client(upstream={"page_ttl": 0, "prefetch": False})
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    fake_pypi.raw_pages = {"demo-pkg": NOT_A_PAGE[answer], "cold-pkg": NOT_A_PAGE[answer]}
    # The bad answer is an upstream fault: the good page is served stale, and kept.
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    assert fake_pypi.count("/simple/demo-pkg/") >= 2
    # With nothing held it is a clear 502 (never a 500, never an empty project).
    resp = await client.get("/simple/cold-pkg/")
    assert resp.status == 502, await resp.text()
    assert "not a project page" in await resp.text()
    fake_pypi.raw_pages = {}
    fake_pypi.add_wheel("demo-pkg", "1.1")
    status, names = await _filenames(client, "demo-pkg")
    assert status == 200 and len(names) == 2


async def test_a_project_page_with_no_files_is_still_a_page(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """UP-05: an upstream that stops listing every file (removed, quarantined) is obeyed."""
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.html_only = True
    client = await make_app_client(upstream={"page_ttl": 0, "prefetch": False})
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    fake_pypi.remove_dist(wheel.name)
    assert await _filenames(client, "demo-pkg") == (200, [])


async def test_a_page_over_max_page_size_is_refused_and_a_held_page_is_served_stale(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_app_client(
        upstream={"page_ttl": 0, "prefetch": False, "max_page_size": 1 << 20}
    )
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    fake_pypi.huge_pages = {"demo-pkg": 3 << 20, "huge-pkg": 3 << 20}
    assert await _filenames(client, "demo-pkg") == (200, [wheel.name])
    resp = await client.get("/simple/huge-pkg/")
    assert resp.status == 502
    assert "max_page_size" in await resp.text()
    fake_pypi.huge_pages = {"huge-pkg": 900 << 10}  # under the limit: a page like any other
    status, names = await _filenames(client, "huge-pkg")
    assert status == 200 and len(names) > 4000


def _peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def _get(url: str, accept: str = PIP_ACCEPT, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310 - 127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_100_mb_page_is_refused_with_bounded_memory_and_the_project_stays_reachable(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    """Issue 7: a 100 MB page drove RSS to 3 GB and kept the project unreachable for minutes."""
    fake_pypi.huge_pages = {"huge-pkg": 100 << 20}
    proxy = make_proxy(upstream={"prefetch": False})
    status, body = _get(proxy.index_url + "huge-pkg/")
    assert status == 502, body[:300]
    assert b"max_page_size" in body
    # The default limit (64 MiB) is read at most once, and nothing of it is parsed.
    assert _peak_rss_mb(proxy.pid) < 400
    fake_pypi.huge_pages = {}
    fake_pypi.add_wheel("huge-pkg", "1.0")
    status, body = _get(proxy.index_url + "huge-pkg/", timeout=10)
    assert status == 200
    assert len(json.loads(body)["files"]) == 1


def _stops_within(proxy: Any, seconds: float) -> float:
    started = time.monotonic()
    proxy.stop(timeout=60)  # SIGTERM, then SIGKILL after 60 s
    took = time.monotonic() - started
    assert "did not exit on SIGTERM" not in proxy.log_text()
    assert took < seconds, f"SIGTERM took {took:.1f} s"
    return took


def _request_in_background(url: str) -> threading.Thread:
    def fetch() -> None:
        with contextlib.suppress(OSError):  # the server goes away under it: the point
            _get(url, timeout=120)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    return thread


def test_sigterm_stops_the_server_within_seconds_while_an_upstream_page_hangs(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("demo-pkg", "1.0")
    fake_pypi.delay = 60
    proxy = make_proxy(upstream={"timeout": 120})
    _request_in_background(proxy.index_url + "demo-pkg/")
    deadline = time.monotonic() + 10
    while not fake_pypi.count("/simple/demo-pkg/") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_pypi.count("/simple/demo-pkg/") == 1
    _stops_within(proxy, 10)


def test_sigterm_stops_the_server_within_seconds_while_a_huge_page_is_read_and_parsed(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    fake_pypi.huge_pages = {"huge-pkg": 60 << 20}
    proxy = make_proxy(upstream={"timeout": 120, "prefetch": False})
    _request_in_background(proxy.index_url + "huge-pkg/")
    time.sleep(1.5)  # reading or parsing by now, on any machine
    _stops_within(proxy, 10)


# --- issue 8: what our JSON says about an HTML-only upstream ----------------------------------


def _no_nulls(value: Any, where: str = "$") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nulls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nulls(item, f"{where}[{index}]")
    else:
        assert value is not None, f"null at {where}"


async def test_json_pages_of_an_html_only_upstream_carry_no_nulls_and_declare_1_0(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.html_only = True
    fake_pypi.add_wheel("demo-pkg", "1.0")  # no Requires-Python either
    client = await make_app_client(upstream={"prefetch": False})
    resp = await client.get("/simple/demo-pkg/", headers={"Accept": PIP_ACCEPT})
    doc = await resp.json(content_type=None)
    _no_nulls(doc)
    (entry,) = doc["files"]
    assert "size" not in entry and "upload-time" not in entry and "requires-python" not in entry
    assert doc["meta"]["api-version"] == "1.0"  # size is mandatory from 1.1 (J-04, J-07)


@pytest.mark.e2e
def test_uv_and_pip_install_and_uv_locks_through_an_html_only_upstream(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    fake_pypi.html_only = True
    fake_pypi.add_wheel("dep", "1.0")
    fake_pypi.add_wheel("top", "1.0", requires_dist=["dep"])
    proxy = make_proxy()
    python = make_venv(tmp_path / "venv")
    result = run_uv_pip_install(client_tmp / "uv", proxy.index_url, "top", python=python)
    assert result.installed == {"top": "1.0", "dep": "1.0"}
    report = run_pip_install(client_tmp / "pip", proxy.index_url, "top", target=tmp_path / "t")
    assert report.versions() == {"top": "1.0", "dep": "1.0"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.8"\n'
        'dependencies = ["top"]\n'
    )
    env = client_env(client_tmp / "lock", UV_NO_CONFIG="1", UV_DEFAULT_INDEX=proxy.index_url)
    run([*uv_command(), "lock"], env, cwd=project)
    lock = (project / "uv.lock").read_text()
    assert 'name = "dep"' in lock and 'name = "top"' in lock
    assert proxy.index_url in lock
    check = subprocess.run(
        [python, "-c", "import top, dep; print(top.__version__, dep.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout == "1.0 1.0\n"
