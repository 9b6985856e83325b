"""Several upstreams (issue 8 §1): ``[[upstreams]]`` config, pins, first-index routing, no
fall-through past a down upstream, credentials sent only where they belong, the root union.

Two fake indexes: the session's ``fake_pypi`` and ``second``, another :class:`FakePyPI`.
Files of the same name differ in content between them (a module saying where it came from),
so every test can tell which upstream a page or a file came from by its sha256.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import NormalizedName

from proxyindex import cli
from proxyindex.config import (
    DEFAULT_UPSTREAM,
    Config,
    ConfigError,
    UpstreamSource,
    load_config,
)
from proxyindex.upstream import routing
from proxyindex.upstream.credentials import load_credentials
from proxyindex.web import appkeys
from proxyindex.web.app import create_app
from tests.conftest import AppClient
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT, ProxyServer, write_config

JSON = "application/vnd.pypi.simple.v1+json"
TOKEN = "s3cr3t-t0ken-value"


# --- config ---------------------------------------------------------------------------------


def test_upstreams_tables_load_in_order_with_pins_normalised(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[upstream]\npage_ttl = 100\n\n[[upstreams]]\nname = "cuda"\n'
        'url = "https://download.pytorch.org/whl/cu124"\nprojects = ["Torch", "nvidia_*"]\n'
        "timeout = 7\n\n"
        '[[upstreams]]\nname = "pypi"\nurl = "https://pypi.org/simple/"\n'
    )
    config = load_config(path)
    (cuda, cuda_settings), (pypi, pypi_settings) = config.sources()
    assert cuda.projects == ("torch", "nvidia-*")
    assert cuda_settings.url == "https://download.pytorch.org/whl/cu124/"
    assert (cuda_settings.timeout, cuda_settings.page_ttl) == (7, 100)
    assert (pypi.name, pypi_settings.timeout, pypi_settings.page_ttl) == ("pypi", 30, 100)


def test_single_upstream_table_is_one_upstream_named_pypi() -> None:
    config = load_config(None, environ={"PROXYINDEX_UPSTREAM_URL": "http://mirror.example/s/"})
    ((source, settings),) = config.sources()
    assert (source.name, source.url, source.projects) == ("pypi", "http://mirror.example/s/", ())
    assert settings == config.upstream


def test_upstreams_from_the_environment_as_a_toml_array() -> None:
    environ = {"PROXYINDEX_UPSTREAMS": '[{name = "a", url = "http://a.example/simple/"}]'}
    config = load_config(None, environ=environ)
    assert [source.name for source, _ in config.sources()] == ["a"]


def test_every_upstreams_key_is_documented_in_config_toml() -> None:
    """The [[upstreams]] example in config.toml is commented out (none is the default), so
    the file-equals-defaults test cannot see it: each key must be shown there, commented."""
    text = (REPO_ROOT / "config.toml").read_text(encoding="utf-8")
    block = text[text.index("# [[upstreams]]") :].splitlines()
    commented = block[: next((i for i, line in enumerate(block) if line[:1] != "#"), len(block))]
    example = "\n".join(line.removeprefix("# ") for line in commented if not line.startswith("# #"))
    tables = tomllib.loads(example)["upstreams"]
    documented = set().union(*(table.keys() for table in tables))
    assert documented == set(UpstreamSource.__dataclass_fields__)
    assert "upstreams" not in tomllib.loads(text)  # the shipped defaults: one upstream
    load_config(None, overrides={"upstreams": tables[:1]})  # the example itself is valid


@pytest.mark.parametrize(
    ("tables", "named"),
    [
        ([{"name": "a", "url": "ftp://x/"}], "upstreams[1].url"),
        ([{"name": "A b", "url": "http://x/"}], "upstreams[1].name"),
        ([{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}], "upstreams[2]"),
        ([{"name": "a", "url": "http://u:p@x/"}], "no credentials in the URL"),
        ([{"name": "a", "url": "http://x/", "username": "u"}], "username without"),
        ([{"name": "a", "url": "http://x/", "password_env": "P"}], "upstreams[1].username"),
        (
            [{"name": "a", "url": "http://x/", "token_env": "T", "token_file": "t"}],
            "give one of",
        ),
        (
            [
                {"name": "a", "url": "http://x/", "projects": ["Torch"]},
                {"name": "b", "url": "http://y/", "projects": ["torch"]},
            ],
            "pinned to upstream 'a' too",
        ),
        ([{"name": "a", "url": "http://x/", "colour": "red"}], "upstreams[1].colour"),
        ([{"name": "a", "url": "http://x/", "page_ttl": "1"}], "upstreams[1].page_ttl"),
        ([{"name": "a", "url": "http://x/", "explicit": True}], "explicit upstream needs"),
    ],
)
def test_bad_upstreams_tables_name_the_key(tables: list[dict[str, Any]], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, overrides={"upstreams": tables})


def test_upstream_url_and_upstreams_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"upstream\.url: not used with"):
        load_config(
            None,
            overrides={
                "upstream": {"url": "http://other.example/simple/"},
                "upstreams": [{"name": "a", "url": "http://a.example/"}],
            },
        )


def test_repeated_upstream_flag_lists_upstreams_in_order() -> None:
    args = cli._parser().parse_args(
        ["serve", "--upstream", "https://pypi.org/simple/", "--upstream", "http://h:81/s/"]
    )
    config = load_config(None, overrides=cli._overrides(args))
    assert [(s.name, s.url) for s, _ in config.sources()] == [
        ("pypi", "https://pypi.org/simple/"),
        ("h", "http://h:81/s/"),
    ]
    one = cli._parser().parse_args(["serve", "--upstream", "http://h/s/"])
    config = load_config(None, environ={"PROXYINDEX_UPSTREAMS": '[{name="a", url="http://a/"}]'},
                         overrides=cli._overrides(one))  # fmt: skip
    assert [(s.name, s.url) for s, _ in config.sources()] == [("pypi", "http://h/s/")]


def test_credentials_come_from_env_or_file_and_never_show_in_repr(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    source = UpstreamSource(name="a", url="http://a.example:8080/", token_file=secret)
    creds = load_credentials(source, 1, {})
    assert creds is not None
    assert creds.headers_for("http://a.example:8080/simple/x/") == {
        "Authorization": f"Bearer {TOKEN}"
    }
    assert creds.headers_for("http://a.example:8081/x") == {}  # another port: another server
    assert creds.headers_for("https://files.example/x") == {}
    assert TOKEN not in repr(creds)
    basic = UpstreamSource(name="b", url="http://b/", username="u", password_env="PW")
    creds = load_credentials(basic, 2, {"PW": "pw"})
    assert creds is not None and creds.header == "Basic " + base64.b64encode(b"u:pw").decode()
    with pytest.raises(ConfigError, match=r"upstreams\[2\]\.password_env: .*PW is not set"):
        load_credentials(basic, 2, {})


# --- routing, the pure rule -------------------------------------------------------------------

A, B, C = "a", "b", "c"
HAS, LACKS, DOWN = routing.Answer.HAS, routing.Answer.LACKS, routing.Answer.DOWN


def test_candidates_pinned_name_has_one_upstream_others_skip_explicit_upstreams() -> None:
    sources = [
        UpstreamSource(name="cuda", url="http://c/", projects=("torch", "nvidia-*"), explicit=True),
        UpstreamSource(name="pypi", url="http://p/"),
        UpstreamSource(name="corp", url="http://x/", projects=("corp-tool",)),
    ]
    assert routing.candidates("torch", sources) == ("cuda",)
    assert routing.candidates("nvidia-cublas-cu12", sources) == ("cuda",)
    assert routing.candidates("corp-tool", sources) == ("corp",)
    assert routing.candidates("numpy", sources) == ("pypi", "corp")  # explicit: pins only


@pytest.mark.parametrize(
    ("answers", "served_by", "step"),
    [
        ({}, None, routing.Ask(A)),
        ({A: HAS}, None, routing.Serve(A)),
        ({A: LACKS}, None, routing.Ask(B)),  # a 404 moves on
        ({A: LACKS, B: HAS}, None, routing.Serve(B)),
        ({A: LACKS, B: LACKS, C: LACKS}, None, routing.NotFound()),
        ({A: DOWN}, None, routing.Unknown(A)),  # no knowledge: never fall through
        ({A: DOWN}, A, routing.Unknown(A)),  # the down one serves it
        ({A: DOWN}, C, routing.Ask(B)),  # a later one is known to serve it
        ({A: DOWN, B: LACKS, C: HAS}, C, routing.Serve(C)),
        ({A: LACKS, B: DOWN}, A, routing.Unknown(B)),  # A lost it since: B may be next
        ({A: HAS, B: DOWN}, None, routing.Serve(A)),
    ],
)
def test_next_step_truth_table(
    answers: dict[str, routing.Answer], served_by: str | None, step: routing.Step
) -> None:
    assert routing.next_step((A, B, C), answers, served_by) == step


def test_next_step_pinned_name_never_leaves_its_upstream() -> None:
    assert routing.next_step((A,), {A: DOWN}, None) == routing.Unknown(A)
    assert routing.next_step((A,), {A: LACKS}, None) == routing.NotFound()


# --- two real fake indexes, the real app in-process -----------------------------------------


@pytest.fixture(scope="module")
def second_server() -> Iterator[FakePyPI]:
    with FakePyPI() as server:
        yield server


@pytest.fixture
def second(second_server: FakePyPI) -> FakePyPI:
    second_server.start()
    second_server.reset()
    return second_server


def publish(fake: FakePyPI, name: str, version: str, origin: str) -> str:
    """A wheel whose module says ``origin``; returns its sha256."""
    module = name.replace("-", "_")
    path = fake.add_wheel(name, version, modules={module: f"ORIGIN = {origin!r}\n"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


MakeApp = Callable[..., Awaitable[AppClient]]


@pytest.fixture
def make_app(aiohttp_client: Callable[..., Awaitable[AppClient]], tmp_path: Path) -> MakeApp:
    """An in-process app over ``upstreams`` (a list of tables), its cache in tmp_path."""

    async def factory(
        upstreams: Sequence[Mapping[str, Any]], cache: str = "cache", **upstream: Any
    ) -> AppClient:
        overrides: dict[str, Any] = {
            "storage": {
                "packages_dir": str(tmp_path / "packages"),
                "cache_dir": str(tmp_path / cache),
            },
            "upstream": {
                "timeout": 5,
                "connect_timeout": 2,
                "check_interval": 0,
                "prefetch": False,
                **upstream,
            },
            "upstreams": list(upstreams),
        }
        return await aiohttp_client(create_app(load_config(None, overrides=overrides)))

    return factory


async def page_hashes(client: AppClient, name: str) -> set[str]:
    resp = await client.get(f"/simple/{name}/", headers={"Accept": JSON})
    assert resp.status == 200, await resp.text()
    return {f["hashes"]["sha256"] for f in json.loads(await resp.read())["files"]}


async def on_disk(client: AppClient, upstream: str, name: str) -> None:
    """Wait until ``name``'s page of ``upstream`` is in the page cache (written after the
    answer: a test that closes the app at once may otherwise cancel the write)."""
    pages = client.app[appkeys.PAGES]
    store = pages if upstream == "pypi" else pages.namespace(upstream)
    for _ in range(200):
        if await store.get(NormalizedName(name), any_writer=True) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the page of {name} from {upstream} was never stored")


def two(first: FakePyPI, second: FakePyPI, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "first", "url": first.simple_url},
        {"name": "second", "url": second.simple_url, **extra},
    ]


async def test_first_upstream_that_has_the_name_wins_and_pages_are_never_merged(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    on_first = publish(fake_pypi, "shared", "1.0", "first")
    publish(second, "shared", "2.0", "second")  # a higher version: still never shown
    only_second = publish(second, "extra", "1.0", "second")
    client = await make_app(two(fake_pypi, second))
    assert await page_hashes(client, "shared") == {on_first}
    assert second.count("/simple/shared/") == 0  # the first had it: the second never asked
    assert await page_hashes(client, "extra") == {only_second}  # a 404 moves on
    resp = await client.get("/simple/nowhere/")
    assert resp.status == 404


async def test_pinned_name_comes_only_from_its_upstream(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    publish(fake_pypi, "torch", "9.0", "first")
    pinned = publish(second, "torch", "1.0", "second")
    publish(second, "numpy", "1.0", "second")  # the explicit index has others: never served
    client = await make_app(two(fake_pypi, second, projects=["torch"], explicit=True))
    assert await page_hashes(client, "torch") == {pinned}
    assert fake_pypi.count("/simple/torch/") == 0
    assert (await client.get("/simple/numpy/")).status == 404
    assert second.count("/simple/numpy/") == 0
    # The file comes from the pinned upstream too, verified against its hash.
    filename = "torch-1.0-py3-none-any.whl"
    resp = await client.get(f"/packages/torch/{filename}")
    assert resp.status == 200
    assert hashlib.sha256(await resp.read()).hexdigest() == pinned
    assert fake_pypi.count("/files/") == 0
    doc = json.loads(await (await client.get("/pypi/torch/json")).read())  # routed alike
    assert doc["info"]["version"] == "1.0"
    assert {u["digests"]["sha256"] for u in doc["urls"]} == {pinned}


async def test_pinned_upstream_down_is_a_502_and_no_other_is_asked(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    publish(fake_pypi, "torch", "9.0", "first")
    client = await make_app(two(fake_pypi, second, projects=["torch"]))
    second.status = 503
    resp = await client.get("/simple/torch/")
    assert resp.status == 502
    assert "comes only from upstream 'second'" in await resp.text()
    assert fake_pypi.count("/simple/torch/") == 0


async def test_down_first_upstream_never_lets_a_later_one_serve_an_unknown_name(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    """The dependency-confusion hole of naive multi-index setups: the internal index (first)
    is down, and the public one (second) has an attacker's project of the same name."""
    publish(fake_pypi, "acme-internal", "1.0", "first")
    publish(second, "acme-internal", "99.0", "attacker")
    client = await make_app(two(fake_pypi, second))
    fake_pypi.stop()  # connection refused
    resp = await client.get("/simple/acme-internal/")
    assert resp.status == 502
    text = await resp.text()
    assert "upstream 'first' may serve 'acme-internal'" in text
    assert "later upstreams are not asked" in text
    assert second.count("/simple/acme-internal/") == 0
    json_api = await client.get("/pypi/acme-internal/json")  # the JSON API routes alike
    assert json_api.status == 502
    assert second.count("/simple/acme-internal/") == 0


async def test_first_upstream_timing_out_is_a_504_and_the_next_is_not_asked(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    publish(second, "acme-internal", "99.0", "attacker")
    client = await make_app(two(fake_pypi, second), timeout=1)
    fake_pypi.delay = 3
    resp = await client.get("/simple/acme-internal/")
    assert resp.status == 504
    assert "upstream 'first' may serve 'acme-internal'" in await resp.text()
    assert second.count("/simple/acme-internal/") == 0


async def test_down_upstream_serves_its_stale_page_even_after_a_restart(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    ours = publish(fake_pypi, "acme-internal", "1.0", "first")
    publish(second, "acme-internal", "99.0", "attacker")
    client = await make_app(two(fake_pypi, second), page_ttl=0)
    assert await page_hashes(client, "acme-internal") == {ours}
    await on_disk(client, "first", "acme-internal")
    await client.close()
    fake_pypi.stop()
    restarted = await make_app(two(fake_pypi, second), page_ttl=0)  # same cache folder
    assert await page_hashes(restarted, "acme-internal") == {ours}
    assert second.count("/simple/acme-internal/") == 0


async def test_name_known_to_come_from_a_later_upstream_survives_the_first_going_down(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    theirs = publish(second, "extra", "1.0", "second")
    client = await make_app(two(fake_pypi, second), negative_ttl=0)
    assert await page_hashes(client, "extra") == {theirs}  # the first said 404
    fake_pypi.status = 503
    assert await page_hashes(client, "extra") == {theirs}


async def test_token_goes_only_to_its_upstream_and_never_to_a_files_host(
    make_app: MakeApp,
    fake_pypi: FakePyPI,
    second: FakePyPI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The second index is reached as ``localhost``; its pages link files on ``127.0.0.1``,
    another host: the token goes with the pages, not with the files, unless files_hosts."""
    monkeypatch.setenv("VENDOR_TOKEN", TOKEN)
    theirs = publish(second, "vendor-lib", "1.0", "vendor")
    publish(fake_pypi, "six", "1.0", "pypi")
    second.required_authorization = f"Bearer {TOKEN}"
    second.authorization_paths = "/simple/"
    local_url = second.simple_url.replace("127.0.0.1", "localhost")
    upstreams: list[dict[str, Any]] = [
        {"name": "vendor", "url": local_url, "token_env": "VENDOR_TOKEN"},
        {"name": "pypi", "url": fake_pypi.simple_url},
    ]
    client = await make_app(upstreams)
    assert await page_hashes(client, "vendor-lib") == {theirs}
    assert await page_hashes(client, "six")
    resp = await client.get("/packages/vendor-lib/vendor_lib-1.0-py3-none-any.whl")
    assert resp.status == 200
    pages = second.requests_for("/simple/")  # vendor-lib, and six (a 404: it is first)
    assert {r.headers.get("Authorization") for r in pages} == {f"Bearer {TOKEN}"}
    assert [r.headers.get("Authorization") for r in second.requests_for("/files/")] == [None]
    assert all("Authorization" not in r.headers for r in fake_pypi.requests)
    assert TOKEN not in caplog.text
    # With the files host named, the token goes there too.
    second.clear_log()
    upstreams[0]["files_hosts"] = [f"127.0.0.1:{second.port}"]
    upstreams[0]["name"] = "vendor2"
    again = await make_app(upstreams, cache="cache2")
    resp = await again.get("/packages/vendor-lib/vendor_lib-1.0-py3-none-any.whl")
    assert resp.status == 200
    assert [r.headers.get("Authorization") for r in second.requests_for("/files/")] == [
        f"Bearer {TOKEN}"
    ]


async def test_root_lists_private_and_every_upstreams_names_once(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI, tmp_path: Path
) -> None:
    publish(fake_pypi, "shared", "1.0", "first")
    publish(fake_pypi, "only-first", "1.0", "first")
    publish(second, "shared", "1.0", "second")
    publish(second, "torch", "1.0", "second")
    publish(second, "numpy", "1.0", "second")  # the explicit index's other names are not ours
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / "mine-1.0.tar.gz").write_bytes(b"not read for the list")
    client = await make_app(two(fake_pypi, second, projects=["torch"], explicit=True))
    resp = await client.get("/simple/", headers={"Accept": JSON})
    names = [p["name"] for p in json.loads(await resp.read())["projects"]]
    assert sorted(names) == ["mine", "only-first", "shared", "torch"]


async def test_upstream_without_a_root_list_contributes_the_names_it_served(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    publish(fake_pypi, "six", "1.0", "first")
    publish(second, "extra", "1.0", "second")
    client = await make_app(two(fake_pypi, second))
    assert await page_hashes(client, "extra")  # served (and remembered) before...
    second.status = 404  # ...the upstream turns out to have no usable root list
    await client.get("/simple/")  # the first list fetch (fails for the second)
    resp = await client.get("/simple/", headers={"Accept": JSON})
    names = {p["name"] for p in json.loads(await resp.read())["projects"]}
    assert names == {"six", "extra"}


async def test_home_page_lists_every_upstream_with_its_pins(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    client = await make_app(two(fake_pypi, second, projects=["torch", "nvidia-*"], explicit=True))
    text = await (await client.get("/")).text()
    assert 'id="upstreams"' in text
    assert "first" in text and "second" in text
    assert "only torch, nvidia-*" in text


async def test_cache_of_a_single_upstream_stays_valid_when_it_becomes_one_of_several(
    make_app: MakeApp, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    """The one [upstream] is named pypi and keeps its page-cache keys: listed as ``pypi`` in
    [[upstreams]], its pages (here served stale, it is down) are still there."""
    assert [s.name for s, _ in Config().sources()] == ["pypi"]
    ours = publish(fake_pypi, "six", "1.0", "first")
    single = await make_app([], page_ttl=0, url=fake_pypi.simple_url)
    assert await page_hashes(single, "six") == {ours}
    await on_disk(single, "pypi", "six")
    await single.close()
    fake_pypi.stop()
    several = await make_app(
        [{"name": "pypi", "url": fake_pypi.simple_url}, {"name": "b", "url": second.simple_url}],
        page_ttl=0,
        url=DEFAULT_UPSTREAM,
    )
    assert await page_hashes(several, "six") == {ours}
    assert second.count("/simple/six/") == 0


# --- a real server process ------------------------------------------------------------------


def test_start_up_lists_upstreams_without_their_secrets(
    tmp_path: Path, fake_pypi: FakePyPI, second: FakePyPI
) -> None:
    """Start-up lists each upstream with its pins and the kind of its credentials, never the
    secret; a missing secret stops the start with the key's name."""
    secret = tmp_path / "secret"
    secret.write_text("hunter2-password\n")
    tables: list[dict[str, object]] = [
        {
            "name": "vendor",
            "url": second.simple_url,
            "username": "bob",
            "password_file": str(secret),
            "projects": ["vendor-*"],
            "explicit": True,
        },
        {"name": "pypi", "url": fake_pypi.simple_url},
    ]
    config = write_config(
        tmp_path / "config.toml",
        server={"host": "127.0.0.1"},
        storage={"packages_dir": "packages", "cache_dir": "cache"},
        upstream={"check_interval": 0},
        upstreams=tables,
    )
    with ProxyServer(config) as server:
        server.wait_for_log(r"upstream 2 pypi")
        log = server.log_text()
    assert "upstream 1 vendor" in log and "only vendor-*" in log and "basic auth;" in log
    assert "hunter2" not in log
    secret.unlink()
    failed = ProxyServer(config)
    with pytest.raises(AssertionError):
        failed.start()
    assert "upstreams[1].password_file: cannot read" in failed.log_text()
