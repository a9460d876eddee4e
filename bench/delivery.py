"""Delivery guarantees between two node processes, and spilling to disk.

    python bench/delivery.py --quick

Sender and receiver are separate processes on loopback; the receiver has a data
directory (its exactly-once log, fsync policy "interval"). For each guarantee the sender
sends 100-byte messages with ``node.send(..., delivery=mode)``; the time runs from the
first send until the receiving agent has taken the last one (for at-least-once and
exactly-once, every message is also acknowledged by then or shortly after). Ends with
``RESULT {json}``: ``amo_msgs_per_s``, ``alo_msgs_per_s``, ``eo_msgs_per_s``, the ratios
``alo_vs_amo`` and ``eo_vs_amo`` measured in the same run, and ``spill_mb_per_s``: how
fast a flow-controlled target spills 1 KiB messages to disk when it cannot drain.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, report  # noqa: E402

PAYLOAD = b"x" * 100
MODES = ("at_most_once", "at_least_once", "exactly_once")


def _receiver(address_queue: mp.Queue, count: int, data_dir: str) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("receiver", listen="127.0.0.1:0", data_dir=data_dir) as node:
            async with node.agent("sink", capacity=65536) as sink:
                address_queue.put(node.address)
                while True:
                    received = 0
                    async for message in sink:
                        if message.data == b"start":
                            received = 0
                            continue
                        received += 1
                        if received == count:
                            break
                    await node.send(message.source.rsplit("/", 1)[-1], "done", delivery="at_most_once")

    trio.run(main)


def _sender(address, count: int, rounds: int, out: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("sender", seeds=[address]) as node:
            await node.wait_for_agent("sink", timeout=10)
            async with node.agent("bench") as me:
                results = {}
                for mode in MODES:
                    best = 0.0
                    for _ in range(rounds):
                        await me.send("sink", b"start", delivery="at_most_once")
                        start = time.perf_counter()
                        for _ in range(count):
                            await me.send("sink", PAYLOAD, delivery=mode)
                        reply = await me.receive()
                        assert reply.data == "done"
                        best = max(best, count / (time.perf_counter() - start))
                        await node.flush_deliveries(timeout=60)
                    results[mode] = best
                out.put((results, dict(node.stats)))

    trio.run(main)


def run_modes(count: int, rounds: int) -> tuple[dict[str, float], dict[str, int]]:
    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    data_dir = tempfile.mkdtemp(prefix="phoenix-delivery-bench-")
    receiver = ctx.Process(target=_receiver, args=(addresses, count, data_dir), daemon=True)
    receiver.start()
    try:
        address = addresses.get(timeout=30)
        sender = ctx.Process(target=_sender, args=(address, count, rounds, results))
        sender.start()
        outcome = results.get(timeout=600)
        sender.join(10)
        return outcome
    finally:
        receiver.terminate()
        receiver.join(10)
        shutil.rmtree(data_dir, ignore_errors=True)


def spill_rate(messages: int) -> float:
    """MB/s of 1 KiB messages spilled by a flow-controlled target that cannot drain."""
    import trio

    import phoenix_trio as px

    spill_dir = tempfile.mkdtemp(prefix="phoenix-spill-bench-")
    payload = b"y" * 1024

    async def main() -> float:
        async with px.open_node("spiller") as node:
            flow = node.flow_control(
                "nowhere", max_queue_size=1, high_watermark=1, low_watermark=0,
                backpressure_strategy="spill_to_disk", slow_senders=False, spill_dir=spill_dir,
                max_spill_bytes=4 * 1024 * 1024 * 1024,
            )  # fmt: skip
            start = time.perf_counter()
            for _ in range(messages):
                await node.send("nowhere", payload, delivery="at_most_once")
            elapsed = time.perf_counter() - start
            assert flow.statistics().spilled == messages - 1
            assert flow.store is not None
            return flow.store.bytes_written / elapsed / 1e6

    try:
        return trio.run(main)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 50_000 if args.quick else 200_000
    rounds = 2 if args.quick else 3
    rates, stats = run_modes(count, rounds)
    spill = spill_rate(20_000 if args.quick else 100_000)
    amo, alo, eo = (rates[m] for m in MODES)
    result = {
        "amo_msgs_per_s": round(amo),
        "alo_msgs_per_s": round(alo),
        "eo_msgs_per_s": round(eo),
        "alo_vs_amo": round(alo / amo, 3),
        "eo_vs_amo": round(eo / amo, 3),
        "spill_mb_per_s": round(spill, 1),
        "retransmitted": stats.get("retransmitted", 0),
    }
    rows = [
        ("at-most-once", f"{amo / 1e3:.0f} k msgs/s"),
        ("at-least-once", f"{alo / 1e3:.0f} k msgs/s; ratio to at-most-once {result['alo_vs_amo']} (goal >= 0.5)"),
        ("exactly-once", f"{eo / 1e3:.0f} k msgs/s; ratio to at-most-once {result['eo_vs_amo']} (goal >= 0.25)"),
        ("spill to disk, 1 KiB", f"{spill:.1f} MB/s"),
    ]
    report("phoenix_trio delivery guarantees", rows, result)


if __name__ == "__main__":
    main()
