"""A Wing & Gong / Lowe (WGL) linearizability checker for key-value histories.

A history is a list of :class:`Operation` records: who invoked what, when it was invoked
and when it returned (``complete=None`` when the outcome is unknown: the client timed
out or its node crashed; such an operation may take effect at any point after its
invocation, or never). Operations: ``read`` (output: the value seen), ``put`` (output:
the previous value, or :data:`UNKNOWN`), ``cas`` (``value=(expected, new)``, output: the
boolean outcome) and ``delete`` (a put of ``None``).

Keys are independent registers, so the history is split per key (linearizability is
compositional) and each part is searched with WGL: repeatedly linearize the earliest
call whose model step is legal, backtrack when a return is reached first, and memoize
``(set of linearized operations, register value)`` so no configuration is explored
twice (Lowe's improvement).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import attrs


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""The output of an operation whose result the client never learned."""


class CheckBudgetExceeded(RuntimeError):
    """The search explored more configurations than allowed; no verdict."""


@attrs.frozen(slots=True)
class Operation:
    """One client operation on one key. ``complete=None``: outcome unknown."""

    client: Any
    kind: str
    key: Any
    value: Any = None
    output: Any = UNKNOWN
    invoke: float = 0.0
    complete: float | None = None


@attrs.frozen(slots=True)
class CheckResult:
    """``ok``: the history is linearizable. Otherwise ``key`` names a register whose
    sub-history is not, and ``operations`` are its operations (for the report)."""

    ok: bool
    key: Any = None
    operations: tuple[Operation, ...] = ()
    explored: int = 0


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _freeze(v)) for k, v in value.items()))
    return value


def _step(state: Any, op: Operation) -> tuple[bool, Any]:
    kind = op.kind
    out = op.output
    if kind == "read":
        return (out is UNKNOWN or _freeze(out) == state), state
    if kind == "put" or kind == "delete":
        new = _freeze(op.value) if kind == "put" else None
        return (out is UNKNOWN or _freeze(out) == state), new
    if kind == "cas":
        expected, new = op.value
        matches = state == _freeze(expected)
        if out is UNKNOWN:
            return True, (_freeze(new) if matches else state)
        if out:
            return matches, _freeze(new)
        return (not matches), state
    raise ValueError(f"unknown operation kind {kind!r}")


class _Node:
    __slots__ = ("call", "match", "next", "op", "op_id", "prev")

    def __init__(self, op: Operation | None, op_id: int, call: bool) -> None:
        self.op = op
        self.op_id = op_id
        self.call = call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _check_register(ops: list[Operation], init: Any, budget: int) -> tuple[bool, int]:
    events = []
    inf = float("inf")
    for op_id, op in enumerate(ops):
        call = _Node(op, op_id, True)
        ret = _Node(op, op_id, False)
        call.match = ret
        events.append((op.invoke, 0, op_id, call))
        events.append((op.complete if op.complete is not None else inf, 1, op_id, ret))
    # calls before returns at equal times: touching operations count as concurrent
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, -1, False)
    prev = head
    for *_, node in events:
        prev.next = node
        node.prev = prev
        prev = node

    def lift(call: _Node) -> None:
        call.prev.next = call.next  # type: ignore[union-attr]
        if call.next is not None:
            call.next.prev = call.prev
        ret = call.match
        assert ret is not None
        ret.prev.next = ret.next  # type: ignore[union-attr]
        if ret.next is not None:
            ret.next.prev = ret.prev

    def unlift(call: _Node) -> None:
        ret = call.match
        assert ret is not None
        ret.prev.next = ret  # type: ignore[union-attr]
        if ret.next is not None:
            ret.next.prev = ret
        call.prev.next = call  # type: ignore[union-attr]
        if call.next is not None:
            call.next.prev = call

    state = _freeze(init)
    linearized = 0
    stack: list[tuple[_Node, Any]] = []
    cache: set[tuple[int, Any]] = set()
    explored = 0
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.call:
            ok, new_state = _step(state, entry.op)  # type: ignore[arg-type]
            if ok:
                bits = linearized | (1 << entry.op_id)
                key = (bits, new_state)
                if key not in cache:
                    explored += 1
                    if explored > budget:
                        raise CheckBudgetExceeded(f"explored {explored} configurations")
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized = bits
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False, explored
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op_id)
            unlift(entry)
            entry = entry.next
    return True, explored


def check_linearizable(history: list[Operation], *, init: Any = None, budget: int = 2_000_000) -> CheckResult:
    """Check a key-value history (every key starts at ``init``). See the module docstring."""
    per_key: dict[Any, list[Operation]] = defaultdict(list)
    for op in history:
        if op.kind == "read" and op.output is UNKNOWN:
            continue  # an unanswered read constrains nothing
        per_key[_freeze(op.key)].append(op)
    explored = 0
    for key, ops in per_key.items():
        ok, n = _check_register(ops, init, budget)
        explored += n
        if not ok:
            return CheckResult(False, key, tuple(ops), explored)
    return CheckResult(True, None, (), explored)
