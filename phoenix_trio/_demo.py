"""The main job behind ``make demo``: a local cluster at work, and a readable report.

Starts three node processes (``python -m phoenix_trio node``) on loopback, each hosting
an echo agent, a counter and a traffic driver. A conductor node joins the cluster and
orders every driver to send point-to-point traffic to, and make requests of, the agents
on the other two processes. Then it kills one process with SIGKILL, shows the failure
being detected and reported, restarts it and shows it rejoining. The report lists the
nodes, their agents, the traffic matrix with rates, request latencies, what the counters
received, and the membership events.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from . import NodeUnreachable, core
from ._node import open_node
from ._node_process import NodeProcess

NAMES = ("n1", "n2", "n3")
MESSAGES = 20_000
REQUESTS = 500
FAILURE_TIMEOUT = 1.0
HEARTBEAT = 0.2


def _agents(name: str) -> list[str]:
    return [f"echo:echo-{name}", f"counter:count-{name}", f"driver:driver-{name}"]


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


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
            _print_table(
                ["node", "pid", "address", "agents"],
                [[n, p.pid, p.address, ", ".join(a.split(":")[1] for a in _agents(n))] for n, p in procs.items()],
            )

            # Point-to-point: every driver sends to the counters on the two other nodes, all at once.
            traffic: dict[tuple[str, str], dict[str, Any]] = {}

            async def order(source: str, target: str, what: str, count: int) -> None:
                reply = await node.request(f"driver-{source}", {what: f"{'count' if what == 'send' else 'echo'}-{target}", "count": count, "size": 100}, timeout=120)
                traffic[(source, target, what)] = reply.data  # type: ignore[index]

            async with trio.open_nursery() as orders:
                for source in NAMES:
                    for target in NAMES:
                        if source != target:
                            orders.start_soon(order, source, target, "send", MESSAGES)
            counts = {}
            for name in NAMES:
                counts[name] = (await node.request(f"count-{name}", "count", timeout=30)).data
            print()
            print(f"Point-to-point: each node's driver sends {MESSAGES:,} messages of 100 bytes to the counter on each other node")
            print("  (at-least-once, the default: a driver's time runs until every message was acknowledged as handled)")
            _print_table(
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
            _print_table(
                ["from", "to", "requests", "p50", "p99"],
                [[s, t, d["requests"], f"{d['p50_us']:.0f} us", f"{d['p99_us']:.0f} us"] for (s, t, w), d in sorted(traffic.items()) if w == "request"],
            )

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
            _print_table(
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
    print()
    print(f"demo {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
    return ok


def run_demo() -> int:
    return 0 if trio.run(_conduct) else 1
