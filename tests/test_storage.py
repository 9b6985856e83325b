"""Private storage: what the packages-folder scan sees, and what it remembers."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.storage import PrivateStorage
from tests.wheelmaker import make_wheel, wheel_metadata

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
    assert page.files[0].url.endswith("/a/corp_lib-1.0-py3-none-any.whl")


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
