"""Hypothesis strategies for every overlay protocol message."""

from __future__ import annotations

from hypothesis import strategies as st

from phoenix_trio.overlay import _messages as m

node_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
message_ids = st.binary(min_size=1, max_size=m.MAX_MESSAGE_ID)
counters = st.integers(0, m.MAX_COUNTER)
payloads = st.binary(max_size=2048)
views = st.lists(node_ids, max_size=12, unique=True).map(tuple)
paths = st.lists(node_ids, min_size=2, max_size=10, unique=True).map(tuple)
clocks = st.dictionaries(node_ids, counters, max_size=8)

envelopes = st.builds(
    m.GossipEnvelope,
    id=message_ids,
    payload=payloads,
    ttl_ms=counters,
    hop_count=counters,
    origin_node=node_ids,
    timestamp=clocks,
)


def _routed(cls):
    return paths.flatmap(
        lambda p: st.builds(cls, message_ids, st.just(p), st.integers(0, len(p) - 1), payloads, counters)
    )


messages = st.one_of(
    st.just(m.Join()),
    st.builds(m.ForwardJoin, node_ids, counters),
    st.builds(m.Welcome, views),
    st.just(m.WelcomeAck()),
    st.builds(m.Neighbor, st.booleans()),
    st.builds(m.NeighborReply, st.booleans()),
    st.builds(m.Disconnect, st.booleans()),
    st.just(m.DisconnectAck()),
    st.builds(m.Shuffle, node_ids, views, counters),
    st.builds(m.ShuffleReply, views),
    st.builds(m.EagerPush, message_ids, node_ids, counters, payloads),
    st.builds(m.IHave, st.lists(st.tuples(message_ids, counters), max_size=20).map(tuple)),
    st.builds(m.Graft, st.none() | message_ids, counters),
    st.just(m.Prune()),
    st.builds(m.GossipPush, st.lists(envelopes, max_size=5).map(tuple)),
    st.builds(m.GossipDigest, st.lists(message_ids, max_size=20).map(tuple)),
    st.builds(m.GossipRequest, st.lists(message_ids, max_size=20).map(tuple)),
    st.just(m.ServerHello()),
    st.just(m.ClientHello()),
    st.builds(m.HelloReply, st.booleans()),
    st.just(m.Goodbye()),
    st.builds(m.TreeJoin, node_ids, counters, counters),
    st.builds(m.TreeAdopt, st.lists(node_ids, max_size=8, unique=True).map(tuple)),
    st.builds(m.TreeReject, st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)),
    st.builds(m.TreePath, st.lists(node_ids, max_size=8, unique=True).map(tuple)),
    st.builds(m.TreeInfo, counters, counters),
    st.just(m.TreeLeave()),
    st.builds(m.RouteRequest, message_ids, node_ids, st.lists(node_ids, min_size=1, max_size=8, unique=True).map(tuple), st.booleans()),
    paths.flatmap(lambda p: st.builds(m.RouteReply, message_ids, st.just(p), st.integers(0, len(p) - 1))),
    _routed(m.Routed),
    _routed(m.RouteError),
)
