"""Message-level security: secure/verify at every level, every bad input, keys, replay, policy."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_trio import ConfigurationError, DecodeError, Message, SecurityError, SecurityInfo
from phoenix_trio import security as sec
from phoenix_trio import serialization as ser
from phoenix_trio.security._canonical import MAC_PURPOSE, SIGNATURE_PURPOSE

from .security_helpers import (
    K1,
    K2,
    LEVELS,
    OTHER_SIGNER,
    PLANNER_ED,
    PLANNER_SIGNER,
    T0,
    Clock,
    context,
    message,
    trust,
)
from .strategies import json_extension_values, messages


def secured(protection: sec.Protection = sec.AUTHENTICATE, m: Message | None = None, **options) -> Message:
    return sec.secure_message(m or message(), context(protection=protection, **options))


def verify(m: Message, protection: sec.Protection = sec.AUTHENTICATE, **options) -> Message:
    """Verify with a fresh receiver context (its own replay cache)."""
    return sec.verify_message(m, context("worker", protection, **options))


def with_security(m: Message, **changes) -> Message:
    return m.evolve(security=attrs.evolve(m.security, **changes))


# -- what securing produces ---------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fmt", ser.FORMATS)
def test_every_level_round_trips_through_every_format(level: str, fmt: str) -> None:
    original = message()
    protection = LEVELS[level]
    out = secured(protection, original)
    payload, _ = ser.serialize(out, fmt)
    received = ser.deserialize(payload, fmt)
    plain = verify(received, protection)
    assert plain.data == original.data
    assert plain.evolve(security=None) == original
    s = plain.security
    assert (s.agent_id, s.key_id, s.timestamp) == ("planner", "k1", T0)
    assert len(s.nonce) == 16 and len(s.mac) == 32
    assert (s.signature is not None) == protection.sign
    assert (s.encryption_alg is not None) == protection.encrypt


def test_encryption_hides_the_payload_and_binds_fresh_nonces() -> None:
    original = message({"secret": "launch codes"})
    a, b = secured(sec.ENCRYPT, original), secured(sec.ENCRYPT, original)
    assert type(a.data) is bytes and b"launch codes" not in a.data
    s = a.security
    assert (s.encryption_alg, s.encryption_key_id, len(s.encryption_nonce)) == ("aes-256-gcm", "k1", 12)
    assert a.security.nonce != b.security.nonce
    assert a.security.encryption_nonce != b.security.encryption_nonce
    assert a.data != b.data
    assert verify(a, sec.ENCRYPT).data == {"secret": "launch codes"}


@pytest.mark.parametrize("algorithm", sec.AEAD_ALGORITHMS)
@pytest.mark.parametrize("signer", [PLANNER_SIGNER, PLANNER_ED], ids=["ecdsa-p256", "ed25519"])
def test_algorithm_options(algorithm: str, signer: sec.SigningKey) -> None:
    out = secured(sec.ENCRYPT_AND_SIGN, encryption=algorithm, signer=signer)
    assert out.security.encryption_alg == algorithm
    assert out.security.signature_alg == signer.algorithm
    assert out.security.signature_key_id == signer.key_id
    assert verify(out, sec.ENCRYPT_AND_SIGN).data == message().data


def test_ecdsa_signature_is_der_and_verifies_with_the_standard_algorithm() -> None:
    from Crypto.Hash import SHA256
    from Crypto.Signature import DSS

    out = secured(sec.SIGN)
    digest = SHA256.new(sec.canonical_bytes(out, SIGNATURE_PURPOSE))
    DSS.new(PLANNER_SIGNER.key.public_key(), "fips-186-3", encoding="der").verify(digest, out.security.signature)


def test_types_the_policy_does_not_cover_pass_unchanged() -> None:
    policy = sec.SecurityPolicy(prefixes={"phoenix.telemetry.": sec.NONE})
    ctx = sec.SecurityContext("planner", sec.KeyRing([K1]), trust(), policy, clock=Clock())
    metric = message(type="phoenix.telemetry.metric.update")
    assert sec.secure_message(metric, ctx) is metric
    assert sec.verify_message(metric, ctx) is metric


def test_verified_message_keeps_the_responder() -> None:
    async def responder(*_):
        return None

    out = secured()
    object.__setattr__(out, "_responder", responder)
    assert verify(out).is_request


# -- canonical form ---------------------------------------------------------------------------------


def test_canonical_form_ignores_map_order_tuples_and_utc_offsets() -> None:
    a = message({"b": 1, "a": (1, 2), "c": {"y": 1, "x": 2}}, extensions={"zz": 1, "aa": "x"})
    b = a.evolve(
        data={"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1},
        extensions={"aa": "x", "zz": 1},
        time=T0.astimezone(dt.timezone(dt.timedelta(hours=5))),
    )
    assert sec.canonical_bytes(a, MAC_PURPOSE) == sec.canonical_bytes(b, MAC_PURPOSE)
    assert sec.canonical_bytes(a, MAC_PURPOSE) != sec.canonical_bytes(a, SIGNATURE_PURPOSE)


def test_canonical_form_distinguishes_types_and_covers_every_field() -> None:
    base = message({"n": 1})
    variants = [
        base.evolve(data={"n": 1.0}),
        base.evolve(data={"n": True}),
        base.evolve(data={"n": "1"}),
        base.evolve(data={b"n": 1}),
        base.evolve(subject="other"),
        base.evolve(dataschema="https://example.com/s"),
        base.evolve(datacontenttype="application/cbor"),
        base.evolve(time=T0 + dt.timedelta(microseconds=1)),
        base.evolve(trace=None),
        base.evolve(causality=None),
        base.evolve(delivery=attrs.evolve(base.delivery, max_retries=4)),
        base.evolve(routing=attrs.evolve(base.routing, correlation_id="req-4712")),
        base.evolve(qos=attrs.evolve(base.qos, ttl_ms=1)),
        base.evolve(extensions={"tenant": "acme", "x": 1}),
        base.evolve(security=SecurityInfo(agent_id="a")),
        base.evolve(specversion="1.1"),
    ]
    forms = {sec.canonical_bytes(m, MAC_PURPOSE) for m in [base, *variants]}
    assert len(forms) == len(variants) + 1
    # the MAC and signature never cover themselves
    s = SecurityInfo(agent_id="a", key_id="k", mac=b"1" * 32, signature=b"2" * 64)
    assert sec.canonical_bytes(base.evolve(security=s), MAC_PURPOSE) == sec.canonical_bytes(
        base.evolve(security=attrs.evolve(s, mac=b"3" * 32, signature=b"4" * 64)), MAC_PURPOSE
    )


# -- bad input: every case refused with its own error ------------------------------------------


def _tamper_data(m: Message) -> Message:
    return m.evolve(data={**m.data, "document": "doc-4712"})


TAMPERED_ATTRIBUTES = {
    "subject": lambda m: m.evolve(subject="job-4712"),
    "source": lambda m: m.evolve(source="phoenix://node-3/intruder"),
    "type": lambda m: m.evolve(type="phoenix.agent.action.result"),
    "id": lambda m: m.evolve(id=m.id[:-1] + ("0" if m.id[-1] != "0" else "1")),
    "time": lambda m: m.evolve(time=m.time + dt.timedelta(seconds=1)),
    "datacontenttype": lambda m: m.evolve(datacontenttype="text/plain"),
    "trace": lambda m: m.evolve(trace=attrs.evolve(m.trace, flags=0)),
    "causality": lambda m: m.evolve(causality=None),
    "routing": lambda m: m.evolve(routing=attrs.evolve(m.routing, target="someone-else")),
    "delivery": lambda m: m.evolve(delivery=attrs.evolve(m.delivery, delivery_mode="at_most_once")),
    "qos": lambda m: m.evolve(qos=attrs.evolve(m.qos, priority="critical")),
    "extension": lambda m: m.evolve(extensions={"tenant": "evil"}),
    "added extension": lambda m: m.evolve(extensions={**m.extensions, "admin": True}),
}
TAMPERED_HEADER = {
    "agent id": lambda m: with_security(m, agent_id="worker"),
    "key id": lambda m: with_security(m, key_id="k2"),
    "timestamp": lambda m: with_security(m, timestamp=m.security.timestamp - dt.timedelta(seconds=1)),
    "nonce": lambda m: with_security(m, nonce=bytes(16)),
    "mac": lambda m: with_security(m, mac=bytes(a ^ 1 for a in m.security.mac)),
}


@pytest.mark.parametrize("level", LEVELS)
def test_tampered_payload(level: str) -> None:
    protection = LEVELS[level]
    out = secured(protection)
    if protection.encrypt:
        data = bytearray(out.data)
        data[3] ^= 0x40
        tampered, error = out.evolve(data=bytes(data)), sec.DecryptionFailed
    else:
        tampered, error = _tamper_data(out), sec.AuthenticationFailed
    if protection.sign:
        error = sec.BadSignature  # checked first, as the design verifies
    with pytest.raises(error):
        verify(tampered, protection)


@pytest.mark.parametrize("name", TAMPERED_ATTRIBUTES)
@pytest.mark.parametrize("level", ["hmac", "hmac+encrypt"])
def test_tampered_attribute(name: str, level: str) -> None:
    protection = LEVELS[level]
    tampered = TAMPERED_ATTRIBUTES[name](secured(protection))
    identifying = name in ("id", "source", "type", "time")
    error = sec.DecryptionFailed if protection.encrypt and identifying else sec.AuthenticationFailed
    with pytest.raises(error):
        verify(tampered, protection)


@pytest.mark.parametrize("name", TAMPERED_ATTRIBUTES)
def test_tampered_attribute_of_signed_message(name: str) -> None:
    with pytest.raises(sec.BadSignature):
        verify(TAMPERED_ATTRIBUTES[name](secured(sec.SIGN)), sec.SIGN)


@pytest.mark.parametrize("name", TAMPERED_HEADER)
def test_tampered_authentication_header(name: str) -> None:
    ring = sec.KeyRing([K1, K2])
    with pytest.raises(sec.AuthenticationFailed):
        verify(TAMPERED_HEADER[name](secured(ring=ring)), ring=ring)


def test_wrong_key() -> None:
    impostor = sec.KeyRing([sec.SymmetricKey("k1", b"\xff" * 32)])
    with pytest.raises(sec.AuthenticationFailed):
        verify(secured(ring=impostor))


def test_wrong_key_for_decryption() -> None:
    impostor = sec.KeyRing([sec.SymmetricKey("k1", b"\xff" * 32)])
    with pytest.raises(sec.DecryptionFailed):
        verify(secured(sec.ENCRYPT, ring=impostor), sec.ENCRYPT)


def test_unknown_key_id() -> None:
    with pytest.raises(sec.UnknownKey) as info:
        verify(secured(ring=sec.KeyRing([sec.SymmetricKey("k9", bytes(32))])))
    assert info.value.key_id == "k9" and info.value.agent_id == "planner"


def test_key_the_agent_may_not_use() -> None:
    store = trust()
    store.add_agent("planner", key_ids=["k2"])
    with pytest.raises(sec.UnknownKey):
        verify(secured(), trust_store=store)


def test_expired_key() -> None:
    short = sec.SymmetricKey("k1", K1.secret, expires_at=T0 + dt.timedelta(seconds=10))
    out = secured(ring=sec.KeyRing([short]))
    clock = Clock(T0 + dt.timedelta(seconds=11))
    with pytest.raises(sec.ExpiredKey):
        verify(out, ring=sec.KeyRing([short]), clock=clock)


def test_unknown_agent() -> None:
    out = sec.secure_message(message(), context("stranger"))
    with pytest.raises(sec.UnknownAgent) as info:
        verify(out)
    assert info.value.agent_id == "stranger"


def test_signature_by_untrusted_key() -> None:
    rogue = sec.SigningKey.generate("rogue")
    with pytest.raises(sec.UntrustedSigner):
        verify(secured(sec.SIGN, signer=rogue), sec.SIGN)


def test_signature_by_another_agents_key() -> None:
    with pytest.raises(sec.UntrustedSigner):
        verify(secured(sec.SIGN, signer=OTHER_SIGNER), sec.SIGN)


def test_signature_forged_under_a_trusted_key_id() -> None:
    forger = sec.SigningKey(PLANNER_SIGNER.key_id, sec.ECDSA_P256, sec.SigningKey.generate("x").key)
    with pytest.raises(sec.BadSignature):
        verify(secured(sec.SIGN, signer=forger), sec.SIGN)


def test_expired_signing_key() -> None:
    store = trust()
    store.add_key(PLANNER_SIGNER.public_key("planner", expires_at=T0))
    with pytest.raises(sec.ExpiredKey):
        verify(secured(sec.SIGN), sec.SIGN, trust_store=store)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-1],  # truncated tag
        lambda d: d[:10],  # shorter than the tag
        lambda d: b"",
        lambda d: d + b"\x00",  # extended
        lambda d: bytes([d[0] ^ 1]) + d[1:],  # modified
        lambda d: d[:-1] + bytes([d[-1] ^ 0x80]),  # modified tag
    ],
    ids=["truncated", "shorter than tag", "empty", "extended", "modified", "modified tag"],
)
def test_truncated_or_modified_ciphertext(damage) -> None:
    out = secured(sec.ENCRYPT)
    with pytest.raises(sec.DecryptionFailed):
        verify(out.evolve(data=damage(out.data)), sec.ENCRYPT)


def test_ciphertext_moved_to_another_envelope_fails_even_with_a_fresh_mac() -> None:
    """An insider holding the key re-MACs a stolen ciphertext under a new id: the AEAD refuses."""
    ctx = context(protection=sec.ENCRYPT)
    stolen = sec.secure_message(message(), ctx)
    carrier = sec.secure_message(message(id="another-id"), ctx)
    moved = carrier.evolve(
        data=stolen.data,
        security=attrs.evolve(carrier.security, encryption_nonce=stolen.security.encryption_nonce),
    )
    # recompute the MAC as a key holder could: it covers the plaintext, so forge over the stolen one
    from phoenix_trio.security._secure import _mac

    plain_view = moved.evolve(data=message().data)
    moved = with_security(moved, mac=_mac(K1, plain_view))
    with pytest.raises(sec.DecryptionFailed):
        verify(moved, sec.ENCRYPT)


def test_wrong_encryption_nonce() -> None:
    out = secured(sec.ENCRYPT)
    with pytest.raises(sec.DecryptionFailed):
        verify(with_security(out, encryption_nonce=bytes(12)), sec.ENCRYPT)


def test_replayed_nonce() -> None:
    out = secured()
    receiver = context("worker")
    sec.verify_message(out, receiver)
    with pytest.raises(sec.ReplayDetected):
        sec.verify_message(out, receiver)
    # a second message with the same nonce but fresh MAC from a key holder is a replay too
    again = sec.secure_message(message(), context())
    from phoenix_trio.security._secure import _mac

    clone = with_security(again, nonce=out.security.nonce)
    clone = with_security(clone, mac=_mac(K1, clone))
    with pytest.raises(sec.ReplayDetected):
        sec.verify_message(clone, receiver)


@pytest.mark.parametrize("offset", [-301, 301, -3600, 86400])
def test_timestamp_out_of_window(offset: int) -> None:
    out = secured()
    with pytest.raises(sec.TimestampOutOfWindow):
        verify(out, clock=Clock(T0 + dt.timedelta(seconds=offset)))


@pytest.mark.parametrize("offset", [-299, 299])
def test_timestamp_inside_window(offset: int) -> None:
    assert verify(secured(), clock=Clock(T0 + dt.timedelta(seconds=offset))).data == message().data


def test_configurable_window() -> None:
    out = secured()
    with pytest.raises(sec.TimestampOutOfWindow):
        verify(out, clock=Clock(T0 + dt.timedelta(seconds=31)), replay_window=dt.timedelta(seconds=30))


MALFORMED = {
    "no mac": lambda m: with_security(m, mac=None),
    "no nonce": lambda m: with_security(m, nonce=None),
    "no timestamp": lambda m: with_security(m, timestamp=None),
    "no agent": lambda m: with_security(m, agent_id=None),
    "no key id": lambda m: with_security(m, key_id=None),
    "short nonce": lambda m: with_security(m, nonce=b"x" * 8),
    "long mac": lambda m: with_security(m, mac=m.security.mac + b"x"),
    "identity only": lambda m: m.evolve(security=SecurityInfo(agent_id="planner", key_id="k1")),
    "signature without key id": lambda m: with_security(m, signature=b"x" * 64),
    "unknown signature alg": lambda m: with_security(m, signature=b"x" * 64, signature_key_id="s", signature_alg="rsa"),
    "partial encryption": lambda m: with_security(m, encryption_alg="aes-256-gcm"),
    "unknown encryption alg": lambda m: with_security(
        m, encryption_alg="rot13", encryption_key_id="k1", encryption_nonce=bytes(12)
    ),
    "short encryption nonce": lambda m: with_security(
        m, encryption_alg="aes-256-gcm", encryption_key_id="k1", encryption_nonce=bytes(8)
    ),
    "encrypted data not bytes": lambda m: with_security(
        m, encryption_alg="aes-256-gcm", encryption_key_id="k1", encryption_nonce=bytes(12)
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_security_fields(name: str) -> None:
    with pytest.raises(sec.MalformedSecurity):
        verify(MALFORMED[name](secured()))


@pytest.mark.parametrize(
    ("sent", "required"),
    [
        (sec.NONE, sec.AUTHENTICATE),
        (sec.AUTHENTICATE, sec.ENCRYPT),
        (sec.AUTHENTICATE, sec.SIGN),
        (sec.ENCRYPT, sec.ENCRYPT_AND_SIGN),
    ],
)
def test_missing_required_protection(sent: sec.Protection, required: sec.Protection) -> None:
    with pytest.raises(sec.PolicyViolation):
        verify(secured(sent), required)


def test_stripping_the_signature_is_caught_by_the_mac() -> None:
    out = secured(sec.SIGN)
    stripped = with_security(out, signature=None, signature_key_id=None, signature_alg=None)
    with pytest.raises(sec.AuthenticationFailed):
        verify(stripped, sec.AUTHENTICATE)


def test_stripping_encryption_is_caught_by_the_mac() -> None:
    out = secured(sec.ENCRYPT)
    stripped = with_security(out, encryption_alg=None, encryption_key_id=None, encryption_nonce=None).evolve(
        data=message().data
    )
    with pytest.raises(sec.AuthenticationFailed):
        verify(stripped, sec.AUTHENTICATE)


def test_every_error_is_a_security_error_with_context() -> None:
    out = secured()
    with pytest.raises(SecurityError) as info:
        verify(_tamper_data(out))
    error = info.value
    assert isinstance(error, sec.MessageSecurityError)
    assert error.check == "AuthenticationFailed"
    assert error.message_id == out.id
    assert error.agent_id == "planner" and error.key_id == "k1"


def test_failed_verification_does_not_spend_the_nonce() -> None:
    out = secured()
    receiver = context("worker")
    with pytest.raises(sec.AuthenticationFailed):
        sec.verify_message(_tamper_data(out), receiver)
    assert sec.verify_message(out, receiver).data == message().data


# -- hypothesis: flipped bits -------------------------------------------------------------------


def _flip(payload: bytes, bit: int) -> bytes:
    data = bytearray(payload)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


SECURED = {level: sec.secure_message(message(), context(protection=p)) for level, p in LEVELS.items()}
WIRE = {level: ser.serialize(m, "msgpack")[0] for level, m in SECURED.items()}


def _timestamp_spans(payload: bytes) -> list[range]:
    """Byte ranges of the msgpack timestamp extensions (64-bit form: d7 ff + 8 bytes)."""
    spans, start = [], 0
    while (at := payload.find(b"\xd7\xff", start)) >= 0:
        spans.append(range(at + 2, at + 10))
        start = at + 1
    return spans


@pytest.mark.parametrize("level", LEVELS)
def test_every_single_bit_flip_of_the_wire_bytes_is_caught(level: str) -> None:
    """All of them, exhaustively: the decoder or a security check refuses every one."""
    payload, original = WIRE[level], SECURED[level]
    spans = _timestamp_spans(payload)
    outcomes = {"decode": 0, "security": 0, "unchanged": 0}
    for bit in range(len(payload) * 8):
        try:
            received = ser.deserialize(_flip(payload, bit), "msgpack")
        except DecodeError:
            outcomes["decode"] += 1
            continue
        if received == original:
            # sub-microsecond nanoseconds of a timestamp: the decoded message is identical
            assert any(bit // 8 in span for span in spans)
            outcomes["unchanged"] += 1
            continue
        with pytest.raises(SecurityError):
            verify(received, LEVELS[level])
        outcomes["security"] += 1
    assert outcomes["security"] > outcomes["decode"] > 0
    assert outcomes["unchanged"] <= 20


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(level=st.sampled_from(sorted(LEVELS)), data=st.data())
def test_every_bit_flip_of_the_wire_bytes_is_caught(level: str, data) -> None:
    payload = WIRE[level]
    bits = data.draw(st.lists(st.integers(0, len(payload) * 8 - 1), min_size=1, max_size=3, unique=True))
    damaged = payload
    for bit in bits:
        damaged = _flip(damaged, bit)
    try:
        received = ser.deserialize(damaged, "msgpack")
    except DecodeError:
        return  # caught by the decoder
    original = SECURED[level]
    if received == original:
        # The flip hit redundancy in the encoding, not the message: only the low bits of a
        # msgpack timestamp's nanoseconds can (Python datetimes keep microseconds).
        assert received.time == original.time
        return
    with pytest.raises(SecurityError):
        verify(received, LEVELS[level])


@settings(max_examples=300, deadline=None)
@given(level=st.sampled_from(sorted(LEVELS)), data=st.data())
def test_every_bit_flip_of_any_field_is_caught(level: str, data) -> None:
    """Flip a bit inside one field's value (what an attacker re-encoding the message does)."""
    original = SECURED[level]
    array = ser._msgpack.to_array(original)
    leaves = _leaves(array)
    path, value = data.draw(st.sampled_from(leaves))
    if isinstance(value, bytes):
        bit = data.draw(st.integers(0, len(value) * 8 - 1))
        new = _flip(value, bit)
    elif isinstance(value, str):
        raw = value.encode()
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        try:
            new = _flip(raw, bit).decode()
        except UnicodeDecodeError:
            return
    elif isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = value ^ (1 << data.draw(st.integers(0, 30)))
    elif isinstance(value, dt.datetime):
        new = value + dt.timedelta(microseconds=1 << data.draw(st.integers(0, 40)))
    else:
        return
    damaged = _replace(array, path, new)
    try:
        received = ser._msgpack.from_array(damaged)
    except DecodeError:
        return
    with pytest.raises(SecurityError):
        verify(received, LEVELS[level])


def _leaves(value, path=()):
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            out += _leaves(item, (*path, i))
        return out
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _leaves(item, (*path, key))
        return out
    return [] if value is None or value in ("", b"") else [(path, value)]


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        copy = list(value)
    else:
        copy = dict(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


@settings(max_examples=150, deadline=None)
@given(m=messages(extension_values=json_extension_values), level=st.sampled_from(sorted(LEVELS)))
def test_arbitrary_messages_verify_after_every_format(m: Message, level: str) -> None:
    protection = LEVELS[level]
    ctx = context(protection=protection)
    out = sec.secure_message(m, ctx)
    for fmt in ser.FORMATS:
        payload, _ = ser.serialize(out, fmt)
        plain = verify(ser.deserialize(payload, fmt), protection)
        assert sec.canonical_bytes(plain, MAC_PURPOSE) == sec.canonical_bytes(
            m.evolve(security=plain.security), MAC_PURPOSE
        )


# -- keys and rotation ---------------------------------------------------------------------------


def test_ring_picks_the_newest_active_key_and_rotation_keeps_a_grace_period() -> None:
    ring = sec.KeyRing([K1])
    k2 = sec.SymmetricKey("k2", K2.secret, activates_at=T0 + dt.timedelta(minutes=10))
    ring.rotate(k2, grace=dt.timedelta(minutes=5))
    assert ring.current(T0).key_id == "k1"
    assert ring.current(T0 + dt.timedelta(minutes=10)).key_id == "k2"
    assert ring.get("k1").expires_at == T0 + dt.timedelta(minutes=15)
    clock = Clock(T0 + dt.timedelta(minutes=9, seconds=59))
    sender = context(ring=ring, clock=clock)
    old = sec.secure_message(message(), sender)
    clock.now = T0 + dt.timedelta(minutes=10)
    new = sec.secure_message(message(), sender)
    assert (old.security.key_id, new.security.key_id) == ("k1", "k2")
    receiver = context("worker", ring=ring, clock=Clock(T0 + dt.timedelta(minutes=12)))
    assert sec.verify_message(old, receiver) and sec.verify_message(new, receiver)  # old key: grace period
    late = context("worker", ring=ring, clock=Clock(T0 + dt.timedelta(minutes=15)))
    with pytest.raises(sec.ExpiredKey):
        sec.verify_message(sec.secure_message(message(), sender.__class__(
            "planner", sec.KeyRing([ring.get("k1")]), trust(), clock=Clock(T0 + dt.timedelta(minutes=14))
        )), late)


def test_a_key_is_accepted_slightly_before_its_activation_for_clock_skew() -> None:
    k2 = sec.SymmetricKey("k2", K2.secret, activates_at=T0)
    ring = sec.KeyRing([k2])
    out = sec.secure_message(message(), context(ring=ring, clock=Clock(T0)))
    behind = Clock(T0 - dt.timedelta(seconds=30))
    assert verify(out, ring=ring, clock=behind)
    # a receiver that will only activate k2 in an hour refuses it now
    later = sec.KeyRing([sec.SymmetricKey("k2", K2.secret, activates_at=T0 + dt.timedelta(hours=1))])
    with pytest.raises(sec.ExpiredKey, match="not active until"):
        verify(out, ring=later, clock=Clock(T0))


def test_no_active_key() -> None:
    ring = sec.KeyRing([sec.SymmetricKey("k1", K1.secret, activates_at=T0 + dt.timedelta(days=1))])
    with pytest.raises(sec.NoActiveKey):
        secured(ring=ring)
    with pytest.raises(sec.NoActiveKey):
        secured(sec.SIGN, signer=sec.SigningKey.generate("late", activates_at=T0 + dt.timedelta(days=1)))


def test_key_validation() -> None:
    with pytest.raises(ConfigurationError):
        sec.SymmetricKey("k", b"short")
    with pytest.raises(ConfigurationError):
        sec.SymmetricKey("k", bytes(32), activates_at=T0, expires_at=T0)
    with pytest.raises(ConfigurationError):
        sec.KeyRing([K1, K1])
    with pytest.raises(ConfigurationError):
        sec.KeyRing([K1, PLANNER_SIGNER])
    with pytest.raises(ConfigurationError):
        sec.SigningKey("s", sec.ED25519, PLANNER_SIGNER.key)
    with pytest.raises(ConfigurationError):
        sec.SecurityContext("a", sec.KeyRing([K1]), encryption="des")
    assert "secret" not in repr(K1) and K1.secret.hex() not in repr(K1)
    assert K1.mac_key != K1.encryption_key != K1.secret


def test_pem_keys_round_trip() -> None:
    pem = PLANNER_SIGNER.key.export_key(format="PEM")
    loaded = sec.SigningKey.from_pem("planner-ecdsa", pem)
    public = sec.TrustedKey.from_pem("planner-ecdsa", loaded.public_pem(), "planner")
    store = sec.TrustStore(agents=["planner"], keys=[public])
    out = secured(sec.SIGN, signer=loaded)
    assert verify(out, sec.SIGN, trust_store=store)


# -- replay cache ------------------------------------------------------------------------------------


def test_nonce_cache_is_time_indexed() -> None:
    guard = sec.ReplayGuard(window=10, max_entries=1000)
    for i in range(100):
        assert guard.record(i.to_bytes(16, "big"), 1000.0 + i * 0.1, 1000.0 + i * 0.1)
    assert len(guard) == 100
    guard.prune(1015.0)  # entries stamped before 1005 have left the window
    assert len(guard) == 50
    assert guard.window_problem(1004.0, 1015.0) is not None


def test_full_nonce_cache_raises_the_floor_and_never_admits_a_replay() -> None:
    clock = Clock()
    receiver = context("worker", clock=clock, max_nonces=10)
    first = secured()
    sec.verify_message(first, receiver)
    for i in range(10):
        clock.advance(0.001)
        sec.verify_message(sec.secure_message(message(), context(clock=Clock(clock.now))), receiver)
    assert len(receiver.replay) == 10
    with pytest.raises(sec.TimestampOutOfWindow, match="cache"):
        sec.verify_message(first, receiver)


def test_a_clock_stepping_back_cannot_revive_a_forgotten_nonce() -> None:
    guard = sec.ReplayGuard(window=10)
    assert guard.record(b"n" * 16, 100.0, 100.0)
    guard.prune(200.0)
    assert not guard.seen(b"n" * 16)
    assert guard.window_problem(100.0, 105.0) is not None


# -- policy ---------------------------------------------------------------------------------------


def test_policy_precedence() -> None:
    policy = sec.SecurityPolicy(
        types={"phoenix.cluster.node.join": sec.NONE},
        prefixes={"phoenix.cluster.": sec.SIGN, "phoenix.cluster.topology.": sec.ENCRYPT},
        classes={"control_plane": sec.ENCRYPT_AND_SIGN, "observability": sec.NONE},
        default=sec.AUTHENTICATE,
    )
    assert policy.protection_for("phoenix.cluster.node.join") == sec.NONE
    assert policy.protection_for("phoenix.cluster.topology.update") == sec.ENCRYPT
    assert policy.protection_for("phoenix.cluster.node.leave") == sec.SIGN
    assert policy.protection_for("phoenix.agent.migration.start") == sec.ENCRYPT_AND_SIGN
    assert policy.protection_for("phoenix.telemetry.log.entry") == sec.NONE
    assert policy.protection_for("phoenix.agent.direct.send") == sec.AUTHENTICATE
    with pytest.raises(ConfigurationError):
        sec.SecurityPolicy(classes={"data-plane": sec.NONE})
    with pytest.raises(ConfigurationError):
        sec.Protection(authenticate=False, encrypt=True)
    assert str(sec.ENCRYPT_AND_SIGN) == "authenticate+encrypt+sign" and str(sec.NONE) == "none"


def test_context_clock_must_be_aware() -> None:
    ctx = context(clock=lambda: dt.datetime(2026, 1, 1))  # naive
    with pytest.raises(ConfigurationError):
        sec.secure_message(message(), ctx)


def test_secure_refuses_data_without_canonical_form() -> None:
    from phoenix_trio import EncodeError

    with pytest.raises(EncodeError):
        sec.secure_message(message().evolve(data={"x": object()}), context())


@pytest.mark.parametrize("level", LEVELS)
def test_received_data_without_canonical_form_is_a_security_error(level: str) -> None:
    """Whatever a peer puts in ``data``, verification answers with a SecurityError."""
    out = secured(LEVELS[level]).evolve(data={"x": {1, 2}})
    with pytest.raises(sec.MessageSecurityError):
        verify(out, LEVELS[level])
