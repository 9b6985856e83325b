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

from proxyindex.guard.rules import parse_duration, parse_rules
from proxyindex.upstream.network import parse_proxy

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "MetricsConfig",
    "PolicyConfig",
    "PrivateConfig",
    "ServerConfig",
    "StorageConfig",
    "UpstreamConfig",
    "UpstreamSource",
    "as_toml",
    "default_data_dir",
    "load_config",
]

DEFAULT_UPSTREAM = "https://pypi.org/simple/"
_PATTERN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]*\Z")
# "metrics": GET /metrics; unprotected, it is answered to localhost only (MetricsConfig).
ACTIONS = ("list", "download", "upload", "metrics")
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
    # Object storage (private/s3storage.py, upstream/s3blobs.py): "local" or "s3".
    backend: str = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""  # "": AWS; else MinIO, Ceph RGW, R2, GCS's S3 interface
    s3_region: str = ""  # "": the AWS chain's region (AWS_REGION), else us-east-1
    s3_poll_interval: int = 2  # seconds between looks at the bucket's change marker
    s3_delivery: str = "stream"  # or "redirect": a presigned URL for cached upstream files

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
class UpstreamSource:
    """One ``[[upstreams]]`` table: an index asked in order, or only for its pinned names.

    Secrets are never fields: ``password_env``/``token_env`` name an environment variable and
    ``password_file``/``token_file`` a file, read when the server starts
    (:mod:`proxyindex.upstream.credentials`), so no config dump, log line or page holds one.
    """

    name: str = ""
    url: str = ""
    # Pins: names or ``prefix-*`` patterns served by this upstream only, never looked up
    # elsewhere.
    projects: tuple[str, ...] = ()
    # Only its pins come from it (uv's ``explicit``); else it also serves unpinned names in
    # its turn.
    explicit: bool = False
    username: str = ""
    password_env: str = ""
    password_file: Path | None = None
    token_env: str = ""
    token_file: Path | None = None
    # Hosts other than the upstream's own that may receive its credentials (file hosts).
    files_hosts: tuple[str, ...] = ()
    page_ttl: int | None = None  # None: upstream.page_ttl
    timeout: int | None = None  # None: upstream.timeout

    def pins(self, name: str) -> bool:
        """True if ``name`` (normalised) is pinned to this upstream."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.projects)

    @property
    def serves(self) -> str:
        """What it serves, in words (start-up log, home page)."""
        pins = ", ".join(self.projects)
        if self.explicit:
            return f"only {pins}"
        return f"pinned {pins}, and any other name in its turn" if pins else "any name in its turn"


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
    admins: tuple[str, ...] = ()

    @property
    def tokens_file(self) -> Path | None:
        """Where API tokens are kept: ``auth.tokens``, else ``tokens.json`` beside the htpasswd."""
        if self.tokens is not None:
            return self.tokens
        return None if self.htpasswd is None else self.htpasswd.parent / "tokens.json"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Supply-chain rules for upstream files (``proxyindex.guard``; README "Supply-chain
    policies"). Not the ownership rule of ``[private]``, which always comes first."""

    min_age: str = "0"
    min_age_exempt: tuple[str, ...] = ()
    unknown_age: str = "deny"
    deny: tuple[str, ...] = ()
    deny_file: Path | None = None
    allow_only: tuple[str, ...] = ()
    allow_only_file: Path | None = None
    advisories_dir: Path | None = None
    advisories: str = "yank"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``GET /metrics`` (Prometheus). Without a login (``auth.protect`` lacks "metrics") it is
    answered to clients on this machine only, unless ``public`` is on."""

    public: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    private: PrivateConfig = field(default_factory=PrivateConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # ``[[upstreams]]``: several upstreams in order; empty: the one ``[upstream]`` url.
    upstreams: tuple[UpstreamSource, ...] = ()

    def sources(self) -> tuple[tuple[UpstreamSource, UpstreamConfig], ...]:
        """Every upstream in order of priority, each with its effective settings (the
        ``[upstream]`` defaults, its own url, page_ttl and timeout). Without ``[[upstreams]]``
        the one ``[upstream]`` url, named ``pypi`` (its cache keeps the pre-list layout)."""
        if not self.upstreams:
            return (
                (UpstreamSource(name=DEFAULT_SOURCE_NAME, url=self.upstream.url), self.upstream),
            )
        out = []
        for source in self.upstreams:
            settings = dataclasses.replace(
                self.upstream,
                url=source.url,
                page_ttl=self.upstream.page_ttl if source.page_ttl is None else source.page_ttl,
                timeout=self.upstream.timeout if source.timeout is None else source.timeout,
            )
            out.append((source, settings))
        return tuple(out)


DEFAULT_SOURCE_NAME = "pypi"
_LIST_SECTIONS: dict[str, Any] = {"upstreams": UpstreamSource}
_SECTIONS: dict[str, Any] = {
    key: kind for key, kind in get_type_hints(Config).items() if key not in _LIST_SECTIONS
}
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")


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
    if kind is str and key == "policy.min_age" and type(value) is int:
        return str(value)  # min_age = 0, or PROXYINDEX_POLICY_MIN_AGE=0
    if kind == int | None:
        return _coerce(key, int, value, base_dir)
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
    _check_storage(config.storage)
    if config.upstreams:
        if config.upstream.url != DEFAULT_UPSTREAM:
            raise ConfigError(
                "upstream.url: not used with [[upstreams]]; list every upstream there "
                "(in order), [upstream] keeps the settings they share"
            )
        config = dataclasses.replace(config, upstreams=_check_sources(config.upstreams))
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
    _check_policy(config.policy)
    return config


def _check_storage(storage: StorageConfig) -> None:
    """An object storage setting that cannot work stops start-up with the key's name."""
    if storage.backend not in ("local", "s3"):
        raise ConfigError(f"storage.backend: expected 'local' or 's3', got {storage.backend!r}")
    if storage.s3_delivery not in ("stream", "redirect"):
        raise ConfigError(
            f"storage.s3_delivery: expected 'stream' or 'redirect', got {storage.s3_delivery!r}"
        )
    if storage.backend != "s3":
        return
    if not storage.s3_bucket:
        raise ConfigError("storage.s3_bucket: required when storage.backend is 's3'")
    if storage.s3_endpoint_url:
        endpoint = URL(storage.s3_endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.host:
            raise ConfigError(
                f"storage.s3_endpoint_url: expected an http(s) URL, got {storage.s3_endpoint_url!r}"
            )
    if storage.s3_poll_interval < 1:
        raise ConfigError("storage.s3_poll_interval: expected at least 1 second")


def _check_policy(policy: PolicyConfig) -> None:
    """Rules that cannot parse stop start-up naming the key (the files are read when the
    server starts: ``proxyindex.guard.live``)."""
    try:
        parse_duration(policy.min_age)
    except ValueError as exc:
        raise ConfigError(f"policy.min_age: {exc}") from None
    for key, allowed in (("unknown_age", ("allow", "deny")), ("advisories", ("yank", "hide"))):
        if getattr(policy, key) not in allowed:
            raise ConfigError(
                f"policy.{key}: expected one of {allowed}, got {getattr(policy, key)!r}"
            )
    for key in ("min_age_exempt", "deny", "allow_only"):
        try:
            parse_rules(getattr(policy, key))
        except ValueError as exc:
            raise ConfigError(f"policy.{key}: {exc}") from None


def _check_sources(sources: tuple[UpstreamSource, ...]) -> tuple[UpstreamSource, ...]:
    """Names unique, URLs http(s) ending in ``/``, pins normalised and owned by one
    upstream, credentials of one kind."""
    out = []
    names: set[str] = set()
    pinned: dict[str, str] = {}
    for number, source in enumerate(sources, 1):
        key = f"upstreams[{number}]"
        if not _SOURCE_NAME.match(source.name):
            raise ConfigError(
                f"{key}.name: expected a short lower-case name (a-z, 0-9, - and _), "
                f"got {source.name!r}"
            )
        if source.name in names:
            raise ConfigError(f"{key}.name: {source.name!r} is used by another upstream")
        names.add(source.name)
        url = URL(source.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"{key}.url: expected an http(s) URL, got {_masked(source.url)!r}")
        if url.user is not None or url.password is not None:
            raise ConfigError(
                f"{key}.url: no credentials in the URL; use username with password_env or "
                "password_file, or token_env or token_file"
            )
        projects = tuple(_normalize_pattern(p, f"{key}.projects") for p in source.projects)
        for pattern in projects:
            if pattern in pinned:
                raise ConfigError(
                    f"{key}.projects: {pattern!r} is pinned to upstream {pinned[pattern]!r} too"
                )
            pinned[pattern] = source.name
        password = bool(source.password_env) + (source.password_file is not None)
        token = bool(source.token_env) + (source.token_file is not None)
        if password + token > 1:
            raise ConfigError(
                f"{key}: give one of password_env, password_file, token_env, token_file"
            )
        if password and not source.username:
            raise ConfigError(f"{key}.username: needed with a password")
        if source.username and not password:
            raise ConfigError(f"{key}: username without password_env or password_file")
        if source.explicit and not projects:
            raise ConfigError(f"{key}.explicit: an explicit upstream needs projects (its pins)")
        hosts = tuple(host.strip().lower() for host in source.files_hosts)
        if not all(hosts):
            raise ConfigError(f"{key}.files_hosts: expected host names")
        out.append(
            dataclasses.replace(
                source,
                url=source.url if source.url.endswith("/") else source.url + "/",
                projects=projects,
                files_hosts=hosts,
            )
        )
    return tuple(out)


def _masked(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password is not None else url


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


def _table(name: str, cls: Any, value: Mapping[str, Any], base_dir: Path) -> Any:
    hints = get_type_hints(cls)
    values = {}
    for key, item in value.items():
        if key not in hints:
            raise ConfigError(f"{name}.{key}: unknown key")
        values[key] = _coerce(f"{name}.{key}", hints[key], item, base_dir)
    return cls(**values)


def _build_list(name: str, value: Any, base_dir: Path) -> tuple[Any, ...]:
    """``[[upstreams]]``: an array of tables, each checked like a section; keys are named
    with their position, ``upstreams[2].url``."""
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise ConfigError(f"{name}: expected an array of tables ([[{name}]])")
    return tuple(
        _table(f"{name}[{number}]", _LIST_SECTIONS[name], item, base_dir)
        for number, item in enumerate(value, 1)
    )


def _build(data: Mapping[str, Any], base_dir: Path) -> Config:
    sections: dict[str, Any] = {}
    for section_name, section_value in data.items():
        if section_name in _LIST_SECTIONS:
            sections[section_name] = _build_list(section_name, section_value, base_dir)
            continue
        section_cls = _SECTIONS.get(section_name)
        if section_cls is None:
            raise ConfigError(
                f"{section_name}: unknown section, expected one of {[*_SECTIONS, *_LIST_SECTIONS]}"
            )
        if not isinstance(section_value, Mapping):
            raise ConfigError(f"{section_name}: expected a table")
        sections[section_name] = _table(section_name, section_cls, section_value, base_dir)
    return Config(**sections)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``PROXYINDEX_UPSTREAM_PAGE_TTL=60`` -> ``{"upstream": {"page_ttl": 60}}``.

    Values are read as TOML values when they parse as one (numbers, booleans, lists), else
    as plain strings, so ``PROXYINDEX_PRIVATE_RESERVED='["acme-*"]'`` and paths both work.
    """
    out: dict[str, Any] = {}
    for var, raw in environ.items():
        if not var.startswith("PROXYINDEX_"):
            continue
        rest = var.removeprefix("PROXYINDEX_").lower()
        if rest in _LIST_SECTIONS:  # PROXYINDEX_UPSTREAMS='[{name = "a", url = "..."}]'
            try:
                out[rest] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{var}: expected a TOML array of inline tables: {exc}") from None
            continue
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


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Later tables' keys win; a list section (``upstreams``) is replaced as a whole."""
    merged = {
        section: values if section in _LIST_SECTIONS else dict(values)
        for section, values in base.items()
    }
    for section, values in extra.items():
        if section in _LIST_SECTIONS:
            merged[section] = values
        else:
            merged.setdefault(section, {}).update(values)
    return merged


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
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


def as_toml(config: Config) -> dict[str, Any]:
    """The config as TOML-shaped plain values (absolute paths), for layering and the docs test."""
    out: dict[str, Any] = {}
    for section in fields(config):
        if section.name in _LIST_SECTIONS:
            tables = getattr(config, section.name)
            if tables:  # empty: left out, as a TOML file without any [[upstreams]]
                out[section.name] = [_table_values(table) for table in tables]
            continue
        out[section.name] = _table_values(getattr(config, section.name))
    return out


def _table_values(table: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in fields(table):
        value = getattr(table, item.name)
        if item.name in ("page_ttl", "timeout") and value is None:
            continue  # an [[upstreams]] table without its own: the [upstream] default
        if isinstance(value, Path):
            value = str(value)
        elif value is None:
            value = ""
        elif isinstance(value, tuple):
            value = list(value)
        values[item.name] = value
    return values
