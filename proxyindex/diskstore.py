"""diskcache whose pickles survive the modules' moves.

Pages (``PageEntry``) and file infos (``FileInfo``) are pickled by class path. The classes
moved when the package was split into folders (``proxyindex.cache`` became
``proxyindex.upstream.cache``, ``proxyindex.storage`` became ``proxyindex.private.storage``),
so a cache written before would read as misses (every page fetched again, and with the
upstream down, none served stale) or fail outright. Old paths are mapped to the new ones.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import IO, Any

import diskcache
from diskcache.core import MODE_PICKLE

__all__ = ["MOVED_MODULES", "open_cache", "unpickle"]

MOVED_MODULES = {
    "proxyindex.cache": "proxyindex.upstream.cache",
    "proxyindex.storage": "proxyindex.private.storage",
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def unpickle(data: IO[bytes]) -> Any:
    return _Unpickler(data).load()


class _Disk(diskcache.Disk):  # type: ignore[misc]  # diskcache has no type hints
    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode != MODE_PICKLE:
            return super().fetch(mode, filename, value, read)
        if value is None:
            with Path(self._directory, filename).open("rb") as reader:
                return unpickle(reader)
        return unpickle(io.BytesIO(value))


# SQLite's memory per connection, and diskcache opens one connection per thread (the server's
# pool has 32): diskcache's defaults (a 64 MB mmap window and an 8,192-page cache, per
# connection) let every thread that read the private file infos map the same database again,
# counted in the process's RSS once per thread: +92 MB of the +120 MB RSS growth measured over
# 16,000 private pages with a 32 MB memory budget was that file mapped four times over. Reads
# go through the kernel's page cache instead (shared, and not the process's), with 1 MB of
# SQLite page cache per connection for the B-tree's inner pages.
_SQLITE_SETTINGS: dict[str, Any] = {"sqlite_mmap_size": 0, "sqlite_cache_size": 256}


def open_cache(directory: Path, **settings: Any) -> diskcache.Cache:
    return diskcache.Cache(str(directory), disk=_Disk, **{**_SQLITE_SETTINGS, **settings})
