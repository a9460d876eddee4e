"""The pure-Python twin of the C core: same API, same results, same errors.

Used when ``PHOENIX_TRIO_PUREPYTHON=1`` is set or the extension cannot be loaded, and
by the differential tests that check the C core against it. It favours being an
obviously faithful transcription of ``csrc/`` over speed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from ._common import (
    Buffer,
    BUCKET_EPSILON,
    DEFAULT_MAX_PAYLOAD,
    ERR_BATCH,
    ERR_CHECKSUM,
    ERR_FLAGS,
    ERR_MAGIC,
    ERR_TOO_LARGE,
    ERR_VERSION,
    FLAG_BATCH,
    FLAGS_KNOWN,
    HEADER_SIZE,
    MAX_PAYLOAD_LIMIT,
    VERSION,
    Frame,
    check_channel,
    check_flags,
    check_max_payload,
    raise_for,
)
from .._errors import ConfigurationError, FrameError

IMPLEMENTATION = "python"

_POLY = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()
_HEADER = struct.Struct(">2sBBIII")
_PREFIX = struct.Struct(">2sBBII")  # the 12 bytes the checksum covers first


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``value`` (the CRC of preceding bytes)."""
    table = _TABLE
    crc = (value & 0xFFFFFFFF) ^ 0xFFFFFFFF
    for byte in memoryview(data).cast("B"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_implementation() -> str:
    return "python"


# -- frames ---------------------------------------------------------------------------


def frame_header(payload: Buffer, *, channel: int = 0, flags: int = 0) -> bytes:
    """The 16-byte header for a frame carrying ``payload`` (payload not included)."""
    check_flags(flags)
    check_channel(channel)
    length = memoryview(payload).nbytes
    if length > MAX_PAYLOAD_LIMIT:
        raise ConfigurationError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD_LIMIT}-byte limit")
    prefix = _PREFIX.pack(b"PX", VERSION, flags, channel, length)
    crc = crc32c(payload, crc32c(prefix))
    return prefix + crc.to_bytes(4, "big")


def encode_frame(payload: Buffer, *, channel: int = 0, flags: int = 0) -> bytes:
    """A whole frame: header followed by ``payload``."""
    return frame_header(payload, channel=channel, flags=flags) + bytes(payload)


def _check_prefix(head: bytes | bytearray | memoryview, max_payload: int) -> int:
    """Validate as much of a header as ``head`` holds; 0 or an error code."""
    n = len(head)
    if n >= 1 and head[0] != 0x50:
        return ERR_MAGIC
    if n >= 2 and head[1] != 0x58:
        return ERR_MAGIC
    if n >= 3 and head[2] != VERSION:
        return ERR_VERSION
    if n >= 4 and head[3] & ~FLAGS_KNOWN:
        return ERR_FLAGS
    if n >= 12 and int.from_bytes(head[8:12], "big") > max_payload:
        return ERR_TOO_LARGE
    return 0


class FrameDecoder:
    """Streaming frame decoder: feed bytes in chunks of any size, get whole checked frames.

    After an error every later call raises the same error (a terminal state), and the
    bytes held for an incomplete frame never exceed ``HEADER_SIZE + max_payload``.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        check_max_payload(max_payload)
        self.max_payload = max_payload
        self._buf = bytearray()
        self._error = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held until the rest arrives."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[Frame]:
        """Decode every frame completed by ``data``. Raises a :class:`FrameError` subclass."""
        if self._error:
            raise_for(self._error)
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        max_payload = self.max_payload
        try:
            while True:
                rest = end - pos
                code = _check_prefix(buf[pos : pos + min(rest, HEADER_SIZE)], max_payload)
                if code:
                    raise_for(code)
                if rest < HEADER_SIZE:
                    break
                _, _, flags, channel, length, crc = _HEADER.unpack_from(buf, pos)
                if rest - HEADER_SIZE < length:
                    break
                body = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
                if crc32c(body, crc32c(buf[pos : pos + 12])) != crc:
                    raise_for(ERR_CHECKSUM)
                frames.append(Frame(flags, channel, body))
                pos += HEADER_SIZE + length
        except FrameError as exc:
            self._error = exc.code
            self._buf = bytearray()
            raise
        del buf[:pos]
        return frames


# -- batches --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = tuple(_varint(n) for n in range(16384))


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, new position); raises MalformedBatch on a bad or truncated varint."""
    result = 0
    for i in range(5):
        if pos + i >= len(data):
            raise_for(ERR_BATCH)
        byte = data[pos + i]
        if i == 4 and byte > 0x0F:
            raise_for(ERR_BATCH)
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise_for(ERR_BATCH)
            return result, pos + i + 1
    raise_for(ERR_BATCH)
    raise AssertionError("unreachable")


def pack_batch(payloads: Iterable[Buffer]) -> bytes:
    """A batch payload (no frame header) holding ``payloads`` in order."""
    items = [bytes(p) for p in payloads]
    if len(items) > 0xFFFFFFFF:
        raise ConfigurationError("too many messages for one batch")
    small = _SMALL_VARINTS
    parts = [_varint(len(items))]
    for item in items:
        n = len(item)
        parts.append(small[n] if n < 16384 else _varint(n))
        parts.append(item)
    return b"".join(parts)


def encode_batch(payloads: Iterable[Buffer], *, channel: int = 0, flags: int = 0) -> bytes:
    """A whole frame with the batch flag set, carrying ``payloads``."""
    body = pack_batch(payloads)
    return encode_frame(body, channel=channel, flags=flags | FLAG_BATCH)


def unpack_batch(payload: Buffer) -> list[bytes]:
    """Split a batch payload back into its messages; raises MalformedBatch."""
    data = bytes(payload)
    count, pos = _decode_varint(data, 0)
    if count > len(data) - pos:
        raise_for(ERR_BATCH)
    items = []
    for _ in range(count):
        length, pos = _decode_varint(data, pos)
        if length > len(data) - pos:
            raise_for(ERR_BATCH)
        items.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise_for(ERR_BATCH)
    return items


# -- token bucket ---------------------------------------------------------------------


def _finite_nonneg(x: float) -> bool:
    return math.isfinite(x) and x >= 0.0


class TokenBucket:
    """Token bucket: ``capacity`` tokens at most, refilled at ``rate`` per second.

    Time is passed in (seconds on any monotonic clock), never read. Starts full.
    """

    __slots__ = ("_capacity", "_tokens", "_rate", "_last")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        capacity, rate, now = float(capacity), float(rate), float(now)
        if not (math.isfinite(capacity) and capacity > 0.0 and _finite_nonneg(rate) and math.isfinite(now)):
            raise ConfigurationError("token bucket needs finite capacity > 0, rate >= 0 and a finite time")
        self._capacity = capacity
        self._tokens = capacity
        self._rate = rate
        self._last = now

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def rate(self) -> float:
        return self._rate

    def _refill(self, now: float) -> None:
        if now > self._last:
            tokens = self._tokens + (now - self._last) * self._rate
            self._tokens = tokens if tokens < self._capacity else self._capacity
            self._last = now

    def acquire(self, n: float, now: float) -> float:
        """Take ``n`` tokens: 0.0 when granted, else the seconds to wait (``inf`` at rate 0).

        Raises :class:`ConfigurationError` when ``n`` can never be granted (above capacity,
        negative, not finite).
        """
        n, now = float(n), float(now)
        if not _finite_nonneg(n) or n > self._capacity or not math.isfinite(now):
            raise ConfigurationError(f"cannot acquire {n} tokens from a bucket of {self._capacity}")
        self._refill(now)
        if self._tokens + BUCKET_EPSILON >= n:
            left = self._tokens - n
            self._tokens = left if left > 0.0 else 0.0
            return 0.0
        if self._rate <= 0.0:
            return math.inf
        return (n - self._tokens) / self._rate

    def available(self, now: float) -> float:
        """Tokens available at ``now``."""
        now = float(now)
        if math.isfinite(now):
            self._refill(now)
        return self._tokens

    def set_rate(self, rate: float, now: float) -> None:
        """Refill at ``rate`` from ``now`` on; tokens earned until ``now`` are kept."""
        rate, now = float(rate), float(now)
        if not _finite_nonneg(rate) or not math.isfinite(now):
            raise ConfigurationError(f"invalid rate {rate}")
        self._refill(now)
        self._rate = rate

    def release(self, n: float, now: float) -> None:
        """Give back ``n`` unused tokens (capped at capacity)."""
        n, now = float(n), float(now)
        if not _finite_nonneg(n) or not math.isfinite(now):
            raise ConfigurationError(f"cannot release {n} tokens")
        self._refill(now)
        tokens = self._tokens + n
        self._tokens = tokens if tokens < self._capacity else self._capacity
