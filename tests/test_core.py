"""The C core through cffi and its pure-Python twin: each on its own, and against each other."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_trio import (
    BadMagic,
    ChecksumMismatch,
    ConfigurationError,
    DecodeError,
    FrameTooLarge,
    MalformedBatch,
    PhoenixError,
    ReservedFlags,
    UnsupportedVersion,
    core,
)
from phoenix_trio.core import _common, _pure

try:
    from phoenix_trio.core import _native
except ImportError:  # pragma: no cover - only without the extension
    _native = None

ROOT = Path(__file__).resolve().parent.parent
needs_native = pytest.mark.skipif(_native is None, reason="C extension not built (run `make build`)")
IMPLS = [pytest.param(_native, id="c", marks=needs_native), pytest.param(_pure, id="python")]

payloads = st.binary(max_size=600)
frame_specs = st.lists(
    st.tuples(payloads, st.integers(0, 2**32 - 1), st.integers(0, _common.FLAGS_KNOWN)),
    max_size=12,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points + [len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


# -- constants and selection ------------------------------------------------------------


def test_constants_match_the_c_header() -> None:
    header = (ROOT / "csrc" / "phoenix_core.h").read_text()
    defines = dict(re.findall(r"#define (PX_\w+) \(?(-?\w+)\)?", header))
    assert int(defines["PX_VERSION"]) == _common.VERSION
    assert int(defines["PX_HEADER_SIZE"]) == _common.HEADER_SIZE
    for name in ("BATCH", "COMPRESSED", "ENCRYPTED", "PRIORITY", "CONTROL"):
        assert int(defines[f"PX_FLAG_{name}"].rstrip("u"), 16) == getattr(_common, f"FLAG_{name}")
    for name in ("MAGIC", "VERSION", "TOO_LARGE", "CHECKSUM", "FLAGS", "BATCH", "BUFFER", "ARG", "NOMEM"):
        assert int(defines[f"PX_ERR_{name}"]) == getattr(_common, f"ERR_{name}")
    if _native is not None:
        lib = _native.lib
        assert lib.PX_DEFAULT_MAX_PAYLOAD == _common.DEFAULT_MAX_PAYLOAD
        assert lib.PX_MAX_PAYLOAD_LIMIT == _common.MAX_PAYLOAD_LIMIT
        assert lib.PX_FLAGS_KNOWN == _common.FLAGS_KNOWN


def test_public_surface_reports_the_active_implementation() -> None:
    assert core.implementation() == core.IMPLEMENTATION
    assert core.IMPLEMENTATION in ("c", "python")
    if _native is not None and not os.environ.get("PHOENIX_TRIO_PUREPYTHON"):
        assert core.IMPLEMENTATION == "c"
        assert core.crc32c_implementation() in ("sse4.2", "armv8-crc", "software")


def test_environment_variable_selects_pure_python() -> None:
    code = "from phoenix_trio import core; print(core.IMPLEMENTATION, core.crc32c_implementation())"
    env = dict(os.environ, PHOENIX_TRIO_PUREPYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "python"]


def test_errors_belong_to_the_tree() -> None:
    for cls in (BadMagic, UnsupportedVersion, FrameTooLarge, ChecksumMismatch, ReservedFlags, MalformedBatch):
        assert issubclass(cls, DecodeError) and issubclass(cls, PhoenixError) and issubclass(cls, ValueError)


# -- CRC32C ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_crc32c_check_values(impl) -> None:
    assert impl.crc32c(b"123456789") == 0xE3069283
    assert impl.crc32c(b"") == 0
    assert impl.crc32c(bytes(32)) == 0x8A9136AA
    assert impl.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert impl.crc32c(bytearray(range(32))) == 0x46DD794E
    assert impl.crc32c(memoryview(b"123456789")) == 0xE3069283


@needs_native
@given(data=st.binary(max_size=5000), cut=st.integers(0, 5000), start=st.integers(0, 2**32 - 1))
def test_crc32c_c_and_python_agree(data: bytes, cut: int, start: int) -> None:
    expected = _pure.crc32c(data, start)
    assert _native.crc32c(data, start) == expected
    cut %= len(data) + 1
    assert _native.crc32c(data[cut:], _native.crc32c(data[:cut], start)) == expected


@needs_native
def test_crc32c_hardware_and_software_paths_agree_on_large_buffers() -> None:
    lib = _native.lib
    ffi = _native.ffi
    blob = os.urandom(300_000)
    for size in (0, 7, 255, 256, 767, 768, 24575, 24576, 24577, 65536, 299_999):
        view = ffi.from_buffer(blob)
        assert lib.px_crc32c_hw(0, view + 1, size) == lib.px_crc32c_sw(0, view + 1, size)


# -- frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_frame_layout(impl) -> None:
    frame = impl.encode_frame(b"hello", channel=0x01020304, flags=core.FLAG_PRIORITY)
    assert frame[:4] == b"PX\x01\x08"
    assert frame[4:8] == bytes([1, 2, 3, 4])
    assert frame[8:12] == (5).to_bytes(4, "big")
    assert int.from_bytes(frame[12:16], "big") == impl.crc32c(frame[16:], impl.crc32c(frame[:12]))
    assert frame[16:] == b"hello"
    assert impl.frame_header(b"hello", channel=0x01020304, flags=core.FLAG_PRIORITY) == frame[:16]


@pytest.mark.parametrize("impl", IMPLS)
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(specs=frame_specs, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_frames_survive_any_chunking(impl, specs, cuts) -> None:
    stream = b"".join(impl.encode_frame(p, channel=c, flags=f) for p, c, f in specs)
    decoder = impl.FrameDecoder(max_payload=1000)
    got = []
    for chunk in split(stream, cuts):
        got.extend(decoder.feed(chunk))
    assert got == [core.Frame(f, c, p) for p, c, f in specs]
    assert decoder.pending == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_frames_one_byte_at_a_time(impl) -> None:
    stream = b"".join(impl.encode_frame(bytes([i]) * i, channel=i) for i in range(40))
    decoder = impl.FrameDecoder()
    got = []
    for i in range(len(stream)):
        got.extend(decoder.feed(stream[i : i + 1]))
    assert [f.payload for f in got] == [bytes([i]) * i for i in range(40)]


@pytest.mark.parametrize("impl", IMPLS)
def test_more_than_one_call_worth_of_frames_in_a_chunk(impl) -> None:
    frames = [impl.encode_frame(i.to_bytes(2, "big")) for i in range(3000)]
    decoder = impl.FrameDecoder()
    # Start with a partial frame so the first result comes from the decoder's buffer.
    head = decoder.feed(frames[0][:3])
    got = head + decoder.feed(frames[0][3:] + b"".join(frames[1:]))
    assert [int.from_bytes(f.payload, "big") for f in got] == list(range(3000))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b"Q" + b[1:], BadMagic),
        (lambda b: b[:1] + b"Y" + b[2:], BadMagic),
        (lambda b: b[:2] + b"\x07" + b[3:], UnsupportedVersion),
        (lambda b: b[:3] + b"\x80" + b[4:], ReservedFlags),
        (lambda b: b[:8] + (10**6).to_bytes(4, "big") + b[12:], FrameTooLarge),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), ChecksumMismatch),
        (lambda b: b[:5] + bytes([b[5] ^ 4]) + b[6:], ChecksumMismatch),
    ],
)
def test_each_bad_frame_has_its_own_error_and_it_sticks(impl, mutate, error) -> None:
    good = impl.encode_frame(b"x" * 50, channel=9)
    decoder = impl.FrameDecoder(max_payload=1000)
    assert decoder.feed(good) == [core.Frame(0, 9, b"x" * 50)]
    with pytest.raises(error) as caught:
        decoder.feed(mutate(good))
    assert caught.value.code == error.code
    with pytest.raises(error):
        decoder.feed(good)


@pytest.mark.parametrize("impl", IMPLS)
def test_oversize_is_refused_before_the_payload_arrives(impl) -> None:
    decoder = impl.FrameDecoder(max_payload=100)
    header = impl.frame_header(b"z" * 101)
    assert decoder.feed(header[:11]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[11:12])


@pytest.mark.parametrize("impl", IMPLS)
def test_memory_held_for_a_partial_frame_is_bounded(impl) -> None:
    decoder = impl.FrameDecoder(max_payload=50_000)
    frame = impl.encode_frame(os.urandom(50_000))
    for i in range(0, len(frame) - 1, 997):
        assert decoder.feed(frame[i : min(i + 997, len(frame) - 1)]) == []
        assert decoder.pending <= core.HEADER_SIZE + 50_000
    assert [f.payload for f in decoder.feed(frame[-1:])] == [frame[16:]]


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_arguments(impl) -> None:
    with pytest.raises(ConfigurationError):
        impl.FrameDecoder(max_payload=core.MAX_PAYLOAD_LIMIT + 1)
    with pytest.raises(ConfigurationError):
        impl.encode_frame(b"", flags=0x80)
    with pytest.raises(ConfigurationError):
        impl.encode_frame(b"", channel=2**32)


@needs_native
@settings(max_examples=300)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda specs, flips: bytes(b ^ flips.get(i, 0) for i, b in enumerate(b"".join(_pure.encode_frame(p, channel=c, flags=f) for p, c, f in specs))),
            frame_specs,
            st.dictionaries(st.integers(0, 400), st.integers(1, 255), max_size=3),
        ),
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_decoders_agree_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    outcomes = []
    for impl in (_native, _pure):
        decoder = impl.FrameDecoder(max_payload=700)
        results: list[object] = []
        for chunk in split(data, cuts):
            try:
                results.append(decoder.feed(chunk))
            except DecodeError as exc:
                results.append(type(exc))
                break
        outcomes.append((results, decoder.pending if not isinstance(results[-1], type) else None))
    assert outcomes[0] == outcomes[1]


# -- batches --------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@given(items=st.lists(st.binary(max_size=300), max_size=80))
def test_batch_round_trip(impl, items: list[bytes]) -> None:
    body = impl.pack_batch(items)
    assert impl.unpack_batch(body) == items
    frame = impl.encode_batch(items, channel=3, flags=core.FLAG_COMPRESSED)
    [decoded] = impl.FrameDecoder().feed(frame)
    assert decoded.flags == core.FLAG_BATCH | core.FLAG_COMPRESSED and decoded.channel == 3
    assert impl.unpack_batch(decoded.payload) == items


@needs_native
@given(items=st.lists(st.binary(max_size=20_000), max_size=5) | st.lists(st.binary(max_size=30), max_size=300))
def test_batch_encoders_agree(items: list[bytes]) -> None:
    assert _native.pack_batch(items) == _pure.pack_batch(items)
    assert _native.encode_batch(items, channel=5) == _pure.encode_batch(items, channel=5)
    assert _native.pack_batch(iter(items)) == _pure.pack_batch(items)


@needs_native
@given(data=st.binary(max_size=300) | st.builds(lambda xs, tail: _pure.pack_batch(xs) + tail, st.lists(st.binary(max_size=20), max_size=10), st.binary(max_size=2)))
def test_batch_decoders_agree_on_arbitrary_bytes(data: bytes) -> None:
    results = []
    for impl in (_native, _pure):
        try:
            results.append(impl.unpack_batch(data))
        except MalformedBatch:
            results.append(MalformedBatch)
    assert results[0] == results[1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "body",
    [b"", b"\x01", b"\x01\x05ab", b"\x01\x01ab", b"\x05\x00", b"\x01\x81\x00a", b"\x80", b"\xff\xff\xff\xff\x1f"],
)
def test_malformed_batches(impl, body: bytes) -> None:
    with pytest.raises(MalformedBatch):
        impl.unpack_batch(body)


# -- token bucket ---------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_token_bucket_behaviour(impl) -> None:
    bucket = impl.TokenBucket(10, 2.5, now=100.0)
    assert [bucket.acquire(1, 100.0) for _ in range(10)] == [0.0] * 10
    wait = bucket.acquire(1, 100.0)
    assert wait == pytest.approx(0.4)
    assert bucket.acquire(1, 100.0 + wait) == 0.0
    assert bucket.available(50.0) == pytest.approx(0.0, abs=1e-9)  # clock stepped back
    assert bucket.available(1e6) == 10.0
    assert bucket.acquire(0.25, 1e6) == 0.0 and bucket.available(1e6) == 9.75
    for bad in (11, -1, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            bucket.acquire(bad, 1e6)
    stopped = impl.TokenBucket(2, 0, now=0)
    assert stopped.acquire(2, 0) == 0.0
    assert stopped.acquire(1, 1e9) == math.inf
    stopped.set_rate(1, 1e9)
    assert stopped.available(1e9 + 1) == pytest.approx(1.0)
    stopped.release(5, 1e9 + 1)
    assert stopped.available(1e9 + 1) == 2.0
    for args in ((0, 1, 0), (1, -1, 0), (math.inf, 1, 0), (1, 1, math.nan)):
        with pytest.raises(ConfigurationError):
            impl.TokenBucket(*args)


bucket_ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "available", "set_rate", "release"]),
        st.floats(0, 12, allow_nan=False),
        st.floats(-1, 5, allow_nan=False),
    ),
    max_size=60,
)


@needs_native
@given(capacity=st.floats(0.5, 10), rate=st.floats(0, 1000), ops=bucket_ops)
def test_token_buckets_agree_bit_for_bit(capacity: float, rate: float, ops) -> None:
    buckets = [_native.TokenBucket(capacity, rate, 0.0), _pure.TokenBucket(capacity, rate, 0.0)]
    now = 0.0
    for op, amount, dt in ops:
        now += dt
        results = []
        for bucket in buckets:
            try:
                if op == "acquire":
                    results.append(bucket.acquire(amount, now))
                elif op == "available":
                    results.append(bucket.available(now))
                elif op == "set_rate":
                    results.append(bucket.set_rate(amount * 50, now))
                else:
                    results.append(bucket.release(amount, now))
            except ConfigurationError:
                results.append("refused")
        assert results[0] == results[1]
        assert buckets[0].available(now) == buckets[1].available(now)
