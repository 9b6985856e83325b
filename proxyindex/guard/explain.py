"""``proxyindex policy explain NAME [VERSION]``: what the guard hides or yanks, and why.

Computed offline from the config, the rule files and the upstream page in the server's
cache folder (the one the server itself serves from), so it works while the server is down
and needs no credentials. ``report`` is pure: it formats an outcome.
"""

from __future__ import annotations

import time

from packaging.version import InvalidVersion, Version

from proxyindex.guard.decide import Outcome
from proxyindex.guard.rules import format_time
from proxyindex.models import Origin, ProjectPage
from proxyindex.simple import version_of

__all__ = ["report"]


def _same_version(filename: str, wanted: Version | None) -> bool:
    if wanted is None:
        return True
    found = version_of(filename)
    try:
        return found is not None and Version(found) == wanted
    except InvalidVersion:
        return False


def report(
    page: ProjectPage, outcome: Outcome, fetched_at: float, version: str | None = None
) -> list[str]:
    """One line per upstream file (of ``version``): visible, or its one decision."""
    try:
        wanted = Version(version) if version else None
    except InvalidVersion:
        return [f"{version!r} is not a PEP 440 version"]
    upstream = [
        f for f in page.files if f.origin is Origin.UPSTREAM and _same_version(f.filename, wanted)
    ]
    shown = sum(1 for f in upstream if f.filename not in outcome.decisions)
    yanked = sum(
        1 for f in upstream if (d := outcome.decision(f.filename)) and d.verdict.value == "yanked"
    )
    what = f"{page.name} {version}" if version else page.name
    lines = [
        f"{what}: {len(upstream)} upstream files in the page cached {format_time(fetched_at)}; "
        f"{shown + yanked} listed ({yanked} yanked by policy), {len(upstream) - shown - yanked} "
        "not listed"
    ]
    if outcome.refused is not None:
        lines.append(f"the project page is a 404: {outcome.refused}")
    width = max((len(f.filename) for f in upstream), default=0)
    for dist in upstream:
        decision = outcome.decision(dist.filename)
        status = "visible" if decision is None else str(decision)
        lines.append(f"  {dist.filename.ljust(width)}  {status}")
    if outcome.changes_at != float("inf") and outcome.changes_at > time.time():
        lines.append(f"next change: {format_time(outcome.changes_at)} (a release ages in)")
    return lines
