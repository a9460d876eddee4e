"""Keys: versioned symmetric keys and signing keys in key rings, public keys in a trust store.

Every key has an id, an activation time and an optional expiry. A key ring hands out
the newest key active at a given time for securing (:meth:`KeyRing.current`), and keeps
older keys so their messages still verify and decrypt until those keys expire
(:meth:`KeyRing.rotate` sets the old key's expiry to the new key's activation plus a
grace period). The trust store holds the agents a node knows, which symmetric keys each
may use, and the public keys signatures are checked with, each owned by one agent.

Key material comes from :mod:`secrets` (symmetric) and pycryptodome (ECDSA P-256 and
Ed25519). A symmetric key's secret is never used directly: HKDF-SHA256 derives one
sub-key for the HMAC and one for the AEAD.
"""

from __future__ import annotations

import datetime as _dt
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import attrs
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS, eddsa

from .._errors import ConfigurationError
from ._errors import NoActiveKey

UTC = _dt.timezone.utc
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)
ECDSA_P256 = "ecdsa-p256-sha256"
ED25519 = "ed25519"
SIGNATURE_ALGORITHMS = (ECDSA_P256, ED25519)
MIN_SECRET = 32


def _key_id(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= 256:
        raise ConfigurationError(f"{attribute.name} must be a non-empty string of at most 256 characters")


def _aware(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, _dt.datetime) or value.tzinfo is None):
        raise ConfigurationError(f"{attribute.name} must be a timezone-aware datetime")


def _expiry_after_activation(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _aware(instance, attribute, value)
    if value is not None and value <= instance.activates_at:
        raise ConfigurationError(f"key {instance.key_id!r} expires before it activates")


def active_at(key: Any, when: _dt.datetime) -> bool:
    """Whether ``key`` is active (activated and not expired) at ``when``."""
    return key.activates_at <= when and (key.expires_at is None or when < key.expires_at)


def _secret(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bytes or len(value) < MIN_SECRET:
        raise ConfigurationError(f"a key's secret must be at least {MIN_SECRET} bytes")


@attrs.frozen(slots=True)
class SymmetricKey:
    """A shared secret for HMAC-SHA256 and the AEAD, with its id and validity.

    ``activates_at``: from when it is used to secure messages; ``expires_at``: from when
    nothing it protects is accepted (None: never). Make one with :meth:`generate`.
    """

    key_id: str = attrs.field(validator=_key_id)
    secret: bytes = attrs.field(validator=_secret, repr=False)
    activates_at: _dt.datetime = attrs.field(default=EPOCH, validator=_aware)
    expires_at: _dt.datetime | None = attrs.field(default=None, validator=_expiry_after_activation)
    mac_key: bytes = attrs.field(init=False, repr=False, eq=False)
    encryption_key: bytes = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "mac_key", HKDF(self.secret, 32, b"", SHA256, context=b"phoenix-trio hmac-sha256 v1"))
        object.__setattr__(self, "encryption_key", HKDF(self.secret, 32, b"", SHA256, context=b"phoenix-trio aead v1"))

    @classmethod
    def generate(
        cls, key_id: str, *, activates_at: _dt.datetime = EPOCH, expires_at: _dt.datetime | None = None
    ) -> SymmetricKey:
        """A new random 256-bit key."""
        return cls(key_id, secrets.token_bytes(32), activates_at, expires_at)


def _signature_alg(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in SIGNATURE_ALGORITHMS:
        raise ConfigurationError(f"signature algorithm must be one of {', '.join(SIGNATURE_ALGORITHMS)}; got {value!r}")


def _algorithm_of(key: Any) -> str:
    curve = getattr(key, "curve", None)
    if curve in ("NIST P-256", "p256", "P-256", "prime256v1", "secp256r1"):
        return ECDSA_P256
    if curve in ("Ed25519", "ed25519"):
        return ED25519
    raise ConfigurationError(f"unsupported key type (curve {curve!r}); use an ECDSA P-256 or Ed25519 key")


@attrs.frozen(slots=True)
class SigningKey:
    """A private key that signs messages: ECDSA P-256 with SHA-256 (the design's) or Ed25519.

    ECDSA signatures are deterministic (RFC 6979) and DER-encoded, as Erlang's
    ``:crypto.sign(:ecdsa, :sha256, ...)`` writes them; Ed25519 signatures are the 64
    bytes of RFC 8032.
    """

    key_id: str = attrs.field(validator=_key_id)
    algorithm: str = attrs.field(validator=_signature_alg)
    key: Any = attrs.field(repr=False, eq=False)
    activates_at: _dt.datetime = attrs.field(default=EPOCH, validator=_aware)
    expires_at: _dt.datetime | None = attrs.field(default=None, validator=_expiry_after_activation)

    def __attrs_post_init__(self) -> None:
        if not self.key.has_private() or _algorithm_of(self.key) != self.algorithm:
            raise ConfigurationError(f"signing key {self.key_id!r} must be a private {self.algorithm} key")

    @classmethod
    def generate(
        cls,
        key_id: str,
        algorithm: str = ECDSA_P256,
        *,
        activates_at: _dt.datetime = EPOCH,
        expires_at: _dt.datetime | None = None,
    ) -> SigningKey:
        """A new random key pair for ``algorithm`` (``ecdsa-p256-sha256`` or ``ed25519``)."""
        _signature_alg(None, attrs.fields(cls).algorithm, algorithm)
        key = ECC.generate(curve="P-256" if algorithm == ECDSA_P256 else "Ed25519")
        return cls(key_id, algorithm, key, activates_at, expires_at)

    @classmethod
    def from_pem(
        cls, key_id: str, pem: str | bytes, *, activates_at: _dt.datetime = EPOCH, expires_at: _dt.datetime | None = None
    ) -> SigningKey:
        """Load a PEM (PKCS#8 or SEC1) private key; the algorithm follows from the curve."""
        key = ECC.import_key(pem)
        return cls(key_id, _algorithm_of(key), key, activates_at, expires_at)

    def sign(self, data: bytes) -> bytes:
        if self.algorithm == ECDSA_P256:
            return DSS.new(self.key, "deterministic-rfc6979", encoding="der").sign(SHA256.new(data))  # type: ignore[no-any-return]
        return eddsa.new(self.key, "rfc8032").sign(data)  # type: ignore[no-any-return]

    def public_key(
        self,
        agent_id: str | None,
        *,
        activates_at: _dt.datetime | None = None,
        expires_at: _dt.datetime | None = None,
    ) -> TrustedKey:
        """The public half, for trust stores, owned by ``agent_id`` (None: any agent)."""
        return TrustedKey(
            self.key_id,
            self.algorithm,
            self.key.public_key(),
            agent_id,
            self.activates_at if activates_at is None else activates_at,
            self.expires_at if expires_at is None else expires_at,
        )

    def public_pem(self) -> str:
        return self.key.public_key().export_key(format="PEM")  # type: ignore[no-any-return]


@attrs.frozen(slots=True)
class TrustedKey:
    """A public key in a trust store: who owns it (``agent_id``; None: any agent) and when it is valid."""

    key_id: str = attrs.field(validator=_key_id)
    algorithm: str = attrs.field(validator=_signature_alg)
    key: Any = attrs.field(repr=False, eq=False)
    agent_id: str | None = None
    activates_at: _dt.datetime = attrs.field(default=EPOCH, validator=_aware)
    expires_at: _dt.datetime | None = attrs.field(default=None, validator=_expiry_after_activation)

    def __attrs_post_init__(self) -> None:
        if _algorithm_of(self.key) != self.algorithm:
            raise ConfigurationError(f"trusted key {self.key_id!r} is not an {self.algorithm} key")
        if self.key.has_private():
            object.__setattr__(self, "key", self.key.public_key())

    @classmethod
    def from_pem(
        cls,
        key_id: str,
        pem: str | bytes,
        agent_id: str | None,
        *,
        activates_at: _dt.datetime = EPOCH,
        expires_at: _dt.datetime | None = None,
    ) -> TrustedKey:
        """Load a PEM public key (SubjectPublicKeyInfo); the algorithm follows from the curve."""
        key = ECC.import_key(pem)
        return cls(key_id, _algorithm_of(key), key, agent_id, activates_at, expires_at)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        try:
            if self.algorithm == ECDSA_P256:
                DSS.new(self.key, "fips-186-3", encoding="der").verify(SHA256.new(data), signature)
            else:
                eddsa.new(self.key, "rfc8032").verify(data, signature)
        except (ValueError, TypeError):
            return False
        return True


K = TypeVar("K", SymmetricKey, SigningKey)


class KeyRing(Generic[K]):
    """Versioned keys of one kind (:class:`SymmetricKey` or :class:`SigningKey`) by id.

    Mutable and shared freely: rotating a ring that several contexts use rotates all of
    them. Not thread-safe (nothing in phoenix_trio uses threads).
    """

    def __init__(self, keys: Iterable[K] = ()) -> None:
        self._keys: dict[str, K] = {}
        for key in keys:
            self.add(key)

    def add(self, key: K) -> None:
        """Add ``key``; its id must be new to this ring."""
        if not isinstance(key, (SymmetricKey, SigningKey)):
            raise ConfigurationError(f"a key ring holds SymmetricKey or SigningKey objects, not {type(key).__name__}")
        if self._keys and type(next(iter(self._keys.values()))) is not type(key):
            raise ConfigurationError("a key ring holds keys of one kind")
        if key.key_id in self._keys:
            raise ConfigurationError(f"key id {key.key_id!r} is already in this ring")
        self._keys[key.key_id] = key

    def remove(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def get(self, key_id: str) -> K | None:
        return self._keys.get(key_id)

    def current(self, now: _dt.datetime) -> K:
        """The key to secure with at ``now``: the most recently activated one still valid.

        Raises :class:`~phoenix_trio.security.NoActiveKey` when there is none.
        """
        best: K | None = None
        for key in self._keys.values():
            if active_at(key, now) and (best is None or key.activates_at > best.activates_at):
                best = key
        if best is None:
            raise NoActiveKey(f"no key in the ring is active at {now.isoformat()}")
        return best

    def rotate(self, new_key: K, *, grace: _dt.timedelta) -> None:
        """Add ``new_key`` and retire the keys it replaces.

        Every key active at ``new_key.activates_at`` keeps verifying (and decrypting)
        until ``grace`` after that activation, then expires (an earlier expiry stays).
        Distribute the new key to every node before it activates.
        """
        if grace < _dt.timedelta(0):
            raise ConfigurationError("grace must not be negative")
        retire_at = new_key.activates_at + grace
        replaced = {}
        for key_id, key in self._keys.items():
            if key.activates_at < new_key.activates_at and (key.expires_at is None or key.expires_at > retire_at):
                replaced[key_id] = attrs.evolve(key, expires_at=retire_at)  # type: ignore[misc]
        self.add(new_key)
        self._keys.update(replaced)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing({sorted(self._keys)!r})"


class TrustStore:
    """The agents a context accepts messages from, and the public keys it checks signatures with.

    ``agents``: agent ids, or a mapping agent id -> the symmetric key ids that agent may
    authenticate with (None: any key in the ring). ``keys``: :class:`TrustedKey` objects.
    """

    def __init__(self, agents: Iterable[str] | Mapping[str, Iterable[str] | None] = (), keys: Iterable[TrustedKey] = ()) -> None:
        self._agents: dict[str, frozenset[str] | None] = {}
        self._keys: dict[str, TrustedKey] = {}
        if isinstance(agents, Mapping):
            for agent_id, key_ids in agents.items():
                self.add_agent(agent_id, key_ids)
        else:
            for agent_id in agents:
                self.add_agent(agent_id)
        for key in keys:
            self.add_key(key)

    def add_agent(self, agent_id: str, key_ids: Iterable[str] | None = None) -> None:
        if type(agent_id) is not str or not agent_id:
            raise ConfigurationError("agent ids are non-empty strings")
        self._agents[agent_id] = None if key_ids is None else frozenset(key_ids)

    def remove_agent(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def knows(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def may_use(self, agent_id: str, key_id: str) -> bool:
        """Whether known agent ``agent_id`` may authenticate with symmetric key ``key_id``."""
        allowed = self._agents.get(agent_id)
        return allowed is None or key_id in allowed

    def add_key(self, key: TrustedKey) -> None:
        if not isinstance(key, TrustedKey):
            raise ConfigurationError(f"a trust store holds TrustedKey objects, not {type(key).__name__}")
        self._keys[key.key_id] = key

    def remove_key(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def key(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(self._agents)

    def __repr__(self) -> str:
        return f"TrustStore(agents={sorted(self._agents)!r}, keys={sorted(self._keys)!r})"
