"""``phoenix-trio node``: run one node (with built-in agents) as a process.

On start it prints one JSON line to stdout, ``{"event": "listening", "node": ...,
"address": "host:port", "pid": ...}``, then one line per membership event, so a parent
process (a test, the demo) can follow it. SIGINT and SIGTERM stop it cleanly: peers get
a goodbye, every task is joined.

With ``--overlay KIND`` (and ``--overlay-option key=value``, ``--gossip``,
``--gossip-option key=value``) the node runs an overlay instead of the full mesh and
prints overlay events instead: ``overlay_neighbor_up`` / ``overlay_neighbor_down``
(``peer``, ``reason``), ``overlay_delivered`` (``kind`` broadcast or gossip, ``id`` in
hex, ``origin``, ``data``, ``hops``), ``join_failed`` and ``route_failed``.

With ``--commands`` it reads one JSON command per line on stdin and answers each with a
``{"event": "reply", "ref": <the command's ref>, ...}`` line (``error`` on failure):
``{"op": "broadcast", "data": ...}`` and ``{"op": "gossip", "data": ..., "ttl": s}``
(reply: ``id``), ``{"op": "send", "target": ..., "data": ..., "delivery": ...}``,
``{"op": "request", "target": ..., "data": ...}`` (reply: ``data``) and
``{"op": "stats"}`` (reply: ``stats``, the overlay's statistics or the node's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from functools import partial
from typing import Any

import trio

from ._builtin_agents import run_agent
from ._node import Node, open_node


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields, default=repr) + "\n")
    sys.stdout.flush()


def _options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, true, lists), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"options take KEY=VALUE, not {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _overlay_settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.overlay is None:
        if args.gossip:
            raise ValueError("--gossip needs --overlay")
        return {}
    from ._overlay_runtime import OverlayConfig
    from .overlay import configure_overlay, start_gossip_protocol

    gossip = start_gossip_protocol(**_options(args.gossip_option)) if args.gossip else None
    membership = configure_overlay(args.overlay, **_options(args.overlay_option))
    return {"overlay": OverlayConfig(membership=membership, gossip=gossip, idle_timeout=args.idle_timeout)}


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
    try:
        overlay = _overlay_settings(args)
    except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError too
        print(f"overlay options: {exc}", file=sys.stderr)
        return 2

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
            **overlay,
        ) as node:
            async with trio.open_nursery() as nursery:
                for kind, agent_id, group in agents:
                    await nursery.start(partial(run_agent, node, kind, agent_id, group=group))
                if node.overlay is not None:
                    await nursery.start(_report_overlay, node)
                _emit(event="listening", node=node.id, address=f"{node.address[0]}:{node.address[1]}", pid=os.getpid())

                async def report_membership() -> None:
                    async with node.watch_membership() as events:
                        async for event in events:
                            _emit(event=f"member_{event.kind}", node=event.node_id)

                nursery.start_soon(report_membership)
                if args.commands:
                    nursery.start_soon(_serve_commands, node)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()
        _emit(event="stopped", node=args.name)

    trio.run(main)
    return 0


async def _report_overlay(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from ._overlay_runtime import OverlayMessage
    from .overlay import JoinFailed, NeighborDown, NeighborUp, RouteFailed

    async with node.watch_overlay(buffer=65536) as events:
        task_status.started()
        async for event in events:
            if isinstance(event, OverlayMessage):
                _emit(event="overlay_delivered", kind=event.kind, id=event.message_id.hex(), origin=event.origin, data=event.data, hops=event.hops)
            elif isinstance(event, NeighborUp):
                _emit(event="overlay_neighbor_up", peer=event.peer)
            elif isinstance(event, NeighborDown):
                _emit(event="overlay_neighbor_down", peer=event.peer, reason=event.reason)
            elif isinstance(event, JoinFailed):
                _emit(event="join_failed", reason=event.reason)
            elif isinstance(event, RouteFailed):
                _emit(event="route_failed", target=event.target, reason=event.reason)


async def _serve_commands(node: Node) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with stdin:
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    command = json.loads(line)
                    if not isinstance(command, dict):
                        raise ValueError("a command is a JSON object")
                except ValueError as exc:
                    _emit(event="reply", ref=None, error=f"bad command: {exc}")
                    continue
                try:
                    result = await _command(node, command)
                except Exception as exc:  # reported to the parent, the node keeps running
                    _emit(event="reply", ref=command.get("ref"), op=command.get("op"), error=f"{type(exc).__name__}: {exc}")
                else:
                    _emit(event="reply", ref=command.get("ref"), op=command.get("op"), **result)


async def _command(node: Node, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "broadcast":
        return {"id": (await node.broadcast_overlay(command.get("data"))).hex()}
    if op == "gossip":
        return {"id": (await node.gossip(command.get("data"), ttl=command.get("ttl"))).hex()}
    if op == "send":
        await node.send(command["target"], command.get("data"), delivery=command.get("delivery"))
        return {}
    if op == "request":
        reply = await node.request(command["target"], command.get("data"), timeout=command.get("timeout"))
        return {"data": reply.data}
    if op == "stats":
        return {"stats": node.overlay.statistics() if node.overlay is not None else node.statistics()}
    raise ValueError(f"unknown op {op!r}")
