"""The gossip pattern: envelopes, processing each message once, push rounds, ttl, anti-entropy."""

from __future__ import annotations

import random

from overlay_helpers import of, sends, sent_to

from phoenix_trio.overlay import (
    Gossip,
    GossipDeliver,
    GossipDigest,
    GossipEnvelope,
    GossipPush,
    GossipRequest,
    rounds_bound,
    start_gossip_protocol,
)

PEERS = ["a", "b", "c", "d", "e"]


def gossip(name: str = "me", peers=PEERS, **opts) -> Gossip:
    return Gossip(name, start_gossip_protocol(**opts), rng=random.Random(3), peers=peers)


def env(mid: bytes, ttl_ms: int = 30_000, hops: int = 0, origin: str = "o", ts=None) -> GossipEnvelope:
    return GossipEnvelope(mid, b"payload", ttl_ms, hops, origin, ts or {origin: 1})


def test_gossip_message_builds_the_designs_envelope_and_pushes_at_once() -> None:
    g = gossip()
    out = g.gossip_message(b"hello", 10.0)
    [local] = of(out, GossipDeliver)
    e = local.envelope
    assert (e.payload, e.ttl_ms, e.hop_count, e.origin_node, e.timestamp) == (b"hello", 30_000, 0, "me", {"me": 1})
    assert len(e.id) == 16
    pushes = sends(out, GossipPush)
    assert len(pushes) == 3 and len({p.dest for p in pushes}) == 3  # fanout 3 distinct peers
    assert all(p.message.envelopes[0].hop_count == 1 for p in pushes)
    second = of(g.gossip_message(b"again", 11.0), GossipDeliver)[0].envelope
    assert second.timestamp == {"me": 2}


def test_each_message_is_processed_once_and_expired_ones_not_at_all() -> None:
    g = gossip()
    out = g.receive("a", GossipPush((env(b"m"), env(b"m"))), 0.0)
    assert len(of(out, GossipDeliver)) == 1
    assert of(g.receive("b", GossipPush((env(b"m", hops=3),)), 1.0), GossipDeliver) == []
    assert g.stats.duplicates == 2
    assert of(g.receive("b", GossipPush((env(b"dead", ttl_ms=0),)), 1.0), GossipDeliver) == []
    assert g.handle_gossip_reception(env(b"x"), "a", 2.0) and not g.handle_gossip_reception(env(b"x"), "a", 2.5)
    assert g.has_seen(b"x", 3.0)


def test_round_pushes_hot_messages_with_hop_count_up_and_ttl_down() -> None:
    g = gossip()
    g.receive("a", GossipPush((env(b"m", ttl_ms=5_000, hops=2),)), 100.0)
    out = g.timer(("gossip", "round"), 101.5)
    pushes = sends(out, GossipPush)
    assert len(pushes) == 3
    [e] = pushes[0].message.envelopes
    assert e.hop_count == 3 and e.ttl_ms == 3_500
    g.timer(("gossip", "round"), 104.0)
    assert sends(g.timer(("gossip", "round"), 105.5), GossipPush) == []  # ttl expired: pushing stops
    assert g.held(105.5) == []


def test_push_rounds_bounds_how_long_a_message_is_pushed() -> None:
    g = gossip(push_rounds=2)
    g.receive("a", GossipPush((env(b"m"),)), 0.0)
    assert sends(g.timer(("gossip", "round"), 1.0), GossipPush)
    assert sends(g.timer(("gossip", "round"), 2.0), GossipPush)
    assert sends(g.timer(("gossip", "round"), 3.0), GossipPush) == []
    assert [e.id for e in g.held(3.0)] == [b"m"]  # still held for anti-entropy


def test_anti_entropy_digest_request_and_answer() -> None:
    g = gossip()
    for mid in (b"m1", b"m2", b"m3"):
        g.receive("a", GossipPush((env(mid),)), 0.0)
    out = g.timer(("gossip", "anti_entropy"), 5.0)
    [digest] = sends(out, GossipDigest)
    assert set(digest.message.ids) == {b"m1", b"m2", b"m3"} and digest.dest in PEERS
    # a peer holding m2 and m9 answers: it sends what we lack and asks for what it lacks
    peer = gossip("p")
    peer.receive("x", GossipPush((env(b"m2"), env(b"m9"))), 1.0)
    out = peer.receive("me", digest.message, 5.1)
    [request] = sends(out, GossipRequest)
    assert set(request.message.ids) == {b"m1", b"m3"}
    [push] = sends(out, GossipPush)
    assert [e.id for e in push.message.envelopes] == [b"m9"]
    answer = g.receive("p", request.message, 5.2)
    assert {e.id for e in sends(answer, GossipPush)[0].message.envelopes} == {b"m1", b"m3"}
    assert [d.envelope.id for d in of(g.receive("p", push.message, 5.2), GossipDeliver)] == [b"m9"]


def test_vector_clocks_merge_and_stay_bounded() -> None:
    g = gossip(max_clock_entries=3)
    g.receive("a", GossipPush((env(b"1", origin="x", ts={"x": 4, "y": 2}),)), 0.0)
    g.receive("a", GossipPush((env(b"2", origin="y", ts={"y": 5}),)), 1.0)
    assert g.clock == {"x": 4, "y": 5}
    g.receive("a", GossipPush((env(b"3", origin="z", ts={"z": 1, "w": 1}),)), 2.0)
    assert len(g.clock) == 3 and "x" not in g.clock  # least recently advanced entry pruned
    e = of(g.gossip_message(b"p", 3.0), GossipDeliver)[0].envelope
    assert e.timestamp["me"] == 1 and len(e.timestamp) == 3


def test_message_store_is_bounded_by_count() -> None:
    g = gossip(max_messages=4)
    for i in range(10):
        g.receive("a", GossipPush((env(b"m%d" % i),)), float(i) * 0.01)
    assert [e.id for e in g.held(1.0)] == [b"m6", b"m7", b"m8", b"m9"]


def test_peers_follow_membership_and_no_peers_means_no_sends() -> None:
    g = gossip(peers=[])
    out = g.gossip_message(b"x", 0.0)
    assert sends(out) == [] and of(out, GossipDeliver)
    g.peer_up("a", 0.0)
    g.peer_up("me", 0.0)
    assert sent_to(g.timer(("gossip", "round"), 1.0), GossipPush) == ["a"]
    g.peer_down("a", 1.0)
    assert sends(g.timer(("gossip", "round"), 2.0)) == []
    g.set_peers(["b", "c"], 2.0)
    assert sorted(sent_to(g.timer(("gossip", "round"), 3.0), GossipPush)) == ["b", "c"]


def test_rounds_bound() -> None:
    assert abs(rounds_bound(1000) - 16.8735) < 1e-3
    assert abs(rounds_bound(10_000) - 22.4981) < 1e-3
