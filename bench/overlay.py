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

Ends with ``RESULT {json}``: plumtree_reliability_20pct_fail, plumtree_rmr_stable,
gossip_rounds_1000, gossip_rounds_bound_1000, hyparview_connected_after_50pct_fail and
more (see the rows). The real-process figures (hol_*) are not produced here yet.
"""

from __future__ import annotations

import time
from typing import Any

from _harness import parse_args, report

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
    rows.append(("wall clock", f"{time.perf_counter() - started:.1f} s (not a result)"))
    report("phoenix_trio overlay (simulated)", rows, result)


if __name__ == "__main__":
    main()
