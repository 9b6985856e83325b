"""Cold and warm installs against the REAL upstream, straight and through proxyindex, interleaved.

    .venv/bin/python benchmarks/run.py --real-upstream [URL] [--repeat 3] [--tools ...]
    .venv/bin/python benchmarks/realpypi.py [URL] [--repeat 3] [--tools ...]     # the same

The fake upstream is not the world: TLS, a CDN, megabyte project pages and wheels for many
platforms are where a proxy can lose. This mode runs each client (pip download, pip install,
uv pip install, uv lock) three ways, one after the other within the same minute, so a change
in the network hits all three alike:

- *direct*: the client straight at the upstream, fresh client caches;
- *cold*: through a proxyindex with an empty cache (a new server and data folder);
- *warm*: through that same proxyindex again, fresh client caches.

and prints medians, the ratios to direct, and what proxyindex fetched from the upstream
during the cold run (pages, ``.metadata``, files, bytes) and how much of that the client
never asked for (fetched ahead and not used), read from the server's own log at debug level:
its access log (what the client asked) and its ``upstream GET`` lines (what it fetched).

This benchmark needs the network (only the upstream's hosts); the tests never do.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as harness  # noqa: E402
from measure import client_env, run_timed  # noqa: E402

from proxyindex.config import DEFAULT_UPSTREAM  # noqa: E402

# The set the issue measured by hand: pure-Python and big binary wheels (numpy, pandas).
REAL_SET = (
    "requests",
    "django",
    "flask",
    "numpy",
    "pandas",
    "black",
    "boto3",
    "fastapi",
    "pydantic",
)
TOOLS = ("pip-download", "pip-install", "uv-install", "uv-lock")
# One line per upstream request at debug level (proxyindex.upstream.client), and the access log.
_UPSTREAM_LINE = re.compile(r"upstream (GET|HEAD) (\S+) -> (\d+)(?: \((\d+) bytes)?")
_ACCESS_LINE = re.compile(r"proxyindex\.access: \S+ (GET|HEAD) (\S+) (\d{3}) ")


@dataclass
class Fetched:
    """What proxyindex asked the upstream for in one run, and what the client asked it."""

    root: int = 0
    pages: int = 0
    metadata: int = 0
    files: int = 0
    other: int = 0
    bytes: int = 0
    unasked_files: int = 0
    unasked_bytes: int = 0

    @classmethod
    def from_log(cls, text: str) -> Fetched:
        out = cls()
        asked = {m.group(2).split("?")[0].rsplit("/", 1)[-1] for m in _ACCESS_LINE.finditer(text)}
        for m in _UPSTREAM_LINE.finditer(text):
            url, size = m.group(2), int(m.group(4) or 0)
            out.bytes += size
            last = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if url.split("?")[0].endswith("/simple/"):
                out.root += 1
            elif "/simple/" in url:
                out.pages += 1
            elif last.endswith(".metadata"):
                out.metadata += 1
            elif last.endswith((".whl", ".tar.gz", ".zip")):
                out.files += 1
                if last not in asked:
                    out.unasked_files += 1
                    out.unasked_bytes += size
            else:
                out.other += 1
        return out

    def describe(self) -> str:
        return (
            f"{self.root} root, {self.pages} pages, {self.metadata} metadata, {self.files} files, "
            f"{self.other} other, {self.bytes / 1e6:.1f} MB; never asked by the client: "
            f"{self.unasked_files} files ({self.unasked_bytes / 1e6:.1f} MB)"
        )


@dataclass
class Results:
    seconds: dict[tuple[str, str], list[float | None]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    fetched: dict[str, list[Fetched]] = field(default_factory=lambda: collections.defaultdict(list))
    warm_upstream: dict[str, list[int]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    failures: list[str] = field(default_factory=list)


def client_cmd(tool: str, index_url: str, tmp: Path) -> list[str]:
    out = tmp / "out"
    uv = shutil.which("uv", path=str(Path(harness.PYTHON).parent)) or "uv"
    if tool == "pip-download":
        return [
            *(harness.PYTHON, "-m", "pip", "download", "-d", str(out)),
            *("--index-url", index_url, "--progress-bar", "off", *REAL_SET),
        ]
    if tool == "pip-install":
        return [
            *(harness.PYTHON, "-m", "pip", "install", "--target", str(out)),
            *("--index-url", index_url, "--progress-bar", "off", *REAL_SET),
        ]
    if tool == "uv-install":
        return [
            *(uv, "pip", "install", "--target", str(out), "--python", harness.PYTHON),
            *("--index-url", index_url, "--link-mode", "copy", "--no-progress", *REAL_SET),
        ]
    if tool == "uv-lock":
        project = tmp / "project"
        project.mkdir(parents=True, exist_ok=True)
        deps = ", ".join(f'"{name}"' for name in REAL_SET)
        (project / "pyproject.toml").write_text(
            f'[project]\nname = "bench"\nversion = "0"\nrequires-python = ">=3.11"\n'
            f"dependencies = [{deps}]\n"
        )
        return [uv, "lock", "--directory", str(project), "--default-index", index_url]
    raise ValueError(tool)


def one_client(tool: str, index_url: str, tag: str, timeout: float) -> tuple[float | None, str]:
    tmp = harness.CLIENTS / "real" / tag
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = client_env(tmp, {"UV_NO_CONFIG": "1"})
    timed = run_timed(client_cmd(tool, index_url, tmp), env, timeout=timeout, cwd=tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    if timed.returncode != 0:
        return None, f"{tag}: rc {timed.returncode}: {timed.output.strip()[-400:]}"
    return timed.seconds, ""


def run_real(args: argparse.Namespace) -> int:
    url = args.real_upstream.rstrip("/")
    base = url.removesuffix("/simple")
    tools = [t for t in args.tools.split(",") if t]
    bad = set(tools) - set(TOOLS)
    if bad:
        raise SystemExit(f"unknown tools {sorted(bad)}; expected {','.join(TOOLS)}")
    harness.WORK.mkdir(parents=True, exist_ok=True)
    extra = ["--log-level", "debug", *args.proxyindex_args.split()]
    target = harness.ProxyIndex(base, extra, args.proxyindex_ref)
    target.prepare()
    results = Results()
    started = time.perf_counter()
    load = os.getloadavg()[0]
    for rep in range(args.repeat):
        for tool in tools:
            harness.log(f"real upstream: {tool}, repetition {rep + 1}/{args.repeat}")
            secs, why = one_client(tool, url + "/", f"{tool}-direct-{rep}", args.client_timeout)
            results.seconds[(tool, "direct")].append(secs)
            if why:
                results.failures.append(why)
            run = target.start(harness.WORK / "real" / f"{tool}-{rep}")
            try:
                assert run.log_path is not None
                secs, why = one_client(
                    tool, run.index_url, f"{tool}-cold-{rep}", args.client_timeout
                )
                results.seconds[(tool, "cold")].append(secs)
                if why:
                    results.failures.append(why)
                time.sleep(1.0)  # let fetch-ahead that the client did not wait for finish
                cold_log = run.log_path.read_text(errors="replace")
                results.fetched[tool].append(Fetched.from_log(cold_log))
                mark = len(cold_log)
                secs, why = one_client(
                    tool, run.index_url, f"{tool}-warm-{rep}", args.client_timeout
                )
                results.seconds[(tool, "warm")].append(secs)
                if why:
                    results.failures.append(why)
                warm_log = run.log_path.read_text(errors="replace")[mark:]
                results.warm_upstream[tool].append(len(_UPSTREAM_LINE.findall(warm_log)))
            finally:
                run.stop()
                if not args.keep:
                    shutil.rmtree(harness.WORK / "real" / f"{tool}-{rep}", ignore_errors=True)
    print(report(results, tools, args, url, load, time.perf_counter() - started))
    return 1 if results.failures else 0


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def report(
    results: Results,
    tools: list[str],
    args: argparse.Namespace,
    url: str,
    load: float,
    elapsed: float,
) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"**Real upstream {url} — {when}, median of {args.repeat}, interleaved; "
        f"set: {' '.join(REAL_SET)}; load average at start {load:.2f} (2 cores)**",
        "",
    ]
    rows = []
    for tool in tools:
        direct = _median(results.seconds[(tool, "direct")])
        cold = _median(results.seconds[(tool, "cold")])
        warm = _median(results.seconds[(tool, "warm")])

        def ratio(v: float | None, ref: float | None = direct) -> str:
            return f"{v / ref:.2f}x" if v is not None and ref else "-"

        fetched = results.fetched[tool]
        rows.append(
            [
                tool,
                harness.fmt_s(direct),
                harness.fmt_s(cold),
                ratio(cold),
                harness.fmt_s(warm),
                ratio(warm),
                str(max(results.warm_upstream[tool], default=0)),
                fetched[-1].describe() if fetched else "-",
            ]
        )
    lines.append(
        harness.table(
            [
                "client",
                "direct",
                "cold via proxyindex",
                "cold/direct",
                "warm via proxyindex",
                "warm/direct",
                "upstream reqs warm",
                "what proxyindex fetched (cold, last repetition)",
            ],
            rows,
        )
    )
    for failure in results.failures:
        lines.append(f"failed: {failure}")
    lines.append(f"\n(total {elapsed:.0f} s)")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"comma list of clients to run against the real upstream: {','.join(TOOLS)}",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="installs against the real upstream, interleaved")
    p.add_argument("real_upstream", nargs="?", default=DEFAULT_UPSTREAM)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--client-timeout", type=float, default=600.0)
    p.add_argument("--proxyindex-args", default="")
    p.add_argument("--proxyindex-ref")
    p.add_argument("--keep", action="store_true")
    add_arguments(p)
    return run_real(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
