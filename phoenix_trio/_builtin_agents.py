"""Ready-made agents for the command line, the demo and multi-process tests.

- ``echo``: answers every request with the request's data.
- ``counter``: counts what it receives; a request ``"count"`` answers with the count,
  ``"reset"`` zeroes it, ``"stats"`` answers with the count and the first/last arrival.
- ``sink``: takes messages and forgets them (a consumer that never slows anyone down).
- ``slow``: a deliberately slow consumer (one message per millisecond, inbox of 100),
  for showing backpressure; requests are answered like ``counter``'s.

Each runs as a task: ``await run_agent(node, kind, agent_id)`` until cancelled.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from ._node import Node

KINDS = ("echo", "counter", "sink", "slow")
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
        else:
            async for _ in agent:
                pass
