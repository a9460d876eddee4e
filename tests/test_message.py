"""The universal message, its taxonomy, vector clocks and trace context."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import phoenix_trio as px
from phoenix_trio import (
    Causality,
    DecodeError,
    DeliveryGuarantee,
    LocalClock,
    Message,
    TraceContext,
    ValidationError,
    VectorClock,
    message_characteristics,
)
from phoenix_trio._ids import id_time_ms, new_id
from phoenix_trio._message import EXTENSION_ATTRIBUTES, reset_local_node, set_local_node

from .strategies import clocks, node_ids

# -- taxonomy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (px.CONTROL_PLANE, ("high", "strong", "total", "exactly_once")),
        (px.DATA_PLANE, ("normal", "causal", "causal", "at_least_once")),
        (px.OBSERVABILITY, ("low", "eventual", "none", "at_most_once")),
    ],
)
def test_characteristics_follow_the_design_table(types, expected) -> None:
    assert len(types) >= 5
    for name in types:
        c = message_characteristics(name)
        assert (c.priority, c.consistency, c.ordering, c.delivery) == expected
        assert px.is_valid_type(name)


def test_design_lists_are_complete() -> None:
    assert "phoenix.cluster.node.join" in px.CONTROL_PLANE and len(px.CONTROL_PLANE) == 7
    assert "phoenix.agent.heartbeat.ping" in px.DATA_PLANE and len(px.DATA_PLANE) == 6
    assert "phoenix.performance.measurement" in px.OBSERVABILITY and len(px.OBSERVABILITY) == 5


def test_unknown_types_get_documented_defaults() -> None:
    c = message_characteristics("phoenix.agent.direct.send")
    assert c == px.DEFAULT_CHARACTERISTICS
    assert (c.priority, c.consistency, c.ordering, c.delivery) == ("normal", "eventual", "none", "at_least_once")
    assert px.message_class("phoenix.agent.direct.send") == "other"
    assert px.message_class("phoenix.telemetry.log.entry") == "observability"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "non-empty"),
        ("com.example.event", "start with 'phoenix.'"),
        ("phoenix.agent", "2 to 4 segments"),
        ("phoenix.a.b.c.d.e", "2 to 4 segments"),
        ("phoenix.Agent.message", "lowercase"),
        ("phoenix.agent..send", "lowercase"),
        ("phoenix.agent.1x", "start with a letter"),
    ],
)
def test_invalid_types_say_why(name: str, fragment: str) -> None:
    assert not px.is_valid_type(name)
    with pytest.raises(ValidationError, match=fragment):
        px.validate_type(name)


# -- ids -----------------------------------------------------------------------------------------


def test_ids_are_unique_time_sortable_uuid7() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    now_ms = dt.datetime.now(dt.timezone.utc).timestamp() * 1000
    assert abs(id_time_ms(ids[-1]) - now_ms) < 5000


# -- Message.new --------------------------------------------------------------------------------


def test_new_fills_the_design_defaults() -> None:
    m = Message.new({"task": 1})
    assert m.specversion == "1.0"
    assert m.type == "phoenix.agent.message"
    assert m.source == f"phoenix://{px.local_node_id()}"
    assert m.time.tzinfo is not None and abs((dt.datetime.now(dt.timezone.utc) - m.time).total_seconds()) < 5
    assert m.trace is not None and m.causality is not None
    assert m.causality[px.local_node_id()] >= 1
    assert m.delivery == DeliveryGuarantee()  # unknown type: the design's defaults
    assert (m.delivery.delivery_mode, m.delivery.timeout, m.delivery.retry_strategy, m.delivery.max_retries) == (
        "at_least_once",
        5000,
        "exponential_backoff",
        3,
    )
    assert m.delivery.ordering_requirement == "none"
    assert m.delivery.acknowledgment_required is True and m.delivery.duplicate_detection is False
    assert m.routing.priority == "normal" and m.qos.consistency == "eventual"
    assert m.datacontenttype == "application/json"
    assert Message.new(b"raw").datacontenttype == "application/octet-stream"


def test_new_takes_characteristics_from_the_type() -> None:
    m = Message.new(None, type="phoenix.cluster.node.join")
    assert m.delivery.delivery_mode == "exactly_once" and m.delivery.ordering_requirement == "total"
    assert m.routing.priority == "high" and m.qos.consistency == "strong"
    obs = Message.new(None, type="phoenix.telemetry.metric.update")
    assert obs.delivery.delivery_mode == "at_most_once" and obs.routing.priority == "low"


def test_new_routing_options_and_explicit_delivery() -> None:
    m = Message.new(
        "x",
        type="phoenix.agent.direct.send",
        target="planner",
        pattern="point_to_point",
        priority="critical",
        correlation_id="c-1",
        delivery="at_most_once",
    )
    assert m.routing.target == "planner" and m.routing.pattern == "point_to_point"
    assert m.routing.priority == "critical" and m.correlation_id == "c-1"
    assert m.delivery.delivery_mode == "at_most_once"
    with pytest.raises(ValidationError, match="unknown Message.new option"):
        Message.new("x", colour="red")
    with pytest.raises(ValidationError, match="priority must be one of"):
        Message.new("x", priority="urgent")


def test_each_message_ticks_the_local_clock() -> None:
    a, b = Message.new(1), Message.new(2)
    assert a.causality.compare(b.causality) is Causality.BEFORE


def test_ambient_node_sets_source_and_clock() -> None:
    tokens = set_local_node("node-7", LocalClock("node-7"))
    try:
        m = Message.new("hi")
        assert m.source == "phoenix://node-7" and m.causality == VectorClock({"node-7": 1})
    finally:
        reset_local_node(tokens)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"id": ""}, "id is required"),
        ({"source": "has space"}, "URI-reference"),
        ({"specversion": "1.0.2"}, "specversion"),
        ({"dataschema": "relative/path"}, "absolute URI"),
        ({"time": dt.datetime(2024, 1, 1)}, "timezone-aware"),
        ({"datacontenttype": "not a media type"}, "media type"),
        ({"subject": ""}, "subject"),
        ({"extensions": {"Bad-Name": 1}}, "1-20 lowercase"),
        ({"extensions": {"averyveryverylongextname": 1}}, "1-20 lowercase"),
        ({"extensions": {"traceparent": "x"}}, "reserved"),
        ({"extensions": {"big": 2**40}}, "32-bit"),
        ({"extensions": {"fl": 1.5}}, "not a CloudEvents type"),
        ({"delivery": "at_least_once"}, "DeliveryGuarantee"),
    ],
)
def test_validation_errors_are_clear(changes, fragment) -> None:
    good = Message.new("x")
    with pytest.raises(ValidationError, match=fragment):
        px.validate_message(good.evolve(**changes))


def test_extension_names_map_to_valid_cloudevents_attributes() -> None:
    for name in EXTENSION_ATTRIBUTES:
        assert name.isalnum() and name.islower() and len(name) <= 20


async def test_reply_only_for_requests() -> None:
    with pytest.raises(px.LocalProtocolError):
        await Message.new("x").reply("y")


def test_messages_compare_by_value_and_are_not_hashable() -> None:
    m = Message.new({"a": 1})
    assert m == m.evolve() and m != m.evolve(id="other")
    with pytest.raises(TypeError):
        hash(m)


# -- vector clocks ------------------------------------------------------------------------------


def test_vector_clock_operations() -> None:
    a = VectorClock().tick("a")
    b = a.tick("b")
    c = a.tick("c")
    assert a.compare(b) is Causality.BEFORE and b.compare(a) is Causality.AFTER
    assert b.compare(c) is Causality.CONCURRENT and b.concurrent_with(c)
    assert b.compare(VectorClock({"a": 1, "b": 1})) is Causality.EQUAL
    merged = b.merge(c)
    assert merged == VectorClock({"a": 1, "b": 1, "c": 1})
    assert b.happened_before(merged) and c.happened_before(merged)
    assert merged.retire(["c"]) == b
    assert VectorClock({"a": 5, "b": 1, "c": 3}).truncate(2) == VectorClock({"a": 5, "c": 3})
    assert VectorClock({"a": 5, "b": 1, "c": 3}).truncate(2, keep="b") == VectorClock({"a": 5, "b": 1})


@given(clocks, clocks, clocks)
def test_vector_clock_algebra(x: VectorClock, y: VectorClock, z: VectorClock) -> None:
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(x) == x
    assert x.compare(x.merge(y)) in (Causality.BEFORE, Causality.EQUAL)
    inverse = {Causality.BEFORE: Causality.AFTER, Causality.AFTER: Causality.BEFORE}
    assert y.compare(x) is inverse.get(x.compare(y), x.compare(y))
    assert VectorClock.decode(x.encode()) == x


@given(st.text(max_size=60))
def test_vector_clock_decode_is_safe(text: str) -> None:
    try:
        clock = VectorClock.decode(text)
    except DecodeError:
        return
    assert VectorClock.decode(clock.encode()) == clock


def test_local_clock_bounds_its_size() -> None:
    clock = LocalClock("me", max_entries=4)
    for i in range(10):
        clock.observe(VectorClock({f"n{i}": i + 1}))
        stamped = clock.tick()
        assert len(stamped) <= 4 and stamped["me"] == i + 1
    clock.retire(["n9"])
    assert clock.current["n9"] == 0


@given(node_ids)
def test_clock_node_ids(node: str) -> None:
    assert VectorClock().tick(node)[node] == 1


# -- trace context ------------------------------------------------------------------------------


def test_traceparent_round_trip_and_children() -> None:
    root = TraceContext.new()
    parsed = TraceContext.parse(root.traceparent)
    assert parsed == root and root.sampled
    child = root.child()
    assert child.trace_id == root.trace_id and child.span_id != root.span_id
    spec_example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = TraceContext.parse(spec_example, "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
    assert ctx.traceparent == spec_example
    assert ctx.tracestate == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert ctx.to_headers() == {"traceparent": spec_example, "tracestate": ctx.tracestate}
    future = TraceContext.parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever")
    assert future.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ],
)
def test_malformed_traceparent_is_rejected(bad: str) -> None:
    with pytest.raises(DecodeError):
        TraceContext.parse(bad)


@pytest.mark.parametrize("bad", ["novalue", "Key=1", "a=1,a=2", "a=b=c", ",".join(f"k{i}=v" for i in range(33)), "a=\x01"])
def test_malformed_tracestate_is_rejected(bad: str) -> None:
    with pytest.raises(DecodeError):
        TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", bad)


async def test_trace_context_follows_each_task() -> None:
    root = TraceContext.new()
    seen: dict[str, str] = {}

    async def handler(name: str, ctx: TraceContext) -> None:
        with px.use_trace(ctx):
            await trio.lowlevel.checkpoint()
            seen[name] = Message.new(name).trace.trace_id

    other = TraceContext.new()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler, "a", root)
        nursery.start_soon(handler, "b", other)
    assert seen == {"a": root.trace_id, "b": other.trace_id}
    assert px.current_trace() is None
    with px.use_trace(root):
        m = Message.new("x")
        assert m.trace.trace_id == root.trace_id and m.trace.span_id != root.span_id


def test_an_empty_security_record_is_no_record() -> None:
    # The flat CloudEvents attribute view cannot tell them apart, so Message does not either.
    m = Message.new("x", security=px.SecurityInfo())
    assert m.security is None and m == Message.new("x", id=m.id, time=m.time, trace=m.trace, causality=m.causality)
    assert Message.new("x", security=px.SecurityInfo(agent_id="a")).security.agent_id == "a"
