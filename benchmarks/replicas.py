"""Replicas on object storage (issue 10): one vs two replicas behind nginx, bucket vs local disk.

Starts a moto S3 server, a fake upstream (tests/fakepypi.py) with one project of N MB, two
``proxyindex serve`` replicas (``backend = "s3"``) and two nginx instances (one in front of
replica 1 only, one round-robin over both), all on 127.0.0.1. Then measures:

- cached page and cached file throughput (requests/s, ``--concurrency`` aiohttp clients for
  ``--seconds``) through nginx -> 1 replica and nginx -> 2 replicas;
- one file GET when the replica's local disk has it, when only the bucket has it (the local
  blob deleted before each GET), and (for scale) a single local-backend server's cold GET
  from the upstream.

    .venv/bin/python benchmarks/replicas.py                    # 1 MB file, 5 s per figure
    .venv/bin/python benchmarks/replicas.py --file-mb 20 --seconds 10 --concurrency 32

On a 2-core machine the load generator, nginx and both replicas share the same cores: two
replicas cannot double anything here; the figure that transfers is requests/s per replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fakepypi import FakePyPI  # noqa: E402
from tests.motoserver import AWS_ENV, MotoServer  # noqa: E402
from tests.nginxproc import Nginx  # noqa: E402
from tests.serverproc import ProxyServer, write_config  # noqa: E402

PROJECT = "bench-wheel"


async def _load(url: str, seconds: float, concurrency: int) -> tuple[float, float]:
    """(requests/s, MB/s) of GETs of ``url`` from ``concurrency`` clients for ``seconds``."""
    done = 0
    size = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, size
            while time.monotonic() < deadline:
                async with session.get(url) as response:
                    body = await response.read()
                    assert response.status == 200, response.status
                done += 1
                size += len(body)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.monotonic() - start
    return done / took, size / took / 1e6


def _get_seconds(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
        response.read()
    return time.perf_counter() - start


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def _server(folder: Path, upstream: str, storage: dict[str, object]) -> ProxyServer:
    config = write_config(
        folder / "config.toml",
        server={"host": "127.0.0.1", "access_log": ""},
        storage={"packages_dir": "packages", "cache_dir": "cache", **storage},
        upstream={"url": upstream, "check_interval": 0, "prefetch": False},
    )
    server = ProxyServer(config, env=AWS_ENV)
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mb", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cold-repeat", type=int, default=10)
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp_name, FakePyPI() as fake:
        tmp = Path(tmp_name)
        payload = os.urandom(int(args.file_mb * (1 << 20)) // 2).hex()
        wheel = fake.add_wheel(PROJECT, "1.0", modules={"bench_wheel/data.py": payload})
        moto = MotoServer()
        moto.start()
        servers: list[ProxyServer] = []
        nginxes: list[Nginx] = []
        try:
            storage = {
                "backend": "s3",
                "s3_bucket": moto.bucket,
                "s3_endpoint_url": moto.url,
                "s3_poll_interval": 2,
            }
            servers = [_server(tmp / f"r{i}", fake.simple_url, storage) for i in range(2)]
            local = _server(tmp / "local", fake.simple_url, {})
            servers.append(local)
            one = Nginx(tmp / "nginx1", [f"127.0.0.1:{servers[0].port}"])
            two = Nginx(tmp / "nginx2", [f"127.0.0.1:{s.port}" for s in servers[:2]])
            nginxes = [one, two]
            for n in nginxes:
                n.start()
            page = f"/simple/{PROJECT}/"
            file = f"/packages/{PROJECT}/{wheel.name}"
            for server in servers[:2]:  # warm both replicas: page and file cached locally
                _get_seconds(server.url + page)
                _get_seconds(server.url + file)
            size_mb = wheel.stat().st_size / 1e6
            print(f"file: {wheel.name}, {size_mb:.2f} MB")
            print("| through nginx | cached page req/s | cached file req/s | file MB/s |")
            print("|---|---|---|---|")
            for label, n in (("1 replica", one), ("2 replicas", two)):
                pages, _ = asyncio.run(_load(n.url + page, args.seconds, args.concurrency))
                files, mbs = asyncio.run(_load(n.url + file, args.seconds, args.concurrency))
                print(f"| {label} | {pages:.0f} | {files:.0f} | {mbs:.0f} |")

            blobs = [
                p for p in (servers[0].config.parent / "cache" / "files").rglob("*") if p.is_file()
            ]
            blob = max(blobs, key=lambda p: p.stat().st_size)  # the wheel, not a METADATA blob
            url = servers[0].url + file
            local_disk = [_get_seconds(url) for _ in range(args.cold_repeat)]
            from_bucket = []
            for _ in range(args.cold_repeat):
                blob.unlink()
                from_bucket.append(_get_seconds(url))
            upstream_cold = []
            before = len([p for p in fake.paths() if p.endswith(".whl")])
            local_blobs = local.config.parent / "cache" / "files"
            for _ in range(args.cold_repeat):
                for p in local_blobs.rglob("*"):
                    if p.is_file() and "tmp" not in p.relative_to(local_blobs).parts:
                        p.unlink()
                upstream_cold.append(_get_seconds(local.url + file))
                # The blob is committed just after the last byte is sent: wait for it, so the
                # next round deletes it (else that round is a cache hit).
                deadline = time.monotonic() + 10
                while not any(
                    p.is_file() and "tmp" not in p.relative_to(local_blobs).parts
                    for p in local_blobs.rglob("*")
                ):
                    assert time.monotonic() < deadline, "the download was never committed"
                    time.sleep(0.05)
            fetched = len([p for p in fake.paths() if p.endswith(".whl")]) - before
            print(f"\nupstream downloads in the local-backend loop: {fetched}")
            print(f"| one file GET (median of {args.cold_repeat}) | ms |")
            print("|---|---|")
            print(f"| s3 replica, on its local disk | {statistics.median(local_disk) * 1e3:.1f} |")
            print(
                f"| s3 replica, local copy deleted: from the bucket | "
                f"{statistics.median(from_bucket) * 1e3:.1f} |"
            )
            print(
                f"| local backend, not cached: from the upstream | "
                f"{statistics.median(upstream_cold) * 1e3:.1f} |"
            )
            for index, server in enumerate(servers[:2]):
                print(
                    f"replica {index + 1} resident memory after the run: {_rss_mb(server.pid)} MB"
                )
        finally:
            for n in nginxes:
                n.stop()
            for server in servers:
                server.stop()
            moto.stop()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
