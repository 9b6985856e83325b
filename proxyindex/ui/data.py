"""What the web UI shows, gathered from the objects on the app; pure functions where possible.

Nothing here changes state: the pages only look. Blocking work (reading the blob index,
hashing new private files, rendering a long description) runs in threads.
"""

from __future__ import annotations

import email.parser
import email.policy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from packaging.utils import NormalizedName
from packaging.version import Version
from readme_renderer import markdown, rst, txt
from yarl import URL

from proxyindex.distname import release_of
from proxyindex.models import DistFile, ProjectPage
from proxyindex.ui.stats import Minute
from proxyindex.upstream.cache import BlobStore, PageCache

__all__ = [
    "CacheUsage",
    "Chart",
    "Description",
    "Release",
    "Snippet",
    "cache_usage",
    "chart",
    "client_snippets",
    "describe",
    "human_size",
    "releases",
]


# --- home -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snippet:
    """One block of configuration to copy: a client, where it goes, and its text."""

    client: str
    where: str
    text: str


def client_snippets(base: str) -> list[Snippet]:
    """The README's client configuration ("Pointing clients at it", "Publishing"), with this
    server's URL in place of ``http://127.0.0.1:8080``: the same lines, so they cannot drift
    into something the tests do not cover."""
    index = f"{base}/simple/"
    upload = f"{base}/"
    url = URL(base)
    plain_http = url.scheme == "http"
    pip_conf = f"[global]\nindex-url = {index}\n"
    if plain_http and url.host:
        pip_conf += f"trusted-host = {url.host}\n"
    return [
        Snippet(
            "pip",
            "shell",
            f"pip config set global.index-url {index}\n"
            f"# or, for one command:\npip install --index-url {index} PACKAGE",
        ),
        Snippet("pip", "pip.conf (~/.config/pip/pip.conf or /etc/pip.conf)", pip_conf),
        Snippet(
            "pipenv",
            "Pipfile",
            f'[[source]]\nurl = "{index}"\nverify_ssl = {str(not plain_http).lower()}\n'
            'name = "proxyindex"\n',
        ),
        Snippet(
            "uv",
            "pyproject.toml (or: export UV_DEFAULT_INDEX=…)",
            f'[[tool.uv.index]]\nname = "proxyindex"\nurl = "{index}"\ndefault = true\n',
        ),
        Snippet("poetry", "shell", f"poetry source add --priority=primary proxyindex {index}"),
        Snippet("pdm", "pyproject.toml", f'[[tool.pdm.source]]\nname = "pypi"\nurl = "{index}"\n'),
        Snippet(
            "twine",
            "~/.pypirc, then: twine upload -r proxyindex dist/*",
            "[distutils]\nindex-servers = proxyindex\n\n[proxyindex]\n"
            f"repository = {upload}\nusername = YOUR-USER\npassword = YOUR-PASSWORD-OR-TOKEN\n",
        ),
        Snippet(
            "uv publish",
            "shell",
            f"uv publish --publish-url {upload} --check-url {index} --username YOUR-USER",
        ),
    ]


# --- private projects ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Release:
    """One version of a project and its files, newest first on the page."""

    version: str
    files: tuple[DistFile, ...]

    @property
    def yanked(self) -> bool | str:
        """A release is yanked when all its files are (PEP 592); the first reason given."""
        if not self.files or not all(f.yanked for f in self.files):
            return False
        reasons = [f.yanked for f in self.files if isinstance(f.yanked, str) and f.yanked]
        return reasons[0] if reasons else True


def releases(page: ProjectPage) -> list[Release]:
    """The page's files grouped by version, newest version first (PEP 440 order); within a
    version, sdists before wheels, then by filename."""
    by_version: dict[Version, list[DistFile]] = {}
    for dist in page.files:
        parsed = release_of(dist.filename)
        if parsed is not None:
            by_version.setdefault(parsed.version, []).append(dist)
    return [
        Release(
            str(v),
            tuple(sorted(by_version[v], key=lambda f: (f.filename.endswith(".whl"), f.filename))),
        )
        for v in sorted(by_version, reverse=True)
    ]


@dataclass(frozen=True, slots=True)
class Description:
    summary: str
    html: str | None  # sanitised by readme-renderer (nh3); None when there is no description


_CACHED_METADATA = 256 * 1024  # larger METADATA files are rendered each time, not kept


def describe(raw: bytes) -> Description:
    """:func:`render_description`, remembered for the last 64 (small) METADATA files."""
    return _describe_cached(raw) if len(raw) <= _CACHED_METADATA else render_description(raw)


@lru_cache(maxsize=64)
def _describe_cached(raw: bytes) -> Description:
    return render_description(raw)


def render_description(raw: bytes) -> Description:
    """Summary and long description of a METADATA file, the description rendered to HTML as
    PyPI does (readme-renderer: Markdown, reStructuredText or plain text, then sanitised, so
    a ``<script>`` or an ``onerror=`` in a README is text, never code). Pure; CPU-bound."""
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    body = message.get_payload()
    text = body if isinstance(body, str) and body.strip() else str(message.get("Description", ""))
    summary = str(message.get("Summary", "")).strip()
    if not text.strip():
        return Description(summary, None)
    content_type = str(message.get("Description-Content-Type", "text/x-rst")).lower()
    rendered: str | None
    if content_type.startswith("text/markdown"):
        variant = "GFM" if "variant=commonmark" not in content_type else "CommonMark"
        rendered = markdown.render(text, variant=variant)
    elif content_type.startswith("text/plain"):
        rendered = txt.render(text)
    else:
        rendered = rst.render(text)
    if rendered is None:  # invalid reStructuredText: show it as text, as PyPI does
        rendered = txt.render(text)
    return Description(summary, rendered)


# --- cache ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheUsage:
    size: int
    files: int
    pages: int
    largest: list[tuple[str, int, int]]  # (project, bytes cached, files cached)
    measured_at: float


def cache_usage(blobs: BlobStore, pages: PageCache, top: int = 10) -> CacheUsage:
    """Blocking: the cache's totals and largest projects, read from the blob index (a few
    rows, at any size: the folder is never walked, except once to index a folder written
    before the index existed), and the number of cached pages.

    The page store is read through its diskcache directly (in this thread, its own sqlite
    connection): the UI only looks, and PageCache has no listing API of its own.
    """
    blobs.ensure_indexed()
    index = blobs.index
    largest = [(p.name, p.bytes, p.files) for p in index.largest_projects(top)]
    store: Any = pages._cache  # read-only: the page store has no listing API
    names = sum(1 for key in store.iterkeys() if isinstance(key, tuple) and key[:1] == ("page",))
    return CacheUsage(index.total(), index.count(), names, largest, time.time())


def human_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Geometry of the last-hour chart, in SVG user units: numbers only, drawn by a template."""

    width: int
    height: int
    bars: list[Bar]
    hit_line: str  # the hit rate as SVG polyline points, minutes with lookups only
    hit_points: list[tuple[float, float]]
    peak: int
    bar_width: float


def chart(minutes: Sequence[Minute], width: int = 600, height: int = 120) -> Chart:
    """Requests per minute as bars, the hit rate (0-100 %) as a line. Pure."""
    peak = max((m.requests for m in minutes), default=0)
    step = width / max(1, len(minutes))
    bars = []
    points: list[tuple[float, float]] = []
    for i, minute in enumerate(minutes):
        h = (minute.requests / peak * (height - 4)) if peak else 0.0
        clock = time.strftime("%H:%M", time.gmtime(minute.start))
        bars.append(
            Bar(
                round(i * step, 1),
                round(height - h, 1),
                round(h, 1),
                f"{clock} UTC: {minute.requests} requests",
            )
        )
        if minute.lookups:
            rate = minute.hits / minute.lookups
            points.append((round(i * step + step / 2, 1), round(height - rate * (height - 4), 1)))
    line = " ".join(f"{x},{y}" for x, y in points)
    return Chart(width, height, bars, line, points, peak, round(max(1.0, step - 1), 1))


def hit_rate(minutes: Iterable[Minute]) -> tuple[int, int]:
    """(hits, lookups) over the minutes given."""
    hits = lookups = 0
    for minute in minutes:
        hits += minute.hits
        lookups += minute.lookups
    return hits, lookups


def project_matches(names: Iterable[NormalizedName], query: str) -> list[NormalizedName]:
    """Names containing the query (normalised like a project name, so ``Foo_Bar`` finds
    ``foo-bar``), sorted."""
    needle = "-".join(query.strip().lower().replace("_", "-").replace(".", "-").split())
    return sorted(n for n in names if needle in n)
