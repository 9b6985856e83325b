"""The web UI in a real browser: Debian's headless Chromium driven by Playwright.

What a person sees: the home page's snippets carry this server's URL, the project list
searches (with and without JavaScript), links lead to a project page with its versions
newest first, hashes and a rendered README whose ``<script>`` never runs, the cache page
shows its size against the cap and a chart, and with ``protect = ["list"]`` the project
pages ask for a login while the home page stays open.

Without ``/usr/bin/chromium`` these tests are skipped, except in CI (``CI=true``), where
``.ci/run`` installs it and a missing browser is a failure, never a silent skip.
Set ``PROXYINDEX_SCREENSHOTS=docs`` to refresh the screenshots the README shows.
"""

from __future__ import annotations

import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from playwright.sync_api import Browser, Error, Page, sync_playwright

from proxyindex.auth.authenticator import add_user
from tests.clients import client_env, run
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT, ProxyServer
from tests.wheelmaker import make_wheel, sha256_file

CHROMIUM = Path("/usr/bin/chromium")
_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

README = """# Corp tools

Helpers for **internal** use: `corp-tools sync` keeps things in line.

| command | what |
| ------- | ---- |
| sync    | sync |

<script>document.title = "pwned"; window.pwned = true;</script>

<img src="x" onerror="window.pwned = true">
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=_ARGS)
        yield launched
        launched.close()


def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Into ``docs/`` when asked to refresh them, else into the test's folder."""
    folder = REPO_ROOT / "docs" if os.environ.get("PROXYINDEX_SCREENSHOTS") else tmp_path
    page.screenshot(path=str(folder / f"ui-{name}.png"))


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - 127.0.0.1 only
        data: bytes = resp.read()
        return data


def proxy_with_projects(make_proxy: MakeProxy, **sections: dict[str, object]) -> ProxyServer:
    server: ProxyServer = cast(Any, make_proxy)(start=False, **sections)
    packages = server.config.parent / "packages"
    for version in ("1.0", "1.10", "1.9"):
        make_wheel(packages, "corp-tools", version, description=README)
    make_wheel(packages, "corp-utils", "0.3")
    make_wheel(packages, "data-pipeline", "2.1")
    server.start()
    return server


def test_a_person_browses_the_ui(
    browser: Browser, make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    wheel = fake_pypi.add_wheel("requests-lite", "2.0")
    server = proxy_with_projects(
        make_proxy, storage={"cache_max_size": 50 << 20}, upstream={"prefetch": False}
    )
    base = server.url.rstrip("/")
    file_url = f"{base}/packages/requests-lite/{wheel.name}"
    get(f"{base}/simple/requests-lite/")  # a miss, then hits
    get(file_url)
    blob = server.config.parent / "cache" / "files" / sha256_file(wheel)[:2] / sha256_file(wheel)
    deadline = time.monotonic() + 10
    while not blob.exists() and time.monotonic() < deadline:  # committed after the last byte
        time.sleep(0.05)
    for _ in range(3):
        get(f"{base}/simple/requests-lite/")
        get(file_url)
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Home: the snippets carry this server's URL.
    page.goto(base + "/")
    assert page.inner_text("#index-url") == f"{base}/simple/"
    assert page.inner_text("#upload-url") == f"{base}/"
    snippets = page.locator(".snippet pre").all_inner_texts()
    assert any(f"pip config set global.index-url {base}/simple/" in s for s in snippets)
    assert any(f'url = "{base}/simple/"' in s and "[[source]]" in s for s in snippets)
    assert any(f"repository = {base}/" in s for s in snippets)
    assert "127.0.0.1:8080" not in page.content()
    screenshot(page, "home", tmp_path)

    # Projects: follow the link, search by typing in the box.
    page.click("nav >> text=Private projects")
    assert page.url == f"{base}/ui/projects/"
    assert page.locator("table.list tbody tr").count() == 3
    screenshot(page, "projects", tmp_path)
    page.fill("input[name=q]", "corp")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(re.compile(r".*\?q=corp$"))
    names = page.locator("table.list tbody td:first-child").all_inner_texts()
    assert names == ["corp-tools", "corp-utils"]

    # A project page: versions newest first, sha256, the README rendered and defused.
    page.click("text=corp-tools")
    assert page.url == f"{base}/ui/projects/corp-tools/"
    versions = page.locator(".release th.ver").all_inner_texts()
    assert versions == ["1.10", "1.9", "1.0"]
    packages = server.config.parent / "packages"
    for path in packages.glob("corp_tools-*.whl"):
        assert page.locator(f"text={sha256_file(path)}").count() == 1
    assert page.inner_text(".readme h1") == "Corp tools"
    assert page.locator(".readme table td").first.inner_text() == "sync"
    assert page.locator(".readme script").count() == 0
    assert page.title() != "pwned"
    assert page.evaluate("window.pwned === undefined")
    assert "pip install --index-url" in page.inner_text(".install")
    screenshot(page, "project", tmp_path)

    # The cache page: size against the cap and the chart of the last hour.
    page.click("nav >> text=Cache")
    assert "of 50.0 MiB" in page.inner_text(".cards")
    assert page.locator("figure.chart svg rect.bar").count() == 60
    assert page.locator("text=requests-lite").count() >= 1
    assert page.inner_text("#hit-rate") == "75 %"  # 6 of 8: the first page and file missed
    screenshot(page, "cache", tmp_path)
    assert errors == []
    context.close()


def test_search_works_without_javascript(browser: Browser, make_proxy: MakeProxy) -> None:
    server = proxy_with_projects(make_proxy)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url.rstrip("/") + "/ui/projects/")
    page.fill("input[name=q]", "pipe")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*\?q=pipe$"))
    assert page.locator("table.list tbody td:first-child").all_inner_texts() == ["data-pipeline"]
    context.close()


def test_with_list_protected_projects_need_a_login_and_home_does_not(
    browser: Browser, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", "s3cret")
    server = proxy_with_projects(make_proxy, auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    base = server.url.rstrip("/")
    anonymous = browser.new_context()
    page = anonymous.new_page()
    statuses: dict[str, int] = {}
    page.on("response", lambda resp: statuses.__setitem__(resp.url, resp.status))
    home = page.goto(base + "/")
    assert home is not None and home.status == 200
    assert "log in to see them" in page.inner_text(".urls")
    assert all(status == 200 for status in statuses.values()), statuses  # no login asked
    for path in ("/ui/projects/", "/ui/projects/corp-tools/", "/ui/cache/"):
        # Headless Chromium cannot show the login dialog: the navigation fails on the 401.
        with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(base + path)
        assert statuses[base + path] == 401, path
    anonymous.close()
    alice = browser.new_context(http_credentials={"username": "alice", "password": "s3cret"})
    page = alice.new_page()
    resp = page.goto(base + "/ui/projects/corp-tools/")
    assert resp is not None and resp.status == 200
    assert page.locator(".release th.ver").first.inner_text() == "1.10"
    alice.close()


@pytest.mark.e2e
def test_what_a_person_copies_from_the_pages_works_with_pip(
    browser: Browser, make_proxy: MakeProxy, client_tmp: Path
) -> None:
    """The pip.conf of the home page and the install command of a project page, as the
    browser shows them, given to a real pip."""
    server = proxy_with_projects(make_proxy)
    base = server.url.rstrip("/")
    page = browser.new_page()
    page.goto(base + "/")
    pip_conf = page.locator(".snippet", has_text="pip.conf").locator("pre").inner_text()
    page.goto(base + "/ui/projects/corp-tools/")
    command = page.inner_text(".install").split()
    page.close()
    conf = client_tmp / "pip.conf"
    conf.write_text(pip_conf)
    env = client_env(client_tmp, PIP_CONFIG_FILE=str(conf))
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "download", "--no-deps", "-d", client_tmp / "dl", "corp-utils"], env, client_tmp)
    assert [p.name for p in (client_tmp / "dl").iterdir()] == ["corp_utils-0.3-py3-none-any.whl"]
    assert command[:2] == ["pip", "install"]
    target = client_tmp / "target"
    run([*pip, *command[1:], "--target", target], client_env(client_tmp), client_tmp)
    assert (target / "corp_tools-1.10.dist-info").is_dir()
