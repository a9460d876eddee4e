"""The public surface of phoenix_trio.overlay: explicit re-exports, each documented."""

from __future__ import annotations

import inspect
import random

import phoenix_trio.overlay as overlay
from phoenix_trio.effects import SetTimer
from phoenix_trio.overlay import (
    Deliver,
    EagerPush,
    GossipConfig,
    GossipDeliver,
    NeighborDown,
    NeighborUp,
    OverlayNode,
    Welcome,
    WelcomeAck,
)

EXPECTED = {
    # cores and composition
    "HyParView", "Plumtree", "Gossip", "ClientServer", "TreeOverlay", "Router", "OverlayNode",
    "make_membership", "SimNetwork", "BoundedCache",
    # configuration
    "configure_overlay", "start_gossip_protocol", "HyParViewConfig", "PlumtreeConfig", "GossipConfig",
    "ClientServerConfig", "TreeConfig", "RoutingConfig", "MembershipConfig", "rounds_bound",
    # events
    "NeighborUp", "NeighborDown", "CloseLink", "Deliver", "GossipDeliver", "DirectDeliver", "RouteFailed",
    "JoinFailed",
    # codec
    "encode", "decode", "MESSAGE_TYPES",
    # messages
    "Join", "ForwardJoin", "Welcome", "WelcomeAck", "Neighbor", "NeighborReply", "Disconnect",
    "DisconnectAck", "Shuffle", "ShuffleReply", "EagerPush", "IHave", "Graft", "Prune", "GossipEnvelope",
    "GossipPush", "GossipDigest", "GossipRequest", "ServerHello", "ClientHello", "HelloReply", "Goodbye",
    "TreeJoin", "TreeAdopt", "TreeReject", "TreePath", "TreeInfo", "TreeLeave", "RouteRequest",
    "RouteReply", "Routed", "RouteError",
}  # fmt: skip


def test_public_names_are_exactly_the_documented_ones() -> None:
    public = {name for name in vars(overlay) if not name.startswith("_")}
    assert public == EXPECTED
    for name in EXPECTED:
        obj = getattr(overlay, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
            assert obj.__module__.startswith("phoenix_trio.overlay._")
    for message in overlay.MESSAGE_TYPES:
        assert getattr(overlay, message.__name__) is message


def test_overlay_node_feeds_membership_events_to_the_other_cores() -> None:
    node = OverlayNode("me", rng=random.Random(0), gossip=GossipConfig())
    out = node.start(0.0)
    assert {e.key[0] for e in out if type(e) is SetTimer} == {"hyparview", "gossip"}
    out = node.receive("a", Welcome(()), 0.1)
    assert NeighborUp("a") in out and "a" in node.plumtree.eager and "a" in node.router.neighbors
    assert "a" in node.gossip.peers and node.members() == ["a"]
    assert node.receive("a", WelcomeAck(), 0.1) == []
    out = node.receive("a", EagerPush(b"m", "o", 1, b"x"), 0.2)
    assert Deliver(b"m", "o", 1, b"x") in out
    out = node.gossip_message(b"g", 0.3)
    assert type(out[0]) is GossipDeliver
    out = node.leave(0.4)
    assert NeighborDown("a", "left") in out and not node.plumtree.eager and not node.gossip.peers
    assert node.receive("a", EagerPush(b"n", "o", 1, b"x"), 0.5) == []
    assert node.timer(("gossip", "round"), 1.0) == []


def test_the_quick_tour_in_the_package_docstring_runs() -> None:
    doc = overlay.__doc__ or ""
    lines = []
    for line in doc.split("Quick tour::", 1)[1].splitlines()[1:]:
        if line and not line.startswith("    "):
            break  # the indented block ends
        lines.append(line[4:])
    code = "\n".join(lines)
    scope: dict = {}
    exec(compile(code, "overlay-quick-tour", "exec"), scope)
    net = scope["net"]
    assert net.events["Deliver"] == 50  # every node, the origin included
