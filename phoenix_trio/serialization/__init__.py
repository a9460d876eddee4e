"""Serialization: one Message, four wire formats, chosen automatically per message.

``serialize(message, format="auto") -> (bytes, format)`` and
``deserialize(payload, format) -> Message`` round-trip every attribute and extension.

Formats (``docs/message.md`` documents each layout):

- ``msgpack``: the default; compact, fast, cross-language.
- ``json``: the CloudEvents JSON event format (structured mode), and its batch format.
- ``protobuf``: the CloudEvents Protobuf format (``io.cloudevents.v1.CloudEvent``).
- ``etf``: the Erlang External Term Format, the design's ``erlang_term``, for BEAM peers.

``format="auto"`` follows the design's selection (see :class:`FormatSelector`): a BEAM
target gets ``etf``, a cross-language target ``msgpack``, a type that needs schema
evolution ``protobuf``, debug mode ``json``, everything else ``msgpack``. The chosen
format is returned with the bytes, so the choice is always visible.

``json`` and ``protobuf`` also have the CloudEvents batch formats:
``serialize_batch(messages, format) -> bytes`` and ``deserialize_batch(payload, format)
-> list[Message]``.

Every decoder, given any bytes, returns a valid Message or raises
:class:`~phoenix_trio.DecodeError`; nothing else, and never unbounded memory or time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Literal

import attrs

from .._errors import ConfigurationError
from .._message import Message
from . import _etf, _json, _msgpack
from ._compression import ALGORITHMS as ALGORITHMS
from ._compression import DEFAULT_MAX_SIZE as DEFAULT_MAX_SIZE
from ._compression import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from ._compression import compress as compress
from ._compression import decompress as decompress
from ._etf import Atom as Atom
from ._etf import ETFLimits as ETFLimits
from ._etf import binary_to_term as binary_to_term
from ._etf import term_to_binary as term_to_binary

Format = Literal["msgpack", "json", "protobuf", "etf"]
FORMATS: tuple[str, ...] = ("msgpack", "json", "protobuf", "etf")

Encoder = Callable[[Message], bytes]
Decoder = Callable[[bytes], Message]
BatchEncoder = Callable[[Iterable[Message]], bytes]
BatchDecoder = Callable[[bytes], list[Message]]

_codecs: dict[str, tuple[Encoder, Decoder]] = {}
_batch_codecs: dict[str, tuple[BatchEncoder, BatchDecoder]] = {}


def register_format(
    name: str,
    encode: Encoder,
    decode: Decoder,
    *,
    encode_batch: BatchEncoder | None = None,
    decode_batch: BatchDecoder | None = None,
) -> None:
    """Make a codec available to :func:`serialize` / :func:`deserialize` under ``name``.

    A format with a batch form also gives ``encode_batch`` and ``decode_batch``, used by
    :func:`serialize_batch` / :func:`deserialize_batch`.
    """
    if (encode_batch is None) != (decode_batch is None):
        raise ConfigurationError("give both encode_batch and decode_batch, or neither")
    _codecs[name] = (encode, decode)
    if encode_batch is not None and decode_batch is not None:
        _batch_codecs[name] = (encode_batch, decode_batch)
    else:
        _batch_codecs.pop(name, None)


register_format("msgpack", _msgpack.encode, _msgpack.decode)
register_format("etf", _etf.encode, _etf.decode)
register_format("json", _json.encode, _json.decode, encode_batch=_json.encode_batch, decode_batch=_json.decode_batch)
try:  # the protobuf package is the optional "formats" extra
    from . import _protobuf
except ImportError:  # pragma: no cover - exercised only without the extra
    pass
else:
    register_format(
        "protobuf", _protobuf.encode, _protobuf.decode, encode_batch=_protobuf.encode_batch, decode_batch=_protobuf.decode_batch
    )


def _codec(name: str) -> tuple[Encoder, Decoder]:
    try:
        return _codecs[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown or unavailable format {name!r}; available: {', '.join(sorted(_codecs))}"
        ) from None


@attrs.define
class FormatSelector:
    """The design's ``select_format(message, :auto)``, with its inputs made explicit.

    - ``beam_targets``: routing targets (agent ids or node names) living on BEAM nodes
      (the design's "same BEAM cluster": Erlang terms are their native format);
    - ``cross_language_targets``: targets implemented in other languages;
    - ``schema_evolution_types``: message types (or prefixes ending in ``.``) whose
      consumers need schema evolution;
    - ``debug``: JSON everywhere else, for reading traffic (``PHOENIX_TRIO_DEBUG_FORMAT=1``).

    Same-cluster Python peers and everything else get msgpack, our fastest native format.
    """

    beam_targets: set[str] = attrs.field(factory=set)
    cross_language_targets: set[str] = attrs.field(factory=set)
    schema_evolution_types: set[str] = attrs.field(factory=set)
    debug: bool = attrs.field(factory=lambda: os.environ.get("PHOENIX_TRIO_DEBUG_FORMAT", "") not in ("", "0"))

    def select(self, message: Message) -> Format:
        target = message.routing.target if message.routing is not None else None
        if target is not None and target in self.beam_targets:
            return "etf"
        if target is not None and target in self.cross_language_targets:
            return "msgpack"
        if self._needs_schema_evolution(message.type):
            return "protobuf"
        if self.debug:
            return "json"
        return "msgpack"

    def _needs_schema_evolution(self, message_type: str) -> bool:
        if message_type in self.schema_evolution_types:
            return True
        return any(p.endswith(".") and message_type.startswith(p) for p in self.schema_evolution_types)


default_selector = FormatSelector()


def select_format(message: Message, format: str = "auto", *, selector: FormatSelector | None = None) -> str:
    """The format ``serialize`` would use for ``message``."""
    if format == "auto":
        return (selector or default_selector).select(message)
    if format not in FORMATS and format not in _codecs:
        raise ConfigurationError(f"unknown format {format!r}; choose from auto, {', '.join(FORMATS)}")
    return format


def serialize(message: Message, format: str = "auto", *, selector: FormatSelector | None = None) -> tuple[bytes, str]:
    """``(bytes, format)`` for ``message``; ``format="auto"`` picks per :class:`FormatSelector`."""
    chosen = select_format(message, format, selector=selector)
    encode, _ = _codec(chosen)
    return encode(message), chosen


def deserialize(payload: bytes | bytearray | memoryview, format: str) -> Message:
    """The Message in ``payload`` written in ``format``; :class:`~phoenix_trio.DecodeError` otherwise."""
    _, decode = _codec(format)
    return decode(bytes(payload) if not isinstance(payload, bytes) else payload)


def _batch_codec(name: str) -> tuple[BatchEncoder, BatchDecoder]:
    try:
        return _batch_codecs[name]
    except KeyError:
        raise ConfigurationError(
            f"format {name!r} has no batch form; batch formats: {', '.join(sorted(_batch_codecs))}"
        ) from None


def serialize_batch(messages: Iterable[Message], format: str) -> bytes:
    """One payload holding ``messages`` in a batch format (``json``: a JSON array; ``protobuf``: ``CloudEventBatch``)."""
    encode_batch, _ = _batch_codec(format)
    return encode_batch(messages)


def deserialize_batch(payload: bytes | bytearray | memoryview, format: str) -> list[Message]:
    """The Messages in a batch payload; :class:`~phoenix_trio.DecodeError` otherwise."""
    _, decode_batch = _batch_codec(format)
    return decode_batch(bytes(payload) if not isinstance(payload, bytes) else payload)


def available_formats() -> Iterable[str]:
    return tuple(sorted(_codecs))


def batch_formats() -> Iterable[str]:
    """The formats :func:`serialize_batch` accepts."""
    return tuple(sorted(_batch_codecs))


__all__ = [
    "ALGORITHMS",
    "Atom",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_THRESHOLD",
    "ETFLimits",
    "FORMATS",
    "FormatSelector",
    "available_formats",
    "batch_formats",
    "binary_to_term",
    "compress",
    "decompress",
    "default_selector",
    "deserialize",
    "deserialize_batch",
    "register_format",
    "select_format",
    "serialize",
    "serialize_batch",
    "term_to_binary",
]
