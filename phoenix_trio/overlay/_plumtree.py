"""Plumtree epidemic broadcast trees as a sans-IO state machine.

Runs over the neighbours a membership core reports (:meth:`Plumtree.neighbor_up` /
:meth:`Plumtree.neighbor_down`, normally the HyParView active view). Every neighbour
starts *eager* (payloads are pushed to it at once); a node that gets a payload twice
sends PRUNE, which turns that link *lazy* (only message ids are announced on it, in IHAVE
batches once per ``ihave_interval``). What is left eager is a spanning tree. When a node
hears of a message by IHAVE but the payload does not arrive within ``graft_timeout``, it
sends GRAFT to the announcer, which re-sends the payload and makes the link eager again:
that is how the tree repairs itself after failures. Optionally (the paper's
optimisation) a lazy link that announces a message clearly earlier than the eager copy
arrived replaces the eager one, which keeps the tree shallow.

Delivered ids live in a seen-cache bounded by count and age; payloads are stored
(bounded by count and age) to answer GRAFTs. Message ids are 16 random bytes from the
``rng`` passed in, unless the caller gives one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable
from typing import Any

import attrs

from ..effects import CancelTimer, Send, SetTimer
from ._cache import BoundedCache
from ._config import PlumtreeConfig
from ._events import Deliver
from . import _checks as checks
from ._messages import MAX_IDS, EagerPush, Graft, IHave, MessageId, NodeId, Prune

_log = logging.getLogger(__name__)

_IHAVE = ("plumtree", "ihave")
_MISSING = "missing"


@attrs.define
class PlumtreeStats:
    """Counters: payloads and control messages this node sent and received."""

    delivered: int = 0
    duplicates: int = 0
    eager_sent: int = 0
    ihave_sent: int = 0
    ihave_entries_sent: int = 0
    grafts_sent: int = 0
    prunes_sent: int = 0


class Plumtree:
    """One node's Plumtree state; see the module docstring.

    ``fanout`` caps how many neighbours start eager (None: all of them, as in the paper).
    """

    def __init__(
        self,
        node_id: NodeId,
        config: PlumtreeConfig | None = None,
        *,
        rng: random.Random,
        fanout: int | None = None,
    ) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config if config is not None else PlumtreeConfig()
        self.rng = rng
        self.fanout = fanout
        self.eager: dict[NodeId, None] = {}
        self.lazy: dict[NodeId, None] = {}
        cfg = self.config
        self._seen: BoundedCache[tuple[NodeId | None, int]] = BoundedCache(cfg.seen_cache_size)
        self._store: BoundedCache[EagerPush] = BoundedCache(cfg.store_size)
        self._missing: dict[MessageId, list[tuple[NodeId, int]]] = {}
        self._lazy_queue: dict[NodeId, list[tuple[MessageId, int]]] = {}
        self._ihave_scheduled = False
        self.stats = PlumtreeStats()

    # -- queries ---------------------------------------------------------------------------

    def neighbors(self) -> list[NodeId]:
        return list(self.eager) + list(self.lazy)

    def has_seen(self, message_id: MessageId, now: float) -> bool:
        return self._seen.contains(message_id, now)

    def new_message_id(self) -> MessageId:
        return self.rng.randbytes(16)

    # -- membership input ------------------------------------------------------------------

    def neighbor_up(self, peer: NodeId, now: float) -> list[Any]:
        if peer == self.node_id or peer in self.eager or peer in self.lazy:
            return []
        if self.fanout is None or len(self.eager) < self.fanout:
            self.eager[peer] = None
        else:
            self.lazy[peer] = None
        return []

    def neighbor_down(self, peer: NodeId, now: float) -> list[Any]:
        self.eager.pop(peer, None)
        self.lazy.pop(peer, None)
        self._lazy_queue.pop(peer, None)
        for announcers in self._missing.values():
            announcers[:] = [a for a in announcers if a[0] != peer]
        return []

    # -- commands --------------------------------------------------------------------------

    def broadcast(self, payload: bytes, now: float, *, message_id: MessageId | None = None) -> list[Any]:
        """Broadcast ``payload``; the first effect is this node's own :class:`Deliver`."""
        mid = self.new_message_id() if message_id is None else checks.message_id(message_id)
        checks.payload(payload)
        msg = EagerPush(mid, self.node_id, 0, payload)
        out: list[Any] = [Deliver(mid, self.node_id, 0, payload)]
        self._accept(msg, None, now, out)
        return out

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        kind = type(message)
        if kind is EagerPush:
            self._on_eager(sender, message, now, out)
        elif kind is IHave:
            self._on_ihave(sender, message, now, out)
        elif kind is Graft:
            self._on_graft(sender, message, now, out)
        elif kind is Prune:
            if sender in self.eager:
                del self.eager[sender]
                self.lazy[sender] = None
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        if key == _IHAVE:
            self._ihave_scheduled = False
            self._flush_ihave(out)
        elif isinstance(key, tuple) and len(key) == 3 and key[1] == _MISSING:
            self._on_missing_timer(key[2], now, out)
        return out

    # -- handlers --------------------------------------------------------------------------

    def _on_eager(self, sender: NodeId, msg: EagerPush, now: float, out: list[Any]) -> None:
        if self._seen.contains(msg.message_id, now):
            self.stats.duplicates += 1
            if sender in self.eager:
                del self.eager[sender]
                self.lazy[sender] = None
                self.stats.prunes_sent += 1
                out.append(Send(sender, Prune()))
            return
        out.append(Deliver(msg.message_id, msg.origin, msg.round, msg.payload))
        announcers = self._missing.pop(msg.message_id, None)
        if announcers is not None:
            out.append(CancelTimer(("plumtree", _MISSING, msg.message_id)))
        if sender in self.lazy:
            del self.lazy[sender]
            self.eager[sender] = None
        self._accept(msg, sender, now, out)
        threshold = self.config.optimization_threshold
        if threshold and announcers and sender in self.eager:
            # A lazy neighbour announced this clearly sooner (in hops): swap the links.
            peer, lazy_round = min(announcers, key=lambda a: a[1])
            if peer in self.lazy and lazy_round + threshold <= msg.round:
                self._swap(peer, sender, out)

    def _accept(self, msg: EagerPush, sender: NodeId | None, now: float, out: list[Any]) -> None:
        cfg = self.config
        self.stats.delivered += 1
        self._seen.put(msg.message_id, (sender, msg.round), now + cfg.seen_ttl, now)
        self._store.put(msg.message_id, msg, now + cfg.store_ttl, now)
        forward = EagerPush(msg.message_id, msg.origin, msg.round + 1, msg.payload)
        for peer in self.eager:
            if peer != sender:
                self.stats.eager_sent += 1
                out.append(Send(peer, forward))
        entry = (msg.message_id, msg.round + 1)
        queued = False
        for peer in self.lazy:
            if peer != sender:
                self._lazy_queue.setdefault(peer, []).append(entry)
                queued = True
        if queued and not self._ihave_scheduled:
            self._ihave_scheduled = True
            out.append(SetTimer(_IHAVE, now + cfg.ihave_interval))

    def _on_ihave(self, sender: NodeId, msg: IHave, now: float, out: list[Any]) -> None:
        cfg = self.config
        threshold = cfg.optimization_threshold
        for mid, rnd in msg.entries:
            seen = self._seen.get(mid, now)
            if seen is not None:
                came_from, eager_round = seen
                if (
                    threshold
                    and sender in self.lazy
                    and came_from is not None
                    and came_from in self.eager
                    and rnd + threshold <= eager_round
                ):
                    self._swap(sender, came_from, out)
                continue
            announcers = self._missing.get(mid)
            if announcers is None:
                if len(self._missing) >= cfg.store_size:
                    oldest = next(iter(self._missing))
                    del self._missing[oldest]
                    out.append(CancelTimer(("plumtree", _MISSING, oldest)))
                announcers = self._missing[mid] = []
                out.append(SetTimer(("plumtree", _MISSING, mid), now + cfg.graft_timeout))
            if all(a[0] != sender for a in announcers):
                announcers.append((sender, rnd))

    def _on_missing_timer(self, mid: MessageId, now: float, out: list[Any]) -> None:
        announcers = self._missing.get(mid)
        if announcers is None:
            return
        if self._seen.contains(mid, now) or not announcers:
            del self._missing[mid]
            return
        peer, rnd = announcers.pop(0)
        if peer in self.lazy:
            del self.lazy[peer]
            self.eager[peer] = None
        self.stats.grafts_sent += 1
        out.append(Send(peer, Graft(mid, rnd)))
        out.append(SetTimer(("plumtree", _MISSING, mid), now + self.config.graft_retry))

    def _on_graft(self, sender: NodeId, msg: Graft, now: float, out: list[Any]) -> None:
        if sender in self.lazy:
            del self.lazy[sender]
            self.eager[sender] = None
        if msg.message_id is None:
            return
        stored = self._store.get(msg.message_id, now)
        if stored is not None:
            self.stats.eager_sent += 1
            out.append(Send(sender, EagerPush(stored.message_id, stored.origin, stored.round + 1, stored.payload)))

    def _swap(self, lazy_peer: NodeId, eager_peer: NodeId, out: list[Any]) -> None:
        del self.lazy[lazy_peer]
        self.eager[lazy_peer] = None
        del self.eager[eager_peer]
        self.lazy[eager_peer] = None
        self.stats.grafts_sent += 1
        self.stats.prunes_sent += 1
        out.append(Send(lazy_peer, Graft(None, 0)))
        out.append(Send(eager_peer, Prune()))

    def _flush_ihave(self, out: list[Any]) -> None:
        queue, self._lazy_queue = self._lazy_queue, {}
        for peer, entries in queue.items():
            if peer not in self.lazy and peer not in self.eager:
                continue
            for start in range(0, len(entries), MAX_IDS):
                chunk = tuple(entries[start : start + MAX_IDS])
                self.stats.ihave_sent += 1
                self.stats.ihave_entries_sent += len(chunk)
                out.append(Send(peer, IHave(chunk)))
