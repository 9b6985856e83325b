"""What ``proxyindex prefetch -r FILE`` should fetch, read from the file (pure parsing).

The format is recognised from the file name: ``pylock.toml`` / ``pylock.*.toml`` (PEP 751,
read with ``packaging.pylock``), ``uv.lock``, ``poetry.lock`` (TOML), ``Pipfile.lock`` (JSON);
anything else is a requirements file (``requirements.txt``, with or without ``--hash``) or a
plain list of names, one a line, which is the same format. Lock files name exact files (by
hash or filename); a requirements line names a project and a version range, and the newest
matching release is taken. Nothing is resolved: a requirements file should list every
dependency (``pip-compile``, ``uv pip compile``, ``pip freeze`` write such files).

Which of the listed files are fetched (platforms, Python versions) is :class:`Targets`'s call.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.pylock import (
    PackageSdist,
    PackageWheel,
    Pylock,
    PylockValidationError,
    is_valid_pylock_path,
)
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from proxyindex.distname import InvalidDistFilename, parse_dist_filename

__all__ = ["SourceError", "Targets", "Wanted", "read_source", "source_format"]


class SourceError(ValueError):
    """The file cannot be read as its format (the message names the file and the problem)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """One project to fetch: a version range (requirements), or exact files (lock files: by
    sha256 or filename; any of them matching is enough)."""

    name: NormalizedName
    specifier: SpecifierSet = field(default_factory=SpecifierSet)
    sha256: frozenset[str] = frozenset()
    filenames: frozenset[str] = frozenset()

    @property
    def exact(self) -> bool:
        return bool(self.sha256 or self.filenames)


def source_format(path: Path) -> str:
    name = path.name
    if is_valid_pylock_path(path):
        return "pylock"
    if name == "uv.lock":
        return "uv"
    if name == "poetry.lock":
        return "poetry"
    if name == "Pipfile.lock":
        return "pipfile"
    return "requirements"


_HASH = re.compile(r"\s--hash[=\s]+(\S+)")


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def _sha256_of(value: str) -> str | None:
    algo, _, digest = value.partition(":")
    return digest.lower() if algo == "sha256" and digest else None


def parse_requirements(text: str, where: str) -> list[Wanted]:
    """A requirements file (``--hash`` options kept; other options, URLs and editables
    skipped: they are not fetched from an index)."""
    found: list[Wanted] = []
    for line in _logical_lines(text):
        hashes = frozenset(h for h in map(_sha256_of, _HASH.findall(" " + line)) if h)
        spec = _HASH.sub("", " " + line).strip()
        if not spec or spec.startswith("-"):
            continue  # -r, -c, -i, --index-url, -e ...: not a project to fetch
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise SourceError(f"{where}: {spec[:80]!r} is not a requirement: {exc}") from None
        if req.url:
            continue
        found.append(Wanted(canonicalize_name(req.name), req.specifier, hashes))
    return found


def _filename_of(url: str | None) -> str | None:
    if not url:
        return None
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or None


def _pinned(version: object) -> SpecifierSet:
    try:
        return SpecifierSet(f"=={Version(str(version))}") if version else SpecifierSet()
    except (InvalidVersion, InvalidSpecifier):
        return SpecifierSet()


def parse_pylock(data: Mapping[str, Any], where: str) -> list[Wanted]:
    try:
        lock = Pylock.from_dict(data)
    except (PylockValidationError, ValueError, TypeError, KeyError) as exc:
        raise SourceError(f"{where}: not a valid pylock file: {exc}") from None
    found = []
    for package in lock.packages:
        archives: list[PackageWheel | PackageSdist] = [*(package.wheels or ())]
        if package.sdist is not None:
            archives.append(package.sdist)
        if not archives:
            continue  # a directory, VCS or archive URL: nothing an index serves
        hashes = frozenset(
            a.hashes["sha256"].lower() for a in archives if a.hashes and "sha256" in a.hashes
        )
        names = frozenset(n for a in archives if (n := a.name or _filename_of(a.url)) is not None)
        found.append(
            Wanted(canonicalize_name(package.name), _pinned(package.version), hashes, names)
        )
    return found


def parse_uv_lock(data: Mapping[str, Any], where: str) -> list[Wanted]:
    found = []
    for package in _tables(data.get("package", []), where):
        source = package.get("source", {})
        if not isinstance(source, dict) or "registry" not in source:
            continue  # editable, virtual, git, path: not from an index
        archives = [*_tables(package.get("wheels", []), where)]
        if isinstance(package.get("sdist"), dict):
            archives.append(package["sdist"])
        hashes = frozenset(h for a in archives if (h := _sha256_of(str(a.get("hash", "")))))
        names = frozenset(n for a in archives if (n := _filename_of(a.get("url"))) is not None)
        found.append(_locked(package, hashes, names, where))
    return found


def parse_poetry_lock(data: Mapping[str, Any], where: str) -> list[Wanted]:
    found = []
    for package in _tables(data.get("package", []), where):
        source = package.get("source", {})
        if isinstance(source, dict) and source.get("type") in ("directory", "file", "git", "url"):
            continue
        files = [*_tables(package.get("files", []), where)]
        hashes = frozenset(h for f in files if (h := _sha256_of(str(f.get("hash", "")))))
        names = frozenset(str(f["file"]) for f in files if f.get("file"))
        found.append(_locked(package, hashes, names, where))
    return found


def parse_pipfile_lock(data: Mapping[str, Any], where: str) -> list[Wanted]:
    found = []
    for section in ("default", "develop"):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise SourceError(f"{where}: {section!r} must be an object")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or "version" not in entry:
                continue  # editable, path or VCS
            hashes = frozenset(h for h in map(_sha256_of, entry.get("hashes", [])) if h)
            try:
                specifier = SpecifierSet(str(entry["version"]))
            except InvalidSpecifier:
                raise SourceError(f"{where}: {name}: bad version {entry['version']!r}") from None
            found.append(Wanted(canonicalize_name(name), specifier, hashes))
    return found


def _tables(value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SourceError(f"{where}: expected a list of tables")
    return value


def _locked(
    package: Mapping[str, Any], hashes: frozenset[str], names: frozenset[str], where: str
) -> Wanted:
    name = package.get("name")
    if not isinstance(name, str) or not name:
        raise SourceError(f"{where}: a package without a name")
    return Wanted(canonicalize_name(name), _pinned(package.get("version")), hashes, names)


def read_source(path: Path) -> list[Wanted]:
    """Blocking: read ``path`` in the format its name says; SourceError if it cannot."""
    kind = source_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None
    where = str(path)
    if kind == "requirements":
        return parse_requirements(text, where)
    try:
        data: Any = json.loads(text) if kind == "pipfile" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SourceError(
            f"{where}: not valid {'JSON' if kind == 'pipfile' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise SourceError(f"{where}: expected a table at the top")
    parser = {
        "pylock": parse_pylock,
        "uv": parse_uv_lock,
        "poetry": parse_poetry_lock,
        "pipfile": parse_pipfile_lock,
    }[kind]
    return parser(data, where)


# --- which files suit the target platforms and Python versions ---------------------------


_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(.+)$")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def expand_platform(platform: str) -> list[str]:
    """A platform and the older ones a machine of it also runs: ``manylinux_2_28_x86_64``
    covers every ``manylinux_2_N_x86_64`` with N <= 28 and the legacy aliases."""
    match = _MANYLINUX.match(platform)
    if match is None:
        return [platform]
    major, minor, arch = int(match[1]), int(match[2]), match[3]
    found = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    found += [
        f"{alias}_{arch}"
        for alias, (ma, mi) in _LEGACY_MANYLINUX.items()
        if (ma, mi) <= (major, minor)
    ]
    return found


@dataclass(frozen=True, slots=True)
class Targets:
    """The machines the cache is warmed for: wheel tags they accept, Python versions."""

    tags: frozenset[Tag]
    pythons: tuple[Version, ...]

    @classmethod
    def build(cls, platforms: Iterable[str], python_versions: Iterable[str]) -> Targets:
        """``--platform`` and ``--python-version`` values; none given: this machine."""
        platforms = [p for raw in platforms for p in expand_platform(raw)]
        versions = list(python_versions)
        if not platforms and not versions:
            return cls(frozenset(sys_tags()), (Version(".".join(map(str, sys.version_info[:3]))),))
        if not platforms:
            platforms = list(dict.fromkeys(t.platform for t in sys_tags()))
        if not versions:
            versions = [f"{sys.version_info[0]}.{sys.version_info[1]}"]
        tags: set[Tag] = set()
        pythons = []
        for raw in versions:
            try:
                parsed = Version(raw)
            except InvalidVersion:
                raise SourceError(
                    f"--python-version: {raw!r} is not a version such as 3.12"
                ) from None
            # "3.12" stands for every 3.12.x: Requires-Python ">=3.12.1" fits it.
            pythons.append(Version(f"{raw}.1000") if len(parsed.release) == 2 else parsed)
            pyver = (parsed.major, parsed.minor)
            tags.update(cpython_tags(pyver, platforms=platforms))
            tags.update(compatible_tags(pyver, f"cp{pyver[0]}{pyver[1]}", platforms))
        return cls(frozenset(tags), tuple(pythons))

    def wheel_fits(self, filename: str) -> bool:
        try:
            dist = parse_dist_filename(filename)
        except InvalidDistFilename:
            return False
        return dist.is_wheel and not dist.tags.isdisjoint(self.tags)

    def python_fits(self, requires_python: str | None) -> bool:
        if not requires_python:
            return True
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            return True  # an installer would not trust it either way: fetch
        return any(spec.contains(v, prereleases=True) for v in self.pythons)
