"""Run overlay cores on :mod:`phoenix_trio.sim` as if they were connected by TCP.

:class:`SimNetwork` wraps each node in a :class:`SimHost` that plays the part of the
transport driver:

- *Ordered links.* :class:`phoenix_trio.sim.Simulation` draws each message's latency
  independently, so it reorders; a TCP connection does not, and the membership protocols
  rely on per-link order. Hosts number what they send per (sender, receiver,
  incarnations) and the receiving host releases messages in order.
- *Connection failures.* A send to a crashed node is answered with
  ``link_failed(peer)`` after ``refuse_delay`` (connection refused); a send across a
  partition after ``connect_timeout``. Crashing a node reports ``link_failed`` to every
  live node that had it as a neighbour after ``refuse_delay`` (the kernel resets the
  connections); a partition reports it on both ends of every link it cuts after
  ``connect_timeout`` (keepalive).
- *Wire check.* With ``wire=True`` every message is encoded and decoded with
  :mod:`._codec` on the way, which proves the cores only send serialisable messages.
- *Recording.* Overlay events (deliveries, neighbour changes, route failures) go to
  :attr:`SimNetwork.events` callbacks and counters instead of the simulation.

It runs any node object with ``receive``/``timer`` (and optionally ``start``,
``link_failed``, ``neighbors``): :class:`OverlayNode` or a bare core.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs

from ..effects import CancelTimer, Send, SetTimer
from ..sim import Simulation
from . import _codec
from ._events import Deliver, DirectDeliver, GossipDeliver

_CORE_EFFECTS = (Send, SetTimer, CancelTimer)


@attrs.frozen(slots=True)
class _Packet:
    src_inc: int
    dst_inc: int
    seq: int
    message: Any


@attrs.frozen(slots=True)
class _LinkFail:
    """Timer key a host uses to report a failed link to its node."""

    peer: Hashable


class SimHost:
    """The driver for one node inside :class:`SimNetwork`; see the module docstring."""

    __slots__ = ("net", "node_id", "node", "incarnation", "_out_seq", "_in_state", "_failing")

    def __init__(self, net: SimNetwork, node_id: Hashable, node: Any, incarnation: int) -> None:
        self.net = net
        self.node_id = node_id
        self.node = node
        self.incarnation = incarnation
        self._out_seq: dict[tuple[Hashable, int], int] = {}
        self._in_state: dict[Hashable, tuple[int, int, dict[int, Any]]] = {}
        self._failing: set[Hashable] = set()

    def start(self, now: float) -> list[Any]:
        start = getattr(self.node, "start", None)
        return self._filter(start(now) if start is not None else [], now)

    def call(self, fn: Callable[[float], Iterable[Any] | None]) -> Callable[[float], list[Any]]:
        """Wrap a command on the node so its effects pass through this host."""
        return lambda now: self._filter(fn(now) or [], now)

    def receive(self, sender: Hashable, packet: _Packet, now: float) -> list[Any]:
        state = self._in_state.get(sender)
        if state is not None and packet.src_inc < state[0]:
            return []  # from an earlier life of the sender
        if state is None or state[0] != packet.src_inc:
            state = (packet.src_inc, 0, {})
        inc, expected, buffer = state
        if packet.dst_inc != self.incarnation:
            return []  # sent to an earlier life of this node
        if packet.seq != expected:
            buffer[packet.seq] = packet.message
            self._in_state[sender] = (inc, expected, buffer)
            return []
        out: list[Any] = []
        message: Any = packet.message
        while True:
            expected += 1
            if self.net.wire:
                message = _codec.decode(message)
            out += self._filter(self.node.receive(sender, message, now), now)
            if expected not in buffer:
                break
            message = buffer.pop(expected)
        self._in_state[sender] = (inc, expected, buffer)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        if type(key) is _LinkFail:
            self._failing.discard(key.peer)
            fail = getattr(self.node, "link_failed", None)
            if fail is None:
                return []
            return self._filter(fail(key.peer, now), now)
        return self._filter(self.node.timer(key, now), now)

    def _filter(self, effects: Iterable[Any], now: float) -> list[Any]:
        net = self.net
        sim = net.sim
        out: list[Any] = []
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                dest = effect.dest
                message = effect.message
                net.sent[type(message).__name__] += 1
                if net.count_message is not None:
                    net.count_message(self.node_id, dest, message)
                if not sim.is_alive(dest) or not sim.can_reach(self.node_id, dest):
                    if dest not in self._failing and dest != self.node_id:
                        self._failing.add(dest)
                        delay = net.refuse_delay if not sim.is_alive(dest) else net.connect_timeout
                        out.append(SetTimer(_LinkFail(dest), now + delay))
                    continue
                if net.wire:
                    message = _codec.encode(message, compress=net.compress)
                dst_inc = net.incarnation[dest]
                key = (dest, dst_inc)
                seq = self._out_seq.get(key, 0)
                self._out_seq[key] = seq + 1
                out.append(Send(dest, _Packet(self.incarnation, dst_inc, seq, message)))
            elif kind in _CORE_EFFECTS:
                out.append(effect)
            else:
                net.record(self.node_id, effect, now)
        return out


class SimNetwork:
    """A seeded network of overlay nodes on :class:`phoenix_trio.sim.Simulation`.

    ``on_event(node_id, event, now)`` sees every overlay event (``Deliver``,
    ``NeighborUp`` ...); deliveries are also indexed in :attr:`deliveries` (message id ->
    {node: (time, hops)}) unless ``track_deliveries`` is False.
    ``count_message(src, dst, message)`` sees every message a node sends.
    """

    def __init__(
        self,
        *,
        seed: int,
        latency: tuple[float, float] = (0.001, 0.005),
        refuse_delay: float = 0.02,
        connect_timeout: float = 1.0,
        wire: bool = False,
        compress: bool = False,
        on_event: Callable[[Hashable, Any, float], None] | None = None,
        count_message: Callable[[Hashable, Hashable, Any], None] | None = None,
        track_deliveries: bool = True,
    ) -> None:
        self.sim = Simulation(seed=seed, latency=latency)
        self.refuse_delay = refuse_delay
        self.connect_timeout = connect_timeout
        self.wire = wire
        self.compress = compress
        self.on_event = on_event
        self.count_message = count_message
        self.track_deliveries = track_deliveries
        self.hosts: dict[Hashable, SimHost] = {}
        self.incarnation: dict[Hashable, int] = {}
        self.sent: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.deliveries: dict[bytes, dict[Hashable, tuple[float, int]]] = {}

    @property
    def now(self) -> float:
        return self.sim.now

    def node(self, node_id: Hashable) -> Any:
        return self.hosts[node_id].node

    def alive(self) -> list[Hashable]:
        return [n for n in self.hosts if self.sim.is_alive(n)]

    # -- topology ----------------------------------------------------------------------------

    def add(self, node_id: Hashable, node: Any) -> None:
        """Add (or restart) ``node_id`` running ``node``; its ``start`` runs now."""
        inc = self.incarnation.get(node_id, 0) + 1
        self.incarnation[node_id] = inc
        host = SimHost(self, node_id, node, inc)
        self.hosts[node_id] = host
        self.sim.add(node_id, host)

    def call(self, node_id: Hashable, fn: Callable[[float], Iterable[Any] | None], at: float | None = None) -> None:
        """Run the command ``fn(now)`` on ``node_id`` (now, or at ``at``)."""
        self.sim.call(node_id, self.hosts[node_id].call(fn), at=at)

    def crash(self, node_ids: Iterable[Hashable]) -> None:
        """Crash nodes at once; their live neighbours learn after ``refuse_delay``."""
        dead = set(node_ids)
        for node_id in dead:
            self.sim.crash(node_id)
        when = self.sim.now + self.refuse_delay
        for node_id in self.alive():
            for peer in self._neighbors(node_id):
                if peer in dead:
                    self._report(node_id, peer, when)

    def partition(self, *groups: Iterable[Hashable]) -> None:
        """Partition the network; both ends of every cut neighbour link learn after ``connect_timeout``."""
        self.sim.partition(*groups)
        when = self.sim.now + self.connect_timeout
        for node_id in self.alive():
            for peer in self._neighbors(node_id):
                if not self.sim.can_reach(node_id, peer):
                    self._report(node_id, peer, when)

    def heal(self) -> None:
        self.sim.heal()

    def _neighbors(self, node_id: Hashable) -> list[Hashable]:
        neighbors = getattr(self.hosts[node_id].node, "neighbors", None)
        return list(neighbors()) if neighbors is not None else []

    def _report(self, node_id: Hashable, peer: Hashable, when: float) -> None:
        host = self.hosts[node_id]
        if peer in host._failing:
            return
        host._failing.add(peer)
        self.sim.call(node_id, lambda now: host.timer(_LinkFail(peer), now), at=when)

    # -- running -----------------------------------------------------------------------------

    def run(self, until: float) -> None:
        self.sim.run(until)

    def run_for(self, seconds: float) -> None:
        self.sim.run(self.sim.now + seconds)

    def run_until(self, predicate: Callable[[], bool], *, timeout: float) -> bool:
        return self.sim.run_until(predicate, timeout=timeout)

    def record(self, node_id: Hashable, event: Any, now: float) -> None:
        kind = type(event)
        self.events[kind.__name__] += 1
        if self.track_deliveries:
            if kind is Deliver:
                self.deliveries.setdefault(event.message_id, {})[node_id] = (now, event.round)
            elif kind is GossipDeliver:
                self.deliveries.setdefault(event.envelope.id, {})[node_id] = (now, event.envelope.hop_count)
            elif kind is DirectDeliver:
                self.deliveries.setdefault(event.message_id, {})[node_id] = (now, event.hops)
        if self.on_event is not None:
            self.on_event(node_id, event, now)
