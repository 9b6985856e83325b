"""API tokens (issue 13 §3): ``__token__`` + a secret in place of a password, for CI.

Real twine, uv and pip use them against a real server; the refusals (403 for the wrong project
or a read token, 401 once revoked or expired) are checked in-process.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxyindex.auth.authenticator import add_user, remove_user
from proxyindex.auth.tokens import create_token, revoke_token
from tests.clients import (
    client_env,
    make_venv,
    run,
    run_pip_install,
    run_twine_upload,
    run_uv_pip_install,
    uv_command,
)
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.test_upload import form, stored, upload
from tests.wheelmaker import make_wheel


def token_login(secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"__token__:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def proxyindex(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyindex", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "users" / "htpasswd"
    path.parent.mkdir()
    add_user(path, "alice", "s3cret")
    add_user(path, "bob", "hunter2")
    return path


def cli_token(htpasswd: Path, *args: str) -> str:
    """``proxyindex token create`` as a user would run it; returns the secret it prints."""
    result = proxyindex("token", "create", "--htpasswd", str(htpasswd), *args)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert secret.startswith("pxi-")
    return secret


def test_ci_publishes_with_twine_and_uv_and_installs_with_pip_and_uv_using_tokens(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, htpasswd: Path, tmp_path: Path, client_tmp: Path
) -> None:
    proxy = make_proxy(extra_args=["--htpasswd", str(htpasswd)], auth={"protect": "all"})
    upload_token = cli_token(htpasswd, "--user", "alice", "--expires", "90d")
    project_token = cli_token(htpasswd, "--user", "alice", "--project", "Corp_Tool")
    read_token = cli_token(htpasswd, "--user", "bob", "--scope", "read")
    dist = tmp_path / "dist"
    lib = make_wheel(dist, "corp-lib", "1.0")
    tool = make_wheel(dist, "corp-tool", "1.0")

    run_twine_upload(client_tmp / "twine", proxy.upload_url, [lib], "__token__", upload_token)
    publish: list[str | Path] = [
        *uv_command(), "publish", "--publish-url", proxy.upload_url,
        "--username", "__token__", "--password", project_token, tool,
    ]  # fmt: skip
    run(publish, client_env(client_tmp / "uv-pub"), cwd=client_tmp)
    packages = proxy.config.parent / "packages"
    assert sorted(p.name for p in packages.rglob("*.whl")) == [lib.name, tool.name]

    index = proxy.index_url.replace("http://", f"http://__token__:{read_token}@")
    report = run_pip_install(client_tmp / "pip", index, "corp-lib", target=tmp_path / "t")
    assert report.versions() == {"corp-lib": "1.0"}
    venv = make_venv(client_tmp / "venv")
    result = run_uv_pip_install(client_tmp / "uv", index, "corp-tool", python=venv)
    assert result.installed == {"corp-tool": "1.0"}
    for secret in (upload_token, project_token, read_token):
        assert secret not in proxy.log_text()

    # The read token cannot publish: twine shows the 403 and its reason.
    refused = run_twine_upload(
        client_tmp / "twine2",
        proxy.upload_url,
        [make_wheel(dist, "corp-lib", "2.0")],
        "__token__",
        read_token,
        check=False,
    )
    assert refused.returncode != 0
    assert "403" in refused.stdout + refused.stderr


async def test_a_project_token_cannot_upload_or_remove_another_project(
    make_app_client: MakeAppClient, htpasswd: Path, tmp_path: Path
) -> None:
    _token, secret = create_token(htpasswd.parent / "tokens.json", "alice", project="corp-tool")
    client = await make_app_client(auth={"htpasswd": str(htpasswd)})
    other = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    resp = await upload(client, form(other), headers=token_login(secret))
    assert resp.status == 403
    assert "limited to project 'corp-tool'" in await resp.text()
    own = make_wheel(tmp_path / "dist", "Corp_Tool", "1.0")
    assert (await upload(client, form(own), headers=token_login(secret))).status == 200
    removal = {":action": "remove_pkg", "name": "corp-lib", "version": "1.0"}
    resp = await client.post("/", data=removal, headers=token_login(secret))
    assert resp.status == 403
    assert stored(tmp_path) == [f"corp-tool/{own.name}"]


async def test_a_read_token_reads_but_may_not_upload(
    make_app_client: MakeAppClient, htpasswd: Path, tmp_path: Path
) -> None:
    _token, secret = create_token(htpasswd.parent / "tokens.json", "alice", scope="read")
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": "all"})
    assert (await client.get("/simple/corp-lib/", headers=token_login(secret))).status == 200
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "2.0")
    resp = await upload(client, form(wheel), headers=token_login(secret))
    assert resp.status == 403
    assert "read-only" in await resp.text()


async def test_revoked_expired_and_orphaned_tokens_are_refused_with_401(
    make_app_client: MakeAppClient, htpasswd: Path
) -> None:
    tokens = htpasswd.parent / "tokens.json"
    revoked, revoked_secret = create_token(tokens, "alice")
    _old, expired_secret = create_token(
        tokens, "alice", expires_in=timedelta(days=1), now=datetime.now(UTC) - timedelta(days=2)
    )
    _bobs, bobs_secret = create_token(tokens, "bob")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    for secret in (revoked_secret, bobs_secret):
        assert (await client.get("/simple/", headers=token_login(secret))).status == 200
    result = proxyindex("token", "revoke", revoked.id, "--htpasswd", str(htpasswd))
    assert result.returncode == 0, result.stderr
    remove_user(htpasswd, "bob")  # a removed user's tokens stop working
    for secret in (revoked_secret, expired_secret, bobs_secret, "pxi-made-up"):
        resp = await client.get("/simple/", headers=token_login(secret))
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="proxyindex"'


async def test_uploaders_still_apply_to_a_tokens_user(
    make_app_client: MakeAppClient, htpasswd: Path, tmp_path: Path
) -> None:
    _token, secret = create_token(htpasswd.parent / "tokens.json", "bob")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "uploaders": ["alice"]})
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    assert (await upload(client, form(wheel), headers=token_login(secret))).status == 403


def test_token_file_holds_digests_only_and_list_never_prints_secrets(htpasswd: Path) -> None:
    secret = cli_token(htpasswd, "--user", "alice", "--project", "corp-lib", "--expires", "12h")
    path = htpasswd.parent / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in path.read_text()
    (entry,) = json.loads(path.read_text())["tokens"]
    assert (entry["user"], entry["scope"], entry["project"]) == ("alice", "upload", "corp-lib")
    listed = proxyindex("token", "list", "--htpasswd", str(htpasswd))
    assert listed.returncode == 0
    assert entry["id"] in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    nobody = proxyindex("token", "create", "--user", "mallory", "--htpasswd", str(htpasswd))
    assert nobody.returncode == 2
    assert "no user 'mallory'" in nobody.stderr
    assert revoke_token(path, entry["id"]) is not None
    assert revoke_token(path, entry["id"]) is None
