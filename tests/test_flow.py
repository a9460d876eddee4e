"""Per-target flow control: watermarks, overflow strategies, spill to disk, telemetry."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import phoenix_trio as px
from phoenix_trio import Backpressure, ConfigurationError
from phoenix_trio._flow import (
    BACKPRESSURE,
    DROPPED_NEWEST,
    QUEUED,
    REDIRECT,
    REJECTED,
    SPILL,
    WAIT,
    FlowControl,
    SpillStore,
    TargetQueue,
)

from .test_node import cluster


def test_watermarks_and_transitions() -> None:
    q = TargetQueue("t", FlowControl(max_queue_size=10, high_watermark=6, low_watermark=2))
    assert [q.offer(i, can_wait=True) for i in range(6)] == [QUEUED] * 6
    assert q.active and q.transitions == [("active", 6)]
    assert q.offer(99, can_wait=True) == WAIT and q.offer(99, can_wait=False) == BACKPRESSURE
    assert [q.take() for _ in range(3)] == [0, 1, 2] and q.active
    assert q.take() == 3 and not q.active  # 2 left: released at the low watermark
    assert q.transitions[-1] == ("released", 2)
    assert q.statistics().activations == 1 and q.statistics().releases == 1


@pytest.mark.parametrize(
    ("strategy", "decision"),
    [("drop_oldest", QUEUED), ("drop_newest", DROPPED_NEWEST), ("reject", REJECTED), ("redirect", REDIRECT)],
)
def test_overflow_strategies_at_max(strategy: str, decision: str) -> None:
    q = TargetQueue("t", FlowControl(max_queue_size=3, high_watermark=2, low_watermark=1, backpressure_strategy=strategy, slow_senders=False))
    for i in range(3):
        assert q.offer(i, can_wait=False) == QUEUED
    assert q.offer(3, can_wait=False) == decision
    if strategy == "drop_oldest":
        assert list(q.queue) == [1, 2, 3] and q.statistics().dropped_oldest == 1
    else:
        assert list(q.queue) == [0, 1, 2]


def test_spill_keeps_order_behind_what_is_on_disk() -> None:
    q = TargetQueue("t", FlowControl(max_queue_size=2, high_watermark=2, low_watermark=0, backpressure_strategy="spill_to_disk", slow_senders=False, spill_dir="/x"))
    assert [q.offer(i, can_wait=False) for i in range(4)] == [QUEUED, QUEUED, SPILL, SPILL]
    assert q.take() == 0 and q.offer(4, can_wait=False) == SPILL  # still behind the spilled ones
    q.take()
    assert q.wants_replay()
    q.replayed([2, 3, 4])
    assert list(q.queue) == [2, 3, 4] and q.spilled_pending == 0


def test_config_is_validated() -> None:
    with pytest.raises(ConfigurationError):
        FlowControl(high_watermark=10, low_watermark=20)
    with pytest.raises(ConfigurationError):
        FlowControl(backpressure_strategy="spill_to_disk")
    with pytest.raises(ConfigurationError):
        FlowControl(backpressure_strategy="panic")


@settings(max_examples=60)
@given(st.lists(st.sampled_from(["offer", "take"]), max_size=200), st.sampled_from(["drop_oldest", "drop_newest", "reject", "redirect"]))
def test_queue_is_bounded_and_accounts_for_everything(ops, strategy) -> None:
    q = TargetQueue("t", FlowControl(max_queue_size=8, high_watermark=6, low_watermark=2, backpressure_strategy=strategy, slow_senders=False))
    offered = 0
    for op in ops:
        if op == "offer":
            q.offer(offered, can_wait=False)
            offered += 1
        elif q.queue:
            q.take()
        s = q.statistics()
        assert len(q.queue) <= 8
        assert offered == s.queued + s.sent + s.dropped_oldest + s.dropped_newest + s.rejected + s.redirected


def test_spill_store_segments_restart_and_bound(tmp_path) -> None:
    store = SpillStore(tmp_path, segment_bytes=4096, max_bytes=64 * 1024)
    payloads = [bytes([i % 256]) * 300 for i in range(300)]
    written = 0
    for p in payloads:
        if not store.append([p]):
            break
        written += 1
    assert 100 < written < 300  # the 64 KiB bound stopped it
    assert store.bytes_on_disk <= 64 * 1024
    assert store.read(10) == payloads[:10]
    store.commit(8)  # two were read but not delivered when the process "dies"
    store.close()
    reopened = SpillStore(tmp_path, segment_bytes=4096, max_bytes=64 * 1024)
    assert reopened.pending_records() == written - 8
    assert reopened.read(1000) == payloads[8:written]  # the two come again: none is lost
    reopened.commit(written - 8)
    assert not list(tmp_path.glob("*.spill"))
    assert reopened.bytes_on_disk == 0


async def test_slow_consumer_slows_the_sender_and_telemetry_reports_it() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("slow", capacity=5) as slow, a.watch_telemetry() as telemetry:
            await a.wait_for_agent("slow", timeout=5)
            flow = a.flow_control("slow", max_queue_size=100, high_watermark=50, low_watermark=10)
            sent = 0
            with trio.move_on_after(1):
                while True:
                    await a.send("slow", sent, delivery="at_most_once")
                    sent += 1
            assert flow.statistics().active and flow.statistics().queued <= 50
            with pytest.raises(Backpressure):
                await a.send("slow", "no wait", wait=False, delivery="at_most_once")
            event = await telemetry.receive()
            assert event.type == "phoenix.telemetry.metric.update"
            assert event.data["metric"] == "flow.backpressure" and event.data["state"] == "active"
            got = [(await slow.receive()).data for _ in range(sent)]
            assert got == list(range(sent))  # nothing lost, in order
            event = await telemetry.receive()
            assert event.data["state"] == "released"


async def test_reject_and_redirect_at_max() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("w1", capacity=1, group="workers"), b.agent("w2", group="workers") as w2:
            await a.wait_for(lambda: len(a.directory.group_members("workers")) == 2, timeout=5)
            a.flow_control("w1", max_queue_size=2, high_watermark=2, low_watermark=1, backpressure_strategy="redirect", slow_senders=False)
            for i in range(40):
                await a.send("w1", i, delivery="at_most_once")
            redirected = a._flows["w1"].statistics().redirected
            assert redirected > 0
            got = [(await w2.receive()).data for _ in range(redirected)]
            assert len(got) == redirected
        async with b.agent("r", capacity=1):
            await a.wait_for_agent("r", timeout=5)
            flow = a.flow_control("r", max_queue_size=2, high_watermark=2, low_watermark=1, backpressure_strategy="reject", slow_senders=False)
            with pytest.raises(Backpressure, match="rejected"):
                for i in range(1000):
                    await a.send("r", i, delivery="at_most_once")
            assert flow.statistics().rejected == 1


async def test_spill_to_disk_across_a_receiver_restart_loses_nothing(tmp_path) -> None:
    # Order across a receiver crash needs in-order streams: exactly-once delivery (which
    # resends in order after a loss) and a durable log at the receiver.
    spill = str(tmp_path / "spill")
    guarantee = px.DeliveryGuarantee.build("exactly_once", timeout=200, max_retries=100)
    async with px.open_node("a", listen="127.0.0.1:0", failure_timeout=0.5, heartbeat_interval=0.1) as a:
        flow = None
        received: list[int] = []
        for life in range(2):
            async with px.open_node("b", listen="127.0.0.1:0", seeds=[a.address], data_dir=str(tmp_path / "b")) as b:
                async with b.agent("store", capacity=10) as store:
                    await a.wait_for_agent("store", timeout=5)
                    if flow is None:
                        flow = a.flow_control("store", max_queue_size=20, high_watermark=20, low_watermark=5, backpressure_strategy="spill_to_disk", slow_senders=False, spill_dir=spill)
                        for i in range(500):
                            await a.send("store", i, delivery=guarantee)
                        assert flow.statistics().spilled > 0
                    while len(set(received)) < (200 if life == 0 else 500):
                        received.append((await store.receive()).data)
            # b is gone: whatever is queued or spilled waits for it
        assert received == list(range(500))  # nothing lost, nothing twice, in order


async def test_spilled_messages_survive_a_restart_of_the_sender(tmp_path) -> None:
    spill = str(tmp_path / "spill")
    config = dict(max_queue_size=1, high_watermark=1, low_watermark=0, backpressure_strategy="spill_to_disk", slow_senders=False, spill_dir=spill)
    # First life: the target is nowhere yet, so the queue holds one message and the rest spills.
    async with px.open_node("a", listen="127.0.0.1:0") as a:
        flow = a.flow_control("store", **config)
        for i in range(100):
            await a.send("store", i, delivery="at_most_once")
        assert flow.statistics().spilled == 99 and flow.statistics().queued == 1
    # The node restarts with the same spill directory; the target exists now.
    async with px.open_node("b", listen="127.0.0.1:0") as b:
        async with b.agent("store", capacity=100_000) as store:
            async with px.open_node("a", listen="127.0.0.1:0", seeds=[b.address]) as a:
                a.flow_control("store", **{**config, "max_queue_size": 1000, "high_watermark": 1000, "low_watermark": 100})
                got = [(await store.receive()).data for _ in range(99)]
    # The one held in memory died with the first life; everything spilled came back, in order.
    assert got == list(range(1, 100))
