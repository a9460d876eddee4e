"""The security context: whose keys, whom to trust, what to require, and the replay state."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

import attrs

from .._errors import ConfigurationError
from ._aead import AEAD_ALGORITHMS, AES_256_GCM
from ._keys import KeyRing, SigningKey, SymmetricKey, TrustStore
from ._policy import SecurityPolicy
from ._replay import ReplayGuard

UTC = _dt.timezone.utc
DEFAULT_REPLAY_WINDOW = 300.0


def utc_now() -> _dt.datetime:
    """The wall clock, UTC (the default clock of a context)."""
    return _dt.datetime.now(UTC)


def _seconds(value: Any) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def _agent_id(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= 256:
        raise ConfigurationError("agent_id must be a non-empty string of at most 256 characters")


def _encryption(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in AEAD_ALGORITHMS:
        raise ConfigurationError(f"encryption must be one of {', '.join(AEAD_ALGORITHMS)}; got {value!r}")


@attrs.define(eq=False, slots=True)
class SecurityContext:
    """Everything :func:`secure_message` and :func:`verify_message` need, for one agent or node.

    - ``agent_id``: the principal this context secures as (the header's agent id).
    - ``keyring``: symmetric keys (HMAC and AEAD); the newest active one secures.
    - ``trust``: known agents (and the keys each may use) and trusted public keys.
    - ``policy``: which protections each message type requires (both directions).
    - ``signing_keys``: private keys for signatures; the newest active one signs.
    - ``encryption``: ``aes-256-gcm`` (default) or ``chacha20-poly1305``.
    - ``replay_window``: seconds (or a timedelta) a timestamp may differ from the clock;
      ``max_nonces`` bounds the nonce cache (see :mod:`._replay`).
    - ``clock``: returns the current time as an aware datetime; inject a fixed one in tests.

    The context owns the replay state of everything verified with it, so each verifying
    node or agent has its own context (they may share key rings and trust stores).
    """

    agent_id: str = attrs.field(validator=_agent_id)
    keyring: KeyRing[SymmetricKey] = attrs.field(validator=attrs.validators.instance_of(KeyRing))
    trust: TrustStore = attrs.field(factory=TrustStore, validator=attrs.validators.instance_of(TrustStore))
    policy: SecurityPolicy = attrs.field(factory=SecurityPolicy, validator=attrs.validators.instance_of(SecurityPolicy))
    signing_keys: KeyRing[SigningKey] = attrs.field(factory=KeyRing, validator=attrs.validators.instance_of(KeyRing))
    encryption: str = attrs.field(default=AES_256_GCM, validator=_encryption)
    replay_window: float = attrs.field(default=DEFAULT_REPLAY_WINDOW, converter=_seconds)
    max_nonces: int = 100_000
    clock: Callable[[], _dt.datetime] = utc_now
    replay: ReplayGuard = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.replay = ReplayGuard(self.replay_window, self.max_nonces)

    def now(self) -> _dt.datetime:
        now = self.clock()
        if not isinstance(now, _dt.datetime) or now.tzinfo is None:
            raise ConfigurationError("a security context's clock must return timezone-aware datetimes")
        return now
