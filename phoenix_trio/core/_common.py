"""What both core implementations share: wire constants, the Frame record, error mapping.

The constants mirror ``csrc/phoenix_core.h``; tests check the two agree.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from .._errors import (
    BadMagic,
    ChecksumMismatch,
    ConfigurationError,
    FrameError,
    FrameTooLarge,
    MalformedBatch,
    ReservedFlags,
    UnsupportedVersion,
)

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Any contiguous bytes-like object the core accepts."""

VERSION = 1
HEADER_SIZE = 16
MAGIC = b"PX"
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
MAX_PAYLOAD_LIMIT = 1 << 30

FLAG_BATCH = 0x01
FLAG_COMPRESSED = 0x02
FLAG_ENCRYPTED = 0x04
FLAG_PRIORITY = 0x08
FLAG_CONTROL = 0x10
FLAGS_KNOWN = 0x1F

# Float tolerance shared with csrc/token_bucket.c.
BUCKET_EPSILON = 1e-9

# C status codes.
OK = 0
ERR_MAGIC = -1
ERR_VERSION = -2
ERR_TOO_LARGE = -3
ERR_CHECKSUM = -4
ERR_FLAGS = -5
ERR_BATCH = -6
ERR_BUFFER = -7
ERR_ARG = -8
ERR_NOMEM = -9


class Frame(NamedTuple):
    """One decoded frame: its flags, channel id and payload bytes."""

    flags: int
    channel: int
    payload: bytes


_FRAME_ERRORS: dict[int, tuple[type[FrameError], str]] = {
    ERR_MAGIC: (BadMagic, "bad magic: not a phoenix_trio frame"),
    ERR_VERSION: (UnsupportedVersion, "unsupported wire-format version"),
    ERR_TOO_LARGE: (FrameTooLarge, "frame payload larger than the limit"),
    ERR_CHECKSUM: (ChecksumMismatch, "CRC32C mismatch"),
    ERR_FLAGS: (ReservedFlags, "reserved flag bits set"),
    ERR_BATCH: (MalformedBatch, "malformed batch payload"),
}


def raise_for(code: int) -> None:
    """Raise the exception for a negative C status code (both implementations use it)."""
    entry = _FRAME_ERRORS.get(code)
    if entry is not None:
        cls, reason = entry
        raise cls(reason, code)
    if code == ERR_NOMEM:
        raise MemoryError("phoenix_trio core: out of memory")
    if code in (ERR_ARG, ERR_BUFFER):
        raise ConfigurationError("phoenix_trio core: invalid argument")
    raise FrameError(f"phoenix_trio core: error {code}", code)


def check_flags(flags: int) -> None:
    if not 0 <= flags <= 0xFF or flags & ~FLAGS_KNOWN:
        raise ConfigurationError(f"frame flags {flags:#x} use reserved bits")


def check_channel(channel: int) -> None:
    if not 0 <= channel <= 0xFFFFFFFF:
        raise ConfigurationError(f"channel {channel} does not fit in 32 bits")


def check_max_payload(max_payload: int) -> None:
    if not 0 <= max_payload <= MAX_PAYLOAD_LIMIT:
        raise ConfigurationError(f"max_payload must be between 0 and {MAX_PAYLOAD_LIMIT}, not {max_payload}")
