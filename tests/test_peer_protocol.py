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


def entries(batch: list[Message]) -> list[tuple[Message, int]]:
    return [(m, 0) for m in batch]


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
    [event] = b.receive_data(a.messages(list(zip(batch, flags))))
    assert isinstance(event, DataBatch)
    assert event.messages == batch and event.flags == flags[: len(batch)]
    # A second batch reuses the templates: it is smaller and still decodes.
    again = a.messages(list(zip(batch, flags)))
    [event] = b.receive_data(again)
    assert event.messages == batch


def test_templates_are_bounded_and_recycled() -> None:
    a, b = pair()
    batch = [Message.new(i, type="phoenix.agent.message", source=f"/agent/{i}") for i in range(MAX_TEMPLATES + 500)]
    received = []
    for start in range(0, len(batch), 700):
        for event in b.receive_data(a.messages(entries(batch[start : start + 700]))):
            received.extend(event.messages)
    assert received == batch
    # And the oldest sources still work after eviction.
    [event] = b.receive_data(a.messages(entries(batch[:3])))
    assert event.messages == batch[:3]


def test_big_batches_are_split_to_fit_the_frame_limit() -> None:
    a = PeerProtocol(Hello("a", 1, "h", 1), max_frame=64 * 1024)
    b = PeerProtocol(Hello("b", 1, "h", 1), max_frame=64 * 1024)
    b.receive_data(a.hello())
    a.receive_data(b.hello())
    batch = [Message.new(b"x" * 3000) for _ in range(100)]
    data = a.messages(entries(batch))
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
    frame = bytearray(a.messages(entries(batch)))
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


# -- batched messages, stamped per frame and decoded lazily --------------------------------------


def stamper_for(node: str):
    from phoenix_trio._node import Node  # noqa: F401 - the stamp layout is the node's
    import datetime as dt

    from phoenix_trio._ids import reserve
    from phoenix_trio._trace import random_bases
    from phoenix_trio._vclock import LocalClock

    clock = LocalClock(node)
    clock.observe(px_clock({"other": 7}))

    def stamp(count: int) -> list:
        ms, first, node_hex = reserve(count)
        others, first_counter = clock.tick_many(count)
        span, trace = random_bases()
        return [ms, first, node_hex, dt.datetime.now(dt.timezone.utc), node, others, first_counter, span, trace.to_bytes(16, "big")]

    return stamp


def px_clock(entries):
    from phoenix_trio import VectorClock

    return VectorClock(entries)


def send_template(**kw):
    from phoenix_trio import DeliveryGuarantee, QoSRequirements, RoutingMetadata
    from phoenix_trio._peer_protocol import SendTemplate

    return SendTemplate("phoenix://a/x", "phoenix.agent.direct.send", "application/json", DeliveryGuarantee(), RoutingMetadata(pattern="point_to_point", target="t", **kw), QoSRequirements())


def test_batched_messages_are_stamped_and_decoded_lazily() -> None:
    import pickle

    import attrs

    from phoenix_trio import TraceContext, validate_message
    from phoenix_trio._wire_message import WireMessage

    a, b = pair()
    t = send_template()
    parent = TraceContext.new()
    batch = [(t, {"i": i}, "t", parent if i % 2 else None, "corr" if i == 3 else None, 0) for i in range(5)]
    [event] = b.receive_data(a.messages(batch, stamper_for("a")))
    got = event.messages
    assert all(isinstance(m, WireMessage) and isinstance(m, Message) for m in got)
    assert [m.data for m in got] == [{"i": i} for i in range(5)]
    ids = [m.id for m in got]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert len({m.time for m in got}) == 1  # one stamp per frame
    assert [m.causality["a"] for m in got] == [1, 2, 3, 4, 5] and all(m.causality["other"] == 7 for m in got)
    assert got[1].trace.trace_id == parent.trace_id and got[1].trace.span_id != parent.span_id
    assert got[0].trace.trace_id != got[2].trace.trace_id  # new traces
    assert len({m.trace.span_id for m in got}) == 5
    assert got[3].correlation_id == "corr" and got[2].correlation_id is None
    assert got[0].source == "phoenix://a/x" and got[0].routing.target == "t"
    for m in got:
        validate_message(m)
        plain = m.materialize()
        assert type(plain) is Message and plain == m and m == plain
        assert pickle.loads(pickle.dumps(m)) == m
        changed = attrs.evolve(m, data="changed")
        assert changed.data == "changed" and changed.id == m.id
        assert m.evolve(subject="other").subject == "other"
    assert repr(got[0]).startswith("Message(id=")
    with pytest.raises(TypeError):
        hash(got[0])


def test_stamps_and_batched_items_are_validated() -> None:
    a, b = pair()
    t = send_template()
    frame = a.messages([(t, 1, "t", None, None, 0)], stamper_for("a"))
    payload = msgpack.unpackb(frame[16:], timestamp=3, strict_map_key=False)
    stamp_item, template_item, message_item = payload[0], payload[1], payload[2]
    assert stamp_item[0] == 5 and template_item[0] == 0 and message_item[0] == 4
    bad_stamps = [
        {1: -1}, {1: 1 << 48}, {2: 1 << 26}, {3: "XYZ"}, {4: "not a time"}, {6: {"a": 1}}, {6: {"x": "y"}},
        {7: 0}, {8: -1}, {9: b"short"},
    ]  # fmt: skip
    for change in bad_stamps:
        fresh_a, fresh_b = pair()
        stamp = list(stamp_item)
        for index, value in change.items():
            stamp[index] = value
        data = core.encode_frame(msgpack.packb([stamp, template_item, message_item], datetime=True), channel=1)
        with pytest.raises(RemoteProtocolError):
            fresh_b.receive_data(data)
    for change in ({4: ["0" * 32, 1, ""]}, {4: ["A" * 32, 1, ""]}, {4: ["a" * 32, 300, ""]}, {4: ["a" * 32, 1, "bad state"]}, {2: ""}, {6: "x"}):
        fresh_a, fresh_b = pair()
        item = list(message_item)
        for index, value in change.items():
            item[index] = value
        data = core.encode_frame(msgpack.packb([stamp_item, template_item, item], datetime=True), channel=1)
        with pytest.raises(RemoteProtocolError):
            fresh_b.receive_data(data)
    # A batched item without a stamp before it is refused.
    fresh_a, fresh_b = pair()
    data = core.encode_frame(msgpack.packb([template_item, message_item], datetime=True), channel=1)
    with pytest.raises(RemoteProtocolError, match="stamp"):
        fresh_b.receive_data(data)


def test_many_acknowledgements_are_split_to_fit_the_receivers_limit() -> None:
    from phoenix_trio._peer_protocol import MAX_LIST, Delivered

    a, b = pair()
    alo = [["agent", 2 * i + 1, 2 * i + 1] for i in range(2 * MAX_LIST + 5)]  # no two consecutive
    eo = [("other", 7)]
    events = b.receive_data(a.delivered(alo, eo))
    assert all(isinstance(e, Delivered) for e in events) and len(events) == 3
    assert [list(ack) for e in events for ack in e.at_least_once] == alo
    assert [ack for e in events for ack in e.exactly_once] == eo
