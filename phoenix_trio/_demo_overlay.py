"""The demo's overlay section: gossip and Plumtree broadcast over HyParView, in real processes.

Starts ``COUNT`` node processes with ``--overlay hyparview --gossip --commands`` (each
keeps connections to its active view only, not to every other node), waits until their
views form one connected, symmetric overlay, then: a Plumtree broadcast and a gossip
message reach every node exactly once; a quarter of the processes are SIGKILLed; the
survivors repair their views and the next broadcast reaches all of them. Everything is
read from the processes' JSON event lines (see :mod:`phoenix_trio._cli_node`), never
guessed from timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from ._node_process import NodeProcess
from ._report_table import print_table

COUNT = 12
KILLED = ("o04", "o08", "o11")
HEARTBEAT = 0.2
FAILURE_TIMEOUT = 1.0


def neighbours(events: list[dict[str, Any]]) -> set[str]:
    """A node's active view, from the overlay_neighbor_up / _down events it printed."""
    current: set[str] = set()
    for event in events:
        if event.get("event") == "overlay_neighbor_up":
            current.add(event["peer"])
        elif event.get("event") == "overlay_neighbor_down":
            current.discard(event["peer"])
    return current


def connected(views: dict[str, set[str]]) -> bool:
    """Every node has a neighbour, every link is known at both ends, and one component."""
    if not views or any(not peers for peers in views.values()):
        return False
    if any(name not in views.get(peer, ()) for name, peers in views.items() for peer in peers):
        return False
    start = next(iter(views))
    seen, todo = {start}, [start]
    while todo:
        for peer in views[todo.pop()]:
            if peer not in seen:
                seen.add(peer)
                todo.append(peer)
    return seen == set(views)


def deliveries(proc: NodeProcess, message_id: str) -> list[dict[str, Any]]:
    return [e for e in proc.events if e.get("event") == "overlay_delivered" and e.get("id") == message_id]


async def wait_all(procs: list[NodeProcess], predicate: Callable[[], bool], *, timeout: float) -> None:
    """Wait until ``predicate()`` holds, re-checking whenever one of ``procs`` prints an event."""
    with trio.fail_after(timeout):
        while not predicate():
            async with trio.open_nursery() as nursery:

                async def one(proc: NodeProcess) -> None:
                    await proc.next_event()
                    nursery.cancel_scope.cancel()

                for proc in procs:
                    nursery.start_soon(one, proc)


async def _spread(kind: str, origin: NodeProcess, procs: list[NodeProcess], data: Any) -> tuple[bool, str]:
    """Send one broadcast or gossip message from ``origin``; a line on how it spread."""
    started = time.perf_counter()
    reply = await origin.call(kind, data=data)
    message_id = reply["id"]
    await wait_all(procs, lambda: all(deliveries(p, message_id) for p in procs), timeout=30)
    elapsed = time.perf_counter() - started
    copies = [len(deliveries(p, message_id)) for p in procs]
    hops = max(deliveries(p, message_id)[0]["hops"] for p in procs)
    once = all(c == 1 for c in copies)
    line = f"reached {sum(1 for c in copies if c)}/{len(procs)} nodes {'exactly once each' if once else 'WITH DUPLICATES'} in {elapsed * 1e3:.0f} ms, at most {hops} hops from {origin.name}"
    return once, line


async def overlay_section() -> bool:
    ok = True
    names = [f"o{i:02}" for i in range(COUNT)]
    print()
    print(f"Gossip and broadcast over an overlay: {COUNT} more node processes run HyParView (active view 6, passive 30),")
    print("  Plumtree broadcast and the gossip pattern; each keeps connections to its neighbours only")
    extra = ["--overlay", "hyparview", "--gossip", "--gossip-option", "round_duration=0.2", "--overlay-option", "probe_interval=1.0"]
    async with trio.open_nursery() as nursery:

        def process(name: str, seeds: list[str]) -> NodeProcess:
            return NodeProcess(name, seeds=seeds, failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT, stdin=True, extra_args=extra)

        first = await process(names[0], []).start(nursery, 60.0)
        procs = {names[0]: first}
        async with trio.open_nursery() as starting:
            for name in names[1:]:
                procs[name] = process(name, [first.address or ""])
                starting.start_soon(procs[name].start, nursery, 60.0)
        everyone = list(procs.values())
        started = time.perf_counter()
        await wait_all(everyone, lambda: connected({n: neighbours(p.events) for n, p in procs.items()}), timeout=60)
        print(f"  all {COUNT} joined through {names[0]}; one connected, symmetric overlay after {time.perf_counter() - started:.2f} s")
        print_table(["node", "active view"], [[n, ", ".join(sorted(neighbours(p.events)))] for n, p in procs.items()])

        once, line = await _spread("broadcast", procs["o03"], everyone, {"config": "v2"})
        print(f"  Plumtree broadcast: {line}")
        ok = ok and once
        once, line = await _spread("gossip", procs["o07"], everyone, "rumour")
        print(f"  gossip (fanout 3, 0.2 s rounds): {line}")
        ok = ok and once

        survivors = [n for n in names if n not in KILLED]
        print(f"  SIGKILL {', '.join(KILLED)} (a quarter, no goodbye)")
        killed = time.perf_counter()
        for name in KILLED:
            procs[name].kill()
        live = [procs[n] for n in survivors]
        await wait_all(
            live,
            lambda: connected({n: neighbours(procs[n].events) for n in survivors})
            and not any(neighbours(procs[n].events) & set(KILLED) for n in survivors),
            timeout=60,
        )
        print(f"  survivors repaired their views from their passive views in {time.perf_counter() - killed:.2f} s")
        once, line = await _spread("broadcast", procs["o01"], live, {"config": "v3"})
        print(f"  next broadcast: {line}")
        ok = ok and once
        stats = (await procs["o01"].call("stats"))["stats"]
        plumtree = stats["plumtree"]
        print(
            f"  o01: {len(stats['neighbors'])} neighbours, {len(stats['passive'])} passive; "
            f"overlay messages sent {stats['overlay_sent']:,}, received {stats['overlay_received']:,}; "
            f"Plumtree delivered {plumtree['delivered']}"
        )
        for proc in live:
            await proc.stop()
        nursery.cancel_scope.cancel()
    if not ok:
        print("  !! a message was delivered twice or missed")
    return ok
