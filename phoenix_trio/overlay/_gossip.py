"""The design's gossip pattern as a sans-IO state machine: push rounds plus anti-entropy.

:meth:`Gossip.gossip_message` wraps a payload in a :class:`GossipEnvelope` (id, payload,
ttl, hop count 0, origin node, vector-clock timestamp) and pushes it at once to
``fanout`` random peers. :meth:`Gossip.handle_gossip_reception` processes each envelope
once (a bounded seen-cache recognises repeats), delivers it and marks it *hot*. Every
``round_duration`` a node pushes its hot envelopes, batched into one message per peer,
to ``fanout`` random peers, with the hop count raised and the ttl lowered by the time it
held them; a message stops being pushed when its ttl expires (or after ``push_rounds``
rounds when that bound is set).

Anti-entropy: every ``anti_entropy_interval`` a node sends the ids of the messages it
holds (the newest ``digest_size``) to one random peer; the peer answers with the
envelopes the sender lacks and asks for the ones it lacks itself. A node cut off by a
partition therefore catches up on everything still within its ttl once the partition
heals, even after the push rounds are over. The message store is bounded by ttl and by
``max_messages``.

Peers come from the driver (:meth:`Gossip.set_peers`, :meth:`Gossip.peer_up`,
:meth:`Gossip.peer_down`): the full member list in a small cluster, or a membership
core's neighbours in a large overlay; or from a peer-sampling function
``sampler(rng, k)`` that returns up to ``k`` distinct peers (a membership service
with a large member list, without copying it into every core). Uniform random peers give the classic bound of
about log2(N) + ln(N) rounds to reach everyone with one peer per round; the default
fanout of 3 does better.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs

from ..effects import Send, SetTimer
from .._errors import ValidationError
from . import _checks as checks
from ._cache import BoundedCache
from ._config import GossipConfig
from ._events import GossipDeliver
from ._messages import (
    MAX_CLOCK,
    MAX_COUNTER,
    GossipDigest,
    GossipEnvelope,
    GossipPush,
    GossipRequest,
    MessageId,
    NodeId,
)

_log = logging.getLogger(__name__)

_ROUND = ("gossip", "round")
_ANTI_ENTROPY = ("gossip", "anti_entropy")


@attrs.define(slots=True)
class _Held:
    envelope: GossipEnvelope
    received_at: float
    expires_at: float
    pushes_left: int | None


@attrs.define
class GossipStats:
    """Counters for observability and tests."""

    delivered: int = 0
    duplicates: int = 0
    expired_on_arrival: int = 0
    pushes_sent: int = 0
    envelopes_sent: int = 0
    digests_sent: int = 0
    requests_sent: int = 0
    anti_entropy_envelopes: int = 0


class Gossip:
    """One node's gossip state; see the module docstring."""

    def __init__(
        self,
        node_id: NodeId,
        config: GossipConfig | None = None,
        *,
        rng: random.Random,
        peers: Iterable[NodeId] = (),
        sampler: Callable[[random.Random, int], list[NodeId]] | None = None,
    ) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config if config is not None else GossipConfig()
        self.rng = rng
        self.peers: dict[NodeId, None] = {p: None for p in peers if p != node_id}
        self.sampler = sampler
        cfg = self.config
        self._store: BoundedCache[_Held] = BoundedCache(cfg.max_messages)
        self._seen: BoundedCache[None] = BoundedCache(cfg.seen_cache_size)
        self._hot: dict[MessageId, None] = {}
        self.clock: dict[NodeId, int] = {}
        self._clock_touched: dict[NodeId, float] = {}
        self.stats = GossipStats()

    # -- peers -----------------------------------------------------------------------------

    def set_peers(self, peers: Iterable[NodeId], now: float) -> list[Any]:
        self.peers = {p: None for p in peers if p != self.node_id}
        return []

    def peer_up(self, peer: NodeId, now: float) -> list[Any]:
        if peer != self.node_id:
            self.peers[peer] = None
        return []

    def peer_down(self, peer: NodeId, now: float) -> list[Any]:
        self.peers.pop(peer, None)
        return []

    # -- queries ---------------------------------------------------------------------------

    def has_seen(self, message_id: MessageId, now: float) -> bool:
        return self._seen.contains(message_id, now)

    def pushing(self) -> int:
        """How many messages this node still pushes in its rounds (0: its push phase is over)."""
        return len(self._hot)

    def held(self, now: float) -> list[GossipEnvelope]:
        """The envelopes this node still holds (within their ttl), oldest first."""
        return [h.envelope for _, h in self._store.items(now) if h.expires_at > now]

    # -- commands --------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        cfg = self.config
        return [
            SetTimer(_ROUND, now + self.rng.uniform(0.0, cfg.round_duration)),
            SetTimer(_ANTI_ENTROPY, now + self.rng.uniform(0.0, cfg.anti_entropy_interval)),
        ]

    def gossip_message(
        self,
        payload: bytes,
        now: float,
        *,
        ttl: float | None = None,
        message_id: MessageId | None = None,
    ) -> list[Any]:
        """Originate a gossip message; the first effect is this node's own :class:`GossipDeliver`.

        ``ttl`` (seconds) defaults to ``message_ttl``. The origin pushes at once (its first
        round) and then every round like any other holder.
        """
        cfg = self.config
        mid = self.rng.randbytes(16) if message_id is None else checks.message_id(message_id)
        checks.payload(payload)
        lifetime = cfg.message_ttl if ttl is None else ttl
        if not (isinstance(lifetime, int | float) and 0 < lifetime < MAX_COUNTER / 1000):
            raise ValidationError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self.clock[self.node_id] = min(self.clock.get(self.node_id, 0) + 1, MAX_COUNTER)
        self._clock_touched[self.node_id] = now
        self._prune_clock()
        envelope = GossipEnvelope(
            id=mid,
            payload=payload,
            ttl_ms=min(int(lifetime * 1000), MAX_COUNTER),
            hop_count=0,
            origin_node=self.node_id,
            timestamp=dict(self.clock),
        )
        out = self.handle_gossip_reception(envelope, None, now)
        held = self._store.get(mid, now)
        if held is not None:
            self._push_round([mid], now, out)
        return out

    def handle_gossip_reception(self, envelope: GossipEnvelope, sender: NodeId | None, now: float) -> list[Any]:
        """Process ``envelope`` once: deliver it, keep it for pushing and anti-entropy.

        A repeat (seen-cache hit) or an envelope whose ttl ran out returns no effects.
        """
        if self._seen.contains(envelope.id, now):
            self.stats.duplicates += 1
            return []
        if envelope.ttl_ms <= 0:
            self.stats.expired_on_arrival += 1
            return []
        cfg = self.config
        life = envelope.ttl_ms / 1000.0
        self._seen.put(envelope.id, None, now + life + cfg.message_ttl, now)
        pushes = cfg.push_rounds
        self._store.put(envelope.id, _Held(envelope, now, now + life, pushes), now + life, now)
        self._hot[envelope.id] = None
        if envelope.origin_node != self.node_id:
            self._merge_clock(envelope.timestamp, now)
        self.stats.delivered += 1
        return [GossipDeliver(envelope)]

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        kind = type(message)
        if kind is GossipPush:
            for envelope in message.envelopes:
                out += self.handle_gossip_reception(envelope, sender, now)
        elif kind is GossipDigest:
            self._on_digest(sender, message, now, out)
        elif kind is GossipRequest:
            wanted = [self._store.get(i, now) for i in message.ids]
            self._send_envelopes(sender, [h for h in wanted if h is not None], now, out)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        cfg = self.config
        if key == _ROUND:
            self._store.expire(now)
            self._push_round(list(self._hot), now, out)
            out.append(SetTimer(_ROUND, now + cfg.round_duration))
        elif key == _ANTI_ENTROPY:
            chosen = self._choose(1)
            if chosen:
                ids = tuple(self._live_ids(now, cfg.digest_size))
                self.stats.digests_sent += 1
                out.append(Send(chosen[0], GossipDigest(ids)))
            out.append(SetTimer(_ANTI_ENTROPY, now + cfg.anti_entropy_interval))
        return out

    # -- internals -------------------------------------------------------------------------

    def _live_ids(self, now: float, limit: int) -> list[MessageId]:
        ids: list[MessageId] = []
        for key in self._store.newest(self._store.max_entries):
            held = self._store.get(key, now)
            if held is not None:
                ids.append(held.envelope.id)
                if len(ids) >= limit:
                    break
        return ids

    def _push_round(self, ids: list[MessageId], now: float, out: list[Any]) -> None:
        batch: list[_Held] = []
        for mid in ids:
            held = self._store.get(mid, now)
            if held is None or held.expires_at <= now:
                self._hot.pop(mid, None)
                continue
            batch.append(held)
            if held.pushes_left is not None:
                held.pushes_left -= 1
                if held.pushes_left <= 0:
                    self._hot.pop(mid, None)
        if not batch:
            return
        for peer in self._choose(self.config.fanout):
            self._send_envelopes(peer, batch, now, out)

    def _choose(self, k: int) -> list[NodeId]:
        if self.sampler is not None:
            return [p for p in self.sampler(self.rng, k) if p != self.node_id][:k]
        peers = list(self.peers)
        return self.rng.sample(peers, min(k, len(peers)))

    def _send_envelopes(self, peer: NodeId, held: list[_Held], now: float, out: list[Any]) -> None:
        envelopes = []
        for h in held:
            remaining = int((h.expires_at - now) * 1000)
            if remaining <= 0:
                continue
            e = h.envelope
            envelopes.append(
                GossipEnvelope(e.id, e.payload, remaining, min(e.hop_count + 1, MAX_COUNTER), e.origin_node, e.timestamp)
            )
        size = self.config.max_batch
        for start in range(0, len(envelopes), size):
            chunk = tuple(envelopes[start : start + size])
            self.stats.pushes_sent += 1
            self.stats.envelopes_sent += len(chunk)
            out.append(Send(peer, GossipPush(chunk)))

    def _on_digest(self, sender: NodeId, msg: GossipDigest, now: float, out: list[Any]) -> None:
        theirs = set(msg.ids)
        lacking = [i for i in dict.fromkeys(msg.ids) if not self._seen.contains(i, now)]
        if lacking:
            self.stats.requests_sent += 1
            out.append(Send(sender, GossipRequest(tuple(lacking))))
        extra: list[_Held] = []
        for mid in self._live_ids(now, self.config.digest_size):
            if mid not in theirs:
                held = self._store.get(mid, now)
                if held is not None:
                    extra.append(held)
        if extra:
            self.stats.anti_entropy_envelopes += len(extra)
            self._send_envelopes(sender, extra, now, out)

    def _merge_clock(self, timestamp: dict[NodeId, int], now: float) -> None:
        clock = self.clock
        for node, counter in timestamp.items():
            if counter > clock.get(node, 0):
                clock[node] = counter
                self._clock_touched[node] = now
        self._prune_clock()

    def _prune_clock(self) -> None:
        limit = min(self.config.max_clock_entries, MAX_CLOCK)
        if len(self.clock) <= limit:
            return
        by_age = sorted(self._clock_touched.items(), key=lambda kv: kv[1])
        for node, _ in by_age[: len(self.clock) - limit]:
            del self.clock[node]
            del self._clock_touched[node]


def rounds_bound(n: int) -> float:
    """The push-gossip bound the issue compares against: log2(N) + ln(N)."""
    return math.log2(n) + math.log(n)
