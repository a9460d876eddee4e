"""Ready-made agents for the command line, the demo and multi-process tests.

- ``echo``: answers every request with the request's data.
- ``counter``: counts what it receives; a request ``"count"`` answers with the count,
  ``"reset"`` zeroes it, ``"stats"`` answers with the count and the first/last arrival.
- ``sink``: takes messages and forgets them (a consumer that never slows anyone down).
- ``driver``: generates traffic on request: ``{"send": target, "count": n, "size": bytes}``
  sends ``n`` messages and answers with the rate; ``{"request": target, "count": n}``
  makes ``n`` requests and answers with latency percentiles; ``"node-stats"`` answers
  with the node's statistics. The demo conducts the cluster through these.
- ``journal``: appends the data of every message it takes, one JSON line each, to
  ``<data_dir>/journal-<agent>.jsonl`` (an unbuffered ``os.write`` as the very first
  step, before any other work), so a test can see exactly what the application got,
  across restarts.
- ``slow``: a deliberately slow consumer (one message per millisecond, inbox of 100),
  for showing backpressure; requests are answered like ``counter``'s.
- ``causal``: drives a causal-order group member on this node for tests
  (``phoenix_trio._causal_group.serve_causal_agent``).
- ``ratelimit``: drives a distributed token bucket on this node for tests
  (``phoenix_trio._ratelimit_node.serve_rate_limit_agent``).
- ``subscriber``: holds pub-sub subscriptions on request and counts what they get.
  ``{"subscribe": pattern, "delivery": ..., "backpressure": ..., "capacity": n, "delay": s}``
  subscribes (``delay``: seconds spent per message, a slow consumer) and answers once
  the cluster knows; ``"stats"`` answers with each subscription's statistics, message
  count, publishers seen and out-of-order arrivals (events carrying ``from`` and
  ``seq``); ``{"wait": n}`` answers once every subscription (or, with ``"pattern"``,
  those to that pattern) has had ``n`` publications consumed or dropped, with their
  statistics; ``"unsubscribe"`` ends them all.
- ``stage``: a pipeline stage: answers each request with its data, after appending
  its own id to ``data["path"]`` when the data is a dict with a ``path`` list.

The driver also publishes on request: ``{"publish": topic, "count": n, "size": bytes}``
publishes ``n`` events ``{"from": node, "seq": i, "pad": bytes}`` and answers with the
time it took; ``{"sync": counter}`` asks a counter for its count after the driver's own
sends to it (so they have all arrived).

Each runs as a task: ``await run_agent(node, kind, agent_id)`` until cancelled.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs
import trio

from ._node import Node
from ._pipeline import serve_stage
from ._pubsub import Subscription

KINDS = ("echo", "counter", "sink", "slow", "driver", "journal", "causal", "ratelimit", "subscriber", "stage")
CAPACITY = {"slow": 100}


async def run_agent(
    node: Node, kind: str, agent_id: str, *, group: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown agent kind {kind!r}; choose from {', '.join(KINDS)}")
    async with node.agent(agent_id, capacity=CAPACITY.get(kind, 65536), group=group) as agent:
        task_status.started()
        if kind == "echo":
            async for message in agent:
                if message.is_request:
                    await message.reply(message.data)
        elif kind in ("counter", "slow"):
            count = 0
            first = last = None
            async for message in agent:
                if message.is_request:
                    if message.data == "count":
                        await message.reply(count)
                    elif message.data == "reset":
                        count, first, last = 0, None, None
                        await message.reply(0)
                    elif message.data == "stats":
                        await message.reply({"count": count, "first": first, "last": last})
                    else:
                        await message.reply({"error": f"unknown command {message.data!r}"})
                    continue
                count += 1
                if kind == "slow":
                    await trio.sleep(0.001)  # the point of this agent: it is slow
                last = time.time()
                if first is None:
                    first = last
        elif kind == "journal":
            directory = node.config.data_dir or "."
            fd = os.open(os.path.join(directory, f"journal-{agent_id}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                async for message in agent:
                    os.write(fd, (json.dumps(message.data) + "\n").encode())
                    if message.is_request:
                        await message.reply("ok")
            finally:
                os.close(fd)
        elif kind == "causal":
            from ._causal_group import serve_causal_agent

            await serve_causal_agent(agent)
        elif kind == "ratelimit":
            from ._ratelimit_node import serve_rate_limit_agent

            await serve_rate_limit_agent(agent)
        elif kind == "driver":
            async for message in agent:
                if message.is_request:
                    await message.reply(await _drive(agent, message.data))
        elif kind == "subscriber":
            await _subscriber(agent)
        elif kind == "stage":
            await serve_stage(agent, lambda data: _stage(agent.id, data))
        else:
            async for _ in agent:
                pass


async def _drive(agent: Any, order: Any) -> Any:
    """Carry out one traffic order for the ``driver`` agent."""
    node = agent.node
    if order == "node-stats":
        return {**node.statistics(), "pubsub": attrs.asdict(node.pubsub.statistics())}
    if not isinstance(order, dict):
        return {"error": f"unknown order {order!r}"}
    count = int(order.get("count", 0))
    if "send" in order:
        payload = b"x" * int(order.get("size", 100))
        start = time.perf_counter()
        for _ in range(count):
            await agent.send(order["send"], payload)  # at-least-once, the default
        await node.flush_deliveries(timeout=120)  # done when every message was handled
        return {"sent": count, "seconds": time.perf_counter() - start}
    if "sync" in order:
        # a request after this driver's own sends on the same connection: when it is
        # answered, everything this driver sent to the target has arrived
        return (await agent.request(order["sync"], "count", timeout=30)).data
    if "publish" in order:
        pad = b"x" * int(order.get("size", 100))
        fanout = str(order.get("fanout", "immediate"))
        start = time.perf_counter()
        for i in range(count):
            await node.publish(order["publish"], {"from": node.id, "seq": i, "pad": pad}, fanout=fanout, source=agent.uri)
        return {"published": count, "seconds": time.perf_counter() - start}
    if "request" in order:
        latencies = []
        for i in range(count):
            t0 = time.perf_counter()
            reply = await agent.request(order["request"], i, timeout=10)
            latencies.append(time.perf_counter() - t0)
            if reply.data != i:
                return {"error": f"wrong reply {reply.data!r} for {i}"}
        latencies.sort()
        return {
            "requests": count,
            "p50_us": latencies[len(latencies) // 2] * 1e6,
            "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
            "seconds": sum(latencies),
        }
    return {"error": f"unknown order {order!r}"}


def _stage(agent_id: str, data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("path"), list):
        return {**data, "path": [*data["path"], agent_id]}
    return data


class _Counted:
    """One subscription of a ``subscriber`` agent, consumed and counted by its own task."""

    def __init__(self, subscription: Subscription, delay: float) -> None:
        self.subscription = subscription
        self.delay = delay
        self.count = 0
        self.out_of_order = 0
        self.last: dict[str, int] = {}
        self.changed = trio.Event()

    async def run(self) -> None:
        async for message in self.subscription:
            self.count += 1
            data = message.data
            if isinstance(data, dict) and "from" in data and "seq" in data:
                source, seq = str(data["from"]), data["seq"]
                if seq <= self.last.get(source, -1):
                    self.out_of_order += 1
                self.last[source] = seq
            if self.delay:
                await trio.sleep(self.delay)  # the point of a slow consumer
            self.changed.set()
            self.changed = trio.Event()

    def report(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self.subscription.statistics()),
            "count": self.count,
            "out_of_order": self.out_of_order,
            "publishers": sorted(self.last),
        }


async def _subscriber(agent: Any) -> None:
    node = agent.node
    subscriptions: list[_Counted] = []
    async with trio.open_nursery() as nursery:
        async for message in agent:
            if not message.is_request:
                continue
            order = message.data
            if isinstance(order, dict) and "subscribe" in order:
                try:
                    subscription = node.pubsub.open_subscription(
                        str(order["subscribe"]),
                        delivery=str(order.get("delivery", "at_most_once")),
                        backpressure=order.get("backpressure"),
                        capacity=int(order.get("capacity", 1024)),
                        subscriber=agent.id,
                    )
                except ValueError as exc:
                    await message.reply({"error": str(exc)})
                    continue
                counted = _Counted(subscription, float(order.get("delay", 0.0)))
                subscriptions.append(counted)
                nursery.start_soon(counted.run)
                await subscription.wait_propagated(float(order.get("timeout", 10.0)))
                await message.reply({"id": subscription.id})
            elif order == "stats":
                await message.reply([c.report() for c in subscriptions])
            elif isinstance(order, dict) and "wait" in order:
                pattern = order.get("pattern")
                waited = [c for c in subscriptions if pattern is None or c.subscription.pattern == pattern]
                nursery.start_soon(_answer_when_received, message, waited, int(order["wait"]), float(order.get("timeout", 60.0)))
            elif order == "unsubscribe":
                for counted in subscriptions:
                    counted.subscription.unsubscribe()
                await message.reply(len(subscriptions))
            else:
                await message.reply({"error": f"unknown order {order!r}"})
        nursery.cancel_scope.cancel()


async def _answer_when_received(message: Any, subscriptions: list[_Counted], target: int, timeout: float) -> None:
    """Answer once these subscriptions have had ``target`` publications consumed or dropped."""
    with trio.move_on_after(timeout):
        for counted in subscriptions:
            while counted.count + counted.subscription.dropped < target:
                await counted.changed.wait()
    await message.reply([c.report() for c in subscriptions])
