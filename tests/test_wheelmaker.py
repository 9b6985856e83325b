"""Hand-built wheels and sdists are valid, reproducible, and real installers accept them."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from typing import TYPE_CHECKING

import pytest
from packaging.utils import parse_sdist_filename, parse_wheel_filename

from tests.clients import make_venv, run_pip_install, run_uv_pip_install
from tests.wheelmaker import dist_metadata, make_sdist, make_wheel, wheel_metadata

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fakepypi import FakePyPI


def test_wheel_filename_and_dist_info_use_the_escaped_name(wheels_dir: Path) -> None:
    wheel = make_wheel(wheels_dir, "Foo.Bar-baz", "1.0.0-rc1")
    assert wheel.name == "foo_bar_baz-1.0.0rc1-py3-none-any.whl"
    name, version, build, _tags = parse_wheel_filename(wheel.name)
    assert (name, str(version), build) == ("foo-bar-baz", "1.0.0rc1", ())
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "foo_bar_baz-1.0.0rc1.dist-info/METADATA" in names
        assert zf.read("foo_bar_baz/__init__.py") == b'__version__ = "1.0.0-rc1"\n'


def test_wheel_bytes_are_reproducible(tmp_path: Path) -> None:
    first = make_wheel(tmp_path / "a", "demo", "1.0", requires_dist=["dep>=1"])
    second = make_wheel(tmp_path / "b", "demo", "1.0", requires_dist=["dep>=1"])
    assert first.read_bytes() == second.read_bytes()
    assert make_wheel(tmp_path / "c", "demo", "1.1").read_bytes() != first.read_bytes()


def test_record_lists_every_member_with_its_hash_and_size(wheels_dir: Path) -> None:
    wheel = make_wheel(wheels_dir, "demo", "1.0", modules={"demo.py": "X = 1\n", "d/x.py": ""})
    with zipfile.ZipFile(wheel) as zf:
        record = zf.read("demo-1.0.dist-info/RECORD").decode().splitlines()
        rows = {path: (digest, size) for path, digest, size in (r.split(",") for r in record)}
        assert set(rows) == set(zf.namelist())
        assert rows.pop("demo-1.0.dist-info/RECORD") == ("", "")
        for path, (digest, size) in rows.items():
            data = zf.read(path)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={b64}"
            assert int(size) == len(data)


def test_metadata_and_wheel_files_carry_the_requested_fields(wheels_dir: Path) -> None:
    wheel = make_wheel(
        wheels_dir,
        "Demo.Pkg",
        "2.0",
        requires_dist=["dep>=1", 'extra; python_version < "3.9"'],
        requires_python=">=3.8,<4",
        tag="py2.py3-none-any",
    )
    fields = dist_metadata(wheel)
    assert fields["Metadata-Version"] == ["2.1"]
    assert fields["Name"] == ["Demo.Pkg"]
    assert fields["Version"] == ["2.0"]
    assert fields["Requires-Python"] == [">=3.8,<4"]
    assert fields["Requires-Dist"] == ["dep>=1", 'extra; python_version < "3.9"']
    with zipfile.ZipFile(wheel) as zf:
        assert wheel_metadata(wheel) == zf.read("demo_pkg-2.0.dist-info/METADATA")
        wheel_file = zf.read("demo_pkg-2.0.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: true" in wheel_file
    assert "Tag: py2-none-any\nTag: py3-none-any\n" in wheel_file


def test_sdist_is_pep625_reproducible_and_buildable_in_shape(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path / "a", "Demo.Pkg", "1.0", requires_dist=["dep"])
    assert sdist.name == "demo_pkg-1.0.tar.gz"
    assert parse_sdist_filename(sdist.name)[0] == "demo-pkg"
    assert make_sdist(tmp_path / "b", "Demo.Pkg", "1.0", requires_dist=["dep"]).read_bytes() == (
        sdist.read_bytes()
    )
    with tarfile.open(sdist) as tf:
        assert set(tf.getnames()) == {
            "demo_pkg-1.0/PKG-INFO",
            "demo_pkg-1.0/pyproject.toml",
            "demo_pkg-1.0/src/demo_pkg/__init__.py",
        }
        member = tf.extractfile("demo_pkg-1.0/pyproject.toml")
        assert member is not None
        project = tomllib.loads(member.read().decode())["project"]
    assert (project["name"], project["version"], project["dependencies"]) == (
        "Demo.Pkg",
        "1.0",
        ["dep"],
    )
    assert dist_metadata(sdist)["Requires-Dist"] == ["dep"]


@pytest.mark.e2e
def test_pip_installs_wheels_with_a_dependency_from_fake_pypi(
    fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("dep", "1.0")
    fake_pypi.add_wheel("dep", "2.0", yanked=True)
    fake_pypi.add_wheel("top", "1.0", requires_dist=["dep>=1"], requires_python=">=3.8")
    target = tmp_path / "target"
    report = run_pip_install(client_tmp, fake_pypi.simple_url, "top", target=target)
    assert report.versions() == {"top": "1.0", "dep": "1.0"}  # the yanked 2.0 is skipped
    assert all(item.url.startswith(fake_pypi.url + "/files/") for item in report.installed)
    assert (target / "top" / "__init__.py").read_text() == '__version__ = "1.0"\n'
    # pip used PEP 658 metadata, then downloaded both wheels
    assert fake_pypi.count("/files/") == 4
    assert sum(p.endswith(".metadata") for p in fake_pypi.paths()) == 2


@pytest.mark.e2e
def test_uv_installs_wheels_from_fake_pypi_html_only(
    fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    fake_pypi.html_only = True
    fake_pypi.add_wheel("dep", "1.0")
    fake_pypi.add_wheel("top", "1.0", requires_dist=["dep"])
    python = make_venv(tmp_path / "venv")
    result = run_uv_pip_install(client_tmp, fake_pypi.simple_url, "top", python=python)
    assert result.installed == {"top": "1.0", "dep": "1.0"}
    check = subprocess.run(
        [python, "-c", "import top, dep; print(top.__version__, dep.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout == "1.0 1.0\n"


@pytest.mark.e2e
def test_sample_builds_and_installs_from_fake_pypi(
    sample_dists: list[Path], fake_pypi: FakePyPI, client_tmp: Path, tmp_path: Path
) -> None:
    assert [p.name for p in sample_dists] == [
        "sample-0.1.0-py3-none-any.whl",
        "sample-0.1.0.tar.gz",
    ]
    for dist in sample_dists:
        fake_pypi.add_dist(dist)
    target = tmp_path / "target"
    report = run_pip_install(client_tmp, fake_pypi.simple_url, "sample", target=target)
    assert report.versions() == {"sample": "0.1.0"}
    assert report.installed[0].url.endswith("/sample-0.1.0-py3-none-any.whl")
    out = subprocess.run(
        [sys.executable, "-c", "import sample; sample.sample_print_stmt('hi')"],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "hi\n"
