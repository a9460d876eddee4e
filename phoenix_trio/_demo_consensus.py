"""The demo's consensus section: a Raft group of three processes, its leader SIGKILLed under load.

Starts three ``phoenix-trio raft`` members (WAL in a temporary directory, fsync on) that
join the conductor's cluster, waits for the first leader (from their ``raft_role``
event lines), writes keys through :class:`~phoenix_trio.raft._agents.KVClient` from
several concurrent clients, SIGKILLs the leader while they write, waits for the new
leader, and checks that every acknowledged write is still there and writes go on.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from ._node import Node
from .raft._agents import KVClient, KVError
from .raft._process import RaftProcess

MEMBERS = ["r1", "r2", "r3"]
ELECTION = 0.3
CLIENTS = 8


async def _first_leader(procs: list[RaftProcess], *, min_term: int = 0) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:

        async def watch(proc: RaftProcess) -> None:
            found.append(await proc.wait_for_role("leader", min_term=min_term, timeout=20))
            nursery.cancel_scope.cancel()

        for proc in procs:
            nursery.start_soon(watch, proc)
    return found[0]


async def consensus_section(node: Node, seed: str, *, failure_timeout: float, heartbeat: float) -> bool:
    ok = True
    print()
    print(f"Consensus: a Raft group of {len(MEMBERS)} processes ({', '.join(MEMBERS)}; WAL with fsync), a replicated key-value store")
    with tempfile.TemporaryDirectory(prefix="phoenix-demo-raft-") as tmp:
        async with trio.open_nursery() as nursery:
            procs = {
                name: RaftProcess(
                    name,
                    members=MEMBERS,
                    data_dir=str(Path(tmp) / name),
                    seeds=[seed],
                    election_timeout=ELECTION,
                    failure_timeout=failure_timeout,
                    heartbeat=heartbeat,
                )
                for name in MEMBERS
            }
            async with trio.open_nursery() as starting:
                for proc in procs.values():
                    starting.start_soon(proc.start, nursery)
            for name in MEMBERS:
                await node.wait_for_agent(f"kv.{name}", timeout=20)
            first = await _first_leader(list(procs.values()))
            print(f"  {first['node']} leads term {first['term']}")

            acknowledged: dict[str, int] = {}
            unknown = 0
            latencies: list[float] = []
            stop = trio.Event()
            progress = trio.lowlevel.ParkingLot()

            async def writer(c: int) -> None:
                nonlocal unknown
                client = KVClient(node, MEMBERS, timeout=10)
                i = 0
                while not stop.is_set():
                    key = f"c{c}-{i}"
                    started = time.perf_counter()
                    try:
                        await client.put(key, i)
                    except KVError:
                        unknown += 1  # outcome unknown (the leader died mid-request): not counted as written
                    else:
                        acknowledged[key] = i
                        latencies.append(time.perf_counter() - started)
                    progress.unpark_all()
                    i += 1

            async def until(count: int) -> None:
                with trio.fail_after(60):
                    while len(acknowledged) < count:
                        await progress.park()

            started = time.perf_counter()
            async with trio.open_nursery() as clients:
                for c in range(CLIENTS):
                    clients.start_soon(writer, c)
                await until(400)
                rate = len(acknowledged) / (time.perf_counter() - started)
                before = len(acknowledged)
                killed = time.perf_counter()
                procs[first["node"]].kill()
                print(f"  {CLIENTS} clients wrote {before} keys at {rate:,.0f} writes/s; SIGKILL the leader {first['node']} while they write")
                survivors = [p for n, p in procs.items() if n != first["node"]]
                new = await _first_leader(survivors, min_term=first["term"] + 1)
                elected = time.perf_counter() - killed
                await until(before + 400)
                stop.set()
            ordered = sorted(latencies)
            print(f"  {new['node']} elected for term {new['term']} {elected:.2f} s after the SIGKILL; writes went on through it")
            print(
                f"  {len(acknowledged)} writes acknowledged (p50 {ordered[len(ordered) // 2] * 1e3:.1f} ms, "
                f"p99 {ordered[int(len(ordered) * 0.99)] * 1e3:.1f} ms), {unknown} with an unknown outcome across the failover"
            )
            reader = KVClient(node, [p.name for p in survivors], timeout=10)
            missing = 0
            for key, value in acknowledged.items():
                if await reader.get(key) != value:
                    missing += 1
            print(f"  read back from the new leader: {len(acknowledged) - missing}/{len(acknowledged)} acknowledged writes present")
            if missing or new["node"] == first["node"]:
                print("  !! an acknowledged write was lost, or no new leader")
                ok = False
            for proc in survivors:
                await proc.stop()
            nursery.cancel_scope.cancel()
    return ok
