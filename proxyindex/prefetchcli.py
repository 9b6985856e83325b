"""``proxyindex prefetch -r FILE``: warm a running server's cache from requirements and lock
files, by asking that server for the pages and files an install would ask for (so the files
land in *its* cache, and the same checks apply: hashes verified, private names never fetched
from the upstream).

Projects are worked on in parallel (``--jobs`` requests at a time) with a progress bar; the
summary counts files fetched (the server had to download them: ``X-Cache: MISS``), files
already cached (``HIT``) and failures with their reason. The exit status is 1 if anything
failed, so a script preparing an air-gapped copy can stop there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import aiohttp
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from proxyindex.admincli import DEFAULT_SERVER, find_credentials
from proxyindex.distname import InvalidDistFilename, parse_dist_filename
from proxyindex.prefetch_sources import SourceError, Targets, Wanted, read_source

__all__ = ["Summary", "add_parser", "choose_files", "prefetch", "run"]

_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 16


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "prefetch", help="warm a running server's cache from requirements or lock files"
    )
    parser.add_argument(
        "-r",
        "--requirements",
        action="append",
        required=True,
        type=Path,
        metavar="FILE",
        help="requirements.txt, pylock.toml, uv.lock, poetry.lock, Pipfile.lock or a list of "
        "names (repeatable; the format is recognised from the file name)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=[],
        help="wheel platform tag to fetch for, e.g. manylinux_2_28_x86_64, win_amd64 "
        "(repeatable; default: this machine's)",
    )
    parser.add_argument(
        "--python-version",
        action="append",
        default=[],
        help="Python version to fetch for, e.g. 3.12 (repeatable; default: this Python)",
    )
    parser.add_argument("--jobs", type=int, default=8, help="requests at a time (default 8)")
    parser.add_argument(
        "--server",
        default=None,
        help=f"the server's URL (default: $PROXYINDEX_SERVER or {DEFAULT_SERVER})",
    )


def _version_of(filename: str) -> Version | None:
    try:
        return parse_dist_filename(filename).version
    except InvalidDistFilename:
        return None


def _fitting(files: Sequence[Mapping[str, Any]], targets: Targets) -> list[Mapping[str, Any]]:
    """The wheels the targets can install, else the sdists (built on install)."""
    usable = [f for f in files if targets.python_fits(f.get("requires-python"))]
    wheels = [f for f in usable if targets.wheel_fits(f["filename"])]
    if wheels:
        return wheels
    return [f for f in usable if not f["filename"].endswith(".whl")]


def _pinned(specifier: SpecifierSet) -> bool:
    return any(s.operator in ("==", "===") and "*" not in s.version for s in specifier)


def choose_files(
    wanted: Wanted, files: Sequence[Mapping[str, Any]], targets: Targets
) -> list[Mapping[str, Any]] | str:
    """The files to fetch for ``wanted`` from its page's files, or why there are none."""
    if wanted.exact:
        listed = [
            f
            for f in files
            if f["filename"] in wanted.filenames
            or f.get("hashes", {}).get("sha256") in wanted.sha256
        ]
        if not listed:
            return "none of the locked files is on the index"
        return _fitting(listed, targets) or "no locked file fits the target platforms"
    by_version: dict[Version, list[Mapping[str, Any]]] = {}
    pinned = _pinned(wanted.specifier)
    for f in files:
        version = _version_of(f["filename"])
        if version is None or (f.get("yanked") and not pinned):
            continue
        if wanted.specifier.contains(version, prereleases=pinned or None):
            by_version.setdefault(version, []).append(f)
    for version in sorted(by_version, reverse=True):
        chosen = _fitting(by_version[version], targets)
        if chosen:
            return chosen
    spec = str(wanted.specifier) or "any version"
    return f"no release matching {spec} has a file for the target platforms"


@dataclass(slots=True)
class Summary:
    fetched: int = 0
    fetched_bytes: int = 0
    cached: int = 0
    cached_bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Fetcher:
    def __init__(
        self, session: aiohttp.ClientSession, server: str, targets: Targets, jobs: int
    ) -> None:
        self.session = session
        self.server = server.rstrip("/")
        self.targets = targets
        self.limit = asyncio.Semaphore(jobs)
        self.summary = Summary()

    async def _error(self, response: aiohttp.ClientResponse) -> str:
        text = (await response.text(errors="replace")).strip().splitlines()
        return f"{response.status} {text[0] if text else response.reason}"

    async def project(self, wanted: Wanted) -> None:
        page_url = f"{self.server}/simple/{quote(wanted.name)}/"
        try:
            async with self.limit, self.session.get(page_url, headers={"Accept": _JSON}) as r:
                if r.status != 200:
                    self.summary.failed.append((wanted.name, await self._error(r)))
                    return
                page = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.summary.failed.append((wanted.name, f"page: {str(exc) or type(exc).__name__}"))
            return
        chosen = choose_files(wanted, page.get("files", []), self.targets)
        if isinstance(chosen, str):
            self.summary.failed.append((wanted.name, chosen))
            return
        await asyncio.gather(*(self.file(page_url, f) for f in chosen))

    async def file(self, page_url: str, dist: Mapping[str, Any]) -> None:
        url = urljoin(page_url, dist["url"])
        await self._get(url, dist["filename"])
        if dist.get("core-metadata") or dist.get("dist-info-metadata"):
            await self._get(url.split("#", 1)[0] + ".metadata", dist["filename"] + ".metadata")

    async def _get(self, url: str, label: str) -> None:
        size = 0
        try:
            async with self.limit, self.session.get(url) as response:
                if response.status != 200:
                    self.summary.failed.append((label, await self._error(response)))
                    return
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                hit = response.headers.get("X-Cache", "").upper() == "HIT"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.summary.failed.append((label, str(exc) or type(exc).__name__))
            return
        if label.endswith(".metadata"):
            return  # counted with its file
        if hit:
            self.summary.cached += 1
            self.summary.cached_bytes += size
        else:
            self.summary.fetched += 1
            self.summary.fetched_bytes += size


async def prefetch(
    server: str,
    wanted: Sequence[Wanted],
    targets: Targets,
    *,
    jobs: int = 8,
    credentials: tuple[str, str] | None = None,
    show_progress: bool = False,
) -> Summary:
    """Ask ``server`` for every page and file ``wanted`` names (``jobs`` at a time)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    auth = aiohttp.BasicAuth(*credentials) if credentials is not None else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
    async with aiohttp.ClientSession(auth=auth, timeout=timeout, trust_env=True) as session:
        fetcher = _Fetcher(session, server, targets, jobs)
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=True, disable=not show_progress) as progress:
            task = progress.add_task("prefetch", total=len(wanted))

            async def one(item: Wanted) -> None:
                await fetcher.project(item)
                progress.advance(task)

            await asyncio.gather(*(one(item) for item in wanted))
        return fetcher.summary


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _merge(found: Sequence[Wanted]) -> list[Wanted]:
    """One entry per project and range (two files naming the same project: both kept)."""
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    server = args.server or environ.get("PROXYINDEX_SERVER") or DEFAULT_SERVER
    if args.jobs < 1:
        print("proxyindex: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        targets = Targets.build(args.platform, args.python_version)
        wanted = _merge([w for path in args.requirements for w in read_source(path)])
    except SourceError as exc:
        print(f"proxyindex: {exc}", file=sys.stderr)
        return 2
    credentials = find_credentials(server, environ)
    summary = asyncio.run(
        prefetch(
            server,
            wanted,
            targets,
            jobs=args.jobs,
            credentials=credentials,
            show_progress=sys.stderr.isatty(),
        )
    )
    print(
        f"{len(wanted)} projects: fetched {summary.fetched} files "
        f"({_size(summary.fetched_bytes)}), already cached {summary.cached} "
        f"({_size(summary.cached_bytes)}), failed {len(summary.failed)}"
    )
    for what, reason in sorted(summary.failed):
        print(f"  failed {what}: {reason}")
    return 1 if summary.failed else 0
