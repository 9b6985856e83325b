"""Distribution filenames: one parser, the release a file belongs to, its canonical spelling.

Two filenames can name one release file: ``dupdemo-1.0-py3-none-any.whl``,
``dupdemo-1.0.0-py3-none-any.whl`` and ``DupDemo-01.0-py3-none-any.whl`` are the same wheel to
an installer (``Version("1.0") == Version("1.0.0") == Version("01.0")``), so an index that
only compared filename strings would let a second upload sit beside the first and pip might
install either. The *release key* is what must be unique: normalised name, version compared
as PEP 440 values, and either "sdist" or the wheel's build tag and tag set.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.tags import Tag
from packaging.utils import (
    BuildTag,
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

__all__ = [
    "DistFilename",
    "InvalidDistFilename",
    "parse_dist_filename",
    "project_of",
    "release_of",
]

SDIST_SUFFIXES = (".tar.gz", ".zip")


class InvalidDistFilename(ValueError):
    """Not a wheel or sdist filename packaging can parse; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class DistFilename:
    """A parsed wheel or sdist filename (STYLE §19: one parser per concept)."""

    filename: str
    name: NormalizedName
    version: Version
    build: BuildTag
    tags: frozenset[Tag]  # empty for an sdist
    is_wheel: bool

    @property
    def release_key(self) -> str:
        """One string per release file within a project, whatever the filename's spelling.

        ``canonicalize_version`` drops trailing zeros and leading zeros of each number, so it
        is equal for exactly the versions ``Version`` calls equal. A ``.zip`` and a ``.tar.gz``
        sdist of one version are one release file too: an installer would pick either.
        """
        version = canonicalize_version(self.version)
        if not self.is_wheel:
            return f"{version} sdist"
        build = f"-{self.build[0]}{self.build[1]}" if self.build else ""
        return f"{version}{build} " + ".".join(sorted(str(tag) for tag in self.tags))

    @property
    def canonical(self) -> str:
        """The PEP 427 / PEP 625 spelling: normalised name with ``_``, ``str(Version)``.

        A wheel keeps its build and tag text as written (tag order inside a compressed set is
        the build tool's; the release key already ignores it). A legacy ``.zip`` sdist keeps
        its extension.
        """
        escaped = self.name.replace("-", "_")
        if self.is_wheel:
            rest = self.filename[: -len(".whl")].split("-")[2:]
            return "-".join([escaped, str(self.version), *rest]) + ".whl"
        suffix = next(s for s in SDIST_SUFFIXES if self.filename.endswith(s))
        return f"{escaped}-{self.version}{suffix}"

    @property
    def version_text(self) -> str:
        """The version exactly as the filename spells it."""
        if self.is_wheel:
            return self.filename.split("-")[1]
        stem = next(self.filename[: -len(s)] for s in SDIST_SUFFIXES if self.filename.endswith(s))
        return stem.rpartition("-")[2]


def parse_dist_filename(filename: str) -> DistFilename:
    """Parse a wheel (``.whl``) or sdist (``.tar.gz``, legacy ``.zip``) filename."""
    try:
        if filename.endswith(".whl"):
            name, version, build, tags = parse_wheel_filename(filename)
            return DistFilename(filename, name, version, build, tags, is_wheel=True)
        if filename.endswith(SDIST_SUFFIXES):
            name, version = parse_sdist_filename(filename)
            return DistFilename(filename, name, version, (), frozenset(), is_wheel=False)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion) as exc:
        raise InvalidDistFilename(str(exc)) from exc
    raise InvalidDistFilename(f"{filename!r} is not a wheel (.whl) or an sdist (.tar.gz)")


def project_of(filename: str) -> NormalizedName | None:
    """The project a distribution filename belongs to, or None if it is not a distribution."""
    dist = release_of(filename)
    return dist.name if dist is not None else None


def release_of(filename: str) -> DistFilename | None:
    """The parsed filename, or None for a file that is not a distribution."""
    try:
        return parse_dist_filename(filename)
    except InvalidDistFilename:
        return None
