"""One URL for every dependency (issue 8 §1, done-when): real pip, uv (``pip install``,
``lock``, ``sync``), poetry and pdm install through proxyindex a private project whose
dependencies come from private storage, a JSON upstream, an HTML-only upstream without sizes,
and a name pinned to the HTML-only upstream that the first upstream also has (in a higher
version, with other contents: the pin must win, and the installed module says where it came
from).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import (
    client_env,
    make_venv,
    run,
    run_pip_install,
    run_uv_pip_install,
    uv_command,
)
from tests.fakepypi import FakePyPI
from tests.serverproc import ProxyServer, write_config
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e

EXPECTED = {
    "acme-app": "1.0",  # private
    "acme-core": "1.0",  # private
    "json-dep": "1.0",  # upstream 1 (JSON)
    "html-dep": "1.0",  # upstream 2 (HTML only, no sizes)
    "pinned-lib": "1.0",  # pinned to upstream 2; upstream 1 has 9.0
}
CHECK = "import acme_app, pinned_lib, html_dep, json_dep; print(pinned_lib.ORIGIN)"


def _module(name: str, origin: str) -> dict[str, str]:
    return {f"{name.replace('-', '_')}.py": f"ORIGIN = {origin!r}\n"}


@pytest.fixture(scope="module")
def second_server() -> Iterator[FakePyPI]:
    with FakePyPI() as server:
        yield server


@pytest.fixture
def several(tmp_path: Path, fake_pypi: FakePyPI, second_server: FakePyPI) -> Iterator[ProxyServer]:
    second = second_server
    second.start()
    second.reset()
    second.html_only = True
    fake_pypi.add_wheel("json-dep", "1.0", modules=_module("json-dep", "first"))
    fake_pypi.add_wheel("pinned-lib", "9.0", modules=_module("pinned-lib", "first"))
    second.add_wheel("html-dep", "1.0", modules=_module("html-dep", "second"))
    second.add_wheel("pinned-lib", "1.0", modules=_module("pinned-lib", "second"))
    packages = tmp_path / "proxy" / "packages"
    make_wheel(packages, "acme-core", "1.0", modules=_module("acme-core", "private"))
    make_wheel(
        packages,
        "acme-app",
        "1.0",
        requires_dist=["acme-core", "json-dep", "html-dep", "pinned-lib"],
        modules=_module("acme-app", "private"),
    )
    config = write_config(
        tmp_path / "proxy" / "config.toml",
        server={"host": "127.0.0.1"},
        storage={"packages_dir": "packages", "cache_dir": "cache"},
        upstream={"check_interval": 0},
        upstreams=[
            {"name": "first", "url": fake_pypi.simple_url},
            {"name": "second", "url": second.simple_url, "projects": ["pinned-lib"]},
        ],
    )
    with ProxyServer(config) as server:
        yield server
        print(f"=== proxy log ===\n{server.log_text()}")
    # The pinned name was never asked of the first upstream, nor private names of any.
    assert fake_pypi.count("/simple/pinned-lib/") == 0
    assert not [p for p in fake_pypi.paths() + second.paths() if "acme" in p]


def _pyproject(project: Path, tool_tables: str = "") -> Path:
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0.1.0"\n'
        f'requires-python = ">={sys.version_info.major}.{sys.version_info.minor}"\n'
        'dependencies = ["acme-app"]\n\n' + tool_tables
    )
    return project


def _origin(python: Path, tmp: Path) -> str:
    return run([str(python), "-c", CHECK], client_env(tmp), cwd=tmp).stdout.strip()


def test_pip_installs_from_private_two_upstreams_and_a_pin(
    several: ProxyServer, client_tmp: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    report = run_pip_install(client_tmp, several.index_url, "acme-app", target=target)
    assert report.versions() == EXPECTED
    assert (target / "pinned_lib.py").read_text() == "ORIGIN = 'second'\n"


def test_uv_pip_install_lock_and_sync_through_one_url(
    several: ProxyServer, client_tmp: Path, tmp_path: Path
) -> None:
    python = make_venv(tmp_path / "venv")
    result = run_uv_pip_install(client_tmp / "uv", several.index_url, "acme-app", python=python)
    assert result.installed == EXPECTED
    assert _origin(python, client_tmp) == "second"
    project = _pyproject(tmp_path / "project")
    env = client_env(client_tmp / "lock", UV_NO_CONFIG="1", UV_DEFAULT_INDEX=several.index_url)
    run([*uv_command(), "lock"], env, cwd=project)
    lock = tomllib.loads((project / "uv.lock").read_text())
    locked = {pkg["name"]: pkg["version"] for pkg in lock["package"] if pkg["name"] != "app"}
    assert locked == EXPECTED
    run([*uv_command(), "sync"], env, cwd=project)
    assert _origin(project / ".venv" / "bin" / "python", client_tmp) == "second"


def test_poetry_locks_and_installs_through_one_url(
    several: ProxyServer, client_tmp: Path, tmp_path: Path
) -> None:
    project = _pyproject(tmp_path / "project", "[tool.poetry]\npackage-mode = false\n")
    env = client_env(
        client_tmp / "poetry", POETRY_NO_INTERACTION="1", POETRY_VIRTUALENVS_IN_PROJECT="true"
    )
    poetry = [sys.executable, "-m", "poetry"]
    run([*poetry, "source", "add", "--priority=primary", "proxyindex", several.index_url],
        env, cwd=project)  # fmt: skip
    run([*poetry, "lock"], env, cwd=project, timeout=300)
    lock = tomllib.loads((project / "poetry.lock").read_text())
    assert {pkg["name"]: pkg["version"] for pkg in lock["package"]} == EXPECTED
    run([*poetry, "install"], env, cwd=project, timeout=300)
    assert _origin(project / ".venv" / "bin" / "python", client_tmp) == "second"


def test_pdm_locks_and_installs_through_one_url(
    several: ProxyServer, client_tmp: Path, tmp_path: Path
) -> None:
    source = f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{several.index_url}"\n'
    project = _pyproject(tmp_path / "project", "[tool.pdm]\ndistribution = false\n\n" + source)
    venv = make_venv(project / ".venv")
    env = client_env(
        client_tmp / "pdm", PDM_CHECK_UPDATE="false", PDM_PYTHON=str(venv), PDM_USE_UV="false"
    )
    pdm = [sys.executable, "-m", "pdm"]
    run([*pdm, "lock", "--static-urls"], env, cwd=project, timeout=300)
    lock = tomllib.loads((project / "pdm.lock").read_text())
    assert {pkg["name"]: pkg["version"] for pkg in lock["package"]} == EXPECTED
    run([*pdm, "install"], env, cwd=project, timeout=300)
    assert _origin(venv, client_tmp) == "second"
