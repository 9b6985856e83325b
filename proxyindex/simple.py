"""The simple repository API, pure: negotiation, rendering, parsing (PEP 503/592/629/658/691/700).

Nothing here does I/O. Upstream pages (JSON or HTML) are parsed into :class:`ProjectPage` and
every response body is rendered from that one model, escaped by construction.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from functools import lru_cache
from typing import Any, cast
from urllib.parse import quote, unquote, urljoin, urlsplit

import orjson
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from proxyindex.errors import NotAnIndexPage
from proxyindex.htmlscan import ScannedPage, scan_html
from proxyindex.models import DistFile, Origin, ProjectPage

__all__ = [
    "API_VERSION",
    "SimpleFormat",
    "body_etag",
    "dump_json",
    "json_api_version",
    "negotiate",
    "page_api_version",
    "parse_project_html",
    "parse_project_json",
    "parse_root_entries",
    "parse_root_names",
    "project_versions",
    "render_project",
    "render_root_entry",
    "render_root_footer",
    "render_root_header",
    "sorted_versions",
    "version_key",
    "version_of",
]

# 1.1: size, upload-time and versions (PEP 700) are emitted. A project page declares what it
# really has (``page_api_version``, J-07): 1.3 with provenance (PEP 740), 1.4 with a
# project-status (PEP 792), 1.0 in JSON with a file of unknown size (size is required from 1.1).
API_VERSION = "1.1"

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"


class SimpleFormat(Enum):
    """A response format; ``value`` is the exact Content-Type media type (CN-07)."""

    JSON = JSON_V1
    HTML = HTML_V1
    TEXT_HTML = TEXT_HTML

    @property
    def content_type(self) -> str:
        return f"{self.value}; charset=utf-8" if self is not SimpleFormat.JSON else self.value

    @property
    def is_json(self) -> bool:
        return self is SimpleFormat.JSON


# Tie-break order: the most expressive format first (CN-02).
_PREFERENCE = (SimpleFormat.JSON, SimpleFormat.HTML, SimpleFormat.TEXT_HTML)
_LATEST = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}


def body_etag(body: bytes) -> str:
    """The strong ETag of a body we render (pages, JSON, metadata): its sha256, shortened."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def _parse_accept(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        if "/" not in media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((_LATEST.get(media, media), q))
    return ranges


@lru_cache(maxsize=256)
def negotiate(accept: str | None, format_param: str | None = None) -> SimpleFormat:
    """Pick the response format for an ``Accept`` header (CN-02..CN-06).

    Only types named explicitly count as a request for them; wildcards, a missing header and
    anything unmatched get HTML, as PyPI does (CN-05: never 406 or 300). Cached: clients send a
    handful of distinct strings.
    """
    if format_param:
        wanted = _LATEST.get(format_param.strip().lower(), format_param.strip().lower())
        for fmt in _PREFERENCE:
            if fmt.value == wanted:
                return fmt
    ranges = _parse_accept(accept or "*/*")
    explicit = {media: q for media, q in ranges if media in {f.value for f in _PREFERENCE}}
    best = max(explicit.values(), default=0.0)
    if best > 0:
        for fmt in _PREFERENCE:
            if explicit.get(fmt.value) == best:
                return fmt
    # Nothing named with q>0: HTML, text/html unless the client refused it by name (CN-05).
    if explicit.get(TEXT_HTML, 1.0) == 0 and explicit.get(HTML_V1, 1.0) > 0:
        return SimpleFormat.HTML
    return SimpleFormat.TEXT_HTML


@lru_cache(maxsize=16384)
def parsed_version(text: str) -> Version | None:
    """``Version(text)``, or None if it is not one. Shared by filename parsing and the sort
    of a page's versions: a PyPI page has a wheel or more and an sdist per version, and
    each was parsed again (botocore, 4,990 files: version_of 32 ms of CPU cold, now ~12)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


@lru_cache(maxsize=1024)
def _wheel_name_ok(name_part: str) -> bool:
    """Whether packaging accepts ``name_part`` as a wheel's name (its escaping rules): asked
    of packaging itself with a known-good rest, once per name."""
    try:
        parse_wheel_filename(f"{name_part}-0-py3-none-any.whl")
    except (InvalidWheelFilename, InvalidVersion):
        return False
    return True


def version_of(filename: str) -> str | None:
    """The version a distribution filename carries, or None if it parses as neither kind.

    Exactly what ``parse_wheel_filename`` / ``parse_sdist_filename`` say of the version,
    without their per-file work that does not decide it (tags, the name's normalisation):
    a wheel's name is checked once per name, each version parsed once (``parsed_version``).
    """
    version = release_version(filename)
    return None if version is None else str(version)


def release_version(filename: str) -> Version | None:
    """``version_of`` as a ``Version`` (the one cached per version string), for callers that
    compare versions: converting to text and back cost fetch-ahead half its time on a
    5,000-file page."""
    try:
        if filename.endswith(".whl"):
            parts = filename.split("-")
            if len(parts) == 6:  # a build tag: rare, parse it whole
                return parse_wheel_filename(filename)[1]
            if len(parts) != 5 or not all(parts[2:]) or not _wheel_name_ok(parts[0]):
                return None
            return parsed_version(parts[1])
        if filename.endswith(".tar.gz"):
            stem = filename[:-7]
        elif filename.endswith(".zip"):
            stem = filename[:-4]
        else:
            return None
        # parse_sdist_filename's rule: the version is what follows the last dash, the name
        # (whatever it is) must not be empty.
        name_part, sep, version_part = stem.rpartition("-")
        if not sep or not name_part:
            return None
        return parsed_version(version_part)
    except (InvalidWheelFilename, InvalidVersion):
        return None


def version_key(version: str) -> tuple[int, Version | str]:
    parsed = parsed_version(version)
    return (0, version) if parsed is None else (1, parsed)


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """Oldest first, strings that are no version before all (``version_key``'s order): the
    versions sorted by ``Version`` alone, so a comparison is one call, not a tuple's two."""
    valid: list[tuple[Version, str]] = []
    invalid: list[str] = []
    for text in versions:
        parsed = parsed_version(text)
        if parsed is None:
            invalid.append(text)
        else:
            valid.append((parsed, text))
    valid.sort(key=_first)
    return sorted(invalid) + [text for _parsed, text in valid]


def _first(pair: tuple[Version, str]) -> Version:
    return pair[0]


def project_versions(files: Iterable[DistFile], extra: Iterable[str] = ()) -> frozenset[str]:
    found = {v for f in files if (v := version_of(f.filename)) is not None}
    return frozenset(found.union(extra))


# --- rendering -------------------------------------------------------------------------------

_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def file_href(project: NormalizedName, filename: str, base_url: str) -> str:
    """Where clients fetch a file: always this server (F-07), filename last (F-01)."""
    # quote() leaves these alone; most filenames are only these (quote: 3 us a file).
    quoted = filename if _UNRESERVED.match(filename) else quote(filename, safe="")
    path = f"packages/{project}/{quoted}"
    return f"{base_url}/{path}" if base_url else f"../../{path}"


def _html_attrs(dist: DistFile) -> str:
    attrs = []
    if dist.requires_python:
        attrs.append(f' data-requires-python="{html.escape(dist.requires_python)}"')
    core_metadata = advertised_metadata(dist)
    if core_metadata:
        value = _core_metadata_attr(core_metadata)
        attrs.append(f' data-core-metadata="{value}" data-dist-info-metadata="{value}"')
    if dist.yanked is not False:
        reason = dist.yanked if isinstance(dist.yanked, str) else ""
        attrs.append(f' data-yanked="{html.escape(reason)}"')
    if dist.provenance is not None:
        attrs.append(f' data-provenance="{html.escape(dist.provenance)}"')
    if dist.gpg_sig is not None:
        attrs.append(f' data-gpg-sig="{"true" if dist.gpg_sig else "false"}"')
    return "".join(attrs)


def advertised_metadata(dist: DistFile) -> Mapping[str, str] | bool:
    """What a page says of the file's ``.metadata`` (PEP 658): the upstream's own, else
    ``true`` for every upstream wheel, whose METADATA this server reads out of the wheel
    (``upstream.wheelmeta``; its hash is unknown until then: H-07, J-04). Never for an sdist
    (M-03)."""
    if dist.core_metadata:
        return dist.core_metadata
    return dist.origin is Origin.UPSTREAM and dist.filename.endswith(".whl")


def _core_metadata_attr(value: Mapping[str, str] | bool) -> str:
    if isinstance(value, Mapping) and "sha256" in value:
        return f"sha256={html.escape(value['sha256'])}"
    return "true"


def _status_meta(page: ProjectPage) -> list[str]:
    if page.status is None:
        return []
    tags = [f'    <meta name="pypi:project-status" content="{html.escape(page.status)}">']
    if page.status_reason:
        reason = html.escape(page.status_reason)
        tags.append(f'    <meta name="pypi:project-status-reason" content="{reason}">')
    return tags


def _render_html(page: ProjectPage, base_url: str) -> bytes:
    name = html.escape(page.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{page_api_version(page, False)}">',
        *_status_meta(page),
        f"    <title>Links for {name}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {name}</h1>",
    ]
    for dist in page.files:
        href = file_href(page.name, dist.filename, base_url)
        if dist.sha256:
            href += f"#sha256={dist.sha256}"
        lines.append(
            f'    <a href="{html.escape(href)}"{_html_attrs(dist)}>'
            f"{html.escape(dist.filename)}</a><br />"
        )
    lines += ["  </body>", "</html>"]
    if page.serial is not None:
        lines.append(f"<!--SERIAL {page.serial}-->")
    lines.append("")
    return "\n".join(lines).encode()


def _file_json(page: ProjectPage, dist: DistFile, base_url: str) -> dict[str, Any]:
    """What is unknown is left out, never ``null``: uv refuses ``"size": null`` ("invalid
    type: null, expected u64") and with it the whole page."""
    entry: dict[str, Any] = {
        "filename": dist.filename,
        "url": file_href(page.name, dist.filename, base_url),
        "hashes": dict(dist.hashes),
    }
    if dist.requires_python is not None:
        entry["requires-python"] = dist.requires_python
    if dist.size is not None:
        entry["size"] = dist.size
    if dist.upload_time is not None:
        entry["upload-time"] = dist.upload_time
    entry["yanked"] = dist.yanked
    core_metadata = advertised_metadata(dist)
    if core_metadata:
        entry["core-metadata"] = dict(core_metadata) if isinstance(core_metadata, Mapping) else True
    if dist.provenance is not None:
        entry["provenance"] = dist.provenance
    if dist.gpg_sig is not None:
        entry["gpg-sig"] = dist.gpg_sig
    return entry


def page_api_version(page: ProjectPage, is_json: bool) -> str:
    """The highest version whose fields the page really has (J-07). JSON: ``size`` is
    mandatory from 1.1 (J-04), so a page with a file of unknown size (an HTML-only upstream
    says none) declares 1.0 whatever else it has. Then 1.4 with a project-status, 1.3 with
    a provenance URL, else 1.1 (1.2's ``tracks`` and ``alternate-locations`` are never sent)."""
    if is_json and not all(f.size is not None for f in page.files):
        return "1.0"
    if page.status is not None:
        return "1.4"
    if any(f.provenance is not None for f in page.files):
        return "1.3"
    return API_VERSION


def json_api_version(page: ProjectPage) -> str:
    """The api-version of the page's JSON rendering."""
    return page_api_version(page, True)


def _render_json(page: ProjectPage, base_url: str) -> bytes:
    return dump_json(_json_body(page, base_url))


def _json_body(page: ProjectPage, base_url: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": json_api_version(page)}
    if page.serial is not None:
        meta["_last-serial"] = page.serial
    body: dict[str, Any] = {
        "meta": meta,
        "name": page.name,
        "files": [_file_json(page, dist, base_url) for dist in page.files],
        "versions": sorted_versions(page.versions),
    }
    if page.status is not None:
        status = {"status": page.status}
        if page.status_reason:
            status["reason"] = page.status_reason
        body["project-status"] = status
    return body


def dump_json(body: object) -> bytes:
    """Compact JSON (no spaces), as UTF-8. orjson: a 5,000-file page's files dump in 1 ms
    where ``json.dumps`` took 11-40; the stdlib only for what orjson refuses (integers
    beyond 64 bits, which a page's ``size`` or serial could carry, and lone surrogates,
    which a private file's name read from disk could)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


def render_project(page: ProjectPage, fmt: SimpleFormat, base_url: str = "") -> bytes:
    """A project detail page; ``base_url`` empty means relative file URLs (N-06)."""
    return _render_json(page, base_url) if fmt.is_json else _render_html(page, base_url)


def render_root_header(fmt: SimpleFormat) -> bytes:
    if fmt.is_json:
        return b'{"meta":{"api-version":"' + API_VERSION.encode() + b'"},"projects":['
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
    ).encode()


def render_root_entry(
    name: NormalizedName,
    fmt: SimpleFormat,
    first: bool,
    display: str | None = None,
    serial: int | None = None,
) -> bytes:
    """One project of the root list: its display name where known (``Django``: PEP 503's
    anchor text is the project's name), the normalised one otherwise, and in JSON its
    ``_last-serial`` where known (J-02). Names are valid project names (letters, digits,
    ``.``, ``_``, ``-``): nothing to escape."""
    shown = display or name
    if fmt.is_json:
        tail = b'"}' if serial is None else b'","_last-serial":' + str(serial).encode() + b"}"
        return (b'{"name":"' if first else b',{"name":"') + shown.encode() + tail
    return f'    <a href="{name}/">{shown}</a><br />\n'.encode()


def render_root_footer(fmt: SimpleFormat) -> bytes:
    return b"]}" if fmt.is_json else b"  </body>\n</html>\n"


# --- parsing upstream pages -------------------------------------------------------------------
#
# What counts as a project page (anything else is NotAnIndexPage, an upstream fault: the last
# good page is served stale and kept, or 502 with none):
# - JSON (any ``...json`` Content-Type): an object with ``meta.api-version`` "1.x" and a
#   ``files`` list whose entries carry the types PEP 691/700 give them (``filename``, ``url``
#   strings; ``hashes`` an object of strings; ``size`` an integer...). ``null`` for an optional
#   key counts as absent (older proxyindex versions emitted it); any other wrong type, a page
#   named for another project or text that cannot be UTF-8 makes the whole page a fault.
# - HTML (an ``...html`` Content-Type, or none): a page that says it is one, with
#   ``<meta name="pypi:repository-version" content="1.x">`` (PEP 629: PyPI, proxyindex and many
#   others) or the title "Links for <name>" (PEP 503's example; Pulp has only that), or one
#   that links at least one distribution file. Such a page with no anchors is an empty project
#   (its files were all removed or quarantined, UP-05); a page that does none of this (a
#   maintenance page, an error page, random bytes) is a fault.
# - Any other Content-Type is a fault.

_DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".egg")


def _not_a_page(name: str, why: str) -> NotAnIndexPage:
    return NotAnIndexPage(f"upstream answer for {name} is not a project page: {why}")


def _is_text(value: object) -> bool:
    """A str that can be written out as UTF-8 (JSON escapes may smuggle in lone surrogates)."""
    if not isinstance(value, str):
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


@lru_cache(maxsize=64)
def _origin(page_url: str) -> str | None:
    """``https://host:port`` of an http(s) URL with a path, else None."""
    scheme, sep, rest = page_url.partition("://")
    if not sep or scheme not in ("http", "https") or "/" not in rest:
        return None
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _absolute(page_url: str, url: str) -> str:
    # PyPI's file URLs are absolute, others' often "/path": skip urljoin's parsing where it
    # would change nothing (it was 1.2 s of 2.9 for ddtrace's page).
    if "/." not in url and "\\" not in url:
        if url.startswith(("https://", "http://")):
            return url
        if url.startswith("/") and not url.startswith("//") and (origin := _origin(page_url)):
            return origin + url
    return urljoin(page_url, url)


def _filename_from_url(url: str) -> str:
    path = url.partition("#")[0].partition("?")[0]
    if path.startswith(("https://", "http://")) and path.count("/") >= 3:
        return unquote(path.rsplit("/", 1)[-1])  # urlsplit costs 2 s on ddtrace's 46,724 links
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _check_api_version(version: object, name: str) -> None:
    """PEP 629: a client must refuse a major version it does not know."""
    if not _is_text(version):
        raise _not_a_page(name, "no api-version")
    assert isinstance(version, str)
    major, _, minor = version.strip().partition(".")
    if major != "1" or not (minor.isdigit() or not minor):
        raise _not_a_page(name, f"api-version {version[:20]!r} is not 1.x")


class _JsonFiles:
    """Typed reads of one PEP 691 file entry; the first wrong type faults the whole page."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, index: int, key: str) -> NotAnIndexPage:
        return _not_a_page(self.name, f"files[{index}].{key} has the wrong type")

    def text(self, raw: dict[str, Any], index: int, key: str, required: bool = False) -> str | None:
        value = raw.get(key)
        if value is None and not required:
            return None
        if not _is_text(value):
            raise self.fail(index, key)
        return str(value)

    def digests(self, raw: dict[str, Any], index: int, key: str) -> dict[str, str]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            _is_text(k) and _is_text(v) for k, v in value.items()
        ):
            raise self.fail(index, key)
        return {str(k).lower(): str(v).lower() for k, v in value.items()}

    def metadata(self, raw: dict[str, Any], index: int) -> dict[str, str] | bool:
        key = "core-metadata" if "core-metadata" in raw else "data-dist-info-metadata"
        value = raw.get(key)
        if value is None or isinstance(value, bool):
            return value is True
        return self.digests(raw, index, key)

    def size(self, raw: dict[str, Any], index: int) -> int | None:
        value = raw.get("size")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(index, "size")
        return value

    def flag(self, raw: dict[str, Any], index: int, key: str) -> bool | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(index, key)
        return value

    def yanked(self, raw: dict[str, Any], index: int) -> bool | str:
        value = raw.get("yanked")
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if not _is_text(value):
            raise self.fail(index, "yanked")
        return str(value) or True

    def dist(self, raw: dict[str, Any], index: int, page_url: str, origin: Origin) -> DistFile:
        """The entry as a file, every value's type checked: the reference for
        :func:`_fast_dist`, and what names the first wrong value."""
        filename = self.text(raw, index, "filename", required=True)
        url = self.text(raw, index, "url", required=True)
        assert filename is not None and url is not None
        if not filename or "/" in filename:
            raise self.fail(index, "filename")
        try:
            absolute = _absolute(page_url, url)
        except ValueError:
            raise self.fail(index, "url") from None
        return DistFile(
            filename=filename,
            location=absolute,
            origin=origin,
            hashes=self.digests(raw, index, "hashes"),
            requires_python=self.text(raw, index, "requires-python") or None,
            size=self.size(raw, index),
            upload_time=self.text(raw, index, "upload-time") or None,
            yanked=self.yanked(raw, index),
            core_metadata=self.metadata(raw, index),
            provenance=self.text(raw, index, "provenance") or None,
            gpg_sig=self.flag(raw, index, "gpg-sig"),
        )


_NOT_PLAIN = object()  # a value _fast_dist leaves to the checked reader


def _plain_text(value: object) -> object:
    """An ASCII str or None as itself; anything else _NOT_PLAIN."""
    if value is None or (type(value) is str and value.isascii()):
        return value
    return _NOT_PLAIN


def _plain_digests(value: object) -> dict[str, str] | None:
    """Lower-cased ``{algo: digest}`` of ASCII strings (or {} for None); None otherwise."""
    if value is None:
        return {}
    if type(value) is not dict:
        return None
    out = {}
    for key, digest in value.items():
        if type(key) is not str or type(digest) is not str or not (key + digest).isascii():
            return None
        out[key.lower()] = digest.lower()
    return out


def _plain_yanked(value: object) -> bool | str:
    """What :meth:`_JsonFiles.yanked` makes of a plain value (None, a bool, a str)."""
    if value is None:
        return False
    if type(value) is bool:
        return value
    return cast(str, value) or True


def _fast_dist(raw: dict[str, Any], page_url: str, origin: Origin) -> DistFile | None:
    """A file entry whose values all have their plain types (ASCII strings, ints, bools:
    every file of a PyPI page), as :meth:`_JsonFiles.dist` makes it, with a third of its
    calls; None for anything else, which the checked reader then takes (and faults).
    tests/test_coldpath.py checks the two agree."""
    get = raw.get
    filename, url = get("filename"), get("url")
    if (
        type(filename) is not str
        or type(url) is not str
        or not filename
        or "/" in filename
        or not (filename + url).isascii()
    ):
        return None
    hashes = _plain_digests(get("hashes"))
    requires_python = _plain_text(get("requires-python"))
    upload_time = _plain_text(get("upload-time"))
    provenance = _plain_text(get("provenance"))
    size, yanked, gpg_sig = get("size"), get("yanked"), get("gpg-sig")
    given = get("core-metadata" if "core-metadata" in raw else "data-dist-info-metadata")
    metadata = given is True if given is None or type(given) is bool else _plain_digests(given)
    if (
        hashes is None
        or metadata is None
        or requires_python is _NOT_PLAIN
        or upload_time is _NOT_PLAIN
        or provenance is _NOT_PLAIN
        or not (size is None or (type(size) is int and size >= 0))
        or not (yanked is None or type(yanked) is bool or _plain_text(yanked) is yanked)
        or not (gpg_sig is None or type(gpg_sig) is bool)
    ):
        return None
    try:
        absolute = _absolute(page_url, url)
    except ValueError:
        return None
    return DistFile(
        filename=filename,
        location=absolute,
        origin=origin,
        hashes=hashes,
        requires_python=cast(str | None, requires_python) or None,
        size=size,
        upload_time=cast(str | None, upload_time) or None,
        yanked=_plain_yanked(yanked),
        core_metadata=metadata,
        provenance=cast(str | None, provenance) or None,
        gpg_sig=gpg_sig,
    )


def parse_project_json(
    data: bytes | bytearray,
    page_url: str,
    name: NormalizedName,
    origin: Origin = Origin.UPSTREAM,
    cancelled: Callable[[], bool] | None = None,
) -> ProjectPage:
    """Parse a PEP 691 project page; file URLs are resolved against ``page_url``.

    Raises :class:`NotAnIndexPage` and nothing else, whatever ``data`` is.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _not_a_page(name, f"invalid JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise _not_a_page(name, "not a JSON object")
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise _not_a_page(name, "no meta object")
    _check_api_version(meta.get("api-version"), name)
    raw_files = doc.get("files")
    if not isinstance(raw_files, list):
        raise _not_a_page(name, "no files list")
    doc_name = doc.get("name")
    if doc_name is not None and (not _is_text(doc_name) or canonicalize_name(doc_name) != name):
        raise _not_a_page(name, "a page of another project")
    read = _JsonFiles(name)
    files = []
    for index, raw in enumerate(raw_files):
        if cancelled is not None and index % 4096 == 4095 and cancelled():
            raise _not_a_page(name, "parsing cancelled")
        if not isinstance(raw, dict):
            raise _not_a_page(name, f"files[{index}] is not an object")
        dist = _fast_dist(raw, page_url, origin)
        files.append(dist if dist is not None else read.dist(raw, index, page_url, origin))
    versions = doc.get("versions")
    if versions is None:
        versions = []
    if not isinstance(versions, list) or not all(_is_text(v) for v in versions):
        raise _not_a_page(name, "versions is not a list of strings")
    serial = meta.get("_last-serial")
    if isinstance(serial, str) and serial.isascii() and serial.isdigit() and len(serial) < 20:
        serial = int(serial)  # PyPI has sent it as a string
    status, reason = _project_status(doc.get("project-status"))
    return ProjectPage(
        name=name,
        files=tuple(files),
        versions=project_versions(files, versions),
        serial=serial if isinstance(serial, int) and not isinstance(serial, bool) else None,
        status=status,
        status_reason=reason,
    )


def _project_status(value: object) -> tuple[str | None, str | None]:
    """PEP 792's ``{"status": ..., "reason": ...}``; anything malformed is left out (the key
    is optional, so a page is not refused for it)."""
    if not isinstance(value, dict):
        return None, None
    status, reason = value.get("status"), value.get("reason")
    if not _is_text(status) or not status:
        return None, None
    assert isinstance(status, str)
    return status, reason if _is_text(reason) and reason else None


def _hashes_from_fragment(url: str) -> dict[str, str]:
    fragment = url.partition("#")[2]
    algo, sep, digest = fragment.partition("=")
    if sep and algo and digest and algo != "egg":
        return {algo.lower(): digest.lower()}
    return {}


def _metadata_from_attr(value: str | None) -> dict[str, str] | bool:
    if value is None or value.lower() == "false":
        return False
    algo, sep, digest = value.partition("=")
    return {algo.lower(): digest.lower()} if sep else True


def _is_index_page(scanned: ScannedPage, files: list[DistFile], name: NormalizedName) -> bool:
    if scanned.repository_version is not None:
        _check_api_version(scanned.repository_version, name)
        return True
    title = scanned.title or ""
    if title[:10].lower() == "links for " and canonicalize_name(title[10:].strip()) == name:
        return True
    return any(f.filename.lower().endswith(_DIST_SUFFIXES) for f in files)


def parse_project_html(
    data: bytes | bytearray,
    page_url: str,
    name: NormalizedName,
    origin: Origin = Origin.UPSTREAM,
    cancelled: Callable[[], bool] | None = None,
) -> ProjectPage:
    """Parse a PEP 503 project page into the same model as :func:`parse_project_json`.

    Raises :class:`NotAnIndexPage` and nothing else, whatever ``data`` is.
    """
    try:
        scanned = scan_html(data.decode("utf-8", "replace"), cancelled)
    except InterruptedError:
        raise _not_a_page(name, "parsing cancelled") from None
    files = []
    for index, attrs in enumerate(scanned.anchors):
        if cancelled is not None and index % 4096 == 4095 and cancelled():
            raise _not_a_page(name, "parsing cancelled")
        href = attrs.get("href")
        if not href:
            continue
        try:
            url = _absolute(page_url, href)
            filename = _filename_from_url(url)
        except ValueError:  # e.g. "http://[oops/": not a URL
            raise _not_a_page(name, f"a link that is no URL: {href[:80]!r}") from None
        if not filename:  # a link to a folder ("../"), not to a file
            continue
        yanked = attrs.get("data-yanked") if "data-yanked" in attrs else False
        metadata = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        files.append(
            DistFile(
                filename=filename,
                location=url.split("#", 1)[0],
                origin=origin,
                hashes=_hashes_from_fragment(url),
                requires_python=attrs.get("data-requires-python") or None,
                yanked=False if yanked is False else (yanked or True),
                core_metadata=_metadata_from_attr(metadata),
                provenance=attrs.get("data-provenance") or None,
                gpg_sig=_flag_from_attr(attrs.get("data-gpg-sig")),
            )
        )
    if not _is_index_page(scanned, files, name):
        raise _not_a_page(name, "no repository-version, no 'Links for' title, no file links")
    return ProjectPage(
        name=name,
        files=tuple(files),
        versions=project_versions(files),
        serial=scanned.serial,
        status=scanned.metas.get("pypi:project-status") or None,
        status_reason=scanned.metas.get("pypi:project-status-reason") or None,
    )


def _flag_from_attr(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


def parse_project(
    data: bytes | bytearray,
    content_type: str,
    page_url: str,
    name: NormalizedName,
    cancelled: Callable[[], bool] | None = None,
) -> ProjectPage:
    """Parse whichever format the upstream answered with, whatever we asked for (UP-07).

    Raises :class:`NotAnIndexPage` and nothing else; ``cancelled`` is polled while parsing
    (a server shutting down stops a big parse within a moment).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("json"):
        return parse_project_json(data, page_url, name, cancelled=cancelled)
    if media.endswith("html") or not media:
        return parse_project_html(data, page_url, name, cancelled=cancelled)
    raise _not_a_page(name, f"unexpected Content-Type {media[:60]!r}")


_ROOT_OBJECT = re.compile(r"\{([^{}]*)\}")
_ROOT_NAME = re.compile(r'"name"\s*:\s*"([^"\\]*)"')
_ROOT_SERIAL = re.compile(r'"_last-serial"\s*:\s*"?(\d{1,19})\b')


def parse_root_entries(chunk: str) -> Iterable[tuple[str, int | None]]:
    """(name as the upstream shows it, its ``_last-serial`` if given) of each project in a
    piece of an upstream root page, JSON or HTML; ``chunk`` ends at an entry boundary."""
    if '"name"' in chunk:
        for obj in _ROOT_OBJECT.finditer(chunk):
            body = obj.group(1)
            name = _ROOT_NAME.search(body)
            if name is None:
                continue
            serial = _ROOT_SERIAL.search(body)
            yield name.group(1), int(serial.group(1)) if serial else None
        return
    for shown in parse_root_names(chunk):
        yield shown, None


def parse_root_names(chunk: str) -> Iterable[str]:
    """Project names in a piece of an upstream root page, JSON or HTML.

    Used on a stream, so ``chunk`` must end at an entry boundary (see ``index.root``).
    """
    if '"name"' in chunk:
        for part in chunk.split('"name"')[1:]:
            start = part.find('"', part.find(":"))
            end = part.find('"', start + 1)
            if start != -1 and end != -1:
                yield part[start + 1 : end]
        return
    for part in chunk.split("<a ")[1:]:
        start = part.find(">")
        end = part.find("</a>", start)
        if start != -1 and end != -1:
            # A plain file server's directory listing shows "name/".
            yield html.unescape(part[start + 1 : end]).strip().rstrip("/")
