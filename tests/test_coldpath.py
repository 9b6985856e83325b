"""The cold page path's fast ways (issue 12) give exactly what the checked ways give.

Each shortcut taken for big PyPI pages is held against its reference on generated input:
the plain-typed file entry reader against the checked one, the filename version against
packaging's full parse, the version sort against ``version_key``, and orjson's page bodies
against ``json.dumps``'s, for upstream, private, merged, yanked, guard-filtered files,
provenance and project status alike.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from proxyindex import simple
from proxyindex.config import PolicyConfig
from proxyindex.errors import NotAnIndexPage
from proxyindex.guard.live import Guard
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.policy import merge_pages
from proxyindex.simple import (
    SimpleFormat,
    dump_json,
    parse_project_json,
    render_project,
    sorted_versions,
    version_of,
)

NAME = NormalizedName("demo")
PAGE_URL = "https://up.example/simple/demo/"
CHECK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- one file entry: the plain-typed reader vs the checked one --------------------------------

odd_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.sampled_from(["", "é", "\ud800", "sha256", "1.0", ">=3.8", "x/y", "https://cdn/x"]),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["sha256", "SHA256", "md5", "é", ""]), st.text(max_size=4)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_KEYS = [
    "filename",
    "url",
    "hashes",
    "requires-python",
    "size",
    "upload-time",
    "yanked",
    "core-metadata",
    "data-dist-info-metadata",
    "provenance",
    "gpg-sig",
]
pypi_file = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(["demo-1.0.tar.gz", "demo-2.0-py3-none-any.whl"]),
        "url": st.sampled_from(["https://files.example/p/demo-1.0.tar.gz", "/f/x", "../x"]),
        "hashes": st.sampled_from([{"sha256": "AB12"}, {}, {"sha256": "ab", "md5": "cd"}]),
    },
    optional={
        "requires-python": st.none() | st.sampled_from(["", ">=3.8"]),
        "size": st.integers(min_value=0, max_value=2**40),
        "upload-time": st.sampled_from(["2024-01-01T00:00:00Z", ""]),
        "yanked": st.booleans() | st.sampled_from(["", "broken"]),
        "core-metadata": st.booleans() | st.just({"sha256": "EF"}),
        "data-dist-info-metadata": st.booleans() | st.just({"sha256": "ef"}),
        "provenance": st.none() | st.just("https://up.example/prov"),
        "gpg-sig": st.none() | st.booleans(),
    },
)
any_file = st.tuples(pypi_file, st.dictionaries(st.sampled_from(_KEYS), odd_value, max_size=3)).map(
    lambda pair: {**pair[0], **pair[1]}
)


def _checked(raw: dict[str, Any]) -> DistFile | str:
    try:
        return simple._JsonFiles(NAME).dist(raw, 0, PAGE_URL, Origin.UPSTREAM)
    except NotAnIndexPage as exc:
        return str(exc)


@CHECK
@given(pypi_file)
def test_the_fast_reader_takes_every_plain_entry_and_reads_it_as_the_checked_one(
    raw: dict[str, Any],
) -> None:
    fast = simple._fast_dist(raw, PAGE_URL, Origin.UPSTREAM)
    assert fast is not None
    assert fast == _checked(raw)


@CHECK
@given(any_file)
def test_the_fast_reader_agrees_with_the_checked_one_or_leaves_the_entry_to_it(
    raw: dict[str, Any],
) -> None:
    fast = simple._fast_dist(raw, PAGE_URL, Origin.UPSTREAM)
    if fast is not None:
        assert fast == _checked(raw)


@CHECK
@given(st.lists(any_file, min_size=1, max_size=5))
def test_a_page_parses_as_entry_by_entry_checking_makes_it_or_is_refused_alike(
    files: list[dict[str, Any]],
) -> None:
    """The whole page: the same files as the checked reader makes, or the same refusal."""
    doc = {"meta": {"api-version": "1.1"}, "name": "demo", "files": files}
    expected: list[DistFile] = []
    refusal = None
    for index, raw in enumerate(files):
        try:
            expected.append(simple._JsonFiles(NAME).dist(raw, index, PAGE_URL, Origin.UPSTREAM))
        except NotAnIndexPage as exc:
            refusal = str(exc)
            break
    try:
        page = parse_project_json(json.dumps(doc).encode(), PAGE_URL, NAME)
    except NotAnIndexPage as exc:
        assert str(exc) == refusal
    else:
        assert refusal is None
        assert list(page.files) == expected


# --- versions from filenames: packaging's full parse is the reference --------------------------


def _reference_version(filename: str) -> str | None:
    """What version_of answered before issue 12: packaging parses the whole filename (a
    wheel's tags replaced by ``py3-none-any``, which never decided the version)."""
    try:
        if filename.endswith(".whl"):
            parts = filename.split("-")
            if len(parts) == 6:
                return str(parse_wheel_filename(filename)[1])
            if len(parts) != 5 or not all(parts[2:]):
                return None
            return str(parse_wheel_filename(f"{parts[0]}-{parts[1]}-py3-none-any.whl")[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


name_part = st.sampled_from(["demo", "Demo_Pkg", "a.b", "x__y", "", "é", "foo-bar", "1"])
version_part = st.sampled_from(
    ["1.0", "1.0.0", "2!1.0", "1.0rc1", "1.0.post1", "1.0+local", "v1", "1_0", "abc", "", "1.0.A1"]
) | st.text(string.ascii_letters + string.digits + "._+!", max_size=6)
tail = st.sampled_from(
    [
        "-py3-none-any.whl",
        "-cp312-cp312-manylinux_2_17_x86_64.whl",
        "-1-py3-none-any.whl",
        "-x-py3-none-any.whl",
        "--none-any.whl",
        "-py3-none-.whl",
        "-py3-any.whl",
        ".tar.gz",
        ".zip",
        ".tar.bz2",
        ".whl",
        "",
    ]
)


@CHECK
@given(name_part, version_part, tail)
def test_a_filename_carries_the_version_packaging_reads_from_it(
    name: str, version: str, suffix: str
) -> None:
    filename = f"{name}-{version}{suffix}"
    assert version_of(filename) == _reference_version(filename)


def _reference_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


@CHECK
@given(st.lists(version_part, max_size=30))
def test_versions_sort_as_by_version_key(versions: list[str]) -> None:
    assert sorted_versions(versions) == sorted(versions, key=_reference_key)


# --- page bodies: orjson writes what json.dumps wrote ---------------------------------------


def _reference_json(page: ProjectPage, base_url: str) -> Any:
    """The JSON page as json.dumps wrote it before issue 12, read back."""
    body = json.dumps(simple._json_body(page, base_url), separators=(",", ":"))
    return json.loads(body)


text = st.text(max_size=5) | st.sampled_from(["é", "<a>&\"'", "\x00", "中文"])
file_values = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(
            ["demo-1.0.tar.gz", "demo-2.0-py3-none-any.whl", "demo-1.0+é-py3-none-any.whl"]
        ),
        "origin": st.sampled_from(list(Origin)),
        "hashes": st.sampled_from([{}, {"sha256": "ab"}, {"sha256": "ab", "md5": "cd"}]),
        "requires_python": st.none() | text,
        "size": st.none() | st.integers(min_value=0, max_value=2**70),
        "upload_time": st.none() | text,
        "yanked": st.booleans() | text,
        "core_metadata": st.booleans() | st.just({"sha256": "ef"}),
        "provenance": st.none() | text,
        "gpg_sig": st.none() | st.booleans(),
    }
)


def _dist(values: dict[str, Any]) -> DistFile:
    origin = values["origin"]
    location: str | Path = (
        Path("/packages") / values["filename"]
        if origin is Origin.PRIVATE
        else f"https://files.example/{values['filename']}"
    )
    return DistFile(location=location, **values)


pages = st.builds(
    lambda files, status, serial, extra: ProjectPage(
        name=NAME,
        files=tuple(_dist(f) for f in files),
        versions=simple.project_versions(tuple(_dist(f) for f in files), extra),
        serial=serial,
        status=status[0],
        status_reason=status[1],
    ),
    st.lists(file_values, max_size=6),
    st.sampled_from([(None, None), ("archived", None), ("quarantined", "malware, é")]),
    st.none() | st.integers(min_value=0, max_value=2**70),
    st.lists(version_part, max_size=3),
)


@CHECK
@given(pages, st.sampled_from(["", "https://proxy.example", "http://h:1/snapshot/2024-01-01"]))
def test_the_json_page_says_what_json_dumps_said(page: ProjectPage, base_url: str) -> None:
    body = render_project(page, SimpleFormat.JSON, base_url)
    assert json.loads(body) == _reference_json(page, base_url)


@CHECK
@given(pages, pages)
def test_merged_and_guard_filtered_pages_render_as_json_dumps_rendered_them(
    private: ProjectPage, upstream: ProjectPage
) -> None:
    """The pages the server really renders: private files merged over upstream ones, then
    the guard's filter (here: yanked and held-back files shown with their reasons)."""
    private = ProjectPage(
        NAME,
        tuple(DistFile(f.filename, Path("/p") / f.filename, Origin.PRIVATE) for f in private.files),
    )
    merged = merge_pages(private, upstream)
    assert merged is not None
    guard = Guard(PolicyConfig(deny=("demo==1.0",)))
    shown = guard.outcome_now(merged).page
    for page in (merged, shown):
        body = render_project(page, SimpleFormat.JSON, "https://proxy.example")
        assert json.loads(body) == _reference_json(page, "https://proxy.example")


@CHECK
@given(st.text(max_size=12) | st.sampled_from(["demo-1.0+cu121-py3-none-any.whl", "a b", "%"]))
def test_a_file_link_is_quoted_as_quote_quotes_it(filename: str) -> None:
    assert simple.file_href(NAME, filename, "") == f"../../packages/demo/{quote(filename, safe='')}"


def test_json_with_what_orjson_refuses_is_written_by_the_stdlib() -> None:
    """Integers beyond 64 bits and lone surrogates (a private filename read from disk) are
    still written, as json.dumps wrote them."""
    for body in ({"size": 2**70}, {"filename": "demo-\udcff.tar.gz"}):
        assert json.loads(dump_json(body)) == body
    assert dump_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
