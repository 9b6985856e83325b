"""The guard as a server holds it: rules from the config plus the files it names, reloaded
when those change; recent outcomes remembered; each decision logged once.

No aiohttp here. ``load`` and ``reload_if_changed`` read files: call them in a thread. A
reload swaps one immutable ``(generation, Rules)`` pair, so a request sees the old rules or
the new, never a mix; renderings made under another generation are rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from proxyindex.guard.advisories import AdvisoryIndex, folder_signature, load_folder
from proxyindex.guard.decide import Decision, Outcome, Rules, apply
from proxyindex.guard.rules import RuleIndex, Snapshot, parse_duration, parse_rules
from proxyindex.lru import LRU
from proxyindex.models import ProjectPage

if TYPE_CHECKING:
    from proxyindex.config import PolicyConfig

__all__ = ["Guard", "GuardError"]

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 2.0  # seconds between checks of deny_file, allow_only_file, advisories_dir
# Seconds between full checks of the advisory folder (a stat per file: 75 ms for 5,000 files,
# 4% of a core if done every 2 s); in between, only the folder's own mtime is looked at, which
# catches files added, removed or renamed (how rsync and ``unzip`` into a fresh folder work).
FULL_CHECK_INTERVAL = 30.0
_MEMO = 4096  # outcomes remembered (project x snapshot)
_LOGGED = 100_000  # decisions remembered as logged


class GuardError(Exception):
    """A rules file that cannot be read or parsed at start-up."""


@dataclass(frozen=True, slots=True)
class _Memo:
    page: ProjectPage
    generation: int
    outcome: Outcome


def _read_rules(path: Path) -> RuleIndex:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GuardError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return parse_rules(text.splitlines())
    except ValueError as exc:
        raise GuardError(f"{path}: {exc}") from None


def _mtime(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns  # noqa: PTH116
    except OSError:
        return -1


class Guard:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._base_deny = parse_rules(config.deny)
        self._base_allow = parse_rules(config.allow_only)
        rules = Rules(
            min_age=parse_duration(config.min_age),
            min_age_text=config.min_age,
            exempt=parse_rules(config.min_age_exempt),
            unknown_age_allow=config.unknown_age == "allow",
            deny=self._base_deny,
            allow_only=(
                self._base_allow
                if config.allow_only or config.allow_only_file is not None
                else None
            ),
            advisories_hide=config.advisories == "hide",
        )
        self._state: tuple[int, Rules] = (0, rules)
        self._deny_file: RuleIndex = RuleIndex()
        self._allow_file: RuleIndex = RuleIndex()
        self._advisories = AdvisoryIndex()
        self._signatures: dict[str, object] = {}
        self._memo: LRU[tuple[str, Snapshot | None], _Memo] = LRU(_MEMO)
        self._logged: LRU[tuple[str, str], bool] = LRU(_LOGGED)
        self._counted: LRU[tuple[str, Decision], bool] = LRU(_LOGGED)
        # Told of each file's first decision (the server's /metrics counter); None: nobody.
        self.on_decision: Callable[[Decision], None] | None = None
        self._warned_unknown = False
        self._next_full = 0.0

    @property
    def generation(self) -> int:
        return self._state[0]

    @property
    def rules(self) -> Rules:
        return self._state[1]

    @property
    def watches(self) -> bool:
        """Whether any file needs watching."""
        c = self.config
        return any(p is not None for p in (c.deny_file, c.allow_only_file, c.advisories_dir))

    # --- loading (blocking: in a thread) ---------------------------------------------------

    def load(self) -> None:
        """Read the files at start-up; a bad one raises ``GuardError`` (refuse to start)."""
        self._reload(strict=True)
        rules = self.rules
        if rules.min_age:
            log.info(
                "policy: upstream releases younger than %s are held back (exempt: %s); files "
                "without an upload time are %s (policy.unknown_age = %s)",
                self.config.min_age,
                ", ".join(self.config.min_age_exempt) or "none",
                "shown" if rules.unknown_age_allow else "hidden",
                self.config.unknown_age,
            )

    def reload_if_changed(self) -> bool:
        """Re-read what changed; a bad file is logged and the previous rules kept."""
        try:
            return self._reload(strict=False)
        except GuardError as exc:  # pragma: no cover - _reload logs and keeps in that mode
            log.error("policy: %s", exc)
            return False

    def _changed(self, key: str, signature: object) -> bool:
        if self._signatures.get(key, ()) == signature:
            return False
        self._signatures[key] = signature
        return True

    def _reload(self, *, strict: bool) -> bool:
        config = self.config
        changed = False
        for key, path in (("deny", config.deny_file), ("allow", config.allow_only_file)):
            if path is None or not self._changed(key, _mtime(path)):
                continue
            try:
                found = _read_rules(path)
            except GuardError as exc:
                if strict:
                    raise
                log.error("policy: keeping the previous rules: %s", exc)
                continue
            if key == "deny":
                self._deny_file = found
            else:
                self._allow_file = found
            log.info("policy: %d rules loaded from %s", len(found), path)
            changed = True
        folder = config.advisories_dir
        if folder is not None and (self._advisories_due(folder) or strict):
            try:
                signature: object = folder_signature(folder)
            except OSError as exc:
                if strict:
                    raise GuardError(f"{folder}: cannot read: {exc.strerror}") from None
                signature = None
            if signature is not None and self._changed("advisories", signature):
                self._advisories, count = load_folder(folder)
                log.info(
                    "policy: %d advisory records read from %s (%d projects affected)",
                    count,
                    folder,
                    len(self._advisories.by_name),
                )
                changed = True
        if changed:
            generation, rules = self._state
            allow = rules.allow_only
            rules = Rules(
                min_age=rules.min_age,
                min_age_text=rules.min_age_text,
                exempt=rules.exempt,
                unknown_age_allow=rules.unknown_age_allow,
                deny=self._base_deny.merged(self._deny_file),
                allow_only=None if allow is None else self._base_allow.merged(self._allow_file),
                advisories=self._advisories,
                advisories_hide=rules.advisories_hide,
            )
            self._state = (generation + 1, rules)
        return changed

    def _advisories_due(self, folder: Path) -> bool:
        now = time.monotonic()
        moved = self._changed("advisories-folder", _mtime(folder))
        if moved or now >= self._next_full:
            self._next_full = now + FULL_CHECK_INTERVAL
            return True
        return False

    async def watch_forever(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:
                log.exception("policy: reloading the rules failed")

    # --- deciding --------------------------------------------------------------------------

    def outcome_now(self, page: ProjectPage, snapshot: Snapshot | None = None) -> Outcome:
        """The outcome for ``page`` (blocking for large pages: see ``outcome``)."""
        now = time.time()
        generation, rules = self._state
        key = (page.name, snapshot)
        memo = self._memo.get(key)
        if (
            memo is not None
            and memo.page is page
            and memo.generation == generation
            and now < memo.outcome.changes_at
        ):
            return memo.outcome
        outcome = apply(page, rules, now, snapshot)
        self._memo.put(key, _Memo(page, generation, outcome))
        if outcome.decisions:
            self._log(page, outcome)
        return outcome

    async def outcome(self, page: ProjectPage, snapshot: Snapshot | None = None) -> Outcome:
        """The page as clients see it; work over thousands of files runs in a thread."""
        if snapshot is None and not self.rules.active:
            return Outcome(page, {})
        if page.is_large:
            return await asyncio.to_thread(self.outcome_now, page, snapshot)
        return self.outcome_now(page, snapshot)

    def _log(self, page: ProjectPage, outcome: Outcome) -> None:
        """Once per file and reason, not per request; a whole project refused for one reason
        is one line. Snapshots hide by design: not logged. Each file's first decision is also
        counted (``on_decision``: the ``/metrics`` counter)."""
        if self.on_decision is not None:
            for filename, decision in outcome.decisions.items():
                if decision.rule != "snapshot" and not self._counted.get((filename, decision)):
                    self._counted.put((filename, decision), True)
                    self.on_decision(decision)
        reasons = {d.reason for d in outcome.decisions.values()}
        if not self._warned_unknown and any(
            d.rule == "policy.unknown_age" for d in outcome.decisions.values()
        ):
            self._warned_unknown = True
            log.warning(
                "policy: the upstream gives no upload times (%s first): with policy.min_age "
                'on, such files are hidden; set policy.unknown_age = "allow" to show them',
                page.name,
            )
        if outcome.refused is not None and len(reasons) == 1:
            if outcome.refused.rule == "snapshot":
                return
            if self._logged.get((page.name, outcome.refused.reason)) is None:
                self._logged.put((page.name, outcome.refused.reason), True)
                log.info("policy: %s: every upstream file %s", page.name, outcome.refused)
            return
        for filename, decision in outcome.decisions.items():
            if decision.rule == "snapshot" or self._logged.get((filename, decision.reason)):
                continue
            self._logged.put((filename, decision.reason), True)
            log.info("policy: %s %s", filename, decision)
        if math.isfinite(outcome.changes_at):
            log.debug("policy: %s changes at %s", page.name, outcome.changes_at)
