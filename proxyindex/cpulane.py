"""One thread, in turn, for the CPU-bound steps of big pages: parsing an upstream page,
rendering and compressing a page, making a JSON API document, choosing fetch-ahead's file; and,
after those, writing pages to the disk cache (``upstream.cache.PageCache``).

Why one thread and not the default pool: these steps hold the GIL for tens to hundreds of
milliseconds each (a botocore page, 5,000 files: ~75 ms to parse and render). In the default
pool of 32 threads, the pages of one of uv's resolution waves ran all at once and shared the
interpreter with each other and with the event loop. Measured in-process on this 2-core machine,
ten botocore-sized parses started together (32 threads → one lane):
- the first page was ready after 640-740 ms → 86-105 ms, the mean after 810 → 450 ms, the last
  at about the same time (the CPU is the same, only its order changes);
- the event loop lagged 640-740 ms at p95 → 11-15 ms, and a quick file step in the default
  pool (the first step of a ``.metadata`` or cached-file answer) waited as long → 18-31 ms.
Two threads measured in between (first page 160-240 ms, loop lag p95 43-47 ms): the GIL runs
one at a time anyway, and the second only takes turns with the loop. Small pages never come
here: they are parsed and rendered inline (``INLINE_FILES``, ``_PARSE_INLINE_BYTES``). Among
those that do, the smallest goes first (``proxyindex.slots``): in turn, first come first
served, flask's page waited ~70 ms behind numpy's and pandas' in a cold ``uv lock``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from proxyindex.slots import SmallestFirst

__all__ = ["FILE_COST", "CpuLane", "run"]

# The cost of a step, in bytes of the upstream page it works on; a step over a parsed page
# counts this much per file (PyPI's JSON: ~300-400 bytes per file).
FILE_COST = 300

P = ParamSpec("P")
T = TypeVar("T")


class CpuLane:
    """A one-thread executor owned by the app (created and shut down in its resources)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxyindex-cpu")
        self._turn = SmallestFirst(1)

    async def run(self, cost: int, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``func`` in the lane when its turn comes (``cost``: smallest first), with the
        caller's context (as ``asyncio.to_thread``). A caller cancelled while it waits for its
        turn leaves the queue; a step already running ends in its thread (nothing stops a
        thread), and the one thread keeps the next from overlapping it."""
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        async with self._turn.slot(cost):
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def run(
    lane: CpuLane | None, cost: int, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """In ``lane``; without one (a component built alone, as in unit tests), in a thread of the
    default pool as before."""
    if lane is None:
        return await asyncio.to_thread(func, *args, **kwargs)
    return await lane.run(cost, func, *args, **kwargs)
