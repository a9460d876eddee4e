"""Payload encryption: AES-256-GCM (the default) and ChaCha20-Poly1305, from pycryptodome.

Both take a 256-bit key, a 96-bit nonce and associated data, and produce the ciphertext
followed by a 128-bit tag. Nonces are random (``os.urandom(12)``) and fresh per message;
with random nonces one key should protect at most 2**32 messages (NIST SP 800-38D), far
more than a key lives between rotations.
"""

from __future__ import annotations

from Crypto.Cipher import AES, ChaCha20_Poly1305

AES_256_GCM = "aes-256-gcm"
CHACHA20_POLY1305 = "chacha20-poly1305"
AEAD_ALGORITHMS = (AES_256_GCM, CHACHA20_POLY1305)
NONCE_SIZE = 12
TAG_SIZE = 16


def _cipher(algorithm: str, key: bytes, nonce: bytes):  # type: ignore[no-untyped-def]
    if algorithm == AES_256_GCM:
        return AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_SIZE)
    if algorithm == CHACHA20_POLY1305:
        return ChaCha20_Poly1305.new(key=key, nonce=nonce)
    raise ValueError(f"unsupported AEAD algorithm {algorithm!r}")


def encrypt(algorithm: str, key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
    """``ciphertext || tag``."""
    cipher = _cipher(algorithm, key, nonce)
    cipher.update(associated_data)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return ciphertext + tag  # type: ignore[no-any-return]


def decrypt(algorithm: str, key: bytes, nonce: bytes, associated_data: bytes, sealed: bytes) -> bytes:
    """The plaintext; ``ValueError`` when ``sealed`` is truncated or was modified (or the key is wrong)."""
    if len(sealed) < TAG_SIZE:
        raise ValueError("ciphertext is shorter than its tag")
    cipher = _cipher(algorithm, key, nonce)
    cipher.update(associated_data)
    return cipher.decrypt_and_verify(sealed[:-TAG_SIZE], sealed[-TAG_SIZE:])  # type: ignore[no-any-return]
