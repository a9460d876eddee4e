"""Agents that put a Raft member and a total-order group on the network, and their client.

``serve_kv(raft, agent)`` answers requests to a member's KV store (the ``kv`` agent of
``phoenix-trio raft``); :class:`KVClient` is the other side, for tests, benchmarks and
tools: it finds the leader by following ``not_leader`` hints. ``serve_total_order``
does the same for a total-order group. Requests and replies are plain dicts:

=======================================================  ==============================================
request                                                  reply (``ok`` false: ``error``, maybe ``leader``)
=======================================================  ==============================================
``{"op": "put", "key": k, "value": v}``                  ``{"ok": true, "index": i, "result": previous}``
``{"op": "cas", "key": k, "expected": e, "new": n}``     ``{"ok": true, "index": i, "result": swapped}``
``{"op": "delete", "key": k}``                           ``{"ok": true, "index": i, "result": previous}``
``{"op": "get", "key": k, "consistency": c,``            ``{"ok": true, "index": i, "value": v}``
``"session_index": n}``
``{"op": "status"}``                                     the member's status
``{"op": "load", "count": n, "inflight": k,``            proposals made inside the member (benchmarks):
``"size": bytes}``                                       rate and latency percentiles
=======================================================  ==============================================

Errors: ``not_leader`` (with ``leader``: nothing was proposed, retry there), ``dropped``
(definitely not committed), ``unknown`` (may or may not have committed), ``timeout``,
``bad_request``. Proposals do not take a task each: the agent hands them to the member
with ``propose_nowait`` and a second task sends the replies as the results come.
No leader forwarding: a follower answers ``not_leader`` and the client goes to the leader.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import trio

from .._errors import NodeUnreachable, NotLeader, RequestTimeout
from ._errors import ProposalDropped, ProposalOutcomeUnknown

_log = logging.getLogger(__name__)


def _error_reply(error: BaseException) -> dict[str, Any]:
    if isinstance(error, NotLeader):
        return {"ok": False, "error": "not_leader", "leader": error.leader}
    if isinstance(error, ProposalDropped):
        return {"ok": False, "error": "dropped", "detail": str(error)}
    if isinstance(error, ProposalOutcomeUnknown):
        return {"ok": False, "error": "unknown", "detail": str(error)}
    if isinstance(error, RequestTimeout):
        return {"ok": False, "error": "timeout", "detail": str(error)}
    return {"ok": False, "error": "unknown", "detail": f"{type(error).__name__}: {error}"}


def _command(request: Any) -> list[Any] | None:
    if not isinstance(request, dict):
        return None
    op = request.get("op")
    if op == "put" and "key" in request:
        return ["put", request["key"], request.get("value")]
    if op == "cas" and "key" in request:
        return ["cas", request["key"], request.get("expected"), request.get("new")]
    if op == "delete" and "key" in request:
        return ["delete", request["key"]]
    return None


async def serve_kv(raft: Any, agent: Any, *, timeout: float = 10.0) -> None:
    """Answer KV requests arriving at ``agent`` from ``raft`` (see the module docstring), until cancelled."""
    replies: deque[tuple[Any, Any]] = deque()
    lot = trio.lowlevel.ParkingLot()
    outstanding: dict[int, tuple[Any, float]] = {}
    tokens = iter(range(1, 1 << 62))

    def respond(message: Any, data: Any) -> None:
        replies.append((message, data))
        if len(replies) == 1:
            lot.unpark_all()

    def on_proposal(message: Any, token: int) -> Any:
        def done(result: Any, error: Exception | None) -> None:
            if outstanding.pop(token, None) is None:
                return  # already answered with a timeout
            if error is not None:
                respond(message, _error_reply(error))
            else:
                respond(message, {"ok": True, "index": result.index, "result": _plain(result.result)})

        return done

    def on_read(message: Any, token: int) -> Any:
        def done(result: Any, error: Exception | None) -> None:
            if outstanding.pop(token, None) is None:
                return
            if error is not None:
                respond(message, _error_reply(error))
            else:
                respond(message, {"ok": True, "index": result.index, "value": result.value})

        return done

    async def send_replies() -> None:
        while True:
            while not replies:
                await lot.park()
            message, data = replies.popleft()
            try:
                await message.reply(data)
            except NodeUnreachable:
                pass  # the client's node is gone

    async def expire() -> None:
        # Give up on calls the member never answered (a deposed leader's proposals).
        while True:
            await trio.sleep(timeout / 4)
            now = trio.current_time()
            for token, (message, started) in list(outstanding.items()):
                if now - started > timeout:
                    del outstanding[token]
                    respond(message, {"ok": False, "error": "timeout", "detail": f"no outcome within {timeout:g} s"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_replies)
        nursery.start_soon(expire)
        async for message in agent:
            if not message.is_request:
                continue
            request = message.data
            command = _command(request)
            op = request.get("op") if isinstance(request, dict) else None
            try:
                if command is not None:
                    token = next(tokens)
                    outstanding[token] = (message, trio.current_time())
                    try:
                        raft.propose_nowait(command, on_proposal(message, token))
                    except BaseException:
                        outstanding.pop(token, None)
                        raise
                elif op == "get":
                    token = next(tokens)
                    outstanding[token] = (message, trio.current_time())
                    try:
                        raft.read_nowait(
                            request.get("key"),
                            on_read(message, token),
                            consistency=request.get("consistency", "strong"),
                            session_index=int(request.get("session_index", 0)),
                        )
                    except BaseException:
                        outstanding.pop(token, None)
                        raise
                elif op == "status":
                    status = raft.status()
                    respond(
                        message,
                        {
                            "ok": True,
                            "id": status.id,
                            "role": status.role,
                            "term": status.term,
                            "leader": status.leader,
                            "commit_index": status.commit_index,
                            "last_applied": status.last_applied,
                            "last_index": status.last_index,
                        },
                    )
                elif op == "load":
                    nursery.start_soon(_answer_load, raft, message, request)
                else:
                    respond(message, {"ok": False, "error": "bad_request", "detail": f"unknown request {request!r:.80}"})
            except NotLeader as exc:
                respond(message, _error_reply(exc))
            except Exception as exc:  # bad arguments (consistency ...) are the client's problem
                respond(message, {"ok": False, "error": "bad_request", "detail": f"{type(exc).__name__}: {exc}"})


def _plain(value: Any) -> Any:
    if isinstance(value, Exception):
        return {"error": type(value).__name__, "detail": str(value)}
    return value


async def _answer_load(raft: Any, message: Any, request: dict[str, Any]) -> None:
    try:
        result = await local_load(
            raft, count=int(request.get("count", 10000)), inflight=int(request.get("inflight", 64)), size=int(request.get("size", 256))
        )
    except NotLeader as exc:
        result = _error_reply(exc)
    await message.reply(result)


async def local_load(raft: Any, *, count: int, inflight: int, size: int) -> dict[str, Any]:
    """Make ``count`` puts of ``size``-byte values inside this member, ``inflight`` at a time
    (the way PySyncObj's benchmark drives its members); returns rate and latency percentiles."""
    value = b"x" * size
    latencies: list[float] = []
    done = trio.Event()
    state = {"started": 0, "finished": 0, "failed": 0}
    start = time.perf_counter()

    def launch() -> None:
        i = state["started"]
        state["started"] += 1
        t0 = time.perf_counter()

        def finished(result: Any, error: Exception | None) -> None:
            latencies.append(time.perf_counter() - t0)
            state["finished"] += 1
            if error is not None:
                state["failed"] += 1
            if state["started"] < count:
                launch()
            elif state["finished"] == count:
                done.set()

        raft.propose_nowait(["put", f"load{i % 1024}", value], finished)

    for _ in range(min(inflight, count)):
        launch()
    await done.wait()
    seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "ok": True,
        "count": count,
        "failed": state["failed"],
        "seconds": seconds,
        "ops_per_s": count / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    }


class KVError(Exception):
    """A KV request failed; ``kind`` is the agent's error (``not_leader``, ``dropped``,
    ``unknown``, ``timeout``, ``bad_request``). ``definite`` says the operation did not happen."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail

    @property
    def definite(self) -> bool:
        return self.kind in ("not_leader", "dropped", "bad_request")


class KVClient:
    """Talks to the ``kv`` agents of a Raft group from any node of the cluster.

    ``await client.put(key, value)`` returns the previous value; ``get``, ``cas`` and
    ``delete`` likewise. It sends to the member it believes leads (agent
    ``<group>.<member>``), follows ``not_leader`` hints and tries the members in turn
    while no leader is known, for up to ``timeout`` seconds. Raises :class:`KVError`:
    ``definite`` errors mean the operation did not happen; others (``timeout``,
    ``unknown``, an unreachable member) leave the outcome unknown. ``last_index`` is the
    highest log index this client has seen (use it for ``session`` reads).
    """

    def __init__(self, node: Any, members: list[str], *, group: str = "kv", timeout: float = 5.0, request_timeout: float = 2.0) -> None:
        self.node = node
        self.members = list(members)
        self.group = group
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.leader: str | None = None
        self.last_index = 0
        self._turn = 0

    def agent_of(self, member: str) -> str:
        return f"{self.group}.{member}"

    async def call(self, request: dict[str, Any], *, member: str | None = None) -> dict[str, Any]:
        """Send ``request`` (to ``member``, or the leader) and return the ``ok`` reply."""
        deadline = trio.current_time() + self.timeout
        while True:
            target = member or self.leader or self.members[self._turn % len(self.members)]
            try:
                reply = await self.node.request(self.agent_of(target), request, timeout=self.request_timeout)
                data = reply.data
            except RequestTimeout as exc:
                self.leader = None
                raise KVError("timeout", str(exc)) from exc
            except NodeUnreachable as exc:
                self.leader = None
                self._turn += 1
                if exc.reason != "not connected" or member is not None or trio.current_time() > deadline:
                    raise KVError("unknown" if exc.reason != "not connected" else "not_leader", str(exc)) from exc
                await trio.sleep(0.02)  # nothing was sent: try the next member
                continue
            except Exception as exc:  # AgentNotFound, CircuitOpen: nothing was sent to a member
                if member is not None or trio.current_time() > deadline:
                    raise KVError("not_leader", f"{type(exc).__name__}: {exc}") from exc
                self.leader = None
                self._turn += 1
                await trio.sleep(0.05)  # wait for the directory to learn of the agents
                continue
            if data.get("ok"):
                if member is None:
                    self.leader = target
                index = data.get("index", 0)
                if index > self.last_index:
                    self.last_index = index
                return data  # type: ignore[no-any-return]
            error = data.get("error", "unknown")
            if error == "not_leader" and member is None and trio.current_time() < deadline:
                hint = data.get("leader")
                if hint is not None and hint != target:
                    self.leader = hint
                else:
                    self.leader = None
                    self._turn += 1
                    await trio.sleep(0.02)  # an election is going on: give it a moment
                continue
            raise KVError(error, str(data.get("detail", "")))

    async def put(self, key: Any, value: Any) -> Any:
        return (await self.call({"op": "put", "key": key, "value": value}))["result"]

    async def cas(self, key: Any, expected: Any, new: Any) -> bool:
        return bool((await self.call({"op": "cas", "key": key, "expected": expected, "new": new}))["result"])

    async def delete(self, key: Any) -> Any:
        return (await self.call({"op": "delete", "key": key}))["result"]

    async def get(self, key: Any, *, consistency: str = "strong", member: str | None = None) -> Any:
        request = {"op": "get", "key": key, "consistency": consistency, "session_index": self.last_index}
        return (await self.call(request, member=member))["value"]

    async def status(self, member: str) -> dict[str, Any]:
        return await self.call({"op": "status"}, member=member)


async def serve_total_order(group: Any, agent: Any, *, keep: int = 100_000) -> None:
    """A total-order group member on the network: requests ``{"op": "broadcast", "payloads": [...]}``
    (answered once all are taken) and ``{"op": "delivered", "since": n, "wait_for": m}`` (the
    deliveries seen here from position ``n`` on, as ``[index, sender, seq, payload]``, once at
    least ``m`` have been seen; up to ``keep`` are kept)."""
    delivered: list[list[Any]] = []
    grew = trio.lowlevel.ParkingLot()

    async def collect() -> None:
        async for delivery in group:
            if len(delivered) < keep:
                if hasattr(delivery, "payload"):
                    delivered.append([delivery.index, delivery.sender, delivery.seq, delivery.payload])
                else:
                    delivered.append([delivery.index, None, None, "skipped"])
                grew.unpark_all()

    async def answer_delivered(message: Any, since: int, wait_for: int) -> None:
        while len(delivered) < min(wait_for, keep):
            await grew.park()
        await message.reply({"ok": True, "deliveries": delivered[since:], "leader": group.leader})

    async def broadcast(message: Any, payloads: list[Any]) -> None:
        for payload in payloads:
            await group.broadcast(payload)
        await message.reply({"ok": True, "count": len(payloads)})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        async for message in agent:
            if not message.is_request:
                continue
            request = message.data if isinstance(message.data, dict) else {}
            if request.get("op") == "broadcast":
                nursery.start_soon(broadcast, message, list(request.get("payloads", [])))
            elif request.get("op") == "delivered":
                nursery.start_soon(answer_delivered, message, int(request.get("since", 0)), int(request.get("wait_for", 0)))
            else:
                await message.reply({"ok": False, "error": "bad_request"})
