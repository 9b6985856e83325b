"""What the rest of the server asks of private storage, whatever holds the files.

:class:`~proxyindex.private.storage.PrivateStorage` (a folder) and
:class:`~proxyindex.private.s3storage.S3PrivateStorage` (a bucket shared by replicas) both
have these methods; handlers, the index and the publish rules are typed against this
protocol, so the backend is chosen in one place (``backends``). Every method but the
cheap reads blocks; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from packaging.utils import NormalizedName

from proxyindex.distname import DistFilename
from proxyindex.models import ProjectPage
from proxyindex.private.storage import Conflict, Same, Stored

__all__ = ["NameRecord", "PrivateStore"]


class NameRecord(Protocol):
    """The names that ever had a private file (tombstones) and their removed files."""

    def __contains__(self, name: object) -> bool: ...

    def removed_files(self, name: NormalizedName) -> Mapping[str, str | None]: ...


class PrivateStore(Protocol):
    generation: int

    @property
    def root(self) -> Path: ...

    @property
    def private_names(self) -> NameRecord: ...

    @property
    def temp_dir(self) -> Path: ...

    def stale(self) -> bool: ...

    def rescan(self) -> bool: ...

    def warm(self) -> int: ...

    def stop_warming(self) -> None: ...

    def close(self) -> None: ...

    def names(self) -> frozenset[NormalizedName]: ...

    def file_count(self) -> int: ...

    def has(self, name: NormalizedName) -> bool: ...

    def was_private(self, name: NormalizedName) -> bool: ...

    def page(self, name: NormalizedName) -> ProjectPage | None: ...

    def locate(self, name: NormalizedName, filename: str) -> Path | None: ...

    def metadata(self, name: NormalizedName, filename: str) -> bytes | None: ...

    def find_release(self, dist: DistFilename) -> Path | None: ...

    def add(
        self, temp: Path, dist: DistFilename, sha256: str, *, overwrite: bool
    ) -> Stored | Same | Conflict: ...

    def remove_version_files(self, name: NormalizedName, version: str) -> list[tuple[str, str]]: ...

    def yank(self, name: NormalizedName, version: str, reason: str) -> list[tuple[str, str]]: ...

    def unyank(self, name: NormalizedName, version: str) -> list[tuple[str, str]]: ...
