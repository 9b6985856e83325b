"""What a cached rendering was made from, remembered without keeping it alive.

A rendering (a page body, a ``/pypi/<name>/json`` document) is reused while the objects it was
made from are the same objects: an upstream page revalidated with a 304 is the same
``ProjectPage``, so its rendering is sent again instead of built again. Holding those objects
to compare them later kept every page of every rendering alive, outside the memory budget that
weighs only the rendered bytes: measured with a 32 MB budget, 4,240 renderings of 10-file
private pages accounted 13 MB and held 40 MB. Weak references remember identity without
ownership: the page caches alone decide how long a page lives, and a rendering whose sources
died is simply built again.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

__all__ = ["MadeFrom"]


class _Value:
    """A source compared by value (the guard's decisions: equal ones show the same files)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


_Held = weakref.ref[object] | _Value | None


def _hold(source: object) -> _Held:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return _Value(source)
    return weakref.ref(source)  # TypeError for an object without weak references: a bug


def _matches(held: _Held, source: object) -> bool:
    if held is None:
        return source is None
    if isinstance(held, _Value):
        return held.value is source or held.value == source
    return source is not None and held() is source  # a dead reference matches nothing


class MadeFrom:
    """The sources of one rendering, in order: objects by identity (weakly held), mappings
    by value, ``None`` as itself."""

    __slots__ = ("_held",)

    def __init__(self, sources: Sequence[object]) -> None:
        self._held = tuple(_hold(source) for source in sources)

    def matches(self, sources: Sequence[object]) -> bool:
        return len(sources) == len(self._held) and all(
            _matches(held, source) for held, source in zip(self._held, sources, strict=True)
        )
