"""The wire encoding of Raft messages: a tagged msgpack array per message.

``encode(msg) -> bytes`` and ``decode(bytes) -> msg``. ``encode_many``/``decode_many`` carry
several messages in one payload (the runtime driver sends one payload per peer per
batch): the encoded messages back to back. ``decode`` of any bytes either
returns a valid message (every field of the right type and range) or raises
:class:`phoenix_trio.DecodeError`; it never raises anything else, and it refuses inputs
larger than ``max_size`` before parsing them. Layout: ``[tag, field, field, ...]`` in
the field order of the attrs class; entries travel as ``[term, kind, data]`` triples
whose indexes follow from ``prev_index``.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .._errors import DecodeError
from ._messages import (
    ENTRY_COMMAND,
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendResponse,
    Entry,
    GroupSubmit,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)

MAX_MESSAGE_SIZE = 64 << 20
"""Default bound on an encoded message (bytes); decode refuses anything larger."""
MAX_ENTRIES = 1 << 20
"""Most entries (or group payloads) one message may carry."""
_MAX_INT = (1 << 63) - 1

_T_APPEND = 1
_T_APPEND_RESP = 2
_T_HEARTBEAT = 3
_T_HEARTBEAT_RESP = 4
_T_VOTE = 5
_T_VOTE_RESP = 6
_T_SNAPSHOT = 7
_T_SNAPSHOT_RESP = 8
_T_TIMEOUT_NOW = 9
_T_GROUP_SUBMIT = 10

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(msg: Any) -> bytes:
    """Encode one Raft message. Raises ``TypeError`` for an object that is not one
    (or whose entry data msgpack cannot carry)."""
    t = type(msg)
    if t is AppendEntries:
        return _packb(
            [_T_APPEND, msg.term, msg.prev_index, msg.prev_term, [[e.term, e.kind, e.data] for e in msg.entries], msg.commit]
        )
    if t is AppendResponse:
        return _packb([_T_APPEND_RESP, msg.term, msg.success, msg.index, msg.hint_term])
    if t is Heartbeat:
        return _packb([_T_HEARTBEAT, msg.term, msg.commit, msg.seq])
    if t is HeartbeatResponse:
        return _packb([_T_HEARTBEAT_RESP, msg.term, msg.seq])
    if t is RequestVote:
        return _packb([_T_VOTE, msg.term, msg.last_index, msg.last_term, msg.pre_vote, msg.transfer])
    if t is VoteResponse:
        return _packb([_T_VOTE_RESP, msg.term, msg.granted, msg.pre_vote])
    if t is InstallSnapshot:
        return _packb(
            [_T_SNAPSHOT, msg.term, msg.index, msg.snap_term, list(msg.config), msg.offset, msg.data, msg.done]
        )
    if t is SnapshotResponse:
        return _packb([_T_SNAPSHOT_RESP, msg.term, msg.index, msg.offset, msg.done])
    if t is TimeoutNow:
        return _packb([_T_TIMEOUT_NOW, msg.term])
    if t is GroupSubmit:
        return _packb([_T_GROUP_SUBMIT, list(msg.stream), msg.seq, list(msg.payloads)])
    raise TypeError(f"not a Raft message: {msg!r}")


def _int(value: Any) -> int:
    if type(value) is not int or value < 0 or value > _MAX_INT:
        raise DecodeError(f"expected a non-negative int64, got {value!r:.40}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"expected a bool, got {value!r:.40}")
    return value


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"expected bytes, got {type(value).__name__}")
    return value


def _node_id(value: Any) -> Any:
    if type(value) is str:
        return value
    if type(value) is int and -_MAX_INT <= value <= _MAX_INT:
        return value
    raise DecodeError(f"expected a node id (str or int), got {value!r:.40}")


def _list(value: Any, limit: int = MAX_ENTRIES) -> list[Any]:
    if type(value) is not list:
        raise DecodeError(f"expected an array, got {type(value).__name__}")
    if len(value) > limit:
        raise DecodeError(f"array of {len(value)} items exceeds {limit}")
    return value


def _config(value: Any) -> tuple[Any, ...]:
    ids = tuple(_node_id(v) for v in _list(value, 1 << 16))
    if len(set(ids)) != len(ids):
        raise DecodeError("duplicate node id in a configuration")
    return ids


def _arity(fields: list[Any], n: int, name: str) -> None:
    if len(fields) != n:
        raise DecodeError(f"{name}: expected {n} fields, got {len(fields)}")


def _entries(raw: Any, prev_index: int) -> tuple[Entry, ...]:
    items = _list(raw)
    if prev_index + len(items) > _MAX_INT:
        raise DecodeError("entry index overflows")
    out = []
    index = prev_index
    for item in items:
        triple = _list(item, 3)
        _arity(triple, 3, "entry")
        term = _int(triple[0])
        kind = _int(triple[1])
        data = triple[2]
        index += 1
        if kind == ENTRY_CONFIG:
            data = _config(data)
        elif kind == ENTRY_NOOP:
            if data is not None:
                raise DecodeError("no-op entry carries data")
        elif kind != ENTRY_COMMAND:
            raise DecodeError(f"unknown entry kind {kind}")
        out.append(Entry(term, index, kind, data))
    return tuple(out)


def decode(data: bytes | bytearray | memoryview, *, max_size: int = MAX_MESSAGE_SIZE) -> Any:
    """Decode one Raft message; raise :class:`DecodeError` for anything that is not one."""
    try:
        size = len(data)
    except TypeError as exc:
        raise DecodeError(f"cannot decode {type(data).__name__}") from exc
    if size > max_size:
        raise DecodeError(f"message of {size} bytes exceeds {max_size}")
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
        return _build(fields)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack's own errors, bad UTF-8, recursion limits ...
        raise DecodeError(f"malformed Raft message: {type(exc).__name__}: {exc}"[:200]) from exc


def _build(fields: Any) -> Any:
    fields = _list(fields, 16)
    if not fields:
        raise DecodeError("empty message")
    tag = fields[0]
    if tag == _T_APPEND and type(tag) is int:
        _arity(fields, 6, "AppendEntries")
        prev_index = _int(fields[2])
        return AppendEntries(
            _int(fields[1]), prev_index, _int(fields[3]), _entries(fields[4], prev_index), _int(fields[5])
        )
    if tag == _T_APPEND_RESP and type(tag) is int:
        _arity(fields, 5, "AppendResponse")
        return AppendResponse(_int(fields[1]), _bool(fields[2]), _int(fields[3]), _int(fields[4]))
    if tag == _T_HEARTBEAT and type(tag) is int:
        _arity(fields, 4, "Heartbeat")
        return Heartbeat(_int(fields[1]), _int(fields[2]), _int(fields[3]))
    if tag == _T_HEARTBEAT_RESP and type(tag) is int:
        _arity(fields, 3, "HeartbeatResponse")
        return HeartbeatResponse(_int(fields[1]), _int(fields[2]))
    if tag == _T_VOTE and type(tag) is int:
        _arity(fields, 6, "RequestVote")
        return RequestVote(_int(fields[1]), _int(fields[2]), _int(fields[3]), _bool(fields[4]), _bool(fields[5]))
    if tag == _T_VOTE_RESP and type(tag) is int:
        _arity(fields, 4, "VoteResponse")
        return VoteResponse(_int(fields[1]), _bool(fields[2]), _bool(fields[3]))
    if tag == _T_SNAPSHOT and type(tag) is int:
        _arity(fields, 8, "InstallSnapshot")
        return InstallSnapshot(
            _int(fields[1]),
            _int(fields[2]),
            _int(fields[3]),
            _config(fields[4]),
            _int(fields[5]),
            _bytes(fields[6]),
            _bool(fields[7]),
        )
    if tag == _T_SNAPSHOT_RESP and type(tag) is int:
        _arity(fields, 5, "SnapshotResponse")
        return SnapshotResponse(_int(fields[1]), _int(fields[2]), _int(fields[3]), _bool(fields[4]))
    if tag == _T_TIMEOUT_NOW and type(tag) is int:
        _arity(fields, 2, "TimeoutNow")
        return TimeoutNow(_int(fields[1]))
    if tag == _T_GROUP_SUBMIT and type(tag) is int:
        _arity(fields, 4, "GroupSubmit")
        stream = _list(fields[1], 2)
        _arity(stream, 2, "GroupSubmit.stream")
        return GroupSubmit((_node_id(stream[0]), _int(stream[1])), _int(fields[2]), tuple(_list(fields[3])))
    raise DecodeError(f"unknown message tag {tag!r:.40}")


def encode_many(messages: list[Any]) -> bytes:
    """Encode several messages into one payload: their encodings back to back."""
    if len(messages) == 1:
        return encode(messages[0])
    return b"".join([encode(m) for m in messages])


def decode_many(data: bytes | bytearray | memoryview, *, max_size: int = MAX_MESSAGE_SIZE) -> list[Any]:
    """Decode a payload of back-to-back messages (:func:`encode_many`); every message is
    checked as by :func:`decode`, and any failure raises :class:`DecodeError`."""
    try:
        size = len(data)
    except TypeError as exc:
        raise DecodeError(f"cannot decode {type(data).__name__}") from exc
    if size > max_size:
        raise DecodeError(f"payload of {size} bytes exceeds {max_size}")
    unpacker = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=False, max_buffer_size=max(size, 1))
    try:
        unpacker.feed(data)
        out = []
        end = 0
        for fields in unpacker:
            out.append(_build(fields))
            end = unpacker.tell()
    except DecodeError:
        raise
    except Exception as exc:  # msgpack's own errors, bad UTF-8, recursion limits ...
        raise DecodeError(f"malformed Raft payload: {type(exc).__name__}: {exc}"[:200]) from exc
    if not out:
        raise DecodeError("empty Raft payload")
    if end != size:
        raise DecodeError("truncated Raft payload")
    return out
