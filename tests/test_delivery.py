"""Delivery guarantees: retry policy, the sans-IO trackers, the durable log, and the node."""

from __future__ import annotations

import os
import random

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import phoenix_trio as px
from phoenix_trio import DeliveryFailed, DeliveryGuarantee
from phoenix_trio._dedup_log import DedupLog
from phoenix_trio._delivery import (
    ACCEPT,
    ALO,
    DUPLICATE_QUEUED,
    DUPLICATE_TAKEN,
    EO,
    GAP,
    DeliveryTracker,
    ExactlyOnceStreams,
    Failed,
    Outstanding,
    Resend,
    pack_dseq,
    unpack_dseq,
)
from phoenix_trio._retry import RetryPolicy

from .test_node import cluster

# -- retry policy ------------------------------------------------------------------------------


def test_backoff_strategies() -> None:
    rng = random.Random(1)
    exp = RetryPolicy("exponential_backoff", base=0.1, cap=1.0)
    for attempt in range(8):
        delays = [exp.backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= min(1.0, 0.1 * 2**attempt) for d in delays)
        assert max(delays) > 0.5 * min(1.0, 0.1 * 2**attempt)  # full jitter spans the range
    assert RetryPolicy("linear_backoff", base=0.1, cap=0.35).backoff(5, rng) == 0.35
    assert RetryPolicy("fixed", base=0.2).backoff(9, rng) == 0.2
    assert RetryPolicy.from_guarantee(DeliveryGuarantee(retry_strategy="none")).max_retries == 0
    policy = RetryPolicy.from_guarantee(DeliveryGuarantee(timeout=250, max_retries=7))
    assert (policy.timeout, policy.max_retries) == (0.25, 7)
    assert not policy.gives_up_after(7) and policy.gives_up_after(8)
    with pytest.raises(px.ConfigurationError):
        RetryPolicy("sometimes")


# -- the sender's tracker --------------------------------------------------------------------------


def item(tracker: DeliveryTracker, mode: int, policy: RetryPolicy, node: str = "b", agent: str = "x") -> Outstanding:
    epoch, seq = tracker.reserve(node, agent, mode)
    return Outstanding(node, agent, epoch, seq, mode, f"entry-{seq}", policy)


def test_at_least_once_retries_then_fails() -> None:
    tracker = DeliveryTracker(rng=random.Random(0))
    policy = RetryPolicy(timeout=1.0, max_retries=2, base=0.1, cap=0.1)
    first = item(tracker, ALO, policy)
    second = item(tracker, ALO, policy)
    tracker.add(first, 0.0)
    tracker.add(second, 0.5)
    assert tracker.next_deadline() == 1.0
    assert tracker.acked("b", "x", ALO, 0, second.seq) == [second]
    assert tracker.due(1.0) == []  # waiting out the backoff
    [resend] = tracker.due(1.2)
    assert isinstance(resend, Resend) and resend.item is first and first.attempts == 2
    tracker.due(2.2)
    [again] = tracker.due(2.4)
    assert isinstance(again, Resend) and first.attempts == 3
    [failed] = tracker.due(3.4)
    assert isinstance(failed, Failed) and failed.item is first and "3 attempt" in failed.reason
    assert tracker.outstanding == 0 and tracker.next_deadline() is None


def test_exactly_once_goes_back_n_and_starts_a_new_epoch_after_a_failure() -> None:
    tracker = DeliveryTracker(rng=random.Random(0))
    policy = RetryPolicy(timeout=1.0, max_retries=1, base=0.0, cap=0.0)
    items = [item(tracker, EO, policy) for _ in range(4)]
    for i, it in enumerate(items):
        tracker.add(it, i * 0.1)
    assert tracker.acked("b", "x", EO, 0, 2) == items[:2]  # cumulative
    actions = tracker.due(1.2)  # the oldest outstanding timed out: resend the whole window, in order
    actions += tracker.due(1.2)
    assert [a.item.seq for a in actions if isinstance(a, Resend)] == [3, 4]
    failed = tracker.due(2.5)
    assert [f.item.seq for f in failed if isinstance(f, Failed)] == [3, 4]
    assert tracker.reserve("b", "x", EO) == (1, 1)  # a fresh epoch, numbered from 1
    assert tracker.acked("b", "x", EO, 0, 9) == []  # stale epoch acks do nothing


def test_window_bounds_outstanding_messages() -> None:
    tracker = DeliveryTracker(window=3)
    policy = RetryPolicy(timeout=1.0)
    for _ in range(3):
        tracker.add(item(tracker, ALO, policy), 0.0)
    assert not tracker.has_room("b", "x", ALO) and tracker.has_room("b", "y", ALO)
    tracker.acked("b", "x", ALO, 0, 1)
    assert tracker.has_room("b", "x", ALO)


@settings(max_examples=80)
@given(st.lists(st.tuples(st.sampled_from(["send", "ack", "tick"]), st.integers(1, 30), st.floats(0, 2)), max_size=60), st.sampled_from([ALO, EO]))
def test_tracker_never_loses_track(ops, mode) -> None:
    tracker = DeliveryTracker(rng=random.Random(3))
    policy = RetryPolicy(timeout=0.5, max_retries=2, base=0.05, cap=0.2)
    now = 0.0
    live: dict[int, Outstanding] = {}
    settled: set[int] = set()
    for op, n, dt in ops:
        now += dt
        if op == "send":
            it = item(tracker, mode, policy)
            tracker.add(it, now)
            live[it.seq] = it
        elif op == "ack":
            epoch = next(iter(live.values())).epoch if live else 0
            for done in tracker.acked("b", "x", mode, epoch, n):
                settled.add(done.seq)
                live.pop(done.seq, None)
        else:
            for action in tracker.due(now):
                if isinstance(action, Failed):
                    settled.add(action.item.seq)
                    live.pop(action.item.seq, None)
                else:
                    assert action.item.seq in live
        assert tracker.outstanding == len(tracker.all_outstanding())
        assert {i.seq for i in tracker.all_outstanding()} <= set(live)


def test_dseq_packing() -> None:
    assert unpack_dseq(pack_dseq(7, 123456789)) == (7, 123456789)


# -- the receiver's streams ------------------------------------------------------------------------


def test_exactly_once_streams_accept_in_order_only() -> None:
    key = ("a", 1, "x", 0)
    streams = ExactlyOnceStreams(window=10)
    assert streams.offer(key, 1, 0) == ACCEPT
    assert streams.offer(key, 3, 0) == GAP
    assert streams.offer(key, 1, 0) == DUPLICATE_QUEUED
    assert streams.offer(key, 2, 0) == ACCEPT
    assert streams.taken(key, 1, 0) == 1
    assert streams.offer(key, 1, 0) == DUPLICATE_TAKEN
    streams.reset_accepted()  # a restart lost what was queued but not taken
    assert streams.offer(key, 2, 0) == ACCEPT
    assert streams.expire(5) == [] and streams.expire(20) == [key]
    restored = ExactlyOnceStreams({key: 5})
    assert restored.offer(key, 5, 0) == DUPLICATE_TAKEN and restored.offer(key, 6, 0) == ACCEPT


# -- the durable log ---------------------------------------------------------------------------------


def test_dedup_log_recovers_watermarks_and_compacts(tmp_path) -> None:
    log, recovered = DedupLog.open(tmp_path)
    assert recovered == {}
    keys = [("a", 1, f"agent{i}", 0) for i in range(3)]
    for seq in range(1, 50):
        for key in keys:
            log.record(key, seq)
    log.sync()
    log.compact({keys[0]: 49, keys[1]: 49})  # keys[2]'s stream was forgotten
    log.record(keys[1], 50)
    log.close()
    _, recovered = DedupLog.open(tmp_path)
    assert recovered == {keys[0]: 49, keys[1]: 50}


def test_dedup_log_survives_the_process_without_close_and_a_torn_stream_record(tmp_path) -> None:
    import shutil

    state = tmp_path / "state"
    log, _ = DedupLog.open(state)
    key = ("a", 1, "x", 0)
    for seq in range(1, 6):
        log.record(key, seq)
    log.record(("b", 2, "y", 0), 7)
    # No close, no sync: what a killed process leaves (the page cache keeps the stores).
    streams = (state / "dedup.streams").read_bytes()
    table = (state / "dedup.table").read_bytes()
    last = streams.rfind(b"PX")  # the record naming the newest stream
    for cut in [len(streams), *range(last, len(streams))]:
        copy = tmp_path / f"cut{cut}"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        (copy / "dedup.streams").write_bytes(streams[:cut])
        (copy / "dedup.table").write_bytes(table)
        _, recovered = DedupLog.open(copy)
        expected = {key: 5, ("b", 2, "y", 0): 7} if cut == len(streams) else {key: 5}
        assert recovered == expected  # a torn registration loses only that stream


# -- on the node ---------------------------------------------------------------------------------------


async def test_at_least_once_is_acknowledged_when_the_agent_has_handled_it() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("worker") as worker:
            await a.wait_for_agent("worker", timeout=5)
            done = trio.Event()

            async def deliver() -> None:
                await a.deliver("worker", "job")  # waits for the acknowledgement
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                first = await worker.receive()
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()  # taken, but the agent has not come back yet
                with trio.move_on_after(0.01):
                    await worker.receive()  # coming back for more acknowledges the first
                await done.wait()
            assert first.data == "job" and a._tracker.outstanding == 0


async def test_unhandled_reliable_messages_fail_after_their_retries() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("stuck", capacity=1):
            await a.wait_for_agent("stuck", timeout=5)
            guarantee = DeliveryGuarantee.build("at_least_once", timeout=50, max_retries=2)
            with pytest.raises(DeliveryFailed) as caught:
                await a.deliver("stuck", "never handled", delivery=guarantee)
            assert caught.value.attempts == 3 and caught.value.target == "stuck"
            assert a.stats["retransmitted"] == 2 and a.stats["delivery_failures"] == 1


async def test_exactly_once_drops_duplicates_from_forced_retries() -> None:
    async with cluster(2) as (a, b):
        async with b.agent("ledger", capacity=100_000) as ledger:
            await a.wait_for_agent("ledger", timeout=5)
            # A tiny ack timeout makes the sender resend most messages at least once.
            guarantee = DeliveryGuarantee.build("exactly_once", timeout=1, max_retries=50)
            for i in range(2000):
                await a.send("ledger", i, delivery=guarantee)
            await trio.sleep(0.2)  # the scenario: a slow consumer, while the sender keeps resending
            seen = [(await ledger.receive()).data for _ in range(2000)]
            with trio.move_on_after(0.01):
                await ledger.receive()  # come back once more: everything taken is acknowledged
            await a.flush_deliveries(timeout=10)
            assert ledger.inbox.statistics().queued == 0
            assert seen == list(range(2000))  # once each, in order
            assert a.stats["retransmitted"] > 0 and b.stats["duplicates_dropped"] > 0


async def test_exactly_once_survives_a_receiver_restart(tmp_path) -> None:
    data_dir = str(tmp_path / "b")
    guarantee = DeliveryGuarantee.build("exactly_once", timeout=100, max_retries=100)
    seen: list[int] = []
    async with px.open_node("a", listen="127.0.0.1:0", failure_timeout=0.5, heartbeat_interval=0.1) as a:
        for incarnation in range(3):
            async with px.open_node("b", listen="127.0.0.1:0", seeds=[a.address], data_dir=data_dir) as b:
                async with b.agent("ledger", capacity=100_000) as ledger:
                    await a.wait_for_agent("ledger", timeout=5)
                    start = incarnation * 300
                    for i in range(start, start + 300):
                        await a.send("ledger", i, delivery=guarantee)
                    # take half, then "crash": the rest stays outstanding at the sender
                    for _ in range(150 if incarnation < 2 else 300 + 150 * 2):
                        seen.append((await ledger.receive()).data)
            await a.wait_for(lambda: a.members["b"].status in ("left", "dead"), timeout=5)
    assert sorted(seen) == list(range(900)) and len(seen) == len(set(seen))
