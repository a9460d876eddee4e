"""``secure_message`` and ``verify_message``: the design's order, each check its own error.

Securing (what the context's policy requires for the message's type):

1. **authenticate**: the header (agent id, key id, timestamp, a fresh 16-byte nonce) and
   the parameters of the later steps (encryption algorithm, key id and a fresh 12-byte
   nonce; signature algorithm and key id) are set, then ``mac = HMAC-SHA256(mac key,
   canonical form)`` over the plaintext message (see :mod:`._canonical`);
2. **encrypt the payload** if required: ``data`` becomes the AEAD ciphertext of its
   canonical MessagePack bytes, with id, source, type and time as associated data;
3. **sign** if required: the signature covers the canonical form of the message as
   sent (ciphertext and MAC included; only the signature itself is left out).

Verifying undoes it in reverse (signature, decryption, authentication) after cheap
checks that need no cryptography (shape, policy, timestamp window, nonce already seen),
and returns the verified message with its plaintext data, or raises the
:class:`~phoenix_trio.security.MessageSecurityError` subclass of the failed check. The
nonce is remembered only once everything passed.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import os
from typing import Any

from .._errors import EncodeError
from .._message import Message, SecurityInfo
from . import _aead
from ._canonical import MAC_PURPOSE, SIGNATURE_PURPOSE, associated_data, canonical_bytes, pack_data, unpack_data
from ._context import SecurityContext
from ._errors import (
    AuthenticationFailed,
    BadSignature,
    DecryptionFailed,
    ExpiredKey,
    MalformedSecurity,
    MessageSecurityError,
    PolicyViolation,
    ReplayDetected,
    TimestampOutOfWindow,
    UnknownAgent,
    UnknownKey,
    UntrustedSigner,
)
from ._keys import SIGNATURE_ALGORITHMS, SigningKey, SymmetricKey, TrustedKey

NONCE_SIZE = 16
MAC_SIZE = 32
MAX_SIGNATURE = 132


def _rebuild(message: Message, data: Any, security: SecurityInfo | None) -> Message:
    """``message`` with new data and security (every other field kept, the responder too)."""
    return Message(
        message.id,
        message.source,
        message.type,
        data,
        message.subject,
        message.time,
        message.datacontenttype,
        message.dataschema,
        message.trace,
        message.causality,
        message.delivery,
        message.routing,
        security,
        message.qos,
        message.extensions,
        message.specversion,
        _responder=message._responder,
    )


def _mac(key: SymmetricKey, message: Message) -> bytes:
    return hmac.digest(key.mac_key, canonical_bytes(message, MAC_PURPOSE), "sha256")


def secure_message(message: Message, context: SecurityContext, *, now: _dt.datetime | None = None) -> Message:
    """``message`` with the protections ``context.policy`` requires for its type.

    Returns ``message`` itself when its type requires none. Any security fields it
    already had are replaced. Raises :class:`~phoenix_trio.security.NoActiveKey` when
    the key ring (or, to sign, the signing ring) has no key active at ``now`` (default:
    ``context.clock()``), and :class:`~phoenix_trio.EncodeError` when the data cannot be
    put in canonical form.
    """
    protection = context.policy.protection_for(message.type)
    if not protection.authenticate:
        return message
    now = context.now() if now is None else now
    key = context.keyring.current(now)
    signer: SigningKey | None = context.signing_keys.current(now) if protection.sign else None
    encryption = context.encryption if protection.encrypt else None
    encryption_nonce = os.urandom(_aead.NONCE_SIZE) if encryption is not None else None
    header = SecurityInfo(
        context.agent_id,
        key.key_id,
        now,
        os.urandom(NONCE_SIZE),
        None,
        None,
        None if signer is None else signer.key_id,
        None if signer is None else signer.algorithm,
        encryption,
        None if encryption is None else key.key_id,
        encryption_nonce,
    )
    plain = _rebuild(message, message.data, header)
    mac = _mac(key, plain)
    object.__setattr__(header, "mac", mac)  # the record is ours alone until returned
    data = plain.data
    if encryption is not None:
        assert encryption_nonce is not None
        data = _aead.encrypt(encryption, key.encryption_key, encryption_nonce, associated_data(plain), pack_data(data))
        secured = _rebuild(plain, data, header)
    else:
        secured = plain
    if signer is not None:
        object.__setattr__(header, "signature", signer.sign(canonical_bytes(secured, SIGNATURE_PURPOSE)))
    return secured


# -- verification ------------------------------------------------------------------------------


def _fail(kind: type[MessageSecurityError], message: Message, reason: str, key_id: str | None = None) -> MessageSecurityError:
    s = message.security
    return kind(
        reason,
        message_id=message.id,
        agent_id=None if s is None else s.agent_id,
        key_id=key_id if key_id is not None else (None if s is None else s.key_id),
    )


def _check_shape(message: Message, s: SecurityInfo) -> None:
    if s.agent_id is None or s.key_id is None or s.timestamp is None or s.nonce is None or s.mac is None:
        raise _fail(MalformedSecurity, message, "the authentication header (agent id, key id, timestamp, nonce, MAC) is incomplete")
    if len(s.nonce) != NONCE_SIZE:
        raise _fail(MalformedSecurity, message, f"the nonce must be {NONCE_SIZE} bytes")
    if len(s.mac) != MAC_SIZE:
        raise _fail(MalformedSecurity, message, f"the MAC must be {MAC_SIZE} bytes (HMAC-SHA256)")
    signed = (s.signature is not None, s.signature_key_id is not None, s.signature_alg is not None)
    if any(signed) and not all(signed):
        raise _fail(MalformedSecurity, message, "signature, signature key id and algorithm go together")
    if s.signature is not None:
        if s.signature_alg not in SIGNATURE_ALGORITHMS:
            raise _fail(MalformedSecurity, message, f"unsupported signature algorithm {s.signature_alg!r}")
        if not 0 < len(s.signature) <= MAX_SIGNATURE:
            raise _fail(MalformedSecurity, message, "the signature has an impossible size")
    encrypted = (s.encryption_alg is not None, s.encryption_key_id is not None, s.encryption_nonce is not None)
    if any(encrypted) and not all(encrypted):
        raise _fail(MalformedSecurity, message, "encryption algorithm, key id and nonce go together")
    if s.encryption_alg is not None:
        if s.encryption_alg not in _aead.AEAD_ALGORITHMS:
            raise _fail(MalformedSecurity, message, f"unsupported encryption algorithm {s.encryption_alg!r}")
        assert s.encryption_nonce is not None
        if len(s.encryption_nonce) != _aead.NONCE_SIZE:
            raise _fail(MalformedSecurity, message, f"the encryption nonce must be {_aead.NONCE_SIZE} bytes")
        if type(message.data) is not bytes:
            raise _fail(MalformedSecurity, message, "an encrypted message's data must be the ciphertext bytes")


def _validity(message: Message, key: SymmetricKey | TrustedKey, now: _dt.datetime, skew: _dt.timedelta) -> None:
    if key.expires_at is not None and now >= key.expires_at:
        raise _fail(ExpiredKey, message, f"key {key.key_id!r} expired at {key.expires_at.isoformat()}", key.key_id)
    if key.activates_at > now + skew:
        raise _fail(ExpiredKey, message, f"key {key.key_id!r} is not active until {key.activates_at.isoformat()}", key.key_id)


def _symmetric_key(message: Message, context: SecurityContext, key_id: str, now: _dt.datetime, skew: _dt.timedelta) -> SymmetricKey:
    key = context.keyring.get(key_id)
    if key is None:
        raise _fail(UnknownKey, message, f"no key {key_id!r} in the key ring", key_id)
    _validity(message, key, now, skew)
    return key


def verify_message(message: Message, context: SecurityContext, *, now: _dt.datetime | None = None) -> Message:
    """The verified (and decrypted) ``message``, or a :class:`MessageSecurityError` subclass.

    A message whose type requires no protection and that carries no security fields is
    returned as is. A message that carries security fields has them all checked, even
    beyond what the policy requires. ``now`` defaults to ``context.clock()``. On
    success the nonce is remembered in ``context``'s replay cache, so verifying the
    same message twice raises :class:`ReplayDetected` the second time.
    """
    s = message.security
    protection = context.policy.protection_for(message.type)
    if s is None:
        if protection.authenticate:
            raise _fail(PolicyViolation, message, f"type {message.type!r} requires {protection}; the message is not authenticated")
        return message
    _check_shape(message, s)
    if protection.encrypt and s.encryption_alg is None:
        raise _fail(PolicyViolation, message, f"type {message.type!r} requires {protection}; the payload is not encrypted")
    if protection.sign and s.signature is None:
        raise _fail(PolicyViolation, message, f"type {message.type!r} requires {protection}; the message is not signed")
    assert s.timestamp is not None and s.nonce is not None and s.mac is not None and s.agent_id is not None
    now = context.now() if now is None else now
    now_s = now.timestamp()
    timestamp = s.timestamp.timestamp()
    replay = context.replay
    problem = replay.window_problem(timestamp, now_s)
    if problem is not None:
        raise _fail(TimestampOutOfWindow, message, problem)
    if replay.seen(s.nonce):
        raise _fail(ReplayDetected, message, "this nonce was already accepted")
    skew = _dt.timedelta(seconds=replay.window)

    # 1. the signature, over the message as sent
    if s.signature is not None:
        assert s.signature_key_id is not None
        trusted = context.trust.key(s.signature_key_id)
        if trusted is None:
            raise _fail(UntrustedSigner, message, f"signing key {s.signature_key_id!r} is not in the trust store", s.signature_key_id)
        if trusted.agent_id is not None and trusted.agent_id != s.agent_id:
            raise _fail(
                UntrustedSigner, message, f"signing key {trusted.key_id!r} belongs to {trusted.agent_id!r}, not {s.agent_id!r}", trusted.key_id
            )
        _validity(message, trusted, now, skew)
        if trusted.algorithm != s.signature_alg:
            raise _fail(BadSignature, message, f"key {trusted.key_id!r} is an {trusted.algorithm} key, not {s.signature_alg}", trusted.key_id)
        try:
            signed = canonical_bytes(message, SIGNATURE_PURPOSE)
        except EncodeError as exc:
            raise _fail(BadSignature, message, f"the message has no canonical form: {exc}") from None
        if not trusted.verify(signed, s.signature):
            raise _fail(BadSignature, message, f"the signature does not verify with key {trusted.key_id!r}", trusted.key_id)

    # 2. the payload
    plain = message
    if s.encryption_alg is not None:
        assert s.encryption_key_id is not None and s.encryption_nonce is not None
        key = _symmetric_key(message, context, s.encryption_key_id, now, skew)
        try:
            data = unpack_data(
                _aead.decrypt(s.encryption_alg, key.encryption_key, s.encryption_nonce, associated_data(message), message.data)
            )
        except ValueError as exc:  # truncated, modified or wrong key (EncodeError is a ValueError too)
            raise _fail(DecryptionFailed, message, f"cannot decrypt the payload: {exc}", key.key_id) from None
        plain = _rebuild(message, data, s)

    # 3. authentication: agent, key, MAC, then the nonce is spent
    assert s.key_id is not None
    if not context.trust.knows(s.agent_id):
        raise _fail(UnknownAgent, message, f"agent {s.agent_id!r} is not in the trust store")
    if not context.trust.may_use(s.agent_id, s.key_id):
        raise _fail(UnknownKey, message, f"agent {s.agent_id!r} has no key {s.key_id!r}")
    key = _symmetric_key(message, context, s.key_id, now, skew)
    try:
        expected = _mac(key, plain)
    except EncodeError as exc:
        raise _fail(AuthenticationFailed, message, f"the message has no canonical form: {exc}") from None
    if not hmac.compare_digest(expected, s.mac):
        raise _fail(AuthenticationFailed, message, "the MAC does not match (message, header or key differ)")
    if not replay.record(s.nonce, timestamp, now_s):
        raise _fail(ReplayDetected, message, "this nonce was already accepted")
    return plain
