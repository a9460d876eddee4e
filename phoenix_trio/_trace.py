"""W3C Trace Context: ``traceparent`` / ``tracestate``, carried in contextvars.

A :class:`TraceContext` is one span's identity: the 16-byte trace id shared by every hop
of a trace, the 8-byte id of the current span, the trace flags and the vendor
``tracestate``. ``child()`` starts the next hop's span. :func:`current_trace` reads the
context of the running task (contextvars, so each Trio task has its own); the node
runtime sets it around a handler, so messages a handler sends continue the trace.

Parsing follows the W3C Trace Context recommendation: version ``ff`` is invalid, all-zero
trace or span ids are invalid, version ``00`` must be exactly 55 characters, and a
future version may append fields after a ``-``. ``tracestate`` has at most 32 members of
``key=value`` with the spec's key and value grammar; malformed input raises
:class:`~phoenix_trio.DecodeError`.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

from ._errors import DecodeError

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_KEY_RE = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_VALUE_RE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = 512
FLAG_SAMPLED = 0x01


@attrs.frozen(slots=True)
class TraceContext:
    """One span of a distributed trace (W3C Trace Context)."""

    trace_id: str
    span_id: str
    flags: int = FLAG_SAMPLED
    tracestate: str = ""

    @classmethod
    def new(cls, *, sampled: bool = True) -> TraceContext:
        """The root span of a new trace."""
        return _trusted(_trace_id(), _span_id(), FLAG_SAMPLED if sampled else 0, "")

    def child(self) -> TraceContext:
        """The next hop's span: same trace, new span id, same flags and state."""
        return _trusted(self.trace_id, _span_id(), self.flags, self.tracestate)

    @property
    def sampled(self) -> bool:
        return bool(self.flags & FLAG_SAMPLED)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    @classmethod
    def parse(cls, traceparent: str, tracestate: str = "") -> TraceContext:
        """Parse W3C headers; raises :class:`DecodeError` for malformed ones."""
        if type(traceparent) is not str or len(traceparent) > 512:
            raise DecodeError("traceparent must be a string of at most 512 characters")
        match = _TRACEPARENT_RE.fullmatch(traceparent)
        if match is None:
            raise DecodeError(f"malformed traceparent {traceparent[:80]!r}")
        version, trace_id, span_id, flags, rest = match.groups()
        if version == "ff":
            raise DecodeError("traceparent version ff is invalid")
        if version == "00" and rest is not None:
            raise DecodeError("traceparent version 00 has exactly four fields")
        if trace_id == "0" * 32:
            raise DecodeError("traceparent trace-id is all zeros")
        if span_id == "0" * 16:
            raise DecodeError("traceparent parent-id is all zeros")
        return cls(trace_id, span_id, int(flags, 16), parse_tracestate(tracestate))

    def to_headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate`` when set) as HTTP headers."""
        headers = {"traceparent": self.traceparent}
        if self.tracestate:
            headers["tracestate"] = self.tracestate
        return headers


def _trusted(trace_id: str, span_id: str, flags: int, tracestate: str) -> TraceContext:
    """Build a context from parts known to be valid (skips attrs' generated __init__)."""
    context = _new(TraceContext)
    _set(context, "trace_id", trace_id)
    _set(context, "span_id", span_id)
    _set(context, "flags", flags)
    _set(context, "tracestate", tracestate)
    return context


_new = object.__new__
_set = object.__setattr__


def parse_tracestate(value: str) -> str:
    """Validate and normalise a ``tracestate`` header (spaces around members removed)."""
    if type(value) is not str:
        raise DecodeError("tracestate must be a string")
    if not value.strip():
        return ""
    if len(value) > MAX_TRACESTATE_LENGTH * 2:
        raise DecodeError("tracestate too long")
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_TRACESTATE_MEMBERS:
        raise DecodeError(f"tracestate has more than {MAX_TRACESTATE_MEMBERS} members")
    seen = set()
    for member in members:
        key, sep, val = member.partition("=")
        if not sep or _KEY_RE.fullmatch(key) is None or _VALUE_RE.fullmatch(val) is None:
            raise DecodeError(f"malformed tracestate member {member[:80]!r}")
        if key in seen:
            raise DecodeError(f"tracestate key {key!r} appears twice")
        seen.add(key)
    return ",".join(members)


# Trace and span ids need to be unpredictable enough not to collide, not secret: a
# Mersenne Twister seeded from the OS (and re-seeded after fork) is plenty and fast.
_rng = random.Random(secrets.randbits(128))
_getrandbits = _rng.getrandbits
os.register_at_fork(after_in_child=lambda: _rng.seed(secrets.randbits(128)))


def _trace_id() -> str:
    value = _getrandbits(128)
    while not value:
        value = _getrandbits(128)
    return f"{value:032x}"


def _span_id() -> str:
    value = _getrandbits(64)
    while not value:
        value = _getrandbits(64)
    return f"{value:016x}"




# The running task's trace. It holds a TraceContext, or a received message whose trace
# is only computed when something asks (lazily decoded messages make it on demand).
_current: contextvars.ContextVar[object] = contextvars.ContextVar("phoenix_trace", default=None)


def _resolve(value: object) -> TraceContext | None:
    if value is None or type(value) is TraceContext:
        return value  # type: ignore[return-value]
    return value.trace  # type: ignore[attr-defined,no-any-return]


def current_trace() -> TraceContext | None:
    """The trace context of the running task, if any."""
    return _resolve(_current.get())


@contextmanager
def use_trace(context: TraceContext | None) -> Iterator[TraceContext | None]:
    """Make ``context`` current inside the ``with`` block (per task, via contextvars)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def next_hop_trace() -> TraceContext:
    """What an outgoing message carries: a child of the current span, or a new trace."""
    current = _resolve(_current.get())
    return current.child() if current is not None else TraceContext.new()


def span_id_at(base: int, index: int) -> str:
    """Span id ``index`` of a batch whose random base is ``base`` (never all zeros)."""
    return f"{((base + index) & 0xFFFFFFFFFFFFFFFF) or 1:016x}"


def trace_id_at(base: int, index: int) -> str:
    """Trace id ``index`` of a batch whose random base is ``base`` (never all zeros)."""
    return f"{((base + index) & ((1 << 128) - 1)) or 1:032x}"


def random_bases() -> tuple[int, int]:
    """Fresh random bases for a batch's span ids and trace ids."""
    return _getrandbits(64), _getrandbits(128)
