"""The admin commands (issue 11 §3) run as a user runs them: ``proxyindex yank|unyank|remove``
and ``proxyindex cache stats|purge|verify`` subprocesses against a running server, with
credentials from the environment or ``~/.netrc`` (never the command line)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxyindex.admincli import find_credentials
from proxyindex.auth.authenticator import add_user
from tests.clients import client_env, run_pip_install
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyindex", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=client_env(home, **env),
    )


def _json_page(url: str) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        page: dict[str, object] = json.loads(response.read())
        return page


def test_credentials_come_from_the_environment_then_netrc(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine index.example login carol password from-netrc\n")
    netrc.chmod(0o600)
    env = {"NETRC": str(netrc), "HOME": str(tmp_path)}
    server = "https://index.example:8443"
    assert find_credentials(server, env, use_keyring=False) == ("carol", "from-netrc")
    both = {**env, "PROXYINDEX_USERNAME": "dave", "PROXYINDEX_PASSWORD": "from-env"}
    assert find_credentials(server, both, use_keyring=False) == ("dave", "from-env")
    assert find_credentials("http://other.example", env, use_keyring=False) is None


@pytest.mark.e2e
def test_yank_unyank_and_remove_commands_change_a_running_server(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "admin-pw")
    server = make_proxy(start=False, auth={"htpasswd": str(htpasswd), "admins": ["alice"]})
    packages = server.config.parent / "packages"
    make_wheel(packages, "corp-cli", "1.0")
    two = make_wheel(packages, "corp-cli", "2.0")
    server.start()
    home = tmp_path / "client"
    denied = cli(home, "yank", "corp-cli", "2.0", "--server", server.url)
    assert denied.returncode == 1
    assert "401" in denied.stderr and "PROXYINDEX_USERNAME" in denied.stderr
    login = {"PROXYINDEX_USERNAME": "alice", "PROXYINDEX_PASSWORD": "admin-pw"}
    done = cli(
        home, "yank", "corp-cli", "2.0", "--reason", "broken", "--server", server.url, **login
    )
    assert done.returncode == 0, done.stderr
    assert f"yanked corp-cli 2.0 ({two.name})" in done.stdout
    page = _json_page(f"{server.index_url}corp-cli/")
    assert {f["filename"]: f["yanked"] for f in page["files"]} == {  # type: ignore[attr-defined]
        "corp_cli-1.0-py3-none-any.whl": False,
        two.name: "broken",
    }
    # ~/.netrc works as well as the environment.
    netrc = home / "home" / ".netrc"
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text("machine 127.0.0.1 login alice password admin-pw\n")
    netrc.chmod(0o600)
    undone = cli(home, "unyank", "corp-cli", "2.0", "--server", server.url)
    assert undone.returncode == 0, undone.stderr
    missing = cli(home, "remove", "corp-cli", "7.0", "--server", server.url)
    assert missing.returncode == 1 and "404" in missing.stderr
    removed = cli(home, "remove", "corp-cli", "--server", server.url)
    assert removed.returncode == 0, removed.stderr
    assert "removed 2 releases of corp-cli" in removed.stdout
    assert not two.exists()


@pytest.mark.e2e
def test_cache_commands_report_purge_and_verify_the_server_cache(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("pub-cli", "1.0")
    server = make_proxy()  # no users: admin calls from this host are accepted
    run_pip_install(client_tmp / "pip", server.index_url, "pub-cli", target=client_tmp / "t")
    home = tmp_path / "client"
    blobs = server.config.parent / "cache" / "files"
    deadline = time.monotonic() + 10
    while not [p for p in blobs.rglob("*") if len(p.name) == 64]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stats = cli(home, "cache", "stats", "--server", server.url)
    assert stats.returncode == 0, stats.stderr
    assert "cached pages:     1" in stats.stdout
    assert "pub-cli" in stats.stdout
    blob = next(p for p in blobs.rglob("*") if len(p.name) == 64)
    blob.write_bytes(b"corrupted")
    verify = cli(home, "cache", "verify", "--server", server.url)
    assert verify.returncode == 1  # something was wrong: scripts can tell
    assert f"quarantined {blob.name}" in verify.stdout
    assert "1 corrupt files quarantined" in verify.stdout
    clean = cli(home, "cache", "verify", "--server", server.url)
    assert clean.returncode == 0 and "every file matches its hash" in clean.stdout
    purge = cli(home, "cache", "purge", "pub-cli", "--server", server.url)
    assert purge.returncode == 0, purge.stderr
    assert "purged pub-cli: page and" in purge.stdout
    assert not [p for p in blobs.rglob("*") if len(p.name) == 64]
    bad = cli(home, "cache", "purge", "not a name", "--server", server.url)
    assert bad.returncode == 1 and "400" in bad.stderr
