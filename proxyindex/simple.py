"""The simple repository API, pure: negotiation, rendering, parsing (PEP 503/592/629/658/691/700).

Nothing here does I/O. Upstream pages (JSON or HTML) are parsed into :class:`ProjectPage` and
every response body is rendered from that one model, escaped by construction.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from proxyindex.models import DistFile, Origin, ProjectPage

__all__ = [
    "API_VERSION",
    "SimpleFormat",
    "negotiate",
    "parse_project_html",
    "parse_project_json",
    "parse_root_names",
    "project_versions",
    "render_project",
    "render_root_entry",
    "render_root_footer",
    "render_root_header",
    "version_key",
    "version_of",
]

# 1.1: size, upload-time and versions (PEP 700) are emitted; nothing of 1.2-1.4 is (J-07).
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


def version_of(filename: str) -> str | None:
    """The version a distribution filename carries, or None if it parses as neither kind."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def project_versions(files: Iterable[DistFile], extra: Iterable[str] = ()) -> frozenset[str]:
    found = {v for f in files if (v := version_of(f.filename)) is not None}
    return frozenset(found.union(extra))


# --- rendering -------------------------------------------------------------------------------


def file_href(project: NormalizedName, filename: str, base_url: str) -> str:
    """Where clients fetch a file: always this server (F-07), filename last (F-01)."""
    path = f"packages/{project}/{quote(filename, safe='')}"
    return f"{base_url}/{path}" if base_url else f"../../{path}"


def _html_attrs(dist: DistFile) -> str:
    attrs = []
    if dist.requires_python:
        attrs.append(f' data-requires-python="{html.escape(dist.requires_python)}"')
    if dist.core_metadata:
        value = _core_metadata_attr(dist.core_metadata)
        attrs.append(f' data-core-metadata="{value}" data-dist-info-metadata="{value}"')
    if dist.yanked is not False:
        reason = dist.yanked if isinstance(dist.yanked, str) else ""
        attrs.append(f' data-yanked="{html.escape(reason)}"')
    return "".join(attrs)


def _core_metadata_attr(value: Mapping[str, str] | bool) -> str:
    if isinstance(value, Mapping) and "sha256" in value:
        return f"sha256={html.escape(value['sha256'])}"
    return "true"


def _render_html(page: ProjectPage, base_url: str) -> bytes:
    name = html.escape(page.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
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
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode()


def _file_json(page: ProjectPage, dist: DistFile, base_url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": dist.filename,
        "url": file_href(page.name, dist.filename, base_url),
        "hashes": dict(dist.hashes),
        "requires-python": dist.requires_python,
        "size": dist.size,
        "upload-time": dist.upload_time,
        "yanked": dist.yanked,
    }
    if dist.core_metadata:
        entry["core-metadata"] = (
            dict(dist.core_metadata) if isinstance(dist.core_metadata, Mapping) else True
        )
    return entry


def _render_json(page: ProjectPage, base_url: str) -> bytes:
    body = {
        "meta": {"api-version": API_VERSION},
        "name": page.name,
        "files": [_file_json(page, dist, base_url) for dist in page.files],
        "versions": sorted(page.versions, key=version_key),
    }
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


def render_root_entry(name: NormalizedName, fmt: SimpleFormat, first: bool) -> bytes:
    """One project of the root list; names are normalised, so they need no escaping."""
    if fmt.is_json:
        return (b'{"name":"' if first else b',{"name":"') + name.encode() + b'"}'
    return f'    <a href="{name}/">{name}</a><br />\n'.encode()


def render_root_footer(fmt: SimpleFormat) -> bytes:
    return b"]}" if fmt.is_json else b"  </body>\n</html>\n"


# --- parsing upstream pages -------------------------------------------------------------------


def _filename_from_url(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _metadata_value(raw: object) -> dict[str, str] | bool:
    if isinstance(raw, Mapping):
        return {str(k).lower(): str(v) for k, v in raw.items()}
    return raw is True


def parse_project_json(
    data: bytes, page_url: str, name: NormalizedName, origin: Origin = Origin.UPSTREAM
) -> ProjectPage:
    """Parse a PEP 691 project page; file URLs are resolved against ``page_url``."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise ValueError("not a PEP 691 project page")
    files = []
    for raw in doc["files"]:
        filename = str(raw["filename"])
        meta = raw.get("core-metadata", raw.get("data-dist-info-metadata", False))
        yanked = raw.get("yanked", False)
        files.append(
            DistFile(
                filename=filename,
                url=urljoin(page_url, str(raw["url"])),
                origin=origin,
                hashes={
                    str(k).lower(): str(v).lower() for k, v in (raw.get("hashes") or {}).items()
                },
                requires_python=raw.get("requires-python") or None,
                size=raw["size"] if isinstance(raw.get("size"), int) else None,
                upload_time=raw.get("upload-time") or None,
                yanked=yanked if isinstance(yanked, str) and yanked else yanked is True,
                core_metadata=_metadata_value(meta),
            )
        )
    serial = doc.get("meta", {}).get("_last-serial")
    versions = [str(v) for v in doc.get("versions") or ()]
    return ProjectPage(
        name=name,
        files=tuple(files),
        versions=project_versions(files, versions),
        serial=serial if isinstance(serial, int) else None,
    )


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def _hashes_from_fragment(url: str) -> dict[str, str]:
    fragment = urlsplit(url).fragment
    algo, sep, digest = fragment.partition("=")
    if sep and algo and digest and algo != "egg":
        return {algo.lower(): digest.lower()}
    return {}


def _metadata_from_attr(value: str | None) -> dict[str, str] | bool:
    if value is None or value.lower() == "false":
        return False
    algo, sep, digest = value.partition("=")
    return {algo.lower(): digest.lower()} if sep else True


def parse_project_html(
    data: bytes, page_url: str, name: NormalizedName, origin: Origin = Origin.UPSTREAM
) -> ProjectPage:
    """Parse a PEP 503 project page into the same model as :func:`parse_project_json`."""
    parser = _AnchorParser()
    parser.feed(data.decode("utf-8", "replace"))
    parser.close()
    files = []
    for attrs in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url = urljoin(page_url, href)
        yanked = attrs.get("data-yanked") if "data-yanked" in attrs else False
        metadata = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        files.append(
            DistFile(
                filename=_filename_from_url(url),
                url=url.split("#", 1)[0],
                origin=origin,
                hashes=_hashes_from_fragment(url),
                requires_python=attrs.get("data-requires-python") or None,
                yanked=False if yanked is False else (yanked or True),
                core_metadata=_metadata_from_attr(metadata),
            )
        )
    return ProjectPage(name=name, files=tuple(files), versions=project_versions(files))


def parse_project(
    data: bytes, content_type: str, page_url: str, name: NormalizedName
) -> ProjectPage:
    """Parse whichever format the upstream answered with, whatever we asked for (UP-07)."""
    media = content_type.split(";", 1)[0].strip().lower()
    parse: Callable[[bytes, str, NormalizedName], ProjectPage]
    if media.endswith("json"):
        parse = parse_project_json
    elif media.endswith("html") or not media:
        parse = parse_project_html
    else:
        raise ValueError(f"unexpected Content-Type {media!r}")
    return parse(data, page_url, name)


def parse_root_names(chunk: str) -> Iterable[str]:
    """Project names in a piece of an upstream root page, JSON or HTML.

    Used on a stream, so ``chunk`` must end at an entry boundary (see ``rootindex``).
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
            yield html.unescape(part[start + 1 : end]).strip()
