"""Large-scale overlays as sans-IO cores: HyParView, Plumtree, gossip, client_server and tree.

Every core is a plain state machine in the shape of :mod:`phoenix_trio.effects`:
``receive(sender, message, now)``, ``timer(key, now)`` and commands (``join``,
``broadcast``, ``leave`` ...) return lists of effects (``Send``, ``SetTimer``,
``CancelTimer`` and the overlay events below). No I/O, no clock reads, randomness only
from the ``random.Random`` passed in. :class:`OverlayNode` composes a membership core with
Plumtree broadcast, point-to-point routing and optionally gossip; it is what a driver
runs per process. :class:`SimNetwork` runs any of them on :mod:`phoenix_trio.sim` as if
they were connected by TCP. Protocol messages are frozen attrs records with a tagged
msgpack codec (:func:`encode` / :func:`decode`).

Quick tour::

    import random
    from phoenix_trio.overlay import OverlayNode, SimNetwork, configure_overlay

    net = SimNetwork(seed=1)
    config = configure_overlay("hyparview")          # fanout 6, active 6, passive 30
    for i in range(50):
        net.add(f"n{i}", OverlayNode(f"n{i}", config, rng=random.Random(i)))
    for i in range(1, 50):
        net.call(f"n{i}", lambda now, n=net.node(f"n{i}"): n.join(["n0"], now))
    net.run(10.0)
    net.call("n7", lambda now: net.node("n7").broadcast(b"hello", now))
    net.run(11.0)                                    # every node got a Deliver event

See ``docs/overlay.md`` for the protocols, their defaults and the measured figures.
"""

from ._cache import BoundedCache as BoundedCache
from ._client_server import ClientServer as ClientServer
from ._codec import MESSAGE_TYPES as MESSAGE_TYPES
from ._codec import decode as decode
from ._codec import encode as encode
from ._config import ClientServerConfig as ClientServerConfig
from ._config import GossipConfig as GossipConfig
from ._config import HyParViewConfig as HyParViewConfig
from ._config import MembershipConfig as MembershipConfig
from ._config import PlumtreeConfig as PlumtreeConfig
from ._config import RoutingConfig as RoutingConfig
from ._config import TreeConfig as TreeConfig
from ._config import configure_overlay as configure_overlay
from ._config import start_gossip_protocol as start_gossip_protocol
from ._events import CloseLink as CloseLink
from ._events import Deliver as Deliver
from ._events import DirectDeliver as DirectDeliver
from ._events import GossipDeliver as GossipDeliver
from ._events import JoinFailed as JoinFailed
from ._events import NeighborDown as NeighborDown
from ._events import NeighborUp as NeighborUp
from ._events import RouteFailed as RouteFailed
from ._gossip import Gossip as Gossip
from ._gossip import rounds_bound as rounds_bound
from ._hyparview import HyParView as HyParView
from ._messages import ClientHello as ClientHello
from ._messages import Disconnect as Disconnect
from ._messages import DisconnectAck as DisconnectAck
from ._messages import EagerPush as EagerPush
from ._messages import ForwardJoin as ForwardJoin
from ._messages import GossipDigest as GossipDigest
from ._messages import GossipEnvelope as GossipEnvelope
from ._messages import GossipPush as GossipPush
from ._messages import GossipRequest as GossipRequest
from ._messages import Goodbye as Goodbye
from ._messages import Graft as Graft
from ._messages import HelloReply as HelloReply
from ._messages import IHave as IHave
from ._messages import Join as Join
from ._messages import Neighbor as Neighbor
from ._messages import NeighborReply as NeighborReply
from ._messages import Prune as Prune
from ._messages import RouteError as RouteError
from ._messages import RouteReply as RouteReply
from ._messages import RouteRequest as RouteRequest
from ._messages import Routed as Routed
from ._messages import ServerHello as ServerHello
from ._messages import Shuffle as Shuffle
from ._messages import ShuffleReply as ShuffleReply
from ._messages import TreeAdopt as TreeAdopt
from ._messages import TreeInfo as TreeInfo
from ._messages import TreeJoin as TreeJoin
from ._messages import TreeLeave as TreeLeave
from ._messages import TreePath as TreePath
from ._messages import TreeReject as TreeReject
from ._messages import Welcome as Welcome
from ._messages import WelcomeAck as WelcomeAck
from ._node import OverlayNode as OverlayNode
from ._node import make_membership as make_membership
from ._plumtree import Plumtree as Plumtree
from ._routing import Router as Router
from ._simnet import SimNetwork as SimNetwork
from ._tree import TreeOverlay as TreeOverlay
