"""Shared fixtures: the fake upstream, real proxy servers, isolated client dirs, built dists.

``fake_pypi`` is explicit, not autouse: the server itself lives for the whole session (one
thread, one port), and the function-scoped fixture resets its state (projects, knobs, request
log) and restarts it if an earlier test left it stopped. Tests that never ask for it never pay
for it, and a test that asks gets a clean, running index on the same URL every time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from aiohttp.test_utils import TestClient

from proxyindex.config import load_config
from proxyindex.web.app import create_app
from tests.clients import build_project
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT, ProxyServer, write_config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

AppClient = TestClient[Any, Any]


class MakeProxy(Protocol):
    """Type of the ``make_proxy`` factory, for annotating tests."""

    def __call__(
        self,
        upstream_url: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
        **sections: Mapping[str, object],
    ) -> ProxyServer: ...


@pytest.fixture(scope="session", autouse=True)
def _loopback_never_proxied() -> Iterator[None]:
    """In-process servers read HTTP(S)_PROXY like the real one (``tests.serverproc`` and
    ``tests.clients`` do the same for subprocesses): a proxy set on the machine running the
    tests must not take the requests to the fake upstream on 127.0.0.1."""
    saved = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def _data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers write to their data folder even when packages and cache are set apart (the
    audit log, ``<data_dir>/audit.jsonl``): keep it out of the real home folder, for
    in-process and subprocess servers alike."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(scope="session")
def fake_pypi_server() -> Iterator[FakePyPI]:
    """The one fake upstream of the session; use ``fake_pypi`` in tests."""
    with FakePyPI() as server:
        yield server


@pytest.fixture
def fake_pypi(fake_pypi_server: FakePyPI) -> FakePyPI:
    """A running fake upstream with no projects, default knobs and an empty request log."""
    fake_pypi_server.start()  # no-op unless an earlier test stopped it; same port either way
    fake_pypi_server.reset()
    return fake_pypi_server


@pytest.fixture
def wheels_dir(tmp_path: Path) -> Path:
    """An empty folder for dists a test builds with ``tests.wheelmaker``."""
    path = tmp_path / "wheels"
    path.mkdir()
    return path


@pytest.fixture
def client_tmp(tmp_path: Path) -> Path:
    """The ``tmp`` for ``tests.clients`` helpers: HOME, caches and reports of the clients."""
    path = tmp_path / "client"
    path.mkdir()
    return path


@pytest.fixture
def make_proxy(tmp_path: Path, fake_pypi: FakePyPI) -> Iterator[MakeProxy]:
    """Factory for real proxyindex servers; all are stopped at teardown.

    ``make_proxy()`` serves the fake upstream; ``make_proxy(upstream_url)`` another upstream;
    ``make_proxy(upstream={"page_ttl": 0}, private={"reserved": ["acme-*"]})`` merges keys into
    the default tables. Each proxy gets its own folder ``tmp_path/proxyN`` holding
    ``config.toml``, ``packages/`` and ``cache/``. On teardown the servers' logs are printed,
    so pytest shows them with a failing test.
    """
    servers: list[ProxyServer] = []

    def factory(
        upstream_url: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start: bool = True,
        **sections: Mapping[str, object],
    ) -> ProxyServer:
        folder = tmp_path / f"proxy{len(servers)}"
        tables: dict[str, dict[str, object]] = {
            "server": {"host": "127.0.0.1"},
            "storage": {"packages_dir": "packages", "cache_dir": "cache"},
            "upstream": {
                "url": upstream_url if upstream_url is not None else fake_pypi.simple_url,
                # The start-up check GETs the upstream's /simple/: tests that count upstream
                # requests must not see it; tests of the check turn it on.
                "check_interval": 0,
            },
        }
        for name, values in sections.items():
            tables.setdefault(name, {}).update(values)
        config = write_config(folder / "config.toml", **tables)
        server = ProxyServer(config, extra_args=extra_args, env=env)
        servers.append(server)
        if start:
            server.start()
        return server

    yield factory
    for index, server in enumerate(servers):
        server.stop()
        print(f"=== proxy{index} log ===\n{server.log_text()}")


class MakeAppClient(Protocol):
    """Type of the ``make_app_client`` factory."""

    def __call__(self, **sections: Mapping[str, Any]) -> Awaitable[AppClient]: ...


@pytest.fixture
def make_app_client(
    aiohttp_client: Callable[..., Awaitable[AppClient]], tmp_path: Path, fake_pypi: FakePyPI
) -> MakeAppClient:
    """In-process proxyindex apps on a real socket (aiohttp's test client) over the fake
    upstream, with ``tmp_path/packages`` and ``tmp_path/cache``; keyword arguments are config
    tables merged into the defaults, e.g. ``make_app_client(private={"reserved": ["a-*"]})``.
    """

    async def factory(**sections: Mapping[str, Any]) -> AppClient:
        overrides: dict[str, dict[str, Any]] = {
            "storage": {
                "packages_dir": str(tmp_path / "packages"),
                "cache_dir": str(tmp_path / "cache"),
            },
            "upstream": {
                "url": fake_pypi.simple_url,
                "timeout": 5,
                "connect_timeout": 2,
                "check_interval": 0,  # no start-up request in the fake's log (see above)
            },
        }
        for section, values in sections.items():
            overrides.setdefault(section, {}).update(values)
        return await aiohttp_client(create_app(load_config(None, overrides=overrides)))

    return factory


@pytest.fixture(scope="session")
def sample_dists(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``sample/`` built once per session: ``[sample-0.1.0.tar.gz, sample-0.1.0-py3-none-any.whl]``.

    For another version use ``tests.clients.build_project(..., version="0.2.0")``.
    """
    tmp = tmp_path_factory.mktemp("sample-build")
    return build_project(REPO_ROOT / "sample", tmp / "dist", tmp=tmp)
