"""API tokens: random secrets that stand in for a password (user name ``__token__``, as on PyPI).

A token is ``pxi-`` plus 32 random bytes (urlsafe base64), so guessing is hopeless and a plain
sha256 is a safe thing to store: no bcrypt, a check costs microseconds on the event loop. The
file holds only digests, with each token's id, user, scope, project and dates; it is written
atomically with mode 0600 and re-read by the server when it changes, so the CLI works on the
file directly. Blocking functions here are called from threads (server) or the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxyindex import fsutil
from proxyindex.models import normalize

__all__ = [
    "SCOPES",
    "TOKEN_PREFIX",
    "TOKEN_USER",
    "Token",
    "TokenFile",
    "create_token",
    "load_tokens",
    "parse_duration",
    "revoke_token",
    "write_private",
]

log = logging.getLogger(__name__)

TOKEN_USER = "__token__"  # noqa: S105 - the user name twine, uv and poetry send with a PyPI token
TOKEN_PREFIX = "pxi-"  # noqa: S105 - a prefix that makes leaked tokens easy to grep for
SCOPES = ("upload", "read")  # upload includes read: publishing tools read pages too
_DURATION = re.compile(r"^(\d+)([hdw])\Z")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    user: str
    scope: str
    project: str | None
    created: datetime
    expires: datetime | None
    digest: str  # sha256 hex of the secret; the secret itself is never stored

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["created"] = self.created.isoformat()
        data["expires"] = self.expires.isoformat() if self.expires else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Token:
        expires = data.get("expires")
        token = cls(
            id=str(data["id"]),
            user=str(data["user"]),
            scope=str(data["scope"]),
            project=data.get("project"),
            created=datetime.fromisoformat(data["created"]),
            expires=datetime.fromisoformat(expires) if expires else None,
            digest=str(data["digest"]),
        )
        if token.scope not in SCOPES or len(token.digest) != 64:
            raise ValueError(f"token {token.id}: bad scope or digest")
        return token


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w`` -> a timedelta; ValueError otherwise."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"expected a duration such as 90d, 12h or 2w, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def load_tokens(path: Path) -> list[Token]:
    """Blocking. A missing file holds no tokens; a broken one raises ValueError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = json.loads(text)
        return [Token.from_json(item) for item in data["tokens"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid tokens file: {exc}") from exc


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Blocking: replace ``path`` atomically (temp + fsync + rename) with a file of ``mode``."""
    fh, temp = fsutil.open_temp(path.parent)
    try:
        with fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        fsutil.commit_replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _save(path: Path, tokens: list[Token]) -> None:
    """Readable by the owner only: digests are not secrets, but user names and scopes are
    nobody else's business."""
    body = json.dumps({"tokens": [t.as_json() for t in tokens]}, indent=2) + "\n"
    write_private(path, body.encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write by two CLI runs (the lock file is beside the tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def create_token(
    path: Path,
    user: str,
    *,
    scope: str = "upload",
    project: str | None = None,
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> tuple[Token, str]:
    """Add a token to the file; returns it and its secret (shown once, never stored).
    ``project`` is compared with normalised names, so it is stored normalised."""
    if project is not None:
        project = normalize(project)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    now = now or datetime.now(UTC)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _locked(path):
        tokens = load_tokens(path)
        taken = {t.id for t in tokens}
        token_id = secrets.token_hex(4)
        while token_id in taken:  # pragma: no cover - 1 in 4 billion
            token_id = secrets.token_hex(4)
        token = Token(
            id=token_id,
            user=user,
            scope=scope,
            project=project,
            created=now.replace(microsecond=0),
            expires=(now + expires_in).replace(microsecond=0) if expires_in else None,
            digest=_digest(secret),
        )
        _save(path, [*tokens, token])
    return token, secret


def revoke_token(path: Path, token_id: str) -> Token | None:
    """Remove a token by id; returns it, or None if there was none with that id."""
    with _locked(path):
        tokens = load_tokens(path)
        kept = [t for t in tokens if t.id != token_id]
        if len(kept) == len(tokens):
            return None
        _save(path, kept)
    return next(t for t in tokens if t.id == token_id)


class TokenFile:
    """The server's view of the tokens file, re-read when its mtime, size or inode change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Token] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Blocking. A broken file keeps the last good tokens (and is logged once per change)."""
        if self.path is None:
            return
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = (0, 0, 0)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                tokens = load_tokens(self.path)
            except (OSError, ValueError) as exc:
                log.error("%s; keeping the tokens loaded before", exc)
                return
            self._by_digest = {t.digest: t for t in tokens}

    def find(self, secret: str) -> Token | None:
        """The token whose digest matches ``secret`` (expiry is the caller's to check)."""
        digest = _digest(secret)
        token = self._by_digest.get(digest)
        if token is None or not hmac.compare_digest(token.digest, digest):
            return None
        return token
