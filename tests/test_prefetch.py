"""Fetching ahead: which file is guessed, which dependencies are followed, what is never fetched."""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, sys_tags
from packaging.utils import NormalizedName
from packaging.version import Version

from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.upstream import prefetch
from proxyindex.upstream.prefetch import choose_file, dependencies
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

Client = TestClient[Any, Any]


def _page(*filenames: str, **extra: Any) -> ProjectPage:
    files = tuple(
        DistFile(filename=f, location=f"https://u/{f}", origin=Origin.UPSTREAM, **extra.get(f, {}))
        for f in filenames
    )
    return ProjectPage(NormalizedName("pkg"), files)


def test_choose_file_prefers_the_newest_final_release_and_a_wheel() -> None:
    page = _page(
        "pkg-1.0.tar.gz",
        "pkg-1.0-py3-none-any.whl",
        "pkg-2.0.tar.gz",
        "pkg-2.0-py3-none-any.whl",
        "pkg-3.0b1-py3-none-any.whl",
        "pkg-2.1-cp27-cp27m-win32.whl",  # not installable here
    )
    chosen = choose_file(page)
    assert chosen is not None and chosen.filename == "pkg-2.0-py3-none-any.whl"
    pinned = choose_file(page, SpecifierSet("<2"))
    assert pinned is not None and pinned.filename == "pkg-1.0-py3-none-any.whl"


def test_choose_file_skips_yanked_and_incompatible_python() -> None:
    newer = "pkg-2.0-py3-none-any.whl"
    page = _page(
        "pkg-1.0-py3-none-any.whl",
        newer,
        "pkg-3.0-py3-none-any.whl",
        **{newer: {"yanked": "broken"}, "pkg-3.0-py3-none-any.whl": {"requires_python": ">=9"}},
    )
    chosen = choose_file(page, python=platform.python_version())
    assert chosen is not None and chosen.filename == "pkg-1.0-py3-none-any.whl"
    assert choose_file(_page("pkg-1.0-py3-none-any.whl"), SpecifierSet(">5")) is None


def _choose_every_file(
    page: ProjectPage, specifier: SpecifierSet | None, python: str, ranks: dict[Tag, int]
) -> DistFile | None:
    """The choice as first written: every file parsed whole, the best key kept. The fast one
    must pick the same file."""
    best: tuple[tuple[bool, Version, int], DistFile] | None = None
    for dist in page.files:
        candidate = prefetch._candidate(dist, python, ranks)
        if candidate is None:
            continue
        version, rank = candidate
        if specifier is not None and not specifier.contains(version, prereleases=True):
            continue
        key = (not version.is_prerelease, version, rank)
        if best is None or key > best[0]:
            best = (key, dist)
    return best[1] if best else None


_VERSIONS = st.sampled_from(
    ["1.0", "1.0.0", "1.1", "2.0", "2.0rc1", "2.0.post1", "3.0a1", "0.9", "bad!"]
)
_TAGS = st.sampled_from(
    ["py3-none-any", "cp311-cp311-manylinux_2_17_x86_64", "cp27-cp27m-win32", "py2.py3-none-any"]
)
_FILES = st.one_of(
    st.builds(lambda v, t: f"pkg-{v}-{t}.whl", _VERSIONS, _TAGS),
    st.builds(lambda v, ext: f"pkg-{v}{ext}", _VERSIONS, st.sampled_from([".tar.gz", ".zip"])),
    st.sampled_from(["pkg-1.0.exe", "README.txt", "pkg-1.0-1-py3-none-any.whl"]),
)


@settings(max_examples=300, deadline=None)
@given(
    files=st.lists(
        st.tuples(_FILES, st.booleans(), st.sampled_from([None, ">=3", ">=9", "<3"])), max_size=12
    ),
    spec=st.sampled_from([None, "<2", ">=2", "==1.0", ">5", "!=2.0"]),
)
def test_choosing_release_by_release_picks_what_parsing_every_file_picks(
    files: list[tuple[str, bool, str | None]], spec: str | None
) -> None:
    page = ProjectPage(
        NormalizedName("pkg"),
        tuple(
            DistFile(
                filename=name,
                location=f"https://u/{name}",
                origin=Origin.UPSTREAM,
                yanked="gone" if yanked else False,
                requires_python=requires,
            )
            for name, yanked, requires in files
        ),
    )
    specifier = SpecifierSet(spec) if spec else None
    ranks = {tag: rank for rank, tag in enumerate(sys_tags())}
    python = "3.11.7"
    assert choose_file(page, specifier, python, ranks) == _choose_every_file(
        page, specifier, python, ranks
    )


def test_dependencies_skip_extras_and_foreign_markers() -> None:
    metadata = (
        b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n"
        b"Requires-Dist: Dep_One>=1.1\n"
        b'Requires-Dist: only-extra; extra == "test"\n'
        b'Requires-Dist: win-only; sys_platform == "win32"\n'
        b"Requires-Dist: not a requirement !!\n"
        b"Requires-Dist: two[x]<3,>=2\n\n"
    )
    deps = dict(dependencies(metadata))
    assert deps == {"dep-one": SpecifierSet(">=1.1"), "two": SpecifierSet("<3,>=2")}


async def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def client_factory(make_app_client: MakeAppClient) -> Callable[..., Awaitable[Client]]:
    async def factory(**private: Any) -> Client:
        return await make_app_client(private=private)

    return factory


async def test_a_page_request_fetches_the_dependency_tree_ahead(
    client_factory: Callable[..., Awaitable[Client]], fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("top-pkg", "1.0", requires_dist=["mid-pkg<2"])
    fake_pypi.add_wheel("mid-pkg", "1.5", requires_dist=["leaf-pkg"])
    fake_pypi.add_wheel("mid-pkg", "2.0", requires_dist=["wrong-branch"])
    fake_pypi.add_wheel("leaf-pkg", "0.1")
    client = await client_factory()
    assert (await client.get("/simple/top-pkg/")).status == 200

    def fetched(fragment: str) -> bool:
        return any(fragment in p for p in fake_pypi.paths())

    await wait_for(lambda: fetched("leaf_pkg-0.1-py3-none-any.whl.metadata"))
    await wait_for(lambda: fetched("/leaf_pkg-0.1-py3-none-any.whl"))
    assert fetched("/simple/mid-pkg/")
    assert fetched("/mid_pkg-1.5-py3-none-any.whl")
    assert not fetched("mid_pkg-2.0")  # the specifier from top-pkg is honoured
    assert not fetched("wrong-branch")
    fake_pypi.clear_log()
    # What pip asks next is all cached now.
    for path in ("/simple/mid-pkg/", "/simple/leaf-pkg/"):
        assert (await client.get(path)).status == 200
    leaf = await client.get("/packages/leaf-pkg/leaf_pkg-0.1-py3-none-any.whl")
    assert leaf.status == 200
    assert fake_pypi.paths() == []


async def test_prefetch_follows_dependencies_of_wheels_without_metadata_files(
    client_factory: Callable[..., Awaitable[Client]], fake_pypi: FakePyPI
) -> None:
    """An upstream with no ``.metadata``: the METADATA is read out of the wheel (ranges)."""
    fake_pypi.no_core_metadata = True
    fake_pypi.add_wheel("top-pkg", "1.0", requires_dist=["leaf-pkg"])
    fake_pypi.add_wheel("leaf-pkg", "0.1")
    client = await client_factory()
    assert (await client.get("/simple/top-pkg/")).status == 200
    await wait_for(lambda: any("/leaf_pkg-0.1-py3-none-any.whl" in p for p in fake_pypi.paths()))
    assert "/simple/leaf-pkg/" in fake_pypi.paths()


async def test_prefetch_never_asks_the_upstream_for_a_private_name(
    client_factory: Callable[..., Awaitable[Client]], fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("top-pkg", "1.0", requires_dist=["corp-lib", "acme-x", "public-dep"])
    fake_pypi.add_wheel("corp-lib", "99.0")
    fake_pypi.add_wheel("acme-x", "99.0")
    fake_pypi.add_wheel("public-dep", "1.0")
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await client_factory(reserved=["acme-*"])
    assert (await client.get("/simple/top-pkg/")).status == 200
    await wait_for(lambda: any("public_dep-1.0-py3-none-any.whl" in p for p in fake_pypi.paths()))
    await asyncio.sleep(0.2)
    assert [p for p in fake_pypi.paths() if "corp" in p or "acme" in p] == []
