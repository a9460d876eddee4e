"""A Message as flat CloudEvents attributes, and back: what the JSON and Protobuf formats share.

CloudEvents extension attributes are scalars (String, Integer, Boolean, Binary,
Timestamp, URI...), so each Phoenix extension record is spread over several attributes
(:data:`phoenix_trio.EXTENSION_ATTRIBUTES` lists them; ``docs/message.md`` explains them).
A record is present when any of its attributes is; its other fields take their defaults.

:func:`from_attributes` accepts each attribute either natively typed or in its canonical
string form (how the JSON format and HTTP headers carry them), validates everything and
raises :class:`~phoenix_trio.DecodeError` with a reason for anything invalid.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
import types
from collections.abc import Mapping
from typing import Any

from .._errors import DecodeError, ValidationError
from .._message import (
    EMPTY,
    Extensions,
    EXTENSION_ATTRIBUTES,
    SPECVERSION,
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
    SecurityInfo,
    validate_extension,
    validate_message,
)
from .._trace import TraceContext
from .._vclock import VectorClock

UTC = _dt.timezone.utc
MAX_ATTRIBUTES = 256

# The CloudEvents type of each attribute phoenix_trio knows.
ATTRIBUTE_KINDS: Mapping[str, str] = types.MappingProxyType(
    {
        "specversion": "string",
        "id": "string",
        "source": "uri-reference",
        "type": "string",
        "subject": "string",
        "time": "timestamp",
        "datacontenttype": "string",
        "dataschema": "uri",
        "traceparent": "string",
        "tracestate": "string",
        "phxvclock": "string",
        "phxdelivery": "string",
        "phxtimeout": "integer",
        "phxretry": "string",
        "phxmaxretries": "integer",
        "phxordering": "string",
        "phxack": "boolean",
        "phxdedup": "boolean",
        "phxpattern": "string",
        "phxtarget": "string",
        "phxtopic": "string",
        "phxpriority": "string",
        "phxpipeline": "string",
        "phxrouteorder": "string",
        "phxfanout": "string",
        "phxcorrelation": "string",
        "phxauthagent": "string",
        "phxauthkey": "string",
        "phxauthtime": "timestamp",
        "phxauthnonce": "binary",
        "phxauthmac": "binary",
        "phxsig": "binary",
        "phxsigkey": "string",
        "phxsigalg": "string",
        "phxencalg": "string",
        "phxenckey": "string",
        "phxencnonce": "binary",
        "phxqospriority": "string",
        "phxqosconsistency": "string",
        "phxqoslatency": "integer",
        "phxqosttl": "integer",
    }
)

_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def format_time(value: _dt.datetime) -> str:
    """RFC 3339, UTC with ``Z`` when the offset is zero."""
    if value.utcoffset() == _dt.timedelta(0):
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat()
        return text + "Z"
    return value.isoformat()


def parse_time(text: str) -> _dt.datetime:
    """Parse an RFC 3339 timestamp (fractions beyond microseconds are truncated)."""
    if type(text) is not str or len(text) > 64:
        raise DecodeError("timestamp must be an RFC 3339 string")
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise DecodeError(f"malformed RFC 3339 timestamp {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if zulu:
            tz: _dt.tzinfo = UTC
        else:
            offset = _dt.timedelta(hours=int(off_h), minutes=int(off_m))
            tz = _dt.timezone(offset if sign == "+" else -offset)
        second_i = min(int(second), 59)  # RFC 3339 allows a leap second; datetime does not
        return _dt.datetime(int(year), int(month), int(day), int(hour), int(minute), second_i, micro, tz)
    except ValueError as exc:
        raise DecodeError(f"invalid timestamp {text!r}: {exc}") from None


def to_attributes(message: Message) -> dict[str, Any]:
    """Every attribute of ``message`` except data, natively typed (str, int, bool, bytes, datetime)."""
    out: dict[str, Any] = {"specversion": message.specversion, "id": message.id, "source": message.source, "type": message.type}
    if message.subject is not None:
        out["subject"] = message.subject
    if message.time is not None:
        out["time"] = message.time
    if message.datacontenttype is not None:
        out["datacontenttype"] = message.datacontenttype
    if message.dataschema is not None:
        out["dataschema"] = message.dataschema
    trace = message.trace
    if trace is not None:
        out["traceparent"] = trace.traceparent
        if trace.tracestate:
            out["tracestate"] = trace.tracestate
    if message.causality is not None:
        out["phxvclock"] = message.causality.encode()
    for record_name in ("delivery", "routing", "security", "qos"):
        record = getattr(message, record_name)
        if record is None:
            continue
        for attribute, (owner, field) in EXTENSION_ATTRIBUTES.items():
            if owner == record_name:
                value = getattr(record, field)
                if value is not None:
                    out[attribute] = value
    out.update(message.extensions)
    return out


def _coerce(name: str, kind: str, value: Any) -> Any:
    """An attribute value in its native type; canonical string forms are accepted."""
    if kind in ("string", "uri-reference", "uri"):
        if type(value) is not str:
            raise DecodeError(f"attribute {name!r} must be a string")
        return value
    if kind == "integer":
        if type(value) is str and re.fullmatch(r"-?\d{1,10}", value):
            value = int(value)
        if type(value) is not int or not -(2**31) <= value < 2**31:
            raise DecodeError(f"attribute {name!r} must be a 32-bit integer")
        return value
    if kind == "boolean":
        if value in ("true", "false"):
            return value == "true"
        if type(value) is not bool:
            raise DecodeError(f"attribute {name!r} must be a boolean")
        return value
    if kind == "binary":
        if type(value) is str:
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise DecodeError(f"attribute {name!r} is not valid base64") from None
        if type(value) is not bytes:
            raise DecodeError(f"attribute {name!r} must be binary")
        return value
    if kind == "timestamp":
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                raise DecodeError(f"attribute {name!r} must be timezone-aware")
            return value
        return parse_time(value)
    raise AssertionError(kind)


def from_attributes(attributes: Mapping[str, Any], data: Any) -> Message:
    """A validated Message from flat CloudEvents attributes; raises :class:`DecodeError`."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise DecodeError(f"more than {MAX_ATTRIBUTES} attributes")
    known: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    for name, value in attributes.items():
        if type(name) is not str:
            raise DecodeError("attribute names must be strings")
        kind = ATTRIBUTE_KINDS.get(name)
        if kind is None:
            if name in ("data", "data_base64"):
                continue
            try:
                validate_extension(name, value)
            except ValidationError as exc:
                raise DecodeError(str(exc)) from None
            extensions[name] = value
        elif value is not None:
            known[name] = _coerce(name, kind, value)
    if known.get("specversion") != SPECVERSION:
        raise DecodeError(f"specversion must be {SPECVERSION!r}, got {known.get('specversion')!r}")
    for required in ("id", "source", "type"):
        if not known.get(required):
            raise DecodeError(f"required attribute {required!r} is missing or empty")
    try:
        trace = None
        if "traceparent" in known:
            trace = TraceContext.parse(known["traceparent"], known.get("tracestate", ""))
        elif "tracestate" in known:
            raise DecodeError("tracestate without traceparent")
        causality = VectorClock.decode(known["phxvclock"]) if "phxvclock" in known else None
        records: dict[str, dict[str, Any]] = {"delivery": {}, "routing": {}, "security": {}, "qos": {}}
        for attribute, (owner, field) in EXTENSION_ATTRIBUTES.items():
            if owner in records and attribute in known:
                records[owner][field] = known[attribute]
        message = Message(
            id=known["id"],
            source=known["source"],
            type=known["type"],
            data=data,
            subject=known.get("subject"),
            time=known.get("time"),
            datacontenttype=known.get("datacontenttype"),
            dataschema=known.get("dataschema"),
            trace=trace,
            causality=causality,
            delivery=DeliveryGuarantee(**records["delivery"]) if records["delivery"] else None,
            routing=RoutingMetadata(**records["routing"]) if records["routing"] else None,
            security=SecurityInfo(**records["security"]) if records["security"] else None,
            qos=QoSRequirements(**records["qos"]) if records["qos"] else None,
            extensions=Extensions(extensions) if extensions else EMPTY,
        )
        return validate_message(message)
    except ValidationError as exc:
        raise DecodeError(str(exc)) from None
