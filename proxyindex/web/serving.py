"""The listening side of one server process: a cap on open connections.

aiohttp has no connection limit: 5,000 clients that each sent half a request line held 5,022
file descriptors until the process ran out. Its keep-alive timer (``keepalive_timeout``)
closes a connection that has no complete request after that many seconds, from the moment
it is accepted and again after each response; this site adds the cap: past
``max_connections`` open connections, a new one is answered ``503`` and closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import socket

__all__ = ["CappedSite"]

log = logging.getLogger(__name__)

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"Retry-After: 5\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 30\r\n"
    b"\r\n"
    b"too many connections; retry\r\n\r\n"
)
_WARN_EVERY = 60.0  # seconds between two "cap reached" warnings


class _Refused(asyncio.Protocol):
    """A connection over the cap: the 503, then close (the request is never read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_REFUSAL)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it is open.

    A wrapper, not a count of ``Server.connections``: asyncio accepts a burst of up to
    ``backlog`` connections and creates all their protocols before any is registered there.
    """

    __slots__ = ("_inner", "_site")

    def __init__(self, inner: asyncio.Protocol, site: CappedSite) -> None:
        self._inner = inner
        self._site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.open_connections -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class CappedSite(web.SockSite):
    """A ``SockSite`` that keeps at most ``max_connections`` connections open."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int) -> None:
        super().__init__(runner, sock)
        self.max_connections = max_connections
        self.open_connections = 0
        self._refused = 0
        self._warned_at = -_WARN_EVERY

    def _protocol(self) -> asyncio.Protocol:
        if self.open_connections >= self.max_connections:
            self._refused += 1
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "%d connections open (server.max_connections): refusing new ones "
                    "with 503 (%d so far)",
                    self.open_connections,
                    self._refused,
                )
            return _Refused()
        server = self._runner.server
        assert server is not None
        self.open_connections += 1
        return _Counted(server(), self)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; SockSite.start would serve uncapped
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._sock)
