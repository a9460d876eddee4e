"""The node-to-node protocol over one byte stream, sans-IO (bytes in, events out).

Like h11 and h2, :class:`PeerProtocol` never touches a socket: ``receive_data(bytes)``
returns events, and ``hello()``, ``control(...)`` and ``messages(...)`` return the bytes
to send. Any violation by the peer raises :class:`~phoenix_trio.RemoteProtocolError`
and moves the protocol to the terminal ``CLOSED`` state; ``error_bytes(exc)`` then
gives a final ERROR frame to send before closing. ``docs/wire-format.md`` specifies
everything below.

Frames (the C core's format, CRC32C checked) travel on two channels:

- channel 0, ``CONTROL`` flag: control messages, each a MessagePack array whose first
  element is a tag: HELLO, HEARTBEAT, GOODBYE, MEMBERS, AGENTS, ERROR, REQUEST_FAILED,
  ACKS, SERVICE (a payload for a named node-to-node service). The first frame each side sends is HELLO (protocol version, cluster name, node
  id, incarnation, listen address, features); nothing else is accepted before it.
- channel 2, ``BATCH`` flag (``COMPRESSED`` when lz4 was negotiated and the batch is
  large): overlay protocol messages, only between nodes that both announced the
  ``overlay`` feature. The payload is a C-core batch: item 0 a MessagePack map of node
  id -> ``[host, port]`` (addresses of nodes the messages mention), then one item per
  overlay message in :mod:`phoenix_trio.overlay`'s codec.
- channel 1: data. A frame's payload is one MessagePack array of items, so one frame
  (and one ``send_all``) carries up to :data:`MAX_BATCH` messages. Items are

  * ``[0, index, source, type, datacontenttype, dataschema, delivery, routing, qos, extensions]``
    defines template ``index``: the envelope fields that repeat between messages.
    Each connection direction has its own table of at most :data:`MAX_TEMPLATES`
    entries (bounded, like HPACK's dynamic table); the sender evicts least recently used.
  * ``[1, index, id, subject, data, time, trace, clock, correlation_id, flags]``: a
    message in compact form; everything else comes from template ``index``.
  * ``[2, flags, layout1]``: a message in the full MessagePack layout (used when it
    carries per-message security fields).

  * ``[5, ms, first_seq, node_hex, time, clock_node, clock_others, clock_first, span_base, trace_base]``
    (``trace_base``: 16 bytes, big-endian)
    stamps the batched messages that follow it in the frame (see
    :mod:`phoenix_trio._wire_message`): the i-th gets id number ``first_seq + i``, the
    frame's time, clock ``clock_others + {clock_node: clock_first + i}`` and span id
    ``span_base + i``.
  * ``[4, index, subject, data, parent, correlation_id, flags]``: a batched message
    (what ``node.send`` produces); ``parent`` is ``[trace_id, flags, tracestate]`` of
    the trace it continues, or nil for a new trace (id ``trace_base + i``).

  ``flags`` bit 0 asks for an acknowledgement once the message is in the agent's
  inbox; bit 1 marks a request waiting for a reply; bit 2 marks a reply; bit 3 asks for
  at-least-once and bit 4 for exactly-once delivery (see :mod:`phoenix_trio._delivery`):
  such items carry two more elements, the message id and the stream position
  (``[4, ..., flags, id, dseq]``, ``[1, ..., flags, dseq]``, ``[2, flags, layout1, dseq]``;
  a batched item's id may be compact: ``(ms << 16) | seq``, completed by the stamp's node part),
  and the receiver answers with DELIVERED control messages. Bit 5 marks a publication
  (the subject is a topic; the receiving node hands it to its matching subscriptions,
  see :mod:`phoenix_trio._pubsub`) and bit 6 a publication that spent a unit of the
  receiver's pub-sub credit.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
from collections import OrderedDict
from typing import Any

import attrs
import msgpack

from . import core
from ._errors import DecodeError, EncodeError, RemoteProtocolError
from ._message import (
    EMPTY,
    FANOUT_STRATEGIES,
    PATTERNS,
    RETRY_STRATEGIES,
    ROUTE_ORDERINGS,
    SPECVERSION,
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
)
from ._taxonomy import CONSISTENCIES, DELIVERY_MODES, ORDERINGS, PRIORITIES
from ._trace import TraceContext, _resolve as _resolve_trace
from ._wire_message import Stamp, wire_message
from ._vclock import MAX_COUNTER, decode_clock
from .serialization import _msgpack

PROTOCOL_VERSION = 1
CONTROL_CHANNEL = 0
DATA_CHANNEL = 1
OVERLAY_CHANNEL = 2
PRIMARY = "control"  # the channel name of a pair's primary connection
OVERLAY_COMPRESS_MIN = 512  # overlay batches shorter than this are never compressed
MAX_ADDRESSES = 1024  # entries in one overlay batch's address table
MAX_TEMPLATES = 4096
MAX_BATCH = 1024
MAX_LIST = 10_000
FEATURES = ("lz4", "templates")
COMPRESS_THRESHOLD = 64 * 1024

FLAG_ACK = 0x01
FLAG_REQUEST = 0x02
FLAG_REPLY = 0x04
FLAG_ALO = 0x08  # at-least-once: acknowledge when the agent has handled it
FLAG_EO = 0x10  # exactly-once: accept in stream order, de-duplicate, acknowledge cumulatively
FLAG_PUBLISH = 0x20  # pub-sub: the subject is a topic; the node's subscriptions get it (phoenix_trio._pubsub)
FLAG_CREDITED = 0x40  # pub-sub: the publisher spent a unit of the receiver's credit on it

_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_CHANNEL_RE = re.compile(r"[a-z0-9_-]{1,32}")
_NODE_HEX_RE = re.compile(r"[0-9a-f]{12}")
_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")
_SEQ_LIMIT = 1 << 26


class Tag(enum.IntEnum):
    HELLO = 1
    HEARTBEAT = 2
    GOODBYE = 3
    MEMBERS = 4
    AGENTS = 5
    ERROR = 6
    REQUEST_FAILED = 7
    ACKS = 8
    SERVICE = 9
    DELIVERED = 10


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


# -- events -----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Hello:
    node_id: str
    incarnation: int
    host: str
    port: int
    cluster: str = "phoenix"
    features: tuple[str, ...] = FEATURES
    version: int = PROTOCOL_VERSION
    channel: str = PRIMARY  # a secondary connection's channel name (HELLO's optional 9th field)
    lane: int = 0  # which of the channel's parallel connections


@attrs.frozen(slots=True)
class Heartbeat:
    pass


@attrs.frozen(slots=True)
class Goodbye:
    reason: str


@attrs.frozen(slots=True)
class Members:
    members: list[tuple[str, str, int, int]]  # node_id, host, port, incarnation


@attrs.frozen(slots=True)
class AgentUpdate:
    agent_id: str
    group: str | None
    up: bool


@attrs.frozen(slots=True)
class Agents:
    full: bool
    updates: list[AgentUpdate]


@attrs.frozen(slots=True)
class PeerError:
    code: str
    reason: str


@attrs.frozen(slots=True)
class RequestFailed:
    correlation_id: str
    kind: str
    detail: str


@attrs.frozen(slots=True)
class Acks:
    acks: list[tuple[str, str]]  # correlation id, agent id


@attrs.frozen(slots=True)
class ServicePayload:
    """A payload for the named node-to-node service (see :mod:`phoenix_trio._service`)."""

    name: str
    payload: bytes


@attrs.frozen(slots=True)
class OverlayBatch:
    """Overlay protocol messages from one overlay frame, with the addresses they carried."""

    addresses: dict[str, tuple[str, int]]
    messages: list[Any]


@attrs.frozen(slots=True)
class DataBatch:
    """Messages from one data frame, each with its flags, and the stream positions
    (index -> dseq) of those sent at-least-once or exactly-once."""

    messages: list[Message]
    flags: list[int]
    positions: dict[int, int] | None = None


@attrs.frozen(slots=True)
class Delivered:
    """Acknowledgements for reliable messages: at-least-once ones as (agent, first, last)
    ranges of consecutive stream positions; exactly-once ones cumulative (agent, dseq)."""

    at_least_once: list[tuple[str, int, int]]
    exactly_once: list[tuple[str, int]]


# -- helpers ----------------------------------------------------------------------------


def _fail(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(reason)


def _str(value: Any, what: str, *, limit: int = 4096, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not str or not value or len(value) > limit:
        raise _fail(f"{what} must be a non-empty string")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(f"{what} must be an int in [{low}, {high}]")
    return value


def _list(value: Any, what: str, limit: int = MAX_LIST) -> list[Any]:
    if type(value) is not list or len(value) > limit:
        raise _fail(f"{what} must be a list of at most {limit} items")
    return value


def node_id_ok(node_id: str) -> bool:
    return type(node_id) is str and _NODE_ID_RE.fullmatch(node_id) is not None


@attrs.frozen(slots=True, eq=False)
class SendTemplate:
    """The envelope fields that repeat between messages a node sends (shared, never copied)."""

    source: str
    type: str
    datacontenttype: str
    delivery: DeliveryGuarantee
    routing: RoutingMetadata
    qos: QoSRequirements
    dataschema: None = None
    extensions: Any = attrs.field(factory=lambda: EMPTY)
    mode: int = 0  # 0, FLAG_ALO or FLAG_EO: what the delivery record asks of the transport
    policy: Any = None  # its RetryPolicy when mode is set
    channel: str | None = None  # the channel asked for at send time (None: chosen by the node)


@attrs.define(slots=True)
class _Template:
    source: str
    type: str
    datacontenttype: str | None
    dataschema: str | None
    delivery: DeliveryGuarantee | None
    routing: RoutingMetadata | None  # without correlation id
    qos: QoSRequirements | None
    extensions: Any


_DELIVERY_MODE = {v: i for i, v in enumerate(DELIVERY_MODES)}
_RETRY = {v: i for i, v in enumerate(RETRY_STRATEGIES)}
_ORDERING = {v: i for i, v in enumerate(ORDERINGS)}
_PATTERN = {v: i for i, v in enumerate(PATTERNS)}
_PRIORITY = {v: i for i, v in enumerate(PRIORITIES)}
_ROUTE_ORDER = {v: i for i, v in enumerate(ROUTE_ORDERINGS)}
_FANOUT = {v: i for i, v in enumerate(FANOUT_STRATEGIES)}
_CONSISTENCY = {v: i for i, v in enumerate(CONSISTENCIES)}


def _routing_key(r: RoutingMetadata | None) -> tuple[Any, ...] | None:
    if r is None:
        return None
    return (r.pattern, r.target, r.topic, r.priority, r.pipeline_id, r.ordering, r.fanout_strategy)


def _routing_array(r: RoutingMetadata | None) -> list[Any] | None:
    if r is None:
        return None
    return [
        None if r.pattern is None else _PATTERN[r.pattern],
        r.target,
        r.topic,
        _PRIORITY[r.priority],
        r.pipeline_id,
        _ROUTE_ORDER[r.ordering],
        None if r.fanout_strategy is None else _FANOUT[r.fanout_strategy],
        None,
    ]


def _with_correlation(routing: RoutingMetadata, correlation_id: str) -> RoutingMetadata:
    record = object.__new__(RoutingMetadata)
    for field in ("pattern", "target", "topic", "priority", "pipeline_id", "ordering", "fanout_strategy"):
        object.__setattr__(record, field, getattr(routing, field))
    object.__setattr__(record, "correlation_id", correlation_id)
    return record


class _EncoderTemplates:
    """The sender's side of one connection's template table (LRU over MAX_TEMPLATES)."""

    def __init__(self) -> None:
        # identity key (objects kept alive by the entry) -> (index, value key)
        self._by_identity: OrderedDict[tuple[Any, ...], tuple[int, tuple[Any, ...], tuple[Any, ...]]] = OrderedDict()
        self._by_value: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._value_of_index: dict[int, tuple[Any, ...]] = {}
        self._by_send_template: dict[SendTemplate, tuple[int, tuple[Any, ...]]] = {}
        self._free = list(range(MAX_TEMPLATES - 1, -1, -1))

    def index_for_template(self, t: SendTemplate, out: list[Any]) -> int:
        """Fast path for a node's shared send templates (hashed by identity)."""
        hit = self._by_send_template.get(t)
        if hit is not None:
            index, value = hit
            self._by_value.move_to_end(value)
            return index
        index = self.index_for(t, out)  # type: ignore[arg-type]
        value = self._value_of_index[index]
        if len(self._by_send_template) >= MAX_TEMPLATES:
            self._by_send_template.clear()
        self._by_send_template[t] = (index, value)
        return index

    def index_for(self, m: Message, out: list[Any]) -> int:
        routing = m.routing
        identity = (m.source, m.type, m.datacontenttype, m.dataschema, id(m.delivery), id(routing), id(m.qos), id(m.extensions))
        hit = self._by_identity.get(identity)
        if hit is not None and (routing is None or routing.correlation_id is None):
            self._by_identity.move_to_end(identity)
            self._by_value.move_to_end(hit[1])
            return hit[0]
        value = (
            m.source,
            m.type,
            m.datacontenttype,
            m.dataschema,
            m.delivery,
            _routing_key(routing),
            m.qos,
            tuple(sorted(m.extensions.items())) if m.extensions else None,
        )
        index = self._by_value.get(value)
        if index is None:
            index = self._define(value, m, out)
        else:
            self._by_value.move_to_end(value)
        if routing is None or routing.correlation_id is None:
            # Keep the keyed objects alive so their ids stay unique while cached.
            keep = (m.delivery, routing, m.qos, m.extensions)
            self._by_identity[identity] = (index, value, keep)
            if len(self._by_identity) > MAX_TEMPLATES:
                self._by_identity.popitem(last=False)
        return index

    def _define(self, value: tuple[Any, ...], m: Message, out: list[Any]) -> int:
        if self._free:
            index = self._free.pop()
        else:
            old_value, index = self._by_value.popitem(last=False)
            stale = [k for k, v in self._by_identity.items() if v[1] == old_value]
            for key in stale:
                del self._by_identity[key]
            gone = [t for t, (_, v) in self._by_send_template.items() if v == old_value]
            for template in gone:
                del self._by_send_template[template]
        self._by_value[value] = index
        self._value_of_index[index] = value
        d = m.delivery
        q = m.qos
        out.append(
            [
                0,
                index,
                m.source,
                m.type,
                m.datacontenttype,
                m.dataschema,
                None
                if d is None
                else [
                    _DELIVERY_MODE[d.delivery_mode],
                    d.timeout,
                    _RETRY[d.retry_strategy],
                    d.max_retries,
                    _ORDERING[d.ordering_requirement],
                    d.acknowledgment_required,
                    d.duplicate_detection,
                ],
                _routing_array(m.routing),
                None if q is None else [_PRIORITY[q.priority], _CONSISTENCY[q.consistency], q.latency_budget_ms, q.ttl_ms],
                dict(m.extensions) if m.extensions else None,
            ]
        )
        return index


def _default(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


class PeerProtocol:
    """One connection's protocol state. See the module docstring."""

    def __init__(self, local: Hello, *, max_frame: int = core.DEFAULT_MAX_PAYLOAD) -> None:
        self.local = local
        self.max_frame = max_frame
        self.state = State.HANDSHAKING
        self.peer: Hello | None = None
        self._decoder = core.FrameDecoder(max_payload=max_frame)
        self._templates_out = _EncoderTemplates()
        self._templates_in: list[_Template | None] = [None] * MAX_TEMPLATES
        self._compress = False
        self.compress_overlay = True  # overlay frames: lz4 when negotiated (the gossip config can turn it off)
        self._valid_trace_ids: set[str] = set()
        self.frames_received = 0
        self.messages_received = 0

    # -- outgoing -------------------------------------------------------------------

    def hello(self) -> bytes:
        h = self.local
        fields = [Tag.HELLO, h.version, h.cluster, h.node_id, h.incarnation, h.host, h.port, list(h.features)]
        if h.channel != PRIMARY:
            fields.append({"channel": h.channel, "lane": h.lane})
        return self._control(fields)

    def heartbeat(self) -> bytes:
        return self._control([Tag.HEARTBEAT])

    def goodbye(self, reason: str = "shutdown") -> bytes:
        return self._control([Tag.GOODBYE, reason])

    def members(self, members: list[tuple[str, str, int, int]]) -> bytes:
        return self._control([Tag.MEMBERS, [list(m) for m in members]])

    def agents(self, full: bool, updates: list[AgentUpdate]) -> bytes:
        return self._control([Tag.AGENTS, full, [[u.agent_id, u.group, u.up] for u in updates]])

    def request_failed(self, correlation_id: str, kind: str, detail: str) -> bytes:
        return self._control([Tag.REQUEST_FAILED, correlation_id, kind, detail[:500]])

    def acks(self, acks: list[tuple[str, str]]) -> bytes:
        return self._control([Tag.ACKS, [list(a) for a in acks]])

    def delivered(self, at_least_once: list[list[Any]], exactly_once: list[tuple[str, int]]) -> bytes:
        """DELIVERED messages for these acknowledgements (``[agent, first, last]`` ranges and
        ``(agent, position)`` pairs): as many as the receiver's limit of :data:`MAX_LIST`
        entries per list requires."""
        if len(at_least_once) <= MAX_LIST and len(exactly_once) <= MAX_LIST:
            return self._control([Tag.DELIVERED, at_least_once, [list(a) for a in exactly_once]])
        out = []
        for start in range(0, max(len(at_least_once), len(exactly_once)), MAX_LIST):
            alo = at_least_once[start : start + MAX_LIST]
            eo = exactly_once[start : start + MAX_LIST]
            out.append(self._control([Tag.DELIVERED, alo, [list(a) for a in eo]]))
        return b"".join(out)

    def service(self, name: str, payload: bytes) -> bytes:
        return self._control([Tag.SERVICE, name, payload])

    def overlay(self, messages: list[bytes], addresses: dict[str, tuple[str, int]] | None = None) -> bytes:
        """Overlay frames carrying ``messages`` (each encoded by the overlay codec), in order.

        One C-core batch per frame (split when it would pass the frame limit), lz4-compressed
        as a whole when both sides offered lz4 and it is at least ``OVERLAY_COMPRESS_MIN`` bytes.
        """
        table = msgpack.packb({k: [h, p] for k, (h, p) in (addresses or {}).items()})
        out: list[bytes] = []
        limit = self.max_frame // 2
        start = 0
        while start < len(messages) or not out:
            size = len(table)
            end = start
            while end < len(messages) and (end == start or size + len(messages[end]) + 5 <= limit):
                size += len(messages[end]) + 5
                end += 1
            body = core.pack_batch([table, *messages[start:end]])
            flags = core.FLAG_BATCH
            if self._compress and self.compress_overlay and len(body) >= OVERLAY_COMPRESS_MIN:
                from .serialization import compress

                packed, used = compress(body, "lz4", threshold=OVERLAY_COMPRESS_MIN)
                if used:
                    body, flags = packed, flags | core.FLAG_COMPRESSED
            if len(body) > self.max_frame:
                raise EncodeError(f"overlay message of {len(body)} bytes exceeds the {self.max_frame}-byte frame limit")
            out.append(core.encode_frame(body, channel=OVERLAY_CHANNEL, flags=flags))
            start = end
        return b"".join(out)

    def error_bytes(self, error: Exception) -> bytes:
        """A final ERROR frame telling the peer why we close."""
        return self._control([Tag.ERROR, type(error).__name__, str(error)[:500]])

    def _control(self, message: list[Any]) -> bytes:
        return core.encode_frame(msgpack.packb(message), channel=CONTROL_CHANNEL, flags=core.FLAG_CONTROL)

    def messages(self, entries: list[tuple[Any, ...]], stamper: Any = None) -> bytes:
        """Frames carrying ``entries``: ``(message, flags)`` for a built Message, or
        ``(template, data, subject, trace_parent, correlation_id, flags)`` for a message
        stamped here, per frame, by ``stamper(count) -> Stamp fields``."""
        out: list[bytes] = []
        for start in range(0, len(entries), MAX_BATCH):
            out.append(self._data_frame(entries[start : start + MAX_BATCH], stamper))
        return b"".join(out)

    def _data_frame(self, entries: list[tuple[Any, ...]], stamper: Any) -> bytes:
        items: list[Any] = []
        templates = self._templates_out
        batched = 0
        last_parent: Any = None
        last_parent_item: Any = None
        for entry in entries:
            size = len(entry)
            if size >= 6:
                template, data, subject, parent, correlation_id, f = entry[:6]
                if parent is not last_parent:  # consecutive sends usually share the parent
                    last_parent = parent
                    resolved = _resolve_trace(parent)
                    last_parent_item = None if resolved is None else [resolved.trace_id, resolved.flags, resolved.tracestate]
                item = [4, templates.index_for_template(template, items), subject, data, last_parent_item, correlation_id, f]
                if size == 8:  # reliable: stable id and stream position
                    item.append(entry[6])
                    item.append(entry[7])
                items.append(item)
                batched += 1
                continue
            if len(entry) == 3:
                m, f, dseq = entry
            else:
                m, f = entry
                dseq = None
            if m.security is not None or m.specversion != SPECVERSION:
                items.append([2, f, _msgpack.to_array(m)] if dseq is None else [2, f, _msgpack.to_array(m), dseq])
                continue
            index = templates.index_for(m, items)
            trace = m.trace
            routing = m.routing
            items.append(
                [
                    1,
                    index,
                    m.id,
                    m.subject,
                    m.data,
                    m.time,
                    None if trace is None else [trace.trace_id, trace.span_id, trace.flags, trace.tracestate],
                    None if m.causality is None else m.causality.entries,
                    None if routing is None else routing.correlation_id,
                    f,
                ]
            )
            if dseq is not None:
                items[-1].append(dseq)
        if batched:
            if stamper is None:
                raise EncodeError("batched messages need a stamper")
            items.insert(0, [5, *stamper(batched)])
        try:
            payload = msgpack.packb(items, use_bin_type=True, datetime=True, default=_default)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode message data: {exc}") from None
        if len(payload) > self.max_frame:  # checked before compression: the receiver bounds inflation by it
            if len(entries) == 1:
                raise EncodeError(f"message of {len(payload)} bytes exceeds the {self.max_frame}-byte frame limit")
            half = len(entries) // 2
            # This attempt registered templates whose definitions will never be sent:
            # start a fresh table so the halves define again whatever they use (the
            # receiver simply overwrites those indices).
            self._templates_out = _EncoderTemplates()
            return self._data_frame(entries[:half], stamper) + self._data_frame(entries[half:], stamper)
        frame_flags = 0
        if self._compress and len(payload) >= COMPRESS_THRESHOLD:
            from .serialization import compress

            packed, used = compress(payload, "lz4", threshold=COMPRESS_THRESHOLD)
            if used:
                payload, frame_flags = packed, core.FLAG_COMPRESSED
        return core.encode_frame(payload, channel=DATA_CHANNEL, flags=frame_flags)

    # -- incoming -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[object]:
        """Events for the bytes received; raises RemoteProtocolError (then CLOSED)."""
        if self.state is State.CLOSED:
            raise RemoteProtocolError("connection already closed")
        try:
            frames = self._decoder.feed(data)
            events: list[object] = []
            for frame in frames:
                self.frames_received += 1
                if frame.channel == CONTROL_CHANNEL and frame.flags & core.FLAG_CONTROL:
                    events.append(self._on_control(frame.payload))
                elif frame.channel == DATA_CHANNEL and not frame.flags & core.FLAG_CONTROL:
                    if self.state is not State.OPEN:
                        raise _fail("data before HELLO")
                    payload = frame.payload
                    if frame.flags & core.FLAG_COMPRESSED:
                        from .serialization import decompress

                        payload = decompress(payload, "lz4", max_size=self.max_frame)
                    events.append(self._on_data(payload))
                elif frame.channel == OVERLAY_CHANNEL and frame.flags & core.FLAG_BATCH and not frame.flags & core.FLAG_CONTROL:
                    if self.state is not State.OPEN or "overlay" not in self.local.features:
                        raise _fail("overlay frame without an overlay handshake")
                    payload = frame.payload
                    if frame.flags & core.FLAG_COMPRESSED:
                        from .serialization import decompress

                        payload = decompress(payload, "lz4", max_size=self.max_frame)
                    events.append(self._on_overlay(payload))
                else:
                    raise _fail(f"unexpected frame on channel {frame.channel} with flags {frame.flags:#x}")
            return events
        except DecodeError as exc:
            self.state = State.CLOSED
            raise RemoteProtocolError(f"bad bytes from peer: {exc}") from exc
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise

    def _on_control(self, payload: bytes) -> object:
        try:
            message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        except Exception as exc:
            raise _fail(f"undecodable control message: {exc}") from None
        if type(message) is not list or not message or type(message[0]) is not int:
            raise _fail("control message must be a tagged array")
        tag = message[0]
        if self.state is State.HANDSHAKING:
            if tag == Tag.ERROR and len(message) == 3:
                return PeerError(str(message[1])[:100], str(message[2])[:500])
            if tag != Tag.HELLO:
                raise _fail("first control message must be HELLO")
            return self._on_hello(message)
        if tag == Tag.HEARTBEAT:
            return Heartbeat()
        if tag == Tag.GOODBYE and len(message) == 2:
            return Goodbye(_str(message[1], "goodbye reason", limit=500))
        if tag == Tag.MEMBERS and len(message) == 2:
            members = []
            for entry in _list(message[1], "members", 1024):
                if type(entry) is not list or len(entry) != 4:
                    raise _fail("member entry must be [node_id, host, port, incarnation]")
                node_id = _str(entry[0], "member node id", limit=128)
                if not node_id_ok(node_id):
                    raise _fail(f"invalid node id {node_id!r}")
                members.append((node_id, _str(entry[1], "host", limit=255), _int(entry[2], "port", 1, 65535), _int(entry[3], "incarnation", 0, 2**63 - 1)))
            return Members(members)
        if tag == Tag.AGENTS and len(message) == 3:
            if type(message[1]) is not bool:
                raise _fail("AGENTS full flag must be a bool")
            updates = []
            for entry in _list(message[2], "agents"):
                if type(entry) is not list or len(entry) != 3 or type(entry[2]) is not bool:
                    raise _fail("agent entry must be [agent_id, group, up]")
                updates.append(AgentUpdate(_str(entry[0], "agent id", limit=256), _str(entry[1], "group", limit=256, optional=True), entry[2]))
            return Agents(message[1], updates)
        if tag == Tag.DELIVERED and len(message) == 3:
            ranges = []
            for entry in _list(message[1], "acknowledgements"):
                if type(entry) is not list or len(entry) != 3:
                    raise _fail("at-least-once acknowledgement must be [agent_id, first, last]")
                first = _int(entry[1], "position", 1, 2**63 - 1)
                last = _int(entry[2], "position", first, min(2**63 - 1, first + 1_000_000))
                if first >> 40 != last >> 40:
                    raise _fail("an acknowledged range cannot span epochs")
                ranges.append((_str(entry[0], "agent id", limit=256), first, last))
            cumulative = []
            for entry in _list(message[2], "acknowledgements"):
                if type(entry) is not list or len(entry) != 2:
                    raise _fail("exactly-once acknowledgement must be [agent_id, position]")
                cumulative.append((_str(entry[0], "agent id", limit=256), _int(entry[1], "position", 1, 2**63 - 1)))
            return Delivered(ranges, cumulative)
        if tag == Tag.SERVICE and len(message) == 3:
            if type(message[2]) is not bytes:
                raise _fail("service payload must be bytes")
            return ServicePayload(_str(message[1], "service name", limit=64), message[2])
        if tag == Tag.ERROR and len(message) == 3:
            return PeerError(str(message[1])[:100], str(message[2])[:500])
        if tag == Tag.REQUEST_FAILED and len(message) == 4:
            return RequestFailed(_str(message[1], "correlation id"), _str(message[2], "kind", limit=64), str(message[3])[:500])
        if tag == Tag.ACKS and len(message) == 2:
            acks = []
            for entry in _list(message[1], "acks"):
                if type(entry) is not list or len(entry) != 2:
                    raise _fail("ack entry must be [correlation_id, agent_id]")
                acks.append((_str(entry[0], "correlation id"), _str(entry[1], "agent id", limit=256)))
            return Acks(acks)
        raise _fail(f"unknown or malformed control message (tag {tag})")

    def _on_overlay(self, payload: bytes) -> OverlayBatch:
        from .overlay._codec import decode as overlay_decode

        items = core.unpack_batch(payload)  # MalformedBatch is a DecodeError
        if not items:
            raise _fail("overlay batch without its address table")
        try:
            table = msgpack.unpackb(items[0], raw=False, strict_map_key=True)
        except Exception as exc:
            raise _fail(f"undecodable overlay address table: {exc}") from None
        if type(table) is not dict or len(table) > MAX_ADDRESSES:
            raise _fail("overlay address table must be a map of at most %d entries" % MAX_ADDRESSES)
        addresses: dict[str, tuple[str, int]] = {}
        for node_id, address in table.items():
            if not node_id_ok(node_id) or type(address) is not list or len(address) != 2:
                raise _fail("overlay address entries must be node id -> [host, port]")
            addresses[node_id] = (_str(address[0], "host", limit=255), _int(address[1], "port", 1, 65535))
        messages = [overlay_decode(item, max_size=self.max_frame) for item in items[1:]]  # DecodeError -> protocol error
        return OverlayBatch(addresses, messages)

    def _on_hello(self, message: list[Any]) -> Hello:
        if len(message) not in (8, 9):
            raise _fail("HELLO must have 8 fields (9 on a secondary channel)")
        _, version, cluster, node_id, incarnation, host, port, features = message[:8]
        channel, lane = PRIMARY, 0
        if len(message) == 9:
            extra = message[8]
            if type(extra) is not dict or set(extra) != {"channel", "lane"}:
                raise _fail("HELLO's channel field must be {channel, lane}")
            channel = extra["channel"]
            if type(channel) is not str or _CHANNEL_RE.fullmatch(channel) is None or channel == PRIMARY:
                raise _fail(f"invalid channel name {channel!r}")
            lane = _int(extra["lane"], "lane", 0, 255)
        if version != PROTOCOL_VERSION:
            raise _fail(f"protocol version {version!r} not supported (this node speaks {PROTOCOL_VERSION})")
        if cluster != self.local.cluster:
            raise _fail(f"peer belongs to cluster {cluster!r}, not {self.local.cluster!r}")
        if not node_id_ok(node_id):
            raise _fail(f"invalid node id {node_id!r}")
        if node_id == self.local.node_id:
            raise _fail("peer uses this node's own id")
        feats = _list(features, "features", 64)
        hello = Hello(
            node_id,
            _int(incarnation, "incarnation", 0, 2**63 - 1),
            _str(host, "host", limit=255),
            _int(port, "port", 0, 65535),
            cluster,
            tuple(f for f in feats if type(f) is str),
            version,
            channel,
            lane,
        )
        if ("overlay" in hello.features) != ("overlay" in self.local.features):
            mine = "an overlay" if "overlay" in self.local.features else "a full mesh"
            raise _fail(f"peer runs a different topology (this node runs {mine})")
        self.peer = hello
        self.state = State.OPEN
        self._compress = "lz4" in hello.features and "lz4" in self.local.features
        return hello

    def _on_data(self, payload: bytes) -> DataBatch:
        try:
            items = msgpack.unpackb(payload, timestamp=3, raw=False, strict_map_key=False)
        except Exception as exc:
            raise _fail(f"undecodable data frame: {exc}") from None
        if type(items) is not list or len(items) > 4 * MAX_BATCH + 1:
            raise _fail("data frame must be an array of items")
        messages: list[Message] = []
        flags: list[int] = []
        templates = self._templates_in
        append = messages.append
        stamp: Stamp | None = None
        position = 0
        positions: dict[int, int] | None = None
        for item in items:
            if type(item) is not list or not item:
                raise _fail("data item must be a tagged array")
            tag = item[0]
            if tag == 4 and (len(item) == 7 or len(item) == 9):
                _, index, subject, data, parent, corr, f = item[:7]
                template = templates[index] if type(index) is int and 0 <= index < MAX_TEMPLATES else None
                if template is None:
                    raise _fail(f"message refers to undefined template {index!r}")
                if stamp is None or stamp.first_seq + position >= _SEQ_LIMIT:
                    raise _fail("batched message without a stamp")
                if subject is not None and (type(subject) is not str or not subject or len(subject) > 4096):
                    raise _fail("subject must be a non-empty string or nil")
                if type(f) is not int:
                    raise _fail("flags must be an int")
                if corr is not None and (type(corr) is not str or not corr or len(corr) > 4096 or template.routing is None):
                    raise _fail("invalid correlation id")
                if parent is not None:
                    self._check_parent(parent)
                if len(item) == 9:
                    positions = self._position(positions, len(messages), item[7], item[8])
                append(wire_message(stamp, template, item, position))
                flags.append(f)
                position += 1
            elif tag == 5 and len(item) == 10:
                stamp = self._stamp(item)
                position = 0
            elif tag == 1 and (len(item) == 10 or len(item) == 11):
                _, index, id_, subject, data, time, trace, clock, corr, f = item[:10]
                if len(item) == 11:
                    positions = self._position(positions, len(messages), id_, item[10])
                template = templates[index] if type(index) is int and 0 <= index < MAX_TEMPLATES else None
                if template is None:
                    raise _fail(f"message refers to undefined template {index!r}")
                if type(id_) is not str or not id_ or len(id_) > 4096:
                    raise _fail("message id must be a non-empty string")
                if subject is not None and (type(subject) is not str or not subject):
                    raise _fail("subject must be a non-empty string or nil")
                if time is not None and type(time) is not _dt.datetime:
                    raise _fail("time must be a timestamp")
                if type(f) is not int:
                    raise _fail("flags must be an int")
                routing = template.routing
                if corr is not None:
                    if type(corr) is not str or not corr or routing is None or len(corr) > 4096:
                        raise _fail("invalid correlation id")
                    routing = _with_correlation(routing, corr)
                try:
                    message = Message(
                        id_,
                        template.source,
                        template.type,
                        data,
                        subject,
                        time,
                        template.datacontenttype,
                        template.dataschema,
                        None if trace is None else _trace(trace),
                        None if clock is None else decode_clock(clock),
                        template.delivery,
                        routing,
                        None,
                        template.qos,
                        template.extensions,
                        SPECVERSION,
                    )
                except DecodeError as exc:
                    raise _fail(f"invalid message: {exc}") from None
                append(message)
                flags.append(f)
            elif tag == 0 and len(item) == 10:
                self._define_template(item)
            elif tag == 2 and (len(item) == 3 or len(item) == 4):
                if type(item[1]) is not int:
                    raise _fail("flags must be an int")
                try:
                    full = _msgpack.from_array(item[2])
                except DecodeError as exc:
                    raise _fail(f"invalid message: {exc}") from None
                if len(item) == 4:
                    positions = self._position(positions, len(messages), full.id, item[3])
                append(full)
                flags.append(item[1])
            else:
                raise _fail(f"unknown data item (tag {tag!r})")
        self.messages_received += len(messages)
        return DataBatch(messages, flags, positions)

    @staticmethod
    def _position(positions: dict[int, int] | None, index: int, id_: Any, dseq: Any) -> dict[int, int]:
        if type(id_) is int:
            if not 0 <= id_ < 1 << 64:
                raise _fail("compact message id out of range")
        elif type(id_) is not str or not id_ or len(id_) > 4096:
            raise _fail("a reliable message needs an id")
        if type(dseq) is not int or not 0 < dseq < 1 << 63 or not dseq & ((1 << 40) - 1):
            raise _fail("stream position out of range")
        if positions is None:
            positions = {}
        positions[index] = dseq
        return positions

    def _stamp(self, item: list[Any]) -> Stamp:
        _, ms, first_seq, node_hex, time, clock_node, clock_others, clock_first, span_base, trace_base = item
        if type(ms) is not int or not 0 <= ms < 1 << 48:
            raise _fail("stamp time must be 48-bit milliseconds")
        if type(first_seq) is not int or not 0 <= first_seq < _SEQ_LIMIT:
            raise _fail("stamp sequence out of range")
        if type(node_hex) is not str or _NODE_HEX_RE.fullmatch(node_hex) is None:
            raise _fail("stamp node part must be 12 lowercase hex digits")
        if type(time) is not _dt.datetime:
            raise _fail("stamp time must be a timestamp")
        if type(clock_first) is not int or not 0 < clock_first <= MAX_COUNTER - 4 * MAX_BATCH:
            raise _fail("stamp clock counter out of range")
        if type(span_base) is not int or not 0 <= span_base < 1 << 64:
            raise _fail("stamp span base out of range")
        if type(trace_base) is not bytes or len(trace_base) != 16:
            raise _fail("stamp trace base must be 16 bytes")
        trace_base = int.from_bytes(trace_base, "big")
        if type(clock_others) is not dict or clock_node in clock_others:
            raise _fail("stamp clock must be a map without the sender's own entry")
        try:
            decode_clock({**clock_others, clock_node: clock_first} if type(clock_node) is str else None)
        except DecodeError as exc:
            raise _fail(f"stamp clock: {exc}") from None
        return Stamp(ms, first_seq, node_hex, time, clock_node, clock_others, clock_first, span_base, trace_base)

    def _check_parent(self, parent: Any) -> None:
        if type(parent) is not list or len(parent) != 3:
            raise _fail("trace parent must be [trace_id, flags, tracestate]")
        trace_id, flags, state = parent
        if trace_id not in self._valid_trace_ids:
            if type(trace_id) is not str or _TRACE_ID_RE.fullmatch(trace_id) is None or trace_id == "0" * 32:
                raise _fail("trace id must be 32 lowercase hex digits, not all zero")
            if len(self._valid_trace_ids) >= 4096:
                self._valid_trace_ids.clear()
            self._valid_trace_ids.add(trace_id)
        if type(flags) is not int or not 0 <= flags <= 255:
            raise _fail("trace flags must be a byte")
        try:
            _msgpack.check_tracestate(state)
        except DecodeError as exc:
            raise _fail(f"tracestate: {exc}") from None

    def _define_template(self, item: list[Any]) -> None:
        _, index, source, type_, contenttype, schema, delivery, routing, qos, extensions = item
        if type(index) is not int or not 0 <= index < MAX_TEMPLATES:
            raise _fail(f"template index {index!r} out of range")
        # Reuse the full-layout decoder's validation by decoding a template-shaped message.
        probe = [
            1, "template", source, type_, None, None, None, contenttype, schema, None, None, delivery,
            routing, None, qos, extensions,
        ]  # fmt: skip
        try:
            message = _msgpack.from_array(probe)
        except DecodeError as exc:
            raise _fail(f"invalid template: {exc}") from None
        if message.routing is not None and message.routing.correlation_id is not None:
            raise _fail("templates carry no correlation id")
        self._templates_in[index] = _Template(
            message.source,
            message.type,
            message.datacontenttype,
            message.dataschema,
            message.delivery,
            message.routing,
            message.qos,
            message.extensions,
        )


def _trace(value: Any) -> TraceContext:
    trace = _msgpack._decode_trace(value)
    assert trace is not None
    return trace
