"""Issue 9 §2: the root list ``/simple/`` costs O(change), not O(upstream names).

The upstream names are rendered once per upstream refresh, as segments of a part on disk
(``index.rootparts``); a private change renders the private names and refers to byte ranges
of the parts (``index.rootbody``). These tests check that no upstream segment is rewritten
by a private change (inode and mtime of every file of the root folder), count the upstream
entries rendered again, and hold the pieces against a from-scratch render.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import importlib
import json
import random
import shutil
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import NormalizedName

from proxyindex.config import UpstreamSource
from proxyindex.index import root as root_module
from proxyindex.index import rootparts
from proxyindex.index.root import RootIndex, RootSource
from proxyindex.index.rootbody import RootBody, crc32_combine, crc32_of_suffix
from proxyindex.index.rootparts import sorted_entries
from proxyindex.private.serials import ProjectSerials
from proxyindex.private.store import PrivateStore
from proxyindex.simple import (
    SimpleFormat,
    render_root_entry,
    render_root_footer,
    render_root_header,
)
from proxyindex.web import appkeys
from tests.clients import run_twine_upload
from tests.conftest import MakeAppClient, MakeProxy
from tests.fakepypi import FakePyPI
from tests.test_upload import form, upload
from tests.wheelmaker import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"
ANON = {"anonymous_upload": True}
Client = TestClient[Any, Any]


def root_files(cache: Path) -> dict[str, tuple[int, int]]:
    """Every file of the root folder but the names files (which only a fetch writes), with
    its inode and mtime: a rewritten file changes one of them."""
    out = {}
    for path in (cache / "root").rglob("*"):
        if path.is_file() and not path.name.startswith("upstream-names"):
            st = path.stat()
            out[str(path.relative_to(cache))] = (st.st_ino, st.st_mtime_ns)
    return out


async def root_doc(client: Client) -> tuple[dict[str, Any], Any]:
    resp = await client.get("/simple/", headers={"Accept": JSON})
    assert resp.status == 200
    return json.loads(await resp.read()), resp.headers


def listed(doc: dict[str, Any]) -> list[str]:
    return [p["name"] for p in doc["projects"]]


class EntryCounter:
    """Counts ``render_root_entry`` calls for upstream names (the private names are rendered
    by ``index.root`` itself, once per change: O(private names), allowed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, private: Iterable[str]) -> None:
        self.private = set(private)
        self.upstream = 0
        real = render_root_entry

        def counted(name: NormalizedName, *args: Any, **kwargs: Any) -> bytes:
            if name not in self.private:
                self.upstream += 1
            return real(name, *args, **kwargs)

        for module in _modules_rendering_entries():
            monkeypatch.setattr(module, "render_root_entry", counted)


def _modules_rendering_entries() -> list[object]:
    modules: list[object] = [root_module]
    # The code before segments rendered everything in index.root.
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module("proxyindex.index.rootparts"))
    return modules


async def test_a_new_version_of_a_private_project_rewrites_no_upstream_segment(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 3000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    before, first_headers = await root_doc(client)
    files = root_files(tmp_path / "cache")
    counter = EntryCounter(monkeypatch, ["corp-lib"])
    new = make_wheel(tmp_path / "wheels", "corp-lib", "2.0")
    assert (await upload(client, form(new))).status == 200
    after, headers = await root_doc(client)
    assert listed(after) == listed(before) and listed(after).count("corp-lib") == 1
    assert root_files(tmp_path / "cache") == files  # nothing on disk rewritten
    assert counter.upstream == 0  # no upstream entry rendered again
    # ...and the root still follows the private change: bandersnatch reads these serials.
    serial = {p["name"]: p.get("_last-serial") for p in after["projects"]}["corp-lib"]
    old_serial = {p["name"]: p.get("_last-serial") for p in before["projects"]}["corp-lib"]
    assert serial > old_serial
    assert int(headers["X-PyPI-Last-Serial"]) >= serial
    assert headers["ETag"] != first_headers["ETag"]


async def test_a_new_private_name_renders_the_private_names_not_the_upstream_list(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 5000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    assert len(listed((await root_doc(client))[0])) == 5001
    files = root_files(tmp_path / "cache")
    counter = EntryCounter(monkeypatch, ["corp-lib", "corp-other"])
    new = make_wheel(tmp_path / "wheels", "corp-other", "1.0")
    assert (await upload(client, form(new))).status == 200
    names = listed((await root_doc(client))[0])
    assert len(names) == len(set(names)) == 5002
    assert names[:2] == ["corp-lib", "corp-other"]  # private names first
    assert counter.upstream == 0
    assert root_files(tmp_path / "cache") == files
    gz = await client.get("/simple/", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert gz.headers["Content-Encoding"] == "gzip"
    html = gzip.decompress(await gz.read()).decode()
    assert html.count('href="corp-other/"') == 1 and html.count('href="synthetic-') == 5000


async def test_a_private_name_that_shadows_an_upstream_one_is_listed_once_rendering_one_segment(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pypi.root_names = 5000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON, private={"refuse_shadowing_uploads": False})
    await root_doc(client)
    files = root_files(tmp_path / "cache")
    counter = EntryCounter(monkeypatch, ["corp-lib", "synthetic-002500"])
    shadow = make_wheel(tmp_path / "wheels", "synthetic-002500", "1.0")
    assert (await upload(client, form(shadow))).status == 200
    doc, _headers = await root_doc(client)
    names = listed(doc)
    assert names.count("synthetic-002500") == 1 and len(names) == 5001
    assert names.index("synthetic-002500") < names.index("synthetic-000001")  # private first
    assert 0 < counter.upstream <= 2 * rootparts.SEGMENT  # one segment, two formats
    assert root_files(tmp_path / "cache") == files  # rendered in memory, nothing rewritten
    plain = await (await client.get("/simple/", headers={"Accept": JSON})).read()
    packed = await client.get(
        "/simple/", headers={"Accept": JSON, "Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert gzip.decompress(await packed.read()) == plain
    head = await client.head("/simple/", headers={"Accept": JSON, "Accept-Encoding": "identity"})
    assert head.status == 200 and head.headers["Content-Length"] == str(len(plain))
    again = await client.get(
        "/simple/",
        headers={
            "Accept": JSON,
            "Accept-Encoding": "identity",
            "If-None-Match": head.headers["ETag"],
        },
    )
    assert again.status == 304 and not await again.read()
    # A new version of it (same names) renders no upstream segment again.
    counter.upstream = 0
    newer = make_wheel(tmp_path / "wheels", "synthetic-002500", "2.0")
    assert (await upload(client, form(newer))).status == 200
    assert listed((await root_doc(client))[0]) == names
    assert counter.upstream == 0


async def test_a_part_removed_by_another_worker_is_made_again(
    make_app_client: MakeAppClient, fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.root_names = 2000
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client()
    names = listed((await root_doc(client))[0])
    shutil.rmtree(tmp_path / "cache" / "root" / "parts")  # what pruning by another does
    (tmp_path / "cache" / "root" / "parts").mkdir()
    assert listed((await root_doc(client))[0]) == names
    assert client.app[appkeys.ROOT].parts_built >= 2


def _root(url: str) -> tuple[bytes, str]:
    """The JSON root, gzip, on a new connection (so the kernel may hand it to any worker);
    decompressed here, which checks the stream, its CRC and its length."""
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1
        url + "/simple/", headers={"Accept": JSON, "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
        assert resp.headers["Content-Encoding"] == "gzip"
        return gzip.decompress(resp.read()), resp.headers["ETag"]


@pytest.mark.e2e
def test_workers_share_the_root_parts_and_every_one_lists_an_upload(
    make_proxy: MakeProxy, fake_pypi: FakePyPI, tmp_path: Path, client_tmp: Path
) -> None:
    fake_pypi.root_names = 5000
    proxy = make_proxy(
        server={"workers": 3},
        auth={"anonymous_upload": True},
        private={"reserved": ["acme-*"]},
    )
    for body, _etag in [_root(proxy.url) for _ in range(9)]:
        names = listed(json.loads(body))
        assert len(names) == len(set(names)) == 5000
    wheel = make_wheel(tmp_path / "dist", "acme-tool", "1.0")
    run_twine_upload(client_tmp / "up", proxy.upload_url, [wheel], "any", "any")
    after = [_root(proxy.url) for _ in range(9)]
    names = listed(json.loads(after[0][0]))
    assert names[0] == "acme-tool" and len(names) == len(set(names)) == 5001
    assert {body for body, _etag in after} == {after[0][0]}  # every worker, the same bytes
    assert {etag for _body, etag in after} == {after[0][1]}  # and the same ETag
    parts = tmp_path / "proxy0" / "cache" / "root" / "parts"
    assert 1 <= len(list(parts.glob("p0-*"))) <= 2


# --- the pieces against a from-scratch render ---------------------------------------------


class FakeStore:
    """The two things the root reads of private storage: the names and a generation."""

    def __init__(self) -> None:
        self.generation = 0
        self.serials: dict[str, int] = {}

    def set(self, serials: dict[str, int]) -> None:
        self.serials = dict(serials)
        self.generation += 1

    def names(self) -> frozenset[NormalizedName]:
        return frozenset(NormalizedName(n) for n in self.serials)

    def page(self, name: str) -> str:
        return name


class FakeSerials:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def stamp(self, page: str) -> SimpleNamespace:
        return SimpleNamespace(serial=self.store.serials.get(page))


Line = tuple[str, str, int | None]  # name, display ("" if none), serial


def write_names(path: Path, lines: Sequence[Line]) -> None:
    path.write_text(
        "".join(f"{n}\t{d}\t{'' if s is None else s}\n" for n, d, s in lines), encoding="utf-8"
    )


def reference(
    fmt: SimpleFormat,
    private: dict[str, int],
    sources: Sequence[tuple[Sequence[Line], tuple[str, ...] | None]],
) -> tuple[bytes, int | None]:
    """The root rendered from scratch: private names (sorted), then each upstream's names
    (sorted, the first line of a name wins, only its pins if explicit, minus the names of
    the upstreams before it), minus the private names; and its highest serial."""
    entries: list[tuple[str, str | None, int | None]] = [
        (n, None, private[n]) for n in sorted(private)
    ]
    taken = set(private)
    seen: set[str] = set()
    for lines, pins in sources:
        mine: dict[str, Line] = {}
        for line in sorted(f"{n}\t{d}\t{'' if s is None else s}" for n, d, s in lines):
            name, shown, number = line.split("\t")
            if name not in mine and (pins is None or name in pins):
                mine[name] = (name, shown, int(number) if number else None)
        for name, (_n, display, serial) in sorted(mine.items()):
            if name not in seen and name not in taken:
                entries.append((name, display or None, serial))
        seen |= set(mine)
    body = render_root_header(fmt) + b"".join(
        render_root_entry(NormalizedName(n), fmt, i == 0, d, s)
        for i, (n, d, s) in enumerate(entries)
    )
    serials = [s for _n, _d, s in entries if s is not None]
    return body + render_root_footer(fmt), max(serials, default=None)


def materialize(body: RootBody) -> bytes:
    out = bytearray()
    for piece in body.pieces:
        if isinstance(piece, bytes):
            out += piece
        else:
            path, offset, length = piece
            with path.open("rb") as fh:
                fh.seek(offset)
                out += fh.read(length)
    assert len(out) == body.length
    return bytes(out)


def make_index(
    where: Path, store: FakeStore, sources: Sequence[tuple[Path, UpstreamSource | None]]
) -> RootIndex:
    roots = [
        RootSource(f"up{i}", cast(Any, None), names, pins)
        for i, (names, pins) in enumerate(sources)
    ]
    serials = cast(ProjectSerials, FakeSerials(store))
    return RootIndex(where, cast(PrivateStore, store), roots, serials, segment=4)


def check(
    index: RootIndex,
    private: dict[str, int],
    sources: Sequence[tuple[Sequence[Line], tuple[str, ...] | None]],
) -> list[str]:
    """The index's bodies equal the reference render; returns their ETags."""
    upstream, _built = index._make_parts((0,) * len(sources))
    index._upstream = upstream
    bodies = index._assemble(upstream)
    for fmt in (SimpleFormat.HTML, SimpleFormat.JSON):
        expected, serial = reference(fmt, private, sources)
        plain = materialize(bodies.by_variant[(fmt, False)])
        assert plain == expected
        packed = materialize(bodies.by_variant[(fmt, True)])
        assert gzip.decompress(packed) == expected  # the CRC and length of the trailer too
        assert bodies.by_variant[(fmt, False)].serial == serial
        if fmt.is_json:
            json.loads(plain)
    return [body.etag for body in bodies.by_variant.values()]


_names = st.integers(0, 40).map(lambda i: f"n{i:02d}")
_lines = st.lists(
    st.tuples(_names, st.sampled_from(["", "N{}", "n.{}"]), st.none() | st.integers(1, 10**6)),
    max_size=60,
).map(lambda rows: [(n, d.format(n[1:]) if d else "", s) for n, d, s in rows])
_private = st.dictionaries(_names | st.sampled_from(["corp-a", "corp-b"]), st.integers(1, 10**6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=_lines,
    second=_lines,
    pinned=st.booleans(),
    changes=st.lists(_private, min_size=1, max_size=6),
    seed=st.integers(0, 1000),
)
def test_the_pieces_after_any_private_changes_equal_a_full_render(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[Line],
    second: list[Line],
    pinned: bool,
    changes: list[dict[str, int]],
    seed: int,
) -> None:
    where = tmp_path_factory.mktemp("root")
    random.Random(seed).shuffle(first)  # an upstream list in no order: sorted when built
    write_names(where / "first.txt", first)
    write_names(where / "second.txt", second)
    pins = ("n01", "n02", "n03", "n10", "n20", "n30") if pinned else None
    explicit = UpstreamSource(name="up1", url="http://x/", projects=pins or (), explicit=True)
    store = FakeStore()
    index = make_index(
        where / "root",
        store,
        [(where / "first.txt", None), (where / "second.txt", explicit if pinned else None)],
    )
    for private in changes:
        store.set(private)
        check(index, private, [(first, None), (second, pins)])


def test_two_workers_building_the_same_parts_at_once_both_get_them_whole(
    tmp_path: Path,
) -> None:
    lines = [(f"name-{i:05d}", "", i) for i in range(3000)]
    write_names(tmp_path / "names.txt", lines)
    stores = [FakeStore(), FakeStore()]
    for store in stores:
        store.set({"corp-lib": 5, "name-01500": 7})
    (tmp_path / "root" / "parts").mkdir(parents=True)
    (tmp_path / "root" / "parts" / ".building-1-p0-crashed").mkdir()  # a crash's leftovers
    indexes = [make_index(tmp_path / "root", s, [(tmp_path / "names.txt", None)]) for s in stores]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda index: index._make_parts((0,)), indexes))
    assert made[0][0].parts[0].directory == made[1][0].parts[0].directory
    etags = [
        check(index, store.serials, [(lines, None)])
        for index, store in zip(indexes, stores, strict=True)
    ]
    assert etags[0] == etags[1] and len(set(etags[0])) == 4  # one per variant, every worker
    leftovers = [p.name for p in (tmp_path / "root" / "parts").iterdir()]
    assert leftovers.count(made[0][0].parts[0].directory.name) == 1
    assert not [
        name for name in leftovers if name.startswith(".building-") and "crashed" not in name
    ]


def test_a_names_file_replaced_builds_a_new_part_and_old_ones_are_pruned(tmp_path: Path) -> None:
    store = FakeStore()
    store.set({"corp-lib": 1})
    index = make_index(tmp_path / "root", store, [(tmp_path / "names.txt", None)])
    for round_ in range(4):
        lines = [(f"name-{i:03d}", "", None) for i in range(round_ * 10, round_ * 10 + 50)]
        write_names(tmp_path / "names.txt", lines)
        check(index, store.serials, [(lines, None)])
    assert index.parts_built == 4
    assert len(list((tmp_path / "root" / "parts").glob("p0-*"))) == 2  # the newest two


def test_an_unsorted_names_file_is_merge_sorted_in_runs(tmp_path: Path) -> None:
    names = [f"name-{i:04d}" for i in range(1000)]
    random.Random(1).shuffle(names)
    path = tmp_path / "names.txt"
    path.write_text("".join(f"{n}\n" for n in names + names[:10]))
    with path.open(encoding="utf-8") as fh:
        got = [entry[0] for entry in sorted_entries(fh, tmp_path, run_size=64)]
    assert got == sorted(set(names))


@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_crc32_of_a_concatenation_from_the_crcs_of_its_parts(a: bytes, b: bytes) -> None:
    import zlib

    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_of_suffix(zlib.crc32(a + b), zlib.crc32(a), len(b)) == zlib.crc32(b)


async def test_without_sendfile_the_root_pieces_and_a_cached_file_are_read_at_their_offsets(
    make_app_client: MakeAppClient,
    fake_pypi: FakePyPI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS and some platforms have no sendfile: the same bytes must go out through pread."""
    fake_pypi.root_names = 3000
    wheel = fake_pypi.add_wheel("plain-pkg", "1.0")
    make_wheel(tmp_path / "packages", "corp-lib", "1.0")
    client = await make_app_client(auth=ANON)
    with_sendfile, _ = await root_doc(client)
    page = await client.get("/simple/plain-pkg/", headers={"Accept": JSON})
    url = (await page.json())["files"][0]["url"]
    assert (await (await client.get(url)).read()) == wheel.read_bytes()  # now cached

    loop = asyncio.get_running_loop()

    async def no_sendfile(
        self: Any,
        transport: Any,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """As asyncio behaves over TLS: no zero-copy; its own fallback only if asked for."""
        if not fallback:
            raise asyncio.SendfileNotAvailableError("no sendfile here")
        sent: int = await loop._sendfile_fallback(transport, file, offset, count)  # type: ignore[attr-defined]
        return sent

    monkeypatch.setattr(type(loop), "sendfile", no_sendfile)
    without, _ = await root_doc(client)
    assert without == with_sendfile and "corp-lib" in listed(without)
    packed = await client.get("/simple/", headers={"Accept": JSON, "Accept-Encoding": "gzip"})
    assert json.loads(await packed.read()) == with_sendfile  # aiohttp inflates it
    cached = await client.get(url)
    assert cached.status == 200 and await cached.read() == wheel.read_bytes()
