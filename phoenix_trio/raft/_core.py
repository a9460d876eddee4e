"""The sans-IO Raft state machine: :class:`RaftNode`.

Inputs are messages (``receive``), timer firings (``timer``) and client commands
(``propose``, ``read``, ``change_membership``, ``transfer_leadership``), each with the
current time. Every input returns a list of effects: ``Send``/``SetTimer``/``CancelTimer``
from :mod:`phoenix_trio.effects` and Raft's own from :mod:`._effects`. The node never
reads a clock, does I/O or draws randomness other than from the ``random.Random`` it is
given.

Implemented: elections with randomized timeouts, pre-vote, check-quorum with leader
leases; pipelined, batched replication with a per-follower probe/replicate window;
commit of own-term entries only, after a no-op appended on election; in-order apply to
a pluggable state machine; snapshots, chunked InstallSnapshot, log compaction;
one-server-at-a-time membership changes; leadership transfer (TimeoutNow); strong
(ReadIndex), eventual and session reads.

Ordering contract: ``Persist``/``PersistSnapshot`` are barriers, see :mod:`._effects`.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .._errors import ConfigurationError, NotLeader
from ..effects import CancelTimer, Send, SetTimer
from ._effects import (
    Persist,
    PersistSnapshot,
    ProposalQueued,
    ProposalResult,
    ReadResult,
    RoleChanged,
)
from ._errors import ConfigChangeInProgress, ProposalDropped, ProposalOutcomeUnknown, TransferInProgress
from ._log import RaftLog
from ._messages import (
    ENTRY_COMMAND,
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    NodeId,
    RequestVote,
    Snapshot,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)

_log = logging.getLogger(__name__)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"

STRONG = "strong"
EVENTUAL = "eventual"
SESSION = "session"

_ELECTION = "raft.election"
_HEARTBEAT = "raft.heartbeat"
_TRANSFER = "raft.transfer"


@attrs.frozen(slots=True)
class RaftConfig:
    """Tuning knobs. Times are seconds of the driver's clock.

    ``election_timeout`` is the base: each wait is drawn from ``[t, 2t)``. A leader's
    lease (voters ignore disruptive candidates while they have heard from a leader) lasts
    ``election_timeout``; with ``check_quorum`` a leader steps down when it has not heard
    from a majority within that time.
    """

    election_timeout: float = 0.3
    heartbeat_interval: float = 0.05
    pre_vote: bool = True
    check_quorum: bool = True
    max_batch_entries: int = 1024
    max_inflight: int = 32
    snapshot_threshold: int = 8192
    snapshot_trailing: int = 1024
    snapshot_chunk: int = 1 << 20

    def __attrs_post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout:
            raise ConfigurationError("need 0 < heartbeat_interval < election_timeout")
        if self.max_batch_entries < 1 or self.max_inflight < 1 or self.snapshot_chunk < 1:
            raise ConfigurationError("batch, window and chunk sizes must be positive")
        if self.snapshot_threshold < 1 or self.snapshot_trailing < 0:
            raise ConfigurationError("snapshot_threshold must be >= 1 and snapshot_trailing >= 0")


@attrs.define
class DurableState:
    """What a node persisted: hard state, the latest snapshot, the log entries after it."""

    term: int = 0
    vote: NodeId | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.Factory(list)


@attrs.frozen(slots=True)
class Status:
    """A read-only view of a node, for drivers, tests and metrics."""

    id: NodeId
    role: str
    term: int
    leader: NodeId | None
    commit_index: int
    last_applied: int
    last_index: int
    snapshot_index: int
    voters: tuple[NodeId, ...]


class _Progress:
    """The leader's view of one follower."""

    __slots__ = ("acked_seq", "active", "behind", "inflight", "mark", "match", "next", "paused", "probe", "snap", "snap_offset")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.probe = True
        self.paused = False
        self.inflight = 0
        self.active = False
        self.acked_seq = 0
        self.mark = -1
        self.behind = False
        self.snap: Snapshot | None = None
        self.snap_offset = 0


class RaftNode:
    """One Raft member as a sans-IO state machine. See the module docstring.

    ``members`` is the bootstrap configuration, used only while neither a snapshot nor a
    configuration entry says otherwise; every founding member must get the same tuple.
    A server that will be added later starts with ``members=()`` and waits to be contacted.
    ``durable`` is what the node persisted before a restart (``None`` for a fresh node).
    ``on_apply(entry)`` is an optional observer called for every applied entry.
    """

    def __init__(
        self,
        node_id: NodeId,
        *,
        members: Iterable[NodeId],
        state_machine: Any,
        rng: random.Random,
        config: RaftConfig | None = None,
        durable: DurableState | None = None,
        on_apply: Callable[[Entry], None] | None = None,
    ) -> None:
        self.id = node_id
        self.config = config or RaftConfig()
        self.sm = state_machine
        self.rng = rng
        self.on_apply = on_apply
        durable = durable or DurableState()
        self.term = durable.term
        self.vote = durable.vote
        self.role = FOLLOWER
        self.leader: NodeId | None = None
        snap = durable.snapshot
        self.snapshot: Snapshot | None = snap
        if snap is not None:
            self.sm.restore(snap.data)
            entries = [e for e in durable.entries if e.index > snap.index]
            self.log = RaftLog(snap.index, snap.term, entries)
            self._base_config: tuple[NodeId, ...] = tuple(snap.config)
        else:
            self.log = RaftLog(0, 0, list(durable.entries))
            self._base_config = tuple(members)
        self._snap_index = snap.index if snap is not None else 0
        self.commit = self.applied = self.log.offset
        self._config_history: list[tuple[int, tuple[NodeId, ...]]] = [
            (e.index, tuple(e.data)) for e in self.log.entries if e.kind == ENTRY_CONFIG
        ]
        self.voters: tuple[NodeId, ...] = self._config_history[-1][1] if self._config_history else self._base_config
        # effects under construction, and the persist not yet emitted
        self._out: list[Any] = []
        self._hard_dirty = False
        self._p_entries: list[Entry] = []
        self._p_trunc: int | None = None
        # elections
        self.last_contact = float("-inf")
        self._now = 0.0
        self._timeout = self._random_timeout()
        self._votes: set[NodeId] = set()
        # leader state
        self.progress: dict[NodeId, _Progress] = {}
        self._term_start = 0
        self._transfer: NodeId | None = None
        self._hb_seq = 0
        self._read_rounds: deque[list[Any]] = deque()  # [seq, read_index, [(request_id, query)]]
        self._reads_next: list[tuple[Any, Any]] = []
        self._reads_noop: list[tuple[Any, Any]] = []
        # answered once applied >= index (strong: read index; session: session index)
        self._reads_apply: list[tuple[int, int, Any, Any]] = []
        self._read_counter = 0
        self._proposals: dict[int, list[tuple[Any, int]]] = {}
        self._snap_rx: tuple[int, int, bytearray] | None = None
        self._handlers: dict[type, Callable[[NodeId, Any, float], None]] = {
            AppendEntries: self._on_append,
            AppendResponse: self._on_append_response,
            Heartbeat: self._on_heartbeat,
            HeartbeatResponse: self._on_heartbeat_response,
            RequestVote: self._on_vote_request,
            VoteResponse: self._on_vote_response,
            InstallSnapshot: self._on_install_snapshot,
            SnapshotResponse: self._on_snapshot_response,
            TimeoutNow: self._on_timeout_now,
        }

    # == public inputs ================================================================

    def start(self, now: float) -> list[Any]:
        """Arm the election timer. Call once when the node starts (the simulation does)."""
        self._now = now
        self._out.append(SetTimer(_ELECTION, now + self._timeout))
        return self._take()

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        """Handle one protocol message from ``sender``."""
        self._now = now
        handler = self._handlers.get(type(message))
        if handler is None:
            _log.debug("%s: ignoring unknown message %r from %r", self.id, type(message).__name__, sender)
            return []
        handler(sender, message, now)
        return self._take()

    def timer(self, key: Any, now: float) -> list[Any]:
        """A timer this node set has fired."""
        self._now = now
        if key == _HEARTBEAT:
            if self.role == LEADER:
                self._heartbeat_tick(now)
        elif key == _ELECTION:
            self._election_tick(now)
        elif key == _TRANSFER:
            if self._transfer is not None:
                _log.info("%s: leadership transfer to %r timed out", self.id, self._transfer)
                self._transfer = None
        return self._take()

    def propose(self, request_id: Any, command: Any, now: float) -> list[Any]:
        """Append ``command``; raises :class:`NotLeader` (or ``TransferInProgress``) if this
        node cannot. Effects: ``ProposalQueued`` now, ``ProposalResult`` once decided."""
        return self.propose_batch([(request_id, command)], now)

    def propose_batch(self, items: Iterable[tuple[Any, Any]], now: float) -> list[Any]:
        """Append several ``(request_id, command)`` pairs at once: one persist, one send per follower."""
        self._now = now
        self._check_leader()
        term = self.term
        index = self.log.last_index
        entries = []
        queued = []
        for request_id, command in items:
            index += 1
            entries.append(Entry(term, index, ENTRY_COMMAND, command))
            self._track_proposal(index, request_id, term)
            queued.append(ProposalQueued(request_id, index, term))
        if not entries:
            return []
        self._append_local(entries)
        self._flush()
        self._out.extend(queued)
        self._replicate_all()
        self._maybe_commit()
        return self._take()

    def read(self, request_id: Any, query: Any, now: float, *, consistency: str = STRONG, session_index: int = 0) -> list[Any]:
        """Answer ``query`` against the state machine with the given consistency.

        - ``strong``: linearizable (ReadIndex confirmed by a quorum heartbeat round); leader only,
          otherwise raises :class:`NotLeader`.
        - ``eventual``: this replica's applied state right now, possibly stale.
        - ``session``: this replica's state once it has applied ``session_index`` (the last
          index the session wrote or read), so a session sees its own writes.

        The answer is a ``ReadResult`` effect, now or later.
        """
        self._now = now
        if consistency == STRONG:
            self._check_leader()
            if self.commit < self._term_start:
                self._reads_noop.append((request_id, query))
            else:
                self._start_read(request_id, query)
        elif consistency == EVENTUAL:
            self._emit(ReadResult(request_id, self.sm.query(query), self.applied))
        elif consistency == SESSION:
            if self.applied >= session_index:
                self._emit(ReadResult(request_id, self.sm.query(query), self.applied))
            else:
                self._wait_apply(session_index, request_id, query)
        else:
            raise ConfigurationError(f"unknown consistency {consistency!r}; use strong, eventual or session")
        return self._take()

    def change_membership(self, request_id: Any, now: float, *, add: NodeId | None = None, remove: NodeId | None = None) -> list[Any]:
        """Add or remove one voter (one server at a time). The new configuration is in force
        as soon as its entry is appended; ``ProposalResult`` follows when it commits.

        Raises :class:`NotLeader`, or :class:`ConfigChangeInProgress` while this term's
        first entry or the previous change is uncommitted.
        """
        self._now = now
        self._check_leader()
        if (add is None) == (remove is None):
            raise ConfigurationError("give exactly one of add= or remove=")
        if self.commit < self._term_start:
            raise ConfigChangeInProgress("the leader has not committed an entry of its term yet")
        if self._config_index() > self.commit:
            raise ConfigChangeInProgress("the previous membership change is not committed yet")
        voters = list(self.voters)
        if add is not None:
            if add in voters:
                raise ConfigurationError(f"{add!r} is already a voter")
            voters.append(add)
        else:
            if remove not in voters:
                raise ConfigurationError(f"{remove!r} is not a voter")
            if len(voters) == 1:
                raise ConfigurationError("cannot remove the last voter")
            voters.remove(remove)
        index = self.log.last_index + 1
        self._track_proposal(index, request_id, self.term)
        self._append_local([Entry(self.term, index, ENTRY_CONFIG, tuple(voters))])
        self._emit(ProposalQueued(request_id, index, self.term))
        self._replicate_all()
        self._maybe_commit()
        return self._take()

    def transfer_leadership(self, target: NodeId, now: float) -> list[Any]:
        """Hand leadership to ``target``: catch it up, then send it ``TimeoutNow``.

        Proposals are refused with :class:`TransferInProgress` until the transfer ends or
        times out (after one election timeout).
        """
        self._now = now
        self._check_leader()
        if target == self.id:
            return []
        if target not in self.voters or target not in self.progress:
            raise ConfigurationError(f"{target!r} is not a voter")
        self._transfer = target
        self._out.append(SetTimer(_TRANSFER, now + self.config.election_timeout))
        pr = self.progress[target]
        if pr.match == self.log.last_index:
            self._send(target, TimeoutNow(self.term))
        else:
            self._send_appends(target, pr)
        return self._take()

    def cancel_read(self, request_id: Any) -> None:
        """Forget a pending read (the driver gave up on it); no effect is emitted."""
        self._reads_apply = [r for r in self._reads_apply if r[2] != request_id]
        heapq.heapify(self._reads_apply)
        self._reads_next = [r for r in self._reads_next if r[0] != request_id]
        self._reads_noop = [r for r in self._reads_noop if r[0] != request_id]
        for round_ in self._read_rounds:
            round_[2] = [r for r in round_[2] if r[0] != request_id]

    def status(self) -> Status:
        return Status(
            self.id,
            self.role,
            self.term,
            self.leader,
            self.commit,
            self.applied,
            self.log.last_index,
            self._snap_index,
            self.voters,
        )

    # == effects plumbing =============================================================

    def _take(self) -> list[Any]:
        self._flush()
        out = self._out
        self._out = []
        return out

    def _flush(self) -> None:
        if self._hard_dirty or self._p_entries or self._p_trunc is not None:
            self._out.append(Persist(self.term, self.vote, tuple(self._p_entries), self._p_trunc))
            self._hard_dirty = False
            self._p_entries = []
            self._p_trunc = None

    def _emit(self, effect: Any) -> None:
        """Queue an effect that must not overtake pending persistence."""
        self._flush()
        self._out.append(effect)

    def _send(self, dest: NodeId, message: Any) -> None:
        self._flush()
        self._out.append(Send(dest, message))

    def _random_timeout(self) -> float:
        base = self.config.election_timeout
        return base + self.rng.random() * base

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _check_leader(self) -> None:
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self._transfer is not None:
            raise TransferInProgress(self._transfer)

    def _config_index(self) -> int:
        return self._config_history[-1][0] if self._config_history else 0

    def _config_at(self, index: int) -> tuple[NodeId, ...]:
        for at, voters in reversed(self._config_history):
            if at <= index:
                return voters
        return self._base_config

    def _track_proposal(self, index: int, request_id: Any, term: int) -> None:
        waiting = self._proposals.get(index)
        if waiting is None:
            self._proposals[index] = [(request_id, term)]
        else:
            waiting.append((request_id, term))

    # == log changes ==================================================================

    def _append_local(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._p_entries.extend(entries)
        for entry in entries:
            if entry.kind == ENTRY_CONFIG:
                self._config_history.append((entry.index, tuple(entry.data)))
                self._set_voters(tuple(entry.data))

    def _truncate_local(self, index: int) -> None:
        if index <= self.commit:
            raise AssertionError(f"{self.id}: asked to truncate committed entry {index} (commit {self.commit})")
        self._flush()
        self.log.truncate_from(index)
        self._p_trunc = index
        changed = False
        while self._config_history and self._config_history[-1][0] >= index:
            self._config_history.pop()
            changed = True
        if changed:
            self._set_voters(self._config_history[-1][1] if self._config_history else self._base_config)

    def _set_voters(self, voters: tuple[NodeId, ...]) -> None:
        self.voters = voters
        if self.role == LEADER:
            for peer in voters:
                if peer != self.id and peer not in self.progress:
                    pr = _Progress(self.log.last_index + 1)
                    pr.active = True
                    self.progress[peer] = pr
        # removed peers keep their progress until the change commits (see _after_commit)

    def _compact(self, index: int) -> None:
        if index <= self.log.offset:
            return
        self.log.compact(index)
        base = self._base_config
        history = self._config_history
        while history and history[0][0] <= index:
            base = history.pop(0)[1]
        self._base_config = base

    # == roles ========================================================================

    def _set_role(self, role: str, leader: NodeId | None) -> None:
        if role != self.role or leader != self.leader:
            self.role = role
            self.leader = leader
            self._out.append(RoleChanged(role, self.term, leader))

    def _become_follower(self, term: int, leader: NodeId | None, now: float) -> None:
        was_leader = self.role == LEADER
        if term > self.term:
            self.term = term
            self.vote = None
            self._hard_dirty = True
        self._set_role(FOLLOWER, leader)
        self._votes = set()
        if was_leader:
            self.progress = {}
            self._out.append(CancelTimer(_HEARTBEAT))
            if self._transfer is not None:
                self._transfer = None
                self._out.append(CancelTimer(_TRANSFER))
            self._fail_leader_reads(leader)
            self._timeout = self._random_timeout()
            self._out.append(SetTimer(_ELECTION, now + self._timeout))

    def _election_tick(self, now: float) -> None:
        cfg = self.config
        if self.role == LEADER:
            if cfg.check_quorum:
                active = 1 if self.id in self.voters else 0
                for peer in self.voters:
                    pr = self.progress.get(peer)
                    if pr is not None:
                        if pr.active:
                            active += 1
                        pr.active = False
                if active < self._quorum():
                    _log.info("%s: lost contact with a quorum in term %d; stepping down", self.id, self.term)
                    self._become_follower(self.term, None, now)
                    return
            self._out.append(SetTimer(_ELECTION, now + cfg.election_timeout))
            return
        deadline = self.last_contact + self._timeout
        if self.role == FOLLOWER and now < deadline:
            self._out.append(SetTimer(_ELECTION, deadline))
            return
        self._timeout = self._random_timeout()
        self._out.append(SetTimer(_ELECTION, now + self._timeout))
        if self.id not in self.voters:
            return
        if cfg.pre_vote:
            self._become_pre_candidate(now)
        else:
            self._become_candidate(now, transfer=False)

    def _become_pre_candidate(self, now: float) -> None:
        self._set_role(PRE_CANDIDATE, None)
        self._votes = {self.id}
        if len(self._votes) >= self._quorum():
            self._become_candidate(now, transfer=False)
            return
        request = RequestVote(self.term + 1, self.log.last_index, self.log.last_term, True, False)
        for peer in self.voters:
            if peer != self.id:
                self._send(peer, request)

    def _become_candidate(self, now: float, *, transfer: bool) -> None:
        self.term += 1
        self.vote = self.id
        self._hard_dirty = True
        self.role = CANDIDATE  # _set_role below reports it with the new term
        self.leader = None
        self._out.append(RoleChanged(CANDIDATE, self.term, None))
        self._votes = {self.id}
        self._timeout = self._random_timeout()
        self._out.append(SetTimer(_ELECTION, now + self._timeout))
        if len(self._votes) >= self._quorum():
            self._become_leader(now)
            return
        request = RequestVote(self.term, self.log.last_index, self.log.last_term, False, transfer)
        for peer in self.voters:
            if peer != self.id:
                self._send(peer, request)

    def _become_leader(self, now: float) -> None:
        _log.info("%s: leader for term %d", self.id, self.term)
        self._set_role(LEADER, self.id)
        self._votes = set()
        last = self.log.last_index
        self.progress = {peer: _Progress(last + 1) for peer in self.voters if peer != self.id}
        for pr in self.progress.values():
            pr.active = True  # a fresh leader gets one election timeout of grace
        self._transfer = None
        self._read_rounds.clear()
        self._reads_next = []
        self._reads_noop = []
        self._term_start = last + 1
        self._append_local([Entry(self.term, last + 1, ENTRY_NOOP, None)])
        self._out.append(SetTimer(_HEARTBEAT, now + self.config.heartbeat_interval))
        self._out.append(SetTimer(_ELECTION, now + self.config.election_timeout))
        self._replicate_all()
        self._maybe_commit()

    def _in_lease(self, now: float) -> bool:
        if not self.config.check_quorum:
            return False
        if self.role == LEADER:
            return True
        return self.leader is not None and now - self.last_contact < self.config.election_timeout

    # == elections: messages ==========================================================

    def _log_ok(self, last_index: int, last_term: int) -> bool:
        my_term = self.log.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.log.last_index)

    def _on_vote_request(self, sender: NodeId, m: RequestVote, now: float) -> None:
        if m.term > self.term and not m.transfer and self._in_lease(now):
            return  # a live leader: ignore the disruptive candidate (no term change, no reply)
        if m.pre_vote:
            heard_recently = self.role == LEADER or (
                self.leader is not None and now - self.last_contact < self.config.election_timeout
            )
            grant = m.term > self.term and not heard_recently and self._log_ok(m.last_index, m.last_term)
            self._send(sender, VoteResponse(m.term if grant else self.term, grant, True))
            return
        if m.term > self.term:
            self._become_follower(m.term, None, now)
        if m.term < self.term:
            self._send(sender, VoteResponse(self.term, False, False))
            return
        grant = (self.vote is None or self.vote == sender) and self._log_ok(m.last_index, m.last_term)
        if grant and self.role in (FOLLOWER, PRE_CANDIDATE):
            self._set_role(FOLLOWER, None)
            if self.vote != sender:
                self.vote = sender
                self._hard_dirty = True
            self.last_contact = now
        else:
            grant = False
        self._send(sender, VoteResponse(self.term, grant, False))

    def _on_vote_response(self, sender: NodeId, m: VoteResponse, now: float) -> None:
        if m.pre_vote:
            if m.granted:
                if self.role == PRE_CANDIDATE and m.term == self.term + 1 and sender in self.voters:
                    self._votes.add(sender)
                    if len(self._votes) >= self._quorum():
                        self._become_candidate(now, transfer=False)
            elif m.term > self.term:
                self._become_follower(m.term, None, now)
            return
        if m.term > self.term:
            self._become_follower(m.term, None, now)
            return
        if self.role != CANDIDATE or m.term != self.term or not m.granted or sender not in self.voters:
            return
        self._votes.add(sender)
        if len(self._votes) >= self._quorum():
            self._become_leader(now)

    def _on_timeout_now(self, sender: NodeId, m: TimeoutNow, now: float) -> None:
        if m.term < self.term:
            return
        if m.term > self.term:
            self._become_follower(m.term, sender, now)
        if self.role == LEADER or self.id not in self.voters:
            return
        _log.info("%s: TimeoutNow from %r: campaigning", self.id, sender)
        self._become_candidate(now, transfer=True)

    # == replication: follower side ===================================================

    def _accept_leader(self, sender: NodeId, term: int, now: float) -> None:
        if term > self.term or self.role != FOLLOWER or self.leader != sender:
            if self.role == LEADER and term == self.term:
                raise AssertionError(f"{self.id}: two leaders in term {term}: me and {sender!r}")
            self._become_follower(term, sender, now)
        self.last_contact = now

    def _on_append(self, sender: NodeId, m: AppendEntries, now: float) -> None:
        if m.term < self.term:
            self._send(sender, AppendResponse(self.term, False, 0, 0))
            return
        self._accept_leader(sender, m.term, now)
        log = self.log
        prev = m.prev_index
        entries = m.entries
        if prev < log.offset:
            skip = log.offset - prev
            if skip >= len(entries):
                self._send(sender, AppendResponse(self.term, True, prev + len(entries), 0))
                return
            entries = entries[skip:]
            prev = log.offset
        else:
            last = log.last_index
            if prev > last:
                self._send(sender, AppendResponse(self.term, False, last, log.last_term))
                return
            my_term = log.term(prev)
            if my_term != m.prev_term:
                hint = prev
                floor = max(log.offset, self.commit)
                while hint > floor and (log.term(hint) or 0) > m.prev_term:
                    hint -= 1
                self._send(sender, AppendResponse(self.term, False, hint, log.term(hint) or 0))
                return
        if entries:
            last = log.last_index
            if entries[0].index == last + 1:
                self._append_local(list(entries))
            else:
                for position, entry in enumerate(entries):
                    if entry.index > last:
                        self._append_local(list(entries[position:]))
                        break
                    if log.term(entry.index) != entry.term:
                        self._truncate_local(entry.index)
                        self._append_local(list(entries[position:]))
                        break
        match = prev + len(entries)
        new_commit = min(m.commit, match)
        if new_commit > self.commit:
            self.commit = new_commit
        self._send(sender, AppendResponse(self.term, True, match, 0))
        if self.applied < self.commit:
            self._apply_committed(now)

    def _on_heartbeat(self, sender: NodeId, m: Heartbeat, now: float) -> None:
        if m.term < self.term:
            self._send(sender, HeartbeatResponse(self.term, m.seq))
            return
        self._accept_leader(sender, m.term, now)
        new_commit = min(m.commit, self.log.last_index)
        if new_commit > self.commit:
            self.commit = new_commit
        self._send(sender, HeartbeatResponse(self.term, m.seq))
        if self.applied < self.commit:
            self._apply_committed(now)

    def _on_install_snapshot(self, sender: NodeId, m: InstallSnapshot, now: float) -> None:
        if m.term < self.term:
            self._send(sender, SnapshotResponse(self.term, m.index, 0, False))
            return
        self._accept_leader(sender, m.term, now)
        if m.index <= self.commit:
            self._snap_rx = None
            self._send(sender, SnapshotResponse(self.term, m.index, 0, True))
            return
        if m.offset == 0:
            self._snap_rx = (m.index, m.snap_term, bytearray())
        rx = self._snap_rx
        if rx is None or rx[0] != m.index or rx[1] != m.snap_term or len(rx[2]) != m.offset:
            want = len(rx[2]) if rx is not None and rx[0] == m.index and rx[1] == m.snap_term else 0
            self._send(sender, SnapshotResponse(self.term, m.index, want, False))
            return
        rx[2].extend(m.data)
        if not m.done:
            self._send(sender, SnapshotResponse(self.term, m.index, len(rx[2]), False))
            return
        self._snap_rx = None
        self._install_snapshot(Snapshot(m.index, m.snap_term, tuple(m.config), bytes(rx[2])), now)
        self._send(sender, SnapshotResponse(self.term, m.index, m.offset + len(m.data), True))

    def _install_snapshot(self, snap: Snapshot, now: float) -> None:
        log = self.log
        keep = log.term(snap.index) == snap.term
        self._flush()
        if keep:
            log.compact(snap.index)
            self._config_history = [h for h in self._config_history if h[0] > snap.index]
        else:
            log.reset(snap.index, snap.term)
            self._config_history = []
        self._base_config = tuple(snap.config)
        self._set_voters(self._config_history[-1][1] if self._config_history else self._base_config)
        self.sm.restore(snap.data)
        self.snapshot = snap
        self._snap_index = snap.index
        self.applied = snap.index
        if self.commit < snap.index:
            self.commit = snap.index
        self._out.append(PersistSnapshot(snap, keep))
        for index in [i for i in self._proposals if i <= snap.index]:
            for request_id, term in self._proposals.pop(index):
                self._emit(ProposalResult(request_id, index, error=ProposalOutcomeUnknown(index, term)))
        self._serve_applied_reads()
        if self.applied < self.commit:
            self._apply_committed(now)

    # == replication: leader side =====================================================

    def _replicate_all(self) -> None:
        for peer, pr in self.progress.items():
            self._send_appends(peer, pr)

    def _send_appends(self, peer: NodeId, pr: _Progress) -> None:
        """Send what ``peer`` is missing, as far as its window allows."""
        if pr.snap is not None:
            return
        log = self.log
        last = log.last_index
        cfg = self.config
        while True:
            if pr.next <= log.offset:
                self._start_snapshot_send(peer, pr)
                return
            if pr.probe:
                if pr.paused:
                    return
            elif pr.inflight >= cfg.max_inflight or pr.next > last:
                return
            prev = pr.next - 1
            stop = min(last + 1, pr.next + cfg.max_batch_entries)
            entries = tuple(log.slice(pr.next, stop)) if stop > pr.next else ()
            self._send(peer, AppendEntries(self.term, prev, log.term(prev) or 0, entries, self.commit))
            if pr.probe:
                pr.paused = True
                return
            pr.next = stop
            pr.inflight += 1

    def _start_snapshot_send(self, peer: NodeId, pr: _Progress) -> None:
        snap = self.snapshot
        if snap is None:
            raise AssertionError(f"{self.id}: log compacted to {self.log.offset} without a snapshot")
        pr.snap = snap
        pr.snap_offset = 0
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: NodeId, pr: _Progress) -> None:
        snap = pr.snap
        assert snap is not None
        offset = pr.snap_offset
        chunk = snap.data[offset : offset + self.config.snapshot_chunk]
        done = offset + len(chunk) >= len(snap.data)
        self._send(peer, InstallSnapshot(self.term, snap.index, snap.term, snap.config, offset, chunk, done))

    def _on_append_response(self, sender: NodeId, m: AppendResponse, now: float) -> None:
        if m.term > self.term:
            self._become_follower(m.term, None, now)
            return
        if m.term < self.term or self.role != LEADER:
            return
        pr = self.progress.get(sender)
        if pr is None:
            return
        pr.active = True
        if m.success:
            progressed = m.index > pr.match
            if progressed:
                pr.match = m.index
            if pr.probe:
                pr.probe = False
                pr.paused = False
                pr.inflight = 0
                pr.next = pr.match + 1
            else:
                if pr.inflight > 0:
                    pr.inflight -= 1
                if pr.next <= pr.match:
                    pr.next = pr.match + 1
            if progressed:
                self._maybe_commit()
                if self.role != LEADER:
                    return
            if self._transfer == sender and pr.match == self.log.last_index:
                self._send(sender, TimeoutNow(self.term))
            self._send_appends(sender, pr)
            return
        if m.index < pr.match:
            return  # a stale rejection
        log = self.log
        index = min(m.index, log.last_index)
        while index > log.offset and (log.term(index) or 0) > m.hint_term:
            index -= 1
        pr.next = max(pr.match + 1, index + 1)
        pr.probe = True
        pr.paused = False
        pr.inflight = 0
        self._send_appends(sender, pr)

    def _on_snapshot_response(self, sender: NodeId, m: SnapshotResponse, now: float) -> None:
        if m.term > self.term:
            self._become_follower(m.term, None, now)
            return
        if m.term < self.term or self.role != LEADER:
            return
        pr = self.progress.get(sender)
        if pr is None:
            return
        pr.active = True
        if m.done:
            if m.index > pr.match:
                pr.match = m.index
            if pr.snap is not None and pr.snap.index <= m.index:
                pr.snap = None
            if pr.snap is None:
                pr.next = pr.match + 1
                pr.probe = True
                pr.paused = False
                pr.inflight = 0
                self._maybe_commit()
                if self.role == LEADER:
                    self._send_appends(sender, pr)
            return
        if pr.snap is None or m.index != pr.snap.index:
            return
        pr.snap_offset = m.offset
        self._send_snapshot_chunk(sender, pr)

    def _heartbeat_tick(self, now: float) -> None:
        self._hb_seq += 1
        seq = self._hb_seq
        if self._reads_next:
            self._read_rounds.append([seq, self.commit, self._reads_next])
            self._reads_next = []
        last = self.log.last_index
        for peer, pr in self.progress.items():
            # stall detection: no progress for a whole interval while behind -> probe again
            if pr.behind and pr.match == pr.mark:
                if pr.snap is not None:
                    self._send_snapshot_chunk(peer, pr)
                else:
                    pr.probe = True
                    pr.paused = False
                    pr.inflight = 0
                    pr.next = pr.match + 1
                    self._send_appends(peer, pr)
            pr.mark = pr.match
            pr.behind = pr.match < last
            self._send(peer, Heartbeat(self.term, min(self.commit, pr.match), seq))
        self._out.append(SetTimer(_HEARTBEAT, now + self.config.heartbeat_interval))
        self._check_read_rounds()

    def _on_heartbeat_response(self, sender: NodeId, m: HeartbeatResponse, now: float) -> None:
        if m.term > self.term:
            self._become_follower(m.term, None, now)
            return
        if m.term < self.term or self.role != LEADER:
            return
        pr = self.progress.get(sender)
        if pr is None:
            return
        pr.active = True
        if m.seq > pr.acked_seq:
            pr.acked_seq = m.seq
            if self._read_rounds:
                self._check_read_rounds()

    def _maybe_commit(self) -> None:
        matches = []
        for voter in self.voters:
            if voter == self.id:
                matches.append(self.log.last_index)
            else:
                pr = self.progress.get(voter)
                matches.append(pr.match if pr is not None else 0)
        if not matches:
            return
        matches.sort(reverse=True)
        candidate = matches[len(matches) // 2]
        if candidate > self.commit and self.log.term(candidate) == self.term:
            self.commit = candidate
            self._apply_committed(None)
            self._after_commit()

    def _after_commit(self) -> None:
        if self.role != LEADER:
            return
        if self._config_index() <= self.commit:
            for peer in [p for p in self.progress if p not in self.voters]:
                del self.progress[peer]
            if self.id not in self.voters:
                _log.info("%s: removed from the configuration; stepping down", self.id)
                self._become_follower(self.term, None, self._now)
                return
        if self._reads_noop and self.commit >= self._term_start:
            waiting, self._reads_noop = self._reads_noop, []
            for request_id, query in waiting:
                self._start_read(request_id, query)

    # == apply and reads ==============================================================

    def _apply_committed(self, now: float | None) -> None:
        log = self.log
        sm = self.sm
        on_apply = self.on_apply
        proposals = self._proposals
        out = self._out
        self._flush()
        while self.applied < self.commit:
            index = self.applied + 1
            entry = log.entry(index)
            self.applied = index
            if entry.kind == ENTRY_COMMAND:
                try:
                    result = sm.apply(index, entry.data)
                except Exception as exc:  # the same on every replica: an answer, not a crash
                    _log.warning("%s: state machine raised applying index %d: %r", self.id, index, exc)
                    result = exc
            else:
                result = None
            if on_apply is not None:
                on_apply(entry)
            if proposals:
                waiting = proposals.pop(index, None)
                if waiting is not None:
                    for request_id, term in waiting:
                        if term == entry.term:
                            out.append(ProposalResult(request_id, index, result))
                        else:
                            out.append(ProposalResult(request_id, index, error=ProposalDropped(index, term)))
        if self._reads_apply:
            self._serve_applied_reads()
        if self.applied - self._snap_index >= self.config.snapshot_threshold:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        index = self.applied
        term = self.log.term(index)
        assert term is not None
        snap = Snapshot(index, term, self._config_at(index), self.sm.snapshot())
        self.snapshot = snap
        self._snap_index = index
        self._emit(PersistSnapshot(snap, True))
        self._compact(index - self.config.snapshot_trailing)

    def _wait_apply(self, index: int, request_id: Any, query: Any) -> None:
        self._read_counter += 1
        heapq.heappush(self._reads_apply, (index, self._read_counter, request_id, query))

    def _serve_applied_reads(self) -> None:
        reads = self._reads_apply
        while reads and reads[0][0] <= self.applied:
            _, _, request_id, query = heapq.heappop(reads)
            self._emit(ReadResult(request_id, self.sm.query(query), self.applied))

    def _start_read(self, request_id: Any, query: Any) -> None:
        if self._quorum() <= (1 if self.id in self.voters else 0):
            self._read_confirmed(self.commit, [(request_id, query)])
        elif self._read_rounds:
            self._reads_next.append((request_id, query))
        else:
            self._hb_seq += 1
            seq = self._hb_seq
            self._read_rounds.append([seq, self.commit, [(request_id, query)]])
            for peer, pr in self.progress.items():
                self._send(peer, Heartbeat(self.term, min(self.commit, pr.match), seq))

    def _check_read_rounds(self) -> None:
        rounds = self._read_rounds
        quorum = self._quorum()
        confirmed = None
        self_vote = 1 if self.id in self.voters else 0
        for round_ in rounds:
            seq = round_[0]
            acks = self_vote
            for voter in self.voters:
                pr = self.progress.get(voter)
                if pr is not None and pr.acked_seq >= seq:
                    acks += 1
            if acks >= quorum:
                confirmed = round_
            else:
                break
        if confirmed is None:
            return
        while rounds:
            round_ = rounds.popleft()
            self._read_confirmed(round_[1], round_[2])
            if round_ is confirmed:
                break
        if self._reads_next and not rounds:
            waiting, self._reads_next = self._reads_next, []
            self._hb_seq += 1
            seq = self._hb_seq
            rounds.append([seq, self.commit, waiting])
            for peer, pr in self.progress.items():
                self._send(peer, Heartbeat(self.term, min(self.commit, pr.match), seq))

    def _read_confirmed(self, read_index: int, reads: list[tuple[Any, Any]]) -> None:
        for request_id, query in reads:
            if self.applied >= read_index:
                self._emit(ReadResult(request_id, self.sm.query(query), self.applied))
            else:
                self._wait_apply(read_index, request_id, query)

    def _fail_leader_reads(self, leader: NodeId | None) -> None:
        failed = list(self._reads_noop) + list(self._reads_next)
        for round_ in self._read_rounds:
            failed.extend(round_[2])
        self._reads_noop = []
        self._reads_next = []
        self._read_rounds.clear()
        for request_id, _ in failed:
            self._emit(ReadResult(request_id, error=NotLeader(leader)))
