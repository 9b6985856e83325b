"""The legacy upload API and access control: every bad input gets its 4xx and writes nothing."""

from __future__ import annotations

import asyncio
import base64
import errno
import gzip
import hashlib
import io
import logging
import secrets
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from proxyindex import fsutil
from proxyindex.auth.authenticator import add_user
from proxyindex.private.sdistcheck import SdistLimits, read_sdist_pkg_info
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_sdist, make_wheel

Client = TestClient[Any, Any]
MakeClient = MakeAppClient
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def make_client(make_app_client: MakeAppClient) -> MakeAppClient:
    """``make_app_client`` with ``auth.anonymous_upload = true`` set explicitly: most tests here
    upload without an htpasswd file, which is refused by default. A test that passes ``auth``
    states what it wants itself."""

    async def factory(**sections: Mapping[str, Any]) -> Client:
        sections.setdefault("auth", {"anonymous_upload": True})
        return await make_app_client(**sections)

    return factory


def stored(tmp_path: Path) -> list[str]:
    """Every file under the packages folder, temp files included (not the names log)."""
    root = tmp_path / "packages"
    files = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return sorted(str(p) for p in files if p.parts[0] != ".proxyindex")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def form(path: Path, **changes: str | None) -> FormData:
    """The fields twine 7 sends for ``path``; ``changes`` replaces (or with None drops) fields."""
    data = path.read_bytes()
    is_wheel = path.name.endswith(".whl")
    dist_name = path.name.split("-")[0].replace("_", "-")
    version = path.name.split("-")[1].removesuffix(".tar.gz")
    fields: dict[str, str | None] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": dist_name,
        "version": version,
        "filetype": "bdist_wheel" if is_wheel else "sdist",
        "pyversion": "py3" if is_wheel else "source",
        "metadata_version": "2.1",
        "sha256_digest": hashlib.sha256(data).hexdigest(),
        "blake2_256_digest": hashlib.blake2b(data, digest_size=32).hexdigest(),
        "filename": path.name,
        "content_bytes": None,
    }
    fields.update(changes)
    result = FormData(default_to_multipart=True)
    for key, value in fields.items():
        if value is not None and key not in ("filename", "content_bytes"):
            result.add_field(key, value)
    filename = fields["filename"]
    content = data if changes.get("content_bytes") is None else str(changes["content_bytes"])
    if filename is not None:
        result.add_field(
            "content", content, filename=filename, content_type="application/octet-stream"
        )
    return result


async def upload(
    client: Client, body: FormData, path: str = "/", **kw: Any
) -> aiohttp.ClientResponse:
    return await client.post(path, data=body, allow_redirects=False, **kw)


async def test_upload_appears_at_once_with_metadata_and_upload_time(
    make_client: MakeClient, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client()
    for url in ("/", "/legacy", "/legacy/"):  # U-01: all three, never a redirect
        resp = await upload(client, form(wheel), url)
        assert resp.status == 200, await resp.text()
    assert stored(tmp_path) == [f"corp-lib/{wheel.name}"]
    page = await client.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    assert page.headers["Cache-Control"] == "max-age=0, must-revalidate"
    (entry,) = (await page.json(content_type=None))["files"]
    assert entry["hashes"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert entry["core-metadata"]
    assert entry["upload-time"].endswith("Z")


async def test_identical_reupload_is_ok_and_different_bytes_conflict(
    make_client: MakeClient, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    other = make_wheel(tmp_path / "other", "corp-lib", "1.0", modules={"corp_lib": "x = 2"})
    client = await make_client()
    assert (await upload(client, form(wheel))).status == 200
    assert (await upload(client, form(wheel))).status == 200  # U-05: a retry is not an error
    resp = await upload(client, form(other))
    assert resp.status == 409
    assert resp.reason is not None and resp.reason.startswith("File already exists")
    assert (await resp.text()).startswith(f"File already exists ('{wheel.name}'")
    assert (tmp_path / "packages" / "corp-lib" / wheel.name).read_bytes() == wheel.read_bytes()


async def test_overwrite_when_the_config_allows_it(make_client: MakeClient, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    other = make_wheel(tmp_path / "other", "corp-lib", "1.0", modules={"corp_lib": "x = 2"})
    client = await make_client(private={"allow_overwrite": True})
    assert (await upload(client, form(wheel))).status == 200
    assert (await upload(client, form(other))).status == 200
    assert (tmp_path / "packages" / "corp-lib" / wheel.name).read_bytes() == other.read_bytes()


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"filename": "../evil-1.0-py3-none-any.whl"}, 400, "invalid filename"),
        ({"filename": "..\\evil-1.0-py3-none-any.whl"}, 400, "invalid filename"),
        ({"filename": "sub/corp_lib-1.0-py3-none-any.whl"}, 400, "invalid"),
        ({"filename": "corp-lib-1.0.exe"}, 400, "not a wheel"),
        ({"filename": "corp_lib-1.0-py3.whl"}, 400, "invalid distribution filename"),
        ({"filename": None}, 400, "no file"),
        ({"name": "other-lib"}, 400, "does not match filename"),
        ({"name": "bad name\n"}, 400, "invalid project name"),
        ({"version": "2.0"}, 400, "does not match filename"),
        ({"version": "not a version"}, 400, "invalid version"),
        ({"filetype": "sdist"}, 400, "filetype"),
        ({"protocol_version": "2"}, 400, "protocol_version"),
        ({"sha256_digest": "0" * 64}, 400, "sha256 digest"),
        ({"blake2_256_digest": "0" * 64}, 400, "blake2_256 digest"),
        ({"md5_digest": "0" * 32}, 400, "md5 digest"),
        ({"sha256_digest": None, "blake2_256_digest": None}, 400, "no digest"),
        ({":action": None}, 400, "missing :action"),
        ({":action": "explode"}, 400, "unsupported :action"),
        ({":action": "doc_upload"}, 410, "documentation"),
    ],
)
async def test_bad_upload_gets_a_4xx_and_writes_nothing(
    make_client: MakeClient,
    tmp_path: Path,
    changes: dict[str, str | None],
    status: int,
    reason: str,
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client()
    resp = await upload(client, form(wheel, **changes))
    assert resp.status == status
    assert reason in await resp.text()
    assert stored(tmp_path) == []
    assert not list(tmp_path.parent.glob("evil*"))
    assert (await client.get("/health")).status == 200


async def test_wheel_whose_metadata_disagrees_is_refused(
    make_client: MakeClient, tmp_path: Path
) -> None:
    real = make_wheel(tmp_path / "dist", "other-lib", "1.0")
    renamed = tmp_path / "corp_lib-1.0-py3-none-any.whl"
    renamed.write_bytes(real.read_bytes())
    not_zip = tmp_path / "junk" / "corp_lib-1.0-py3-none-any.whl"
    not_zip.parent.mkdir()
    not_zip.write_bytes(b"not a zip at all")
    client = await make_client()
    resp = await upload(client, form(renamed))
    assert resp.status == 400
    assert "METADATA names project 'other-lib'" in await resp.text()
    resp = await upload(client, form(not_zip))
    assert resp.status == 400
    assert "not a readable wheel" in await resp.text()
    assert stored(tmp_path) == []


async def test_not_multipart_and_too_large_are_refused(
    make_client: MakeClient, tmp_path: Path
) -> None:
    noise = secrets.token_hex(40000)  # incompressible enough to stay over the limit when zipped
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0", modules={"corp_lib": noise})
    client = await make_client(private={"max_upload_size": 1000})
    resp = await client.post("/", data=b"name=x", headers={"Content-Type": "text/plain"})
    assert resp.status == 400
    resp = await upload(client, form(wheel))
    assert resp.status == 413
    assert stored(tmp_path) == []


class _FullDisk(io.BytesIO):
    """A temp file on a disk that fills up after the first few bytes."""

    def __init__(self, real: BinaryIO) -> None:
        super().__init__()
        self.real = real

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.real.close()
        super().close()


async def test_full_disk_is_a_507_and_leaves_nothing_behind(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client()
    real_open_temp = fsutil.open_temp

    def open_temp_on_full_disk(directory: Path) -> tuple[BinaryIO, Path]:
        fh, path = real_open_temp(directory)
        return _FullDisk(fh), path

    monkeypatch.setattr(fsutil, "open_temp", open_temp_on_full_disk)
    resp = await upload(client, form(wheel))
    assert resp.status == 507
    assert "no disk space" in await resp.text()
    assert stored(tmp_path) == []  # the temp file is gone too
    monkeypatch.undo()
    assert (await upload(client, form(wheel))).status == 200  # space freed: works again
    assert stored(tmp_path) == [f"corp-lib/{wheel.name}"]


async def test_sdist_upload_and_legacy_sdist_names(make_client: MakeClient, tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "dist", "corp-lib", "2.0")
    client = await make_client()
    resp = await upload(client, form(sdist, name="corp-lib", version="2.0"))
    assert resp.status == 200, await resp.text()
    page = await client.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    (entry,) = (await page.json(content_type=None))["files"]
    assert entry["filename"] == sdist.name
    assert "core-metadata" not in entry  # M-03: wheels only


async def test_concurrent_uploads_of_one_filename_never_mix(
    make_client: MakeClient, tmp_path: Path
) -> None:
    variants = [
        make_wheel(tmp_path / f"v{i}", "corp-lib", "1.0", modules={"corp_lib": f"v = {i}\n" * 9000})
        for i in range(6)
    ]
    client = await make_client()
    responses = await asyncio.gather(*(upload(client, form(v)) for v in variants))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 5
    final = (tmp_path / "packages" / "corp-lib" / variants[0].name).read_bytes()
    winner = next(v for v, r in zip(variants, responses, strict=True) if r.status == 200)
    assert final == winner.read_bytes()
    assert stored(tmp_path) == [f"corp-lib/{variants[0].name}"]  # no temp files left


async def test_remove_pkg_removes_one_version(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    for version in ("1.0", "2.0"):
        wheel = make_wheel(tmp_path / version, "corp-lib", version)
        assert (await upload(client, form(wheel))).status == 200
    removal = FormData({":action": "remove_pkg", "name": "Corp_Lib", "version": "1.0"})
    assert (await client.post("/", data=removal)).status == 200  # U-08
    page = await client.get("/simple/corp-lib/", headers={"Accept": PIP_ACCEPT})
    assert (await page.json(content_type=None))["versions"] == ["2.0"]
    again = FormData({":action": "remove_pkg", "name": "corp-lib", "version": "1.0"})
    assert (await client.post("/", data=again)).status == 404
    missing = FormData({":action": "remove_pkg", "name": "corp-lib"})
    assert (await client.post("/", data=missing)).status == 400


async def test_shadowing_upload_is_refused_by_default_and_can_be_allowed(
    make_client: MakeClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One upload of a public name must not hide the public project from every user."""
    fake_pypi.add_wheel("requests", "2.0")
    wheel = make_wheel(tmp_path / "dist", "requests", "1.0")
    strict = await make_client()
    resp = await upload(strict, form(wheel))
    assert resp.status == 403  # DC-03
    text = await resp.text()
    assert "private.refuse_shadowing_uploads" in text
    assert "private.reserved" in text
    assert stored(tmp_path) == []
    await strict.close()
    reserved = await make_client(private={"reserved": ["requests"]})
    assert (await upload(reserved, form(wheel))).status == 200  # the documented recipe
    await reserved.close()
    fake_pypi.add_wheel("other-pub", "1.0")
    own = make_wheel(tmp_path / "dist2", "other-pub", "0.1")
    lenient = await make_client(private={"refuse_shadowing_uploads": False})
    with caplog.at_level(logging.WARNING):
        assert (await upload(lenient, form(own))).status == 200
    assert "hides the upstream project" in caplog.text


# --- access control --------------------------------------------------------------------------


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    add_user(path, "alice", "s3cret")
    add_user(path, "bob", "hunter2")
    return path


async def test_upload_needs_a_login_and_uploaders_limit_who(
    make_client: MakeClient, tmp_path: Path, htpasswd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client(auth={"htpasswd": str(htpasswd), "uploaders": ["alice"]})
    anonymous = await upload(client, form(wheel))
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="proxyindex"'
    wrong = await upload(client, form(wheel), headers=basic("alice", "nope"))
    assert wrong.status == 401
    forbidden = await upload(client, form(wheel), headers=basic("bob", "hunter2"))
    assert forbidden.status == 403
    assert stored(tmp_path) == []
    with caplog.at_level(logging.DEBUG):
        ok = await upload(client, form(wheel), headers=basic("alice", "s3cret"))
    assert ok.status == 200
    assert "s3cret" not in caplog.text
    assert (await client.get("/simple/corp-lib/")).status == 200  # reads stay open


async def test_protected_reads_and_reloaded_htpasswd(
    make_client: MakeClient, tmp_path: Path, htpasswd: Path
) -> None:
    wheel = make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_client(auth={"htpasswd": str(htpasswd), "protect": ["list", "download"]})
    assert (await client.get("/simple/corp-lib/")).status == 401
    assert (await client.get("/simple/")).status == 401
    assert (await client.get(f"/packages/corp-lib/{wheel.name}")).status == 401
    carol = basic("carol", "pw")
    assert (await client.get("/simple/corp-lib/", headers=carol)).status == 401
    add_user(htpasswd, "carol", "pw")  # no restart needed
    assert (await client.get("/simple/corp-lib/", headers=carol)).status == 200
    got = await client.get(f"/packages/corp-lib/{wheel.name}", headers=carol)
    assert await got.read() == wheel.read_bytes()
    assert (await client.get("/health")).status == 200


async def test_post_to_a_page_is_a_405_naming_the_upload_url(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/simple/corp-lib/", data=b"x")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert f"upload to http://127.0.0.1:{client.port}/" in await resp.text()


@pytest.mark.parametrize("scheme", ["apr_md5_crypt", "ldap_sha1", "bcrypt"])
async def test_htpasswd_entries_written_by_apache_tools_are_accepted(
    make_client: MakeClient, tmp_path: Path, scheme: str
) -> None:
    from passlib.apache import HtpasswdFile

    path = tmp_path / "htpasswd"
    users = HtpasswdFile(str(path), new=True, default_scheme=scheme)
    users.set_password("dave", "pa:ss")
    users.save()
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client(auth={"htpasswd": str(path)})
    assert (await upload(client, form(wheel), headers=basic("dave", "wrong"))).status == 401
    assert (await upload(client, form(wheel), headers=basic("dave", "pa:ss"))).status == 200


def test_user_add_command_writes_a_bcrypt_entry(tmp_path: Path) -> None:
    from proxyindex.auth.authenticator import Authenticator
    from proxyindex.config import AuthConfig

    path = tmp_path / "htpasswd"
    for password in ("first", "second"):
        result = subprocess.run(
            [sys.executable, "-m", "proxyindex", "user", "add", "erin", "--htpasswd", str(path),
             "--password-stdin"],
            input=f"{password}\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert path.read_text().startswith("erin:$2")  # bcrypt, replaced not duplicated
    assert path.read_text().count("erin:") == 1
    auth = Authenticator(AuthConfig(htpasswd=path))
    assert auth.verify("erin", "second")
    assert not auth.verify("erin", "first")
    assert "second" not in result.stderr


# --- one file per release, whatever the filename's spelling (issue 7, item 1) ----------------

ANON = {"anonymous_upload": True}


def respelled(path: Path, filename: str) -> Path:
    """The same bytes under another filename, in a folder of their own."""
    folder = path.parent / f"as-{filename}"
    folder.mkdir()
    target = folder / filename
    target.write_bytes(path.read_bytes())
    return target


async def test_a_release_file_cannot_be_replaced_under_another_spelling(
    make_client: MakeClient, tmp_path: Path
) -> None:
    first = make_wheel(tmp_path / "a", "dupdemo", "1.0")
    other = make_wheel(tmp_path / "b", "dupdemo", "1.0.0", modules={"dupdemo": "x = 2"})
    client = await make_client(auth=ANON)
    assert (await upload(client, form(first))).status == 200
    resp = await upload(client, form(other))  # dupdemo-1.0.0-py3-none-any.whl: the same release
    assert resp.status == 409
    assert (await resp.text()).startswith(f"File already exists ('{first.name}'")
    again = respelled(first, "dupdemo-1.0.0-py3-none-any.whl")  # same bytes: a harmless retry
    assert (await upload(client, form(again))).status == 200
    for spelling in ("DupDemo-1.0-py3-none-any.whl", "dupdemo-01.0-py3-none-any.whl"):
        resp = await upload(client, form(respelled(other, spelling)))
        assert resp.status == 400
        assert f"upload it as '{first.name}'" in await resp.text()
    sdist = make_sdist(tmp_path / "c", "dupdemo", "1.0")  # a wheel and an sdist: two releases
    assert (await upload(client, form(sdist))).status == 200
    assert stored(tmp_path) == [f"dupdemo/{first.name}", f"dupdemo/{sdist.name}"]
    page = await client.get("/simple/dupdemo/", headers={"Accept": PIP_ACCEPT})
    files = (await page.json(content_type=None))["files"]
    assert [f["filename"] for f in files] == [first.name, sdist.name]


async def test_legacy_sdist_spellings_are_accepted_but_still_one_file_per_release(
    make_client: MakeClient, tmp_path: Path
) -> None:
    sdist = make_sdist(tmp_path / "a", "corp-lib", "2.0")
    other = make_sdist(tmp_path / "b", "corp-lib", "2.0", modules={"corp_lib/x.py": "x = 2"})
    legacy = respelled(sdist, "Corp_Lib-2.0.tar.gz")  # PROTOCOL U-04: legacy names accepted
    client = await make_client(auth=ANON)
    assert (await upload(client, form(legacy, name="Corp_Lib"))).status == 200
    resp = await upload(
        client, form(respelled(other, "corp-lib-2.0.tar.gz"), name="corp-lib", version="2.0")
    )
    assert resp.status == 409
    assert "File already exists ('Corp_Lib-2.0.tar.gz'" in await resp.text()
    assert (await upload(client, form(sdist, name="corp-lib"))).status == 200  # same bytes
    resp = await upload(client, form(respelled(other, "corp_lib-02.0.tar.gz"), name="corp-lib"))
    assert resp.status == 400
    assert "upload it as 'corp_lib-2.0.tar.gz'" in await resp.text()
    zipped = zip_sdist(tmp_path / "zip", "corp_lib-2.0.zip", "corp-lib", "2.0")
    resp = await upload(client, form(zipped, name="corp-lib", version="2.0"))
    assert resp.status == 409  # a .zip and a .tar.gz sdist of one version: one release
    assert stored(tmp_path) == ["corp-lib/Corp_Lib-2.0.tar.gz"]


async def test_concurrent_uploads_of_two_spellings_of_one_release_store_one(
    make_client: MakeClient, tmp_path: Path
) -> None:
    variants = [
        make_wheel(tmp_path / f"v{i}", "corp-lib", ("1.0", "1.0.0")[i % 2], modules={"m": f"{i}"})
        for i in range(6)
    ]
    client = await make_client(auth=ANON)
    responses = await asyncio.gather(*(upload(client, form(v)) for v in variants))
    assert sorted(r.status for r in responses) == [200] + [409] * 5
    winner = next(v for v, r in zip(variants, responses, strict=True) if r.status == 200)
    assert stored(tmp_path) == [f"corp-lib/{winner.name}"]  # and no temp file left


async def test_overwrite_under_another_spelling_replaces_the_release_file(
    make_client: MakeClient, tmp_path: Path
) -> None:
    first = make_wheel(tmp_path / "a", "corp-lib", "1.0")
    other = make_wheel(tmp_path / "b", "corp-lib", "1.0.0", modules={"corp_lib": "x = 2"})
    client = await make_client(auth=ANON, private={"allow_overwrite": True})
    assert (await upload(client, form(first))).status == 200
    assert (await upload(client, form(other))).status == 200
    assert stored(tmp_path) == [f"corp-lib/{other.name}"]


# --- sdists are checked like wheels (issue 7, item 2) -----------------------------------------

PKG_INFO = b"Metadata-Version: 2.1\nName: corp-lib\nVersion: 2.0\n\n"


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, data


def tar_sdist(folder: Path, members: list[Any], filename: str = "corp_lib-2.0.tar.gz") -> Path:
    """A gzip tar holding exactly ``members`` (``_member`` values), however hostile."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return path


def zip_sdist(folder: Path, filename: str, name: str, version: str) -> Path:
    """A legacy ``.zip`` sdist with a PKG-INFO."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    top = filename.removesuffix(".zip")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{top}/setup.py", "")
    return path


GOOD = _member("corp_lib-2.0/PKG-INFO", PKG_INFO)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        (b"random bytes, not gzip", "not a readable gzip-compressed tar"),
        (gzip.compress(b"not a tar archive " * 100), "not a readable gzip-compressed tar"),
        ([GOOD, _member("corp_lib-2.0/../../evil.py", b"x")], "leaves the archive"),
        ([GOOD, _member("/etc/evil.py", b"x")], "absolute"),
        ([GOOD, _member("corp_lib-2.0/l", kind=tarfile.SYMTYPE, link="../../x")], "outside"),
        ([GOOD, _member("corp_lib-2.0/l", kind=tarfile.SYMTYPE, link="/etc/x")], "outside"),
        ([GOOD, _member("corp_lib-2.0/h", kind=tarfile.LNKTYPE, link="etc/x")], "outside"),
        ([GOOD, _member("corp_lib-2.0/dev", kind=tarfile.CHRTYPE)], "special file"),
        ([GOOD, _member("other-2.0/setup.py", b"x")], "more than one top-level"),
        ([_member("PKG-INFO", PKG_INFO)], "not in a top-level folder"),
        ([_member("corp_lib-2.0/setup.py", b"x")], "no PKG-INFO"),
        ([], "empty"),
        ([_member("corp_lib-2.0/PKG-INFO", PKG_INFO.replace(b"corp", b"other"))], "names project"),
        ([_member("corp_lib-2.0/PKG-INFO", PKG_INFO.replace(b"2.0", b"3.0"))], "says version 3.0"),
    ],
    ids=[
        "random", "gzip-not-tar", "dotdot", "absolute", "symlink-out", "symlink-abs",
        "hardlink-out", "device", "two-tops", "no-folder", "no-pkg-info", "empty",
        "other-name", "other-version",
    ],
)  # fmt: skip
async def test_a_bad_sdist_is_refused_and_nothing_is_stored(
    make_client: MakeClient, tmp_path: Path, members: Any, reason: str
) -> None:
    if isinstance(members, bytes):
        path = tmp_path / "dist" / "corp_lib-2.0.tar.gz"
        path.parent.mkdir()
        path.write_bytes(members)
    else:
        path = tar_sdist(tmp_path / "dist", members)
    client = await make_client(auth=ANON)
    resp = await upload(client, form(path, name="corp-lib", version="2.0"))
    assert resp.status == 400
    text = await resp.text()
    assert reason in text
    assert text.count("\n") == 1
    assert stored(tmp_path) == []
    assert not (tmp_path / "etc").exists()


async def test_a_zip_sdist_is_checked_too(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(auth=ANON)
    junk = tmp_path / "junk" / "corp_lib-2.0.zip"
    junk.parent.mkdir()
    junk.write_bytes(b"PK not really a zip")
    resp = await upload(client, form(junk, name="corp-lib", version="2.0"))
    assert resp.status == 400
    assert "not a readable zip" in await resp.text()
    good = zip_sdist(tmp_path / "dist", "corp_lib-2.0.zip", "corp-lib", "2.0")
    assert (await upload(client, form(good, name="corp-lib", version="2.0"))).status == 200


def test_an_sdist_bomb_is_refused_within_its_bounds(tmp_path: Path) -> None:
    """Members and unpacked bytes are counted while the headers stream past, so a bomb costs
    at most the bound (here small ones; the defaults are in ``sdistcheck``)."""
    empty = _member("corp_lib-2.0/f")[0].tobuf(tarfile.USTAR_FORMAT)
    bomb = tmp_path / "corp_lib-2.0.tar.gz"
    bomb.write_bytes(gzip.compress(empty * 1000 + bytes(1024), mtime=0))
    with pytest.raises(ValueError, match="more than 100 members"):
        read_sdist_pkg_info(bomb, bomb.name, SdistLimits(members=100))
    big = tar_sdist(tmp_path / "big", [GOOD, _member("corp_lib-2.0/zeros", bytes(4 << 20))])
    assert big.stat().st_size < 10_000
    with pytest.raises(ValueError, match="unpacks to more than the limit"):
        read_sdist_pkg_info(big, big.name, SdistLimits(unpacked=1 << 20))
    assert read_sdist_pkg_info(big, big.name) == PKG_INFO
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["big", big.name, bomb.name]


# --- malformed multipart bodies (issue 7, item 2) ---------------------------------------------


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename.encode("latin-1") + b'"'
    return b"--XX\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


def _fields(wheel: Path) -> bytes:
    data = wheel.read_bytes()
    return b"".join(
        _part(key, value.encode())
        for key, value in {
            ":action": "file_upload",
            "name": "corp-lib",
            "version": "1.0",
            "filetype": "bdist_wheel",
            "sha256_digest": hashlib.sha256(data).hexdigest(),
        }.items()
    )


async def raw_post(port: int, body: bytes, content_type: str) -> tuple[int, str, str]:
    """POST exactly ``body`` with a correct Content-Length; (status, reason, body text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)  # an answer, not a closed connection
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _version, status, reason = status_line.decode("latin-1").split(" ", 2)
    return int(status), reason, rest.partition(b"\r\n\r\n")[2].decode("latin-1")


def _wheel_part(wheel: Path, filename: str | None = None) -> bytes:
    return _part("content", wheel.read_bytes(), filename or wheel.name)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (lambda w: _fields(w) + _wheel_part(w)[:-2], "ends before its closing boundary"),
        (lambda w: _fields(w) + _wheel_part(w), "ends before its closing boundary"),
        (lambda w: _wheel_part(w) + _fields(w), "ends before its closing boundary"),
        (lambda w: _fields(w) + _wheel_part(w) + b"--XX\r\n", "ends before its closing boundary"),
        (lambda w: b"", "body is empty"),
        (lambda w: b"this is not a multipart body at all", "no multipart boundary"),
        (lambda w: b"A" * 300_000, "boundary"),
        (lambda w: _part("_charset_", b"x" * 40) + b"--XX--\r\n", "malformed multipart"),
        (lambda w: _fields(w) + _wheel_part(w, "corp_lib-1.0\0-py3-none-any.whl") + b"--XX--\r\n",
         "malformed header"),
    ],
    ids=[
        "file-cut", "no-closing", "field-last", "delimiter-last", "empty", "garbage",
        "long-garbage", "charset", "nul",
    ],
)  # fmt: skip
async def test_a_malformed_multipart_body_is_a_400_and_stores_nothing(
    make_client: MakeClient, tmp_path: Path, body: Any, reason: str
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_client(auth=ANON)
    assert client.port is not None
    status, phrase, text = await raw_post(
        client.port, body(wheel), "multipart/form-data; boundary=XX"
    )
    assert status == 400
    assert reason in phrase
    assert text == f"{phrase}\n"  # one line: the reason, and nothing else
    assert stored(tmp_path) == []  # no temp file left behind either
    assert (await client.get("/health")).status == 200
