"""Shared plumbing for the benchmarks: timing, the machine line and the RESULT line.

Every benchmark measures its anchor in the same run and reports ratios, because the
machines these run on are noisy (2x swings happen); compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run (under a minute)")
    return parser.parse_args()


def rate(fn: Callable[[], int], *, seconds: float, repeats: int = 3) -> float:
    """Best-of-``repeats`` rate of ``fn`` (which returns how many units it did), per second."""
    best = 0.0
    for _ in range(repeats):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            done += fn()
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def report(name: str, rows: list[tuple[str, str]], result: dict[str, Any]) -> None:
    print(f"# {name} on {machine()}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print("RESULT " + json.dumps(result, sort_keys=True))
