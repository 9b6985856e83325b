"""The fake upstream speaks PEP 503/691 like PyPI, and each fault knob does what it says."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import pytest

from tests.fakepypi import HTML_TYPE, JSON_TYPE, FakePyPI, choose_format
from tests.wheelmaker import wheel_metadata

if TYPE_CHECKING:
    from collections.abc import Mapping

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
UPLOAD_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str, headers: Mapping[str, str] | None = None, method: str = "GET", timeout: float = 10
) -> Reply:
    """One request, no redirect following (so 301s can be asserted)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)
        elif tag == "meta":
            self.meta = dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.anchors.append((self._open, data))
            self._open = None


def anchors(body: bytes) -> Anchors:
    parser = Anchors()
    parser.feed(body.decode())
    return parser


def knobs(fake: FakePyPI) -> tuple[object, ...]:
    return (fake.status, fake.delay, fake.html_only)


def publish_demo(fake: FakePyPI) -> None:
    fake.add_wheel("Demo.Pkg", "1.0", requires_python=">=3.8,<4", requires_dist=["dep"])
    fake.add_wheel("Demo.Pkg", "1.1", yanked="broken build")
    fake.add_sdist("Demo.Pkg", "1.0")


# -- content negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, JSON_TYPE),
        (UV_ACCEPT, JSON_TYPE),
        ("application/vnd.pypi.simple.v1+json, */*;q=0.1", JSON_TYPE),  # poetry
        ("application/vnd.pypi.simple.latest+json", JSON_TYPE),
        ("text/html, application/vnd.pypi.simple.v1+json", JSON_TYPE),  # tie: JSON wins
        ("application/vnd.pypi.simple.v1+json;q=0.5, text/html", "text/html"),
        ("application/vnd.pypi.simple.v1+html", HTML_TYPE),
        ("application/vnd.pypi.simple.v1+json;q=0, text/html", "text/html"),
        ("*/*", "text/html"),
        (None, "text/html"),
        ("application/json", "text/html"),
        ("text/html", "text/html"),
    ],
)
def test_choose_format_follows_pep691_like_pypi(accept: str | None, expected: str) -> None:
    assert choose_format(accept) == expected


def test_format_query_parameter_overrides_accept() -> None:
    assert choose_format("text/html", JSON_TYPE) == JSON_TYPE


# -- pages --------------------------------------------------------------------------------------


def test_json_project_page_is_pep691_v1_1(fake_pypi: FakePyPI) -> None:
    publish_demo(fake_pypi)
    reply = fetch(fake_pypi.simple_url + "demo-pkg/", {"Accept": PIP_ACCEPT})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON_TYPE
    doc = reply.json()
    assert doc["meta"] == {
        "api-version": "1.1",
        "_last-serial": fake_pypi.project_serial("Demo.Pkg"),
    }
    assert doc["name"] == "demo-pkg"
    assert doc["versions"] == ["1.0", "1.1"]
    files = {f["filename"]: f for f in doc["files"]}
    assert set(files) == {
        "demo_pkg-1.0-py3-none-any.whl",
        "demo_pkg-1.1-py3-none-any.whl",
        "demo_pkg-1.0.tar.gz",
    }
    wheel = files["demo_pkg-1.0-py3-none-any.whl"]
    served = fetch(wheel["url"]).body
    assert wheel["hashes"] == {"sha256": hashlib.sha256(served).hexdigest()}
    assert wheel["size"] == len(served)
    assert wheel["requires-python"] == ">=3.8,<4"
    assert wheel["yanked"] is False
    assert UPLOAD_TIME.fullmatch(wheel["upload-time"])
    metadata = fetch(wheel["url"] + ".metadata").body
    assert wheel["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
    assert b"Requires-Dist: dep" in metadata
    assert "dist-info-metadata" not in wheel  # PEP 714: never in JSON
    assert files["demo_pkg-1.1-py3-none-any.whl"]["yanked"] == "broken build"
    sdist = files["demo_pkg-1.0.tar.gz"]
    assert sdist["core-metadata"] is False
    assert sdist["requires-python"] is None


def test_html_project_page_is_pep503_with_escaped_attributes(fake_pypi: FakePyPI) -> None:
    publish_demo(fake_pypi)
    reply = fetch(fake_pypi.simple_url + "demo-pkg/", {"Accept": "text/html"})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.body.startswith(b"<!DOCTYPE html>")
    assert b'data-requires-python="&gt;=3.8,&lt;4"' in reply.body
    page = anchors(reply.body)
    assert page.meta == {"name": "pypi:repository-version", "content": "1.1"}
    by_name = {text: attrs for attrs, text in page.anchors}
    assert set(by_name) == {
        "demo_pkg-1.0-py3-none-any.whl",
        "demo_pkg-1.1-py3-none-any.whl",
        "demo_pkg-1.0.tar.gz",
    }
    for text, attrs in by_name.items():
        href = attrs["href"]
        assert href is not None
        url, _, fragment = href.partition("#")
        assert url.rsplit("/", 1)[1] == text
        served = fetch(url).body
        assert fragment == f"sha256={hashlib.sha256(served).hexdigest()}"
    wheel = by_name["demo_pkg-1.0-py3-none-any.whl"]
    assert wheel["data-requires-python"] == ">=3.8,<4"
    assert "data-yanked" not in wheel
    meta_url = str(wheel["href"]).partition("#")[0] + ".metadata"
    meta_hash = hashlib.sha256(fetch(meta_url).body).hexdigest()
    assert wheel["data-core-metadata"] == wheel["data-dist-info-metadata"] == f"sha256={meta_hash}"
    assert by_name["demo_pkg-1.1-py3-none-any.whl"]["data-yanked"] == "broken build"
    assert "data-core-metadata" not in by_name["demo_pkg-1.0.tar.gz"]


def test_v1_html_is_answered_with_its_own_content_type(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    reply = fetch(fake_pypi.simple_url + "demo/", {"Accept": HTML_TYPE})
    assert reply.headers["Content-Type"] == HTML_TYPE + "; charset=utf-8"


def test_names_redirect_to_normalised_url_and_unknown_is_404(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("Demo.Pkg", "1.0")
    moved = fetch(fake_pypi.simple_url + "Demo.Pkg/?x=1")
    assert (moved.status, moved.headers["Location"]) == (301, "/simple/demo-pkg/?x=1")
    no_slash = fetch(fake_pypi.simple_url + "demo-pkg")
    assert (no_slash.status, no_slash.headers["Location"]) == (301, "/simple/demo-pkg/")
    assert fetch(fake_pypi.simple_url + "nope/").status == 404


def test_root_lists_projects_in_json_and_html_plus_synthetic_names(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("Demo.Pkg", "1.0")
    fake_pypi.add_wheel("other", "2.0")
    fake_pypi.root_names = 3
    doc = fetch(fake_pypi.simple_url, {"Accept": UV_ACCEPT}).json()
    names = [p["name"] for p in doc["projects"]]
    assert names == [
        "Demo.Pkg",
        "other",
        "synthetic-000001",
        "synthetic-000002",
        "synthetic-000003",
    ]
    assert doc["meta"] == {"api-version": "1.1", "_last-serial": fake_pypi.serial}
    page = anchors(fetch(fake_pypi.simple_url).body)
    hrefs = [attrs["href"] for attrs, _text in page.anchors]
    assert hrefs[:2] == ["/simple/demo-pkg/", "/simple/other/"]
    assert len(hrefs) == 5


def test_etag_gives_304_and_changes_with_the_project(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    url = fake_pypi.simple_url + "demo/"
    first = fetch(url, {"Accept": PIP_ACCEPT})
    etag = first.headers["ETag"]
    serial = int(first.headers["X-PyPI-Last-Serial"])
    assert etag.startswith('"')
    assert first.headers["Vary"] == "Accept"
    not_modified = fetch(url, {"Accept": PIP_ACCEPT, "If-None-Match": etag})
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.headers["ETag"] == etag
    assert "Content-Type" not in not_modified.headers
    html_etag = fetch(url, {"Accept": "text/html"}).headers["ETag"]
    assert html_etag != etag

    fake_pypi.add_wheel("demo", "1.1")
    changed = fetch(url, {"Accept": PIP_ACCEPT, "If-None-Match": etag})
    assert changed.status == 200
    assert changed.headers["ETag"] != etag
    assert int(changed.headers["X-PyPI-Last-Serial"]) > serial


def test_readding_identical_file_keeps_serial_and_yanking_bumps_it(fake_pypi: FakePyPI) -> None:
    path = fake_pypi.add_wheel("demo", "1.0")
    serial = fake_pypi.project_serial("demo")
    fake_pypi.add_dist(path)
    assert fake_pypi.project_serial("demo") == serial
    fake_pypi.set_yanked(path.name, "oops")
    assert fake_pypi.project_serial("demo") > serial
    doc = fetch(fake_pypi.simple_url + "demo/", {"Accept": PIP_ACCEPT}).json()
    assert doc["files"][0]["yanked"] == "oops"
    fake_pypi.remove_dist(path.name)
    assert fetch(fake_pypi.simple_url + "demo/", {"Accept": PIP_ACCEPT}).json()["files"] == []


# -- files --------------------------------------------------------------------------------------


def test_files_and_metadata_are_served_with_length_and_head(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    sdist = fake_pypi.add_sdist("demo", "1.0")
    url = fake_pypi.file_url(wheel.name)
    got = fetch(url)
    assert got.status == 200
    assert got.body == wheel.read_bytes()
    assert got.headers["Content-Type"] == "application/octet-stream"
    head = fetch(url, method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(wheel.stat().st_size)
    assert fetch(url + ".metadata").body == wheel_metadata(wheel)
    assert fetch(fake_pypi.file_url(sdist.name) + ".metadata").status == 404
    assert fetch(url.replace("demo-1.0", "demo-9.9")).status == 404


# -- knobs --------------------------------------------------------------------------------------


def test_status_knob_forces_every_answer_or_by_path_prefix(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.status = 503
    assert fetch(fake_pypi.simple_url + "demo/").status == 503
    assert fetch(fake_pypi.file_url(wheel.name)).status == 503
    fake_pypi.status = {"/simple/": 500, "/simple/demo/": 404, "/files/": 502}
    assert fetch(fake_pypi.simple_url).status == 500
    assert fetch(fake_pypi.simple_url + "demo/").status == 404  # longest prefix wins
    assert fetch(fake_pypi.file_url(wheel.name)).status == 502
    fake_pypi.status = {"/files/": 502}
    assert fetch(fake_pypi.simple_url + "demo/").status == 200


def test_delay_knob_slows_every_answer(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.delay = 0.3
    started = time.monotonic()
    assert fetch(fake_pypi.simple_url + "demo/").status == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(TimeoutError):
        fetch(fake_pypi.simple_url + "demo/", timeout=0.1)


def test_truncate_files_sends_half_the_promised_bytes(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.truncate_files = True
    with pytest.raises(http.client.IncompleteRead) as caught:
        fetch(fake_pypi.file_url(wheel.name))
    assert len(caught.value.partial) == wheel.stat().st_size // 2
    head = fetch(fake_pypi.file_url(wheel.name), method="HEAD")
    assert head.headers["Content-Length"] == str(wheel.stat().st_size)
    assert fetch(fake_pypi.file_url(wheel.name) + ".metadata").status == 200


def test_wrong_hash_serves_corrupt_bytes_of_the_right_size(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    page = fetch(fake_pypi.simple_url + "demo/", {"Accept": PIP_ACCEPT}).json()
    fake_pypi.wrong_hash = True
    served = fetch(fake_pypi.file_url(wheel.name)).body
    assert len(served) == wheel.stat().st_size
    assert hashlib.sha256(served).hexdigest() != page["files"][0]["hashes"]["sha256"]
    assert fetch(fake_pypi.simple_url + "demo/", {"Accept": PIP_ACCEPT}).json() == page


def test_no_etag_knob_removes_etag_and_304(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    etag = fetch(fake_pypi.simple_url + "demo/").headers["ETag"]
    fake_pypi.no_etag = True
    reply = fetch(fake_pypi.simple_url + "demo/", {"If-None-Match": etag})
    assert reply.status == 200
    assert "ETag" not in reply.headers


def test_html_only_ignores_accept_and_strips_headers(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.html_only = True
    for url in (fake_pypi.simple_url, fake_pypi.simple_url + "demo/"):
        reply = fetch(url, {"Accept": JSON_TYPE})
        assert reply.status == 200
        assert reply.headers.get_content_type() == "text/html"
        for header in ("ETag", "X-PyPI-Last-Serial", "Vary", "Cache-Control"):
            assert header not in reply.headers
        assert reply.body.startswith(b"<!DOCTYPE html>")


def test_metadata_404_keeps_advertising_core_metadata(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.metadata_404 = True
    doc = fetch(fake_pypi.simple_url + "demo/", {"Accept": PIP_ACCEPT}).json()
    assert doc["files"][0]["core-metadata"]
    assert fetch(fake_pypi.file_url(wheel.name) + ".metadata").status == 404
    assert fetch(fake_pypi.file_url(wheel.name)).status == 200


def test_relative_urls_resolve_against_the_page(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.relative_urls = True
    page_url = fake_pypi.simple_url + "demo/"
    href = fetch(page_url, {"Accept": PIP_ACCEPT}).json()["files"][0]["url"]
    assert href.startswith("../../files/")
    assert urljoin(page_url, href) == fake_pypi.file_url(wheel.name)


def test_raw_pages_answer_exactly_the_given_bytes(fake_pypi: FakePyPI) -> None:
    fake_pypi.raw_pages = {"down": ("text/plain", b"maintenance")}
    reply = fetch(fake_pypi.simple_url + "down/", {"Accept": PIP_ACCEPT})
    assert (reply.status, reply.body) == (200, b"maintenance")
    assert reply.headers["Content-Type"] == "text/plain"


def test_huge_pages_stream_that_many_bytes_of_anchors_without_length(fake_pypi: FakePyPI) -> None:
    fake_pypi.huge_pages = {"huge": 300_000}
    reply = fetch(fake_pypi.simple_url + "huge/")
    assert reply.status == 200 and len(reply.body) == 300_000
    assert "Content-Length" not in reply.headers
    assert b'<a href="/files/' in reply.body and b"Links for huge" in reply.body


def test_reset_clears_projects_knobs_and_log(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.status, fake_pypi.delay, fake_pypi.html_only = 500, 0.1, True
    fetch(fake_pypi.simple_url)
    serial = fake_pypi.serial
    fake_pypi.reset()
    assert knobs(fake_pypi) == (None, 0.0, False)
    assert fake_pypi.requests == []
    assert fake_pypi.serial > serial  # never goes backwards, even across tests
    assert fetch(fake_pypi.simple_url + "demo/").status == 404


# -- request log and lifecycle ------------------------------------------------------------------


def test_request_log_records_method_path_query_and_headers(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.status = 500  # logged even when a knob answers
    fetch(fake_pypi.simple_url + "demo/?format=x", {"Accept": UV_ACCEPT, "X-Test": "1"})
    fake_pypi.status = None
    fetch(fake_pypi.file_url(wheel.name), method="HEAD")
    assert fake_pypi.paths() == ["/simple/demo/", urlsplit(fake_pypi.file_url(wheel.name)).path]
    first = fake_pypi.requests[0]
    assert (first.method, first.query) == ("GET", "format=x")
    assert first.headers["accept"] == UV_ACCEPT
    assert first.headers["X-TEST"] == "1"
    assert fake_pypi.count("/simple/") == 1
    assert fake_pypi.count("/files/", method="HEAD") == 1
    assert fake_pypi.count("/files/", method="GET") == 0
    assert len(fake_pypi.requests_for("/files/")) == 1
    fake_pypi.clear_log()
    assert fake_pypi.paths() == []


def test_stop_refuses_connections_and_restart_keeps_port_and_state(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0")
    url = fake_pypi.url
    fake_pypi.stop()
    assert not fake_pypi.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fake_pypi.port), timeout=2).close()
    fake_pypi.restart()
    assert fake_pypi.url == url
    assert fetch(fake_pypi.simple_url + "demo/").status == 200


def test_stop_does_not_wait_for_a_slow_request(fake_pypi: FakePyPI) -> None:
    fake_pypi.delay = 30
    conn = http.client.HTTPConnection(urlsplit(fake_pypi.url).netloc, timeout=10)
    conn.request("GET", "/simple/")
    time.sleep(0.2)  # let the request reach the delay
    started = time.monotonic()
    fake_pypi.stop()
    assert time.monotonic() - started < 5
    conn.close()
