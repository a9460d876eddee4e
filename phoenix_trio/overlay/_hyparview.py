"""HyParView membership as a sans-IO state machine.

Each node keeps a small *active view* (symmetric: if A lists B, B lists A; these are
the links broadcast and routing use) and a larger *passive view* of backups. Joins
spread by random walks (FORWARD_JOIN with the active and passive random walk lengths);
a periodic SHUFFLE walk refreshes passive views; when an active neighbour fails (the
driver reports it with :meth:`HyParView.link_failed`), or disconnects, the node asks
passive nodes to become neighbours (NEIGHBOR, high priority when it has none left).

Beyond the paper, for the failure modes Partisan users met:

- *Islands on mass joins.* A WELCOME carries a sample of the sender's views, so a joiner
  starts with a passive view even when every node joins at once through one contact
  (whose active view churns, so FORWARD_JOIN walks alone would only link each joiner to
  the last few); nodes with free slots keep asking passive nodes, and a node with no
  neighbours and no passive view re-joins through its contacts.
- *Partitions.* Peers whose link failed are kept in a bounded suspect list and probed
  one per ``probe_interval``; one that answers is reconnected with high priority, so
  the two sides of a healed partition merge again. A probe that gets no answer puts
  the peer back on the list (until ``suspect_ttl`` after its failure), so a partition
  that outlasts a round of probes still heals: otherwise both sides forget each other
  and stay islands.
- *Members listed after they left.* :meth:`members` is the active view only, which
  holds live connected peers; :meth:`leave` sends DISCONNECT(leaving) and receivers
  drop the node from both views and keep a tombstone for ``tombstone_ttl`` so stale
  shuffles cannot bring it back.
- *Sends failing when a link is demoted.* A demotion is DISCONNECT then
  :class:`~phoenix_trio.overlay.CloseLink`, in that order, after anything already sent;
  the driver closes only after flushing.

The driver must deliver the membership messages between two nodes in order (one TCP
connection does); it reports a broken or refused connection with :meth:`link_failed`
on both ends.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Iterable
from typing import Any

import attrs

from ..effects import CancelTimer, Send, SetTimer
from . import _checks as checks
from ._config import HyParViewConfig
from ._events import CloseLink, JoinFailed, NeighborDown, NeighborUp
from ._messages import (
    Disconnect,
    DisconnectAck,
    ForwardJoin,
    Join,
    Neighbor,
    NeighborReply,
    NodeId,
    Shuffle,
    ShuffleReply,
    Welcome,
    WelcomeAck,
)

_log = logging.getLogger(__name__)

_SHUFFLE = ("hyparview", "shuffle")
_REPAIR = ("hyparview", "repair")
_JOIN = ("hyparview", "join")
_PROBE = ("hyparview", "probe")


@attrs.define
class HyParViewStats:
    """Counters for observability and tests."""

    joins_handled: int = 0
    forward_joins: int = 0
    neighbor_requests: int = 0
    neighbor_rejected: int = 0
    shuffles: int = 0
    repairs: int = 0
    rejoins: int = 0
    probes: int = 0
    dropped: int = 0


class HyParView:
    """One node's HyParView state. Inputs return lists of effects; see the module docstring.

    ``rng`` is the only source of randomness. Iteration order of every view is insertion
    order, so a seeded run replays exactly.
    """

    def __init__(self, node_id: NodeId, config: HyParViewConfig | None = None, *, rng: random.Random) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config if config is not None else HyParViewConfig()
        self.rng = rng
        self.active: dict[NodeId, None] = {}
        self.passive: dict[NodeId, None] = {}
        self._pending: dict[NodeId, tuple[float, bool]] = {}  # NEIGHBOR sent: peer -> (deadline, forced)
        self._awaiting: set[NodeId] = set()  # WELCOME sent, its acknowledgement not yet back
        self._closing: dict[NodeId, int] = {}  # DISCONNECTs sent and not yet acknowledged
        self._contacts: list[NodeId] = []
        self._contact_index = 0
        self._joining = False
        self._join_resting = False  # a whole round of contacts failed: the next join waits for the timer
        self._join_attempts = 0
        self._suspects: dict[NodeId, float] = {}  # peer -> forget at
        self._probing: dict[NodeId, float] = {}  # suspects with a probe out: peer -> forget at
        self._tombstones: dict[NodeId, float] = {}  # departed peer -> forget at
        self._repair_at: float | None = None
        self._backoff = 1.0  # repair interval multiplier; doubles while requests are refused
        self._last_shuffle: list[NodeId] = []
        self.left = False
        self.stats = HyParViewStats()

    # -- queries ---------------------------------------------------------------------------

    def members(self) -> list[NodeId]:
        """The active view: the live, connected overlay neighbours."""
        return list(self.active)

    def neighbors(self) -> list[NodeId]:
        return list(self.active)

    def passive_view(self) -> list[NodeId]:
        return list(self.passive)

    @property
    def joined(self) -> bool:
        return bool(self.active)

    # -- commands --------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        """Start the periodic timers (shuffle at a random phase, suspect probes)."""
        cfg = self.config
        return [
            SetTimer(_SHUFFLE, now + self.rng.uniform(0.0, cfg.shuffle_interval)),
            SetTimer(_PROBE, now + self.rng.uniform(0.0, cfg.probe_interval)),
        ]

    def join(self, contacts: Iterable[NodeId], now: float) -> list[Any]:
        """Join the overlay through ``contacts`` (tried in turn). No contacts: this node is the first."""
        self.left = False
        self._contacts = [c for c in dict.fromkeys(checks.node_ids(contacts, "contacts")) if c != self.node_id]
        self._contact_index = 0
        self._join_attempts = 0
        self._join_resting = False
        out: list[Any] = []
        if self._contacts:
            self._send_join(now, out)
        return out

    def leave(self, now: float) -> list[Any]:
        """Leave: DISCONNECT(leaving) to every neighbour, forget all views, stop timers."""
        if self.left:
            return []
        out: list[Any] = []
        for peer in list(self.active):
            out.append(Send(peer, Disconnect(leaving=True)))
            out.append(NeighborDown(peer, "left"))
            out.append(CloseLink(peer))
        self.active.clear()
        self.passive.clear()
        self._pending.clear()
        self._awaiting.clear()
        self._closing.clear()
        self._suspects.clear()
        self._probing.clear()
        self._joining = False
        self.left = True
        out += [CancelTimer(_SHUFFLE), CancelTimer(_REPAIR), CancelTimer(_JOIN), CancelTimer(_PROBE)]
        self._repair_at = None
        return out

    def link_failed(self, peer: NodeId, now: float) -> list[Any]:
        """The driver lost (or could not open) the connection to ``peer``."""
        out: list[Any] = []
        self._pending.pop(peer, None)
        self._probe_unanswered(peer, now)
        self._awaiting.discard(peer)
        self._closing.pop(peer, None)
        if peer in self.active:
            del self.active[peer]
            out.append(NeighborDown(peer, "failed"))
            out.append(CloseLink(peer))
            self._suspect(peer, now)
        self.passive.pop(peer, None)
        if self._joining and not self._join_resting and self._contacts and self._contacts[self._contact_index % len(self._contacts)] == peer:
            self._contact_index += 1
            if self._contact_index % len(self._contacts) == 0:
                # Every contact failed (refused connections fail at once): wait a
                # join_timeout before the next round instead of redialling in a loop.
                self._join_resting = True
                out.append(SetTimer(_JOIN, now + self.config.join_timeout))
            else:
                self._send_join(now, out)
        self._repair(now, out)
        return out

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        if sender == self.node_id:
            return []
        handler = _HANDLERS.get(type(message))
        if handler is None:
            _log.debug("%s: ignoring %r from %s", self.node_id, message, sender)
            return []
        out: list[Any] = []
        handler(self, sender, message, now, out)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        if self.left:
            return out
        if key == _SHUFFLE:
            self._shuffle(now, out)
            out.append(SetTimer(_SHUFFLE, now + self.config.shuffle_interval))
        elif key == _REPAIR:
            self._repair_at = None
            self._repair(now, out)
        elif key == _JOIN:
            if self._joining:
                if self._join_resting:
                    self._join_resting = False
                else:
                    self._contact_index += 1
                self._send_join(now, out)
        elif key == _PROBE:
            self._probe(now, out)
            out.append(SetTimer(_PROBE, now + self.config.probe_interval))
        return out

    # -- message handlers ------------------------------------------------------------------

    def _on_join(self, sender: NodeId, msg: Join, now: float, out: list[Any]) -> None:
        if self.left:
            return
        self.stats.joins_handled += 1
        self._tombstones.pop(sender, None)
        self._suspects.pop(sender, None)
        self._probing.pop(sender, None)
        if sender not in self.active:
            self._add_active(sender, now, out)
        self._awaiting.add(sender)
        out.append(Send(sender, Welcome(self._sample(self.config.welcome_sample, exclude=sender))))
        ttl = self.config.active_random_walk_length
        for peer in self.active:
            if peer != sender:
                out.append(Send(peer, ForwardJoin(sender, ttl)))

    def _on_forward_join(self, sender: NodeId, msg: ForwardJoin, now: float, out: list[Any]) -> None:
        new = msg.new_node
        if self.left or new == self.node_id or new in self.active:
            return
        self.stats.forward_joins += 1
        self._tombstones.pop(new, None)
        candidates = [p for p in self.active if p != sender and p != new]
        if msg.ttl == 0 or len(self.active) <= 1 or not candidates:
            self._add_active(new, now, out)
            self._awaiting.add(new)
            out.append(Send(new, Welcome(self._sample(self.config.welcome_sample, exclude=new))))
            return
        if msg.ttl == self.config.passive_random_walk_length:
            self._add_passive(new)
        out.append(Send(self.rng.choice(candidates), ForwardJoin(new, msg.ttl - 1)))

    def _on_welcome(self, sender: NodeId, msg: Welcome, now: float, out: list[Any]) -> None:
        if self.left:
            out.append(Send(sender, Disconnect(leaving=True)))
            return
        if sender in self._closing:
            return  # sent before the peer saw our DISCONNECT, which undoes it there
        if self._joining:
            self._joining = False
            self._join_resting = False
            out.append(CancelTimer(_JOIN))
        self._pending.pop(sender, None)
        if sender not in self.active:
            self._add_active(sender, now, out)
        # Acknowledge, so a DISCONNECT from us that crossed this WELCOME cannot leave the
        # link half-open: the sender re-checks the link when the acknowledgement arrives.
        out.append(Send(sender, WelcomeAck()))
        for node in msg.sample:
            if node != sender:
                self._add_passive(node)

    def _on_neighbor(self, sender: NodeId, msg: Neighbor, now: float, out: list[Any]) -> None:
        if self.left:
            out.append(Send(sender, Disconnect(leaving=True)))
            return
        self.stats.neighbor_requests += 1
        if sender in self.active:
            out.append(Send(sender, NeighborReply(True)))
            return
        self._tombstones.pop(sender, None)
        if msg.high_priority or len(self.active) < self.config.active_view_size:
            self._pending.pop(sender, None)
            self._add_active(sender, now, out)
            out.append(Send(sender, NeighborReply(True)))
        else:
            self.stats.neighbor_rejected += 1
            self._add_passive(sender)
            out.append(Send(sender, NeighborReply(False)))

    def _on_welcome_ack(self, sender: NodeId, msg: WelcomeAck, now: float, out: list[Any]) -> None:
        if sender in self._awaiting:
            self._awaiting.discard(sender)
        elif sender not in self.active and sender not in self._closing:
            # The peer added us, but the link is gone here (a DISCONNECT from the peer
            # crossed our WELCOME): undo its half.
            self._disconnect(sender, out)

    def _on_neighbor_reply(self, sender: NodeId, msg: NeighborReply, now: float, out: list[Any]) -> None:
        pending = self._pending.pop(sender, None)
        self._probing.pop(sender, None)  # it answered: reachable again
        if not msg.accepted:
            if sender not in self.active:
                self._add_passive(sender)
            self._backoff = min(self._backoff * 2.0, 16.0)
            self._schedule_repair(now + self.config.repair_interval * self._backoff, out)
            return
        if sender in self.active or sender in self._closing:
            return  # closing: our DISCONNECT, still on its way, undoes the acceptance
        # The sender has us in its active view.
        if self.left:
            out.append(Send(sender, Disconnect(leaving=True)))
            return
        if pending is not None and (pending[1] or len(self.active) < self.config.active_view_size):
            self._add_active(sender, now, out)
        else:
            # Filled up meanwhile, or the request timed out: undo the peer's half.
            self._disconnect(sender, out)
            self._add_passive(sender)

    def _on_disconnect_ack(self, sender: NodeId, msg: DisconnectAck, now: float, out: list[Any]) -> None:
        count = self._closing.get(sender, 0)
        if count <= 1:
            self._closing.pop(sender, None)
        else:
            self._closing[sender] = count - 1

    def _on_disconnect(self, sender: NodeId, msg: Disconnect, now: float, out: list[Any]) -> None:
        self._pending.pop(sender, None)
        self._awaiting.discard(sender)
        if not msg.leaving:
            out.append(Send(sender, DisconnectAck()))
        if sender in self.active:
            del self.active[sender]
            out.append(NeighborDown(sender, "left" if msg.leaving else "disconnected"))
            out.append(CloseLink(sender))
        if msg.leaving:
            self.passive.pop(sender, None)
            self._suspects.pop(sender, None)
            self._probing.pop(sender, None)
            self._tombstones[sender] = now + self.config.tombstone_ttl
        elif not self.left:
            self._add_passive(sender)
        if not self.left:
            self._repair(now, out)

    def _on_shuffle(self, sender: NodeId, msg: Shuffle, now: float, out: list[Any]) -> None:
        if self.left or msg.origin == self.node_id:
            return
        ttl = msg.ttl - 1
        candidates = [p for p in self.active if p != sender and p != msg.origin]
        if ttl > 0 and candidates:
            out.append(Send(self.rng.choice(candidates), Shuffle(msg.origin, msg.nodes, ttl)))
            return
        pool = [p for p in self.passive if p != msg.origin]
        reply = self.rng.sample(pool, min(len(msg.nodes), len(pool)))
        out.append(Send(msg.origin, ShuffleReply(tuple(reply))))
        self._integrate(msg.nodes, reply, now)

    def _on_shuffle_reply(self, sender: NodeId, msg: ShuffleReply, now: float, out: list[Any]) -> None:
        if self.left:
            return
        self._integrate(msg.nodes, self._last_shuffle, now)

    # -- internals -------------------------------------------------------------------------

    def _send_join(self, now: float, out: list[Any]) -> None:
        if not self._contacts:
            return
        if self._contact_index and self._contact_index % len(self._contacts) == 0:
            # A whole round of contacts went unanswered; keep trying, but say so once a round.
            out.append(JoinFailed("no contact answered: " + ", ".join(self._contacts[:8])))
        contact = self._contacts[self._contact_index % len(self._contacts)]
        self._joining = True
        self._join_attempts += 1
        out.append(Send(contact, Join()))
        out.append(SetTimer(_JOIN, now + self.config.join_timeout))

    def _add_active(self, peer: NodeId, now: float, out: list[Any]) -> None:
        if peer == self.node_id or peer in self.active:
            return
        if len(self.active) >= self.config.active_view_size:
            victim = self.rng.choice([p for p in self.active if p != peer])
            self.stats.dropped += 1
            del self.active[victim]
            self._awaiting.discard(victim)
            self._disconnect(victim, out)
            out.append(NeighborDown(victim, "replaced"))
            out.append(CloseLink(victim))
            self._add_passive(victim)
        self.passive.pop(peer, None)
        self._pending.pop(peer, None)
        self._suspects.pop(peer, None)
        self._probing.pop(peer, None)
        self.active[peer] = None
        self._backoff = 1.0
        out.append(NeighborUp(peer))

    def _disconnect(self, peer: NodeId, out: list[Any]) -> None:
        self._closing[peer] = self._closing.get(peer, 0) + 1
        out.append(Send(peer, Disconnect(leaving=False)))

    def _add_passive(self, peer: NodeId, prefer_evict: Iterable[NodeId] = ()) -> None:
        if (
            peer == self.node_id
            or peer in self.active
            or peer in self.passive
            or peer in self._tombstones
            or self.config.passive_view_size == 0
        ):
            return
        if len(self.passive) >= self.config.passive_view_size:
            evict = next((p for p in prefer_evict if p in self.passive and p not in self._pending), None)
            if evict is None:
                evict = self.rng.choice(list(self.passive))
            del self.passive[evict]
        self.passive[peer] = None

    def _integrate(self, nodes: Iterable[NodeId], sent: list[NodeId], now: float) -> None:
        self._expire_tombstones(now)
        for node in nodes:
            self._add_passive(node, prefer_evict=sent)

    def _sample(self, count: int, exclude: NodeId) -> tuple[NodeId, ...]:
        pool = [p for p in self.passive if p != exclude] + [p for p in self.active if p != exclude]
        return tuple(self.rng.sample(pool, min(count, len(pool))))

    def _schedule_repair(self, when: float, out: list[Any]) -> None:
        if self._repair_at is None or when < self._repair_at:
            self._repair_at = when
            out.append(SetTimer(_REPAIR, when))

    def _repair(self, now: float, out: list[Any]) -> None:
        """Fill free active slots from the passive view; re-join when nothing is left."""
        if self.left:
            return
        cfg = self.config
        for peer, (deadline, _) in list(self._pending.items()):
            if deadline <= now:  # unanswered: presumed gone
                del self._pending[peer]
                self.passive.pop(peer, None)
                self._probe_unanswered(peer, now)
        free = cfg.active_view_size - len(self.active) - len(self._pending)
        if free > 0:
            candidates = [p for p in self.passive if p not in self._pending]
            high = not self.active
            while free > 0 and candidates:
                peer = candidates.pop(self.rng.randrange(len(candidates)))
                self._pending[peer] = (now + cfg.neighbor_timeout, False)
                self.stats.repairs += 1
                out.append(Send(peer, Neighbor(high_priority=high)))
                free -= 1
        if not self.active and not self._pending and not self.passive and self._contacts and not self._joining:
            self.stats.rejoins += 1
            self._send_join(now, out)
        if len(self.active) < cfg.active_view_size:
            later = now + cfg.repair_interval * self._backoff
            nearest = min((d for d, _ in self._pending.values()), default=later)
            self._schedule_repair(min(later, nearest), out)

    def _shuffle(self, now: float, out: list[Any]) -> None:
        if not self.active:
            return
        cfg = self.config
        self.stats.shuffles += 1
        active = list(self.active)
        passive = list(self.passive)
        sample = self.rng.sample(active, min(cfg.shuffle_active, len(active)))
        sample += self.rng.sample(passive, min(cfg.shuffle_passive, len(passive)))
        self._last_shuffle = sample
        target = self.rng.choice(active)
        nodes = (self.node_id, *[n for n in sample if n != target])
        out.append(Send(target, Shuffle(self.node_id, nodes, cfg.active_random_walk_length)))

    def _suspect(self, peer: NodeId, now: float) -> None:
        if self.config.max_suspects == 0:
            return
        self._suspects.pop(peer, None)
        self._suspects[peer] = now + self.config.suspect_ttl
        while len(self._suspects) > self.config.max_suspects:
            del self._suspects[next(iter(self._suspects))]

    def _probe_unanswered(self, peer: NodeId, now: float) -> None:
        """A probe of ``peer`` failed or timed out: suspect it again until its time is up."""
        forget_at = self._probing.pop(peer, None)
        if forget_at is None or forget_at <= now or peer in self.active or peer in self._tombstones:
            return
        self._suspects[peer] = forget_at
        while len(self._suspects) > self.config.max_suspects:
            del self._suspects[next(iter(self._suspects))]

    def _probe(self, now: float, out: list[Any]) -> None:
        for peer, forget_at in list(self._suspects.items()):
            if forget_at <= now or peer in self.active:
                del self._suspects[peer]
        self._expire_tombstones(now)
        candidates = [p for p in self._suspects if p not in self._pending]
        if not candidates:
            return
        peer = self.rng.choice(candidates)
        self._probing[peer] = self._suspects.pop(peer)
        while len(self._probing) > self.config.max_suspects:
            del self._probing[next(iter(self._probing))]
        self.stats.probes += 1
        self._pending[peer] = (now + self.config.neighbor_timeout, True)
        out.append(Send(peer, Neighbor(high_priority=True)))

    def _expire_tombstones(self, now: float) -> None:
        for peer, forget_at in list(self._tombstones.items()):
            if forget_at <= now:
                del self._tombstones[peer]


_HANDLERS: dict[type[Any], Any] = {
    Join: HyParView._on_join,
    ForwardJoin: HyParView._on_forward_join,
    Welcome: HyParView._on_welcome,
    WelcomeAck: HyParView._on_welcome_ack,
    Neighbor: HyParView._on_neighbor,
    NeighborReply: HyParView._on_neighbor_reply,
    Disconnect: HyParView._on_disconnect,
    DisconnectAck: HyParView._on_disconnect_ack,
    Shuffle: HyParView._on_shuffle,
    ShuffleReply: HyParView._on_shuffle_reply,
}
