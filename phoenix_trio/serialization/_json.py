"""The CloudEvents JSON event format (structured mode) and its batch format.

One event is one JSON object (media type ``application/cloudevents+json``): every
CloudEvents attribute and every extension attribute is a top-level member, typed per
the spec's mapping (Binary as base64 strings, Timestamps as RFC 3339 strings). The
Phoenix extension records are spread over flat attributes exactly as
:func:`~phoenix_trio.serialization._attributes.to_attributes` lays them out.

``data``, per the spec's section 3.1:

- ``bytes`` data goes in ``data_base64`` (whatever the content type);
- when ``datacontenttype`` is absent or declares JSON (``*/json``, ``*/*+json``) the
  data is stored directly as a JSON value in ``data``;
- otherwise the content type is text-like and the data must be a ``str``, stored as a
  JSON string (anything else is an :class:`~phoenix_trio.EncodeError`).

A batch (``application/cloudevents-batch+json``) is a JSON array of such objects.

Limits of the format (documented in ``docs/message.md``): ``data`` must be a JSON
value (no bytes inside containers, string keys only, finite floats; tuples come back
as lists), and foreign extension attributes of type Binary or Timestamp come back as
strings, because JSON carries them as strings and only the Phoenix attributes have a
known type. Decoding is bounded: input size, nesting depth, batch length; any invalid
input raises :class:`~phoenix_trio.DecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from .._errors import DecodeError, EncodeError
from .._message import Message
from ._attributes import format_time, from_attributes, to_attributes
from ._compression import DEFAULT_MAX_SIZE

CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_DEPTH = 64
"""Deepest JSON nesting accepted (the event object and a batch array count as levels)."""
MAX_BATCH = 10_000
"""Most events accepted in one batch."""

_JSON_MEDIA_TYPE_RE = re.compile(r"[^/\s;]+/(?:[^/\s;]*\+)?json", re.IGNORECASE)
_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


def is_json_content_type(content_type: str | None) -> bool:
    """Whether ``content_type`` declares JSON data (absent counts as ``application/json``)."""
    if content_type is None:
        return True
    return _JSON_MEDIA_TYPE_RE.fullmatch(content_type.split(";", 1)[0].strip()) is not None


# -- bounded parsing ----------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    for match in _TOKEN_RE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise DecodeError(f"JSON nests deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def _check_strings(value: Any) -> None:
    """Reject lone surrogates (valid JSON escapes, but not Unicode text)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise DecodeError("JSON string holds a lone surrogate escape") from None
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())


def loads(payload: bytes | str, *, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: UTF-8 only, bounded size and depth, finite numbers.

    Raises :class:`DecodeError` for anything that is not a JSON document within the limits
    (never ``RecursionError`` or ``MemoryError`` from hostile nesting).
    """
    if len(payload) > max_size:
        raise DecodeError(f"JSON document larger than {max_size} bytes")
    if isinstance(payload, str):
        text = payload
    else:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"JSON must be UTF-8: {exc}") from None
    # The depth can only pass the limit when there are more openers than the limit.
    if text.count("[") + text.count("{") > max_depth:
        _check_depth(text, max_depth)
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise DecodeError("JSON nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, out-of-range numbers, too many digits
        raise DecodeError(f"invalid JSON: {exc}") from None
    if _SURROGATE_ESCAPE_RE.search(text) is not None:
        _check_strings(value)
    return value


def _check_json_value(value: Any, depth: int) -> None:
    """Raise :class:`EncodeError` unless ``value`` survives a JSON round trip."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"data nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise EncodeError(f"JSON object keys must be strings, not {type(key).__name__}")
            if isinstance(item, (dict, list, tuple)):
                _check_json_value(item, depth + 1)
    else:
        for item in value:
            if isinstance(item, (dict, list, tuple)):
                _check_json_value(item, depth + 1)


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"data is not representable as JSON: {exc}") from None


def dumps_data(data: Any, *, depth: int = 1) -> str:
    """``data`` as a JSON document, or :class:`EncodeError` if it would not come back equal.

    ``depth`` is the nesting level ``data`` sits at (so what is written stays readable
    within :data:`MAX_DEPTH`).
    """
    if isinstance(data, (dict, list, tuple)):
        _check_json_value(data, depth)
    return _dumps(data)


# -- one event -------------------------------------------------------------------------------------


def _attribute_value(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return format_time(value)
    if type(value) is bytes:
        return base64.b64encode(value).decode("ascii")
    return value


def to_object(message: Message) -> dict[str, Any]:
    """The JSON object (as a dict of JSON values) for ``message``."""
    obj = {name: _attribute_value(value) for name, value in to_attributes(message).items()}
    data = message.data
    if data is None:
        return obj
    if isinstance(data, (bytes, bytearray, memoryview)):
        obj["data_base64"] = base64.b64encode(data).decode("ascii")
    elif is_json_content_type(message.datacontenttype):
        if isinstance(data, (dict, list, tuple)):
            _check_json_value(data, 3)  # inside the event object, inside a batch array
        obj["data"] = data
    elif type(data) is str:
        obj["data"] = data
    else:
        raise EncodeError(
            f"datacontenttype {message.datacontenttype!r} is not JSON, so data must be str or bytes, "
            f"not {type(data).__name__}"
        )
    return obj


def from_object(obj: Any) -> Message:
    """A validated Message from one decoded JSON event object; raises :class:`DecodeError`."""
    if type(obj) is not dict:
        raise DecodeError("a CloudEvent in JSON must be an object")
    # null means unset (spec section 2.2), for attributes and extensions alike.
    attributes = {name: value for name, value in obj.items() if value is not None or name == "data"}
    has_data = "data" in attributes
    encoded = attributes.pop("data_base64", None)
    raw = attributes.pop("data", None)
    if has_data and encoded is not None:
        raise DecodeError("an event has either data or data_base64, not both")
    content_type = attributes.get("datacontenttype")
    if encoded is not None:
        if type(encoded) is not str:
            raise DecodeError("data_base64 must be a string")
        try:
            data: Any = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("data_base64 is not valid base64") from None
    elif raw is None or type(content_type) is not str or is_json_content_type(content_type):
        data = raw
    elif type(raw) is str:
        data = raw
    else:
        raise DecodeError(f"datacontenttype {content_type!r} is not JSON, so data must be a string")
    return from_attributes(attributes, data)


def encode(message: Message) -> bytes:
    """The CloudEvents JSON bytes for ``message``; :class:`EncodeError` when data cannot be carried."""
    return _dumps(to_object(message)).encode("utf-8")


def decode(payload: bytes | str, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """The Message in a CloudEvents JSON document; :class:`DecodeError` for anything else."""
    return from_object(loads(payload, max_size=max_size))


# -- batches -----------------------------------------------------------------------------------------


def encode_batch(messages: Iterable[Message]) -> bytes:
    """A CloudEvents JSON batch (``application/cloudevents-batch+json``): an array of events."""
    return _dumps([to_object(m) for m in messages]).encode("utf-8")


def decode_batch(payload: bytes | str, *, max_size: int = DEFAULT_MAX_SIZE, max_events: int = MAX_BATCH) -> list[Message]:
    """The Messages of a CloudEvents JSON batch; :class:`DecodeError` for anything else."""
    events = loads(payload, max_size=max_size)
    if type(events) is not list:
        raise DecodeError("a CloudEvents JSON batch must be an array")
    if len(events) > max_events:
        raise DecodeError(f"batch holds more than {max_events} events")
    return [from_object(event) for event in events]


__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "MAX_BATCH",
    "MAX_DEPTH",
    "decode",
    "decode_batch",
    "encode",
    "dumps_data",
    "encode_batch",
    "from_object",
    "is_json_content_type",
    "loads",
    "to_object",
]
