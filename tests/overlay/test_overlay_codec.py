"""The overlay codec: every message round-trips; any bytes decode to a message or DecodeError."""

from __future__ import annotations

import lz4.block
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_trio import DecodeError
from phoenix_trio.overlay import MESSAGE_TYPES, decode, encode
from phoenix_trio.overlay import _codec
from phoenix_trio.overlay import _messages as m

from overlay_strategies import messages


@given(messages, st.booleans())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_round_trips(msg, compress) -> None:
    data = encode(msg, compress=compress)
    assert decode(data) == msg
    assert type(decode(data)) is type(msg)


def test_the_strategies_cover_every_message_type() -> None:
    seen = set()

    @given(messages)
    @settings(max_examples=600, database=None)
    def collect(msg) -> None:
        seen.add(type(msg))

    collect()
    assert seen == set(MESSAGE_TYPES)


@given(st.binary(max_size=300))
@settings(max_examples=1500)
def test_any_bytes_decode_to_a_message_or_decode_error(data) -> None:
    try:
        msg = decode(data)
    except DecodeError:
        return
    assert type(msg) in MESSAGE_TYPES
    assert decode(encode(msg)) == msg


@given(messages, st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_corrupted_encodings_decode_or_raise_decode_error(msg, data) -> None:
    raw = bytearray(encode(msg, compress=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            out = decode(candidate)
        except DecodeError:
            continue
        assert type(out) in MESSAGE_TYPES


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=4) | st.integers(0, 9), inner, max_size=4),
    max_leaves=20,
)


@given(st.integers(0, 120), st.lists(json_like, max_size=7))
@settings(max_examples=800)
def test_well_formed_msgpack_with_wrong_shapes_raises_decode_error(tag, fields) -> None:
    data = b"\x00" + msgpack.packb([tag, *fields], use_bin_type=True)
    try:
        msg = decode(data)
    except DecodeError:
        return
    assert type(msg) in MESSAGE_TYPES


def test_field_types_and_bounds_are_checked() -> None:
    def raw(*values) -> bytes:
        return b"\x00" + msgpack.packb(list(values), use_bin_type=True)

    tag = {cls: t for t, (cls, _) in _codec._SCHEMA.items()}
    assert decode(raw(tag[m.ForwardJoin], "a", 3)) == m.ForwardJoin("a", 3)
    bad = [
        raw(tag[m.ForwardJoin], "a", -1),  # negative counter
        raw(tag[m.ForwardJoin], "a", True),  # bool is not an int here
        raw(tag[m.ForwardJoin], "", 3),  # empty node id
        raw(tag[m.ForwardJoin], "x" * (m.MAX_NODE_ID + 1), 3),  # node id too long
        raw(tag[m.ForwardJoin], b"a", 3),  # bytes, not a string
        raw(tag[m.ForwardJoin], "a"),  # missing field
        raw(tag[m.ForwardJoin], "a", 3, 4),  # extra field
        raw(tag[m.Welcome], ["a", "a"]),  # duplicate ids in a view
        raw(tag[m.Welcome], ["n%d" % i for i in range(m.MAX_VIEW + 1)]),  # view too large
        raw(tag[m.EagerPush], b"", "o", 0, b""),  # empty message id
        raw(tag[m.EagerPush], b"x" * (m.MAX_MESSAGE_ID + 1), "o", 0, b""),
        raw(tag[m.Routed], b"i", ["a", "b"], 2, b"", 0),  # hop past the route
        raw(tag[m.Routed], b"i", ["a", "a"], 0, b"", 0),  # a route repeats a node: could loop
        raw(tag[m.Routed], b"i", ["a"], 0, b"", 0),  # a route has two ends
        raw(tag[m.RouteRequest], b"i", "t", [], False),
        raw(tag[m.GossipPush], [[b"i", b"", 1, 0, "o", {"a": -1}]]),  # bad clock counter
        raw(tag[m.GossipPush], [[b"i", b"", 1, 0, "o"]]),  # envelope missing a field
        raw(9999),
        raw("tag"),
        b"\x00" + msgpack.packb({"tag": 1}),
        b"",
        b"\x07" + msgpack.packb([1]),  # unknown format byte
    ]
    for data in bad:
        with pytest.raises(DecodeError):
            decode(data)


def test_compression_applies_to_large_messages_only_and_is_bounded() -> None:
    small = m.EagerPush(b"i", "o", 1, b"x" * 10)
    assert encode(small, compress=True)[0] == _codec.FORMAT_PLAIN
    big = m.EagerPush(b"i", "o", 1, b"x" * 100_000)
    packed = encode(big, compress=True)
    assert packed[0] == _codec.FORMAT_LZ4 and len(packed) < 2000
    assert decode(packed) == big
    with pytest.raises(DecodeError):
        decode(packed, max_size=50_000)  # would inflate past the limit
    body = msgpack.packb([20, b"i", "o", 1, b"x" * 5000], use_bin_type=True)
    liar = b"\x01" + (len(body) + 10).to_bytes(4, "big") + lz4.block.compress(body, store_size=False)
    with pytest.raises(DecodeError):
        decode(liar)
    with pytest.raises(DecodeError):
        decode(b"\x01\x00\x00\x10\x00garbage")
    with pytest.raises(DecodeError):
        decode(b"\x01\x00")


def test_encode_refuses_non_messages_and_decode_non_bytes() -> None:
    with pytest.raises(TypeError):
        encode(("not", "a", "message"))
    with pytest.raises(DecodeError):
        decode("a string")  # type: ignore[arg-type]
    assert decode(bytearray(encode(m.Prune()))) == m.Prune()


def test_tags_are_stable() -> None:
    # The tags are the wire format: a change here breaks interoperability.
    assert encode(m.Join()) == b"\x00\x91\x01"
    assert encode(m.Prune()) == b"\x00\x91\x17"
    assert encode(m.WelcomeAck()) == b"\x00\x91\x09"
