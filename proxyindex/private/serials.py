"""Serials of private projects, like PyPI's ``_last-serial``: a number that grows with every
change of the project's files, so that mirroring tools (bandersnatch) can tell what changed.

One counter for all private projects, in a diskcache folder shared by the worker processes:
a project whose files differ from what its serial was given for (a fingerprint of filenames,
hashes and yanked flags) takes the next number, in a transaction, so two workers seeing the
same change agree on one serial, and a restart keeps them. The counter never goes below the
highest upstream serial seen (``raise_floor``): a mirror that compares one "last serial" across
every project (bandersnatch's simple-API mode) then sees a private change made after it synced
as newer than everything it has.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName

from proxyindex.diskstore import open_cache
from proxyindex.models import ProjectPage

__all__ = ["ProjectSerials", "fingerprint"]

_LAST = "last-serial"
_FLOOR = "floor"


def fingerprint(page: ProjectPage) -> str:
    """What a serial is given for: the files, their hashes and yanked flags."""
    digest = hashlib.sha256()
    for dist in sorted(page.files, key=lambda f: f.filename):
        digest.update(f"{dist.filename}\0{dist.sha256}\0{dist.yanked}\n".encode())
    return digest.hexdigest()


class ProjectSerials:
    """Blocking (sqlite): call from a thread."""

    def __init__(self, directory: Path) -> None:
        self._cache = open_cache(directory)

    def close(self) -> None:
        self._cache.close()

    def _stored(self, name: NormalizedName) -> tuple[str, int] | None:
        value: Any = self._cache.get(("project", name))
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
            return value[0], value[1]
        return None

    def stamp(self, page: ProjectPage) -> ProjectPage:
        """The page with its serial: the stored one if its files are unchanged, else the next."""
        mark = fingerprint(page)
        stored = self._stored(page.name)
        if stored is None or stored[0] != mark:
            with self._cache.transact():
                stored = self._stored(page.name)
                if stored is None or stored[0] != mark:
                    serial = max(self._number(_LAST), self._number(_FLOOR)) + 1
                    self._cache.set(_LAST, serial)
                    self._cache.set(("project", page.name), (mark, serial))
                    stored = (mark, serial)
        return dataclasses.replace(page, serial=stored[1])

    def _number(self, key: str) -> int:
        value: Any = self._cache.get(key, 0)
        return value if isinstance(value, int) else 0

    def raise_floor(self, serial: int) -> None:
        """Upstream serials seen so far reach ``serial``: later private changes go above it."""
        if serial > self._number(_FLOOR):
            with self._cache.transact():
                if serial > self._number(_FLOOR):
                    self._cache.set(_FLOOR, serial)

    def serials(self, names: Iterable[NormalizedName]) -> dict[NormalizedName, int]:
        """The serials given so far to ``names`` (a project never stamped has none yet)."""
        found = {}
        for name in names:
            stored = self._stored(name)
            if stored is not None:
                found[name] = stored[1]
        return found
