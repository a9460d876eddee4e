"""Shared fixtures for the security tests: fixed times, keys, contexts."""

from __future__ import annotations

import datetime as dt

from phoenix_trio import Message
from phoenix_trio import security as sec

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
K1 = sec.SymmetricKey(key_id="k1", secret=bytes(range(32)))
K2 = sec.SymmetricKey(key_id="k2", secret=bytes(range(1, 33)))
PLANNER_SIGNER = sec.SigningKey.generate("planner-ecdsa")
PLANNER_ED = sec.SigningKey.generate("planner-ed", sec.ED25519)
OTHER_SIGNER = sec.SigningKey.generate("worker-ecdsa")

LEVELS = {
    "hmac": sec.AUTHENTICATE,
    "hmac+encrypt": sec.ENCRYPT,
    "hmac+sign": sec.SIGN,
    "hmac+encrypt+sign": sec.ENCRYPT_AND_SIGN,
}


class Clock:
    """A settable clock for contexts (no sleeping in tests)."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def trust() -> sec.TrustStore:
    return sec.TrustStore(
        agents=["planner", "worker"],
        keys=[PLANNER_SIGNER.public_key("planner"), PLANNER_ED.public_key("planner"), OTHER_SIGNER.public_key("worker")],
    )


def context(
    agent: str = "planner",
    protection: sec.Protection = sec.AUTHENTICATE,
    *,
    ring: sec.KeyRing | None = None,
    signer: sec.SigningKey = PLANNER_SIGNER,
    clock: Clock | None = None,
    trust_store: sec.TrustStore | None = None,
    **options,
) -> sec.SecurityContext:
    return sec.SecurityContext(
        agent,
        ring if ring is not None else sec.KeyRing([K1]),
        trust_store if trust_store is not None else trust(),
        sec.SecurityPolicy(default=protection),
        sec.KeyRing([signer]),
        clock=clock or Clock(),
        **options,
    )


def message(data=None, **options) -> Message:
    """A request-like message of about 300 bytes in msgpack."""
    options.setdefault("type", "phoenix.agent.action.execute")
    options.setdefault("source", "phoenix://node-3/planner")
    options.setdefault("subject", "job-4711")
    options.setdefault("target", "summariser")
    options.setdefault("correlation_id", "req-4711")
    options.setdefault("time", T0)
    options.setdefault("extensions", {"tenant": "acme"})
    return Message.new(
        {"task": "summarise", "document": "doc-4711", "sections": [1, 2, 3], "deadline_ms": 2500} if data is None else data,
        **options,
    )
