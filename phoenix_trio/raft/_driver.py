"""The Trio driver: a :class:`RaftNode` (or a total-order group) running on a node.

``async with open_raft(node, group="kv", members=[...], data_dir=...) as raft:`` runs one
Raft member inside the caller's Trio program, on the node runtime:

- **messages** are encoded with :mod:`._codec` and travel through the node service
  ``raft.<group>`` (control frames on the existing peer connections). Everything a
  batch sends to one peer goes as one payload. A message for a peer that is not
  connected, or whose send buffer is full, is dropped: Raft retransmits.
- **time** is ``trio.current_time()``, so ``trio.testing.MockClock`` drives it; timers
  are the core's ``SetTimer``/``CancelTimer`` effects, kept in a dict and served by the
  one loop task.
- **persistence** honours the barrier contract (:class:`PersistBarrier`) with group
  commit: the loop task takes every input that is ready (peer messages, fired timers,
  client commands), feeds them all to the core, writes all their ``Persist`` effects
  to the :class:`WriteAheadLog` with one ``write`` and one ``fsync``, and only then
  sends the batch's messages, arms its timers and answers its callers. While the fsync
  runs, new input queues up and forms the next batch.
- **the fsync thread**: with ``sync_in_thread=True`` (the default) the write and fsync
  run in ``trio.to_thread.run_sync``, the one place where blocking I/O forces a thread,
  so the node's connections and other tasks keep running meanwhile. Opening the WAL
  (reading the segments back) also runs in a thread. ``sync_in_thread=False`` does the
  I/O in the Trio thread (tests with an autojumping ``MockClock`` need that: a task
  waiting for a thread looks idle to the clock).

Every task (the loop, the pump that moves service payloads into the loop's inbox) lives
in a nursery owned by the ``async with`` block; leaving it cancels and joins them and
closes the WAL (flushing what the last batch appended). Effects held behind a persist
that never completed are dropped, as after a crash.

Client calls (:meth:`Raft.propose_value`, :meth:`Raft.read_consensus_value` ...) put a
command in the loop's queue and wait for its answer. Cancelling a call leaves nothing
behind: a command not yet handed to the core is never proposed, a pending read is
withdrawn from the core, and no waiter stays registered (a proposal already in the log
may still commit; its outcome is then simply not reported). Followers do not forward
proposals: they raise :class:`~phoenix_trio.NotLeader` naming the leader they know, and
the caller retries there (the built-in ``kv`` agent does the same over the network).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import ConfigurationError, DecodeError, NotLeader, RequestTimeout
from ..effects import CancelTimer, Send, SetTimer
from ._api import Committed, Queued, Session
from ._barrier import PersistBarrier
from ._codec import decode_many, encode
from ._core import EVENTUAL, LEADER, SESSION, STRONG, RaftConfig, RaftNode, Status
from ._effects import Persist, PersistSnapshot, ProposalQueued, ProposalResult, ReadResult, RoleChanged
from ._kv import KVStateMachine
from ._messages import NodeId
from ._storage import MemoryStorage
from ._tob import DeliveriesSkipped, Deliver, TotalOrderGroup
from ._wal import WriteAheadLog

if TYPE_CHECKING:
    from .._node import Node
    from .._service import Service

_log = logging.getLogger(__name__)

MAX_PAYLOAD = 4 << 20
"""Messages to one peer are packed into payloads of at most about this many bytes."""

_PROPOSE = 0
_READ = 1
_MEMBERSHIP = 2
_TRANSFER = 3
_BROADCAST = 4


class _Waiter:
    """One client call waiting for the loop: a parked task, or a callback for the low-level tier.

    A cancelled waiter is marked at once (in trio's abort callback, before any other task
    runs), so the loop never hands a command whose caller has gone to the core.
    """

    __slots__ = ("callback", "cancelled", "done", "error", "on_abort", "outcome", "task", "wait")

    def __init__(self, callback: Callable[[Any, Exception | None], None] | None = None, *, wait: bool = True) -> None:
        self.callback = callback
        self.outcome: Any = None
        self.error: Exception | None = None
        self.cancelled = False
        self.done = False
        self.wait = wait
        self.task: Any = None
        self.on_abort: Callable[[], None] | None = None

    def resolve(self, outcome: Any, error: Exception | None) -> None:
        if self.cancelled or self.done:
            return
        self.done = True
        self.outcome = outcome
        self.error = error
        if self.callback is not None:
            try:
                self.callback(outcome, error)
            except Exception:  # a caller's callback must not take the loop down
                _log.exception("raft completion callback failed")
        elif self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task)

    async def park(self) -> None:
        """Wait for :meth:`resolve`; on cancellation, mark the waiter and call ``on_abort``."""
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        self.task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.task = None
            self.cancelled = True
            if self.on_abort is not None:
                self.on_abort()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


@attrs.frozen(slots=True)
class DriverStatistics:
    """Counters of one driver: batches run, fsyncs, messages and payloads sent and received."""

    batches: int
    syncs: int
    inputs: int
    sent_messages: int
    sent_payloads: int
    dropped_payloads: int
    received_payloads: int
    bad_payloads: int


class _Runner:
    """Runs one sans-IO core (RaftNode or TotalOrderGroup) on a node. See the module docstring."""

    def __init__(
        self,
        node: Node,
        service: Service,
        core: Any,
        raft: RaftNode,
        storage: Any,
        *,
        sync_in_thread: bool,
        inbox_capacity: int,
        max_deliveries: int = 0,
    ) -> None:
        self.node = node
        self.service = service
        self.core = core
        self.raft = raft
        self.storage = storage
        self.sync_in_thread = sync_in_thread
        self.inbox_capacity = inbox_capacity
        self.barrier = PersistBarrier()
        self.timers: dict[Any, float] = {}
        self.inbox: deque[tuple[str, bytes]] = deque()
        self.commands: deque[tuple[int, Any, Any, _Waiter]] = deque()
        self.waiters: dict[int, _Waiter] = {}
        self.ids = itertools.count(1)
        self.wake = trio.lowlevel.ParkingLot()
        self.inbox_space = trio.lowlevel.ParkingLot()
        self.changed = trio.Event()
        self.deliveries: deque[Any] = deque()
        self.max_deliveries = max_deliveries
        self.delivery_ready = trio.lowlevel.ParkingLot()
        self.delivery_space = trio.lowlevel.ParkingLot()
        self.role = raft.role
        self.leader: NodeId | None = raft.leader
        self.term = raft.term
        self.closed = False
        self.stats = {
            "batches": 0,
            "syncs": 0,
            "inputs": 0,
            "sent_messages": 0,
            "sent_payloads": 0,
            "dropped_payloads": 0,
            "received_payloads": 0,
            "bad_payloads": 0,
        }

    # -- tasks --------------------------------------------------------------------------

    async def pump(self) -> None:
        """Move service payloads into the loop's inbox, in batches, bounded by ``inbox_capacity``."""
        service = self.service
        inbox = self.inbox
        while True:
            while len(inbox) >= self.inbox_capacity:
                await self.inbox_space.park()
            try:
                item = await service.receive()
            except trio.EndOfChannel:
                return
            inbox.append(item)
            while len(inbox) < self.inbox_capacity:
                try:
                    inbox.append(service.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self.wake.unpark_all()

    async def loop(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The one task that owns the core: batch inputs, persist once, then act."""
        core = self.core
        self._carry_out(self.barrier.feed(core.start(trio.current_time())))
        await self._sync_if_pending()
        task_status.started()
        timers = self.timers
        while True:
            if not self.inbox and not self.commands:
                deadline = min(timers.values()) if timers else float("inf")
                if deadline > trio.current_time():
                    with trio.move_on_at(deadline):
                        await self.wake.park()
            else:
                await trio.lowlevel.checkpoint()
            now = trio.current_time()
            feed = self.barrier.feed
            ready: list[Any] = []
            inputs = 0
            # timers that are due, earliest first
            if timers:
                due = sorted((d, k) for k, d in timers.items() if d <= now) if min(timers.values()) <= now else ()
                for _, key in due:
                    del timers[key]
                    ready += feed(core.timer(key, now))
                    inputs += 1
            # messages from peers
            inbox = self.inbox
            if inbox:
                batch = list(inbox)
                inbox.clear()
                self.inbox_space.unpark_all()
                receive = core.receive
                for sender, payload in batch:
                    try:
                        messages = decode_many(payload)
                    except DecodeError as exc:
                        self.stats["bad_payloads"] += 1
                        _log.warning("%s: undecodable Raft payload from %s: %s", self.raft.id, sender, exc)
                        continue
                    for message in messages:
                        ready += feed(receive(sender, message, now))
                    inputs += len(messages)
                self.stats["received_payloads"] += len(batch)
            # client commands
            if self.commands:
                commands = list(self.commands)
                self.commands.clear()
                ready += self._run_commands(commands, now)
                inputs += len(commands)
            self.stats["batches"] += 1
            self.stats["inputs"] += inputs
            self._carry_out(ready)
            await self._sync_if_pending()
            while self.max_deliveries and len(self.deliveries) >= self.max_deliveries:
                await self.delivery_space.park()  # block policy: a slow consumer slows this member

    async def _sync_if_pending(self) -> None:
        barrier = self.barrier
        if not barrier.pending:
            return
        persists = barrier.persists()
        held = barrier.synced()
        if self.sync_in_thread:
            await trio.to_thread.run_sync(self._persist, persists)
        else:
            self._persist(persists)
        self.stats["syncs"] += 1
        self._carry_out(held)

    def _persist(self, persists: list[Any]) -> None:
        storage = self.storage
        if type(storage) is MemoryStorage:
            for effect in persists:
                storage.apply(effect)
        else:
            storage.append(persists)
            storage.sync()

    # -- commands -------------------------------------------------------------------------

    def _run_commands(self, commands: list[tuple[int, Any, Any, _Waiter]], now: float) -> list[Any]:
        core = self.core
        raft = self.raft
        feed = self.barrier.feed
        ready: list[Any] = []
        proposals: list[tuple[int, Any]] = []
        for request_id, kind, args, waiter in commands:
            if waiter.cancelled:
                continue
            if kind == _PROPOSE:
                proposals.append((request_id, args))
                continue
            if proposals:
                ready += self._propose(proposals, now)
                proposals = []
            try:
                if kind == _READ:
                    query, consistency, session_index = args
                    ready += feed(raft.read(request_id, query, now, consistency=consistency, session_index=session_index))
                elif kind == _MEMBERSHIP:
                    ready += feed(raft.change_membership(request_id, now, add=args[0], remove=args[1]))
                elif kind == _TRANSFER:
                    ready += feed(raft.transfer_leadership(args, now))
                    self._resolve(request_id, None, None)
                elif kind == _BROADCAST:
                    ready += feed(core.broadcast(args, now))
                    self._resolve(request_id, None, None)
            except Exception as exc:  # NotLeader, ConfigChangeInProgress ...: the caller's answer
                self._resolve(request_id, None, exc)
        if proposals:
            ready += self._propose(proposals, now)
        return ready

    def _propose(self, proposals: list[tuple[int, Any]], now: float) -> list[Any]:
        try:
            return self.barrier.feed(self.raft.propose_batch(proposals, now))
        except Exception as exc:
            for request_id, _ in proposals:
                self._resolve(request_id, None, exc)
            return []

    def submit(self, kind: int, args: Any, waiter: _Waiter) -> int:
        if self.closed:
            raise trio.ClosedResourceError("the Raft member is closed")
        request_id = next(self.ids)
        self.waiters[request_id] = waiter
        self.commands.append((request_id, kind, args, waiter))
        if len(self.commands) == 1:
            self.wake.unpark_all()
        return request_id

    def withdraw(self, request_id: int, kind: int) -> None:
        """The caller gave up: forget its waiter; a read still pending in the core is dropped."""
        waiter = self.waiters.pop(request_id, None)
        if waiter is not None:
            waiter.cancelled = True
            waiter.task = None
            if kind == _READ:
                self.raft.cancel_read(request_id)

    def _resolve(self, request_id: Any, outcome: Any, error: Exception | None) -> None:
        waiter = self.waiters.pop(request_id, None)
        if waiter is not None:
            waiter.resolve(outcome, error)

    async def call(self, kind: int, args: Any, timeout: float | None, *, wait: bool = True) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        waiter = _Waiter(wait=wait)
        request_id = self.submit(kind, args, waiter)
        waiter.on_abort = lambda: self.withdraw(request_id, kind)
        if timeout is None:
            await waiter.park()
        else:
            with trio.move_on_after(timeout):
                await waiter.park()
        if not waiter.done:
            raise RequestTimeout(f"raft member {self.raft.id!r}", timeout or 0.0)
        if waiter.error is not None:
            raise waiter.error
        return waiter.outcome

    # -- effects --------------------------------------------------------------------------

    def _carry_out(self, effects: list[Any]) -> None:
        if not effects:
            return
        out: dict[Any, list[Any]] = {}
        timers = self.timers
        waiters = self.waiters
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                queue = out.get(effect.dest)
                if queue is None:
                    out[effect.dest] = [effect.message]
                else:
                    queue.append(effect.message)
            elif kind is ProposalResult:
                waiter = waiters.pop(effect.request_id, None)
                if waiter is not None:
                    if effect.error is not None:
                        waiter.resolve(None, effect.error)
                    else:
                        waiter.resolve(Committed(effect.request_id, effect.index, effect.result), None)
            elif kind is ProposalQueued:
                waiter = waiters.get(effect.request_id)
                if waiter is not None and not waiter.wait:
                    del waiters[effect.request_id]
                    waiter.resolve(Queued(effect.request_id, effect.index, effect.term), None)
            elif kind is ReadResult:
                waiter = waiters.pop(effect.request_id, None)
                if waiter is not None:
                    waiter.resolve(effect, effect.error)
            elif kind is SetTimer:
                timers[effect.key] = effect.deadline
            elif kind is CancelTimer:
                timers.pop(effect.key, None)
            elif kind is RoleChanged:
                self.role = effect.role
                self.leader = effect.leader
                self.term = effect.term
                self._notify()
            elif kind is Deliver or kind is DeliveriesSkipped:
                self.deliveries.append(effect)
                self.delivery_ready.unpark_all()
            elif kind is Persist or kind is PersistSnapshot:
                raise AssertionError("a persist escaped the barrier")
            else:
                _log.debug("%s: ignoring effect %r", self.raft.id, effect)
        for dest, messages in out.items():
            self._send(dest, messages)

    def _send(self, dest: Any, messages: list[Any]) -> None:
        service = self.service
        chunk: list[bytes] = []
        size = 0
        self.stats["sent_messages"] += len(messages)
        for message in messages:
            data = encode(message)
            if chunk and size + len(data) > MAX_PAYLOAD:
                self._send_payload(service, dest, b"".join(chunk))
                chunk = []
                size = 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._send_payload(service, dest, chunk[0] if len(chunk) == 1 else b"".join(chunk))

    def _send_payload(self, service: Service, dest: Any, payload: bytes) -> None:
        try:
            sent = service.send_nowait(dest, payload)
        except ConfigurationError as exc:  # a single message beyond the service's payload limit
            _log.error("%s: cannot send %d bytes to %s: %s", self.raft.id, len(payload), dest, exc)
            sent = False
        if sent:
            self.stats["sent_payloads"] += 1
        else:
            self.stats["dropped_payloads"] += 1

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> None:
        with trio.fail_after(timeout) if timeout is not None else trio.CancelScope():
            while not predicate():
                await self.changed.wait()

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(**self.stats)


def _open_storage(data_dir: str | os.PathLike[str] | None, fsync: bool) -> Any:
    if data_dir is None:
        return MemoryStorage()
    return WriteAheadLog.open(Path(data_dir), fsync=fsync)


class Raft:
    """One member of a Raft group on a node; made by :func:`open_raft`.

    ``propose_value`` and ``read_consensus_value`` are the design's API; ``status()``,
    ``leader``, ``role`` and ``wait_for_leader`` tell where leadership is.
    """

    def __init__(self, runner: _Runner, group: str, members: tuple[NodeId, ...]) -> None:
        self._runner = runner
        self.group = group
        self.members = members
        self.id = runner.raft.id
        self.state_machine = runner.raft.sm

    # -- where leadership is ----------------------------------------------------------------

    @property
    def role(self) -> str:
        """``follower``, ``pre_candidate``, ``candidate`` or ``leader``, as of the last batch."""
        return self._runner.role

    @property
    def leader(self) -> NodeId | None:
        """The leader this member knows of (itself when leading), or None."""
        return self._runner.leader

    @property
    def term(self) -> int:
        return self._runner.term

    def status(self) -> Status:
        """The core's view right now (commit and applied indexes, voters ...)."""
        return self._runner.raft.status()

    def statistics(self) -> DriverStatistics:
        return self._runner.statistics()

    async def wait_for(self, predicate: Callable[[Raft], bool], *, timeout: float | None = 10.0) -> None:
        """Wait until ``predicate(raft)`` holds; checked whenever the role or leader changes.
        Raises ``trio.TooSlowError`` after ``timeout``."""
        await self._runner.wait_for(lambda: predicate(self), timeout)

    async def wait_for_leader(self, *, timeout: float | None = 10.0) -> NodeId:
        """The leader, once this member knows one. Raises ``trio.TooSlowError`` after ``timeout``."""
        await self._runner.wait_for(lambda: self._runner.leader is not None, timeout)
        leader = self._runner.leader
        assert leader is not None
        return leader

    # -- the design's API ---------------------------------------------------------------------

    async def propose_value(
        self, value: Any, *, wait: bool = True, timeout: float | None = 10.0, session: Session | None = None
    ) -> Committed | Queued:
        """Replicate ``value`` (a command for the state machine) through the log.

        Returns :class:`Committed` (proposal id, index, the state machine's result) once
        applied here, or with ``wait=False`` :class:`Queued` (id, index, term) as soon as
        the leader appended it. Raises :class:`~phoenix_trio.NotLeader` (with the known
        leader) on a follower, :class:`ProposalDropped` when another entry won the index,
        :class:`ProposalOutcomeUnknown`, or :class:`~phoenix_trio.RequestTimeout` after
        ``timeout`` seconds (the proposal may still commit). ``session`` is advanced to the
        proposal's index. A checkpoint; cancellation withdraws the call.
        """
        runner = self._runner
        if runner.role != LEADER:
            await trio.lowlevel.checkpoint()
            raise NotLeader(runner.leader)
        result = await runner.call(_PROPOSE, value, timeout, wait=wait)
        if session is not None:
            session.observe(result.index)
        return result  # type: ignore[no-any-return]

    def propose_nowait(self, value: Any, callback: Callable[[Any, Exception | None], None]) -> None:
        """The low-level tier: queue ``value`` and return at once; ``callback(result, error)``
        runs in the driver's loop task once it is decided (``result`` is a :class:`Committed`).

        For agents that serve many requests without a task each. Not a checkpoint. The
        callback must not block or raise. Raises ``NotLeader`` at once on a known follower.
        """
        runner = self._runner
        if runner.role != LEADER:
            raise NotLeader(runner.leader)
        runner.submit(_PROPOSE, value, _Waiter(callback))

    def read_nowait(
        self, key: Any, callback: Callable[[Any, Exception | None], None], *, consistency: str = STRONG, session_index: int = 0
    ) -> None:
        """The low-level tier of :meth:`read_consensus_value`: ``callback(ReadResult, error)``."""
        _check_consistency(consistency)
        self._runner.submit(_READ, (key, consistency, session_index), _Waiter(callback))

    async def read_consensus_value(
        self, key: Any, *, consistency: str = STRONG, session: Session | None = None, timeout: float | None = 10.0
    ) -> Any:
        """Read ``key`` (a state-machine query) with the given consistency.

        - ``strong``: linearizable (ReadIndex); leader only, else :class:`~phoenix_trio.NotLeader`;
        - ``eventual``: this member's applied state, possibly stale;
        - ``session``: this member's state once it has applied ``session``'s last index
          (read-your-writes and monotonic reads); the session advances to the index read.

        Raises :class:`~phoenix_trio.RequestTimeout` after ``timeout`` seconds.
        """
        _check_consistency(consistency)
        if consistency == STRONG and self._runner.role != LEADER:
            await trio.lowlevel.checkpoint()
            raise NotLeader(self._runner.leader)
        session_index = session.last_index if session is not None else 0
        result = await self._runner.call(_READ, (key, consistency, session_index), timeout)
        if session is not None:
            session.observe(result.index)
        return result.value

    async def change_membership(self, *, add: NodeId | None = None, remove: NodeId | None = None, timeout: float | None = 10.0) -> Committed:
        """Add or remove one voter; returns once the configuration entry is committed."""
        result = await self._runner.call(_MEMBERSHIP, (add, remove), timeout)
        return result  # type: ignore[no-any-return]

    async def transfer_leadership(self, target: NodeId) -> None:
        """Ask the leader (this member) to hand leadership to ``target``; returns once started.
        Watch :attr:`leader` (or :meth:`wait_for`) for the outcome."""
        await self._runner.call(_TRANSFER, target, None)


def _check_consistency(consistency: str) -> None:
    if consistency not in (STRONG, EVENTUAL, SESSION):
        raise ConfigurationError(f"unknown consistency {consistency!r}; use strong, eventual or session")


def _check_members(node: Node, members: Iterable[NodeId]) -> tuple[NodeId, ...]:
    ids = tuple(members)
    if len(set(ids)) != len(ids):
        raise ConfigurationError("duplicate member ids")
    if ids and node.id not in ids:
        raise ConfigurationError(f"this node ({node.id!r}) is not among the members {ids!r}; join later with members=()")
    return ids


@asynccontextmanager
async def _running(node: Node, name: str, runner_factory: Callable[[Service], _Runner], *, capacity: int) -> AsyncIterator[_Runner]:
    async with node.service(name, capacity=capacity) as service:
        runner = runner_factory(service)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner.pump)
                await nursery.start(runner.loop)
                try:
                    yield runner
                finally:
                    runner.closed = True
                    nursery.cancel_scope.cancel()
        finally:
            runner.closed = True
            for waiter in list(runner.waiters.values()):
                waiter.resolve(None, trio.ClosedResourceError("the Raft member closed"))
            runner.waiters.clear()
            storage = runner.storage
            if type(storage) is WriteAheadLog:
                storage.close()


@asynccontextmanager
async def open_raft(
    node: Node,
    *,
    group: str = "kv",
    members: Iterable[NodeId],
    data_dir: str | os.PathLike[str] | None,
    state_machine: Any = None,
    config: RaftConfig | None = None,
    fsync: bool = True,
    sync_in_thread: bool = True,
    seed: int | None = None,
    capacity: int = 4096,
) -> AsyncIterator[Raft]:
    """Run a Raft member of ``group`` on ``node`` for the duration of the block.

    ``members``: the node ids of the founding configuration, the same on every member
    (``()`` for a server that an existing group will add). ``data_dir``: the WAL
    directory; ``None`` keeps the state in memory only, which is safe only for a member
    that never restarts under the same id (tests). ``state_machine``: defaults to a
    :class:`KVStateMachine`. ``fsync=False`` skips the fsyncs (not durable).
    ``sync_in_thread``: see the module docstring. ``capacity``: payloads buffered from
    peers before the service stops reading (backpressure).

    Opening returns once the member has recovered its state and started; leaving the
    block stops it and closes the WAL.
    """
    ids = _check_members(node, members)
    state_machine = state_machine if state_machine is not None else KVStateMachine()
    if data_dir is not None and sync_in_thread:
        storage = await trio.to_thread.run_sync(_open_storage, data_dir, fsync)
    else:
        storage = _open_storage(data_dir, fsync)
    try:
        raft = RaftNode(
            node.id,
            members=ids,
            state_machine=state_machine,
            rng=random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big")),
            config=config,
            durable=storage.load(),
        )
    except BaseException:
        if type(storage) is WriteAheadLog:
            storage.close()
        raise

    def factory(service: Service) -> _Runner:
        return _Runner(node, service, raft, raft, storage, sync_in_thread=sync_in_thread, inbox_capacity=capacity)

    async with _running(node, f"raft.{group}", factory, capacity=capacity) as runner:
        yield Raft(runner, group, ids)


class TotalOrderBroadcast:
    """One member of a total-order broadcast group on a node; made by :func:`open_total_order_group`.

    ``await group.broadcast(payload)`` submits; ``async for delivery in group`` yields
    :class:`Deliver` records (and :class:`DeliveriesSkipped` after a snapshot catch-up)
    in the group's one order, the same at every member.
    """

    def __init__(self, runner: _Runner, name: str, members: tuple[NodeId, ...], max_pending: int) -> None:
        self._runner = runner
        self.name = name
        self.members = members
        self.id = runner.raft.id
        self.max_pending = max_pending
        self._core: TotalOrderGroup = runner.core

    @property
    def leader(self) -> NodeId | None:
        return self._runner.leader

    @property
    def pending(self) -> int:
        """Messages this member broadcast that it has not yet seen delivered."""
        return self._core.pending

    async def wait_for_leader(self, *, timeout: float | None = 10.0) -> NodeId:
        await self._runner.wait_for(lambda: self._runner.leader is not None, timeout)
        leader = self._runner.leader
        assert leader is not None
        return leader

    async def broadcast(self, payload: Any) -> None:
        """Submit ``payload`` (any msgpack value) for delivery to every member in the group's order.

        Returns once the member has taken it (it retries towards the leader until it sees
        it delivered). Waits while ``max_pending`` of this member's messages are undelivered.
        """
        runner = self._runner
        while self._core.pending + len(runner.commands) >= self.max_pending:
            await runner.delivery_ready.park()
        await runner.call(_BROADCAST, payload, None)

    async def receive(self) -> Deliver | DeliveriesSkipped:
        """The next delivery, in order; ``trio.EndOfChannel`` once the group is closed."""
        runner = self._runner
        while not runner.deliveries:
            if runner.closed:
                raise trio.EndOfChannel
            await runner.delivery_ready.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        item = runner.deliveries.popleft()
        runner.delivery_space.unpark_all()
        return item  # type: ignore[no-any-return]

    def __aiter__(self) -> TotalOrderBroadcast:
        return self

    async def __anext__(self) -> Deliver | DeliveriesSkipped:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@asynccontextmanager
async def open_total_order_group(
    node: Node,
    name: str,
    *,
    members: Iterable[NodeId],
    data_dir: str | os.PathLike[str] | None = None,
    config: RaftConfig | None = None,
    fsync: bool = True,
    sync_in_thread: bool = True,
    delivered_through: int = 0,
    retry_interval: float = 0.2,
    max_pending: int = 1024,
    max_deliveries: int = 65536,
    seed: int | None = None,
    capacity: int = 4096,
) -> AsyncIterator[TotalOrderBroadcast]:
    """Run a member of the total-order broadcast group ``name`` on ``node`` (the
    ``total_order`` delivery guarantee): a :class:`TotalOrderGroup` on the Raft log.

    Deliveries wait in a buffer of ``max_deliveries``; when it is full this member stops
    processing group traffic until the application takes some (block policy: a slow
    consumer slows its own member; the group goes on while a majority keeps up, and the
    member catches up later, by snapshot if it fell too far behind). ``data_dir``: the
    WAL (``None``: in memory, for members that never restart under the same id).
    ``delivered_through``: after a restart, the last index the application already
    processed (not delivered again).
    """
    ids = _check_members(node, members)
    if data_dir is not None and sync_in_thread:
        storage = await trio.to_thread.run_sync(_open_storage, data_dir, fsync)
    else:
        storage = _open_storage(data_dir, fsync)
    try:
        core = TotalOrderGroup(
            node.id,
            members=ids,
            rng=random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big")),
            config=config,
            durable=storage.load(),
            retry_interval=retry_interval,
            delivered_through=delivered_through,
        )
    except BaseException:
        if type(storage) is WriteAheadLog:
            storage.close()
        raise

    def factory(service: Service) -> _Runner:
        return _Runner(
            node,
            service,
            core,
            core.raft,
            storage,
            sync_in_thread=sync_in_thread,
            inbox_capacity=capacity,
            max_deliveries=max_deliveries,
        )

    async with _running(node, f"tob.{name}", factory, capacity=capacity) as runner:
        try:
            yield TotalOrderBroadcast(runner, name, ids, max_pending)
        finally:
            runner.closed = True
            runner.delivery_ready.unpark_all()
