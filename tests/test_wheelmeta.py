"""PEP 658 for every upstream wheel, whatever the upstream offers (issue 8).

An upstream without ``.metadata`` files still gets ``core-metadata`` advertised for its wheels;
the METADATA is read out of the wheel: from the cached wheel, else with Range requests (the
zip's end, then the member), else with one full download when the upstream ignores Range.
"""

from __future__ import annotations

import base64
import io
import random
import re
import struct
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxyindex.upstream import lazywheel
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
from tests.wheelmaker import wheel_metadata

Client = TestClient[Any, Any]
JSON = "application/vnd.pypi.simple.v1+json"
NO_PREFETCH = {"prefetch": False}  # the prefetcher would download the wheel on its own


def _zip(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED, **kw: Any) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression, **kw) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _read_lazily(data: bytes, tail_size: int = lazywheel.TAIL_SIZE) -> bytes:
    """The pure helpers in the order wheelmeta uses them, on an in-memory file."""
    tail = data[-tail_size:]
    where = lazywheel.parse_tail(tail, len(data))
    directory = data[where.offset : where.offset + where.size]
    member = lazywheel.find_metadata(lazywheel.parse_directory(directory))
    chunk = data[member.header_offset : member.header_offset + member.compressed_size + 65536]
    return lazywheel.inflate(member, lazywheel.member_data(member, chunk))


METADATA = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Dist: dep-one\n\n" * 50


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_lazy_read_returns_the_exact_metadata_bytes(compression: int) -> None:
    data = _zip(
        {"demo/__init__.py": b"x = 1\n" * 1000, "demo-1.0.dist-info/METADATA": METADATA},
        compression=compression,
    )
    assert _read_lazily(data) == METADATA
    assert _read_lazily(data, tail_size=200) == METADATA  # directory before the tail


def test_lazy_read_follows_a_zip64_end_record() -> None:
    """zipfile writes ZIP64 end records only past 65535 members or 4 GiB: rewrite one."""
    plain = _zip({"demo/x.py": b"x" * 500, "demo-1.0.dist-info/METADATA": METADATA})
    at = plain.rfind(b"PK\x05\x06")
    _sig, _d, _cd, _nd, count, cd_size, cd_offset, _c = struct.unpack_from("<IHHHHIIH", plain, at)
    record = struct.pack(
        "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_offset
    )
    locator = struct.pack("<IIQI", 0x07064B50, 0, at, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    data = plain[:at] + record + locator + end
    assert zipfile.ZipFile(io.BytesIO(data)).read("demo-1.0.dist-info/METADATA") == METADATA
    assert _read_lazily(data) == METADATA


def test_lazy_read_refuses_wheels_without_exactly_one_metadata() -> None:
    none = _zip({"demo/__init__.py": b""})
    two = _zip({"a-1.dist-info/METADATA": METADATA, "b-1.dist-info/METADATA": METADATA})
    for data in (none, two):
        with pytest.raises(lazywheel.BrokenWheel):
            _read_lazily(data)


def test_lazy_read_says_unsupported_when_the_end_record_is_out_of_reach() -> None:
    data = _zip({"demo-1.0.dist-info/METADATA": METADATA}, compression=zipfile.ZIP_STORED)
    with pytest.raises(lazywheel.Unsupported):
        lazywheel.parse_tail(data[-10:], len(data))


def test_inflate_refuses_a_member_that_does_not_match_its_crc() -> None:
    data = _zip({"demo-1.0.dist-info/METADATA": METADATA}, compression=zipfile.ZIP_STORED)
    where = lazywheel.parse_tail(data, len(data))
    member = lazywheel.find_metadata(
        lazywheel.parse_directory(data[where.offset : where.offset + where.size])
    )
    raw = lazywheel.member_data(member, data[member.header_offset :])
    with pytest.raises(lazywheel.BrokenWheel):
        lazywheel.inflate(member, raw[:-1] + b"!")


# --- through the server ----------------------------------------------------------------------


async def _page(client: Client, name: str, accept: str) -> str:
    resp = await client.get(f"/simple/{name}/", headers={"Accept": accept})
    assert resp.status == 200, await resp.text()
    return await resp.text()


def _wheel_gets(fake_pypi: FakePyPI, wheel: Path) -> list[str | None]:
    """The Range header of each GET of the wheel itself (None: a full GET)."""
    return [
        r.headers.get("Range")
        for r in fake_pypi.requests
        if r.method == "GET" and r.path.endswith("/" + wheel.name)
    ]


async def test_pages_of_an_upstream_without_metadata_advertise_it_for_wheels_only(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, sample_dists: list[Path]
) -> None:
    """H-07/J-04: ``true`` (hash unknown), M-03: never for an sdist."""
    fake_pypi.no_core_metadata = True
    for dist in sample_dists:
        fake_pypi.add_dist(dist)
    client = await make_app_client(upstream=NO_PREFETCH)
    doc = await (await client.get("/simple/sample/", headers={"Accept": JSON})).json(
        content_type=None
    )
    by_name = {f["filename"]: f for f in doc["files"]}
    wheel = next(d.name for d in sample_dists if d.name.endswith(".whl"))
    sdist = next(d.name for d in sample_dists if d.name.endswith(".tar.gz"))
    assert by_name[wheel]["core-metadata"] is True
    assert "core-metadata" not in by_name[sdist]
    html = await _page(client, "sample", "text/html")
    anchors = {m[1]: m[0] for m in re.findall(r"<a ([^>]*)>([^<]+)</a>", html)}
    assert 'data-core-metadata="true"' in anchors[wheel]
    assert 'data-dist-info-metadata="true"' in anchors[wheel]
    assert "data-core-metadata" not in anchors[sdist]


async def test_metadata_of_an_upstream_wheel_is_read_with_ranges_not_a_download(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.no_core_metadata = True
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["dep-one"])
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "demo-pkg", JSON)
    for _ in range(2):
        resp = await client.get(f"/packages/demo-pkg/{wheel.name}.metadata")
        assert resp.status == 200, await resp.text()
        assert await resp.read() == wheel_metadata(wheel)  # M-02: the exact bytes
    gets = _wheel_gets(fake_pypi, wheel)
    assert gets, "the upstream file was never asked for"
    assert all(g is not None and g.startswith("bytes=") for g in gets), gets  # no full GET
    assert len(gets) <= 3  # the second answer came from the cache


async def test_metadata_of_a_wheel_with_a_large_central_directory_takes_three_ranges(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """A central directory longer than the first suffix range is read with a range of its own."""
    fake_pypi.no_core_metadata = True
    modules = {
        f"big_pkg/module_with_a_rather_long_name_{i:05}.py": f"X = {i}\n" for i in range(1500)
    }
    wheel = fake_pypi.add_wheel("big-pkg", "1.0", requires_dist=["dep-one"], modules=modules)
    with zipfile.ZipFile(wheel) as zf:  # the directory alone is longer than the first range
        assert sum(46 + len(i.filename) for i in zf.infolist()) > lazywheel.TAIL_SIZE
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "big-pkg", JSON)
    resp = await client.get(f"/packages/big-pkg/{wheel.name}.metadata")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == wheel_metadata(wheel)
    gets = _wheel_gets(fake_pypi, wheel)
    assert len(gets) == 3 and all(g is not None for g in gets), gets


async def test_metadata_falls_back_to_one_download_when_the_upstream_ignores_range(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.no_core_metadata = True
    fake_pypi.ignore_range = True
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["dep-one"])
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "demo-pkg", JSON)
    for _ in range(2):
        resp = await client.get(f"/packages/demo-pkg/{wheel.name}.metadata")
        assert resp.status == 200, await resp.text()
        assert await resp.read() == wheel_metadata(wheel)
    fake_pypi.clear_log()
    whole = await client.get(f"/packages/demo-pkg/{wheel.name}")
    assert await whole.read() == wheel.read_bytes()
    assert fake_pypi.requests_for("/files/") == []  # the wheel was cached by the fallback


async def test_metadata_is_read_from_the_cached_wheel_without_asking_the_upstream(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.no_core_metadata = True
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", requires_dist=["dep-one"])
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "demo-pkg", JSON)
    assert await (await client.get(f"/packages/demo-pkg/{wheel.name}")).read() == (
        wheel.read_bytes()
    )
    fake_pypi.clear_log()
    resp = await client.get(f"/packages/demo-pkg/{wheel.name}.metadata")
    assert resp.status == 200
    assert await resp.read() == wheel_metadata(wheel)
    assert fake_pypi.requests_for("/files/") == []


async def test_metadata_of_a_wheel_is_a_502_when_the_upstream_fails(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.no_core_metadata = True
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0")
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "demo-pkg", JSON)
    fake_pypi.status = {"/files/": 500}
    resp = await client.get(f"/packages/demo-pkg/{wheel.name}.metadata")
    assert resp.status == 502


# --- real clients ----------------------------------------------------------------------------


def _publish(fake: FakePyPI) -> None:
    fake.no_core_metadata = True
    fake.add_wheel("top-pkg", "1.0", requires_dist=["dep-one>=1.0"])
    fake.add_wheel("dep-one", "1.0")


def _upstream_wheel_gets(fake: FakePyPI) -> list[str | None]:
    return [
        r.headers.get("Range")
        for r in fake.requests
        if r.method == "GET" and r.path.endswith(".whl")
    ]


@pytest.mark.e2e
def test_uv_lock_reads_metadata_files_and_never_a_whole_wheel(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    """uv fetches the advertised ``.metadata`` instead of range-reading wheels itself; the
    proxy range-reads them upstream: no wheel is downloaded whole for a lock."""
    _publish(fake_pypi)
    proxy = make_proxy(upstream=NO_PREFETCH)
    project = client_tmp / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "proj"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
        'dependencies = ["top-pkg"]\n'
    )
    env = client_env(client_tmp, UV_NO_CONFIG="1", UV_INDEX_URL=proxy.index_url)
    run([*uv_command(), "lock", "--index-url", proxy.index_url], env, cwd=project)
    lock = (project / "uv.lock").read_text()
    assert 'name = "top-pkg"' in lock and 'name = "dep-one"' in lock
    log = proxy.log_text()
    assert ".whl.metadata" in log, log
    gets = _upstream_wheel_gets(fake_pypi)
    assert gets and all(g is not None for g in gets), gets  # Range only, never a full GET


@pytest.mark.e2e
@pytest.mark.parametrize("client", ["pip", "uv"])
def test_installers_succeed_through_an_upstream_without_metadata_files(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, client: str
) -> None:
    _publish(fake_pypi)
    proxy = make_proxy(upstream=NO_PREFETCH)
    if client == "pip":
        report = run_pip_install(client_tmp, proxy.index_url, "top-pkg", target=client_tmp / "t")
        assert report.versions() == {"top-pkg": "1.0", "dep-one": "1.0"}
    else:
        python = make_venv(client_tmp / "venv")
        result = run_uv_pip_install(
            client_tmp, proxy.index_url, "top-pkg", python=python, extra_args=["--no-config"]
        )
        assert result.installed == {"top-pkg": "1.0", "dep-one": "1.0"}
    assert ".whl.metadata" in proxy.log_text()


@pytest.mark.e2e
def test_poetry_lock_reads_metadata_files_of_an_upstream_without_them(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    _publish(fake_pypi)
    proxy = make_proxy(upstream=NO_PREFETCH)
    project = client_tmp / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0.1.0"\n'
        f'requires-python = ">={sys.version_info.major}.{sys.version_info.minor}"\n'
        'dependencies = ["top-pkg"]\n\n[tool.poetry]\npackage-mode = false\n'
    )
    env = client_env(client_tmp / "poetry", POETRY_NO_INTERACTION="1")
    poetry = [sys.executable, "-m", "poetry"]
    run([*poetry, "source", "add", "--priority=primary", "proxyindex", proxy.index_url],
        env, cwd=project)  # fmt: skip
    run([*poetry, "lock"], env, cwd=project, timeout=300)
    lock = tomllib.loads((project / "poetry.lock").read_text())
    assert {p["name"]: p["version"] for p in lock["package"]} == {
        "top-pkg": "1.0",
        "dep-one": "1.0",
    }
    assert ".whl.metadata" in proxy.log_text()
    gets = _upstream_wheel_gets(fake_pypi)
    assert all(g is not None for g in gets), gets  # never a whole wheel to lock


async def test_metadata_lying_in_the_first_suffix_range_takes_one_range(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """The .dist-info is written last, next to the directory: the suffix range read for the
    directory holds METADATA too (a small wheel: the whole file), so one round trip, not two."""
    fake_pypi.no_core_metadata = True
    noise = base64.b64encode(random.Random(7).randbytes(150_000)).decode()  # incompressible
    modules = {"mid_pkg/data.py": f"X = '{noise}'\n"}
    wheel = fake_pypi.add_wheel("mid-pkg", "1.0", requires_dist=["dep-one"], modules=modules)
    assert wheel.stat().st_size > 2 * lazywheel.TAIL_SIZE  # not in the range whole
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(i for i in zf.infolist() if i.filename.endswith(".dist-info/METADATA"))
        assert wheel.stat().st_size - metadata.header_offset < lazywheel.TAIL_SIZE
    client = await make_app_client(upstream=NO_PREFETCH)
    await _page(client, "mid-pkg", JSON)
    resp = await client.get(f"/packages/mid-pkg/{wheel.name}.metadata")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == wheel_metadata(wheel)
    gets = _wheel_gets(fake_pypi, wheel)
    assert gets == [f"bytes=-{lazywheel.TAIL_SIZE}"], gets
