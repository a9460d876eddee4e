"""Point-to-point routing to nodes that are not neighbours, by a scheme that cannot loop.

Scheme (on-demand source routing, as in DSR, over whatever neighbours the membership
reports):

1. *Discovery.* The sender floods a :class:`RouteRequest` carrying the path walked so
   far. The first attempt goes only along the broadcast tree's eager links (the
   Plumtree spanning tree: about N - 1 messages); later attempts use every neighbour
   link. Each node forwards a given request id at most once (a bounded seen-cache),
   never to a node already on the path, and not past ``max_hops``.
2. *Reply.* The target sends a :class:`RouteReply` with the full path back along it,
   hop by hop; the sender caches the route (bounded by count and age). The target
   caches the reverse route, so answers need no discovery.
3. *Data.* A :class:`Routed` message carries the whole path and the index of the node
   holding it; each hop forwards to the next entry if that is still a neighbour.
   Otherwise it returns the payload to the sender in a :class:`RouteError` along the
   path it came; the sender drops the route, rediscovers and re-sends, at most
   ``max_reroutes`` times, then reports :class:`~phoenix_trio.overlay.RouteFailed`.

Why it cannot loop: a path is a list of distinct node ids of bounded length (checked on
decode too); data, replies and errors only move the hop index one step forward (data) or
backward (reply, error), so each makes at most ``len(path) - 1`` transmissions; discovery
messages are deduplicated per node and bounded by ``max_hops``; re-sends are bounded by
``max_reroutes`` and ``discovery_attempts``. Why not along the broadcast tree itself:
the tree has no addresses (finding the branch that leads to a node would need every node
to announce itself by broadcast), and it changes as links are pruned and grafted; a
discovered source route is checked hop by hop and repaired on demand instead.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import attrs

from ..effects import CancelTimer, Send, SetTimer
from ._cache import BoundedCache
from ._config import RoutingConfig
from ._events import DirectDeliver, RouteFailed
from . import _checks as checks
from ._messages import MessageId, NodeId, RouteError, RouteReply, RouteRequest, Routed

_log = logging.getLogger(__name__)

_DISCOVER = "discover"


@attrs.define
class RoutingStats:
    """Counters for observability and tests."""

    sent: int = 0
    delivered: int = 0
    forwarded: int = 0
    discoveries: int = 0
    requests_forwarded: int = 0
    route_errors: int = 0
    reroutes: int = 0
    failed: int = 0


class Router:
    """One node's router; see the module docstring.

    ``tree_peers`` returns the broadcast tree's eager links (the first discovery attempt
    uses them); without it every attempt floods all neighbours.
    """

    def __init__(
        self,
        node_id: NodeId,
        config: RoutingConfig | None = None,
        *,
        rng: random.Random,
        tree_peers: Callable[[], Iterable[NodeId]] | None = None,
    ) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config if config is not None else RoutingConfig()
        self.rng = rng
        self.tree_peers = tree_peers
        self.neighbors: dict[NodeId, None] = {}
        cfg = self.config
        self._routes: BoundedCache[tuple[NodeId, ...]] = BoundedCache(cfg.route_cache_size)
        self._seen_requests: BoundedCache[None] = BoundedCache(max(1024, cfg.route_cache_size * 4))
        self._pending: dict[NodeId, list[tuple[MessageId, bytes, int]]] = {}
        self._discovery: dict[NodeId, tuple[MessageId, int]] = {}
        self.stats = RoutingStats()

    # -- membership input ------------------------------------------------------------------

    def neighbor_up(self, peer: NodeId, now: float) -> list[Any]:
        if peer != self.node_id:
            self.neighbors[peer] = None
        return []

    def neighbor_down(self, peer: NodeId, now: float) -> list[Any]:
        self.neighbors.pop(peer, None)
        for target, path in list(self._routes.items(now)):
            if path[1] == peer:
                self._routes.pop(target)
        return []

    def route(self, target: NodeId, now: float) -> tuple[NodeId, ...] | None:
        """The cached route to ``target`` (this node first), if any."""
        if target in self.neighbors:
            return (self.node_id, target)
        return self._routes.get(target, now)

    # -- commands --------------------------------------------------------------------------

    def send_to(self, target: NodeId, payload: bytes, now: float, *, message_id: MessageId | None = None) -> list[Any]:
        """Send ``payload`` to ``target`` over the overlay (directly if it is a neighbour)."""
        mid = self.rng.randbytes(16) if message_id is None else checks.message_id(message_id)
        checks.payload(payload)
        checks.node_ids([target], "target")
        self.stats.sent += 1
        out: list[Any] = []
        self._send(target, mid, payload, 0, now, out)
        return out

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        kind = type(message)
        if kind is Routed:
            self._on_routed(sender, message, now, out)
        elif kind is RouteRequest:
            self._on_request(sender, message, now, out)
        elif kind is RouteReply:
            self._on_reply(sender, message, now, out)
        elif kind is RouteError:
            self._on_error(sender, message, now, out)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        if isinstance(key, tuple) and len(key) == 3 and key[1] == _DISCOVER:
            target = key[2]
            state = self._discovery.get(target)
            if state is None:
                return out
            _, attempt = state
            if attempt + 1 < self.config.discovery_attempts:
                self._discover(target, attempt + 1, now, out)
            else:
                del self._discovery[target]
                self._fail_pending(target, "no route found", out)
        return out

    # -- internals -------------------------------------------------------------------------

    def _send(self, target: NodeId, mid: MessageId, payload: bytes, attempt: int, now: float, out: list[Any]) -> None:
        if target == self.node_id:
            self.stats.delivered += 1
            out.append(DirectDeliver(mid, self.node_id, payload, 0))
            return
        path = self.route(target, now)
        if path is not None and path[1] in self.neighbors:
            out.append(Send(path[1], Routed(mid, path, 1, payload, attempt)))
            return
        if path is not None:
            self._routes.pop(target)
        queue = self._pending.get(target)
        if queue is None:
            if len(self._pending) >= self.config.route_cache_size:
                self.stats.failed += 1
                out.append(RouteFailed(mid, target, payload, "too many destinations awaiting a route"))
                return
            queue = self._pending[target] = []
        if len(queue) >= self.config.max_pending:
            self.stats.failed += 1
            out.append(RouteFailed(mid, target, payload, "too many payloads awaiting a route"))
            return
        queue.append((mid, payload, attempt))
        if target not in self._discovery:
            self._discover(target, 0, now, out)

    def _discover(self, target: NodeId, attempt: int, now: float, out: list[Any]) -> None:
        rid = self.rng.randbytes(12)
        self._discovery[target] = (rid, attempt)
        self.stats.discoveries += 1
        self._seen_requests.put(rid, None, now + self.config.route_ttl, now)
        flood = attempt > 0 or self.tree_peers is None
        peers = list(self.neighbors) if flood else [p for p in self.tree_peers() if p in self.neighbors]  # type: ignore[misc]
        if not peers:
            flood, peers = True, list(self.neighbors)
        request = RouteRequest(rid, target, (self.node_id,), flood)
        for peer in ([target] if target in self.neighbors else peers):
            out.append(Send(peer, request))
        out.append(SetTimer(("routing", _DISCOVER, target), now + self.config.discovery_timeout))

    def _on_request(self, sender: NodeId, msg: RouteRequest, now: float, out: list[Any]) -> None:
        if (
            not msg.path
            or msg.path[-1] != sender  # the walk must come from the node that sent it
            or self.node_id in msg.path
            or self._seen_requests.contains(msg.request_id, now)
        ):
            return
        self._seen_requests.put(msg.request_id, None, now + self.config.route_ttl, now)
        path = (*msg.path, self.node_id)
        if msg.target == self.node_id:
            self._routes.put(path[0], tuple(reversed(path)), now + self.config.route_ttl, now)
            out.append(Send(sender, RouteReply(msg.request_id, path, len(path) - 2)))
            return
        if len(path) >= self.config.max_hops + 1:  # the target would be one hop too far
            return
        if msg.target in self.neighbors:
            peers = [msg.target]
        elif msg.flood or self.tree_peers is None:
            peers = [p for p in self.neighbors if p not in path]
        else:
            peers = [p for p in self.tree_peers() if p in self.neighbors and p not in path]
        forward = RouteRequest(msg.request_id, msg.target, path, msg.flood)
        for peer in peers:
            self.stats.requests_forwarded += 1
            out.append(Send(peer, forward))

    def _on_reply(self, sender: NodeId, msg: RouteReply, now: float, out: list[Any]) -> None:
        path, hop = msg.path, msg.hop
        if hop + 1 >= len(path) or path[hop] != self.node_id or path[hop + 1] != sender:
            return
        if hop > 0:
            prev = path[hop - 1]
            if prev in self.neighbors:
                out.append(Send(prev, RouteReply(msg.request_id, path, hop - 1)))
            return
        target = path[-1]
        self._routes.put(target, path, now + self.config.route_ttl, now)
        if target in self._discovery:
            del self._discovery[target]
            out.append(CancelTimer(("routing", _DISCOVER, target)))
        for mid, payload, attempt in self._pending.pop(target, []):
            self._send(target, mid, payload, attempt, now, out)

    def _on_routed(self, sender: NodeId, msg: Routed, now: float, out: list[Any]) -> None:
        path, hop = msg.path, msg.hop
        if hop >= len(path) or path[hop] != self.node_id or hop == 0 or path[hop - 1] != sender:
            _log.debug("%s: misrouted message from %s dropped", self.node_id, sender)
            return
        if hop == len(path) - 1:
            self.stats.delivered += 1
            if len(path) > 2 and path[-2] in self.neighbors:
                self._routes.put(path[0], tuple(reversed(path)), now + self.config.route_ttl, now)
            out.append(DirectDeliver(msg.message_id, path[0], msg.payload, hop))
            return
        nxt = path[hop + 1]
        if nxt in self.neighbors:
            self.stats.forwarded += 1
            out.append(Send(nxt, Routed(msg.message_id, path, hop + 1, msg.payload, msg.attempt)))
            return
        self.stats.route_errors += 1
        out.append(Send(sender, RouteError(msg.message_id, path, hop - 1, msg.payload, msg.attempt)))

    def _on_error(self, sender: NodeId, msg: RouteError, now: float, out: list[Any]) -> None:
        path, hop = msg.path, msg.hop
        if hop + 1 >= len(path) or path[hop] != self.node_id or path[hop + 1] != sender:
            return
        if hop > 0:
            prev = path[hop - 1]
            if prev in self.neighbors:
                out.append(Send(prev, RouteError(msg.message_id, path, hop - 1, msg.payload, msg.attempt)))
            return
        target = path[-1]
        if self._routes.get(target, now) == path:
            self._routes.pop(target)
        if msg.attempt < self.config.max_reroutes:
            self.stats.reroutes += 1
            self._send(target, msg.message_id, msg.payload, msg.attempt + 1, now, out)
        else:
            self.stats.failed += 1
            out.append(RouteFailed(msg.message_id, target, msg.payload, "route broke too often"))

    def _fail_pending(self, target: NodeId, reason: str, out: list[Any]) -> None:
        for mid, payload, _ in self._pending.pop(target, []):
            self.stats.failed += 1
            out.append(RouteFailed(mid, target, payload, reason))
