"""A network partition between real processes, made with network namespaces the test creates.

Each member (``phoenix-trio raft``) and the client (``ns_client.py``) runs in its own
namespace, all joined by veth pairs to a bridge in a hub namespace; nothing touches the
host's namespace. Partitioning a member is ``ip link set <its hub-side veth> down`` in
the hub; healing is ``up``. Needs root (CI runs as root, where it must not skip).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from phoenix_trio.raft._process import RaftProcess

from ..netns import network
from .test_processes import first_leader

pytestmark = [pytest.mark.processes, pytest.mark.netns]

ELECTION = 0.3
PORT = 7400


class Client:
    """``ns_client.py`` in its namespace: one JSON request per line in, one reply per line out."""

    def __init__(self, net: Network, members: list[str]) -> None:
        self.net = net
        self.members = members
        self.process: trio.Process | None = None
        self.replies: dict[int, dict[str, Any]] = {}
        self.arrived = trio.lowlevel.ParkingLot()
        self.ready = trio.Event()
        self.next_id = 0

    async def start(self, nursery: trio.Nursery) -> None:
        script = Path(__file__).with_name("ns_client.py")
        cmd = ["ip", "netns", "exec", self.net.ns("client"), sys.executable, str(script)]
        cmd += ["--listen", f"{self.net.address['client']}:{PORT}", "--seed", f"{self.net.address[self.members[0]]}:{PORT}"]
        cmd += ["--members", ",".join(self.members)]

        async def kill(process: trio.Process) -> None:
            process.kill()

        self.process = await nursery.start(
            lambda task_status: trio.run_process(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False, deliver_cancel=kill, task_status=task_status
            )
        )
        nursery.start_soon(self._read)
        with trio.fail_after(30):
            await self.ready.wait()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        while True:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                message = json.loads(line)
                if message.get("event") == "ready":
                    self.ready.set()
                else:
                    self.replies[message["id"]] = message
                    self.arrived.unpark_all()

    async def call(self, timeout: float = 20.0, **request: Any) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.next_id += 1
        rid = self.next_id
        await self.process.stdin.send_all((json.dumps({"id": rid, **request}) + "\n").encode())
        with trio.fail_after(timeout):
            while rid not in self.replies:
                await self.arrived.park()
        return self.replies.pop(rid)


async def test_partitioned_leader_steps_down_and_catches_up_after_healing(tmp_path: Path) -> None:
    members = ["n1", "n2", "n3"]
    with network([*members, "client"]) as net:
        async with trio.open_nursery() as nursery:
            procs = {}
            for name in members:
                seed = members[1] if name == members[0] else members[0]
                procs[name] = RaftProcess(
                    name,
                    members=members,
                    data_dir=str(tmp_path / name),
                    listen=f"{net.address[name]}:{PORT}",
                    seeds=[f"{net.address[seed]}:{PORT}"],
                    election_timeout=ELECTION,
                    failure_timeout=1.0,
                    heartbeat=0.2,
                    prefix=["ip", "netns", "exec", net.ns(name)],
                )
            async with trio.open_nursery() as starting:
                for proc in procs.values():
                    starting.start_soon(proc.start, nursery)
            client = Client(net, members)
            await client.start(nursery)
            first = await first_leader(list(procs.values()))
            old = first["node"]
            reply = await client.call(op="put", key="k", value="before")
            assert reply["ok"], reply

            net.cut(old)
            cut_at = trio.current_time()
            others = [p for n, p in procs.items() if n != old]
            new = await first_leader(others, min_term=first["term"] + 1)
            elected_after = trio.current_time() - cut_at
            # check-quorum: the isolated leader notices it lost its majority and steps down
            stepped = await procs[old].wait_for_role("follower", min_term=first["term"], timeout=10)
            assert stepped["leader"] is None
            print(f"partitioned leader {old}: {new['node']} elected after {elected_after:.3f} s")
            assert elected_after < 6 * ELECTION + 1.0, elected_after
            for _ in range(3):  # the client may first try the old leader: unknown outcome, then it moves on
                reply = await client.call(op="put", key="k", value="during")
                if reply["ok"]:
                    break
            # a write the isolated leader took could not commit without a majority
            assert reply["ok"] and reply["result"] == "before", reply
            during_index = reply["index"]

            net.heal(old)
            # the old leader rejoins as a follower of the new leader (pre-vote kept it from
            # raising its term while cut off, so it does not disrupt the new leader)...
            event = await procs[old].wait_for_role("follower", min_term=new["term"], timeout=30, with_leader=True)
            assert event["term"] == new["term"] and event["leader"] == new["node"]
            # ...and catches up: a session read there waits for the write made without it
            reply = await client.call(op="get", key="k", consistency="session", member=old, timeout=30)
            assert reply["ok"] and reply["result"] == "during" and reply["index"] >= during_index, reply
            status = await client.call(op="status", member=new["node"])
            assert status["result"]["role"] == "leader" and status["result"]["term"] == new["term"]
            assert (await client.call(op="put", key="k", value="after"))["result"] == "during"
            for proc in procs.values():
                await proc.stop()
            nursery.cancel_scope.cancel()
