"""One big project page, cold and warm, against the REAL upstream: what a proxy adds per page.

    .venv/bin/python benchmarks/coldpages.py [--repeat 5] [--projects botocore,numpy,...]
        [--baseline-ref main] [--profile]

Issue 12's goal: "a cold big page costs at most ~1.5x the upstream's own answer time". For
each project and format (JSON, HTML) this asks, one right after the other so that the network
hits all alike (interleaved), with the same client (one aiohttp session, ``Accept-Encoding:
gzip``, the body read and decoded in full):

- *direct*: the upstream's own answer (its connection kept alive, as the proxy keeps its own);
- *cold*: a proxyindex that has never seen the project (a fresh server and cache folder per
  repetition, so the page is fetched, parsed, filtered, rendered and compressed), its
  connection to the upstream already open (as in a server that has been up a while);
- *warm*: the same request again (a rendering held in memory);
- with ``--baseline-ref REF``: the cold and warm requests also to a proxyindex at that commit,
  so a change is measured against its predecessor in the same minutes.

Each repetition starts new servers (one per format, so the first request in each format is
the cold one). Medians and the cold/direct ratio are printed. ``--profile`` instead runs the
cold path in this process (parse, guard, render, gzip) under cProfile on the upstream's page,
fetched once, and prints where the time goes.

Needs the network (the upstream's hosts only); the tests never do.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as harness  # noqa: E402

from proxyindex.config import DEFAULT_UPSTREAM  # noqa: E402

_ABSENT = "no-such-project-coldpages-warmup"
PROJECTS = ("botocore", "numpy", "boto3", "pandas", "django")
FORMATS = {
    "json": "application/vnd.pypi.simple.v1+json",
    "html": "text/html",
}


async def timed_get(session: aiohttp.ClientSession, url: str, accept: str) -> float:
    """Seconds until the whole (decoded) body of ``url`` has arrived."""
    started = time.perf_counter()
    async with session.get(url, headers={"Accept": accept, "Accept-Encoding": "gzip"}) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status}")
    return time.perf_counter() - started


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}x" if value is not None and ref else "-"


async def bench(args: argparse.Namespace) -> str:
    upstream = args.upstream.rstrip("/")
    base = upstream.removesuffix("/simple")
    projects = [p for p in args.projects.split(",") if p]
    targets = {"new": harness.ProxyIndex(base, [], None)}
    if args.baseline_ref:
        targets["base"] = harness.ProxyIndex(base, [], args.baseline_ref)
    for target in targets.values():
        target.prepare()
    times: dict[tuple[str, str, str], list[float]] = {}
    load = os.getloadavg()[0]
    async with aiohttp.ClientSession() as session:
        for project in projects:  # the upstream's connection opened before the first timing
            await timed_get(session, f"{upstream}/{project}/", FORMATS["json"])
        for rep in range(args.repeat):
            harness.log(f"coldpages: repetition {rep + 1}/{args.repeat}")
            running = {}
            try:
                for fmt in FORMATS:
                    for label, target in targets.items():
                        datadir = harness.WORK / "coldpages" / f"{label}-{fmt}"
                        run = await asyncio.to_thread(target.start, datadir)
                        running[(label, fmt)] = run
                        # Its connection to the upstream opened (a 404: nothing fetched ahead),
                        # as a server that has been up a while has it: the page's cost alone.
                        async with session.get(run.index_url + f"{_ABSENT}/") as resp:
                            await resp.read()
                for project in projects:
                    for fmt, accept in FORMATS.items():
                        key = (project, fmt)
                        direct = await timed_get(session, f"{upstream}/{project}/", accept)
                        times.setdefault((*key, "direct"), []).append(direct)
                        for label in targets:
                            url = running[(label, fmt)].index_url + f"{project}/"
                            cold = await timed_get(session, url, accept)
                            warm = await timed_get(session, url, accept)
                            times.setdefault((*key, f"cold {label}"), []).append(cold)
                            times.setdefault((*key, f"warm {label}"), []).append(warm)
            finally:
                for run in running.values():
                    run.stop()
    labels = list(targets)
    headers = ["page", "direct"]
    for label in labels:
        headers += [f"cold {label}", "cold/direct", f"warm {label}", "warm/direct"]
    rows = []
    for project in projects:
        for fmt in FORMATS:
            ref = _median(times[(project, fmt, "direct")])
            row = [f"{project} {fmt}", _ms(ref)]
            for label in labels:
                first = _median(times[(project, fmt, f"cold {label}")])
                again = _median(times[(project, fmt, f"warm {label}")])
                row += [_ms(first), _ratio(first, ref), _ms(again), _ratio(again, ref)]
            rows.append(row)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    names = ", ".join(
        f"{label} = {target.ref or 'working tree'}" for label, target in targets.items()
    )
    title = (
        f"**Cold pages, {upstream} — {when}, median of {args.repeat}, interleaved; {names}; "
        f"load average at start {load:.2f} (2 cores)**"
    )
    return f"{title}\n\n{harness.table(headers, rows)}"


def profile(args: argparse.Namespace) -> str:
    """The cold path of each page in this process, under cProfile."""
    import urllib.request

    from packaging.utils import canonicalize_name

    from proxyindex.config import PolicyConfig
    from proxyindex.guard.live import Guard
    from proxyindex.index.projects import RenderedPage
    from proxyindex.simple import SimpleFormat, parse_project, render_project

    guard = Guard(PolicyConfig())
    upstream = args.upstream.rstrip("/")
    profiler = cProfile.Profile()
    lines = []
    for project in (p for p in args.projects.split(",") if p):
        name = canonicalize_name(project)
        url = f"{upstream}/{name}/"
        request = urllib.request.Request(url, headers={"Accept": FORMATS["json"]})  # noqa: S310
        with urllib.request.urlopen(request) as resp:  # noqa: S310
            body, content_type = resp.read(), resp.headers["Content-Type"]
        started = time.perf_counter()
        profiler.enable()
        page = parse_project(body, content_type, url, name)
        page = guard.outcome_now(page).page
        for fmt in (SimpleFormat.JSON, SimpleFormat.HTML):
            RenderedPage.build(render_project(page, fmt, "http://127.0.0.1:1"), False)
        profiler.disable()
        took = time.perf_counter() - started
        lines.append(f"{project}: {len(page.files)} files, parse + guard + 2 renders: {took:.3f} s")
    out = Path(harness.WORK / "coldpages.prof")
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(out)
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cold and warm project pages vs the real upstream")
    p.add_argument("upstream", nargs="?", default=DEFAULT_UPSTREAM)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--projects", default=",".join(PROJECTS))
    p.add_argument("--baseline-ref", help="also measure proxyindex at this git commit/branch")
    p.add_argument("--profile", action="store_true", help="profile the cold path in-process")
    args = p.parse_args(argv)
    harness.WORK.mkdir(parents=True, exist_ok=True)
    if args.profile:
        print(profile(args))
        return 0
    try:
        print(asyncio.run(bench(args)))
    finally:
        shutil.rmtree(harness.WORK / "coldpages", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
