"""The causal-order group on the node runtime: :func:`open_causal_group`.

One member of a :class:`~phoenix_trio._causal.CausalBroadcast` group per node, riding
the node service ``causal.<name>`` (like the total-order group rides ``tob.<name>``).
One task owns the core: it takes what the service delivered, fired timers and the
membership events, feeds them to the core, and flushes what the core sends, one
service payload per peer per iteration. ``broadcast`` calls the core directly (the core
is plain synchronous code; Trio runs one task at a time) and leaves the sending to
that task.

Policies (each documented where it applies):

- ``broadcast`` waits while ``max_pending`` of this member's messages are not yet
  acknowledged by every joined member (so a member that stops acknowledging slows the
  broadcasters, up to ``gap_timeout`` after it is reported dead), and while the
  delivery buffer is full;
- deliveries wait in a buffer of ``max_deliveries``; when it is full the member
  **blocks**: it stops processing group traffic until the application takes some; its
  service queue then fills and stalls that peer connection (backpressure);
- a send that finds the peer's control buffer full or the peer disconnected is dropped
  and resent by the core's retry (acknowledgements say what is missing);
- the hold-back buffer holds ``max_held`` messages; beyond it the member fails with
  :class:`~phoenix_trio._causal.CausalOrderOverflow`, raised by ``receive`` (after the
  deliveries already queued) and by ``broadcast``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import msgpack
import trio

from ._causal import (
    CausalBroadcast,
    CausalDelivery,
    CausalGap,
    CausalOrderOverflow,
    CausalStatistics,
    Data,
    decode,
    encode,
)
from ._errors import ConfigurationError, DecodeError, EncodeError
from ._service import MAX_PAYLOAD, Service, ServiceFaults
from ._vclock import VectorClock
from .effects import Send, SetTimer

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger(__name__)

_incarnations: dict[str, int] = {}


def _next_incarnation(node: Node) -> int:
    """Grows across restarts (the node's incarnation is time-based) and across reopenings."""
    incarnation = max(node.incarnation << 4, _incarnations.get(node.id, 0) + 1)
    _incarnations[node.id] = incarnation
    return incarnation


def _decode_payloads(messages: list[Any]) -> list[Any]:
    """Unpack the application payload of every data message (once, before the core holds it)."""
    for i, message in enumerate(messages):
        if type(message) is Data:
            try:
                value = msgpack.unpackb(message.payload, raw=False)
            except Exception as exc:  # msgpack raises several types for bad input
                raise DecodeError(f"bad causal payload value: {exc}") from None
            messages[i] = attrs.evolve(message, payload=value)
    return messages


class _Runner:
    def __init__(self, node: Node, service: Service, core: CausalBroadcast, *, capacity: int, max_deliveries: int) -> None:
        self.node = node
        self.service = service
        self.core = core
        self.capacity = capacity
        self.max_deliveries = max_deliveries
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.outbox: dict[str, list[bytes]] = {}
        self.deliveries: deque[CausalDelivery | CausalGap] = deque()
        self.timers: dict[Any, float] = {}
        self.wakeup = trio.lowlevel.ParkingLot()
        self.inbox_space = trio.lowlevel.ParkingLot()
        self.delivery_ready = trio.lowlevel.ParkingLot()
        self.space = trio.lowlevel.ParkingLot()  # broadcasters waiting for pending or delivery room
        self.failed: BaseException | None = None
        self.closed = False
        self.send_drops = 0
        self.decode_errors = 0

    # -- effects ----------------------------------------------------------------------------

    def apply(self, effects: Iterable[Any]) -> None:
        encoded: dict[int, bytes] = {}
        woke = False
        for effect in effects:
            t = type(effect)
            if t is Send:
                message = effect.message
                if type(message) is Data:
                    blob = encoded.get(id(message))
                    if blob is None:
                        blob = encoded[id(message)] = encode(message)
                else:
                    blob = encode(message)
                self.outbox.setdefault(effect.dest, []).append(blob)
            elif t is SetTimer:
                self.timers[effect.key] = effect.deadline
            elif t is CausalDelivery:
                if effect.stream == self.core.me:  # our own: the core holds the packed bytes
                    effect = attrs.evolve(effect, payload=msgpack.unpackb(effect.payload, raw=False))
                self.deliveries.append(effect)
                woke = True
            elif t is CausalGap:
                self.deliveries.append(effect)
                woke = True
        if woke:
            self.delivery_ready.unpark_all()

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, {}
        for dest, blobs in outbox.items():
            chunk: list[bytes] = []
            size = 0
            for blob in blobs:
                if chunk and size + len(blob) > MAX_PAYLOAD:
                    self._send(dest, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(blob)
                size += len(blob)
            if chunk:
                self._send(dest, b"".join(chunk))

    def _send(self, dest: str, payload: bytes) -> None:
        if not self.service.send_nowait(dest, payload):
            self.send_drops += 1  # not connected or its buffer is full: the core resends

    def fail(self, error: BaseException) -> None:
        self.failed = error
        self.closed = True
        for lot in (self.delivery_ready, self.space, self.inbox_space, self.wakeup):
            lot.unpark_all()

    # -- tasks --------------------------------------------------------------------------------

    async def pump(self) -> None:
        async for sender, payload in self.service:
            while len(self.inbox) >= self.capacity:
                await self.inbox_space.park()
            self.inbox.append((sender, payload))
            self.wakeup.unpark_all()

    async def watch(self) -> None:
        members = self.core.members
        async with self.node.watch_membership() as events:
            async for event in events:
                if event.node_id not in members or event.node_id == self.node.id or self.failed is not None:
                    continue
                if event.kind in ("dead", "left", "restarted"):
                    self.apply(self.core.node_down(event.node_id, trio.current_time()))
                elif event.kind in ("joined", "alive"):
                    self.apply(self.core.node_up(event.node_id, trio.current_time()))
                self.wakeup.unpark_all()

    async def loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        core = self.core
        self.apply(core.start(trio.current_time()))
        self.flush()
        task_status.started()
        try:
            while True:
                while len(self.deliveries) >= self.max_deliveries:
                    await self.space.park()  # block policy: the application must take deliveries first
                now = trio.current_time()
                due = [key for key, deadline in self.timers.items() if deadline <= now]
                for key in due:
                    del self.timers[key]
                    self.apply(core.timer(key, now))
                inbox = self.inbox
                if inbox:
                    while inbox and len(self.deliveries) < self.max_deliveries:
                        sender, payload = inbox.popleft()
                        try:
                            messages = _decode_payloads(decode(payload))
                        except DecodeError as exc:
                            self.decode_errors += 1
                            log.warning("causal group %s: dropped a bad payload from %s: %s", self.service.name, sender, exc)
                            continue
                        for message in messages:
                            self.apply(core.receive(sender, message, now))
                    self.inbox_space.unpark_all()
                self.flush()
                self.space.unpark_all()
                if self.inbox and len(self.deliveries) < self.max_deliveries:
                    await trio.lowlevel.checkpoint()
                    continue
                deadline = min(self.timers.values(), default=trio.current_time() + 3600)
                with trio.move_on_at(deadline):
                    await self.wakeup.park()
        except CausalOrderOverflow as exc:
            log.error("causal group %s failed: %s", self.service.name, exc)
            self.fail(exc)


class CausalGroup:
    """One member of a causal-order broadcast group; made by :func:`open_causal_group`.

    ``await group.broadcast(payload)`` sends; ``async for delivery in group`` yields
    :class:`~phoenix_trio._causal.CausalDelivery` records (and
    :class:`~phoenix_trio._causal.CausalGap` when an ended member's messages are declared
    lost) in an order that respects happened-before.
    """

    def __init__(self, runner: _Runner, name: str, members: tuple[str, ...], max_pending: int) -> None:
        self._runner = runner
        self._core = runner.core
        self.name = name
        self.members = members
        self.max_pending = max_pending

    @property
    def stream(self) -> str:
        """This member's stream: ``"<node id>/<incarnation, hex>"``, its key in the vector clocks."""
        return self._core.me

    @property
    def clock(self) -> VectorClock:
        """What this member has delivered (its own messages included), by stream."""
        return self._core.clock()

    @property
    def pending(self) -> int:
        """This member's messages not yet acknowledged by every joined member."""
        return self._core.pending

    def joined(self) -> set[str]:
        """Member nodes joined both ways with this one: they get what it broadcasts from now on."""
        return self._core.joined()

    async def wait_joined(self, nodes: Iterable[str] | None = None, *, timeout: float | None = 10.0) -> None:
        """Wait until ``nodes`` (default: every other member) have joined with this member.

        A member receives what the others broadcast after it joined them, so call this
        before broadcasting when every member must see everything. Raises ``TimeoutError``.
        """
        want = set(self.members if nodes is None else nodes) - {self._runner.node.id}
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while not want <= self._core.joined():
                self._check()
                await self._runner.space.park()  # unparked after every iteration of the loop

    def _check(self) -> None:
        runner = self._runner
        if runner.failed is not None:
            raise runner.failed
        if runner.closed:
            raise trio.ClosedResourceError("the causal group member is closed")

    async def broadcast(self, payload: Any) -> None:
        """Broadcast ``payload`` (any msgpack value) to the group; it is also delivered here.

        Returns once the member took it (delivered locally, queued for the others); a
        call cancelled while waiting has sent nothing. Waits while ``max_pending`` messages are unacknowledged or the delivery buffer is
        full. Raises :class:`~phoenix_trio.EncodeError` for a payload msgpack cannot
        encode, :class:`CausalOrderOverflow` if the member failed,
        ``trio.ClosedResourceError`` once closed.
        """
        try:
            packed = msgpack.packb(payload, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"causal payload cannot be encoded: {exc}") from None
        runner = self._runner
        core = self._core
        while core.pending >= self.max_pending or len(runner.deliveries) >= runner.max_deliveries:
            self._check()
            await runner.space.park()
        self._check()
        runner.apply(core.broadcast(packed, trio.current_time()))
        runner.wakeup.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()  # it is sent: a cancellation now would lie

    async def receive(self) -> CausalDelivery | CausalGap:
        """The next delivery; ``trio.EndOfChannel`` once closed (the member's error if it failed)."""
        runner = self._runner
        while not runner.deliveries:
            if runner.failed is not None:
                raise runner.failed
            if runner.closed:
                raise trio.EndOfChannel
            await runner.delivery_ready.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        item = runner.deliveries.popleft()
        runner.space.unpark_all()
        return item

    def __aiter__(self) -> CausalGroup:
        return self

    async def __anext__(self) -> CausalDelivery | CausalGap:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> CausalStatistics:
        return self._core.statistics()


@asynccontextmanager
async def open_causal_group(
    node: Node,
    name: str,
    *,
    members: Iterable[str],
    capacity: int = 1024,
    max_held: int = 10_000,
    max_pending: int = 1024,
    max_deliveries: int = 65_536,
    ack_interval: float = 0.05,
    retry_interval: float = 0.2,
    gap_timeout: float = 2.0,
    linger: float = 1.0,
    faults: ServiceFaults | None = None,
) -> AsyncIterator[CausalGroup]:
    """Run a member of the causal-order broadcast group ``name`` on ``node`` for the block.

    ``members``: the node ids of the group, the same on every member (this node among
    them). ``capacity``: payloads queued from the service (beyond it the peer connection
    is stalled). ``max_held``: the hold-back buffer bound. ``max_pending``: this
    member's unacknowledged messages before ``broadcast`` waits. ``max_deliveries``:
    deliveries waiting for the application before the member stops processing.
    ``gap_timeout``: how long after a member ended its missing messages are declared
    lost. ``linger``: on a normal exit, how long to wait for the others to acknowledge
    this member's last messages before saying goodbye. ``faults``: inbound fault
    injection on the group's service, for tests (see :class:`ServiceFaults`).

    Leaving the block tells the other members this member's last message number and
    stops its tasks; a cancelled or failing block does not linger.
    """
    ids = tuple(members)
    if len(set(ids)) != len(ids):
        raise ConfigurationError("duplicate member ids")
    if node.id not in ids:
        raise ConfigurationError(f"this node ({node.id!r}) is not among the members {ids!r}")
    if max_pending < 1 or max_deliveries < 1 or capacity < 1:
        raise ConfigurationError("max_pending, max_deliveries and capacity must be at least 1")
    core = CausalBroadcast(
        node.id,
        _next_incarnation(node),
        members=ids,
        max_held=max_held,
        ack_interval=ack_interval,
        retry_interval=retry_interval,
        gap_timeout=gap_timeout,
    )
    async with node.service(f"causal.{name}", capacity=capacity) as service:
        if faults is not None:
            service.inject_faults(faults)
        runner = _Runner(node, service, core, capacity=capacity, max_deliveries=max_deliveries)
        group = CausalGroup(runner, name, ids, max_pending)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.pump)
            nursery.start_soon(runner.watch)
            await nursery.start(runner.loop)
            try:
                yield group
            except BaseException:
                runner.closed = True
                raise
            else:
                if runner.failed is None and linger > 0:
                    with trio.move_on_after(linger):
                        while core.pending:
                            await runner.space.park()
            finally:
                runner.closed = True
                if runner.failed is None:
                    runner.apply(core.close(trio.current_time()))
                    runner.flush()
                for lot in (runner.delivery_ready, runner.space, runner.inbox_space):
                    lot.unpark_all()
                nursery.cancel_scope.cancel()


async def serve_causal_agent(agent: Any) -> None:
    """The ``causal`` built-in agent: lets a test drive a causal group member in a process.

    Requests (answered when done):

    - ``{"open": {"name": n, "members": [...], "faults": {"seed": s, "delay": [lo, hi],
      "duplicate": p, "drop": q}}}``: opens the member (``faults`` optional: inbound fault
      injection on its service), waits until every member joined; answers ``{"stream": ...}``.
    - ``{"broadcast": {"name": n, "count": k, "seed": s}}``: broadcasts ``{"i": 0..k-1}``
      while deliveries go on (it yields between sends, so later messages depend on what
      arrived meanwhile); answers ``{"sent": k}``.
    - ``{"log": {"name": n, "until": total}}``: waits until the member delivered ``total``
      messages; answers ``{"log": [[stream, seq, {stream: count}], ...], "stats": {...}}``
      in delivery order (a ``CausalGap`` is ``["gap", stream, first, last]``).
    """
    import random

    groups: dict[str, CausalGroup] = {}
    logs: dict[str, list[Any]] = {}
    progress = trio.lowlevel.ParkingLot()

    async def member(spec: dict[str, Any], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        faults = spec.get("faults")
        injected = None
        if faults:
            injected = ServiceFaults(
                seed=int(faults["seed"]),
                delay=(float(faults["delay"][0]), float(faults["delay"][1])),
                duplicate=float(faults.get("duplicate", 0.0)),
                drop=float(faults.get("drop", 0.0)),
            )
        name = spec["name"]
        async with open_causal_group(agent.node, name, members=spec["members"], faults=injected, linger=0) as group:
            groups[name] = group
            log_ = logs[name] = []
            await group.wait_joined(timeout=30)
            task_status.started(group)
            async for d in group:
                if isinstance(d, CausalGap):
                    log_.append(["gap", d.stream, d.first, d.last])
                else:
                    log_.append([d.stream, d.seq, dict(d.clock.entries)])
                progress.unpark_all()

    async def handle(message: Any) -> None:
        order = message.data
        try:
            if isinstance(order, dict) and "open" in order:
                group = await nursery.start(member, order["open"])
                await message.reply({"stream": group.stream})
            elif isinstance(order, dict) and "broadcast" in order:
                spec = order["broadcast"]
                group = groups[spec["name"]]
                rng = random.Random(spec.get("seed", 0))
                for i in range(int(spec["count"])):
                    await group.broadcast({"i": i})
                    if rng.random() < 0.5:
                        await trio.sleep(rng.uniform(0, 0.002))  # let deliveries interleave with sends
                await message.reply({"sent": int(spec["count"])})
            elif isinstance(order, dict) and "log" in order:
                spec = order["log"]
                while len(logs[spec["name"]]) < int(spec["until"]):
                    await progress.park()
                stats = attrs.asdict(groups[spec["name"]].statistics())
                await message.reply({"log": logs[spec["name"]], "stats": stats})
            else:
                await message.reply({"error": f"unknown order {order!r}"})
        except Exception as exc:  # answer the test instead of dying
            await message.reply({"error": repr(exc)})

    async with trio.open_nursery() as nursery:
        async for message in agent:
            if message.is_request:
                nursery.start_soon(handle, message)
