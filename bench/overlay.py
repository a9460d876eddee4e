"""Overlay figures from seeded simulations: HyParView, Plumtree, gossip, anti-entropy.

    python bench/overlay.py --quick     # 1,000 nodes (well under a minute)
    python bench/overlay.py             # also 10,000 nodes (several minutes)

The sans-IO cores run on phoenix_trio.sim through the overlay's simulated TCP driver
(ordered links, connection failures reported after 20 ms for a crashed peer, 1 s across
a partition; link latency 1-5 ms). Seeds are fixed, so the figures reproduce exactly;
wall-clock time is printed but is not a result. Anchors are the published ones, since
a simulation has no machine to compare against: push gossip needs about
log2(N) + ln(N) rounds; Plumtree's relative message redundancy is m/(n-1) - 1 (0 is
optimal); the goals are reliability >= 0.999 with 20% of the nodes failed and
RMR <= 0.1 once the tree is stable.

Then, between two real node processes on loopback, head-of-line blocking: the p99
one-way latency of 100-byte messages sent every 2 ms while 1 MiB messages stream on the
same peer pair (``node.send`` in a loop, at-most-once: the sender goes as fast as the
connection's backpressure lets it, which queues up to ``max_pending_bytes``, 8 MiB, on
the sender), once over a single connection and once with parallel channels
(``configure_channels({"bulk": 1}, large="bulk")``: the large messages take a connection
of their own). Latency is measured on the shared CLOCK_MONOTONIC of the two processes.

Ends with ``RESULT {json}``: plumtree_reliability_20pct_fail, plumtree_rmr_stable,
gossip_rounds_1000, gossip_rounds_bound_1000, hyparview_connected_after_50pct_fail,
hol_p99_small_ms_single, hol_p99_small_ms_channels, hol_gain (single over channels;
goal >= 5) and more (see the rows).
"""

from __future__ import annotations

import multiprocessing as mp
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, report  # noqa: E402

from phoenix_trio.overlay import _scenarios as S


def overlay_rows(tag: str, n: int, run20: S.OverlayScenario, run50: S.OverlayScenario) -> list[tuple[str, str]]:
    j, r20, r50 = run20.after_join, run20.after_repair, run50.after_repair
    return [
        (
            f"HyParView mass join, {n} nodes",
            f"connected {j.connected}, symmetric {j.symmetric}, degree {j.degree_min}-{j.degree_max} "
            f"(mean {j.degree_mean:.2f}), passive {j.passive_mean:.1f}, eccentricity {j.eccentricity}",
        ),
        (
            f"  after 20% / 50% crash + 30 s",
            f"connected {r20.connected} / {r50.connected}, symmetric {r20.symmetric} / {r50.symmetric}, "
            f"components {r20.components} / {r50.components}, degree min {r20.degree_min} / {r50.degree_min}",
        ),
        (
            f"Plumtree reliability 0/20/50% failed",
            f"{run20.stable.reliability_min:.4f} / {run20.after_fail.reliability_min:.4f} / "
            f"{run50.after_fail.reliability_min:.4f} (min over {run20.after_fail.count} broadcasts "
            f"sent right after the crash; goal >= 0.999 at 20%)",
        ),
        (
            f"Plumtree RMR stable / after crash",
            f"{run20.stable.rmr_mean:.4f} (max {run20.stable.rmr_max:.4f}; goal <= 0.1) / "
            f"{run20.after_fail.rmr_mean:.3f} at 20%, {run50.after_fail.rmr_mean:.3f} at 50%",
        ),
        (
            f"Plumtree last delivery hop",
            f"mean {run20.stable.last_hop_mean:.1f}, max {run20.stable.last_hop_max} (stable, random origins)",
        ),
        (
            f"routing, random pairs",
            f"{run20.routing_stable.delivered}/{run20.routing_stable.sent} delivered, "
            f"{run20.routing_stable.hops_mean:.1f} hops, "
            f"{run20.routing_stable.requests_per_discovery:.0f} requests per discovery; after 50% crash "
            f"{run50.routing_after.delivered}/{run50.routing_after.sent}",
        ),
    ]


# -- head-of-line blocking between two processes ------------------------------------------

SMALL = 100
LARGE = 1 << 20
SMALL_INTERVAL = 0.002


def _channels(parallel: bool) -> Any:
    import phoenix_trio as px

    return px.configure_channels({"bulk": 1}, large="bulk", large_threshold=64 * 1024) if parallel else None


def _hol_receiver(parallel: bool, addresses: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("hol-receiver", listen="127.0.0.1:0", channels=_channels(parallel)) as node:
            latencies: list[float] = []
            arrived = trio.lowlevel.ParkingLot()
            async with node.agent("small", capacity=65536) as small, node.agent("bulk", capacity=16) as bulk, node.agent("report") as report:

                async def take_small() -> None:
                    async for message in small:
                        sent_at, measured = struct.unpack_from("<d?", message.data)
                        if measured:
                            latencies.append(time.monotonic() - sent_at)
                            arrived.unpark_all()

                async def take_bulk() -> None:
                    async for message in bulk:
                        assert len(message.data) == LARGE

                async def answer_report() -> None:
                    async for message in report:  # the number of measured messages sent
                        while len(latencies) < message.data:
                            await arrived.park()
                        await message.reply(list(latencies))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take_small)
                    nursery.start_soon(take_bulk)
                    nursery.start_soon(answer_report)
                    addresses.put(node.address)
                    await trio.sleep_forever()

    trio.run(main)


def _hol_sender(parallel: bool, address: Any, seconds: float, out: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    big = b"B" * LARGE
    pad = b"s" * (SMALL - 9)

    async def main() -> None:
        async with px.open_node("hol-sender", seeds=[address], channels=_channels(parallel)) as node:
            for agent in ("small", "bulk", "report"):
                await node.wait_for_agent(agent, timeout=20)
            large_done = 0

            async def stream_large() -> None:
                nonlocal large_done
                while True:
                    await node.send("bulk", big, delivery="at_most_once")
                    large_done += 1

            async def send_small(until: float, measured: bool) -> int:
                sent = 0
                next_at = time.monotonic()
                while time.monotonic() < until:
                    await node.send("small", struct.pack("<d?", time.monotonic(), measured) + pad, delivery="at_most_once")
                    sent += 1
                    next_at += SMALL_INTERVAL
                    await trio.sleep(max(0.0, next_at - time.monotonic()))
                return sent

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_large)
                await send_small(time.monotonic() + 0.5, False)  # warm-up: connections, lanes, caches
                started, before = time.monotonic(), large_done
                sent = await send_small(time.monotonic() + seconds, True)
                elapsed, large = time.monotonic() - started, large_done - before
                nursery.cancel_scope.cancel()
            latencies = (await node.request("report", sent, timeout=30)).data
            out.put((sent, latencies, large * LARGE / elapsed))

    trio.run(main)


def hol_run(parallel: bool, seconds: float) -> tuple[int, list[float], float]:
    """(small messages sent, their one-way latencies in s, large bytes/s sent) for one mode."""
    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    receiver = ctx.Process(target=_hol_receiver, args=(parallel, addresses), daemon=True)
    receiver.start()
    try:
        address = addresses.get(timeout=60)
        sender = ctx.Process(target=_hol_sender, args=(parallel, address, seconds, results), daemon=True)
        sender.start()
        try:
            return results.get(timeout=seconds + 120)
        finally:
            sender.join(20)
            if sender.is_alive():
                sender.kill()
    finally:
        receiver.terminate()
        receiver.join(20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hol_rows(seconds: float) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    figures = {}
    rows = []
    for parallel, label in ((False, "single"), (True, "channels")):
        sent, latencies, large_rate = hol_run(parallel, seconds)
        assert len(latencies) == sent, f"{label}: {sent} small messages sent, {len(latencies)} arrived"
        p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
        figures[label] = (p50, p99, large_rate)
        rows.append(
            (
                f"HOL, {'one connection' if not parallel else 'parallel channels'}",
                f"100 B one-way p50 {p50:.2f} ms, p99 {p99:.2f} ms ({sent} messages) while 1 MiB "
                f"messages stream at {large_rate / 2**20:.0f} MiB/s",
            )
        )
    gain = figures["single"][1] / figures["channels"][1]
    rows.append(("HOL gain (p99 single / channels)", f"{gain:.1f}x (goal >= 5)"))
    result = {
        "hol_p50_small_ms_single": round(figures["single"][0], 3),
        "hol_p50_small_ms_channels": round(figures["channels"][0], 3),
        "hol_p99_small_ms_single": round(figures["single"][1], 3),
        "hol_p99_small_ms_channels": round(figures["channels"][1], 3),
        "hol_gain": round(gain, 2),
        "hol_large_mib_per_s_single": round(figures["single"][2] / 2**20, 1),
        "hol_large_mib_per_s_channels": round(figures["channels"][2] / 2**20, 1),
    }
    return rows, result


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = [1000] if args.quick else [1000, 10_000]
    rows: list[tuple[str, str]] = []
    result: dict[str, Any] = {}
    started = time.perf_counter()
    for n in sizes:
        run20 = S.overlay_scenario(n, 1, 0.2)
        run50 = S.overlay_scenario(n, 2, 0.5)
        full = S.gossip_scenario(n, 1)
        over = S.gossip_scenario(n, 1, peers="hyparview")
        ae = S.anti_entropy_scenario(n, 1)
        rows += overlay_rows(f"_{n}", n, run20, run50)
        rows += [
            (
                f"gossip rounds, {n} nodes",
                f"{full.rounds} uniform peers ({full.elapsed_rounds:.2f} elapsed), {over.rounds} over HyParView; "
                f"bound log2(N)+ln(N) = {full.bound:.1f}; fanout 3",
            ),
            (
                f"anti-entropy after a partition",
                f"{ae.cut_off} nodes missed {ae.messages} messages; caught up {ae.caught_up} in "
                f"{ae.catch_up_seconds:.1f} s after healing (digests every 5 s)",
            ),
        ]
        suffix = "" if n == 1000 else f"_{n}"
        result.update(
            {
                f"plumtree_reliability_0pct_fail{suffix}": run20.stable.reliability_min,
                f"plumtree_reliability_20pct_fail{suffix}": run20.after_fail.reliability_min,
                f"plumtree_reliability_50pct_fail{suffix}": run50.after_fail.reliability_min,
                f"plumtree_rmr_stable{suffix}": round(run20.stable.rmr_mean, 5),
                f"plumtree_last_delivery_hop{suffix}": run20.stable.last_hop_max,
                f"hyparview_connected_after_join{suffix}": run20.after_join.connected and run50.after_join.connected,
                f"hyparview_symmetric_after_join{suffix}": run20.after_join.symmetric and run50.after_join.symmetric,
                f"hyparview_connected_after_20pct_fail{suffix}": run20.after_repair.connected,
                f"hyparview_connected_after_50pct_fail{suffix}": run50.after_repair.connected,
                f"hyparview_symmetric_after_50pct_fail{suffix}": run50.after_repair.symmetric,
                f"routing_delivered_fraction{suffix}": (
                    (run20.routing_stable.delivered + run50.routing_after.delivered)
                    / (run20.routing_stable.sent + run50.routing_after.sent)
                ),
                f"gossip_rounds_{n}": full.rounds,
                f"gossip_rounds_bound_{n}": round(full.bound, 2),
                f"gossip_rounds_vs_bound_{n}": round(full.rounds / full.bound, 3),
                f"gossip_rounds_hyparview_{n}": over.rounds,
                f"anti_entropy_caught_up{suffix}": ae.caught_up,
                f"anti_entropy_catch_up_s{suffix}": round(ae.catch_up_seconds, 2),
            }
        )
    rows.append(("simulations, wall clock", f"{time.perf_counter() - started:.1f} s (not a result)"))
    hol, hol_result = hol_rows(5.0 if args.quick else 20.0)
    rows += hol
    result.update(hol_result)
    report("phoenix_trio overlay (simulated) and parallel channels (2 processes)", rows, result)


if __name__ == "__main__":
    main()
