"""Basic auth against an htpasswd file (bcrypt, apr1, sha1 entries, via passlib from libpass),
and API tokens (``__token__`` + a secret, see ``tokens``).

The file is re-read when it changes, so users can be added without a restart; a file that
stops parsing keeps the last good one in use (one error in the log naming the line), and if
none was ever good the answer is 503. A bcrypt check costs ~0.3-0.6 s of CPU and pip and uv
send credentials on every request, so:

- a successful check is remembered (a salted digest of the credentials, never the password)
  until the file changes, and costs nothing afterwards;
- hashing runs on its own small executor, so wrong passwords queue behind each other and never
  behind file I/O on the default pool (60 parallel wrong passwords made a valid user's page
  take 10-12 s when they shared it);
- a failed check is remembered for ``_FAILED_TTL``: the same wrong password is not re-hashed;
- each client address has a budget of failed (and in-flight) checks; over it: 429 with
  Retry-After, before any hashing;
- an unknown user costs one check against another user's entry (same scheme and cost), so
  timing does not tell which user names exist (measured before: 1 ms for an unknown name,
  770 ms for a known one with a wrong password; now ~600 ms both).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from passlib.apache import HtpasswdFile
from passlib.hash import bcrypt

from proxyindex.auth.tokens import TOKEN_USER, Token, TokenFile, write_private
from proxyindex.config import AuthConfig
from proxyindex.errors import AuthRequired, AuthUnavailable, Forbidden, TooManyRequests
from proxyindex.lru import LRU

__all__ = [
    "ADMIN",
    "MANAGE",
    "PUBLIC",
    "Authenticator",
    "FailureBudget",
    "Identity",
    "add_user",
    "check_htpasswd",
    "list_users",
    "parse_basic",
    "remove_user",
]

log = logging.getLogger(__name__)

_REMEMBERED_MAX = 10_000
_FAILED_TTL = 300.0  # seconds a wrong (user, password) pair is answered without hashing
_HASH_THREADS = 2  # bcrypt is CPU-bound: more threads than cores only lengthens every wait
_CLIENTS_MAX = 10_000
PUBLIC = "public"  # the action of routes that never need a login (/health, the home page)
ADMIN = "admin"  # the admin API: users in auth.admins; without users, localhost only
MANAGE = "manage"  # the web UI's yank/remove buttons: admins and users allowed to upload
_LOOPBACK = ("127.0.0.1", "::1")


def is_loopback(client: str) -> bool:
    """The client address is this host (the address the socket saw, never a header)."""
    return client in _LOOPBACK or client.startswith("127.") or client == "::ffff:127.0.0.1"


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


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request: a user, and the token used in place of their password, if any."""

    user: str
    token: Token | None = None

    def check_project(self, project: str) -> None:
        """A token limited to one project may not upload or remove another (403)."""
        if self.token is not None and self.token.project not in (None, project):
            raise Forbidden(
                f"token {self.token.id} is limited to project {self.token.project!r}, "
                f"not {project!r}"
            )


class FailureBudget:
    """Failed logins per client address in a sliding window; in-flight checks count too, so
    60 parallel guesses are bounded before the first one has failed. Pure bookkeeping, used
    on the event loop only."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._in_flight: collections.Counter[str] = collections.Counter()

    def _recent(self, client: str) -> collections.deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            if len(self._failures) >= _CLIENTS_MAX:
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[client] = collections.deque()
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def check(self, client: str) -> None:
        """Raise 429 if ``client`` has no failures left to spend."""
        if not self.limit:
            return
        failures = self._recent(client)
        if len(failures) + self._in_flight[client] < self.limit:
            return
        wait = failures[0] + self.window - self._clock() if failures else 1.0
        raise TooManyRequests(
            f"too many failed logins from {client}; try again later", max(1, math.ceil(wait))
        )

    def begin(self, client: str) -> None:
        self._in_flight[client] += 1

    def end(self, client: str) -> None:
        self._in_flight[client] -= 1
        if self._in_flight[client] <= 0:
            del self._in_flight[client]

    def fail(self, client: str) -> None:
        if not self.limit:
            return
        failures = self._recent(client)
        failures.append(self._clock())
        if len(failures) == self.limit:  # once per window and client, not once per request
            log.warning(
                "%s failed to log in %d times within %d s: answering 429 until it waits",
                client,
                self.limit,
                self.window,
            )


_MALFORMED_LINE = re.compile(r"line (\d+)")


def _read_htpasswd(path: Path) -> HtpasswdFile:
    """Blocking: parse the file; ValueError with the file and line number if it is broken.
    New passwords set on it are bcrypt."""
    try:
        return HtpasswdFile(str(path), default_scheme="bcrypt")
    except ValueError as exc:
        match = _MALFORMED_LINE.search(str(exc))
        where = f" line {match.group(1)}" if match else ""
        raise ValueError(f"{path}{where} is malformed (expected user:hash)") from exc


def check_htpasswd(path: Path) -> None:
    """Blocking, for start-up: raise ValueError naming the file if it cannot be used."""
    try:
        path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        _read_htpasswd(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._users: HtpasswdFile | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._unreadable = False
        self._generation = 0  # bumped (in a thread) each time the htpasswd file is loaded
        self._remembered_generation = 0
        self._refresh_lock = threading.Lock()
        self._tokens = TokenFile(config.tokens_file)
        self._salt = secrets.token_bytes(16)
        self._remembered: LRU[bytes, bool] = LRU(_REMEMBERED_MAX)  # (user, password) that passed
        self._failed: LRU[bytes, float] = LRU(_REMEMBERED_MAX)  # -> until when it is refused
        self._budget = FailureBudget(config.max_failed_logins, config.failed_login_window)
        self._executor = ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="proxyindex-auth")
        self._dummy_hash: str | None = None
        self._hash_lock = threading.Lock()
        self.hash_checks = 0  # password hashes computed: for tests and curious operators

    @property
    def enabled(self) -> bool:
        return self.config.htpasswd is not None

    def protects(self, action: str) -> bool:
        """Whether ``action`` needs a login. Uploads do unless ``anonymous_upload`` is on, and an
        action this module does not know (a route without one) always does: fail closed."""
        if not self.enabled or action == PUBLIC:
            return False
        if action == "upload":
            return "upload" in self.config.protect or not self.config.anonymous_upload
        return action in self.config.protect or action not in ("list", "download", "metrics")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- files --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Blocking: re-read the htpasswd and tokens files if they changed. A broken htpasswd
        file keeps the last good one; with none ever loaded, raises 503."""
        assert self.config.htpasswd is not None
        path = self.config.htpasswd
        with self._refresh_lock:
            try:
                st = path.stat()
                stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError as exc:
                stamp = None
                if not self._unreadable:
                    log.error("cannot read %s: %s; keeping the users loaded before", path, exc)
            self._unreadable = stamp is None
            if stamp is not None and stamp != self._stamp:
                try:
                    users = _read_htpasswd(path)
                except (OSError, ValueError) as exc:
                    log.error("%s; keeping the users loaded before", exc)
                else:
                    self._users = users
                    self._generation += 1  # the loop then forgets what it remembered
                    log.info("loaded %s", path)
            self._stamp = stamp
        self._tokens.refresh()
        if self._users is None:
            raise AuthUnavailable(
                "logins are unavailable: the server's htpasswd file could not be read"
            )

    # -- checks -------------------------------------------------------------------------------

    def _forget_if_reloaded(self) -> None:
        """On the loop: remembered successes and failures were checked against the old file.
        (Only the loop touches these caches, so no lock and no half-cleared state.)"""
        if self._remembered_generation != self._generation:
            self._remembered_generation = self._generation
            self._remembered.clear()
            self._failed.clear()

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + f"{user}\0{password}".encode()).digest()

    def _hash_check(self, user: str, password: str) -> bool:
        """Blocking and CPU-bound: runs on the auth executor."""
        users = self._users
        assert users is not None
        with self._hash_lock:
            self.hash_checks += 1
        if users.get_hash(user) is None:
            # Unknown user: spend the same time as for a known one, so the answer's timing
            # does not reveal which names exist. Checking against another user's entry costs
            # what the file's own scheme and rounds cost (apr1 is ~1 ms, bcrypt ~0.5 s); the
            # result is thrown away.
            other = next(iter(users.users()), None)
            dummy = users.get_hash(other) if other is not None else None
            if dummy is None:
                if self._dummy_hash is None:
                    self._dummy_hash = bcrypt.hash(secrets.token_hex(8))
                dummy = self._dummy_hash
            with contextlib.suppress(ValueError, TypeError):
                users.context.verify(password, dummy)
            return False
        try:
            return bool(users.check_password(user, password))
        except (ValueError, TypeError):  # passlib refuses some bytes (NUL) and lengths
            return False

    def verify(self, user: str, password: str) -> bool:
        """Blocking check of one user's password (for the CLI and tests; no throttling)."""
        self.refresh()
        return "\0" not in user + password and self._hash_check(user, password)

    async def _password(self, user: str, password: str, client: str) -> Identity:
        key = self._key(user, password)
        if self._remembered.get(key):
            return Identity(user)
        self._budget.check(client)
        expiry = self._failed.get(key)
        if "\0" in user + password or (expiry is not None and expiry > time.monotonic()):
            self._budget.fail(client)
            raise AuthRequired("wrong user name or password")
        self._budget.begin(client)
        generation = self._remembered_generation
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._executor, self._hash_check, user, password)
        finally:
            self._budget.end(client)
        # Checked against the file as it was; if it has been reloaded since, remember nothing.
        current = generation == self._remembered_generation
        if ok:
            if current:
                self._remembered.put(key, True)
            return Identity(user)
        if current:
            self._failed.put(key, time.monotonic() + _FAILED_TTL)
        self._budget.fail(client)
        raise AuthRequired("wrong user name or password")

    def _token(self, secret: str, client: str) -> Identity:
        self._budget.check(client)
        token = self._tokens.find(secret)
        users = self._users
        if token is None or token.expired(datetime.now(UTC)):
            self._budget.fail(client)
            raise AuthRequired("unknown, revoked or expired token")
        if users is None or users.get_hash(token.user) is None:
            self._budget.fail(client)
            raise AuthRequired(f"token {token.id}: its user {token.user!r} no longer exists")
        return Identity(token.user, token)

    async def authorize(self, action: str, header: str | None, client: str) -> Identity | None:
        """The identity allowed to do ``action``, None if no login is needed; raises 401, 403,
        429 or 503. ``client`` is the address failed logins are counted against."""
        if not self.enabled:
            if action in (ADMIN, MANAGE) and not is_loopback(client):
                raise Forbidden(
                    "admin calls are accepted from this host only: the server has no users "
                    "(set auth.htpasswd and auth.admins to allow them from elsewhere)"
                )
            if action == "upload" and not self.config.anonymous_upload:
                raise Forbidden(
                    "uploads are disabled: this server has no users; start it with an "
                    "htpasswd file (proxyindex user add NAME --htpasswd FILE, then "
                    "auth.htpasswd or --htpasswd FILE), or set auth.anonymous_upload = true "
                    "for a throwaway local index"
                )
            return None
        if not self.protects(action):
            return None
        credentials = parse_basic(header)
        if credentials is None:
            raise AuthRequired(f"{action} needs a login")
        await asyncio.to_thread(self.refresh)
        self._forget_if_reloaded()
        user, password = credentials
        if user == TOKEN_USER:
            identity = self._token(password, client)
        else:
            identity = await self._password(user, password, client)
        self._permit(identity, action)
        return identity

    def _permit(self, identity: Identity, action: str) -> None:
        if action == ADMIN:
            if identity.token is not None and identity.token.scope != "upload":
                raise Forbidden(f"token {identity.token.id} is read-only; it may not administer")
            if identity.user not in self.config.admins:
                raise Forbidden(f"user {identity.user!r} is not an admin (auth.admins)")
            return
        if action == MANAGE:
            if identity.user in self.config.admins:
                return
            if identity.token is not None and identity.token.scope != "upload":
                raise Forbidden(f"token {identity.token.id} is read-only")
            if self.config.uploaders and identity.user not in self.config.uploaders:
                raise Forbidden(f"user {identity.user!r} may not upload, yank or remove")
            return
        if action != "upload":
            return
        if identity.token is not None and identity.token.scope != "upload":
            raise Forbidden(f"token {identity.token.id} is read-only; it may not upload")
        if self.config.uploaders and identity.user not in self.config.uploaders:
            raise Forbidden(f"user {identity.user!r} may not upload")


# -- the htpasswd file, for the CLI -------------------------------------------------------------


def _save_htpasswd(path: Path, users: HtpasswdFile) -> None:
    """Atomic (temp + fsync + rename), so a server re-reading it never sees half a file. An
    existing file keeps its mode; a new one is 0644 like Apache's ``htpasswd -c`` makes it, so
    a server running as another user (the Docker image) can read a mounted file."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    write_private(path, users.to_string(), mode)


def _valid_user(user: str) -> None:
    if not user or ":" in user or any(not ch.isprintable() for ch in user):
        raise ValueError("a user name must be printable and must not contain ':'")
    if user == TOKEN_USER:
        raise ValueError(f"{TOKEN_USER!r} is reserved for API tokens")


def add_user(path: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in an htpasswd file with a bcrypt entry (created if missing)."""
    _valid_user(user)
    if "\0" in password:
        raise ValueError("a password must not contain a NUL byte")
    htpasswd = (
        _read_htpasswd(path)
        if path.exists()
        else HtpasswdFile(str(path), new=True, default_scheme="bcrypt")
    )
    htpasswd.set_password(user, password)
    _save_htpasswd(path, htpasswd)


def list_users(path: Path) -> list[str]:
    return sorted(_read_htpasswd(path).users())


def remove_user(path: Path, user: str) -> bool:
    """Remove ``user``; False if there was no such user."""
    htpasswd = _read_htpasswd(path)
    if not htpasswd.delete(user):
        return False
    _save_htpasswd(path, htpasswd)
    return True
