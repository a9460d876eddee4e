"""Causal-order broadcast: the sans-IO core, by hand, by hypothesis and in the seeded simulation."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import ConfigurationError, DecodeError
from phoenix_trio._causal import (
    Ack,
    Bye,
    CausalBroadcast,
    CausalDelivery,
    CausalGap,
    CausalOrderOverflow,
    Data,
    Hello,
    Welcome,
    decode,
    encode,
    stream_id,
)
from phoenix_trio.effects import Send, SetTimer
from phoenix_trio.sim import Simulation


def sends(effects: list[Any], to: str | None = None) -> list[Any]:
    return [e.message for e in effects if type(e) is Send and (to is None or e.dest == to)]


def deliveries(effects: list[Any]) -> list[Any]:
    return [e for e in effects if type(e) in (CausalDelivery, CausalGap)]


def joined_pair(**options: Any) -> tuple[CausalBroadcast, CausalBroadcast]:
    """Two members that completed the handshake both ways, by hand."""
    a = CausalBroadcast("a", 1, members=["a", "b"], **options)
    b = CausalBroadcast("b", 1, members=["a", "b"], **options)
    pump({"a": a, "b": b}, [("a", e) for e in a.start(0.0)] + [("b", e) for e in b.start(0.0)])
    assert a.joined() == {"b"} and b.joined() == {"a"}
    return a, b


def pump(cores: dict[str, CausalBroadcast], pending: list[tuple[str, Any]], now: float = 0.0) -> list[tuple[str, Any]]:
    """Deliver every Send at once, in order, until quiet; returns what the application got."""
    got = []
    while pending:
        src, effect = pending.pop(0)
        if type(effect) is Send:
            if effect.dest in cores:
                pending += [(effect.dest, e) for e in cores[effect.dest].receive(src, effect.message, now)]
        elif type(effect) in (CausalDelivery, CausalGap):
            got.append((src, effect))
    return got


# -- the core, by hand -----------------------------------------------------------------------------


def test_start_says_hello_to_every_other_member_and_arms_its_timers() -> None:
    core = CausalBroadcast("a", 7, members=["a", "b", "c"])
    effects = core.start(1.0)
    assert sends(effects, "b") == [Hello(stream_id("a", 7))] and sends(effects, "c") == [Hello("a/7")]
    assert {e.key for e in effects if type(e) is SetTimer} == {"causal.ack", "causal.retry"}
    with pytest.raises(ConfigurationError):
        CausalBroadcast("z", 1, members=["a", "b"])


def test_broadcast_delivers_locally_at_once_and_sends_to_joined_members() -> None:
    a, b = joined_pair()
    effects = a.broadcast({"x": 1}, 1.0)
    [local] = deliveries(effects)
    assert (local.sender, local.seq, local.payload, dict(local.clock.entries)) == ("a", 1, {"x": 1}, {"a/1": 1})
    [data] = sends(effects, "b")
    [remote] = deliveries(b.receive("a", data, 1.0))
    assert (remote.sender, remote.stream, remote.seq, remote.payload) == ("a", "a/1", 1, {"x": 1})
    assert remote.clock == local.clock


def test_a_message_waits_for_what_it_depends_on_and_duplicates_are_dropped() -> None:
    cores = {n: CausalBroadcast(n, 1, members="abc") for n in "abc"}
    pump(cores, [(n, e) for n, c in cores.items() for e in c.start(0.0)])
    a, b, c = cores["a"], cores["b"], cores["c"]
    question = a.broadcast("question", 1.0)
    [m1], [m1_for_c] = sends(question, "b"), sends(question, "c")
    b.receive("a", m1, 1.0)
    [m2] = sends(b.broadcast("answer", 1.1), "c")
    assert m2.deps == {"a/1": 1}
    # c gets the answer before the question: held back.
    assert deliveries(c.receive("b", m2, 1.2)) == [] and c.held == 1
    got = deliveries(c.receive("a", m1_for_c, 1.3))
    assert [d.payload for d in got] == ["question", "answer"] and c.held == 0
    # Both again: duplicates, dropped and counted.
    assert deliveries(c.receive("a", m1_for_c, 1.4)) == [] and deliveries(c.receive("b", m2, 1.4)) == []
    assert c.statistics().duplicates == 2


def test_messages_from_a_member_are_delivered_in_its_order_whatever_the_arrival_order() -> None:
    a, b = joined_pair()
    msgs = [sends(a.broadcast(i, 1.0), "b")[0] for i in range(20)]
    rng = random.Random(3)
    rng.shuffle(msgs)
    got = [d.payload for m in msgs for d in deliveries(b.receive("a", m, 2.0))]
    assert got == list(range(20))


def test_nothing_is_delivered_from_a_stream_before_its_welcome_and_the_baseline_skips_older_messages() -> None:
    a = CausalBroadcast("a", 1, members=["a", "b"])
    a.start(0.0)
    early = [a.broadcast(i, 0.0) for i in range(3)]  # nobody joined yet: sent to nobody
    assert all(sends(e) == [] for e in early)
    b = CausalBroadcast("b", 1, members=["a", "b"])
    [hello] = sends(b.start(0.0), "a")
    replies = a.receive("b", hello, 0.1)
    welcome = next(m for m in sends(replies, "b") if type(m) is Welcome)
    assert welcome == Welcome("a/1", 3, "b/1")
    [m4] = sends(a.broadcast("after join", 0.2), "b")
    # The data overtakes the welcome: held until the start of a's stream is known.
    assert deliveries(b.receive("a", m4, 0.3)) == [] and b.held == 1
    got = deliveries(b.receive("a", welcome, 0.4))
    assert [(d.seq, d.payload) for d in got] == [(4, "after join")]
    # A welcome meant for another stream of this node (an earlier incarnation) is ignored.
    assert b.receive("a", Welcome("a/1", 0, "b/0"), 0.5) == []


def test_acknowledged_messages_are_forgotten_and_a_stuck_member_gets_them_again() -> None:
    a, b = joined_pair(retry_interval=0.2)
    lost = [sends(a.broadcast(i, 1.0), "b")[0] for i in range(5)]
    assert a.pending == 5
    b.receive("a", lost[0], 1.0)
    [ack] = sends(b.timer("causal.ack", 1.05), "a")
    assert ack == Ack("a/1", "b/1", 1)
    a.receive("b", ack, 1.06)
    assert a.pending == 4
    resent = sends(a.timer("causal.retry", 1.3), "b")
    assert [m.seq for m in resent if type(m) is Data] == [2, 3, 4, 5]
    for m in resent:
        b.receive("a", m, 1.31)
    a.receive("b", sends(b.timer("causal.ack", 1.35), "a")[0], 1.36)
    assert a.pending == 0 and a.statistics().resent == 4


def test_overflowing_the_hold_back_buffer_raises_a_clear_error_and_fails_the_member() -> None:
    cores = {n: CausalBroadcast(n, 1, members="abc", max_held=3) for n in "abc"}
    pump(cores, [(n, e) for n, c in cores.items() for e in c.start(0.0)])
    a, b, c = cores["a"], cores["b"], cores["c"]
    for i in range(4):
        b.receive("a", sends(a.broadcast(i, 1.0), "b")[0], 1.0)  # c never gets a's messages
    answers = [sends(b.broadcast(f"re {i}", 1.0), "c")[0] for i in range(4)]
    for m in answers[:3]:
        c.receive("b", m, 1.1)
    with pytest.raises(CausalOrderOverflow) as info:
        c.receive("b", answers[3], 1.1)
    assert info.value.held == 4 and info.value.max_held == 3 and info.value.missing == {"a/1": 4}
    assert "a/1 (have 0, need 4)" in str(info.value)
    with pytest.raises(CausalOrderOverflow):
        c.timer("causal.ack", 1.2)
    assert c.failed is info.value


def test_a_dead_members_missing_messages_are_reported_as_a_gap_after_the_timeout() -> None:
    cores = {n: CausalBroadcast(n, 1, members="abc", gap_timeout=1.0) for n in "abc"}
    pump(cores, [(n, e) for n, c in cores.items() for e in c.start(0.0)])
    a, b, c = cores["a"], cores["b"], cores["c"]
    b.receive("a", sends(a.broadcast("lost", 1.0), "b")[0], 1.0)
    b.receive("a", sends(a.broadcast("lost too", 1.0), "b")[0], 1.0)
    answer = sends(b.broadcast("answer", 1.0), "c")[0]
    assert deliveries(c.receive("b", answer, 1.1)) == []
    # a dies; its messages to c were never sent.
    assert c.node_down("a", 1.5) == []
    assert deliveries(c.timer("causal.retry", 2.0)) == []  # within the timeout: still waiting
    got = deliveries(c.timer("causal.retry", 2.6))
    assert got[0] == CausalGap("a", "a/1", 1, 2)
    assert [d.payload for d in got[1:]] == ["answer"]
    # After that, a message needing more of a's messages gets its gap at once.
    b.receive("a", Data("a/1", 3, {}, "late for c"), 2.7)
    again = sends(b.broadcast("again", 2.8), "c")[0]
    got = deliveries(c.receive("b", again, 2.9))
    assert got == [CausalGap("a", "a/1", 3, 3), got[1]] and got[1].payload == "again"


def test_a_wrongly_dead_member_that_comes_back_in_time_loses_nothing() -> None:
    a, b = joined_pair(gap_timeout=1.0, retry_interval=0.2)
    b.node_down("a", 1.0)
    lost = sends(a.broadcast("sent while b thought a dead", 1.0), "b")
    assert lost  # a still sends; the network lost it
    b.node_up("a", 1.5)
    # b still has b's pending kept for a; a resends its message since b's ack is stuck.
    resent = sends(a.timer("causal.retry", 1.6), "b")
    assert [d.payload for m in resent for d in deliveries(b.receive("a", m, 1.7))] == ["sent while b thought a dead"]
    assert deliveries(b.timer("causal.retry", 5.0)) == []


def test_bye_ends_a_stream_and_a_restarted_member_is_a_new_stream() -> None:
    a, b = joined_pair(gap_timeout=0.5)
    b.receive("a", sends(a.broadcast(1, 1.0), "b")[0], 1.0)
    [bye] = [m for m in sends(a.close(1.1), "b") if type(m) is Bye]
    assert bye == Bye("a/1", 1)
    b.receive("a", bye, 1.1)
    assert b.statistics().peers == 0 and b.joined() == set()
    a2 = CausalBroadcast("a", 2, members=["a", "b"])
    out = b.receive("a", sends(a2.start(2.0), "b")[0], 2.0)
    assert Welcome("b/1", 0, "a/2") in sends(out, "a")
    # The old stream's Hello is now stale.
    assert b.receive("a", Hello("a/1"), 2.1) == []


def test_codec_round_trips_and_refuses_malformed_payloads() -> None:
    messages = [Data("a/1", 3, {"b/2": 5}, b"\x81\xa1k\x01"), Hello("a/1"), Welcome("b/ff", 9, "a/1"), Ack("a/1", "b/ff", 2), Bye("c/1", 0)]
    assert decode(b"".join(encode(m) for m in messages)) == messages
    bad = [
        msgpack.packb([0, "a/1", 0, {}, b""]),
        msgpack.packb([0, "a/1", 1, {}, "not bytes"]),
        msgpack.packb([0, "nostream", 1, {}, b""]),
        msgpack.packb([0, "a/1", 1, {"b/1": -1}, b""]),
        msgpack.packb([9, "a/1"]),
        msgpack.packb("hello"),
        b"\xc1",
        msgpack.packb([1, "a/zz"]),
    ]
    for payload in bad:
        with pytest.raises(DecodeError):
            decode(payload)


# -- hypothesis: any arrival order, with duplicates -------------------------------------------------


@st.composite
def histories(draw: Any) -> tuple[list[tuple[str, Any]], list[int]]:
    """A causal history among members a, b, c built by a random schedule, and an arrival order at d."""
    steps = draw(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2)), min_size=1, max_size=40))
    return steps, draw(st.randoms(use_true_random=False))


@settings(max_examples=150, deadline=None)
@given(histories(), st.floats(0, 0.5))
def test_any_arrival_order_with_duplicates_delivers_each_message_once_after_its_dependencies(history: Any, dup: float) -> None:
    steps, rng = history
    names = "abcd"
    cores = {n: CausalBroadcast(n, 1, members=names) for n in names}
    pump(cores, [(n, e) for n, c in cores.items() for e in c.start(0.0)])
    # a, b and c broadcast and (sometimes) receive each other's messages first; d sees it all later.
    inbox: dict[str, list[Any]] = defaultdict(list)
    for_d: list[tuple[str, Any]] = []
    happened: dict[tuple[str, int], set[tuple[str, int]]] = {}  # message -> all it causally follows
    seen: dict[str, set[tuple[str, int]]] = {n: set() for n in "abc"}
    for i, (who, absorb) in enumerate(steps):
        for _ in range(absorb):  # take some messages from the inbox first
            if inbox[who]:
                src, m = inbox[who].pop(rng.randrange(len(inbox[who])))
                for d in deliveries(cores[who].receive(src, m, 1.0)):
                    seen[who] |= happened[(d.sender, d.seq)] | {(d.sender, d.seq)}
        effects = cores[who].broadcast(i, 1.0)
        [mine] = deliveries(effects)
        happened[(who, mine.seq)] = set(seen[who])
        seen[who].add((who, mine.seq))
        for e in effects:
            if type(e) is Send:
                (for_d if e.dest == "d" else inbox[e.dest]).append((who, e.message))
    arrivals = for_d + [x for x in for_d if rng.random() < dup]
    rng.shuffle(arrivals)
    d = cores["d"]
    order: list[tuple[str, int]] = []
    for src, m in arrivals:
        for got in deliveries(d.receive(src, m, 2.0)):
            assert type(got) is CausalDelivery
            key = (got.sender, got.seq)
            assert happened[key] <= set(order), f"{key} delivered before {happened[key] - set(order)}"
            assert key not in order
            order.append(key)
    assert sorted(order) == sorted(happened) and d.held == 0


# -- the seeded simulation -----------------------------------------------------------------------------


class SimHarness:
    """Members of one group in :class:`Simulation`; records and checks every delivery."""

    def __init__(self, seed: int, names: str, **sim_options: Any) -> None:
        self.sim = Simulation(seed=seed, on_effect=self.on_effect, **sim_options)
        self.rng = random.Random(seed * 7 + 1)
        self.names = names
        self.incarnation: dict[str, int] = defaultdict(int)
        self.got: dict[str, list[Any]] = defaultdict(list)
        self.covered: dict[str, dict[str, int]] = defaultdict(dict)  # member -> stream -> contiguous count
        self.sent: dict[str, int] = defaultdict(int)  # stream -> messages broadcast
        self.chatter = 0.0
        self.replies = 150
        self.cores: dict[str, CausalBroadcast] = {}
        for n in names:
            self.start(n)

    def start(self, name: str) -> None:
        self.incarnation[name] += 1
        core = CausalBroadcast(name, self.incarnation[name], members=self.names, gap_timeout=0.5, max_held=100_000)
        self.cores[name] = core
        self.sim.add(name, core)

    def on_effect(self, node: Any, effect: Any) -> None:
        core = self.cores[node]
        if type(effect) is CausalGap:
            cov = self.covered[core.me]
            assert cov.get(effect.stream, 0) + 1 == effect.first or effect.stream not in cov
            cov[effect.stream] = effect.last
            self.got[core.me].append(effect)
            return
        assert type(effect) is CausalDelivery
        cov = self.covered[core.me]
        if effect.stream != core.me:
            # Every dependency was delivered (or declared lost) here before; nothing skipped in the stream.
            for k, v in effect.clock.entries.items():
                if k != effect.stream:
                    assert cov.get(k, 0) >= v or self.before_join(core, k, v), (node, effect, cov)
            assert cov.get(effect.stream, 0) + 1 == effect.seq or self.before_join(core, effect.stream, effect.seq - 1)
        cov[effect.stream] = effect.seq
        self.got[core.me].append(effect)
        # Chatter: sometimes answer what we just delivered, building causal chains.
        if self.replies and effect.stream != core.me and self.rng.random() < self.chatter:
            self.replies -= 1
            self.broadcast(node, self.sim.now)

    def before_join(self, core: CausalBroadcast, stream: str, upto: int) -> bool:
        """Messages a member never saw because they were sent before it joined (its baseline)."""
        return core.delivered.get(stream, 0) >= upto and self.covered[core.me].get(stream) is None

    def broadcast(self, name: str, at: float) -> None:
        def go(now: float, name: str = name) -> Any:
            core = self.cores[name]
            self.sent[core.me] += 1
            return core.broadcast(("msg", core.me, self.sent[core.me]), now)

        self.sim.call(name, go, at=at)

    def joined(self, names: str) -> bool:
        return all(self.cores[n].joined() >= set(names) - {n} for n in names)


def run_seed(seed: int) -> SimHarness:
    rng = random.Random(seed)
    h = SimHarness(
        seed,
        "abcd"[: rng.choice([3, 4])],
        latency=(0.001, rng.choice([0.005, 0.05, 0.2])),
        loss=rng.choice([0.0, 0.02, 0.1]),
        duplicate=rng.choice([0.0, 0.05, 0.2]),
    )
    h.chatter = rng.choice([0.0, 0.2, 0.5])
    names = h.names
    assert h.sim.run_until(lambda: h.joined(names), timeout=30), f"seed {seed}: group never formed"
    t0 = h.sim.now
    for _ in range(rng.randrange(20, 120)):
        h.broadcast(rng.choice(names), t0 + rng.uniform(0, 1.0))
    crashed = None
    if rng.random() < 0.3:
        crashed = rng.choice(names)
        h.sim.run(t0 + rng.uniform(0.2, 1.0))
        h.sim.crash(crashed)
        for n in names:
            if n != crashed:
                h.sim.call(n, lambda now, c=h.cores[n], x=crashed: c.node_down(x, now))
    survivors = [n for n in names if n != crashed]
    h.sim.run(t0 + 1.0)  # every scheduled broadcast has happened
    if crashed is not None and rng.random() < 0.5:
        # The crashed member restarts: a new stream, which joins and takes part again.
        h.start(crashed)
        survivors.append(crashed)
        assert h.sim.run_until(lambda: h.joined(names), timeout=30), f"seed {seed}: restarted member never joined"
        t1 = h.sim.now
        for _ in range(rng.randrange(10, 40)):
            h.broadcast(rng.choice(names), t1 + rng.uniform(0, 0.5))
        h.sim.run(t1 + 0.5)
        crashed = None

    def settled() -> bool:
        everyone = {h.cores[n].me for n in survivors}
        for n in survivors:
            core = h.cores[n]
            if core.held or core.pending:
                return False
            for s in everyone:
                if core.delivered.get(s, 0) < h.sent[s]:
                    return False
        return True

    assert h.sim.run_until(settled, timeout=60), f"seed {seed}: did not settle"
    # Exactly once, and every survivor delivered every survivor's messages (a restarted
    # member: everything after its join, without holes).
    for n in survivors:
        keys = [(d.stream, d.seq) for d in h.got[h.cores[n].me] if type(d) is CausalDelivery]
        assert len(keys) == len(set(keys)), f"seed {seed}: duplicate delivery at {n}"
        for s in (h.cores[m].me for m in survivors):
            mine = sorted(seq for k, seq in keys if k == s)
            first = 1 if h.incarnation[n] == 1 else (mine[0] if mine else h.sent[s] + 1)
            assert mine == list(range(first, h.sent[s] + 1)), f"seed {seed}: {n} delivered {s} {mine}"
        if all(i == 1 for i in h.incarnation.values()) and crashed is None:
            assert not [g for g in h.got[h.cores[n].me] if type(g) is CausalGap]
    return h


@pytest.mark.parametrize("seed", range(200))
def test_simulation_random_delays_loss_duplication_and_crashes(seed: int) -> None:
    run_seed(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(200, 5200))
def test_simulation_soak(seed: int) -> None:
    run_seed(seed)
