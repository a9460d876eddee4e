"""A seeded, deterministic discrete-event network for testing sans-IO protocol cores.

:class:`Simulation` drives any number of nodes that follow the sans-IO shape of
:mod:`phoenix_trio.effects`: each node is an object with

- ``receive(sender, message, now) -> iterable of effects``
- ``timer(key, now) -> iterable of effects``
- optionally ``start(now) -> iterable of effects``, called when the node is added.

The simulation owns the clock and a single :class:`random.Random` seeded by the caller;
every latency, loss, duplication and ordering decision comes from it, so the same seed
replays the same run exactly. Faults: per-message loss and duplication, random delay
(hence reordering), symmetric and one-way partitions, crashes and restarts. Effects other
than ``Send``/``SetTimer``/``CancelTimer`` are handed to ``on_effect(node_id, effect)``,
which may return further effects for that node.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

import attrs

from .effects import CancelTimer, Send, SetTimer

__all__ = ["LinkStats", "SimNode", "Simulation"]

_DELIVER = 0
_TIMER = 1
_CALL = 2


class SimNode(Protocol):
    def receive(self, sender: Hashable, message: Any, now: float) -> Iterable[Any]: ...

    def timer(self, key: Hashable, now: float) -> Iterable[Any]: ...


@attrs.define
class LinkStats:
    """Counters of what the simulated network did."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    blocked: int = 0
    to_dead: int = 0


class Simulation:
    """A deterministic network of sans-IO nodes. See the module docstring."""

    def __init__(
        self,
        *,
        seed: int,
        latency: tuple[float, float] = (0.001, 0.005),
        loss: float = 0.0,
        duplicate: float = 0.0,
        on_effect: Callable[[Hashable, Any], Iterable[Any] | None] | None = None,
        on_deliver: Callable[[Hashable, Hashable, Any], None] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency = latency
        self.loss = loss
        self.duplicate = duplicate
        self.on_effect = on_effect
        self.on_deliver = on_deliver
        self.stats = LinkStats()
        self.nodes: dict[Hashable, Any] = {}
        self._alive: set[Hashable] = set()
        self._incarnation: dict[Hashable, int] = {}
        self._timer_gen: dict[tuple[Hashable, Hashable], int] = {}
        self._blocked: set[tuple[Hashable, Hashable]] = set()
        self._groups: dict[Hashable, int] | None = None
        self._queue: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    # -- topology and faults ----------------------------------------------------------

    def add(self, node_id: Hashable, node: Any) -> None:
        """Add (or restart) ``node_id`` with the fresh state machine ``node``."""
        self.nodes[node_id] = node
        self._alive.add(node_id)
        self._incarnation[node_id] = self._incarnation.get(node_id, 0) + 1
        start = getattr(node, "start", None)
        if start is not None:
            self._apply(node_id, start(self.now))

    def crash(self, node_id: Hashable) -> None:
        """Stop ``node_id``: its pending timers die, messages to it are dropped on arrival."""
        self._alive.discard(node_id)
        self._incarnation[node_id] = self._incarnation.get(node_id, 0) + 1

    def restart(self, node_id: Hashable, node: Any) -> None:
        """Bring ``node_id`` back as ``node`` (built by the caller from persisted state)."""
        self.add(node_id, node)

    def is_alive(self, node_id: Hashable) -> bool:
        return node_id in self._alive

    @property
    def alive(self) -> frozenset[Hashable]:
        return frozenset(self._alive)

    def partition(self, *groups: Iterable[Hashable]) -> None:
        """Split the network: nodes in different groups cannot talk; unlisted nodes form one group."""
        self._groups = {}
        for index, group in enumerate(groups, start=1):
            for node_id in group:
                self._groups[node_id] = index

    def block(self, src: Hashable, dst: Hashable) -> None:
        """Drop everything ``src`` sends to ``dst`` (one way: an asymmetric partition)."""
        self._blocked.add((src, dst))

    def unblock(self, src: Hashable, dst: Hashable) -> None:
        self._blocked.discard((src, dst))

    def heal(self) -> None:
        """Remove every partition and one-way block."""
        self._groups = None
        self._blocked.clear()

    def can_reach(self, src: Hashable, dst: Hashable) -> bool:
        if (src, dst) in self._blocked:
            return False
        if self._groups is not None and self._groups.get(src, 0) != self._groups.get(dst, 0):
            return False
        return True

    # -- driving ----------------------------------------------------------------------

    def call(self, node_id: Hashable, fn: Callable[[float], Iterable[Any] | None], at: float | None = None) -> None:
        """Run ``fn(now)`` on ``node_id`` at time ``at`` (default: now) and apply its effects.

        Use it to inject client commands; nothing runs if the node is down by then.
        """
        self._push(self.now if at is None else at, _CALL, (node_id, self._incarnation.get(node_id, 0), fn))

    def step(self) -> bool:
        """Process one event; False when nothing is pending."""
        if not self._queue:
            return False
        when, _, kind, payload = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        if kind == _DELIVER:
            src, dst, message = payload
            if dst not in self._alive:
                self.stats.to_dead += 1
                return True
            self.stats.delivered += 1
            if self.on_deliver is not None:
                self.on_deliver(src, dst, message)
            self._apply(dst, self.nodes[dst].receive(src, message, self.now))
        elif kind == _TIMER:
            node_id, key, gen, incarnation = payload
            if (
                node_id in self._alive
                and self._incarnation[node_id] == incarnation
                and self._timer_gen.get((node_id, key)) == gen
            ):
                del self._timer_gen[(node_id, key)]
                self._apply(node_id, self.nodes[node_id].timer(key, self.now))
        else:
            node_id, incarnation, fn = payload
            if node_id in self._alive and self._incarnation[node_id] == incarnation:
                self._apply(node_id, fn(self.now))
        return True

    def run(self, until: float) -> None:
        """Process every event up to time ``until``; the clock ends at ``until``."""
        while self._queue and self._queue[0][0] <= until:
            self.step()
        self.now = max(self.now, until)

    def run_until(self, predicate: Callable[[], bool], *, timeout: float) -> bool:
        """Run until ``predicate()`` holds (checked after every event) or ``timeout`` passes."""
        deadline = self.now + timeout
        if predicate():
            return True
        while self._queue and self._queue[0][0] <= deadline:
            self.step()
            if predicate():
                return True
        self.now = max(self.now, deadline)
        return predicate()

    def deliver_now(self, src: Hashable, dst: Hashable, message: Any) -> None:
        """Inject ``message`` from ``src`` to ``dst`` through the network, as if sent now."""
        self._send(src, dst, message)

    # -- internals --------------------------------------------------------------------

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, kind, payload))

    def _send(self, src: Hashable, dst: Hashable, message: Any) -> None:
        stats = self.stats
        stats.sent += 1
        if not self.can_reach(src, dst):
            stats.blocked += 1
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            stats.lost += 1
            return
        low, high = self.latency
        self._push(self.now + rng.uniform(low, high), _DELIVER, (src, dst, message))
        if self.duplicate and rng.random() < self.duplicate:
            stats.duplicated += 1
            self._push(self.now + rng.uniform(low, high), _DELIVER, (src, dst, message))

    def _apply(self, node_id: Hashable, effects: Iterable[Any] | None) -> None:
        if not effects:
            return
        pending = list(effects)
        while pending:
            effect = pending.pop(0)
            if type(effect) is Send:
                self._send(node_id, effect.dest, effect.message)
            elif type(effect) is SetTimer:
                gen = self._seq + 1
                self._timer_gen[(node_id, effect.key)] = gen
                self._seq += 1
                heapq.heappush(
                    self._queue,
                    (max(effect.deadline, self.now), gen, _TIMER, (node_id, effect.key, gen, self._incarnation[node_id])),
                )
            elif type(effect) is CancelTimer:
                self._timer_gen.pop((node_id, effect.key), None)
            elif self.on_effect is not None:
                more = self.on_effect(node_id, effect)
                if more:
                    pending.extend(more)
            else:
                raise TypeError(f"{node_id!r} produced {effect!r} and no on_effect handler is set")
