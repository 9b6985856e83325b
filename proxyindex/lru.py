"""A bounded mapping that keeps the most recently used entries (memory caches of pages,
renderings, file indexes): a full cache drops its oldest entries, never everything at once.

Bounded by entry count and, when given a ``weigh`` function, by bytes: one upstream page of
30,000 files is ~100 MB parsed and rendered while one of 10 files is a few kB, so a count
alone bounds nothing (4,096 parsed pages plus 8,192 renderings could stay). An entry heavier
than the whole budget is not kept at all (it would push everything else out).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LRU"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class LRU(Generic[_K, _V]):
    def __init__(
        self,
        size: int,
        *,
        max_bytes: int | None = None,
        weigh: Callable[[_V], int] | None = None,
    ) -> None:
        self._size = size
        self._max_bytes = max_bytes if weigh is not None else None
        self._weigh = weigh
        self._data: OrderedDict[_K, tuple[_V, int]] = OrderedDict()
        self.bytes = 0  # the weights of the entries held

    def get(self, key: _K) -> _V | None:
        held = self._data.get(key)
        if held is None:
            return None
        self._data.move_to_end(key)
        return held[0]

    def put(self, key: _K, value: _V) -> None:
        weight = self._weigh(value) if self._weigh is not None else 0
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if self._max_bytes is not None and weight > self._max_bytes:
            return  # heavier than the whole budget: not kept
        self._data[key] = (value, weight)
        self.bytes += weight
        while len(self._data) > self._size or (
            self._max_bytes is not None and self.bytes > self._max_bytes
        ):
            _key, (_value, dropped) = self._data.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
