"""One upstream's part of the root list, rendered once per refresh of its names, in segments.

A *part* is a folder ``<slot>-<key>`` under ``root/parts``: the upstream's names (sorted,
without repeats, minus what a higher-priority upstream already lists), as ``names.txt``
(the names file's lines) and rendered in both formats, plain and raw-deflated, in segments
of ``SEGMENT`` names (``upstream.{html,json}[.z]``), with ``manifest.json`` saying where each
segment starts in each file, its first name, the highest serial in it, and the CRC-32 of each
plain file up to its end. A served root refers to byte ranges of these files
(``index.rootbody``); a private name that the upstream also lists re-renders only the
segment that holds it. Building a part is the one step whose cost grows with the upstream's
names (2M names: seconds); it runs in a thread, after an upstream refresh only.

The key names the input (the names file's inode, mtime and size, or the served names, and
the pins), so a part is never rewritten: it is built in a ``.building-*`` folder and renamed
into place whole; a worker process that finds the folder there uses it (two building the
same key at once: one rename wins, the other's copy is removed). Old parts are removed once
two newer ones exist; a request that still refers to a removed one rebuilds (``index.root``).

Blocking functions: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from packaging.utils import NormalizedName

from proxyindex.index.rootbody import Stretch, crc32_of_suffix, deflate_piece
from proxyindex.simple import SimpleFormat, render_root_entry

__all__ = [
    "SEGMENT",
    "Entry",
    "Part",
    "Rendered",
    "build_part",
    "load_part",
    "part_key",
    "prune_parts",
    "read_line",
    "sorted_entries",
    "upstream_stretches",
]

log = logging.getLogger(__name__)

SEGMENT = 1024  # names per segment: one re-rendered (a shadowed name) costs ~2 ms
_VERSION = 1  # of the part's layout: in the key, so a new layout never reads an old part
_SORT_RUN = 200_000  # lines sorted in memory at once for an unsorted names file (~30 MB)
_STALE_BUILD = 3600.0  # seconds after which a .building-* folder is a crashed build's
_FORMATS = (SimpleFormat.HTML, SimpleFormat.JSON)
# The rendered files: (format, deflated); their order is the order of Segment.chunks.
_FILES = tuple((fmt, packed) for fmt in _FORMATS for packed in (False, True))

# A line of a names file: "normalised\tdisplay\tserial", the last two optional (empty when
# the upstream did not say; files written before they were kept have the name alone).
Entry = tuple[NormalizedName, str | None, int | None]


def read_line(line: str) -> Entry:
    name, _, rest = line.rstrip("\n").partition("\t")
    display, _, serial = rest.partition("\t")
    return NormalizedName(name), display or None, int(serial) if serial.isdigit() else None


def _write_line(entry: Entry) -> str:
    name, display, serial = entry
    return f"{name}\t{display or ''}\t{'' if serial is None else serial}\n"


def _filename(fmt: SimpleFormat, packed: bool) -> str:
    return f"upstream.{'json' if fmt.is_json else 'html'}{'.z' if packed else ''}"


def part_key(*inputs: str) -> str:
    """The key of a part made from ``inputs`` (its upstream, the state of its names, its pins,
    the keys of the parts before it)."""
    digest = hashlib.sha256(f"v{_VERSION}".encode())
    for each in inputs:
        digest.update(b"\0" + each.encode())
    return digest.hexdigest()[:24]


# --- sorted input ---------------------------------------------------------------------------


def _is_sorted(fh: IO[str]) -> bool:
    last = ""
    for line in fh:
        if line < last:
            return False
        last = line
    return True


def _sorted_runs(fh: IO[str], workdir: Path, size: int) -> list[Path]:
    """Sorted runs of ``size`` lines each, written to ``workdir``."""
    runs: list[Path] = []
    while True:
        lines = [
            line if line.endswith("\n") else line + "\n" for line in itertools.islice(fh, size)
        ]
        if not lines:
            return runs
        lines.sort()
        run = workdir / f"run-{len(runs)}.txt"
        run.write_text("".join(lines), encoding="utf-8")
        runs.append(run)


def sorted_entries(fh: IO[str], workdir: Path, run_size: int = _SORT_RUN) -> Iterator[Entry]:
    """The entries of a names file by name, once each (the first line of a name wins). PyPI's
    list comes sorted and is streamed; another is merge-sorted through runs in ``workdir``
    (so never held whole: 2M names)."""
    with contextlib.ExitStack() as stack:
        fh.seek(0)
        lines: Iterable[str] = fh
        if not _is_sorted(fh):
            fh.seek(0)
            runs = [
                stack.enter_context(run.open(encoding="utf-8"))
                for run in _sorted_runs(fh, workdir, run_size)
            ]
            lines = heapq.merge(*runs)
        else:
            fh.seek(0)
        last = ""
        for line in lines:
            entry = read_line(line)
            if entry[0] and entry[0] != last:
                last = entry[0]
                yield entry


# --- the part -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    first: str  # its first (smallest) name
    names: tuple[int, int]  # (offset, length) in names.txt
    chunks: tuple[tuple[int, int], ...]  # (offset, length) in each of _FILES
    crcs: tuple[int, ...]  # per format: CRC-32 of its plain file up to this segment's end
    highest: int | None  # the highest serial in it


@dataclass(frozen=True, slots=True)
class Part:
    """One upstream's names, rendered in segments (see the module docstring)."""

    directory: Path
    key: str
    segments: tuple[_Segment, ...]
    firsts: tuple[str, ...] = field(repr=False)

    @classmethod
    def of(cls, directory: Path, key: str, segments: Sequence[_Segment]) -> Part:
        return cls(directory, key, tuple(segments), tuple(s.first for s in segments))

    def entries_of(self, index: int) -> list[Entry]:
        offset, length = self.segments[index].names
        with (self.directory / "names.txt").open("rb") as fh:
            fh.seek(offset)
            return [read_line(line) for line in fh.read(length).decode().splitlines()]

    def segment_of(self, name: str) -> int | None:
        """The segment that would hold ``name`` (by the sorted order), if any."""
        index = bisect.bisect_right(self.firsts, name) - 1
        return index if index >= 0 else None

    def where(self, names: Iterable[str]) -> dict[str, int]:
        """Which of ``names`` this part lists, with the segment of each (reads one segment
        per range of names: O(names asked), never O(names listed))."""
        by_segment: dict[int, set[str]] = {}
        for name in names:
            index = self.segment_of(name)
            if index is not None:
                by_segment.setdefault(index, set()).add(name)
        found: dict[str, int] = {}
        for index, wanted in by_segment.items():
            for name, _display, _serial in self.entries_of(index):
                if name in wanted:
                    found[name] = index
        return found

    def stretch(self, fmt: SimpleFormat, first: int, last: int) -> Stretch:
        """Segments ``first..last`` as rendered: one byte range of each file, and the CRC of
        the range from the CRCs kept up to each segment's end (no byte is read)."""
        slot = _FILES.index((fmt, False))
        start = self.segments[first].chunks[slot][0]
        end_at, end_len = self.segments[last].chunks[slot]
        length = end_at + end_len - start
        zstart = self.segments[first].chunks[slot + 1][0]
        zend_at, zend_len = self.segments[last].chunks[slot + 1]
        crc_slot = _FORMATS.index(fmt)
        before = self.segments[first - 1].crcs[crc_slot] if first else 0
        crc = crc32_of_suffix(self.segments[last].crcs[crc_slot], before, length)
        return Stretch(
            ((self.directory / _filename(fmt, False), start, length),),
            ((self.directory / _filename(fmt, True), zstart, zend_at + zend_len - zstart),),
            crc,
            length,
        )


def _manifest(segments: Sequence[_Segment]) -> bytes:
    rows = [
        [s.first, *s.names, s.highest, [list(c) for c in s.chunks], list(s.crcs)] for s in segments
    ]
    return json.dumps({"version": _VERSION, "segments": rows}, separators=(",", ":")).encode()


def _segments(doc: Any) -> list[_Segment]:
    if doc.get("version") != _VERSION:
        raise ValueError("another layout")
    return [
        _Segment(first, (at, length), tuple((c[0], c[1]) for c in chunks), tuple(crcs), highest)
        for first, at, length, highest, chunks, crcs in doc["segments"]
    ]


def load_part(parts_dir: Path, slot: str, key: str) -> Part | None:
    """The part ``key`` if it was built (by this process or another), else None."""
    directory = parts_dir / f"{slot}-{key}"
    try:
        segments = _segments(json.loads((directory / "manifest.json").read_bytes()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    with contextlib.suppress(OSError):
        os.utime(directory)  # in use: the newest are kept (prune_parts)
    return Part.of(directory, key, segments)


def _render(entries: Sequence[Entry], fmt: SimpleFormat, first: bool) -> bytes:
    return b"".join(
        render_root_entry(name, fmt, first and i == 0, display, serial)
        for i, (name, display, serial) in enumerate(entries)
    )


def _highest(entries: Iterable[Entry]) -> int | None:
    return max((s for _n, _d, s in entries if s is not None), default=None)


def build_part(
    parts_dir: Path, slot: str, key: str, entries: Iterable[Entry], segment: int = SEGMENT
) -> Part:
    """Render ``entries`` (sorted by name, once each) as the part ``key``, ``segment`` names
    per segment; the part another process finished first if there is one."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".building-{slot}-{key}-", dir=parts_dir))
    outs = [(building / _filename(fmt, packed)).open("wb") for fmt, packed in _FILES]
    names_out = (building / "names.txt").open("wb")
    found: list[_Segment] = []
    crcs = [0] * len(_FORMATS)

    def flush(batch: list[Entry]) -> None:
        data = "".join(map(_write_line, batch)).encode()
        names_at = names_out.tell()
        names_out.write(data)
        chunks = []
        for (fmt, packed), out in zip(_FILES, outs, strict=True):
            rendered = _render(batch, fmt, False)
            if not packed:
                crcs[_FORMATS.index(fmt)] = zlib.crc32(rendered, crcs[_FORMATS.index(fmt)])
            chunk = deflate_piece(rendered) if packed else rendered
            chunks.append((out.tell(), len(chunk)))
            out.write(chunk)
        found.append(
            _Segment(
                batch[0][0], (names_at, len(data)), tuple(chunks), tuple(crcs), _highest(batch)
            )
        )

    try:
        batch: list[Entry] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) >= segment:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        for out in (*outs, names_out):
            out.flush()
            os.fsync(out.fileno())
    finally:
        for out in (*outs, names_out):
            out.close()
    (building / "manifest.json").write_bytes(_manifest(found))
    target = parts_dir / f"{slot}-{key}"
    try:
        building.rename(target)
    except OSError:  # another worker built the same key meanwhile: use theirs
        shutil.rmtree(building, ignore_errors=True)
        theirs = load_part(parts_dir, slot, key)
        if theirs is not None:
            return theirs
        raise
    return Part.of(target, key, found)


def prune_parts(parts_dir: Path, slot: str, keep: Iterable[str] = ()) -> None:
    """Remove the parts of ``slot`` but the two newest (a request may still be about to open
    the one before) and ``keep``; and builds a crash left behind."""
    kept = {f"{slot}-{key}" for key in keep}
    mine = []
    now = time.time()
    for path in parts_dir.iterdir():
        with contextlib.suppress(OSError):
            if path.name.startswith(".building-") and now - path.stat().st_mtime > _STALE_BUILD:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(f"{slot}-") and path.name not in kept:
                mine.append((path.stat().st_mtime, path))
    mine.sort()
    for _mtime, path in mine[:-1]:  # with ``keep``: the newest two
        shutil.rmtree(path, ignore_errors=True)


# --- the upstream side of a served root -----------------------------------------------------


# (part key, segment, names left out, first entry) -> (per format, highest serial, any entry)
_SegmentKey = tuple[str, int, frozenset[str], bool]
_Done = tuple[dict[SimpleFormat, Stretch], int | None, bool]


@dataclass(slots=True)
class Rendered:
    """Re-rendered segments (a private name shadows one of their names), kept while the set
    of private names stays: a new version of a private project re-renders none."""

    segments: dict[_SegmentKey, _Done] = field(default_factory=dict)
    entries: int = 0  # how many entries were rendered to make the last one (tests count)


def upstream_stretches(
    parts: Sequence[Part],
    excluded: dict[tuple[int, int], frozenset[str]],
    first: bool,
    previous: Rendered | None = None,
) -> tuple[dict[SimpleFormat, Stretch], int | None, Rendered]:
    """Every part's names in order, per format, minus ``excluded`` ((part, segment) -> the
    names of that segment to leave out: private names). ``first``: nothing precedes them (the
    first JSON entry has no comma). Only the segments with an excluded name (or the first one,
    with ``first``) are rendered again, or taken from ``previous``; the rest are byte ranges.
    Also returns the highest serial listed."""
    out: dict[SimpleFormat, list[Stretch]] = {fmt: [] for fmt in _FORMATS}
    rendered = Rendered()
    highest: int | None = None

    def top(serial: int | None) -> None:
        nonlocal highest
        if serial is not None and (highest is None or serial > highest):
            highest = serial

    for number, part in enumerate(parts):
        run: int | None = None  # first segment of a run of untouched ones
        for index, segment in enumerate(part.segments):
            skip = excluded.get((number, index))
            if skip is None and not first:
                run = index if run is None else run
                top(segment.highest)
                continue
            if run is not None:
                for fmt in _FORMATS:
                    out[fmt].append(part.stretch(fmt, run, index - 1))
                run = None
            cache_key = (part.key, index, skip or frozenset(), first)
            done = rendered.segments.get(cache_key)
            if done is None and previous is not None:
                done = previous.segments.get(cache_key)
            if done is None:
                entries = [e for e in part.entries_of(index) if e[0] not in (skip or ())]
                stretches = {fmt: Stretch.of(_render(entries, fmt, first)) for fmt in _FORMATS}
                done = (stretches, _highest(entries), bool(entries))
                rendered.entries += len(entries)
            rendered.segments[cache_key] = done
            for fmt in _FORMATS:
                out[fmt].append(done[0][fmt])
            top(done[1])
            first = first and not done[2]
        if run is not None:
            for fmt in _FORMATS:
                out[fmt].append(part.stretch(fmt, run, len(part.segments) - 1))
    return {fmt: Stretch.join(out[fmt]) for fmt in _FORMATS}, highest, rendered
