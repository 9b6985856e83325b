"""A real forward proxy on 127.0.0.1 for the corporate-network tests: proxy.py, as a subprocess.

A real implementation rather than a hand-written one, so the tests meet what a company's proxy
does: absolute-form ``GET http://host/path`` for plain-http upstreams, ``CONNECT host:port``
tunnels for https ones, ``407`` without the right ``Proxy-Authorization``. It binds port 0 and
writes the port to a file. Its access log is what tests read to see that upstream requests went
through it; mind that proxy.py logs one line per client connection (its first request, when
the connection ends), and pipes later requests on a kept-alive connection unlogged. So a test
proves the rest by stopping the proxy: an upstream that was reached only through it is then
unreachable.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.procs import ManagedProcess

if TYPE_CHECKING:
    pass

__all__ = ["ForwardProxy", "ProxiedRequest"]

# "... server.access_log:393 - 127.0.0.1:36736 - GET 127.0.0.1:35447/a - 404 File not found ..."
_ACCESS = re.compile(r"access_log:\d+ - \S+ - ([A-Z]+) (\S+?) - ")


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    method: str
    target: str  # host:port/path for GET, host:port for CONNECT


class ForwardProxy(ManagedProcess):
    """``python -m proxy`` on 127.0.0.1, any free port; ``credentials="user:pass"`` demands
    Basic proxy authentication."""

    def __init__(self, folder: Path, credentials: str | None = None) -> None:
        self.folder = folder
        self.credentials = credentials
        self.log_path = folder / "proxy.log"
        self._port_file = folder / "port"
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "proxy",
            "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(self._port_file),
            "--num-workers", "1", "--num-acceptors", "1",
            "--data-dir", str(self.folder / "data"), "--log-level", "INFO",
            # Drop idle connections after 1 s (default 10): it logs a connection when it ends.
            "--timeout", "1",
        ]  # fmt: skip
        if self.credentials is not None:
            cmd += ["--basic-auth", self.credentials]
        with self.log_path.open("ab") as log:
            # Its own process group: proxy.py forks acceptors and workers, stopped together.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "HOME": str(self.folder)},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"proxy.py exited:\n{self.log_text()}")
            text = self._port_file.read_text() if self._port_file.exists() else ""
            if text.strip().isdigit() and self._accepts(int(text)):
                self.port = int(text)
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"proxy.py did not start:\n{self.log_text()}")

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM the process group we started, SIGKILL if it lingers; the port is closed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[ProxiedRequest]:
        """The requests proxy.py logged so far: the first of each connection that ended."""
        return [ProxiedRequest(m, t) for m, t in _ACCESS.findall(self.log_text())]

    def wait_for(self, method: str, contains: str, timeout: float = 20.0) -> ProxiedRequest:
        deadline = time.monotonic() + timeout
        while True:
            for request in self.requests():
                if request.method == method and contains in request.target:
                    return request
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {method} ...{contains}... in the proxy's log:\n{self.log_text()}"
                )
            time.sleep(0.1)
