"""Messages stamped per batch on the wire and decoded lazily on arrival.

On the hot path a sender does not build a :class:`~phoenix_trio.Message` for each send.
It queues the data with a template (source, type, delivery, routing, QoS: what repeats)
and, when the connection's writer takes a batch, stamps the whole batch at once: one
:class:`Stamp` reserves the batch's ids (UUIDv7, consecutive), its time, its vector
clock (consecutive counters for this node) and random bases for the span and trace ids.
Each message then travels as a short item: template, subject, data, parent trace,
correlation id, flags.

The receiver wraps each item in a :class:`WireMessage`: a real ``Message`` (a subclass,
so ``isinstance`` and equality behave) whose fields are computed from the stamp, the
template and the item when read. Creating one costs a few hundred nanoseconds instead
of building every field, and fields nobody reads are never built. Fields computed on
demand (``id``, ``trace``, ``causality``, ``routing``) are rebuilt on each read: equal
values, not the same objects.

What stamping at flush time means for users: ``time`` is when the writer took the
batch (at most one write later than the ``send`` call, well under a millisecond when
the link keeps up), and the vector clock includes everything the node had seen by
then (a causally later stamp is safe: it can only add dependencies).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from ._ids import format_compact, format_id
from ._message import SPECVERSION, Message, RoutingMetadata
from ._trace import TraceContext, _trusted as _trusted_trace
from ._trace import span_id_at, trace_id_at
from ._vclock import VectorClock, _trusted as _trusted_clock

_FIELDS = (
    "id",
    "source",
    "type",
    "data",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "trace",
    "causality",
    "delivery",
    "routing",
    "security",
    "qos",
    "extensions",
    "specversion",
)


class Stamp:
    """What a batch's messages share: id range, time, clock base, random id bases."""

    __slots__ = ("ms", "first_seq", "node_hex", "time", "clock_node", "clock_others", "clock_first", "span_base", "trace_base")

    def __init__(
        self,
        ms: int,
        first_seq: int,
        node_hex: str,
        time: _dt.datetime,
        clock_node: str,
        clock_others: dict[str, int],
        clock_first: int,
        span_base: int,
        trace_base: int,
    ) -> None:
        self.ms = ms
        self.first_seq = first_seq
        self.node_hex = node_hex
        self.time = time
        self.clock_node = clock_node
        self.clock_others = clock_others
        self.clock_first = clock_first
        self.span_base = span_base
        self.trace_base = trace_base


class WireMessage(Message):
    """A Message decoded lazily from a batch item. See the module docstring."""

    __slots__ = ("_wire", "_resp")
    _wire: tuple[Any, ...]
    _resp: Any
    # _wire = (stamp, template, item, index); item = [4, template_index, subject, data, parent, correlation_id, flags(, id, dseq)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Message(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS) + ")"

    def materialize(self) -> Message:
        """A plain Message with every field computed."""
        return Message(**{name: getattr(self, name) for name in _FIELDS})

    def __reduce__(self) -> Any:
        return (_rebuild, (self.materialize(),))


def _rebuild(message: Message) -> Message:
    return message


def _property(name: str, compute: Any) -> property:
    """A field read from the wire parts, or from the base slot when built normally (evolve)."""
    slot = Message.__dict__[name]
    slot_get, slot_set = slot.__get__, slot.__set__

    def fget(self: WireMessage) -> Any:
        try:
            wire = self._wire
        except AttributeError:  # built by Message.__init__ (attrs.evolve, unpickling)
            return slot_get(self, Message)
        return compute(wire)

    def fset(self: WireMessage, value: Any) -> None:
        slot_set(self, value)

    return property(fget, fset, doc=f"The message's {name}.")


def _id(wire: tuple[Any, ...]) -> str:
    item = wire[2]
    stamp = wire[0]
    if len(item) > 7:  # a reliable message keeps its id across retries
        ident = item[7]
        return ident if type(ident) is str else format_compact(ident, stamp.node_hex)
    return format_id(stamp.ms, stamp.first_seq + wire[3], stamp.node_hex)


def _trace(wire: tuple[Any, ...]) -> TraceContext:
    stamp, _, item, index = wire
    parent = item[4]
    span = span_id_at(stamp.span_base, index)
    if parent is None:
        return _trusted_trace(trace_id_at(stamp.trace_base, index), span, 1, "")
    return _trusted_trace(parent[0], span, parent[1], parent[2])


def _causality(wire: tuple[Any, ...]) -> VectorClock:
    stamp = wire[0]
    entries = stamp.clock_others.copy()
    entries[stamp.clock_node] = stamp.clock_first + wire[3]
    return _trusted_clock(entries)


def _routing(wire: tuple[Any, ...]) -> RoutingMetadata | None:
    routing = wire[1].routing
    correlation_id = wire[2][5]
    if correlation_id is None or routing is None:
        return routing
    record = object.__new__(RoutingMetadata)
    for field in ("pattern", "target", "topic", "priority", "pipeline_id", "ordering", "fanout_strategy"):
        object.__setattr__(record, field, getattr(routing, field))
    object.__setattr__(record, "correlation_id", correlation_id)
    return record


WireMessage.id = _property("id", _id)  # type: ignore[assignment, misc]
WireMessage.source = _property("source", lambda w: w[1].source)  # type: ignore[assignment, misc]
WireMessage.type = _property("type", lambda w: w[1].type)  # type: ignore[assignment, misc]
WireMessage.data = _property("data", lambda w: w[2][3])  # type: ignore[misc]
WireMessage.subject = _property("subject", lambda w: w[2][2])  # type: ignore[assignment, misc]
WireMessage.time = _property("time", lambda w: w[0].time)  # type: ignore[assignment, misc]
WireMessage.datacontenttype = _property("datacontenttype", lambda w: w[1].datacontenttype)  # type: ignore[assignment, misc]
WireMessage.dataschema = _property("dataschema", lambda w: w[1].dataschema)  # type: ignore[assignment, misc]
WireMessage.trace = _property("trace", _trace)  # type: ignore[assignment, misc]
WireMessage.causality = _property("causality", _causality)  # type: ignore[assignment, misc]
WireMessage.delivery = _property("delivery", lambda w: w[1].delivery)  # type: ignore[assignment, misc]
WireMessage.routing = _property("routing", _routing)  # type: ignore[assignment, misc]
WireMessage.security = _property("security", lambda w: None)  # type: ignore[assignment, misc]
WireMessage.qos = _property("qos", lambda w: w[1].qos)  # type: ignore[assignment, misc]
WireMessage.extensions = _property("extensions", lambda w: w[1].extensions)  # type: ignore[assignment, misc]
WireMessage.specversion = _property("specversion", lambda w: SPECVERSION)  # type: ignore[assignment, misc]


def _responder_property() -> property:
    slot = Message.__dict__["_responder"]
    slot_get, slot_set = slot.__get__, slot.__set__

    def fget(self: WireMessage) -> Any:
        try:
            return self._resp
        except AttributeError:
            return slot_get(self, Message)

    def fset(self: WireMessage, value: Any) -> None:
        try:
            self._resp  # noqa: B018 - a wire message keeps it in its own slot
        except AttributeError:
            slot_set(self, value)
        else:
            _set_resp(self, value)

    return property(fget, fset)


WireMessage._responder = _responder_property()  # type: ignore[assignment, misc]

_new = object.__new__
_set_wire = WireMessage.__dict__["_wire"].__set__
_set_resp = WireMessage.__dict__["_resp"].__set__


def wire_message(stamp: Stamp, template: Any, item: list[Any], index: int) -> WireMessage:
    """Wrap one decoded batch item (already validated by the protocol)."""
    message = _new(WireMessage)
    _set_wire(message, (stamp, template, item, index))
    _set_resp(message, None)
    return message
