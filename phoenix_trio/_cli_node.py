"""``phoenix-trio node``: run one node (with built-in agents) as a process.

On start it prints one JSON line to stdout, ``{"event": "listening", "node": ...,
"address": "host:port", "pid": ...}``, then one line per membership event, so a parent
process (a test, the demo) can follow it. SIGINT and SIGTERM stop it cleanly: peers get
a goodbye, every task is joined.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from functools import partial

import trio

from ._builtin_agents import run_agent
from ._node import open_node


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def run_node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    agents = []
    for spec in args.agent:
        kind, sep, agent_id = spec.partition(":")
        agent_id, _, group = agent_id.partition("@")
        if not sep or not agent_id:
            print(f"--agent takes KIND:ID or KIND:ID@GROUP, not {spec!r}", file=sys.stderr)
            return 2
        agents.append((kind, agent_id, group or None))

    async def main() -> None:
        async with open_node(
            args.name,
            listen=args.listen,
            seeds=args.seed,
            heartbeat_interval=args.heartbeat_interval,
            failure_timeout=args.failure_timeout,
            cluster=args.cluster,
            data_dir=args.data_dir,
            fsync=args.fsync,
        ) as node:
            async with trio.open_nursery() as nursery:
                for kind, agent_id, group in agents:
                    await nursery.start(partial(run_agent, node, kind, agent_id, group=group))
                _emit(event="listening", node=node.id, address=f"{node.address[0]}:{node.address[1]}", pid=os.getpid())

                async def report_membership() -> None:
                    async with node.watch_membership() as events:
                        async for event in events:
                            _emit(event=f"member_{event.kind}", node=event.node_id)

                nursery.start_soon(report_membership)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()
        _emit(event="stopped", node=args.name)

    trio.run(main)
    return 0
