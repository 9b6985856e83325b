"""Tables for the pure simple-API code: negotiation, rendering, parsing, escaping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging.utils import NormalizedName

from proxyindex.errors import NotAnIndexPage
from proxyindex.models import DistFile, Origin, ProjectPage, is_valid_name, normalize
from proxyindex.simple import (
    SimpleFormat,
    negotiate,
    parse_project,
    parse_project_html,
    parse_project_json,
    parse_root_names,
    render_project,
    render_root_entry,
    render_root_footer,
    render_root_header,
)

PIP = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
POETRY = "application/vnd.pypi.simple.v1+json, */*;q=0.1"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP, SimpleFormat.JSON),  # CN-09
        (UV, SimpleFormat.JSON),
        (POETRY, SimpleFormat.JSON),
        ("*/*", SimpleFormat.TEXT_HTML),  # pipenv's hash pass, curl (CN-03)
        (None, SimpleFormat.TEXT_HTML),
        ("", SimpleFormat.TEXT_HTML),
        ("text/html", SimpleFormat.TEXT_HTML),
        ("application/vnd.pypi.simple.v1+html", SimpleFormat.HTML),
        ("application/vnd.pypi.simple.latest+json", SimpleFormat.JSON),  # CN-04
        ("application/vnd.pypi.simple.latest+html", SimpleFormat.HTML),
        ("application/xml", SimpleFormat.TEXT_HTML),  # CN-05: nothing acceptable -> HTML
        ("application/json", SimpleFormat.TEXT_HTML),
        ("application/*", SimpleFormat.TEXT_HTML),  # a wildcard is not a request for JSON
        ("application/vnd.pypi.simple.v1+json;q=0, */*", SimpleFormat.TEXT_HTML),
        ("text/html;q=0.9, application/vnd.pypi.simple.v1+json;q=0.5", SimpleFormat.TEXT_HTML),
        ("application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.5", SimpleFormat.JSON),
        ("text/html;q=0, application/xml", SimpleFormat.HTML),
        ("garbage;;;q=abc,,,/", SimpleFormat.TEXT_HTML),
        ("application/vnd.pypi.simple.v1+json; q=nonsense", SimpleFormat.TEXT_HTML),
        ("APPLICATION/VND.PYPI.SIMPLE.V1+JSON", SimpleFormat.JSON),
    ],
)
def test_negotiation_picks_the_format_clients_expect(
    accept: str | None, expected: SimpleFormat
) -> None:
    assert negotiate(accept) is expected


def test_format_parameter_overrides_accept() -> None:
    assert negotiate("text/html", "application/vnd.pypi.simple.v1+json") is SimpleFormat.JSON
    assert negotiate(PIP, "text/html") is SimpleFormat.TEXT_HTML
    assert negotiate(PIP, "bogus") is SimpleFormat.JSON


def test_json_content_type_is_exact_and_html_carries_charset() -> None:
    assert SimpleFormat.JSON.content_type == "application/vnd.pypi.simple.v1+json"
    assert SimpleFormat.TEXT_HTML.content_type.startswith("text/html")
    assert SimpleFormat.HTML.content_type.startswith("application/vnd.pypi.simple.v1+html")


@pytest.mark.parametrize(
    ("raw", "valid", "normalized"),
    [
        ("Foo_Bar", True, "foo-bar"),
        ("foo.bar", True, "foo-bar"),
        ("FOO--bar", True, "foo-bar"),
        ("FrIeNdLy-._.-bArD", True, "friendly-bard"),
        ("a", True, "a"),
        ("foo\n", False, None),  # N-02: \Z, not $
        ("..", False, None),
        ("-foo", False, None),
        ("foo-", False, None),
        ("foo/bar", False, None),
        ("foo\\bar", False, None),
        ("", False, None),
        ("x" * 201, False, None),
        ("café", False, None),
    ],
)
def test_names_are_validated_and_normalised(raw: str, valid: bool, normalized: str | None) -> None:
    assert is_valid_name(raw) is valid
    if normalized is not None:
        assert normalize(raw) == normalized


def _page() -> ProjectPage:
    return ProjectPage(
        name=NormalizedName("demo-pkg"),
        files=(
            DistFile(
                filename="demo_pkg-1.0-py3-none-any.whl",
                location="https://files.example/demo_pkg-1.0-py3-none-any.whl",
                origin=Origin.UPSTREAM,
                hashes={"sha256": "a" * 64},
                requires_python=">=3.8,!=3.9.*,<4",
                size=1234,
                upload_time="2026-01-02T03:04:05.000000Z",
                core_metadata={"sha256": "b" * 64},
            ),
            DistFile(
                filename="demo_pkg-1.1+local.tar.gz",
                location="https://files.example/demo_pkg-1.1+local.tar.gz",
                origin=Origin.UPSTREAM,
                hashes={"sha256": "c" * 64},
                size=99,
                yanked='broken "build" <oops>',
            ),
        ),
        versions=frozenset({"1.0", "1.1+local", "0.9"}),
    )


def test_json_rendering_has_pep691_and_pep700_fields() -> None:
    doc = json.loads(render_project(_page(), SimpleFormat.JSON))
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "demo-pkg"
    assert doc["versions"] == ["0.9", "1.0", "1.1+local"]
    wheel, sdist = doc["files"]
    assert wheel["url"] == "../../packages/demo-pkg/demo_pkg-1.0-py3-none-any.whl"
    assert wheel["hashes"] == {"sha256": "a" * 64}
    assert wheel["size"] == 1234
    assert wheel["upload-time"] == "2026-01-02T03:04:05.000000Z"
    assert wheel["requires-python"] == ">=3.8,!=3.9.*,<4"
    assert wheel["core-metadata"] == {"sha256": "b" * 64}
    assert wheel["yanked"] is False
    assert "dist-info-metadata" not in wheel and "data-dist-info-metadata" not in wheel  # J-05
    assert sdist["url"].endswith("demo_pkg-1.1%2Blocal.tar.gz")  # F-01: percent-encoded
    assert sdist["yanked"] == 'broken "build" <oops>'
    assert "core-metadata" not in sdist


def test_html_rendering_escapes_every_attribute() -> None:
    body = render_project(_page(), SimpleFormat.TEXT_HTML).decode()
    assert body.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.1">' in body
    assert 'data-requires-python="&gt;=3.8,!=3.9.*,&lt;4"' in body  # H-05
    assert f'data-core-metadata="sha256={"b" * 64}"' in body  # H-07
    assert f'data-dist-info-metadata="sha256={"b" * 64}"' in body
    assert 'data-yanked="broken &quot;build&quot; &lt;oops&gt;"' in body  # H-06
    assert f'demo_pkg-1.0-py3-none-any.whl#sha256={"a" * 64}"' in body  # H-04
    assert ">demo_pkg-1.0-py3-none-any.whl</a>" in body
    assert "<oops>" not in body


def test_absolute_urls_with_a_configured_base_url() -> None:
    doc = json.loads(render_project(_page(), SimpleFormat.JSON, "https://pypi.corp.example"))
    assert doc["files"][0]["url"] == (
        "https://pypi.corp.example/packages/demo-pkg/demo_pkg-1.0-py3-none-any.whl"
    )


@pytest.mark.parametrize("fmt", [SimpleFormat.JSON, SimpleFormat.TEXT_HTML])
def test_rendered_pages_parse_back_into_the_same_files(fmt: SimpleFormat) -> None:
    page = _page()
    body = render_project(page, fmt)
    parsed = parse_project(
        body, fmt.content_type, "http://proxy/simple/demo-pkg/", NormalizedName("demo-pkg")
    )
    assert [f.filename for f in parsed.files] == [f.filename for f in page.files]
    assert [f.sha256 for f in parsed.files] == [f.sha256 for f in page.files]
    assert [f.requires_python for f in parsed.files] == [f.requires_python for f in page.files]
    assert [f.yanked for f in parsed.files] == [f.yanked for f in page.files]
    assert parsed.files[0].url == "http://proxy/packages/demo-pkg/demo_pkg-1.0-py3-none-any.whl"
    assert parsed.files[0].core_metadata == {"sha256": "b" * 64}


def test_upstream_json_with_relative_urls_and_legacy_metadata_key() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.0", "_last-serial": 42},
            "name": "x",
            "files": [
                {
                    "filename": "x-1.0-py3-none-any.whl",
                    "url": "../../files/x-1.0-py3-none-any.whl",
                    "hashes": {"SHA256": "D" * 64},
                    "data-dist-info-metadata": {"sha256": "e" * 64},
                    "yanked": True,
                }
            ],
        }
    ).encode()
    page = parse_project_json(body, "https://up.example/simple/x/", NormalizedName("x"))
    (dist,) = page.files
    assert dist.url == "https://up.example/files/x-1.0-py3-none-any.whl"
    assert dist.sha256 == "d" * 64
    assert dist.core_metadata == {"sha256": "e" * 64}
    assert dist.yanked is True
    assert page.serial == 42
    assert page.versions == {"1.0"}


def test_upstream_html_without_hashes_or_metadata() -> None:
    body = b"""<html><body>
    <a href="/p/x-1.0.tar.gz">x-1.0.tar.gz</a>
    <a href="https://cdn.example/x-2.0-py3-none-any.whl#md5=abc" data-yanked>x</a>
    <a href="x-3.0-py3-none-any.whl#sha256=FF" data-core-metadata="true"
       data-requires-python="&gt;=3.9">x-3.0-py3-none-any.whl</a>
    </body></html>"""
    page = parse_project_html(body, "https://up.example/simple/x/", NormalizedName("x"))
    first, second, third = page.files
    assert first.url == "https://up.example/p/x-1.0.tar.gz" and first.hashes == {}
    assert second.hashes == {"md5": "abc"} and second.yanked is True
    assert third.url == "https://up.example/simple/x/x-3.0-py3-none-any.whl"
    assert third.sha256 == "ff" and third.core_metadata is True
    assert third.requires_python == ">=3.9"
    assert page.versions == {"1.0", "2.0", "3.0"}


def test_unexpected_upstream_content_type_is_refused() -> None:
    with pytest.raises(NotAnIndexPage, match="Content-Type"):
        parse_project(b"{}", "application/xml", "http://u/", NormalizedName("x"))
    with pytest.raises(NotAnIndexPage, match="not a JSON object"):
        parse_project(
            b"[]", "application/vnd.pypi.simple.v1+json", "http://u/", NormalizedName("x")
        )


_FILE = {"filename": "x-1.0.tar.gz", "url": "x-1.0.tar.gz", "hashes": {"sha256": "ab"}}


def _json(files: list[Any] | None = None, **top: Any) -> bytes:
    doc: dict[str, Any] = {"meta": {"api-version": "1.1"}, "name": "x", "files": files or []}
    doc.update(top)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "invalid JSON"),
        (b"\xff\xfe{", "invalid JSON"),
        (b"[" * 100_000, "invalid JSON"),  # too deep for the json module
        (b'{"message": "maintenance"}', "no meta"),
        (_json(meta={"api-version": "2.0"}), "not 1.x"),
        (_json(meta={}), "no api-version"),
        (_json(files=None).replace(b'"files": []', b'"files": {}'), "no files"),
        (_json(name="other"), "another project"),
        (_json(["x"]), r"files\[0\] is not an object"),
        (_json([{**_FILE, "hashes": "x"}]), r"files\[0\].hashes"),
        (_json([{**_FILE, "hashes": {"sha256": 5}}]), r"files\[0\].hashes"),
        (_json([{**_FILE, "size": "12"}]), r"files\[0\].size"),
        (_json([{**_FILE, "size": True}]), r"files\[0\].size"),
        (_json([{**_FILE, "yanked": 3}]), r"files\[0\].yanked"),
        (_json([{**_FILE, "requires-python": [">=3"]}]), "requires-python"),
        (_json([{**_FILE, "core-metadata": "yes"}]), "core-metadata"),
        (_json([{**_FILE, "filename": "../x-1.0.tar.gz"}]), "filename"),
        (_json([{**_FILE, "filename": "x-\ud800.tar.gz"}]), "filename"),  # lone surrogate
        (_json([{"url": "x"}]), "filename"),
        (_json(versions="1.0"), "versions"),
    ],
)
def test_json_that_is_not_a_pep691_page_is_an_upstream_fault(body: bytes, why: str) -> None:
    with pytest.raises(NotAnIndexPage, match=why):
        parse_project_json(body, "https://u/simple/x/", NormalizedName("x"))


def test_json_nulls_count_as_absent_and_a_string_serial_is_read() -> None:
    entry = {**_FILE, "size": None, "upload-time": None, "requires-python": None}
    entry |= {"yanked": None, "core-metadata": None, "hashes": None}
    page = parse_project_json(
        _json([entry], meta={"api-version": "1.1", "_last-serial": "42"}),
        "https://u/simple/x/",
        NormalizedName("x"),
    )
    (dist,) = page.files
    assert (dist.size, dist.upload_time, dist.requires_python) == (None, None, None)
    assert (dist.yanked, dist.core_metadata, dist.hashes) == (False, False, {})
    assert page.serial == 42


@pytest.mark.parametrize(
    "body",
    [
        b"<html><head><title>Down for maintenance</title></head><body>Back soon</body></html>",
        b'<html><body><a href="https://status.example/">status</a> <a href="../">up</a></body>',
        b"",
        b"\x00\x01garbage",
        b'<html><head><meta name="pypi:repository-version" content="2.0"></head></html>',
        b"<html><body><!-- <a href='x-1.0.tar.gz'>x</a> --></body></html>",
        b"<html><script>var a = '<a href=\"x-1.0.tar.gz\">';</script></html>",
    ],
)
def test_html_that_is_not_a_project_page_is_an_upstream_fault(body: bytes) -> None:
    with pytest.raises(NotAnIndexPage):
        parse_project_html(body, "https://u/simple/x/", NormalizedName("x"))


@pytest.mark.parametrize(
    ("body", "count"),
    [
        # UP-05: every file removed or quarantined; the page says what it is.
        (b'<html><head><meta name="pypi:repository-version" content="1.4"></head></html>', 0),
        (b"<html><head><title>Links for X</title></head><body></body></html>", 0),
        # No declaration, but links to distribution files (a plain PEP 503 server).
        (b'<a href="x-1.0.tar.gz">x</a><a href="x-1.0-py3-none-any.whl">w</a>', 2),
    ],
)
def test_html_project_pages_with_and_without_files_are_pages(body: bytes, count: int) -> None:
    page = parse_project_html(body, "https://u/simple/x/", NormalizedName("x"))
    assert len(page.files) == count


def _sized(size: int | None) -> DistFile:
    return DistFile("x-1.0.tar.gz", "https://u/x-1.0.tar.gz", Origin.UPSTREAM, size=size)


def test_json_rendering_omits_unknowns_and_declares_the_version_it_satisfies() -> None:
    """Issue 8: uv refuses ``"size": null``; size is mandatory from api-version 1.1 (J-04)."""
    unknown = ProjectPage(NormalizedName("x"), (_sized(None),), frozenset({"1.0"}))
    doc = json.loads(render_project(unknown, SimpleFormat.JSON))
    assert doc["meta"]["api-version"] == "1.0"
    (entry,) = doc["files"]
    assert set(entry) == {"filename", "url", "hashes", "yanked"}
    assert None not in entry.values()
    known = ProjectPage(NormalizedName("x"), (_sized(7),), frozenset({"1.0"}))
    doc = json.loads(render_project(known, SimpleFormat.JSON))
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["files"][0]["size"] == 7
    mixed = ProjectPage(NormalizedName("x"), (_sized(7), _sized(None)), frozenset({"1.0"}))
    assert json.loads(render_project(mixed, SimpleFormat.JSON))["meta"]["api-version"] == "1.0"


@pytest.mark.parametrize("fmt", [SimpleFormat.JSON, SimpleFormat.TEXT_HTML])
def test_root_pieces_make_a_page_whose_names_parse_back(fmt: SimpleFormat) -> None:
    names = [NormalizedName(n) for n in ("a", "b-c", "zz9")]
    body = render_root_header(fmt) + b"".join(
        render_root_entry(n, fmt, i == 0) for i, n in enumerate(names)
    )
    body += render_root_footer(fmt)
    if fmt.is_json:
        assert json.loads(body)["projects"] == [{"name": n} for n in names]
    assert list(parse_root_names(body.decode())) == names


def test_root_name_parser_reads_pypi_style_pages() -> None:
    pypi_html = '<a href="/simple/foo-bar/">Foo_Bar</a>\n<a href="/simple/x/">x</a>'
    assert list(parse_root_names(pypi_html)) == ["Foo_Bar", "x"]
    pypi_json = '{"meta":{"_last-serial":1},"projects":[{"_last-serial":3,"name":"A.b"}]}'
    assert list(parse_root_names(pypi_json)) == ["A.b"]


@pytest.mark.parametrize("fmt", [SimpleFormat.JSON, SimpleFormat.TEXT_HTML])
def test_a_parse_stops_when_told_the_caller_is_gone(fmt: SimpleFormat) -> None:
    """A server shutting down cannot kill the parsing thread; the parser stops itself."""
    files = tuple(_sized(1) for _ in range(10_000))
    body = render_project(ProjectPage(NormalizedName("x"), files), fmt)
    url, name = "https://u/simple/x/", NormalizedName("x")
    assert len(parse_project(body, fmt.content_type, url, name).files) == 10_000
    with pytest.raises(NotAnIndexPage, match="cancelled"):
        parse_project(body, fmt.content_type, url, name, cancelled=lambda: True)
