"""Publish-subscribe with several nodes in one Trio run: routing, fanout, policies, credit."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import phoenix_trio as px
from phoenix_trio import Backpressure, ConfigurationError, InvalidTopic

from .test_node import cluster


def sent_to(node: px.Node, peer: str) -> int:
    return node._connections[peer].messages_sent


async def test_wildcards_filters_and_the_message_a_subscriber_gets() -> None:
    async with cluster(3) as (a, b, c):
        async with (
            b.subscribe("sensors.#") as everything,
            b.subscribe("sensors.*.temp", filter=lambda m: m.data["v"] > 10) as hot,
            c.subscribe("sensors.eu.*") as eu,
            a.subscribe("sensors.us.temp") as local,
        ):
            for sub in (everything, hot, eu, local):
                await sub.wait_propagated(5)
            await a.publish("sensors.eu.temp", {"v": 5})
            await a.publish("sensors.eu.temp", {"v": 20})
            await a.publish("sensors.us.temp", {"v": 30}, fanout="batched")
            await a.publish("sensors", {"v": 0})
            await a.publish("other.topic", {"v": 99})
            got_all = [(await everything.receive()) for _ in range(4)]
            got_hot = [(await hot.receive()).data["v"] for _ in range(2)]
            got_eu = [(await eu.receive()).data["v"] for _ in range(2)]
            got_local = await local.receive()
    assert [m.data["v"] for m in got_all] == [5, 20, 30, 0]
    assert got_hot == [20, 30] and hot.statistics().filtered == 1
    assert got_eu == [5, 20]
    first = got_all[0]
    assert first.type == "phoenix.pubsub.publish" and first.subject == "sensors.eu.temp"
    assert first.routing.pattern == "publish_subscribe" and first.routing.topic == "sensors.eu.temp"
    assert first.routing.fanout_strategy == "immediate" and got_all[2].routing.fanout_strategy == "batched"
    assert first.source == "phoenix://n0" and first.delivery.delivery_mode == "at_most_once"
    px.validate_message(first)
    assert got_local.data == {"v": 30} and got_local.subject == "sensors.us.temp" and got_local.routing.topic == "sensors.us.temp"
    px.validate_message(got_local)


async def test_a_publication_crosses_the_network_once_per_interested_node() -> None:
    async with cluster(3) as (a, b, c):
        async with b.subscribe("t.#") as s1, b.subscribe("t.*") as s2, b.subscribe("t.x", capacity=5000) as s3:
            await a.pubsub.wait_for_subscribers("t.x", {"n1"}, timeout=5)
            before_b, before_c = sent_to(a, "n1"), sent_to(a, "n2")
            for i in range(2000):
                await a.publish("t.x", i)
            got = [(await s3.receive()).data for _ in range(2000)]
            assert got == list(range(2000))
            for sub in (s1, s2):  # capacity 1024, drop_oldest, nobody reading
                stats = sub.statistics()
                assert (stats.received, stats.dropped, stats.queued) == (2000, 976, 1024)
            assert sent_to(a, "n1") - before_b == 2000  # three subscriptions there, one copy each
            assert sent_to(a, "n2") - before_c == 0  # no interest there, nothing sent
            assert b.pubsub.statistics().received_remote == 2000
            assert a.pubsub.statistics().sent_remote == 2000


async def test_interest_full_state_on_connect_deltas_after_and_gone_with_the_node() -> None:
    async with cluster(2) as (a, b):
        async with b.subscribe("orders.*") as sub:
            await a.pubsub.wait_for_subscribers("orders.new", {"n1"}, timeout=5)
            # a node joining later gets the full state when it connects
            async with px.open_node("late", listen="127.0.0.1:0", seeds=[a.address]) as late:
                await late.wait_for_members(2, timeout=10)
                await late.pubsub.wait_for_subscribers("orders.new", {"n1"}, timeout=5)
                await late.publish("orders.new", "from late")
                assert (await sub.receive()).data == "from late"
                # its own subscription reaches the others, and leaves with it
                late_sub = late.pubsub.open_subscription("orders.#")
                await late_sub.wait_propagated(5)
                assert a.pubsub.interested_nodes("orders.new") == {"n1", "late"}
            await a.pubsub.wait_for_subscribers("orders.new", {"n1"}, timeout=5)
            assert late_sub.closed
        # leaving the block removes the subscription everywhere
        await a.pubsub.wait_for_subscribers("orders.new", set(), timeout=5)
        assert b.pubsub.statistics().subscriptions == 0


async def test_unsubscribe_by_pattern_and_iteration_ends() -> None:
    async with cluster(2) as (a, b):
        s1 = b.pubsub.open_subscription("x.*", subscriber="agent-1")
        s2 = b.pubsub.open_subscription("x.*", subscriber="agent-2")
        s3 = b.pubsub.open_subscription("x.*", subscriber="agent-2")
        await s1.wait_propagated(5)
        await a.publish("x.y", 1)
        received = []

        async def consume() -> None:
            async for message in s2:
                received.append(message.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            assert (await s1.receive()).data == 1
            await trio.testing.wait_all_tasks_blocked()  # the consumer took its copy
            assert b.unsubscribe("x.*", subscriber="agent-2") == 2
        assert received == [1] and s2.closed and s3.closed and not s1.closed
        assert s3.statistics().discarded_on_close == 1
        # one subscription left for the pattern: the interest stays
        assert a.pubsub.interested_nodes("x.y") == {"n1"}
        s1.unsubscribe()
        s1.unsubscribe()  # idempotent
        await a.pubsub.wait_for_subscribers("x.y", set(), timeout=5)


@pytest.mark.parametrize("remote", [False, True])
async def test_drop_oldest_and_drop_newest_count_every_drop(remote: bool) -> None:
    async with cluster(2) as (a, b):
        where = b if remote else a
        async with where.subscribe("d", capacity=10) as oldest, where.subscribe("d", backpressure="drop_newest", capacity=10) as newest:
            await oldest.wait_propagated(5)
            await newest.wait_propagated(5)
            for i in range(25):
                await a.publish("d", i)
            # a marker on another topic, published after, proves everything before was handled
            async with where.subscribe("marker") as marker:
                await marker.wait_propagated(5)
                await a.publish("marker", "done")
                await marker.receive()
            assert [oldest.receive_nowait().data for _ in range(10)] == list(range(15, 25))
            assert [newest.receive_nowait().data for _ in range(10)] == list(range(10))
            for sub in (oldest, newest):
                stats = sub.statistics()
                assert (stats.received, stats.dropped, stats.delivered, stats.high_water) == (25, 15, 10, 10)
                with pytest.raises(trio.WouldBlock):
                    sub.receive_nowait()


async def test_block_locally_makes_the_publisher_wait() -> None:
    async with px.open_node("solo") as node:
        async with node.subscribe("b", backpressure="block", capacity=4) as sub:
            for i in range(4):
                await node.publish("b", i)
            with pytest.raises(Backpressure):
                await node.publish("b", 4, wait=False)
            done = trio.Event()

            async def publisher() -> None:
                for i in range(4, 20):
                    await node.publish("b", i)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set() and sub.statistics().publishers_waiting == 1
                got = [(await sub.receive()).data for _ in range(20)]
            assert got == list(range(20))
            stats = sub.statistics()
            assert stats.dropped == 0 and stats.high_water <= 4


async def test_block_across_nodes_uses_credit_and_the_connection_keeps_flowing() -> None:
    async with cluster(2) as (a, b):
        async with b.subscribe("slow", backpressure="block", capacity=8) as sub, b.agent("other") as other:
            await a.pubsub.wait_for_subscribers("slow", {"n1"}, timeout=5)
            await a.wait_for_agent("other", timeout=5)
            published = 0

            async def publisher() -> None:
                nonlocal published
                for i in range(100):
                    await a.publish("slow", i)
                    published += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                await trio.testing.wait_all_tasks_blocked()
                # the publisher used its window and waits for credit...
                assert published == 8 and a.pubsub.statistics().credit == {"n1": 0}
                with pytest.raises(Backpressure):
                    await a.publish("slow", -1, wait=False)
                # ...while other traffic on the same connection still flows
                await a.send("other", "hello")
                assert (await other.receive()).data == "hello"
                got = [(await sub.receive()).data for _ in range(100)]
            assert got == list(range(100))
            stats = sub.statistics()
            assert stats.dropped == 0 and stats.high_water <= 8
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()  # the consumer comes back: the last one is handled too
            # all credit came back
            with trio.fail_after(5):
                while a.pubsub.statistics().credit.get("n1") != 8:
                    await a.pubsub._peers["n1"].lot.park()


async def test_at_least_once_subscription() -> None:
    async with cluster(2) as (a, b):
        with pytest.raises(ConfigurationError, match="drops nothing"):
            b.pubsub.open_subscription("q", delivery="at_least_once", backpressure="drop_oldest")
        async with b.subscribe("q", delivery="at_least_once", capacity=4) as sub:
            assert sub.backpressure == "block"
            await sub.wait_propagated(5)

            async def publisher() -> None:
                for i in range(50):
                    await a.publish("q", i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                got = [await sub.receive() for _ in range(50)]
            assert [m.data for m in got] == list(range(50))
            assert got[0].delivery.delivery_mode == "at_least_once"
            assert sub.statistics().dropped == 0


async def test_batched_fanout_sends_fewer_frames_and_keeps_order() -> None:
    async with cluster(2) as (a, b):
        async with b.subscribe("f.*", capacity=10_000) as sub:
            await a.pubsub.wait_for_subscribers("f.x", {"n1"}, timeout=5)
            a.pubsub.batch_linger = 0.05
            connection = a._connections["n1"]
            frames = connection.frames_written
            for i in range(200):
                await a.publish("f.x", i, fanout="batched")
                await trio.sleep(0.0002)  # paced publishing: the point is what happens at a low rate
            batched_frames = connection.frames_written - frames
            frames = connection.frames_written
            for i in range(200, 400):
                await a.publish("f.x", i)
                await trio.sleep(0.0002)
            immediate_frames = connection.frames_written - frames
            # an immediate publish flushes what is held for that node first: order is kept
            for i in range(400, 450):
                await a.publish("f.x", i, fanout="batched" if i % 2 else "immediate")
            got = [(await sub.receive()).data for _ in range(450)]
    assert got == list(range(450))
    assert batched_frames * 4 < immediate_frames, (batched_frames, immediate_frames)
    assert a.pubsub.statistics().batches_flushed >= 1


async def test_bad_topics_patterns_and_options_are_refused() -> None:
    async with px.open_node("solo") as node:
        with pytest.raises(InvalidTopic):
            await node.publish("a.*", 1)
        with pytest.raises(InvalidTopic):
            await node.publish("", 1)
        with pytest.raises(InvalidTopic):
            node.pubsub.open_subscription("a.b*")
        with pytest.raises(ConfigurationError):
            node.pubsub.open_subscription("a", backpressure="spill")
        with pytest.raises(ConfigurationError):
            node.pubsub.open_subscription("a", capacity=0)
        with pytest.raises(ConfigurationError):
            await node.publish("a", 1, fanout="sometimes")
        with pytest.raises(px.EncodeError):
            await node.publish("a", {1, 2})


async def test_closing_the_node_ends_subscriptions() -> None:
    ended = trio.Event()
    async with trio.open_nursery() as outer:
        async with px.open_node("solo") as node:
            sub = node.pubsub.open_subscription("#")

            async def consume() -> None:
                async for _ in sub:
                    pass
                ended.set()

            outer.start_soon(consume)
            await node.publish("x", 1)
        with trio.fail_after(5):
            await ended.wait()
    assert sub.closed and sub.statistics().delivered == 1


async def test_a_bad_payload_on_the_pubsub_service_is_counted_not_fatal() -> None:
    async with cluster(2) as (a, b):
        async with a.service("probe") as probe, b.service("probe") as back:
            svc = a.pubsub._service
            assert svc is not None
            svc.send_nowait("n1", b"\xc1")  # not msgpack
            svc.send_nowait("n1", b"\x92\x02\xa1x")  # [2, "x"]: malformed ADD
            await probe.send("n1", b"sync")  # same connection, after the bad ones
            await back.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert b.pubsub.invalid_remote == 2
            async with b.subscribe("still.works") as sub:
                await a.pubsub.wait_for_subscribers("still.works", {"n1"}, timeout=5)
                await a.publish("still.works", 1)
                assert (await sub.receive()).data == 1


async def test_a_reliable_publication_without_a_topic_is_not_acknowledged() -> None:
    from phoenix_trio._peer_protocol import FLAG_PUBLISH

    async with cluster(2) as (a, b):
        connection = b._connections["n0"]
        untopical = px.Message(id="1", source="phoenix://n0/x", type="phoenix.pubsub.publish", data=1)
        await b.pubsub.on_publications("n0", [(untopical, FLAG_PUBLISH, (1 << 40) + 1)])
        assert all(entry[0] is not None for entry in connection._alo_acks)  # no acknowledgement without a topic
        await trio.testing.wait_all_tasks_blocked()
        assert not connection.closed  # the peer was sent nothing it could not decode
        async with b.subscribe("still.works") as sub:
            await a.pubsub.wait_for_subscribers("still.works", {"n1"}, timeout=5)
            await a.publish("still.works", 1)
            assert (await sub.receive()).data == 1


async def test_credit_comes_back_with_several_block_queues_filters_and_closing() -> None:
    async with cluster(2) as (a, b):
        even = b.pubsub.open_subscription("c", backpressure="block", capacity=4, filter=lambda m: m.data % 2 == 0)
        every = b.pubsub.open_subscription("c", backpressure="block", capacity=6)
        doomed = b.pubsub.open_subscription("c", backpressure="block", capacity=6)
        await a.pubsub.wait_for_subscribers("c", {"n1"}, timeout=5)
        got_even: list[int] = []
        got_every: list[int] = []

        async def publisher() -> None:
            for i in range(200):
                await a.publish("c", i)

        async def take(sub: px.Subscription, into: list[int], count: int) -> None:
            for _ in range(count):
                into.append((await sub.receive()).data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert a.pubsub.statistics().credit == {"n1": 0}  # window 6, all spent
            doomed.unsubscribe()  # its queued messages give their share of credit back
            nursery.start_soon(take, even, got_even, 100)
            nursery.start_soon(take, every, got_every, 200)
        assert got_even == list(range(0, 200, 2)) and got_every == list(range(200))
        assert even.statistics().filtered == 100 and even.statistics().dropped == 0
        for sub in (even, every):
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()  # handled
        with trio.fail_after(5):
            while a.pubsub.statistics().credit.get("n1") != 6:
                await a.pubsub._peers["n1"].lot.park()


async def test_at_least_once_publications_are_acknowledged_once_handled() -> None:
    async with cluster(2) as (a, b):
        async with b.subscribe("jobs.#", delivery="at_least_once", capacity=16) as sub, b.subscribe("jobs.#") as plain:
            await a.pubsub.wait_for_subscribers("jobs.x", {"n1"}, timeout=5)
            for i in range(5):
                await a.publish("jobs.x", i)
            assert [(await plain.receive()).data for _ in range(5)] == list(range(5))
            await trio.testing.wait_all_tasks_blocked()
            # tracked by the node's reliable transport until the subscriber has handled them
            assert a._tracker.outstanding == 5
            first = await sub.receive()
            assert first.delivery.delivery_mode == "at_least_once" and first.data == 0
            for i in range(1, 5):
                assert (await sub.receive()).data == i
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()  # coming back for more: the fifth is handled too
            await a.flush_deliveries(timeout=5)
            assert a._tracker.outstanding == 0 and a.stats["retransmitted"] == 0


async def test_publications_are_secured_like_any_message_between_nodes() -> None:
    from phoenix_trio import security as sec

    from .test_security_node import node_context, secure_cluster

    policy = sec.SecurityPolicy(default=sec.AUTHENTICATE)
    async with secure_cluster(2, lambda node_id: node_context(node_id, policy)) as (a, b):
        async with b.subscribe("secure.*") as sub, b.subscribe("secure.#", delivery="at_least_once") as reliable:
            await a.pubsub.wait_for_subscribers("secure.x", {"n1"}, timeout=5)
            verified_before = b.security.stats["verified"]  # type: ignore[union-attr]
            for i in range(3):
                await a.publish("secure.x", i)
            got = [await sub.receive() for _ in range(3)]
            assert [m.data for m in got] == [0, 1, 2] and [(await reliable.receive()).data for _ in range(3)] == [0, 1, 2]
            assert got[0].security is not None and got[0].security.mac is not None
            assert got[0].subject == "secure.x" and got[0].type == "phoenix.pubsub.publish"
            assert b.security.stats["verified"] - verified_before == 3  # type: ignore[union-attr]
            with pytest.raises(trio.WouldBlock):
                reliable.receive_nowait()
            await a.flush_deliveries(timeout=2)  # acknowledged: the stream positions survived verification


async def test_agents_publish_and_subscribe_as_themselves() -> None:
    async with cluster(2) as (a, b):
        async with a.agent("reporter") as reporter, b.agent("reader") as reader:
            async with reader.subscribe("news.*") as sub:
                await sub.wait_propagated(5)
                await reporter.publish("news.today", "hello")
                message = await sub.receive()
            assert message.source == "phoenix://n0/reporter" and sub.subscriber == "reader"
            assert b.unsubscribe("news.*", subscriber="reader") == 0  # already gone with the block
