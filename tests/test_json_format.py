"""The CloudEvents JSON format, checked both ways against the CloudEvents Python SDK.

The SDK (``cloudevents`` 2.x) ships two APIs: ``cloudevents.core`` (``JSONFormat``
read/write) and ``cloudevents.v1`` (the 1.x API: ``from_json`` / ``to_json``). Our output
must parse in both, and what both write must parse here, with the same attributes,
extensions and data. The SDK has no batch format, so batches are checked element-wise.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1.conversion import to_json as v1_to_json
from cloudevents.v1.http import CloudEvent as V1Event
from cloudevents.v1.http import from_json as v1_from_json
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import DecodeError, EncodeError, Message, SecurityInfo, validate_message
from phoenix_trio import serialization as ser
from phoenix_trio.serialization import _json
from phoenix_trio.serialization._attributes import parse_time, to_attributes

from .strategies import json_extension_values, messages

UTC = dt.timezone.utc
json_messages = messages(extension_values=json_extension_values)


def expected_json_attributes(message: Message) -> dict:
    """Our attributes as the JSON format types them (what an SDK reader should see)."""
    out = {}
    for name, value in to_attributes(message).items():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        out[name] = value
    return out


def same_attribute(expected, got) -> bool:
    if isinstance(expected, dt.datetime):
        got = got if isinstance(got, dt.datetime) else parse_time(got)
        return got == expected
    return type(got) is type(expected) and got == expected


def keep_bytes_parse_json(value):
    return value if isinstance(value, bytes) else json.loads(value)


# -- ours -> SDK -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(json_messages)
def test_sdk_core_reads_our_events(message: Message) -> None:
    event = JSONFormat().read(None, _json.encode(message))
    got = dict(event.get_attributes())
    expected = expected_json_attributes(message)
    if message.time is None:
        got.pop("time")  # the SDK invents a time when an event has none
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert same_attribute(value, got[name]), name
    assert event.get_data() == message.data


@settings(max_examples=150, deadline=None)
@given(json_messages)
def test_sdk_v1_reads_our_events(message: Message) -> None:
    # The v1 reader hands `data` to the unmarshaller as JSON text and `data_base64` as the
    # decoded bytes; its default unmarshaller JSON-parses both, so b"0" would come back as
    # 0. Parse the text, keep the bytes.
    event = v1_from_json(_json.encode(message), data_unmarshaller=keep_bytes_parse_json)
    got = dict(event.get_attributes())
    expected = expected_json_attributes(message)
    if message.time is None:
        got.pop("time")  # so does the v1 SDK
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert same_attribute(value, got[name]), name
    # v1 reads an absent data member as None, and (its own quirk, conversion.py) empty data too
    assert event.get_data() == (None if message.data in (b"", "") else message.data)


def test_our_batch_is_an_array_of_events_the_sdk_reads() -> None:
    batch = [Message.new({"n": i}, target=f"t{i}") for i in range(3)] + [Message.new(b"\x00\xff")]
    payload = ser.serialize_batch(batch, "json")
    array = json.loads(payload)
    assert isinstance(array, list) and len(array) == 4
    for message, element in zip(batch, array, strict=True):
        event = JSONFormat().read(None, json.dumps(element).encode())
        assert event.get_id() == message.id and event.get_data() == message.data
        assert event.get_extension("phxtarget") == message.routing.target
    assert ser.deserialize_batch(payload, "json") == batch
    assert ser.deserialize_batch(b"[]", "json") == []


# -- SDK -> ours -------------------------------------------------------------------------------

PHOENIX_ATTRIBUTES = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "rojo=00f067aa0ba902b7",
    "phxvclock": "a:3,b:1",
    "phxdelivery": "exactly_once",
    "phxtimeout": 250,
    "phxack": False,
    "phxtarget": "planner",
    "phxpriority": "high",
    "phxcorrelation": "c-42",
    "phxauthagent": "agent-1",
    "phxauthtime": "2024-05-06T07:08:09.123456Z",
    "phxauthnonce": base64.b64encode(b"\x00\x01nonce").decode(),
    "phxqosconsistency": "strong",
    "phxqosttl": 60000,
    "comexampleext": "value",
    "comexampleint": 5,
    "comexampleflag": True,
}


def check_phoenix_attributes(message: Message) -> None:
    assert message.trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and message.trace.tracestate == "rojo=00f067aa0ba902b7"
    assert message.causality.entries == {"a": 3, "b": 1}
    assert message.delivery.delivery_mode == "exactly_once" and message.delivery.timeout == 250
    assert message.delivery.acknowledgment_required is False and message.delivery.max_retries == 3  # default
    assert message.routing.target == "planner" and message.routing.priority == "high" and message.correlation_id == "c-42"
    assert message.security == SecurityInfo(
        agent_id="agent-1", timestamp=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, UTC), nonce=b"\x00\x01nonce"
    )
    assert message.qos.consistency == "strong" and message.qos.ttl_ms == 60000 and message.qos.priority == "normal"
    assert dict(message.extensions) == {"comexampleext": "value", "comexampleint": 5, "comexampleflag": True}


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("application/json", {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True, "nested": [1, None, 2.5]}),
        ("application/vnd.example+json; charset=utf-8", ["a", 1]),
        ("text/plain", "I'm just a string"),
        ("application/xml", '<much wow="xml"/>'),
        ("application/octet-stream", b"\x00\x01\xfe\xff"),
        (None, {"implicit": "json"}),
    ],
)
def test_we_read_sdk_core_events(content_type, data) -> None:
    attributes = {"type": "com.example.someevent", "source": "/mycontext", "id": "A234-1234-1234", "subject": "larger-context"}
    attributes["time"] = dt.datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    attributes.update(PHOENIX_ATTRIBUTES)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    payload = JSONFormat().write(CoreEvent(attributes, data))
    message = ser.deserialize(payload, "json")
    assert (message.id, message.source, message.type, message.subject) == (
        "A234-1234-1234",
        "/mycontext",
        "com.example.someevent",
        "larger-context",
    )
    assert message.time == dt.datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    assert message.datacontenttype == content_type
    assert message.data == data and type(message.data) is type(data)
    check_phoenix_attributes(message)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("application/json", {"k": [1, 2]}), ("text/plain", "plain"), (None, b"\x00raw")],
)
def test_we_read_sdk_v1_events(content_type, data) -> None:
    attributes = {"type": "com.example.someevent", "source": "https://example.com/src"}
    attributes.update(PHOENIX_ATTRIBUTES)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    event = V1Event(attributes, data)
    message = ser.deserialize(v1_to_json(event), "json")
    assert message.id == event["id"] and message.source == "https://example.com/src"
    assert message.time == parse_time(event["time"])  # the SDK's +00:00 form
    assert message.data == data
    check_phoenix_attributes(message)


def test_we_read_a_batch_of_sdk_events() -> None:
    events = [CoreEvent({"type": "com.example.e", "source": f"/s/{i}", "phxtopic": "jobs"}, {"i": i}) for i in range(5)]
    payload = b"[" + b",".join(JSONFormat().write(e) for e in events) + b"]"
    messages_ = ser.deserialize_batch(payload, "json")
    assert [m.source for m in messages_] == [f"/s/{i}" for i in range(5)]
    assert [m.data for m in messages_] == [{"i": i} for i in range(5)]
    assert all(m.routing.topic == "jobs" for m in messages_)


# -- the format's own rules ------------------------------------------------------------------------


@settings(max_examples=300)
@given(json_messages)
def test_round_trip(message: Message) -> None:
    payload, fmt = ser.serialize(message, "json")
    assert fmt == "json"
    assert ser.deserialize(payload, "json") == message


def test_data_placement_follows_the_spec() -> None:
    as_object = lambda **kw: json.loads(_json.encode(Message.new(**kw)))  # noqa: E731
    assert as_object(data=b"\x01")["data_base64"] == "AQ==" and "data" not in as_object(data=b"\x01")
    assert as_object(data="text", datacontenttype="text/plain")["data"] == "text"
    assert as_object(data={"a": 1})["data"] == {"a": 1}
    assert as_object(data=[1], datacontenttype="application/cloudevents+json")["data"] == [1]
    assert "data" not in as_object(data=None)
    assert as_object(data="x", extensions={"ext": "v"})["ext"] == "v"  # extensions are top-level members
    with pytest.raises(EncodeError, match="not JSON"):
        _json.encode(Message.new({"a": 1}, datacontenttype="application/xml"))
    with pytest.raises(EncodeError, match="keys must be strings"):
        _json.encode(Message.new({1: "a"}))
    with pytest.raises(EncodeError):
        _json.encode(Message.new({"a": b"bytes inside a map"}))
    with pytest.raises(EncodeError):
        _json.encode(Message.new({"a": float("nan")}))


def test_null_members_are_unset() -> None:
    obj = json.loads(_json.encode(Message.new("x")))
    obj.update(subject=None, unsetextension=None, dataschema=None)
    message = _json.decode(json.dumps(obj).encode())
    assert message.subject is None and "unsetextension" not in message.extensions
    obj["data"] = None
    assert _json.decode(json.dumps(obj).encode()).data is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 100_000, "deeper"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "deeper"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":' + b"[" * 70 + b"]" * 70 + b"}", "deeper"),
        (b"\xff\xfe{}", "UTF-8"),
        ('{"a": "\\ud800"}'.encode(), "surrogate"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":NaN}', "invalid JSON"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1e999}', "invalid JSON"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":' + b"9" * 5000 + b"}", "invalid JSON"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}', "not both"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","data_base64":"!!"}', "base64"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","datacontenttype":"text/plain","data":{}}', "must be a string"),
        (b'{"specversion":"1.0.2","id":"x","source":"/s","type":"t"}', "specversion"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","Bad":1}', "lowercase"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","ext":1.5}', "not a CloudEvents type"),
        (b'{"specversion":"1.0","id":"x","source":"/s","type":"t","phxtimeout":"soon"}', "32-bit"),
        (b"[1]", "object"),
    ],
)
def test_bad_documents_are_decode_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        ser.deserialize(payload, "json") if not payload.startswith(b"[1]") else ser.deserialize_batch(payload, "json")


def test_size_and_batch_limits() -> None:
    with pytest.raises(DecodeError, match="larger than"):
        _json.decode(b" " * 101, max_size=100)
    batch = ser.serialize_batch([Message.new(i) for i in range(5)], "json")
    with pytest.raises(DecodeError, match="more than 4 events"):
        _json.decode_batch(batch, max_events=4)
    with pytest.raises(DecodeError, match="array"):
        ser.deserialize_batch(b"{}", "json")


def test_content_type_detection() -> None:
    for yes in (None, "application/json", "text/json", "application/cloudevents+json", "APPLICATION/JSON; charset=utf-8"):
        assert _json.is_json_content_type(yes), yes
    for no in ("text/plain", "application/json-seq", "application/jsonx", "application/octet-stream"):
        assert not _json.is_json_content_type(no), no


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_batch_decoder_on_arbitrary_bytes(payload: bytes) -> None:
    # The single-event decoder is fuzzed with every other format in test_serialization.py.
    try:
        for message in ser.deserialize_batch(payload, "json"):
            validate_message(message)
    except DecodeError:
        pass
