"""A node's enforcement point: secure what leaves, verify what arrives, before any agent.

A node opened with ``security=context`` gets a :class:`SecurityGate` as
``node.security``. The node calls it at two places only:

- :meth:`SecurityGate.outgoing` for every message queued for a peer node: if the
  sending context's policy requires protection for its type, the message is built in
  full and secured here (so it travels in the full-layout item: batched items carry no
  security fields); otherwise the entry passes unchanged. The sending context is the
  agent's own when the agent was registered with ``node.agent(id, security=ctx)``, else
  the node's.
- :meth:`SecurityGate.screen` for every data batch from a peer: each message the
  node's policy covers, or that carries security fields, is verified with the node's
  context. What fails is dropped, counted (``node.stats["security_rejected"]`` and per
  check in ``node.security.stats``), logged (rate-limited) and reported to watchers as a
  ``phoenix.telemetry.security.rejected`` message; a request (or a broadcast awaiting
  acknowledgements) is answered with ``REQUEST_FAILED`` of kind ``security_rejected``,
  which the requester raises as :class:`~phoenix_trio.security.MessageRejected`. A
  reply that fails verification fails the local request it answers with the error.

Messages between agents of the same node never leave the process and are not secured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from .._ids import format_compact, node_part
from .._message import Message, node_uri
from .._peer_protocol import FLAG_REPLY, DataBatch
from .._watchers import Watchers
from ._context import SecurityContext
from ._errors import MessageRejected, MessageSecurityError
from ._secure import secure_message, verify_message

if TYPE_CHECKING:
    from .._connection import Connection
    from .._node import Node

log = logging.getLogger(__name__)

REJECTED_KIND = "security_rejected"
EVENT_TYPE = "phoenix.telemetry.security.rejected"
LOG_PER_SECOND = 10


def rejection_error(node_id: str, detail: str, fallback_agent: str = "?") -> MessageRejected:
    """The :class:`MessageRejected` a ``REQUEST_FAILED`` of kind ``security_rejected`` means.

    ``detail`` is the JSON array ``[agent_id, check, reason]``.
    """
    try:
        agent_id, check, reason = json.loads(detail)
        if not all(type(part) is str for part in (agent_id, check, reason)):
            raise ValueError
    except (ValueError, TypeError):
        return MessageRejected(node_id, fallback_agent, "unknown", detail)
    return MessageRejected(node_id, agent_id, check, reason)


class SecurityGate:
    """See the module docstring. ``context``: the node's own security context."""

    def __init__(self, node: Node, context: SecurityContext) -> None:
        if not isinstance(context, SecurityContext):
            raise TypeError(f"security must be a SecurityContext, not {type(context).__name__}")
        self.node = node
        self.context = context
        self._agent_contexts: dict[str, SecurityContext] = {}
        self._watchers: Watchers[Message] = Watchers()
        self.stats: dict[str, int] = {"secured": 0, "verified": 0, "rejected": 0}
        self._log_window = float("-inf")
        self._logged = 0
        self._suppressed = 0

    # -- agents with their own identity ------------------------------------------------------

    def add_agent(self, agent_id: str, context: SecurityContext) -> None:
        """Secure what agent ``agent_id`` of this node sends with ``context``."""
        if not isinstance(context, SecurityContext):
            raise TypeError(f"security must be a SecurityContext, not {type(context).__name__}")
        self._agent_contexts[node_uri(self.node.id, agent_id)] = context

    def remove_agent(self, agent_id: str) -> None:
        self._agent_contexts.pop(node_uri(self.node.id, agent_id), None)

    def context_for(self, source: str) -> SecurityContext:
        """The context that secures messages from ``source``."""
        if self._agent_contexts:
            return self._agent_contexts.get(source, self.context)
        return self.context

    # -- outgoing ---------------------------------------------------------------------------

    def outgoing(self, entry: tuple[Any, ...]) -> tuple[Any, ...]:
        """A connection entry, secured when the policy requires it (see the module docstring).

        Raises :class:`~phoenix_trio.security.NoActiveKey` (or ``EncodeError``) to the sender.
        """
        size = len(entry)
        dseq = None
        if size >= 6:  # batched: (template, data, subject, parent, correlation id, flags[, id, dseq])
            template = entry[0]
            context = self.context_for(template.source)
            if not context.policy.protection_for(template.type).authenticate:
                return entry
            message = self.node._build(template, entry[1], entry[2], entry[4])
            flags = entry[5]
            if size == 8:  # reliable: keep its stable id, so duplicates can be recognised
                ident = entry[6]
                message = message.evolve(id=ident if type(ident) is str else format_compact(ident, node_part()))
                dseq = entry[7]
        else:  # (message, flags[, dseq])
            message, flags = entry[0], entry[1]
            if size == 3:
                dseq = entry[2]
            security = message.security
            if security is not None and security.mac is not None:
                return entry  # secured by the caller
            context = self.context_for(message.source)
            if not context.policy.protection_for(message.type).authenticate:
                return entry
        secured = secure_message(message, context)
        self.stats["secured"] += 1
        return (secured, flags) if dseq is None else (secured, flags, dseq)

    # -- incoming ---------------------------------------------------------------------------

    def screen(self, connection: Connection, batch: DataBatch) -> DataBatch:
        """``batch`` with every covered message verified (decrypted) and every failure removed."""
        context = self.context
        protection_for = context.policy.protection_for
        messages = batch.messages
        flags = batch.flags
        positions = batch.positions  # stream positions of reliable messages, by index
        kept: list[Message] | None = None
        kept_flags: list[int] = []
        kept_positions: dict[int, int] | None = None
        for i, message in enumerate(messages):
            if message.security is None and not protection_for(message.type).authenticate:
                if kept is not None:
                    if positions is not None and i in positions:
                        kept_positions = kept_positions or {}
                        kept_positions[len(kept)] = positions[i]
                    kept.append(message)
                    kept_flags.append(flags[i])
                continue
            if kept is None:
                kept, kept_flags = messages[:i], flags[:i]
                if positions is not None:
                    kept_positions = {k: v for k, v in positions.items() if k < i} or None
            try:
                verified = verify_message(message, context)
            except MessageSecurityError as exc:
                self._reject(connection, message, flags[i], exc)
                continue
            self.stats["verified"] += 1
            if positions is not None and i in positions:
                kept_positions = kept_positions or {}
                kept_positions[len(kept)] = positions[i]
            kept.append(verified)
            kept_flags.append(flags[i])
        return batch if kept is None else DataBatch(kept, kept_flags, kept_positions)

    def _reject(self, connection: Connection, message: Message, flags: int, error: MessageSecurityError) -> None:
        node = self.node
        peer = connection.peer_id
        check = error.check
        self.stats["rejected"] += 1
        self.stats[check] = self.stats.get(check, 0) + 1
        node.stats["security_rejected"] = node.stats.get("security_rejected", 0) + 1
        self._log(peer, message, error)
        correlation_id = message.correlation_id
        if flags & FLAG_REPLY:
            pending = node._pending_requests.get(correlation_id or "")
            if pending is not None and not pending.event.is_set():
                pending.error = error
                pending.event.set()
        elif flags and correlation_id:
            detail = json.dumps([message.subject or "?", check, error.reason[:200]])
            connection.send_control(connection.protocol.request_failed(correlation_id, REJECTED_KIND, detail))
        if self._watchers:
            self._emit(peer, message, error)

    def _log(self, peer: str, message: Message, error: MessageSecurityError) -> None:
        now = trio.current_time()
        if now - self._log_window >= 1.0:
            if self._suppressed:
                log.warning("node %s: %d more message(s) refused in security checks", self.node.id, self._suppressed)
            self._log_window, self._logged, self._suppressed = now, 0, 0
        if self._logged < LOG_PER_SECOND:
            self._logged += 1
            log.warning(
                "node %s refused message %s (type %s) from peer %s: %s: %s",
                self.node.id,
                message.id,
                message.type,
                peer,
                error.check,
                error.reason,
            )
        else:
            self._suppressed += 1

    def _emit(self, peer: str, message: Message, error: MessageSecurityError) -> None:
        event = Message.new(
            {
                "node": self.node.id,
                "peer": peer,
                "check": error.check,
                "reason": error.reason,
                "message_id": message.id,
                "message_type": message.type,
                "message_source": message.source,
                "agent_id": error.agent_id,
                "key_id": error.key_id,
            },
            type=EVENT_TYPE,
            source=self.node.uri,
            subject=peer,
        )
        self._watchers.tell(event)

    @asynccontextmanager
    async def watch(self, *, buffer: int = 256) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """``phoenix.telemetry.security.rejected`` messages, one per refused message.

        ``data`` holds node, peer, check, reason, message_id, message_type,
        message_source, agent_id and key_id. Events are dropped for a watcher that lets
        ``buffer`` of them pile up.
        """
        async with self._watchers.watch(buffer) as receive:
            yield receive

    def statistics(self) -> dict[str, int]:
        """Messages secured, verified and rejected, and rejections per check."""
        return dict(self.stats)
