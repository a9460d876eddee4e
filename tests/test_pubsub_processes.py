"""Pub-sub and pipelines across real OS processes on loopback.

The test process runs one node and conducts ``python -m phoenix_trio node`` processes
through their built-in agents (``subscriber``, ``driver``, ``stage``); it waits on
answers and event lines, never on sleeps.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import phoenix_trio as px
from phoenix_trio._node_process import NodeProcess

pytestmark = pytest.mark.processes

FAILURE_TIMEOUT = 1.0
HEARTBEAT = 0.2


async def start(nursery: trio.Nursery, node: px.Node, specs: dict[str, list[str]]) -> dict[str, NodeProcess]:
    seed = f"{node.address[0]}:{node.address[1]}"
    procs = {
        name: NodeProcess(name, seeds=[seed], agents=agents, failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT)
        for name, agents in specs.items()
    }
    async with trio.open_nursery() as starting:
        for proc in procs.values():
            starting.start_soon(proc.start, nursery)
    await node.wait_for_members(len(specs), timeout=20)
    for agents in specs.values():
        for spec in agents:
            await node.wait_for_agent(spec.split(":")[1].split("@")[0], timeout=20)
    return procs


async def ask(node: px.Node, target: str, order: Any, timeout: float = 30) -> Any:
    reply = await node.request(target, order, timeout=timeout)
    if isinstance(reply.data, dict) and "error" in reply.data:
        raise AssertionError(f"{target} answered {reply.data}")
    return reply.data


async def test_publish_across_three_processes_with_subscribers_on_each() -> None:
    names = ["p1", "p2", "p3"]
    count = 2000
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start(nursery, node, {n: [f"subscriber:sub-{n}", f"driver:drv-{n}"] for n in names})
            for name in names:  # a full mesh first, so subscribing reaches every process
                for other in names:
                    if other != name:
                        await procs[name].wait_for("member_joined", node=other, timeout=20)
            for name in names:
                # two matching subscriptions per process: each publication still crosses once;
                # the subscriber answers once every connected node has applied them
                await ask(node, f"sub-{name}", {"subscribe": "news.#", "capacity": 10_000})
                await ask(node, f"sub-{name}", {"subscribe": "news.*", "capacity": 10_000})
            before = {n: (await ask(node, f"drv-{n}", "node-stats"))["connections"] for n in names}
            async with trio.open_nursery() as publishing:
                for name in names:
                    publishing.start_soon(ask, node, f"drv-{name}", {"publish": "news.sports", "count": count, "size": 50})
            for name in names:
                reports = await ask(node, f"sub-{name}", {"wait": len(names) * count})
                for report in reports:
                    assert report["received"] == len(names) * count and report["dropped"] == 0
                    assert report["publishers"] == names  # from every process, its own included
                    assert report["out_of_order"] == 0
            after = {n: (await ask(node, f"drv-{n}", "node-stats"))["connections"] for n in names}
            for name in names:
                for other in names:
                    if other != name:
                        sent = after[name][other]["messages_sent"] - before[name][other]["messages_sent"]
                        assert sent == count, (name, other, sent)  # once per node, not per subscription
                assert after[name]["t"]["messages_sent"] - before[name]["t"]["messages_sent"] <= 3  # replies only
            for proc in procs.values():
                assert await proc.stop() == 0
            nursery.cancel_scope.cancel()


async def test_a_dead_process_takes_its_subscriptions_with_it() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start(nursery, node, {"s1": ["subscriber:sub-s1"], "s2": ["subscriber:sub-s2"]})
            for name in ("s1", "s2"):
                await ask(node, f"sub-{name}", {"subscribe": "alerts.#"})
            await node.pubsub.wait_for_subscribers("alerts.fire", {"s1", "s2"}, timeout=10)
            procs["s1"].kill()
            await node.pubsub.wait_for_subscribers("alerts.fire", {"s2"}, timeout=10)
            await node.publish("alerts.fire", {"from": "t", "seq": 0})
            reports = await ask(node, "sub-s2", {"wait": 1})
            assert reports[0]["count"] == 1
            await procs["s2"].stop()
            nursery.cancel_scope.cancel()


async def test_pipeline_across_processes_keeps_order_through_reconfiguration() -> None:
    specs = {
        "q1": ["stage:parse"],
        "q2": ["stage:enrich-1@enrich", "stage:enrich-2@enrich"],
        "q3": ["stage:store", "stage:audit", "stage:archive"],
    }
    total = 3000
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start(nursery, node, specs)
            await node.wait_for_agent("enrich-2", timeout=20)
            pipeline = await node.create_pipeline(["parse", "store"], window=128, monitoring=False)
            results: list[px.PipelineResult] = []
            steps = {
                600: lambda: pipeline.add_stage("enrich", 1),  # parse, enrich, store
                1200: lambda: pipeline.add_stage("audit"),  # parse, enrich, store, audit
                1800: lambda: pipeline.remove_stage(0),  # enrich, store, audit
                2400: lambda: pipeline.replace_stage(1, "archive"),  # enrich, archive, audit
            }
            reached = {n: trio.Event() for n in steps}

            async def feed() -> None:
                for i in range(total):
                    await pipeline.send({"i": i, "path": []})

            async def collect() -> None:
                async for result in pipeline:
                    results.append(result)
                    if len(results) in reached:
                        reached[len(results)].set()
                    if len(results) == total:
                        return

            async def reconfigure() -> None:
                for threshold, step in steps.items():
                    await reached[threshold].wait()
                    await step()

            async with trio.open_nursery() as work:
                work.start_soon(feed)
                work.start_soon(collect)
                work.start_soon(reconfigure)
            assert [r.data["i"] for r in results] == list(range(total))
            paths = [tuple(r.data["path"]) for r in results]
            assert paths[0] == ("parse", "store")
            assert paths[-1] in {("enrich-1", "archive", "audit"), ("enrich-2", "archive", "audit")}
            order = ["parse", "enrich", "store", "archive", "audit"]
            for path in paths:  # stages in pipeline order, none twice
                positions = [order.index(p.split("-")[0]) for p in path]
                assert positions == sorted(set(positions)), path
            assert {p[1] for p in paths if len(p) == 3 and p[0] == "parse"} == {"enrich-1", "enrich-2"}
            stats = pipeline.statistics()
            assert stats.completed == total and stats.inside == 0
            await pipeline.aclose()
            for proc in procs.values():
                await proc.stop()
            nursery.cancel_scope.cancel()


async def test_slow_subscriber_with_drop_oldest_keeps_memory_bounded_and_counts_drops() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start(nursery, node, {"slowpoke": ["subscriber:slow-sub"]})
            await ask(node, "slow-sub", {"subscribe": "flood", "capacity": 100, "delay": 0.001})
            await node.pubsub.wait_for_subscribers("flood", {"slowpoke"}, timeout=10)
            baseline = procs["slowpoke"].rss_kib()
            count = 40_000
            payload = b"x" * 2_000  # 80 MB in all
            started = time.perf_counter()
            for i in range(count):
                await node.publish("flood", {"from": "t", "seq": i, "pad": payload})
            publish_seconds = time.perf_counter() - started
            (report,) = await ask(node, "slow-sub", {"wait": count})
            grown_mib = (procs["slowpoke"].rss_kib() - baseline) / 1024
            assert report["received"] == count
            assert report["dropped"] > count // 2  # a 1 ms consumer cannot keep up with this
            assert report["delivered"] + report["dropped"] + report["queued"] == count
            assert report["high_water"] == 100
            assert report["out_of_order"] == 0
            # 80 MB went through; the queue holds 100 x 2 kB, a frame up to 1,024 x 2 kB
            assert grown_mib < 30, grown_mib
            # the publisher never waited for the consumer (40,000 x 1 ms would be 40 s)
            assert publish_seconds < count * 0.001, publish_seconds
            await procs["slowpoke"].stop()
            nursery.cancel_scope.cancel()


async def test_block_makes_the_publisher_wait_for_a_slow_subscriber() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start(nursery, node, {"slowpoke": ["subscriber:slow-sub"]})
            capacity, delay, count = 50, 0.002, 400
            await ask(node, "slow-sub", {"subscribe": "orders", "backpressure": "block", "capacity": capacity, "delay": delay})
            await node.pubsub.wait_for_subscribers("orders", {"slowpoke"}, timeout=10)
            started = time.perf_counter()
            for i in range(count):
                await node.publish("orders", {"from": "t", "seq": i})
            publish_seconds = time.perf_counter() - started
            (report,) = await ask(node, "slow-sub", {"wait": count})
            # credit: the publisher can be at most one window (= capacity) ahead of the
            # consumer, which needs at least `delay` per message
            assert publish_seconds >= (count - 2 * capacity) * delay, publish_seconds
            assert report["received"] == count and report["dropped"] == 0 and report["out_of_order"] == 0
            assert report["high_water"] <= 2 * capacity
            await procs["slowpoke"].stop()
            nursery.cancel_scope.cancel()
