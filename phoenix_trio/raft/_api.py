"""The design's result shapes: what ``propose_value`` and ``read_consensus_value`` return.

``propose_value(value, **opts)`` returns :class:`Committed` (proposal id, log index and the
state machine's answer) or, when asked not to wait, :class:`Queued`; it raises
``NotLeader`` carrying the known leader. A :class:`Session` remembers the last index its
owner wrote or read, which ``session`` reads wait for (read-your-writes, monotonic reads).
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(slots=True)
class Committed:
    """The proposal ``proposal_id`` is committed at ``index``; ``result`` is what the state machine returned."""

    proposal_id: Any
    index: int
    result: Any = None


@attrs.frozen(slots=True)
class Queued:
    """The leader accepted ``proposal_id`` at ``index`` in ``term``; it is not committed yet."""

    proposal_id: Any
    index: int
    term: int


@attrs.define
class Session:
    """A client's causal position: the highest log index it has written or read."""

    last_index: int = 0

    def observe(self, index: int) -> None:
        if index > self.last_index:
            self.last_index = index
