"""Real pip, uv and pipenv against the real server with supply-chain rules (issue 14): the
fake upstream with controlled upload times, and an advisory folder."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clients import client_env, make_venv, run, run_pip_install, run_uv_pip_install
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e

DAY = 86400.0


def ago(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_pip_and_uv_install_the_previous_release_while_the_newest_is_half_there(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    """2.0's sdist is old enough but its wheel (uploaded two hours later) is not: neither
    client builds 2.0 from its sdist; both install 1.0's wheel, and a pin on 2.0 fails."""
    fake_pypi.add_wheel("demo", "1.0", upload_time=ago(30 * DAY))
    fake_pypi.add_sdist("demo", "2.0", upload_time=ago(7 * DAY + 3600))
    fake_pypi.add_wheel("demo", "2.0", upload_time=ago(7 * DAY - 3600))
    proxy = make_proxy(policy={"min_age": "7d"})
    report = run_pip_install(client_tmp / "pip", proxy.index_url, "demo", target=client_tmp / "t")
    assert report.versions() == {"demo": "1.0"}
    assert report.installed[0].url.endswith(".whl")
    python = make_venv(client_tmp / "venv")
    assert run_uv_pip_install(
        client_tmp / "uv", proxy.index_url, "demo", python=python
    ).installed == {"demo": "1.0"}
    pinned = run_pip_install(
        client_tmp / "pin", proxy.index_url, "demo==2.0", target=client_tmp / "t2", check=False
    )
    assert pinned.proc.returncode != 0
    held = run_uv_pip_install(
        client_tmp / "uvpin", proxy.index_url, "demo==2.0", python=python, check=False
    )
    assert held.proc.returncode != 0
    assert "policy: demo-2.0" in proxy.log_text()  # logged once per file
    assert proxy.log_text().count("policy: demo-2.0.tar.gz") == 1


def test_pip_and_uv_skip_denied_releases_and_exemptions_let_a_fix_through(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("demo", "1.0", upload_time=ago(30 * DAY))
    fake_pypi.add_wheel("demo", "1.1", upload_time=ago(20 * DAY))
    fake_pypi.add_wheel("fixed", "1.0", upload_time=ago(30 * DAY))
    fake_pypi.add_wheel("fixed", "1.0.1", upload_time=ago(3600))
    proxy = make_proxy(
        policy={"min_age": "7d", "min_age_exempt": ["fixed==1.0.1"], "deny": ["demo==1.1"]}
    )
    report = run_pip_install(
        client_tmp / "pip", proxy.index_url, "demo", "fixed", target=client_tmp / "t"
    )
    assert report.versions() == {"demo": "1.0", "fixed": "1.0.1"}
    python = make_venv(client_tmp / "venv")
    result = run_uv_pip_install(client_tmp / "uv", proxy.index_url, "demo", "fixed", python=python)
    assert result.installed == {"demo": "1.0", "fixed": "1.0.1"}


def test_pip_and_uv_skip_a_release_yanked_by_an_advisory_unless_pinned(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "osv"
    folder.mkdir()
    record = {
        "id": "PYSEC-2099-7",
        "summary": "demo 2.0 steals tokens",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "demo"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "2.0"}, {"fixed": "2.1"}]}
                ],
            }
        ],
    }
    (folder / "PYSEC-2099-7.json").write_text(json.dumps(record))
    fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.add_wheel("demo", "2.0")
    proxy = make_proxy(policy={"advisories_dir": str(folder)})
    report = run_pip_install(client_tmp / "pip", proxy.index_url, "demo", target=client_tmp / "t")
    assert report.versions() == {"demo": "1.0"}
    pinned = run_pip_install(
        client_tmp / "pin", proxy.index_url, "demo==2.0", target=client_tmp / "t2"
    )
    assert pinned.versions() == {"demo": "2.0"}
    assert "PYSEC-2099-7: demo 2.0 steals tokens" in pinned.proc.stderr  # pip's warning
    python = make_venv(client_tmp / "venv")
    uv = run_uv_pip_install(client_tmp / "uv", proxy.index_url, "demo", python=python)
    assert uv.installed == {"demo": "1.0"}
    uv_pinned = run_uv_pip_install(
        client_tmp / "uvpin", proxy.index_url, "demo==2.0", python=python
    )
    assert uv_pinned.installed == {"demo": "2.0"}
    assert "PYSEC-2099-7" in uv_pinned.proc.stderr  # uv's warning


def test_pip_uv_and_pipenv_resolve_from_a_pinned_snapshot_url(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("demo", "1.0", upload_time="2025-01-01T00:00:00.000000Z")
    fake_pypi.add_wheel("demo", "2.0", upload_time="2025-06-01T00:00:00.000000Z")
    proxy = make_proxy()
    url = f"{proxy.url}/snapshot/2025-03-01/simple/"
    report = run_pip_install(client_tmp / "pip", url, "demo", target=client_tmp / "t")
    assert report.versions() == {"demo": "1.0"}
    assert report.installed[0].url.startswith(f"{proxy.url}/snapshot/2025-03-01/packages/")
    python = make_venv(client_tmp / "venv")
    assert run_uv_pip_install(client_tmp / "uv", url, "demo", python=python).installed == {
        "demo": "1.0"
    }
    project = client_tmp / "project"
    project.mkdir()
    (project / "Pipfile").write_text(
        f'[[source]]\nurl = "{url}"\nverify_ssl = false\nname = "snapshot"\n\n'
        '[packages]\ndemo = "*"\n\n'
        f'[requires]\npython_version = "{sys.version_info.major}.{sys.version_info.minor}"\n'
    )
    env = client_env(
        client_tmp / "pipenv",
        PIPENV_VENV_IN_PROJECT="1",
        PIPENV_NOSPIN="1",
        PIPENV_YES="1",
        PIPENV_IGNORE_VIRTUALENVS="1",
        PIPENV_PYTHON=sys.executable,
    )
    run([sys.executable, "-m", "pipenv", "lock"], env, cwd=project, timeout=300)
    lock = json.loads((project / "Pipfile.lock").read_text())
    assert lock["default"]["demo"]["version"] == "==1.0"


def test_policy_explain_prints_what_is_hidden_and_why(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("demo", "1.0", upload_time=ago(30 * DAY))
    fake_pypi.add_wheel("demo", "1.1", upload_time=ago(20 * DAY))
    fake_pypi.add_wheel("demo", "2.0", upload_time=ago(DAY))
    proxy = make_proxy(policy={"min_age": "7d", "deny": ["demo==1.1"]})
    explain: list[str | Path] = [sys.executable, "-m", "proxyindex", "policy", "explain"]
    explain += ["--config", proxy.config]
    env = client_env(client_tmp)
    missing = run([*explain, "demo"], env, cwd=client_tmp, check=False)
    assert missing.returncode == 1 and "no upstream page of demo" in missing.stderr
    with urllib.request.urlopen(f"{proxy.index_url}demo/") as resp:  # noqa: S310 - 127.0.0.1
        assert resp.status == 200
    out = run([*explain, "demo"], env, cwd=client_tmp).stdout
    assert "3 upstream files" in out and "1 listed" in out
    assert "demo-1.0-py3-none-any.whl  visible" in out
    assert "demo-1.1-py3-none-any.whl  denied by policy.deny: denied by policy.deny rule" in out
    assert "demo-2.0-py3-none-any.whl  hidden by policy.min_age: uploaded" in out
    assert "next change: " in out
    one = run([*explain, "demo", "2.0"], env, cwd=client_tmp).stdout
    assert "demo-2.0" in one and "demo-1.0" not in one
    snap = run([*explain, "demo", "--at", "2000-01-01"], env, cwd=client_tmp).stdout
    assert "the project page is a 404: hidden by snapshot" in snap
    make_wheel(proxy.config.parent / "packages", "corp-lib", "1.0")
    private = run([*explain, "corp-lib"], env, cwd=client_tmp).stdout
    assert "corp-lib is a private name: no policy applies" in private
