"""The Erlang External Term Format, against a real ``erl`` and against hostile bytes.

One ``erl -noshell`` runs per module and reads commands on stdin (tab-separated, one
per line): ``eval PATH EXPR`` binds ``T`` to ``binary_to_term`` of the file at PATH and
answers ``~w`` of EXPR; ``write PATH OPTS EXPR`` writes ``term_to_binary(EXPR, OPTS)``.
The expected Erlang terms are written here as Erlang source by :func:`erl_literal`,
independently of the encoder under test, and compared with ``=:=`` there.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import select
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_trio import DecodeError, EncodeError, Message, SecurityInfo, validate_message
from phoenix_trio import serialization as ser
from phoenix_trio.serialization import Atom, ETFLimits, binary_to_term, term_to_binary
from phoenix_trio.serialization import _etf

from .strategies import messages

UTC = dt.timezone.utc

# -- Python values with an Erlang form, and how they must look there -----------------------------

atoms = st.text(max_size=20).filter(lambda s: s not in ("nil", "true", "false", "$bytes")).map(Atom)
aware_times = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))])
)
etf_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 255, 256, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**2100, -(2**2100)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | atoms
    | aware_times
)
etf_keys = st.none() | st.booleans() | st.integers(-1000, 2**40) | st.text(max_size=8) | st.binary(max_size=8) | atoms
etf_data = st.recursive(
    etf_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(etf_keys, children, max_size=4),
    max_leaves=20,
)


def erl_binary(raw: bytes) -> str:
    return "<<" + ",".join(map(str, raw)) + ">>"


def erl_literal(value: Any) -> str:
    """Erlang source for the term ``value`` maps to (the documented mapping, written out)."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Atom):
        return f"binary_to_atom({erl_binary(value.encode())}, utf8)"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%.17e" % value
    if isinstance(value, str):
        return erl_binary(value.encode())
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return erl_binary(value)
        return "{'$bytes'," + erl_binary(value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(erl_literal, value)) + "]"
    if isinstance(value, tuple):
        return "{" + ",".join(map(erl_literal, value)) + "}"
    if isinstance(value, dict):
        return "#{" + ",".join(f"{erl_literal(k)} => {erl_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, dt.datetime):
        u = value.astimezone(UTC)
        return (
            "#{'__struct__' => 'Elixir.DateTime', calendar => 'Elixir.Calendar.ISO', "
            f"year => {u.year}, month => {u.month}, day => {u.day}, hour => {u.hour}, minute => {u.minute}, "
            f"second => {u.second}, microsecond => {{{u.microsecond}, 6}}, time_zone => <<\"Etc/UTC\">>, "
            "zone_abbr => <<\"UTC\">>, utc_offset => 0, std_offset => 0}"
        )
    raise TypeError(type(value))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (so True is not 1 and b'a' is not 'a')."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            match = [k for k in b if same(k, key) or (k == key and type(k) is type(key))]
            if len(match) != 1 or not same(value, b[match[0]]):
                return False
        return True
    return a == b


# -- the erl peer ------------------------------------------------------------------------------------

ERL_LOOP = r"""
Eval = fun(Expr, Bs) ->
    {ok, Toks, _} = erl_scan:string(Expr ++ "."),
    {ok, Es} = erl_parse:parse_exprs(Toks),
    {value, V, _} = erl_eval:exprs(Es, Bs),
    V
end,
Loop = fun Loop() ->
    case io:get_line("") of
        eof -> halt(0);
        Line ->
            [Cmd | Args] = string:split(string:trim(Line, trailing, "\n"), "\t", all),
            R = try
                case Cmd of
                    "eval" ->
                        [Path, Expr] = Args,
                        {ok, B} = file:read_file(Path),
                        {ok, Eval(Expr, erl_eval:add_binding('T', binary_to_term(B), erl_eval:new_bindings()))};
                    "write" ->
                        [Path, Opts, Expr] = Args,
                        V = Eval(Expr, erl_eval:new_bindings()),
                        ok = file:write_file(Path, term_to_binary(V, Eval(Opts, erl_eval:new_bindings()))),
                        {ok, written}
                end
            catch C:E -> {error, {C, E}}
            end,
            io:format("~w~n", [R]),
            Loop()
    end
end,
Loop().
"""


class Erl:
    """A long-lived ``erl`` answering one command per line."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            ["erl", "-noshell", "-eval", ERL_LOOP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.buffer = b""
        self.counter = itertools.count()

    def call(self, *parts: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\t".join(parts).encode() + b"\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"erl did not answer {parts[0]} within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"erl exited (status {self.proc.poll()})")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("latin-1")

    def path(self) -> Path:
        return self.workdir / f"term{next(self.counter)}.bin"

    def eval(self, payload: bytes, expr: str) -> str:
        """``~w`` of ``expr`` with ``T`` = ``binary_to_term(payload)`` in erl."""
        path = self.path()
        path.write_bytes(payload)
        return self.call("eval", str(path), expr)

    def term_to_binary(self, literal: str, options: str = "[]") -> bytes:
        path = self.path()
        answer = self.call("write", str(path), options, literal)
        assert answer == "{ok,written}", answer
        return path.read_bytes()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def erl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Erl]:
    if shutil.which("erl") is None:
        pytest.skip("erl not found: install Debian's erlang-base (make setup does, as root) to test against BEAM")
    peer = Erl(tmp_path_factory.mktemp("erl"))
    try:
        assert peer.term_to_binary("ok") == b"\x83d\x00\x02ok"  # alive, and speaking version 131
        assert peer.eval(term_to_binary(2), "T =:= 1") == "{ok,false}"  # and the checks can fail
        assert peer.eval(b"\x83\xff", "T").startswith("{error,{error,badarg")
        yield peer
    finally:
        peer.close()


ERL_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
OPTIONS = ["[]", "[compressed]", "[{minor_version, 0}]", "[{minor_version, 2}]", "[{compressed, 9}, {minor_version, 2}]"]

# -- generic terms, both ways --------------------------------------------------------------------------


@ERL_SETTINGS
@given(etf_data, st.booleans())
def test_erl_reads_our_terms(erl: Erl, value: Any, compressed: bool) -> None:
    payload = term_to_binary(value, compressed=compressed)
    assert erl.eval(payload, f"T =:= {erl_literal(value)}") == "{ok,true}"


@ERL_SETTINGS
@given(etf_data, st.sampled_from(OPTIONS))
def test_we_read_erl_terms(erl: Erl, value: Any, options: str) -> None:
    back = binary_to_term(erl.term_to_binary(erl_literal(value), options))
    assert same(back, normalise(value)), (back, value)


def normalise(value: Any) -> Any:
    """What a value decodes to: datetimes in UTC, everything else as is."""
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, tuple):
        return tuple(normalise(v) for v in value)
    if isinstance(value, dict):
        return {normalise(k): normalise(v) for k, v in value.items()}
    return value


def test_erlang_native_terms(erl: Erl) -> None:
    cases = {
        '"abc"': [97, 98, 99],  # STRING_EXT
        "[1, 2, 300]": [1, 2, 300],
        "'h\\x{e9}'": Atom("hé"),  # ATOM_EXT (latin-1) in OTP 25's default encoding
        "binary_to_atom(<<16#e2, 16#9a, 16#a1>>, utf8)": Atom("⚡"),  # ATOM_UTF8_EXT
        "{ok, nil, undefined, true}": (Atom("ok"), None, Atom("undefined"), True),
        "#{<<\"k\">> => [{}]}": {"k": [()]},
        "<<255, 0>>": b"\xff\x00",
        "1.5e-300": 1.5e-300,
        "-(1 bsl 64)": -(2**64),
        "list_to_tuple(lists:seq(1, 300))": tuple(range(1, 301)),  # LARGE_TUPLE_EXT
        "lists:duplicate(50, <<\"hello\">>)": ["hello"] * 50,
    }
    for literal, expected in cases.items():
        for options in ("[]", "[{minor_version, 0}]", "[compressed]"):
            assert same(binary_to_term(erl.term_to_binary(literal, options)), expected), (literal, options)


# -- the message struct ------------------------------------------------------------------------------


def struct_literal(module: str, fields: dict[str, str]) -> str:
    return "#{'__struct__' => '" + module + "', " + ", ".join(f"{k} => {v}" for k, v in fields.items()) + "}"


def enum(value: str | None) -> str:
    return "nil" if value is None else f"'{value}'"


def plain(value: Any) -> str:
    """A field of known type: strings and bytes as plain binaries."""
    if value is None:
        return "nil"
    if isinstance(value, bytes):
        return erl_binary(value)
    return erl_literal(value)


def message_fields(m: Message) -> dict[str, str]:
    """Each key of the %Phoenix.Message{} map and the Erlang source of its value."""
    d, r, s, q, t = m.delivery, m.routing, m.security, m.qos, m.trace
    return {
        "'__struct__'": "'Elixir.Phoenix.Message'",
        "specversion": '<<"1.0">>',
        "id": erl_literal(m.id),
        "source": erl_literal(m.source),
        "type": erl_literal(m.type),
        "subject": erl_literal(m.subject),
        "time": erl_literal(m.time),
        "datacontenttype": erl_literal(m.datacontenttype),
        "dataschema": erl_literal(m.dataschema),
        "data": erl_literal(m.data),
        "phoenix_trace": "nil"
        if t is None
        else struct_literal(
            "Elixir.Phoenix.Trace.Context",
            {"trace_id": erl_literal(t.trace_id), "span_id": erl_literal(t.span_id), "flags": str(t.flags), "tracestate": erl_literal(t.tracestate)},
        ),
        "phoenix_causality": "nil"
        if m.causality is None
        else struct_literal("Elixir.Phoenix.VectorClock", {"entries": erl_literal(dict(m.causality.entries))}),
        "phoenix_delivery": "nil"
        if d is None
        else struct_literal(
            "Elixir.Phoenix.Delivery.Guarantee",
            {
                "delivery_mode": enum(d.delivery_mode),
                "timeout": str(d.timeout),
                "retry_strategy": enum(d.retry_strategy),
                "max_retries": str(d.max_retries),
                "ordering_requirement": enum(d.ordering_requirement),
                "acknowledgment_required": erl_literal(d.acknowledgment_required),
                "duplicate_detection": erl_literal(d.duplicate_detection),
            },
        ),
        "phoenix_routing": "nil"
        if r is None
        else struct_literal(
            "Elixir.Phoenix.Routing.Metadata",
            {
                "pattern": enum(r.pattern),
                "target": plain(r.target),
                "topic": plain(r.topic),
                "priority": enum(r.priority),
                "pipeline_id": plain(r.pipeline_id),
                "ordering": enum(r.ordering),
                "fanout_strategy": enum(r.fanout_strategy),
                "correlation_id": plain(r.correlation_id),
            },
        ),
        "phoenix_security": "nil"
        if s is None
        else struct_literal(
            "Elixir.Phoenix.Security.Context",
            {a.name: plain(getattr(s, a.name)) for a in attrs.fields(SecurityInfo)},
        ),
        "phoenix_qos": "nil"
        if q is None
        else struct_literal(
            "Elixir.Phoenix.QoS.Requirements",
            {
                "priority": enum(q.priority),
                "consistency": enum(q.consistency),
                "latency_budget_ms": plain(q.latency_budget_ms),
                "ttl_ms": plain(q.ttl_ms),
            },
        ),
        "extensions": erl_literal(dict(m.extensions)),
    }


etf_messages = messages(data=etf_data)


@ERL_SETTINGS
@given(etf_messages)
def test_erl_reads_our_messages_field_by_field(erl: Erl, message: Message) -> None:
    fields = message_fields(message)
    pairs = ", ".join(f"{{{key}, {value}}}" for key, value in fields.items())
    wrong = f"[K || {{K, V}} <- [{pairs}], maps:get(K, T, '$missing') =/= V] ++ [size || map_size(T) =/= {len(fields)}]"
    assert erl.eval(_etf.encode(message), wrong) == "{ok,[]}"


@ERL_SETTINGS
@given(etf_messages, st.sampled_from(["[]", "[compressed]"]))
def test_we_read_messages_erl_wrote(erl: Erl, message: Message, options: str) -> None:
    literal = "#{" + ", ".join(f"{k} => {v}" for k, v in message_fields(message).items()) + "}"
    back = ser.deserialize(erl.term_to_binary(literal, options), "etf")
    assert back == message


def test_a_typical_message_both_ways(erl: Erl) -> None:
    message = Message.new({"task": "summarise", "docs": list(range(300))}, target="planner", security=SecurityInfo(mac=b"m" * 32))
    payload, fmt = ser.serialize(message, "etf")
    assert fmt == "etf" and payload[1] == _etf.COMPRESSED  # large enough to compress, as the design's [compressed]
    checks = [
        'maps:get(target, maps:get(phoenix_routing, T)) =:= <<"planner">>',
        "maps:get(mac, maps:get(phoenix_security, T)) =:= binary:copy(<<\"m\">>, 32)",
        "maps:get(delivery_mode, maps:get(phoenix_delivery, T)) =:= at_least_once",
        'maps:get(docs, maps:get(data, T), nil) =:= nil andalso maps:get(<<"docs">>, maps:get(data, T)) =:= lists:seq(0, 299)',
        "begin #{year := Y, month := Mo, day := D, hour := H, minute := Mi, second := S} = maps:get(time, T), "
        "calendar:datetime_to_gregorian_seconds({{Y, Mo, D}, {H, Mi, S}}) - 62167219200 end "
        f"=:= {int(message.time.timestamp())}",
    ]
    for check in checks:
        assert erl.eval(payload, check) == "{ok,true}", check
    assert ser.deserialize(payload, "etf") == message


def test_minimal_struct_from_erlang(erl: Erl) -> None:
    literal = (
        "#{'__struct__' => 'Elixir.Phoenix.Message', specversion => <<\"1.0\">>, id => <<\"x\">>, "
        "source => <<\"/s\">>, type => <<\"t\">>, subject => undefined, data => {ok, [1,2,3], \"abc\"}}"
    )
    message = ser.deserialize(erl.term_to_binary(literal), "etf")
    assert (message.id, message.source, message.type, message.subject) == ("x", "/s", "t", None)
    assert same(message.data, (Atom("ok"), [1, 2, 3], [97, 98, 99]))
    assert message.delivery is None and dict(message.extensions) == {}


# -- local rules -----------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(etf_messages)
def test_message_round_trip(message: Message) -> None:
    payload, fmt = ser.serialize(message, "etf")
    assert fmt == "etf"
    back = ser.deserialize(payload, "etf")
    assert back == message
    assert same(normalise(back.data), normalise(message.data))


@settings(max_examples=300)
@given(etf_data)
def test_term_round_trip(value: Any) -> None:
    assert same(binary_to_term(term_to_binary(value)), normalise(value))
    assert same(binary_to_term(term_to_binary(value, compressed=True)), normalise(value))


def test_ambiguity_rules() -> None:
    assert term_to_binary("hi") == b"\x83m\x00\x00\x00\x02hi"
    assert term_to_binary(b"\xff") == b"\x83m\x00\x00\x00\x01\xff"  # not UTF-8: a plain binary
    assert term_to_binary(b"hi") == b"\x83h\x02w\x06$bytesm\x00\x00\x00\x02hi"  # would read back as str: tagged
    assert term_to_binary(Atom("ok")) == b"\x83w\x02ok"
    assert binary_to_term(term_to_binary(Atom("nil"))) is None  # nil, true and false are None, True, False
    assert binary_to_term(term_to_binary([None, True, False])) == [None, True, False]
    with pytest.raises(EncodeError, match="reserved"):
        term_to_binary((Atom("$bytes"), b"x"))
    for bad in (float("nan"), float("inf"), object(), dt.datetime(2024, 1, 1), Atom("a" * 256), "\ud800"):
        with pytest.raises(EncodeError):
            term_to_binary(bad)
    with pytest.raises(EncodeError, match="nests"):
        term_to_binary(nested(100))


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def atom(name: bytes) -> bytes:
    return b"w" + bytes([len(name)]) + name


def big_list(items: list[bytes]) -> bytes:
    return b"l" + struct.pack(">I", len(items)) + b"".join(items) + b"j"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "version 131"),
        (b"\x84j", "version 131"),
        (b"\x83" + b"h\x01" * 100_000 + b"j", "deeper"),
        (b"\x83" + b"l\x00\x00\x00\x01" * 100_000 + b"j" * 100_001, "deeper"),
        (b"\x83l\xff\xff\xff\xffj", "longer than the payload"),
        (b"\x83t\xff\xff\xff\xff", "larger than the payload"),
        (b"\x83m\xff\xff\xff\xffab", "truncated"),
        (b"\x83" + big_list([atom(b"a%d" % i) for i in range(1100)]), "distinct atoms"),
        (b"\x83v\x01\x2c" + b"a" * 300, "longer than 255"),
        (b"\x83n\xff\x00" + b"\x01" * 255 + b"o", "trailing"),
        (b"\x83o\x00\x00\x08\x00\x00" + b"\x01" * 2048, "larger than 1024 bytes"),
        (b"\x83n\x01\x02\x01", "sign"),
        (b"\x83l\x00\x00\x00\x01aaa\x01", "improper"),
        (b"\x83X" + b"\x00" * 20, "unsupported"),  # NEW_PID_EXT
        (b"\x83M\x00\x00\x00\x01\x03\xff", "unsupported"),  # BIT_BINARY_EXT
        (b"\x83t\x00\x00\x00\x02a\x01a\x02a\x01a\x03", "twice"),
        (b"\x83t\x00\x00\x00\x01ja\x01", "hashable"),
        (b"\x83F" + struct.pack(">d", float("nan")), "finite"),
        (b"\x83jj", "trailing"),
        (b"\x83P\xff\xff\xff\xff" + zlib.compress(b"j"), "inflates to"),
        (b"\x83P\x00\x00\x00\x05" + zlib.compress(b"j" * 1000), "declared size"),
        (b"\x83P\x00\x00\x00\x01" + b"garbage", "corrupt"),
        (b"\x83t\x00\x00\x00\x01w\x0a__struct__w\x0fElixir.DateTime", "DateTime"),
    ],
)
def test_hostile_terms_are_decode_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        binary_to_term(payload)


def test_limits_are_configurable() -> None:
    payload = term_to_binary([None] * 2000)
    assert binary_to_term(payload) == [None] * 2000
    with pytest.raises(DecodeError, match="more than 1000 terms"):
        binary_to_term(payload, limits=ETFLimits(max_terms=1000))
    with pytest.raises(DecodeError, match="larger than 100 bytes"):
        binary_to_term(term_to_binary("x" * 200), limits=ETFLimits(max_size=100))
    bomb = b"\x83P" + struct.pack(">I", 50_000_000) + zlib.compress(b"l" + struct.pack(">I", 1) + b"j" * 49_999_995, 9)
    assert len(bomb) < 100_000
    with pytest.raises(DecodeError, match="inflates to"):
        binary_to_term(bomb)
    with pytest.raises(DecodeError, match="deeper than 3"):
        binary_to_term(term_to_binary(nested(4)), limits=ETFLimits(max_depth=3))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.pop(Atom("__struct__")), "struct"),
        (lambda t: t.__setitem__(Atom("colour"), 1), "unknown field colour"),
        (lambda t: t.__setitem__("id", t.pop(Atom("id"))), "keys must be atoms"),  # a binary key
        (lambda t: t.__setitem__(Atom("specversion"), "1.0.2"), "specversion"),
        (lambda t: t.__setitem__(Atom("id"), b"\xff"), "id must be a UTF-8 binary"),
        (lambda t: t[Atom("phoenix_delivery")].__setitem__(Atom("delivery_mode"), Atom("sometimes")), "invalid value"),
        (lambda t: t[Atom("phoenix_delivery")].__setitem__(Atom("timeout"), -1), "timeout"),
        (lambda t: t.__setitem__(Atom("time"), "2024-01-01"), "DateTime"),
        (lambda t: t[Atom("phoenix_trace")].__setitem__(Atom("span_id"), "0" * 16), "parent-id"),
        (lambda t: t.__setitem__(Atom("extensions"), {Atom("ext"): 1}), "lowercase"),
        (lambda t: t.__setitem__(Atom("phoenix_causality"), {Atom("__struct__"): Atom("Elixir.Phoenix.VectorClock"), Atom("entries"): {"a": 0}}), "positive"),
    ],
)
def test_invalid_structs_are_decode_errors(change, reason) -> None:
    term = _etf.to_term(Message.new({"a": 1}))
    change(term)
    with pytest.raises(DecodeError, match=reason):
        ser.deserialize(term_to_binary(term), "etf")


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(payload: bytes) -> None:
    for candidate in (payload, b"\x83" + payload):
        try:
            validate_message(ser.deserialize(candidate, "etf"))
        except DecodeError:
            pass


@settings(max_examples=400)
@given(etf_messages, st.data())
def test_mutated_bytes(message: Message, data: st.DataObject) -> None:
    payload = bytearray(_etf.encode(message, compress_threshold=None))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        validate_message(ser.deserialize(bytes(payload), "etf"))
    except DecodeError:
        pass


@settings(max_examples=200)
@given(etf_messages)
def test_struct_writer_matches_the_generic_encoder(message: Message) -> None:
    # encode() writes the struct directly; to_term() + term_to_binary() is the reference.
    assert _etf.encode(message, compress_threshold=None) == term_to_binary(_etf.to_term(message))
