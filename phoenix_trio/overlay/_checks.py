"""Argument checks shared by the overlay cores' commands and constructors.

Everything a core sends must decode at the other end, so what a caller hands in (node
ids, message ids, payloads) is held to the codec's bounds here, before it is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._errors import ConfigurationError, ValidationError
from ._messages import MAX_MESSAGE_ID, MAX_NODE_ID, MAX_PAYLOAD


def is_node_id(value: Any) -> bool:
    if type(value) is not str or not 0 < len(value) <= MAX_NODE_ID:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def own_node_id(value: Any) -> str:
    """A core's own id; a bad one is a configuration error."""
    if not is_node_id(value):
        raise ConfigurationError(f"node id must be a non-empty UTF-8 string of at most {MAX_NODE_ID} characters, got {value!r}")
    return value  # type: ignore[no-any-return]


def node_ids(values: Iterable[Any], what: str) -> list[str]:
    """Peer ids given to a command (contacts, targets)."""
    out = list(values) if not isinstance(values, str) else [values]
    for value in out:
        if not is_node_id(value):
            raise ValidationError(f"{what}: {value!r} is not a node id")
    return out


def payload(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ValidationError(f"payloads are bytes, got {type(value).__name__}")
    if len(value) > MAX_PAYLOAD:
        raise ValidationError(f"payload of {len(value)} bytes exceeds the overlay limit of {MAX_PAYLOAD}")
    return value


def message_id(value: Any) -> bytes:
    if type(value) is not bytes or not 0 < len(value) <= MAX_MESSAGE_ID:
        raise ValidationError(f"message ids are 1 to {MAX_MESSAGE_ID} bytes, got {value!r}")
    return value
