"""The main job behind ``make demo``: a local cluster at work, and a readable report.

Starts three node processes (``python -m phoenix_trio node``) on loopback, each hosting
an echo agent, a counter, a traffic driver, a pub-sub subscriber and pipeline stages. A
conductor node joins the cluster and orders every driver to send point-to-point traffic
to, and make requests of, the agents on the other two processes. Then pub-sub: every
driver publishes to subscriptions on every process (each publication crosses the
network once per interested node), and a slow subscriber shows ``drop_oldest`` against
``block``. Then a pipeline through stages on all three processes, reconfigured while
traffic flows. Then consensus: a Raft group of three more processes
(:mod:`phoenix_trio._demo_consensus`) keeps every acknowledged write through a SIGKILL
of its leader under load. Then it kills one process with SIGKILL, shows the failure being detected
and reported, restarts it and shows it rejoining. Last, a separate overlay of 12 node
processes (:mod:`phoenix_trio._demo_overlay`): Plumtree broadcast and gossip reach every
node, a quarter is SIGKILLed, the overlay repairs and the next broadcast reaches the rest. The report lists the nodes, their
agents, the traffic matrix with rates, request latencies, what the counters received,
the subscriptions and what they got, the pipeline's order check and per-stage figures,
and the membership events.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import trio

from . import NodeUnreachable, core
from ._node import Node, open_node
from ._demo_consensus import consensus_section
from ._demo_overlay import overlay_section
from ._node_process import NodeProcess
from ._report_table import print_table

NAMES = ("n1", "n2", "n3")
MESSAGES = 20_000
REQUESTS = 500
PUBLICATIONS = 5_000
SLOW = 1_000
PIPELINE_MESSAGES = 5_000
FAILURE_TIMEOUT = 1.0
HEARTBEAT = 0.2


def _agents(name: str) -> list[str]:
    agents = [f"echo:echo-{name}", f"counter:count-{name}", f"driver:driver-{name}", f"subscriber:sub-{name}", f"stage:stage-{name}"]
    if name == "n2":
        agents += ["stage:enrich-a@enrich", "stage:enrich-b@enrich"]
    return agents


async def _conduct() -> bool:
    ok = True
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        first = await NodeProcess("n1", agents=_agents("n1"), failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT).start(nursery)
        procs = {"n1": first}
        for name in NAMES[1:]:
            procs[name] = await NodeProcess(
                name, seeds=[first.address or ""], agents=_agents(name), failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT
            ).start(nursery)
        async with open_node("conductor", seeds=[first.address or ""], failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
            await node.wait_for_members(3, timeout=20)
            for name in NAMES:
                for kind in ("echo", "count", "driver"):
                    await node.wait_for_agent(f"{kind}-{name}", timeout=20)
            events: list[str] = []

            async def watch() -> None:
                async with node.watch_membership() as stream:
                    async for event in stream:
                        events.append(f"+{time.perf_counter() - started:5.2f} s  {event.node_id} {event.kind}")

            nursery.start_soon(watch)
            print(f"phoenix_trio demo: a local cluster of {len(NAMES)} node processes (core: {core.IMPLEMENTATION}, CRC32C via {core.crc32c_implementation()})")
            print()
            print("Nodes")
            print_table(
                ["node", "pid", "address", "agents"],
                [[n, p.pid, p.address, ", ".join(a.split(":")[1] for a in _agents(n))] for n, p in procs.items()],
            )

            # Point-to-point: every driver sends to the counters on the two other nodes, all at once.
            traffic: dict[tuple[str, str, str], dict[str, Any]] = {}

            async def order(source: str, target: str, what: str, count: int) -> None:
                reply = await node.request(f"driver-{source}", {what: f"{'count' if what == 'send' else 'echo'}-{target}", "count": count, "size": 100}, timeout=120)
                traffic[(source, target, what)] = reply.data

            async with trio.open_nursery() as orders:
                for source in NAMES:
                    for target in NAMES:
                        if source != target:
                            orders.start_soon(order, source, target, "send", MESSAGES)
            async with trio.open_nursery() as syncs:  # each driver's sends have all arrived
                for source in NAMES:
                    for target in NAMES:
                        if source != target:
                            syncs.start_soon(partial(node.request, f"driver-{source}", {"sync": f"count-{target}"}, timeout=30))
            counts = {}
            for name in NAMES:
                counts[name] = (await node.request(f"count-{name}", "count", timeout=30)).data
            print()
            print(f"Point-to-point: each node's driver sends {MESSAGES:,} messages of 100 bytes to the counter on each other node")
            print("  (at-least-once, the default: a driver's time runs until every message was acknowledged as handled)")
            print_table(
                ["from", "to", "messages", "delivered rate"],
                [[s, t, f"{d['sent']:,}", f"{d['sent'] / d['seconds'] / 1e3:,.0f} k msgs/s"] for (s, t, w), d in sorted(traffic.items()) if w == "send"],
            )
            print("  counters received: " + ", ".join(f"count-{n} {c:,}" for n, c in counts.items()))
            expected = MESSAGES * (len(NAMES) - 1)
            if any(c != expected for c in counts.values()):
                print(f"  !! expected {expected:,} at each counter")
                ok = False

            # Request-response: every driver asks the echo agents on the other nodes.
            async with trio.open_nursery() as orders:
                for source in NAMES:
                    for target in NAMES:
                        if source != target:
                            orders.start_soon(order, source, target, "request", REQUESTS)
            print()
            print(f"Request-response: each driver makes {REQUESTS} sequential requests to the echo agent on each other node")
            print_table(
                ["from", "to", "requests", "p50", "p99"],
                [[s, t, d["requests"], f"{d['p50_us']:.0f} us", f"{d['p99_us']:.0f} us"] for (s, t, w), d in sorted(traffic.items()) if w == "request"],
            )

            ok = await _pubsub_section(node) and ok
            ok = await _pipeline_section(node) and ok
            ok = await consensus_section(node, first.address or "", failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT) and ok

            # Failure: kill n3 without warning, watch it being detected, restart it.
            print()
            print(f"Failure detection (timeout {FAILURE_TIMEOUT:g} s, heartbeat {HEARTBEAT:g} s): SIGKILL n3")
            killed = time.perf_counter()
            procs["n3"].kill()
            await node.wait_for(lambda: node.members["n3"].status == "dead", timeout=10)
            print(f"  conductor declared n3 dead after {time.perf_counter() - killed:.2f} s")
            try:
                await node.request("echo-n3", "hello?", timeout=5)
                print("  !! request to echo-n3 succeeded")
                ok = False
            except NodeUnreachable as exc:
                print(f"  a request to echo-n3 now fails at once: NodeUnreachable({exc})")
            reply = await node.request("driver-n1", {"request": "echo-n2", "count": 100}, timeout=60)
            print(f"  n1 -> n2 keeps working: 100 requests, p50 {reply.data['p50_us']:.0f} us")
            await procs["n3"].stop()
            restarted = time.perf_counter()
            procs["n3"] = await NodeProcess("n3", seeds=[first.address or ""], agents=_agents("n3"), failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT).start(nursery)
            await node.wait_for_agent("echo-n3", timeout=20)
            answer = (await node.request("echo-n3", "welcome back", timeout=10)).data
            print(f"  restarted n3 rejoined after {time.perf_counter() - restarted:.2f} s and answers: {answer!r}")

            stats = (await node.request("driver-n1", "node-stats", timeout=10)).data
            print()
            print("Transport on n1 (frames carry batches of messages; every frame is CRC32C-checked)")
            print_table(
                ["peer", "messages sent", "frames written", "messages received", "frames read"],
                [[p, f"{c['messages_sent']:,}", f"{c['frames_written']:,}", f"{c['messages_received']:,}", f"{c['frames_read']:,}"] for p, c in sorted(stats["connections"].items())],
            )
            print()
            print("Membership events seen by the conductor")
            for line in events:
                print("  " + line)
            for proc in procs.values():
                await proc.stop()
            nursery.cancel_scope.cancel()
    ok = await overlay_section() and ok
    print()
    print(f"demo {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
    return ok


async def _pubsub_section(node: Node) -> bool:
    """Every driver publishes to subscriptions on every process; then a slow subscriber."""
    ok = True
    patterns = {"n1": ["metrics.#"], "n2": ["metrics.*.cpu", "metrics.n1.*"], "n3": ["metrics.#"]}
    for name, subscribed in patterns.items():
        for pattern in subscribed:
            await node.request(f"sub-{name}", {"subscribe": pattern, "capacity": 20_000}, timeout=30)
    before = {n: (await node.request(f"driver-{n}", "node-stats", timeout=10)).data["connections"] for n in NAMES}
    seconds: dict[str, float] = {}

    async def publish(name: str) -> None:
        reply = await node.request(f"driver-{name}", {"publish": f"metrics.{name}.cpu", "count": PUBLICATIONS, "size": 100}, timeout=120)
        seconds[name] = reply.data["seconds"]

    async with trio.open_nursery() as publishing:
        for name in NAMES:
            publishing.start_soon(publish, name)
    expected = {("n1", "metrics.#"): 3, ("n2", "metrics.*.cpu"): 3, ("n2", "metrics.n1.*"): 1, ("n3", "metrics.#"): 3}
    rows = []
    for (name, pattern), publishers in expected.items():
        wanted = publishers * PUBLICATIONS
        (report,) = (await node.request(f"sub-{name}", {"wait": wanted, "pattern": pattern}, timeout=60)).data
        if report["count"] != wanted or report["out_of_order"]:
            ok = False
        rows.append([name, pattern, report["backpressure"], f"{report['count']:,}", ", ".join(report["publishers"]), report["out_of_order"]])
    after = {n: (await node.request(f"driver-{n}", "node-stats", timeout=10)).data["connections"] for n in NAMES}
    print()
    print(f"Publish-subscribe: each node's driver publishes {PUBLICATIONS:,} events of 100 bytes on metrics.<node>.cpu")
    print("  (topics are dot-separated; '*' matches one segment, '#' any number)")
    print_table(["node", "pattern", "policy", "received", "from", "out of order"], rows)
    rates = ", ".join(f"{n} {PUBLICATIONS / seconds[n] / 1e3:,.0f} k/s" for n in NAMES)
    print(f"  publish rates: {rates}")
    crossings = [f"{s}->{t} {after[s][t]['messages_sent'] - before[s][t]['messages_sent']:,}" for s in NAMES for t in NAMES if s != t]
    print(f"  data messages between the nodes meanwhile: {', '.join(crossings)}")
    print("  (each publication crossed each link once, however many subscriptions matched at the far end:")
    print("   n2 has two matching metrics.n1.cpu; the publisher's node matches, the subscribers' node fans out)")
    if any(after[s][t]["messages_sent"] - before[s][t]["messages_sent"] != PUBLICATIONS for s in NAMES for t in NAMES if s != t):
        print("  !! expected exactly one copy per publication and interested node")
        ok = False

    # A slow subscriber (1 ms per event) on n3: drop_oldest against block.
    await node.request("sub-n3", {"subscribe": "slow.oldest", "capacity": 100, "delay": 0.001}, timeout=30)
    await node.request("sub-n3", {"subscribe": "slow.block", "backpressure": "block", "capacity": 100, "delay": 0.001}, timeout=30)
    results = {}
    for topic in ("slow.oldest", "slow.block"):
        reply = await node.request("driver-n1", {"publish": topic, "count": SLOW, "size": 100}, timeout=120)
        results[topic] = reply.data["seconds"]
    reports = {}
    for topic in results:
        (reports[topic],) = (await node.request("sub-n3", {"wait": SLOW, "pattern": topic}, timeout=60)).data
    print()
    print(f"Backpressure: n1 publishes {SLOW:,} events to a subscriber on n3 that takes 1 ms per event (queue of 100)")
    print_table(
        ["policy", "publisher took", "consumed", "dropped (counted)", "largest queue"],
        [
            [reports[t]["backpressure"], f"{results[t] * 1e3:,.0f} ms", f"{reports[t]['delivered']:,}", f"{reports[t]['dropped']:,}", reports[t]["high_water"]]
            for t in ("slow.oldest", "slow.block")
        ],
    )
    print("  drop_oldest: the publisher never waits; the subscriber keeps the newest 100 and counts the rest as dropped")
    print("  block: nothing is dropped; the publisher waits for credit (one window of 100 ahead of the consumer)")
    if reports["slow.block"]["dropped"] or reports["slow.block"]["count"] != SLOW or results["slow.block"] < (SLOW - 250) * 0.001:
        print("  !! block should have delivered everything and slowed the publisher")
        ok = False
    if reports["slow.oldest"]["delivered"] + reports["slow.oldest"]["dropped"] + reports["slow.oldest"]["queued"] != SLOW:
        ok = False
    for name in NAMES:
        await node.request(f"sub-{name}", "unsubscribe", timeout=10)
    return ok


async def _pipeline_section(node: Node) -> bool:
    """A pipeline through stages on all three processes, reconfigured under traffic."""
    ok = True
    await node.wait_for_agent("enrich-b", timeout=20)
    async with node.subscribe("phoenix.telemetry.pipeline.#") as telemetry:
        pipeline = await node.create_pipeline(["stage-n1", "enrich"], window=256, monitoring_interval=0.25)
        await telemetry.wait_propagated(10)
        changes = {
            1_500: ("add stage-n3 at the end", lambda: pipeline.add_stage("stage-n3")),
            3_000: ("replace stage 0 (stage-n1) with stage-n2", lambda: pipeline.replace_stage(0, "stage-n2")),
        }
        reached = {n: trio.Event() for n in changes}
        results: list[Any] = []
        started = time.perf_counter()

        async def feed() -> None:
            for i in range(PIPELINE_MESSAGES):
                await pipeline.send({"i": i, "path": []})

        async def collect() -> None:
            async for result in pipeline:
                results.append(result)
                if len(results) in reached:
                    reached[len(results)].set()
                if len(results) == PIPELINE_MESSAGES:
                    return

        async def reconfigure() -> None:
            for threshold, (_, change) in changes.items():
                await reached[threshold].wait()
                await change()

        async with trio.open_nursery() as work:
            work.start_soon(feed)
            work.start_soon(collect)
            work.start_soon(reconfigure)
        elapsed = time.perf_counter() - started
        stats = pipeline.statistics()
        update = None
        while update is None or update.data["completed"] < PIPELINE_MESSAGES:
            update = await telemetry.receive()
        await pipeline.aclose()
    in_order = [r.data["i"] for r in results] == list(range(PIPELINE_MESSAGES))
    routes: dict[str, int] = {}
    for result in results:
        route = " -> ".join("enrich-*" if p.startswith("enrich") else p for p in result.data["path"])
        routes[route] = routes.get(route, 0) + 1
    print()
    print(f"Pipeline: {PIPELINE_MESSAGES:,} messages through stages on n1, n2 (a group of two workers) and n3, window 256")
    for threshold, (what, _) in changes.items():
        print(f"  after {threshold:,} results: {what}")
    print(f"  {len(results):,} results in {elapsed:.2f} s ({len(results) / elapsed / 1e3:.1f} k msgs/s); in entry order: {'yes' if in_order else 'NO'}")
    print_table(["route", "messages"], [[r, f"{n:,}"] for r, n in routes.items()])
    print("  per stage now (from pipeline.statistics(); the same figures go out as phoenix.telemetry.metric.update):")
    print_table(
        ["stage", "target", "completed", "throughput", "p50", "p99", "in flight"],
        [
            [s.index, s.target, f"{s.completed:,}", f"{s.throughput_per_s / 1e3:.1f} k/s", f"{s.latency_p50_ms or 0:.2f} ms", f"{s.latency_p99_ms or 0:.2f} ms", s.in_flight]
            for s in stats.stages
        ],
    )
    print(f"  last telemetry message: type {update.type}, subject {update.subject}, completed {update.data['completed']:,}")
    workers = {p for r in results for p in r.data["path"] if p.startswith("enrich")}
    if not in_order or workers != {"enrich-a", "enrich-b"} or stats.completed != PIPELINE_MESSAGES:
        print("  !! the pipeline lost, duplicated or reordered messages, or a worker was idle")
        ok = False
    return ok


def run_demo() -> int:
    return 0 if trio.run(_conduct) else 1
