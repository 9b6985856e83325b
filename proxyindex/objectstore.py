"""One S3-compatible bucket, as the few blocking calls the storage backends need.

Built on obstore (the Rust ``object_store`` client): it speaks S3 (and GCS and Azure), has
conditional puts (``If-None-Match: *`` as ``mode="create"``, ``If-Match`` as an
``UpdateVersion``) and presigned URLs. Every method blocks; async callers use
``asyncio.to_thread``, as for every other file operation. Any failure to reach the bucket is
one exception, :class:`StorageUnavailable` (a 503): a missing object is ``None``, a lost
conditional write ``False``, so callers never see the client's own exception types.

Credentials come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, web identity and instance or container
roles), never from the config file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyindex.errors import ProxyIndexError

if TYPE_CHECKING:
    from obstore.store import ClientConfig

    from proxyindex.config import StorageConfig

__all__ = ["Bucket", "StorageUnavailable", "Versioned"]

# A bucket that does not answer must fail a request in seconds (an upload gets a 503), not
# after object_store's default of ten retries over three minutes.
_CONNECT_TIMEOUT = timedelta(seconds=3)
_TIMEOUT = timedelta(seconds=120)
_RETRIES = 2
_RETRY_TIMEOUT = timedelta(seconds=10)


class StorageUnavailable(ProxyIndexError):
    """The bucket cannot be reached or refused the request: a 503, nothing half-written is
    ever listed (the project record is written last)."""

    status = 503


@dataclass(frozen=True, slots=True)
class Versioned:
    """An object's bytes with the ETag a conditional update must name."""

    data: bytes
    etag: str


def _unavailable(exc: Exception, what: str) -> StorageUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageUnavailable(f"object storage unavailable ({what}): {first[:200]}")


class Bucket:
    """The bucket under ``prefix``: keys are relative to it."""

    def __init__(
        self, bucket: str, *, prefix: str = "", endpoint_url: str = "", region: str = ""
    ) -> None:
        from obstore.store import S3Store  # the s3 extra: only needed for backend = "s3"

        options: ClientConfig = {
            "connect_timeout": _CONNECT_TIMEOUT,
            "timeout": _TIMEOUT,
        }
        kwargs: dict[str, Any] = {}
        if endpoint_url:
            kwargs["endpoint"] = endpoint_url
            kwargs["virtual_hosted_style_request"] = False  # MinIO, moto: path-style
            options["allow_http"] = endpoint_url.startswith("http://")
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "")
        kwargs["region"] = region or "us-east-1"
        self.name = bucket
        self.prefix = prefix.strip("/")
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            client_options=options,
            retry_config={"max_retries": _RETRIES, "retry_timeout": _RETRY_TIMEOUT},
            **kwargs,
        )

    @classmethod
    def from_config(cls, storage: StorageConfig) -> Bucket:
        return cls(
            storage.s3_bucket,
            prefix=storage.s3_prefix,
            endpoint_url=storage.s3_endpoint_url,
            region=storage.s3_region,
        )

    def __repr__(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def get(self, key: str) -> Versioned | None:
        """The object's bytes and ETag; None if there is no such object."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = obstore.get(self._store, key)
            data = result.bytes().to_bytes()
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise _unavailable(exc, f"get {key}") from exc
        return Versioned(data, str(result.meta.get("e_tag") or ""))

    def etag(self, key: str) -> str | None:
        """The object's ETag (a HEAD); None if there is no such object."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            meta = obstore.head(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise _unavailable(exc, f"head {key}") from exc
        return str(meta.get("e_tag") or "")

    def download(self, key: str, dest: Path) -> bool:
        """Write the object to ``dest`` (streamed in chunks); False if there is no such object.
        The caller owns ``dest`` (a temp file) and commits it."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = obstore.get(self._store, key)
            with dest.open("wb") as fh:
                for chunk in result.stream(min_chunk_size=1 << 20):
                    fh.write(chunk)
        except (NotFoundError, FileNotFoundError):
            return False
        except OSError:
            raise
        except Exception as exc:
            raise _unavailable(exc, f"get {key}") from exc
        return True

    def put(self, key: str, data: bytes | Path) -> str:
        """Write the object whatever is there; its new ETag."""
        import obstore

        try:
            return str(obstore.put(self._store, key, data)["e_tag"] or "")
        except Exception as exc:
            raise _unavailable(exc, f"put {key}") from exc

    def create(self, key: str, data: bytes | Path) -> bool:
        """Write the object only if no object has the key (``If-None-Match: *``): False if one
        does. Of two replicas racing on one key, exactly one gets True."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise _unavailable(exc, f"put {key}") from exc
        return True

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write the object only if it is still the version read (``If-Match: etag``), or,
        with ``etag`` None, only if there is none yet: False if another writer came first."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

        try:
            if etag is None:
                obstore.put(self._store, key, data, mode="create")
            else:
                obstore.put(self._store, key, data, mode={"e_tag": etag})
        except (AlreadyExistsError, PreconditionError, NotFoundError):
            return False
        except Exception as exc:
            raise _unavailable(exc, f"put {key}") from exc
        return True

    def delete(self, key: str) -> None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            obstore.delete(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except Exception as exc:
            raise _unavailable(exc, f"delete {key}") from exc

    def list(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, ETag) of every object under ``prefix`` (keys relative to the bucket prefix)."""
        import obstore

        try:
            for batch in obstore.list(self._store, prefix, chunk_size=1000):
                for meta in batch:
                    yield str(meta["path"]), str(meta.get("e_tag") or "")
        except Exception as exc:
            raise _unavailable(exc, f"list {prefix}") from exc

    def presigned_url(self, key: str, expires: timedelta) -> str:
        """A GET URL for the object that works without credentials until ``expires``."""
        import obstore

        try:
            return str(obstore.sign(self._store, "GET", key, expires))
        except Exception as exc:
            raise _unavailable(exc, f"sign {key}") from exc
