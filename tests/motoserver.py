"""moto's S3 server as a subprocess on 127.0.0.1: the object store of the s3 backend's tests.

moto speaks the S3 protocol over HTTP, including the conditional writes the backend relies
on (``If-None-Match: *`` and ``If-Match`` on PutObject: checked in tests/test_s3_storage.py).
It can be stopped and started again on the same port, with its state lost: the bucket is
created again by :meth:`MotoServer.start`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.procs import ManagedProcess, stop_process

__all__ = ["AWS_ENV", "MotoServer"]

# Credentials for moto (it accepts any); the backend reads them from the standard AWS chain.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer(ManagedProcess):
    def __init__(self, bucket: str = "proxyindex-test") -> None:
        self.bucket = bucket
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, create_bucket: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENV)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        if create_bucket:
            request = urllib.request.Request(f"{self.url}/{self.bucket}", method="PUT")  # noqa: S310
            with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                pass

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
