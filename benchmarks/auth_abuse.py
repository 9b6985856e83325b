"""Wrong passwords against a protected index: what they cost everyone else (issue 7.3).

Starts ``proxyindex serve`` on 127.0.0.1 with one bcrypt user and everything protected, then
measures: a known user with a wrong password against an unknown user (timing must not tell them
apart), and a valid user's page while N wrong-password requests run in parallel from one
address. ``--ref REF`` measures a commit (exported with ``git archive``) instead of the tree.

    .venv/bin/python benchmarks/auth_abuse.py                     # this tree, default budget
    .venv/bin/python benchmarks/auth_abuse.py --auth 'max_failed_logins = 0'   # no budget
    .venv/bin/python benchmarks/auth_abuse.py --ref 0f6d632       # before the fix
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def _source(ref: str | None, tmp: Path) -> Path:
    if ref is None:
        return REPO
    out = tmp / "src"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "proxyindex"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def _start(src: Path, tmp: Path, auth: str) -> tuple[subprocess.Popen[str], str]:
    htpasswd = tmp / "htpasswd"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "proxyindex", "user", "add", "alice", "--htpasswd", str(htpasswd),
         "--password-stdin"],
        input="s3cret\n", text=True, check=True, env=env, capture_output=True,
    )  # fmt: skip
    config = tmp / "config.toml"
    config.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9/simple/"\n'
        f'[auth]\nhtpasswd = "{htpasswd}"\nprotect = ["list", "download", "upload"]\n{auth}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxyindex", "serve", "--config", str(config), "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd=tmp,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    match = re.search(r"(http://\S+)", proc.stderr.readline())
    assert match, "the server did not start"
    return proc, match.group(1)


async def _get(
    session: aiohttp.ClientSession, url: str, user: str, password: str
) -> tuple[int, float]:
    start = time.perf_counter()
    headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
    async with session.get(url + "/simple/", headers=headers) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - start


def _client(address: str) -> aiohttp.ClientSession:
    """A session from its own loopback address: the server counts failures per address."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def _measure(url: str, parallel: int) -> None:
    async with _client("127.0.0.2") as probe:
        known = [(await _get(probe, url, "alice", f"wrong{i}"))[1] for i in range(3)]
        unknown = [(await _get(probe, url, f"nobody{i}", "wrong"))[1] for i in range(3)]
    print(
        f"wrong password, known user: median {statistics.median(known) * 1000:.0f} ms; "
        f"unknown user: median {statistics.median(unknown) * 1000:.0f} ms"
    )
    async with _client("127.0.0.3") as user, _client("127.0.0.1") as attacker:
        await _get(user, url, "alice", "s3cret")  # the valid user's first login
        guesses = [
            asyncio.create_task(_get(attacker, url, "alice", f"guess{i}")) for i in range(parallel)
        ]
        await asyncio.sleep(0.3)
        status, took = await _get(user, url, "alice", "s3cret")
        print(
            f"valid user's page during {parallel} wrong passwords: {status} in {took * 1000:.0f} ms"
        )
        results = await asyncio.gather(*guesses)
    counts = Counter(code for code, _ in results)
    slowest = max(t for _, t in results)
    print(f"the {parallel} wrong ones: {dict(counts)}, slowest answered in {slowest:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="git commit to measure instead of the working tree")
    parser.add_argument("--auth", default="", help="extra lines for the [auth] table")
    parser.add_argument("--parallel", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, url = _start(_source(args.ref, tmp), tmp, args.auth)
        try:
            asyncio.run(_measure(url, args.parallel))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
