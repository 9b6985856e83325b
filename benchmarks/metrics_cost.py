"""What ``/metrics`` costs (issue 11 §1): cached-page throughput with and without the metrics,
and the time of one scrape with ``--workers 2``.

Starts the fake upstream of the tests (one project, one wheel) and ``proxyindex serve`` on
127.0.0.1, warms the project's page, then runs a closed-loop load on it (``measure.load``:
wrk if installed, else an aiohttp client in this process) for each variant, alternating, and
prints medians of req/s, p50 latency and the server's CPU time per request (from
/proc: the figure that other load on a shared machine disturbs least):

- ``before``: the code of ``--ref`` (default ``main``), exported with ``git archive``: no
  metrics at all;
- ``metrics``: this tree, one process (counters in memory);
- ``metrics, 2 workers``: this tree, ``--workers 2`` (prometheus-client's multiprocess mode:
  every counter update writes to a memory-mapped file).

Then, on the 2-worker server, after the load (every route and label seen), the time of one
``GET /metrics`` (median of ``--scrapes`` sequential scrapes), its size and sample count.

    .venv/bin/python benchmarks/metrics_cost.py                       # ~1 minute
    .venv/bin/python benchmarks/metrics_cost.py --duration 10 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from measure import check_local, cpu_seconds, load  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.fakepypi import FakePyPI  # noqa: E402
from tests.serverproc import ProxyServer, write_config  # noqa: E402

_PAGE = "/simple/bench-pkg/"


def _source(ref: str, tmp: Path) -> Path:
    """``ref``'s ``proxyindex/`` package, exported into ``tmp`` (importable from there)."""
    out = tmp / f"src-{ref.replace('/', '_')}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "proxyindex"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


@contextmanager
def _server(
    folder: Path, upstream: str, workers: int, source: Path | None = None
) -> Iterator[ProxyServer]:
    config = write_config(
        folder / "config.toml",
        server={"host": "127.0.0.1", "workers": workers, "access_log": ""},
        storage={"packages_dir": "packages", "cache_dir": "cache"},
        upstream={"url": upstream, "check_interval": 0, "prefetch": False},
    )
    env = {"PYTHONPATH": str(source)} if source is not None else None
    server = ProxyServer(config, env=env)
    server.start()
    try:
        check_local(server.url)
        for _ in range(4 * workers):  # every worker renders the page once
            _get(server.url + _PAGE)
        yield server
    finally:
        server.stop()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - http://127.0.0.1
        body: bytes = resp.read()
        return body


def _scrape_times(url: str, count: int) -> tuple[float, int, int]:
    """Median seconds of one scrape, its size in bytes and its number of samples."""
    times = []
    body = b""
    for _ in range(count):
        started = time.perf_counter()
        body = _get(url + "/metrics")
        times.append(time.perf_counter() - started)
    samples = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
    return statistics.median(times), len(body), samples


def _per_request(count: int, multiprocess_dir: Path | None) -> float:
    """Microseconds of the metric updates one cached page request makes (the middleware's
    counter and histogram, the body's bytes, the page-cache hit), ``count`` times over."""
    from proxyindex.metrics import Metrics, enable_multiprocess

    if multiprocess_dir is not None:
        enable_multiprocess(multiprocess_dir)
    metrics = Metrics(multiprocess_dir)
    route = "/simple/{name}/"
    started = time.perf_counter()
    for _ in range(count):
        metrics.answered(route, "GET", 200, 0.0012)
        metrics.served(route, 1234)
        metrics.cache_lookup("page", "hit")
    return (time.perf_counter() - started) / count * 1e6


def _micro(count: int, tmp: Path) -> tuple[float, float]:
    """(one process, multiprocess mode) microseconds per request, each in a fresh process."""
    results = []
    for mode in ("memory", "multiprocess"):
        out = subprocess.run(
            [sys.executable, __file__, "--micro-child", mode, str(count), str(tmp / mode)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results.append(float(out.stdout.strip()))
    return results[0], results[1]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--micro-child":
        mode, count, folder = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        print(_per_request(count, folder if mode == "multiprocess" else None))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ref", default="main", help="commit without metrics (default main)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, FakePyPI() as fake:
        tmp = Path(name)
        fake.add_wheel("bench-pkg", "1.0")
        before = _source(args.ref, tmp)
        variants = [
            (f"before ({args.ref}), 1 process", 1, before),
            ("metrics, 1 process", 1, None),
            (f"before ({args.ref}), 2 workers", 2, before),
            ("metrics, 2 workers", 2, None),
        ]
        rates: dict[str, list[float]] = {label: [] for label, _w, _s in variants}
        p50: dict[str, list[float]] = {label: [] for label, _w, _s in variants}
        cpu_us: dict[str, list[float]] = {label: [] for label, _w, _s in variants}
        scrape: tuple[float, int, int] | None = None
        for rep in range(args.repeat):
            for n, (label, workers, source) in enumerate(variants):
                folder = tmp / f"run{rep}-{n}"
                with _server(folder, fake.simple_url, workers, source) as server:
                    cpu = cpu_seconds(server.pid)
                    result = load(server.url + _PAGE, {}, args.connections, args.duration)
                    cpu = cpu_seconds(server.pid) - cpu
                    if result.errors:
                        raise SystemExit(f"{label}: {result.errors} errors")
                    rates[label].append(result.req_s)
                    p50[label].append(result.p50_ms)
                    cpu_us[label].append(cpu / result.requests * 1e6)
                    if source is None and workers == 2:
                        scrape = _scrape_times(server.url, args.scrapes)
                print(
                    f"  rep {rep + 1} {label}: {result.req_s:,.0f} req/s, "
                    f"{cpu_us[label][-1]:.0f} us CPU/request",
                    flush=True,
                )
        print(f"\ncached page {_PAGE}, {args.connections} connections, {args.duration:.0f} s, "
              f"median of {args.repeat} ({load.__module__}.load: wrk if installed)")  # fmt: skip
        print("| variant | req/s | p50 latency | server CPU per request |")
        print("|---|---|---|---|")
        for label in rates:
            print(
                f"| {label} | {statistics.median(rates[label]):,.0f} | "
                f"{statistics.median(p50[label]):.1f} ms | "
                f"{statistics.median(cpu_us[label]):.0f} us |"
            )
        memory, mmapped = _micro(100_000, tmp)
        print(
            f"\nmetric updates of one cached page request (3 calls), 100,000 times: "
            f"{memory:.1f} us in one process, {mmapped:.1f} us in multiprocess mode"
        )
        if scrape is not None:
            seconds, size, samples = scrape
            print(
                f"\none GET /metrics with 2 workers, after the load: {seconds * 1000:.1f} ms "
                f"(median of {args.scrapes}), {size:,} bytes, {samples} samples"
            )


if __name__ == "__main__":
    main()
