"""A fake PyPI for the benchmarks: serves a folder of real wheels over the simple API.

- PEP 503 HTML and PEP 691 JSON project pages (content negotiation on ``Accept``, ``?format=``),
  ``sha256`` hashes, ``requires-python``, PEP 658/714 ``.metadata`` files extracted from the
  wheels, sizes and upload times (PEP 700), ETags with ``If-None-Match`` -> 304.
- A root listing of N synthetic names plus the real ones, prebuilt to files at start and
  streamed from disk (sendfile), never built per request.
- A fixed added latency on every answer (default 50 ms), like an internet round trip.
- A request counter: ``GET /_stats`` (JSON) and ``POST /_stats/reset``; neither is delayed or
  counted.

Run it as ``python benchmarks/fakeupstream.py --wheels DIR --workdir DIR [--port 0]``; it prints
``fakeupstream: listening on http://127.0.0.1:PORT`` to stderr once bound.
``--export-static OUT`` instead writes a static copy (pages + files) for nginx and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.parser
import hashlib
import html
import json
import os
import re
import shutil
import signal
import sys
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

JSON_CT = "application/vnd.pypi.simple.v1+json"
HTML_CT = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"
UPLOAD_TIME = "2026-01-01T00:00:00.000000Z"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Dist:
    filename: str
    project: str
    version: str
    path: Path
    size: int
    sha256: str
    metadata: bytes
    metadata_sha256: str
    requires_python: str | None


def read_wheel(path: Path) -> Dist:
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path) as zf:
        meta_names = [
            n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        ]
        if len(meta_names) != 1:
            raise ValueError(f"{path.name}: expected one .dist-info/METADATA")
        metadata = zf.read(meta_names[0])
    parsed = email.parser.BytesHeaderParser().parsebytes(metadata)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Dist(
        filename=path.name,
        project=normalize(name),
        version=version,
        path=path,
        size=path.stat().st_size,
        sha256=digest.hexdigest(),
        metadata=metadata,
        metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        requires_python=parsed.get("Requires-Python"),
    )


def scan_wheels(folder: Path) -> list[Dist]:
    return [read_wheel(p) for p in sorted(folder.glob("*.whl"))]


@dataclass
class FileEntry:
    filename: str
    url: str
    sha256: str
    size: int
    requires_python: str | None
    metadata_sha256: str | None


def project_entries(dists: Iterable[Dist], file_base: str, extra_files: int) -> list[FileEntry]:
    """The real wheels, plus ``extra_files`` fake old sdists to make pages PyPI-sized."""
    entries: list[FileEntry] = []
    dists = list(dists)
    if dists and extra_files:
        stem = dists[0].filename.split("-")[0]
        for i in range(extra_files):
            fn = f"{stem}-0.0.{i}.tar.gz"
            entries.append(
                FileEntry(
                    fn,
                    f"{file_base}missing/{fn}",
                    hashlib.sha256(fn.encode()).hexdigest(),
                    1000 + i,
                    None,
                    None,
                )
            )
    for d in dists:
        entries.append(
            FileEntry(
                d.filename,
                file_base + d.filename,
                d.sha256,
                d.size,
                d.requires_python,
                d.metadata_sha256,
            )
        )
    return entries


def project_json(project: str, entries: list[FileEntry]) -> bytes:
    files = []
    versions: dict[str, None] = {}
    for e in entries:
        versions[e.filename.split("-")[1].removesuffix(".tar.gz")] = None
        item: dict[str, object] = {
            "filename": e.filename,
            "url": e.url,
            "hashes": {"sha256": e.sha256},
            "requires-python": e.requires_python,
            "size": e.size,
            "upload-time": UPLOAD_TIME,
            "yanked": False,
        }
        if e.metadata_sha256:
            item["core-metadata"] = {"sha256": e.metadata_sha256}
            item["dist-info-metadata"] = {"sha256": e.metadata_sha256}
        files.append(item)
    doc = {
        "meta": {"api-version": "1.1", "_last-serial": 1},
        "name": project,
        "versions": list(versions),
        "files": files,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def project_html(project: str, entries: list[FileEntry]) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html><head>",
        '<meta name="pypi:repository-version" content="1.1">',
        f"<title>Links for {html.escape(project)}</title></head><body>",
        f"<h1>Links for {html.escape(project)}</h1>",
    ]
    for e in entries:
        attrs = f'href="{html.escape(e.url)}#sha256={e.sha256}"'
        if e.requires_python:
            attrs += f' data-requires-python="{html.escape(e.requires_python)}"'
        if e.metadata_sha256:
            attrs += f' data-dist-info-metadata="sha256={e.metadata_sha256}"'
            attrs += f' data-core-metadata="sha256={e.metadata_sha256}"'
        lines.append(f"<a {attrs}>{html.escape(e.filename)}</a><br />")
    lines.append("</body></html>")
    return ("\n".join(lines) + "\n").encode()


def root_names(real: Iterable[str], count: int) -> list[str]:
    """``count`` deterministic synthetic names plus the real project names, sorted."""
    syllables = ["py", "lib", "data", "net", "ml", "web", "tool", "kit", "io", "core", "auth", "db"]
    names = {f"{syllables[i % 12]}-{syllables[(i // 12) % 12]}{i}" for i in range(count)}
    names.update(real)
    return sorted(names)


def write_root(names: list[str], out_html: Path, out_json: Path, href_prefix: str) -> None:
    tmp_html = out_html.with_name(out_html.name + ".tmp")
    with tmp_html.open("w", encoding="utf-8") as f:
        f.write(
            '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" '
            'content="1.1"><title>Simple index</title></head><body>\n'
        )
        for n in names:
            f.write(f'<a href="{href_prefix}{n}/">{n}</a>\n')
        f.write("</body></html>\n")
    tmp_json = out_json.with_name(out_json.name + ".tmp")
    with tmp_json.open("w", encoding="utf-8") as f:
        f.write('{"meta":{"api-version":"1.1","_last-serial":' + str(len(names)) + '},"projects":[')
        f.write(",".join(f'{{"name":"{n}","_last-serial":{i}}}' for i, n in enumerate(names)))
        f.write("]}")
    tmp_html.replace(out_html)
    tmp_json.replace(out_json)


def choose_format(accept: str, fmt: str | None) -> str:
    """Return 'json' or 'html' from an Accept header (q-values honoured) or ?format=."""
    if fmt:
        return "json" if "json" in fmt else "html"
    best = ("html", -1.0)
    for part in accept.split(","):
        bits = [b.strip() for b in part.split(";")]
        mime = bits[0].lower()
        q = 1.0
        for b in bits[1:]:
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if mime in (JSON_CT, "application/vnd.pypi.simple.latest+json"):
            kind = "json"
        elif mime in (HTML_CT, "application/vnd.pypi.simple.latest+html", TEXT_HTML, "*/*"):
            kind = "html"
        else:
            continue
        if q > best[1]:
            best = (kind, q)
    return best[0]


@dataclass
class Page:
    body: bytes
    etag: str
    content_type: str


def make_page(body: bytes, content_type: str) -> Page:
    return Page(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', content_type)


@dataclass
class Stats:
    total: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    file_gets: collections.Counter[str] = field(default_factory=collections.Counter)
    since: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, object]:
        return {
            "total": self.total,
            "by_kind": dict(self.by_kind),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "file_gets": dict(self.file_gets),
            "since": self.since,
        }


def classify(request: web.Request) -> str:
    path = request.path
    if request.method == "HEAD":
        return "head"
    if path in ("/simple/", "/simple"):
        return "root"
    if path.startswith("/simple/"):
        return "page"
    if path.startswith("/files/"):
        return "metadata" if path.endswith(".metadata") else "file"
    return "other"


class FakeUpstream:
    def __init__(
        self, dists: list[Dist], workdir: Path, latency: float, root_count: int, extra_files: int
    ) -> None:
        self.dists = {d.filename: d for d in dists}
        self.workdir = workdir
        self.latency = latency
        self.root_count = root_count
        self.extra_files = extra_files
        self.stats = Stats()
        self.pages: dict[tuple[str, str], Page] = {}
        self.root_html = workdir / "root.html"
        self.root_json = workdir / "root.json"

    def build(self, base_url: str) -> None:
        by_project: dict[str, list[Dist]] = collections.defaultdict(list)
        for d in self.dists.values():
            by_project[d.project].append(d)
        for project, ds in by_project.items():
            entries = project_entries(ds, f"{base_url}/files/", self.extra_files)
            self.pages[(project, "json")] = make_page(project_json(project, entries), JSON_CT)
            self.pages[(project, "html")] = make_page(project_html(project, entries), HTML_CT)
        key = hashlib.sha256(f"{self.root_count}:{sorted(by_project)}".encode()).hexdigest()[:16]
        self.root_html = self.workdir / f"root-{self.root_count}-{key}.html"
        self.root_json = self.workdir / f"root-{self.root_count}-{key}.json"
        if not (self.root_html.exists() and self.root_json.exists()):
            names = root_names(by_project, self.root_count)
            write_root(names, self.root_html, self.root_json, "/simple/")

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/_stats"):
            return await handler(request)
        kind = classify(request)
        self.stats.total += 1
        self.stats.by_kind[kind] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            self.stats.by_status[exc.status] += 1
            raise
        self.stats.by_status[resp.status] += 1
        return resp

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        return web.json_response({"ok": True})

    async def root(self, request: web.Request) -> web.StreamResponse:
        kind = choose_format(request.headers.get("Accept", ""), request.query.get("format"))
        path, ct = (self.root_json, JSON_CT) if kind == "json" else (self.root_html, HTML_CT)
        return web.FileResponse(path, headers={"Content-Type": ct, "Vary": "Accept"})

    async def project(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        norm = normalize(name)
        if norm != name:
            raise web.HTTPMovedPermanently(f"/simple/{norm}/")
        kind = choose_format(request.headers.get("Accept", ""), request.query.get("format"))
        page = self.pages.get((norm, kind))
        if page is None:
            raise web.HTTPNotFound()
        headers = {"ETag": page.etag, "Vary": "Accept", "Cache-Control": "max-age=600, public"}
        if request.headers.get("If-None-Match") == page.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=page.body, headers={**headers, "Content-Type": page.content_type})

    async def file(self, request: web.Request) -> web.StreamResponse:
        fn = request.match_info["filename"]
        if fn.endswith(".metadata"):
            d = self.dists.get(fn.removesuffix(".metadata"))
            if d is None:
                raise web.HTTPNotFound()
            return web.Response(
                body=d.metadata,
                headers={
                    "Content-Type": "application/octet-stream",
                    "ETag": f'"{d.metadata_sha256[:32]}"',
                },
            )
        d = self.dists.get(fn)
        if d is None:
            raise web.HTTPNotFound()
        if request.method == "GET":
            self.stats.file_gets[fn] += 1
        return web.FileResponse(
            d.path,
            headers={"Content-Type": "application/octet-stream", "ETag": f'"{d.sha256[:32]}"'},
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_post("/_stats/reset", self.reset_stats)
        app.router.add_get("/simple/", self.root)
        app.router.add_get("/simple", lambda r: self._redirect("/simple/"))
        app.router.add_get("/simple/{name}/", self.project)
        app.router.add_get("/simple/{name}", lambda r: self._redirect(f"{r.path}/"))
        app.router.add_get("/files/{filename}", self.file)
        return app

    @staticmethod
    async def _redirect(location: str) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(location)


def export_static(dists: list[Dist], out: Path, root_count: int) -> None:
    """A static copy of the index (relative links) for a plain web server such as nginx."""
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    by_project: dict[str, list[Dist]] = collections.defaultdict(list)
    for d in dists:
        by_project[d.project].append(d)
        target = out / "files" / d.filename
        try:
            os.link(d.path, target)
        except OSError:
            shutil.copyfile(d.path, target)
        (out / "files" / f"{d.filename}.metadata").write_bytes(d.metadata)
    for project, ds in by_project.items():
        pdir = out / "simple" / project
        pdir.mkdir(parents=True)
        entries = project_entries(ds, "../../files/", 0)
        (pdir / "index.html").write_bytes(project_html(project, entries))
        (pdir / "index.json").write_bytes(project_json(project, entries))
    names = root_names(by_project, root_count)
    write_root(names, out / "simple" / "index.html", out / "simple" / "index.json", "")


async def serve(args: argparse.Namespace, dists: list[Dist]) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    up = FakeUpstream(dists, workdir, args.latency_ms / 1000.0, args.root_names, args.extra_files)
    runner = web.AppRunner(up.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    base = f"http://{args.host}:{port}"
    up.build(base)
    print(f"fakeupstream: listening on {base}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--wheels", required=True, help="folder of .whl files to serve")
    p.add_argument("--workdir", default=".", help="where the prebuilt root listing goes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--root-names", type=int, default=700_000)
    p.add_argument(
        "--extra-files",
        type=int,
        default=0,
        help="fake old sdists per project page (to make pages PyPI-sized)",
    )
    p.add_argument("--export-static", metavar="OUT", help="write a static copy and exit")
    args = p.parse_args(argv)
    dists = scan_wheels(Path(args.wheels))
    if not dists:
        sys.exit(f"no wheels in {args.wheels}")
    if args.export_static:
        export_static(dists, Path(args.export_static), args.root_names)
        return
    asyncio.run(serve(args, dists))


if __name__ == "__main__":
    main()
