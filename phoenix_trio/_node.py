"""The node: hosts agents and moves their messages within a process and across the cluster.

``async with open_node("n1", listen="127.0.0.1:7001", seeds=[...]) as node:`` starts a
node inside the caller's Trio run. Everything it starts (listener, membership timer,
one task per connection, each with its own reader and writer) lives under the node's
nursery; leaving the block says goodbye to the peers, cancels and joins all of it and
closes every socket.

Routing (the design's routing layer): a target is an agent id or a group name. Agents
on this node get the Message object itself (in-process transport, no serialization);
agents elsewhere are found in the directory and reached over the native TCP transport;
a group name goes through the load balancer to one of its members. A per-target
circuit breaker refuses calls to a target that keeps failing.

Patterns built here: point-to-point (:meth:`Node.send`), request-response
(:meth:`Node.request` and ``message.reply``), and broadcast to a list of agents, async or
with acknowledgements (:meth:`Node.broadcast`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from ._balancer import LoadBalancer
from ._breaker import BreakerConfig, CircuitBreaker
from ._channels import PRIMARY, ChannelConfig, pool_channels
from ._connection import Connection
from ._directory import Directory
from ._errors import (
    PhoenixError,
    AgentNotFound,
    Backpressure,
    CircuitOpen,
    ConfigurationError,
    DecodeError,
    LocalProtocolError,
    DeliveryFailed,
    EncodeError,
    NodeUnreachable,
    ProtocolError,
    RequestTimeout,
    SecurityError,
)
from ._ids import IdBlock, new_id
from ._ids import reserve as reserve_ids
from ._dedup_log import DedupLog
from ._delivery import ACCEPT as STREAM_ACCEPT
from ._delivery import ALO, EO, SEQ_BITS, SEQ_MASK, DeliveryTracker, ExactlyOnceStreams, Failed, Outstanding, Resend, pack_dseq, unpack_dseq
from ._delivery import DUPLICATE_QUEUED as STREAM_DUPLICATE_QUEUED
from ._delivery import DUPLICATE_TAKEN as STREAM_DUPLICATE_TAKEN
from ._flow import BACKPRESSURE as FLOW_BACKPRESSURE
from ._flow import DROPPED_NEWEST as FLOW_DROPPED_NEWEST
from ._flow import QUEUED as FLOW_QUEUED
from ._flow import REJECTED as FLOW_REJECTED
from ._flow import SPILL as FLOW_SPILL
from ._flow import WAIT as FLOW_WAIT
from ._flow import FlowControl, FlowStatistics, SpillStore, TargetQueue, decode_spilled, encode_spilled
from ._inbox import HANDLED, TAKEN, Inbox
from ._pubsub import FLAG_PUBLISH, PUBLISH_TYPE, PubSub, Subscription
from ._retry import RetryPolicy
from ._service import Service
from ._transport import BroadcastResult, InProcessTransport, TcpTransport, Transport, _broadcast
from ._membership import Connect, Disconnect, MemberEvent, MemberInfo, Membership, MembershipConfig
from ._overlay_runtime import OverlayMessage, OverlayRuntime, check_overlay_call, overlay_config
from ._message import (
    EMPTY,
    SPECVERSION,
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
    node_uri,
    reset_local_node,
    set_local_node,
    validate_message,
)
from ._peer_protocol import (
    FLAG_ACK,
    FLAG_ALO,
    FLAG_EO,
    FLAG_REPLY,
    FLAG_REQUEST,
    SendTemplate,
    Acks,
    AgentUpdate,
    Agents,
    DataBatch,
    Delivered,
    Goodbye,
    Heartbeat,
    Hello,
    Members,
    OverlayBatch,
    PeerError,
    RequestFailed,
    ServicePayload,
    node_id_ok,
)
from ._taxonomy import message_characteristics, validate_type
from .security._context import SecurityContext
from .security._gate import REJECTED_KIND, SecurityGate, rejection_error
from .security._tls import TlsConfig
from ._trace import _current as _current_trace
from ._trace import _resolve as _resolve_trace
from ._trace import next_hop_trace, random_bases
from ._vclock import LocalClock
from .effects import SetTimer
from ._watchers import Watchers
from .serialization._msgpack import decode as _msgpack_decode
from .serialization._msgpack import encode as _msgpack_encode

log = logging.getLogger(__name__)

DIRECT_TYPE = "phoenix.agent.direct.send"
REQUEST_TYPE = "phoenix.agent.request.send"
REPLY_TYPE = "phoenix.agent.request.reply"
BROADCAST_TYPE = "phoenix.agent.broadcast.send"
UTC = _dt.timezone.utc
SEND_YIELD_EVERY = 128

Address = tuple[str, int]


_MODE_FLAGS = {"at_least_once": FLAG_ALO, "exactly_once": FLAG_EO}
_WIRE_TYPES = frozenset({bytes, str, int, float, bool, type(None), dict, list, tuple})


def _check_encodable(data: Any) -> None:
    """Refuse, at send time, data whose top-level type MessagePack cannot carry.

    Batched messages are encoded later by the connection's writer; checking the top
    level here catches the common mistake while the caller can still see the error.
    Nested values that cannot be encoded are dropped at encoding time (logged, counted
    in ``node.stats["encode_failures"]``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview, str, int, float, dict, list, tuple)) and data is not None:
        raise EncodeError(f"cannot send {type(data).__name__}: message data must be MessagePack-encodable")


def parse_address(value: str | Address | None, *, default_host: str = "127.0.0.1") -> Address | None:
    """``"host:port"``, ``(host, port)`` or None."""
    if value is None:
        return None
    if isinstance(value, tuple):
        host, port = value
        return (str(host), int(port))
    host, sep, port_text = str(value).rpartition(":")
    if not sep:
        raise ConfigurationError(f"address {value!r} must be host:port")
    try:
        return (host.strip("[]") or default_host, int(port_text))
    except ValueError:
        raise ConfigurationError(f"address {value!r} must be host:port") from None


@attrs.frozen(slots=True)
class NodeConfig:
    """Tunables of a node. Times are seconds."""

    heartbeat_interval: float = 0.5
    failure_timeout: float = 2.0
    handshake_timeout: float = 5.0
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    max_pending: int = 8192  # messages queued per connection before senders wait
    max_pending_bytes: int = 8 * 1024 * 1024  # and bytes of large payloads (>= 4 KiB each) queued per connection
    max_frame: int = 16 * 1024 * 1024
    inbox_capacity: int = 1024
    cluster: str = "phoenix"
    compression: bool = False
    forget_after: float = 120.0
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    data_dir: str | None = None  # where durable state lives (the exactly-once log); None: memory only
    dedup_window: float = 120.0  # exactly-once de-duplication window, seconds (NATS JetStream's default)
    fsync: str = "interval"  # exactly-once log: "interval", "always" or "never" (see _dedup_log)
    fsync_interval: float = 0.05
    delivery_window: int = 65536  # reliable messages outstanding per (target node, agent) before send waits
    retry_base: float = 0.05  # first backoff step, seconds
    retry_cap: float = 10.0  # longest backoff, seconds
    security: SecurityContext | None = None  # see phoenix_trio.security and docs/security.md
    tls: TlsConfig | None = None  # security.configure_tls(...): peer connections over TLS
    channels: ChannelConfig | None = None  # parallel channels (phoenix_trio._channels); None: one connection per peer
    # The overlay instead of the full mesh (phoenix_trio._overlay_runtime, docs/overlay.md):
    # overlay.configure_overlay(...) or an OverlayConfig; gossip: overlay.start_gossip_protocol(...).
    overlay: Any = None
    gossip: Any = None


class _Receipt:
    """The outcome of one reliable delivery, for callers that wait for it."""

    __slots__ = ("_event", "_error")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._error: Exception | None = None

    def succeed(self) -> None:
        self._event.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        if self._error is not None:
            raise self._error


@attrs.define(slots=True)
class _PendingRequest:
    target: str
    node: str | None
    event: trio.Event = attrs.field(factory=trio.Event)
    reply: Message | None = None
    error: Exception | None = None


@attrs.define(slots=True)
class _PendingAcks:
    expected: set[str]
    acked: set[str] = attrs.field(factory=set)
    failed: dict[str, Exception] = attrs.field(factory=dict)
    event: trio.Event = attrs.field(factory=trio.Event)

    def settle(self) -> None:
        if self.expected <= self.acked | set(self.failed):
            self.event.set()

    def result(self, failed: dict[str, Exception]) -> BroadcastResult:
        """How a sync broadcast ended: who acknowledged, who failed (``failed`` plus the
        failures reported meanwhile) and who is missing."""
        failed.update(self.failed)
        acked = frozenset(self.acked)
        return BroadcastResult(acked, failed, frozenset(self.expected - acked - set(failed)))


@attrs.frozen(slots=True)
class MemberView:
    node_id: str
    address: Address
    incarnation: int
    status: str
    connected: bool


class _FlowTarget:
    """The running side of one flow-controlled target: its queue, drain task and spill store."""

    def __init__(self, node: Node, target: str, config: FlowControl) -> None:
        self.node = node
        self.target = target
        self.config = config
        self.queue = TargetQueue(target, config)
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._released_lot = trio.lowlevel.ParkingLot()
        self._cancel = trio.CancelScope()
        self._replays: deque[_Receipt] = deque()
        self.store: SpillStore | None = None
        if config.backpressure_strategy == "spill_to_disk":
            assert config.spill_dir is not None
            directory = os.path.join(config.spill_dir, re.sub(r"[^A-Za-z0-9._-]", "_", target))
            self.store = SpillStore(directory, segment_bytes=config.segment_bytes, max_bytes=config.max_spill_bytes)
            self.queue.spilled_pending = self.store.pending_records()  # from an earlier run: replayed first
            if self.queue.spilled_pending:
                self.queue.active = True

    def wake(self) -> None:
        if self._drain_lot:
            self._drain_lot.unpark_all()

    def _commit_replays(self) -> None:
        """Spilled messages leave the disk once delivered (acknowledged, for reliable ones), in order."""
        done = 0
        replays = self._replays
        while replays and replays[0]._event.is_set():
            replays.popleft()
            done += 1
        if done and self.store is not None:
            self.store.commit(done)

    async def wait_released(self) -> None:
        await self._released_lot.park()

    def report(self) -> None:
        transitions = self.queue.transitions
        if not transitions:
            return
        self.queue.transitions = []
        for state, length in transitions:
            if state == "released":
                self._released_lot.unpark_all()
            self.node.emit_telemetry(
                "flow.backpressure", {"target": self.target, "state": state, "queued": length, **attrs.asdict(self.queue.statistics())}
            )

    def spill(self, messages: list[Message]) -> bool:
        assert self.store is not None
        return self.store.append([encode_spilled(self.target, _msgpack_encode(m)) for m in messages])

    def alternative(self) -> str | None:
        """Where ``redirect`` sends an overflowing message: ``redirect_to``, or the target's group."""
        candidates = list(self.config.redirect_to)
        if not candidates:
            directory = self.node.directory
            group = directory.local.get(self.target) or directory.remote.get(self.target, (None, None))[1]
            candidates = directory.group_members(group or self.target)
        candidates = [c for c in candidates if c != self.target]
        return self.node.balancer.choose(candidates) if candidates else None

    def statistics(self) -> FlowStatistics:
        return self.queue.statistics()

    def remove(self) -> None:
        """Stop flow control for this target (queued messages are dropped and counted)."""
        self.node._flows.pop(self.target, None)
        self.queue.stats.dropped_newest += len(self.queue.queue)
        self.queue.queue.clear()
        self._cancel.cancel()
        self._released_lot.unpark_all()
        if self.store is not None:
            self.store.close()

    async def drain(self) -> None:
        with self._cancel:
            try:
                await self._drain()
            finally:
                if self.store is not None:
                    self.store.close()

    async def _drain(self) -> None:
        node = self.node
        queue = self.queue
        while True:
            self._commit_replays()
            if queue.wants_replay() and self.store is not None and len(self._replays) < self.config.high_watermark:
                records = self.store.read(max(1, self.config.high_watermark - len(queue.queue)))
                messages = []
                for record in records:
                    try:
                        _, payload = decode_spilled(record)
                        messages.append(_msgpack_decode(payload))
                    except DecodeError:
                        log.error("dropped an unreadable spilled message for %s", self.target)
                queue.replayed(messages)
                queue.spilled_pending -= len(records) - len(messages)
                self.report()
            if not queue.queue:
                if self._replays:
                    with trio.move_on_after(0.05):  # also notice replays being acknowledged
                        await self._drain_lot.park()
                else:
                    await self._drain_lot.park()
                continue
            entry = queue.take()  # taken before the await: a concurrent drop_oldest cannot touch it
            self.report()
            receipt = _Receipt() if isinstance(entry, Message) else None
            try:
                await node._flow_deliver(self.target, entry, receipt)
                if receipt is not None:
                    self._replays.append(receipt)
            except (NodeUnreachable, AgentNotFound, CircuitOpen) as exc:
                queue.queue.appendleft(entry)  # not sent: back to the front of the line
                queue.stats.sent -= 1
                if isinstance(exc, CircuitOpen):
                    await trio.sleep(exc.retry_after or node.config.heartbeat_interval)
                    continue
                # The target is away: wait for the cluster to change (it may come back),
                # keeping the queue (and the spill) meanwhile.
                with trio.move_on_after(node.config.heartbeat_interval):
                    await node._changed.wait()


class Agent:
    """A registered agent: iterate it for its messages; send and request as it.

    Made by ``async with node.agent(agent_id) as agent``. ``async for message in agent``
    yields each message; ``agent.inbox`` is the underlying :class:`~phoenix_trio.Inbox`.
    """

    def __init__(self, node: Node, agent_id: str, inbox: Inbox, group: str | None) -> None:
        self.node = node
        self.id = agent_id
        self.inbox = inbox
        self.group = group
        self.uri = node_uri(node.id, agent_id)

    def __aiter__(self) -> Inbox:
        return self.inbox

    async def receive(self) -> Message:
        return await self.inbox.receive()

    async def send(self, target: str, data: Any = None, **options: Any) -> None:
        """:meth:`Node.send` with this agent as the source."""
        options.setdefault("source", self.uri)
        await self.node.send(target, data, **options)

    async def request(self, target: str, data: Any = None, **options: Any) -> Message:
        """:meth:`Node.request` with this agent as the source."""
        options.setdefault("source", self.uri)
        return await self.node.request(target, data, **options)

    async def publish(self, topic: str, event: Any = None, **options: Any) -> None:
        """:meth:`Node.publish` with this agent as the source."""
        options.setdefault("source", self.uri)
        await self.node.publish(topic, event, **options)

    def subscribe(self, topic_pattern: str, **options: Any) -> AbstractAsyncContextManager[Subscription]:
        """:meth:`Node.subscribe` for this agent (the design's ``subscribe(agent, pattern)``)."""
        options.setdefault("subscriber", self.id)
        return self.node.subscribe(topic_pattern, **options)

    def statistics(self) -> Any:
        return self.inbox.statistics()


class Node:
    """A running node. Use :func:`open_node`; see the module docstring."""

    def __init__(self, name: str, *, listen: Address | None, seeds: list[Address], config: NodeConfig) -> None:
        if not node_id_ok(name):
            raise ConfigurationError(f"node name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")
        self.id = name
        self.uri = node_uri(name)
        self.config = config
        # Grows with every restart: milliseconds since the epoch, plus pid bits.
        self.incarnation = max(1, (int(_dt.datetime.now(UTC).timestamp() * 1000) << 8) | (os.getpid() & 0xFF))
        self._listen = listen
        self._seeds = seeds
        self.address: Address = listen or ("127.0.0.1", 0)
        self.clock = LocalClock(name)
        self.directory = Directory(name)
        self.balancer = LoadBalancer()
        self._rng = random.Random()
        self._inboxes: dict[str, Inbox] = {}
        self._services: dict[str, Service] = {}
        self.transports: dict[str, Transport] = {"in-process": InProcessTransport(self), "tcp": TcpTransport(self)}
        self._connections: dict[str, Connection] = {}
        self._all_connections: set[Connection] = set()
        self._channels = config.channels
        self._lanes_out: dict[tuple[str, str, int], Connection] = {}  # (peer, channel, lane) -> connection we dialled
        self._lanes_in: dict[tuple[str, str, int], Connection] = {}  # (peer, channel, lane) -> connection the peer dialled
        self._lane_dials: dict[tuple[str, str, int], trio.Event] = {}
        self._pending_requests: dict[str, _PendingRequest] = {}
        self._pending_acks: dict[str, _PendingAcks] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._send_templates: dict[tuple[Any, ...], SendTemplate] = {}
        self._routes: dict[str, tuple[str, str | None]] = {}
        self._responders: dict[str, Callable[..., Any]] = {}
        self._watchers: Watchers[MemberEvent] = Watchers()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._membership: Membership | None = None
        self._overlay_config = overlay_config(config.overlay, config.gossip)
        if self._channels is None and self._overlay_config is not None:
            self._channels = pool_channels(self._overlay_config.membership)
        self._overlay: OverlayRuntime | None = None
        self._hello: Hello | None = None
        self._timer_deadline = math.inf
        self._timer_wakeup = trio.lowlevel.ParkingLot()
        self._sends_since_yield = 0
        self._tracker = DeliveryTracker(rng=self._rng, window=config.delivery_window)
        self._ids = IdBlock()
        self._tracker_room = trio.lowlevel.ParkingLot()
        self._retransmit_deadline = math.inf
        self._retransmit_wakeup = trio.lowlevel.ParkingLot()
        self._eo_streams = ExactlyOnceStreams(window=config.dedup_window)
        self._dedup_log: DedupLog | None = None
        self._fsync_waiters: list[tuple[Connection, str, int]] = []
        self._flows: dict[str, _FlowTarget] = {}
        self._telemetry: Watchers[Message] = Watchers()
        self.security = SecurityGate(self, config.security) if config.security is not None else None
        self.pubsub = PubSub(self)
        self._pipelines: dict[str, Any] = {}
        self.closed = False
        self.stats = {
            "sent": 0, "received": 0, "dropped_unknown_agent": 0, "encode_failures": 0, "protocol_errors": 0, "dropped_unknown_service": 0,
            "retransmitted": 0, "delivery_failures": 0, "duplicates_dropped": 0, "out_of_order_dropped": 0,
        }  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._clock = trio.lowlevel.current_clock()  # trio's clock (MockClock in tests), without the lookup per call
        if self._listen is not None:
            listeners = await nursery.start(partial(trio.serve_tcp, self._accept, self._listen[1], host=self._listen[0]))
            sockname = listeners[0].socket.getsockname()
            self.address = (self._listen[0], sockname[1])
        self._hello = Hello(
            self.id,
            self.incarnation,
            self.address[0],
            self.address[1],
            self.config.cluster,
            ("lz4", "templates", "overlay")
            if self._overlay_config is not None
            else ("lz4", "templates") if self.config.compression else ("templates",),
        )
        if self._overlay_config is not None:
            await self._start_overlay(nursery)
            return
        self._membership = Membership(
            MemberInfo(self.id, self.address, self.incarnation),
            self._seeds,
            config=MembershipConfig(
                heartbeat_interval=self.config.heartbeat_interval,
                failure_timeout=self.config.failure_timeout,
                forget_after=self.config.forget_after,
            ),
            rng=self._rng,
        )
        if self.config.data_dir is not None:
            log, taken = DedupLog.open(self.config.data_dir, fsync=self.config.fsync)  # type: ignore[arg-type]
            self._dedup_log = log
            self._eo_streams = ExactlyOnceStreams(taken, window=self.config.dedup_window, now=trio.current_time())
            nursery.start_soon(self._sync_loop)
        nursery.start_soon(self._timer_loop)
        nursery.start_soon(self._retransmit_loop)
        await nursery.start(self.pubsub.run)
        self._apply(self._membership.start(trio.current_time()))

    async def _start_overlay(self, nursery: trio.Nursery) -> None:
        assert self._overlay_config is not None
        if self.config.data_dir is not None:
            log, taken = DedupLog.open(self.config.data_dir, fsync=self.config.fsync)  # type: ignore[arg-type]
            self._dedup_log = log
            self._eo_streams = ExactlyOnceStreams(taken, window=self.config.dedup_window, now=trio.current_time())
            nursery.start_soon(self._sync_loop)
        nursery.start_soon(self._retransmit_loop)
        self._overlay = OverlayRuntime(self, self._overlay_config, self._seeds)
        await nursery.start(self._overlay.run)

    async def _stop(self) -> None:
        if self._overlay is not None:
            self._overlay.leave()  # DISCONNECT(leaving) to the neighbours, queued before the GOODBYEs
        self.closed = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1.0):
                async with trio.open_nursery() as nursery:
                    for connection in list(self._all_connections):
                        if self._overlay is not None:
                            connection.finish("node shutting down")  # GOODBYE after everything queued
                            nursery.start_soon(connection.finished.wait)
                        else:
                            nursery.start_soon(connection.close_gracefully, "node shutting down")
        for pending in self._pending_requests.values():
            pending.error = NodeUnreachable(self.id, "local node closed")
            pending.event.set()
        for inbox in self._inboxes.values():
            inbox.close()
        self._watchers.close()
        for item in self._tracker.all_outstanding():
            if item.receipt is not None:
                item.receipt.fail(DeliveryFailed(item.agent, item.attempts, "local node closed"))
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # _sync_loop closes the exactly-once state

    # -- agents -------------------------------------------------------------------------

    @asynccontextmanager
    async def agent(
        self, agent_id: str, *, capacity: int | None = None, group: str | None = None, security: SecurityContext | None = None
    ) -> AsyncIterator[Agent]:
        """Register ``agent_id`` (optionally in ``group``) for the duration of the block.

        ``security``: a context that secures what this agent sends to other nodes (its own
        identity and keys); needs a node opened with ``security=``.
        """
        if type(agent_id) is not str or not 0 < len(agent_id) <= 256:
            raise ConfigurationError("agent ids are non-empty strings of at most 256 characters")
        if agent_id in self._inboxes:
            raise ConfigurationError(f"agent {agent_id!r} is already registered on this node")
        if security is not None:
            if self.security is None:
                raise ConfigurationError("an agent's security context needs a node opened with security=")
            self.security.add_agent(agent_id, security)
        inbox = Inbox(agent_id, capacity or self.config.inbox_capacity)
        inbox.on_taken = self._eo_taken
        inbox.on_handled = self._alo_handled
        self._inboxes[agent_id] = inbox
        self.directory.add_local(agent_id, group)
        self._broadcast_agents([AgentUpdate(agent_id, group, True)])
        self._notify_changed()
        try:
            yield Agent(self, agent_id, inbox, group)
        finally:
            if security is not None and self.security is not None:
                self.security.remove_agent(agent_id)
            self._inboxes.pop(agent_id, None)
            self.directory.remove_local(agent_id)
            inbox.close()
            if not self.closed:
                self._broadcast_agents([AgentUpdate(agent_id, group, False)])
            self._notify_changed()

    # -- services -------------------------------------------------------------------------

    @asynccontextmanager
    async def service(self, name: str, *, capacity: int = 1024) -> AsyncIterator[Service]:
        """Open the named node-to-node channel (see :mod:`phoenix_trio._service`) for the block."""
        if name in self._services:
            raise ConfigurationError(f"service {name!r} is already open on this node")
        service = Service(self, name, capacity)
        self._services[name] = service
        try:
            yield service
        finally:
            self._services.pop(name, None)
            service.close()

    # -- sending ------------------------------------------------------------------------

    def _template(
        self,
        type_: str,
        source: str | None,
        target: str,
        delivery: Any,
        priority: str | None,
        pattern: str,
        binary: bool,
        tracked: bool = True,
        channel: str | None = None,
    ) -> SendTemplate:
        """The shared envelope for these parameters. ``tracked=False`` turns off the
        transport's acknowledgements and retries (request-response: the reply is the
        acknowledgement, a lost request surfaces as a timeout). ``channel``: the parallel
        channel asked for (see :mod:`phoenix_trio._channels`)."""
        key = (type_, source, target, delivery, priority, pattern, binary, tracked, channel)
        template = self._send_templates.get(key)
        if template is not None:
            return template
        validate_type(type_)
        if channel is None and self._channels is not None and self._channels.types:
            channel = self._channels.for_type(type_)
        if channel is not None:
            if self._channels is None:
                raise ConfigurationError("channel= needs a node opened with channels=")
            self._channels.parallelism(channel)  # raises for an unknown channel
        traits = message_characteristics(type_)
        if delivery is None:
            guarantee = DeliveryGuarantee.build(traits.delivery, ordering=traits.ordering)
        elif isinstance(delivery, DeliveryGuarantee):
            guarantee = delivery
        else:
            guarantee = DeliveryGuarantee.build(delivery, ordering=traits.ordering)
        routing = RoutingMetadata(pattern=pattern, target=target, priority=priority or traits.priority)
        mode = _MODE_FLAGS.get(guarantee.delivery_mode, 0) if tracked else 0
        template = SendTemplate(
            source or self.uri,
            type_,
            "application/octet-stream" if binary else "application/json",
            guarantee,
            routing,
            QoSRequirements(priority=routing.priority, consistency=traits.consistency),
            mode=mode,
            policy=RetryPolicy.from_guarantee(guarantee, base=self.config.retry_base, cap=self.config.retry_cap) if mode else None,
            channel=channel,
        )
        if len(self._send_templates) >= 4096:
            self._send_templates.clear()
        self._send_templates[key] = template
        return template

    def _build(self, t: SendTemplate, data: Any, subject: str, correlation_id: str | None) -> Message:
        """A complete Message, stamped now (for agents on this node)."""
        routing = t.routing
        if correlation_id is not None:
            routing = attrs.evolve(routing, correlation_id=correlation_id)
        current = _resolve_trace(_current_trace.get())
        return Message(
            new_id(),
            t.source,
            t.type,
            data,
            subject,
            _dt.datetime.now(UTC),
            t.datacontenttype,
            None,
            current.child() if current is not None else next_hop_trace(),
            self.clock.tick(),
            t.delivery,
            routing,
            None,
            t.qos,
            EMPTY,
            SPECVERSION,
        )

    def _stamp(self, count: int) -> list[Any]:
        """Stamp fields for a batch of ``count`` messages leaving this node (see _wire_message)."""
        ms, first_seq, node_hex = reserve_ids(count)
        others, first = self.clock.tick_many(count)
        span_base, trace_base = random_bases()
        return [ms, first_seq, node_hex, _dt.datetime.now(UTC), self.id, others, first, span_base, trace_base.to_bytes(16, "big")]

    async def send(
        self,
        target: str,
        data: Any = None,
        *,
        type: str = DIRECT_TYPE,
        source: str | None = None,
        delivery: str | DeliveryGuarantee | None = None,
        priority: str | None = None,
        wait: bool = True,
        channel: str | None = None,
    ) -> None:
        """Send ``data`` to agent or group ``target``; returns once a transport accepted it.

        Builds the design's direct message (type ``phoenix.agent.direct.send``, source,
        subject = target, delivery, routing). With ``wait=False`` a full send queue raises
        :class:`~phoenix_trio.Backpressure` instead of waiting. Raises
        :class:`~phoenix_trio.AgentNotFound`, :class:`~phoenix_trio.NodeUnreachable` or
        :class:`~phoenix_trio.CircuitOpen`. A cancellation point; yields to the scheduler
        at least every few hundred calls. ``channel``: the parallel channel to use (a node
        opened with ``channels=``; see :mod:`phoenix_trio._channels`).
        """
        if data.__class__ not in _WIRE_TYPES:
            _check_encodable(data)
        if self._flows and target in self._flows:
            await self._flow_send(self._flows[target], (type, source, delivery, priority, data, _current_trace.get()), wait)
            return
        agent_id, node = self._route(target)
        template = self._template(type, source, agent_id, delivery, priority, "point_to_point", data.__class__ is bytes, True, channel)
        await self._deliver(agent_id, node, template, data, None, 0, wait)

    # -- flow control ------------------------------------------------------------------------

    def flow_control(self, target: str, config: FlowControl | None = None, **options: Any) -> _FlowTarget:
        """Put a flow-controlled queue in front of ``target`` (see :mod:`phoenix_trio._flow`).

        Returns its handle (``statistics()``, ``remove()``); spilled messages found in the
        spill directory from an earlier run are replayed first.
        """
        if target in self._flows:
            raise ConfigurationError(f"{target!r} already has flow control")
        config = attrs.evolve(config or FlowControl(), **options) if options else config or FlowControl()
        assert self._nursery is not None, "the node is not running"
        flow = _FlowTarget(self, target, config)
        self._flows[target] = flow
        self._nursery.start_soon(flow.drain)
        return flow

    async def _flow_send(self, flow: _FlowTarget, entry: tuple[Any, ...], wait: bool) -> None:
        queue = flow.queue
        while True:
            decision = queue.offer(entry, can_wait=wait)
            flow.report()
            if decision == FLOW_QUEUED:
                flow.wake()
                await self._after_send()
                return
            if decision == FLOW_WAIT:
                await flow.wait_released()
                continue
            if decision == FLOW_DROPPED_NEWEST:
                await self._after_send()
                return
            if decision in (FLOW_BACKPRESSURE, FLOW_REJECTED):
                raise Backpressure(flow.target, "backpressure active" if decision == FLOW_BACKPRESSURE else "queue full: rejected")
            if decision == FLOW_SPILL:
                if not flow.spill([self._flow_message(flow.target, entry)]):
                    queue.spilled_pending -= 1
                    queue.stats.spilled -= 1
                    queue.stats.rejected += 1
                    raise Backpressure(flow.target, "queue full and the spill store is full")
                flow.wake()
                return
            # redirect
            alternative = flow.alternative()
            if alternative is None:
                raise Backpressure(flow.target, "queue full and no alternative target to redirect to")
            type_, source, delivery, priority, data, _ = entry
            await self.send(alternative, data, type=type_, source=source, delivery=delivery, priority=priority, wait=wait)
            return

    def _flow_message(self, target: str, entry: tuple[Any, ...]) -> Message:
        """A complete Message for a queued send (spilled to disk, or replayed from it)."""
        type_, source, delivery, priority, data, trace = entry
        template = self._template(type_, source, target, delivery, priority, "point_to_point", data.__class__ is bytes)
        token = _current_trace.set(trace)
        try:
            return self._build(template, data, target, None)
        finally:
            _current_trace.reset(token)

    async def _flow_deliver(self, target: str, entry: Any, receipt: _Receipt | None = None) -> None:
        """The drain's send: a queued send (routed now) or a Message replayed from disk."""
        if isinstance(entry, Message):
            agent_id, node = self._route(target)
            message = entry if entry.subject == agent_id else entry.evolve(subject=agent_id)
            await self._deliver_message(agent_id, node, message, 0, True, receipt)
            return
        type_, source, delivery, priority, data, trace = entry
        agent_id, node = self._route(target)
        template = self._template(type_, source, agent_id, delivery, priority, "point_to_point", data.__class__ is bytes)
        token = _current_trace.set(trace)
        try:
            await self._deliver(agent_id, node, template, data, None, 0, True)
        finally:
            _current_trace.reset(token)

    # -- telemetry -------------------------------------------------------------------------------

    def emit_telemetry(self, name: str, data: dict[str, Any], *, type: str = "phoenix.telemetry.metric.update") -> None:
        """Hand an observability message to every telemetry watcher (dropped for full watchers)."""
        if not self._telemetry:
            return
        message = Message.new({"metric": name, "node": self.id, **data}, type=type, source=self.uri, delivery="at_most_once")
        self._telemetry.tell(message)

    @asynccontextmanager
    async def watch_telemetry(self, *, buffer: int = 1024) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Observability messages (``phoenix.telemetry.*``) this node emits, as they happen."""
        async with self._telemetry.watch(buffer) as receive:
            yield receive

    async def deliver(
        self,
        target: str,
        data: Any = None,
        *,
        delivery: str | DeliveryGuarantee = "at_least_once",
        type: str = DIRECT_TYPE,
        source: str | None = None,
        priority: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Send and wait until the receiving node acknowledges the delivery (the design's ``deliver``).

        For ``at_least_once`` the acknowledgement comes once the agent has handled the
        message; for ``exactly_once`` once it has taken it (recorded durably). Raises
        :class:`~phoenix_trio.DeliveryFailed` after the last retry. ``at_most_once``
        returns once the transport accepted the message.
        """
        if data.__class__ not in _WIRE_TYPES:
            _check_encodable(data)
        agent_id, node = self._route(target)
        template = self._template(type, source, agent_id, delivery, priority, "point_to_point", data.__class__ is bytes, True, channel)
        receipt = _Receipt() if template.mode and node is not None else None
        await self._deliver(agent_id, node, template, data, None, 0, True, receipt=receipt)
        if receipt is not None:
            await receipt.wait()

    async def send_message(self, target: str, message: Message, *, wait: bool = True) -> None:
        """Send a Message built by the caller (validated first) to ``target``, through the
        transport that reaches it (see :mod:`phoenix_trio._transport`)."""
        _, node = self._route(target)
        await self.transport_for(node).send_message(target, message, wait=wait)

    async def broadcast_message(
        self, targets: Sequence[str], message: Message, *, delivery_mode: str = "async", timeout: float | None = None
    ) -> BroadcastResult:
        """One caller-built Message to several agents, each through the transport that reaches it."""
        timeout = self.config.request_timeout if timeout is None else timeout
        return await _broadcast(self, None, targets, message, delivery_mode, timeout)

    def transport_for(self, node: str | None) -> Transport:
        """The transport that reaches agents on ``node`` (None: this node)."""
        for transport in self.transports.values():
            if transport.reaches(node):
                return transport
        raise NodeUnreachable(node or self.id, "no transport reaches it")

    async def flush_deliveries(self, *, timeout: float) -> None:
        """Wait until every at-least-once / exactly-once message sent so far is acknowledged or failed."""
        with trio.fail_after(timeout):
            while self._tracker.outstanding:
                await self._tracker_room.park()

    def _route(self, target: str) -> tuple[str, str | None]:
        """(agent id, node id or None for local) for an agent or group ``target``."""
        route = self._routes.get(target)
        if route is not None:
            return route
        if target in self._inboxes:
            return target, None
        now = trio.current_time()
        breaker = self._breakers.get(target)
        if breaker is not None:
            breaker.allow(now)
            breaker.release_probe()
        try:
            location = self.directory.locate(target, now)
            if breaker is None:  # cache plain agent routes until the directory changes
                if len(self._routes) >= 10_000:
                    self._routes.clear()
                self._routes[target] = (target, location.node)
            return target, location.node
        except AgentNotFound:
            members = self.directory.group_members(target)
            if not members:
                raise
            chosen = self.balancer.choose(members)
            return chosen, self.directory.locate(chosen, now).node

    async def _deliver(
        self,
        agent_id: str,
        node: str | None,
        template: SendTemplate,
        data: Any,
        correlation_id: str | None,
        flags: int,
        wait: bool,
        responder: Callable[..., Any] | None = None,
        receipt: _Receipt | None = None,
    ) -> None:
        """Hand one message to the right transport: built here for local agents, batched for remote ones."""
        if node is None:
            message = self._build(template, data, agent_id, correlation_id)
            if responder is not None:
                object.__setattr__(message, "_responder", responder)
            await self._deliver_message(agent_id, None, message, flags, wait)
            return
        self.stats["sent"] += 1
        if template.mode:
            await self._deliver_reliably(agent_id, node, template, data, correlation_id, flags, wait, receipt)
            await self._after_send()
            return
        if self._channels is None:
            connection = self._connections.get(node)
        else:
            connection = await self._channel_connection(node, agent_id, template.channel, data, False, wait)
        if connection is None or connection.closed:
            if self._overlay is None:
                raise NodeUnreachable(node, "not connected")
            self._overlay.route_entry(node, (template, data, agent_id, _current_trace.get(), correlation_id, flags))
            await self._after_send()
            return
        entry = (template, data, agent_id, _current_trace.get(), correlation_id, flags)
        if self.security is not None:
            entry = self.security.outgoing(entry)
        if flags & FLAG_REQUEST and await connection.send_now(entry):
            return  # a request waits for its reply anyway: write it now, no hand-off
        if not connection.try_enqueue(entry):
            await connection.enqueue(entry, wait=wait)
        await self._after_send()

    async def _deliver_reliably(
        self,
        agent_id: str,
        node: str,
        template: SendTemplate,
        data: Any,
        correlation_id: str | None,
        flags: int,
        wait: bool,
        receipt: _Receipt | None,
    ) -> None:
        """At-least-once / exactly-once: track the message until the receiver acknowledges it."""
        mode = ALO if template.mode == FLAG_ALO else EO
        tracker = self._tracker
        stream = tracker.stream(node, agent_id, mode)
        while len(stream.outstanding) >= tracker.window:
            if not wait:
                raise Backpressure(agent_id, f"{tracker.window} reliable messages already outstanding")
            await self._tracker_room.park()
        seq = stream.next_seq
        stream.next_seq = seq + 1
        epoch = stream.epoch
        entry = (template, data, agent_id, _current_trace.get(), correlation_id, flags | template.mode, self._ids.next(), (epoch << SEQ_BITS) | seq)
        item = Outstanding(node, agent_id, epoch, seq, mode, entry, template.policy, receipt)
        tracker.push(stream, item, self._clock.current_time())
        if item.deadline < self._retransmit_deadline:
            self._retransmit_deadline = item.deadline
            self._retransmit_wakeup.unpark_all()
        if self._channels is None:
            connection = self._connections.get(node)
        else:
            connection = await self._channel_connection(node, agent_id, template.channel, None, True, wait)
        if connection is not None and not connection.closed:
            if self.security is not None:
                entry = self.security.outgoing(entry)  # each transmission gets a fresh nonce
            if not connection.try_enqueue(entry):
                try:
                    await connection.enqueue(entry, wait=wait)
                except NodeUnreachable:
                    pass  # tracked: it goes out again when the node is back
        elif self._overlay is not None:
            self._overlay.route_entry(node, entry)  # not a neighbour: over overlay routes, acknowledged the same way
        # Not connected (the node is restarting, or unreachable for now): tracked all the
        # same, and sent again when the retry timer fires and the node is back.

    async def _deliver_message(
        self, agent_id: str, node: str | None, message: Message, flags: int, wait: bool, receipt: _Receipt | None = None
    ) -> None:
        self.stats["sent"] += 1
        if node is None:
            inbox = self._inboxes.get(agent_id)
            if inbox is None:
                raise AgentNotFound(agent_id)
            if not inbox.put_nowait_many([message]):
                if not wait:
                    raise Backpressure(agent_id, "inbox full")
                if not await inbox.put_many([message]):
                    raise AgentNotFound(agent_id)
            if flags & FLAG_ACK:
                self._on_ack(message.correlation_id, agent_id)
        else:
            mode_flag = _MODE_FLAGS.get(message.delivery.delivery_mode, 0) if message.delivery is not None else 0
            if self._channels is None:
                connection = self._connections.get(node)
            else:
                connection = await self._channel_connection(node, agent_id, None, message.data, mode_flag != 0, wait)
            if (connection is None or connection.closed) and self._overlay is None:
                raise NodeUnreachable(node, "not connected")
            if mode_flag:
                mode = ALO if mode_flag == FLAG_ALO else EO
                tracker = self._tracker
                while not tracker.has_room(node, agent_id, mode):
                    if not wait:
                        raise Backpressure(agent_id, f"{tracker.window} reliable messages already outstanding")
                    await self._tracker_room.park()
                epoch, seq = tracker.reserve(node, agent_id, mode)
                entry: tuple[Any, ...] = (message, flags | mode_flag, pack_dseq(epoch, seq))
                assert message.delivery is not None
                policy = RetryPolicy.from_guarantee(message.delivery, base=self.config.retry_base, cap=self.config.retry_cap)
                self._track(Outstanding(node, agent_id, epoch, seq, mode, entry, policy, receipt=receipt))
                receipt = None
            else:
                entry = (message, flags)
            if connection is None or connection.closed:
                assert self._overlay is not None
                self._overlay.route_entry(node, entry)
            else:
                if self.security is not None:
                    entry = self.security.outgoing(entry)
                if not connection.try_enqueue(entry):
                    await connection.enqueue(entry, wait=wait)
        if receipt is not None:
            receipt.succeed()  # nothing further to wait for: in an inbox here, or sent at most once
        await self._after_send()

    def _track(self, item: Outstanding) -> None:
        self._tracker.add(item, trio.current_time())
        if item.deadline < self._retransmit_deadline:
            self._retransmit_deadline = item.deadline
            self._retransmit_wakeup.unpark_all()

    async def _after_send(self) -> None:
        """Every send is a cancellation point; every few hundred, a full checkpoint."""
        self._sends_since_yield += 1
        if self._sends_since_yield >= SEND_YIELD_EVERY:
            self._sends_since_yield = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    # -- request / response -----------------------------------------------------------------

    async def request(
        self,
        target: str,
        data: Any = None,
        *,
        timeout: float | None = None,
        type: str = REQUEST_TYPE,
        source: str | None = None,
        delivery: str | DeliveryGuarantee | None = None,
        priority: str | None = None,
        channel: str | None = None,
    ) -> Message:
        """Send a request and wait for its reply (the reply Message is returned).

        Raises :class:`~phoenix_trio.RequestTimeout` after ``timeout`` seconds (default
        from the node config), :class:`~phoenix_trio.NodeUnreachable` if the target's node
        goes away meanwhile, :class:`~phoenix_trio.AgentNotFound` if it has no such agent.
        Cancelling the call leaves nothing behind.
        """
        timeout = self.config.request_timeout if timeout is None else timeout
        agent_id, node = self._route(target)
        correlation_id = new_id()
        template = self._template(type, source, agent_id, delivery, priority, "request_response", data.__class__ is bytes, False, channel)
        pending = _PendingRequest(agent_id, node)
        self._pending_requests[correlation_id] = pending
        breaker = self._breaker(agent_id)
        started = trio.current_time()
        stats = self.balancer.stats_for(agent_id)
        stats.started()
        try:
            with trio.move_on_after(timeout) as scope:
                await self._deliver(agent_id, node, template, data, correlation_id, FLAG_REQUEST, True, self._local_reply)
                await pending.event.wait()
        except BaseException:
            stats.finished(None)
            raise
        finally:
            self._pending_requests.pop(correlation_id, None)
        now = trio.current_time()
        if scope.cancelled_caught and pending.reply is None and pending.error is None:
            stats.finished(now - started, failed=True)
            breaker.record_failure(now)
            raise RequestTimeout(target, timeout)
        if pending.error is not None:
            stats.finished(now - started, failed=True)
            if isinstance(pending.error, NodeUnreachable):
                breaker.record_failure(now)
            raise pending.error
        stats.finished(now - started)
        breaker.record_success(now)
        assert pending.reply is not None
        return pending.reply

    def _breaker(self, target: str) -> CircuitBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            if len(self._breakers) >= 10_000:
                self._breakers.clear()
            breaker = self._breakers[target] = CircuitBreaker(target, self.config.breaker)
            self._routes.pop(target, None)
        return breaker

    def breaker_state(self, target: str) -> str:
        """``closed``, ``open`` or ``half_open`` for ``target``'s circuit breaker."""
        breaker = self._breakers.get(target)
        return "closed" if breaker is None else breaker.state(trio.current_time())

    def _reply_template(self, request: Message, data: Any, options: dict[str, Any]) -> SendTemplate:
        # A reply's channel (reply(..., channel=)) is chosen by the responder, not kept in the template.
        return self._template(
            options.get("type", REPLY_TYPE),
            node_uri(self.id, request.subject or "?"),
            request.source,
            options.get("delivery"),
            options.get("priority"),
            "request_response",
            data.__class__ is bytes,
            False,
        )

    async def _local_reply(self, request: Message, data: Any, options: dict[str, Any]) -> None:
        template = self._reply_template(request, data, options)
        self._resolve_reply(self._build(template, data, request.source, request.correlation_id))
        await trio.lowlevel.checkpoint()

    def _remote_responder(self, node_id: str) -> Callable[..., Any]:
        responder = self._responders.get(node_id)
        if responder is None:

            async def responder(request: Message, data: Any, options: dict[str, Any]) -> None:
                template = self._reply_template(request, data, options)
                if self._channels is None:
                    connection = self._connections.get(node_id)
                else:
                    connection = await self._channel_connection(node_id, request.source, options.get("channel"), data, False, True)
                if connection is None or connection.closed:
                    if self._overlay is None:
                        raise NodeUnreachable(node_id, "requester's node is gone")
                    entry = (template, data, request.source, _current_trace.get(), request.correlation_id, FLAG_REPLY)
                    self._overlay.route_entry(node_id, entry)
                    await trio.lowlevel.checkpoint()
                    return
                entry = (template, data, request.source, _current_trace.get(), request.correlation_id, FLAG_REPLY)
                if self.security is not None:
                    entry = self.security.outgoing(entry)
                # The requester is waiting: write it now, no hand-off; unless the agent has
                # more requests queued (a burst, e.g. a pipeline stage): then the replies go
                # out together in the writer's next batch, one frame and one write for many.
                inbox = self._inboxes.get(request.subject or "")
                burst = inbox is not None and inbox.space() < inbox.capacity
                if burst or not await connection.send_now(entry):
                    await connection.enqueue(entry)

            self._responders[node_id] = responder
        return responder

    def _resolve_reply(self, reply: Message) -> None:
        pending = self._pending_requests.get(reply.correlation_id or "")
        if pending is not None and not pending.event.is_set():
            pending.reply = reply
            pending.event.set()

    # -- broadcast --------------------------------------------------------------------------

    async def broadcast(
        self,
        targets: Sequence[str],
        data: Any = None,
        *,
        delivery_mode: str = "async",
        timeout: float | None = None,
        type: str = BROADCAST_TYPE,
        source: str | None = None,
    ) -> BroadcastResult:
        """Send ``data`` to each agent in ``targets``.

        ``delivery_mode="async"``: fire and forget; the result lists what the transports
        accepted. ``"sync"``: every target acknowledges once the message is in its inbox;
        waits up to ``timeout`` seconds and reports acknowledged, failed and missing targets.
        """
        if delivery_mode not in ("async", "sync"):
            raise ConfigurationError("delivery_mode must be 'async' or 'sync'")
        timeout = self.config.request_timeout if timeout is None else timeout
        correlation_id = new_id() if delivery_mode == "sync" else None
        waiter = _PendingAcks(set(targets)) if correlation_id else None
        if waiter is not None and correlation_id is not None:
            self._pending_acks[correlation_id] = waiter
        sent: set[str] = set()
        failed: dict[str, Exception] = {}
        try:
            with trio.move_on_after(timeout):
                for target in dict.fromkeys(targets):
                    try:
                        agent_id, node = self._route(target)
                        template = self._template(type, source, agent_id, None, None, "broadcast", data.__class__ is bytes, False)
                        await self._deliver(agent_id, node, template, data, correlation_id, FLAG_ACK if waiter else 0, True)
                        sent.add(target)
                    except (AgentNotFound, NodeUnreachable, Backpressure) as exc:
                        failed[target] = exc
                        if waiter is not None:
                            waiter.failed[target] = exc
                if waiter is not None:
                    waiter.settle()
                    await waiter.event.wait()
        finally:
            if correlation_id is not None:
                self._pending_acks.pop(correlation_id, None)
        if waiter is None:
            return BroadcastResult(frozenset(sent), failed, frozenset())
        return waiter.result(failed)

    def _on_ack(self, correlation_id: str | None, agent_id: str) -> None:
        waiter = self._pending_acks.get(correlation_id or "")
        if waiter is not None:
            waiter.acked.add(agent_id)
            waiter.settle()

    # -- publish-subscribe and pipelines (phoenix_trio._pubsub, phoenix_trio._pipeline) ----------

    def publish(
        self,
        topic: str,
        event: Any = None,
        *,
        fanout: str = "immediate",
        source: str | None = None,
        type: str = PUBLISH_TYPE,
        wait: bool = True,
    ) -> Awaitable[None]:
        """``await node.publish(topic, event)``: see :meth:`PubSub.publish <phoenix_trio.PubSub.publish>`."""
        self._check_full_mesh("publish")
        return self.pubsub.publish(topic, event, fanout, source, type, wait)

    def subscribe(self, topic_pattern: str, **options: Any) -> AbstractAsyncContextManager[Subscription]:
        """``async with node.subscribe(pattern, ...) as subscription``: see :meth:`PubSub.subscribe <phoenix_trio.PubSub.subscribe>`."""
        self._check_full_mesh("subscribe")
        return self.pubsub.subscribe(topic_pattern, **options)

    def _check_full_mesh(self, call: str) -> None:
        # Interest tables travel between directly connected nodes; an overlay node is
        # connected to its neighbours only, so publications would silently miss the rest.
        if self._overlay is not None:
            raise LocalProtocolError(
                f"{call}: pub-sub runs on full-mesh nodes; an overlay node spreads data with "
                "broadcast_overlay() (Plumtree) or gossip() instead"
            )

    def unsubscribe(self, topic_pattern: str, *, subscriber: str | None = None) -> int:
        """Close this node's subscriptions to ``topic_pattern`` (of ``subscriber``); returns how many."""
        return self.pubsub.unsubscribe(topic_pattern, subscriber=subscriber)

    async def create_pipeline(self, stages: Sequence[Any], **options: Any) -> Any:
        """Start a pipeline through ``stages``: see :func:`phoenix_trio.Pipeline`."""
        from ._pipeline import create_pipeline

        return await create_pipeline(self, stages, **options)

    async def send_to_pipeline(self, pipeline_id: str, message: Any, **options: Any) -> Any:
        """Feed ``message`` into pipeline ``pipeline_id`` (here or on another node)."""
        from ._pipeline import send_to_pipeline

        return await send_to_pipeline(self, pipeline_id, message, **options)

    # -- membership -------------------------------------------------------------------------

    @property
    def members(self) -> dict[str, MemberView]:
        """Every node this one knows, with its status (alive, suspect, dead, left).

        Overlay mode: the overlay neighbours (HyParView's active view), all alive.
        """
        if self._overlay is not None:
            overlay = self._overlay
            return {
                peer: MemberView(peer, overlay.addresses.get(peer, ("", 0)), overlay._incarnations.get(peer, 0), "alive", peer in self._connections)
                for peer in overlay.neighbors()
            }
        assert self._membership is not None
        return {
            m.node_id: MemberView(m.node_id, m.address, m.incarnation, m.status, m.connected)
            for m in self._membership.members.values()
        }

    def alive_members(self) -> list[str]:
        if self._overlay is not None:
            return sorted(self._overlay.neighbors())
        assert self._membership is not None
        return sorted(self._membership.alive())

    @asynccontextmanager
    async def watch_membership(self, *, buffer: int = 256) -> AsyncIterator[trio.MemoryReceiveChannel[MemberEvent]]:
        """Membership events (joined, suspect, alive, dead, left, restarted) as they happen.

        Events are dropped for a watcher that lets ``buffer`` of them pile up.
        """
        async with self._watchers.watch(buffer) as receive:
            yield receive

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        """Wait until ``predicate()`` holds (checked on every membership or directory change)."""
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_for_agent(self, agent_id: str, *, timeout: float = 10.0) -> None:
        """Wait until ``agent_id`` is known somewhere in the cluster."""
        await self.wait_for(lambda: agent_id in self._inboxes or agent_id in self.directory.remote, timeout=timeout)

    async def wait_for_members(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until ``count`` other nodes are alive and connected (overlay mode: neighbours)."""
        if self._overlay is not None:
            overlay = self._overlay
            await self.wait_for(lambda: len(overlay.neighbors()) >= count, timeout=timeout)
            return
        await self.wait_for(lambda: len(self._connections) >= count, timeout=timeout)

    # -- the overlay (overlay mode: open_node(..., overlay=configure_overlay(...))) ----------------

    @property
    def overlay(self) -> OverlayRuntime | None:
        """The overlay driver (``neighbors()``, ``passive_view()``, ``statistics()``), or None for a full mesh."""
        return self._overlay

    async def broadcast_overlay(self, data: Any) -> bytes:
        """Plumtree-broadcast ``data`` (anything MessagePack encodes) to every node of the overlay.

        Returns the message id. Every node's :meth:`watch_overlay` gets it once, as an
        :class:`OverlayMessage` of kind ``"broadcast"`` (this node's too). Best effort:
        a node that is cut off while it travels does not get it later (gossip does).
        """
        return await check_overlay_call(self).broadcast(data)

    async def gossip(self, data: Any, *, ttl: float | None = None) -> bytes:
        """Gossip ``data`` (the design's ``gossip_message``): pushed in rounds until ``ttl``, with
        anti-entropy, so nodes cut off by a partition catch up once it heals. Needs ``gossip=``."""
        return await check_overlay_call(self).gossip(data, ttl=ttl)

    @asynccontextmanager
    async def watch_overlay(self, *, buffer: int = 1024) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
        """Overlay events: :class:`OverlayMessage` deliveries, ``NeighborUp``, ``NeighborDown``,
        ``JoinFailed`` and ``RouteFailed`` (from :mod:`phoenix_trio.overlay`). Dropped for a
        watcher that lets ``buffer`` of them pile up."""
        async with check_overlay_call(self).watch(buffer=buffer) as events:
            yield events

    def _notify_changed(self) -> None:
        self._routes.clear()
        self._changed.set()
        self._changed = trio.Event()

    # -- effects from the membership core -----------------------------------------------------

    def _apply(self, effects: Iterable[object]) -> None:
        now = trio.current_time()
        for effect in effects:
            if isinstance(effect, Connect):
                if self._nursery is not None and not self.closed:
                    self._nursery.start_soon(self._connect, effect.address)
            elif isinstance(effect, Disconnect):
                connection = self._connections.get(effect.node_id)
                if connection is not None:
                    connection.close_reason = effect.reason
                    connection.close(effect.reason)
                    self._unregister(connection, now)
            elif isinstance(effect, MemberEvent):
                self._on_member_event(effect, now)
            elif isinstance(effect, SetTimer):
                if effect.deadline < self._timer_deadline:
                    self._timer_deadline = effect.deadline
                    self._timer_wakeup.unpark_all()
                else:
                    self._timer_deadline = effect.deadline

    def _on_member_event(self, event: MemberEvent, now: float) -> None:
        log.info("member %s %s (%s:%d)", event.node_id, event.kind, *event.address)
        if event.kind in ("dead", "left", "restarted"):
            self.directory.node_gone(event.node_id, now)
            self._fail_node(event.node_id, f"node {event.kind}")
        if event.kind in ("joined", "restarted") and event.address[1] != 0:
            # Tell the others, so nodes that cannot be dialled back learn new addresses.
            entry = [(event.node_id, event.address[0], event.address[1], event.incarnation)]
            for node_id, connection in self._connections.items():
                if node_id != event.node_id:
                    connection.send_control(connection.protocol.members(entry))
        self._watchers.tell(event)
        self._notify_changed()

    def _fail_node(self, node_id: str, reason: str) -> None:
        for pending in self._pending_requests.values():
            if pending.node == node_id and not pending.event.is_set():
                pending.error = NodeUnreachable(node_id, reason)
                pending.event.set()
        for waiter in self._pending_acks.values():
            for agent_id in waiter.expected - waiter.acked:
                if self.directory.remote.get(agent_id, (node_id,))[0] == node_id:
                    waiter.failed.setdefault(agent_id, NodeUnreachable(node_id, reason))
            waiter.settle()
        self._responders.pop(node_id, None)

    async def _timer_loop(self) -> None:
        assert self._membership is not None
        while True:
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.park()
                continue
            self._timer_deadline = math.inf
            self._apply(self._membership.timer("membership-tick", trio.current_time()))

    async def _retransmit_loop(self) -> None:
        """Resend reliable messages whose acknowledgement is late; fail those out of retries."""
        tracker = self._tracker
        while True:
            deadline = tracker.next_deadline()
            self._retransmit_deadline = math.inf if deadline is None else deadline
            with trio.move_on_at(self._retransmit_deadline):
                await self._retransmit_wakeup.park()
                continue
            for action in tracker.due(trio.current_time()):
                if isinstance(action, Resend):
                    item = action.item
                    if self._channels is None:
                        connection = self._connections.get(item.node)
                    else:
                        connection = self._lane_now(item.node, item.agent, self._entry_channel(item.entry), None, True)
                    if connection is not None and not connection.closed:
                        entry = item.entry if self.security is None else self.security.outgoing(item.entry)
                        if connection.try_enqueue(entry):
                            self.stats["retransmitted"] += 1
                    elif self._overlay is not None:
                        try:
                            self._overlay.route_entry(item.node, item.entry)
                            self.stats["retransmitted"] += 1
                        except (PhoenixError, ValueError) as exc:
                            log.debug("retransmission to %s over the overlay failed: %s", item.node, exc)
                else:
                    self._delivery_failed(action.item, action.reason)
            if self._tracker_room:
                self._tracker_room.unpark_all()

    def _delivery_failed(self, item: Outstanding, reason: str) -> None:
        self.stats["delivery_failures"] += 1
        error = DeliveryFailed(item.agent, item.attempts, reason)
        log.warning("delivery to %s on %s failed: %s", item.agent, item.node, reason)
        if item.receipt is not None:
            item.receipt.fail(error)

    def _on_delivered(self, connection: Connection, event: Delivered) -> None:
        peer = connection.peer_id
        tracker = self._tracker
        for agent, first, last in event.at_least_once:
            for item in tracker.acked_range(peer, agent, first >> SEQ_BITS, first & SEQ_MASK, last & SEQ_MASK):
                if item.receipt is not None:
                    item.receipt.succeed()
        for agent, dseq in event.exactly_once:
            epoch, seq = unpack_dseq(dseq)
            for item in tracker.acked(peer, agent, EO, epoch, seq):
                if item.receipt is not None:
                    item.receipt.succeed()
        if self._tracker_room:
            self._tracker_room.unpark_all()

    async def _sync_loop(self) -> None:
        """The exactly-once log: fsync on its policy, compact past its size limit."""
        log_ = self._dedup_log
        assert log_ is not None
        interval = self.config.fsync_interval
        try:
            await self._sync_forever(log_, interval)
        finally:
            log_.close()  # after any sync running in a worker thread has returned

    async def _sync_forever(self, log_: DedupLog, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if log_.dirty and log_.fsync_policy != "never":
                waiting, self._fsync_waiters = self._fsync_waiters, []
                await trio.to_thread.run_sync(log_.sync)  # fsync blocks: a worker thread, not the loop
                for connection, agent, dseq in waiting:
                    connection.acknowledge(True, agent, dseq)
            self._eo_streams.expire(trio.current_time())
            live = self._eo_streams.snapshot()
            if log_.needs_compaction(len(live)):
                log_.compact(live)

    # -- parallel channels (see _channels.py) -----------------------------------------------

    def _lane_now(self, node: str, agent_id: str, asked: str | None, data: Any, tracked: bool) -> Connection | None:
        """The connection for a message right now, without waiting for a lane to open."""
        assert self._channels is not None
        primary = self._connections.get(node)
        name = self._channels.choose(asked, data, tracked)
        if name == PRIMARY or primary is None or primary.closed or primary.lanes_refused:
            return primary
        lane = self._lanes_out.get((node, name, self._channels.lane(name, agent_id)))
        return lane if lane is not None and not lane.closed and not lane.finishing else primary

    async def _channel_connection(
        self, node: str, agent_id: str, asked: str | None, data: Any, tracked: bool, wait: bool
    ) -> Connection | None:
        """The connection that carries this message (opening its lane first if needed)."""
        channels = self._channels
        assert channels is not None
        primary = self._connections.get(node)
        name = channels.choose(asked, data, tracked)
        if name == PRIMARY or primary is None or primary.closed or primary.lanes_refused:
            return primary
        key = (node, name, channels.lane(name, agent_id))
        lane = self._lanes_out.get(key)
        if lane is not None and not lane.closed and not lane.finishing:
            return lane
        # Not open yet: wait for it (its messages must not take the primary meanwhile,
        # or they could overtake each other when the lane comes up).
        if not wait:
            raise Backpressure(agent_id, f"channel {name!r} to node {node!r} is connecting")
        done = self._lane_dials.get(key)
        if done is None and self._nursery is not None and not self.closed:
            done = self._lane_dials[key] = trio.Event()
            self._nursery.start_soon(self._dial_lane, primary, key, done)
        if done is not None:
            await done.wait()
        lane = self._lanes_out.get(key)
        if lane is not None and not lane.closed and not lane.finishing:
            return lane
        return primary  # could not open it: primary.lanes_refused is set, so this stays in order

    @staticmethod
    def _entry_channel(entry: tuple[Any, ...]) -> str | None:
        return entry[0].channel if len(entry) >= 6 else None

    async def _dial_lane(self, primary: Connection, key: tuple[str, str, int], done: trio.Event) -> None:
        """Open one lane to a peer (dialled by this node, which alone sends on it)."""
        node, name, index = key
        peer = primary.peer
        assert peer is not None
        address = primary.via if primary.outbound and primary.via is not None else (peer.host, peer.port)
        connection: Connection | None = None
        try:
            try:
                if address[1] == 0:
                    raise ConnectionRefusedError("the peer accepts no connections")
                with trio.fail_after(self.config.connect_timeout):
                    stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
                if self.config.tls is not None:
                    stream = await self.config.tls.connect(stream, address[0], self.config.handshake_timeout)
                assert self._hello is not None  # set by _start
                connection = Connection(self, stream, outbound=True, via=address, hello=attrs.evolve(self._hello, channel=name, lane=index))
                if self._channels is not None and name == self._channels.large:
                    connection.batch_bytes = self._channels.large_threshold
                self._all_connections.add(connection)
                hello = await connection.handshake(self.config.handshake_timeout)
                if self.config.tls is not None:
                    self.config.tls.check_peer(stream, hello.node_id)
                if hello.node_id != node or hello.incarnation != peer.incarnation:
                    raise ProtocolError(f"lane to {node!r} reached {hello.node_id!r} (incarnation {hello.incarnation})")
            except (ProtocolError, SecurityError, OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("channel %s to %s unavailable, using the primary connection: %s", name, node, exc)
                primary.lanes_refused = True
                if connection is not None:
                    await trio.aclose_forcefully(connection.stream)
                return
            if primary.closed or self.closed:
                await trio.aclose_forcefully(connection.stream)
                return
            self._lanes_out[key] = connection
            done.set()
            await connection.run()
        finally:
            done.set()
            if self._lane_dials.get(key) is done:
                del self._lane_dials[key]
            if connection is not None:
                self._all_connections.discard(connection)
                if self._lanes_out.get(key) is connection:
                    del self._lanes_out[key]

    def _register_lane(self, connection: Connection, hello: Hello) -> bool:
        """Adopt a lane a peer opened to us: receive only, after its predecessor on that lane."""
        if self.closed:
            return False
        key = (hello.node_id, hello.channel, hello.lane)
        previous = self._lanes_in.get(key)
        if previous is not None and not previous.closed and previous.peer is not None and previous.peer.incarnation == hello.incarnation:
            connection.waits_for = previous
        self._lanes_in[key] = connection
        return True

    def _close_lanes(self, node_id: str, reason: str) -> None:
        for lanes in (self._lanes_out, self._lanes_in):
            for key in [k for k in lanes if k[0] == node_id]:
                lanes.pop(key).close(reason)

    # -- connections ------------------------------------------------------------------------

    async def _connect(self, address: Address) -> None:
        membership = self._membership
        try:
            with trio.fail_after(self.config.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
            if self.config.tls is not None:  # refusals are logged by the TLS config
                stream = await self.config.tls.connect(stream, address[0], self.config.handshake_timeout)
        except (OSError, trio.TooSlowError, SecurityError) as exc:
            log.debug("connect to %s:%d failed: %s", *address, exc)
            if membership is not None:
                membership.connect_done(address)
            return
        if membership is not None:
            membership.connect_done(address)
        await self._run_connection(stream, outbound=True, via=address)

    async def _accept(self, socket_stream: trio.SocketStream) -> None:
        stream: trio.abc.Stream = socket_stream
        if self.config.tls is not None:
            try:
                stream = await self.config.tls.accept(socket_stream, self.config.handshake_timeout)
            except SecurityError:  # logged by the TLS config; keep serving the others
                return
        await self._run_connection(stream, outbound=False, via=None)

    async def _run_connection(self, stream: trio.abc.Stream, *, outbound: bool, via: Address | None) -> None:
        connection = Connection(self, stream, outbound=outbound, via=via)
        self._all_connections.add(connection)
        registered = False
        try:
            try:
                hello = await connection.handshake(self.config.handshake_timeout)
                if self.config.tls is not None:  # the certificate must name the node id it announced
                    self.config.tls.check_peer(stream, hello.node_id)
            except (ProtocolError, SecurityError, OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("handshake with %s failed: %s", via or "inbound peer", exc)
                if isinstance(exc, ProtocolError):
                    self.stats["protocol_errors"] += 1
                    with trio.move_on_after(0.2):
                        try:
                            await stream.send_all(connection.protocol.error_bytes(exc))
                        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                            pass
                await trio.aclose_forcefully(stream)
                return
            if hello.channel != PRIMARY:
                registered = self._register_lane(connection, hello)
            else:
                registered = self._register(connection, hello, via)
            if not registered:
                if self.closed:
                    await connection.goodbye_now("node shutting down")
                await trio.aclose_forcefully(stream)
                return
            await connection.run()
        finally:
            self._all_connections.discard(connection)
            if connection.peer is not None and connection.peer.channel != PRIMARY:
                key = (connection.peer.node_id, connection.peer.channel, connection.peer.lane)
                if self._lanes_in.get(key) is connection:
                    del self._lanes_in[key]
            elif self._overlay is not None:
                if connection.peer is not None and registered:
                    self._overlay.connection_closed(connection)
            elif self._connections.get(connection.peer.node_id if connection.peer else "") is connection:
                self._unregister(connection, trio.current_time())

    def _register(self, connection: Connection, hello: Hello, via: Address | None) -> bool:
        """Adopt a handshaken connection, unless an equivalent one wins the tie-break."""
        if self._overlay is not None:
            return self._overlay.register(connection, hello, via)
        assert self._membership is not None
        if self.closed:
            return False
        existing = self._connections.get(hello.node_id)
        if existing is not None and not existing.closed and existing.peer is not None:
            if existing.peer.incarnation == hello.incarnation:
                preferred = min(self.id, hello.node_id)
                if existing.initiator == preferred or connection.initiator != preferred:
                    return False  # keep the one opened by the smaller node id
            entries = existing.take_pending()
            existing.close("replaced by a newer connection")
            for entry in entries:
                connection.try_enqueue(entry)
        self._connections[hello.node_id] = connection
        now = trio.current_time()
        self._apply(self._membership.connected(MemberInfo(hello.node_id, (hello.host, hello.port), hello.incarnation), now, via))
        connection.send_control(connection.protocol.members([(m.node_id, m.address[0], m.address[1], m.incarnation) for m in self._membership.view()]))
        connection.send_control(
            connection.protocol.agents(True, [AgentUpdate(agent_id, group, True) for agent_id, group in self.directory.local.items()])
        )
        self._notify_changed()
        return True

    def _unregister(self, connection: Connection, now: float) -> None:
        if connection.peer is None:
            return
        node_id = connection.peer.node_id
        if self._connections.get(node_id) is connection:
            del self._connections[node_id]
            if self._lanes_out or self._lanes_in:
                self._close_lanes(node_id, connection.close_reason or "primary connection closed")
            self._fail_node(node_id, connection.close_reason or "connection closed")
            if self._membership is not None and not self.closed:
                self._apply(self._membership.disconnected(node_id, now))
            self._notify_changed()

    def _heard(self, connection: Connection) -> None:
        if self._membership is None:
            connection.last_heard = trio.current_time()
            return
        if connection.peer is not None:
            member = self._membership.members.get(connection.peer.node_id)
            if member is not None:
                if member.status == "alive":
                    member.last_heard = trio.current_time()
                else:
                    self._apply(self._membership.heard(connection.peer.node_id, trio.current_time()))

    def _broadcast_agents(self, updates: list[AgentUpdate]) -> None:
        if self._overlay is not None:
            self._overlay.agents_changed()  # versioned, over the overlay
            return
        for connection in self._connections.values():
            connection.send_control(connection.protocol.agents(False, updates))

    def _encode_failed(self, entry: tuple[Any, ...], error: EncodeError) -> None:
        self.stats["encode_failures"] += 1
        subject = entry[2] if len(entry) == 6 else entry[0].subject
        log.error("dropped a message to %s: %s", subject, error)

    # -- events from peers ------------------------------------------------------------------

    async def _on_peer_event(self, connection: Connection, event: object) -> None:
        if isinstance(event, DataBatch):
            if self.security is not None:
                event = self.security.screen(connection, event)
            await self._on_data(connection, event)
        elif isinstance(event, Delivered):
            self._on_delivered(connection, event)
        elif isinstance(event, OverlayBatch):
            assert self._overlay is not None  # the protocol refuses overlay frames otherwise
            await self._overlay.receive(connection, event)
        elif isinstance(event, ServicePayload):
            service = self._services.get(event.name)
            if service is None:
                self.stats["dropped_unknown_service"] += 1
            elif not service._offer(connection.peer_id, event.payload):
                await self._wait_for_service(connection, service, event.payload)
        elif isinstance(event, Heartbeat):
            pass
        elif isinstance(event, Agents):
            node = connection.peer_id
            if event.full:
                self.directory.replace_node(node, [(u.agent_id, u.group) for u in event.updates])
            else:
                for update in event.updates:
                    self.directory.update_remote(node, update.agent_id, update.group, update.up)
            self._notify_changed()
        elif isinstance(event, Members):
            if self._membership is None:
                return  # overlay mode: membership comes from the overlay

            infos = [MemberInfo(node_id, (host, port), inc) for node_id, host, port, inc in event.members]
            self._apply(self._membership.learned(infos, trio.current_time()))
        elif isinstance(event, Acks):
            for correlation_id, agent_id in event.acks:
                self._on_ack(correlation_id, agent_id)
        elif isinstance(event, RequestFailed):
            self._on_request_failed(connection, event)
        elif isinstance(event, Goodbye) and connection.channel != PRIMARY:
            connection.close_reason = f"peer closed the lane: {event.reason}"
            connection.close(connection.close_reason)
        elif isinstance(event, Goodbye) and self._membership is None:
            connection.peer_finished = True
            connection.close_reason = f"peer closed the connection: {event.reason}"
            connection.close(connection.close_reason)
        elif isinstance(event, Goodbye):
            assert self._membership is not None
            connection.close_reason = f"peer left: {event.reason}"
            self._apply(self._membership.goodbye(connection.peer_id, trio.current_time()))
            connection.close(connection.close_reason)
        elif isinstance(event, PeerError):
            log.warning("peer %s reports a protocol error: %s: %s", connection.peer_id, event.code, event.reason)
            connection.close(f"peer error {event.code}")
        elif isinstance(event, Hello):
            raise ProtocolError("second HELLO")

    def _on_request_failed(self, connection: Connection, event: RequestFailed) -> None:
        if event.kind == "agent_not_found":
            agent_id = event.detail
            error: Exception = AgentNotFound(agent_id)
        elif event.kind == REJECTED_KIND:
            error = rejection_error(connection.peer_id, event.detail)
            agent_id = error.agent_id
        else:
            agent_id = event.detail
            error = NodeUnreachable(connection.peer_id, f"{event.kind}: {event.detail}")
        pending = self._pending_requests.get(event.correlation_id)
        if pending is not None and not pending.event.is_set():
            pending.error = error
            pending.event.set()
        waiter = self._pending_acks.get(event.correlation_id)
        if waiter is not None:
            waiter.failed[agent_id] = error
            waiter.settle()

    async def _on_data(self, connection: Connection, batch: DataBatch) -> None:
        inboxes = self._inboxes
        groups: dict[str, list[Message]] = {}
        acks: list[tuple[str, str]] = []
        flags_list = batch.flags
        positions = batch.positions
        responder = None
        publications: list[tuple[Message, int, int | None]] = []
        for i, message in enumerate(batch.messages):
            flags = flags_list[i]
            if flags & FLAG_REPLY:
                self._resolve_reply(message)
                continue
            if flags & FLAG_PUBLISH:
                publications.append((message, flags, positions.get(i) if positions is not None else None))
                continue
            target = message.subject
            if positions is not None and i in positions and target is not None and target in inboxes:
                if not self._admit_reliable(connection, inboxes[target], target, message, flags, positions[i]):
                    continue
            if target is None or target not in inboxes:
                self.stats["dropped_unknown_agent"] += 1
                if flags and message.correlation_id:
                    connection.send_control(connection.protocol.request_failed(message.correlation_id, "agent_not_found", str(target)))
                continue
            if flags & FLAG_REQUEST:
                if responder is None:
                    responder = self._remote_responder(connection.peer_id)
                object.__setattr__(message, "_responder", responder)
            if flags & FLAG_ACK and message.correlation_id:
                acks.append((message.correlation_id, target))
            group = groups.get(target)
            if group is None:
                groups[target] = [message]
            else:
                group.append(message)
        self.stats["received"] += len(batch.messages)
        if publications:
            await self.pubsub.on_publications(connection.peer_id, publications)
        for agent_id, messages in groups.items():
            inbox = inboxes.get(agent_id)
            if inbox is None:
                continue
            taken = inbox.put_nowait_many(messages)
            if taken < len(messages):
                await self._wait_for_room(connection, inbox, messages[taken:])
            if acks:
                # Acknowledge each agent's messages as soon as they are in its inbox.
                done = [ack for ack in acks if ack[1] == agent_id]
                if done:
                    connection.send_control(connection.protocol.acks(done))

    def _admit_reliable(self, connection: Connection, inbox: Inbox, agent: str, message: Message, flags: int, dseq: int) -> bool:
        """Decide about one reliable message; True to put it in the inbox (hooks attached)."""
        assert connection.peer is not None
        if flags & FLAG_EO:
            epoch, seq = unpack_dseq(dseq)
            key = (connection.peer.node_id, connection.peer.incarnation, agent, epoch)
            verdict = self._eo_streams.offer(key, seq, trio.current_time())
            if verdict == STREAM_ACCEPT:
                inbox.track(message, TAKEN, (connection.peer.node_id, key, agent, dseq))
                return True
            if verdict == STREAM_DUPLICATE_TAKEN:
                self.stats["duplicates_dropped"] += 1
                watermark = self._eo_streams.taken_watermark(key)
                connection.acknowledge(True, agent, pack_dseq(epoch, watermark))
            elif verdict == STREAM_DUPLICATE_QUEUED:
                self.stats["duplicates_dropped"] += 1
            else:
                self.stats["out_of_order_dropped"] += 1
            return False
        inbox.track(message, HANDLED, (connection.peer.node_id, agent, dseq))
        return True

    def _alo_handled(self, infos: list[tuple[str, str, int]]) -> None:
        """At-least-once messages an agent has handled: acknowledge them, as ranges where consecutive."""
        ranges: dict[str, list[list[Any]]] = {}
        last_peer = None
        current: list[list[Any]] = []
        for peer, agent, dseq in infos:
            if peer != last_peer:
                current = ranges.setdefault(peer, [])
                last_peer = peer
            if current and current[-1][2] + 1 == dseq and current[-1][0] == agent:
                current[-1][2] = dseq
            else:
                current.append([agent, dseq, dseq])
        for peer, peer_ranges in ranges.items():
            connection: Any = self._connections.get(peer)
            if connection is None and self._overlay is not None:
                connection = self._overlay.routed_peer(peer)
            if connection is not None:
                connection.acknowledge_ranges(peer_ranges)

    def _eo_taken(self, message: Message, info: tuple[str, tuple[str, int, str, int], str, int]) -> None:
        """An exactly-once message is being handed to its agent: record it first, then acknowledge."""
        peer, key, agent, dseq = info
        seq = dseq & SEQ_MASK
        watermark = self._eo_streams.taken(key, seq, trio.current_time())
        if self._dedup_log is not None:
            self._dedup_log.record(key, watermark)
        connection: Any = self._connections.get(peer)
        if connection is None and self._overlay is not None:
            connection = self._overlay.routed_peer(peer)
        if connection is None:
            return
        ack = pack_dseq(key[3], watermark)
        if self._dedup_log is not None and self._dedup_log.fsync_policy == "always":
            self._fsync_waiters.append((connection, agent, ack))
        else:
            connection.acknowledge(True, agent, ack)

    async def _wait_for_service(self, connection: Connection, service: Service, payload: bytes) -> None:
        peer = connection.peer_id
        self._stall(connection, True)
        try:
            await service._put(peer, payload)
        finally:
            self._stall(connection, False)

    def _stall(self, connection: Connection, stalled: bool) -> None:
        """This node stops (or resumes) reading from ``connection``: a full inbox or service."""
        if self._membership is not None:
            self._membership.stall(connection.peer_id, stalled, trio.current_time())
        else:
            connection.stalled = stalled
            connection.last_heard = trio.current_time()

    async def _wait_for_room(self, connection: Connection, inbox: Inbox, messages: list[Message]) -> None:
        """A full inbox: stop reading from this peer (backpressure) until there is room."""
        self._stall(connection, True)
        try:
            await inbox.put_many(messages)
        finally:
            self._stall(connection, False)

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        return {
            "node": self.id,
            "address": f"{self.address[0]}:{self.address[1]}",
            "agents": sorted(self._inboxes),
            "members": {k: v.status for k, v in self.members.items()},
            "connections": {k: c.statistics() for k, c in self._connections.items()},
            **self.stats,
        }


@asynccontextmanager
async def open_node(
    name: str,
    *,
    listen: str | Address | None = None,
    seeds: Sequence[str | Address] = (),
    config: NodeConfig | None = None,
    **options: Any,
) -> AsyncIterator[Node]:
    """Start a node in the running Trio program; leaving the block stops it completely.

    ``listen``: ``"host:port"`` to accept peers (port 0 picks a free one; see
    ``node.address``), or None for a node that only dials out. ``seeds``: addresses of
    nodes to join through. Other keyword arguments override :class:`NodeConfig` fields.
    """
    if options:
        unknown = set(options) - set(attrs.fields_dict(NodeConfig))
        if unknown:
            raise ConfigurationError(f"unknown node option(s): {', '.join(sorted(unknown))}")
        config = attrs.evolve(config or NodeConfig(), **options)
    node = Node(
        name,
        listen=parse_address(listen),
        seeds=[a for a in (parse_address(s) for s in seeds) if a is not None],
        config=config or NodeConfig(),
    )
    tokens = set_local_node(node.id, node.clock)
    try:
        async with trio.open_nursery() as nursery:
            await node._start(nursery)
            try:
                yield node
            finally:
                await node._stop()
    finally:
        reset_local_node(tokens)
