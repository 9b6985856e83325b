"""The cost of the supply-chain guard (issue 14) on cached page throughput.

    .venv/bin/python benchmarks/guard.py [--duration 5] [--rounds 3] [--files 200]

Two real servers (``proxyindex serve`` subprocesses of this checkout) over one fake upstream
(``tests.fakepypi``, in a thread): one without rules, one with a 10,000-rule deny file (names,
requirement strings, 50 patterns), 5,000 OSV advisories (one per record, 300 of them for the
benchmarked project, whose files they yank), a 7-day cooldown with exemptions. The goal is a
cost under 10% on cached page throughput.

It prints, as Markdown:
- requests per second and latency of a cached project page (JSON, gzip) on each server, over
  ``--rounds`` alternating rounds of ``--duration`` seconds (closed loop, 8 connections);
- in this process: the time to decide one page of ``--files`` files (what a re-render or a
  download's check pays when the memo is cold), to load the rules, and the reload check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from aiohttp import web  # noqa: E402
from measure import load  # noqa: E402

from proxyindex.config import load_config  # noqa: E402
from proxyindex.guard.advisories import folder_signature  # noqa: E402
from proxyindex.guard.decide import apply  # noqa: E402
from proxyindex.guard.live import Guard  # noqa: E402
from proxyindex.models import DistFile, Origin, ProjectPage, normalize  # noqa: E402
from proxyindex.simple import SimpleFormat  # noqa: E402
from proxyindex.web import appkeys  # noqa: E402
from proxyindex.web.app import create_app  # noqa: E402
from tests.fakepypi import FakePyPI  # noqa: E402
from tests.serverproc import ProxyServer, write_config  # noqa: E402

PROJECT = "bench-pkg"
CONNECTIONS = 8
DENY_RULES = 10_000
ADVISORIES = 5_000
ON_PROJECT = 300  # advisories for the benchmarked project


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_rules(folder: Path) -> tuple[Path, Path]:
    deny = folder / "deny.txt"
    lines = []
    for i in range(DENY_RULES - 50):
        kind = i % 10
        if kind < 7:
            lines.append(f"denied-project-{i}")
        elif kind < 9:
            lines.append(f"denied-project-{i}<{i % 7}.{i % 5}")
        else:
            lines.append(f"{PROJECT}=={900 + i}.0")  # rules on this project, matching nothing
    lines += [f"evil-{i}-*" for i in range(50)]
    deny.write_text("\n".join(lines) + "\n")
    osv = folder / "osv"
    osv.mkdir()
    for i in range(ADVISORIES):
        name = PROJECT if i < ON_PROJECT else f"vulnerable-{i}"
        low, high = (f"0.{i % 40}", f"0.{i % 40}.1") if i < ON_PROJECT else ("0", "1.0")
        record = {
            "id": f"PYSEC-2099-{i}",
            "summary": f"advisory {i}",
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": name},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": low}, {"fixed": high}]}
                    ],
                    "versions": [f"{j}.0" for j in range(i % 5)],
                }
            ],
        }
        (osv / f"PYSEC-2099-{i}.json").write_text(json.dumps(record))
    return deny, osv


def in_process(deny: Path, osv: Path, files: int) -> list[str]:
    overrides = {
        "policy": {
            "min_age": "7d",
            "min_age_exempt": ["certifi", "acme-*"],
            "deny_file": str(deny),
            "advisories_dir": str(osv),
        }
    }
    config = load_config(None, overrides=overrides)
    guard = Guard(config.policy)
    t0 = time.perf_counter()
    guard.load()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    guard.reload_if_changed()
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    folder_signature(osv)
    full_s = time.perf_counter() - t0
    now = time.time()
    dists = tuple(
        DistFile(
            f"bench_pkg-0.{i}-py3-none-any.whl",
            f"https://x/{i}",
            Origin.UPSTREAM,
            upload_time=_iso(now - (files - i) * 3600),
        )
        for i in range(files)
    )
    page = ProjectPage(normalize(PROJECT), dists)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        outcome = apply(page, guard.rules, now)
        times.append(time.perf_counter() - t0)
    return [
        f"| rules loaded at start (10,000 deny lines + 5,000 OSV files) | {load_s * 1e3:.0f} ms |",
        f"| reload check every 2 s, nothing changed (2 stats) | {check_s * 1e3:.2f} ms |",
        f"| full folder check every 30 s (5,000 stats) | {full_s * 1e3:.1f} ms |",
        f"| decide one page of {files} files (median of 20; {len(outcome.decisions)} decisions) "
        f"| {statistics.median(times) * 1e3:.2f} ms |",
    ]


async def _render_rounds(configs: dict[str, dict[str, dict[str, object]]]) -> dict[str, float]:
    """Seconds per ``ProjectIndex.render`` of a cached page, in this process (the path every
    cached page request takes, without the HTTP stack's noise): both apps side by side,
    rounds of 20,000 calls in alternating order (whichever ran first in a round was ~12%
    slower, even with two identical configs), the best round of each kept (a loaded machine only
    ever makes a round slower)."""
    runners, indexes = [], {}
    try:
        for label, overrides in configs.items():
            app = create_app(load_config(None, overrides=overrides))
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            indexes[label] = app[appkeys.INDEX]
        name = normalize(PROJECT)
        best = dict.fromkeys(configs, math.inf)
        for round_ in range(16):
            order = list(indexes.items())
            for label, index in order if round_ % 2 else reversed(order):
                await index.render(name, SimpleFormat.JSON)
                t0 = time.perf_counter()
                for _ in range(20_000):
                    await index.render(name, SimpleFormat.JSON)
                best[label] = min(best[label], (time.perf_counter() - t0) / 20_000)
        return best
    finally:
        for runner in runners:
            await runner.cleanup()


def render_costs(folder: Path, fake: FakePyPI, policy: dict[str, object]) -> list[str]:
    configs: dict[str, dict[str, dict[str, object]]] = {}
    for label, rules in (("no rules", {}), ("10k deny + 5k advisories + cooldown", policy)):
        overrides: dict[str, dict[str, object]] = {
            "storage": {"data_dir": str(folder / f"render-{len(configs)}")},
            "upstream": {"url": fake.simple_url, "check_interval": 0, "prefetch": False},
            "server": {"access_log": "", "audit_log": "off"},
        }
        if rules:
            overrides["policy"] = rules
        configs[label] = overrides
    results = asyncio.run(_render_rounds(configs))
    base = results["no rules"]
    return [
        f"| {label} | {seconds * 1e9:,.0f} ns | {(seconds / base - 1) * 100:+.1f}% |"
        for label, seconds in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="guard-bench-") as tmp, FakePyPI() as fake:
        folder = Path(tmp)
        deny, osv = write_rules(folder)
        print("building the upstream project...", file=sys.stderr)
        old = time.time() - 30 * 86400
        for i in range(40):
            fake.add_wheel(PROJECT, f"0.{i}", upload_time=_iso(old + i * 3600))
        fake.add_wheel(PROJECT, "1.0", upload_time=_iso(time.time() - 3600))  # held back
        servers: dict[str, ProxyServer] = {}
        policies: dict[str, dict[str, object]] = {
            "no rules": {},
            "10k deny + 5k advisories + cooldown": {
                "min_age": "7d",
                "min_age_exempt": ["certifi", "acme-*"],
                "deny_file": str(deny),
                "advisories_dir": str(osv),
            },
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in policies}
        try:
            for index, (label, policy) in enumerate(policies.items()):
                tables: dict[str, dict[str, object]] = {
                    "server": {"host": "127.0.0.1", "port": 0, "access_log": ""},
                    "storage": {"data_dir": str(folder / f"data{index}")},
                    "upstream": {"url": fake.simple_url, "check_interval": 0, "prefetch": False},
                }
                if policy:
                    tables["policy"] = policy
                server = ProxyServer(write_config(folder / f"config{index}.toml", **tables))
                server.start()
                servers[label] = server
            headers = {"Accept": "application/vnd.pypi.simple.v1+json", "Accept-Encoding": "gzip"}
            for server in servers.values():  # warm: the page rendered once
                load(f"{server.url}/simple/{PROJECT}/", headers, 1, 0.5)
            for round_ in range(args.rounds):
                for label, server in servers.items():
                    print(f"round {round_ + 1}: {label}", file=sys.stderr)
                    result = load(
                        f"{server.url}/simple/{PROJECT}/", headers, CONNECTIONS, args.duration
                    )
                    assert result.errors == 0, result
                    results[label].append((result.req_s, result.p50_ms))
        finally:
            for server in servers.values():
                server.stop()
        base = statistics.median(r for r, _ in results["no rules"])
        print("| server | req/s (median of rounds) | p50 ms | cost | req/s of each round |")
        print("|---|---|---|---|---|")
        for label, rows in results.items():
            rps = statistics.median(r for r, _ in rows)
            p50 = statistics.median(p for _, p in rows)
            each = " / ".join(f"{r:,.0f}" for r, _ in rows)
            cost = (1 - rps / base) * 100
            print(f"| {label} | {rps:,.0f} | {p50:.2f} | {cost:+.1f}% | {each} |")
        print()
        print(
            "| `ProjectIndex.render` of a cached page, in-process "
            "(best of 16 rounds of 20,000, alternating order) "
            "| per call | cost |"
        )
        print("|---|---|---|")
        for line in render_costs(folder, fake, policies["10k deny + 5k advisories + cooldown"]):
            print(line)
        print()
        print("| in-process | time |")
        print("|---|---|")
        for line in in_process(deny, osv, args.files):
            print(line)


if __name__ == "__main__":
    main()
