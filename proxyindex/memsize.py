"""Estimated memory of cached values, for the byte budgets of the memory caches (``lru``).

Estimates, not measurements (``sys.getsizeof`` over every object would cost more than the
cache saves): a parsed file costs ~700 bytes of objects (a slotted dataclass, its hash dict,
strings) plus its filename and URL; measured 93 MB for a 30,000-file page parsed and rendered.
"""

from __future__ import annotations

from proxyindex.models import ProjectPage

__all__ = ["DECISION_BYTES", "FILE_OVERHEAD", "page_bytes"]

FILE_OVERHEAD = 700  # bytes per DistFile beyond its filename and location
DECISION_BYTES = 300  # one guard decision held by a rendering (a dict slot, a Decision, a reason)
_PAGE_OVERHEAD = 1000


def page_bytes(page: ProjectPage | None) -> int:
    if page is None:
        return _PAGE_OVERHEAD
    return _PAGE_OVERHEAD + sum(
        FILE_OVERHEAD + 2 * len(f.filename) + len(str(f.location)) for f in page.files
    )
