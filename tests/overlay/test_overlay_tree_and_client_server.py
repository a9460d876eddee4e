"""The design's other overlays: tree (fanout 4, max depth 6) and client_server (servers + pool)."""

from __future__ import annotations

import random

from overlay_helpers import of, sends, sent_to, timers

from phoenix_trio.overlay import (
    ClientHello,
    ClientServer,
    Goodbye,
    HelloReply,
    JoinFailed,
    NeighborDown,
    NeighborUp,
    ServerHello,
    TreeAdopt,
    TreeConfig,
    TreeInfo,
    TreeJoin,
    TreeLeave,
    TreeOverlay,
    TreePath,
    TreeReject,
    configure_overlay,
)
from phoenix_trio.overlay import _scenarios as S


def tnode(name: str, **cfg) -> TreeOverlay:
    return TreeOverlay(name, TreeConfig(**cfg), rng=random.Random(name))


def test_root_adopts_up_to_fanout_then_passes_joins_down() -> None:
    root = tnode("r", fanout=2)
    root.join(["r"], 0.0)
    assert root.is_root and root.depth == 0
    for child in ("a", "b"):
        out = root.receive(child, TreeJoin(child, 0), 0.0)
        assert sends(out, TreeAdopt)[0].message == TreeAdopt(("r",)) and of(out, NeighborUp)
    out = root.receive("c", TreeJoin("c", 0), 0.0)
    [fwd] = sends(out, TreeJoin)
    assert fwd.dest in ("a", "b") and fwd.message.hops == 1
    out2 = root.receive("d", TreeJoin("d", 0), 0.0)
    assert sends(out2, TreeJoin)[0].dest != fwd.dest  # a burst of joins spreads over the children


def test_a_joiner_refused_by_every_contact_waits_before_the_next_round() -> None:
    # A contact that is not in the tree yet answers at once; retrying at once was a storm.
    j = tnode("j", join_timeout=2.0)
    out = j.join(["r"], 0.0)
    assert sent_to(out, TreeJoin) == ["r"]
    out = j.receive("r", TreeReject("not in the tree"), 0.001)
    assert not sends(out) and of(out, JoinFailed) and timers(out) == {("tree", "join"): 2.001}
    out = j.receive("r", TreeReject("not in the tree"), 0.002)  # a late duplicate changes nothing
    assert not sends(out)
    out = j.timer(("tree", "join"), 2.001)
    assert sent_to(out, TreeJoin) == ["r"]
    out = j.receive("r", TreeAdopt(("r",)), 2.002)
    assert j.parent == "r" and of(out, NeighborUp)


def test_child_learns_path_reports_size_and_rejects_cycles() -> None:
    a = tnode("a")
    a.join(["r", "a"], 0.0)
    out = a.receive("r", TreeAdopt(("r",)), 0.1)
    assert a.parent == "r" and a.path == ("r",) and a.depth == 1
    assert sends(out, TreeInfo)[0].message == TreeInfo(0, 1)
    a.receive("x", TreeJoin("x", 0), 0.2)
    out = a.receive("r", TreePath(("q", "r")), 0.3)
    assert a.path == ("q", "r") and sends(out, TreePath)[0].message == TreePath(("q", "r", "a"))
    out = a.receive("q", TreeJoin("q", 2), 0.4)  # an ancestor may not join below us
    assert sends(out, TreeReject)[0].message.reason == "would close a cycle"
    out = a.receive("x", TreeInfo(1, 3), 0.5)
    assert a.height == 2 and a.size == 4


def test_depth_bound_refuses_joins_that_do_not_fit() -> None:
    n = tnode("deep", max_depth=3)
    n.join(["r", "deep"], 0.0)
    n.receive("p", TreeAdopt(("r", "x", "p")), 0.0)  # depth 3 = max
    out = n.receive("j", TreeJoin("j", 0), 0.0)
    assert sends(out, TreeReject)[0].message.reason == "tree full"
    joiner = tnode("j")
    joiner.join(["r"], 0.0)
    out = joiner.receive("deep", TreeReject("tree full"), 0.1)
    assert of(out, JoinFailed)


def test_orphan_rejoins_with_its_subtree_and_children_learn_the_new_path() -> None:
    a = tnode("a")
    a.join(["r"], 0.0)
    a.receive("r", TreeAdopt(("r",)), 0.0)
    a.receive("c", TreeJoin("c", 0), 0.0)
    out = a.link_failed("r", 1.0)
    assert of(out, NeighborDown) == [NeighborDown("r", "failed")]
    assert sends(out, TreePath)[0].message == TreePath(("a",))
    [join] = sends(out, TreeJoin)
    assert join.message == TreeJoin("a", 1, 0)


def test_a_later_contact_becomes_root_when_no_earlier_contact_answers() -> None:
    b = tnode("b", join_timeout=1.0)
    b.join(["r", "b", "c"], 0.0)
    out = b.timer(("tree", "join"), 1.0)  # r did not answer
    assert b.is_root and not sends(out, TreeJoin)
    out = b.timer(("tree", "join"), 5.0)  # a root that is not the first contact tries to merge
    assert sent_to(out, TreeJoin) == ["r"]
    out = b.receive("r", TreeAdopt(("r",)), 5.1)
    assert not b.is_root and b.parent == "r"


def test_leave_tells_parent_and_children() -> None:
    a = tnode("a")
    a.join(["r"], 0.0)
    a.receive("r", TreeAdopt(("r",)), 0.0)
    a.receive("c", TreeJoin("c", 0), 0.0)
    out = a.leave(1.0)
    assert sorted(sent_to(out, TreeLeave)) == ["c", "r"] and a.neighbors() == []


def test_tree_overlay_with_1000_nodes_stays_within_fanout_and_depth_and_repairs() -> None:
    result = S.tree_scenario(1000, seed=2, kill=10)
    assert result.in_tree_after_join == 1000 and result.health_after_join.connected
    assert result.max_children <= 4 and result.max_depth_after_join <= 6
    assert result.killed == 10
    assert result.in_tree_after_repair == 990 and result.health_after_repair.connected
    assert result.health_after_repair.symmetric and result.max_depth_after_repair <= 6
    assert result.broadcast_reliability == 1.0


def test_tree_refuses_joins_beyond_capacity() -> None:
    config = configure_overlay("tree", tree_fanout=2, max_depth=2)  # capacity 7
    cluster = S.Cluster(10, seed=1, overlay=config, routing=None)
    failed = []
    cluster.net.on_event = lambda node, event, now: failed.append(node) if type(event) is JoinFailed else None
    cluster.mass_join(at=0.0)
    cluster.net.run(10.0)
    in_tree = [n for n in cluster.ids if cluster.node(n).membership.in_tree]
    assert len(in_tree) == 7 and len(set(failed)) == 3
    assert all(cluster.node(n).membership.depth <= 2 for n in in_tree)


def cs(name: str, servers=("s1", "s2", "s3")) -> ClientServer:
    return ClientServer(name, configure_overlay("client_server", servers=list(servers)), rng=random.Random(0))


def test_servers_mesh_and_clients_attach_to_their_hashed_server() -> None:
    s1 = cs("s1")
    out = s1.join((), 0.0)
    assert sorted(sent_to(out, ServerHello)) == ["s2", "s3"]
    s1.receive("s2", HelloReply(True), 0.1)
    out = s1.receive("s3", ServerHello(), 0.1)
    assert sends(out, HelloReply)[0].message.accepted and sorted(s1.neighbors()) == ["s2", "s3"]
    client = cs("client-7")
    out = client.join((), 0.0)
    [hello] = sends(out, ClientHello)
    assert hello.dest in ("s1", "s2", "s3")
    out = client.receive(hello.dest, HelloReply(True), 0.1)
    assert of(out, NeighborUp) == [NeighborUp(hello.dest)] and client.server == hello.dest
    out = s1.receive("client-7", ClientHello(), 0.2)
    assert "client-7" in s1.clients() and sends(out, HelloReply)[0].message.accepted
    assert sends(cs("c2").receive("x", ClientHello(), 0.0), HelloReply)[0].message == HelloReply(False)


def test_a_failure_reported_at_once_is_retried_on_the_next_round_not_in_a_loop() -> None:
    # A driver reports link_failed within the Send (no address for the peer yet): the
    # core must not greet the same peer again inside that call.
    s1 = cs("s1", servers=("s1", "s2"))
    assert sent_to(s1.join((), 0.0), ServerHello) == ["s2"]
    out = s1.link_failed("s2", 0.0)
    assert not sends(out) and timers(out) == {("client_server", "retry"): 1.0}
    assert sent_to(s1.timer(("client_server", "retry"), 1.0), ServerHello) == ["s2"]
    client = cs("c", servers=("s1",))
    assert sent_to(client.join((), 0.0), ClientHello) == ["s1"]
    out = client.link_failed("s1", 0.0)
    assert not sends(out) and ("client_server", "retry") in timers(out)


def test_client_fails_over_to_the_next_server_and_says_so_after_a_full_round() -> None:
    client = cs("c")
    first = sent_to(client.join((), 0.0), ClientHello)[0]
    client.receive(first, HelloReply(True), 0.1)
    out = client.link_failed(first, 1.0)
    [nxt] = sent_to(out, ClientHello)
    assert nxt != first and of(out, NeighborDown)
    out = client.receive(nxt, Goodbye(), 1.1)
    third = sent_to(out, ClientHello)[0]
    out = client.timer(("client_server", "retry"), 10.0)  # third never answered
    assert sent_to(out, ClientHello) and of(out, JoinFailed)
    assert third not in (first, nxt)


def test_client_server_overlay_with_1000_nodes_fails_over_and_routes() -> None:
    result = S.client_server_scenario(1000, seed=5, servers=4)
    assert result.attached_after_join == 996 and result.health_after_join.connected
    assert result.attached_after_failover == 996  # 999 alive, 3 of them servers
    assert result.health_after_failover.connected and result.health_after_failover.symmetric
    assert result.broadcast_reliability == 1.0
    assert result.routed_delivered == result.routed_sent
