"""The universal message: a CloudEvents 1.0 envelope with the Phoenix extensions.

:class:`Message` holds the CloudEvents core attributes (``specversion`` is always
"1.0", the version CloudEvents requires producers to send) and six Phoenix extensions:
trace context, causality (vector clock), delivery guarantee, routing metadata, security
information and QoS requirements, plus any other CloudEvents extension attributes a
foreign producer set. :meth:`Message.new` fills the defaults the way the design does.

Construction is cheap and does not validate (decoders and :meth:`Message.new` do);
:func:`validate_message` checks every CloudEvents and Phoenix rule and says what is
wrong. The mapping of each Phoenix extension to real CloudEvents extension attributes
is :data:`EXTENSION_ATTRIBUTES`, documented in ``docs/message.md``.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import os
import re
import socket
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeGuard

import attrs

from ._errors import LocalProtocolError, ValidationError
from ._ids import new_id
from ._taxonomy import (
    CONSISTENCIES,
    DELIVERY_MODES,
    ORDERINGS,
    PRIORITIES,
    message_characteristics,
    validate_type,
)
from ._trace import TraceContext, next_hop_trace
from ._vclock import LocalClock, VectorClock

SPECVERSION = "1.0"
DEFAULT_TYPE = "phoenix.agent.message"
RETRY_STRATEGIES = ("exponential_backoff", "linear_backoff", "fixed", "none")
PATTERNS = (
    "point_to_point",
    "request_response",
    "publish_subscribe",
    "pipeline",
    "gossip",
    "consensus",
    "broadcast",
)
ROUTE_ORDERINGS = ("none", "sequential", "causal", "total")
FANOUT_STRATEGIES = ("immediate", "batched")
class Extensions(Mapping[str, Any]):
    """A read-only mapping of extra CloudEvents extension attributes (picklable, unlike mappingproxy)."""

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data) if data else {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Extensions are read-only")

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> Any:
        return (Extensions, (self._data,))


EMPTY: Mapping[str, Any] = Extensions()
UTC = _dt.timezone.utc


def _choice(allowed: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in allowed:
            raise ValidationError(f"{attribute.name} must be one of {', '.join(allowed)}; got {value!r}")

    return check


def _optional_choice(allowed: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    check = _choice(allowed)

    def optional(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


def _non_negative_int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or not 0 <= value <= 0x7FFFFFFF:
        raise ValidationError(f"{attribute.name} must be an int between 0 and 2**31-1; got {value!r}")


def _optional_non_negative_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _non_negative_int(instance, attribute, value)


def _optional_str(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not str or not value or len(value) > 4096):
        raise ValidationError(f"{attribute.name} must be a non-empty string of at most 4096 characters; got {value!r}")


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ValidationError(f"{attribute.name} must be a bool; got {value!r}")


@attrs.frozen(slots=True)
class DeliveryGuarantee:
    """How a message must be delivered (the design's ``Phoenix.Delivery.Guarantee``).

    ``timeout`` is in milliseconds. Defaults are the design's.
    """

    delivery_mode: str = attrs.field(default="at_least_once", validator=_choice(DELIVERY_MODES))
    timeout: int = attrs.field(default=5000, validator=_non_negative_int)
    retry_strategy: str = attrs.field(default="exponential_backoff", validator=_choice(RETRY_STRATEGIES))
    max_retries: int = attrs.field(default=3, validator=_non_negative_int)
    ordering_requirement: str = attrs.field(default="none", validator=_choice(ORDERINGS))
    acknowledgment_required: bool = attrs.field(default=True, validator=_bool)
    duplicate_detection: bool = attrs.field(default=False, validator=_bool)

    @classmethod
    def build(
        cls,
        delivery_mode: str,
        *,
        timeout: int = 5000,
        retry_strategy: str = "exponential_backoff",
        max_retries: int = 3,
        ordering: str = "none",
        ack_required: bool = True,
        duplicate_detection: bool = False,
    ) -> DeliveryGuarantee:
        """The design's ``build(delivery_mode, opts)`` with its option names."""
        return cls(delivery_mode, timeout, retry_strategy, max_retries, ordering, ack_required, duplicate_detection)


@attrs.frozen(slots=True)
class RoutingMetadata:
    """Where and how a message is routed (the design's ``Phoenix.Routing.Metadata``)."""

    pattern: str | None = attrs.field(default=None, validator=_optional_choice(PATTERNS))
    target: str | None = attrs.field(default=None, validator=_optional_str)
    topic: str | None = attrs.field(default=None, validator=_optional_str)
    priority: str = attrs.field(default="normal", validator=_choice(PRIORITIES))
    pipeline_id: str | None = attrs.field(default=None, validator=_optional_str)
    ordering: str = attrs.field(default="none", validator=_choice(ROUTE_ORDERINGS))
    fanout_strategy: str | None = attrs.field(default=None, validator=_optional_choice(FANOUT_STRATEGIES))
    correlation_id: str | None = attrs.field(default=None, validator=_optional_str)


@attrs.frozen(slots=True)
class QoSRequirements:
    """Quality-of-service requirements: priority, consistency, latency budget and lifetime.

    ``latency_budget_ms`` is the end-to-end latency the sender hopes for (a hint for
    protocol selection); ``ttl_ms`` is how long the message stays worth delivering.
    """

    priority: str = attrs.field(default="normal", validator=_choice(PRIORITIES))
    consistency: str = attrs.field(default="eventual", validator=_choice(CONSISTENCIES))
    latency_budget_ms: int | None = attrs.field(default=None, validator=_optional_non_negative_int)
    ttl_ms: int | None = attrs.field(default=None, validator=_optional_non_negative_int)


def _optional_bytes(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not bytes or len(value) > 1024):
        raise ValidationError(f"{attribute.name} must be at most 1024 bytes; got {type(value).__name__}")


def _optional_time(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, _dt.datetime) or value.tzinfo is None):
        raise ValidationError(f"{attribute.name} must be a timezone-aware datetime")


@attrs.frozen(slots=True)
class SecurityInfo:
    """Message-level security fields (filled by :mod:`phoenix_trio.security`).

    Authentication header (agent id, key id, timestamp, nonce, HMAC), signature (key id,
    algorithm, signature bytes) and payload encryption parameters (algorithm, key id,
    nonce). Every field is optional: a message carries what its policy requires.
    """

    agent_id: str | None = attrs.field(default=None, validator=_optional_str)
    key_id: str | None = attrs.field(default=None, validator=_optional_str)
    timestamp: _dt.datetime | None = attrs.field(default=None, validator=_optional_time)
    nonce: bytes | None = attrs.field(default=None, validator=_optional_bytes)
    mac: bytes | None = attrs.field(default=None, validator=_optional_bytes)
    signature: bytes | None = attrs.field(default=None, validator=_optional_bytes)
    signature_key_id: str | None = attrs.field(default=None, validator=_optional_str)
    signature_alg: str | None = attrs.field(default=None, validator=_optional_str)
    encryption_alg: str | None = attrs.field(default=None, validator=_optional_str)
    encryption_key_id: str | None = attrs.field(default=None, validator=_optional_str)
    encryption_nonce: bytes | None = attrs.field(default=None, validator=_optional_bytes)


def _no_empty_security(value: SecurityInfo | None) -> SecurityInfo | None:
    """An all-empty SecurityInfo carries nothing: store it as None.

    The CloudEvents attribute view (JSON, protobuf, HTTP headers) spreads the record over
    optional attributes, so "a record with no fields" and "no record" look the same
    there; normalising keeps every format's round trip exact.
    """
    if (
        type(value) is SecurityInfo
        and value.agent_id is None
        and value.key_id is None
        and value.timestamp is None
        and value.nonce is None
        and value.mac is None
        and value.signature is None
        and value.signature_key_id is None
        and value.signature_alg is None
        and value.encryption_alg is None
        and value.encryption_key_id is None
        and value.encryption_nonce is None
    ):
        return None
    return value


# -- the ambient node identity and clock ----------------------------------------------------

_DEFAULT_NODE = re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{os.getpid()}")
_local_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("phoenix_node", default=None)
_local_clock: contextvars.ContextVar[LocalClock | None] = contextvars.ContextVar("phoenix_clock", default=None)
_process_clock: LocalClock | None = None


def local_node_id() -> str:
    """The id of the node the running task belongs to (host-pid outside a node)."""
    return _local_node.get() or _DEFAULT_NODE


def local_clock() -> LocalClock:
    """The vector clock of the node the running task belongs to."""
    global _process_clock
    clock = _local_clock.get()
    if clock is not None:
        return clock
    if _process_clock is None or _process_clock.node != local_node_id():
        _process_clock = LocalClock(local_node_id())
    return _process_clock


def set_local_node(node_id: str, clock: LocalClock) -> tuple[contextvars.Token[str | None], contextvars.Token[LocalClock | None]]:
    """Make ``node_id``/``clock`` ambient for the running task and tasks it starts."""
    return _local_node.set(node_id), _local_clock.set(clock)


def reset_local_node(tokens: tuple[contextvars.Token[str | None], contextvars.Token[LocalClock | None]]) -> None:
    _local_node.reset(tokens[0])
    _local_clock.reset(tokens[1])


def node_uri(node: str, agent: str | None = None) -> str:
    """The ``source`` URI of a node or of one of its agents: ``phoenix://node/agent``."""
    return f"phoenix://{node}/{agent}" if agent else f"phoenix://{node}"


# -- the message ---------------------------------------------------------------------------


@attrs.frozen(slots=True, hash=False)
class Message:
    """One message: CloudEvents 1.0 attributes plus the Phoenix extensions.

    Build with :meth:`Message.new` (fills and validates the defaults) or the constructor
    (no validation; see :func:`validate_message`). Messages compare by value and are not
    hashable (``data`` may be any structure).
    """

    id: str
    source: str
    type: str
    data: Any = None
    subject: str | None = None
    time: _dt.datetime | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    trace: TraceContext | None = None
    causality: VectorClock | None = None
    delivery: DeliveryGuarantee | None = None
    routing: RoutingMetadata | None = None
    security: SecurityInfo | None = attrs.field(default=None, converter=_no_empty_security)
    qos: QoSRequirements | None = None
    extensions: Mapping[str, Any] = EMPTY
    specversion: str = SPECVERSION
    _responder: Callable[[Message, Any, dict[str, Any]], Awaitable[None]] | None = attrs.field(
        default=None, eq=False, repr=False, alias="_responder"
    )

    @classmethod
    def new(
        cls,
        data: Any = None,
        *,
        type: str = DEFAULT_TYPE,
        source: str | None = None,
        subject: str | None = None,
        id: str | None = None,
        time: _dt.datetime | None = None,
        datacontenttype: str | None = None,
        dataschema: str | None = None,
        trace: TraceContext | None = None,
        causality: VectorClock | None = None,
        delivery: str | DeliveryGuarantee | None = None,
        routing: RoutingMetadata | None = None,
        security: SecurityInfo | None = None,
        qos: QoSRequirements | None = None,
        extensions: Mapping[str, Any] | None = None,
        **routing_options: Any,
    ) -> Message:
        """A new, validated message with the design's defaults.

        - ``id``: a new UUIDv7 (unique, time-sortable); ``time``: now, UTC.
        - ``source``: the local node's URI; ``type``: ``phoenix.agent.message``.
        - ``trace``: a child of the current trace context, or a new trace.
        - ``causality``: the local vector clock, ticked.
        - ``delivery``/``routing``/``qos``: from the arguments, else from the type's
          characteristics (:func:`~phoenix_trio.message_characteristics`).
        - ``routing_options``: ``pattern``, ``target``, ``topic``, ``priority``,
          ``pipeline_id``, ``ordering``, ``fanout_strategy``, ``correlation_id`` build the
          routing metadata when ``routing`` is not given.
        """
        validate_type(type)
        traits = message_characteristics(type)
        if delivery is None:
            delivery = DeliveryGuarantee.build(traits.delivery, ordering=traits.ordering)
        elif isinstance(delivery, str):
            delivery = DeliveryGuarantee.build(delivery, ordering=traits.ordering)
        if routing is None:
            unknown = set(routing_options) - set(attrs.fields_dict(RoutingMetadata))
            if unknown:
                raise ValidationError(f"unknown Message.new option(s): {', '.join(sorted(unknown))}")
            routing_options.setdefault("priority", traits.priority)
            routing = RoutingMetadata(**routing_options)
        elif routing_options:
            raise ValidationError("give either routing= or routing options, not both")
        if qos is None:
            qos = QoSRequirements(priority=routing.priority, consistency=traits.consistency)
        if datacontenttype is None:
            datacontenttype = "application/octet-stream" if isinstance(data, (bytes, bytearray)) else "application/json"
        message = cls(
            id=id or new_id(),
            source=source or node_uri(local_node_id()),
            type=type,
            data=data,
            subject=subject,
            time=time or _dt.datetime.now(UTC),
            datacontenttype=datacontenttype,
            dataschema=dataschema,
            trace=trace or next_hop_trace(),
            causality=causality or local_clock().tick(),
            delivery=delivery,
            routing=routing,
            security=security,
            qos=qos,
            extensions=Extensions(extensions) if extensions else EMPTY,
        )
        validate_message(message)
        return message

    def evolve(self, **changes: Any) -> Message:
        """A copy with ``changes`` applied (not validated)."""
        return attrs.evolve(self, **changes)

    @property
    def correlation_id(self) -> str | None:
        return self.routing.correlation_id if self.routing is not None else None

    @property
    def is_request(self) -> bool:
        """Whether the sender waits for a reply (:meth:`reply` works)."""
        return self._responder is not None

    async def reply(self, data: Any = None, **options: Any) -> None:
        """Answer a request with ``data`` (type ``phoenix.agent.request.reply``).

        Only for messages received through ``node.request``; raises
        :class:`~phoenix_trio.LocalProtocolError` otherwise. Options are those of
        :meth:`Message.new`.
        """
        if self._responder is None:
            raise LocalProtocolError("this message was not sent as a request; there is nobody to reply to")
        await self._responder(self, data, options)


# -- validation -------------------------------------------------------------------------------

# RFC 3986 URI-reference: unreserved, reserved and percent-encoded characters only.
_URI_REF_RE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]{0,126}(\s*;.*)?")
_EXTENSION_NAME_RE = re.compile(r"[a-z0-9]{1,20}")
CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)

EXTENSION_ATTRIBUTES: Mapping[str, tuple[str, str]] = types.MappingProxyType(
    {
        # CloudEvents distributed-tracing extension
        "traceparent": ("trace", "traceparent"),
        "tracestate": ("trace", "tracestate"),
        # causality
        "phxvclock": ("causality", "encode()"),
        # delivery guarantee
        "phxdelivery": ("delivery", "delivery_mode"),
        "phxtimeout": ("delivery", "timeout"),
        "phxretry": ("delivery", "retry_strategy"),
        "phxmaxretries": ("delivery", "max_retries"),
        "phxordering": ("delivery", "ordering_requirement"),
        "phxack": ("delivery", "acknowledgment_required"),
        "phxdedup": ("delivery", "duplicate_detection"),
        # routing metadata
        "phxpattern": ("routing", "pattern"),
        "phxtarget": ("routing", "target"),
        "phxtopic": ("routing", "topic"),
        "phxpriority": ("routing", "priority"),
        "phxpipeline": ("routing", "pipeline_id"),
        "phxrouteorder": ("routing", "ordering"),
        "phxfanout": ("routing", "fanout_strategy"),
        "phxcorrelation": ("routing", "correlation_id"),
        # security
        "phxauthagent": ("security", "agent_id"),
        "phxauthkey": ("security", "key_id"),
        "phxauthtime": ("security", "timestamp"),
        "phxauthnonce": ("security", "nonce"),
        "phxauthmac": ("security", "mac"),
        "phxsig": ("security", "signature"),
        "phxsigkey": ("security", "signature_key_id"),
        "phxsigalg": ("security", "signature_alg"),
        "phxencalg": ("security", "encryption_alg"),
        "phxenckey": ("security", "encryption_key_id"),
        "phxencnonce": ("security", "encryption_nonce"),
        # QoS
        "phxqospriority": ("qos", "priority"),
        "phxqosconsistency": ("qos", "consistency"),
        "phxqoslatency": ("qos", "latency_budget_ms"),
        "phxqosttl": ("qos", "ttl_ms"),
    }
)
"""CloudEvents extension attribute name -> (Message field, record field) it carries."""

RESERVED_ATTRIBUTES = CORE_ATTRIBUTES | EXTENSION_ATTRIBUTES.keys()
_EXTENSION_VALUE_TYPES = (str, bool, int, bytes, _dt.datetime)


def is_uri_reference(value: object) -> TypeGuard[str]:
    return type(value) is str and len(value) <= 4096 and _URI_REF_RE.fullmatch(value) is not None


def is_absolute_uri(value: object) -> bool:
    return is_uri_reference(value) and _SCHEME_RE.match(value) is not None


def validate_message(message: Message, *, phoenix_type: bool = False) -> Message:
    """Check every CloudEvents 1.0 and Phoenix rule; raise :class:`ValidationError` naming the first broken one.

    ``phoenix_type=True`` also requires the type to follow the Phoenix taxonomy (foreign
    CloudEvents may use any non-empty type).
    """
    if message.specversion != SPECVERSION:
        raise ValidationError(f"specversion must be {SPECVERSION!r}, not {message.specversion!r}")
    for name in ("id", "source", "type"):
        value = getattr(message, name)
        if type(value) is not str or not value:
            raise ValidationError(f"{name} is required and must be a non-empty string")
    if len(message.id) > 4096 or len(message.type) > 4096:
        raise ValidationError("id and type are limited to 4096 characters")
    if not is_uri_reference(message.source):
        raise ValidationError(f"source must be a URI-reference (RFC 3986); got {message.source[:80]!r}")
    if phoenix_type:
        validate_type(message.type)
    if message.subject is not None and (type(message.subject) is not str or not message.subject):
        raise ValidationError("subject, when present, must be a non-empty string")
    if message.time is not None and (not isinstance(message.time, _dt.datetime) or message.time.tzinfo is None):
        raise ValidationError("time must be a timezone-aware datetime (RFC 3339 on the wire)")
    if message.datacontenttype is not None and (
        type(message.datacontenttype) is not str or _MEDIA_TYPE_RE.fullmatch(message.datacontenttype) is None
    ):
        raise ValidationError(f"datacontenttype must be a media type (RFC 2046); got {message.datacontenttype!r}")
    if message.dataschema is not None and not is_absolute_uri(message.dataschema):
        raise ValidationError(f"dataschema must be an absolute URI; got {message.dataschema!r}")
    for name, kind in (
        ("trace", TraceContext),
        ("causality", VectorClock),
        ("delivery", DeliveryGuarantee),
        ("routing", RoutingMetadata),
        ("security", SecurityInfo),
        ("qos", QoSRequirements),
    ):
        value = getattr(message, name)
        if value is not None and not isinstance(value, kind):
            raise ValidationError(f"{name} must be a {kind.__name__} or None, not {type(value).__name__}")
    for name, value in message.extensions.items():
        validate_extension(name, value)
    return message


def validate_extension(name: str, value: Any) -> None:
    """An extra CloudEvents extension attribute: valid name, not reserved, a CloudEvents type."""
    if type(name) is not str or _EXTENSION_NAME_RE.fullmatch(name) is None:
        raise ValidationError(f"extension attribute name {name!r} must be 1-20 lowercase letters or digits")
    if name in RESERVED_ATTRIBUTES:
        raise ValidationError(f"extension attribute name {name!r} is reserved")
    if not isinstance(value, _EXTENSION_VALUE_TYPES):
        raise ValidationError(f"extension {name!r}: value of type {type(value).__name__} is not a CloudEvents type")
    if type(value) is int and not -(2**31) <= value < 2**31:
        raise ValidationError(f"extension {name!r}: CloudEvents integers are 32-bit")
    if isinstance(value, _dt.datetime) and value.tzinfo is None:
        raise ValidationError(f"extension {name!r}: timestamps must be timezone-aware")
