"""The audit log: one JSON line per change to the private packages, for whoever must answer
"who put this file here, and when?".

Each line is written with one ``write`` on a file opened with ``O_APPEND`` and fsynced, so
worker processes (and the ``proxyindex private`` CLI) can share one file without
interleaving lines, and a line that was written survives a crash. Lines carry who did it
(the user name, and the token's id when a token was used; never a password or a token's
secret), the client address the socket saw (``X-Forwarded-For`` is not trusted), and what
changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from proxyindex.config import Config

__all__ = ["ANONYMOUS", "Actor", "Audit", "AuditEvent", "AuditLog", "audit_path", "render_event"]

log = logging.getLogger(__name__)

ANONYMOUS = "-"


def audit_path(config: Config) -> Path | None:
    """Where the audit log goes: ``server.audit_log``, ``<data_dir>/audit.jsonl`` when it is
    empty, None when it is ``"off"``."""
    setting = config.server.audit_log
    if setting == "off":
        return None
    return Path(setting) if setting else config.storage.data / "audit.jsonl"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change. ``action``: upload, upload-same (identical bytes sent again: nothing
    changed, logged because someone tried), overwrite, remove or release."""

    action: str
    user: str
    client: str
    project: str
    version: str | None = None
    filename: str | None = None
    sha256: str | None = None
    token: str | None = None  # the id of the token used, never its secret
    replaced: str | None = None  # overwrite: the file that was replaced...
    replaced_sha256: str | None = None  # ...and its bytes


def render_event(event: AuditEvent, now: datetime) -> bytes:
    """The event's line: a JSON object with the time first, fields that do not apply left
    out, ending in a newline."""
    fields = {k: v for k, v in asdict(event).items() if v is not None}
    line = {"time": now.astimezone(UTC).isoformat(timespec="milliseconds"), **fields}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class AuditLog:
    """Appends events to the file at ``path`` (None: audit log off)."""

    def __init__(self, path: Path | None, listener: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._listener = listener  # hears each action recorded (the metrics), log on or off

    def check(self) -> None:
        """Blocking: fail at start-up, not at the first upload, when the file cannot be
        written (its folder is created)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))

    def write(self, event: AuditEvent) -> None:
        """Blocking: append one line (one write, O_APPEND) and fsync it."""
        if self.path is None:
            return
        data = render_event(event, datetime.now(UTC))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def record(self, event: AuditEvent) -> None:
        """Append in a thread. The change is already made when this runs: a failure to log it
        is logged loudly, and the client still hears what happened."""
        if self._listener is not None:
            self._listener(event.action)
        try:
            await asyncio.to_thread(self.write, event)
        except OSError:
            log.exception("could not write the audit log %s: %s", self.path, event)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: a user name (``-``: anonymous), the client address and the
    id of the token used, if any."""

    user: str
    client: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Audit:
    """An audit log and the actor of one request: what ``publish`` writes to."""

    log: AuditLog
    actor: Actor

    async def record(
        self,
        action: str,
        project: str,
        version: str | None = None,
        filename: str | None = None,
        sha256: str | None = None,
        *,
        replaced: str | None = None,
        replaced_sha256: str | None = None,
    ) -> None:
        actor = self.actor
        event = AuditEvent(
            action,
            actor.user,
            actor.client,
            project,
            version,
            filename,
            sha256,
            actor.token,
            replaced,
            replaced_sha256,
        )
        await self.log.record(event)
