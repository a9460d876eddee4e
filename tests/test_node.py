"""The node runtime with several nodes in one Trio run: routing, patterns, backpressure, shutdown."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

import phoenix_trio as px
from phoenix_trio import AgentNotFound, Backpressure, Message, NodeUnreachable, RequestTimeout


@asynccontextmanager
async def cluster(n: int, **options):
    """``n`` nodes on loopback, each seeded with the first; yields them once fully meshed."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(px.open_node("n0", listen="127.0.0.1:0", **options))
        nodes = [first]
        for i in range(1, n):
            nodes.append(
                await stack.enter_async_context(
                    px.open_node(f"n{i}", listen="127.0.0.1:0", seeds=[first.address], **options)
                )
            )
        for node in nodes:
            await node.wait_for_members(n - 1, timeout=10)
        yield nodes


async def echo(agent: px.Agent) -> None:
    async for message in agent:
        if message.is_request:
            await message.reply({"echo": message.data, "by": agent.id})


async def test_point_to_point_local_and_remote() -> None:
    async with cluster(2) as (a, b):
        async with a.agent("local") as local, b.agent("remote") as remote:
            await a.wait_for_agent("remote", timeout=5)
            await a.send("local", {"n": 1})
            await a.send("remote", b"bytes")
            got_local = await local.receive()
            got_remote = await remote.receive()
    assert got_local.data == {"n": 1} and got_local.type == "phoenix.agent.direct.send"
    assert got_local.subject == "local" and got_local.routing.pattern == "point_to_point"
    assert got_local.source == "phoenix://n0"
    assert got_remote.data == b"bytes" and got_remote.datacontenttype == "application/octet-stream"
    assert got_remote.routing.target == "remote" and got_remote.delivery.delivery_mode == "at_least_once"
    assert got_remote.trace is not None and got_remote.causality["n0"] >= 1
    px.validate_message(got_remote)


async def test_messages_from_one_sender_arrive_in_order() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("sink", capacity=100_000) as sink:
            await a.wait_for_agent("sink", timeout=5)
            for i in range(5000):
                await a.send("sink", i)
            got = [(await sink.receive()).data for _ in range(5000)]
    assert got == list(range(5000))


async def test_request_response_both_ways_and_trace_continues() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("echo") as server, trio.open_nursery() as nursery:
            nursery.start_soon(echo, server)
            await a.wait_for_agent("echo", timeout=5)
            with px.use_trace(px.TraceContext.new()) as trace:
                reply = await a.request("echo", [1, 2, 3], timeout=5)
            assert reply.data == {"echo": [1, 2, 3], "by": "echo"}
            assert reply.type == "phoenix.agent.request.reply"
            assert reply.source == "phoenix://n1/echo"
            assert reply.trace.trace_id == trace.trace_id  # the handler's reply continues the trace
            async with a.agent("local-echo") as local:
                nursery.start_soon(echo, local)
                reply = await a.request("local-echo", "x")
                assert reply.data == {"echo": "x", "by": "local-echo"}
            nursery.cancel_scope.cancel()


async def test_agent_send_sets_source() -> None:
    async with cluster(2) as (a, b):
        async with a.agent("alice") as alice, b.agent("bob") as bob:
            await a.wait_for_agent("bob", timeout=5)
            await alice.send("bob", "hi")
            message = await bob.receive()
    assert message.source == "phoenix://n0/alice"


async def test_request_timeout_leaves_no_waiter() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("silent"):
            await a.wait_for_agent("silent", timeout=5)
            with pytest.raises(RequestTimeout) as caught:
                await a.request("silent", "hello?", timeout=0.2)
            assert caught.value.timeout == 0.2
            assert a._pending_requests == {}
            with trio.move_on_after(0.1):
                await a.request("silent", "cancel me", timeout=10)
            assert a._pending_requests == {}


async def test_unknown_agent_and_stale_directory() -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(AgentNotFound):
            await a.send("nobody", 1)
        async with b.agent("short-lived"):
            await a.wait_for_agent("short-lived", timeout=5)
        # a's directory may not know yet that it left: the request fails clearly either way
        with pytest.raises(AgentNotFound):
            await a.request("short-lived", 1, timeout=5)


async def test_node_leaving_fails_requests_with_node_unreachable() -> None:
    async with px.open_node("a", listen="127.0.0.1:0") as a:
        async with a.agent("x"):
            pass
        async with px.open_node("b", listen="127.0.0.1:0", seeds=[a.address]) as b:
            async with b.agent("slow"):
                await a.wait_for_agent("slow", timeout=5)
                async with trio.open_nursery() as nursery:
                    errors = []

                    async def ask() -> None:
                        try:
                            await a.request("slow", 1, timeout=30)
                        except NodeUnreachable as exc:
                            errors.append(exc)

                    nursery.start_soon(ask)
                    await trio.testing.wait_all_tasks_blocked()
                    # b leaves while the request is outstanding
                    await b._stop()
        assert errors and errors[0].node_id == "b"
        with pytest.raises(NodeUnreachable):
            await a.send("slow", 1)  # tombstone: the node hosting it is gone
        assert a.members["b"].status == "left"


async def test_groups_are_load_balanced_away_from_a_slow_member() -> None:
    async def slow_echo(agent: px.Agent) -> None:
        async for message in agent:
            await trio.sleep(0.02)  # this member is slow: the scenario, not a wait
            await message.reply({"by": agent.id})

    async with cluster(2) as (a, b):
        counts: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            stack = AsyncExitStack()
            async with stack:
                for node, name, serve in ((a, "w1", echo), (b, "w2", echo), (b, "w3", slow_echo)):
                    agent = await stack.enter_async_context(node.agent(name, group="workers"))
                    nursery.start_soon(serve, agent)
                await a.wait_for(lambda: len(a.directory.group_members("workers")) == 3, timeout=5)

                async def client() -> None:
                    for _ in range(40):
                        reply = await a.request("workers", "job")
                        counts[reply.data["by"]] = counts.get(reply.data["by"], 0) + 1

                async with trio.open_nursery() as clients:
                    for _ in range(8):
                        clients.start_soon(client)
                nursery.cancel_scope.cancel()
    assert sum(counts.values()) == 320 and set(counts) == {"w1", "w2", "w3"}
    assert counts["w3"] < counts["w1"] and counts["w3"] < counts["w2"]
    assert a.balancer.stats["w3"].latency_ewma > a.balancer.stats["w2"].latency_ewma


async def test_broadcast_async_and_sync_with_acks() -> None:
    async with cluster(3) as (a, b, c):
        async with b.agent("b1") as b1, c.agent("c1") as c1, a.agent("a1") as a1:
            for name in ("b1", "c1"):
                await a.wait_for_agent(name, timeout=5)
            result = await a.broadcast(["a1", "b1", "c1", "ghost"], "hello", delivery_mode="async")
            assert result.delivered == {"a1", "b1", "c1"} and set(result.failed) == {"ghost"}
            result = await a.broadcast(["a1", "b1", "c1"], "sync", delivery_mode="sync", timeout=5)
            assert result.complete and result.delivered == {"a1", "b1", "c1"}
            for agent in (a1, b1, c1):
                assert [(await agent.receive()).data for _ in range(2)] == ["hello", "sync"]


async def test_sync_broadcast_reports_missing_acks_when_an_inbox_stays_full() -> None:
    async with cluster(3) as (a, b, c):
        async with b.agent("tiny", capacity=1), c.agent("ok") as ok:
            await a.wait_for_agent("ok", timeout=5)
            await a.wait_for_agent("tiny", timeout=5)
            await a.send("tiny", "fills it")
            result = await a.broadcast(["tiny", "ok"], "x", delivery_mode="sync", timeout=0.5)
            assert result.delivered == {"ok"} and result.missing == {"tiny"} and not result.complete
            assert (await ok.receive()).data == "x"


async def test_backpressure_slow_consumer_bounds_memory_and_fail_fast() -> None:
    async with cluster(2, max_pending=64) as (a, b):
        async with b.agent("slow", capacity=10) as slow:
            await a.wait_for_agent("slow", timeout=5)
            sent = 0
            with trio.move_on_after(2):
                while True:
                    await a.send("slow", b"x" * 1000)
                    sent += 1
            # The sender got stuck: TCP windows and bounded queues filled up, no further.
            connection = a._connections["n1"]
            assert connection.pending <= 64
            assert slow.statistics().queued <= 10
            with pytest.raises(Backpressure):
                for _ in range(100):
                    await a.send("slow", b"x", wait=False)
            # Everything sent so far arrives once the consumer drains.
            received = 0
            with trio.fail_after(30):
                while received < sent:
                    await slow.receive()
                    received += 1
            # The stalled peer was never declared dead while it could not be heard.
            assert a.members["n1"].status == "alive" and b.members["n0"].status == "alive"


async def test_large_payloads_queue_by_bytes_not_by_count() -> None:
    size, budget = 256 * 1024, 2 * 1024 * 1024
    async with cluster(2, max_pending=64, max_pending_bytes=budget) as (a, b):
        async with b.agent("stalled", capacity=1) as stalled:
            await a.wait_for_agent("stalled", timeout=5)
            connection = a._connections["n1"]
            sent = 0
            with pytest.raises(Backpressure):
                while True:  # the receiver reads nothing: buffers fill, then the queue
                    await a.send("stalled", bytes([sent % 256]) * size, delivery="at_most_once", wait=False)
                    sent += 1
            # 64 messages of 256 KiB would be 16 MiB queued in the sender; the byte
            # budget holds it to 2 MiB however many messages that is.
            stats = connection.statistics()
            assert 0 < stats["pending_bytes"] <= budget and stats["pending"] <= budget // size
            with trio.fail_after(30):
                for i in range(sent):
                    assert (await stalled.receive()).data[:1] == bytes([i % 256])


async def test_send_message_validates_and_keeps_fields() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("inbox") as inbox:
            await a.wait_for_agent("inbox", timeout=5)
            m = Message.new({"k": 1}, type="phoenix.agent.state.update", extensions={"tenant": "t1"})
            await a.send_message("inbox", m)
            got = await inbox.receive()
            assert got.id == m.id and got.type == m.type and got.extensions == {"tenant": "t1"}
            assert got.subject == "inbox" and got.delivery == m.delivery
            with pytest.raises(px.ValidationError):
                await a.send_message("inbox", m.evolve(source="bad source"))


async def test_membership_events_and_closing_joins_everything() -> None:
    before = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks) if False else None
    del before
    async with px.open_node("watcher", listen="127.0.0.1:0") as w:
        async with w.watch_membership() as events:
            async with px.open_node("visitor", listen="127.0.0.1:0", seeds=[w.address]):
                event = await events.receive()
                assert (event.kind, event.node_id) == ("joined", "visitor")
            event = await events.receive()
            assert (event.kind, event.node_id) == ("left", "visitor")
    # after both blocks: no task of either node is left running
    for task in trio.lowlevel.current_root_task().child_nurseries:
        for child in task.child_tasks:
            assert "phoenix" not in repr(child.coro)


async def test_unencodable_data_is_refused_at_send_time() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("inbox"):
            await a.wait_for_agent("inbox", timeout=5)
            with pytest.raises(px.EncodeError):
                await a.send("inbox", object())


async def test_transport_interface_send_and_broadcast_with_acks() -> None:
    async with cluster(2) as (a, b):
        async with a.agent("here") as here, b.agent("there") as there:
            await a.wait_for_agent("there", timeout=5)
            assert isinstance(a.transport_for(None), px.InProcessTransport)
            assert isinstance(a.transport_for("n1"), px.TcpTransport)
            m = Message.new({"x": 1}, type="phoenix.agent.event.publish")
            await a.transports["tcp"].send_message("there", m)
            assert (await there.receive()).id == m.id
            with pytest.raises(NodeUnreachable):
                await a.transports["tcp"].send_message("here", m)  # tcp does not reach local agents
            result = await a.transports["tcp"].broadcast_message(["there", "here"], m, delivery_mode="sync", timeout=5)
            assert result.delivered == {"there"} and set(result.failed) == {"here"}
            result = await a.broadcast_message(["there", "here"], m, delivery_mode="sync", timeout=5)
            assert result.complete and result.delivered == {"there", "here"}
            got = [await there.receive(), await here.receive()]
            assert all(g.data == {"x": 1} and g.type == "phoenix.agent.event.publish" for g in got)


async def test_circuit_breaker_opens_on_timeouts_and_short_circuits() -> None:
    from phoenix_trio._breaker import BreakerConfig

    config = BreakerConfig(minimum_calls=3, failure_rate_threshold=0.5, reset_timeout=0.3)
    async with cluster(2, breaker=config) as (a, b):
        async with b.agent("mute") as mute, trio.open_nursery() as nursery:
            await a.wait_for_agent("mute", timeout=5)
            for _ in range(3):
                with pytest.raises(RequestTimeout):
                    await a.request("mute", "anyone?", timeout=0.05)
            assert a.breaker_state("mute") == "open"
            with pytest.raises(px.CircuitOpen) as caught:
                await a.send("mute", "short-circuited")
            assert 0 < caught.value.retry_after <= 0.3
            # After the reset timeout one probe goes through; a success closes it again.
            nursery.start_soon(echo, mute)
            await trio.sleep(0.3)  # the breaker's reset timeout: the scenario, not a wait for a condition
            reply = await a.request("mute", "probe", timeout=5)
            assert reply.data["echo"] == "probe"
            assert a.breaker_state("mute") == "closed"
            nursery.cancel_scope.cancel()
