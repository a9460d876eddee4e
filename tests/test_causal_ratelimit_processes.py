"""Causal order and a shared token bucket across real OS processes on loopback.

The test process runs a node of its own and drives three ``phoenix-trio node`` processes
through their ``causal`` and ``ratelimit`` built-in agents, following their JSON event
lines instead of sleeping.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio

import phoenix_trio as px
from phoenix_trio._node_process import NodeProcess

from .test_ratelimit import max_in_window

pytestmark = pytest.mark.processes

NAMES = ["p1", "p2", "p3"]


async def start_processes(nursery: trio.Nursery, node: px.Node, kind: str) -> list[NodeProcess]:
    seed = f"{node.address[0]}:{node.address[1]}"
    procs = [NodeProcess(name, seeds=[seed], agents=[f"{kind}:{kind}-{name}"], failure_timeout=1.0, heartbeat=0.2) for name in NAMES]
    async with trio.open_nursery() as starting:
        for proc in procs:
            starting.start_soon(proc.start, nursery)
    await node.wait_for_members(len(NAMES), timeout=20)
    for name in NAMES:
        await node.wait_for_agent(f"{kind}-{name}", timeout=20)
    for proc in procs:  # a full mesh: every process sees the others
        for other in NAMES:
            if other != proc.name:
                await proc.wait_for("member_joined", node=other, timeout=20)
    return procs


async def ask_all(node: px.Node, kind: str, orders: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    replies: dict[str, Any] = {}

    async def ask(name: str) -> None:
        reply = await node.request(f"{kind}-{name}", orders[name], timeout=timeout)
        assert "error" not in reply.data, reply.data
        replies[name] = reply.data

    async with trio.open_nursery() as nursery:
        for name in orders:
            nursery.start_soon(ask, name)
    return replies


async def test_causal_order_across_three_processes_with_random_delays_and_reordering() -> None:
    count = 300
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=1.0, heartbeat_interval=0.2) as node:
        async with trio.open_nursery() as nursery:
            procs = await start_processes(nursery, node, "causal")
            faults = {"delay": [0.0, 0.02], "duplicate": 0.05, "drop": 0.02}
            opened = await ask_all(
                node, "causal", {n: {"open": {"name": "chat", "members": NAMES, "faults": {"seed": i, **faults}}} for i, n in enumerate(NAMES)}
            )
            streams = {n: opened[n]["stream"] for n in NAMES}
            await ask_all(node, "causal", {n: {"broadcast": {"name": "chat", "count": count, "seed": i}} for i, n in enumerate(NAMES)})
            logs = await ask_all(node, "causal", {n: {"log": {"name": "chat", "until": 3 * count}} for n in NAMES})
            for name in NAMES:
                have: dict[str, int] = defaultdict(int)
                depended = 0
                for entry in logs[name]["log"]:
                    assert entry[0] != "gap", entry
                    stream, seq, clock = entry
                    assert seq == have[stream] + 1, f"{name}: {stream}:{seq} after {have[stream]}"
                    for other, n in clock.items():
                        if other != stream:
                            assert have[other] >= n, f"{name} delivered {stream}:{seq} before {other}:{n}"
                            depended += n > 0
                    have[stream] = seq
                assert dict(have) == {s: count for s in streams.values()}
                stats = logs[name]["stats"]
                assert stats["gaps"] == 0 and stats["held"] == 0
                assert depended > count  # messages really depended on other processes' messages
            all_stats = [logs[n]["stats"] for n in NAMES]
            assert max(s["held_peak"] for s in all_stats) > 0  # some waited for their dependencies
            assert sum(s["duplicates"] for s in all_stats) > 0 and sum(s["resent"] for s in all_stats) > 0
            for proc in procs:
                assert await proc.stop() == 0
            nursery.cancel_scope.cancel()


async def test_a_token_bucket_shared_by_three_processes_holds_the_global_rate() -> None:
    capacity, rate, seconds = 20.0, 600.0, 4.0
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=1.0, heartbeat_interval=0.2) as node:
        async with trio.open_nursery() as nursery:
            procs = await start_processes(nursery, node, "ratelimit")
            spec = {"members": NAMES, "bucket": "global", "capacity": capacity, "rate": rate, "ttl": 0.5}
            opened = await ask_all(node, "ratelimit", {n: {"open": spec} for n in NAMES})
            assert len({opened[n]["owner"] for n in NAMES}) == 1
            runs = await ask_all(node, "ratelimit", {n: {"run": {"bucket": "global", "seconds": seconds}} for n in NAMES})
            times = sorted(t for n in NAMES for t in runs[n]["times"])
            per_process = {n: len(runs[n]["times"]) for n in NAMES}
            # The hard bound: at most capacity + rate * w in any window w (20 ms of slack for
            # the wall-clock stamps, taken after each grant in three processes).
            for width in (0.05, 0.1, 0.5, 1.0, 2.0):
                got = max_in_window(times, [1.0] * len(times), width)
                assert got <= capacity + rate * (width + 0.02), (width, got)
            # The rate, from 1 s after the first grant until the first process stopped: within
            # 5% of the global rate (capacity + rate * w is the most a window w can hold).
            begin = min(runs[n]["times"][0] for n in NAMES)
            finish = min(runs[n]["times"][-1] for n in NAMES)
            assert finish - begin > 2.5
            steady = [t for t in times if begin + 1.0 <= t < finish]
            measured = len(steady) / (finish - begin - 1.0)
            assert 0.95 * rate <= measured <= rate + (capacity + 0.02 * rate) / (finish - begin - 1.0), (measured, per_process)
            assert min(per_process.values()) >= 0.6 * max(per_process.values()), per_process
            for proc in procs:
                assert await proc.stop() == 0
            nursery.cancel_scope.cancel()


async def test_the_shared_bucket_survives_sigkill_of_its_owner_process() -> None:
    import time

    from phoenix_trio._lease import owner_of
    from phoenix_trio._ratelimit_node import open_rate_limiter

    capacity, rate, ttl = 20.0, 400.0, 0.5
    members = ["t", *NAMES]
    bucket = next(b for b in (f"g{i}" for i in range(100)) if owner_of(b, members) in NAMES)
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=1.0, heartbeat_interval=0.2) as node:
        async with trio.open_nursery() as nursery, open_rate_limiter(node, members=members, lease_ttl=ttl) as limiter:
            procs = await start_processes(nursery, node, "ratelimit")
            limiter.create_bucket(bucket, capacity, rate, distributed=True)
            spec = {"members": members, "bucket": bucket, "capacity": capacity, "rate": rate, "ttl": ttl}
            opened = await ask_all(node, "ratelimit", {n: {"open": spec} for n in NAMES})
            owner = opened["p1"]["owner"]
            assert owner in NAMES and {opened[n]["owner"] for n in NAMES} == {owner} == {limiter.owner(bucket)}
            victim = procs[NAMES.index(owner)]
            runs: dict[str, Any] = {}
            mine: list[float] = []
            killed_at = 0.0

            async def run(name: str) -> None:
                try:
                    reply = await node.request(f"ratelimit-{name}", {"run": {"bucket": bucket, "seconds": 6.0}}, timeout=30)
                except px.NodeUnreachable:
                    return  # the victim
                runs[name] = reply.data["times"]

            async with trio.open_nursery() as running:
                for name in NAMES:
                    running.start_soon(run, name)
                with trio.move_on_after(6.0):
                    while True:
                        await limiter.acquire(bucket)
                        mine.append(time.time())
                        if len(mine) == 150:
                            killed_at = time.time()
                            victim.kill()
            assert killed_at and set(runs) == set(NAMES) - {owner}
            times = sorted(mine + [t for n in runs for t in runs[n]])
            for width in (0.05, 0.5, 1.0):
                got = max_in_window(times, [1.0] * len(times), width)
                assert got <= capacity + rate * (width + 0.02), (width, got)
            # Failure detection (1 s) and a new owner; then the survivors share the whole rate.
            finish = min([mine[-1]] + [runs[n][-1] for n in runs])
            assert finish - killed_at > 3.0
            after = [t for t in times if killed_at + 2.0 <= t < finish]
            span = finish - killed_at - 2.0
            assert 0.9 * rate * span <= len(after) <= rate * span + capacity + 0.02 * rate, (len(after), span)
            gap = max(b - a for a, b in zip(times, times[1:]) if a >= killed_at - 0.1)
            assert gap < 2.0, gap
            assert limiter.owner(bucket) != owner
            for proc in procs:
                if proc is not victim:
                    assert await proc.stop() == 0
            nursery.cancel_scope.cancel()
