"""The one place the storage backend is chosen (``storage.backend``): a folder on this host
(``local``, the default) or an S3-compatible bucket shared by replicas (``s3``). Both
functions block (they open files, and the bucket's first listing); call them in a thread."""

from __future__ import annotations

from pathlib import Path

from proxyindex.config import Config, ConfigError
from proxyindex.objectstore import Bucket
from proxyindex.private.storage import PrivateStorage
from proxyindex.private.store import PrivateStore
from proxyindex.upstream.cache import BlobStore

__all__ = ["blob_store", "bucket", "private_storage"]


def bucket(config: Config) -> Bucket | None:
    """The bucket when ``storage.backend`` is ``s3``; None for local storage."""
    if config.storage.backend != "s3":
        return None
    try:
        import obstore  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "storage.backend = 's3' needs the s3 extra: pip install 'proxyindex[s3]'"
        ) from exc
    return Bucket.from_config(config.storage)


def private_storage(config: Config, bucket: Bucket | None) -> PrivateStore:
    cache_dir: Path = config.storage.cache
    if bucket is None:
        return PrivateStorage(config.storage.packages, cache_dir / "private-meta")
    from proxyindex.private.s3storage import S3PrivateStorage

    return S3PrivateStorage(bucket, cache_dir / "s3-private", config.storage.s3_poll_interval)


def blob_store(config: Config, bucket: Bucket | None) -> BlobStore:
    root = config.storage.cache / "files"
    if bucket is None:
        return BlobStore(root)
    from proxyindex.upstream.s3blobs import S3BlobStore

    return S3BlobStore(root, bucket)
