"""The exception tree: every error phoenix_trio raises derives from :class:`PhoenixError`.

Each subclass says what happened and carries the fields a caller needs to react.
Where an error resembles a builtin one it also inherits that builtin (as PyNaCl does),
so ``except ValueError`` or ``except TimeoutError`` keep working for code that does
not know about phoenix_trio.
"""

from __future__ import annotations

from typing import Any


class PhoenixError(Exception):
    """Root of every exception raised by phoenix_trio."""


class ConfigurationError(PhoenixError, ValueError):
    """An option or argument given to phoenix_trio is invalid."""


class ValidationError(PhoenixError, ValueError):
    """A value (a message attribute, a type name, a topic) breaks a documented rule."""


# -- bytes from the network ------------------------------------------------------------


class DecodeError(PhoenixError, ValueError):
    """Bytes could not be decoded; ``reason`` says why.

    Raised by every decoder (frames, batches, message formats) for any input that is not
    valid. Decoders never raise anything else for bad input.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncodeError(PhoenixError, ValueError):
    """A value could not be encoded in the requested format; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameError(DecodeError):
    """A frame or batch failed validation; ``code`` is the C core's error code."""

    code: int = 0

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        if code is not None:
            self.code = code


class BadMagic(FrameError):
    """The stream does not start with the frame magic: not a phoenix_trio peer."""

    code = -1


class UnsupportedVersion(FrameError):
    """The frame's wire-format version is not one this build speaks."""

    code = -2


class FrameTooLarge(FrameError):
    """The frame's declared payload length exceeds the configured limit."""

    code = -3


class ChecksumMismatch(FrameError):
    """The frame's CRC32C does not match its header and payload."""

    code = -4


class ReservedFlags(FrameError):
    """The frame sets flag bits this version reserves."""

    code = -5


class MalformedBatch(FrameError):
    """A batch payload's count or length varints are malformed or inconsistent."""

    code = -6


class ProtocolError(PhoenixError):
    """A peer broke the protocol; the connection to it is closed."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something this node cannot accept."""


class LocalProtocolError(ProtocolError):
    """This node was asked to do something the protocol does not allow."""


# -- routing and delivery --------------------------------------------------------------


class AgentNotFound(PhoenixError, LookupError):
    """No agent with this id is registered anywhere in the cluster."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent {agent_id!r} in the cluster")
        self.agent_id = agent_id


class NodeUnreachable(PhoenixError, ConnectionError):
    """The node hosting the target cannot be reached (down, partitioned or refusing)."""

    def __init__(self, node_id: str, reason: str = "unreachable") -> None:
        super().__init__(f"node {node_id!r}: {reason}")
        self.node_id = node_id
        self.reason = reason


class RequestTimeout(PhoenixError, TimeoutError):
    """No response arrived within the request's timeout."""

    def __init__(self, target: str, timeout: float) -> None:
        super().__init__(f"no response from {target!r} within {timeout:g} s")
        self.target = target
        self.timeout = timeout


class DeliveryFailed(PhoenixError):
    """A message could not be delivered with its guarantee after every retry."""

    def __init__(self, target: str, attempts: int, reason: str) -> None:
        super().__init__(f"delivery to {target!r} failed after {attempts} attempt(s): {reason}")
        self.target = target
        self.attempts = attempts
        self.reason = reason


class Backpressure(PhoenixError):
    """The target is above its high watermark (or full) and the caller asked not to wait."""

    def __init__(self, target: str, reason: str = "backpressure active") -> None:
        super().__init__(f"{target!r}: {reason}")
        self.target = target
        self.reason = reason


class CircuitOpen(PhoenixError):
    """The circuit breaker for this target is open; ``retry_after`` seconds until a probe."""

    def __init__(self, target: str, retry_after: float) -> None:
        super().__init__(f"circuit to {target!r} is open; next probe in {retry_after:.3f} s")
        self.target = target
        self.retry_after = retry_after


class NotLeader(PhoenixError):
    """This consensus member is not the leader; ``leader`` is the known leader, if any."""

    def __init__(self, leader: Any | None = None) -> None:
        hint = f"; leader is {leader!r}" if leader is not None else "; leader unknown"
        super().__init__("not the leader" + hint)
        self.leader = leader


class SecurityError(PhoenixError):
    """A message or connection failed a security check."""
