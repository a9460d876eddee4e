"""Raft's safety invariants, checked continuously while a simulation runs.

:class:`SafetyChecker` is fed by a driver (``SimCluster`` does it after every event):

- **election safety**: at most one leader per term;
- **log matching**: an ``(index, term)`` pair names one entry everywhere, always with the
  same predecessor term, so equal pairs imply equal prefixes;
- **leader completeness**: a new leader's log holds every entry committed so far;
- **state-machine safety**: every member applies the same entry at each index, and
  applies indexes in order without gaps (except across an installed snapshot).

Commits and applies are recorded only once they are *visible*: when everything the node
emitted up to then has been released by its driver (persists durable). A leader may count
its own unsynced entry towards a commit; nothing leaves it before the fsync, so a crash
in between is not a violation (see ``docs/raft.md``).
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._core import LEADER, RaftNode
from ._effects import Persist
from ._messages import Entry, NodeId


class InvariantViolation(AssertionError):
    """A Raft safety property failed; the message says which and where."""


def _fingerprint(entry: Entry) -> bytes:
    return msgpack.packb([entry.kind, entry.data], use_bin_type=True)


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.committed: dict[int, int] = {}
        self.max_committed = 0
        self.entries: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self._commit_seen: dict[NodeId, int] = {}
        self._applied_seen: dict[NodeId, int] = {}
        self._leader_term: dict[NodeId, int] = {}
        self.checks = 0

    def fail(self, message: str) -> None:
        raise InvariantViolation(message)

    # -- observations ------------------------------------------------------------------

    def restarted(self, node: RaftNode) -> None:
        """``node`` was rebuilt from durable state: its volatile progress starts over."""
        self._commit_seen[node.id] = node.commit
        self._applied_seen[node.id] = node.applied
        self._leader_term.pop(node.id, None)

    def observe(self, node: RaftNode) -> None:
        """Check ``node``'s visible state (call when nothing it emitted is held back)."""
        self.checks += 1
        if node.role == LEADER:
            holder = self.leaders.setdefault(node.term, node.id)
            if holder != node.id:
                self.fail(f"election safety: {holder!r} and {node.id!r} both lead term {node.term}")
            if self._leader_term.get(node.id) != node.term:
                self._leader_term[node.id] = node.term
                self._check_completeness(node)
        commit = node.commit
        seen = self._commit_seen.get(node.id, 0)
        if commit > seen:
            log = node.log
            for index in range(max(seen, log.offset) + 1, commit + 1):
                term = log.term(index)
                known = self.committed.setdefault(index, term)  # type: ignore[arg-type]
                if known != term:
                    self.fail(f"state-machine safety: index {index} committed with term {known} and {term} ({node.id!r})")
            self._commit_seen[node.id] = commit
            if commit > self.max_committed:
                self.max_committed = commit

    def _check_completeness(self, node: RaftNode) -> None:
        top = self.max_committed
        if top == 0:
            return
        log = node.log
        if top <= log.offset:
            known = self.committed.get(log.offset)
            if known is not None and known != log.offset_term:
                self.fail(f"leader completeness: {node.id!r} (term {node.term}) snapshot term differs at {log.offset}")
            return
        term = log.term(top)
        if term != self.committed[top]:
            self.fail(
                f"leader completeness: {node.id!r} leads term {node.term} without committed entry "
                f"{top} (term {self.committed[top]}); it has {term}"
            )

    def persisted(self, node: RaftNode, effect: Any) -> None:
        """Record entries as ``node`` creates or receives them (log matching)."""
        if type(effect) is not Persist or not effect.entries:
            return
        entries = effect.entries
        prev_term = node.log.term(entries[0].index - 1)
        registry = self.entries
        for entry in entries:
            key = (entry.index, entry.term)
            print_ = _fingerprint(entry)
            known = registry.get(key)
            if known is None:
                registry[key] = (print_, prev_term)
            else:
                if known[0] != print_:
                    self.fail(f"log matching: two different entries at index {entry.index} term {entry.term}")
                if prev_term is not None and known[1] is not None and known[1] != prev_term:
                    self.fail(
                        f"log matching: entry {key} follows term {known[1]} in one log and {prev_term} in {node.id!r}'s"
                    )
            prev_term = entry.term

    def applied_entry(self, node: RaftNode, entry: Entry) -> None:
        """``node`` applied ``entry`` (visible: its effects were released)."""
        last = self._applied_seen.get(node.id, 0)
        if entry.index != last + 1 and not (entry.index > last and node._snap_index >= entry.index - 1):
            self.fail(f"apply order: {node.id!r} applied {entry.index} after {last}")
        self._applied_seen[node.id] = entry.index
        record = (entry.term, _fingerprint(entry))
        known = self.applied.setdefault(entry.index, record)
        if known != record:
            self.fail(f"state-machine safety: {node.id!r} applied a different entry at index {entry.index}")

    # -- final cross-checks ------------------------------------------------------------

    def compare_logs(self, nodes: list[RaftNode]) -> None:
        """Log matching across every pair of logs as they stand now."""
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                low = max(a.log.offset, b.log.offset) + 1
                high = min(a.log.last_index, b.log.last_index)
                # find the highest common (index, term); everything below must be equal
                top = None
                for index in range(high, low - 1, -1):
                    if a.log.term(index) == b.log.term(index):
                        top = index
                        break
                if top is None:
                    continue
                for index in range(low, top + 1):
                    ea, eb = a.log.entry(index), b.log.entry(index)
                    if ea.term != eb.term or _fingerprint(ea) != _fingerprint(eb):
                        self.fail(f"log matching: {a.id!r} and {b.id!r} share ({top}) but differ at {index}")
