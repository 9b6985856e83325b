"""Two stateless replicas on one bucket behind a real nginx: what issue 10 promises, end to end.

A moto S3 server on 127.0.0.1, two ``proxyindex serve`` processes with ``backend = "s3"`` and
separate cache folders, and Debian's nginx round-robin in front. pip, uv and twine only ever
see nginx; the test itself reads the replicas directly only to check what each one serves.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tests.clients import make_venv, run_pip_install, run_twine_upload, run_uv_pip_install
from tests.conftest import MakeProxy
from tests.fakepypi import FakePyPI
from tests.motoserver import AWS_ENV, MotoServer
from tests.nginxproc import Nginx, nginx_binary
from tests.serverproc import ProxyServer
from tests.wheelmaker import make_wheel

pytest.importorskip("obstore")

pytestmark = pytest.mark.e2e

POLL = 1  # storage.s3_poll_interval of the replicas


@pytest.fixture(scope="module", autouse=True)
def _nginx_present() -> None:
    """Skipped only on a developer machine without nginx; in CI (.ci/run installs it) the
    test must run."""
    if nginx_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed, and CI must run the replica tests")
        pytest.skip("nginx is not installed (apt-get install nginx); CI installs it")


@dataclass
class Cluster:
    moto: MotoServer
    replicas: list[ProxyServer]
    nginx: Nginx

    @property
    def index_url(self) -> str:
        return f"{self.nginx.url}/simple/"

    @property
    def upload_url(self) -> str:
        return f"{self.nginx.url}/"

    def served_by(self, path_part: str) -> set[str]:
        """The replicas (host:port) that answered requests whose path contains ``path_part``
        with a 200."""
        return {
            line[3]
            for line in self.nginx.access_lines()
            if len(line) >= 4 and path_part in line[1] and line[2] == "200"
        }


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_until_every_replica_lists(cluster: Cluster, project: str, filename: str) -> float:
    """Seconds until every replica's page lists the file (the cross-replica bound)."""
    start = time.monotonic()
    for replica in cluster.replicas:
        while True:
            status, body = _get(f"{replica.url}/simple/{project}/")
            if status == 200 and filename.encode() in body:
                break
            assert time.monotonic() - start < POLL + 5, f"{replica.url} never listed {filename}"
            time.sleep(0.1)
    return time.monotonic() - start


class MakeCluster(Protocol):
    def __call__(self, **storage: object) -> Cluster: ...


@pytest.fixture
def make_cluster(make_proxy: MakeProxy, tmp_path: Path) -> Iterator[MakeCluster]:
    """moto, two replicas on its bucket (``storage`` keys added to theirs), nginx in front."""
    started: list[Cluster] = []

    def factory(**extra: object) -> Cluster:
        moto = MotoServer()
        moto.start()
        storage = {
            "backend": "s3",
            "s3_bucket": moto.bucket,
            "s3_prefix": "index",
            "s3_endpoint_url": moto.url,
            "s3_poll_interval": POLL,
            **extra,
        }
        replicas = [
            make_proxy(storage=storage, auth={"anonymous_upload": True}, env=AWS_ENV)
            for _ in range(2)
        ]
        nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{r.port}" for r in replicas])
        started.append(Cluster(moto, replicas, nginx))
        nginx.start()
        return started[-1]

    yield factory
    for cluster in started:
        cluster.nginx.stop()
        print(f"=== nginx error log ===\n{cluster.nginx.error_log()[-4000:]}")
        cluster.moto.stop()


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> Cluster:
    return make_cluster()


def test_upload_through_the_balancer_installs_from_both_replicas(
    cluster: Cluster, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("public-dep", "2.0")
    wheel = make_wheel(tmp_path / "dist", "corp-lib", "1.0", requires_dist=["public-dep"])
    run_twine_upload(tmp_path / "twine", cluster.upload_url, [wheel])
    took = _wait_until_every_replica_lists(cluster, "corp-lib", wheel.name)
    assert took < POLL + 3
    report = run_pip_install(
        tmp_path / "pip", cluster.index_url, "corp-lib", target=tmp_path / "target"
    )
    assert report.versions() == {"corp-lib": "1.0", "public-dep": "2.0"}
    python = make_venv(tmp_path / "venv")
    uv = run_uv_pip_install(tmp_path / "uv", cluster.index_url, "corp-lib", python=python)
    assert uv.installed == {"corp-lib": "1.0", "public-dep": "2.0"}
    # Round robin: both replicas served pages, and each serves the private file (from the
    # bucket, mirrored on first use) and the cached upstream file.
    assert len(cluster.served_by("/simple/") | cluster.served_by("/packages/")) == 2
    for replica in cluster.replicas:
        status, body = _get(f"{replica.url}/packages/corp-lib/{wheel.name}")
        assert status == 200 and body == wheel.read_bytes()
    wheels = [p for p in fake_pypi.paths() if p.endswith("public_dep-2.0-py3-none-any.whl")]
    assert len(wheels) <= 2, wheels  # at most one download per replica


def test_the_same_filename_raced_through_both_replicas_is_one_200_and_one_409(
    cluster: Cluster, tmp_path: Path
) -> None:
    ours = make_wheel(tmp_path / "a", "raced", "1.0", modules={"raced.py": "A = 1\n"})
    theirs = make_wheel(tmp_path / "b", "raced", "1.0", modules={"raced.py": "B = 2\n"})
    assert ours.name == theirs.name and ours.read_bytes() != theirs.read_bytes()
    results: dict[str, int] = {}
    outputs: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def upload(label: str, wheel: Path) -> None:
        barrier.wait()
        proc = run_twine_upload(tmp_path / label, cluster.upload_url, [wheel], check=False)
        results[label] = proc.returncode
        outputs[label] = proc.stdout + proc.stderr

    threads = [
        threading.Thread(target=upload, args=(label, w))
        for label, w in (("a", ours), ("b", theirs))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [0, 1], outputs
    loser = next(label for label, rc in results.items() if rc)
    assert "409" in outputs[loser] and "File already exists" in outputs[loser]
    posts = [line for line in cluster.nginx.access_lines() if line[0] == "POST"]
    assert sorted(line[2] for line in posts) == ["200", "409"]
    assert len({line[3] for line in posts}) == 2, posts  # one through each replica
    winner = ours if results["a"] == 0 else theirs
    for replica in cluster.replicas:
        _wait_until_every_replica_lists(cluster, "raced", winner.name)
        status, body = _get(f"{replica.url}/packages/raced/{winner.name}")
        assert status == 200 and body == winner.read_bytes()


def test_a_replica_killed_during_a_cold_install_leaves_the_install_working(
    cluster: Cluster, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    for index in range(4):
        fake_pypi.add_wheel(f"cold-{index}", "1.0", requires_dist=[f"cold-{index + 1}"])
    fake_pypi.add_wheel("cold-4", "1.0")
    fake_pypi.delay = 0.5  # a slow upstream: the install is still going when the kill comes
    victim = cluster.replicas[0]
    result: dict[str, object] = {}

    def install() -> None:
        result["report"] = run_pip_install(
            tmp_path / "pip", cluster.index_url, "cold-0", target=tmp_path / "target"
        )

    thread = threading.Thread(target=install)
    thread.start()
    deadline = time.monotonic() + 30
    while fake_pypi.count("/simple/cold-1") == 0:  # the install is under way
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(120)
    report = result["report"]
    assert report.versions() == {f"cold-{i}": "1.0" for i in range(5)}  # type: ignore[attr-defined]
    dead = f"127.0.0.1:{victim.port}"
    lines = cluster.nginx.access_lines()
    after = [line for line in lines if "/cold-4" in line[1]]
    assert after and all(line[3] != dead for line in after)  # the survivor answered
    # nginx tried the dead replica at least once and moved on to the other in that request.
    assert any(line[3].startswith(dead + ", ") for line in lines), lines


def test_an_unreachable_bucket_keeps_pages_and_files_serving_and_uploads_fail_with_503(
    cluster: Cluster, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.add_wheel("public-dep", "2.0")
    wheel = make_wheel(tmp_path / "dist", "corp-app", "1.0", requires_dist=["public-dep"])
    run_twine_upload(tmp_path / "twine", cluster.upload_url, [wheel])
    _wait_until_every_replica_lists(cluster, "corp-app", wheel.name)
    for attempt in range(2):  # round robin: both replicas see the pages and files
        run_pip_install(
            tmp_path / f"warm{attempt}",
            cluster.index_url,
            "corp-app",
            target=tmp_path / f"warm-target{attempt}",
        )
    for replica in cluster.replicas:
        for path in (f"/packages/corp-app/{wheel.name}", "/simple/public-dep/"):
            assert _get(f"{replica.url}{path}")[0] == 200

    cluster.moto.stop()
    report = run_pip_install(
        tmp_path / "pip", cluster.index_url, "corp-app", target=tmp_path / "target"
    )
    assert report.versions() == {"corp-app": "1.0", "public-dep": "2.0"}
    python = make_venv(tmp_path / "venv")
    uv = run_uv_pip_install(tmp_path / "uv", cluster.index_url, "corp-app", python=python)
    assert uv.installed == {"corp-app": "1.0", "public-dep": "2.0"}
    newer = make_wheel(tmp_path / "dist2", "corp-app", "2.0")
    proc = run_twine_upload(tmp_path / "twine2", cluster.upload_url, [newer], check=False)
    assert proc.returncode != 0
    assert "503" in proc.stdout + proc.stderr
    for replica in cluster.replicas:  # nothing half-stored shows up anywhere
        status, body = _get(f"{replica.url}/simple/corp-app/")
        assert status == 200 and newer.name.encode() not in body


def test_redirect_delivery_sends_cached_files_from_the_bucket(
    make_cluster: MakeCluster, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    """storage.s3_delivery = "redirect": once a file is in the bucket, every replica answers
    it with a 302 to a presigned URL; pip and uv follow it (and check the hash)."""
    cluster = make_cluster(s3_delivery="redirect")
    fake_pypi.add_wheel("bucket-served", "1.0")
    run_pip_install(tmp_path / "cold", cluster.index_url, "bucket-served", target=tmp_path / "t0")
    file_lines = [line for line in cluster.nginx.access_lines() if line[1].endswith("-any.whl")]
    # Cold: streamed (or, if the prefetcher put it in the bucket first, already redirected).
    assert len(file_lines) == 1
    report = run_pip_install(
        tmp_path / "pip", cluster.index_url, "bucket-served", target=tmp_path / "t1"
    )
    assert report.versions() == {"bucket-served": "1.0"}
    python = make_venv(tmp_path / "venv")
    uv = run_uv_pip_install(tmp_path / "uv", cluster.index_url, "bucket-served", python=python)
    assert uv.installed == {"bucket-served": "1.0"}
    file_lines = [line for line in cluster.nginx.access_lines() if line[1].endswith("-any.whl")]
    assert [line[2] for line in file_lines[1:]] == ["302", "302"]
    wheels = [p for p in fake_pypi.paths() if p.endswith(".whl")]
    # At most one download per replica (each may fetch ahead before the other's copy is in
    # the bucket); every later request is a redirect to the bucket.
    assert len(wheels) <= 2, fake_pypi.paths()
