"""The effects a :class:`RaftNode` emits besides ``Send``/``SetTimer``/``CancelTimer``.

The ordering contract (see ``docs/raft.md``): a driver executes effects in the order the
node emitted them, across calls. ``Persist`` and ``PersistSnapshot`` are *barriers*: no
effect emitted after one may be carried out (no message sent, no result handed to a
client) until that persist is durable. A driver may batch: run many inputs, write every
persist of the batch with one write and one fsync, then carry out the rest in order.
On a crash, effects held behind an unsynced persist are simply lost.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._messages import Entry, NodeId, Snapshot


@attrs.frozen(slots=True)
class Persist:
    """Make durable: the hard state ``(term, vote)``, and the log change.

    If ``truncate_from`` is set, first delete every entry with index >= it; then append
    ``entries`` (contiguous, following the log's last entry).
    """

    term: int
    vote: NodeId | None
    entries: tuple[Entry, ...] = ()
    truncate_from: int | None = None


@attrs.frozen(slots=True)
class PersistSnapshot:
    """Make ``snapshot`` durable. Entries up to ``snapshot.index`` may be dropped after it.

    ``keep_log``: entries after the snapshot stay; when false the whole log is discarded
    (a follower whose log conflicted with the installed snapshot).
    """

    snapshot: Snapshot
    keep_log: bool = True


@attrs.frozen(slots=True)
class ProposalQueued:
    """The leader appended the proposal ``request_id`` at ``index`` in ``term``; not committed yet."""

    request_id: Any
    index: int
    term: int


@attrs.frozen(slots=True)
class ProposalResult:
    """The proposal ``request_id`` is decided: committed and applied (``result`` is the state
    machine's answer) or failed (``error`` set: ``ProposalDropped``/``ProposalOutcomeUnknown``)."""

    request_id: Any
    index: int
    result: Any = None
    error: Exception | None = None


@attrs.frozen(slots=True)
class ReadResult:
    """A read is answered: ``value`` as of applied ``index``, or ``error`` (``NotLeader``)."""

    request_id: Any
    value: Any = None
    index: int = 0
    error: Exception | None = None


@attrs.frozen(slots=True)
class RoleChanged:
    """This node's role or known leader changed (informational; drivers may ignore it)."""

    role: str
    term: int
    leader: NodeId | None
