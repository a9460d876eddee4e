"""Benchmark rate limiting and causal broadcast.

    python bench/ratelimit.py --quick

Ends with ``RESULT {json}``:

- ``acquire_c_per_s`` / ``acquire_py_per_s`` / ``acquire_c_vs_py``: ``RateLimiter.acquire_tokens``
  on a local token bucket (inside ``trio.run``, the clock is ``trio.current_time``), on the
  C core and on the pure-Python twin;
- ``bucket_c_per_s`` / ``bucket_py_per_s``: the bare ``TokenBucket.acquire(1, now)`` call of
  each core, for scale (what ``acquire_tokens`` adds is the registry lookup and the clock);
- ``leased_acquire_per_s``: the same call on a distributed bucket holding a lease (the
  member's fast path: the lease check and one cffi call);
- ``window_acquire_per_s``: on a sliding window (10 slots);
- ``lease_rtt_us_p50`` / ``_p99``: one lease request answered by the owner on another node
  (two nodes on loopback in this process);
- ``causal_msgs_per_s``: messages broadcast by 3 members of a causal group (3 nodes on
  loopback in this process) and delivered at all of them, per second.
"""

from __future__ import annotations

import time

import trio
import trio.testing
from _harness import parse_args, rate, report

import phoenix_trio as px
from phoenix_trio._causal_group import open_causal_group
from phoenix_trio._lease import owner_of
from phoenix_trio._ratelimit import RateLimiter
from phoenix_trio._ratelimit_node import open_rate_limiter
from phoenix_trio import core
from phoenix_trio.core import _pure


def local_rates(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        limiter = RateLimiter()
        limiter.create_bucket("c", 1e12, 1e12)
        limiter.create_bucket("py", 1, 1)
        limiter._register("py", _pure.TokenBucket(1e12, 1e12, trio.current_time()), "token_bucket", 1e12, 1e12)
        limiter.create_window("w", 1 << 40, 1.0)

        def loop(bucket: str):
            acquire = limiter.acquire_tokens

            def run() -> int:
                for _ in range(1000):
                    acquire(bucket, 1)
                return 1000

            return run

        out["acquire_c_per_s"] = rate(loop("c"), seconds=seconds)
        out["acquire_py_per_s"] = rate(loop("py"), seconds=seconds)
        out["window_acquire_per_s"] = rate(loop("w"), seconds=seconds)
        for key, cls in (("bucket_c_per_s", core.TokenBucket), ("bucket_py_per_s", _pure.TokenBucket)):
            bare = cls(1e12, 1e12, 0.0)

            def run(acquire=bare.acquire) -> int:
                for _ in range(1000):
                    acquire(1.0, 5.0)
                return 1000

            out[key] = rate(run, seconds=seconds)

    trio.run(main)
    return out


async def node_figures(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    async with px.open_node("a", listen="127.0.0.1:0") as a, px.open_node("b", listen="127.0.0.1:0", seeds=[a.address]) as b:
        await a.wait_for_members(1)
        await b.wait_for_members(1)
        members = ["a", "b"]
        bucket = next(x for x in (f"k{i}" for i in range(100)) if owner_of(x, members) == "b")
        async with open_rate_limiter(a, members=members) as la, open_rate_limiter(b, members=members) as lb:
            await trio.testing.wait_all_tasks_blocked()
            la.create_bucket(bucket, 1e9, 1e9, distributed=True)
            lb.create_bucket(bucket, 1e9, 1e9, distributed=True)
            lease = la.lease(bucket)
            while lease.lease_rate == 0:
                await lease.changed.wait()

            def run() -> int:
                acquire = la.acquire_tokens
                for _ in range(1000):
                    acquire(bucket, 1)
                return 1000

            out["leased_acquire_per_s"] = rate(run, seconds=seconds)
            # Lease round trips: ask, wait for the grant.
            protocol = la._runner.protocol
            rtts = []
            for _ in range(300 if seconds < 1 else 2000):
                changed = lease.changed
                t0 = time.perf_counter()
                out_effects: list = []
                protocol._members[bucket].outstanding = None
                protocol._request(bucket, trio.current_time(), out_effects)
                la._runner.apply(out_effects)
                await changed.wait()
                rtts.append(time.perf_counter() - t0)
            rtts.sort()
            out["lease_rtt_us_p50"] = rtts[len(rtts) // 2] * 1e6
            out["lease_rtt_us_p99"] = rtts[int(len(rtts) * 0.99)] * 1e6

    async with px.open_node("c0", listen="127.0.0.1:0") as c0:
        async with px.open_node("c1", listen="127.0.0.1:0", seeds=[c0.address]) as c1, px.open_node(
            "c2", listen="127.0.0.1:0", seeds=[c0.address]
        ) as c2:
            nodes = [c0, c1, c2]
            for n in nodes:
                await n.wait_for_members(2)
            names = [n.id for n in nodes]
            per_member = 3000 if seconds < 1 else 20000
            async with open_causal_group(c0, "b", members=names) as g0, open_causal_group(
                c1, "b", members=names
            ) as g1, open_causal_group(c2, "b", members=names) as g2:
                groups = [g0, g1, g2]
                for g in groups:
                    await g.wait_joined()
                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for g in groups:

                        async def talk(g=g) -> None:
                            for i in range(per_member):
                                await g.broadcast(i)

                        async def read(g=g) -> None:
                            for _ in range(3 * per_member):
                                await g.receive()

                        nursery.start_soon(talk)
                        nursery.start_soon(read)
                out["causal_msgs_per_s"] = 3 * per_member / (time.perf_counter() - t0)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t = 0.3 if args.quick else 1.5
    figures = local_rates(t)
    figures.update(trio.run(node_figures, t))
    figures["acquire_c_vs_py"] = figures["acquire_c_per_s"] / figures["acquire_py_per_s"]
    rows = [
        ("acquire_tokens, C bucket", f"{figures['acquire_c_per_s'] / 1e6:.2f} M/s"),
        ("acquire_tokens, pure-Python bucket", f"{figures['acquire_py_per_s'] / 1e6:.2f} M/s"),
        ("bare TokenBucket.acquire, C / pure Python", f"{figures['bucket_c_per_s'] / 1e6:.2f} / {figures['bucket_py_per_s'] / 1e6:.2f} M/s"),
        ("acquire_tokens, leased (distributed) bucket", f"{figures['leased_acquire_per_s'] / 1e6:.2f} M/s"),
        ("acquire_tokens, sliding window", f"{figures['window_acquire_per_s'] / 1e6:.2f} M/s"),
        ("lease round trip (loopback, p50 / p99)", f"{figures['lease_rtt_us_p50']:.0f} / {figures['lease_rtt_us_p99']:.0f} us"),
        ("causal broadcast, 3 members, delivered everywhere", f"{figures['causal_msgs_per_s']:.0f} msgs/s"),
    ]
    report("rate limiting and causal broadcast", rows, {k: round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()
