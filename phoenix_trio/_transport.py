"""The Transport interface (the design's ``Phoenix.Transport`` behaviour) and the two built here.

A transport moves Messages to agents it can reach. Every transport offers:

- ``send_message(target, message, wait=True)``: hand ``message`` to agent ``target``;
  returns once the transport accepted it.
- ``broadcast_message(targets, message, delivery_mode="async" | "sync", timeout=5.0)``:
  the same message to several agents; ``"sync"`` waits for each target's
  acknowledgement (sent once the message is in the agent's inbox) and reports who
  acknowledged, who failed and who is missing, as a :class:`BroadcastResult`.
- ``reaches(node)``: whether it can deliver to agents on ``node`` (None: this node).

:class:`InProcessTransport` reaches this node's agents (the Message object itself goes
into the inbox; nothing is serialized). :class:`TcpTransport` reaches agents on peer
nodes over the native framed TCP connections. The node's router picks the transport per
target; later transports (overlay, HTTP/2, QUIC, UDP, WebSocket, Erlang distribution)
subclass :class:`Transport` the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ._errors import AgentNotFound, Backpressure, CircuitOpen, NodeUnreachable
from ._ids import new_id
from ._message import Message, validate_message
from ._peer_protocol import FLAG_ACK

if TYPE_CHECKING:
    from ._node import Node


@attrs.frozen(slots=True)
class BroadcastResult:
    """What a broadcast reached: acknowledged targets, failed ones and, with acks, the missing."""

    delivered: frozenset[str]
    failed: dict[str, Exception]
    missing: frozenset[str]

    @property
    def complete(self) -> bool:
        return not self.failed and not self.missing


class Transport(abc.ABC):
    """Base of every transport. Subclasses implement ``reaches`` and ``_deliver``."""

    name: str = "transport"

    def __init__(self, node: Node) -> None:
        self.node = node

    @abc.abstractmethod
    def reaches(self, node: str | None) -> bool:
        """Whether agents on ``node`` (None: this node) can be reached."""

    @abc.abstractmethod
    async def _deliver(self, agent_id: str, node: str | None, message: Message, flags: int, wait: bool) -> None:
        """Hand one message, addressed to ``agent_id`` on ``node``, to the wire (or inbox)."""

    def _locate(self, target: str) -> tuple[str, str | None]:
        agent_id, node = self.node._route(target)
        if not self.reaches(node):
            raise NodeUnreachable(node or self.node.id, f"the {self.name} transport does not reach agent {agent_id!r}")
        return agent_id, node

    async def send_message(self, target: str, message: Message, *, wait: bool = True) -> None:
        """Deliver ``message`` (validated first) to agent or group ``target``."""
        validate_message(message)
        agent_id, node = self._locate(target)
        if message.subject != agent_id:
            message = message.evolve(subject=agent_id)
        await self._deliver(agent_id, node, message, 0, wait)

    async def broadcast_message(
        self, targets: Sequence[str], message: Message, *, delivery_mode: str = "async", timeout: float = 5.0
    ) -> BroadcastResult:
        """``message`` to every target; with ``"sync"``, wait for their acknowledgements."""
        return await _broadcast(self.node, self, targets, message, delivery_mode, timeout)


class InProcessTransport(Transport):
    """Agents on this node: the Message goes straight into the inbox."""

    name = "in-process"

    def reaches(self, node: str | None) -> bool:
        return node is None

    async def _deliver(self, agent_id: str, node: str | None, message: Message, flags: int, wait: bool) -> None:
        await self.node._deliver_message(agent_id, None, message, flags, wait)


class TcpTransport(Transport):
    """Agents on peer nodes, over the native framed TCP connections."""

    name = "tcp"

    def reaches(self, node: str | None) -> bool:
        return node is not None

    async def _deliver(self, agent_id: str, node: str | None, message: Message, flags: int, wait: bool) -> None:
        await self.node._deliver_message(agent_id, node, message, flags, wait)


async def _broadcast(
    node: Node, transport: Transport | None, targets: Sequence[str], message: Message, delivery_mode: str, timeout: float
) -> BroadcastResult:
    """Shared by transports and the node: per-target copies, optional acknowledgements."""
    from ._node import _PendingAcks

    if delivery_mode not in ("async", "sync"):
        raise ValueError("delivery_mode must be 'async' or 'sync'")
    validate_message(message)
    unique = list(dict.fromkeys(targets))
    correlation_id = new_id() if delivery_mode == "sync" else None
    waiter = _PendingAcks(set(unique)) if correlation_id is not None else None
    if waiter is not None and correlation_id is not None:
        node._pending_acks[correlation_id] = waiter
        routing = message.routing
        message = message.evolve(routing=attrs.evolve(routing, correlation_id=correlation_id) if routing else None)
        if routing is None:
            from ._message import RoutingMetadata

            message = message.evolve(routing=RoutingMetadata(pattern="broadcast", correlation_id=correlation_id))
    sent: set[str] = set()
    failed: dict[str, Exception] = {}
    try:
        with trio.move_on_after(timeout):
            for target in unique:
                try:
                    carrier = transport
                    agent_id, where = node._route(target)
                    if carrier is None:
                        carrier = node.transport_for(where)
                    elif not carrier.reaches(where):
                        raise NodeUnreachable(where or node.id, f"the {carrier.name} transport does not reach {agent_id!r}")
                    copy = message if message.subject == agent_id else message.evolve(subject=agent_id)
                    await carrier._deliver(agent_id, where, copy, FLAG_ACK if waiter else 0, True)
                    sent.add(target)
                except (AgentNotFound, NodeUnreachable, Backpressure, CircuitOpen) as exc:
                    failed[target] = exc
                    if waiter is not None:
                        waiter.failed[target] = exc
            if waiter is not None:
                waiter.settle()
                await waiter.event.wait()
    finally:
        if correlation_id is not None:
            node._pending_acks.pop(correlation_id, None)
    if waiter is None:
        return BroadcastResult(frozenset(sent), failed, frozenset())
    return waiter.result(failed)
