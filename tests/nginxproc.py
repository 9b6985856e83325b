"""A real nginx (Debian's package) in the foreground, round-robin over proxyindex replicas.

Everything lives in a temp prefix: config, pid file, error and access logs, body and proxy
temp folders. ``master_process off`` keeps it one process of the current user (as root,
workers would switch to ``nobody`` and could not write the temp folders under pytest's
private tmp). The access log names the replica (``$upstream_addr``) of every request, so
tests can tell which replica answered.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.procs import stop_process

__all__ = ["Nginx", "nginx_binary"]


def nginx_binary() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format replicas '$request_method|$uri|$status|$upstream_addr|$upstream_status';
    access_log {prefix}/access.log replicas;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A replica that refuses, resets or dies before answering: the next one answers
            # (GET and HEAD only: an upload is never sent twice).
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path, replicas: Sequence[str]) -> None:
        """``replicas``: ``host:port`` of each proxyindex server."""
        self.prefix = prefix
        self.port = _free_port()
        self._replicas = list(replicas)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = nginx_binary()
        assert binary is not None, "nginx is not installed"
        self.prefix.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"        server {addr} max_fails=1 fail_timeout=10s;" for addr in self._replicas
        )
        config = self.prefix / "nginx.conf"
        config.write_text(_CONFIG.format(prefix=self.prefix, servers=servers, port=self.port))
        error_log = self.prefix / "error.log"
        self._proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(config), "-e", str(error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start:\n{self.error_log()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_lines(self) -> list[list[str]]:
        """Each request as ``[method, uri, status, upstream_addr(s), upstream_status(es)]``."""
        path = self.prefix / "access.log"
        if not path.exists():
            return []
        return [line.split("|") for line in path.read_text().splitlines() if line]
