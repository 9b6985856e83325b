"""Value types shared by every path: one model, rendered as HTML or JSON by ``simple``."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name

__all__ = [
    "INLINE_FILES",
    "DistFile",
    "Origin",
    "ProjectPage",
    "is_valid_name",
    "normalize",
]

# PEP 508 / name-normalization spec; anchored with \Z so "foo\n" is refused (N-02).
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
_MAX_NAME_LENGTH = 200
# Work over every file of a page (parsing filenames, rendering, choosing one) runs in a thread
# above this many files: PyPI-sized pages (1,000 files: ~10 ms) would stall the event loop.
INLINE_FILES = 100


def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass's field names in order, looked up once per class, not with ``fields()``
    per object: pickling botocore's page (4,990 files) 20 -> 16 ms of CPU, unpickling 24 -> 19."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(spec.name for spec in fields(cls))
    return names


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _state(obj: object) -> list[object]:
    """What a frozen dataclass pickles: its field values, in field order."""
    return [getattr(obj, name) for name in _field_names(type(obj))]


def _restore(obj: object, state: list[object]) -> None:
    """Unpickle a frozen dataclass from its field values, in field order (what dataclasses
    pickle), giving fields added since the pickle was made (a page cached by an older version)
    their defaults instead of leaving them unset."""
    names = _field_names(type(obj))
    if len(state) == len(names):  # pickled by this version: every field given
        for name, value in zip(names, state, strict=True):
            object.__setattr__(obj, name, value)
        return
    for index, spec in enumerate(fields(obj)):  # type: ignore[arg-type]
        if index < len(state):
            value = state[index]
        elif spec.default is not MISSING:
            value = spec.default
        else:
            factory = spec.default_factory
            value = factory() if callable(factory) else None
        object.__setattr__(obj, spec.name, value)


def is_valid_name(name: str) -> bool:
    return len(name) <= _MAX_NAME_LENGTH and _VALID_NAME.match(name) is not None


def normalize(name: str) -> NormalizedName:
    """PEP 503 normalisation (N-01); callers validate first with :func:`is_valid_name`."""
    return canonicalize_name(name)


class Origin(Enum):
    PRIVATE = "private"
    UPSTREAM = "upstream"


@dataclass(frozen=True, slots=True)
class DistFile:
    """One distribution file as listed on a project page.

    ``location`` is where *we* read it from: the upstream's absolute URL (a ``str``) for
    upstream files, the file's ``Path`` in the packages folder for private ones. Renderers
    never show it: clients always get this server's ``/packages/<project>/<filename>``.
    """

    filename: str
    location: str | Path  # the field order is the pickle's: cached pages store it
    origin: Origin
    hashes: dict[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    size: int | None = None
    upload_time: str | None = None
    yanked: bool | str = False
    core_metadata: dict[str, str] | bool = False
    provenance: str | None = None  # PEP 740: the upstream's URL, passed through
    gpg_sig: bool | None = None  # what the upstream says; None: it does not say

    def __getstate__(self) -> list[object]:
        return _state(self)

    def __setstate__(self, state: list[object]) -> None:
        _restore(self, state)

    @property
    def url(self) -> str:
        """The upstream URL of an upstream file; a private file has none."""
        if isinstance(self.location, Path):
            raise ValueError(f"{self.filename} is a private file, not fetched from a URL")
        return self.location

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    def metadata_file(self) -> DistFile | None:
        """The PEP 658 ``.metadata`` sibling as a file of its own, if the index has one."""
        if not self.core_metadata:
            return None
        hashes = self.core_metadata if isinstance(self.core_metadata, dict) else {}
        return DistFile(
            filename=f"{self.filename}.metadata",
            location=(
                self.location.with_name(f"{self.location.name}.metadata")
                if isinstance(self.location, Path)
                else f"{self.location}.metadata"
            ),
            origin=self.origin,
            hashes={"sha256": hashes["sha256"]} if "sha256" in hashes else {},
        )


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ProjectPage:
    """A project's files and versions, whichever source they came from. Renderings refer to
    the page they were made from weakly (``madefrom``): the page caches own pages."""

    name: NormalizedName
    files: tuple[DistFile, ...]
    versions: frozenset[str] = frozenset()
    serial: int | None = None
    status: str | None = None  # PEP 792 project-status, as the upstream says it
    status_reason: str | None = None

    def __getstate__(self) -> list[object]:
        return _state(self)

    def __setstate__(self, state: list[object]) -> None:
        _restore(self, state)

    @property
    def is_large(self) -> bool:
        """Work over all its files belongs in a thread (see ``INLINE_FILES``)."""
        return len(self.files) > INLINE_FILES

    @property
    def has_private_files(self) -> bool:
        return any(f.origin is Origin.PRIVATE for f in self.files)

    def file(self, filename: str) -> DistFile | None:
        for dist in self.files:
            if dist.filename == filename:
                return dist
        return None
