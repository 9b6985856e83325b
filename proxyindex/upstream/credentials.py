"""Credentials for an upstream: read once at start, sent only to that upstream's own hosts.

An ``[[upstreams]]`` table names where its secret is (``password_env``/``password_file`` with a
``username``: HTTP Basic; ``token_env``/``token_file``: a Bearer token); the secret itself is
never in the config, a log line, a page or an error message. The header goes only to the
upstream's own host and port, or to a host its ``files_hosts`` names: PyPI-shaped indexes
often keep files on another domain (a CDN, object storage), and a token sent there is a token
leaked to whoever runs it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from proxyindex.config import ConfigError, UpstreamSource

__all__ = ["Credentials", "load_credentials"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Credentials:
    """An ``Authorization`` value and where it may go; ``repr`` never shows the value."""

    kind: str  # "basic" or "bearer", for the start-up summary
    header: str = field(repr=False)
    origin: tuple[str, int]  # (host, port) of the upstream's own URL
    files_hosts: frozenset[str] = frozenset()

    def allowed(self, url: URL) -> bool:
        """May the header be sent with a request to ``url``? Its own host and port, or a
        ``files_hosts`` entry (``host``: the URL's default port; ``host:port``: that one)."""
        host = (url.host or "").lower()
        port = url.port or 0
        if (host, port) == self.origin:
            return True
        if f"{host}:{port}" in self.files_hosts:
            return True
        return host in self.files_hosts and url.port == _DEFAULT_PORTS.get(url.scheme)

    def headers_for(self, url: str | URL) -> dict[str, str]:
        return {"Authorization": self.header} if self.allowed(URL(str(url))) else {}


def _secret(env: str, path: Path | None, environ: Mapping[str, str], key: str) -> str:
    """The secret from an environment variable or a file (its first line); blocking."""
    if env:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{key}_env: environment variable {env} is not set or empty")
        return value
    assert path is not None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{key}_file: cannot read {path}: {exc.strerror}") from None
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{key}_file: {path} is empty")
    return value


def load_credentials(
    source: UpstreamSource, number: int, environ: Mapping[str, str]
) -> Credentials | None:
    """The credentials of the ``number``-th upstream (config checked them for consistency),
    or None if it has none. Blocking (a file read); ConfigError names the key."""
    prefix = f"upstreams[{number}]."
    url = URL(source.url)
    origin = ((url.host or "").lower(), url.port or 0)
    hosts = frozenset(source.files_hosts)
    if source.username:
        password = _secret(source.password_env, source.password_file, environ, prefix + "password")
        raw = f"{source.username}:{password}".encode()
        header = "Basic " + base64.b64encode(raw).decode("ascii")
        return Credentials("basic", header, origin, hosts)
    if source.token_env or source.token_file is not None:
        token = _secret(source.token_env, source.token_file, environ, prefix + "token")
        return Credentials("bearer", f"Bearer {token}", origin, hosts)
    return None
