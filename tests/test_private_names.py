"""Private names are safe by default: an upload never hides a public project by accident, and
names that were private stay private: removing files never hands a name to the upstream.

Dependency confusion by deletion: a private ``corp-lib`` whose last version is removed must not
make the next install fetch the upstream's ``corp-lib 99``. The name stays private (a tombstone)
until ``proxyindex private release``, a removed filename only comes back with the same bytes,
and reserved names say why they answer 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from aiohttp import FormData
from packaging.utils import NormalizedName

from proxyindex.private.storage import PrivateStorage
from tests.clients import make_venv, run_pip_install, run_twine_upload, run_uv_pip_install
from tests.conftest import AppClient, MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.test_upload import PIP_ACCEPT, form, upload
from tests.wheelmaker import make_wheel

# New tests upload without an htpasswd and names the fake upstream also has: say so.
OPEN = {"auth": {"anonymous_upload": True}, "private": {"refuse_shadowing_uploads": False}}


def proxyindex(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyindex", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def remove(client: AppClient, name: str, version: str) -> int:
    removal = FormData({":action": "remove_pkg", "name": name, "version": version})
    return (await client.post("/", data=removal)).status


async def status_becomes(client: AppClient, path: str, status: int, timeout: float = 10) -> str:
    """Poll until ``path`` answers ``status`` (the packages folder is scanned every second)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(path, headers={"Accept": PIP_ACCEPT})
        text = await resp.text()
        if resp.status == status or time.monotonic() > deadline:
            assert resp.status == status, text
            return text
        await asyncio.sleep(0.2)


async def test_removing_the_last_private_version_keeps_the_name_private(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    public = fake_pypi.add_wheel("corp-lib", "99.0")
    client = await make_app_client(**OPEN)
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    assert (await upload(client, form(wheel))).status == 200
    fake_pypi.clear_log()
    assert await remove(client, "corp-lib", "1.0") == 200
    page = await client.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    assert page.status == 404
    assert "proxyindex private release corp-lib" in await page.text()
    assert (await client.get(f"/packages/corp-lib/{public.name}")).status == 404
    assert (await client.get("/pypi/corp-lib/json")).status == 404
    assert fake_pypi.paths() == []  # the upstream was never asked


async def test_a_file_deleted_by_hand_leaves_a_tombstone_that_survives_a_cache_wipe(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0")
    dropped = make_wheel(tmp_path / "packages" / "team", "corp-lib", "1.0")
    client = await make_app_client()
    await status_becomes(client, "/simple/corp-lib/", 200)
    dropped.unlink()
    await status_becomes(client, "/simple/corp-lib/", 404)
    await client.close()
    shutil.rmtree(tmp_path / "cache")  # the record lives with the packages, not in the cache
    restarted = await make_app_client()
    page = await restarted.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    assert page.status == 404
    assert "stays private" in await page.text()
    assert fake_pypi.paths() == []


async def test_a_removed_filename_comes_back_only_with_the_same_bytes(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    other = make_wheel(tmp_path / "other", "corp-lib", "1.0", modules={"corp_lib": "x = 2"})
    client = await make_app_client(**OPEN)
    assert (await upload(client, form(wheel))).status == 200
    assert await remove(client, "corp-lib", "1.0") == 200
    assert (await upload(client, form(wheel))).status == 200  # the same bytes: fine
    assert await remove(client, "corp-lib", "1.0") == 200
    resp = await upload(client, form(other))
    assert resp.status == 400
    assert (await resp.text()).startswith("This filename has already been used")
    assert not (tmp_path / "packages" / "corp-lib" / wheel.name).exists()
    respelt = make_wheel(tmp_path / "respelt", "corp-lib", "1.0.0", modules={"corp_lib": "y"})
    resp = await upload(client, form(respelt))  # 1.0.0 is release 1.0 under another spelling
    assert resp.status == 400
    assert wheel.name in await resp.text()
    newer = make_wheel(tmp_path / "newer", "corp-lib", "1.1")
    assert (await upload(client, form(newer))).status == 200  # a new version is welcome


async def test_release_hands_the_name_back_to_the_upstream_without_a_restart(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0")
    packages = tmp_path / "packages"
    kept = make_wheel(packages, "kept-lib", "1.0")
    client = await make_app_client(**OPEN)
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    assert (await upload(client, form(wheel))).status == 200
    assert await remove(client, "corp-lib", "1.0") == 200
    listed = proxyindex("private", "list-tombstones", "--packages-dir", packages)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [f"corp-lib\tremoved: {wheel.name}"]
    refused = proxyindex("private", "release", "kept-lib", "--packages-dir", packages)
    assert refused.returncode == 1
    assert "still has 1 private file" in refused.stderr
    assert kept.exists()
    released = proxyindex("private", "release", "Corp_Lib", "--packages-dir", packages)
    assert released.returncode == 0, released.stderr
    text = await status_becomes(client, "/simple/corp-lib/", 200)
    assert "99.0" in text
    again = proxyindex("private", "list-tombstones", "--packages-dir", packages)
    assert again.stdout == ""


async def test_a_reserved_name_without_files_answers_404_saying_it_is_reserved(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("acme-tool", "6.6.6")
    client = await make_app_client(private={"reserved": ["acme-*"]})
    page = await client.get("/simple/acme-tool/")
    assert page.status == 404
    assert "reserved" in await page.text()
    assert page.reason is not None and "private.reserved" in page.reason
    missing = await client.get("/simple/nothing-here/")
    assert (await missing.text()).strip() == "no project named 'nothing-here'"
    assert fake_pypi.paths() == ["/simple/nothing-here/"]


@pytest.mark.e2e
def test_pip_and_uv_never_get_the_upstream_namesake_of_a_removed_private_name(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("corp-lib", "99.0", modules={"corp_lib": "EVIL = True\n"})
    proxy = make_proxy(auth=OPEN["auth"], private=OPEN["private"])
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    run_twine_upload(client_tmp / "up", proxy.upload_url, [wheel])
    body = urllib.parse.urlencode({":action": "remove_pkg", "name": "corp-lib", "version": "1.0"})
    # what `curl -d` sends (pypiserver's remove_pkg); the URL is http://127.0.0.1
    with urllib.request.urlopen(proxy.upload_url, body.encode(), timeout=30) as resp:  # noqa: S310
        assert resp.status == 200
    fake_pypi.clear_log()
    pip = run_pip_install(
        client_tmp / "pip", proxy.index_url, "corp-lib", target=client_tmp / "t", check=False
    )
    assert pip.proc.returncode != 0
    assert not (client_tmp / "t" / "corp_lib").exists()
    uv = run_uv_pip_install(
        client_tmp / "uv",
        proxy.index_url,
        "corp-lib",
        python=make_venv(client_tmp / "venv"),
        check=False,
    )
    assert uv.proc.returncode != 0
    assert [p for p in fake_pypi.paths() if "corp" in p] == []


def test_a_lost_packages_mount_forgets_no_tombstone_and_is_not_recreated(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    wheel = make_wheel(packages, "corp-lib", "1.0")
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    store = PrivateStorage(packages, tmp_path / "meta")
    store.rescan()
    name = NormalizedName("corp-lib")
    assert store.page(name) is not None  # hashed while it is there
    wheel.unlink()
    store.rescan()
    assert store.was_private(name) and not store.has(name)
    packages.rename(tmp_path / "elsewhere")  # a volume that went away
    store.rescan()
    assert store.was_private(name)
    assert not packages.exists()
    store.close()
    # A new cache folder: the log in the packages folder carries the tombstone.
    restarted = PrivateStorage(tmp_path / "elsewhere", tmp_path / "meta2")
    restarted.rescan()
    assert restarted.was_private(name)
    assert restarted.private_names.removed_files(name) == {wheel.name: sha256}
    restarted.close()


@pytest.mark.e2e
def test_twine_cannot_hide_a_public_project_by_default_so_uv_still_installs_it(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    """The issue's story: one upload of ``six`` made ``six>=1.16`` fail for everyone."""
    fake_pypi.add_wheel("six", "1.16.0")
    proxy = make_proxy(auth={"anonymous_upload": True})  # the shadowing default is on
    mine = make_wheel(tmp_path / "dist", "six", "1.0")
    refused = run_twine_upload(client_tmp / "up", proxy.upload_url, [mine], check=False)
    assert refused.returncode != 0
    assert "private.refuse_shadowing_uploads" in refused.stdout + refused.stderr
    uv = run_uv_pip_install(
        client_tmp / "uv", proxy.index_url, "six>=1.16", python=make_venv(client_tmp / "venv")
    )
    assert uv.installed == {"six": "1.16.0"}
