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

Each runs as a task: ``await run_agent(node, kind, agent_id)`` until cancelled.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import trio

from ._node import Node

KINDS = ("echo", "counter", "sink", "slow", "driver", "journal", "causal", "ratelimit")
CAPACITY = {"slow": 100}


async def run_agent(node: Node, kind: str, agent_id: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown agent kind {kind!r}; choose from {', '.join(KINDS)}")
    async with node.agent(agent_id, capacity=CAPACITY.get(kind, 65536)) as agent:
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
        else:
            async for _ in agent:
                pass


async def _drive(agent: Any, order: Any) -> Any:
    """Carry out one traffic order for the ``driver`` agent."""
    node = agent.node
    if order == "node-stats":
        return node.statistics()
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
