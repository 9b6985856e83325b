"""The web UI's handlers: gather data (``proxyindex.ui.data``), render a Jinja2 template.

Templates autoescape everything (``select_autoescape``): a project name, a Host header or a
METADATA field is text, never markup. The one exception is a long description, which is
HTML sanitised by readme-renderer (nh3) before it is marked safe. Pages also carry a
Content-Security-Policy that allows no script at all, as a second fence.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp_jinja2
from aiohttp import hdrs, web
from packaging.utils import NormalizedName

from proxyindex import __version__
from proxyindex.models import is_valid_name, normalize
from proxyindex.ui import data, manage
from proxyindex.ui.stats import STATS
from proxyindex.upstream.client import mask_url
from proxyindex.upstream.readiness import UpstreamCheck, UpstreamMonitor
from proxyindex.web import appkeys

__all__ = ["cache_page", "home", "project", "projects"]

_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data: https:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_MAX_LISTED = 1000  # projects on one list page; a search narrows it
_USAGE_TTL = 30.0  # seconds a cache measurement is reused (it lists the cached pages)


class UsageMemo:
    """The last cache measurement (one per app, on ``USAGE``)."""

    usage: data.CacheUsage | None = None


USAGE = web.AppKey("ui_cache_usage", UsageMemo)


def base_url(request: web.Request) -> str:
    """This server's URL as clients should use it: ``server.base_url``, else what the
    request came to (the Host header is the client's to choose: templates escape it)."""
    configured = request.app[appkeys.CONFIG].server.base_url
    return configured or f"{request.scheme}://{request.host}"


def _render(request: web.Request, template: str, context: dict[str, Any]) -> web.Response:
    context = {"base": base_url(request), "version": __version__, **context}
    response = aiohttp_jinja2.render_template(template, request, context)
    private = request.app[appkeys.AUTH].protects("list")
    response.headers[hdrs.CACHE_CONTROL] = "private, no-cache" if private else "no-cache"
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _upstream_status(check: UpstreamCheck | None, interval: float) -> tuple[str, str]:
    """(css class, words) for the upstream's last check."""
    if interval == 0:
        return "unknown", "not checked (upstream.check_interval = 0)"
    if check is None:
        return "unknown", "not checked yet"
    ago = int(time.time() - check.checked_at)
    if check.ok:
        return "ok", f"answers as a simple index (checked {ago} s ago)"
    return "bad", f"{check.detail} (checked {ago} s ago)"


async def home(request: web.Request) -> web.StreamResponse:
    """Where to point clients, filled in with this server's URL; version and upstream."""
    config = request.app[appkeys.CONFIG]
    monitor = request.app[appkeys.UPSTREAM_CHECK]
    state, words = _upstream_status(monitor.last, monitor.interval)
    upstreams = []  # several: each in order of priority, with what it serves
    checks: tuple[UpstreamMonitor, ...] = request.app[appkeys.UPSTREAM_CHECKS]
    for (source, _settings), check in zip(config.sources(), checks, strict=True):
        each_state, each_words = _upstream_status(check.last, check.interval)
        serves = source.serves
        upstreams.append(
            {
                "name": source.name,
                "url": mask_url(source.url),
                "serves": serves,
                "state": each_state,
                "words": each_words,
            }
        )
    base = base_url(request)
    return _render(
        request,
        "home.html",
        {
            "snippets": data.client_snippets(base),
            "upstream_url": mask_url(config.upstream.url),
            "upstream_state": state,
            "upstream_words": words,
            "upstreams": upstreams,
            "private_count": len(request.app[appkeys.STORAGE].names()),
            "list_protected": request.app[appkeys.AUTH].protects("list"),
        },
    )


async def projects(request: web.Request) -> web.StreamResponse:
    """The private projects, filtered by ``?q=`` (a plain GET form: no script needed)."""
    query = request.query.get("q", "")[:200]
    storage = request.app[appkeys.STORAGE]
    names = data.project_matches(storage.names(), query)
    shown = names[:_MAX_LISTED]
    pages = await asyncio.to_thread(lambda: [storage.page(n) for n in shown])
    rows = []
    for page in pages:
        if page is None:  # removed since the listing
            continue
        found = data.releases(page)
        latest = found[0] if found else None
        uploaded = max((f.upload_time or "" for f in page.files), default="")
        rows.append(
            {
                "name": page.name,
                "latest": latest.version if latest else "",
                "versions": len(found),
                "files": len(page.files),
                "uploaded": uploaded[:16].replace("T", " "),
            }
        )
    return _render(
        request,
        "projects.html",
        {"query": query, "rows": rows, "total": len(names), "cut": len(names) > len(shown)},
    )


async def project(request: web.Request) -> web.StreamResponse:
    """One private project: versions newest first, their files, the rendered description."""
    raw = request.match_info["name"]
    if not is_valid_name(raw):
        raise web.HTTPNotFound(text="not a valid project name\n")
    name = normalize(raw)
    if name != raw:
        raise web.HTTPMovedPermanently(f"/ui/projects/{name}/")
    storage = request.app[appkeys.STORAGE]
    page = await asyncio.to_thread(storage.page, name)
    if page is None:
        raise web.HTTPNotFound(text=f"no private project named {name!r}\n")
    found = data.releases(page)
    description = await _description(request, name, found)
    may_manage = await manage.viewer_may_manage(request)
    token = manage.csrf_token(request) if may_manage else ""
    response = _render(
        request,
        "project.html",
        {
            "name": name,
            "releases": found,
            "latest": found[0].version if found else "",
            "description": description,
            "human_size": data.human_size,
            "uploaders": await manage.uploaders(request, name),
            "manage": may_manage,
            "csrf": token,
            "login": not may_manage and request.app[appkeys.AUTH].enabled,
        },
    )
    if may_manage:
        manage.set_csrf_cookie(request, response, token)
    return response


async def _description(
    request: web.Request, name: NormalizedName, found: list[data.Release]
) -> data.Description | None:
    """From the newest release that has a wheel (the METADATA storage keeps)."""
    index = request.app[appkeys.INDEX]
    for release in found:
        for dist in release.files:
            if dist.filename.endswith(".whl"):
                raw = await index.private_metadata(name, dist.filename)
                if raw is not None:
                    return await asyncio.to_thread(data.describe, raw)
    return None


async def _usage(request: web.Request) -> data.CacheUsage:
    """The cache's size and contents, measured at most every ``_USAGE_TTL`` seconds."""
    memo = request.app[USAGE]
    usage = memo.usage
    if usage is not None and time.time() - usage.measured_at < _USAGE_TTL:
        return usage
    blobs, pages = request.app[appkeys.BLOBS], request.app[appkeys.PAGES]
    usage = await asyncio.to_thread(data.cache_usage, blobs, pages)
    memo.usage = usage
    return usage


async def cache_page(request: web.Request) -> web.StreamResponse:
    """Size against the cap, counts, hit rate, top projects, the last hour as a chart."""
    stats = request.app[STATS]
    usage = await _usage(request)
    minutes = stats.last_hour()
    hits, lookups = data.hit_rate(minutes)
    cap = request.app[appkeys.CONFIG].storage.cache_max_size
    # The Prometheus counters: every worker's, since the start (files read: a thread).
    totals = await asyncio.to_thread(request.app[appkeys.METRICS].totals)
    return _render(
        request,
        "cache.html",
        {
            "totals": totals,
            "usage": usage,
            "cap": cap,
            "percent": min(100.0, usage.size * 100 / cap) if cap else None,
            "hits": hits,
            "lookups": lookups,
            "rate": (hits * 100 / lookups) if lookups else None,
            "requests": sum(m.requests for m in minutes),
            "chart": data.chart(minutes),
            "top": stats.projects.most_common(10),
            "human_size": data.human_size,
            "workers": request.app[appkeys.CONFIG].server.workers,
        },
    )
