"""The ProxyServer helper and the client runners work against the real server process.

These check the harness (start, URL, logs, restart on the same port, a clear error when the
server cannot start, twine and pip wired up), not proxyindex's behaviour, which has its own tests.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

import pytest

from tests.clients import run_pip_install, run_twine_upload
from tests.serverproc import ProxyServer, ServerStartError, write_config

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import MakeProxy
    from tests.fakepypi import FakePyPI

pytestmark = pytest.mark.e2e


def health(url: str) -> int:
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
        return int(resp.status)


def test_proxy_announces_url_and_restarts_on_the_same_port(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    assert proxy.url.startswith("http://127.0.0.1:")
    assert proxy.index_url == proxy.url + "/simple/"
    assert health(proxy.url) == 200
    mark = proxy.log_mark()
    url = proxy.url
    proxy.restart()
    assert proxy.url == url
    assert health(proxy.url) == 200
    assert "listening on" in proxy.log_since(mark)
    assert proxy.stop() == 0  # SIGTERM is a clean shutdown
    assert not proxy.running


def test_bad_config_fails_fast_with_the_server_output(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", server={"no_such_key": 1})
    with pytest.raises(ServerStartError, match="no_such_key"):
        ProxyServer(config, startup_timeout=10).start()


def test_twine_uploads_and_pip_installs_through_the_proxy(
    make_proxy: MakeProxy,
    fake_pypi: FakePyPI,
    sample_dists: list[Path],
    client_tmp: Path,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(auth={"anonymous_upload": True})
    run_twine_upload(client_tmp, proxy.upload_url, sample_dists)
    report = run_pip_install(client_tmp, proxy.index_url, "sample", target=tmp_path / "t")
    assert report.versions() == {"sample": "0.1.0"}
    assert report.installed[0].url.startswith(proxy.url + "/")
    assert fake_pypi.count("/files/") == 0
