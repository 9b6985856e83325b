"""OSV advisory records (the OSV database's PyPI export, GitHub's advisory database) indexed
by project name.

Only what decides "is this version affected" is kept: for each ``affected`` entry of the PyPI
ecosystem, its ``ECOSYSTEM`` ranges (``introduced`` / ``fixed`` / ``last_affected`` events,
compared as PEP 440 versions) and its explicit ``versions`` list. Withdrawn records are
skipped. Parsing is pure; ``load_folder`` reads a folder (blocking: call it in a thread).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import Version

from proxyindex.guard.rules import parse_version

__all__ = ["Advisory", "AdvisoryIndex", "folder_signature", "load_folder", "parse_record"]

log = logging.getLogger(__name__)

_SUMMARY_MAX = 120


@dataclass(frozen=True, slots=True)
class _Range:
    low: Version | None  # None: from the first version ("introduced": "0")
    high: Version | None  # None: not fixed
    high_inclusive: bool  # "last_affected" rather than "fixed"

    def contains(self, version: Version) -> bool:
        if self.low is not None and version < self.low:
            return False
        if self.high is None:
            return True
        return version <= self.high if self.high_inclusive else version < self.high


@dataclass(frozen=True, slots=True)
class Advisory:
    """One project's part of one record."""

    id: str
    summary: str
    ranges: tuple[_Range, ...] = ()
    versions: frozenset[Version] = frozenset()

    @property
    def reason(self) -> str:
        return f"{self.id}: {self.summary}" if self.summary else self.id

    def affects(self, version: Version) -> bool:
        return version in self.versions or any(r.contains(version) for r in self.ranges)


@dataclass(frozen=True, slots=True)
class AdvisoryIndex:
    by_name: Mapping[str, tuple[Advisory, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len({a.id for entries in self.by_name.values() for a in entries})

    def for_project(self, name: str) -> tuple[Advisory, ...]:
        return self.by_name.get(name, ())

    def affected(self, name: str, versions: Iterable[Version]) -> dict[Version, Advisory]:
        """The first advisory (by id) affecting each of ``versions``: each range is found by
        bisection in the sorted versions, O(advisories x log versions), not one test per
        (advisory, version) pair (300 advisories x 200 releases: 170 ms that way)."""
        ordered = sorted(set(versions))
        found: dict[Version, Advisory] = {}
        for advisory in self.for_project(name):
            for version in advisory.versions:
                found.setdefault(version, advisory)
            for span in advisory.ranges:
                start = 0 if span.low is None else bisect.bisect_left(ordered, span.low)
                if span.high is None:
                    end = len(ordered)
                elif span.high_inclusive:
                    end = bisect.bisect_right(ordered, span.high)
                else:
                    end = bisect.bisect_left(ordered, span.high)
                for version in ordered[start:end]:
                    found.setdefault(version, advisory)
        return found


def _ranges(events: Iterable[Mapping[str, Any]]) -> list[_Range]:
    """OSV events in order: each ``introduced`` opens a range, the next ``fixed`` or
    ``last_affected`` closes it (``limit`` ends the search: treated as ``fixed``)."""
    out: list[_Range] = []
    low: Version | None = None
    opened = False
    for event in events:
        if not isinstance(event, Mapping):
            continue
        if "introduced" in event:
            text = str(event["introduced"])
            low = None if text == "0" else parse_version(text)
            opened = low is not None or text == "0"
        for key, inclusive in (("fixed", False), ("limit", False), ("last_affected", True)):
            if key in event and opened:
                high = parse_version(str(event[key]))
                if high is not None:
                    out.append(_Range(low, high, inclusive))
                opened = False
    if opened:
        out.append(_Range(low, None, False))
    return out


def _summary(record: Mapping[str, Any]) -> str:
    text = record.get("summary") or ""
    if not text:
        details = str(record.get("details") or "").strip()
        text = details.splitlines()[0] if details else ""
    text = " ".join(str(text).split())
    return text if len(text) <= _SUMMARY_MAX else text[: _SUMMARY_MAX - 3] + "..."


def parse_record(record: Any) -> list[tuple[str, Advisory]]:
    """(normalised project name, advisory) for each PyPI project a record affects."""
    if not isinstance(record, Mapping) or not isinstance(record.get("id"), str):
        raise ValueError("not an OSV record (no id)")
    if record.get("withdrawn"):
        return []
    ident, summary = record["id"], _summary(record)
    out: list[tuple[str, Advisory]] = []
    for affected in record.get("affected") or ():
        package = affected.get("package") if isinstance(affected, Mapping) else None
        if not isinstance(package, Mapping) or package.get("ecosystem") != "PyPI":
            continue
        name = package.get("name")
        if not isinstance(name, str) or not name:
            continue
        ranges: list[_Range] = []
        for item in affected.get("ranges") or ():
            if isinstance(item, Mapping) and item.get("type") == "ECOSYSTEM":
                ranges.extend(_ranges(item.get("events") or ()))
        versions = frozenset(
            v for text in affected.get("versions") or () if (v := parse_version(str(text)))
        )
        if ranges or versions:
            out.append((canonicalize_name(name), Advisory(ident, summary, tuple(ranges), versions)))
    return out


def build_index(records: Iterable[tuple[str, Advisory]]) -> AdvisoryIndex:
    by_name: dict[str, list[Advisory]] = {}
    for name, advisory in records:
        by_name.setdefault(name, []).append(advisory)
    # One reason per file: the first advisory by id, the same on every machine.
    return AdvisoryIndex({k: tuple(sorted(v, key=lambda a: a.id)) for k, v in by_name.items()})


def _json_files(folder: Path) -> list[os.DirEntry[str]]:
    found: list[os.DirEntry[str]] = []
    pending = [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.name.endswith(".json") and not entry.name.startswith("."):
                    found.append(entry)
    return found


def folder_signature(folder: Path) -> tuple[int, int, int]:
    """(files, newest mtime, total size): changes when a file is added, removed or rewritten
    in place (``unzip -o`` keeps names, so a folder's own mtime is not enough). 5,000 files:
    a few ms of stat calls, in a thread, every few seconds."""
    entries = _json_files(folder)
    stats = [e.stat() for e in entries]
    return (
        len(stats),
        max((s.st_mtime_ns for s in stats), default=0),
        sum(s.st_size for s in stats),
    )


def load_folder(folder: Path) -> tuple[AdvisoryIndex, int]:
    """Every ``*.json`` record under ``folder``; a file that does not parse is logged and
    skipped (one bad record must not drop the others). Returns (index, records read)."""
    records: list[tuple[str, Advisory]] = []
    count = 0
    for entry in _json_files(folder):
        try:
            with open(entry.path, "rb") as fh:  # noqa: PTH123 - DirEntry paths
                records.extend(parse_record(json.load(fh)))
            count += 1
        except (OSError, ValueError) as exc:
            log.warning("advisory %s skipped: %s", entry.path, exc)
    return build_index(records), count
