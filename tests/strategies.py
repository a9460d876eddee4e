"""Hypothesis strategies for phoenix_trio data, shared by the codec and runtime tests."""

from __future__ import annotations

import datetime as dt
import string

from hypothesis import strategies as st

from phoenix_trio import (
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
    SecurityInfo,
    TraceContext,
    VectorClock,
)
from phoenix_trio._message import FANOUT_STRATEGIES, PATTERNS, RESERVED_ATTRIBUTES, RETRY_STRATEGIES, ROUTE_ORDERINGS
from phoenix_trio._taxonomy import CONSISTENCIES, DELIVERY_MODES, ORDERINGS, PRIORITIES

UTC = dt.timezone.utc

short_text = st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)
node_ids = st.text(alphabet=string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=12)
uri_refs = st.one_of(
    st.builds(lambda n, a: f"phoenix://{n}/{a}", node_ids, node_ids),
    st.sampled_from(["/cloudevents/spec/pull/123", "urn:event:from:myapi/resource/123", "https://example.com/x?y=1#z"]),
)
times = st.datetimes(
    min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
)
hex_ids = lambda n: st.text(alphabet="0123456789abcdef", min_size=n, max_size=n).filter(lambda s: s.strip("0"))  # noqa: E731

traces = st.builds(
    TraceContext,
    hex_ids(32),
    hex_ids(16),
    st.integers(0, 255),
    st.sampled_from(["", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]),
)
clocks = st.builds(VectorClock, st.dictionaries(node_ids, st.integers(1, 2**40), max_size=5))
deliveries = st.builds(
    DeliveryGuarantee,
    st.sampled_from(DELIVERY_MODES),
    st.integers(0, 2**31 - 1),
    st.sampled_from(RETRY_STRATEGIES),
    st.integers(0, 100),
    st.sampled_from(ORDERINGS),
    st.booleans(),
    st.booleans(),
)
optional_text = st.none() | short_text
routings = st.builds(
    RoutingMetadata,
    st.none() | st.sampled_from(PATTERNS),
    optional_text,
    optional_text,
    st.sampled_from(PRIORITIES),
    optional_text,
    st.sampled_from(ROUTE_ORDERINGS),
    st.none() | st.sampled_from(FANOUT_STRATEGIES),
    optional_text,
)
small_bytes = st.none() | st.binary(min_size=1, max_size=64)
securities = st.builds(
    SecurityInfo,
    optional_text,
    optional_text,
    st.none() | times,
    small_bytes,
    small_bytes,
    small_bytes,
    optional_text,
    optional_text,
    optional_text,
    optional_text,
    small_bytes,
)
qoses = st.builds(
    QoSRequirements,
    st.sampled_from(PRIORITIES),
    st.sampled_from(CONSISTENCIES),
    st.none() | st.integers(0, 2**31 - 1),
    st.none() | st.integers(0, 2**31 - 1),
)
extension_names = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=20).filter(
    lambda n: n not in RESERVED_ATTRIBUTES
)
extension_values = st.one_of(short_text, st.booleans(), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=20), times)
# What the CloudEvents JSON format can type without a schema: foreign Binary and Timestamp
# extension values travel as strings there and come back as str.
json_extension_values = st.one_of(short_text, st.booleans(), st.integers(-(2**31), 2**31 - 1))

# Data every format can carry: JSON values (ints within 53 bits so JSON readers agree).
json_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
binary_data = st.binary(max_size=300)


def messages(
    data=json_data | binary_data, *, extensions: bool = True, extension_values=extension_values
) -> st.SearchStrategy[Message]:
    """Arbitrary valid Messages (every field exercised); ``extension_values`` types foreign extensions."""
    return st.builds(
        lambda data, **kw: Message(data=data, datacontenttype=("application/octet-stream" if isinstance(data, bytes) else "application/json"), **kw),
        data,
        id=short_text,
        source=uri_refs,
        type=st.sampled_from(["phoenix.agent.message", "phoenix.agent.action.execute", "com.example.someevent"]),
        subject=st.none() | short_text,
        time=st.none() | times,
        dataschema=st.none() | st.just("https://example.com/schema/v1"),
        trace=st.none() | traces,
        causality=st.none() | clocks,
        delivery=st.none() | deliveries,
        routing=st.none() | routings,
        security=st.none() | securities,
        qos=st.none() | qoses,
        extensions=st.dictionaries(extension_names, extension_values, max_size=3) if extensions else st.just({}),
    )
