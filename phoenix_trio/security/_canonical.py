"""The canonical byte form of a message: what the MAC and the signature cover.

One MessagePack array, encoded deterministically (``docs/security.md`` is the
reference)::

    [purpose, specversion, id, source, type, subject, time, datacontenttype, dataschema,
     data, trace, causality, delivery, routing, security, qos, extensions]

- ``purpose``: ``"phoenix-mac/1"`` for the HMAC, ``"phoenix-sig/1"`` for the signature,
  so neither input can be mistaken for the other.
- Records are arrays of their fields in declaration order, enumerations as their names
  (never table indexes), absent records and fields as nil; the vector clock and the
  extensions are maps.
- ``security`` has all eleven :class:`~phoenix_trio.SecurityInfo` fields with ``mac``
  always nil, and ``signature`` nil too in the signature's input (the MAC's input has
  it nil as well: the signature is computed after the MAC, over it).
- Deterministic MessagePack: integers in their shortest form, ``str`` as str (UTF-8),
  ``bytes`` as bin, floats as float 64, tuples as arrays, timestamps (aware datetimes,
  as instants: the UTC offset is not part of the form) as the timestamp extension in its
  shortest form, and every map's entries sorted by the bytes of their encoded keys.

Every format that round-trips a message (msgpack, JSON, protobuf, ETF) gives back the
same canonical bytes, so a message secured here verifies after any of them.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import msgpack

from .._errors import EncodeError
from .._message import Message

MAC_PURPOSE = "phoenix-mac/1"
SIGNATURE_PURPOSE = "phoenix-sig/1"
AEAD_PURPOSE = "phoenix-aead/1"

_SCALARS = frozenset({str, bytes, int, float, bool, type(None), _dt.datetime})


def _default(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


_packer = msgpack.Packer(use_bin_type=True, datetime=True, default=_default)
_key_packer = msgpack.Packer(use_bin_type=True, datetime=True, default=_default)


def _canon(value: Any) -> Any:
    """``value`` with every map's entries in canonical order (tuples become lists)."""
    kind = value.__class__
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, dict):
        if len(value) < 2:
            return {k: _canon(v) for k, v in value.items()}
        # Keys are hashable, so they hold no maps: their plain encoding is canonical.
        pack = _key_packer.pack
        try:
            entries = sorted(((pack(k), k, v) for k, v in value.items()), key=_first)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot put a map key in canonical form: {exc}") from None
        return {k: _canon(v) for _, k, v in entries}
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        return [_canon(item) for item in value]
    # scalars' subclasses (serialization.Atom ...) pack as their base type; bytearray and
    # memoryview as bin; anything else fails in the packer with EncodeError
    return value


def _first(entry: tuple[Any, ...]) -> Any:
    return entry[0]


def _pack(array: list[Any]) -> bytes:
    try:
        return _packer.pack(array)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"message cannot be put in canonical form: {exc}") from None


def _delivery(d: Any) -> list[Any] | None:
    if d is None:
        return None
    return [
        d.delivery_mode,
        d.timeout,
        d.retry_strategy,
        d.max_retries,
        d.ordering_requirement,
        d.acknowledgment_required,
        d.duplicate_detection,
    ]


def _routing(r: Any) -> list[Any] | None:
    if r is None:
        return None
    return [r.pattern, r.target, r.topic, r.priority, r.pipeline_id, r.ordering, r.fanout_strategy, r.correlation_id]


def _qos(q: Any) -> list[Any] | None:
    return None if q is None else [q.priority, q.consistency, q.latency_budget_ms, q.ttl_ms]


def canonical_bytes(message: Message, purpose: str) -> bytes:
    """The canonical form of ``message`` for ``purpose`` (:data:`MAC_PURPOSE` or :data:`SIGNATURE_PURPOSE`)."""
    trace = message.trace
    clock = message.causality
    s = message.security
    security = (
        None
        if s is None
        else [
            s.agent_id,
            s.key_id,
            s.timestamp,
            s.nonce,
            None,  # mac: never covered
            None,  # signature: computed after the MAC, over this form
            s.signature_key_id,
            s.signature_alg,
            s.encryption_alg,
            s.encryption_key_id,
            s.encryption_nonce,
        ]
    )
    extensions = message.extensions
    return _pack(
        [
            purpose,
            message.specversion,
            message.id,
            message.source,
            message.type,
            message.subject,
            message.time,
            message.datacontenttype,
            message.dataschema,
            _canon(message.data),
            None if trace is None else [trace.trace_id, trace.span_id, trace.flags, trace.tracestate],
            None if clock is None else dict(sorted(clock.entries.items(), key=_encoded_key)),
            _delivery(message.delivery),
            _routing(message.routing),
            security,
            _qos(message.qos),
            _canon(dict(extensions)) if extensions else None,
        ]
    )


def _encoded_key(item: tuple[str, Any]) -> bytes:
    return _key_packer.pack(item[0])  # type: ignore[no-any-return]


def associated_data(message: Message) -> bytes:
    """The AEAD's associated data: the attributes that identify the message's envelope."""
    return _pack([AEAD_PURPOSE, message.id, message.source, message.type, message.time])


def pack_data(data: Any) -> bytes:
    """The plaintext an encrypted message's ``data`` becomes (canonical MessagePack)."""
    return _pack(_canon(data))


def unpack_data(payload: bytes) -> Any:
    """The inverse of :func:`pack_data`; raises ``ValueError`` for anything else."""
    try:
        return msgpack.unpackb(payload, timestamp=3, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
