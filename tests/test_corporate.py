"""Corporate networks: a forward proxy as the only way out, a corporate CA, pypiserver-style
index URLs, and what ``--skip-existing`` users should do instead.

The proxy is a real one (proxy.py, ``tests.forwardproxy``) on 127.0.0.1; the CA and the
upstream's certificate are made by trustme, and the fake upstream serves HTTPS with it.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import trustme
from yarl import URL

from proxyindex.config import ConfigError, load_config
from proxyindex.upstream.network import (
    ProxyRoutes,
    bypasses,
    env_proxies,
    parse_proxy,
    tls_context,
)
from tests.clients import (
    client_env,
    make_venv,
    run,
    run_pip_install,
    run_twine_upload,
    run_uv_pip_install,
)
from tests.fakepypi import FakePyPI
from tests.forwardproxy import ForwardProxy
from tests.test_docker import dockerfile_instructions

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import MakeAppClient, MakeProxy

# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def corp_ca() -> trustme.CA:
    return trustme.CA(organization_name="Corp Example Root CA")


@pytest.fixture
def ca_file(corp_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "corp-ca.pem"
    corp_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_upstream(corp_ca: trustme.CA) -> Iterator[FakePyPI]:
    """A fake upstream on https://127.0.0.1 whose certificate the corporate CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    corp_ca.issue_cert("127.0.0.1").configure_cert(context)
    with FakePyPI(tls=context) as fake:
        yield fake


@pytest.fixture
def forward_proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with ForwardProxy(tmp_path / "forward-proxy") as proxy:
        yield proxy


def _get(url: str) -> tuple[int, str]:
    """A plain GET (no proxy, whatever the environment says) -> (status, body or reason)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---------------------------------------------------------------------------------------------
# pure parts: which proxy, NO_PROXY, masking


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:1"}, {"https": "http://p:1"}),
        ({"HTTPS_PROXY": "http://up:1", "https_proxy": "http://low:1"}, {"https": "http://low:1"}),
        ({"HTTP_PROXY": "http://p:1", "http_proxy": ""}, {}),  # an empty lowercase one unsets
        ({"no_proxy": "a,b", "PATH": "/bin"}, {"no": "a,b"}),
        ({"HTTPS_PROXY": ""}, {}),
    ],
)
def test_proxy_variables_are_read_like_urllib(
    environ: dict[str, str], expected: dict[str, str]
) -> None:
    assert env_proxies(environ) == expected


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("127.0.0.1,localhost", "127.0.0.1", 8080, True),
        ("corp.example", "pypi.corp.example", 443, True),  # subdomains too, as curl does
        (".corp.example", "corp.example", 443, True),
        ("*.corp.example", "pypi.corp.example", 443, True),
        ("corp.example", "notcorp.example", 443, False),
        (" pypi.org , files.pythonhosted.org ", "files.pythonhosted.org", 443, True),
        ("pypi.org:8443", "pypi.org", 443, False),
        ("pypi.org:443", "pypi.org", 443, True),
        ("*", "anything", 80, True),
        ("", "pypi.org", 443, False),
        ("::1", "::1", 80, True),
        ("[::1]:80", "::1", 80, True),
        ("PyPI.org", "pypi.ORG", 443, True),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert bypasses(no_proxy, host, port) is bypassed


def test_the_proxy_is_chosen_by_scheme_and_the_setting_wins_over_the_environment() -> None:
    environ = {
        "HTTPS_PROXY": "http://tls-proxy:3128",
        "http_proxy": "plain-proxy:8080",  # no scheme: http://, as curl reads it
        "NO_PROXY": "internal.example",
    }
    routes = ProxyRoutes.from_settings("", environ)

    def chosen(url: str) -> str | None:
        proxy = routes.for_url(URL(url))
        return None if proxy is None else str(proxy.url)

    assert chosen("https://pypi.org/simple/") == "http://tls-proxy:3128"
    assert chosen("http://mirror.example/simple/") == "http://plain-proxy:8080"
    assert chosen("https://pypi.internal.example/simple/") is None
    explicit = ProxyRoutes.from_settings("http://corp:3128", environ)
    assert explicit.for_url(URL("https://pypi.internal.example/simple/")) is not None
    assert ProxyRoutes.from_settings("", {}).for_url(URL("https://pypi.org/")) is None
    socks = ProxyRoutes.from_settings("", {"HTTPS_PROXY": "socks5://proxy.corp:1080"})
    assert socks.for_url(URL("https://pypi.org/")) is None  # cannot be used: said at start-up
    assert socks.ignored == (
        "HTTPS_PROXY: expected an http:// proxy URL, got socks5://proxy.corp:1080",
    )


def test_proxy_credentials_are_kept_apart_and_masked() -> None:
    proxy = parse_proxy("http://alice:s3cret@proxy.corp:3128/", "upstream.proxy")
    assert str(proxy.url) == "http://proxy.corp:3128"
    assert (proxy.login, proxy.password) == ("alice", "s3cret")
    assert proxy.display() == "http://alice:***@proxy.corp:3128"
    assert "s3cret" not in repr(proxy)
    described = ProxyRoutes.from_settings("http://alice:s3cret@proxy.corp:3128", {}).describe()
    assert described is not None
    assert "s3cret" not in described
    assert "alice:***@" in described


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("proxy", "socks5://proxy.corp:1080", "upstream.proxy: expected an http:// proxy URL"),
        ("proxy", "http://u:pw@:3128", "upstream.proxy"),
        ("proxy", "http://u:pw@[bad:3128", "upstream.proxy: not a valid URL"),
        ("ca_file", "missing.pem", "upstream.ca_file: cannot load"),
        ("ca_file", "config.toml", "upstream.ca_file: cannot load"),
    ],
)
def test_a_bad_proxy_or_ca_file_stops_start_up_naming_the_key(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[upstream]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError, match=message) as info:
        load_config(config)
    assert "pw" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# trust: the system's CAs plus upstream.ca_file


@pytest.mark.parametrize("platform", ["linux", "darwin"])
async def test_tls_context_trusts_the_ca_file_in_addition_to_the_system(
    tls_upstream: FakePyPI, ca_file: Path, platform: str
) -> None:
    """Both backends: OpenSSL's system bundle (Linux) and truststore (macOS, Windows), which
    also runs on Linux, so its ``load_verify_locations`` is checked here too."""
    url = tls_upstream.simple_url
    system_only = tls_context(None, platform=platform)  # None: aiohttp's default, the same
    if system_only is not None:
        assert system_only.verify_mode == ssl.CERT_REQUIRED
        assert system_only.check_hostname
    connector = aiohttp.TCPConnector(ssl=system_only if system_only is not None else True)
    async with aiohttp.ClientSession(connector=connector) as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(url)
    with_ca = tls_context(ca_file, platform=platform)
    assert with_ca is not None
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=with_ca)) as s,
        s.get(url) as resp,
    ):
        assert resp.status == 200


async def test_an_untrusted_upstream_certificate_is_a_502_that_names_upstream_ca_file(
    make_app_client: MakeAppClient, tls_upstream: FakePyPI
) -> None:
    tls_upstream.add_wheel("corp-tool", "1.0")
    client = await make_app_client(upstream={"url": tls_upstream.simple_url})
    resp = await client.get("/simple/corp-tool/")
    assert resp.status == 502
    reason = await resp.text()
    assert "certificate" in reason
    assert "upstream.ca_file" in reason
    assert resp.reason is not None
    assert "upstream.ca_file" in resp.reason
    assert tls_upstream.requests == []  # the handshake failed: no request reached it


# ---------------------------------------------------------------------------------------------
# proxies, in process (the environment is the test's)


async def test_https_upstream_is_reached_through_the_https_proxy_tunnel(
    make_app_client: MakeAppClient,
    tls_upstream: FakePyPI,
    ca_file: Path,
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY: a CONNECT tunnel through the proxy, TLS inside it checked against the CA."""
    wheel = tls_upstream.add_wheel("corp-tool", "1.0")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)
    client = await make_app_client(
        upstream={"url": tls_upstream.simple_url, "ca_file": str(ca_file), "prefetch": False}
    )
    page = await client.get("/simple/corp-tool/")
    assert page.status == 200, await page.text()
    got = await client.get(f"/packages/corp-tool/{wheel.name}")
    assert await got.read() == wheel.read_bytes()
    forward_proxy.wait_for("CONNECT", f"127.0.0.1:{tls_upstream.port}")
    assert tls_upstream.count("/simple/corp-tool/") == 1


async def test_no_proxy_hosts_are_reached_directly(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    forward_proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY set on the machine, NO_PROXY covering the upstream: the proxy never sees it."""
    fake_pypi.add_wheel("corp-tool", "1.0")
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.setenv("http_proxy", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.delenv("no_proxy")
    client = await make_app_client()
    assert (await client.get("/simple/corp-tool/")).status == 200
    assert fake_pypi.count("/simple/corp-tool/") == 1
    # proxy.py adds "Via" to the first request of each connection it opens upstream.
    assert not [r.path for r in fake_pypi.requests if "Via" in r.headers]
    assert forward_proxy.requests() == []


# ---------------------------------------------------------------------------------------------
# pypiserver-style index URLs: /<name>/ -> /simple/<name>/


@pytest.mark.parametrize(
    ("method", "path", "status", "location"),
    [
        ("GET", "/corp-tool/", 301, "/simple/corp-tool/"),
        ("GET", "/Corp_Tool/", 301, "/simple/corp-tool/"),
        ("GET", "/corp.tool", 301, "/simple/corp-tool/"),
        ("HEAD", "/corp-tool/", 301, "/simple/corp-tool/"),
        ("GET", "/corp-tool/?format=json", 301, "/simple/corp-tool/?format=json"),
        # our own routes are never taken for project names
        ("GET", "/", 200, None),
        ("GET", "/health", 200, None),
        ("GET", "/health/", 404, None),
        ("GET", "/simple", 301, "/simple/"),
        ("GET", "/packages/", 404, None),
        ("GET", "/pypi/", 404, None),
        ("GET", "/legacy/", 405, None),  # the upload URL: POST only, as before
        ("GET", "/legacy", 405, None),
        ("GET", "/-not-a-name-/", 404, None),
    ],
)
async def test_project_names_at_the_root_redirect_to_the_simple_page(
    make_app_client: MakeAppClient, method: str, path: str, status: int, location: str | None
) -> None:
    client = await make_app_client()
    resp = await client.request(method, path, allow_redirects=False)
    assert resp.status == status
    assert resp.headers.get("Location") == location


async def test_the_upload_url_still_takes_posts(make_app_client: MakeAppClient) -> None:
    """POST / is the upload URL (never a redirect): a form without :action is its 400."""
    client = await make_app_client(auth={"anonymous_upload": True})
    resp = await client.post("/", data={"name": "x"}, allow_redirects=False)
    assert resp.status == 400
    assert "action" in await resp.text()


# ---------------------------------------------------------------------------------------------
# real clients through the real server


@pytest.mark.e2e
def test_pip_installs_through_the_proxy_named_by_http_proxy(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, forward_proxy: ForwardProxy, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("corp-tool", "1.0")
    other = fake_pypi.add_wheel("other-tool", "1.0")
    fake_pypi.add_wheel("third-tool", "1.0")
    server = make_proxy(
        env={"HTTP_PROXY": forward_proxy.url, "NO_PROXY": "", "no_proxy": ""},
        upstream={"prefetch": False},
    )
    report = run_pip_install(client_tmp, server.index_url, "corp-tool", target=client_tmp / "t")
    assert report.versions() == {"corp-tool": "1.0"}
    forward_proxy.wait_for("GET", f"127.0.0.1:{fake_pypi.port}/simple/corp-tool/")
    assert "Via" in fake_pypi.requests_for("/simple/corp-tool/")[0].headers  # proxy.py's mark
    assert _get(server.index_url + "other-tool/")[0] == 200  # its page is cached now

    # Proof the proxy is the way out for pages and files: without it, the (running) upstream
    # is unreachable, and the reason names the proxy.
    forward_proxy.stop()
    for path in (f"/packages/other-tool/{other.name}", "/simple/third-tool/"):
        status, reason = _get(server.url + path)
        assert status == 502, path
        assert f"cannot connect to the proxy {forward_proxy.url} (HTTP_PROXY)" in reason
    assert fake_pypi.count("/simple/third-tool/") == 0
    assert not [p for p in fake_pypi.paths() if other.name in p]
    server.wait_for_log(f"go through {forward_proxy.url} \\(HTTP_PROXY\\)")  # said at start-up


@pytest.mark.e2e
def test_upstream_proxy_setting_wins_and_its_password_is_never_logged(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("corp-tool", "1.0")
    password = "pr0xy-s3cret"
    with ForwardProxy(tmp_path / "authproxy", credentials=f"corp:{password}") as forward:
        proxy_url = f"http://corp:{password}@127.0.0.1:{forward.port}"
        # The environment names a proxy nobody listens on: were it used, nothing would work.
        dead = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
        server = make_proxy(env=dead, upstream={"proxy": proxy_url, "prefetch": False})
        report = run_pip_install(client_tmp, server.index_url, "corp-tool", target=client_tmp / "t")
        assert report.versions() == {"corp-tool": "1.0"}
        forward.wait_for("GET", "/simple/corp-tool/")
        server.wait_for_log(f"go through http://corp:\\*\\*\\*@127.0.0.1:{forward.port} ")

        wrong = make_proxy(
            env=dead, upstream={"proxy": f"http://corp:nope@127.0.0.1:{forward.port}"}
        )
        status, reason = _get(wrong.index_url + "corp-tool/")
        assert status == 502
        assert "407" in reason
        assert "corp:***@" in reason
        for text in (server.log_text(), wrong.log_text(), reason):
            assert password not in text
            assert "nope" not in text


@pytest.mark.e2e
def test_pip_installs_from_an_https_upstream_signed_by_the_ca_file(
    make_proxy: MakeProxy, tls_upstream: FakePyPI, ca_file: Path, client_tmp: Path
) -> None:
    tls_upstream.add_wheel("corp-tool", "1.0", requires_dist=["corp-dep"])
    tls_upstream.add_wheel("corp-dep", "2.0")
    server = make_proxy(tls_upstream.simple_url, upstream={"ca_file": str(ca_file)})
    report = run_pip_install(client_tmp, server.index_url, "corp-tool", target=client_tmp / "t")
    assert report.versions() == {"corp-tool": "1.0", "corp-dep": "2.0"}
    assert tls_upstream.count("/files/") >= 2


@pytest.mark.e2e
def test_pip_with_the_server_root_as_index_url_installs(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    """A pypiserver migrant's ``--index-url http://host:port/``: pip and uv ask ``/<name>/``."""
    fake_pypi.add_wheel("corp-tool", "1.0", requires_dist=["Corp_Dep"])
    fake_pypi.add_wheel("corp-dep", "2.0")
    server = make_proxy()
    report = run_pip_install(client_tmp, server.url + "/", "corp-tool", target=client_tmp / "t")
    assert report.versions() == {"corp-tool": "1.0", "corp-dep": "2.0"}
    uv = run_uv_pip_install(
        client_tmp / "uv", server.url + "/", "corp-tool", python=make_venv(client_tmp / "venv")
    )
    assert uv.installed == {"corp-tool": "1.0", "corp-dep": "2.0"}


@pytest.mark.e2e
def test_twine_refuses_skip_existing_here_and_identical_reuploads_are_accepted(
    make_proxy: MakeProxy, sample_dists: list[Path], client_tmp: Path
) -> None:
    """What the README's Publishing section tells ``--skip-existing`` users to do instead
    (U-06); ``uv publish --check-url`` is covered in ``test_story``."""
    server = make_proxy(auth={"anonymous_upload": True})
    run_twine_upload(client_tmp / "first", server.upload_url, sample_dists)
    skip = run_twine_upload(
        client_tmp / "skip", server.upload_url, sample_dists,
        extra_args=["--skip-existing"], check=False,
    )  # fmt: skip
    assert skip.returncode != 0
    assert "--skip-existing" in skip.stdout + skip.stderr
    again = run_twine_upload(client_tmp / "again", server.upload_url, sample_dists)
    assert again.returncode == 0


@pytest.mark.e2e
def test_the_image_health_check_is_not_sent_to_the_proxy(
    make_proxy: MakeProxy, client_tmp: Path
) -> None:
    """A container given HTTP_PROXY for its upstream must still find itself healthy."""
    server = make_proxy()
    healthcheck = json.loads(dict(dockerfile_instructions())["HEALTHCHECK"].partition("CMD ")[2])
    nobody = "http://127.0.0.1:9"  # a proxy nobody listens on
    env = client_env(
        client_tmp,
        PROXYINDEX_SERVER_PORT=str(server.port),
        HTTP_PROXY=nobody,
        http_proxy=nobody,
        NO_PROXY="",
        no_proxy="",
    )
    run(healthcheck, env, cwd=client_tmp, timeout=10)
