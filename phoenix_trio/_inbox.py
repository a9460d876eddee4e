"""An agent's inbox: a bounded queue that moves messages in batches, read one at a time.

A Trio memory channel hands over about 100k items per second, because every ``send``
and ``receive`` is a scheduling round trip. An inbox keeps the same contract (bounded
capacity, a full inbox makes the producer wait, closing ends the consumer's loop) but
producers put whole batches in one step and the consumer takes messages from a deque,
so a batch of a thousand costs one wake-up, not a thousand.

Backpressure: :meth:`Inbox.put_many` waits while the inbox holds ``capacity`` messages.
A connection's reader calls it, so a full inbox stops that reader, the socket's receive
window closes, and the remote sender's ``send`` waits in turn.

Checkpoints: receiving is a cancellation point on every message and yields to the
scheduler at least every :data:`YIELD_EVERY` messages, so a busy consumer cannot starve
the node. Each message received becomes the consumer task's current trace context, so
what the consumer sends next continues the trace.

Reliable delivery hooks in here: an exactly-once message is recorded when it is taken,
an at-least-once message is acknowledged when the consumer comes back for the next one
(that is, once it has been handled).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Self

import attrs
import trio

from ._message import Message
from ._trace import _current as _current_trace

YIELD_EVERY = 64
TAKEN = 1  # hook kinds for Inbox.track
HANDLED = 2


@attrs.frozen(slots=True)
class InboxStatistics:
    """A snapshot of an inbox, like ``trio.MemoryChannelStatistics``."""

    agent_id: str
    capacity: int
    queued: int
    received: int
    delivered: int
    dropped: int
    producers_waiting: int
    closed: bool


class QueueConsumer:
    """The consumer side shared by agent inboxes and pub-sub subscriptions.

    ``receive``, ``receive_nowait`` and ``async for`` over a deque that producers fill in
    batches: a cancellation point on every message, a yield to the scheduler at least
    every :data:`YIELD_EVERY`. A subclass keeps ``_queue``, ``_closed``, ``_consumers``
    (woken when messages arrive or it closes) and ``_since_yield``, takes a message with
    ``_take()``, and keeps in ``_owed`` (truthy or not) what the previous message still
    owes once handled, which ``_settle()`` pays when the consumer comes back for the next.
    """

    _queue: deque[Message]
    _closed: bool
    _consumers: trio.lowlevel.ParkingLot
    _since_yield: int
    _owed: Any

    def _take(self) -> Message:
        raise NotImplementedError

    def _settle(self) -> None:
        raise NotImplementedError

    def receive_nowait(self) -> Message:
        """The next message, or raise ``trio.WouldBlock`` (``trio.EndOfChannel`` once closed)."""
        if self._owed:
            self._settle()
        if self._queue:
            return self._take()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Message:
        """Wait for the next message; ``trio.EndOfChannel`` once closed."""
        if self._owed:
            self._settle()
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            await self._consumers.park()
            self._since_yield = 0
            if self._queue:
                return self._take()
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()
            if not self._queue:
                return await self.receive()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return self._take()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        # The common case inline (one coroutine frame per message, not two).
        if self._owed:
            self._settle()
        if self._queue and self._since_yield < YIELD_EVERY - 1:
            self._since_yield += 1
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._queue:
                return self._take()
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Inbox(QueueConsumer):
    """The receiving side of an agent. ``async for message in inbox`` until it is closed."""

    def __init__(self, agent_id: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("inbox capacity must be at least 1")
        self.agent_id = agent_id
        self.capacity = capacity
        self._queue: deque[Message] = deque()
        self._closed = False
        self._consumers = trio.lowlevel.ParkingLot()
        self._producers = trio.lowlevel.ParkingLot()
        self._received = 0
        self._delivered = 0
        self._dropped = 0
        self._since_yield = 0
        # Reliable delivery: what to do when a tracked message is taken (exactly-once:
        # record it now) or handled (at-least-once: the consumer came back for more).
        self._hooks: dict[int, tuple[int, Any]] = {}
        self._owed: list[Any] = []
        self.on_taken: Any = None  # set by the node: called with (message, info) for TAKEN hooks
        self.on_handled: Any = None  # set by the node: called with [info, ...] for HANDLED hooks

    # -- producer side (the node) --------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def space(self) -> int:
        return self.capacity - len(self._queue)

    def track(self, message: Message, kind: int, info: Any) -> None:
        """Report ``info`` when ``message`` is taken (kind TAKEN: ``on_taken(message, info)``)
        or handled (kind HANDLED: ``on_handled([info, ...])`` once the consumer comes back)."""
        self._hooks[id(message)] = (kind, info)

    def _settle(self) -> None:
        owed, self._owed = self._owed, []
        self.on_handled(owed)

    def put_nowait_many(self, messages: list[Message]) -> int:
        """Queue as many of ``messages`` as fit; returns how many were taken."""
        if self._closed:
            return 0
        room = self.capacity - len(self._queue)
        if room <= 0:
            return 0
        taken = messages if len(messages) <= room else messages[:room]
        self._queue.extend(taken)
        self._received += len(taken)
        if self._consumers:
            self._consumers.unpark_all()
        return len(taken)

    async def put_many(self, messages: list[Message]) -> bool:
        """Queue all of ``messages``, waiting for room (backpressure). False if the inbox closed."""
        done = self.put_nowait_many(messages)
        if done == len(messages):
            await trio.lowlevel.checkpoint_if_cancelled()
            return not self._closed
        while done < len(messages):
            if self._closed:
                return False
            await self._producers.park()
            done += self.put_nowait_many(messages[done:])
        return True

    def close(self) -> None:
        """No more messages: the consumer's loop ends once the queue is drained... or now.

        Messages still queued when the agent leaves are dropped (and counted).
        """
        self._closed = True
        self._dropped += len(self._queue)
        self._queue.clear()
        self._hooks.clear()  # never taken: their senders will retry
        if self._owed:
            self._settle()
        self._consumers.unpark_all()
        self._producers.unpark_all()

    # -- consumer side (the user) --------------------------------------------------------

    def _take(self) -> Message:
        message = self._queue.popleft()
        self._delivered += 1
        if self._hooks:
            hook = self._hooks.pop(id(message), None)
            if hook is not None:
                if hook[0] == TAKEN:
                    self.on_taken(message, hook[1])
                else:
                    self._owed.append(hook[1])
        if self._producers and len(self._queue) <= self.capacity // 2:
            self._producers.unpark_all()
        _current_trace.set(message)  # the trace is resolved only if the consumer sends
        return message

    def drain_nowait(self) -> Iterable[Message]:
        """Take everything queued now, without waiting."""
        while self._queue:
            yield self._take()

    def statistics(self) -> InboxStatistics:
        return InboxStatistics(
            self.agent_id,
            self.capacity,
            len(self._queue),
            self._received,
            self._delivered,
            self._dropped,
            len(self._producers),
            self._closed,
        )
