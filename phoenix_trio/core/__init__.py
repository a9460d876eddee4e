"""The C hot path: framing, batching, CRC32C and the token bucket, with a pure-Python twin.

The C core (``csrc/``, bound through cffi) is used when its extension loads. Set
``PHOENIX_TRIO_PUREPYTHON=1`` to use the pure-Python implementation instead; it is also
used, with a warning, when the extension is missing. Both have the same API and give
the same results: :data:`IMPLEMENTATION` says which one is active ("c" or "python").

Frames are described in ``docs/wire-format.md``. Quick tour::

    from phoenix_trio import core
    frame = core.encode_batch([b"a", b"bc"], channel=1)
    decoder = core.FrameDecoder()
    [f] = decoder.feed(frame)
    core.unpack_batch(f.payload)          # [b"a", b"bc"]
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from ._common import DEFAULT_MAX_PAYLOAD as DEFAULT_MAX_PAYLOAD
from ._common import FLAG_BATCH as FLAG_BATCH
from ._common import FLAG_COMPRESSED as FLAG_COMPRESSED
from ._common import FLAG_CONTROL as FLAG_CONTROL
from ._common import FLAG_ENCRYPTED as FLAG_ENCRYPTED
from ._common import FLAG_PRIORITY as FLAG_PRIORITY
from ._common import FLAGS_KNOWN as FLAGS_KNOWN
from ._common import HEADER_SIZE as HEADER_SIZE
from ._common import MAX_PAYLOAD_LIMIT as MAX_PAYLOAD_LIMIT
from ._common import VERSION as VERSION
from ._common import Frame as Frame

_log = logging.getLogger(__name__)


def _select() -> ModuleType:
    if os.environ.get("PHOENIX_TRIO_PUREPYTHON", "") not in ("", "0"):
        from . import _pure

        return _pure
    try:
        from . import _native
    except ImportError as exc:  # extension not built: fall back, like msgpack does
        _log.warning("phoenix_trio C core unavailable (%s); using the pure-Python implementation", exc)
        from . import _pure

        return _pure
    return _native


_impl = _select()

IMPLEMENTATION: str = _impl.IMPLEMENTATION
"""``"c"`` when the C core is in use, ``"python"`` for the pure-Python implementation."""

crc32c = _impl.crc32c
crc32c_implementation = _impl.crc32c_implementation
frame_header = _impl.frame_header
encode_frame = _impl.encode_frame
FrameDecoder = _impl.FrameDecoder
pack_batch = _impl.pack_batch
encode_batch = _impl.encode_batch
unpack_batch = _impl.unpack_batch
TokenBucket = _impl.TokenBucket


def implementation() -> str:
    """Which core is active: ``"c"`` or ``"python"``."""
    return IMPLEMENTATION


__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "FLAGS_KNOWN",
    "FLAG_BATCH",
    "FLAG_COMPRESSED",
    "FLAG_CONTROL",
    "FLAG_ENCRYPTED",
    "FLAG_PRIORITY",
    "HEADER_SIZE",
    "IMPLEMENTATION",
    "MAX_PAYLOAD_LIMIT",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "TokenBucket",
    "crc32c",
    "crc32c_implementation",
    "encode_batch",
    "encode_frame",
    "frame_header",
    "implementation",
    "pack_batch",
    "unpack_batch",
]
