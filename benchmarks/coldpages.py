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

With fetch-ahead on (the default) a cold page also sets off the fetch of its dependencies'
pages and ``.metadata``, which compete for the same CPU, as they do for a real client;
``--no-prefetch`` measures the page alone. Each repetition starts new servers (one per
format, so the first request in each format is the cold one). Medians and the cold/direct
ratio are printed.

On a busy machine wall-clock times measure the load as much as the code, so two in-process
modes work on the upstream's pages fetched once: ``--cpu`` prints the thread CPU time of
each step (parse, JSON rendering, HTML rendering, each with its ETag and gzip body), least of
``--repeat`` rounds, for the working tree and ``--baseline-ref`` (each in its own
interpreter); ``--profile`` runs the same under cProfile and prints where the time goes.

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
    prefetch = "off" if args.no_prefetch else "on"
    title = (
        f"**Cold pages, {upstream} — {when}, median of {args.repeat}, interleaved; {names}; "
        f"fetch-ahead {prefetch}; "
        f"load average at start {load:.2f} (2 cores)**"
    )
    return f"{title}\n\n{harness.table(headers, rows)}"


def fetch_pages(upstream: str, projects: list[str]) -> Path:
    """The upstream's JSON page of each project, fetched once into a folder (with its time)."""
    import urllib.request

    folder = harness.WORK / "coldpages-pages"
    folder.mkdir(parents=True, exist_ok=True)
    for project in projects:
        url = f"{upstream.rstrip('/')}/{project}/"
        request = urllib.request.Request(url, headers={"Accept": FORMATS["json"]})  # noqa: S310
        with urllib.request.urlopen(request) as resp:  # noqa: S310
            (folder / f"{project}.json").write_bytes(resp.read())
    return folder


def cold_path_cpu(folder: Path, project: str, rounds: int) -> dict[str, float]:
    """CPU seconds of this thread (least of ``rounds``: robust to other load on the machine)
    for each step of a cold page as the server takes it: parse the upstream's JSON, then the
    rendering a client asked for, with its ETag and gzip body (``RenderedPage.build``)."""
    from packaging.utils import canonicalize_name

    from proxyindex import simple
    from proxyindex.index.projects import RenderedPage
    from proxyindex.simple import SimpleFormat, parse_project, render_project

    name = canonicalize_name(project)
    body = bytearray((folder / f"{project}.json").read_bytes())
    url = f"https://pypi.org/simple/{name}/"
    best: dict[str, float] = {}
    for _ in range(rounds):
        for memo in ("_wheel_version", "_parsed_version", "_wheel_name_ok"):  # cold caches
            if hasattr(simple, memo):
                getattr(simple, memo).cache_clear()
        took = {}
        started = time.thread_time()
        page = parse_project(body, FORMATS["json"], url, name)
        took["parse"] = time.thread_time() - started
        for fmt in (SimpleFormat.JSON, SimpleFormat.HTML):
            started = time.thread_time()
            RenderedPage.build(render_project(page, fmt, "http://127.0.0.1:1"), False)
            took[fmt.name.lower()] = time.thread_time() - started
        for step, seconds in took.items():
            best[step] = min(best.get(step, seconds), seconds)
    best["files"] = len(page.files)
    return best


def cpu(args: argparse.Namespace) -> str:
    """The cold path's CPU, in-process, for the working tree and ``--baseline-ref``, each in
    its own interpreter, alternating."""
    import json
    import subprocess

    projects = [p for p in args.projects.split(",") if p]
    folder = fetch_pages(args.upstream, projects)
    targets = {"new": harness.ProxyIndex("", [], None)}
    if args.baseline_ref:
        targets["base"] = harness.ProxyIndex("", [], args.baseline_ref)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for target in targets.values():
        target.prepare()
    for _round in range(args.repeat):  # alternating, so a change in load hits both alike
        for label, target in targets.items():
            env = {**os.environ, "PYTHONPATH": f"{target.src}{os.pathsep}{HERE}"}
            code = (
                "import json, sys, coldpages; from pathlib import Path; print(json.dumps({p: "
                "coldpages.cold_path_cpu(Path(sys.argv[1]), p, 2) for p in sys.argv[2:]}))"
            )
            out = subprocess.run(
                [harness.PYTHON, "-c", code, str(folder), *projects],
                env=env,
                cwd=folder,  # not the repository: "-c" puts the working folder first
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for project, got in json.loads(out).items():
                held = results.setdefault(label, {}).setdefault(project, got)
                for step, seconds in got.items():
                    held[step] = min(held[step], seconds)
    headers = ["page (files)"]
    for label in targets:
        headers += [f"{label}: parse", "+ JSON", "+ HTML"]
    if "base" in targets:
        headers += ["parse + JSON, new/base"]
    rows = []
    for project in projects:
        new = results["new"][project]
        row = [f"{project} ({int(new['files']):,})"]
        for label in targets:
            got = results[label][project]
            row += [f"{got[step] * 1000:.0f} ms" for step in ("parse", "json", "html")]
        if "base" in targets:
            base = results["base"][project]
            ratio = (new["parse"] + new["json"]) / (base["parse"] + base["json"])
            row.append(f"{ratio:.2f}x")
        rows.append(row)
    names = ", ".join(f"{label} = {t.ref or 'working tree'}" for label, t in targets.items())
    title = (
        f"**The cold path's CPU in-process (thread CPU time, least of {args.repeat}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {names}; "
        f"load average {os.getloadavg()[0]:.2f} (2 cores)**"
    )
    return f"{title}\n\n{harness.table(headers, rows)}"


def profile(args: argparse.Namespace) -> str:
    """The cold path of each page in this process, under cProfile."""
    from packaging.utils import canonicalize_name

    from proxyindex.config import PolicyConfig
    from proxyindex.guard.live import Guard
    from proxyindex.index.projects import RenderedPage
    from proxyindex.simple import SimpleFormat, parse_project, render_project

    guard = Guard(PolicyConfig())
    projects = [p for p in args.projects.split(",") if p]
    folder = fetch_pages(args.upstream, projects)
    profiler = cProfile.Profile()
    lines = []
    for project in projects:
        name = canonicalize_name(project)
        body = (folder / f"{project}.json").read_bytes()
        started = time.perf_counter()
        profiler.enable()
        page = parse_project(body, FORMATS["json"], f"https://pypi.org/simple/{name}/", name)
        page = guard.outcome_now(page).page
        for fmt in (SimpleFormat.JSON, SimpleFormat.HTML):
            RenderedPage.build(render_project(page, fmt, "http://127.0.0.1:1"), False)
        profiler.disable()
        took = time.perf_counter() - started
        lines.append(f"{project}: {len(page.files)} files, parse + guard + 2 renders: {took:.3f} s")
    out = Path(harness.WORK / "coldpages.prof")
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
    p.add_argument(
        "--cpu",
        action="store_true",
        help="the cold path's CPU in-process (--repeat rounds), against --baseline-ref too",
    )
    p.add_argument(
        "--no-prefetch",
        action="store_true",
        help="servers with upstream.prefetch = false: the page's own cost, without the "
        "fetch-ahead of its dependencies competing for the CPU",
    )
    args = p.parse_args(argv)
    if args.no_prefetch:
        os.environ["PROXYINDEX_UPSTREAM_PREFETCH"] = "false"  # the servers inherit it
    harness.WORK.mkdir(parents=True, exist_ok=True)
    if args.profile:
        print(profile(args))
        return 0
    if args.cpu:
        print(cpu(args))
        return 0
    try:
        print(asyncio.run(bench(args)))
    finally:
        shutil.rmtree(harness.WORK / "coldpages", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
