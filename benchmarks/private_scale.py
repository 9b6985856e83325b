"""How private storage scales: scan, poll, drop-in and page times with 100,000 files.

    python benchmarks/private_scale.py [--files 100000] [--per-project 10] [--layout nested|flat]

Files are tiny stand-ins with valid distribution names (the scan looks at names and stat data;
hashing reads them once). Prints one table; nothing is sent over the network.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packaging.utils import NormalizedName

from proxyindex.private.storage import PrivateStorage


def _make_tree(root: Path, files: int, per_project: int, layout: str) -> None:
    for index in range(files):
        project, version = divmod(index, per_project)
        name = f"proj{project:06d}"
        folder = root / name if layout == "nested" else root
        folder.mkdir(exist_ok=True)
        (folder / f"{name}-1.{version}-py3-none-any.whl").write_bytes(b"not really a wheel")


def _timed(label: str, rows: list[tuple[str, str]], func: object) -> object:
    assert callable(func)
    started = time.perf_counter()
    result = func()
    rows.append((label, f"{(time.perf_counter() - started) * 1000:.1f} ms"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-project", type=int, default=10)
    parser.add_argument("--layout", choices=["nested", "flat"], default="nested")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="proxyindex-scale-"))
    try:
        root = tmp / "packages"
        root.mkdir()
        started = time.perf_counter()
        _make_tree(root, args.files, args.per_project, args.layout)
        made = time.perf_counter() - started
        rows: list[tuple[str, str]] = [("files / layout", f"{args.files} / {args.layout}")]
        rows.append(("create the tree (setup)", f"{made:.1f} s"))
        storage = PrivateStorage(root, tmp / "meta")
        _timed("first scan (start-up)", rows, storage.rescan)
        _timed("poll, nothing changed (every second)", rows, storage.rescan)
        target = NormalizedName("proj000042")
        _timed(
            "page of one project, first time (hashes 10 files)", rows, lambda: storage.page(target)
        )
        _timed("page of one project, again", rows, lambda: storage.page(target))
        folder = root / "proj000042" if args.layout == "nested" else root
        (folder / "proj000042-9.9-py3-none-any.whl").write_bytes(b"new")
        changed = _timed("poll after a file is dropped in", rows, storage.rescan)
        rows.append(("  ... the poll saw it", str(changed)))
        page = storage.page(target)
        rows.append(("  ... files on the page now", str(len(page.files) if page else 0)))
        _timed("hash every file (background warm-up)", rows, storage.warm)
        storage.close()
        storage = PrivateStorage(root, tmp / "meta")
        storage.rescan()
        _timed("page after a restart (hashes remembered)", rows, lambda: storage.page(target))
        storage.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("peak RSS of this process", f"{peak:.0f} MB"))
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label:<{width}}  {value}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
