"""The audit log (issue 11): one JSON line per change to the private packages, with who,
from where, and which file, never a password or a token's secret.

Real twine uploads through a real server with a real htpasswd user and a token; the removal
is pypiserver's ``remove_pkg`` form, the release the ``proxyindex private release`` CLI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from proxyindex.auth.authenticator import add_user
from tests.clients import run_twine_upload
from tests.conftest import MakeAppClient, MakeProxy
from tests.test_tokens import cli_token, proxyindex
from tests.test_upload import form, upload
from tests.wheelmaker import make_wheel


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_pkg(upload_url: str, user: str, password: str, name: str, version: str) -> int:
    """pypiserver's removal, as ``curl -d ':action=remove_pkg&name=...'`` sends it."""
    login = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - the test's own server, http
        upload_url,
        data=f":action=remove_pkg&name={name}&version={version}".encode(),
        headers={"Authorization": f"Basic {login}"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        status: int = response.status
        return status


@pytest.mark.e2e
def test_uploads_overwrites_removals_and_releases_are_audited_without_secrets(
    make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    htpasswd = tmp_path / "users" / "htpasswd"
    htpasswd.parent.mkdir()
    add_user(htpasswd, "alice", "s3cret-pw")
    secret = cli_token(htpasswd, "--user", "alice")
    (token,) = json.loads((htpasswd.parent / "tokens.json").read_text())["tokens"]
    audit = tmp_path / "audit" / "audit.jsonl"
    proxy = make_proxy(
        extra_args=["--htpasswd", str(htpasswd)],
        server={"audit_log": str(audit)},
        private={"allow_overwrite": True},
    )
    first = make_wheel(tmp_path / "v1", "corp-lib", "1.0")
    second = make_wheel(tmp_path / "v2", "corp-lib", "1.0", modules={"corp_lib": "V = 2\n"})
    assert first.name == second.name and _sha256(first) != _sha256(second)

    run_twine_upload(client_tmp / "t1", proxy.upload_url, [first], "alice", "s3cret-pw")
    run_twine_upload(client_tmp / "t2", proxy.upload_url, [first], "__token__", secret)
    run_twine_upload(client_tmp / "t3", proxy.upload_url, [second], "__token__", secret)
    assert _remove_pkg(proxy.upload_url, "alice", "s3cret-pw", "Corp_Lib", "1.0") == 200
    released = proxyindex("private", "release", "corp-lib", "--config", str(proxy.config))
    assert released.returncode == 0, released.stderr

    lines = _lines(audit)
    assert [line["action"] for line in lines] == [
        "upload",
        "upload-same",
        "overwrite",
        "remove",
        "release",
    ]
    upload_line, same, overwrite, remove, release = lines
    for line in (upload_line, same, overwrite, remove):
        assert line["user"] == "alice"
        assert line["client"] == "127.0.0.1"
        assert line["project"] == "corp-lib"
        assert line["version"] == "1.0"
        assert line["filename"] == first.name
        assert line["time"].endswith("+00:00")
    assert "token" not in upload_line
    assert "token" not in remove
    assert same["token"] == overwrite["token"] == token["id"]
    assert upload_line["sha256"] == same["sha256"] == _sha256(first)
    assert overwrite["sha256"] == remove["sha256"] == _sha256(second)
    assert overwrite["replaced"] == first.name
    assert overwrite["replaced_sha256"] == _sha256(first)
    assert release["project"] == "corp-lib"
    assert release["client"] == "cli"
    text = audit.read_text()
    assert "s3cret-pw" not in text
    assert secret not in text


async def test_audit_log_is_on_by_default_in_the_data_folder_and_can_be_turned_off(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_app_client(
        storage={"data_dir": str(tmp_path / "data")}, auth={"anonymous_upload": True}
    )
    assert (await upload(client, form(wheel))).status == 200
    (line,) = _lines(tmp_path / "data" / "audit.jsonl")
    assert line["action"] == "upload"
    assert line["user"] == "-"
    assert line["client"] == "127.0.0.1"
    assert line["sha256"] == _sha256(wheel)
    await client.close()

    quiet = await make_app_client(
        storage={"data_dir": str(tmp_path / "quiet")},
        server={"audit_log": "off"},
        auth={"anonymous_upload": True},
    )
    assert (await upload(quiet, form(wheel))).status == 200
    assert not (tmp_path / "quiet" / "audit.jsonl").exists()
