"""At-least-once and exactly-once delivery between nodes: the bookkeeping, sans-IO.

Messages sent with ``at_least_once`` or ``exactly_once`` travel in *streams*: one per
(sending node incarnation, target agent, epoch). Each message gets the next sequence
number of its stream and a stable message id, and the sender keeps it until the
receiving node acknowledges it.

- **at_least_once**: the receiver acknowledges each message (by sequence number) when
  the agent comes back for the next message, i.e. once the agent has finished handling
  it. Unacknowledged messages are sent again after their timeout, with backoff, up to
  ``max_retries`` times; then :class:`~phoenix_trio.DeliveryFailed`. Duplicates are
  possible; order is not promised.
- **exactly_once**: Kafka's idempotent-producer scheme. The receiver accepts a stream's
  messages only in sequence order (a gap means something was lost: the message is
  dropped, the sender's timeout resends everything unacknowledged, in order), keeps
  the highest sequence number each agent has *taken* in a durable log, drops anything
  at or below it as a duplicate (and acknowledges it again), and acknowledges
  cumulatively. A sender whose message exhausted its retries fails the rest of that
  stream too and starts a new epoch.

:class:`DeliveryTracker` is the sender's side, :class:`ExactlyOnceStreams` the
receiver's; both take the time as an argument and return what to do. The durable log
behind the receiver is :class:`phoenix_trio._dedup_log.DedupLog`.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from typing import Any

import attrs

from ._retry import RetryPolicy

ALO = 1
EO = 2
SEQ_BITS = 40
SEQ_MASK = (1 << SEQ_BITS) - 1
MAX_EPOCH = (1 << 23) - 1


def pack_dseq(epoch: int, seq: int) -> int:
    """A stream position on the wire: epoch in the high bits, sequence in the low 40."""
    return (epoch << SEQ_BITS) | seq


def unpack_dseq(dseq: int) -> tuple[int, int]:
    return dseq >> SEQ_BITS, dseq & SEQ_MASK


class Outstanding:
    """One message the sender still holds: sent, not yet acknowledged."""

    __slots__ = ("node", "agent", "epoch", "seq", "mode", "entry", "policy", "attempts", "deadline", "resend_at", "receipt")

    def __init__(
        self,
        node: str,
        agent: str,
        epoch: int,
        seq: int,
        mode: int,
        entry: Any,
        policy: RetryPolicy,
        receipt: Any = None,
    ) -> None:
        self.node = node
        self.agent = agent
        self.epoch = epoch
        self.seq = seq
        self.mode = mode
        self.entry = entry  # what the transport re-sends as is
        self.policy = policy
        self.attempts = 1
        self.deadline = 0.0
        self.resend_at: float | None = None
        self.receipt = receipt  # set by the driver when a caller waits for the outcome


class _SenderStream:
    __slots__ = ("epoch", "next_seq", "outstanding", "timeline")

    def __init__(self) -> None:
        self.epoch = 0
        self.next_seq = 1
        # Sequence order. An OrderedDict, not a dict: popping from the front of a plain
        # dict again and again leaves dummies that make next(iter(d)) slower each time.
        self.outstanding: OrderedDict[int, Outstanding] = OrderedDict()
        # Items in the order their first deadline falls (send order); acknowledged ones
        # are skipped when they reach the front.
        self.timeline: deque[Outstanding] = deque()


@attrs.frozen(slots=True)
class Resend:
    item: Outstanding


@attrs.frozen(slots=True)
class Failed:
    item: Outstanding
    reason: str


class DeliveryTracker:
    """The sender's side. See the module docstring.

    ``reserve(node, agent, mode)`` gives the stream position for a new message,
    ``add(...)`` starts tracking it, ``acked(...)`` settles it, and ``due(now)`` yields the
    resends and failures whose time has come. ``next_deadline()`` says when to call
    ``due`` again. At most ``window`` messages per stream are outstanding; ``has_room``
    tells the driver when senders must wait.

    Cost per message is O(1): first deadlines are kept per stream in send order (a
    stream's messages share one timeout, so that order is deadline order); only
    messages that actually time out move to a heap of retries.
    """

    def __init__(self, *, rng: random.Random | None = None, window: int = 65536) -> None:
        self.rng = rng or random.Random()
        self.window = window
        self._streams: dict[tuple[str, str, int], _SenderStream] = {}
        self._retries: list[tuple[float, int, Outstanding]] = []
        self._counter = 0
        self.outstanding = 0

    def _stream(self, node: str, agent: str, mode: int) -> _SenderStream:
        key = (node, agent, mode)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _SenderStream()
        return stream

    def has_room(self, node: str, agent: str, mode: int) -> bool:
        stream = self._streams.get((node, agent, mode))
        return stream is None or len(stream.outstanding) < self.window

    def stream(self, node: str, agent: str, mode: int) -> _SenderStream:
        """The stream to ``agent`` on ``node``; the hot path takes its next position with ``push``."""
        return self._stream(node, agent, mode)

    def push(self, stream: _SenderStream, item: Outstanding, now: float) -> None:
        """Track ``item`` (its ``seq`` taken from ``stream.next_seq`` by the caller)."""
        item.deadline = now + item.policy.timeout
        stream.outstanding[item.seq] = item
        stream.timeline.append(item)
        self.outstanding += 1

    def reserve(self, node: str, agent: str, mode: int) -> tuple[int, int]:
        """(epoch, seq) for the next message of this stream."""
        stream = self._stream(node, agent, mode)
        seq = stream.next_seq
        stream.next_seq += 1
        return stream.epoch, seq

    def add(self, item: Outstanding, now: float) -> None:
        stream = self._stream(item.node, item.agent, item.mode)
        item.deadline = now + item.policy.timeout
        stream.outstanding[item.seq] = item
        stream.timeline.append(item)
        self.outstanding += 1

    def _push_retry(self, when: float, item: Outstanding) -> None:
        self._counter += 1
        heapq.heappush(self._retries, (when, self._counter, item))

    def acked(self, node: str, agent: str, mode: int, epoch: int, seq: int) -> list[Outstanding]:
        """Settle one message (at-least-once) or everything up to ``seq`` (exactly-once)."""
        stream = self._streams.get((node, agent, mode))
        if stream is None or stream.epoch != epoch:
            return []
        done: list[Outstanding] = []
        if mode == EO:
            outstanding = stream.outstanding
            while outstanding:
                first, item = outstanding.popitem(last=False)
                if first > seq:
                    outstanding[first] = item
                    outstanding.move_to_end(first, last=False)
                    break
                done.append(item)
        else:
            settled = stream.outstanding.pop(seq, None)
            if settled is not None:
                done.append(settled)
        self.outstanding -= len(done)
        return done

    def acked_range(self, node: str, agent: str, epoch: int, first: int, last: int) -> list[Outstanding]:
        """Settle at-least-once messages ``first..last`` (inclusive) of one stream."""
        stream = self._streams.get((node, agent, ALO))
        if stream is None or stream.epoch != epoch:
            return []
        pop = stream.outstanding.pop
        done = [item for item in (pop(seq, None) for seq in range(first, last + 1)) if item is not None]
        self.outstanding -= len(done)
        return done

    @staticmethod
    def _current(stream: _SenderStream, item: Outstanding) -> bool:
        return stream.outstanding.get(item.seq) is item

    def next_deadline(self) -> float | None:
        best: float | None = None
        for stream in self._streams.values():
            timeline = stream.timeline
            while timeline and (not self._current(stream, timeline[0]) or timeline[0].resend_at is not None or timeline[0].attempts > 1):
                timeline.popleft()  # settled, or moved to the retry heap
            if timeline and (best is None or timeline[0].deadline < best):
                best = timeline[0].deadline
        retries = self._retries
        while retries and not self._live_retry(retries[0][2], retries[0][0]):
            heapq.heappop(retries)
        if retries and (best is None or retries[0][0] < best):
            best = retries[0][0]
        return best

    def _live_retry(self, item: Outstanding, when: float) -> bool:
        stream = self._streams.get((item.node, item.agent, item.mode))
        if stream is None or not self._current(stream, item) or stream.epoch != item.epoch:
            return False
        return when == (item.resend_at if item.resend_at is not None else item.deadline)

    def due(self, now: float) -> list[Resend | Failed]:
        """Everything whose timer expired by ``now``: messages to send again, or that failed."""
        actions: list[Resend | Failed] = []
        expired: list[Outstanding] = []
        for stream in list(self._streams.values()):
            timeline = stream.timeline
            while timeline and timeline[0].deadline <= now:
                item = timeline.popleft()
                if self._current(stream, item) and item.resend_at is None and item.attempts == 1:
                    expired.append(item)
        retries = self._retries
        while retries and retries[0][0] <= now:
            when, _, item = heapq.heappop(retries)
            if not self._live_retry(item, when):
                continue
            if item.resend_at is not None:  # backoff over: send again
                item.resend_at = None
                item.attempts += 1
                item.deadline = now + item.policy.timeout
                self._push_retry(item.deadline, item)
                actions.append(Resend(item))
            else:
                expired.append(item)
        for item in expired:
            owner = self._streams.get((item.node, item.agent, item.mode))
            if owner is None or not self._current(owner, item) or item.resend_at is not None:
                continue  # settled or rescheduled by an earlier expiry in this pass
            if item.policy.gives_up_after(item.attempts):
                actions.extend(self._fail(item, f"no acknowledgement after {item.attempts} attempt(s)"))
            elif item.mode == EO:
                self._go_back(item, now)
            else:
                item.resend_at = now + item.policy.backoff(item.attempts - 1, self.rng)
                self._push_retry(item.resend_at, item)
        return actions

    def _go_back(self, oldest: Outstanding, now: float) -> None:
        """Exactly-once: the receiver only takes messages in order, so resend the whole window."""
        stream = self._streams[(oldest.node, oldest.agent, oldest.mode)]
        delay = oldest.policy.backoff(oldest.attempts - 1, self.rng)
        for item in stream.outstanding.values():
            item.resend_at = now + delay
            self._push_retry(item.resend_at, item)

    def _fail(self, item: Outstanding, reason: str) -> list[Resend | Failed]:
        stream = self._streams[(item.node, item.agent, item.mode)]
        if item.mode == EO:
            # The receiver will never accept past this gap: fail the rest, start a new epoch.
            failed = list(stream.outstanding.values())
            stream.outstanding.clear()
            stream.timeline.clear()
            stream.epoch = min(stream.epoch + 1, MAX_EPOCH)
            stream.next_seq = 1
        else:
            failed = [stream.outstanding.pop(item.seq)]
        self.outstanding -= len(failed)
        return [Failed(f, reason) for f in failed]

    def forget_node(self, node: str) -> list[Outstanding]:
        """Drop everything outstanding to ``node`` (the local node is closing)."""
        dropped: list[Outstanding] = []
        for key in [k for k in self._streams if k[0] == node]:
            dropped.extend(self._streams.pop(key).outstanding.values())
        self.outstanding -= len(dropped)
        return dropped

    def all_outstanding(self) -> list[Outstanding]:
        return [item for stream in self._streams.values() for item in stream.outstanding.values()]


# -- the receiver's side ------------------------------------------------------------------------

ACCEPT = "accept"
DUPLICATE_TAKEN = "duplicate-taken"  # taken before: acknowledge again
DUPLICATE_QUEUED = "duplicate-queued"  # in the inbox already: it is acknowledged when taken
GAP = "gap"  # an earlier message is missing: drop, the sender resends in order

StreamKey = tuple[str, int, str, int]  # sender node, sender incarnation, agent, epoch


@attrs.define(slots=True)
class _ReceiverStream:
    accepted: int
    taken: int
    active: float


class ExactlyOnceStreams:
    """The receiver's side of exactly-once: which stream positions to accept.

    ``taken`` watermarks come from (and go to) the durable log; ``accepted`` ones are in
    memory only, so after a restart whatever was accepted but not taken is accepted
    again. Streams idle for longer than ``window`` seconds are forgotten (the
    de-duplication window); at most ``max_streams`` are kept (least recently active go
    first).
    """

    def __init__(self, taken: dict[StreamKey, int] | None = None, *, window: float = 120.0, max_streams: int = 100_000, now: float = 0.0) -> None:
        self.window = window
        self.max_streams = max_streams
        self._streams: OrderedDict[StreamKey, _ReceiverStream] = OrderedDict(
            (key, _ReceiverStream(seq, seq, now)) for key, seq in (taken or {}).items()
        )

    def offer(self, key: StreamKey, seq: int, now: float) -> str:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _ReceiverStream(0, 0, now)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(key)
        stream.active = now
        if seq <= stream.taken:
            return DUPLICATE_TAKEN
        if seq <= stream.accepted:
            return DUPLICATE_QUEUED
        if seq == stream.accepted + 1:
            stream.accepted = seq
            return ACCEPT
        return GAP

    def taken(self, key: StreamKey, seq: int, now: float) -> int:
        """The agent took ``seq``; returns the stream's taken watermark (what to acknowledge)."""
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _ReceiverStream(seq, seq, now)
        if seq > stream.taken:
            stream.taken = seq
        stream.active = now
        return stream.taken

    def taken_watermark(self, key: StreamKey) -> int:
        stream = self._streams.get(key)
        return 0 if stream is None else stream.taken

    def reset_accepted(self) -> None:
        """After losing the in-memory inbox contents: accept again from what was taken."""
        for stream in self._streams.values():
            stream.accepted = stream.taken

    def expire(self, now: float) -> list[StreamKey]:
        """Forget streams idle for longer than the window; returns them."""
        gone = [key for key, stream in self._streams.items() if now - stream.active > self.window]
        for key in gone:
            del self._streams[key]
        return gone

    def snapshot(self) -> dict[StreamKey, int]:
        """The taken watermarks worth keeping (for log compaction)."""
        return {key: stream.taken for key, stream in self._streams.items() if stream.taken}
