"""Run real installers and uploaders (pip, uv, twine) as isolated subprocesses.

This machine carries a global pip config and ``PIP_*`` variables (``PIP_FIND_LINKS`` among
them). If any of that leaks into a client, an install can succeed from somewhere other than
the index under test and the test proves nothing. So every client gets an environment built by
:func:`client_env` (the isolation rules in notes/contract.md), runs with ``cwd`` inside its tmp
dir (uv reads ``uv.toml``/``pyproject.toml`` from the cwd upwards), and every reported download
URL is checked to come from the index that was passed in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from packaging.utils import NormalizedName, canonicalize_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "ClientError",
    "InstalledItem",
    "PipReport",
    "UvResult",
    "assert_from_index",
    "build_project",
    "client_env",
    "make_venv",
    "run",
    "run_pip_install",
    "run_twine_upload",
    "run_uv_pip_install",
    "uv_command",
]

# Variables that configure clients, or could smuggle in another index or credentials.
_DROP_PREFIXES = ("PIP_", "UV_", "PIPENV_", "TWINE_", "VIRTUAL_ENV", "PYTHONPATH")
_DEFAULT_TIMEOUT = 180.0


class ClientError(AssertionError):
    """A client subprocess failed; the message carries the command, stdout and stderr."""


def client_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment in which a client sees no user, site or global configuration.

    Caches are fresh directories under ``tmp`` (so nothing is served from an earlier test's
    cache). ``extra`` is applied last, e.g. ``UV_INDEX_URL=...`` for a test that wants it.
    """
    home = tmp / "home"
    for d in (home / ".config", home / ".cache", tmp / "pipcache", tmp / "uvcache"):
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    bindir = str(Path(sys.executable).parent)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_DIRS="",
        PIP_CONFIG_FILE=os.devnull,  # pip then skips the global and user files as well
        PIP_CACHE_DIR=str(tmp / "pipcache"),
        UV_CACHE_DIR=str(tmp / "uvcache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_PYTHON_DOWNLOADS="never",
        # twine would otherwise ask the desktop keyring for a password.
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        PATH=bindir + os.pathsep + env.get("PATH", ""),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def run(
    cmd: Sequence[str | Path],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = _DEFAULT_TIMEOUT,
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing text output; if ``check``, a non-zero exit raises ClientError."""
    argv = [str(c) for c in cmd]
    proc = subprocess.run(
        argv,
        env=dict(env),
        cwd=cwd,
        timeout=timeout,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ClientError(_describe(proc))
    return proc


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(str(a) for a in proc.args)
    return (
        f"command failed with exit code {proc.returncode}: {cmd}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.rpartition("@")[2]  # ignore userinfo in the index URL


def assert_from_index(urls: Iterable[str], index_url: str) -> None:
    """Fail unless every URL has the same scheme and host:port as ``index_url``."""
    want = _origin(index_url)
    strays = [u for u in urls if _origin(u) != want]
    assert not strays, f"files came from outside {index_url}: {strays}"


@dataclass(frozen=True, slots=True)
class InstalledItem:
    """One entry of ``pip install --report``: what was installed and where it came from."""

    name: NormalizedName
    version: str
    url: str


@dataclass(frozen=True, slots=True)
class PipReport:
    installed: list[InstalledItem]
    proc: subprocess.CompletedProcess[str]
    raw: dict[str, Any]

    def versions(self) -> dict[NormalizedName, str]:
        """``{normalised name: version}``, the usual thing to assert on."""
        return {item.name: item.version for item in self.installed}


def run_pip_install(
    tmp: Path,
    index_url: str,
    *reqs: str,
    target: Path,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float = _DEFAULT_TIMEOUT,
) -> PipReport:
    """``pip install --target`` from ``index_url`` only, returning the parsed ``--report``.

    With ``check=False`` a failed install returns an empty ``installed`` list (and the
    process, for asserting on its stderr) instead of raising.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    report = tmp / f"pip-report-{len(list(tmp.glob('pip-report-*.json')))}.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--index-url",
        index_url,
        "--target",
        str(target),
        "--report",
        str(report),
        *extra_args,
        *reqs,
    ]
    proc = run(cmd, client_env(tmp), cwd=tmp, timeout=timeout, check=check)
    if proc.returncode != 0 or not report.exists():
        return PipReport([], proc, {})
    raw: dict[str, Any] = json.loads(report.read_text())
    installed = [
        InstalledItem(
            canonicalize_name(item["metadata"]["name"]),
            item["metadata"]["version"],
            item["download_info"]["url"],
        )
        for item in raw.get("install", [])
    ]
    assert_from_index((i.url for i in installed), index_url)
    return PipReport(installed, proc, raw)


def uv_command() -> list[str]:
    """The uv executable of the test venv (the binary beside python, else ``python -m uv``)."""
    binary = Path(sys.executable).with_name("uv")
    return [str(binary)] if binary.exists() else [sys.executable, "-m", "uv"]


def make_venv(path: Path, *, with_pip: bool = False) -> Path:
    """Create a venv from this interpreter and return its python.

    Stdlib ``venv`` on purpose: it needs no index (``uv venv --seed`` would fetch pip from
    one), and without pip it takes ~50 ms. ``with_pip`` installs pip from the bundled wheel.
    """
    cmd = [sys.executable, "-m", "venv", str(path)]
    if not with_pip:
        cmd.insert(3, "--without-pip")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    run(cmd, env, cwd=path.parent)
    python = path / "bin" / "python"
    assert python.exists(), python
    return python


@dataclass(frozen=True, slots=True)
class UvResult:
    """What ``uv pip install`` reported: ``{normalised name: version}`` from its ``+`` lines."""

    installed: dict[NormalizedName, str]
    proc: subprocess.CompletedProcess[str]


# uv prints " + name==version" per installed package (on stderr).
_UV_INSTALLED = re.compile(r"^\s*\+\s+(\S+?)==(\S+)", re.MULTILINE)


def run_uv_pip_install(
    tmp: Path,
    index_url: str,
    *reqs: str,
    python: Path,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float = _DEFAULT_TIMEOUT,
) -> UvResult:
    """``uv pip install --python <venv>`` from ``index_url`` only.

    uv writes no report, so provenance is asserted by the caller on the server side (its log
    or the fake's request log); ``--index-url`` replaces PyPI and nothing adds another index.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [
        *uv_command(),
        "pip",
        "install",
        "--python",
        str(python),
        "--index-url",
        index_url,
        *extra_args,
        *reqs,
    ]
    proc = run(cmd, client_env(tmp), cwd=tmp, timeout=timeout, check=check)
    installed = {
        canonicalize_name(name): version for name, version in _UV_INSTALLED.findall(proc.stderr)
    }
    return UvResult(installed, proc)


def run_twine_upload(
    tmp: Path,
    repo_url: str,
    files: Iterable[Path],
    username: str | None = None,
    password: str | None = None,
    *,
    extra_args: Sequence[str] = (),
    check: bool = True,
    timeout: float = _DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``twine upload --repository-url`` the files; credentials go through the environment.

    Passing them as ``TWINE_USERNAME``/``TWINE_PASSWORD`` keeps them out of argv (and thus out
    of failure messages). With no credentials twine would prompt, so an empty pair is sent.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    env = client_env(
        tmp,
        TWINE_USERNAME=username if username is not None else "",
        TWINE_PASSWORD=password if password is not None else "",
    )
    cmd = [
        sys.executable,
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        repo_url,
        *extra_args,
        *(str(f) for f in files),
    ]
    return run(cmd, env, cwd=tmp, timeout=timeout, check=check)


_VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"', re.MULTILINE)


def build_project(
    src: Path,
    out_dir: Path,
    *,
    tmp: Path,
    version: str | None = None,
    timeout: float = _DEFAULT_TIMEOUT,
) -> list[Path]:
    """Build sdist and wheel of a setuptools project (e.g. ``sample/``) into ``out_dir``.

    The source is copied under ``tmp`` first: an in-place build leaves ``build/`` and
    ``*.egg-info`` in the checkout. ``version`` rewrites ``[project] version`` in the copy.
    ``--no-isolation`` uses the test venv's setuptools, so no index is needed.
    """
    copy = tmp / f"{src.name}-src"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info"))
    if version is not None:
        pyproject = copy / "pyproject.toml"
        text, n = _VERSION_LINE.subn(f'version = "{version}"', pyproject.read_text(), count=1)
        assert n == 1, f"no version line in {pyproject}"
        pyproject.write_text(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.iterdir())
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out_dir), str(copy)]
    run(cmd, client_env(tmp), cwd=tmp, timeout=timeout)
    return sorted(set(out_dir.iterdir()) - before)
