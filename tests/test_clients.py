"""Real pip and uv, in isolated subprocesses, against the real server over the fake upstream.

Each test checks where the installed files came from: pip's ``--report`` URLs must point at
the proxy, and the fake upstream's request log shows what the proxy asked for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.utils import NormalizedName

from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e


def publish_upstream(fake: FakePyPI) -> None:
    fake.add_wheel("top-pkg", "1.0", requires_dist=["dep-one>=1.0"])
    fake.add_wheel("top-pkg", "2.0", requires_dist=["dep-one>=1.1"])
    fake.add_wheel("dep-one", "1.0")
    fake.add_wheel("dep-one", "1.1")
    fake.add_wheel("corp-lib", "99.0", modules={"corp_lib": "EVIL = True\n"})


def blob_count(proxy_folder: Path) -> int:
    root = proxy_folder / "cache" / "files"
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def test_pip_installs_an_upstream_package_with_its_dependency_through_the_proxy(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    publish_upstream(fake_pypi)
    proxy = make_proxy()
    report = run_pip_install(client_tmp, proxy.index_url, "top-pkg", target=client_tmp / "t")
    assert report.versions() == {"top-pkg": "2.0", "dep-one": "1.1"}
    assert all(i.url.startswith(proxy.url + "/packages/") for i in report.installed)
    assert (client_tmp / "t" / "top_pkg" / "__init__.py").exists()
    assert fake_pypi.count("/files/", method="GET") >= 2  # the proxy fetched them upstream


def test_uv_installs_private_and_upstream_packages_in_one_command(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    publish_upstream(fake_pypi)
    proxy = make_proxy()
    make_wheel(proxy.config.parent / "packages", "private-tool", "3.1", requires_dist=["dep-one"])
    python = make_venv(client_tmp / "venv")
    result = run_uv_pip_install(
        client_tmp, proxy.index_url, "top-pkg", "private-tool", python=python
    )
    assert result.installed == {"top-pkg": "2.0", "dep-one": "1.1", "private-tool": "3.1"}
    assert fake_pypi.count("/simple/private-tool/") == 0


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_private_name_wins_over_a_higher_public_version(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, client: str
) -> None:
    publish_upstream(fake_pypi)
    proxy = make_proxy()
    make_wheel(proxy.config.parent / "packages", "corp-lib", "1.0")
    if client == "pip":
        report = run_pip_install(
            client_tmp, proxy.index_url, "Corp_Lib", "top-pkg", target=client_tmp / "t"
        )
        assert report.versions().get(NormalizedName("corp-lib")) == "1.0"
        assert "EVIL" not in (client_tmp / "t" / "corp_lib" / "__init__.py").read_text()
    else:
        python = make_venv(client_tmp / "venv")
        result = run_uv_pip_install(client_tmp, proxy.index_url, "corp.lib", python=python)
        assert result.installed == {"corp-lib": "1.0"}
    assert [p for p in fake_pypi.paths() if "corp" in p] == []  # DC-01: never asked


def test_warm_reinstall_makes_no_upstream_request(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    publish_upstream(fake_pypi)
    proxy = make_proxy()
    run_pip_install(client_tmp / "cold", proxy.index_url, "top-pkg", target=client_tmp / "t1")
    fake_pypi.clear_log()
    report = run_pip_install(
        client_tmp / "warm", proxy.index_url, "top-pkg", target=client_tmp / "t2"
    )
    assert report.versions() == {"top-pkg": "2.0", "dep-one": "1.1"}
    python = make_venv(client_tmp / "venv")
    run_uv_pip_install(client_tmp / "uv", proxy.index_url, "top-pkg", python=python)
    assert fake_pypi.paths() == []


def test_install_works_from_the_cache_with_the_upstream_down_even_after_a_restart(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    publish_upstream(fake_pypi)
    proxy = make_proxy(upstream={"page_ttl": 0, "timeout": 2, "connect_timeout": 1})
    run_pip_install(client_tmp / "cold", proxy.index_url, "top-pkg", target=client_tmp / "t1")
    fake_pypi.stop()
    proxy.restart()  # pages and files are on disk: they survive a restart
    report = run_pip_install(
        client_tmp / "offline", proxy.index_url, "top-pkg", target=client_tmp / "t2"
    )
    assert report.versions() == {"top-pkg": "2.0", "dep-one": "1.1"}
    assert "serving stale page" in proxy.log_text()


def test_corrupt_upstream_file_is_refused_and_not_cached(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("dep-one", "1.0", modules={"dep_one": "z = 0\n" * 4000})
    proxy = make_proxy()
    fake_pypi.wrong_hash = True
    failed = run_pip_install(
        client_tmp / "bad",
        proxy.index_url,
        "dep-one",
        target=client_tmp / "t1",
        extra_args=["--retries", "0"],
        check=False,
    )
    assert failed.proc.returncode != 0
    assert blob_count(proxy.config.parent) <= 1  # the .metadata only, never the wheel
    assert "does not match the index" in proxy.log_text()
    fake_pypi.wrong_hash = False
    report = run_pip_install(
        client_tmp / "good", proxy.index_url, "dep-one", target=client_tmp / "t2"
    )
    assert report.versions() == {"dep-one": "1.0"}


def test_upstream_credentials_are_sent_but_never_logged(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("dep-one", "1.0")
    upstream = fake_pypi.simple_url.replace("http://", "http://mirror-user:topsecret@")
    proxy = make_proxy(upstream, extra_args=["--log-level", "DEBUG"])
    report = run_pip_install(client_tmp, proxy.index_url, "dep-one", target=client_tmp / "t")
    assert report.versions() == {"dep-one": "1.0"}
    (page_request,) = fake_pypi.requests_for("/simple/dep-one/")
    assert page_request.headers["Authorization"].startswith("Basic ")
    fake_pypi.stop()
    failed = run_pip_install(
        client_tmp / "down", proxy.index_url, "nothing-cached", target=client_tmp / "t2",
        extra_args=["--retries", "0"], check=False,
    )  # fmt: skip
    assert failed.proc.returncode != 0
    log = proxy.log_text()
    assert "mirror-user:***@" in log
    assert "topsecret" not in log
