"""Yanking private releases (PEP 592, issue 11 §3): stored in the packages folder, shown on
the simple pages (``data-yanked``, JSON ``yanked``) and in the JSON API, honoured by pip and
uv (a yanked release is skipped unless pinned with ``==``)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from proxyindex.private.storage import PrivateStorage
from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.conftest import MakeProxy
from tests.serverproc import ProxyServer
from tests.wheelmaker import make_wheel, sha256_file

NAME = canonicalize_name("corp-yank")


def _storage(packages: Path, meta: Path) -> PrivateStorage:
    storage = PrivateStorage(packages, meta)
    storage.rescan()
    return storage


def test_yank_marks_every_file_of_the_release_and_survives_a_restart(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    wheel = make_wheel(packages / NAME, "corp-yank", "2.0")
    make_wheel(packages / NAME, "corp-yank", "1.0")
    storage = _storage(packages, tmp_path / "meta")
    try:
        generation = storage.generation
        assert storage.yank(NAME, "2.0.0", "broken build") == [(wheel.name, sha256_file(wheel))]
        assert storage.generation > generation  # pages are rendered again
        page = storage.page(NAME)
        assert page is not None
        yanked = {f.filename: f.yanked for f in page.files}
        assert yanked == {wheel.name: "broken build", "corp_yank-1.0-py3-none-any.whl": False}
        assert storage.yank(NAME, "3.0", "no such release") == []  # nothing written
    finally:
        storage.close()
    again = _storage(packages, tmp_path / "meta2")  # a restart, or another worker
    try:
        page = again.page(NAME)
        assert page is not None and page.file(wheel.name) is not None
        assert page.file(wheel.name).yanked == "broken build"  # type: ignore[union-attr]
        assert again.unyank(NAME, "2.0") == [(wheel.name, sha256_file(wheel))]
        page = again.page(NAME)
        assert page is not None
        assert all(f.yanked is False for f in page.files)
    finally:
        again.close()
    assert not (packages / ".proxyindex" / "yanks" / f"{NAME}.json").exists()


def test_yank_without_reason_is_true(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    wheel = make_wheel(packages, "corp-yank", "1.0")
    storage = _storage(packages, tmp_path / "meta")
    try:
        storage.yank(NAME, "1.0", "")
        page = storage.page(NAME)
        assert page is not None and page.file(wheel.name) is not None
        assert page.file(wheel.name).yanked is True  # type: ignore[union-attr]
    finally:
        storage.close()


def _get(url: str, accept: str = "text/html") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1
        body: bytes = response.read()
        return body


def _wait_for(server: ProxyServer, needle: bytes) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        body = _get(f"{server.index_url}{NAME}/")
        if needle in body or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


@pytest.mark.e2e
def test_pip_and_uv_skip_a_yanked_private_release_unless_pinned(
    make_proxy: MakeProxy, client_tmp: Path
) -> None:
    server = make_proxy(start=False)
    folder = server.config.parent
    packages = folder / "packages"
    make_wheel(packages / NAME, "corp-yank", "1.0")
    new = make_wheel(packages / NAME, "corp-yank", "2.0")
    server.start()
    # Another process on the host (a second worker, the CLI) yanks through the same folders;
    # the server hears of it through the changeboard.
    storage = _storage(packages, folder / "cache" / "private-meta")
    try:
        storage.yank(NAME, "2.0", 'broken "build" <2.0>')
    finally:
        storage.close()
    html = _wait_for(server, b"data-yanked")
    assert f"{new.name}#sha256=".encode() in html
    assert b'data-yanked="broken &quot;build&quot; &lt;2.0&gt;"' in html
    page = json.loads(_get(f"{server.index_url}{NAME}/", "application/vnd.pypi.simple.v1+json"))
    by_name = {f["filename"]: f for f in page["files"]}
    assert by_name[new.name]["yanked"] == 'broken "build" <2.0>'
    assert by_name["corp_yank-1.0-py3-none-any.whl"]["yanked"] is False
    api = json.loads(_get(f"{server.url}/pypi/{NAME}/json", "application/json"))
    assert api["info"]["version"] == "1.0"  # the newest release not yanked
    assert api["releases"]["2.0"][0]["yanked"] is True
    assert api["releases"]["2.0"][0]["yanked_reason"] == 'broken "build" <2.0>'
    assert api["releases"]["1.0"][0]["yanked"] is False

    pip = run_pip_install(client_tmp / "pip", server.index_url, NAME, target=client_tmp / "t1")
    assert pip.versions() == {NAME: "1.0"}
    pinned = run_pip_install(
        client_tmp / "pip2", server.index_url, f"{NAME}==2.0", target=client_tmp / "t2"
    )
    assert pinned.versions() == {NAME: "2.0"}
    python = make_venv(client_tmp / "venv")
    uv = run_uv_pip_install(client_tmp / "uv", server.index_url, NAME, python=python)
    assert uv.installed == {NAME: "1.0"}
    python2 = make_venv(client_tmp / "venv2")
    uv2 = run_uv_pip_install(client_tmp / "uv2", server.index_url, f"{NAME}==2.0", python=python2)
    assert uv2.installed == {NAME: "2.0"}
