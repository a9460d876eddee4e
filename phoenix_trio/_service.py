"""Services: named node-to-node channels for protocols built on top of the node.

Agents exchange Messages; protocols that run between *nodes* (Raft, the overlay,
pub-sub subscription tables, delivery acknowledgements) exchange their own encoded
payloads. ``async with node.service("raft") as service`` opens such a channel: payloads
sent with ``service.send(node_id, payload)`` arrive at the peer's service of the same
name as ``(sender_node_id, payload)`` pairs, in order per peer. They travel as control
frames on the existing peer connection, ahead of queued agent traffic.

Bounded both ways: a service's receive queue holds ``capacity`` payloads, and a full
queue stops the connection's reader like a full agent inbox does; on the sending side a
peer connection buffers at most ``MAX_CONTROL_BYTES`` of control traffic, beyond which
``send`` waits and ``send_nowait`` returns False. A payload for a service the peer has
not opened is dropped there and counted.

Fault injection (for tests of protocols built on services). ``service.inject_faults(
ServiceFaults(seed=1, delay=(0.0, 0.02), duplicate=0.05, drop=0.01))`` makes this end
hold every arriving payload for a random delay drawn from ``delay`` (so payloads of one
peer overtake each other: reordering), deliver some twice and lose some, all drawn from
a ``random.Random(seed)`` and timed on Trio's clock (``MockClock`` drives it). Held
payloads count against ``capacity``, so backpressure still works. ``inject_faults(None)``
stops injecting; payloads already held are still delivered when due. Only the inbound
side of this one service is affected; the node and other services are untouched.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import TYPE_CHECKING

import attrs
import trio

from ._errors import ConfigurationError, NodeUnreachable

if TYPE_CHECKING:
    from ._node import Node

MAX_NAME = 64
MAX_PAYLOAD = 8 * 1024 * 1024


@attrs.frozen(slots=True)
class ServiceStatistics:
    name: str
    queued: int
    received: int
    sent: int
    dropped: int


@attrs.frozen(slots=True)
class ServiceFaults:
    """Inbound faults for one service end (see the module docstring): tests only.

    ``delay``: each payload is held for ``uniform(low, high)`` seconds of Trio time;
    ``duplicate``: probability that a payload is delivered twice (each copy with its own
    delay); ``drop``: probability that it is lost. Every draw comes from
    ``random.Random(seed)``, in arrival order.
    """

    seed: int
    delay: tuple[float, float] = (0.0, 0.0)
    duplicate: float = 0.0
    drop: float = 0.0

    def __attrs_post_init__(self) -> None:
        low, high = self.delay
        if not 0.0 <= low <= high:
            raise ConfigurationError("fault delay must be (low, high) with 0 <= low <= high")
        if not (0.0 <= self.duplicate <= 1.0 and 0.0 <= self.drop <= 1.0):
            raise ConfigurationError("fault probabilities must be within [0, 1]")


class Service:
    """One end of a named node-to-node channel. See the module docstring."""

    def __init__(self, node: Node, name: str, capacity: int) -> None:
        if type(name) is not str or not 0 < len(name) <= MAX_NAME:
            raise ConfigurationError(f"service names are 1-{MAX_NAME} characters")
        if capacity < 1:
            raise ConfigurationError("service capacity must be at least 1")
        self.node = node
        self.name = name
        self.capacity = capacity
        self._queue: deque[tuple[str, bytes]] = deque()
        self._closed = False
        self._consumers = trio.lowlevel.ParkingLot()
        self._producers = trio.lowlevel.ParkingLot()
        self._received = 0
        self._sent = 0
        self._dropped = 0
        self._faults: ServiceFaults | None = None
        self._fault_rng = random.Random(0)
        self._held: list[tuple[float, int, str, bytes]] = []  # (due, order, sender, payload)
        self._held_order = 0
        self.faults_dropped = 0
        self.faults_duplicated = 0

    def inject_faults(self, faults: ServiceFaults | None) -> None:
        """Delay, reorder, duplicate and drop arriving payloads as ``faults`` says (None: stop)."""
        self._faults = faults
        if faults is not None:
            self._fault_rng = random.Random(faults.seed)

    # -- sending --------------------------------------------------------------------------

    def peers(self) -> list[str]:
        """The nodes this node is connected to right now."""
        return sorted(node for node, c in self.node._connections.items() if not c.closed)

    def send_nowait(self, node_id: str, payload: bytes) -> bool:
        """Queue ``payload`` for ``node_id``; False if not connected or its buffer is full."""
        connection = self.node._connections.get(node_id)
        if connection is None or connection.closed:
            return False
        if len(payload) > MAX_PAYLOAD:
            raise ConfigurationError(f"service payloads are limited to {MAX_PAYLOAD} bytes")
        if not connection.try_send_control(connection.protocol.service(self.name, payload)):
            return False
        self._sent += 1
        return True

    async def send(self, node_id: str, payload: bytes) -> None:
        """Queue ``payload`` for ``node_id``, waiting while its buffer is full.

        Raises :class:`~phoenix_trio.NodeUnreachable` when there is no connection to it.
        """
        while True:
            connection = self.node._connections.get(node_id)
            if connection is None or connection.closed:
                raise NodeUnreachable(node_id, "not connected")
            if self.send_nowait(node_id, payload):
                await trio.lowlevel.checkpoint_if_cancelled()
                return
            await connection.wait_for_control_space()

    # -- receiving ------------------------------------------------------------------------

    def _offer(self, sender: str, payload: bytes) -> bool:
        if self._closed:
            self._dropped += 1
            return True
        if len(self._queue) + len(self._held) >= self.capacity:
            return False
        if self._faults is not None:
            self._hold(self._faults, sender, payload)
            return True
        self._queue.append((sender, payload))
        self._received += 1
        if self._consumers:
            self._consumers.unpark_all()
        return True

    def _hold(self, faults: ServiceFaults, sender: str, payload: bytes) -> None:
        rng = self._fault_rng
        self._received += 1
        if faults.drop and rng.random() < faults.drop:
            self.faults_dropped += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            self.faults_duplicated += 1
        now = trio.current_time()
        for _ in range(copies):
            self._held_order += 1
            heapq.heappush(self._held, (now + rng.uniform(*faults.delay), self._held_order, sender, payload))
        if self._consumers:
            self._consumers.unpark_all()  # a waiting receiver recomputes its deadline

    def _release_due(self) -> None:
        held = self._held
        now = trio.current_time()
        while held and held[0][0] <= now:
            _, _, sender, payload = heapq.heappop(held)
            self._queue.append((sender, payload))

    async def _put(self, sender: str, payload: bytes) -> None:
        """Called by a connection's reader: waits while the queue is full (backpressure)."""
        while not self._offer(sender, payload):
            await self._producers.park()

    async def receive(self) -> tuple[str, bytes]:
        """The next ``(sender node id, payload)``; ``trio.EndOfChannel`` once closed."""
        while True:
            if self._held:
                self._release_due()
            if self._queue:
                break
            if self._closed:
                raise trio.EndOfChannel
            if self._held:
                with trio.move_on_at(self._held[0][0]):
                    await self._consumers.park()
            else:
                await self._consumers.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._take()

    def receive_nowait(self) -> tuple[str, bytes]:
        if self._held:
            self._release_due()
        if self._queue:
            return self._take()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _take(self) -> tuple[str, bytes]:
        item = self._queue.popleft()
        if self._producers:
            self._producers.unpark_all()
        return item

    def __aiter__(self) -> Service:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._closed = True
        self._dropped += len(self._queue) + len(self._held)
        self._queue.clear()
        self._held.clear()
        self._consumers.unpark_all()
        self._producers.unpark_all()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(self.name, len(self._queue) + len(self._held), self._received, self._sent, self._dropped)
