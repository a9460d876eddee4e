"""The CloudEvents Protobuf format (``io.cloudevents.v1.CloudEvent``) and its batch format.

The schema is the official ``cloudevents.proto`` of the CloudEvents spec
(``cloudevents/formats/cloudevents.proto``), field numbers and names unchanged::

    message CloudEvent {
      string id = 1; string source = 2; string spec_version = 3; string type = 4;
      map<string, CloudEventAttributeValue> attributes = 5;
      oneof data { bytes binary_data = 6; string text_data = 7; google.protobuf.Any proto_data = 8; }
      message CloudEventAttributeValue {
        oneof attr { bool ce_boolean = 1; int32 ce_integer = 2; string ce_string = 3;
                     bytes ce_bytes = 4; string ce_uri = 5; string ce_uri_ref = 6;
                     google.protobuf.Timestamp ce_timestamp = 7; }
      }
    }
    message CloudEventBatch { repeated CloudEvent events = 1; }

There is no ``protoc`` here, so the descriptors are built at import time from
``descriptor_pb2`` (:func:`_file_descriptor` is the proto above, field for field) into a
private descriptor pool, so an application's own generated ``cloudevents_pb2`` never
clashes with ours.

Mapping: the optional and extension attributes (:func:`to_attributes`) go in
``attributes`` typed by the CloudEvents type system: ``time`` and the Phoenix
timestamps as ``ce_timestamp``, binary fields as ``ce_bytes``, integers as
``ce_integer``, booleans as ``ce_boolean``, ``dataschema`` as ``ce_uri``, strings as
``ce_string``. Data: ``bytes`` in ``binary_data``; a ``str`` under a non-JSON (or no)
content type in ``text_data``; under a JSON content type (``*/json``, ``*/*+json``) the
data is a JSON document in ``text_data``. Other data (dicts, lists, numbers...) with no
content type is written as JSON in ``text_data`` with ``datacontenttype`` set to
``application/json`` on the wire, as CloudEvents asks for re-serialised JSON events.
``proto_data`` is not supported (a DecodeError says so). Output is deterministic (map
entries sorted), so equal messages give equal bytes.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from .._errors import DecodeError, EncodeError
from .._message import Message
from . import _json
from ._attributes import ATTRIBUTE_KINDS, MAX_ATTRIBUTES, from_attributes, to_attributes
from ._compression import DEFAULT_MAX_SIZE

CONTENT_TYPE = "application/cloudevents+protobuf"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+protobuf"
PACKAGE = "io.cloudevents.v1"
MAX_BATCH = 10_000

_F = descriptor_pb2.FieldDescriptorProto
_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_EXPLICIT = frozenset({"id", "source", "specversion", "spec_version", "type", "data", "data_base64"})


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``cloudevents.proto`` of the CloudEvents spec, as a FileDescriptorProto."""
    file = descriptor_pb2.FileDescriptorProto(
        name="io/cloudevents/v1/cloudevents.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/timestamp.proto"],
    )

    def scalar(message: Any, name: str, number: int, kind: int, oneof: int | None = None) -> None:
        field = message.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
        if oneof is not None:
            field.oneof_index = oneof

    def reference(message: Any, name: str, number: int, type_name: str, *, oneof: int | None = None, repeated: bool = False) -> None:
        label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
        field = message.field.add(name=name, number=number, type=_F.TYPE_MESSAGE, label=label, type_name=type_name)
        if oneof is not None:
            field.oneof_index = oneof

    event = file.message_type.add(name="CloudEvent")
    scalar(event, "id", 1, _F.TYPE_STRING)
    scalar(event, "source", 2, _F.TYPE_STRING)
    scalar(event, "spec_version", 3, _F.TYPE_STRING)
    scalar(event, "type", 4, _F.TYPE_STRING)
    reference(event, "attributes", 5, f".{PACKAGE}.CloudEvent.AttributesEntry", repeated=True)
    event.oneof_decl.add(name="data")
    scalar(event, "binary_data", 6, _F.TYPE_BYTES, oneof=0)
    scalar(event, "text_data", 7, _F.TYPE_STRING, oneof=0)
    reference(event, "proto_data", 8, ".google.protobuf.Any", oneof=0)

    value = event.nested_type.add(name="CloudEventAttributeValue")
    value.oneof_decl.add(name="attr")
    scalar(value, "ce_boolean", 1, _F.TYPE_BOOL, oneof=0)
    scalar(value, "ce_integer", 2, _F.TYPE_INT32, oneof=0)
    scalar(value, "ce_string", 3, _F.TYPE_STRING, oneof=0)
    scalar(value, "ce_bytes", 4, _F.TYPE_BYTES, oneof=0)
    scalar(value, "ce_uri", 5, _F.TYPE_STRING, oneof=0)
    scalar(value, "ce_uri_ref", 6, _F.TYPE_STRING, oneof=0)
    reference(value, "ce_timestamp", 7, ".google.protobuf.Timestamp", oneof=0)

    entry = event.nested_type.add(name="AttributesEntry")  # what protoc generates for the map
    entry.options.map_entry = True
    scalar(entry, "key", 1, _F.TYPE_STRING)
    reference(entry, "value", 2, f".{PACKAGE}.CloudEvent.CloudEventAttributeValue")

    batch = file.message_type.add(name="CloudEventBatch")
    reference(batch, "events", 1, f".{PACKAGE}.CloudEvent", repeated=True)
    return file


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(_file_descriptor())
    return pool


POOL = _build_pool()
CloudEvent: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.CloudEvent"))
CloudEventBatch: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.CloudEventBatch"))
"""The generated message classes (``io.cloudevents.v1.CloudEvent`` / ``CloudEventBatch``)."""


# -- encoding ---------------------------------------------------------------------------------


def _set_timestamp(target: Any, value: _dt.datetime) -> None:
    delta = value - _EPOCH
    target.seconds = delta.days * 86400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def _set_attribute(target: Any, name: str, value: Any) -> None:
    kind = ATTRIBUTE_KINDS.get(name)
    if kind == "uri":
        target.ce_uri = value
    elif kind == "uri-reference":
        target.ce_uri_ref = value
    elif type(value) is bool:
        target.ce_boolean = value
    elif type(value) is int:
        target.ce_integer = value
    elif type(value) is str:
        target.ce_string = value
    elif type(value) is bytes:
        target.ce_bytes = value
    elif isinstance(value, _dt.datetime):
        _set_timestamp(target.ce_timestamp, value)
    else:
        raise EncodeError(f"attribute {name!r}: {type(value).__name__} is not a CloudEvents type")


def to_proto(message: Message) -> Any:
    """The ``io.cloudevents.v1.CloudEvent`` for ``message``."""
    event = CloudEvent(id=message.id, source=message.source, spec_version=message.specversion, type=message.type)
    attributes = event.attributes
    try:
        for name, value in to_attributes(message).items():
            if name not in _EXPLICIT:
                _set_attribute(attributes[name], name, value)
        data = message.data
        content_type = message.datacontenttype
        if data is None:
            pass
        elif isinstance(data, (bytes, bytearray, memoryview)):
            event.binary_data = bytes(data)
        elif content_type is not None and _json.is_json_content_type(content_type):
            event.text_data = _json.dumps_data(data)
        elif type(data) is str:
            event.text_data = data
        elif content_type is None:
            event.text_data = _json.dumps_data(data)
            attributes["datacontenttype"].ce_string = "application/json"
        else:
            raise EncodeError(
                f"datacontenttype {content_type!r} is not JSON, so data must be str or bytes, not {type(data).__name__}"
            )
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(f"protobuf cannot encode this message: {exc}") from None
    return event


def encode(message: Message) -> bytes:
    """The CloudEvents Protobuf bytes for ``message`` (deterministic)."""
    return to_proto(message).SerializeToString(deterministic=True)


def encode_batch(messages: Iterable[Message]) -> bytes:
    """A ``CloudEventBatch`` (``application/cloudevents-batch+protobuf``) of ``messages``."""
    batch = CloudEventBatch()
    batch.events.extend(to_proto(m) for m in messages)
    return batch.SerializeToString(deterministic=True)


# -- decoding ---------------------------------------------------------------------------------


def _timestamp(value: Any, name: str) -> _dt.datetime:
    if not 0 <= value.nanos <= 999_999_999:
        raise DecodeError(f"attribute {name!r}: timestamp nanos out of range")
    try:
        return _EPOCH + _dt.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    except OverflowError:
        raise DecodeError(f"attribute {name!r}: timestamp out of range") from None


def _attribute(name: str, value: Any) -> Any:
    which = value.WhichOneof("attr")
    if which is None:
        raise DecodeError(f"attribute {name!r} has no value")
    if which == "ce_timestamp":
        return _timestamp(value.ce_timestamp, name)
    return getattr(value, which)


def from_proto(event: Any, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """A validated Message from a parsed ``CloudEvent``; raises :class:`DecodeError`."""
    attributes: dict[str, Any] = {
        "specversion": event.spec_version,
        "id": event.id,
        "source": event.source,
        "type": event.type,
    }
    if len(event.attributes) > MAX_ATTRIBUTES:
        raise DecodeError(f"more than {MAX_ATTRIBUTES} attributes")
    for name, value in event.attributes.items():
        if name in _EXPLICIT:
            raise DecodeError(f"attribute {name!r} must not be in the attributes map")
        attributes[name] = _attribute(name, value)
    which = event.WhichOneof("data")
    content_type = attributes.get("datacontenttype")
    if which is None:
        data: Any = None
    elif which == "binary_data":
        data = event.binary_data
    elif which == "text_data":
        data = event.text_data
        if type(content_type) is str and _json.is_json_content_type(content_type):
            data = _json.loads(data, max_size=max_size)
    else:
        raise DecodeError("proto_data payloads are not supported; send binary_data")
    return from_attributes(attributes, data)


def _parse(kind: Any, payload: bytes, max_size: int) -> Any:
    if len(payload) > max_size:
        raise DecodeError(f"protobuf payload larger than {max_size} bytes")
    parsed = kind()
    try:
        parsed.ParseFromString(payload)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise DecodeError(f"invalid protobuf: {type(exc).__name__}: {exc}") from None
    return parsed


def decode(payload: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """The Message in a CloudEvents Protobuf payload; :class:`DecodeError` for anything else."""
    return from_proto(_parse(CloudEvent, payload, max_size), max_size=max_size)


def decode_batch(payload: bytes, *, max_size: int = DEFAULT_MAX_SIZE, max_events: int = MAX_BATCH) -> list[Message]:
    """The Messages of a ``CloudEventBatch``; :class:`DecodeError` for anything else."""
    batch = _parse(CloudEventBatch, payload, max_size)
    if len(batch.events) > max_events:
        raise DecodeError(f"batch holds more than {max_events} events")
    return [from_proto(event, max_size=max_size) for event in batch.events]


__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "CloudEvent",
    "CloudEventBatch",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "from_proto",
    "to_proto",
]
