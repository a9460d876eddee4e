"""Payload compression: lz4 (frame format) by default, zlib as the alternative.

``compress`` only compresses payloads above a threshold and only keeps the result when it
is smaller. ``decompress`` is bounded: it never produces more than ``max_size`` bytes and
stops (raising :class:`~phoenix_trio.DecodeError`) as soon as the output would pass it,
so a small input that claims to inflate to gigabytes costs nothing.
"""

from __future__ import annotations

import zlib
from typing import Literal

import lz4.frame

from .._errors import ConfigurationError, DecodeError

Algorithm = Literal["lz4", "zlib"]
ALGORITHMS: tuple[str, ...] = ("lz4", "zlib")
DEFAULT_THRESHOLD = 1024
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
_CHUNK = 64 * 1024


def compress(
    payload: bytes, algorithm: Algorithm | None = "lz4", *, threshold: int = DEFAULT_THRESHOLD, level: int | None = None
) -> tuple[bytes, Algorithm | None]:
    """``(bytes, algorithm)``: compressed when above ``threshold`` and smaller, else ``(payload, None)``."""
    if algorithm is None or len(payload) < threshold:
        return payload, None
    if algorithm == "lz4":
        packed = lz4.frame.compress(payload, compression_level=level or 0, store_size=True)
    elif algorithm == "zlib":
        packed = zlib.compress(payload, 6 if level is None else level)
    else:
        raise ConfigurationError(f"unknown compression {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    if len(packed) >= len(payload):
        return payload, None
    return packed, algorithm


def decompress(payload: bytes, algorithm: Algorithm, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Inflate ``payload``; :class:`DecodeError` if it is corrupt or would exceed ``max_size``."""
    if algorithm == "lz4":
        return _lz4(payload, max_size)
    if algorithm == "zlib":
        return _zlib(payload, max_size)
    raise ConfigurationError(f"unknown compression {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


def _lz4(payload: bytes, max_size: int) -> bytes:
    decompressor = lz4.frame.LZ4FrameDecompressor()
    out = bytearray()
    view = memoryview(payload)
    try:
        # Feed in slices and cap each call's output so a bomb is caught early.
        pos = 0
        while True:
            chunk = view[pos : pos + _CHUNK]
            pos += len(chunk)
            out += decompressor.decompress(chunk, max_length=max_size - len(out) + 1)
            while not decompressor.eof and decompressor.needs_input is False:
                if len(out) > max_size:
                    break
                out += decompressor.decompress(b"", max_length=max_size - len(out) + 1)
            if len(out) > max_size:
                raise DecodeError(f"lz4 payload inflates beyond {max_size} bytes")
            if decompressor.eof:
                if decompressor.unused_data:
                    raise DecodeError("trailing bytes after the lz4 frame")
                return bytes(out)
            if pos >= len(view):
                raise DecodeError("truncated lz4 frame")
    except DecodeError:
        raise
    except Exception as exc:  # lz4 raises RuntimeError for corrupt input
        raise DecodeError(f"corrupt lz4 payload: {exc}") from None


def _zlib(payload: bytes, max_size: int) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(payload, max_size + 1)
    except zlib.error as exc:
        raise DecodeError(f"corrupt zlib payload: {exc}") from None
    if len(out) > max_size or decompressor.unconsumed_tail:
        raise DecodeError(f"zlib payload inflates beyond {max_size} bytes")
    if not decompressor.eof:
        raise DecodeError("truncated zlib payload")
    if decompressor.unused_data:
        raise DecodeError("trailing bytes after the zlib stream")
    return out
