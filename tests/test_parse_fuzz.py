"""Generated input for the upstream page parsers (issue 7): whatever an upstream sends, they
return a page that renders, or raise NotAnIndexPage (an upstream fault: stale page or 502),
never anything else (a 500). And the linear HTML scanner finds what html.parser finds."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import NormalizedName

from proxyindex.errors import NotAnIndexPage
from proxyindex.htmlscan import scan_html
from proxyindex.models import ProjectPage
from proxyindex.simple import SimpleFormat, parse_project_html, parse_project_json, render_project

NAME = NormalizedName("demo")
PAGE_URL = "https://up.example/simple/demo/"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _renders_or_refuses(parse: Any, data: bytes) -> None:
    try:
        page: ProjectPage = parse(data, PAGE_URL, NAME)
    except NotAnIndexPage:
        return
    for fmt in (SimpleFormat.JSON, SimpleFormat.TEXT_HTML):
        body = render_project(page, fmt, "https://proxy.example")
        if fmt.is_json:
            assert None not in _leaves(json.loads(body))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


# --- HTML ------------------------------------------------------------------------------------

_HTML_PIECES = [
    "<a ",
    "<A HREF=",
    "href=",
    "href='",
    '"',
    "'",
    ">",
    "</a>",
    "<!--",
    "-->",
    "<!DOCTYPE html>",
    "<script>",
    "</script>",
    "<title>",
    "</title>",
    "Links for demo",
    '<meta name="pypi:repository-version" content="1.',
    "data-yanked",
    "data-core-metadata=",
    "data-requires-python=",
    "sha256=",
    "#",
    "&amp;",
    "&#x",
    "&gt;",
    "demo-1.0.tar.gz",
    "demo-1.0-py3-none-any.whl",
    "http://[",
    "//[",
    "https://cdn.example/",
    "../",
    "/",
    "=",
    " ",
    "\n",
    "\x00",
    "é",
    "<",
]
html_soup = st.lists(st.sampled_from(_HTML_PIECES) | st.text(max_size=5), max_size=60).map("".join)


@FUZZ
@given(st.binary(max_size=2000))
def test_html_parser_on_arbitrary_bytes(data: bytes) -> None:
    _renders_or_refuses(parse_project_html, data)


@FUZZ
@given(html_soup)
def test_html_parser_on_tag_soup(text: str) -> None:
    _renders_or_refuses(parse_project_html, text.encode("utf-8", "surrogatepass"))


_URL_PIECES = ["http://", "https://", "//", "[", "]", "/", "../", ".", "#", "?", "%", "%2F", ":"]
url_soup = st.lists(st.sampled_from(_URL_PIECES) | st.text(max_size=4), max_size=8).map("".join)
soup_anchor = st.tuples(
    url_soup, st.sampled_from(["", " data-yanked", ' data-core-metadata="sha256=x"'])
).map(lambda pair: f'<a href="{html.escape(pair[0])}"{pair[1]}>x</a>')


@FUZZ
@given(st.lists(soup_anchor, max_size=5), st.booleans())
def test_html_parser_on_links_of_any_shape(anchors: list[str], declared: bool) -> None:
    meta = '<meta name="pypi:repository-version" content="1.0">' if declared else ""
    page = f"<html><head>{meta}</head><body>{''.join(anchors)}</body></html>"
    _renders_or_refuses(parse_project_html, page.encode("utf-8", "surrogatepass"))


# --- JSON ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "sha256", "1.0", "demo-1.0.tar.gz", "../x", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_FILE_KEYS = [
    "filename",
    "url",
    "hashes",
    "requires-python",
    "size",
    "upload-time",
    "yanked",
    "core-metadata",
    "data-dist-info-metadata",
]
good_file = st.fixed_dictionaries(
    {
        "filename": st.sampled_from(["demo-1.0.tar.gz", "demo-2.0-py3-none-any.whl"]),
        "url": st.sampled_from(["demo-1.0.tar.gz", "https://cdn.example/f", "/f/x"]),
        "hashes": st.just({"sha256": "ab"}),
    }
)
valid_meta = st.fixed_dictionaries(
    {"api-version": st.sampled_from(["1.0", "1.1", "1.4"])},
    optional={"_last-serial": json_values},
)
any_meta = st.one_of(
    json_values,
    st.fixed_dictionaries({"api-version": json_values | st.sampled_from(["2.0", "1", "1.x"])}),
)
# A well-formed file with one or two keys given values of any type.
fuzzed_file = st.tuples(
    good_file, st.dictionaries(st.sampled_from(_FILE_KEYS), json_values, min_size=1, max_size=2)
).map(lambda pair: {**pair[0], **pair[1]})
# Well-formed pages whose files carry values of any type (every field's checks)...
page_with_odd_files = st.fixed_dictionaries(
    {
        "meta": valid_meta,
        "name": st.just("demo"),
        "files": st.lists(fuzzed_file | good_file, min_size=1, max_size=4),
    },
    optional={"versions": json_values},
)
# ...and documents whose outer shape is anything.
odd_page = st.fixed_dictionaries(
    {"meta": any_meta | valid_meta, "files": json_values | st.lists(good_file, max_size=2)},
    optional={"name": st.sampled_from(["demo", "Demo", "other"]) | json_values},
)


@FUZZ
@given(st.binary(max_size=500))
def test_json_parser_on_arbitrary_bytes(data: bytes) -> None:
    _renders_or_refuses(parse_project_json, data)


@FUZZ
@given(page_with_odd_files)
def test_json_parser_on_files_with_values_of_any_type(doc: dict[str, Any]) -> None:
    _renders_or_refuses(parse_project_json, json.dumps(doc).encode())


@FUZZ
@given(odd_page)
def test_json_parser_on_documents_of_any_shape(doc: dict[str, Any]) -> None:
    _renders_or_refuses(parse_project_json, json.dumps(doc).encode())


# --- the scanner agrees with html.parser on well-formed pages --------------------------------


class _Reference(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


attr_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12)
anchor = st.fixed_dictionaries(
    {"href": attr_text},
    optional={
        "data-requires-python": attr_text,
        "data-yanked": st.none() | attr_text,
        "data-core-metadata": attr_text,
    },
)
filler = st.sampled_from(
    ["", "<br />\n", "<!-- a comment <a href='no'> -->", "<p>text &amp; more</p>", "\n"]
)


def _render_anchor(attrs: dict[str, str | None], quote: str) -> str:
    parts = []
    for key, value in attrs.items():
        if value is None:
            parts.append(key)
        else:
            parts.append(f"{key}={quote}{html.escape(value)}{quote}")
    return f"<a {' '.join(parts)}>{html.escape(attrs['href'] or '')}</a>"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(anchor, filler, st.sampled_from(['"', "'"])), max_size=8))
def test_the_scanner_finds_the_anchors_html_parser_finds(
    anchors: list[tuple[dict[str, str | None], str, str]],
) -> None:
    body = "<!DOCTYPE html><html><head><title>Links for demo</title></head><body>\n"
    body += "".join(_render_anchor(attrs, quote) + fill for attrs, fill, quote in anchors)
    body += "<script>var x = '<a href=\"no\">';</script></body></html>"
    reference = _Reference()
    reference.feed(body)
    reference.close()
    assert scan_html(body).anchors == reference.anchors


# --- unterminated markup is linear ------------------------------------------------------------


@pytest.mark.timeout(60)  # html.parser did not finish 200 KB of these in a minute
@pytest.mark.parametrize("unit", [b"<!--", b"<a href=x ", b'<a href="', b"<", b"<a", b"</"])
def test_unterminated_markup_megabytes_are_refused_promptly(unit: bytes) -> None:
    with pytest.raises(NotAnIndexPage):
        parse_project_html(unit * (2_000_000 // len(unit)), PAGE_URL, NAME)
