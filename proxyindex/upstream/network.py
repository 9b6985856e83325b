"""Outbound network settings of the upstream client: the proxy and the trusted CAs.

A company whose only way out is a forward proxy, and whose TLS-inspecting proxy or private
upstream presents a certificate signed by a corporate CA, must be able to reach the upstream:

- **Proxy**: ``upstream.proxy`` when set (for every upstream request); otherwise the standard
  ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` variables, read as curl and Python's
  ``urllib`` read them (lowercase spellings win, ``NO_PROXY`` lists domains or ``*``). The
  environment is read once, at start-up, and decided per URL by the pure :meth:`for_url`,
  instead of aiohttp's ``trust_env``, which runs a thread hop per request and also sends
  credentials it finds in ``~/.netrc`` of whoever runs the server: upstream credentials come
  from the config only (the upstream URL's userinfo), never implicitly.
- **Trust**: the operating system's trust store, plus ``upstream.ca_file`` when set.

Proxy credentials are taken out of the URL and sent as ``Proxy-Authorization``, so they never
appear in aiohttp's error messages; :meth:`Proxy.display` masks the password for logs.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import truststore
from yarl import URL

__all__ = ["Proxy", "ProxyRoutes", "bypasses", "env_proxies", "parse_proxy", "tls_context"]

PROXY_SCHEMES = ("http", "https")
# Where Linux distributions keep their CA bundle, for Pythons whose OpenSSL was built with a
# default path that does not exist on this system (e.g. a standalone Python build).
_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",  # Arch, BSD
)


@dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy: its URL without credentials, the credentials, and where it came from."""

    url: URL
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    source: str = "upstream.proxy"

    def display(self) -> str:
        """The URL for logs and error messages: the user shown, the password masked."""
        if self.login is None:
            return str(self.url)
        shown = self.url.with_user(self.login)
        if self.password is not None:
            shown = shown.with_password("***")
        return str(shown)


def parse_proxy(value: str, source: str) -> Proxy:
    """``http://user:pass@host:3128`` as a :class:`Proxy`; ValueError names what is wrong.

    A value without a scheme (``proxy.corp:3128``, common in environment variables) means
    ``http://``, as curl and requests read it.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = URL(text)
    except ValueError:
        raise ValueError(f"{source}: not a valid URL") from None  # its text may hold a password
    if url.scheme not in PROXY_SCHEMES or not url.host:
        raise ValueError(f"{source}: expected an http:// proxy URL, got {_masked(url)}")
    bare = url.with_user(None).with_path("").with_query(None).with_fragment(None)
    return Proxy(bare, url.user, url.password, source)


def _masked(url: URL) -> str:
    return str(url.with_password("***")) if url.password is not None else str(url)


def env_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``{"https": ..., "http": ..., "no": ...}`` from ``*_proxy`` variables, as ``urllib``
    reads them: any spelling counts, and a lowercase one (even empty) overrides the others."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            found[name.lower().removesuffix("_proxy")] = value
    for name, value in environ.items():
        if name.endswith("_proxy") and name == name.lower():
            if value:
                found[name.removesuffix("_proxy")] = value
            else:
                found.pop(name.removesuffix("_proxy"), None)
    return found


@dataclass(frozen=True, slots=True)
class ProxyRoutes:
    """Which proxy each upstream URL goes through (``None``: connect directly)."""

    explicit: Proxy | None = None
    by_scheme: Mapping[str, Proxy] = field(default_factory=dict)
    no_proxy: str = ""
    ignored: tuple[str, ...] = ()  # environment proxies that cannot be used, for one warning

    @classmethod
    def from_settings(cls, proxy: str, environ: Mapping[str, str]) -> ProxyRoutes:
        """``upstream.proxy`` wins; without it, the environment's proxies (read once, here)."""
        if proxy:
            return cls(explicit=parse_proxy(proxy, "upstream.proxy"))
        found = env_proxies(environ)
        by_scheme: dict[str, Proxy] = {}
        ignored: list[str] = []
        for scheme in ("http", "https"):
            if scheme not in found:
                continue
            variable = f"{scheme.upper()}_PROXY"
            try:
                by_scheme[scheme] = parse_proxy(found[scheme], variable)
            except ValueError as exc:
                ignored.append(str(exc))
        return cls(by_scheme=by_scheme, no_proxy=found.get("no", ""), ignored=tuple(ignored))

    def for_url(self, url: URL) -> Proxy | None:
        if self.explicit is not None:
            return self.explicit
        proxy = self.by_scheme.get(url.scheme)
        if proxy is None or url.host is None:
            return None
        if bypasses(self.no_proxy, url.host, url.port):
            return None
        return proxy

    def describe(self) -> str | None:
        """One line for the start-up log (credentials masked), or None when there is no proxy."""
        if self.explicit is not None:
            return f"upstream requests go through {self.explicit.display()} (upstream.proxy)"
        if not self.by_scheme:
            return None
        parts = [
            f"to {scheme}:// URLs go through {p.display()} ({p.source})"
            for scheme, p in self.by_scheme.items()
        ]
        except_ = f", except NO_PROXY={self.no_proxy}" if self.no_proxy else ""
        return "upstream requests " + " and ".join(parts) + except_


def bypasses(no_proxy: str, host: str, port: int | None) -> bool:
    """Whether ``NO_PROXY`` exempts a host, as curl and Python's ``urllib`` read it: a comma
    list of host names or addresses (each also covering its subdomains; a leading dot or
    ``*.`` is the same), ``host:port`` for one port only, or ``*`` for everything."""
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        name, colon, entry_port = entry.rpartition(":") if _has_port(entry) else ("", "", "")
        if colon:
            if str(port) != entry_port:
                continue
            entry = name
        entry = entry.removeprefix("*").lstrip(".").strip("[]")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _has_port(entry: str) -> bool:
    """``host:123`` or ``[::1]:123``, but not a bare IPv6 address like ``::1``."""
    head, _, tail = entry.rpartition(":")
    return tail.isdigit() and bool(head) and (head.endswith("]") or ":" not in head)


def tls_context(ca_file: Path | None, *, platform: str = sys.platform) -> ssl.SSLContext | None:
    """The context that verifies upstream (and HTTPS proxy) certificates, or None for
    aiohttp's default one, when that is already exactly the system's trust store.

    The operating system's trust store: on macOS and Windows through truststore (Keychain,
    the Windows certificate store, where companies push their CAs); on Linux OpenSSL's
    system bundle, loaded once. truststore's Linux backend loads that same bundle, but again
    at every TLS handshake, on the event loop (~100 ms for Debian's 144 CAs measured on a
    loaded 2-core machine), so it is not used there; and when OpenSSL finds the bundle by
    itself and there is no ``ca_file``, aiohttp's default context (made once per process) is
    that very bundle, so None saves loading it again (~60 ms per app). ``ca_file`` (PEM) is
    trusted in addition. Blocking: it reads certificate files, so call it in a thread.
    """
    context: ssl.SSLContext
    if platform in ("darwin", "win32"):
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        defaults = ssl.get_default_verify_paths()
        openssl_finds_it = defaults.cafile is not None or _has_certs(defaults.capath)
        if openssl_finds_it and ca_file is None:
            return None
        context = ssl.create_default_context()
        bundle = next((p for p in _CA_BUNDLES if Path(p).is_file()), None)
        if not openssl_finds_it and bundle is not None:
            context.load_verify_locations(cafile=bundle)
    context.set_alpn_protocols(["http/1.1"])  # as aiohttp's own contexts do
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def _has_certs(capath: str | None) -> bool:
    if capath is None or not Path(capath).is_dir():
        return False
    with os.scandir(capath) as entries:
        return any(entries)
