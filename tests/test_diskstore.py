"""Caches written before the package was split into folders still read (see ``diskstore``)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import diskcache
import pytest
from packaging.utils import NormalizedName

from proxyindex.diskstore import MOVED_MODULES, open_cache
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.private.storage import FileInfo
from proxyindex.upstream.cache import PageEntry

# A DistFile pickles its fields by position: the old ``url`` field reads as ``location``.
_UPSTREAM_FILE = DistFile("demo-1.0.tar.gz", "https://u/demo-1.0.tar.gz", Origin.UPSTREAM)


def _pickled_before_the_move(value: Any) -> bytes:
    """``value`` pickled as the old layout did: under its class's old module path."""
    data = pickle.dumps(value, protocol=2)  # protocol 2 names classes as "module\nname\n"
    for old, new in MOVED_MODULES.items():
        data = data.replace(f"{new}\n".encode(), f"{old}\n".encode())
    assert data != pickle.dumps(value, protocol=2)
    return data


@pytest.mark.parametrize(
    "value",
    [
        PageEntry(ProjectPage(NormalizedName("demo"), (_UPSTREAM_FILE,)), 1.0, '"e"'),
        FileInfo(sha256="0" * 64, size=3, requires_python=None, metadata_sha256=None, mtime=1.0),
    ],
    ids=["page", "file-info"],
)
def test_entries_pickled_under_the_old_module_paths_still_read(tmp_path: Path, value: Any) -> None:
    cache = open_cache(tmp_path / "c")
    cache.set("key", value)
    cache.close()
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ?", (_pickled_before_the_move(value),))
    plain = diskcache.Cache(str(tmp_path / "c"))
    with pytest.raises(ModuleNotFoundError):
        plain.get("key")
    plain.close()
    reopened = open_cache(tmp_path / "c")
    assert reopened.get("key") == value
    reopened.close()
