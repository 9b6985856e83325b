"""Private storage: the packages folder (files dropped in by hand or uploaded), as project pages.

The folder is polled: each :meth:`PrivateStorage.rescan` stats every *directory* and lists only
those whose mtime changed (adding, removing or renaming a file changes its folder's mtime), so a
tree of 100,000 files costs a few ms per poll. A file's sha256, size, Requires-Python and
METADATA are computed once and kept in a diskcache keyed by (path, size, mtime), so they survive
restarts. Every method here blocks; the async side calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email.parser
import fcntl
import hashlib
import logging
import math
import os
import tarfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.utils import (
    NormalizedName,
    canonicalize_version,
)

from proxyindex import fsutil
from proxyindex.diskstore import open_cache
from proxyindex.distname import DistFilename, release_of
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.private.changeboard import ChangeBoard
from proxyindex.private.tombstones import PrivateNames
from proxyindex.private.watch import DirWatcher
from proxyindex.private.yanks import Yanks
from proxyindex.simple import project_versions

__all__ = [
    "Conflict",
    "FileInfo",
    "PrivateStorage",
    "Same",
    "Stored",
    "read_wheel_metadata",
]

log = logging.getLogger(__name__)

_MAX_METADATA = 10 << 20  # a METADATA larger than this is not a real one


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
    """What a page needs to know of one private file, computed once (METADATA kept apart)."""

    sha256: str
    size: int
    mtime: float
    requires_python: str | None
    metadata_sha256: str | None  # wheels only (M-03)


def compute_file_info(path: Path) -> tuple[FileInfo, bytes | None]:
    """The file's info and, for a wheel, its METADATA bytes (blocking: hashes the file)."""
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
    info = FileInfo(
        sha256=fsutil.file_sha256(path),
        size=st.st_size,
        mtime=st.st_mtime,
        requires_python=requires_python or None,
        metadata_sha256=hashlib.sha256(metadata).hexdigest() if metadata is not None else None,
    )
    return info, metadata


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str  # str, not Path: 100,000 of these are kept in memory
    size: int
    mtime_ns: int
    inode: int
    release: str  # DistFilename.release_key: parsed once, when the file is first listed

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)


@dataclass(slots=True)
class _DirState:
    mtime_ns: int
    files: dict[str, tuple[NormalizedName, _Entry]]
    by_project: dict[NormalizedName, dict[str, _Entry]]
    subdirs: list[str]


def _release_version(filename: str) -> str | None:
    """The canonical version of a distribution filename (what yanks are keyed by)."""
    dist = release_of(filename)
    return canonicalize_version(dist.version) if dist is not None else None


def _hidden(relative: str) -> bool:
    """A path under a dot folder (or a dot file): never listed (temp files, our own data)."""
    return any(part.startswith(".") for part in Path(relative).parts)


def _isoformat(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _one_file_per_release(candidates: Iterable[tuple[str, _Entry]]) -> dict[str, _Entry]:
    """Keep one file per release (``dupdemo-1.0-…`` and ``DupDemo-1.0.0-…`` dropped side by
    side, or one filename in two folders): the oldest file wins, then the first path, so the
    choice survives restarts and a file added later can never replace what a page already
    listed (the rule uploads follow: first come, first served). Each file left out is logged.
    """
    winners: dict[str, tuple[str, _Entry]] = {}
    losers: list[_Entry] = []
    for filename, entry in candidates:
        held = winners.get(entry.release)
        if held is None or (entry.mtime_ns, entry.path) < (held[1].mtime_ns, held[1].path):
            winners[entry.release] = (filename, entry)
            if held is not None:
                losers.append(held[1])
        else:
            losers.append(entry)
    for loser in losers:
        log.warning(
            "ignoring %s: the same release file as %s (the oldest file of a release is listed)",
            loser.path,
            winners[loser.release][1].path,
        )
    return dict(winners.values())


@dataclass(frozen=True, slots=True)
class Stored:
    """:meth:`PrivateStorage.add` stored the file (over the release's old file if
    overwriting was allowed)."""

    filename: str
    size: int
    replaced: str | None = None  # overwriting: the file that was there
    replaced_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Same:
    """The release is already stored with the same bytes (as ``existing``): nothing written."""

    existing: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """The release is already stored, as ``existing``, with other bytes (``sha256``)."""

    existing: str
    sha256: str


# With inotify the poll lists only the folders the kernel named; the whole tree is still
# walked this often, for what inotify cannot see (a network file system written elsewhere).
_FULL_SCAN_EVERY = 60.0  # seconds
_INFO_MEMORY = 20_000  # infos kept in memory; the rest are a diskcache read away (~20 us)


class PrivateStorage:
    """The packages folder as ``{project: {filename: file}}``, kept current by :meth:`rescan`."""

    def __init__(self, root: Path, meta_dir: Path) -> None:
        self.root = root
        self._dirs: dict[str, _DirState] = {}
        self._unreadable: set[str] = set()
        self._project_dirs: dict[NormalizedName, set[str]] = {}
        self._projects: dict[NormalizedName, dict[str, _Entry]] = {}
        self._infos: OrderedDict[tuple[str, int, int], FileInfo] = OrderedDict()
        self._store = open_cache(meta_dir)
        self._lock_dir = meta_dir / "release-locks"
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, int, int], concurrent.futures.Future[FileInfo]] = {}
        self._jobs_lock = threading.Lock()
        self._unwarmed: set[NormalizedName] = set()  # changed since: files maybe unhashed
        self._stop = threading.Event()
        self.generation = 0
        # Per project: bumped when its files change, so a change to one project leaves the
        # pages of every other alone (``_epoch``: when the private names log changed, which
        # may change any name's owner).
        self._versions: dict[NormalizedName, int] = {}
        self._epoch = 0
        # Every name that ever had a private file, kept in the packages folder (tombstones).
        self.private_names = PrivateNames(root)
        # Yanked releases (PEP 592), in the packages folder too.
        self.yanks = Yanks(root)
        # What the other worker processes of this host changed (see changeboard).
        self._board = ChangeBoard(meta_dir / "changes")
        self._board_seen = self._board.mark()
        self._watcher: DirWatcher | None = None
        self._watching = False  # every folder of the view is watched
        self._new_dirs: list[str] = []  # folders a refresh found, to watch
        self._walked_at = -math.inf

    def version(self, name: NormalizedName) -> tuple[int, int]:
        """Changes when ``name``'s files (or any name's ownership) change; a page built at
        one version is current while it holds (a dict lookup: every page request asks)."""
        return (self._epoch, self._versions.get(name, 0))

    def stale(self) -> bool:
        """True when another process changed the packages folder since this view caught up
        (a shared-memory read: cheap enough for every request that reads private data)."""
        return self._board.read() != self._board_seen.count

    def stop_warming(self) -> None:
        """Make a running :meth:`warm` return soon (shutdown must not wait for 100k hashes)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._store.close()
        self._board.close()
        if self._watcher is not None:
            self._watcher.close()

    # --- scanning -------------------------------------------------------------------------

    @staticmethod
    def _scan_dir(directory: str, old: _DirState | None, mtime_ns: int) -> _DirState:
        """List one folder. A name seen before with the same inode is reused without a stat
        or a filename parse (a replaced file gets a new inode): re-listing a flat folder of
        100,000 files after one upload stays cheap."""
        previous = old.files if old is not None else {}
        files: dict[str, tuple[NormalizedName, _Entry]] = {}
        by_project: dict[NormalizedName, dict[str, _Entry]] = {}
        subdirs: list[str] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                known = previous.get(entry.name)
                if known is not None and known[1].inode == entry.inode():
                    files[entry.name] = known
                    by_project.setdefault(known[0], {})[entry.name] = known[1]
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
                dist = release_of(entry.name)
                if not entry.is_file() or dist is None:
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # removed since the listing: not a folder failure
                    continue
                found = _Entry(
                    entry.path, st.st_size, st.st_mtime_ns, entry.inode(), dist.release_key
                )
                files[entry.name] = (dist.name, found)
                by_project.setdefault(dist.name, {})[entry.name] = found
        return _DirState(mtime_ns, files, by_project, sorted(subdirs))

    def rescan(self) -> bool:
        """Bring the in-memory view up to date; True if any distribution file changed.

        Only folders whose mtime changed are listed again, and only the projects with files
        in them are rebuilt, so a poll of an unchanged 100,000-file tree costs one stat per
        folder, and a dropped-in file costs a listing of its folder.
        """
        with self._lock:
            board = self._board.mark()  # before looking: a later change is caught next time
            changed = self._rescan()
            self._board_seen = board
            if changed:
                self._tell_others(changed)
            self._walked_at = time.monotonic()
            return bool(changed)

    def refresh(self, directories: Iterable[str]) -> bool:
        """List again only ``directories`` (and new folders found in them), whatever their
        mtime says; True if any distribution file changed. What an upload, a removal, an
        inotify event or another worker's log entry costs: O(changes), not O(tree)."""
        with self._lock:
            changed = self._refresh(set(directories))
            if changed:
                self._tell_others(changed)
            return bool(changed)

    def _tell_others(self, folders: list[str]) -> None:
        """Log the folders this process changed; if nobody else changed anything since
        this view caught up, it is current after its own change too (no listing again)."""
        before, after = self._board.bump(folders)
        if before == self._board_seen:
            self._board_seen = after

    def catch_up(self) -> bool:
        """Take in what other processes changed (see ``changeboard``): the folders they
        logged, or the whole tree when their log started over."""
        with self._lock:
            now = self._board.mark()
            folders = self._board.since(self._board_seen, now)
            if folders is None:
                changed = self._rescan()
                self._walked_at = time.monotonic()
                self._board_seen = now
                if changed:
                    self._tell_others(changed)
            else:
                # Not logged again: the process that changed these folders logged them.
                self._refresh_names()
                changed = self._refresh(folders)
                self._board_seen = now
            return bool(changed)

    def poll(self) -> bool:
        """The idle poll (once a second): with inotify, list the folders the kernel says
        changed, and walk the whole tree every ``_FULL_SCAN_EVERY`` seconds; without it,
        walk the tree (one stat per folder) every time."""
        if self._watcher is None and not self._watching:
            self._watcher = DirWatcher.create(str(self.root))
            self._watching = True  # tried once; _watch_all says whether it holds
            self._walked_at = -math.inf
        watcher = self._watcher
        due = time.monotonic() - self._walked_at > _FULL_SCAN_EVERY
        if watcher is None or due:
            if watcher is not None:
                watcher.changed()  # the walk sees everything they name
            changed = self.rescan()
            self._watch_all()
            return changed
        folders = watcher.changed()
        if folders is None:  # the kernel dropped events
            changed = self.rescan()
            self._watch_all()
            return changed
        for folder in folders:
            self._watch(folder)
        changed = self.refresh(folders) if folders else False
        while self._new_dirs:  # found inside new folders: watched from now on
            self._watch(self._new_dirs.pop())
        return changed

    def _watch(self, folder: str) -> None:
        if self._watcher is not None and not self._watcher.watch(folder):
            self._watcher.close()
            self._watcher = None  # the walk every second takes over

    def _watch_all(self) -> None:
        """Watch every folder of the view (after a walk; a set lookup for each known one)."""
        self._new_dirs.clear()
        for folder in list(self._dirs):
            if self._watcher is None:
                return
            self._watch(folder)

    def _refresh(self, directories: set[str]) -> list[str]:
        # Caller holds self._lock.
        root = str(self.root)
        dirs = dict(self._dirs)
        changed: list[tuple[str, _DirState | None, _DirState | None]] = []
        pending = sorted(
            d
            for d in directories
            if d == root or (d.startswith(root + os.sep) and not _hidden(d[len(root) + 1 :]))
        )
        while pending:
            directory = pending.pop()
            old = dirs.get(directory)
            try:
                mtime_ns = os.stat(directory).st_mtime_ns  # noqa: PTH116
                state = self._scan_dir(directory, old, mtime_ns)
            except FileNotFoundError:
                if directory == root:
                    continue  # a missing root is a failing mount: keep the view (DC-04)
                below = directory + os.sep
                for gone in [d for d in dirs if d == directory or d.startswith(below)]:
                    changed.append((gone, dirs.pop(gone), None))
                continue
            except OSError:
                continue  # unreadable: keep what we knew (the walk logs it)
            if old is not None and state.files == old.files and state.subdirs == old.subdirs:
                dirs[directory] = state
                continue
            changed.append((directory, old, state))
            dirs[directory] = state
            if old is None:
                self._new_dirs.append(directory)
            pending.extend(d for d in state.subdirs if d not in dirs)
            parent = os.path.dirname(directory)  # noqa: PTH120 - str paths
            held = dirs.get(parent)
            if old is None and directory != root:
                if held is None:
                    pending.append(parent)
                elif directory not in held.subdirs:
                    # Keep its mtime: the next walk lists it again, which is harmless.
                    subdirs = sorted([*held.subdirs, directory])
                    dirs[parent] = _DirState(held.mtime_ns, held.files, held.by_project, subdirs)
        self._dirs = dirs
        return [d for d, _old, _new in changed] if self._update(changed) else []

    def _rescan(self) -> list[str]:
        # Caller holds self._lock.
        self._refresh_names()
        root = str(self.root)
        seen: dict[str, _DirState] = {}
        changed: list[tuple[str, _DirState | None, _DirState | None]] = []
        unreadable: set[str] = set()
        pending = [root]
        while pending:
            directory = pending.pop()
            old = self._dirs.get(directory)
            try:
                state = self._fresh_state(directory, old)
            except FileNotFoundError:
                if directory == root:
                    unreadable.add(directory)  # a missing root is a failing mount
                    break
                continue  # removed: its projects go with it
            except OSError:
                # Unreadable (permissions, a failing disk or mount): keep what we knew.
                # Forgetting would make its private names fall through to the upstream
                # (dependency confusion, DC-04).
                unreadable.add(directory)
                if old is None:
                    continue
                state = old
            if state is not old:
                changed.append((directory, old, state))
            seen[directory] = state
            pending.extend(state.subdirs)
        self._report_unreadable(unreadable)
        if root in unreadable:
            return []  # nothing can be told about any file: keep the whole view
        changed.extend((d, self._dirs[d], None) for d in self._dirs.keys() - seen.keys())
        self._dirs = seen
        return [d for d, _old, _new in changed] if self._update(changed) else []

    def _refresh_names(self) -> None:
        """What other processes changed besides files: names recorded or released, and
        yanks. Both may change any page (ownership, yanked marks): a new epoch."""
        if self.private_names.refresh():  # another process recorded or released names
            self.private_names.record_seen(self._projects)
            self.generation += 1
            self._epoch += 1
        if self.yanks.refresh():  # pages show the new yanked marks
            self.generation += 1
            self._epoch += 1

    def _fresh_state(self, directory: str, old: _DirState | None) -> _DirState:
        mtime_ns = os.stat(directory).st_mtime_ns  # noqa: PTH116 - str paths: 100k folders
        if old is not None and old.mtime_ns == mtime_ns:
            return old
        return self._scan_dir(directory, old, mtime_ns)

    def _report_unreadable(self, unreadable: set[str]) -> None:
        """Log a folder when it becomes unreadable and when it is readable again, not on
        every poll."""
        for directory in sorted(unreadable - self._unreadable):
            log.error("cannot read %s; serving what was last seen there", directory)
        for directory in sorted(self._unreadable - unreadable):
            log.info("%s is readable again", directory)
        self._unreadable = unreadable

    def _update(self, changed: list[tuple[str, _DirState | None, _DirState | None]]) -> bool:
        """Rebuild the projects with files in changed folders; new dicts are swapped in, so
        readers in other threads never see a half-built state."""
        project_dirs = dict(self._project_dirs)
        touched: set[NormalizedName] = set()
        for directory, old, new in changed:
            before = old.by_project if old is not None else {}
            after = new.by_project if new is not None else {}
            for project in before.keys() | after.keys():
                if before.get(project) == after.get(project):
                    continue
                touched.add(project)
                holders = set(project_dirs.get(project, ()))
                if project in after:
                    holders.add(directory)
                else:
                    holders.discard(directory)
                project_dirs[project] = holders
        if not touched:
            return False
        projects = dict(self._projects)
        for project in touched:
            files = _one_file_per_release(
                (filename, entry)
                for directory in project_dirs.get(project, ())
                for filename, entry in self._dirs[directory].by_project[project].items()
            )
            if files:
                projects[project] = files
            else:
                projects.pop(project, None)
                project_dirs.pop(project, None)
        removed: dict[NormalizedName, dict[str, _Entry]] = {}
        for project in touched:
            now = projects.get(project, {})
            gone = {f: e for f, e in self._projects.get(project, {}).items() if f not in now}
            if gone:
                removed[project] = gone
        self._project_dirs = project_dirs
        self._projects = projects
        for project in touched:
            self._versions[project] = self._versions.get(project, 0) + 1
        self._unwarmed.update(p for p in touched if p in projects)
        self.generation += 1
        self._record(touched, removed)
        return True

    def _record(
        self, touched: set[NormalizedName], removed: dict[NormalizedName, dict[str, _Entry]]
    ) -> None:
        """Keep the names and removed files in the durable log (``tombstones``), whether
        the files went through ``remove_pkg`` or were deleted by hand."""
        self.private_names.record_seen(p for p in touched if p in self._projects)
        for project, entries in removed.items():
            gone = {f: self._known_sha256(e) for f, e in entries.items()}
            if gone:
                self.private_names.record_removed(project, gone)

    def _known_sha256(self, entry: _Entry) -> str | None:
        """The sha256 of a file that is gone, if it was hashed while it was there."""
        key = (str(Path(entry.path).relative_to(self.root)), entry.size, entry.mtime_ns)
        info: Any = self._infos.get(key) or self._store.get(("info", key))
        return info.sha256 if isinstance(info, FileInfo) else None

    # --- reading --------------------------------------------------------------------------

    def names(self) -> frozenset[NormalizedName]:
        return frozenset(self._projects)

    def file_count(self) -> int:
        """How many private files there are (for /metrics)."""
        return sum(len(files) for files in self._projects.values())

    def has(self, name: NormalizedName) -> bool:
        return name in self._projects

    def was_private(self, name: NormalizedName) -> bool:
        """The name had private files once (all may be removed now: a tombstone)."""
        return name in self.private_names

    def _info(self, entry: _Entry) -> FileInfo:
        key = (str(Path(entry.path).relative_to(self.root)), entry.size, entry.mtime_ns)
        info = self._infos.get(key)
        if info is not None:
            return info
        # One hashing job per file: a page request and the warm-up (or two requests) that
        # want the same file wait for the one doing it, instead of hashing it twice.
        with self._jobs_lock:
            job = self._jobs.get(key)
            mine = job is None
            if job is None:
                job = self._jobs[key] = concurrent.futures.Future()
        if not mine:
            return job.result()
        try:
            info = self._load_info(key, entry)
            job.set_result(info)
        except BaseException as exc:
            job.set_exception(exc)
            raise
        finally:
            with self._jobs_lock:
                self._jobs.pop(key, None)
        return info

    def _load_info(self, key: tuple[str, int, int], entry: _Entry) -> FileInfo:
        stored: Any = self._store.get(("info", key))
        if isinstance(stored, FileInfo):
            info = stored
        else:
            info, metadata = compute_file_info(Path(entry.path))
            if metadata is not None:
                self._store.set(("metadata", info.sha256), metadata)
            self._store.set(("info", key), info)
        self._infos[key] = info
        if len(self._infos) > _INFO_MEMORY:
            with contextlib.suppress(KeyError):
                self._infos.popitem(last=False)
        return info

    def unhashed(self, name: NormalizedName) -> int:
        """How many of the project's files have no known hash in memory yet (a hint for a
        waiting client; the diskcache may know some of them)."""
        entries = self._projects.get(name, {})
        return sum(
            1
            for e in entries.values()
            if (str(Path(e.path).relative_to(self.root)), e.size, e.mtime_ns) not in self._infos
        )

    def page(self, name: NormalizedName) -> ProjectPage | None:
        """The project's page, computing hashes of files not seen before (blocking)."""
        entries = self._projects.get(name)
        if entries is None:
            return None
        files = []
        yanked = self.yanks.of(name)
        for filename, entry in sorted(entries.items()):
            try:
                info = self._info(entry)
            except OSError:
                continue  # removed since the last scan
            version = _release_version(filename) if yanked else None
            reason = yanked.get(version) if version is not None else None
            files.append(
                DistFile(
                    filename=filename,
                    location=Path(entry.path),
                    origin=Origin.PRIVATE,
                    hashes={"sha256": info.sha256},
                    requires_python=info.requires_python,
                    size=info.size,
                    upload_time=_isoformat(info.mtime),
                    yanked=False if reason is None else (reason or True),
                    core_metadata=(
                        {"sha256": info.metadata_sha256} if info.metadata_sha256 else False
                    ),
                )
            )
        return ProjectPage(name=name, files=tuple(files), versions=project_versions(files))

    def locate(self, name: NormalizedName, filename: str) -> Path | None:
        entry = self._projects.get(name, {}).get(filename)
        return Path(entry.path) if entry is not None else None

    def metadata(self, name: NormalizedName, filename: str) -> bytes | None:
        """The wheel's METADATA bytes (PEP 658), as stored when the file was first hashed."""
        entry = self._projects.get(name, {}).get(filename)
        if entry is None:
            return None
        info = self._info(entry)
        if info.metadata_sha256 is None:
            return None
        stored: Any = self._store.get(("metadata", info.sha256))
        if isinstance(stored, bytes):
            return stored
        _info, metadata = compute_file_info(Path(entry.path))  # the store was cleared
        if metadata is not None:
            self._store.set(("metadata", info.sha256), metadata)
        return metadata

    @property
    def has_unwarmed(self) -> bool:
        return bool(self._unwarmed)

    def warm_changed(self) -> int:
        """Hash the files of projects changed since the last call (after a poll found
        dropped files: by the time a client asks, the work is done or under way, and the
        request shares it)."""
        count = 0
        while self._unwarmed and not self._stop.is_set():
            name = self._unwarmed.pop()
            count += self._hash_entries(list(self._projects.get(name, {}).values()))
        return count

    def warm(self) -> int:
        """Hash every file not yet known (start-up, in a thread; stops on close)."""
        self._unwarmed.clear()  # all of them, here
        count = 0
        for entries in list(self._projects.values()):
            if self._stop.is_set():
                break
            count += self._hash_entries(list(entries.values()))
        return count

    def _hash_entries(self, entries: list[_Entry]) -> int:
        """Hash the files not known yet (one shared job per file: see ``_info``); how many
        were read. Stops early when the storage closes."""
        count = 0
        for entry in entries:
            if self._stop.is_set():
                break
            try:
                self._info(entry)
            except OSError:
                continue
            count += 1
        return count

    # --- writing --------------------------------------------------------------------------

    @property
    def temp_dir(self) -> Path:
        """Where an upload is written before :meth:`add`: on the packages folder's file
        system (the commit is a rename), named with a dot so no scan lists it."""
        return self.root

    def _project_dir(self, name: NormalizedName) -> Path:
        return self.root / name

    def add(
        self, temp: Path, dist: DistFilename, sha256: str, *, overwrite: bool
    ) -> Stored | Same | Conflict:
        """Store ``temp`` (its sha256 given) as ``dist`` unless its release is already stored.

        One release is one file, whatever its filename's spelling: the same bytes are
        :class:`Same` and write nothing, other bytes a :class:`Conflict` naming the stored
        file (unless ``overwrite``: the new file then takes the old one's place). The
        project's lock makes the check and the store one step against every other upload on
        this host. ``temp`` is renamed away on success; the caller removes it otherwise.
        """
        size = temp.stat().st_size
        replaced: tuple[str, str] | None = None
        with self.release_lock(dist.name):
            existing = self.find_release(dist)
            if existing is not None:
                existing_sha = fsutil.file_sha256(existing)
                if existing_sha == sha256:
                    return Same(existing.name)
                if not overwrite:
                    return Conflict(existing.name, existing_sha)
                dest = existing.parent / dist.filename
                replaced = (existing.name, existing_sha)
                fsutil.commit_replace(temp, dest)
                if dest != existing:
                    existing.unlink(missing_ok=True)
            else:
                dest = self._project_dir(dist.name) / dist.filename
                if not fsutil.commit_exclusive(temp, dest):  # dropped in by hand just now
                    return Conflict(dest.name, fsutil.file_sha256(dest))
            # Only the folders written to are listed again (not the whole tree).
            folders = {str(dest.parent)}
            if existing is not None:
                folders.add(str(existing.parent))
            self.refresh(folders)
        log.info("stored %s (%d bytes)", dest, size)
        if replaced is not None:
            return Stored(dist.filename, size, *replaced)
        return Stored(dist.filename, size)

    def remove_version(self, name: NormalizedName, version: str) -> int:
        """Remove every file of ``name``'s release ``version`` (compared canonically);
        the number of files removed."""
        return len(self.remove_version_files(name, version))

    def remove_version_files(self, name: NormalizedName, version: str) -> list[tuple[str, str]]:
        """:meth:`remove_version`, saying which files went: (filename, sha256) each (for
        the audit log). Each is hashed first, so its tombstone records the bytes a later
        upload of the same filename must have."""
        wanted = canonicalize_version(version)
        paths = []
        for filename, entry in sorted(self._projects.get(name, {}).items()):
            dist = release_of(filename)
            if dist is None or canonicalize_version(dist.version) != wanted:
                continue
            try:
                info = self._info(entry)
            except OSError:
                continue  # removed since the last scan
            paths.append((Path(entry.path), info.sha256))
        for path, _sha256 in paths:
            path.unlink(missing_ok=True)
        if paths:
            self.refresh({str(path.parent) for path, _sha256 in paths})
        return [(path.name, sha256) for path, sha256 in paths]

    def _release_files(self, name: NormalizedName, version: str) -> list[tuple[str, str]]:
        """(filename, sha256) of each file of ``name``'s release ``version``."""
        wanted = canonicalize_version(version)
        found = []
        for filename, entry in sorted(self._projects.get(name, {}).items()):
            if _release_version(filename) != wanted:
                continue
            try:
                found.append((filename, self._info(entry).sha256))
            except OSError:
                continue  # removed since the last scan
        return found

    def yank(self, name: NormalizedName, version: str, reason: str) -> list[tuple[str, str]]:
        """Mark ``name``'s release ``version`` yanked (PEP 592) with ``reason`` ("" for
        none); the release's files as (filename, sha256), empty (nothing written) if the
        release has no file. Yanking again replaces the reason."""
        return self._set_yank(name, version, reason)

    def unyank(self, name: NormalizedName, version: str) -> list[tuple[str, str]]:
        """Undo :meth:`yank`; the release's files, empty if it has none."""
        return self._set_yank(name, version, None)

    def _set_yank(
        self, name: NormalizedName, version: str, reason: str | None
    ) -> list[tuple[str, str]]:
        with self.release_lock(name):
            self.rescan()  # another worker may have stored or removed files a moment ago
            files = self._release_files(name, version)
            if files and self.yanks.set(name, version, reason):
                with self._lock:
                    self.generation += 1
                    self._epoch += 1  # this project's pages (and JSON API) show the mark
                    self._tell_others([])  # the others re-read the yanks (_refresh_names)
        return files

    def find_release(self, dist: DistFilename) -> Path | None:
        """The file that holds ``dist``'s release, under whatever spelling: the one pages list,
        else one in the project's upload folder that this process has not scanned yet (another
        worker may have stored it a moment ago)."""
        for entry in self._projects.get(dist.name, {}).values():
            if entry.release == dist.release_key and Path(entry.path).exists():
                return Path(entry.path)
        folder = self._project_dir(dist.name)
        try:
            paths = sorted(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return None
        for path in paths:
            other = release_of(path.name)
            if other is None or path.name.startswith("."):
                continue
            if other.name == dist.name and other.release_key == dist.release_key:
                return path
        return None

    @contextlib.contextmanager
    def release_lock(self, name: NormalizedName) -> Iterator[None]:
        """Hold the project's upload lock (blocking): checking that a release is absent and
        storing it is one step for every thread and worker process on this host, so two
        spellings of one release uploaded at once cannot both be stored. ``flock`` locks
        belong to the open file, so two threads of one process exclude each other too."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with (self._lock_dir / f"{name}.lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
