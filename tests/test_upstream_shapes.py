"""Upstream shapes real clients must get right through the proxy (issue 8 §2), driven by real
pip and uv: a static tree served by a plain file server (``python -m http.server``: directory
listings for the root and for a project folder, hand-written PEP 503 pages with relative and
absolute URLs, files on another host, ``#md5=``-only or no hash, an HTML-escaped
``data-requires-python``, ``data-yanked`` with and without a reason, ``data-dist-info-metadata``
and ``data-core-metadata``), and JSON upstreams at every api-version from 1.0 to 1.4."""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.conftest import MakeProxy
from tests.fakepypi import JSON_TYPE, FakePyPI
from tests.wheelmaker import make_wheel, wheel_metadata

pytestmark = pytest.mark.e2e


class StaticServer:
    """``python -m http.server`` on a folder: the plainest index there is."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"port (\d+)", line)
        assert found, line
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def static_servers(tmp_path: Path) -> Iterator[tuple[Path, StaticServer, Path, StaticServer]]:
    index_root, files_root = tmp_path / "static", tmp_path / "faraway"
    (index_root / "simple").mkdir(parents=True)
    files_root.mkdir()
    index, files = StaticServer(index_root), StaticServer(files_root)
    yield index_root, index, files_root, files
    index.close()
    files.close()


def anchor(href: str, filename: str, **attrs: str) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{html.escape(v)}"' for k, v in attrs.items())
    return f'<a href="{html.escape(href)}"{extra}>{html.escape(filename)}</a><br/>\n'


def metadata_file(wheel: Path) -> str:
    data = wheel_metadata(wheel)
    wheel.with_name(wheel.name + ".metadata").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def build_static_tree(root: Path, files_root: Path, files_url: str) -> None:
    """simple/ (a directory listing), simple/listed/ (a directory listing of its files),
    simple/shapes/index.html and simple/faraway/index.html (files on another host)."""
    listed = root / "simple" / "listed"
    listed.mkdir()
    make_wheel(listed, "listed", "1.0")
    far = make_wheel(files_root, "faraway", "1.0")
    (root / "simple" / "faraway").mkdir()
    (root / "simple" / "faraway" / "index.html").write_text(
        "<html><body>"
        + anchor(
            f"{files_url}/{far.name}#sha256={hashlib.sha256(far.read_bytes()).hexdigest()}",
            far.name,
        )
        + "</body></html>"
    )
    store = root / "files"
    store.mkdir()
    deps = ["faraway", "listed"]
    one = make_wheel(store, "shapes", "1.0", requires_dist=deps)
    two = make_wheel(store, "shapes", "2.0", requires_dist=deps)
    three = make_wheel(store, "shapes", "3.0", requires_dist=deps)
    four = make_wheel(store, "shapes", "4.0", requires_dist=deps)
    five = make_wheel(store, "shapes", "5.0", requires_python=">=3.99")
    md5 = hashlib.md5(one.read_bytes(), usedforsecurity=False).hexdigest()
    anchors = [
        # relative URL, md5 only, the old metadata attribute name
        anchor(
            f"../../files/{one.name}#md5={md5}",
            one.name,
            data_dist_info_metadata=f"sha256={metadata_file(one)}",
        ),
        # absolute path on the same host, no hash at all, core-metadata without a hash
        anchor(f"/files/{two.name}", two.name, data_core_metadata="true"),
        _mark(anchor(f"../../files/{three.name}", three.name), "data-yanked"),
        anchor(f"../../files/{four.name}", four.name, data_yanked="broken <build>"),
        anchor(f"../../files/{five.name}", five.name, data_requires_python=">=3.99,!=4.0.*"),
    ]
    metadata_file(two)
    (root / "simple" / "shapes").mkdir()
    (root / "simple" / "shapes" / "index.html").write_text(
        "<!DOCTYPE html><html><head><title>Links for shapes</title></head><body>"
        + "".join(anchors)
        + "</body></html>"
    )


def _mark(tag: str, attribute: str) -> str:
    return tag.replace("<a ", f"<a {attribute} ", 1)


def test_pip_and_uv_install_through_a_static_tree_on_a_plain_file_server(
    make_proxy: MakeProxy,
    static_servers: tuple[Path, StaticServer, Path, StaticServer],
    client_tmp: Path,
    tmp_path: Path,
) -> None:
    root, index, files_root, files = static_servers
    build_static_tree(root, files_root, files.url)
    proxy = make_proxy(f"{index.url}/simple/")
    report = run_pip_install(client_tmp / "pip", proxy.index_url, "shapes", target=tmp_path / "a")
    # 5.0 needs Python >= 3.99 (escaped in the page), 4.0 and 3.0 are yanked: 2.0.
    assert report.versions() == {"shapes": "2.0", "faraway": "1.0", "listed": "1.0"}
    pinned = run_pip_install(
        client_tmp / "pip", proxy.index_url, "shapes==1.0", target=tmp_path / "b"
    )
    assert pinned.versions() == {"shapes": "1.0", "faraway": "1.0", "listed": "1.0"}  # #md5=
    yanked = run_pip_install(
        client_tmp / "pip", proxy.index_url, "shapes==4.0", target=tmp_path / "c"
    )
    # A pinned yanked release still installs (PEP 592).
    assert yanked.versions() == {"shapes": "4.0", "faraway": "1.0", "listed": "1.0"}
    python = make_venv(tmp_path / "venv")
    result = run_uv_pip_install(client_tmp / "uv", proxy.index_url, "shapes", python=python)
    assert result.installed == {"shapes": "2.0", "faraway": "1.0", "listed": "1.0"}
    python = make_venv(tmp_path / "venv1")
    result = run_uv_pip_install(client_tmp / "uv1", proxy.index_url, "shapes==1.0", python=python)
    assert result.installed == {"shapes": "1.0", "faraway": "1.0", "listed": "1.0"}


async def test_the_root_of_a_plain_file_server_lists_its_folders(
    make_proxy: MakeProxy, static_servers: tuple[Path, StaticServer, Path, StaticServer]
) -> None:
    root, index, files_root, files = static_servers
    build_static_tree(root, files_root, files.url)
    proxy = make_proxy(f"{index.url}/simple/")
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.index_url, headers={"Accept": JSON_TYPE}) as resp,
    ):
        names = {p["name"] for p in (await resp.json(content_type=None))["projects"]}
    assert {"faraway", "listed", "shapes"} <= names


def json_page(version: str, name: str, entries: list[dict[str, Any]]) -> bytes:
    """A PEP 691 page as an upstream at ``version`` would write it: sizes from 1.1, provenance
    from 1.3, project-status at 1.4."""
    major_minor = int(version.split(".")[1])
    files = []
    for entry in entries:
        item = {k: v for k, v in entry.items() if k != "size" or major_minor >= 1}
        if major_minor >= 3:
            item["provenance"] = None
        files.append(item)
    doc: dict[str, Any] = {"meta": {"api-version": version}, "name": name, "files": files}
    if major_minor >= 1:
        doc["versions"] = ["1.0"]
    if major_minor >= 4:
        doc["project-status"] = {"status": "active"}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2", "1.3", "1.4"])
def test_uv_and_pip_install_from_json_upstreams_of_every_api_version(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path, version: str
) -> None:
    wheels = {
        "jtop": fake_pypi.add_wheel("jtop", "1.0", requires_dist=["jdep"]),
        "jdep": fake_pypi.add_wheel("jdep", "1.0"),
    }
    pages = {}
    for name, wheel in wheels.items():
        entry = {
            "filename": wheel.name,
            "url": fake_pypi.file_url(wheel.name),
            "hashes": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
            "size": wheel.stat().st_size,
        }
        pages[name] = (JSON_TYPE, json_page(version, name, [entry]))
    fake_pypi.raw_pages = pages
    proxy = make_proxy()
    python = make_venv(tmp_path / "venv")
    result = run_uv_pip_install(client_tmp / "uv", proxy.index_url, "jtop", python=python)
    assert result.installed == {"jtop": "1.0", "jdep": "1.0"}
    report = run_pip_install(client_tmp / "pip", proxy.index_url, "jtop", target=tmp_path / "t")
    assert report.versions() == {"jtop": "1.0", "jdep": "1.0"}
