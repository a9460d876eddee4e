"""The public surface of phoenix_trio.security: explicit re-exports, each documented."""

from __future__ import annotations

import inspect

import phoenix_trio as px
import phoenix_trio.security as sec

EXPECTED = {
    # message level
    "secure_message", "verify_message", "canonical_bytes", "associated_data",
    "SecurityContext", "SecurityPolicy", "Protection", "NONE", "AUTHENTICATE", "ENCRYPT", "SIGN", "ENCRYPT_AND_SIGN",
    "KeyRing", "SymmetricKey", "SigningKey", "TrustedKey", "TrustStore", "ReplayGuard",
    "AEAD_ALGORITHMS", "AES_256_GCM", "CHACHA20_POLY1305", "SIGNATURE_ALGORITHMS", "ECDSA_P256", "ED25519",
    # node enforcement
    "SecurityGate", "REJECTION_EVENT_TYPE",
    # transport level
    "configure_tls", "TlsConfig", "TlsOptions", "ALPN_PROTOCOL", "SECURE_CIPHERS",
    # errors
    "MessageSecurityError", "MalformedSecurity", "PolicyViolation", "AuthenticationFailed", "UnknownKey", "ExpiredKey",
    "NoActiveKey", "UnknownAgent", "UntrustedSigner", "BadSignature", "DecryptionFailed", "ReplayDetected",
    "TimestampOutOfWindow", "MessageRejected", "TlsError", "PeerIdentityError",
}  # fmt: skip


def test_public_names_are_exactly_the_documented_ones() -> None:
    public = {name for name in vars(sec) if not name.startswith("_")}
    assert public == EXPECTED
    for name in EXPECTED:
        obj = getattr(sec, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"
            assert obj.__module__.startswith("phoenix_trio.security._")


def test_every_error_is_a_security_error() -> None:
    for name in EXPECTED:
        obj = getattr(sec, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, px.SecurityError) and issubclass(obj, px.PhoenixError)
    assert sec.REJECTION_EVENT_TYPE == "phoenix.telemetry.security.rejected"
    assert px.is_valid_type(sec.REJECTION_EVENT_TYPE)
