"""The exceptions core modules raise; one middleware maps them to HTTP (see ``app``).

::

    ProxyIndexError
    ├── ClientError                      4xx: the request is at fault
    │   ├── InvalidRequest         400   bad form field, bad filename, digest mismatch
    │   ├── AuthRequired           401   no or wrong credentials
    │   ├── Forbidden              403   valid user, action not allowed
    │   │   └── PolicyDenied       403   an upstream file refused by policy.deny
    │   ├── NotFound               404   unknown project or file
    │   │   └── PolicyHidden       404   held back by a supply-chain policy or a snapshot
    │   ├── FileExists             409   same filename, different bytes
    │   ├── TooLarge               413
    │   └── TooManyRequests        429   too many failed logins from one client (Retry-After)
    ├── AuthUnavailable            503   the htpasswd file never loaded: nobody can be checked
    ├── CacheFull                  503   the cache disk is full: a HEAD or Range request for a
    │                                    file not cached yet (a GET streams it uncached)
    ├── StillHashing               503   a private page whose new files are still being hashed
    │                                    (Retry-After; pip and uv retry a 503)
    └── UpstreamError                    5xx: the upstream index failed us and nothing is cached
        ├── UpstreamUnavailable    502   refused, reset, 5xx, a page over upstream.max_page_size
        │   └── NotAnIndexPage     502   a 200 that is no project page: maintenance page, junk
        ├── IntegrityError         502   a file's hash or length does not match the index
        └── UpstreamTimeout        504
"""

from __future__ import annotations

__all__ = [
    "AuthRequired",
    "AuthUnavailable",
    "CacheFull",
    "ClientError",
    "FileExists",
    "Forbidden",
    "IntegrityError",
    "InvalidRequest",
    "NotAnIndexPage",
    "NotFound",
    "Offline",
    "PolicyDenied",
    "PolicyHidden",
    "ProxyIndexError",
    "StillHashing",
    "TooLarge",
    "TooManyRequests",
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


class Offline(NotFound):
    """What an offline server (``upstream.offline``) has not cached: a 404, so pip and uv
    move on as for a name not on this index, with a reason that says why."""


class PolicyHidden(NotFound):
    """A supply-chain rule (``proxyindex.guard``) hides it; ``policy`` is the one reason, sent
    in the ``X-Proxyindex-Policy`` header; ``rule`` the config key that decided (metrics)."""

    def __init__(self, message: str, policy: str, rule: str = "") -> None:
        super().__init__(message)
        self.policy = policy
        self.rule = rule


class PolicyDenied(Forbidden):
    """``policy.deny`` refuses it; ``policy`` names the rule (``X-Proxyindex-Policy``)."""

    def __init__(self, message: str, policy: str, rule: str = "policy.deny") -> None:
        super().__init__(message)
        self.policy = policy
        self.rule = rule


class FileExists(ClientError):
    status = 409


class TooLarge(ClientError):
    status = 413


class TooManyRequests(ClientError):
    """Answered with ``Retry-After: retry_after`` (whole seconds)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthUnavailable(ProxyIndexError):
    """Answered with a short ``Retry-After``: an operator is fixing the file; pip honours the
    header on each of its retries, so a long one would stall every install for minutes."""

    status = 503
    retry_after = 10


class CacheFull(ProxyIndexError):
    status = 503


class StillHashing(ProxyIndexError):
    """A page is never listed without its files' hashes; while a freshly dropped project's
    thousands of files are hashed, its page request waits a bounded time, then gets this,
    so the client retries (pip: 5 times, honouring Retry-After) instead of timing out."""

    status = 503
    retry_after = 2


class UpstreamError(ProxyIndexError):
    status = 502


class UpstreamUnavailable(UpstreamError):
    status = 502


class NotAnIndexPage(UpstreamUnavailable):
    """The upstream answered 200 with something that is not a project page. The only error
    the page parsers raise, whatever the input, so a bad answer never becomes a 500 and
    never replaces a good cached page."""


class IntegrityError(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504
