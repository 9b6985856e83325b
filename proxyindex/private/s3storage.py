"""Private packages in an S3-compatible bucket, shared by any number of stateless replicas.

The bucket (under ``storage.s3_prefix``) holds::

    private/files/<project>/<filename>    the distribution files (written once)
    private/projects/<project>.json       the project record: each file's sha256, size,
                                          Requires-Python, METADATA hash, upload time;
                                          the removed files (tombstones)
    private/metadata/<sha256>             a wheel's METADATA (PEP 658), by its hash
    private/changes                       the change marker, rewritten after every change

The project record is the truth: a file is listed once its record names it. An upload is a
conditional create of the file's key (``If-None-Match: *``): of two replicas racing on one
filename exactly one stores it, the other answers as today (same bytes: nothing to do;
other bytes: 409). The record is then updated with ``If-Match`` on the ETag read, so two
replicas adding files to one project at once never lose either; a lost update re-reads the
record and checks the release again (two spellings of one release raced: one wins).

Every replica polls the change marker (a HEAD) every ``storage.s3_poll_interval`` seconds and
re-reads the records whose ETag changed, so a change made through one replica is served by
every other within that interval plus one request. Files are mirrored on first use into the
replica's cache folder (``<cache_dir>/s3-private``), so they are sent with sendfile like local
files, and keep being served while the bucket is unreachable; so do pages, from the records
in memory. Writes need the bucket: without it they fail with a 503 and change nothing.

Every method blocks; the async side calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_version

from proxyindex import fsutil
from proxyindex.distname import DistFilename, release_of
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.objectstore import Bucket, StorageUnavailable
from proxyindex.private.sdistcheck import read_sdist_pkg_info
from proxyindex.private.storage import (
    Conflict,
    Same,
    Stored,
    metadata_fields,
    read_wheel_metadata,
)
from proxyindex.simple import project_versions

__all__ = ["S3PrivateStorage"]

log = logging.getLogger(__name__)

_FILES = "private/files/"
_PROJECTS = "private/projects/"
_METADATA = "private/metadata/"
_MARKER = "private/changes"
_UPDATE_ATTEMPTS = 20  # lost If-Match races before giving up (a 503): never seen in practice


@dataclass(frozen=True, slots=True)
class _File:
    sha256: str
    size: int
    upload_time: str
    requires_python: str | None = None
    metadata_sha256: str | None = None


@dataclass(slots=True)
class _Project:
    """One project record as read from the bucket (``etag`` None: not there yet)."""

    etag: str | None = None
    files: dict[str, _File] = field(default_factory=dict)
    removed: dict[str, str | None] = field(default_factory=dict)
    yanked: dict[str, str] = field(default_factory=dict)  # canonical version -> reason ("")

    @classmethod
    def parse(cls, data: bytes, etag: str) -> _Project:
        raw: Any = json.loads(data)
        files = {name: _File(**value) for name, value in raw.get("files", {}).items()}
        removed = {str(k): (str(v) if v else None) for k, v in raw.get("removed", {}).items()}
        yanked = {str(k): str(v) for k, v in raw.get("yanked", {}).items()}
        return cls(etag, files, removed, yanked)

    def dump(self) -> bytes:
        files = {
            name: {
                "sha256": f.sha256,
                "size": f.size,
                "upload_time": f.upload_time,
                "requires_python": f.requires_python,
                "metadata_sha256": f.metadata_sha256,
            }
            for name, f in sorted(self.files.items())
        }
        record = {"files": files, "removed": self.removed, "yanked": self.yanked}
        return json.dumps(record, sort_keys=True).encode()

    def release_files(self, version: str) -> list[tuple[str, str]]:
        wanted = canonicalize_version(version)
        out = []
        for filename, record in sorted(self.files.items()):
            dist = release_of(filename)
            if dist is not None and canonicalize_version(dist.version) == wanted:
                out.append((filename, record.sha256))
        return out

    def yank_of(self, filename: str) -> str | bool:
        dist = release_of(filename)
        if dist is None:
            return False
        reason = self.yanked.get(canonicalize_version(dist.version))
        return False if reason is None else (reason or True)

    def release_file(self, dist: DistFilename) -> str | None:
        for filename in self.files:
            other = release_of(filename)
            if other is not None and other.release_key == dist.release_key:
                return filename
        return None


class _Names:
    """Every project with a record is a private name, even with no file left (a tombstone)."""

    def __init__(self, storage: S3PrivateStorage) -> None:
        self._storage = storage

    def __contains__(self, name: object) -> bool:
        return name in self._storage._projects

    def removed_files(self, name: NormalizedName) -> Mapping[str, str | None]:
        project = self._storage._projects.get(name)
        return dict(project.removed) if project is not None else {}


def _describe(temp: Path, dist: DistFilename) -> tuple[str | None, bytes | None]:
    """Requires-Python and (wheels) the METADATA bytes of an upload (named by ``dist``: the
    temp file's own name says nothing); the publish rules checked them already."""
    try:
        if dist.is_wheel:
            raw = read_wheel_metadata(temp)
        else:
            raw = read_sdist_pkg_info(temp, dist.filename)
    except ValueError:
        return None, None
    requires_python = metadata_fields(raw).get("Requires-Python") or None
    return requires_python, raw if dist.is_wheel else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class S3PrivateStorage:
    """The bucket's private packages as ``{project: {filename: file}}``, kept current by
    :meth:`rescan` (a HEAD of the change marker every ``poll_interval`` seconds)."""

    def __init__(self, bucket: Bucket, local_dir: Path, poll_interval: float) -> None:
        self.bucket = bucket
        self._local = local_dir
        self._temp = local_dir / "tmp"
        self._temp.mkdir(parents=True, exist_ok=True)
        self._poll_interval = poll_interval
        self._projects: dict[NormalizedName, _Project] = {}
        self._marker: str | None = None
        self._next_poll = 0.0
        self._loaded = False
        self._failing = False
        self._lock = threading.Lock()  # one rescan or write at a time in this process
        self.generation = 0
        self.private_names = _Names(self)

    @property
    def root(self) -> Path:
        return self._local

    @property
    def temp_dir(self) -> Path:
        """Uploads are received here, then put in the bucket and moved into the mirror."""
        return self._temp

    def stale(self) -> bool:
        return False  # replicas (and workers) poll the bucket's change marker instead

    def warm(self) -> int:
        return 0  # hashes are in the project records

    def stop_warming(self) -> None:
        return None

    def close(self) -> None:
        return None

    # --- keeping up -----------------------------------------------------------------------

    def rescan(self) -> bool:
        """Re-read the project records if the change marker moved (at most every
        ``poll_interval`` seconds); True if any changed. The first call needs the bucket
        (start-up fails without it: an empty view would hand private names to the upstream);
        later failures keep the last view and are logged once."""
        now = time.monotonic()
        if self._loaded and now < self._next_poll:
            return False
        with self._lock:
            self._next_poll = now + self._poll_interval
            try:
                marker = self.bucket.etag(_MARKER)
                if self._loaded and marker == self._marker:
                    self._recovered()
                    return False
                changed = self._reload()
            except StorageUnavailable as exc:
                if not self._loaded:
                    raise
                if not self._failing:
                    log.error("%s; serving the private packages last seen", exc)
                self._failing = True
                return False
            self._marker = marker
            self._loaded = True
            self._recovered()
            return changed

    def _recovered(self) -> None:
        if self._failing:
            log.info("object storage %s is reachable again", self.bucket)
        self._failing = False

    def _reload(self) -> bool:
        # Caller holds self._lock.
        seen: dict[NormalizedName, str] = {}
        for key, etag in self.bucket.list(_PROJECTS):
            name = key.removeprefix(_PROJECTS).removesuffix(".json")
            if key.endswith(".json") and name:
                seen[NormalizedName(name)] = etag
        projects = dict(self._projects)
        changed = False
        for name, etag in seen.items():
            known = projects.get(name)
            if known is not None and known.etag == etag:
                continue
            fresh = self._read(name)
            if fresh is not None:
                projects[name] = fresh
                changed = True
                if known is not None:
                    self._forget_copies(name, known, fresh)
        for name in projects.keys() - seen.keys():
            self._forget_copies(name, projects.pop(name), _Project())
            changed = True
        if changed:
            self._projects = projects
            self.generation += 1
        return changed

    def _forget_copies(self, name: NormalizedName, old: _Project, new: _Project) -> None:
        """Delete this replica's copies of files removed or replaced through another one."""
        for filename, record in old.files.items():
            kept = new.files.get(filename)
            if kept is None or kept.sha256 != record.sha256:
                self._forget_copy(name, filename, record.sha256)

    def _read(self, name: NormalizedName) -> _Project | None:
        found = self.bucket.get(f"{_PROJECTS}{name}.json")
        if found is None:
            return None
        try:
            return _Project.parse(found.data, found.etag)
        except (ValueError, TypeError) as exc:
            log.error("unreadable project record for %s in %s: %s", name, self.bucket, exc)
            return None

    def _publish(self, name: NormalizedName, project: _Project) -> None:
        # Caller holds self._lock: the new record is this replica's view at once, and the
        # marker tells every other replica to look.
        projects = dict(self._projects)
        projects[name] = project
        self._projects = projects
        self.generation += 1
        self.bucket.put(_MARKER, uuid.uuid4().hex.encode())

    # --- reading --------------------------------------------------------------------------

    def names(self) -> frozenset[NormalizedName]:
        return frozenset(n for n, p in self._projects.items() if p.files)

    # The local storage's incremental interface (issue 9), met simply: the bucket's change
    # marker is the one thing to poll, and project records carry their hashes.

    def version(self, name: NormalizedName) -> tuple[int, int]:
        """Changes whenever this replica's view changes (any project: records are few)."""
        return (self.generation, 0)

    def catch_up(self) -> bool:
        return self.rescan()

    def poll(self) -> bool:
        return self.rescan()

    def unhashed(self, name: NormalizedName) -> int:
        return 0  # a record lists every file with its sha256

    @property
    def has_unwarmed(self) -> bool:
        return False

    def warm_changed(self) -> int:
        return 0

    def file_count(self) -> int:
        """How many private files there are (for /metrics)."""
        return sum(len(p.files) for p in self._projects.values())

    def has(self, name: NormalizedName) -> bool:
        project = self._projects.get(name)
        return project is not None and bool(project.files)

    def was_private(self, name: NormalizedName) -> bool:
        return name in self._projects

    def _mirror_path(self, name: NormalizedName, filename: str, sha256: str) -> Path:
        """Where this replica keeps its copy: named by content too, so a file replaced
        through another replica (``allow_overwrite``) can never be served from an old copy."""
        return self._local / "files" / name / sha256[:16] / filename

    def page(self, name: NormalizedName) -> ProjectPage | None:
        project = self._projects.get(name)
        if project is None or not project.files:
            return None
        files = [
            DistFile(
                filename=filename,
                location=self._mirror_path(name, filename, f.sha256),
                origin=Origin.PRIVATE,
                hashes={"sha256": f.sha256},
                requires_python=f.requires_python,
                size=f.size,
                upload_time=f.upload_time,
                core_metadata={"sha256": f.metadata_sha256} if f.metadata_sha256 else False,
                yanked=project.yank_of(filename),
            )
            for filename, f in sorted(project.files.items())
        ]
        return ProjectPage(name=name, files=tuple(files), versions=project_versions(files))

    def locate(self, name: NormalizedName, filename: str) -> Path | None:
        """The file in this replica's mirror, copied from the bucket on first use (checked
        against the record's sha256: a corrupt copy is never served)."""
        project = self._projects.get(name)
        record = project.files.get(filename) if project is not None else None
        if record is None:
            return None
        path = self._mirror_path(name, filename, record.sha256)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = self._new_temp()
        try:
            if not self.bucket.download(f"{_FILES}{name}/{filename}", temp):
                log.error("%s is listed but missing from %s", filename, self.bucket)
                return None
            if fsutil.file_sha256(temp) != record.sha256:
                log.error("%s in %s does not match its recorded sha256", filename, self.bucket)
                return None
            fsutil.commit_replace(temp, path, durable=False)  # a lost copy is fetched again
        finally:
            temp.unlink(missing_ok=True)
        return path

    def metadata(self, name: NormalizedName, filename: str) -> bytes | None:
        project = self._projects.get(name)
        record = project.files.get(filename) if project is not None else None
        if record is None or record.metadata_sha256 is None:
            return None
        wanted = record.metadata_sha256
        cached = self._local / "metadata" / wanted
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        data: bytes | None = None
        mirrored = self._mirror_path(name, filename, record.sha256)
        if mirrored.exists():  # read out of the wheel: works while the bucket is away
            try:
                data = read_wheel_metadata(mirrored)
            except ValueError:
                data = None
        if data is None or hashlib.sha256(data).hexdigest() != wanted:
            found = self.bucket.get(f"{_METADATA}{wanted}")
            data = found.data if found is not None else None
        if data is None or hashlib.sha256(data).hexdigest() != wanted:
            return None
        cached.parent.mkdir(parents=True, exist_ok=True)
        temp = self._new_temp()
        temp.write_bytes(data)
        fsutil.commit_replace(temp, cached, durable=False)
        return data

    def _new_temp(self) -> Path:
        fh, temp = fsutil.open_temp(self._temp)
        fh.close()
        return temp

    def _forget_copy(self, name: NormalizedName, filename: str, sha256: str) -> None:
        path = self._mirror_path(name, filename, sha256)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    def find_release(self, dist: DistFilename) -> Path | None:
        project = self._projects.get(dist.name)
        filename = project.release_file(dist) if project is not None else None
        if project is None or filename is None:
            return None
        return self._mirror_path(dist.name, filename, project.files[filename].sha256)

    # --- writing --------------------------------------------------------------------------

    def add(
        self, temp: Path, dist: DistFilename, sha256: str, *, overwrite: bool
    ) -> Stored | Same | Conflict:
        """Store ``temp`` as ``dist`` unless its release is already stored (see the module
        docstring for how replicas racing on one release agree). ``temp`` is moved into the
        mirror on success; the caller removes it otherwise."""
        requires_python, metadata = _describe(temp, dist)
        metadata_sha256 = hashlib.sha256(metadata).hexdigest() if metadata is not None else None
        size = temp.stat().st_size
        record = _File(sha256, size, _now(), requires_python, metadata_sha256)
        key = f"{_FILES}{dist.name}/{dist.filename}"
        # No lock around the transfer: the bucket's conditional create decides races, and
        # uploads of other files (through this replica or any other) go on meanwhile.
        project = self._read(dist.name) or _Project()
        held = project.release_file(dist)
        replaced: tuple[str, str] | None = None
        if held is not None:
            held_sha = project.files[held].sha256
            if held_sha == sha256:
                return Same(held)
            if not overwrite:
                return Conflict(held, held_sha)
            replaced = (held, held_sha)
            self.bucket.put(key, temp)
        elif not self.bucket.create(key, temp):
            # Another replica stored this filename a moment ago (or an upload died before
            # its record was written): its bytes decide.
            theirs = self._object_sha256(key)
            if theirs != sha256:
                return Conflict(dist.filename, theirs or "unknown")
        if metadata is not None:
            self.bucket.put(f"{_METADATA}{metadata_sha256}", metadata)
        with self._lock:
            result = self._record_add(dist, record, replaced)
        if not isinstance(result, Stored):
            return result
        mirror = self._mirror_path(dist.name, dist.filename, sha256)
        mirror.parent.mkdir(parents=True, exist_ok=True)
        fsutil.commit_replace(temp, mirror, durable=False)
        if replaced is not None:
            self._forget_copy(dist.name, replaced[0], replaced[1])
        log.info("stored %s in %s (%d bytes)", dist.filename, self.bucket, size)
        return result

    def _record_add(
        self, dist: DistFilename, record: _File, replaced: tuple[str, str] | None
    ) -> Stored | Same | Conflict:
        """Name the stored file in the project record (``If-Match``, re-read on a lost race)."""
        for _attempt in range(_UPDATE_ATTEMPTS):
            project = self._read(dist.name) or _Project()
            held = project.release_file(dist)
            if held is not None and held != (replaced[0] if replaced else None):
                if held == dist.filename and project.files[held].sha256 == record.sha256:
                    self._publish(dist.name, project)
                    return Same(held)  # the same bytes raced in through another replica
                if held != dist.filename:
                    # Another spelling of the release won the race: ours goes.
                    self.bucket.delete(f"{_FILES}{dist.name}/{dist.filename}")
                held_sha = project.files[held].sha256
                return Same(held) if held_sha == record.sha256 else Conflict(held, held_sha)
            if replaced is not None:
                project.files.pop(replaced[0], None)
            project.files[dist.filename] = record
            project.removed.pop(dist.filename, None)
            if self.bucket.replace(f"{_PROJECTS}{dist.name}.json", project.dump(), project.etag):
                fresh = self._read(dist.name)
                self._publish(dist.name, fresh if fresh is not None else project)
                if replaced is not None and replaced[0] != dist.filename:
                    self.bucket.delete(f"{_FILES}{dist.name}/{replaced[0]}")
                if replaced is not None:
                    return Stored(dist.filename, record.size, *replaced)
                return Stored(dist.filename, record.size)
        raise StorageUnavailable(f"could not update the record of {dist.name}: too many writers")

    def _object_sha256(self, key: str) -> str | None:
        temp = self._new_temp()
        try:
            return fsutil.file_sha256(temp) if self.bucket.download(key, temp) else None
        finally:
            temp.unlink(missing_ok=True)

    def remove_version(self, name: NormalizedName, version: str) -> int:
        return len(self.remove_version_files(name, version))

    def yank(self, name: NormalizedName, version: str, reason: str) -> list[tuple[str, str]]:
        """PEP 592 yank of a release, kept in the project record (``If-Match``, like every
        change): the release's files, empty (nothing written) if it has none."""
        return self._set_yank(name, version, reason)

    def unyank(self, name: NormalizedName, version: str) -> list[tuple[str, str]]:
        return self._set_yank(name, version, None)

    def _set_yank(
        self, name: NormalizedName, version: str, reason: str | None
    ) -> list[tuple[str, str]]:
        wanted = canonicalize_version(version)
        with self._lock:
            for _attempt in range(_UPDATE_ATTEMPTS):
                project = self._read(name)
                files = [] if project is None else project.release_files(version)
                if project is None or not files:
                    return []
                if reason is None:
                    project.yanked.pop(wanted, None)
                else:
                    project.yanked[wanted] = reason
                if self.bucket.replace(f"{_PROJECTS}{name}.json", project.dump(), project.etag):
                    fresh = self._read(name)
                    self._publish(name, fresh if fresh is not None else project)
                    return files
            raise StorageUnavailable(f"could not update the record of {name}: too many writers")

    def remove_version_files(self, name: NormalizedName, version: str) -> list[tuple[str, str]]:
        """Remove every file of the release from the record (kept as tombstones with their
        sha256), then from the bucket and this replica's mirror."""
        wanted = canonicalize_version(version)
        with self._lock:
            for _attempt in range(_UPDATE_ATTEMPTS):
                project = self._read(name)
                if project is None:
                    return []
                gone: list[tuple[str, str]] = []
                for filename, record in sorted(project.files.items()):
                    dist = release_of(filename)
                    if dist is not None and canonicalize_version(dist.version) == wanted:
                        gone.append((filename, record.sha256))
                if not gone:
                    return []
                for filename, sha256 in gone:
                    del project.files[filename]
                    project.removed[filename] = sha256
                key = f"{_PROJECTS}{name}.json"
                if self.bucket.replace(key, project.dump(), project.etag):
                    fresh = self._read(name)
                    self._publish(name, fresh if fresh is not None else project)
                    break
            else:
                raise StorageUnavailable(f"could not update the record of {name}: too many writers")
        for filename, sha256 in gone:
            self.bucket.delete(f"{_FILES}{name}/{filename}")
            self._forget_copy(name, filename, sha256)
        return gone
