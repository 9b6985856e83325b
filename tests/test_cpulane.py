"""Big pages are parsed and rendered in one lane, in turn (``proxyindex.cpulane``): in the
default thread pool a wave of them shared the interpreter with each other and with the event
loop, so every page was late and the loop stalled (the module docstring has the figures)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import diskcache
import pytest

from proxyindex import cpulane, models, simple
from proxyindex.upstream import client as upstream_client
from tests.conftest import MakeAppClient
from tests.fakepypi import FakePyPI


class _Overlap:
    """Records how many calls run at once and in which threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.threads: set[str] = set()

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


async def test_big_upstream_pages_are_parsed_one_at_a_time_in_the_cpu_lane(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"wave-{i}" for i in range(4)]
    for name in names:
        fake_pypi.add_wheel(name, "1.0")
    overlap = _Overlap()
    parse = simple.parse_project

    def slow_parse(*args: Any) -> Any:
        overlap.enter()
        try:
            time.sleep(0.1)  # a big page's parse holds its thread this long
            return parse(*args)
        finally:
            overlap.leave()

    monkeypatch.setattr(upstream_client, "parse_project", slow_parse)
    monkeypatch.setattr(upstream_client, "_PARSE_INLINE_BYTES", 0)  # every page counts as big
    client = await make_app_client()
    answers = await asyncio.gather(*(client.get(f"/simple/{name}/") for name in names))
    assert [a.status for a in answers] == [200] * len(names)
    for answer, name in zip(answers, names, strict=True):
        assert f"{name.replace('-', '_')}-1.0-py3-none-any.whl" in await answer.text()
    assert overlap.peak == 1, f"{overlap.peak} big pages parsed at once"
    assert overlap.threads == {"proxyindex-cpu_0"}


async def test_big_pages_are_rendered_in_the_cpu_lane(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pypi.add_wheel("rendered", "1.0")
    seen: list[str] = []
    build = cpulane.CpuLane.run

    async def watched(
        self: cpulane.CpuLane, cost: int, func: Any, *args: Any, **kwargs: Any
    ) -> Any:
        seen.append(getattr(func, "__name__", repr(func)))
        return await build(self, cost, func, *args, **kwargs)

    monkeypatch.setattr(cpulane.CpuLane, "run", watched)
    monkeypatch.setattr(models, "INLINE_FILES", 0)  # every page counts as large
    client = await make_app_client()
    answer = await client.get("/simple/rendered/", headers={"Accept": "text/html"})
    assert answer.status == 200
    assert "_build" in seen


async def test_a_step_still_queued_when_its_caller_is_cancelled_never_runs() -> None:
    lane = cpulane.CpuLane()
    ran: list[str] = []
    started = threading.Event()
    try:

        def busy() -> None:
            started.set()
            time.sleep(0.2)

        first = asyncio.ensure_future(lane.run(1, busy))
        await asyncio.to_thread(started.wait, 5)
        queued = asyncio.ensure_future(lane.run(1, ran.append, "queued"))
        await asyncio.sleep(0)
        queued.cancel()
        await first
        await lane.run(1, ran.append, "after")
        assert ran == ["after"]
    finally:
        lane.close()


async def test_the_smallest_waiting_step_goes_next_and_one_runs_at_a_time() -> None:
    lane = cpulane.CpuLane()
    order: list[str] = []
    started = threading.Event()
    overlap = _Overlap()

    def step(label: str, hold: float = 0.0) -> None:
        overlap.enter()
        try:
            started.set()
            time.sleep(hold)
            order.append(label)
        finally:
            overlap.leave()

    try:
        first = asyncio.ensure_future(lane.run(5_000, step, "first", 0.2))
        await asyncio.to_thread(started.wait, 5)
        big = asyncio.ensure_future(lane.run(2_000_000, step, "numpy"))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(lane.run(40_000, step, "flask"))
        await asyncio.gather(first, big, small)
        assert order == ["first", "flask", "numpy"]
        assert overlap.peak == 1
    finally:
        lane.close()


async def test_pages_are_written_to_disk_in_the_cpu_lane_after_the_client_has_them(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer thread of its own pickled beside the lane and the event loop (0.4 s of a
    cold uv install against PyPI): the lane takes the writes, after the pages it parses."""
    fake_pypi.add_wheel("written", "1.0")
    writers: list[str] = []
    real_set = diskcache.Cache.set

    def recording_set(self: diskcache.Cache, key: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(key, tuple) and key[:2] == ("page", "written"):
            writers.append(threading.current_thread().name)
        return real_set(self, key, *args, **kwargs)

    monkeypatch.setattr(diskcache.Cache, "set", recording_set)
    client = await make_app_client()
    answer = await client.get("/simple/written/")
    assert answer.status == 200
    for _ in range(100):  # the disk copy follows the answer
        if writers:
            break
        await asyncio.sleep(0.05)
    assert writers == ["proxyindex-cpu_0"]
