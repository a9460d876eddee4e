"""The driver's half of the durability contract, as a small sans-IO helper.

Raft's ``Persist``/``PersistSnapshot`` effects are barriers: nothing emitted after one may
be carried out before it is durable. :class:`PersistBarrier` sorts a node's effects
accordingly; both the simulation and the Trio runtime use it::

    barrier = PersistBarrier()
    ready = barrier.feed(node.receive(...))      # carry these out now (in order)
    ready += barrier.feed(node.timer(...))       # ... as many inputs as you like
    if barrier.pending:
        wal.append(barrier.persists())            # every persist of the batch
        wal.sync()                                # one write, one fsync
        ready += barrier.synced()                 # what waited behind them, in order

After a crash, :meth:`crash` hands back the unsynced persists (a real disk may have kept
any prefix of them) and forgets the held effects.
"""

from __future__ import annotations

from typing import Any

from ._effects import Persist, PersistSnapshot


class PersistBarrier:
    __slots__ = ("_held", "_persists")

    def __init__(self) -> None:
        self._held: list[Any] = []
        self._persists: list[Any] = []

    @property
    def pending(self) -> bool:
        """True while some persist waits for a sync (and effects are held behind it)."""
        return bool(self._persists)

    def feed(self, effects: list[Any]) -> list[Any]:
        """Take one input's effects; return those that may be carried out right now."""
        if not effects:
            return []
        held = self._held
        if not held:
            # fast path: nothing held, and often no persist at all
            for position, effect in enumerate(effects):
                kind = type(effect)
                if kind is Persist or kind is PersistSnapshot:
                    ready = effects[:position]
                    self._hold(effects[position:])
                    return ready
            return effects
        self._hold(effects)
        return []

    def _hold(self, effects: list[Any]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is Persist or kind is PersistSnapshot:
                self._persists.append(effect)
            self._held.append(effect)

    def persists(self) -> list[Any]:
        """The persists waiting to be written, in order (write them all, then sync once)."""
        return list(self._persists)

    def synced(self) -> list[Any]:
        """Everything persisted is durable now: release the held effects (persists excluded), in order."""
        held = self._held
        self._held = []
        self._persists = []
        return [e for e in held if type(e) is not Persist and type(e) is not PersistSnapshot]

    def crash(self) -> list[Any]:
        """The process died: return the unsynced persists and drop everything held."""
        persists = self._persists
        self._held = []
        self._persists = []
        return persists
