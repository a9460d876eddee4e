"""Command line: ``phoenix-trio <command>`` or ``python -m phoenix_trio <command>``.

Commands:
  demo    run the main job and print a readable report
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
    args = parser.parse_args(argv)

    if args.command == "info":
        from . import __version__, core

        print(f"phoenix_trio {__version__}; core: {core.IMPLEMENTATION} (crc32c: {core.crc32c_implementation()})")
        return 0
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
