"""``proxyindex yank``, ``unyank``, ``remove`` and ``cache stats|purge|verify``: clients of a
running server's admin API (``web.admin``), so they work against a remote server as well as
the local one.

Credentials are never taken from the command line (they would land in shell histories and
``ps``). They come from, in order: ``PROXYINDEX_USERNAME`` and ``PROXYINDEX_PASSWORD``; the
server's host in ``~/.netrc`` (or ``$NETRC``); ``keyring`` (if installed) for the server URL.
None found: the call goes without a login, which a server without users accepts from its own
host only.

The CLI blocks (it is a command, not the server): plain ``urllib`` requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import netrc
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "COMMANDS",
    "AdminClient",
    "AdminError",
    "add_parsers",
    "find_credentials",
    "run",
]

COMMANDS = ("yank", "unyank", "remove", "cache")
DEFAULT_SERVER = "http://127.0.0.1:8080"
_TIMEOUT = 600.0  # seconds: a verify of a large cache streams for minutes, but keeps talking


class AdminError(Exception):
    """The server refused or failed (its one-line reason), or could not be reached."""


def find_credentials(
    server: str, environ: Mapping[str, str], *, use_keyring: bool = True
) -> tuple[str, str] | None:
    """(user, password) for ``server``: the environment, then netrc, then keyring."""
    user, password = environ.get("PROXYINDEX_USERNAME"), environ.get("PROXYINDEX_PASSWORD")
    if user and password is not None:
        return user, password
    host = urllib.parse.urlsplit(server).hostname or ""
    path = Path(environ.get("NETRC") or Path(environ.get("HOME", "~")) / ".netrc")
    try:
        entry = netrc.netrc(str(path.expanduser())).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        entry = None
    if entry is not None and entry[0] and entry[2] is not None:
        return entry[0], entry[2]
    if use_keyring:
        try:
            import keyring  # optional: asked only when the others gave nothing
        except ImportError:
            return None
        try:
            found = keyring.get_credential(server, user or None)
        except Exception:  # a keyring backend that fails must not stop the command
            return None
        if found is not None and found.username and found.password is not None:
            return found.username, found.password
    return None


@dataclass(frozen=True, slots=True)
class AdminClient:
    server: str
    credentials: tuple[str, str] | None = None

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> IO[bytes]:
        url = self.server.rstrip("/") + path
        if not url.startswith(("http://", "https://")):
            raise AdminError(f"--server must be an http(s) URL, got {self.server!r}")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.credentials is not None:
            login = "{}:{}".format(*self.credentials).encode()
            headers["Authorization"] = "Basic " + base64.b64encode(login).decode()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            response: IO[bytes] = urllib.request.urlopen(request, timeout=_TIMEOUT)  # noqa: S310
        except urllib.error.HTTPError as exc:
            reason = exc.read().decode("utf-8", "replace").strip() or exc.reason
            hint = ""
            if exc.code == 401 and self.credentials is None:
                hint = " (set PROXYINDEX_USERNAME and PROXYINDEX_PASSWORD, or use ~/.netrc)"
            raise AdminError(f"{exc.code}: {reason}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach {self.server}: {why}") from None
        return response

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._request(method, path, body) as response:
            return json.loads(response.read())

    def stream(self, method: str, path: str) -> Iterator[dict[str, Any]]:
        """The JSON lines of a long answer, each as it arrives."""
        with self._request(method, path, None) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def add_parsers(commands: Any) -> None:
    """The admin subcommands, on the ``proxyindex`` parser's subparsers."""
    subs = []
    yank = commands.add_parser("yank", help="yank a private release (PEP 592), via the server")
    yank.add_argument("name")
    yank.add_argument("version")
    yank.add_argument("--reason", default="", help="shown to installers")
    unyank = commands.add_parser("unyank", help="undo a yank, via the server")
    unyank.add_argument("name")
    unyank.add_argument("version")
    remove = commands.add_parser("remove", help="remove a private project or one release")
    remove.add_argument("name")
    remove.add_argument("version", nargs="?")
    subs.extend([yank, unyank, remove])
    cache = commands.add_parser("cache", help="the server's upstream cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    subs.append(cache_commands.add_parser("stats", help="what the cache holds"))
    purge = cache_commands.add_parser("purge", help="drop projects' cached pages and files")
    purge.add_argument("names", nargs="+", metavar="NAME")
    subs.append(purge)
    subs.append(cache_commands.add_parser("verify", help="re-hash every cached file"))
    for sub in subs:
        sub.add_argument(
            "--server",
            default=None,
            help=f"the server's URL (default: $PROXYINDEX_SERVER or {DEFAULT_SERVER})",
        )


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def _print_stats(stats: dict[str, Any]) -> None:
    cap = stats.get("max_size") or 0
    print(f"cache:            {_size(stats['size'])}" + (f" of {_size(cap)}" if cap else ""))
    print(f"cached files:     {stats['files']}")
    print(f"cached pages:     {stats['pages']}")
    print(f"private projects: {stats['private_projects']}")
    if stats.get("largest"):
        print("largest cached projects:")
        for row in stats["largest"]:
            print(f"  {row['project']:<40} {_size(row['bytes']):>10}  {row['files']} files")


def _verify(client: AdminClient) -> int:
    """Stream the verify, drawing a progress bar (rich) on a terminal."""
    from rich.progress import (  # only this command draws
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeRemainingColumn,
    )

    result: dict[str, Any] = {}
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("verifying", total=None)
        for line in client.stream("POST", "/-/admin/cache/verify"):
            if "result" in line:
                result = line["result"]
            else:
                progress.update(task, completed=line["done"], total=line["total"])
    bad = result.get("quarantined", [])
    print(f"checked {result.get('checked', 0)} files ({_size(result.get('bytes', 0))})")
    for item in bad:
        print(f"quarantined {item['sha256']}: hashes to {item['actual']} ({item['quarantined']})")
    print(f"{len(bad)} corrupt files quarantined" if bad else "every file matches its hash")
    return 1 if bad else 0


def _dispatch(args: argparse.Namespace, client: AdminClient) -> int:
    name = _quote(getattr(args, "name", "") or "")
    if args.command == "yank":
        out = client.call(
            "POST", f"/-/admin/yank/{name}/{_quote(args.version)}", {"reason": args.reason}
        )
        files = ", ".join(f["filename"] for f in out["files"])
        print(f"yanked {out['project']} {out['version']} ({files})")
    elif args.command == "unyank":
        out = client.call("POST", f"/-/admin/unyank/{name}/{_quote(args.version)}")
        print(f"unyanked {out['project']} {out['version']}")
    elif args.command == "remove":
        path = f"/-/admin/projects/{name}"
        if args.version:
            path += f"/{_quote(args.version)}"
        print(client.call("DELETE", path)["message"])
    elif args.cache_command == "stats":
        _print_stats(client.call("GET", "/-/admin/cache/stats"))
    elif args.cache_command == "purge":
        out = client.call("POST", "/-/admin/cache/purge", {"projects": args.names})
        for row in out["purged"]:
            page = "page and " if row["page"] else ""
            print(f"purged {row['project']}: {page}{row['files']} files ({_size(row['bytes'])})")
    else:
        return _verify(client)
    return 0


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    server = args.server or environ.get("PROXYINDEX_SERVER") or DEFAULT_SERVER
    client = AdminClient(server, find_credentials(server, environ))
    try:
        return _dispatch(args, client)
    except AdminError as exc:
        print(f"proxyindex: {exc}", file=sys.stderr)
        return 1
