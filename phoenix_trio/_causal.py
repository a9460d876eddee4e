"""Causal-order broadcast (the ``causal_order`` delivery guarantee): the sans-IO core.

Birman-Schiper-Stephenson causal broadcast for a group of members. Every member
delivers the group's messages in an order that respects happened-before: if a member
delivered (or sent) message ``m1`` before it sent ``m2``, no member delivers ``m2``
before ``m1``. Concurrent messages may be delivered in different orders at different
members. The group's vector clock counts group messages only.

Streams. A member's messages form a *stream* named ``"<node id>/<incarnation, hex>"``;
the incarnation grows every time a member (re)opens the group on a node, so a restarted
member is a new stream and old counters are never reused. The vector clock's entries
are streams. A message carries its stream, its number ``seq`` in the stream (1, 2, ...)
and ``deps``: the sender's delivered counts of every other stream when it sent it.

Delivery rule (BSS). A member holding the message ``(s, seq, deps)`` delivers it once
``seq == delivered[s] + 1`` and ``deps[k] <= delivered[k]`` for every other stream
``k``; until then the message waits in the *hold-back buffer*. Only each stream's next
message can become deliverable, so every delivery re-checks one candidate per stream.
Duplicates (``seq <= delivered[s]``, or already held) are dropped.

Joining (the handshake). On start a member sends ``Hello`` to every member node until
that node's member answers ``Welcome(stream, baseline)``: the answering stream's
messages up to ``baseline`` were broadcast before the joiner was known and are never
sent to it; the joiner starts that stream's counter at ``baseline``. A member delivers
nothing from a stream before its ``Welcome`` (so it knows where the stream starts for
it). Each pair of members does the handshake both ways; a member receives what the
others broadcast after it joined.

Reliability. Each member keeps its own messages until every joined, live member has
acknowledged them (``Ack``: "I delivered your stream up to n", sent every
``ack_interval`` while it changes). A member whose acknowledgement has not moved for a
``retry_interval`` while behind gets the unacknowledged messages again (at most
``max_resend`` per round). Lost, reordered and duplicated packets are therefore
tolerated; the node service below is ordered per peer, but nothing here relies on it.

Bounds and errors.

- The hold-back buffer holds at most ``max_held`` messages. One more raises
  :class:`CausalOrderOverflow` from :meth:`CausalBroadcast.receive`: the member has
  fallen too far behind a stream it cannot hear from (its messages are missing while
  other members' messages that depend on them keep coming). The member is then
  failed (every later input raises the same error): causal order cannot be kept
  without unbounded memory.
- :attr:`CausalBroadcast.pending` counts this member's unacknowledged messages; the
  Trio shell makes ``broadcast`` wait while it is at ``max_pending``.

Members that leave or die. A stream ends when its member says ``Bye`` (closing), when
membership reports its node dead or gone (:meth:`CausalBroadcast.node_down`), or when a
newer stream of the same node appears (a restart). Its messages still in flight are
delivered normally. A node reported dead stays a peer (its unacknowledged messages are
kept for it) until ``gap_timeout``: if membership reports it back in time
(:meth:`CausalBroadcast.node_up`, a false suspicion) nothing is lost; after that it is
out of the group for good (its node must reopen the group, as a new stream). Messages of an ended stream that have not arrived ``gap_timeout``
seconds after it ended are declared lost: held messages that depend on them are
released, after a :class:`CausalGap` record naming the stream and the missing
range, so the application knows exactly which dependencies it will never see. After
that, a message that depends on more of that stream's messages gets a ``CausalGap`` at
once. ``retire_after`` seconds after it ended (and resolved) the stream leaves the
vector clock; a bounded set (:data:`MAX_RETIRED`) remembers retired streams so that
late messages from them are dropped and dependencies on them ignored.

Inputs: :meth:`start`, :meth:`broadcast`, :meth:`receive`, :meth:`timer`,
:meth:`node_down`, :meth:`close`, each with the current time; each returns effects:
:class:`~phoenix_trio.effects.Send` (to a node id), :class:`~phoenix_trio.effects.SetTimer`,
:class:`CausalDelivery` and :class:`CausalGap`. No I/O, no clock reads.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import attrs
import msgpack

from ._errors import ConfigurationError, DecodeError, PhoenixError
from ._vclock import VectorClock, _trusted
from .effects import Send, SetTimer

MAX_RETIRED = 4096
"""How many retired streams a member remembers."""

ACK_TIMER = "causal.ack"
RETRY_TIMER = "causal.retry"


class CausalOrderOverflow(PhoenixError):
    """The hold-back buffer is full: ``held`` messages wait for dependencies that have not arrived.

    ``missing`` maps each stream the held messages wait on to the highest message number
    they need from it (what this member has delivered of it is ``delivered[stream]``).
    The member is failed: causal order cannot be kept without unbounded memory.
    """

    def __init__(self, held: int, max_held: int, missing: dict[str, int], delivered: dict[str, int]) -> None:
        waits = ", ".join(f"{s} (have {delivered.get(s, 0)}, need {n})" for s, n in sorted(missing.items())[:8])
        super().__init__(f"causal hold-back buffer full: {held} messages held (max_held={max_held}), waiting on {waits}")
        self.held = held
        self.max_held = max_held
        self.missing = missing
        self.delivered = delivered


def stream_id(node: str, incarnation: int) -> str:
    """The stream name of ``node``'s member with ``incarnation``."""
    return f"{node}/{incarnation:x}"


def stream_node(stream: str) -> str:
    return stream.rpartition("/")[0]


def _incarnation(stream: str) -> int:
    return int(stream.rpartition("/")[2], 16)


# -- messages -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Data:
    """Message ``seq`` of ``stream``; ``deps``: the sender's delivered counts of other streams."""

    stream: str
    seq: int
    deps: dict[str, int]
    payload: Any


@attrs.frozen(slots=True)
class Hello:
    """``stream`` (a member that just opened) asks to be welcomed."""

    stream: str


@attrs.frozen(slots=True)
class Welcome:
    """``stream`` welcomes ``joiner``: its messages up to ``baseline`` predate the joiner."""

    stream: str
    baseline: int
    joiner: str


@attrs.frozen(slots=True)
class Ack:
    """``acker`` has delivered ``stream`` up to ``delivered``."""

    stream: str
    acker: str
    delivered: int


@attrs.frozen(slots=True)
class Bye:
    """``stream`` closes; its last message is ``last``."""

    stream: str
    last: int


Message = Data | Hello | Welcome | Ack | Bye

_DATA, _HELLO, _WELCOME, _ACK, _BYE = range(5)


def encode(message: Message) -> bytes:
    """One message as msgpack bytes (a payload carries several, concatenated).

    On the wire a data message's payload is opaque bytes (the Trio shell packs the
    application's value once, at broadcast).
    """
    t = type(message)
    if t is Data:
        fields: list[Any] = [_DATA, message.stream, message.seq, message.deps, message.payload]  # type: ignore[union-attr]
    elif t is Ack:
        fields = [_ACK, message.stream, message.acker, message.delivered]  # type: ignore[union-attr]
    elif t is Hello:
        fields = [_HELLO, message.stream]
    elif t is Welcome:
        fields = [_WELCOME, message.stream, message.baseline, message.joiner]  # type: ignore[union-attr]
    elif t is Bye:
        fields = [_BYE, message.stream, message.last]  # type: ignore[union-attr]
    else:
        raise TypeError(f"not a causal message: {message!r}")
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def _is_stream(value: object) -> bool:
    if type(value) is not str or not 0 < len(value) <= 160:
        return False
    node, sep, inc = value.rpartition("/")  # type: ignore[attr-defined]
    if not sep or not node or not inc or len(inc) > 16 or "," in value or ":" in value:
        return False
    try:
        int(inc, 16)
    except ValueError:
        return False
    return True


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < (1 << 63)  # type: ignore[operator]


def decode(payload: bytes, *, max_messages: int = 1 << 16) -> list[Message]:
    """Every message of a payload; raises :class:`~phoenix_trio.DecodeError` on anything malformed."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(payload), 1))
    try:
        unpacker.feed(payload)
        items = list(unpacker)
    except Exception as exc:  # msgpack raises several types for bad input
        raise DecodeError(f"bad causal payload: {exc}") from None
    if len(items) > max_messages:
        raise DecodeError("too many messages in one causal payload")
    out: list[Message] = []
    for item in items:
        if type(item) is not list or not item:
            raise DecodeError("causal message must be a non-empty array")
        tag = item[0]
        if tag == _DATA and len(item) == 5:
            _, stream, seq, deps, payload_value = item
            if not (
                _is_stream(stream) and _is_count(seq) and seq > 0 and type(deps) is dict and len(deps) <= 4096
                and type(payload_value) is bytes
            ):  # fmt: skip
                raise DecodeError("bad causal data message")
            for k, v in deps.items():
                if not (_is_stream(k) and _is_count(v)):
                    raise DecodeError("bad causal dependency")
            out.append(Data(stream, seq, deps, payload_value))
        elif tag == _ACK and len(item) == 4 and _is_stream(item[1]) and _is_stream(item[2]) and _is_count(item[3]):
            out.append(Ack(item[1], item[2], item[3]))
        elif tag == _HELLO and len(item) == 2 and _is_stream(item[1]):
            out.append(Hello(item[1]))
        elif tag == _WELCOME and len(item) == 4 and _is_stream(item[1]) and _is_count(item[2]) and _is_stream(item[3]):
            out.append(Welcome(item[1], item[2], item[3]))
        elif tag == _BYE and len(item) == 3 and _is_stream(item[1]) and _is_count(item[2]):
            out.append(Bye(item[1], item[2]))
        else:
            raise DecodeError(f"unknown or malformed causal message (tag {tag!r})")
    return out


# -- what the core hands to the application ---------------------------------------------------


@attrs.frozen(slots=True)
class CausalDelivery:
    """Deliver ``payload``: message ``seq`` of ``stream``, broadcast by the member on node ``sender``.

    ``clock`` is the message's vector clock (stream -> count of group messages): every
    message it counts was delivered here before this one (apart from what a
    :class:`CausalGap` reported lost, and what predates this member's join).
    """

    sender: str
    stream: str
    seq: int
    payload: Any
    clock: VectorClock


@attrs.frozen(slots=True)
class CausalGap:
    """Messages ``first`` to ``last`` of ``stream`` (node ``sender``, which ended) will never
    be delivered here; messages that depend on them follow."""

    sender: str
    stream: str
    first: int
    last: int


@attrs.define(slots=True)
class _Peer:
    """A member this one welcomed: it gets our messages after ``baseline`` and acknowledges them."""

    node: str
    baseline: int
    acked: int
    acked_at: float
    live: bool = True


@attrs.define(slots=True)
class _Ended:
    at: float
    reason: str | None  # "down" (membership; revocable until resolved), "bye", "replaced"; None only in _NOT_ENDED
    last: int | None = None  # known from Bye
    resolved: bool = False


@attrs.frozen(slots=True)
class CausalStatistics:
    delivered: int
    held: int
    pending: int
    duplicates: int
    late: int
    resent: int
    gaps: int
    peers: int
    held_peak: int


class CausalBroadcast:
    """One member of a causal broadcast group. Sans-IO; see the module docstring."""

    def __init__(
        self,
        node: str,
        incarnation: int,
        *,
        members: Iterable[str],
        max_held: int = 10_000,
        ack_interval: float = 0.05,
        retry_interval: float = 0.2,
        gap_timeout: float = 2.0,
        retire_after: float = 60.0,
        max_resend: int = 512,
    ) -> None:
        self.node = node
        self.members = frozenset(members)
        if node not in self.members:
            raise ConfigurationError(f"this node ({node!r}) is not among the members {sorted(self.members)!r}")
        if max_held < 1:
            raise ConfigurationError("max_held must be at least 1")
        if not (ack_interval > 0 and retry_interval > 0 and gap_timeout >= 0):
            raise ConfigurationError("intervals must be positive")
        self.me = stream_id(node, incarnation)
        self.max_held = max_held
        self.ack_interval = ack_interval
        self.retry_interval = retry_interval
        self.gap_timeout = gap_timeout
        self.retire_after = max(retire_after, gap_timeout)
        self.max_resend = max_resend
        self.delivered: dict[str, int] = {self.me: 0}  # the group vector clock (streams we know the start of)
        self._welcomed_by: set[str] = set()  # streams whose Welcome we have (their start is known)
        self._current: dict[str, str] = {node: self.me}  # node -> its newest stream
        self._peers: dict[str, _Peer] = {}  # streams we welcomed
        self._ended: dict[str, _Ended] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._held: dict[str, dict[int, Data]] = {}
        self._held_count = 0
        self._pending: deque[tuple[Data, float]] = deque()
        self._acks_sent: dict[str, int] = {}
        self._failed: CausalOrderOverflow | None = None
        self._closed = False
        self.stats = {"delivered": 0, "duplicates": 0, "late": 0, "resent": 0, "gaps": 0, "held_peak": 0}

    # -- inputs ---------------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        out: list[Any] = [Send(n, Hello(self.me)) for n in sorted(self.members) if n != self.node]
        out.append(SetTimer(ACK_TIMER, now + self.ack_interval))
        out.append(SetTimer(RETRY_TIMER, now + self.retry_interval))
        return out

    def broadcast(self, payload: Any, now: float) -> list[Any]:
        """Broadcast ``payload``: sends to every joined member and delivers it here at once."""
        self._check()
        if self._closed:
            raise ConfigurationError("the causal group member is closed")
        me = self.me
        seq = self.delivered[me] + 1
        self.delivered[me] = seq
        deps = {k: v for k, v in self.delivered.items() if v and k != me}
        data = Data(me, seq, deps, payload)
        out: list[Any] = [Send(p.node, data) for p in self._peers.values() if p.live]
        if out:
            self._pending.append((data, now))  # kept until every joined member acknowledged it
        clock = dict(deps)
        clock[me] = seq
        out.append(CausalDelivery(self.node, me, seq, payload, _trusted(clock)))
        self.stats["delivered"] += 1
        return out

    def receive(self, sender: str, message: Message, now: float) -> list[Any]:
        """One message from the member on node ``sender``. Raises :class:`CausalOrderOverflow`."""
        self._check()
        out: list[Any] = []
        t = type(message)
        if t is Data:
            self._on_data(sender, message, now, out)  # type: ignore[arg-type]
        elif t is Ack:
            self._on_ack(sender, message, now)  # type: ignore[arg-type]
        elif t is Hello:
            self._on_hello(sender, message, now, out)  # type: ignore[arg-type]
        elif t is Welcome:
            self._on_welcome(sender, message, now, out)  # type: ignore[arg-type]
        elif t is Bye:
            self._on_bye(sender, message, now, out)  # type: ignore[arg-type]
        return out

    def node_down(self, node: str, now: float) -> list[Any]:
        """Membership says ``node`` is dead or gone: its stream ends (see the module docstring)."""
        self._check()
        stream = self._current.get(node)
        out: list[Any] = []
        if stream is not None and stream != self.me:
            self._end(stream, now, "down")
        return out

    def node_up(self, node: str, now: float) -> list[Any]:
        """Membership says ``node`` is back with the same incarnation (it was wrongly
        declared dead): its stream continues, unless its ``gap_timeout`` already passed."""
        self._check()
        stream = self._current.get(node)
        ended = self._ended.get(stream) if stream is not None else None
        if ended is not None and ended.reason == "down" and not ended.resolved:
            del self._ended[stream]  # type: ignore[arg-type]
        return []

    def timer(self, key: Any, now: float) -> list[Any]:
        self._check()
        out: list[Any] = []
        if key == ACK_TIMER:
            self._send_acks(out)
            out.append(SetTimer(ACK_TIMER, now + self.ack_interval))
        elif key == RETRY_TIMER:
            self._retry(now, out)
            out.append(SetTimer(RETRY_TIMER, now + self.retry_interval))
        return out

    def close(self, now: float) -> list[Any]:
        """This member leaves: tells every joined member its last message number."""
        if self._closed:
            return []
        self._closed = True
        last = self.delivered[self.me]
        out: list[Any] = []
        self._send_acks(out)
        out += [Send(p.node, Bye(self.me, last)) for p in self._peers.values() if p.live]
        return out

    # -- introspection ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """This member's messages not yet acknowledged by every joined, live member."""
        return len(self._pending)

    @property
    def held(self) -> int:
        """Messages in the hold-back buffer."""
        return self._held_count

    @property
    def failed(self) -> CausalOrderOverflow | None:
        return self._failed

    def joined(self) -> set[str]:
        """Member nodes joined both ways with this one (welcomed it and were welcomed)."""
        mine = {p.node for p in self._peers.values() if p.live}
        theirs = {stream_node(s) for s in self._welcomed_by if s not in self._ended}
        return mine & theirs

    def clock(self) -> VectorClock:
        """What this member has delivered, as a vector clock over streams."""
        return _trusted({k: v for k, v in self.delivered.items() if v})

    def statistics(self) -> CausalStatistics:
        s = self.stats
        return CausalStatistics(
            s["delivered"], self._held_count, len(self._pending), s["duplicates"], s["late"], s["resent"], s["gaps"],
            sum(1 for p in self._peers.values() if p.live), s["held_peak"],
        )  # fmt: skip

    # -- internals ------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _note_stream(self, stream: str, now: float, out: list[Any]) -> bool:
        """Track the newest stream of each node; False for a stream older than the known one."""
        node = stream_node(stream)
        if node not in self.members or stream in self._retired:
            return False
        current = self._current.get(node)
        if current == stream:
            return True
        if current is None or _incarnation(stream) > _incarnation(current):
            self._current[node] = stream
            if current is not None and current != self.me:
                self._end(current, now, "replaced")
            return True
        return False

    def _on_hello(self, sender: str, hello: Hello, now: float, out: list[Any]) -> None:
        stream = hello.stream
        if stream_node(stream) != sender or stream == self.me:
            return
        if not self._note_stream(stream, now, out) or stream in self._ended:
            return
        peer = self._peers.get(stream)
        if peer is None:
            base = self.delivered[self.me]
            peer = self._peers[stream] = _Peer(sender, base, base, now)
        out.append(Send(sender, Welcome(self.me, peer.baseline, stream)))
        if stream not in self._welcomed_by:
            out.append(Send(sender, Hello(self.me)))

    def _on_welcome(self, sender: str, welcome: Welcome, now: float, out: list[Any]) -> None:
        stream = welcome.stream
        if welcome.joiner != self.me or stream_node(stream) != sender or stream in self._welcomed_by:
            return
        if stream in self._retired or stream_node(stream) not in self.members:
            return
        self._note_stream(stream, now, out)
        self._welcomed_by.add(stream)
        self.delivered[stream] = max(self.delivered.get(stream, 0), welcome.baseline)
        held = self._held.get(stream)
        if held:
            for seq in [s for s in held if s <= welcome.baseline]:
                del held[seq]
                self._held_count -= 1
        self._deliver_ready(now, out)

    def _on_ack(self, sender: str, ack: Ack, now: float) -> None:
        if ack.stream != self.me:
            return
        peer = self._peers.get(ack.acker)
        if peer is None or peer.node != sender:
            return
        if ack.delivered > peer.acked:
            peer.acked = ack.delivered
            peer.acked_at = now
            self._collect()

    def _on_bye(self, sender: str, bye: Bye, now: float, out: list[Any]) -> None:
        if stream_node(bye.stream) != sender or bye.stream == self.me or bye.stream in self._retired:
            return
        self._end(bye.stream, now, "bye", bye.last)

    def _on_data(self, sender: str, data: Data, now: float, out: list[Any]) -> None:
        stream = data.stream
        if stream_node(stream) != sender:
            return  # only a stream's own member sends its messages
        if stream in self._retired:
            self.stats["late"] += 1
            return
        if stream not in self._ended and not self._note_stream(stream, now, out):
            self.stats["late"] += 1  # an older stream of that node, never seen: it predates us
            return
        if data.seq <= self.delivered.get(stream, 0) and stream in self._welcomed_by:
            self.stats["duplicates"] += 1
            return
        held = self._held.get(stream)
        if held is not None and data.seq in held:
            self.stats["duplicates"] += 1
            return
        if stream in self._welcomed_by and data.seq == self.delivered[stream] + 1 and self._deps_met(data):
            self._deliver(data, out)
            if self._held_count:
                self._deliver_ready(now, out)
            return
        if self._held_count >= self.max_held:
            self._overflow(data)
        if held is None:
            held = self._held[stream] = {}
        held[data.seq] = data
        self._held_count += 1
        if self._held_count > self.stats["held_peak"]:
            self.stats["held_peak"] = self._held_count
        for k in data.deps:
            if k not in self.delivered and k not in self._ended and k not in self._retired:
                # A stream we have not met: if its node has a newer one, it ended before we met it.
                if not self._note_stream(k, now, out) and stream_node(k) in self.members:
                    self._end(k, now, "replaced")
        ended = self._ended.get(stream)
        if ended is not None and ended.resolved or any(self._ended.get(k, _NOT_ENDED).resolved for k in data.deps):
            self._resolve_ended(now, out)

    def _overflow(self, data: Data) -> None:
        missing: dict[str, int] = {}
        for held in [*self._held.values(), {data.seq: data}]:
            for msg in held.values():
                if msg.seq - 1 > self.delivered.get(msg.stream, 0):
                    missing[msg.stream] = max(missing.get(msg.stream, 0), msg.seq - 1)
                for k, v in msg.deps.items():
                    if v > self.delivered.get(k, 0) and k not in self._retired:
                        missing[k] = max(missing.get(k, 0), v)
        # What is held is not missing: keep the streams with a hole before what is needed.
        for k, need in list(missing.items()):
            have, held_k = self.delivered.get(k, 0), self._held.get(k, {})
            if len(held_k) >= need - have and all(i in held_k for i in range(have + 1, need + 1)):
                del missing[k]
        self._failed = CausalOrderOverflow(self._held_count + 1, self.max_held, missing, dict(self.delivered))
        raise self._failed

    def _deps_met(self, data: Data) -> bool:
        delivered = self.delivered
        retired = self._retired
        me = data.stream
        for k, v in data.deps.items():
            if v > delivered.get(k, 0) and k != me and k not in retired:
                return False
        return True

    def _deliver(self, data: Data, out: list[Any]) -> None:
        self.delivered[data.stream] = data.seq
        clock = {k: v for k, v in data.deps.items() if v and k not in self._retired}
        clock[data.stream] = data.seq
        out.append(CausalDelivery(stream_node(data.stream), data.stream, data.seq, data.payload, _trusted(clock)))
        self.stats["delivered"] += 1

    def _deliver_ready(self, now: float, out: list[Any]) -> None:
        """Deliver every held message whose dependencies are now met (one candidate per stream)."""
        progress = True
        while progress and self._held_count:
            progress = False
            for stream in list(self._held):
                held = self._held[stream]
                if stream not in self._welcomed_by:
                    continue
                while True:
                    data = held.get(self.delivered[stream] + 1)
                    if data is None or not self._deps_met(data):
                        break
                    del held[data.seq]
                    self._held_count -= 1
                    self._deliver(data, out)
                    progress = True
                if not held:
                    del self._held[stream]

    def _end(self, stream: str, now: float, reason: str, last: int | None = None) -> None:
        ended = self._ended.get(stream)
        if ended is None:
            self._ended[stream] = ended = _Ended(now, reason, last)
        elif reason != "down":
            ended.reason = reason  # certain now
            if last is not None:
                ended.last = last
        if reason != "down":
            self._drop_peer(stream)  # gone for sure: stop waiting for its acknowledgements

    def _drop_peer(self, stream: str) -> None:
        peer = self._peers.get(stream)
        if peer is not None and peer.live:
            peer.live = False
            self._collect()

    def _resolve_ended(self, now: float, out: list[Any]) -> None:
        """Skip what ended streams will never send, once their ``gap_timeout`` passed."""
        for stream, ended in self._ended.items():
            if not ended.resolved and now - ended.at >= self.gap_timeout:
                ended.resolved = True
                self._drop_peer(stream)
                if stream not in self._welcomed_by:
                    # We never learned where this stream starts for us; its held messages
                    # predate our join or are lost with their baseline.
                    self._welcomed_by.add(stream)
                    self.delivered.setdefault(stream, 0)
        while True:
            self._deliver_ready(now, out)
            skipped = False
            for stream, ended in self._ended.items():
                if not ended.resolved:
                    continue
                have = self.delivered.get(stream, 0)
                held = self._held.get(stream)
                if held:
                    lowest = min(held)
                    if lowest > have + 1:
                        self._gap(stream, have + 1, lowest - 1, out)
                        skipped = True
                    continue
                need = 0
                for msgs in self._held.values():
                    for msg in msgs.values():
                        need = max(need, msg.deps.get(stream, 0))
                if need > have:
                    self._gap(stream, have + 1, need, out)
                    skipped = True
            if not skipped:
                return

    def _gap(self, stream: str, first: int, last: int, out: list[Any]) -> None:
        self.delivered[stream] = last
        self.stats["gaps"] += 1
        out.append(CausalGap(stream_node(stream), stream, first, last))

    def _collect(self) -> None:
        """Forget our messages every joined, live member has acknowledged."""
        pending = self._pending
        if not pending:
            return
        floor = min((max(p.acked, p.baseline) for p in self._peers.values() if p.live), default=None)
        if floor is None:
            pending.clear()
            return
        while pending and pending[0][0].seq <= floor:
            pending.popleft()

    def _send_acks(self, out: list[Any]) -> None:
        sent = self._acks_sent
        for stream in self._welcomed_by:
            if stream in self._ended:
                continue
            have = self.delivered.get(stream, 0)
            if sent.get(stream, -1) < have:
                sent[stream] = have
                out.append(Send(stream_node(stream), Ack(stream, self.me, have)))

    def _retry(self, now: float, out: list[Any]) -> None:
        # Hello again to member nodes whose current member has not welcomed us.
        welcomed_nodes = {stream_node(s) for s in self._welcomed_by if s not in self._ended}
        if not self._closed:
            for node in sorted(self.members - welcomed_nodes - {self.node}):
                out.append(Send(node, Hello(self.me)))
        # Resend to live members whose acknowledgement is stuck behind.
        if self._pending:
            oldest_due = now - self.retry_interval
            for stream, peer in self._peers.items():
                if not peer.live or now - peer.acked_at < self.retry_interval:
                    continue
                floor = max(peer.acked, peer.baseline)
                count = 0
                for data, sent_at in self._pending:
                    if count >= self.max_resend or sent_at > oldest_due:
                        break
                    if data.seq > floor:
                        out.append(Send(peer.node, data))
                        count += 1
                if count:
                    self.stats["resent"] += count
                    peer.acked_at = now  # give the resent messages a retry interval
        # Re-acknowledge periodically, in case acks were lost: forget what we sent.
        self._acks_sent.clear()
        # Ended streams: resolve gaps after their timeout, retire them later.
        if self._ended:
            self._resolve_ended(now, out)
            for stream, ended in list(self._ended.items()):
                if ended.resolved and now - ended.at >= self.retire_after and not self._references(stream):
                    self._retire(stream)

    def _references(self, stream: str) -> bool:
        if stream in self._held:
            return True
        return any(stream in msg.deps for msgs in self._held.values() for msg in msgs.values())

    def _retire(self, stream: str) -> None:
        del self._ended[stream]
        self.delivered.pop(stream, None)
        self._welcomed_by.discard(stream)
        self._peers.pop(stream, None)
        self._acks_sent.pop(stream, None)
        self._retired[stream] = None
        if len(self._retired) > MAX_RETIRED:
            self._retired.popitem(last=False)
        # _current keeps the node's newest stream, so an older one is still recognised as stale.


_NOT_ENDED = _Ended(0.0, None, resolved=False)
