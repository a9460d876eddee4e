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
