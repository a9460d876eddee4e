"""Bytes for every overlay message: tagged msgpack, optionally lz4-compressed.

Wire layout: one format byte, then the body.

- ``0x00``: the body is a msgpack array ``[tag, field, field, ...]``.
- ``0x01``: the body is a 4-byte big-endian uncompressed length followed by an lz4 block
  holding the same msgpack array.

:func:`encode` compresses when asked and the message is larger than
:data:`COMPRESS_MIN` bytes (small messages do not shrink). :func:`decode` accepts either
form. Decoding any byte string either returns a valid message, every field checked
against its type and the bounds in :mod:`._messages`, or raises
:class:`phoenix_trio.DecodeError`; it never raises anything else and never inflates past
``max_size`` bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import lz4.block
import msgpack

from .._errors import DecodeError
from . import _messages as m

FORMAT_PLAIN = 0
FORMAT_LZ4 = 1
COMPRESS_MIN = 512
"""Messages with a msgpack body shorter than this are never compressed."""
DEFAULT_MAX_SIZE = m.MAX_PAYLOAD + 64 * 1024
"""Largest decoded msgpack body accepted by default: one maximal payload plus headroom."""

_LEN = struct.Struct(">I")
_Check = Callable[[Any], Any]


class _Bad(Exception):
    """Internal: a field failed validation (turned into DecodeError at the edge)."""


# -- field checks: each returns the value to store, or raises _Bad ------------------------


def _node(x: Any) -> str:
    if type(x) is not str or not 0 < len(x) <= m.MAX_NODE_ID:
        raise _Bad("node id must be a non-empty string of at most %d characters" % m.MAX_NODE_ID)
    return x


def _mid(x: Any) -> bytes:
    if type(x) is not bytes or not 0 < len(x) <= m.MAX_MESSAGE_ID:
        raise _Bad("message id must be 1 to %d bytes" % m.MAX_MESSAGE_ID)
    return x


def _opt_mid(x: Any) -> bytes | None:
    return None if x is None else _mid(x)


def _count(x: Any) -> int:
    if type(x) is not int or not 0 <= x <= m.MAX_COUNTER:
        raise _Bad("counter out of range")
    return x


def _flag(x: Any) -> bool:
    if type(x) is not bool:
        raise _Bad("expected a boolean")
    return x


def _payload(x: Any) -> bytes:
    if type(x) is not bytes or len(x) > m.MAX_PAYLOAD:
        raise _Bad("payload must be bytes of at most %d" % m.MAX_PAYLOAD)
    return x


def _text(x: Any) -> str:
    if type(x) is not str or len(x) > 256:
        raise _Bad("expected a short string")
    return x


def _seq(item: _Check, limit: int, *, unique: bool = False) -> _Check:
    def check(x: Any) -> tuple[Any, ...]:
        if type(x) is not tuple or len(x) > limit:
            raise _Bad("expected an array of at most %d items" % limit)
        out = tuple(item(v) for v in x)
        if unique and len(set(out)) != len(out):
            raise _Bad("duplicate items")
        return out

    return check


def _pair(x: Any) -> tuple[bytes, int]:
    if type(x) is not tuple or len(x) != 2:
        raise _Bad("expected an [id, round] pair")
    return _mid(x[0]), _count(x[1])


def _clock(x: Any) -> dict[str, int]:
    if type(x) is not dict or len(x) > m.MAX_CLOCK:
        raise _Bad("vector clock must be a map of at most %d entries" % m.MAX_CLOCK)
    return {_node(k): _count(v) for k, v in x.items()}


def _envelope(x: Any) -> m.GossipEnvelope:
    if type(x) is not tuple or len(x) != 6:
        raise _Bad("malformed gossip envelope")
    return m.GossipEnvelope(
        id=_mid(x[0]),
        payload=_payload(x[1]),
        ttl_ms=_count(x[2]),
        hop_count=_count(x[3]),
        origin_node=_node(x[4]),
        timestamp=_clock(x[5]),
    )


def _envelope_out(e: m.GossipEnvelope) -> list[Any]:
    return [e.id, e.payload, e.ttl_ms, e.hop_count, e.origin_node, e.timestamp]


def _path(x: Any) -> tuple[str, ...]:
    path = _seq(_node, m.MAX_PATH, unique=True)(x)
    if len(path) < 2:
        raise _Bad("a route has at least two nodes")
    return path


_views = _seq(_node, m.MAX_VIEW, unique=True)
_ids = _seq(_mid, m.MAX_IDS)

# tag -> (class, field checks in attribute order). Tags are part of the wire format:
# never renumber; add new ones at the end.
_SCHEMA: dict[int, tuple[type[Any], tuple[_Check, ...]]] = {
    1: (m.Join, ()),
    2: (m.ForwardJoin, (_node, _count)),
    3: (m.Welcome, (_views,)),
    4: (m.Neighbor, (_flag,)),
    5: (m.NeighborReply, (_flag,)),
    6: (m.Disconnect, (_flag,)),
    7: (m.Shuffle, (_node, _views, _count)),
    8: (m.ShuffleReply, (_views,)),
    9: (m.WelcomeAck, ()),
    10: (m.DisconnectAck, ()),
    20: (m.EagerPush, (_mid, _node, _count, _payload)),
    21: (m.IHave, (_seq(_pair, m.MAX_IDS),)),
    22: (m.Graft, (_opt_mid, _count)),
    23: (m.Prune, ()),
    40: (m.GossipPush, (_seq(_envelope, m.MAX_BATCH),)),
    41: (m.GossipDigest, (_ids,)),
    42: (m.GossipRequest, (_ids,)),
    60: (m.ServerHello, ()),
    61: (m.ClientHello, ()),
    62: (m.HelloReply, (_flag,)),
    63: (m.Goodbye, ()),
    80: (m.TreeJoin, (_node, _count, _count)),
    81: (m.TreeAdopt, (_seq(_node, m.MAX_PATH, unique=True),)),
    82: (m.TreeReject, (_text,)),
    83: (m.TreePath, (_seq(_node, m.MAX_PATH, unique=True),)),
    84: (m.TreeInfo, (_count, _count)),
    85: (m.TreeLeave, ()),
    100: (m.RouteRequest, (_mid, _node, _seq(_node, m.MAX_PATH, unique=True), _flag)),
    101: (m.RouteReply, (_mid, _path, _count)),
    102: (m.Routed, (_mid, _path, _count, _payload, _count)),
    103: (m.RouteError, (_mid, _path, _count, _payload, _count)),
}
_TAG: dict[type[Any], int] = {cls: tag for tag, (cls, _) in _SCHEMA.items()}
_FIELDS: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(a.name for a in cls.__attrs_attrs__) for cls, _ in _SCHEMA.values()
}
for _cls, _checks in _SCHEMA.values():
    assert len(_FIELDS[_cls]) == len(_checks), _cls

MESSAGE_TYPES: tuple[type[Any], ...] = tuple(_TAG)
"""Every message class the codec knows."""


def _validate_extra(msg: Any) -> None:
    # Cross-field rules that single-field checks cannot see.
    if isinstance(msg, m.RouteReply | m.Routed | m.RouteError) and msg.hop >= len(msg.path):
        raise _Bad("hop index beyond the route")
    if isinstance(msg, m.RouteRequest) and not msg.path:
        raise _Bad("a route request names its origin")


def encode(msg: Any, *, compress: bool = False) -> bytes:
    """The wire bytes for ``msg``; lz4-compressed when ``compress`` and it pays off.

    Raises :class:`TypeError` for an object that is not an overlay message.
    """
    cls = type(msg)
    tag = _TAG.get(cls)
    if tag is None:
        raise TypeError(f"not an overlay message: {msg!r}")
    values: list[Any] = [tag]
    for name in _FIELDS[cls]:
        value = getattr(msg, name)
        if cls is m.GossipPush:
            value = [_envelope_out(e) for e in value]
        values.append(value)
    body = msgpack.packb(values, use_bin_type=True)
    if compress and len(body) >= COMPRESS_MIN:
        packed = lz4.block.compress(body, store_size=False)
        if len(packed) + _LEN.size < len(body):
            return bytes([FORMAT_LZ4]) + _LEN.pack(len(body)) + packed
    return bytes([FORMAT_PLAIN]) + body


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """The message in ``data``; raises :class:`phoenix_trio.DecodeError` for anything invalid."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("overlay messages decode from bytes")
    data = bytes(data)
    if not data:
        raise DecodeError("empty message")
    if len(data) - 1 > max_size:
        raise DecodeError("message larger than %d bytes" % max_size)
    fmt = data[0]
    if fmt == FORMAT_PLAIN:
        body = data[1:]
    elif fmt == FORMAT_LZ4:
        if len(data) < 1 + _LEN.size:
            raise DecodeError("truncated compressed message")
        (size,) = _LEN.unpack_from(data, 1)
        if size > max_size:
            raise DecodeError("compressed message inflates past %d bytes" % max_size)
        try:
            body = lz4.block.decompress(data[1 + _LEN.size :], uncompressed_size=size)
        except Exception as exc:  # lz4 raises LZ4BlockError and others on corrupt input
            raise DecodeError(f"corrupt lz4 block: {exc}") from None
        if len(body) != size:
            raise DecodeError("lz4 block size mismatch")
    else:
        raise DecodeError(f"unknown overlay message format {fmt}")
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=m.MAX_PAYLOAD,
            max_bin_len=m.MAX_PAYLOAD,
            max_array_len=max(m.MAX_IDS, m.MAX_BATCH) + 1,
            max_map_len=m.MAX_CLOCK,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types (ValueError, FormatError, StackError...)
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    if type(obj) is not tuple or not obj or type(obj[0]) is not int:
        raise DecodeError("expected [tag, fields...]")
    entry = _SCHEMA.get(obj[0])
    if entry is None:
        raise DecodeError(f"unknown overlay message tag {obj[0]}")
    cls, checks = entry
    if len(obj) != len(checks) + 1:
        raise DecodeError(f"{cls.__name__}: expected {len(checks)} fields, got {len(obj) - 1}")
    try:
        msg = cls(*(check(value) for check, value in zip(checks, obj[1:], strict=True)))
        _validate_extra(msg)
    except _Bad as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None
    except (TypeError, ValueError, RecursionError) as exc:
        # e.g. a nested structure deep enough to exhaust the stack, or unhashable items
        raise DecodeError(f"{cls.__name__}: {type(exc).__name__}") from None
    return msg
