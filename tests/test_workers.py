"""Several worker processes on one port and one cache folder still download a file once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.clients import run_pip_install, run_twine_upload
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.wheelmaker import make_wheel

pytestmark = pytest.mark.e2e


def test_workers_share_the_port_and_download_each_file_once(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("demo-pkg", "1.0", modules={"demo_pkg": "w = 3\n" * 30000})
    expected = hashlib.sha256(wheel.read_bytes()).hexdigest()
    proxy = make_proxy(server={"workers": 3}, upstream={"prefetch": False})
    fake_pypi.delay = 0.3

    async def scenario() -> list[str]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)  # spread over workers
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get(path: str) -> bytes:
                async with session.get(proxy.url + path) as resp:
                    assert resp.status == 200, path
                    return await resp.read()

            await asyncio.gather(*(get("/simple/demo-pkg/") for _ in range(6)))
            url = f"/packages/demo-pkg/{wheel.name}"
            bodies = await asyncio.gather(*(get(url) for _ in range(60)))
            return [hashlib.sha256(body).hexdigest() for body in bodies]

    digests = asyncio.run(scenario())
    assert digests == [expected] * 60
    wheel_gets = [r for r in fake_pypi.requests_for("/files/") if r.path.endswith(".whl")]
    assert len(wheel_gets) == 1
    assert fake_pypi.count("/simple/demo-pkg/") <= 3  # at most one page fetch per worker


def test_an_upload_through_one_worker_is_seen_at_once_by_every_other(
    make_proxy: MakeProxy, tmp_path: Path, client_tmp: Path
) -> None:
    """Each worker keeps its own view of the packages folder; without the shared change counter
    the other workers saw an upload only at their next poll (a second later): 32 of 60 page
    requests made right after an upload answered 404, and ``twine upload`` then ``pip install``
    failed about half the time."""
    proxy = make_proxy(
        server={"workers": 3},
        auth={"anonymous_upload": True},
        private={"reserved": ["acme-*"]},
    )
    for n in range(4):
        wheel = make_wheel(tmp_path / f"dist{n}", f"acme-tool-{n}", "1.0")
        run_twine_upload(client_tmp / f"up{n}", proxy.upload_url, [wheel], "any", "any")
        statuses = [_status(f"{proxy.url}/simple/acme-tool-{n}/") for _ in range(8)]
        assert statuses == [200] * 8, (n, statuses)
    report = run_pip_install(
        client_tmp / "pip", proxy.index_url, "acme-tool-3", target=client_tmp / "target"
    )
    assert report.versions() == {"acme-tool-3": "1.0"}


def _status(url: str) -> int:
    """One GET on a new connection (so the kernel may hand it to any worker)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_workers_stop_when_their_parent_dies(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(server={"workers": 2})
    children = [
        int(pid) for pid in Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text().split()
    ]
    assert len(children) == 2
    os.kill(proxy.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in children):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _health(url: str) -> int:
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
        return int(resp.status)


def test_a_killed_worker_is_replaced_and_sigterm_stops_every_worker(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy(server={"workers": 3})
    first = _children(proxy.pid)
    assert len(first) == 3
    victim = sorted(first)[0]
    mark = proxy.log_mark()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while len(_children(proxy.pid) - {victim}) < 3:
        assert time.monotonic() < deadline, f"no replacement worker:\n{proxy.log_text()}"
        time.sleep(0.1)
    now = _children(proxy.pid)
    assert victim not in now
    assert len(now) == 3
    assert proxy.wait_for_log(rf"worker {victim} exited \(signal 9 \(SIGKILL\)\)", since=mark)
    proxy.wait_for_log(r"worker \d+ started", since=mark)
    # Killed again right after its start: a crash loop, so the next one waits longer.
    (replacement,) = now - first
    os.kill(replacement, signal.SIGKILL)
    pause = r"(?!0\.0 )[0-9.]+ s"  # 1.0 s unless the first worker lived over 10 s
    proxy.wait_for_log(rf"worker {replacement} exited .* new one in {pause}", since=mark)
    deadline = time.monotonic() + 20
    while len(_children(proxy.pid) - {victim, replacement}) < 3:
        assert time.monotonic() < deadline, f"no second replacement:\n{proxy.log_text()}"
        time.sleep(0.1)
    now = _children(proxy.pid)
    for _ in range(12):  # spread over the workers by the kernel; every one answers
        assert _health(proxy.url) == 200
    assert proxy.stop() == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in now):
        assert time.monotonic() < deadline, "a worker outlived the master's SIGTERM"
        time.sleep(0.1)
