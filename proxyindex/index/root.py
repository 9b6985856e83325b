"""The root list ``/simple/``: private names merged with every upstream's (PyPI: ~930k names,
40 MB); an upstream without a usable root list contributes the names it has served.

The upstream root is fetched rarely (``upstream.root_ttl``), in the background, streamed to a
names file on disk. Each upstream's names (sorted, once each, minus those of a higher-priority
upstream) are rendered once per refresh, in both formats, plain and deflated, as segments of
a *part* on disk (``index.rootparts``): the only work that grows with the upstream names.

Each served body is a list of pieces (``index.rootbody``, sent by ``web.pieces``):

    header | private names | part 1 (byte ranges) | ... | part k | footer

A private change renders the private names again (their serials change with every upload:
bandersnatch reads them) and nothing else: O(private names). A new private name that an
upstream also lists (private shadows public: listed once) re-renders the one segment that
holds it; a new version of an existing project re-renders no segment (the set of names is
the same). The gzip body is deflate pieces joined into one stream, its CRC combined from the
pieces' CRCs, so no byte of the upstream part is read to serve it. Nothing here holds the
whole list in memory, and no request ever renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.config import UpstreamSource
from proxyindex.errors import UpstreamError
from proxyindex.index.rootbody import RootBody, Stretch, gzip_body, plain_body
from proxyindex.index.rootparts import (
    SEGMENT,
    Entry,
    Part,
    Rendered,
    build_part,
    load_part,
    part_key,
    prune_parts,
    sorted_entries,
    upstream_stretches,
)
from proxyindex.models import is_valid_name, normalize
from proxyindex.private.serials import ProjectSerials
from proxyindex.private.store import PrivateStore
from proxyindex.simple import (
    SimpleFormat,
    parse_root_entries,
    render_root_entry,
    render_root_footer,
    render_root_header,
)
from proxyindex.upstream.client import UpstreamClient

__all__ = ["RootIndex", "RootSource", "open_pieces"]

log = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE = 60.0  # seconds before a failed upstream list fetch is tried again
_FIRST_FETCH_WAIT = 20.0  # seconds a first /simple/ request waits for the upstream list
_FORMATS = (SimpleFormat.HTML, SimpleFormat.JSON)
# What a names file is, for telling a new one from the one a part was made of: an
# atomically replaced file has a new inode (mtime alone may repeat within its resolution).
_FileState = tuple[int, int, int] | None  # (inode, mtime_ns, size); None: no file


def _file_state(path: Path) -> _FileState:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _split_entries(text: str, is_json: bool) -> tuple[str, str]:
    """Cut a streamed chunk after its last complete entry; returns (complete, remainder)."""
    marker = "}" if is_json else "</a>"
    cut = text.rfind(marker)
    if cut == -1:
        return "", text
    cut += len(marker)
    return text[:cut], text[cut:]


@dataclass(frozen=True, slots=True)
class RootSource:
    """One upstream's part of the root list: its names file (or, without a usable one, the
    names it has served) and, for an ``explicit`` upstream, its pins (only those are its)."""

    name: str
    client: UpstreamClient
    names_file: Path
    pins: UpstreamSource | None = None
    served: Callable[[], set[str]] | None = None  # blocking; names it served (no root list)


class _Earlier:
    """Whether a name is listed by the parts before one being built: its names come sorted,
    so each segment of the earlier parts is read at most once."""

    def __init__(self, parts: Sequence[Part]) -> None:
        self._parts = parts
        self._held: dict[int, tuple[int, set[str]]] = {}

    def lists(self, name: str) -> bool:
        for number, part in enumerate(self._parts):
            index = part.segment_of(name)
            if index is None:
                continue
            held = self._held.get(number)
            if held is None or held[0] != index:
                held = index, {entry[0] for entry in part.entries_of(index)}
                self._held[number] = held
            if name in held[1]:
                return True
        return False


@dataclass(frozen=True, slots=True)
class _Upstream:
    """The parts in use and what they were made of."""

    parts: tuple[Part, ...]
    states: tuple[_FileState, ...]
    served: tuple[int, ...]  # per source: the served-names snapshot (RootIndex._served_marks)


@dataclass(frozen=True, slots=True)
class _Built:
    private_generation: int
    states: tuple[_FileState, ...]
    served: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Bodies:
    by_variant: dict[tuple[SimpleFormat, bool], RootBody]
    last_serial: int | None


@contextlib.contextmanager
def _scratch(parts_dir: Path) -> Iterator[Path]:
    """A folder for sorting an unsorted names file (removed after; a crash's, by
    ``prune_parts``)."""
    with tempfile.TemporaryDirectory(prefix=".building-sort-", dir=parts_dir) as name:
        yield Path(name)


def open_pieces(body: RootBody) -> dict[Path, BinaryIO]:
    """Blocking: the files ``body`` refers to, opened (a file removed afterwards is still
    read whole from its handle)."""
    files: dict[Path, BinaryIO] = {}
    try:
        for piece in body.pieces:
            if not isinstance(piece, bytes) and piece[0] not in files:
                files[piece[0]] = piece[0].open("rb")
    except BaseException:
        for fh in files.values():
            fh.close()
        raise
    return files


class RootIndex:
    """The root list over every upstream (``sources`` in order of priority)."""

    def __init__(
        self,
        directory: Path,
        storage: PrivateStore,
        sources: Sequence[RootSource],
        serials: ProjectSerials | None = None,
        *,
        segment: int = SEGMENT,
    ) -> None:
        """``segment``: upstream names per segment of a part (tests use small ones)."""
        self.directory = directory
        self.segment = segment
        self.parts_dir = directory / "parts"
        self.serials = serials
        self.last_serial: int | None = None  # the highest serial the built root lists
        self.parts_built = 0  # parts rendered by this process (rare: an upstream refresh)
        self.rendered_now = 0  # upstream entries the last update rendered again
        self._storage = storage
        self._sources = tuple(sources)
        self._built: _Built | None = None
        self._upstream: _Upstream | None = None
        self._bodies: _Bodies | None = None
        # Per source: bumped when its served names are to be read again (a failed fetch).
        self._served_marks = [0] * len(self._sources)
        self._served_names: dict[int, tuple[int, tuple[str, ...]]] = {}
        # The private names last listed, where each is in the parts, and the segments
        # rendered again for them (kept while the set of names stays).
        self._private: frozenset[NormalizedName] = frozenset()
        self._where: dict[NormalizedName, tuple[int, int] | None] = {}
        self._where_parts: tuple[Part, ...] = ()
        self._rendered: Rendered | None = None
        self._upstream_key: tuple[object, ...] | None = None
        self._upstream_body: tuple[dict[SimpleFormat, Stretch], int | None] | None = None
        self._build_lock = asyncio.Lock()
        self._refresh: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for old in ("root.html", "root.json"):  # the whole-root files of earlier versions
            for each in (directory / old, directory / f"{old}.gz"):
                each.unlink(missing_ok=True)

    async def close(self) -> None:
        for task in self._refresh.values():
            task.cancel()
        await asyncio.gather(*self._refresh.values(), return_exceptions=True)

    def _states(self) -> tuple[_FileState, ...]:
        return tuple(_file_state(source.names_file) for source in self._sources)

    async def body(self, fmt: SimpleFormat, *, packed: bool) -> RootBody:
        """The root for ``fmt``, gzip-compressed if ``packed`` (send it with
        ``web.pieces.PiecesResponse``)."""
        states = await asyncio.to_thread(self._states)
        waiting = []
        now = time.time()
        for source, state in zip(self._sources, states, strict=True):
            # Offline: the names list as cached (copied from the connected site), never fetched.
            config = source.client.config
            names_mtime = state[1] / 1e9 if state is not None else 0.0
            if config.offline or now - names_mtime <= config.root_ttl:
                continue
            self.refresh_in_background(source)
            task = self._refresh.get(source.name)
            if state is None and task is not None:
                waiting.append(task)
        if waiting:
            # Never fetched: an empty list would look like an empty index, so wait for
            # the first fetch (seconds even for PyPI's 930k names), within a bound.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*waiting)), _FIRST_FETCH_WAIT)
            states = await asyncio.to_thread(self._states)
        bodies = await self._ensure_built(states)
        return bodies.by_variant[(SimpleFormat.JSON if fmt.is_json else SimpleFormat.HTML, packed)]

    async def opened(
        self, fmt: SimpleFormat, *, packed: bool
    ) -> tuple[RootBody, dict[Path, BinaryIO]]:
        """The root for ``fmt`` and its files, opened. A part another worker process removed
        meanwhile (it built two newer ones) is made again, once."""
        body = await self.body(fmt, packed=packed)
        try:
            return body, await asyncio.to_thread(open_pieces, body)
        except FileNotFoundError:
            log.info("a part of the root list was removed meanwhile: making it again")
            async with self._build_lock:
                self._upstream = None
                self._built = None
            body = await self.body(fmt, packed=packed)
            return body, await asyncio.to_thread(open_pieces, body)

    async def _ensure_built(self, states: tuple[_FileState, ...]) -> _Bodies:
        wanted = _Built(self._storage.generation, states, tuple(self._served_marks))
        if self._built == wanted and self._bodies is not None:
            return self._bodies
        async with self._build_lock:
            wanted = _Built(self._storage.generation, states, tuple(self._served_marks))
            if self._built == wanted and self._bodies is not None:
                return self._bodies
            upstream = self._upstream
            stale = upstream is None or (upstream.states, upstream.served) != (
                states,
                wanted.served,
            )
            if upstream is None or stale:
                started = time.monotonic()
                made, built = await asyncio.to_thread(self._make_parts, wanted.served)
                self._upstream = upstream = made
                if built:
                    log.info(
                        "root list rebuilt in %.2fs: the upstream names rendered",
                        time.monotonic() - started,
                    )
            started = time.monotonic()
            bodies = await asyncio.to_thread(self._assemble, upstream)
            self._bodies = bodies
            self.last_serial = bodies.last_serial
            # The states the parts were made of (read from the open files): a names file
            # replaced since the stat above is seen by the next request.
            self._built = _Built(wanted.private_generation, upstream.states, upstream.served)
            log.info(
                "root list updated in %.3fs (%d upstream entries rendered again)",
                time.monotonic() - started,
                self.rendered_now,
            )
            return bodies

    # --- the upstream parts (blocking) ------------------------------------------------------

    def _served_snapshot(self, number: int, mark: int) -> tuple[str, ...]:
        held = self._served_names.get(number)
        if held is None or held[0] != mark:
            served = self._sources[number].served
            names = tuple(sorted(normalize(n) for n in served())) if served is not None else ()
            held = mark, names
            self._served_names[number] = held
        return held[1]

    def _make_parts(self, marks: tuple[int, ...]) -> tuple[_Upstream, bool]:
        """Each source's part, found on disk (made earlier, or by another worker) or built:
        O(upstream names), after an upstream refresh only. Returns whether one was built."""
        parts: list[Part] = []
        states: list[_FileState] = []
        built = False
        previous = ""
        for number, source in enumerate(self._sources):
            slot = f"p{number}"
            with contextlib.ExitStack() as stack:
                try:
                    fh = stack.enter_context(source.names_file.open(encoding="utf-8"))
                except FileNotFoundError:
                    fh = None
                if fh is not None:
                    st = os.fstat(fh.fileno())
                    state: _FileState = (st.st_ino, st.st_mtime_ns, st.st_size)
                    what = f"file {state}"
                    served: tuple[str, ...] = ()
                else:
                    state = None
                    served = self._served_snapshot(number, marks[number])
                    what = "served " + hashlib.sha256("\n".join(served).encode()).hexdigest()
                pins = repr(source.pins.projects) if source.pins is not None else "*"
                key = part_key(source.name, what, pins, previous)
                part = load_part(self.parts_dir, slot, key)
                if part is None:
                    workdir = stack.enter_context(_scratch(self.parts_dir))
                    entries: Iterable[Entry] = (
                        sorted_entries(fh, workdir)
                        if fh is not None
                        else ((NormalizedName(n), None, None) for n in served)
                    )
                    earlier = _Earlier(tuple(parts))
                    part = build_part(
                        self.parts_dir,
                        slot,
                        key,
                        (
                            entry
                            for entry in entries
                            if (source.pins is None or source.pins.pins(entry[0]))
                            and not earlier.lists(entry[0])
                        ),
                        self.segment,
                    )
                    built = True
                    self.parts_built += 1
                    prune_parts(self.parts_dir, slot, (key,))
            parts.append(part)
            states.append(state)
            previous = key
        return _Upstream(tuple(parts), tuple(states), marks), built

    # --- the served bodies (blocking) -------------------------------------------------------

    def _private_serials(self, private: frozenset[NormalizedName]) -> dict[NormalizedName, int]:
        """Private projects are stamped with their serials (a project changed since its page
        was last read gets its new serial here): O(private files), stats and known hashes."""
        serials: dict[NormalizedName, int] = {}
        if self.serials is not None:
            for name in private:
                page = self._storage.page(name)
                if page is not None and (stamped := self.serials.stamp(page)).serial is not None:
                    serials[name] = stamped.serial
        return serials

    def _assemble(self, upstream: _Upstream) -> _Bodies:
        """The root's bodies: the private names rendered (O(private names)), the upstream
        side as byte ranges of the parts, re-rendering only segments that hold a private
        name, and only when the set of private names changed."""
        private = self._storage.names()
        if upstream.parts != self._where_parts or private != self._private:
            self._locate(upstream, private)
        excluded: dict[tuple[int, int], set[str]] = {}
        for name in private:
            where = self._where.get(name)
            if where is not None:
                excluded.setdefault(where, set()).add(name)
        frozen = {where: frozenset(names) for where, names in excluded.items()}
        first = not private
        upstream_key = (tuple(p.key for p in upstream.parts), frozenset(frozen.items()), first)
        self.rendered_now = 0
        if self._upstream_key != upstream_key or self._upstream_body is None:
            stretches, highest, self._rendered = upstream_stretches(
                upstream.parts, frozen, first, self._rendered
            )
            self.rendered_now = self._rendered.entries
            self._upstream_body = stretches, highest
            self._upstream_key = upstream_key
        stretches, highest = self._upstream_body
        serials = self._private_serials(private)
        ordered = sorted(private)
        heads = {
            fmt: render_root_header(fmt)
            + b"".join(
                render_root_entry(name, fmt, i == 0, None, serials.get(name))
                for i, name in enumerate(ordered)
            )
            for fmt in _FORMATS
        }
        # The same in every worker process (no set order, no string hashes in it).
        digest = hashlib.sha256("|".join(p.key for p in upstream.parts).encode())
        shadowed = sorted(name for names in frozen.values() for name in names)
        digest.update(f"|{first}|{','.join(shadowed)}|".encode())
        for fmt in _FORMATS:
            digest.update(heads[fmt])
        tag = digest.hexdigest()[:24]
        top = max([*serials.values(), *([highest] if highest is not None else [])], default=None)
        by_variant: dict[tuple[SimpleFormat, bool], RootBody] = {}
        for fmt in _FORMATS:
            whole = Stretch.of(heads[fmt]) + stretches[fmt]
            footer = render_root_footer(fmt)
            kind = "json" if fmt.is_json else "html"
            by_variant[(fmt, False)] = plain_body(whole, footer, f'"root-{tag}-{kind}"', top)
            by_variant[(fmt, True)] = gzip_body(whole, footer, f'"root-{tag}-{kind}-gz"', top)
        return _Bodies(by_variant, top)

    def _locate(self, upstream: _Upstream, private: frozenset[NormalizedName]) -> None:
        """Where each private name is in the parts (for names not looked up yet: one segment
        read per name at most, never the whole list)."""
        if self._where_parts != upstream.parts:
            self._where = {}
            self._where_parts = upstream.parts
        unknown = [name for name in private if name not in self._where]
        found: dict[str, tuple[int, int]] = {}
        for number, part in reversed(list(enumerate(upstream.parts))):
            found.update((n, (number, i)) for n, i in part.where(unknown).items())
        self._where = {name: self._where.get(name, found.get(name)) for name in private}
        self._private = private

    def refresh_in_background(self, source: RootSource | None = None) -> None:
        for each in (source,) if source is not None else self._sources:
            failed_at = self._failed_at.get(each.name, -math.inf)
            recently_failed = time.monotonic() - failed_at < _RETRY_AFTER_FAILURE
            task = self._refresh.get(each.name)
            if (task is None or task.done()) and not recently_failed:
                self._refresh[each.name] = asyncio.create_task(self._fetch_names(each))

    async def _fetch_names(self, source: RootSource) -> None:
        """Stream one upstream's root into its names file, then render its part."""
        upstream = source.client
        url = str(upstream.base)
        started = time.monotonic()
        fh, temp = await asyncio.to_thread(fsutil.open_temp, self.directory)
        count = 0
        try:
            async with upstream.open_root(url) as (content_type, chunks):
                is_json = "json" in content_type
                remainder = ""
                highest = 0
                async for chunk in chunks:
                    # Names are ASCII, so a character cut at a chunk edge cannot hurt one.
                    text = remainder + chunk.decode("utf-8", "replace")
                    complete, remainder = _split_entries(text, is_json)
                    lines, top = _entry_lines(parse_root_entries(complete))
                    highest = max(highest, top)
                    count += len(lines)
                    await asyncio.to_thread(fh.write, "".join(lines).encode())
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(fsutil.commit_replace, temp, source.names_file)
            if self.serials is not None and highest:
                await asyncio.to_thread(self.serials.raise_floor, highest)
            log.info(
                "fetched %d names of upstream %s in %.1fs",
                count,
                source.name,
                time.monotonic() - started,
            )
        except UpstreamError as exc:
            self._failed_at[source.name] = time.monotonic()
            if source.served is not None:
                # Its part is the names it has served: read them anew.
                self._served_marks[self._sources.index(source)] += 1
            log.warning("could not fetch the root list of upstream %s: %s", source.name, exc)
        finally:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(temp.unlink, True)
        await self._ensure_built(await asyncio.to_thread(self._states))


def _entry_lines(entries: Iterable[tuple[str, int | None]]) -> tuple[list[str], int]:
    """Names file lines (normalised, display name when it differs, serial) and the highest
    serial among them (0 if none)."""
    lines = []
    highest = 0
    for shown, serial in entries:
        if not is_valid_name(shown):
            continue
        name = normalize(shown)
        display = shown if shown != name else ""
        if serial is None:
            lines.append(f"{name}\t{display}\n" if display else f"{name}\n")
        else:
            lines.append(f"{name}\t{display}\t{serial}\n")
            highest = max(highest, serial)
    return lines, highest
