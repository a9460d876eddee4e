"""Command line: ``phoenix-trio <command>`` or ``python -m phoenix_trio <command>``.

Commands:
  demo    run the main job and print a readable report
  node    run a node until interrupted (SIGINT/SIGTERM)
  raft    run a node that is a Raft member, with a kv agent (see phoenix_trio.raft._cli)
  info    show the version and which core implementation is active
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phoenix-trio", description="phoenix_trio command line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the main job and print a report")
    commands.add_parser("info", help="show version and the active core implementation")
    node = commands.add_parser("node", help="run a node until interrupted")
    node.add_argument("--name", required=True, help="node id, unique in the cluster")
    node.add_argument("--listen", default="127.0.0.1:0", help="host:port to accept peers on (port 0: any)")
    node.add_argument("--seed", action="append", default=[], help="host:port of a node to join through (repeatable)")
    node.add_argument(
        "--agent", action="append", default=[], metavar="KIND:ID[@GROUP]", help="run a built-in agent (echo, counter, sink, slow, driver, subscriber, stage); @GROUP adds it to a group (repeatable)"
    )
    node.add_argument("--heartbeat-interval", type=float, default=0.5)
    node.add_argument("--failure-timeout", type=float, default=2.0)
    node.add_argument("--cluster", default="phoenix")
    node.add_argument("--data-dir", default=None, help="durable state (exactly-once log, journals)")
    node.add_argument("--fsync", default="interval", choices=["interval", "always", "never"])
    node.add_argument("--log-level", default="WARNING")
    node.add_argument("--overlay", choices=["hyparview", "client_server", "tree"], help="run an overlay instead of the full mesh")
    node.add_argument("--overlay-option", action="append", default=[], metavar="KEY=VALUE", help="configure_overlay option (repeatable)")
    node.add_argument("--gossip", action="store_true", help="run the gossip pattern over the overlay")
    node.add_argument("--gossip-option", action="append", default=[], metavar="KEY=VALUE", help="start_gossip_protocol option (repeatable)")
    node.add_argument("--idle-timeout", type=float, default=5.0, help="overlay: close idle links to non-neighbours after this long")
    node.add_argument("--commands", action="store_true", help="read JSON commands from stdin (broadcast, gossip, send, request, stats)")
    from .raft._cli import add_parser as add_raft_parser

    add_raft_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "info":
        from . import __version__, core

        print(f"phoenix_trio {__version__}; core: {core.IMPLEMENTATION} (crc32c: {core.crc32c_implementation()})")
        return 0
    if args.command == "node":
        from ._cli_node import run_node

        return run_node(args)
    if args.command == "raft":
        from .raft._cli import run as run_raft

        return run_raft(args)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
