"""The main job behind ``make demo``: show phoenix_trio at work and report what it did.

Until the node runtime lands this exercises the C core the way a connection does:
messages batched into checksummed frames, a byte stream cut into arbitrary chunks and
reassembled, a corrupted frame caught, and a token bucket pacing a sender.
"""

from __future__ import annotations

import os
import random
import time

from . import ChecksumMismatch, core


def _line(label: str, text: str) -> None:
    print(f"  {label:<28} {text}")


def run_demo() -> int:
    print("phoenix_trio demo: the C core at work")
    _line("core implementation", f"{core.IMPLEMENTATION} (CRC32C via {core.crc32c_implementation()})")

    rng = random.Random(7)
    messages = [os.urandom(rng.randint(20, 200)) for _ in range(20_000)]
    start = time.perf_counter()
    frames = [core.encode_batch(messages[i : i + 500], channel=1) for i in range(0, len(messages), 500)]
    stream = b"".join(frames)
    pack_s = time.perf_counter() - start
    _line("batched", f"{len(messages):,} messages into {len(frames)} frames, {len(stream):,} bytes in {pack_s * 1e3:.1f} ms")

    start = time.perf_counter()
    decoder = core.FrameDecoder()
    received: list[bytes] = []
    pos = 0
    chunks = 0
    while pos < len(stream):
        size = rng.randint(1, 9000)
        for frame in decoder.feed(stream[pos : pos + size]):
            received.extend(core.unpack_batch(frame.payload))
        pos += size
        chunks += 1
    decode_s = time.perf_counter() - start
    ok = received == messages
    _line("reassembled", f"{chunks:,} random chunks -> {len(received):,} messages, identical: {ok}, {decode_s * 1e3:.1f} ms")
    _line("throughput", f"{len(messages) / (pack_s + decode_s) / 1e6:.2f} M msgs/s packed + unpacked")

    corrupt = bytearray(frames[0])
    corrupt[100] ^= 0x01
    try:
        core.FrameDecoder().feed(bytes(corrupt))
        caught = "NOT caught"
    except ChecksumMismatch as exc:
        caught = f"caught: {exc.reason}"
    _line("one flipped bit", caught)

    bucket = core.TokenBucket(capacity=100, rate=1000, now=0.0)
    now, sent, waits = 0.0, 0, 0
    while now < 1.0:
        wait = bucket.acquire(10, now)
        if wait:
            now += wait
            waits += 1
        else:
            sent += 10
    _line("token bucket 1000/s, burst 100", f"{sent:,} tokens granted over 1.0 simulated s ({waits} waits)")
    return 0 if ok and caught.startswith("caught") else 1
