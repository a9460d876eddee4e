"""Sans-IO cores of the routing layer: circuit breaker, load balancer, membership, directory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from phoenix_trio import AgentNotFound, CircuitOpen, ConfigurationError, NodeUnreachable
from phoenix_trio._balancer import CandidateStats, LoadBalancer, PowerOfTwoChoices, RandomChoice, RoundRobin
from phoenix_trio._breaker import BreakerConfig, CircuitBreaker
from phoenix_trio._directory import Directory
from phoenix_trio._membership import TICK, Connect, Disconnect, MemberEvent, MemberInfo, Membership, MembershipConfig
from phoenix_trio.effects import SetTimer

# -- circuit breaker ---------------------------------------------------------------------------


def test_breaker_opens_on_failure_rate_and_recovers_through_probes() -> None:
    b = CircuitBreaker("t", BreakerConfig(failure_rate_threshold=0.5, minimum_calls=4, window=10, reset_timeout=5))
    for now in (0.0, 0.1, 0.2):
        b.allow(now)
        b.record_failure(now)
    assert b.state(0.3) == "closed"  # below minimum_calls
    b.allow(0.3)
    b.record_success(0.3)
    b.allow(0.4)
    b.record_failure(0.4)  # 4/5 failed
    assert b.state(0.4) == "open"
    with pytest.raises(CircuitOpen) as caught:
        b.allow(1.0)
    assert caught.value.retry_after == pytest.approx(4.4)
    assert b.state(5.4) == "half_open"
    b.allow(5.4)  # the probe
    with pytest.raises(CircuitOpen):
        b.allow(5.5)  # only one probe at a time
    b.record_failure(5.6)
    assert b.state(5.7) == "open"
    b.allow(10.7)
    b.record_success(10.8)
    assert b.state(10.8) == "closed"
    assert [t.new for t in b.transitions] == ["open", "half_open", "open", "half_open", "closed"]
    assert b.stats(10.8).opened == 2 and b.stats(10.8).rejected == 2


def test_breaker_window_forgets_old_failures() -> None:
    b = CircuitBreaker("t", BreakerConfig(minimum_calls=3, window=1.0, buckets=10))
    for i in range(2):
        b.allow(i * 0.1)
        b.record_failure(i * 0.1)
    # Much later: the old failures are outside the window.
    for i in range(5):
        now = 10 + i * 0.01
        b.allow(now)
        b.record_success(now)
    b.allow(10.1)
    b.record_failure(10.1)
    assert b.state(10.1) == "closed"
    assert b.stats(10.1).calls_in_window == 6


def test_breaker_cancelled_probe_frees_its_slot() -> None:
    b = CircuitBreaker("t", BreakerConfig(minimum_calls=1, reset_timeout=1))
    b.allow(0)
    b.record_failure(0)
    b.allow(2)
    b.release_probe()
    b.allow(2.1)  # would raise if the slot were still taken
    b.record_success(2.2)
    assert b.state(2.2) == "closed"


def test_breaker_config_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        BreakerConfig(failure_rate_threshold=0)
    with pytest.raises(ConfigurationError):
        BreakerConfig(half_open_probes=1, probes_to_close=2)


class BreakerMachine(RuleBasedStateMachine):
    """Random outcomes and clock steps: the breaker never lets calls through while open."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.breaker = CircuitBreaker("t", BreakerConfig(minimum_calls=3, window=2, reset_timeout=1, half_open_probes=2, probes_to_close=2))
        self.in_flight = 0

    @rule(dt=st.floats(0, 0.7))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(ok=st.booleans())
    def call(self, ok: bool) -> None:
        state = self.breaker.state(self.now)
        try:
            self.breaker.allow(self.now)
        except CircuitOpen as exc:
            assert state in ("open", "half_open")
            assert exc.retry_after >= 0
            return
        assert state in ("closed", "half_open")
        (self.breaker.record_success if ok else self.breaker.record_failure)(self.now)

    @invariant()
    def stats_are_consistent(self) -> None:
        s = self.breaker.stats(self.now)
        assert 0 <= s.failures_in_window <= s.calls_in_window
        assert s.state in ("closed", "open", "half_open")


TestBreakerMachine = BreakerMachine.TestCase


# -- load balancer ---------------------------------------------------------------------------------


def test_power_of_two_prefers_cheaper_candidates() -> None:
    lb = LoadBalancer(PowerOfTwoChoices(), rng=random.Random(1))
    lb.stats_for("fast").latency_ewma = 0.001
    lb.stats_for("slow").latency_ewma = 0.1
    lb.stats_for("busy").latency_ewma = 0.001
    lb.stats_for("busy").outstanding = 50
    picks = [lb.choose(["fast", "slow", "busy"]) for _ in range(3000)]
    assert picks.count("fast") > 1900  # wins every pair it is in (2/3 of them)
    assert picks.count("slow") < picks.count("fast") and picks.count("busy") < picks.count("fast")


def test_candidate_stats_ewma_and_failures() -> None:
    s = CandidateStats()
    s.started()
    s.finished(0.010)
    assert s.outstanding == 0 and 0.001 < s.latency_ewma < 0.010
    before = s.latency_ewma
    s.started()
    s.finished(None, failed=True)
    assert s.failures == 1 and s.latency_ewma > before


def test_other_strategies() -> None:
    rr = LoadBalancer(RoundRobin())
    assert [rr.choose(["a", "b", "c"]) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    rnd = LoadBalancer(RandomChoice(), rng=random.Random(0))
    assert {rnd.choose(["a", "b"]) for _ in range(50)} == {"a", "b"}
    with pytest.raises(ValueError):
        rr.choose([])


# -- membership --------------------------------------------------------------------------------------


def kinds(effects) -> list[tuple[str, str]]:
    return [(e.kind, e.node_id) for e in effects if isinstance(e, MemberEvent)]


def make(seeds=(("10.0.0.2", 7000),), **config) -> Membership:
    return Membership(
        MemberInfo("a", ("10.0.0.1", 7000), 1),
        list(seeds),
        config=MembershipConfig(heartbeat_interval=0.5, failure_timeout=2.0, **config),
        rng=random.Random(0),
    )


def test_join_through_seed_and_learn_the_rest() -> None:
    m = make()
    start = m.start(0.0)
    assert Connect(("10.0.0.2", 7000), None) in start
    assert any(isinstance(e, SetTimer) for e in start)
    m.connect_done(("10.0.0.2", 7000))
    assert kinds(m.connected(MemberInfo("b", ("10.0.0.2", 7000), 5), 0.1, via=("10.0.0.2", 7000))) == [("joined", "b")]
    effects = m.learned([MemberInfo("b", ("10.0.0.2", 7000), 5), MemberInfo("c", ("10.0.0.3", 7000), 9), MemberInfo("a", ("10.0.0.1", 7000), 1)], 0.2)
    assert effects == [Connect(("10.0.0.3", 7000), None)]
    assert m.learned([MemberInfo("c", ("10.0.0.3", 7000), 9)], 0.3) == []  # already trying
    assert sorted(i.node_id for i in m.view()) == ["a", "b"]


def test_silence_makes_suspect_then_dead_and_disconnects() -> None:
    m = make()
    m.start(0.0)
    m.connected(MemberInfo("b", ("10.0.0.2", 7000), 5), 0.0)
    assert kinds(m.timer(TICK, 0.9)) == []
    assert kinds(m.heard("b", 0.9)) == []
    effects = m.timer(TICK, 1.95)
    assert kinds(effects) == [("suspect", "b")]
    assert kinds(m.heard("b", 2.0)) == [("alive", "b")]
    effects = m.timer(TICK, 4.1)
    assert kinds(effects) == [("dead", "b")]
    assert Disconnect("b", "silent for 2.10 s") in effects
    assert m.members["b"].status == "dead" and m.alive() == []


def test_backpressure_stall_suspends_failure_detection() -> None:
    m = make()
    m.connected(MemberInfo("b", ("10.0.0.2", 7000), 5), 0.0)
    m.stall("b", True, 0.0)
    assert kinds(m.timer(TICK, 30.0)) == []
    m.stall("b", False, 30.0)
    assert kinds(m.timer(TICK, 31.0)) == [("suspect", "b")]


def test_goodbye_restart_and_stale_incarnations() -> None:
    m = make()
    m.connected(MemberInfo("b", ("10.0.0.2", 7000), 5), 0.0)
    assert kinds(m.goodbye("b", 1.0)) == [("left", "b")]
    assert m.learned([MemberInfo("b", ("10.0.0.2", 7000), 5)], 1.1) == []  # do not chase a node that left
    assert kinds(m.connected(MemberInfo("b", ("10.0.0.2", 7001), 6), 2.0)) == [("restarted", "b")]
    assert m.members["b"].address == ("10.0.0.2", 7001)
    assert m.connected(MemberInfo("b", ("10.0.0.2", 7000), 4), 2.1) == [Disconnect("b", "stale incarnation")]


def test_dead_members_are_retried_with_backoff_then_forgotten() -> None:
    m = make(seeds=(), forget_after=10.0)
    m.connected(MemberInfo("b", ("10.0.0.2", 7000), 5), 0.0)
    m.disconnected("b", 0.5)
    m.connect_done(("10.0.0.2", 7000))
    attempts = []
    now = 0.5
    while now < 15:
        now += 0.25
        for effect in m.timer(TICK, now):
            if isinstance(effect, Connect):
                attempts.append(now)
                m.connect_done(effect.address)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert attempts and gaps[-1] >= gaps[0]  # backing off
    assert "b" not in m.members  # forgotten after forget_after
    assert max(gaps) <= MembershipConfig().reconnect_max + 0.5


def test_nodes_without_a_listener_are_not_advertised_or_dialled() -> None:
    m = make(seeds=())
    m.connected(MemberInfo("client", ("10.0.0.9", 0), 3), 0.0)
    assert [i.node_id for i in m.view()] == ["a"]
    assert m.disconnected("client", 1.0) == []


def test_member_limit_bounds_state() -> None:
    m = make(seeds=(), max_members=3)
    for i in range(3):
        m.connected(MemberInfo(f"n{i}", ("10.0.1.1", 7000 + i), 1), 0.0)
    assert m.connected(MemberInfo("n9", ("10.0.1.1", 7009), 1), 0.0) == [Disconnect("n9", "member limit reached")]
    assert m.learned([MemberInfo(f"x{i}", ("10.0.2.1", 7000 + i), 1) for i in range(100)], 0.0) == []


@settings(max_examples=50)
@given(st.lists(st.tuples(st.sampled_from(["connect", "heard", "disconnect", "goodbye", "tick", "stall"]), st.integers(0, 4), st.floats(0, 3)), max_size=80))
def test_membership_never_reports_nonsense(ops) -> None:
    m = make(seeds=())
    now = 0.0
    for op, n, dt in ops:
        now += dt
        node = f"n{n}"
        if op == "connect":
            m.connected(MemberInfo(node, ("10.0.0.5", 7000 + n), 1), now)
        elif op == "heard":
            m.heard(node, now)
        elif op == "disconnect":
            m.disconnected(node, now)
            m.connect_done(("10.0.0.5", 7000 + n))
        elif op == "goodbye":
            m.goodbye(node, now)
        elif op == "stall":
            m.stall(node, n % 2 == 0, now)
        else:
            for effect in m.timer(TICK, now):
                if isinstance(effect, Connect):
                    m.connect_done(effect.address)
            # Right after a tick, nobody silent for the failure timeout is still alive.
            for member in m.members.values():
                if member.status in ("alive", "suspect") and not member.stalled:
                    assert now - member.last_heard < 2.0
        for member in m.members.values():
            assert member.status in ("alive", "suspect", "dead", "left")


# -- directory -------------------------------------------------------------------------------------


def test_directory_locates_groups_and_tombstones() -> None:
    d = Directory("a")
    d.add_local("x", "g")
    d.update_remote("b", "y", "g", True)
    d.update_remote("c", "z", None, True)
    assert d.locate("x", 0).node is None and d.locate("y", 0).node == "b"
    assert d.group_members("g") == ["x", "y"]
    assert d.node_gone("b", 10.0) == ["y"]
    assert d.group_members("g") == ["x"]
    with pytest.raises(NodeUnreachable) as caught:
        d.locate("y", 11.0)
    assert caught.value.node_id == "b"
    with pytest.raises(AgentNotFound):
        d.locate("y", 10_000.0)  # tombstone expired
    d.replace_node("c", [("w", None)])
    assert d.agents() == {"x": "a", "w": "c"}
    d.update_remote("c", "w", None, False)
    with pytest.raises(AgentNotFound):
        d.locate("w", 0)
