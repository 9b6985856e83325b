"""Names that were private stay private: removing the last file must not hand the name back.

Without this, deleting the last private version of ``corp-lib`` (an upload removed with
``remove_pkg``, or a dropped-in file deleted by hand) made the next ``pip install corp-lib``
fetch whatever the upstream has under that name: dependency confusion by deletion. So every
name that ever had a private file is recorded, and a recorded name without files (a
*tombstone*) is still private until an admin releases it (``proxyindex private release NAME``).
The filename and sha256 of each removed file are recorded too, so a removed filename can only
come back with the same bytes (PyPI never lets a filename be reused).

The record is an append-only JSON-lines log, ``<packages_dir>/.proxyindex/private-names.jsonl``:
in the packages folder because it belongs with the private packages (a wiped cache folder
must not release every name), in a dot-folder because the scanner skips those. Appends hold
an ``flock`` and are one ``write`` each, so several worker processes and the CLI can add to it
at once; every process re-reads what others appended on its next poll (once a second). Lines::

    {"seen": "corp-lib"}
    {"removed": "corp_lib-1.0-py3-none-any.whl", "name": "corp-lib", "sha256": "ab12..."}
    {"released": "corp-lib"}

Every method blocks (file I/O); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

from proxyindex.distname import project_of
from proxyindex.models import is_valid_name, normalize

__all__ = ["LOG_PATH", "PrivateNames", "scan_names"]

log = logging.getLogger(__name__)

LOG_PATH = Path(".proxyindex") / "private-names.jsonl"  # relative to the packages folder


class PrivateNames:
    """The durable set of names that ever had a private file, with their removed files."""

    def __init__(self, packages_dir: Path) -> None:
        self.path = packages_dir / LOG_PATH
        self._names: dict[NormalizedName, dict[str, str | None]] = {}
        self._inode: int | None = None
        self._offset = 0
        self._lock = threading.Lock()
        self._write_failed = False

    # --- reading --------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def names(self) -> frozenset[NormalizedName]:
        return frozenset(self._names)

    def removed_files(self, name: NormalizedName) -> Mapping[str, str | None]:
        """Filename -> sha256 (None if it was never hashed) of the name's removed files."""
        return dict(self._names.get(name, {}))

    def refresh(self) -> bool:
        """Read what was appended since the last call (by any process); True if it changed.

        A replaced or truncated log is read again from the start. A missing one (the packages
        folder is an unmounted volume, or someone deleted the log) forgets nothing: only a
        ``released`` line hands a name back.
        """
        with self._lock:
            try:
                fh = self.path.open("rb")
            except FileNotFoundError:
                self._inode, self._offset = None, 0
                return False
            with fh:
                st = os.fstat(fh.fileno())
                if st.st_ino != self._inode or st.st_size < self._offset:
                    self._inode, self._offset = st.st_ino, 0
                if st.st_size == self._offset:
                    return False
                fh.seek(self._offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            for line in data[:end].splitlines():
                self._apply_line(line)
            self._offset += end
            return end > 0

    def _apply_line(self, line: bytes) -> None:
        try:
            event: Any = json.loads(line)
        except ValueError:
            return  # a torn line from a crash: skip it, like a half-written file
        if isinstance(event, dict):
            self._apply(event)

    def _apply(self, event: Mapping[str, Any]) -> None:
        if isinstance(name := event.get("seen"), str) and is_valid_name(name):
            self._names.setdefault(normalize(name), {})
        elif isinstance(name := event.get("released"), str) and is_valid_name(name):
            self._names.pop(normalize(name), None)
        elif isinstance(filename := event.get("removed"), str):
            name, sha256 = event.get("name"), event.get("sha256")
            if isinstance(name, str) and is_valid_name(name):
                # A new dict, not an update: the event loop may be copying the old one.
                project = normalize(name)
                files = {**self._names.get(project, {})}
                files[filename] = sha256 if isinstance(sha256, str) else None
                self._names[project] = files

    # --- writing --------------------------------------------------------------------------

    def record_seen(self, names: Iterable[NormalizedName]) -> None:
        """Record names that have private files now (only those not recorded yet)."""
        new = sorted(set(names) - self._names.keys())
        if new:
            self._append([{"seen": name} for name in new])

    def record_removed(self, name: NormalizedName, files: Mapping[str, str | None]) -> None:
        """Record removed files of a private name, with their sha256 where known."""
        if files:
            self._append(
                [{"removed": f, "name": name, "sha256": sha} for f, sha in sorted(files.items())]
            )

    def release(self, name: NormalizedName) -> bool:
        """Forget a name (the admin's explicit release); False if it was not recorded."""
        self.refresh()
        if name not in self._names:
            return False
        self._append([{"released": name}])
        return True

    def _append(self, events: list[dict[str, Any]]) -> None:
        """Append events durably, then apply them here (other processes read them later).

        A read-only packages folder (files only dropped in by hand) cannot hold the log: the
        names then stay private for the life of this process only, and that is logged once.
        """
        data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
        try:
            self.path.parent.mkdir(exist_ok=True)  # never the packages folder: a lost mount
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the lock
        except OSError as exc:
            if not self._write_failed:
                log.error(
                    "cannot record private names in %s (%s); a name whose files are "
                    "removed stays private only until a restart",
                    self.path,
                    exc,
                )
                self._write_failed = True
            with self._lock:
                for event in events:
                    self._apply(event)
            return
        self.refresh()  # reads our own lines (and any appended before them) in order


def scan_names(packages_dir: Path) -> dict[NormalizedName, int]:
    """Project name -> number of distribution files, by walking the folder (for the CLI)."""

    counts: dict[NormalizedName, int] = {}
    for _folder, dirs, files in os.walk(packages_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for filename in files:
            if not filename.startswith(".") and (project := project_of(filename)) is not None:
                counts[project] = counts.get(project, 0) + 1
    return counts
