"""``phoenix-trio raft``: run a node that is a member of a Raft group, as a process.

::

    phoenix-trio raft --name n1 --listen 127.0.0.1:7001 --seed 127.0.0.1:7000 \\
        --members n1,n2,n3 --data-dir /var/lib/px/n1 [--group kv] [--tob orders]

The node hosts the group's member (:func:`open_raft`, WAL in ``--data-dir``) and the
``kv`` agent ``<group>.<name>`` (in the agent group ``<group>``) that answers KV requests
(see :mod:`._agents`); clients use :class:`KVClient` or ``node.request``. ``--tob NAME``
also runs a member of the total-order group ``NAME`` with its agent ``tob-<NAME>.<name>``.

Like ``phoenix-trio node`` it prints JSON lines on stdout: ``listening`` (with the
address), ``member_<kind>`` for membership events, and ``raft_role`` (``role``,
``term``, ``leader``) whenever the member's role or known leader changes, so a parent
process waits on events instead of sleeping. SIGINT/SIGTERM stop it cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from .._node import open_node
from ._agents import serve_kv, serve_total_order
from ._core import RaftConfig
from ._driver import open_raft, open_total_order_group


def add_parser(commands: Any) -> None:
    """Register the ``raft`` subcommand on the main parser's subparsers."""
    raft = commands.add_parser("raft", help="run a node that is a member of a Raft group (with a kv agent)")
    raft.add_argument("--name", required=True, help="node id, unique in the cluster; also the Raft member id")
    raft.add_argument("--listen", default="127.0.0.1:0", help="host:port to accept peers on (port 0: any)")
    raft.add_argument("--seed", action="append", default=[], help="host:port of a node to join through (repeatable)")
    raft.add_argument("--members", required=True, help="comma-separated node ids of the founding members (same on all)")
    raft.add_argument("--data-dir", required=True, help="directory of this member's write-ahead log")
    raft.add_argument("--group", default="kv", help="Raft group name (the kv agent is <group>.<name>)")
    raft.add_argument("--tob", action="append", default=[], metavar="NAME", help="also run a total-order group member (repeatable)")
    raft.add_argument("--election-timeout", type=float, default=0.3)
    raft.add_argument("--raft-heartbeat", type=float, default=0.05)
    raft.add_argument("--snapshot-threshold", type=int, default=8192)
    raft.add_argument("--no-fsync", action="store_true", help="skip fsync (not durable; for comparisons only)")
    raft.add_argument("--inline-fsync", action="store_true", help="fsync in the Trio thread instead of a worker thread")
    raft.add_argument("--heartbeat-interval", type=float, default=0.5)
    raft.add_argument("--failure-timeout", type=float, default=2.0)
    raft.add_argument("--cluster", default="phoenix")
    raft.add_argument("--log-level", default="WARNING")


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    members = [m for m in args.members.split(",") if m]
    config = RaftConfig(
        election_timeout=args.election_timeout,
        heartbeat_interval=args.raft_heartbeat,
        snapshot_threshold=args.snapshot_threshold,
        snapshot_trailing=min(1024, args.snapshot_threshold),
    )
    data_dir = Path(args.data_dir)
    fsync = not args.no_fsync
    in_thread = not args.inline_fsync

    async def main() -> None:
        async with open_node(
            args.name,
            listen=args.listen,
            seeds=args.seed,
            heartbeat_interval=args.heartbeat_interval,
            failure_timeout=args.failure_timeout,
            cluster=args.cluster,
        ) as node:
            async with open_raft(
                node, group=args.group, members=members, data_dir=data_dir / args.group, config=config, fsync=fsync, sync_in_thread=in_thread
            ) as raft, trio.open_nursery() as nursery:
                agent = await _enter(nursery, node.agent(f"{args.group}.{node.id}", group=args.group, capacity=65536))
                nursery.start_soon(serve_kv, raft, agent)
                for name in args.tob:
                    nursery.start_soon(_run_tob, node, name, members, data_dir / f"tob-{name}", config, fsync, in_thread)

                async def report_role() -> None:
                    last = None
                    while True:
                        now = (raft.role, raft.term, raft.leader)
                        if now != last:
                            last = now
                            _emit(event="raft_role", node=node.id, role=now[0], term=now[1], leader=now[2])
                        await raft.wait_for(lambda r: (r.role, r.term, r.leader) != last, timeout=None)

                async def report_membership() -> None:
                    async with node.watch_membership() as events:
                        async for event in events:
                            _emit(event=f"member_{event.kind}", node=event.node_id)

                nursery.start_soon(report_membership)
                nursery.start_soon(report_role)
                _emit(event="listening", node=node.id, address=f"{node.address[0]}:{node.address[1]}", pid=os.getpid())
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()
        _emit(event="stopped", node=args.name)

    trio.run(main)
    return 0


async def _enter(nursery: trio.Nursery, manager: Any) -> Any:
    """Enter an async context manager in a task of ``nursery``, kept open until it is cancelled."""

    async def hold(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with manager as value:
            task_status.started(value)
            await trio.sleep_forever()

    return await nursery.start(hold)


async def _run_tob(node: Any, name: str, members: list[str], data_dir: Path, config: RaftConfig, fsync: bool, in_thread: bool) -> None:
    async with open_total_order_group(
        node, name, members=members, data_dir=data_dir, config=config, fsync=fsync, sync_in_thread=in_thread
    ) as group, node.agent(f"tob-{name}.{node.id}", group=f"tob-{name}") as agent:
        await serve_total_order(group, agent)
