"""One overlay node: a membership core with broadcast, routing and gossip on top, as one sans-IO core.

:class:`OverlayNode` is what a driver runs per process. It owns

- a membership core chosen by the config (:class:`HyParView` by default, or
  :class:`ClientServer` / :class:`TreeOverlay`),
- :class:`Plumtree` broadcast over the membership neighbours,
- a :class:`Router` for point-to-point messages to non-neighbours,
- optionally a :class:`Gossip` core whose peers are the membership neighbours.

Messages are dispatched by type and timers by the first element of their key (each core
names its keys ``("hyparview", ...)``, ``("plumtree", ...)`` and so on). The
membership's :class:`NeighborUp` / :class:`NeighborDown` events are fed to the other
cores first, then returned to the driver like every other effect, so users can watch
the overlay.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable
from typing import Any

from .._errors import LocalProtocolError
from ._client_server import ClientServer
from ._config import (
    ClientServerConfig,
    GossipConfig,
    HyParViewConfig,
    MembershipConfig,
    PlumtreeConfig,
    RoutingConfig,
    TreeConfig,
)
from ._events import NeighborDown, NeighborUp
from ._gossip import Gossip
from ._hyparview import HyParView
from ._messages import (
    CLIENT_SERVER_MESSAGES,
    GOSSIP_MESSAGES,
    HYPARVIEW_MESSAGES,
    PLUMTREE_MESSAGES,
    ROUTING_MESSAGES,
    TREE_MESSAGES,
    MessageId,
    NodeId,
)
from ._plumtree import Plumtree
from ._routing import Router
from ._tree import TreeOverlay

Membership = HyParView | ClientServer | TreeOverlay


def make_membership(node_id: NodeId, config: MembershipConfig, rng: random.Random) -> Membership:
    """The membership core for ``config`` (from :func:`configure_overlay`)."""
    if isinstance(config, HyParViewConfig):
        return HyParView(node_id, config, rng=rng)
    if isinstance(config, ClientServerConfig):
        return ClientServer(node_id, config, rng=rng)
    if isinstance(config, TreeConfig):
        return TreeOverlay(node_id, config, rng=rng)
    raise TypeError(f"not an overlay config: {config!r}")


class OverlayNode:
    """Membership + Plumtree + routing (+ gossip) for one node; see the module docstring.

    ``broadcast`` / ``routing`` may be None to leave that part out; ``gossip`` is off
    unless given. All randomness comes from ``rng``.
    """

    def __init__(
        self,
        node_id: NodeId,
        overlay: MembershipConfig | None = None,
        *,
        rng: random.Random,
        broadcast: PlumtreeConfig | None = PlumtreeConfig(),
        routing: RoutingConfig | None = RoutingConfig(),
        gossip: GossipConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.overlay_config = overlay if overlay is not None else HyParViewConfig()
        self.rng = rng
        self.membership: Membership = make_membership(node_id, self.overlay_config, rng)
        fanout = self.overlay_config.fanout if isinstance(self.overlay_config, HyParViewConfig) else None
        self.plumtree = Plumtree(node_id, broadcast, rng=rng, fanout=fanout) if broadcast is not None else None
        tree_peers = (lambda: self.plumtree.eager) if self.plumtree is not None else None  # type: ignore[union-attr]
        self.router = Router(node_id, routing, rng=rng, tree_peers=tree_peers) if routing is not None else None
        self.gossip = Gossip(node_id, gossip, rng=rng) if gossip is not None else None
        self._by_type: dict[type[Any], Any] = {}
        for types, core in (
            (HYPARVIEW_MESSAGES + CLIENT_SERVER_MESSAGES + TREE_MESSAGES, self.membership),
            (PLUMTREE_MESSAGES, self.plumtree),
            (ROUTING_MESSAGES, self.router),
            (GOSSIP_MESSAGES, self.gossip),
        ):
            if core is not None:
                for t in types:
                    self._by_type[t] = core
        self._by_timer: dict[str, Any] = {
            "hyparview": self.membership,
            "client_server": self.membership,
            "tree": self.membership,
        }
        if self.plumtree is not None:
            self._by_timer["plumtree"] = self.plumtree
        if self.router is not None:
            self._by_timer["routing"] = self.router
        if self.gossip is not None:
            self._by_timer["gossip"] = self.gossip
        self.left = False

    # -- queries ---------------------------------------------------------------------------

    def members(self) -> list[NodeId]:
        """The overlay neighbours (HyParView: the active view)."""
        return self.membership.neighbors()

    def neighbors(self) -> list[NodeId]:
        return self.membership.neighbors()

    # -- commands --------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        out = self.membership.start(now)
        if self.gossip is not None:
            out += self.gossip.start(now)
        return self._process(out, now)

    def join(self, contacts: Iterable[NodeId], now: float) -> list[Any]:
        self.left = False
        return self._process(self.membership.join(contacts, now), now)

    def leave(self, now: float) -> list[Any]:
        out = self._process(self.membership.leave(now), now)
        self.left = True
        return out

    def link_failed(self, peer: NodeId, now: float) -> list[Any]:
        """The driver lost, or could not open, the connection to ``peer``."""
        return self._process(self.membership.link_failed(peer, now), now)

    def broadcast(self, payload: bytes, now: float, *, message_id: MessageId | None = None) -> list[Any]:
        """Plumtree-broadcast ``payload`` to every node; the first effect is the local Deliver."""
        if self.plumtree is None:
            raise LocalProtocolError("this node runs without broadcast")
        self._check_member()
        return self.plumtree.broadcast(payload, now, message_id=message_id)

    def send_to(self, target: NodeId, payload: bytes, now: float, *, message_id: MessageId | None = None) -> list[Any]:
        """Send ``payload`` to ``target`` over the overlay (see the routing scheme)."""
        if self.router is None:
            raise LocalProtocolError("this node runs without routing")
        self._check_member()
        return self.router.send_to(target, payload, now, message_id=message_id)

    def gossip_message(self, payload: bytes, now: float, **opts: Any) -> list[Any]:
        """Originate a gossip message (the design's ``gossip_message``)."""
        if self.gossip is None:
            raise LocalProtocolError("this node runs without gossip")
        self._check_member()
        return self.gossip.gossip_message(payload, now, **opts)

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        core = self._by_type.get(type(message))
        if core is None or (self.left and core is not self.membership):
            return []
        return self._process(core.receive(sender, message, now), now)

    def timer(self, key: Hashable, now: float) -> list[Any]:
        core = self._by_timer.get(key[0]) if isinstance(key, tuple) and key else None
        if core is None or (self.left and core is not self.membership):
            return []
        return self._process(core.timer(key, now), now)

    # -- internals -------------------------------------------------------------------------

    def _check_member(self) -> None:
        if self.left:
            raise LocalProtocolError("this node has left the overlay")

    def _process(self, effects: list[Any], now: float) -> list[Any]:
        extra: list[Any] = []
        for effect in effects:
            kind = type(effect)
            if kind is NeighborUp:
                peer = effect.peer
                if self.plumtree is not None:
                    extra += self.plumtree.neighbor_up(peer, now)
                if self.router is not None:
                    extra += self.router.neighbor_up(peer, now)
                if self.gossip is not None:
                    extra += self.gossip.peer_up(peer, now)
            elif kind is NeighborDown:
                peer = effect.peer
                if self.plumtree is not None:
                    extra += self.plumtree.neighbor_down(peer, now)
                if self.router is not None:
                    extra += self.router.neighbor_down(peer, now)
                if self.gossip is not None:
                    extra += self.gossip.peer_down(peer, now)
        if extra:
            effects = effects + extra
        return effects
