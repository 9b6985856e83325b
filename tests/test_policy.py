"""The ownership rule as a truth table (DC-01..DC-03), and page merging."""

from __future__ import annotations

import pytest
from packaging.utils import NormalizedName

from proxyindex.config import ConfigError, PrivateConfig, load_config
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.policy import Owner, merge_pages, owner_of


def _private(reserved: tuple[str, ...] = (), merge: tuple[str, ...] = ()) -> PrivateConfig:
    config = load_config(
        None,
        overrides={"private": {"reserved": list(reserved), "merge_with_upstream": list(merge)}},
    )
    return config.private


@pytest.mark.parametrize(
    ("name", "has_private", "reserved", "merge", "expected"),
    [
        ("requests", False, (), (), Owner.UPSTREAM),  # public only
        ("corp-lib", True, (), (), Owner.PRIVATE),  # private shadows public (DC-01)
        ("acme-tool", False, ("acme-*",), (), Owner.PRIVATE),  # reserved before upload (DC-03)
        ("acme-tool", False, ("Acme_*",), (), Owner.PRIVATE),  # patterns are normalised too
        ("acme", False, ("acme-*",), (), Owner.UPSTREAM),  # the prefix needs its dash
        ("corp-lib", True, (), ("corp-lib",), Owner.MERGED),  # allow-listed (DC-02)
        ("corp-lib", False, (), ("corp-lib",), Owner.MERGED),
        ("corp-lib", True, (), ("*",), Owner.MERGED),  # wildcard allow-list
        ("acme-tool", True, ("acme-*",), ("acme-tool",), Owner.MERGED),  # explicit merge wins
        ("other", False, ("acme-*",), ("corp-lib",), Owner.UPSTREAM),
    ],
)
def test_owner_truth_table(
    name: str,
    has_private: bool,
    reserved: tuple[str, ...],
    merge: tuple[str, ...],
    expected: Owner,
) -> None:
    assert owner_of(name, has_private, _private(reserved, merge)) is expected


def test_bad_pattern_stops_startup_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"private\.reserved"):
        _private(reserved=("bad/name",))


def _dist(filename: str, origin: Origin) -> DistFile:
    return DistFile(filename=filename, location=f"u/{filename}", origin=origin)


def test_merge_keeps_private_file_on_a_filename_clash() -> None:
    name = NormalizedName("fork")
    private = ProjectPage(name, (_dist("fork-1.0.tar.gz", Origin.PRIVATE),))
    upstream = ProjectPage(
        name,
        (_dist("fork-1.0.tar.gz", Origin.UPSTREAM), _dist("fork-2.0.tar.gz", Origin.UPSTREAM)),
        versions=frozenset({"1.0", "2.0", "3.0"}),
    )
    merged = merge_pages(private, upstream)
    assert merged is not None
    assert [(f.filename, f.origin) for f in merged.files] == [
        ("fork-1.0.tar.gz", Origin.PRIVATE),
        ("fork-2.0.tar.gz", Origin.UPSTREAM),
    ]
    assert merged.versions == {"1.0", "2.0", "3.0"}
    assert merged.has_private_files


def test_merge_with_one_side_missing_returns_the_other() -> None:
    page = ProjectPage(NormalizedName("x"), (_dist("x-1.0.tar.gz", Origin.UPSTREAM),))
    assert merge_pages(None, page) is page
    assert merge_pages(page, None) is page
    assert merge_pages(None, None) is None
