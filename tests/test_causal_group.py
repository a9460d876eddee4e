"""The causal-order group on real nodes (loopback TCP, one Trio run), with injected faults."""

from __future__ import annotations

import random
from collections import defaultdict
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

import phoenix_trio as px
from phoenix_trio._causal import CausalDelivery, CausalGap, CausalOrderOverflow
from phoenix_trio._causal_group import open_causal_group
from phoenix_trio._service import ServiceFaults

from .test_node import cluster


class Checker:
    """Checks each member's deliveries as they come: dependencies first, each message once."""

    def __init__(self) -> None:
        self.have: dict[str, dict[str, int]] = defaultdict(dict)  # member stream -> stream -> contiguous count
        self.with_deps = 0  # deliveries that depended on another member's messages

    def check(self, me: str, d: CausalDelivery | CausalGap) -> None:
        have = self.have[me]
        if type(d) is CausalGap:
            assert have.get(d.stream, 0) + 1 == d.first
            have[d.stream] = d.last
            return
        for stream, count in d.clock.entries.items():
            if stream != d.stream:
                assert have.get(stream, 0) >= count, f"{me} delivered {d.stream}:{d.seq} before {stream}:{count}"
                self.with_deps += 1
        assert have.get(d.stream, 0) + 1 == d.seq, f"{me}: {d.stream}:{d.seq} out of order or twice"
        have[d.stream] = d.seq


async def exchange(groups: list[Any], per_member: int, checker: Checker, seed: int) -> None:
    """Every member broadcasts ``per_member`` messages while it delivers the others' (so its
    later messages depend on what it delivered), until each member has everything."""
    streams = [g.stream for g in groups]

    async def member(i: int) -> None:
        group = groups[i]
        rng = random.Random(seed + i)
        async with trio.open_nursery() as nursery:

            async def talk() -> None:
                for k in range(per_member):
                    await group.broadcast({"i": k, "pad": "x" * rng.randrange(100)})
                    if rng.random() < 0.3:
                        await trio.sleep(rng.uniform(0, 0.003))  # pacing, so deliveries interleave

            nursery.start_soon(talk)
            have = checker.have[group.stream]
            async for d in group:
                checker.check(group.stream, d)
                if all(have.get(s, 0) >= per_member for s in streams):
                    break

    async with trio.open_nursery() as nursery:
        for i in range(len(groups)):
            nursery.start_soon(member, i)


async def test_three_members_deliver_in_causal_order_under_injected_delays_reordering_loss_and_duplication() -> None:
    names = ["n0", "n1", "n2"]
    checker = Checker()
    async with cluster(3) as nodes, AsyncExitStack() as stack:
        groups = [
            await stack.enter_async_context(
                open_causal_group(
                    node, "chat", members=names, retry_interval=0.05, ack_interval=0.01,
                    faults=ServiceFaults(seed=i, delay=(0.0, 0.03), duplicate=0.05, drop=0.03),
                )
            )
            for i, node in enumerate(nodes)
        ]  # fmt: skip
        for g in groups:
            await g.wait_joined(timeout=10)
        with trio.fail_after(60):
            await exchange(groups, 200, checker, seed=1)
        services = [g._runner.service for g in groups]
        assert sum(s.faults_dropped for s in services) > 0 and sum(s.faults_duplicated for s in services) > 0
        stats = [g.statistics() for g in groups]
        assert sum(s.resent for s in stats) > 0 and sum(s.duplicates for s in stats) > 0
        assert max(s.held_peak for s in stats) > 0  # messages really waited for their dependencies
        assert checker.with_deps > 1000 and all(s.gaps == 0 for s in stats)
        for g in groups:
            assert g.clock.entries == {s: 200 for s in (x.stream for x in groups)}
        with trio.fail_after(10):
            for g in groups:
                while g.pending:
                    await g._runner.space.park()


async def until(group: Any, predicate: Any, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, re-checked after every iteration of the group's loop."""
    with trio.fail_after(timeout):
        while not predicate():
            await group._runner.space.park()


async def test_a_member_that_leaves_says_goodbye_and_nothing_is_reported_lost() -> None:
    names = ["n0", "n1", "n2"]
    async with cluster(3) as (a, b, c):
        async with open_causal_group(a, "g", members=names) as ga, open_causal_group(b, "g", members=names) as gb:
            async with open_causal_group(c, "g", members=names) as gc:
                for g in (ga, gb, gc):
                    await g.wait_joined()
                await gc.broadcast("bye soon")
                for g in (ga, gb, gc):
                    d = await g.receive()
                    assert (d.sender, d.payload) == ("n2", "bye soon")
            # c lingered until both acknowledged, then said goodbye.
            await until(ga, lambda: ga.joined() == {"n1"} and gb.joined() == {"n0"})
            await ga.broadcast("still here")
            assert (await gb.receive()).payload == "still here"
            assert (await ga.receive()).payload == "still here"
            assert ga.statistics().gaps == gb.statistics().gaps == 0 and ga.statistics().peers == 1


async def test_a_dead_members_lost_message_is_reported_as_a_gap_before_what_depends_on_it() -> None:
    names = ["n0", "n1", "nb"]
    async with cluster(2) as (a, c):
        async with open_causal_group(a, "g", members=names, gap_timeout=0.2) as ga, open_causal_group(
            c, "g", members=names, gap_timeout=0.2
        ) as gc:
            async with px.open_node("nb", listen="127.0.0.1:0", seeds=[a.address]) as b:
                await b.wait_for_members(2)
                async with open_causal_group(b, "g", members=names, linger=0) as gb:
                    for g in (ga, gb, gc):
                        await g.wait_joined()
                    # Everything b sends to a vanishes (its Bye too).
                    service = gb._runner.service
                    original = service.send_nowait
                    service.send_nowait = lambda node, p: True if node == "n0" else original(node, p)  # type: ignore[method-assign]
                    await gb.broadcast("lost for a")
                    assert (await gc.receive()).payload == "lost for a"
                    await gc.broadcast("answer")
                    await until(ga, lambda: ga.statistics().held == 1)
            # b's node left: a reports b's lost message, then delivers what depended on it.
            with trio.fail_after(10):
                gap = await ga.receive()
                assert type(gap) is CausalGap and gap.sender == "nb" and (gap.first, gap.last) == (1, 1)
                answer = await ga.receive()
                assert (answer.sender, answer.payload) == ("n1", "answer")
                assert answer.clock[gap.stream] == 1


async def test_overflow_fails_the_member_with_a_clear_error() -> None:
    names = ["n0", "n1", "n2"]
    async with cluster(3) as (a, b, c):
        async with open_causal_group(a, "g", members=names, linger=0) as ga, open_causal_group(
            b, "g", members=names, linger=0
        ) as gb, open_causal_group(c, "g", members=names, max_held=5) as gc:
            for g in (ga, gb, gc):
                await g.wait_joined()
            # c stops hearing a, while b's messages (which depend on a's) keep coming.
            service = ga._runner.service
            original = service.send_nowait
            service.send_nowait = lambda node, p: True if node == "n2" else original(node, p)  # type: ignore[method-assign]
            for i in range(10):
                await ga.broadcast(i)
            for _ in range(10):
                await gb.receive()
            for i in range(10):
                await gb.broadcast(("re", i))
            with trio.fail_after(10):
                with pytest.raises(CausalOrderOverflow) as info:
                    async for _ in gc:
                        pass
            assert info.value.max_held == 5 and info.value.missing == {ga.stream: 10}
            with pytest.raises(CausalOrderOverflow):
                await gc.broadcast("x")


async def test_broadcast_refuses_what_msgpack_cannot_encode_and_members_must_include_this_node() -> None:
    async with cluster(1) as (a,):
        with pytest.raises(px.ConfigurationError):
            async with open_causal_group(a, "g", members=["x", "y"]):
                pass
        async with open_causal_group(a, "g", members=["n0"]) as g:
            with pytest.raises(px.EncodeError):
                await g.broadcast(object())
            await g.broadcast({"alone": True})
            d = await g.receive()
            assert d.payload == {"alone": True} and d.clock.entries == {g.stream: 1}
        with pytest.raises(trio.ClosedResourceError):
            await g.broadcast(1)
