"""Prefetch speed: ``proxyindex prefetch -r uv.lock`` for a lock file of N packages (default
200), through a real ``proxyindex serve`` in front of the benchmark fake upstream
(``fakeupstream.py``, 50 ms added to every answer, like an internet round trip).

Each package is one wheel of ``--size`` bytes (incompressible). Measured: the cold prefetch
(every page and file fetched from the upstream through the server), then the same command again
(everything already cached), each with ``--jobs`` requests at a time.

    .venv/bin/python benchmarks/prefetch.py [--packages 200] [--size 200000] [--jobs 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from measure import stop_process  # noqa: E402

from tests.serverproc import ProxyServer, write_config  # noqa: E402
from tests.wheelmaker import make_wheel  # noqa: E402


def _wheels(folder: Path, count: int, size: int) -> list[Path]:
    found = []
    for i in range(count):
        blob = os.urandom(size).hex()[:size]  # text, incompressible enough for a zip
        found.append(
            make_wheel(
                folder,
                f"bench-pkg-{i:03d}",
                "1.0",
                modules={f"bench_pkg_{i:03d}/__init__.py": f"DATA = {blob!r}\n"},
            )
        )
    return found


def _uv_lock(wheels: list[Path], index: str) -> str:
    lines = ["version = 1", ""]
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines += [
            "[[package]]",
            f'name = "{name.replace("_", "-")}"',
            f'version = "{version}"',
            f'source = {{ registry = "{index}" }}',
            f'wheels = [{{ url = "{index}files/{wheel.name}", hash = "sha256:{sha}" }}]',
            "",
        ]
    return "\n".join(lines)


def _start_upstream(wheels: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "fakeupstream.py"),
            "--wheels",
            str(wheels),
            "--workdir",
            str(work),
            "--root-names",
            "1000",
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,  # stop_process signals the process group
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        match = re.search(r"listening on (\S+)", line)
        if match:
            return proc, match.group(1)
    stop_process(proc)
    raise SystemExit("the fake upstream did not start")


def _prefetch(server: str, lock: Path, jobs: int) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxyindex",
            "prefetch",
            "-r",
            str(lock),
            "--server",
            server,
            "--jobs",
            str(jobs),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"},
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"prefetch failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--size", type=int, default=200_000, help="bytes of each wheel's module")
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefetch-bench-") as raw:
        tmp = Path(raw)
        wheels = _wheels(tmp / "wheels", args.packages, args.size)
        total = sum(w.stat().st_size for w in wheels)
        upstream, base = _start_upstream(tmp / "wheels", tmp / "up")
        try:
            index = base + "/simple/"
            lock = tmp / "uv.lock"
            lock.write_text(_uv_lock(wheels, index))
            config = write_config(
                tmp / "proxy" / "config.toml",
                server={"host": "127.0.0.1"},
                storage={"packages_dir": "packages", "cache_dir": "cache"},
                upstream={"url": index, "check_interval": 0, "prefetch": False},
            )
            server = ProxyServer(config)
            server.start()
            try:
                cold, cold_out = _prefetch(server.url, lock, args.jobs)
                warm, warm_out = _prefetch(server.url, lock, args.jobs)
            finally:
                server.stop()
        finally:
            stop_process(upstream)
    print(f"{args.packages} packages, {total / 1e6:.1f} MB of wheels, --jobs {args.jobs}")
    print(f"cold: {cold:.2f} s ({args.packages / cold:.0f} packages/s)  {cold_out}")
    print(f"warm: {warm:.2f} s ({args.packages / warm:.0f} packages/s)  {warm_out}")


if __name__ == "__main__":
    main()
