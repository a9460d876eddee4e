"""HyParView: the protocol steps one by one, view invariants under any input, small simulations."""

from __future__ import annotations

import random

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from overlay_helpers import of, sends, sent_to, timers

from phoenix_trio.overlay import (
    CloseLink,
    Disconnect,
    DisconnectAck,
    ForwardJoin,
    HyParView,
    HyParViewConfig,
    Join,
    JoinFailed,
    Neighbor,
    NeighborDown,
    NeighborReply,
    NeighborUp,
    Shuffle,
    ShuffleReply,
    Welcome,
    WelcomeAck,
)
from phoenix_trio.overlay import _scenarios as S


def node(name: str = "me", seed: int = 0, **cfg) -> HyParView:
    return HyParView(name, HyParViewConfig(**cfg), rng=random.Random(seed))


def linked(hv: HyParView, *peers: str) -> HyParView:
    """Put ``peers`` in the active view as if each had welcomed us."""
    for p in peers:
        hv.receive(p, Welcome(()), 0.0)
    return hv


def test_join_sends_join_to_the_first_contact_and_retries_the_next() -> None:
    hv = node()
    out = hv.join(["me", "c1", "c2"], 0.0)
    assert sent_to(out, Join) == ["c1"]
    assert timers(out)[("hyparview", "join")] == 3.0
    out = hv.timer(("hyparview", "join"), 3.0)
    assert sent_to(out, Join) == ["c2"]
    out = hv.timer(("hyparview", "join"), 6.0)  # a whole round unanswered: said once, keeps trying
    assert sent_to(out, Join) == ["c1"] and of(out, JoinFailed)
    out = hv.link_failed("c1", 6.5)  # refused: next contact at once
    assert sent_to(out, Join) == ["c2"]
    out = hv.link_failed("c2", 6.6)  # the whole round refused: wait, do not redial in a loop
    assert not sends(out) and timers(out)[("hyparview", "join")] == 9.6
    assert not sends(hv.link_failed("c2", 6.7))
    out = hv.timer(("hyparview", "join"), 9.6)
    assert sent_to(out, Join) == ["c1"] and of(out, JoinFailed)
    assert hv.join([], 10.0) == []  # no contacts: the first node of an overlay


def test_contact_adds_joiner_welcomes_it_and_starts_forward_join_walks() -> None:
    hv = linked(node(), "a", "b")
    out = hv.receive("new", Join(), 1.0)
    assert of(out, NeighborUp) == [NeighborUp("new")]
    [welcome] = sends(out, Welcome)
    assert welcome.dest == "new" and set(welcome.message.sample) <= {"a", "b"}
    walks = sends(out, ForwardJoin)
    assert sorted(s.dest for s in walks) == ["a", "b"]
    assert all(s.message == ForwardJoin("new", 6) for s in walks)
    # the joiner acknowledges; nothing else happens
    assert hv.receive("new", WelcomeAck(), 1.1) == []


def test_forward_join_walk_adds_to_passive_at_prwl_and_ends_at_ttl_zero() -> None:
    hv = linked(node(), "a", "b", "c")
    out = hv.receive("a", ForwardJoin("new", 5), 0.0)
    [fwd] = sends(out, ForwardJoin)
    assert fwd.dest in ("b", "c") and fwd.message.ttl == 4 and "new" not in hv.passive
    hv.receive("a", ForwardJoin("new2", 3), 0.0)  # ttl == PRWL: remembered in the passive view
    assert "new2" in hv.passive
    out = hv.receive("a", ForwardJoin("new3", 0), 0.0)
    assert "new3" in hv.active and sent_to(out, Welcome) == ["new3"]
    assert hv.receive("b", ForwardJoin("new3", 2), 0.0) == []  # already a neighbour
    assert hv.receive("b", ForwardJoin("me", 2), 0.0) == []  # our own join


def test_forward_join_is_accepted_by_a_node_with_one_neighbour() -> None:
    hv = linked(node(), "a")
    out = hv.receive("a", ForwardJoin("new", 6), 0.0)
    assert "new" in hv.active and sent_to(out, Welcome) == ["new"]


def test_full_active_view_drops_a_random_neighbour_with_disconnect_before_close() -> None:
    hv = linked(node(active_view_size=2, fanout=2), "a", "b")
    out = hv.receive("new", Join(), 0.0)
    assert "new" in hv.active and len(hv.active) == 2
    [victim] = [p for p in ("a", "b") if p not in hv.active]
    assert victim in hv.passive
    kinds = [(type(e).__name__, getattr(e, "dest", getattr(e, "peer", None))) for e in out]
    # the demoted peer gets DISCONNECT first, then the neighbour event, then the close hint
    i = kinds.index(("Send", victim))
    assert kinds[i + 1 : i + 3] == [("NeighborDown", victim), ("CloseLink", victim)]
    assert of(out, NeighborDown)[0].reason == "replaced"


def test_neighbor_request_priority() -> None:
    hv = linked(node(active_view_size=2, fanout=2), "a")
    out = hv.receive("x", Neighbor(high_priority=False), 0.0)
    assert sends(out, NeighborReply)[0].message == NeighborReply(True) and "x" in hv.active
    out = hv.receive("y", Neighbor(high_priority=False), 0.0)
    assert sends(out, NeighborReply)[0].message == NeighborReply(False)
    assert "y" in hv.passive and "y" not in hv.active
    out = hv.receive("z", Neighbor(high_priority=True), 0.0)  # must be accepted: drop one
    assert "z" in hv.active and len(hv.active) == 2 and sends(out, Disconnect)


def test_link_failure_promotes_from_passive_with_priority_by_emptiness() -> None:
    hv = linked(node(), "a")
    hv.passive.update({"p1": None, "p2": None})
    out = hv.link_failed("a", 1.0)
    assert of(out, NeighborDown) == [NeighborDown("a", "failed")] and of(out, CloseLink)
    requests = sends(out, Neighbor)
    assert sorted(r.dest for r in requests) == ["p1", "p2"]
    assert all(r.message.high_priority for r in requests)  # the active view is empty
    out = hv.receive("p1", NeighborReply(True), 1.1)
    assert of(out, NeighborUp) == [NeighborUp("p1")]
    hv.receive("p2", NeighborReply(False), 1.1)
    assert "p2" in hv.passive and "p2" not in hv.active
    out = hv.timer(("hyparview", "repair"), 4.0)  # tries again later (with backoff)
    assert sent_to(out, Neighbor) == ["p2"] and not sends(out, Neighbor)[0].message.high_priority


def test_unanswered_neighbor_request_drops_the_candidate() -> None:
    hv = linked(node(neighbor_timeout=2.0), "a")
    hv.passive["p"] = None
    hv.link_failed("a", 0.0)
    out = hv.timer(("hyparview", "repair"), 5.0)
    assert "p" not in hv.passive
    # with nothing left the node re-joins through its contacts
    hv2 = node()
    hv2.join(["c"], 0.0)
    hv2.receive("c", Welcome(()), 0.1)
    out = hv2.link_failed("c", 1.0)
    assert sent_to(out, Join) == ["c"]
    assert hv2.stats.rejoins == 1


def test_disconnect_moves_peer_to_passive_and_is_acknowledged() -> None:
    hv = linked(node(), "a", "b")
    out = hv.receive("a", Disconnect(), 0.0)
    assert "a" in hv.passive and "a" not in hv.active
    assert sends(out, DisconnectAck)[0].dest == "a"
    assert of(out, NeighborDown) == [NeighborDown("a", "disconnected")]
    assert sent_to(out, Neighbor)  # refills from the passive view at once


def test_stale_acceptances_after_our_disconnect_are_ignored() -> None:
    # We welcome "p", then drop it; its acknowledgement of the welcome was sent before it
    # saw our DISCONNECT, so it must not resurrect the link here.
    hv = linked(node(active_view_size=1, fanout=1), "a")
    hv.receive("a", ForwardJoin("p", 0), 0.0)  # adds p, drops a (DISCONNECT to a)
    assert hv.members() == ["p"]
    hv.receive("x", Neighbor(high_priority=True), 0.0)  # drops p: DISCONNECT to p
    assert hv.members() == ["x"]
    assert hv.receive("p", WelcomeAck(), 0.1) == []  # stale: ignored, our DISCONNECT undoes it there
    assert hv.receive("p", Welcome(()), 0.1) == []  # likewise a welcome sent before it saw ours
    assert hv.members() == ["x"]
    hv.receive("p", DisconnectAck(), 0.2)
    out = hv.receive("p", WelcomeAck(), 0.3)  # now an acknowledgement for a link we do not hold
    assert sent_to(out, Disconnect) == ["p"]


def test_shuffle_walk_forwards_then_replies_and_integrates() -> None:
    hv = linked(node(), "a", "b")
    hv.passive.update({f"p{i}": None for i in range(5)})
    out = hv.receive("a", Shuffle("origin", ("origin", "s1", "s2"), 3), 0.0)
    assert sent_to(out, Shuffle) == ["b"] and sends(out, Shuffle)[0].message.ttl == 2
    out = hv.receive("a", Shuffle("origin", ("origin", "s1", "s2"), 1), 0.0)
    [reply] = sends(out, ShuffleReply)
    assert reply.dest == "origin" and len(reply.message.nodes) == 3
    assert {"origin", "s1", "s2"} <= set(hv.passive)
    out = hv.timer(("hyparview", "shuffle"), 10.0)
    [shuffle] = sends(out, Shuffle)
    assert shuffle.message.origin == "me" and shuffle.message.nodes[0] == "me"
    assert shuffle.message.ttl == 6 and shuffle.dest in hv.active
    hv.receive("q", ShuffleReply(("r1", "me", "a")), 10.1)
    assert "r1" in hv.passive and "me" not in hv.passive and "a" not in hv.passive


def test_leave_disconnects_everyone_and_receivers_tombstone_the_leaver() -> None:
    hv = linked(node(), "a", "b")
    out = hv.leave(5.0)
    assert sorted(sent_to(out, Disconnect)) == ["a", "b"]
    assert all(s.message.leaving for s in sends(out, Disconnect))
    assert hv.members() == [] and hv.left
    assert sends(hv.receive("x", Neighbor(False), 6.0), Disconnect)[0].message.leaving
    peer = linked(node("a"), "me", "z")
    peer.receive("me", Disconnect(leaving=True), 5.1)
    assert "me" not in peer.active and "me" not in peer.passive
    peer.receive("z", ShuffleReply(("me",)), 6.0)  # stale news of the leaver
    assert "me" not in peer.passive
    peer.timer(("hyparview", "probe"), 200.0)  # tombstones expire ...
    peer.receive("z", ShuffleReply(("me",)), 200.0)
    assert "me" in peer.passive  # ... and then it may be learnt again


def test_failed_peers_are_probed_and_reconnected_with_high_priority() -> None:
    hv = linked(node(probe_interval=10.0), "a", "b")
    hv.link_failed("a", 1.0)
    out = hv.timer(("hyparview", "probe"), 11.0)
    assert sends(out, Neighbor) == [s for s in sends(out, Neighbor) if s.dest == "a"]
    assert sends(out, Neighbor)[0].message.high_priority
    hv.receive("a", NeighborReply(True), 11.1)
    assert "a" in hv.active


operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["join", "fjoin", "welcome", "ack", "neighbor", "reply", "disconnect", "dack", "shuffle", "sreply", "fail", "timer", "leave"]
        ),
        st.sampled_from([f"p{i}" for i in range(12)] + ["me"]),
        st.integers(0, 7),
        st.booleans(),
    ),
    max_size=120,
)


@given(operations, st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_view_invariants_hold_under_any_input(ops, seed) -> None:
    hv = node(seed=seed, active_view_size=4, fanout=4, passive_view_size=6)
    hv.start(0.0)
    hv.join(["p0"], 0.0)
    now = 0.0
    peers = [f"p{i}" for i in range(12)]
    for op, peer, k, flag in ops:
        now += 0.3
        sample = tuple(dict.fromkeys(peers[k : k + 5] + ["me"]))
        if op == "join":
            hv.receive(peer, Join(), now)
        elif op == "fjoin":
            hv.receive(peer, ForwardJoin(peers[k], k), now)
        elif op == "welcome":
            hv.receive(peer, Welcome(sample), now)
        elif op == "ack":
            hv.receive(peer, WelcomeAck(), now)
        elif op == "neighbor":
            hv.receive(peer, Neighbor(flag), now)
        elif op == "reply":
            hv.receive(peer, NeighborReply(flag), now)
        elif op == "disconnect":
            hv.receive(peer, Disconnect(flag), now)
        elif op == "dack":
            hv.receive(peer, DisconnectAck(), now)
        elif op == "shuffle":
            hv.receive(peer, Shuffle(peers[k], sample, k), now)
        elif op == "sreply":
            hv.receive(peer, ShuffleReply(sample), now)
        elif op == "fail":
            hv.link_failed(peer, now)
        elif op == "timer":
            for key in ("shuffle", "repair", "join", "probe"):
                hv.timer(("hyparview", key), now)
        elif op == "leave" and flag and k == 0:
            hv.leave(now)
            hv.join(["p1"], now)
        active, passive = set(hv.active), set(hv.passive)
        assert len(active) <= 4 and len(passive) <= 6
        assert "me" not in active and "me" not in passive
        assert not active & passive
        assert len(hv._suspects) <= hv.config.max_suspects


def test_small_overlay_over_the_wire_codec_is_connected_and_symmetric() -> None:
    cluster = S.Cluster(120, seed=7, wire=True, broadcast=None, routing=None)
    cluster.mass_join(at=0.0)
    cluster.net.run(20.0)
    health = S.overlay_health(cluster.net)
    assert health.connected and health.symmetric and health.degree_min >= 3


def test_departed_members_are_never_listed_again() -> None:
    cluster = S.Cluster(150, seed=11, broadcast=None, routing=None)
    cluster.mass_join(at=0.0)
    net = cluster.net
    net.run(20.0)
    leavers = cluster.rng.sample(cluster.ids[1:], 15)
    for name in leavers:
        net.call(name, lambda now, n=cluster.node(name): n.leave(now))
    net.run_for(1.0)
    for name in leavers:
        net.sim.crash(name)  # they are gone for good
    net.run_for(60.0)  # shuffles keep circulating old samples
    gone = set(leavers)
    for name in net.alive():
        assert not gone & set(cluster.node(name).members())
    health = S.overlay_health(net)
    assert health.connected and health.symmetric and health.links_to_dead == 0


def test_partitioned_overlay_merges_again_after_healing() -> None:
    cluster = S.Cluster(200, seed=3, broadcast=None, routing=None)
    cluster.mass_join(at=0.0)
    net = cluster.net
    net.run(20.0)
    net.partition(cluster.ids[:100])
    net.run_for(30.0)
    split = S.overlay_health(net)
    assert split.components == 2 and split.symmetric  # each side repaired into its own overlay
    net.heal()
    net.run_for(30.0)
    merged = S.overlay_health(net)
    assert merged.connected and merged.symmetric


@pytest.mark.parametrize("cut", [4, 100])
def test_a_partition_that_outlasts_a_round_of_probes_still_heals(cut: int) -> None:
    # Every node probes each of its suspects several times over before the heal: a probe
    # that gets no answer must keep the peer suspected, or both sides forget each other.
    cluster = S.Cluster(200, seed=5, broadcast=None, routing=None)
    cluster.mass_join(at=0.0)
    net = cluster.net
    net.run(20.0)
    net.partition(cluster.ids[-cut:])
    net.run_for(200.0)  # probe_interval 10 s, at most 6 suspects per node
    assert S.overlay_health(net).components >= 2  # (a few cut-off nodes may not even know each other)
    net.heal()
    net.run_for(60.0)
    merged = S.overlay_health(net)
    assert merged.connected and merged.symmetric


def test_same_seed_same_overlay() -> None:
    def run(seed: int) -> list[list[str]]:
        cluster = S.Cluster(80, seed=seed, broadcast=None, routing=None)
        cluster.mass_join(at=0.0)
        cluster.net.run(15.0)
        return [cluster.node(n).members() for n in cluster.ids]

    assert run(5) == run(5)
    assert run(5) != run(6)
