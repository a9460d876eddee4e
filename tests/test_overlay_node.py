"""The overlay on the native TCP transport, several nodes in one Trio run (docs/overlay.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

import phoenix_trio as px
from phoenix_trio import ConfigurationError, LocalProtocolError, NodeUnreachable
from phoenix_trio._overlay_runtime import OverlayConfig, OverlayMessage
from phoenix_trio.overlay import NeighborDown, NeighborUp, configure_overlay, start_gossip_protocol

FAST = {"heartbeat_interval": 0.1, "failure_timeout": 0.6}


def small_overlay(**options: Any) -> Any:
    return configure_overlay("hyparview", active_view_size=3, passive_view_size=8, fanout=3, **options)


@asynccontextmanager
async def overlay_cluster(n: int, *, gossip: bool = False, overlay: Any = None, **options: Any) -> AsyncIterator[list[px.Node]]:
    """``n`` overlay nodes seeded with the first; yields them once every node has a neighbour."""
    overlay = overlay or small_overlay()
    extra = {"gossip": start_gossip_protocol(round_duration=0.1, anti_entropy_interval=0.3)} if gossip else {}
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(px.open_node("n0", listen="127.0.0.1:0", overlay=overlay, **extra, **FAST, **options))
        nodes = [first]
        for i in range(1, n):
            node = px.open_node(f"n{i}", listen="127.0.0.1:0", seeds=[first.address], overlay=overlay, **extra, **FAST, **options)
            nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.wait_for_members(1, timeout=10)
        yield nodes


def symmetric(nodes: list[px.Node]) -> bool:
    views = {n.id: set(n.overlay.neighbors()) for n in nodes}
    return all(n in views.get(p, ()) for n, peers in views.items() for p in peers)


async def collect(nodes: list[px.Node], stack: AsyncExitStack, nursery: trio.Nursery) -> dict[Any, dict[str, OverlayMessage]]:
    """Deliveries per data value: {data: {node id: message}}, filled in the background."""
    got: dict[Any, dict[str, OverlayMessage]] = {}
    for node in nodes:
        events = await stack.enter_async_context(node.watch_overlay())

        async def pump(node: px.Node = node, events: Any = events) -> None:
            async for event in events:
                if isinstance(event, OverlayMessage):
                    assert node.id not in got.setdefault(event.data, {}), "delivered twice"
                    got[event.data][node.id] = event

        nursery.start_soon(pump)
    return got


async def wait_until(node: px.Node, predicate: Any, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)  # the predicate spans several nodes' state; re-checked each tick


async def test_overlay_forms_and_broadcast_and_gossip_reach_every_node() -> None:
    async with overlay_cluster(10, gossip=True) as nodes, AsyncExitStack() as stack:
        await wait_until(nodes[0], lambda: symmetric(nodes))
        for node in nodes:
            assert 1 <= len(node.overlay.neighbors()) <= 3
            assert set(node.alive_members()) == set(node.overlay.neighbors())
            assert node.members[node.overlay.neighbors()[0]].status == "alive"
        async with trio.open_nursery() as nursery:
            got = await collect(nodes, stack, nursery)
            mid = await nodes[4].broadcast_overlay("hello overlay")
            gid = await nodes[7].gossip(b"rumour")
            await wait_until(nodes[0], lambda: len(got.get("hello overlay", {})) == 10 and len(got.get(b"rumour", {})) == 10)
            nursery.cancel_scope.cancel()
        broadcast = got["hello overlay"]
        assert {e.message_id for e in broadcast.values()} == {mid}
        assert all(e.kind == "broadcast" and e.origin == "n4" for e in broadcast.values())
        assert broadcast["n4"].hops == 0 and max(e.hops for e in broadcast.values()) >= 1
        rumours = got[b"rumour"]
        assert {e.message_id for e in rumours.values()} == {gid}
        assert all(e.kind == "gossip" and e.origin == "n7" and e.clock["n7"] >= 1 for e in rumours.values())


async def test_agents_on_non_neighbours_are_reached_over_overlay_routes() -> None:
    """Sends, requests and reliable deliveries to an agent on a node with no connection from the sender."""
    overlay = OverlayConfig(membership=small_overlay(), idle_timeout=0.3)
    async with overlay_cluster(7, overlay=overlay) as nodes:
        await wait_until(nodes[0], lambda: symmetric(nodes))
        async with trio.open_nursery() as nursery:
            # Pick a pair with no direct connection either way (idle links to non-neighbours close).
            def unconnected() -> tuple[px.Node, px.Node] | None:
                for a in nodes:
                    for b in nodes:
                        if a is not b and b.id not in a._connections and a.id not in b._connections:
                            return a, b
                return None

            async with AsyncExitStack() as agents:
                for attempt in range(20):  # the overlay may link the chosen pair meanwhile: choose again
                    await wait_until(nodes[0], lambda: unconnected() is not None)
                    sender, host = unconnected()  # type: ignore[misc]
                    far = await agents.enter_async_context(host.agent(f"far{attempt}", capacity=100))
                    await sender.wait_for_agent(far.id, timeout=10)
                    if host.id not in sender._connections and sender.id not in host._connections:
                        break
                else:
                    raise AssertionError("every chosen pair got linked before the test could use it")
                assert sender.directory.remote[far.id][0] == host.id
                await use_the_route(nursery, sender, host, far)


async def use_the_route(nursery: trio.Nursery, sender: px.Node, host: px.Node, far: Any) -> None:
    """At most once, exactly once and a request, all from ``sender`` to ``far`` over overlay routes."""

    async def serve() -> None:
        async for message in far:
            if message.is_request:
                await message.reply({"echo": message.data})

    await sender.send(far.id, "routed at most once", delivery="at_most_once")
    assert (await far.receive()).data == "routed at most once"
    deliver_done = trio.Event()

    async def deliver() -> None:
        await sender.deliver(far.id, "exactly once over the overlay", delivery="exactly_once")
        deliver_done.set()

    nursery.start_soon(deliver)
    assert (await far.receive()).data == "exactly once over the overlay"
    with trio.fail_after(10):
        await deliver_done.wait()  # the acknowledgement came back over the overlay
    nursery.start_soon(serve)
    reply = await sender.request(far.id, 42, timeout=10)
    assert reply.data == {"echo": 42} and reply.source == f"phoenix://{host.id}/{far.id}"
    stats = sender.overlay.statistics()
    assert stats["routed_sent"] >= 3 and stats["router"]["sent"] >= 3
    assert host.overlay.statistics()["routed_received"] >= 3
    nursery.cancel_scope.cancel()


async def test_a_leaving_node_is_replaced_and_its_agents_withdrawn() -> None:
    async with overlay_cluster(6) as nodes, AsyncExitStack() as stack:
        await wait_until(nodes[0], lambda: symmetric(nodes))
        leaver = nodes[5]
        async with leaver.agent("leaving-agent"):
            await nodes[0].wait_for_agent("leaving-agent", timeout=10)
        await nodes[0].wait_for(lambda: "leaving-agent" not in nodes[0].directory.remote, timeout=10)
        neighbours = [n for n in nodes[:5] if leaver.id in n.overlay.neighbors()]
        events = {n.id: await stack.enter_async_context(n.watch_overlay()) for n in neighbours}
        await stack.enter_async_context(_closing(leaver))  # leaves: DISCONNECT(leaving), then GOODBYEs
        for node in neighbours:
            with trio.fail_after(10):
                async for event in events[node.id]:
                    if isinstance(event, NeighborDown) and event.peer == leaver.id:
                        assert event.reason == "left"  # said so, not a failure
                        break
        rest = nodes[:5]
        await wait_until(rest[0], lambda: symmetric(rest) and all(leaver.id not in n.overlay.neighbors() for n in rest))
        assert all(n.overlay.statistics()["link_failures"] == 0 for n in rest)


@asynccontextmanager
async def _closing(node: px.Node) -> AsyncIterator[None]:
    """Close ``node`` now (its open_node block is further up the stack)."""
    await node._stop()
    yield


async def test_overlay_and_full_mesh_nodes_refuse_each_other() -> None:
    async with px.open_node("mesh", listen="127.0.0.1:0") as mesh:
        async with px.open_node("over", listen="127.0.0.1:0", seeds=[mesh.address], overlay=small_overlay(), **FAST) as over:
            with trio.move_on_after(1.0):
                await over.wait_for_members(1, timeout=5)
            assert over.overlay.neighbors() == [] and not mesh._connections
            assert mesh.stats["protocol_errors"] >= 1


async def test_configuration_and_calls_that_need_an_overlay() -> None:
    with pytest.raises(ConfigurationError):
        async with px.open_node("x", gossip=start_gossip_protocol()):
            pass
    with pytest.raises(ConfigurationError):
        OverlayConfig(membership="hyparview")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        OverlayConfig(idle_timeout=0)
    async with px.open_node("mesh") as mesh:
        assert mesh.overlay is None
        with pytest.raises(LocalProtocolError):
            await mesh.broadcast_overlay(b"x")
    async with px.open_node("solo", listen="127.0.0.1:0", overlay=small_overlay()) as solo:
        with pytest.raises(ConfigurationError):
            await solo.gossip(b"no gossip configured")
        async with solo.watch_overlay() as events:
            mid = await solo.broadcast_overlay(b"to myself")
            event = await events.receive()
            assert event == OverlayMessage("broadcast", mid, "solo", b"to myself", 0)
        # An agent on a node no route reaches: the request fails once discovery gives up.
        solo.directory.update_remote("nowhere", "ghost", None, True)
        with pytest.raises(NodeUnreachable, match="no overlay route"):
            await solo.request("ghost", 1, timeout=10)
        assert solo.overlay.statistics()["route_failures"] == 1
        # Pub-sub tables travel between directly connected nodes only: refused, not silently partial.
        with pytest.raises(LocalProtocolError, match="broadcast_overlay"):
            await solo.publish("metrics.cpu", 1)
        with pytest.raises(LocalProtocolError, match="full-mesh"):
            solo.subscribe("metrics.#")


async def test_links_to_new_neighbours_and_membership_events() -> None:
    async with px.open_node("a", listen="127.0.0.1:0", overlay=small_overlay(), **FAST) as a:
        async with a.watch_overlay() as events:
            async with px.open_node("b", listen="127.0.0.1:0", seeds=[a.address], overlay=small_overlay(), **FAST) as b:
                with trio.fail_after(5):
                    async for event in events:
                        if isinstance(event, NeighborUp):
                            assert event.peer == "b"
                            break
                await a.wait_for(lambda: "b" in a._connections, timeout=5)  # a link both ways
                await b.wait_for(lambda: "a" in b._connections, timeout=5)
                stats = a._connections["b"].statistics()
                assert stats["outbound"] and stats["channel"] == "control"


@pytest.mark.parametrize(
    "membership",
    [
        configure_overlay("client_server", servers=["n0", "n1"], pool_size=2),
        configure_overlay("tree", fanout=2, max_depth=3),
    ],
    ids=["client_server", "tree"],
)
async def test_the_other_overlays_on_tcp_broadcast_and_route(membership: Any) -> None:
    async with overlay_cluster(7, overlay=membership) as nodes, AsyncExitStack() as stack:
        if membership.kind == "client_server":
            # Servers link to each other; each client links to one server only.
            await wait_until(nodes[0], lambda: "n1" in nodes[0].overlay.neighbors())
            for client in nodes[2:]:
                assert len(client.overlay.neighbors()) == 1 and client.overlay.neighbors()[0] in {"n0", "n1"}
        else:
            # A tree: n - 1 links, no node with more than fanout children (+ its parent).
            def edges() -> int:
                return sum(len(n.overlay.neighbors()) for n in nodes) // 2

            await wait_until(nodes[0], lambda: edges() == len(nodes) - 1 and symmetric(nodes))
            assert all(len(n.overlay.neighbors()) <= 3 for n in nodes)
        async with trio.open_nursery() as nursery:
            got = await collect(nodes, stack, nursery)
            await nodes[5].broadcast_overlay("to all")
            await wait_until(nodes[0], lambda: len(got.get("to all", {})) == 7)
            async with nodes[6].agent("leaf") as leaf:
                await nodes[2].wait_for_agent("leaf", timeout=10)
                await nodes[2].send("leaf", "over the overlay", delivery="at_least_once")
                assert (await leaf.receive()).data == "over the overlay"
            nursery.cancel_scope.cancel()


async def test_client_server_pool_size_is_connections_per_pair() -> None:
    membership = configure_overlay("client_server", servers=["n0"], pool_size=3)
    async with overlay_cluster(2, overlay=membership) as (server, client):
        assert client._channels is not None and client._channels.parallelism("pool") == 2
        agents = [f"worker-{i}" for i in range(8)]
        async with AsyncExitStack() as stack:
            inboxes = [await stack.enter_async_context(server.agent(a, capacity=1000)) for a in agents]
            for a in agents:
                await client.wait_for_agent(a, timeout=10)
            for round_ in range(50):
                for a in agents:
                    await client.send(a, round_, delivery="at_least_once")
            for inbox in inboxes:  # every agent's messages in order, over whichever pool connection
                assert [(await inbox.receive()).data for _ in range(50)] == list(range(50))
        pool = sorted(key for key in client._lanes_out if key[0] == "n0")
        assert pool == [("n0", "pool", 0), ("n0", "pool", 1)]  # 1 primary + 2 lanes = pool_size
        assert all(client._lanes_out[key].statistics()["messages_sent"] > 0 for key in pool)
