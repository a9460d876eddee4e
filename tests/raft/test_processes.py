"""Raft members as real OS processes on loopback (``phoenix-trio raft``), over the native TCP transport.

The test process runs a plain node as the client; the members are ``RaftProcess``es
with their WAL in ``tmp_path``. Tests wait on the processes' JSON event lines
(``raft_role``) and on replies, never on sleeps.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

import phoenix_trio as px
from phoenix_trio.raft import UNKNOWN, Operation, check_linearizable
from phoenix_trio.raft._agents import KVClient, KVError
from phoenix_trio.raft._process import RaftProcess

pytestmark = pytest.mark.processes

ELECTION = 0.3
FAILURE_TIMEOUT = 1.0
HEARTBEAT = 0.2


async def start_members(
    nursery: trio.Nursery, node: px.Node, names: list[str], tmp_path: Path, **options: Any
) -> dict[str, RaftProcess]:
    seed = f"{node.address[0]}:{node.address[1]}"
    procs = {
        name: RaftProcess(
            name,
            members=names,
            data_dir=str(tmp_path / name),
            seeds=[seed],
            election_timeout=ELECTION,
            failure_timeout=FAILURE_TIMEOUT,
            heartbeat=HEARTBEAT,
            **options,
        )
        for name in names
    }
    async with trio.open_nursery() as starting:
        for proc in procs.values():
            starting.start_soon(proc.start, nursery)
    for name in names:
        await node.wait_for_agent(f"kv.{name}", timeout=20)
    return procs


async def first_leader(procs: list[RaftProcess], *, min_term: int = 0, timeout: float = 10.0) -> dict[str, Any]:
    """The first ``raft_role: leader`` event (term >= ``min_term``) any of ``procs`` prints."""
    found: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:

        async def watch(proc: RaftProcess) -> None:
            event = await proc.wait_for_role("leader", min_term=min_term, timeout=timeout)
            found.append(event)
            nursery.cancel_scope.cancel()

        for proc in procs:
            nursery.start_soon(watch, proc)
    return found[0]


class History:
    """Clients' operations, for the linearizability checker, and the unique writes they saw acknowledged."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.acked: dict[str, int] = {}
        self.unknown = 0
        self.completed = 0
        self._waiting: list[tuple[int, trio.Event]] = []

    def done(self) -> None:
        self.completed += 1
        for target, event in self._waiting:
            if self.completed >= target:
                event.set()

    async def reached(self, count: int, timeout: float = 30.0) -> None:
        event = trio.Event()
        self._waiting.append((count, event))
        with trio.fail_after(timeout):
            if self.completed < count:
                await event.wait()


async def client_loop(c: int, node: px.Node, names: list[str], history: History, stop: trio.Event, rng: random.Random) -> None:
    client = KVClient(node, names, timeout=5.0, request_timeout=2.0)
    i = 0
    while not stop.is_set():
        i += 1
        key = f"r{rng.randrange(3)}"
        kind = rng.choice(["put", "put", "cas", "read", "unique"])
        invoke = trio.current_time()
        value: Any = None
        try:
            if kind == "put":
                value = f"{c}-{i}"
                output: Any = await client.put(key, value)
            elif kind == "cas":
                value = (f"{c}-{i - 1}", f"{c}-{i}")
                output = await client.cas(key, *value)
            elif kind == "read":
                output = await client.get(key)
            else:
                key = f"u{c}-{i}"
                await client.put(key, i)
                history.acked[key] = i
                history.done()
                continue
        except KVError as exc:
            if exc.definite or kind == "read":
                continue  # did not happen (or a read: no effect)
            history.unknown += 1
            if kind == "unique":
                continue  # may or may not be there; only acknowledged ones are checked
            history.ops.append(Operation(c, kind, key, value, UNKNOWN, invoke, None))
            continue
        history.ops.append(Operation(c, kind, key, value, output, invoke, trio.current_time()))
        history.done()


async def check_acknowledged_writes(node: px.Node, names: list[str], history: History) -> None:
    client = KVClient(node, names, timeout=10.0)
    missing = []
    for key, value in history.acked.items():
        got = await client.get(key)
        if got != value:
            missing.append((key, value, got))
    assert not missing, f"acknowledged writes lost: {missing[:5]}"


async def kill_the_leader_under_load(tmp_path: Path, size: int) -> None:
    names = [f"n{i}" for i in range(1, size + 1)]
    async with px.open_node("client", listen="127.0.0.1:0", failure_timeout=FAILURE_TIMEOUT, heartbeat_interval=HEARTBEAT) as node:
        async with trio.open_nursery() as nursery:
            procs = await start_members(nursery, node, names, tmp_path)
            first = await first_leader(list(procs.values()))
            history = History()
            stop = trio.Event()
            rng = random.Random(size)
            async with trio.open_nursery() as clients:
                for c in range(6):
                    clients.start_soon(client_loop, c, node, names, history, stop, random.Random(rng.random()))
                await history.reached(300)  # load is flowing through the first leader
                leader = first["node"]
                before = history.completed
                killed_at = trio.current_time()
                procs[leader].kill()
                survivors = [p for n, p in procs.items() if n != leader]
                new = await first_leader(survivors, min_term=first["term"] + 1)
                elected_after = trio.current_time() - killed_at
                await history.reached(before + 300)  # and through the new one
                stop.set()
            print(f"{size} members: new leader {new['node']} {elected_after:.3f} s after SIGKILL; "
                  f"{history.completed} operations, {history.unknown} unknown")
            assert new["node"] != leader
            assert elected_after < 6 * ELECTION + 1.0, elected_after
            result = check_linearizable(history.ops)
            assert result.ok, result
            await check_acknowledged_writes(node, names, history)

            # The killed member restarts from its WAL and catches up.
            restarted = RaftProcess(
                leader,
                members=names,
                data_dir=str(tmp_path / leader),
                seeds=[f"{node.address[0]}:{node.address[1]}"],
                election_timeout=ELECTION,
                failure_timeout=FAILURE_TIMEOUT,
                heartbeat=HEARTBEAT,
            )
            await restarted.start(nursery)
            await restarted.wait_for_role("follower", min_term=new["term"], timeout=20)
            client = KVClient(node, names)
            await client.put("after-restart", 1)
            await node.wait_for_agent(f"kv.{leader}", timeout=20)
            # a session read waits until the member has applied the client's last write
            assert await client.get("after-restart", consistency="session", member=leader) == 1
            for proc in [*survivors, restarted]:
                await proc.stop()
            nursery.cancel_scope.cancel()


async def test_three_members_survive_sigkill_of_the_leader_under_load(tmp_path: Path) -> None:
    await kill_the_leader_under_load(tmp_path, 3)


async def test_five_members_survive_sigkill_of_the_leader_under_load(tmp_path: Path) -> None:
    await kill_the_leader_under_load(tmp_path, 5)


async def test_total_order_group_across_processes_delivers_one_sequence(tmp_path: Path) -> None:
    names = ["n1", "n2", "n3"]
    async with px.open_node("client", listen="127.0.0.1:0") as node:
        async with trio.open_nursery() as nursery:
            procs = await start_members(nursery, node, names, tmp_path, tob=["orders"])
            for name in names:
                await node.wait_for_agent(f"tob-orders.{name}", timeout=20)
            per_member = 200

            async def broadcast(name: str) -> None:
                payloads = [[name, i] for i in range(per_member)]
                reply = await node.request(f"tob-orders.{name}", {"op": "broadcast", "payloads": payloads}, timeout=30)
                assert reply.data == {"ok": True, "count": per_member}

            async with trio.open_nursery() as senders:
                for name in names:
                    senders.start_soon(broadcast, name)
            sequences = {}
            for name in names:
                request = {"op": "delivered", "wait_for": per_member * len(names)}
                reply = await node.request(f"tob-orders.{name}", request, timeout=20)
                sequences[name] = reply.data["deliveries"]
            assert sequences["n1"] == sequences["n2"] == sequences["n3"]
            order = sequences["n1"]
            assert len(order) == per_member * len(names)
            for name in names:  # FIFO per sender, nothing lost, nothing twice
                assert [p[1] for _, s, _, p in order if s == name] == list(range(per_member))
            for proc in procs.values():
                await proc.stop()
            nursery.cancel_scope.cancel()
