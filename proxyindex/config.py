"""Configuration: frozen dataclasses holding the embedded defaults, loaded from TOML and env.

Precedence, lowest first: embedded defaults, the TOML file, ``PROXYINDEX_<SECTION>_<KEY>``
environment variables (for containers), command-line flags. Any unknown key or bad value
raises :class:`ConfigError` naming it, so a typo stops start-up instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from yarl import URL

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "PrivateConfig",
    "ServerConfig",
    "StorageConfig",
    "UpstreamConfig",
    "as_toml",
    "load_config",
]

DEFAULT_UPSTREAM = "https://pypi.org/simple/"
_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]*\Z")
ACTIONS = ("list", "download", "upload")


class ConfigError(Exception):
    """A bad key or value; the message names it, e.g. ``upstream.page_ttl: expected ...``."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""
    workers: int = 1


@dataclass(frozen=True, slots=True)
class StorageConfig:
    packages_dir: Path = Path("packages")
    cache_dir: Path = Path("cache")
    cache_max_size: int = 0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = DEFAULT_UPSTREAM
    page_ttl: int = 600
    timeout: int = 30
    connect_timeout: int = 10
    negative_ttl: int = 60
    root_ttl: int = 21600
    prefetch: bool = True
    prefetch_max_size: int = 50 << 20
    # The largest PyPI pages measured on 2026-12-02: ddtrace 21.4 MB JSON / 16.6 MB HTML
    # (46,724 files), pydantic-core 6.9 MB, pyagrum-nightly 6.4 MB, grpcio-tools 5.1 MB JSON.
    max_page_size: int = 64 << 20


@dataclass(frozen=True, slots=True)
class PrivateConfig:
    reserved: tuple[str, ...] = ()
    merge_with_upstream: tuple[str, ...] = ()
    allow_overwrite: bool = False
    refuse_shadowing_uploads: bool = False
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
    anonymous_upload: bool = True


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
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - a programming error


def _validate(config: Config) -> Config:
    upstream = URL(config.upstream.url)
    if upstream.scheme not in ("http", "https") or not upstream.host:
        raise ConfigError(f"upstream.url: expected an http(s) URL, got {config.upstream.url!r}")
    if not config.upstream.url.endswith("/"):
        config = dataclasses.replace(
            config, upstream=dataclasses.replace(config.upstream, url=config.upstream.url + "/")
        )
    if config.server.port > 65535:
        raise ConfigError(f"server.port: expected 0..65535, got {config.server.port}")
    if config.server.workers < 1:
        raise ConfigError("server.workers: expected at least 1")
    if config.server.base_url:
        base = URL(config.server.base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ConfigError(f"server.base_url: expected an http(s) URL, got {base}")
        config = dataclasses.replace(
            config,
            server=dataclasses.replace(config.server, base_url=str(base).rstrip("/")),
        )
    for action in config.auth.protect:
        if action not in ACTIONS:
            raise ConfigError(f"auth.protect: unknown action {action!r}, expected {ACTIONS}")
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
    return _validate(config)


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
