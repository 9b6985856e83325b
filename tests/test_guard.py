"""The supply-chain guard's pure parts (issue 14): rules, advisories, and the one decision
per file, as tables. End-to-end behaviour with real clients is in tests/test_guard_e2e.py."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from packaging.utils import NormalizedName
from packaging.version import Version

from proxyindex.config import ConfigError, load_config
from proxyindex.guard.advisories import build_index, load_folder, parse_record
from proxyindex.guard.decide import RELEASE_BATCH, Outcome, Rules, Verdict, apply
from proxyindex.guard.live import Guard
from proxyindex.guard.rules import parse_duration, parse_rules, parse_snapshot, parse_version
from proxyindex.models import DistFile, Origin, ProjectPage

DAY = 86400.0
NOW = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dist(filename: str, age_days: float | None = 30, origin: Origin = Origin.UPSTREAM) -> DistFile:
    return DistFile(
        filename=filename,
        location=f"https://files.example/{filename}",
        origin=origin,
        upload_time=None if age_days is None else _iso(NOW - age_days * DAY),
    )


def page(*files: DistFile, name: str = "demo") -> ProjectPage:
    return ProjectPage(NormalizedName(name), files)


def visible(outcome: Outcome) -> list[str]:
    return [f.filename for f in outcome.page.files]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("7d", 7 * DAY), ("36h", 36 * 3600), ("90m", 5400), ("30s", 30), ("2w", 14 * DAY)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7 days", "-1d", "d", "1y", ""])
def test_bad_duration_is_refused_naming_the_key(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.min_age"):
        load_config(None, overrides={"policy": {"min_age": text}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("deny", ["requests[socks]<2"]),
        ("deny", ["a b"]),
        ("min_age_exempt", ["x @ https://evil/x.whl"]),
        ("allow_only", ["bad/*"]),
        ("unknown_age", "maybe"),
        ("advisories", "delete"),
    ],
)
def test_bad_policy_values_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"policy\.{key}"):
        load_config(None, overrides={"policy": {key: value}})


def test_min_age_zero_may_be_a_number_in_the_environment() -> None:
    config = load_config(None, environ={"PROXYINDEX_POLICY_MIN_AGE": "0"})
    assert config.policy.min_age == "0"


def test_snapshot_times() -> None:
    assert parse_snapshot("2026-11-01").at == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    at = parse_snapshot("2026-11-01T12:30:00+02:00").at
    assert at == datetime(2026, 11, 1, 10, 30, tzinfo=UTC).timestamp()
    for bad in ("2026-11-01T12:00:00", "yesterday", "2026-13-01", "x" * 50):
        with pytest.raises(ValueError, match="snapshot"):
            parse_snapshot(bad)


def test_rules_are_indexed_by_normalised_name_and_patterns() -> None:
    rules = parse_rules(["Requests<2.20", "ctx  # typosquat", "", "evil_*", "# comment"])
    assert len(rules) == 3
    assert set(rules.by_name) == {"requests", "ctx"}
    assert rules.covers("requests", parse_version("2.19")) is not None
    assert rules.covers("requests", parse_version("2.20")) is None
    assert rules.covers("evil-thing", None) is not None
    assert rules.covers("goodthing", None) is None


# --- the decision ------------------------------------------------------------------------------


def test_no_rules_return_the_same_page_object() -> None:
    p = page(dist("demo-1.0.tar.gz", 0))
    assert apply(p, Rules(), NOW).page is p


def test_cooldown_hides_young_releases_and_says_when_they_appear() -> None:
    p = page(dist("demo-1.0.tar.gz", 30), dist("demo-2.0.tar.gz", 2))
    outcome = apply(p, Rules(min_age=7 * DAY, min_age_text="7d"), NOW)
    assert visible(outcome) == ["demo-1.0.tar.gz"]
    decision = outcome.decisions["demo-2.0.tar.gz"]
    assert decision.verdict is Verdict.HIDDEN and decision.rule == "policy.min_age"
    assert "younger than policy.min_age (7d)" in decision.reason
    assert outcome.changes_at == pytest.approx(NOW + 5 * DAY)
    assert outcome.page.versions == frozenset({"1.0"})
    # Five days later the release is there, and the answer no longer changes by time.
    later = apply(p, Rules(min_age=7 * DAY), NOW + 5 * DAY + 1)
    assert visible(later) == ["demo-1.0.tar.gz", "demo-2.0.tar.gz"]
    assert later.changes_at == math.inf


def test_a_release_is_never_half_there() -> None:
    """sdist old enough, its wheel not (uploaded 2 hours later): the whole release waits."""
    p = page(
        dist("demo-1.0-py3-none-any.whl", 30),
        dist("demo-2.0.tar.gz", 7 + 1 / 24),
        dist("demo-2.0-py3-none-any.whl", 7 - 1 / 24),
    )
    outcome = apply(p, Rules(min_age=7 * DAY), NOW)
    assert visible(outcome) == ["demo-1.0-py3-none-any.whl"]
    assert set(outcome.decisions) == {"demo-2.0.tar.gz", "demo-2.0-py3-none-any.whl"}


def test_a_file_added_long_after_its_release_waits_alone() -> None:
    """A wheel added to a 30-day-old release yesterday: the release stays, the wheel waits."""
    p = page(dist("demo-1.0.tar.gz", 30), dist("demo-1.0-cp314-cp314-any.whl", 1))
    outcome = apply(p, Rules(min_age=7 * DAY), NOW)
    assert visible(outcome) == ["demo-1.0.tar.gz"]
    assert outcome.changes_at == pytest.approx(NOW + 6 * DAY)
    assert RELEASE_BATCH < 29 * DAY


def test_exemptions_by_name_pattern_and_exact_release() -> None:
    young = [dist("urllib3-2.5.1.tar.gz", 1), dist("urllib3-2.5.2.tar.gz", 1)]
    rules = Rules(min_age=7 * DAY, exempt=parse_rules(["urllib3==2.5.1", "acme-*", "certifi"]))
    assert visible(apply(page(*young, name="urllib3"), rules, NOW)) == ["urllib3-2.5.1.tar.gz"]
    acme = page(dist("acme_x-1.0.tar.gz", 0), name="acme-x")
    assert visible(apply(acme, rules, NOW)) == ["acme_x-1.0.tar.gz"]


def test_private_files_are_never_held_back() -> None:
    p = page(dist("demo-3.0.tar.gz", 0, Origin.PRIVATE), dist("demo-2.0.tar.gz", 0))
    rules = Rules(min_age=7 * DAY, deny=parse_rules(["demo"]), allow_only=parse_rules([]))
    outcome = apply(p, rules, NOW)
    assert visible(outcome) == ["demo-3.0.tar.gz"]
    assert outcome.refused is None


def test_unknown_upload_time_is_hidden_by_default_and_shown_when_allowed() -> None:
    p = page(dist("demo-1.0.tar.gz", None))
    hidden = apply(p, Rules(min_age=DAY), NOW)
    assert hidden.refused is not None and hidden.refused.rule == "policy.unknown_age"
    assert visible(apply(p, Rules(min_age=DAY, unknown_age_allow=True), NOW)) == ["demo-1.0.tar.gz"]
    assert Guard(load_config(None).policy).rules.unknown_age_allow is False  # the default


def test_deny_rules_refuse_with_the_rule_named() -> None:
    p = page(dist("requests-2.19.0.tar.gz"), dist("requests-2.20.0.tar.gz"), name="requests")
    outcome = apply(p, Rules(deny=parse_rules(["requests<2.20"])), NOW)
    assert visible(outcome) == ["requests-2.20.0.tar.gz"]
    decision = outcome.decisions["requests-2.19.0.tar.gz"]
    assert decision.verdict is Verdict.DENIED
    assert decision.reason == "denied by policy.deny rule 'requests<2.20'"
    whole = apply(page(dist("ctx-0.1.tar.gz"), name="ctx"), Rules(deny=parse_rules(["ctx"])), NOW)
    assert whole.refused is not None and whole.refused.verdict is Verdict.DENIED


def test_allow_only_lists_the_only_upstream_projects() -> None:
    rules = Rules(allow_only=parse_rules(["six", "requests>=2"]))
    assert apply(page(dist("six-1.0.tar.gz"), name="six"), rules, NOW).refused is None
    other = apply(page(dist("other-1.0.tar.gz"), name="other"), rules, NOW)
    assert other.refused is not None and "not in policy.allow_only" in other.refused.reason
    req = page(dist("requests-1.0.tar.gz"), dist("requests-2.0.tar.gz"), name="requests")
    assert visible(apply(req, rules, NOW)) == ["requests-2.0.tar.gz"]


def test_snapshot_hides_files_uploaded_after_it_private_ones_too() -> None:
    p = page(
        dist("demo-1.0.tar.gz", 30),
        dist("demo-2.0.tar.gz", 5),
        dist("demo-1.5.tar.gz", 3, Origin.PRIVATE),
        dist("demo-0.9.tar.gz", 40, Origin.PRIVATE),
    )
    snapshot = parse_snapshot(_iso(NOW - 10 * DAY).replace(".000000", ""))
    outcome = apply(p, Rules(), NOW, snapshot)
    assert visible(outcome) == ["demo-1.0.tar.gz", "demo-0.9.tar.gz"]
    assert outcome.decisions["demo-2.0.tar.gz"].rule == "snapshot"


# --- advisories --------------------------------------------------------------------------------

RECORD = {
    "id": "PYSEC-2099-1",
    "summary": "Remote code execution in demo",
    "affected": [
        {
            "package": {"ecosystem": "PyPI", "name": "Demo"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2"}]},
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.0"}, {"last_affected": "2.1"}]},
                {"type": "GIT", "events": [{"introduced": "abc"}]},
            ],
            "versions": ["3.0"],
        },
        {"package": {"ecosystem": "npm", "name": "demo"}, "versions": ["1.5"]},
    ],
}


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("0.1", True),
        ("1.1", True),
        ("1.2", False),
        ("1.5", False),
        ("2.0", True),
        ("2.1", True),
        ("2.1.1", False),
        ("3.0", True),
        ("3.1", False),
    ],
)
def test_osv_ranges_and_versions(version: str, affected: bool) -> None:
    [(name, advisory)] = parse_record(RECORD)
    assert name == "demo"
    assert advisory.affects(Version(version)) is affected


def test_withdrawn_records_are_skipped() -> None:
    assert parse_record({**RECORD, "withdrawn": "2099-01-01T00:00:00Z"}) == []


def test_advisories_yank_with_id_and_summary_or_hide() -> None:
    index = build_index(parse_record(RECORD))
    p = page(dist("demo-1.1.tar.gz"), dist("demo-1.2.tar.gz"))
    yanked = apply(p, Rules(advisories=index), NOW)
    assert [f.yanked for f in yanked.page.files] == [
        "PYSEC-2099-1: Remote code execution in demo",
        False,
    ]
    hidden = apply(p, Rules(advisories=index, advisories_hide=True), NOW)
    assert visible(hidden) == ["demo-1.2.tar.gz"]


def test_advisory_folder_skips_bad_files(tmp_path: Path) -> None:
    (tmp_path / "PYSEC-2099-1.json").write_text(json.dumps(RECORD))
    (tmp_path / "broken.json").write_text("{")
    index, count = load_folder(tmp_path)
    assert count == 1 and len(index) == 1


def test_deny_file_is_reloaded_when_it_changes_and_a_bad_one_keeps_the_old_rules(
    tmp_path: Path,
) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("evil\n")
    guard = Guard(load_config(None, overrides={"policy": {"deny_file": str(deny)}}).policy)
    guard.load()
    assert guard.rules.deny.covers("evil", None) is not None
    generation = guard.generation
    assert guard.reload_if_changed() is False  # unchanged: nothing re-read
    deny.write_text("worse\n")
    os.utime(deny, ns=(1, 10**18))
    assert guard.reload_if_changed() is True
    assert guard.generation == generation + 1
    assert guard.rules.deny.covers("evil", None) is None
    deny.write_text("bad/rule\n")
    os.utime(deny, ns=(1, 2 * 10**18))
    guard.reload_if_changed()
    assert guard.rules.deny.covers("worse", None) is not None


def test_advisory_bisection_agrees_with_testing_each_version() -> None:
    [(_, advisory)] = parse_record(RECORD)
    versions = ["0.1", "1.1", "1.2", "1.5", "2.0", "2.0.5", "2.1", "2.1.1", "3.0", "3.1"]
    p = page(*(dist(f"demo-{v}.tar.gz") for v in versions))
    outcome = apply(p, Rules(advisories=build_index(parse_record(RECORD))), NOW)
    yanked = {f.filename for f in outcome.page.files if f.yanked}
    assert yanked == {f"demo-{v}.tar.gz" for v in versions if advisory.affects(Version(v))}
    assert len(yanked) == 6
