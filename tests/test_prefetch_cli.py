"""``proxyindex prefetch -r FILE`` (issue 11 §3): lock and requirements files parsed with the
real parsers, the cache of a running server warmed through it, then pip and uv install
offline from that cache with the upstream gone (the air-gapped workflow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from proxyindex.prefetch_sources import (
    SourceError,
    Targets,
    Wanted,
    expand_platform,
    read_source,
    source_format,
)
from proxyindex.prefetchcli import choose_files
from tests.clients import (
    client_env,
    make_venv,
    run,
    run_pip_install,
    run_uv_pip_install,
    uv_command,
)
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI

A = "a" * 64
B = "b" * 64

_UV_LOCK = f"""
version = 1
[[package]]
name = "Top_Pkg"
version = "1.0"
source = {{ registry = "https://pypi.org/simple" }}
sdist = {{ url = "https://files.example/top_pkg-1.0.tar.gz", hash = "sha256:{A}" }}
wheels = [{{ url = "https://files.example/top_pkg-1.0-py3-none-any.whl", hash = "sha256:{B}" }}]

[[package]]
name = "myproject"
version = "0.1"
source = {{ editable = "." }}
"""
_POETRY_LOCK = f"""
[[package]]
name = "dep-one"
version = "2.0"
files = [{{ file = "dep_one-2.0-py3-none-any.whl", hash = "sha256:{A}" }}]

[[package]]
name = "local-thing"
version = "1.0"
files = []
[package.source]
type = "directory"
url = "../local"
"""
_PIPFILE_LOCK = json.dumps(
    {
        "_meta": {},
        "default": {"dep-one": {"version": "==2.0", "hashes": [f"sha256:{A}"]}},
        "develop": {"editable-x": {"editable": True, "path": "."}},
    }
)
_PYLOCK = f"""
lock-version = "1.0"
created-by = "test"
[[packages]]
name = "dep-one"
version = "2.0"
[[packages.wheels]]
url = "https://files.example/dep_one-2.0-py3-none-any.whl"
hashes = {{ sha256 = "{A}" }}
"""
_REQUIREMENTS = f"""
# compiled
--index-url https://example.invalid/simple
top-pkg==1.0 \\
    --hash=sha256:{A} \\
    --hash=sha256:{B}
dep-one>=1.0  # a comment
-e ./local
name @ https://example.invalid/x.whl
"""


@pytest.mark.parametrize(
    ("filename", "text", "expected"),
    [
        (
            "uv.lock",
            _UV_LOCK,
            [
                Wanted(
                    "top-pkg",  # type: ignore[arg-type]
                    SpecifierSet("==1.0"),
                    frozenset({A, B}),
                    frozenset({"top_pkg-1.0.tar.gz", "top_pkg-1.0-py3-none-any.whl"}),
                )
            ],
        ),
        (
            "poetry.lock",
            _POETRY_LOCK,
            [
                Wanted(
                    "dep-one",  # type: ignore[arg-type]
                    SpecifierSet("==2.0"),
                    frozenset({A}),
                    frozenset({"dep_one-2.0-py3-none-any.whl"}),
                )
            ],
        ),
        (
            "Pipfile.lock",
            _PIPFILE_LOCK,
            [Wanted("dep-one", SpecifierSet("==2.0"), frozenset({A}))],  # type: ignore[arg-type]
        ),
        (
            "pylock.toml",
            _PYLOCK,
            [
                Wanted(
                    "dep-one",  # type: ignore[arg-type]
                    SpecifierSet("==2.0"),
                    frozenset({A}),
                    frozenset({"dep_one-2.0-py3-none-any.whl"}),
                )
            ],
        ),
        (
            "requirements.txt",
            _REQUIREMENTS,
            [
                Wanted("top-pkg", SpecifierSet("==1.0"), frozenset({A, B})),  # type: ignore[arg-type]
                Wanted("dep-one", SpecifierSet(">=1.0")),  # type: ignore[arg-type]
            ],
        ),
        (
            "names.txt",
            "Top.Pkg\n\ndep_one\n",
            [Wanted("top-pkg"), Wanted("dep-one")],  # type: ignore[arg-type]
        ),
    ],
)
def test_each_format_is_read_with_its_parser(
    tmp_path: Path, filename: str, text: str, expected: list[Wanted]
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    assert read_source(path) == expected


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("uv.lock", "[[package]\n", "not valid TOML"),
        ("Pipfile.lock", "{", "not valid JSON"),
        ("pylock.toml", 'lock-version = "9.0"\ncreated-by = "x"\n', "not a valid pylock"),
        ("requirements.txt", "this is not ! a requirement\n", "is not a requirement"),
    ],
)
def test_a_malformed_file_is_a_clear_error(
    tmp_path: Path, filename: str, text: str, message: str
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(SourceError, match=message):
        read_source(path)


def test_the_format_comes_from_the_file_name() -> None:
    assert source_format(Path("pylock.dev.toml")) == "pylock"
    assert source_format(Path("x/uv.lock")) == "uv"
    assert source_format(Path("requirements-dev.in")) == "requirements"


def _names(chosen: object) -> list[str]:
    assert isinstance(chosen, list), chosen
    return [f["filename"] for f in chosen]


def test_platforms_and_python_versions_choose_the_files() -> None:
    assert "manylinux2014_x86_64" in expand_platform("manylinux_2_28_x86_64")
    assert "manylinux_2_17_x86_64" in expand_platform("manylinux_2_28_x86_64")
    targets = Targets.build(["manylinux_2_28_x86_64"], ["3.12"])
    files = [
        {"filename": "pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"},
        {"filename": "pkg-1.0-cp312-cp312-win_amd64.whl"},
        {"filename": "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"},
        {"filename": "pkg-1.0.tar.gz"},
        {"filename": "pkg-2.0.tar.gz", "requires-python": ">=3.13"},
        {"filename": "pkg-1.5-py3-none-any.whl", "yanked": "broken"},
    ]
    chosen = choose_files(Wanted("pkg"), files, targets)  # type: ignore[arg-type]
    assert _names(chosen) == ["pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"]
    pinned = choose_files(Wanted("pkg", SpecifierSet("==1.5")), files, targets)  # type: ignore[arg-type]
    assert _names(pinned) == ["pkg-1.5-py3-none-any.whl"]
    windows = Targets.build(["win_amd64"], ["3.11"])
    chosen = choose_files(Wanted("pkg"), files, windows)  # type: ignore[arg-type]
    assert _names(chosen) == ["pkg-1.0.tar.gz"]
    missing = choose_files(Wanted("pkg", SpecifierSet(">=3")), files, targets)  # type: ignore[arg-type]
    assert missing == "no release matching >=3 has a file for the target platforms"


def _prefetch(home: Path, server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyindex", "prefetch", "--server", server, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=client_env(home),
    )


@pytest.mark.e2e
def test_prefetch_from_lock_files_then_pip_and_uv_install_offline(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    fake_pypi.add_wheel("top-pkg", "1.0", requires_dist=["dep-one>=1.0"])
    fake_pypi.add_wheel("dep-one", "1.0")
    fake_pypi.add_wheel("dep-one", "2.0")
    fake_pypi.add_wheel("other-pkg", "3.0")
    # The lock files as uv writes them, resolved against the upstream itself.
    (tmp_path / "requirements.in").write_text("top-pkg\n")
    for out, extra in (("pylock.toml", []), ("requirements.txt", ["--generate-hashes"])):
        run(
            [
                *uv_command(),
                "pip",
                "compile",
                "requirements.in",
                "--index-url",
                fake_pypi.simple_url,
                "-o",
                out,
                *extra,
            ],
            client_env(client_tmp / "uv-compile"),
            cwd=tmp_path,
        )
    (tmp_path / "names.txt").write_text("other-pkg\nno-such-project\n")
    connected = make_proxy()
    home = tmp_path / "cli"
    first = _prefetch(
        home, connected.url, "-r", str(tmp_path / "pylock.toml"), "-r", str(tmp_path / "names.txt")
    )
    assert first.returncode == 1, first.stderr  # one name does not exist
    assert "4 projects: fetched 3 files" in first.stdout, first.stdout
    assert "already cached 0" in first.stdout
    assert "failed no-such-project: 404" in first.stdout
    again = _prefetch(home, connected.url, "-r", str(tmp_path / "requirements.txt"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 projects: fetched 0 files" in again.stdout and "already cached 2" in again.stdout
    connected.stop()
    fake_pypi.stop()  # the air gap
    folder = connected.config.parent
    offline = make_proxy(
        storage={"packages_dir": str(folder / "packages"), "cache_dir": str(folder / "cache")},
        upstream={"offline": True},
    )
    pip = run_pip_install(client_tmp / "pip", offline.index_url, "top-pkg", target=client_tmp / "t")
    assert pip.versions() == {"top-pkg": "1.0", "dep-one": "2.0"}
    python = make_venv(client_tmp / "venv")
    uv = run_uv_pip_install(
        client_tmp / "uv", offline.index_url, "top-pkg", "other-pkg", python=python
    )
    assert uv.installed == {"top-pkg": "1.0", "dep-one": "2.0", "other-pkg": "3.0"}
