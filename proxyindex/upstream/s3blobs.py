"""Cached upstream files in the bucket, with this replica's blob folder as a cache in front.

Blobs are immutable and named by their sha256 (``files/<ab>/<sha256>`` in the bucket), so
replicas writing the same file write the same bytes: the put is a conditional create, and
losing that race means the file is already there. A blob not on the local disk is copied
from the bucket (and checked against its name) before the upstream is asked; the local
folder stays bounded by ``storage.cache_max_size`` as before (evicted blobs come back from
the bucket). While the bucket is unreachable, local blobs keep being served and new
downloads are kept locally only.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from proxyindex import fsutil
from proxyindex.objectstore import Bucket, StorageUnavailable
from proxyindex.upstream.cache import BlobStore, is_sha256

__all__ = ["S3BlobStore"]

log = logging.getLogger(__name__)

# After a failed bucket request, blobs missing locally go straight to the upstream for this
# long: a bucket that times out must not add its timeouts to every cold file.
_BACKOFF = 10.0
_REMEMBERED = 100_000  # blobs known to be in the bucket (64-byte keys: a few MB at most)


def blob_key(sha256: str) -> str:
    return f"files/{sha256[:2]}/{sha256}"


class S3BlobStore(BlobStore):
    def __init__(self, root: Path, bucket: Bucket) -> None:
        super().__init__(root)
        self.bucket = bucket
        self._failing = False
        self._retry_at = 0.0
        self._in_bucket: set[str] = set()

    def _failed(self, exc: StorageUnavailable) -> None:
        if not self._failing:
            log.error("%s; cached files are served from the local disk only", exc)
        self._failing = True
        self._retry_at = time.monotonic() + _BACKOFF

    def _ok(self) -> None:
        if self._failing:
            log.info("object storage %s is reachable again", self.bucket)
        self._failing = False

    def open(self, sha256: str) -> BinaryIO | None:
        """The blob from the local disk, else copied from the bucket first; None if neither
        has it (or the bucket cannot be reached: the caller downloads it from upstream)."""
        fh = super().open(sha256)
        if fh is not None or not is_sha256(sha256):
            return fh
        if self._failing and time.monotonic() < self._retry_at:
            return None
        temp_fh, temp = fsutil.open_temp(self.temp_dir)
        temp_fh.close()
        try:
            if not self.bucket.download(blob_key(sha256), temp):
                self._ok()
                return None
            self._ok()
            if fsutil.file_sha256(temp) != sha256:
                log.error("blob %s in %s does not match its name; ignored", sha256, self.bucket)
                return None
            super().commit(temp, sha256)
        except StorageUnavailable as exc:
            self._failed(exc)
            return None
        finally:
            temp.unlink(missing_ok=True)
        return super().open(sha256)

    def commit(self, temp: Path, sha256: str, project: str | None = None) -> Path:
        """Put the verified file in the bucket (once: a create), then in the local cache."""
        try:
            self.bucket.create(blob_key(sha256), temp)
            self._ok()
        except StorageUnavailable as exc:
            self._failed(exc)
        return super().commit(temp, sha256, project)

    def presigned_url(self, sha256: str, expires: timedelta) -> str | None:
        """A URL the bucket serves the blob from, if the bucket has it (known once seen:
        blobs are immutable, so one HEAD per blob and replica)."""
        try:
            if sha256 not in self._in_bucket:
                if self.bucket.etag(blob_key(sha256)) is None:
                    return None
                if len(self._in_bucket) >= _REMEMBERED:
                    self._in_bucket.clear()
                self._in_bucket.add(sha256)
            return self.bucket.presigned_url(blob_key(sha256), expires)
        except StorageUnavailable as exc:
            self._failed(exc)
            return None
