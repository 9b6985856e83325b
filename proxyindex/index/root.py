"""The root list ``/simple/``: private names merged with the upstream's (~930k names, 40 MB).

The upstream root is fetched rarely (``upstream.root_ttl``), in the background, streamed to a
names file on disk, sorted and without duplicates ("the sorted upstream names": the one input
of the upstream side, whatever produced it). Nothing here holds the whole list in memory, and
no request ever renders it.

Each served body (HTML and JSON, plain and gzip) is a list of pieces (``RootBody``), sent in
order by ``web.responses.PiecesResponse``:

    header | private names | upstream segment 1 | ... | upstream segment k | footer

The upstream segments (1,024 names each, rendered and deflated once per upstream refresh: the
only work that grows with the upstream list, 12 s at 2M names) are files in a *part* folder
shared by the worker processes, and a body refers to byte ranges of them. A change of the
private names (a new private project; a new version of an existing one changes nothing)
renders the private names, re-renders only the segments that hold a private name (a private
name shadows the upstream's: listed once), and refers to every other segment as it is. The
gzip body is raw deflate segments, each flushed to a byte boundary (``Z_SYNC_FLUSH``) by a
compressor of its own, so they join into one valid stream; the CRC-32 of its trailer is
combined from CRCs kept per segment (``crc32_combine``), so no upstream byte is read. A private
change thus costs O(private names + segments touched), where it cost a full render and
compression (0.4-0.7 s at 100k upstream names, 11-12 s at 2M): 20 ms at 700k names.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import math
import os
import pickle
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.errors import UpstreamError
from proxyindex.models import is_valid_name, normalize
from proxyindex.private.storage import PrivateStorage
from proxyindex.simple import (
    SimpleFormat,
    parse_root_names,
    render_root_entry,
    render_root_footer,
    render_root_header,
)
from proxyindex.upstream.client import UpstreamClient

__all__ = ["RootIndex", "UpstreamPart", "assemble", "build_upstream_part", "sort_names_file"]

log = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE = 60.0  # seconds before a failed upstream list fetch is tried again
_FIRST_FETCH_WAIT = 20.0  # seconds a first /simple/ request waits for the upstream list
_FORMATS = {SimpleFormat.JSON: "root.json", SimpleFormat.HTML: "root.html"}
_SEGMENT = 1024  # upstream names per pre-rendered segment: ~2 ms to render one again
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, mtime 0, Unix


def _deflate(data: bytes, *, last: bool) -> bytes:
    """Raw deflate of ``data`` by a compressor of its own: byte-aligned and free of
    back-references to anything before it, so such pieces concatenate into one stream."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


@dataclass(frozen=True, slots=True)
class _Segment:
    first: str  # its first (smallest) name
    names: tuple[int, int]  # (offset, length) in the part's names.txt
    chunks: tuple[tuple[int, int], ...]  # (offset, length) in each of _part_files()
    crcs: tuple[int, ...]  # per part file: CRC-32 of its plain bytes up to this segment's end


def _name(fmt: SimpleFormat, packed: bool) -> str:
    return f"upstream.{'json' if fmt.is_json else 'html'}{'.z' if packed else ''}"


def _part_files() -> list[tuple[SimpleFormat, bool, str]]:
    return [(fmt, packed, _name(fmt, packed)) for fmt in _FORMATS for packed in (False, True)]


@dataclass(frozen=True, slots=True)
class UpstreamPart:
    """The upstream names rendered once, as segments (see the module docstring)."""

    directory: Path
    key: str
    segments: tuple[_Segment, ...]
    firsts: tuple[str, ...]

    @classmethod
    def of(cls, directory: Path, key: str, segments: Iterable[_Segment]) -> UpstreamPart:
        held = tuple(segments)
        return cls(directory, key, held, tuple(s.first for s in held))

    def names_of(self, index: int) -> list[str]:
        offset, length = self.segments[index].names
        with (self.directory / "names.txt").open("rb") as fh:
            fh.seek(offset)
            return fh.read(length).decode().splitlines()

    def segment_of(self, name: str) -> int | None:
        """The segment that would hold ``name`` (by the sorted order), if any."""
        index = bisect.bisect_right(self.firsts, name) - 1
        return index if index >= 0 else None


def _names_key(names_file: Path) -> str | None:
    try:
        st = names_file.stat()
    except FileNotFoundError:
        return None
    return f"{st.st_mtime_ns}-{st.st_size}"


def sort_names_file(names_file: Path) -> None:
    """Sort a names file and drop duplicates (in memory: only for an upstream whose list is
    not sorted already; PyPI's is sorted by normalised name, and is streamed as it comes)."""
    with names_file.open(encoding="utf-8") as fh:
        names = sorted({line.rstrip("\n") for line in fh} - {""})
    fh_out, temp = fsutil.open_temp(names_file.parent)
    with fh_out:
        fh_out.write("".join(f"{name}\n" for name in names).encode())
    fsutil.commit_replace(temp, names_file)


def _read_names(names_file: Path) -> Iterator[str]:
    with names_file.open(encoding="utf-8") as fh:
        for line in fh:
            name = line.rstrip("\n")
            if name:
                yield name


def build_upstream_part(names_file: Path, parts_dir: Path) -> UpstreamPart | None:
    """The rendered segments of the sorted names in ``names_file`` (built once per version of
    the file, in a folder of its own, shared by the worker processes); None without names."""
    key = _names_key(names_file)
    if key is None:
        return None
    target = parts_dir / key
    index = target / "index.pickle"
    with contextlib.suppress(FileNotFoundError, pickle.UnpicklingError, EOFError, ValueError):
        segments = pickle.loads(index.read_bytes())  # noqa: S301 - our own file
        return UpstreamPart.of(target, key, segments)
    started = time.monotonic()
    building = parts_dir / f".building-{os.getpid()}-{key}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    files = _part_files()
    outs = [(building / filename).open("wb") for _fmt, _packed, filename in files]
    names_out = (building / "names.txt").open("wb")
    found: list[_Segment] = []
    crcs = [0] * len(files)
    try:
        batch: list[str] = []

        def flush() -> None:
            data = "".join(f"{n}\n" for n in batch).encode()
            names_at = names_out.tell()
            names_out.write(data)
            chunks = []
            rendered: dict[SimpleFormat, bytes] = {}
            for (fmt, packed, _filename), out in zip(files, outs, strict=True):
                if fmt not in rendered:
                    rendered[fmt] = b"".join(
                        render_root_entry(NormalizedName(n), fmt, False) for n in batch
                    )
                chunk = _deflate(rendered[fmt], last=False) if packed else rendered[fmt]
                chunks.append((out.tell(), len(chunk)))
                out.write(chunk)
            for slot, (fmt, _packed, _filename) in enumerate(files):
                crcs[slot] = zlib.crc32(rendered[fmt], crcs[slot])
            found.append(_Segment(batch[0], (names_at, len(data)), tuple(chunks), tuple(crcs)))
            batch.clear()

        for name in _read_names(names_file):
            batch.append(name)
            if len(batch) >= _SEGMENT:
                flush()
        if batch:
            flush()
    finally:
        names_out.close()
        for out in outs:
            out.close()
    (building / "index.pickle").write_bytes(pickle.dumps(found))
    try:
        building.rename(target)
    except OSError:  # another worker built the same version meanwhile: use theirs
        shutil.rmtree(building, ignore_errors=True)
    # The newest two are kept: a response may still be about to open the previous one.
    older = sorted(
        (p for p in parts_dir.iterdir() if p.name != key and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in older[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    log.info(
        "root list rebuilt in %.2fs: %d upstream names rendered",
        time.monotonic() - started,
        sum(1 for _ in _read_names(target / "names.txt")),
    )
    return UpstreamPart.of(target, key, found)


def shadowed(part: UpstreamPart, names: Iterable[str]) -> set[str]:
    """Which of ``names`` the upstream list holds (reads one segment per name's range)."""
    by_segment: dict[int, list[str]] = {}
    for name in names:
        index = part.segment_of(name)
        if index is not None:
            by_segment.setdefault(index, []).append(name)
    found: set[str] = set()
    for index, wanted in by_segment.items():
        found.update(set(part.names_of(index)) & set(wanted))
    return found


# --- CRC-32 of a concatenation (zlib's crc32_combine, which Python does not expose) ---------

_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order, as zlib)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()  # x^(2^k) mod p, k = 0..31: constants, computed once


def _x8nmodp(n: int) -> int:
    """x^(8n) mod p: what appending n bytes does to a CRC."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B): ~0.1 ms, whatever the lengths."""
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2


# --- the served bodies -----------------------------------------------------------------------

Piece = bytes | tuple[Path, int, int]  # bytes, or (file, offset, length)


@dataclass(frozen=True, slots=True)
class RootBody:
    """One served variant of the root (a format, plain or gzip): a list of pieces, sent in
    order, most of them byte ranges of the upstream part's files."""

    pieces: tuple[Piece, ...]
    length: int
    etag: str


class _Body:
    """Pieces of one body being put together, with the CRC-32 and length of the plain text
    (the gzip trailer needs them)."""

    def __init__(self) -> None:
        self.plain: list[Piece] = []
        self.packed: list[Piece] = [_GZIP_HEADER]
        self.crc = 0
        self.size = 0

    def render(self, data: bytes, *, last: bool = False) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.plain.append(data)
        self.packed.append(_deflate(data, last=last))

    def copy(self, part: UpstreamPart, fmt: SimpleFormat, first: int, last: int) -> None:
        """Segments ``first..last`` as they were rendered: two byte ranges, and the CRC of
        the range from the CRCs kept up to each segment's end (no byte is read)."""
        for packed, out in ((False, self.plain), (True, self.packed)):
            slot = _part_files().index((fmt, packed, _name(fmt, packed)))
            start = part.segments[first].chunks[slot][0]
            end_at, end_len = part.segments[last].chunks[slot]
            length = end_at + end_len - start
            out.append((part.directory / _name(fmt, packed), start, length))
            if packed:
                continue
            upto = part.segments[last].crcs[slot]
            if first:  # crc(range) = crc(before + range) ^ shift(crc(before), len(range))
                before = part.segments[first - 1].crcs[slot]
                upto ^= _multmodp(_x8nmodp(length), before)
            self.crc = crc32_combine(self.crc, upto, length)
            self.size += length

    def bodies(self, tag: str) -> tuple[RootBody, RootBody]:
        self.packed.append(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        return (
            RootBody(tuple(self.plain), self.size, f'"{tag}"'),
            RootBody(tuple(self.packed), sum(map(_piece_length, self.packed)), f'"{tag}-gz"'),
        )


def _piece_length(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece[2]


def _plan(count: int, touched: set[int]) -> list[tuple[bool, int, int]]:
    """Segments ``0..count-1`` as steps ``(render, first, last)``: runs of untouched segments
    are referenced at once, each touched one is rendered again."""
    steps: list[tuple[bool, int, int]] = []
    for index in range(count):
        if index in touched:
            steps.append((True, index, index))
        elif steps and not steps[-1][0]:
            steps[-1] = (False, steps[-1][1], index)
        else:
            steps.append((False, index, index))
    return steps


def assemble(
    private: Iterable[NormalizedName],
    part: UpstreamPart | None,
    excluded: Iterable[str],
) -> tuple[dict[tuple[SimpleFormat, bool], RootBody], int]:
    """The root's bodies, by (format, gzip); and how many entries were rendered: the private
    names, plus the names of the upstream segments that hold one of ``excluded`` (private
    names the upstream list also has). The rest is referenced, never read or rendered."""
    private_sorted = sorted(set(private))
    skip = set(excluded)
    steps: list[tuple[bool, int, int]] = []
    if part is not None:
        touched = {i for i in (part.segment_of(n) for n in skip) if i is not None}
        if not private_sorted and part.segments:
            touched.add(0)  # its first JSON entry must go without the leading comma
        steps = _plan(len(part.segments), touched)
    digest = hashlib.sha256(f"{part.key if part else ''}|{','.join(sorted(skip))}".encode())
    rendered = 0
    bodies: dict[tuple[SimpleFormat, bool], RootBody] = {}
    for fmt in _FORMATS:
        out = _Body()
        head = render_root_header(fmt) + b"".join(
            render_root_entry(n, fmt, i == 0) for i, n in enumerate(private_sorted)
        )
        digest.update(head)
        out.render(head)
        rendered += len(private_sorted)
        first = not private_sorted
        for render, low, high in steps:
            assert part is not None
            if not render:
                out.copy(part, fmt, low, high)
                continue
            names = [n for n in part.names_of(low) if n not in skip]
            out.render(
                b"".join(
                    render_root_entry(NormalizedName(n), fmt, first and i == 0)
                    for i, n in enumerate(names)
                )
            )
            first = first and not names
            rendered += len(names)
        out.render(render_root_footer(fmt), last=True)
        tag = f"root-{digest.hexdigest()[:24]}-{'json' if fmt.is_json else 'html'}"
        bodies[(fmt, False)], bodies[(fmt, True)] = out.bodies(tag)
    return bodies, rendered


@dataclass(frozen=True, slots=True)
class _Built:
    names_version: int  # of private storage's set of names
    part_key: str | None


class RootIndex:
    def __init__(self, directory: Path, storage: PrivateStorage, upstream: UpstreamClient) -> None:
        self.directory = directory
        self.names_file = directory / "upstream-names.txt"
        self.parts_dir = directory / "parts"
        self._storage = storage
        self._upstream = upstream
        self._built: _Built | None = None
        self._bodies: dict[tuple[SimpleFormat, bool], RootBody] = {}
        self._part: UpstreamPart | None = None
        self._in_upstream: dict[str, bool] = {}  # private name -> on the upstream list (part)
        self._build_lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None
        self._failed_at = -math.inf
        directory.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)

    def _names_mtime(self) -> float:
        try:
            return self.names_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    async def body(self, fmt: SimpleFormat, *, packed: bool) -> RootBody:
        """The root for ``fmt``, gzip-compressed if ``packed`` (send it with
        ``web.responses.PiecesResponse``)."""
        names_mtime = await asyncio.to_thread(self._names_mtime)
        # Offline: the names list as cached (copied from the connected site), never fetched.
        offline = self._upstream.config.offline
        if not offline and time.time() - names_mtime > self._upstream.config.root_ttl:
            self.refresh_in_background()
            if not names_mtime and self._refresh is not None:
                # Never fetched: an empty list would look like an empty index, so wait for
                # the first fetch (seconds even for PyPI's 930k names), within a bound.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._refresh), _FIRST_FETCH_WAIT)
        await self._ensure_built()
        return self._bodies[(SimpleFormat.JSON if fmt.is_json else SimpleFormat.HTML, packed)]

    async def _ensure_built(self) -> None:
        """Bring the root up to date with the private names and the upstream list.

        A new version of an existing project leaves the set of names, and so the root,
        alone; a new private name re-renders the private part (module docstring)."""
        key = await asyncio.to_thread(_names_key, self.names_file)
        wanted = _Built(self._storage.names_version, key)
        if self._built == wanted:
            return
        async with self._build_lock:
            key = await asyncio.to_thread(_names_key, self.names_file)
            wanted = _Built(self._storage.names_version, key)
            if self._built == wanted:
                return
            started = time.monotonic()
            if self._part is None or self._part.key != key:
                self._part = await asyncio.to_thread(
                    build_upstream_part, self.names_file, self.parts_dir
                )
                self._in_upstream = {}
            self._bodies, rendered = await asyncio.to_thread(self._assemble)
            self._built = wanted
            log.info(
                "root list updated in %.3fs (%d entries rendered)",
                time.monotonic() - started,
                rendered,
            )

    def _assemble(self) -> tuple[dict[tuple[SimpleFormat, bool], RootBody], int]:
        private = self._storage.names()
        part = self._part
        if part is not None:
            unknown = [n for n in private if n not in self._in_upstream]
            found = shadowed(part, unknown)
            self._in_upstream.update((n, n in found) for n in unknown)
        excluded = {n for n in private if self._in_upstream.get(n)}
        return assemble(private, part, excluded)

    def refresh_in_background(self) -> None:
        recently_failed = time.monotonic() - self._failed_at < _RETRY_AFTER_FAILURE
        if (self._refresh is None or self._refresh.done()) and not recently_failed:
            self._refresh = asyncio.create_task(self._fetch_names())

    async def _fetch_names(self) -> None:
        """Stream the upstream root into the names file (sorted, no duplicates), then
        rebuild."""
        url = str(self._upstream.base)
        started = time.monotonic()
        fh, temp = await asyncio.to_thread(fsutil.open_temp, self.directory)
        count = 0
        order = _Order()
        try:
            async with self._upstream.open_root(url) as (content_type, chunks):
                is_json = "json" in content_type
                remainder = ""
                async for chunk in chunks:
                    # Names are ASCII, so a character cut at a chunk edge cannot hurt one.
                    text = remainder + chunk.decode("utf-8", "replace")
                    complete, remainder = _split_entries(text, is_json)
                    lines = order.take(_normalized(parse_root_names(complete)))
                    count += len(lines)
                    await asyncio.to_thread(fh.write, "".join(lines).encode())
            await asyncio.to_thread(fh.close)
            if not order.sorted:
                log.info("the upstream root list is not sorted by name: sorting it")
                await asyncio.to_thread(sort_names_file, temp)
            await asyncio.to_thread(fsutil.commit_replace, temp, self.names_file)
            log.info("fetched %d upstream names in %.1fs", count, time.monotonic() - started)
        except UpstreamError as exc:
            self._failed_at = time.monotonic()
            log.warning("could not fetch the upstream root list: %s", exc)
        finally:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(temp.unlink, True)
        await self._ensure_built()


class _Order:
    """Follows a streamed list of names: drops a repeat of the name just before (PyPI's list,
    normalised, may hold two spellings side by side) and notes whether it stays sorted."""

    def __init__(self) -> None:
        self.last = ""
        self.sorted = True

    def take(self, names: Iterable[str]) -> list[str]:
        lines = []
        for name in names:
            if name == self.last:
                continue
            if name < self.last:
                self.sorted = False
            self.last = name
            lines.append(f"{name}\n")
        return lines


def _split_entries(text: str, is_json: bool) -> tuple[str, str]:
    """Cut a streamed chunk after its last complete entry; returns (complete, remainder)."""
    marker = "}" if is_json else "</a>"
    cut = text.rfind(marker)
    if cut == -1:
        return "", text
    cut += len(marker)
    return text[:cut], text[cut:]


def _normalized(names: Iterable[str]) -> list[str]:
    return [normalize(name) for name in names if is_valid_name(name)]
