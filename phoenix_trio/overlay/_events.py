"""The overlay's own effects: membership events users can watch, deliveries, link hints.

The cores return these next to :class:`~phoenix_trio.effects.Send`,
:class:`~phoenix_trio.effects.SetTimer` and :class:`~phoenix_trio.effects.CancelTimer`.
A driver handles them in order:

- :class:`NeighborUp` / :class:`NeighborDown`: the overlay membership changed; the node
  composition feeds them to broadcast, routing and gossip, then passes them on so users
  can watch the overlay.
- :class:`CloseLink`: the membership no longer needs the connection to ``peer``. The
  driver closes it *after* writing everything queued to that peer before this effect, so
  a message sent just before a link is demoted is not lost (a Partisan complaint).
- :class:`Deliver`, :class:`GossipDeliver`, :class:`DirectDeliver`: a message for the
  application.
- :class:`RouteFailed`: a point-to-point payload could not be routed.
- :class:`JoinFailed`: no contact could be reached, or the overlay refused this node.
"""

from __future__ import annotations

import attrs

from ._messages import GossipEnvelope, MessageId, NodeId


@attrs.frozen(slots=True)
class NeighborUp:
    """``peer`` entered this node's overlay neighbourhood (active view, tree or server link)."""

    peer: NodeId


@attrs.frozen(slots=True)
class NeighborDown:
    """``peer`` left this node's neighbourhood. ``reason``: "failed", "disconnected", "left", "replaced"."""

    peer: NodeId
    reason: str


@attrs.frozen(slots=True)
class CloseLink:
    """Close the connection to ``peer`` once everything queued for it before now is written."""

    peer: NodeId


@attrs.frozen(slots=True)
class Deliver:
    """A Plumtree broadcast reached this node (the origin delivers its own, with ``round`` 0)."""

    message_id: MessageId
    origin: NodeId
    round: int
    payload: bytes


@attrs.frozen(slots=True)
class GossipDeliver:
    """A gossip message reached this node for the first time (``handle_gossip_reception``)."""

    envelope: GossipEnvelope


@attrs.frozen(slots=True)
class DirectDeliver:
    """A point-to-point payload from ``origin`` arrived after ``hops`` overlay hops."""

    message_id: MessageId
    origin: NodeId
    payload: bytes
    hops: int


@attrs.frozen(slots=True)
class RouteFailed:
    """The payload for ``target`` could not be delivered: no route within the hop bound."""

    message_id: MessageId
    target: NodeId
    payload: bytes
    reason: str


@attrs.frozen(slots=True)
class JoinFailed:
    """Joining failed: ``reason`` says why (no contact reachable, tree full, ...)."""

    reason: str
