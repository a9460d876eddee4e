"""Benchmark the four message formats, with msgpack measured against plain msgpack.

    python bench/serialization.py --quick

For a typical message (about 300 bytes in msgpack: a small JSON-like payload, subject,
trace context, vector clock, delivery, routing with a correlation id, sender identity,
QoS), each format's serialize and deserialize rate (``serialize(m, fmt)`` /
``deserialize(payload, fmt)``, validation included) and mean payload size. The rates
cycle through 256 distinct messages (own id, span, clock tick, correlation id), so
caches only ever help with what really repeats between messages.

Anchor, same run (interleaved with ours in short alternating slices, best of each,
because these machines are shared and drift): ``msgpack.packb`` / ``unpackb`` of the equivalent plain CloudEvents-like
dict (every attribute and extension as a flat dict, as ``to_attributes`` gives it, time
as an RFC 3339 string, plus ``data``). ``msgpack_vs_raw`` is our msgpack round trip
(serialize + deserialize) as a ratio of that plain round trip; goal >= 0.5.
``json_vs_raw`` does the same for our JSON format against ``json.dumps`` / ``json.loads``
of the same dict.

Ends with ``RESULT {json}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgpack
from _harness import parse_args, rate, report

from phoenix_trio import Message, SecurityInfo
from phoenix_trio import serialization as ser
from phoenix_trio.serialization._attributes import format_time, to_attributes

POOL = 256


def typical_message(i: int = 0) -> Message:
    """A request-like message; every call gets its own id, span, clock tick and correlation id."""
    return Message.new(
        {"task": "summarise", "document": f"doc-{4711 + i}", "sections": [1, 2, 3], "deadline_ms": 2500, "draft": False},
        type="phoenix.agent.action.execute",
        source="phoenix://node-3/planner",
        subject=f"job-{4711 + i}",
        target="summariser",
        topic="jobs.summaries",
        correlation_id=f"req-{4711 + i}",
        security=SecurityInfo(agent_id="planner", key_id="k1"),
    )


def plain_dict(message: Message) -> dict[str, Any]:
    flat = {k: (format_time(v) if k in ("time", "phxauthtime") else v) for k, v in to_attributes(message).items()}
    flat["data"] = message.data
    return flat


def over(items: list[Any], fn: Callable[[Any], object]) -> Callable[[], int]:
    """A ``rate`` body applying ``fn`` to every item of ``items`` (distinct messages, so no
    cache can serve a value that is unique per message in real traffic)."""

    def run() -> int:
        for item in items:
            fn(item)
        return len(items)

    return run


def interleaved(fns: list[Callable[[], int]], *, seconds: float, rounds: int = 6) -> list[float]:
    """Best rate of each of ``fns``, measured in alternating slices so drift hits all alike."""
    best = [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = max(best[i], rate(fn, seconds=seconds / rounds, repeats=1))
    return best


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t = 0.3 if args.quick else 1.5
    messages = [typical_message(i) for i in range(POOL)]
    serialize, deserialize = ser.serialize, ser.deserialize

    result: dict[str, float | int] = {}
    rows: list[tuple[str, str]] = []
    for fmt in ser.FORMATS:
        payloads = [serialize(m, fmt)[0] for m in messages]
        assert [deserialize(p, fmt) for p in payloads] == messages
        size = round(sum(map(len, payloads)) / POOL)
        enc = rate(over(messages, lambda m, fmt=fmt: serialize(m, fmt)), seconds=t)
        dec = rate(over(payloads, lambda p, fmt=fmt: deserialize(p, fmt)), seconds=t)
        result[f"{fmt}_bytes"] = size
        result[f"{fmt}_serialize_per_s"] = round(enc)
        result[f"{fmt}_deserialize_per_s"] = round(dec)
        rows.append((fmt, f"{size:4d} B  serialize {enc / 1e3:7.1f} k/s  deserialize {dec / 1e3:7.1f} k/s"))

    flats = [plain_dict(m) for m in messages]
    packb, unpackb = msgpack.packb, msgpack.unpackb
    dumps, loads = json.dumps, json.loads
    ours_msgpack, raw_msgpack, ours_json, raw_json = interleaved(
        [
            over(messages, lambda m: deserialize(serialize(m, "msgpack")[0], "msgpack")),
            over(flats, lambda d: unpackb(packb(d))),
            over(messages, lambda m: deserialize(serialize(m, "json")[0], "json")),
            over(flats, lambda d: loads(dumps(d))),
        ],
        seconds=4 * t,
    )
    result.update(
        {
            "msgpack_roundtrip_per_s": round(ours_msgpack),
            "raw_msgpack_bytes": round(sum(len(packb(d)) for d in flats) / POOL),
            "raw_msgpack_roundtrip_per_s": round(raw_msgpack),
            "msgpack_vs_raw": round(ours_msgpack / raw_msgpack, 3),
            "json_roundtrip_per_s": round(ours_json),
            "raw_json_roundtrip_per_s": round(raw_json),
            "json_vs_raw": round(ours_json / raw_json, 3),
        }
    )
    rows.append(
        (
            "msgpack vs plain dict",
            f"ours {ours_msgpack / 1e3:.1f} k round trips/s; packb+unpackb of the flat dict ({result['raw_msgpack_bytes']} B) "
            f"{raw_msgpack / 1e3:.1f} k/s; ratio {result['msgpack_vs_raw']} (goal >= 0.5)",
        )
    )
    rows.append(
        (
            "json vs plain dict",
            f"ours {ours_json / 1e3:.1f} k round trips/s; dumps+loads {raw_json / 1e3:.1f} k/s; ratio {result['json_vs_raw']}",
        )
    )
    report("phoenix_trio serialization", rows, result)


if __name__ == "__main__":
    main()
