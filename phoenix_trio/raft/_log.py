"""The in-memory Raft log: entries after a compaction point, with O(1) index lookups.

Indexes start at 1. ``offset`` is the index of the last compacted entry (0 when nothing
is compacted) and ``offset_term`` its term, so ``term(offset)`` is always known.
"""

from __future__ import annotations

from ._messages import Entry


class RaftLog:
    __slots__ = ("entries", "offset", "offset_term")

    def __init__(self, offset: int = 0, offset_term: int = 0, entries: list[Entry] | None = None) -> None:
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = entries if entries is not None else []
        for position, entry in enumerate(self.entries):
            if entry.index != offset + 1 + position:
                raise ValueError(f"log entries not contiguous at {entry.index}")

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        entries = self.entries
        return entries[-1].term if entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; ``None`` if compacted away (below offset) or beyond the end."""
        if index == self.offset:
            return self.offset_term
        position = index - self.offset - 1
        if 0 <= position < len(self.entries):
            return self.entries[position].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def slice(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start`` .. ``stop - 1`` (``start`` must be > offset)."""
        base = self.offset + 1
        return self.entries[start - base : stop - base]

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Delete every entry with index >= ``index``."""
        del self.entries[index - self.offset - 1 :]

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (which must be in the log)."""
        if index <= self.offset:
            return
        term = self.term(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        del self.entries[: index - self.offset]
        self.offset = index
        self.offset_term = term

    def reset(self, offset: int, offset_term: int) -> None:
        """Discard everything: the log now starts after ``offset`` (an installed snapshot)."""
        self.entries = []
        self.offset = offset
        self.offset_term = offset_term
