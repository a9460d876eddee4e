"""Point-to-point routing: discovery along the tree or by flood, source routes, reroute, bounds."""

from __future__ import annotations

import random
from collections import deque

from overlay_helpers import of, sends, sent_to

from phoenix_trio.effects import Send, SetTimer
from phoenix_trio.overlay import (
    DirectDeliver,
    RouteError,
    RouteFailed,
    Router,
    RouteReply,
    RouteRequest,
    Routed,
    RoutingConfig,
)


class Net:
    """Routers wired by an explicit edge list; messages pumped in FIFO order."""

    def __init__(self, edges: list[tuple[str, str]], **cfg) -> None:
        self.routers: dict[str, Router] = {}
        self.tree: dict[str, list[str]] = {}
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                r = self.routers.setdefault(x, self._router(x, cfg))
                r.neighbor_up(y, 0.0)
        self.queue: deque[tuple[str, str, object]] = deque()
        self.events: list[tuple[str, object]] = []
        self.timers: dict[tuple[str, object], float] = {}
        self.sent = 0

    def _router(self, name: str, cfg: dict) -> Router:
        return Router(name, RoutingConfig(**cfg), rng=random.Random(name), tree_peers=lambda: self.tree.get(name, []))

    def apply(self, src: str, effects: list) -> None:
        for e in effects:
            if type(e) is Send:
                self.queue.append((src, e.dest, e.message))
            elif type(e) is SetTimer:
                self.timers[(src, e.key)] = e.deadline
            elif type(e).__name__ != "CancelTimer":
                self.events.append((src, e))

    def pump(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.popleft()
            self.sent += 1
            if dst in self.routers:
                self.apply(dst, self.routers[dst].receive(src, msg, 0.0))

    def send(self, src: str, dst: str, payload: bytes) -> None:
        self.apply(src, self.routers[src].send_to(dst, payload, 0.0))
        self.pump()

    def fire_timers(self, now: float) -> None:
        for (node, key), deadline in list(self.timers.items()):
            if deadline <= now:
                del self.timers[(node, key)]
                self.apply(node, self.routers[node].timer(key, now))
        self.pump()


LINE = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]


def test_neighbours_are_reached_in_one_hop_and_self_at_once() -> None:
    net = Net(LINE)
    out = net.routers["a"].send_to("b", b"x", 0.0, message_id=b"i")
    assert sends(out)[0].message == Routed(b"i", ("a", "b"), 1, b"x", 0)
    assert of(net.routers["a"].send_to("a", b"x", 0.0), DirectDeliver)[0].hops == 0


def test_discovery_then_delivery_along_the_source_route() -> None:
    net = Net(LINE)
    net.send("a", "e", b"hello")
    [(where, got)] = [(n, e) for n, e in net.events if type(e) is DirectDeliver]
    assert where == "e" and got.origin == "a" and got.payload == b"hello" and got.hops == 4
    assert net.routers["a"].route("e", 1.0) == ("a", "b", "c", "d", "e")
    assert net.routers["e"].route("a", 1.0) == ("e", "d", "c", "b", "a")  # reverse route learnt
    before = net.sent
    net.send("a", "e", b"again")  # cached: no discovery, 4 hops
    assert net.sent - before == 4


def test_first_discovery_uses_only_tree_links_then_floods() -> None:
    # a line a-b-c-d plus a shortcut a-x-d that is not part of the broadcast tree
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "x"), ("x", "d")]
    net = Net(edges)
    net.tree = {"a": ["b"], "b": ["a", "c"], "c": ["b", "d"], "d": ["c"], "x": []}
    out = net.routers["a"].send_to("d", b"x", 0.0)
    assert sent_to(out, RouteRequest) == ["b"]
    assert all(not s.message.flood for s in sends(out, RouteRequest))
    net.apply("a", out)
    net.pump()
    assert net.routers["a"].route("d", 0.0) == ("a", "b", "c", "d")  # along the tree
    # with no tree links at all, the first attempt floods every link and finds the shortcut
    net2 = Net(edges)
    out = net2.routers["a"].send_to("d", b"x", 0.0)
    assert all(s.message.flood for s in sends(out, RouteRequest))
    net2.apply("a", out)
    net2.pump()
    assert net2.routers["a"].route("d", 0.0) == ("a", "x", "d")


def test_broken_route_returns_the_payload_and_it_is_rerouted() -> None:
    edges = LINE + [("a", "x"), ("x", "e")]
    net = Net(edges)
    net.tree = {"a": ["b"], "b": ["a", "c"], "c": ["b", "d"], "d": ["c", "e"], "e": ["d"]}
    net.send("a", "e", b"one")
    assert net.routers["a"].route("e", 0.0) == ("a", "b", "c", "d", "e")
    net.routers["c"].neighbor_down("d", 0.0)  # the link is demoted while we send
    net.routers["d"].neighbor_down("c", 0.0)
    net.events.clear()
    net.send("a", "e", b"two")  # c returns it; a rediscovers (tree broken: then floods) and resends
    net.fire_timers(2.0)
    delivered = [e for n, e in net.events if type(e) is DirectDeliver and n == "e"]
    assert [d.payload for d in delivered] == [b"two"]
    assert net.routers["c"].stats.route_errors == 1 and net.routers["a"].stats.reroutes == 1


def test_unreachable_target_fails_after_every_attempt() -> None:
    net = Net(LINE, discovery_attempts=2, discovery_timeout=1.0)
    net.send("a", "nowhere", b"p")
    assert not [e for _, e in net.events if type(e) is RouteFailed]
    net.fire_timers(1.0)
    net.fire_timers(2.0)
    [(_, failed)] = [(n, e) for n, e in net.events if type(e) is RouteFailed]
    assert failed.target == "nowhere" and failed.payload == b"p"


def test_hop_bound_stops_discovery() -> None:
    chain = [(f"n{i}", f"n{i + 1}") for i in range(10)]
    net = Net(chain, max_hops=4, discovery_attempts=1)
    net.send("n0", "n9", b"far")
    net.fire_timers(2.0)
    assert [e for _, e in net.events if type(e) is RouteFailed]
    assert not [e for _, e in net.events if type(e) is DirectDeliver]
    net.send("n0", "n4", b"near")
    assert [e for _, e in net.events if type(e) is DirectDeliver]


def test_messages_that_do_not_name_this_hop_are_dropped() -> None:
    r = Router("me", rng=random.Random(0))
    r.neighbor_up("a", 0.0)
    assert r.receive("a", Routed(b"i", ("a", "x", "me"), 1, b"", 0), 0.0) == []
    assert r.receive("a", RouteReply(b"i", ("a", "x", "me"), 1), 0.0) == []
    assert r.receive("a", RouteError(b"i", ("a", "x", "me"), 1, b"", 0), 0.0) == []
    # a request that already passed through this node is not forwarded again
    assert r.receive("a", RouteRequest(b"r", "t", ("a", "me"), True), 0.0) == []
    out = r.receive("a", RouteRequest(b"r2", "t", ("a",), True), 0.0)
    assert sent_to(out) == []  # only neighbour is the sender, already on the path
    r.neighbor_up("b", 0.0)
    assert sent_to(r.receive("a", RouteRequest(b"r3", "t", ("a",), True), 0.0)) == ["b"]
    # a walk that does not end with its sender is forged: dropped
    assert r.receive("a", RouteRequest(b"r4", "t", ("zz",), True), 0.0) == []
    assert r.receive("a", Routed(b"i", ("zz", "me", "b"), 1, b"", 0), 0.0) == []
    assert sent_to(r.receive("a", Routed(b"i", ("a", "me", "b"), 1, b"", 0), 0.0)) == ["b"]


def test_pending_payloads_are_bounded() -> None:
    r = Router("me", RoutingConfig(max_pending=2), rng=random.Random(0))
    r.neighbor_up("a", 0.0)
    for _ in range(2):
        assert not of(r.send_to("t", b"p", 0.0), RouteFailed)
    assert of(r.send_to("t", b"p", 0.0), RouteFailed)
