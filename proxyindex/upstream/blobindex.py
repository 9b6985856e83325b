"""The blob cache's size and recency index: one small SQLite table shared by the worker
processes, so eviction is O(evicted) instead of a stat of every blob and a sort (3-5 s at
50,000 blobs, run again by the first download after every start).

A row is written before its blob is renamed into place and deleted after its blob is
unlinked, so a crash leaves at most a row without a blob (counted until eviction reaches it,
which then deletes a missing file: harmless), never a blob the index does not know. The
total is kept by triggers in the same transactions. A missing or unreadable index is rebuilt
from a walk of the folder, once (``state.built``); nothing else ever walks it.

The same triggers keep the number of blobs and each project's bytes and files (``projects``,
for blobs recorded with the project they were downloaded for), so what the web UI's cache
page shows (totals, the largest projects) is a read of a few rows at any size, where it
walked the folder and read up to 5,000 cached pages every 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BlobIndex", "ProjectUsage"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_use ON blobs (used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 0), built INTEGER);
INSERT OR IGNORE INTO state VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS blobs_in AFTER INSERT ON blobs BEGIN
    UPDATE total SET bytes = bytes + new.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blobs_out AFTER DELETE ON blobs BEGIN
    UPDATE total SET bytes = bytes - old.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blobs_resized AFTER UPDATE OF size ON blobs BEGIN
    UPDATE total SET bytes = bytes - old.size + new.size WHERE id = 0; END;
"""

# Added later (an index written before gets the column and tables on open, its count taken
# once in the same transaction; its blobs have no project: a walk indexed them).
_COUNTS = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY CHECK (id = 0), count INTEGER NOT NULL);
INSERT OR IGNORE INTO files SELECT 0, COUNT(*) FROM blobs;
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, bytes INTEGER NOT NULL, files INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS projects_by_bytes ON projects (bytes);
CREATE TRIGGER IF NOT EXISTS blobs_counted_in AFTER INSERT ON blobs BEGIN
    UPDATE files SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blobs_counted_out AFTER DELETE ON blobs BEGIN
    UPDATE files SET count = count - 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS project_in AFTER INSERT ON blobs WHEN new.project IS NOT NULL
BEGIN
    INSERT INTO projects VALUES (new.project, new.size, 1)
    ON CONFLICT (name) DO UPDATE SET bytes = bytes + new.size, files = files + 1;
END;
CREATE TRIGGER IF NOT EXISTS project_out AFTER DELETE ON blobs WHEN old.project IS NOT NULL
BEGIN
    UPDATE projects SET bytes = bytes - old.size, files = files - 1 WHERE name = old.project;
    DELETE FROM projects WHERE name = old.project AND files <= 0;
END;
CREATE TRIGGER IF NOT EXISTS project_changed AFTER UPDATE OF size, project ON blobs BEGIN
    UPDATE projects SET bytes = bytes - old.size, files = files - 1 WHERE name = old.project;
    DELETE FROM projects WHERE name = old.project AND files <= 0;
    INSERT INTO projects SELECT new.project, new.size, 1 WHERE new.project IS NOT NULL
    ON CONFLICT (name) DO UPDATE SET bytes = bytes + new.size, files = files + 1;
END;
COMMIT;
"""


@dataclass(frozen=True, slots=True)
class ProjectUsage:
    """One project's share of the cache: the files downloaded for it."""

    name: str
    bytes: int
    files: int


class BlobIndex:
    """Blocking (SQLite): call from threads. One connection, serialised by a lock; other
    processes share the file (WAL, a busy timeout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            return _open(self.path)
        except sqlite3.DatabaseError:
            log.warning("blob index %s is unreadable: rebuilding it", self.path)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self.path}{suffix}").unlink()
            return _open(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def built(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT built FROM state WHERE id = 0").fetchone()
        return bool(row and row[0])

    def rebuild(self, blobs: Iterable[tuple[str, int, float]]) -> None:
        """Record blobs found on disk (sha256, size, last use) and mark the index built."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO blobs (sha256, size, used) VALUES (?, ?, ?)", blobs
                )
                self._db.execute("UPDATE state SET built = 1 WHERE id = 0")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add(self, sha256: str, size: int, project: str | None = None) -> None:
        """Record a blob (``project``: the one it was downloaded for, if any; a blob known
        already keeps the project it had)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO blobs (sha256, size, used, project) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, used = excluded.used,"
                " project = coalesce(blobs.project, excluded.project)",
                (sha256, size, time.time(), project),
            )

    def touch(self, sha256: str, size: int, when: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO blobs (sha256, size, used) VALUES (?, ?, ?) ON CONFLICT (sha256)"
                " DO UPDATE SET used = excluded.used",
                (sha256, size, when),
            )

    def remove(self, *sha256: str) -> None:
        """Forget blobs (one transaction for all: eviction removes hundreds at a time)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "DELETE FROM blobs WHERE sha256 = ?", [(sha,) for sha in sha256]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def total(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT bytes FROM total WHERE id = 0").fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        """How many blobs are indexed (a row kept by triggers, not a count)."""
        with self._lock:
            row = self._db.execute("SELECT count FROM files WHERE id = 0").fetchone()
        return int(row[0]) if row else 0

    def largest_projects(self, count: int) -> list[ProjectUsage]:
        """The ``count`` projects whose downloaded files take the most bytes (an index walk
        of ``count`` rows)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, bytes, files FROM projects ORDER BY bytes DESC, name LIMIT ?",
                (count,),
            ).fetchall()
        return [ProjectUsage(str(name), int(size), int(files)) for name, size, files in rows]

    def oldest(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` least recently used blobs (sha256, size)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, size FROM blobs ORDER BY used LIMIT ?", (count,)
            ).fetchall()
        return [(str(sha), int(size)) for sha, size in rows]


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut loses the last rows only
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
        if "project" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                db.execute("ALTER TABLE blobs ADD COLUMN project TEXT")
        db.executescript(_COUNTS)
    except BaseException:
        db.close()
        raise
    return db
