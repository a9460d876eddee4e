"""Durable Raft state kept in memory: what a driver without disks (the simulation) persists.

:class:`MemoryStorage` applies ``Persist``/``PersistSnapshot`` effects exactly as the
write-ahead log (:mod:`._wal`) does, and :meth:`MemoryStorage.load` returns the
:class:`DurableState` a restarted node is built from.
"""

from __future__ import annotations

from typing import Any

from ._core import DurableState
from ._effects import Persist, PersistSnapshot


def apply_persist(state: DurableState, effect: Any) -> None:
    """Apply one persist effect to ``state`` (shared by every storage)."""
    if type(effect) is Persist:
        state.term = effect.term
        state.vote = effect.vote
        entries = state.entries
        if effect.truncate_from is not None and entries:
            cut = effect.truncate_from - entries[0].index
            if cut < len(entries):
                del entries[max(cut, 0) :]
        if effect.entries:
            first = effect.entries[0].index
            expected = entries[-1].index + 1 if entries else (state.snapshot.index + 1 if state.snapshot else 1)
            if first != expected:
                raise AssertionError(f"persisted entries start at {first}, log expects {expected}")
            entries.extend(effect.entries)
    elif type(effect) is PersistSnapshot:
        snap = effect.snapshot
        state.snapshot = snap
        if effect.keep_log:
            state.entries = [e for e in state.entries if e.index > snap.index]
        else:
            state.entries = []
    else:
        raise TypeError(f"not a persist effect: {effect!r}")


class MemoryStorage:
    """Durable state in memory. ``apply(effect)`` makes one persist effect durable."""

    def __init__(self) -> None:
        self.state = DurableState()

    def apply(self, effect: Any) -> None:
        apply_persist(self.state, effect)

    def load(self) -> DurableState:
        """A copy of the durable state, for building a restarted node."""
        s = self.state
        return DurableState(s.term, s.vote, s.snapshot, list(s.entries))
