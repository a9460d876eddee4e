"""Named node-to-node services: what Raft, the overlay and pub-sub run on."""

from __future__ import annotations

import pytest
import trio

import phoenix_trio as px
from phoenix_trio import NodeUnreachable

from .test_node import cluster


async def test_payloads_flow_both_ways_in_order() -> None:
    async with cluster(2) as (a, b):
        async with a.service("proto") as sa, b.service("proto") as sb:
            assert sa.peers() == ["n1"] and sb.peers() == ["n0"]
            for i in range(1000):
                await sa.send("n1", i.to_bytes(4, "big"))
            assert sb.send_nowait("n0", b"back")
            got = [await sb.receive() for _ in range(1000)]
            assert got == [("n0", i.to_bytes(4, "big")) for i in range(1000)]
            assert await sa.receive() == ("n1", b"back")
            assert sa.statistics().sent == 1000 and sb.statistics().received == 1000


async def test_unknown_service_is_dropped_and_counted_and_unknown_peer_refused() -> None:
    async with cluster(2) as (a, b):
        async with a.service("only-here") as sa:
            await sa.send("n1", b"lost")
            async with b.service("sync") as sync, a.service("sync") as probe:
                # a later payload on the same connection proves the first one was handled
                await probe.send("n1", b"x")
                assert await sync.receive() == ("n0", b"x")
                assert b.stats["dropped_unknown_service"] == 1
            with pytest.raises(NodeUnreachable):
                await sa.send("nobody", b"x")
            assert not sa.send_nowait("nobody", b"x")
        with pytest.raises(px.ConfigurationError):
            async with a.service("dup"), a.service("dup"):
                pass


async def test_a_full_service_queue_stops_the_reader_without_losing_anything() -> None:
    async with cluster(2) as (a, b):
        async with a.service("p") as sa, b.service("p", capacity=2) as sb, b.agent("inbox") as inbox:
            await a.wait_for_agent("inbox", timeout=5)
            for i in range(10):
                await sa.send("n1", bytes([i]))
            await a.send("inbox", "after the payloads")
            await trio.testing.wait_all_tasks_blocked()
            assert sb.statistics().queued == 2
            assert inbox.statistics().queued == 0  # the reader is stopped behind the service
            got = [(await sb.receive())[1] for _ in range(10)]
            assert got == [bytes([i]) for i in range(10)]
            assert (await inbox.receive()).data == "after the payloads"


async def test_injected_faults_delay_reorder_duplicate_and_drop_inbound_payloads() -> None:
    from phoenix_trio._service import ServiceFaults

    with pytest.raises(px.ConfigurationError):
        ServiceFaults(seed=1, delay=(0.2, 0.1))
    async with cluster(2) as (a, b):
        async with a.service("p") as sa, b.service("p") as sb, a.service("sync") as ta, b.service("sync") as tb:
            sb.inject_faults(ServiceFaults(seed=7, delay=(0.0, 0.05), duplicate=0.1, drop=0.1))
            start = trio.current_time()
            for i in range(300):
                await sa.send("n1", i.to_bytes(2, "big"))
            # Control frames keep their order on the connection: once this arrives, all 300 were offered.
            await ta.send("n1", b"sync")
            assert await tb.receive() == ("n0", b"sync")
            dropped, duplicated = sb.faults_dropped, sb.faults_duplicated
            assert dropped > 0 and duplicated > 0
            got = [int.from_bytes((await sb.receive())[1], "big") for _ in range(300 - dropped + duplicated)]
            assert trio.current_time() - start < 5
            counts = {i: got.count(i) for i in range(300)}
            assert sum(1 for c in counts.values() if c == 0) == dropped
            assert sum(1 for c in counts.values() if c == 2) == duplicated
            assert got != sorted(got)  # reordered
            assert sb.statistics().queued == 0
            sb.inject_faults(None)  # back to plain in-order delivery
            for i in range(50):
                await sa.send("n1", bytes([i]))
            assert [(await sb.receive())[1] for _ in range(50)] == [bytes([i]) for i in range(50)]


async def test_injected_delays_run_on_the_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    from phoenix_trio._service import ServiceFaults

    async with cluster(2) as (a, b):
        async with a.service("p") as sa, b.service("p", capacity=4) as sb, a.service("sync") as ta, b.service("sync") as tb:
            sb.inject_faults(ServiceFaults(seed=1, delay=(1000.0, 1000.0)))
            for i in range(4):
                await sa.send("n1", bytes([i]))
            await ta.send("n1", b"sync")
            assert await tb.receive() == ("n0", b"sync")
            assert sb.statistics().queued == 4  # held, and counted against the capacity
            with pytest.raises(trio.WouldBlock):
                sb.receive_nowait()
            mock_clock.jump(999.0)
            with pytest.raises(trio.WouldBlock):
                sb.receive_nowait()
            mock_clock.jump(1.0)
            assert [(await sb.receive())[1] for _ in range(4)] == [bytes([i]) for i in range(4)]
