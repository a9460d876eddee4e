"""Raft's own exceptions, all under :class:`phoenix_trio.PhoenixError`.

``NotLeader`` (from the shared tree) is what most callers see; the classes here say
more precisely why a request did not (or may not have) taken effect.
"""

from __future__ import annotations

from typing import Any

from .._errors import LocalProtocolError, NotLeader, PhoenixError


class RaftError(PhoenixError):
    """Root of the Raft-specific errors."""


class ProposalDropped(RaftError):
    """The proposal was definitely not committed: another entry was committed at its index."""

    def __init__(self, index: int, term: int) -> None:
        super().__init__(f"proposal at index {index} (term {term}) was superseded by another entry")
        self.index = index
        self.term = term


class ProposalOutcomeUnknown(RaftError):
    """This member can no longer tell whether the proposal committed (a snapshot replaced its log)."""

    def __init__(self, index: int, term: int) -> None:
        super().__init__(f"outcome of the proposal at index {index} (term {term}) is unknown")
        self.index = index
        self.term = term


class TransferInProgress(NotLeader):
    """The leader is handing leadership to ``leader`` and accepts no new work meanwhile."""


class ConfigChangeInProgress(RaftError, LocalProtocolError):
    """A membership change is refused: the previous one (or this term's first entry) is not committed yet."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StorageCorrupt(RaftError):
    """Persisted Raft state is damaged somewhere other than a torn tail; ``path`` and ``offset`` locate it."""

    def __init__(self, path: Any, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason
