"""One thread, in turn, for the CPU-bound steps of big pages: parsing an upstream page,
rendering and compressing a page, making a JSON API document, choosing fetch-ahead's file.

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
here: they are parsed and rendered inline (``INLINE_FILES``, ``_PARSE_INLINE_BYTES``), so a
big page delays only other big pages, never a small one's answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["CpuLane", "run"]

P = ParamSpec("P")
T = TypeVar("T")


class CpuLane:
    """A one-thread executor owned by the app (created and shut down in its resources)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxyindex-cpu")

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``func`` in the lane, with the caller's context (as ``asyncio.to_thread``). A caller
        cancelled while its step is still queued takes the step out of the queue."""
        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def run(lane: CpuLane | None, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """In ``lane``; without one (a component built alone, as in unit tests), in a thread of the
    default pool as before."""
    if lane is None:
        return await asyncio.to_thread(func, *args, **kwargs)
    return await lane.run(func, *args, **kwargs)
