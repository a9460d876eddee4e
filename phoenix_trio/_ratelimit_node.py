"""A rate limiter on a node: local buckets plus distributed ones shared by the members.

``async with open_rate_limiter(node, members=[...]) as limiter`` gives a
:class:`~phoenix_trio._ratelimit.RateLimiter` whose ``create_bucket(..., distributed=True)``
buckets are shared by the member nodes through leases (the scheme is in
:mod:`phoenix_trio._lease`). It runs the :class:`~phoenix_trio._lease.LeaseProtocol` of
this node on the node service ``ratelimit.<name>``: one task takes lease messages and
timers, a second follows membership (the live members decide which node owns which
bucket). Every member node must run the limiter (same ``name`` and ``members``), and
create each distributed bucket with the same capacity and rate (the owner's rule).

The fast path does not involve these tasks: ``acquire_tokens`` on a distributed bucket
runs the member's local C bucket on its lease. When a bucket runs short it sends a
request at once from the caller's task (a non-blocking ``send_nowait``; a request that
cannot be queued is retried by the protocol's timer).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from ._errors import ConfigurationError, DecodeError
from ._lease import LeasedBucket, LeaseProtocol, LeaseStatistics, decode, encode
from ._ratelimit import RateLimiter
from ._service import Service
from .effects import Send, SetTimer

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger(__name__)


class _Runner:
    def __init__(self, node: Node, service: Service, members: frozenset[str], ttl: float) -> None:
        self.node = node
        self.service = service
        self.members = members
        self.protocol = LeaseProtocol(node.id, members=members, ttl=ttl, on_effects=self.apply)
        self.timers: dict[Any, float] = {}
        self.scope: trio.CancelScope | None = None
        self.send_drops = 0
        self.decode_errors = 0

    def apply(self, effects: Iterable[Any]) -> None:
        for effect in effects:
            if type(effect) is Send:
                assert isinstance(effect.dest, str)  # the lease protocol sends only to members
                if not self.service.send_nowait(effect.dest, encode(effect.message)):
                    self.send_drops += 1  # the protocol asks again after its timeout
            elif type(effect) is SetTimer:
                self.timers[effect.key] = effect.deadline
                if self.scope is not None and effect.deadline < self.scope.deadline:
                    self.scope.deadline = effect.deadline  # wake the loop earlier

    def alive(self) -> set[str]:
        return (set(self.node.alive_members()) | {self.node.id}) & self.members

    async def loop(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        protocol = self.protocol
        self.apply(protocol.set_alive(self.alive(), trio.current_time()))
        task_status.started()
        while True:
            with trio.CancelScope(deadline=min(self.timers.values(), default=float("inf"))) as scope:
                self.scope = scope
                sender, payload = await self.service.receive()
                try:
                    messages = decode(payload)
                except DecodeError as exc:
                    self.decode_errors += 1
                    log.warning("rate limiter %s: dropped a bad payload from %s: %s", self.service.name, sender, exc)
                    messages = []
                now = trio.current_time()
                for message in messages:
                    self.apply(protocol.receive(sender, message, now))
            self.scope = None
            now = trio.current_time()
            for key in [k for k, deadline in self.timers.items() if deadline <= now]:
                del self.timers[key]
                self.apply(protocol.timer(key, now))

    async def watch(self) -> None:
        async with self.node.watch_membership() as events:
            async for _ in events:
                self.apply(self.protocol.set_alive(self.alive(), trio.current_time()))


class _Distributed:
    """What :class:`RateLimiter` calls to make and drop distributed buckets."""

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner

    def add_bucket(self, bucket_id: str, capacity: float, rate: float, now: float) -> LeasedBucket:
        bucket, effects = self.runner.protocol.add_bucket(bucket_id, capacity, rate, now)
        self.runner.apply(effects)
        return bucket

    def remove_bucket(self, bucket_id: str, now: float) -> None:
        self.runner.apply(self.runner.protocol.remove_bucket(bucket_id, now))


class NodeRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose distributed buckets are shared by the member nodes."""

    def __init__(self, runner: _Runner, name: str) -> None:
        super().__init__()
        self._runner = runner
        self._distributed = _Distributed(runner)
        self.name = name
        self.members = tuple(sorted(runner.members))

    def owner(self, bucket_id: str) -> str | None:
        """The member that owns ``bucket_id`` in this node's view of the membership."""
        return self._runner.protocol.owner(bucket_id)

    def lease(self, bucket_id: str) -> LeasedBucket:
        """This member's lease state of a distributed bucket (rate, capacity, expiry)."""
        return self._runner.protocol.bucket(bucket_id)

    def lease_statistics(self) -> LeaseStatistics:
        return self._runner.protocol.statistics()


@asynccontextmanager
async def open_rate_limiter(
    node: Node, *, members: Iterable[str], name: str = "ratelimit", lease_ttl: float = 1.0, capacity: int = 1024
) -> AsyncIterator[NodeRateLimiter]:
    """Run this node's part of the rate limiter ``name`` for the block.

    ``members``: the node ids sharing distributed buckets, the same on every member (this
    node among them). ``lease_ttl``: how long a lease is valid; members renew every third
    of it, a new owner waits up to that long before granting (see :mod:`phoenix_trio._lease`).
    ``capacity``: lease messages queued from the service. Leaving the block releases this
    node's leases (the owners reuse them at once) and stops the tasks.
    """
    ids = frozenset(members)
    if node.id not in ids:
        raise ConfigurationError(f"this node ({node.id!r}) is not among the members {sorted(ids)!r}")
    async with node.service(f"ratelimit.{name}", capacity=capacity) as service:
        runner = _Runner(node, service, ids, lease_ttl)
        limiter = NodeRateLimiter(runner, name)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.loop)
            nursery.start_soon(runner.watch)
            try:
                yield limiter
            finally:
                runner.apply(runner.protocol.close(trio.current_time()))
                nursery.cancel_scope.cancel()


async def serve_rate_limit_agent(agent: Any) -> None:
    """The ``ratelimit`` built-in agent: lets a test drive a distributed bucket in a process.

    Requests: ``{"open": {"members": [...], "bucket": id, "capacity": c, "rate": r,
    "ttl": s}}`` opens the node's limiter and creates the distributed bucket (answers
    ``{"ok": true, "owner": ...}``); ``{"run": {"bucket": id, "seconds": s}}`` takes
    tokens one at a time with ``await limiter.acquire`` for ``s`` seconds and answers
    ``{"times": [wall-clock time of each grant]}``.
    """
    import time

    limiters: dict[str, NodeRateLimiter] = {}

    async def keep_open(spec: dict[str, Any], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_rate_limiter(agent.node, members=spec["members"], lease_ttl=float(spec.get("ttl", 1.0))) as limiter:
            limiter.create_bucket(spec["bucket"], float(spec["capacity"]), float(spec["rate"]), distributed=True)
            task_status.started(limiter)
            await trio.sleep_forever()

    async def handle(message: Any) -> None:
        order = message.data
        try:
            if isinstance(order, dict) and "open" in order:
                spec = order["open"]
                limiters[spec["bucket"]] = await nursery.start(keep_open, spec)
                await message.reply({"ok": True, "owner": limiters[spec["bucket"]].owner(spec["bucket"])})
            elif isinstance(order, dict) and "run" in order:
                spec = order["run"]
                limiter = limiters[spec["bucket"]]
                times: list[float] = []
                deadline = trio.current_time() + float(spec["seconds"])
                with trio.move_on_at(deadline):
                    while True:
                        await limiter.acquire(spec["bucket"], 1)
                        times.append(time.time())
                await message.reply({"times": times, "stats": str(limiter.lease_statistics())})
            else:
                await message.reply({"error": f"unknown order {order!r}"})
        except Exception as exc:  # answer the test instead of dying
            await message.reply({"error": repr(exc)})

    async with trio.open_nursery() as nursery:
        async for message in agent:
            if message.is_request:
                nursery.start_soon(handle, message)
