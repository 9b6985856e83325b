"""A fixed number of slots handed out by size: biggest job first for the files fetch-ahead
downloads, smallest first for the CPU lane (``proxyindex.cpulane``).

Files: an installer asks for every file it resolved at once (uv) or one after the other (pip), and
waits for the last one: the biggest file sets the end of the install. A first-come queue
fetched the small wheels first and left the 17 MB numpy wheel waiting behind them until the
client asked for it itself (measured with uv on the benchmark: numpy's request took 0.54 s,
the longest of the install); started first, it is cached by the time the client asks.

CPU: one thread parses and renders big pages in turn; first come first served made flask's
small page (42 kB) wait ~70 ms behind numpy's and pandas' (2 MB and 1 MB) in a cold ``uv lock``
against PyPI. The shortest job first gives the least mean wait, and uv waits for every page.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["BiggestFirst", "SmallestFirst"]


class BiggestFirst:
    """Like ``asyncio.Semaphore(slots)``, but a freed slot goes to the biggest waiting job
    (ties: the first to wait). A waiter cancelled in the queue gives up its place."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._order = itertools.count()
        # (-size, arrival, future): heapq pops the smallest, so the biggest size first.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []

    @asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        await self._acquire(size)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, size: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-size, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled
                self._release()
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter left its future behind: skip it
                future.set_result(None)
                return
        self._free += 1


class SmallestFirst(BiggestFirst):
    """Like ``BiggestFirst``, but a freed slot goes to the smallest waiting job."""

    @asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        async with super().slot(-size):
            yield
