"""Who owns a project name: private storage, the upstream, or both merged (dependency confusion).

One pure rule used by every path (pages, files, uploads, the root list), tested as a truth table.
"""

from __future__ import annotations

from enum import Enum

from proxyindex.config import PrivateConfig
from proxyindex.models import DistFile, Origin, ProjectPage
from proxyindex.simple import project_versions

__all__ = ["Owner", "merge_pages", "not_found_reason", "owner_of"]


class Owner(Enum):
    PRIVATE = "private"  # served from private storage only; the upstream is never asked
    UPSTREAM = "upstream"
    MERGED = "merged"  # allow-listed: private files plus upstream files, private wins a clash


def owner_of(name: str, has_private_files: bool, config: PrivateConfig) -> Owner:
    """``name`` must be normalised. Allow-listed names merge (DC-02); a private file or a
    reserved pattern makes the name private (DC-01, DC-03); everything else is upstream."""
    if config.may_merge(name):
        return Owner.MERGED
    if has_private_files or config.is_reserved(name):
        return Owner.PRIVATE
    return Owner.UPSTREAM


def not_found_reason(name: str, owner: Owner, tombstone: bool, config: PrivateConfig) -> str:
    """Why a project page is 404: a private name without files says so, because "no
    project" would hide that the upstream's project of that name is withheld on purpose."""
    if owner is Owner.PRIVATE and config.is_reserved(name):
        return (
            f"{name!r} is reserved for private packages (private.reserved) and has no files; "
            "the upstream is not asked for it"
        )
    if owner is Owner.PRIVATE and tombstone:
        return (
            f"{name!r} is a private name whose files were all removed; it stays private (the "
            f"upstream is not asked) until an admin runs: proxyindex private release {name}"
        )
    return f"no project named {name!r}"


def merge_pages(private: ProjectPage | None, upstream: ProjectPage | None) -> ProjectPage | None:
    """Private files plus the upstream files whose filename is not taken privately."""
    if private is None or upstream is None:
        return private or upstream
    taken = {f.filename for f in private.files}
    files: tuple[DistFile, ...] = private.files + tuple(
        f for f in upstream.files if f.filename not in taken and f.origin is Origin.UPSTREAM
    )
    return ProjectPage(
        name=private.name,
        files=files,
        versions=project_versions(files, upstream.versions),
        # The larger: a mirror asking with the root's serial (the private one) must not see
        # the page as older than that (bandersnatch's StalePage).
        serial=max((s for s in (private.serial, upstream.serial) if s is not None), default=None),
    )
