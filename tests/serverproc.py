"""Run the real ``proxyindex serve`` as a subprocess, the way users and clients meet it.

A subprocess (not an in-loop ``aiohttp_server``) because end-to-end tests run blocking clients
(pip, uv, twine) that would freeze a server living in the test's own event loop, and because
restarts, SIGTERM handling and on-disk state across restarts are part of what gets tested.
The server binds port 0 and announces itself with one ``listening on http://...`` line on stderr;
that line is the only thing this helper relies on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = ["REPO_ROOT", "ProxyServer", "ServerStartError", "write_config"]

REPO_ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (http://\S+)")
# Variables the server reads (PROXYINDEX_*) or that would change what Python imports.
_DROP_PREFIXES = ("PROXYINDEX_", "PYTHONPATH", "VIRTUAL_ENV")


class ServerStartError(AssertionError):
    """The server exited or stayed silent instead of announcing its URL."""


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise TypeError(f"{key}: cannot write {type(value).__name__} to TOML")


def write_config(
    path: Path, **sections: Mapping[str, object] | Sequence[Mapping[str, object]]
) -> Path:
    """Write ``{section: {key: value}}`` as a TOML file; ``write_config(p, upstream={"url": u})``;
    a list of tables is an array of tables (``upstreams=[{...}, {...}]``).

    Values may be str, Path, int, float, bool or lists of those. Only the tables and keys
    given are written, so everything else keeps the server's defaults.
    """
    lines: list[str] = []
    for section, values in sections.items():
        if not isinstance(values, Mapping):  # an array of tables: [[upstreams]]
            for table in values:
                lines.append(f"[[{section}]]")
                lines.extend(f"{key} = {_toml_value(key, value)}" for key, value in table.items())
                lines.append("")
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(key, value)}" for key, value in values.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class ProxyServer:
    """One ``python -m proxyindex serve --config CFG --port 0`` process.

    Output (stderr, with stdout folded in) is drained by a thread into a buffer for the whole
    lifetime, so a chatty server never blocks on a full pipe and tests can assert on logs.
    """

    def __init__(
        self,
        config: Path,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._url: str | None = None
        self._port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
        # proxyindex is imported from the checkout, whether or not it is installed in the venv.
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.update(self.extra_env)
        return env

    def start(self, port: int = 0) -> None:
        """Spawn the server and block until it prints its URL (or fail with its output)."""
        if self._proc is not None:
            raise RuntimeError("ProxyServer already running")
        cmd = [
            sys.executable,
            "-m",
            "proxyindex",
            "serve",
            "--config",
            str(self.config),
            "--port",
            str(port),
            *self.extra_args,
        ]
        with self._cond:
            self._url = None
            self._lines.append(f"--- start: {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd,
            cwd=self.config.parent,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        self._proc = proc
        self._reader = threading.Thread(
            target=self._drain, args=(proc.stdout,), name="proxyserver-log", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout
        with self._cond:
            while self._url is None:
                remaining = deadline - time.monotonic()
                if proc.poll() is not None or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.2))
            url = self._url
        if url is None:
            self._kill()
            why = "exited" if proc.returncode is not None else "did not announce its URL"
            raise ServerStartError(f"proxyindex {why} (rc={proc.returncode}):\n{self.log_text()}")
        self._port = int(url.rsplit(":", 1)[1].rstrip("/"))

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self._lines.append(line)
                if self._url is None and (m := _LISTENING.search(line)):
                    self._url = m.group(1).rstrip("/")
                self._cond.notify_all()
        stream.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with self._cond:
                    self._lines.append("--- did not exit on SIGTERM; killed\n")
                proc.kill()
                proc.wait()
        self._join()
        return proc.returncode

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._join()

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        self._reader = None
        self._proc = None

    def restart(self, *, same_port: bool = True) -> None:
        """Stop and start again with the same config and folders (cache and packages persist).

        ``same_port`` re-binds the previous port so URLs that clients stored stay valid.
        """
        port = self._port if same_port else 0
        self.stop()
        self.start(port)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests read ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("ProxyServer is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41237``."""
        if self._url is None:
            raise RuntimeError("ProxyServer has not started")
        return self._url

    @property
    def index_url(self) -> str:
        return self.url + "/simple/"

    @property
    def upload_url(self) -> str:
        return self.url + "/"

    @property
    def port(self) -> int:
        return self._port

    def log_text(self) -> str:
        """Everything the server wrote so far, across restarts (each start is marked)."""
        with self._cond:
            return "".join(self._lines)

    def log_mark(self) -> int:
        """A position in the log; pass it to ``log_since`` to see only what came after."""
        with self._cond:
            return len(self._lines)

    def log_since(self, mark: int) -> str:
        with self._cond:
            return "".join(self._lines[mark:])

    def wait_for_log(self, pattern: str, timeout: float = 10.0, *, since: int = 0) -> str:
        """Block until a log line after ``since`` matches ``pattern``; return that line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[since:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text()}")
                self._cond.wait(remaining)
