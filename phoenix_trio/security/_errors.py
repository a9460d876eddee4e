"""The security exceptions: one :class:`~phoenix_trio.SecurityError` subclass per failed check.

Message-level checks raise a :class:`MessageSecurityError` subclass that names the check
(``check``, the class name) and carries the message id, the claimed agent and key ids
when the message had them, and a human-readable ``reason``. Nothing in a message that
fails any check is returned: :func:`~phoenix_trio.security.verify_message` either returns
the verified message or raises.
"""

from __future__ import annotations

from .._errors import SecurityError


class MessageSecurityError(SecurityError):
    """A message failed a message-level security check (a subclass says which)."""

    def __init__(
        self,
        reason: str,
        *,
        message_id: str | None = None,
        agent_id: str | None = None,
        key_id: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id
        self.agent_id = agent_id
        self.key_id = key_id

    @property
    def check(self) -> str:
        """The failed check: this exception's class name (``AuthenticationFailed`` ...)."""
        return type(self).__name__


class MalformedSecurity(MessageSecurityError):
    """The security fields are incomplete, inconsistent or of the wrong size or algorithm."""


class PolicyViolation(MessageSecurityError):
    """The message lacks a protection the policy requires for its type (MAC, encryption, signature)."""


class AuthenticationFailed(MessageSecurityError):
    """The HMAC does not match: the message, its attributes or its header changed, or the key is wrong."""


class UnknownKey(MessageSecurityError):
    """The key id is in no key ring here (or names a key the claimed agent may not use)."""


class ExpiredKey(MessageSecurityError):
    """The key exists but is past its expiry (or far from active yet)."""


class NoActiveKey(SecurityError):
    """Securing needs a key, but the key ring has none active at this time."""


class UnknownAgent(MessageSecurityError):
    """The agent named in the authentication header is not in the trust store."""


class UntrustedSigner(MessageSecurityError):
    """The signature's key is not in the trust store, or belongs to another agent."""


class BadSignature(MessageSecurityError):
    """The signature does not verify with the trusted key it names."""


class DecryptionFailed(MessageSecurityError):
    """The ciphertext is truncated or was modified (the AEAD tag does not verify)."""


class ReplayDetected(MessageSecurityError):
    """This nonce was already accepted within the replay window."""


class TimestampOutOfWindow(MessageSecurityError):
    """The header's timestamp is outside the replay window (too old, or too far ahead)."""


class MessageRejected(SecurityError):
    """The receiving node refused our message in a security check (reported to a requester).

    ``node_id``: the node that refused; ``agent_id``: the target agent that did not get
    it; ``check``: the failed check's name (``AuthenticationFailed``, ``PolicyViolation``
    ...); ``reason``: the receiver's explanation.
    """

    def __init__(self, node_id: str, agent_id: str, check: str, reason: str) -> None:
        super().__init__(f"node {node_id!r} refused the message to {agent_id!r}: {check}: {reason}")
        self.node_id = node_id
        self.agent_id = agent_id
        self.check = check
        self.reason = reason


class TlsError(SecurityError):
    """A TLS connection was refused: handshake, certificate, ALPN or peer identity."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"TLS with {peer}: {reason}")
        self.peer = peer
        self.reason = reason


class PeerIdentityError(TlsError):
    """The peer's verified certificate does not name the node id it announced."""
