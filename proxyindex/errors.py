"""The exceptions core modules raise; one middleware maps them to HTTP (see ``app``).

::

    ProxyIndexError
    ├── ClientError                      4xx: the request is at fault
    │   ├── InvalidRequest         400   bad form field, bad filename, digest mismatch
    │   ├── AuthRequired           401   no or wrong credentials
    │   ├── Forbidden              403   valid user, action not allowed
    │   ├── NotFound               404   unknown project or file
    │   ├── FileExists             409   same filename, different bytes
    │   └── TooLarge               413
    ├── CacheFull                  503   the cache disk is full: a HEAD or Range request for a
    │                                    file not cached yet (a GET streams it uncached)
    └── UpstreamError                    5xx: the upstream index failed us and nothing is cached
        ├── UpstreamUnavailable    502   refused, reset, 5xx, unparseable page
        ├── IntegrityError         502   a file's hash or length does not match the index
        └── UpstreamTimeout        504
"""

from __future__ import annotations

__all__ = [
    "AuthRequired",
    "CacheFull",
    "ClientError",
    "FileExists",
    "Forbidden",
    "IntegrityError",
    "InvalidRequest",
    "NotFound",
    "ProxyIndexError",
    "TooLarge",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ProxyIndexError(Exception):
    """Base of every error with an HTTP meaning; ``str(err)`` is the one-line reason."""

    status = 500


class ClientError(ProxyIndexError):
    status = 400


class InvalidRequest(ClientError):
    status = 400


class AuthRequired(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class FileExists(ClientError):
    status = 409


class TooLarge(ClientError):
    status = 413


class CacheFull(ProxyIndexError):
    status = 503


class UpstreamError(ProxyIndexError):
    status = 502


class UpstreamUnavailable(UpstreamError):
    status = 502


class IntegrityError(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504
