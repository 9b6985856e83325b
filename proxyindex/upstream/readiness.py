"""Is the server able to serve? The upstream check and the storage check behind ``/ready``.

A wrong ``upstream.url`` (the site root instead of its simple index, a typo in the path)
used to start silently and answer "no project named ..." for everything; an unreachable one
only showed as 502s. So the upstream's root is fetched once at start-up and then every
``upstream.check_interval`` seconds, in the background: only its first 64 KiB are read
(PyPI's is 40 MB), and a failure is logged loudly, once per change, and shown by ``/ready``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from proxyindex.errors import UpstreamError
from proxyindex.upstream.client import UpstreamClient, mask_url

__all__ = ["UpstreamCheck", "UpstreamMonitor", "judge_root", "storage_problems"]

log = logging.getLogger(__name__)

_SIMPLE_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.v1+html")


def judge_root(status: int, content_type: str, head: bytes) -> str | None:
    """What is wrong with an upstream root that answered ``status`` with ``head`` (its first
    bytes), or None if it looks like a simple index (PEP 503 HTML or PEP 691 JSON)."""
    if status != 200:
        return f"answered {status}"
    media = content_type.partition(";")[0].strip().lower()
    text = head.decode("utf-8", "replace").lower()
    if media in _SIMPLE_TYPES:
        return None
    if media == "application/json":
        if '"projects"' in text or '"api-version"' in text:
            return None
        return "answered with JSON that is not a simple index"
    if media == "text/html":
        if "pypi:repository-version" in text:
            return None
        if "<form" in text or "<script" in text:  # a web site's page, not a list of links
            return "answered with a web page, not a simple index"
        return None
    return f"answered with {media or 'no Content-Type'}, not a simple index"


@dataclass(frozen=True, slots=True)
class UpstreamCheck:
    ok: bool
    detail: str  # "ok" or what is wrong, naming the (masked) upstream URL
    checked_at: float


class UpstreamMonitor:
    """The last upstream check, refreshed in the background; ``last`` is None until the
    first check has finished."""

    def __init__(self, upstream: UpstreamClient, interval: float, name: str = "") -> None:
        self._upstream = upstream
        self.name = name  # in [[upstreams]]
        self.interval = interval
        self.url = mask_url(upstream.base)
        self.last: UpstreamCheck | None = None

    async def check(self) -> UpstreamCheck:
        try:
            status, content_type, head = await self._upstream.probe()
        except UpstreamError as exc:
            problem: str | None = f"is unreachable: {exc}"
        else:
            problem = judge_root(status, content_type, head)
            if problem is not None:
                problem += (
                    "; upstream.url must be the simple index itself (for PyPI: "
                    "https://pypi.org/simple/), or every project will be 'not found'"
                )
        if problem is None:
            check = UpstreamCheck(True, "ok", time.time())
        else:
            check = UpstreamCheck(False, f"upstream {self.url} {problem}", time.time())
        self._report(check)
        self.last = check
        return check

    def _report(self, check: UpstreamCheck) -> None:
        """Log the first result and every change, not every check."""
        previous = self.last
        if previous is not None and previous.detail == check.detail:
            return
        if not check.ok:
            log.error("%s", check.detail)
        elif previous is None:
            log.info("upstream %s answers as a simple index", self.url)
        else:
            log.warning("upstream %s answers as a simple index again", self.url)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not stop the checks
                log.exception("checking the upstream failed")
            await asyncio.sleep(self.interval)


def storage_problems(packages: Path, cache: Path) -> list[str]:
    """Blocking: what keeps the packages and cache folders from being used (or nothing)."""
    problems = []
    for what, path in (("packages folder", packages), ("cache folder", cache)):
        if not path.is_dir():
            problems.append(f"{what} {path} is missing")
        elif not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            problems.append(f"{what} {path} is not readable and writable")
    return problems
