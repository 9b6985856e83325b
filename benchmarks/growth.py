"""Growth curves (issue 9): how each cost grows with the size of everything else.

    .venv/bin/python benchmarks/growth.py [--scale small|full] [--only root,generation,...]
                                          [--sizes root=100k,700k,2M] [--reps 3]

The goal of issue 9 is cost that grows no faster than the work: per-request and per-change work
flat in the size of everything else, memory bounded by configuration. For each of its growth
items this measures a curve, N against time (or RSS), and fits the exponent k of
``cost ~ N**k`` (least-squares slope of log(cost) against log(N)): k ~ 0 is flat, 1 linear,
above 1 superlinear. Each item prints a Markdown table with its fitted exponents; a summary
table (item, metric, exponent, goal) comes last.

Items (``--only``):

- ``root``: N upstream root names. ``GET /simple/`` time to first byte (the rebuild happens
  before the answer starts; the body itself is O(N) by nature) when nothing changed, after an
  upload of a new version of an existing private project, and after an upload of a new
  private name; and how many root rebuilds the server logged for those uploads.
- ``generation``: a private project of N files; its page (a conditional GET, so 304 and no
  body) when nothing changed and after an upload to an unrelated private project.
- ``pypijson``: an upstream project of N files; ``/pypi/<name>/json`` again (200, full body)
  and with ``If-None-Match`` (goal: 304 without building it).
- ``memory``: the same upstream project of N files, on a fresh server: RSS of the server's
  process tree when idle, after its page as HTML, after JSON and after ``/pypi/<name>/json``.
- ``pages``: N private projects of 10 files; RSS growth after asking each page once as HTML
  and once as JSON (the caches are capped by entry counts, not bytes).
- ``firsthash``: N real (tiny) wheels dropped into the packages folder of a running server
  (an atomic rename of a folder); the first ``GET /simple/<name>/`` (pip gives up at 15 s).
- ``upload``: N private files (stand-ins, 10 per project folder, hashes known beforehand);
  the latency of an upload (a new version of another project), the idle poll
  (``PrivateStorage.rescan`` with nothing changed, in this process) and the CPU the idle
  server spends per second (its 1 s poll).
- ``eviction``: N blobs in a ``BlobStore`` folder (in this process): ``shrink`` with nothing
  to evict (the walk the first download after every start pays) and ``shrink`` with the
  cache 1 byte over its limit (it evicts down to 90%: ~10% of N).
- ``filereq``: an upstream project of N files; the median latency of sequential HEADs of one
  small cached file of it, and GET requests per second (the page is searched for the filename
  on every request).

Everything runs on 127.0.0.1: the fake upstream (``fakeupstream.py``, no added latency) and
the real server (``tests.serverproc.ProxyServer``, a ``proxyindex serve`` subprocess of this
checkout) are started fresh for every N. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import math
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from measure import cpu_seconds, load, process_tree, stop_process, tree_rss  # noqa: E402

from proxyindex.private.storage import PrivateStorage  # noqa: E402
from proxyindex.upstream.cache import BlobStore  # noqa: E402
from tests.serverproc import ProxyServer, write_config  # noqa: E402
from tests.wheelmaker import make_wheel  # noqa: E402

ITEMS = (
    "root",
    "generation",
    "pypijson",
    "memory",
    "pages",
    "firsthash",
    "upload",
    "eviction",
    "filereq",
)
SCALES: dict[str, dict[str, tuple[int, ...]]] = {
    # A few minutes on 2 cores in all: for development and smoke runs.
    "small": {
        "root": (20_000, 50_000, 100_000),
        "generation": (1_000, 3_000, 10_000),
        "pypijson": (1_000, 3_000, 10_000),
        "memory": (1_000, 3_000, 10_000),
        "pages": (500, 2_000, 6_000),
        "firsthash": (300, 1_000, 3_000),
        "upload": (3_000, 10_000, 30_000),
        "eviction": (5_000, 10_000, 20_000),
        "filereq": (1_000, 3_000, 10_000),
    },
    # The sizes the issue quotes.
    "full": {
        "root": (100_000, 700_000, 2_000_000),
        "generation": (1_000, 10_000, 30_000),
        "pypijson": (1_000, 10_000, 30_000),
        "memory": (1_000, 10_000, 30_000),
        "pages": (1_000, 4_000, 16_000),
        "firsthash": (1_000, 3_000, 10_000),
        "upload": (10_000, 100_000, 300_000),
        "eviction": (10_000, 50_000, 100_000),
        "filereq": (1_000, 10_000, 30_000),
    },
}
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
UPSTREAM_PROJECT = "growth-up"  # the one real project of the fake upstream
UPSTREAM_WHEEL = "growth_up-1.0-py3-none-any.whl"
REQUEST_TIMEOUT = 600.0  # seconds: no single request may hang the run longer
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[growth +{time.monotonic() - STARTED:6.0f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fitting and tables


def exponent(ns: Sequence[float], ys: Sequence[float | None]) -> float | None:
    """Least-squares slope of log(y) against log(N): k in ``y ~ N**k`` (None: too few points)."""
    points = [(math.log(n), math.log(y)) for n, y in zip(ns, ys, strict=True) if n > 0 and y]
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


@dataclass
class Fit:
    metric: str
    values: list[float | None]
    goal: str


@dataclass
class Curve:
    item: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ns: list[int] = field(default_factory=list)
    fits: list[Fit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def fit(self, metric: str, goal: str) -> Fit:
        for f in self.fits:
            if f.metric == metric:
                return f
        made = Fit(metric, [], goal)
        self.fits.append(made)
        return made

    def add(self, n: int, cells: Sequence[str], **values: float | None) -> None:
        """One row; ``values`` maps a fit's metric (declared with :meth:`fit`) to its y."""
        self.ns.append(n)
        self.rows.append([f"{n:,}", *cells])
        for f in self.fits:
            f.values.append(values.get(f.metric))
        progress(f"{self.item} N={n:,}: " + ", ".join(cells))

    def render(self) -> str:
        out = [f"### {self.item}: {self.title}", ""]
        out.append("| " + " | ".join(self.columns) + " |")
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in self.rows)
        out.append("")
        for f in self.fits:
            k = exponent(self.ns, f.values)
            out.append(f"- exponent of {f.metric}: **{_k(k)}** (goal: {f.goal})")
        out.extend(f"- {note}" for note in self.notes)
        if self.error:
            out.append(f"- FAILED: {self.error}")
        return "\n".join(out) + "\n"


def _k(k: float | None) -> str:
    return "n/a" if k is None else f"{k:.2f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def mb(nbytes: float) -> str:
    if abs(nbytes) < 1e6:
        return f"{nbytes / 1e3:,.0f} kB"
    return f"{nbytes / 1e6:,.1f} MB"


def parse_count(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return round(float(m.group(1)) * factor)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    ttfb: float  # seconds until the status line and headers arrived
    total: float  # seconds until the last byte


def ask(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Answer:
    """One request on a new connection to 127.0.0.1 (blocking), timed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        ttfb = time.perf_counter() - started
        data = resp.read()
        total = time.perf_counter() - started
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, ttfb, total)
    finally:
        conn.close()


def ask_retrying(port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    """``ask``, retrying a 503 after its Retry-After as pip does (a private page whose files
    are still being hashed); the answer's times cover every attempt."""
    started = time.perf_counter()
    for _attempt in range(100):
        answer = ask(port, path, headers)
        if answer.status != 503:
            break
        time.sleep(float(answer.headers.get("retry-after", "1")))
    answer.total = time.perf_counter() - started
    return answer


def expect(answer: Answer, *statuses: int) -> Answer:
    if answer.status not in statuses:
        raise RuntimeError(f"HTTP {answer.status}: {answer.body[:300]!r}")
    return answer


def keepalive_latency(port: int, method: str, path: str, count: int) -> float:
    """Median seconds of ``count`` sequential requests on one keep-alive connection (the
    least client overhead there is: what the server spends per request shows)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request(method, path)
            resp = conn.getresponse()
            resp.read()
            times.append(time.perf_counter() - started)
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status} for {method} {path}")
    finally:
        conn.close()
    return statistics.median(times)


def upload(port: int, wheel: Path) -> Answer:
    """The legacy upload API (what twine sends): a multipart POST to ``/``."""
    data = wheel.read_bytes()
    name, version = wheel.name.split("-")[:2]
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name.replace("_", "-"),
        "version": version,
        "filetype": "bdist_wheel",
        "pyversion": "py3",
        "sha256_digest": hashlib.sha256(data).hexdigest(),
    }
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{wheel.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return expect(ask(port, "/", headers, method="POST", body=b"".join(parts)), 200)


def median_of(reps: int, func: Callable[[], float]) -> float:
    return statistics.median(func() for _ in range(reps))


def median_get(
    reps: int, port: int, path: str, headers: dict[str, str] | None = None, status: int = 200
) -> float:
    """Median seconds of ``reps`` GETs (to the last byte), each checked for ``status``."""
    return median_of(reps, lambda: expect(ask(port, path, headers), status).total)


# --------------------------------------------------------------------------- processes


def wait_idle(pid: int, *, busy: float = 0.25, quiet: int = 3, timeout: float = 900.0) -> float:
    """Block until the process tree used under ``busy`` of a core in each of ``quiet``
    consecutive seconds (background work such as the start-up warm-up is done; one quiet
    second is not enough on a shared machine, where a busy process may get little CPU);
    returns the seconds waited."""
    started = time.monotonic()
    calm = 0
    while calm < quiet and time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        calm = calm + 1 if cpu_seconds(pid) - before < busy else 0
    return time.monotonic() - started


class Upstream:
    """``fakeupstream.py`` as a subprocess: one real project (``growth-up``, one tiny wheel)
    padded with ``extra_files`` fake old sdists, and ``root_names`` synthetic root names."""

    def __init__(self, wheels: Path, workdir: Path, root_names: int, extra_files: int) -> None:
        self.cmd = [
            sys.executable,
            str(HERE / "fakeupstream.py"),
            "--wheels",
            str(wheels),
            "--workdir",
            str(workdir),  # shared between runs: big root listings are built once
            "--latency-ms",
            "0",
            "--root-names",
            str(root_names),
            "--extra-files",
            str(extra_files),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Upstream:
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stream = self.proc.stderr
        assert stream is not None

        def drain() -> None:
            for line in stream:
                lines.put(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 600
        seen = []
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                seen.append(line)
                if m := re.search(r"listening on (http://\S+)", line):
                    self.url = m.group(1)
                    return self
        stop_process(self.proc)  # type: ignore[arg-type]
        raise RuntimeError("fakeupstream did not start:\n" + "".join(seen[-20:]))

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # type: ignore[arg-type]


@dataclass
class Context:
    work: Path  # everything of this run; removed at the end unless --keep
    upstream_dir: Path  # prebuilt root listings, kept between runs
    wheels: Path
    reps: int
    memory_cache_size: int | None = None  # server.memory_cache_size, if given
    builds: Path = field(init=False)
    _counter: int = 0

    def __post_init__(self) -> None:
        self.builds = self.work / "builds"

    def fresh_dir(self, label: str) -> Path:
        self._counter += 1
        path = self.work / f"{self._counter:02d}-{label}"
        path.mkdir(parents=True)
        return path

    def upstream(self, root_names: int = 100, extra_files: int = 0) -> Upstream:
        return Upstream(self.wheels, self.upstream_dir, root_names, extra_files)

    def wheel(self, name: str, version: str, payload: int = 0) -> Path:
        """A real wheel (``payload`` bytes of incompressible data in its module)."""
        out = self.builds / f"{name}-{version}-{payload}"
        data = hashlib.sha256(f"{name}{version}".encode()).hexdigest() * (payload // 64 + 1)
        module = f"{name.replace('-', '_')}/__init__.py"
        return make_wheel(out, name, version, modules={module: f"V = {data[:payload]!r}\n"})


@contextlib.contextmanager
def proxy(ctx: Context, where: Path, upstream_url: str) -> Iterator[ProxyServer]:
    """A real ``proxyindex serve`` (one worker, prefetch off so only the measured requests
    reach the upstream, anonymous uploads on: nothing else listens on 127.0.0.1)."""
    section: dict[str, object] = {"host": "127.0.0.1"}
    if ctx.memory_cache_size is not None:
        section["memory_cache_size"] = ctx.memory_cache_size
    config = write_config(
        where / "config.toml",
        server=section,
        storage={"packages_dir": str(where / "packages"), "cache_dir": str(where / "cache")},
        upstream={"url": upstream_url, "prefetch": False, "timeout": 300},
        auth={"anonymous_upload": True},
    )
    server = ProxyServer(config, startup_timeout=600)
    started = time.monotonic()
    server.start()
    progress(f"  proxyindex up in {time.monotonic() - started:.1f}s ({server.url})")
    try:
        yield server
    finally:
        server.stop()


def stand_ins(folder: Path, stem: str, count: int, start: int = 0) -> None:
    """``count`` tiny files with valid wheel names (where only names, stat and hashing matter)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        (folder / f"{stem}-1.0.{i}-py3-none-any.whl").write_bytes(b"stand-in %d" % i)


# --------------------------------------------------------------------------- the items


def bench_root(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "root",
        "`GET /simple/` after a private change, vs upstream root names",
        [
            "upstream names",
            "first GET (fetch + build)",
            "unchanged (TTFB)",
            "after new version (TTFB)",
            "after new name (TTFB)",
            "rebuilds logged (version / name)",
            "root size (gzip)",
        ],
    )
    curve.fit("unchanged TTFB", "0 (reference)")
    curve.fit("TTFB after a new version", "0: the root is not touched")
    curve.fit("TTFB after a new name", "0: O(change), not O(upstream names)")
    headers = {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip"}
    for n in sizes:
        where = ctx.fresh_dir(f"root-{n}")
        shutil.copytree(ctx.wheel("growth-priv", "1.0").parent, where / "packages" / "growth-priv")
        progress(f"root N={n:,}: starting the fake upstream (builds the listing once)")
        with ctx.upstream(root_names=n) as up, proxy(ctx, where, up.simple_url) as srv:
            mark = srv.log_mark()
            first = expect(ask(srv.port, "/simple/", headers), 200)
            srv.wait_for_log(r"fetched \d+ names of upstream", timeout=REQUEST_TIMEOUT, since=mark)
            full = expect(ask(srv.port, "/simple/", headers), 200)  # waits for the build
            first_total = first.total + full.total
            unchanged = median_of(
                ctx.reps, lambda: expect(ask(srv.port, "/simple/", headers), 200).ttfb
            )
            after_version, after_name = [], []
            mark = srv.log_mark()
            for i in range(ctx.reps):
                upload(srv.port, ctx.wheel("growth-priv", f"1.{i + 1}"))
                after_version.append(expect(ask(srv.port, "/simple/", headers), 200).ttfb)
            time.sleep(0.5)  # the server's log reaches us through a pipe
            rebuilds_version = srv.log_since(mark).count("root list rebuilt")
            mark = srv.log_mark()
            for i in range(ctx.reps):
                upload(srv.port, ctx.wheel(f"growth-new-{i}", "1.0"))
                after_name.append(expect(ask(srv.port, "/simple/", headers), 200).ttfb)
            time.sleep(0.5)
            rebuilds_name = srv.log_since(mark).count("root list rebuilt")
            tv, tn = statistics.median(after_version), statistics.median(after_name)
            curve.add(
                n,
                [
                    secs(first_total),
                    ms(unchanged),
                    ms(tv),
                    ms(tn),
                    f"{rebuilds_version}/{ctx.reps} / {rebuilds_name}/{ctx.reps}",
                    mb(len(full.body)),
                ],
                **{
                    "unchanged TTFB": unchanged,
                    "TTFB after a new version": tv,
                    "TTFB after a new name": tn,
                },
            )
    curve.notes.append(
        "TTFB: time to the first byte of the answer (pip's Accept, gzip), median of "
        f"{ctx.reps}; the rebuild happens before it, the O(N) body transfer after it"
    )
    return curve


def bench_generation(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "generation",
        "a private page after an upload to another project, vs that page's files",
        [
            "files on the page",
            "first GET (hashes)",
            "unchanged (304)",
            "unchanged (200, body)",
            "after unrelated upload (304)",
            "page size",
        ],
    )
    curve.fit("304 unchanged", "0 (reference)")
    curve.fit("304 after an unrelated upload", "0: invalidate per project")
    for n in sizes:
        where = ctx.fresh_dir(f"generation-{n}")
        stand_ins(where / "packages" / "growth-big", "growth_big", n)
        shutil.copytree(ctx.wheel("growth-other", "1.0").parent, where / "packages" / "other")
        with ctx.upstream() as up, proxy(ctx, where, up.simple_url) as srv:
            path = "/simple/growth-big/"
            first = expect(ask_retrying(srv.port, path), 200)
            wait_idle(srv.pid)
            etag = first.headers["etag"]
            cond = {"If-None-Match": etag}
            unchanged = median_get(ctx.reps, srv.port, path, cond, 304)
            body = median_get(ctx.reps, srv.port, path)
            after = []
            for i in range(ctx.reps):
                upload(srv.port, ctx.wheel("growth-other", f"1.{i + 1}"))
                after.append(expect(ask(srv.port, path, cond), 304).total)
            ta = statistics.median(after)
            curve.add(
                n,
                [secs(first.total), ms(unchanged), ms(body), ms(ta), mb(len(first.body))],
                **{"304 unchanged": unchanged, "304 after an unrelated upload": ta},
            )
    curve.notes.append(
        "stand-in files (names, stat and hashing matter, not contents); conditional GETs with "
        f"the page's ETag, so no body is sent; medians of {ctx.reps}"
    )
    return curve


def bench_bigpage(ctx: Context, sizes: dict[str, Sequence[int]], curves: dict[str, Curve]) -> None:
    """pypijson, memory and filereq share one server per N: an upstream page of N files."""
    memory = curves.get("memory")
    pypijson = curves.get("pypijson")
    filereq = curves.get("filereq")
    if memory:
        memory.fit("RSS after all three", "0: bounded by configuration (bytes)")
    if pypijson:
        pypijson.fit("again (200)", "<= 1: linear in its own size (the body is O(N))")
        pypijson.fit("again (If-None-Match)", "0: cached like the simple pages")
    if filereq:
        filereq.fit("HEAD latency", "0: index by filename")
        filereq.fit("time per request under load", "0: index by filename")
    all_sizes = sorted({n for item in curves for n in sizes[item]})
    for n in all_sizes:
        where = ctx.fresh_dir(f"bigpage-{n}")
        with ctx.upstream(extra_files=n - 1) as up, proxy(ctx, where, up.simple_url) as srv:
            page = f"/simple/{UPSTREAM_PROJECT}/"
            api = f"/pypi/{UPSTREAM_PROJECT}/json"
            if memory and n in sizes["memory"]:
                wait_idle(srv.pid)
                idle = tree_rss(srv.pid)
                steps = []
                for path, headers in (
                    (page, {"Accept": "text/html"}),
                    (page, {"Accept": JSON_ACCEPT}),
                    (api, {}),
                ):
                    expect(ask(srv.port, path, headers), 200)
                    time.sleep(0.5)
                    steps.append(tree_rss(srv.pid))
                memory.add(
                    n,
                    [mb(idle), *(f"+{mb(s - idle)}" for s in steps), mb(steps[-1])],
                    **{"RSS after all three": steps[-1] - idle},
                )
            if pypijson and n in sizes["pypijson"]:
                first = expect(ask(srv.port, api), 200)
                etag = first.headers["etag"]
                again = median_get(ctx.reps, srv.port, api)
                cond = median_get(ctx.reps, srv.port, api, {"If-None-Match": etag}, 304)
                pypijson.add(
                    n,
                    [secs(first.total), ms(again), ms(cond), mb(len(first.body))],
                    **{"again (200)": again, "again (If-None-Match)": cond},
                )
            if filereq and n in sizes["filereq"]:
                expect(ask(srv.port, page, {"Accept": JSON_ACCEPT}), 200)
                path = f"/packages/{UPSTREAM_PROJECT}/{UPSTREAM_WHEEL}"
                expect(ask(srv.port, path), 200)  # downloaded and cached
                head = keepalive_latency(srv.port, "HEAD", path, 300)
                result = load(f"{srv.url}{path}", {}, connections=8, duration=3.0)
                per = 1 / result.req_s if result.req_s else None
                filereq.add(
                    n,
                    [
                        f"{head * 1e6:,.0f} us",
                        f"{result.req_s:,.0f}",
                        f"{result.p50_ms:.1f} / {result.p99_ms:.1f} ms",
                        f"{per * 1e6:,.0f} us" if per else "-",
                        str(result.errors),
                    ],
                    **{"HEAD latency": head, "time per request under load": per},
                )
    if filereq:
        filereq.notes.append(
            "HEAD: median of 300 sequential requests on one keep-alive connection; GET req/s: "
            "3 s closed loop, 8 connections, load tool: wrk if installed, else an aiohttp client "
            "in this process (shares the 2 cores); the file (1 kB) is the page's last entry"
        )
    if memory:
        memory.notes.append(
            "RSS summed over the server's process tree, 0.5 s after each answer; prefetch off"
        )


def bench_firsthash(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "firsthash",
        "first GET of a freshly dropped private project, vs its files",
        [
            "files dropped",
            "first answer (status)",
            "page served after (retrying on 503)",
            "503s",
            "again",
            "any answer over pip's 15 s timeout",
        ],
    )
    curve.fit("first answer", "0: no hashing on the request path")
    curve.fit("page served after", "<= 1: the hashing itself (goal: within pip's retries)")
    payload = ctx.wheel("growth-drop", "1.0", payload=4_000).read_bytes()
    for n in sizes:
        where = ctx.fresh_dir(f"firsthash-{n}")
        (where / "packages").mkdir()
        with ctx.upstream() as up, proxy(ctx, where, up.simple_url) as srv:
            staging = where / "packages" / ".growth-staging"  # dot folders are not scanned
            staging.mkdir()
            for i in range(n):
                (staging / f"growth_drop-1.0.{i}-py3-none-any.whl").write_bytes(payload)
            wait_idle(srv.pid)
            staging.rename(where / "packages" / "growth-drop")
            time.sleep(2.5)  # the 1 s poll sees it; the request should not have to
            path = "/simple/growth-drop/"
            asked = time.monotonic()
            deadline = asked + 300
            answers: list[Answer] = []
            while True:  # as pip does: a 503 is retried after its Retry-After
                answer = ask(srv.port, path)
                answers.append(answer)
                if answer.status == 200 or time.monotonic() > deadline:
                    break
                if answer.status == 503:
                    time.sleep(float(answer.headers.get("retry-after", "1")))
                else:
                    time.sleep(0.5)
            expect(answers[-1], 200)
            served = time.monotonic() - asked
            again = expect(ask(srv.port, path), 200)
            slowest = max(a.total for a in answers)
            curve.add(
                n,
                [
                    f"{secs(answers[0].total)} ({answers[0].status})",
                    secs(served),
                    str(sum(1 for a in answers if a.status == 503)),
                    ms(again.total),
                    "yes" if slowest > 15 else "no",
                ],
                **{"first answer": answers[0].total, "page served after": served},
            )
    curve.notes.append(
        f"real wheels of {len(payload):,} bytes (one wheel copied under N names), written to a "
        "dot folder and renamed into the packages folder; the GET is sent 2.5 s after, and "
        "retried after each 503's Retry-After as pip does"
    )
    return curve


def _prewarm(packages: Path, meta: Path) -> PrivateStorage:
    """Hash every private file in this process, in one transaction, as a long-running server
    would have: the server's start-up warm-up then only reads, and nothing competes with the
    timed requests. Returns the (scanned) storage; close it."""
    storage = PrivateStorage(packages, meta)
    storage.rescan()
    with storage._store.transact():
        storage.warm()
    return storage


def tree_heap(pid: int) -> int:
    """Anonymous memory (the heap: objects, malloc'd caches) in bytes, summed over ``pid``'s
    process tree: RSS also counts mapped files, once per mapping (SQLite's mmap of a database
    by each thread's connection counted the same file pages several times)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Anonymous:"):
                    total += int(line.split()[1]) * 1024
    return total


def bench_pages(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "pages",
        "RSS after asking for N different private pages (HTML and JSON each)",
        ["pages asked", "idle", "after", "growth", "per page", "heap growth (anonymous)"],
    )
    curve.fit("RSS growth", "0: bounded by configuration (bytes)")
    curve.fit("heap growth", "0: bounded by configuration (bytes)")
    per_project = 10
    for n in sizes:
        where = ctx.fresh_dir(f"pages-{n}")
        packages = where / "packages"
        _private_tree(packages, n * per_project, per_project)
        _prewarm(packages, where / "cache" / "private-meta").close()
        with ctx.upstream() as up, proxy(ctx, where, up.simple_url) as srv:
            wait_idle(srv.pid)
            idle, idle_heap = tree_rss(srv.pid), tree_heap(srv.pid)
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=REQUEST_TIMEOUT)
            try:
                for project in range(n):
                    for accept in ("text/html", JSON_ACCEPT):
                        conn.request(
                            "GET", f"/simple/stand{project:06d}/", headers={"Accept": accept}
                        )
                        resp = conn.getresponse()
                        resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status} for stand{project:06d}")
            finally:
                conn.close()
            time.sleep(0.5)
            after, heap = tree_rss(srv.pid), tree_heap(srv.pid) - idle_heap
            curve.add(
                n,
                [
                    mb(idle),
                    mb(after),
                    f"+{mb(after - idle)}",
                    f"{(after - idle) / n / 1e3:,.1f} kB",
                    f"{'+' if heap >= 0 else ''}{mb(heap)}",
                ],
                **{"RSS growth": max(after - idle, 1), "heap growth": max(heap, 1)},
            )
    curve.notes.append(
        f"private projects of {per_project} stand-in files each (hashed beforehand), each page "
        "asked once as HTML and once as JSON over one keep-alive connection; heap: the "
        "Anonymous line of /proc/PID/smaps_rollup (RSS counts a file mapped by several "
        "threads once per mapping)"
    )
    return curve


def _private_tree(root: Path, files: int, per_project: int = 10) -> None:
    for index in range(files):
        project, version = divmod(index, per_project)
        name = f"stand{project:06d}"
        folder = root / name
        if version == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}-1.{version}-py3-none-any.whl").write_bytes(b"not really a wheel")


def bench_upload(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "upload",
        "upload latency and the idle poll, vs private files",
        [
            "private files (folders)",
            "upload (median / max)",
            "poll, nothing changed (in-process)",
            "full walk (in-process; once a minute, or every poll without inotify)",
            "idle server CPU per second",
        ],
    )
    curve.fit("upload", "0: an upload refreshes its own project")
    curve.fit("poll", "0: O(changes)")
    curve.fit("full walk", "1: one stat per folder (the safety net)")
    curve.fit("idle CPU", "0: O(changes)")
    for n in sizes:
        where = ctx.fresh_dir(f"upload-{n}")
        packages = where / "packages"
        started = time.monotonic()
        _private_tree(packages, n)
        storage = _prewarm(packages, where / "cache" / "private-meta")
        walk = median_of(max(ctx.reps, 5), functools.partial(_timed, storage.rescan))
        storage.poll()  # the first poll walks and sets the watches (where inotify works)
        poll = median_of(max(ctx.reps, 5), functools.partial(_timed, storage.poll))
        storage.close()
        progress(f"upload N={n:,}: tree and hashes ready in {time.monotonic() - started:.0f}s")
        with ctx.upstream() as up, proxy(ctx, where, up.simple_url) as srv:
            progress(f"upload N={n:,}: server idle after {wait_idle(srv.pid):.0f}s")
            before, t0 = cpu_seconds(srv.pid), time.monotonic()
            time.sleep(5)
            idle_cpu = (cpu_seconds(srv.pid) - before) / (time.monotonic() - t0)
            times = [
                upload(srv.port, ctx.wheel("growth-upl", f"1.{i}")).total
                for i in range(max(ctx.reps, 5))
            ]
            median = statistics.median(times)
            curve.add(
                n,
                [
                    f"{ms(median)} / {ms(max(times))}",
                    ms(poll),
                    ms(walk),
                    f"{idle_cpu * 1000:,.0f} ms",
                ],
                upload=median,
                poll=poll,
                **{"full walk": walk},
                **{"idle CPU": idle_cpu or None},
            )
            curve.rows[-1][0] = f"{n:,} ({n // 10:,})"
    curve.notes.append(
        "stand-in files, 10 per project folder, hashed before the server starts; uploads are "
        "new versions of a project of its own (real wheels); idle CPU measured over 5 s with "
        "the clock tick's resolution (10 ms)"
    )
    return curve


def _timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def bench_eviction(ctx: Context, sizes: Sequence[int]) -> Curve:
    curve = Curve(
        "eviction",
        "`BlobStore.shrink` vs blobs in the cache (in-process)",
        [
            "blobs",
            "first shrink (indexes the folder once, if the index is missing)",
            "shrink after a restart, under the limit",
            "shrink, 1 byte over (evicted)",
            "per evicted blob",
        ],
    )
    curve.fit("walk under the limit", "0: no full walk")
    curve.fit("shrink 1 byte over", "<= 1: O(evicted), and ~10% of N are evicted")
    for n in sizes:
        where = ctx.fresh_dir(f"eviction-{n}")
        store = BlobStore(where / "files")
        base = time.time() - 86_400
        for i in range(n):
            sha = hashlib.sha256(b"%d" % i).hexdigest()
            path = store.path(sha)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"x" * 100)
            os.utime(path, (base + i, base + i))  # distinct last uses: a real LRU order
        total = n * 100
        # The first shrink indexes the folder if the blob index is missing (an upgrade);
        # timed apart. Then a new store, as after a restart: what every start paid before.
        indexing = _timed(functools.partial(store.shrink, 2 * total))
        store.close()
        store = BlobStore(where / "files")
        walk = median_of(
            ctx.reps, functools.partial(_timed, functools.partial(store.shrink, 2 * total))
        )
        started = time.perf_counter()
        left = store.shrink(total - 1)
        took = time.perf_counter() - started
        evicted = (total - left) // 100
        per = took / evicted if evicted else None
        store.close()
        curve.add(
            n,
            [
                ms(indexing),
                ms(walk),
                f"{ms(took)} ({evicted:,})",
                f"{per * 1e6:,.1f} us" if per else "-",
            ],
            **{"walk under the limit": walk, "shrink 1 byte over": took},
        )
    curve.notes.append(
        "blobs of 100 bytes named by sha256 in the store's layout, last-use times spread; "
        "shrink evicts down to 90% of the limit, so 1 byte over evicts ~10%"
    )
    return curve


# --------------------------------------------------------------------------- main


def git_describe() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "proxyindex"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (proxyindex/ modified)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--only", default=",".join(ITEMS), help="comma-separated: " + ",".join(ITEMS))
    p.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="ITEM=N,N,N",
        help="override an item's sizes, e.g. root=100k,700k,2M (repeatable)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per point (medians)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument(
        "--memory-cache-size",
        type=parse_count,
        default=None,
        help="server.memory_cache_size for the servers started (e.g. 64m); default: theirs",
    )
    args = p.parse_args(argv)
    only = [item.strip() for item in args.only.split(",") if item.strip()]
    unknown = set(only) - set(ITEMS)
    if unknown:
        p.error(f"unknown items: {', '.join(sorted(unknown))}")
    sizes: dict[str, Sequence[int]] = dict(SCALES[args.scale])
    for spec in args.sizes:
        item, _, values = spec.partition("=")
        if item not in ITEMS or not values:
            p.error(f"--sizes wants ITEM=N,N,...: {spec!r}")
        sizes[item] = sorted(parse_count(v) for v in values.split(","))

    upstream_dir = HERE / ".work" / "growth-upstream"
    upstream_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="proxyindex-growth-"))
    load_start = os.getloadavg()
    started = time.monotonic()
    header = (
        f"**growth curves (issue 9) — proxyindex at {git_describe()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, scale {args.scale}, "
        f"{os.cpu_count()} cores, load average at start {load_start[0]:.2f}**"
    )
    print(header + "\n", flush=True)
    curves: dict[str, Curve] = {}
    try:
        wheels = work / "upstream-wheels"
        make_wheel(wheels, UPSTREAM_PROJECT, "1.0")
        ctx = Context(work, upstream_dir, wheels, args.reps, args.memory_cache_size)
        runners: dict[str, Callable[[Context, Sequence[int]], Curve]] = {
            "root": bench_root,
            "generation": bench_generation,
            "pages": bench_pages,
            "firsthash": bench_firsthash,
            "upload": bench_upload,
            "eviction": bench_eviction,
        }
        shared = [item for item in ("memory", "pypijson", "filereq") if item in only]
        shared_curves = {
            "memory": Curve(
                "memory",
                "RSS of a fresh server asked for one upstream page, vs its files",
                ["files on the page", "idle", "after HTML", "after JSON", "after /pypi json", ""],
            ),
            "pypijson": Curve(
                "pypijson",
                "`/pypi/<name>/json` of an upstream project, vs its files",
                ["files", "first", "again (200)", "again (If-None-Match)", "body"],
            ),
            "filereq": Curve(
                "filereq",
                "requests per second for one cached file, vs files on its page",
                [
                    "files on the page",
                    "HEAD (median, sequential)",
                    "GET req/s",
                    "p50 / p99",
                    "per request",
                    "errors",
                ],
            ),
        }
        shared_curves["memory"].columns[-1] = "RSS total"
        for item in ITEMS:
            if item not in only or (item in shared and item != shared[0]):
                continue
            item_started = time.monotonic()
            if item in shared:
                wanted = {name: shared_curves[name] for name in shared}
                progress(
                    f"{'+'.join(shared)}: sizes {sorted({n for s in shared for n in sizes[s]})}"
                )
                try:
                    bench_bigpage(ctx, sizes, wanted)
                except Exception as exc:
                    traceback.print_exc()
                    for curve in wanted.values():
                        curve.error = f"{type(exc).__name__}: {exc}"
                for name, curve in wanted.items():
                    curves[name] = curve
                    curve.notes.append(
                        f"{'+'.join(shared)} took {time.monotonic() - item_started:.0f} s together"
                    )
                    print(curve.render(), flush=True)
                continue
            progress(f"{item}: sizes {list(sizes[item])}")
            try:
                curve = runners[item](ctx, sizes[item])
            except Exception as exc:
                traceback.print_exc()
                curve = Curve(item, "", ["N"], error=f"{type(exc).__name__}: {exc}")
            curve.notes.append(f"took {time.monotonic() - item_started:.0f} s")
            curves[item] = curve
            print(curve.render(), flush=True)
    finally:
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("### Summary: fitted exponents (cost ~ N^k)\n")
    print("| item | metric | N | exponent | goal |")
    print("|---|---|---|---|---|")
    for item in ITEMS:
        done = curves.get(item)
        if done is None:
            continue
        curve = done
        span = f"{min(curve.ns):,}-{max(curve.ns):,}" if curve.ns else "-"
        if curve.error:
            print(f"| {item} | FAILED: {curve.error[:80]} | {span} | - | - |")
        for f in curve.fits:
            print(
                f"| {item} | {f.metric} | {span} | {_k(exponent(curve.ns, f.values))} | {f.goal} |"
            )
    print(
        f"\n(total {time.monotonic() - started:.0f} s; load average at end "
        f"{os.getloadavg()[0]:.2f})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
