"""Thin wrappers over the C core (``phoenix_trio._phoenix_core``, built by build_ext.py).

Arguments are checked here, memory comes from cffi (released with the owning object),
every return code is checked and mapped to phoenix_trio's exceptions. Bulk work crosses
the boundary once per call: a batch is handed over as one joined buffer plus an array
of lengths, and the decoder hands back an integer index of every frame in a chunk.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from .._errors import ConfigurationError
from .._phoenix_core import ffi, lib  # type: ignore[import-not-found]  # built by cffi, no stubs
from ._common import (
    Buffer,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_PAYLOAD_LIMIT,
    Frame,
    check_channel,
    check_flags,
    check_max_payload,
    raise_for,
)

IMPLEMENTATION = "c"

# Fresh buffers are fully written by C before being read: skip zeroing them.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_new_frame = Frame._make
_MAX_FRAMES_PER_CALL = 1024


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` (the CRC of preceding bytes)."""
    view = ffi.from_buffer(data)
    return lib.px_crc32c(value & 0xFFFFFFFF, view, len(view))


def crc32c_implementation() -> str:
    """What the C core uses on this CPU: "sse4.2", "armv8-crc" or "software"."""
    return ffi.string(lib.px_crc32c_impl()).decode()


# -- frames ---------------------------------------------------------------------------


def frame_header(payload: Buffer, *, channel: int = 0, flags: int = 0) -> bytes:
    """The 16-byte header for a frame carrying ``payload`` (payload not included)."""
    check_flags(flags)
    check_channel(channel)
    view = ffi.from_buffer(payload)
    if len(view) > MAX_PAYLOAD_LIMIT:
        raise ConfigurationError(f"payload of {len(view)} bytes exceeds the {MAX_PAYLOAD_LIMIT}-byte limit")
    out = _alloc("uint8_t[]", HEADER_SIZE)
    rc = lib.px_frame_header(out, channel, flags, view, len(view))
    if rc:
        raise_for(rc)
    return ffi.buffer(out)[:]


def encode_frame(payload: Buffer, *, channel: int = 0, flags: int = 0) -> bytes:
    """A whole frame: header followed by ``payload``."""
    return frame_header(payload, channel=channel, flags=flags) + bytes(payload)


class FrameDecoder:
    """Streaming frame decoder: feed bytes in chunks of any size, get whole checked frames.

    After an error every later call raises the same error (a terminal state), and the
    bytes held for an incomplete frame never exceed ``HEADER_SIZE + max_payload``.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        check_max_payload(max_payload)
        self.max_payload = max_payload
        self._decoder = ffi.gc(ffi.new("px_decoder *"), lib.px_decoder_free)
        rc = lib.px_decoder_init(self._decoder, max_payload)
        if rc:
            raise_for(rc)
        self._index = ffi.new("uint32_t[]", 4 * _MAX_FRAMES_PER_CALL)
        self._index_view = memoryview(ffi.buffer(self._index)).cast("I")
        self._consumed = ffi.new("size_t *")

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held until the rest arrives."""
        return lib.px_decoder_pending(self._decoder)

    def feed(self, data: Buffer) -> list[Frame]:
        """Decode every frame completed by ``data``. Raises a :class:`FrameError` subclass."""
        if type(data) is not bytes:
            data = bytes(data)
        decoder = self._decoder
        index_view = self._index_view
        consumed = self._consumed
        src = ffi.from_buffer(data)
        total = len(data)
        offset = 0
        frames: list[Frame] = []
        append = frames.append
        while True:
            n = lib.px_decoder_feed_index(decoder, src + offset, total - offset, consumed, self._index, _MAX_FRAMES_PER_CALL)
            if n < 0:
                raise_for(n)
            if n:
                fields = iter(index_view[: 4 * n].tolist())
                for flags, channel, start, length in zip(fields, fields, fields, fields):
                    if flags & 0x100:
                        payload = ffi.buffer(lib.px_decoder_buffer(decoder) + start, length)[:]
                        flags &= 0xFF
                    else:
                        start += offset
                        payload = data[start : start + length]
                    append(_new_frame((flags, channel, payload)))
            offset += consumed[0]
            if offset >= total and n < _MAX_FRAMES_PER_CALL:
                return frames


# -- batches --------------------------------------------------------------------------


def pack_batch(payloads: Iterable[Buffer]) -> bytes:
    """A batch payload (no frame header) holding ``payloads`` in order."""
    items = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
    joined = b"".join(items)
    lengths = array("I", map(len, items)) if items else array("I", [0])
    count = len(items)
    cap = lib.px_batch_bound(count, len(joined))
    out = _alloc("uint8_t[]", cap)
    written = ffi.new("size_t *")
    rc = lib.px_batch_pack(out, cap, joined, ffi.from_buffer("uint32_t[]", lengths), count, written)
    if rc:
        raise_for(rc)
    return ffi.buffer(out, written[0])[:]


def encode_batch(payloads: Iterable[Buffer], *, channel: int = 0, flags: int = 0) -> bytes:
    """A whole frame with the batch flag set, carrying ``payloads``."""
    check_flags(flags)
    check_channel(channel)
    items = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
    joined = b"".join(items)
    lengths = array("I", map(len, items)) if items else array("I", [0])
    count = len(items)
    cap = HEADER_SIZE + lib.px_batch_bound(count, len(joined))
    out = _alloc("uint8_t[]", cap)
    written = ffi.new("size_t *")
    rc = lib.px_batch_frame(out, cap, channel, flags, joined, ffi.from_buffer("uint32_t[]", lengths), count, written)
    if rc:
        raise_for(rc)
    return ffi.buffer(out, written[0])[:]


def unpack_batch(payload: Buffer) -> list[bytes]:
    """Split a batch payload back into its messages; raises MalformedBatch."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    size = len(payload)
    count_out = ffi.new("uint32_t *")
    rc = lib.px_batch_count(payload, size, count_out)
    if rc:
        raise_for(rc)
    count = count_out[0]
    if count == 0:
        rc = lib.px_batch_unpack(payload, size, ffi.NULL, ffi.NULL, 0, ffi.new("size_t *"))
        if rc:
            raise_for(rc)
        return []
    bounds = _alloc("uint32_t[]", 2 * count)
    got = ffi.new("size_t *")
    rc = lib.px_batch_unpack(payload, size, bounds, bounds + count, count, got)
    if rc:
        raise_for(rc)
    view = memoryview(ffi.buffer(bounds)).cast("I")
    return [payload[a:b] for a, b in zip(view[:count].tolist(), view[count:].tolist())]


# -- token bucket ---------------------------------------------------------------------


class TokenBucket:
    """Token bucket: ``capacity`` tokens at most, refilled at ``rate`` per second.

    Time is passed in (seconds on any monotonic clock), never read. Starts full.
    """

    __slots__ = ("_bucket", "_wait")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self._bucket = ffi.new("px_token_bucket *")
        self._wait = ffi.new("double *")
        if lib.px_bucket_init(self._bucket, capacity, rate, now):
            raise ConfigurationError("token bucket needs finite capacity > 0, rate >= 0 and a finite time")

    @property
    def capacity(self) -> float:
        return self._bucket.capacity

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def acquire(self, n: float, now: float) -> float:
        """Take ``n`` tokens: 0.0 when granted, else the seconds to wait (``inf`` at rate 0).

        Raises :class:`ConfigurationError` when ``n`` can never be granted (above capacity,
        negative, not finite).
        """
        rc = lib.px_bucket_acquire(self._bucket, n, now, self._wait)
        if rc == 1:
            return 0.0
        if rc == 0:
            return self._wait[0]
        raise ConfigurationError(f"cannot acquire {n} tokens from a bucket of {self._bucket.capacity}")

    def available(self, now: float) -> float:
        """Tokens available at ``now``."""
        return lib.px_bucket_available(self._bucket, now)

    def set_rate(self, rate: float, now: float) -> None:
        """Refill at ``rate`` from ``now`` on; tokens earned until ``now`` are kept."""
        if lib.px_bucket_set_rate(self._bucket, rate, now):
            raise ConfigurationError(f"invalid rate {rate}")

    def release(self, n: float, now: float) -> None:
        """Give back ``n`` unused tokens (capped at capacity)."""
        if lib.px_bucket_release(self._bucket, n, now):
            raise ConfigurationError(f"cannot release {n} tokens")


__all__ = [
    "IMPLEMENTATION",
    "FrameDecoder",
    "TokenBucket",
    "crc32c",
    "crc32c_implementation",
    "encode_batch",
    "encode_frame",
    "frame_header",
    "pack_batch",
    "unpack_batch",
]
