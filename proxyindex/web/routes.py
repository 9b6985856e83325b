"""A route as the one route table lists it (``web.app.ROUTES``): method, path, handler, and the
action it needs (README "Users, tokens and access"). A GET route answers HEAD with the same
action; a route with a ``directory`` serves the files in it (GET and HEAD)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

__all__ = ["Handler", "Route"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler | None
    action: str
    directory: Path | None = None  # static files: ``handler`` is None

    def add_to(self, router: web.UrlDispatcher) -> None:
        if self.directory is not None:
            router.add_static(self.path, self.directory)
        elif self.handler is None:
            raise ValueError(f"route {self.method} {self.path} has no handler")
        elif self.method == "GET":
            router.add_get(self.path, self.handler)  # and HEAD
        else:
            router.add_route(self.method, self.path, self.handler)
