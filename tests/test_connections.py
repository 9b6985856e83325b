"""Connections and logs of the real server: stalled clients are dropped, a cap holds, slow
readers finish, client faults log one line without credentials, and the access log."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import logging
import os
import resource
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from proxyindex.auth.authenticator import add_user
from proxyindex.web.logs import ClientFaultFilter, redact
from proxyindex.web.supervisor import describe_status

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import MakeProxy
    from tests.fakepypi import FakePyPI
    from tests.serverproc import ProxyServer

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-Pa55word"
CREDENTIALS = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


def connect(proxy: ProxyServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def get(proxy: ProxyServer, path: str, auth: bool = False) -> int:
    request = urllib.request.Request(proxy.url + path)  # noqa: S310 - http://127.0.0.1
    if auth:
        request.add_header("Authorization", f"Basic {CREDENTIALS}")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
        resp.read()
        return int(resp.status)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stalled_partial_requests_are_closed_after_the_idle_timeout(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(server={"idle_timeout": 1})
    stalled = [connect(proxy) for _ in range(5)]
    for sock in stalled:
        sock.sendall(b"GET /simp")  # half a request line, then nothing
    idle = connect(proxy)  # sends nothing at all
    keepalive = connect(proxy)  # one request, then idles on the kept-alive connection
    keepalive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keepalive.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    for sock in [*stalled, idle, keepalive]:
        assert closed_within(sock, 10), "a stalled connection was held open"
        sock.close()
    assert time.monotonic() - started < 10
    assert get(proxy, "/health") == 200


def test_connections_over_the_cap_get_a_503_and_the_server_recovers(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy(server={"max_connections": 5, "idle_timeout": 60})
    held = [connect(proxy) for _ in range(5)]
    for sock in held:
        sock.sendall(b"GET /simp")
    time.sleep(0.3)  # all five accepted
    extra = connect(proxy)
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = extra.recv(4096)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After" in answer
    extra.close()
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closed connections and takes new ones again
        try:
            assert get(proxy, "/health") == 200
            break
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert time.monotonic() < deadline, "the cap never freed up"
            time.sleep(0.1)
    assert "refusing new ones" in proxy.log_text()


def test_a_slow_reader_of_a_large_file_completes_past_the_idle_timeout(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    # Bigger than what the kernel buffers between the two sockets (a few MB on loopback).
    noise = base64.b64encode(os.urandom(8_000_000)).decode()
    wheel = fake_pypi.add_wheel("big-pkg", "1.0", modules={"big_pkg/data.py": noise})
    data = wheel.read_bytes()
    proxy = make_proxy(server={"idle_timeout": 1}, upstream={"prefetch": False})
    path = f"/packages/big-pkg/{wheel.name}"
    assert get(proxy, "/simple/big-pkg/") == 200
    assert get(proxy, path) == 200  # cached now: the slow read below is a sendfile
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = bytearray()
    started = time.monotonic()
    sock.settimeout(10)
    while chunk := sock.recv(16384):  # ~2 MB/s: several idle timeouts long
        received += chunk
        time.sleep(0.008)
    sock.close()
    assert time.monotonic() - started > 2
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == data
    # The server was sending for longer than the idle timeout, and did not cut it off.
    line = proxy.wait_for_log(r"GET /packages/big-pkg/\S+ 200 \d+ ([1-9]|\d\d)\.")
    assert str(len(data)) in line


BAD_REQUESTS = [
    b"GET /\x01x HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization : Basic %s\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\x01\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nAuthorization: Basic %s\r\n\r\n",
    b"GET / HTTP/9.9\r\nAuthorization: Basic %s\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Long: " + b"Basic %s" * 400 + b"\r\n\r\n",  # too long: 400 too
]


def test_malformed_requests_log_one_short_line_each_and_never_a_credential(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy()
    assert get(proxy, "/health") == 200
    mark = proxy.log_mark()
    before = len(proxy.log_text())
    for index in range(200):
        sock = connect(proxy)
        bad = BAD_REQUESTS[index % len(BAD_REQUESTS)]
        sock.sendall(bad.replace(b"%s", CREDENTIALS.encode()))
        assert sock.recv(4096).startswith(b"HTTP/1.")  # a 400 (or 505), not a hang
        sock.close()
    assert get(proxy, "/health") == 200
    proxy.wait_for_log(r"GET /health 200", since=mark + 1)
    log = proxy.log_since(mark)
    assert "Traceback" not in log
    assert "ERROR" not in log
    assert CREDENTIALS not in log
    assert PASSWORD not in log
    assert CREDENTIALS[:12] not in log
    assert len(proxy.log_text()) - before < 200 * 300, log[-2000:]
    assert "bad request from 127.0.0.1" in log


def test_access_log_names_the_user_never_the_password(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    add_user(htpasswd, "alice", PASSWORD)
    proxy = make_proxy(auth={"htpasswd": str(htpasswd), "protect": ["list"]})
    assert get(proxy, "/simple/", auth=True) == 200
    assert get(proxy, "/health") == 200
    line = proxy.wait_for_log(r"proxyindex\.access: .* GET /simple/ 200")
    assert line.rstrip().endswith(" alice"), line
    assert proxy.wait_for_log(r"GET /health 200 \d+ [0-9.]+ -$")
    log = proxy.log_text()
    assert PASSWORD not in log
    assert CREDENTIALS not in log


def test_access_log_off_or_to_a_file(make_proxy: MakeProxy, tmp_path: Path) -> None:
    quiet = make_proxy(server={"access_log": ""})
    assert get(quiet, "/health") == 200
    to_file = make_proxy(server={"access_log": "access.log"})  # relative to the config file
    assert get(to_file, "/health") == 200
    written = tmp_path / "proxy1" / "access.log"
    deadline = time.monotonic() + 10
    while "GET /health 200" not in (written.read_text() if written.exists() else ""):
        assert time.monotonic() < deadline, "no access log line in the file"
        time.sleep(0.05)
    quiet.stop()
    to_file.stop()
    assert "proxyindex.access" not in quiet.log_text()
    assert "proxyindex.access" not in to_file.log_text()


def test_a_full_cache_disk_streams_files_through_uncached_and_the_index_keeps_working(
    make_proxy: MakeProxy, fake_pypi: FakePyPI
) -> None:
    """The cache cannot grow (RLIMIT_FSIZE on the server: writes past 256 KiB fail with
    EFBIG, as ENOSPC would on a full disk): every client still gets the whole, verified
    file, the server logs one warning per file and no traceback, and pages keep working."""
    noise = base64.b64encode(os.urandom(1_500_000)).decode()
    wheel = fake_pypi.add_wheel("big-pkg", "1.0", modules={"big_pkg/data.py": noise})
    data = wheel.read_bytes()
    fake_pypi.add_wheel("other-pkg", "1.0")
    proxy = make_proxy(upstream={"prefetch": False})
    limit = 256 * 1024
    _soft, hard = resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (limit, hard))
    assert get(proxy, "/simple/big-pkg/") == 200
    path = f"/packages/big-pkg/{wheel.name}"

    def fetch() -> bytes:
        with urllib.request.urlopen(proxy.url + path, timeout=30) as resp:  # noqa: S310
            assert resp.status == 200
            return bytes(resp.read())

    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # one download, three readers
        bodies = list(pool.map(lambda _: fetch(), range(3)))
    assert bodies == [data] * 3
    assert fetch() == data  # and again: still uncached, still whole
    assert get(proxy, "/simple/other-pkg/") == 200  # the index keeps working
    with pytest.raises(urllib.error.HTTPError) as head:  # HEAD needs the stored file
        head_request = urllib.request.Request(proxy.url + path, method="HEAD")  # noqa: S310
        urllib.request.urlopen(head_request, timeout=10)  # noqa: S310 - http://127.0.0.1
    assert head.value.code == 503
    log = proxy.log_text()
    assert "Traceback" not in log
    assert log.count("sending it uncached") == 3  # the shared download, the GET, the HEAD
    cache = proxy.config.parent / "cache" / "files"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.parent.name != "tmp"]
    resource.prlimit(proxy.pid, resource.RLIMIT_FSIZE, (hard, hard))
    assert fetch() == data  # space again: stored as usual
    sha = hashlib.sha256(data).hexdigest()
    deadline = time.monotonic() + 10
    while not (cache / sha[:2] / sha).is_file():
        assert time.monotonic() < deadline, "not cached once the disk had room again"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("b'Authorization : Basic dXNlcjpzZWNyZXQ='", "dXNlcjpzZWNyZXQ="),
        ("authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("header value Basic dXNlcjpzZWNyZXQ= quoted", "dXNlcjpzZWNyZXQ="),
        ("fetching https://bob:hunter22@index.example/simple/", "hunter22"),
    ],
)
def test_redact_removes_credentials_wherever_they_appear(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert redact("GET /simple/ 200 1234 0.004 alice") == "GET /simple/ 200 1234 0.004 alice"


def test_worker_exit_statuses_are_described_in_words() -> None:
    assert describe_status(1 << 8) == "exit status 1"
    assert describe_status(signal.SIGKILL) == "signal 9 (SIGKILL)"


def test_a_client_gone_while_its_answer_is_written_is_one_info_line() -> None:
    """aiohttp logs "Error handling request" with a traceback when a handler writes to a
    connection the client closed (seen 3 times in a 10-minute soak): a client fault, one line."""
    try:
        raise ConnectionResetError("Cannot write to closing transport")
    except ConnectionResetError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        exc_info,
    )
    logger = logging.getLogger("aiohttp.server")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        assert ClientFaultFilter().filter(record)
    finally:
        logger.setLevel(level)
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert record.getMessage() == (
        "client 127.0.0.1 went away while its answer was sent (ConnectionResetError)"
    )
