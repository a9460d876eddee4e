"""Nodes enforcing message-level security: secured traffic, refused input, rotation under load."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import trio

import phoenix_trio as px
from phoenix_trio import Message
from phoenix_trio import security as sec

from .security_helpers import K1, K2, OTHER_SIGNER, PLANNER_SIGNER, T0, Clock, message
from .test_security import MALFORMED, TAMPERED_ATTRIBUTES, TAMPERED_HEADER, with_security

NODE_IDS = ("n0", "n1", "n2")


def node_trust() -> sec.TrustStore:
    """Every node and the agents that sign for themselves."""
    return sec.TrustStore(
        agents=[*NODE_IDS, "planner", "worker"],
        keys=[PLANNER_SIGNER.public_key("planner"), OTHER_SIGNER.public_key("worker")],
    )


def node_context(node_id: str, policy: sec.SecurityPolicy | None = None, *, ring=None, clock=None, **options) -> sec.SecurityContext:
    return sec.SecurityContext(
        node_id,
        ring if ring is not None else sec.KeyRing([K1]),
        node_trust(),
        policy or sec.SecurityPolicy(),
        clock=clock or sec._context.utc_now,
        **options,
    )


@asynccontextmanager
async def secure_cluster(n: int, contexts: Callable[[str], sec.SecurityContext | None]):
    """``n`` nodes on loopback, node i opened with ``security=contexts(f"n{i}")``, fully meshed."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            px.open_node("n0", listen="127.0.0.1:0", security=contexts("n0"), heartbeat_interval=0.2)
        )
        nodes = [first]
        for i in range(1, n):
            node = px.open_node(
                f"n{i}", listen="127.0.0.1:0", seeds=[first.address], security=contexts(f"n{i}"), heartbeat_interval=0.2
            )
            nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.wait_for_members(n - 1, timeout=10)
        yield nodes


async def echo(agent: px.Agent) -> None:
    async for m in agent:
        if m.is_request:
            await m.reply({"echo": m.data, "by": agent.id})


# -- secured traffic --------------------------------------------------------------------------------


@pytest.mark.parametrize("protection", [sec.AUTHENTICATE, sec.ENCRYPT], ids=str)
async def test_send_request_and_broadcast_are_secured_and_verified(protection: sec.Protection) -> None:
    policy = sec.SecurityPolicy(default=protection)
    async with secure_cluster(2, lambda n: node_context(n, policy)) as (a, b):
        async with b.agent("sink") as sink, b.agent("echo") as server, trio.open_nursery() as nursery:
            nursery.start_soon(echo, server)
            await a.wait_for_agent("echo", timeout=5)
            await a.send("sink", {"n": 1})
            got = await sink.receive()
            reply = await a.request("echo", [1, 2], timeout=5)
            result = await a.broadcast(["sink"], "all", delivery_mode="sync", timeout=5)
            fanned = await sink.receive()
            nursery.cancel_scope.cancel()
    assert got.data == {"n": 1} and got.subject == "sink"
    assert got.security.agent_id == "n0" and got.security.key_id == "k1" and len(got.security.mac) == 32
    assert (got.security.encryption_alg is not None) == protection.encrypt
    assert reply.data == {"echo": [1, 2], "by": "echo"} and reply.security.agent_id == "n1"
    assert result.complete and fanned.data == "all"
    assert a.security.stats["secured"] == 3 and b.security.stats["verified"] == 3
    assert b.security.stats["secured"] == 1 and a.security.stats["verified"] == 1
    assert a.security.stats["rejected"] == b.security.stats["rejected"] == 0


async def test_agents_secure_as_themselves_with_their_own_signing_keys() -> None:
    policy = sec.SecurityPolicy(default=sec.SIGN)
    planner = sec.SecurityContext("planner", sec.KeyRing([K1]), node_trust(), policy, sec.KeyRing([PLANNER_SIGNER]))
    async with secure_cluster(2, lambda n: node_context(n, sec.SecurityPolicy())) as (a, b):
        async with a.agent("planner", security=planner) as me, b.agent("sink") as sink:
            await a.wait_for_agent("sink", timeout=5)
            await me.send("sink", "signed by the planner")
            await a.send("sink", "from the node")
            first, second = await sink.receive(), await sink.receive()
    assert first.security.agent_id == "planner" and first.security.signature_key_id == "planner-ecdsa"
    assert second.security.agent_id == "n0" and second.security.signature is None


async def test_agent_context_needs_a_secured_node() -> None:
    async with px.open_node("plain") as node:
        with pytest.raises(px.ConfigurationError):
            async with node.agent("x", security=node_context("x")):
                pass  # pragma: no cover


async def test_local_delivery_is_not_secured_and_plain_nodes_have_no_gate() -> None:
    async with secure_cluster(1, lambda n: node_context(n)) as (a,):
        async with a.agent("local") as local:
            await a.send("local", 1)
            assert (await local.receive()).security is None
    async with px.open_node("plain") as plain:
        assert plain.security is None


async def test_types_outside_the_policy_use_the_batched_path() -> None:
    policy = sec.SecurityPolicy(types={"phoenix.agent.secret.send": sec.ENCRYPT}, default=sec.NONE)
    async with secure_cluster(2, lambda n: node_context(n, policy)) as (a, b):
        async with b.agent("sink") as sink:
            await a.wait_for_agent("sink", timeout=5)
            await a.send("sink", "plain")
            await a.send("sink", "hidden", type="phoenix.agent.secret.send")
            plain, hidden = await sink.receive(), await sink.receive()
    assert plain.security is None and type(plain).__name__ == "WireMessage"
    assert hidden.data == "hidden" and hidden.security.encryption_alg == "aes-256-gcm"
    assert a.security.stats["secured"] == 1


async def test_sender_without_an_active_key_gets_the_error() -> None:
    yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    expired = sec.KeyRing([sec.SymmetricKey("k1", K1.secret, expires_at=yesterday)])
    async with secure_cluster(2, lambda n: node_context(n, ring=expired if n == "n0" else None)) as (a, b):
        async with b.agent("sink"):
            await a.wait_for_agent("sink", timeout=5)
            with pytest.raises(sec.NoActiveKey):
                await a.send("sink", 1)


# -- refused input: nothing reaches the agent ------------------------------------------------------------


def _good(**options) -> Message:
    return message(subject="sink", **options)


def _secure(m: Message, protection: sec.Protection = sec.AUTHENTICATE, **options) -> Message:
    ctx = sec.SecurityContext(
        options.pop("agent", "planner"),
        options.pop("ring", sec.KeyRing([K1])),
        node_trust(),
        sec.SecurityPolicy(default=protection),
        sec.KeyRing([options.pop("signer", PLANNER_SIGNER)]),
        clock=Clock(options.pop("at", T0)),
    )
    return sec.secure_message(m, ctx)


def _flip_ciphertext(m: Message) -> Message:
    return m.evolve(data=bytes([m.data[0] ^ 1]) + m.data[1:])


BAD_INPUT: dict[str, tuple[Callable[[], Message], type[sec.MessageSecurityError]]] = {
    "tampered payload": (lambda: _secure(_good()).evolve(data={"forged": True}), sec.AuthenticationFailed),
    **{
        f"tampered {name}": (lambda f=f: f(_secure(_good())), sec.AuthenticationFailed)
        for name, f in TAMPERED_ATTRIBUTES.items()
        if name != "subject"  # send_message sets the subject to the target: tampered below
    },
    "tampered subject": (lambda: _secure(message(subject="someone-else")), sec.AuthenticationFailed),
    **{
        f"tampered header {name}": (lambda f=f: f(_secure(_good(), ring=sec.KeyRing([K1, K2]))), sec.AuthenticationFailed)
        for name, f in TAMPERED_HEADER.items()
        if name != "key id"
    },
    "wrong key": (lambda: _secure(_good(), ring=sec.KeyRing([sec.SymmetricKey("k1", b"\xee" * 32)])), sec.AuthenticationFailed),
    "unknown key id": (lambda: _secure(_good(), ring=sec.KeyRing([K2])), sec.UnknownKey),
    "expired key": (
        lambda: _secure(_good(), ring=sec.KeyRing([sec.SymmetricKey("k0", K1.secret, expires_at=T0 + dt.timedelta(seconds=1))])),
        sec.ExpiredKey,
    ),
    "unknown agent": (lambda: _secure(_good(), agent="mallory"), sec.UnknownAgent),
    "untrusted signer": (lambda: _secure(_good(), sec.SIGN, signer=sec.SigningKey.generate("rogue")), sec.UntrustedSigner),
    "signer of another agent": (lambda: _secure(_good(), sec.SIGN, signer=OTHER_SIGNER), sec.UntrustedSigner),
    "forged signature": (
        lambda: with_security(s := _secure(_good(), sec.SIGN), signature=bytes(len(s.security.signature))),
        sec.BadSignature,
    ),
    "truncated ciphertext": (lambda: (s := _secure(_good(), sec.ENCRYPT)).evolve(data=s.data[:-4]), sec.DecryptionFailed),
    "modified ciphertext": (lambda: _flip_ciphertext(_secure(_good(), sec.ENCRYPT)), sec.DecryptionFailed),
    "timestamp out of window": (lambda: _secure(_good(), at=T0 - dt.timedelta(minutes=10)), sec.TimestampOutOfWindow),
    **{f"malformed: {name}": (lambda f=f: f(_secure(_good())), sec.MalformedSecurity) for name, f in MALFORMED.items()},
    "not authenticated": (lambda: _good(), sec.PolicyViolation),
}


def _receiver_context(node_id: str) -> sec.SecurityContext:
    ring = sec.KeyRing([K1, sec.SymmetricKey("k0", K1.secret, expires_at=T0 + dt.timedelta(seconds=1))])
    return node_context(node_id, ring=ring, clock=Clock(T0 + dt.timedelta(seconds=2)))


@pytest.mark.parametrize("case", BAD_INPUT)
async def test_bad_input_is_refused_before_any_agent_sees_it(case: str) -> None:
    build, error = BAD_INPUT[case]
    # n0 is the attacker: no security of its own, so what it sends goes out exactly as built.
    async with secure_cluster(2, lambda n: None if n == "n0" else _receiver_context(n)) as (attacker, target):
        async with target.agent("sink") as sink, target.security.watch() as events:
            await attacker.wait_for_agent("sink", timeout=5)
            bad = build()
            await attacker.send_message("sink", bad)
            marker = _secure(_good(id="marker"))
            await attacker.send_message("sink", marker)
            first = await sink.receive()
            event = events.receive_nowait()
    assert first.id == "marker"  # the bad message never reached the agent (same connection, FIFO)
    assert target.stats["security_rejected"] == 1
    assert target.security.stats[error.__name__] == 1 and target.security.stats["rejected"] == 1
    assert event.type == sec.REJECTION_EVENT_TYPE and event.source == "phoenix://n1"
    assert event.data["check"] == error.__name__ and event.data["peer"] == "n0"
    assert event.data["message_id"] == bad.id


async def test_replayed_message_is_refused() -> None:
    async with secure_cluster(2, lambda n: None if n == "n0" else _receiver_context(n)) as (attacker, target):
        async with target.agent("sink") as sink:
            await attacker.wait_for_agent("sink", timeout=5)
            original = _secure(_good())
            await attacker.send_message("sink", original)
            await attacker.send_message("sink", original)
            await attacker.send_message("sink", _secure(_good(id="marker")))
            assert (await sink.receive()).id == original.id
            assert (await sink.receive()).id == "marker"
    assert target.security.stats["ReplayDetected"] == 1


async def test_refused_request_fails_at_the_sender_with_message_rejected() -> None:
    intruder_ring = sec.KeyRing([sec.SymmetricKey("k1", b"\xee" * 32)])

    def contexts(node_id: str) -> sec.SecurityContext:
        return node_context(node_id, ring=intruder_ring if node_id == "n0" else None)

    async with secure_cluster(2, contexts) as (a, b):
        async with b.agent("echo") as server, trio.open_nursery() as nursery:
            nursery.start_soon(echo, server)
            await a.wait_for_agent("echo", timeout=5)
            with pytest.raises(sec.MessageRejected) as info:
                await a.request("echo", "let me in", timeout=5)
            result = await a.broadcast(["echo"], "hello", delivery_mode="sync", timeout=5)
            nursery.cancel_scope.cancel()
    error = info.value
    assert isinstance(error, px.SecurityError)
    assert (error.node_id, error.agent_id, error.check) == ("n1", "echo", "AuthenticationFailed")
    assert not result.complete and isinstance(result.failed["echo"], sec.MessageRejected)
    assert b.security.stats["AuthenticationFailed"] == 2


async def test_request_from_an_unprotected_node_fails_clearly() -> None:
    async with secure_cluster(2, lambda n: None if n == "n0" else node_context(n)) as (a, b):
        async with b.agent("echo") as server, trio.open_nursery() as nursery:
            nursery.start_soon(echo, server)
            await a.wait_for_agent("echo", timeout=5)
            with pytest.raises(sec.MessageRejected, match="PolicyViolation"):
                await a.request("echo", 1, timeout=5)
            nursery.cancel_scope.cancel()


async def test_reply_that_fails_verification_fails_the_request() -> None:
    # n1 secures its replies with k2, which n0 does not have.
    def contexts(node_id: str) -> sec.SecurityContext:
        ring = sec.KeyRing([K1])
        if node_id == "n1":
            yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
            ring.rotate(sec.SymmetricKey("k2", K2.secret, activates_at=yesterday), grace=dt.timedelta(days=3650))
        return node_context(node_id, ring=ring)

    async with secure_cluster(2, contexts) as (a, b):
        async with b.agent("echo") as server, trio.open_nursery() as nursery:
            nursery.start_soon(echo, server)
            await a.wait_for_agent("echo", timeout=5)
            with pytest.raises(sec.UnknownKey):
                await a.request("echo", 1, timeout=5)
            nursery.cancel_scope.cancel()


async def test_watchers_that_fall_behind_lose_events_not_the_node() -> None:
    async with secure_cluster(2, lambda n: None if n == "n0" else _receiver_context(n)) as (attacker, target):
        async with target.agent("sink") as sink, target.security.watch(buffer=1) as events:
            await attacker.wait_for_agent("sink", timeout=5)
            for _ in range(5):
                await attacker.send_message("sink", _good())
            await attacker.send_message("sink", _secure(_good(id="marker")))
            assert (await sink.receive()).id == "marker"
            assert events.receive_nowait().data["check"] == "PolicyViolation"
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
    assert target.stats["security_rejected"] == 5


# -- key rotation on a running cluster --------------------------------------------------------------------


async def test_key_rotation_on_a_running_cluster_loses_no_message() -> None:
    """Three nodes send to each other without pause while k2 is distributed, activated and
    k1 retired; every message arrives exactly once and nothing is refused."""
    clock = Clock(T0)
    rings = {node_id: sec.KeyRing([K1]) for node_id in NODE_IDS}
    per_sender = 600
    received: dict[str, dict[str, list[int]]] = {n: defaultdict(list) for n in NODE_IDS}
    keys_seen: dict[str, set[str]] = defaultdict(set)
    progress = trio.lowlevel.ParkingLot()
    sent = dict.fromkeys(NODE_IDS, 0)

    def contexts(node_id: str) -> sec.SecurityContext:
        return node_context(node_id, sec.SecurityPolicy(default=sec.ENCRYPT), ring=rings[node_id], clock=clock)

    async def wait_until(condition: Callable[[], bool]) -> None:
        while not condition():
            await progress.park()

    async with secure_cluster(3, contexts) as nodes:
        async with AsyncExitStack() as stack:
            sinks = [await stack.enter_async_context(node.agent(f"sink-{node.id}", capacity=10_000)) for node in nodes]
            for node in nodes:
                for other in nodes:
                    await node.wait_for_agent(f"sink-{other.id}", timeout=5)

            async def receive(node: px.Node, sink: px.Agent) -> None:
                async for m in sink:
                    received[node.id][m.data["from"]].append(m.data["seq"])
                    keys_seen[m.data["from"]].add(m.security.key_id)
                    progress.unpark_all()

            async def send(node: px.Node) -> None:
                targets = [f"sink-{other}" for other in NODE_IDS if other != node.id]
                for seq in range(per_sender):
                    for target in targets:
                        await node.send(target, {"from": node.id, "seq": seq})
                    sent[node.id] = seq + 1
                    progress.unpark_all()
                    if seq % 8 == 0:
                        await trio.lowlevel.checkpoint()  # let the controller and the readers in

            def delivered_up_to(marks: dict[str, int]) -> bool:
                return all(
                    len(received[r][s]) >= marks[s] for r in NODE_IDS for s in NODE_IDS if r != s
                )

            async with trio.open_nursery() as nursery:
                for node, sink in zip(nodes, sinks):
                    nursery.start_soon(receive, node, sink)
                async with trio.open_nursery() as senders:
                    for node in nodes:
                        senders.start_soon(send, node)
                    def sent_at_least(count: int) -> Callable[[], bool]:
                        return lambda: min(sent.values()) >= min(count, per_sender)

                    await wait_until(sent_at_least(100))
                    # distribute k2 node by node while traffic flows: it activates in 60 s and
                    # k1 is retired 120 s after that
                    activation = clock.now + dt.timedelta(seconds=60)
                    for node_id in NODE_IDS:
                        rings[node_id].rotate(
                            sec.SymmetricKey("k2", K2.secret, activates_at=activation), grace=dt.timedelta(seconds=120)
                        )
                        await wait_until(sent_at_least(max(sent.values()) + 20))
                    clock.now = activation  # k2 secures from here; k1 messages in flight still verify
                    at_activation = dict(sent)
                    await wait_until(sent_at_least(max(at_activation.values()) + 50))
                    await wait_until(lambda: delivered_up_to(at_activation))  # every k1 message is in
                    clock.now = activation + dt.timedelta(seconds=121)  # k1 has expired
                    assert max(at_activation.values()) < per_sender - 100  # k2 carried real traffic
                received_all = {s: per_sender for s in NODE_IDS}
                await wait_until(lambda: delivered_up_to(received_all))
                nursery.cancel_scope.cancel()
    for receiver in NODE_IDS:
        for sender in NODE_IDS:
            if sender != receiver:
                assert received[receiver][sender] == list(range(per_sender))
    assert all(keys == {"k1", "k2"} for keys in keys_seen.values())
    assert all(node.security.stats["rejected"] == 0 for node in nodes)
    assert all(rings[n].get("k1").expires_at < clock.now for n in NODE_IDS)
    # after the grace period a k1 message is refused
    late = sec.KeyRing([attrs.evolve(K1)])
    stale = sec.secure_message(_good(), node_context("n0", sec.SecurityPolicy(default=sec.ENCRYPT), ring=late, clock=clock))
    with pytest.raises(sec.ExpiredKey):
        sec.verify_message(stale, contexts("n1"))


async def test_verified_reliable_messages_keep_their_stream_positions() -> None:
    # A batch the gate rebuilds (it verified something) still carries the positions of
    # its reliable messages, so they are acknowledged, not resent until they fail.
    policy = sec.SecurityPolicy(default=sec.AUTHENTICATE)
    async with secure_cluster(2, lambda node_id: node_context(node_id, policy)) as (a, b):
        async with b.agent("inbox") as inbox:
            await a.wait_for_agent("inbox", timeout=5)

            async def consume() -> None:
                async for _ in inbox:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                with trio.fail_after(3):  # the first retry would come after 5 s
                    for i in range(3):
                        await a.deliver("inbox", i, delivery="at_least_once")
                nursery.cancel_scope.cancel()
            assert a.stats["retransmitted"] == 0
