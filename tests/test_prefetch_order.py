"""Fetch-ahead takes the biggest files first, and more at once for uv (issue 12, fake upstream).

An installer waits for its last file, and the biggest takes longest: fetched ahead in the
order the metadata arrived, the 17 MB numpy wheel of the benchmark was still downloading
when uv asked for it. The slots fetch-ahead shares go to the biggest file waiting.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from proxyindex.slots import BiggestFirst
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI
from tests.test_prefetch_clients import linehaul


async def _until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_freed_slot_goes_to_the_biggest_waiting_job() -> None:
    slots = BiggestFirst(1)
    order: list[int] = []
    release = asyncio.Event()

    async def job(size: int) -> None:
        async with slots.slot(size):
            order.append(size)
            await release.wait()

    first = asyncio.create_task(job(2))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(job(size)) for size in (1, 7, 3, 7)]
    await asyncio.sleep(0.01)
    assert order == [2]
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == [2, 7, 7, 3, 1]  # equal sizes: the first to wait goes first


async def test_a_waiter_cancelled_in_the_queue_leaves_no_slot_taken() -> None:
    slots = BiggestFirst(1)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(1):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    cancelled = asyncio.create_task(slots.slot(9).__aenter__())
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    release.set()
    await task
    async with asyncio.timeout(1):  # the slot is free again, not lost to the cancelled waiter
        async with slots.slot(1):
            pass


async def test_files_fetched_ahead_wait_for_a_slot_biggest_first(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """Eight dependencies, the later ones bigger; four slots; every file takes 1 s. The first
    four files start at once; of the five left waiting, the four biggest get the freed slots
    and the smallest comes last (first come, first served did it the other way round)."""
    deps = [f"dep{i}" for i in range(8)]
    sizes: dict[str, int] = {}
    for i, dep in enumerate(deps):
        data = repr(os.urandom(i * 30_000))  # random: the wheel's size is what it holds
        wheel = fake_pypi.add_wheel(dep, "1.0", modules={f"{dep}_data": data})
        sizes[wheel.name] = wheel.stat().st_size
    fake_pypi.add_wheel("top", "1.0", requires_dist=deps)
    fake_pypi.file_delay = 1.0
    client = await make_app_client()
    assert (await client.get("/simple/top/", headers={"User-Agent": linehaul("pip")})).status == 200

    def wheels_asked() -> list[str]:
        asked = [p.rsplit("/", 1)[-1] for p in fake_pypi.paths() if p.endswith(".whl")]
        return [name for name in dict.fromkeys(asked) if name in sizes]  # the deps, once each

    await _until(lambda: len(wheels_asked()) == len(deps))
    asked = wheels_asked()
    started_at_once = {name for name in asked if asked.index(name) < 3}  # top took a slot too
    left = sorted((n for n in sizes if n not in started_at_once), key=sizes.__getitem__)
    assert set(asked[3:7]) == set(left[1:])  # the four biggest of those left waiting
    assert asked[7] == left[0]  # the smallest last


async def test_uv_installs_get_more_files_fetched_ahead_at_once_than_pip(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """uv downloads every resolved file at once when it has resolved: four files fetched
    ahead at a time left most of them to its own requests, a round trip each, after
    resolution. For uv, up to sixteen at once; pip keeps four (its own requests are one by
    one, and share the link with what is fetched ahead)."""
    deps = [f"dep{i}" for i in range(10)]
    for dep in deps:
        fake_pypi.add_wheel(dep, "1.0")
    fake_pypi.add_wheel("top", "1.0", requires_dist=deps)
    fake_pypi.file_delay = 1.0
    client = await make_app_client()
    installer = {"name": "uv", "version": "0.13", "subcommand": ["pip", "install"]}
    agent = linehaul("uv", installer=installer)
    assert (await client.get("/simple/top/", headers={"User-Agent": agent})).status == 200
    await _until(lambda: sum(p.endswith(".whl") for p in fake_pypi.paths()) == len(deps) + 1)
    assert fake_pypi.files_peak > 4  # all eleven, unless the metadata trickled in slowly


async def test_a_file_its_client_downloaded_is_not_fetched_ahead_again_after_eviction(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI
) -> None:
    """A client (``uv lock``: no files fetched ahead for it) downloads ``lib``'s wheel, which
    the cache (smaller than the wheel) evicts once sent. A pip install of ``app`` then brings
    ``lib`` into fetch-ahead: its wheel must not be downloaded again, unasked, only for the
    cache to evict it again."""
    wheel = fake_pypi.add_wheel("lib", "1.0", modules={"lib_data": repr(os.urandom(40_000))})
    fake_pypi.add_wheel("app", "1.0", requires_dist=["lib"])
    client = await make_app_client(storage={"cache_max_size": 1000})
    installer = {"name": "uv", "version": "0.13", "subcommand": ["lock"]}
    uv_lock = {"User-Agent": linehaul("uv", installer=installer)}
    assert (await client.get("/simple/lib/", headers=uv_lock)).status == 200
    resp = await client.get(f"/packages/lib/{wheel.name}")
    assert resp.status == 200 and await resp.read() == wheel.read_bytes()
    assert (await client.get("/simple/app/", headers={"User-Agent": linehaul("pip")})).status == 200

    def asked(filename: str) -> int:
        return sum(p.endswith("/" + filename) for p in fake_pypi.paths())

    await _until(lambda: asked("app-1.0-py3-none-any.whl") == 1)  # fetched ahead: app's own
    await _until(lambda: asked("lib-1.0-py3-none-any.whl.metadata") >= 1)
    await asyncio.sleep(1.0)  # lib's slot has come up by now
    assert asked(wheel.name) == 1
