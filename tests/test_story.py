"""The founding blog post's story with real tools: build ``sample``, publish it to a private index
protected by htpasswd, install it with pip (URL, pip.conf), uv and pipenv from that one URL.

PyPI also has a project called ``sample``: the fake upstream publishes a higher version of it,
and the private one must win every time.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxyindex.auth.authenticator import add_user
from tests.clients import (
    build_project,
    client_env,
    make_venv,
    run,
    run_twine_upload,
    run_uv_pip_install,
    uv_command,
)
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.serverproc import REPO_ROOT, ProxyServer

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse"


@pytest.fixture
def story_proxy(make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path) -> ProxyServer:
    fake_pypi.add_wheel("sample", "9.9", modules={"sample": "def sample_print_stmt(s): 1/0\n"})
    fake_pypi.add_wheel("public-dep", "2.0")
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", PASSWORD)
    # PyPI has a "sample" too: the README's recipe reserves the name before the first upload.
    return make_proxy(extra_args=["--htpasswd", str(htpasswd)], private={"reserved": ["sample"]})


@pytest.fixture
def published(story_proxy: ProxyServer, sample_dists: list[Path], client_tmp: Path) -> ProxyServer:
    """The story's server with ``sample`` 0.1.0 (wheel and sdist) uploaded by twine."""
    run_twine_upload(client_tmp / "up", story_proxy.upload_url, sample_dists, "alice", PASSWORD)
    return story_proxy


def with_credentials(url: str, user: str = "alice", password: str = PASSWORD) -> str:
    return url.replace("http://", f"http://{user}:{password.replace(' ', '%20')}@", 1)


def stored(proxy: ProxyServer) -> list[str]:
    root = proxy.config.parent / "packages"
    return sorted(p.name for p in root.rglob("*") if p.is_file() and ".proxyindex" not in p.parts)


def call_sample(python: Path, tmp: Path) -> str:
    proc = run(
        [python, "-c", "import sample; assert sample.sample_print_stmt('hello') == 'hello'"],
        client_env(tmp),
        cwd=tmp,
    )
    return proc.stdout


def test_twine_upload_then_pip_and_uv_install_the_private_sample(
    story_proxy: ProxyServer,
    fake_pypi: FakePyPI,
    sample_dists: list[Path],
    client_tmp: Path,
) -> None:
    wrong = run_twine_upload(
        client_tmp / "wrong", story_proxy.upload_url, sample_dists, "alice", "nope", check=False
    )
    assert wrong.returncode != 0
    assert "401" in wrong.stdout + wrong.stderr
    assert stored(story_proxy) == []

    ok = run_twine_upload(
        client_tmp / "ok", story_proxy.upload_url, sample_dists, "alice", PASSWORD
    )
    assert ok.returncode == 0
    assert stored(story_proxy) == sorted(p.name for p in sample_dists)

    # pip with the index URL on the command line, into a fresh venv; then import and call it.
    venv = make_venv(client_tmp / "venv-pip")
    env = client_env(client_tmp / "pip")
    report = client_tmp / "report.json"
    run(
        [
            sys.executable, "-m", "pip", "--python", venv, "install",
            "--index-url", story_proxy.index_url, "--report", report, "sample",
        ],
        env,
        cwd=client_tmp,
    )  # fmt: skip
    (item,) = json.loads(report.read_text())["install"]
    assert item["metadata"]["version"] == "0.1.0"
    assert item["download_info"]["url"].startswith(story_proxy.url + "/packages/sample/")
    assert "hello" in call_sample(venv, client_tmp)

    # pip configured by a pip.conf file only.
    pip_conf = client_tmp / "pip.conf"
    pip_conf.write_text(f"[global]\nindex-url = {story_proxy.index_url}\n")
    venv2 = make_venv(client_tmp / "venv-conf")
    conf_env = {**client_env(client_tmp / "conf"), "PIP_CONFIG_FILE": str(pip_conf)}
    run([sys.executable, "-m", "pip", "--python", venv2, "install", "sample"], conf_env, client_tmp)
    assert "hello" in call_sample(venv2, client_tmp)

    # uv.
    venv3 = make_venv(client_tmp / "venv-uv")
    result = run_uv_pip_install(client_tmp / "uv", story_proxy.index_url, "sample", python=venv3)
    assert result.installed == {"sample": "0.1.0"}
    assert "hello" in call_sample(venv3, client_tmp)
    # The name is reserved: neither the upload nor any install ever asked the upstream for it.
    assert [p for p in fake_pypi.paths() if "sample" in p] == []


def test_uv_publish_of_a_second_version_and_credentials_in_the_index_url(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", PASSWORD)
    proxy = make_proxy(
        extra_args=["--htpasswd", str(htpasswd)],
        auth={"protect": ["upload", "download", "list"]},
    )
    dists = build_project(
        REPO_ROOT / "sample", client_tmp / "dist", tmp=client_tmp, version="0.2.0"
    )
    publish: list[str | Path] = [
        *uv_command(), "publish", "--publish-url", proxy.upload_url,
        "--username", "alice", "--password", PASSWORD, *dists,
    ]  # fmt: skip
    run(publish, client_env(client_tmp / "pub"), cwd=client_tmp)
    assert stored(proxy) == sorted(p.name for p in dists)
    # U-06: uv's --check-url reads the simple page and skips files already there (same sha256)
    again = run(
        [*publish, "--check-url", with_credentials(proxy.index_url)],
        client_env(client_tmp / "pub2"),
        cwd=client_tmp,
    )
    assert again.stderr.count("already exists, skipping") == len(dists), again.stderr

    anonymous = run_uv_pip_install(
        client_tmp / "anon",
        proxy.index_url,
        "sample",
        python=make_venv(client_tmp / "v0"),
        check=False,
    )
    assert anonymous.proc.returncode != 0
    assert "401" in anonymous.proc.stderr

    venv = make_venv(client_tmp / "v1")
    result = run_uv_pip_install(
        client_tmp / "uv", with_credentials(proxy.index_url), "sample", python=venv
    )
    assert result.installed == {"sample": "0.2.0"}
    env = client_env(client_tmp / "pip")
    url = with_credentials(proxy.index_url)
    venv2 = make_venv(client_tmp / "v2")
    run(
        [sys.executable, "-m", "pip", "--python", venv2, "install", "--index-url", url, "sample"],
        env,
        client_tmp,
    )
    assert "hello" in call_sample(venv2, client_tmp)
    assert PASSWORD not in proxy.log_text()


def test_pipenv_locks_and_installs_private_and_public_packages_from_one_source(
    published: ProxyServer, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    project = client_tmp / "project"
    project.mkdir()
    (project / "Pipfile").write_text(
        "[[source]]\n"
        f'url = "{published.index_url}"\n'
        "verify_ssl = false\n"
        'name = "proxyindex"\n\n'
        "[packages]\n"
        'sample = "*"\n'
        'public-dep = "*"\n\n'
        "[requires]\n"
        f'python_version = "{sys.version_info.major}.{sys.version_info.minor}"\n'
    )
    env = client_env(
        client_tmp / "pipenv",
        PIPENV_VENV_IN_PROJECT="1",
        PIPENV_NOSPIN="1",
        PIPENV_YES="1",
        PIPENV_IGNORE_VIRTUALENVS="1",
        PIPENV_PYTHON=sys.executable,
    )
    pipenv = [sys.executable, "-m", "pipenv"]
    run([*pipenv, "lock"], env, cwd=project, timeout=300)
    lock = json.loads((project / "Pipfile.lock").read_text())
    assert lock["default"]["sample"]["version"] == "==0.1.0"
    assert lock["default"]["public-dep"]["version"] == "==2.0"
    assert all(h.startswith("sha256:") for h in lock["default"]["sample"]["hashes"])
    assert lock["_meta"]["sources"][0]["url"] == published.index_url
    run([*pipenv, "install", "--deploy"], env, cwd=project, timeout=300)
    python = project / ".venv" / "bin" / "python"
    assert "hello" in call_sample(python, client_tmp)
    assert fake_pypi.count("/simple/public-dep/") >= 1
    assert [p for p in fake_pypi.paths() if "/sample" in p] == []


def test_poetry_publish_to_the_private_index(
    make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", PASSWORD)
    proxy = make_proxy(extra_args=["--htpasswd", str(htpasswd)])
    project = client_tmp / "sample-src"  # build_project's copy of sample/, dists in dist/
    dists = build_project(REPO_ROOT / "sample", project / "dist", tmp=client_tmp, version="0.3.0")
    env = client_env(
        client_tmp / "poetry",
        POETRY_REPOSITORIES_PRIVATE_URL=proxy.upload_url,
        POETRY_HTTP_BASIC_PRIVATE_USERNAME="alice",
        POETRY_HTTP_BASIC_PRIVATE_PASSWORD=PASSWORD,
        POETRY_NO_INTERACTION="1",
    )
    poetry = [sys.executable, "-m", "poetry"]
    run([*poetry, "publish", "-r", "private"], env, cwd=project)
    assert stored(proxy) == sorted(p.name for p in dists)
    again = run([*poetry, "publish", "-r", "private"], env, cwd=project, check=False)
    assert again.returncode == 0  # identical files: 200, nothing changes (U-05)


def app_project(client_tmp: Path, tool_tables: str) -> Path:
    """A project that depends on the private ``sample`` and the public ``public-dep``."""
    project = client_tmp / "app"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        "[project]\n"
        'name = "app"\n'
        'version = "0.1.0"\n'
        f'requires-python = ">={sys.version_info.major}.{sys.version_info.minor}"\n'
        'dependencies = ["sample", "public-dep"]\n\n' + tool_tables
    )
    return project


def assert_locked_private_sample(locked: dict[str, dict[str, Any]], fake_pypi: FakePyPI) -> None:
    """The lock has the private sample (not the public 9.9) and the public dependency, which
    came through the upstream cache; the upstream was never asked for sample's files."""
    assert locked["sample"]["version"] == "0.1.0"
    assert locked["public-dep"]["version"] == "2.0"
    assert fake_pypi.count("/simple/public-dep/") >= 1
    assert [p for p in fake_pypi.paths() if "/sample" in p] == []


def test_poetry_locks_and_installs_from_the_index_as_its_primary_source(
    published: ProxyServer, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    project = app_project(client_tmp, "[tool.poetry]\npackage-mode = false\n")
    env = client_env(
        client_tmp / "poetry",
        POETRY_NO_INTERACTION="1",
        POETRY_VIRTUALENVS_IN_PROJECT="true",
        POETRY_HTTP_BASIC_PROXYINDEX_USERNAME="alice",  # read access needs no login here,
        POETRY_HTTP_BASIC_PROXYINDEX_PASSWORD=PASSWORD,  # but this is how poetry would send one
    )
    poetry = [sys.executable, "-m", "poetry"]
    # What the README tells poetry users to run: a primary source replaces PyPI.
    run([*poetry, "source", "add", "--priority=primary", "proxyindex", published.index_url],
        env, cwd=project)  # fmt: skip
    run([*poetry, "lock"], env, cwd=project, timeout=300)
    lock = tomllib.loads((project / "poetry.lock").read_text())
    locked = {pkg["name"]: pkg for pkg in lock["package"]}
    for pkg in locked.values():
        source = pkg["source"]  # poetry stores the URL without its trailing slash
        assert (source["reference"], source["url"]) == ("proxyindex", f"{published.url}/simple")
        assert pkg["files"] and all(f["hash"].startswith("sha256:") for f in pkg["files"])
    run([*poetry, "install"], env, cwd=project, timeout=300)
    assert "hello" in call_sample(project / ".venv" / "bin" / "python", client_tmp)
    assert_locked_private_sample(locked, fake_pypi)


def test_pdm_locks_and_installs_from_the_index_as_its_pypi_source(
    published: ProxyServer, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    # A source named pypi replaces PyPI (pdm's documented way).
    source = f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{published.index_url}"\n'
    project = app_project(client_tmp, "[tool.pdm]\ndistribution = false\n\n" + source)
    venv = make_venv(project / ".venv")  # pdm would install into the venv it runs from
    env = client_env(
        client_tmp / "pdm", PDM_CHECK_UPDATE="false", PDM_PYTHON=str(venv), PDM_USE_UV="false"
    )
    pdm = [sys.executable, "-m", "pdm"]
    run([*pdm, "lock", "--static-urls"], env, cwd=project, timeout=300)
    lock = tomllib.loads((project / "pdm.lock").read_text())
    locked = {pkg["name"]: pkg for pkg in lock["package"]}
    for pkg in locked.values():
        assert pkg["files"]
        for entry in pkg["files"]:
            assert entry["url"].startswith(f"{published.url}/packages/"), entry
            assert entry["hash"].startswith("sha256:")
    run([*pdm, "install"], env, cwd=project, timeout=300)
    assert "hello" in call_sample(venv, client_tmp)
    assert_locked_private_sample(locked, fake_pypi)


def test_index_set_by_environment_for_pip_and_uv(published: ProxyServer, client_tmp: Path) -> None:
    pip_env = client_env(client_tmp / "pip", PIP_INDEX_URL=published.index_url)
    venv = make_venv(client_tmp / "venv-pip")
    report = client_tmp / "report.json"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", venv, "install"]
    pip += ["--report", report, "sample"]
    run(pip, pip_env, client_tmp)
    (item,) = json.loads(report.read_text())["install"]
    assert item["download_info"]["url"].startswith(published.url + "/packages/sample/")
    assert "hello" in call_sample(venv, client_tmp)
    uv_env = client_env(client_tmp / "uv", UV_DEFAULT_INDEX=published.index_url)
    venv2 = make_venv(client_tmp / "venv-uv")
    uv: list[str | Path] = [*uv_command(), "pip", "install", "--python", venv2, "-v", "sample"]
    result = run(uv, uv_env, client_tmp)
    assert "sample==0.1.0" in result.stderr
    assert published.url in result.stderr  # uv -v names the index it used
    assert "hello" in call_sample(venv2, client_tmp)
