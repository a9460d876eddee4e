"""The wire codec: every message round-trips, and any bytes decode or raise DecodeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import DecodeError
from phoenix_trio.raft import (
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
    decode,
    encode,
)

MESSAGE_TYPES = (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    VoteResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    GroupSubmit,
)

u64 = st.integers(0, (1 << 63) - 1)
small = st.integers(0, 1 << 40)
node_id = st.one_of(st.text(max_size=12), st.integers(-(1 << 40), 1 << 40))
config = st.lists(node_id, max_size=6, unique=True).map(tuple)
# what a command may hold after a msgpack round trip: lists, not tuples
data = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def appends(draw):
    prev = draw(small)
    count = draw(st.integers(0, 5))
    entries = []
    for i in range(count):
        kind = draw(st.sampled_from([ENTRY_COMMAND, ENTRY_NOOP, ENTRY_CONFIG]))
        payload = {ENTRY_COMMAND: draw(data), ENTRY_NOOP: None, ENTRY_CONFIG: draw(config)}[kind]
        entries.append(Entry(draw(small), prev + 1 + i, kind, payload))
    return AppendEntries(draw(u64), prev, draw(u64), tuple(entries), draw(u64))


messages = st.one_of(
    appends(),
    st.builds(AppendResponse, u64, st.booleans(), u64, u64),
    st.builds(Heartbeat, u64, u64, u64),
    st.builds(HeartbeatResponse, u64, u64),
    st.builds(RequestVote, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(VoteResponse, u64, st.booleans(), st.booleans()),
    st.builds(InstallSnapshot, u64, u64, u64, config, u64, st.binary(max_size=64), st.booleans()),
    st.builds(SnapshotResponse, u64, u64, u64, st.booleans()),
    st.builds(TimeoutNow, u64),
    st.builds(GroupSubmit, st.tuples(node_id, u64), u64, st.lists(data, max_size=4).map(tuple)),
)


@given(messages)
@settings(max_examples=400)
def test_every_message_round_trips(msg) -> None:
    assert decode(encode(msg)) == msg


def _decode_or_error(raw: bytes) -> None:
    try:
        msg = decode(raw)
    except DecodeError:
        return
    assert type(msg) in MESSAGE_TYPES
    # a decoded message is a valid one: it encodes again, to the same bytes (compared as
    # bytes, since a damaged float may decode as NaN, which is not equal to itself)
    again = encode(msg)
    assert encode(decode(again)) == again


@given(st.binary(max_size=200))
@settings(max_examples=1500)
def test_arbitrary_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    _decode_or_error(raw)


@given(messages, st.data())
@settings(max_examples=800)
def test_damaged_messages_decode_or_raise_decode_error(msg, draw) -> None:
    raw = bytearray(encode(msg))
    action = draw.draw(st.sampled_from(["flip", "truncate", "insert"]))
    position = draw.draw(st.integers(0, max(len(raw) - 1, 0)))
    if action == "flip" and raw:
        raw[position] ^= draw.draw(st.integers(1, 255))
    elif action == "truncate":
        del raw[position:]
    else:
        raw[position:position] = draw.draw(st.binary(min_size=1, max_size=4))
    _decode_or_error(bytes(raw))


@given(st.lists(st.one_of(st.integers(-3, 20), data, st.lists(data, max_size=3)), max_size=9))
@settings(max_examples=300)
def test_well_formed_msgpack_of_the_wrong_shape_raises_decode_error(fields) -> None:
    _decode_or_error(msgpack.packb(fields, use_bin_type=True))


def test_specific_invalid_inputs() -> None:
    bad = [
        b"",
        b"\xc1",  # reserved msgpack byte
        msgpack.packb([99, 1]),  # unknown tag
        msgpack.packb([3, 1, 2]),  # heartbeat with a field missing
        msgpack.packb([3, -1, 2, 3]),  # negative term
        msgpack.packb([3, True, 2, 3]),  # a bool is not an int
        msgpack.packb([3.0, 1, 2, 3]),  # a float tag
        msgpack.packb([9, (1 << 64) - 1]),  # beyond int64
        msgpack.packb([1, 1, 0, 0, [[1, 7, None]], 0]),  # unknown entry kind
        msgpack.packb([1, 1, 0, 0, [[1, 1, "x"]], 0]),  # no-op with data
        msgpack.packb([7, 1, 1, 1, ["a", "a"], 0, b"", True]),  # duplicate voter
        msgpack.packb([7, 1, 1, 1, [], 0, "text", True]),  # snapshot data must be bytes
        b"\x91" * 5000 + b"\x01",  # deep nesting
    ]
    for raw in bad:
        with pytest.raises(DecodeError):
            decode(raw)
    with pytest.raises(DecodeError):
        decode(None)  # type: ignore[arg-type]


def test_size_is_bounded_before_parsing() -> None:
    raw = encode(InstallSnapshot(1, 1, 1, ("a",), 0, b"x" * 1000, True))
    assert decode(raw, max_size=len(raw)).data == b"x" * 1000
    with pytest.raises(DecodeError):
        decode(raw, max_size=len(raw) - 1)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode(object())
