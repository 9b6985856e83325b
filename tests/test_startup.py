"""Start-up that tells the truth: where data lives, which upstream and auth, and whether the
upstream really is a simple index (logged loudly, and shown by ``/ready``); a failing upstream
never stalls pip for minutes."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proxyindex.config import default_data_dir
from proxyindex.upstream.readiness import judge_root
from tests.clients import run_pip_install
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.serverproc import ProxyServer, write_config

CHECKED = {"check_interval": 60}


def get_ready(proxy: ProxyServer) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(proxy.url + "/ready", timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def ready_settles(proxy: ProxyServer, timeout: float = 15) -> tuple[int, dict[str, object]]:
    """/ready once the first upstream check has finished."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = get_ready(proxy)
        if "not checked yet" not in str(body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("status", "content_type", "head", "ok"),
    [
        (200, "application/vnd.pypi.simple.v1+json", b'{"meta": {"api-version": "1.1"}', True),
        (200, "application/vnd.pypi.simple.v1+html", b"<!DOCTYPE html>", True),
        (200, "text/html", b'<html><meta name="pypi:repository-version" content="1.0">', True),
        (200, "text/html; charset=utf-8", b'<html><body><a href="/simple/a/">a</a>', True),
        (200, "application/json", b'{"meta": {"api-version": "1.0"}, "projects": []}', True),
        (200, "text/html", b"<html><script>x</script><form action=/search>", False),
        (200, "application/json", b'{"info": {"name": "x"}}', False),
        (200, "application/octet-stream", b"PK\x03\x04", False),
        (200, "", b"", False),
        (404, "text/html", b"", False),
        (401, "text/plain", b"", False),
    ],
)
def test_judge_root_tells_a_simple_index_from_anything_else(
    status: int, content_type: str, head: bytes, ok: bool
) -> None:
    assert (judge_root(status, content_type, head) is None) == ok


@pytest.mark.parametrize("wrong", ["site root", "typo", "stopped"])
def test_a_wrong_or_dead_upstream_is_logged_loudly_and_ready_says_503(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, wrong: str
) -> None:
    url = {
        "site root": fake_pypi.url + "/",
        "typo": fake_pypi.url + "/simpel/",
        "stopped": fake_pypi.simple_url,
    }[wrong]
    if wrong == "stopped":
        fake_pypi.stop()  # the fake_pypi fixture starts it again for the next test
    proxy = make_proxy(url, upstream=CHECKED)
    line = proxy.wait_for_log(r"ERROR .*upstream " + url)
    assert ("unreachable" in line) == (wrong == "stopped")
    status, body = ready_settles(proxy)
    assert status == 503
    assert body["status"] == "not ready"
    assert any(url in str(p) for p in body["problems"])  # type: ignore[attr-defined]


def test_ready_is_200_with_a_good_upstream_and_names_it_when_it_goes_away(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    proxy = make_proxy(upstream={"check_interval": 1})
    status, body = ready_settles(proxy)
    assert (status, body["status"]) == (200, "ready")
    assert "answers as a simple index" in proxy.log_text()
    assert fake_pypi.requests_for("/simple/")[0].method == "GET"
    mark = proxy.log_mark()
    fake_pypi.stop()
    proxy.wait_for_log(r"ERROR .*unreachable", since=mark)
    status, body = get_ready(proxy)
    assert status == 503
    assert fake_pypi.simple_url in str(body["problems"])
    assert (proxy.url + "/health") and proxy.running  # liveness is not readiness


async def test_ready_says_503_when_a_folder_is_gone(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    client = await make_app_client()
    resp = await client.get("/ready")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    shutil.rmtree(tmp_path / "cache")
    resp = await client.get("/ready")
    assert resp.status == 503
    assert f"cache folder {tmp_path / 'cache'} is missing" in (await resp.json())["problems"]


def test_start_up_says_where_data_lives_which_upstream_and_which_auth(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    upstream = fake_pypi.simple_url.replace("http://", "http://mirror:topsecret@")
    proxy = make_proxy(upstream)
    folder = proxy.config.parent
    log = proxy.wait_for_log("worker")  # the last line of the summary
    log = proxy.log_text()
    assert f"packages: {folder / 'packages'}" in log
    assert f"cache: {folder / 'cache'}" in log
    assert "upstream: http://mirror:***@127.0.0.1" in log
    assert "topsecret" not in log
    assert "auth: off" in log
    assert "uploads shadowing an upstream name refused" in log


def test_with_no_folders_configured_data_goes_to_the_data_home_not_the_current_dir(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    workdir = tmp_path / "checkout"  # what `proxyindex serve` in a source checkout would use
    config = write_config(
        workdir / "config.toml",
        server={"host": "127.0.0.1"},
        upstream={"url": fake_pypi.simple_url, "check_interval": 0},
    )
    data_home = tmp_path / "xdg-data"
    with ProxyServer(config, env={"XDG_DATA_HOME": str(data_home)}) as proxy:
        assert get_ready(proxy)[0] == 200  # answered: the app has set up its folders
        log = proxy.log_text()
    assert f"packages: {data_home / 'proxyindex' / 'packages'}" in log
    assert (data_home / "proxyindex" / "packages").is_dir()
    assert (data_home / "proxyindex" / "cache").is_dir()
    assert sorted(p.name for p in workdir.iterdir()) == ["config.toml"]


def test_default_data_dir_follows_xdg_then_root_then_home() -> None:
    assert default_data_dir({"XDG_DATA_HOME": "/x"}, 0) == Path("/x/proxyindex")
    assert default_data_dir({"HOME": "/home/a"}, 0) == Path("/var/lib/proxyindex")
    home = Path("/home/a/.local/share/proxyindex")
    assert default_data_dir({"HOME": "/home/a"}, 1000) == home
    assert default_data_dir({"HOME": "/home/a", "XDG_DATA_HOME": "rel"}, 1000) == home


@pytest.mark.e2e
def test_pip_fails_fast_when_the_upstream_is_unreachable(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.stop()  # connection refused: every page is a 502 with nothing cached
    proxy = make_proxy()
    started = time.monotonic()
    failed = run_pip_install(
        client_tmp, proxy.index_url, "some-pkg", target=client_tmp / "t", check=False
    )
    elapsed = time.monotonic() - started
    assert failed.proc.returncode != 0
    assert proxy.log_text().count("GET /simple/some-pkg/ -> 502") >= 3  # pip did retry
    # pip retries a 502 five times; a "Retry-After: 30" made it wait 150 s (here: seconds).
    assert elapsed < 60, elapsed


def test_the_readiness_check_goes_through_the_configured_proxy(make_proxy: MakeProxy) -> None:
    """Behind a corporate proxy the upstream check must take the same way out as pages and
    files: here the only proxy is dead, so /ready must say the upstream is unreachable (it
    said "ready" when the check went around the proxy)."""
    dead = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    proxy = make_proxy(env=dead, upstream={"check_interval": 1, "prefetch": False})
    status, body = ready_settles(proxy)
    assert status == 503, body
    assert "proxy" in str(body["problems"])


def test_debug_logging_names_every_upstream_request_with_its_size(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    """What the proxy fetched, one line per request (benchmarks/realpypi.py counts them)."""
    wheel = fake_pypi.add_wheel("debug-demo", "1.0")
    proxy = make_proxy(extra_args=["--log-level", "debug"], upstream={"prefetch": False})
    with urllib.request.urlopen(proxy.index_url + "debug-demo/", timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
        assert resp.status == 200
    proxy.wait_for_log(r"upstream GET \S+/simple/debug-demo/ -> 200")
    with urllib.request.urlopen(  # noqa: S310 - http://127.0.0.1
        f"{proxy.url}/packages/debug-demo/{wheel.name}", timeout=10
    ) as resp:
        assert resp.read() == wheel.read_bytes()
    line = proxy.wait_for_log(rf"upstream GET \S+/{wheel.name} -> 200")
    assert f"({wheel.stat().st_size} bytes)" in line
