"""Measuring helpers for the benchmarks: process-tree RSS, a load generator, timing, client envs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLIENT_ENV_DROP = ("PIP_", "UV_", "PIPENV_", "VIRTUAL_ENV", "PYTHONPATH")


# --------------------------------------------------------------------------- client isolation


def client_env(tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for pip/uv that cannot see this machine's pip config or PIP_* variables.

    Fresh HOME, XDG dirs and fresh pip/uv caches under ``tmp`` (the contract's isolation rules).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_ENV_DROP)}
    home = tmp / "home"
    for d in (home / ".config", home / ".cache"):
        d.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_DIRS="",
        PIP_CONFIG_FILE=os.devnull,
        PIP_CACHE_DIR=str(tmp / "pipcache"),
        UV_CACHE_DIR=str(tmp / "uvcache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        UV_PYTHON_DOWNLOADS="never",
    )
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- processes and RSS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def _children(pid: int) -> list[int] | None:
    """``pid``'s children from /proc/PID/task/*/children (a few small reads), or None where
    the kernel lacks that file."""
    kids: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            kids.extend(int(k) for k in Path(task.path, "children").read_bytes().split())
    except FileNotFoundError:
        return None if not Path(f"/proc/{pid}").exists() else kids
    except OSError:
        return kids
    return kids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``'s process tree (the server and its workers): the
    work per request, which other load on the machine changes far less than req/s."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_bytes()
            fields = stat[stat.rfind(b")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants. Sampled every 50 ms during the measured installs, so it
    must be cheap: scanning all of /proc cost 1.4 ms per sample (0.1 ms this way), taken from
    the clients being timed, and the runs straight at the upstream have no server to sample."""
    out, todo = [], [pid]
    kids_map: dict[int, list[int]] | None = None
    while todo:
        p = todo.pop()
        out.append(p)
        kids = _children(p)
        if kids is None:  # no children files: fall back to one scan of /proc
            kids_map = kids_map if kids_map is not None else _children_map()
            kids = kids_map.get(p, [])
        todo.extend(kids)
    return out


def tree_rss(pid: int) -> int:
    """Resident set size in bytes, summed over ``pid`` and all its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_bytes().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler:
    """Samples the RSS of a process tree in a background thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def sample(self) -> int:
        rss = tree_rss(self.pid)
        self.last = rss
        self.peak = max(self.peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(5)


# --------------------------------------------------------------------------- timing


@dataclass
class Timed:
    seconds: float
    returncode: int
    output: str


def run_timed(
    cmd: Sequence[str], env: Mapping[str, str], timeout: float = 600.0, cwd: Path | None = None
) -> Timed:
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(
            list(cmd), env=dict(env), cwd=cwd, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return Timed(time.perf_counter() - t0, -9, out.decode(errors="replace") + "\nTIMEOUT")
    dt = time.perf_counter() - t0
    return Timed(dt, cp.returncode, (cp.stdout + cp.stderr).decode(errors="replace"))


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --------------------------------------------------------------------------- load generation


@dataclass
class LoadResult:
    requests: int
    seconds: float
    bytes: int
    errors: int
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def check_local(url: str) -> None:
    host = re.match(r"https?://([^/:]+)", url)
    if not host or host.group(1) not in ("127.0.0.1", "localhost", "[::1]"):
        raise ValueError(f"load is only ever sent to 127.0.0.1, not {url}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk_load(
    url: str, headers: Mapping[str, str], connections: int, duration: float, threads: int = 2
) -> LoadResult:
    check_local(url)
    cmd = [
        "wrk",
        "--latency",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    errors = 0
    for e in re.finditer(r"(?:connect|read|write|timeout) (\d+)", out):
        errors += int(e.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    return LoadResult(
        requests=int(m.group(1)),
        seconds=_ms(m.group(2) + m.group(3)) / 1e3,
        bytes=int(float(m.group(4)) * _BYTES[m.group(5)]),
        errors=errors,
        p50_ms=_ms(lat.get("50", "nan")),
        p99_ms=_ms(lat.get("99", "nan")),
        tool="wrk",
    )


async def _aiohttp_load(
    url: str, headers: Mapping[str, str], connections: int, duration: float
) -> LoadResult:
    lat: list[float] = []
    nbytes = errors = 0
    conn = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t_end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal nbytes, errors
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                try:
                    async with session.get(url, headers=dict(headers)) as resp:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            nbytes += len(chunk)
                        if resp.status >= 400:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                lat.append((time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
    lat.sort()

    def pick(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

    return LoadResult(len(lat), elapsed, nbytes, errors, pick(0.5), pick(0.99), "aiohttp")


def load(url: str, headers: Mapping[str, str], connections: int, duration: float) -> LoadResult:
    """Closed-loop load on ``url`` for ``duration`` seconds: wrk if installed, else aiohttp."""
    check_local(url)
    if shutil.which("wrk"):
        return wrk_load(url, headers, connections, duration)
    return asyncio.run(_aiohttp_load(url, headers, connections, duration))
