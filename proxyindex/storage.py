"""Private storage: the packages folder (files dropped in by hand or uploaded), as project pages.

The folder is polled: each :meth:`PrivateStorage.rescan` stats every *directory* and lists only
those whose mtime changed (adding, removing or renaming a file changes its folder's mtime), so a
tree of 100,000 files costs a few ms per poll. A file's sha256, size, Requires-Python and
METADATA are computed once and kept in a diskcache keyed by (path, size, mtime), so they survive
restarts. Every method here blocks; the async side calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import diskcache
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion

from proxyindex import fsutil
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.simple import project_versions

__all__ = ["FileInfo", "PrivateStorage", "project_of", "read_wheel_metadata"]

_MAX_METADATA = 10 << 20  # a METADATA larger than this is not a real one


def project_of(filename: str) -> NormalizedName | None:
    """The project a distribution filename belongs to, or None if it is not a distribution."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[0]
        if filename.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(filename)[0]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return None


def read_wheel_metadata(path: Path) -> bytes:
    """The exact bytes of the wheel's ``*.dist-info/METADATA`` (M-02); ValueError if unusable."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [
                n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(names) != 1:
                raise ValueError("a wheel must hold exactly one .dist-info/METADATA")
            info = zf.getinfo(names[0])
            if info.file_size > _MAX_METADATA:
                raise ValueError("METADATA is too large")
            return zf.read(info)
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ValueError(f"not a readable wheel: {exc}") from exc


def _read_sdist_pkg_info(path: Path) -> bytes | None:
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/PKG-INFO")]
                return zf.read(names[0]) if names else None
        with tarfile.open(path, "r:gz") as tf:
            for member in tf:
                if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                    fh = tf.extractfile(member)
                    return fh.read(_MAX_METADATA) if fh else None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError):
        return None
    return None


def metadata_fields(raw: bytes) -> dict[str, str]:
    message = email.parser.BytesHeaderParser().parsebytes(raw)
    return {key: str(value) for key, value in message.items()}


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What a page needs to know of one private file, computed once."""

    sha256: str
    size: int
    mtime: float
    requires_python: str | None
    metadata: bytes | None  # wheels only (M-03)

    @property
    def metadata_sha256(self) -> str | None:
        return hashlib.sha256(self.metadata).hexdigest() if self.metadata is not None else None


def compute_file_info(path: Path) -> FileInfo:
    st = path.stat()
    metadata: bytes | None = None
    if path.name.endswith(".whl"):
        try:
            metadata = read_wheel_metadata(path)
        except ValueError:
            metadata = None
        raw = metadata
    else:
        raw = _read_sdist_pkg_info(path)
    requires_python = metadata_fields(raw).get("Requires-Python") if raw else None
    return FileInfo(
        sha256=fsutil.file_sha256(path),
        size=st.st_size,
        mtime=st.st_mtime,
        requires_python=requires_python or None,
        metadata=metadata,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    path: Path
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _DirState:
    mtime_ns: int
    files: dict[str, _Entry]
    subdirs: list[Path]


def _isoformat(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PrivateStorage:
    """The packages folder as ``{project: {filename: file}}``, kept current by :meth:`rescan`."""

    def __init__(self, root: Path, meta_dir: Path) -> None:
        self.root = root
        self._dirs: dict[Path, _DirState] = {}
        self._projects: dict[NormalizedName, dict[str, _Entry]] = {}
        self._infos: dict[tuple[str, int, int], FileInfo] = {}
        self._store = diskcache.Cache(str(meta_dir))
        self._lock = threading.Lock()
        self.generation = 0

    def close(self) -> None:
        self._store.close()

    # --- scanning -------------------------------------------------------------------------

    def _scan_dir(self, directory: Path, old: _DirState | None, mtime_ns: int) -> _DirState:
        files: dict[str, _Entry] = {}
        subdirs: list[Path] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(Path(entry.path))
                elif entry.is_file() and project_of(entry.name) is not None:
                    st = entry.stat()
                    files[entry.name] = _Entry(Path(entry.path), st.st_size, st.st_mtime_ns)
        return _DirState(mtime_ns, files, sorted(subdirs))

    def rescan(self) -> bool:
        """Bring the in-memory view up to date; True if any distribution file changed."""
        with self._lock:
            seen: dict[Path, _DirState] = {}
            changed = False
            pending = [self.root]
            while pending:
                directory = pending.pop()
                try:
                    mtime_ns = directory.stat().st_mtime_ns
                except OSError:
                    continue
                old = self._dirs.get(directory)
                if old is None or old.mtime_ns != mtime_ns:
                    try:
                        state = self._scan_dir(directory, old, mtime_ns)
                    except OSError:
                        continue
                    changed = changed or old is None or old.files != state.files
                else:
                    state = old
                seen[directory] = state
                pending.extend(state.subdirs)
            changed = changed or seen.keys() != self._dirs.keys()
            self._dirs = seen
            if changed:
                self._rebuild()
            return changed

    def _rebuild(self) -> None:
        projects: dict[NormalizedName, dict[str, _Entry]] = {}
        for directory in sorted(self._dirs):
            for filename, entry in self._dirs[directory].files.items():
                project = project_of(filename)
                if project is not None:
                    projects.setdefault(project, {}).setdefault(filename, entry)
        self._projects = projects
        self.generation += 1

    # --- reading --------------------------------------------------------------------------

    def names(self) -> frozenset[NormalizedName]:
        return frozenset(self._projects)

    def has(self, name: NormalizedName) -> bool:
        return name in self._projects

    def _info(self, entry: _Entry) -> FileInfo:
        key = (str(entry.path.relative_to(self.root)), entry.size, entry.mtime_ns)
        info = self._infos.get(key)
        if info is None:
            stored: Any = self._store.get(key)
            if isinstance(stored, FileInfo):
                info = stored
            else:
                info = compute_file_info(entry.path)
                self._store.set(key, info)
            self._infos[key] = info
        return info

    def page(self, name: NormalizedName) -> ProjectPage | None:
        """The project's page, computing hashes of files not seen before (blocking)."""
        entries = self._projects.get(name)
        if entries is None:
            return None
        files = []
        for filename, entry in sorted(entries.items()):
            try:
                info = self._info(entry)
            except OSError:
                continue  # removed since the last scan
            meta_sha = info.metadata_sha256
            files.append(
                DistFile(
                    filename=filename,
                    url=str(entry.path),
                    origin=Origin.PRIVATE,
                    hashes={"sha256": info.sha256},
                    requires_python=info.requires_python,
                    size=info.size,
                    upload_time=_isoformat(info.mtime),
                    core_metadata={"sha256": meta_sha} if meta_sha else False,
                )
            )
        return ProjectPage(name=name, files=tuple(files), versions=project_versions(files))

    def locate(self, name: NormalizedName, filename: str) -> Path | None:
        entry = self._projects.get(name, {}).get(filename)
        return entry.path if entry is not None else None

    def metadata(self, name: NormalizedName, filename: str) -> bytes | None:
        entry = self._projects.get(name, {}).get(filename)
        if entry is None:
            return None
        return self._info(entry).metadata

    def warm(self) -> int:
        """Compute the info of every file not yet known (start-up, in a thread); returns count."""
        count = 0
        for entries in list(self._projects.values()):
            for entry in entries.values():
                try:
                    self._info(entry)
                except OSError:
                    continue
                count += 1
        return count

    # --- writing --------------------------------------------------------------------------

    def project_dir(self, name: NormalizedName) -> Path:
        return self.root / name

    def existing(self, filename: str) -> Path | None:
        """Where a filename already is, in any folder (two folders may not hold the same name)."""
        project = project_of(filename)
        if project is None:
            return None
        entry = self._projects.get(project, {}).get(filename)
        if entry is not None and entry.path.exists():
            return entry.path
        candidate = self.project_dir(project) / filename
        return candidate if candidate.exists() else None

    def remove(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        self.rescan()
