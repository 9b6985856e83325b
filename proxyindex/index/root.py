"""The root list ``/simple/``: private names merged with the upstream's (~930k names, 40 MB).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName

from proxyindex import fsutil
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

__all__ = ["RootIndex"]

log = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE = 60.0  # seconds before a failed upstream list fetch is tried again
_FIRST_FETCH_WAIT = 20.0  # seconds a first /simple/ request waits for the upstream list
_FORMATS = {SimpleFormat.JSON: "root.json", SimpleFormat.HTML: "root.html"}


@dataclass(frozen=True, slots=True)
class _Built:
    private_generation: int
    names_mtime: float


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


def _write_all(
    directory: Path,
    private: Iterable[NormalizedName],
    names_file: Path,
    private_serials: dict[NormalizedName, int] | None = None,
) -> int | None:
    """Render root.{html,json} and their .gz siblings from private names + the names file;
    returns the highest serial listed (the root's ``X-PyPI-Last-Serial``), if any."""
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
        if names_file.exists():
            with names_file.open(encoding="utf-8") as fh:
                for line in fh:
                    entry = _read_line(line)
                    if entry[0] and entry[0] not in taken:
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
    def __init__(
        self,
        directory: Path,
        storage: PrivateStore,
        upstream: UpstreamClient,
        serials: ProjectSerials | None = None,
    ) -> None:
        self.directory = directory
        self.serials = serials
        self.last_serial: int | None = None  # the highest serial the built root lists
        self.names_file = directory / "upstream-names.txt"
        self._storage = storage
        self._upstream = upstream
        self._built: _Built | None = None
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

    async def path(self, fmt: SimpleFormat) -> Path:
        """The prebuilt root file for ``fmt`` (serve with FileResponse: it picks the .gz)."""
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
                names_mtime = await asyncio.to_thread(self._names_mtime)
        await self._ensure_built(names_mtime)
        return self.directory / _FORMATS[SimpleFormat.JSON if fmt.is_json else SimpleFormat.HTML]

    async def _ensure_built(self, names_mtime: float) -> None:
        wanted = _Built(self._storage.generation, names_mtime)
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
        return _write_all(self.directory, private, self.names_file, serials)

    def refresh_in_background(self) -> None:
        recently_failed = time.monotonic() - self._failed_at < _RETRY_AFTER_FAILURE
        if (self._refresh is None or self._refresh.done()) and not recently_failed:
            self._refresh = asyncio.create_task(self._fetch_names())

    async def _fetch_names(self) -> None:
        """Stream the upstream root into the names file, then rebuild."""
        url = str(self._upstream.base)
        started = time.monotonic()
        fh, temp = await asyncio.to_thread(fsutil.open_temp, self.directory)
        count = 0
        try:
            async with self._upstream.open_root(url) as (content_type, chunks):
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
            await asyncio.to_thread(fsutil.commit_replace, temp, self.names_file)
            if self.serials is not None and highest:
                await asyncio.to_thread(self.serials.raise_floor, highest)
            log.info("fetched %d upstream names in %.1fs", count, time.monotonic() - started)
        except UpstreamError as exc:
            self._failed_at = time.monotonic()
            log.warning("could not fetch the upstream root list: %s", exc)
        finally:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(temp.unlink, True)
        await self._ensure_built(await asyncio.to_thread(self._names_mtime))


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
