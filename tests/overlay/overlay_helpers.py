"""Small helpers for reading effect lists in the overlay tests."""

from __future__ import annotations

from typing import Any

from phoenix_trio.effects import Send, SetTimer


def sends(effects: list[Any], kind: type | None = None) -> list[Send]:
    return [e for e in effects if type(e) is Send and (kind is None or type(e.message) is kind)]


def sent_to(effects: list[Any], kind: type | None = None) -> list[Any]:
    return [e.dest for e in sends(effects, kind)]


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if type(e) is kind]


def timers(effects: list[Any]) -> dict[Any, float]:
    return {e.key: e.deadline for e in effects if type(e) is SetTimer}
