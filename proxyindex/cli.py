"""The ``proxyindex`` command: ``serve`` runs the server, ``user`` manages the htpasswd file's
users and ``token`` their API tokens (the server re-reads both files when they change)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import getpass
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from packaging.utils import NormalizedName
from yarl import URL

from proxyindex import __version__, admincli, fsutil, metrics, prefetchcli
from proxyindex.auth import tokens
from proxyindex.auth.authenticator import add_user, check_htpasswd, list_users, remove_user
from proxyindex.config import ACTIONS, DEFAULT_UPSTREAM, Config, ConfigError, load_config
from proxyindex.guard import explain
from proxyindex.guard.live import Guard, GuardError
from proxyindex.guard.rules import parse_snapshot
from proxyindex.models import is_valid_name, normalize
from proxyindex.private.audit import AuditEvent, AuditLog, audit_path
from proxyindex.private.tombstones import PrivateNames, scan_names
from proxyindex.upstream.cache import PageCache, PageEntry
from proxyindex.upstream.client import mask_url
from proxyindex.upstream.credentials import load_credentials
from proxyindex.upstream.network import ProxyRoutes
from proxyindex.web import logs
from proxyindex.web.app import create_app
from proxyindex.web.logs import ACCESS_LOGGER, AccessLog
from proxyindex.web.serving import CappedSite
from proxyindex.web.supervisor import Supervisor

__all__ = ["main"]

log = logging.getLogger("proxyindex")

# Seconds requests in flight get to finish after SIGTERM/SIGINT before they are cancelled.
# aiohttp's default, 60 s, let one hung upstream answer hold a stop for a minute, past the
# 10 s a container runtime waits before it kills.
_SHUTDOWN_GRACE = 3.0
# Seconds after SIGTERM/SIGINT past which the process exits even with work still running in
# threads (a parse, a render, a pickle of a page of hundreds of thousands of files): nothing
# can cancel a thread, and every write is atomic, so a hard exit loses nothing but that work.
_SHUTDOWN_LIMIT = 7.0


@dataclass(frozen=True, slots=True)
class _Flag:
    """A ``serve`` flag and the config key it overrides."""

    names: tuple[str, ...]
    section: str
    key: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """argparse's attribute name: the first long flag's."""
        long = next(name for name in self.names if name.startswith("--"))
        return long.removeprefix("--").replace("-", "_")


_SERVE_FLAGS = (
    _Flag(("--host",), "server", "host", "address to listen on"),
    _Flag(("--port",), "server", "port", "port to listen on (0: any free port)", int),
    _Flag(("--data-dir",), "storage", "data_dir", "folder for packages and cache", Path),
    _Flag(("--packages-dir",), "storage", "packages_dir", "folder of private packages", Path),
    _Flag(("--cache-dir",), "storage", "cache_dir", "folder for the upstream cache", Path),
    _Flag(("--htpasswd",), "auth", "htpasswd", "htpasswd file enabling authentication", Path),
    _Flag(("--workers",), "server", "workers", "worker processes sharing the port and cache", int),
    _Flag(
        ("-a", "--protect", "--authenticate"),
        "auth",
        "protect",
        "what needs a login: all, or some of list,download,upload,metrics (pypiserver's -a; "
        "'update' means upload)",
        metavar="ACTIONS",
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyindex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"proxyindex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the index server")
    serve.add_argument("--config", type=Path, help="TOML file (default: ./config.toml if present)")
    for flag in _SERVE_FLAGS:
        serve.add_argument(*flag.names, type=flag.type, metavar=flag.metavar, help=flag.help)
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="upstream simple index URL; give it several times for several upstreams, "
        "asked in that order (replaces [[upstreams]] and upstream.url)",
    )
    serve.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="serve only what is cached, never contact the upstream (upstream.offline)",
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    user = commands.add_parser("user", help="manage users of the htpasswd file")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="add a user (or set a new password)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (implied when standard "
        "input is not a terminal)",
    )
    listing = user_commands.add_parser("list", help="print the user names, one a line")
    remove = user_commands.add_parser("remove", help="remove a user (their tokens stop working)")
    remove.add_argument("name")
    token = commands.add_parser("token", help="manage API tokens (user name __token__)")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token and print it once")
    create.add_argument("--user", required=True, help="the htpasswd user the token acts as")
    create.add_argument("--project", help="limit uploads to this project")
    create.add_argument("--expires", help="lifetime such as 90d, 12h or 2w (default: never)")
    create.add_argument(
        "--scope",
        choices=tokens.SCOPES,
        default="upload",
        help="upload (also reads; the default) or read (install only)",
    )
    token_list = token_commands.add_parser("list", help="list tokens (never their secrets)")
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id")
    for sub in (add, listing, remove, create, token_list, revoke):
        sub.add_argument(
            "--htpasswd", type=Path, help="the users file (default: auth.htpasswd of the config)"
        )
        sub.add_argument(
            "--config", type=Path, help="TOML file (default: ./config.toml if present)"
        )
    for sub in (create, token_list, revoke):
        sub.add_argument(
            "--tokens", type=Path, help="the tokens file (default: auth.tokens of the config)"
        )
    _private_parser(commands)
    admincli.add_parsers(commands)
    prefetchcli.add_parser(commands)
    return parser


def _private_parser(commands: Any) -> None:
    private = commands.add_parser("private", help="names that stay private (tombstones)")
    private_commands = private.add_subparsers(dest="private_command", required=True)
    listing = private_commands.add_parser(
        "list-tombstones", help="private names whose files were all removed"
    )
    release = private_commands.add_parser(
        "release", help="let a tombstoned name come from the upstream again"
    )
    release.add_argument("name")
    for sub in (listing, release):
        sub.add_argument("--config", type=Path, help="TOML file (default: ./config.toml)")
        sub.add_argument("--packages-dir", type=Path, help="folder of private packages")
    policy = commands.add_parser("policy", help="supply-chain policies ([policy])")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    explain = policy_commands.add_parser(
        "explain", help="what the policies hide or yank of a project, and why"
    )
    explain.add_argument("name")
    explain.add_argument("version", nargs="?")
    explain.add_argument("--at", help="as of a snapshot: a date or an RFC 3339 time")
    explain.add_argument("--config", type=Path, help="TOML file (default: ./config.toml)")
    explain.add_argument("--cache-dir", type=Path, help="the server's cache folder")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line sets (the ``private`` commands have only some)."""
    out: dict[str, Any] = {}
    for flag in _SERVE_FLAGS:
        value = getattr(args, flag.dest, None)
        if value is not None:
            out.setdefault(flag.section, {})[flag.key] = (
                str(value) if isinstance(value, Path) else value
            )
    if getattr(args, "offline", None):
        out.setdefault("upstream", {})["offline"] = True
    urls: list[str] | None = getattr(args, "upstream", None)
    if urls is not None and len(urls) == 1:  # one upstream: upstream.url, as always
        out.setdefault("upstream", {})["url"] = urls[0]
        out["upstreams"] = []  # instead of any [[upstreams]] of the config file
    elif urls:
        out.setdefault("upstream", {})["url"] = DEFAULT_UPSTREAM  # listed, not this one
        out["upstreams"] = [
            {"name": name, "url": url} for name, url in zip(_source_names(urls), urls, strict=True)
        ]
    return out


def _source_names(urls: list[str]) -> list[str]:
    """Names for upstreams given with ``--upstream``: the host (``download-pytorch-org``),
    numbered when two share it; PyPI's is ``pypi``, so its cache is the one it always had."""
    names: list[str] = []
    for url in urls:
        host = (URL(url).host or "upstream").lower()
        base = "pypi" if host == "pypi.org" else re.sub(r"[^a-z0-9]+", "-", host).strip("-")
        name, number = base or "upstream", 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    return load_config(path, environ=os.environ, overrides=_overrides(args))


def _bind(host: str, port: int, *, listen: bool = True, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve(
    config: Config,
    sock: socket.socket,
    on_ready: Callable[[], None] | None = None,
    parent: int | None = None,
    metrics_dir: Path | None = None,
) -> None:
    """Run one server process on a listening socket until SIGTERM/SIGINT."""
    # File reads and writes go through to_thread; the default pool (cores + 4) is too small
    # for many concurrent downloads on a 2-core machine.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="proxyindex")
    )
    app = create_app(config, metrics_dir=metrics_dir)
    access: dict[str, Any] = {"access_log": None}
    if config.server.access_log:
        access = {"access_log": logging.getLogger(ACCESS_LOGGER), "access_log_class": AccessLog}
    # keepalive_timeout is aiohttp's one timer for a connection without a complete request:
    # armed when it is accepted and after each response, so it also bounds how long request
    # headers may take to arrive. It never runs while a response is being sent.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        keepalive_timeout=config.server.idle_timeout,
        shutdown_timeout=_SHUTDOWN_GRACE,
        **access,
    )
    await runner.setup()
    site = CappedSite(runner, sock, config.server.max_connections)
    await site.start()
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop, parent)) if parent else None
    try:
        await stop.wait()
    finally:
        _exit_after(_SHUTDOWN_LIMIT)
        if orphan_watch is not None:
            orphan_watch.cancel()
        await runner.cleanup()


def _exit_after(seconds: float) -> None:
    """Exit the process in ``seconds`` if it is still stopping then (see _SHUTDOWN_LIMIT)."""

    def hard_exit() -> None:
        log.warning("still stopping after %.0f s; exiting without waiting for threads", seconds)
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True  # never keeps the process alive itself
    timer.start()


async def _stop_when_orphaned(stop: asyncio.Event, parent: int) -> None:
    """A worker whose parent died (killed, or its stderr closed) stops instead of serving on.
    ``parent`` is the pid taken before the fork: read later, it may already be the reaper's."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(1.0)
    log.warning("the parent process is gone; stopping")
    stop.set()


def _run_workers(config: Config, host: str, port: int) -> int:
    """Pre-fork ``workers`` processes sharing the cache folder, each with its own listening
    socket on the port (SO_REUSEPORT): the kernel spreads connections evenly, where one
    shared socket let one busy worker take most of them. A worker that dies is replaced
    (see :mod:`proxyindex.web.supervisor`); returns once SIGTERM/SIGINT stopped them all."""
    parent = os.getpid()
    # One set of metrics for all workers: prometheus-client's multiprocess mode, switched on
    # before the fork, with a folder of this run's own (see proxyindex.metrics).
    metrics_dir = metrics.multiprocess_dir(config.storage.cache)
    metrics.enable_multiprocess(metrics_dir)

    def worker(ready: Callable[[], None] | None) -> None:
        sock = _bind(host, port, reuse_port=True)
        asyncio.run(_serve(config, sock, ready, parent, metrics_dir))

    supervisor = Supervisor(config.server.workers, worker, metrics.mark_dead(metrics_dir))
    try:
        return supervisor.run(lambda: _announce(config, host, port))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _announce(config: Config, host: str, port: int) -> None:
    """The line scripts and tests wait for (the first line, printed once connections are
    accepted), then what is being served: where data lives, which upstream, which auth."""
    shown = f"[{host}]" if ":" in host else host
    print(f"proxyindex: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    storage = config.storage
    log.info("packages: %s", storage.packages)
    log.info("cache: %s", storage.cache)
    if config.upstream.offline:
        log.info(
            "OFFLINE (upstream.offline): serving only what is cached; the upstream %s is "
            "never contacted",
            ", ".join(mask_url(source.url) for source, _settings in config.sources()),
        )
    elif not config.upstreams:
        log.info(
            "upstream: %s (checked %s)",
            mask_url(config.upstream.url),
            f"every {config.upstream.check_interval} s, see /ready"
            if config.upstream.check_interval
            else "never: upstream.check_interval = 0",
        )
    else:
        _announce_upstreams(config)
    log.info("%s", _auth_summary(config))
    private = config.private
    log.info(
        "private names: uploads shadowing an upstream name %s; reserved %s; merged %s",
        "refused" if private.refuse_shadowing_uploads else "ALLOWED",
        list(private.reserved) or "none",
        list(private.merge_with_upstream) or "none",
    )
    log.info("%d worker(s)", config.server.workers)
    _announce_network(config)


def _announce_upstreams(config: Config) -> None:
    """Several upstreams: each in order, with its pins and the kind of its credentials
    (never the secret)."""
    for number, (source, settings) in enumerate(config.sources(), 1):
        credentials = load_credentials(source, number, os.environ)
        log.info(
            "upstream %d %s: %s; %s; %s; page_ttl %d s",
            number,
            source.name,
            mask_url(source.url),
            source.serves,
            f"{credentials.kind} auth" if credentials else "no auth",
            settings.page_ttl,
        )


def _announce_network(config: Config) -> None:
    """How the upstream is reached, when it is not "directly, trusting the system's CAs":
    the first thing to check when a corporate network blocks it (proxy passwords masked)."""
    proxies = ProxyRoutes.from_settings(config.upstream.proxy, os.environ)
    for problem in proxies.ignored:
        log.warning("ignored: %s", problem)
    described = proxies.describe()
    if described is not None:
        log.info("%s", described)
    if config.upstream.ca_file is not None:
        log.info("trusting the system's CAs and upstream.ca_file %s", config.upstream.ca_file)


def _auth_summary(config: Config) -> str:
    auth = config.auth
    if auth.htpasswd is None:
        uploads = "anyone may upload" if auth.anonymous_upload else "uploads are refused"
        return f"auth: off (no auth.htpasswd): anyone may list and download; {uploads}"
    protected = ", ".join(a for a in ACTIONS if a in auth.protect)
    return f"auth: htpasswd {auth.htpasswd}; a login is needed to {protected or 'nothing'}"


def _check_policy(config: Config) -> None:
    """A deny/allow file that is missing or does not parse stops start-up, naming it."""
    try:
        Guard(config.policy).load()
    except GuardError as exc:
        raise ConfigError(f"policy: {exc}") from exc


def _check_auth(config: Config) -> None:
    """A wrong --htpasswd path must not start a server where every login fails."""
    if config.auth.htpasswd is None:
        return
    try:
        check_htpasswd(config.auth.htpasswd)
    except ValueError as exc:
        raise ConfigError(f"auth.htpasswd: {exc}") from exc
    protect = config.auth.protect
    if "download" in protect and "list" not in protect:
        log.warning(
            "auth.protect covers download but not list: project pages, the /simple/ list "
            "and the JSON API (names, versions, metadata) stay readable without a login; "
            'use protect = "all" to require a login for everything'
        )


def serve(args: argparse.Namespace) -> int:
    config = _load(args)
    logs.configure(args.log_level, config.server.access_log)
    _check_auth(config)
    _check_policy(config)
    for number, (source, _settings) in enumerate(config.sources(), 1):
        load_credentials(source, number, os.environ)  # a missing secret stops the start here
    removed = fsutil.remove_stale_temp_files(config.storage.packages)
    removed += fsutil.remove_stale_temp_files(config.storage.cache)
    if removed:
        log.info("removed %d temp files left by an earlier crash", removed)
    workers = config.server.workers
    try:
        # With workers, this socket only reserves the port (it never listens); each worker
        # listens on its own socket bound to the same port.
        sock = _bind(
            config.server.host, config.server.port, listen=workers == 1, reuse_port=workers > 1
        )
    except OSError as exc:
        print(
            f"proxyindex: cannot listen on {config.server.host}:{config.server.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    host, port = sock.getsockname()[:2]
    if workers > 1:
        with sock:
            return _run_workers(config, host, port)
    _announce(config, host, port)
    asyncio.run(_serve(config, sock))
    return 0


def _fail(message: str, code: int = 1) -> int:
    print(f"proxyindex: {message}", file=sys.stderr)
    return code


def _auth_config(args: argparse.Namespace) -> Config:
    config_path = args.config or (Path("config.toml") if Path("config.toml").is_file() else None)
    overrides: dict[str, dict[str, Any]] = {}
    if args.htpasswd is not None:
        overrides.setdefault("auth", {})["htpasswd"] = str(args.htpasswd)
    if getattr(args, "tokens", None) is not None:
        overrides.setdefault("auth", {})["tokens"] = str(args.tokens)
    return load_config(config_path, environ=os.environ, overrides=overrides)


def _read_password(args: argparse.Namespace) -> str | None:
    """One line from a pipe (``echo secret | proxyindex user add alice``), else ask twice."""
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            _fail("no password on standard input (expected one line)")
            return None
        return line.rstrip("\r\n")
    password = getpass.getpass(f"Password for {args.name}: ")
    if password != getpass.getpass("Again: "):
        _fail("the passwords differ")
        return None
    return password


def user_command(args: argparse.Namespace) -> int:
    path = _auth_config(args).auth.htpasswd
    if path is None:
        return _fail("no htpasswd file: pass --htpasswd FILE", 2)
    if args.user_command != "add" and not path.exists():
        return _fail(f"{path} does not exist", 2)
    try:
        if args.user_command == "list":
            for name in list_users(path):
                print(name)
            return 0
        if args.user_command == "remove":
            if not remove_user(path, args.name):
                return _fail(f"no user {args.name!r} in {path}")
            print(f"proxyindex: {args.name} removed from {path}", file=sys.stderr)
            return 0
        password = _read_password(args)
        if password is None:
            return 1
        if not password:
            return _fail("empty password refused")
        add_user(path, args.name, password)
    except ValueError as exc:
        return _fail(str(exc), 2)
    print(f"proxyindex: {args.name} saved in {path} (bcrypt)", file=sys.stderr)
    return 0


def policy_command(args: argparse.Namespace) -> int:
    """``policy explain NAME [VERSION]``: offline, from the config, the rule files and the
    upstream page the server cached (``proxyindex.guard.explain``)."""
    config = _load(args)
    if not is_valid_name(args.name):
        print(f"proxyindex: not a project name: {args.name!r}", file=sys.stderr)
        return 2
    name = normalize(args.name)
    if config.private.is_reserved(name) or name in scan_names(config.storage.packages):
        print(f"{name} is a private name: no policy applies to private files (and the upstream")
        print("is never asked for it); see `proxyindex private list-tombstones` for removed ones")
        return 0
    try:
        snapshot = parse_snapshot(args.at) if args.at else None
    except ValueError as exc:
        print(f"proxyindex: {exc}", file=sys.stderr)
        return 2
    guard = Guard(config.policy)
    try:
        guard.load()
    except GuardError as exc:
        raise ConfigError(f"policy: {exc}") from exc
    pages_dir = config.storage.cache / "pages"
    entry = asyncio.run(_cached_page(pages_dir, name)) if pages_dir.is_dir() else None
    if entry is None or entry.page is None:
        print(
            f"proxyindex: no upstream page of {name} in {config.storage.cache}; ask the server "
            f"for it once (pip download {name}, or GET /simple/{name}/) and run this again",
            file=sys.stderr,
        )
        return 1
    outcome = guard.outcome_now(entry.page, snapshot)
    for line in explain.report(entry.page, outcome, entry.fetched_at, args.version):
        print(line)
    return 0


async def _cached_page(directory: Path, name: NormalizedName) -> PageEntry | None:
    pages = await asyncio.to_thread(PageCache, directory)
    try:
        return await pages.get(name, any_writer=True)
    finally:
        await asyncio.to_thread(pages.close)


def private_command(args: argparse.Namespace) -> int:
    """``private list-tombstones`` and ``private release NAME``: they edit the names log in
    the packages folder; a running server reads the change within a second."""
    config = _load(args)
    packages_dir = config.storage.packages
    names = PrivateNames(packages_dir)
    names.refresh()
    files = scan_names(packages_dir)
    if args.private_command == "list-tombstones":
        for name in sorted(names.names() - files.keys()):
            removed = ", ".join(sorted(names.removed_files(name))) or "-"
            print(f"{name}\tremoved: {removed}")
        return 0
    if not is_valid_name(args.name):
        print(f"proxyindex: not a project name: {args.name!r}", file=sys.stderr)
        return 2
    name = normalize(args.name)
    if files.get(name):
        print(
            f"proxyindex: {name} still has {files[name]} private file(s) in {packages_dir}; "
            "remove them first",
            file=sys.stderr,
        )
        return 1
    if not names.release(name):
        print(f"proxyindex: {name} is not a tombstoned private name", file=sys.stderr)
        return 1
    # The actor of a CLI change is the operating-system user who ran it.
    try:
        AuditLog(audit_path(config)).write(AuditEvent("release", getpass.getuser(), "cli", name))
    except OSError as exc:
        print(f"proxyindex: could not write the audit log: {exc}", file=sys.stderr)
    print(f"proxyindex: released {name}: it comes from the upstream again", file=sys.stderr)
    return 0


def token_command(args: argparse.Namespace) -> int:
    auth = _auth_config(args).auth
    path = auth.tokens_file
    if path is None or auth.htpasswd is None:
        return _fail("tokens need users: pass --htpasswd FILE (and --tokens FILE)", 2)
    try:
        if args.token_command == "create":  # noqa: S105 - a subcommand, not a secret
            return _token_create(args, auth.htpasswd, path)
        if args.token_command == "revoke":  # noqa: S105
            revoked = tokens.revoke_token(path, args.id)
            if revoked is None:
                return _fail(f"no token {args.id!r} in {path}")
            print(f"proxyindex: token {args.id} of {revoked.user} revoked", file=sys.stderr)
            return 0
        _token_list(path, auth.htpasswd)
    except ValueError as exc:
        return _fail(str(exc), 2)
    return 0


def _token_create(args: argparse.Namespace, htpasswd: Path, path: Path) -> int:
    if args.user not in list_users(htpasswd):
        return _fail(f"no user {args.user!r} in {htpasswd}", 2)
    project = None
    if args.project is not None:
        if args.scope == "read":
            return _fail("a read token covers the whole index; --project limits uploads", 2)
        if not is_valid_name(args.project):
            return _fail(f"invalid project name {args.project!r}", 2)
        project = normalize(args.project)
    expires = tokens.parse_duration(args.expires) if args.expires else None
    token, secret = tokens.create_token(
        path, args.user, scope=args.scope, project=project, expires_in=expires
    )
    print(secret)
    limits = f", project {project}" if project else ""
    until = f", expires {token.expires:%Y-%m-%d %H:%M} UTC" if token.expires else ""
    print(
        f"proxyindex: token {token.id} for {token.user} ({token.scope}{limits}{until}); "
        f"shown once, use it as the password of user {tokens.TOKEN_USER}",
        file=sys.stderr,
    )
    return 0


def _token_list(path: Path, htpasswd: Path) -> None:
    """A table without secrets (none are stored); tokens that no longer work say why."""
    now = datetime.now(UTC)
    users = set(list_users(htpasswd)) if htpasswd.exists() else set()
    rows = [("id", "user", "scope", "project", "created", "expires", "")]
    for token in tokens.load_tokens(path):
        status = "expired" if token.expired(now) else ""
        if token.user not in users:
            status = "user removed"
        rows.append(
            (
                token.id,
                token.user,
                token.scope,
                token.project or "*",
                f"{token.created:%Y-%m-%d}",
                f"{token.expires:%Y-%m-%d %H:%M}" if token.expires else "never",
                status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "user":
            return user_command(args)
        if args.command == "token":
            return token_command(args)
        if args.command == "private":
            return private_command(args)
        if args.command in admincli.COMMANDS:
            return admincli.run(args)
        if args.command == "prefetch":
            return prefetchcli.run(args)
        if args.command == "policy":
            return policy_command(args)
    except ConfigError as exc:
        print(f"proxyindex: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
