"""The web UI: server-rendered pages (Jinja2, no JavaScript) for people, next to the index.

``GET /`` says how to point clients at this server; ``/ui/projects/`` lists the private
projects, ``/ui/projects/<name>/`` shows one, ``/ui/cache/`` shows what the cache holds and
does. :func:`setup` adds the template environment and the request counters; :data:`ROUTES`
are the UI's rows of the route table.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxyindex.auth.authenticator import MANAGE, PUBLIC
from proxyindex.ui import manage, views
from proxyindex.ui.stats import STATS, Stats, stats_middleware
from proxyindex.web import appkeys
from proxyindex.web.routes import Route

__all__ = ["ROUTES", "setup"]

_HERE = Path(__file__).parent

# The UI's part of the route table (``web.app.ROUTES``): the home page and the stylesheet are
# for everyone; anything that names projects needs ``list``.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/", views.home, PUBLIC),
    Route("GET", "/ui/projects/", views.projects, "list"),
    Route("GET", "/ui/projects/{name}/", views.project, "list"),
    Route("GET", "/ui/cache/", views.cache_page, "list"),
    # Yank/unyank/remove buttons (POST forms with a CSRF token) and the login that shows them.
    Route("POST", "/ui/projects/{name}/manage", manage.manage, MANAGE),
    Route("GET", "/ui/login", manage.login, MANAGE),
    Route("GET", "/ui/static", None, PUBLIC, directory=_HERE / "static"),
)


async def _load_templates(app: web.Application) -> AsyncIterator[None]:
    """Read and compile the templates in a thread at start-up, not on the event loop when
    the first page is asked for."""
    env = aiohttp_jinja2.get_env(app)
    await asyncio.to_thread(lambda: [env.get_template(name) for name in env.list_templates()])
    yield


def setup(app: web.Application) -> None:
    """Add the UI's templates, counters and middleware to ``app`` (its routes are in
    :data:`ROUTES`); ``GET /`` is the UI home."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates are package files: no stat() per page
    )
    stats = Stats()
    app[STATS] = stats
    app[views.USAGE] = views.UsageMemo()
    app.middlewares.append(stats_middleware)
    app.cleanup_ctx.append(_load_templates)
    # Each page a client's request brought from the upstream is a page-cache miss.
    app[appkeys.PAGE_LISTENERS].append(lambda _page: stats.page_fetched())
