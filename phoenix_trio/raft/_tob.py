"""Total-order broadcast on the Raft log: every member delivers the group's messages in one order.

A :class:`TotalOrderGroup` is one member: a :class:`RaftNode` whose state machine is a
delivery log, plus the submission logic. ``broadcast(payload, now)`` numbers the payload
in this member's *stream* ``(member id, incarnation)`` and hands it to the leader (itself,
or the known leader in a ``GroupSubmit`` message). The leader proposes it; when the
entry commits, every member's state machine emits :class:`Deliver` in log order.

Guarantees (the ``total_order`` delivery guarantee):

- **one order**: any two members deliver the messages they both deliver in the same order
  (the commit order of the log), each with its log ``index``;
- **per-sender FIFO, no duplicates**: a stream's messages are delivered in ``seq`` order,
  each at most once (the state machine drops retried and out-of-order submissions);
- **retries**: a member resends what it has not yet seen delivered every
  ``retry_interval``, so messages survive leader changes and lost messages while the
  sender lives. Messages of a sender that crashes before they commit may be lost.

A member that restarts replays the log after its snapshot and delivers those messages
again: pass ``delivered_through`` (the last index the application processed) to skip
them. A member that catches up by installing a snapshot cannot deliver what the snapshot
summarises: it emits :class:`DeliveriesSkipped` instead.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import attrs
import msgpack

from ..effects import Send, SetTimer
from ._core import LEADER, DurableState, RaftConfig, RaftNode
from ._effects import ProposalQueued, ProposalResult
from ._messages import GroupSubmit, NodeId

_RETRY = "tob.retry"
_TAG = "tob"


@attrs.frozen(slots=True)
class Deliver:
    """Deliver ``payload``, message ``seq`` of the stream ``(sender, incarnation)``, at log ``index``."""

    index: int
    sender: NodeId
    incarnation: int
    seq: int
    payload: Any


@attrs.frozen(slots=True)
class DeliveriesSkipped:
    """This member installed a snapshot: messages up to log ``index`` will not be delivered here."""

    index: int


class _DeliveryLog:
    """The replicated state: the next expected ``seq`` of every stream. Apply emits deliveries."""

    def __init__(self) -> None:
        self.expected: dict[tuple[Any, int], int] = {}
        self.out: list[Any] = []
        self.floor = 0  # indexes at or below this are not delivered (already processed)
        self.restored = False

    def apply(self, index: int, command: Any) -> Any:
        try:
            tag, member, incarnation, seq, payloads = command
        except (TypeError, ValueError):
            return None
        if tag != _TAG:
            return None
        stream = (member, incarnation)
        expected = self.expected.get(stream, 0)
        for offset, payload in enumerate(payloads):
            s = seq + offset
            if s < expected:
                continue  # a retry of something already delivered
            if s > expected:
                break  # a gap: an earlier submission is missing; the sender will resend
            if index > self.floor:
                self.out.append(Deliver(index, member, incarnation, s, payload))
            expected += 1
        self.expected[stream] = expected
        return expected

    def query(self, stream: Any) -> int:
        return self.expected.get((stream[0], stream[1]), 0)

    def snapshot(self) -> bytes:
        return msgpack.packb([[m, i, n] for (m, i), n in self.expected.items()], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.expected = {(m, i): n for m, i, n in msgpack.unpackb(data, raw=False)}
        self.restored = True


class TotalOrderGroup:
    """One member of a total-order broadcast group. Sans-IO, like :class:`RaftNode`:
    ``start``/``receive``/``timer``/``broadcast`` return effects (Raft's, plus
    :class:`Deliver` and :class:`DeliveriesSkipped`)."""

    def __init__(
        self,
        member_id: NodeId,
        *,
        members: tuple[NodeId, ...],
        rng: random.Random,
        config: RaftConfig | None = None,
        durable: DurableState | None = None,
        retry_interval: float = 0.2,
        delivered_through: int = 0,
        max_batch: int = 256,
    ) -> None:
        self.id = member_id
        self.log = _DeliveryLog()
        self.log.floor = delivered_through
        self.raft = RaftNode(member_id, members=members, state_machine=self.log, rng=rng, config=config, durable=durable)
        self.log.restored = self.log.restored and self.raft.applied > delivered_through
        self.incarnation = rng.getrandbits(48)
        self.retry_interval = retry_interval
        self.max_batch = max_batch
        self._next_seq = 0
        self._unacked: deque[tuple[int, Any]] = deque()

    @property
    def stream(self) -> tuple[NodeId, int]:
        return (self.id, self.incarnation)

    @property
    def pending(self) -> int:
        """Messages broadcast by this member and not yet delivered here."""
        return len(self._unacked)

    def start(self, now: float) -> list[Any]:
        effects = self.raft.start(now)
        effects.append(SetTimer(_RETRY, now + self.retry_interval))
        return self._post(effects)

    def broadcast(self, payload: Any, now: float) -> list[Any]:
        """Submit ``payload`` for delivery to every member, in the group's order."""
        seq = self._next_seq
        self._next_seq += 1
        self._unacked.append((seq, payload))
        return self._post(self._submit(seq, [payload], now))

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        if type(message) is GroupSubmit:
            if self.raft.role != LEADER or self.raft._transfer is not None:
                return []  # the sender retries towards the leader it learns of
            stream = message.stream
            command = [_TAG, stream[0], stream[1], message.seq, list(message.payloads)]
            return self._post(self.raft.propose((_TAG, None), command, now))
        return self._post(self.raft.receive(sender, message, now))

    def timer(self, key: Any, now: float) -> list[Any]:
        if key == _RETRY:
            effects: list[Any] = []
            if self._unacked:
                first = self._unacked[0][0]
                payloads = [p for _, p in list(self._unacked)[: self.max_batch]]
                effects = self._submit(first, payloads, now)
            effects.append(SetTimer(_RETRY, now + self.retry_interval))
            return self._post(effects)
        return self._post(self.raft.timer(key, now))

    def _submit(self, seq: int, payloads: list[Any], now: float) -> list[Any]:
        raft = self.raft
        if raft.role == LEADER and raft._transfer is None:
            command = [_TAG, self.id, self.incarnation, seq, payloads]
            return raft.propose((_TAG, None), command, now)
        if raft.leader is not None and raft.leader != self.id:
            return [Send(raft.leader, GroupSubmit(self.stream, seq, tuple(payloads)))]
        return []

    def _post(self, effects: list[Any]) -> list[Any]:
        out = [e for e in effects if not (type(e) in (ProposalQueued, ProposalResult) and e.request_id == (_TAG, None))]
        if self.log.restored:
            self.log.restored = False
            out.append(DeliveriesSkipped(self.raft.status().snapshot_index))
        delivered = self.log.out
        if delivered:
            self.log.out = []
            out.extend(delivered)
            mine = [d.seq for d in delivered if d.sender == self.id and d.incarnation == self.incarnation]
            if mine:
                top = mine[-1]
                unacked = self._unacked
                while unacked and unacked[0][0] <= top:
                    unacked.popleft()
        return out
