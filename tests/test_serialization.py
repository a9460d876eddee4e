"""Serialization: the msgpack format, format selection, bounded compression, and what every format shares."""

from __future__ import annotations

import os
import zlib

import lz4.frame
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import ConfigurationError, DecodeError, EncodeError, Message, SecurityInfo, validate_message
from phoenix_trio import serialization as ser
from phoenix_trio.serialization import _msgpack

from .strategies import json_extension_values, messages


@settings(max_examples=300)
@given(messages())
def test_msgpack_round_trips_every_attribute(message: Message) -> None:
    payload, fmt = ser.serialize(message, "msgpack")
    assert fmt == "msgpack"
    back = ser.deserialize(payload, "msgpack")
    assert back == message
    validate_message(back)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_msgpack_decoder_on_arbitrary_bytes(payload: bytes) -> None:
    try:
        message = ser.deserialize(payload, "msgpack")
    except DecodeError:
        return
    validate_message(message)


@settings(max_examples=400)
@given(messages(), st.data())
def test_msgpack_decoder_on_mutated_messages(message: Message, data: st.DataObject) -> None:
    payload = bytearray(_msgpack.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        decoded = ser.deserialize(bytes(payload), "msgpack")
    except DecodeError:
        return
    validate_message(decoded)


@given(
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.binary(max_size=5), st.booleans()), min_size=16, max_size=16)
)
def test_msgpack_decoder_on_wrong_shapes(items: list) -> None:
    items[0] = 1
    try:
        decoded = ser.deserialize(msgpack.packb(items), "msgpack")
    except DecodeError:
        return
    validate_message(decoded)


def test_msgpack_layout_is_the_documented_array() -> None:
    message = Message.new({"k": "v"}, target="planner")
    obj = msgpack.unpackb(_msgpack.encode(message), timestamp=3)
    assert obj[0] == 1 and len(obj) == 16
    assert obj[1:5] == [message.id, message.source, message.type, {"k": "v"}]
    assert obj[6] == message.time
    assert obj[12][1] == "planner"


def test_msgpack_caches_never_skip_validation() -> None:
    m = Message.new("x", target="t", correlation_id="c-1", security=SecurityInfo(agent_id="a", key_id="k"))
    good = msgpack.unpackb(_msgpack.encode(m), timestamp=3)
    assert _msgpack.from_array(good) == m  # now the routing prefix and the identity record are cached
    for index, position, bad in [(12, 7, 42), (12, 7, ""), (13, 3, "not bytes"), (13, 2, 5), (13, 0, "")]:
        obj = msgpack.unpackb(_msgpack.encode(m), timestamp=3)
        obj[index][position] = bad
        with pytest.raises(DecodeError):
            _msgpack.from_array(obj)
    again = _msgpack.from_array(good)
    assert again == m and again.routing is not m.routing  # per-message correlation id: a fresh record


def test_unrepresentable_data_is_an_encode_error() -> None:
    with pytest.raises(EncodeError):
        ser.serialize(Message.new(object()), "msgpack")


def test_decoder_limits_hold_for_hostile_nesting() -> None:
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(DecodeError):
        ser.deserialize(deep, "msgpack")
    huge_claim = b"\xdd\xff\xff\xff\xff"  # array32 claiming 4 billion items, nothing after
    with pytest.raises(DecodeError):
        ser.deserialize(huge_claim, "msgpack")


# -- selection ------------------------------------------------------------------------------


def test_auto_selection_follows_the_design() -> None:
    selector = ser.FormatSelector(
        beam_targets={"erlang-agent"},
        cross_language_targets={"go-agent"},
        schema_evolution_types={"phoenix.agent.state.update", "phoenix.billing."},
    )
    pick = lambda **kw: ser.select_format(Message.new("x", **kw), selector=selector)  # noqa: E731
    assert pick(target="erlang-agent") == "etf"
    assert pick(target="go-agent") == "msgpack"
    assert pick(type="phoenix.agent.state.update") == "protobuf"
    assert pick(type="phoenix.billing.invoice.create") == "protobuf"
    assert pick(target="python-agent") == "msgpack"
    selector.debug = True
    assert pick(target="python-agent") == "json"
    assert pick(target="erlang-agent") == "etf"
    payload, fmt = ser.serialize(Message.new("x"), selector=ser.FormatSelector())
    assert fmt == "msgpack" and ser.deserialize(payload, fmt).data == "x"


def test_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        ser.serialize(Message.new("x"), "yaml")
    with pytest.raises(ConfigurationError):
        ser.deserialize(b"", "yaml")


# -- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["lz4", "zlib"])
def test_compression_round_trip_and_threshold(algorithm: str) -> None:
    text = b"phoenix " * 1000
    packed, used = ser.compress(text, algorithm)
    assert used == algorithm and len(packed) < len(text) // 5
    assert ser.decompress(packed, used) == text
    small, used = ser.compress(b"tiny", algorithm)
    assert (small, used) == (b"tiny", None)
    noise = os.urandom(5000)
    assert ser.compress(noise, algorithm) == (noise, None)  # incompressible: kept as is


@pytest.mark.parametrize(
    ("algorithm", "bomb"),
    [("lz4", lz4.frame.compress(bytes(50_000_000))), ("zlib", zlib.compress(bytes(50_000_000), 9))],
)
def test_decompression_is_bounded(algorithm: str, bomb: bytes) -> None:
    assert len(bomb) < 300_000
    with pytest.raises(DecodeError, match="beyond"):
        ser.decompress(bomb, algorithm, max_size=1_000_000)


@given(st.binary(max_size=200))
@pytest.mark.parametrize("algorithm", ["lz4", "zlib"])
def test_decompress_arbitrary_bytes(algorithm: str, payload: bytes) -> None:
    try:
        out = ser.decompress(payload, algorithm, max_size=10_000)
    except DecodeError:
        return
    assert len(out) <= 10_000


# -- every format --------------------------------------------------------------------------------

# What each format round-trips exactly: JSON types foreign extensions by inference (Binary
# and Timestamp values come back as strings); the other formats carry every type.
FORMAT_MESSAGES = {
    "msgpack": messages(),
    "json": messages(extension_values=json_extension_values),
    "protobuf": messages(),
    "etf": messages(),
}


def test_every_format_is_registered() -> None:
    assert sorted(ser.available_formats()) == sorted(ser.FORMATS) == sorted(FORMAT_MESSAGES)
    assert ser.batch_formats() == ("json", "protobuf")
    with pytest.raises(ConfigurationError, match="no batch form"):
        ser.serialize_batch([Message.new("x")], "msgpack")
    with pytest.raises(ConfigurationError, match="no batch form"):
        ser.deserialize_batch(b"", "etf")


@pytest.mark.parametrize("fmt", ser.FORMATS)
@settings(max_examples=150)
@given(data=st.data())
def test_every_format_round_trips(fmt: str, data: st.DataObject) -> None:
    message = data.draw(FORMAT_MESSAGES[fmt])
    payload, used = ser.serialize(message, fmt)
    assert used == fmt and isinstance(payload, bytes)
    assert ser.deserialize(payload, fmt) == message
    assert ser.deserialize(bytearray(payload), fmt) == message


@settings(max_examples=150)
@given(messages(extension_values=json_extension_values))
def test_formats_agree(message: Message) -> None:
    """Transcoding through every format in turn changes nothing."""
    current = message
    for fmt in ("json", "etf", "protobuf", "msgpack", "json"):
        current = ser.deserialize(ser.serialize(current, fmt)[0], fmt)
    assert current == message


@pytest.mark.parametrize("fmt", ser.FORMATS)
@settings(max_examples=300)
@given(payload=st.binary(max_size=400))
def test_every_decoder_on_arbitrary_bytes(fmt: str, payload: bytes) -> None:
    try:
        message = ser.deserialize(payload, fmt)
    except DecodeError:
        return
    validate_message(message)


@pytest.mark.parametrize("fmt", ser.FORMATS)
@settings(max_examples=200)
@given(data=st.data())
def test_every_decoder_on_mutated_messages(fmt: str, data: st.DataObject) -> None:
    payload = bytearray(ser.serialize(data.draw(FORMAT_MESSAGES[fmt]), fmt)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        decoded = ser.deserialize(bytes(payload), fmt)
    except DecodeError:
        return
    validate_message(decoded)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 1_000_000,
        b"{" * 1_000_000,
        b"\x83" + b"h\x01" * 500_000 + b"j",
        b"\x91" * 1_000_000 + b"\xc0",
        b"\x2a\xff\xff\xff\xff\x0f" + b"\x00" * 100,  # protobuf: a 4 GiB length prefix
        b"\x0a" * 1_000_000,
    ],
)
@pytest.mark.parametrize("fmt", ser.FORMATS)
def test_hostile_payloads_are_rejected_cheaply(fmt: str, payload: bytes) -> None:
    with pytest.raises(DecodeError):
        ser.deserialize(payload, fmt)


def test_auto_selection_round_trips_in_the_chosen_format() -> None:
    selector = ser.FormatSelector(beam_targets={"beam"}, schema_evolution_types={"phoenix.agent.state.update"})
    cases = {
        "etf": Message.new({"k": (1, 2)}, target="beam"),
        "protobuf": Message.new({"k": 1}, type="phoenix.agent.state.update"),
        "msgpack": Message.new({"k": 1}, target="python"),
    }
    for expected, message in cases.items():
        payload, fmt = ser.serialize(message, selector=selector)
        assert fmt == expected and ser.deserialize(payload, fmt) == message
    payload, fmt = ser.serialize(Message.new([1]), selector=ser.FormatSelector(debug=True))
    assert fmt == "json" and payload.startswith(b"{") and ser.deserialize(payload, "json").data == [1]


@pytest.mark.parametrize("fmt", ser.FORMATS)
@pytest.mark.parametrize("data", [object(), {"k": object()}, [1, {2, 3}]])
def test_every_encoder_refuses_what_it_cannot_carry(fmt: str, data: object) -> None:
    with pytest.raises(EncodeError):
        ser.serialize(Message.new(data), fmt)
