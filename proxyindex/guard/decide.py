"""The one decision: which files of a page a client sees, and why the others are not there.

``apply(page, rules, now, at)`` is pure. Private files are never held back (only a snapshot
hides those uploaded after its time). For each upstream file the first rule that applies
gives its one reason, in this order: snapshot, ``allow_only``, ``deny``, ``min_age`` (and
``unknown_age``), advisories.

Cooldown is decided per release, not per file: a release's first upload opens a batch
(``RELEASE_BATCH``, 24 hours); the release becomes visible, with every file of that batch,
once the batch's newest file is ``min_age`` old. A release therefore never shows "half there"
(an old enough sdist without its younger wheels, which pip and uv would build by surprise).
A file added later than the batch (a wheel for a new Python months after) is held back by its
own time, and never hides the release again: a release that was visible stays visible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from packaging.version import Version

from proxyindex.guard.advisories import Advisory, AdvisoryIndex
from proxyindex.guard.rules import (
    BoundRules,
    RuleIndex,
    Snapshot,
    format_time,
    parse_version,
    upload_epoch,
)
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.simple import project_versions, version_of

__all__ = ["RELEASE_BATCH", "Decision", "Outcome", "Rules", "Verdict", "apply"]

# Seconds after a release's first upload within which its files form one batch: cibuildwheel
# jobs upload a release's wheels within hours of its sdist.
RELEASE_BATCH = 86400.0


class Verdict(Enum):
    HIDDEN = "hidden"  # not listed; a download is 404
    DENIED = "denied"  # not listed; a download is 403
    YANKED = "yanked"  # listed as yanked (PEP 592): pip and uv skip it unless pinned


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: str  # the config key that decided: "policy.deny", "snapshot", ...
    reason: str  # one line, for logs, headers and ``policy explain``

    def __str__(self) -> str:
        return f"{self.verdict.value} by {self.rule}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything the guard applies, as one immutable value (swapped whole on reload)."""

    min_age: float = 0.0
    min_age_text: str = "0"
    exempt: RuleIndex = field(default_factory=RuleIndex)
    unknown_age_allow: bool = False
    deny: RuleIndex = field(default_factory=RuleIndex)
    allow_only: RuleIndex | None = None  # None: off
    advisories: AdvisoryIndex = field(default_factory=AdvisoryIndex)
    advisories_hide: bool = False

    @property
    def active(self) -> bool:
        return bool(
            self.min_age or len(self.deny) or self.allow_only is not None or self.advisories.by_name
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    page: ProjectPage  # what clients see
    decisions: Mapping[str, Decision]  # by filename: every file hidden, denied or yanked
    changes_at: float = math.inf  # when time alone changes the answer (a release ages in)
    refused: Decision | None = None  # nothing left to list: the page is a 404 for this reason

    def decision(self, filename: str) -> Decision | None:
        return self.decisions.get(filename)


@dataclass(slots=True)
class _Release:
    first: float | None = None
    ready: float = -math.inf  # when the batch is min_age old

    def add(self, moment: float) -> None:
        self.first = moment if self.first is None else min(self.first, moment)


def _release_times(
    files: list[tuple[DistFile, str | None, float | None]], min_age: float
) -> dict[str | None, _Release]:
    releases: dict[str | None, _Release] = {}
    for _dist, version, moment in files:
        if moment is not None:
            releases.setdefault(version, _Release()).add(moment)
    for version, release in releases.items():
        assert release.first is not None
        batch_end = release.first + RELEASE_BATCH
        newest = max(m for _d, v, m in files if v == version and m is not None and m <= batch_end)
        release.ready = newest + min_age
    return releases


def _cooldown(
    rules: Rules, release: _Release | None, moment: float | None, now: float
) -> tuple[Decision | None, float]:
    """(decision or None, when it would change)."""
    if moment is None or release is None or release.first is None:
        if rules.unknown_age_allow:
            return None, math.inf
        return (
            Decision(
                Verdict.HIDDEN,
                "policy.unknown_age",
                "the upstream gives no upload time, so its age is unknown (policy.unknown_age"
                f" = deny with policy.min_age = {rules.min_age_text})",
            ),
            math.inf,
        )
    visible = release.ready
    if moment > release.first + RELEASE_BATCH:
        visible = max(visible, moment + rules.min_age)
    if visible <= now:
        return None, math.inf
    return (
        Decision(
            Verdict.HIDDEN,
            "policy.min_age",
            f"uploaded {format_time(moment)}, younger than policy.min_age ({rules.min_age_text});"
            f" visible from {format_time(visible)}",
        ),
        visible,
    )


def _after(snapshot: Snapshot, moment: float) -> Decision:
    when = f"uploaded {format_time(moment)}, after the snapshot {format_time(snapshot.at)}"
    return Decision(Verdict.HIDDEN, "snapshot", when)


def _snapshot(rules: Rules, moment: float | None, snapshot: Snapshot) -> Decision | None:
    if moment is None and not rules.unknown_age_allow:
        return Decision(
            Verdict.HIDDEN, "snapshot", "the upstream gives no upload time (policy.unknown_age)"
        )
    if moment is not None and moment > snapshot.at:
        return _after(snapshot, moment)
    return None


def _file_decision(
    name: str, version: Version | None, allow: BoundRules | None, deny: BoundRules | None
) -> Decision | None:
    """``allow_only`` and ``deny``: they depend on the version only."""
    if allow is not None and allow.covers(version) is None:
        return Decision(Verdict.HIDDEN, "policy.allow_only", f"{name} is not in policy.allow_only")
    denied = deny.covers(version) if deny is not None else None
    if denied is not None:
        return Decision(
            Verdict.DENIED, "policy.deny", f"denied by policy.deny rule {denied.text!r}"
        )
    return None


def apply(page: ProjectPage, rules: Rules, now: float, snapshot: Snapshot | None = None) -> Outcome:
    """The page as clients see it under ``rules`` at ``now`` (and as of ``snapshot``)."""
    if not rules.active and snapshot is None:
        return Outcome(page, {})
    name = page.name
    upstream: list[tuple[DistFile, str | None, float | None]] = []
    decisions: dict[str, Decision] = {}
    for dist in page.files:
        moment = upload_epoch(dist.upload_time)
        if dist.origin is Origin.PRIVATE:
            if snapshot is not None and moment is not None and moment > snapshot.at:
                decisions[dist.filename] = _after(snapshot, moment)
            continue
        upstream.append((dist, version_of(dist.filename), moment))
    releases = _release_times(upstream, rules.min_age) if rules.min_age else {}
    changes_at = math.inf
    # Rules that depend on the version only are decided once per version (a release has
    # dozens of wheels); the time-dependent ones per file.
    by_version: dict[str | None, tuple[Decision | None, bool, Advisory | None]] = {}
    allow = rules.allow_only.bound(name) if rules.allow_only is not None else None
    deny = rules.deny.bound(name) if rules.deny else None
    exempt = rules.exempt.bound(name) if rules.min_age and rules.exempt else None
    affected: dict[Version, Advisory] = {}
    if name in rules.advisories.by_name:
        parsed = (parse_version(v) for _d, v, _m in upstream)
        affected = rules.advisories.affected(name, (v for v in parsed if v is not None))
    for dist, version_text, moment in upstream:
        known = by_version.get(version_text)
        if known is None:
            version = parse_version(version_text)
            known = (
                _file_decision(name, version, allow, deny),
                exempt is not None and exempt.covers(version) is not None,
                affected.get(version) if version is not None else None,
            )
            by_version[version_text] = known
        static, exempted, advisory = known
        decision = _snapshot(rules, moment, snapshot) if snapshot is not None else None
        decision = decision or static
        if decision is None and rules.min_age and not exempted:
            decision, change = _cooldown(rules, releases.get(version_text), moment, now)
            changes_at = min(changes_at, change)
        if decision is None and advisory is not None:
            if rules.advisories_hide:
                decision = Decision(Verdict.HIDDEN, "policy.advisories", advisory.reason)
            elif dist.yanked is False:  # an upstream yank keeps its own reason
                decision = Decision(Verdict.YANKED, "policy.advisories", advisory.reason)
        if decision is not None:
            decisions[dist.filename] = decision
    if not decisions:
        return Outcome(page, {}, changes_at)
    files: list[DistFile] = []
    for dist in page.files:
        decision = decisions.get(dist.filename)
        if decision is None:
            files.append(dist)
        elif decision.verdict is Verdict.YANKED:
            files.append(replace(dist, yanked=decision.reason))
    listed = project_versions(page.files)
    versions = project_versions(files, page.versions - listed)
    visible = ProjectPage(name, tuple(files), versions, page.serial, page.status)
    refused = None
    if not files:
        # Nothing to list: the page is a 404, for the reason of its last file.
        refused = decisions[page.files[-1].filename]
    return Outcome(visible, decisions, changes_at, refused)
