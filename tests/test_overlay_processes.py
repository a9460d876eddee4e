"""The overlay between real OS processes: 16 nodes form HyParView, Plumtree reaches all of them,
SIGKILLed nodes are repaired around, and a partitioned group catches up through anti-entropy.

Each node is ``python -m phoenix_trio node --overlay hyparview --commands``; the test drives
it through stdin commands and follows its JSON event lines (``overlay_neighbor_up`` /
``_down``, ``overlay_delivered``), waiting on events, never sleeping. The partition test
puts every node in a network namespace of its own, joined by veth pairs to a bridge in a
hub namespace the test creates; cutting a group is moving its veths to a second bridge
(the group still talks inside itself), healing is moving them back.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from phoenix_trio._demo_overlay import connected, neighbours, wait_all
from phoenix_trio._node_process import NodeProcess

from .netns import network

pytestmark = pytest.mark.processes

HEARTBEAT = 0.2
FAILURE_TIMEOUT = 1.0
COUNT = 16


def delivered(events: list[dict[str, Any]], message_id: str) -> int:
    return sum(1 for e in events if e.get("event") == "overlay_delivered" and e.get("id") == message_id)


def node_process(name: str, *, seeds: list[str], gossip: list[str] = (), overlay: list[str] = (), **options: Any) -> NodeProcess:
    extra = ["--overlay", "hyparview"]
    for option in overlay:
        extra += ["--overlay-option", option]
    if gossip:
        extra.append("--gossip")
        for option in gossip:
            extra += ["--gossip-option", option]
    return NodeProcess(
        name, seeds=seeds, failure_timeout=FAILURE_TIMEOUT, heartbeat=HEARTBEAT, stdin=True, extra_args=extra, **options
    )


async def start_all(nursery: trio.Nursery, procs: list[NodeProcess]) -> None:
    async with trio.open_nursery() as starting:
        for proc in procs:
            starting.start_soon(proc.start, nursery, 60.0)


async def test_sixteen_processes_broadcast_sigkill_a_quarter_and_broadcast_again() -> None:
    names = [f"p{i:02}" for i in range(COUNT)]
    async with trio.open_nursery() as nursery:
        first = node_process(names[0], seeds=[])
        await first.start(nursery, 60.0)
        assert first.address is not None
        procs = [first] + [node_process(name, seeds=[first.address]) for name in names[1:]]
        await start_all(nursery, procs[1:])
        by_name = dict(zip(names, procs))

        def views(alive: list[str]) -> dict[str, set[str]]:
            return {name: neighbours(by_name[name].events) for name in alive}

        await wait_all(procs, lambda: connected(views(names)), timeout=60)
        assert all(1 <= len(v) <= 6 for v in views(names).values())

        reply = await by_name["p03"].call("broadcast", data={"round": 1})
        first_id = reply["id"]
        await wait_all(procs, lambda: all(delivered(p.events, first_id) for p in procs), timeout=30)
        assert all(delivered(p.events, first_id) == 1 for p in procs)  # exactly once each
        origin_event = next(e for e in by_name["p03"].events if e.get("event") == "overlay_delivered" and e.get("id") == first_id)
        assert origin_event["hops"] == 0 and origin_event["data"] == {"round": 1}

        killed = ["p04", "p08", "p12", "p15"]  # a quarter, SIGKILL: no goodbye
        survivors = [n for n in names if n not in killed]
        had = {n: neighbours(by_name[n].events) & set(killed) for n in survivors}
        for name in killed:
            by_name[name].kill()
        # Repair: every survivor has noticed its dead neighbours (reset connections) and the
        # survivors' active views are symmetric and connected again, without the dead.
        await wait_all(
            procs,
            lambda: all(not (neighbours(by_name[n].events) & set(killed)) for n in survivors)
            and connected(views(survivors)),
            timeout=60,
        )
        for name, lost in had.items():
            downs = {e["peer"] for e in by_name[name].events if e.get("event") == "overlay_neighbor_down"}
            assert lost <= downs, (name, lost, downs)
        reply = await by_name["p01"].call("broadcast", data={"round": 2})
        second_id = reply["id"]
        live = [by_name[n] for n in survivors]
        await wait_all(live, lambda: all(delivered(p.events, second_id) for p in live), timeout=30)
        assert all(delivered(p.events, second_id) == 1 for p in live)
        stats = (await by_name["p01"].call("stats"))["stats"]
        assert stats["plumtree"]["delivered"] >= 2 and set(stats["neighbors"]) <= set(survivors)
        for proc in live:
            assert await proc.stop() == 0
        nursery.cancel_scope.cancel()


# -- partition in network namespaces ------------------------------------------------------------

PORT = 7500


@pytest.mark.netns
async def test_a_partitioned_group_catches_up_through_anti_entropy_after_healing() -> None:
    names = [f"q{i:02}" for i in range(COUNT)]
    cut = names[-4:]  # the group that gets cut off
    rest = names[:-4]
    gossip = ["round_duration=0.2", "push_rounds=2", "anti_entropy_interval=0.5", "message_ttl=300"]
    overlay = ["probe_interval=0.5", "shuffle_interval=2.0"]
    with network(names, subnet="10.232.0") as net:
        async with trio.open_nursery() as nursery:
            seed = f"{net.address[names[0]]}:{PORT}"
            procs = {
                name: node_process(
                    name,
                    seeds=[] if name == names[0] else [seed],
                    gossip=gossip,
                    overlay=overlay,
                    listen=f"{net.address[name]}:{PORT}",
                    prefix=["ip", "netns", "exec", net.ns(name)],
                )
                for name in names
            }
            await procs[names[0]].start(nursery, 60.0)
            await start_all(nursery, [procs[n] for n in names[1:]])
            everyone = list(procs.values())

            def views(group: list[str]) -> dict[str, set[str]]:
                return {name: neighbours(procs[name].events) for name in group}

            await wait_all(everyone, lambda: connected(views(names)), timeout=60)
            before = (await procs["q01"].call("gossip", data="before the partition"))["id"]
            await wait_all(everyone, lambda: all(delivered(p.events, before) for p in everyone), timeout=30)

            net.move(cut, "br1")  # the group still reaches itself, not the others
            # Both sides notice (silence on the links across) and their views close up on each side.
            await wait_all(
                everyone,
                lambda: all(views(rest)[n] <= set(rest) for n in rest) and all(views(cut)[n] <= set(cut) for n in cut),
                timeout=60,
            )
            during = [(await procs[rest[i]].call("gossip", data=f"during {i}"))["id"] for i in range(3)]
            side = [procs[n] for n in rest]
            await wait_all(side, lambda: all(delivered(p.events, m) for p in side for m in during), timeout=30)
            assert not any(delivered(procs[n].events, m) for n in cut for m in during)

            async def anti_entropy_total() -> int:
                total = 0
                for name in names:
                    gossip_stats = (await procs[name].call("stats"))["stats"]["gossip"]
                    total += gossip_stats["requests_sent"] + gossip_stats["anti_entropy_envelopes"]
                return total

            # Let the pushes on this side end (push_rounds bounds them) so that only
            # anti-entropy can carry the messages across once the partition heals.
            with trio.fail_after(30):
                while any([(await procs[n].call("stats"))["stats"]["gossip"]["pushing"] for n in rest]):
                    await trio.sleep(0.05)  # pacing a poll of the nodes' state, not a guess at timing
            exchanged = await anti_entropy_total()
            net.move(cut, "br0")  # heal
            lagging = [procs[n] for n in cut]
            try:
                await wait_all(lagging, lambda: all(delivered(p.events, m) for p in lagging for m in during), timeout=60)
            except trio.TooSlowError:
                for name in names:  # what each node saw, for the failure report
                    st = (await procs[name].call("stats"))["stats"]
                    print(name, st["neighbors"], st["passive"], st["membership"], st["gossip"])
                raise
            # Pushes ended long before (two rounds per holder): the cut-off nodes got the
            # messages because digests showed what they lacked.
            assert await anti_entropy_total() > exchanged
            assert all(delivered(p.events, m) == 1 for p in everyone for m in [before, *during])
            await wait_all(everyone, lambda: connected(views(names)), timeout=60)  # one overlay again
            for proc in everyone:
                await proc.stop()
            nursery.cancel_scope.cancel()
