"""The Erlang External Term Format (version 131): the design's ``erlang_term`` format.

Written from the ERTS specification (``erl_ext_dist``), no dependency. Two layers:

- :func:`term_to_binary` / :func:`binary_to_term`: Python values <-> Erlang terms;
- :func:`encode` / :func:`decode`: a Message <-> the Erlang map an Elixir
  ``%Phoenix.Message{}`` struct is (``docs/message.md`` has the full mapping).

Python <-> Erlang (one mapping, both directions):

=========================  =============================================================
Python                     Erlang
=========================  =============================================================
``None``                   ``nil`` (Elixir's nil)
``True`` / ``False``       ``true`` / ``false``
:class:`Atom`              atom (a ``str`` subclass; other atoms decode to it)
``int``                    SMALL_INTEGER, INTEGER, SMALL_BIG or LARGE_BIG
``float``                  NEW_FLOAT (finite only; the old FLOAT_EXT is decoded too)
``str``                    binary (UTF-8), as Elixir strings are
``bytes``                  binary when it is not valid UTF-8; ``{'$bytes', Binary}``
                           when it is (a plain binary would come back as ``str``)
``list``                   proper list (STRING_EXT decodes to a list of ints)
``tuple``                  tuple
``dict``                   map
aware ``datetime``         ``%DateTime{}`` (a map with ``__struct__ => 'Elixir.DateTime'``),
                           in UTC; any ``utc_offset``/``std_offset`` is accepted
=========================  =============================================================

A binary decodes to ``str`` when it is valid UTF-8 and to ``bytes`` otherwise, so raw
binaries from BEAM peers are never lost; ``{'$bytes', B}`` is the one tagged form, used
only where a binary would be ambiguous. Strings from data never become atoms: only
:class:`Atom` values (and the fixed keys and enumerations of the message struct) do,
so nothing we send can make a BEAM peer create unbounded atoms.

Decoding is bounded by :class:`ETFLimits`: input and inflated size, nesting depth,
number of terms, distinct atoms per payload and atom length, bignum size. Compressed
terms (tag 80, zlib) are inflated only up to their declared size, which must be within
the limit. Anything else (PIDs, references, funs, bit strings, improper lists,
duplicate map keys, trailing bytes) raises :class:`~phoenix_trio.DecodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
import operator
import struct
import types
import zlib
from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import DecodeError, EncodeError, ValidationError
from .._message import (
    EMPTY,
    Extensions,
    FANOUT_STRATEGIES,
    PATTERNS,
    RETRY_STRATEGIES,
    ROUTE_ORDERINGS,
    SPECVERSION,
    DeliveryGuarantee,
    Message,
    QoSRequirements,
    RoutingMetadata,
    SecurityInfo,
    validate_message,
)
from .._taxonomy import CONSISTENCIES, DELIVERY_MODES, ORDERINGS, PRIORITIES
from .._trace import TraceContext
from .._vclock import VectorClock, decode_clock
from ._compression import DEFAULT_MAX_SIZE, DEFAULT_THRESHOLD

VERSION = 131
COMPRESSED = 80
NEW_FLOAT_EXT = 70
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119

MAX_ATOM_CHARACTERS = 255
"""Erlang's own limit on the length of an atom."""

_UTC = _dt.timezone.utc


class Atom(str):
    """An Erlang atom. A ``str`` subclass: ``Atom("ok") == "ok"``.

    Only values of this type are written as atoms (besides ``nil``/``true``/``false`` and
    the message struct's own keys), so data strings never grow a BEAM peer's atom table.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


NIL = Atom("nil")
TRUE = Atom("true")
FALSE = Atom("false")
BYTES_TAG = Atom("$bytes")
STRUCT = Atom("__struct__")
DATETIME_MODULE = Atom("Elixir.DateTime")
ISO_CALENDAR = Atom("Elixir.Calendar.ISO")


@attrs.frozen(slots=True)
class ETFLimits:
    """Bounds :func:`binary_to_term` enforces (each excess is a :class:`DecodeError`).

    - ``max_size``: bytes of input, and of a compressed term once inflated;
    - ``max_depth``: nesting of lists, tuples and maps;
    - ``max_terms``: terms in one payload (each list element, map key and value counts);
    - ``max_atoms``: distinct atoms in one payload, besides the message struct's own
      fixed ones; ``max_atom_length``: characters per atom (255, Erlang's own limit);
    - ``max_bignum_bytes``: digits of one SMALL_BIG/LARGE_BIG integer.
    """

    max_size: int = DEFAULT_MAX_SIZE
    max_depth: int = 64
    max_terms: int = 1_000_000
    max_atoms: int = 1024
    max_atom_length: int = MAX_ATOM_CHARACTERS
    max_bignum_bytes: int = 1024


DEFAULT_LIMITS = ETFLimits()


class _PlainBinary(bytes):
    """Bytes whose type is known from the schema (the security fields): a plain binary, never tagged."""

    __slots__ = ()


# -- encoding ----------------------------------------------------------------------------------

_pack_int32 = struct.Struct(">i").pack
_pack_uint32 = struct.Struct(">I").pack
_pack_uint16 = struct.Struct(">H").pack
_pack_double = struct.Struct(">d").pack


def _atom_bytes(name: str) -> bytes:
    if len(name) > MAX_ATOM_CHARACTERS:
        raise EncodeError(f"atom {name[:40]!r}... is longer than {MAX_ATOM_CHARACTERS} characters")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError("atom is not valid Unicode text") from None
    if len(raw) < 256:
        return bytes((SMALL_ATOM_UTF8_EXT, len(raw))) + raw
    return bytes((ATOM_UTF8_EXT,)) + _pack_uint16(len(raw)) + raw


_atom_cache: dict[str, bytes] = {}


def _atom(name: str) -> bytes:
    encoded = _atom_cache.get(name)
    if encoded is None:
        encoded = _atom_bytes(name)
        if len(_atom_cache) < 4096:
            _atom_cache[name] = encoded
    return encoded


_NIL_BYTES = _atom("nil")
_TRUE_BYTES = _atom("true")
_FALSE_BYTES = _atom("false")


def _binary(raw: bytes) -> bytes:
    return bytes((BINARY_EXT,)) + _pack_uint32(len(raw)) + raw


def _encode_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 255:
        out += bytes((SMALL_INTEGER_EXT, value))
    elif -(2**31) <= value < 2**31:
        out.append(INTEGER_EXT)
        out += _pack_int32(value)
    else:
        magnitude = -value if value < 0 else value
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        if len(digits) < 256:
            out += bytes((SMALL_BIG_EXT, len(digits), value < 0))
        else:
            out.append(LARGE_BIG_EXT)
            out += _pack_uint32(len(digits))
            out.append(value < 0)
        out += digits


def _datetime_term(value: _dt.datetime) -> dict[Atom, Any]:
    """An aware datetime as Elixir's ``%DateTime{}`` in UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise EncodeError("datetimes must be timezone-aware to become an Elixir DateTime")
    try:
        utc = value.astimezone(_UTC)
    except OverflowError:
        raise EncodeError(f"datetime {value!r} is out of range in UTC") from None
    return {
        STRUCT: DATETIME_MODULE,
        Atom("calendar"): ISO_CALENDAR,
        Atom("year"): utc.year,
        Atom("month"): utc.month,
        Atom("day"): utc.day,
        Atom("hour"): utc.hour,
        Atom("minute"): utc.minute,
        Atom("second"): utc.second,
        Atom("microsecond"): (utc.microsecond, 6),
        Atom("time_zone"): "Etc/UTC",
        Atom("zone_abbr"): "UTC",
        Atom("utc_offset"): 0,
        Atom("std_offset"): 0,
    }


def _encode(value: Any, out: bytearray, depth: int) -> None:
    kind = type(value)
    if kind is str:
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError("strings must be valid Unicode text (no lone surrogates)") from None
        out.append(BINARY_EXT)
        out += _pack_uint32(len(raw))
        out += raw
    elif value is None:
        out += _NIL_BYTES
    elif kind is bool:
        out += _TRUE_BYTES if value else _FALSE_BYTES
    elif kind is int:
        _encode_int(value, out)
    elif kind is Atom:
        out += _atom(value)
    elif kind is dict or isinstance(value, Mapping):
        if depth <= 0:
            raise EncodeError("term nests too deeply")
        out.append(MAP_EXT)
        out += _pack_uint32(len(value))
        for key, item in value.items():
            _encode(key, out, depth - 1)
            _encode(item, out, depth - 1)
    elif kind is list:
        if depth <= 0:
            raise EncodeError("term nests too deeply")
        if value:
            out.append(LIST_EXT)
            out += _pack_uint32(len(value))
            for item in value:
                _encode(item, out, depth - 1)
        out.append(NIL_EXT)
    elif kind is float:
        if not math.isfinite(value):
            raise EncodeError("Erlang floats are finite: cannot encode NaN or infinity")
        out.append(NEW_FLOAT_EXT)
        out += _pack_double(value)
    elif kind is tuple:
        if depth <= 0:
            raise EncodeError("term nests too deeply")
        if len(value) == 2 and type(value[0]) is Atom and value[0] == BYTES_TAG:
            raise EncodeError("tuples {'$bytes', _} are reserved for bytes")
        if len(value) < 256:
            out += bytes((SMALL_TUPLE_EXT, len(value)))
        else:
            out.append(LARGE_TUPLE_EXT)
            out += _pack_uint32(len(value))
        for item in value:
            _encode(item, out, depth - 1)
    elif kind is _PlainBinary:
        out.append(BINARY_EXT)
        out += _pack_uint32(len(value))
        out += value
    elif kind is bytes or kind is bytearray or kind is memoryview:
        raw = bytes(value)
        if raw.isascii() or _is_utf8(raw):
            out += bytes((SMALL_TUPLE_EXT, 2))
            out += _atom(BYTES_TAG)
        out.append(BINARY_EXT)
        out += _pack_uint32(len(raw))
        out += raw
    elif isinstance(value, _dt.datetime):
        _encode(_datetime_term(value), out, depth)
    elif isinstance(value, str):  # other str subclasses: plain strings
        _encode(str(value), out, depth)
    elif isinstance(value, int):  # int subclasses (IntEnum...): their value
        _encode(int(value), out, depth)
    else:
        raise EncodeError(f"cannot encode {type(value).__name__} as an Erlang term")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def term_to_binary(
    value: Any, *, compressed: bool | int = False, max_depth: int = DEFAULT_LIMITS.max_depth
) -> bytes:
    """``value`` as an external term (``131``-prefixed), like Erlang's ``term_to_binary/2``.

    ``compressed``: ``True`` or a zlib level 1-9 writes the compressed form (tag 80) when
    it is smaller, as ``term_to_binary(T, [compressed])`` does. Raises :class:`EncodeError`
    for values with no Erlang form (see the module docstring).
    """
    out = bytearray()
    try:
        _encode(value, out, max_depth)
    except RecursionError:
        raise EncodeError("term nests too deeply") from None
    if compressed is not False:
        level = 6 if compressed is True else int(compressed)
        packed = zlib.compress(out, level)
        if len(packed) + 5 < len(out):
            return bytes((VERSION, COMPRESSED)) + _pack_uint32(len(out)) + packed
    return bytes((VERSION,)) + bytes(out)


# -- decoding ----------------------------------------------------------------------------------

_unpack_int32 = struct.Struct(">i").unpack_from
_unpack_uint32 = struct.Struct(">I").unpack_from
_unpack_uint16 = struct.Struct(">H").unpack_from
_unpack_double = struct.Struct(">d").unpack_from
_SPECIAL_ATOMS: dict[str, Any] = {"nil": None, "true": True, "false": False}


_MISSING = object()
_known_atoms: dict[bytes, Any] = {}
"""The message struct's own atoms (keys, modules, enumerations, DateTime's), by their
encoding (UTF-8 bytes, or NUL + latin-1 bytes), made once at import: decoding a message
does not re-create them, and they do not count against ``max_atoms``. Fixed: what peers
send never enters it."""


def _decode_body(data: bytes, pos: int, limits: ETFLimits) -> Any:
    """Decode the one term in ``data[pos:]`` (no version byte); everything must be consumed.

    A closure over local state rather than a class: this runs once per term, and method
    calls and attribute access are most of the cost of a pure-Python decoder. Bounds: an
    index past the end raises IndexError (turned into DecodeError by the caller), slices
    are checked against the end, and container sizes are checked against the bytes left
    (every element takes at least one) before anything is allocated.
    """
    end = len(data)
    max_terms = limits.max_terms
    max_atoms = limits.max_atoms
    max_atom_length = limits.max_atom_length
    max_bignum = limits.max_bignum_bytes
    atoms: dict[bytes, Any] = {}  # the atoms this payload introduced
    terms = 1
    unpack_uint32 = _unpack_uint32
    unpack_uint16 = _unpack_uint16

    known = _known_atoms
    check_length = max_atom_length < MAX_ATOM_CHARACTERS  # known atoms are within Erlang's own limit

    def new_atom(key: bytes, raw: bytes, encoding: str) -> Any:
        """An atom not known before (at most max_atoms distinct ones per payload)."""
        value = atoms.get(key, _MISSING)
        if value is not _MISSING:
            return value
        if len(atoms) >= max_atoms:
            raise DecodeError(f"more than {max_atoms} distinct atoms")
        value = known.get(key, _MISSING)
        if value is _MISSING:
            try:
                name = raw.decode(encoding)
            except UnicodeDecodeError:
                raise DecodeError("atom is not valid UTF-8") from None
            if len(name) > MAX_ATOM_CHARACTERS:
                raise DecodeError(f"atom longer than {MAX_ATOM_CHARACTERS} characters")
            value = _SPECIAL_ATOMS[name] if name in _SPECIAL_ATOMS else Atom(name)
        if value is not None and type(value) is not bool and len(value) > max_atom_length:
            raise DecodeError(f"atom longer than {max_atom_length} characters")
        atoms[key] = value
        return value

    def count(n: int) -> None:
        nonlocal terms
        terms += n
        if terms > max_terms:
            raise DecodeError(f"more than {max_terms} terms")

    def term(depth: int) -> Any:
        nonlocal pos
        tag = data[pos]
        pos += 1
        if tag == 119 or tag == 115:  # SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT (latin-1)
            start = pos + 1
            pos = start + data[start - 1]
            if pos > end:
                raise DecodeError("truncated term")
            raw = data[start:pos]
            key = raw if tag == 119 else b"\x00" + raw  # latin-1 spells some atoms differently
            value = known.get(key, _MISSING)
            if value is _MISSING or check_length:
                return new_atom(key, raw, "utf-8" if tag == 119 else "latin-1")
            return value
        if tag == 109:  # BINARY_EXT
            start = pos + 4
            pos = start + unpack_uint32(data, pos)[0]
            if pos > end:
                raise DecodeError("truncated term")
            raw = data[start:pos]
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if tag == 97:  # SMALL_INTEGER_EXT
            pos += 1
            return data[pos - 1]
        if tag == 100 or tag == 118:  # ATOM_EXT (latin-1), ATOM_UTF8_EXT
            start = pos + 2
            pos = start + unpack_uint16(data, pos)[0]
            if pos > end:
                raise DecodeError("truncated term")
            raw = data[start:pos]
            key = raw if tag == 118 else b"\x00" + raw
            value = known.get(key, _MISSING)
            if value is _MISSING or check_length:
                return new_atom(key, raw, "utf-8" if tag == 118 else "latin-1")
            return value
        if tag == 116:  # MAP_EXT
            size = unpack_uint32(data, pos)[0]
            pos += 4
            if depth <= 0:
                raise DecodeError(f"term nests deeper than {limits.max_depth} levels")
            if size * 2 > end - pos:
                raise DecodeError("map larger than the payload")
            count(size * 2)
            result: dict[Any, Any] = {}
            depth -= 1
            for _ in range(size):
                key = term(depth)
                value = term(depth)
                try:
                    if key in result:
                        raise DecodeError(f"map key {key!r} appears twice")
                    result[key] = value
                except TypeError:
                    raise DecodeError("map keys must be hashable in Python (no lists or maps as keys)") from None
            module = result.get(STRUCT)
            if type(module) is Atom and module == DATETIME_MODULE:
                return _datetime_from_term(result)
            return result
        if tag == 98:  # INTEGER_EXT
            pos += 4
            return _unpack_int32(data, pos - 4)[0]
        if tag == 106:  # NIL_EXT
            return []
        if tag == 108 or tag == 104 or tag == 105:  # LIST_EXT, SMALL_TUPLE_EXT, LARGE_TUPLE_EXT
            if tag == 104:
                size = data[pos]
                pos += 1
            else:
                size = unpack_uint32(data, pos)[0]
                pos += 4
            if depth <= 0:
                raise DecodeError(f"term nests deeper than {limits.max_depth} levels")
            if size > end - pos:
                raise DecodeError(f"{'list' if tag == 108 else 'tuple'} longer than the payload")
            count(size)
            depth -= 1
            items = [term(depth) for _ in range(size)]
            if tag == 108:
                if data[pos] != 106:
                    raise DecodeError("improper lists are not supported")
                pos += 1
                return items
            if size == 2 and type(items[0]) is Atom and items[0] == BYTES_TAG:
                raw = items[1]
                if type(raw) is str:
                    return raw.encode("utf-8")
                if type(raw) is bytes:
                    return raw
                raise DecodeError("{'$bytes', _} must hold a binary")
            return tuple(items)
        if tag == 70:  # NEW_FLOAT_EXT
            pos += 8
            value = _unpack_double(data, pos - 8)[0]
            if not math.isfinite(value):
                raise DecodeError("Erlang floats are finite")
            return value
        if tag == 107:  # STRING_EXT
            start = pos + 2
            pos = start + unpack_uint16(data, pos)[0]
            if pos > end:
                raise DecodeError("truncated term")
            count(pos - start)
            return list(data[start:pos])
        if tag == 110 or tag == 111:  # SMALL_BIG_EXT, LARGE_BIG_EXT
            if tag == 110:
                size = data[pos]
                pos += 1
            else:
                size = unpack_uint32(data, pos)[0]
                pos += 4
            if size > max_bignum:
                raise DecodeError(f"integer larger than {max_bignum} bytes")
            sign = data[pos]
            if sign > 1:
                raise DecodeError("bignum sign must be 0 or 1")
            start = pos + 1
            pos = start + size
            if pos > end:
                raise DecodeError("truncated term")
            magnitude = int.from_bytes(data[start:pos], "little")
            return -magnitude if sign else magnitude
        if tag == 99:  # FLOAT_EXT (before OTP 17, minor_version 0)
            start = pos
            pos += 31
            if pos > end:
                raise DecodeError("truncated term")
            text = data[start:pos].split(b"\x00", 1)[0]
            try:
                value = float(text.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise DecodeError("malformed FLOAT_EXT") from None
            if not math.isfinite(value):
                raise DecodeError("Erlang floats are finite")
            return value
        raise DecodeError(f"unsupported or invalid term tag {tag}")

    try:
        value = term(limits.max_depth)
    except (IndexError, struct.error):
        raise DecodeError("truncated term") from None
    except RecursionError:
        raise DecodeError("term nests too deeply") from None
    if pos != end:
        raise DecodeError("trailing bytes after the term")
    return value


def _datetime_from_term(term: dict[Any, Any]) -> _dt.datetime:
    """Elixir's ``%DateTime{}`` (Calendar.ISO) as an aware datetime."""
    try:
        if term[Atom("calendar")] != ISO_CALENDAR:
            raise DecodeError("only Calendar.ISO DateTimes are supported")
        fields = [term[Atom(name)] for name in ("year", "month", "day", "hour", "minute", "second")]
        micro = term[Atom("microsecond")]
        utc_offset, std_offset = term[Atom("utc_offset")], term[Atom("std_offset")]
        if (
            any(type(f) is not int for f in fields)
            or type(micro) is not tuple
            or len(micro) != 2
            or type(micro[0]) is not int
            or type(micro[1]) is not int
            or not 0 <= micro[1] <= 6
            or type(utc_offset) is not int
            or type(std_offset) is not int
            or not -86400 < utc_offset + std_offset < 86400
        ):
            raise DecodeError("malformed DateTime")
        offset = utc_offset + std_offset
        tz = _UTC if offset == 0 else _dt.timezone(_dt.timedelta(seconds=offset))
        year, month, day, hour, minute, second = fields
        return _dt.datetime(year, month, day, hour, minute, second, micro[0], tzinfo=tz)
    except KeyError as exc:
        raise DecodeError(f"DateTime without {exc.args[0]!s}") from None
    except (ValueError, OverflowError, TypeError) as exc:
        raise DecodeError(f"invalid DateTime: {exc}") from None


def binary_to_term(payload: bytes, *, limits: ETFLimits = DEFAULT_LIMITS) -> Any:
    """The Python value of an external term (see the mapping above); :class:`DecodeError` otherwise."""
    if type(payload) is not bytes:
        payload = bytes(payload)
    if len(payload) > limits.max_size:
        raise DecodeError(f"term larger than {limits.max_size} bytes")
    if len(payload) < 2 or payload[0] != VERSION:
        raise DecodeError("not an external term (version 131)")
    if payload[1] == COMPRESSED:
        if len(payload) < 6:
            raise DecodeError("truncated compressed term")
        size = _unpack_uint32(payload, 2)[0]
        if size > limits.max_size:
            raise DecodeError(f"compressed term inflates to {size} bytes, above {limits.max_size}")
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(payload[6:], size + 1)
        except zlib.error as exc:
            raise DecodeError(f"corrupt compressed term: {exc}") from None
        if len(body) != size or inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise DecodeError("compressed term does not inflate to its declared size")
        return _decode_body(body, 0, limits)
    return _decode_body(payload, 1, limits)


# -- the message struct ------------------------------------------------------------------------

MESSAGE_MODULE = Atom("Elixir.Phoenix.Message")
TRACE_MODULE = Atom("Elixir.Phoenix.Trace.Context")
CLOCK_MODULE = Atom("Elixir.Phoenix.VectorClock")
DELIVERY_MODULE = Atom("Elixir.Phoenix.Delivery.Guarantee")
ROUTING_MODULE = Atom("Elixir.Phoenix.Routing.Metadata")
SECURITY_MODULE = Atom("Elixir.Phoenix.Security.Context")
QOS_MODULE = Atom("Elixir.Phoenix.QoS.Requirements")

_A = Atom
_DELIVERY_FIELDS = tuple(_A(f.name) for f in attrs.fields(DeliveryGuarantee))
_ROUTING_FIELDS = tuple(_A(f.name) for f in attrs.fields(RoutingMetadata))
_SECURITY_FIELDS = tuple(_A(f.name) for f in attrs.fields(SecurityInfo))
_QOS_FIELDS = tuple(_A(f.name) for f in attrs.fields(QoSRequirements))
_SECURITY_BYTES = frozenset({"nonce", "mac", "signature", "encryption_nonce"})
# Record fields whose values are atoms: name -> the allowed values.
_ENUMS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "delivery_mode": DELIVERY_MODES,
        "retry_strategy": RETRY_STRATEGIES,
        "ordering_requirement": ORDERINGS,
        "pattern": PATTERNS,
        "priority": PRIORITIES,
        "ordering": ROUTE_ORDERINGS,
        "fanout_strategy": FANOUT_STRATEGIES,
        "consistency": CONSISTENCIES,
    }
)
_ENUM_ATOMS = {name: {value: Atom(value) for value in values} for name, values in _ENUMS.items()}
_MESSAGE_KEYS = tuple(
    _A(k)
    for k in (
        "__struct__",
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "phoenix_trace",
        "phoenix_causality",
        "phoenix_delivery",
        "phoenix_routing",
        "phoenix_security",
        "phoenix_qos",
        "extensions",
    )
)


def _record_term(module: Atom, names: tuple[Atom, ...], record: Any) -> dict[Atom, Any]:
    out: dict[Atom, Any] = {STRUCT: module}
    for name in names:
        value = getattr(record, name)
        enum = _ENUM_ATOMS.get(name)
        if enum is not None and value is not None:
            value = enum[value]
        elif name in _SECURITY_BYTES and value is not None:
            value = _PlainBinary(value)
        out[name] = value
    return out



def to_term(message: Message) -> dict[Atom, Any]:
    """The Erlang map (as Python values) an Elixir ``%Phoenix.Message{}`` would be."""
    trace = message.trace
    try:
        return {
            STRUCT: MESSAGE_MODULE,
            _A("specversion"): message.specversion,
            _A("id"): message.id,
            _A("source"): message.source,
            _A("type"): message.type,
            _A("subject"): message.subject,
            _A("time"): message.time,
            _A("datacontenttype"): message.datacontenttype,
            _A("dataschema"): message.dataschema,
            _A("data"): message.data,
            _A("phoenix_trace"): None
            if trace is None
            else {
                STRUCT: TRACE_MODULE,
                _A("trace_id"): trace.trace_id,
                _A("span_id"): trace.span_id,
                _A("flags"): trace.flags,
                _A("tracestate"): trace.tracestate,
            },
            _A("phoenix_causality"): None
            if message.causality is None
            else {STRUCT: CLOCK_MODULE, _A("entries"): dict(message.causality.entries)},
            _A("phoenix_delivery"): None
            if message.delivery is None
            else _record_term(DELIVERY_MODULE, _DELIVERY_FIELDS, message.delivery),
            _A("phoenix_routing"): None
            if message.routing is None
            else _record_term(ROUTING_MODULE, _ROUTING_FIELDS, message.routing),
            _A("phoenix_security"): None
            if message.security is None
            else _record_term(SECURITY_MODULE, _SECURITY_FIELDS, message.security),
            _A("phoenix_qos"): None if message.qos is None else _record_term(QOS_MODULE, _QOS_FIELDS, message.qos),
            _A("extensions"): dict(message.extensions),
        }
    except KeyError as exc:
        raise EncodeError(f"message has an invalid enumerated value {exc.args[0]!r}") from None


# The same map, written straight to bytes: the struct keys, modules and enumerated values
# are fixed, so their encodings are computed once (encode() is byte-identical to
# term_to_binary(to_term(message)); a test holds it to that).


def _map_head(module: Atom, size: int) -> bytes:
    return bytes((MAP_EXT,)) + _pack_uint32(size + 1) + _atom_bytes(STRUCT) + _atom_bytes(module)


_KEY: dict[str, bytes] = {name: _atom_bytes(name) for name in _MESSAGE_KEYS}
_MESSAGE_HEAD = _map_head(MESSAGE_MODULE, len(_MESSAGE_KEYS) - 1)
_TRACE_HEAD = _map_head(TRACE_MODULE, 4)
_TRACE_KEYS = tuple(_atom_bytes(k) for k in ("trace_id", "span_id", "flags", "tracestate"))
_CLOCK_HEAD = _map_head(CLOCK_MODULE, 1) + _atom_bytes("entries")
_RECORD_WRITERS = {
    module: (
        _map_head(module, len(names)),
        tuple(
            (
                _atom_bytes(name),
                {value: _atom_bytes(value) for value in _ENUMS[name]} if name in _ENUMS else None,
                name in _SECURITY_BYTES,
            )
            for name in names
        ),
        operator.attrgetter(*names),
    )
    for module, names in (
        (DELIVERY_MODULE, _DELIVERY_FIELDS),
        (ROUTING_MODULE, _ROUTING_FIELDS),
        (SECURITY_MODULE, _SECURITY_FIELDS),
        (QOS_MODULE, _QOS_FIELDS),
    )
}


def _write_record(module: Atom, record: Any, out: bytearray) -> None:
    if record is None:
        out += _NIL_BYTES
        return
    head, fields, values = _RECORD_WRITERS[module]
    out += head
    for (key, enum, plain_binary), value in zip(fields, values(record)):
        out += key
        if value is None:
            out += _NIL_BYTES
        elif enum is not None:
            try:
                out += enum[value]
            except KeyError:
                raise EncodeError(f"message has an invalid enumerated value {value!r}") from None
        elif plain_binary:
            out += _binary(value)
        else:
            _encode(value, out, 2)  # scalars, or a DateTime (a map holding a tuple)


def _write_message(message: Message, out: bytearray, depth: int) -> None:
    key = _KEY
    depth -= 1
    out += _MESSAGE_HEAD
    for name, value in (
        ("specversion", message.specversion),
        ("id", message.id),
        ("source", message.source),
        ("type", message.type),
        ("subject", message.subject),
        ("time", message.time),
        ("datacontenttype", message.datacontenttype),
        ("dataschema", message.dataschema),
        ("data", message.data),
    ):
        out += key[name]
        _encode(value, out, depth)
    trace = message.trace
    out += key["phoenix_trace"]
    if trace is None:
        out += _NIL_BYTES
    else:
        out += _TRACE_HEAD
        for field_key, value in zip(_TRACE_KEYS, (trace.trace_id, trace.span_id, trace.flags, trace.tracestate)):
            out += field_key
            _encode(value, out, 0)
    out += key["phoenix_causality"]
    if message.causality is None:
        out += _NIL_BYTES
    else:
        out += _CLOCK_HEAD
        _encode(dict(message.causality.entries), out, 1)
    out += key["phoenix_delivery"]
    _write_record(DELIVERY_MODULE, message.delivery, out)
    out += key["phoenix_routing"]
    _write_record(ROUTING_MODULE, message.routing, out)
    out += key["phoenix_security"]
    _write_record(SECURITY_MODULE, message.security, out)
    out += key["phoenix_qos"]
    _write_record(QOS_MODULE, message.qos, out)
    out += key["extensions"]
    _encode(dict(message.extensions), out, depth)


UNDEFINED = Atom("undefined")


def _absent(value: Any) -> bool:
    return value is None or (type(value) is Atom and value == UNDEFINED)


_allowed_keys: dict[Atom, frozenset[str]] = {}


def _struct(term: Any, module: Atom, names: tuple[Atom, ...], what: str) -> dict[str, Any] | None:
    """The fields of an Elixir struct map (None for nil); unknown or non-atom keys are errors.

    Fields that are ``nil`` (or Erlang's ``undefined``) are left out, so they take their
    defaults; ``data`` is kept whatever it is.
    """
    if term is None or (type(term) is Atom and term == UNDEFINED):
        return None
    if type(term) is not dict or term.get(STRUCT) != module:
        raise DecodeError(f"{what} must be a %{module.removeprefix('Elixir.')}{{}} struct or nil")
    allowed = _allowed_keys.get(module)
    if allowed is None:
        allowed = _allowed_keys[module] = frozenset(str(name) for name in names) | {str(STRUCT)}
    fields: dict[str, Any] = {}
    for key, value in term.items():
        if type(key) is not Atom:
            raise DecodeError(f"{what}: struct keys must be atoms")
        if key not in allowed:
            raise DecodeError(f"{what}: unknown field {key!s}")
        if value is not None and not (type(value) is Atom and value == UNDEFINED):
            fields[key] = value
        elif key == "data":  # data is a term like any other: nil is None
            fields[key] = value
    fields.pop(STRUCT)
    return fields


def _canonical_record(fields: dict[str, Any]) -> dict[str, Any]:
    for name, value in fields.items():
        allowed = _ENUMS.get(name)
        if allowed is not None:
            if type(value) not in (Atom, str) or value not in allowed:
                raise DecodeError(f"{name}: invalid value {value!r}")
            fields[name] = allowed[allowed.index(value)]
        elif name in _SECURITY_BYTES:
            if type(value) is str:
                fields[name] = value.encode("utf-8")
    return fields


def _string(value: Any, name: str) -> str | None:
    if _absent(value):
        return None
    if type(value) is not str:
        raise DecodeError(f"{name} must be a UTF-8 binary or nil")
    return value


def from_term(term: Any) -> Message:
    """A validated Message from a decoded ``%Phoenix.Message{}`` map; raises :class:`DecodeError`."""
    fields = _struct(term, MESSAGE_MODULE, _MESSAGE_KEYS, "message")
    if fields is None:
        raise DecodeError("message must be a %Phoenix.Message{} struct")
    if fields.get("specversion") != SPECVERSION:
        raise DecodeError(f"specversion must be {SPECVERSION!r}")
    time = fields.get("time")
    if time is not None and type(time) is not _dt.datetime:
        raise DecodeError("time must be a %DateTime{} or nil")
    try:
        trace = None
        trace_fields = _struct(fields.get("phoenix_trace"), TRACE_MODULE, (_A("trace_id"), _A("span_id"), _A("flags"), _A("tracestate")), "phoenix_trace")
        if trace_fields is not None:
            trace_id, span_id = trace_fields.get("trace_id"), trace_fields.get("span_id")
            flags, state = trace_fields.get("flags", 1), trace_fields.get("tracestate", "")
            if type(trace_id) is not str or type(span_id) is not str or type(flags) is not int or not 0 <= flags <= 255:
                raise DecodeError("phoenix_trace: malformed trace context")
            trace = TraceContext.parse(f"00-{trace_id}-{span_id}-{flags:02x}", state)
            if trace.tracestate != state:
                raise DecodeError("phoenix_trace: tracestate is not in normal form")
        causality = None
        clock_fields = _struct(fields.get("phoenix_causality"), CLOCK_MODULE, (_A("entries"),), "phoenix_causality")
        if clock_fields is not None:
            causality = decode_clock(clock_fields.get("entries", {}))
        delivery = _struct(fields.get("phoenix_delivery"), DELIVERY_MODULE, _DELIVERY_FIELDS, "phoenix_delivery")
        routing = _struct(fields.get("phoenix_routing"), ROUTING_MODULE, _ROUTING_FIELDS, "phoenix_routing")
        security = _struct(fields.get("phoenix_security"), SECURITY_MODULE, _SECURITY_FIELDS, "phoenix_security")
        qos = _struct(fields.get("phoenix_qos"), QOS_MODULE, _QOS_FIELDS, "phoenix_qos")
        extensions = fields.get("extensions", {})
        if type(extensions) is not dict:
            raise DecodeError("extensions must be a map of binary names to values")
        if len(extensions) > 256:
            raise DecodeError("more than 256 extension attributes")
        message = Message(
            id=_string(fields.get("id"), "id") or "",
            source=_string(fields.get("source"), "source") or "",
            type=_string(fields.get("type"), "type") or "",
            data=fields.get("data"),
            subject=_string(fields.get("subject"), "subject"),
            time=time,
            datacontenttype=_string(fields.get("datacontenttype"), "datacontenttype"),
            dataschema=_string(fields.get("dataschema"), "dataschema"),
            trace=trace,
            causality=causality,
            delivery=None if delivery is None else DeliveryGuarantee(**_canonical_record(delivery)),
            routing=None if routing is None else RoutingMetadata(**_canonical_record(routing)),
            security=None if security is None else SecurityInfo(**_canonical_record(security)),
            qos=None if qos is None else QoSRequirements(**_canonical_record(qos)),
            extensions=Extensions(extensions) if extensions else EMPTY,
        )
        return validate_message(message)
    except ValidationError as exc:
        raise DecodeError(str(exc)) from None


def encode(message: Message, *, compress_threshold: int | None = DEFAULT_THRESHOLD) -> bytes:
    """``message`` as an external term; compressed (tag 80) above ``compress_threshold`` bytes.

    The design writes ``term_to_binary(message, [compressed])``; small messages gain
    nothing from zlib, so they go uncompressed (``None`` never compresses).
    """
    out = bytearray((VERSION,))
    try:
        _write_message(message, out, DEFAULT_LIMITS.max_depth)
    except RecursionError:
        raise EncodeError("term nests too deeply") from None
    payload = bytes(out)
    if compress_threshold is not None and len(payload) > compress_threshold:
        packed = zlib.compress(memoryview(payload)[1:], 6)
        if len(packed) + 5 < len(payload) - 1:
            return bytes((VERSION, COMPRESSED)) + _pack_uint32(len(payload) - 1) + packed
    return payload


def decode(payload: bytes, *, limits: ETFLimits = DEFAULT_LIMITS) -> Message:
    """The Message in an external term; :class:`DecodeError` for anything else."""
    return from_term(binary_to_term(payload, limits=limits))


def _prefill_known_atoms() -> None:
    names = {str(key) for key in _MESSAGE_KEYS} | {"calendar", "year", "month", "day", "hour", "minute", "second", "microsecond"}
    names |= {"time_zone", "zone_abbr", "utc_offset", "std_offset", "trace_id", "span_id", "flags", "tracestate", "entries"}
    names |= {str(m) for m in (MESSAGE_MODULE, TRACE_MODULE, CLOCK_MODULE, DELIVERY_MODULE, ROUTING_MODULE, SECURITY_MODULE, QOS_MODULE)}
    names |= {str(DATETIME_MODULE), str(ISO_CALENDAR), str(BYTES_TAG), "undefined", "ok", "error"}
    names |= {str(name) for fields in (_DELIVERY_FIELDS, _ROUTING_FIELDS, _SECURITY_FIELDS, _QOS_FIELDS) for name in fields}
    names |= {value for values in _ENUMS.values() for value in values}
    for name in sorted(names):
        raw = name.encode("utf-8")
        _known_atoms[raw] = Atom(name)
        if name.isascii():  # OTP 25 and older write ASCII atoms as latin-1 ATOM_EXT
            _known_atoms[b"\x00" + raw] = _known_atoms[raw]
    for name, value in _SPECIAL_ATOMS.items():
        _known_atoms[name.encode()] = _known_atoms[b"\x00" + name.encode()] = value


_prefill_known_atoms()


__all__ = [
    "Atom",
    "DEFAULT_LIMITS",
    "ETFLimits",
    "binary_to_term",
    "decode",
    "encode",
    "from_term",
    "term_to_binary",
    "to_term",
]
