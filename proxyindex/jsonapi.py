"""The PyPI JSON API (PJ-01, PJ-02): ``/pypi/<name>/json`` and ``/pypi/<name>/<version>/json``.

No installer reads it from a custom index, but renovate, dashboards and scripts do, against
whatever base URL they are given. Two ways to a document, both pure functions here:

- :func:`rewrite`: the upstream's own document (PyPI has one), with every file URL pointing at
  this server and only the files the merged simple page lists (so routing, dependency
  confusion and policy rules hold here too), plus the private files of a merged name;
- :func:`render`: made from the merged page and the release's METADATA, for private projects
  and upstreams without a JSON API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from packaging.metadata import parse_email
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.simple import advertised_metadata, file_href, version_key, version_of

__all__ = [
    "Release",
    "file_release",
    "find_release",
    "metadata_source",
    "render",
    "rewrite",
]

# Simple-API hash names -> PyPI JSON digest names.
_DIGESTS = {"md5": "md5", "sha256": "sha256", "blake2b_256": "blake2b_256"}


@dataclass(frozen=True, slots=True)
class Release:
    """One version of a project and its files, as the JSON API shows it."""

    version: str
    files: tuple[DistFile, ...]

    @property
    def yanked(self) -> bool:
        return bool(self.files) and all(f.yanked is not False for f in self.files)

    @property
    def yanked_reason(self) -> str | None:
        reasons = [f.yanked for f in self.files if isinstance(f.yanked, str) and f.yanked]
        return reasons[0] if reasons else None


@lru_cache(maxsize=8192)
def _parsed(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


# Old binary formats: name-1.0.win32-py2.7.exe, name-1.0-py2.7.egg, name-1.0.linux-x86_64.rpm.
_LEGACY_SUFFIXES = (".exe", ".msi", ".egg", ".rpm", ".dmg")
_PLATFORM = re.compile(r"\.(?:win|linux|macosx|darwin|cygwin|freebsd|solaris|sunos)[-_.\w]*$")


def _legacy_version(name: NormalizedName, filename: str) -> str | None:
    """The version of a file in a format packaging cannot parse (``.exe``, ``.egg``...): the
    part after the project's name, up to the ``-py2.7`` tag or the platform."""
    stem, dot, ext = filename.rpartition(".")
    if not dot or f".{ext.lower()}" not in _LEGACY_SUFFIXES:
        return None
    start = 0
    while (dash := stem.find("-", start)) != -1:
        if canonicalize_name(stem[:dash]) == name:
            rest = stem[dash + 1 :].split("-", 1)[0]
            version = _parsed(_PLATFORM.sub("", rest))
            return None if version is None else str(version)
        start = dash + 1
    return None


def file_release(name: NormalizedName, filename: str) -> str | None:
    """The (normalised) version of a distribution file, old binary formats included."""
    return version_of(filename) or _legacy_version(name, filename)


def releases(page: ProjectPage) -> list[Release]:
    """Every version, oldest first; a version the index lists without files has none.

    Releases are keyed by the version as the index spells it (its ``versions`` list), files
    joined to them by PEP 440 equality: a file named ``x-1.0.0`` belongs to release ``1.0``.
    Linear in the files (the sort is over versions).
    """
    label: dict[Version | str, str] = {}
    by_version: dict[str, list[DistFile]] = {}
    for version in page.versions:
        parsed = _parsed(version)
        by_version.setdefault(label.setdefault(parsed or version, version), [])
    for dist in page.files:
        found = file_release(page.name, dist.filename)
        if found is not None:
            parsed = _parsed(found)
            by_version.setdefault(label.setdefault(parsed or found, found), []).append(dist)
    ordered = sorted(by_version, key=version_key)
    return [Release(v, tuple(by_version[v])) for v in ordered]


def _latest(candidates: Sequence[Release]) -> Release | None:
    """PyPI's choice: the newest final release not yanked, else the newest not yanked, else
    the newest with files."""
    with_files = [r for r in candidates if r.files]
    live = [r for r in with_files if not r.yanked]
    finals = [r for r in live if (v := _parsed(r.version)) is not None and not v.is_prerelease]
    for group in (finals, live, with_files):
        if group:
            return group[-1]
    return None


def find_release(page: ProjectPage, version: str | None) -> tuple[Release, list[Release]] | None:
    """The release asked for (``None``: the latest) and all releases; None if there is none.

    Versions compare as PEP 440 versions, so ``/pypi/x/1.0.0/json`` finds release ``1.0``.
    """
    every = releases(page)
    if version is None:
        chosen = _latest(every)
    else:
        wanted = _parsed(version)
        chosen = next(
            (
                r
                for r in every
                if r.version == version or (wanted is not None and _parsed(r.version) == wanted)
            ),
            None,
        )
    return (chosen, every) if chosen is not None else None


def metadata_source(release: Release) -> DistFile | None:
    """The file whose METADATA describes the release: a wheel with a ``.metadata`` file (every
    upstream wheel has one here: PEP 658 for every wheel), one not yanked first. Sdists are
    not opened (they can be large, and need not be cached)."""
    wheels = [f for f in release.files if f.filename.endswith(".whl") and advertised_metadata(f)]
    wheels.sort(key=lambda f: f.yanked is not False)
    return wheels[0] if wheels else None


# PyPI's packagetype for each kind of file (warehouse ``forklift``).
_PACKAGE_TYPES = {
    ".whl": "bdist_wheel",
    ".egg": "bdist_egg",
    ".exe": "bdist_wininst",
    ".msi": "bdist_msi",
    ".rpm": "bdist_rpm",
    ".dmg": "bdist_dmg",
}
_PY_TAG = re.compile(r"-py(\d(?:\.\d+)?)(?:-|\.[a-z]+$)")


def _package_type(filename: str) -> str:
    return _PACKAGE_TYPES.get(filename[filename.rfind(".") :].lower(), "sdist")


def _python_version(filename: str) -> str:
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return parts[-3] if len(parts) >= 5 else "py3"
    if _package_type(filename) != "sdist":
        found = _PY_TAG.search(filename)
        return found.group(1) if found else "any"
    return "source"


def _file(
    name: NormalizedName,
    dist: DistFile,
    base_url: str,
    extra_digests: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    digests = {_DIGESTS[k]: v for k, v in dist.hashes.items() if k in _DIGESTS}
    if extra_digests and dist.filename in extra_digests:
        digests.update(extra_digests[dist.filename])
    upload = dist.upload_time
    core: Any = False
    if isinstance(dist.core_metadata, Mapping) and "sha256" in dist.core_metadata:
        core = {"sha256": dist.core_metadata["sha256"]}
    elif dist.core_metadata:
        core = True
    return {
        "filename": dist.filename,
        "url": file_href(name, dist.filename, base_url),
        "size": dist.size,
        "packagetype": _package_type(dist.filename),
        "python_version": _python_version(dist.filename),
        "requires_python": dist.requires_python,
        "digests": digests,
        "md5_digest": digests.get("md5"),
        "upload_time": upload[:19] if upload else None,
        "upload_time_iso_8601": upload,
        "yanked": dist.yanked is not False,
        "yanked_reason": dist.yanked if isinstance(dist.yanked, str) and dist.yanked else None,
        "core-metadata": core,
        "has_sig": False,
        "comment_text": "",
        "downloads": -1,
    }


def _info(
    page: ProjectPage, release: Release, metadata: bytes | None, base_url: str
) -> dict[str, Any]:
    raw: Mapping[str, Any] = parse_email(metadata)[0] if metadata else {}
    keywords = raw.get("keywords")
    requires_python = raw.get("requires_python") or next(
        (f.requires_python for f in release.files if f.requires_python), None
    )
    package_url = f"{base_url}/simple/{page.name}/"
    return {
        "name": raw.get("name") or page.name,
        "version": release.version,
        "summary": raw.get("summary"),
        "description": raw.get("description"),
        "description_content_type": raw.get("description_content_type"),
        "author": raw.get("author"),
        "author_email": raw.get("author_email"),
        "maintainer": raw.get("maintainer"),
        "maintainer_email": raw.get("maintainer_email"),
        "license": raw.get("license"),
        "license_expression": raw.get("license_expression"),
        "license_files": raw.get("license_files"),
        "keywords": ",".join(keywords) if keywords else None,
        "classifiers": raw.get("classifiers", []),
        "platform": ", ".join(raw["platforms"]) if raw.get("platforms") else None,
        "home_page": raw.get("home_page"),
        "download_url": raw.get("download_url"),
        "project_urls": raw.get("project_urls") or None,
        "requires_dist": raw.get("requires_dist") or None,
        "provides_extra": raw.get("provides_extra") or None,
        "dynamic": raw.get("dynamic") or None,
        "requires_python": requires_python,
        "yanked": release.yanked,
        "yanked_reason": release.yanked_reason,
        "package_url": package_url,
        "project_url": package_url,
        "release_url": f"{base_url}/pypi/{page.name}/{release.version}/json",
        "bugtrack_url": None,
        "docs_url": None,
        "downloads": {"last_day": -1, "last_week": -1, "last_month": -1},
    }


def render(
    page: ProjectPage,
    release: Release,
    every: Sequence[Release],
    metadata: bytes | None,
    base_url: str,
    *,
    with_releases: bool,
    digests: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """The JSON document; ``releases`` only on the project endpoint, as PyPI does.

    ``base_url`` must be absolute: these documents are read from many URLs, so file URLs
    cannot be relative. ``digests``: more digests by filename (md5 and blake2b_256 computed
    for private files), added to what the page knows.
    """
    body: dict[str, Any] = {
        "info": _info(page, release, metadata, base_url),
        "last_serial": page.serial if page.serial is not None else 0,
        "urls": [_file(page.name, f, base_url, digests) for f in release.files],
        "vulnerabilities": [],
    }
    if with_releases:
        body["releases"] = {
            r.version: [_file(page.name, f, base_url, digests) for f in r.files] for r in every
        }
    return json.dumps(body, separators=(",", ":")).encode()


def _served(
    entry: Mapping[str, Any], files: Mapping[str, DistFile], name: NormalizedName, base_url: str
) -> dict[str, Any] | None:
    """An upstream file entry pointing at this server; None when the merged page does not list
    it as an upstream file (a private file of the same name wins; policy may hide it)."""
    dist = files.get(entry["filename"])
    if dist is None or dist.origin is not Origin.UPSTREAM:
        return None
    out = dict(entry)
    out["url"] = file_href(name, dist.filename, base_url)
    return out


def _release_key(keys: Mapping[Version | str, str], version: str) -> str:
    parsed = _parsed(version)
    return keys.get(parsed or version, version)


def rewrite(
    doc: Mapping[str, Any],
    page: ProjectPage,
    base_url: str,
    *,
    digests: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """The upstream's own document as this server serves it (linear in its files).

    Everything the upstream says is kept (``info``, digests, ``releases`` keyed as upstream
    keys them, ``last_serial``, ``vulnerabilities``...) except that: every file URL points at
    this server; a file the merged ``page`` does not list as an upstream file is left out (so
    the JSON API never offers what ``/simple/<name>/`` does not); and the page's private files
    (a name merged with the upstream) are added to their releases, and to ``urls`` when they
    belong to the document's release.
    """
    files = {f.filename: f for f in page.files}
    name = page.name
    body = dict(doc)
    urls = [e for raw in doc["urls"] if (e := _served(raw, files, name, base_url)) is not None]
    releases: dict[str, list[dict[str, Any]]] | None = None
    if isinstance(doc.get("releases"), Mapping):
        releases = {
            version: [e for raw in entries if (e := _served(raw, files, name, base_url))]
            for version, entries in doc["releases"].items()
        }
    private = [f for f in page.files if f.origin is Origin.PRIVATE]
    if private:
        info = doc["info"]
        keys: dict[Version | str, str] = {}
        for version in releases or ():
            keys.setdefault(_parsed(version) or version, version)
        current = _parsed(str(info.get("version")))
        for dist in private:
            found = file_release(name, dist.filename)
            if found is None:
                continue
            entry = _file(name, dist, base_url, digests)
            if releases is not None:
                releases.setdefault(_release_key(keys, found), []).append(entry)
            if current is not None and _parsed(found) == current:
                urls.append(entry)
    body["urls"] = urls
    if releases is not None:
        body["releases"] = releases
    upstream_serial = doc.get("last_serial")
    if private and page.serial is not None and isinstance(upstream_serial, int):
        body["last_serial"] = max(upstream_serial, page.serial)  # the private part's may be newer
    return json.dumps(body, separators=(",", ":")).encode()
