"""Pipelines with several nodes in one Trio run: order, workers, errors, backpressure,
reconfiguration under traffic, monitoring."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import phoenix_trio as px
from phoenix_trio import Backpressure, PipelineStopped, Stage, serve_stage, stage_error

from .test_node import cluster


def tag(agent_id: str, delay: float = 0.0, rng: random.Random | None = None) -> Callable[[Any], Any]:
    """A stage handler appending its agent id to the message's path."""

    async def handler(data: Any) -> Any:
        if delay:
            await trio.sleep((rng or random).random() * delay)
        return {**data, "path": data["path"] + [agent_id]}

    return handler


async def worker(node: px.Node, agent_id: str, handler: Callable[[Any], Any], *, group: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with node.agent(agent_id, group=group) as agent:
        task_status.started()
        await serve_stage(agent, handler)


async def start_workers(nursery: trio.Nursery, specs: list[tuple[px.Node, str, str | None, float]], observer: px.Node) -> None:
    rng = random.Random(7)
    for node, agent_id, group, delay in specs:
        await nursery.start(lambda task_status, n=node, a=agent_id, g=group, d=delay: worker(n, a, tag(a, d, rng), group=g, task_status=task_status))
    for _, agent_id, _, _ in specs:
        await observer.wait_for_agent(agent_id, timeout=5)


async def test_order_is_kept_through_a_stage_with_several_workers_on_other_nodes() -> None:
    async with cluster(3) as (a, b, c), trio.open_nursery() as nursery:
        await start_workers(
            nursery,
            [(b, "parse", None, 0.0)] + [(c, f"enrich-{i}", "enrich", 0.003) for i in range(3)] + [(b, "store", None, 0.0)],
            a,
        )
        pipeline = await a.create_pipeline(["parse", "enrich", "store"], monitoring=False)

        async def feed() -> None:
            for i in range(600):
                assert await a.send_to_pipeline(pipeline.id, {"i": i, "path": []}) == i

        nursery.start_soon(feed)
        results = [await pipeline.receive() for _ in range(600)]
        assert [r.sequence for r in results] == list(range(600))
        assert [r.data["i"] for r in results] == list(range(600))
        workers = {r.data["path"][1] for r in results}
        assert workers == {"enrich-0", "enrich-1", "enrich-2"}
        assert all(r.data["path"][0] == "parse" and r.data["path"][2] == "store" for r in results)
        last = results[-1].message
        assert last is not None and last.source == "phoenix://n1/store"
        stats = pipeline.statistics()
        assert stats.completed == 600 and stats.inside == 0 and stats.reorder_buffered == 0
        assert [s.completed for s in stats.stages] == [600, 600, 600]
        assert stats.stages[1].latency_p50_ms is not None and stats.stages[1].latency_p50_ms > 0
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_stages_receive_pipeline_messages() -> None:
    seen: list[px.Message] = []
    async with cluster(2) as (a, b), trio.open_nursery() as nursery:

        async def stage(task_status: Any) -> None:
            async with b.agent("double") as agent:
                task_status.started()
                await serve_stage(agent, lambda m: (seen.append(m), m.data * 2)[1], pass_message=True)

        await nursery.start(stage)
        await a.wait_for_agent("double", timeout=5)
        async with await a.create_pipeline(["double"], monitoring=False) as pipeline:
            await pipeline.send(21)
            assert (await pipeline.receive()).data == 42
        message = seen[-1]
        assert message.type == "phoenix.pipeline.process"
        assert message.routing.pattern == "pipeline" and message.routing.pipeline_id == pipeline.id
        assert message.routing.ordering == "sequential"
        assert message.source == f"phoenix://n0/pipeline/{pipeline.id}"
        nursery.cancel_scope.cancel()


class Flaky:
    """Fails the first ``failures`` attempts for messages whose value is in ``bad``."""

    def __init__(self, bad: set[int], failures: int) -> None:
        self.bad = bad
        self.failures = failures
        self.attempts: dict[int, int] = {}

    def __call__(self, data: int) -> int:
        n = self.attempts[data] = self.attempts.get(data, 0) + 1
        if data in self.bad and n <= self.failures:
            raise ValueError(f"bad value {data}")
        return data


async def run_flaky(strategy: str, failures: int, **options: Any) -> tuple[px.Pipeline, list[Any], list[px.Message], Flaky]:
    flaky = Flaky({3, 7}, failures)
    letters: list[px.Message] = []
    results: list[Any] = []
    async with px.open_node("solo") as node, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: worker(node, "flaky", flaky, task_status=task_status))
        pipeline = await node.create_pipeline(
            [Stage("flaky", error_strategy=strategy)], retry_backoff=0.001, retry_backoff_max=0.004, monitoring=False, seed=1, **options
        )
        async with node.subscribe(pipeline.dead_letter_topic) as dead:
            for i in range(10):
                await pipeline.send(i)
            try:
                async for result in pipeline:
                    results.append(result.data)
                    if result.sequence == 9:
                        break
            except PipelineStopped as exc:
                results.append(exc)
            while True:
                try:
                    letters.append(dead.receive_nowait())
                except trio.WouldBlock:
                    break
        nursery.cancel_scope.cancel()
    return pipeline, results, letters, flaky


async def test_retry_with_backoff_recovers() -> None:
    pipeline, results, letters, flaky = await run_flaky("retry", 2, max_retries=3)
    assert results == list(range(10)) and letters == []
    assert flaky.attempts[3] == 3 and flaky.attempts[0] == 1
    stage = pipeline.statistics().stages[0]
    assert (stage.errors, stage.retries) == (4, 4)


async def test_retry_out_of_attempts_dead_letters() -> None:
    pipeline, results, letters, flaky = await run_flaky("retry", 99, max_retries=2)
    assert results == [0, 1, 2, 4, 5, 6, 8, 9]
    assert flaky.attempts[3] == 3
    assert sorted(m.data["sequence"] for m in letters) == [3, 7]
    letter = next(m for m in letters if m.data["sequence"] == 3)
    assert letter.type == "phoenix.pipeline.dead_letter" and letter.subject == pipeline.dead_letter_topic
    assert letter.data["attempts"] == 3 and "ValueError: bad value 3" in letter.data["error"] and letter.data["data"] == 3
    assert pipeline.statistics().dead_lettered == 2


async def test_skip_drops_the_failed_message_and_counts_it() -> None:
    pipeline, results, letters, flaky = await run_flaky("skip", 1)
    assert results == [0, 1, 2, 4, 5, 6, 8, 9] and letters == []
    assert flaky.attempts[3] == 1
    assert pipeline.statistics().skipped == 2


async def test_dead_letter_publishes_at_once() -> None:
    pipeline, results, letters, flaky = await run_flaky("dead_letter", 1)
    assert results == [0, 1, 2, 4, 5, 6, 8, 9]
    assert sorted(m.data["sequence"] for m in letters) == [3, 7] and letters[0].data["attempts"] == 1


async def test_stop_stops_the_pipeline() -> None:
    pipeline, results, letters, flaky = await run_flaky("stop", 1)
    assert results[:3] == [0, 1, 2] and isinstance(results[-1], PipelineStopped)
    assert pipeline.state == "stopped" and "failed on message 3" in (pipeline.stop_reason or "")
    with pytest.raises(PipelineStopped):
        await pipeline.send(11)


async def test_a_stage_that_never_answers_times_out_and_unreachable_stages_fail() -> None:
    async with px.open_node("solo") as node:
        async with node.agent("silent") as silent:
            pipeline = await node.create_pipeline(
                [Stage("silent", timeout=0.05), "missing"], error_strategy="dead_letter", monitoring=False
            )
            async with node.subscribe(pipeline.dead_letter_topic) as dead:
                await pipeline.send("x")
                letter = await dead.receive()
                assert "TooSlowError" in letter.data["error"] and letter.data["stage"] == 0
                assert (await silent.receive()).data == "x"  # it did get the message
                # a stage agent that does not exist
                await pipeline.replace_stage(0, "echo-none")
                await pipeline.send("y")
                letter = await dead.receive()
                assert "AgentNotFound" in letter.data["error"]
            await pipeline.aclose()


async def test_an_explicit_stage_error_reply() -> None:
    async with px.open_node("solo") as node, trio.open_nursery() as nursery:

        async def picky(task_status: Any) -> None:
            async with node.agent("picky") as agent:
                task_status.started()
                async for message in agent:
                    if message.data == "bad":
                        await stage_error(message, "I refuse")
                    else:
                        await message.reply(message.data.upper())

        await nursery.start(picky)
        pipeline = await node.create_pipeline(["picky"], error_strategy="skip", monitoring=False)
        for item in ("a", "bad", "c"):
            await pipeline.send(item)
        assert [(await pipeline.receive()).data for _ in range(2)] == ["A", "C"]
        assert pipeline.statistics().stages[0].errors == 1
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("strategy", ["buffer", "block", "drop"])
async def test_backpressure_at_the_high_water_mark(strategy: str) -> None:
    gate = trio.Event()
    async with px.open_node("solo") as node, trio.open_nursery() as nursery:

        async def gated(data: int) -> int:
            await gate.wait()
            return data

        await nursery.start(lambda task_status: worker(node, "gated", gated, task_status=task_status))
        pipeline = await node.create_pipeline(["gated"], backpressure=strategy, window=2, buffer_size=3, monitoring=False)
        for i in range(5):  # 2 inside + 3 buffered
            await pipeline.send(i)
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.statistics().inside == 2 and pipeline.statistics().input_queued == 3
        if strategy == "buffer":
            with pytest.raises(Backpressure):
                await pipeline.send(5)
            assert pipeline.statistics().rejected == 1
            expected = list(range(5))
        elif strategy == "drop":
            assert await pipeline.send(5) is None
            assert pipeline.statistics().dropped == 1
            expected = list(range(5))
        else:
            with pytest.raises(Backpressure):
                await pipeline.send(5, wait=False)
            sent = trio.Event()

            async def blocked_sender() -> None:
                assert await pipeline.send(5) == 5
                sent.set()

            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            expected = list(range(6))
        gate.set()
        got = [(await pipeline.receive()).data for _ in expected]
        assert got == expected
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_an_unread_output_fills_the_window_then_the_buffer() -> None:
    async with px.open_node("solo") as node, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: worker(node, "id", lambda d: d, task_status=task_status))
        pipeline = await node.create_pipeline(["id"], window=4, buffer_size=4, monitoring=False)
        for i in range(8):
            await pipeline.send(i)
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
        assert (stats.output_queued, stats.inside, stats.input_queued) == (4, 4, 4)
        with pytest.raises(Backpressure):
            await pipeline.send(8)
        assert [(await pipeline.receive()).data for _ in range(8)] == list(range(8))
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


ORDER = {"A": 0, "E": 1, "C": 2, "B": 3, "D": 3}


async def test_reconfiguration_under_traffic_loses_duplicates_and_reorders_nothing() -> None:
    async with cluster(3) as (a, b, c), trio.open_nursery() as nursery:
        await start_workers(
            nursery,
            [(b, "A", None, 0.001), (c, "B", None, 0.001)]
            + [(c, f"C{i}", "C", 0.002) for i in range(2)]
            + [(b, "D", None, 0.001), (a, "E", None, 0.0)],
            a,
        )
        pipeline = await a.create_pipeline(["A", "B"], monitoring=False, window=64)
        total = 1500
        results: list[px.PipelineResult] = []
        steps = [
            (250, lambda: pipeline.add_stage("C", 1)),  # A, C, B
            (500, lambda: pipeline.replace_stage(2, "D")),  # A, C, D
            (750, lambda: pipeline.remove_stage(0)),  # C, D
            (1000, lambda: pipeline.add_stage("E", 0)),  # E, C, D
            (1250, lambda: pipeline.remove_stage(1)),  # E, D
        ]
        reached = {threshold: trio.Event() for threshold, _ in steps}

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
            for threshold, step in steps:
                await reached[threshold].wait()
                await step()

        async with trio.open_nursery() as work:
            work.start_soon(feed)
            work.start_soon(collect)
            work.start_soon(reconfigure)
        assert [r.data["i"] for r in results] == list(range(total))  # none lost, none twice, in order
        assert [r.sequence for r in results] == list(range(total))
        for r in results:
            # every route is allowed by some moment's configuration: stages in pipeline order,
            # none twice, ending at the last stage (B, or D which replaced it)
            path = [p.rstrip("01") for p in r.data["path"]]
            positions = [ORDER[p] for p in path]
            assert positions == sorted(set(positions)) and path[-1] in ("B", "D"), path
        assert all(r.data["path"] == ["A", "B"] for r in results[:50])
        assert all(r.data["path"] == ["E", "D"] for r in results[-50:])
        assert {p for r in results for p in r.data["path"]} >= {"A", "B", "C0", "C1", "D", "E"}
        assert [s.target for s in pipeline.stages] == ["E", "D"]
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_a_dead_worker_node_is_routed_around() -> None:
    async with cluster(2) as (a, b), trio.open_nursery() as nursery:
        await start_workers(nursery, [(b, "w-b", "w", 0.0)], a)
        pipeline = await a.create_pipeline(["w"], monitoring=False, retry_backoff=0.01, stage_timeout=2.0)
        got: list[px.PipelineResult] = []
        async with px.open_node("n2", listen="127.0.0.1:0", seeds=[a.address]) as c, trio.open_nursery() as on_c:
            await start_workers(on_c, [(c, "w-c", "w", 0.0)], a)
            for i in range(100):
                await pipeline.send({"i": i, "path": []})
            got += [await pipeline.receive() for _ in range(100)]
            assert {r.data["path"][0] for r in got} == {"w-b", "w-c"}
            # messages in flight when n2 goes away fail with NodeUnreachable and are retried
            for i in range(100, 200):
                await pipeline.send({"i": i, "path": []})
            on_c.cancel_scope.cancel()  # w-c stops with messages in flight; then n2 goes away
        got += [await pipeline.receive() for _ in range(100)]
        assert [r.data["i"] for r in got] == list(range(200))
        for i in range(200, 300):
            await pipeline.send({"i": i, "path": []})
        got += [await pipeline.receive() for _ in range(100)]
        assert all(r.data["path"] == ["w-b"] for r in got[200:])
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_monitoring_publishes_metric_updates_and_remote_nodes_can_feed() -> None:
    async with cluster(2) as (a, b), trio.open_nursery() as nursery:
        await start_workers(nursery, [(a, "s1", None, 0.0), (b, "s2", None, 0.0)], a)
        async with b.subscribe("phoenix.telemetry.pipeline.#") as telemetry:
            pipeline = await a.create_pipeline(["s1", "s2"], monitoring_interval=0.05)
            await telemetry.wait_propagated(5)
            await b.wait_for_agent(pipeline.agent_id, timeout=5)
            for i in range(20):
                assert await b.send_to_pipeline(pipeline.id, {"i": i, "path": []}) is None
            got = [(await pipeline.receive()).data["i"] for _ in range(20)]
            assert got == list(range(20))
            while True:
                update = await telemetry.receive()
                if update.data["completed"] == 20:
                    break
            assert update.type == "phoenix.telemetry.metric.update"
            assert update.subject == pipeline.telemetry_topic
            assert update.data["pipeline"] == pipeline.id
            assert [s["target"] for s in update.data["stages"]] == ["s1", "s2"]
            assert all(s["completed"] == 20 and s["latency_p50_ms"] > 0 for s in update.data["stages"])
            with pytest.raises(px.PipelineError):
                await b.send_to_pipeline("no-such-pipeline", 1)
            await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_output_to_an_agent_and_closing() -> None:
    async with px.open_node("solo") as node, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: worker(node, "inc", lambda d: d + 1, task_status=task_status))
        async with node.agent("sink") as sink:
            pipeline = await node.create_pipeline(["inc", "inc"], output="sink", monitoring=False)
            for i in range(10):
                await pipeline.send(i)
            got = [await sink.receive() for _ in range(10)]
            assert [m.data for m in got] == [i + 2 for i in range(10)]
            assert got[0].type == "phoenix.pipeline.result"
            with pytest.raises(px.PipelineError):
                await pipeline.receive()
            await pipeline.aclose()
            assert pipeline.state == "closed"
            with pytest.raises(PipelineStopped):
                await pipeline.send(1)
            assert pipeline.id not in node._pipelines
        nursery.cancel_scope.cancel()


async def test_a_remote_sender_waits_for_a_full_buffer_instead_of_losing_messages() -> None:
    gate = trio.Event()
    async with cluster(2) as (a, b), trio.open_nursery() as nursery:

        async def gated(data: int) -> int:
            await gate.wait()
            return data

        await nursery.start(lambda task_status: worker(a, "gated", gated, task_status=task_status))
        pipeline = await a.create_pipeline(["gated"], window=2, buffer_size=2, monitoring=False)  # backpressure="buffer"
        await b.wait_for_agent(pipeline.agent_id, timeout=5)
        for i in range(20):  # far more than window + buffer: they wait in the pipeline agent's inbox
            await b.send_to_pipeline(pipeline.id, i)
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
        assert (stats.inside, stats.input_queued, stats.rejected) == (2, 2, 0)
        gate.set()
        assert [(await pipeline.receive()).data for _ in range(20)] == list(range(20))
        await pipeline.aclose()
        nursery.cancel_scope.cancel()


async def test_replies_to_a_burst_of_requests_share_frames() -> None:
    # A stage answers a burst of requests: its replies go out in batches, not one write each.
    async with cluster(2) as (a, b):
        async with b.agent("echo") as echo:
            await a.wait_for_agent("echo", timeout=5)
            replies: list[int] = []

            async def ask(i: int) -> None:
                replies.append((await a.request("echo", i, timeout=10)).data)

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(ask, i)
                await trio.testing.wait_all_tasks_blocked()
                assert echo.statistics().queued == 200
                frames_before = b._connections["n0"].frames_written
                async for message in echo:
                    await message.reply(message.data)
                    if echo.statistics().delivered == 200:
                        break
            assert sorted(replies) == list(range(200))
            assert b._connections["n0"].frames_written - frames_before < 20
