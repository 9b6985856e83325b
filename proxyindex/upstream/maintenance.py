"""Cache maintenance for the admin API: purge projects, verify every blob (blocking functions).

A purge removes a project's cached page and the cached files (and their ``.metadata``) that
page lists: the next request fetches them again from the upstream. A verify re-hashes every
blob against its name (blobs are content-addressed: the name *is* the sha256) and moves a
mismatch to ``<cache>/quarantine/`` rather than deleting it, so an operator can look at what
went wrong (a failing disk, a hand edit) while the index can never serve it again.

Everything here blocks (file walks, hashing, diskcache): callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.upstream.cache import BlobStore, PageEntry, is_sha256

__all__ = [
    "Purged",
    "Verified",
    "batches",
    "list_blobs",
    "purge_project",
    "verify_blob",
    "verify_blobs",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Purged:
    project: str
    page: bool  # a cached page was removed
    files: int  # cached files (and .metadata files) removed
    bytes: int


def _unlink_blob(blobs: BlobStore, sha256: str) -> int:
    """Remove one blob; its size, 0 if it was not there."""
    path = blobs.path(sha256)
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def purge_project(blobs: BlobStore, store: Any, name: NormalizedName) -> Purged:
    """Remove ``name``'s cached page and the cached files it lists (never private files:
    they live in the packages folder)."""
    try:
        entry = store.get(("page", name))
    except Exception:  # an entry pickled by an older version: remove it all the same
        entry = None
    shas: set[str] = set()
    if isinstance(entry, PageEntry) and entry.page is not None:
        for dist in entry.page.files:
            url = dist.location if isinstance(dist.location, str) else None
            sha = dist.sha256
            if sha is None and url is not None:
                found = store.get(("url", url))
                sha = found if isinstance(found, str) else None
                store.delete(("url", url))
            if sha is None or not is_sha256(sha):
                continue
            shas.add(sha)
            if isinstance(dist.core_metadata, dict):
                shas.add(dist.core_metadata.get("sha256", ""))
            for key in (("metadata", sha), ("metadata", url)):
                found = store.get(key)
                if isinstance(found, str):
                    shas.add(found)
                    store.delete(key)
    page = bool(store.delete(("page", name)))
    files = size = 0
    for sha in sorted(s for s in shas if is_sha256(s)):
        removed = _unlink_blob(blobs, sha)
        if removed:
            files += 1
            size += removed
    log.info("purged %s from the cache: page %s, %d files, %d bytes", name, page, files, size)
    return Purged(name, page, files, size)


def list_blobs(blobs: BlobStore) -> list[Path]:
    """Every blob's path (the temp folder left out)."""
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(blobs.root):
        if Path(dirpath) == blobs.temp_dir:
            continue
        found.extend(Path(dirpath) / name for name in files if is_sha256(name))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Verified:
    """One blob checked: ``ok``, or where the mismatch was moved and what it hashed to."""

    sha256: str
    size: int
    ok: bool
    actual: str | None = None
    quarantined: str | None = None


def verify_blob(path: Path, quarantine: Path) -> Verified | None:
    """Re-hash one blob; a mismatch is moved to ``quarantine`` (None: it went away meanwhile,
    evicted or purged)."""
    try:
        size = path.stat().st_size
        actual = fsutil.file_sha256(path)
    except FileNotFoundError:
        return None
    if actual == path.name:
        return Verified(path.name, size, True)
    quarantine.mkdir(parents=True, exist_ok=True)
    dest = quarantine / path.name
    with contextlib.suppress(FileNotFoundError):
        path.replace(dest)
    log.error("cached file %s hashes to %s: moved to %s", path, actual, dest)
    return Verified(path.name, size, False, actual, str(dest))


def verify_blobs(paths: list[Path], quarantine: Path) -> list[Verified | None]:
    return [verify_blob(path, quarantine) for path in paths]


def batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]
