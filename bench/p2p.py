"""Point-to-point and request-response between two node processes, against pyzmq.

    python bench/p2p.py --quick

Sender and receiver run in separate processes on loopback. Ends with ``RESULT {json}``:

- ``p2p_msgs_per_s``: 100-byte payloads through ``node.send`` (full envelope), counted
  from the first send until the receiving agent has taken the last one from its inbox;
  ``p2p_vs_zmq``: the ratio to pyzmq PUSH/PULL (tcp, 100 bytes) measured the same way in
  the same run. Both are at-most-once (PUSH/PULL acknowledges nothing), so the sends pass
  ``delivery="at_most_once"``; bench/delivery.py measures the other guarantees.
- ``reqrep_p50_us`` / ``reqrep_p99_us``: ``node.request`` round trips to an echo agent;
  ``reqrep_vs_zmq``: our p50 over pyzmq REQ/REP's p50 in the same run (lower is better).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, report  # noqa: E402

PAYLOAD = b"x" * 100


# -- phoenix_trio --------------------------------------------------------------------------


def _receiver(address_queue: mp.Queue, count: int) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("receiver", listen="127.0.0.1:0") as node:
            address_queue.put(node.address)
            async with node.agent("sink", capacity=65536) as sink, node.agent("echo") as echo:

                async def serve_echo() -> None:
                    async for message in echo:
                        await message.reply(message.data)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve_echo)
                    rounds = 0
                    while True:
                        received = 0
                        async for message in sink:
                            if message.data == b"start":
                                received = 0
                                continue
                            received += 1
                            if received == count:
                                break
                        rounds += 1
                        await node.send(message.source.rsplit("/", 1)[-1], "done", delivery="at_most_once")

    trio.run(main)


def _sender(address, count: int, requests: int, out: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("sender", seeds=[address]) as node:
            await node.wait_for_agent("sink", timeout=10)
            async with node.agent("bench") as me:
                best = 0.0
                for _ in range(3):
                    await me.send("sink", b"start", delivery="at_most_once")
                    start = time.perf_counter()
                    for _ in range(count):
                        await me.send("sink", PAYLOAD, delivery="at_most_once")
                    reply = await me.receive()
                    assert reply.data == "done"
                    best = max(best, count / (time.perf_counter() - start))
                for _ in range(200):
                    await node.request("echo", PAYLOAD)
                latencies = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    await node.request("echo", PAYLOAD)
                    latencies.append(time.perf_counter() - t0)
                out.put((best, latencies))

    trio.run(main)


def run_phoenix(count: int, requests: int) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    receiver = ctx.Process(target=_receiver, args=(addresses, count), daemon=True)
    receiver.start()
    address = addresses.get(timeout=30)
    sender = ctx.Process(target=_sender, args=(address, count, requests, results))
    sender.start()
    try:
        return results.get(timeout=600)
    finally:
        sender.join(10)
        receiver.terminate()
        receiver.join(10)


# -- pyzmq anchors --------------------------------------------------------------------------


def _zmq_pull(port_queue: mp.Queue, count: int, rounds: int) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    done = ctx.socket(zmq.PUSH)
    done_port = done.bind_to_random_port("tcp://127.0.0.1")
    port_queue.put((port, done_port))
    for _ in range(rounds):
        pull.recv()  # start marker
        for _ in range(count):
            pull.recv()
        done.send(b"done")
    time.sleep(0.5)


def _zmq_rep(port_queue: mp.Queue) -> None:
    import zmq

    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port_queue.put(rep.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        rep.send(rep.recv())


def run_zmq(count: int, requests: int) -> tuple[float, list[float]]:
    import zmq

    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()
    rounds = 3
    puller = ctx.Process(target=_zmq_pull, args=(ports, count, rounds), daemon=True)
    puller.start()
    port, done_port = ports.get(timeout=30)
    zctx = zmq.Context()
    push = zctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    done = zctx.socket(zmq.PULL)
    done.connect(f"tcp://127.0.0.1:{done_port}")
    best = 0.0
    for _ in range(rounds):
        push.send(b"start")
        start = time.perf_counter()
        for _ in range(count):
            push.send(PAYLOAD)
        done.recv()
        best = max(best, count / (time.perf_counter() - start))
    puller.join(10)

    replier = ctx.Process(target=_zmq_rep, args=(ports,), daemon=True)
    replier.start()
    req = zctx.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{ports.get(timeout=30)}")
    for _ in range(200):
        req.send(PAYLOAD)
        req.recv()
    latencies = []
    for _ in range(requests):
        t0 = time.perf_counter()
        req.send(PAYLOAD)
        req.recv()
        latencies.append(time.perf_counter() - t0)
    replier.terminate()
    replier.join(10)
    zctx.destroy(linger=0)
    return best, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 100_000 if args.quick else 500_000
    requests = 2_000 if args.quick else 10_000
    ours_rate, ours_lat = run_phoenix(count, requests)
    zmq_rate, zmq_lat = run_zmq(count, requests)
    p50, p99 = percentile(ours_lat, 0.5) * 1e6, percentile(ours_lat, 0.99) * 1e6
    z50, z99 = percentile(zmq_lat, 0.5) * 1e6, percentile(zmq_lat, 0.99) * 1e6
    result = {
        "p2p_msgs_per_s": round(ours_rate),
        "zmq_push_pull_msgs_per_s": round(zmq_rate),
        "p2p_vs_zmq": round(ours_rate / zmq_rate, 3),
        "reqrep_p50_us": round(p50, 1),
        "reqrep_p99_us": round(p99, 1),
        "zmq_reqrep_p50_us": round(z50, 1),
        "zmq_reqrep_p99_us": round(z99, 1),
        "reqrep_vs_zmq": round(p50 / z50, 3),
        "reqrep_mean_us": round(statistics.mean(ours_lat) * 1e6, 1),
    }
    rows = [
        ("node.send, 100 B", f"{ours_rate / 1e3:.0f} k msgs/s; pyzmq PUSH/PULL {zmq_rate / 1e3:.0f} k msgs/s; ratio {result['p2p_vs_zmq']}"),
        ("node.request round trip", f"p50 {p50:.0f} us, p99 {p99:.0f} us; pyzmq REQ/REP p50 {z50:.0f} us, p99 {z99:.0f} us; ratio {result['reqrep_vs_zmq']}"),
    ]
    report("phoenix_trio point-to-point", rows, result)


if __name__ == "__main__":
    main()
