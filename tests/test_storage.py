"""Private storage: what the packages-folder scan sees, and what it remembers."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.private.storage import PrivateStorage
from tests.wheelmaker import make_sdist, make_wheel, wheel_metadata

CORP = NormalizedName("corp-lib")


def storage(tmp_path: Path) -> PrivateStorage:
    (tmp_path / "packages").mkdir(exist_ok=True)
    store = PrivateStorage(tmp_path / "packages", tmp_path / "meta")
    store.rescan()
    return store


def filenames(store: PrivateStorage, name: NormalizedName = CORP) -> list[str]:
    page = store.page(name)
    return [f.filename for f in page.files] if page else []


def test_scan_finds_files_at_any_depth_and_ignores_other_files(tmp_path: Path) -> None:
    root = tmp_path / "packages"
    make_wheel(root / "a" / "b", "corp-lib", "1.0")
    make_wheel(root, "Corp_Lib", "2.0")
    (root / "README.txt").write_text("not a distribution")
    (root / ".tmp-upload").write_bytes(b"partial")
    (root / ".hidden").mkdir()
    make_wheel(root / ".hidden", "corp-lib", "9.0")
    store = storage(tmp_path)
    assert filenames(store) == ["corp_lib-1.0-py3-none-any.whl", "corp_lib-2.0-py3-none-any.whl"]
    assert store.names() == {"corp-lib"}


def test_added_replaced_and_removed_files_are_seen_by_the_next_poll(tmp_path: Path) -> None:
    store = storage(tmp_path)
    folder = tmp_path / "packages" / "corp-lib"
    wheel = make_wheel(folder, "corp-lib", "1.0")
    assert store.rescan() is True
    first = store.page(CORP)
    assert first is not None
    assert store.rescan() is False  # nothing changed: no new generation
    generation = store.generation
    other = make_wheel(tmp_path / "other", "corp-lib", "1.0", modules={"corp_lib": "x = 2"})
    fh, temp = fsutil.open_temp(folder)
    fh.write(other.read_bytes())
    fh.close()
    fsutil.commit_replace(temp, wheel)  # same name, new bytes, new inode
    assert store.rescan() is True
    assert store.generation > generation
    second = store.page(CORP)
    assert second is not None
    assert second.files[0].sha256 == hashlib.sha256(other.read_bytes()).hexdigest()
    wheel.unlink()
    assert store.rescan() is True
    assert store.page(CORP) is None
    assert not store.has(CORP)


def test_same_filename_in_two_folders_is_listed_once(tmp_path: Path) -> None:
    root = tmp_path / "packages"
    make_wheel(root / "a", "corp-lib", "1.0")
    make_wheel(root / "b", "corp-lib", "1.0", modules={"corp_lib": "x = 'b'"})
    store = storage(tmp_path)
    page = store.page(CORP)
    assert page is not None and len(page.files) == 1
    assert page.files[0].location == root / "a" / "corp_lib-1.0-py3-none-any.whl"


def test_hashes_and_metadata_are_remembered_across_restarts(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    metadata = wheel_metadata(wheel)
    store = storage(tmp_path)
    page = store.page(CORP)
    assert page is not None
    sha = page.files[0].sha256
    assert store.metadata(CORP, wheel.name) == metadata
    store.close()
    # Change the bytes but keep size and mtime: a restarted storage must not hash again.
    st = wheel.stat()
    data = bytearray(wheel.read_bytes())
    data[-1] ^= 0xFF
    wheel.write_bytes(bytes(data))
    os.utime(wheel, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = storage(tmp_path)
    page = again.page(CORP)
    assert page is not None and page.files[0].sha256 == sha
    assert again.metadata(CORP, wheel.name) == metadata


def test_commit_exclusive_lets_exactly_one_of_many_writers_win(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "file.whl"
    results: list[bool] = []

    def writer(index: int) -> None:
        fh, temp = fsutil.open_temp(tmp_path / "out")
        fh.write(bytes([index]) * 100_000)
        fh.close()
        results.append(fsutil.commit_exclusive(temp, dest))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]
    data = dest.read_bytes()
    assert len(data) == 100_000 and len(set(data)) == 1  # one writer's bytes, never mixed
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.whl"]  # no temp left


# --- a failing folder never makes private names disappear (DC-04) ---------------------------


class _Entry:
    """An ``os.DirEntry`` whose file was removed between the listing and the stat."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self._entry = entry
        self.name, self.path = entry.name, entry.path

    def inode(self) -> int:
        return self._entry.inode()

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return False

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return True

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise FileNotFoundError(self.path)


def test_an_unreadable_folder_keeps_its_files_and_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    team = tmp_path / "packages" / "team"
    make_wheel(team, "corp-lib", "1.0")
    store = storage(tmp_path)
    make_wheel(team, "corp-lib", "2.0")  # the folder changes, so the next poll lists it
    real_scandir = os.scandir

    def scandir(path: str) -> Any:
        if Path(path) == team:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.INFO, logger="proxyindex.private.storage"):
        assert store.rescan() is False
        assert store.rescan() is False
        assert filenames(store) == ["corp_lib-1.0-py3-none-any.whl"]  # what was last seen
        assert caplog.text.count("cannot read") == 1
        monkeypatch.undo()
        assert store.rescan() is True
    assert filenames(store) == ["corp_lib-1.0-py3-none-any.whl", "corp_lib-2.0-py3-none-any.whl"]
    assert "readable again" in caplog.text


def test_a_missing_packages_folder_is_a_failure_not_an_empty_index(tmp_path: Path) -> None:
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    store = storage(tmp_path)
    (tmp_path / "packages").rename(tmp_path / "elsewhere")  # e.g. a volume that went away
    assert store.rescan() is False
    assert store.has(CORP)
    (tmp_path / "elsewhere").rename(tmp_path / "packages")
    shutil.rmtree(tmp_path / "packages")  # a real removal: the folder is there, empty
    (tmp_path / "packages").mkdir()
    assert store.rescan() is True
    assert not store.has(CORP)


def test_a_file_removed_while_its_folder_is_listed_spares_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = storage(tmp_path)
    folder = tmp_path / "packages"
    make_wheel(folder, "corp-lib", "1.0")
    make_wheel(folder, "corp-lib", "2.0")
    real_scandir = os.scandir

    class Listing:
        def __init__(self, path: str) -> None:
            self._it = real_scandir(path)

        def __enter__(self) -> Iterator[Any]:
            entries = list(self._it)
            return iter(_Entry(e) if e.name.startswith("corp_lib-2.0") else e for e in entries)

        def __exit__(self, *exc: object) -> None:
            self._it.close()

    monkeypatch.setattr(os, "scandir", Listing)
    assert store.rescan() is True
    assert filenames(store) == ["corp_lib-1.0-py3-none-any.whl"]


def test_spellings_of_one_release_dropped_in_list_the_oldest_and_log_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "packages"
    first = make_wheel(root / "b", "corp-lib", "1.0")
    later = make_wheel(root / "a", "corp-lib", "1.0.0", modules={"corp_lib": "x = 2"})
    shouting = root / "Corp_Lib-01.0-py3-none-any.whl"
    shouting.write_bytes(make_wheel(tmp_path / "c", "Corp_Lib", "01.0").read_bytes())
    sdist = make_sdist(root, "corp-lib", "1.0")  # another release file of the same version
    for age, path in enumerate((first, later, shouting)):
        stamp = 1_700_000_000_000_000_000 + age * 1_000_000_000
        os.utime(path, ns=(stamp, stamp))
    with caplog.at_level(logging.WARNING, logger="proxyindex.private.storage"):
        store = storage(tmp_path)
    assert filenames(store) == [first.name, sdist.name]
    assert store.locate(CORP, later.name) is None  # not served either: one file per release
    assert f"ignoring {later}" in caplog.text
    assert f"ignoring {shouting}" in caplog.text
    store.close()
    assert filenames(storage(tmp_path)) == [first.name, sdist.name]  # the same after a restart
