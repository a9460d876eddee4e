"""A cache bounded by entry count and by age, for seen-sets and message stores.

Entries expire at the deadline given when they were put; the oldest insertions are
evicted first when the count bound is reached. Time is passed in, never read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """Key -> value with a per-entry expiry time and at most ``max_entries`` entries.

    Expired entries are dropped lazily (on :meth:`put`, :meth:`expire` and lookups of
    that key). Insertion order is kept; re-putting a key refreshes it to the newest end.
    """

    __slots__ = ("_data", "max_entries", "evicted")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.evicted = 0
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def contains(self, key: Hashable, now: float) -> bool:
        """True if ``key`` is present and not expired at ``now``."""
        entry = self._data.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._data[key]
            return False
        return True

    def get(self, key: Hashable, now: float) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._data[key]
            return None
        return entry[1]

    def expires_at(self, key: Hashable) -> float | None:
        entry = self._data.get(key)
        return None if entry is None else entry[0]

    def put(self, key: Hashable, value: V, expires: float, now: float) -> None:
        data = self._data
        if key in data:
            del data[key]
        data[key] = (expires, value)
        self.expire(now)
        while len(data) > self.max_entries:
            data.popitem(last=False)
            self.evicted += 1

    def pop(self, key: Hashable) -> V | None:
        entry = self._data.pop(key, None)
        return None if entry is None else entry[1]

    def expire(self, now: float) -> None:
        """Drop expired entries from the old end (entries are roughly in expiry order)."""
        data = self._data
        while data:
            key, (expires, _) = next(iter(data.items()))
            if expires > now:
                break
            del data[key]

    def keys(self) -> Iterator[Hashable]:
        return iter(self._data)

    def newest(self, count: int) -> list[Hashable]:
        """Up to ``count`` keys, newest first."""
        out: list[Hashable] = []
        for key in reversed(self._data):
            if len(out) >= count:
                break
            out.append(key)
        return out

    def items(self, now: float) -> Iterator[tuple[Hashable, V]]:
        """Live (key, value) pairs, oldest first."""
        for key, (expires, value) in list(self._data.items()):
            if expires > now:
                yield key, value
