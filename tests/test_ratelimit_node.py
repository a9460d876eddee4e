"""Distributed buckets on real nodes (loopback TCP, one Trio run)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import trio
import trio.testing

import phoenix_trio as px
from phoenix_trio._ratelimit_node import open_rate_limiter

from .test_ratelimit import max_in_window


async def hammer(limiter: Any, bucket: str, until: float, log: list[float]) -> None:
    with trio.move_on_at(until):
        while True:
            await limiter.acquire(bucket)
            log.append(trio.current_time())


async def test_three_nodes_share_one_bucket_within_its_rate_and_carry_on_when_the_owner_leaves() -> None:
    names = ["n0", "n1", "n2"]
    capacity, rate, ttl = 10.0, 300.0, 0.3
    leave = [trio.Event() for _ in names]

    async def member(i: int, seeds: list[Any], *, task_status: Any) -> None:
        async with px.open_node(names[i], listen="127.0.0.1:0", seeds=seeds, failure_timeout=0.6, heartbeat_interval=0.1) as node:
            await node.wait_for_members(len(seeds) and 1)
            async with open_rate_limiter(node, members=names, lease_ttl=ttl) as limiter:
                task_status.started((node, limiter))
                await leave[i].wait()

    async with trio.open_nursery() as members:
        first, first_limiter = await members.start(member, 0, [])
        started = [(first, first_limiter)] + [await members.start(member, i, [first.address]) for i in (1, 2)]
        nodes = [n for n, _ in started]
        limiters = [lim for _, lim in started]
        for node in nodes:
            await node.wait_for_members(2)
        await trio.testing.wait_all_tasks_blocked()  # every limiter has seen the membership events
        for limiter in limiters:
            limiter.create_bucket("api", capacity, rate, distributed=True)
            limiter.create_bucket("local", 5, 1)  # local buckets live beside them
        owners = {limiter.owner("api") for limiter in limiters}
        assert len(owners) == 1
        owner = names.index(owners.pop())
        logs: dict[int, list[float]] = defaultdict(list)
        start = trio.current_time()
        leave_at, end = start + 1.5, start + 3.0

        async def owner_then_leave() -> None:
            async with trio.open_nursery() as mine:
                for _ in range(3):
                    mine.start_soon(hammer, limiters[owner], "api", leave_at, logs[owner])
            leave[owner].set()  # the owner's node leaves; the others take over the bucket

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner_then_leave)
                for i, limiter in enumerate(limiters):
                    if i != owner:
                        for _ in range(3):
                            nursery.start_soon(hammer, limiter, "api", end, logs[i])
        times = sorted(t for log in logs.values() for t in log)
        for width in (0.05, 0.2, 0.5, 1.0):
            got = max_in_window(times, [1.0] * len(times), width)
            assert got <= capacity + rate * width + 1e-6, (width, got)
        steady = [t for t in times if start + 0.5 <= t < leave_at]
        assert len(steady) >= 0.8 * rate * 1.0, len(steady)
        per_node = [sum(1 for t in logs[i] if start + 0.5 <= t < leave_at) for i in range(3)]
        assert min(per_node) >= 0.6 * max(per_node), per_node  # fair shares
        after = [t for t in times if leave_at + 0.5 <= t < end]
        assert len(after) >= 0.8 * rate * 1.0, len(after)  # the survivors got the whole rate
        survivor = limiters[(owner + 1) % 3]
        assert survivor.owner("api") != names[owner]
        assert survivor.acquire_tokens("local", 5) == 0.0
        for event in leave:
            event.set()
