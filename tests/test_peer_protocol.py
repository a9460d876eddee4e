"""The node-to-node protocol, sans-IO: handshake, control, compact batches, hostile input."""

from __future__ import annotations

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import Message, RemoteProtocolError, core
from phoenix_trio._inbox import Inbox
from phoenix_trio._peer_protocol import (
    MAX_TEMPLATES,
    Acks,
    AgentUpdate,
    Agents,
    DataBatch,
    Goodbye,
    Heartbeat,
    Hello,
    Members,
    PeerProtocol,
    RequestFailed,
    State,
)

from .strategies import messages


def pair(**kw) -> tuple[PeerProtocol, PeerProtocol]:
    a = PeerProtocol(Hello("a", 1, "127.0.0.1", 7001, **kw))
    b = PeerProtocol(Hello("b", 2, "127.0.0.1", 7002))
    [hello_b] = a.receive_data(b.hello())
    [hello_a] = b.receive_data(a.hello())
    assert hello_a.node_id == "a" and hello_b.node_id == "b"
    return a, b


def test_handshake_and_control_messages() -> None:
    a, b = pair()
    assert a.state is State.OPEN and a.peer.port == 7002
    data = b"".join(
        [
            a.heartbeat(),
            a.members([("a", "127.0.0.1", 7001, 1), ("c", "10.0.0.3", 7003, 4)]),
            a.agents(True, [AgentUpdate("x", "g", True)]),
            a.request_failed("corr", "agent_not_found", "x"),
            a.acks([("corr", "x")]),
            a.goodbye("bye"),
        ]
    )
    events = b.receive_data(data)
    assert events == [
        Heartbeat(),
        Members([("a", "127.0.0.1", 7001, 1), ("c", "10.0.0.3", 7003, 4)]),
        Agents(True, [AgentUpdate("x", "g", True)]),
        RequestFailed("corr", "agent_not_found", "x"),
        Acks([("corr", "x")]),
        Goodbye("bye"),
    ]


@settings(max_examples=150)
@given(st.lists(messages(), min_size=1, max_size=20), st.lists(st.integers(0, 3), min_size=20, max_size=20))
def test_messages_round_trip_through_compact_batches(batch: list[Message], flags: list[int]) -> None:
    a, b = pair()
    [event] = b.receive_data(a.messages(batch, flags[: len(batch)]))
    assert isinstance(event, DataBatch)
    assert event.messages == batch and event.flags == flags[: len(batch)]
    # A second batch reuses the templates: it is smaller and still decodes.
    again = a.messages(batch, flags[: len(batch)])
    [event] = b.receive_data(again)
    assert event.messages == batch


def test_templates_are_bounded_and_recycled() -> None:
    a, b = pair()
    batch = [Message.new(i, type="phoenix.agent.message", source=f"/agent/{i}") for i in range(MAX_TEMPLATES + 500)]
    received = []
    for start in range(0, len(batch), 700):
        for event in b.receive_data(a.messages(batch[start : start + 700])):
            received.extend(event.messages)
    assert received == batch
    # And the oldest sources still work after eviction.
    [event] = b.receive_data(a.messages(batch[:3]))
    assert event.messages == batch[:3]


def test_big_batches_are_split_to_fit_the_frame_limit() -> None:
    a = PeerProtocol(Hello("a", 1, "h", 1), max_frame=64 * 1024)
    b = PeerProtocol(Hello("b", 1, "h", 1), max_frame=64 * 1024)
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    batch = [Message.new(b"x" * 3000) for _ in range(100)]
    data = a.messages(batch)
    events = b.receive_data(data)
    assert [m for e in events for m in e.messages] == batch and len(events) > 4


@pytest.mark.parametrize(
    ("local", "remote", "fragment"),
    [
        ({}, {"version": 2}, "protocol version"),
        ({}, {"cluster": "other"}, "cluster"),
        ({}, {"node_id": "a"}, "own id"),
        ({}, {"node_id": "bad id!"}, "invalid node id"),
    ],
)
def test_bad_hellos_are_refused(local, remote, fragment) -> None:
    a = PeerProtocol(Hello("a", 1, "h", 1, **local))
    fields = dict(node_id="b", incarnation=1, host="h", port=2)
    fields.update(remote)
    b = PeerProtocol(Hello(**fields))
    with pytest.raises(RemoteProtocolError, match=fragment):
        a.receive_data(b.hello())
    assert a.state is State.CLOSED
    with pytest.raises(RemoteProtocolError):
        a.receive_data(b.heartbeat())


def test_nothing_but_hello_before_the_handshake() -> None:
    a = PeerProtocol(Hello("a", 1, "h", 1))
    b = PeerProtocol(Hello("b", 1, "h", 1))
    with pytest.raises(RemoteProtocolError, match="first control message"):
        a.receive_data(b.heartbeat())


def test_references_to_undefined_templates_are_protocol_errors() -> None:
    a, b = pair()
    item = [1, 17, "id", "agent", b"x", None, None, None, None, 0]
    frame = core.encode_frame(msgpack.packb([item]), channel=1)
    with pytest.raises(RemoteProtocolError, match="undefined template"):
        b.receive_data(frame)


def frames_of(payloads: list[bytes], channel: int, flags: int) -> bytes:
    return b"".join(core.encode_frame(p, channel=channel, flags=flags) for p in payloads)


@settings(max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda ps: frames_of(ps, 1, 0), st.lists(st.binary(max_size=80), max_size=3)),
        st.builds(lambda ps: frames_of(ps, 0, core.FLAG_CONTROL), st.lists(st.binary(max_size=80), max_size=3)),
        st.builds(
            lambda items: frames_of([msgpack.packb(items)], 1, 0),
            st.lists(st.lists(st.one_of(st.none(), st.integers(-5, 5000), st.text(max_size=6), st.binary(max_size=6)), max_size=11), max_size=4),
        ),
        st.builds(
            lambda items: frames_of([msgpack.packb(items)], 0, core.FLAG_CONTROL),
            st.lists(st.one_of(st.integers(0, 9), st.text(max_size=4), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)), max_size=8),
        ),
    )
)
def test_hostile_bytes_only_ever_raise_remote_protocol_error(data: bytes) -> None:
    a, b = pair()
    try:
        events = b.receive_data(data)
    except RemoteProtocolError:
        assert b.state is State.CLOSED
        return
    for event in events:
        if isinstance(event, DataBatch):
            for message in event.messages:
                assert isinstance(message, Message)


@settings(max_examples=200)
@given(st.lists(messages(), min_size=1, max_size=5), st.data())
def test_corrupted_valid_batches_are_caught(batch: list[Message], data: st.DataObject) -> None:
    a = PeerProtocol(Hello("a", 1, "h", 1), max_frame=8192)
    b = PeerProtocol(Hello("b", 1, "h", 2), max_frame=8192)
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    frame = bytearray(a.messages(batch))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    # A corrupted length field makes the decoder wait for a longer frame; the traffic that
    # follows completes it and the CRC (or the size limit) catches it. Any other change is
    # caught at once.
    followers = a.heartbeat() * 600
    with pytest.raises(RemoteProtocolError):
        b.receive_data(bytes(frame) + followers)


# -- inbox -------------------------------------------------------------------------------------------


async def test_inbox_batches_backpressure_and_close() -> None:
    inbox = Inbox("x", capacity=4)
    msgs = [Message.new(i) for i in range(10)]
    assert inbox.put_nowait_many(msgs[:6]) == 4
    got = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def producer() -> None:
            assert await inbox.put_many(msgs[4:])
            done.set()

        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and inbox.statistics().producers_waiting == 1
        while len(got) < 10:
            got.append((await inbox.receive()).data)
        await done.wait()
    assert got == list(range(10))
    stats = inbox.statistics()
    assert (stats.received, stats.delivered, stats.queued) == (10, 10, 0)
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()
    inbox.put_nowait_many(msgs[:2])
    inbox.close()
    assert inbox.statistics().dropped == 2
    assert [m async for m in inbox] == []


async def test_inbox_receive_is_a_cancellation_point_and_sets_the_trace() -> None:
    from phoenix_trio import current_trace

    inbox = Inbox("x", capacity=100)
    m = Message.new("traced")
    inbox.put_nowait_many([m] * 100)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await inbox.receive()
    got = await inbox.receive()
    assert current_trace() == got.trace
