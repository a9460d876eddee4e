"""Vector clocks: causality between messages from different nodes.

A :class:`VectorClock` is immutable: ``tick`` and ``merge`` return new clocks. Entries
are ``node id -> counter``; a missing entry means 0. ``compare`` answers whether one
clock happened before, after, at the same time as, or concurrently with another.

Bounding the size. A clock has one entry per node that ever sent a causally tracked
message, so clusters that churn would grow them forever. Two mechanisms keep them small:

- ``retire(nodes)`` drops the entries of nodes that left the cluster for good. The node
  runtime calls it on the local clock when membership reports a node removed. Dropping
  an entry is safe once every live node has seen that node's last message, which is what
  "left for good" means here; messages from it still in flight may then be delivered
  without waiting for their causal predecessors from that node.
- ``max_entries`` (default :data:`DEFAULT_MAX_ENTRIES`) on :meth:`LocalClock.tick`: a
  safety valve for clusters that never report departures. Above it, the entries with
  the smallest counters (nodes that contributed least) are dropped first. This can make
  two concurrent messages look ordered, never the reverse; causal delivery stays safe
  (it may deliver a message later than necessary, not earlier).

Compact encoding: ``encode()`` gives ``node:counter`` pairs joined by commas, sorted
by node id (the CloudEvents ``phxvclock`` attribute); node ids may not contain ``,``
or ``:``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping

import attrs

from ._errors import DecodeError, ValidationError

DEFAULT_MAX_ENTRIES = 64
MAX_DECODE_ENTRIES = 4096
MAX_COUNTER = (1 << 63) - 1


class Causality(enum.Enum):
    """How two clocks relate."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def _check_node(node: str) -> str:
    if type(node) is not str or not node or "," in node or ":" in node or len(node) > 255:
        raise ValidationError(f"vector clock node id {node!r} must be 1-255 characters without ',' or ':'")
    return node


@attrs.frozen(slots=True, repr=False)
class VectorClock:
    """An immutable vector clock. Build with ``VectorClock()`` or ``VectorClock({"a": 1})``."""

    entries: Mapping[str, int] = attrs.field(factory=dict, converter=lambda e: dict(e))

    def __attrs_post_init__(self) -> None:
        for node, counter in self.entries.items():
            _check_node(node)
            if type(counter) is not int or not 0 < counter <= MAX_COUNTER:
                raise ValidationError(f"vector clock counter for {node!r} must be a positive int, not {counter!r}")

    def __repr__(self) -> str:
        return f"VectorClock({dict(sorted(self.entries.items()))!r})"

    def __hash__(self) -> int:
        return hash(frozenset(self.entries.items()))

    def __getitem__(self, node: str) -> int:
        return self.entries.get(node, 0)

    def __len__(self) -> int:
        return len(self.entries)

    def tick(self, node: str) -> VectorClock:
        """This clock with ``node``'s counter incremented."""
        entries = dict(self.entries)
        entries[node] = entries.get(node, 0) + 1
        return _trusted(entries)

    def merge(self, other: VectorClock) -> VectorClock:
        """The pointwise maximum of both clocks."""
        entries = dict(self.entries)
        for node, counter in other.entries.items():
            if counter > entries.get(node, 0):
                entries[node] = counter
        return _trusted(entries)

    def compare(self, other: VectorClock) -> Causality:
        """BEFORE if self happened before other, AFTER, EQUAL, or CONCURRENT."""
        less = greater = False
        mine, theirs = self.entries, other.entries
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
            if less and greater:
                return Causality.CONCURRENT
        if less:
            return Causality.BEFORE
        if greater:
            return Causality.AFTER
        return Causality.EQUAL

    def happened_before(self, other: VectorClock) -> bool:
        return self.compare(other) is Causality.BEFORE

    def concurrent_with(self, other: VectorClock) -> bool:
        return self.compare(other) is Causality.CONCURRENT

    def retire(self, nodes: Iterable[str]) -> VectorClock:
        """This clock without the entries of ``nodes`` (nodes that left for good)."""
        gone = set(nodes)
        return _trusted({n: c for n, c in self.entries.items() if n not in gone})

    def truncate(self, max_entries: int, *, keep: str | None = None) -> VectorClock:
        """At most ``max_entries`` entries: the smallest counters go first (``keep`` stays)."""
        if len(self.entries) <= max_entries:
            return self
        ranked = sorted(self.entries.items(), key=lambda item: (item[0] != keep, -item[1], item[0]))
        return _trusted(dict(ranked[:max_entries]))

    def encode(self) -> str:
        """Compact text form: ``a:3,b:1`` (sorted by node)."""
        return ",".join(f"{node}:{counter}" for node, counter in sorted(self.entries.items()))

    @classmethod
    def decode(cls, text: str) -> VectorClock:
        """Parse :meth:`encode` output; raises :class:`DecodeError` on anything else."""
        if type(text) is not str:
            raise DecodeError("vector clock must be a string")
        if not text:
            return cls()
        parts = text.split(",")
        if len(parts) > MAX_DECODE_ENTRIES:
            raise DecodeError(f"vector clock has more than {MAX_DECODE_ENTRIES} entries")
        entries: dict[str, int] = {}
        for part in parts:
            node, sep, counter = part.rpartition(":")
            if not sep or not node or not counter.isdigit() or not counter.isascii() or len(counter) > 19:
                raise DecodeError(f"bad vector clock entry {part!r}")
            if node in entries:
                raise DecodeError(f"vector clock names {node!r} twice")
            entries[node] = int(counter)
        return cls.from_mapping(entries)

    @classmethod
    def from_mapping(cls, entries: object) -> VectorClock:
        """Validate an untrusted ``{node: counter}`` mapping; raises :class:`DecodeError`."""
        if not isinstance(entries, Mapping):
            raise DecodeError("vector clock must be a map")
        if len(entries) > MAX_DECODE_ENTRIES:
            raise DecodeError(f"vector clock has more than {MAX_DECODE_ENTRIES} entries")
        try:
            return cls(entries)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise DecodeError(str(exc)) from None


def decode_clock(entries: object) -> VectorClock:
    """A clock from an untrusted ``{node: counter}`` map (fast path for decoders)."""
    if type(entries) is not dict or len(entries) > MAX_DECODE_ENTRIES:
        return VectorClock.from_mapping(entries)  # raises the precise error
    for node, counter in entries.items():
        if (
            type(node) is not str
            or type(counter) is not int
            or not 0 < counter <= MAX_COUNTER
            or not 0 < len(node) <= 255
            or "," in node
            or ":" in node
        ):
            return VectorClock.from_mapping(entries)
    return _trusted(entries)


def _trusted(entries: dict[str, int]) -> VectorClock:
    """Build a clock from entries already known valid (skips validation)."""
    clock = object.__new__(VectorClock)
    object.__setattr__(clock, "entries", entries)
    return clock


class LocalClock:
    """A node's own, mutable clock: ``tick()`` for each send, ``observe()`` for each receive."""

    def __init__(self, node: str, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.node = _check_node(node)
        self.max_entries = max_entries
        self._entries: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> VectorClock:
        with self._lock:
            return _trusted(dict(self._entries))

    def tick(self) -> VectorClock:
        """Advance the local entry and return the clock to stamp on an outgoing message."""
        with self._lock:
            entries = self._entries
            entries[self.node] = entries.get(self.node, 0) + 1
            if len(entries) > self.max_entries:
                self._entries = entries = dict(_trusted(entries).truncate(self.max_entries, keep=self.node).entries)
            return _trusted(entries.copy())

    def tick_many(self, count: int) -> tuple[dict[str, int], int]:
        """Advance the local entry ``count`` times at once, for a batch of messages.

        Returns the other entries and the first local counter: message ``i`` of the batch
        carries ``entries`` plus ``{node: first + i}``.
        """
        with self._lock:
            entries = self._entries
            first = entries.get(self.node, 0) + 1
            entries[self.node] = first + count - 1
            if len(entries) > self.max_entries:
                self._entries = entries = dict(_trusted(entries).truncate(self.max_entries, keep=self.node).entries)
            others = entries.copy()
            del others[self.node]
            return others, first

    def observe(self, other: VectorClock) -> None:
        """Merge a received message's clock (causal delivery calls this on delivery)."""
        with self._lock:
            entries = self._entries
            for node, counter in other.entries.items():
                if counter > entries.get(node, 0):
                    entries[node] = counter

    def retire(self, nodes: Iterable[str]) -> None:
        with self._lock:
            for node in nodes:
                self._entries.pop(node, None)
