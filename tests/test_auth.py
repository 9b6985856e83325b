"""Authentication under abuse (issue 7.3), what each action covers and the user CLI (issue 13).

No timed assertions of speed: the mechanisms are tested (statuses, the count of hash
computations, the order in which requests finish); the figures are in the report.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxyindex.auth.authenticator import Authenticator, add_user
from proxyindex.config import AuthConfig, load_config
from proxyindex.web import app as app_module
from proxyindex.web import appkeys
from proxyindex.web.app import create_app
from tests.clients import run_twine_upload
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.test_upload import form, stored, upload
from tests.wheelmaker import make_wheel

Client = TestClient[Any, Any]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    add_user(path, "alice", "s3cret")
    return path


def auth_of(client: Client) -> Authenticator:
    app: web.Application = client.app
    return app[appkeys.AUTH]


def touch_later(path: Path) -> None:
    """Move the mtime forward, so a rewrite within one clock tick is still seen as a change."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# --- bad bytes and broken files ---------------------------------------------------------------


@pytest.mark.parametrize(("user", "password"), [("al\0ice", "s3cret"), ("alice", "s3\0cret")])
async def test_nul_bytes_in_credentials_are_a_401_not_a_500(
    make_app_client: MakeAppClient, htpasswd: Path, user: str, password: str
) -> None:
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    resp = await client.get("/simple/", headers=basic(user, password))
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers


async def test_a_broken_htpasswd_keeps_the_last_good_users_and_logs_the_line_once(
    make_app_client: MakeAppClient, htpasswd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    alice = basic("alice", "s3cret")
    assert (await client.get("/simple/", headers=alice)).status == 200
    with htpasswd.open("a") as fh:
        fh.write("bob:$2b$12$xyz\nthis line has no colon\n")
    touch_later(htpasswd)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert (await client.get("/simple/", headers=alice)).status == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"{htpasswd} line 3 is malformed" in errors[0]
    assert (await client.get("/simple/", headers=basic("alice", "nope"))).status == 401


async def test_an_htpasswd_that_never_loaded_answers_503(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("garbage\n")
    client = await make_app_client(auth={"htpasswd": str(path), "protect": ["list"]})
    resp = await client.get("/simple/", headers=basic("alice", "s3cret"))
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert "htpasswd" in await resp.text()


# --- wrong passwords: budget, remembered failures, dummy checks, own executor ------------------


async def test_failed_logins_over_the_budget_get_429_with_retry_after(
    make_app_client: MakeAppClient, htpasswd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_app_client(
        auth={"htpasswd": str(htpasswd), "protect": ["list"], "max_failed_logins": 3}
    )
    alice = basic("alice", "s3cret")
    assert (await client.get("/simple/", headers=alice)).status == 200  # remembered
    for attempt in range(3):
        wrong = basic("alice", f"guess{attempt}")
        assert (await client.get("/simple/", headers=wrong)).status == 401
    checks = auth_of(client).hash_checks
    with caplog.at_level(logging.WARNING):
        limited = await client.get("/simple/", headers=basic("alice", "guess9"))
        assert (await client.get("/simple/", headers=basic("alice", "x"))).status == 429
    assert limited.status == 429
    assert caplog.text.count("failed to log in 3 times") == 1
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert auth_of(client).hash_checks == checks  # refused before any hashing
    # A user whose login was already checked is not locked out by someone else's guesses.
    assert (await client.get("/simple/", headers=alice)).status == 200


async def test_a_repeated_wrong_password_is_hashed_once(
    make_app_client: MakeAppClient, htpasswd: Path
) -> None:
    client = await make_app_client(
        auth={"htpasswd": str(htpasswd), "protect": ["list"], "max_failed_logins": 0}
    )
    for _ in range(4):
        assert (await client.get("/simple/", headers=basic("alice", "wrong"))).status == 401
    assert auth_of(client).hash_checks == 1
    add_user(htpasswd, "alice", "wrong")  # the file changed: what failed before may not now
    touch_later(htpasswd)
    assert (await client.get("/simple/", headers=basic("alice", "wrong"))).status == 200
    assert auth_of(client).hash_checks == 2


async def test_an_unknown_user_costs_a_hash_check_like_a_known_one(
    make_app_client: MakeAppClient, htpasswd: Path
) -> None:
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    assert (await client.get("/simple/", headers=basic("alice", "nope"))).status == 401
    assert auth_of(client).hash_checks == 1
    assert (await client.get("/simple/", headers=basic("mallory", "nope"))).status == 401
    assert auth_of(client).hash_checks == 2  # a dummy bcrypt check, not an early "no"


async def test_a_valid_user_is_served_while_wrong_passwords_queue(
    make_app_client: MakeAppClient, htpasswd: Path
) -> None:
    client = await make_app_client(
        auth={"htpasswd": str(htpasswd), "protect": ["list"], "max_failed_logins": 0}
    )
    alice = basic("alice", "s3cret")
    assert (await client.get("/simple/", headers=alice)).status == 200
    done: list[int] = []

    async def guess(n: int) -> None:
        resp = await client.get("/simple/", headers=basic("alice", f"guess{n}"))
        assert resp.status == 401
        done.append(n)

    guesses = [asyncio.create_task(guess(n)) for n in range(12)]
    await asyncio.sleep(0.2)  # let them all reach the password check
    assert (await client.get("/simple/", headers=alice)).status == 200
    still_queued = len(guesses) - len(done)
    await asyncio.gather(*guesses)
    # bcrypt takes ~0.3 s a check on 2 threads: the valid user went past nearly all of them.
    assert still_queued >= len(guesses) // 2, f"only {still_queued} guesses left"


def test_verify_refuses_nul_bytes_without_raising(htpasswd: Path) -> None:
    auth = Authenticator(AuthConfig(htpasswd=htpasswd))
    assert auth.verify("alice", "s3cret")
    assert not auth.verify("alice", "s3cret\0")
    auth.close()


# --- actions and routes --------------------------------------------------------------------------


def test_every_route_names_its_action(tmp_path: Path) -> None:
    """The table fails closed; this test makes a route without an action fail loudly."""
    app = create_app(load_config(None, overrides={"storage": {"cache_dir": str(tmp_path)}}))
    unlisted = []
    for route in app.router.routes():
        info = route.resource.canonical if route.resource else None
        if info is not None and app_module.route_action(info, route.method) == "unlisted route":
            unlisted.append(f"{route.method} {info}")
    assert unlisted == []


async def test_a_route_missing_from_the_action_table_needs_a_login(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, htpasswd: Path
) -> None:
    config = load_config(
        None,
        overrides={
            "storage": {"cache_dir": str(tmp_path / "c"), "packages_dir": str(tmp_path / "p")},
            "auth": {"htpasswd": str(htpasswd)},
        },
    )
    app = create_app(config)

    async def secret(_request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app.router.add_get("/secret", secret)
    client = await aiohttp_client(app)
    assert (await client.get("/secret")).status == 401
    assert (await client.get("/secret", headers=basic("alice", "s3cret"))).status == 200
    assert app_module.route_action("/health", "GET") == "public"


async def test_protect_all_needs_a_login_everywhere_but_health_and_home(
    make_app_client: MakeAppClient, htpasswd: Path, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": "all"})
    assert client.app[appkeys.CONFIG].auth.protect == ("list", "download", "upload", "metrics")
    closed = [
        "/metrics",
        "/simple/",
        "/simple/corp-lib/",
        "/simple/corp-lib",
        "/pypi/corp-lib/json",
        "/pypi/corp-lib/1.0/json",
        f"/packages/corp-lib/{wheel.name}",
        f"/packages/corp-lib/{wheel.name}.metadata",
    ]
    for path in closed:
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 401, path
        head = await client.head(path, allow_redirects=False)
        assert head.status == 401, path
    for path in ("/health", "/"):
        assert (await client.get(path)).status == 200, path
    alice = basic("alice", "s3cret")
    for path in closed:
        resp = await client.get(path, headers=alice, allow_redirects=False)
        assert resp.status in (200, 301), path


async def test_uploads_without_an_htpasswd_are_refused_with_403_saying_how_to_enable_them(
    make_app_client: MakeAppClient, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "six", "1.0")
    client = await make_app_client()
    resp = await upload(client, form(wheel), headers=basic("made", "up"))
    assert resp.status == 403
    text = await resp.text()
    assert "htpasswd" in text
    assert "auth.anonymous_upload = true" in text
    assert stored(tmp_path) == []
    assert (await client.get("/simple/")).status == 200  # reads stay open


@pytest.mark.e2e
def test_twine_with_made_up_credentials_cannot_upload_to_a_fresh_install(
    make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    """The issue's story with the real client: no htpasswd, any user name and password."""
    proxy = make_proxy()
    wheel = make_wheel(tmp_path / "dist", "totally-new-name", "1.0")
    result = run_twine_upload(client_tmp, proxy.upload_url, [wheel], "made", "up", check=False)
    assert result.returncode != 0
    assert "403" in result.stdout + result.stderr
    packages = proxy.config.parent / "packages"
    assert not list(packages.rglob("*.whl"))


async def test_uploads_need_a_login_even_if_protect_leaves_upload_out(
    make_app_client: MakeAppClient, htpasswd: Path, tmp_path: Path
) -> None:
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0")
    client = await make_app_client(auth={"htpasswd": str(htpasswd), "protect": ["download"]})
    assert (await upload(client, form(wheel))).status == 401
    assert (await upload(client, form(wheel), headers=basic("alice", "s3cret"))).status == 200


# --- the command line ------------------------------------------------------------------------


def proxyindex(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyindex", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_to_start_with_a_missing_htpasswd_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "htpasswd"
    result = proxyindex(
        "serve", "--port", "0", "--htpasswd", str(missing), "--cache-dir", str(tmp_path / "c")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"proxyindex: configuration error: auth.htpasswd: cannot read {missing}: "
        "No such file or directory"
    ]


def test_serve_protect_flag_takes_pypiservers_list(
    make_proxy: MakeProxy, htpasswd: Path, fake_pypi: FakePyPI
) -> None:
    import urllib.error
    import urllib.request

    proxy = make_proxy(extra_args=["--htpasswd", str(htpasswd), "-a", "update,download,list"])
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(proxy.index_url, timeout=10)  # noqa: S310 - http://127.0.0.1
    assert info.value.code == 401


def test_user_add_reads_one_line_from_a_pipe_without_asking_twice(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    result = proxyindex("user", "add", "alice", "--htpasswd", str(path), stdin="secret\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    auth = Authenticator(AuthConfig(htpasswd=path))
    assert auth.verify("alice", "secret")
    auth.close()
    empty = proxyindex("user", "add", "bob", "--htpasswd", str(path), stdin="")
    assert empty.returncode == 1
    assert empty.stderr.strip().splitlines() == [
        "proxyindex: no password on standard input (expected one line)"
    ]


def test_user_list_and_user_remove(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    for name in ("carol", "alice"):
        assert (
            proxyindex("user", "add", name, "--htpasswd", str(path), stdin="pw\n").returncode == 0
        )
    listed = proxyindex("user", "list", "--htpasswd", str(path))
    assert (listed.returncode, listed.stdout) == (0, "alice\ncarol\n")
    assert proxyindex("user", "remove", "carol", "--htpasswd", str(path)).returncode == 0
    assert proxyindex("user", "list", "--htpasswd", str(path)).stdout == "alice\n"
    again = proxyindex("user", "remove", "carol", "--htpasswd", str(path))
    assert again.returncode == 1
    assert again.stderr.strip() == f"proxyindex: no user 'carol' in {path}"
