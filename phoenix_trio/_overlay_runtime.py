"""The overlay on the native TCP transport: a node that keeps connections to its overlay neighbours only.

``open_node(name, listen=..., seeds=[...], overlay=configure_overlay("hyparview"))`` runs
an :class:`~phoenix_trio.overlay.OverlayNode` (HyParView, or client_server / tree, with
Plumtree broadcast, point-to-point routing and optionally gossip) in place of the full
mesh. :class:`OverlayRuntime` is its driver and honours the contract in
``docs/overlay.md``:

*Connections.* Every connection is used in one direction for overlay messages: a node
sends its overlay messages, and its agents' messages, on the connection it dialled to
the peer (its *outbound* connection, ``node._connections[peer]``); what it receives comes
on the connections the peers dialled. So there is no tie-break between two nodes
dialling each other at once, and one peer's messages stay in order across successive
connections (a connection from a peer is read only after the previous one from the same
peer incarnation has finished). A ``Send`` to a peer without an outbound connection is
queued (bounded) and the peer is dialled; a dial that fails is ``link_failed``. The
driver keeps an outbound connection to every neighbour (heartbeats flow on it), closes
one on ``CloseLink`` after writing everything queued before it (``Connection.finish``:
GOODBYE last), and closes outbound connections to non-neighbours after
``idle_timeout`` seconds without traffic. ``link_failed`` is reported when an
outbound connection breaks (or a connection from a neighbour does) without a GOODBYE,
when one is silent for ``failure_timeout`` (heartbeats flow both ways every
``heartbeat_interval``, so a partition shows up as silence on both ends), and when a
dial fails; connections closed in order are not failures.

*Ids and addresses.* The overlay cores pass node ids around (a FORWARD_JOIN's new node,
samples in WELCOME and SHUFFLE). Ids stay plain node names; each overlay frame carries
the listen addresses of the ids its messages mention (see docs/wire-format.md), and the
runtime keeps an address book (from HELLOs and those tables). Seeds are addresses: the
runtime dials them, learns their ids from HELLO and joins through them.

*Wire.* Overlay messages travel in overlay frames (channel 2): per write, one C-core
batch of every queued message, lz4-compressed when large (overlay-mode nodes offer lz4,
which their data frames use too). The membership messages of a pair ride its primary
connection, in order.

*Agents.* The agent directory is spread over the overlay: each node's agent list, with
its incarnation and a version, is Plumtree-broadcast when it changes and sent whole to
each new neighbour (newest version wins). A message for an agent on a node without an
outbound connection is routed (:class:`~phoenix_trio.overlay.Router`, source routes,
bounded, cannot loop); so are its reply, its acknowledgements (at-least-once,
exactly-once) and REQUEST_FAILED answers. Routed messages travel in the full message
layout and are acknowledged one by one: correct, not fast.

*Users.* ``node.broadcast_overlay(data)`` (Plumtree), ``node.gossip(data)`` (the
gossip pattern; needs ``gossip=start_gossip_protocol()``), ``node.watch_overlay()``
(deliveries as :class:`OverlayMessage`, and ``NeighborUp`` / ``NeighborDown`` /
``JoinFailed`` / ``RouteFailed``), ``node.overlay`` (this object: ``neighbors()``,
``statistics()``).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import msgpack
import trio

from ._errors import ConfigurationError, DecodeError, LocalProtocolError, NodeUnreachable, ProtocolError
from ._ids import format_compact, node_part
from ._peer_protocol import FLAG_REQUEST, DataBatch, Hello, OverlayBatch, PeerProtocol, State, node_id_ok
from ._service import Service
from ._watchers import Watchers
from .effects import CancelTimer, Send, SetTimer
from .overlay._codec import encode as overlay_encode
from .overlay._config import GossipConfig, HyParViewConfig, MembershipConfig, PlumtreeConfig, RoutingConfig
from .overlay._events import CloseLink, Deliver, DirectDeliver, GossipDeliver, JoinFailed, NeighborDown, NeighborUp, RouteFailed
from .overlay._messages import ForwardJoin, Shuffle, ShuffleReply, TreeAdopt, TreeJoin, TreePath, Welcome
from .overlay._node import OverlayNode
from .serialization import _msgpack

if TYPE_CHECKING:
    from ._connection import Connection
    from ._node import Node

log = logging.getLogger(__name__)

Address = tuple[str, int]

# Application payloads inside the overlay cores' messages: msgpack arrays [kind, ...].
USER = 0  # [0, data]: a broadcast or gossip message from node.broadcast_overlay / node.gossip
DIRECTORY = 1  # [1, node, incarnation, version, [[agent, group], ...]]: a node's agents
MESSAGE = 2  # [2, flags, dseq | nil, sender incarnation, message layout]: a routed agent message
CONTROL = 3  # [3, sender incarnation, control message]: a routed acknowledgement or REQUEST_FAILED

DIRECTORY_SERVICE = "phoenix.overlay.directory"
MAX_DIRECTORY = 10_000  # nodes whose agent lists are kept
MAX_ADDRESSES = 100_000  # address book entries
MAX_AGENTS_ANNOUNCED = 4096


@attrs.frozen(slots=True)
class OverlayConfig:
    """Everything an overlay-mode node runs. ``open_node(overlay=...)`` also takes a bare
    membership config (``configure_overlay(...)``) and ``gossip=`` separately.

    - ``membership``: HyParView (default), client_server or tree (``configure_overlay``).
    - ``broadcast`` / ``routing``: Plumtree and the router (None leaves them out; the
      directory then reaches neighbours only, and non-neighbours cannot be messaged).
    - ``gossip``: the gossip pattern (``start_gossip_protocol()``), off by default.
    - ``idle_timeout``: seconds without traffic after which an outbound connection to a
      node that is not a neighbour is closed.
    - ``outbox_limit``: overlay messages queued per peer while it is being dialled.
    - ``seed_retry``: longest wait between two attempts at a seed whose id is unknown.
    """

    membership: MembershipConfig = attrs.field(factory=HyParViewConfig)
    broadcast: PlumtreeConfig | None = attrs.field(factory=PlumtreeConfig)
    routing: RoutingConfig | None = attrs.field(factory=RoutingConfig)
    gossip: GossipConfig | None = None
    idle_timeout: float = 5.0
    outbox_limit: int = 4096
    seed_retry: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.membership, MembershipConfig.__args__):  # type: ignore[attr-defined]
            raise ConfigurationError(f"overlay membership must come from configure_overlay(), got {self.membership!r}")
        if self.gossip is not None and not isinstance(self.gossip, GossipConfig):
            raise ConfigurationError("gossip must come from start_gossip_protocol()")
        for name in ("idle_timeout", "seed_retry"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not isinstance(self.outbox_limit, int) or self.outbox_limit < 1:
            raise ConfigurationError("outbox_limit must be a positive integer")


def overlay_config(overlay: Any, gossip: Any) -> OverlayConfig | None:
    """The node's overlay settings from ``NodeConfig.overlay`` / ``NodeConfig.gossip``."""
    if overlay is None:
        if gossip is not None:
            raise ConfigurationError("gossip= needs overlay= (the gossip pattern runs over the overlay)")
        return None
    if isinstance(overlay, OverlayConfig):
        return overlay if gossip is None else attrs.evolve(overlay, gossip=gossip)
    return OverlayConfig(membership=overlay, gossip=gossip)


@attrs.frozen(slots=True)
class OverlayMessage:
    """A broadcast (``kind="broadcast"``, Plumtree) or gossip message that reached this node.

    ``hops``: the Plumtree round or the gossip hop count (0 at the origin, which gets
    its own messages too); ``clock``: a gossip message's vector-clock timestamp.
    """

    kind: str
    message_id: bytes
    origin: str
    data: Any
    hops: int
    clock: dict[str, int] | None = None


class _RoutedControl(PeerProtocol):
    """Encodes control messages as bare msgpack (no frame): routed inside overlay payloads."""

    def _control(self, message: list[Any]) -> bytes:
        return msgpack.packb(message)


class RoutedPeer:
    """Stands in for a connection to a node reached over overlay routes.

    The node hands it to ``_on_data`` and friends like a connection: what they send back
    (acknowledgements, REQUEST_FAILED) is routed to the peer.
    """

    outbound = False
    closed = False
    channel = "control"

    def __init__(self, runtime: OverlayRuntime, node_id: str, incarnation: int) -> None:
        self.runtime = runtime
        self.peer = Hello(node_id, incarnation, "", 0)
        self.protocol = runtime._control_codec
        self.stalled = False

    @property
    def peer_id(self) -> str:
        return self.peer.node_id

    def send_control(self, data: bytes) -> None:
        self.runtime._route_control(self.peer.node_id, data)

    def acknowledge(self, exactly_once: bool, agent: str, dseq: int) -> None:
        if exactly_once:
            self.send_control(self.protocol.delivered([], [(agent, dseq)]))
        else:
            self.send_control(self.protocol.delivered([[agent, dseq, dseq]], []))

    def acknowledge_ranges(self, ranges: list[list[Any]]) -> None:
        self.send_control(self.protocol.delivered(ranges, []))


def _mentions(message: Any) -> Iterable[str]:
    """Node ids an overlay message names that its receiver may have to reach."""
    kind = type(message)
    if kind is ForwardJoin:
        return (message.new_node,)
    if kind is Welcome or kind is ShuffleReply:
        return message.sample if kind is Welcome else message.nodes
    if kind is Shuffle:
        return (message.origin, *message.nodes)
    if kind is TreeJoin:
        return (message.joiner,)
    if kind is TreeAdopt or kind is TreePath:
        return message.path
    return ()


class OverlayRuntime:
    """The driver of one node's overlay core on TCP. See the module docstring."""

    def __init__(self, node: Node, config: OverlayConfig, seeds: list[Address]) -> None:
        self.node = node
        self.config = config
        self.rng = random.Random()
        self.core = OverlayNode(
            node.id, config.membership, rng=self.rng, broadcast=config.broadcast, routing=config.routing, gossip=config.gossip
        )
        self.addresses: dict[str, Address] = {}
        self._seeds = [s for s in seeds if s != node.address]
        self._seed_ids: dict[Address, str] = {}
        self._contacts: list[str] = []
        self._joined = False
        self._outbox: dict[str, list[tuple[bytes, dict[str, Address]]]] = {}
        self._dialing: dict[str, Address] = {}
        self._registered_via: dict[Address, int] = {}  # registrations of connections dialled to an address
        self._inbound: dict[str, list[Connection]] = {}
        self._incarnations: dict[str, int] = {}
        self._activity: dict[Connection, tuple[int, float]] = {}
        self._timers: dict[Hashable, int] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._timer_seq = 0
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._failures: list[str] = []
        self._applying = 0
        self._watchers: Watchers[Any] = Watchers()
        self._routed: dict[str, RoutedPeer] = {}
        assert node._hello is not None  # set by Node._start before the overlay starts
        self._control_codec = _RoutedControl(node._hello)
        self._control_decoder = PeerProtocol(node._hello)
        self._control_decoder.state = State.OPEN
        self._directory: dict[str, tuple[int, int, list[tuple[str, str | None]]]] = {}
        self._version = 0
        self._announce_pending = False
        self._service: Service | None = None
        self._nursery: trio.Nursery | None = None
        self._compress = config.gossip.compression if config.gossip is not None else True
        self.stats = {
            "overlay_sent": 0, "overlay_received": 0, "dials": 0, "dial_failures": 0, "link_failures": 0,
            "outbox_dropped": 0, "routed_sent": 0, "routed_received": 0, "route_failures": 0, "idle_closed": 0,
        }  # fmt: skip

    # -- queries ---------------------------------------------------------------------------

    def neighbors(self) -> list[str]:
        """The overlay neighbours (HyParView: the active view)."""
        return self.core.neighbors()

    def passive_view(self) -> list[str]:
        membership = self.core.membership
        return membership.passive_view() if hasattr(membership, "passive_view") else []

    def statistics(self) -> dict[str, Any]:
        core = self.core
        out: dict[str, Any] = {
            "neighbors": self.neighbors(),
            "passive": self.passive_view(),
            "outbound": sorted(self.node._connections),
            "inbound": sorted(p for p, cs in self._inbound.items() if cs),
            "outbox": sum(len(v) for v in self._outbox.values()),
            "known_addresses": len(self.addresses),
            "directory_nodes": len(self._directory),
            **self.stats,
        }
        for name in ("membership", "plumtree", "router", "gossip"):
            part = getattr(core, name)
            if part is not None and hasattr(part, "stats"):
                out[name] = attrs.asdict(part.stats)
        if core.gossip is not None:
            out["gossip"]["pushing"] = core.gossip.pushing()
        return out

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Everything the overlay needs, under one nursery the node's nursery owns."""
        node = self.node
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._service = Service(node, DIRECTORY_SERVICE, 256)
            node._services[DIRECTORY_SERVICE] = self._service
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._maintenance_loop)
            nursery.start_soon(self._directory_loop)
            for seed in self._seeds:
                nursery.start_soon(self._seed_loop, seed)
            self._apply(self.core.start(trio.current_time()))
            if not self._seeds:
                # The first node: nothing to join through (a tree's root, a server that greets its peers).
                self._joined = True
                self._apply(self.core.join([], trio.current_time()))
            self._announce()
            task_status.started()

    def leave(self) -> None:
        """Leave the overlay (the node is closing): withdraw our agents, say DISCONNECT(leaving)."""
        if self.core.left:
            return
        if self.core.plumtree is not None and self._directory:
            self._version += 1
            payload = msgpack.packb([DIRECTORY, self.node.id, self.node.incarnation, self._version, []])
            self._apply(self.core.broadcast(payload, trio.current_time()))
        self._apply(self.core.leave(trio.current_time()))

    # -- the user's side ---------------------------------------------------------------------

    async def broadcast(self, data: Any) -> bytes:
        """Plumtree-broadcast ``data`` (anything MessagePack encodes) to every node; its id."""
        if self.core.plumtree is None:
            raise ConfigurationError("this overlay runs without broadcast")
        payload = msgpack.packb([USER, data], use_bin_type=True)
        message_id = self.core.plumtree.new_message_id()
        self._apply(self.core.broadcast(payload, trio.current_time(), message_id=message_id))
        await trio.lowlevel.checkpoint()
        return message_id

    async def gossip(self, data: Any, *, ttl: float | None = None) -> bytes:
        """Originate a gossip message (the design's ``gossip_message``); its id."""
        if self.core.gossip is None:
            raise ConfigurationError("gossip needs a node opened with gossip=start_gossip_protocol()")
        payload = msgpack.packb([USER, data], use_bin_type=True)
        message_id = self.rng.randbytes(16)
        self._apply(self.core.gossip_message(payload, trio.current_time(), ttl=ttl, message_id=message_id))
        await trio.lowlevel.checkpoint()
        return message_id

    @asynccontextmanager
    async def watch(self, *, buffer: int = 1024) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
        """Overlay events as they happen (dropped for a watcher that lets ``buffer`` pile up)."""
        async with self._watchers.watch(buffer) as receive:
            yield receive

    def _tell(self, event: Any) -> None:
        self._watchers.tell(event)

    # -- effects ------------------------------------------------------------------------------

    def _apply(self, effects: Iterable[Any]) -> None:
        """Apply core effects in order; link failures found meanwhile are fed back afterwards."""
        self._applying += 1
        try:
            directs: list[DirectDeliver] = []
            self._apply_list(effects, directs)
            while self._failures and self._applying == 1:
                peer = self._failures.pop(0)
                self.stats["link_failures"] += 1
                self._outbox.pop(peer, None)
                self._apply_list(self.core.link_failed(peer, trio.current_time()), directs)
        finally:
            self._applying -= 1
        if directs and self._nursery is not None:
            self._nursery.start_soon(self._deliver_direct, directs)

    def _apply_list(self, effects: Iterable[Any], directs: list[DirectDeliver]) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                self._send(effect.dest, effect.message)
            elif kind is SetTimer:
                self._set_timer(effect.key, effect.deadline)
            elif kind is CancelTimer:
                self._timers.pop(effect.key, None)
            elif kind is CloseLink:
                self._close_link(effect.peer)
            elif kind is Deliver:
                self._on_deliver(effect)
            elif kind is GossipDeliver:
                self._on_gossip(effect)
            elif kind is DirectDeliver:
                directs.append(effect)
            elif kind is NeighborUp:
                self._neighbor_up(effect.peer)
                self._tell(effect)
                self.node._notify_changed()
            elif kind is NeighborDown:
                self._tell(effect)
                self.node._notify_changed()
            elif kind is RouteFailed:
                self._route_failed(effect)
            elif kind is JoinFailed:
                log.warning("overlay join: %s", effect.reason)
                self._tell(effect)

    def _link_failed(self, peer: str) -> None:
        if peer not in self._failures:
            self._failures.append(peer)
        if not self._applying:
            self._apply(())

    # -- sending ------------------------------------------------------------------------------

    def _send(self, peer: str, message: Any) -> None:
        if peer == self.node.id:
            return
        data = overlay_encode(message)
        addresses: dict[str, Address] = {}
        for mentioned in _mentions(message):
            address = self.addresses.get(mentioned)
            if address is not None:
                addresses[mentioned] = address
        self.stats["overlay_sent"] += 1
        connection = self.node._connections.get(peer)
        if connection is not None and connection.send_overlay(data, addresses):
            return
        queue = self._outbox.setdefault(peer, [])
        if len(queue) >= self.config.outbox_limit:
            queue.pop(0)
            self.stats["outbox_dropped"] += 1
        queue.append((data, addresses))
        self._dial(peer)

    def _dial(self, peer: str) -> None:
        if peer in self._dialing or self.node.closed or self._nursery is None:
            return
        connection = self.node._connections.get(peer)
        if connection is not None and not connection.closed and not connection.finishing:
            return
        address = self.addresses.get(peer)
        if address is None:
            log.debug("overlay: no address for %s", peer)
            self._link_failed(peer)
            return
        self._dialing[peer] = address
        self._nursery.start_soon(self._dial_task, peer, address)

    async def _dial_task(self, peer: str, address: Address) -> None:
        self.stats["dials"] += 1
        before = self._registered_via.get(address, 0)
        try:
            await self.node._connect(address)  # returns when the connection ends, or could not open
        finally:
            if self._dialing.get(peer) == address:
                del self._dialing[peer]
            if self._registered_via.get(address, 0) == before and not self.node.closed:
                self.stats["dial_failures"] += 1
                self._link_failed(peer)

    async def _seed_loop(self, seed: Address) -> None:
        """Dial a seed until its id is known (it may not be up yet), then join through it."""
        delay = 0.1
        while seed not in self._seed_ids:
            await self.node._connect(seed)
            if seed in self._seed_ids:
                return
            await trio.sleep(delay * self.rng.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.seed_retry)

    def _close_link(self, peer: str) -> None:
        connection = self.node._connections.pop(peer, None)
        if connection is not None:
            self._finish(peer, connection, "overlay link closed")

    def _finish(self, peer: str, connection: Connection, reason: str) -> None:
        if self.node._connections.get(peer) is connection:
            del self.node._connections[peer]
        for key in [k for k in self.node._lanes_out if k[0] == peer]:
            self.node._lanes_out.pop(key).finish(reason)  # its agent traffic goes over routes from now on
        connection.finish(reason)
        self.node._notify_changed()

    def _neighbor_up(self, peer: str) -> None:
        if peer in self.node._connections:
            self._send_directory(peer)
        else:
            self._dial(peer)  # heartbeats flow on it; the directory follows when it opens

    # -- connections (called by the node) ----------------------------------------------------

    def register(self, connection: Connection, hello: Hello, via: Address | None) -> bool:
        node = self.node
        if node.closed:
            return False
        peer = hello.node_id
        known = self._incarnations.get(peer)
        if known is not None and hello.incarnation != known:
            if hello.incarnation < known:
                return False  # an earlier life of the peer
            # The peer restarted: its earlier life is gone, whatever the sockets say yet.
            self._incarnations[peer] = hello.incarnation
            for old in [node._connections.get(peer), *self._inbound.get(peer, ())]:
                if old is not None and old.peer is not None and old.peer.incarnation != hello.incarnation:
                    old.close("peer restarted")
            node._connections.pop(peer, None)
            self._link_failed(peer)
        self._incarnations[peer] = hello.incarnation
        if hello.port:
            self._remember(peer, (hello.host, hello.port))
        connection.last_heard = trio.current_time()
        if connection.outbound:
            if via is not None:
                self._registered_via[via] = self._registered_via.get(via, 0) + 1
            existing = node._connections.get(peer)
            if existing is not None and existing is not connection and not existing.closed and not existing.finishing:
                return False  # one is in use already (a seed dial raced an overlay dial); nothing was sent on this one
            node._connections[peer] = connection
            if via is not None:
                if via in self._seeds and via not in self._seed_ids:
                    self._seed_ids[via] = peer
                    self._contact(peer)
            for data, addresses in self._outbox.pop(peer, ()):
                connection.send_overlay(data, addresses)
            if peer in self.core.neighbors():
                self._send_directory(peer)
        else:
            previous = [c for c in self._inbound.get(peer, ()) if not c.closed and c.peer is not None and c.peer.incarnation == hello.incarnation]
            if previous:
                connection.waits_for = previous[-1]
            self._inbound.setdefault(peer, []).append(connection)
        node._notify_changed()
        return True

    def connection_closed(self, connection: Connection) -> None:
        """A primary connection ended (either way); report it to the core if it failed."""
        node = self.node
        assert connection.peer is not None
        peer = connection.peer.node_id
        self._activity.pop(connection, None)
        current = self._incarnations.get(peer) == connection.peer.incarnation
        orderly = connection.finishing or connection.peer_finished
        if connection.outbound:
            if node._connections.get(peer) is connection:
                del node._connections[peer]
                node._close_lanes(peer, connection.close_reason or "connection closed")
                node._fail_node(peer, connection.close_reason or "connection closed")
                node._notify_changed()
            failed = not orderly
        else:
            inbound = self._inbound.get(peer)
            if inbound is not None and connection in inbound:
                inbound.remove(connection)
                if not inbound:
                    del self._inbound[peer]
            failed = not orderly and peer in self.core.neighbors()
        if node.closed or not current:
            return
        if failed:
            log.info("overlay link to %s failed: %s", peer, connection.close_reason)
            self._link_failed(peer)
        elif self._outbox.get(peer):
            self._dial(peer)  # queued while the old connection was finishing

    def heard(self, connection: Connection) -> None:
        connection.last_heard = trio.current_time()

    def _remember(self, peer: str, address: Address) -> None:
        if peer == self.node.id:
            return
        if peer not in self.addresses and len(self.addresses) >= MAX_ADDRESSES:
            del self.addresses[next(iter(self.addresses))]
        self.addresses[peer] = address

    def _contact(self, peer: str) -> None:
        if peer not in self._contacts:
            self._contacts.append(peer)
        if not self.core.neighbors():
            self._joined = True
            self._apply(self.core.join(list(self._contacts), trio.current_time()))

    # -- receiving ------------------------------------------------------------------------------

    async def receive(self, connection: Connection, batch: OverlayBatch) -> None:
        """Overlay messages from a peer, in order."""
        peer = connection.peer_id
        for node_id, address in batch.addresses.items():
            if node_id not in self.addresses:  # a node's own HELLO is the authority; this only fills gaps
                self._remember(node_id, address)
        now = trio.current_time()
        self.stats["overlay_received"] += len(batch.messages)
        directs: list[DirectDeliver] = []
        self._applying += 1
        try:
            for message in batch.messages:
                self._apply_list(self.core.receive(peer, message, now), directs)
        finally:
            self._applying -= 1
        self._apply(())  # link failures found meanwhile
        if directs:
            await self._deliver_direct(directs)

    def _on_deliver(self, event: Deliver) -> None:
        payload = self._payload(event.payload)
        if payload is None:
            return
        if payload[0] == USER and len(payload) == 2:
            self._tell(OverlayMessage("broadcast", event.message_id, event.origin, payload[1], event.round))
        elif payload[0] == DIRECTORY:
            self._on_directory([payload[1:]])

    def _on_gossip(self, event: GossipDeliver) -> None:
        envelope = event.envelope
        payload = self._payload(envelope.payload)
        if payload is not None and payload[0] == USER and len(payload) == 2:
            self._tell(OverlayMessage("gossip", envelope.id, envelope.origin_node, payload[1], envelope.hop_count, dict(envelope.timestamp)))

    @staticmethod
    def _payload(data: bytes) -> list[Any] | None:
        try:
            payload = msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)
        except Exception:
            log.warning("dropped an undecodable overlay payload")
            return None
        if type(payload) is not list or not payload or type(payload[0]) is not int:
            log.warning("dropped a malformed overlay payload")
            return None
        return payload

    # -- timers and upkeep ----------------------------------------------------------------------

    def _set_timer(self, key: Hashable, deadline: float) -> None:
        self._timer_seq += 1
        self._timers[key] = self._timer_seq
        heapq.heappush(self._heap, (deadline, self._timer_seq, key))
        if self._heap[0][1] == self._timer_seq:
            self._timer_lot.unpark_all()
        if len(self._heap) > 4 * len(self._timers) + 1024:  # drop cancelled and replaced entries
            self._heap = [e for e in self._heap if self._timers.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    async def _timer_loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, seq, key = heapq.heappop(self._heap)
                if self._timers.get(key) != seq:
                    continue
                del self._timers[key]
                self._apply(self.core.timer(key, now))
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(deadline):
                await self._timer_lot.park()

    async def _maintenance_loop(self) -> None:
        """Failure detection by silence, closing idle links to non-neighbours."""
        node = self.node
        interval = node.config.heartbeat_interval
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            timeout = node.config.failure_timeout
            for connection in list(node._all_connections):
                if connection.peer is None or connection.closed or connection.stalled:
                    continue
                if now - connection.last_heard > timeout and connection.last_heard:
                    connection.close(f"silent for {now - connection.last_heard:.2f} s")
            neighbors = set(self.neighbors())
            for peer, connection in list(node._connections.items()):
                activity = connection.messages_sent + connection.overlay_sent
                seen = self._activity.get(connection)
                if seen is None or seen[0] != activity or peer in neighbors or connection.overlay_pending or connection.pending:
                    self._activity[connection] = (activity, now)
                elif now - seen[1] >= self.config.idle_timeout:
                    self.stats["idle_closed"] += 1
                    self._finish(peer, connection, "idle")

    # -- the agent directory ----------------------------------------------------------------------

    def agents_changed(self) -> None:
        """This node's agents changed: tell the overlay (once per scheduler pass)."""
        if not self._announce_pending and self._nursery is not None:
            self._announce_pending = True
            self._nursery.start_soon(self._announce_soon)

    async def _announce_soon(self) -> None:
        await trio.lowlevel.checkpoint()
        self._announce_pending = False
        self._announce()

    def _announce(self) -> None:
        if self.core.left:
            return
        self._version += 1
        entry = self._own_entry()
        self._directory[self.node.id] = (self.node.incarnation, self._version, entry)
        if self.core.plumtree is not None:
            payload = msgpack.packb([DIRECTORY, self.node.id, self.node.incarnation, self._version, [list(a) for a in entry]])
            self._apply(self.core.broadcast(payload, trio.current_time()))
        for peer in self.neighbors():
            if peer in self.node._connections:
                self._send_directory(peer, only=[self.node.id])

    def _own_entry(self) -> list[tuple[str, str | None]]:
        return list(self.node.directory.local.items())[:MAX_AGENTS_ANNOUNCED]

    def _send_directory(self, peer: str, only: list[str] | None = None) -> None:
        if self._service is None:
            return
        names = only if only is not None else list(self._directory)
        entries = [[n, *self._directory[n][:2], [list(a) for a in self._directory[n][2]]] for n in names if n in self._directory]
        for start in range(0, len(entries), 256):
            self._service.send_nowait(peer, msgpack.packb(entries[start : start + 256]))

    async def _directory_loop(self) -> None:
        assert self._service is not None
        async for sender, payload in self._service:
            try:
                entries = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                if type(entries) is not list:
                    raise ValueError("not a list")
            except Exception:
                log.warning("dropped an undecodable directory snapshot from %s", sender)
                continue
            self._on_directory(entries)

    def _on_directory(self, entries: list[Any]) -> None:
        changed = False
        for entry in entries:
            try:
                node_id, incarnation, version, agents = entry
                if not node_id_ok(node_id) or type(incarnation) is not int or type(version) is not int or type(agents) is not list:
                    raise ValueError
                parsed = [(str(a[0]), None if a[1] is None else str(a[1])) for a in agents[:MAX_AGENTS_ANNOUNCED]]
            except (ValueError, TypeError, IndexError):
                log.warning("dropped a malformed directory entry")
                continue
            if node_id == self.node.id:
                continue
            known = self._directory.get(node_id)
            if known is not None and (known[0], known[1]) >= (incarnation, version):
                continue
            if known is None and len(self._directory) >= MAX_DIRECTORY:
                continue
            self._directory[node_id] = (incarnation, version, parsed)
            self.node.directory.replace_node(node_id, parsed)
            changed = True
        if changed:
            self.node._notify_changed()

    # -- routed agent traffic ----------------------------------------------------------------------

    def routed_peer(self, node_id: str) -> RoutedPeer | None:
        peer = self._routed.get(node_id)
        if peer is None:
            incarnation = self._incarnations.get(node_id) or (self._directory.get(node_id) or (0,))[0]
            if not incarnation or self.core.router is None:
                return None
            peer = self._routed[node_id] = RoutedPeer(self, node_id, incarnation)
            if len(self._routed) > 4096:
                del self._routed[next(iter(self._routed))]
        return peer

    def route_entry(self, node_id: str, entry: tuple[Any, ...]) -> None:
        """Send one connection entry (what ``_deliver`` queues) to ``node_id`` over overlay routes."""
        if self.core.router is None:
            raise NodeUnreachable(node_id, "not a neighbour, and this overlay runs without routing")
        node = self.node
        dseq = None
        if len(entry) >= 6:
            template, data, subject, parent, correlation_id, flags = entry[:6]
            from ._trace import _current as _current_trace

            token = _current_trace.set(parent)
            try:
                message = node._build(template, data, subject, correlation_id)
            finally:
                _current_trace.reset(token)
            if len(entry) == 8:
                ident = entry[6]
                message = message.evolve(id=ident if type(ident) is str else format_compact(ident, node_part()))
                dseq = entry[7]
        else:
            message, flags = entry[0], entry[1]
            if len(entry) == 3:
                dseq = entry[2]
        if node.security is not None:
            secured = node.security.outgoing((message, flags) if dseq is None else (message, flags, dseq))
            message = secured[0]
        try:
            payload = msgpack.packb([MESSAGE, flags, dseq, node.incarnation, _msgpack.to_array(message)], use_bin_type=True, datetime=True)
        except (TypeError, ValueError, OverflowError) as exc:
            from ._errors import EncodeError

            raise EncodeError(f"cannot encode message data: {exc}") from None
        self.stats["routed_sent"] += 1
        self._apply(self.core.send_to(node_id, payload, trio.current_time()))

    def _route_control(self, node_id: str, data: bytes) -> None:
        if self.core.router is None or self.core.left:
            return
        payload = msgpack.packb([CONTROL, self.node.incarnation, data])
        self._apply(self.core.send_to(node_id, payload, trio.current_time()))

    async def _deliver_direct(self, directs: list[DirectDeliver]) -> None:
        node = self.node
        for event in directs:
            payload = self._payload(event.payload)
            if payload is None:
                continue
            self.stats["routed_received"] += 1
            try:
                if payload[0] == MESSAGE and len(payload) == 5:
                    _, flags, dseq, incarnation, layout = payload
                    if type(flags) is not int or type(incarnation) is not int or (dseq is not None and type(dseq) is not int):
                        raise DecodeError("malformed routed message")
                    message = _msgpack.from_array(layout)
                    peer = self._routed_peer_for(event.origin, incarnation)
                    batch = DataBatch([message], [flags], None if dseq is None else {0: dseq})
                    if node.security is not None:
                        batch = node.security.screen(peer, batch)  # type: ignore[arg-type]
                        if batch.messages and dseq is not None:
                            batch = DataBatch(batch.messages, batch.flags, {0: dseq})
                    await node._on_data(peer, batch)  # type: ignore[arg-type]
                elif payload[0] == CONTROL and len(payload) == 3:
                    _, incarnation, data = payload
                    if type(incarnation) is not int or type(data) is not bytes:
                        raise DecodeError("malformed routed control message")
                    peer = self._routed_peer_for(event.origin, incarnation)
                    control = self._control_decoder._on_control(data)
                    if type(control).__name__ not in ("Acks", "Delivered", "RequestFailed"):
                        raise DecodeError(f"{type(control).__name__} cannot be routed")
                    await node._on_peer_event(peer, control)  # type: ignore[arg-type]
                else:
                    raise DecodeError(f"unknown routed payload kind {payload[0]!r}")
            except (DecodeError, ProtocolError) as exc:
                log.warning("dropped a routed message from %s: %s", event.origin, exc)

    def _routed_peer_for(self, node_id: str, incarnation: int) -> RoutedPeer:
        peer = self._routed.get(node_id)
        if peer is None or peer.peer.incarnation != incarnation:
            peer = RoutedPeer(self, node_id, incarnation)
            self._routed[node_id] = peer
            if len(self._routed) > 4096:
                del self._routed[next(iter(self._routed))]
        return peer

    def _route_failed(self, event: RouteFailed) -> None:
        self.stats["route_failures"] += 1
        log.info("no overlay route to %s: %s", event.target, event.reason)
        payload = self._payload(event.payload)
        if payload is not None and payload[0] == MESSAGE and len(payload) == 5:
            flags, layout = payload[1], payload[4]
            if type(flags) is int and flags & FLAG_REQUEST:
                try:
                    correlation = _msgpack.from_array(layout).correlation_id
                except DecodeError:
                    correlation = None
                pending = self.node._pending_requests.get(correlation or "")
                if pending is not None and not pending.event.is_set():
                    pending.error = NodeUnreachable(event.target, f"no overlay route: {event.reason}")
                    pending.event.set()
        self._tell(event)


def check_overlay_call(node: Node) -> OverlayRuntime:
    if node._overlay is None:
        raise LocalProtocolError("this node runs a full mesh; open it with overlay=configure_overlay(...)")
    return node._overlay
