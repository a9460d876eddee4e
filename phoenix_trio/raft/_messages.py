"""Raft's data records: log entries, snapshots and every protocol message.

All are attrs frozen slotted classes. Node ids are ``str`` or ``int`` (they must survive
msgpack). The wire encoding lives in :mod:`._codec`. The sender of a message is not a
field: the transport knows who sent it and passes it to ``RaftNode.receive``.
"""

from __future__ import annotations

from typing import Any, Union

import attrs

NodeId = Union[str, int]

ENTRY_COMMAND = 0
"""A client command, applied to the state machine."""
ENTRY_NOOP = 1
"""The empty entry a new leader appends to commit its term."""
ENTRY_CONFIG = 2
"""A membership configuration: ``data`` is the tuple of voter ids."""


@attrs.frozen(slots=True)
class Entry:
    """One log entry. ``data`` is any msgpack-serialisable value (for commands) or the voter tuple."""

    term: int
    index: int
    kind: int = ENTRY_COMMAND
    data: Any = None


@attrs.frozen(slots=True)
class Snapshot:
    """The state machine's state after applying ``index`` (of ``term``), with the config then in force."""

    index: int
    term: int
    config: tuple[NodeId, ...]
    data: bytes


# -- protocol messages ------------------------------------------------------------------


@attrs.frozen(slots=True)
class AppendEntries:
    """Leader -> follower: ``entries`` follow ``(prev_index, prev_term)``; ``commit`` is the leader's commit."""

    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@attrs.frozen(slots=True)
class AppendResponse:
    """Follower -> leader. Success: ``index`` is the last index now matching the leader.

    Reject: ``index`` is a hint (the follower may match up to it) and ``hint_term`` its term
    there, so the leader can skip a whole divergent term per round trip.
    """

    term: int
    success: bool
    index: int
    hint_term: int = 0


@attrs.frozen(slots=True)
class Heartbeat:
    """Leader -> follower: liveness, a safe commit index, and the read round ``seq``."""

    term: int
    commit: int
    seq: int


@attrs.frozen(slots=True)
class HeartbeatResponse:
    term: int
    seq: int


@attrs.frozen(slots=True)
class RequestVote:
    """Candidate -> voter. ``pre_vote``: a dry run at ``term`` that changes nobody's term.

    ``transfer`` marks an election started by ``TimeoutNow``: voters ignore their leader lease.
    """

    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@attrs.frozen(slots=True)
class VoteResponse:
    term: int
    granted: bool
    pre_vote: bool = False


@attrs.frozen(slots=True)
class InstallSnapshot:
    """Leader -> follower: one chunk of the snapshot at ``(index, snap_term)`` starting at byte ``offset``."""

    term: int
    index: int
    snap_term: int
    config: tuple[NodeId, ...]
    offset: int
    data: bytes
    done: bool


@attrs.frozen(slots=True)
class SnapshotResponse:
    """Follower -> leader: ``offset`` is the next byte wanted; ``done`` once installed (or not needed)."""

    term: int
    index: int
    offset: int
    done: bool


@attrs.frozen(slots=True)
class TimeoutNow:
    """Leader -> transfer target: start an election now, ignoring leases."""

    term: int


@attrs.frozen(slots=True)
class GroupSubmit:
    """Total-order group: a member hands messages ``seq, seq+1, ...`` of its ``stream`` to the leader."""

    stream: tuple[NodeId, int]
    seq: int
    payloads: tuple[Any, ...]


RaftMessage = Union[
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    GroupSubmit,
]
