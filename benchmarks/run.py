"""proxyindex benchmark harness: one command, same workload against every server, one table.

    .venv/bin/python benchmarks/run.py [--peers] [--repeat N] [--latency-ms 50]
                                       [--root-names 700000] [--only SECTION,...] [--quick]

See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fakeupstream
from measure import (
    LoadResult,
    RssSampler,
    client_env,
    free_port,
    load,
    median,
    run_timed,
    stop_process,
)

from proxyindex.config import DEFAULT_UPSTREAM

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
WHEELS = HERE / ".wheels"
REQS = HERE / "requirements-bench.txt"
CONSTRAINTS = HERE / "constraints-bench.txt"
PYTHON = sys.executable
# client caches and output on tmpfs when there is one: the clients' disk writes are not what
# we measure, and ext4 writeback made warm installs noisy
CLIENTS = (
    Path("/dev/shm/proxyindex-bench-clients")
    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)
    else WORK / "clients"
)
PYPI = DEFAULT_UPSTREAM
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
PIP_UA = "pip/26.3 (benchmark)"
NA = "-"
SECTIONS = ("pip", "uv", "pages", "files", "root", "coalesce")
PAGE_PROJECT = "numpy"  # project page used for page load, file load and the coalescing test
PEER_PACKAGES: dict[str, list[str]] = {
    "pypiserver": ["pypiserver==2.4.2"],
    "devpi": ["devpi-server==6.20.3", "devpi-client==7.3.0"],
    "proxpi": ["proxpi==1.3.1", "gunicorn==27.0.1"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def registry_env(tmp: Path) -> dict[str, str]:
    """Isolated pip env for talking to PyPI itself (wheel download, peer installs)."""
    extra = {}
    if os.environ.get("PIP_CERT"):  # TLS trust only; every other PIP_* setting is dropped
        extra["PIP_CERT"] = os.environ["PIP_CERT"]
    return client_env(tmp, extra)


def ensure_wheels() -> list[fakeupstream.Dist]:
    key = hashlib.sha256(REQS.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    marker = WHEELS / ".complete"
    if not (marker.exists() and marker.read_text() == key):
        log(f"downloading the workload's wheels from PyPI into {WHEELS} (once)")
        shutil.rmtree(WHEELS, ignore_errors=True)
        tmp = WORK / "wheel-download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = [
            PYTHON,
            "-m",
            "pip",
            "download",
            "--index-url",
            PYPI,
            "--only-binary",
            ":all:",
            "-d",
            str(WHEELS),
            "-r",
            str(REQS),
            "-c",
            str(CONSTRAINTS),
            "--progress-bar",
            "off",
        ]
        t = run_timed(cmd, registry_env(tmp), timeout=900)
        if t.returncode:
            sys.exit(f"pip download failed:\n{t.output}")
        marker.write_text(key)
        shutil.rmtree(tmp, ignore_errors=True)
    return fakeupstream.scan_wheels(WHEELS)


def ensure_venv(name: str, packages: list[str]) -> Path:
    venv = WORK / "venvs" / name
    marker = venv / ".installed"
    want = "\n".join(packages) + "\n"
    if marker.exists() and marker.read_text() == want:
        return venv
    log(f"installing {' '.join(packages)} into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    tmp = WORK / f"pip-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = run_timed(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--index-url",
            PYPI,
            *packages,
        ],
        registry_env(tmp),
        timeout=900,
    )
    shutil.rmtree(tmp, ignore_errors=True)
    if t.returncode:
        raise RuntimeError(f"pip install {packages} failed: {t.output[-2000:]}")
    marker.write_text(want)
    return venv


# --------------------------------------------------------------------------- servers


@dataclass
class Running:
    base: str
    index_url: str
    proc: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    start_s: float | None = None
    idle_rss: int | None = None
    log_path: Path | None = None

    def stop(self) -> int | None:
        peak = None
        if self.sampler:
            self.sampler.sample()
            peak = self.sampler.stop()
        if self.proc:
            stop_process(self.proc)
        return peak


def http_status(url: str, timeout: float = 2.0) -> int | None:
    req = urllib.request.Request(url, headers={"User-Agent": PIP_UA})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def spawn(
    cmd: list[str],
    datadir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    base: str | None = None,
    ready_path: str = "/",
    regex: str | None = None,
    timeout: float = 120.0,
) -> tuple[subprocess.Popen[bytes], str, float, Path]:
    """Start a server; wait until it answers ``ready_path``; return (proc, base, seconds, log)."""
    log_path = datadir / "server.log"
    with log_path.open("wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
        )
    deadline = t0 + timeout
    try:
        while base is None:
            m = re.search(regex or "", log_path.read_text(errors="replace"))
            if m:
                base = m.group(1).rstrip("/")
                break
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"no listening line: {log_path.read_text()[-1500:]}")
            time.sleep(0.005)
        while True:
            status = http_status(base + ready_path, timeout=1.0)
            if status is not None and status < 500:
                break
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"not ready: {log_path.read_text(errors='replace')[-1500:]}")
            time.sleep(0.005)
    except BaseException:
        stop_process(proc)
        raise
    return proc, base, time.perf_counter() - t0, log_path


class Target:
    name = "?"
    kind = "proxy"  # proxy | upstream | static | redirect

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream  # fake upstream base URL (no trailing slash)

    def prepare(self) -> None:
        """One-time setup (installs); raise to mark the target n/a."""

    def launch(self, datadir: Path) -> Running:
        raise NotImplementedError

    def start(self, datadir: Path) -> Running:
        shutil.rmtree(datadir, ignore_errors=True)
        datadir.mkdir(parents=True)
        run = self.launch(datadir)
        if run.proc:
            run.sampler = RssSampler(run.proc.pid).start()
            time.sleep(0.5)
            run.idle_rss = run.sampler.sample()
        return run


class UpstreamDirect(Target):
    name = "pip/uv straight at upstream"
    kind = "upstream"

    def launch(self, datadir: Path) -> Running:
        return Running(self.upstream, self.upstream + "/simple/")


class ProxyIndex(Target):
    name = "proxyindex"

    def __init__(self, upstream: str, extra_args: list[str], ref: str | None = None) -> None:
        super().__init__(upstream)
        self.extra_args = extra_args
        self.ref = ref
        if ref:
            self.name = f"proxyindex @{ref}"
        self.src = REPO  # the working tree, unless --proxyindex-ref picks a commit

    def prepare(self) -> None:
        if self.ref:
            sha = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--verify", f"{self.ref}^{{commit}}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            self.src = WORK / "src" / sha
            if not (self.src / "proxyindex").exists():
                self.src.mkdir(parents=True, exist_ok=True)
                tar = subprocess.run(
                    ["git", "-C", str(REPO), "archive", "--format=tar", sha, "proxyindex"],
                    capture_output=True,
                    check=True,
                ).stdout
                with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                    tf.extractall(self.src, filter="data")
            log(f"proxyindex from commit {sha[:10]} ({self.src})")
        else:
            # a snapshot of the working tree, so that edits made during a long run don't mix in
            self.src = WORK / "src" / "worktree"
            shutil.rmtree(self.src, ignore_errors=True)
            shutil.copytree(
                REPO / "proxyindex",
                self.src / "proxyindex",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            head = subprocess.run(
                ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            log(f"proxyindex: snapshot of the working tree (HEAD {head}) in {self.src}")
        if not (self.src / "proxyindex" / "cli.py").exists():
            raise RuntimeError(f"{self.src}/proxyindex/cli.py does not exist")

    def launch(self, datadir: Path) -> Running:
        cmd = [
            PYTHON,
            "-m",
            "proxyindex",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--packages-dir",
            str(datadir / "packages"),
            "--cache-dir",
            str(datadir / "cache"),
            "--upstream",
            self.upstream + "/simple/",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.src)  # ahead of the venv's editable install
        proc, base, secs, logp = spawn(
            cmd,
            datadir,
            env=env,
            cwd=datadir,
            regex=r"listening on (http://\S+)",
            ready_path="/health",
        )
        return Running(base, base + "/simple/", proc, start_s=secs, log_path=logp)


class Nginx(Target):
    name = "nginx static (ceiling)"
    kind = "static"

    def __init__(self, upstream: str, dists: list[fakeupstream.Dist], root_names: int) -> None:
        super().__init__(upstream)
        self.dists = dists
        self.root_names = root_names
        self.static = WORK / f"static-{root_names}"

    def prepare(self) -> None:
        if not shutil.which("nginx"):
            raise RuntimeError("nginx not installed (apt-get install -y nginx)")
        fakeupstream.export_static(self.dists, self.static, self.root_names)

    def launch(self, datadir: Path) -> Running:
        port = free_port()
        conf = datadir / "nginx.conf"
        conf.write_text(f"""
daemon off;
worker_processes 2;
pid {datadir}/nginx.pid;
error_log {datadir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {datadir}/tmp;
  proxy_temp_path {datadir}/tmp;
  fastcgi_temp_path {datadir}/tmp;
  uwsgi_temp_path {datadir}/tmp;
  scgi_temp_path {datadir}/tmp;
  types {{ application/vnd.pypi.simple.v1+json json; application/vnd.pypi.simple.v1+html html; }}
  default_type application/octet-stream;
  map $http_accept $pypi_index {{
    default index.html;
    "~application/vnd\\.pypi\\.simple\\.v1\\+json" index.json;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {self.static};
    location = /health {{ return 200 "ok"; }}
    location /simple/ {{ index $pypi_index; add_header Vary Accept; }}
    location /files/ {{ }}
  }}
}}
""")
        cmd = ["nginx", "-p", str(datadir), "-c", str(conf), "-e", str(datadir / "error.log")]
        proc, base, secs, logp = spawn(
            cmd, datadir, base=f"http://127.0.0.1:{port}", ready_path="/health"
        )
        return Running(base, base + "/simple/", proc, start_s=secs, log_path=logp)


class Pypiserver(Target):
    name = "pypiserver 2.4.2 (redirects)"
    kind = "redirect"

    def prepare(self) -> None:
        self.venv = ensure_venv("pypiserver", PEER_PACKAGES["pypiserver"])

    def launch(self, datadir: Path) -> Running:
        port = free_port()
        (datadir / "packages").mkdir()
        cmd = [
            str(self.venv / "bin" / "pypi-server"),
            "run",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "--fallback-url",
            self.upstream + "/simple/",
            str(datadir / "packages"),
        ]
        proc, base, secs, logp = spawn(
            cmd, datadir, base=f"http://127.0.0.1:{port}", ready_path="/health"
        )
        return Running(base, base + "/simple/", proc, start_s=secs, log_path=logp)


class Devpi(Target):
    name = "devpi-server 6.20.3"

    def prepare(self) -> None:
        self.venv = ensure_venv("devpi", PEER_PACKAGES["devpi"])

    def launch(self, datadir: Path) -> Running:
        bin_ = self.venv / "bin"
        env = client_env(datadir / "clienthome")
        srv = datadir / "server"
        init = run_timed(
            [
                str(bin_ / "devpi-init"),
                "--serverdir",
                str(srv),
                "--root-passwd",
                "",
                "--no-root-pypi",
            ],
            env,
            timeout=120,
        )
        if init.returncode:
            raise RuntimeError(f"devpi-init failed: {init.output[-1500:]}")
        port = free_port()
        cmd = [
            str(bin_ / "devpi-server"),
            "--serverdir",
            str(srv),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        proc, base, secs, logp = spawn(
            cmd, datadir, env=env, base=f"http://127.0.0.1:{port}", ready_path="/+api"
        )
        client = [str(bin_ / "devpi"), "--clientdir", str(datadir / "client")]
        for args in (
            ["use", base],
            ["login", "root", "--password", ""],
            ["index", "-c", "root/pypi", "type=mirror", f"mirror_url={self.upstream}/simple/"],
        ):
            t = run_timed(client + args, env, timeout=120)
            if t.returncode:
                stop_process(proc)
                raise RuntimeError(f"devpi {args[0]} failed: {t.output[-1500:]}")
        return Running(base, base + "/root/pypi/+simple/", proc, start_s=secs, log_path=logp)


class Proxpi(Target):
    name = "proxpi 1.3.1 (gunicorn)"

    def prepare(self) -> None:
        self.venv = ensure_venv("proxpi", PEER_PACKAGES["proxpi"])

    def launch(self, datadir: Path) -> Running:
        port = free_port()
        env = dict(os.environ)
        env.update(
            PROXPI_INDEX_URL=self.upstream + "/simple/", PROXPI_CACHE_DIR=str(datadir / "cache")
        )
        # the command of proxpi's Docker image (one sync worker, --preload)
        cmd = [
            str(self.venv / "bin" / "gunicorn"),
            "--preload",
            "--bind",
            f"127.0.0.1:{port}",
            "proxpi.server:app",
        ]
        proc, base, secs, logp = spawn(
            cmd, datadir, env=env, base=f"http://127.0.0.1:{port}", ready_path="/health"
        )
        return Running(base, base + "/index/", proc, start_s=secs, log_path=logp)


# --------------------------------------------------------------------------- the workload


class Upstream:
    """The fake upstream subprocess and its request counter."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = WORK / "upstream"
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            PYTHON,
            str(HERE / "fakeupstream.py"),
            "--wheels",
            str(WHEELS),
            "--workdir",
            str(self.dir),
            "--latency-ms",
            str(args.latency_ms),
            "--root-names",
            str(args.root_names),
            "--extra-files",
            str(args.extra_files),
        ]
        self.proc, self.base, _, _ = spawn(
            cmd, self.dir, regex=r"listening on (http://\S+)", ready_path="/_stats", timeout=300
        )

    def reset(self) -> None:
        req = urllib.request.Request(  # noqa: S310 (loopback only)
            self.base + "/_stats/reset", method="POST", data=b""
        )
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 (loopback only)
            pass

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + "/_stats", timeout=10) as r:  # noqa: S310
            data: dict[str, Any] = json.load(r)
            return data

    def stop(self) -> None:
        stop_process(self.proc)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def file_url(run: Running, filename: str) -> str:
    """Find ``filename``'s link on the server's project page (following redirects)."""
    page = run.index_url + PAGE_PROJECT + "/"
    headers = {"Accept": "text/html", "User-Agent": PIP_UA}
    req = urllib.request.Request(page, headers=headers)  # noqa: S310 (loopback only)
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (loopback only)
        final: str = resp.geturl()
        body: str = resp.read().decode()
    parser = Links()
    parser.feed(body)
    for href in parser.hrefs:
        url = urldefrag(urljoin(final, href))[0]
        if url.rsplit("/", 1)[-1] == filename:
            return url
    raise RuntimeError(f"{filename} not linked from {page}")


@dataclass
class Ctx:
    args: argparse.Namespace
    upstream: Upstream
    dists: list[fakeupstream.Dist]
    big: fakeupstream.Dist
    expected: set[str] = field(default_factory=set)


def client_run(
    ctx: Ctx, tool: str, index_url: str, tag: str
) -> tuple[float | None, int, str, dict[str, Any]]:
    """One pip or uv run with fresh client caches: (seconds or None, upstream reqs, note)."""
    tmp = CLIENTS / tag
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = client_env(tmp)
    out = tmp / "out"
    if tool == "pip":
        cmd = [
            PYTHON,
            "-m",
            "pip",
            "download",
            "-d",
            str(out),
            "--index-url",
            index_url,
            "--only-binary",
            ":all:",
            "-r",
            str(REQS),
            "--progress-bar",
            "off",
        ]
    else:
        uv = shutil.which("uv", path=str(Path(PYTHON).parent)) or shutil.which("uv") or "uv"
        cmd = [
            uv,
            "pip",
            "install",
            "--target",
            str(out),
            "--index-url",
            index_url,
            "-r",
            str(REQS),
            "--python",
            PYTHON,
            "--link-mode",
            "copy",
            "--no-progress",
        ]
    ctx.upstream.reset()
    t = run_timed(cmd, env, timeout=ctx.args.client_timeout, cwd=tmp)
    stats = ctx.upstream.stats()
    up = int(stats["total"])
    (tmp / "output.log").write_text(t.output)
    note = ""
    ok = t.returncode == 0
    if ok and tool == "pip":
        got = {p.name for p in out.iterdir()}
        if got != ctx.expected:
            ok, note = False, f"pip got {len(got)} files, expected {len(ctx.expected)}"
    if ok and tool == "uv":
        n = len(list(out.glob("*.dist-info")))
        if n != len(ctx.expected):
            ok, note = False, f"uv installed {n} dists, expected {len(ctx.expected)}"
    if not ok:
        note = note or f"{tool} failed (rc {t.returncode}): " + t.output.strip()[-600:]
        log(f"  {tag}: {note}")
    if not ctx.args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return (t.seconds if ok else None), up, note, stats


def measure_root(ctx: Ctx, run: Running) -> dict[str, float | None]:
    """First /simple/ request, time until the listing is complete, then cached requests."""
    expected = ctx.args.root_names + len({d.project for d in ctx.dists})

    async def go() -> dict[str, float | None]:
        timeout = aiohttp.ClientTimeout(total=600)
        headers = {"Accept": PIP_ACCEPT, "User-Agent": PIP_UA}
        async with aiohttp.ClientSession(timeout=timeout) as s:

            async def get() -> tuple[float, int, int]:
                t0 = time.perf_counter()
                async with s.get(run.index_url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET {run.index_url}: {resp.status}")
                names = body.count(b'"name"') + body.count(b"<a ")
                return time.perf_counter() - t0, len(body), names

            t_start = time.perf_counter()
            first_s, first_size, names = await get()
            complete_s: float | None = first_s
            while names < expected:
                if time.perf_counter() - t_start > 120:
                    complete_s = None
                    break
                await asyncio.sleep(0.1)
                _s, _size, names = await get()
                complete_s = time.perf_counter() - t_start
            again = [await get() for _ in range(3)]
        return {
            "root_first_s": first_s,
            "root_first_mb": first_size / 1e6,
            "root_complete_s": complete_s,
            "root_again_s": median([a[0] for a in again]),
            "root_mb": again[-1][1] / 1e6,
            "root_names": float(again[-1][2]),
        }

    return asyncio.run(go())


def coalesce(ctx: Ctx, run: Running) -> dict[str, float | None]:
    url = file_url(run, ctx.big.filename)
    ctx.upstream.reset()

    async def one(s: aiohttp.ClientSession) -> bool:
        h = hashlib.sha256()
        async with s.get(url) as resp:
            if resp.status != 200:
                return False
            async for chunk in resp.content.iter_chunked(1 << 16):
                h.update(chunk)
        return h.hexdigest() == ctx.big.sha256

    async def go() -> tuple[int, float]:
        conn = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=300)
        ) as s:
            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(s) for _ in range(100)), return_exceptions=True)
            return sum(r is True for r in res), time.perf_counter() - t0

    ok, secs = asyncio.run(go())
    st = ctx.upstream.stats()
    return {
        "co_ok": ok,
        "co_up_gets": st["file_gets"].get(ctx.big.filename, 0),
        "co_up_total": st["total"],
        "co_s": secs,
    }


def load_row(prefix: str, r: LoadResult) -> dict[str, float | None]:
    if r.errors:
        log(f"  {prefix}: {r.errors} errors of {r.requests}")
    return {
        f"{prefix}_rps": r.req_s,
        f"{prefix}_p50": r.p50_ms,
        f"{prefix}_p99": r.p99_ms,
        f"{prefix}_mbs": r.mb_s,
        f"{prefix}_err": r.errors,
    }


def one_rep(ctx: Ctx, target: Target, rep: int) -> tuple[dict[str, float | None], list[str]]:
    """All sections for one server, one repetition. A failing section becomes a note."""
    args, only = ctx.args, ctx.args.only
    res: dict[str, float | None] = {}
    notes: list[str] = []
    slug = re.sub(r"\W+", "-", target.name.split()[0])
    peaks: list[int] = []
    troubled = False

    def fresh(phase: str) -> Running:
        run = target.start(WORK / "data" / f"{slug}-{rep}-{phase}")
        if "start_s" not in res:
            res["start_s"], res["idle_rss"] = run.start_s, run.idle_rss
        return run

    def done(run: Running, phase: str) -> None:
        nonlocal troubled
        peak = run.stop()
        if peak:
            peaks.append(peak)
            res[f"peak_rss_{phase}"] = float(peak)
        if run.log_path and troubled:
            keep = WORK / "failures" / f"{run.log_path.parent.name}-server.log"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.log_path, keep)
            notes.append(f"server log kept in {keep.relative_to(REPO)}")
            troubled = False
        if not args.keep and run.log_path:
            shutil.rmtree(run.log_path.parent, ignore_errors=True)

    def section(name: str, fn: Callable[[], None]) -> None:
        nonlocal troubled
        try:
            fn()
        except Exception as exc:
            troubled = True
            note = f"{name} failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
            notes.append(note)
            log(f"  {note}")

    def clients(tool: str, run: Running) -> None:
        nonlocal troubled
        runs = ["cold", "warm"] if target.kind != "static" else ["warm"]
        for state in runs:
            s, up, note, st = client_run(ctx, tool, run.index_url, f"{slug}-{rep}-{tool}-{state}")
            res[f"{state}_{tool}"], res[f"{state}_{tool}_up"] = s, up
            kinds = st["by_kind"]
            for kind in ("root", "page", "metadata", "file", "head", "other"):
                res[f"{state}_{tool}_up_{kind}"] = float(kinds.get(kind, 0))
            res[f"{state}_{tool}_up_dup"] = float(
                sum(n - 1 for n in st["file_gets"].values() if n > 1)
            )
            if note:
                notes.append(f"{state} {note}")
                troubled = True
        log(f"  {tool}: cold {res.get(f'cold_{tool}')} warm {res[f'warm_{tool}']}")

    def pages(run: Running) -> None:
        page = run.index_url + PAGE_PROJECT + "/"
        for fmt, accept in (("html", "text/html"), ("json", "application/vnd.pypi.simple.v1+json")):
            r = load(page, {"Accept": accept}, args.page_connections, args.duration)
            res.update(load_row(f"page_{fmt}", r))
        log(f"  pages: html {res['page_html_rps']:.0f}/s json {res['page_json_rps']:.0f}/s")

    def files(run: Running) -> None:
        r = load(file_url(run, ctx.big.filename), {}, 8, args.duration)
        res.update(load_row("file", r))
        log(f"  files: {res['file_mbs']:.0f} MB/s")

    def root(run: Running) -> None:
        res.update(measure_root(ctx, run))
        log(
            f"  root: first {res['root_first_s']} complete {res['root_complete_s']} "
            f"again {res['root_again_s']}"
        )

    def co(run: Running) -> None:
        res.update(coalesce(ctx, run))
        log(f"  coalesce: {res['co_ok']}/100 ok, {res['co_up_gets']} upstream GETs")

    serving = target.kind in ("proxy", "static", "redirect")
    run = fresh("a")
    try:
        if "pip" in only:
            section("pip", lambda: clients("pip", run))
        if serving and ({"pages", "files"} & set(only)) and "pip" not in only:
            client_run(ctx, "pip", run.index_url, f"{slug}-{rep}-fill")  # fill the cache
        if serving and "pages" in only:
            section("pages", lambda: pages(run))
        if target.kind in ("proxy", "static") and "files" in only:
            section("files", lambda: files(run))
        if target.kind != "redirect" and "root" in only:
            section("root", lambda: root(run))
    finally:
        done(run, "a")
    if "uv" in only:
        run_b = fresh("b")
        try:
            section("uv", lambda: clients("uv", run_b))
        finally:
            done(run_b, "b")
    if target.kind == "proxy" and "coalesce" in only:
        run_c = fresh("c")
        try:
            section("coalesce", lambda: co(run_c))
        finally:
            done(run_c, "c")
    res["peak_rss"] = float(max(peaks)) if peaks else None
    return res, notes


# --------------------------------------------------------------------------- report


def fmt_s(v: float | None) -> str:
    return NA if v is None else (f"{v:.2f} s" if v < 10 else f"{v:.1f} s")


def fmt_int(v: float | None) -> str:
    return NA if v is None else f"{v:,.0f}"


def fmt_mb(v: float | None) -> str:
    return NA if v is None else f"{v / 1e6:,.0f} MB"


def fmt_ms(v: float | None) -> str:
    return NA if v is None else f"{v:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


Getter = Callable[[dict[str, float | None]], float | None]


def report(
    results: dict[str, dict[str, list[float | None]]],
    failed: dict[str, str],
    args: argparse.Namespace,
    targets: list[Target],
) -> str:
    med: dict[str, dict[str, float | None]] = {
        t: {k: median(v) for k, v in r.items()} for t, r in results.items()
    }

    def m(t: str, k: str) -> float | None:
        return med.get(t, {}).get(k)

    names = [t.name for t in targets]
    out = [
        f"## proxyindex benchmark — median of {args.repeat}, latency {args.latency_ms:g} ms, "
        f"root {args.root_names:,} synthetic names, load {args.duration:g} s/measurement, "
        f"load tool {'wrk' if shutil.which('wrk') else 'aiohttp'}, "
        f"load average at start/end {args.loadavg_start:.2f}/{os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} cores)",
        "",
    ]
    rows = []
    for n in names:
        if n in failed:
            rows.append([n, f"n/a ({failed[n]})"] + [""] * 8)
            continue

        def up(k: str, n: str = n) -> str:
            return fmt_int(m(n, k))

        rows.append(
            [
                n,
                fmt_s(m(n, "start_s")),
                fmt_s(m(n, "cold_pip")),
                fmt_s(m(n, "warm_pip")),
                fmt_s(m(n, "cold_uv")),
                fmt_s(m(n, "warm_uv")),
                f"{up('cold_pip_up')} / {up('warm_pip_up')}",
                f"{up('cold_uv_up')} / {up('warm_uv_up')}",
                fmt_mb(m(n, "idle_rss")),
                fmt_mb(m(n, "peak_rss")),
            ]
        )
    out += [
        "### Installs and footprint",
        table(
            [
                "server",
                "start",
                "cold pip",
                "warm pip",
                "cold uv",
                "warm uv",
                "upstream reqs pip cold/warm",
                "upstream reqs uv cold/warm",
                "idle RSS",
                "peak RSS",
            ],
            rows,
        ),
        "",
    ]
    rows = []
    for n in names:
        if n in failed:
            continue

        def pg(p: str, n: str = n) -> str:
            if m(n, f"{p}_rps") is None:
                return NA
            return (
                f"{fmt_int(m(n, f'{p}_rps'))} ({fmt_ms(m(n, f'{p}_p50'))}/"
                f"{fmt_ms(m(n, f'{p}_p99'))} ms)"
            )

        root = NA
        if m(n, "root_first_s") is not None:
            root = (
                f"{fmt_s(m(n, 'root_first_s'))} ({m(n, 'root_first_mb') or 0:.1f} MB) / "
                f"{fmt_s(m(n, 'root_complete_s'))} / {fmt_s(m(n, 'root_again_s'))} "
                f"({m(n, 'root_mb') or 0:.1f} MB)"
            )
        co = NA
        if m(n, "co_ok") is not None:
            co = (
                f"{fmt_int(m(n, 'co_up_gets'))} upstream GET(s), {fmt_int(m(n, 'co_ok'))}/100 "
                f"sha256 ok, {fmt_s(m(n, 'co_s'))}"
            )
        rows.append([n, pg("page_html"), pg("page_json"), fmt_int(m(n, "file_mbs")), root, co])
    out += [
        "### Serving (cached)",
        table(
            [
                "server",
                "page req/s HTML (p50/p99)",
                "page req/s JSON (p50/p99)",
                "file MB/s",
                "root: first (size) / complete after / cached (size)",
                "100 concurrent first GETs of one file",
            ],
            rows,
        ),
        "",
    ]

    rows = []
    for n in names:
        if n in failed:
            continue
        cells = [n]
        for run_key in ("cold_pip", "cold_uv"):
            if m(n, f"{run_key}_up") is None:
                cells.append(NA)
                continue
            parts = [
                f"{fmt_int(m(n, f'{run_key}_up_{k}'))} {label}"
                for k, label in (
                    ("page", "pages"),
                    ("metadata", "metadata"),
                    ("file", "files"),
                    ("head", "HEAD"),
                    ("root", "root"),
                )
                if m(n, f"{run_key}_up_{k}")
            ]
            dup = m(n, f"{run_key}_up_dup")
            cells.append(", ".join(parts) + (f"; {fmt_int(dup)} repeated file GETs" if dup else ""))
        cells.append(
            " / ".join(fmt_mb(m(n, f"peak_rss_{ph}")) for ph in "abc" if m(n, f"peak_rss_{ph}"))
        )
        rows.append(cells)
    out += [
        "### Upstream requests by kind (cold runs) and peak RSS per phase",
        table(
            [
                "server",
                "cold pip",
                "cold uv",
                "peak RSS A (pip, loads, root) / B (uv) / C (coalescing)",
            ],
            rows,
        ),
        "",
    ]

    # ratios to the references of this run
    ref_cold = UpstreamDirect.name
    ref_warm = Nginx.name if Nginx.name in med else None
    cols: list[tuple[str, str, str | None, bool]] = [
        # (header, key, reference, higher_is_better)
        ("cold pip", "cold_pip", ref_cold, False),
        ("cold uv", "cold_uv", ref_cold, False),
        ("warm pip", "warm_pip", ref_warm, False),
        ("warm uv", "warm_uv", ref_warm, False),
        ("page HTML req/s", "page_html_rps", ref_warm, True),
        ("page JSON req/s", "page_json_rps", ref_warm, True),
        ("file MB/s", "file_mbs", ref_warm, True),
        ("root again", "root_again_s", ref_warm, False),
        ("peak RSS", "peak_rss", ref_warm, False),
    ]
    cols = [c for c in cols if c[2] in med]
    if cols:
        rows = []
        for n in names:
            if n in failed:
                continue
            cells = [n]
            for _h, k, ref, higher in cols:
                v, r = m(n, k), m(ref or "", k)
                if v is None or r is None or v == 0 or r == 0:
                    cells.append(NA)
                else:
                    cells.append(f"{(r / v if higher else v / r):.2f}x")
            rows.append(cells)
        refs = ", ".join(sorted({c[2] or "" for c in cols}))
        out += [
            f"### Ratios (times worse than the reference; 1.00x = as good; references: "
            f"cold installs = {ref_cold}, the rest = {ref_warm or 'none'})",
            table(
                ["server"]
                + [f"{h} vs {'upstream' if r == ref_cold else 'nginx'}" for h, _k, r, _b in cols],
                rows,
            ),
            "",
        ]
        del refs
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import realpypi  # imports this module: not at the top, to keep the import order simple

    p = argparse.ArgumentParser(description="proxyindex benchmark harness")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run nginx (ceiling), devpi-server, proxpi and pypiserver",
    )
    p.add_argument(
        "--targets",
        help="comma list instead of the default set: upstream,"
        "proxyindex,nginx,devpi,proxpi,pypiserver; proxyindex@REF adds that commit",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--root-names", type=int, default=700_000)
    p.add_argument(
        "--extra-files",
        type=int,
        default=0,
        help="fake old sdists added to every upstream project page",
    )
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma list of sections: {','.join(SECTIONS)}"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="latency 50 ms, root 20,000 names, repeat 1, no peers, 3 s loads",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load measurement")
    p.add_argument("--page-connections", type=int, default=32)
    p.add_argument("--client-timeout", type=float, default=300.0)
    p.add_argument("--proxyindex-args", default="", help="extra args for proxyindex serve")
    p.add_argument(
        "--proxyindex-ref",
        help="benchmark this git commit/branch of proxyindex (exported with git archive) "
        "instead of a snapshot of the working tree taken at start",
    )
    p.add_argument("--keep", action="store_true", help="keep data dirs and client output")
    p.add_argument("--json", help="also write the raw results to this JSON file")
    p.add_argument(
        "--real-upstream",
        nargs="?",
        const=DEFAULT_UPSTREAM,
        metavar="URL",
        help="instead: installs straight at the real upstream (default: the public PyPI) and "
        "through proxyindex, interleaved (benchmarks/realpypi.py; needs the network)",
    )
    realpypi.add_arguments(p)
    args = p.parse_args(argv)
    if args.real_upstream:
        return realpypi.run_real(args)
    if args.quick:
        args.latency_ms, args.root_names, args.repeat, args.peers = 50.0, 20_000, 1, False
        args.duration = 3.0
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = set(args.only) - set(SECTIONS)
    if bad:
        p.error(f"unknown sections {sorted(bad)}")
    if args.targets:
        wanted = args.targets.split(",")
    else:
        wanted = ["upstream", "proxyindex"]
        if args.peers:
            wanted += ["nginx", "devpi", "proxpi", "pypiserver"]

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the finally blocks: every server we started is stopped

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background (SIG_IGN)
    t_all = time.perf_counter()
    args.loadavg_start = os.getloadavg()[0]
    if args.loadavg_start > 0.5:
        log(f"warning: load average {args.loadavg_start:.2f}: other work skews the numbers")
    WORK.mkdir(parents=True, exist_ok=True)
    dists = ensure_wheels()
    big = max(dists, key=lambda d: d.size)
    log(
        f"workload: {len(dists)} wheels, {sum(d.size for d in dists) / 1e6:.1f} MB; "
        f"starting fake upstream ({args.root_names:,} root names, {args.latency_ms:g} ms)"
    )
    upstream = Upstream(args)
    ctx = Ctx(args, upstream, dists, big, {d.filename for d in dists})
    makers: dict[str, Callable[[], Target]] = {
        "upstream": lambda: UpstreamDirect(upstream.base),
        "proxyindex": lambda: ProxyIndex(
            upstream.base, shlex.split(args.proxyindex_args), args.proxyindex_ref
        ),
        "nginx": lambda: Nginx(upstream.base, dists, args.root_names),
        "devpi": lambda: Devpi(upstream.base),
        "proxpi": lambda: Proxpi(upstream.base),
        "pypiserver": lambda: Pypiserver(upstream.base),
    }

    def make(w: str) -> Target:
        # proxyindex@REF: that commit beside the working tree in the same run (an A/B whose
        # repetitions interleave, so the machine's load hits both alike).
        if w.startswith("proxyindex@"):
            return ProxyIndex(upstream.base, shlex.split(args.proxyindex_args), w.split("@", 1)[1])
        if w not in makers:
            p.error(f"unknown target {w!r}")
        return makers[w]()

    targets = [make(w) for w in wanted]
    results: dict[str, dict[str, list[float | None]]] = {}
    failed: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    try:
        for t in targets:
            try:
                t.prepare()
            except Exception as exc:
                failed[t.name] = str(exc).strip().splitlines()[-1][:160]
                log(f"{t.name}: n/a: {exc}")
        for rep in range(args.repeat):
            for t in targets:
                if t.name in failed:
                    continue
                log(f"{t.name}: repetition {rep + 1}/{args.repeat}")
                try:
                    res, rep_notes = one_rep(ctx, t, rep)
                except Exception as exc:
                    failed[t.name] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                    log(f"{t.name}: failed: {exc}")
                    continue
                notes.setdefault(t.name, []).extend(rep_notes)
                for k, v in res.items():
                    results.setdefault(t.name, {}).setdefault(k, []).append(v)
    finally:
        upstream.stop()
        if not args.keep:
            shutil.rmtree(CLIENTS, ignore_errors=True)
    text = report(results, failed, args, targets)
    print(text)
    for n, ns in notes.items():
        for note in dict.fromkeys(ns):
            print(f"note: {n}: {note}")
    print(f"\n(total benchmark time {time.perf_counter() - t_all:.0f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "results": results, "failed": failed, "notes": notes}, indent=1
            )
        )
    return 1 if any(isinstance(t, ProxyIndex) and t.name in failed for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
