"""Parsing the guard's rules: durations, snapshot times, and name rules.

Pure functions; a bad value raises ``ValueError`` whose message the config loader prefixes
with the key's name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

__all__ = [
    "BoundRules",
    "NameRule",
    "RuleIndex",
    "Snapshot",
    "format_time",
    "parse_duration",
    "parse_rules",
    "parse_snapshot",
    "parse_version",
    "upload_epoch",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*\Z")
_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]*\Z")


def parse_duration(text: str) -> float:
    """``"7d"``, ``"36h"``, ``"90m"``, ``"30s"``, ``"2w"`` or a number of seconds; ``"0"``: off."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"expected a duration such as '7d', '36h' or '0', got {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


@lru_cache(maxsize=65536)
def upload_epoch(text: str | None) -> float | None:
    """An upstream ``upload-time`` (ISO 8601, ``Z`` or an offset) as epoch seconds; None if
    there is none or it does not parse (then ``policy.unknown_age`` decides)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # PyPI's JSON API writes UTC without a zone
    return moment.timestamp()


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=65536)
def parse_version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A moment of a ``/snapshot/<when>/`` URL: ``text`` as written (file links keep it)."""

    text: str
    at: float


def parse_snapshot(text: str) -> Snapshot:
    """``2026-11-01`` (midnight UTC, the start of that day) or an RFC 3339 time
    (``2026-11-01T12:00:00Z``, ``...+02:00``). A time without a zone is refused: the same URL
    must mean the same moment on every machine."""
    if len(text) > 40:
        raise ValueError("not a snapshot time: too long")
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return Snapshot(text, datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(
            f"not a snapshot time: {text[:40]!r}; expected a date (2026-11-01) or an RFC 3339 "
            "time with a zone (2026-11-01T12:00:00Z)"
        )
    return Snapshot(text, moment.timestamp())


@dataclass(frozen=True, slots=True)
class NameRule:
    """One rule as written (``text``, quoted in every reason) and the versions it covers."""

    text: str
    specifier: SpecifierSet | None = None  # None: every version of the project

    def matches(self, version: Version | None) -> bool:
        if self.specifier is None:
            return True
        # A file whose version does not parse is covered by a whole-project rule only.
        return version is not None and self.specifier.contains(version, prereleases=True)


@dataclass(frozen=True, slots=True)
class RuleIndex:
    """Rules by normalised project name, so a 10,000-line deny list costs one dict lookup per
    file like a one-line list: exact pins (``x==1.0``) by (name, version), other rules of a
    project by name, and the ``*`` patterns (few, by nature), tried in order."""

    by_name: Mapping[str, tuple[NameRule, ...]] = field(default_factory=dict)
    patterns: tuple[tuple[str, NameRule], ...] = ()
    pins: Mapping[tuple[str, Version], NameRule] = field(default_factory=dict)

    def __len__(self) -> int:
        named = sum(len(rules) for rules in self.by_name.values())
        return named + len(self.patterns) + len(self.pins)

    def __bool__(self) -> bool:
        return bool(self.by_name or self.patterns or self.pins)

    def for_project(self, name: str) -> tuple[NameRule, ...]:
        """The rules of ``name`` other than exact pins."""
        found = self.by_name.get(name, ())
        if self.patterns:
            found += tuple(r for p, r in self.patterns if fnmatch.fnmatchcase(name, p))
        return found

    def covers(self, name: str, version: Version | None) -> NameRule | None:
        return self.bound(name).covers(version)

    def bound(self, name: str) -> BoundRules:
        """The rules of one project, looked up once per page (patterns matched once)."""
        return BoundRules(self, name, self.for_project(name))

    def merged(self, other: RuleIndex) -> RuleIndex:
        by_name = {k: tuple(v) for k, v in self.by_name.items()}
        for key, rules in other.by_name.items():
            by_name[key] = by_name.get(key, ()) + rules
        return RuleIndex(by_name, self.patterns + other.patterns, {**other.pins, **self.pins})


@dataclass(frozen=True, slots=True)
class BoundRules:
    index: RuleIndex
    name: str
    rules: tuple[NameRule, ...]

    def covers(self, version: Version | None) -> NameRule | None:
        if self.index.pins and version is not None:
            pinned = self.index.pins.get((self.name, version))
            if pinned is not None:
                return pinned
        return next((r for r in self.rules if r.matches(version)), None)


def parse_rule(text: str) -> tuple[str, bool, NameRule]:
    """``"ctx"``, ``"acme-*"``, ``"requests<2.20"``, ``"urllib3==2.5.1"`` -> (normalised name
    or pattern, is a pattern, rule)."""
    rule = text.strip()
    if "*" in rule:
        if not _PATTERN.match(rule):
            raise ValueError(f"{text!r} is not a project name pattern such as 'acme-*'")
        return re.sub(r"[-_.]+", "-", rule.lower()), True, NameRule(rule)
    try:
        requirement = Requirement(rule)
    except InvalidRequirement as exc:
        raise ValueError(f"{text!r} is not a name or a requirement such as 'x<2': {exc}") from None
    if requirement.url or requirement.marker or requirement.extras:
        raise ValueError(f"{text!r}: only a name and version specifiers, no extras/URL/marker")
    specifier = requirement.specifier if str(requirement.specifier) else None
    return canonicalize_name(requirement.name), False, NameRule(rule, specifier)


def parse_rules(lines: Iterable[str]) -> RuleIndex:
    """Rules from a config list or a file's lines (``#`` comments and blank lines skipped)."""
    by_name: dict[str, list[NameRule]] = {}
    patterns: list[tuple[str, NameRule]] = []
    pins: dict[tuple[str, Version], NameRule] = {}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        key, is_pattern, rule = parse_rule(text)
        pinned = _pinned(rule)
        if is_pattern:
            patterns.append((key, rule))
        elif pinned is not None:
            pins.setdefault((key, pinned), rule)
        else:
            by_name.setdefault(key, []).append(rule)
    return RuleIndex({k: tuple(v) for k, v in by_name.items()}, tuple(patterns), pins)


def _pinned(rule: NameRule) -> Version | None:
    """The version of an exact pin (``==1.0``, no wildcard), found by lookup, not by test."""
    if rule.specifier is None or len(rule.specifier) != 1:
        return None
    (spec,) = rule.specifier
    if spec.operator != "==" or spec.version.endswith(".*"):
        return None
    return parse_version(spec.version)
