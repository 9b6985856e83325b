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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from proxyindex import __version__, fsutil
from proxyindex.app import create_app
from proxyindex.auth import add_user
from proxyindex.config import Config, ConfigError, load_config
from proxyindex.upstream import mask_url

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyindex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"proxyindex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the index server")
    serve.add_argument("--config", type=Path, help="TOML file (default: ./config.toml if present)")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on (0: any free port)")
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
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    pairs = [
        ("server", "host", args.host),
        ("server", "port", args.port),
        ("server", "workers", args.workers),
        ("storage", "packages_dir", args.packages_dir),
        ("storage", "cache_dir", args.cache_dir),
        ("upstream", "url", args.upstream),
        ("auth", "htpasswd", args.htpasswd),
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
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_GRACE
    )
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
    accepted), then what is being served."""
    shown = f"[{host}]" if ":" in host else host
    print(f"proxyindex: listening on http://{shown}:{port}", file=sys.stderr, flush=True)
    log.info(
        "upstream %s, packages %s, cache %s, %d worker(s)",
        mask_url(config.upstream.url),
        config.storage.packages_dir,
        config.storage.cache_dir,
        config.server.workers,
    )


def serve(args: argparse.Namespace) -> int:
    config = _load(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    removed = fsutil.remove_stale_temp_files(config.storage.packages_dir)
    removed += fsutil.remove_stale_temp_files(config.storage.cache_dir)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "user":
            return user_add(args)
    except ConfigError as exc:
        print(f"proxyindex: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
