"""Logging for the ``serve`` command: one format, no credentials, client faults in one line,
and the access log.

Configured once, by the CLI (never at import). Everything a handler writes goes through
:class:`RedactingFormatter`, so an ``Authorization`` value, a token after ``Basic``/``Bearer``
or a password in a URL never reaches a log, whichever logger (ours or aiohttp's) wrote it and
whatever a traceback quotes. aiohttp logs every malformed request as an ERROR with a
traceback that quotes the offending line verbatim: :class:`ClientFaultFilter` turns those
into one INFO line (a client's fault, not the server's).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from proxyindex.web.appkeys import IDENTITY

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest, StreamResponse

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "ClientFaultFilter",
    "RedactingFormatter",
    "configure",
    "redact",
]

ACCESS_LOGGER = "proxyindex.access"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_REDACTIONS = (
    # An Authorization header, as a header line or quoted in a parser's error message.
    (re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*)[^\r\n'\"\\]+"), r"\1<redacted>"),
    # A credential after its scheme, wherever it appears.
    (
        re.compile(r"(?i)\b(basic|bearer)(\s+)[A-Za-z0-9+/=._~-]{8,}"),
        r"\1\2<redacted>",
    ),
    # user:password@ in a URL.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^/\s@'\"]*@"), r"\1***@"),
)


def redact(text: str) -> str:
    """``text`` with credentials replaced (pure)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then redacts the whole text, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class ClientFaultFilter(logging.Filter):
    """On ``aiohttp.server``: a request the HTTP parser rejected becomes one INFO line,
    "bad request from ADDR: 400 Invalid header token", without the traceback and without the
    bytes it quotes (200 bad requests wrote 132 kB of tracebacks before)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # The description only: what follows a colon is the offending bytes.
            what = (exc.message or type(exc).__name__).strip().split(":")[0]
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "bad request from %s: %s %s"
            record.args = (remote, exc.code, what[:80])
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        if isinstance(exc, ConnectionError):
            # The client went away while its answer was being written (a cancelled install,
            # a killed process): its fault, not ours; one line, no traceback (seen in the soak).
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "client %s went away while its answer was sent (%s)"
            record.args = (remote, type(exc).__name__)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class AccessLog(AbstractAccessLogger):
    """One line per request: client, method, path, status, body bytes, seconds, user.

    The user is the one the auth middleware authenticated (never the password, never an
    unchecked header); ``-`` when the request needed no login. The path is the raw one
    (percent-encoded, no query string), so a request cannot forge log lines.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        # The body's length: aiohttp's body_length counts the headers and misses what
        # sendfile sent, so the declared length where there is one.
        size = response.content_length
        if request.method == "HEAD" or response.status == 304:
            size = 0
        elif size is None:
            size = response.body_length
        self.logger.info(
            "%s %s %s %d %d %.3f %s",
            request.remote or "-",
            request.method or "-",
            request.rel_url.raw_path,
            response.status,
            size,
            time,
            _who(request),
        )


def _who(request: BaseRequest) -> str:
    """The logged-in user, and the token id when a token stood in for the password."""
    identity = request.get(IDENTITY)
    if identity is None:
        return "-"
    return identity.user if identity.token is None else f"{identity.user}/token:{identity.token.id}"


def configure(level: str, access_log: str) -> None:
    """Log to stderr at ``level``; the access log to stderr (``"-"``), a file, or nowhere
    (``""``). A file is reopened when moved (logrotate) by ``WatchedFileHandler``."""
    formatter = RedactingFormatter(_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [stderr]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.server").addFilter(ClientFaultFilter())
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.handlers.clear()
    access.setLevel(logging.INFO)
    if access_log == "-":
        access.addHandler(stderr)
    elif access_log:
        handler = logging.handlers.WatchedFileHandler(access_log, encoding="utf-8")
        handler.setFormatter(formatter)
        access.addHandler(handler)
    else:
        access.disabled = True
