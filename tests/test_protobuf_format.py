"""The CloudEvents Protobuf format: schema, hand-checked wire bytes, round trips, bad input."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import DecodeError, EncodeError, Message, validate_message
from phoenix_trio import serialization as ser
from phoenix_trio.serialization import _protobuf as pb

from .strategies import messages

UTC = dt.timezone.utc


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def test_schema_matches_the_official_proto() -> None:
    event = pb.CloudEvent.DESCRIPTOR
    assert event.full_name == "io.cloudevents.v1.CloudEvent"
    assert {f.name: f.number for f in event.fields} == {
        "id": 1,
        "source": 2,
        "spec_version": 3,
        "type": 4,
        "attributes": 5,
        "binary_data": 6,
        "text_data": 7,
        "proto_data": 8,
    }
    assert [f.name for f in event.oneofs_by_name["data"].fields] == ["binary_data", "text_data", "proto_data"]
    assert event.fields_by_name["proto_data"].message_type.full_name == "google.protobuf.Any"
    value = event.nested_types_by_name["CloudEventAttributeValue"]
    assert value.full_name == "io.cloudevents.v1.CloudEvent.CloudEventAttributeValue"
    assert {f.name: f.number for f in value.fields} == {
        "ce_boolean": 1,
        "ce_integer": 2,
        "ce_string": 3,
        "ce_bytes": 4,
        "ce_uri": 5,
        "ce_uri_ref": 6,
        "ce_timestamp": 7,
    }
    assert [f.name for f in value.oneofs_by_name["attr"].fields] == [f.name for f in value.fields]
    assert value.fields_by_name["ce_timestamp"].message_type.full_name == "google.protobuf.Timestamp"
    assert event.fields_by_name["attributes"].message_type.GetOptions().map_entry
    batch = pb.CloudEventBatch.DESCRIPTOR
    assert batch.full_name == "io.cloudevents.v1.CloudEventBatch"
    assert [(f.name, f.number, f.message_type.full_name) for f in batch.fields] == [("events", 1, "io.cloudevents.v1.CloudEvent")]


def small_message() -> Message:
    return Message(
        id="1",
        source="/s",
        type="t",
        data="hi",
        time=dt.datetime(1970, 1, 1, 0, 0, 1, 500, tzinfo=UTC),
        dataschema="urn:x",
        extensions={"ok": True, "n": -2, "b": b"\x01\x02"},
    )


def small_message_bytes() -> bytes:
    """small_message() on the wire, written by hand from the proto's field numbers."""

    def entry(key: str, value: bytes) -> bytes:  # one map<string, CloudEventAttributeValue> entry
        return field(5, field(1, key.encode()) + field(2, value))

    return b"".join(
        [
            field(1, b"1"),  # id
            field(2, b"/s"),  # source
            field(3, b"1.0"),  # spec_version
            field(4, b"t"),  # type
            # attributes, sorted by key (deterministic serialization)
            entry("b", field(4, b"\x01\x02")),  # ce_bytes
            entry("dataschema", field(5, b"urn:x")),  # ce_uri
            entry("n", varint_field(2, 2**64 - 2)),  # ce_integer -2: int32 negatives are 10-byte varints
            entry("ok", varint_field(1, 1)),  # ce_boolean
            entry("time", field(7, varint_field(1, 1) + varint_field(2, 500_000))),  # ce_timestamp{seconds, nanos}
            field(7, b"hi"),  # text_data (str data, no content type)
        ]
    )


def test_hand_checked_bytes_both_ways() -> None:
    assert pb.encode(small_message()) == small_message_bytes()
    assert pb.decode(small_message_bytes()) == small_message()


def test_attribute_types() -> None:
    message = Message.new(
        b"\x00",
        subject="sub",
        dataschema="https://example.com/s",
        security=ser_security(),
        extensions={"when": dt.datetime(2024, 1, 2, tzinfo=UTC), "raw": b"\xff"},
    )
    event = pb.to_proto(message)
    kinds = {name: value.WhichOneof("attr") for name, value in event.attributes.items()}
    assert kinds["time"] == kinds["phxauthtime"] == kinds["when"] == "ce_timestamp"
    assert kinds["phxauthnonce"] == kinds["raw"] == "ce_bytes"
    assert kinds["phxtimeout"] == kinds["phxmaxretries"] == "ce_integer"
    assert kinds["phxack"] == "ce_boolean"
    assert kinds["dataschema"] == "ce_uri"
    assert kinds["subject"] == kinds["traceparent"] == kinds["phxvclock"] == kinds["datacontenttype"] == "ce_string"
    assert event.WhichOneof("data") == "binary_data" and event.binary_data == b"\x00"
    assert pb.decode(pb.encode(message)) == message


def ser_security():
    from phoenix_trio import SecurityInfo

    return SecurityInfo(agent_id="a", timestamp=dt.datetime(2024, 1, 1, tzinfo=UTC), nonce=b"\x01" * 12)


@settings(max_examples=300)
@given(messages())
def test_round_trip(message: Message) -> None:
    payload, fmt = ser.serialize(message, "protobuf")
    assert fmt == "protobuf"
    assert ser.deserialize(payload, "protobuf") == message
    assert pb.encode(message) == payload  # deterministic


@pytest.mark.parametrize(
    ("data", "content_type", "wire", "back_type"),
    [
        ({"a": [1, None]}, "application/json", ("text_data", '{"a":[1,null]}'), "application/json"),
        ("plain", "application/json", ("text_data", '"plain"'), "application/json"),
        ("plain", "text/plain", ("text_data", "plain"), "text/plain"),
        ("plain", None, ("text_data", "plain"), None),
        ([1, 2], None, ("text_data", "[1,2]"), "application/json"),  # JSON data gets its content type
        (b"\x00", "application/json", ("binary_data", b"\x00"), "application/json"),
        (None, None, (None, None), None),
    ],
)
def test_data_mapping(data, content_type, wire, back_type) -> None:
    message = Message(id="1", source="/s", type="t", data=data, datacontenttype=content_type)
    event = pb.to_proto(message)
    which = event.WhichOneof("data")
    assert (which, getattr(event, which) if which else None) == wire
    back = pb.decode(pb.encode(message))
    assert back.data == data and back.datacontenttype == back_type


def test_data_that_cannot_be_carried() -> None:
    with pytest.raises(EncodeError, match="not JSON"):
        pb.encode(Message(id="1", source="/s", type="t", data={"a": 1}, datacontenttype="text/plain"))
    with pytest.raises(EncodeError):
        pb.encode(Message(id="1", source="/s", type="t", data={1: "int key"}, datacontenttype="application/json"))


def test_batch() -> None:
    batch = [Message.new({"i": i}) for i in range(3)] + [Message.new(b"\x01")]
    payload = ser.serialize_batch(batch, "protobuf")
    assert payload == b"".join(field(1, pb.encode(m)) for m in batch)  # repeated CloudEvent events = 1
    assert ser.deserialize_batch(payload, "protobuf") == batch
    assert ser.deserialize_batch(b"", "protobuf") == []
    with pytest.raises(DecodeError, match="more than 3 events"):
        pb.decode_batch(payload, max_events=3)


def test_foreign_producers_typing_is_accepted() -> None:
    event = pb.CloudEvent(id="x", source="/s", spec_version="1.0", type="t", text_data="hello")
    event.attributes["phxtimeout"].ce_string = "250"  # canonical string form of an Integer
    event.attributes["time"].ce_string = "2024-01-02T03:04:05Z"
    event.attributes["phxauthagent"].ce_uri_ref = "agent-7"
    message = pb.decode(event.SerializeToString())
    assert message.delivery.timeout == 250 and message.security.agent_id == "agent-7"
    assert message.time == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC) and message.data == "hello"


def bad_event(**attributes):
    event = pb.CloudEvent(id="x", source="/s", spec_version="1.0", type="t")
    for name, (kind, value) in attributes.items():
        if kind == "ce_timestamp":
            event.attributes[name].ce_timestamp.seconds, event.attributes[name].ce_timestamp.nanos = value
        elif kind is None:
            event.attributes[name].SetInParent()
        else:
            setattr(event.attributes[name], kind, value)
    return event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (bad_event(id=("ce_string", "y")), "must not be in the attributes map"),
        (bad_event(ext=(None, None)), "has no value"),
        (bad_event(time=("ce_timestamp", (10**12, 0))), "out of range"),
        (bad_event(time=("ce_timestamp", (0, 10**9))), "nanos"),
        (bad_event(phxack=("ce_integer", 1)), "boolean"),
        (bad_event(Bad=("ce_string", "v")), "lowercase"),
        (pb.CloudEvent(id="x", source="/s", spec_version="0.3", type="t"), "specversion"),
        (pb.CloudEvent(id="", source="/s", spec_version="1.0", type="t"), "'id'"),
        (bad_event(datacontenttype=("ce_string", "application/json")), None),
    ],
)
def test_invalid_events(event, reason) -> None:
    if reason is None:  # JSON content type with invalid JSON text
        event.text_data = "{not json"
        reason = "invalid JSON"
    with pytest.raises(DecodeError, match=reason):
        pb.decode(event.SerializeToString())


def test_attribute_count_is_bounded() -> None:
    event = pb.CloudEvent(id="x", source="/s", spec_version="1.0", type="t")
    for i in range(300):
        event.attributes[f"ext{i}"].ce_integer = i
    with pytest.raises(DecodeError, match="more than 256 attributes"):
        pb.decode(event.SerializeToString())


def test_proto_data_is_refused_with_a_reason() -> None:
    event = pb.CloudEvent(id="x", source="/s", spec_version="1.0", type="t")
    event.proto_data.type_url = "type.googleapis.com/x.Y"
    with pytest.raises(DecodeError, match="proto_data"):
        pb.decode(event.SerializeToString())


def test_size_limit_and_invalid_utf8() -> None:
    payload = pb.encode(Message.new("x" * 1000))
    with pytest.raises(DecodeError, match="larger than"):
        pb.decode(payload, max_size=500)
    with pytest.raises(DecodeError, match="invalid protobuf"):
        pb.decode(field(1, b"\xff\xfe"))  # proto3 strings must be UTF-8


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_batch_decoder_on_arbitrary_bytes(payload: bytes) -> None:
    # The single-event decoder is fuzzed with every other format in test_serialization.py.
    try:
        for message in ser.deserialize_batch(payload, "protobuf"):
            validate_message(message)
    except DecodeError:
        pass
