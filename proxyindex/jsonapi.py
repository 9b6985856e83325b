"""The PyPI JSON API (PJ-01, PJ-02): ``/pypi/<name>/json`` and ``/pypi/<name>/<version>/json``.

No installer reads it from a custom index, but renovate, dashboards and scripts do, against
whatever base URL they are given. Built from the same project model as the simple pages, plus
the chosen release's METADATA for ``info``. Pure functions: the handler brings the page and the
metadata bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.metadata import parse_email
from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from proxyindex.models import DistFile, ProjectPage
from proxyindex.simple import file_href, version_key, version_of

__all__ = ["Release", "find_release", "metadata_source", "render"]

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


def _parsed(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidVersion:
        return None


def releases(page: ProjectPage) -> list[Release]:
    """Every version, oldest first; a version the index lists without files has none."""
    by_version: dict[str, list[DistFile]] = {}
    for version in page.versions:
        parsed = _parsed(version)
        by_version.setdefault(str(parsed) if parsed is not None else version, [])
    for dist in page.files:
        found = version_of(dist.filename)
        if found is not None:
            by_version.setdefault(found, []).append(dist)
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
    """The file whose METADATA describes the release: a wheel with a ``.metadata`` file,
    one not yanked first. Sdists are not opened (they can be large, and need not be cached)."""
    wheels = [f for f in release.files if f.filename.endswith(".whl") and f.core_metadata]
    wheels.sort(key=lambda f: f.yanked is not False)
    return wheels[0] if wheels else None


def _python_version(filename: str) -> str:
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return parts[-3] if len(parts) >= 5 else "py3"
    return "source"


def _file(name: NormalizedName, dist: DistFile, base_url: str) -> dict[str, Any]:
    digests = {_DIGESTS[k]: v for k, v in dist.hashes.items() if k in _DIGESTS}
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
        "packagetype": "bdist_wheel" if dist.filename.endswith(".whl") else "sdist",
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
) -> bytes:
    """The JSON document; ``releases`` only on the project endpoint, as PyPI does.

    ``base_url`` must be absolute: these documents are read from many URLs, so file URLs
    cannot be relative.
    """
    body: dict[str, Any] = {
        "info": _info(page, release, metadata, base_url),
        "last_serial": page.serial if page.serial is not None else 0,
        "urls": [_file(page.name, f, base_url) for f in release.files],
        "vulnerabilities": [],
    }
    if with_releases:
        body["releases"] = {
            r.version: [_file(page.name, f, base_url) for f in r.files] for r in every
        }
    return json.dumps(body, separators=(",", ":")).encode()
