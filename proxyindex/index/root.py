"""The root list ``/simple/``: private names merged with every upstream's (PyPI: ~930k names,
40 MB); an upstream without a usable root list contributes the names it has served.

The upstream root is fetched rarely (``upstream.root_ttl``), in the background, streamed to a
names file on disk; the merged HTML and JSON (plain and gzip) are rebuilt from it in a thread
whenever it or the private names change, and served as files. Nothing here holds the whole
list in memory, and no request ever builds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import fsutil
from proxyindex.config import UpstreamSource
from proxyindex.errors import UpstreamError
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

__all__ = ["RootIndex", "RootSource"]

log = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE = 60.0  # seconds before a failed upstream list fetch is tried again
_FIRST_FETCH_WAIT = 20.0  # seconds a first /simple/ request waits for the upstream list
_FORMATS = {SimpleFormat.JSON: "root.json", SimpleFormat.HTML: "root.html"}


@dataclass(frozen=True, slots=True)
class _Built:
    private_generation: int
    names_mtimes: tuple[float, ...]


def _split_entries(text: str, is_json: bool) -> tuple[str, str]:
    """Cut a streamed chunk after its last complete entry; returns (complete, remainder)."""
    marker = "}" if is_json else "</a>"
    cut = text.rfind(marker)
    if cut == -1:
        return "", text
    cut += len(marker)
    return text[:cut], text[cut:]


# A line of the names file: "normalised\tdisplay\tserial", the last two optional (empty when
# the upstream did not say; files written before they were kept have the name alone).
_Entry = tuple[NormalizedName, str | None, int | None]


def _read_line(line: str) -> _Entry:
    name, _, rest = line.rstrip("\n").partition("\t")
    display, _, serial = rest.partition("\t")
    return NormalizedName(name), display or None, int(serial) if serial.isdigit() else None


@dataclass(frozen=True, slots=True)
class RootSource:
    """One upstream's part of the root list: its names file (or, without a usable one, the
    names it has served) and, for an ``explicit`` upstream, its pins (only those are its)."""

    name: str
    client: UpstreamClient
    names_file: Path
    pins: UpstreamSource | None = None
    served: Callable[[], set[str]] | None = None  # blocking; names it served (no root list)

    def names(self) -> Iterator[_Entry]:
        """Blocking: its names (with display name and serial when known), streamed from the
        file when it has one."""
        if self.names_file.exists():
            with self.names_file.open(encoding="utf-8") as fh:
                for line in fh:
                    entry = _read_line(line)
                    if entry[0] and (self.pins is None or self.pins.pins(entry[0])):
                        yield entry
        elif self.served is not None:
            yield from ((NormalizedName(n), None, None) for n in sorted(self.served()))


def _upstream_names(sources: Sequence[RootSource]) -> Iterator[_Entry]:
    """Every upstream's names once, in order of priority. The first list (PyPI's: 930k names)
    is streamed, never held; the later ones (an extra index: hundreds) are held in a dict to
    leave out the names an earlier list already gave."""
    if not sources:
        return
    later: dict[NormalizedName, _Entry] = {}
    for source in reversed(sources[1:]):  # an earlier upstream's entry wins
        later.update((entry[0], entry) for entry in source.names())
    for entry in sources[0].names():
        later.pop(entry[0], None)
        yield entry
    yield from later.values()


def _write_all(
    directory: Path,
    private: Iterable[NormalizedName],
    sources: Sequence[RootSource],
    private_serials: dict[NormalizedName, int] | None = None,
) -> int | None:
    """Render root.{html,json} and their .gz siblings from private names + every upstream's
    names; returns the highest serial listed (the root's ``X-PyPI-Last-Serial``), if any."""
    private_set = sorted(set(private))
    serials = private_serials or {}
    highest: int | None = None
    outputs = []
    for fmt, filename in _FORMATS.items():
        plain, plain_tmp = fsutil.open_temp(directory)
        packed_fh, packed_tmp = fsutil.open_temp(directory)
        packed = gzip.GzipFile(fileobj=packed_fh, mode="wb", compresslevel=6, mtime=0)
        outputs.append((fmt, filename, plain, plain_tmp, packed, packed_fh, packed_tmp))

    def emit(data: bytes, fmt: SimpleFormat) -> None:
        for out_fmt, _name, plain, _pt, packed, _pf, _pkt in outputs:
            if out_fmt is fmt:
                plain.write(data)
                packed.write(data)

    def names() -> Iterator[_Entry]:
        for name in private_set:
            yield name, None, serials.get(name)
        taken = set(private_set)
        for entry in _upstream_names(sources):
            if entry[0] not in taken:
                yield entry

    for fmt in _FORMATS:
        emit(render_root_header(fmt), fmt)
    first = True
    buffers: dict[SimpleFormat, list[bytes]] = {fmt: [] for fmt in _FORMATS}
    for name, display, serial in names():
        if serial is not None and (highest is None or serial > highest):
            highest = serial
        for fmt in _FORMATS:
            buffers[fmt].append(render_root_entry(name, fmt, first, display, serial))
            if len(buffers[fmt]) >= 4096:
                emit(b"".join(buffers[fmt]), fmt)
                buffers[fmt].clear()
        first = False
    for fmt in _FORMATS:
        emit(b"".join(buffers[fmt]), fmt)
        emit(render_root_footer(fmt), fmt)
    for _fmt, filename, plain, plain_tmp, packed, packed_fh, packed_tmp in outputs:
        plain.close()
        packed.close()
        packed_fh.close()
        fsutil.commit_replace(packed_tmp, directory / f"{filename}.gz")
        fsutil.commit_replace(plain_tmp, directory / filename)
    return highest


class RootIndex:
    """The root list over every upstream (``sources`` in order of priority)."""

    def __init__(
        self,
        directory: Path,
        storage: PrivateStore,
        sources: Sequence[RootSource],
        serials: ProjectSerials | None = None,
    ) -> None:
        self.directory = directory
        self.serials = serials
        self.last_serial: int | None = None  # the highest serial the built root lists
        self._storage = storage
        self._sources = tuple(sources)
        self._built: _Built | None = None
        self._build_lock = asyncio.Lock()
        self._refresh: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def names_file(self) -> Path:
        """The first upstream's names file (the only one with a single upstream)."""
        return self._sources[0].names_file

    async def close(self) -> None:
        for task in self._refresh.values():
            task.cancel()
        await asyncio.gather(*self._refresh.values(), return_exceptions=True)

    def _names_mtimes(self) -> tuple[float, ...]:
        mtimes = []
        for source in self._sources:
            try:
                mtimes.append(source.names_file.stat().st_mtime)
            except FileNotFoundError:
                mtimes.append(0.0)
        return tuple(mtimes)

    async def path(self, fmt: SimpleFormat) -> Path:
        """The prebuilt root file for ``fmt`` (serve with FileResponse: it picks the .gz)."""
        mtimes = await asyncio.to_thread(self._names_mtimes)
        waiting = []
        for source, names_mtime in zip(self._sources, mtimes, strict=True):
            # Offline: the names list as cached (copied from the connected site), never fetched.
            config = source.client.config
            if config.offline or time.time() - names_mtime <= config.root_ttl:
                continue
            self.refresh_in_background(source)
            task = self._refresh.get(source.name)
            if not names_mtime and task is not None:
                waiting.append(task)
        if waiting:
            # Never fetched: an empty list would look like an empty index, so wait for
            # the first fetch (seconds even for PyPI's 930k names), within a bound.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*waiting)), _FIRST_FETCH_WAIT)
            mtimes = await asyncio.to_thread(self._names_mtimes)
        await self._ensure_built(mtimes)
        return self.directory / _FORMATS[SimpleFormat.JSON if fmt.is_json else SimpleFormat.HTML]

    async def _ensure_built(self, mtimes: tuple[float, ...]) -> None:
        wanted = _Built(self._storage.generation, mtimes)
        if self._built == wanted:
            return
        async with self._build_lock:
            if self._built == wanted:
                return
            started = time.monotonic()
            self.last_serial = await asyncio.to_thread(self._write, self._storage.names())
            self._built = wanted
            log.info("root list rebuilt in %.2fs", time.monotonic() - started)

    def _write(self, private: frozenset[NormalizedName]) -> int | None:
        """Blocking. Private projects are stamped with their serials first (a project changed
        since its page was last read gets its new serial here): O(private files), stats and
        known hashes only."""
        serials: dict[NormalizedName, int] = {}
        if self.serials is not None:
            for name in private:
                page = self._storage.page(name)
                if page is not None and (stamped := self.serials.stamp(page)).serial is not None:
                    serials[name] = stamped.serial
        return _write_all(self.directory, private, self._sources, serials)

    def refresh_in_background(self, source: RootSource | None = None) -> None:
        for each in (source,) if source is not None else self._sources:
            failed_at = self._failed_at.get(each.name, -math.inf)
            recently_failed = time.monotonic() - failed_at < _RETRY_AFTER_FAILURE
            task = self._refresh.get(each.name)
            if (task is None or task.done()) and not recently_failed:
                self._refresh[each.name] = asyncio.create_task(self._fetch_names(each))

    async def _fetch_names(self, source: RootSource) -> None:
        """Stream one upstream's root into its names file, then rebuild."""
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
                self._built = None  # its part is the names it has served: list them anew
            log.warning("could not fetch the root list of upstream %s: %s", source.name, exc)
        finally:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(temp.unlink, True)
        await self._ensure_built(await asyncio.to_thread(self._names_mtimes))


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
