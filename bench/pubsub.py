"""Publish-subscribe and pipelines between node processes, against pyzmq PUB/SUB.

    python bench/pubsub.py --quick

Every party is its own process on loopback. Ends with ``RESULT {json}``:

- ``pubsub_msgs_per_s``: 100-byte events through ``await node.publish(topic, event)``
  (one call per event) from one publisher process to one subscription in another
  process, counted from the first publish until the subscriber has taken the last one
  from its subscription. The subscription uses ``backpressure="block"`` (credit-based
  flow control: nothing can be dropped) and the run checks that nothing was.
  ``pubsub_vs_zmq``: the ratio to pyzmq PUB/SUB (tcp, HWM unlimited, one ``send`` per
  event) measured the same way in the same run. ``pubsub_drop_oldest_msgs_per_s``: the
  same with the default ``drop_oldest`` policy and a queue large enough to drop nothing.
- ``fanout10_msgs_per_s``: publications per second from one publisher to 10
  subscriptions spread over 2 processes (5 each; every publication crosses the network
  once per process); ``fanout10_deliveries_per_s`` is ten times that.
- ``pipeline3_msgs_per_s``: messages per second through a pipeline of 3 stages, each an
  agent in its own process, coordinated from the benchmark's process (window 1024).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, report  # noqa: E402

PAYLOAD = b"x" * 100
ROUNDS = 3


# -- phoenix_trio: one publisher, one subscriber --------------------------------------------


def _subscriber(address_queue: mp.Queue, count: int, subscriptions: int, name: str, options: dict[str, Any], seed: Any) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node(name, listen="127.0.0.1:0", seeds=[seed] if seed else []) as node:
            address_queue.put(node.address)
            subs = [node.pubsub.open_subscription("bench.data", **options) for _ in range(subscriptions)]
            done = trio.Event()
            finished = 0

            async def consume(sub: px.Subscription) -> None:
                nonlocal finished
                while True:
                    received = 0
                    async for _ in sub:
                        received += 1
                        if received == count:
                            break
                    finished += 1
                    if finished == len(subs):
                        finished = 0
                        dropped = sum(s.statistics().dropped for s in subs)
                        await node.publish("bench.done", {"node": name, "dropped": dropped})

            async with trio.open_nursery() as nursery:
                for sub in subs:
                    nursery.start_soon(consume, sub)
                await done.wait()

    trio.run(main)


def _publisher(addresses: list[Any], count: int, nodes: int, out: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("publisher", seeds=addresses) as node:
            await node.pubsub.wait_for_subscribers("bench.data", nodes, timeout=30)
            async with node.subscribe("bench.done", capacity=64) as done:
                best = 0.0
                dropped = 0
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    for _ in range(count):
                        await node.publish("bench.data", PAYLOAD)
                    for _ in range(nodes):
                        dropped += (await done.receive()).data["dropped"]
                    best = max(best, count / (time.perf_counter() - start))
                out.put((best, dropped))

    trio.run(main)


def run_phoenix(count: int, processes: int, per_process: int, options: dict[str, Any]) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    subscribers = []
    seed = None
    for i in range(processes):
        proc = ctx.Process(target=_subscriber, args=(addresses, count, per_process, f"sub{i}", options, seed), daemon=True)
        proc.start()
        subscribers.append(proc)
        address = addresses.get(timeout=30)
        seed = seed or address
    publisher = ctx.Process(target=_publisher, args=([seed], count, processes, results))
    publisher.start()
    try:
        return results.get(timeout=600)
    finally:
        publisher.join(10)
        for proc in subscribers:
            proc.terminate()
            proc.join(10)


# -- phoenix_trio: a pipeline of three stage processes ------------------------------------------


def _stage(address_queue: mp.Queue, name: str, seed: Any) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node(name, listen="127.0.0.1:0", seeds=[seed] if seed else []) as node:
            async with node.agent(f"stage-{name}", capacity=65536) as agent:
                address_queue.put(node.address)
                async for message in agent:
                    await message.reply(message.data)

    trio.run(main)


def run_pipeline(count: int) -> float:
    import trio

    import phoenix_trio as px

    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    stages = []
    seed = None
    for i in range(3):
        proc = ctx.Process(target=_stage, args=(addresses, f"s{i}", seed), daemon=True)
        proc.start()
        stages.append(proc)
        address = addresses.get(timeout=30)
        seed = seed or address

    async def main() -> float:
        async with px.open_node("coordinator", seeds=[seed]) as node:
            for i in range(3):
                await node.wait_for_agent(f"stage-s{i}", timeout=30)
            pipeline = await node.create_pipeline([f"stage-s{i}" for i in range(3)], backpressure="block", monitoring=False)
            best = 0.0
            for _ in range(ROUNDS):
                start = time.perf_counter()

                async def feed() -> None:
                    for _ in range(count):
                        await pipeline.send(PAYLOAD)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(feed)
                    for _ in range(count):
                        await pipeline.receive()
                best = max(best, count / (time.perf_counter() - start))
            await pipeline.aclose()
            return best

    try:
        return trio.run(main)
    finally:
        for proc in stages:
            proc.terminate()
            proc.join(10)


# -- pyzmq anchor ---------------------------------------------------------------------------------


def _zmq_sub(port_queue: mp.Queue, pub_port: int, count: int) -> None:
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"bench.")
    sub.connect(f"tcp://127.0.0.1:{pub_port}")
    done = ctx.socket(zmq.PUSH)
    port_queue.put(done.bind_to_random_port("tcp://127.0.0.1"))
    while sub.recv() != b"bench.probe":  # slow-joiner: wait until the subscription is active
        pass
    done.send(b"ready")
    for _ in range(ROUNDS):
        received = 0
        while received < count:
            if sub.recv() != b"bench.probe":
                received += 1
        done.send(b"done")
    time.sleep(0.5)


def run_zmq(count: int) -> float:
    import zmq

    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    subscriber = ctx.Process(target=_zmq_sub, args=(ports, pub_port, count), daemon=True)
    subscriber.start()
    done = zctx.socket(zmq.PULL)
    done.connect(f"tcp://127.0.0.1:{ports.get(timeout=30)}")
    while True:
        pub.send(b"bench.probe")
        if done.poll(10):
            done.recv()
            break
    message = b"bench.data " + PAYLOAD[: len(PAYLOAD) - len(b"bench.data ")]  # 100 bytes on the wire
    best = 0.0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            pub.send(message)
        done.recv()
        best = max(best, count / (time.perf_counter() - start))
    subscriber.join(10)
    zctx.destroy(linger=0)
    return best


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 100_000 if args.quick else 500_000
    ours, dropped = run_phoenix(count, 1, 1, {"backpressure": "block", "capacity": 4096})
    zmq_rate = run_zmq(count)
    ours_oldest, dropped_oldest = run_phoenix(count, 1, 1, {"capacity": count + 1})
    fanout, dropped_fanout = run_phoenix(count // 5, 2, 5, {"backpressure": "block", "capacity": 4096})
    pipeline = run_pipeline(count // 5)
    if dropped or dropped_oldest or dropped_fanout:
        raise SystemExit(f"drops where there must be none: {dropped}, {dropped_oldest}, {dropped_fanout}")
    result = {
        "pubsub_msgs_per_s": round(ours),
        "zmq_pub_sub_msgs_per_s": round(zmq_rate),
        "pubsub_vs_zmq": round(ours / zmq_rate, 3),
        "pubsub_drop_oldest_msgs_per_s": round(ours_oldest),
        "fanout10_msgs_per_s": round(fanout),
        "fanout10_deliveries_per_s": round(fanout * 10),
        "pipeline3_msgs_per_s": round(pipeline),
    }
    rows = [
        ("publish, 100 B, block", f"{ours / 1e3:.0f} k msgs/s; pyzmq PUB/SUB {zmq_rate / 1e3:.0f} k msgs/s; ratio {result['pubsub_vs_zmq']}"),
        ("publish, 100 B, drop_oldest", f"{ours_oldest / 1e3:.0f} k msgs/s"),
        ("fanout to 10 subscriptions in 2 processes", f"{fanout / 1e3:.0f} k publications/s ({fanout * 10 / 1e3:.0f} k deliveries/s)"),
        ("pipeline of 3 stage processes", f"{pipeline / 1e3:.1f} k msgs/s"),
    ]
    report("phoenix_trio publish-subscribe and pipeline", rows, result)


if __name__ == "__main__":
    main()
