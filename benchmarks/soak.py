"""Soak: hours of a company's traffic squeezed into minutes, with the upstream misbehaving.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--workers 2] [--concurrency 8]

For a bounded time it drives one real ``proxyindex serve --workers N`` (on 127.0.0.1 only)
with a mix of what a company sends an index: project pages (HTML and JSON), files and
``.metadata``, the root list, pip and uv installs, uploads of new versions, identical and
conflicting re-uploads, bad uploads from a table and wrong passwords. Meanwhile the fake
upstream (``tests.fakepypi``, in a thread) goes down, stalls, truncates and corrupts files
and answers garbage pages, in windows; and now and then a worker is killed with SIGKILL.

It prints what an operator would want to know afterwards: requests served, statuses by
class, 5xx outside the upstream's fault windows (goal: 0), p50/p99 latency, peak RSS and
open fds of the server's process tree, and a final audit: every cached blob re-hashed
against its name, every private file against the hash the index lists, and every upload
that was answered 200 still present and served with its bytes (goal: 0 lost, 0 corrupt).
Every file the index served with 200 during the run was also checked against the hash the
page gave for it (a corrupt 200 is counted, never expected).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from passlib.apache import HtpasswdFile
from yarl import URL

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from measure import client_env, process_tree, tree_rss  # noqa: E402

from tests.fakepypi import FakePyPI  # noqa: E402
from tests.serverproc import ProxyServer, write_config  # noqa: E402
from tests.wheelmaker import make_wheel  # noqa: E402

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
USER, PASSWORD = "soak", "soak-password"
UPSTREAM_PROJECTS = 24
PRIVATE_PROJECTS = 4
# After a fault window closes, requests that started inside it may still finish with the
# fault's answer (one upstream timeout and a retry later): they count as inside.
GRACE = 12.0
FAULTS = ("down", "stall", "truncate", "corrupt", "garbage", "status503")


class FaultyPyPI(FakePyPI):
    """The tests' fake PyPI plus one more fault: project pages answered with 200 garbage."""

    garbage = False

    async def _project(self, request: web.Request) -> web.StreamResponse:
        if self.garbage:
            noise = base64.b64encode(os.urandom(3000)).decode()
            return web.Response(text=f"<html>maintenance {noise}", content_type="text/html")
        return await super()._project(request)


@dataclass
class Window:
    kind: str
    start: float
    end: float = float("inf")


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    by_class: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    corrupt_served: int = 0
    fault_windows: list[Window] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    installs: collections.Counter[str] = field(default_factory=collections.Counter)
    peak_rss: int = 0
    peak_fds: int = 0
    uploads_ok: dict[str, str] = field(default_factory=dict)  # filename -> sha256

    def in_fault(self, at: float) -> bool:
        return any(w.start <= at <= w.end + GRACE for w in self.fault_windows)

    def near_kill(self, at: float) -> bool:
        return any(k - 1.0 <= at <= k + 5.0 for k in self.kills)

    def record(self, kind: str, status: int | str, started: float, expected: set[int]) -> None:
        """Count one request; anything not expected outside a fault window is 'unexpected'."""
        now = time.monotonic()
        self.requests += 1
        self.by_kind[kind] += 1
        self.latencies.append(now - started)
        cls = status if isinstance(status, str) else f"{status // 100}xx"
        self.by_class[cls] += 1
        if isinstance(status, int) and status in expected:
            return
        excused = self.in_fault(started) or self.in_fault(now)
        if isinstance(status, str):  # a connection error
            excused = excused or self.near_kill(started) or self.near_kill(now)
        elif status >= 500:
            pass  # a 5xx is only excused by an upstream fault window
        if not excused:
            key = f"{kind} -> {status}"
            ends = [w.end for w in self.fault_windows if w.end <= started]
            if ends and isinstance(status, int) and status >= 500:
                key += f" ({started - max(ends):.0f} s after the last fault window ended)"
            self.unexpected[key] += 1


@dataclass
class Dist:
    project: str
    filename: str
    sha256: str
    size: int
    url: str = ""


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.fake = FaultyPyPI()
        self.server: ProxyServer | None = None
        self.upstream_files: list[Dist] = []
        self.private_versions: dict[str, int] = {}
        # Names with an accepted upload: only those have a page (a name whose first upload is
        # still on its way, or failed, is reserved and answers 404, rightly).
        self.private_listed: set[str] = set()
        self.deadline = 0.0
        self.builds = work / "builds"

    # -- set-up --------------------------------------------------------------------------------

    def populate_upstream(self) -> None:
        """Two dozen projects, three versions each, files from 10 KB to ~1.5 MB (random data,
        so they compress badly like real wheels), and one app depending on five of them."""
        for i in range(UPSTREAM_PROJECTS):
            for v in range(1, 4):
                size = self.rng.choice((10_000, 60_000, 250_000, 1_100_000))
                blob = base64.b64encode(self.rng.randbytes(size)).decode()
                path = self.fake.add_wheel(
                    f"soak-up-{i}",
                    f"1.{v}",
                    modules={f"soak_up_{i}/__init__.py": f"DATA = {blob!r}\n"},
                )
                data = path.read_bytes()
                self.upstream_files.append(
                    Dist(f"soak-up-{i}", path.name, hashlib.sha256(data).hexdigest(), len(data))
                )
        self.fake.add_wheel("soak-app", "1.0", requires_dist=[f"soak-up-{i}" for i in range(5)])
        self.fake.add_sdist("soak-up-0", "1.3")

    def start_server(self) -> ProxyServer:
        htpasswd = HtpasswdFile(str(self.work / "htpasswd"), new=True, default_scheme="bcrypt")
        htpasswd.set_password(USER, PASSWORD)
        htpasswd.save()
        total = sum(d.size for d in self.upstream_files)
        config = write_config(
            self.work / "server" / "config.toml",
            server={"host": "127.0.0.1", "workers": self.args.workers},
            storage={
                "packages_dir": "packages",
                "cache_dir": "cache",
                # A third of what the upstream holds: eviction runs all the time.
                "cache_max_size": max(total // 3, 2_000_000),
            },
            upstream={
                "url": self.fake.simple_url,
                "page_ttl": 5,  # pages go stale quickly, so faults meet revalidations
                "timeout": 3,
                "connect_timeout": 2,
                "negative_ttl": 5,
            },
            private={"reserved": ["soak-private-*"]},
            auth={"htpasswd": str(self.work / "htpasswd"), "protect": ["upload"]},
        )
        server = ProxyServer(config)
        server.start()
        return server

    # -- traffic -------------------------------------------------------------------------------

    async def request(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        method: str,
        path: str,
        expected: set[int],
        *,
        check_sha256: str | None = None,
        **kwargs: object,
    ) -> tuple[int | str, bytes]:
        assert self.server is not None
        started = time.monotonic()
        try:
            async with session.request(method, self.server.url + path, **kwargs) as resp:  # type: ignore[arg-type]
                body = await resp.read()
                status: int | str = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            status, body = type(exc).__name__, b""
        if check_sha256 and status == 200 and hashlib.sha256(body).hexdigest() != check_sha256:
            self.stats.corrupt_served += 1
            self.stats.unexpected[f"{kind} -> 200 with wrong sha256"] += 1
        self.stats.record(kind, status, started, expected)
        return status, body

    async def page(self, session: aiohttp.ClientSession) -> None:
        name = self.rng.choice(
            [
                f"soak-up-{self.rng.randrange(UPSTREAM_PROJECTS)}",
                "soak-app",
                *sorted(self.private_listed),
            ]
        )
        accept = self.rng.choice((PIP_ACCEPT, JSON_ACCEPT, "text/html", "*/*"))
        private = name.startswith("soak-private")
        status, body = await self.request(
            session,
            "page (private)" if private else "page",
            "GET",
            f"/simple/{name}/",
            {200},
            headers={"Accept": accept},
        )
        if status == 200 and accept == JSON_ACCEPT and not private:
            self.learn_urls(f"/simple/{name}/", body)

    def learn_urls(self, page_path: str, body: bytes) -> None:
        try:
            files = json.loads(body)["files"]
        except (ValueError, KeyError, TypeError):
            return
        by_name = {d.filename: d for d in self.upstream_files}
        for f in files:
            dist = by_name.get(f.get("filename", ""))
            if dist is not None and not dist.url:
                dist.url = URL(page_path).join(URL(str(f["url"]))).path

    async def file(self, session: aiohttp.ClientSession, metadata: bool) -> None:
        known = [d for d in self.upstream_files if d.url]
        if not known:
            await self.page(session)
            return
        dist = self.rng.choice(known)
        url = dist.url
        if metadata:
            await self.request(session, "metadata", "GET", url + ".metadata", {200})
            return
        await self.request(
            session,
            "file",
            "GET",
            url,
            {200},
            check_sha256=dist.sha256,
            headers={"Accept-Encoding": "identity"},
        )

    def private_wheel(self, project: str, version: str, salt: str = "") -> Path:
        out = self.builds / f"{project}-{version}-{salt or 'a'}"
        return make_wheel(
            out,
            project,
            version,
            modules={f"{project.replace('-', '_')}/__init__.py": f"V = {version!r}  # {salt}\n"},
        )

    async def upload(
        self,
        session: aiohttp.ClientSession,
        path: Path,
        kind: str,
        expected: set[int],
        *,
        auth: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> int | str:
        data = path.read_bytes()
        name, version = path.name.removesuffix(".tar.gz").split("-")[:2]
        form = aiohttp.FormData()
        values = {
            ":action": "file_upload",
            "protocol_version": "1",
            "name": name.replace("_", "-"),
            "version": version,
            "filetype": "bdist_wheel" if path.suffix == ".whl" else "sdist",
            "pyversion": "py3" if path.suffix == ".whl" else "source",
            "sha256_digest": hashlib.sha256(data).hexdigest(),
        }
        values.update(fields or {})
        for key, value in values.items():
            form.add_field(key, value)
        form.add_field("content", data, filename=path.name)
        status, _ = await self.request(
            session,
            kind,
            "POST",
            "/",
            expected,
            data=form,
            headers={"Authorization": auth or basic(USER, PASSWORD)},
        )
        return status

    async def new_version(self, session: aiohttp.ClientSession) -> None:
        project = f"soak-private-{self.rng.randrange(PRIVATE_PROJECTS)}"
        n = self.private_versions.get(project, 0) + 1
        self.private_versions[project] = n
        path = self.private_wheel(project, f"1.0.{n}")
        status = await self.upload(session, path, "upload", {200})
        if status == 200:
            self.stats.uploads_ok[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            self.private_listed.add(project)

    async def re_upload(self, session: aiohttp.ClientSession, same: bool) -> None:
        if not self.stats.uploads_ok:
            await self.new_version(session)
            return
        filename = self.rng.choice(sorted(self.stats.uploads_ok))
        project, version = filename.split("-")[0].replace("_", "-"), filename.split("-")[1]
        if same:
            path = self.private_wheel(project, version)
            await self.upload(session, path, "re-upload same bytes", {200})
        else:
            path = self.private_wheel(project, version, salt=f"x{self.rng.random()}")
            await self.upload(session, path, "re-upload other bytes", {409})

    async def bad_upload(self, session: aiohttp.ClientSession) -> None:
        """One entry of the table of malformed uploads; each must be a 4xx and store nothing."""
        case = self.rng.randrange(7)
        good = self.private_wheel("soak-private-0", "9.9.9")
        bad_dir = self.builds / "bad"
        bad_dir.mkdir(parents=True, exist_ok=True)
        if case == 0:
            await self.upload(
                session, good, "bad: wrong digest", {400}, fields={"sha256_digest": "0" * 64}
            )
        elif case == 1:
            await self.upload(session, good, "bad: name mismatch", {400}, fields={"name": "other"})
        elif case == 2:
            junk = bad_dir / "soak_private_0-9.9.9-py3-none-any.whl"
            junk.write_bytes(os.urandom(2000))
            await self.upload(session, junk, "bad: not a zip", {400})
        elif case == 3:
            junk = bad_dir / "soak_private_0-9.9.9.tar.gz"
            junk.write_bytes(os.urandom(2000))
            await self.upload(session, junk, "bad: sdist of random bytes", {400})
        elif case == 4:
            await self.request(
                session,
                "bad: garbage multipart",
                "POST",
                "/",
                {400},
                data=os.urandom(500),
                headers={
                    "Content-Type": "multipart/form-data; boundary=xyz",
                    "Authorization": basic(USER, PASSWORD),
                },
            )
        elif case == 5:
            await self.request(
                session,
                "bad: traversal",
                "GET",
                "/packages/..%2f..%2fetc/passwd",
                {400, 404},
            )
        else:
            await self.upload(
                session, good, "bad: unknown action", {400}, fields={":action": "explode"}
            )

    async def wrong_password(self, session: aiohttp.ClientSession) -> None:
        path = self.private_wheel("soak-private-1", "8.8.8")
        await self.upload(
            session,
            path,
            "wrong password",
            {401, 429},
            auth=basic(USER, f"wrong-{self.rng.randrange(5)}"),
        )

    async def client_loop(self, session: aiohttp.ClientSession) -> None:
        actions: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (30, lambda: self.page(session)),
            (25, lambda: self.file(session, metadata=False)),
            (8, lambda: self.file(session, metadata=True)),
            (3, lambda: self.root(session)),
            (4, lambda: self.new_version(session)),
            (2, lambda: self.re_upload(session, same=True)),
            (2, lambda: self.re_upload(session, same=False)),
            (4, lambda: self.bad_upload(session)),
            (3, lambda: self.wrong_password(session)),
        ]
        weights = [w for w, _ in actions]
        while time.monotonic() < self.deadline:
            (_, action) = self.rng.choices(actions, weights)[0]
            await action()

    async def root(self, session: aiohttp.ClientSession) -> None:
        await self.request(session, "root", "GET", "/simple/", {200})

    # -- installs, faults, kills, sampling ----------------------------------------------------

    async def installs(self) -> None:
        assert self.server is not None
        n = 0
        while time.monotonic() + 60 < self.deadline:
            await asyncio.sleep(self.rng.uniform(15, 30))
            n += 1
            tmp = self.work / f"install-{n}"
            env = client_env(tmp)
            target = tmp / "target"
            tool = "pip" if n % 2 else "uv"
            if tool == "pip":
                cmd = [sys.executable, "-m", "pip", "install", "--no-input", "--quiet"]
            else:
                cmd = [str(Path(sys.executable).with_name("uv")), "pip", "install", "--quiet"]
            cmd += ["--target", str(target), "--index-url", self.server.index_url, "soak-app"]
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 240)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                err = b"timed out"
            ok = proc.returncode == 0
            ended = time.monotonic()
            excused = self.stats.in_fault(started) or self.stats.in_fault(ended)
            if ok:
                self.stats.installs[f"{tool} ok"] += 1
            elif excused or any(started <= k <= ended for k in self.stats.kills):
                self.stats.installs[f"{tool} failed during a fault or kill"] += 1
            else:
                self.stats.installs[f"{tool} failed outside faults"] += 1
                self.stats.unexpected[f"{tool} install failed: {err.decode()[-300:]}"] += 1
            shutil.rmtree(tmp, ignore_errors=True)

    async def faults(self) -> None:
        """Quiet for 20-40 s, then one fault for 8-15 s; repeat until 40 s before the end."""
        while True:
            await asyncio.sleep(self.rng.uniform(20, 40))
            if time.monotonic() + 40 > self.deadline:
                return
            kind = self.rng.choice(FAULTS)
            window = Window(kind, time.monotonic())
            self.stats.fault_windows.append(window)
            await self.set_fault(kind, on=True)
            await asyncio.sleep(self.rng.uniform(8, 15))
            await self.set_fault(kind, on=False)
            window.end = time.monotonic()

    async def set_fault(self, kind: str, *, on: bool) -> None:
        fake = self.fake
        if kind == "down":
            await asyncio.to_thread(fake.stop if on else fake.start)
        elif kind == "stall":
            fake.delay = 10.0 if on else 0.0
        elif kind == "truncate":
            fake.truncate_files = on
        elif kind == "corrupt":
            fake.wrong_hash = on
        elif kind == "garbage":
            fake.garbage = on
        elif kind == "status503":
            fake.status = 503 if on else None

    async def kill_workers(self) -> None:
        assert self.server is not None
        if self.args.workers < 2:
            return
        while True:
            await asyncio.sleep(self.rng.uniform(45, 90))
            if time.monotonic() + 30 > self.deadline:
                return
            workers = [p for p in process_tree(self.server.pid) if p != self.server.pid]
            if not workers:
                continue
            self.stats.kills.append(time.monotonic())
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(workers), signal.SIGKILL)

    async def sample(self) -> None:
        assert self.server is not None
        while time.monotonic() < self.deadline:
            pids = process_tree(self.server.pid)
            fds = 0
            for pid in pids:
                try:
                    fds += sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
                except OSError:
                    continue
            self.stats.peak_fds = max(self.stats.peak_fds, fds)
            self.stats.peak_rss = max(self.stats.peak_rss, tree_rss(self.server.pid))
            await asyncio.sleep(1.0)

    # -- audit ---------------------------------------------------------------------------------

    async def audit(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """After the run, with the upstream healthy: nothing lost, nothing corrupt."""
        assert self.server is not None
        out = collections.Counter[str]()
        root = self.server.config.parent
        for blob in (root / "cache" / "files").glob("*/*"):
            if len(blob.name) != 64:
                continue  # temp files and locks are not blobs
            out["blobs checked"] += 1
            if await asyncio.to_thread(_sha256, blob) != blob.name:
                out["blobs corrupt"] += 1
        listed: dict[str, str] = {}
        for i in range(PRIVATE_PROJECTS):
            async with session.get(
                f"{self.server.url}/simple/soak-private-{i}/", headers={"Accept": JSON_ACCEPT}
            ) as resp:
                if resp.status != 200:
                    continue
                doc = await resp.json(content_type=None)
            for f in doc["files"]:
                listed[f["filename"]] = f["hashes"]["sha256"]
        for path in (root / "packages").rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            out["private files checked"] += 1
            digest = await asyncio.to_thread(_sha256, path)
            if path.name in listed and listed[path.name] != digest:
                out["private files corrupt (bytes differ from the listed sha256)"] += 1
        by_sha = {sha: name for name, sha in listed.items()}
        for filename, sha in self.stats.uploads_ok.items():
            out["accepted uploads checked"] += 1
            served = by_sha.get(sha)
            if served is None:
                out["accepted uploads lost (not listed)"] += 1
                continue
            project = filename.split("-")[0].replace("_", "-")
            async with session.get(f"{self.server.url}/packages/{project}/{served}") as resp:
                body = await resp.read()
            if resp.status != 200 or hashlib.sha256(body).hexdigest() != sha:
                out["accepted uploads corrupt or unreadable"] += 1
        return dict(out)

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> int:
        self.fake.start()
        self.populate_upstream()
        self.server = self.start_server()
        self.deadline = time.monotonic() + self.args.minutes * 60
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks = [
                asyncio.create_task(self.client_loop(session)) for _ in range(self.args.concurrency)
            ]
            side = [
                asyncio.create_task(t)
                for t in (self.installs(), self.faults(), self.kill_workers(), self.sample())
            ]
            await asyncio.gather(*tasks)
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            for w in self.stats.fault_windows:  # heal whatever was on when the clock ran out
                if w.end == float("inf"):
                    await self.set_fault(w.kind, on=False)
                    w.end = time.monotonic()
            await asyncio.sleep(2)
            audit = await self.audit(session)
        log_tail = self.server.log_text()
        self.server.stop()
        self.fake.close()
        return self.report(audit, log_tail)

    def report(self, audit: dict[str, int], log_text: str) -> int:
        s = self.stats
        elapsed = time.monotonic() - s.started
        lat = sorted(s.latencies)

        def p(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0

        fives = sum(n for cls, n in s.by_class.items() if cls == "5xx")
        unexpected_5xx = sum(n for k, n in s.unexpected.items() if " -> 5" in k)
        lost = sum(n for k, n in audit.items() if "lost" in k or "corrupt" in k)
        print(
            f"\n== proxyindex soak: {elapsed / 60:.1f} min, {self.args.workers} workers, "
            f"{self.args.concurrency} concurrent clients, seed {self.args.seed}"
        )
        print(f"requests served: {s.requests:,} ({s.requests / elapsed:.0f}/s)")
        print("by status class: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s.by_class.items())))
        print("by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s.by_kind.items())))
        print(f"5xx: {fives:,} in all, {unexpected_5xx} outside upstream fault windows (goal 0)")
        print(f"latency: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {p(1.0):.0f} ms")
        print(f"peak RSS {s.peak_rss / 2**20:.0f} MB, peak open fds {s.peak_fds} (server tree)")
        windows = ", ".join(f"{w.kind} {w.end - w.start:.0f}s" for w in s.fault_windows)
        print(f"fault windows: {windows or 'none'}")
        print(f"workers killed: {len(s.kills)}")
        print(
            "installs: " + (", ".join(f"{k} {v}" for k, v in sorted(s.installs.items())) or "none")
        )
        print(f"corrupt files served with 200: {s.corrupt_served} (goal 0)")
        print("audit: " + ", ".join(f"{k} {v}" for k, v in sorted(audit.items())))
        print(f"lost or corrupt: {lost} (goal 0)")
        tracebacks = log_text.count("Traceback")
        print(f"server log: {len(log_text.encode()) / 1024:.0f} KiB, {tracebacks} tracebacks")
        for excerpt in _traceback_excerpts(log_text):
            print("  traceback: " + excerpt)
        if s.unexpected:
            print("unexpected outcomes:")
            for key, n in s.unexpected.most_common(20):
                print(f"  {n:6d}  {key}")
        return 1 if (lost or s.corrupt_served or unexpected_5xx) else 0


def _traceback_excerpts(text: str, most: int = 5) -> list[str]:
    """The distinct last lines of the server's tracebacks, each with the log line before it."""
    lines = text.splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        end = i + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end]):
            end += 1
        last = lines[end] if end < len(lines) else "?"
        found.setdefault(last, f"{lines[i - 1][:160] if i else ''} ... {last[:200]}")
    return list(found.values())[:most]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="proxyindex-soak-"))
    try:
        return asyncio.run(Soak(args, work).run())
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
