"""Message-level security cost per level, and TLS against plain TCP between two node processes.

    python bench/security.py --quick

Message level: a typical message of about 300 bytes in msgpack (the one
``bench/serialization.py`` uses, 256 distinct ones), secured by one context and
verified by another (``secure_message`` + ``verify_message``, replay cache included) at
each level: ``hmac``, ``hmac+encrypt`` (AES-256-GCM) and ``hmac+encrypt+sign`` (ECDSA
P-256), plus the options ChaCha20-Poly1305 and Ed25519. Anchor, same run, interleaved:
the unsecured msgpack round trip ``deserialize(serialize(m))``. ``{level}_vs_roundtrip``
is the level's secure+verify rate over that round trip's rate (below 1: securing and
verifying costs more than serializing and parsing). ``{level}_wire_per_s`` adds the
serialization: secure, serialize, deserialize, verify.

Transport level: like ``bench/p2p.py``, a sender process streams 100-byte payloads with
``node.send`` to a receiver process on loopback, once over plain TCP and once over TLS
1.3 with mutual authentication (certificates from a throwaway trustme CA), alternately,
best of each. ``tls_vs_plain`` is the TLS rate over the plain rate. ``hmac_p2p_vs_plain``
does the same for nodes that authenticate every message (HMAC, no TLS).

Ends with ``RESULT {json}``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import parse_args, rate, report  # noqa: E402
from serialization import POOL, interleaved, over, typical_message  # noqa: E402

from phoenix_trio import serialization as ser  # noqa: E402
from phoenix_trio import security as sec  # noqa: E402

PAYLOAD = b"x" * 100
SECRET = bytes(range(32))


# -- message level ------------------------------------------------------------------------------


def contexts(protection: sec.Protection, encryption: str, signer: sec.SigningKey) -> tuple[sec.SecurityContext, sec.SecurityContext]:
    ring = sec.KeyRing([sec.SymmetricKey("k1", SECRET)])
    trust = sec.TrustStore(agents=["planner"], keys=[signer.public_key("planner")])
    policy = sec.SecurityPolicy(default=protection)
    sender = sec.SecurityContext("planner", ring, trust, policy, sec.KeyRing([signer]), encryption=encryption)
    receiver = sec.SecurityContext("worker", ring, trust, policy, encryption=encryption)
    return sender, receiver


LEVELS: list[tuple[str, sec.Protection, str, str]] = [
    ("hmac", sec.AUTHENTICATE, sec.AES_256_GCM, sec.ECDSA_P256),
    ("hmac_encrypt", sec.ENCRYPT, sec.AES_256_GCM, sec.ECDSA_P256),
    ("hmac_encrypt_sign", sec.ENCRYPT_AND_SIGN, sec.AES_256_GCM, sec.ECDSA_P256),
    ("hmac_chacha", sec.ENCRYPT, sec.CHACHA20_POLY1305, sec.ECDSA_P256),
    ("hmac_chacha_ed25519", sec.ENCRYPT_AND_SIGN, sec.CHACHA20_POLY1305, sec.ED25519),
]


def message_level(t: float) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    messages = [typical_message(i).evolve(security=None) for i in range(POOL)]
    size = round(sum(len(ser.serialize(m, "msgpack")[0]) for m in messages) / POOL)
    serialize, deserialize = ser.serialize, ser.deserialize
    secure, verify = sec.secure_message, sec.verify_message
    prepared = []
    for name, protection, encryption, alg in LEVELS:
        sender, receiver = contexts(protection, encryption, sec.SigningKey.generate("s1", alg))
        assert verify(secure(messages[0], sender), receiver).data == messages[0].data
        prepared.append((name, sender, receiver))
    bodies = [over(messages, lambda m: deserialize(serialize(m, "msgpack")[0], "msgpack"))]
    bodies += [over(messages, lambda m, s=s, r=r: verify(secure(m, s), r)) for _, s, r in prepared]
    rates = interleaved(bodies, seconds=4 * t)
    roundtrip = rates[0]
    result: dict[str, Any] = {"message_bytes": size, "roundtrip_per_s": round(roundtrip)}
    rows = [("msgpack round trip (anchor)", f"{size} B message: {roundtrip / 1e3:.1f} k/s")]
    for (name, sender, receiver), level_rate in zip(prepared, rates[1:]):
        wire = over(messages, lambda m, s=sender, r=receiver: verify(deserialize(serialize(secure(m, s), "msgpack")[0], "msgpack"), r))
        wire_rate = rate(wire, seconds=t, repeats=2)
        secured_size = len(serialize(secure(messages[0], sender), "msgpack")[0])
        result[f"{name}_per_s"] = round(level_rate)
        result[f"{name}_vs_roundtrip"] = round(level_rate / roundtrip, 3)
        result[f"{name}_wire_per_s"] = round(wire_rate)
        result[f"{name}_bytes"] = secured_size
        rows.append(
            (
                name.replace("_", "+"),
                f"secure+verify {level_rate / 1e3:6.1f} k/s ({level_rate / roundtrip:.3f} x round trip); "
                f"with the wire {wire_rate / 1e3:6.1f} k/s; {secured_size} B",
            )
        )
    return result, rows


# -- transport level --------------------------------------------------------------------------------


def _options(mode: str, name: str, certdir: str) -> dict[str, Any]:
    if mode == "tls":
        return {
            "tls": sec.configure_tls(
                certfile=f"{certdir}/{name}.crt", keyfile=f"{certdir}/{name}.key", cacertfile=f"{certdir}/ca.pem"
            )
        }
    if mode == "hmac":
        ring = sec.KeyRing([sec.SymmetricKey("k1", SECRET)])
        trust = sec.TrustStore(agents=["sender", "receiver"])
        return {"security": sec.SecurityContext(name, ring, trust)}
    return {}


def _receiver(address_queue: mp.Queue, count: int, mode: str, certdir: str) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("receiver", listen="127.0.0.1:0", **_options(mode, "receiver", certdir)) as node:
            address_queue.put(node.address)
            async with node.agent("sink", capacity=65536) as sink:
                while True:
                    received = 0
                    async for message in sink:
                        if message.data == b"start":
                            received = 0
                            continue
                        received += 1
                        if received == count:
                            break
                    await node.send(message.source.rsplit("/", 1)[-1], "done")

    trio.run(main)


def _sender(address: Any, count: int, mode: str, certdir: str, out: mp.Queue) -> None:
    import trio

    import phoenix_trio as px

    async def main() -> None:
        async with px.open_node("sender", seeds=[address], **_options(mode, "sender", certdir)) as node:
            await node.wait_for_agent("sink", timeout=10)
            async with node.agent("bench") as me:
                best = 0.0
                for _ in range(3):
                    await me.send("sink", b"start")
                    start = time.perf_counter()
                    for _ in range(count):
                        await me.send("sink", PAYLOAD)
                    reply = await me.receive()
                    assert reply.data == "done"
                    best = max(best, count / (time.perf_counter() - start))
                out.put(best)

    trio.run(main)


def run_pair(count: int, mode: str, certdir: str) -> float:
    ctx = mp.get_context("spawn")
    addresses: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    receiver = ctx.Process(target=_receiver, args=(addresses, count, mode, certdir), daemon=True)
    receiver.start()
    try:
        address = addresses.get(timeout=30)
        sender = ctx.Process(target=_sender, args=(address, count, mode, certdir, results))
        sender.start()
        try:
            return float(results.get(timeout=600))
        finally:
            sender.join(10)
    finally:
        receiver.terminate()
        receiver.join(10)


def make_certificates(directory: str) -> None:
    import trustme  # test extra, installed by `make setup`

    ca = trustme.CA()
    ca.cert_pem.write_to_path(f"{directory}/ca.pem")
    for name in ("sender", "receiver"):
        cert = ca.issue_cert("127.0.0.1", name)
        Path(f"{directory}/{name}.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(f"{directory}/{name}.key")


def transport_level(quick: bool) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    count = 50_000 if quick else 200_000
    best = {"plain": 0.0, "tls": 0.0, "hmac": 0.0}
    with tempfile.TemporaryDirectory() as certdir:
        make_certificates(certdir)
        for _ in range(2 if quick else 4):
            for mode in best:
                best[mode] = max(best[mode], run_pair(count if mode != "hmac" else count // 4, mode, certdir))
    result = {
        "plain_p2p_msgs_per_s": round(best["plain"]),
        "tls_p2p_msgs_per_s": round(best["tls"]),
        "tls_vs_plain": round(best["tls"] / best["plain"], 3),
        "hmac_p2p_msgs_per_s": round(best["hmac"]),
        "hmac_p2p_vs_plain": round(best["hmac"] / best["plain"], 3),
    }
    rows = [
        ("node.send, 100 B, plain TCP", f"{best['plain'] / 1e3:.0f} k msgs/s"),
        ("node.send, 100 B, TLS 1.3", f"{best['tls'] / 1e3:.0f} k msgs/s; ratio to plain {result['tls_vs_plain']}"),
        ("node.send, 100 B, HMAC per message", f"{best['hmac'] / 1e3:.0f} k msgs/s; ratio to plain {result['hmac_p2p_vs_plain']}"),
    ]
    return result, rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    t = 0.3 if args.quick else 1.5
    result, rows = message_level(t)
    more, more_rows = transport_level(args.quick)
    result.update(more)
    report("phoenix_trio security", rows + more_rows, result)


if __name__ == "__main__":
    main()
