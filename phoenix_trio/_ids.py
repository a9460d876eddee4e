"""Unique, time-sortable identifiers for messages, correlations and proposals.

Ids are UUIDv7 strings (RFC 9562): 48 bits of Unix time in milliseconds, then a
26-bit sequence that counts up within one millisecond (so ids from one process sort in
creation order), then 48 random bits fixed per process (so processes never collide).
Sorting the strings sorts by creation time.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_lock = threading.Lock()  # ids may be made from trio.to_thread workers too
_SEQ_LIMIT = 1 << 26
_last_ms = 0
_seq = 0
_prefix = ""  # the time part of the id, formatted once per millisecond
_node_hex = ""


def _draw_node() -> None:
    global _node_hex
    _node_hex = f"{secrets.randbits(48):012x}"


_draw_node()
os.register_at_fork(after_in_child=_draw_node)  # a forked child must not share ids


def new_id() -> str:
    """A new UUIDv7 string, unique and increasing within this process."""
    global _last_ms, _seq, _prefix
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _seq = 0
            _prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
        else:  # same millisecond, or the clock stepped back: keep counting
            _seq += 1
            if _seq >= _SEQ_LIMIT:
                _last_ms += 1
                _seq = 0
                _prefix = f"{_last_ms >> 16:08x}-{_last_ms & 0xFFFF:04x}-7"
        seq = _seq
        prefix = _prefix
    # 48 bits time | version 7 | 12 bits seq high | variant 10 | 14 bits seq low | 48 bits random
    return f"{prefix}{seq >> 14:03x}-{0x8000 | (seq & 0x3FFF):04x}-{_node_hex}"


def reserve(count: int) -> tuple[int, int, str]:
    """Reserve ``count`` consecutive ids at once: ``format_id(ms, first + i, node)`` for i < count.

    Batches stamp their messages this way (one lock, no formatting until an id is read).
    ``count`` must be below 2**26.
    """
    global _last_ms, _seq, _prefix
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, -1
        if _seq + count >= _SEQ_LIMIT:  # not enough room left in this millisecond
            _last_ms += 1
            _seq = -1
        first = _seq + 1
        _seq += count
        _prefix = f"{_last_ms >> 16:08x}-{_last_ms & 0xFFFF:04x}-7"
        return _last_ms, first, _node_hex


class IdBlock:
    """Ids handed out from blocks reserved 4,096 at a time: one lock per block, not per id.

    ``next()`` returns a compact int, ``(ms << 16) | seq``, that :func:`format_compact`
    turns into the UUIDv7 string (given this process's node part): cheap to make and to
    send, formatted only where someone reads it. Ids from a block share the block's
    millisecond, so they sort by reservation time, not by the exact moment of use.
    """

    __slots__ = ("_ms", "_next", "_end")

    SIZE = 4096

    def __init__(self) -> None:
        self._ms = 0
        self._next = 0
        self._end = 0

    def next(self) -> int:
        seq = self._next
        if seq >= self._end:
            self._ms, seq, _ = reserve_compact(self.SIZE)
            self._end = seq + self.SIZE
        self._next = seq + 1
        return (self._ms << 16) | seq


def reserve_compact(count: int) -> tuple[int, int, str]:
    """Like :func:`reserve`, but every sequence number stays below 2**16 (compact ids)."""
    global _last_ms, _seq, _prefix
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, -1
        if _seq + count >= 1 << 16:
            _last_ms += 1
            _seq = -1
        first = _seq + 1
        _seq += count
        _prefix = f"{_last_ms >> 16:08x}-{_last_ms & 0xFFFF:04x}-7"
        return _last_ms, first, _node_hex


def node_part() -> str:
    """This process's random 48-bit id part, as 12 hex digits."""
    return _node_hex


def format_compact(value: int, node_hex: str) -> str:
    """The UUIDv7 string for a compact id from :class:`IdBlock`."""
    return format_id(value >> 16, value & 0xFFFF, node_hex)


def format_id(ms: int, seq: int, node_hex: str) -> str:
    """The UUIDv7 string for a reserved (millisecond, sequence, node) triple."""
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{seq >> 14:03x}-{0x8000 | (seq & 0x3FFF):04x}-{node_hex}"


def id_time_ms(uuid7: str) -> int:
    """The creation time (Unix milliseconds) encoded in a :func:`new_id` string."""
    return int(uuid7[:8] + uuid7[9:13], 16)
