"""Yanked private releases (PEP 592): one small JSON file per project.

A yank hides a release from resolvers (pip and uv skip it unless the requirement pins it with
``==``) without deleting anything, so lock files that name it keep installing. The record is
``<packages_dir>/.proxyindex/yanks/<project>.json``, ``{"<version>": "<reason>"}`` with
versions in canonical form: in the packages folder because it belongs with the private files
(a wiped cache must not unyank anything), in a dot-folder the scanner skips, one file per project
so a yank rewrites a few bytes, not every project's state. Each write is a temp file, fsync and
rename, so a crash leaves the old or the new file, never half of one.

Every worker process re-reads the folder when its storage catches up (the changeboard tells
it): a file whose inode, size or mtime changed is read again. Every method blocks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_version

from proxyindex import fsutil
from proxyindex.models import is_valid_name, normalize

__all__ = ["YANKS_DIR", "Yanks"]

log = logging.getLogger(__name__)

YANKS_DIR = Path(".proxyindex") / "yanks"  # relative to the packages folder
_SUFFIX = ".json"


def _read(path: Path) -> dict[str, str]:
    """The file's ``{version: reason}``; an unreadable or malformed file is logged and empty
    (nothing yanked is safer to serve than nothing at all)."""
    try:
        data: Any = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.error("ignoring the yank record %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        log.error("ignoring the yank record %s: expected {version: reason}", path)
        return {}
    return {canonicalize_version(k): v for k, v in data.items()}


class Yanks:
    """The yanked releases of every private project, kept current by :meth:`refresh`."""

    def __init__(self, packages_dir: Path) -> None:
        self.folder = packages_dir / YANKS_DIR
        self._yanked: dict[NormalizedName, dict[str, str]] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def reason(self, name: NormalizedName, version: str) -> str | None:
        """The reason ``version`` of ``name`` is yanked ("" for none given), None if it is not."""
        return self._yanked.get(name, {}).get(canonicalize_version(version))

    def of(self, name: NormalizedName) -> Mapping[str, str]:
        return dict(self._yanked.get(name, {}))

    def refresh(self) -> bool:
        """Read the files that changed since the last call; True if anything did."""
        with self._lock:
            try:
                entries = list(os.scandir(self.folder))
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            current: dict[str, tuple[int, int, int]] = {}
            for entry in entries:
                stem = entry.name.removesuffix(_SUFFIX)
                if stem == entry.name or entry.name.startswith(".") or not is_valid_name(stem):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                current[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
            if current == self._seen:
                return False
            yanked = dict(self._yanked)
            for filename in self._seen.keys() - current.keys():
                yanked.pop(normalize(filename.removesuffix(_SUFFIX)), None)
            for filename, stamp in current.items():
                if self._seen.get(filename) != stamp:
                    versions = _read(self.folder / filename)
                    name = normalize(filename.removesuffix(_SUFFIX))
                    if versions:
                        yanked[name] = versions
                    else:
                        yanked.pop(name, None)
            self._yanked = yanked  # swapped in whole: readers never see half of it
            self._seen = current
            return True

    def set(self, name: NormalizedName, version: str, reason: str | None) -> bool:
        """Yank ``version`` (``reason`` a string) or unyank it (None), written atomically;
        False if that was already its state. The caller holds the project's lock."""
        self.refresh()
        versions = dict(self._yanked.get(name, {}))
        key = canonicalize_version(version)
        if versions.get(key) == reason:
            return False
        if reason is None:
            versions.pop(key, None)
        else:
            versions[key] = reason
        path = self.folder / f"{name}{_SUFFIX}"
        if versions:
            fh, temp = fsutil.open_temp(self.folder)
            with fh:
                fh.write(json.dumps(versions, indent=1, sort_keys=True).encode() + b"\n")
            fsutil.commit_replace(temp, path)
        else:
            path.unlink(missing_ok=True)
        self.refresh()
        return True
