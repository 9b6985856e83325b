"""Fetch-ahead on behalf of the client that asked: its platform, its Python, its subcommand.

The User-Agent pip and uv send (a "linehaul" JSON after the name) says what the client will
install; fetching ahead for the server's own platform instead takes the wrong wheels (issue 12),
and fetching files for ``uv lock`` (metadata only) takes wheels nobody asks for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxyindex.upstream.clientprofile import profile_from_user_agent
from proxyindex.upstream.prefetch import dependencies
from tests.clients import client_env, run, uv_command
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI


def linehaul(tool: str, **overrides: object) -> str:
    """A User-Agent as pip (or uv) sends it; ``overrides`` replace top-level keys."""
    data: dict[str, object] = {
        "installer": {"name": tool, "version": "1.0"},
        "python": "3.11.7",
        "implementation": {"name": "CPython", "version": "3.11.7"},
        "distro": {"name": "Debian GNU/Linux", "libc": {"lib": "glibc", "version": "2.36"}},
        "system": {"name": "Linux", "release": "6.1"},
        "cpu": "x86_64",
    }
    data.update(overrides)
    return f"{tool}/1.0 {json.dumps(data)}"


WINDOWS = linehaul(
    "pip", system={"name": "Windows", "release": "10"}, cpu="AMD64", distro={"name": "Windows"}
)
MAC_ARM = linehaul(
    "pip", system={"name": "Darwin", "release": "23.0"}, cpu="arm64",
    distro={"name": "macOS", "version": "14.2"},
)  # fmt: skip


def test_a_windows_pip_gets_windows_tags_and_markers() -> None:
    profile = profile_from_user_agent(WINDOWS)
    assert profile.installer == "pip" and profile.platform == "win_amd64"
    assert any(t.platform == "win_amd64" and t.abi == "cp311" for t in profile.tags)
    assert not any("linux" in t.platform for t in profile.tags)
    assert profile.markers["sys_platform"] == "win32"
    assert profile.wants_files


def test_a_mac_gets_macos_tags_down_to_older_releases() -> None:
    profile = profile_from_user_agent(MAC_ARM)
    platforms = {t.platform for t in profile.tags}
    assert "macosx_14_0_arm64" in platforms and "macosx_11_0_arm64" in platforms
    assert "macosx_10_9_x86_64" not in platforms
    assert "macosx_14_0_universal2" in platforms


def test_linux_tags_cover_manylinux_up_to_the_clients_glibc() -> None:
    platforms = {t.platform for t in profile_from_user_agent(linehaul("uv")).tags}
    assert {"manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= platforms
    assert "manylinux_2_37_x86_64" not in platforms
    musl = linehaul("uv", distro={"libc": {"lib": "musl", "version": "1.2"}})
    musl_platforms = {t.platform for t in profile_from_user_agent(musl).tags}
    assert "musllinux_1_2_x86_64" in musl_platforms
    assert not any(p.startswith("manylinux") for p in musl_platforms)


def test_uv_lock_and_compile_want_no_files_but_uv_install_does() -> None:
    def uv(*sub: str) -> bool:
        installer = {"name": "uv", "version": "0.13", "subcommand": list(sub)}
        return profile_from_user_agent(linehaul("uv", installer=installer)).wants_files

    assert not uv("lock") and not uv("pip", "compile")
    assert uv("pip", "install") and uv("sync")


@pytest.mark.parametrize(
    "agent",
    [None, "", "curl/8.0", "pip/1.0", "pip/1.0 {not json", "pip/1.0 [1, 2]", "uv/1 {}",
     linehaul("pip", python="three", cpu=7), linehaul("pip", implementation={"name": "PyPy"})],
)  # fmt: skip
def test_a_user_agent_that_says_nothing_useful_is_the_unknown_client(agent: str | None) -> None:
    profile = profile_from_user_agent(agent)
    # Fetch-ahead falls back to this server's own tags and environment, and still fetches files.
    assert profile.tags == {} and profile.platform == ""
    assert profile.wants_files


def test_dependencies_follow_the_clients_markers() -> None:
    metadata = b'Name: pkg\nRequires-Dist: pywin32; sys_platform == "win32"\nRequires-Dist: a\n\n'
    windows = profile_from_user_agent(WINDOWS).markers
    linux = profile_from_user_agent(linehaul("pip")).markers
    assert set(dict(dependencies(metadata, windows))) == {"pywin32", "a"}
    assert set(dict(dependencies(metadata, linux))) == {"a"}


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_fetch_ahead_takes_the_wheel_and_dependencies_of_the_clients_platform(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("app", "1.0", requires_dist=['winonly; sys_platform == "win32"', "lib"])
    fake_pypi.add_wheel("lib", "1.0", tag="cp311-cp311-win_amd64")
    fake_pypi.add_wheel("lib", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    fake_pypi.add_wheel("winonly", "1.0")
    client = await make_app_client()
    response = await client.get("/simple/app/", headers={"User-Agent": WINDOWS})
    assert response.status == 200

    def fetched(fragment: str) -> bool:
        return any(fragment in p for p in fake_pypi.paths())

    await _until(lambda: fetched("/winonly-1.0-py3-none-any.whl") and fetched("win_amd64.whl"))
    await asyncio.sleep(0.3)
    assert not fetched("manylinux")  # this server runs on Linux; the client does not


@pytest.mark.e2e
def test_uv_lock_makes_the_proxy_fetch_metadata_but_no_files_ahead(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("leaf", "1.0")
    fake_pypi.add_wheel("mid", "1.0", requires_dist=["leaf"])
    fake_pypi.add_wheel("top", "1.0", requires_dist=["mid"])
    proxy = make_proxy()
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.8"\n'
        'dependencies = ["top"]\n'
    )
    env = client_env(client_tmp / "lock", UV_NO_CONFIG="1", UV_DEFAULT_INDEX=proxy.index_url)
    run([*uv_command(), "lock"], env, cwd=project)
    assert 'name = "leaf"' in (project / "uv.lock").read_text()
    time.sleep(1.0)  # fetch-ahead runs in the background: give it time to do anything wrong
    paths = fake_pypi.paths()
    assert any(p.endswith("leaf-1.0-py3-none-any.whl.metadata") for p in paths)
    assert [p for p in paths if p.endswith(".whl")] == []


async def test_files_fetched_ahead_are_a_few_at_a_time_and_never_delay_the_clients_own(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """Fetch-ahead shares the link with the client's own requests: at most 4 files at once
    (issue 12: ~40 transfers started together during resolution); a client's own request
    for a file never waits for a slot."""
    deps = [f"dep{i}" for i in range(10)]
    for dep in deps:
        fake_pypi.add_wheel(dep, "1.0")
    fake_pypi.add_wheel("top", "1.0", requires_dist=deps)
    fake_pypi.add_wheel("other", "1.0")
    fake_pypi.file_delay = 1.0
    client = await make_app_client()
    assert (await client.get("/simple/top/", headers={"User-Agent": linehaul("pip")})).status == 200
    await _until(lambda: fake_pypi.files_peak == 4)
    page = await client.get(
        "/simple/other/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    (entry,) = (await page.json())["files"]
    assert (await client.get(entry["url"])).status == 200
    assert fake_pypi.files_peak == 5  # its own transfer ran beside the four, not after them

    def files_fetched() -> int:
        return sum(p.endswith(".whl") for p in fake_pypi.paths())

    await _until(lambda: files_fetched() == 12, seconds=20)
    assert fake_pypi.files_peak == 5
