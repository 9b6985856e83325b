"""The s3 backend against moto's S3 server: conditional writes, two replicas on one bucket.

Each "replica" here is an S3PrivateStorage or S3BlobStore of its own (own local folder) on
one bucket; tests/test_replicas.py runs whole servers behind nginx.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from packaging.utils import NormalizedName

from proxyindex.config import ConfigError, load_config
from proxyindex.distname import parse_dist_filename
from proxyindex.objectstore import Bucket, StorageUnavailable
from proxyindex.private.s3storage import S3PrivateStorage
from proxyindex.private.storage import Conflict, Same, Stored
from proxyindex.upstream.s3blobs import S3BlobStore, blob_key
from tests.motoserver import AWS_ENV, MotoServer
from tests.wheelmaker import make_wheel, sha256_file

pytest.importorskip("obstore")

POLL = 1  # seconds: the replicas' storage.s3_poll_interval in these tests


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """The shared bucket under a prefix of this test's own."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    return Bucket(moto.bucket, prefix=f"t-{uuid.uuid4().hex}", endpoint_url=moto.url)


ReplicaFactory = Callable[[], S3PrivateStorage]


@pytest.fixture
def replica(bucket: Bucket, tmp_path: Path) -> ReplicaFactory:
    count = 0

    def make() -> S3PrivateStorage:
        nonlocal count
        count += 1
        storage = S3PrivateStorage(bucket, tmp_path / f"replica{count}", POLL)
        storage.rescan()
        return storage

    return make


def _upload(storage: S3PrivateStorage, wheel: Path) -> Stored | Same | Conflict:
    """What the upload handler does: the body lands in storage's temp area, then add()."""
    temp = storage.temp_dir / f".upload-{uuid.uuid4().hex}"
    temp.write_bytes(wheel.read_bytes())
    try:
        return storage.add(
            temp, parse_dist_filename(wheel.name), sha256_file(wheel), overwrite=False
        )
    finally:
        temp.unlink(missing_ok=True)


def _wait_for(check: Callable[[], bool], storage: S3PrivateStorage, limit: float) -> float:
    """Poll as the server does (rescan every 0.1 s here) until ``check``; seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, "the change did not arrive in time"
        storage.rescan()
        time.sleep(0.1)
    return time.monotonic() - start


def test_moto_enforces_if_none_match_and_if_match(bucket: Bucket) -> None:
    """What the backend relies on, checked on the server the tests use."""
    assert bucket.create("k", b"one") is True
    assert bucket.create("k", b"two") is False
    found = bucket.get("k")
    assert found is not None and found.data == b"one"
    assert bucket.replace("k", b"three", found.etag) is True
    assert bucket.replace("k", b"four", found.etag) is False  # stale ETag: refused
    again = bucket.get("k")
    assert again is not None and again.data == b"three"


def test_two_replicas_racing_one_filename_store_one_and_refuse_the_other(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    a, b = replica(), replica()
    ours = make_wheel(tmp_path / "a", "racer", "1.0", modules={"racer.py": "A = 1\n"})
    theirs = make_wheel(tmp_path / "b", "racer", "1.0", modules={"racer.py": "B = 2\n"})
    results: dict[str, Stored | Same | Conflict] = {}
    barrier = threading.Barrier(2)

    def go(label: str, storage: S3PrivateStorage, wheel: Path) -> None:
        barrier.wait()
        results[label] = _upload(storage, wheel)

    threads = [
        threading.Thread(target=go, args=("a", a, ours)),
        threading.Thread(target=go, args=("b", b, theirs)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(type(r).__name__ for r in results.values())
    assert kinds == ["Conflict", "Stored"], results
    winner = ours if isinstance(results["a"], Stored) else theirs
    c = replica()  # a third replica sees the winner's bytes
    page = c.page(NormalizedName("racer"))
    assert page is not None
    assert [f.hashes["sha256"] for f in page.files] == [sha256_file(winner)]
    path = c.locate(NormalizedName("racer"), winner.name)
    assert path is not None and path.read_bytes() == winner.read_bytes()


def test_same_bytes_racing_through_two_replicas_is_stored_once(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    a, b = replica(), replica()
    wheel = make_wheel(tmp_path, "twin", "1.0")
    results = []
    barrier = threading.Barrier(2)

    def go(storage: S3PrivateStorage) -> None:
        barrier.wait()
        results.append(_upload(storage, wheel))

    threads = [threading.Thread(target=go, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(r).__name__ for r in results) == ["Same", "Stored"], results


def test_concurrent_uploads_to_one_project_through_two_replicas_lose_none(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    """The project record is updated with If-Match: every concurrent add survives."""
    a, b = replica(), replica()
    wheels = [make_wheel(tmp_path / str(i), "busy", f"1.{i}") for i in range(8)]
    barrier = threading.Barrier(len(wheels))
    results: list[Stored | Same | Conflict] = []

    def go(storage: S3PrivateStorage, wheel: Path) -> None:
        barrier.wait()
        results.append(_upload(storage, wheel))

    threads = [
        threading.Thread(target=go, args=(a if i % 2 else b, w)) for i, w in enumerate(wheels)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Stored) for r in results), results
    page = replica().page(NormalizedName("busy"))
    assert page is not None
    assert sorted(f.filename for f in page.files) == sorted(w.name for w in wheels)


def test_a_change_through_one_replica_is_served_by_the_other_within_the_poll_interval(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    a, b = replica(), replica()
    name = NormalizedName("seen-elsewhere")
    wheel = make_wheel(tmp_path, "seen-elsewhere", "1.0", requires_python=">=3.8")
    assert isinstance(_upload(a, wheel), Stored)
    took = _wait_for(lambda: b.has(name), b, limit=POLL + 5)
    assert took <= POLL + 2  # the stated bound: the poll interval plus a request or two
    page = b.page(name)
    assert page is not None
    (dist,) = page.files
    assert dist.requires_python == ">=3.8"
    assert dist.hashes == {"sha256": sha256_file(wheel)}
    assert isinstance(dist.core_metadata, dict)
    metadata = b.metadata(name, wheel.name)
    assert metadata is not None and b"Name: seen-elsewhere" in metadata
    located = b.locate(name, wheel.name)
    assert located is not None and located.read_bytes() == wheel.read_bytes()
    # A removal travels the same way, and leaves a tombstone with the file's hash.
    assert a.remove_version_files(name, "1.0") == [(wheel.name, sha256_file(wheel))]
    _wait_for(lambda: not b.has(name), b, limit=POLL + 5)
    assert b.was_private(name)
    assert b.private_names.removed_files(name) == {wheel.name: sha256_file(wheel)}


def test_a_yank_through_one_replica_is_served_by_the_other(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    a, b = replica(), replica()
    name = NormalizedName("yanked-elsewhere")
    wheel = make_wheel(tmp_path, "yanked-elsewhere", "1.0")
    assert isinstance(_upload(a, wheel), Stored)
    _wait_for(lambda: b.has(name), b, limit=POLL + 5)
    assert a.yank(name, "1.0.0", "broken build") == [(wheel.name, sha256_file(wheel))]
    assert a.yank(name, "2.0", "no such release") == []

    def yanked() -> str | bool:
        page = b.page(name)
        return False if page is None else page.files[0].yanked

    _wait_for(lambda: yanked() == "broken build", b, limit=POLL + 5)
    assert a.unyank(name, "1.0") == [(wheel.name, sha256_file(wheel))]
    _wait_for(lambda: yanked() is False, b, limit=POLL + 5)


def test_an_unreachable_bucket_keeps_the_view_and_fails_writes_with_503(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    gone = Bucket("nowhere", endpoint_url="http://127.0.0.1:9")  # nothing listens on port 9
    storage = S3PrivateStorage(gone, tmp_path / "r", POLL)
    with pytest.raises(StorageUnavailable):
        storage.rescan()  # start-up refuses: an empty view would free private names
    wheel = make_wheel(tmp_path, "nobucket", "1.0")
    with pytest.raises(StorageUnavailable) as caught:
        _upload(storage, wheel)
    assert caught.value.status == 503


def test_cached_upstream_files_are_shared_through_the_bucket(
    bucket: Bucket, tmp_path: Path
) -> None:
    a = S3BlobStore(tmp_path / "a", bucket)
    b = S3BlobStore(tmp_path / "b", bucket)
    data = b"wheel bytes " * 1000
    sha = hashlib.sha256(data).hexdigest()
    for store in (a, b):  # both replicas downloaded it: the second write is a no-op
        temp = store.temp_dir / "x"
        temp.write_bytes(data)
        store.commit(temp, sha)
    c = S3BlobStore(tmp_path / "c", bucket)
    fh = c.open(sha)
    assert fh is not None
    with fh:
        assert fh.read() == data
    # A blob whose bytes do not match its name is never served.
    bad = hashlib.sha256(b"other").hexdigest()
    bucket.put(blob_key(bad), b"not the other bytes")
    assert c.open(bad) is None
    assert c.open(hashlib.sha256(b"absent").hexdigest()) is None


def test_s3_settings_come_from_the_environment_like_every_key() -> None:
    config = load_config(
        None,
        environ={
            "PROXYINDEX_STORAGE_BACKEND": "s3",
            "PROXYINDEX_STORAGE_S3_BUCKET": "corp-index",
            "PROXYINDEX_STORAGE_S3_PREFIX": "prod/",
            "PROXYINDEX_STORAGE_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "PROXYINDEX_STORAGE_S3_REGION": "eu-west-1",
            "PROXYINDEX_STORAGE_S3_POLL_INTERVAL": "5",
            "PROXYINDEX_STORAGE_S3_DELIVERY": "redirect",
        },
    )
    storage = config.storage
    assert (storage.backend, storage.s3_bucket, storage.s3_prefix) == ("s3", "corp-index", "prod/")
    assert storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert (storage.s3_region, storage.s3_poll_interval, storage.s3_delivery) == (
        "eu-west-1",
        5,
        "redirect",
    )
    assert load_config(None).storage.backend == "local"


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"backend": "s4"}, "storage.backend"),
        ({"backend": "s3"}, "storage.s3_bucket"),
        ({"backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "minio:9000"}, "s3_endpoint_url"),
        ({"s3_delivery": "cdn"}, "storage.s3_delivery"),
    ],
)
def test_bad_s3_settings_stop_start_up_naming_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, overrides={"storage": settings})


def test_a_file_replaced_through_one_replica_is_never_served_from_an_old_copy(
    replica: ReplicaFactory, tmp_path: Path
) -> None:
    """allow_overwrite: the other replica's mirror copy of the old bytes must not be served."""
    a, b = replica(), replica()
    name = NormalizedName("replaced")
    old = make_wheel(tmp_path / "old", "replaced", "1.0", modules={"replaced.py": "V = 1\n"})
    new = make_wheel(tmp_path / "new", "replaced", "1.0", modules={"replaced.py": "V = 2\n"})
    assert isinstance(_upload(a, old), Stored)
    _wait_for(lambda: b.has(name), b, limit=POLL + 5)
    first = b.locate(name, old.name)
    assert first is not None and first.read_bytes() == old.read_bytes()
    temp = a.temp_dir / ".upload-new"
    temp.write_bytes(new.read_bytes())
    result = a.add(temp, parse_dist_filename(new.name), sha256_file(new), overwrite=True)
    assert isinstance(result, Stored) and result.replaced_sha256 == sha256_file(old)

    def replaced() -> bool:
        page = b.page(name)
        return page is not None and page.files[0].hashes["sha256"] == sha256_file(new)

    _wait_for(replaced, b, limit=POLL + 5)
    again = b.locate(name, new.name)
    assert again is not None and again.read_bytes() == new.read_bytes()
    assert not first.exists()  # the old copy is gone from the replica's disk
