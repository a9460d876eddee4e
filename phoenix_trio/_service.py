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
"""

from __future__ import annotations

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
        if len(self._queue) >= self.capacity:
            return False
        self._queue.append((sender, payload))
        self._received += 1
        if self._consumers:
            self._consumers.unpark_all()
        return True

    async def _put(self, sender: str, payload: bytes) -> None:
        """Called by a connection's reader: waits while the queue is full (backpressure)."""
        while not self._offer(sender, payload):
            await self._producers.park()

    async def receive(self) -> tuple[str, bytes]:
        """The next ``(sender node id, payload)``; ``trio.EndOfChannel`` once closed."""
        while not self._queue:
            if self._closed:
                raise trio.EndOfChannel
            await self._consumers.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._take()

    def receive_nowait(self) -> tuple[str, bytes]:
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
        self._dropped += len(self._queue)
        self._queue.clear()
        self._consumers.unpark_all()
        self._producers.unpark_all()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(self.name, len(self._queue), self._received, self._sent, self._dropped)
