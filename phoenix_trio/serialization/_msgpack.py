"""The MessagePack format: phoenix_trio's default, compact and cross-language.

A message is one MessagePack array (layout 1, documented in ``docs/message.md``)::

    [1, id, source, type, data, subject, time, datacontenttype, dataschema,
     trace, causality, delivery, routing, security, qos, extensions]

``time`` is the MessagePack timestamp extension (type -1). ``trace`` is
``[trace_id, span_id, flags, tracestate]``; ``causality`` a map node -> counter; the
records are arrays whose enumerated fields are small integers indexing the tuples in
:mod:`phoenix_trio._message` and :mod:`phoenix_trio._taxonomy`; absent parts are nil.

Decoding validates everything and raises :class:`~phoenix_trio.DecodeError` for any
other input. Records that repeat (delivery and QoS are usually identical across
messages) are cached, and strings already validated (sources, content types) are
remembered in bounded caches, so decoding a stream costs little more than
``msgpack.unpackb``.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
import types
from typing import Any

import msgpack

from .._errors import DecodeError, EncodeError, ValidationError
from .._message import (
    EMPTY,
    Extensions,
    FANOUT_STRATEGIES,
    PATTERNS,
    RETRY_STRATEGIES,
    ROUTE_ORDERINGS,
    SPECVERSION,
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
    SecurityInfo,
    is_absolute_uri,
    is_uri_reference,
    validate_extension,
    validate_message,
)
from .._message import _MEDIA_TYPE_RE
from .._taxonomy import CONSISTENCIES, DELIVERY_MODES, ORDERINGS, PRIORITIES
from .._trace import TraceContext, parse_tracestate
from .._vclock import VectorClock, decode_clock

LAYOUT = 1
_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")
_SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_EMPTY = EMPTY

_DELIVERY_MODE_INDEX = {v: i for i, v in enumerate(DELIVERY_MODES)}
_RETRY_INDEX = {v: i for i, v in enumerate(RETRY_STRATEGIES)}
_ORDERING_INDEX = {v: i for i, v in enumerate(ORDERINGS)}
_PATTERN_INDEX = {v: i for i, v in enumerate(PATTERNS)}
_PRIORITY_INDEX = {v: i for i, v in enumerate(PRIORITIES)}
_ROUTE_ORDER_INDEX = {v: i for i, v in enumerate(ROUTE_ORDERINGS)}
_FANOUT_INDEX = {v: i for i, v in enumerate(FANOUT_STRATEGIES)}
_CONSISTENCY_INDEX = {v: i for i, v in enumerate(CONSISTENCIES)}


class _BoundedCache(dict):  # type: ignore[type-arg]
    """A dict that forgets everything when it reaches its bound (cheap, enough for hot sets)."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound

    def remember(self, key: Any, value: Any) -> Any:
        if len(self) >= self.bound:
            self.clear()
        self[key] = value
        return value


_valid_sources = _BoundedCache(4096)
_valid_media_types = _BoundedCache(256)
_valid_schemas = _BoundedCache(256)
_delivery_cache = _BoundedCache(1024)
_qos_cache = _BoundedCache(1024)
_routing_cache = _BoundedCache(1024)
_security_cache = _BoundedCache(1024)
_trace_state_cache = _BoundedCache(256)


# -- encoding -------------------------------------------------------------------------------


def _index(table: dict[str, int], value: str | None) -> int | None:
    return None if value is None else table[value]


def to_array(message: Message) -> list[Any]:
    """The layout-1 array for ``message`` (what :func:`encode` packs)."""
    trace = message.trace
    delivery = message.delivery
    routing = message.routing
    security = message.security
    qos = message.qos
    try:
        return [
            LAYOUT,
            message.id,
            message.source,
            message.type,
            message.data,
            message.subject,
            message.time,
            message.datacontenttype,
            message.dataschema,
            None if trace is None else [trace.trace_id, trace.span_id, trace.flags, trace.tracestate],
            None if message.causality is None else message.causality.entries,
            None
            if delivery is None
            else [
                _DELIVERY_MODE_INDEX[delivery.delivery_mode],
                delivery.timeout,
                _RETRY_INDEX[delivery.retry_strategy],
                delivery.max_retries,
                _ORDERING_INDEX[delivery.ordering_requirement],
                delivery.acknowledgment_required,
                delivery.duplicate_detection,
            ],
            None
            if routing is None
            else [
                _index(_PATTERN_INDEX, routing.pattern),
                routing.target,
                routing.topic,
                _PRIORITY_INDEX[routing.priority],
                routing.pipeline_id,
                _ROUTE_ORDER_INDEX[routing.ordering],
                _index(_FANOUT_INDEX, routing.fanout_strategy),
                routing.correlation_id,
            ],
            None
            if security is None
            else [
                security.agent_id,
                security.key_id,
                security.timestamp,
                security.nonce,
                security.mac,
                security.signature,
                security.signature_key_id,
                security.signature_alg,
                security.encryption_alg,
                security.encryption_key_id,
                security.encryption_nonce,
            ],
            None
            if qos is None
            else [_PRIORITY_INDEX[qos.priority], _CONSISTENCY_INDEX[qos.consistency], qos.latency_budget_ms, qos.ttl_ms],
            dict(message.extensions) if message.extensions else None,
        ]
    except KeyError as exc:
        raise EncodeError(f"message has an invalid enumerated value {exc.args[0]!r}") from None


def _default(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


_packers = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: ``msgpack.packb`` builds a new one per call, which costs a
    third of packing a message; a Packer resets its buffer after each pack, errors too."""
    try:
        return _packers.packer  # type: ignore[no-any-return]
    except AttributeError:
        _packers.packer = msgpack.Packer(use_bin_type=True, datetime=True, default=_default)
        return _packers.packer  # type: ignore[no-any-return]


def encode(message: Message) -> bytes:
    """The MessagePack bytes for ``message``; :class:`EncodeError` when data is not representable."""
    try:
        return _packer().pack(to_array(message))  # type: ignore[no-any-return]
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"msgpack cannot encode this message: {exc}") from None


# -- decoding -------------------------------------------------------------------------------


def _str_or_none(value: Any, name: str) -> str | None:
    if value is None or (type(value) is str and value and len(value) <= 4096):
        return value
    raise DecodeError(f"{name} must be a non-empty string or nil")


def _enum(table: tuple[str, ...], value: Any, name: str) -> str:
    if type(value) is int and 0 <= value < len(table):
        return table[value]
    raise DecodeError(f"{name}: invalid enumerated value {value!r}")


def _u31(value: Any, name: str) -> int:
    if type(value) is int and 0 <= value <= 0x7FFFFFFF:
        return value
    raise DecodeError(f"{name} must be an int between 0 and 2**31-1")


def _decode_trace(value: Any) -> TraceContext | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 4:
        raise DecodeError("trace must be [trace_id, span_id, flags, tracestate]")
    trace_id, span_id, flags, state = value
    if (
        type(trace_id) is not str
        or type(span_id) is not str
        or type(flags) is not int
        or not 0 <= flags <= 255
        or _TRACE_ID_RE.fullmatch(trace_id) is None
        or _SPAN_ID_RE.fullmatch(span_id) is None
        or trace_id == _ZERO_TRACE
        or span_id == _ZERO_SPAN
    ):
        raise DecodeError("malformed trace context (ids must be non-zero lowercase hex)")
    check_tracestate(state)
    return TraceContext(trace_id, span_id, flags, state)


def check_tracestate(state: Any) -> None:
    """Raise DecodeError unless ``state`` is a valid ``tracestate`` in normal form ("" included)."""
    if type(state) is not str:
        raise DecodeError("tracestate must be a string")
    if state:
        if state not in _trace_state_cache:
            try:
                normal = parse_tracestate(state) == state
            except DecodeError:
                normal = False
            _trace_state_cache.remember(state, normal)
        if not _trace_state_cache[state]:
            raise DecodeError("tracestate is malformed or not in normal form")


def _decode_delivery(value: Any) -> DeliveryGuarantee | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 7:
        raise DecodeError("delivery must be a 7-element array")
    key = tuple(value)
    try:
        cached = _delivery_cache.get(key)
    except TypeError:
        raise DecodeError("delivery holds unhashable values") from None
    if cached is not None:
        return cached
    mode, timeout, retry, max_retries, ordering, ack, dedup = value
    if type(ack) is not bool or type(dedup) is not bool:
        raise DecodeError("delivery flags must be booleans")
    record = DeliveryGuarantee(
        _enum(DELIVERY_MODES, mode, "delivery_mode"),
        _u31(timeout, "timeout"),
        _enum(RETRY_STRATEGIES, retry, "retry_strategy"),
        _u31(max_retries, "max_retries"),
        _enum(ORDERINGS, ordering, "ordering_requirement"),
        ack,
        dedup,
    )
    return _delivery_cache.remember(key, record)


def _decode_routing(value: Any) -> RoutingMetadata | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 8:
        raise DecodeError("routing must be an 8-element array")
    # Everything but the correlation id repeats across a sender's messages: validate
    # that part once (cached by value) and only the per-request correlation id each time.
    correlation = value[7]
    key = tuple(value[:7])
    try:
        shared = _routing_cache.get(key)
    except TypeError:
        raise DecodeError("routing holds unhashable values") from None
    if shared is None:
        pattern, target, topic, priority, pipeline_id, ordering, fanout = key
        shared = _routing_cache.remember(
            key,
            (
                None if pattern is None else _enum(PATTERNS, pattern, "pattern"),
                _str_or_none(target, "target"),
                _str_or_none(topic, "topic"),
                _enum(PRIORITIES, priority, "priority"),
                _str_or_none(pipeline_id, "pipeline_id"),
                _enum(ROUTE_ORDERINGS, ordering, "ordering"),
                None if fanout is None else _enum(FANOUT_STRATEGIES, fanout, "fanout_strategy"),
            ),
        )
    record = object.__new__(RoutingMetadata)
    setattr_ = object.__setattr__
    setattr_(record, "pattern", shared[0])
    setattr_(record, "target", shared[1])
    setattr_(record, "topic", shared[2])
    setattr_(record, "priority", shared[3])
    setattr_(record, "pipeline_id", shared[4])
    setattr_(record, "ordering", shared[5])
    setattr_(record, "fanout_strategy", shared[6])
    setattr_(record, "correlation_id", _str_or_none(correlation, "correlation_id"))
    return record


def _decode_security(value: Any) -> SecurityInfo | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 11:
        raise DecodeError("security must be an 11-element array")
    agent_id, key_id, timestamp, nonce, mac, signature, sig_key, sig_alg, enc_alg, enc_key, enc_nonce = value
    # A sender's identity-only record (no timestamp, nonce, MAC or signature) repeats on
    # every message it sends: validate it once. Per-message fields are never cached.
    per_message = not (timestamp is None and nonce is None and mac is None and signature is None and enc_nonce is None)
    if not per_message:
        key = (agent_id, key_id, sig_key, sig_alg, enc_alg, enc_key)
        try:
            cached = _security_cache.get(key)
        except TypeError:
            raise DecodeError("security holds unhashable values") from None
        if cached is not None:
            return cached
    try:
        record = SecurityInfo(*value)
    except ValidationError as exc:
        raise DecodeError(f"security: {exc}") from None
    return record if per_message else _security_cache.remember(key, record)


def _decode_qos(value: Any) -> QoSRequirements | None:
    if value is None:
        return None
    if type(value) is not list or len(value) != 4:
        raise DecodeError("qos must be a 4-element array")
    key = tuple(value)
    try:
        cached = _qos_cache.get(key)
    except TypeError:
        raise DecodeError("qos holds unhashable values") from None
    if cached is not None:
        return cached
    priority, consistency, latency, ttl = value
    record = QoSRequirements(
        _enum(PRIORITIES, priority, "qos priority"),
        _enum(CONSISTENCIES, consistency, "qos consistency"),
        None if latency is None else _u31(latency, "latency_budget_ms"),
        None if ttl is None else _u31(ttl, "ttl_ms"),
    )
    return _qos_cache.remember(key, record)


def _decode_extensions(value: Any) -> Any:
    if value is None:
        return _EMPTY
    if type(value) is not dict or not value:
        raise DecodeError("extensions must be a non-empty map or nil")
    if len(value) > 256:
        raise DecodeError("more than 256 extension attributes")
    try:
        for name, item in value.items():
            validate_extension(name, item)
    except ValidationError as exc:
        raise DecodeError(str(exc)) from None
    return Extensions(value)


def from_array(obj: Any) -> Message:
    """A validated Message from a decoded layout-1 array; raises :class:`DecodeError`."""
    if type(obj) is not list or len(obj) != 16 or obj[0] != LAYOUT:
        raise DecodeError("not a phoenix_trio msgpack message (layout 1, 16 elements)")
    (_, id_, source, type_, data, subject, time, contenttype, schema, trace, causality, delivery, routing, security, qos, ext) = obj
    if type(id_) is not str or not id_ or len(id_) > 4096:
        raise DecodeError("id must be a non-empty string")
    if type(type_) is not str or not type_ or len(type_) > 4096:
        raise DecodeError("type must be a non-empty string")
    if type(source) is not str or source not in _valid_sources:
        if not is_uri_reference(source):
            raise DecodeError("source must be a URI-reference")
        _valid_sources.remember(source, True)
    if subject is not None and (type(subject) is not str or not subject):
        raise DecodeError("subject must be a non-empty string or nil")
    if time is not None and type(time) is not _dt.datetime:
        raise DecodeError("time must be a msgpack timestamp")
    if contenttype is not None and (type(contenttype) is not str or contenttype not in _valid_media_types):
        if type(contenttype) is not str or _MEDIA_TYPE_RE.fullmatch(contenttype) is None:
            raise DecodeError("datacontenttype must be a media type")
        _valid_media_types.remember(contenttype, True)
    if schema is not None and (type(schema) is not str or schema not in _valid_schemas):
        if not is_absolute_uri(schema):
            raise DecodeError("dataschema must be an absolute URI")
        _valid_schemas.remember(schema, True)
    return Message(
        id_,
        source,
        type_,
        data,
        subject,
        time,
        contenttype,
        schema,
        _decode_trace(trace),
        None if causality is None else decode_clock(causality),
        _decode_delivery(delivery),
        _decode_routing(routing),
        _decode_security(security),
        _decode_qos(qos),
        _decode_extensions(ext),
        SPECVERSION,
    )


def unpack(payload: bytes | bytearray | memoryview) -> Any:
    """``msgpack.unpackb`` with phoenix_trio's settings; any failure is a DecodeError."""
    try:
        return msgpack.unpackb(payload, timestamp=3, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise DecodeError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None


def decode(payload: bytes | bytearray | memoryview) -> Message:
    """The Message in ``payload``; :class:`DecodeError` for any other bytes."""
    return from_array(unpack(payload))


__all__ = ["decode", "encode", "from_array", "to_array", "unpack", "validate_message"]
