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


def open_cache(directory: Path, **settings: Any) -> diskcache.Cache:
    return diskcache.Cache(str(directory), disk=_Disk, **settings)
