"""Plumtree: eager push, prune on duplicates, lazy IHAVE batches, graft on missing, bounded caches."""

from __future__ import annotations

import random

from overlay_helpers import of, sends, sent_to, timers

from phoenix_trio.effects import CancelTimer
from phoenix_trio.overlay import BoundedCache, Deliver, EagerPush, Graft, IHave, Plumtree, PlumtreeConfig, Prune


def tree(*peers: str, **cfg) -> Plumtree:
    pt = Plumtree("me", PlumtreeConfig(**cfg), rng=random.Random(1))
    for p in peers:
        pt.neighbor_up(p, 0.0)
    return pt


def test_broadcast_delivers_locally_and_pushes_to_every_eager_neighbour() -> None:
    pt = tree("a", "b", "c")
    out = pt.broadcast(b"hi", 0.0, message_id=b"m1")
    assert out[0] == Deliver(b"m1", "me", 0, b"hi")
    assert sorted(sent_to(out, EagerPush)) == ["a", "b", "c"]
    assert all(s.message.round == 1 for s in sends(out, EagerPush))
    assert len(pt.new_message_id()) == 16


def test_first_copy_is_delivered_and_forwarded_duplicates_prune_the_link() -> None:
    pt = tree("a", "b", "c")
    out = pt.receive("a", EagerPush(b"m", "o", 3, b"x"), 1.0)
    assert of(out, Deliver) == [Deliver(b"m", "o", 3, b"x")]
    assert sorted(sent_to(out, EagerPush)) == ["b", "c"]
    assert all(s.message.round == 4 for s in sends(out, EagerPush))
    out = pt.receive("b", EagerPush(b"m", "o", 5, b"x"), 1.1)
    assert not of(out, Deliver) and sent_to(out, Prune) == ["b"]
    assert "b" in pt.lazy and "b" not in pt.eager
    pt.receive("c", Prune(), 1.2)
    assert "c" in pt.lazy
    # the next message goes eagerly to "a" only and is announced lazily to b and c
    out = pt.broadcast(b"y", 2.0, message_id=b"n")
    assert sent_to(out, EagerPush) == ["a"]
    assert timers(out)[("plumtree", "ihave")] == 2.0 + pt.config.ihave_interval
    out = pt.timer(("plumtree", "ihave"), 2.05)
    assert sorted(sent_to(out, IHave)) == ["b", "c"]
    assert all(s.message.entries == ((b"n", 1),) for s in sends(out, IHave))


def test_ihave_batches_several_messages_per_round() -> None:
    pt = tree("a")
    pt.receive("x", Prune(), 0.0)
    pt.receive("a", Prune(), 0.0)
    for i in range(5):
        pt.broadcast(b"p", 0.0, message_id=b"m%d" % i)
    out = pt.timer(("plumtree", "ihave"), 0.05)
    [ihave] = sends(out, IHave)
    assert len(ihave.message.entries) == 5


def test_missing_message_is_grafted_from_announcers_in_turn() -> None:
    pt = tree("a", "b", "c", graft_timeout=0.25, graft_retry=0.1)
    out = pt.receive("a", IHave(((b"m", 2),)), 0.0)
    assert timers(out)[("plumtree", "missing", b"m")] == 0.25
    pt.receive("b", IHave(((b"m", 3),)), 0.1)
    out = pt.timer(("plumtree", "missing", b"m"), 0.25)
    [graft] = sends(out, Graft)
    assert graft.dest == "a" and graft.message == Graft(b"m", 2) and "a" in pt.eager
    assert timers(out)[("plumtree", "missing", b"m")] == 0.35
    out = pt.timer(("plumtree", "missing", b"m"), 0.35)
    assert sent_to(out, Graft) == ["b"]
    out = pt.receive("b", EagerPush(b"m", "o", 3, b"x"), 0.4)
    assert of(out, Deliver)
    assert pt.timer(("plumtree", "missing", b"m"), 0.45) == []


def test_payload_arriving_cancels_the_missing_timer() -> None:
    pt = tree("a", "b")
    pt.receive("a", IHave(((b"m", 2),)), 0.0)
    out = pt.receive("b", EagerPush(b"m", "o", 2, b"x"), 0.1)
    assert CancelTimer(("plumtree", "missing", b"m")) in out
    assert pt.timer(("plumtree", "missing", b"m"), 0.25) == []


def test_graft_is_answered_from_the_store_and_makes_the_link_eager() -> None:
    pt = tree("a", "b")
    pt.receive("a", EagerPush(b"m", "o", 1, b"x"), 0.0)
    pt.receive("b", Prune(), 0.0)
    out = pt.receive("b", Graft(b"m", 2), 0.5)
    assert sends(out, EagerPush)[0].message == EagerPush(b"m", "o", 2, b"x")
    assert "b" in pt.eager
    assert sends(pt.receive("b", Graft(b"unknown", 1), 0.6), EagerPush) == []
    # after the store ttl the payload is gone
    assert sends(pt.receive("b", Graft(b"m", 2), 0.0 + pt.config.store_ttl + 1), EagerPush) == []


def test_a_much_shorter_lazy_path_replaces_the_eager_one() -> None:
    pt = tree("a", "b", optimization_threshold=3)
    pt.receive("b", Prune(), 0.0)  # b is lazy
    pt.receive("a", EagerPush(b"m", "o", 9, b"x"), 0.0)
    out = pt.receive("b", IHave(((b"m", 2),)), 0.1)
    assert sent_to(out, Graft) == ["b"] and sent_to(out, Prune) == ["a"]
    assert "b" in pt.eager and "a" in pt.lazy
    off = tree("a", "b", optimization_threshold=0)
    off.receive("b", Prune(), 0.0)
    off.receive("a", EagerPush(b"m", "o", 9, b"x"), 0.0)
    assert off.receive("b", IHave(((b"m", 2),)), 0.1) == []


def test_neighbor_down_forgets_the_peer_everywhere() -> None:
    pt = tree("a", "b")
    pt.receive("a", IHave(((b"m", 2),)), 0.0)
    pt.neighbor_down("a", 0.1)
    assert "a" not in pt.eager and "a" not in pt.lazy
    assert pt.timer(("plumtree", "missing", b"m"), 0.25) == []  # no announcer left


def test_seen_cache_is_bounded_by_count_and_age() -> None:
    pt = tree("a", seen_cache_size=3, seen_ttl=10.0)
    for i in range(5):
        pt.receive("a", EagerPush(b"m%d" % i, "o", 1, b""), float(i))
    assert len(pt._seen) == 3
    assert not pt.has_seen(b"m0", 5.0) and pt.has_seen(b"m4", 5.0)
    assert not pt.has_seen(b"m4", 15.0)  # aged out
    cache: BoundedCache[int] = BoundedCache(2)
    cache.put("x", 1, expires=5.0, now=0.0)
    cache.put("y", 2, expires=5.0, now=0.0)
    cache.put("z", 3, expires=5.0, now=0.0)
    assert list(cache.keys()) == ["y", "z"] and cache.evicted == 1
    cache.expire(6.0)
    assert len(cache) == 0
