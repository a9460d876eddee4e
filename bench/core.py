"""Benchmark the C core against its pure-Python twin and the `crc32c` package.

    python bench/core.py --quick

Ends with ``RESULT {json}``: crc32c_gbps / crc32c_vs_pkg (64 KiB buffers, ratio to the
`crc32c` package from PyPI), decode_frames_per_s / decode_vs_pure (a 64 KiB chunk of
100-byte frames decoded per call), batch_pack_msgs_per_s / batch_unpack_msgs_per_s for
100-byte messages with ratios to pure Python, bucket_acquire_per_s / bucket_vs_pure.
"""

from __future__ import annotations

import os

import crc32c as crc32c_pkg
from _harness import parse_args, rate, report

from phoenix_trio.core import _native, _pure


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t = 0.3 if args.quick else 1.5
    block = os.urandom(64 * 1024)

    crc_ours = rate(lambda: _native.crc32c(block) and len(block), seconds=t)
    crc_pkg = rate(lambda: crc32c_pkg.crc32c(block) and len(block), seconds=t)

    message = os.urandom(100)
    frames = b"".join(_native.encode_frame(message, channel=1) for _ in range(64 * 1024 // 116))
    count = len(frames) // 116

    def decode(impl):
        def run() -> int:
            decoder = impl.FrameDecoder()
            got = decoder.feed(frames)
            assert len(got) == count
            return count

        return run

    decode_c = rate(decode(_native), seconds=t)
    decode_py = rate(decode(_pure), seconds=t / 3, repeats=1)

    batch = [os.urandom(100) for _ in range(1000)]
    packed = _native.pack_batch(batch)
    pack_c = rate(lambda: len(_native.pack_batch(batch)) and 1000, seconds=t)
    pack_py = rate(lambda: len(_pure.pack_batch(batch)) and 1000, seconds=t)
    unpack_c = rate(lambda: len(_native.unpack_batch(packed)), seconds=t)
    unpack_py = rate(lambda: len(_pure.unpack_batch(packed)), seconds=t)

    def acquire(impl):
        bucket = impl.TokenBucket(1e12, 1e12, 0.0)
        clock = [0.0]

        def run() -> int:
            now = clock[0]
            acq = bucket.acquire
            for i in range(1000):
                acq(1.0, now + i * 1e-6)
            clock[0] = now + 1e-3
            return 1000

        return run

    bucket_c = rate(acquire(_native), seconds=t)
    bucket_py = rate(acquire(_pure), seconds=t)

    result = {
        "crc32c_impl": _native.crc32c_implementation(),
        "crc32c_gbps": round(crc_ours / 1e9, 2),
        "crc32c_pkg_gbps": round(crc_pkg / 1e9, 2),
        "crc32c_vs_pkg": round(crc_ours / crc_pkg, 3),
        "decode_frames_per_s": round(decode_c),
        "decode_pure_frames_per_s": round(decode_py),
        "decode_vs_pure": round(decode_c / decode_py, 1),
        "batch_pack_msgs_per_s": round(pack_c),
        "batch_pack_vs_pure": round(pack_c / pack_py, 2),
        "batch_unpack_msgs_per_s": round(unpack_c),
        "batch_unpack_vs_pure": round(unpack_c / unpack_py, 2),
        "bucket_acquire_per_s": round(bucket_c),
        "bucket_vs_pure": round(bucket_c / bucket_py, 2),
    }
    rows = [
        ("CRC32C 64 KiB", f"{crc_ours / 1e9:.1f} GB/s ({result['crc32c_impl']}); crc32c package {crc_pkg / 1e9:.1f} GB/s; ratio {result['crc32c_vs_pkg']}"),
        ("decode 100 B frames", f"{decode_c / 1e6:.2f} M frames/s; pure Python {decode_py / 1e3:.1f} k/s; ratio {result['decode_vs_pure']}"),
        ("batch pack 100 B", f"{pack_c / 1e6:.2f} M msgs/s; pure {pack_py / 1e6:.2f} M/s; ratio {result['batch_pack_vs_pure']}"),
        ("batch unpack 100 B", f"{unpack_c / 1e6:.2f} M msgs/s; pure {unpack_py / 1e6:.2f} M/s; ratio {result['batch_unpack_vs_pure']}"),
        ("token bucket acquire", f"{bucket_c / 1e6:.2f} M ops/s; pure {bucket_py / 1e6:.2f} M/s; ratio {result['bucket_vs_pure']}"),
    ]
    report("phoenix_trio core", rows, result)


if __name__ == "__main__":
    main()
