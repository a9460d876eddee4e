"""PersistBarrier: the driver's side of persist-before-respond."""

from __future__ import annotations

from phoenix_trio.effects import Send, SetTimer
from phoenix_trio.raft import Persist, PersistBarrier, ProposalResult


def test_effects_before_the_first_persist_go_now_the_rest_wait_for_the_sync() -> None:
    b = PersistBarrier()
    p1 = Persist(1, "a")
    ready = b.feed([SetTimer("t", 1.0), p1, Send("b", "vote"), ProposalResult("r", 1)])
    assert ready == [SetTimer("t", 1.0)] and b.pending
    # a later input with no persist of its own still queues behind the unsynced one
    assert b.feed([Send("c", "ack")]) == []
    p2 = Persist(2, None)
    assert b.feed([p2, Send("c", "more")]) == []
    assert b.persists() == [p1, p2]
    assert b.synced() == [Send("b", "vote"), ProposalResult("r", 1), Send("c", "ack"), Send("c", "more")]
    assert not b.pending
    assert b.feed([Send("b", "free")]) == [Send("b", "free")]


def test_a_crash_returns_the_unsynced_persists_and_drops_the_held_effects() -> None:
    b = PersistBarrier()
    p = Persist(3, "a")
    b.feed([p, Send("b", "never")])
    assert b.crash() == [p]
    assert not b.pending and b.synced() == []
