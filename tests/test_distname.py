"""Which filenames name one release file, and the canonical spelling of each (a pure table)."""

from __future__ import annotations

import pytest

from proxyindex.distname import InvalidDistFilename, parse_dist_filename, release_of

WHEEL = "dupdemo-1.0-py3-none-any.whl"


@pytest.mark.parametrize(
    ("filename", "same_release", "canonical"),
    [
        (WHEEL, True, WHEEL),
        ("dupdemo-1.0.0-py3-none-any.whl", True, "dupdemo-1.0.0-py3-none-any.whl"),
        ("DupDemo-01.0-py3-none-any.whl", True, WHEEL),
        ("Dup_Demo-1.0-py3-none-any.whl", False, "dup_demo-1.0-py3-none-any.whl"),
        ("dupdemo-1.0-1-py3-none-any.whl", False, "dupdemo-1.0-1-py3-none-any.whl"),
        ("dupdemo-1.0-py2.py3-none-any.whl", False, "dupdemo-1.0-py2.py3-none-any.whl"),
        ("dupdemo-1.0-py3-none-linux_x86_64.whl", False, "dupdemo-1.0-py3-none-linux_x86_64.whl"),
        ("dupdemo-1.0.post0-py3-none-any.whl", False, "dupdemo-1.0.post0-py3-none-any.whl"),
        ("dupdemo-1.0+local-py3-none-any.whl", False, "dupdemo-1.0+local-py3-none-any.whl"),
        ("dupdemo-1.0.tar.gz", False, "dupdemo-1.0.tar.gz"),
    ],
)
def test_release_key_follows_pep440_equality_not_the_filename(
    filename: str, same_release: bool, canonical: str
) -> None:
    dist, wheel = parse_dist_filename(filename), parse_dist_filename(WHEEL)
    assert ((dist.name, dist.release_key) == (wheel.name, wheel.release_key)) is same_release
    assert dist.canonical == canonical


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("dupdemo-1.0-py2.py3-none-any.whl", "dupdemo-1.0.0-py3.py2-none-any.whl"),
        ("dupdemo-1.0-1-py3-none-any.whl", "dupdemo-1.0-01-py3-none-any.whl"),
        ("Foo_Bar-1.0.tar.gz", "foo-bar-1.0.zip"),
        ("foo.bar-1.0rc1.tar.gz", "foo_bar-1.0.0RC01.tar.gz"),
    ],
)
def test_spellings_of_one_release(one: str, other: str) -> None:
    first, second = parse_dist_filename(one), parse_dist_filename(other)
    assert (first.name, first.release_key) == (second.name, second.release_key)


def test_legacy_sdist_spellings_and_non_distributions() -> None:
    assert parse_dist_filename("foo-bar-1.0.tar.gz").canonical == "foo_bar-1.0.tar.gz"
    assert parse_dist_filename("foo-bar-1.0.tar.gz").version_text == "1.0"
    assert parse_dist_filename("Foo-01.0-py3-none-any.whl").version_text == "01.0"
    assert release_of("README.txt") is None
    assert release_of("foo-1.0-py3.whl") is None
    with pytest.raises(InvalidDistFilename, match="not a wheel"):
        parse_dist_filename("foo-1.0.exe")
