"""The message type taxonomy and what a type's class implies for delivery.

Types are named ``phoenix.{domain}.{entity}.{action}[.{qualifier}]``. The design's own
lists also use three-part names where the action is implied (``phoenix.agent.message``,
``phoenix.pubsub.publish``, ``phoenix.performance.measurement``), so a valid type is
``phoenix`` followed by two to four segments; each segment is lowercase ASCII letters,
digits and underscores, starting with a letter, at most 32 characters.

Each type belongs to a class (control plane, data plane, observability) that sets its
priority, consistency, ordering and delivery, exactly as the design's table does.
Types outside the three lists get :data:`DEFAULT_CHARACTERISTICS`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import attrs

from ._errors import ValidationError

Priority = Literal["low", "normal", "high", "critical"]
Consistency = Literal["eventual", "causal", "strong"]
Ordering = Literal["none", "causal", "total"]
DeliveryMode = Literal["at_most_once", "at_least_once", "exactly_once", "causal_order", "total_order"]
MessageClass = Literal["control_plane", "data_plane", "observability", "other"]

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")
CONSISTENCIES: tuple[str, ...] = ("eventual", "causal", "strong")
ORDERINGS: tuple[str, ...] = ("none", "causal", "total")
DELIVERY_MODES: tuple[str, ...] = ("at_most_once", "at_least_once", "exactly_once", "causal_order", "total_order")

CONTROL_PLANE: frozenset[str] = frozenset(
    {
        "phoenix.cluster.node.join",
        "phoenix.cluster.node.leave",
        "phoenix.cluster.topology.update",
        "phoenix.agent.placement.request",
        "phoenix.agent.placement.response",
        "phoenix.agent.migration.start",
        "phoenix.agent.migration.complete",
    }
)
DATA_PLANE: frozenset[str] = frozenset(
    {
        "phoenix.agent.message.send",
        "phoenix.agent.state.update",
        "phoenix.agent.action.execute",
        "phoenix.agent.action.result",
        "phoenix.agent.event.publish",
        "phoenix.agent.heartbeat.ping",
    }
)
OBSERVABILITY: frozenset[str] = frozenset(
    {
        "phoenix.telemetry.metric.update",
        "phoenix.telemetry.trace.span",
        "phoenix.telemetry.log.entry",
        "phoenix.health.status.report",
        "phoenix.performance.measurement",
    }
)

_TYPE_RE = re.compile(r"phoenix(?:\.[a-z][a-z0-9_]{0,31}){2,4}")


@attrs.frozen(slots=True)
class Characteristics:
    """What a message type implies: the design's ``message_characteristics`` map."""

    priority: Priority
    consistency: Consistency
    ordering: Ordering
    delivery: DeliveryMode
    message_class: MessageClass = "other"


CONTROL_PLANE_CHARACTERISTICS = Characteristics("high", "strong", "total", "exactly_once", "control_plane")
DATA_PLANE_CHARACTERISTICS = Characteristics("normal", "causal", "causal", "at_least_once", "data_plane")
OBSERVABILITY_CHARACTERISTICS = Characteristics("low", "eventual", "none", "at_most_once", "observability")
DEFAULT_CHARACTERISTICS = Characteristics("normal", "eventual", "none", "at_least_once", "other")
"""For types in none of the three lists: normal priority, eventual consistency, no
ordering, and the design's default delivery mode (``at_least_once``)."""


def is_valid_type(message_type: str) -> bool:
    """Whether ``message_type`` follows the taxonomy."""
    return type(message_type) is str and _TYPE_RE.fullmatch(message_type) is not None


def validate_type(message_type: str) -> str:
    """Return ``message_type`` or raise :class:`ValidationError` saying what is wrong."""
    if is_valid_type(message_type):
        return message_type
    if not isinstance(message_type, str) or not message_type:
        raise ValidationError("message type must be a non-empty string")
    if not message_type.startswith("phoenix."):
        raise ValidationError(f"message type {message_type!r} must start with 'phoenix.'")
    segments = message_type.split(".")[1:]
    if not 2 <= len(segments) <= 4:
        raise ValidationError(
            f"message type {message_type!r} must be phoenix.{{domain}}.{{entity}}[.{{action}}[.{{qualifier}}]] "
            f"(2 to 4 segments after 'phoenix', got {len(segments)})"
        )
    raise ValidationError(
        f"message type {message_type!r}: each segment must be lowercase letters, digits or '_', "
        "start with a letter and be at most 32 characters"
    )


@lru_cache(maxsize=1024)
def message_characteristics(message_type: str) -> Characteristics:
    """Priority, consistency, ordering and delivery for ``message_type`` (the design's table)."""
    if message_type in CONTROL_PLANE:
        return CONTROL_PLANE_CHARACTERISTICS
    if message_type in DATA_PLANE:
        return DATA_PLANE_CHARACTERISTICS
    if message_type in OBSERVABILITY:
        return OBSERVABILITY_CHARACTERISTICS
    return DEFAULT_CHARACTERISTICS


def message_class(message_type: str) -> MessageClass:
    """``control_plane``, ``data_plane``, ``observability`` or ``other``."""
    return message_characteristics(message_type).message_class
