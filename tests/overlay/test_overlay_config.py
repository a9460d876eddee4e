"""configure_overlay and start_gossip_protocol: the design's defaults, aliases and validation."""

from __future__ import annotations

import pytest

from phoenix_trio import ConfigurationError
from phoenix_trio.overlay import (
    ClientServerConfig,
    GossipConfig,
    HyParViewConfig,
    PlumtreeConfig,
    RoutingConfig,
    TreeConfig,
    configure_overlay,
    start_gossip_protocol,
)


def test_hyparview_defaults_are_the_designs_and_the_papers_walks() -> None:
    config = configure_overlay("hyparview")
    assert isinstance(config, HyParViewConfig)
    assert (config.fanout, config.active_view_size, config.passive_view_size) == (6, 6, 30)
    assert (config.active_random_walk_length, config.passive_random_walk_length) == (6, 3)
    assert (config.shuffle_active, config.shuffle_passive) == (3, 4)
    assert configure_overlay(":hyparview", fanout=4, active_view_size=5).fanout == 4


def test_client_server_and_tree_use_the_designs_option_names() -> None:
    cs = configure_overlay("client_server", servers=["s1", "s2"])
    assert isinstance(cs, ClientServerConfig) and cs.servers == ("s1", "s2") and cs.pool_size == 10
    assert configure_overlay("client_server", servers=("s",), connection_pool_size=3).pool_size == 3
    tree = configure_overlay("tree")
    assert isinstance(tree, TreeConfig) and (tree.fanout, tree.max_depth) == (4, 6)
    assert tree.capacity == 5461
    assert configure_overlay("tree", tree_fanout=2, max_depth=3).capacity == 15
    assert configure_overlay("tree", fanout=3, depth=2).capacity == 13


@pytest.mark.parametrize(
    ("kind", "opts"),
    [
        ("mesh", {}),
        (3, {}),
        ("hyparview", {"bogus": 1}),
        ("hyparview", {"fanout": 7}),  # more than the active view
        ("hyparview", {"active_view_size": 0}),
        ("hyparview", {"passive_random_walk_length": 7}),  # longer than the active walk
        ("hyparview", {"shuffle_interval": 0}),
        ("hyparview", {"shuffle_interval": float("nan")}),
        ("hyparview", {"fanout": True}),
        ("client_server", {}),  # servers required
        ("client_server", {"servers": "s1"}),  # a string is not a list of servers
        ("client_server", {"servers": ["s", "s"]}),
        ("client_server", {"servers": ["\ud800"]}),  # not UTF-8 encodable
        ("client_server", {"servers": ["s"], "pool_size": 0}),
        ("client_server", {"servers": ["s"], "pool_size": 1, "connection_pool_size": 2}),
        ("tree", {"tree_fanout": 0}),
        ("tree", {"max_depth": 100}),
    ],
)
def test_invalid_overlay_options_raise_configuration_error(kind, opts) -> None:
    with pytest.raises(ConfigurationError):
        configure_overlay(kind, **opts)


def test_gossip_defaults_are_the_designs() -> None:
    config = start_gossip_protocol()
    assert config == GossipConfig()
    assert (config.version, config.fanout, config.round_duration, config.message_ttl, config.compression) == (
        "1.0",
        3,
        1.0,
        30.0,
        True,
    )
    assert config.push_rounds is None  # push until the ttl expires, as the design says
    assert start_gossip_protocol(fanout=5, message_ttl=2.5).fanout == 5
    for bad in ({"fanout": 0}, {"round_duration": -1}, {"compression": "yes"}, {"push_rounds": 0}, {"typo": 1}):
        with pytest.raises(ConfigurationError):
            start_gossip_protocol(**bad)


def test_other_records_validate() -> None:
    for cls, bad in (
        (PlumtreeConfig, {"graft_timeout": 0}),
        (PlumtreeConfig, {"seen_cache_size": 0}),
        (RoutingConfig, {"max_hops": 64}),
        (RoutingConfig, {"discovery_attempts": 0}),
    ):
        with pytest.raises(ConfigurationError):
            cls(**bad)
    # and ConfigurationError is a ValueError, for code that does not know phoenix_trio
    with pytest.raises(ValueError):
        RoutingConfig(max_reroutes=-1)


def test_commands_hold_their_arguments_to_the_wire_bounds() -> None:
    import random

    from phoenix_trio import ValidationError
    from phoenix_trio.overlay import Gossip, HyParView, OverlayNode
    from phoenix_trio.overlay._messages import MAX_PAYLOAD

    node = OverlayNode("me", rng=random.Random(0), gossip=GossipConfig())
    for call in (
        lambda: node.broadcast("text", 0.0),  # type: ignore[arg-type]
        lambda: node.broadcast(b"x" * (MAX_PAYLOAD + 1), 0.0),
        lambda: node.broadcast(b"x", 0.0, message_id=b""),
        lambda: node.send_to("", b"x", 0.0),
        lambda: node.gossip_message(b"x", 0.0, ttl=-1),
        lambda: node.join(["ok", 7], 0.0),  # type: ignore[list-item]
    ):
        with pytest.raises(ValidationError):
            call()
    for bad in ("", "x" * 300, "\udcff", 5):
        with pytest.raises(ConfigurationError):
            HyParView(bad, rng=random.Random(0))  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            Gossip(bad, rng=random.Random(0))  # type: ignore[arg-type]
