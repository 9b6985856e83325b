"""The ``proxyindex`` command: ``serve`` runs the server, ``user add`` manages htpasswd users."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import getpass
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from proxyindex import __version__, fsutil
from proxyindex.app import create_app
from proxyindex.auth import add_user
from proxyindex.config import Config, ConfigError, load_config
from proxyindex.models import is_valid_name, normalize
from proxyindex.network import ProxyRoutes
from proxyindex.tombstones import PrivateNames, scan_names
from proxyindex.upstream import mask_url

__all__ = ["main"]

log = logging.getLogger("proxyindex")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyindex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"proxyindex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the index server")
    serve.add_argument("--config", type=Path, help="TOML file (default: ./config.toml if present)")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on (0: any free port)")
    serve.add_argument("--data-dir", type=Path, help="folder for packages and cache")
    serve.add_argument("--packages-dir", type=Path, help="folder of private packages")
    serve.add_argument("--cache-dir", type=Path, help="folder for the upstream cache")
    serve.add_argument("--upstream", help="upstream simple index URL")
    serve.add_argument("--htpasswd", type=Path, help="htpasswd file enabling authentication")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port and cache")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    user = commands.add_parser("user", help="manage users of the htpasswd file")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="add a user (or set a new password)")
    add.add_argument("name")
    add.add_argument(
        "--htpasswd", type=Path, help="the file (default: auth.htpasswd of the config)"
    )
    add.add_argument("--config", type=Path, help="TOML file (default: ./config.toml if present)")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _private_parser(commands)
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


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    pairs = [
        ("server", "host", getattr(args, "host", None)),
        ("server", "port", getattr(args, "port", None)),
        ("server", "workers", getattr(args, "workers", None)),
        ("storage", "data_dir", getattr(args, "data_dir", None)),
        ("storage", "packages_dir", args.packages_dir),
        ("storage", "cache_dir", getattr(args, "cache_dir", None)),
        ("upstream", "url", getattr(args, "upstream", None)),
        ("auth", "htpasswd", getattr(args, "htpasswd", None)),
    ]
    for section, key, value in pairs:
        if value is not None:
            out.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return out


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
) -> None:
    """Run one server process on a listening socket until SIGTERM/SIGINT."""
    # File reads and writes go through to_thread; the default pool (cores + 4) is too small
    # for many concurrent downloads on a 2-core machine.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="proxyindex")
    )
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
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
        if orphan_watch is not None:
            orphan_watch.cancel()
        await runner.cleanup()


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
    shared socket let one busy worker take most of them. Returns once they have all exited."""
    ready_read, ready_write = os.pipe()
    parent = os.getpid()
    children: list[int] = []
    for _ in range(config.server.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(ready_read)
            try:
                sock = _bind(host, port, reuse_port=True)

                def ready() -> None:
                    os.write(ready_write, b".")

                asyncio.run(_serve(config, sock, ready, parent))
            finally:
                os._exit(0)
        children.append(pid)
    os.close(ready_write)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = 0
    while started < len(children):
        got = os.read(ready_read, len(children))
        if not got:  # every child closed the pipe: some failed to start
            break
        started += len(got)
    os.close(ready_read)
    if started == len(children):
        _announce(config, host, port)
    status = 0
    for child in children:
        _pid, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def _announce(config: Config, host: str, port: int) -> None:
    """The line scripts and tests wait for (the first line, printed once connections are
    accepted), then what is being served: where data lives, which upstream, which auth."""
    shown = f"[{host}]" if ":" in host else host
    print(f"proxyindex: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    storage = config.storage
    log.info("packages: %s", storage.packages)
    log.info("cache: %s", storage.cache)
    log.info(
        "upstream: %s (checked %s)",
        mask_url(config.upstream.url),
        f"every {config.upstream.check_interval} s, see /ready"
        if config.upstream.check_interval
        else "never: upstream.check_interval = 0",
    )
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
    protected = ", ".join(a for a in ("list", "download", "upload") if a in auth.protect)
    return f"auth: htpasswd {auth.htpasswd}; a login is needed to {protected or 'nothing'}"


def serve(args: argparse.Namespace) -> int:
    config = _load(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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


def user_add(args: argparse.Namespace) -> int:
    path: Path | None = args.htpasswd
    if path is None:
        config_path = args.config or (
            Path("config.toml") if Path("config.toml").is_file() else None
        )
        path = load_config(config_path, environ=os.environ).auth.htpasswd
    if path is None:
        print("proxyindex: no htpasswd file: pass --htpasswd FILE", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Again: "):
            print("proxyindex: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("proxyindex: empty password refused", file=sys.stderr)
        return 1
    try:
        add_user(path, args.name, password)
    except ValueError as exc:
        print(f"proxyindex: {exc}", file=sys.stderr)
        return 2
    print(f"proxyindex: {args.name} saved in {path} (bcrypt)", file=sys.stderr)
    return 0


def private_command(args: argparse.Namespace) -> int:
    """``private list-tombstones`` and ``private release NAME``: they edit the names log in
    the packages folder; a running server reads the change within a second."""
    packages_dir = _load(args).storage.packages
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
    print(f"proxyindex: released {name}: it comes from the upstream again", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "user":
            return user_add(args)
        if args.command == "private":
            return private_command(args)
    except ConfigError as exc:
        print(f"proxyindex: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
