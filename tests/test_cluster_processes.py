"""Real distribution: nodes as separate OS processes on loopback.

The test process runs one node itself and starts the others with
``python -m phoenix_trio node``; it follows their JSON event lines instead of sleeping.
"""

from __future__ import annotations

import pytest
import trio

import phoenix_trio as px
from phoenix_trio import NodeUnreachable

from phoenix_trio._node_process import NodeProcess

pytestmark = pytest.mark.processes

FAILURE_TIMEOUT = 1.0
HEARTBEAT = 0.2


async def start_cluster(nursery: trio.Nursery, test_node: px.Node, names: list[str]) -> list[NodeProcess]:
    seed = f"{test_node.address[0]}:{test_node.address[1]}"
    procs = [
        NodeProcess(
            name,
            seeds=[seed],
            agents=[f"echo:echo-{name}", f"counter:count-{name}", f"slow:slow-{name}"],
            failure_timeout=FAILURE_TIMEOUT,
            heartbeat=HEARTBEAT,
        )
        for name in names
    ]
    async with trio.open_nursery() as starting:
        for proc in procs:
            starting.start_soon(proc.start, nursery)
    await test_node.wait_for_members(len(names), timeout=20)
    for name in names:
        await test_node.wait_for_agent(f"echo-{name}", timeout=20)
    return procs


async def test_three_processes_exchange_point_to_point_and_request_response() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            p1, p2 = await start_cluster(nursery, node, ["p1", "p2"])
            # The two other processes found each other too (full mesh).
            await p1.wait_for("member_joined", node="p2", timeout=20)
            for name in ("p1", "p2"):
                for i in range(500):
                    await node.send(f"count-{name}", {"i": i})
                reply = await node.request(f"echo-{name}", {"hello": name}, timeout=10)
                assert reply.data == {"hello": name}
                assert reply.source == f"phoenix://{name}/echo-{name}"
                # Requests follow the sends on the same connection, so all 500 arrived before.
                assert (await node.request(f"count-{name}", "count", timeout=10)).data == 500
            assert node.members["p1"].status == "alive" and node.members["p2"].status == "alive"
            for proc in (p1, p2):
                assert await proc.stop() == 0
            nursery.cancel_scope.cancel()


async def test_sigkill_is_detected_reported_and_the_restarted_node_rejoins() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery, node.watch_membership() as events:
            p1, p2 = await start_cluster(nursery, node, ["p1", "p2"])
            assert (await node.request("echo-p1", 1, timeout=10)).data == 1

            # A request in flight while p1 dies fails with NodeUnreachable, well before its timeout.
            outcome: list[BaseException] = []
            finished = trio.Event()

            async def request_in_flight() -> None:
                try:
                    await node.request("slow-p1", "count", timeout=30)
                except NodeUnreachable as exc:
                    outcome.append(exc)
                finished.set()

            for _ in range(2000):  # keep p1's slow agent busy so the request waits in its inbox
                await node.send("slow-p1", "work")
            nursery.start_soon(request_in_flight)
            await trio.testing.wait_all_tasks_blocked()
            killed_at = trio.current_time()
            p1.kill()
            while True:
                event = await events.receive()
                if event.node_id == "p1" and event.kind == "dead":
                    break
            detected = trio.current_time() - killed_at
            assert detected <= FAILURE_TIMEOUT + 4 * HEARTBEAT + 0.5, detected
            with trio.fail_after(1):
                await finished.wait()
            assert outcome and outcome[0].node_id == "p1"
            with pytest.raises(NodeUnreachable) as caught:
                await node.send("echo-p1", "anyone?")
            assert caught.value.node_id == "p1"
            with pytest.raises(NodeUnreachable):
                await node.request("echo-p1", "anyone?", timeout=5)
            # p2 is unaffected.
            assert (await node.request("echo-p2", "still here", timeout=10)).data == "still here"

            # Restart p1 under the same name: it rejoins and serves again.
            await p1.stop()
            seed = f"{node.address[0]}:{node.address[1]}"
            p1 = await NodeProcess("p1", seeds=[seed], agents=["echo:echo-p1"], failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT).start(nursery)
            while True:
                event = await events.receive()
                if event.node_id == "p1" and event.kind in ("joined", "restarted"):
                    break
            await node.wait_for_agent("echo-p1", timeout=20)
            assert (await node.request("echo-p1", "back", timeout=10)).data == "back"
            await p2.wait_for("member_dead", node="p1", timeout=5)
            for proc in (p1, p2):
                await proc.stop()
            nursery.cancel_scope.cancel()


async def test_slow_consumer_in_another_process_keeps_memory_bounded() -> None:
    async with px.open_node("t", listen="127.0.0.1:0", max_pending=256) as node:
        async with trio.open_nursery() as nursery:
            seed = f"{node.address[0]}:{node.address[1]}"
            slow = await NodeProcess("slowpoke", seeds=[seed], agents=["slow:slow"]).start(nursery)
            await node.wait_for_agent("slow", timeout=20)
            baseline = slow.rss_kib()
            payload = b"x" * 10_000
            accepted = 0
            with trio.move_on_after(3):
                while True:
                    await node.send("slow", payload)
                    accepted += 1
            grown_mib = (slow.rss_kib() - baseline) / 1024
            processed = (await node.request("slow", "count", timeout=30)).data
            # Unthrottled, 3 s of sending would be hundreds of MB; backpressure holds it to
            # the inbox (100), the sender's pending list (256) and the socket buffers.
            assert grown_mib < 40, grown_mib
            assert node._connections["slowpoke"].pending <= 256
            assert accepted - processed < 100 + 256 + 2000, (accepted, processed)
            await slow.stop()
            nursery.cancel_scope.cancel()
