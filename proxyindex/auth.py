"""Basic auth against an htpasswd file (bcrypt, apr1, sha1 entries, via passlib from libpass).

The file is re-read when its mtime changes, so users can be added without a restart. A bcrypt
check costs ~0.1-0.3 s of CPU, and pip and uv send credentials on every page and file request,
so a successful check is remembered (as a salted digest of the credentials, never the
password) until the file changes; checks run in a thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import threading
from pathlib import Path

from passlib.apache import HtpasswdFile

from proxyindex.config import AuthConfig
from proxyindex.errors import AuthRequired, Forbidden

__all__ = ["Authenticator", "add_user", "parse_basic"]

log = logging.getLogger(__name__)

_REMEMBERED_MAX = 10_000


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._file: HtpasswdFile | None = None
        self._mtime_ns = -1
        self._lock = threading.Lock()
        self._salt = secrets.token_bytes(16)
        self._remembered: set[bytes] = set()

    @property
    def enabled(self) -> bool:
        return self.config.htpasswd is not None

    def protects(self, action: str) -> bool:
        return self.enabled and action in self.config.protect

    def _current(self) -> HtpasswdFile:
        """The parsed file, re-read if it changed on disk (blocking)."""
        assert self.config.htpasswd is not None
        try:
            mtime_ns = self.config.htpasswd.stat().st_mtime_ns
        except OSError as exc:
            raise AuthRequired("authentication is not available") from exc
        if self._file is None or mtime_ns != self._mtime_ns:
            self._file = HtpasswdFile(str(self.config.htpasswd))
            self._mtime_ns = mtime_ns
            self._remembered.clear()
            log.info("loaded %s", self.config.htpasswd)
        return self._file

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + f"{user}\0{password}".encode()).digest()

    def verify(self, user: str, password: str) -> bool:
        """Blocking: call in a thread."""
        with self._lock:
            users = self._current()
            key = self._key(user, password)
            if key in self._remembered:
                return True
        ok = bool(users.check_password(user, password))
        if ok:
            with self._lock:
                if len(self._remembered) >= _REMEMBERED_MAX:
                    self._remembered.clear()
                self._remembered.add(key)
        return ok

    def authorize(self, action: str, header: str | None) -> str | None:
        """The user allowed to do ``action``, None if no login is needed; raises 401/403.

        Blocking (may hash a password): call in a thread.
        """
        if not self.protects(action):
            return None
        credentials = parse_basic(header)
        if credentials is None:
            raise AuthRequired(f"{action} needs a login")
        user, password = credentials
        if not self.verify(user, password):
            raise AuthRequired("wrong user name or password")
        if action == "upload" and self.config.uploaders and user not in self.config.uploaders:
            raise Forbidden(f"user {user!r} may not upload")
        return user


def add_user(path: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in an htpasswd file with a bcrypt entry (created if missing)."""
    if not user or ":" in user or any(not ch.isprintable() for ch in user):
        raise ValueError("a user name must be printable and must not contain ':'")
    htpasswd = HtpasswdFile(str(path), new=not path.exists(), default_scheme="bcrypt")
    htpasswd.set_password(user, password)
    htpasswd.save()
