"""Rate limiting: buckets by id on the C core, the sliding window, adaptive throttling,
and the lease protocol of distributed buckets (by hand, by hypothesis, in the simulation)."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import ConfigurationError, DecodeError, core
from phoenix_trio._lease import (
    LeaseGrant,
    LeaseProtocol,
    LeaseRelease,
    LeaseRequest,
    LeaseRetry,
    decode,
    encode,
    owner_of,
)
from phoenix_trio._ratelimit import AdaptiveThrottle, BucketNotFound, RateLimited, RateLimiter, SlidingWindow
from phoenix_trio.effects import Send
from phoenix_trio.sim import Simulation


def max_in_window(times: list[float], weights: list[float], width: float) -> float:
    """The largest total weight of events within any closed interval of length ``width``."""
    best = 0.0
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    for i, t in enumerate(times):
        j = bisect_right(times, t + width)
        best = max(best, prefix[j] - prefix[i])
    return best


# -- the registry on the C bucket ---------------------------------------------------------------


async def test_buckets_by_id_grant_or_say_how_long_to_wait(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter()
    limiter.create_bucket("api", capacity=10, refill_rate=5)
    assert limiter.acquire_tokens("api", 10) == 0.0  # starts full: the burst
    assert limiter.acquire_tokens("api", 2) == pytest.approx(0.4)  # nothing taken
    assert limiter.available("api") == 0.0
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire("api", 5)
    assert info.value.retry_after == pytest.approx(1.0) and info.value.bucket_id == "api"
    start = trio.current_time()
    await limiter.acquire("api", 5)
    assert trio.current_time() - start == pytest.approx(1.0)
    with pytest.raises(BucketNotFound):
        limiter.acquire_tokens("nope")
    with pytest.raises(KeyError):
        limiter.available("nope")
    with pytest.raises(ConfigurationError):
        limiter.acquire_tokens("api", 11)  # above capacity: never grantable
    with pytest.raises(ConfigurationError):
        limiter.create_bucket("api", 1, 1)
    with pytest.raises(ConfigurationError):
        limiter.create_bucket("d", 1, 1, distributed=True)  # needs a node limiter
    info2 = limiter.describe("api")
    assert (info2.kind, info2.capacity, info2.rate) == ("token_bucket", 10.0, 5.0)
    limiter.remove_bucket("api")
    assert "api" not in limiter and limiter.buckets() == []


async def test_waiters_are_released_at_the_refill_rate(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter()
    limiter.create_bucket("b", capacity=5, refill_rate=100)
    granted: list[float] = []

    async def worker() -> None:
        for _ in range(50):
            await limiter.acquire("b")
            granted.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
    assert len(granted) == 200
    # 5 at once, then 100 per second: the last at (200 - 5) / 100 s.
    assert granted[-1] - start == pytest.approx(1.95, abs=1e-6)
    times = [t - start for t in granted]
    assert max_in_window(times, [1.0] * 200, 0.5) <= 5 + 100 * 0.5 + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    st.floats(1, 100),
    st.floats(0, 1000),
    st.lists(st.tuples(st.floats(0, 2.0), st.floats(0, 1)), min_size=1, max_size=200),
    st.sampled_from(["c", "python"]),
)
def test_a_token_bucket_never_grants_more_than_capacity_plus_rate_times_any_window(
    capacity: float, rate: float, steps: list[tuple[float, float]], impl: str
) -> None:
    from phoenix_trio.core import _pure

    cls = core.TokenBucket if impl == "c" else _pure.TokenBucket
    bucket = cls(capacity, rate, 0.0)
    now = 0.0
    times, weights = [], []
    for dt, frac in steps:
        now += dt * 0.01
        n = frac * capacity
        if bucket.acquire(n, now) == 0.0:
            times.append(now)
            weights.append(n)
    for width in (0.0, 0.001, 0.01, 0.1, 1.0):
        assert max_in_window(times, weights, width) <= capacity + rate * width + 1e-6 * (1 + capacity)


# -- the sliding window ---------------------------------------------------------------------------------


def test_sliding_window_counts_slots_and_says_when_room_frees() -> None:
    w = SlidingWindow(10, 1.0, sub_windows=10)
    for i in range(10):
        assert w.acquire(1, 0.05 + i * 0.005) == 0.0  # all in slot 0
    wait = w.acquire(1, 0.5)
    # Slot 0 ([0, 0.1)) stops counting once now - 1.0 >= 0.1.
    assert wait == pytest.approx(0.6)
    assert w.acquire(1, 0.5 + wait - 1e-6) > 0
    assert w.acquire(1, 0.5 + wait) == 0.0
    assert w.available(1.1) == 9
    with pytest.raises(ConfigurationError):
        w.acquire(11, 2.0)
    with pytest.raises(ConfigurationError):
        SlidingWindow(0, 1.0)
    w.set_limit(20)
    assert w.acquire(15, 3.0) == 0.0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 50),
    st.floats(0.01, 10),
    st.integers(1, 20),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 5)), min_size=1, max_size=300),
)
def test_sliding_window_never_admits_more_than_the_limit_in_any_window(
    limit: int, window: float, k: int, steps: list[tuple[float, int]]
) -> None:
    w = SlidingWindow(limit, window, sub_windows=k)
    now = 0.0
    times: list[float] = []
    weights: list[float] = []
    for dt, n in steps:
        now += dt * window / 10
        n = min(n, limit)
        wait = w.acquire(n, now)
        if wait == 0.0:
            if n:
                times.append(now)
                weights.append(n)
        else:
            assert wait > 0
            # Exact wait: refused a hair before, granted at (on a copy, nobody else acting).
            probe = SlidingWindow(limit, window, sub_windows=k)
            probe._slots = type(w._slots)([list(s) for s in w._slots])
            probe._count = w._count
            assert probe.acquire(n, now + wait) == 0.0
    # Half-open windows (t - window, t]: events exactly ``window`` apart may both count.
    assert max_in_window(times, weights, window * (1 - 1e-9)) <= limit


def test_sliding_window_admits_nearly_the_limit_at_a_steady_rate() -> None:
    w = SlidingWindow(100, 1.0, sub_windows=10)
    admitted = sum(1 for i in range(100_000) if w.acquire(1, i * 0.0001) == 0.0)  # 10 s, 10,000/s offered
    assert 100 * 10 * 10 / 11 * 0.95 <= admitted <= 100 * 10 + 100


def test_adaptive_throttle_sheds_load_when_the_backend_refuses() -> None:
    rng = random.Random(1)
    throttle = AdaptiveThrottle(window=10.0, k=2.0, rng=rng)
    now = 0.0
    for _ in range(1000):  # a healthy backend: nothing is throttled
        now += 0.001
        assert throttle.allow(now)
        throttle.record(True, now)
    sent = 0
    for _ in range(20_000):  # the backend accepts 10% from now on
        now += 0.001
        if throttle.allow(now):
            sent += 1
            throttle.record(rng.random() < 0.1, now)
    # Sends settle near k * accepts: about 20% of attempts once the window has turned over.
    assert 0.15 * 20_000 < sent < 0.45 * 20_000
    assert throttle.reject_probability(now) > 0.6


# -- the lease protocol, by hand -------------------------------------------------------------------------


def deliver_all(nodes: dict[str, LeaseProtocol], effects: list[tuple[str, Any]], now: float) -> None:
    while effects:
        src, e = effects.pop(0)
        if type(e) is Send:
            effects += [(e.dest, x) for x in nodes[e.dest].receive(src, e.message, now)]


def test_owner_is_rendezvous_hashed_and_moves_only_when_its_node_leaves() -> None:
    nodes = [f"n{i}" for i in range(5)]
    owners = {b: owner_of(b, nodes) for b in (f"bucket-{i}" for i in range(200))}
    assert len(set(owners.values())) == 5  # spread over the members
    without = {b: owner_of(b, [n for n in nodes if n != "n2"]) for b in owners}
    assert all(without[b] == o for b, o in owners.items() if o != "n2")
    assert owner_of("x", []) is None


def test_codec_round_trips_and_refuses_malformed_payloads() -> None:
    msgs = [
        LeaseRequest("b", 3, 10.0, 5.0, 1.0, 2.0, 0.5, 3.5, True, 2.0),
        LeaseGrant("b", 3, 1.5, 2.5, 1.0),
        LeaseRetry("b", 3, "grace", 0.25),
        LeaseRelease("b"),
    ]
    assert decode(b"".join(encode(m) for m in msgs)) == msgs
    import msgpack

    for bad in ([0, "b", 1, 1.0], [1, "b", 1, -1.0, 1.0, 1.0], [1, "b", 1, float("nan"), 1.0, 1.0], [7, "b"], [3, ""], "x"):
        with pytest.raises(DecodeError):
            decode(msgpack.packb(bad))


def test_three_members_get_fair_shares_that_never_exceed_the_bucket() -> None:
    names = ["a", "b", "c"]
    nodes = {n: LeaseProtocol(n, members=names, ttl=1.0) for n in names}
    for p in nodes.values():
        assert p.set_alive(names, 0.0) == []
    buckets = {}
    effects: list[tuple[str, Any]] = []
    for n, p in nodes.items():
        buckets[n], out = p.add_bucket("api", 30.0, 300.0, 0.0)
        effects += [(n, e) for e in out]
    deliver_all(nodes, effects, 0.0)
    owner = nodes[owner_of("api", names)]
    # Everybody reported: no grace. Max-min fair among three hungry members, in order of asking.
    assert owner.committed("api", 0.0)[0] <= 300.0 + 1e-9
    # The first two asked while the owner waited for everyone's report (grace): told to retry.
    assert sorted(b.lease_rate for b in buckets.values()) == [0.0, 0.0, 100.0]
    for step in range(1, 12):  # renewals converge to equal shares
        now = step * 0.34
        effects = [(n, e) for n, p in nodes.items() for e in p.timer(LeaseProtocol.TIMER, now)]
        for n, b in buckets.items():
            b.acquire(1, now)  # hungry: they use what they get
            b.hungry = True
        deliver_all(nodes, effects, now)
        committed_rate, committed_cap = owner.committed("api", now)
        assert committed_rate <= 300.0 + 1e-9 and committed_cap <= 30.0 + 1e-9
    assert [round(b.lease_rate) for b in buckets.values()] == [100, 100, 100]
    assert [round(b.lease_capacity) for b in buckets.values()] == [10, 10, 10]


def test_a_new_owner_waits_out_the_old_leases_unless_everyone_reported() -> None:
    p = LeaseProtocol("a", members=["a", "b", "c"], ttl=1.0)
    p.set_alive(["a", "b", "c"], 0.0)
    bucket_id = next(b for b in (f"k{i}" for i in range(100)) if owner_of(b, ["a", "b", "c"]) == "a")
    req = LeaseRequest(bucket_id, 1, 10.0, 100.0, 50.0, 5.0, 0.8, 40.0, False, 0.0)
    [reply] = p.receive("b", req, 5.0)
    assert reply.message == LeaseRetry(bucket_id, 1, "grace", 1.0)
    # The old owner's lease to b counts until it ends (now + 0.8).
    p.receive("c", LeaseRequest(bucket_id, 1, 10.0, 100.0, 0.0, 0.0, 0.0, 0.0, True, 0.0), 5.1)
    _, out = p.add_bucket(bucket_id, 10.0, 100.0, 5.2)  # a reports too: grace is over
    assert p.bucket(bucket_id).lease_rate + 50.0 <= 100.0 + 1e-9
    assert p.committed(bucket_id, 5.2)[0] <= 100.0 + 1e-9
    assert p.committed(bucket_id, 5.9)[0] <= 100.0 + 1e-9
    assert p.receive("zz", req, 6.0) == []  # not a member


# -- the lease protocol in the simulation ----------------------------------------------------------------


class LeaseSim:
    """Members sharing one distributed bucket; clients on every member try to take tokens."""

    def __init__(self, seed: int, names: list[str], capacity: float, rate: float, ttl: float, **sim: Any) -> None:
        self.sim = Simulation(seed=seed, **sim)
        self.rng = random.Random(seed + 1)
        self.names = names
        self.capacity, self.rate = capacity, rate
        self.nodes: dict[str, LeaseProtocol] = {}
        self.pending: dict[str, list[Any]] = defaultdict(list)
        self.grants: list[tuple[float, float, str]] = []
        self.max_committed = 0.0
        for n in names:
            p = LeaseProtocol(n, members=names, ttl=ttl, on_effects=self.pending[n].extend)
            p.set_alive(names, 0.0)
            self.nodes[n] = p
            self.sim.add(n, p)
            self.sim.call(n, lambda now, p=p: p.add_bucket("api", capacity, rate, now)[1])

    def client(self, node: str, start: float, stop: float, mean_gap: float, size: float = 1.0) -> None:
        t = start
        while t < stop:
            t += self.rng.expovariate(1 / mean_gap)
            self.sim.call(node, lambda now, node=node, n=size: self.try_take(node, n, now), at=t)

    def try_take(self, node: str, n: float, now: float) -> list[Any]:
        p = self.nodes[node]
        if p.bucket("api").acquire(n, now) == 0.0:
            self.grants.append((now, n, node))
        out, self.pending[node][:] = list(self.pending[node]), []
        return out

    def check_owner(self) -> None:
        now = self.sim.now
        in_force_rate = in_force_cap = 0.0
        for n in self.sim.alive:
            p = self.nodes[n]
            rate, cap = p.committed("api", now)
            assert rate <= self.rate * (1 + 1e-9) and cap <= self.capacity * (1 + 1e-9)
            self.max_committed = max(self.max_committed, rate)
            b = p.bucket("api") if "api" in p._members else None
            if b is not None and now < b.expires:
                in_force_rate += b.lease_rate
                in_force_cap += b.lease_capacity
        # The leases the members actually run on never add up to more than the bucket.
        assert in_force_rate <= self.rate * (1 + 1e-9) and in_force_cap <= self.capacity * (1 + 1e-9)


def run_lease_seed(seed: int) -> LeaseSim:
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"][: rng.choice([2, 3, 4])]
    capacity, rate, ttl = rng.choice([5.0, 20.0, 100.0]), rng.choice([50.0, 200.0, 1000.0]), rng.choice([0.3, 1.0])
    ls = LeaseSim(seed, names, capacity, rate, ttl, latency=(0.0005, rng.choice([0.002, 0.02])), loss=rng.choice([0.0, 0.01]))
    end = 6.0
    for n in names:
        # Phases of load (overloaded, at capacity, light or idle), so shares keep moving.
        t = 0.0
        while t < end:
            length = rng.uniform(0.2, 2.0)
            load = rng.choice([0.2, 1.0, 3.0, None])
            if load is not None:
                ls.client(n, t, min(t + length, end), load / rate * len(names), size=rng.choice([1.0, 1.0, min(3.0, capacity)]))
            t += length
    crash_at = rng.uniform(1.0, 4.0) if rng.random() < 0.4 else None
    victim = owner_of("api", names)
    while ls.sim.step():
        ls.check_owner()
        if crash_at is not None and ls.sim.now >= crash_at:
            # The owner dies; after a failure timeout the others see it gone.
            ls.sim.crash(victim)
            survivors = [n for n in names if n != victim]
            for n in survivors:
                ls.sim.call(n, lambda now, p=ls.nodes[n], s=survivors: p.set_alive(s, now), at=ls.sim.now + 0.5)
            crash_at = None
        if ls.sim.now > end + 2 * ttl:
            break
    times = [t for t, _, _ in ls.grants]
    weights = [w for _, w, _ in ls.grants]
    for width in (0.01, 0.1, 0.5, 1.0, 3.0):
        got = max_in_window(times, weights, width)
        assert got <= capacity + rate * width + 1e-6, f"seed {seed}: {got} tokens within {width} s"
    return ls


@pytest.mark.parametrize("seed", range(40))
def test_simulation_the_cluster_never_exceeds_capacity_plus_rate_times_t(seed: int) -> None:
    run_lease_seed(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40, 1040))
def test_simulation_soak(seed: int) -> None:
    run_lease_seed(seed)


def test_simulation_overloaded_members_use_most_of_the_rate() -> None:
    ls = LeaseSim(7, ["a", "b", "c"], 20.0, 300.0, 0.5, latency=(0.0005, 0.002))
    for n in ls.names:
        ls.client(n, 0.0, 10.0, 1 / 600)  # each asks for twice the whole rate
    ls.sim.run(10.0)
    per_node = defaultdict(float)
    total = 0.0
    for t, w, n in ls.grants:
        if 2.0 <= t < 10.0:
            per_node[n] += w
            total += w
    assert 0.85 * 300 * 8 <= total <= 300 * 8 + 20
    assert all(abs(v - total / 3) < 0.15 * total / 3 for v in per_node.values()), per_node


async def test_a_cancelled_acquire_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter()
    limiter.create_bucket("b", capacity=2, refill_rate=1)
    limiter.acquire_tokens("b", 2)
    with trio.move_on_after(0.5):
        await limiter.acquire("b", 1)  # needs 1 s
    assert limiter.available("b") == pytest.approx(0.5)
    with trio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire("b", 0.1)  # cancelled before taking
    assert limiter.available("b") == pytest.approx(0.5)
