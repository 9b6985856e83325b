"""The web UI's yank, unyank and remove buttons (issue 11 §2/§3), pressed in real Chromium with
JavaScript off; a forged POST (no CSRF token, or one that does not match the cookie) changes
nothing; the project page shows who uploaded each file."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from proxyindex.auth.authenticator import add_user
from tests.clients import run_twine_upload
from tests.conftest import MakeProxy
from tests.test_ui_browser import browser, proxy_with_projects
from tests.wheelmaker import make_wheel

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared


def _post(url: str, fields: dict[str, str], cookie: str | None = None) -> int:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie is not None:
        headers["Cookie"] = cookie
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        url, data=urllib.parse.urlencode(fields).encode(), headers=headers, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _yanked(base: str, name: str) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310
        f"{base}/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        page = json.loads(response.read())
    return {f["filename"]: f["yanked"] for f in page["files"]}


def test_buttons_yank_unyank_and_remove_without_javascript(
    browser: Browser, make_proxy: MakeProxy
) -> None:
    server = proxy_with_projects(make_proxy)  # no users: people on this host may manage
    base = server.url.rstrip("/")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{base}/ui/projects/corp-tools/")
    release = page.locator("tbody#v1\\.9")
    release.locator("input[name=reason]").fill('broken <b>"build"</b>')
    release.locator("button[value=yank]").click()
    page.wait_for_url(f"{base}/ui/projects/corp-tools/#v1.9")
    assert 'yanked: broken <b>"build"</b>' in page.locator("tbody#v1\\.9 th.ver").inner_text()
    assert _yanked(base, "corp-tools")["corp_tools-1.9-py3-none-any.whl"] == (
        'broken <b>"build"</b>'
    )
    page.locator("tbody#v1\\.9 button[value=unyank]").click()
    page.wait_for_url(f"{base}/ui/projects/corp-tools/#v1.9")
    assert "yanked" not in page.locator("tbody#v1\\.9 th.ver").inner_text()
    assert _yanked(base, "corp-tools")["corp_tools-1.9-py3-none-any.whl"] is False
    # Remove asks for the confirm box first.
    page.locator("tbody#v1\\.0 button[value=remove]").click()
    assert "confirm" in page.inner_text("body")
    page.goto(f"{base}/ui/projects/corp-tools/")
    page.locator("tbody#v1\\.0 input[name=confirm]").check()
    page.locator("tbody#v1\\.0 button[value=remove]").click()
    page.wait_for_url(f"{base}/ui/projects/corp-tools/#v1.0")
    assert page.locator(".release th.ver").all_inner_texts() == ["1.10", "1.9"]
    assert not (server.config.parent / "packages" / "corp_tools-1.0-py3-none-any.whl").exists()
    context.close()


@pytest.mark.parametrize(
    ("fields", "cookie"),
    [
        ({"op": "remove", "version": "1.0", "confirm": "yes"}, None),
        ({"op": "remove", "version": "1.0", "confirm": "yes", "csrf": "x" * 43}, None),
        (
            {"op": "remove", "version": "1.0", "confirm": "yes", "csrf": "x" * 43},
            "pxi_csrf=" + "y" * 43,
        ),
        ({"op": "yank", "version": "1.0", "csrf": ""}, "pxi_csrf="),
    ],
)
def test_a_forged_post_without_the_matching_token_is_refused(
    make_proxy: MakeProxy, fields: dict[str, str], cookie: str | None
) -> None:
    server = proxy_with_projects(make_proxy)
    url = f"{server.url.rstrip('/')}/ui/projects/corp-tools/manage"
    assert _post(url, fields, cookie) == 403
    assert (server.config.parent / "packages" / "corp_tools-1.0-py3-none-any.whl").exists()
    assert all(v is False for v in _yanked(server.url.rstrip("/"), "corp-tools").values())


def test_the_project_page_shows_the_uploader_and_buttons_only_after_a_login(
    browser: Browser, make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "s3cret")
    add_user(htpasswd, "bob", "hunter2")
    server = make_proxy(auth={"htpasswd": str(htpasswd), "uploaders": ["alice"]})
    base = server.url.rstrip("/")
    wheel = make_wheel(tmp_path / "dist", "corp-owned", "1.0")
    run_twine_upload(client_tmp / "twine", server.upload_url, [wheel], "alice", "s3cret")
    anonymous = browser.new_context()
    page = anonymous.new_page()
    page.goto(f"{base}/ui/projects/corp-owned/")
    assert page.locator("td.uploader").all_inner_texts() == ["alice"]
    assert page.locator("form.manage").count() == 0
    assert page.locator("p.login a").count() == 1
    anonymous.close()
    bob = browser.new_context(http_credentials={"username": "bob", "password": "hunter2"})
    page = bob.new_page()
    page.goto(f"{base}/ui/projects/corp-owned/")
    assert page.locator("form.manage").count() == 0  # bob may not upload: no buttons
    bob.close()
    alice = browser.new_context(
        http_credentials={"username": "alice", "password": "s3cret"}, java_script_enabled=False
    )
    page = alice.new_page()
    page.goto(f"{base}/ui/projects/corp-owned/")
    page.click("p.login a")  # the login asks for credentials, then comes back
    page.wait_for_url(f"{base}/ui/projects/corp-owned/")
    page.locator("tbody#v1\\.0 input[name=reason]").fill("superseded")
    page.locator("tbody#v1\\.0 button[value=yank]").click()
    page.wait_for_url(f"{base}/ui/projects/corp-owned/#v1.0")
    assert "yanked: superseded" in page.inner_text("tbody#v1\\.0 th.ver")
    alice.close()
