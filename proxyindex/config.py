"""Configuration: frozen dataclasses holding the embedded defaults, loaded from TOML and env.

Precedence, lowest first: embedded defaults, the TOML file, ``PROXYINDEX_<SECTION>_<KEY>``
environment variables (for containers), command-line flags. Any unknown key or bad value
raises :class:`ConfigError` naming it, so a typo stops start-up instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from yarl import URL

from proxyindex.upstream.network import parse_proxy

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "PrivateConfig",
    "ServerConfig",
    "StorageConfig",
    "UpstreamConfig",
    "as_toml",
    "default_data_dir",
    "load_config",
]

DEFAULT_UPSTREAM = "https://pypi.org/simple/"
_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]*\Z")
ACTIONS = ("list", "download", "upload")
# One word for "everything needs a login"; "update" is pypiserver's name for upload (-a).
_PROTECT_ALIASES = {"all": ACTIONS, "update": ("upload",)}


class ConfigError(Exception):
    """A bad key or value; the message names it, e.g. ``upstream.page_ttl: expected ...``."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""
    workers: int = 1
    idle_timeout: int = 30
    max_connections: int = 1000
    access_log: str = "-"
    audit_log: str = ""  # "": <data_dir>/audit.jsonl; "off": none; else a file
    memory_cache_size: int = 256 << 20  # bytes of pages and renderings kept per process


def default_data_dir(environ: Mapping[str, str], euid: int) -> Path:
    """Where a server keeps its data when the config names no folder: never the current
    directory (a source checkout, a home folder). ``$XDG_DATA_HOME/proxyindex`` when that is
    set, else ``/var/lib/proxyindex`` for root (a system service), else
    ``~/.local/share/proxyindex``."""
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "proxyindex"
    if euid == 0:
        return Path("/var/lib/proxyindex")
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".local" / "share" / "proxyindex"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path | None = None  # None: default_data_dir(), filled in by load_config
    packages_dir: Path | None = None  # None: <data_dir>/packages
    cache_dir: Path | None = None  # None: <data_dir>/cache
    cache_max_size: int = 0

    @property
    def data(self) -> Path:
        return self.data_dir or default_data_dir(os.environ, os.geteuid())

    @property
    def packages(self) -> Path:
        """The private packages folder (``packages_dir``, else ``<data_dir>/packages``)."""
        return self.packages_dir or self.data / "packages"

    @property
    def cache(self) -> Path:
        """The cache folder (``cache_dir``, else ``<data_dir>/cache``)."""
        return self.cache_dir or self.data / "cache"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = DEFAULT_UPSTREAM
    page_ttl: int = 600
    timeout: int = 30
    connect_timeout: int = 10
    negative_ttl: int = 60
    root_ttl: int = 21600
    prefetch: bool = True
    offline: bool = False
    prefetch_max_size: int = 50 << 20
    proxy: str = ""
    ca_file: Path | None = None
    check_interval: int = 60
    # The largest PyPI pages measured on 2026-12-02: ddtrace 21.4 MB JSON / 16.6 MB HTML
    # (46,724 files), pydantic-core 6.9 MB, pyagrum-nightly 6.4 MB, grpcio-tools 5.1 MB JSON.
    max_page_size: int = 64 << 20


@dataclass(frozen=True, slots=True)
class PrivateConfig:
    reserved: tuple[str, ...] = ()
    merge_with_upstream: tuple[str, ...] = ()
    allow_overwrite: bool = False
    refuse_shadowing_uploads: bool = True
    max_upload_size: int = 1 << 30

    def is_reserved(self, name: str) -> bool:
        """True if a name (already normalised) matches a reserved name or ``prefix-*`` pattern."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.reserved)

    def may_merge(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.merge_with_upstream)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    htpasswd: Path | None = None
    protect: tuple[str, ...] = ("upload",)
    realm: str = "proxyindex"
    uploaders: tuple[str, ...] = ()
    anonymous_upload: bool = False
    tokens: Path | None = None
    max_failed_logins: int = 10
    failed_login_window: int = 60

    @property
    def tokens_file(self) -> Path | None:
        """Where API tokens are kept: ``auth.tokens``, else ``tokens.json`` beside the htpasswd."""
        if self.tokens is not None:
            return self.tokens
        return None if self.htpasswd is None else self.htpasswd.parent / "tokens.json"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    private: PrivateConfig = field(default_factory=PrivateConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


_SECTIONS: dict[str, Any] = get_type_hints(Config)


def _coerce(key: str, kind: Any, value: Any, base_dir: Path) -> Any:
    """Check and convert one TOML (or environment) value to its field's type."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ConfigError(f"{key}: expected a whole number >= 0, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            if key == "server.access_log" and value not in ("", "-"):
                return str(base_dir / Path(value).expanduser())  # a file: like other paths
            if key == "server.audit_log" and value not in ("", "off"):
                return str(base_dir / Path(value).expanduser())  # a file: like other paths
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if kind in (Path, Path | None):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        if not value:
            if kind is Path:
                raise ConfigError(f"{key}: must not be empty")
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if kind == tuple[str, ...]:
        if key == "auth.protect" and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a programming error


def _validate(config: Config, environ: Mapping[str, str]) -> Config:
    if config.storage.data_dir is None:
        data_dir = default_data_dir(environ, os.geteuid())
        config = dataclasses.replace(
            config, storage=dataclasses.replace(config.storage, data_dir=data_dir)
        )
    upstream = URL(config.upstream.url)
    if upstream.scheme not in ("http", "https") or not upstream.host:
        raise ConfigError(f"upstream.url: expected an http(s) URL, got {config.upstream.url!r}")
    if not config.upstream.url.endswith("/"):
        config = dataclasses.replace(
            config, upstream=dataclasses.replace(config.upstream, url=config.upstream.url + "/")
        )
    _check_network(config.upstream)
    if config.server.port > 65535:
        raise ConfigError(f"server.port: expected 0..65535, got {config.server.port}")
    if config.server.workers < 1:
        raise ConfigError("server.workers: expected at least 1")
    if config.server.idle_timeout < 1:
        raise ConfigError("server.idle_timeout: expected at least 1 second")
    if config.server.memory_cache_size < 0:
        raise ConfigError("server.memory_cache_size: expected bytes, 0 or more")
    if config.server.max_connections < 1:
        raise ConfigError("server.max_connections: expected at least 1")
    if config.server.base_url:
        base = URL(config.server.base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"server.base_url: expected an http(s) URL, got {base}")
        config = dataclasses.replace(
            config,
            server=dataclasses.replace(config.server, base_url=str(base).rstrip("/")),
        )
    protect: list[str] = []
    for action in config.auth.protect:
        expanded = _PROTECT_ALIASES.get(action.lower(), (action.lower(),))
        if expanded[0] not in ACTIONS:
            raise ConfigError(
                f"auth.protect: unknown action {action!r}, expected 'all' or some of {ACTIONS}"
            )
        protect.extend(a for a in expanded if a not in protect)
    if tuple(protect) != config.auth.protect:
        config = dataclasses.replace(
            config, auth=dataclasses.replace(config.auth, protect=tuple(protect))
        )
    private = config.private
    config = dataclasses.replace(
        config,
        private=dataclasses.replace(
            private,
            reserved=tuple(_normalize_pattern(p, "private.reserved") for p in private.reserved),
            merge_with_upstream=tuple(
                _normalize_pattern(p, "private.merge_with_upstream")
                for p in private.merge_with_upstream
            ),
        ),
    )
    return config


def _check_network(upstream: UpstreamConfig) -> None:
    """A proxy URL that cannot work, or a CA file that cannot be read, stops start-up here
    with the key's name, rather than failing every upstream request later."""
    if upstream.proxy:
        try:
            parse_proxy(upstream.proxy, "upstream.proxy")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if upstream.ca_file is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=upstream.ca_file)
        except OSError as exc:  # ssl.SSLError is one too: not PEM, or no certificate in it
            why = exc.strerror if not isinstance(exc, ssl.SSLError) and exc.strerror else exc
            raise ConfigError(
                f"upstream.ca_file: cannot load {upstream.ca_file} as PEM certificates: {why}"
            ) from None


def _normalize_pattern(pattern: str, key: str) -> str:
    """Normalise ``Acme_*`` to ``acme-*`` so patterns compare like names (N-01)."""
    if not _PATTERN.match(pattern):
        raise ConfigError(f"{key}: {pattern!r} is not a project name or a name pattern with *")
    return re.sub(r"[-_.]+", "-", pattern.lower())


def _build(data: Mapping[str, Any], base_dir: Path) -> Config:
    sections: dict[str, Any] = {}
    for section_name, section_value in data.items():
        section_cls = _SECTIONS.get(section_name)
        if section_cls is None:
            raise ConfigError(f"{section_name}: unknown section, expected one of {list(_SECTIONS)}")
        if not isinstance(section_value, Mapping):
            raise ConfigError(f"{section_name}: expected a table")
        hints = get_type_hints(section_cls)
        values = {}
        for key, value in section_value.items():
            if key not in hints:
                raise ConfigError(f"{section_name}.{key}: unknown key")
            values[key] = _coerce(f"{section_name}.{key}", hints[key], value, base_dir)
        sections[section_name] = section_cls(**values)
    return Config(**sections)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``PROXYINDEX_UPSTREAM_PAGE_TTL=60`` -> ``{"upstream": {"page_ttl": 60}}``.

    Values are read as TOML values when they parse as one (numbers, booleans, lists), else
    as plain strings, so ``PROXYINDEX_PRIVATE_RESERVED='["acme-*"]'`` and paths both work.
    """
    out: dict[str, dict[str, Any]] = {}
    for var, raw in environ.items():
        if not var.startswith("PROXYINDEX_"):
            continue
        rest = var.removeprefix("PROXYINDEX_").lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{var}: unknown setting, expected PROXYINDEX_<SECTION>_<KEY>")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        if isinstance(value, list | int | bool) or raw.startswith('"'):
            out.setdefault(section, {})[key] = value
        else:
            out.setdefault(section, {})[key] = raw
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load defaults <- TOML file <- environment <- ``overrides`` (command-line flags).

    Relative paths in the file are relative to the file's folder; in the environment and on
    the command line they are relative to the current directory.
    """
    cwd = Path.cwd()
    file_data: dict[str, Any] = {}
    base_dir = cwd
    if path is not None:
        try:
            file_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        base_dir = path.resolve().parent
    config = _build(file_data, base_dir)
    later = _merge(_env_overrides(environ or {}), overrides or {})
    if later:
        as_dict = _merge(as_toml(config), later)
        config = _build(as_dict, cwd)
    return _validate(config, environ or {})


def as_toml(config: Config) -> dict[str, dict[str, Any]]:
    """The config as TOML-shaped plain values (absolute paths), for layering and the docs test."""
    out: dict[str, dict[str, Any]] = {}
    for section in fields(config):
        values = {}
        for item in fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), item.name)
            if isinstance(value, Path):
                value = str(value)
            elif value is None:
                value = ""
            elif isinstance(value, tuple):
                value = list(value)
            values[item.name] = value
        out[section.name] = values
    return out
