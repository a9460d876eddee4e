"""Every protocol message the overlay cores exchange, as frozen attrs records.

Node ids are strings (``"host:port"`` or any name, at most :data:`MAX_NODE_ID` characters);
message ids are short byte strings (at most :data:`MAX_MESSAGE_ID` bytes); payloads are
bytes. Sizes that come off the network are bounded by the constants below, which
:mod:`._codec` enforces on decode, so a peer cannot make a node hold more than the bounds
allow. The cores never send anything that breaks these bounds either.

Group by protocol:

- HyParView membership: :class:`Join`, :class:`ForwardJoin`, :class:`Welcome`,
  :class:`WelcomeAck`, :class:`Neighbor`, :class:`NeighborReply`, :class:`Disconnect`, :class:`DisconnectAck`,
  :class:`Shuffle`,
  :class:`ShuffleReply`.
- Plumtree broadcast: :class:`EagerPush`, :class:`IHave`, :class:`Graft`, :class:`Prune`.
- Gossip pattern: :class:`GossipEnvelope` (inside :class:`GossipPush`),
  :class:`GossipDigest`, :class:`GossipRequest`.
- client_server overlay: :class:`ServerHello`, :class:`ClientHello`, :class:`HelloReply`,
  :class:`Goodbye`.
- tree overlay: :class:`TreeJoin`, :class:`TreeAdopt`, :class:`TreeReject`,
  :class:`TreePath`, :class:`TreeInfo`, :class:`TreeLeave`.
- point-to-point routing: :class:`RouteRequest`, :class:`RouteReply`, :class:`Routed`,
  :class:`RouteError`.
"""

from __future__ import annotations

from typing import Any

import attrs

MAX_NODE_ID = 255
"""Longest node id, in characters."""
MAX_MESSAGE_ID = 64
"""Longest message id, in bytes."""
MAX_PAYLOAD = 8 * 1024 * 1024
"""Largest payload a message may carry, in bytes."""
MAX_VIEW = 256
"""Most node ids in one view sample, shuffle list or peer list."""
MAX_IDS = 4096
"""Most message ids in one IHAVE, digest or request."""
MAX_BATCH = 1024
"""Most gossip envelopes in one push."""
MAX_PATH = 64
"""Most hops in a route."""
MAX_CLOCK = 1024
"""Most entries in a vector clock."""
MAX_COUNTER = 2**53
"""Largest counter, round, hop or ttl value (fits a float exactly, as JSON peers need)."""

NodeId = str
MessageId = bytes


# -- HyParView --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Join:
    """Sent by a new node to its contact: please let me into the overlay."""


@attrs.frozen(slots=True)
class ForwardJoin:
    """A random walk announcing ``new_node``; ``ttl`` hops remain (ARWL at the start)."""

    new_node: NodeId
    ttl: int


@attrs.frozen(slots=True)
class Welcome:
    """"I put you in my active view": the receiver adds the sender, dropping one if full.

    Sent by a contact to a joiner and by the end of a FORWARD_JOIN walk. ``sample`` is a
    few random ids from the sender's views, which seed the joiner's passive view.
    """

    sample: tuple[NodeId, ...] = ()


@attrs.frozen(slots=True)
class WelcomeAck:
    """The receiver of a :class:`Welcome` has the sender in its active view now.

    Lets the WELCOME's sender notice a DISCONNECT that crossed it: an acknowledgement
    for a link the sender no longer holds is answered with DISCONNECT.
    """


@attrs.frozen(slots=True)
class Neighbor:
    """Request to enter the receiver's active view. High priority must be accepted."""

    high_priority: bool


@attrs.frozen(slots=True)
class NeighborReply:
    """Answer to :class:`Neighbor`; on ``accepted`` the sender has added the receiver."""

    accepted: bool


@attrs.frozen(slots=True)
class Disconnect:
    """The sender dropped the receiver from its active view; ``leaving``: it left the overlay."""

    leaving: bool = False


@attrs.frozen(slots=True)
class DisconnectAck:
    """Answer to a non-leaving :class:`Disconnect`.

    Until it arrives, the DISCONNECT's sender ignores WELCOMEs and acceptances from the
    peer: under per-link order they were sent before the peer saw the DISCONNECT, which
    will undo them at the peer.
    """


@attrs.frozen(slots=True)
class Shuffle:
    """A random walk carrying a sample of ``origin``'s views, to refresh passive views."""

    origin: NodeId
    nodes: tuple[NodeId, ...]
    ttl: int


@attrs.frozen(slots=True)
class ShuffleReply:
    """The end of a shuffle walk answers the origin with a sample of its passive view."""

    nodes: tuple[NodeId, ...]


# -- Plumtree ---------------------------------------------------------------------------


@attrs.frozen(slots=True)
class EagerPush:
    """A broadcast payload pushed along the tree; ``round`` is its hop count from ``origin``."""

    message_id: MessageId
    origin: NodeId
    round: int
    payload: bytes


@attrs.frozen(slots=True)
class IHave:
    """Lazy announcements, batched per round: ``(message_id, round)`` pairs."""

    entries: tuple[tuple[MessageId, int], ...]


@attrs.frozen(slots=True)
class Graft:
    """Make the link eager again and, if ``message_id`` is set, send that message."""

    message_id: MessageId | None
    round: int = 0


@attrs.frozen(slots=True)
class Prune:
    """Make the link lazy: the receiver got a duplicate through it."""


# -- Gossip pattern ---------------------------------------------------------------------


@attrs.frozen(slots=True)
class GossipEnvelope:
    """The design's ``gossip_message`` envelope.

    ``ttl_ms`` is the remaining lifetime in milliseconds (each holder subtracts the time it
    kept the message before passing it on, so no clock synchronisation is needed);
    ``timestamp`` is the origin's vector clock, node id -> counter.
    """

    id: MessageId
    payload: bytes
    ttl_ms: int
    hop_count: int
    origin_node: NodeId
    timestamp: dict[NodeId, int] = attrs.field(factory=dict, hash=False)


@attrs.frozen(slots=True)
class GossipPush:
    """One round's push (or an anti-entropy answer): a batch of envelopes."""

    envelopes: tuple[GossipEnvelope, ...]


@attrs.frozen(slots=True)
class GossipDigest:
    """Anti-entropy: the ids of the messages the sender holds (its most recent ones)."""

    ids: tuple[MessageId, ...]


@attrs.frozen(slots=True)
class GossipRequest:
    """Anti-entropy: please send these messages."""

    ids: tuple[MessageId, ...]


# -- client_server ----------------------------------------------------------------------


@attrs.frozen(slots=True)
class ServerHello:
    """A server greets another server (the servers form a full mesh)."""


@attrs.frozen(slots=True)
class ClientHello:
    """A client asks a server to take it."""


@attrs.frozen(slots=True)
class HelloReply:
    """Answer to :class:`ServerHello` or :class:`ClientHello`."""

    accepted: bool


@attrs.frozen(slots=True)
class Goodbye:
    """The sender closes its link to the receiver (leaving, or a client moving server)."""


# -- tree -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class TreeJoin:
    """Place ``joiner`` (with a subtree ``height`` levels deep below it) in the tree.

    Walks down from the contact to a node with room; ``hops`` bounds the walk.
    """

    joiner: NodeId
    height: int
    hops: int = 0


@attrs.frozen(slots=True)
class TreeAdopt:
    """The sender is now the receiver's parent; ``path`` runs from the root to the sender."""

    path: tuple[NodeId, ...]


@attrs.frozen(slots=True)
class TreeReject:
    """No place for the joiner (the tree is full at ``max_depth``, or the sender is below it)."""

    reason: str


@attrs.frozen(slots=True)
class TreePath:
    """Parent to child: your ancestors changed; ``path`` runs from the root to the sender."""

    path: tuple[NodeId, ...]


@attrs.frozen(slots=True)
class TreeInfo:
    """Child to parent: my subtree is ``height`` levels deep and holds ``size`` nodes."""

    height: int
    size: int


@attrs.frozen(slots=True)
class TreeLeave:
    """The sender cuts its tree link with the receiver (it leaves, or re-parents)."""


# -- routing ----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class RouteRequest:
    """Route discovery: who can reach ``target``? ``path`` is the walk so far.

    ``flood`` False: forwarded only on broadcast-tree (eager) links, about N - 1 messages;
    True: on every neighbour link.
    """

    request_id: MessageId
    target: NodeId
    path: tuple[NodeId, ...]
    flood: bool = False


@attrs.frozen(slots=True)
class RouteReply:
    """The route ``path`` (origin ... target), travelling back; ``hop`` indexes the holder."""

    request_id: MessageId
    path: tuple[NodeId, ...]
    hop: int


@attrs.frozen(slots=True)
class Routed:
    """A point-to-point payload on the source route ``path``; ``hop`` indexes the holder."""

    message_id: MessageId
    path: tuple[NodeId, ...]
    hop: int
    payload: bytes
    attempt: int = 0


@attrs.frozen(slots=True)
class RouteError:
    """A hop could not forward a :class:`Routed`; the payload travels back to the origin.

    ``path`` is the original route, ``hop`` indexes the current holder on the way back.
    """

    message_id: MessageId
    path: tuple[NodeId, ...]
    hop: int
    payload: bytes
    attempt: int = 0


HYPARVIEW_MESSAGES: tuple[type[Any], ...] = (
    Join,
    ForwardJoin,
    Welcome,
    WelcomeAck,
    Neighbor,
    NeighborReply,
    Disconnect,
    DisconnectAck,
    Shuffle,
    ShuffleReply,
)
PLUMTREE_MESSAGES: tuple[type[Any], ...] = (EagerPush, IHave, Graft, Prune)
GOSSIP_MESSAGES: tuple[type[Any], ...] = (GossipPush, GossipDigest, GossipRequest)
CLIENT_SERVER_MESSAGES: tuple[type[Any], ...] = (ServerHello, ClientHello, HelloReply, Goodbye)
TREE_MESSAGES: tuple[type[Any], ...] = (TreeJoin, TreeAdopt, TreeReject, TreePath, TreeInfo, TreeLeave)
ROUTING_MESSAGES: tuple[type[Any], ...] = (RouteRequest, RouteReply, Routed, RouteError)
