"""Plain-text tables for the demo's report: left-aligned columns under a ruled header."""

from __future__ import annotations

from typing import Any


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))
