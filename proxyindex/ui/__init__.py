"""The web UI: server-rendered pages (Jinja2, no JavaScript) for people, next to the index.

``GET /`` says how to point clients at this server; ``/ui/projects/`` lists the private
projects, ``/ui/projects/<name>/`` shows one, ``/ui/cache/`` shows what the cache holds and
does. :func:`setup` adds the routes, the template environment, and the request counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxyindex import appkeys
from proxyindex.auth import PUBLIC
from proxyindex.models import ProjectPage
from proxyindex.ui import views
from proxyindex.ui.stats import STATS, Stats, stats_middleware

__all__ = ["ACTIONS", "setup"]

_HERE = Path(__file__).parent

# Which action each UI route is (merged into proxyindex.app._ACTIONS): the home page and
# the stylesheet are for everyone; anything that names projects needs ``list``.
ACTIONS: dict[str, dict[str, str]] = {
    "/ui/static": {"GET": PUBLIC, "HEAD": PUBLIC},
    "/ui/projects/": {"GET": "list", "HEAD": "list"},
    "/ui/projects/{name}/": {"GET": "list", "HEAD": "list"},
    "/ui/cache/": {"GET": "list", "HEAD": "list"},
}
HOME_ACTIONS = {"GET": PUBLIC, "HEAD": PUBLIC}


async def _count_page_fetches(app: web.Application) -> AsyncIterator[None]:
    """Chain onto the index's hook for pages a client's request brought from the upstream:
    each is a page-cache miss. Runs after the app's resources exist (appended after them)."""
    index = app[appkeys.INDEX]
    stats = app[STATS]
    previous = index.on_page_fetched

    def fetched(page: ProjectPage) -> None:
        stats.page_fetched()
        if previous is not None:
            previous(page)

    index.on_page_fetched = fetched
    yield


async def _load_templates(app: web.Application) -> AsyncIterator[None]:
    """Read and compile the templates in a thread at start-up, not on the event loop when
    the first page is asked for."""
    env = aiohttp_jinja2.get_env(app)
    await asyncio.to_thread(lambda: [env.get_template(name) for name in env.list_templates()])
    yield


def setup(app: web.Application) -> None:
    """Add the UI to ``app`` (before its catch-all routes); ``GET /`` is the UI home."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates are package files: no stat() per page
    )
    app[STATS] = Stats()
    app[views.USAGE] = views.UsageMemo()
    app.middlewares.append(stats_middleware)
    app.cleanup_ctx.append(_load_templates)
    app.cleanup_ctx.append(_count_page_fetches)
    app.router.add_get("/", views.home)
    app.router.add_get("/ui/projects/", views.projects)
    app.router.add_get("/ui/projects/{name}/", views.project)
    app.router.add_get("/ui/cache/", views.cache_page)
    app.router.add_static("/ui/static", _HERE / "static")
