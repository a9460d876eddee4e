"""Parallel channels: lanes per peer pair, channel choice per message and by size, order, HELLO."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

import phoenix_trio as px
from phoenix_trio import ConfigurationError, RemoteProtocolError
from phoenix_trio._channels import ChannelConfig, configure_channels
from phoenix_trio._peer_protocol import Hello, PeerProtocol


@asynccontextmanager
async def pair(**options):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(px.open_node("a", listen="127.0.0.1:0", **options))
        b = await stack.enter_async_context(px.open_node("b", listen="127.0.0.1:0", seeds=[a.address], **options))
        await a.wait_for_members(1, timeout=10)
        await b.wait_for_members(1, timeout=10)
        yield a, b


def lanes(node: px.Node) -> list[tuple[str, str, int]]:
    return sorted(node._lanes_out)


def test_config_validation() -> None:
    config = configure_channels({"data": 1, "bulk": 3}, default="data", large="bulk", large_threshold=1000)
    assert config.names() == ["control", "data", "bulk"]
    assert config.parallelism("bulk") == 3 and config.parallelism("control") == 1
    assert config.choose(None, b"x" * 1000, False) == "bulk"
    assert config.choose(None, b"x" * 1000, True) == "data"  # reliable streams stay on one channel
    assert config.choose(None, {"big": "x" * 5000}, False) == "data"  # only bytes/str are measured
    assert config.choose("control", b"x" * 5000, False) == "control"
    assert {config.lane("bulk", f"agent-{i}") for i in range(50)} == {0, 1, 2}
    assert config.lane("bulk", "same") == config.lane("bulk", "same")
    for bad in ({"control": 1}, {"Bad Name": 1}, {"x": 0}, {"x": 65}, {"x": True}):
        with pytest.raises(ConfigurationError):
            ChannelConfig(bad)
    with pytest.raises(ConfigurationError):
        ChannelConfig({"x": 1}, default="y")
    with pytest.raises(ConfigurationError):
        configure_channels({"x": 1}, colour="red")
    with pytest.raises(ConfigurationError):
        config.parallelism("nope")


def test_hello_carries_the_channel_and_primary_hello_is_unchanged() -> None:
    primary = Hello("a", 1, "h", 1)
    lane = Hello("a", 1, "h", 1, channel="bulk", lane=2)
    b = PeerProtocol(Hello("b", 2, "h", 2))
    [got] = b.receive_data(PeerProtocol(lane).hello())
    assert (got.channel, got.lane) == ("bulk", 2)
    assert len(PeerProtocol(primary).hello()) < len(PeerProtocol(lane).hello())  # the 9th field only on lanes
    [got] = PeerProtocol(Hello("b", 2, "h", 2)).receive_data(PeerProtocol(primary).hello())
    assert (got.channel, got.lane) == ("control", 0)
    sender = PeerProtocol(primary)
    fields = [1, 1, "phoenix", "a", 1, "h", 1, ["templates"]]
    for extra in ({"channel": "control", "lane": 0}, {"channel": "UPPER", "lane": 0}, {"channel": "x" * 33, "lane": 0},
                  {"channel": "x", "lane": 256}, {"channel": "x"}, ["x", 0]):  # fmt: skip
        with pytest.raises(RemoteProtocolError):
            PeerProtocol(Hello("b", 2, "h", 2)).receive_data(sender._control([*fields, extra]))


async def test_messages_take_their_channel_and_keep_order_per_agent() -> None:
    channels = configure_channels({"bulk": 2}, large="bulk", large_threshold=10_000)
    async with pair(channels=channels) as (a, b):
        async with b.agent("small", capacity=10_000) as small, b.agent("big", capacity=10_000) as big:
            await a.wait_for_agent("big", timeout=5)
            await a.wait_for_agent("small", timeout=5)
            blob = bytes(20_000)
            for i in range(200):
                await a.send("big", blob + i.to_bytes(4, "big"), delivery="at_most_once")
                await a.send("small", i, delivery="at_most_once")
            got_big = [int.from_bytes((await big.receive()).data[-4:], "big") for _ in range(200)]
            got_small = [(await small.receive()).data for _ in range(200)]
            assert got_big == list(range(200)) and got_small == list(range(200))
            lane = ("b", "bulk", ChannelConfig({"bulk": 2}).lane("bulk", "big"))
            assert lanes(a) == [lane]  # only the large messages opened a lane
            stats = a._lanes_out[lane].statistics()
            assert stats["channel"] == "bulk" and stats["messages_sent"] == 200 and stats["outbound"]
            assert stats["frames_written"] >= 200  # the large channel writes one large message at a time
            assert a._connections["b"].statistics()["messages_sent"] >= 200
            assert [k[1:] for k in b._lanes_in] == [lane[1:]]  # b receives on it; a alone sends on it
            # Explicit channels, reliable delivery and requests ride lanes too.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: a.deliver("small", "reliable", channel="bulk", delivery="exactly_once"))
                assert (await small.receive()).data == "reliable"
            assert ("b", "bulk", ChannelConfig({"bulk": 2}).lane("bulk", "small")) in a._lanes_out
            with pytest.raises(ConfigurationError):
                await a.send("small", 1, channel="nope")


def test_channel_by_message_type() -> None:
    config = configure_channels({"bulk": 1, "data": 1}, types={"phoenix.data.file": "bulk", "phoenix.data": "data"})
    assert config.for_type("phoenix.data.file.chunk") == "bulk"  # the longest prefix wins
    assert config.for_type("phoenix.data.stream.chunk") == "data"
    assert config.for_type("phoenix.data.filex.chunk") == "data"  # whole segments only
    assert config.for_type("phoenix.agent.direct.send") is None
    for bad in ({"phoenix.data.": "bulk"}, {"phoenix.data": "nope"}, {"": "bulk"}, {"a..b": "bulk"}, ["phoenix.data"]):
        with pytest.raises(ConfigurationError):
            configure_channels({"bulk": 1}, types=bad)


async def test_messages_of_a_configured_type_take_its_channel() -> None:
    channels = configure_channels({"bulk": 1}, types={"phoenix.data.file": "bulk"})
    async with pair(channels=channels) as (a, b):
        async with b.agent("files", capacity=100) as files:
            await a.wait_for_agent("files", timeout=5)
            await a.send("files", "small but typed", type="phoenix.data.file.chunk", delivery="at_most_once")
            assert (await files.receive()).data == "small but typed"
            assert lanes(a) == [("b", "bulk", 0)]
            await a.send("files", "untyped", delivery="at_most_once")  # the default channel
            assert (await files.receive()).data == "untyped"
            assert a._lanes_out[("b", "bulk", 0)].statistics()["messages_sent"] == 1


async def test_requests_and_replies_on_lanes() -> None:
    channels = configure_channels({"data": 1}, default="data")
    async with pair(channels=channels) as (a, b):
        async with b.agent("echo") as echo:

            async def serve() -> None:
                async for message in echo:
                    await message.reply(message.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await a.wait_for_agent("echo", timeout=5)
                for i in range(20):
                    assert (await a.request("echo", i, timeout=5)).data == i
                assert ("b", "data", 0) in a._lanes_out and ("a", "data", 0) in b._lanes_out  # replies too
                nursery.cancel_scope.cancel()


async def test_lanes_close_with_the_peer_and_reopen() -> None:
    channels = configure_channels({"data": 1}, default="data")
    async with px.open_node("a", listen="127.0.0.1:0", channels=channels, failure_timeout=1.0, heartbeat_interval=0.1) as a:
        async with a.agent("sink") as sink:
            for round_ in range(2):
                async with px.open_node("b", listen="127.0.0.1:0", seeds=[a.address], channels=channels) as b:
                    await b.wait_for_agent("sink", timeout=5)
                    await b.send("sink", round_)
                    assert (await sink.receive()).data == round_
                    assert list(b._lanes_out) == [("a", "data", 0)]
                await a.wait_for(lambda: not a._lanes_in and "b" not in a._connections, timeout=5)


async def test_a_peer_without_lanes_gets_everything_on_the_primary() -> None:
    """A lane that cannot be opened (here: the peer dials out only) leaves everything on the primary, in order."""
    channels = configure_channels({"bulk": 1}, large="bulk", large_threshold=100)
    async with px.open_node("a", listen="127.0.0.1:0", channels=channels) as a:
        async with px.open_node("b", listen=None, seeds=[a.address]) as b:
            await a.wait_for_members(1, timeout=5)
            async with b.agent("sink", capacity=1000) as sink:
                await a.wait_for_agent("sink", timeout=5)
                for i in range(50):
                    await a.send("sink", (b"x" * 200 if i % 2 else b"y") + bytes([i]), delivery="at_most_once")
                got = [(await sink.receive()).data[-1] for _ in range(50)]
                assert got == list(range(50))
                assert not a._lanes_out and a._connections["b"].lanes_refused


def test_overlay_frames_batch_compress_and_refuse_bad_input() -> None:
    from phoenix_trio import core
    from phoenix_trio._peer_protocol import OverlayBatch
    from phoenix_trio.overlay import EagerPush, ForwardJoin, Join, encode

    def overlay_pair(a_features=("lz4", "templates", "overlay"), b_features=("lz4", "templates", "overlay")):
        a = PeerProtocol(Hello("a", 1, "h", 1, features=a_features))
        b = PeerProtocol(Hello("b", 2, "h", 2, features=b_features))
        b.receive_data(a.hello())
        a.receive_data(b.hello())
        return a, b

    a, b = overlay_pair()
    messages = [Join(), ForwardJoin("c", 6), EagerPush(b"m1", "a", 0, b"payload " * 200)]
    frame = a.overlay([encode(m) for m in messages], {"c": ("10.0.0.3", 7003)})
    decoder = core.FrameDecoder()
    [raw] = decoder.feed(frame)
    assert raw.channel == 2 and raw.flags & core.FLAG_BATCH and raw.flags & core.FLAG_COMPRESSED
    assert len(frame) < 800  # the 1,600-byte payload compressed with the rest of the batch
    [event] = b.receive_data(frame)
    assert event == OverlayBatch({"c": ("10.0.0.3", 7003)}, messages)
    # small batches and links without lz4 travel plain
    [raw] = core.FrameDecoder().feed(a.overlay([encode(Join())]))
    assert not raw.flags & core.FLAG_COMPRESSED
    plain_a, plain_b = overlay_pair(a_features=("templates", "overlay"))
    [raw] = core.FrameDecoder().feed(plain_a.overlay([encode(m) for m in messages]))
    assert not raw.flags & core.FLAG_COMPRESSED
    assert plain_b.receive_data(plain_a.overlay([encode(m) for m in messages])) == [OverlayBatch({}, messages)]
    # a full-mesh node and an overlay node refuse each other
    mesh = PeerProtocol(Hello("m", 3, "h", 3))
    with pytest.raises(RemoteProtocolError, match="different topology"):
        mesh.receive_data(a.hello())
    # hostile input: a bad message, a bad address table, an overlay frame to a full-mesh peer
    for body in (
        core.pack_batch([b"\x80", b"\x00\x91\x7f"]),
        core.pack_batch([b"\x81\xa1c\x92\xa1h\xcd\xff\xff\xff"]),
        core.pack_batch([b"\x81\xa3bad id\x92\xa1h\x01"]),
        core.pack_batch([]),
    ):
        _, victim = overlay_pair()
        with pytest.raises(RemoteProtocolError):
            victim.receive_data(core.encode_frame(body, channel=2, flags=core.FLAG_BATCH))
    m1, m2 = PeerProtocol(Hello("a", 1, "h", 1)), PeerProtocol(Hello("b", 2, "h", 2))
    m2.receive_data(m1.hello())
    with pytest.raises(RemoteProtocolError):
        m2.receive_data(core.encode_frame(core.pack_batch([b"\x80"]), channel=2, flags=core.FLAG_BATCH))
